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
//! third of its lifetime (`sink.lease_secs`, 30 s by default), only while it has not
//! run out. A holder that could not renew it in time, by its own clock, or that finds
//! it run out, counts it lapsed ([`LeaseError::Lapsed`]): the daemon stops every stage
//! and takes it back ([`take_back`]) only if its row still names this process, since
//! then no other process held it meanwhile (one that took it wrote its own name, one
//! that let it go removed the row); otherwise the lease is lost, never silently taken
//! back. Another process takes it when it has run out, or at once when its holder was
//! a process of the same machine (boot and PID namespace) that has ended, so a
//! `kill -9` and a restart do not wait. The holder is the process (host, machine, pid
//! and a random token of the process), not a task in it: pipelines a test runs in one
//! process share it.
//!
//! A holder learns of a loss only at its next renewal, up to a third of the lease
//! later. What it applies meanwhile is fenced ([`Fence`]): each of the sink's batches
//! checks, just before its COMMIT, that this process still holds an unexpired lease,
//! and keeps a shared lock on the lease's row until the COMMIT. A process taking the
//! lease over (which updates the row) waits for that COMMIT, and a batch that finds
//! the lease gone is rolled back. Schema changes (they commit by themselves) and the
//! snapshot's copies are not fenced.

use std::sync::OnceLock;
use std::time::Duration;

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts, OptsBuilder, TxOpts};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::error::SinkError;
use crate::sql::quote;
use crate::SinkConfig;

/// The longest one call on the lease's row may take before it counts as failed (a
/// stalled connection, a row lock held elsewhere).
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Who holds a lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holder {
    /// What the holder is: "rowlog run", "rowlog offsets set", …
    pub what: String,
    pub host: String,
    pub pid: u32,
    /// The boot and PID namespace the pid is of: containers that share a host name
    /// do not share their pids.
    machine: String,
    /// Random per process: a pid reused, or the same pid in another namespace, is
    /// another holder.
    token: u64,
}

/// This process's identity: (host, machine, token).
fn identity() -> &'static (String, String, u64) {
    static ID: OnceLock<(String, String, u64)> = OnceLock::new();
    ID.get_or_init(|| {
        let read = |p: &str| std::fs::read_to_string(p).map(|s| s.trim().to_owned());
        let host = read("/proc/sys/kernel/hostname")
            .ok()
            .filter(|h| !h.is_empty())
            .or_else(|| std::env::var("HOSTNAME").ok())
            .unwrap_or_else(|| "unknown-host".into());
        let machine = match (
            read("/proc/sys/kernel/random/boot_id"),
            std::fs::read_link("/proc/self/ns/pid"),
        ) {
            (Ok(boot), Ok(ns)) => format!("{boot}/{}", ns.display()),
            // Unknown: no holder is ever found to have ended here.
            _ => String::new(),
        };
        // A random token from the standard library's randomly keyed hasher.
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        (host, machine, h.finish() >> 1)
    })
}

impl Holder {
    /// This process, doing `what`.
    pub fn this_process(what: &str) -> Holder {
        let (host, machine, token) = identity().clone();
        Holder {
            what: what.to_owned(),
            host,
            pid: std::process::id(),
            machine,
            token,
        }
    }

    fn same_process(&self, other: &Holder) -> bool {
        (&self.host, &self.machine, self.pid, self.token)
            == (&other.host, &other.machine, other.pid, other.token)
    }

    /// A process of this machine that has ended: its pid is gone. (A pid taken again
    /// by another process looks alive: its lease is then waited out.)
    fn ended_here(&self) -> bool {
        let (host, machine, _) = identity();
        !machine.is_empty()
            && (&self.host, &self.machine) == (host, machine)
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

/// The cause of a call that timed out: an I/O time-out, so it is retried like the
/// other faults of a destination out of reach (a network that drops packets makes
/// calls time out rather than fail).
fn no_answer() -> mysql_async::Error {
    std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("no answer within {} s", CALL_TIMEOUT.as_secs()),
    )
    .into()
}

/// What the destination said, for a log line (the error's own text names the action).
fn cause(e: &SinkError) -> String {
    std::error::Error::source(e).map_or_else(String::new, ToString::to_string)
}

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("cannot take the pipeline's lease on the destination")]
    Destination(#[from] SinkError),
    #[error("pipeline `{pipeline}` is in use by {holder} against this destination (its lease runs {} s more): stop it first; if it has stopped without releasing it, the lease runs out by itself", remaining.as_secs().max(1))]
    Held {
        pipeline: String,
        holder: Holder,
        remaining: Duration,
    },
    #[error("pipeline `{pipeline}`: this process lost its lease on the destination ({}); it stops, and positions it moved since may mix with another process's: check them with `rowlog offsets show`", match holder { Some(h) => format!("{h} holds it now"), None => "another process held it and let it go, or it was removed".to_string() })]
    Lost {
        pipeline: String,
        holder: Option<Holder>,
    },
    #[error("pipeline `{pipeline}`: this process could not renew its lease on the destination before it ran out (the destination was out of reach, or this process paused)")]
    Lapsed { pipeline: String },
}

impl rowlog_api::Retry for LeaseError {
    fn is_retryable(&self) -> bool {
        match self {
            LeaseError::Destination(e) => e.is_retryable(),
            LeaseError::Held { .. } | LeaseError::Lost { .. } | LeaseError::Lapsed { .. } => false,
        }
    }
}

/// The lease's table in the progress database.
fn lease_table(progress_database: &str) -> String {
    format!("{}.`rowlog_lease`", quote(progress_database))
}

/// The check that fences the sink's batches (and a run's progress writes at its
/// start) by this process's lease (see the module): run inside the transaction just
/// before its COMMIT, it finds no row unless
/// this process holds the pipeline's lease and it has not run out, and its shared
/// lock on the row holds off a process taking the lease over until the COMMIT.
#[derive(Clone, Debug)]
pub struct Fence {
    pub(crate) pipeline: String,
    pub(crate) table: String,
    pub(crate) sql: String,
    pub(crate) params: (String, String, String, u32, u64),
}

/// The fence of pipeline `pipeline` for this process, which must hold its lease.
pub fn fence(cfg: &SinkConfig, pipeline: &str) -> Fence {
    let me = Holder::this_process("");
    let table = lease_table(&cfg.progress_database);
    Fence {
        pipeline: pipeline.to_owned(),
        // (`LOCK IN SHARE MODE`: both MariaDB and MySQL 8 accept it.)
        sql: format!(
            "SELECT 1 FROM {table} WHERE pipeline = ? AND host = ? AND machine = ? AND pid = ? \
             AND token = ? AND expires_at > NOW(6) LOCK IN SHARE MODE"
        ),
        table,
        params: (pipeline.to_owned(), me.host, me.machine, me.pid, me.token),
    }
}

/// A connection to the lease's row, as this process. A connection that failed is
/// opened again on the next call (a destination restart must not end the renewals).
pub struct Lease {
    opts: Opts,
    addr: String,
    conn: Option<Conn>,
    table: String,
    pipeline: String,
    me: Holder,
    /// By this process's clock, when the lease it took or renewed last runs out at the
    /// latest (the call's start plus `ttl`: the destination's `NOW(6)` was
    /// later).
    valid_until: Instant,
    /// How long the lease lasts unless renewed (`sink.lease_secs`).
    ttl: Duration,
}

impl Lease {
    /// Connects and creates the lease table when missing; takes nothing yet.
    pub async fn connect(cfg: &SinkConfig, pipeline: &str, what: &str) -> Result<Lease, SinkError> {
        let (opts, addr) = crate::sink::destination(cfg).map_err(SinkError::BadUrl)?;
        let opts = OptsBuilder::from_opts(opts)
            .init(vec![
                // The lease's times are the destination's, in UTC: a time zone's
                // change of offset would move them.
                "SET time_zone='+00:00'".to_string(),
                // No gap lock on a missing row: of two processes inserting the first
                // row, one gets a duplicate key (and reads the winner's row).
                "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED".to_string(),
            ])
            .into();
        let db = quote(&cfg.progress_database);
        let mut lease = Lease {
            opts,
            addr,
            conn: None,
            table: lease_table(&cfg.progress_database),
            pipeline: pipeline.to_owned(),
            me: Holder::this_process(what),
            valid_until: Instant::now(),
            ttl: cfg.lease_ttl(),
        };
        let create = [
            format!("CREATE DATABASE IF NOT EXISTS {db}"),
            format!(
                "CREATE TABLE IF NOT EXISTS {} (\
                   pipeline VARCHAR(255) NOT NULL PRIMARY KEY,\
                   host VARCHAR(255) NOT NULL,\
                   machine VARCHAR(255) NOT NULL,\
                   pid INT UNSIGNED NOT NULL,\
                   token BIGINT UNSIGNED NOT NULL,\
                   what VARCHAR(64) NOT NULL,\
                   expires_at TIMESTAMP(6) NOT NULL\
                 ) ENGINE=InnoDB",
                lease.table
            ),
        ];
        for q in create {
            let conn = lease.conn().await?;
            if let Err(source) = conn.query_drop(q).await {
                return Err(lease.failed("create", source));
            }
        }
        Ok(lease)
    }

    async fn conn(&mut self) -> Result<&mut Conn, SinkError> {
        if self.conn.is_none() {
            let conn = Conn::new(self.opts.clone())
                .await
                .map_err(|source| SinkError::Connect {
                    addr: self.addr.clone(),
                    source,
                })?;
            self.conn = Some(conn);
        }
        Ok(self.conn.as_mut().expect("set above"))
    }

    /// `call`, bounded by [`CALL_TIMEOUT`]: one that gets no answer in time is the
    /// error of `action` (its connection is not used again).
    async fn within<T>(
        &mut self,
        action: &'static str,
        call: impl AsyncFnOnce(&mut Lease) -> Result<T, SinkError>,
    ) -> Result<T, SinkError> {
        match tokio::time::timeout(CALL_TIMEOUT, call(self)).await {
            Ok(answered) => answered,
            Err(_) => Err(self.timed_out(action)),
        }
    }

    /// A call that got no answer within [`CALL_TIMEOUT`]; its connection is not used
    /// again.
    fn timed_out(&mut self, action: &'static str) -> SinkError {
        self.failed(action, no_answer())
    }

    /// The error of a call on the connection, which is not used again.
    fn failed(&mut self, action: &'static str, source: mysql_async::Error) -> SinkError {
        self.conn = None;
        SinkError::Progress {
            table: self.table.clone(),
            action,
            source,
        }
    }

    /// Takes the lease, or renews it when this process holds it; `Some` names the
    /// holder and how long its lease still runs when another process holds it.
    pub async fn take(&mut self) -> Result<Option<(Holder, Duration)>, SinkError> {
        let started = Instant::now();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let (table, pipeline, me) =
                (self.table.clone(), self.pipeline.clone(), self.me.clone());
            let ttl = self.ttl;
            let conn = self.conn().await?;
            match take_in(conn, &table, &pipeline, &me, ttl).await {
                Ok(held) => {
                    if held.is_none() {
                        self.valid_until = started + self.ttl;
                    }
                    return Ok(held);
                }
                // Two processes that both found no row raced to insert it (or, where
                // the isolation level could not be set, deadlocked on the gap):
                // the loser reads the winner's row the next time.
                Err(mysql_async::Error::Server(s))
                    if matches!(s.code, 1062 | 1213 | 1205) && attempt < 3 => {}
                Err(e) => return Err(self.failed("take the lease in", e)),
            }
        }
    }

    /// Extends the lease this process holds, if it still holds it and it has not run
    /// out; false when it has not (see the module).
    pub async fn renew(&mut self) -> Result<bool, SinkError> {
        self.extend("AND expires_at > NOW(6)", "renew the lease in")
            .await
    }

    /// Extends the lease, run out or not, if its row still names this process: then no
    /// other process held it since (one that took it wrote its own name, one that let
    /// it go removed the row). False when it does not.
    pub async fn take_back(&mut self) -> Result<bool, SinkError> {
        self.extend("", "take the lease back in").await
    }

    /// One statement, committed by itself: extends the lease if its row names this
    /// process and matches `and`.
    async fn extend(&mut self, and: &str, action: &'static str) -> Result<bool, SinkError> {
        let q = format!(
            "UPDATE {} SET expires_at = NOW(6) + INTERVAL ? MICROSECOND \
             WHERE pipeline = ? AND host = ? AND machine = ? AND pid = ? AND token = ? {and}",
            self.table
        );
        let me = self.me.clone();
        let params = (
            self.ttl.as_micros() as u64,
            self.pipeline.clone(),
            me.host,
            me.machine,
            me.pid,
            me.token,
        );
        let started = Instant::now();
        let conn = self.conn().await?;
        match conn.exec_drop(q, params).await {
            Ok(()) if conn.affected_rows() == 1 => {
                self.valid_until = started + self.ttl;
                Ok(true)
            }
            Ok(()) => Ok(false),
            Err(e) => Err(self.failed(action, e)),
        }
    }

    /// Who holds the lease now, if anyone.
    pub async fn holder(&mut self) -> Result<Option<Holder>, SinkError> {
        let q = format!(
            "SELECT host, machine, pid, token, what FROM {} WHERE pipeline = ?",
            self.table
        );
        let pipeline = self.pipeline.clone();
        let conn = self.conn().await?;
        match conn
            .exec_first::<(String, String, u32, u64, String), _, _>(q, (pipeline,))
            .await
        {
            Ok(row) => Ok(row.map(|(host, machine, pid, token, what)| Holder {
                what,
                host,
                pid,
                machine,
                token,
            })),
            Err(e) => Err(self.failed("read the lease in", e)),
        }
    }

    /// Gives the lease up, if this process still holds it.
    pub async fn release(&mut self) -> Result<(), SinkError> {
        let q = format!(
            "DELETE FROM {} WHERE pipeline = ? AND host = ? AND machine = ? AND pid = ? AND token = ?",
            self.table
        );
        let me = self.me.clone();
        let params = (self.pipeline.clone(), me.host, me.machine, me.pid, me.token);
        let conn = self.conn().await?;
        match conn.exec_drop(q, params).await {
            Ok(()) => Ok(()),
            Err(e) => Err(self.failed("release the lease in", e)),
        }
    }
}

/// One attempt to take or renew the lease, in one transaction (rolled back when it
/// fails: mysql_async rolls back a transaction dropped unfinished).
async fn take_in(
    conn: &mut Conn,
    table: &str,
    pipeline: &str,
    me: &Holder,
    ttl: Duration,
) -> Result<Option<(Holder, Duration)>, mysql_async::Error> {
    let ttl_us = ttl.as_micros() as u64;
    let mut tx = conn.start_transaction(TxOpts::default()).await?;
    let row: Option<(String, String, u32, u64, String, i64)> = tx
        .exec_first(
            format!(
                "SELECT host, machine, pid, token, what, \
                 TIMESTAMPDIFF(MICROSECOND, NOW(6), expires_at) \
                 FROM {table} WHERE pipeline = ? FOR UPDATE"
            ),
            (pipeline,),
        )
        .await?;
    let set = (
        &me.host,
        &me.machine,
        me.pid,
        me.token,
        &me.what,
        ttl_us,
        pipeline,
    );
    match row {
        None => {
            tx.exec_drop(
                format!(
                    "INSERT INTO {table} (host, machine, pid, token, what, expires_at, pipeline) \
                     VALUES (?, ?, ?, ?, ?, NOW(6) + INTERVAL ? MICROSECOND, ?)"
                ),
                set,
            )
            .await?
        }
        Some((host, machine, pid, token, what, left_us)) => {
            let holder = Holder {
                what,
                host,
                pid,
                machine,
                token,
            };
            let free = holder.same_process(me) || left_us <= 0 || holder.ended_here();
            if !free {
                tx.rollback().await?;
                return Ok(Some((holder, Duration::from_micros(left_us as u64))));
            }
            tx.exec_drop(
                format!(
                    "UPDATE {table} SET host = ?, machine = ?, pid = ?, token = ?, what = ?, \
                     expires_at = NOW(6) + INTERVAL ? MICROSECOND WHERE pipeline = ?"
                ),
                set,
            )
            .await?
        }
    }
    tx.commit().await?;
    Ok(None)
}

/// Takes the pipeline's lease as this process doing `what`. While another process
/// holds it, waits up to `wait` for it to run out (a holder on another host that
/// stopped without releasing it), telling `waiting` who holds it and for how long
/// after each look, then fails naming the holder.
pub async fn acquire(
    cfg: &SinkConfig,
    pipeline: &str,
    what: &str,
    wait: Duration,
    mut waiting: impl FnMut(&Holder, Duration),
) -> Result<Lease, LeaseError> {
    let mut lease = connect_timed(cfg, pipeline, what).await?;
    let started = Instant::now();
    let mut said = false;
    loop {
        let taken = lease
            .within("take the lease in", async |l| l.take().await)
            .await?;
        let Some((holder, remaining)) = taken else {
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
        waiting(&holder, remaining);
        tokio::time::sleep(remaining.clamp(Duration::from_millis(100), Duration::from_secs(1)))
            .await;
    }
}

/// [`Lease::connect`], bounded by [`CALL_TIMEOUT`].
async fn connect_timed(cfg: &SinkConfig, pipeline: &str, what: &str) -> Result<Lease, SinkError> {
    tokio::time::timeout(CALL_TIMEOUT, Lease::connect(cfg, pipeline, what))
        .await
        .map_err(|_| SinkError::Connect {
            addr: cfg.url.clone(),
            source: no_answer(),
        })?
}

/// Takes the lease back as this process doing `what` after it lapsed
/// ([`LeaseError::Lapsed`]), only if no other process held it since (see
/// [`Lease::take_back`]); otherwise it is lost, naming who holds it now.
pub async fn take_back(cfg: &SinkConfig, pipeline: &str, what: &str) -> Result<Lease, LeaseError> {
    let mut lease = connect_timed(cfg, pipeline, what).await?;
    if lease
        .within("take the lease back in", async |l| l.take_back().await)
        .await?
    {
        return Ok(lease);
    }
    let holder = lease
        .within("read the lease's holder in", async |l| l.holder().await)
        .await?;
    Err(LeaseError::Lost {
        pipeline: pipeline.to_owned(),
        holder,
    })
}

/// Gives up the pipeline's lease if its row names this process (after a lapse, the
/// row can still name it while nothing renews it). Best effort, bounded by the call
/// time-out: otherwise it runs out by itself.
pub async fn release_if_held(cfg: &SinkConfig, pipeline: &str) {
    let released = async {
        let mut lease = connect_timed(cfg, pipeline, "").await?;
        lease
            .within("release the lease in", async |l| l.release().await)
            .await
    };
    if let Err(e) = released.await {
        tracing::warn!(error = %e, cause = %cause(&e), "cannot release the pipeline's lease; it runs out by itself");
    }
}

/// A lease renewed in the background until [`KeptLease::release`].
pub struct KeptLease {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Lease>,
    lost: watch::Receiver<Option<Loss>>,
    pipeline: String,
}

/// Why a kept lease is no longer held.
#[derive(Clone, Debug)]
enum Loss {
    /// Not renewed in time, and no other process is known to have taken it: its row
    /// still names this process, or could not be read.
    Lapsed,
    /// Another process holds it (`Some`), or held it and let it go (`None`).
    Taken(Option<Holder>),
}

/// Renews `lease` every third of its lifetime; a renewal that fails is tried again
/// every two seconds, until the lease may have run out (see `Lease::valid_until`).
pub fn keep(mut lease: Lease) -> KeptLease {
    let (stop, mut stopped) = oneshot::channel::<()>();
    let (lost_tx, lost) = watch::channel(None);
    let pipeline = lease.pipeline.clone();
    let task = tokio::spawn(async move {
        let mut next = lease.ttl / 3;
        loop {
            tokio::select! {
                _ = &mut stopped => return lease,
                _ = tokio::time::sleep(next) => {}
            }
            // No call may outlast the lease: past `valid_until` another process may
            // hold it.
            let budget =
                CALL_TIMEOUT.min(lease.valid_until.saturating_duration_since(Instant::now()));
            // A stop during a renewal ends it at once: the connection it used is
            // not used again.
            let outcome = tokio::select! {
                _ = &mut stopped => None,
                r = tokio::time::timeout(budget, lease.renew()) => Some(r),
            };
            let result = match outcome {
                None => {
                    lease.conn = None;
                    return lease;
                }
                Some(Ok(r)) => r,
                Some(Err(_)) => Err(lease.timed_out("renew the lease in")),
            };
            let loss = match result {
                Ok(true) => {
                    next = lease.ttl / 3;
                    continue;
                }
                Ok(false) => {
                    // Run out, or another process's: the row says which.
                    let holder = lease
                        .within("read the lease's holder in", async |l| l.holder().await)
                        .await;
                    match holder {
                        Ok(Some(h)) if h.same_process(&lease.me) => Loss::Lapsed,
                        Ok(holder) => Loss::Taken(holder),
                        Err(_) => Loss::Lapsed,
                    }
                }
                Err(e) => {
                    let left = lease.valid_until.saturating_duration_since(Instant::now());
                    if !left.is_zero() {
                        tracing::warn!(error = %e, cause = %cause(&e), "cannot renew the pipeline's lease; retrying");
                        next = left.min(Duration::from_secs(2));
                        continue;
                    }
                    tracing::warn!(error = %e, cause = %cause(&e), "cannot renew the pipeline's lease");
                    Loss::Lapsed
                }
            };
            tracing::error!(?loss, "this process no longer holds the pipeline's lease");
            let _ = lost_tx.send(Some(loss));
            let _ = stopped.await;
            return lease;
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
    fn lost_error(&self, loss: Loss) -> LeaseError {
        let pipeline = self.pipeline.clone();
        match loss {
            Loss::Lapsed => LeaseError::Lapsed { pipeline },
            Loss::Taken(holder) => LeaseError::Lost { pipeline, holder },
        }
    }

    /// Resolves when this process has lost the lease.
    pub async fn lost(&mut self) -> LeaseError {
        let to = loop {
            if let Some(to) = self.lost.borrow().clone() {
                break to;
            }
            if self.lost.changed().await.is_err() {
                // The renewing task ended without a word (it panicked): nothing renews
                // the lease.
                break Loss::Lapsed;
            }
        };
        self.lost_error(to)
    }

    /// Stops renewing and gives the lease up; returns the loss when it was lost
    /// before. A failure to give it up is only logged: it then runs out by itself.
    pub async fn release(self) -> Option<LeaseError> {
        self.end(true).await
    }

    /// Stops renewing and leaves the lease's row as it is (still naming this process,
    /// unless another took it): after a lapse, for [`take_back`].
    pub async fn abandon(self) -> Option<LeaseError> {
        self.end(false).await
    }

    async fn end(mut self, give_up: bool) -> Option<LeaseError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let joined = tokio::time::timeout(CALL_TIMEOUT, &mut self.task).await;
        // Read after the task ended: a loss it found while stopping counts. (The
        // receiver keeps the last value after the sender is gone.)
        let lost = self.lost.borrow().clone();
        let mut lease = match joined {
            Ok(Ok(lease)) => lease,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "the lease's renewing task failed; the lease runs out by itself");
                return Some(self.lost_error(lost.unwrap_or(Loss::Lapsed)));
            }
            Err(_) => {
                self.task.abort();
                tracing::warn!(
                    "the lease's renewing task did not stop; the lease runs out by itself"
                );
                return lost.map(|to| self.lost_error(to));
            }
        };
        if lost.is_none() && give_up {
            let released = lease
                .within("release the lease in", async |l| l.release().await)
                .await;
            if let Err(e) = released {
                tracing::warn!(error = %e, cause = %cause(&e), "cannot release the pipeline's lease; it runs out by itself")
            }
        }
        lost.map(|to| self.lost_error(to))
    }
}
