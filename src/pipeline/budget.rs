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

use std::sync::Arc;

use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

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
    bytes: Arc<Semaphore>,
    max: u32,
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        Sender {
            tx: self.tx.clone(),
            bytes: self.bytes.clone(),
            max: self.max,
        }
    }
}

pub type Receiver<T> = mpsc::Receiver<(T, Charge)>;

/// Bytes that several queues share: a partition's worker queues draw on one budget.
#[derive(Clone)]
pub struct Budget {
    bytes: Arc<Semaphore>,
    max: u32,
}

impl Budget {
    /// At most `max_bytes` (up to 4 GiB) queued and held at once.
    pub fn new(max_bytes: usize) -> Budget {
        let max = u32::try_from(max_bytes.max(1)).unwrap_or(u32::MAX);
        Budget {
            bytes: Arc::new(Semaphore::new(max as usize)),
            max,
        }
    }

    /// A queue of at most `items` items drawing on this budget.
    pub fn channel<T>(&self, items: usize) -> (Sender<T>, Receiver<T>) {
        let (tx, rx) = mpsc::channel(items.max(1));
        let sender = Sender {
            tx,
            bytes: self.bytes.clone(),
            max: self.max,
        };
        (sender, rx)
    }

    /// Bytes queued or held by receivers now.
    pub fn charged(&self) -> usize {
        self.max as usize - self.bytes.available_permits()
    }
}

/// A queue of at most `items` items holding at most `max_bytes` bytes, queued and held.
pub fn channel<T>(items: usize, max_bytes: usize) -> (Sender<T>, Receiver<T>) {
    Budget::new(max_bytes).channel(items)
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
        let cost = u32::try_from(bytes).unwrap_or(u32::MAX).clamp(1, self.max);
        let Ok(permit) = self.bytes.clone().acquire_many_owned(cost).await else {
            // The semaphore is never closed; kept total for the type's sake.
            return Err(Closed(item));
        };
        self.tx
            .send((item, Charge(Some(permit))))
            .await
            .map_err(|e| Closed(e.0 .0))
    }

    /// Items queued now (not those the receiver holds).
    pub fn queued(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    /// Bytes queued or held by the receivers of this sender's budget now.
    pub fn bytes_charged(&self) -> usize {
        self.max as usize - self.bytes.available_permits()
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
