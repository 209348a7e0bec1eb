//! The health endpoints, on their own port (default 8090, Schematic's
//! `HEALTH_PORT`). They aggregate what the node's parts report: each source
//! that has a readiness provides a [`SourceProbe`], each cache writer a
//! [`CacheWriterProbe`]; this module knows neither Schematic nor Redis.
//!
//! - `GET /ready`: 200 only once the caches are warm: every probed source is
//!   connected and its warm mark ([`SourceProbe::ready_mark`]: e.g. its
//!   initial load, committed to the oplog) is applied by every writer, and
//!   every writer is connected and complete. 503 otherwise. The body is the
//!   node's [`ReadinessBody`]: the generic one (`status`, `ready`,
//!   `sources`, `writers`, `timestamp`), or a drop-in's (the Schematic
//!   profile answers Schematic's body, see `crate::schematic::readiness`).
//! - `GET /health`: 200 while the process lives. The body is `/ready`'s with
//!   `"status": "healthy"`, plus `"tasks"` (each background task's and
//!   job's [`TaskState`], by name: `running`, `restarting` with its restart
//!   count, last failure and wait, `failing`, `finished`, `stopped`) and
//!   `"degraded"` (the names of the tasks waiting to restart and of the jobs
//!   whose last run failed; empty when all is well). A degraded task does not
//!   turn `/health` into an error: the process still serves, and the
//!   supervisor restarts it; monitoring reads `degraded`.
//! - `GET /debug`: every probe's counters as JSON (`sources`, `writers`),
//!   and the task states.
//! - `GET /metrics`: the probes' counters in Prometheus' text format, and
//!   `emcachers_ready`, `emcachers_oplog_head`, `emcachers_tasks_degraded`,
//!   `emcachers_task_restarts_total`.

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

/// One Prometheus sample.
#[derive(Debug, Clone, PartialEq)]
pub struct Metric {
    /// The metric name.
    pub name: String,
    /// Its help text.
    pub help: &'static str,
    /// `gauge` or `counter`.
    pub kind: &'static str,
    /// The value.
    pub value: f64,
}

impl Metric {
    /// A gauge.
    pub fn gauge(name: impl Into<String>, help: &'static str, value: f64) -> Metric {
        Metric {
            name: name.into(),
            help,
            kind: "gauge",
            value,
        }
    }

    /// A counter.
    pub fn counter(name: impl Into<String>, help: &'static str, value: f64) -> Metric {
        Metric {
            name: name.into(),
            help,
            kind: "counter",
            value,
        }
    }
}

/// What readiness needs to know of a source.
pub trait SourceProbe: Send + Sync {
    /// The source's name.
    fn name(&self) -> &str;
    /// Its kind (`datastream`).
    fn kind(&self) -> &'static str;
    /// Whether it is connected to what it reads.
    fn connected(&self) -> bool;
    /// The oplog id the caches must have applied before this source's data
    /// counts as landed (e.g. the head after its initial load committed);
    /// `None` while it has none (loading, disconnected).
    fn ready_mark(&self) -> Option<i64>;
    /// Why it cannot connect, when it knows (e.g. a rejected API key).
    fn error(&self) -> Option<String> {
        None
    }
    /// Its counters, for `/debug`.
    fn debug(&self) -> Value;
    /// Its counters, for `/metrics`.
    fn metrics(&self) -> Vec<Metric>;
}

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
    /// Its counters, for `/metrics`.
    fn metrics(&self) -> Vec<Metric>;
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

    fn metrics(&self) -> Vec<Metric> {
        let s = self.snapshot();
        vec![
            Metric::gauge(
                "emcachers_redis_connected",
                "1 while the last Redis call worked.",
                f64::from(u8::from(s.connected)),
            ),
            Metric::gauge(
                "emcachers_redis_applied_offset",
                "The last oplog id applied to Redis.",
                s.applied_offset as f64,
            ),
            Metric::gauge(
                "emcachers_redis_lag",
                "Oplog entries seen but not yet applied.",
                (s.head_seen - s.applied_offset).max(0) as f64,
            ),
            Metric::counter(
                "emcachers_redis_keys_written_total",
                "Entity keys set.",
                s.keys_written as f64,
            ),
            Metric::counter(
                "emcachers_redis_keys_deleted_total",
                "Entity keys deleted.",
                s.keys_deleted as f64,
            ),
            Metric::counter(
                "emcachers_redis_rows_applied_total",
                "Rows applied.",
                s.rows_applied as f64,
            ),
            Metric::counter(
                "emcachers_redis_rows_skipped_total",
                "Rows of entities waiting for a plugin or a cache version (rebuilt once they have one).",
                s.rows_skipped as f64,
            ),
            Metric::counter(
                "emcachers_redis_rows_dead_lettered_total",
                "Rows the writer could not apply, kept as rejected records (source cache-writer:redis).",
                s.rows_dead_lettered as f64,
            ),
            Metric::gauge(
                "emcachers_redis_waiting_entities",
                "In-scope entities waiting for a plugin or a cache version.",
                s.waiting_entities.len() as f64,
            ),
            Metric::counter(
                "emcachers_redis_errors_total",
                "Failed writer steps.",
                s.errors as f64,
            ),
            Metric::counter(
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

    fn metrics(&self) -> Vec<Metric> {
        self.current().metrics()
    }
}

/// How `/ready` (and `/health`, which adds to it) answers in JSON.
pub trait ReadinessBody: Send + Sync {
    /// The body for `readiness` (the probes of `state` answer the rest,
    /// e.g. a writer's cache version).
    fn body(&self, state: &HealthState, readiness: &Readiness) -> Value;
}

/// The generic `/ready` body: `{"status": "ready" | "not_ready", "ready",
/// "sources": {name: {"kind", "connected", "landed", "error"?}},
/// "writers": {component: {"connected", "complete", "applied_offset"}},
/// "timestamp"}`.
#[derive(Debug, Default, Clone, Copy)]
pub struct GenericBody;

impl ReadinessBody for GenericBody {
    fn body(&self, _state: &HealthState, readiness: &Readiness) -> Value {
        let sources: serde_json::Map<String, Value> = readiness
            .sources
            .iter()
            .map(|s| {
                let mut value = json!({
                    "kind": s.kind,
                    "connected": s.connected,
                    "landed": s.landed,
                });
                if let (Some(error), Some(map)) = (&s.error, value.as_object_mut()) {
                    map.insert("error".into(), Value::String(error.clone()));
                }
                (s.name.clone(), value)
            })
            .collect();
        let writers: serde_json::Map<String, Value> = readiness
            .writers
            .iter()
            .map(|w| {
                (
                    w.component.to_owned(),
                    json!({
                        "connected": w.connected,
                        "complete": w.complete,
                        "applied_offset": w.applied,
                    }),
                )
            })
            .collect();
        json!({
            "status": if readiness.ready { "ready" } else { "not_ready" },
            "ready": readiness.ready,
            "sources": sources,
            "writers": writers,
            "timestamp": rfc3339(SystemTime::now()),
        })
    }
}

/// Everything the endpoints read.
#[derive(Clone)]
pub struct HealthState {
    /// The sources readiness waits for.
    pub sources: Vec<Arc<dyn SourceProbe>>,
    /// The cache writers readiness waits for.
    pub writers: Vec<Arc<dyn CacheWriterProbe>>,
    /// How `/ready` answers.
    pub body: Arc<dyn ReadinessBody>,
    /// The oplog store (head, for `/debug`).
    pub store: Arc<dyn OplogStore>,
    /// When the process started.
    pub started: Instant,
    /// The states of the background tasks and jobs.
    pub tasks: TaskStates,
}

/// A source's part of [`Readiness`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceReadiness {
    /// Its name.
    pub name: String,
    /// Its kind.
    pub kind: &'static str,
    /// Whether it is connected.
    pub connected: bool,
    /// Whether its warm mark is applied by every writer.
    pub landed: bool,
    /// Why it cannot connect, when known.
    pub error: Option<String>,
}

/// A writer's part of [`Readiness`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriterReadiness {
    /// Its component name (`redis`).
    pub component: &'static str,
    /// Whether its target is reachable.
    pub connected: bool,
    /// Whether every entity it should write is being written.
    pub complete: bool,
    /// The last oplog id it applied.
    pub applied: i64,
}

/// The readiness of the node, aggregated from its probes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Readiness {
    /// Whether `/ready` answers 200.
    pub ready: bool,
    /// Each probed source.
    pub sources: Vec<SourceReadiness>,
    /// Each writer.
    pub writers: Vec<WriterReadiness>,
}

impl Readiness {
    /// Whether every source is connected.
    pub fn connected(&self) -> bool {
        self.sources.iter().all(|s| s.connected)
    }

    /// Whether every source's data landed in every writer.
    pub fn landed(&self) -> bool {
        self.sources.iter().all(|s| s.landed)
    }

    /// Whether every writer is connected.
    pub fn writers_connected(&self) -> bool {
        self.writers.iter().all(|w| w.connected)
    }

    /// Whether every writer writes every entity it should.
    pub fn writers_complete(&self) -> bool {
        self.writers.iter().all(|w| w.complete)
    }

    /// The first error a source reports.
    pub fn error(&self) -> Option<&str> {
        self.sources.iter().find_map(|s| s.error.as_deref())
    }
}

impl HealthState {
    /// The readiness now.
    pub fn readiness(&self) -> Readiness {
        let writers: Vec<WriterReadiness> = self
            .writers
            .iter()
            .map(|w| WriterReadiness {
                component: w.component(),
                connected: w.connected(),
                complete: w.complete(),
                applied: w.applied_offset(),
            })
            .collect();
        let sources: Vec<SourceReadiness> = self
            .sources
            .iter()
            .map(|s| {
                let connected = s.connected();
                let landed = connected
                    && s.ready_mark()
                        .is_some_and(|mark| writers.iter().all(|w| w.applied >= mark));
                SourceReadiness {
                    name: s.name().to_owned(),
                    kind: s.kind(),
                    connected,
                    landed,
                    error: s.error(),
                }
            })
            .collect();
        let mut readiness = Readiness {
            ready: false,
            sources,
            writers,
        };
        readiness.ready = readiness.connected()
            && readiness.landed()
            && readiness.writers_connected()
            && readiness.writers_complete();
        readiness
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

/// The `/health` body: `/ready`'s, `"status": "healthy"`, `"tasks"` and
/// `"degraded"`.
fn health_body(state: &HealthState, readiness: &Readiness) -> Value {
    let mut body = state.body.body(state, readiness);
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
    (status, axum::Json(state.body.body(&state, &readiness))).into_response()
}

async fn debug(State(state): State<Arc<HealthState>>) -> Response {
    let readiness = state.readiness();
    let head = state.store.head().await.ok();
    let body = json!({
        "ready": readiness.ready,
        "uptime_secs": state.started.elapsed().as_secs(),
        "oplog": { "backend": state.store.backend(), "head": head },
        "sources": state.sources.iter().map(|s| {
            json!({ "name": s.name(), "kind": s.kind(), "status": s.debug() })
        }).collect::<Vec<_>>(),
        "writers": state.writers.iter().map(|w| {
            json!({ "component": w.component(), "status": w.debug() })
        }).collect::<Vec<_>>(),
        "tasks": tasks_json(&state.tasks.snapshot()),
    });
    (StatusCode::OK, axum::Json(body)).into_response()
}

async fn metrics(State(state): State<Arc<HealthState>>) -> Response {
    use std::fmt::Write;
    let readiness = state.readiness();
    let mut text = String::new();
    let mut write = |metric: &Metric| {
        let Metric {
            name,
            help,
            kind,
            value,
        } = metric;
        let _ = writeln!(
            text,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    };
    write(&Metric::gauge(
        "emcachers_ready",
        "1 when /ready answers 200.",
        f64::from(u8::from(readiness.ready)),
    ));
    if let Ok(head) = state.store.head().await {
        write(&Metric::gauge(
            "emcachers_oplog_head",
            "The highest committed oplog id.",
            head as f64,
        ));
    }
    // Several sources of one kind would repeat names: the first one speaks
    // (labels are for later).
    let mut kinds = std::collections::BTreeSet::new();
    for source in &state.sources {
        if kinds.insert(source.kind()) {
            source.metrics().iter().for_each(&mut write);
        }
    }
    let tasks = state.tasks.snapshot();
    write(&Metric::gauge(
        "emcachers_tasks_degraded",
        "Background tasks waiting to restart plus jobs whose last run failed.",
        tasks.values().filter(|t| t.degraded()).count() as f64,
    ));
    write(&Metric::counter(
        "emcachers_task_restarts_total",
        "Restarts of supervised background tasks.",
        tasks.values().map(|t| t.restarts as f64).sum(),
    ));
    for writer in &state.writers {
        writer.metrics().iter().for_each(&mut write);
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
    let (year, month, day) = crate::calendar::civil_from_days(days);
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

        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(&dir.path().join("oplog.sqlite")).expect("store");
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
            sources: Vec::new(),
            writers: Vec::new(),
            body: Arc::new(GenericBody),
            store: Arc::new(store),
            started: Instant::now(),
            tasks: jobs.states(),
        };
        let body = health_body(&state, &state.readiness());
        assert_eq!(body["status"], "healthy");
        assert!(body["sources"].is_object() && body["timestamp"].is_string());
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

    struct Source(bool, Option<i64>);

    impl SourceProbe for Source {
        fn name(&self) -> &str {
            "feed"
        }
        fn kind(&self) -> &'static str {
            "test"
        }
        fn connected(&self) -> bool {
            self.0
        }
        fn ready_mark(&self) -> Option<i64> {
            self.1
        }
        fn debug(&self) -> Value {
            Value::Null
        }
        fn metrics(&self) -> Vec<Metric> {
            Vec::new()
        }
    }

    struct Writer(&'static str, i64, bool);

    impl CacheWriterProbe for Writer {
        fn component(&self) -> &'static str {
            self.0
        }
        fn connected(&self) -> bool {
            true
        }
        fn applied_offset(&self) -> i64 {
            self.1
        }
        fn complete(&self) -> bool {
            self.2
        }
        fn version(&self, _entity: &str) -> Option<String> {
            None
        }
        fn debug(&self) -> Value {
            Value::Null
        }
        fn metrics(&self) -> Vec<Metric> {
            Vec::new()
        }
    }

    #[test]
    fn ready_needs_every_source_landed_in_every_writer() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store: Arc<dyn OplogStore> = Arc::new(
            crate::oplog::SqliteStore::open(&dir.path().join("oplog.sqlite")).expect("store"),
        );
        let state = |source: Source, writers: Vec<Writer>| HealthState {
            sources: vec![Arc::new(source) as Arc<dyn SourceProbe>],
            writers: writers
                .into_iter()
                .map(|w| Arc::new(w) as Arc<dyn CacheWriterProbe>)
                .collect(),
            body: Arc::new(GenericBody),
            store: store.clone(),
            started: Instant::now(),
            tasks: TaskStates::default(),
        };
        let both = || vec![Writer("a", 10, true), Writer("b", 7, true)];
        assert!(
            !state(Source(true, Some(8)), both()).readiness().ready,
            "b is behind the mark"
        );
        assert!(state(Source(true, Some(7)), both()).readiness().ready);
        assert!(
            !state(Source(true, None), both()).readiness().ready,
            "still loading"
        );
        assert!(
            !state(Source(false, Some(1)), both()).readiness().ready,
            "disconnected"
        );
        let waiting = vec![Writer("a", 10, false)];
        assert!(
            !state(Source(true, Some(1)), waiting).readiness().ready,
            "an entity waits"
        );
        let s = state(Source(true, Some(8)), both());
        let body = s.body.body(&s, &s.readiness());
        assert_eq!(body["status"], "not_ready");
        assert_eq!(body["sources"]["feed"]["landed"], false);
        assert_eq!(body["writers"]["b"]["applied_offset"], 7);
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
