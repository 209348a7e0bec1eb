//! Cache writers: apply the oplog to caches.
//!
//! - [`layout`]: an entity's cache layout (plugin version and table), as
//!   published in the oplog store.
//! - [`entity_db`]: one entity's SQLite database (`dbs/{entity}/db.sqlite`).
//! - [`manager`]: opens, closes, rebuilds and removes entity databases.
//! - [`dead_letter`]: rows a writer cannot apply: bisect, keep, replay.
//! - [`offset`]: writer offsets and the oplog identity they count in.
//! - [`tailer`]: the one tail of the oplog every cache writer runs
//!   ([`CacheWriter`] is what a backend implements; [`Tailer`] reads the
//!   log, wakes on commits and layout pushes, backs off, pages rebuilds).
//! - [`replicator`]: the per-entity SQLite databases as a backend.
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
pub mod tailer;

pub use entity_db::{Applied, CacheDbError, EntityDb};
pub use isolation::{EntityFailure, FailedEntities};
pub use layout::{
    ColumnKind, ColumnSpec, EntityLayout, IndexSpec, LayoutBoard, LayoutMap, Layouts, TableSpec,
};
pub use manager::{CacheDbManager, DbState};
pub use offset::{BootstrapReason, Offset, Resume};
pub use redis::{
    RedisWriter, RedisWriterConfig, RedisWriterError, RedisWriterSnapshot, RedisWriterStatus,
};
pub use replicator::{
    ReplicatorConfig, ReplicatorError, ReplicatorStatus, SqliteCaches, SqliteReplicator,
};
pub use tailer::{
    CacheWriter, LatestPages, StepContext, StepReport, Tailer, TailerConfig, Waiting, WriterError,
};
