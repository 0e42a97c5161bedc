//! The live binlog reader: one replica connection streaming events, decoded by
//! [`Decoder`] into [`SourceEvent`]s in binlog order, with table facts the binlog lacks
//! (names without `binlog_row_metadata=FULL`, secondary unique keys) looked up in
//! `information_schema` on a second connection.

use futures_util::StreamExt;
use mysql_async::prelude::Queryable;
use mysql_async::{BinlogStream, BinlogStreamRequest, Conn, Opts};
use rowlog_api::{
    BinlogPosition, ChangeSource, Column, ColumnType, GtidState, MysqlGtidSet, ResumePoint,
    SourceEvent, TableSchema,
};
use tracing::{info, warn};

use crate::decoder::{Decoder, DecoderOptions, TableLookup};
use crate::server::{self, ServerFlavor, ServerSettings};
use crate::{ResumeBy, SourceConfig, SourceError, StartFrom, TableFilter};

/// Reads one source server's binlog as a replica. Owns its connections; dropping it
/// closes them.
pub struct BinlogReader {
    config: SourceConfig,
    settings: ServerSettings,
    stream: BinlogStream,
    lookup: InfoSchema,
    decoder: Decoder,
}

/// [`TableLookup`] through `information_schema` on a second connection, opened on
/// first use.
struct InfoSchema {
    opts: Opts,
    conn: Option<Conn>,
    /// Collation id → character set name, read once from the source.
    collations: Option<std::collections::HashMap<u16, String>>,
}

impl BinlogReader {
    /// Connects, checks the server's settings and starts streaming from `resume` (a
    /// stored position) or else from `config.start`.
    pub async fn connect(
        config: &SourceConfig,
        resume: Option<ResumePoint>,
    ) -> Result<Self, SourceError> {
        let opts = Opts::from_url(&rowlog_api::url::tcp_as_given(&config.url))
            .map_err(SourceError::BadUrl)?;
        let filter = TableFilter::new(&config.include, &config.exclude).map_err(|e| {
            SourceError::Setting {
                variable: "source.include/exclude",
                actual: e.to_string(),
                required: "db.table globs",
                fix: "fix the pattern in the config",
            }
        })?;
        let mut conn = connect(&opts).await?;
        let settings = ServerSettings::read(&mut conn).await?;
        settings.check()?;
        if !settings.has_full_metadata() {
            warn!(
                binlog_row_metadata = settings.binlog_row_metadata.as_deref().unwrap_or("absent"),
                "source lacks binlog_row_metadata=FULL; column names come from information_schema"
            );
        }
        let logs = server::binary_logs(&mut conn).await?;
        let server_id = server::server_id(&mut conn).await?;
        let by_gtid = config.resume_by == ResumeBy::Gtid;
        let (start, gtid_connect) = match resume {
            // By GTID any server of the topology can continue from the state.
            Some(r) if by_gtid && r.gtid_state.is_some() => (r, true),
            Some(r) => {
                // A file:pos of one server means nothing on another.
                if r.server_id != server_id {
                    return Err(SourceError::ServerChanged {
                        stored: r.server_id,
                        found: server_id,
                        position: r.position,
                    });
                }
                (r, false)
            }
            None => {
                let (position, executed) = match &config.start {
                    StartFrom::At(p) => (p.clone(), None),
                    StartFrom::Current => server::current_position(&mut conn).await?,
                    StartFrom::Earliest => {
                        let (first, _) = logs.first().ok_or(SourceError::Setting {
                            variable: "log_bin",
                            actual: "no binlog files".into(),
                            required: "ON",
                            fix: "start the server with --log-bin",
                        })?;
                        let file = server::parse_file(first)?;
                        (BinlogPosition { file, pos: 4 }, None)
                    }
                };
                let point = ResumePoint {
                    position,
                    gtid_state: executed,
                    server_id,
                    epoch: 0,
                };
                (point, false)
            }
        };
        let mut start = start;
        if !gtid_connect {
            server::ensure_available(&start.position, &logs)?;
            match settings.flavor {
                // The GTID state at the start position, kept up to date from there.
                ServerFlavor::MariaDb => {
                    start.gtid_state = server::gtid_state_at(&mut conn, &start.position)
                        .await?
                        .map(GtidState::MariaDb);
                    if start.gtid_state.is_none() {
                        warn!(position = %start.position, "the source cannot tell the GTID state at the start position; checkpoints carry none until a restart from a later one");
                    }
                }
                // MySQL has no BINLOG_GTID_POS: the state is the stored one, the one read
                // with the start position, or the next file's PREVIOUS_GTIDS.
                ServerFlavor::MySql => {}
            }
        }
        let heartbeat_ns = config.heartbeat_ms.saturating_mul(1_000_000);
        let mut session = vec![
            // MariaDB: without capability 4 the server replaces GTID and other MariaDB
            // events by substitutes (GTID → QUERY "BEGIN") and GTIDs are lost.
            "SET @mariadb_slave_capability=4".to_string(),
            "SET @master_binlog_checksum=@@global.binlog_checksum".to_string(),
            format!("SET @master_heartbeat_period={heartbeat_ns}"),
        ];
        let file_name = start.position.file.to_string();
        let mut request = BinlogStreamRequest::new(config.server_id);
        match (&start.gtid_state, gtid_connect) {
            // MariaDB by GTID: the state goes in session variables, the file name is
            // empty and the server finds the place.
            (Some(GtidState::MariaDb(state)), true) => {
                session.extend([
                    format!("SET @slave_connect_state='{state}'"),
                    "SET @slave_gtid_strict_mode=0".to_string(),
                    "SET @slave_gtid_ignore_duplicates=0".to_string(),
                ]);
                request = request.with_filename(b"").with_pos(4u64);
            }
            // MySQL by GTID: COM_BINLOG_DUMP_GTID with the executed set. Only MySQL can
            // prove this path; no MySQL server can run where rowlog is tested.
            (Some(GtidState::MySql(set)), true) => {
                request = request
                    .with_gtid()
                    .with_gtid_set(mysql_sids(set)?)
                    .with_filename(b"")
                    .with_pos(4u64);
            }
            _ => {
                request = request
                    .with_filename(file_name.as_bytes())
                    .with_pos(start.position.pos);
            }
        }
        for q in session {
            conn.query_drop(&q)
                .await
                .map_err(|e| server::query_error(&q, e))?;
        }
        let stream = conn.get_binlog_stream(request).await.map_err(|source| {
            match (&source, &start.gtid_state) {
                (mysql_async::Error::Server(e), Some(state)) if gtid_connect && e.code == 1236 => {
                    SourceError::GtidRefused {
                        state: state.clone(),
                        message: e.message.clone(),
                    }
                }
                _ => stream_error(&start.position, config.server_id, source),
            }
        })?;
        if let (true, Some(state)) = (gtid_connect, &start.gtid_state) {
            info!(gtid = %state, server = %settings.version, "streaming binlog by GTID");
        } else {
            info!(position = %start.position, server = %settings.version, "streaming binlog");
        }
        // By GTID on another server of the topology, its positions start a new epoch.
        let by_gtid = gtid_connect.then(|| {
            if start.server_id == server_id {
                (server_id, start.epoch)
            } else {
                info!(
                    stored_server_id = start.server_id,
                    server_id, "resuming by GTID on another server of the topology"
                );
                (server_id, start.epoch + 1)
            }
        });
        let decoder = Decoder::new(
            DecoderOptions {
                filter,
                no_pk: config.no_pk,
                checksums: settings.checksum_enabled(),
                lowercase_names: settings.lowercase_names(),
            },
            start,
            by_gtid,
        );
        Ok(Self {
            config: config.clone(),
            settings,
            stream,
            lookup: InfoSchema {
                opts,
                conn: None,
                collations: None,
            },
            decoder,
        })
    }

    pub fn settings(&self) -> &ServerSettings {
        &self.settings
    }
}

impl InfoSchema {
    /// The second connection, for `information_schema`, opened on first use.
    async fn conn(&mut self) -> Result<&mut Conn, SourceError> {
        if self.conn.is_none() {
            self.conn = Some(connect(&self.opts).await?);
        }
        Ok(self
            .conn
            .as_mut()
            .expect("the lookup connection was just set"))
    }
}

impl TableLookup for InfoSchema {
    async fn fill_charset_names(&mut self, schema: &mut TableSchema) -> Result<(), SourceError> {
        if schema.columns.iter().all(|c| c.charset.is_none()) {
            return Ok(());
        }
        let names = self.collations().await?;
        for c in &mut schema.columns {
            if let Some(name) = c.charset.and_then(|id| names.get(&id)) {
                c.charset_name = Some(name.clone());
            }
        }
        Ok(())
    }

    async fn check_old_temporal(
        &mut self,
        schema: &TableSchema,
        old: &[usize],
        position: &BinlogPosition,
    ) -> Result<(), SourceError> {
        let conn = self.conn().await?;
        let q = "SELECT COLUMN_NAME, COLUMN_TYPE, COALESCE(DATETIME_PRECISION, 0) FROM information_schema.COLUMNS \
                 WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? ORDER BY ORDINAL_POSITION";
        let rows: Vec<(String, String, u64)> = conn
            .exec(q, (&schema.name.db, &schema.name.table))
            .await
            .map_err(|e| server::query_error(q, e))?;
        for &i in old {
            // A table changed since these events may list other columns; a column of
            // another shape there is the fill_columns check's to name.
            if let Some((name, ty, _)) = rows.get(i).filter(|r| r.2 > 0) {
                return Err(SourceError::Schema {
                    table: schema.name.clone(),
                    position: position.clone(),
                    detail: format!(
                        "column `{name}` is {ty} in the temporal format before MariaDB 10.1 (the table was made with mysql56_temporal_format=OFF, or on an older server): its values with fractional seconds carry no length in the binlog, so rowlog cannot read the row. Rebuild the table in the current format on the source (with mysql56_temporal_format=ON: ALTER TABLE {} FORCE), then copy it again (rowlog snapshot --tables {})",
                        schema.name, schema.name
                    ),
                });
            }
        }
        Ok(())
    }

    /// Without `binlog_row_metadata=FULL`, names, signedness and the primary key come
    /// from `information_schema` as it is now.
    async fn fill_columns(
        &mut self,
        schema: &mut TableSchema,
        position: &BinlogPosition,
    ) -> Result<(), SourceError> {
        let conn = self.conn().await?;
        let q =
            "SELECT COLUMN_NAME, COLUMN_TYPE, CHARACTER_SET_NAME, DATA_TYPE FROM information_schema.COLUMNS \
                 WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? ORDER BY ORDINAL_POSITION";
        let rows: Vec<(String, String, Option<String>, String)> = conn
            .exec(q, (&schema.name.db, &schema.name.table))
            .await
            .map_err(|e| server::query_error(q, e))?;
        if rows.len() != schema.columns.len() {
            return Err(SourceError::Schema {
                table: schema.name.clone(),
                position: position.clone(),
                detail: format!(
                    "the binlog has {} columns but information_schema now lists {}: the table changed since; set binlog_row_metadata=FULL on the source",
                    schema.columns.len(),
                    rows.len()
                ),
            });
        }
        // The binlog's own column types must fit the columns information_schema lists
        // now at the same places: a column reordered or retyped since these events
        // would otherwise give its values another column's name. (A reorder among
        // columns of one type, or a change of signedness, cannot be seen here.)
        for (i, (col, (name, ty, _, data_type))) in schema.columns.iter().zip(&rows).enumerate() {
            if !binlog_type_fits(&col.ty, data_type) {
                return Err(SourceError::Schema {
                    table: schema.name.clone(),
                    position: position.clone(),
                    detail: format!(
                        "column {} is {:?} in the binlog but information_schema now lists `{name}` {ty} there: the table changed since (a column reordered or retyped); set binlog_row_metadata=FULL on the source",
                        i + 1,
                        col.ty
                    ),
                });
            }
        }
        for (col, (name, ty, charset, _)) in schema.columns.iter_mut().zip(&rows) {
            col.name = name.clone();
            col.unsigned |= ty.to_ascii_lowercase().contains("unsigned");
            col.charset_name = charset.clone();
            // A string column with no character set is binary: BINARY, VARBINARY, BLOB,
            // and MariaDB's UUID and INET6 (which the table map shows as BINARY(16)).
            // The FULL metadata says so by collation 63; here it must be set, or BINARY
            // values lose their zero padding and UUIDs are sent as text.
            if charset.is_none()
                && matches!(
                    col.ty,
                    ColumnType::FixedString { .. }
                        | ColumnType::VarString { .. }
                        | ColumnType::Blob
                )
            {
                col.charset = Some(Column::BINARY_COLLATION);
                col.charset_name = Some("binary".into());
            }
        }
        let q = "SELECT COLUMN_NAME FROM information_schema.KEY_COLUMN_USAGE \
                 WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? AND CONSTRAINT_NAME = 'PRIMARY' ORDER BY ORDINAL_POSITION";
        let pk: Vec<String> = conn
            .exec(q, (&schema.name.db, &schema.name.table))
            .await
            .map_err(|e| server::query_error(q, e))?;
        schema.primary_key = pk
            .iter()
            .filter_map(|n| rows.iter().position(|(c, ..)| c == n))
            .collect();
        Ok(())
    }

    /// Secondary unique keys come from `information_schema` (the binlog's table map
    /// only names the primary key). They decide routing: see
    /// `ChangeEvent::routing_key_bytes`. Generated columns too: MariaDB logs their
    /// values like any other. Asked once per table map, i.e. per table per binlog file
    /// and after each DDL.
    async fn fill_keys_and_generated(
        &mut self,
        schema: &mut TableSchema,
        position: &BinlogPosition,
    ) -> Result<(), SourceError> {
        let q = "SELECT INDEX_NAME, COLUMN_NAME FROM information_schema.STATISTICS \
                 WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? AND NON_UNIQUE = 0 AND INDEX_NAME <> 'PRIMARY' \
                 ORDER BY INDEX_NAME, SEQ_IN_INDEX";
        let (db, table) = (schema.name.db.clone(), schema.name.table.clone());
        let conn = self.conn().await?;
        let rows: Vec<(String, String)> = conn
            .exec(q, (&db, &table))
            .await
            .map_err(|e| server::query_error(q, e))?;
        let mut keys: Vec<(String, Vec<usize>)> = Vec::new();
        for (index, column) in rows {
            let Some(i) = schema.columns.iter().position(|c| c.name == column) else {
                return Err(SourceError::Schema {
                    table: schema.name.clone(),
                    position: position.clone(),
                    detail: format!(
                        "unique key `{index}` names column `{column}`, which the binlog's table map does not have: the table changed since this event"
                    ),
                });
            };
            match keys.last_mut() {
                Some((name, cols)) if *name == index => cols.push(i),
                _ => keys.push((index, vec![i])),
            }
        }
        schema.unique_keys = keys.into_iter().map(|(_, cols)| cols).collect();

        // Generated columns: the destination computes them and refuses a value.
        let q = "SELECT COLUMN_NAME FROM information_schema.COLUMNS \
                 WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? AND COALESCE(GENERATION_EXPRESSION, '') <> ''";
        let generated: Vec<String> = conn
            .exec(q, (&db, &table))
            .await
            .map_err(|e| server::query_error(q, e))?;
        for c in &mut schema.columns {
            c.generated = generated.contains(&c.name);
        }
        Ok(())
    }
}

impl InfoSchema {
    /// The source's collation ids and their character sets (one query per reader).
    async fn collations(&mut self) -> Result<&std::collections::HashMap<u16, String>, SourceError> {
        if self.collations.is_none() {
            let q = "SELECT ID, CHARACTER_SET_NAME FROM information_schema.COLLATIONS WHERE ID IS NOT NULL";
            let rows: Vec<(u64, String)> = self
                .conn()
                .await?
                .query(q)
                .await
                .map_err(|e| server::query_error(q, e))?;
            self.collations = Some(
                rows.into_iter()
                    .filter_map(|(id, cs)| Some((u16::try_from(id).ok()?, cs)))
                    .collect(),
            );
        }
        Ok(self.collations.get_or_insert_with(Default::default))
    }
}

/// A MySQL GTID set as COM_BINLOG_DUMP_GTID takes it. Tagged origins (MySQL 8.4) cannot
/// be sent through mysql_async 0.37's request type: refused rather than dropped.
fn mysql_sids(set: &MysqlGtidSet) -> Result<Vec<mysql_async::Sid<'static>>, SourceError> {
    set.ranges()
        .iter()
        .map(|r| {
            if let Some(tag) = &r.tag {
                return Err(SourceError::Setting {
                    variable: "gtid_executed",
                    actual: format!("a tagged GTID ({tag})"),
                    required: "untagged GTIDs to resume by GTID",
                    fix: "set source.resume_by = \"position\"",
                });
            }
            Ok(mysql_async::Sid::new(r.sid).with_intervals(
                r.intervals
                    .iter()
                    .map(|&(a, b)| mysql_async::GnoInterval::new(a, b))
                    .collect(),
            ))
        })
        .collect()
}

pub(crate) async fn connect(opts: &Opts) -> Result<Conn, SourceError> {
    let addr = format!("{}:{}", opts.ip_or_hostname(), opts.tcp_port());
    Conn::new(opts.clone())
        .await
        .map_err(|source| match &source {
            mysql_async::Error::Server(s) if s.code == 1045 => SourceError::AccessDenied {
                detail: s.message.clone(),
            },
            _ => SourceError::Connect { addr, source },
        })
}

fn stream_error(
    position: &BinlogPosition,
    server_id: u32,
    source: mysql_async::Error,
) -> SourceError {
    match &source {
        mysql_async::Error::Server(s) if s.code == 1227 || s.code == 1045 => {
            SourceError::Privileges {
                detail: s.message.clone(),
            }
        }
        mysql_async::Error::Server(s) if s.code == 4052 => {
            SourceError::DuplicateServerId { server_id }
        }
        mysql_async::Error::Server(s) if s.code == 1236 => SourceError::DumpRefused {
            position: position.clone(),
            code: s.code,
            message: s.message.clone(),
        },
        _ => SourceError::Stream {
            position: position.clone(),
            source,
        },
    }
}

/// How long the stream may stay silent: three heartbeats, and never under 5 s, so a
/// busy server's late heartbeat is not taken for a dead connection.
fn silence_limit(heartbeat_ms: u64) -> std::time::Duration {
    std::time::Duration::from_millis(heartbeat_ms.saturating_mul(3).max(5_000))
}

impl ChangeSource for BinlogReader {
    type Error = SourceError;

    fn resume_position(&self) -> &ResumePoint {
        self.decoder.resume_position()
    }

    async fn next_event(&mut self) -> Result<SourceEvent, SourceError> {
        loop {
            if let Some(ev) = self.decoder.pop() {
                return Ok(ev);
            }
            // mysql_async parses some events itself while streaming (compressed
            // transactions); a damaged one can make it panic: a named error instead.
            // The server sends a heartbeat whenever it has had nothing to send for
            // heartbeat_ms: a longer silence is a connection that is gone without a
            // reset (a network partition, a host that lost power, a moved address),
            // which TCP alone would wait on for hours. The stream is dropped and the
            // pipeline reconnects.
            let silence = silence_limit(self.config.heartbeat_ms);
            let next = {
                use futures_util::FutureExt;
                tokio::time::timeout(
                    silence,
                    std::panic::AssertUnwindSafe(self.stream.next()).catch_unwind(),
                )
                .await
            };
            let Ok(next) = next else {
                return Err(SourceError::Silent {
                    position: self.decoder.here(),
                    waited_ms: silence.as_millis() as u64,
                });
            };
            let next = match next {
                Ok(n) => n,
                Err(panic) => {
                    return Err(SourceError::Decode {
                        event: "event",
                        position: self.decoder.here(),
                        detail: format!(
                            "mysql_async failed reading the next event: {}",
                            crate::decoder::panic_message(&panic)
                        ),
                    })
                }
            };
            let ev = match next {
                Some(Ok(ev)) => ev,
                Some(Err(e)) => {
                    return Err(stream_error(&self.decoder.here(), self.config.server_id, e))
                }
                None => {
                    return Err(SourceError::StreamEnded {
                        position: self.decoder.here(),
                    })
                }
            };
            self.decoder.handle_guarded(&ev, &mut self.lookup).await?;
        }
    }
}

/// `rowlog source reset --to FILE:POS`: checks that the position is still on the source
/// and completes it with the server's id and (MariaDB) the GTID state there.
pub async fn locate_position(
    config: &SourceConfig,
    position: BinlogPosition,
) -> Result<ResumePoint, SourceError> {
    let opts =
        Opts::from_url(&rowlog_api::url::tcp_as_given(&config.url)).map_err(SourceError::BadUrl)?;
    let mut conn = connect(&opts).await?;
    let settings = ServerSettings::read(&mut conn).await?;
    settings.check()?;
    server::ensure_available(&position, &server::binary_logs(&mut conn).await?)?;
    let gtid_state = match settings.flavor {
        ServerFlavor::MariaDb => server::gtid_state_at(&mut conn, &position)
            .await?
            .map(GtidState::MariaDb),
        ServerFlavor::MySql => None,
    };
    let server_id = server::server_id(&mut conn).await?;
    let _ = conn.disconnect().await;
    Ok(ResumePoint {
        position,
        gtid_state,
        server_id,
        epoch: 0,
    })
}

/// `rowlog source reset --to-gtid STATE` (MariaDB): connects by GTID and reads until
/// the stream shows where the server resumes after that state: its position there.
pub async fn locate_gtid(
    config: &SourceConfig,
    state: GtidState,
) -> Result<ResumePoint, SourceError> {
    let mut gtid_config = config.clone();
    gtid_config.resume_by = ResumeBy::Gtid;
    // The stored point is only a carrier for the state: its position is replaced by
    // the one the stream shows before anything is returned.
    let carrier = ResumePoint {
        position: BinlogPosition {
            file: rowlog_api::BinlogFileName {
                base: "unknown".into(),
                seq: 0,
                width: 6,
            },
            pos: 4,
        },
        gtid_state: Some(state.clone()),
        server_id: 0,
        epoch: 0,
    };
    let mut reader = BinlogReader::connect(&gtid_config, Some(carrier)).await?;
    // The server sends a heartbeat while idle, so this ends within heartbeat_ms even
    // when nothing follows the state.
    while !reader.decoder.position_known() {
        reader.next_event().await?;
    }
    let mut found = reader.decoder.resume_position().clone();
    found.gtid_state = Some(state);
    found.epoch = 0;
    Ok(found)
}

/// Connects once and checks the server's settings, without streaming: the daemon's
/// start-up check, so that an unreachable server, wrong credentials or a non-ROW
/// binlog fail at once with a clear error instead of being retried.
pub async fn preflight(config: &SourceConfig) -> Result<ServerSettings, SourceError> {
    let opts =
        Opts::from_url(&rowlog_api::url::tcp_as_given(&config.url)).map_err(SourceError::BadUrl)?;
    let mut conn = connect(&opts).await?;
    let settings = ServerSettings::read(&mut conn).await?;
    settings.check()?;
    // SHOW BINARY LOGS needs the privilege streaming needs too (REPLICATION CLIENT / BINLOG MONITOR).
    server::binary_logs(&mut conn).await?;
    let _ = conn.disconnect().await;
    Ok(settings)
}

/// Whether a column the table map types as `ty` can be the column whose
/// `information_schema.COLUMNS.DATA_TYPE` is `data_type` (lower case on both servers).
/// By broad family only: integers, fractional numbers, times, bits, strings and
/// bytes, geometries. Lengths, precisions and widenings within a family (`MODIFY n
/// BIGINT` of an INT, CHAR to VARCHAR, DATE to DATETIME) keep a column's place and
/// label nothing wrongly; stopping on them would stop a reader for a routine ALTER
/// that FULL metadata could not have helped the events before it. A column moved
/// across families is what this catches. A type rowlog passes through as bytes, or a
/// data type it does not know, fits anything.
fn binlog_type_fits(ty: &ColumnType, data_type: &str) -> bool {
    #[derive(PartialEq)]
    enum Family {
        Integer,
        Fraction,
        Time,
        Bit,
        Text,
        Geometry,
    }
    let binlog = match ty {
        ColumnType::TinyInt
        | ColumnType::SmallInt
        | ColumnType::MediumInt
        | ColumnType::Int
        | ColumnType::BigInt
        | ColumnType::Year => Family::Integer,
        ColumnType::Float | ColumnType::Double | ColumnType::Decimal { .. } => Family::Fraction,
        ColumnType::Date
        | ColumnType::DateTime { .. }
        | ColumnType::Timestamp { .. }
        | ColumnType::Time { .. } => Family::Time,
        ColumnType::Bit { .. } => Family::Bit,
        // MariaDB's UUID, INET4 and INET6 travel as BINARY(n), its JSON as LONGTEXT,
        // ENUM and SET as CHAR when the table map's metadata does not name them.
        ColumnType::FixedString { .. }
        | ColumnType::VarString { .. }
        | ColumnType::Blob
        | ColumnType::Enum
        | ColumnType::Set
        | ColumnType::Json => Family::Text,
        ColumnType::Geometry => Family::Geometry,
        ColumnType::Other(_) => return true,
    };
    let listed = match data_type.to_ascii_lowercase().as_str() {
        "tinyint" | "smallint" | "mediumint" | "int" | "bigint" | "year" => Family::Integer,
        "float" | "double" | "decimal" => Family::Fraction,
        "date" | "datetime" | "timestamp" | "time" => Family::Time,
        "bit" => Family::Bit,
        "char" | "varchar" | "binary" | "varbinary" | "tinyblob" | "blob" | "mediumblob"
        | "longblob" | "tinytext" | "text" | "mediumtext" | "longtext" | "json" | "enum"
        | "set" | "uuid" | "inet4" | "inet6" | "vector" => Family::Text,
        "geometry" | "point" | "linestring" | "polygon" | "multipoint" | "multilinestring"
        | "multipolygon" | "geometrycollection" | "geomcollection" => Family::Geometry,
        _ => return true,
    };
    binlog == listed
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Without FULL metadata the table map's types are checked against the columns
    /// listed now: a widening in place passes, a column of another family there stops.
    #[test]
    fn a_column_widened_in_place_fits_and_one_of_another_family_does_not() {
        for (ty, now) in [
            (ColumnType::Int, "bigint"),
            (ColumnType::TinyInt, "int"),
            (ColumnType::Float, "double"),
            (ColumnType::Date, "datetime"),
            (ColumnType::FixedString { max_bytes: 10 }, "varchar"),
            (ColumnType::VarString { max_bytes: 10 }, "text"),
            (ColumnType::FixedString { max_bytes: 16 }, "uuid"),
        ] {
            assert!(binlog_type_fits(&ty, now), "{ty:?} widened to {now}");
        }
        for (ty, now) in [
            (ColumnType::Int, "varchar"),
            (ColumnType::VarString { max_bytes: 10 }, "int"),
            (ColumnType::Double, "datetime"),
            (ColumnType::Timestamp { fsp: 0 }, "bigint"),
            (ColumnType::Blob, "point"),
        ] {
            assert!(!binlog_type_fits(&ty, now), "{ty:?} is not a {now}");
        }
    }

    #[test]
    fn a_mysql_gtid_set_goes_into_the_dump_request_as_half_open_intervals() {
        let set: MysqlGtidSet = "3e11fa47-71ca-11e1-9e33-c80aa9429562:1-5:7"
            .parse()
            .unwrap();
        let sids = mysql_sids(&set).unwrap();
        assert_eq!(sids.len(), 1);
        let iv: Vec<(u64, u64)> = sids[0]
            .intervals()
            .iter()
            .map(|i| (i.start(), i.end()))
            .collect();
        assert_eq!(iv, vec![(1, 6), (7, 8)]);
        assert_eq!(sids[0].uuid()[0], 0x3e);
        let tagged: MysqlGtidSet = "3e11fa47-71ca-11e1-9e33-c80aa9429562:t:1-2"
            .parse()
            .unwrap();
        assert!(mysql_sids(&tagged).is_err(), "tags cannot be sent: refused");
    }
}
