//! A small circuit breaker for calls to an external service (Redis, a REST
//! API): after `threshold` consecutive failures it *opens* and refuses calls
//! for `open_for`; then it lets one trial call through (*half-open*): a
//! success closes it, a failure opens it again for another `open_for`.
//!
//! The breaker only keeps state; callers ask before a call
//! ([`CircuitBreaker::check`] or [`CircuitBreaker::allow`]) and report the
//! outcome ([`CircuitBreaker::success`], [`CircuitBreaker::failure`]). It is
//! shared by reference (`&self`, an internal mutex) and reads time from
//! [`tokio::time::Instant`], so tests can drive it with tokio's paused clock
//! (`#[tokio::test(start_paused = true)]` and `tokio::time::advance`). Outside
//! a runtime with a paused clock that is the ordinary monotonic clock.
//!
//! ```
//! use std::time::Duration;
//! use emcachers::breaker::{BreakerState, CircuitBreaker};
//!
//! let breaker = CircuitBreaker::new(2, Duration::from_secs(15));
//! breaker.failure();
//! assert!(breaker.allow());
//! breaker.failure();
//! assert_eq!(breaker.state(), BreakerState::Open);
//! assert!(breaker.check().is_err());
//! ```

use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

/// The state of a [`CircuitBreaker`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    /// Calls go through; failures are being counted.
    Closed,
    /// Calls are refused until the open period ends.
    Open,
    /// The open period ended: one trial call may go through.
    HalfOpen,
}

impl BreakerState {
    /// `closed`, `open` or `half_open`.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

impl std::fmt::Display for BreakerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A call refused by an open breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("circuit breaker open, retry in {} ms", retry_in.as_millis())]
pub struct Open {
    /// How long until the breaker lets a trial call through.
    pub retry_in: Duration,
}

#[derive(Debug)]
enum Inner {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// `probe_until`: a trial call was let through and is outstanding until
    /// then; after it another trial may go (in case the first caller never
    /// reported back).
    HalfOpen {
        probe_until: Option<Instant>,
    },
}

/// A thread-safe circuit breaker. See the module documentation.
#[derive(Debug)]
pub struct CircuitBreaker {
    threshold: u32,
    open_for: Duration,
    inner: Mutex<Inner>,
    trips: std::sync::atomic::AtomicU64,
}

impl CircuitBreaker {
    /// A closed breaker that opens after `threshold` consecutive failures
    /// (0 counts as 1) and stays open for `open_for`.
    pub fn new(threshold: u32, open_for: Duration) -> CircuitBreaker {
        CircuitBreaker {
            threshold: threshold.max(1),
            open_for,
            inner: Mutex::new(Inner::Closed { failures: 0 }),
            trips: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The consecutive failures that open the breaker.
    pub fn threshold(&self) -> u32 {
        self.threshold
    }

    /// How long the breaker stays open.
    pub fn open_for(&self) -> Duration {
        self.open_for
    }

    /// The current state. An open breaker whose period has ended reports
    /// [`BreakerState::HalfOpen`].
    pub fn state(&self) -> BreakerState {
        match &*self.lock() {
            Inner::Closed { .. } => BreakerState::Closed,
            Inner::Open { until } if Instant::now() < *until => BreakerState::Open,
            Inner::Open { .. } | Inner::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// Consecutive failures counted while closed (0 when open or half-open).
    pub fn failures(&self) -> u32 {
        match &*self.lock() {
            Inner::Closed { failures } => *failures,
            _ => 0,
        }
    }

    /// How many times the breaker has opened since it was created.
    pub fn trips(&self) -> u64 {
        self.trips.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// May a call go through now? `Err` says how long until it may. When
    /// the open period has ended this lets one trial call through and
    /// refuses others until that call reports back (or `open_for` passes).
    pub fn check(&self) -> Result<(), Open> {
        let now = Instant::now();
        let mut inner = self.lock();
        match &mut *inner {
            Inner::Closed { .. } => Ok(()),
            Inner::Open { until } if now < *until => Err(Open {
                retry_in: *until - now,
            }),
            Inner::Open { .. } => {
                *inner = Inner::HalfOpen {
                    probe_until: Some(now + self.open_for),
                };
                Ok(())
            }
            Inner::HalfOpen { probe_until } => match probe_until {
                Some(until) if now < *until => Err(Open {
                    retry_in: *until - now,
                }),
                _ => {
                    *probe_until = Some(now + self.open_for);
                    Ok(())
                }
            },
        }
    }

    /// [`CircuitBreaker::check`] as a boolean.
    pub fn allow(&self) -> bool {
        self.check().is_ok()
    }

    /// Report a successful call: the breaker closes and forgets failures.
    pub fn success(&self) {
        let mut inner = self.lock();
        if !matches!(&*inner, Inner::Closed { failures: 0 }) {
            *inner = Inner::Closed { failures: 0 };
        }
    }

    /// Report a failed call. The `threshold`-th consecutive failure, or a
    /// failed trial call, opens the breaker for `open_for`. A failure
    /// reported while it is open (a call that started before it opened)
    /// changes nothing.
    pub fn failure(&self) {
        let now = Instant::now();
        let mut inner = self.lock();
        let open = match &mut *inner {
            Inner::Closed { failures } => {
                *failures = failures.saturating_add(1);
                *failures >= self.threshold
            }
            Inner::Open { .. } => false,
            Inner::HalfOpen { .. } => true,
        };
        if open {
            *inner = Inner::Open {
                until: now + self.open_for,
            };
            self.trips
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Close the breaker and forget failures (an operator reset).
    pub fn reset(&self) {
        *self.lock() = Inner::Closed { failures: 0 };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::advance;

    const OPEN_FOR: Duration = Duration::from_secs(15);

    #[tokio::test(start_paused = true)]
    async fn opens_after_threshold_consecutive_failures() {
        let breaker = CircuitBreaker::new(3, OPEN_FOR);
        breaker.failure();
        breaker.failure();
        assert_eq!(breaker.state(), BreakerState::Closed);
        assert_eq!(breaker.failures(), 2);
        assert!(breaker.allow());
        breaker.failure();
        assert_eq!(breaker.state(), BreakerState::Open);
        assert_eq!(breaker.trips(), 1);
        assert_eq!(breaker.check(), Err(Open { retry_in: OPEN_FOR }));
        advance(Duration::from_secs(5)).await;
        assert_eq!(
            breaker.check(),
            Err(Open {
                retry_in: Duration::from_secs(10)
            })
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_success_resets_the_count() {
        let breaker = CircuitBreaker::new(3, OPEN_FOR);
        breaker.failure();
        breaker.failure();
        breaker.success();
        breaker.failure();
        breaker.failure();
        assert_eq!(breaker.state(), BreakerState::Closed);
        breaker.failure();
        assert_eq!(breaker.state(), BreakerState::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn half_open_lets_one_trial_through_and_a_success_closes() {
        let breaker = CircuitBreaker::new(1, OPEN_FOR);
        breaker.failure();
        assert!(!breaker.allow());
        advance(OPEN_FOR).await;
        assert_eq!(breaker.state(), BreakerState::HalfOpen);
        assert!(breaker.allow(), "the trial call");
        assert!(!breaker.allow(), "only one trial at a time");
        breaker.success();
        assert_eq!(breaker.state(), BreakerState::Closed);
        assert!(breaker.allow());
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_trial_opens_again() {
        let breaker = CircuitBreaker::new(3, OPEN_FOR);
        for _ in 0..3 {
            breaker.failure();
        }
        advance(OPEN_FOR).await;
        assert!(breaker.allow());
        breaker.failure();
        assert_eq!(breaker.state(), BreakerState::Open);
        assert_eq!(breaker.trips(), 2);
        assert_eq!(breaker.check(), Err(Open { retry_in: OPEN_FOR }));
    }

    #[tokio::test(start_paused = true)]
    async fn an_abandoned_trial_does_not_block_forever() {
        let breaker = CircuitBreaker::new(1, OPEN_FOR);
        breaker.failure();
        advance(OPEN_FOR).await;
        assert!(breaker.allow());
        // The trial caller never reports back.
        advance(OPEN_FOR).await;
        assert!(breaker.allow(), "a new trial after open_for");
    }

    #[tokio::test(start_paused = true)]
    async fn failures_while_open_do_not_extend_it() {
        let breaker = CircuitBreaker::new(1, OPEN_FOR);
        breaker.failure();
        advance(Duration::from_secs(10)).await;
        breaker.failure();
        assert_eq!(breaker.trips(), 1);
        advance(Duration::from_secs(5)).await;
        assert!(breaker.allow());
    }

    #[test]
    fn threshold_zero_counts_as_one_and_reset_closes() {
        let breaker = CircuitBreaker::new(0, OPEN_FOR);
        assert_eq!(breaker.threshold(), 1);
        breaker.failure();
        assert_eq!(breaker.state(), BreakerState::Open);
        breaker.reset();
        assert_eq!(breaker.state(), BreakerState::Closed);
        assert_eq!(BreakerState::HalfOpen.to_string(), "half_open");
    }
}
