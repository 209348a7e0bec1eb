//! The router: REST pages, the WebSocket and the `/_dev/` control API.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::envelope::Envelope;
use crate::flood::{self, FloodRequest};
use crate::state::Shared;
use crate::ws;

/// The whole HTTP surface.
pub(crate) fn router(shared: Arc<Shared>) -> Router {
    let limit = shared.settings.max_message_bytes;
    Router::new()
        .route("/companies", get(companies))
        .route("/companies/count", get(companies_count))
        .route("/users", get(users))
        .route("/users/count", get(users_count))
        .route("/datastream", get(ws::datastream))
        .route("/_dev/push", post(push))
        .route(
            "/_dev/flood",
            post(flood_start).get(flood_status).delete(flood_stop),
        )
        .route("/_dev/reload", post(reload))
        .route("/_dev/drop", post(drop_connections))
        .route("/_dev/reject-key", post(reject_key))
        .route("/_dev/allow-key", post(allow_key))
        .route("/_dev/fail-pages", post(fail_pages))
        .route("/_dev/rest", post(set_rest))
        .route("/_dev/stats", get(stats))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(limit))
        .with_state(shared)
}

/// An error answer: the status and `{"error": message}`.
struct HttpError(StatusCode, String);

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({"error": self.1}))).into_response()
    }
}

fn error(status: StatusCode, message: impl Into<String>) -> HttpError {
    HttpError(status, message.into())
}

/// A JSON body, or a 400 naming the problem.
fn body<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, HttpError> {
    serde_json::from_slice(bytes)
        .map_err(|e| HttpError(StatusCode::BAD_REQUEST, format!("invalid body: {e}")))
}

// ---------------------------------------------------------------- REST

#[derive(Clone, Copy)]
enum Kind {
    Companies,
    Users,
}

/// Record the request, then check `X-Schematic-Api-Key`.
fn authorize(shared: &Shared, headers: &HeaderMap, path: &str) -> Result<(), HttpError> {
    let mut state = shared.lock();
    state.record_rest(path);
    let key = headers
        .get("x-schematic-api-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if key.is_empty() {
        return Err(error(
            StatusCode::UNAUTHORIZED,
            "missing X-Schematic-Api-Key",
        ));
    }
    if !state.key_accepted(key) {
        return Err(error(StatusCode::UNAUTHORIZED, "invalid api key"));
    }
    Ok(())
}

fn count(shared: &Shared, headers: &HeaderMap, kind: Kind, path: &str) -> Response {
    if let Err(response) = authorize(shared, headers, path) {
        return response.into_response();
    }
    let state = shared.lock();
    let n = match kind {
        Kind::Companies => state.rest_companies.len(),
        Kind::Users => state.rest_users.len(),
    };
    Json(json!({"data": {"count": n}})).into_response()
}

fn query_number(query: &HashMap<String, String>, name: &str) -> Result<usize, HttpError> {
    let Some(text) = query.get(name) else {
        return Err(error(
            StatusCode::BAD_REQUEST,
            format!("missing query parameter {name}"),
        ));
    };
    text.parse().map_err(|_| {
        error(
            StatusCode::BAD_REQUEST,
            format!("{name} must be a non-negative integer, not {text:?}"),
        )
    })
}

fn page(
    shared: &Shared,
    headers: &HeaderMap,
    query: &HashMap<String, String>,
    kind: Kind,
    path: &str,
) -> Response {
    if let Err(response) = authorize(shared, headers, path) {
        return response.into_response();
    }
    let (limit, offset) = match (query_number(query, "limit"), query_number(query, "offset")) {
        (Ok(0), _) => {
            return error(StatusCode::BAD_REQUEST, "limit must be at least 1").into_response();
        }
        (Ok(limit), Ok(offset)) => (limit, offset),
        (Err(response), _) | (_, Err(response)) => return response.into_response(),
    };
    let data: Vec<Value> = {
        let mut state = shared.lock();
        if state.fail_pages > 0 {
            state.fail_pages -= 1;
            let status = StatusCode::from_u16(state.fail_pages_status)
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return error(status, "failing this page on purpose (/_dev/fail-pages)")
                .into_response();
        }
        let list = match kind {
            Kind::Companies => &state.rest_companies,
            Kind::Users => &state.rest_users,
        };
        list.iter().skip(offset).take(limit).cloned().collect()
    };
    Json(json!({"data": data})).into_response()
}

async fn companies_count(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    count(&shared, &headers, Kind::Companies, "/companies/count")
}

async fn users_count(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    count(&shared, &headers, Kind::Users, "/users/count")
}

async fn companies(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    page(&shared, &headers, &query, Kind::Companies, "/companies")
}

async fn users(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    page(&shared, &headers, &query, Kind::Users, "/users")
}

// ---------------------------------------------------------------- control

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    Many(Vec<Envelope>),
    One(Envelope),
}

async fn push(State(shared): State<Arc<Shared>>, bytes: Bytes) -> Response {
    let envelopes = match body::<OneOrMany>(&bytes) {
        Ok(OneOrMany::Many(list)) => list,
        Ok(OneOrMany::One(one)) => vec![one],
        Err(response) => return response.into_response(),
    };
    let ids = shared.push(&envelopes);
    let ids: Vec<String> = ids.iter().map(ToString::to_string).collect();
    Json(json!({"stream_ids": ids})).into_response()
}

async fn flood_start(State(shared): State<Arc<Shared>>, bytes: Bytes) -> Response {
    let request = match body::<FloodRequest>(&bytes) {
        Ok(request) => request,
        Err(response) => return response.into_response(),
    };
    match flood::start(&shared, request) {
        Ok(()) => Json(json!({"started": true})).into_response(),
        Err(e @ flood::FloodError::Running) => {
            error(StatusCode::CONFLICT, e.to_string()).into_response()
        }
        Err(e) => error(StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    }
}

async fn flood_status(State(shared): State<Arc<Shared>>) -> Response {
    Json(shared.lock().flood.status).into_response()
}

async fn flood_stop(State(shared): State<Arc<Shared>>) -> Response {
    flood::stop(&shared);
    Json(shared.lock().flood.status).into_response()
}

async fn reload(State(shared): State<Arc<Shared>>) -> Response {
    let n = shared.reload();
    Json(json!({"connections": n})).into_response()
}

async fn drop_connections(State(shared): State<Arc<Shared>>) -> Response {
    let n = shared.drop_connections();
    Json(json!({"dropped": n})).into_response()
}

#[derive(Deserialize)]
struct KeyBody {
    key: String,
}

async fn reject_key(State(shared): State<Arc<Shared>>, bytes: Bytes) -> Response {
    match body::<KeyBody>(&bytes) {
        Ok(KeyBody { key }) => {
            let closed = shared.reject_key(&key);
            Json(json!({"rejected": key, "closed": closed})).into_response()
        }
        Err(response) => response.into_response(),
    }
}

async fn allow_key(State(shared): State<Arc<Shared>>, bytes: Bytes) -> Response {
    match body::<KeyBody>(&bytes) {
        Ok(KeyBody { key }) => {
            shared.allow_key(&key);
            Json(json!({"allowed": key})).into_response()
        }
        Err(response) => response.into_response(),
    }
}

#[derive(Deserialize)]
struct FailPages {
    count: u64,
    #[serde(default = "default_fail_status")]
    status: u16,
}

fn default_fail_status() -> u16 {
    500
}

async fn fail_pages(State(shared): State<Arc<Shared>>, bytes: Bytes) -> Response {
    match body::<FailPages>(&bytes) {
        Ok(FailPages { count, status }) if (100..=599).contains(&status) => {
            shared.fail_pages(count, status);
            Json(json!({"count": count, "status": status})).into_response()
        }
        Ok(FailPages { status, .. }) => error(
            StatusCode::BAD_REQUEST,
            format!("status must be 100..=599, not {status}"),
        )
        .into_response(),
        Err(response) => response.into_response(),
    }
}

#[derive(Deserialize)]
struct RestLists {
    #[serde(default)]
    companies: Option<Vec<Value>>,
    #[serde(default)]
    users: Option<Vec<Value>>,
}

async fn set_rest(State(shared): State<Arc<Shared>>, bytes: Bytes) -> Response {
    match body::<RestLists>(&bytes) {
        Ok(RestLists { companies, users }) => {
            let (companies, users) = shared.set_rest(companies, users);
            Json(json!({"companies": companies, "users": users})).into_response()
        }
        Err(response) => response.into_response(),
    }
}

async fn stats(State(shared): State<Arc<Shared>>) -> Response {
    Json(shared.lock().stats()).into_response()
}

/// Unknown paths: 404 with a JSON body.
async fn not_found(uri: Uri) -> Response {
    error(
        StatusCode::NOT_FOUND,
        format!("no route for {}", uri.path()),
    )
    .into_response()
}
