//! The entity manager: entity definitions (CRUD, persisted in the oplog
//! store), their plugin configuration, the layouts their caches use, and the
//! routing of source collections to entities.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};

use crate::cache::layout::{LayoutBoard, Layouts};
use crate::cache::{CacheDbError, CacheDbManager, EntityLayout};
use crate::oplog::{EntityDef, EntityStatus, OplogStore, StoreError, now_millis};
use crate::plugin::{PluginError, PluginRegistry};
use crate::sources::SourceEntities;

/// Why an entity operation failed.
#[derive(Debug, thiserror::Error)]
pub enum EntityError {
    /// The definition is not acceptable.
    #[error("invalid entity: {0}")]
    Invalid(String),
    /// The name breaks a naming rule (see [`validate_name`]).
    #[error("invalid entity name {name:?}: {rule}")]
    InvalidName {
        /// The name.
        name: String,
        /// The rule it breaks.
        rule: NameRule,
    },
    /// The status is not one a user may ask for (see [`USER_STATUSES`]).
    #[error("entity status {status:?} cannot be requested: {reason}")]
    InvalidStatus {
        /// The status asked for.
        status: String,
        /// Why not, and what may be asked for.
        reason: String,
    },
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
    /// A load (recreate) was asked of an entity whose source cannot load.
    #[error(
        "entity {entity} cannot be re-snapshotted: its source {source_name:?} is not a running source that loads on request (mongo, jsonl)"
    )]
    NotLoadable {
        /// The entity.
        entity: String,
        /// Its source.
        source_name: String,
    },
    /// A load of the entity is already asked for or under way.
    #[error("entity {entity} is already loading (status {status})")]
    Loading {
        /// The entity.
        entity: String,
        /// Its status.
        status: &'static str,
    },
}

/// A new entity, or the full new state of an existing one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntitySpec {
    /// Unique name: letters, digits, `_` and `-`, see [`validate_name`].
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

/// The longest entity name.
pub const MAX_NAME_LEN: usize = 128;

/// A rule entity names follow. A name becomes a directory
/// (`dbs/{name}/`), a SQLite table in it, index names (`{name}__{index}`)
/// and part of metadata and Redis keys, so it must not collide with what the
/// host or SQLite use themselves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameRule {
    /// Not empty.
    NotEmpty,
    /// At most [`MAX_NAME_LEN`] bytes.
    MaxLength,
    /// Only ASCII letters, digits, `_` and `-`: no path separators, no
    /// `.` (so no `..`), no spaces or `:`.
    Characters,
    /// Not starting with `-` (it would read as a command-line option).
    NoLeadingDash,
    /// Not starting with `sqlite_` in any case: SQLite reserves those table names.
    NoSqlitePrefix,
    /// Not starting with `_emcachers` in any case: the host's own tables
    /// (`_emcachers_meta` in every cache database).
    NoEmcachersPrefix,
}

impl std::fmt::Display for NameRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NameRule::NotEmpty => f.write_str("a name must not be empty"),
            NameRule::MaxLength => write!(f, "a name must be at most {MAX_NAME_LEN} characters"),
            NameRule::Characters => f.write_str(
                "a name may only hold ASCII letters, digits, '_' and '-' (no path separators, '.' or '..')",
            ),
            NameRule::NoLeadingDash => f.write_str("a name must not start with '-'"),
            NameRule::NoSqlitePrefix => f.write_str(
                "names starting with 'sqlite_' are reserved (SQLite's internal tables)",
            ),
            NameRule::NoEmcachersPrefix => f.write_str(
                "names starting with '_emcachers' are reserved (emcachers' internal tables)",
            ),
        }
    }
}

/// Check an entity name against every [`NameRule`]. The entity manager
/// calls it for every create, update and apply, so the REST API, the
/// configuration and the CLI share one set of rules (the configuration also
/// calls it while loading, to name the key).
///
/// `replicator` is allowed: the replicator's file is `dbs/replicator.sqlite`
/// and an entity's directory `dbs/{name}/`; a name cannot hold the `.` that
/// would make them meet.
pub fn validate_name(name: &str) -> Result<(), EntityError> {
    let lower = name.to_ascii_lowercase();
    let broken = if name.is_empty() {
        Some(NameRule::NotEmpty)
    } else if name.len() > MAX_NAME_LEN {
        Some(NameRule::MaxLength)
    } else if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        Some(NameRule::Characters)
    } else if name.starts_with('-') {
        Some(NameRule::NoLeadingDash)
    } else if lower.starts_with("sqlite_") {
        Some(NameRule::NoSqlitePrefix)
    } else if lower.starts_with("_emcachers") {
        Some(NameRule::NoEmcachersPrefix)
    } else {
        None
    };
    match broken {
        None => Ok(()),
        Some(rule) => Err(EntityError::InvalidName {
            name: name.to_owned(),
            rule,
        }),
    }
}

/// The statuses a user (the REST API, a configuration) may give an entity.
/// `pending`, `scanning` and `deleting` belong to the host: the initial
/// load and deletion set them, and setting them by hand would stage rows
/// forever or stop routing.
pub const USER_STATUSES: [EntityStatus; 1] = [EntityStatus::Ready];

/// The status a user asked for by name, if a user may ask for it.
pub fn user_status(text: &str) -> Result<EntityStatus, EntityError> {
    let allowed = || {
        USER_STATUSES
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    match EntityStatus::parse(text) {
        Some(status) if USER_STATUSES.contains(&status) => Ok(status),
        Some(_) => Err(EntityError::InvalidStatus {
            status: text.to_owned(),
            reason: format!(
                "it is set by emcachers itself; a user may ask for: {}",
                allowed()
            ),
        }),
        None => Err(EntityError::InvalidStatus {
            status: text.to_owned(),
            reason: format!("unknown status; a user may ask for: {}", allowed()),
        }),
    }
}

/// Entity definitions and their wiring to plugins and caches.
pub struct EntityManager {
    store: Arc<dyn OplogStore>,
    registry: Arc<PluginRegistry>,
    dbs: Option<CacheDbManager>,
    known: RwLock<HashMap<String, EntityDef>>,
    layouts: LayoutBoard,
    /// Bumped whenever an entity is created, changed or removed.
    changes: tokio::sync::watch::Sender<u64>,
    /// The sources that load an entity on request (its status `pending`).
    loadable: RwLock<HashSet<String>>,
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
            layouts: LayoutBoard::new(),
            changes: tokio::sync::watch::channel(0).0,
            loadable: RwLock::new(HashSet::new()),
        }
    }

    /// Declare the sources that load entities on request (the node's mongo
    /// and JSON-lines sources): a new entity of one of them is created
    /// `pending` and backfilled by its source, and it can be re-snapshotted
    /// ([`request_load`](Self::request_load)).
    pub fn set_loadable_sources(&self, sources: impl IntoIterator<Item = String>) {
        *self.loadable.write().unwrap_or_else(|p| p.into_inner()) = sources.into_iter().collect();
    }

    /// Whether `source` loads entities on request.
    pub fn is_loadable(&self, source: &str) -> bool {
        self.loadable
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(source)
    }

    /// The status a new entity of `source` starts with when the user asks
    /// for none: `pending` (backfilled by its source) when the source loads
    /// on request, else `ready`.
    pub fn initial_status(&self, source: &str) -> EntityStatus {
        if self.is_loadable(source) {
            EntityStatus::Pending
        } else {
            EntityStatus::Ready
        }
    }

    /// Ask `name`'s source to snapshot it again (`POST
    /// /api/replication/recreate/{entity}`): the entity becomes `pending`,
    /// its stream rows are staged, and its source loads it alone; the load's
    /// end evicts what the source no longer holds and makes it `ready`.
    pub async fn request_load(&self, name: &str) -> Result<EntityDef, EntityError> {
        let def = self.get(name).await?;
        if !self.is_loadable(&def.source) {
            return Err(EntityError::NotLoadable {
                entity: def.name,
                source_name: def.source,
            });
        }
        if def.status != EntityStatus::Ready {
            return Err(EntityError::Loading {
                entity: def.name,
                status: def.status.as_str(),
            });
        }
        self.set_status(name, EntityStatus::Pending).await?;
        tracing::info!(entity = name, source = %def.source, "re-snapshot requested");
        self.get(name).await
    }

    /// A view of the entities `source` feeds, for the source itself.
    pub fn source_view(self: &Arc<Self>, source: &str) -> Arc<dyn SourceEntities> {
        Arc::new(SourceView {
            manager: self.clone(),
            source: source.to_owned(),
        })
    }

    /// The definition of `name` as last known (no store read).
    pub fn known_def(&self, name: &str) -> Option<EntityDef> {
        self.known().get(name).cloned()
    }

    /// The published layouts, pushed to the returned view on every change
    /// (cache writers read layouts only from here).
    pub fn layouts(&self) -> Layouts {
        self.layouts.subscribe()
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
        let before = self
            .known
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(def.name.clone(), def.clone());
        if before.as_ref() != Some(&def) {
            self.changes.send_modify(|n| *n += 1);
        }
    }

    fn forget(&self, name: &str) {
        let before = self
            .known
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
        if before.is_some() {
            self.changes.send_modify(|n| *n += 1);
        }
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

    /// Create an entity with a status a user may ask for ([`USER_STATUSES`]).
    /// Its plugin checks the configuration first when it is loaded; an
    /// entity whose plugin is not loaded yet is created and configured when
    /// the plugin arrives. An error leaves nothing behind: no definition, no
    /// layout, no plugin assignment.
    pub async fn create(
        &self,
        spec: EntitySpec,
        status: EntityStatus,
    ) -> Result<EntityDef, EntityError> {
        validate_name(&spec.name)?;
        // `pending` is asked for a new entity of a source that loads it.
        if !(status == EntityStatus::Pending && self.is_loadable(&spec.source)) {
            user_status(status.as_str())?;
        }
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

    /// Configure the plugin, then store the definition and its layout in
    /// one transaction. On error the plugin assignment is undone, so the
    /// entity is as it was (absent, or its previous definition).
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
        let layout_changed = match self.store_with_layout(&def).await {
            Ok(changed) => changed,
            Err(error) => {
                self.undo_configure(&def.name, existing.as_ref()).await;
                return Err(error);
            }
        };
        self.remember(def.clone());
        tracing::info!(entity = %def.name, plugin = %def.plugin, source = %def.source, collection = %def.collection, status = def.status.as_str(), layout_changed, "entity saved");
        Ok(def)
    }

    /// Store `def` and, when its plugin is loaded, its layout, in one
    /// transaction. Returns whether the published layout changed.
    async fn store_with_layout(&self, def: &EntityDef) -> Result<bool, EntityError> {
        let layout = self.plugin_layout(def).await?;
        let mut meta = Vec::new();
        let mut changed = false;
        if let Some(layout) = &layout {
            // An unreadable stored layout is replaced: storing is the repair.
            let published = EntityLayout::load(self.store.as_ref(), &def.name)
                .await
                .ok()
                .flatten();
            changed = published.as_ref() != Some(layout);
            meta.push((EntityLayout::key(&def.name), layout.to_value()?));
        }
        self.store.put_entity_with_meta(def, &meta).await?;
        if let Some(layout) = &layout {
            self.layouts.set(&def.name, layout);
        }
        Ok(changed)
    }

    /// Give the plugin back the configuration it had before a failed put:
    /// none for a new entity, the previous one otherwise.
    async fn undo_configure(&self, name: &str, previous: Option<&EntityDef>) {
        match previous {
            None => self.registry.unassign(name),
            Some(old) => {
                if let Err(error) = self.configure(name, &old.plugin, &old.config).await {
                    tracing::error!(entity = name, %error, "cannot restore the previous plugin configuration; a hard refresh restores it");
                }
            }
        }
    }

    async fn configure(
        &self,
        entity: &str,
        plugin: &str,
        config: &serde_json::Value,
    ) -> Result<(), EntityError> {
        self.registry
            .assign_async(entity, plugin, &config.to_string())
            .await?;
        Ok(())
    }

    /// The layout the plugin serving `def` reports (its version and table,
    /// for this life of the entity), when that plugin is loaded.
    async fn plugin_layout(&self, def: &EntityDef) -> Result<Option<EntityLayout>, EntityError> {
        let Some(plugin) = self.registry.for_entity(&def.name) else {
            return Ok(None);
        };
        let (version, table) = plugin.layout_async(&def.name).await?;
        let layout = EntityLayout::from_plugin(version, table);
        Ok(Some(layout.with_generation(def.created_at)))
    }

    /// Publish the entity's cache layout (plugin version and table) when its
    /// plugin is loaded; returns whether the published layout changed.
    pub async fn publish_layout(&self, entity: &str) -> Result<bool, EntityError> {
        let def = self.get(entity).await?;
        self.publish_layout_of(&def).await
    }

    async fn publish_layout_of(&self, def: &EntityDef) -> Result<bool, EntityError> {
        let Some(layout) = self.plugin_layout(def).await? else {
            // No plugin here (a cache-only node, or not loaded yet): serve
            // what another node published, if anything.
            if let Some(published) = EntityLayout::load(self.store.as_ref(), &def.name).await? {
                self.layouts.set(&def.name, &published);
            }
            return Ok(false);
        };
        let changed = layout.publish(self.store.as_ref(), &def.name).await?;
        self.layouts.set(&def.name, &layout);
        if changed {
            tracing::info!(entity = %def.name, version = %layout.version, generation = layout.generation, "entity cache layout published");
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
    /// remove its cache directory, then its data, definition and metadata
    /// (layout, load start) in one store transaction. A failure leaves it
    /// `deleting`; deleting again finishes the job. The name can be used
    /// again afterwards.
    pub async fn delete(&self, name: &str) -> Result<(), EntityError> {
        if !self
            .store
            .set_entity_status(name, EntityStatus::Deleting)
            .await?
        {
            return Err(EntityError::NotFound(name.to_owned()));
        }
        let remembered = self.known().get(name).cloned();
        let known = match remembered {
            Some(def) => Some(def),
            None => self.store.entity(name).await?,
        };
        // The life being deleted: its cache is never built again.
        let generation = known
            .as_ref()
            .map_or_else(crate::oplog::now_millis, |def| def.created_at);
        if let Some(mut def) = known {
            def.status = EntityStatus::Deleting;
            self.remember(def);
        }
        self.remove_local(name, generation)?;
        self.store.delete_entity(name).await?;
        self.layouts.remove(name);
        self.forget(name);
        tracing::info!(entity = name, "entity deleted");
        Ok(())
    }

    /// Unassign `name`'s plugin and remove its cache directory, retiring its
    /// life `generation` (see [`CacheDbManager::remove`]).
    fn remove_local(&self, name: &str, generation: i64) -> Result<(), EntityError> {
        self.registry.unassign(name);
        if let Some(dbs) = &self.dbs {
            dbs.remove(name, generation)?;
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
            match self.publish_layout_of(def).await {
                Ok(true) => report.layouts_changed += 1,
                Ok(false) => {}
                Err(error) => {
                    tracing::error!(entity = %def.name, %error, "cannot publish entity layout")
                }
            }
            self.remember(def.clone());
        }
        for (name, def) in previous
            .iter()
            .filter(|(name, _)| !stored.iter().any(|d| &d.name == *name))
        {
            self.remove_local(name, def.created_at)?;
            self.layouts.remove(name);
            self.forget(name);
            report.removed += 1;
        }
        Ok(report)
    }
}

/// [`EntityManager::source_view`].
struct SourceView {
    manager: Arc<EntityManager>,
    source: String,
}

impl SourceEntities for SourceView {
    fn routes(&self, collection: &str) -> Vec<String> {
        self.manager
            .routes(&self.source, collection)
            .into_iter()
            .map(|def| def.name)
            .collect()
    }

    fn pending(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .manager
            .known()
            .values()
            .filter(|def| def.status == EntityStatus::Pending && def.source == self.source)
            .map(|def| def.name.clone())
            .collect();
        names.sort();
        names
    }

    fn changed(&self) -> tokio::sync::watch::Receiver<u64> {
        self.manager.changes.subscribe()
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
    use super::{EntityError, NameRule, collection_matches, user_status, validate_name};
    use crate::oplog::EntityStatus;

    fn rule(name: &str) -> Option<NameRule> {
        match validate_name(name) {
            Ok(()) => None,
            Err(EntityError::InvalidName { rule, .. }) => Some(rule),
            Err(other) => panic!("unexpected error {other}"),
        }
    }

    #[test]
    fn names_that_collide_with_internal_files_or_tables_are_refused() {
        assert_eq!(rule("users"), None);
        assert_eq!(rule("user_events-2"), None);
        assert_eq!(
            rule("replicator"),
            None,
            "dbs/replicator/ and dbs/replicator.sqlite differ"
        );
        assert_eq!(rule("my_sqlite_table"), None);
        assert_eq!(rule(""), Some(NameRule::NotEmpty));
        assert_eq!(rule(&"a".repeat(128)), None);
        assert_eq!(rule(&"a".repeat(129)), Some(NameRule::MaxLength));
        for bad in ["..", "../etc", "a/b", "a\\b", "a.b", "a b", "a:b", "é"] {
            assert_eq!(rule(bad), Some(NameRule::Characters), "{bad}");
        }
        assert_eq!(rule("-users"), Some(NameRule::NoLeadingDash));
        assert_eq!(rule("sqlite_master"), Some(NameRule::NoSqlitePrefix));
        assert_eq!(rule("SQLite_x"), Some(NameRule::NoSqlitePrefix));
        assert_eq!(rule("_emcachers_meta"), Some(NameRule::NoEmcachersPrefix));
        assert_eq!(rule("_EMCACHERS"), Some(NameRule::NoEmcachersPrefix));
        let message = validate_name("sqlite_x").unwrap_err().to_string();
        assert!(
            message.contains("sqlite_x") && message.contains("reserved"),
            "{message}"
        );
    }

    #[test]
    fn only_user_statuses_may_be_requested() {
        assert_eq!(user_status("ready").ok(), Some(EntityStatus::Ready));
        for internal in ["pending", "scanning", "deleting"] {
            let error = user_status(internal).unwrap_err().to_string();
            assert!(
                error.contains("set by emcachers") && error.contains("ready"),
                "{error}"
            );
        }
        let error = user_status("bogus").unwrap_err().to_string();
        assert!(error.contains("unknown status"), "{error}");
    }

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
