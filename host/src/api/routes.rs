//! Route handlers.

use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use super::error::ApiError;
use super::system::SystemSampler;
use crate::cache::CacheDbManager;
use crate::cache::redis::MemoryTarget;
use crate::entities::{EntityManager, EntitySpec, user_status};
use crate::health::HealthState;
use crate::ingest::Pipeline;
use crate::oplog::{OplogStore, read_entities_log};
use crate::plugin::PluginRegistry;

/// What the handlers share.
#[derive(Clone)]
pub struct ApiState {
    /// The oplog store.
    pub store: Arc<dyn OplogStore>,
    /// Entity definitions.
    pub entities: Arc<EntityManager>,
    /// Loaded plugins.
    pub registry: Arc<PluginRegistry>,
    /// The ingest pipeline (for replays).
    pub pipeline: Arc<Pipeline>,
    /// The local SQLite caches, when this node runs them.
    pub dbs: Option<CacheDbManager>,
    /// The in-memory key cache, when the key writer targets memory.
    pub memory: Option<Arc<MemoryTarget>>,
    /// The probes of the node's sources and writers, and its task states
    /// (`/health/detailed`).
    pub health: Option<HealthState>,
    /// CPU, memory and throughput between calls (`/api/system/stats`).
    pub system: Arc<SystemSampler>,
    /// Oplog entries the writers may have still to apply before
    /// `/api/system/stats` flags it.
    pub pending_oplog_limit: i64,
}

/// The API router.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/health/detailed", get(health_detailed))
        .route("/api/system/stats", get(system_stats))
        .route("/api/oplogs/batch", post(oplog_batch))
        .route("/api/entities", get(list_entities).post(create_entity))
        .route("/api/entities/refresh", post(refresh_all))
        .route(
            "/api/entities/{name}",
            get(get_entity).put(update_entity).delete(delete_entity),
        )
        .route("/api/entities/{name}/refresh", post(refresh_entity))
        .route("/api/oplogs/{entity}", get(oplog))
        .route("/api/plugins", get(plugins))
        .route("/api/rejected", get(rejected))
        .route("/api/rejected/replay", post(replay))
        .route("/api/replication/stats", get(stats))
        .route("/api/replication/recreate/{entity}", post(recreate))
        .route("/api/cache/keys", get(memory_keys))
        .route("/api/cache/keys/{*key}", get(memory_key))
        .with_state(state)
}

async fn health() -> Json<Value> {
    Json(json!({"status": "healthy"}))
}

/// The body of `POST /api/entities`: a spec, optionally with its initial
/// status (one of [`USER_STATUSES`](crate::entities::USER_STATUSES); the
/// entity manager refuses the others with a 400).
#[derive(Debug, Deserialize)]
struct CreateEntity {
    #[serde(flatten)]
    spec: EntitySpec,
    #[serde(default)]
    status: Option<String>,
}

async fn list_entities(State(state): State<ApiState>) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!(state.entities.list().await?)))
}

async fn create_entity(
    State(state): State<ApiState>,
    body: Result<Json<Value>, JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let Json(body) = body?;
    let body = seed_entity_body(body)?;
    let request: CreateEntity = serde_json::from_value(body).map_err(|e| ApiError {
        status: StatusCode::UNPROCESSABLE_ENTITY,
        message: format!("invalid entity: {e}"),
    })?;
    let status = match request.status.as_deref() {
        Some(text) => user_status(text)?,
        // A new entity of a source that loads is backfilled by it.
        None => state.entities.initial_status(&request.spec.source),
    };
    let def = state.entities.create(request.spec, status).await?;
    Ok((StatusCode::CREATED, Json(json!(def))))
}

/// `POST /api/replication/recreate/{entity}`: snapshot one entity again
/// from its source (202: the load runs in the background; the entity is
/// `pending`, then `scanning`, then `ready`).
async fn recreate(
    State(state): State<ApiState>,
    Path(entity): Path<String>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let def = state.entities.request_load(&entity).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"entity": def.name, "source": def.source, "status": def.status.as_str()})),
    ))
}

async fn get_entity(
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!(state.entities.get(&name).await?)))
}

async fn update_entity(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    body: Result<Json<Value>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let Json(mut body) = body?;
    if let Some(object) = body.as_object_mut() {
        object
            .entry("name")
            .or_insert_with(|| Value::String(name.clone()));
    }
    let spec: EntitySpec = serde_json::from_value(body).map_err(|e| ApiError {
        status: StatusCode::UNPROCESSABLE_ENTITY,
        message: format!("invalid entity: {e}"),
    })?;
    if spec.name != name {
        return Err(ApiError::bad_request(format!(
            "the body names entity {}, the path {name}",
            spec.name
        )));
    }
    Ok(Json(json!(state.entities.update(spec).await?)))
}

async fn delete_entity(
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.entities.delete(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn refresh_entity(
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    state.entities.get(&name).await?;
    let changed = state.entities.publish_layout(&name).await?;
    Ok(Json(json!({"entity": name, "layout_changed": changed})))
}

async fn refresh_all(State(state): State<ApiState>) -> Result<Json<Value>, ApiError> {
    let report = state.entities.hard_refresh().await?;
    Ok(Json(json!({
        "entities": report.entities, "configured": report.configured,
        "layouts_changed": report.layouts_changed, "removed": report.removed,
    })))
}

/// `?after=&limit=` paging.
#[derive(Debug, Deserialize)]
struct Page {
    #[serde(default)]
    after: i64,
    #[serde(default = "default_limit")]
    limit: usize,
}

fn default_limit() -> usize {
    100
}

fn page(query: Result<Query<Page>, QueryRejection>) -> Result<Page, ApiError> {
    let Query(page) = query?;
    if page.limit == 0 || page.limit > 10_000 {
        return Err(ApiError::bad_request("limit must be between 1 and 10000"));
    }
    Ok(page)
}

async fn oplog(
    State(state): State<ApiState>,
    Path(entity): Path<String>,
    query: Result<Query<Page>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let page = page(query)?;
    state.entities.get(&entity).await?;
    let found = state
        .store
        .read_entity_log(&entity, page.after, page.limit)
        .await?;
    Ok(Json(json!(found)))
}

/// The body of `POST /api/oplogs/batch`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OplogBatch {
    entities: Vec<String>,
    #[serde(default)]
    after: i64,
    #[serde(default = "default_limit")]
    limit: usize,
}

/// Entities asked for at most by one `POST /api/oplogs/batch`.
const BATCH_ENTITIES_MAX: usize = 100;

/// Log entries of several entities in id order, paged by id (`after`,
/// `limit`); `next_after` continues where the page ended.
async fn oplog_batch(
    State(state): State<ApiState>,
    body: Result<Json<Value>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let Json(body) = body?;
    let request: OplogBatch = serde_json::from_value(body).map_err(|e| ApiError {
        status: StatusCode::UNPROCESSABLE_ENTITY,
        message: format!("invalid oplog batch request: {e}"),
    })?;
    if request.entities.is_empty() || request.entities.len() > BATCH_ENTITIES_MAX {
        return Err(ApiError::bad_request(format!(
            "entities must name 1 to {BATCH_ENTITIES_MAX} entities"
        )));
    }
    if request.limit == 0 || request.limit > 10_000 {
        return Err(ApiError::bad_request("limit must be between 1 and 10000"));
    }
    for entity in &request.entities {
        state.entities.get(entity).await?;
    }
    let entries = read_entities_log(
        state.store.as_ref(),
        &request.entities,
        request.after,
        request.limit,
    )
    .await?;
    let next_after = (entries.len() == request.limit)
        .then(|| entries.last().map(|e| e.id))
        .flatten();
    Ok(Json(json!({"entries": entries, "next_after": next_after})))
}

/// Seed 004's entity body, `{"name", "shape": {"entity_name",
/// "source_name", "columns"}}`: an entity of the `shape` plugin fed by the
/// collection `source_name` of the source `mongo` (seed 004's one MongoDB,
/// `[database] mongodb_url`), with the shape as its configuration. Any
/// other body is returned as it is.
fn seed_entity_body(body: Value) -> Result<Value, ApiError> {
    let Some(shape) = body.get("shape") else {
        return Ok(body);
    };
    let invalid = |what: &str| ApiError {
        status: StatusCode::UNPROCESSABLE_ENTITY,
        message: format!("invalid entity: the seed's shape body {what}"),
    };
    let name = body
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid("needs a string `name`"))?;
    let collection = shape
        .get("source_name")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid("needs a string `shape.source_name`"))?;
    if !shape.get("columns").is_some_and(Value::is_array) {
        return Err(invalid("needs an array `shape.columns`"));
    }
    // The seed's `entity_name` is a type label (`User` for `users`); the
    // entity is named by `name`, so it is not handed to the plugin.
    let mut config = shape.clone();
    if let Some(map) = config.as_object_mut() {
        map.remove("entity_name");
    }
    let mut spec = json!({
        "name": name,
        "source": "mongo",
        "collection": collection,
        "plugin": "shape",
        "config": config,
    });
    if let (Some(status), Some(map)) = (body.get("status"), spec.as_object_mut()) {
        map.insert("status".into(), status.clone());
    }
    Ok(spec)
}

/// Every component: the oplog store (reachable, head), each source (probe,
/// committed position and its age), each cache writer (applied offset and
/// lag), the SQLite replicator, the plugins and the background tasks.
async fn health_detailed(State(state): State<ApiState>) -> Result<Json<Value>, ApiError> {
    let (store_ok, head, store_error) = match state.store.head().await {
        Ok(head) => (true, Some(head), None),
        Err(error) => (false, None, Some(error.to_string())),
    };
    let mut sources = Vec::new();
    let entities = state.entities.list().await.unwrap_or_default();
    let mut names: Vec<&str> = entities.iter().map(|e| e.source.as_str()).collect();
    if let Some(health) = &state.health {
        names.extend(health.sources.iter().map(|s| s.name()));
    }
    names.sort_unstable();
    names.dedup();
    let now = crate::oplog::now_millis();
    for name in names {
        let position = state.store.source_position_at(name).await.ok().flatten();
        let probe = state
            .health
            .as_ref()
            .and_then(|h| h.sources.iter().find(|s| s.name() == name));
        sources.push(json!({
            "name": name,
            "kind": probe.map(|p| p.kind()),
            "connected": probe.map(|p| p.connected()),
            "error": probe.and_then(|p| p.error()),
            "position": position.as_ref().map(|(p, _)| p.clone()),
            "position_age_ms": position.as_ref().map(|(_, at)| (now - at).max(0)),
        }));
    }
    let mut writers = Vec::new();
    if let Some(health) = &state.health {
        for writer in &health.writers {
            let applied = writer.applied_offset();
            writers.push(json!({
                "component": writer.component(),
                "connected": writer.connected(),
                "complete": writer.complete(),
                "applied_offset": applied,
                "lag": head.map(|h| (h - applied).max(0)),
            }));
        }
    }
    let replicator = state.dbs.as_ref().map(|dbs| {
        let status = dbs.replicator_status();
        json!({
            "offset": status.offset(),
            "lag": head.map(|h| (h - status.offset()).max(0)),
            "failing": status.failing(),
        })
    });
    let readiness = state.health.as_ref().map(|h| h.readiness());
    let tasks = state.health.as_ref().map(|h| h.tasks.snapshot());
    let degraded: Vec<String> = tasks
        .iter()
        .flatten()
        .filter(|(_, t)| t.degraded())
        .map(|(name, _)| name.clone())
        .collect();
    let healthy = store_ok && degraded.is_empty();
    Ok(Json(json!({
        "status": if healthy { "healthy" } else { "degraded" },
        "ready": readiness.as_ref().map(|r| r.ready),
        "oplog": {
            "backend": state.store.backend(),
            "reachable": store_ok,
            "head": head,
            "error": store_error,
        },
        "sources": sources,
        "writers": writers,
        "replicator": replicator,
        "plugins": state.registry.plugins(),
        "tasks": tasks,
        "degraded": degraded,
    })))
}

/// CPU, memory, ingest throughput, error rate and pending oplog, each
/// flagged against seed 004's thresholds.
async fn system_stats(State(state): State<ApiState>) -> Result<Json<Value>, ApiError> {
    let head = state.store.head().await?;
    let mut applied: Vec<i64> = Vec::new();
    if let Some(health) = &state.health {
        applied.extend(health.writers.iter().map(|w| w.applied_offset()));
    }
    if let Some(dbs) = &state.dbs {
        applied.push(dbs.replicator_status().offset());
    }
    let pending = applied.iter().min().map_or(0, |slowest| head - slowest);
    let stats = state
        .system
        .sample(state.pipeline.totals(), pending, state.pending_oplog_limit);
    Ok(Json(json!(stats)))
}

async fn plugins(State(state): State<ApiState>) -> Json<Value> {
    Json(json!({"plugins": state.registry.plugins(), "files": state.registry.files()}))
}

async fn rejected(
    State(state): State<ApiState>,
    query: Result<Query<Page>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let page = page(query)?;
    Ok(Json(json!(
        state.store.rejected(page.after, page.limit).await?
    )))
}

async fn replay(
    State(state): State<ApiState>,
    query: Result<Query<Page>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let page = page(query)?;
    let (replayed, failed) = state.pipeline.replay_rejected(page.limit).await?;
    Ok(Json(json!({"replayed": replayed, "failed_again": failed})))
}

async fn stats(State(state): State<ApiState>) -> Result<Json<Value>, ApiError> {
    let head = state.store.head().await?;
    let entities = state.entities.list().await?;
    let mut per_entity = Vec::new();
    for def in &entities {
        let cache = match &state.dbs {
            Some(dbs) => {
                let (dbs, name) = (dbs.clone(), def.name.clone());
                tokio::task::spawn_blocking(move || {
                    dbs.state(&name)
                        .ok()
                        .flatten()
                        .map(|s| (s, dbs.row_count(&name).ok().flatten()))
                })
                .await
                .ok()
                .flatten()
            }
            None => None,
        };
        per_entity.push(json!({
            "entity": def.name,
            "status": def.status,
            "staged": state.store.staged_count(&def.name).await?,
            "cache": cache.map(|(s, rows)| json!({"layout_version": s.version, "applied_oplog_id": s.applied_id, "rows": rows})),
        }));
    }
    let positions = {
        let mut sources: Vec<&str> = entities.iter().map(|e| e.source.as_str()).collect();
        sources.sort_unstable();
        sources.dedup();
        let mut out = serde_json::Map::new();
        for source in sources {
            if let Some(position) = state.store.source_position(source).await? {
                out.insert(source.to_owned(), Value::String(position));
            }
        }
        out
    };
    // The SQLite replicator: its offset, failures, and the entities it is
    // retrying on their own.
    let replicator = state.dbs.as_ref().map(|dbs| {
        let status = dbs.replicator_status();
        json!({
            "offset": status.offset(),
            "failures_total": status.failures_total(),
            "recoveries_total": status.recoveries_total(),
            "failing": status.failing(),
        })
    });
    // Each source that keeps a status: its stream and the progress of its
    // loads (a MongoDB scan: scanned of estimated, rate, ETA).
    let sources: serde_json::Map<String, Value> = state
        .health
        .iter()
        .flat_map(|h| h.sources.iter())
        .map(|probe| {
            let mut body = probe.debug();
            if let Some(object) = body.as_object_mut() {
                object.insert("kind".into(), json!(probe.kind()));
            }
            (probe.name().to_owned(), body)
        })
        .collect();
    Ok(Json(json!({
        "backend": state.store.backend(),
        "oplog_head": head,
        "source_positions": positions,
        "sources": sources,
        "entities": per_entity,
        "replicator": replicator,
    })))
}

/// `?prefix=&limit=` of the in-memory key listing.
#[derive(Debug, Deserialize)]
struct KeysQuery {
    #[serde(default)]
    prefix: String,
    #[serde(default = "default_keys_limit")]
    limit: usize,
}

fn default_keys_limit() -> usize {
    1000
}

fn memory(state: &ApiState) -> Result<&Arc<MemoryTarget>, ApiError> {
    state.memory.as_ref().ok_or_else(|| ApiError {
        status: StatusCode::NOT_FOUND,
        message: "this node keeps no in-memory key cache ([redis.memory] is not configured)".into(),
    })
}

/// Keys of the in-memory key cache with a prefix, sorted.
async fn memory_keys(
    State(state): State<ApiState>,
    query: Result<Query<KeysQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let memory = memory(&state)?;
    let mut keys = memory.keys_with_prefix(&query.prefix);
    keys.sort();
    let total = keys.len();
    keys.truncate(query.limit);
    Ok(Json(json!({"total": total, "keys": keys})))
}

/// One key of the in-memory key cache: its value, parsed when it is JSON.
async fn memory_key(
    State(state): State<ApiState>,
    Path(key): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let memory = memory(&state)?;
    let value = memory.get(&key).ok_or_else(|| ApiError {
        status: StatusCode::NOT_FOUND,
        message: format!("no key {key}"),
    })?;
    let parsed = serde_json::from_str::<Value>(&value).unwrap_or(Value::String(value));
    Ok(Json(json!({"key": key, "value": parsed})))
}
