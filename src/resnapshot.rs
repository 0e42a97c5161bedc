//! Copying chosen tables again while the daemon streams the rest
//! (`rowlog snapshot --tables …` against a running daemon).
//!
//! # How the copy stays in order with the stream
//! The copy goes through the log, in the stream's own order, instead of straight to
//! the destination: each chunk is read through its own consistent read of the source
//! (see `rowlog_mysql_binlog::SnapshotSession`), which comes with the binlog position
//! `F` it corresponds to. The reader (in [`crate::pipeline::ingest`]) keeps streaming
//! until it stands at a transaction boundary at or after `F` having read no change
//! after `F`; there the chunk's rows enter the log as changes, between the last
//! transaction before `F` and the first after it. Per key the log then holds: the
//! changes before `F`, the copied state at `F`, the changes after `F`, which is
//! exactly the source's history. When a change after `F` was read first (the
//! boundaries did not line up), the chunk is read again.
//!
//! A chunk holds the source's next rows after its last copied key, in the source's
//! key order, as upserts; and the destination's next keys after its last looked-at
//! key, in the destination's key order, where each key the source has not (asked of
//! the source in the chunk's consistent read, collations included) becomes a delete,
//! so rows the destination should not have are removed too. The two scans go on
//! independently, each from a key of its own server: one key range does not name the
//! same keys on two servers whose collations differ, and a range taken from one
//! server's order used to skip rows of the other's (or go round in circles). A table
//! is done when both scans are. Each chunk holds at most `chunk_rows` source rows,
//! `chunk_rows` destination keys and one source row per destination key spelled
//! otherwise than the source's. Copied keys carry the binlog decoder's value forms
//! ([`rowlog_mysql_binlog::SnapshotTable::binlog_shaped`]): partitioning and
//! coalescing compare key bytes.
//!
//! Nothing is emptied first: the table stays whole on the destination while its copy
//! runs.
//!
//! # The request and its progress
//! `<log.dir>/resnapshot.request` holds the request (JSON, framed with a CRC like the
//! log's other small files): written by the command when absent
//! (never overwritten), then owned by the daemon, which saves the last copied key
//! after each chunk is durably in the log, and removes the file when every table is
//! copied. After a crash the copy goes on after the last saved key. A definite
//! failure (a table without a primary key, a key type the copy cannot shape) is
//! written into the file for the command to report; the stream itself goes on.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mysql_async::{Conn, Opts};
use rowlog_api::{BinlogPosition, ChangeEvent, ChangeId, Op, Retry, SourceMeta, TableName, Value};
use rowlog_mysql_binlog::{SnapshotSession, SnapshotTable, SourceConfig, SourceError};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::config::Config;
use crate::log::{atomic_file, LogError};
use crate::metrics::Metrics;

pub const REQUEST_FILE: &str = "resnapshot.request";

/// How long a copy waits for a table the destination does not have (its CREATE may be
/// on its way through the log) before it stops.
const MISSING_TABLE_WAIT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum ResnapshotError {
    #[error("re-snapshot: reading {table} failed")]
    Source {
        table: TableName,
        #[source]
        source: Box<SourceError>,
    },
    #[error("re-snapshot: reading {table}'s keys on the destination failed: {detail}")]
    Destination { table: TableName, detail: String },
    #[error("re-snapshot: {table} has no primary key, so it cannot be copied while streaming; stop rowlog and run `rowlog snapshot --tables {table}`")]
    Keyless { table: TableName },
    #[error("re-snapshot: {table} is not on the source")]
    Missing { table: TableName },
    #[error("re-snapshot: {table} is not on the destination (waited 30 s for the stream to make it); a copy while rowlog streams does not make tables: stop rowlog and run `rowlog snapshot --tables {table}`, which does")]
    NotOnDestination { table: TableName },
    #[error("re-snapshot: {table}: {detail}")]
    Shape { table: TableName, detail: String },
    #[error("re-snapshot: a chunk of {table} was read from the server with server_id {chunk_server_id}, but the stream comes from server_id {stream_server_id} (a failover, or a source.url that reaches more than one server); it is read again")]
    OtherServer {
        table: TableName,
        chunk_server_id: u32,
        stream_server_id: u32,
    },
    #[error("re-snapshot: a chunk of {table} was read at {floor}, which the stream had passed already ({stream}; on MariaDB a transaction reaches the binlog before a consistent read sees it); it is read again")]
    BehindStream {
        table: TableName,
        floor: BinlogPosition,
        stream: BinlogPosition,
    },
    #[error("re-snapshot: a chunk of {table} has more rows than the change ids left at {position} (2³¹ per boundary, an idle source); it is read again at a later boundary")]
    NoRoom {
        table: TableName,
        position: BinlogPosition,
    },
    #[error("re-snapshot request {path}")]
    File {
        path: PathBuf,
        #[source]
        source: LogError,
    },
    #[error("re-snapshot request {path} cannot be decoded: {detail}")]
    Corrupt { path: PathBuf, detail: String },
}

impl Retry for ResnapshotError {
    fn is_retryable(&self) -> bool {
        match self {
            Self::Source { source, .. } => source.is_retryable(),
            // The destination down or restarting: the apply stage waits it out too.
            Self::Destination { .. } => true,
            // Read again after a pause.
            Self::OtherServer { .. } | Self::BehindStream { .. } | Self::NoRoom { .. } => true,
            _ => false,
        }
    }
}

/// What `resnapshot.request` holds.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Request {
    pub tables: Vec<TableName>,
    /// Index in `tables` of the table being copied; `tables.len()` once all are.
    #[serde(default)]
    pub current: usize,
    /// The last primary key of the current table's source rows durably in the log.
    #[serde(default)]
    pub last_key: Option<Vec<Value>>,
    /// Every source row of the current table is in the log.
    #[serde(default)]
    pub source_done: bool,
    /// The last key of the current table's destination keys looked at (those the
    /// source has not are deleted). Requests written before this field start the
    /// destination's scan again, which only looks at keys once more.
    #[serde(default)]
    pub dest_last_key: Option<Vec<Value>>,
    /// Every destination key of the current table was looked at.
    #[serde(default)]
    pub dest_done: bool,
    /// The names of that key's columns: a key changed since (ALTER … PRIMARY KEY)
    /// makes `last_key` meaningless, and the table is copied again from its start.
    #[serde(default)]
    pub key_columns: Option<Vec<String>>,
    /// Rows copied per table.
    #[serde(default)]
    pub rows: Vec<u64>,
    /// Why the copy stopped, when it failed for good.
    #[serde(default)]
    pub error: Option<String>,
}

/// Where one server's scan of a table's keys stands: after a key (`None`: from the
/// start), or at its end. Each server is scanned in its own key order.
#[derive(Clone, Debug, PartialEq)]
pub enum Scan {
    After(Option<Vec<Value>>),
    Done,
}

impl Scan {
    fn of(done: bool, last: &Option<Vec<Value>>) -> Scan {
        if done {
            Scan::Done
        } else {
            Scan::After(last.clone())
        }
    }

    fn parts(self) -> (bool, Option<Vec<Value>>) {
        match self {
            Scan::Done => (true, None),
            Scan::After(k) => (false, k),
        }
    }
}

pub fn request_path(dir: &Path) -> PathBuf {
    dir.join(REQUEST_FILE)
}

impl Request {
    /// The current table's scans of the source and of the destination.
    fn scans(&self) -> (Scan, Scan) {
        (
            Scan::of(self.source_done, &self.last_key),
            Scan::of(self.dest_done, &self.dest_last_key),
        )
    }

    fn set_scans(&mut self, source: Scan, dest: Scan) {
        (self.source_done, self.last_key) = source.parts();
        (self.dest_done, self.dest_last_key) = dest.parts();
    }

    pub fn load(dir: &Path) -> Result<Option<Self>, ResnapshotError> {
        let path = request_path(dir);
        let bytes = atomic_file::read(&path).map_err(|source| ResnapshotError::File {
            path: path.clone(),
            source,
        })?;
        bytes
            .map(|b| {
                serde_json::from_slice(&b).map_err(|e| ResnapshotError::Corrupt {
                    path: path.clone(),
                    detail: e.to_string(),
                })
            })
            .transpose()
    }

    fn save(&self, dir: &Path) -> Result<(), ResnapshotError> {
        let path = request_path(dir);
        let bytes = serde_json::to_vec_pretty(self).map_err(|e| ResnapshotError::Corrupt {
            path: path.clone(),
            detail: e.to_string(),
        })?;
        atomic_file::write(&path, &bytes).map_err(|source| ResnapshotError::File { path, source })
    }

    /// Places a new request for the daemon; refused when one is already there (it
    /// belongs to the daemon until it removes it).
    pub fn submit(dir: &Path, tables: Vec<TableName>) -> Result<(), String> {
        let path = request_path(dir);
        let tmp = dir.join(format!("{REQUEST_FILE}.new"));
        let req = Request {
            rows: vec![0; tables.len()],
            tables,
            ..Default::default()
        };
        let bytes = serde_json::to_vec_pretty(&req).map_err(|e| e.to_string())?;
        atomic_file::write(&tmp, &bytes).map_err(|e| format!("writing {}: {e}", tmp.display()))?;
        // A hard link never replaces: the request is placed whole, or not at all.
        let placed = std::fs::hard_link(&tmp, &path);
        let _ = std::fs::remove_file(&tmp);
        match placed {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(format!(
                "a re-snapshot is already requested ({}); wait for it, or remove the file if it reports an error",
                path.display()
            )),
            Err(e) => Err(format!("placing {}: {e}", path.display())),
        }
    }
}

/// One chunk, ready to enter the log at the first boundary at or after `floor`.
pub struct Chunk {
    pub floor: BinlogPosition,
    /// `@@server_id` of the server the chunk was read from: its position compares
    /// only with the stream of that server.
    pub server_id: u32,
    /// Deletes of keys only the destination has, then upserts of the source's rows.
    /// Their change ids are given where they enter the log.
    pub changes: Vec<ChangeEvent>,
    pub table: TableName,
    /// Where the source's and the destination's scans of the table go on.
    source: Scan,
    dest: Scan,
    /// The names of the key's columns.
    key_columns: Vec<String>,
    rows: u64,
}

/// The daemon's side of re-snapshots, driven by the ingest reader between transactions.
pub struct Resnapshot {
    source: SourceConfig,
    sink_url: String,
    dir: PathBuf,
    chunk_rows: u64,
    metrics: Arc<Metrics>,
    job: Option<Request>,
    polled: Option<Instant>,
    dest: Option<Conn>,
    /// The table found missing on the destination, and since when.
    missing_since: Option<(TableName, Instant)>,
    /// After a transient failure: no chunk before this.
    paused_until: Option<Instant>,
    backoff: crate::pipeline::backoff::Backoff,
}

impl Resnapshot {
    pub fn new(cfg: &Config, metrics: Arc<Metrics>) -> Self {
        Self {
            source: cfg.source.clone(),
            sink_url: cfg.sink.url.clone(),
            dir: cfg.log.dir.clone(),
            chunk_rows: cfg.snapshot.chunk_rows.max(1),
            metrics,
            job: None,
            polled: None,
            dest: None,
            missing_since: None,
            paused_until: None,
            backoff: crate::pipeline::backoff::Backoff::new(
                Duration::from_millis(500),
                Duration::from_secs(30),
            ),
        }
    }

    /// After a transient failure: the next chunk waits a growing pause.
    pub fn retry_later(&mut self) -> Duration {
        let delay = self.backoff.next_delay();
        self.paused_until = Some(Instant::now() + delay);
        self.dest = None;
        delay
    }

    /// Whether a chunk is to be read: a copy is under way, or a request has appeared
    /// (the file is looked at no more than once a second).
    pub fn wants_chunk(&mut self) -> bool {
        if self.paused_until.is_some_and(|t| Instant::now() < t) {
            return false;
        }
        if self.job.is_some() {
            return true;
        }
        if self
            .polled
            .is_some_and(|t| t.elapsed() < Duration::from_secs(1))
        {
            return false;
        }
        self.polled = Some(Instant::now());
        match Request::load(&self.dir) {
            Ok(Some(mut req)) if req.error.is_none() => {
                req.rows.resize(req.tables.len(), 0);
                info!(tables = ?req.tables.iter().map(|t| t.to_string()).collect::<Vec<_>>(), resume_after = ?req.last_key, "re-snapshot requested");
                self.metrics.snapshot_requested();
                self.metrics.snapshot_tables(req.tables.len(), req.current);
                self.job = Some(req);
                true
            }
            Ok(_) => false,
            Err(e) => {
                warn!(error = %crate::report::error_chain(&e), "re-snapshot request unreadable; ignored");
                false
            }
        }
    }

    /// Reads the next chunk of the current table. The caller retries on a retryable
    /// error and calls [`Self::fail`] on a definite one.
    pub async fn next_chunk(&mut self) -> Result<Chunk, ResnapshotError> {
        let job = self.job.as_ref().expect("next_chunk without a request");
        let table = job.tables[job.current].clone();
        let (source, dest) = job.scans();
        let key_columns = job.key_columns.clone();
        let src_err = |source| ResnapshotError::Source {
            table: table.clone(),
            source: Box::new(source),
        };
        let mut session = SnapshotSession::open(&self.source).await.map_err(src_err)?;
        let chunk = self
            .read(
                &mut session,
                &table,
                (&source, &dest),
                key_columns.as_deref(),
            )
            .await;
        session.close().await;
        if chunk.is_err() {
            // A broken destination connection is not reused.
            self.dest = None;
        }
        chunk
    }

    async fn read(
        &mut self,
        session: &mut SnapshotSession,
        table: &TableName,
        (source, dest): (&Scan, &Scan),
        key_columns: Option<&[String]>,
    ) -> Result<Chunk, ResnapshotError> {
        let src_err = |source| ResnapshotError::Source {
            table: table.clone(),
            source: Box::new(source),
        };
        let dst_err = |detail: String| ResnapshotError::Destination {
            table: table.clone(),
            detail,
        };
        let t: SnapshotTable = session.describe(table).await.map_err(src_err)?;
        if t.schema.columns.is_empty() {
            return Err(ResnapshotError::Missing {
                table: table.clone(),
            });
        }
        if t.schema.keyless {
            return Err(ResnapshotError::Keyless {
                table: table.clone(),
            });
        }
        let columns: Vec<String> = t.schema.pk_columns().map(|c| c.name.clone()).collect();
        let (source, dest) = match key_columns {
            Some(was) if was != columns.as_slice() => {
                warn!(table = %table, was = ?was, now = ?columns, "the table's primary key changed during its re-snapshot; copying it again from its start");
                (Scan::After(None), Scan::After(None))
            }
            _ => (source.clone(), dest.clone()),
        };
        let n = self.chunk_rows;
        let key_of = |row: &Vec<Value>| -> Vec<Value> {
            t.schema
                .primary_key
                .iter()
                .map(|&i| row[i].clone())
                .collect()
        };
        let shape_err = |detail| ResnapshotError::Shape {
            table: table.clone(),
            detail,
        };
        // The source's rows, by the source's key order.
        let (rows, source_next) = match &source {
            Scan::Done => (Vec::new(), Scan::Done),
            Scan::After(after) => {
                let rows = session
                    .read_range(&t, after.as_deref(), None, n)
                    .await
                    .map_err(src_err)?
                    .into_iter()
                    .map(|r| t.binlog_shaped(r))
                    .collect::<Result<Vec<_>, String>>()
                    .map_err(shape_err)?;
                let next = match rows.last() {
                    Some(last) if rows.len() as u64 >= n => Scan::After(Some(key_of(last))),
                    _ => Scan::Done,
                };
                (rows, next)
            }
        };
        // The destination's keys, by the destination's key order: a key range does not
        // name the same keys on two servers whose collations differ (the source's
        // utf8mb4_general_ci puts 'b' before 'C', a destination's utf8mb4_bin after it),
        // so each side is paged through on its own and neither skips a key of its own.
        let (dest_keys, dest_next) = match &dest {
            Scan::Done => (Vec::new(), Scan::Done),
            Scan::After(dest_after) => {
                let conn = match &mut self.dest {
                    Some(c) => c,
                    slot => {
                        let opts = Opts::from_url(&rowlog_api::url::tcp_as_given(&self.sink_url))
                            .map_err(|e| dst_err(e.to_string()))?;
                        let conn = Conn::new(opts)
                            .await
                            .map_err(|e| dst_err(format!("cannot connect: {e}")))?;
                        slot.insert(conn)
                    }
                };
                let keys = match t.read_keys(conn, dest_after.as_deref(), None, n).await {
                    Ok(keys) => {
                        self.missing_since = None;
                        keys
                    }
                    Err(detail) => {
                        // A table the destination does not have is not waited for
                        // without end: an online copy does not make tables (rowlog
                        // snapshot with rowlog stopped does). One just made on the
                        // source may have its CREATE on the way through the log still:
                        // waited for a while, then the copy stops.
                        let exists = rowlog_mysql_sink::table_exists(conn, table)
                            .await
                            .map_err(|e| dst_err(format!("cannot look the table up: {e}")))?;
                        if exists {
                            return Err(dst_err(detail));
                        }
                        let since = match &self.missing_since {
                            Some((t, at)) if t == table => *at,
                            _ => self.missing_since.insert((table.clone(), Instant::now())).1,
                        };
                        if since.elapsed() < MISSING_TABLE_WAIT {
                            return Err(dst_err(format!(
                                "not on the destination (yet?); waiting up to {} s for the stream to make it",
                                MISSING_TABLE_WAIT.as_secs()
                            )));
                        }
                        return Err(ResnapshotError::NotOnDestination {
                            table: table.clone(),
                        });
                    }
                };
                let next = match keys.last() {
                    Some(last) if keys.len() as u64 >= n => Scan::After(Some(last.clone())),
                    _ => Scan::Done,
                };
                (keys, next)
            }
        };
        let mut copied: HashSet<Vec<u8>> = rows
            .iter()
            .map(|r| rowlog_api::key_bytes(table, key_of(r).iter()))
            .collect();
        let meta = SourceMeta {
            id: ChangeId {
                epoch: 0,
                event: session.position.position.clone(),
                index: 0,
            },
            txn_start: session.position.position.clone(),
            gtid: None,
            commit_time_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
        };
        let mut changes = Vec::with_capacity(rows.len());
        // Rows of the source read for a destination key spelled otherwise.
        let mut respelled = Vec::new();
        for key in dest_keys {
            if copied.contains(&rowlog_api::key_bytes(table, key.iter())) {
                continue;
            }
            // A key no copied row has. The source decides, at this chunk's point in its
            // history, whether it has the row: the same bytes (copied in another
            // chunk: left alone), none (deleted), or a row its collation calls equal
            // with other bytes ('ABC' for the destination's 'abc'). That one's
            // destination spelling is deleted and the source's row written after it
            // (log order, one route: text key columns do not route, see
            // `ChangeEvent::routing_key_bytes`), so the row ends with the source's
            // bytes and its state at this point; the upsert alone would keep the
            // destination's key.
            if let Some(row) = session.equal_row(&t, &key).await.map_err(src_err)? {
                let row = t.binlog_shaped(row).map_err(shape_err)?;
                let bytes = rowlog_api::key_bytes(table, key_of(&row).iter());
                if bytes == rowlog_api::key_bytes(table, key.iter()) {
                    continue;
                }
                if copied.insert(bytes) {
                    respelled.push(row);
                }
            }
            let mut before = vec![Value::Null; t.schema.columns.len()];
            for (&i, v) in t.schema.primary_key.iter().zip(key) {
                before[i] = v;
            }
            changes.push(ChangeEvent {
                table: t.schema.clone(),
                op: Op::Delete,
                before: Some(before),
                after: None,
                source: meta.clone(),
            });
        }
        let copied_rows = rows.len() as u64;
        for row in rows.into_iter().chain(respelled) {
            changes.push(ChangeEvent {
                table: t.schema.clone(),
                op: Op::Insert,
                before: None,
                after: Some(row),
                source: meta.clone(),
            });
        }
        Ok(Chunk {
            floor: session.position.position.clone(),
            server_id: session.position.server_id,
            changes,
            table: table.clone(),
            source: source_next,
            dest: dest_next,
            key_columns: columns,
            rows: copied_rows,
        })
    }

    /// The chunk is durably in the log: save how far the copy got.
    pub fn chunk_durable(&mut self, chunk: &Chunk) -> Result<(), ResnapshotError> {
        let Some(job) = self.job.as_mut() else {
            return Ok(());
        };
        self.backoff.reset();
        let i = job.current;
        job.rows[i] += chunk.rows;
        self.metrics.snapshot_chunk(&chunk.table, chunk.rows);
        if chunk.source == Scan::Done && chunk.dest == Scan::Done {
            info!(table = %chunk.table, rows = job.rows[i], "re-snapshot of the table done");
            job.current += 1;
            job.set_scans(Scan::After(None), Scan::After(None));
            job.key_columns = None;
        } else {
            job.set_scans(chunk.source.clone(), chunk.dest.clone());
            job.key_columns = Some(chunk.key_columns.clone());
        }
        self.metrics.snapshot_tables(job.tables.len(), job.current);
        if job.current >= job.tables.len() {
            let path = request_path(&self.dir);
            std::fs::remove_file(&path).map_err(|e| ResnapshotError::File {
                path: path.clone(),
                source: LogError::Io {
                    action: "remove",
                    path,
                    source: e,
                },
            })?;
            info!("re-snapshot done");
            self.job = None;
            self.dest = None;
            return Ok(());
        }
        job.save(&self.dir)
    }

    /// A definite failure: written into the request for the command to report; the
    /// stream goes on.
    pub fn fail(&mut self, e: &ResnapshotError) {
        let text = crate::report::error_chain(e);
        warn!(error = %text, "re-snapshot stopped");
        self.metrics.snapshot_failed(&text);
        if let Some(mut job) = self.job.take() {
            job.error = Some(text);
            if let Err(e) = job.save(&self.dir) {
                warn!(error = %crate::report::error_chain(&e), "cannot record the re-snapshot's failure");
            }
        }
        self.dest = None;
    }
}
