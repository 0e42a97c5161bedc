//! What `/status` reports besides numbers: the source position and checkpoint, and the
//! last error with where it happened (stage, table, key, log offsets, source position).
//!
//! The stages write here on the rare events (a transaction batch, a checkpoint, an
//! error), never per row; readers take a snapshot. Locks are held only to copy a value.

use std::sync::Mutex;

use rowlog_api::{BinlogPosition, ChangeEvent, Value};
use serde::Serialize;

use crate::metrics::now_ms;

/// The last error any stage reported.
#[derive(Clone, Debug, Serialize)]
pub struct ErrorReport {
    /// `source`, `log` or `sink`.
    pub stage: &'static str,
    /// Whether the stage retries it (true) or stopped on it (false).
    pub retryable: bool,
    /// The error and its causes, outermost first.
    pub message: String,
    pub at_unix_ms: u64,
    pub partition: Option<u32>,
    pub worker: Option<u32>,
    /// The table of the first change in the failed batch.
    pub table: Option<String>,
    /// The primary key of that change, rendered as text.
    pub key: Option<String>,
    /// Log offsets the failed batch covered, first and last.
    pub offsets: Option<(u64, u64)>,
    /// Where in the source the first change of the batch began.
    pub source_position: Option<String>,
}

impl ErrorReport {
    pub fn new(stage: &'static str, retryable: bool, message: String) -> Self {
        Self {
            stage,
            retryable,
            message,
            at_unix_ms: now_ms(),
            partition: None,
            worker: None,
            table: None,
            key: None,
            offsets: None,
            source_position: None,
        }
    }

    /// Adds where a sink batch failed: its first change (table, key, source position)
    /// and the log offsets it covered.
    pub fn at_batch(
        mut self,
        partition: u32,
        worker: u32,
        first: Option<&ChangeEvent>,
        offsets: (u64, u64),
    ) -> Self {
        self.partition = Some(partition);
        self.worker = Some(worker);
        self.offsets = Some(offsets);
        if let Some(c) = first {
            self.table = Some(c.table.name.to_string());
            self.key = Some(render_key(c));
            self.source_position = Some(c.source.txn_start.to_string());
        }
        self
    }
}

fn render_key(c: &ChangeEvent) -> String {
    let parts: Vec<String> = c
        .table
        .pk_columns()
        .zip(c.key())
        .map(|(col, v)| format!("{}={}", col.name, render_value(v)))
        .collect();
    parts.join(", ")
}

fn render_value(v: &Value) -> String {
    match v {
        Value::Null => "NULL".into(),
        Value::Int(i) => i.to_string(),
        Value::UInt(u) => u.to_string(),
        Value::Decimal(s) => s.to_string(),
        Value::Json(s) => s.clone(),
        Value::Bytes(b) => format!("{:?}", String::from_utf8_lossy(b)),
        other => format!("{other:?}"),
    }
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct SourceStatus {
    pub connected: bool,
    /// The newest resume position read (`file:pos`).
    pub position: Option<String>,
    pub gtid: Option<String>,
    /// The position stored as the log's checkpoint: where a restart resumes.
    pub checkpoint: Option<String>,
}

/// Progress of a running (or the last) snapshot.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SnapshotStatus {
    pub tables_total: usize,
    pub tables_done: usize,
    pub rows_copied: u64,
    pub running: bool,
    /// Why the last re-snapshot (`rowlog snapshot --tables` beside the daemon) stopped
    /// for good, until another is requested.
    pub failed: Option<String>,
}

/// The pipeline's lease on the destination (see `rowlog_mysql_sink::lease`), as
/// `rowlog run` last saw it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum LeaseStatus {
    /// Not asked for yet: the daemon is still checking the source and destination.
    #[default]
    NotTaken,
    /// Another process holds it; it runs out in `remaining_secs` unless renewed.
    Waiting {
        holder: String,
        remaining_secs: u64,
    },
    Held,
    /// It ran out before it was renewed: every stage stopped until the daemon takes it
    /// back (only if no other process took it meanwhile).
    Lapsed,
}

#[derive(Default)]
pub struct State {
    source: Mutex<SourceStatus>,
    last_error: Mutex<Option<ErrorReport>>,
    snapshot: Mutex<Option<SnapshotStatus>>,
    lease: Mutex<LeaseStatus>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic elsewhere while holding the lock leaves a plain value; keep reporting it.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl State {
    pub fn set_source_connected(&self, connected: bool) {
        lock(&self.source).connected = connected;
    }

    pub fn set_source_position(&self, position: &BinlogPosition, gtid: &str) {
        let mut s = lock(&self.source);
        s.position = Some(position.to_string());
        s.gtid = (!gtid.is_empty()).then(|| gtid.to_owned());
    }

    pub fn set_checkpoint(&self, position: &BinlogPosition) {
        lock(&self.source).checkpoint = Some(position.to_string());
    }

    pub fn record_error(&self, report: ErrorReport) {
        *lock(&self.last_error) = Some(report);
    }

    pub fn source(&self) -> SourceStatus {
        lock(&self.source).clone()
    }

    pub fn last_error(&self) -> Option<ErrorReport> {
        lock(&self.last_error).clone()
    }

    pub fn update_snapshot(&self, f: impl FnOnce(&mut SnapshotStatus)) {
        f(lock(&self.snapshot).get_or_insert_with(Default::default));
    }

    pub fn snapshot(&self) -> Option<SnapshotStatus> {
        lock(&self.snapshot).clone()
    }

    pub fn set_lease(&self, lease: LeaseStatus) {
        *lock(&self.lease) = lease;
    }

    pub fn lease(&self) -> LeaseStatus {
        lock(&self.lease).clone()
    }
}
