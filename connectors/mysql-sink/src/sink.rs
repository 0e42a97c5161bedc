//! One destination connection, owned by one sink worker.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts, OptsBuilder, ServerError, Transaction, TxOpts};
use rowlog_api::{
    ApplyBatch, ChangeEvent, ChangeId, ChangeSink, Retry, SchemaChange, SchemaChangeKind,
    SchemaChangePolicy, SinkProgress, TableName, TableSchema, Value, WorkerProgress,
};

use crate::lease::Fence;
use crate::params::column_param;
use crate::sql::{self, quote};
use crate::{coalesce, load, SinkConfig, SinkError};

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Upsert,
    Replace,
    Delete,
    /// Keyless tables: a plain insert, and a delete of one equal row.
    Insert,
    DeleteOne,
    /// The upserts of a table as `LOAD DATA LOCAL INFILE … REPLACE` (see [`crate::load`]).
    Load,
}

/// What a dry-run replay would do to one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    pub table: String,
    pub key: String,
    pub action: &'static str,
}

/// One multi-row statement of a batch, with the texts its error handling may need.
struct Stmt<'a> {
    table: &'a Arc<TableSchema>,
    kind: Kind,
    rows: Vec<&'a [Value]>,
    text: Arc<str>,
    /// The same statement for one row (to find the row a definite error is about).
    one: Arc<str>,
    /// [`Kind::Load`]: the rows, encoded as the statement reads them.
    data: Option<Bytes>,
}

impl Stmt<'_> {
    fn row_params(&self, row: &[Value]) -> Vec<mysql_async::Value> {
        let t = self.table;
        match self.kind {
            Kind::Delete => t
                .primary_key
                .iter()
                .map(|&i| column_param(&row[i], sql::send(&t.columns[i])))
                .collect(),
            Kind::Upsert | Kind::Replace | Kind::Insert | Kind::DeleteOne | Kind::Load => t
                .written_columns()
                .map(|(i, c)| column_param(&row[i], sql::send(c)))
                .collect(),
        }
    }

    fn params(&self) -> Vec<mysql_async::Value> {
        self.rows
            .iter()
            .flat_map(|row| self.row_params(row))
            .collect()
    }
}

/// `id=5, region='eu'`: the primary key of a row, for error messages.
fn render_key(t: &TableSchema, row: &[Value]) -> String {
    t.primary_key
        .iter()
        .map(|&i| {
            let v = match &row[i] {
                Value::Bytes(b) => format!("'{}'", String::from_utf8_lossy(b)),
                Value::Decimal(d) => d.to_string(),
                Value::Int(v) => v.to_string(),
                Value::UInt(v) => v.to_string(),
                other => format!("{other:?}"),
            };
            format!("{}={v}", t.columns[i].name)
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// How long a table's LOAD DATA check holds: the destination's table can change without
/// a schema change from the source (someone adds a trigger or a column there).
const LOAD_CHECK_TTL: Duration = Duration::from_secs(60);

/// The session's sql_mode while applying (see [`MySqlSink::connect`]).
const STRICT_MODE: &str = "STRICT_ALL_TABLES,NO_AUTO_VALUE_ON_ZERO,NO_ENGINE_SUBSTITUTION";
/// The same without strictness, for the one retry [`exec_write`] describes.
const LENIENT_MODE: &str = "NO_AUTO_VALUE_ON_ZERO,NO_ENGINE_SUBSTITUTION";
/// The session's `max_error_count`: every warning of a statement can be checked.
const MAX_WARNINGS: usize = 65_535;

/// Value errors, which strict mode raises and other modes downgrade to warnings: out of
/// range (1264), data truncated (1265), incorrect value (1366), data too long (1406).
fn value_error(code: u16) -> bool {
    matches!(code, 1264 | 1265 | 1366 | 1406)
}

/// The column a value error or warning names, with its database and table when the
/// message gives them: `… for column 'c' at row 1` (MySQL and MariaDB) or ``… for
/// column `db`.`t`.`c` at row 1`` (MariaDB). The server does not escape quotes in
/// these names, so a name holding one cannot be read for sure: `None`.
fn named_column(message: &str) -> Option<(Option<(String, String)>, String)> {
    const MARK: &str = "for column ";
    // The last mention: the rejected value, quoted earlier in the message, may hold any text.
    let rest = &message[message.rfind(MARK)? + MARK.len()..];
    let clean = |part: &str| (!part.contains(['\'', '`'])).then(|| part.to_owned());
    if let Some(quoted) = rest.strip_prefix('\'') {
        let end = quoted
            .rfind("' at row")
            .or_else(|| quoted.strip_suffix('\'').map(str::len))?;
        return Some((None, clean(&quoted[..end])?));
    }
    let inner = rest.strip_prefix('`')?;
    let end = inner
        .rfind("` at row")
        .or_else(|| inner.strip_suffix('`').map(str::len))?;
    let parts: Vec<&str> = inner[..end].split("`.`").collect();
    match parts[..] {
        [column] => Some((None, clean(column)?)),
        [db, table, column] => Some((Some((clean(db)?, clean(table)?)), clean(column)?)),
        _ => None,
    }
}

/// Whether `message` is about one of `t`'s generated columns (names are case-insensitive).
/// A message naming another table (a trigger's write) is not.
fn about_generated_column(t: &TableSchema, message: &str) -> bool {
    let Some((table, name)) = named_column(message) else {
        return false;
    };
    let same_table = table.is_none_or(|(db, table)| {
        db.eq_ignore_ascii_case(&t.name.db) && table.eq_ignore_ascii_case(&t.name.table)
    });
    same_table
        && t.columns
            .iter()
            .any(|c| c.generated && c.name.eq_ignore_ascii_case(&name))
}

/// Runs a batch's statements in `tx`. On a definite error in a multi-row statement, the
/// rows are tried one by one so that the error names the key the destination rejects.
async fn write_all(
    tx: &mut Transaction<'_>,
    work: &[Stmt<'_>],
    staged: Option<&load::Staged>,
    apply_error: &(dyn Fn(&TableSchema, Option<String>, mysql_async::Error) -> SinkError + Sync),
) -> Result<(), SinkError> {
    for stmt in work {
        let done = match (&stmt.data, staged) {
            (Some(data), Some(staged)) => {
                staged.set(data.clone());
                let done = exec_write(tx, stmt.table, &stmt.text, None::<fn() -> _>).await;
                staged.set(Bytes::new());
                done
            }
            _ => exec_write(tx, stmt.table, &stmt.text, Some(|| stmt.params())).await,
        };
        let Err(err) = done else {
            continue;
        };
        let failed = apply_error(stmt.table, None, err);
        if failed.is_retryable() || stmt.rows.len() == 1 {
            let key = (stmt.rows.len() == 1).then(|| render_key(stmt.table, stmt.rows[0]));
            return Err(match failed {
                SinkError::Apply { source, .. } => apply_error(stmt.table, key, source),
                other => other,
            });
        }
        // A definite error in a multi-row statement: find the row the destination
        // rejects, so the error names its key (each try is rolled back on its own).
        for row in &stmt.rows {
            let one = exec_write(tx, stmt.table, &stmt.one, Some(|| stmt.row_params(row)));
            if let Err(e) = one.await {
                return Err(apply_error(
                    stmt.table,
                    Some(render_key(stmt.table, row)),
                    e,
                ));
            }
        }
        return Err(failed);
    }
    Ok(())
}

/// Runs one write statement of a batch.
///
/// Generated columns are computed by the destination, never written by rowlog. MariaDB
/// computes a table's virtual columns while it runs the update part of `INSERT … ON
/// DUPLICATE KEY UPDATE`, and in strict mode a computed value outside its column's range
/// fails the statement — although the source holds that row (a virtual column is
/// computed on read, leniently, and a plain `UPDATE` of the row passes even in strict
/// mode). So when strict mode rejects a value of a generated column, the statement
/// (rolled back on its own) runs once more without strictness and every warning it
/// leaves is checked: one about a generated column is the destination's own
/// computation; any other is returned as the error strict mode would have raised, and
/// the caller rolls the transaction back. Nothing rowlog writes is ever truncated.
async fn exec_write(
    tx: &mut Transaction<'_>,
    table: &TableSchema,
    text: &str,
    params: Option<impl Fn() -> Vec<mysql_async::Value>>,
) -> Result<(), mysql_async::Error> {
    // A load's warnings are checked: MySQL runs LOCAL loads as IGNORE, turning value
    // errors into warnings.
    let is_load = params.is_none();
    let err = match run_once(tx, text, params.as_ref().map(|p| p())).await {
        Ok(()) if is_load => return warning_as_error(tx, table).await,
        Ok(()) => return Ok(()),
        Err(e) => e,
    };
    match &err {
        mysql_async::Error::Server(s)
            if value_error(s.code) && about_generated_column(table, &s.message) => {}
        _ => return Err(err),
    }
    tracing::debug!(table = %table.name, error = %err,
        "a generated column's computed value is out of strict bounds; retrying leniently");
    tx.query_drop(format!("SET SESSION sql_mode='{LENIENT_MODE}'"))
        .await?;
    let checked = match run_once(tx, text, params.as_ref().map(|p| p())).await {
        Ok(()) => warning_as_error(tx, table).await,
        Err(e) => Err(e),
    };
    tx.query_drop(format!("SET SESSION sql_mode='{STRICT_MODE}'"))
        .await?;
    checked
}

/// Runs a statement: prepared with `params`, or as text without (LOAD DATA cannot be
/// prepared).
async fn run_once(
    tx: &mut Transaction<'_>,
    text: &str,
    params: Option<Vec<mysql_async::Value>>,
) -> Result<(), mysql_async::Error> {
    match params {
        Some(p) => tx.exec_drop(text, p).await,
        None => tx.query_drop(text).await,
    }
}

/// After a lenient statement or a load: the first warning that is not about a generated column
/// (nor a note, nor a deprecation), as the error strict mode would have raised.
async fn warning_as_error(
    tx: &mut Transaction<'_>,
    table: &TableSchema,
) -> Result<(), mysql_async::Error> {
    if tx.get_warnings() == 0 {
        return Ok(());
    }
    let warnings: Vec<(String, u16, String)> = tx.query("SHOW WARNINGS").await?;
    let as_error = |code, message| {
        Err(mysql_async::Error::Server(ServerError {
            code,
            message,
            state: "22000".into(),
        }))
    };
    if warnings.len() >= MAX_WARNINGS {
        return as_error(
            1264,
            format!("more than {MAX_WARNINGS} warnings; they cannot all be checked"),
        );
    }
    for (level, code, message) in warnings {
        // 1287: a deprecated syntax (MySQL 8 deprecates VALUES() in the upsert).
        if level == "Note" || code == 1287 || about_generated_column(table, &message) {
            continue;
        }
        return as_error(code, message);
    }
    Ok(())
}

/// Statement text by (schema, kind, rows). The schema `Arc` is kept in the value so its
/// address cannot be reused by another schema while the entry exists.
type SqlCache = HashMap<(usize, Kind, usize), (Arc<TableSchema>, Arc<str>)>;

/// Bounds the statement-text cache; cleared wholesale when full (rare: one entry per
/// schema version × kind × chunk size).
const SQL_CACHE_LIMIT: usize = 4096;

pub struct MySqlSink {
    conn: Conn,
    pipeline: String,
    progress_table: String,
    schema_changes_table: String,
    /// Schema changes started and not yet recorded, with their table's definition
    /// before them (see [`MySqlSink::alter_once`]).
    schema_runs_table: String,
    progress_db: String,
    sql: SqlCache,
    /// The batch the LOCAL INFILE handler serves; `None` when LOAD DATA is off
    /// (`sink.load_data = false`, or the destination has `local_infile=OFF`).
    staged: Option<load::Staged>,
    /// Per schema version: whether the destination's table takes LOAD DATA with the
    /// upsert's exact effect (see [`crate::load`]).
    load_fits: HashMap<usize, (Arc<TableSchema>, bool, Instant)>,
    /// Checked before each batch's COMMIT once the daemon holds the pipeline's lease
    /// (see [`crate::lease::Fence`]).
    fence: Option<Fence>,
    /// `sink.call_timeout_secs`: see [`answered`].
    call_timeout: Duration,
}

/// `call` if it ends within `limit`, else [`SinkError::NoAnswer`] naming `action`. A
/// network partition without a reset leaves a connection whose reads never end (TCP
/// keepalive would notice only after minutes, and only where the system enables it);
/// without a limit the worker waited for ever, then its partition, then shutdown.
/// The caller drops the connection on the error, and the retry checks first whether
/// the batch committed.
async fn answered<T>(
    limit: Duration,
    action: &'static str,
    call: impl std::future::Future<Output = Result<T, SinkError>>,
) -> Result<T, SinkError> {
    match tokio::time::timeout(limit, call).await {
        Ok(result) => result,
        Err(_) => Err(SinkError::NoAnswer {
            action,
            secs: limit.as_secs(),
        }),
    }
}

/// The destination's connection options from `sink.url` (kept to TCP as given), and
/// its address for error messages.
pub(crate) fn destination(cfg: &SinkConfig) -> Result<(Opts, String), mysql_async::UrlError> {
    let opts = Opts::from_url(&rowlog_api::url::tcp_as_given(&cfg.url))?;
    let addr = format!("{}:{}", opts.ip_or_hostname(), opts.tcp_port());
    Ok((opts, addr))
}

impl MySqlSink {
    /// Opens a session configured for replication apply:
    /// * `time_zone='+00:00'`: TIMESTAMP values travel as UTC fields;
    /// * strict mode, so a value the table cannot hold is an error, never a silent
    ///   truncation; `NO_AUTO_VALUE_ON_ZERO` so an id of 0 stays 0;
    /// * every warning of a statement kept (`max_error_count`), for [`exec_write`];
    /// * READ COMMITTED: no gap locks, so concurrent workers upserting neighbouring
    ///   keys of one table do not deadlock each other;
    /// * `foreign_key_checks=0`: rows of different tables arrive through different
    ///   partitions and workers, so a child may be applied before its parent (as with
    ///   parallel native replication).
    pub async fn connect(cfg: &SinkConfig, pipeline: &str) -> Result<Self, SinkError> {
        let (opts, addr) = destination(cfg).map_err(SinkError::BadUrl)?;
        let staged = cfg.load_data.then(load::Staged::default);
        let opts = OptsBuilder::from_opts(opts).stmt_cache_size(256).init(vec![
            "SET time_zone='+00:00'".to_string(),
            format!("SET sql_mode='{STRICT_MODE}', max_error_count={MAX_WARNINGS}"),
            "SET foreign_key_checks=0".to_string(),
            "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED".to_string(),
        ]);
        let opts = match &staged {
            Some(s) => opts.local_infile_handler(Some(s.handler())),
            None => opts,
        };
        let call_timeout = Duration::from_secs(cfg.call_timeout_secs);
        let mut conn = answered(call_timeout, "the connection's handshake", async {
            Conn::new(opts).await.map_err(|source| SinkError::Connect {
                addr: addr.clone(),
                source,
            })
        })
        .await?;
        let staged = match staged {
            Some(s) => {
                let allowed: Option<i64> = conn
                    .query_first("SELECT @@local_infile")
                    .await
                    .map_err(|source| SinkError::Connect { addr, source })?;
                if allowed == Some(1) {
                    Some(s)
                } else {
                    tracing::info!(
                        "the destination has local_infile=OFF: upserts go as statements, not LOAD DATA"
                    );
                    None
                }
            }
            None => None,
        };
        Ok(Self {
            conn,
            pipeline: pipeline.to_owned(),
            progress_table: format!("{}.`rowlog_progress`", quote(&cfg.progress_database)),
            schema_changes_table: format!(
                "{}.`rowlog_schema_changes`",
                quote(&cfg.progress_database)
            ),
            schema_runs_table: format!("{}.`rowlog_schema_runs`", quote(&cfg.progress_database)),
            progress_db: cfg.progress_database.clone(),
            sql: HashMap::new(),
            staged,
            load_fits: HashMap::new(),
            fence: None,
            call_timeout,
        })
    }

    /// This sink's batches, and the progress a run raises or removes at its start,
    /// commit only while this process holds the pipeline's lease: a transaction that
    /// finds it gone is rolled back with [`SinkError::Fenced`].
    pub fn fenced_by(mut self, fence: Fence) -> Self {
        self.fence = Some(fence);
        self
    }

    /// Creates the progress database and table when missing.
    pub async fn ensure_progress_table(&mut self) -> Result<(), SinkError> {
        let create_db = format!("CREATE DATABASE IF NOT EXISTS {}", quote(&self.progress_db));
        let create_table = format!(
            "CREATE TABLE IF NOT EXISTS {} (\
               pipeline VARCHAR(128) NOT NULL,\
               log_id BIGINT UNSIGNED NOT NULL,\
               part INT UNSIGNED NOT NULL,\
               worker INT UNSIGNED NOT NULL,\
               workers INT UNSIGNED NOT NULL,\
               log_offset BIGINT UNSIGNED NOT NULL,\
               source_position VARCHAR(512) NOT NULL,\
               source_commit_ms BIGINT UNSIGNED NOT NULL,\
               updated_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),\
               PRIMARY KEY (pipeline, part, workers, worker)\
             ) ENGINE=InnoDB",
            self.progress_table
        );
        // Schema changes applied, by reading epoch and source position: a replayed one
        // is not run again. The epoch is part of the key because a source that was
        // reset (or a new source after a failover) writes its binlog files under the
        // same names from the start again.
        let create_ddl_table = format!(
            "CREATE TABLE IF NOT EXISTS {} (\
               pipeline VARCHAR(128) NOT NULL,\
               epoch INT UNSIGNED NOT NULL DEFAULT 0,\
               binlog_file VARCHAR(255) NOT NULL,\
               binlog_pos BIGINT UNSIGNED NOT NULL,\
               kind VARCHAR(32) NOT NULL,\
               statement LONGTEXT NOT NULL,\
               outcome VARCHAR(255) NOT NULL,\
               applied_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),\
               PRIMARY KEY (pipeline, epoch, binlog_file, binlog_pos)\
             ) ENGINE=InnoDB",
            self.schema_changes_table
        );
        // Schema changes started and not recorded yet, each with the definition of its
        // table before it: a run after a lost reply tells from it whether the change
        // went through (`alter_once`).
        let create_runs_table = format!(
            "CREATE TABLE IF NOT EXISTS {} (\
               pipeline VARCHAR(128) NOT NULL,\
               epoch INT UNSIGNED NOT NULL,\
               binlog_file VARCHAR(255) NOT NULL,\
               binlog_pos BIGINT UNSIGNED NOT NULL,\
               definition_before LONGTEXT NULL,\
               started_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),\
               PRIMARY KEY (pipeline, epoch, binlog_file, binlog_pos)\
             ) ENGINE=InnoDB",
            self.schema_runs_table
        );
        let table = self.progress_table.clone();
        let create_error = |source| progress_error(&table, "create")(source);
        for q in [create_db, create_table, create_ddl_table, create_runs_table] {
            self.conn.query_drop(&q).await.map_err(create_error)?;
        }
        // A table made by an earlier version has no epoch column. Its rows get
        // `LEGACY_EPOCH`, which matches any epoch, as they did before: which epoch they
        // were recorded in is unknown, and a change found unrecorded is run again
        // (a TRUNCATE run twice would empty rows applied after it).
        let has_epoch = self
            .progress_db_has(
                "SELECT 1 FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = ? \
                 AND TABLE_NAME = 'rowlog_schema_changes' AND COLUMN_NAME = 'epoch'",
            )
            .await
            .map_err(create_error)?;
        if !has_epoch {
            tracing::info!(table = %self.schema_changes_table, "adding the reading epoch to the record of schema changes");
            let alter = format!(
                "ALTER TABLE {} ADD COLUMN epoch INT UNSIGNED NOT NULL DEFAULT {LEGACY_EPOCH} AFTER pipeline, \
                 DROP PRIMARY KEY, ADD PRIMARY KEY (pipeline, epoch, binlog_file, binlog_pos)",
                self.schema_changes_table
            );
            match self.conn.query_drop(&alter).await {
                Ok(()) => {}
                // Another start (a second pipeline, `rowlog offsets`) added it meanwhile.
                Err(mysql_async::Error::Server(e)) if e.code == 1060 => {}
                Err(e) => return Err(create_error(e)),
            }
        }
        // A table made before 2026-11-28 keys a row by worker alone, so a run with
        // another worker count overwrote the rows of the run before, which still say
        // what that run applied (see `rowlog::pipeline::applied`).
        let keyed_by_count = self
            .progress_db_has(
                "SELECT 1 FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = ? \
                 AND TABLE_NAME = 'rowlog_progress' AND INDEX_NAME = 'PRIMARY' AND COLUMN_NAME = 'workers'",
            )
            .await
            .map_err(create_error)?;
        if !keyed_by_count {
            tracing::info!(table = %self.progress_table, "adding the worker count to the progress table's key");
            let alter = format!(
                "ALTER TABLE {} DROP PRIMARY KEY, ADD PRIMARY KEY (pipeline, part, workers, worker)",
                self.progress_table
            );
            self.conn.query_drop(&alter).await.map_err(create_error)?;
        }
        Ok(())
    }

    /// Whether `query`, a question to `information_schema` about the progress
    /// database (its one parameter), finds a row.
    async fn progress_db_has(&mut self, query: &str) -> Result<bool, mysql_async::Error> {
        let found: Option<u8> = self.conn.exec_first(query, (&self.progress_db,)).await?;
        Ok(found.is_some())
    }

    /// Applies `changes` (one partition's, in log order) in one transaction, recording
    /// `progress` in it when given. Replays of a stretch of the log pass `None`: they
    /// must not move any worker's stored offset.
    async fn apply_changes(
        &mut self,
        changes: &[ChangeEvent],
        progress: Option<WorkerProgress>,
    ) -> Result<(), SinkError> {
        let (source_position, commit_ms) = changes
            .last()
            .map(|c| (c.source.id.to_string(), c.source.commit_time_ms))
            .unwrap_or_default();
        let offset = progress.map(|p| p.offset).unwrap_or(u64::MAX);
        let groups = coalesce(changes);
        for g in &groups {
            if g.upserts.len() >= load::MIN_ROWS {
                self.check_load_fits(g.table).await?;
            }
        }

        // Build every statement's text before the transaction borrows the connection.
        let mut work: Vec<Stmt<'_>> = Vec::new();
        for g in &groups {
            // Tables with secondary unique keys take REPLACE instead of the upsert. With
            // several unique keys, INSERT … ON DUPLICATE KEY UPDATE can update the row
            // that holds a unique value instead of the row being written (MySQL's
            // documented hazard). These tables are applied in source order (routed whole,
            // see ChangeEvent::routing_key_bytes) and a batch's coalesced final states
            // are mutually unique, so every row REPLACE evicts is itself in the batch and
            // gets its own final state: the result is exactly the source's state. While
            // replaying, an evicted row's newer change lies ahead in the replay.
            let write = if g.table.unique_keys.is_empty() {
                Kind::Upsert
            } else {
                Kind::Replace
            };
            // Keyless tables: one statement per change, in log order.
            for &(insert, row) in &g.ordered {
                let kind = if insert {
                    Kind::Insert
                } else {
                    Kind::DeleteOne
                };
                work.push(Stmt {
                    table: g.table,
                    kind,
                    rows: vec![row],
                    text: self.statement(g.table, kind, 1),
                    one: self.statement(g.table, kind, 1),
                    data: None,
                });
            }
            // Deletes go first: a key the source changed only in a way the destination's
            // collation ignores ('abc' → 'ABC') is a delete of one and an upsert of the
            // other, and the destination sees both as the same row.
            let load = write == Kind::Upsert
                && g.upserts.len() >= load::MIN_ROWS
                && self.load_fits(g.table);
            let mut groups_of = vec![(Kind::Delete, &g.deletes, g.table.primary_key.len())];
            if !load {
                groups_of.push((write, &g.upserts, g.table.columns.len()));
            }
            for (kind, rows, width) in groups_of {
                let mut rest: &[&[Value]] = rows;
                for n in sql::chunks(rest.len(), width) {
                    let (now, later) = rest.split_at(n);
                    work.push(Stmt {
                        table: g.table,
                        kind,
                        rows: now.to_vec(),
                        text: self.statement(g.table, kind, n),
                        one: self.statement(g.table, kind, 1),
                        data: None,
                    });
                    rest = later;
                }
            }
            if load {
                let mut data = Vec::new();
                load::encode(g.table, &g.upserts, &mut data);
                work.push(Stmt {
                    table: g.table,
                    kind: Kind::Load,
                    rows: g.upserts.clone(),
                    text: self.statement(g.table, Kind::Load, 0),
                    one: self.statement(g.table, Kind::Upsert, 1),
                    data: Some(data.into()),
                });
            }
        }

        let apply_error = |table: &TableSchema, key: Option<String>, source| SinkError::Apply {
            table: table.name.clone(),
            key,
            offset,
            source_position: source_position.clone(),
            source,
        };
        let staged = self.staged.clone();
        let mut tx = self
            .conn
            .start_transaction(TxOpts::default())
            .await
            .map_err(progress_error(&self.progress_table, "begin"))?;
        if let Err(e) = write_all(&mut tx, &work, staged.as_ref(), &apply_error).await {
            // Release the batch's row locks now: a dropped transaction is rolled back
            // only at the connection's next use, and a halted partition's connection
            // may not be used again (its locks would block whoever fixes the row).
            if let Err(r) = tx.rollback().await {
                tracing::debug!(error = %r, "rolling back a rejected batch failed");
            }
            return Err(e);
        }
        let progress_sql = format!(
            "INSERT INTO {} (pipeline, log_id, part, worker, workers, log_offset, source_position, source_commit_ms, updated_at) \
             VALUES (?,?,?,?,?,?,?,?,NOW(6)) ON DUPLICATE KEY UPDATE log_id=VALUES(log_id), workers=VALUES(workers), log_offset=VALUES(log_offset), \
             source_position=VALUES(source_position), source_commit_ms=VALUES(source_commit_ms), updated_at=VALUES(updated_at)",
            self.progress_table
        );
        let Some(WorkerProgress {
            log_id,
            partition,
            worker,
            workers,
            offset,
        }) = progress
        else {
            return tx
                .commit()
                .await
                .map_err(progress_error(&self.progress_table, "commit"));
        };
        tx.exec_drop(
            progress_sql,
            (
                &self.pipeline,
                log_id,
                partition,
                worker,
                workers,
                offset,
                &source_position,
                commit_ms,
            ),
        )
        .await
        .map_err(progress_error(&self.progress_table, "update"))?;
        commit_fenced(self.fence.as_ref(), tx, &self.progress_table).await
    }

    /// Snapshot: creates `table` with the source's `create` statement (and its database)
    /// when the destination does not have it. Returns whether it was created.
    pub async fn create_table_if_missing(
        &mut self,
        table: &TableName,
        create: &str,
    ) -> Result<bool, SinkError> {
        let failed = |source| SinkError::SchemaChange {
            position: "snapshot".into(),
            statement: create.chars().take(300).collect(),
            source,
        };
        if table_exists(&mut self.conn, table).await.map_err(failed)? {
            return Ok(false);
        }
        self.conn
            .query_drop(format!(
                "CREATE DATABASE IF NOT EXISTS {}",
                quote(&table.db)
            ))
            .await
            .map_err(failed)?;
        self.conn
            .query_drop(format!("USE {}", quote(&table.db)))
            .await
            .map_err(failed)?;
        self.conn.query_drop(create).await.map_err(failed)?;
        Ok(true)
    }

    /// Snapshot: replaces `table` with one made by the source's `create` statement (the
    /// destination's table has a shape the source no longer has).
    pub async fn recreate_table(
        &mut self,
        table: &TableName,
        create: &str,
    ) -> Result<(), SinkError> {
        let q = format!(
            "DROP TABLE IF EXISTS {}.{}",
            quote(&table.db),
            quote(&table.table)
        );
        self.conn
            .query_drop(&q)
            .await
            .map_err(|source| SinkError::SchemaChange {
                position: "snapshot".into(),
                statement: q.clone(),
                source,
            })?;
        self.create_table_if_missing(table, create)
            .await
            .map(|_| ())
    }

    /// Whether the destination has `table`.
    pub async fn table_exists(&mut self, table: &TableName) -> Result<bool, SinkError> {
        table_exists(&mut self.conn, table)
            .await
            .map_err(|source| SinkError::Progress {
                table: table.to_string(),
                action: "look up",
                source,
            })
    }

    /// Whether the progress table exists, for readers that must not create or migrate
    /// it (`rowlog offsets show`, beside a daemon that may be of another version).
    pub async fn has_progress_table(&mut self) -> Result<bool, SinkError> {
        let name = TableName::new(self.progress_db.clone(), "rowlog_progress");
        self.table_exists(&name).await
    }

    /// The partition's progress rows as a plain consistent read, which takes no lock:
    /// for `rowlog offsets show`, which runs beside the daemon and must neither wait
    /// for a worker's batch nor hold off its progress write.
    pub async fn peek_progress(&mut self, partition: u32) -> Result<SinkProgress, SinkError> {
        self.read_progress(partition, false).await
    }

    /// The partition's progress rows. `locking`: a locking read, as a start needs (see
    /// `load_progress`).
    async fn read_progress(
        &mut self,
        partition: u32,
        locking: bool,
    ) -> Result<SinkProgress, SinkError> {
        // The locking read: a transaction that wrote these rows and whose COMMIT is
        // still in flight (its connection lost, the server not done) holds their locks,
        // and this waits for its outcome instead of reading the rows as they were
        // before. (`LOCK IN SHARE MODE`: both MariaDB and MySQL 8 accept it.)
        let q = format!(
            "SELECT log_id, worker, workers, log_offset FROM {} WHERE pipeline = ? AND part = ?{}",
            self.progress_table,
            if locking { " LOCK IN SHARE MODE" } else { "" }
        );
        let err = |action| progress_error(&self.progress_table, action);
        let mut tx = begin_progress(&mut self.conn, &self.progress_table).await?;
        let rows: Vec<(u64, u32, u32, u64)> = tx
            .exec(q, (&self.pipeline, partition))
            .await
            .map_err(err("read"))?;
        tx.commit().await.map_err(err("commit"))?;
        Ok(rows
            .into_iter()
            .map(|(log_id, worker, workers, offset)| WorkerProgress {
                log_id,
                partition,
                worker,
                workers,
                offset,
            })
            .collect())
    }

    /// Snapshot: empties a destination table before its copy starts (what is there is
    /// replaced by the copy, rows the source does not have included).
    pub async fn empty_table(&mut self, table: &TableName) -> Result<(), SinkError> {
        let q = format!(
            "TRUNCATE TABLE {}.{}",
            quote(&table.db),
            quote(&table.table)
        );
        self.conn
            .query_drop(&q)
            .await
            .map_err(|source| SinkError::Apply {
                table: table.clone(),
                key: None,
                offset: u64::MAX,
                source_position: "snapshot".into(),
                source,
            })
    }

    /// Applies a stretch of the log again without touching stored progress (`rowlog replay`).
    pub async fn apply_without_progress(
        &mut self,
        changes: &[ChangeEvent],
    ) -> Result<(), SinkError> {
        self.apply_changes(changes, None).await
    }

    /// What applying `changes` would do to the destination now, key by key, without
    /// changing anything (`rowlog replay --dry-run`).
    pub async fn plan(&mut self, changes: &[ChangeEvent]) -> Result<Vec<Planned>, SinkError> {
        let mut out = Vec::new();
        for g in coalesce(changes) {
            let t = g.table;
            // Keyless rows have no identity to look up: say what would be run.
            for &(insert, row) in &g.ordered {
                out.push(Planned {
                    table: t.name.to_string(),
                    key: render_key(t, row),
                    action: if insert {
                        "insert (no primary key)"
                    } else {
                        "delete one equal row (no primary key)"
                    },
                });
            }
            let select = format!(
                "SELECT {} FROM {} WHERE {}",
                t.columns
                    .iter()
                    .map(|c| quote(&c.name))
                    .collect::<Vec<_>>()
                    .join(","),
                sql::table_ident(t),
                t.pk_columns()
                    .map(|c| format!("{} = ?", quote(&c.name)))
                    .collect::<Vec<_>>()
                    .join(" AND ")
            );
            let items = g
                .deletes
                .iter()
                .map(|r| (r, false))
                .chain(g.upserts.iter().map(|r| (r, true)));
            for (row, upsert) in items {
                let key: Vec<mysql_async::Value> =
                    t.primary_key.iter().map(|&i| row[i].to_param()).collect();
                let current: Option<mysql_async::Row> =
                    self.conn.exec_first(&select, key).await.map_err(|source| {
                        SinkError::Apply {
                            table: t.name.clone(),
                            key: Some(render_key(t, row)),
                            offset: u64::MAX,
                            source_position: "dry run".into(),
                            source,
                        }
                    })?;
                let action = match (current, upsert) {
                    (None, true) => "insert",
                    (None, false) => "absent (no change)",
                    (Some(_), false) => "delete",
                    (Some(cur), true) => {
                        let same = row.iter().enumerate().all(|(i, v)| {
                            cur.as_ref(i).map(|c| c.as_sql(false))
                                == Some(v.to_param().as_sql(false))
                        });
                        if same {
                            "unchanged"
                        } else {
                            "update"
                        }
                    }
                };
                out.push(Planned {
                    table: t.name.to_string(),
                    key: render_key(t, row),
                    action,
                });
            }
        }
        Ok(out)
    }

    /// Whether `table`'s upserts go as LOAD DATA (after [`Self::check_load_fits`]).
    fn load_fits(&self, table: &Arc<TableSchema>) -> bool {
        self.staged.is_some()
            && self
                .load_fits
                .get(&(Arc::as_ptr(table) as usize))
                .is_some_and(|(_, fits, _)| *fits)
    }

    /// Checks, per schema version and again after [`LOAD_CHECK_TTL`], what
    /// [`crate::load`] requires of the destination's table.
    async fn check_load_fits(&mut self, table: &Arc<TableSchema>) -> Result<(), SinkError> {
        let key = Arc::as_ptr(table) as usize;
        let fresh = |(_, _, at): &(Arc<TableSchema>, bool, Instant)| at.elapsed() < LOAD_CHECK_TTL;
        if self.staged.is_none() || self.load_fits.get(&key).is_some_and(fresh) {
            return Ok(());
        }
        let fits = load::columns_fit(table) && self.destination_fits(table).await?;
        tracing::debug!(table = %table.name, fits, "LOAD DATA for upserts");
        if self.load_fits.len() >= SQL_CACHE_LIMIT {
            self.load_fits.clear();
        }
        self.load_fits
            .insert(key, (table.clone(), fits, Instant::now()));
        Ok(())
    }

    /// Whether the destination's table is one LOAD DATA … REPLACE writes exactly as the
    /// upsert would: the event's columns by name and no column of its own (REPLACE
    /// resets those), each written text column in the event's character set (the load
    /// sends bytes unconverted), the primary key on the event's key columns as its only
    /// unique index, no triggers, no foreign key referencing it.
    async fn destination_fits(&mut self, t: &TableSchema) -> Result<bool, SinkError> {
        let (db, name) = (&t.name.db, &t.name.table);
        let failed = |source| SinkError::Apply {
            table: t.name.clone(),
            key: None,
            offset: u64::MAX,
            source_position: "checking the destination table for LOAD DATA".into(),
            source,
        };
        let columns: Vec<(String, Option<String>)> = self
            .conn
            .exec(
                "SELECT COLUMN_NAME, CHARACTER_SET_NAME FROM information_schema.COLUMNS \
                 WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?",
                (db, name),
            )
            .await
            .map_err(failed)?;
        // utf8 is utf8mb3; binary strings have no character set on the destination.
        let charset = |cs: Option<&str>| match cs {
            None | Some("binary") => None,
            Some("utf8") => Some("utf8mb3".to_string()),
            Some(cs) => Some(cs.to_ascii_lowercase()),
        };
        let columns_match = columns.len() == t.columns.len()
            && t.columns.iter().all(|c| {
                columns
                    .iter()
                    .find(|(n, _)| n.eq_ignore_ascii_case(&c.name))
                    .is_some_and(|(_, cs)| {
                        c.generated || charset(cs.as_deref()) == charset(c.charset_name.as_deref())
                    })
            });
        if !columns_match {
            return Ok(false);
        }
        let unique: Vec<(String, String)> = self
            .conn
            .exec(
                "SELECT INDEX_NAME, COLUMN_NAME FROM information_schema.STATISTICS \
                 WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? AND NON_UNIQUE = 0 \
                 ORDER BY INDEX_NAME, SEQ_IN_INDEX",
                (db, name),
            )
            .await
            .map_err(failed)?;
        let pk_only = unique.len() == t.primary_key.len()
            && unique
                .iter()
                .zip(t.pk_columns())
                .all(|((index, column), pk)| {
                    index == "PRIMARY" && column.eq_ignore_ascii_case(&pk.name)
                });
        if !pk_only {
            return Ok(false);
        }
        let found: Option<(u64, u64)> = self
            .conn
            .exec_first(
                "SELECT (SELECT COUNT(*) FROM information_schema.TRIGGERS \
                   WHERE EVENT_OBJECT_SCHEMA = ? AND EVENT_OBJECT_TABLE = ?), \
                 (SELECT COUNT(*) FROM information_schema.KEY_COLUMN_USAGE \
                   WHERE REFERENCED_TABLE_SCHEMA = ? AND REFERENCED_TABLE_NAME = ?)",
                (db, name, db, name),
            )
            .await
            .map_err(failed)?;
        Ok(found == Some((0, 0)))
    }

    fn statement(&mut self, table: &Arc<TableSchema>, kind: Kind, rows: usize) -> Arc<str> {
        if self.sql.len() >= SQL_CACHE_LIMIT {
            self.sql.clear();
        }
        let key = (Arc::as_ptr(table) as usize, kind, rows);
        self.sql
            .entry(key)
            .or_insert_with(|| {
                let text = match kind {
                    Kind::Upsert => sql::upsert(table, rows),
                    Kind::Replace => sql::replace(table, rows),
                    Kind::Delete => sql::delete(table, rows),
                    Kind::Insert => sql::insert(table, rows),
                    Kind::DeleteOne => sql::delete_one_equal(table),
                    Kind::Load => load::statement(table),
                };
                tracing::debug!(table = %table.name, rows, sql = %text, "statement built");
                (table.clone(), text.into())
            })
            .1
            .clone()
    }
}

/// Errors meaning a schema change's effect is already in place: table exists (1050),
/// unknown table to drop (1051), duplicate column (1060) or key name (1061), column or
/// key to drop missing (1091), database exists (1007) or missing (1008). The same set
/// TiDB DM treats as already applied.
fn already_in_place(e: &mysql_async::Error) -> Option<u16> {
    match e {
        mysql_async::Error::Server(s)
            if matches!(s.code, 1050 | 1051 | 1060 | 1061 | 1091 | 1007 | 1008) =>
        {
            Some(s.code)
        }
        _ => None,
    }
}

/// The epoch of schema-change records made before the epoch was recorded: they match
/// a change of any epoch at their position.
const LEGACY_EPOCH: u32 = u32::MAX;

/// Maps an error of `action` on the progress table `table`.
fn progress_error(
    table: &str,
    action: &'static str,
) -> impl FnOnce(mysql_async::Error) -> SinkError {
    let table = table.to_owned();
    move |source| SinkError::Progress {
        table,
        action,
        source,
    }
}

impl MySqlSink {
    /// The schema changes recorded for this pipeline, of every reading epoch: binlog
    /// file, position, kind, statement.
    pub async fn recorded_schema_changes(
        &mut self,
    ) -> Result<Vec<(String, u64, String, String)>, SinkError> {
        let q = format!(
            "SELECT binlog_file, binlog_pos, kind, statement FROM {} WHERE pipeline = ?",
            self.schema_changes_table
        );
        answered(self.call_timeout, "a read of schema changes", async {
            self.conn
                .exec(q, (&self.pipeline,))
                .await
                .map_err(progress_error(&self.schema_changes_table, "read"))
        })
        .await
    }

    /// Runs a schema change at the source's clock: `NOW()` and `CURRENT_TIMESTAMP` in it
    /// (the value an `ADD COLUMN … DEFAULT CURRENT_TIMESTAMP` gives existing rows)
    /// read the time the statement ran on the source, as under native replication,
    /// not the time rowlog applies it, which may be hours later while it catches up.
    /// `TIMESTAMP` is a session variable on MySQL and MariaDB alike; it is set back
    /// before the session applies rows again, and if that fails the schema change is
    /// reported failed (its retry on a new session finds it in place).
    async fn run_schema_change(&mut self, change: &SchemaChange) -> Result<String, SinkError> {
        let id = &change.source.id;
        let failed = |source| SinkError::SchemaChange {
            position: id.event.to_string(),
            statement: change.statement.chars().take(300).collect(),
            source,
        };
        let ms = change.source.commit_time_ms;
        if ms > 0 {
            let at = format!("SET TIMESTAMP = {}.{:03}", ms / 1000, ms % 1000);
            self.conn.query_drop(at).await.map_err(failed)?;
        }
        let outcome = self.run_schema_change_now(change).await;
        if ms > 0 {
            let reset = self.conn.query_drop("SET TIMESTAMP = DEFAULT").await;
            // The change's own failure is the one to report (a broken connection
            // fails the reset too).
            if let (Ok(_), Err(e)) = (&outcome, reset) {
                return Err(failed(e));
            }
        }
        outcome
    }

    /// Runs a schema change in its session database; returns the outcome to record.
    async fn run_schema_change_now(&mut self, change: &SchemaChange) -> Result<String, SinkError> {
        let id = &change.source.id;
        let failed = |source| SinkError::SchemaChange {
            position: id.event.to_string(),
            statement: change.statement.chars().take(300).collect(),
            source,
        };
        if !change.db.is_empty() {
            let use_db = format!("USE {}", quote(&change.db));
            match self.conn.query_drop(&use_db).await {
                Ok(()) => {}
                // A database statement may run while the session's database does not
                // exist on the destination (yet, or any more), and so may one whose
                // tables are all in other databases (`USE scratch; ALTER TABLE app.t …`
                // with scratch not replicated): names in them are explicit.
                Err(mysql_async::Error::Server(s))
                    if s.code == 1049 && change.tables.iter().all(|t| t.db != change.db) => {}
                Err(e) => return Err(failed(e)),
            }
        }
        if change.kind == SchemaChangeKind::RenameTable {
            return self.run_rename(change).await.map_err(failed);
        }
        let altered = match (change.kind, change.tables.as_slice()) {
            (SchemaChangeKind::AlterTable | SchemaChangeKind::CreateIndex, [table]) => {
                if let Some(outcome) = self.alter_once(change, table).await.map_err(failed)? {
                    return Ok(outcome);
                }
                true
            }
            _ => false,
        };
        match self.conn.query_drop(&change.statement).await {
            Ok(()) => Ok("applied".to_string()),
            Err(e) => match already_in_place(&e) {
                Some(code) => {
                    tracing::warn!(position = %id.event, statement = %change.statement, code,
                        "schema change already in place on the destination; recorded as applied");
                    Ok(format!("already in place (error {code})"))
                }
                None => {
                    // Refused, the change is not made (an ALTER is all or nothing): the
                    // table as it is then, perhaps mended by hand, is where it starts.
                    if altered && !crate::error::is_retryable(&e) {
                        if let Err(f) = self.forget_run(id).await {
                            tracing::warn!(position = %id.event, error = %f,
                                "cannot remove the started-run row of a refused schema change: after a fix by hand, the change would count as run; remove the row from rowlog_schema_runs");
                        }
                    }
                    Err(failed(e))
                }
            },
        }
    }
}

impl MySqlSink {
    /// An `ALTER TABLE` (or `CREATE INDEX`) on one table that would succeed a second
    /// time and do more (an unnamed `ADD INDEX (c)` makes a second index, an unnamed
    /// foreign key a second one) must not run again after its reply was lost or
    /// rowlog stopped before recording it. Before it first runs, the table's definition
    /// is stored (`rowlog_schema_runs`); a later run that finds the definition changed
    /// since knows the earlier one went through (`Some` outcome: do not run it). An
    /// ALTER that changes no definition is harmless to run twice.
    async fn alter_once(
        &mut self,
        change: &SchemaChange,
        table: &TableName,
    ) -> Result<Option<String>, mysql_async::Error> {
        let id = &change.source.id;
        let key = (
            self.pipeline.clone(),
            id.epoch,
            id.event.file.to_string(),
            id.event.pos,
        );
        let stored: Option<Option<String>> = self
            .conn
            .exec_first(
                format!(
                    "SELECT definition_before FROM {} WHERE pipeline = ? AND epoch = ? AND binlog_file = ? AND binlog_pos = ?",
                    self.schema_runs_table
                ),
                key.clone(),
            )
            .await?;
        let now = self.definition(table).await?;
        match stored {
            Some(before) if before != now => {
                tracing::warn!(position = %id.event, statement = %change.statement,
                    "a schema change's earlier run went through (its reply was lost, or rowlog stopped before recording it); not run again");
                Ok(Some("applied (an earlier run went through)".into()))
            }
            Some(_) => Ok(None),
            None => {
                self.conn
                    .exec_drop(
                        format!(
                            "INSERT INTO {} (pipeline, epoch, binlog_file, binlog_pos, definition_before) VALUES (?,?,?,?,?)",
                            self.schema_runs_table
                        ),
                        (key.0, key.1, key.2, key.3, now),
                    )
                    .await?;
                Ok(None)
            }
        }
    }

    /// `table`'s definition as `SHOW CREATE TABLE` gives it, without its
    /// `AUTO_INCREMENT` counter (rows move it); `None` when there is no such table.
    async fn definition(
        &mut self,
        table: &TableName,
    ) -> Result<Option<String>, mysql_async::Error> {
        let q = format!(
            "SHOW CREATE TABLE {}.{}",
            quote(&table.db),
            quote(&table.table)
        );
        match self.conn.query_first::<mysql_async::Row, _>(q).await {
            Ok(row) => Ok(row
                .and_then(|r| r.get::<String, _>(1))
                .map(|ddl| without_auto_increment(&ddl))),
            Err(mysql_async::Error::Server(e)) if e.code == 1146 => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Removes the started-run row of schema change `id`: recorded, or refused.
    async fn forget_run(&mut self, id: &ChangeId) -> Result<(), mysql_async::Error> {
        self.conn
            .exec_drop(
                format!(
                    "DELETE FROM {} WHERE pipeline = ? AND epoch = ? AND binlog_file = ? AND binlog_pos = ?",
                    self.schema_runs_table
                ),
                (&self.pipeline, id.epoch, id.event.file.to_string(), id.event.pos),
            )
            .await
    }

    /// Runs a `RENAME TABLE` so that it is never run twice. Run again after its reply
    /// was lost, or after rowlog stopped between running and recording it, a rename
    /// that succeeds twice does damage: a swap (`a TO tmp, b TO a, tmp TO b`) swaps
    /// back. So it runs with one more pair: a marker table of the progress database,
    /// named after the change, renamed in the same statement, which MariaDB and MySQL
    /// run whole or not at all. Finding the marker renamed, a later run knows the
    /// statement ran. The markers are dropped once the change is recorded
    /// ([`MySqlSink::recorded`]), never before: a run after that finds the record.
    async fn run_rename(&mut self, change: &SchemaChange) -> Result<String, mysql_async::Error> {
        let id = &change.source.id;
        let (name, before, after) = self.rename_markers(id);
        let ran: Option<u8> = self
            .conn
            .exec_first(
                "SELECT 1 FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?",
                (&self.progress_db, format!("{name}_done")),
            )
            .await?;
        if ran.is_some() {
            tracing::warn!(position = %id.event, statement = %change.statement,
                "a rename's earlier run went through (its reply was lost, or rowlog stopped before recording it); not run again");
            return Ok("applied (an earlier run went through)".into());
        }
        // A primary key: servers may require one of every table
        // (`sql_require_primary_key`, `innodb_force_primary_key`).
        self.conn
            .query_drop(format!(
                "CREATE TABLE IF NOT EXISTS {before} (x INT PRIMARY KEY)"
            ))
            .await?;
        // On a line of its own: a trailing `-- comment` cannot swallow it.
        let statement = change.statement.trim_end().trim_end_matches(';').trim_end();
        let outcome = match self
            .conn
            .query_drop(format!("{statement}\n, {before} TO {after}"))
            .await
        {
            Ok(()) => "applied".to_string(),
            Err(e) => match already_in_place(&e) {
                Some(code) => {
                    tracing::warn!(position = %id.event, statement = %change.statement, code,
                        "schema change already in place on the destination; recorded as applied");
                    format!("already in place (error {code})")
                }
                // The marker stays for the next try (it may have been renamed, if the
                // connection went after the statement ran).
                None => return Err(e),
            },
        };
        Ok(outcome)
    }

    /// The marker table's name of the rename `id`, and its qualified names before and
    /// after the statement renames it.
    fn rename_markers(&self, id: &ChangeId) -> (String, String, String) {
        let name = format!(
            "rowlog_rename_{:016x}",
            fnv1a(&format!(
                "{}/{}/{}/{}",
                self.pipeline, id.epoch, id.event.file, id.event.pos
            ))
        );
        let db = quote(&self.progress_db);
        let before = format!("{db}.{}", quote(&name));
        let after = format!("{db}.{}", quote(&format!("{name}_done")));
        (name, before, after)
    }

    /// After schema change `id` is recorded: what told a later run whether it ran is
    /// no longer needed (the record tells it now), and is removed. Cleaning up only:
    /// a failure is logged; what stays (a marker table, a row of a recorded change) is
    /// harmless, and can be dropped by hand.
    async fn recorded(&mut self, change: &SchemaChange) {
        let id = &change.source.id;
        let mut failed = self.forget_run(id).await.err();
        if change.kind == SchemaChangeKind::RenameTable {
            let (_, before, after) = self.rename_markers(id);
            let drop = format!("DROP TABLE IF EXISTS {before}, {after}");
            if let Err(e) = self.conn.query_drop(drop).await {
                failed = Some(e);
            }
        }
        if let Some(e) = failed {
            tracing::warn!(position = %id.event, error = %e, "cannot clean up after a recorded schema change");
        }
    }
}

/// `ddl` without its table option `AUTO_INCREMENT=n`, looked for only among the table
/// options (after the line that closes the column list: a comment or default of a
/// column may hold the same text; SHOW CREATE TABLE writes newlines in them as `\n`).
fn without_auto_increment(ddl: &str) -> String {
    let options = ddl.rfind("\n)").unwrap_or(0);
    match ddl[options..]
        .find(" AUTO_INCREMENT=")
        .map(|at| options + at)
    {
        Some(at) => {
            let rest = &ddl[at + " AUTO_INCREMENT=".len()..];
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            format!("{}{}", &ddl[..at], &rest[digits..])
        }
        None => ddl.to_owned(),
    }
}

/// FNV-1a, 64 bits: a name that stays the same across builds and versions of rowlog
/// (std's hasher promises neither).
fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Commits `tx` only while this process holds the pipeline's lease. The check runs
/// last before the COMMIT, so the shared lock it takes on the lease's row, which holds
/// off a process taking the lease over, is held only for the COMMIT. A transaction
/// that finds the lease gone is rolled back now (its row locks go at once, not at the
/// connection's next use) and ends in [`SinkError::Fenced`]. Without a fence (tools
/// that write under their own lease) it simply commits.
async fn commit_fenced(
    fence: Option<&Fence>,
    mut tx: Transaction<'_>,
    table: &str,
) -> Result<(), SinkError> {
    if let Some(fence) = fence {
        if let Err(e) = check_fence(fence, &mut tx).await {
            if e.is_fenced() {
                if let Err(r) = tx.rollback().await {
                    tracing::debug!(error = %r, "rolling back a fenced transaction failed");
                }
            }
            return Err(e);
        }
    }
    tx.commit().await.map_err(progress_error(table, "commit"))
}

/// Checks in `tx` that this process holds the pipeline's lease and it has not run
/// out, taking a shared lock on the lease's row that holds off a process taking it
/// over until `tx` ends. [`SinkError::Fenced`] when it does not.
async fn check_fence(fence: &Fence, tx: &mut Transaction<'_>) -> Result<(), SinkError> {
    let (pipeline, host, machine, pid, token) = &fence.params;
    let params = (pipeline, host, machine, *pid, *token);
    let (held, cause) = match tx.exec_first::<u8, _, _>(&fence.sql, params).await {
        Ok(held) => (held.is_some(), None),
        Err(e) if crate::error::is_retryable(&e) => {
            return Err(progress_error(&fence.table, "check the lease in")(e))
        }
        // Not a rejected change: whatever keeps the lease from being read (its
        // table gone, a privilege revoked) stops the pipeline.
        Err(e) => (false, Some(e)),
    };
    if held {
        Ok(())
    } else {
        Err(SinkError::Fenced {
            pipeline: fence.pipeline.clone(),
            cause,
        })
    }
}

/// A transaction on the progress table `table`; its begin failing is that table's error.
async fn begin_progress<'c>(conn: &'c mut Conn, table: &str) -> Result<Transaction<'c>, SinkError> {
    conn.start_transaction(TxOpts::default())
        .await
        .map_err(progress_error(table, "begin"))
}

impl ChangeSink for MySqlSink {
    type Error = SinkError;

    async fn while_fenced<T: Send>(
        &mut self,
        inside: impl std::future::Future<Output = T> + Send,
    ) -> Result<T, SinkError> {
        let Some(fence) = self.fence.clone() else {
            return Ok(inside.await);
        };
        let table = self.progress_table.clone();
        answered(self.call_timeout, "a hold on the lease", async {
            let mut tx = begin_progress(&mut self.conn, &table).await?;
            if let Err(e) = check_fence(&fence, &mut tx).await {
                if let Err(r) = tx.rollback().await {
                    tracing::debug!(error = %r, "rolling back a lease check failed");
                }
                return Err(e);
            }
            let out = inside.await;
            // A COMMIT that fails means the connection went meanwhile, and the lock
            // with it, maybe before `inside` ended: said, so the caller can say so.
            tx.commit().await.map_err(progress_error(
                &fence.table,
                "release the lease's row after a hold on",
            ))?;
            Ok(out)
        })
        .await
    }

    async fn schema_change_applied(&mut self, id: &ChangeId) -> Result<bool, SinkError> {
        let q = format!(
            "SELECT 1 FROM {} WHERE pipeline = ? AND epoch IN (?, {LEGACY_EPOCH}) AND binlog_file = ? AND binlog_pos = ? LIMIT 1",
            self.schema_changes_table
        );
        let found: Option<u8> = answered(self.call_timeout, "a read of schema changes", async {
            self.conn
                .exec_first(
                    q,
                    (
                        &self.pipeline,
                        id.epoch,
                        id.event.file.to_string(),
                        id.event.pos,
                    ),
                )
                .await
                .map_err(progress_error(&self.schema_changes_table, "read"))
        })
        .await?;
        Ok(found.is_some())
    }

    async fn apply_schema_change(
        &mut self,
        change: &SchemaChange,
        policy: SchemaChangePolicy,
    ) -> Result<(), SinkError> {
        let id = &change.source.id;
        // Recorded already: by a try whose reply was lost (the caller tries again after
        // a retryable error without asking). Running it again could undo it (a swap).
        if self.schema_change_applied(id).await? {
            self.recorded(change).await;
            return Ok(());
        }
        let outcome = match policy {
            SchemaChangePolicy::Apply => self.run_schema_change(change).await?,
            SchemaChangePolicy::Ignore => "ignored (sink.ddl = \"ignore\")".to_string(),
            SchemaChangePolicy::Halt => "not run (sink.ddl = \"halt\")".to_string(),
        };
        let q = format!(
            "INSERT INTO {} (pipeline, epoch, binlog_file, binlog_pos, kind, statement, outcome) \
             VALUES (?,?,?,?,?,?,?) ON DUPLICATE KEY UPDATE outcome = VALUES(outcome), applied_at = NOW(6)",
            self.schema_changes_table
        );
        self.conn
            .exec_drop(
                q,
                (
                    &self.pipeline,
                    id.epoch,
                    id.event.file.to_string(),
                    id.event.pos,
                    change.kind.as_str(),
                    &change.statement,
                    outcome,
                ),
            )
            .await
            .map_err(progress_error(&self.schema_changes_table, "record"))?;
        self.recorded(change).await;
        Ok(())
    }

    async fn apply(&mut self, batch: ApplyBatch<'_>) -> Result<(), SinkError> {
        let limit = self.call_timeout;
        answered(
            limit,
            "a batch",
            self.apply_changes(batch.changes, Some(batch.progress)),
        )
        .await
    }

    async fn set_progress(
        &mut self,
        partition: u32,
        rows: &[WorkerProgress],
    ) -> Result<(), SinkError> {
        let err = |action| progress_error(&self.progress_table, action);
        let mut tx = begin_progress(&mut self.conn, &self.progress_table).await?;
        tx.exec_drop(
            format!(
                "DELETE FROM {} WHERE pipeline = ? AND part = ?",
                self.progress_table
            ),
            (&self.pipeline, partition),
        )
        .await
        .map_err(err("delete"))?;
        for r in rows {
            tx.exec_drop(
                format!(
                    "INSERT INTO {} (pipeline, log_id, part, worker, workers, log_offset, source_position, source_commit_ms) \
                     VALUES (?,?,?,?,?,?,'set by rowlog offsets set',0)",
                    self.progress_table
                ),
                (&self.pipeline, r.log_id, partition, r.worker, r.workers, r.offset),
            )
            .await
            .map_err(err("insert"))?;
        }
        tx.commit().await.map_err(err("commit"))
    }

    async fn forget_progress(
        &mut self,
        partition: u32,
        rows: &[WorkerProgress],
    ) -> Result<(), SinkError> {
        let limit = self.call_timeout;
        answered(limit, "a removal of progress", async {
            let err = |action| progress_error(&self.progress_table, action);
            let mut tx = begin_progress(&mut self.conn, &self.progress_table).await?;
            for r in rows {
                tx.exec_drop(
                    format!(
                        "DELETE FROM {} WHERE pipeline = ? AND part = ? AND workers = ? AND worker = ? AND log_id = ?",
                        self.progress_table
                    ),
                    (&self.pipeline, partition, r.workers, r.worker, r.log_id),
                )
                .await
                .map_err(err("delete"))?;
            }
            commit_fenced(self.fence.as_ref(), tx, &self.progress_table).await
        })
        .await
    }

    async fn raise_progress(
        &mut self,
        partition: u32,
        rows: &[WorkerProgress],
    ) -> Result<(), SinkError> {
        let limit = self.call_timeout;
        answered(limit, "a raise of progress", async {
            let err = |action| progress_error(&self.progress_table, action);
            let mut tx = begin_progress(&mut self.conn, &self.progress_table).await?;
            for r in rows {
                // The row's other columns change with its offset, or not at all.
                // `log_offset` is assigned last, so the comparisons see its old value
                // whether assignments run left to right or all at once (MariaDB's
                // SIMULTANEOUS_ASSIGNMENT).
                tx.exec_drop(
                    format!(
                        "INSERT INTO {} (pipeline, log_id, part, worker, workers, log_offset, source_position, source_commit_ms, updated_at) \
                         VALUES (?,?,?,?,?,?,'applied through the start of a run',0,NOW(6)) \
                         ON DUPLICATE KEY UPDATE \
                         log_id = IF(VALUES(log_offset) > log_offset, VALUES(log_id), log_id), \
                         source_position = IF(VALUES(log_offset) > log_offset, VALUES(source_position), source_position), \
                         source_commit_ms = IF(VALUES(log_offset) > log_offset, VALUES(source_commit_ms), source_commit_ms), \
                         updated_at = IF(VALUES(log_offset) > log_offset, VALUES(updated_at), updated_at), \
                         log_offset = GREATEST(log_offset, VALUES(log_offset))",
                        self.progress_table
                    ),
                    (&self.pipeline, r.log_id, partition, r.worker, r.workers, r.offset),
                )
                .await
                .map_err(err("raise"))?;
            }
            // A process that lost the pipeline writes nothing more: an operator who took
            // it over may have moved the positions back since this one read them.
            commit_fenced(self.fence.as_ref(), tx, &self.progress_table).await
        })
        .await
    }

    async fn load_progress(&mut self, partition: u32) -> Result<SinkProgress, SinkError> {
        let limit = self.call_timeout;
        answered(
            limit,
            "a read of progress",
            self.read_progress(partition, true),
        )
        .await
    }
}

/// Whether the server `conn` is connected to has `table`.
pub async fn table_exists(conn: &mut Conn, table: &TableName) -> Result<bool, mysql_async::Error> {
    let found: Option<u8> = conn
        .exec_first(
            "SELECT 1 FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?",
            (&table.db, &table.table),
        )
        .await?;
    Ok(found.is_some())
}

#[cfg(test)]
mod tests {

    #[test]
    fn only_the_table_option_auto_increment_is_left_out_of_a_definition() {
        let ddl = "CREATE TABLE `t` (\n  `id` int(11) NOT NULL AUTO_INCREMENT,\n  `c` varchar(9) DEFAULT ' AUTO_INCREMENT=1' COMMENT 'x AUTO_INCREMENT=2',\n  PRIMARY KEY (`id`)\n) ENGINE=InnoDB AUTO_INCREMENT=17 DEFAULT CHARSET=latin1";
        assert_eq!(
            super::without_auto_increment(ddl),
            ddl.replace(" AUTO_INCREMENT=17", "")
        );
        let none = "CREATE TABLE `t` (\n  `id` int(11) NOT NULL\n) ENGINE=InnoDB";
        assert_eq!(super::without_auto_increment(none), none);
    }
    use super::{about_generated_column, named_column};
    use rowlog_api::{Column, ColumnType, TableName, TableSchema};

    #[test]
    fn value_errors_name_their_column_in_either_quoting() {
        let named = |db: &str, t: &str, c: &str| Some((Some((db.into(), t.into())), c.into()));
        let cases = [
            (
                "Out of range value for column 'gen_v' at row 1",
                Some((None, "gen_v".into())),
            ),
            (
                "Incorrect integer value: 'x7' for column `t`.`g`.`b` at row 1",
                named("t", "g", "b"),
            ),
            // The rejected value may itself look like a column mention.
            (
                "Incorrect integer value: 'for column `a`' for column `d`.`t`.`c2` at row 2",
                named("d", "t", "c2"),
            ),
            (
                "Data too long for column 'c' at row 3",
                Some((None, "c".into())),
            ),
            ("Truncated incorrect DOUBLE value: 'x'", None),
            // Quotes in a name are not escaped in messages: unreadable for sure.
            ("Out of range value for column 'a'b' at row 1", None),
            ("Out of range value for column `d`.`t`.`a`b` at row 1", None),
        ];
        for (message, column) in cases {
            assert_eq!(named_column(message), column, "{message}");
        }
    }

    #[test]
    fn only_the_tables_own_generated_columns_are_let_through() {
        let col = |name: &str, generated| Column {
            generated,
            ..Column::plain(name, ColumnType::Int)
        };
        let t = TableSchema {
            name: TableName::new("app", "g"),
            columns: vec![col("id", false), col("v", true)],
            primary_key: vec![0],
            unique_keys: vec![],
            keyless: false,
        };
        assert!(about_generated_column(
            &t,
            "Out of range value for column 'V' at row 1"
        ));
        assert!(about_generated_column(
            &t,
            "Out of range value for column `app`.`g`.`v` at row 1"
        ));
        // A trigger writing another table's column of the same name.
        assert!(!about_generated_column(
            &t,
            "Out of range value for column `app`.`audit`.`v` at row 1"
        ));
        assert!(!about_generated_column(
            &t,
            "Out of range value for column 'id' at row 1"
        ));
    }
}
