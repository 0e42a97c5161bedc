//! Counters the stages update and the daemon reports. Plain atomics: cheap on the hot
//! path, read without locks.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

#[derive(Default)]
pub struct Stats {
    pub source_changes: AtomicU64,
    pub duplicates_dropped: AtomicU64,
    pub appended: AtomicU64,
    pub applied: AtomicU64,
    /// Destination transactions that applied a worker's batch.
    pub batches: AtomicU64,
    /// Batches retried after a transient destination error (deadlock, lock wait
    /// timeout, lost connection).
    pub apply_retries: AtomicU64,
    /// Changes the destination rejected, written to the dead-letter file.
    pub dead_lettered: AtomicU64,
    /// Restarts of the pipeline after its lease on the destination lapsed.
    pub restarts: AtomicU64,
    pub checkpoint: Mutex<String>,
    /// Partitions stopped by a change the destination rejects, with the error.
    pub halted: Mutex<Vec<(u32, String)>>,
}

impl Stats {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
    pub fn set_checkpoint(&self, s: String) {
        *self.checkpoint.lock().unwrap_or_else(|p| p.into_inner()) = s;
    }
    pub fn halt(&self, partition: u32, error: String) {
        self.halted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((partition, error));
    }
    pub fn halted(&self) -> Vec<(u32, String)> {
        self.halted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
    pub fn checkpoint(&self) -> String {
        self.checkpoint
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}
