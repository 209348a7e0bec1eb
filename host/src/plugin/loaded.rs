//! One loaded version of a plugin: its compiled component, a pool of
//! instances, and typed batch calls that turn traps into per-item errors.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Where a plugin version came from.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PluginOrigin {
    /// Embedded in the emcachers binary (see [`super::builtin`]).
    Builtin {
        /// The crate it was built from.
        source: String,
    },
    /// A file of the plugin directory.
    File {
        /// The file.
        path: PathBuf,
    },
}

impl std::fmt::Display for PluginOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PluginOrigin::Builtin { source } => write!(f, "builtin:{source}"),
            PluginOrigin::File { path } => write!(f, "{}", path.display()),
        }
    }
}
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use wasmtime::Store;

use super::bindings::{
    self as wit, CacheWrite, EntityPlugin, EntityPluginPre, PluginInfo, TableLayout,
};
use super::convert::{changes_to_wit, rows_to_wit};
use super::engine::{Compiled, GuestState, PluginEngine};
use super::error::{ItemError, PluginError};
use crate::model::{Change, Row, Shaped};

/// The entity configurations of one plugin name, shared by every version of
/// it, so that a reloaded version is configured exactly like the old one.
#[derive(Debug, Default)]
pub struct EntityConfigs {
    inner: RwLock<ConfigSet>,
}

#[derive(Debug, Default, Clone)]
struct ConfigSet {
    generation: u64,
    by_entity: BTreeMap<String, String>,
}

impl EntityConfigs {
    fn snapshot(&self) -> ConfigSet {
        self.inner.read().map(|c| c.clone()).unwrap_or_default()
    }

    fn generation(&self) -> u64 {
        self.inner.read().map(|c| c.generation).unwrap_or(0)
    }

    pub(crate) fn set(&self, entity: &str, config: String) {
        if let Ok(mut set) = self.inner.write() {
            set.generation += 1;
            set.by_entity.insert(entity.to_owned(), config);
        }
    }

    pub(crate) fn remove(&self, entity: &str) -> bool {
        match self.inner.write() {
            Ok(mut set) => {
                set.generation += 1;
                set.by_entity.remove(entity).is_some()
            }
            Err(_) => false,
        }
    }

    /// The configured entities.
    pub fn entities(&self) -> Vec<String> {
        self.snapshot().by_entity.into_keys().collect()
    }
}

struct Instance {
    store: Store<GuestState>,
    plugin: EntityPlugin,
    config_generation: u64,
}

/// A plugin version that passed validation and can serve calls.
pub struct LoadedPlugin {
    info: PluginInfo,
    label: Arc<str>,
    origin: PluginOrigin,
    hash: String,
    loaded_at: SystemTime,
    engine: PluginEngine,
    pre: EntityPluginPre<GuestState>,
    configs: Arc<EntityConfigs>,
    idle: Mutex<Vec<Instance>>,
}

impl std::fmt::Debug for LoadedPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedPlugin")
            .field("plugin", &self.label)
            .field("origin", &self.origin)
            .field("hash", &self.hash)
            .finish()
    }
}

impl LoadedPlugin {
    /// Instantiate `compiled`, ask it to describe itself, and return it
    /// unconfigured. [`LoadedPlugin::validate`] configures and checks it.
    pub(crate) fn describe_new(
        engine: &PluginEngine,
        origin: &PluginOrigin,
        compiled: &Compiled,
    ) -> Result<PluginInfo, PluginError> {
        let label: Arc<str> = Arc::from(origin.to_string());
        let (mut store, plugin) =
            engine
                .instantiate(&compiled.pre, label.clone())
                .map_err(|e| PluginError::Instantiate {
                    plugin: label.to_string(),
                    reason: format!("{e:#}"),
                })?;
        plugin
            .emcachers_plugin_plugin()
            .call_describe(&mut store)
            .map_err(|e| PluginError::Trapped {
                plugin: label.to_string(),
                function: "describe",
                reason: format!("{e:#}"),
            })
    }

    /// Build a loaded plugin from a compiled component, configure every
    /// entity of `configs` on a first instance and check that each answers
    /// `version`. Fails without side effects when any step fails.
    pub(crate) fn validate(
        engine: &PluginEngine,
        origin: PluginOrigin,
        compiled: Compiled,
        info: PluginInfo,
        configs: Arc<EntityConfigs>,
    ) -> Result<Arc<LoadedPlugin>, PluginError> {
        let label: Arc<str> = Arc::from(format!("{}@{}", info.name, info.version));
        let loaded = LoadedPlugin {
            label,
            info,
            origin,
            hash: compiled.hash,
            loaded_at: SystemTime::now(),
            engine: engine.clone(),
            pre: compiled.pre,
            configs,
            idle: Mutex::new(Vec::new()),
        };
        let mut instance = loaded.new_instance()?;
        for entity in loaded.configs.entities() {
            loaded.call_on(&mut instance, "version", |p, s| p.call_version(s, &entity))?;
        }
        loaded.release(instance);
        Ok(Arc::new(loaded))
    }

    /// What the plugin said about itself.
    pub fn info(&self) -> &PluginInfo {
        &self.info
    }

    /// The plugin name.
    pub fn name(&self) -> &str {
        &self.info.name
    }

    /// The plugin's own version.
    pub fn version(&self) -> &str {
        &self.info.version
    }

    /// `name@version`, as used in errors and logs.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The file it was loaded from.
    pub fn path(&self) -> Option<&Path> {
        match &self.origin {
            PluginOrigin::File { path } => Some(path),
            PluginOrigin::Builtin { .. } => None,
        }
    }

    /// Where this version came from.
    pub fn origin(&self) -> &PluginOrigin {
        &self.origin
    }

    /// SHA-256 of the file's bytes, hex.
    pub fn hash(&self) -> &str {
        &self.hash
    }

    /// When this version was loaded.
    pub fn loaded_at(&self) -> SystemTime {
        self.loaded_at
    }

    /// Whether the plugin declares a binding for `entity` (exact name or `*`).
    pub fn declares(&self, entity: &str) -> bool {
        self.info.bindings.iter().any(|b| b.entity == entity)
    }

    /// The entity configurations shared by every version of this plugin.
    pub fn configs(&self) -> &Arc<EntityConfigs> {
        &self.configs
    }

    fn new_instance(&self) -> Result<Instance, PluginError> {
        let config = self.configs.snapshot();
        let (mut store, plugin) = self
            .engine
            .instantiate(&self.pre, self.label.clone())
            .map_err(|e| PluginError::Instantiate {
                plugin: self.label.to_string(),
                reason: format!("{e:#}"),
            })?;
        self.apply_configs(&mut store, &plugin, &config)?;
        Ok(Instance {
            store,
            plugin,
            config_generation: config.generation,
        })
    }

    fn apply_configs(
        &self,
        store: &mut Store<GuestState>,
        plugin: &EntityPlugin,
        config: &ConfigSet,
    ) -> Result<(), PluginError> {
        for (entity, text) in &config.by_entity {
            self.engine.arm_deadline(store);
            let answer = plugin
                .emcachers_plugin_plugin()
                .call_configure(&mut *store, entity, text);
            match answer {
                Ok(Ok(())) => {}
                Ok(Err(reason)) => {
                    return Err(PluginError::ConfigRejected {
                        plugin: self.label.to_string(),
                        entity: entity.clone(),
                        reason,
                    });
                }
                Err(e) => {
                    return Err(PluginError::Trapped {
                        plugin: self.label.to_string(),
                        function: "configure",
                        reason: format!("{e:#}"),
                    });
                }
            }
        }
        Ok(())
    }

    fn acquire(&self) -> Result<Instance, PluginError> {
        let pooled = self.idle.lock().ok().and_then(|mut idle| idle.pop());
        match pooled {
            Some(mut instance) => {
                let generation = self.configs.generation();
                if instance.config_generation != generation {
                    let config = self.configs.snapshot();
                    self.apply_configs(&mut instance.store, &instance.plugin, &config)?;
                    instance.config_generation = config.generation;
                }
                Ok(instance)
            }
            None => self.new_instance(),
        }
    }

    fn release(&self, instance: Instance) {
        if let Ok(mut idle) = self.idle.lock()
            && idle.len() < self.engine.config().max_idle_instances
        {
            idle.push(instance);
        }
    }

    /// Run one export on `instance`; a trap is returned as an error and the
    /// caller must drop the instance.
    fn call_on<T>(
        &self,
        instance: &mut Instance,
        function: &'static str,
        call: impl FnOnce(
            &super::bindings::exports::emcachers::plugin::plugin::Guest,
            &mut Store<GuestState>,
        ) -> wasmtime::Result<T>,
    ) -> Result<T, PluginError> {
        self.engine.arm_deadline(&mut instance.store);
        call(
            instance.plugin.emcachers_plugin_plugin(),
            &mut instance.store,
        )
        .map_err(|e| PluginError::Trapped {
            plugin: self.label.to_string(),
            function,
            reason: format!("{e:#}"),
        })
    }

    /// Run one export on a pooled instance. A trap discards the instance;
    /// the next call gets a fresh one.
    fn call<T>(
        &self,
        function: &'static str,
        call: impl FnOnce(
            &super::bindings::exports::emcachers::plugin::plugin::Guest,
            &mut Store<GuestState>,
        ) -> wasmtime::Result<T>,
    ) -> Result<T, PluginError> {
        let mut instance = self.acquire()?;
        match self.call_on(&mut instance, function, call) {
            Ok(value) => {
                self.release(instance);
                Ok(value)
            }
            Err(error) => {
                tracing::warn!(plugin = %self.label, function, %error, "plugin instance discarded");
                Err(error)
            }
        }
    }

    /// Configure `entity` on a fresh instance first (so a rejected
    /// configuration changes nothing), then record it for every instance.
    pub fn configure(&self, entity: &str, config: &str) -> Result<(), PluginError> {
        let mut instance = self.acquire()?;
        let answer = self.call_on(&mut instance, "configure", |p, s| {
            p.call_configure(s, entity, config)
        })?;
        if let Err(reason) = answer {
            return Err(PluginError::ConfigRejected {
                plugin: self.label.to_string(),
                entity: entity.to_owned(),
                reason,
            });
        }
        self.configs.set(entity, config.to_owned());
        instance.config_generation = self.configs.generation();
        self.release(instance);
        Ok(())
    }

    /// Shape a batch of changes for `entity`: one result per change, in
    /// order. When the batch as a whole fails, every item carries the error.
    ///
    /// The changes are copied across the boundary; [`LoadedPlugin::shape_owned`]
    /// moves them instead (and [`LoadedPlugin::shape_async`] runs that off the
    /// async runtime).
    pub fn shape(&self, entity: &str, changes: &[Change]) -> Vec<Result<Shaped, ItemError>> {
        self.shape_wit(entity, &changes_to_wit(changes))
    }

    /// [`LoadedPlugin::shape`] on owned changes, which cross the boundary
    /// without a copy and come back with the results (for rejected records).
    pub fn shape_owned(
        &self,
        entity: &str,
        changes: Vec<Change>,
    ) -> (Vec<Change>, Vec<Result<Shaped, ItemError>>) {
        let changes: Vec<wit::Change> = changes.into_iter().map(wit::Change::from).collect();
        let results = self.shape_wit(entity, &changes);
        (changes.into_iter().map(Change::from).collect(), results)
    }

    fn shape_wit(&self, entity: &str, changes: &[wit::Change]) -> Vec<Result<Shaped, ItemError>> {
        let answer = self.call("shape", |p, s| p.call_shape(s, entity, changes));
        self.per_item(changes.len(), answer)
            .into_iter()
            .map(|item| item.map(Shaped::from))
            .collect()
    }

    /// The cache writes of a batch of upsert rows: one result per row.
    pub fn keys(&self, entity: &str, rows: &[Row]) -> Vec<Result<Vec<CacheWrite>, ItemError>> {
        self.keys_wit(entity, &rows_to_wit(rows))
    }

    /// [`LoadedPlugin::keys`] on owned rows, which cross the boundary
    /// without a copy and come back with the results (to retry a part).
    pub fn keys_owned(
        &self,
        entity: &str,
        rows: Vec<Row>,
    ) -> (Vec<Row>, Vec<Result<Vec<CacheWrite>, ItemError>>) {
        let rows: Vec<wit::Row> = rows.into_iter().map(wit::Row::from).collect();
        let results = self.keys_wit(entity, &rows);
        (rows.into_iter().map(Row::from).collect(), results)
    }

    fn keys_wit(&self, entity: &str, rows: &[wit::Row]) -> Vec<Result<Vec<CacheWrite>, ItemError>> {
        let answer = self.call("keys", |p, s| p.call_keys(s, entity, rows));
        self.per_item(rows.len(), answer)
    }

    /// The cache-layout version of `entity`.
    pub fn entity_version(&self, entity: &str) -> Result<String, PluginError> {
        self.call("version", |p, s| p.call_version(s, entity))
    }

    /// The table layout of `entity`, if the plugin defines one.
    pub fn table(&self, entity: &str) -> Result<Option<TableLayout>, PluginError> {
        self.call("table", |p, s| p.call_table(s, entity))
    }

    fn per_item<T>(
        &self,
        expected: usize,
        answer: Result<Vec<Result<T, String>>, PluginError>,
    ) -> Vec<Result<T, ItemError>> {
        let failed = |reason: String| {
            (0..expected)
                .map(|_| {
                    Err(ItemError::BatchFailed {
                        plugin: self.label.to_string(),
                        reason: reason.clone(),
                    })
                })
                .collect()
        };
        match answer {
            Ok(items) if items.len() == expected => items
                .into_iter()
                .map(|item| {
                    item.map_err(|message| ItemError::Rejected {
                        plugin: self.label.to_string(),
                        message,
                    })
                })
                .collect(),
            Ok(items) => failed(format!(
                "returned {} results for {expected} items",
                items.len()
            )),
            Err(PluginError::Trapped { reason, .. }) => failed(reason),
            Err(other) => failed(other.to_string()),
        }
    }
}
