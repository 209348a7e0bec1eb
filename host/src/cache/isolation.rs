//! Per-entity failure isolation for an oplog tailer.
//!
//! A tailer reads the log once for every entity. When applying one entity's
//! entries fails (a constraint of its table, a broken file), the others must
//! go on. [`FailedEntities`] keeps, per failing entity, the log id up to which
//! everything of that entity is handled (`resume_after`), how often it
//! failed and when to retry it. The tailer then:
//!
//! 1. holds back the failing entity's entries while it reads on for the rest;
//! 2. when [`FailedEntities::due`] says so, re-reads the log from the
//!    entity's `resume_after` up to its own read position, for that entity
//!    only, and [`recover`](FailedEntities::recover)s it once it caught up
//!    (or [`record`](FailedEntities::record)s the next failure, with a longer
//!    backoff);
//! 3. saves [`safe_offset`](FailedEntities::safe_offset) as its durable
//!    offset: the minimum of its read position and every failing entity's
//!    `resume_after`. It never passes a row that is neither applied nor held
//!    for a retry, so after a restart (which forgets the failures) the
//!    re-read covers them; applying is idempotent per entity, so the others
//!    skip what they already have.
//!
//! No I/O here: the type is the bookkeeping, the tailer does the reading.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::Serialize;

/// One entity whose entries failed to apply, as reported to operators.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EntityFailure {
    /// The entity.
    pub entity: String,
    /// Every log entry of the entity up to this id is handled; the retry
    /// reads from here.
    pub resume_after: i64,
    /// Consecutive failures.
    pub attempts: u32,
    /// The last error.
    pub error: String,
}

#[derive(Debug)]
struct Failing {
    resume_after: i64,
    attempts: u32,
    retry_at: Instant,
    error: String,
}

/// The failing entities of one tailer and their retry schedule.
#[derive(Debug)]
pub struct FailedEntities {
    failing: BTreeMap<String, Failing>,
    retry_initial: Duration,
    retry_max: Duration,
}

impl FailedEntities {
    /// No failures; a failing entity is retried after `retry_initial`, the
    /// wait doubling per consecutive failure up to `retry_max`.
    pub fn new(retry_initial: Duration, retry_max: Duration) -> Self {
        FailedEntities {
            failing: BTreeMap::new(),
            retry_initial,
            retry_max: retry_max.max(retry_initial),
        }
    }

    /// Whether `entity` is failing (its entries are held back).
    pub fn contains(&self, entity: &str) -> bool {
        self.failing.contains_key(entity)
    }

    /// Whether no entity is failing.
    pub fn is_empty(&self) -> bool {
        self.failing.is_empty()
    }

    /// Record a failure of `entity`: everything of it up to `resume_after`
    /// is handled. A repeated failure keeps the furthest position and backs
    /// off longer. Returns the attempt count and the wait before the retry.
    pub fn record(
        &mut self,
        entity: &str,
        resume_after: i64,
        error: String,
        now: Instant,
    ) -> (u32, Duration) {
        let (initial, max) = (self.retry_initial, self.retry_max);
        let slot = self
            .failing
            .entry(entity.to_owned())
            .or_insert_with(|| Failing {
                resume_after,
                attempts: 0,
                retry_at: now,
                error: String::new(),
            });
        slot.resume_after = slot.resume_after.max(resume_after);
        slot.attempts = slot.attempts.saturating_add(1);
        let wait = backoff(initial, max, slot.attempts);
        slot.retry_at = now + wait;
        slot.error = error;
        (slot.attempts, wait)
    }

    /// Move `entity`'s position forward after part of its retry applied.
    pub fn advance(&mut self, entity: &str, resume_after: i64) {
        if let Some(slot) = self.failing.get_mut(entity) {
            slot.resume_after = slot.resume_after.max(resume_after);
        }
    }

    /// `entity` caught up with the tailer: its entries are applied with
    /// everyone else's again. Returns whether it was failing.
    pub fn recover(&mut self, entity: &str) -> bool {
        self.failing.remove(entity).is_some()
    }

    /// Failing entities whose retry is due at `now`, with their positions.
    pub fn due(&self, now: Instant) -> Vec<(String, i64)> {
        self.failing
            .iter()
            .filter(|(_, slot)| slot.retry_at <= now)
            .map(|(entity, slot)| (entity.clone(), slot.resume_after))
            .collect()
    }

    /// The offset a tailer reading at `read_offset` may save: no failing
    /// entity has an unhandled entry at or below it.
    pub fn safe_offset(&self, read_offset: i64) -> i64 {
        self.failing
            .values()
            .map(|slot| slot.resume_after)
            .fold(read_offset, i64::min)
    }

    /// The failing entities, by name.
    pub fn snapshot(&self) -> Vec<EntityFailure> {
        self.failing
            .iter()
            .map(|(entity, slot)| EntityFailure {
                entity: entity.clone(),
                resume_after: slot.resume_after,
                attempts: slot.attempts,
                error: slot.error.clone(),
            })
            .collect()
    }
}

/// `initial`, doubled per failure after the first, at most `max`.
fn backoff(initial: Duration, max: Duration, attempts: u32) -> Duration {
    let doublings = attempts.saturating_sub(1).min(20);
    initial.saturating_mul(1 << doublings).min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_safe_offset_never_passes_a_failing_entity() {
        let mut failed = FailedEntities::new(Duration::from_millis(10), Duration::from_secs(1));
        let now = Instant::now();
        assert_eq!(failed.safe_offset(50), 50);
        failed.record("a", 20, "boom".into(), now);
        failed.record("b", 30, "boom".into(), now);
        assert_eq!(failed.safe_offset(50), 20);
        failed.advance("a", 40);
        assert_eq!(failed.safe_offset(50), 30);
        assert!(failed.recover("b"));
        assert!(!failed.recover("b"));
        assert_eq!(failed.safe_offset(50), 40);
        assert!(failed.recover("a"));
        assert!(failed.is_empty());
        assert_eq!(failed.safe_offset(50), 50);
    }

    #[test]
    fn retries_back_off_and_become_due() {
        let mut failed = FailedEntities::new(Duration::from_millis(10), Duration::from_millis(25));
        let now = Instant::now();
        assert_eq!(
            failed.record("a", 5, "e1".into(), now),
            (1, Duration::from_millis(10))
        );
        assert!(failed.due(now).is_empty());
        assert_eq!(
            failed.due(now + Duration::from_millis(10)),
            vec![("a".to_owned(), 5)]
        );
        assert_eq!(
            failed.record("a", 3, "e2".into(), now),
            (2, Duration::from_millis(20))
        );
        assert_eq!(
            failed.record("a", 7, "e3".into(), now),
            (3, Duration::from_millis(25)),
            "capped"
        );
        let snapshot = failed.snapshot();
        assert_eq!(
            snapshot,
            vec![EntityFailure {
                entity: "a".into(),
                resume_after: 7,
                attempts: 3,
                error: "e3".into()
            }],
            "the furthest position and the last error are kept"
        );
    }
}
