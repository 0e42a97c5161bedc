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
use std::time::Duration;

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
/// unfenced while another process could have taken it. Once the destination answers,
/// the lease is taken back if no other process held it meanwhile, and the pipeline
/// starts from its stored positions, as after a restart of the process; otherwise the
/// lease is lost and `rowlog run` fails, naming who holds it.
async fn run_restarting<L: PartitionedLog + Clone>(
    log: L,
    embedded: Option<EmbeddedLog>,
    cfg: Config,
    mut external: Shutdown,
    metrics: Arc<Metrics>,
    stats: Arc<Stats>,
) -> Result<Arc<Stats>, DaemonError> {
    let mut taken_back = None;
    loop {
        let run = run_on(
            log.clone(),
            embedded.clone(),
            cfg.clone(),
            external.clone(),
            metrics.clone(),
            stats.clone(),
            taken_back.take(),
        )
        .await;
        match run {
            Err(e) if lease_lapsed(&e) && !external.is_triggered() => {
                warn!(error = %error_chain(&e), "every stage stopped; the pipeline starts again from its stored positions once the destination answers, if no other process took its lease");
                let mut pause = crate::pipeline::backoff::Backoff::new(
                    Duration::from_secs(1),
                    Duration::from_secs(30),
                );
                let lease = loop {
                    tokio::select! {
                        _ = external.wait() => return Ok(stats),
                        _ = tokio::time::sleep(pause.next_delay()) => {}
                    }
                    match lease::take_back(&cfg.sink, &cfg.name, "rowlog run").await {
                        Ok(lease) => break lease,
                        Err(LeaseError::Destination(e)) if e.is_retryable() => {
                            warn!(error = %error_chain(&e), "the destination does not answer yet");
                        }
                        Err(e) => return Err(e.into()),
                    }
                };
                info!("the pipeline's lease is this process's again; starting again");
                metrics.restarted();
                Stats::add(&stats.restarts, 1);
                taken_back = Some(lease);
            }
            other => return other,
        }
    }
}

/// Whether the run stopped because its lease lapsed, or a batch found it gone (whether
/// another process took it, `lease::take_back` finds out).
fn lease_lapsed(e: &DaemonError) -> bool {
    matches!(
        e,
        DaemonError::Lease(LeaseError::Lapsed { .. })
            | DaemonError::Apply(ApplyError::Fenced { .. })
    )
}

/// The pipeline on an opened log. `embedded` is the same log when it is the embedded
/// one: retention and fsync figures exist only there (Kafka retains and syncs by itself).
/// `taken_back` is the pipeline's lease when [`run_restarting`] took it back;
/// otherwise this run takes it.
async fn run_on<L: PartitionedLog + Clone>(
    log: L,
    embedded: Option<EmbeddedLog>,
    cfg: Config,
    mut external: Shutdown,
    metrics: Arc<Metrics>,
    stats: Arc<Stats>,
    taken_back: Option<lease::Lease>,
) -> Result<Arc<Stats>, DaemonError> {
    for p in 0..log.partitions() {
        metrics.set_log_end(p, log.end_offset(p));
    }

    let settings = preflight(&cfg.source).await?;
    info!(server = %settings.version, "source checked");
    let mut sink = MySqlSink::connect(&cfg.sink, &cfg.name).await?;
    sink.ensure_progress_table().await?;
    drop(sink);
    info!("destination checked");
    // Bound after the checks: a port in use is reported, but not before the more
    // fundamental problems a first run usually has.
    let ops = if cfg.http.enabled {
        let server = OpsServer::bind(&cfg.http.listen, metrics.clone(), cfg.name.clone()).await?;
        if let Some(addr) = server.local_addr() {
            info!(%addr, "serving /metrics, /healthz, /readyz, /status");
        }
        Some(server)
    } else {
        None
    };

    let (trigger, shutdown) = shutdown::channel();
    let mut http = ops.map(|server| tokio::spawn(server.serve(shutdown.clone())));

    // One process at a time moves this pipeline's positions (see the lease module).
    // A holder on another host that stopped without releasing it is waited for until
    // its lease runs out; one that renews it keeps this daemon from starting. The ops
    // port answers meanwhile: /status names the holder, /readyz says why not ready.
    let wait = cfg.sink.lease_ttl() + Duration::from_secs(5);
    let waiting = |holder: &lease::Holder, remaining: Duration| {
        metrics.state.set_lease(LeaseStatus::Waiting {
            holder: holder.to_string(),
            remaining_secs: remaining.as_secs(),
        })
    };
    let taken = match taken_back {
        Some(lease) => Some(Ok(lease)),
        None => tokio::select! {
            taken = lease::acquire(&cfg.sink, &cfg.name, "rowlog run", wait, waiting) => Some(taken),
            _ = external.wait() => None,
        },
    };
    let taken = match taken {
        Some(Ok(taken)) => taken,
        // Failed, or stopped while waiting (a clean stop: nothing ran).
        failed_or_stopped => {
            trigger.trigger();
            stop_http(http.take()).await;
            return match failed_or_stopped {
                Some(Err(e)) => Err(e.into()),
                _ => Ok(stats),
            };
        }
    };
    metrics.state.set_lease(LeaseStatus::Held);
    let mut lease = lease::keep(taken);

    // The run's first error, what `rowlog run` exits with.
    let mut first_error = None;
    // A snapshot, when one is due, runs to its end before streaming starts (see
    // crate::snapshot for why that keeps the hand-off exact).
    let snapshot = tokio::select! {
        done = crate::snapshot::before_streaming(&cfg, &log, &metrics, &external) => done.map_err(DaemonError::Snapshot),
        lost = lease.lost() => Err(DaemonError::Lease(lost)),
    };
    let floors = match snapshot {
        Ok(Some(floors)) => floors,
        // Stopped during the snapshot, or it failed: nothing streamed yet.
        other => {
            if let Err(e) = other {
                stop_on(e, &metrics, &mut first_error, &trigger);
            }
            trigger.trigger();
            stop_http(http.take()).await;
            lease.release().await;
            return first_error.map_or(Ok(stats), Err);
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
    // the sink is still committing. A loss during the drain is this run's error too.
    if let Some(lost) = lease.release().await {
        if first_error.is_none() {
            stop_on(
                DaemonError::Lease(lost),
                &metrics,
                &mut first_error,
                &trigger,
            );
        }
    }
    stop_http(http).await;
    log_progress(&stats);
    match first_error {
        Some(e) => Err(e),
        None => Ok(stats),
    }
}

/// Waits for the ops server, which stops on shutdown. Its failure (rare: the socket
/// broke) is only reported: the pipeline itself has already drained.
async fn stop_http(http: Option<tokio::task::JoinHandle<Result<(), HttpError>>>) {
    if let Some(http) = http {
        match http.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(error = %error_chain(&e), "ops HTTP server failed"),
            Err(e) => warn!(error = %e, "ops HTTP server panicked"),
        }
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
    note_halt(metrics, &e);
    first_error.get_or_insert(e);
    trigger.trigger();
}

/// Marks the pipeline halted and keeps the error for `/status`. Errors the stages
/// already recorded with more detail (a rejected batch with its table and key, a
/// source error) are counted where they happened and not overwritten here.
fn note_halt(metrics: &Metrics, e: &DaemonError) {
    metrics.set_stopped();
    let stage = match e {
        DaemonError::Apply(ApplyError::Sink { .. })
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
