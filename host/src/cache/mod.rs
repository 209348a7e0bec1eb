//! Cache writers: apply the oplog to caches.
//!
//! - [`layout`]: an entity's cache layout (plugin version and table), as
//!   published in the oplog store.
//! - [`entity_db`]: one entity's SQLite database (`dbs/{entity}/db.sqlite`).
//! - [`manager`]: opens, closes, rebuilds and removes entity databases.
//! - [`replicator`]: tails the oplog and applies it.
//! - [`redis`]: the Redis cache writer (single node, cluster or in-process map).

pub mod entity_db;
pub mod layout;
pub mod manager;
pub mod redis;
pub mod replicator;

pub use entity_db::{Applied, CacheDbError, EntityDb};
pub use layout::{ColumnKind, ColumnSpec, EntityLayout, IndexSpec, TableSpec};
pub use manager::{CacheDbManager, DbState};
pub use redis::{
    RedisWriter, RedisWriterConfig, RedisWriterError, RedisWriterSnapshot, RedisWriterStatus,
};
pub use replicator::{ReplicatorConfig, ReplicatorError, SqliteReplicator, StepReport};
