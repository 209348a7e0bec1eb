//! Hot reload: watch the plugin directory and load, replace or unload
//! plugins as their files change.
//!
//! File events are debounced (a copy in progress produces many), then each
//! touched `*.wasm` path is reloaded off the async runtime: compiling is CPU
//! work and must not stall the pipeline. A file that fails to load leaves the
//! running version in place (see [`PluginRegistry::load_file`]).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

use super::registry::{PluginRegistry, is_plugin_file};

/// How long the watcher waits for a burst of events to settle.
pub const DEBOUNCE: Duration = Duration::from_millis(200);

/// A running directory watch. Dropping it stops the watch.
pub struct PluginWatcher {
    _watcher: notify::RecommendedWatcher,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for PluginWatcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Why the watch could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot watch plugin directory {path}: {source}")]
pub struct WatchError {
    /// The directory.
    pub path: PathBuf,
    /// What notify said.
    pub source: notify::Error,
}

impl PluginWatcher {
    /// Start watching `dir` (non-recursively) on the current tokio runtime.
    pub fn start(registry: Arc<PluginRegistry>, dir: &Path) -> Result<Self, WatchError> {
        let (tx, rx) = mpsc::unbounded_channel::<PathBuf>();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| match event {
                Ok(event) => {
                    for path in event.paths {
                        if is_plugin_file(&path) {
                            let _ = tx.send(path);
                        }
                    }
                }
                Err(error) => tracing::warn!(%error, "plugin directory watch error"),
            })
            .map_err(|source| WatchError {
                path: dir.to_owned(),
                source,
            })?;
        watcher
            .watch(dir, RecursiveMode::NonRecursive)
            .map_err(|source| WatchError {
                path: dir.to_owned(),
                source,
            })?;
        let task = tokio::spawn(apply_changes(registry, rx));
        tracing::info!(dir = %dir.display(), "watching plugin directory");
        Ok(PluginWatcher {
            _watcher: watcher,
            task,
        })
    }
}

async fn apply_changes(registry: Arc<PluginRegistry>, mut rx: mpsc::UnboundedReceiver<PathBuf>) {
    while let Some(first) = rx.recv().await {
        let mut touched = BTreeSet::from([first]);
        // Collect the rest of the burst.
        loop {
            match tokio::time::timeout(DEBOUNCE, rx.recv()).await {
                Ok(Some(path)) => {
                    touched.insert(path);
                }
                Ok(None) => return,
                Err(_) => break,
            }
        }
        let registry = registry.clone();
        let job = tokio::task::spawn_blocking(move || {
            for path in touched {
                if path.exists() {
                    // Errors are logged and kept by the registry.
                    let _ = registry.load_file(&path);
                } else {
                    registry.unload_file(&path);
                }
            }
        });
        if let Err(error) = job.await {
            tracing::error!(%error, "plugin reload task failed");
        }
    }
}
