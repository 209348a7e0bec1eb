//! The plugin registry: which plugin versions are loaded, from which files,
//! which plugin serves which entity, and what went wrong last.
//!
//! Loading compiles and validates a file completely before anything changes;
//! the swap itself is one map insert under a write lock, so a batch that has
//! already taken its `Arc<LoadedPlugin>` finishes on the old version and the
//! next batch gets the new one.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use super::builtin::BuiltinPlugin;
use super::engine::{PluginEngine, content_hash};
use super::error::PluginError;
use super::loaded::{EntityConfigs, LoadedPlugin, PluginOrigin};

/// What happened when a file was (re)loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoadOutcome {
    /// A plugin name was loaded for the first time.
    Loaded {
        /// `name@version`.
        plugin: String,
    },
    /// A new version replaced a running one.
    Replaced {
        /// The old `name@version`.
        old: String,
        /// The new `name@version`.
        new: String,
    },
    /// The file's content is the one already loaded.
    Unchanged,
}

/// The state of one file of the plugin directory.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FileStatus {
    /// The file.
    pub path: PathBuf,
    /// The plugin it provides, when it loaded.
    pub plugin: Option<String>,
    /// SHA-256 of the content that is serving.
    pub hash: Option<String>,
    /// The last load error, kept until a load of this file succeeds.
    pub last_error: Option<String>,
}

/// A loaded plugin, as the registry reports it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PluginStatus {
    /// Plugin name.
    pub name: String,
    /// Plugin version.
    pub version: String,
    /// Its description.
    pub description: String,
    /// Where this version came from: built into the binary or a file.
    pub origin: PluginOrigin,
    /// The version of the built-in plugin of the same name that this file
    /// overrides, if any.
    pub overrides_builtin: Option<String>,
    /// SHA-256 of the component.
    pub hash: String,
    /// When it was loaded (seconds since the Unix epoch).
    pub loaded_at: u64,
    /// Entities configured for it.
    pub entities: Vec<String>,
    /// The last error of its file, if a newer version failed to load.
    pub last_error: Option<String>,
}

#[derive(Default)]
struct State {
    /// Plugins loaded from files, by name.
    plugins: HashMap<String, Arc<LoadedPlugin>>,
    /// Built-in plugins, by name; a file plugin of the same name wins.
    builtins: HashMap<String, Arc<LoadedPlugin>>,
    files: BTreeMap<PathBuf, FileStatus>,
    configs: HashMap<String, Arc<EntityConfigs>>,
    /// Entity → plugin name, for entities assigned explicitly.
    assigned: HashMap<String, String>,
}

/// Loaded plugins by name, and the entities they serve.
pub struct PluginRegistry {
    engine: PluginEngine,
    state: RwLock<State>,
    /// Bumped whenever the serving set changes (a version loaded, replaced
    /// or unloaded); see [`PluginRegistry::swaps`].
    swaps: tokio::sync::watch::Sender<u64>,
}

impl PluginRegistry {
    /// An empty registry on `engine`.
    pub fn new(engine: PluginEngine) -> Self {
        PluginRegistry {
            engine,
            state: RwLock::new(State::default()),
            swaps: tokio::sync::watch::Sender::new(0),
        }
    }

    /// A receiver that changes whenever a plugin version starts or stops
    /// serving, so the entity manager can publish the layouts it names at
    /// once (pushed to the cache writers) instead of at its next refresh.
    pub fn swaps(&self) -> tokio::sync::watch::Receiver<u64> {
        self.swaps.subscribe()
    }

    fn swapped(&self) {
        self.swaps.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// The engine plugins run on.
    pub fn engine(&self) -> &PluginEngine {
        &self.engine
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The plugin serving the name `name`: the file plugin, else the
    /// built-in one.
    pub fn plugin(&self, name: &str) -> Option<Arc<LoadedPlugin>> {
        self.read().serving(name).cloned()
    }

    /// The plugin serving `entity`: the one it was assigned to, else the one
    /// serving plugin that declares it by name.
    pub fn for_entity(&self, entity: &str) -> Option<Arc<LoadedPlugin>> {
        let state = self.read();
        if let Some(name) = state.assigned.get(entity) {
            return state.serving(name).cloned();
        }
        state.all_serving().find(|p| p.declares(entity)).cloned()
    }

    /// Compile and load the built-in plugins (see [`super::builtin`]).
    /// Returns the ones that failed, with why; a failure leaves the others
    /// serving.
    pub fn load_builtins(&self, builtins: &[BuiltinPlugin]) -> Vec<(String, PluginError)> {
        let mut errors = Vec::new();
        for builtin in builtins {
            if let Err(error) = self.load_builtin(builtin) {
                tracing::error!(plugin = %builtin.label(), %error, "built-in plugin not loaded");
                errors.push((builtin.label(), error));
            }
        }
        errors
    }

    fn load_builtin(&self, builtin: &BuiltinPlugin) -> Result<(), PluginError> {
        let origin = PluginOrigin::Builtin {
            source: builtin.source.to_owned(),
        };
        let label = std::path::PathBuf::from(origin.to_string());
        let compiled = self.engine.compile_builtin(&label, builtin.bytes)?;
        let info = LoadedPlugin::describe_new(&self.engine, &origin, &compiled)?;
        let configs = self
            .write()
            .configs
            .entry(info.name.clone())
            .or_default()
            .clone();
        let loaded = LoadedPlugin::validate(&self.engine, origin, compiled, info, configs)?;
        let mut state = self.write();
        let overridden = state
            .plugins
            .get(loaded.name())
            .map(|p| p.label().to_owned());
        tracing::info!(plugin = %loaded.label(), hash = %loaded.hash(), overridden_by = overridden.as_deref(), "built-in plugin loaded");
        state.builtins.insert(loaded.name().to_owned(), loaded);
        drop(state);
        self.swapped();
        Ok(())
    }

    /// Assign `entity` to plugin `plugin` with `config` (JSON text). When the
    /// plugin is loaded, the configuration is checked by it first and an
    /// error changes nothing; when it is not loaded yet, the assignment waits
    /// and is applied (and checked) when it loads.
    pub fn assign(&self, entity: &str, plugin: &str, config: &str) -> Result<(), PluginError> {
        let configs = {
            let mut state = self.write();
            state.configs.entry(plugin.to_owned()).or_default().clone()
        };
        if let Some(loaded) = self.plugin(plugin) {
            loaded.configure(entity, config)?;
        } else {
            configs.set(entity, config.to_owned());
        }
        let mut state = self.write();
        if let Some(previous) = state.assigned.insert(entity.to_owned(), plugin.to_owned())
            && previous != plugin
            && let Some(old) = state.configs.get(&previous)
        {
            old.remove(entity);
        }
        Ok(())
    }

    /// Whether `entity` is assigned to a plugin (defined, configured).
    pub fn is_assigned(&self, entity: &str) -> bool {
        self.read().assigned.contains_key(entity)
    }

    /// Forget `entity`'s assignment and configuration.
    pub fn unassign(&self, entity: &str) {
        let mut state = self.write();
        if let Some(plugin) = state.assigned.remove(entity)
            && let Some(configs) = state.configs.get(&plugin)
        {
            configs.remove(entity);
        }
    }

    /// Load every `*.wasm` file of `dir`. Errors are recorded per file and
    /// returned; the files that load are serving.
    pub fn load_dir(&self, dir: &Path) -> Vec<(PathBuf, PluginError)> {
        let mut errors = Vec::new();
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(source) => {
                errors.push((
                    dir.to_owned(),
                    PluginError::Read {
                        path: dir.to_owned(),
                        source,
                    },
                ));
                return errors;
            }
        };
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| is_plugin_file(p))
            .collect();
        files.sort();
        for path in files {
            if let Err(error) = self.load_file(&path) {
                errors.push((path, error));
            }
        }
        errors
    }

    /// Compile, validate and swap in the plugin of `path`. On error the
    /// version already serving (if any) keeps serving, and the error is kept
    /// as the file's last error.
    pub fn load_file(&self, path: &Path) -> Result<LoadOutcome, PluginError> {
        let result = self.try_load(path);
        let mut state = self.write();
        let status = state
            .files
            .entry(path.to_owned())
            .or_insert_with(|| FileStatus {
                path: path.to_owned(),
                plugin: None,
                hash: None,
                last_error: None,
            });
        match &result {
            Ok(_) => status.last_error = None,
            Err(error) => {
                tracing::error!(path = %path.display(), %error, "plugin not loaded; the previous version (if any) keeps serving");
                status.last_error = Some(error.to_string());
            }
        }
        result
    }

    fn try_load(&self, path: &Path) -> Result<LoadOutcome, PluginError> {
        let bytes = std::fs::read(path).map_err(|source| PluginError::Read {
            path: path.to_owned(),
            source,
        })?;
        {
            let state = self.read();
            if let Some(status) = state.files.get(path) {
                let current = status
                    .plugin
                    .as_ref()
                    .and_then(|name| state.plugins.get(name));
                if current.is_some_and(|p| p.hash() == content_hash(&bytes)) {
                    return Ok(LoadOutcome::Unchanged);
                }
            }
        }
        let origin = PluginOrigin::File {
            path: path.to_owned(),
        };
        let compiled = self.engine.compile(path, &bytes)?;
        let info = LoadedPlugin::describe_new(&self.engine, &origin, &compiled)?;
        {
            let state = self.read();
            if let Some(other) = state.plugins.get(&info.name)
                && let Some(other_path) = other.path()
                && other_path != path
            {
                return Err(PluginError::NameConflict {
                    path: path.to_owned(),
                    name: info.name.clone(),
                    other: other_path.to_owned(),
                });
            }
        }
        let configs = self
            .write()
            .configs
            .entry(info.name.clone())
            .or_default()
            .clone();
        let loaded = LoadedPlugin::validate(&self.engine, origin, compiled, info, configs)?;

        let mut state = self.write();
        let name = loaded.name().to_owned();
        let new_label = loaded.label().to_owned();
        let previous_name = state.files.get(path).and_then(|s| s.plugin.clone());
        if let Some(previous) = previous_name.filter(|p| *p != name) {
            state.plugins.remove(&previous);
        }
        let old = state
            .plugins
            .insert(name.clone(), loaded.clone())
            .or_else(|| state.builtins.get(&name).cloned());
        state.files.insert(
            path.to_owned(),
            FileStatus {
                path: path.to_owned(),
                plugin: Some(name),
                hash: Some(loaded.hash().to_owned()),
                last_error: None,
            },
        );
        drop(state);
        self.swapped();
        Ok(match old {
            Some(old) => {
                tracing::info!(path = %path.display(), old = %old.label(), new = %new_label, hash = %loaded.hash(), "plugin replaced");
                LoadOutcome::Replaced {
                    old: old.label().to_owned(),
                    new: new_label,
                }
            }
            None => {
                tracing::info!(path = %path.display(), plugin = %new_label, hash = %loaded.hash(), "plugin loaded");
                LoadOutcome::Loaded { plugin: new_label }
            }
        })
    }

    /// Unload the plugin that `path` provided (the file was removed).
    pub fn unload_file(&self, path: &Path) -> Option<String> {
        let mut state = self.write();
        let status = state.files.remove(path)?;
        let name = status.plugin?;
        let removed = state.plugins.remove(&name)?;
        match state.builtins.get(&name) {
            Some(builtin) => {
                tracing::info!(path = %path.display(), plugin = %removed.label(), now = %builtin.label(), "plugin file removed; the built-in version serves again")
            }
            None => {
                tracing::info!(path = %path.display(), plugin = %removed.label(), "plugin unloaded")
            }
        }
        drop(state);
        self.swapped();
        Some(removed.label().to_owned())
    }

    /// Every serving plugin (a file plugin hides the built-in of its name).
    pub fn plugins(&self) -> Vec<PluginStatus> {
        let state = self.read();
        let mut out: Vec<PluginStatus> = state
            .all_serving()
            .map(|p| PluginStatus {
                name: p.name().to_owned(),
                version: p.version().to_owned(),
                description: p.info().description.clone(),
                origin: p.origin().clone(),
                overrides_builtin: p
                    .path()
                    .and_then(|_| state.builtins.get(p.name()))
                    .map(|b| b.version().to_owned()),
                hash: p.hash().to_owned(),
                loaded_at: p
                    .loaded_at()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0),
                entities: p.configs().entities(),
                last_error: p
                    .path()
                    .and_then(|path| state.files.get(path))
                    .and_then(|f| f.last_error.clone()),
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// Every file seen in the plugin directory, loaded or not.
    pub fn files(&self) -> Vec<FileStatus> {
        self.read().files.values().cloned().collect()
    }
}

impl State {
    fn serving(&self, name: &str) -> Option<&Arc<LoadedPlugin>> {
        self.plugins.get(name).or_else(|| self.builtins.get(name))
    }

    /// File plugins, then the built-ins no file overrides.
    fn all_serving(&self) -> impl Iterator<Item = &Arc<LoadedPlugin>> {
        self.plugins.values().chain(
            self.builtins
                .iter()
                .filter(|(name, _)| !self.plugins.contains_key(*name))
                .map(|(_, p)| p),
        )
    }
}

/// Whether `path` names a plugin file (`*.wasm`, not hidden).
pub fn is_plugin_file(path: &Path) -> bool {
    let hidden = path
        .file_name()
        .and_then(|n| n.to_str())
        .is_none_or(|n| n.starts_with('.'));
    !hidden && path.extension().is_some_and(|e| e == "wasm")
}
