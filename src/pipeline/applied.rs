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
//! Rows of another worker count are removed once this run's workers have all stored
//! offsets at or past them: then this run's rows say as much.

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

    /// With `workers` workers, the offset below which everything is applied, when each
    /// of them stored one (the lowest of theirs, plus one).
    pub fn complete_below(&self, workers: u32) -> Option<u64> {
        let split = self.splits.iter().find(|s| s.workers == workers)?;
        let lowest = split
            .through
            .iter()
            .copied()
            .collect::<Option<Vec<u64>>>()?
            .into_iter()
            .min()?;
        Some(lowest + 1)
    }

    /// The rows among `rows` that say nothing this run's rows (`workers`) do not: of
    /// another worker count and at or below every offset this run's workers stored.
    pub fn superseded(&self, rows: &[WorkerProgress], workers: u32) -> Vec<WorkerProgress> {
        let Some(below) = self.complete_below(workers) else {
            return Vec::new();
        };
        rows.iter()
            .filter(|r| r.workers != workers && r.offset < below)
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
    fn a_split_is_complete_only_when_each_of_its_workers_stored_an_offset() {
        let rows = [row(2, 0, 10), row(2, 1, 20), row(3, 1, 30), row(3, 2, 40)];
        let applied = Applied::from_rows(&rows, 8);
        assert_eq!(applied.complete_below(2), Some(11));
        assert_eq!(
            applied.complete_below(3),
            None,
            "worker 0 of 3 stored nothing"
        );
        assert_eq!(applied.complete_below(4), None);
        assert!(applied.reaches(40) && !applied.reaches(41));
    }

    #[test]
    fn rows_of_another_worker_count_are_superseded_once_every_worker_passed_them() {
        let rows = [row(4, 0, 10), row(4, 3, 25), row(2, 0, 20), row(2, 1, 30)];
        let applied = Applied::from_rows(&rows, 8);
        // This run's two workers are at 20 and 30: the row at 10 says nothing more,
        // the row at 25 still covers 21..=25 for keys worker 0 of 2 has not reached.
        assert_eq!(applied.superseded(&rows, 2), vec![row(4, 0, 10)]);
        // Three workers stored nothing: nothing is superseded.
        assert!(applied.superseded(&rows, 3).is_empty());
    }

    #[test]
    fn no_rows_cover_nothing() {
        let applied = Applied::from_rows(&[], 8);
        assert!(!applied.covers(0, 0));
        assert_eq!(applied.complete_below(4), None);
        assert!(!applied.reaches(0));
    }
}
