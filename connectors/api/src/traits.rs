//! The two seams a connector implements. Both are deliberately small: the pipeline owns
//! ordering, batching across partitions, durability and offsets; connectors only read
//! and apply.

use std::future::Future;

use crate::{ChangeEvent, ChangeId, Gtid, ResumePoint, SchemaChange, SchemaChangePolicy};

/// Whether an error may go away by itself (lost connection, deadlock, lock wait timeout)
/// or is definite (bad config, purged binlog, a value the destination rejects).
pub trait Retry {
    fn is_retryable(&self) -> bool;

    /// Whether the error says this process may no longer apply the pipeline's changes
    /// (another process owns the pipeline now): nothing more may be applied, neither
    /// by retrying nor change by change, and the pipeline stops.
    fn is_fenced(&self) -> bool {
        false
    }
}

/// What a source yields, in source order.
#[derive(Debug, Clone)]
pub enum SourceEvent {
    Change(ChangeEvent),
    /// A DDL statement on replicated tables; a `Committed` follows it.
    Schema(SchemaChange),
    /// A transaction or standalone statement ended. Every change before this event
    /// belongs to it or an earlier one; restarting at `resume` repeats nothing before it.
    Committed {
        resume: ResumePoint,
        gtid: Option<Gtid>,
        commit_time_ms: u64,
    },
    /// The source is idle; `at_ms` is the server's clock as of the heartbeat.
    Heartbeat {
        at_ms: u64,
    },
}

/// A stream of changes from a database.
pub trait ChangeSource: Send {
    type Error: std::error::Error + Retry + Send + Sync + 'static;

    /// The next event. Cancel-safe only between events: the pipeline awaits it in a
    /// `select!` with shutdown and then drops the source.
    fn next_event(&mut self) -> impl Future<Output = Result<SourceEvent, Self::Error>> + Send;

    /// Where a restart would resume: the end of the last complete transaction read (or
    /// the start position, before any).
    fn resume_position(&self) -> &ResumePoint;
}

/// The position a sink worker reached, stored by the sink in the same destination
/// transaction as the data it covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerProgress {
    /// The log these offsets belong to: offsets of another log are meaningless here.
    pub log_id: u64,
    pub partition: u32,
    pub worker: u32,
    /// How many workers the partition was split over when this was written: per-worker
    /// offsets are only comparable under the same split.
    pub workers: u32,
    /// The log offset of the last change this worker applied.
    pub offset: u64,
}

/// Everything a partition's workers stored on the destination.
pub type SinkProgress = Vec<WorkerProgress>;

/// One batch for one worker: changes in log order, all of the same partition.
pub struct ApplyBatch<'a> {
    pub changes: &'a [ChangeEvent],
    pub progress: WorkerProgress,
}

/// A destination connection owned by one worker.
pub trait ChangeSink: Send {
    type Error: std::error::Error + Retry + Send + Sync + 'static;

    /// Applies the batch and records `batch.progress`, both in one destination
    /// transaction: after a crash either both are there or neither is.
    fn apply(
        &mut self,
        batch: ApplyBatch<'_>,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// Runs `inside` (a write outside the destination, such as the log's committed
    /// offset) only while this process holds the pipeline's lease, and holds the lease
    /// against a process taking it over until `inside` ends; an error that says
    /// [`Retry::is_fenced`] when the lease is gone, and then `inside` does not run. A
    /// sink without a lease runs it as it is.
    fn while_fenced<T: Send>(
        &mut self,
        inside: impl Future<Output = T> + Send,
    ) -> impl Future<Output = Result<T, Self::Error>> + Send;

    /// Whether the schema change `id` is recorded as applied on the destination.
    fn schema_change_applied(
        &mut self,
        id: &ChangeId,
    ) -> impl Future<Output = Result<bool, Self::Error>> + Send;

    /// Under [`SchemaChangePolicy::Apply`] runs a schema change on the destination and
    /// records it as applied; under [`SchemaChangePolicy::Ignore`] only records it as
    /// passed (so partitions that meet it again after a restart do not wait for ones
    /// that are past it). DDL commits on its own, so a crash can fall between running
    /// it and recording it; an error saying the change is already in place (the table
    /// or column exists, the dropped one is gone) therefore counts as applied, as it
    /// also does when the destination was prepared by hand. A statement that would
    /// succeed a second time and do more (a table swap, an unnamed index) must be
    /// made to tell that it ran.
    fn apply_schema_change(
        &mut self,
        change: &SchemaChange,
        policy: SchemaChangePolicy,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// The progress rows stored for `partition`.
    fn load_progress(
        &mut self,
        partition: u32,
    ) -> impl Future<Output = Result<SinkProgress, Self::Error>> + Send;

    /// Replaces the progress rows of `partition`, in one transaction: afterwards each
    /// worker resumes after `rows[w].offset`; no rows means "from the log's committed
    /// offset".
    fn set_progress(
        &mut self,
        partition: u32,
        rows: &[WorkerProgress],
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// Removes these progress rows of `partition` (each matched by its log, worker
    /// count and worker, whatever offset it holds now), in one transaction.
    fn forget_progress(
        &mut self,
        partition: u32,
        rows: &[WorkerProgress],
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// Stores these progress rows of `partition`, in one transaction, each only where
    /// it says more than the row already there: a stored offset never goes down. For
    /// rows that are true of every worker (everything below a run's start is applied),
    /// written where a worker may have none.
    fn raise_progress(
        &mut self,
        partition: u32,
        rows: &[WorkerProgress],
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;
}
