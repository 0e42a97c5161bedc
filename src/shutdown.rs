//! Shutdown as a value every task receives: a cheap clone that can be awaited in a
//! `select!` and checked between steps.

use tokio::sync::watch;

#[derive(Clone)]
pub struct Shutdown {
    rx: watch::Receiver<bool>,
}

pub struct ShutdownTrigger {
    tx: watch::Sender<bool>,
}

pub fn channel() -> (ShutdownTrigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (ShutdownTrigger { tx }, Shutdown { rx })
}

impl ShutdownTrigger {
    pub fn trigger(&self) {
        self.tx.send_replace(true);
    }
    pub fn subscribe(&self) -> Shutdown {
        Shutdown {
            rx: self.tx.subscribe(),
        }
    }
}

impl Shutdown {
    /// Resolves once shutdown is triggered (or every trigger is gone).
    pub async fn wait(&mut self) {
        let _ = self.rx.wait_for(|&v| v).await;
    }
    pub fn is_triggered(&self) -> bool {
        *self.rx.borrow()
    }
}
