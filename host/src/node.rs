//! One emcachers process: the wiring of store, plugins, entities, pipeline,
//! cache replicator and jobs, as `emcachers run` and `emcachers ingest` use it.

use std::sync::Arc;
use std::time::Duration;

use crate::api;
use crate::cache::redis::{MemoryTarget, RedisWriter, RedisWriterError};
use crate::cache::{
    CacheDbError, CacheDbManager, ReplicatorConfig, ReplicatorError, SqliteReplicator, StepReport,
};
use crate::config::{Config, SourceConfig};
use crate::datadir::{DataDirError, DataDirLock};
use crate::entities::{EntityError, EntityManager, EntitySpec};
use crate::health::{
    CacheWriterProbe, GenericBody, HealthState, ProbeSlot, ReadinessBody, SourceProbe,
};
use crate::ingest::{IngestReport, Pipeline, PipelineError, run_source};
use crate::jobs::{JobServer, TaskExit};
use crate::oplog::{OplogStore, PostgresStore, SqliteStore, StoreError};
use crate::plugin::{PluginEngine, PluginError, PluginRegistry, PluginWatcher, WatchError};
use crate::schematic::SchematicBody;
use crate::schematic::datastream::{
    DatastreamError, DatastreamProbe, DatastreamSource, DatastreamStatus,
};
use crate::sources::Source;
use crate::sources::jsonl::JsonlFileSource;
use crate::sources::mongo::{MongoProbe, MongoSource, ScanStatus};

/// Why the node could not start or a step failed.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The data directory is locked by another process, or cannot be locked.
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The plugin engine could not start.
    #[error(transparent)]
    Plugin(#[from] PluginError),
    /// An entity from the configuration was refused.
    #[error("entity {entity} from the configuration: {source}")]
    Entity {
        /// The entity.
        entity: String,
        /// Why.
        source: EntityError,
    },
    /// Refreshing entities failed.
    #[error(transparent)]
    Entities(#[from] EntityError),
    /// The plugin directory cannot be watched.
    #[error(transparent)]
    Watch(#[from] WatchError),
    /// The pipeline failed.
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    /// The replicator failed.
    #[error(transparent)]
    Replicator(#[from] ReplicatorError),
    /// The API address cannot be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: String,
        /// The error.
        source: std::io::Error,
    },
    /// A directory could not be created.
    #[error("cannot create {path}: {source}")]
    Directory {
        /// The directory.
        path: std::path::PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A blocking task failed.
    #[error("worker failed: {0}")]
    Worker(String),
    /// The cache directory cannot be opened.
    #[error(transparent)]
    CacheDb(#[from] CacheDbError),
    /// The Redis writer is misconfigured.
    #[error(transparent)]
    RedisWriter(#[from] RedisWriterError),
    /// A datastream source is misconfigured.
    #[error(transparent)]
    Datastream(#[from] DatastreamError),
    /// A plugin the configuration relies on is not in the plugin directory.
    #[error("plugin {plugin} (needed by entity {entity}) is not in {dir}: {hint}")]
    MissingPlugin {
        /// The plugin.
        plugin: String,
        /// The entity.
        entity: String,
        /// The plugin directory.
        dir: std::path::PathBuf,
        /// How to get it.
        hint: &'static str,
    },
}

/// The wired parts of one process.
pub struct Node {
    /// The configuration it runs with.
    pub config: Config,
    /// The oplog store.
    pub store: Arc<dyn OplogStore>,
    /// Loaded plugins.
    pub registry: Arc<PluginRegistry>,
    /// Entity definitions.
    pub entities: Arc<EntityManager>,
    /// The ingest pipeline.
    pub pipeline: Arc<Pipeline>,
    /// The per-entity SQLite caches.
    pub dbs: CacheDbManager,
    /// Background jobs.
    pub jobs: JobServer,
    /// The status of each datastream and MongoDB source of the configuration.
    pub statuses: SourceStatuses,
    watcher: Option<PluginWatcher>,
    api_addr: Option<std::net::SocketAddr>,
    health_addr: Option<std::net::SocketAddr>,
    writer: Option<Arc<dyn CacheWriterProbe>>,
    memory: Option<Arc<MemoryTarget>>,
    /// Held while the node lives; the last field, so it is released last.
    _data_dir_lock: DataDirLock,
}

fn create_dir(path: &std::path::Path) -> Result<(), NodeError> {
    std::fs::create_dir_all(path).map_err(|source| NodeError::Directory {
        path: path.to_owned(),
        source,
    })
}

/// Open the oplog store the configuration names.
pub async fn open_store(config: &Config) -> Result<Arc<dyn OplogStore>, StoreError> {
    Ok(match &config.oplog.postgres_url {
        Some(url) => Arc::new(PostgresStore::connect(url).await?),
        None => {
            let path = config.oplog_sqlite_path();
            Arc::new(
                tokio::task::spawn_blocking(move || SqliteStore::open(&path))
                    .await
                    .map_err(|e| StoreError::Worker(e.to_string()))??,
            )
        }
    })
}

impl Node {
    /// Open the store, load the plugin directory, apply the entities of the
    /// configuration and refresh the rest from the store.
    pub async fn open(config: Config) -> Result<Node, NodeError> {
        create_dir(&config.data_dir)?;
        let data_dir_lock = DataDirLock::acquire(&config.data_dir)?;
        create_dir(&config.plugins.dir)?;
        let store = open_store(&config).await?;
        tracing::info!(backend = store.backend(), "oplog store open");
        let registry = Arc::new(PluginRegistry::new(PluginEngine::new(config.sandbox())?));
        let dir = config.plugins.dir.clone();
        let loader = registry.clone();
        let builtins = config.plugins.builtins;
        let failed = tokio::task::spawn_blocking(move || {
            let mut failed = Vec::new();
            if builtins {
                failed.extend(
                    loader
                        .load_builtins(crate::plugin::BUILTINS)
                        .into_iter()
                        .map(|(label, error)| (std::path::PathBuf::from(label), error)),
                );
            }
            failed.extend(loader.load_dir(&dir));
            failed
        })
        .await
        .map_err(|e| NodeError::Worker(e.to_string()))?;
        let loaded = registry.plugins();
        tracing::info!(
            dir = %config.plugins.dir.display(),
            loaded = loaded.len(),
            failed = failed.len(),
            plugins = %loaded.iter().map(|p| format!("{}@{} ({})", p.name, p.version, p.origin)).collect::<Vec<_>>().join(", "),
            "plugins loaded"
        );
        let dbs = CacheDbManager::open(
            config.cache_dir(),
            Duration::from_secs(config.cache.idle_close_secs),
        )?;
        let entities = Arc::new(EntityManager::new(
            store.clone(),
            registry.clone(),
            Some(dbs.clone()),
        ));
        entities.refresh().await?;
        // Sources that load an entity on request: a new entity of one of
        // them starts `pending` and is backfilled by it.
        entities.set_loadable_sources(config.sources.iter().filter_map(|s| match s {
            SourceConfig::Jsonl(c) => Some(c.name.clone()),
            SourceConfig::Mongo(c) => Some(c.name.clone()),
            SourceConfig::Schematic(_) => None,
        }));
        for entity in &config.entities {
            let spec = EntitySpec {
                name: entity.name.clone(),
                source: entity.source.clone(),
                collection: entity
                    .collection
                    .clone()
                    .unwrap_or_else(|| entity.name.clone()),
                plugin: entity.plugin.clone(),
                config: entity.config.clone(),
            };
            let status = entities.initial_status(&spec.source);
            entities
                .apply(spec, status)
                .await
                .map_err(|source| NodeError::Entity {
                    entity: entity.name.clone(),
                    source,
                })?;
        }
        if crate::schematic::env::active()
            || config
                .sources
                .iter()
                .any(|s| matches!(s, SourceConfig::Schematic(_)))
        {
            for entity in &config.entities {
                if entity.plugin == "schematic" && registry.plugin("schematic").is_none() {
                    return Err(NodeError::MissingPlugin {
                        plugin: entity.plugin.clone(),
                        entity: entity.name.clone(),
                        dir: config.plugins.dir.clone(),
                        hint: "it is built into emcachers: enable the built-in plugins (`plugins.builtins = true`, the default) or put a schematic plugin file there",
                    });
                }
            }
        }
        let statuses = SourceStatuses::of(&config.sources);
        let pipeline = Arc::new(
            Pipeline::new(store.clone(), entities.clone()).with_retry(config.retry.clone()),
        );
        Ok(Node {
            config,
            store,
            registry,
            entities,
            pipeline,
            dbs,
            jobs: JobServer::new(),
            statuses,
            watcher: None,
            api_addr: None,
            health_addr: None,
            writer: None,
            memory: None,
            _data_dir_lock: data_dir_lock,
        })
    }

    fn replicator_config(&self) -> ReplicatorConfig {
        ReplicatorConfig {
            batch_size: self.config.cache.batch_size.max(1),
            poll_interval: Duration::from_millis(self.config.cache.poll_ms.max(1)),
            dead_letter_after: self.config.cache.dead_letter_after.max(1),
            ..ReplicatorConfig::default()
        }
    }

    /// Open the SQLite cache replicator of this node.
    pub async fn replicator(&self) -> Result<SqliteReplicator, NodeError> {
        Ok(SqliteReplicator::open(
            self.store.clone(),
            self.dbs.clone(),
            self.entities.layouts(),
            self.replicator_config(),
        )
        .await?)
    }

    /// Apply the whole oplog to the SQLite caches once.
    pub async fn replicate_once(&self) -> Result<StepReport, NodeError> {
        Ok(self.replicator().await?.catch_up().await?)
    }

    /// The sources of the configuration.
    pub fn configured_sources(&self) -> Result<Vec<Box<dyn Source>>, NodeError> {
        let batch = self.config.oplog.batch_size.unwrap_or(1000);
        self.config
            .sources
            .iter()
            .map(|source| {
                build_source(
                    source,
                    batch,
                    &self.statuses,
                    &self.entities,
                    &self.config.retry,
                )
            })
            .collect()
    }

    /// Ingest one source until it ends.
    pub async fn ingest(&self, source: Box<dyn Source>) -> Result<IngestReport, NodeError> {
        let capacity = self.config.oplog.queue_batches.unwrap_or(4);
        Ok(run_source(
            source,
            self.pipeline.clone(),
            self.store.clone(),
            capacity,
            self.jobs.token(),
        )
        .await?)
    }

    /// The address the REST API listens on, once started.
    pub fn api_addr(&self) -> Option<std::net::SocketAddr> {
        self.api_addr
    }

    /// The address the health endpoints listen on, once started.
    pub fn health_addr(&self) -> Option<std::net::SocketAddr> {
        self.health_addr
    }

    /// What the health endpoints read.
    pub fn health_state(&self) -> HealthState {
        let datastreams = self.statuses.datastreams.iter().map(|(name, status)| {
            Arc::new(DatastreamProbe::new(name.clone(), status.clone())) as Arc<dyn SourceProbe>
        });
        let mongos = self.statuses.mongos.iter().map(|(name, status)| {
            Arc::new(MongoProbe::new(name.clone(), status.clone())) as Arc<dyn SourceProbe>
        });
        let sources: Vec<Arc<dyn SourceProbe>> = datastreams.chain(mongos).collect();
        // With a Schematic datastream, `/ready` answers Schematic's body.
        let body: Arc<dyn ReadinessBody> = if self.statuses.datastreams.is_empty() {
            Arc::new(GenericBody)
        } else {
            Arc::new(SchematicBody::new(
                self.version_entity(),
                self.entities.layouts(),
            ))
        };
        HealthState {
            sources,
            writers: self.writer.iter().cloned().collect(),
            body,
            store: self.store.clone(),
            started: std::time::Instant::now(),
            tasks: self.jobs.states(),
        }
    }

    /// The entity whose cache version `/ready` reports.
    fn version_entity(&self) -> String {
        if let Some(entity) = &self.config.health.version_entity {
            return entity.clone();
        }
        let fed_by_datastream = |e: &&crate::config::EntityConfig| {
            self.statuses
                .datastreams
                .iter()
                .any(|(name, _)| *name == e.source)
        };
        self.config
            .entities
            .iter()
            .find(fed_by_datastream)
            .or(self.config.entities.first())
            .map(|e| e.name.clone())
            .unwrap_or_default()
    }

    async fn bind(addr: &str) -> Result<tokio::net::TcpListener, NodeError> {
        tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| NodeError::Listen {
                addr: addr.to_owned(),
                source,
            })
    }

    /// Start everything that runs in the background: the REST API, the
    /// plugin watcher, the configured sources, the replicator and the
    /// periodic jobs.
    pub async fn start(&mut self) -> Result<(), NodeError> {
        self.start_writers().await?;
        if self.config.api.enabled {
            let addr = self.config.api.listen.clone();
            let listener = tokio::net::TcpListener::bind(&addr)
                .await
                .map_err(|source| NodeError::Listen {
                    addr: addr.clone(),
                    source,
                })?;
            self.api_addr = listener.local_addr().ok();
            let listener = shared_listener(listener, &addr)?;
            let router = api::router(api::ApiState {
                store: self.store.clone(),
                entities: self.entities.clone(),
                registry: self.registry.clone(),
                pipeline: self.pipeline.clone(),
                dbs: self.config.cache.enabled.then(|| self.dbs.clone()),
                memory: self.memory.clone(),
                health: Some(self.health_state()),
                system: Arc::new(api::system::SystemSampler::new()),
                pending_oplog_limit: self.config.api.pending_oplog_limit,
            });
            self.jobs.spawn("api", move |cancel| {
                let (listener, router) = (listener.try_clone(), router.clone());
                async move {
                    let served = match listener.and_then(tokio::net::TcpListener::from_std) {
                        Ok(listener) => api::serve(listener, router, cancel).await,
                        Err(error) => Err(error),
                    };
                    if let Err(error) = served {
                        tracing::error!(%error, "REST API stopped");
                    }
                }
            });
        }
        if self.config.plugins.watch {
            self.watcher = Some(PluginWatcher::start(
                self.registry.clone(),
                &self.config.plugins.dir,
            )?);
        }
        let sources = self.config.sources.clone();
        for (config, source) in sources.into_iter().zip(self.configured_sources()?) {
            let (pipeline, store) = (self.pipeline.clone(), self.store.clone());
            let capacity = self.config.oplog.queue_batches.unwrap_or(4);
            let batch = self.config.oplog.batch_size.unwrap_or(1000);
            let statuses = self.statuses.clone();
            let entities = self.entities.clone();
            let retry = self.config.retry.clone();
            let first = FirstRun::new(source);
            self.jobs
                .spawn(format!("source:{}", config.name()), move |cancel| {
                    let source = first.take().map_or_else(
                        || build_source(&config, batch, &statuses, &entities, &retry),
                        Ok,
                    );
                    let (pipeline, store) = (pipeline.clone(), store.clone());
                    source_task(source, pipeline, store, capacity, cancel)
                });
        }
        if self.config.health.enabled {
            let listener = Self::bind(&self.config.health.listen).await?;
            self.health_addr = listener.local_addr().ok();
            let listener = shared_listener(listener, &self.config.health.listen)?;
            let router = crate::health::router(self.health_state());
            tracing::info!(addr = ?self.health_addr, "health endpoints listening");
            self.jobs.spawn("health", move |cancel| {
                let (listener, router) = (listener.try_clone(), router.clone());
                async move {
                    let served = match listener.and_then(tokio::net::TcpListener::from_std) {
                        Ok(listener) => crate::health::serve(listener, router, cancel).await,
                        Err(error) => Err(error),
                    };
                    if let Err(error) = served {
                        tracing::error!(%error, "health endpoints stopped");
                    }
                }
            });
        }
        if self.config.cache.enabled {
            // Opened here so a failure fails `start`; a restart reopens it.
            let first = FirstRun::new(self.replicator().await?);
            let (store, dbs) = (self.store.clone(), self.dbs.clone());
            let config = self.replicator_config();
            let entities = self.entities.clone();
            self.jobs.spawn("replicator", move |cancel| {
                let first = first.take();
                let (store, dbs, config) = (store.clone(), dbs.clone(), config.clone());
                let layouts = entities.layouts();
                async move {
                    let replicator = match first {
                        Some(replicator) => replicator,
                        None => match SqliteReplicator::open(store, dbs, layouts, config).await {
                            Ok(replicator) => replicator,
                            Err(error) => {
                                return TaskExit::Failed(format!(
                                    "cannot reopen the replicator: {error}"
                                ));
                            }
                        },
                    };
                    replicator.run(cancel).await;
                    TaskExit::from(())
                }
            });
            let dbs = self.dbs.clone();
            self.jobs.every(
                "close-idle-caches",
                Duration::from_secs(self.config.jobs.idle_check_secs.max(1)),
                move || {
                    let dbs = dbs.clone();
                    async move {
                        let closed = dbs.close_idle();
                        if closed > 0 {
                            tracing::debug!(closed, "idle cache connections closed");
                        }
                        Ok::<(), String>(())
                    }
                },
            );
        }
        // A plugin loaded, replaced or unloaded may name new layouts: the
        // manager publishes them at once, which pushes them to the writers.
        let entities = self.entities.clone();
        self.jobs.spawn("layout-publisher", move |cancel| {
            let entities = entities.clone();
            let mut swaps = entities.registry().swaps();
            async move {
                loop {
                    tokio::select! {
                        _ = cancel.cancelled() => return TaskExit::Finished,
                        changed = swaps.changed() => {
                            if changed.is_err() {
                                return TaskExit::Failed("the plugin registry is gone".into());
                            }
                        }
                    }
                    swaps.mark_unchanged();
                    if let Err(error) = entities.refresh().await {
                        tracing::warn!(%error, "cannot publish the layouts of a plugin change; the periodic refresh tries again");
                    }
                }
            }
        });
        let entities = self.entities.clone();
        self.jobs.every(
            "entity-refresh",
            Duration::from_secs(self.config.jobs.entity_refresh_secs.max(1)),
            move || {
                let entities = entities.clone();
                async move { entities.refresh().await.map(|_| ()) }
            },
        );
        Ok(())
    }

    /// Start the cache writers other than the SQLite replicator: the Redis
    /// writer (or its in-memory target) when `[redis]` is configured.
    async fn start_writers(&mut self) -> Result<(), NodeError> {
        let Some(config) = self.config.redis.clone() else {
            return Ok(());
        };
        let writer = RedisWriter::open(
            self.store.clone(),
            self.registry.clone(),
            self.entities.layouts(),
            config.clone(),
        )
        .await?;
        // A restart reopens the writer, with a new status: `/ready` reads
        // whichever is current through the slot.
        let probe = Arc::new(ProbeSlot::new(writer.status()));
        self.writer = Some(probe.clone() as Arc<dyn CacheWriterProbe>);
        self.memory = writer.memory();
        let first = FirstRun::new(writer);
        let (store, registry) = (self.store.clone(), self.registry.clone());
        let entities = self.entities.clone();
        self.jobs.spawn("redis-writer", move |cancel| {
            let first = first.take();
            let (store, registry, config) = (store.clone(), registry.clone(), config.clone());
            let layouts = entities.layouts();
            let probe = probe.clone();
            async move {
                let writer = match first {
                    Some(writer) => writer,
                    None => match RedisWriter::open(store, registry, layouts, config).await {
                        Ok(writer) => {
                            probe.set(writer.status());
                            if writer.memory().is_some() {
                                tracing::warn!(
                                    "the restarted redis writer fills a new in-memory target; the API keeps the one it started with"
                                );
                            }
                            writer
                        }
                        Err(error) => {
                            return TaskExit::Failed(format!(
                                "cannot reopen the redis writer: {error}"
                            ));
                        }
                    },
                };
                writer.run(cancel).await;
                TaskExit::from(())
            }
        });
        Ok(())
    }

    /// The in-memory key cache, when the Redis writer targets memory.
    pub fn memory_cache(&self) -> Option<Arc<MemoryTarget>> {
        self.memory.clone()
    }

    /// Stop background work (waiting at most `grace`).
    pub async fn shutdown(mut self, grace: Duration) {
        self.watcher = None;
        if !self.jobs.shutdown(grace).await {
            tracing::warn!("some jobs did not stop in time");
        }
    }
}

/// The status of each configured source that keeps one, shared by its
/// restarts (a restarted source reports into the same).
#[derive(Clone, Default)]
pub struct SourceStatuses {
    /// Each Schematic datastream source, by name.
    pub datastreams: Vec<(String, Arc<DatastreamStatus>)>,
    /// Each MongoDB source (stream, scan progress, backfills), by name.
    pub mongos: Vec<(String, Arc<ScanStatus>)>,
}

impl SourceStatuses {
    /// A fresh status for each source of `sources` that keeps one.
    fn of(sources: &[SourceConfig]) -> Self {
        let mut statuses = SourceStatuses::default();
        for source in sources {
            match source {
                SourceConfig::Schematic(c) => {
                    statuses.datastreams.push((c.name.clone(), Arc::default()))
                }
                SourceConfig::Mongo(c) => statuses.mongos.push((c.name.clone(), Arc::default())),
                SourceConfig::Jsonl(_) => {}
            }
        }
        statuses
    }
}

/// A value built before a task starts (so a failure to build it fails
/// [`Node::start`]), handed to the task's first run; restarts build their own.
struct FirstRun<T>(std::sync::Mutex<Option<T>>);

impl<T> FirstRun<T> {
    fn new(value: T) -> Self {
        FirstRun(std::sync::Mutex::new(Some(value)))
    }

    fn take(&self) -> Option<T> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
    }
}

/// The bound socket of a server task, kept for the node's lifetime: every run
/// (restarts included) serves a clone of it, so the port never changes and
/// is never free for another process in between.
fn shared_listener(
    listener: tokio::net::TcpListener,
    addr: &str,
) -> Result<std::net::TcpListener, NodeError> {
    listener.into_std().map_err(|source| NodeError::Listen {
        addr: addr.to_owned(),
        source,
    })
}

/// Build the source `config` describes.
fn build_source(
    config: &SourceConfig,
    batch: usize,
    statuses: &SourceStatuses,
    entities: &Arc<EntityManager>,
    retry: &crate::ingest::retry::RetryConfig,
) -> Result<Box<dyn Source>, NodeError> {
    Ok(match config {
        SourceConfig::Jsonl(config) => Box::new(
            JsonlFileSource::new(&config.name, &config.path, batch)
                .following(entities.source_view(&config.name)),
        ),
        SourceConfig::Schematic(config) => {
            let status = statuses
                .datastreams
                .iter()
                .find(|(name, _)| name == &config.name)
                .map(|(_, status)| status.clone())
                .unwrap_or_default();
            Box::new(DatastreamSource::new(config.clone(), status)?)
        }
        SourceConfig::Mongo(config) => {
            // Only collections an entity is fed by are snapshotted (and
            // re-snapshotted after a drop or rename).
            let status = statuses
                .mongos
                .iter()
                .find(|(name, _)| name == &config.name)
                .map(|(_, status)| status.clone())
                .unwrap_or_default();
            Box::new(
                MongoSource::new(config.clone(), batch, entities.source_view(&config.name))
                    .with_status(status)
                    .with_retry(retry.clone()),
            )
        }
    })
}

/// One run of a source task: ingest until the source ends (finished: a
/// file read to its end, or shutdown) or fails (restarted).
async fn source_task(
    source: Result<Box<dyn Source>, NodeError>,
    pipeline: Arc<Pipeline>,
    store: Arc<dyn OplogStore>,
    capacity: usize,
    cancel: tokio_util::sync::CancellationToken,
) -> TaskExit {
    let source = match source {
        Ok(source) => source,
        Err(error) => return TaskExit::Failed(format!("cannot build the source: {error}")),
    };
    let name = source.name().to_owned();
    match run_source(source, pipeline, store, capacity, cancel).await {
        Ok(report) => {
            tracing::info!(source = %name, batches = report.batches, changes = report.changes,
                appended = report.appended, rejected = report.rejected, unrouted = report.unrouted, "source finished");
            TaskExit::Finished
        }
        Err(error) => {
            tracing::error!(source = %name, %error, "source stopped");
            TaskExit::Failed(error.to_string())
        }
    }
}
