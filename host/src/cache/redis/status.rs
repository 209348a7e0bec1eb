//! What the Redis writer is doing, for `/ready`, the REST API and metrics:
//! atomics (and two small mutexes) shared between the writer and readers.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::Serialize;

use crate::breaker::{BreakerState, CircuitBreaker};

/// The writer lock, as the status reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LockState {
    /// No lock is taken (`lock.enabled = false`, or the memory target).
    Disabled,
    /// This writer holds the lock.
    Held,
    /// Another owner holds it (or Redis is unreachable): nothing is written.
    Waiting,
}

impl LockState {
    fn code(self) -> u8 {
        match self {
            LockState::Disabled => 0,
            LockState::Held => 1,
            LockState::Waiting => 2,
        }
    }

    fn from_code(code: u8) -> LockState {
        match code {
            0 => LockState::Disabled,
            1 => LockState::Held,
            _ => LockState::Waiting,
        }
    }

    /// `disabled`, `held` or `waiting`.
    pub fn as_str(self) -> &'static str {
        match self {
            LockState::Disabled => "disabled",
            LockState::Held => "held",
            LockState::Waiting => "waiting",
        }
    }
}

/// A copy of the status at one moment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RedisWriterSnapshot {
    /// `redis`, `redis-cluster` or `memory`.
    pub target: String,
    /// `connected` or `disconnected` (the last Redis call worked or not).
    pub redis: &'static str,
    /// Whether the last Redis call worked.
    pub connected: bool,
    /// The circuit breaker.
    pub breaker: BreakerState,
    /// How many times the breaker has opened.
    pub breaker_trips: u64,
    /// The writer lock.
    pub lock: LockState,
    /// Every log entry up to this id is in the cache.
    pub applied_offset: i64,
    /// The highest log id the writer has seen in the store.
    pub head_seen: i64,
    /// Whether the last poll found nothing new.
    pub caught_up: bool,
    /// Entity keys set.
    pub keys_written: u64,
    /// Entity keys deleted (stale lookups, deleted rows).
    pub keys_deleted: u64,
    /// Rows applied (upserts and deletes of in-scope entities).
    pub rows_applied: u64,
    /// Rows of entities waiting for a plugin or a cache version: not
    /// written now; the entity is rebuilt from its latest rows once it has
    /// one (see `waiting_entities`).
    pub rows_skipped: u64,
    /// Rows the writer could not apply, kept as rejected records (source
    /// `cache-writer:redis`) to inspect and replay.
    pub rows_dead_lettered: u64,
    /// In-scope entities that wait for a plugin or a cache version; the
    /// cache is incomplete while any does.
    pub waiting_entities: Vec<String>,
    /// Batches written.
    pub batches: u64,
    /// Failed steps.
    pub errors: u64,
    /// The last error, until a step succeeds.
    pub last_error: Option<String>,
    /// The cache version of each in-scope entity, as built in the cache.
    pub versions: BTreeMap<String, String>,
    /// Entities rebuilt after a version change.
    pub rebuilds: u64,
    /// Whether this writer has bootstrapped the cache from the latest rows
    /// (the offset key was missing: fresh or flushed Redis).
    pub bootstrapped: bool,
    /// Bootstraps run.
    pub bootstraps: u64,
    /// Stale-version cleanups run.
    pub cleanup_runs: u64,
    /// Keys those cleanups removed.
    pub cleanup_removed: u64,
}

/// The live status of a [`RedisWriter`](super::RedisWriter).
#[derive(Debug)]
pub struct RedisWriterStatus {
    target: &'static str,
    breaker: Arc<CircuitBreaker>,
    connected: AtomicBool,
    lock: AtomicU8,
    applied_offset: AtomicI64,
    head_seen: AtomicI64,
    caught_up: AtomicBool,
    keys_written: AtomicU64,
    keys_deleted: AtomicU64,
    rows_applied: AtomicU64,
    rows_skipped: AtomicU64,
    rows_dead_lettered: AtomicU64,
    waiting: Mutex<std::collections::BTreeSet<String>>,
    batches: AtomicU64,
    errors: AtomicU64,
    rebuilds: AtomicU64,
    bootstrapped: AtomicBool,
    bootstraps: AtomicU64,
    cleanup_runs: AtomicU64,
    cleanup_removed: AtomicU64,
    last_error: Mutex<Option<String>>,
    versions: Mutex<BTreeMap<String, String>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl RedisWriterStatus {
    pub(crate) fn new(
        target: &'static str,
        breaker: Arc<CircuitBreaker>,
        lock_state: LockState,
    ) -> RedisWriterStatus {
        RedisWriterStatus {
            target,
            breaker,
            connected: AtomicBool::new(target == "memory"),
            lock: AtomicU8::new(lock_state.code()),
            applied_offset: AtomicI64::new(0),
            head_seen: AtomicI64::new(0),
            caught_up: AtomicBool::new(false),
            keys_written: AtomicU64::new(0),
            keys_deleted: AtomicU64::new(0),
            rows_applied: AtomicU64::new(0),
            rows_skipped: AtomicU64::new(0),
            rows_dead_lettered: AtomicU64::new(0),
            waiting: Mutex::new(std::collections::BTreeSet::new()),
            batches: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            rebuilds: AtomicU64::new(0),
            bootstrapped: AtomicBool::new(false),
            bootstraps: AtomicU64::new(0),
            cleanup_runs: AtomicU64::new(0),
            cleanup_removed: AtomicU64::new(0),
            last_error: Mutex::new(None),
            versions: Mutex::new(BTreeMap::new()),
        }
    }

    /// Every log entry up to this id is in the cache (one atomic load).
    pub fn applied_offset(&self) -> i64 {
        self.applied_offset.load(Ordering::Acquire)
    }

    /// Whether the last Redis call worked.
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    /// The circuit breaker's state.
    pub fn breaker(&self) -> BreakerState {
        self.breaker.state()
    }

    /// The writer lock's state.
    pub fn lock_state(&self) -> LockState {
        LockState::from_code(self.lock.load(Ordering::Acquire))
    }

    /// The highest log id seen in the store.
    pub fn head_seen(&self) -> i64 {
        self.head_seen.load(Ordering::Acquire)
    }

    /// Whether the last poll found nothing new.
    pub fn caught_up(&self) -> bool {
        self.caught_up.load(Ordering::Acquire)
    }

    /// The cache version of `entity`, as built in the cache.
    pub fn version(&self, entity: &str) -> Option<String> {
        lock(&self.versions).get(entity).cloned()
    }

    /// The cache version of every in-scope entity.
    pub fn versions(&self) -> BTreeMap<String, String> {
        lock(&self.versions).clone()
    }

    /// Rows applied so far.
    pub fn rows_applied(&self) -> u64 {
        self.rows_applied.load(Ordering::Relaxed)
    }

    /// Rows skipped so far (item errors, no plugin).
    pub fn rows_skipped(&self) -> u64 {
        self.rows_skipped.load(Ordering::Relaxed)
    }

    /// Rows dead-lettered so far.
    pub fn rows_dead_lettered(&self) -> u64 {
        self.rows_dead_lettered.load(Ordering::Relaxed)
    }

    /// In-scope entities waiting for a plugin or a cache version.
    pub fn waiting_entities(&self) -> Vec<String> {
        lock(&self.waiting).iter().cloned().collect()
    }

    /// Keys removed by cleanups so far.
    pub fn cleanup_removed(&self) -> u64 {
        self.cleanup_removed.load(Ordering::Relaxed)
    }

    /// A copy of everything.
    pub fn snapshot(&self) -> RedisWriterSnapshot {
        let connected = self.connected();
        RedisWriterSnapshot {
            target: self.target.to_owned(),
            redis: if connected {
                "connected"
            } else {
                "disconnected"
            },
            connected,
            breaker: self.breaker(),
            breaker_trips: self.breaker.trips(),
            lock: self.lock_state(),
            applied_offset: self.applied_offset(),
            head_seen: self.head_seen(),
            caught_up: self.caught_up(),
            keys_written: self.keys_written.load(Ordering::Relaxed),
            keys_deleted: self.keys_deleted.load(Ordering::Relaxed),
            rows_applied: self.rows_applied(),
            rows_skipped: self.rows_skipped(),
            rows_dead_lettered: self.rows_dead_lettered(),
            waiting_entities: self.waiting_entities(),
            batches: self.batches.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            last_error: lock(&self.last_error).clone(),
            versions: self.versions(),
            rebuilds: self.rebuilds.load(Ordering::Relaxed),
            bootstrapped: self.bootstrapped.load(Ordering::Relaxed),
            bootstraps: self.bootstraps.load(Ordering::Relaxed),
            cleanup_runs: self.cleanup_runs.load(Ordering::Relaxed),
            cleanup_removed: self.cleanup_removed(),
        }
    }

    pub(crate) fn set_connected(&self, connected: bool) {
        self.connected.store(connected, Ordering::Release);
    }

    pub(crate) fn set_lock(&self, state: LockState) {
        self.lock.store(state.code(), Ordering::Release);
    }

    pub(crate) fn set_applied(&self, offset: i64) {
        self.applied_offset.store(offset, Ordering::Release);
        self.head_seen.fetch_max(offset, Ordering::AcqRel);
    }

    pub(crate) fn set_head(&self, head: i64) {
        self.head_seen.fetch_max(head, Ordering::AcqRel);
    }

    pub(crate) fn set_caught_up(&self, caught_up: bool) {
        self.caught_up.store(caught_up, Ordering::Release);
    }

    pub(crate) fn add_batch(&self, rows: u64, skipped: u64, written: u64, deleted: u64) {
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.rows_applied.fetch_add(rows, Ordering::Relaxed);
        self.rows_skipped.fetch_add(skipped, Ordering::Relaxed);
        self.keys_written.fetch_add(written, Ordering::Relaxed);
        self.keys_deleted.fetch_add(deleted, Ordering::Relaxed);
    }

    pub(crate) fn add_skipped(&self, skipped: u64) {
        self.rows_skipped.fetch_add(skipped, Ordering::Relaxed);
    }

    pub(crate) fn add_dead_lettered(&self, rows: u64) {
        self.rows_dead_lettered.fetch_add(rows, Ordering::Relaxed);
    }

    pub(crate) fn set_waiting(&self, entity: &str, waiting: bool) {
        let mut set = lock(&self.waiting);
        if waiting {
            set.insert(entity.to_owned());
        } else {
            set.remove(entity);
        }
    }

    pub(crate) fn add_rebuild(&self) {
        self.rebuilds.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn add_bootstrap(&self) {
        self.bootstrapped.store(true, Ordering::Relaxed);
        self.bootstraps.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn add_cleanup(&self, removed: u64) {
        self.cleanup_runs.fetch_add(1, Ordering::Relaxed);
        self.cleanup_removed.fetch_add(removed, Ordering::Relaxed);
    }

    pub(crate) fn set_version(&self, entity: &str, version: Option<&str>) {
        let mut versions = lock(&self.versions);
        match version {
            Some(version) => {
                versions.insert(entity.to_owned(), version.to_owned());
            }
            None => {
                versions.remove(entity);
            }
        }
    }

    pub(crate) fn error(&self, error: &dyn std::fmt::Display) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        *lock(&self.last_error) = Some(error.to_string());
    }

    pub(crate) fn clear_error(&self) {
        let mut last = lock(&self.last_error);
        if last.is_some() {
            *last = None;
        }
    }
}
