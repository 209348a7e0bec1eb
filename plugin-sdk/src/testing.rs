//! Run a plugin natively, without WebAssembly, under `cargo test`.
//!
//! [`Harness`] drives the plugin through the same [`Runner`] the exported
//! component uses: changes are serialised to JSON text and parsed back, and
//! item errors come back as values, exactly as the host would see them.

use serde_json::Value;

use crate::Plugin;
use crate::model::{CacheWrite, Change, PluginInfo, Row, Shaped, TableLayout};
use crate::runner::{self, Runner};

/// A plugin under test.
pub struct Harness<P> {
    runner: Runner<P>,
}

impl<P: Plugin> Default for Harness<P> {
    fn default() -> Self {
        Self::new(P::default())
    }
}

impl<P: Plugin> Harness<P> {
    /// Test `plugin`.
    pub fn new(plugin: P) -> Self {
        Harness {
            runner: Runner::new(plugin),
        }
    }

    /// The plugin's description.
    pub fn describe(&self) -> PluginInfo {
        runner::info_from_wit(self.runner.describe())
    }

    /// Configure `entity` with `config`.
    pub fn configure(&mut self, entity: &str, config: Value) -> Result<(), String> {
        self.runner.configure(entity, &config.to_string())
    }

    /// Shape a batch; one result per change.
    pub fn shape(&self, entity: &str, changes: &[Change]) -> Vec<Result<Shaped, String>> {
        let batch = changes.iter().map(runner::change_to_wit).collect();
        self.runner
            .shape(entity, batch)
            .into_iter()
            .map(|item| item.and_then(runner::shaped_from_wit))
            .collect()
    }

    /// Shape one change.
    pub fn shape_one(&self, entity: &str, change: Change) -> Result<Shaped, String> {
        self.shape(entity, std::slice::from_ref(&change)).remove(0)
    }

    /// Cache writes of a batch of rows; one result per row.
    pub fn keys(&self, entity: &str, rows: &[Row]) -> Vec<Result<Vec<CacheWrite>, String>> {
        let batch = rows.iter().cloned().map(runner::row_to_wit).collect();
        self.runner
            .keys(entity, batch)
            .into_iter()
            .map(|item| item.map(|ws| ws.into_iter().map(runner::write_from_wit).collect()))
            .collect()
    }

    /// The version of `entity`.
    pub fn version(&self, entity: &str) -> String {
        self.runner.version(entity)
    }

    /// The table layout of `entity`.
    pub fn table(&self, entity: &str) -> Option<TableLayout> {
        self.runner.table(entity).map(runner::layout_from_wit)
    }
}
