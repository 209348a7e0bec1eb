//! The health endpoints, on their own port (Schematic's `HEALTH_PORT`,
//! default 8090), as spec §6 defines them:
//!
//! - `GET /health`: 200 while the process lives. The body is `/ready`'s with
//!   `"status": "healthy"`, plus `"tasks"` (each background task's and
//!   job's [`TaskState`], by name: `running`, `restarting` with its restart
//!   count, last failure and wait, `failing`, `finished`, `stopped`) and
//!   `"degraded"` (the names of the tasks waiting to restart and of the jobs
//!   whose last run failed; empty when all is well). A degraded task does not
//!   turn `/health` into an error: the process still serves, and the
//!   supervisor restarts it; monitoring reads `degraded`.
//! - `GET /ready`: 200 only once the cache is warm: every datastream source
//!   is connected, its initial load (or, after a reconnect, everything up
//!   to the reconnect) is committed to the oplog, and the cache writer has
//!   applied the oplog up to there. 503 otherwise. The body is the same
//!   either way: `{"status", "ready", "connected", "components": {"redis",
//!   "datastream"}, "cache_version", "timestamp"}`, plus `"error"` when a
//!   source's API key was rejected (close code 4001).
//! - `GET /debug`: every counter as JSON, and the task states.
//! - `GET /metrics`: the same counters in Prometheus' text format
//!   (`emcachers_tasks_degraded`, `emcachers_task_restarts_total`).

use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::cache::redis::RedisWriterStatus;
use crate::jobs::{TaskState, TaskStates};
use crate::oplog::OplogStore;
use crate::plugin::PluginRegistry;
use crate::sources::datastream::DatastreamStatus;

/// What `/ready` needs to know of a cache writer.
pub trait CacheWriterProbe: Send + Sync {
    /// The writer's name in `components` (`redis`).
    fn component(&self) -> &'static str;
    /// Whether its target is reachable (and it may write).
    fn connected(&self) -> bool;
    /// The last oplog id it applied.
    fn applied_offset(&self) -> i64;
    /// Whether every entity it should write is being written (none waits
    /// for a plugin or a cache version). Default: yes.
    fn complete(&self) -> bool {
        true
    }
    /// The cache version it writes `entity` under, once known.
    fn version(&self, entity: &str) -> Option<String>;
    /// Its counters, for `/debug`.
    fn debug(&self) -> Value;
    /// Its counters as (metric name, help, value), for `/metrics`.
    fn metrics(&self) -> Vec<(&'static str, &'static str, f64)>;
}

impl CacheWriterProbe for RedisWriterStatus {
    fn component(&self) -> &'static str {
        "redis"
    }

    fn connected(&self) -> bool {
        RedisWriterStatus::connected(self)
    }

    fn applied_offset(&self) -> i64 {
        RedisWriterStatus::applied_offset(self)
    }

    fn complete(&self) -> bool {
        self.waiting_entities().is_empty()
    }

    fn version(&self, entity: &str) -> Option<String> {
        RedisWriterStatus::version(self, entity)
    }

    fn debug(&self) -> Value {
        serde_json::to_value(self.snapshot()).unwrap_or(Value::Null)
    }

    fn metrics(&self) -> Vec<(&'static str, &'static str, f64)> {
        let s = self.snapshot();
        vec![
            (
                "emcachers_redis_connected",
                "1 while the last Redis call worked.",
                f64::from(u8::from(s.connected)),
            ),
            (
                "emcachers_redis_applied_offset",
                "The last oplog id applied to Redis.",
                s.applied_offset as f64,
            ),
            (
                "emcachers_redis_lag",
                "Oplog entries seen but not yet applied.",
                (s.head_seen - s.applied_offset).max(0) as f64,
            ),
            (
                "emcachers_redis_keys_written_total",
                "Entity keys set.",
                s.keys_written as f64,
            ),
            (
                "emcachers_redis_keys_deleted_total",
                "Entity keys deleted.",
                s.keys_deleted as f64,
            ),
            (
                "emcachers_redis_rows_applied_total",
                "Rows applied.",
                s.rows_applied as f64,
            ),
            (
                "emcachers_redis_rows_skipped_total",
                "Rows of entities waiting for a plugin or a cache version (rebuilt once they have one).",
                s.rows_skipped as f64,
            ),
            (
                "emcachers_redis_rows_dead_lettered_total",
                "Rows the writer could not apply, kept as rejected records (source cache-writer:redis).",
                s.rows_dead_lettered as f64,
            ),
            (
                "emcachers_redis_waiting_entities",
                "In-scope entities waiting for a plugin or a cache version.",
                s.waiting_entities.len() as f64,
            ),
            (
                "emcachers_redis_errors_total",
                "Failed writer steps.",
                s.errors as f64,
            ),
            (
                "emcachers_redis_cleanup_removed_total",
                "Keys removed by stale-version cleanup.",
                s.cleanup_removed as f64,
            ),
        ]
    }
}

/// A writer probe that can be replaced while the endpoints serve, for a
/// writer that is reopened (restarted) with a new status.
pub struct ProbeSlot(std::sync::RwLock<Arc<dyn CacheWriterProbe>>);

impl ProbeSlot {
    /// A slot holding `probe`.
    pub fn new(probe: Arc<dyn CacheWriterProbe>) -> ProbeSlot {
        ProbeSlot(std::sync::RwLock::new(probe))
    }

    /// Answer with `probe` from now on.
    pub fn set(&self, probe: Arc<dyn CacheWriterProbe>) {
        *self
            .0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = probe;
    }

    fn current(&self) -> Arc<dyn CacheWriterProbe> {
        self.0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

impl CacheWriterProbe for ProbeSlot {
    fn component(&self) -> &'static str {
        self.current().component()
    }

    fn connected(&self) -> bool {
        self.current().connected()
    }

    fn applied_offset(&self) -> i64 {
        self.current().applied_offset()
    }

    fn version(&self, entity: &str) -> Option<String> {
        self.current().version(entity)
    }

    fn debug(&self) -> Value {
        self.current().debug()
    }

    fn metrics(&self) -> Vec<(&'static str, &'static str, f64)> {
        self.current().metrics()
    }
}

/// Everything the endpoints read.
#[derive(Clone)]
pub struct HealthState {
    /// The datastream sources.
    pub datastreams: Vec<Arc<DatastreamStatus>>,
    /// The cache writer readiness waits for.
    pub writer: Option<Arc<dyn CacheWriterProbe>>,
    /// The oplog store (head, for `/debug`).
    pub store: Arc<dyn OplogStore>,
    /// The plugins (the cache version when no writer knows it).
    pub registry: Arc<PluginRegistry>,
    /// The entity whose cache version `/ready` reports.
    pub version_entity: String,
    /// When the process started.
    pub started: Instant,
    /// The states of the background tasks and jobs.
    pub tasks: TaskStates,
}

/// The readiness of the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Readiness {
    /// Whether `/ready` answers 200.
    pub ready: bool,
    /// Whether every datastream is connected.
    pub connected: bool,
    /// `connected` or `disconnected` (the writer's target).
    pub writer: &'static str,
    /// `ready`, `connected_loading` or `disconnected`.
    pub datastream: &'static str,
    /// The cache version.
    pub cache_version: String,
    /// Why a source cannot connect, when known.
    pub error: Option<String>,
}

impl HealthState {
    /// The readiness now.
    pub fn readiness(&self) -> Readiness {
        let writer_connected = self.writer.as_ref().is_none_or(|w| w.connected());
        let writer_complete = self.writer.as_ref().is_none_or(|w| w.complete());
        let applied = self.writer.as_ref().map(|w| w.applied_offset());
        let connected = self.datastreams.iter().all(|d| d.connected());
        let landed = self.datastreams.iter().all(|d| {
            d.connected()
                && d.ready_mark()
                    .is_some_and(|mark| applied.is_none_or(|applied| applied >= mark))
        });
        let datastream = if !connected {
            "disconnected"
        } else if landed && writer_connected && writer_complete {
            "ready"
        } else {
            "connected_loading"
        };
        let error = self
            .datastreams
            .iter()
            .find(|d| d.unauthorized())
            .map(|_| "the datastream rejected the API key (close code 4001)".to_owned());
        Readiness {
            ready: connected && landed && writer_connected && writer_complete,
            connected,
            writer: if writer_connected {
                "connected"
            } else {
                "disconnected"
            },
            datastream,
            cache_version: self.cache_version(),
            error,
        }
    }

    /// The version `/ready` reports: the writer's, else the plugin's.
    pub fn cache_version(&self) -> String {
        self.writer
            .as_ref()
            .and_then(|w| w.version(&self.version_entity))
            .or_else(|| {
                self.registry
                    .for_entity(&self.version_entity)
                    .and_then(|p| p.entity_version(&self.version_entity).ok())
            })
            .unwrap_or_default()
    }
}

/// The router of the health endpoints.
pub fn router(state: HealthState) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/debug", get(debug))
        .route("/metrics", get(metrics))
        .with_state(Arc::new(state))
}

/// Serve `router` on `listener` until `cancel` fires.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(async move { cancel.cancelled().await })
        .await
}

fn body(state: &HealthState, readiness: &Readiness) -> Value {
    let component = state.writer.as_ref().map_or("redis", |w| w.component());
    let mut body = json!({
        "status": if readiness.ready { "healthy" } else { "not_ready" },
        "ready": readiness.ready,
        "connected": readiness.connected,
        "components": {
            component: readiness.writer,
            "datastream": readiness.datastream,
        },
        "cache_version": readiness.cache_version,
        "timestamp": rfc3339(SystemTime::now()),
    });
    if let (Some(error), Some(map)) = (&readiness.error, body.as_object_mut()) {
        map.insert("error".into(), Value::String(error.clone()));
    }
    body
}

/// The `/health` body: `/ready`'s, `"status": "healthy"`, `"tasks"` and
/// `"degraded"`.
fn health_body(state: &HealthState, readiness: &Readiness) -> Value {
    let mut body = body(state, readiness);
    let tasks = state.tasks.snapshot();
    let degraded: Vec<&String> = tasks
        .iter()
        .filter(|(_, task)| task.degraded())
        .map(|(name, _)| name)
        .collect();
    let degraded = json!(degraded);
    if let Some(map) = body.as_object_mut() {
        map.insert("status".into(), Value::String("healthy".into()));
        map.insert("degraded".into(), degraded);
        map.insert("tasks".into(), tasks_json(&tasks));
    }
    body
}

fn tasks_json(tasks: &std::collections::BTreeMap<String, TaskState>) -> Value {
    serde_json::to_value(tasks).unwrap_or(Value::Null)
}

async fn health(State(state): State<Arc<HealthState>>) -> Response {
    let readiness = state.readiness();
    (StatusCode::OK, axum::Json(health_body(&state, &readiness))).into_response()
}

async fn ready(State(state): State<Arc<HealthState>>) -> Response {
    let readiness = state.readiness();
    let status = if readiness.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body(&state, &readiness))).into_response()
}

async fn debug(State(state): State<Arc<HealthState>>) -> Response {
    let readiness = state.readiness();
    let head = state.store.head().await.ok();
    let body = json!({
        "ready": readiness.ready,
        "cache_version": readiness.cache_version,
        "uptime_secs": state.started.elapsed().as_secs(),
        "oplog": { "backend": state.store.backend(), "head": head },
        "datastreams": state.datastreams.iter().map(|d| d.snapshot()).collect::<Vec<_>>(),
        "writer": state.writer.as_ref().map(|w| w.debug()),
        "tasks": tasks_json(&state.tasks.snapshot()),
    });
    (StatusCode::OK, axum::Json(body)).into_response()
}

async fn metrics(State(state): State<Arc<HealthState>>) -> Response {
    use std::fmt::Write;
    let readiness = state.readiness();
    let mut text = String::new();
    let mut gauge = |name: &str, help: &str, kind: &str, value: f64| {
        let _ = writeln!(
            text,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    };
    gauge(
        "emcachers_ready",
        "1 when /ready answers 200.",
        "gauge",
        f64::from(u8::from(readiness.ready)),
    );
    if let Ok(head) = state.store.head().await {
        gauge(
            "emcachers_oplog_head",
            "The highest committed oplog id.",
            "gauge",
            head as f64,
        );
    }
    for (index, source) in state.datastreams.iter().enumerate() {
        let snapshot = source.snapshot();
        if index > 0 {
            continue; // one source is the Schematic profile; more would need labels
        }
        gauge(
            "emcachers_datastream_connected",
            "1 while the datastream is connected.",
            "gauge",
            f64::from(u8::from(snapshot.connected)),
        );
        if let Some(counters) = snapshot.counters.as_object() {
            for (name, value) in counters {
                let metric = format!("emcachers_datastream_{name}_total");
                gauge(
                    &metric,
                    "Datastream counter.",
                    "counter",
                    value.as_f64().unwrap_or(0.0),
                );
            }
        }
    }
    let tasks = state.tasks.snapshot();
    gauge(
        "emcachers_tasks_degraded",
        "Background tasks waiting to restart plus jobs whose last run failed.",
        "gauge",
        tasks.values().filter(|t| t.degraded()).count() as f64,
    );
    gauge(
        "emcachers_task_restarts_total",
        "Restarts of supervised background tasks.",
        "counter",
        tasks.values().map(|t| t.restarts as f64).sum(),
    );
    if let Some(writer) = &state.writer {
        for (name, help, value) in writer.metrics() {
            gauge(name, help, "gauge", value);
        }
    }
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        text,
    )
        .into_response()
}

/// `time` as RFC 3339 in UTC, to the second (`2026-11-22T17:05:09Z`).
pub fn rfc3339(time: SystemTime) -> String {
    let secs = time
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn health_shows_task_states_and_degraded_tasks() {
        use crate::jobs::JobServer;
        use crate::oplog::SqliteStore;
        use crate::plugin::{PluginEngine, SandboxConfig};

        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(&dir.path().join("oplog.sqlite")).expect("store");
        let engine = PluginEngine::new(SandboxConfig::default()).expect("engine");
        let jobs = JobServer::new();
        jobs.spawn("steady", |cancel: CancellationToken| async move {
            cancel.cancelled().await;
        });
        async fn explode() {
            panic!("flaky broke");
        }
        jobs.spawn("flaky", |_cancel: CancellationToken| explode());
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let state = HealthState {
            datastreams: Vec::new(),
            writer: None,
            store: Arc::new(store),
            registry: Arc::new(PluginRegistry::new(engine)),
            version_entity: String::new(),
            started: Instant::now(),
            tasks: jobs.states(),
        };
        let body = health_body(&state, &state.readiness());
        assert_eq!(body["status"], "healthy");
        assert!(body["components"].is_object() && body["timestamp"].is_string());
        assert_eq!(body["degraded"], json!(["flaky"]));
        assert_eq!(
            body["tasks"]["steady"],
            json!({"kind": "task", "state": "running", "restarts": 0, "failures": 0})
        );
        let flaky = &body["tasks"]["flaky"];
        assert_eq!(flaky["state"], "restarting");
        assert_eq!(flaky["restarts"], 1);
        assert_eq!(flaky["failures"], 2);
        assert_eq!(flaky["last_failure"], "panicked: flaky broke");
        assert_eq!(flaky["retry_in_ms"], 2000);
        assert!(jobs.shutdown(Duration::from_secs(1)).await);
        let body = health_body(&state, &state.readiness());
        assert_eq!(body["degraded"], json!([]));
        assert_eq!(body["tasks"]["flaky"]["state"], "stopped");
    }

    #[test]
    fn formats_rfc3339() {
        let at = |secs: u64| rfc3339(UNIX_EPOCH + Duration::from_secs(secs));
        assert_eq!(at(0), "1970-01-01T00:00:00Z");
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(at(1_795_367_109), "2026-11-22T17:05:09Z");
        assert_eq!(at(4_102_444_799), "2099-12-31T23:59:59Z");
    }
}
