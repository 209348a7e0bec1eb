//! The plugin runtime: WebAssembly components that shape changes into rows,
//! derive cache keys and name cache-layout versions.
//!
//! - [`PluginEngine`]: the one wasmtime engine, the sandbox, the compile cache.
//! - [`LoadedPlugin`]: one validated plugin version with its instance pool
//!   and typed batch calls.
//! - [`PluginRegistry`]: which versions are serving, from which files, for
//!   which entities; atomic swaps on reload.
//! - [`PluginWatcher`]: hot reload of the plugin directory.
//! - `handle`: the async calls (`shape_async`, `keys_async`, `layout_async`,
//!   `configure_async`, `assign_async`) that do the blocking hop inside.
//! - [`builtin`]: the plugins embedded in the binary (`shape`, `schematic`).
//!
//! Calls take and return the host model ([`crate::model`]); the generated
//! WIT records never leave this module (`convert` maps them).

mod bindings;
pub mod builtin;
mod convert;
mod engine;
mod error;
mod handle;
mod loaded;
mod registry;
mod watcher;

/// The host model of changes and rows ([`crate::model`]), re-exported under
/// the names the plugin API has always used; calls convert them at the
/// boundary (`plugin::convert`).
pub use crate::model::{Change, ChangeOp, Row, RowOp, Shaped};
pub use bindings::{Binding, CacheWrite, Column, ColumnType, Index, PluginInfo, TableLayout};
pub use builtin::{BUILTINS, BuiltinPlugin};
pub use engine::{PluginEngine, SandboxConfig, WasiGrants, content_hash};
pub use error::{ItemError, PluginError};
pub use handle::ShapedBatch;
pub use loaded::{EntityConfigs, LoadedPlugin, PluginOrigin};
pub use registry::{FileStatus, LoadOutcome, PluginRegistry, PluginStatus, is_plugin_file};
pub use watcher::{DEBOUNCE, PluginWatcher, WatchError};
