//! The lease a pipeline holds on its destination: one process at a time moves a
//! pipeline's positions, the daemon (`rowlog run`) or a tool (`offsets set`, `replay`,
//! `source reset`, an offline `snapshot`).
//!
//! Why: those positions (the destination's progress rows, the log's committed offsets,
//! the source checkpoint) are written by all of them. The lock on `log.dir` keeps them
//! apart on one host only; with the log on Kafka they can run on different hosts, and
//! two daemons of one name against one destination would each apply and commit over
//! the other's positions.
//!
//! The lease is a row of `<progress_database>.rowlog_lease` per pipeline naming its
//! holder (host, process id, what it is) and when the lease runs out, by the
//! destination's clock (the hosts' clocks may differ). The holder renews it every
//! third of [`LEASE_TTL`]. Another process takes it when it has run out, or at once
//! when its holder was a process of the same host that has ended, so a `kill -9` and
//! a restart do not wait. The holder is the process, not a task in it: pipelines a
//! test runs in one process share it.
//!
//! Not a fence: a holder that cannot reach the destination for longer than the lease
//! stops only when a renewal reaches it again and finds the lease taken. Its writes
//! meanwhile go to the destination it cannot reach, so only a partial network
//! partition (writes arriving, renewals not) would let two holders write.

use std::time::Duration;

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts, OptsBuilder, TxOpts};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use crate::error::SinkError;
use crate::sql::quote;
use crate::SinkConfig;

/// How long a lease lasts unless renewed.
pub const LEASE_TTL: Duration = Duration::from_secs(30);

/// Who holds a lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holder {
    /// What the holder is: "rowlog run", "rowlog offsets set", …
    pub what: String,
    pub host: String,
    pub pid: u32,
}

impl Holder {
    /// This process, doing `what`.
    pub fn this_process(what: &str) -> Holder {
        Holder {
            what: what.to_owned(),
            host: hostname(),
            pid: std::process::id(),
        }
    }

    fn same_process(&self, other: &Holder) -> bool {
        self.host == other.host && self.pid == other.pid
    }

    /// A process of this host that has ended. Where `/proc` is missing nothing is
    /// known to have ended.
    fn ended_here(&self) -> bool {
        self.host == hostname()
            && std::path::Path::new("/proc/self").exists()
            && !std::path::Path::new(&format!("/proc/{}", self.pid)).exists()
    }
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "`{}` on host {} (pid {})",
            self.what, self.host, self.pid
        )
    }
}

/// What the destination said, for a log line (the error's own text names the action).
fn cause(e: &SinkError) -> String {
    std::error::Error::source(e).map_or_else(String::new, ToString::to_string)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown-host".into())
}

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("cannot take the pipeline's lease on the destination")]
    Destination(#[from] SinkError),
    #[error("pipeline `{pipeline}` is in use by {holder} against this destination (its lease runs {} s more): stop it first; if it has stopped without releasing it, the lease runs out by itself", remaining.as_secs())]
    Held {
        pipeline: String,
        holder: Holder,
        remaining: Duration,
    },
    #[error("pipeline `{pipeline}`: {holder} took the lease this process held on the destination (two processes ran as one pipeline, or this one could not renew it for {} s); this one stops", LEASE_TTL.as_secs())]
    Lost { pipeline: String, holder: Holder },
}

impl rowlog_api::Retry for LeaseError {
    fn is_retryable(&self) -> bool {
        match self {
            LeaseError::Destination(e) => e.is_retryable(),
            LeaseError::Held { .. } | LeaseError::Lost { .. } => false,
        }
    }
}

/// A connection to the lease's row, as this process.
pub struct Lease {
    conn: Conn,
    table: String,
    pipeline: String,
    me: Holder,
}

impl Lease {
    /// Connects and creates the lease table when missing; takes nothing yet.
    pub async fn connect(cfg: &SinkConfig, pipeline: &str, what: &str) -> Result<Lease, SinkError> {
        let opts =
            Opts::from_url(&rowlog_api::url::tcp_as_given(&cfg.url)).map_err(SinkError::BadUrl)?;
        let addr = format!("{}:{}", opts.ip_or_hostname(), opts.tcp_port());
        // The lease's times are the destination's, in UTC: a time zone's change of
        // offset would move them.
        let opts = OptsBuilder::from_opts(opts).init(vec!["SET time_zone='+00:00'".to_string()]);
        let mut conn = Conn::new(opts)
            .await
            .map_err(|source| SinkError::Connect { addr, source })?;
        let db = quote(&cfg.progress_database);
        let table = format!("{db}.`rowlog_lease`");
        let error = |source| SinkError::Progress {
            table: table.clone(),
            action: "create",
            source,
        };
        conn.query_drop(format!("CREATE DATABASE IF NOT EXISTS {db}"))
            .await
            .map_err(error)?;
        conn.query_drop(format!(
            "CREATE TABLE IF NOT EXISTS {table} (\
               pipeline VARCHAR(128) NOT NULL PRIMARY KEY,\
               host VARCHAR(255) NOT NULL,\
               pid INT UNSIGNED NOT NULL,\
               what VARCHAR(64) NOT NULL,\
               expires_at TIMESTAMP(6) NOT NULL\
             ) ENGINE=InnoDB"
        ))
        .await
        .map_err(error)?;
        Ok(Lease {
            conn,
            table,
            pipeline: pipeline.to_owned(),
            me: Holder::this_process(what),
        })
    }

    /// Takes the lease, or renews it when this process holds it; `Some` names the
    /// holder and how long its lease still runs when another process holds it.
    pub async fn take(&mut self) -> Result<Option<(Holder, Duration)>, SinkError> {
        let table = self.table.clone();
        let error = |source| SinkError::Progress {
            table: table.clone(),
            action: "take the lease in",
            source,
        };
        let ttl_us = LEASE_TTL.as_micros() as u64;
        // Twice at most: two processes that both found no row race to insert it, and
        // the one that lost reads the winner's row the second time.
        for attempt in 0..2 {
            let mut tx = self
                .conn
                .start_transaction(TxOpts::default())
                .await
                .map_err(error)?;
            let row: Option<(String, u32, String, i64)> = tx
                .exec_first(
                    format!(
                        "SELECT host, pid, what, TIMESTAMPDIFF(MICROSECOND, NOW(6), expires_at) \
                         FROM {} WHERE pipeline = ? FOR UPDATE",
                        self.table
                    ),
                    (&self.pipeline,),
                )
                .await
                .map_err(error)?;
            let written = match row {
                None => {
                    tx.exec_drop(
                        format!(
                            "INSERT INTO {} (pipeline, host, pid, what, expires_at) \
                             VALUES (?, ?, ?, ?, NOW(6) + INTERVAL ? MICROSECOND)",
                            self.table
                        ),
                        (
                            &self.pipeline,
                            &self.me.host,
                            self.me.pid,
                            &self.me.what,
                            ttl_us,
                        ),
                    )
                    .await
                }
                Some((host, pid, what, left_us)) => {
                    let holder = Holder { what, host, pid };
                    let free = holder.same_process(&self.me) || left_us <= 0 || holder.ended_here();
                    if !free {
                        tx.rollback().await.map_err(error)?;
                        return Ok(Some((holder, Duration::from_micros(left_us as u64))));
                    }
                    tx.exec_drop(
                        format!(
                            "UPDATE {} SET host = ?, pid = ?, what = ?, \
                             expires_at = NOW(6) + INTERVAL ? MICROSECOND WHERE pipeline = ?",
                            self.table
                        ),
                        (
                            &self.me.host,
                            self.me.pid,
                            &self.me.what,
                            ttl_us,
                            &self.pipeline,
                        ),
                    )
                    .await
                }
            };
            match written {
                Ok(()) => {
                    tx.commit().await.map_err(error)?;
                    return Ok(None);
                }
                Err(mysql_async::Error::Server(s)) if s.code == 1062 && attempt == 0 => {
                    tx.rollback().await.map_err(error)?;
                }
                Err(e) => return Err(error(e)),
            }
        }
        unreachable!("the second attempt returns")
    }

    /// Gives the lease up, if this process still holds it.
    pub async fn release(&mut self) -> Result<(), SinkError> {
        self.conn
            .exec_drop(
                format!(
                    "DELETE FROM {} WHERE pipeline = ? AND host = ? AND pid = ?",
                    self.table
                ),
                (&self.pipeline, &self.me.host, self.me.pid),
            )
            .await
            .map_err(|source| SinkError::Progress {
                table: self.table.clone(),
                action: "release the lease in",
                source,
            })
    }
}

/// Takes the pipeline's lease as this process doing `what`. While another process
/// holds it, waits up to `wait` for it to run out (a holder on another host that
/// stopped without releasing it), then fails naming the holder.
pub async fn acquire(
    cfg: &SinkConfig,
    pipeline: &str,
    what: &str,
    wait: Duration,
) -> Result<Lease, LeaseError> {
    let mut lease = Lease::connect(cfg, pipeline, what).await?;
    let started = tokio::time::Instant::now();
    let mut said = false;
    loop {
        let Some((holder, remaining)) = lease.take().await? else {
            return Ok(lease);
        };
        if started.elapsed() >= wait {
            return Err(LeaseError::Held {
                pipeline: pipeline.to_owned(),
                holder,
                remaining,
            });
        }
        if !said {
            tracing::info!(%holder, remaining_secs = remaining.as_secs(), "the pipeline's lease is held by another process; waiting for it to run out");
            said = true;
        }
        tokio::time::sleep(remaining.clamp(Duration::from_millis(100), Duration::from_secs(1)))
            .await;
    }
}

/// A lease renewed in the background until [`KeptLease::release`].
pub struct KeptLease {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Lease>,
    lost: watch::Receiver<Option<Holder>>,
    pipeline: String,
}

/// Renews `lease` every third of its lifetime; a renewal the destination does not
/// answer is tried again every two seconds (the lease still runs meanwhile).
pub fn keep(mut lease: Lease) -> KeptLease {
    let (stop, mut stopped) = oneshot::channel::<()>();
    let (lost_tx, lost) = watch::channel(None);
    let pipeline = lease.pipeline.clone();
    let task = tokio::spawn(async move {
        let mut next = LEASE_TTL / 3;
        loop {
            tokio::select! {
                _ = &mut stopped => return lease,
                _ = tokio::time::sleep(next) => {}
            }
            match lease.take().await {
                Ok(None) => next = LEASE_TTL / 3,
                Ok(Some((holder, _))) => {
                    tracing::error!(%holder, "another process took the pipeline's lease");
                    let _ = lost_tx.send(Some(holder));
                    let _ = stopped.await;
                    return lease;
                }
                Err(e) => {
                    tracing::warn!(error = %e, cause = %cause(&e), "cannot renew the pipeline's lease; retrying");
                    next = Duration::from_secs(2);
                }
            }
        }
    });
    KeptLease {
        stop: Some(stop),
        task,
        lost,
        pipeline,
    }
}

impl KeptLease {
    /// Resolves when another process has taken the lease.
    pub async fn lost(&mut self) -> LeaseError {
        let holder = loop {
            if let Some(h) = self.lost.borrow().clone() {
                break h;
            }
            if self.lost.changed().await.is_err() {
                // The renewing task is gone (it panicked): nothing renews the lease.
                std::future::pending::<()>().await;
            }
        };
        LeaseError::Lost {
            pipeline: self.pipeline.clone(),
            holder,
        }
    }

    /// Stops renewing and gives the lease up. A failure is only logged: the lease
    /// then runs out by itself.
    pub async fn release(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let Ok(mut lease) = (&mut self.task).await else {
            return;
        };
        match tokio::time::timeout(Duration::from_secs(5), lease.release()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, cause = %cause(&e), "cannot release the pipeline's lease; it runs out by itself")
            }
            Err(_) => {
                tracing::warn!("releasing the pipeline's lease timed out; it runs out by itself")
            }
        }
    }
}
