//! The Redis cache writer: tails the oplog and applies each entity's rows as
//! the key/value writes its plugin derives (`keys`), to a single Redis node,
//! a Redis Cluster, or a bounded in-process map.
//!
//! - [`config`]: [`RedisWriterConfig`] and its parts.
//! - `target`: where commands go (single node, cluster, memory); timeouts,
//!   pipelines, slot splitting, `SCAN` per master.
//! - [`memory`]: [`MemoryTarget`], the in-process map.
//! - `remembered`: the keys each row produced, and the per-batch plan.
//! - `lock`: the writer lock (`SET NX PX`, renewal, release).
//! - [`cleanup`]: the stale-version cleanup.
//! - [`status`]: [`RedisWriterStatus`] and its snapshot.
//! - [`writer`]: [`RedisCache`], the backend the [`Tailer`](crate::cache::Tailer) drives ([`RedisWriter`]).
//!
//! # Keys in Redis
//!
//! | key | what |
//! |---|---|
//! | whatever the plugin's `keys` returns | the entity data (`PX ttl` when a TTL is set: `ttl_ms`, else `ttl_secs`) |
//! | `{state_prefix}offset` | the last applied oplog id |
//! | `{state_prefix}version:{entity}` | the cache version the entity was built with |
//! | `{state_prefix}keys:{entity}` | hash: row id → `{"v": version, "k": [keys]}` |
//! | `lock.key` | the writer lock's owner token |
//! | `replay_cursor.key` | the mirrored source position |

pub mod cleanup;
pub mod config;
mod error;
mod lock;
pub mod memory;
mod remembered;
pub mod status;
mod target;
pub mod writer;

pub use crate::cache::tailer::{StepReport, Waiting};
pub use cleanup::CleanupReport;
pub use config::{ConfigProblem, LockConfig, MemoryConfig, RedisWriterConfig, ReplayCursorConfig};
pub use error::RedisWriterError;
pub use memory::MemoryTarget;
pub use status::{LockState, RedisWriterSnapshot, RedisWriterStatus};
pub use writer::{RedisCache, RedisWriter};
