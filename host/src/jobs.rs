//! The job server: named interval jobs and long-running tasks, cancelled
//! together on shutdown.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Runs named jobs until shutdown.
#[derive(Clone, Default)]
pub struct JobServer {
    cancel: CancellationToken,
    tracker: TaskTracker,
}

impl JobServer {
    /// A server with no jobs.
    pub fn new() -> Self {
        JobServer::default()
    }

    /// The token every job watches; cancelled by [`shutdown`](Self::shutdown).
    pub fn token(&self) -> CancellationToken {
        self.cancel.clone()
    }

    /// Run `job` every `interval` (the first run after one interval) until
    /// shutdown. A failed run is logged; the next one runs as planned.
    pub fn every<F, Fut, E>(&self, name: &'static str, interval: Duration, job: F)
    where
        F: Fn() -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: std::fmt::Display + Send + 'static,
    {
        let cancel = self.cancel.clone();
        self.tracker.spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticker.tick().await;
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = ticker.tick() => {}
                }
                let run = tokio::select! {
                    _ = cancel.cancelled() => break,
                    run = job() => run,
                };
                if let Err(error) = run {
                    tracing::warn!(job = name, %error, "job failed");
                }
            }
            tracing::debug!(job = name, "job stopped");
        });
    }

    /// Run a long-running task that watches the token itself.
    pub fn spawn<F, Fut>(&self, name: &'static str, task: F)
    where
        F: FnOnce(CancellationToken) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let future = task(self.cancel.clone());
        self.tracker.spawn(async move {
            future.await;
            tracing::debug!(task = name, "task stopped");
        });
    }

    /// Cancel every job and wait for them, at most `grace`. Returns whether
    /// all stopped in time.
    pub async fn shutdown(&self, grace: Duration) -> bool {
        self.cancel.cancel();
        self.tracker.close();
        tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test(start_paused = true)]
    async fn interval_jobs_run_and_stop_on_shutdown() {
        let jobs = JobServer::new();
        let runs = Arc::new(AtomicUsize::new(0));
        let counter = runs.clone();
        jobs.every("count", Duration::from_secs(1), move || {
            let counter = counter.clone();
            async move {
                counter.fetch_add(1, Ordering::SeqCst);
                Ok::<(), String>(())
            }
        });
        tokio::time::sleep(Duration::from_millis(3500)).await;
        assert_eq!(runs.load(Ordering::SeqCst), 3);
        assert!(jobs.shutdown(Duration::from_secs(1)).await);
        let after = runs.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(runs.load(Ordering::SeqCst), after, "no run after shutdown");
    }
}
