//! The REST API (axum): entities, plugins, rejected records, the oplog and
//! replication status, and health.
//!
//! | method | path | what |
//! |---|---|---|
//! | GET | `/health` | 200 while the process lives |
//! | GET | `/health/detailed` | every component: oplog store, sources (position age), writers (lag), replicator, plugins, tasks |
//! | GET | `/api/system/stats` | CPU, memory, throughput, error rate, pending oplog, each flagged against seed 004's thresholds |
//! | GET | `/api/entities` | every entity |
//! | POST | `/api/entities` | create an entity (`EntitySpec`, or seed 004's `{"name", "shape": {"entity_name", "source_name", "columns"}}`: a `shape` entity of the source `mongo`) |
//! | GET / PUT / DELETE | `/api/entities/{name}` | one entity |
//! | POST | `/api/entities/{name}/refresh` | re-configure its plugin and re-publish its layout |
//! | POST | `/api/entities/refresh` | hard refresh of every entity |
//! | GET | `/api/oplogs/{entity}?after=&limit=` | log entries of an entity (through the entity index) |
//! | POST | `/api/oplogs/batch` | `{"entities": [..], "after", "limit"}`: log entries of several entities in id order, `next_after` to continue |
//! | GET | `/api/plugins` | loaded plugins and plugin-directory files (with last errors) |
//! | GET | `/api/rejected?after=&limit=` | rejected records |
//! | POST | `/api/rejected/replay?limit=` | replay rejected records |
//! | GET | `/api/replication/stats` | oplog head, source positions, cache databases, replicator failures |
//! | GET | `/api/cache/keys?prefix=&limit=` | keys of the in-memory key cache (`[redis.memory]`) |
//! | GET | `/api/cache/keys/{key}` | one key's value |
//!
//! Errors are JSON `{"error": "..."}` with a status that says whose fault it
//! is: 400/422 for bad input (400 names the rule an entity name breaks, or
//! the statuses a user may ask for: `ready`; `pending`, `scanning` and
//! `deleting` are the host's), 404, 409, 503 when the store is unreachable.

mod error;
mod routes;
pub mod system;

pub use error::ApiError;
pub use routes::{ApiState, router};

use std::net::SocketAddr;

use tokio_util::sync::CancellationToken;

/// Serve `router` on `listener` until `cancel` fires.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    let addr: Option<SocketAddr> = listener.local_addr().ok();
    tracing::info!(addr = ?addr, "REST API listening");
    axum::serve(listener, router)
        .with_graceful_shutdown(async move { cancel.cancelled().await })
        .await
}
