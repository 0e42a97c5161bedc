//! One destination connection, owned by one sink worker.

use std::collections::HashMap;
use std::sync::Arc;

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts, OptsBuilder, TxOpts};
use rowlog_api::{
    ApplyBatch, ChangeEvent, ChangeId, ChangeSink, Retry, SchemaChange, SinkProgress, TableName,
    TableSchema, Value, WorkerProgress,
};

use crate::params::column_param;
use crate::sql::{self, quote};
use crate::{coalesce, SinkConfig, SinkError};

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Upsert,
    Replace,
    Delete,
    /// Keyless tables: a plain insert, and a delete of one equal row.
    Insert,
    DeleteOne,
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
            Kind::Upsert | Kind::Replace | Kind::Insert | Kind::DeleteOne => t
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
                Value::Decimal(d) => d.clone(),
                Value::Int(v) => v.to_string(),
                Value::UInt(v) => v.to_string(),
                other => format!("{other:?}"),
            };
            format!("{}={v}", t.columns[i].name)
        })
        .collect::<Vec<_>>()
        .join(", ")
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
    progress_db: String,
    sql: SqlCache,
}

impl MySqlSink {
    /// Opens a session configured for replication apply:
    /// * `time_zone='+00:00'`: TIMESTAMP values travel as UTC fields;
    /// * strict mode, so a value the table cannot hold is an error, never a silent
    ///   truncation; `NO_AUTO_VALUE_ON_ZERO` so an id of 0 stays 0;
    /// * READ COMMITTED: no gap locks, so concurrent workers upserting neighbouring
    ///   keys of one table do not deadlock each other;
    /// * `foreign_key_checks=0`: rows of different tables arrive through different
    ///   partitions and workers, so a child may be applied before its parent (as with
    ///   parallel native replication).
    pub async fn connect(cfg: &SinkConfig, pipeline: &str) -> Result<Self, SinkError> {
        let opts = Opts::from_url(&cfg.url).map_err(SinkError::BadUrl)?;
        let addr = format!("{}:{}", opts.ip_or_hostname(), opts.tcp_port());
        let opts = OptsBuilder::from_opts(opts).stmt_cache_size(256).init(vec![
            "SET time_zone='+00:00'",
            "SET sql_mode='STRICT_ALL_TABLES,NO_AUTO_VALUE_ON_ZERO,NO_ENGINE_SUBSTITUTION'",
            "SET foreign_key_checks=0",
            "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED",
        ]);
        let conn = Conn::new(opts)
            .await
            .map_err(|source| SinkError::Connect { addr, source })?;
        Ok(Self {
            conn,
            pipeline: pipeline.to_owned(),
            progress_table: format!("{}.`rowlog_progress`", quote(&cfg.progress_database)),
            schema_changes_table: format!(
                "{}.`rowlog_schema_changes`",
                quote(&cfg.progress_database)
            ),
            progress_db: cfg.progress_database.clone(),
            sql: HashMap::new(),
        })
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
               PRIMARY KEY (pipeline, part, worker)\
             ) ENGINE=InnoDB",
            self.progress_table
        );
        // Schema changes applied, by source position: a replayed one is not run again.
        let create_ddl_table = format!(
            "CREATE TABLE IF NOT EXISTS {} (\
               pipeline VARCHAR(128) NOT NULL,\
               binlog_file VARCHAR(255) NOT NULL,\
               binlog_pos BIGINT UNSIGNED NOT NULL,\
               kind VARCHAR(32) NOT NULL,\
               statement LONGTEXT NOT NULL,\
               outcome VARCHAR(255) NOT NULL,\
               applied_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),\
               PRIMARY KEY (pipeline, binlog_file, binlog_pos)\
             ) ENGINE=InnoDB",
            self.schema_changes_table
        );
        for q in [create_db, create_table, create_ddl_table] {
            self.conn
                .query_drop(&q)
                .await
                .map_err(|source| SinkError::Progress {
                    table: self.progress_table.clone(),
                    action: "create",
                    source,
                })?;
        }
        Ok(())
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
                });
            }
            for (kind, rows, width) in [
                (Kind::Delete, &g.deletes, g.table.primary_key.len()),
                (write, &g.upserts, g.table.columns.len()),
            ] {
                let mut rest: &[&[Value]] = rows;
                for n in sql::chunks(rest.len(), width) {
                    let (now, later) = rest.split_at(n);
                    work.push(Stmt {
                        table: g.table,
                        kind,
                        rows: now.to_vec(),
                        text: self.statement(g.table, kind, n),
                        one: self.statement(g.table, kind, 1),
                    });
                    rest = later;
                }
            }
        }

        let apply_error = |table: &TableSchema, key: Option<String>, source| SinkError::Apply {
            table: table.name.clone(),
            key,
            offset,
            source_position: source_position.clone(),
            source,
        };
        let mut tx = self
            .conn
            .start_transaction(TxOpts::default())
            .await
            .map_err(|source| SinkError::Progress {
                table: self.progress_table.clone(),
                action: "begin",
                source,
            })?;
        for stmt in &work {
            let Err(err) = tx.exec_drop(&*stmt.text, stmt.params()).await else {
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
                if let Err(e) = tx.exec_drop(&*stmt.one, stmt.row_params(row)).await {
                    return Err(apply_error(
                        stmt.table,
                        Some(render_key(stmt.table, row)),
                        e,
                    ));
                }
            }
            return Err(failed);
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
            return tx.commit().await.map_err(|source| SinkError::Progress {
                table: self.progress_table.clone(),
                action: "commit",
                source,
            });
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
        .map_err(|source| SinkError::Progress {
            table: self.progress_table.clone(),
            action: "update",
            source,
        })?;
        tx.commit().await.map_err(|source| SinkError::Progress {
            table: self.progress_table.clone(),
            action: "commit",
            source,
        })
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
        if self.table_exists(table).await.map_err(failed)? {
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

    /// Whether the destination has `table`.
    pub async fn table_exists(&mut self, table: &TableName) -> Result<bool, mysql_async::Error> {
        let found: Option<u8> = self
            .conn
            .exec_first(
                "SELECT 1 FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?",
                (&table.db, &table.table),
            )
            .await?;
        Ok(found.is_some())
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

    /// Replaces the progress rows of `partition` (`rowlog offsets set`): afterwards each
    /// worker resumes after `rows[w].offset`; no rows means "from the log's committed offset".
    pub async fn set_progress(
        &mut self,
        partition: u32,
        rows: &[WorkerProgress],
    ) -> Result<(), SinkError> {
        let err = |action| {
            let table = self.progress_table.clone();
            move |source| SinkError::Progress {
                table,
                action,
                source,
            }
        };
        let mut tx = self
            .conn
            .start_transaction(TxOpts::default())
            .await
            .map_err(err("begin"))?;
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

impl ChangeSink for MySqlSink {
    type Error = SinkError;

    async fn schema_change_applied(&mut self, id: &ChangeId) -> Result<bool, SinkError> {
        let q = format!(
            "SELECT 1 FROM {} WHERE pipeline = ? AND binlog_file = ? AND binlog_pos = ?",
            self.schema_changes_table
        );
        let found: Option<u8> = self
            .conn
            .exec_first(q, (&self.pipeline, id.event.file.to_string(), id.event.pos))
            .await
            .map_err(|source| SinkError::Progress {
                table: self.schema_changes_table.clone(),
                action: "read",
                source,
            })?;
        Ok(found.is_some())
    }

    async fn apply_schema_change(&mut self, change: &SchemaChange) -> Result<(), SinkError> {
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
                // exist on the destination (yet, or any more): names in it are explicit.
                Err(mysql_async::Error::Server(s))
                    if s.code == 1049 && change.tables.is_empty() => {}
                Err(e) => return Err(failed(e)),
            }
        }
        let outcome = match self.conn.query_drop(&change.statement).await {
            Ok(()) => "applied".to_string(),
            Err(e) => match already_in_place(&e) {
                Some(code) => {
                    tracing::warn!(position = %id.event, statement = %change.statement, code,
                        "schema change already in place on the destination; recorded as applied");
                    format!("already in place (error {code})")
                }
                None => return Err(failed(e)),
            },
        };
        let q = format!(
            "INSERT INTO {} (pipeline, binlog_file, binlog_pos, kind, statement, outcome) \
             VALUES (?,?,?,?,?,?) ON DUPLICATE KEY UPDATE outcome = VALUES(outcome), applied_at = NOW(6)",
            self.schema_changes_table
        );
        self.conn
            .exec_drop(
                q,
                (
                    &self.pipeline,
                    id.event.file.to_string(),
                    id.event.pos,
                    change.kind.as_str(),
                    &change.statement,
                    outcome,
                ),
            )
            .await
            .map_err(|source| SinkError::Progress {
                table: self.schema_changes_table.clone(),
                action: "record",
                source,
            })
    }

    async fn apply(&mut self, batch: ApplyBatch<'_>) -> Result<(), SinkError> {
        self.apply_changes(batch.changes, Some(batch.progress))
            .await
    }

    async fn load_progress(&mut self, partition: u32) -> Result<SinkProgress, SinkError> {
        let q = format!(
            "SELECT log_id, worker, workers, log_offset FROM {} WHERE pipeline = ? AND part = ?",
            self.progress_table
        );
        let rows: Vec<(u64, u32, u32, u64)> = self
            .conn
            .exec(q, (&self.pipeline, partition))
            .await
            .map_err(|source| SinkError::Progress {
                table: self.progress_table.clone(),
                action: "read",
                source,
            })?;
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
}
