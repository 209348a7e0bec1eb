//! Retrying a batch whose commit failed: with backoff, until it commits or
//! the pipeline is cancelled. The source waits meanwhile (its channel is
//! bounded), so nothing is dropped.

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// The wait before the first retry.
pub const INITIAL_BACKOFF: Duration = Duration::from_millis(100);

/// The longest wait between two retries.
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Exponential backoff: [`INITIAL_BACKOFF`], doubling, at most
/// [`MAX_BACKOFF`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            next: INITIAL_BACKOFF,
        }
    }
}

impl Backoff {
    /// The wait before the next retry; the one after it doubles.
    pub fn next_wait(&mut self) -> Duration {
        let wait = self.next;
        self.next = (self.next * 2).min(MAX_BACKOFF);
        wait
    }
}

/// Run `attempt` until it succeeds, waiting with [`Backoff`] after each
/// failure (logged with `source`, the error and the wait). `None` when
/// `cancel` fires while waiting.
pub async fn until_committed<T, E, F, Fut>(
    source: &str,
    cancel: &CancellationToken,
    mut attempt: F,
) -> Option<T>
where
    E: Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut backoff = Backoff::default();
    loop {
        match attempt().await {
            Ok(value) => return Some(value),
            Err(error) => {
                let wait = backoff.next_wait();
                tracing::warn!(source, %error, retry_in_ms = wait.as_millis() as u64, "batch not committed; retrying");
                tokio::select! {
                    _ = cancel.cancelled() => return None,
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap() {
        let mut backoff = Backoff::default();
        let waits: Vec<u64> = (0..10)
            .map(|_| backoff.next_wait().as_millis() as u64)
            .collect();
        assert_eq!(
            waits,
            [100, 200, 400, 800, 1600, 3200, 6400, 10_000, 10_000, 10_000]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn retries_until_it_succeeds() {
        let cancel = CancellationToken::new();
        let mut calls = 0;
        let value = until_committed("s", &cancel, || {
            calls += 1;
            let result = if calls < 3 { Err("no") } else { Ok(calls) };
            async move { result }
        })
        .await;
        assert_eq!(value, Some(3));
    }

    #[tokio::test(start_paused = true)]
    async fn cancel_stops_the_retries() {
        let cancel = CancellationToken::new();
        cancel.cancel();
        let value: Option<()> =
            until_committed("s", &cancel, || async { Err::<(), _>("no") }).await;
        assert_eq!(value, None);
    }
}
