//! The barrier that orders a schema change against the rows of every partition.
//!
//! A schema change is appended to every partition at its place in source order. Each
//! partition task, on reaching it, first lets its workers apply everything before it,
//! then arrives here. The last partition to arrive applies the change on the
//! destination and reports the outcome; the others wait for it and then go on. So
//! every row written before the DDL on the source is applied before it on the
//! destination, and every row after it is applied after.
//!
//! Worked example, two partitions, `ALTER TABLE t ADD c` between row changes:
//!
//! ```text
//! p0: [r1 t.id=1] [ALTER] [r4 t.id=1 with c]     p1: [r2 t.id=2] [r3 t.id=2] [ALTER] [r5 …]
//! p0 applies r1, arrives, waits · p1 applies r2, r3, arrives last, runs ALTER
//! both go on: r4 and r5 are written with the new column, which now exists
//! ```
//!
//! Restarts: a change is recorded on the destination in the same step that applies it
//! and no partition passes it before that, so a partition that meets it again after a
//! restart either finds it recorded (and skips it without waiting) or knows every
//! partition will arrive again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use rowlog_api::ChangeId;
use tokio::sync::Notify;

struct Arrival {
    arrived: u32,
    /// Partitions that have not yet learnt the outcome; the entry goes at zero.
    waiting: u32,
    outcome: Option<Result<(), String>>,
}

pub struct SchemaBarrier {
    partitions: u32,
    pending: Mutex<HashMap<ChangeId, Arrival>>,
    changed: Notify,
}

/// What a partition does after arriving.
#[derive(Debug, PartialEq, Eq)]
pub enum Role {
    /// Every other partition is here: apply the change, then [`SchemaBarrier::finish`].
    Leader,
    /// Wait for the leader with [`SchemaBarrier::wait`].
    Follower,
}

impl SchemaBarrier {
    pub fn new(partitions: u32) -> Arc<Self> {
        Arc::new(Self {
            partitions: partitions.max(1),
            pending: Mutex::new(HashMap::new()),
            changed: Notify::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<ChangeId, Arrival>> {
        // The map stays consistent under a panicking holder: every update is one step.
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A partition reached schema change `id` with everything before it applied.
    pub fn arrive(&self, id: &ChangeId) -> Role {
        let mut map = self.lock();
        let a = map.entry(id.clone()).or_insert(Arrival {
            arrived: 0,
            waiting: 0,
            outcome: None,
        });
        a.arrived += 1;
        if a.arrived >= self.partitions {
            Role::Leader
        } else {
            a.waiting += 1;
            Role::Follower
        }
    }

    /// The leader's outcome; wakes every follower.
    pub fn finish(&self, id: &ChangeId, outcome: Result<(), String>) {
        let mut map = self.lock();
        if let Some(a) = map.get_mut(id) {
            if a.waiting == 0 {
                map.remove(id);
            } else {
                a.outcome = Some(outcome);
            }
        }
        drop(map);
        self.changed.notify_waiters();
    }

    /// Waits for the leader's outcome (cancel-safe: dropping the future leaves the
    /// entry for the others).
    pub async fn wait(&self, id: &ChangeId) -> Result<(), String> {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut map = self.lock();
                if let Some(a) = map.get_mut(id) {
                    if let Some(outcome) = a.outcome.clone() {
                        a.waiting -= 1;
                        if a.waiting == 0 {
                            map.remove(id);
                        }
                        return outcome;
                    }
                }
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(pos: u64) -> ChangeId {
        ChangeId {
            epoch: 0,
            event: format!("binlog.000001:{pos}").parse().unwrap(),
            index: 0,
        }
    }

    #[tokio::test]
    async fn the_last_partition_to_arrive_leads_and_the_others_get_its_outcome() {
        let b = SchemaBarrier::new(3);
        assert_eq!(b.arrive(&id(10)), Role::Follower);
        assert_eq!(b.arrive(&id(10)), Role::Follower);
        let (w1, w2) = (b.clone(), b.clone());
        let f1 = tokio::spawn(async move { w1.wait(&id(10)).await });
        let f2 = tokio::spawn(async move { w2.wait(&id(10)).await });
        tokio::task::yield_now().await;
        assert!(!f1.is_finished(), "followers wait for the leader");
        assert_eq!(b.arrive(&id(10)), Role::Leader);
        b.finish(&id(10), Err("rejected".into()));
        assert_eq!(f1.await.unwrap(), Err("rejected".into()));
        assert_eq!(f2.await.unwrap(), Err("rejected".into()));
        assert!(b.lock().is_empty(), "nothing left behind");
    }

    #[tokio::test]
    async fn one_partition_leads_alone() {
        let b = SchemaBarrier::new(1);
        assert_eq!(b.arrive(&id(5)), Role::Leader);
        b.finish(&id(5), Ok(()));
        assert!(b.lock().is_empty());
    }
}
