//! The entity manager: entity definitions (CRUD, persisted in the oplog
//! store), their plugin configuration, the layouts their caches use, and the
//! routing of source collections to entities.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};

use crate::cache::{CacheDbError, CacheDbManager, EntityLayout};
use crate::oplog::{EntityDef, EntityStatus, OplogStore, StoreError, now_millis};
use crate::plugin::{PluginError, PluginRegistry};

/// Why an entity operation failed.
#[derive(Debug, thiserror::Error)]
pub enum EntityError {
    /// The definition is not acceptable.
    #[error("invalid entity: {0}")]
    Invalid(String),
    /// No entity has this name.
    #[error("entity {0} does not exist")]
    NotFound(String),
    /// An entity with this name exists.
    #[error("entity {0} already exists")]
    Exists(String),
    /// The plugin rejected the configuration (or failed).
    #[error(transparent)]
    Plugin(#[from] PluginError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The entity's cache could not be removed.
    #[error(transparent)]
    Cache(#[from] CacheDbError),
    /// A blocking task failed.
    #[error("entity manager worker failed: {0}")]
    Worker(String),
}

/// A new entity, or the full new state of an existing one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntitySpec {
    /// Unique name: letters, digits, `_` and `-`.
    pub name: String,
    /// The source its changes come from.
    pub source: String,
    /// The collection within the source: one name, `*`, or a comma-separated list.
    pub collection: String,
    /// The plugin that shapes it.
    pub plugin: String,
    /// The plugin's configuration for it.
    #[serde(default = "empty_object")]
    pub config: serde_json::Value,
}

fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(Default::default())
}

/// What a refresh did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RefreshReport {
    /// Entities known after the refresh.
    pub entities: usize,
    /// Plugin configurations (re)applied.
    pub configured: usize,
    /// Layouts whose published version changed.
    pub layouts_changed: usize,
    /// Entities removed because another node deleted them.
    pub removed: usize,
}

/// Validate an entity name: it becomes a directory and a table name.
pub fn validate_name(name: &str) -> Result<(), EntityError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        && !name.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(EntityError::Invalid(format!(
            "name {name:?} must be 1-128 characters of letters, digits, '_' and '-'"
        )))
    }
}

/// Entity definitions and their wiring to plugins and caches.
pub struct EntityManager {
    store: Arc<dyn OplogStore>,
    registry: Arc<PluginRegistry>,
    dbs: Option<CacheDbManager>,
    known: RwLock<HashMap<String, EntityDef>>,
}

impl EntityManager {
    /// A manager over `store`; `dbs` is the local cache (its directories are
    /// removed with their entities).
    pub fn new(
        store: Arc<dyn OplogStore>,
        registry: Arc<PluginRegistry>,
        dbs: Option<CacheDbManager>,
    ) -> Self {
        EntityManager {
            store,
            registry,
            dbs,
            known: RwLock::new(HashMap::new()),
        }
    }

    /// The plugin registry.
    pub fn registry(&self) -> &Arc<PluginRegistry> {
        &self.registry
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn OplogStore> {
        &self.store
    }

    fn known(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, EntityDef>> {
        self.known.read().unwrap_or_else(|p| p.into_inner())
    }

    fn remember(&self, def: EntityDef) {
        self.known
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(def.name.clone(), def);
    }

    fn forget(&self, name: &str) {
        self.known
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
    }

    /// Entities (from the last refresh or change) fed by `source`/`collection`.
    pub fn routes(&self, source: &str, collection: &str) -> Vec<EntityDef> {
        let mut routed: Vec<EntityDef> = self
            .known()
            .values()
            .filter(|e| e.status != EntityStatus::Deleting)
            .filter(|e| {
                (e.source == source || e.source == "*")
                    && collection_matches(&e.collection, collection)
            })
            .cloned()
            .collect();
        routed.sort_by(|a, b| a.name.cmp(&b.name));
        routed
    }

    /// One entity, from the store.
    pub async fn get(&self, name: &str) -> Result<EntityDef, EntityError> {
        self.store
            .entity(name)
            .await?
            .ok_or_else(|| EntityError::NotFound(name.to_owned()))
    }

    /// Every entity, from the store.
    pub async fn list(&self) -> Result<Vec<EntityDef>, EntityError> {
        Ok(self.store.entities().await?)
    }

    /// Create an entity. Its plugin checks the configuration first when it is
    /// loaded; an entity whose plugin is not loaded yet is created and
    /// configured when the plugin arrives.
    pub async fn create(
        &self,
        spec: EntitySpec,
        status: EntityStatus,
    ) -> Result<EntityDef, EntityError> {
        validate_name(&spec.name)?;
        if self.store.entity(&spec.name).await?.is_some() {
            return Err(EntityError::Exists(spec.name));
        }
        self.put(spec, status, None).await
    }

    /// Create or replace an entity (configuration files use this: applying
    /// the same file twice changes nothing). An existing entity keeps its
    /// status and creation time.
    pub async fn apply(
        &self,
        spec: EntitySpec,
        status: EntityStatus,
    ) -> Result<EntityDef, EntityError> {
        validate_name(&spec.name)?;
        let existing = self.store.entity(&spec.name).await?;
        self.put(spec, status, existing).await
    }

    /// Replace an existing entity's definition.
    pub async fn update(&self, spec: EntitySpec) -> Result<EntityDef, EntityError> {
        validate_name(&spec.name)?;
        let existing = self.get(&spec.name).await?;
        let status = existing.status;
        self.put(spec, status, Some(existing)).await
    }

    async fn put(
        &self,
        spec: EntitySpec,
        status: EntityStatus,
        existing: Option<EntityDef>,
    ) -> Result<EntityDef, EntityError> {
        if spec.source.is_empty() || spec.collection.is_empty() || spec.plugin.is_empty() {
            return Err(EntityError::Invalid(
                "source, collection and plugin must not be empty".into(),
            ));
        }
        self.configure(&spec.name, &spec.plugin, &spec.config)
            .await?;
        let now = now_millis();
        let def = EntityDef {
            name: spec.name,
            source: spec.source,
            collection: spec.collection,
            plugin: spec.plugin,
            config: spec.config,
            status: existing.as_ref().map(|e| e.status).unwrap_or(status),
            created_at: existing.as_ref().map(|e| e.created_at).unwrap_or(now),
            updated_at: now,
        };
        self.store.put_entity(&def).await?;
        self.publish_layout(&def.name).await?;
        self.remember(def.clone());
        tracing::info!(entity = %def.name, plugin = %def.plugin, source = %def.source, collection = %def.collection, status = def.status.as_str(), "entity saved");
        Ok(def)
    }

    async fn configure(
        &self,
        entity: &str,
        plugin: &str,
        config: &serde_json::Value,
    ) -> Result<(), EntityError> {
        let registry = self.registry.clone();
        let (entity, plugin, config) = (entity.to_owned(), plugin.to_owned(), config.to_string());
        tokio::task::spawn_blocking(move || registry.assign(&entity, &plugin, &config))
            .await
            .map_err(|e| EntityError::Worker(e.to_string()))??;
        Ok(())
    }

    /// Publish the entity's cache layout (plugin version and table) when its
    /// plugin is loaded; returns whether the published layout changed.
    pub async fn publish_layout(&self, entity: &str) -> Result<bool, EntityError> {
        let Some(plugin) = self.registry.for_entity(entity) else {
            return Ok(false);
        };
        let name = entity.to_owned();
        let layout = tokio::task::spawn_blocking(move || -> Result<EntityLayout, PluginError> {
            Ok(EntityLayout::from_plugin(
                plugin.entity_version(&name)?,
                plugin.table(&name)?,
            ))
        })
        .await
        .map_err(|e| EntityError::Worker(e.to_string()))??;
        let changed = layout.publish(self.store.as_ref(), entity).await?;
        if changed {
            tracing::info!(entity, version = %layout.version, "entity cache layout published");
        }
        Ok(changed)
    }

    /// Set an entity's status.
    pub async fn set_status(&self, name: &str, status: EntityStatus) -> Result<(), EntityError> {
        if !self.store.set_entity_status(name, status).await? {
            return Err(EntityError::NotFound(name.to_owned()));
        }
        if let Some(def) = self.store.entity(name).await? {
            self.remember(def);
        }
        Ok(())
    }

    /// Delete an entity: mark it deleting (sources stop routing to it),
    /// remove its cache directory, then its data and definition.
    pub async fn delete(&self, name: &str) -> Result<(), EntityError> {
        if !self
            .store
            .set_entity_status(name, EntityStatus::Deleting)
            .await?
        {
            return Err(EntityError::NotFound(name.to_owned()));
        }
        let known = self.known().get(name).cloned();
        if let Some(mut def) = known {
            def.status = EntityStatus::Deleting;
            self.remember(def);
        }
        self.remove_local(name)?;
        self.store.delete_entity(name).await?;
        self.store
            .meta_set(&format!("layout:{name}"), &serde_json::Value::Null)
            .await?;
        self.forget(name);
        tracing::info!(entity = name, "entity deleted");
        Ok(())
    }

    fn remove_local(&self, name: &str) -> Result<(), EntityError> {
        self.registry.unassign(name);
        if let Some(dbs) = &self.dbs {
            dbs.remove(name)?;
        }
        Ok(())
    }

    /// Bring the in-memory view in line with the store (other nodes and the
    /// REST API change it): configure plugins for new or changed entities,
    /// publish changed layouts, drop entities deleted elsewhere.
    pub async fn refresh(&self) -> Result<RefreshReport, EntityError> {
        self.sync(false).await
    }

    /// Like [`refresh`](Self::refresh), but re-configure every entity's
    /// plugin and re-publish every layout, changed or not.
    pub async fn hard_refresh(&self) -> Result<RefreshReport, EntityError> {
        self.sync(true).await
    }

    async fn sync(&self, hard: bool) -> Result<RefreshReport, EntityError> {
        let stored = self.store.entities().await?;
        let mut report = RefreshReport {
            entities: stored.len(),
            ..RefreshReport::default()
        };
        let previous: HashMap<String, EntityDef> = self.known().clone();
        for def in &stored {
            if def.status == EntityStatus::Deleting {
                continue;
            }
            let changed = previous
                .get(&def.name)
                .is_none_or(|old| old.plugin != def.plugin || old.config != def.config);
            if hard || changed {
                match self.configure(&def.name, &def.plugin, &def.config).await {
                    Ok(()) => report.configured += 1,
                    Err(error) => {
                        tracing::error!(entity = %def.name, %error, "entity configuration rejected")
                    }
                }
            }
            match self.publish_layout(&def.name).await {
                Ok(true) => report.layouts_changed += 1,
                Ok(false) => {}
                Err(error) => {
                    tracing::error!(entity = %def.name, %error, "cannot publish entity layout")
                }
            }
            self.remember(def.clone());
        }
        for name in previous
            .keys()
            .filter(|name| !stored.iter().any(|d| &d.name == *name))
        {
            self.remove_local(name)?;
            self.forget(name);
            report.removed += 1;
        }
        Ok(report)
    }
}

/// Whether an entity's `collection` field matches `collection`: the field is
/// one collection, `*` (any), or a comma-separated list of them (an entity
/// fed by several collections, e.g. `rulesengine.Company,rest.Company`).
pub fn collection_matches(field: &str, collection: &str) -> bool {
    field
        .split(',')
        .map(str::trim)
        .any(|c| c == "*" || c == collection)
}

#[cfg(test)]
mod tests {
    use super::collection_matches;

    #[test]
    fn collections_match_by_name_list_or_wildcard() {
        assert!(collection_matches("users", "users"));
        assert!(!collection_matches("users", "user"));
        assert!(collection_matches("*", "anything"));
        assert!(collection_matches(
            "rulesengine.Company, rest.Company",
            "rest.Company"
        ));
        assert!(collection_matches(
            "rulesengine.Company,rest.Company",
            "rulesengine.Company"
        ));
        assert!(!collection_matches(
            "rulesengine.Company,rest.Company",
            "rest.User"
        ));
    }
}
