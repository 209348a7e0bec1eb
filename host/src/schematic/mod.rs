//! Everything Schematic-specific: emcachers as a drop-in replacement for
//! Schematic's Go replicator (spec `schematic-datastream.md`).
//!
//! - [`env`]: the environment profile: `SCHEMATIC_API_KEY` and the Go
//!   replicator's variables as a configuration (sources, entities, Redis
//!   writer, health).
//! - [`datastream`]: the datastream source (WebSocket, REST initial load,
//!   replay cursor) and its readiness probe.
//! - [`readiness`]: Schematic's `/ready` body over the generic readiness.
//!
//! The Redis writer's lock and replay-cursor mirror are generic mechanisms
//! of the Redis writer (fencing a single writer; mirroring a source's
//! position once the cache applied it); what makes them Schematic's (their
//! keys, which source, that they are on) is set here and by the profile.

/// The key prefixes of Schematic's Redis layout (spec §5): the entities'
/// keys, which the stale-version cleanup scans.
pub const KEY_PREFIXES: [&str; 3] = ["schematic:flags:", "schematic:company:", "schematic:user:"];

/// The Go replicator's writer lock key (`WRITER_LOCK_KEY`'s default).
pub const WRITER_LOCK_KEY: &str = "schematic:datastream:writer_lock";

/// The Go replicator's replay cursor key (`REPLAY_CURSOR_KEY`'s default).
pub const REPLAY_CURSOR_KEY: &str = "schematic:datastream:replay_cursor";

pub mod datastream;
pub mod env;
pub mod readiness;

pub use readiness::SchematicBody;
