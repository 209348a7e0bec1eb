//! emcachers: a change-data replication host whose entity transforms are
//! WebAssembly components. See `ARCHITECTURE.md` for the map.
//!
//! - [`plugin`]: the WebAssembly plugin runtime and registry.
//! - [`sources`]: where changes come from.
//! - [`config`]: the configuration file and environment.
//! - [`telemetry`]: logging.

pub mod config;
pub mod plugin;
pub mod sources;
pub mod telemetry;
