//! Source → log.
//!
//! Two tasks: the *reader* owns the source connection and pushes [`SourceEvent`]s into
//! a bounded channel (so a slow log back-pressures the source), reconnecting from the
//! last transaction boundary on transient errors; the *appender* drains the channel
//! into batches, appends each batch durably, then stores the source checkpoint.
//!
//! # Why nothing is lost or duplicated
//! The checkpoint is stored only after the appends covering it returned, so the log
//! holds at least everything before it. After a crash or reconnect the source re-reads
//! from the checkpoint; the appender drops every change whose [`ChangeId`] is not
//! greater than the last one its partition already holds (or has buffered). Change ids
//! increase along the binlog, so what is dropped is exactly what is already there.
//!
//! # Metrics
//! Rows read are counted per run of (table, operation) and published per batch, not per
//! row; source time (commit times, heartbeats) feeds the lag gauge, which is computed
//! at scrape time so an idle or silent source cannot freeze it (see [`crate::metrics`]).

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rowlog_api::{
    ChangeEvent, ChangeId, ChangeSource, Gtid, Op, ResumePoint, Retry, SourceEvent, TableSchema,
};
use tokio::sync::oneshot;
use tracing::{info, warn};

use super::backoff::Backoff;
use super::budget;
use super::partitioner::{key_hash, partition_of};
use super::Stats;
use crate::log::{AppendBatch, LogEntry, LogError, PartitionedLog};
use crate::metrics::{ErrorStage, Metrics};
use crate::report::error_chain;
use crate::resnapshot::{Chunk, Resnapshot, ResnapshotError};
use crate::shutdown::Shutdown;
use crate::status::ErrorReport;

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("source failed")]
    Source(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("log append failed")]
    Log(#[from] LogError),
}

#[derive(Clone, Debug)]
pub struct IngestConfig {
    /// At most this many changes per durable append.
    pub max_batch_changes: usize,
    /// How often the checkpoint is stored while changes flow.
    pub checkpoint_interval: Duration,
    /// Capacity of the reader → appender channel, in events.
    pub channel_capacity: usize,
    /// Bytes the channel and the batch being appended hold at most; a batch closes at
    /// half of it, so the reader fills the other half meanwhile.
    pub buffer_max_bytes: usize,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            max_batch_changes: 10_000,
            checkpoint_interval: Duration::from_millis(200),
            channel_capacity: 8_192,
            // 8,192 events of 200 bytes hold under 2 MiB: only wide rows reach it.
            buffer_max_bytes: 32 << 20,
        }
    }
}

/// Runs ingest until shutdown or a definite error. `connect(resume)` opens the source
/// at a stored position, or at its configured start when `None`.
pub async fn run<L, S, F, Fut>(
    log: L,
    connect: F,
    cfg: IngestConfig,
    stats: Arc<Stats>,
    metrics: Arc<Metrics>,
    shutdown: Shutdown,
    resnapshot: Option<Resnapshot>,
) -> Result<(), IngestError>
where
    L: PartitionedLog + Clone,
    S: ChangeSource + 'static,
    F: FnMut(Option<ResumePoint>) -> Fut + Send + 'static,
    Fut: Future<Output = Result<S, S::Error>> + Send + 'static,
{
    let checkpoint = log.checkpoint().await?;
    let start = checkpoint.map(|c| newer_epoch_than_the_log(&log, c.resume));
    let (tx, rx) = budget::channel(cfg.channel_capacity, cfg.buffer_max_bytes);
    let reader = tokio::spawn(read_source(
        connect,
        start.clone(),
        tx,
        resnapshot,
        metrics.clone(),
        shutdown.clone(),
    ));
    let appended = append_loop(log, rx, start, cfg, stats, metrics.clone()).await;
    // The appender only stops early on an error; then the reader must stop too.
    reader.abort();
    let read = match reader.await {
        Ok(r) => r,
        Err(e) if e.is_cancelled() => Ok(()),
        Err(e) => Err(IngestError::Source(Box::new(e))),
    };
    metrics.set_source_connected(false);
    appended.and(read)
}

/// The resume point to read from, in an epoch after every change the log holds.
///
/// The checkpoint lags the log by up to its interval, but a new epoch is checkpointed
/// before any of its changes is logged (`Appender::epoch_moved`). A log an older
/// rowlog wrote can still hold changes of a later epoch than the checkpoint (rowlog
/// moved to another server after the checkpoint, then stopped without storing one):
/// reading from the checkpoint in its
/// own epoch would make every change read sort before them and be dropped as already
/// logged: after a failback to the checkpoint's server, its new changes would be lost.
/// Which server the log's epoch belongs to is not recorded, so the re-read starts an
/// epoch of its own: its changes are logged again and applied again (upserts and
/// deletes by key are idempotent; a keyless table can get a row twice).
pub(crate) fn newer_epoch_than_the_log<L: PartitionedLog>(
    log: &L,
    mut resume: ResumePoint,
) -> ResumePoint {
    if let Some(logged) = log.last_epoch().filter(|&e| e > resume.epoch) {
        warn!(
            checkpoint_epoch = resume.epoch,
            log_epoch = logged,
            position = %resume.position,
            "the log holds changes of a later reading epoch than the checkpoint (rowlog moved to another server after its last checkpoint); reading from the checkpoint in a new epoch, so changes since then are logged and applied again"
        );
        resume.epoch = logged + 1;
    }
    resume
}

async fn read_source<S, F, Fut>(
    mut connect: F,
    mut resume: Option<ResumePoint>,
    tx: budget::Sender<Item>,
    mut resnapshot: Option<Resnapshot>,
    metrics: Arc<Metrics>,
    mut shutdown: Shutdown,
) -> Result<(), IngestError>
where
    S: ChangeSource,
    F: FnMut(Option<ResumePoint>) -> Fut,
    Fut: Future<Output = Result<S, S::Error>>,
{
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    // A re-snapshot chunk read and waiting for the stream to reach its position.
    let mut pending: Option<Pending> = None;
    loop {
        let connected = tokio::select! {
            _ = shutdown.wait() => return Ok(()),
            r = connect(resume.clone()) => r,
        };
        let mut source = match connected {
            Ok(s) => s,
            Err(e) if e.is_retryable() => {
                source_error(&metrics, &e, true);
                let delay = backoff.next_delay();
                warn!(error = %error_chain(&e), attempt = backoff.attempts(), retry_in_ms = delay.as_millis() as u64, "cannot reach the source; retrying");
                tokio::select! { _ = shutdown.wait() => return Ok(()), _ = tokio::time::sleep(delay) => {} }
                continue;
            }
            Err(e) => {
                source_error(&metrics, &e, false);
                return Err(IngestError::Source(Box::new(e)));
            }
        };
        metrics.set_source_connected(true);
        // A chunk read before the connection was lost waited for a stream that may
        // now come from another server, or in another epoch: its position compares
        // with nothing that follows. It is read again.
        if pending.take().is_some() {
            info!("the source connection was opened again; the waiting re-snapshot chunk is read again");
        }
        // The position the source starts at is a valid resume point: announce it so it
        // is checkpointed even before the first transaction (a restart must not fall
        // back to "current" and skip what was written in between).
        let start = source.resume_position().clone();
        resume = Some(start.clone());
        let announce = SourceEvent::Committed {
            resume: start,
            gtid: None,
            commit_time_ms: 0,
        };
        if tx.send(Item::Event(announce), 0).await.is_err() {
            return Ok(());
        }
        // Between transactions: where a re-snapshot chunk may enter the log.
        let mut at_boundary = true;
        loop {
            if let (true, Some(r), Some(job)) = (at_boundary, &resume, resnapshot.as_mut()) {
                match place_chunk(job, &mut pending, r, &tx, &mut shutdown).await {
                    Ok(Placed::Stop) => return Ok(()),
                    Ok(Placed::Again) => continue,
                    Ok(Placed::Wait) => {}
                    Err(e) if e.is_retryable() => {
                        // The stream goes on meanwhile; the chunk is tried again after a pause.
                        let delay = job.retry_later();
                        warn!(error = %error_chain(&e), retry_in_ms = delay.as_millis() as u64, "re-snapshot chunk failed; retrying");
                        pending = None;
                    }
                    Err(e) => {
                        job.fail(&e);
                        pending = None;
                    }
                }
            }
            let event = tokio::select! {
                biased;
                _ = shutdown.wait() => return Ok(()),
                ev = source.next_event() => ev,
            };
            match event {
                Ok(ev) => {
                    backoff.reset();
                    let read_at = match &ev {
                        SourceEvent::Committed { resume: r, .. } => {
                            resume = Some(r.clone());
                            at_boundary = true;
                            None
                        }
                        SourceEvent::Change(c) => Some(&c.source.id.event),
                        SourceEvent::Schema(s) => Some(&s.source.id.event),
                        SourceEvent::Heartbeat { .. } => None,
                    };
                    if let Some(at) = read_at {
                        at_boundary = false;
                        if let Some(p) = pending.as_mut() {
                            p.overtaken |= *at > p.chunk.floor;
                        }
                    }
                    let bytes = match &ev {
                        SourceEvent::Change(c) => c.approx_bytes(),
                        _ => 0,
                    };
                    if tx.send(Item::Event(ev), bytes).await.is_err() {
                        return Ok(());
                    }
                }
                Err(e) if e.is_retryable() => {
                    source_error(&metrics, &e, true);
                    metrics.set_source_connected(false);
                    metrics.source_reconnects.inc();
                    warn!(error = %error_chain(&e), resume = ?resume.as_ref().map(|p| p.to_string()), "source stream interrupted; reconnecting");
                    break;
                }
                Err(e) => {
                    source_error(&metrics, &e, false);
                    return Err(IngestError::Source(Box::new(e)));
                }
            }
        }
    }
}

/// What the reader hands the appender.
enum Item {
    Event(SourceEvent),
    /// Re-snapshot rows entering the log at the boundary `at` (the appender gives their
    /// change ids); `durable` is told once they are appended, or that they were refused.
    Injected {
        at: ResumePoint,
        changes: Vec<ChangeEvent>,
        durable: oneshot::Sender<Placement>,
    },
}

/// What became of re-snapshot rows handed to the appender.
#[derive(Debug, PartialEq)]
enum Placement {
    /// Appended: durable in the log.
    Durable,
    /// Refused, nothing appended: the change ids left at the boundary (from
    /// [`ChangeId::COPY_INDEX`] to `u32::MAX`) are fewer than the rows. Only a copy of
    /// more than 2³¹ rows at one boundary (an idle source) gets here; at a later
    /// boundary the ids start again.
    NoRoom,
}

struct Pending {
    chunk: Chunk,
    /// A change after the chunk's position was read before the chunk could enter
    /// the log: it would land after newer changes, so it is read again.
    overtaken: bool,
}

enum Placed {
    /// Nothing to place yet: read on.
    Wait,
    /// Placed or dropped: look again before reading on.
    Again,
    /// Shutdown, or the appender is gone.
    Stop,
}

/// At a transaction boundary `at`: reads the next re-snapshot chunk when none waits,
/// and places the waiting one when the stream has reached its position.
async fn place_chunk(
    job: &mut Resnapshot,
    pending: &mut Option<Pending>,
    at: &ResumePoint,
    tx: &budget::Sender<Item>,
    shutdown: &mut Shutdown,
) -> Result<Placed, ResnapshotError> {
    if pending.is_none() {
        if !job.wants_chunk() {
            return Ok(Placed::Wait);
        }
        let chunk = tokio::select! {
            _ = shutdown.wait() => return Ok(Placed::Stop),
            c = job.next_chunk() => c?,
        };
        // A chunk from another server than the stream's (a failover whose stream has
        // not yet shown its new server, or a source.url that reaches several): its
        // position means nothing here. Read again after a pause (retryable).
        if at.server_id != chunk.server_id {
            return Err(ResnapshotError::OtherServer {
                table: chunk.table,
                chunk_server_id: chunk.server_id,
                stream_server_id: at.server_id,
            });
        }
        // The stream may already be past the chunk's position: on MariaDB a
        // transaction can reach the binlog (and rowlog) before a consistent read sees
        // it, and a row placed after such a change would undo it. Read again after a
        // pause (retryable): at once, the read would likely see the same.
        if at.position > chunk.floor {
            return Err(ResnapshotError::BehindStream {
                table: chunk.table,
                floor: chunk.floor,
                stream: at.position.clone(),
            });
        }
        *pending = Some(Pending {
            chunk,
            overtaken: false,
        });
    }
    let Some(mut p) = pending.take_if(|p| at.position >= p.chunk.floor) else {
        return Ok(Placed::Wait);
    };
    if p.overtaken {
        warn!(floor = %p.chunk.floor, chunk_server_id = p.chunk.server_id, stream_server_id = at.server_id,
              "the stream passed a re-snapshot chunk's position before it could be placed; reading the chunk again");
        return Ok(Placed::Again);
    }
    let (durable, appended) = oneshot::channel();
    let changes = std::mem::take(&mut p.chunk.changes);
    let bytes = changes.iter().map(ChangeEvent::approx_bytes).sum();
    let item = Item::Injected {
        at: at.clone(),
        // The rows move into the log; the chunk keeps only where it ends.
        changes,
        durable,
    };
    if tx.send(item, bytes).await.is_err() {
        return Ok(Placed::Stop);
    }
    let placed = tokio::select! {
        _ = shutdown.wait() => return Ok(Placed::Stop),
        r = appended => match r {
            Ok(placed) => placed,
            Err(_) => return Ok(Placed::Stop),
        },
    };
    if placed == Placement::NoRoom {
        return Err(ResnapshotError::NoRoom {
            table: p.chunk.table,
            position: at.position.clone(),
        });
    }
    job.chunk_durable(&p.chunk)?;
    Ok(Placed::Again)
}

fn source_error(metrics: &Metrics, e: &dyn std::error::Error, retryable: bool) {
    metrics.error(ErrorStage::Source, retryable);
    metrics.state.record_error(ErrorReport::new(
        ErrorStage::Source.as_str(),
        retryable,
        error_chain(e),
    ));
}

/// Rows read, counted per run of the same table and operation until published.
#[derive(Default)]
struct RowsRead {
    run: Option<(Arc<TableSchema>, Op, u64)>,
    /// Newest source commit time seen, ms.
    commit_time_ms: u64,
}

impl RowsRead {
    fn add(&mut self, table: &Arc<TableSchema>, op: Op, metrics: &Metrics) {
        match &mut self.run {
            Some((t, o, n)) if *o == op && (Arc::ptr_eq(t, table) || t.name == table.name) => {
                *n += 1
            }
            _ => {
                self.publish(metrics);
                self.run = Some((table.clone(), op, 1));
            }
        }
    }

    fn publish(&mut self, metrics: &Metrics) {
        if let Some((t, op, n)) = self.run.take() {
            metrics.source_rows_read(&t.name, op, n);
        }
    }
}

/// Recognises a transaction sent again from its start by another server.
///
/// A reconnect while a transaction is being read resumes from the last commit, so the
/// transaction comes again from its start. From the same server its changes have the
/// same ids and the id check drops those already held. From another server (a
/// failover) their positions, and so their ids, belong to a new epoch and sort after
/// everything held: only the GTID says they are the same changes. Under row-based
/// replication a server sends a transaction's rows in the order its origin wrote them,
/// so the first `held` changes of that GTID are the ones already held. Each held
/// change leaves a fingerprint (its key's hash and its operation) that a change sent
/// again must match: two servers that disagree on a transaction of one GTID (a split
/// brain) get their changes kept from the first that differs, with a warning, never
/// dropped. Kept in memory only: a crash after a failover resumes in the epoch
/// checkpointed at its start ([`Appender::epoch_moved`]), where the log's last ids drop
/// what it holds.
#[derive(Default)]
struct ResentByGtid {
    /// The transaction being read.
    open: Option<OpenTxn>,
    /// Transactions reconnects cut off, newest last. The new stream may send other
    /// transactions (other replication domains) before one of them, and be cut too.
    cut: Vec<OpenTxn>,
    /// The fingerprint buffer of the last transaction that committed, reused: one
    /// allocation per run, not one per transaction.
    spare: Vec<u64>,
}

struct OpenTxn {
    gtid: Gtid,
    /// Its changes held (appended or buffered), over every connection that sent it.
    held: u64,
    /// Its changes seen on this connection.
    seen: u64,
    /// The fingerprints of the first held changes, up to [`MAX_PRINTS`] (past them,
    /// the count alone decides).
    prints: Vec<u64>,
    /// A change sent again differed from the one held: nothing more is dropped.
    diverged: bool,
}

/// Bounds the fingerprints kept for one transaction: 8 MiB.
const MAX_PRINTS: usize = 1 << 20;
/// Bounds the cut-off transactions remembered: one per replication domain in flight.
const MAX_CUT: usize = 16;

impl ResentByGtid {
    /// Whether this change of transaction `gtid`, fingerprint `print`, is one already
    /// held.
    fn is_resent(&mut self, gtid: &Gtid, print: u64) -> bool {
        let t = match &mut self.open {
            Some(t) if t.gtid == *gtid => t,
            open => {
                let again = self
                    .cut
                    .iter()
                    .position(|t| t.gtid == *gtid)
                    .map(|i| self.cut.remove(i));
                open.insert(match again {
                    Some(t) => OpenTxn { seen: 0, ..t },
                    None => OpenTxn {
                        gtid: gtid.clone(),
                        held: 0,
                        seen: 0,
                        prints: std::mem::take(&mut self.spare),
                        diverged: false,
                    },
                })
            }
        };
        t.seen += 1;
        if !t.diverged && t.seen <= t.held {
            match t.prints.get((t.seen - 1) as usize) {
                Some(&held) if held != print => {
                    warn!(gtid = %t.gtid, change = t.seen, "a transaction sent again differs from the one logged (two servers disagree on this GTID): its changes from here on are logged too");
                    t.diverged = true;
                }
                _ => return true,
            }
        }
        t.held += 1;
        if t.prints.len() < MAX_PRINTS {
            t.prints.push(print);
        }
        false
    }

    /// A commit ends its transaction. A boundary without a GTID while a transaction is
    /// open is the start a (re)connection announces: that transaction was cut off.
    fn committed(&mut self, gtid: Option<&Gtid>) {
        match gtid {
            Some(g) => {
                if let Some(mut t) = self.open.take_if(|t| t.gtid == *g) {
                    t.prints.clear();
                    self.spare = t.prints;
                }
                self.cut.retain(|t| t.gtid != *g);
            }
            None => {
                if let Some(t) = self.open.take() {
                    if self.cut.len() == MAX_CUT {
                        self.cut.remove(0);
                    }
                    self.cut.push(t);
                }
            }
        }
    }
}

struct Appender<L> {
    log: L,
    partitions: u32,
    /// Last change id held (appended or buffered) per partition.
    last_ids: Vec<Option<ChangeId>>,
    resent: ResentByGtid,
    /// The newest resume point covered by what is buffered or appended.
    position: Option<ResumePoint>,
    stored: Option<ResumePoint>,
    stored_at: Instant,
    stats: Arc<Stats>,
    metrics: Arc<Metrics>,
    gtid: Option<Gtid>,
    rows: RowsRead,
    /// The position last published to the metrics (the info gauge is reset on change).
    published: Option<ResumePoint>,
}

impl<L: PartitionedLog> Appender<L> {
    /// Whether the source reads in a newer epoch than the stored checkpoint (another
    /// server after a failover, or `rowlog source reset`). Its positions compare with
    /// nothing the log holds, so until a checkpoint of the new epoch is stored, a
    /// restart would read its changes again in yet another epoch, where no id check
    /// can drop them. Stored before any change of the new epoch is appended, a
    /// restart resumes in the same epoch and drops what the log holds.
    fn epoch_moved(&self) -> bool {
        match (&self.position, &self.stored) {
            (Some(p), Some(s)) => p.epoch > s.epoch,
            (Some(_), None) => true,
            (None, _) => false,
        }
    }

    fn take(
        &mut self,
        item: Item,
        batch: &mut AppendBatch,
        durable: &mut Vec<oneshot::Sender<Placement>>,
    ) {
        match item {
            Item::Event(ev) => self.accept(ev, batch),
            Item::Injected {
                at,
                changes,
                durable: d,
            } => {
                // Ids at the boundary itself: after every change before it (earlier
                // events), before every change after it (later events), and after
                // what was injected at the same boundary before (even by an earlier
                // run of rowlog, hence from the log's own last ids).
                // Counted in u64: an index that saturated at u32::MAX would repeat,
                // and every row after the first at it would be dropped as a duplicate.
                let first = self
                    .last_ids
                    .iter()
                    .flatten()
                    .filter(|id| id.epoch == at.epoch && id.event == at.position)
                    .map(|id| u64::from(id.index) + 1)
                    .fold(u64::from(ChangeId::COPY_INDEX), u64::max);
                if first + changes.len() as u64 > 1 << 32 {
                    warn!(position = %at.position, rows = changes.len(), first_index = first,
                          "re-snapshot rows refused: too few change ids left at this boundary");
                    let _ = d.send(Placement::NoRoom);
                    return;
                }
                for (mut c, index) in changes.into_iter().zip(first..) {
                    c.source.id = ChangeId {
                        epoch: at.epoch,
                        event: at.position.clone(),
                        // Fits: checked above.
                        index: index as u32,
                    };
                    c.source.txn_start = at.position.clone();
                    self.accept(SourceEvent::Change(c), batch);
                }
                durable.push(d);
            }
        }
    }

    fn accept(&mut self, ev: SourceEvent, batch: &mut AppendBatch) {
        match ev {
            SourceEvent::Change(c) => {
                Stats::add(&self.stats.source_changes, 1);
                self.rows.add(&c.table, c.op, &self.metrics);
                self.rows.commit_time_ms = self.rows.commit_time_ms.max(c.source.commit_time_ms);
                let routing = key_hash(&c.routing_key_bytes());
                let p = partition_of(routing, self.partitions) as usize;
                // Copied rows carry no GTID of their own transaction.
                let resent = match &c.source.gtid {
                    Some(g) if !c.source.id.is_copy() => {
                        // A table routed whole, or by part of its key, hashes less
                        // than its key: its key then tells its changes apart.
                        let key = if c.table.routes_by_whole_key() {
                            routing
                        } else {
                            key_hash(&c.key_bytes())
                        };
                        self.resent.is_resent(g, key.rotate_left(3) ^ c.op as u64)
                    }
                    _ => false,
                };
                if resent
                    || self.last_ids[p]
                        .as_ref()
                        .is_some_and(|last| c.source.id <= *last)
                {
                    Stats::add(&self.stats.duplicates_dropped, 1);
                    self.metrics.source_duplicates_dropped.inc();
                    return;
                }
                self.last_ids[p] = Some(c.source.id.clone());
                batch.partitions[p].push(LogEntry::Change(c));
            }
            SourceEvent::Schema(s) => {
                // Every partition gets the schema change at its place in source order:
                // the sink applies it once all partitions reached it (a barrier).
                let s = Arc::new(s);
                for (p, last) in self.last_ids.iter_mut().enumerate() {
                    if last.as_ref().is_some_and(|l| s.source.id <= *l) {
                        Stats::add(&self.stats.duplicates_dropped, 1);
                        continue;
                    }
                    *last = Some(s.source.id.clone());
                    batch.partitions[p].push(LogEntry::Schema(s.clone()));
                }
                info!(kind = s.kind.as_str(), position = %s.source.id.event, statement = %s.statement.chars().take(200).collect::<String>(), "schema change read");
            }
            SourceEvent::Committed {
                resume,
                gtid,
                commit_time_ms,
            } => {
                self.resent.committed(gtid.as_ref());
                self.metrics.source_commit(commit_time_ms);
                // Later in the stream: a later epoch, or a later position in this one.
                let later =
                    |p: &ResumePoint| (resume.epoch, &resume.position) > (p.epoch, &p.position);
                if self.position.as_ref().is_none_or(later) {
                    self.position = Some(resume);
                    if gtid.is_some() {
                        self.gtid = gtid;
                    }
                }
            }
            SourceEvent::Heartbeat { at_ms } => self.metrics.source_heartbeat(at_ms),
        }
    }

    async fn flush(&mut self, batch: AppendBatch, checkpoint: bool) -> Result<(), LogError> {
        let n = batch.len() as u64;
        self.rows.publish(&self.metrics);
        self.metrics.source_change_time(self.rows.commit_time_ms);
        if n > 0 {
            let counts: Vec<usize> = batch.partitions.iter().map(Vec::len).collect();
            let began = Instant::now();
            // Errors are counted and reported by the daemon, which decides what they mean.
            self.log.append(batch).await?;
            self.metrics
                .appended(&counts, |p| self.log.end_offset(p), began.elapsed());
            Stats::add(&self.stats.appended, n);
        }
        if let Some(position) = &self.position {
            if self.published.as_ref() != Some(position) {
                self.metrics
                    .source_position(&position.position, self.gtid.as_ref());
                self.published = Some(position.clone());
            }
        }
        if checkpoint && self.position != self.stored {
            if let Some(position) = self.position.clone() {
                self.log.store_checkpoint(position.clone()).await?;
                self.stats.set_checkpoint(position.position.to_string());
                self.metrics.log_checkpoints.inc();
                self.metrics.state.set_checkpoint(&position.position);
                self.stored = Some(position);
                self.stored_at = Instant::now();
            }
        }
        Ok(())
    }
}

async fn append_loop<L: PartitionedLog>(
    log: L,
    mut rx: budget::Receiver<Item>,
    start: Option<ResumePoint>,
    cfg: IngestConfig,
    stats: Arc<Stats>,
    metrics: Arc<Metrics>,
) -> Result<(), IngestError> {
    let partitions = log.partitions();
    // What each partition already holds. After `rowlog source reset` or a resume on
    // another server the epoch has grown, so what is read then sorts after all of it.
    let last_ids = (0..partitions).map(|p| log.last_change(p)).collect();
    let mut app = Appender {
        log,
        partitions,
        last_ids,
        resent: ResentByGtid::default(),
        position: start.clone(),
        stored: start,
        stored_at: Instant::now(),
        stats,
        metrics,
        gtid: None,
        rows: RowsRead::default(),
        published: None,
    };
    let batch_max_bytes = cfg.buffer_max_bytes / 2;
    loop {
        let Some((first, mut held)) = rx.recv().await else {
            break;
        };
        let mut batch = AppendBatch::new(partitions);
        let mut durable = Vec::new();
        app.take(first, &mut batch, &mut durable);
        let mut taken = 1;
        // Injected rows are appended at once: the reader waits for them. A new epoch is
        // checkpointed before anything read after it.
        while taken < cfg.max_batch_changes
            && held.bytes() < batch_max_bytes
            && durable.is_empty()
            && !app.epoch_moved()
        {
            match rx.try_recv() {
                Ok((item, charge)) => {
                    held.merge(charge);
                    app.take(item, &mut batch, &mut durable);
                    taken += 1;
                }
                Err(_) => break,
            }
        }
        let checkpoint_due =
            app.stored_at.elapsed() >= cfg.checkpoint_interval || app.epoch_moved();
        app.flush(batch, checkpoint_due).await?;
        // In the log now: the reader may buffer as much again.
        drop(held);
        for d in durable {
            let _ = d.send(Placement::Durable);
        }
    }
    // The reader is gone (shutdown): everything received is appended; store the final checkpoint.
    app.flush(AppendBatch::new(partitions), true).await?;
    info!(checkpoint = %app.stats.checkpoint(), "ingest stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::{EmbeddedLog, PartitionReader};
    use crate::tools::bench_log::{change, schema};
    use rowlog_api::MariadbGtid;
    use std::sync::atomic::Ordering;

    fn gtid(domain: u32, seq: u64) -> Gtid {
        Gtid::MariaDb(MariadbGtid {
            domain,
            server: 1,
            seq,
        })
    }

    /// Change `k` of transaction `gtid`, read in `epoch` from a rows event at `pos`
    /// (another server has other positions).
    fn change_of(g: &Gtid, k: u64, epoch: u32, pos: u64) -> Item {
        row_of(g, k, g.sequence() * 100 + k, epoch, pos)
    }

    /// Change `k` of transaction `gtid`, to the row of key `key`.
    fn row_of(g: &Gtid, k: u64, key: u64, epoch: u32, pos: u64) -> Item {
        let mut c = change(&schema(), key);
        c.source.gtid = Some(g.clone());
        c.source.id.epoch = epoch;
        c.source.id.event.pos = pos;
        c.source.id.index = k as u32;
        Item::Event(SourceEvent::Change(c))
    }

    /// A place read in `epoch` (each on its own server).
    fn point(epoch: u32, pos: u64) -> ResumePoint {
        ResumePoint {
            position: format!("binlog.000001:{pos}").parse().unwrap(),
            gtid_state: None,
            server_id: 1 + epoch,
            epoch,
        }
    }

    fn committed(g: Option<&Gtid>, epoch: u32, pos: u64) -> Item {
        Item::Event(SourceEvent::Committed {
            resume: point(epoch, pos),
            gtid: g.cloned(),
            commit_time_ms: 1_700_000_000_000,
        })
    }

    /// A failover while a transaction is being read: the new server sends it again
    /// from its start, in a new epoch, after a transaction of another replication
    /// domain. The log holds each of its changes once (a keyless table would
    /// otherwise get the first ones twice), and nothing after it is dropped.
    #[tokio::test]
    async fn a_transaction_sent_again_by_another_server_is_logged_once() {
        let (t1, t2, other, t3) = (gtid(0, 1), gtid(0, 2), gtid(1, 9), gtid(0, 3));
        let mut items = vec![committed(None, 0, 4)];
        items.extend((0..3).map(|k| change_of(&t1, k, 0, 1000)));
        items.push(committed(Some(&t1), 0, 2000));
        // Three of t2's five changes, then the connection is lost.
        items.extend((0..3).map(|k| change_of(&t2, k, 0, 3000)));
        // Another server, in a new epoch, at its own positions.
        items.push(committed(None, 1, 500));
        items.push(change_of(&other, 0, 1, 600));
        items.push(committed(Some(&other), 1, 650));
        items.extend((0..5).map(|k| change_of(&t2, k, 1, 700)));
        items.push(committed(Some(&t2), 1, 800));
        items.extend((0..2).map(|k| change_of(&t3, k, 1, 900)));
        items.push(committed(Some(&t3), 1, 1000));

        let (logged, dropped) = logged_from(items).await;
        let want = [
            (1, 0, 0),
            (1, 1, 0),
            (1, 2, 0),
            (2, 0, 0),
            (2, 1, 0),
            (2, 2, 0),
            (2, 3, 1),
            (2, 4, 1),
            (3, 0, 1),
            (3, 1, 1),
            (9, 0, 1),
        ];
        assert_eq!(
            logged, want,
            "(transaction, change, epoch) of every logged change"
        );
        assert_eq!(dropped, 3);
    }

    /// A new epoch (the first place read on another server after a failover) is
    /// checkpointed before any change read after it is appended, however far off the
    /// next checkpoint by interval is: a crash then resumes in the same epoch, where
    /// the log's ids drop what it holds.
    #[tokio::test]
    async fn a_new_epoch_is_checkpointed_before_anything_read_in_it() {
        let dir = tempfile::tempdir().unwrap();
        let log = EmbeddedLog::open(dir.path(), 4, 1 << 20).unwrap();
        let (t1, t2) = (gtid(0, 1), gtid(0, 2));
        let (tx, rx) = budget::channel(64, 1 << 20);
        let cfg = IngestConfig {
            checkpoint_interval: Duration::from_secs(3600),
            ..IngestConfig::default()
        };
        let looping = tokio::spawn(append_loop(
            log.clone(),
            rx,
            Some(point(0, 4)),
            cfg,
            Arc::new(Stats::default()),
            Arc::new(Metrics::new(4, Duration::from_secs(60))),
        ));
        let mut items: Vec<Item> = (0..3).map(|k| change_of(&t1, k, 0, 1000)).collect();
        items.push(committed(Some(&t1), 0, 2000));
        items.push(committed(None, 1, 500));
        items.extend((0..3).map(|k| change_of(&t2, k, 1, 700)));
        items.push(committed(Some(&t2), 1, 800));
        for item in items {
            tx.send(item, 0).await.unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        let stored = loop {
            let cp = log.checkpoint().await.unwrap();
            if cp.as_ref().is_some_and(|c| c.resume.epoch == 1) || Instant::now() > deadline {
                break cp;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let stored = stored.expect("a checkpoint was stored within 10 s");
        assert_eq!(
            (stored.resume.epoch, stored.resume.position.pos),
            (1, 500),
            "the new epoch's first place, stored without waiting for the interval"
        );
        assert_eq!(
            stored.ends.iter().sum::<u64>(),
            3,
            "stored when only the changes before the new epoch were appended"
        );
        drop(tx);
        looping.await.unwrap().unwrap();
        let cp = log.checkpoint().await.unwrap().unwrap();
        let logged: u64 = (0..4).map(|p| log.end_offset(p)).sum();
        assert_eq!(logged, 6);
        assert_eq!(
            (
                cp.ends.iter().sum::<u64>(),
                cp.resume.epoch,
                cp.resume.position.pos
            ),
            (6, 1, 800),
            "the final checkpoint covers both epochs' changes"
        );
    }

    /// A log an older rowlog left holding changes of a later epoch than its checkpoint:
    /// the reader starts an epoch after them, so nothing it reads is taken for them.
    #[tokio::test]
    async fn a_checkpoint_older_than_the_log_is_read_in_an_epoch_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let log = EmbeddedLog::open(dir.path(), 4, 1 << 20).unwrap();
        let (tx, rx) = budget::channel(4, 1 << 20);
        tx.send(committed(None, 2, 4), 0).await.unwrap();
        tx.send(change_of(&gtid(0, 1), 0, 2, 100), 0).await.unwrap();
        drop(tx);
        append_all(&log, rx).await;
        assert_eq!(newer_epoch_than_the_log(&log, point(1, 4)).epoch, 3);
        assert_eq!(
            newer_epoch_than_the_log(&log, point(2, 4)).epoch,
            2,
            "a checkpoint of the log's own epoch is read in it"
        );
    }

    /// Two servers that disagree on a transaction of one GTID (a split brain): the
    /// second sends other rows under it. What matches what the log holds is dropped;
    /// from the first change that differs, everything is logged.
    #[tokio::test]
    async fn a_transaction_sent_again_with_other_rows_keeps_them() {
        let t = gtid(0, 5);
        let mut items = vec![committed(None, 0, 4)];
        items.extend((0..3).map(|k| change_of(&t, k, 0, 1000)));
        items.push(committed(None, 1, 500));
        items.push(change_of(&t, 0, 1, 700));
        items.extend((1..4).map(|k| row_of(&t, k, 9_000 + k, 1, 700)));
        items.push(committed(Some(&t), 1, 800));

        let (logged, dropped) = logged_from(items).await;
        let want = [
            (5, 0, 0),
            (5, 1, 0),
            (5, 1, 1),
            (5, 2, 0),
            (5, 2, 1),
            (5, 3, 1),
        ];
        assert_eq!(
            logged, want,
            "(transaction, change, epoch) of every logged change"
        );
        assert_eq!(dropped, 1, "only the change that matches is dropped");
    }

    /// Re-snapshot rows at a boundary whose change ids are nearly used up (a copy of
    /// 2³¹ rows there, on an idle source): a chunk with more rows than ids left is
    /// refused whole, so the reader reads it again at a later boundary; before, every
    /// row past the last id was dropped as a duplicate of it. A chunk that fits is
    /// appended.
    #[tokio::test]
    async fn copied_rows_past_the_ids_left_at_a_boundary_are_refused_not_dropped() {
        let dir = tempfile::tempdir().unwrap();
        // One partition: every row would compare with the last copied id.
        let log = EmbeddedLog::open(dir.path(), 1, 1 << 20).unwrap();
        let at = point(0, 700);
        let (tx, rx) = budget::channel(8, 1 << 20);
        let looping = tokio::spawn({
            let log = log.clone();
            async move { append_all(&log, rx).await }
        });
        tx.send(committed(None, 0, 700), 0).await.unwrap();
        // The boundary's second-to-last id is taken.
        let mut copied = change(&schema(), 1);
        copied.source.id = ChangeId {
            epoch: 0,
            event: at.position.clone(),
            index: u32::MAX - 1,
        };
        tx.send(Item::Event(SourceEvent::Change(copied)), 0)
            .await
            .unwrap();
        let inject = |keys: std::ops::Range<u64>| {
            let (durable, placed) = oneshot::channel();
            let item = Item::Injected {
                at: at.clone(),
                changes: keys.map(|k| change(&schema(), k)).collect(),
                durable,
            };
            (item, placed)
        };
        let (three, placed) = inject(10..13);
        tx.send(three, 0).await.unwrap();
        assert_eq!(
            placed.await.unwrap(),
            Placement::NoRoom,
            "three rows, one id left"
        );
        let (one, placed) = inject(20..21);
        tx.send(one, 0).await.unwrap();
        assert_eq!(
            placed.await.unwrap(),
            Placement::Durable,
            "one row, one id left"
        );
        drop(tx);
        let stats = looping.await.unwrap();

        let mut r = log.reader(0, 0).await.unwrap();
        let got = r.next_batch(100).await.unwrap();
        let ids: Vec<u32> = got
            .iter()
            .filter_map(|rec| match &rec.entry {
                LogEntry::Change(c) => Some(c.source.id.index),
                LogEntry::Schema(_) => None,
            })
            .collect();
        assert_eq!(
            ids,
            [u32::MAX - 1, u32::MAX],
            "the planted row and the one that fit"
        );
        assert_eq!(stats.duplicates_dropped.load(Ordering::Relaxed), 0);
    }

    /// Runs the append loop with default settings from no checkpoint until `rx` ends.
    async fn append_all(log: &EmbeddedLog, rx: budget::Receiver<Item>) -> Arc<Stats> {
        let stats = Arc::new(Stats::default());
        let metrics = Arc::new(Metrics::new(4, Duration::from_secs(60)));
        append_loop(
            log.clone(),
            rx,
            None,
            IngestConfig::default(),
            stats.clone(),
            metrics,
        )
        .await
        .unwrap();
        stats
    }

    /// Runs the append loop over `items` into a fresh 4-partition log; returns
    /// (GTID sequence, change index, epoch) of every change logged, sorted, and the
    /// count of changes dropped as duplicates.
    async fn logged_from(items: Vec<Item>) -> (Vec<(u64, u32, u32)>, u64) {
        let dir = tempfile::tempdir().unwrap();
        let log = EmbeddedLog::open(dir.path(), 4, 1 << 20).unwrap();
        let (tx, rx) = budget::channel(items.len(), 1 << 20);
        for item in items {
            tx.send(item, 0).await.unwrap();
        }
        drop(tx);
        let stats = append_all(&log, rx).await;

        let mut logged = Vec::new();
        for p in 0..4 {
            let mut r = log.reader(p, 0).await.unwrap();
            let mut read = 0;
            while read < log.end_offset(p) {
                let got = r.next_batch(100).await.unwrap();
                read += got.len() as u64;
                for rec in got {
                    if let LogEntry::Change(c) = rec.entry {
                        let g = c.source.gtid.clone().unwrap();
                        logged.push((g.sequence(), c.source.id.index, c.source.id.epoch));
                    }
                }
            }
        }
        logged.sort();
        (logged, stats.duplicates_dropped.load(Ordering::Relaxed))
    }
}
