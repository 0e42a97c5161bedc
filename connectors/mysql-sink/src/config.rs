//! The `[sink]` section of rowlog's configuration.

use serde::Deserialize;

/// One worker per partition: with the default 8 partitions, 8 destination connections.
/// On the 2-core machine where source, destination and rowlog share the cores, 8 × 1
/// applied both benchmark shapes about 1.4× as fast as 8 × 4 (32 connections), the
/// destination spending about 30 % less CPU and rowlog about 35 % less on the same
/// changes. A destination with cores of its own may want more (README, Performance).
fn default_workers() -> u32 {
    1
}
fn default_batch_max_rows() -> usize {
    2_000
}
fn default_batch_max_wait_ms() -> u64 {
    20
}
fn default_batch_max_bytes() -> usize {
    8 << 20
}
/// Rows of ordinary size never reach it (a batch of 2,000 changes of 200 bytes holds
/// about 1 MiB); rows of hundreds of KB are bounded by it. What a batch holds is
/// copied about twice more while it is applied (statement parameters, the packet), so
/// a partition holds about 3 × 4 MiB of wide rows at most, measured with 1 MiB rows:
/// 8 partitions of 2 workers peaked at 253 MiB in all (tests/suite/memory.rs).
fn default_queue_max_bytes() -> usize {
    4 << 20
}
fn default_progress_database() -> String {
    "rowlog".into()
}
fn default_lease_secs() -> u64 {
    30
}
/// Above MariaDB's and MySQL's default `innodb_lock_wait_timeout` (50 s), so a batch
/// waiting on a lock fails with 1205 and is retried, rather than timing out here.
fn default_call_timeout_secs() -> u64 {
    120
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkConfig {
    /// `mysql://user:password@host:port/` of the destination server.
    pub url: String,
    /// Worker queues (and destination connections) per log partition.
    #[serde(default = "default_workers")]
    pub workers: u32,
    /// A worker's batch closes at this many changes…
    #[serde(default = "default_batch_max_rows")]
    pub batch_max_rows: usize,
    /// …or when its oldest change has waited this long…
    #[serde(default = "default_batch_max_wait_ms")]
    pub batch_max_wait_ms: u64,
    /// …or when its changes hold about this many bytes.
    #[serde(default = "default_batch_max_bytes")]
    pub batch_max_bytes: usize,
    /// What a partition's worker queues and batches hold at once, in bytes of values:
    /// memory under backlog stays bounded however wide the rows are.
    #[serde(default = "default_queue_max_bytes")]
    pub queue_max_bytes: usize,
    /// Off by default. When set, a change the destination rejects for good is written
    /// to this file (one JSON line) and its partition goes on instead of halting.
    #[serde(default)]
    pub dead_letter_file: Option<std::path::PathBuf>,
    /// Database on the destination holding `rowlog_progress`, `rowlog_schema_changes`,
    /// `rowlog_schema_runs` and `rowlog_lease`.
    #[serde(default = "default_progress_database")]
    pub progress_database: String,
    /// Off by default. When set, upserts of 16 rows or more of a table go as `LOAD DATA
    /// LOCAL INFILE … REPLACE` where that has the upsert's exact effect (see the sink's
    /// `load` module); needs `local_infile=ON` on the destination (otherwise
    /// statements are used). On the 2-core bench machine it measured no faster than
    /// the statements; a destination on its own hardware may differ.
    #[serde(default)]
    pub load_data: bool,
    /// Schema changes (DDL) from the source: "apply" (default), "ignore" or "halt".
    #[serde(default)]
    pub ddl: rowlog_api::SchemaChangePolicy,
    /// How long the pipeline's lease on the destination lasts unless renewed (see the
    /// `lease` module): how long another host waits for a holder that vanished, and
    /// how long a holder that cannot reach the destination keeps its stages running.
    #[serde(default = "default_lease_secs")]
    pub lease_secs: u64,
    /// How long applying one batch, or reading or writing progress, may take before
    /// the connection is taken for dead and the batch retried on a new one: a network
    /// partition without a reset leaves a connection that never answers. Schema
    /// changes have no such limit (an ALTER of a large table may take hours).
    #[serde(default = "default_call_timeout_secs")]
    pub call_timeout_secs: u64,
}

impl SinkConfig {
    /// `lease_secs` as a duration.
    pub fn lease_ttl(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.lease_secs)
    }

    pub fn validate(&self) -> Result<(), String> {
        mysql_async::Opts::from_url(&self.url)
            .map_err(|e| format!("sink.url: not a valid mysql:// URL: {e}"))?;
        if !(1..=256).contains(&self.workers) {
            return Err(format!(
                "sink.workers: must be between 1 and 256, got {}",
                self.workers
            ));
        }
        if !(1..=1_000_000).contains(&self.batch_max_rows) {
            return Err(format!(
                "sink.batch_max_rows: must be between 1 and 1000000, got {}",
                self.batch_max_rows
            ));
        }
        if !(1024..=1 << 30).contains(&self.batch_max_bytes) {
            return Err(format!(
                "sink.batch_max_bytes: must be between 1024 and 1073741824, got {}",
                self.batch_max_bytes
            ));
        }
        if !(1024..=1 << 31).contains(&self.queue_max_bytes) {
            return Err(format!(
                "sink.queue_max_bytes: must be between 1024 and 2147483648, got {}",
                self.queue_max_bytes
            ));
        }
        if self
            .dead_letter_file
            .as_ref()
            .is_some_and(|p| p.as_os_str().is_empty())
        {
            return Err("sink.dead_letter_file: must be a file path (or absent to halt on rejected changes)".into());
        }
        if self.batch_max_wait_ms > 60_000 {
            return Err(format!(
                "sink.batch_max_wait_ms: must be at most 60000, got {}",
                self.batch_max_wait_ms
            ));
        }
        if !(1..=86_400).contains(&self.call_timeout_secs) {
            return Err(format!(
                "sink.call_timeout_secs: must be between 1 and 86400, got {}",
                self.call_timeout_secs
            ));
        }
        if !(3..=3600).contains(&self.lease_secs) {
            return Err(format!(
                "sink.lease_secs: must be between 3 and 3600, got {}",
                self.lease_secs
            ));
        }
        if self.progress_database.is_empty() || self.progress_database.contains('`') {
            return Err(
                "sink.progress_database: must be a non-empty name without backquotes".into(),
            );
        }
        Ok(())
    }
}
