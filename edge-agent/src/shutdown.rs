//! The agent's one shutdown signal: a trigger held by whoever stops the agent, and any number of
//! [`Shutdown`] listeners held by its tasks.

use tokio::sync::watch;

/// Fires the shutdown signal. Dropping it fires it too.
pub struct ShutdownTrigger(watch::Sender<bool>);

/// Resolves once shutdown was requested.
#[derive(Clone)]
pub struct Shutdown(watch::Receiver<bool>);

pub fn shutdown_channel() -> (ShutdownTrigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (ShutdownTrigger(tx), Shutdown(rx))
}

impl ShutdownTrigger {
    pub fn trigger(&self) {
        self.0.send_replace(true);
    }
}

impl Shutdown {
    /// Waits for the signal (cancel-safe, so it can sit in a `select!`).
    pub async fn cancelled(&mut self) {
        // An error means the trigger was dropped, which also means: stop.
        let _ = self.0.wait_for(|&stop| stop).await;
    }

    pub fn is_cancelled(&self) -> bool {
        *self.0.borrow() || self.0.has_changed().is_err()
    }
}
