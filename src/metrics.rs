//! Every Prometheus metric rowlog exports, defined here and nowhere else.
//!
//! Names follow `rowlog_<subsystem>_<what>_<unit>[_total]` in base units (seconds,
//! bytes). Label values come from small, fixed sets — table names, operations,
//! partition numbers, error kinds, binlog file names, GTID domain-server pairs — never
//! from a primary key, an offset or a GTID sequence number: those change with every
//! transaction, and as label values each would become a new series in Prometheus.
//! Positions are gauge *values* instead (`rowlog_source_position_info` = byte position,
//! `rowlog_source_gtid_sequence` = sequence number); the full GTID is in `/status`.
//!
//! # Lag that does not lie
//! * Source lag is computed when scraped, as `now − newest source time seen`, where the
//!   source time is a transaction's commit time or an idle heartbeat's server clock. An
//!   idle source keeps sending heartbeats, so lag stays near zero; a source that stops
//!   talking (lost connection, stuck reader) makes the lag grow instead of freezing.
//! * End-to-end lag is observed per applied change, as destination commit time minus
//!   source commit time, per partition. The binlog stores whole seconds, so values are
//!   accurate to about a second.
//! * Sink lag in records is `log end offset − committed offset` per partition, both read
//!   at scrape time.
//!
//! # Stalled and halted
//! [`Metrics::refresh`] (run by the sampler every second and before every scrape)
//! marks the pipeline *stalled* when some partition has a backlog and its committed
//! offset has not moved for `stall_after`. *Halted* is set by the stages when they stop
//! on a definite error or pause (a full disk). Either makes `/readyz` fail.
//!
//! Series with labels from fixed sets (partitions, error kinds) are created at start
//! with value 0, so dashboards and alert rules always find them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prometheus::{
    exponential_buckets, Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter,
    IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};
use rowlog_api::{BinlogPosition, ChangeEvent, Gtid, Op, TableName};

use crate::status::{LeaseStatus, State};

/// Why a sink worker retried; a fixed set so each is a series from the start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetryKind {
    /// Applying a batch failed with a retryable error (lost connection, deadlock, lock wait).
    Apply,
    /// Connecting to the destination failed.
    Connect,
    /// Reading the progress rows failed.
    Progress,
    /// Reading the log failed in a way it recovers from (a Kafka broker away).
    LogRead,
}

impl RetryKind {
    const ALL: [RetryKind; 4] = [
        RetryKind::Apply,
        RetryKind::Connect,
        RetryKind::Progress,
        RetryKind::LogRead,
    ];
    fn as_str(self) -> &'static str {
        match self {
            RetryKind::Apply => "apply",
            RetryKind::Connect => "connect",
            RetryKind::Progress => "progress",
            RetryKind::LogRead => "log_read",
        }
    }
}

/// What failed, for `rowlog_errors_total{stage, kind}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorStage {
    Source,
    Log,
    Sink,
}

impl ErrorStage {
    const ALL: [ErrorStage; 3] = [ErrorStage::Source, ErrorStage::Log, ErrorStage::Sink];
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorStage::Source => "source",
            ErrorStage::Log => "log",
            ErrorStage::Sink => "sink",
        }
    }
}

fn retryability(retryable: bool) -> &'static str {
    if retryable {
        "retryable"
    } else {
        "definite"
    }
}

/// Milliseconds since the Unix epoch by the local clock.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Per-partition progress as the stall detector last saw it.
#[derive(Clone, Copy)]
struct Progress {
    applied: u64,
    since: Instant,
}

/// The causes `rowlog_pipeline_halted` is derived from.
#[derive(Default)]
struct Halt {
    paused: bool,
    stopped: bool,
}

pub struct Metrics {
    registry: Registry,
    partitions: u32,
    started: Instant,
    stall_after: Duration,
    /// Newest source time seen (commit time or heartbeat), ms since the epoch; 0 = none.
    source_time_ms: AtomicU64,
    progress: Mutex<Vec<Progress>>,
    /// Why the pipeline is halted: `rowlog_pipeline_halted` is derived from this alone,
    /// under its lock, so a pause ending never clears a stage's stop noted meanwhile.
    halt: Mutex<Halt>,
    /// Changes applied per partition. The stall detector watches this rather than the
    /// watermark: the watermark is published by the partition task between dispatch
    /// rounds, which can lag behind workers that are still making progress.
    applied_per_partition: Vec<AtomicU64>,
    /// What `/status` reports beyond the numbers: position, last error, readiness.
    pub state: State,

    // Source.
    pub source_events: IntCounterVec,
    pub source_rows: IntCounterVec,
    pub source_position_info: IntGaugeVec,
    pub source_gtid_sequence: IntGaugeVec,
    pub source_lag_seconds: Gauge,
    pub source_last_event_timestamp_seconds: Gauge,
    pub source_connected: IntGauge,
    pub source_reconnects: IntCounter,
    pub source_duplicates_dropped: IntCounter,

    // Log.
    pub log_end_offset: IntGaugeVec,
    pub log_appended_records: IntCounterVec,
    pub log_append_seconds: Histogram,
    pub log_fsyncs: IntCounterVec,
    pub log_checkpoints: IntCounter,
    pub log_size_bytes: IntGaugeVec,
    pub log_segments: IntGaugeVec,

    // Sink.
    pub sink_committed_offset: IntGaugeVec,
    pub sink_lag_records: IntGaugeVec,
    pub sink_rows_applied: IntCounterVec,
    pub sink_batch_rows: Histogram,
    pub sink_apply_seconds: Histogram,
    pub sink_retries: IntCounterVec,
    pub sink_queue_depth: IntGaugeVec,
    pub sink_partitions_applying: IntGauge,
    pub end_to_end_lag_seconds: HistogramVec,

    // Snapshot.
    pub snapshot_rows: IntCounterVec,
    pub snapshot_chunks: IntCounterVec,
    pub snapshot_tables: IntGaugeVec,

    // Pipeline.
    pub errors: IntCounterVec,
    /// Written only through [`Metrics::set_paused`] and [`Metrics::set_stopped`].
    pipeline_halted: IntGauge,
    pub pipeline_stalled: IntGauge,
    /// Restarts of the pipeline in this process after its lease lapsed.
    pub pipeline_restarts: IntCounter,

    // Process.
    process_resident_memory_bytes: IntGauge,
    process_open_fds: IntGauge,
    process_uptime_seconds: Gauge,
    process_start_time_seconds: Gauge,
}

/// Registers and returns a metric; registration only fails on a duplicate or invalid
/// name, which is a programming error caught by the unit test below.
fn reg<M: prometheus::core::Collector + Clone + 'static>(r: &Registry, m: M) -> M {
    r.register(Box::new(m.clone()))
        .expect("metric names are unique and valid");
    m
}

fn opts(name: &str, help: &str) -> Opts {
    Opts::new(name, help)
}

impl Metrics {
    pub fn new(partitions: u32, stall_after: Duration) -> Self {
        let r = Registry::new();
        let int_counter_vec = |name: &str, help: &str, labels: &[&str]| {
            reg(
                &r,
                IntCounterVec::new(opts(name, help), labels).expect("valid metric"),
            )
        };
        let int_gauge_vec = |name: &str, help: &str, labels: &[&str]| {
            reg(
                &r,
                IntGaugeVec::new(opts(name, help), labels).expect("valid metric"),
            )
        };
        let int_gauge = |name: &str, help: &str| {
            reg(
                &r,
                IntGauge::with_opts(opts(name, help)).expect("valid metric"),
            )
        };
        let gauge = |name: &str, help: &str| {
            reg(
                &r,
                Gauge::with_opts(opts(name, help)).expect("valid metric"),
            )
        };
        let int_counter = |name: &str, help: &str| {
            reg(
                &r,
                IntCounter::with_opts(opts(name, help)).expect("valid metric"),
            )
        };
        // Seconds from 1 ms to ~65 s: appends and batches are milliseconds, outliers seconds.
        let latency = exponential_buckets(0.001, 2.0, 17).expect("valid buckets");
        // End-to-end lag: binlog timestamps have whole seconds, so start at 0.5 s; up to ~4.5 h.
        let lag = exponential_buckets(0.5, 2.0, 16).expect("valid buckets");
        let rows = exponential_buckets(1.0, 2.0, 15).expect("valid buckets");

        let m = Metrics {
            partitions,
            started: Instant::now(),
            stall_after,
            source_time_ms: AtomicU64::new(0),
            progress: Mutex::new(
                (0..partitions)
                    .map(|_| Progress {
                        applied: 0,
                        since: Instant::now(),
                    })
                    .collect(),
            ),
            applied_per_partition: (0..partitions).map(|_| AtomicU64::new(0)).collect(),
            halt: Mutex::new(Halt::default()),
            state: State::default(),

            source_events: int_counter_vec(
                "rowlog_source_events_total",
                "Events read from the source, by kind (change, commit, heartbeat).",
                &["kind"],
            ),
            source_rows: int_counter_vec(
                "rowlog_source_rows_total",
                "Row changes read from the source, by table and operation.",
                &["table", "op"],
            ),
            source_position_info: int_gauge_vec(
                "rowlog_source_position_info",
                "Binlog file and GTID domain-server of the last transaction read; the value is the byte position in the file.",
                &["file", "gtid_domain"],
            ),
            source_gtid_sequence: int_gauge_vec(
                "rowlog_source_gtid_sequence",
                "Sequence number of the GTID of the last transaction read, per GTID domain-server.",
                &["gtid_domain"],
            ),
            source_lag_seconds: gauge(
                "rowlog_source_lag_seconds",
                "Now minus the newest source time seen (commit time of the last event read, or the last idle heartbeat).",
            ),
            source_last_event_timestamp_seconds: gauge(
                "rowlog_source_last_event_timestamp_seconds",
                "Source commit time of the last transaction read, as a Unix timestamp.",
            ),
            source_connected: int_gauge(
                "rowlog_source_connected",
                "1 while the binlog stream is connected.",
            ),
            source_reconnects: int_counter(
                "rowlog_source_reconnects_total",
                "Times the binlog stream was lost and rowlog reconnected.",
            ),
            source_duplicates_dropped: int_counter(
                "rowlog_source_duplicates_dropped_total",
                "Changes re-read after a reconnect or restart and dropped because the log already held them.",
            ),

            log_end_offset: int_gauge_vec(
                "rowlog_log_end_offset",
                "Next offset to be written, per partition.",
                &["partition"],
            ),
            log_appended_records: int_counter_vec(
                "rowlog_log_appended_records_total",
                "Records appended durably, per partition.",
                &["partition"],
            ),
            log_append_seconds: reg(
                &r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "rowlog_log_append_duration_seconds",
                        "Time for one durable append of a batch across partitions.",
                    )
                    .buckets(latency.clone()),
                )
                .expect("valid metric"),
            ),
            log_fsyncs: int_counter_vec(
                "rowlog_log_fsyncs_total",
                "Durable appends per partition (the embedded log syncs each written partition once per append).",
                &["partition"],
            ),
            log_checkpoints: int_counter(
                "rowlog_log_checkpoints_total",
                "Source checkpoints stored.",
            ),
            log_size_bytes: int_gauge_vec(
                "rowlog_log_size_bytes",
                "Bytes in segment files, per partition.",
                &["partition"],
            ),
            log_segments: int_gauge_vec(
                "rowlog_log_segments",
                "Segment files, per partition.",
                &["partition"],
            ),

            sink_committed_offset: int_gauge_vec(
                "rowlog_sink_committed_offset",
                "Offset below which every record of the partition is applied (the watermark).",
                &["partition"],
            ),
            sink_lag_records: int_gauge_vec(
                "rowlog_sink_lag_records",
                "Records appended but not yet applied, per partition.",
                &["partition"],
            ),
            sink_rows_applied: int_counter_vec(
                "rowlog_sink_rows_applied_total",
                "Row changes applied to the destination, by table and operation.",
                &["table", "op"],
            ),
            sink_batch_rows: reg(
                &r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "rowlog_sink_batch_rows",
                        "Changes per applied batch (one destination transaction).",
                    )
                    .buckets(rows),
                )
                .expect("valid metric"),
            ),
            sink_apply_seconds: reg(
                &r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "rowlog_sink_apply_duration_seconds",
                        "Time to apply and commit one batch on the destination, retries excluded.",
                    )
                    .buckets(latency),
                )
                .expect("valid metric"),
            ),
            sink_retries: int_counter_vec(
                "rowlog_sink_retries_total",
                "Sink operations retried after a retryable error, by kind (apply, connect, progress).",
                &["kind"],
            ),
            sink_queue_depth: int_gauge_vec(
                "rowlog_sink_queue_depth",
                "Changes queued for the partition's workers.",
                &["partition"],
            ),
            sink_partitions_applying: int_gauge(
                "rowlog_sink_partitions_applying",
                "Partitions whose apply task is connected and running.",
            ),
            end_to_end_lag_seconds: reg(
                &r,
                HistogramVec::new(
                    HistogramOpts::new(
                        "rowlog_end_to_end_lag_seconds",
                        "Destination commit time minus source commit time of each applied change.",
                    )
                    .buckets(lag),
                    &["partition"],
                )
                .expect("valid metric"),
            ),

            snapshot_rows: int_counter_vec(
                "rowlog_snapshot_rows_total",
                "Rows copied to the destination by the snapshot, by table.",
                &["table"],
            ),
            snapshot_chunks: int_counter_vec(
                "rowlog_snapshot_chunks_total",
                "Snapshot chunks copied (one source read, one destination transaction each), by table.",
                &["table"],
            ),
            snapshot_tables: int_gauge_vec(
                "rowlog_snapshot_tables",
                "Tables of the current or last snapshot, by state (done, pending).",
                &["state"],
            ),

            errors: int_counter_vec(
                "rowlog_errors_total",
                "Errors by stage (source, log, sink) and kind (retryable, definite).",
                &["stage", "kind"],
            ),
            pipeline_halted: int_gauge(
                "rowlog_pipeline_halted",
                "1 when a stage stopped on an error or is paused (e.g. a full disk).",
            ),
            pipeline_stalled: int_gauge(
                "rowlog_pipeline_stalled",
                "1 when a partition has a backlog and its committed offset has not moved for the stall period.",
            ),
            pipeline_restarts: int_counter(
                "rowlog_pipeline_restarts_total",
                "Restarts of the pipeline within the process after its lease on the destination lapsed (the destination was out of reach for the lease's lifetime).",
            ),

            process_resident_memory_bytes: int_gauge(
                "rowlog_process_resident_memory_bytes",
                "Resident set size (VmRSS).",
            ),
            process_open_fds: int_gauge(
                "rowlog_process_open_fds",
                "Open file descriptors.",
            ),
            process_uptime_seconds: gauge(
                "rowlog_process_uptime_seconds",
                "Seconds since the pipeline started.",
            ),
            process_start_time_seconds: gauge(
                "rowlog_process_start_time_seconds",
                "Start time of the pipeline as a Unix timestamp.",
            ),
            registry: r,
        };
        let build = IntGaugeVec::new(
            opts("rowlog_build_info", "Always 1; labels name the build."),
            &["version"],
        )
        .expect("valid metric");
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        reg(&m.registry, build);
        m.process_start_time_seconds.set(now_ms() as f64 / 1000.0);

        for p in 0..partitions {
            let p = p.to_string();
            for v in [
                &m.log_end_offset,
                &m.sink_committed_offset,
                &m.sink_lag_records,
                &m.sink_queue_depth,
                &m.log_size_bytes,
                &m.log_segments,
            ] {
                v.with_label_values(&[&p]);
            }
            m.log_appended_records.with_label_values(&[&p]);
            m.log_fsyncs.with_label_values(&[&p]);
            m.end_to_end_lag_seconds.with_label_values(&[&p]);
        }
        for k in RetryKind::ALL {
            m.sink_retries.with_label_values(&[k.as_str()]);
        }
        for s in ErrorStage::ALL {
            for retryable in [true, false] {
                m.errors
                    .with_label_values(&[s.as_str(), retryability(retryable)]);
            }
        }
        for k in ["change", "commit", "heartbeat"] {
            m.source_events.with_label_values(&[k]);
        }
        m
    }

    pub fn partitions(&self) -> u32 {
        self.partitions
    }

    // ---- source ----

    /// `n` row changes of one table and operation read from the source.
    pub fn source_rows_read(&self, table: &TableName, op: Op, n: u64) {
        self.source_events.with_label_values(&["change"]).inc_by(n);
        self.source_rows
            .with_label_values(&[&table.to_string(), op.as_str()])
            .inc_by(n);
    }

    /// The newest commit time among the row changes read since the last call (0: none).
    pub fn source_change_time(&self, commit_time_ms: u64) {
        self.saw_source_time(commit_time_ms);
    }

    /// A transaction end read from the source (`commit_time_ms` 0: a start position, not a
    /// transaction).
    pub fn source_commit(&self, commit_time_ms: u64) {
        self.source_events.with_label_values(&["commit"]).inc();
        if commit_time_ms > 0 {
            self.source_last_event_timestamp_seconds
                .set(commit_time_ms as f64 / 1000.0);
            self.saw_source_time(commit_time_ms);
        }
    }

    /// An idle heartbeat: the source had nothing newer than its clock `at_ms`.
    pub fn source_heartbeat(&self, at_ms: u64) {
        self.source_events.with_label_values(&["heartbeat"]).inc();
        self.saw_source_time(at_ms);
    }

    fn saw_source_time(&self, ms: u64) {
        if ms > 0 {
            self.source_time_ms.fetch_max(ms, Ordering::Relaxed);
        }
    }

    /// The newest position read (covered by what is appended or buffered).
    pub fn source_position(&self, position: &BinlogPosition, gtid: Option<&Gtid>) {
        // The series label: MariaDB's domain-server, MySQL's server UUID (and tag).
        let domain = match gtid {
            Some(Gtid::MariaDb(g)) => format!("{}-{}", g.domain, g.server),
            Some(Gtid::MySql(g)) => {
                let full = g.to_string();
                full.rsplit_once(':')
                    .map(|(origin, _)| origin.to_owned())
                    .unwrap_or(full)
            }
            None => String::new(),
        };
        // One series at a time: after a rotation the old file's series is dropped, not
        // left behind at its last value.
        self.source_position_info.reset();
        self.source_position_info
            .with_label_values(&[&position.file.to_string(), &domain])
            .set(position.pos as i64);
        if let Some(g) = gtid {
            self.source_gtid_sequence
                .with_label_values(&[&domain])
                .set(g.sequence() as i64);
        }
        let gtid = gtid.map(|g| g.to_string()).unwrap_or_default();
        self.state.set_source_position(position, &gtid);
    }

    pub fn set_source_connected(&self, connected: bool) {
        self.source_connected.set(connected as i64);
        self.state.set_source_connected(connected);
    }

    // ---- log ----

    /// One durable append of `counts[p]` records to each partition `p`, which took `took`.
    pub fn appended(&self, counts: &[usize], ends: impl Fn(u32) -> u64, took: Duration) {
        self.log_append_seconds.observe(took.as_secs_f64());
        for (p, &n) in counts.iter().enumerate() {
            if n == 0 {
                continue;
            }
            let label = p.to_string();
            self.log_appended_records
                .with_label_values(&[&label])
                .inc_by(n as u64);
            self.log_end_offset
                .with_label_values(&[&label])
                .set(ends(p as u32) as i64);
        }
    }

    /// The log's own fsync count for a partition (group commit makes it lower than the
    /// number of appends); the counter follows it.
    pub fn set_log_fsyncs(&self, partition: u32, total: u64) {
        let c = self.log_fsyncs.with_label_values(&[&partition.to_string()]);
        let seen = c.get();
        if total > seen {
            c.inc_by(total - seen);
        }
    }

    pub fn set_log_end(&self, partition: u32, end: u64) {
        self.log_end_offset
            .with_label_values(&[&partition.to_string()])
            .set(end as i64);
    }

    // ---- sink ----

    pub fn set_committed(&self, partition: u32, committed: u64) {
        self.sink_committed_offset
            .with_label_values(&[&partition.to_string()])
            .set(committed as i64);
    }

    pub fn set_queue_depth(&self, partition: u32, depth: usize) {
        self.sink_queue_depth
            .with_label_values(&[&partition.to_string()])
            .set(depth as i64);
    }

    /// A batch applied and committed on the destination.
    pub fn applied(&self, partition: u32, changes: &[ChangeEvent], took: Duration) {
        self.sink_apply_seconds.observe(took.as_secs_f64());
        self.sink_batch_rows.observe(changes.len() as f64);
        if let Some(n) = self.applied_per_partition.get(partition as usize) {
            n.fetch_add(changes.len() as u64, Ordering::Relaxed);
        }
        let now = now_ms();
        let lag = self
            .end_to_end_lag_seconds
            .with_label_values(&[&partition.to_string()]);
        // Batches are usually one table and one operation: count runs, not rows.
        let mut run: Option<(&ChangeEvent, u64)> = None;
        for c in changes {
            lag.observe(now.saturating_sub(c.source.commit_time_ms) as f64 / 1000.0);
            match &mut run {
                Some((first, n)) if first.table.name == c.table.name && first.op == c.op => *n += 1,
                _ => {
                    if let Some((first, n)) = run.take() {
                        self.count_applied(first, n);
                    }
                    run = Some((c, 1));
                }
            }
        }
        if let Some((first, n)) = run {
            self.count_applied(first, n);
        }
    }

    fn count_applied(&self, c: &ChangeEvent, n: u64) {
        self.sink_rows_applied
            .with_label_values(&[&c.table.name.to_string(), c.op.as_str()])
            .inc_by(n);
    }

    /// Counts a partition as applying until the returned guard is dropped.
    pub fn applying(&self) -> ApplyingGuard {
        self.sink_partitions_applying.inc();
        ApplyingGuard(self.sink_partitions_applying.clone())
    }

    /// A snapshot chunk of `rows` rows of `table` is on the destination.
    pub fn snapshot_chunk(&self, table: &TableName, rows: u64) {
        let t = table.to_string();
        self.snapshot_rows.with_label_values(&[&t]).inc_by(rows);
        self.snapshot_chunks.with_label_values(&[&t]).inc();
        self.state.update_snapshot(|s| s.rows_copied += rows);
    }

    /// How many of the snapshot's tables are copied.
    pub fn snapshot_tables(&self, total: usize, done: usize) {
        self.snapshot_tables
            .with_label_values(&["done"])
            .set(done as i64);
        self.snapshot_tables
            .with_label_values(&["pending"])
            .set((total - done.min(total)) as i64);
        self.state.update_snapshot(|s| {
            s.tables_total = total;
            s.tables_done = done;
            s.running = done < total;
        });
    }

    /// A re-snapshot stopped for good: no copy runs any more (its tables stay pending).
    pub fn snapshot_failed(&self, error: &str) {
        self.state.update_snapshot(|s| {
            s.running = false;
            s.failed = Some(error.to_owned());
        });
    }

    /// A new re-snapshot was requested: the last one's failure is history.
    pub fn snapshot_requested(&self) {
        self.state.update_snapshot(|s| s.failed = None);
    }

    pub fn retry(&self, kind: RetryKind) {
        self.sink_retries.with_label_values(&[kind.as_str()]).inc();
    }

    pub fn error(&self, stage: ErrorStage, retryable: bool) {
        self.errors
            .with_label_values(&[stage.as_str(), retryability(retryable)])
            .inc();
    }

    // ---- derived values ----

    /// Recomputes what is derived from time or from other metrics: lags, stall state,
    /// process figures. Cheap; run every second and before each scrape.
    pub fn refresh(&self) {
        let now = now_ms();
        let seen = self.source_time_ms.load(Ordering::Relaxed);
        if seen > 0 {
            self.source_lag_seconds
                .set(now.saturating_sub(seen) as f64 / 1000.0);
        }
        let mut stalled = false;
        let mut progress = self.progress.lock().unwrap_or_else(|p| p.into_inner());
        for p in 0..self.partitions {
            let label = p.to_string();
            let end = self.log_end_offset.with_label_values(&[&label]).get();
            let committed = self
                .sink_committed_offset
                .with_label_values(&[&label])
                .get();
            let backlog = (end - committed).max(0);
            self.sink_lag_records
                .with_label_values(&[&label])
                .set(backlog);
            let applied = self.applied_per_partition[p as usize].load(Ordering::Relaxed);
            let seen = &mut progress[p as usize];
            if applied != seen.applied || backlog == 0 {
                *seen = Progress {
                    applied,
                    since: Instant::now(),
                };
            } else if seen.since.elapsed() >= self.stall_after {
                stalled = true;
            }
        }
        drop(progress);
        self.pipeline_stalled.set(stalled as i64);
        self.process_uptime_seconds
            .set(self.started.elapsed().as_secs_f64());
        if let Some(rss) = read_rss_bytes() {
            self.process_resident_memory_bytes.set(rss as i64);
        }
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            self.process_open_fds.set(fds.count() as i64);
        }
    }

    /// Bytes and segment files per partition, from the log directory. A directory walk
    /// per partition: the sampler runs it every few seconds, never a scrape.
    pub fn refresh_log_usage(&self, dir: &std::path::Path) {
        for p in 0..self.partitions {
            let (bytes, segments) = segment_usage(dir, p);
            let label = p.to_string();
            self.log_size_bytes.with_label_values(&[&label]).set(bytes);
            self.log_segments.with_label_values(&[&label]).set(segments);
        }
    }

    /// The text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = Vec::new();
        // Encoding into a Vec fails only on invalid metric families, which `reg` prevents.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }

    /// The ingest pauses (a full disk) or resumes. Paused is halted for an operator:
    /// nothing moves until space returns.
    pub fn set_paused(&self, paused: bool) {
        self.update_halt(|h| h.paused = paused);
    }

    /// A stage stopped on an error (a partition halted, or the pipeline): halted until
    /// rowlog restarts.
    pub fn set_stopped(&self) {
        self.update_halt(|h| h.stopped = true);
    }

    /// The pipeline starts again in this process (after its lease lapsed): a stop noted
    /// by the run before no longer holds.
    pub fn restarted(&self) {
        self.pipeline_restarts.inc();
        self.update_halt(|h| *h = Halt::default());
    }

    pub fn is_halted(&self) -> bool {
        self.pipeline_halted.get() != 0
    }

    fn update_halt(&self, change: impl FnOnce(&mut Halt)) {
        let mut h = self.halt.lock().unwrap_or_else(|p| p.into_inner());
        change(&mut h);
        self.pipeline_halted.set(i64::from(h.paused || h.stopped));
    }

    /// Whether `/readyz` should say yes, and if not, why.
    pub fn readiness(&self) -> Result<(), String> {
        match self.state.lease() {
            LeaseStatus::Waiting {
                holder,
                remaining_secs,
            } => {
                return Err(format!(
                    "waiting for the pipeline's lease, held by {holder}: it runs out in {remaining_secs} s unless renewed"
                ))
            }
            LeaseStatus::Lapsed => {
                return Err("the pipeline's lease lapsed: every stage stopped until it is taken back".into())
            }
            LeaseStatus::NotTaken | LeaseStatus::Held => {}
        }
        if self.is_halted() {
            return Err("the pipeline is halted".into());
        }
        if self.pipeline_stalled.get() != 0 {
            return Err(format!(
                "a partition has a backlog and made no progress for {} s",
                self.stall_after.as_secs()
            ));
        }
        if self.source_connected.get() == 0 {
            return Err("the source is not connected".into());
        }
        let applying = self.sink_partitions_applying.get();
        if applying < self.partitions as i64 {
            return Err(format!(
                "{applying} of {} partitions are applying",
                self.partitions
            ));
        }
        Ok(())
    }

    /// Per-partition (end, committed, lag) as last recorded.
    pub fn partition_offsets(&self) -> Vec<(u32, i64, i64, i64)> {
        (0..self.partitions)
            .map(|p| {
                let label = p.to_string();
                let end = self.log_end_offset.with_label_values(&[&label]).get();
                let committed = self
                    .sink_committed_offset
                    .with_label_values(&[&label])
                    .get();
                (p, end, committed, (end - committed).max(0))
            })
            .collect()
    }

    pub fn source_lag(&self) -> Option<f64> {
        (self.source_time_ms.load(Ordering::Relaxed) > 0).then(|| self.source_lag_seconds.get())
    }
}

/// Holds one count in `rowlog_sink_partitions_applying`; every exit path of a partition
/// task drops it, so the gauge cannot stay up after the task ended.
pub struct ApplyingGuard(IntGauge);

impl Drop for ApplyingGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// VmRSS from /proc/self/status, in bytes.
fn read_rss_bytes() -> Option<u64> {
    let kib = crate::report::proc_status_kib("self", "VmRSS:");
    (kib > 0).then_some(kib * 1024)
}

/// Bytes and count of `*.log` segment files of partition `p`. Reads the embedded log's
/// documented layout (`partitions/{p:05}/`) from outside, so the log module needs no
/// hook; a missing directory reads as empty.
fn segment_usage(dir: &std::path::Path, p: u32) -> (i64, i64) {
    let Ok(entries) = std::fs::read_dir(dir.join("partitions").join(format!("{p:05}"))) else {
        return (0, 0);
    };
    let (mut bytes, mut count) = (0i64, 0i64);
    for e in entries.flatten() {
        if e.file_name().to_string_lossy().ends_with(".log") {
            count += 1;
            bytes += e.metadata().map(|m| m.len() as i64).unwrap_or(0);
        }
    }
    (bytes, count)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The full-disk pause ending must not clear a halt a partition noted while the
    /// ingest was paused; only a restart does.
    #[test]
    fn a_pause_ending_leaves_a_stop_noted_during_it_halted() {
        let m = Metrics::new(1, Duration::from_secs(30));
        let halted = |m: &Metrics| m.encode().lines().any(|l| l == "rowlog_pipeline_halted 1");
        m.set_paused(true);
        assert!(halted(&m) && m.is_halted());
        m.set_paused(false);
        assert!(!halted(&m) && !m.is_halted());
        m.set_paused(true);
        m.set_stopped();
        m.set_paused(false);
        assert!(halted(&m) && m.is_halted());
        assert_eq!(m.readiness(), Err("the pipeline is halted".into()));
    }

    #[test]
    fn every_metric_registers_and_fixed_series_exist_from_the_start() {
        let m = Metrics::new(2, Duration::from_secs(30));
        m.refresh();
        let text = m.encode();
        for needle in [
            "rowlog_sink_retries_total{kind=\"connect\"} 0",
            "rowlog_errors_total{kind=\"definite\",stage=\"sink\"} 0",
            "rowlog_sink_lag_records{partition=\"1\"} 0",
            "rowlog_build_info{version=",
            "rowlog_process_resident_memory_bytes ",
        ] {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
    }

    #[test]
    fn a_backlog_without_progress_is_stalled_and_progress_clears_it() {
        let m = Metrics::new(1, Duration::ZERO);
        m.set_log_end(0, 10);
        m.set_committed(0, 4);
        m.refresh(); // first sighting of the backlog
        m.refresh();
        assert_eq!(m.pipeline_stalled.get(), 1);
        assert_eq!(m.sink_lag_records.with_label_values(&["0"]).get(), 6);
        // Workers applying is progress, even before the watermark is published.
        m.applied(0, &[], Duration::ZERO);
        m.refresh();
        assert_eq!(m.pipeline_stalled.get(), 1, "an empty batch is no progress");
        m.set_committed(0, 10);
        m.refresh();
        assert_eq!(m.pipeline_stalled.get(), 0);
        assert_eq!(m.sink_lag_records.with_label_values(&["0"]).get(), 0);
    }

    #[test]
    fn source_lag_follows_heartbeats_when_idle() {
        let m = Metrics::new(1, Duration::from_secs(30));
        m.source_commit(now_ms() - 120_000);
        m.refresh();
        assert!(m.source_lag_seconds.get() >= 119.0);
        m.source_heartbeat(now_ms());
        m.refresh();
        assert!(m.source_lag_seconds.get() < 5.0);
    }
}
