//! Retrying a batch whose commit failed: with backoff ([`RetryConfig`],
//! seed 004's `[retry]`), until it commits, the pipeline is cancelled, or
//! `max_attempts` failed (then the source task fails, shows on `/health`
//! and is restarted by its supervisor from its committed position). The
//! source waits meanwhile (its channel is bounded), so nothing is dropped.

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use tokio_util::sync::CancellationToken;

/// The wait before the first retry.
pub const INITIAL_BACKOFF: Duration = Duration::from_millis(100);

/// The longest wait between two retries.
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// How failed commits are retried (`[retry]`, seed 004's keys).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// Failed attempts of one batch before the source task fails (and is
    /// restarted from its committed position); 0: retry without end.
    pub max_attempts: u32,
    /// The wait before the first retry, in milliseconds.
    pub initial_delay_ms: u64,
    /// Each wait is the previous one times this (at least 1).
    pub backoff_multiplier: f64,
    /// The longest wait, in milliseconds.
    pub max_delay_ms: u64,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            max_attempts: 0,
            initial_delay_ms: INITIAL_BACKOFF.as_millis() as u64,
            backoff_multiplier: 2.0,
            max_delay_ms: MAX_BACKOFF.as_millis() as u64,
        }
    }
}

impl RetryConfig {
    /// A problem with the values, naming the key.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if !self.backoff_multiplier.is_finite()
            || !(1.0..=1000.0).contains(&self.backoff_multiplier)
        {
            return Err((
                "retry.backoff_multiplier",
                format!(
                    "must be between 1 and 1000, not {}",
                    self.backoff_multiplier
                ),
            ));
        }
        const HOUR_MS: u64 = 3_600_000;
        if self.initial_delay_ms > HOUR_MS || self.max_delay_ms > HOUR_MS {
            return Err((
                "retry.initial_delay_ms",
                "waits are at most one hour (3600000 ms)".into(),
            ));
        }
        Ok(())
    }
}

/// Exponential backoff: `initial_delay_ms`, times `backoff_multiplier`
/// each time, at most `max_delay_ms` (by default [`INITIAL_BACKOFF`],
/// doubling, at most [`MAX_BACKOFF`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    next: Duration,
    multiplier: f64,
    max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new(&RetryConfig::default())
    }
}

impl Backoff {
    /// The backoff `config` describes.
    pub fn new(config: &RetryConfig) -> Backoff {
        let max = Duration::from_millis(config.max_delay_ms.max(1));
        Backoff {
            next: Duration::from_millis(config.initial_delay_ms).min(max),
            multiplier: config.backoff_multiplier.clamp(1.0, 1000.0),
            max,
        }
    }

    /// The wait before the next retry; the one after it is longer.
    pub fn next_wait(&mut self) -> Duration {
        let wait = self.next;
        self.next = self.next.mul_f64(self.multiplier).min(self.max);
        wait
    }
}

/// A batch that failed `max_attempts` times.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GaveUp<E> {
    /// The attempts made.
    pub attempts: u32,
    /// The last error.
    pub error: E,
}

/// Run `attempt` until it succeeds, waiting with the [`Backoff`] of
/// `config` after each failure (logged with `source`, the error and the
/// wait). `Ok(None)` when `cancel` fires while waiting; [`GaveUp`] after
/// `config.max_attempts` failures (when not 0).
pub async fn until_committed<T, E, F, Fut>(
    source: &str,
    config: &RetryConfig,
    cancel: &CancellationToken,
    mut attempt: F,
) -> Result<Option<T>, GaveUp<E>>
where
    E: Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut backoff = Backoff::new(config);
    let mut attempts = 0u32;
    loop {
        match attempt().await {
            Ok(value) => return Ok(Some(value)),
            Err(error) => {
                attempts = attempts.saturating_add(1);
                if config.max_attempts > 0 && attempts >= config.max_attempts {
                    tracing::error!(source, %error, attempts, "batch not committed after the last attempt; the source stops and restarts from its committed position");
                    return Err(GaveUp { attempts, error });
                }
                let wait = backoff.next_wait();
                tracing::warn!(source, %error, retry_in_ms = wait.as_millis() as u64, "batch not committed; retrying");
                tokio::select! {
                    _ = cancel.cancelled() => return Ok(None),
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
        let value = until_committed("s", &RetryConfig::default(), &cancel, || {
            calls += 1;
            let result = if calls < 3 { Err("no") } else { Ok(calls) };
            async move { result }
        })
        .await;
        assert_eq!(value, Ok(Some(3)));
    }

    #[tokio::test(start_paused = true)]
    async fn cancel_stops_the_retries() {
        let cancel = CancellationToken::new();
        cancel.cancel();
        let value = until_committed("s", &RetryConfig::default(), &cancel, || async {
            Err::<(), _>("no")
        })
        .await;
        assert_eq!(value, Ok(None));
    }

    #[tokio::test(start_paused = true)]
    async fn seed_retry_settings_drive_waits_and_attempts() {
        let config = RetryConfig {
            max_attempts: 3,
            initial_delay_ms: 1000,
            backoff_multiplier: 3.0,
            max_delay_ms: 5000,
        };
        let mut backoff = Backoff::new(&config);
        let waits: Vec<u64> = (0..4)
            .map(|_| backoff.next_wait().as_millis() as u64)
            .collect();
        assert_eq!(waits, [1000, 3000, 5000, 5000]);
        let cancel = CancellationToken::new();
        let mut calls = 0;
        let value = until_committed("s", &config, &cancel, || {
            calls += 1;
            async { Err::<(), _>("down") }
        })
        .await;
        assert_eq!(
            value,
            Err(GaveUp {
                attempts: 3,
                error: "down"
            })
        );
        assert_eq!(calls, 3);
    }
}
