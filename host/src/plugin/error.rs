//! Errors of the plugin runtime.

use std::path::PathBuf;

/// Why a plugin could not be loaded or called.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// The plugin file could not be read.
    #[error("cannot read plugin file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The bytes are not a valid component, or it does not implement the
    /// `entity-plugin` world.
    #[error("plugin file {path} is not a valid emcachers component: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What wasmtime said.
        reason: String,
    },
    /// Creating an instance failed.
    #[error("cannot instantiate plugin {plugin}: {reason}")]
    Instantiate {
        /// `name@version`.
        plugin: String,
        /// What went wrong.
        reason: String,
    },
    /// The guest trapped (panic, deadline, memory cap) or broke the contract;
    /// its instance was discarded.
    #[error("plugin {plugin} failed in {function}: {reason}")]
    Trapped {
        /// `name@version`.
        plugin: String,
        /// The exported function that was called.
        function: &'static str,
        /// The trap or contract violation.
        reason: String,
    },
    /// The plugin rejected an entity configuration.
    #[error("plugin {plugin} rejected the configuration of entity {entity}: {reason}")]
    ConfigRejected {
        /// `name@version`.
        plugin: String,
        /// The entity.
        entity: String,
        /// The plugin's message.
        reason: String,
    },
    /// Two files declare the same plugin name.
    #[error("plugin file {path} declares plugin {name}, which {other} already provides")]
    NameConflict {
        /// The new file.
        path: PathBuf,
        /// The plugin name.
        name: String,
        /// The file that already provides it.
        other: PathBuf,
    },
    /// No loaded plugin has this name.
    #[error("no plugin named {0} is loaded")]
    NotLoaded(String),
    /// The blocking thread running a plugin call for async code failed
    /// (it panicked or the runtime is shutting down).
    #[error("plugin call worker failed: {0}")]
    Worker(String),
    /// Writing or reading the compiled-artefact cache failed.
    #[error("plugin compile cache {path}: {source}")]
    Cache {
        /// The cache file or directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// Why one item of a batch produced no result.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ItemError {
    /// The plugin returned an error for this item (bad document, type error…).
    #[error("plugin {plugin} rejected the item: {message}")]
    Rejected {
        /// `name@version`.
        plugin: String,
        /// The plugin's message.
        message: String,
    },
    /// The whole batch failed: the plugin trapped or broke the contract.
    #[error("plugin {plugin} failed on the batch: {reason}")]
    BatchFailed {
        /// `name@version`.
        plugin: String,
        /// The trap or contract violation.
        reason: String,
    },
}
