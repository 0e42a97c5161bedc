//! The embedded log's append path: one long-lived thread per partition encodes, writes
//! and syncs that partition's share of each batch.
//!
//! Ordering: a partition's entries are only ever written by its own thread, one job at
//! a time, in the order the jobs were queued; an append sends at most one job per
//! partition and waits for every job before it returns, so one caller's batches never
//! interleave or reorder. Concurrent callers' jobs are written in queue order.
//! Durability: under [`FsyncPolicy::Batch`] a job reports success only after its
//! partition is synced. Jobs that queued while the thread was busy are written one
//! after the other and synced by one fsync (group commit); if that fsync fails, every
//! job it covered reports the failure. The append returns only when every job has
//! reported.
//!
//! Why threads that live with the log rather than one per append: starting and ending
//! a thread per partition per batch cost stack mappings (and the TLB shootdowns of
//! unmapping them) and a fresh allocator heap whose pages were then abandoned and
//! reclaimed. `rowlog bench log`, 8 partitions on 2 cores, seven alternating pairs
//! against threads per append: append/raw median 0.46 against 0.38, the process's CPU
//! median 2.75 against 2.96 s.

use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;

use super::embedded::FsyncPolicy;
use super::partition::Partition;
use super::{record, LogEntry, LogError, SchemaStore};

/// Encodes, writes and syncs one partition's entries.
struct Appender {
    partition: Arc<Partition>,
    schemas: Arc<SchemaStore>,
    fsync: FsyncPolicy,
    /// Started on first use: frees a batch while its fsync runs.
    freer: Option<Freer>,
}

impl Appender {
    /// Encodes and writes the entries (not yet synced); returns the written end.
    fn write(&self, entries: &[LogEntry]) -> Result<u64, LogError> {
        let p = self.partition.id;
        // Consecutive changes usually share one schema allocation: compare pointers
        // before hashing a whole schema (both Arcs are alive for the whole batch).
        let mut last: Option<(&Arc<rowlog_api::TableSchema>, u32)> = None;
        let encode = |i: usize, out: &mut Vec<u8>| -> Result<u64, LogError> {
            let e = &entries[i];
            let encoded = match e {
                LogEntry::Change(c) => {
                    let schema_id = match last {
                        Some((t, id)) if Arc::ptr_eq(t, &c.table) => id,
                        _ => {
                            let (id, _) = self.schemas.intern(&c.table)?;
                            last = Some((&c.table, id));
                            id
                        }
                    };
                    record::encode(schema_id, c, out)
                }
                LogEntry::Schema(s) => record::encode_schema_change(s, out),
            };
            encoded.map_err(|detail| LogError::Decode {
                partition: p,
                offset: self.partition.end(),
                detail,
            })?;
            Ok(e.source().commit_time_ms)
        };
        let id_of = |i: usize| entries.get(i).map(|e| e.source().id.clone());
        self.partition.write(entries.len(), encode, &id_of)
    }

    /// Writes each job's entries and, under the batch policy, syncs them all with one
    /// fsync (the group commit of appends that arrived together); frees the entries,
    /// then reports to each job.
    ///
    /// Freeing a batch of changes costs more CPU than encoding it (each row image and
    /// each long value is its own allocation, made on another thread), while fsync
    /// leaves the core idle. When the append has no more partitions than there are
    /// cores (`spare_cores`), nothing else would use the core during the fsync, so the
    /// entries are freed on a second thread meanwhile. With more partitions than cores
    /// their threads fill that idle time already, and a second thread each measured as
    /// more CPU, not less time (8 partitions on 2 cores: 530 against 405–475 ns of CPU
    /// per record).
    fn append(&mut self, jobs: Vec<Job>) {
        let mut written = None;
        let mut results = Vec::with_capacity(jobs.len());
        let mut batches = Vec::with_capacity(jobs.len());
        let mut entries = 0;
        let mut spare_cores = true;
        for job in jobs {
            let result = self.write(&job.entries);
            if let Ok(end) = result {
                written = Some(end);
            }
            entries += job.entries.len();
            spare_cores &= job.spare_cores;
            results.push((job.done, result.map(|_| ())));
            batches.push(job.entries);
        }
        let synced = match written {
            Some(end) if self.fsync == FsyncPolicy::Batch => {
                self.sync_freeing(end, batches, spare_cores && entries >= FREE_BESIDE_FROM)
            }
            _ => {
                drop(batches);
                Ok(())
            }
        };
        let p = self.partition.id;
        let mut sync_error = synced.err();
        for (done, result) in results {
            // A job whose write failed reports that; the others share the sync's
            // outcome (the first gets the error itself, the rest a copy).
            let result = result.and_then(|()| match sync_error.take() {
                Some(e) => {
                    let copy = same_error(&e, p);
                    sync_error = Some(copy);
                    Err(e)
                }
                None => Ok(()),
            });
            // The append gave up waiting only if it is gone itself.
            let _ = done.send((p, result));
        }
    }

    /// Syncs up to `end`, freeing `batches` on the second thread meanwhile when
    /// `beside`, else here first. The memory is back before this returns, so a
    /// backlog never holds more than the batches in flight.
    fn sync_freeing(
        &mut self,
        end: u64,
        batches: Vec<Vec<LogEntry>>,
        beside: bool,
    ) -> Result<(), LogError> {
        if !beside {
            drop(batches);
            return self.partition.sync(end).map(|_| ());
        }
        if self.freer.is_none() {
            self.freer = Freer::start(self.partition.id);
        }
        // Without the thread (it did not start, or is gone) the entries are freed
        // here, before the sync, as a small batch's are.
        let handed = match &self.freer {
            Some(f) => f.free(batches).is_ok(),
            None => false,
        };
        let synced = self.partition.sync(end);
        if !handed || !self.freer.as_ref().is_some_and(Freer::wait) {
            self.freer = None;
        }
        synced.map(|_| ())
    }
}

/// Handing a batch to the freeing thread costs a wake-up or two: smaller ones are freed
/// inline.
const FREE_BESIDE_FROM: usize = 512;

/// The error a sync gave one job, for another job of the same group.
fn same_error(e: &LogError, partition: u32) -> LogError {
    match e {
        LogError::Io {
            action,
            path,
            source,
        } => LogError::Io {
            action,
            path: path.clone(),
            // The OS error code itself, where there is one: it is what says "disk
            // full", which the source pauses on instead of stopping.
            source: match source.raw_os_error() {
                Some(code) => std::io::Error::from_raw_os_error(code),
                None => std::io::Error::new(source.kind(), source.to_string()),
            },
        },
        LogError::Failed { partition, cause } => LogError::Failed {
            partition: *partition,
            cause: cause.clone(),
        },
        other => LogError::Failed {
            partition,
            cause: crate::report::error_chain(other),
        },
    }
}

/// A thread that drops batches of entries and acknowledges each.
struct Freer {
    batches: SyncSender<Vec<Vec<LogEntry>>>,
    freed: Receiver<()>,
}

impl Freer {
    fn start(p: u32) -> Option<Freer> {
        let (batches, rx) = sync_channel::<Vec<Vec<LogEntry>>>(1);
        let (ack, freed) = sync_channel(1);
        std::thread::Builder::new()
            .name(format!("rowlog-free-{p}"))
            .spawn(move || {
                while let Ok(batch) = rx.recv() {
                    drop(batch);
                    if ack.send(()).is_err() {
                        return;
                    }
                }
            })
            // Without the thread the entries are freed inline, as for small batches.
            .ok()?;
        Some(Freer { batches, freed })
    }

    /// Hands the batch over; gives it back when the thread is gone.
    fn free(&self, batch: Vec<Vec<LogEntry>>) -> Result<(), Vec<Vec<LogEntry>>> {
        self.batches.send(batch).map_err(|e| e.0)
    }

    /// Waits until the last batch handed over is freed; false when the thread is gone.
    fn wait(&self) -> bool {
        self.freed.recv().is_ok()
    }
}

/// The most appends one fsync covers.
const MAX_GROUP: usize = 64;

/// One partition's share of an append, and where to report how it went.
struct Job {
    entries: Vec<LogEntry>,
    spare_cores: bool,
    done: SyncSender<(u32, Result<(), LogError>)>,
}

/// The log's append threads, one per partition, started with a writable log and
/// stopped (and joined) when it is dropped.
pub(super) struct AppendThreads {
    jobs: Vec<SyncSender<Job>>,
    handles: Vec<JoinHandle<()>>,
    /// Read once: on Linux, `available_parallelism` reads cgroup files each call.
    cores: usize,
}

impl AppendThreads {
    pub(super) fn start(
        partitions: &[Arc<Partition>],
        schemas: &Arc<SchemaStore>,
        fsync: FsyncPolicy,
    ) -> std::io::Result<Self> {
        let mut threads = AppendThreads {
            jobs: Vec::new(),
            handles: Vec::new(),
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        };
        for partition in partitions {
            // Concurrent appends queue here and are grouped; a full queue makes the
            // next append wait, which bounds the memory queued.
            let (tx, rx) = sync_channel::<Job>(MAX_GROUP);
            let mut appender = Appender {
                partition: partition.clone(),
                schemas: schemas.clone(),
                fsync,
                freer: None,
            };
            // Named, so `top -H` shows where an append's time goes. On an error the
            // threads started so far stop as `threads` drops.
            let handle = std::thread::Builder::new()
                .name(format!("rowlog-append-{}", partition.id))
                .spawn(move || {
                    // Jobs that queued while the last group was syncing are written
                    // and synced together.
                    while let Ok(first) = rx.recv() {
                        let mut group = vec![first];
                        group.extend(rx.try_iter().take(MAX_GROUP - 1));
                        appender.append(group);
                    }
                })?;
            threads.jobs.push(tx);
            threads.handles.push(handle);
        }
        Ok(threads)
    }

    /// Appends each partition's entries on its thread and waits for all of them:
    /// one partition's fsync overlaps another's encoding. Returns the first error
    /// after every job has ended.
    pub(super) fn append(&self, work: Vec<(u32, Vec<LogEntry>)>) -> Result<(), LogError> {
        let spare_cores = work.len() <= self.cores;
        let (done, results) = sync_channel(work.len());
        let mut sent = Vec::with_capacity(work.len());
        let mut first_error = None;
        for (p, entries) in work {
            let Some(jobs) = self.jobs.get(p as usize) else {
                first_error.get_or_insert(LogError::NoSuchPartition {
                    partition: p,
                    partitions: self.jobs.len() as u32,
                });
                continue;
            };
            let job = Job {
                entries,
                spare_cores,
                done: done.clone(),
            };
            match jobs.send(job) {
                Ok(()) => sent.push(p),
                Err(_) => {
                    first_error.get_or_insert(stopped(p));
                }
            }
        }
        // Only the jobs hold senders now: when a thread dies with its job, `recv`
        // ends instead of waiting forever.
        drop(done);
        let mut reported = Vec::with_capacity(sent.len());
        while reported.len() < sent.len() {
            let Ok((p, result)) = results.recv() else {
                break;
            };
            reported.push(p);
            if let Err(e) = result {
                first_error.get_or_insert(e);
            }
        }
        if reported.len() < sent.len() {
            if let Some(&p) = sent.iter().find(|p| !reported.contains(p)) {
                first_error.get_or_insert(stopped(p));
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

fn stopped(p: u32) -> LogError {
    LogError::Failed {
        partition: p,
        cause: "its append thread stopped (it panicked)".into(),
    }
}

impl Drop for AppendThreads {
    fn drop(&mut self) {
        self.jobs.clear();
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}
