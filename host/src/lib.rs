//! emcachers: a change-data replication host whose entity transforms are
//! WebAssembly components. See `ARCHITECTURE.md` for the map.
//!
//! - [`api`] — the REST API (axum).
//! - [`breaker`] — a circuit breaker for calls to external services.
//! - [`plugin`] — the WebAssembly plugin runtime and registry.
//! - [`model`] — the host model of changes and rows (no wasm types).
//! - [`sources`] — where changes come from.
//! - [`ingest`] — the pipeline from source batches through plugins into the oplog.
//! - [`oplog`] — the oplog store (embedded SQLite or PostgreSQL).
//! - [`cache`] — cache writers (per-entity SQLite).
//! - [`entities`] — the entity manager.
//! - [`datadir`] — the data directory lock (one process per directory).
//! - [`jobs`] — the job server (supervised tasks, interval jobs).
//! - [`node`] — the wiring of one process.
//! - [`config`] — the configuration file and environment.
//! - [`telemetry`] — logging.

pub mod api;
pub mod breaker;
pub mod cache;
mod calendar;
pub mod config;
pub mod datadir;
pub mod entities;
pub mod health;
pub mod ingest;
pub mod jobs;
pub mod model;
pub mod node;
pub mod oplog;
pub mod plugin;
pub mod schematic;
pub mod sources;
pub mod telemetry;
