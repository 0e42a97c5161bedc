//! The embedded on-disk log: rowlog's default, needing no external service.
//!
//! ```text
//! <log.dir>/
//!   log.meta                      partition count and log id (atomic file)
//!   lock                          held (flock) by the one process writing the log
//!   schemas.log                   schema versions, id = frame offset
//!   source.checkpoint             where the source resumes (atomic file)
//!   partitions/00000/{base:020}.log   segments of partition 0
//!   consumers/<name>/00000.offset     a consumer's committed offset (atomic file)
//! ```
//!
//! Appends are made durable with one fsync per partition per batch before
//! [`PartitionedLog::append`] returns; the pipeline batches many source changes into
//! one append, which is the group commit. Each partition is written and synced by its
//! own thread, which lives as long as the log (`append.rs`).

use std::collections::hash_map::RandomState;
use std::fs::{self, File, OpenOptions};
use std::hash::{BuildHasher, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::Duration;

use rowlog_api::ChangeId;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use rowlog_api::ResumePoint;
use tracing::info;

use super::append::AppendThreads;
use super::partition::{Cursor, Partition, SegmentInfo};
use super::{
    atomic_file, io, record, AppendBatch, LogEntry, LogError, LogRecord, PartitionReader,
    PartitionedLog, SchemaStore, SourceCheckpoint,
};

/// When appended records are made durable.
///
/// * `Batch` (default): every append is fsynced before it returns. A power failure
///   loses nothing that was appended.
/// * `Interval(d)`: appends return once written to the OS; a flusher fsyncs every `d`.
///   Readers (the sink) and the source checkpoint only ever see fsynced records, so a
///   power failure loses at most the last `d` of appended records, which the source
///   re-reads from its binlog (the checkpoint never passed them). A process crash
///   loses nothing (the OS still has the bytes). Costs up to `d` of extra latency;
///   saves fsyncs when appends are small and frequent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FsyncPolicy {
    Batch,
    Interval(Duration),
}

/// How much history to keep per partition. Zero means no limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Retention {
    pub max_bytes: u64,
    pub max_age: Duration,
    /// Delete even what a registered consumer has not committed; that consumer then
    /// gets an "offset out of range" error instead of silently skipping.
    pub force: bool,
}

/// What one retention pass removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RetentionReport {
    pub segments: usize,
    pub bytes: u64,
}

/// A partition's state, for tools and status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionInfo {
    pub partition: u32,
    pub start: u64,
    pub end: u64,
    pub bytes: u64,
    pub segments: usize,
    pub committed: Vec<(String, Option<u64>)>,
    pub fsyncs: u64,
}

const FORMAT: u32 = 1;

#[derive(Serialize, Deserialize)]
struct Meta {
    format: u32,
    partitions: u32,
    log_id: u64,
}

struct Inner {
    /// Declared first so it drops first: the append threads stop before the lock goes.
    /// None when opened read-only.
    appenders: Option<AppendThreads>,
    dir: PathBuf,
    log_id: u64,
    partitions: Vec<Arc<Partition>>,
    schemas: Arc<SchemaStore>,
    _lock: Option<File>,
}

/// A handle to the embedded log; clones share it.
#[derive(Clone)]
pub struct EmbeddedLog {
    inner: Arc<Inner>,
}

fn partition_dir(dir: &Path, p: u32) -> PathBuf {
    dir.join("partitions").join(format!("{p:05}"))
}

pub(super) fn new_log_id() -> u64 {
    let mut h = RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.write_u32(std::process::id());
    h.finish()
}

impl EmbeddedLog {
    /// Opens the log for writing with fsync per append batch.
    pub fn open(dir: &Path, partitions: u32, segment_bytes: u64) -> Result<Self, LogError> {
        Self::open_with(dir, partitions, segment_bytes, FsyncPolicy::Batch)
    }

    /// Whether a running rowlog holds the log at `dir` (its lock is taken).
    pub fn in_use(dir: &Path) -> bool {
        let Ok(lock) = OpenOptions::new().write(true).open(dir.join("lock")) else {
            return false;
        };
        // Dropping the file releases the lock this probe may have taken.
        lock.try_lock().is_err()
    }

    /// Takes `<dir>/lock` (creating `dir`): the one writer of what `dir` holds, until
    /// the returned file is dropped. With the Kafka backend `dir` holds rowlog's local
    /// state (snapshot progress, re-snapshot requests), and the same lock keeps a
    /// second daemon of the same config out.
    pub fn lock(dir: &Path) -> Result<File, LogError> {
        atomic_file::create_dir_durable(dir)?;
        let lock_path = dir.join("lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io("open", &lock_path))?;
        lock.try_lock().map_err(|e| LogError::Locked {
            dir: dir.to_path_buf(),
            detail: e.to_string(),
        })?;
        Ok(lock)
    }

    /// Opens the log for writing, creating it when the directory holds none, and
    /// recovers every partition's tail.
    pub fn open_with(
        dir: &Path,
        partitions: u32,
        segment_bytes: u64,
        fsync: FsyncPolicy,
    ) -> Result<Self, LogError> {
        let lock = Self::lock(dir)?;

        let meta_path = dir.join("log.meta");
        let meta = match atomic_file::read(&meta_path)? {
            Some(bytes) => {
                let meta: Meta = postcard::from_bytes(&bytes).map_err(|e| LogError::Corrupt {
                    path: meta_path.clone(),
                    byte: 0,
                    detail: e.to_string(),
                })?;
                if meta.partitions != partitions {
                    return Err(LogError::PartitionCountMismatch {
                        dir: dir.to_path_buf(),
                        configured: partitions,
                        existing: meta.partitions,
                    });
                }
                meta
            }
            None => {
                if dir.join("partitions").exists() {
                    return Err(LogError::Corrupt {
                        path: meta_path,
                        byte: 0,
                        detail: "missing while partitions exist; refusing to re-initialise a log with data".into(),
                    });
                }
                let meta = Meta {
                    format: FORMAT,
                    partitions,
                    log_id: new_log_id(),
                };
                let bytes = postcard::to_allocvec(&meta).map_err(|e| LogError::Corrupt {
                    path: meta_path.clone(),
                    byte: 0,
                    detail: e.to_string(),
                })?;
                atomic_file::write(&meta_path, &bytes)?;
                meta
            }
        };
        let log = Self::open_parts(dir, meta, segment_bytes, Some(lock), fsync)?;
        if let FsyncPolicy::Interval(every) = fsync {
            let weak = Arc::downgrade(&log.inner);
            std::thread::Builder::new()
                .name("rowlog-log-flusher".into())
                .spawn(move || flusher(weak, every))
                .map_err(io("start flusher", dir))?;
        }
        Ok(log)
    }

    /// Opens an existing log without writing to it (for tools beside a running daemon).
    pub fn open_read_only(dir: &Path) -> Result<Self, LogError> {
        let meta_path = dir.join("log.meta");
        let bytes = atomic_file::read(&meta_path)?.ok_or_else(|| LogError::Io {
            action: "open (no log here)",
            path: meta_path.clone(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        })?;
        let meta: Meta = postcard::from_bytes(&bytes).map_err(|e| LogError::Corrupt {
            path: meta_path,
            byte: 0,
            detail: e.to_string(),
        })?;
        Self::open_parts(dir, meta, u64::MAX, None, FsyncPolicy::Batch)
    }

    fn open_parts(
        dir: &Path,
        meta: Meta,
        segment_bytes: u64,
        lock: Option<File>,
        fsync: FsyncPolicy,
    ) -> Result<Self, LogError> {
        let writable = lock.is_some();
        let schemas = Arc::new(SchemaStore::open(&dir.join("schemas.log"), writable)?);
        let partitions = (0..meta.partitions)
            .map(|p| {
                Partition::open(&partition_dir(dir, p), p, segment_bytes, writable).map(Arc::new)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let appenders = if writable {
            Some(
                AppendThreads::start(&partitions, &schemas, fsync).map_err(|source| {
                    LogError::Io {
                        action: "start the append threads",
                        path: dir.to_path_buf(),
                        source,
                    }
                })?,
            )
        } else {
            None
        };
        let log = Self {
            inner: Arc::new(Inner {
                appenders,
                dir: dir.to_path_buf(),
                log_id: meta.log_id,
                partitions,
                schemas,
                _lock: lock,
            }),
        };
        // A read-only opener may scan while the writer moves on; only the writer's own
        // view at open is comparable with the checkpoint it stored.
        if let Some(cp) = log.read_checkpoint()?.filter(|_| writable) {
            for (p, &expected) in cp.ends.iter().enumerate() {
                let found = log.inner.partitions.get(p).map(|x| x.end()).unwrap_or(0);
                if found < expected {
                    return Err(LogError::LostAcknowledged {
                        partition: p as u32,
                        expected,
                        found,
                    });
                }
            }
        }
        Ok(log)
    }

    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    pub fn schemas(&self) -> &Arc<SchemaStore> {
        &self.inner.schemas
    }

    fn partition(&self, p: u32) -> Result<&Arc<Partition>, LogError> {
        self.inner
            .partitions
            .get(p as usize)
            .ok_or(LogError::NoSuchPartition {
                partition: p,
                partitions: self.inner.partitions.len() as u32,
            })
    }

    /// Segment base offsets of a partition.
    pub fn segments(&self, p: u32) -> Result<Vec<u64>, LogError> {
        Ok(self
            .partition(p)?
            .segments()
            .iter()
            .map(|s| s.base)
            .collect())
    }

    pub(crate) fn segment_infos(&self, p: u32) -> Result<Vec<SegmentInfo>, LogError> {
        Ok(self.partition(p)?.segments())
    }

    pub fn partition_count(&self) -> u32 {
        self.inner.partitions.len() as u32
    }

    pub(crate) fn partition_handle(&self, p: u32) -> Result<Arc<Partition>, LogError> {
        self.partition(p).cloned()
    }

    /// Consumers that ever committed an offset (they hold back retention).
    pub fn consumers(&self) -> Result<Vec<String>, LogError> {
        let dir = self.inner.dir.join("consumers");
        let mut out = Vec::new();
        match fs::read_dir(&dir) {
            Ok(entries) => {
                for e in entries {
                    let e = e.map_err(io("list", &dir))?;
                    if e.path().is_dir() {
                        out.push(e.file_name().to_string_lossy().into_owned());
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(LogError::Io {
                    action: "list",
                    path: dir,
                    source,
                })
            }
        }
        out.sort();
        Ok(out)
    }

    /// Replaces `source.checkpoint` atomically. Blocking.
    fn write_checkpoint(&self, cp: &SourceCheckpoint) -> Result<(), LogError> {
        let path = self.inner.dir.join("source.checkpoint");
        let bytes = postcard::to_allocvec(cp).map_err(|e| LogError::Corrupt {
            path: path.clone(),
            byte: 0,
            detail: e.to_string(),
        })?;
        atomic_file::write(&path, &bytes)
    }

    /// Every partition's offsets, size, segments and consumers' committed offsets.
    pub async fn info(&self) -> Result<Vec<PartitionInfo>, LogError> {
        let consumers = self.consumers()?;
        let mut out = Vec::new();
        for p in &self.inner.partitions {
            let mut committed = Vec::new();
            for c in &consumers {
                committed.push((c.clone(), self.committed(c, p.id).await?));
            }
            let segs = p.segments();
            out.push(PartitionInfo {
                partition: p.id,
                start: p.start(),
                end: p.end(),
                bytes: segs.iter().map(|s| s.bytes).sum(),
                segments: segs.len(),
                committed,
                fsyncs: p.fsyncs(),
            });
        }
        Ok(out)
    }

    /// Read-only openers: picks up what the writing process appended since.
    pub fn refresh(&self) -> Result<(), LogError> {
        for p in &self.inner.partitions {
            p.refresh()?;
        }
        Ok(())
    }

    pub fn fsyncs(&self, partition: u32) -> u64 {
        self.partition(partition).map(|p| p.fsyncs()).unwrap_or(0)
    }

    /// Deletes old sealed segments by size and age. Unless `force`, never deletes a
    /// record some registered consumer has not committed.
    pub async fn enforce_retention(
        &self,
        policy: Retention,
        now_ms: u64,
    ) -> Result<RetentionReport, LogError> {
        let mut report = RetentionReport::default();
        if policy.max_bytes == 0 && policy.max_age.is_zero() {
            return Ok(report);
        }
        let consumers = self.consumers()?;
        for p in &self.inner.partitions {
            let mut floor = u64::MAX;
            for c in &consumers {
                floor = floor.min(self.committed(c, p.id).await?.unwrap_or(0));
            }
            let segs = p.segments();
            let mut total: u64 = segs.iter().map(|s| s.bytes).sum();
            // Saturating: an absurd `max_age_secs` must mean "keep all", not wrap to "none".
            let max_age_ms = u64::try_from(policy.max_age.as_millis()).unwrap_or(u64::MAX);
            let age_limit = now_ms.saturating_sub(max_age_ms);
            let mut remove_below = p.start();
            for s in &segs[..segs.len().saturating_sub(1)] {
                let too_big = policy.max_bytes > 0 && total > policy.max_bytes;
                let too_old = !policy.max_age.is_zero() && s.max_time < age_limit;
                if !(too_big || too_old) || (!policy.force && s.end > floor) {
                    break;
                }
                total -= s.bytes;
                remove_below = s.end;
            }
            let (n, bytes) = p.remove_segments_below(remove_below)?;
            if n > 0 {
                info!(
                    partition = p.id,
                    segments = n,
                    bytes,
                    start = p.start(),
                    forced = policy.force,
                    "retention removed segments"
                );
            }
            report.segments += n;
            report.bytes += bytes;
        }
        Ok(report)
    }

    fn read_checkpoint(&self) -> Result<Option<SourceCheckpoint>, LogError> {
        let path = self.inner.dir.join("source.checkpoint");
        match atomic_file::read(&path)? {
            None => Ok(None),
            Some(bytes) => postcard::from_bytes(&bytes)
                .map(Some)
                .map_err(|e| LogError::Corrupt {
                    path,
                    byte: 0,
                    detail: e.to_string(),
                }),
        }
    }

    fn offset_path(&self, consumer: &str, p: u32) -> Result<PathBuf, LogError> {
        if consumer.is_empty()
            || !consumer
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return Err(LogError::Io {
                action: "name consumer",
                path: PathBuf::from(consumer),
                source: std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "consumer names use [A-Za-z0-9._-]",
                ),
            });
        }
        Ok(self
            .inner
            .dir
            .join("consumers")
            .join(consumer)
            .join(format!("{p:05}.offset")))
    }

    /// Appends the partitions of a batch, each on its own append thread.
    fn append_blocking(&self, batch: AppendBatch) -> Result<(), LogError> {
        let Some(appenders) = &self.inner.appenders else {
            return Err(LogError::Failed {
                partition: 0,
                cause: "opened read-only".into(),
            });
        };
        let work: Vec<(u32, Vec<LogEntry>)> = batch
            .partitions
            .into_iter()
            .enumerate()
            .filter(|(_, c)| !c.is_empty())
            .map(|(p, c)| (p as u32, c))
            .collect();
        appenders.append(work)
    }
}

impl PartitionedLog for EmbeddedLog {
    type Reader = EmbeddedReader;

    fn partitions(&self) -> u32 {
        self.inner.partitions.len() as u32
    }

    fn log_id(&self) -> u64 {
        self.inner.log_id
    }

    async fn append(&self, batch: AppendBatch) -> Result<(), LogError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.append_blocking(batch))
            .await
            .map_err(|e| LogError::Io {
                action: "append (task)",
                path: self.inner.dir.clone(),
                source: std::io::Error::other(e.to_string()),
            })?
    }

    async fn reader(&self, partition: u32, from: u64) -> Result<EmbeddedReader, LogError> {
        let p = self.partition(partition)?.clone();
        let (start, end) = (p.start(), p.end());
        if from > end || from < start {
            return Err(LogError::OffsetOutOfRange {
                partition,
                requested: from,
                start,
                end,
            });
        }
        Ok(EmbeddedReader {
            durable: p.subscribe(),
            partition: p,
            decoder: Decoder {
                schemas: self.inner.schemas.clone(),
                cached: None,
            },
            next: from,
            cursor: None,
        })
    }

    fn end_offset(&self, partition: u32) -> u64 {
        self.partition(partition).map(|p| p.end()).unwrap_or(0)
    }

    fn last_change(&self, partition: u32) -> Option<ChangeId> {
        self.partition(partition).ok().and_then(|p| p.last_change())
    }

    async fn start_offset(&self, partition: u32) -> Result<u64, LogError> {
        Ok(self.partition(partition)?.start())
    }

    async fn offset_for_time(&self, partition: u32, time_ms: u64) -> Result<u64, LogError> {
        // Reads at most one sparse index and a few KiB of one segment.
        self.partition(partition)?.offset_for_time(time_ms)
    }

    async fn committed(&self, consumer: &str, partition: u32) -> Result<Option<u64>, LogError> {
        let path = self.offset_path(consumer, partition)?;
        match atomic_file::read(&path)? {
            None => Ok(None),
            Some(b) if b.len() == 8 => Ok(Some(u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))),
            Some(b) => Err(LogError::Corrupt {
                path,
                byte: 0,
                detail: format!("{} bytes where 8 were expected", b.len()),
            }),
        }
    }

    async fn commit(&self, consumer: &str, partition: u32, next: u64) -> Result<(), LogError> {
        let path = self.offset_path(consumer, partition)?;
        tokio::task::spawn_blocking(move || {
            if let Some(dir) = path.parent() {
                atomic_file::create_dir_durable(dir)?;
            }
            atomic_file::write(&path, &next.to_le_bytes())
        })
        .await
        .map_err(|e| LogError::Io {
            action: "commit (task)",
            path: self.inner.dir.clone(),
            source: std::io::Error::other(e.to_string()),
        })?
    }

    async fn checkpoint(&self) -> Result<Option<SourceCheckpoint>, LogError> {
        self.read_checkpoint()
    }

    async fn store_checkpoint(&self, resume: ResumePoint) -> Result<(), LogError> {
        // The position covers everything appended so far: it may only be stored once
        // all of that is durable (immediate under the batch policy).
        let targets: Vec<(Arc<Partition>, u64)> = self
            .inner
            .partitions
            .iter()
            .map(|p| (p.clone(), p.written()))
            .collect();
        let ends: Vec<u64> = targets.iter().map(|(_, e)| *e).collect();
        if targets.iter().any(|(p, e)| p.end() < *e) {
            tokio::task::spawn_blocking(move || sync_all(&targets))
                .await
                .map_err(|e| LogError::Io {
                    action: "sync (task)",
                    path: self.inner.dir.clone(),
                    source: std::io::Error::other(e.to_string()),
                })??;
        }
        let cp = SourceCheckpoint { resume, ends };
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.write_checkpoint(&cp))
            .await
            .map_err(|e| LogError::Io {
                action: "checkpoint (task)",
                path: self.inner.dir.clone(),
                source: std::io::Error::other(e.to_string()),
            })?
    }
}

/// Syncs several partitions in parallel: their fsyncs overlap instead of queueing.
fn sync_all(targets: &[(Arc<Partition>, u64)]) -> Result<(), LogError> {
    if targets.len() <= 1 {
        return targets
            .iter()
            .try_for_each(|(p, end)| p.sync(*end).map(|_| ()));
    }
    std::thread::scope(|s| {
        let handles: Vec<_> = targets
            .iter()
            .map(|(p, end)| s.spawn(move || p.sync(*end)))
            .collect();
        handles.into_iter().try_for_each(|h| match h.join() {
            Ok(r) => r.map(|_| ()),
            Err(_) => Err(LogError::Failed {
                partition: u32::MAX,
                cause: "fsync thread panicked".into(),
            }),
        })
    })
}

/// The interval policy's flusher: fsyncs what was written, until the log is dropped.
fn flusher(log: Weak<Inner>, every: Duration) {
    loop {
        std::thread::sleep(every);
        let Some(inner) = log.upgrade() else { return };
        let targets: Vec<_> = inner
            .partitions
            .iter()
            .filter(|p| p.written() > p.end())
            .map(|p| (p.clone(), p.written()))
            .collect();
        if let Err(e) = sync_all(&targets) {
            tracing::error!(error = %crate::report::error_chain(&e), "log flusher cannot fsync");
        }
    }
}

pub struct EmbeddedReader {
    partition: Arc<Partition>,
    decoder: Decoder,
    durable: watch::Receiver<u64>,
    next: u64,
    cursor: Option<Cursor<Arc<Partition>>>,
}

/// Decodes a reader's records against the log's schemas.
struct Decoder {
    schemas: Arc<SchemaStore>,
    /// The last schema looked up: records of a partition mostly share one.
    cached: Option<(u32, Arc<rowlog_api::TableSchema>)>,
}

impl Decoder {
    fn decode(
        &mut self,
        partition: u32,
        offset: u64,
        payload: &[u8],
    ) -> Result<LogRecord, LogError> {
        let (schemas, cached) = (&self.schemas, &mut self.cached);
        let lookup = |id: u32| match cached {
            Some((cid, t)) if *cid == id => Some(t.clone()),
            _ => {
                let t = schemas.get(id)?;
                *cached = Some((id, t.clone()));
                Some(t)
            }
        };
        let entry = record::decode(payload, lookup).map_err(|detail| LogError::Decode {
            partition,
            offset,
            detail,
        })?;
        Ok(LogRecord { offset, entry })
    }
}

impl PartitionReader for EmbeddedReader {
    async fn next_batch_within(
        &mut self,
        max: usize,
        max_bytes: usize,
    ) -> Result<Vec<LogRecord>, LogError> {
        let end = loop {
            let end = *self.durable.borrow_and_update();
            if self.next < end {
                break end;
            }
            if self.durable.changed().await.is_err() {
                // The log was closed: nothing more will arrive.
                return Ok(Vec::new());
            }
        };
        let cursor = match &mut self.cursor {
            Some(c) => c,
            None => self
                .cursor
                .insert(Cursor::open(self.partition.clone(), self.next)?),
        };
        let n = (end - self.next).min(max.max(1) as u64);
        let mut out = Vec::with_capacity(n as usize);
        let (partition, decoder) = (self.partition.id, &mut self.decoder);
        let mut bytes = 0;
        let read = (0..n).try_for_each(|_| {
            if bytes >= max_bytes.max(1) {
                return Ok(());
            }
            let (offset, _, payload) = cursor.read_frame_in()?;
            bytes += payload.len();
            out.push(decoder.decode(partition, offset, payload)?);
            Ok::<_, LogError>(())
        });
        if let Err(e) = read {
            // The cursor has moved past records that are not handed out: a caller that
            // tries again reads from `self.next` through a new cursor.
            self.cursor = None;
            return Err(e);
        }
        // Read-ahead past the durable end stays: the partition's count of cuts tells
        // the cursor when bytes it holds were cut off (`Cursor::read_frame_in`).
        self.next = cursor.next;
        Ok(out)
    }
}
