//! The async face of the plugin runtime. Plugin calls are synchronous
//! WebAssembly calls that may run up to their deadline; async code must not
//! make them on a runtime thread. These methods do the blocking hop
//! ([`tokio::task::spawn_blocking`]) inside, so callers just `.await`:
//!
//! - [`LoadedPlugin::shape_async`], [`LoadedPlugin::keys_async`],
//!   [`LoadedPlugin::layout_async`], [`LoadedPlugin::configure_async`];
//! - [`PluginRegistry::assign_async`].
//!
//! The synchronous methods stay for callers that already run on a blocking
//! thread (the cache writers).

use std::sync::Arc;

use super::bindings::{CacheWrite, TableLayout};
use super::error::{ItemError, PluginError};
use super::loaded::LoadedPlugin;
use super::registry::PluginRegistry;
use crate::model::{Change, Row, Shaped};

/// Run `work` on a blocking thread; a panic or a shut-down runtime is
/// [`PluginError::Worker`].
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, PluginError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| PluginError::Worker(e.to_string()))
}

/// The changes of a shape call, given back, and one result per change.
pub type ShapedBatch = (Vec<Change>, Vec<Result<Shaped, ItemError>>);

impl LoadedPlugin {
    /// [`LoadedPlugin::shape_owned`] on a blocking thread: the changes come
    /// back with one result per change, in order.
    pub async fn shape_async(
        self: &Arc<Self>,
        entity: &str,
        changes: Vec<Change>,
    ) -> Result<ShapedBatch, PluginError> {
        let (plugin, entity) = (self.clone(), entity.to_owned());
        blocking(move || plugin.shape_owned(&entity, changes)).await
    }

    /// [`LoadedPlugin::keys_owned`] on a blocking thread: one result per row.
    pub async fn keys_async(
        self: &Arc<Self>,
        entity: &str,
        rows: Vec<Row>,
    ) -> Result<Vec<Result<Vec<CacheWrite>, ItemError>>, PluginError> {
        let (plugin, entity) = (self.clone(), entity.to_owned());
        blocking(move || plugin.keys_owned(&entity, rows).1).await
    }

    /// The cache-layout version and the table layout of `entity`
    /// ([`LoadedPlugin::entity_version`], then [`LoadedPlugin::table`]) on a
    /// blocking thread.
    pub async fn layout_async(
        self: &Arc<Self>,
        entity: &str,
    ) -> Result<(String, Option<TableLayout>), PluginError> {
        let (plugin, entity) = (self.clone(), entity.to_owned());
        blocking(move || Ok((plugin.entity_version(&entity)?, plugin.table(&entity)?))).await?
    }

    /// [`LoadedPlugin::configure`] on a blocking thread.
    pub async fn configure_async(
        self: &Arc<Self>,
        entity: &str,
        config: &str,
    ) -> Result<(), PluginError> {
        let (plugin, entity, config) = (self.clone(), entity.to_owned(), config.to_owned());
        blocking(move || plugin.configure(&entity, &config)).await?
    }
}

impl PluginRegistry {
    /// [`PluginRegistry::assign`] on a blocking thread.
    pub async fn assign_async(
        self: &Arc<Self>,
        entity: &str,
        plugin: &str,
        config: &str,
    ) -> Result<(), PluginError> {
        let registry = self.clone();
        let (entity, plugin, config) = (entity.to_owned(), plugin.to_owned(), config.to_owned());
        blocking(move || registry.assign(&entity, &plugin, &config)).await?
    }
}
