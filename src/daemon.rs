//! `rowlog run`: wires source → log → sink and owns every task until shutdown.
//!
//! Start-up checks both servers once and fails fast on what will not fix itself (bad
//! credentials, a non-ROW binlog, an unreachable host at start). Once running,
//! transient faults are retried inside the stages; a definite error stops the whole
//! pipeline loudly. On shutdown the source stops, what was read is appended and
//! checkpointed, the workers apply what is queued, and offsets are committed.
//!
//! It also owns the observability side: one [`Metrics`] shared by every stage, a
//! sampler that recomputes derived values (lags, stall state, process figures) every
//! second, and the operations HTTP port. A stage that stops on an error sets
//! `rowlog_pipeline_halted` and leaves the error in `/status` before the pipeline
//! drains, so the failure is visible to whoever scrapes, not only in the log.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rowlog_api::Retry;
use rowlog_mysql_binlog::{preflight, BinlogReader, SourceError};
use rowlog_mysql_sink::lease::{self, LeaseError};
use rowlog_mysql_sink::{MySqlSink, SinkError};
use tokio::task::JoinSet;
use tracing::{error, info, warn};

use crate::config::Config;
use crate::config::LogBackend;
use crate::http::{HttpError, OpsServer};
use crate::log::{EmbeddedLog, KafkaLog, LogError, PartitionedLog};
use crate::metrics::{ErrorStage, Metrics};
use crate::pipeline::apply::{self, ApplyError};
use crate::pipeline::ingest::{self, IngestError};
use crate::pipeline::Stats;
pub use crate::report::error_chain;
use crate::shutdown::{self, Shutdown, ShutdownTrigger};
use crate::status::{ErrorReport, LeaseStatus};

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("cannot open the log")]
    Log(#[from] LogError),
    #[error("source check failed")]
    Source(#[from] SourceError),
    #[error("destination check failed")]
    Destination(#[from] SinkError),
    #[error(transparent)]
    Ingest(#[from] IngestError),
    #[error(transparent)]
    Apply(#[from] ApplyError),
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("a pipeline task panicked: {0}")]
    Panic(String),
    #[error(transparent)]
    Http(#[from] HttpError),
    #[error(transparent)]
    Snapshot(#[from] crate::snapshot::SnapshotError),
    #[error(transparent)]
    Lease(#[from] LeaseError),
}

/// Runs the pipeline until `external` fires or a stage fails definitely.
pub async fn run(cfg: Config, external: Shutdown) -> Result<Arc<Stats>, DaemonError> {
    let metrics = Arc::new(Metrics::new(
        cfg.log.partitions,
        Duration::from_secs(cfg.http.stall_after_secs),
    ));
    run_with(cfg, external, metrics, Arc::new(Stats::default())).await
}

/// [`run`] with metrics the caller keeps, to read them after the pipeline stopped (a
/// halted pipeline's error and counters). `metrics` must be made for
/// `cfg.log.partitions` partitions, the only count the log opens with.
pub async fn run_with_metrics(
    cfg: Config,
    external: Shutdown,
    metrics: Arc<Metrics>,
) -> Result<Arc<Stats>, DaemonError> {
    run_with(cfg, external, metrics, Arc::new(Stats::default())).await
}

/// [`run`], updating counters the caller can watch while it runs.
pub async fn run_with_stats(
    cfg: Config,
    external: Shutdown,
    stats: Arc<Stats>,
) -> Result<Arc<Stats>, DaemonError> {
    let metrics = Arc::new(Metrics::new(
        cfg.log.partitions,
        Duration::from_secs(cfg.http.stall_after_secs),
    ));
    run_with(cfg, external, metrics, stats).await
}

async fn run_with(
    cfg: Config,
    external: Shutdown,
    metrics: Arc<Metrics>,
    stats: Arc<Stats>,
) -> Result<Arc<Stats>, DaemonError> {
    match cfg.log.backend {
        LogBackend::Embedded => {
            let (dir, p, seg, fsync) = (
                cfg.log.dir.clone(),
                cfg.log.partitions,
                cfg.log.segment_bytes,
                cfg.log.fsync_policy(),
            );
            let log =
                tokio::task::spawn_blocking(move || EmbeddedLog::open_with(&dir, p, seg, fsync))
                    .await
                    .map_err(|e| DaemonError::Panic(e.to_string()))??;
            info!(dir = %cfg.log.dir.display(), partitions = log.partitions(), "log opened");
            run_restarting(log.clone(), Some(log), cfg, external, metrics, stats).await
        }
        LogBackend::Kafka => {
            // The local state (snapshot progress, re-snapshot requests) stays in log.dir,
            // which one daemon at a time owns.
            let _lock = EmbeddedLog::lock(&cfg.log.dir)?;
            let settings = cfg.kafka.clone().ok_or_else(|| {
                DaemonError::Config("log.backend is \"kafka\" but [kafka] is missing".into())
            })?;
            let log = KafkaLog::open(&settings, &cfg.name, cfg.log.partitions).await?;
            run_restarting(log, None, cfg, external, metrics, stats).await
        }
    }
}

/// [`run_on`], started again in this process when the pipeline's lease lapsed: the
/// destination was out of reach for the lease's lifetime (a restart, a network fault),
/// or this process paused. Every stage stopped when the lease lapsed, so nothing ran
/// unfenced while another process could have taken it. Then the run is started again,
/// with backoff, until it takes the lease back (only if no other process held it
/// meanwhile: otherwise it is lost and `rowlog run` fails, naming who holds it) and
/// goes on from its stored positions, as after a restart of the process. The ops port
/// is served across restarts, until the process stops.
async fn run_restarting<L: PartitionedLog + Clone>(
    log: L,
    embedded: Option<EmbeddedLog>,
    cfg: Config,
    mut external: Shutdown,
    metrics: Arc<Metrics>,
    stats: Arc<Stats>,
) -> Result<Arc<Stats>, DaemonError> {
    let (http_stop, http_shutdown) = shutdown::channel();
    let mut http = None;
    let mut restarting = false;
    let mut pause = restart_backoff();
    let result = loop {
        let pipeline = Pipeline {
            log: log.clone(),
            embedded: embedded.clone(),
            cfg: cfg.clone(),
            metrics: metrics.clone(),
            stats: stats.clone(),
        };
        let ops = Ops {
            server: &mut http,
            shutdown: &http_shutdown,
        };
        let began = Instant::now();
        let run = run_on(pipeline, external.clone(), ops, restarting).await;
        let lapsed = matches!(&run, Err(e) if lease_lapsed(e));
        // Starting again failed on something that may pass: the source or the
        // destination does not answer yet.
        let not_yet = restarting && matches!(&run, Err(e) if start_may_pass(e));
        match run {
            // Stopped by SIGTERM meanwhile: the lapse is no failure of the run.
            Err(_) if (lapsed || not_yet) && external.is_triggered() => break Ok(stats.clone()),
            Err(e) if lapsed => {
                warn!(error = %error_chain(&e), "every stage stopped; the pipeline starts again from its stored positions once the destination answers, if no other process took its lease");
                // A run that held the lease for its lifetime starts the backoff over;
                // one that lapsed again at once (a fence check failing for good)
                // backs off further.
                if began.elapsed() >= cfg.sink.lease_ttl() {
                    pause = restart_backoff();
                }
            }
            Err(e) if not_yet => {
                warn!(error = %error_chain(&e), "the pipeline cannot start again yet");
            }
            other => break other,
        }
        restarting = true;
        tokio::select! {
            _ = external.wait() => break Ok(stats.clone()),
            _ = tokio::time::sleep(pause.next_delay()) => {}
        }
    };
    if restarting {
        // Ended after a lapse: the lease may still name this process (abandoned by the
        // lapsed run, or taken back as SIGTERM came); another process need not wait
        // for it to run out.
        lease::release_if_held(&cfg.sink, &cfg.name).await;
    }
    http_stop.trigger();
    stop_http(http).await;
    result
}

/// Between attempts to start the pipeline again after a lapsed lease.
fn restart_backoff() -> crate::pipeline::backoff::Backoff {
    crate::pipeline::backoff::Backoff::new(Duration::from_secs(1), Duration::from_secs(30))
}

/// What one run of the pipeline works with. `embedded` is the same log when it is the
/// embedded one: retention and fsync figures exist only there (Kafka retains and
/// syncs by itself).
struct Pipeline<L> {
    log: L,
    embedded: Option<EmbeddedLog>,
    cfg: Config,
    metrics: Arc<Metrics>,
    stats: Arc<Stats>,
}

/// The ops port, bound by the first run and served until the process stops.
struct Ops<'a> {
    server: &'a mut Option<tokio::task::JoinHandle<Result<(), HttpError>>>,
    shutdown: &'a Shutdown,
}

/// Whether a run that starts again after a lapsed lease failed, before taking the
/// lease back, on something that may pass by itself.
fn start_may_pass(e: &DaemonError) -> bool {
    match e {
        DaemonError::Source(e) => e.is_retryable(),
        DaemonError::Destination(e) => e.is_retryable(),
        DaemonError::Lease(LeaseError::Destination(e)) => e.is_retryable(),
        _ => false,
    }
}

/// What `rowlog run` logs when it starts the pipeline again after its lease lapsed
/// (`rowlog chaos` counts these lines).
pub const RESTARTED: &str = "the pipeline's lease is this process's again; starting again";

/// Whether the run stopped because its lease lapsed, or a batch found it gone (whether
/// another process took it, `lease::take_back` finds out).
fn lease_lapsed(e: &DaemonError) -> bool {
    matches!(
        e,
        DaemonError::Lease(LeaseError::Lapsed { .. })
            | DaemonError::Apply(ApplyError::Fenced { .. })
    )
}

/// The pipeline on an opened log. `restarting`: the run after a lapsed lease, which
/// takes the lease back instead of taking it (see [`run_restarting`]).
async fn run_on<L: PartitionedLog + Clone>(
    pipeline: Pipeline<L>,
    mut external: Shutdown,
    ops: Ops<'_>,
    restarting: bool,
) -> Result<Arc<Stats>, DaemonError> {
    let Pipeline {
        log,
        embedded,
        cfg,
        metrics,
        stats,
    } = pipeline;
    for p in 0..log.partitions() {
        metrics.set_log_end(p, log.end_offset(p));
    }
    // Until a partition's task starts (after the checks, the lease, any snapshot), the
    // log's stored commit stands for where the sink is: left at 0, every restart
    // showed the whole log as the sink's lag. Best effort, all partitions at once
    // within 2 s, and a stop is not held up by it: each task reads its commit again,
    // retrying, and sets the exact start.
    let consumer = cfg.apply().consumer;
    let (log_ref, consumer) = (&log, consumer.as_str());
    let stored = futures_util::future::join_all(
        (0..log.partitions()).map(|p| async move { (p, log_ref.committed(consumer, p).await) }),
    );
    tokio::select! {
        read = tokio::time::timeout(Duration::from_secs(2), stored) => {
            for (p, committed) in read.unwrap_or_default() {
                if let Ok(Some(committed)) = committed {
                    metrics.set_committed(p, committed.min(log.end_offset(p)));
                }
            }
        }
        _ = external.wait() => return Ok(stats),
    }

    // Raced with SIGTERM: after a lapsed lease these checks may wait on a destination
    // that drops packets, for as long as the system's TCP time-outs.
    let checks = async {
        let settings = preflight(&cfg.source).await?;
        info!(server = %settings.version, "source checked");
        let mut sink = MySqlSink::connect(&cfg.sink, &cfg.name).await?;
        sink.ensure_progress_table().await?;
        info!("destination checked");
        Ok::<_, DaemonError>(())
    };
    tokio::select! {
        checked = checks => checked?,
        _ = external.wait() => return Ok(stats),
    }
    // Bound after the checks: a port in use is reported, but not before the more
    // fundamental problems a first run usually has.
    // Bound by the first run only: later runs (after a lapsed lease) keep serving it.
    if ops.server.is_none() && cfg.http.enabled {
        let server = OpsServer::bind(&cfg.http.listen, metrics.clone(), cfg.name.clone()).await?;
        if let Some(addr) = server.local_addr() {
            info!(%addr, "serving /metrics, /healthz, /readyz, /status");
        }
        *ops.server = Some(tokio::spawn(server.serve(ops.shutdown.clone())));
    }

    let (trigger, shutdown) = shutdown::channel();

    // One process at a time moves this pipeline's positions (see the lease module).
    // A holder on another host that stopped without releasing it is waited for until
    // its lease runs out; one that renews it keeps this daemon from starting. The ops
    // port answers meanwhile: /status names the holder, /readyz says why not ready.
    // A run after a lapsed lease takes it back only if no other process held it.
    let wait = cfg.sink.lease_ttl() + Duration::from_secs(5);
    let waiting = |holder: &lease::Holder, remaining: Duration| {
        metrics.state.set_lease(LeaseStatus::Waiting {
            holder: holder.to_string(),
            remaining_secs: remaining.as_secs(),
        })
    };
    let taken = tokio::select! {
        taken = async {
            if restarting {
                lease::take_back(&cfg.sink, &cfg.name, "rowlog run").await
            } else {
                lease::acquire(&cfg.sink, &cfg.name, "rowlog run", wait, waiting).await
            }
        } => taken?,
        // Stopped while waiting: a clean stop, nothing ran.
        _ = external.wait() => return Ok(stats),
    };
    // Renewed from here on, before anything else runs.
    let mut lease = lease::keep(taken);
    metrics.state.set_lease(LeaseStatus::Held);
    if restarting {
        info!("{RESTARTED}");
        metrics.restarted();
        Stats::add(&stats.restarts, 1);
    }

    // The run's first error, what `rowlog run` exits with.
    let mut first_error = None;
    // A snapshot stops at its next chunk once shut down; a read that hangs on a source
    // gone silent would hold it until the process's shutdown time-out, which exits
    // without releasing the lease. So a third of that time after the signal the copy
    // is dropped where it is: the chunk under way is rolled back with its connection
    // and copied again on the next start, after the last chunk the state file holds.
    let mut stopping = external.clone();
    let grace = Duration::from_secs(cfg.shutdown_timeout_secs) / 3;
    // A snapshot, when one is due, runs to its end before streaming starts (see
    // crate::snapshot for why that keeps the hand-off exact).
    let snapshot = tokio::select! {
        done = async {
            // Another daemon of this pipeline may have appended to a shared log (a
            // broker's topic) while this one waited for the lease.
            log.reload().await?;
            for p in 0..log.partitions() {
                metrics.set_log_end(p, log.end_offset(p));
            }
            crate::snapshot::before_streaming(&cfg, &log, &metrics, &external)
                .await
                .map_err(DaemonError::Snapshot)
        } => done,
        lost = lease.lost() => Err(DaemonError::Lease(lost)),
        _ = async {
            stopping.wait().await;
            tokio::time::sleep(grace).await;
        } => {
            warn!(grace_secs = grace.as_secs_f64(), "the snapshot did not stop within its grace after the shutdown signal; dropped where it was (it resumes after its last saved chunk)");
            Ok(None)
        }
    };
    let floors = match snapshot {
        Ok(Some(floors)) => floors,
        // Stopped during the snapshot, or it failed: nothing streamed yet.
        other => {
            if let Err(e) = other {
                stop_on(e, &metrics, &mut first_error, &trigger);
            }
            trigger.trigger();
            return finish(lease, first_error, &metrics, &trigger)
                .await
                .map_or(Ok(stats), Err);
        }
    };
    let mut apply_cfg = cfg.apply();
    apply_cfg.floors = floors;

    let mut tasks: JoinSet<Result<(), DaemonError>> = JoinSet::new();

    {
        let full_cfg = cfg.clone();
        let (log, stats, metrics, shutdown, source_cfg, ingest_cfg) = (
            log.clone(),
            stats.clone(),
            metrics.clone(),
            shutdown.clone(),
            cfg.source.clone(),
            cfg.ingest(),
        );
        tasks.spawn(async move {
            let mut pause = crate::pipeline::backoff::Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
            loop {
                let source_cfg = source_cfg.clone();
                let connect = move |resume| {
                    let c = source_cfg.clone();
                    async move { BinlogReader::connect(&c, resume).await }
                };
                // Re-snapshots requested by `rowlog snapshot --tables` while this runs.
                let resnapshot = crate::resnapshot::Resnapshot::new(&full_cfg, metrics.clone());
                let result = ingest::run(log.clone(), connect, ingest_cfg.clone(), stats.clone(), metrics.clone(), shutdown.clone(), Some(resnapshot)).await;
                match result {
                    // A full disk: appends were rolled back; restart from the checkpoint once space returns.
                    Err(IngestError::Log(e)) if e.is_retryable() && !shutdown.is_triggered() => {
                        let delay = pause.next_delay();
                        warn!(error = %error_chain(&e), retry_in_ms = delay.as_millis() as u64, "log append failed; ingest pauses and resumes from the checkpoint");
                        metrics.error(ErrorStage::Log, true);
                        metrics.state.record_error(ErrorReport::new(ErrorStage::Log.as_str(), true, error_chain(&e)));
                        metrics.set_paused(true);
                        let mut s = shutdown.clone();
                        tokio::select! { _ = s.wait() => return Ok(()), _ = tokio::time::sleep(delay) => {} }
                        // A partition the sink halted meanwhile stays halted: the gauge
                        // is derived from both causes.
                        metrics.set_paused(false);
                    }
                    other => return other.map_err(DaemonError::from),
                }
            }
        });
    }
    let barrier = crate::pipeline::schema_barrier::SchemaBarrier::new(log.partitions());
    // The lease is held now: every batch commits only while it still is.
    let fence = lease::fence(&cfg.sink, &cfg.name);
    for p in 0..log.partitions() {
        let (sink_cfg, name, fence) = (cfg.sink.clone(), cfg.name.clone(), fence.clone());
        let connect = move || {
            let (c, n, f) = (sink_cfg.clone(), name.clone(), fence.clone());
            async move { MySqlSink::connect(&c, &n).await.map(|s| s.fenced_by(f)) }
        };
        let fut = apply::run_partition(
            log.clone(),
            p,
            apply_cfg.clone(),
            connect,
            barrier.clone(),
            stats.clone(),
            metrics.clone(),
            shutdown.clone(),
        );
        tasks.spawn(async move { fut.await.map_err(DaemonError::from) });
    }
    let reporter = tokio::spawn(report(stats.clone(), shutdown.clone()));
    let retention = embedded
        .clone()
        .map(|log| tokio::spawn(retain(log, cfg.log.retention.clone(), shutdown.clone())));
    let sampler = tokio::spawn(sample(
        metrics.clone(),
        embedded,
        cfg.log.dir.clone(),
        shutdown.clone(),
    ));

    loop {
        tokio::select! {
            _ = external.wait(), if !shutdown.is_triggered() => {
                info!("shutdown requested; draining");
                trigger.trigger();
            }
            lost = lease.lost(), if !shutdown.is_triggered() => {
                stop_on(DaemonError::Lease(lost), &metrics, &mut first_error, &trigger);
            }
            done = tasks.join_next() => match done {
                None => break,
                Some(Ok(Ok(()))) => {
                    if !shutdown.is_triggered() {
                        trigger.trigger();
                    }
                }
                Some(Ok(Err(DaemonError::Apply(
                    e @ (ApplyError::Sink { .. } | ApplyError::BehindHalted { .. }),
                )))) => {
                    // The destination rejects a change for good: this partition stops
                    // (its committed offset stays before the change), the others go on
                    // until a schema change, which must wait for every partition.
                    let partition = match &e {
                        ApplyError::Sink { partition, .. }
                        | ApplyError::BehindHalted { partition, .. } => *partition,
                        _ => u32::MAX,
                    };
                    barrier.halt(partition);
                    let text = error_chain(&e);
                    error!(partition, error = %text, "partition halted; fix the destination and restart rowlog");
                    stats.halt(partition, text);
                    let e = DaemonError::Apply(e);
                    note_halt(&metrics, &e);
                    first_error.get_or_insert(e);
                }
                Some(Ok(Err(e))) => stop_on(e, &metrics, &mut first_error, &trigger),
                Some(Err(join)) => {
                    stop_on(DaemonError::Panic(join.to_string()), &metrics, &mut first_error, &trigger)
                }
            }
        }
    }
    reporter.abort();
    if let Some(retention) = retention {
        retention.abort();
    }
    let _ = sampler.await;
    // Released only once every stage has drained: a tool must not move positions
    // the sink is still committing.
    let first_error = finish(lease, first_error, &metrics, &trigger).await;
    log_progress(&stats);
    match first_error {
        Some(e) => Err(e),
        None => Ok(stats),
    }
}

/// Ends the run's hold on the lease and returns the run's error: a loss found while
/// the stages drained is one too. After a lapse the lease is left in place, still
/// naming this process, for the next run to take back; otherwise it is released.
async fn finish(
    lease: lease::KeptLease,
    mut first_error: Option<DaemonError>,
    metrics: &Metrics,
    trigger: &ShutdownTrigger,
) -> Option<DaemonError> {
    let lost = if first_error.as_ref().is_some_and(lease_lapsed) {
        lease.abandon().await
    } else {
        lease.release().await
    };
    match (lost, &first_error) {
        (Some(lost), None) => stop_on(DaemonError::Lease(lost), metrics, &mut first_error, trigger),
        // A batch found the lease gone, and the renewals had found who took it: that
        // is the run's error (no use starting again to find out).
        (Some(lost @ LeaseError::Lost { .. }), Some(e)) if lease_lapsed(e) => {
            first_error = Some(DaemonError::Lease(lost));
        }
        _ => {}
    }
    first_error
}

/// How long the ops server may take to finish the requests it is answering once the
/// pipeline has drained.
const HTTP_STOP_GRACE: Duration = Duration::from_secs(3);

/// Waits for the ops server, which stops on shutdown. Its failure (rare: the socket
/// broke) is only reported: the pipeline itself has already drained. A connection
/// that holds a request half sent (a stuck scraper, a port scanner) would keep a
/// graceful stop waiting for ever, and with it the exit: after [`HTTP_STOP_GRACE`]
/// the server is dropped with whatever connections it still has.
async fn stop_http(http: Option<tokio::task::JoinHandle<Result<(), HttpError>>>) {
    let Some(mut http) = http else {
        return;
    };
    let ended = match tokio::time::timeout(HTTP_STOP_GRACE, &mut http).await {
        Ok(ended) => ended,
        Err(_) => {
            warn!(
                grace_secs = HTTP_STOP_GRACE.as_secs(),
                "ops HTTP server: connections still open after the drain; closing them"
            );
            http.abort();
            return;
        }
    };
    match ended {
        Ok(Ok(())) => {}
        Ok(Err(e)) => warn!(error = %error_chain(&e), "ops HTTP server failed"),
        Err(e) => warn!(error = %e, "ops HTTP server panicked"),
    }
}

/// Stops the pipeline on `e`: says so, marks it halted, keeps the run's first error
/// (what `rowlog run` exits with) and starts the drain.
fn stop_on(
    e: DaemonError,
    metrics: &Metrics,
    first_error: &mut Option<DaemonError>,
    trigger: &ShutdownTrigger,
) {
    error!(error = %error_chain(&e), "pipeline stopped");
    if lease_lapsed(&e) {
        metrics.state.set_lease(LeaseStatus::Lapsed);
    }
    note_halt(metrics, &e);
    first_error.get_or_insert(e);
    trigger.trigger();
}

/// Marks the pipeline halted and keeps the error for `/status`. Errors the stages
/// already recorded with more detail (a rejected batch with its table and key, a
/// source error) are counted where they happened and not overwritten here; nor by a
/// partition stopped at a schema change behind a halted one, which follows from the
/// halt and would hide its table, key and offsets.
fn note_halt(metrics: &Metrics, e: &DaemonError) {
    metrics.set_stopped();
    let stage = match e {
        DaemonError::Apply(ApplyError::Sink { .. } | ApplyError::BehindHalted { .. })
        | DaemonError::Ingest(IngestError::Source(_)) => return,
        DaemonError::Ingest(IngestError::Log(_)) | DaemonError::Log(_) => ErrorStage::Log,
        DaemonError::Source(_) => ErrorStage::Source,
        _ => ErrorStage::Sink,
    };
    metrics.error(stage, false);
    metrics
        .state
        .record_error(ErrorReport::new(stage.as_str(), false, error_chain(e)));
}

/// Recomputes derived metrics every second so alerting on a stalled or lagging
/// pipeline does not depend on someone scraping.
async fn sample(
    metrics: Arc<Metrics>,
    log: Option<EmbeddedLog>,
    log_dir: std::path::PathBuf,
    mut shutdown: Shutdown,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut n: u64 = 0;
    loop {
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = tick.tick() => {
                metrics.refresh();
                let Some(log) = &log else { continue };
                for p in 0..log.partitions() {
                    metrics.set_log_fsyncs(p, log.fsyncs(p));
                }
                // Directory walks are slower and the figures move slowly.
                if n.is_multiple_of(5) {
                    metrics.refresh_log_usage(&log_dir);
                }
                n += 1;
            }
        }
    }
}

fn log_progress(stats: &Stats) {
    info!(
        read = Stats::get(&stats.source_changes),
        appended = Stats::get(&stats.appended),
        duplicates_dropped = Stats::get(&stats.duplicates_dropped),
        applied = Stats::get(&stats.applied),
        checkpoint = %stats.checkpoint(),
        "progress"
    );
}

/// Applies the retention policy periodically. A failure is reported and retried next
/// time: retention only frees space, it never blocks the pipeline.
async fn retain(log: EmbeddedLog, cfg: crate::config::RetentionConfig, mut shutdown: Shutdown) {
    let policy = cfg.policy();
    if policy.max_bytes == 0 && policy.max_age.is_zero() {
        return;
    }
    let mut tick = tokio::time::interval(Duration::from_millis(cfg.check_interval_ms));
    loop {
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = tick.tick() => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_millis() as u64)
                    .unwrap_or(0);
                if let Err(e) = log.enforce_retention(policy, now).await {
                    warn!(error = %error_chain(&e), "log retention failed");
                }
            }
        }
    }
}

async fn report(stats: Arc<Stats>, mut shutdown: Shutdown) {
    let mut tick = tokio::time::interval(Duration::from_secs(10));
    tick.tick().await;
    loop {
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = tick.tick() => log_progress(&stats),
        }
    }
}
