//! One partition of the embedded log: a directory of segment files named by their
//! first offset (`{base:020}.log`), each a sequence of [frames](super::frame), with a
//! sparse [index](super::index) beside it (`{base:020}.index`).
//!
//! # Invariants
//! * Offsets are dense: the segment based at `b` holds offsets `b, b+1, …` and the next
//!   segment is based where it ends. Retention removes whole segments from the front.
//! * Only the last (active) segment is written. Bytes past the last fsync may be torn
//!   by a crash; recovery truncates them, logging how many bytes it dropped, and
//!   rebuilds the active segment's index from what remains. A damaged record (a CRC
//!   mismatch) below the durable end recorded before the crash is not cut: it is a
//!   hard error naming the file and byte, as in a sealed segment.
//! * `written` ≥ `durable`: appends advance `written`; an fsync advances `durable` to
//!   everything written before it started, so one fsync covers every append that was
//!   waiting (group commit). Readers only see records below `durable`. Read-only
//!   openers in other processes learn it from the [durable-end file](super::durable_end),
//!   rewritten after every fsync, and never see a record past it.
//! * A write that fails is rolled back to the last whole record; if even that fails
//!   the partition refuses further writes until reopened (never appending after a hole).

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use rowlog_api::ChangeId;
use tokio::sync::watch;
use tracing::warn;

use super::durable_end::{self, DurableEnd, Marked};
use super::frame::{self, HEADER_LEN, MAX_PAYLOAD};
use super::index::{self, Entry, IndexMark, SegmentIndex};
use super::{atomic_file, io, record, LogError};

pub(crate) fn segment_name(base: u64) -> String {
    format!("{base:020}.log")
}

fn index_name(base: u64) -> String {
    format!("{base:020}.index")
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded state is updated only after the I/O it describes succeeded, so a
    // panic elsewhere cannot leave it inconsistent.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Sorted base offsets of the segments in `dir`.
pub(crate) fn list_segments(dir: &Path) -> Result<Vec<u64>, LogError> {
    let mut bases = Vec::new();
    for entry in fs::read_dir(dir).map_err(io("list", dir))? {
        let entry = entry.map_err(io("list", dir))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(stem) = name.strip_suffix(".log") {
            if stem.len() == 20 && stem.bytes().all(|b| b.is_ascii_digit()) {
                bases.push(stem.parse().map_err(|_| LogError::Corrupt {
                    path: entry.path(),
                    byte: 0,
                    detail: "segment name out of range".into(),
                })?);
            }
        }
    }
    bases.sort_unstable();
    Ok(bases)
}

/// The result of scanning a segment.
pub(crate) struct Scan {
    pub records: u64,
    /// Bytes of whole, valid records from the start.
    pub valid_len: u64,
    pub file_len: u64,
    /// Why the scan stopped before the end of the file, if it did.
    pub stop: Option<String>,
    /// The scan stopped at a record whose bytes are all there but wrong (a CRC
    /// mismatch, an impossible length), not at bytes that end too soon.
    pub damaged: bool,
    pub last_payload: Option<Vec<u8>>,
    /// The index the scanned records call for.
    pub index: SegmentIndex,
}

impl Scan {
    /// A sealed segment must be whole: a damaged record in it is a hard error naming
    /// the file and byte, never something to cut off.
    pub fn require_whole(&self, path: &Path) -> Result<(), LogError> {
        match &self.stop {
            Some(why) => Err(LogError::Corrupt {
                path: path.to_path_buf(),
                byte: self.valid_len,
                detail: why.clone(),
            }),
            None => Ok(()),
        }
    }
}

/// Reads every frame of the segment at `path` based at `base` from byte `from_byte`
/// (offset `from_offset`), stopping at the first torn or damaged one. Streams the
/// file: memory stays at one record.
pub(crate) fn scan_segment(
    path: &Path,
    base: u64,
    start: Option<(u64, u64, SegmentIndex)>,
    keep_last: bool,
) -> Result<Scan, LogError> {
    let mut file = File::open(path).map_err(io("open", path))?;
    let file_len = file.metadata().map_err(io("stat", path))?.len();
    let (from_offset, from_byte, index) = start.unwrap_or((base, 0, SegmentIndex::default()));
    file.seek(SeekFrom::Start(from_byte))
        .map_err(io("seek", path))?;
    let mut r = BufReader::with_capacity(1 << 20, file);
    let mut scan = Scan {
        records: from_offset - base,
        valid_len: from_byte,
        file_len,
        stop: None,
        damaged: false,
        last_payload: None,
        index,
    };
    let mut payload = Vec::new();
    loop {
        let remaining = file_len.saturating_sub(scan.valid_len);
        if remaining == 0 {
            break;
        }
        if remaining < HEADER_LEN as u64 {
            scan.stop = Some(format!("torn record header ({remaining} bytes)"));
            break;
        }
        let mut h = [0u8; HEADER_LEN];
        r.read_exact(&mut h).map_err(io("read", path))?;
        let (len, crc, offset, time_ms) = frame::header(&h);
        if len > MAX_PAYLOAD {
            scan.stop = Some(format!("record length {len} exceeds the limit"));
            scan.damaged = true;
            break;
        }
        if remaining < (HEADER_LEN + len) as u64 {
            scan.stop = Some(format!(
                "torn record ({remaining} of {} bytes)",
                HEADER_LEN + len
            ));
            break;
        }
        payload.resize(len, 0);
        r.read_exact(&mut payload).map_err(io("read", path))?;
        if !frame::check(crc, offset, time_ms, &payload) {
            scan.stop = Some(format!("CRC mismatch in record claiming offset {offset}"));
            scan.damaged = true;
            break;
        }
        let expected = base + scan.records;
        if offset != expected {
            return Err(LogError::Corrupt {
                path: path.to_path_buf(),
                byte: scan.valid_len,
                detail: format!("record has offset {offset} where {expected} was expected"),
            });
        }
        scan.index.before_record(offset, scan.valid_len);
        scan.index.after_record(time_ms);
        scan.records += 1;
        scan.valid_len += (HEADER_LEN + len) as u64;
        if keep_last {
            scan.last_payload = Some(payload.clone());
        }
    }
    Ok(scan)
}

/// Refuses to cut the active segment's tail when the scan stopped at a damaged record
/// (its bytes all there, but wrong) below the durable end: those records were
/// fsynced, so no crash explains the damage, and cutting there would drop durable
/// records with only a warning. A tail that ends too soon is still cut: that is what
/// a crash leaves past the last fsync, and a file cut short by other means cannot be
/// told from it here (a checkpoint that acknowledged the records still refuses the
/// open, see `LogError::LostAcknowledged`). Without a readable durable-end file (a
/// log of an older rowlog, or a file a power failure tore) the tail is cut as before.
fn refuse_to_cut_synced(
    path: &Path,
    base: u64,
    scan: &Scan,
    why: &str,
    marked: Marked,
) -> Result<(), LogError> {
    let stop_at = base + scan.records;
    match marked {
        Marked::At(m) if scan.damaged && m.end > stop_at => Err(LogError::Corrupt {
            path: path.to_path_buf(),
            byte: scan.valid_len,
            detail: format!(
                "{why}, below the partition's durable end (the records before offset {} \
                 were fsynced), so it is damage, not a torn write; restore the file, or cut \
                 it there to give up offset {stop_at} and every record after it \
                 (`truncate -s {} {}`)",
                m.end,
                scan.valid_len,
                path.display()
            ),
        }),
        _ => Ok(()),
    }
}

/// A segment's place in the partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SegmentInfo {
    pub base: u64,
    /// One past the last offset (for the active segment: as of the last write).
    pub end: u64,
    pub bytes: u64,
    /// Largest commit time of its records.
    pub max_time: u64,
}

struct Writer {
    active: File,
    active_path: PathBuf,
    index_file: File,
    index: SegmentIndex,
    active_base: u64,
    active_size: u64,
    next: u64,
    /// The active segment's size at the last fsync that succeeded (0 right after a
    /// roll, whose fsync covered the sealed segment): what a failed fsync cuts back to.
    synced_size: u64,
    /// True while `write` runs: still true afterwards only if it panicked midway,
    /// leaving `next` counting records that never reached the file.
    writing: bool,
    failed: Option<String>,
    /// The write buffer, kept between appends: a fresh megabyte per append would be
    /// fresh pages, faulted in and zeroed by the kernel each time.
    buf: Vec<u8>,
    /// Tells read-only openers in other processes the durable end and the cut count.
    durable_end: durable_end::Writer,
}

/// Read-only openers follow a writer in another process by rescanning the tail.
struct Follow {
    base: u64,
    valid_len: u64,
    records: u64,
    index: SegmentIndex,
    /// The writer's cut count in the durable-end file at the last look (`None`: no
    /// such file, a log of an older rowlog).
    seen_cuts: Option<u64>,
}

impl Follow {
    fn at(base: u64, seen_cuts: Option<u64>) -> Self {
        Self {
            base,
            valid_len: 0,
            records: 0,
            index: SegmentIndex::default(),
            seen_cuts,
        }
    }
}

pub(crate) struct Partition {
    pub id: u32,
    dir: PathBuf,
    segment_bytes: u64,
    writer: Option<Mutex<Writer>>,
    follow: Option<Mutex<Follow>>,
    /// Serialises fsyncs; whoever holds it covers every append written before it syncs.
    sync_lock: Mutex<()>,
    segments: RwLock<Vec<SegmentInfo>>,
    /// Indexes of sealed segments, loaded when first read (bounded cache).
    sealed_indexes: Mutex<HashMap<u64, Arc<SegmentIndex>>>,
    durable: watch::Sender<u64>,
    last_change: Mutex<Option<ChangeId>>,
    fsyncs: AtomicU64,
    /// Counts cuts of the active segment (a failed write rolled back, unsynced bytes
    /// dropped after a failed fsync). A reader's read-ahead may hold bytes from past
    /// the durable end that a cut removed and a later write replaced at the same
    /// offsets, with valid CRCs: a reader that sees this count move forgets its
    /// read-ahead. Bumped before the writer lock is released, so before any durable
    /// end that covers the replacing records is published.
    cuts: AtomicU64,
    /// Unit tests make the next fsync fail: this machine has no device to make a real
    /// one fail (no device-mapper), and the handling of it must not go untested.
    #[cfg(test)]
    fail_next_fsync: std::sync::atomic::AtomicBool,
}

const SEALED_INDEX_CACHE: usize = 16;

impl Partition {
    /// Opens the partition directory, recovering the active segment's tail when writable.
    pub fn open(dir: &Path, id: u32, segment_bytes: u64, writable: bool) -> Result<Self, LogError> {
        if writable {
            atomic_file::create_dir_durable(dir)?;
        }
        // Read before recovery: a writable open counts as one more cut (it may cut a
        // torn tail), so the count read-only openers watch moves across restarts.
        let marked = durable_end::read(dir);
        let cuts_at_open = match marked {
            Marked::At(m) => m.cuts.wrapping_add(1),
            Marked::Absent => 0,
            // A torn file (no writer runs while a writable open holds the lock): its
            // count is lost, so take one no reader can have seen in it.
            Marked::Unreadable => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64),
        };
        let mut bases = list_segments(dir)?;
        if bases.is_empty() && writable {
            File::create(dir.join(segment_name(0))).map_err(io("create", dir))?;
            atomic_file::sync_dir(dir)?;
            bases.push(0);
        }
        let mut infos = Vec::with_capacity(bases.len());
        let mut last_payload = None;
        let mut active_scan = None;
        // The active segment is scanned whole (its tail may be torn); sealed segments
        // only need their seal entry. While the newest segments are empty, keep looking
        // back for the last record, which de-duplication after a restart needs.
        for (i, &base) in bases.iter().enumerate().rev() {
            let path = dir.join(segment_name(base));
            let is_active = i + 1 == bases.len();
            if is_active || last_payload.is_none() {
                let scan = scan_segment(&path, base, None, true)?;
                if is_active {
                    if let Some(why) = &scan.stop {
                        if writable {
                            refuse_to_cut_synced(&path, base, &scan, why, marked)?;
                            warn!(
                                file = %path.display(),
                                dropped_bytes = scan.file_len - scan.valid_len,
                                reason = %why,
                                "truncating torn tail of log segment to the last whole record"
                            );
                            let f = OpenOptions::new()
                                .write(true)
                                .open(&path)
                                .map_err(io("open", &path))?;
                            f.set_len(scan.valid_len)
                                .and_then(|_| f.sync_all())
                                .map_err(io("truncate", &path))?;
                        }
                    }
                } else {
                    scan.require_whole(&path)?;
                }
                infos.push(SegmentInfo {
                    base,
                    end: base + scan.records,
                    bytes: scan.valid_len,
                    max_time: scan.index.max_time,
                });
                if scan.last_payload.is_some() && last_payload.is_none() {
                    last_payload = scan.last_payload.clone();
                }
                if is_active {
                    active_scan = Some(scan);
                }
            } else {
                let (end, bytes, max_time) = sealed_summary(dir, base)?;
                infos.push(SegmentInfo {
                    base,
                    end,
                    bytes,
                    max_time,
                });
            }
        }
        infos.reverse();
        for w in infos.windows(2) {
            if w[0].end != w[1].base {
                return Err(LogError::Corrupt {
                    path: dir.join(segment_name(w[0].base)),
                    byte: w[0].bytes,
                    detail: format!(
                        "segment ends at offset {} but the next one starts at {}",
                        w[0].end, w[1].base
                    ),
                });
            }
        }
        let next = infos.last().map(|s| s.end).unwrap_or(0);
        let last_change = match last_payload {
            Some(p) => Some(
                record::decode_source(&p)
                    .map_err(|detail| LogError::Decode {
                        partition: id,
                        offset: next.saturating_sub(1),
                        detail,
                    })?
                    .id,
            ),
            None => None,
        };
        let active_base = infos.last().map(|s| s.base).unwrap_or(0);
        let (writer, follow) = match active_scan {
            Some(scan) if writable => {
                let active_path = dir.join(segment_name(active_base));
                let active = OpenOptions::new()
                    .append(true)
                    .open(&active_path)
                    .map_err(io("open", &active_path))?;
                // The recovered tail may never have been synced: a process killed
                // between its write and its fsync leaves whole records in the page
                // cache. They count as durable from here on (the source skips what the
                // log holds), so make them so before anything relies on them.
                active.sync_data().map_err(io("fsync", &active_path))?;
                let durable_end = durable_end::Writer::open(
                    dir,
                    DurableEnd {
                        end: next,
                        cuts: cuts_at_open,
                    },
                )
                .map_err(io("write", &durable_end::path(dir)))?;
                let index_path = dir.join(index_name(active_base));
                index::write(&index_path, &scan.index.entries, true)
                    .map_err(io("write", &index_path))?;
                let index_file = OpenOptions::new()
                    .append(true)
                    .open(&index_path)
                    .map_err(io("open", &index_path))?;
                let w = Writer {
                    active,
                    active_path,
                    index_file,
                    index: scan.index,
                    active_base,
                    active_size: scan.valid_len,
                    next,
                    // What recovery read back counts as synced: nothing in this
                    // process wrote it.
                    synced_size: scan.valid_len,
                    writing: false,
                    failed: None,
                    buf: Vec::new(),
                    durable_end,
                };
                (Some(Mutex::new(w)), None)
            }
            Some(scan) => {
                let f = Follow {
                    base: active_base,
                    valid_len: scan.valid_len,
                    records: next - active_base,
                    index: scan.index,
                    seen_cuts: marked.cuts(),
                };
                (None, Some(Mutex::new(f)))
            }
            None => (None, Some(Mutex::new(Follow::at(0, marked.cuts())))),
        };
        // A read-only opener sees what the writer has synced, not all the file holds.
        let visible = match (writable, marked) {
            (false, Marked::At(m)) => next.min(m.end),
            // Not whole after reads apart: not a race with a running writer (it
            // rewrites the file at most once per fsync) but a file a power failure
            // tore. No writer has run since, and the one that opens next counts every
            // whole record as durable, so the whole records are what there is.
            (false, Marked::Unreadable) => {
                warn!(partition = id, file = %durable_end::path(dir).display(), "the durable-end file is not whole; showing every whole record of the log");
                next
            }
            _ => next,
        };
        let (durable, _) = watch::channel(visible);
        Ok(Self {
            id,
            dir: dir.to_path_buf(),
            segment_bytes,
            writer,
            follow,
            sync_lock: Mutex::new(()),
            segments: RwLock::new(infos),
            sealed_indexes: Mutex::new(HashMap::new()),
            durable,
            last_change: Mutex::new(last_change),
            fsyncs: AtomicU64::new(0),
            cuts: AtomicU64::new(if writable { cuts_at_open } else { 0 }),
            #[cfg(test)]
            fail_next_fsync: Default::default(),
        })
    }

    /// The durable end: one past the last record readers may see.
    pub fn end(&self) -> u64 {
        *self.durable.borrow()
    }

    /// One past the last record written (≥ `end()`; equal once synced).
    pub fn written(&self) -> u64 {
        match &self.writer {
            Some(w) => lock(w).next,
            None => self.end(),
        }
    }

    pub fn start(&self) -> u64 {
        self.segments
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .first()
            .map(|s| s.base)
            .unwrap_or(0)
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.durable.subscribe()
    }

    pub fn last_change(&self) -> Option<ChangeId> {
        lock(&self.last_change).clone()
    }

    pub fn fsyncs(&self) -> u64 {
        self.fsyncs.load(Ordering::Relaxed)
    }

    pub fn segments(&self) -> Vec<SegmentInfo> {
        self.segments
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn segment_path(&self, base: u64) -> PathBuf {
        self.dir.join(segment_name(base))
    }

    pub fn index_path(&self, base: u64) -> PathBuf {
        self.dir.join(index_name(base))
    }

    /// Writes `count` records at the end of the partition, not yet synced; returns the
    /// new written end. Blocking. `encode(i, out)` appends record `i`'s payload to `out`
    /// (the write buffer itself: payloads are framed where they are encoded, never
    /// copied) and returns its time; `id_of(i)` is record `i`'s change id.
    pub fn write(
        &self,
        count: usize,
        mut encode: impl FnMut(usize, &mut Vec<u8>) -> Result<u64, LogError>,
        id_of: &dyn Fn(usize) -> Option<ChangeId>,
    ) -> Result<u64, LogError> {
        let Some(writer) = &self.writer else {
            return Err(LogError::Failed {
                partition: self.id,
                cause: "opened read-only".into(),
            });
        };
        let mut w = lock(writer);
        if count == 0 {
            return Ok(w.next);
        }
        if let Some(e) = self.refuse(&w) {
            return Err(e);
        }
        w.writing = true;
        let before = (w.active_base, w.active_size, w.next, w.index.mark());
        // Written out whenever it passes this, so a big batch needs no big buffer.
        const FLUSH_AT: usize = 1 << 20;
        let mut buf = std::mem::take(&mut w.buf);
        buf.clear();
        // Room for a full flush and a record past it, so a batch never regrows it.
        buf.reserve(FLUSH_AT + (64 << 10));
        let mut index_buf = Vec::new();
        let result = (|| -> Result<(), LogError> {
            for i in 0..count {
                let at = w.active_size + buf.len() as u64;
                if at >= self.segment_bytes && at > 0 {
                    Self::write_out(&mut w, &mut buf, &mut index_buf)?;
                    self.roll(&mut w)?;
                } else if buf.len() >= FLUSH_AT {
                    Self::write_out(&mut w, &mut buf, &mut index_buf)?;
                }
                let at = w.active_size + buf.len() as u64;
                let offset = w.next;
                let start = buf.len();
                buf.resize(start + HEADER_LEN, 0);
                let time_ms = match encode(i, &mut buf) {
                    Ok(t) => t,
                    Err(e) => {
                        buf.truncate(start);
                        return Err(e);
                    }
                };
                let len = buf.len() - start - HEADER_LEN;
                if len > MAX_PAYLOAD {
                    buf.truncate(start);
                    return Err(LogError::Decode {
                        partition: self.id,
                        offset,
                        detail: format!(
                            "a record of {len} bytes is over the {MAX_PAYLOAD}-byte limit"
                        ),
                    });
                }
                frame::seal(&mut buf[start..], offset, time_ms);
                if let Some(e) = w.index.before_record(offset, at) {
                    e.encode(&mut index_buf);
                }
                w.index.after_record(time_ms);
                w.next += 1;
            }
            Self::write_out(&mut w, &mut buf, &mut index_buf)
        })();
        w.writing = false;
        // A record far over the flush size would otherwise pin its memory.
        if buf.capacity() <= 4 * FLUSH_AT {
            buf.clear();
            w.buf = buf;
        }
        if let Err(e) = result {
            self.roll_back(&mut w, before, id_of, &e);
            return Err(e);
        }
        self.update_active_info(&w);
        *lock(&self.last_change) = id_of(count - 1);
        Ok(w.next)
    }

    /// Undoes a failed write so the active segment ends on a whole record.
    ///
    /// Two cases. No roll happened during the write: the active segment is cut back to
    /// its size before the write. Segments were rolled: those sealed during the write
    /// were synced when sealed and are kept (their records are whole and dense); the
    /// new active segment is cut back to empty. If the cut itself fails, the partition
    /// refuses further writes until it is reopened and recovered.
    fn roll_back(
        &self,
        w: &mut Writer,
        before: (u64, u64, u64, IndexMark),
        id_of: &dyn Fn(usize) -> Option<ChangeId>,
        e: &LogError,
    ) {
        // A failed fsync has cut the segment back already and stopped the partition.
        if w.failed.is_some() {
            return;
        }
        let (start_base, start_size, start_next, start_index) = before;
        let (keep_bytes, next) = if w.active_base == start_base {
            (start_size, start_next)
        } else {
            (0, w.active_base)
        };
        match w
            .active
            .set_len(keep_bytes)
            .and_then(|_| w.active.sync_data())
        {
            Ok(()) => {
                self.cuts.fetch_add(1, Ordering::SeqCst);
                w.active_size = keep_bytes;
                w.next = next;
                if w.active_base == start_base {
                    w.index.rewind(start_index);
                } else {
                    w.index = SegmentIndex::default();
                }
                let index_path = self.index_path(w.active_base);
                let reopened = index::write(&index_path, &w.index.entries, false)
                    .and_then(|_| OpenOptions::new().append(true).open(&index_path));
                if let Ok(f) = reopened {
                    w.index_file = f;
                }
                self.update_active_info(w);
                // Records kept in sealed segments are part of the log now.
                let kept = (next - start_next) as usize;
                if kept > 0 {
                    if let Some(id) = id_of(kept - 1) {
                        *lock(&self.last_change) = Some(id);
                    }
                }
            }
            Err(re) => w.failed = Some(format!("{e}; rollback failed: {re}")),
        }
    }

    /// Why the partition takes no more writes or fsyncs, if it does not.
    fn refuse(&self, w: &Writer) -> Option<LogError> {
        let cause = match (&w.failed, w.writing) {
            (Some(cause), _) => cause.clone(),
            // The lock was poisoned by a panic inside `write`: `next` may count
            // records that were never written, which an fsync would make visible.
            (None, true) => {
                "an append panicked midway; the partition takes no more appends until the log is reopened".into()
            }
            (None, false) => return None,
        };
        Some(LogError::Failed {
            partition: self.id,
            cause,
        })
    }

    /// fsyncs a segment's data.
    fn sync_file(&self, f: &File) -> std::io::Result<()> {
        #[cfg(test)]
        if self.fail_next_fsync.swap(false, Ordering::SeqCst) {
            return Err(std::io::Error::from_raw_os_error(5)); // EIO
        }
        f.sync_data()
    }

    /// After a failed fsync: cuts the active segment back to its size at the last
    /// fsync that succeeded and stops the partition until the log is reopened.
    ///
    /// Why both. Linux reports a failed write-back once, then marks the pages clean:
    /// a later fsync succeeds, and reads (recovery after a restart included) return
    /// the page cache's copy while the disk may not have it. Records past the last
    /// good fsync are therefore dropped here, in the process that saw the error, and
    /// readers never saw them (they read only durable records). Nothing more is
    /// written: the caller was told the append failed, and under the interval policy
    /// appends were already acknowledged, so the source has to go back to its
    /// checkpoint, which only a reopen (a restart of rowlog) does for every stage.
    /// The checkpoint never passed unsynced records, so the source re-reads them.
    fn discard_unsynced(&self, w: &mut Writer, e: &LogError) {
        if w.failed.is_some() {
            return;
        }
        let dropped = w.active_size.saturating_sub(w.synced_size);
        let cut = w
            .active
            .set_len(w.synced_size)
            .and_then(|_| w.active.sync_data());
        let what = match cut {
            Ok(()) => {
                self.cuts.fetch_add(1, Ordering::SeqCst);
                w.active_size = w.synced_size;
                format!("the {dropped} bytes written after the last good fsync were cut off")
            }
            Err(re) => format!("cutting off the {dropped} bytes written after the last good fsync failed too: {re}"),
        };
        tracing::error!(partition = self.id, file = %w.active_path.display(), error = %e, dropped_bytes = dropped, "fsync failed; the partition takes no more appends until the log is reopened");
        w.failed = Some(format!(
            "{e}; {what}; the partition takes no more appends until the log is reopened (restart rowlog: it goes on from the source checkpoint)"
        ));
    }

    fn update_active_info(&self, w: &Writer) {
        let mut segs = self.segments.write().unwrap_or_else(|p| p.into_inner());
        if let Some(last) = segs.last_mut() {
            last.end = w.next;
            last.bytes = w.active_size;
            last.max_time = w.index.max_time;
        }
    }

    /// Makes everything written so far durable; returns the durable end. Concurrent
    /// callers share fsyncs: a caller whose records another fsync covered returns at once.
    pub fn sync(&self, target: u64) -> Result<u64, LogError> {
        let Some(writer) = &self.writer else {
            return Ok(self.end());
        };
        let _guard = lock(&self.sync_lock);
        if self.end() >= target {
            return Ok(self.end());
        }
        // The writer stays locked through the fsync, so that a roll (which fsyncs the
        // segment it seals) cannot run beside it: of two fsyncs of one file racing,
        // only one hears of a failed write-back, and the other would publish the
        // records as durable, or seal them into the old segment while this one cuts
        // the new. It costs nothing under the batch policy, where the partition's
        // append thread writes and syncs in turn; under the interval policy an append
        // waits for the flusher's fsync.
        let mut w = lock(writer);
        if let Some(e) = self.refuse(&w) {
            return Err(e);
        }
        let end = w.next;
        // Rolled segments were synced when they were sealed: syncing the active file
        // makes every record below `end` durable. The active segment's index is not
        // synced: recovery rebuilds it from the segment, so an fsync of it would only
        // double the fsyncs of every append.
        if let Err(e) = self.sync_file(&w.active) {
            let e = io("fsync", &w.active_path)(e);
            self.discard_unsynced(&mut w, &e);
            return Err(e);
        }
        w.synced_size = w.active_size;
        let told = w.durable_end.store(DurableEnd {
            end,
            cuts: self.cuts.load(Ordering::SeqCst),
        });
        drop(w);
        if let Err(e) = told {
            // Only other processes' view lags: they see less, never more.
            warn!(partition = self.id, file = %durable_end::path(&self.dir).display(), error = %e, "could not record the durable end for read-only openers");
        }
        self.fsyncs.fetch_add(1, Ordering::Relaxed);
        self.durable.send_if_modified(|d| {
            let changed = end > *d;
            *d = (*d).max(end);
            changed
        });
        Ok(end)
    }

    fn write_out(
        w: &mut Writer,
        buf: &mut Vec<u8>,
        index_buf: &mut Vec<u8>,
    ) -> Result<(), LogError> {
        if !buf.is_empty() {
            let path = w.active_path.clone();
            w.active.write_all(buf).map_err(io("append", &path))?;
            w.active_size += buf.len() as u64;
            buf.clear();
        }
        if !index_buf.is_empty() {
            // The index is derived: a failure to extend it is repaired on reopen.
            let _ = w.index_file.write_all(index_buf);
            index_buf.clear();
        }
        Ok(())
    }

    /// Seals the active segment (its bytes and index synced, a seal entry appended)
    /// and starts a new one at the next offset.
    fn roll(&self, w: &mut Writer) -> Result<(), LogError> {
        let seal = Entry {
            offset: w.next,
            byte: w.active_size,
            max_time_before: w.index.max_time,
        };
        let mut seal_bytes = Vec::new();
        seal.encode(&mut seal_bytes);
        let sealed_path = w.active_path.clone();
        if let Err(e) = self.sync_file(&w.active) {
            let e = io("fsync", &sealed_path)(e);
            self.discard_unsynced(w, &e);
            return Err(e);
        }
        let index_path = self.index_path(w.active_base);
        w.index_file
            .write_all(&seal_bytes)
            .and_then(|_| w.index_file.sync_data())
            .map_err(io("append", &index_path))?;
        self.fsyncs.fetch_add(1, Ordering::Relaxed);
        self.update_active_info(w);

        let base = w.next;
        let path = self.dir.join(segment_name(base));
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)
            .map_err(io("create", &path))?;
        let index_path = self.index_path(base);
        let created = File::create(&index_path)
            .and_then(|_| OpenOptions::new().append(true).open(&index_path))
            .map_err(io("create", &index_path))
            .and_then(|f| atomic_file::sync_dir(&self.dir).map(|()| f));
        let index_file = match created {
            Ok(f) => f,
            Err(e) => {
                // The write is rolled back to the old segment: an empty segment file
                // left behind would start where the old one no longer ends, which
                // makes the next open refuse the partition, and the retried roll's
                // create_new fail. If it cannot be removed, stop here instead.
                let removed = fs::remove_file(&path)
                    .and_then(|()| match fs::remove_file(&index_path) {
                        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                        _ => Ok(()),
                    })
                    .and_then(|()| atomic_file::sync_dir(&self.dir).map_err(std::io::Error::other));
                if let Err(re) = removed {
                    w.failed = Some(format!(
                        "{e}; removing the half-made segment {} failed too: {re}; remove it and reopen the log",
                        path.display()
                    ));
                }
                return Err(e);
            }
        };
        let mut sealed_index = std::mem::take(&mut w.index);
        sealed_index.entries.push(seal);
        self.cache_sealed(w.active_base, Arc::new(sealed_index));
        w.active = file;
        w.active_path = path;
        w.index_file = index_file;
        w.active_base = base;
        w.active_size = 0;
        w.synced_size = 0;
        self.segments
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .push(SegmentInfo {
                base,
                end: base,
                bytes: 0,
                max_time: 0,
            });
        Ok(())
    }

    fn cache_sealed(&self, base: u64, idx: Arc<SegmentIndex>) {
        let mut cache = lock(&self.sealed_indexes);
        if cache.len() >= SEALED_INDEX_CACHE {
            cache.clear();
        }
        cache.insert(base, idx);
    }

    /// The index of segment `base`: the writer's for the active segment, else the
    /// sealed index file, rebuilt from the segment when missing or inconsistent.
    pub fn index_of(&self, base: u64) -> Result<Arc<SegmentIndex>, LogError> {
        if let Some(w) = &self.writer {
            let w = lock(w);
            if w.active_base == base {
                return Ok(Arc::new(w.index.clone()));
            }
        }
        if let Some(f) = &self.follow {
            let f = lock(f);
            if f.base == base {
                return Ok(Arc::new(f.index.clone()));
            }
        }
        if let Some(idx) = lock(&self.sealed_indexes).get(&base) {
            return Ok(idx.clone());
        }
        let info = self.segments().into_iter().find(|s| s.base == base);
        let idx = match (index::read(&self.index_path(base)), info) {
            (Some(entries), Some(info))
                if entries
                    .last()
                    .is_some_and(|e| e.offset == info.end && e.byte == info.bytes) =>
            {
                let max_time = entries.last().map(|e| e.max_time_before).unwrap_or(0);
                SegmentIndex {
                    last_byte: 0,
                    max_time,
                    entries,
                }
            }
            _ => {
                let path = self.segment_path(base);
                warn!(file = %self.index_path(base).display(), "rebuilding missing or inconsistent segment index");
                let scan = scan_segment(&path, base, None, false)?;
                scan.require_whole(&path)?;
                let mut idx = scan.index;
                idx.entries.push(Entry {
                    offset: base + scan.records,
                    byte: scan.valid_len,
                    max_time_before: idx.max_time,
                });
                if self.writer.is_some() {
                    let _ = index::write(&self.index_path(base), &idx.entries, true);
                }
                idx
            }
        };
        let idx = Arc::new(idx);
        self.cache_sealed(base, idx.clone());
        Ok(idx)
    }

    /// The first offset whose record's commit time is ≥ `t` (the durable end if none).
    pub fn offset_for_time(&self, t: u64) -> Result<u64, LogError> {
        for seg in self.segments() {
            if seg.max_time < t {
                continue;
            }
            let idx = self.index_of(seg.base)?;
            let (offset, byte) = idx.seek_time(seg.base, t);
            let mut c = Cursor::at(self.clone_handle(), seg.base, offset, byte)?;
            while c.next < seg.end.min(self.end()) {
                let (off, time, _) = c.read_frame_in()?;
                if time >= t {
                    return Ok(off);
                }
            }
        }
        Ok(self.end())
    }

    fn clone_handle(&self) -> PartitionRef<'_> {
        PartitionRef(self)
    }

    /// Read-only view: picks up what the writing process appended since the last look.
    pub fn refresh(&self) -> Result<u64, LogError> {
        let Some(follow) = &self.follow else {
            return Ok(self.end());
        };
        let mut f = lock(follow);
        let marked = durable_end::read(&self.dir);
        let bases = list_segments(&self.dir)?;
        // The writer cut its active segment (or was restarted) since the last look:
        // what this view scanned past the durable end may have been replaced. Or the
        // segment this view moved into is gone (a roll that could not finish removes
        // the segment it began). Either way, scan again from the start of the newest
        // segment left at or before it, and make cursors forget their read-ahead
        // before any new end is published.
        let cut = matches!((f.seen_cuts, marked), (Some(seen), Marked::At(m)) if seen != m.cuts);
        let gone = !bases.is_empty() && !bases.contains(&f.base);
        if cut || gone {
            // Retention may have removed the followed segment and every one before it:
            // then the view goes on at the oldest segment left, all newer than it.
            let base = bases.iter().rev().copied().find(|&b| b <= f.base);
            let base = base.or(bases.first().copied()).unwrap_or(f.base);
            *f = Follow::at(base, None);
            self.segments
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .retain(|s| s.base <= base);
            self.cuts.fetch_add(1, Ordering::SeqCst);
        }
        // Segments retention removed from the front leave this view too, so its
        // start moves up with the writer's and a reader below it is told "out of
        // range" instead of failing to open a file that is gone.
        if let Some(&oldest) = bases.first() {
            self.segments
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .retain(|s| s.base >= oldest);
        }
        // A log without the file (an older rowlog's): every whole record counts.
        let unmarked = marked == Marked::Absent && f.seen_cuts.is_none();
        f.seen_cuts = marked.cuts().or(f.seen_cuts);
        loop {
            let path = self.segment_path(f.base);
            let scan = scan_segment(
                &path,
                f.base,
                Some((f.base + f.records, f.valid_len, f.index.clone())),
                false,
            )?;
            f.valid_len = scan.valid_len;
            f.records = scan.records;
            f.index = scan.index;
            let end = f.base + f.records;
            {
                let mut segs = self.segments.write().unwrap_or_else(|p| p.into_inner());
                match segs.last_mut() {
                    Some(last) if last.base == f.base => {
                        last.end = end;
                        last.bytes = f.valid_len;
                        last.max_time = f.index.max_time;
                    }
                    _ => segs.push(SegmentInfo {
                        base: f.base,
                        end,
                        bytes: f.valid_len,
                        max_time: f.index.max_time,
                    }),
                }
            }
            // A newer segment starting exactly here means this one is sealed.
            if bases.contains(&end) && end != f.base {
                *f = Follow::at(end, f.seen_cuts);
                continue;
            }
            // Only what the writer has synced: all the file holds when an older rowlog
            // wrote the log and left no durable-end file, nothing new when the file
            // could not be read whole or went missing after being seen.
            let end = match marked {
                Marked::At(m) => end.min(m.end),
                _ if unmarked => end,
                _ => self.end(),
            };
            self.durable.send_if_modified(|d| {
                let changed = end > *d;
                *d = (*d).max(end);
                changed
            });
            return Ok(self.end());
        }
    }

    /// `e`, or "out of range" when it is a segment file that is no longer there and the
    /// oldest segment left on disk starts after `offset`: retention removed it while a
    /// reader (possibly in another process) was on its way in.
    fn removed_below(&self, offset: u64, e: LogError) -> LogError {
        let missing = matches!(&e, LogError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound);
        let oldest = list_segments(&self.dir)
            .ok()
            .and_then(|b| b.first().copied());
        match oldest {
            Some(start) if missing && offset < start => LogError::OffsetOutOfRange {
                partition: self.id,
                requested: offset,
                start,
                end: self.end(),
            },
            _ => e,
        }
    }

    /// Removes the sealed segments wholly below `before` (never the active one).
    /// Returns the number of segments and bytes removed.
    pub fn remove_segments_below(&self, before: u64) -> Result<(usize, u64), LogError> {
        let victims: Vec<SegmentInfo> = {
            let segs = self.segments();
            let active = segs.last().map(|s| s.base);
            segs.into_iter()
                .filter(|s| s.end <= before && Some(s.base) != active)
                .collect()
        };
        let (mut n, mut bytes) = (0, 0);
        for v in victims {
            // Drop it from the list first: a reader opening now gets "out of range", and
            // one already reading keeps its open file handle.
            self.segments
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .retain(|s| s.base != v.base);
            lock(&self.sealed_indexes).remove(&v.base);
            fs::remove_file(self.segment_path(v.base))
                .map_err(io("remove", &self.segment_path(v.base)))?;
            let _ = fs::remove_file(self.index_path(v.base));
            n += 1;
            bytes += v.bytes;
        }
        if n > 0 {
            atomic_file::sync_dir(&self.dir)?;
        }
        Ok((n, bytes))
    }
}

/// (end offset, bytes, max time) of a sealed segment, from its seal entry, or by
/// scanning the segment when the index cannot say.
fn sealed_summary(dir: &Path, base: u64) -> Result<(u64, u64, u64), LogError> {
    let path = dir.join(segment_name(base));
    let len = fs::metadata(&path).map_err(io("stat", &path))?.len();
    if let Some(entries) = index::read(&dir.join(index_name(base))) {
        if let Some((seal, rest)) = entries.split_last().filter(|(e, _)| e.byte == len) {
            // The index carries no checksum of its own: the seal is believed only when
            // the records after the last plain entry (at most an index interval and a
            // record) are whole, numbered on from it, and end at the seal's offset.
            let from = rest
                .last()
                .filter(|e| e.offset >= base && e.byte <= len)
                .map_or((base, 0), |e| (e.offset, e.byte));
            // A plain entry pointing at the wrong record makes the scan fail on
            // its offset: that too is only a damaged index, and the full scan decides.
            let tail = scan_segment(
                &path,
                base,
                Some((from.0, from.1, SegmentIndex::default())),
                false,
            );
            if tail.is_ok_and(|tail| {
                tail.stop.is_none()
                    && base + tail.records == seal.offset
                    && tail.index.max_time <= seal.max_time_before
            }) {
                return Ok((seal.offset, seal.byte, seal.max_time_before));
            }
            tracing::warn!(segment = %path.display(), "the segment's index disagrees with its records; scanning the whole segment");
        }
    }
    let scan = scan_segment(&path, base, None, false)?;
    scan.require_whole(&path)?;
    Ok((base + scan.records, scan.valid_len, scan.index.max_time))
}

/// A borrowed partition for cursors created inside the partition itself.
pub(crate) struct PartitionRef<'a>(&'a Partition);

pub(crate) trait PartitionAccess {
    fn part(&self) -> &Partition;
}
impl PartitionAccess for Arc<Partition> {
    fn part(&self) -> &Partition {
        self
    }
}
impl PartitionAccess for PartitionRef<'_> {
    fn part(&self) -> &Partition {
        self.0
    }
}

/// The largest payload buffer a cursor keeps between reads.
const KEEP_PAYLOAD_BUFFER: usize = 1 << 20;

/// A sequential reader position in one partition.
pub(crate) struct Cursor<P: PartitionAccess> {
    partition: P,
    base: u64,
    file: BufReader<File>,
    path: PathBuf,
    /// Byte position of `next` within the segment.
    byte: u64,
    pub next: u64,
    /// The partition's count of cuts when `file`'s read-ahead was last known good.
    cuts: u64,
    /// The last payload read by [`Cursor::read_frame_in`], reused: a reader decodes
    /// each record before it reads the next, so it needs no allocation of its own.
    payload: Vec<u8>,
}

impl<P: PartitionAccess> Cursor<P> {
    /// Positions a cursor at offset `from`, via the segment's index.
    pub fn open(partition: P, from: u64) -> Result<Self, LogError> {
        let p = partition.part();
        let segs = p.segments();
        let (start, end) = (p.start(), p.end());
        if from < start || from > end {
            return Err(LogError::OffsetOutOfRange {
                partition: p.id,
                requested: from,
                start,
                end,
            });
        }
        let base = segs
            .iter()
            .rev()
            .find(|s| s.base <= from)
            .map(|s| s.base)
            .unwrap_or(start);
        let (offset, byte) = p
            .index_of(base)
            .map_err(|e| p.removed_below(from, e))?
            .seek_offset(base, from);
        let mut c = Self::at(partition, base, offset, byte)?;
        while c.next < from {
            c.read_frame_in()?;
        }
        Ok(c)
    }

    fn at(partition: P, base: u64, offset: u64, byte: u64) -> Result<Self, LogError> {
        let cuts = partition.part().cuts.load(Ordering::SeqCst);
        let path = partition.part().segment_path(base);
        let mut file = File::open(&path)
            .map_err(io("open", &path))
            .map_err(|e| partition.part().removed_below(offset, e))?;
        file.seek(SeekFrom::Start(byte))
            .map_err(io("seek", &path))?;
        Ok(Self {
            partition,
            base,
            file: BufReader::with_capacity(256 << 10, file),
            path,
            byte,
            next: offset,
            cuts,
            payload: Vec::new(),
        })
    }

    #[cfg(test)]
    pub fn read_frame(&mut self) -> Result<(u64, Vec<u8>), LogError> {
        self.read_frame_in().map(|(o, _, p)| (o, p.to_vec()))
    }

    /// Reads the frame at `self.next` into the cursor's own buffer; returns its
    /// offset, time and payload. The caller guarantees it is durable.
    pub fn read_frame_in(&mut self) -> Result<(u64, u64, &[u8]), LogError> {
        let cuts = self.partition.part().cuts.load(Ordering::SeqCst);
        if cuts != self.cuts {
            self.drop_read_ahead()?;
            self.cuts = cuts;
        }
        let mut h = [0u8; HEADER_LEN];
        match self.file.read_exact(&mut h) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                // The record is in the next segment, which must start exactly here.
                let p = self.partition.part();
                if self.next < p.start() {
                    // Forced retention removed the segments ahead of this reader while
                    // it read: a loud gap, never a silent skip to what remains.
                    return Err(LogError::OffsetOutOfRange {
                        partition: p.id,
                        requested: self.next,
                        start: p.start(),
                        end: p.end(),
                    });
                }
                if !p.segments().iter().any(|s| s.base == self.next) || self.next == self.base {
                    return Err(LogError::Corrupt {
                        path: self.path.clone(),
                        byte: self.byte,
                        detail: format!("segment ends before durable offset {}", self.next),
                    });
                }
                self.base = self.next;
                self.cuts = p.cuts.load(Ordering::SeqCst);
                self.path = p.segment_path(self.base);
                let file = File::open(&self.path)
                    .map_err(io("open", &self.path))
                    .map_err(|e| p.removed_below(self.next, e))?;
                self.file = BufReader::with_capacity(256 << 10, file);
                self.byte = 0;
                return self.read_frame_in();
            }
            Err(e) => return Err(io("read", &self.path)(e)),
        }
        let corrupt = |detail: String| LogError::Corrupt {
            path: self.path.clone(),
            byte: self.byte,
            detail,
        };
        let (len, crc, offset, time_ms) = frame::header(&h);
        if len > MAX_PAYLOAD {
            return Err(corrupt(format!("record length {len} exceeds the limit")));
        }
        // One record far over the usual size would otherwise pin its memory.
        if self.payload.capacity() > KEEP_PAYLOAD_BUFFER && len <= KEEP_PAYLOAD_BUFFER {
            self.payload = Vec::new();
        }
        self.payload.clear();
        self.payload.resize(len, 0);
        self.file
            .read_exact(&mut self.payload)
            .map_err(|e| corrupt(format!("record cut short: {e}")))?;
        let payload = &self.payload;
        if !frame::check(crc, offset, time_ms, payload) {
            return Err(corrupt(format!(
                "CRC mismatch in record claiming offset {offset}"
            )));
        }
        if offset != self.next {
            return Err(corrupt(format!(
                "record has offset {offset} where {} was expected",
                self.next
            )));
        }
        self.byte += (HEADER_LEN + len) as u64;
        self.next += 1;
        Ok((offset, time_ms, &self.payload))
    }

    /// Forgets read-ahead past the current position (after a cut, see `cuts`).
    fn drop_read_ahead(&mut self) -> Result<(), LogError> {
        self.file
            .seek(SeekFrom::Start(self.byte))
            .map_err(io("seek", &self.path))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::tools::bench_log::{change, schema};

    /// The record bytes of change `i` (the log benchmark's, about 200 bytes).
    fn record(i: u64) -> Vec<u8> {
        let mut out = Vec::new();
        crate::log::record::encode(0, &change(&schema(), i), &mut out).unwrap();
        out
    }

    /// Writes `n` records from `first`.
    fn write(p: &Partition, first: u64, n: usize) -> Result<u64, LogError> {
        p.write(
            n,
            |i, out| {
                out.extend(record(first + i as u64));
                Ok(1_700_000_000_000 + first + i as u64)
            },
            &|_| None,
        )
    }

    /// A write of 8,000 records from offset 10 that fails at its 6,000th, after its
    /// first MiB (about 4,700 records of 220 bytes) reached the file; `meanwhile` runs
    /// just before it fails.
    fn write_failing_after_its_first_mib(p: &Partition, mut meanwhile: impl FnMut()) {
        let failed = p.write(
            8000,
            |i, out| {
                if i == 6000 {
                    meanwhile();
                    return Err(LogError::Decode {
                        partition: 0,
                        offset: 10 + i as u64,
                        detail: "injected".into(),
                    });
                }
                out.extend(record(10 + i as u64));
                Ok(1_700_000_000_000)
            },
            &|_| None,
        );
        assert!(failed.is_err());
    }

    /// Writes `n` records whose bytes are `record(first)`, … at the partition's end.
    fn write_records_of(p: &Partition, first: u64, n: usize) {
        p.write(
            n,
            |i, out| {
                out.extend(record(first + i as u64));
                Ok(1_700_000_000_000)
            },
            &|_| None,
        )
        .unwrap();
    }

    /// After [`write_failing_after_its_first_mib`]: 100 other records take offsets
    /// 10 to 109, synced.
    fn write_the_replacements(p: &Partition) {
        write_records_of(p, 1_000_000, 100);
        assert_eq!(p.sync(110).unwrap(), 110);
    }

    /// Reads offsets `from` to 109 through `c`: the records before the failed write,
    /// then the replacements, never a record the failed write left in a read-ahead.
    fn reads_the_replacements<P: PartitionAccess>(c: &mut Cursor<P>, from: u64) {
        for o in from..110u64 {
            let (got, bytes) = c.read_frame().expect("the replacing records read whole");
            assert_eq!(got, o);
            let want = if o < 10 {
                record(o)
            } else {
                record(1_000_000 + o - 10)
            };
            assert!(bytes == want, "offset {o}: a cut-off record was handed out");
        }
    }

    fn read_all(p: &Arc<Partition>) -> Vec<(u64, Vec<u8>)> {
        let mut c = Cursor::open(p.clone(), p.start()).unwrap();
        (p.start()..p.end())
            .map(|_| c.read_frame().unwrap())
            .collect()
    }

    /// A failed fsync: what was written after the last good one is cut off, the
    /// partition refuses appends, and the reopened partition holds exactly what was
    /// synced, so the source's re-read from its checkpoint writes the rest again.
    #[test]
    fn a_failed_fsync_cuts_back_to_the_last_good_one_and_stops_appends() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p0");
        let p = Partition::open(&path, 0, 1 << 20, true).unwrap();
        write(&p, 0, 10).unwrap();
        assert_eq!(p.sync(10).unwrap(), 10);
        let synced_len = fs::metadata(path.join(segment_name(0))).unwrap().len();

        write(&p, 10, 5).unwrap();
        p.fail_next_fsync.store(true, Ordering::SeqCst);
        let e = p
            .sync(15)
            .expect_err("the injected fsync failure is reported");
        assert!(
            matches!(
                &e,
                LogError::Io {
                    action: "fsync",
                    ..
                }
            ),
            "{e}"
        );
        assert_eq!(p.end(), 10, "readers never see the unsynced records");
        assert_eq!(
            fs::metadata(path.join(segment_name(0))).unwrap().len(),
            synced_len,
            "the bytes after the last good fsync are cut off"
        );
        let refused = write(&p, 10, 1).expect_err("no appends after a failed fsync");
        assert!(
            refused.to_string().contains("reopened"),
            "the error says what to do: {refused}"
        );
        assert!(
            p.sync(16).is_err(),
            "nor fsyncs that would report them durable"
        );
        drop(p);

        let p = Arc::new(Partition::open(&path, 0, 1 << 20, true).unwrap());
        assert_eq!((p.start(), p.end()), (0, 10));
        let got = read_all(&p);
        assert!(got
            .iter()
            .enumerate()
            .all(|(i, (o, b))| *o == i as u64 && *b == record(i as u64)));
        write(&p, 10, 5).unwrap();
        assert_eq!(p.sync(15).unwrap(), 15);
        assert_eq!(read_all(&p).len(), 15);
    }

    /// A write that fails after part of it reached the file is cut back and the same
    /// offsets are written again with other records. A reader whose read-ahead took in
    /// the cut bytes (valid frames, valid CRCs) reads the records that replaced them.
    #[test]
    fn a_reader_never_hands_out_a_record_a_failed_write_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p0");
        let p = Arc::new(Partition::open(&path, 0, 64 << 20, true).unwrap());
        write(&p, 0, 10).unwrap();
        assert_eq!(p.sync(10).unwrap(), 10);
        let synced = fs::metadata(path.join(segment_name(0))).unwrap().len();
        let mut c = Cursor::open(p.clone(), 0).unwrap();
        // In the meantime the reader reads record 0, and its read-ahead takes in the
        // written records past the durable end.
        write_failing_after_its_first_mib(&p, || {
            assert_eq!(c.read_frame().unwrap(), (0, record(0)));
        });
        assert_eq!(
            fs::metadata(path.join(segment_name(0))).unwrap().len(),
            synced,
            "the failed write is cut off"
        );
        write_the_replacements(&p);
        reads_the_replacements(&mut c, 1);
    }

    /// A read-only opener (the `rowlog log` tools, in another process) sees only what
    /// the writer has fsynced, and never hands out a record the writer then cut off,
    /// even when its read-ahead held it: neither after a failed write, which the writer
    /// survives, nor after a failed fsync and the writer's restart.
    #[test]
    fn a_read_only_opener_never_hands_out_what_the_writer_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p0");
        let p = Partition::open(&path, 0, 64 << 20, true).unwrap();
        write(&p, 0, 10).unwrap();
        assert_eq!(p.sync(10).unwrap(), 10);
        let tool = Arc::new(Partition::open(&path, 0, 64 << 20, false).unwrap());
        assert_eq!(tool.end(), 10);

        // While a failing write runs, the tool looks and a cursor of it reads ahead.
        let mut c = None;
        write_failing_after_its_first_mib(&p, || {
            assert_eq!(tool.refresh().unwrap(), 10, "unsynced: not shown");
            let mut cursor = Cursor::open(tool.clone(), 5).unwrap();
            assert_eq!(cursor.read_frame().unwrap(), (5, record(5)));
            c = Some(cursor);
        });
        let mut c = c.expect("the tool looked during the write");
        write_the_replacements(&p);
        assert_eq!(tool.refresh().unwrap(), 110);
        reads_the_replacements(&mut c, 6);

        // Records written, then a failed fsync cuts them off and stops the writer.
        write(&p, 110, 5).unwrap();
        assert_eq!(tool.refresh().unwrap(), 110);
        let mut c = Cursor::open(tool.clone(), 100).unwrap();
        for o in 100..110u64 {
            assert_eq!(c.read_frame().unwrap().0, o);
        }
        p.fail_next_fsync.store(true, Ordering::SeqCst);
        p.sync(115).expect_err("the injected fsync failure");
        assert_eq!(tool.refresh().unwrap(), 110, "cut records are never shown");
        drop(p);
        // The writer, restarted, writes other records at the same offsets.
        let p = Partition::open(&path, 0, 64 << 20, true).unwrap();
        write_records_of(&p, 2_000_000, 5);
        assert_eq!(p.sync(115).unwrap(), 115);
        assert_eq!(tool.refresh().unwrap(), 115);
        for o in 110..115u64 {
            let (got, bytes) = c.read_frame().unwrap();
            assert_eq!(got, o);
            assert!(
                bytes == record(2_000_000 + o - 110),
                "offset {o}: the tool handed out a record of the writer before its restart"
            );
        }
    }

    /// A durable-end file that cannot be read whole (a read racing the writer's rewrite
    /// every time, a torn file) tells a read-only view nothing: it shows nothing new,
    /// not the unsynced tail, until the file reads whole again.
    #[test]
    fn a_read_only_view_shows_nothing_new_while_the_durable_end_is_unreadable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p0");
        let p = Partition::open(&path, 0, 64 << 20, true).unwrap();
        write(&p, 0, 10).unwrap();
        assert_eq!(p.sync(10).unwrap(), 10);
        let tool = Partition::open(&path, 0, 64 << 20, false).unwrap();
        assert_eq!(tool.end(), 10);

        write(&p, 10, 5).unwrap();
        let marker = durable_end::path(&path);
        let mut torn = fs::read(&marker).unwrap();
        torn[0] ^= 0xff;
        // Written over in place: the writer's handle still writes this file.
        fs::write(&marker, &torn).unwrap();
        assert_eq!(
            tool.refresh().unwrap(),
            10,
            "unsynced records, unknown end: not shown"
        );

        assert_eq!(p.sync(15).unwrap(), 15);
        assert_eq!(tool.refresh().unwrap(), 15, "the writer rewrote it whole");
    }

    /// A sealed segment's index entry that lies about the segment's end (a flipped
    /// bit: the index has no checksum) is caught against the records and not believed.
    #[test]
    fn a_seal_entry_that_disagrees_with_the_records_is_not_believed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p0");
        // Segments of 16 KiB: about 80 records each, several index entries.
        let p = Partition::open(&path, 0, 16 << 10, true).unwrap();
        write(&p, 0, 200).unwrap();
        p.sync(200).unwrap();
        assert!(
            list_segments(&path).unwrap().len() >= 2,
            "a segment was sealed"
        );
        drop(p);
        let index = path.join(index_name(0));
        let good = fs::read(&index).unwrap();
        let seal_at = good.len() - index::ENTRY_LEN;
        let sealed_end = u64::from_le_bytes(good[seal_at..seal_at + 8].try_into().unwrap());
        // The seal's offset, then the offset and the byte of the last plain entry.
        let plain_at = seal_at - index::ENTRY_LEN;
        for (at, wrong) in [
            (seal_at, sealed_end + 1),
            (seal_at, sealed_end - 1),
            (seal_at, 0),
            (plain_at, 1),
            (plain_at + 8, 0),
        ] {
            let mut bad = good.clone();
            bad[at..at + 8].copy_from_slice(&wrong.to_le_bytes());
            fs::write(&index, &bad).unwrap();
            let p = Arc::new(Partition::open(&path, 0, 16 << 10, true).unwrap());
            assert_eq!(p.end(), 200, "index entry at byte {at} claiming {wrong}");
            let got = read_all(&p);
            assert!(
                got.iter().enumerate().all(|(i, (o, _))| *o == i as u64),
                "offsets stay dense with the index entry at byte {at} claiming {wrong}"
            );
        }
    }

    /// The fsync that seals a segment when it rolls fails the same way: the segment is
    /// cut back to its last good fsync and no new segment is started.
    #[test]
    fn a_failed_fsync_while_rolling_a_segment_cuts_back_too() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p0");
        // Segments of 4 KiB: about 20 records each.
        let p = Partition::open(&path, 0, 4 << 10, true).unwrap();
        write(&p, 0, 10).unwrap();
        p.sync(10).unwrap();
        let synced_len = fs::metadata(path.join(segment_name(0))).unwrap().len();
        p.fail_next_fsync.store(true, Ordering::SeqCst);
        let e = write(&p, 10, 100).expect_err("the roll's fsync fails");
        assert!(
            matches!(
                &e,
                LogError::Io {
                    action: "fsync",
                    ..
                }
            ),
            "{e}"
        );
        assert_eq!(
            list_segments(&path).unwrap(),
            vec![0],
            "no segment was started"
        );
        assert_eq!(
            fs::metadata(path.join(segment_name(0))).unwrap().len(),
            synced_len
        );
        assert!(write(&p, 10, 1).is_err());
        drop(p);
        let p = Arc::new(Partition::open(&path, 0, 4 << 10, true).unwrap());
        assert_eq!(p.end(), 10);
        assert_eq!(read_all(&p).len(), 10);
    }
}
