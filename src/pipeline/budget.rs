//! A queue bounded twice: by items, like any bounded channel, and by the bytes its items
//! hold. Rows of hundreds of KB would otherwise let a queue sized for 2,000 ordinary
//! changes hold gigabytes.
//!
//! Each item is charged its approximate size when it is sent; the receiver gets the
//! charge with the item and releases it by dropping it, which it does only once the item
//! has left memory for good (appended to the log, applied to the destination), so the
//! budget bounds what waits in the queue *and* what the receiver holds in its batch.
//!
//! One item larger than the whole budget is charged the whole budget: it waits until the
//! queue is empty and then passes alone, so no size of row blocks the queue for ever.
//!
//! A receiver that gathers items into a batch until a deadline must not sit on the
//! budget's bytes while the sender waits for them: a sender that finds too few bytes
//! says so ([`Budget::starved`]), and such a receiver closes its batch at once.

use std::sync::Arc;

use tokio::sync::{mpsc, Notify, OwnedSemaphorePermit, Semaphore};

/// The bytes an item holds while it is queued or held by the receiver.
#[derive(Debug, Default)]
pub struct Charge(Option<OwnedSemaphorePermit>);

impl Charge {
    /// Adds `other` to this charge; both are released together.
    pub fn merge(&mut self, other: Charge) {
        match (&mut self.0, other.0) {
            (Some(mine), Some(theirs)) => mine.merge(theirs),
            (None, theirs) => self.0 = theirs,
            (Some(_), None) => {}
        }
    }

    /// Bytes held by this charge.
    pub fn bytes(&self) -> usize {
        self.0.as_ref().map_or(0, |p| p.num_permits())
    }
}

pub struct Sender<T> {
    tx: mpsc::Sender<(T, Charge)>,
    budget: Budget,
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        Sender {
            tx: self.tx.clone(),
            budget: self.budget.clone(),
        }
    }
}

pub type Receiver<T> = mpsc::Receiver<(T, Charge)>;

/// Bytes that several queues share: a partition's worker queues draw on one budget.
#[derive(Clone)]
pub struct Budget {
    bytes: Arc<Semaphore>,
    max: u32,
    /// Woken, and counted, while a sender waits for bytes.
    starved: Arc<Notify>,
    waiting: Arc<std::sync::atomic::AtomicUsize>,
}

impl Budget {
    /// At most `max_bytes` (up to 4 GiB) queued and held at once.
    pub fn new(max_bytes: usize) -> Budget {
        let max = u32::try_from(max_bytes.max(1)).unwrap_or(u32::MAX);
        Budget {
            bytes: Arc::new(Semaphore::new(max as usize)),
            max,
            starved: Arc::new(Notify::new()),
            waiting: Arc::default(),
        }
    }

    /// A queue of at most `items` items drawing on this budget.
    pub fn channel<T>(&self, items: usize) -> (Sender<T>, Receiver<T>) {
        let (tx, rx) = mpsc::channel(items.max(1));
        let sender = Sender {
            tx,
            budget: self.clone(),
        };
        (sender, rx)
    }

    /// Bytes queued or held by receivers now.
    pub fn charged(&self) -> usize {
        self.max as usize - self.bytes.available_permits()
    }

    /// Resolves once a sender waits for bytes (at once if one does now): a receiver
    /// holding bytes in a batch it is still filling should close it.
    pub async fn starved(&self) {
        let woken = self.starved.notified();
        tokio::pin!(woken);
        // Registered before the check, so a sender that starts waiting after it wakes
        // this call.
        woken.as_mut().enable();
        if self.waiting.load(std::sync::atomic::Ordering::Acquire) > 0 {
            return;
        }
        woken.await;
    }
}

/// A queue of at most `items` items holding at most `max_bytes` bytes, queued and held.
pub fn channel<T>(items: usize, max_bytes: usize) -> (Sender<T>, Receiver<T>) {
    Budget::new(max_bytes).channel(items)
}

/// A sender waiting for bytes, counted in its budget's `waiting` for as long as it lives.
struct Waiting<'a>(&'a Budget);

impl<'a> Waiting<'a> {
    fn start(budget: &'a Budget) -> Self {
        budget
            .waiting
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        Waiting(budget)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0
            .waiting
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// Why [`Sender::try_send`] gave the item back.
pub enum TrySend<T> {
    /// No slot or not the bytes now: [`Sender::send`] waits for them.
    Busy(T),
    /// The receiver has gone.
    Closed(T),
}

/// The receiver has gone: the item comes back.
pub struct Closed<T>(pub T);

impl<T> std::fmt::Debug for Closed<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the queue's receiver has gone")
    }
}

impl<T> Sender<T> {
    /// Waits for room for `bytes` bytes, then for a slot, and sends. Cancel-safe in the
    /// sense of `mpsc::Sender::send`: a cancelled call sends nothing.
    pub async fn send(&self, item: T, bytes: usize) -> Result<(), Closed<T>> {
        let b = &self.budget;
        let cost = u32::try_from(bytes).unwrap_or(u32::MAX).clamp(1, b.max);
        let permit = match b.bytes.clone().try_acquire_many_owned(cost) {
            Ok(p) => p,
            Err(_) => {
                // Counted while it waits, also when the wait is given up (a cancelled
                // send): the guard takes the count back.
                let _waiting = Waiting::start(b);
                b.starved.notify_waiters();
                let got = b.bytes.clone().acquire_many_owned(cost).await;
                match got {
                    Ok(p) => p,
                    // The semaphore is never closed; kept total for the type's sake.
                    Err(_) => return Err(Closed(item)),
                }
            }
        };
        self.tx
            .send((item, Charge(Some(permit))))
            .await
            .map_err(|e| Closed(e.0 .0))
    }

    /// Sends at once if a slot and the bytes are free now; otherwise gives the item
    /// back, saying whether the receiver has gone. The common case costs no future.
    pub fn try_send(&self, item: T, bytes: usize) -> Result<(), TrySend<T>> {
        let slot = match self.tx.try_reserve() {
            Ok(slot) => slot,
            Err(mpsc::error::TrySendError::Full(())) => return Err(TrySend::Busy(item)),
            Err(mpsc::error::TrySendError::Closed(())) => return Err(TrySend::Closed(item)),
        };
        let b = &self.budget;
        let cost = u32::try_from(bytes).unwrap_or(u32::MAX).clamp(1, b.max);
        match b.bytes.clone().try_acquire_many_owned(cost) {
            Ok(permit) => {
                slot.send((item, Charge(Some(permit))));
                Ok(())
            }
            Err(_) => Err(TrySend::Busy(item)),
        }
    }

    /// Items queued now (not those the receiver holds).
    pub fn queued(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    /// Bytes queued or held by the receivers of this sender's budget now.
    pub fn bytes_charged(&self) -> usize {
        self.budget.charged()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_sender_waits_until_the_receiver_releases_what_it_holds() {
        let (tx, mut rx) = channel::<u32>(100, 1000);
        tx.send(1, 600).await.unwrap();
        tx.send(2, 400).await.unwrap();
        assert_eq!(tx.bytes_charged(), 1000);
        // Queue slots are free, bytes are not: the third send waits.
        let third = tokio::time::timeout(Duration::from_millis(100), tx.send(3, 1)).await;
        assert!(third.is_err(), "a send past the byte budget went through");
        let (one, charge) = rx.recv().await.unwrap();
        assert_eq!((one, charge.bytes()), (1, 600));
        // Received but still held: the bytes stay charged.
        assert_eq!(tx.bytes_charged(), 1000);
        drop(charge);
        tx.send(3, 1).await.unwrap();
        assert_eq!(tx.bytes_charged(), 401);
    }

    #[tokio::test]
    async fn an_item_larger_than_the_budget_passes_alone() {
        let (tx, mut rx) = channel::<&str>(10, 100);
        tx.send("small", 10).await.unwrap();
        let sender = tx.clone();
        let big = tokio::spawn(async move { sender.send("big", 10_000).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !big.is_finished(),
            "the large item did not wait for the queue to empty"
        );
        let (_, small) = rx.recv().await.unwrap();
        drop(small);
        big.await.unwrap().unwrap();
        let (item, charge) = rx.recv().await.unwrap();
        assert_eq!((item, charge.bytes()), ("big", 100));
    }

    #[tokio::test]
    async fn a_receiver_hears_when_a_sender_waits_for_bytes() {
        let budget = Budget::new(100);
        let (tx, mut rx) = budget.channel::<u8>(10);
        tx.send(1, 100).await.unwrap();
        let (_, held) = rx.recv().await.unwrap();
        let quiet = tokio::time::timeout(Duration::from_millis(50), budget.starved()).await;
        assert!(quiet.is_err(), "starved with no sender waiting");
        let sender = tx.clone();
        let second = tokio::spawn(async move { sender.send(2, 1).await });
        tokio::time::timeout(Duration::from_secs(5), budget.starved())
            .await
            .expect("the waiting sender is heard");
        // Heard at once while the sender still waits.
        tokio::time::timeout(Duration::from_millis(50), budget.starved())
            .await
            .expect("heard again while it waits");
        drop(held);
        second.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn try_send_sends_when_there_is_room_and_gives_the_item_back_otherwise() {
        let (tx, mut rx) = channel::<u8>(1, 100);
        assert!(tx.try_send(1, 60).is_ok());
        // The one slot is taken.
        assert!(matches!(tx.try_send(2, 10), Err(TrySend::Busy(2))));
        let (_, held) = rx.recv().await.unwrap();
        // A slot, but not the bytes.
        assert!(matches!(tx.try_send(3, 50), Err(TrySend::Busy(3))));
        assert_eq!(tx.bytes_charged(), 60);
        drop(held);
        assert!(tx.try_send(3, 50).is_ok());
        drop(rx);
        assert!(matches!(tx.try_send(4, 1), Err(TrySend::Closed(4))));
    }

    #[tokio::test]
    async fn a_send_given_up_while_waiting_no_longer_counts_as_waiting() {
        let budget = Budget::new(10);
        let (tx, mut rx) = budget.channel::<u8>(10);
        tx.send(1, 10).await.unwrap();
        let waited = tokio::time::timeout(Duration::from_millis(50), tx.send(2, 10)).await;
        assert!(waited.is_err(), "the second send had no bytes to take");
        let (_, held) = rx.recv().await.unwrap();
        let quiet = tokio::time::timeout(Duration::from_millis(50), budget.starved()).await;
        assert!(quiet.is_err(), "a cancelled send still counts as waiting");
        drop(held);
    }

    #[tokio::test]
    async fn merged_charges_are_released_together() {
        let (tx, mut rx) = channel::<u8>(10, 100);
        tx.send(1, 30).await.unwrap();
        tx.send(2, 30).await.unwrap();
        let mut held = Charge::default();
        for _ in 0..2 {
            held.merge(rx.recv().await.unwrap().1);
        }
        assert_eq!((held.bytes(), tx.bytes_charged()), (60, 60));
        drop(held);
        assert_eq!(tx.bytes_charged(), 0);
    }

    #[tokio::test]
    async fn a_send_to_a_dropped_receiver_returns_the_item() {
        let (tx, rx) = channel::<u8>(10, 100);
        drop(rx);
        assert!(matches!(tx.send(7, 10).await, Err(Closed(7))));
        assert_eq!(tx.bytes_charged(), 0);
    }
}
