//! The partitioned log between source and sink.
//!
//! Every change is appended to one partition chosen by its key (see
//! [`crate::pipeline::partitioner`]), so all changes of a key stay in order in that
//! partition. The log is behind the small [`PartitionedLog`] trait — append a batch,
//! read a partition from an offset, get/set a consumer's committed offset, store the
//! source checkpoint — so the embedded on-disk log and a Kafka backend can run under
//! the same pipeline and the same tests.
//!
//! # Durability contract
//! * [`PartitionedLog::append`] returns only when the batch is durable (per the
//!   configured fsync policy); readers never see records that are not yet durable.
//! * [`PartitionedLog::store_checkpoint`] is called only after the appends it covers
//!   returned; after a crash the source resumes from the stored checkpoint and the
//!   pipeline drops changes a partition already holds ([`PartitionedLog::last_change`]).
//! * Offsets are dense per partition: 0, 1, 2, … with no gaps.

mod append;
pub(crate) mod atomic_file;
mod codec;
mod durable_end;
mod embedded;
pub mod frame;
mod index;
pub mod kafka;
mod partition;
pub mod record;
mod schemas;
mod verify;

use std::future::Future;
use std::path::PathBuf;

use std::sync::Arc;

use rowlog_api::{ChangeEvent, ChangeId, ResumePoint, Retry, SchemaChange, SourceMeta};
use serde::{Deserialize, Serialize};

pub use embedded::{
    EmbeddedLog, EmbeddedReader, FsyncPolicy, PartitionInfo, Retention, RetentionReport,
};
pub use kafka::{KafkaLog, KafkaReader, KafkaSettings, STAMP_LAG_MAX_MS};
pub use schemas::SchemaStore;
pub use verify::{verify, VerifyReport};

/// What a log record holds: a row change (in its key's partition), or a schema change
/// (in every partition, at its place in the source order: a barrier for the sink).
#[derive(Debug, Clone)]
pub enum LogEntry {
    Change(ChangeEvent),
    Schema(Arc<SchemaChange>),
}

impl LogEntry {
    /// Where and when the entry was read from the source.
    pub fn source(&self) -> &SourceMeta {
        match self {
            LogEntry::Change(c) => &c.source,
            LogEntry::Schema(s) => &s.source,
        }
    }
}

impl From<ChangeEvent> for LogEntry {
    fn from(c: ChangeEvent) -> Self {
        LogEntry::Change(c)
    }
}

/// An entry as read back from the log, with its offset in its partition.
#[derive(Debug, Clone)]
pub struct LogRecord {
    pub offset: u64,
    pub entry: LogEntry,
}

/// Entries to append, grouped by partition (index = partition number), each group in
/// source order.
#[derive(Debug)]
pub struct AppendBatch {
    pub partitions: Vec<Vec<LogEntry>>,
}

impl AppendBatch {
    pub fn new(partitions: u32) -> Self {
        Self {
            partitions: (0..partitions).map(|_| Vec::new()).collect(),
        }
    }
    pub fn len(&self) -> usize {
        self.partitions.iter().map(Vec::len).sum()
    }
    pub fn is_empty(&self) -> bool {
        self.partitions.iter().all(Vec::is_empty)
    }
}

/// Where the source resumes, and how far each partition was durable when it was taken.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceCheckpoint {
    pub resume: ResumePoint,
    /// Durable end offset of each partition when the checkpoint was stored. On open, a
    /// partition found shorter than this has lost acknowledged records: a hard error.
    pub ends: Vec<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("log I/O failed: {action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("log file {path} is corrupt at byte {byte}: {detail}")]
    Corrupt {
        path: PathBuf,
        byte: u64,
        detail: String,
    },
    #[error("log partition {partition} ends at offset {found}, but offsets up to {expected} were acknowledged durable; the log directory was damaged or partly restored")]
    LostAcknowledged {
        partition: u32,
        expected: u64,
        found: u64,
    },
    #[error("log.partitions is {configured} but the log at {dir} was created with {existing}; changing it would break per-key order. Use the old value, or a new log.dir with a fresh start")]
    PartitionCountMismatch {
        dir: PathBuf,
        configured: u32,
        existing: u32,
    },
    #[error("log partition {partition} refuses writes after an earlier failed write ({cause}); restart rowlog to recover the partition")]
    Failed { partition: u32, cause: String },
    #[error("Kafka topic {checkpoint_topic} is empty but {topic} holds {held} records: the log's identity and source checkpoint are gone (deleted, or expired by the topic's retention). Restore that topic, or start over deliberately with another kafka.topic")]
    IdentityLost {
        topic: String,
        checkpoint_topic: String,
        held: u64,
    },
    #[error(
        "offset {requested} is out of range for log partition {partition} (records {start}..{end})"
    )]
    OffsetOutOfRange {
        partition: u32,
        requested: u64,
        start: u64,
        end: u64,
    },
    #[error("log partition {partition} does not exist (the log has {partitions})")]
    NoSuchPartition { partition: u32, partitions: u32 },
    #[error("log record at partition {partition} offset {offset} cannot be decoded: {detail}")]
    Decode {
        partition: u32,
        offset: u64,
        detail: String,
    },
    #[error("Kafka {action} failed (topic {topic})")]
    Kafka {
        action: &'static str,
        topic: String,
        /// The broker or network recovers from it (a broker away, a leader moving).
        retryable: bool,
        // Boxed: librdkafka's error is large, and every log result carries its size.
        #[source]
        source: Box<rdkafka::error::KafkaError>,
    },
    #[error("Kafka topic {topic}: {what} makes a message of {bytes} bytes, over the producer's message.max.bytes ({limit}; the message carries the row twice, as Debezium-shaped JSON and as rowlog's record). Raise kafka.properties.\"message.max.bytes\" and the topic's max.message.bytes on the broker, then start rowlog again: it goes on from this change")]
    MessageTooLarge {
        topic: String,
        what: String,
        bytes: usize,
        limit: usize,
    },
    #[error("Kafka topic {topic} has {existing} partitions but log.partitions is {configured}; a different count would break per-key order. Use the old value, or another kafka.topic")]
    TopicPartitions {
        topic: String,
        configured: u32,
        existing: u32,
    },
    #[error("another rowlog process holds the log at {dir} ({detail})")]
    Locked { dir: PathBuf, detail: String },
}

/// `map_err` helper: an I/O failure of `action` on `path`.
pub(crate) fn io(
    action: &'static str,
    path: &std::path::Path,
) -> impl FnOnce(std::io::Error) -> LogError {
    let path = path.to_path_buf();
    move |source| LogError::Io {
        action,
        path,
        source,
    }
}

impl LogError {
    fn is_disk_full(&self) -> bool {
        matches!(self, LogError::Io { source, .. } if source.raw_os_error() == Some(28 /* ENOSPC */))
    }
}

impl Retry for LogError {
    /// A full disk empties again and a broker comes back; everything else needs an operator.
    fn is_retryable(&self) -> bool {
        self.is_disk_full()
            || matches!(
                self,
                LogError::Kafka {
                    retryable: true,
                    ..
                }
            )
    }
}

/// Reads one partition in offset order.
pub trait PartitionReader: Send {
    /// Up to `max` records from the reader's position, waiting until at least one is
    /// durable. Cancel-safe: a cancelled call consumes nothing.
    fn next_batch(
        &mut self,
        max: usize,
    ) -> impl Future<Output = Result<Vec<LogRecord>, LogError>> + Send {
        self.next_batch_within(max, usize::MAX)
    }

    /// As [`next_batch`](Self::next_batch), and the batch ends once its records' stored
    /// bytes reach `max_bytes` (the first record always comes, whatever its size).
    fn next_batch_within(
        &mut self,
        max: usize,
        max_bytes: usize,
    ) -> impl Future<Output = Result<Vec<LogRecord>, LogError>> + Send;
}

pub trait PartitionedLog: Send + Sync + 'static {
    type Reader: PartitionReader + 'static;

    fn partitions(&self) -> u32;

    /// An identity fixed when the log was created; stored with the sink's progress so
    /// offsets of one log are never applied against another.
    fn log_id(&self) -> u64;

    /// Appends the batch; returns when every record is durable.
    fn append(&self, batch: AppendBatch) -> impl Future<Output = Result<(), LogError>> + Send;

    /// A reader of `partition` starting at offset `from`.
    fn reader(
        &self,
        partition: u32,
        from: u64,
    ) -> impl Future<Output = Result<Self::Reader, LogError>> + Send;

    /// One past the last durable record of `partition`: what readers can reach.
    fn end_offset(&self, partition: u32) -> u64;

    /// The first offset `partition` still holds (retention removes older records).
    fn start_offset(&self, partition: u32) -> impl Future<Output = Result<u64, LogError>> + Send;

    /// The first offset of `partition` whose source commit time is ≥ `time_ms`; the
    /// end offset when there is none.
    fn offset_for_time(
        &self,
        partition: u32,
        time_ms: u64,
    ) -> impl Future<Output = Result<u64, LogError>> + Send;

    /// The source identity of the last durable change in `partition`.
    fn last_change(&self, partition: u32) -> Option<ChangeId>;

    /// The newest reading epoch of the partitions' last changes: whatever is read in a
    /// later epoch sorts after everything the log holds.
    fn last_epoch(&self) -> Option<u32> {
        (0..self.partitions())
            .filter_map(|p| self.last_change(p))
            .map(|id| id.epoch)
            .max()
    }

    /// The next offset `consumer` needs from `partition`, if it ever committed.
    fn committed(
        &self,
        consumer: &str,
        partition: u32,
    ) -> impl Future<Output = Result<Option<u64>, LogError>> + Send;

    /// Records that `consumer` has durably applied everything before `next`.
    fn commit(
        &self,
        consumer: &str,
        partition: u32,
        next: u64,
    ) -> impl Future<Output = Result<(), LogError>> + Send;

    fn checkpoint(&self)
        -> impl Future<Output = Result<Option<SourceCheckpoint>, LogError>> + Send;

    /// Stores where the source resumes. `resume` covers every change appended so far:
    /// the log stores it only once all of them are durable, with each partition's end.
    fn store_checkpoint(
        &self,
        resume: ResumePoint,
    ) -> impl Future<Output = Result<(), LogError>> + Send;

    /// Reads again what the log keeps in memory of its durable state (ends, last
    /// changes, checkpoint, schemas), which another process may have moved since the
    /// log was opened: a broker's topic is shared by the pipeline's daemons on other
    /// hosts, and one that waited for the pipeline's lease opened the topic before the
    /// holder's last appends. Called once the lease is held, before anything resumes.
    /// An embedded log is locked to one process: nothing to read again.
    fn reload(&self) -> impl Future<Output = Result<(), LogError>> + Send {
        std::future::ready(Ok(()))
    }
}
