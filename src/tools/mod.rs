//! Commands for people, beside the daemon: they open the log read-only (no lock, no
//! writes), so they work while `rowlog run` is writing and when it is stopped.

/// Runs `$body` with `$log` bound to the log [`open_stopped`] opened as `$what`, on
/// either backend (the body is generic over the log), then gives up the lease:
/// what each position tool does around its work.
macro_rules! on_stopped_log {
    ($cfg:expr, $what:expr, |$log:ident| $body:expr) => {{
        let (log, lease) = $crate::tools::open_stopped($cfg, $what).await?;
        let done = match log {
            $crate::tools::ToolLog::Embedded($log) => $body,
            $crate::tools::ToolLog::Kafka($log, _lock) => $body,
        };
        $crate::tools::release(lease, done).await
    }};
}

pub mod bench_log;
pub mod bench_replication;
pub mod binlog_decode;
pub mod chaos;
pub mod json;
pub mod log_cmd;
pub mod offsets;
pub mod snapshot_cmd;
pub mod verify_tables;

use std::fs::File;
use std::path::PathBuf;
use std::time::Duration;

use rowlog_mysql_sink::lease::{self, KeptLease};

use crate::config::{Config, LogBackend};
use crate::log::{EmbeddedLog, KafkaLog, LogError};

/// The log a tool works on: the config's `log.backend`.
pub enum ToolLog {
    Embedded(EmbeddedLog),
    /// With the lock on `log.dir` when the tool changes positions (see [`open_stopped`]).
    Kafka(KafkaLog, Option<File>),
}

/// Where a `rowlog log …` command finds the log.
pub enum LogLocation {
    /// An embedded log's directory.
    Dir(PathBuf),
    Config(Box<Config>),
}

/// Opens the log to read it, beside a running daemon or not.
pub async fn open_read_only(at: &LogLocation) -> Result<ToolLog, LogError> {
    match at {
        LogLocation::Dir(dir) => Ok(ToolLog::Embedded(EmbeddedLog::open_read_only(dir)?)),
        LogLocation::Config(cfg) => match (&cfg.log.backend, &cfg.kafka) {
            (LogBackend::Kafka, Some(k)) => Ok(ToolLog::Kafka(
                KafkaLog::open_existing(k, &cfg.name, cfg.log.partitions).await?,
                None,
            )),
            _ => Ok(ToolLog::Embedded(EmbeddedLog::open_read_only(
                &cfg.log.dir,
            )?)),
        },
    }
}

/// Opens the log to change positions as `what` ("rowlog offsets set", …): refused
/// while `rowlog run` holds `log.dir`, or the pipeline's lease on the destination from
/// any host (two writers of the same positions would race). The lease is held until
/// the caller releases it.
pub async fn open_stopped(
    cfg: &Config,
    what: &str,
) -> Result<(ToolLog, KeptLease), Box<dyn std::error::Error + Send + Sync>> {
    let log = open_log_stopped(cfg).await?;
    // Taken after the local lock: on the daemon's own host the lock's message says
    // more (it is this host's log.dir).
    let lease = lease::acquire(&cfg.sink, &cfg.name, what, Duration::ZERO, |_, _| {}).await?;
    Ok((log, lease::keep(lease)))
}

/// Gives up the lease `open_stopped` took, after the work that ended in `done`. A
/// lease lost meanwhile is the tool's error: another process may have moved the same
/// positions.
pub async fn release<T>(
    lease: KeptLease,
    done: Result<T, Box<dyn std::error::Error + Send + Sync>>,
) -> Result<T, Box<dyn std::error::Error + Send + Sync>> {
    match lease.release().await {
        Some(lost) => Err(lost.into()),
        None => done,
    }
}

async fn open_log_stopped(
    cfg: &Config,
) -> Result<ToolLog, Box<dyn std::error::Error + Send + Sync>> {
    let locked = |dir: &std::path::Path| {
        format!(
            "the log at {} is in use by a running rowlog: stop it first (this command changes positions the daemon holds)",
            dir.display()
        )
    };
    match (&cfg.log.backend, &cfg.kafka) {
        (LogBackend::Kafka, Some(k)) => {
            let lock = match EmbeddedLog::lock(&cfg.log.dir) {
                Err(LogError::Locked { dir, .. }) => return Err(locked(&dir).into()),
                other => other?,
            };
            let log = KafkaLog::open_existing(k, &cfg.name, cfg.log.partitions).await?;
            Ok(ToolLog::Kafka(log, Some(lock)))
        }
        _ => match EmbeddedLog::open_with(
            &cfg.log.dir,
            cfg.log.partitions,
            cfg.log.segment_bytes,
            cfg.log.fsync_policy(),
        ) {
            Err(LogError::Locked { dir, .. }) => Err(locked(&dir).into()),
            other => Ok(ToolLog::Embedded(other?)),
        },
    }
}
