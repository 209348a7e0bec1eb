//! The one wasmtime [`Engine`] of the process: compilation with an on-disk
//! artefact cache, the epoch ticker behind per-call deadlines, and the
//! sandbox (WASI grants, memory cap) every plugin instance gets.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{Config, Engine, Store, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::bindings::{EntityPlugin, EntityPluginPre, Level, emcachers};
use super::error::PluginError;

/// How long one epoch tick lasts; deadlines are rounded up to whole ticks.
const EPOCH_TICK: Duration = Duration::from_millis(10);

/// What a guest may touch. Everything is denied unless configured.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct WasiGrants {
    /// Names of host environment variables passed to guests.
    pub env: Vec<String>,
    /// Host directories guests may read, mounted read-only at the same path.
    pub read_only_dirs: Vec<PathBuf>,
    /// Whether guests may open network sockets.
    pub network: bool,
    /// Whether guest stdout/stderr go to the host's.
    pub stdio: bool,
}

/// Limits and grants of the plugin sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxConfig {
    /// Wall-clock budget of one call (a whole batch).
    pub deadline: Duration,
    /// Linear-memory cap per instance, in bytes.
    pub memory_limit: usize,
    /// Idle instances kept per plugin version.
    pub max_idle_instances: usize,
    /// Where compiled artefacts are cached; `None` disables the cache.
    pub cache_dir: Option<PathBuf>,
    /// What guests may touch.
    pub wasi: WasiGrants,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            deadline: Duration::from_secs(1),
            memory_limit: 64 * 1024 * 1024,
            max_idle_instances: 4,
            cache_dir: None,
            wasi: WasiGrants::default(),
        }
    }
}

/// The state each plugin instance's store carries.
pub(crate) struct GuestState {
    wasi: WasiCtx,
    table: ResourceTable,
    limits: StoreLimits,
    /// `name@version` once known, for log records.
    pub(crate) label: Arc<str>,
}

impl WasiView for GuestState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl emcachers::plugin::host::Host for GuestState {
    fn log(&mut self, level: Level, message: String, fields: Vec<(String, String)>) {
        let fields = fields
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" ");
        let plugin = &*self.label;
        match level {
            Level::Trace => tracing::trace!(target: "plugin", plugin, %fields, "{message}"),
            Level::Debug => tracing::debug!(target: "plugin", plugin, %fields, "{message}"),
            Level::Info => tracing::info!(target: "plugin", plugin, %fields, "{message}"),
            Level::Warn => tracing::warn!(target: "plugin", plugin, %fields, "{message}"),
            Level::Error => tracing::error!(target: "plugin", plugin, %fields, "{message}"),
        }
    }
}

impl emcachers::plugin::types::Host for GuestState {}

struct Shared {
    engine: Engine,
    linker: Linker<GuestState>,
    config: SandboxConfig,
    deadline_ticks: u64,
    compat: String,
    stop: Arc<AtomicBool>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The process-wide plugin engine. Cheap to clone.
#[derive(Clone)]
pub struct PluginEngine {
    shared: Arc<Shared>,
}

/// A compiled component, ready to instantiate, with the hash of its bytes.
pub(crate) struct Compiled {
    pub(crate) pre: EntityPluginPre<GuestState>,
    pub(crate) hash: String,
}

impl PluginEngine {
    /// Build the engine and start its epoch ticker.
    pub fn new(config: SandboxConfig) -> Result<Self, PluginError> {
        let mut wasm = Config::new();
        wasm.wasm_component_model(true).epoch_interruption(true);
        // `EMCACHERS_WASM_PROFILER=perfmap` lets `perf record` name JIT-compiled
        // plugin functions (an operator's tool for slow plugins).
        if std::env::var("EMCACHERS_WASM_PROFILER").is_ok_and(|v| v == "perfmap") {
            wasm.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        let engine = Engine::new(&wasm).map_err(|e| PluginError::Invalid {
            path: PathBuf::new(),
            reason: format!("engine configuration: {e}"),
        })?;
        let mut linker = Linker::new(&engine);
        let link_err = |e: wasmtime::Error| PluginError::Invalid {
            path: PathBuf::new(),
            reason: format!("linker: {e}"),
        };
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(link_err)?;
        EntityPlugin::add_to_linker::<_, HasSelf<_>>(&mut linker, |state| state)
            .map_err(link_err)?;

        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let compat = format!("{:016x}", hasher.finish());

        let stop = Arc::new(AtomicBool::new(false));
        spawn_epoch_ticker(engine.clone(), stop.clone());
        let deadline_ticks = config
            .deadline
            .as_millis()
            .div_ceil(EPOCH_TICK.as_millis())
            .max(1) as u64;
        Ok(PluginEngine {
            shared: Arc::new(Shared {
                engine,
                linker,
                config,
                deadline_ticks,
                compat,
                stop,
            }),
        })
    }

    /// The sandbox configuration.
    pub fn config(&self) -> &SandboxConfig {
        &self.shared.config
    }

    /// Compile `bytes` (read from `path`), using the artefact cache when it
    /// holds this exact content for this engine.
    pub(crate) fn compile(&self, path: &Path, bytes: &[u8]) -> Result<Compiled, PluginError> {
        let hash = content_hash(bytes);
        let component = self.component(path, bytes, &hash)?;
        self.link(path, component, hash)
    }

    /// The component of `bytes` (hash `hash`): from the artefact cache, else
    /// compiled by Cranelift (and cached).
    fn component(&self, path: &Path, bytes: &[u8], hash: &str) -> Result<Component, PluginError> {
        if let Some(component) = self.cached_component(hash) {
            return Ok(component);
        }
        let component = Component::from_binary(&self.shared.engine, bytes).map_err(|e| {
            PluginError::Invalid {
                path: path.to_owned(),
                reason: format!("{e:#}"),
            }
        })?;
        self.store_in_cache(hash, &component);
        Ok(component)
    }

    /// [`compile`](Self::compile) for a plugin embedded in the binary: the
    /// artefact is also kept in memory for the life of the process, so every
    /// engine of the process (each node, each test) compiles a built-in once,
    /// even without an artefact cache directory.
    pub(crate) fn compile_builtin(
        &self,
        label: &Path,
        bytes: &'static [u8],
    ) -> Result<Compiled, PluginError> {
        static ARTEFACTS: Mutex<BTreeMap<String, Arc<Vec<u8>>>> = Mutex::new(BTreeMap::new());
        let hash = content_hash(bytes);
        let key = format!("{hash}-{}", self.shared.compat);
        // Held while compiling: concurrent loads wait for the first one.
        let mut artefacts = ARTEFACTS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(serialized) = artefacts.get(&key) {
            // SAFETY: the bytes were produced by `Component::serialize` in
            // this process, for an engine with the same compatibility hash
            // (part of the key); wasmtime checks the header as well.
            if let Ok(component) =
                unsafe { Component::deserialize(&self.shared.engine, serialized.as_slice()) }
            {
                drop(artefacts);
                return self.link(label, component, hash);
            }
        }
        let component = self.component(label, bytes, &hash)?;
        if let Ok(serialized) = component.serialize() {
            artefacts.insert(key, Arc::new(serialized));
        }
        drop(artefacts);
        self.link(label, component, hash)
    }

    fn link(
        &self,
        path: &Path,
        component: Component,
        hash: String,
    ) -> Result<Compiled, PluginError> {
        let invalid = |e: wasmtime::Error| PluginError::Invalid {
            path: path.to_owned(),
            reason: format!("{e:#}"),
        };
        let pre = self
            .shared
            .linker
            .instantiate_pre(&component)
            .map_err(invalid)?;
        let pre = EntityPluginPre::new(pre).map_err(invalid)?;
        Ok(Compiled { pre, hash })
    }

    fn cache_path(&self, hash: &str) -> Option<PathBuf> {
        let dir = self.shared.config.cache_dir.as_ref()?;
        Some(dir.join(format!("{hash}-{}.cwasm", self.shared.compat)))
    }

    fn cached_component(&self, hash: &str) -> Option<Component> {
        let path = self.cache_path(hash)?;
        if !path.exists() {
            return None;
        }
        // SAFETY: the file was written by `store_in_cache` from
        // `Component::serialize` of this engine configuration (the name
        // carries the engine's compatibility hash) in a directory that only
        // this host writes. wasmtime also checks the header and refuses
        // artefacts of another version or configuration.
        match unsafe { Component::deserialize_file(&self.shared.engine, &path) } {
            Ok(component) => Some(component),
            Err(error) => {
                tracing::warn!(path = %path.display(), %error, "discarding unusable compiled plugin");
                let _ = std::fs::remove_file(&path);
                None
            }
        }
    }

    fn store_in_cache(&self, hash: &str, component: &Component) {
        let Some(path) = self.cache_path(hash) else {
            return;
        };
        let result = (|| -> Result<(), PluginError> {
            let cache_err = |source| PluginError::Cache {
                path: path.clone(),
                source,
            };
            let dir = path.parent().unwrap_or(Path::new("."));
            std::fs::create_dir_all(dir).map_err(cache_err)?;
            let bytes = component
                .serialize()
                .map_err(|e| cache_err(std::io::Error::other(e.to_string())))?;
            let tmp = tempfile::NamedTempFile::new_in(dir).map_err(cache_err)?;
            std::fs::write(tmp.path(), bytes).map_err(cache_err)?;
            tmp.persist(&path).map_err(|e| cache_err(e.error))?;
            Ok(())
        })();
        if let Err(error) = result {
            tracing::warn!(%error, "cannot cache compiled plugin; it will be compiled again next start");
        }
    }

    /// A fresh instance with its own store, limits and WASI context.
    pub(crate) fn instantiate(
        &self,
        pre: &EntityPluginPre<GuestState>,
        label: Arc<str>,
    ) -> Result<(Store<GuestState>, EntityPlugin), wasmtime::Error> {
        let config = &self.shared.config;
        let mut wasi = WasiCtxBuilder::new();
        for name in &config.wasi.env {
            if let Ok(value) = std::env::var(name) {
                wasi.env(name, value);
            }
        }
        for dir in &config.wasi.read_only_dirs {
            let guest = dir.to_string_lossy();
            wasi.preopened_dir(dir, guest.as_ref(), wasmtime_wasi::FsPerms::ReadOnly)?;
        }
        if config.wasi.network {
            wasi.inherit_network().allow_ip_name_lookup(true);
        }
        if config.wasi.stdio {
            wasi.inherit_stdout().inherit_stderr();
        }
        let limits = StoreLimitsBuilder::new()
            .memory_size(config.memory_limit)
            .trap_on_grow_failure(false)
            .build();
        let state = GuestState {
            wasi: wasi.build(),
            table: ResourceTable::new(),
            limits,
            label,
        };
        let mut store = Store::new(&self.shared.engine, state);
        store.limiter(|state| &mut state.limits);
        store.set_epoch_deadline(self.shared.deadline_ticks);
        let instance = pre.instantiate(&mut store)?;
        Ok((store, instance))
    }

    /// Arm the deadline for the next call on `store`.
    pub(crate) fn arm_deadline(&self, store: &mut Store<GuestState>) {
        store.set_epoch_deadline(self.shared.deadline_ticks);
    }
}

/// SHA-256 of a plugin file's bytes, hex: the identity of a plugin build.
/// SHA-256 of a plugin's bytes, in hex: the hash the registry reports.
pub fn content_hash(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn spawn_epoch_ticker(engine: Engine, stop: Arc<AtomicBool>) {
    let spawned = std::thread::Builder::new()
        .name("plugin-epoch".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(EPOCH_TICK);
                engine.increment_epoch();
            }
        });
    if let Err(error) = spawned {
        tracing::error!(%error, "cannot start the plugin deadline ticker; deadlines will not fire");
    }
}
