//! What the datastream source is doing, for `/ready`, `/debug` and metrics.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;

use crate::health::{Metric, SourceProbe};

/// Live state and counters of one datastream source. Cheap to read.
#[derive(Debug, Default)]
pub struct DatastreamStatus {
    connected: AtomicBool,
    loading: AtomicBool,
    unauthorized: AtomicBool,
    /// Oplog head once the current connection's data is committed; -1 none.
    ready_mark: AtomicI64Opt,
    /// Counters.
    pub counters: DatastreamCounters,
    cursor: Mutex<Option<String>>,
    last_error: Mutex<Option<String>>,
}

/// An `Option<i64>` in an atomic (-1 = none; marks are oplog heads ≥ 0).
#[derive(Debug)]
struct AtomicI64Opt(AtomicI64);

impl Default for AtomicI64Opt {
    fn default() -> Self {
        AtomicI64Opt(AtomicI64::new(-1))
    }
}

impl AtomicI64Opt {
    fn get(&self) -> Option<i64> {
        let v = self.0.load(Ordering::Acquire);
        (v >= 0).then_some(v)
    }
    fn set(&self, value: Option<i64>) {
        self.0.store(value.unwrap_or(-1).max(-1), Ordering::Release);
    }
}

/// Monotonic counters of a datastream source.
#[derive(Debug, Default)]
pub struct DatastreamCounters {
    /// Connections established.
    pub connects: AtomicU64,
    /// Connection attempts that failed.
    pub connect_failures: AtomicU64,
    /// Connections dropped because the server went silent past the pong
    /// timeout.
    pub keepalive_timeouts: AtomicU64,
    /// Change messages received.
    pub messages: AtomicU64,
    /// Bytes of change messages received.
    pub bytes: AtomicU64,
    /// Batches sent to the pipeline.
    pub batches: AtomicU64,
    /// Messages that could not be decoded.
    pub malformed: AtomicU64,
    /// `error` messages from the server.
    pub server_errors: AtomicU64,
    /// Subscription confirmations.
    pub confirmations: AtomicU64,
    /// `reload` messages.
    pub reloads: AtomicU64,
    /// Closes with code 4001 (key rejected).
    pub unauthorized: AtomicU64,
    /// Initial loads finished with every page.
    pub loads_completed: AtomicU64,
    /// Initial loads that missed pages (nothing evicted).
    pub loads_incomplete: AtomicU64,
    /// REST pages fetched.
    pub pages: AtomicU64,
    /// REST page attempts that failed (each retry counts).
    pub page_failures: AtomicU64,
    /// Entities read by initial loads.
    pub loaded_entities: AtomicU64,
}

impl DatastreamCounters {
    fn snapshot(&self) -> serde_json::Value {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        serde_json::json!({
            "connects": get(&self.connects),
            "connect_failures": get(&self.connect_failures),
            "keepalive_timeouts": get(&self.keepalive_timeouts),
            "messages": get(&self.messages),
            "bytes": get(&self.bytes),
            "batches": get(&self.batches),
            "malformed": get(&self.malformed),
            "server_errors": get(&self.server_errors),
            "confirmations": get(&self.confirmations),
            "reloads": get(&self.reloads),
            "unauthorized": get(&self.unauthorized),
            "loads_completed": get(&self.loads_completed),
            "loads_incomplete": get(&self.loads_incomplete),
            "pages": get(&self.pages),
            "page_failures": get(&self.page_failures),
            "loaded_entities": get(&self.loaded_entities),
        })
    }
}

/// Add one to a counter.
pub(crate) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// A point-in-time view of [`DatastreamStatus`].
#[derive(Debug, Clone, Serialize)]
pub struct DatastreamSnapshot {
    /// Whether a connection is up.
    pub connected: bool,
    /// Whether an initial load is running.
    pub loading: bool,
    /// Whether the server rejected the API key (close 4001) last time.
    pub unauthorized: bool,
    /// The oplog head the current connection's data reached, once committed.
    pub ready_mark: Option<i64>,
    /// The replay cursor (last stream id seen).
    pub cursor: Option<String>,
    /// The last error.
    pub last_error: Option<String>,
    /// Counters.
    pub counters: serde_json::Value,
}

impl DatastreamStatus {
    /// Whether a connection is up: upgraded, and the server answered on it
    /// (a server rejecting the key closes with 4001 before answering).
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    /// Whether the server rejected the key on the last attempt.
    pub fn unauthorized(&self) -> bool {
        self.unauthorized.load(Ordering::Acquire)
    }

    /// Whether an initial load is running.
    pub fn loading(&self) -> bool {
        self.loading.load(Ordering::Acquire)
    }

    /// The oplog head that must reach the caches before the data of the
    /// current connection counts as landed; `None` while loading.
    pub fn ready_mark(&self) -> Option<i64> {
        self.ready_mark.get()
    }

    /// A snapshot for `/debug`.
    pub fn snapshot(&self) -> DatastreamSnapshot {
        DatastreamSnapshot {
            connected: self.connected(),
            loading: self.loading(),
            unauthorized: self.unauthorized(),
            ready_mark: self.ready_mark(),
            cursor: self.cursor.lock().map(|c| c.clone()).unwrap_or_default(),
            last_error: self
                .last_error
                .lock()
                .map(|c| c.clone())
                .unwrap_or_default(),
            counters: self.counters.snapshot(),
        }
    }

    pub(crate) fn set_connected(&self, connected: bool) {
        self.connected.store(connected, Ordering::Release);
        if connected {
            self.unauthorized.store(false, Ordering::Release);
        } else {
            self.ready_mark.set(None);
        }
    }

    pub(crate) fn set_unauthorized(&self) {
        self.unauthorized.store(true, Ordering::Release);
    }

    pub(crate) fn set_loading(&self, loading: bool) {
        self.loading.store(loading, Ordering::Release);
    }

    pub(crate) fn set_ready_mark(&self, mark: Option<i64>) {
        self.ready_mark.set(mark);
    }

    pub(crate) fn set_cursor(&self, cursor: Option<&str>) {
        if let Ok(mut slot) = self.cursor.lock() {
            *slot = cursor.map(str::to_owned);
        }
    }

    pub(crate) fn set_error(&self, error: impl Into<String>) {
        if let Ok(mut slot) = self.last_error.lock() {
            *slot = Some(error.into());
        }
    }
}

/// A datastream source's part of readiness: connected, and the oplog head
/// its current connection's data reached once committed.
pub struct DatastreamProbe {
    name: String,
    status: Arc<DatastreamStatus>,
}

impl DatastreamProbe {
    /// The probe of the source `name`.
    pub fn new(name: String, status: Arc<DatastreamStatus>) -> DatastreamProbe {
        DatastreamProbe { name, status }
    }
}

impl SourceProbe for DatastreamProbe {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        "datastream"
    }

    fn connected(&self) -> bool {
        self.status.connected()
    }

    fn ready_mark(&self) -> Option<i64> {
        self.status.ready_mark()
    }

    fn error(&self) -> Option<String> {
        self.status
            .unauthorized()
            .then(|| "the datastream rejected the API key (close code 4001)".to_owned())
    }

    fn debug(&self) -> serde_json::Value {
        serde_json::to_value(self.status.snapshot()).unwrap_or(serde_json::Value::Null)
    }

    fn metrics(&self) -> Vec<Metric> {
        let snapshot = self.status.snapshot();
        let mut metrics = vec![Metric::gauge(
            "emcachers_datastream_connected",
            "1 while the datastream is connected.",
            f64::from(u8::from(snapshot.connected)),
        )];
        if let Some(counters) = snapshot.counters.as_object() {
            metrics.extend(counters.iter().map(|(name, value)| {
                Metric::counter(
                    format!("emcachers_datastream_{name}_total"),
                    "Datastream counter.",
                    value.as_f64().unwrap_or(0.0),
                )
            }));
        }
        metrics
    }
}
