//! One shutdown signal per process (after mini-redis's `Shutdown`): a [`ShutdownTrigger`] held by
//! whoever stops the service, any number of [`Shutdown`] listeners held by its tasks, and the
//! `[shutdown] timeout_ms` key ([`ShutdownConfig`]) that bounds how long a service drains.

use std::time::Duration;

use serde::Deserialize;
use tokio::sync::watch;

use crate::config::{positive, InvalidValue};

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
    /// A listener that fires on SIGINT or SIGTERM (or never, if the handlers cannot be set up,
    /// which is logged). Spawns a task on the current runtime.
    pub fn on_signal() -> Shutdown {
        let (trigger, shutdown) = shutdown_channel();
        tokio::spawn(async move {
            signal().await;
            tracing::info!("shutting down");
            trigger.trigger();
        });
        shutdown
    }

    /// Waits for the signal (cancel-safe, so it can sit in a `select!`).
    pub async fn cancelled(&mut self) {
        // An error means the trigger was dropped, which also means: stop.
        let _ = self.0.wait_for(|&stop| stop).await;
    }

    pub fn is_cancelled(&self) -> bool {
        *self.0.borrow() || self.0.has_changed().is_err()
    }
}

/// Resolves on SIGINT or SIGTERM. Should the handlers fail to install (they do not on Linux),
/// the error is logged and this never resolves: the process can still be killed.
pub async fn signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = match signal(SignalKind::terminate()) {
        Ok(terminate) => terminate,
        Err(error) => {
            tracing::error!(%error, "cannot listen for SIGTERM");
            return std::future::pending().await;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}

/// `[shutdown]` in every service's config.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownConfig {
    /// Bound on a clean shutdown (SIGINT/SIGTERM): what the service has not drained by then is
    /// abandoned, as after a crash, and recovered the same way (resent, replayed or retried).
    pub timeout_ms: u64,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        // Under the 10 s a supervisor (systemd, Kubernetes) usually allows before SIGKILL.
        ShutdownConfig { timeout_ms: 7_000 }
    }
}

impl ShutdownConfig {
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    pub fn validate(&self) -> Result<(), InvalidValue> {
        positive("shutdown.timeout_ms", self.timeout_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_listener_sees_the_trigger_and_its_drop() {
        let (trigger, mut first) = shutdown_channel();
        let mut second = first.clone();
        assert!(!first.is_cancelled());
        trigger.trigger();
        first.cancelled().await;
        second.cancelled().await;
        assert!(first.is_cancelled() && second.is_cancelled());

        let (trigger, mut dropped) = shutdown_channel();
        drop(trigger);
        dropped.cancelled().await;
        assert!(dropped.is_cancelled());
    }

    #[test]
    fn a_zero_timeout_is_refused() {
        assert_eq!(ShutdownConfig { timeout_ms: 0 }.validate().unwrap_err().key, "shutdown.timeout_ms");
        assert!(ShutdownConfig::default().validate().is_ok());
    }
}
