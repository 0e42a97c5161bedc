//! Log → sink, one task per partition.
//!
//! The partition task reads its partition in offset order and dispatches each change by
//! key hash to one of N workers through bounded queues; each worker batches, applies
//! through its own sink connection and stores its last applied offset in the same
//! destination transaction.
//!
//! # The watermark
//! The partition's committed offset is the lowest offset not yet applied by every
//! worker. Worker `w` has applied everything dispatched to it before `applied[w]`; if
//! it has nothing in flight (`applied[w] == sent[w]`) it holds nothing back, so
//!
//! ```text
//! committed = min over w of ( applied[w] if w has work in flight, else next_dispatch )
//! ```
//!
//! Example with two workers: offsets 10 → w0, 11 → w1, 12 → w0; w1 has applied 11, w0
//! has applied nothing: committed = 10. When w0 applies 10 and 12, committed = 13.
//!
//! # Restart
//! Reading restarts from the log's committed offset or, when every worker of some
//! worker count stored progress, from past the lowest of those (of several such
//! counts, the highest), whichever is later. A change is skipped when a progress row
//! covers it: the row of the worker it is routed to under that row's worker count
//! ([`super::applied`]). So a restart with another worker count applies nothing twice
//! either. Progress stored for another log is not used, and removed. At its start a
//! run raises the row of each of its workers to just below the start (all of that is
//! applied), so its count is complete even where a worker gets no change.
//!
//! # Metrics
//! The partition task publishes its watermark and queue depth after every dispatch
//! round; workers publish per batch (rows by table and operation, batch size, apply
//! time, end-to-end lag per change). A retryable failure is reported with the batch's
//! first change and offsets; a definite one with the change the destination rejects,
//! found by re-applying the batch change by change (`isolate`). `/status` shows
//! the last of these.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use rowlog_api::{
    ApplyBatch, ChangeEvent, ChangeId, ChangeSink, Retry, SchemaChange, SchemaChangePolicy,
    WorkerProgress,
};
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;
use tokio::time::timeout_at;
use tracing::{debug, info, warn};

use super::applied::Applied;
use super::backoff::Backoff;
use super::budget::{self, Budget, TrySend};
use super::partitioner::{key_hash, worker_of};
use super::schema_barrier::{Role, SchemaBarrier, Waited};
use super::Stats;
use crate::log::{LogEntry, LogError, PartitionReader, PartitionedLog};
use crate::metrics::{ErrorStage, Metrics, RetryKind};
use crate::report::error_chain;
use crate::shutdown::Shutdown;
use crate::status::ErrorReport;

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("partition {partition} worker {worker}: the destination rejected a batch; the partition is halted")]
    Sink {
        partition: u32,
        worker: u32,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("partition {partition}: cannot read progress from the destination")]
    Progress {
        partition: u32,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("partition {partition}: reading the log failed")]
    Log {
        partition: u32,
        #[source]
        source: LogError,
    },
    #[error("partition {partition}: the schema change at {position} failed on the destination: `{statement}`")]
    SchemaChange {
        partition: u32,
        position: String,
        statement: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("partition {partition}: stopped at the schema change at {position} (sink.ddl = \"halt\"): `{statement}`; every change before it is applied. Change the destination by hand, then restart with sink.ddl = \"ignore\" to go past it")]
    SchemaChangeHalt {
        partition: u32,
        position: String,
        statement: String,
    },
    #[error("partition {partition}: halted at the schema change at {position}, which waits for partition {halted}, halted before reaching it; fix what halted partition {halted} and restart rowlog")]
    BehindHalted {
        partition: u32,
        position: String,
        halted: u32,
    },
    #[error("partition {partition}: the destination refuses connections for a reason retrying cannot fix; rowlog stops")]
    Connect {
        partition: u32,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("partition {partition}{}: this process lost the pipeline to another; nothing more is applied",
            worker.map(|w| format!(" worker {w}")).unwrap_or_default())]
    Fenced {
        partition: u32,
        /// None: the partition task's own writes (progress at its start, log commits).
        worker: Option<u32>,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("partition {partition}: worker {worker} ended unexpectedly: {detail}")]
    WorkerLost {
        partition: u32,
        worker: u32,
        detail: String,
    },
}

impl ApplyError {
    /// This process lost the pipeline, found by the partition task's own writes.
    fn partition_fenced(partition: u32, e: impl std::error::Error + Send + Sync + 'static) -> Self {
        ApplyError::Fenced {
            partition,
            worker: None,
            source: Box::new(e),
        }
    }
}

#[derive(Clone, Debug)]
pub struct ApplyConfig {
    pub workers: u32,
    pub batch_max_rows: usize,
    pub batch_max_wait: Duration,
    /// Consumer name under which offsets are committed to the log.
    pub consumer: String,
    /// How often the watermark is committed to the log while applying.
    pub commit_interval: Duration,
    /// A worker's batch also closes once its changes hold about this many bytes.
    pub batch_max_bytes: usize,
    /// What a partition's worker queues and batches may hold at once, in bytes.
    pub queue_max_bytes: usize,
    /// Where changes the destination rejects go instead of halting the partition.
    pub dead_letter: Option<super::dead_letter::DeadLetter>,
    /// What to do with schema changes.
    pub ddl: SchemaChangePolicy,
    /// What the snapshot's copies hold: changes the sink must not apply again.
    pub floors: crate::snapshot::Floors,
}

struct WorkerShared {
    /// Everything dispatched to this worker below this offset is applied.
    applied: AtomicU64,
}

struct Worker {
    /// `None` once dispatching stopped: the worker drains its queue and ends.
    tx: Option<budget::Sender<(u64, ChangeEvent)>>,
    shared: Arc<WorkerShared>,
    /// Next offset after the last one dispatched to this worker.
    sent: u64,
    handle: JoinHandle<Result<(), ApplyError>>,
}

/// Runs one partition until shutdown (then drains the worker queues and commits) or
/// until a worker fails definitely.
#[allow(clippy::too_many_arguments)]
pub async fn run_partition<L, S, F, Fut>(
    log: L,
    partition: u32,
    cfg: ApplyConfig,
    connect: F,
    barrier: Arc<SchemaBarrier>,
    stats: Arc<Stats>,
    metrics: Arc<Metrics>,
    mut shutdown: Shutdown,
) -> Result<(), ApplyError>
where
    L: PartitionedLog,
    S: ChangeSink + 'static,
    F: Fn() -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<S, S::Error>> + Send + 'static,
{
    let n = cfg.workers.max(1);
    let partitions = log.partitions();
    let log_id = log.log_id();

    // What the destination says each worker applied.
    let Some(mut first_sink) =
        connect_with_retry(&connect, partition, u32::MAX, &metrics, &mut shutdown).await?
    else {
        return Ok(());
    };
    let progress = ProgressCalls {
        partition,
        metrics: &metrics,
        connect: &connect,
    };
    let Some(stored) = progress
        .retry(&mut first_sink, &mut shutdown, "read progress", |s| {
            Box::pin(s.load_progress(partition))
        })
        .await?
    else {
        return Ok(());
    };
    let (mine, other_logs): (Vec<WorkerProgress>, Vec<WorkerProgress>) =
        stored.into_iter().partition(|p| p.log_id == log_id);
    if !other_logs.is_empty() {
        warn!(
            partition,
            rows = other_logs.len(),
            "ignoring destination progress written for another log"
        );
    }
    let applied = Applied::from_rows(&mine, partitions);
    let Some(committed) = retry_log(partition, &metrics, &mut shutdown, || {
        log.committed(&cfg.consumer, partition)
    })
    .await?
    else {
        return Ok(());
    };
    let mut start = committed.unwrap_or(0);
    if let Some(below) = applied.complete_below() {
        start = start.max(below);
    }
    start = start.min(log.end_offset(partition));
    // Rows of another log would be read as this log's by a later run once this one
    // overwrote some of them; rows below where every run now starts only cost lookups.
    let forget: Vec<WorkerProgress> = other_logs
        .iter()
        .copied()
        .chain(applied.superseded(&mine))
        .collect();
    if !forget.is_empty() {
        let removed = progress
            .retry(
                &mut first_sink,
                &mut shutdown,
                "remove progress rows of another log or below the start",
                |s| {
                    // Owned: the call's future may borrow only the sink.
                    let rows = forget.clone();
                    Box::pin(async move { s.forget_progress(partition, &rows).await })
                },
            )
            .await?;
        if removed.is_none() {
            return Ok(());
        }
        info!(
            partition,
            rows = forget.len(),
            "removed progress rows of another log or below where every restart now starts"
        );
    }
    // Everything below the start is applied, so each worker of this count may say so.
    // A worker that gets no change in a run (a partition with few keys, a table routed
    // whole) otherwise stores no row, and its count then never sets a restart's start
    // nor lets the rows of earlier counts go.
    let raise: Vec<WorkerProgress> = match start.checked_sub(1) {
        Some(below) => (0..n)
            .filter(|&w| {
                !mine
                    .iter()
                    .any(|r| r.workers == n && r.worker == w && r.offset >= below)
            })
            .map(|worker| WorkerProgress {
                log_id,
                partition,
                worker,
                workers: n,
                offset: below,
            })
            .collect(),
        None => Vec::new(),
    };
    if !raise.is_empty() {
        let raised = progress
            .retry(
                &mut first_sink,
                &mut shutdown,
                "store the workers' progress at the start",
                |s| {
                    let rows = raise.clone();
                    Box::pin(async move { s.raise_progress(partition, &rows).await })
                },
            )
            .await?;
        if raised.is_none() {
            return Ok(());
        }
    }
    if mine.iter().any(|p| p.workers != n) && applied.reaches(start) {
        info!(partition, workers = n, start, "progress was stored with another worker count: its workers' changes are looked up under their split and not applied again");
    }
    let Some(mut reader) = retry_log(partition, &metrics, &mut shutdown, || {
        log.reader(partition, start)
    })
    .await?
    else {
        return Ok(());
    };
    // Schema changes before the start are not met again in this run: the barrier
    // must not wait for this partition at them.
    barrier.started(partition, id_before(&log, partition, start).await);
    info!(partition, start, workers = n, "applying partition");
    metrics.set_committed(partition, start);
    let _applying = metrics.applying();

    let notify = Arc::new(Notify::new());
    // A worker that fails definitely reports here, then ends (at most one message each).
    let (fail_tx, mut fail_rx) = mpsc::unbounded_channel();
    let mut workers: Vec<Worker> = Vec::with_capacity(n as usize);
    let mut first_sink = Some(first_sink);
    // The partition's workers share one byte budget for what they queue and hold, so
    // wide rows cannot fill item-counted queues with gigabytes.
    let queued_bytes = Budget::new(cfg.queue_max_bytes);
    for w in 0..n {
        let (tx, rx) = queued_bytes.channel(cfg.batch_max_rows);
        let shared = Arc::new(WorkerShared {
            applied: AtomicU64::new(start),
        });
        let ctx = WorkerCtx {
            queued_bytes: queued_bytes.clone(),
            partition,
            worker: w,
            workers: n,
            log_id,
            cfg: cfg.clone(),
            shared: shared.clone(),
            notify: notify.clone(),
            stats: stats.clone(),
            metrics: metrics.clone(),
            shutdown: shutdown.clone(),
            failures: fail_tx.clone(),
            dead_lettered_at: None,
        };
        let worker = run_worker(ctx, rx, first_sink.take(), connect.clone());
        let lost = fail_tx.clone();
        let handle = tokio::spawn(async move {
            // A panic (a bug) is reported like any failure, so the partition task stops
            // on it wherever it waits, rather than find out at its next send.
            match std::panic::AssertUnwindSafe(worker).catch_unwind().await {
                Ok(ended) => ended,
                Err(panic) => {
                    let _ = lost.send(ApplyError::WorkerLost {
                        partition,
                        worker: w,
                        detail: format!("it panicked: {}", rowlog_api::panic_message(&panic)),
                    });
                    Ok(())
                }
            }
        });
        workers.push(Worker {
            tx: Some(tx),
            shared,
            sent: start,
            handle,
        });
    }

    let mut next_dispatch = start;
    let mut committed_at = committed;
    let mut last_commit = Instant::now();
    let mut commits = LogCommits {
        log: &log,
        consumer: &cfg.consumer,
        partition,
        connect: &connect,
        sink: None,
        quiet_until: None,
    };
    let read_max = cfg.batch_max_rows.clamp(64, 4096);
    // A read batch waits whole for room in the queues: its bytes are bounded too.
    let read_max_bytes = (cfg.queue_max_bytes / 2).clamp(64 << 10, 4 << 20);
    let mut failure: Option<ApplyError> = None;

    'run: loop {
        tokio::select! {
            biased;
            _ = shutdown.wait() => break 'run,
            Some(e) = fail_rx.recv() => {
                failure = Some(e);
                break 'run;
            }
            _ = notify.notified() => {}
            batch = reader.next_batch_within(read_max, read_max_bytes) => {
                let batch = match batch {
                    Ok(b) => b,
                    Err(e) if e.is_retryable() => {
                        // The reader keeps its place: the same call is made again.
                        log_retry(partition, &metrics, &e);
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        continue;
                    }
                    Err(source) => { failure = Some(ApplyError::Log { partition, source }); break 'run; }
                };
                for rec in batch {
                    let change = match rec.entry {
                        LogEntry::Change(c) => c,
                        LogEntry::Schema(change) => {
                            let step = SchemaStep {
                                partition,
                                cfg: &cfg,
                                connect: &connect,
                                barrier: &barrier,
                                metrics: &metrics,
                            };
                            match step.run(&change, &workers, &notify, &mut shutdown, &mut fail_rx).await {
                                Ok(true) => {}
                                Ok(false) => break 'run,
                                Err(e) => {
                                    failure = Some(e);
                                    break 'run;
                                }
                            }
                            next_dispatch = rec.offset + 1;
                            // Everything before the change is applied, and the change:
                            // commit past it now rather than within the second, so a
                            // restart that starts from the log's offset (a worker of
                            // its count stored no row) does not meet it again.
                            if committed_at.is_none_or(|c| next_dispatch > c) {
                                match commits.commit(next_dispatch).await {
                                    Ok(true) => committed_at = Some(next_dispatch),
                                    Ok(false) => {}
                                    Err(e) => {
                                        failure = Some(e);
                                        break 'run;
                                    }
                                }
                                last_commit = Instant::now();
                            }
                            continue;
                        }
                    };
                    next_dispatch = rec.offset + 1;
                    if cfg.floors.covers(&change.table.name, &change.source.id) {
                        // The snapshot's copy of this table already holds it.
                        continue;
                    }
                    let hash = key_hash(&change.routing_key_bytes());
                    if applied.covers(rec.offset, hash) {
                        continue;
                    }
                    let w = &mut workers[worker_of(hash, partitions, n) as usize];
                    // Set first: a change not sent after all holds the watermark below it.
                    w.sent = rec.offset + 1;
                    let bytes = change.approx_bytes();
                    let Some(tx) = w.tx.as_ref() else { break 'run };
                    let sent = match tx.try_send((rec.offset, change), bytes) {
                        Ok(()) => true,
                        Err(TrySend::Closed(_)) => false,
                        // Waiting for room (a slot, or bytes), the task still hears of
                        // a shutdown or a failure.
                        Err(TrySend::Busy(item)) => tokio::select! {
                            sent = tx.send(item, bytes) => sent.is_ok(),
                            _ = shutdown.wait() => break 'run,
                            Some(e) = fail_rx.recv() => {
                                failure = Some(e);
                                break 'run;
                            }
                        },
                    };
                    if !sent {
                        // The worker ended: shutdown during a retry, or a failure it
                        // reported.
                        if let Ok(e) = fail_rx.try_recv() {
                            failure = Some(e);
                        }
                        break 'run;
                    }
                }
            }
        }
        let mark = watermark(&workers, next_dispatch);
        metrics.set_committed(partition, mark);
        metrics.set_queue_depth(
            partition,
            workers
                .iter()
                .filter_map(|w| w.tx.as_ref())
                .map(|tx| tx.queued())
                .sum(),
        );
        if committed_at.is_none_or(|c| mark > c) && last_commit.elapsed() >= cfg.commit_interval {
            match commits.commit(mark).await {
                Ok(true) => committed_at = Some(mark),
                // Tried again after the interval.
                Ok(false) => {}
                Err(e) => {
                    failure = Some(e);
                    break 'run;
                }
            }
            last_commit = Instant::now();
        }
    }

    // Stop dispatching; workers apply what is queued (unless shutting down mid-retry) and end.
    let mut handles = Vec::new();
    for w in workers.iter_mut() {
        drop(w.tx.take());
        handles.push(std::mem::replace(
            &mut w.handle,
            tokio::spawn(async { Ok(()) }),
        ));
    }
    drop(fail_tx);
    for (i, h) in handles.into_iter().enumerate() {
        match h.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failure = failure.or(Some(e)),
            Err(e) => {
                failure = failure.or(Some(ApplyError::WorkerLost {
                    partition,
                    worker: i as u32,
                    detail: e.to_string(),
                }))
            }
        }
    }
    while let Ok(e) = fail_rx.try_recv() {
        failure = failure.or(Some(e));
    }
    let mark = watermark(&workers, next_dispatch);
    metrics.set_committed(partition, mark);
    metrics.set_queue_depth(partition, 0);
    let lease_gone = matches!(failure, Some(ApplyError::Fenced { .. }));
    if committed_at.is_none_or(|c| mark > c) && !lease_gone {
        if let Err(e) = commits.commit(mark).await {
            failure = failure.or(Some(e));
        }
    }
    debug!(partition, committed = mark, "partition stopped");
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// A partition task at a schema change: everything before it applied by this
/// partition's workers, then the barrier with the other partitions, then (for the last
/// to arrive) the change itself on the destination.
struct SchemaStep<'a, F> {
    partition: u32,
    cfg: &'a ApplyConfig,
    connect: &'a F,
    barrier: &'a SchemaBarrier,
    metrics: &'a Metrics,
}

impl<F, Fut, S> SchemaStep<'_, F>
where
    S: ChangeSink,
    F: Fn() -> Fut,
    Fut: Future<Output = Result<S, S::Error>>,
{
    /// `Ok(true)`: go on past the change; `Ok(false)`: shutdown came first.
    async fn run(
        &self,
        change: &SchemaChange,
        workers: &[Worker],
        notify: &Notify,
        shutdown: &mut Shutdown,
        failures: &mut mpsc::UnboundedReceiver<ApplyError>,
    ) -> Result<bool, ApplyError> {
        let partition = self.partition;
        let position = change.source.id.event.to_string();
        // Everything this partition dispatched before the change is applied first.
        while !workers
            .iter()
            .all(|w| w.shared.applied.load(Ordering::Acquire) >= w.sent)
        {
            tokio::select! {
                _ = shutdown.wait() => return Ok(false),
                Some(e) = failures.recv() => return Err(e),
                _ = notify.notified() => {}
            }
        }
        // Every partition decides this alike from the same floors: no barrier needed.
        if self.cfg.floors.cover_schema_change(change) {
            debug!(partition, %position, "schema change already in the snapshot's copies");
            return Ok(true);
        }
        let Some(mut sink) =
            connect_with_retry(self.connect, partition, u32::MAX, self.metrics, shutdown).await?
        else {
            return Ok(false);
        };
        // Recorded as applied (or passed under "ignore") before: read again after a
        // restart or a rewind, it is passed whatever the policy is now.
        if self.applied_already(&mut sink, change, shutdown).await? {
            debug!(partition, %position, "schema change already applied");
            return Ok(true);
        }
        if self.cfg.ddl == SchemaChangePolicy::Halt {
            return Err(ApplyError::SchemaChangeHalt {
                partition,
                position,
                statement: change.statement.clone(),
            });
        }
        let id = &change.source.id;
        let outcome = match self.barrier.arrive(id) {
            Role::Follower => {
                tokio::select! {
                    _ = shutdown.wait() => return Ok(false),
                    waited = self.barrier.wait(id) => match waited {
                        Waited::Outcome(outcome) => outcome,
                        Waited::Lead => return self.lead(sink, change, shutdown).await,
                        Waited::Halted(halted) => {
                            return Err(ApplyError::BehindHalted {
                                partition,
                                position,
                                halted,
                            })
                        }
                    },
                }
            }
            Role::Leader => return self.lead(sink, change, shutdown).await,
        };
        match outcome {
            Ok(()) => Ok(true),
            Err(leader) => Err(ApplyError::SchemaChange {
                partition,
                position,
                statement: change.statement.clone(),
                source: leader.into(),
            }),
        }
    }

    /// Every partition is at the change (or past it): apply it and tell the others.
    ///
    /// Under "ignore" the barrier still orders the change against every partition's
    /// rows (it can move a table's changes to other partitions and workers: see
    /// `ChangeEvent::routing_key_bytes`); only running it is left out, and recording it
    /// lets a restart pass it without waiting.
    async fn lead(
        &self,
        sink: S,
        change: &SchemaChange,
        shutdown: &mut Shutdown,
    ) -> Result<bool, ApplyError> {
        let (partition, position) = (self.partition, change.source.id.event.to_string());
        let outcome = self.apply(sink, change, shutdown).await;
        let shared = match &outcome {
            Ok(Some(())) => Some(Ok(())),
            // Shutdown: the followers stop on it themselves, not on a failure.
            Ok(None) => None,
            // Followers name the change themselves: pass on only the cause.
            Err(ApplyError::SchemaChange { source, .. }) => Some(Err(error_chain(source.as_ref()))),
            Err(e) => Some(Err(error_chain(e))),
        };
        if let Some(shared) = shared {
            self.barrier.finish(&change.source.id, shared);
        }
        match outcome? {
            Some(()) if self.cfg.ddl == SchemaChangePolicy::Ignore => {
                debug!(partition, %position, "schema change ignored (sink.ddl = \"ignore\")");
                Ok(true)
            }
            Some(()) => {
                info!(partition, %position, kind = change.kind.as_str(), statement = %change.statement, "schema change applied");
                Ok(true)
            }
            None => Ok(false),
        }
    }

    async fn applied_already(
        &self,
        sink: &mut S,
        change: &SchemaChange,
        shutdown: &mut Shutdown,
    ) -> Result<bool, ApplyError> {
        let calls = ProgressCalls {
            partition: self.partition,
            metrics: self.metrics,
            connect: self.connect,
        };
        let id = &change.source.id;
        let applied = calls
            .retry(sink, shutdown, "read applied schema changes", |s| {
                let id = id.clone();
                Box::pin(async move { s.schema_change_applied(&id).await })
            })
            .await?;
        // On shutdown: not known, and not to be applied now.
        Ok(applied.unwrap_or(false))
    }

    /// Applies the change, retrying transient errors; `None` on shutdown.
    async fn apply(
        &self,
        mut sink: S,
        change: &SchemaChange,
        shutdown: &mut Shutdown,
    ) -> Result<Option<()>, ApplyError> {
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
        loop {
            match sink.apply_schema_change(change, self.cfg.ddl).await {
                Ok(()) => return Ok(Some(())),
                Err(e) if e.is_retryable() => {
                    self.metrics.retry(RetryKind::Apply);
                    self.metrics.error(ErrorStage::Sink, true);
                    warn!(partition = self.partition, error = %error_chain(&e), "schema change failed; retrying");
                    tokio::select! {
                        _ = shutdown.wait() => return Ok(None),
                        _ = tokio::time::sleep(backoff.next_delay()) => {}
                    }
                    match connect_with_retry(
                        self.connect,
                        self.partition,
                        u32::MAX,
                        self.metrics,
                        shutdown,
                    )
                    .await?
                    {
                        Some(s) => sink = s,
                        None => return Ok(None),
                    }
                }
                Err(e) => {
                    return Err(ApplyError::SchemaChange {
                        partition: self.partition,
                        position: change.source.id.event.to_string(),
                        statement: change.statement.clone(),
                        source: Box::new(e),
                    })
                }
            }
        }
    }
}

fn watermark(workers: &[Worker], next_dispatch: u64) -> u64 {
    workers
        .iter()
        .map(|w| {
            let applied = w.shared.applied.load(Ordering::Acquire);
            if applied >= w.sent {
                next_dispatch
            } else {
                applied
            }
        })
        .min()
        .unwrap_or(next_dispatch)
}

/// The id of the entry just before `start` in `partition`; `None` when the partition
/// starts at its beginning, or when that entry cannot be read within a few seconds
/// (then the barrier waits for this partition at every change, as it would anyway).
async fn id_before<L: PartitionedLog>(log: &L, partition: u32, start: u64) -> Option<ChangeId> {
    let at = start.checked_sub(1)?;
    let read = async {
        let mut reader = log.reader(partition, at).await.ok()?;
        let records = reader.next_batch(1).await.ok()?;
        // The record at `at` itself: a Kafka partition can lack an offset.
        records
            .first()
            .filter(|r| r.offset == at)
            .map(|r| r.entry.source().id.clone())
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .ok()
        .flatten()
}

/// Calls the log until it answers, retrying what the log recovers from (a Kafka broker
/// away) with backoff; `None` when shutdown came first.
async fn retry_log<T, Fut>(
    partition: u32,
    metrics: &Metrics,
    shutdown: &mut Shutdown,
    mut call: impl FnMut() -> Fut,
) -> Result<Option<T>, ApplyError>
where
    Fut: Future<Output = Result<T, LogError>>,
{
    let mut pause = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    loop {
        match call().await {
            Ok(v) => return Ok(Some(v)),
            Err(e) if e.is_retryable() => {
                log_retry(partition, metrics, &e);
                tokio::select! {
                    _ = shutdown.wait() => return Ok(None),
                    _ = tokio::time::sleep(pause.next_delay()) => {}
                }
            }
            Err(source) => return Err(ApplyError::Log { partition, source }),
        }
    }
}

fn log_retry(partition: u32, metrics: &Metrics, e: &LogError) {
    metrics.retry(RetryKind::LogRead);
    metrics.error(ErrorStage::Log, true);
    warn!(partition, error = %error_chain(e), "reading the log failed; retrying");
}

/// How long a partition task waits for a destination connection of its own, for a
/// commit to the log held by the lease ([`LogCommits`]).
const HOLD_CONNECT_LIMIT: Duration = Duration::from_secs(5);
/// How long the log's commit may take while the lease's row is held: below the 10 s
/// after which the lease's own calls (its renewal waits for the row) give up.
const LOG_COMMIT_LIMIT: Duration = Duration::from_secs(5);
/// How long the whole hold (lock, commit, release) may take.
const HOLD_LIMIT: Duration = Duration::from_secs(15);
/// After a step that ran out of time, no commit is tried for this long: a log commit
/// given up is not cancelled (Kafka's runs on a thread of its own), and the dispatch
/// waits while one is tried.
const QUIET_AFTER_TIMEOUT: Duration = Duration::from_secs(30);

/// Commits a partition's watermark to the log, only while this process holds the
/// pipeline's lease ([`ChangeSink::while_fenced`], on a destination connection of the
/// partition task's own). Kafka offsets are not otherwise fenced: a holder that
/// paused past its lease, while an operator on another host moved the offsets back
/// with `rowlog offsets set`, would commit its older, higher watermark when it woke,
/// and the next start would resume past the rewind.
struct LogCommits<'a, L, F, S> {
    log: &'a L,
    consumer: &'a str,
    partition: u32,
    connect: &'a F,
    sink: Option<S>,
    /// No commit is tried before this (see [`QUIET_AFTER_TIMEOUT`]).
    quiet_until: Option<Instant>,
}

impl<L, F, Fut, S> LogCommits<'_, L, F, S>
where
    L: PartitionedLog,
    S: ChangeSink,
    F: Fn() -> Fut,
    Fut: Future<Output = Result<S, S::Error>>,
{
    /// `Err` only when the lease is gone. The destination's progress rows are the
    /// truth; a commit that fails otherwise only means more replay after a restart, so
    /// it is reported, not fatal.
    ///
    /// `Ok(true)` when committed. Each step is bounded: the lease's renewal waits for
    /// the shared lock held through the log's commit, and must not wait long (its own
    /// calls give up after 10 s); a destination away must not hold a partition's
    /// shutdown either.
    async fn commit(&mut self, next: u64) -> Result<bool, ApplyError> {
        let partition = self.partition;
        if self.quiet_until.is_some_and(|t| Instant::now() < t) {
            return Ok(false);
        }
        let (log, consumer) = (self.log, self.consumer);
        let sink = match &mut self.sink {
            Some(s) => s,
            None => match tokio::time::timeout(HOLD_CONNECT_LIMIT, (self.connect)()).await {
                Ok(Ok(s)) => self.sink.insert(s),
                Ok(Err(e)) => {
                    warn!(partition, error = %error_chain(&e), "cannot reach the destination to hold the lease while committing to the log; not committed now");
                    return Ok(false);
                }
                Err(_) => {
                    warn!(partition, "no connection to the destination within 5 s to hold the lease while committing to the log; not committed now");
                    self.quiet_until = Some(Instant::now() + QUIET_AFTER_TIMEOUT);
                    return Ok(false);
                }
            },
        };
        // Its clock starts once the lease's row is held, not while waiting for it.
        let inside = async move {
            tokio::time::timeout(LOG_COMMIT_LIMIT, log.commit(consumer, partition, next)).await
        };
        let held = tokio::time::timeout(HOLD_LIMIT, sink.while_fenced(inside)).await;
        match held {
            Ok(Ok(Ok(Ok(())))) => return Ok(true),
            Ok(Ok(Ok(Err(e)))) => {
                warn!(partition, error = %error_chain(&e), "cannot commit consumer offset to the log");
            }
            // Not cancelled where the log runs it on a thread of its own (Kafka): it
            // may still land, after the lease's row is let go.
            Ok(Ok(Err(_))) => {
                warn!(partition, "the log's commit took over 5 s; the lease's row was let go meanwhile, the commit may land later; the next is tried in 30 s");
                // Not another beside it: a commit given up is not cancelled.
                self.quiet_until = Some(Instant::now() + QUIET_AFTER_TIMEOUT);
            }
            Ok(Err(e)) if e.is_fenced() => return Err(ApplyError::partition_fenced(partition, e)),
            Ok(Err(e)) => {
                warn!(partition, error = %error_chain(&e), "cannot hold the lease while committing to the log; not known committed");
                self.sink = None;
            }
            Err(_) => {
                warn!(
                    partition,
                    "no hold on the lease within 15 s for a commit to the log; not known committed; the next is tried in 30 s"
                );
                // Its connection goes with it, and any lock it held.
                self.sink = None;
                self.quiet_until = Some(Instant::now() + QUIET_AFTER_TIMEOUT);
            }
        }
        Ok(false)
    }
}

struct WorkerCtx {
    /// The partition's byte budget, which this worker's queue and batch draw on.
    queued_bytes: Budget,
    partition: u32,
    worker: u32,
    workers: u32,
    log_id: u64,
    cfg: ApplyConfig,
    shared: Arc<WorkerShared>,
    notify: Arc<Notify>,
    stats: Arc<Stats>,
    metrics: Arc<Metrics>,
    shutdown: Shutdown,
    failures: mpsc::UnboundedSender<ApplyError>,
    /// The offset of the last change this worker wrote to the dead-letter file: a
    /// retry after its progress write failed does not write its line again.
    dead_lettered_at: Option<u64>,
}

impl WorkerCtx {
    /// The error that stops the pipeline when the sink says this process lost it.
    fn fenced(&self, e: impl std::error::Error + Send + Sync + 'static) -> ApplyError {
        ApplyError::Fenced {
            partition: self.partition,
            worker: Some(self.worker),
            source: Box::new(e),
        }
    }

    /// Counts the error and keeps it, with the batch's first change and offsets, as the
    /// last error `/status` shows.
    fn record_error(
        &self,
        e: &dyn std::error::Error,
        retryable: bool,
        batch: &[ChangeEvent],
        offsets: (u64, u64),
    ) {
        self.metrics.error(ErrorStage::Sink, retryable);
        self.metrics.state.record_error(
            ErrorReport::new(ErrorStage::Sink.as_str(), retryable, error_chain(e)).at_batch(
                self.partition,
                self.worker,
                batch.first(),
                offsets,
            ),
        );
    }
}

/// Calls on a partition's progress rows (at its start, at a schema change), retried
/// on a fresh connection while the error is retryable: a mysql_async connection that
/// failed stays failed.
struct ProgressCalls<'a, F> {
    partition: u32,
    metrics: &'a Metrics,
    connect: &'a F,
}

impl<F> ProgressCalls<'_, F> {
    /// Calls `call` until it answers; `Ok(None)` on shutdown. `what` names it in logs.
    async fn retry<S, Fut, T>(
        &self,
        sink: &mut S,
        shutdown: &mut Shutdown,
        what: &str,
        mut call: impl for<'s> FnMut(
            &'s mut S,
        )
            -> Pin<Box<dyn Future<Output = Result<T, S::Error>> + Send + 's>>,
    ) -> Result<Option<T>, ApplyError>
    where
        S: ChangeSink,
        F: Fn() -> Fut,
        Fut: Future<Output = Result<S, S::Error>>,
    {
        let partition = self.partition;
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
        loop {
            match call(sink).await {
                Ok(t) => return Ok(Some(t)),
                Err(e) if e.is_retryable() => {
                    self.metrics.retry(RetryKind::Progress);
                    self.metrics.error(ErrorStage::Sink, true);
                    warn!(partition, error = %error_chain(&e), "cannot {what}; retrying");
                    tokio::select! { _ = shutdown.wait() => return Ok(None), _ = tokio::time::sleep(backoff.next_delay()) => {} }
                    match connect_with_retry(
                        self.connect,
                        partition,
                        u32::MAX,
                        self.metrics,
                        shutdown,
                    )
                    .await?
                    {
                        Some(fresh) => *sink = fresh,
                        None => return Ok(None),
                    }
                }
                Err(e) if e.is_fenced() => return Err(ApplyError::partition_fenced(partition, e)),
                Err(e) => {
                    return Err(ApplyError::Progress {
                        partition,
                        source: Box::new(e),
                    })
                }
            }
        }
    }
}

/// Connects, retrying what may pass (the destination down or restarting, too many
/// connections); `Ok(None)` on shutdown. What only the operator can fix (access
/// denied, an unknown database: see the sink's `Retry`) ends it with an error.
async fn connect_with_retry<S, F, Fut>(
    connect: &F,
    partition: u32,
    worker: u32,
    metrics: &Metrics,
    shutdown: &mut Shutdown,
) -> Result<Option<S>, ApplyError>
where
    S: ChangeSink,
    F: Fn() -> Fut,
    Fut: Future<Output = Result<S, S::Error>>,
{
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    loop {
        match connect().await {
            Ok(s) => return Ok(Some(s)),
            Err(e) => {
                let retryable = e.is_retryable();
                metrics.error(ErrorStage::Sink, retryable);
                let mut report =
                    ErrorReport::new(ErrorStage::Sink.as_str(), retryable, error_chain(&e));
                report.partition = Some(partition);
                metrics.state.record_error(report);
                if !retryable {
                    return Err(ApplyError::Connect {
                        partition,
                        source: Box::new(e),
                    });
                }
                metrics.retry(RetryKind::Connect);
                let delay = backoff.next_delay();
                warn!(partition, worker, error = %error_chain(&e), retry_in_ms = delay.as_millis() as u64, "cannot connect to the destination; retrying");
                tokio::select! { _ = shutdown.wait() => return Ok(None), _ = tokio::time::sleep(delay) => {} }
            }
        }
    }
}

/// The last log offset this worker's progress row says is applied, read after a
/// retryable error. Changes through it are committed on the destination, and only
/// this worker writes its row; in this run it applies only changes past the row's
/// value at start (changes at or below it are skipped as applied), so a stored offset
/// inside the batch means the batch, or the one-by-one pass through it, committed up
/// to there.
async fn committed_through<S: ChangeSink>(
    sink: &mut S,
    ctx: &WorkerCtx,
) -> Result<Option<u64>, S::Error> {
    Ok(sink
        .load_progress(ctx.partition)
        .await?
        .iter()
        .find(|p| p.log_id == ctx.log_id && p.worker == ctx.worker && p.workers == ctx.workers)
        .map(|p| p.offset))
}

/// What re-applying a rejected batch one change at a time found.
enum Isolated<E> {
    /// The change at `index` is rejected on its own; every change before it is applied.
    Change {
        index: usize,
        error: E,
    },
    /// Every change is applied, or rejected and written to the dead-letter file.
    Done {
        dead_lettered: usize,
    },
    /// A transient error interrupted the one-by-one pass at change `done`: the ones
    /// before it are committed (each with its progress) and are not applied again,
    /// since for a table without a key (`no_pk = "full_row"`) a second INSERT is a
    /// second row.
    Transient {
        error: E,
        done: usize,
    },
    /// The pipeline must stop: the destination refuses connections for good, or this
    /// process lost the pipeline ([`Retry::is_fenced`]).
    Stop(ApplyError),
    Shutdown,
}

/// After a definite error on a batch, applies its changes one by one, each with its own
/// progress row, to find the change the destination rejects. With a dead-letter file,
/// a rejected change is written there, its offset recorded as passed, and the pass
/// goes on; without one, the pass stops at it.
async fn isolate<S, F, Fut>(
    ctx: &mut WorkerCtx,
    connect: &F,
    batch: &[ChangeEvent],
    offsets: &[u64],
) -> Isolated<S::Error>
where
    S: ChangeSink,
    F: Fn() -> Fut,
    Fut: Future<Output = Result<S, S::Error>>,
{
    // The failed transaction's connection may be unusable; start from a fresh one.
    let mut sink = match connect_with_retry(
        connect,
        ctx.partition,
        ctx.worker,
        &ctx.metrics,
        &mut ctx.shutdown,
    )
    .await
    {
        Ok(Some(s)) => s,
        Ok(None) => return Isolated::Shutdown,
        Err(e) => return Isolated::Stop(e),
    };
    let mut dead_lettered = 0;
    for (index, (change, &offset)) in batch.iter().zip(offsets).enumerate() {
        let one = std::slice::from_ref(change);
        let progress = WorkerProgress {
            log_id: ctx.log_id,
            partition: ctx.partition,
            worker: ctx.worker,
            workers: ctx.workers,
            offset,
        };
        let began = Instant::now();
        match sink
            .apply(ApplyBatch {
                changes: one,
                progress,
            })
            .await
        {
            Ok(()) => {
                ctx.metrics.applied(ctx.partition, one, began.elapsed());
                Stats::add(&ctx.stats.applied, 1);
            }
            Err(error) if error.is_fenced() => return Isolated::Stop(ctx.fenced(error)),
            Err(error) if error.is_retryable() => {
                return Isolated::Transient { error, done: index }
            }
            Err(error) => {
                let Some(dl) = ctx.cfg.dead_letter.clone() else {
                    return Isolated::Change { index, error };
                };
                let text = error_chain(&error);
                if ctx.dead_lettered_at != Some(offset) {
                    let (partition, rejected, why) = (ctx.partition, change.clone(), text.clone());
                    let dl_task = dl.clone();
                    let written = tokio::task::spawn_blocking(move || {
                        dl_task.write(partition, offset, &rejected, &why)
                    })
                    .await
                    .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())));
                    if let Err(io) = written {
                        warn!(partition = ctx.partition, file = %dl.path.display(), error = %io, "cannot write the dead-letter file");
                        return Isolated::Change { index, error };
                    }
                    ctx.dead_lettered_at = Some(offset);
                }
                // Record the offset as passed (no data), so a restart does not retry it.
                if let Err(e) = sink
                    .apply(ApplyBatch {
                        changes: &[],
                        progress,
                    })
                    .await
                {
                    return if e.is_fenced() {
                        Isolated::Stop(ctx.fenced(e))
                    } else if e.is_retryable() {
                        Isolated::Transient {
                            error: e,
                            done: index,
                        }
                    } else {
                        Isolated::Change { index, error: e }
                    };
                }
                warn!(partition = ctx.partition, offset, table = %change.table.name, error = %text,
                      "change rejected by the destination written to the dead-letter file");
                Stats::add(&ctx.stats.dead_lettered, 1);
                dead_lettered += 1;
            }
        }
        ctx.shared.applied.store(offset + 1, Ordering::Release);
    }
    Isolated::Done { dead_lettered }
}

async fn run_worker<S, F, Fut>(
    mut ctx: WorkerCtx,
    mut rx: budget::Receiver<(u64, ChangeEvent)>,
    sink: Option<S>,
    connect: F,
) -> Result<(), ApplyError>
where
    S: ChangeSink,
    F: Fn() -> Fut,
    Fut: Future<Output = Result<S, S::Error>>,
{
    let mut sink = sink;
    let mut batch: Vec<ChangeEvent> = Vec::with_capacity(ctx.cfg.batch_max_rows);
    let mut offsets: Vec<u64> = Vec::with_capacity(ctx.cfg.batch_max_rows);
    loop {
        let Some(((mut last, first), mut held)) = rx.recv().await else {
            return Ok(());
        };
        let first_offset = last;
        let mut bytes = first.approx_bytes();
        batch.push(first);
        offsets.push(last);
        let deadline = tokio::time::Instant::now() + ctx.cfg.batch_max_wait;
        while batch.len() < ctx.cfg.batch_max_rows && bytes < ctx.cfg.batch_max_bytes {
            let next = match rx.try_recv() {
                Ok(item) => Some(item),
                Err(mpsc::error::TryRecvError::Disconnected) => None,
                Err(mpsc::error::TryRecvError::Empty) => {
                    tokio::select! {
                        biased;
                        got = timeout_at(deadline, rx.recv()) => got.ok().flatten(),
                        // The partition waits for bytes this batch may hold: applying
                        // it now frees them, rather than at the deadline.
                        _ = ctx.queued_bytes.starved() => None,
                    }
                }
            };
            match next {
                Some(((offset, change), charge)) => {
                    last = offset;
                    bytes += change.approx_bytes();
                    held.merge(charge);
                    batch.push(change);
                    offsets.push(offset);
                }
                None => break,
            }
        }
        let progress = WorkerProgress {
            log_id: ctx.log_id,
            partition: ctx.partition,
            worker: ctx.worker,
            workers: ctx.workers,
            offset: last,
        };
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
        let mut counted = false;
        // After a retryable error, whether part of the batch committed is unknown: a
        // connection lost during COMMIT may have committed it. The worker's progress
        // row, written in the same transaction, says.
        let mut unsure = false;
        loop {
            let s = match sink.as_mut() {
                Some(s) => s,
                None => {
                    match connect_with_retry(
                        &connect,
                        ctx.partition,
                        ctx.worker,
                        &ctx.metrics,
                        &mut ctx.shutdown,
                    )
                    .await
                    {
                        Ok(Some(s)) => sink.insert(s),
                        Ok(None) => return Ok(()),
                        Err(e) => {
                            let _ = ctx.failures.send(e);
                            return Ok(());
                        }
                    }
                }
            };
            if unsure {
                match committed_through(s, &ctx).await {
                    Ok(stored) => {
                        let done = stored.map_or(0, |o| offsets.partition_point(|&x| x <= o));
                        if done > 0 {
                            info!(partition = ctx.partition, worker = ctx.worker, changes = done, through = offsets[done - 1],
                                  "the destination had committed these changes before the error; not applying them again");
                            ctx.metrics
                                .applied(ctx.partition, &batch[..done], Duration::ZERO);
                            Stats::add(&ctx.stats.applied, done as u64);
                            batch.drain(..done);
                            offsets.drain(..done);
                        }
                        if batch.is_empty() {
                            break;
                        }
                    }
                    Err(e) if e.is_retryable() => {
                        ctx.metrics.retry(RetryKind::Progress);
                        ctx.record_error(&e, true, &batch, (first_offset, last));
                        let delay = backoff.next_delay();
                        warn!(partition = ctx.partition, worker = ctx.worker, error = %error_chain(&e),
                              retry_in_ms = delay.as_millis() as u64, "cannot read progress after a failed apply; retrying");
                        sink = None;
                        tokio::select! {
                            _ = ctx.shutdown.wait() => return Ok(()),
                            _ = tokio::time::sleep(delay) => {}
                        }
                        continue;
                    }
                    Err(e) => {
                        let _ = ctx.failures.send(ApplyError::Progress {
                            partition: ctx.partition,
                            source: Box::new(e),
                        });
                        return Ok(());
                    }
                }
            }
            let began = Instant::now();
            match s
                .apply(ApplyBatch {
                    changes: &batch,
                    progress,
                })
                .await
            {
                Ok(()) => {
                    ctx.metrics.applied(ctx.partition, &batch, began.elapsed());
                    Stats::add(&ctx.stats.batches, 1);
                    break;
                }
                Err(e) if e.is_fenced() => {
                    let _ = ctx.failures.send(ctx.fenced(e));
                    return Ok(());
                }
                Err(e) if e.is_retryable() => {
                    Stats::add(&ctx.stats.apply_retries, 1);
                    ctx.metrics.retry(RetryKind::Apply);
                    ctx.record_error(&e, true, &batch, (first_offset, last));
                    let delay = backoff.next_delay();
                    warn!(partition = ctx.partition, worker = ctx.worker, error = %error_chain(&e), attempt = backoff.attempts(),
                          retry_in_ms = delay.as_millis() as u64, "apply failed; retrying");
                    unsure = true;
                    // Reconnect: the connection may be gone. Whether the batch
                    // committed is checked first (`unsure`).
                    sink = None;
                    tokio::select! {
                        _ = ctx.shutdown.wait() => return Ok(()),
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
                Err(e) => {
                    // The destination rejected the batch; find the change it rejects so
                    // the report names its table, key and position, not just the batch's.
                    sink = None;
                    match isolate(&mut ctx, &connect, &batch, &offsets).await {
                        Isolated::Shutdown => return Ok(()),
                        Isolated::Stop(e) => {
                            let _ = ctx.failures.send(e);
                            return Ok(());
                        }
                        Isolated::Done { dead_lettered } => {
                            if dead_lettered == 0 {
                                warn!(partition = ctx.partition, worker = ctx.worker, error = %error_chain(&e), rows = batch.len(),
                                      "the destination rejected a batch but accepted each of its changes alone; continuing");
                            }
                            counted = true;
                            break;
                        }
                        Isolated::Transient { error: t, done } => {
                            // What the pass committed stays committed: the retry takes
                            // the rest of the batch.
                            // (The pass counted those as applied; the rest are
                            // counted when the retry applies them.)
                            batch.drain(..done);
                            offsets.drain(..done);
                            Stats::add(&ctx.stats.apply_retries, 1);
                            ctx.metrics.retry(RetryKind::Apply);
                            ctx.record_error(&t, true, &batch, (first_offset, last));
                            let delay = backoff.next_delay();
                            warn!(partition = ctx.partition, worker = ctx.worker, error = %error_chain(&t),
                                  retry_in_ms = delay.as_millis() as u64, "apply failed while isolating a rejected change; retrying");
                            unsure = true;
                            tokio::select! {
                                _ = ctx.shutdown.wait() => return Ok(()),
                                _ = tokio::time::sleep(delay) => {}
                            }
                        }
                        Isolated::Change { index, error } => {
                            let range = (offsets[index], offsets[index]);
                            ctx.record_error(&error, false, &batch[index..], range);
                            let _ = ctx.failures.send(ApplyError::Sink {
                                partition: ctx.partition,
                                worker: ctx.worker,
                                source: Box::new(error),
                            });
                            return Ok(());
                        }
                    }
                }
            }
        }
        if !counted {
            Stats::add(&ctx.stats.applied, batch.len() as u64);
        }
        batch.clear();
        offsets.clear();
        // Applied: the bytes leave memory, the partition may queue more.
        drop(held);
        ctx.shared.applied.store(last + 1, Ordering::Release);
        ctx.notify.notify_one();
    }
}
