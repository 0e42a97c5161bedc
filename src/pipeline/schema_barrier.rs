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
//!
//! A partition can start a run already past a change that is not recorded: moved
//! there by `rowlog offsets set`, or past a change an earlier version passed without
//! recording it. It will never arrive. Each partition task therefore tells the barrier
//! at start the id of the last entry before where it starts ([`SchemaBarrier::started`]);
//! a change at or before that id counts that partition as arrived, and when that makes
//! every partition arrived, a waiting partition is told to lead ([`Waited::Lead`]).
//!
//! A halted partition (a change the destination rejects for good) never arrives again
//! in this run: [`SchemaBarrier::halt`] records it, and whoever waits, or arrives
//! later, learns which partition it would wait for instead of waiting silently.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use rowlog_api::ChangeId;
use tokio::sync::Notify;

struct Arrival {
    arrived: u32,
    /// Partitions that have not yet learnt the outcome; the entry goes at zero.
    waiting: u32,
    /// A leader has been chosen (it arrived last, or took the lead while waiting).
    led: bool,
    outcome: Option<Result<(), String>>,
}

#[derive(Default)]
struct State {
    pending: HashMap<ChangeId, Arrival>,
    /// Partitions halted in this run: a change they have not passed cannot gather
    /// every partition.
    halted: Vec<u32>,
    /// Per partition that reported it: the id of the last entry before where it
    /// started reading in this run (`None`: it starts at the beginning).
    started_after: HashMap<u32, Option<ChangeId>>,
}

impl State {
    /// Whether `partition` started this run past change `id`: it never arrives at it.
    fn is_past(&self, partition: u32, id: &ChangeId) -> bool {
        self.started_after
            .get(&partition)
            .is_some_and(|after| after.as_ref().is_some_and(|a| a >= id))
    }

    /// How many partitions started this run past change `id`.
    fn past(&self, id: &ChangeId) -> u32 {
        self.started_after
            .keys()
            .filter(|&&p| self.is_past(p, id))
            .count() as u32
    }

    /// A halted partition change `id` would wait for (one not past it).
    fn halted_before(&self, id: &ChangeId) -> Option<u32> {
        self.halted.iter().copied().find(|&p| !self.is_past(p, id))
    }
}

pub struct SchemaBarrier {
    partitions: u32,
    state: Mutex<State>,
    changed: Notify,
}

/// Why a follower stopped waiting.
#[derive(Debug, PartialEq, Eq)]
pub enum Waited {
    /// The leader's outcome: applied, or its error.
    Outcome(Result<(), String>),
    /// This partition halted: the change cannot gather every partition in this run.
    Halted(u32),
    /// The partitions still missing started past the change: this one leads (apply
    /// the change, then [`SchemaBarrier::finish`]).
    Lead,
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
            state: Mutex::new(State::default()),
            changed: Notify::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent under a panicking holder: every update is one step.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `partition` starts reading after the entry with id `after` (`None`: from the
    /// beginning): it will not arrive at changes at or before that id.
    pub fn started(&self, partition: u32, after: Option<ChangeId>) {
        let mut state = self.lock();
        state.started_after.insert(partition, after);
        drop(state);
        // Some change waited for may now have every partition.
        self.changed.notify_waiters();
    }

    /// `partition` halted and will not arrive at any change in this run.
    pub fn halt(&self, partition: u32) {
        let mut state = self.lock();
        if !state.halted.contains(&partition) {
            state.halted.push(partition);
        }
        drop(state);
        self.changed.notify_waiters();
    }

    /// A partition reached schema change `id` with everything before it applied.
    pub fn arrive(&self, id: &ChangeId) -> Role {
        let mut state = self.lock();
        let past = state.past(id);
        let a = state.pending.entry(id.clone()).or_insert(Arrival {
            arrived: 0,
            waiting: 0,
            led: false,
            outcome: None,
        });
        a.arrived += 1;
        if !a.led && a.arrived + past >= self.partitions {
            a.led = true;
            Role::Leader
        } else {
            a.waiting += 1;
            Role::Follower
        }
    }

    /// The leader's outcome; wakes every follower.
    pub fn finish(&self, id: &ChangeId, outcome: Result<(), String>) {
        let mut state = self.lock();
        if let Some(a) = state.pending.get_mut(id) {
            if a.waiting == 0 {
                state.pending.remove(id);
            } else {
                a.outcome = Some(outcome);
            }
        }
        drop(state);
        self.changed.notify_waiters();
    }

    /// Waits for the leader's outcome, or for news that a partition halted
    /// (cancel-safe: dropping the future leaves the entry for the others).
    pub async fn wait(&self, id: &ChangeId) -> Waited {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut state = self.lock();
                let (halted, past) = (state.halted_before(id), state.past(id));
                if let Some(a) = state.pending.get_mut(id) {
                    if let Some(outcome) = a.outcome.clone() {
                        a.waiting -= 1;
                        if a.waiting == 0 {
                            state.pending.remove(id);
                        }
                        return Waited::Outcome(outcome);
                    }
                    if !a.led && a.arrived + past >= self.partitions {
                        a.led = true;
                        a.waiting -= 1;
                        return Waited::Lead;
                    }
                }
                if let Some(p) = halted {
                    // The entry stays: in this run nobody can lead it any more.
                    return Waited::Halted(p);
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
        assert_eq!(f1.await.unwrap(), Waited::Outcome(Err("rejected".into())));
        assert_eq!(f2.await.unwrap(), Waited::Outcome(Err("rejected".into())));
        assert!(b.lock().pending.is_empty(), "nothing left behind");
    }

    #[tokio::test]
    async fn one_partition_leads_alone() {
        let b = SchemaBarrier::new(1);
        assert_eq!(b.arrive(&id(5)), Role::Leader);
        b.finish(&id(5), Ok(()));
        assert!(b.lock().pending.is_empty());
    }

    #[tokio::test]
    async fn partitions_that_started_past_a_change_count_as_arrived() {
        let b = SchemaBarrier::new(3);
        // Partition 2 starts after the entry at 20, so after the change at 10.
        b.started(2, Some(id(20)));
        b.started(0, None);
        assert_eq!(b.arrive(&id(10)), Role::Follower);
        assert_eq!(b.arrive(&id(10)), Role::Leader, "the third is past it");
        b.finish(&id(10), Ok(()));
        // A change after partition 2's start still waits for it.
        assert_eq!(b.arrive(&id(30)), Role::Follower);
        assert_eq!(b.arrive(&id(30)), Role::Follower);

        // Partition 1 learns only while waiting that the missing one is past: it leads.
        let b = SchemaBarrier::new(2);
        assert_eq!(b.arrive(&id(10)), Role::Follower);
        let w = b.clone();
        let waiting = tokio::spawn(async move { w.wait(&id(10)).await });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        b.started(0, Some(id(10)));
        assert_eq!(waiting.await.unwrap(), Waited::Lead);
        b.finish(&id(10), Ok(()));
        assert!(b.lock().pending.is_empty(), "nothing left behind");
    }

    #[tokio::test]
    async fn a_halted_partition_releases_who_waits_for_it_and_who_arrives_later() {
        let b = SchemaBarrier::new(3);
        assert_eq!(b.arrive(&id(10)), Role::Follower);
        let w = b.clone();
        let waiting = tokio::spawn(async move { w.wait(&id(10)).await });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        b.halt(2);
        assert_eq!(waiting.await.unwrap(), Waited::Halted(2));
        assert_eq!(b.arrive(&id(10)), Role::Follower);
        assert_eq!(b.wait(&id(10)).await, Waited::Halted(2));

        // A halted partition that started past the change is not waited for there.
        let b = SchemaBarrier::new(3);
        b.started(0, Some(id(20)));
        b.halt(0);
        assert_eq!(b.arrive(&id(10)), Role::Follower);
        let w = b.clone();
        let waiting = tokio::spawn(async move { w.wait(&id(10)).await });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "partition 0 is past the change");
        assert_eq!(b.arrive(&id(10)), Role::Leader);
        b.finish(&id(10), Ok(()));
        assert_eq!(waiting.await.unwrap(), Waited::Outcome(Ok(())));
    }
}
