//! What the destination's progress rows say a partition has applied, read when the
//! partition starts, so that the restart skips it.
//!
//! A progress row `(workers = g, worker = w, offset = x)` means: every change at or
//! below `x` that worker `w` of a split into `g` workers is routed is applied. It stays
//! true whatever ran later, since changes are only ever applied in log order per key
//! and a run skips what the rows cover. So a change is applied if *any* row covers it,
//! under the worker count that wrote the row, and a restart with another worker count
//! skips exactly what was applied: keys moved between workers are looked up under the
//! old split. (Until 2026-11-28 rows of another worker count were dropped and the
//! partition replayed from the log's committed offset, up to a second behind: a keyless
//! table got those rows twice.)
//!
//! A restart starts at the log's committed offset or, when some worker count has a row
//! for each of its workers, past the lowest of those, whichever is later. Rows below
//! that (other than the rows that set it) are removed: no run reads there again.

use rowlog_api::WorkerProgress;

use super::partitioner::worker_of;

/// One worker count's rows: the offset each of its workers stored, if any.
#[derive(Debug)]
struct Split {
    workers: u32,
    through: Vec<Option<u64>>,
}

#[derive(Debug)]
pub struct Applied {
    partitions: u32,
    splits: Vec<Split>,
    /// The highest offset any row covers: past it nothing is skipped.
    highest: Option<u64>,
}

impl Applied {
    /// From the rows of this partition and log (rows of another log mean nothing here).
    pub fn from_rows(rows: &[WorkerProgress], partitions: u32) -> Applied {
        let mut splits: Vec<Split> = Vec::new();
        for r in rows {
            let i = match splits.iter().position(|s| s.workers == r.workers) {
                Some(i) => i,
                None => {
                    splits.push(Split {
                        workers: r.workers,
                        through: vec![None; r.workers.max(1) as usize],
                    });
                    splits.len() - 1
                }
            };
            // A worker number out of its split's range is not one rowlog wrote; it
            // covers nothing (it is never looked up).
            if let Some(slot) = splits[i].through.get_mut(r.worker as usize) {
                *slot = Some(slot.map_or(r.offset, |o| o.max(r.offset)));
            }
        }
        let highest = splits
            .iter()
            .flat_map(|s| s.through.iter().flatten())
            .copied()
            .max();
        Applied {
            partitions,
            splits,
            highest,
        }
    }

    /// Whether the change at `offset` with routing hash `hash` is applied already.
    pub fn covers(&self, offset: u64, hash: u64) -> bool {
        if self.highest.is_none_or(|h| offset > h) {
            return false;
        }
        self.splits.iter().any(|s| {
            s.through[worker_of(hash, self.partitions, s.workers) as usize]
                .is_some_and(|x| offset <= x)
        })
    }

    /// The offset below which everything is applied, by one worker count whose
    /// workers each stored a row (the lowest of theirs, plus one): of such counts the
    /// highest. A count with a worker that has no row says nothing here. A run raises
    /// every worker's row at its start, so that is a count whose run started at
    /// offset 0 and whose worker got no change, rows of a version before the raise,
    /// or rows removed by `rowlog offsets set`.
    pub fn complete_below(&self) -> Option<u64> {
        self.splits
            .iter()
            .filter_map(|s| {
                Some(
                    s.through
                        .iter()
                        .copied()
                        .collect::<Option<Vec<u64>>>()?
                        .into_iter()
                        .min()?
                        + 1,
                )
            })
            .max()
    }

    /// The rows among `rows` that say nothing [`Applied::complete_below`] does not:
    /// below it, where no run reads again (every later start is at or past it: rows
    /// only move forward, and these rows are removed only below another complete
    /// count's offset).
    pub fn superseded(&self, rows: &[WorkerProgress]) -> Vec<WorkerProgress> {
        let Some(below) = self.complete_below() else {
            return Vec::new();
        };
        rows.iter()
            .filter(|r| r.offset + 1 < below)
            .copied()
            .collect()
    }

    /// Whether any row covers an offset at or past `offset`.
    pub fn reaches(&self, offset: u64) -> bool {
        self.highest.is_some_and(|h| h >= offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::partitioner::{key_hash, partition_of};

    fn row(workers: u32, worker: u32, offset: u64) -> WorkerProgress {
        WorkerProgress {
            log_id: 1,
            partition: 0,
            worker,
            workers,
            offset,
        }
    }

    #[test]
    fn a_change_is_covered_by_the_row_of_the_worker_it_went_to_under_that_rows_split() {
        let partitions = 2;
        // Two workers stored 10 and 20; a later run of three got to 30 on worker 1 only.
        let rows = [row(2, 0, 10), row(2, 1, 20), row(3, 1, 30)];
        let applied = Applied::from_rows(&rows, partitions);
        let mut checked = 0;
        for i in 0..2_000u32 {
            let h = key_hash(&i.to_le_bytes());
            if partition_of(h, partitions) != 0 {
                continue;
            }
            let old = [10, 20][worker_of(h, partitions, 2) as usize];
            let new = if worker_of(h, partitions, 3) == 1 {
                30
            } else {
                0
            };
            for offset in [5, 10, 11, 20, 21, 30, 31] {
                let want = offset <= old || (new > 0 && offset <= new);
                assert_eq!(applied.covers(offset, h), want, "key {i} offset {offset}");
                checked += 1;
            }
        }
        assert!(checked > 1_000);
        assert!(!applied.covers(31, 0));
    }

    #[test]
    fn the_start_is_set_by_the_highest_worker_count_whose_every_worker_stored_a_row() {
        // Two workers stored 10 and 20; of three, worker 0 stored nothing.
        let rows = [row(2, 0, 10), row(2, 1, 20), row(3, 1, 30), row(3, 2, 40)];
        let applied = Applied::from_rows(&rows, 8);
        assert_eq!(applied.complete_below(), Some(11));
        assert!(applied.reaches(40) && !applied.reaches(41));
        let rows = [
            row(2, 0, 10),
            row(2, 1, 20),
            row(3, 0, 12),
            row(3, 1, 30),
            row(3, 2, 40),
        ];
        assert_eq!(Applied::from_rows(&rows, 8).complete_below(), Some(13));
    }

    #[test]
    fn rows_below_a_complete_worker_count_are_superseded_but_never_that_counts_own() {
        let rows = [row(4, 0, 10), row(4, 3, 25), row(2, 0, 20), row(2, 1, 30)];
        let applied = Applied::from_rows(&rows, 8);
        // Two workers are at 20 and 30, so every start is at 21 or later: the row at 10
        // says nothing more; the row at 25 still covers 21..=25 for keys worker 0 of 2
        // has not reached; the row at 20 is the one that says where starts are.
        assert_eq!(applied.superseded(&rows), vec![row(4, 0, 10)]);
        // Without them, the start is the same.
        let kept: Vec<WorkerProgress> = rows
            .iter()
            .filter(|r| **r != row(4, 0, 10))
            .copied()
            .collect();
        assert_eq!(
            Applied::from_rows(&kept, 8).complete_below(),
            applied.complete_below()
        );
        // No count is complete: nothing is superseded.
        let partial = [row(4, 0, 10), row(2, 1, 30)];
        assert!(Applied::from_rows(&partial, 8)
            .superseded(&partial)
            .is_empty());
    }

    #[test]
    fn no_rows_cover_nothing() {
        let applied = Applied::from_rows(&[], 8);
        assert!(!applied.covers(0, 0));
        assert_eq!(applied.complete_below(), None);
        assert!(!applied.reaches(0));
    }
}
