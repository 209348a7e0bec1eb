//! Cache writers: apply the oplog to caches.
//!
//! - [`layout`]: an entity's cache layout (plugin version and table), as
//!   published in the oplog store.
//! - [`entity_db`]: one entity's SQLite database (`dbs/{entity}/db.sqlite`).
//! - [`manager`]: opens, closes, rebuilds and removes entity databases.
//! - [`dead_letter`]: rows a writer cannot apply: bisect, keep, replay.
//! - [`offset`]: writer offsets and the oplog identity they count in.
//! - [`replicator`]: tails the oplog and applies it.
//! - [`isolation`]: per-entity failure bookkeeping, so one failing entity
//!   does not stop a tailer for all.
//! - [`redis`]: the Redis cache writer (single node, cluster or in-process map).

pub mod dead_letter;
pub mod entity_db;
pub mod isolation;
pub mod layout;
pub mod manager;
pub mod offset;
pub mod redis;
pub mod replicator;

pub use entity_db::{Applied, CacheDbError, EntityDb};
pub use isolation::{EntityFailure, FailedEntities};
pub use layout::{ColumnKind, ColumnSpec, EntityLayout, IndexSpec, TableSpec};
pub use manager::{CacheDbManager, DbState};
pub use offset::{BootstrapReason, Offset, Resume};
pub use redis::{
    RedisWriter, RedisWriterConfig, RedisWriterError, RedisWriterSnapshot, RedisWriterStatus,
};
pub use replicator::{
    ReplicatorConfig, ReplicatorError, ReplicatorStatus, SqliteReplicator, StepReport,
};
