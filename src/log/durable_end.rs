//! A partition's durable-end file (`partitions/NNNNN/durable.end`): how a read-only
//! opener in another process (the `rowlog log` tools beside a running daemon) learns
//! which records the writer has fsynced.
//!
//! Why it exists: a segment file holds more than the durable records. Records written
//! but not yet synced sit at its end (for up to `log.fsync_interval_ms` under the
//! interval policy), and records that a failed write or fsync then cuts off may sit
//! there before the cut. The writer's own readers only see records below the durable
//! end it keeps in memory; this file carries that end, and a count of the writer's
//! cuts, to other processes.
//!
//! # Invariants
//! * The writer rewrites it in place after every fsync of the active segment that
//!   succeeded, and after recovery on open (which fsyncs the recovered tail first). So
//!   its end never exceeds what is on disk: a reader bounded by it sees only records
//!   that a crash, power failure included, cannot take away.
//! * It is never synced itself: after a power failure it may be older than the log,
//!   which only makes readers see less until the writer opens the log again.
//! * `cuts` changes whenever the writer cuts the active segment (a failed write or
//!   fsync, and every writable open, which may have cut a torn tail): a reader whose
//!   read-ahead may hold cut bytes forgets it when the count moves.
//! * 20 bytes: end u64 LE, cuts u64 LE, CRC-32 of those 16 bytes. A missing file
//!   means a log written before this file existed: all its segments hold counts. A
//!   file that is there but short or failing its CRC after a few reads apart (a read
//!   that keeps racing rewrites, or a file a power failure tore) is [`Marked::Unreadable`]:
//!   a reader that already follows the writer then shows nothing new, never the
//!   unsynced tail.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

pub(crate) const FILE_NAME: &str = "durable.end";

const LEN: usize = 20;

/// What the file says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct DurableEnd {
    /// One past the last record the writer has fsynced.
    pub end: u64,
    /// The writer's count of cuts of the active segment, carried across restarts.
    pub cuts: u64,
}

pub(crate) fn path(partition_dir: &Path) -> PathBuf {
    partition_dir.join(FILE_NAME)
}

fn encode(d: DurableEnd) -> [u8; LEN] {
    let mut b = [0u8; LEN];
    b[..8].copy_from_slice(&d.end.to_le_bytes());
    b[8..16].copy_from_slice(&d.cuts.to_le_bytes());
    let crc = crc32fast::hash(&b[..16]);
    b[16..].copy_from_slice(&crc.to_le_bytes());
    b
}

fn decode(b: &[u8]) -> Option<DurableEnd> {
    if b.len() < LEN {
        return None;
    }
    let crc = u32::from_le_bytes(b[16..20].try_into().ok()?);
    if crc32fast::hash(&b[..16]) != crc {
        return None;
    }
    Some(DurableEnd {
        end: u64::from_le_bytes(b[..8].try_into().ok()?),
        cuts: u64::from_le_bytes(b[8..16].try_into().ok()?),
    })
}

/// What a read of the file found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Marked {
    /// No file: a log of a rowlog older than it, whose files hold only counted records.
    Absent,
    /// A file that is not whole, or could not be read: what is synced is unknown.
    Unreadable,
    At(DurableEnd),
}

impl Marked {
    pub fn cuts(self) -> Option<u64> {
        match self {
            Marked::At(d) => Some(d.cuts),
            _ => None,
        }
    }
}

/// Reads the file in `partition_dir`. A read that races the writer's rewrite can see a
/// mix of both (a buffered write and read of the same page are not atomic to each
/// other); the writer rewrites at most once per fsync, so a few reads a millisecond
/// apart settle it.
pub(crate) fn read(partition_dir: &Path) -> Marked {
    const TRIES: usize = 5;
    let p = path(partition_dir);
    for attempt in 0..TRIES {
        match std::fs::read(&p) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Marked::Absent,
            Ok(b) => {
                if let Some(d) = decode(&b) {
                    return Marked::At(d);
                }
            }
            Err(_) => {}
        }
        if attempt + 1 < TRIES {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
    Marked::Unreadable
}

/// The writer's handle on the file.
pub(crate) struct Writer {
    file: File,
}

impl Writer {
    /// Opens (creating) the file and writes `d`.
    pub fn open(partition_dir: &Path, d: DurableEnd) -> std::io::Result<Self> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(path(partition_dir))?;
        let w = Self { file };
        w.store(d)?;
        Ok(w)
    }

    /// Rewrites the file in place: one write of 20 bytes into the page cache, no sync.
    pub fn store(&self, d: DurableEnd) -> std::io::Result<()> {
        self.file.write_all_at(&encode(d), 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_damaged_or_short_file_reads_as_unreadable_and_a_missing_one_as_absent() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read(dir.path()), Marked::Absent, "no file");
        let d = DurableEnd { end: 42, cuts: 7 };
        let w = Writer::open(dir.path(), d).unwrap();
        assert_eq!(read(dir.path()), Marked::At(d));
        let later = DurableEnd { end: 43, cuts: 7 };
        w.store(later).unwrap();
        assert_eq!(read(dir.path()), Marked::At(later));
        let mut bytes = std::fs::read(path(dir.path())).unwrap();
        bytes[3] ^= 1;
        std::fs::write(path(dir.path()), &bytes).unwrap();
        assert_eq!(
            read(dir.path()),
            Marked::Unreadable,
            "a flipped bit fails the CRC"
        );
        std::fs::write(path(dir.path()), &bytes[..10]).unwrap();
        assert_eq!(read(dir.path()), Marked::Unreadable, "a short file");
    }
}
