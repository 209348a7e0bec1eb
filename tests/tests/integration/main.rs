#![allow(clippy::unwrap_used, clippy::expect_used)]
//! End-to-end tests of emcachers with real compiled plugins. One test binary
//! (linking wasmtime once), one module per capability.

mod api;
mod backfill;
mod cli;
mod core_path;
mod drop_in;
mod end_to_end;
mod hot_reload;
mod isolation;
mod mongo;
mod oplog_store;
mod pipeline;
mod process;
mod python_sdk;
mod redis_writer;
mod replicator;
mod schematic;
mod services;
mod shape_plugin;

use std::sync::Arc;
use std::time::Duration;

use emcachers::plugin::{Change, ChangeOp, PluginEngine, PluginRegistry, SandboxConfig};

/// A registry on a fresh engine with a short deadline and a small memory cap.
pub fn registry(deadline: Duration, memory_mib: usize) -> Arc<PluginRegistry> {
    let config = SandboxConfig {
        deadline,
        memory_limit: memory_mib << 20,
        ..SandboxConfig::default()
    };
    Arc::new(PluginRegistry::new(
        PluginEngine::new(config).expect("engine"),
    ))
}

/// An upsert change of `document`.
pub fn upsert(collection: &str, id: &str, document: serde_json::Value) -> Change {
    Change {
        source: "test".into(),
        collection: collection.into(),
        op: ChangeOp::Upsert,
        id: id.into(),
        document: Some(document.to_string()),
        current: None,
    }
}
