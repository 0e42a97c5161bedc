//! The sparse index of one segment: `{base:020}.index`, fixed 24-byte entries
//! `(offset u64, byte u64, max_time_before u64)`, little-endian.
//!
//! An entry is written every [`INDEX_INTERVAL`] bytes of log: the record with `offset`
//! starts at `byte`, and every record before it has a commit time ≤ `max_time_before`.
//! Reading from an offset is a binary search and a short scan; reading from a time is
//! a binary search on `max_time_before` (non-decreasing) and a short scan. A sealed
//! segment's index ends with a *seal* entry `(end offset, file length, max time)`.
//!
//! The index is derived data: it is rebuilt from the segment when missing or
//! inconsistent, never trusted over the segment itself.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::Path;

pub const INDEX_INTERVAL: u64 = 4096;
pub const ENTRY_LEN: usize = 24;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    pub offset: u64,
    pub byte: u64,
    pub max_time_before: u64,
}

impl Entry {
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.offset.to_le_bytes());
        out.extend_from_slice(&self.byte.to_le_bytes());
        out.extend_from_slice(&self.max_time_before.to_le_bytes());
    }

    fn decode(b: &[u8]) -> Self {
        let u = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap_or([0; 8]));
        Self {
            offset: u(0),
            byte: u(8),
            max_time_before: u(16),
        }
    }
}

/// The entries of a segment, plus what the writer needs to keep adding to it.
#[derive(Clone, Debug, Default)]
pub struct SegmentIndex {
    pub entries: Vec<Entry>,
    /// Byte position of the last entry (or 0): the next entry is due `INDEX_INTERVAL` later.
    pub last_byte: u64,
    /// Largest commit time of the records so far.
    pub max_time: u64,
}

/// Where a [`SegmentIndex`] stood before a write, to undo that write's entries
/// without copying the whole index (which grows with the segment) on every append.
#[derive(Clone, Copy, Debug)]
pub struct IndexMark {
    len: usize,
    last_byte: u64,
    max_time: u64,
}

impl SegmentIndex {
    pub fn mark(&self) -> IndexMark {
        IndexMark {
            len: self.entries.len(),
            last_byte: self.last_byte,
            max_time: self.max_time,
        }
    }

    /// Back to `mark`: entries added since are dropped. Only entries are ever added
    /// between a mark and its rewind, so the prefix is the index as it was.
    pub fn rewind(&mut self, mark: IndexMark) {
        self.entries.truncate(mark.len);
        self.last_byte = mark.last_byte;
        self.max_time = mark.max_time;
    }

    /// Called before writing the record `offset` at `byte`; returns the entry to
    /// persist when one is due.
    pub fn before_record(&mut self, offset: u64, byte: u64) -> Option<Entry> {
        if byte > 0 && byte - self.last_byte >= INDEX_INTERVAL {
            let e = Entry {
                offset,
                byte,
                max_time_before: self.max_time,
            };
            self.entries.push(e);
            self.last_byte = byte;
            Some(e)
        } else {
            None
        }
    }

    pub fn after_record(&mut self, time_ms: u64) {
        self.max_time = self.max_time.max(time_ms);
    }

    /// Where to start scanning for `offset`: the last entry at or before it.
    pub fn seek_offset(&self, base: u64, offset: u64) -> (u64, u64) {
        match self.entries.partition_point(|e| e.offset <= offset) {
            0 => (base, 0),
            i => (self.entries[i - 1].offset, self.entries[i - 1].byte),
        }
    }

    /// Where to start scanning for the first record with time ≥ `t`: the last entry
    /// before which every record is older than `t`.
    pub fn seek_time(&self, base: u64, t: u64) -> (u64, u64) {
        match self.entries.partition_point(|e| e.max_time_before < t) {
            0 => (base, 0),
            i => (self.entries[i - 1].offset, self.entries[i - 1].byte),
        }
    }
}

/// Reads an index file; `None` when it is missing or not a whole number of entries
/// with increasing offsets and bytes (the caller then rebuilds it).
pub fn read(path: &Path) -> Option<Vec<Entry>> {
    let mut bytes = Vec::new();
    File::open(path).ok()?.read_to_end(&mut bytes).ok()?;
    if bytes.len() % ENTRY_LEN != 0 {
        return None;
    }
    let entries: Vec<Entry> = bytes.chunks_exact(ENTRY_LEN).map(Entry::decode).collect();
    let increasing = entries.windows(2).all(|w| {
        w[0].offset < w[1].offset
            && w[0].byte < w[1].byte
            && w[0].max_time_before <= w[1].max_time_before
    });
    increasing.then_some(entries)
}

/// Replaces the index file with `entries`.
pub fn write(path: &Path, entries: &[Entry], sync: bool) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(entries.len() * ENTRY_LEN);
    for e in entries {
        e.encode(&mut buf);
    }
    let mut f = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(path)?;
    f.write_all(&buf)?;
    if sync {
        f.sync_data()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeks_land_at_or_before_the_target() {
        let mut idx = SegmentIndex::default();
        let mut byte = 0;
        for off in 100..200u64 {
            idx.before_record(off, byte);
            idx.after_record(1000 + off);
            byte += 500;
        }
        let (o, b) = idx.seek_offset(100, 150);
        assert!(o <= 150 && b == (o - 100) * 500);
        let (o, _) = idx.seek_time(100, 1150);
        assert!(o <= 150, "every record before {o} is older than 1150");
        assert_eq!(idx.seek_offset(100, 100), (100, 0));
    }

    #[test]
    fn a_rewind_undoes_exactly_the_records_since_its_mark() {
        let mut idx = SegmentIndex::default();
        let record = |idx: &mut SegmentIndex, off: u64| {
            idx.before_record(off, off * 1000);
            idx.after_record(5000 + off);
        };
        (0..20).for_each(|off| record(&mut idx, off));
        let kept = idx.clone();
        let mark = idx.mark();
        (20..40).for_each(|off| record(&mut idx, off));
        assert!(idx.entries.len() > kept.entries.len());
        idx.rewind(mark);
        assert_eq!(
            (&idx.entries, idx.last_byte, idx.max_time),
            (&kept.entries, kept.last_byte, kept.max_time)
        );
        // Writing the same records again yields the same index as the first time.
        let mut again = idx.clone();
        (20..40).for_each(|off| record(&mut again, off));
        let mut once = kept;
        (20..40).for_each(|off| record(&mut once, off));
        assert_eq!(again.entries, once.entries);
    }
}
