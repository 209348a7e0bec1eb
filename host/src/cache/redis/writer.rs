//! The Redis cache backend: applies each batch of oplog rows as the cache
//! writes the entity's plugin derives (`keys`), in one pipeline per batch.
//! [`RedisCache`] implements [`CacheWriter`]; the [`Tailer`] reads the log,
//! wakes on commits and layout pushes, backs off and owns the breaker
//! ([`RedisWriter`] is the pair).
//!
//! - **Offset.** `{state_prefix}offset` is the last applied log id with the
//!   oplog's identity, written in the same pipeline as the data (after it).
//!   Applying a batch twice changes nothing. A missing offset (fresh or
//!   flushed Redis), one of another oplog or one above the log head starts
//!   a **bootstrap**: read the log head, write every live row of every
//!   in-scope entity from the latest-row table, then set the offset to that
//!   head and tail from there.
//! - **Remembered keys** (module `remembered`): a row's new keys
//!   replace the keys of the same version it had; a delete removes every
//!   key the row had.
//! - **Versions.** `{state_prefix}version:{entity}` is the layout version the
//!   cache was built with. Versions come from the layouts the entity manager
//!   publishes (pushed, or as published in the store by another node); the
//!   writer never asks a plugin. When a pushed layout names another version
//!   (a reload, a new configuration), the entity is rebuilt from its latest
//!   rows under the new keys; the old version's keys keep serving until the
//!   stale-version cleanup (the writer's housekeeping) removes them.
//! - **Deleted entities.** When an entity's layout is withdrawn and the
//!   store no longer defines it, its keys (found through the remembered-keys
//!   hash), the hash and its version key are removed.
//! - **Failures.** Every Redis failure counts on the circuit breaker; once
//!   it opens the tailer waits, keeping the offset: the oplog holds the
//!   backlog, and the failed batch is retried from the same offset. A row
//!   whose `keys` fails is narrowed down (bisecting the batch) and
//!   dead-lettered; rows of an entity without a plugin or a layout are
//!   counted as skipped and the entity is rebuilt from its latest rows once
//!   it has both.
//! - **Lock.** With the writer lock on, nothing is written unless this
//!   writer holds it (renewed by a task of its own while the tailer runs);
//!   after each (re)acquisition the writer re-reads its state from Redis.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::cleanup::{CleanupReport, cleanup};
use super::config::RedisWriterConfig;
use super::error::RedisWriterError;
use super::lock::WriterLock;
use super::memory::MemoryTarget;
use super::remembered::{Plan, Remembered, RememberedCache};
use super::status::{LockState, RedisWriterStatus};
use super::target::{Command, Reply, Target};
use crate::breaker::CircuitBreaker;
use crate::cache::dead_letter::{self, DeadRow, bisect_after};
use crate::cache::layout::{EntityLayout, LayoutMap, Layouts};
use crate::cache::offset::{BootstrapReason, Offset, Resume, resume};
use crate::cache::tailer::{
    CacheWriter, LatestPages, StepContext, StepReport, Tailer, TailerConfig, Waiting, WriterError,
};
use crate::oplog::{Op, OplogEntry, OplogStore};
use crate::plugin::{CacheWrite, ItemError, LoadedPlugin, PluginRegistry, Row, RowOp};

/// How often an idle writer re-reads its offset from Redis (to notice a
/// flushed or restarted Redis: state outside the oplog, so it is checked).
const STATE_CHECK_EVERY: Duration = Duration::from_secs(1);
/// How often a caught-up writer reads the log head and mirrors the replay
/// cursor.
const CURSOR_CHECK_EVERY: Duration = Duration::from_secs(1);
/// The writer's name on dead rows (`cache-writer:redis`).
const WRITER_NAME: &str = "redis";
/// Remembered-keys entries cached in memory at most.
const REMEMBERED_CACHE_MAX: usize = 200_000;
/// Retry delays after a failed step (before the breaker opens).
const ERROR_BACKOFF_MIN: Duration = Duration::from_millis(50);
const ERROR_BACKOFF_MAX: Duration = Duration::from_secs(2);

/// Whether an entity's rows are written, and by which plugin and version.
enum Scope {
    /// Not written (another cache's entity, or a deleted one).
    Out,
    /// Should be written, but no plugin serves it here or it has no layout.
    Missing,
    /// Written with this plugin under this layout version.
    In(Arc<LoadedPlugin>, String),
}

/// One row to apply.
struct Item {
    entity: String,
    doc_id: String,
    /// The log entry (0 for rows read from the latest rows).
    oplog_id: i64,
    op: Op,
    data: Option<String>,
}

fn due(last: Option<Instant>, every: Duration) -> bool {
    last.is_none_or(|at| at.elapsed() >= every)
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, RedisWriterError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| RedisWriterError::Worker(e.to_string()))
}

/// The answer of `keys` for one row.
type KeysResult = Result<Vec<CacheWrite>, ItemError>;

/// Redis (single node, cluster) or the in-process map as a [`CacheWriter`]
/// backend. See the module documentation.
pub struct RedisCache {
    store: Arc<dyn OplogStore>,
    registry: Arc<PluginRegistry>,
    config: RedisWriterConfig,
    target: Arc<Target>,
    breaker: Arc<CircuitBreaker>,
    status: Arc<RedisWriterStatus>,
    lock: Option<Arc<WriterLock>>,
    lock_epoch: u64,
    /// Renews the lock while the tailer runs.
    renewal: Option<JoinHandle<()>>,
    offset: i64,
    /// The offset and stored versions were read from Redis since the last
    /// failure or lock acquisition.
    synced: bool,
    /// Versions stored in Redis (`None`: known to be missing).
    stored: HashMap<String, Option<String>>,
    /// The layouts pushed at the current step.
    layouts: Arc<LayoutMap>,
    /// Layout versions resolved for the entities seen (pushed, else as
    /// published in the store). Cleared on a full step.
    current: HashMap<String, String>,
    remembered: RememberedCache,
    /// The entities defined in the store at the last full read.
    candidates: BTreeSet<String>,
    /// The entities defined in the store at the last check (`None`: not
    /// read yet).
    defined: Option<BTreeSet<String>>,
    last_state_check: Option<Instant>,
    last_cursor_check: Option<Instant>,
    cursor_written: Option<String>,
    /// The offset at the last cursor check: caught up at a new offset
    /// checks again at once.
    cursor_checked_at: i64,
    /// A Redis call succeeded during the current step.
    talked: bool,
    /// Dead rows committed whose batch is not written yet: a retried batch
    /// does not keep them twice. Emptied once the offset passes them.
    dead_pending: BTreeSet<(String, i64)>,
    /// When the stale-version cleanup runs next (`None`: never).
    next_cleanup: Option<Instant>,
}

/// The Redis cache writer: the [`Tailer`] of a [`RedisCache`].
pub type RedisWriter = Tailer<RedisCache>;

impl std::fmt::Debug for RedisCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisCache")
            .field("target", &self.target.kind())
            .field("offset", &self.offset)
            .field("synced", &self.synced)
            .finish()
    }
}

impl Tailer<RedisCache> {
    /// A writer from `store` into the target `config` names, deriving keys
    /// with the plugins of `registry` under the versions `layouts` pushes.
    /// Nothing is connected yet: the first step connects (so a writer can
    /// start while Redis is down), reads the offset from Redis and
    /// bootstraps when it is missing.
    pub async fn open(
        store: Arc<dyn OplogStore>,
        registry: Arc<PluginRegistry>,
        layouts: Layouts,
        config: RedisWriterConfig,
    ) -> Result<RedisWriter, RedisWriterError> {
        let tailer = TailerConfig {
            batch_size: config.batch_size,
            poll_interval: config.poll_interval(),
            backoff_min: ERROR_BACKOFF_MIN,
            backoff_max: ERROR_BACKOFF_MAX,
        };
        let cache = RedisCache::open(store.clone(), registry, config)?;
        let breaker = cache.breaker.clone();
        Ok(Tailer::new(cache, store, layouts, tailer).with_breaker(breaker))
    }

    /// The live status (cheap to clone and read from other tasks).
    pub fn status(&self) -> Arc<RedisWriterStatus> {
        self.writer().status.clone()
    }

    /// The settings.
    pub fn config(&self) -> &RedisWriterConfig {
        &self.writer().config
    }

    /// The in-process target, when the writer writes to memory.
    pub fn memory(&self) -> Option<Arc<MemoryTarget>> {
        self.writer().target.memory()
    }

    /// The owner token this writer puts into the lock key, if it locks.
    pub fn lock_token(&self) -> Option<&str> {
        self.writer().lock.as_deref().map(WriterLock::token)
    }

    /// See [`RedisCache::cleanup_now`].
    pub async fn cleanup_now(&mut self) -> Result<CleanupReport, RedisWriterError> {
        self.writer_mut().cleanup_now().await
    }

    /// Release the writer lock if this writer holds it.
    pub async fn release_lock(&self) -> Result<bool, RedisWriterError> {
        self.writer().release_lock().await
    }
}

impl RedisCache {
    /// The backend writing into the target `config` names, deriving keys
    /// with the plugins of `registry`. Nothing is connected yet.
    pub fn open(
        store: Arc<dyn OplogStore>,
        registry: Arc<PluginRegistry>,
        config: RedisWriterConfig,
    ) -> Result<RedisCache, RedisWriterError> {
        if config.batch_size == 0 {
            return Err(RedisWriterError::Config(
                "batch_size must be at least 1".into(),
            ));
        }
        if config.state_prefix.is_empty() {
            return Err(RedisWriterError::Config(
                "state_prefix must not be empty".into(),
            ));
        }
        if config.lock.enabled && config.lock.key.is_empty() {
            return Err(RedisWriterError::Config(
                "lock.key must not be empty".into(),
            ));
        }
        if let Some(cursor) = &config.replay_cursor
            && (cursor.key.is_empty() || cursor.source.is_empty())
        {
            return Err(RedisWriterError::Config(
                "replay_cursor needs a source and a key".into(),
            ));
        }
        let target = Arc::new(Target::new(&config)?);
        let breaker = Arc::new(CircuitBreaker::new(
            config.breaker_threshold,
            Duration::from_millis(config.breaker_timeout_ms),
        ));
        let lock_enabled = config.lock.enabled && target.memory().is_none();
        let status = Arc::new(RedisWriterStatus::new(
            target.kind(),
            breaker.clone(),
            if lock_enabled {
                LockState::Waiting
            } else {
                LockState::Disabled
            },
        ));
        let lock = lock_enabled.then(|| Arc::new(WriterLock::new(&config.lock, status.clone())));
        tracing::info!(
            target_kind = target.kind(),
            addr = %config.addr,
            cluster = config.cluster,
            lock = lock_enabled,
            ttl_ms = config.ttl().map_or(0, |t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX)),
            "redis writer opened"
        );
        let next_cleanup = config
            .cleanup_interval()
            .map(|every| Instant::now() + every);
        Ok(RedisCache {
            store,
            registry,
            config,
            target,
            breaker,
            status,
            lock,
            lock_epoch: 0,
            renewal: None,
            offset: 0,
            synced: false,
            stored: HashMap::new(),
            layouts: Arc::new(LayoutMap::new()),
            current: HashMap::new(),
            remembered: RememberedCache::new(REMEMBERED_CACHE_MAX),
            candidates: BTreeSet::new(),
            defined: None,
            last_state_check: None,
            last_cursor_check: None,
            cursor_written: None,
            cursor_checked_at: -1,
            talked: false,
            dead_pending: BTreeSet::new(),
            next_cleanup,
        })
    }

    /// The live status (cheap to clone and read from other tasks).
    pub fn status(&self) -> Arc<RedisWriterStatus> {
        self.status.clone()
    }

    // ------------------------------------------------------------ Redis calls

    async fn exec(
        &mut self,
        commands: &[Command],
        op: &'static str,
    ) -> Result<Vec<Reply>, RedisWriterError> {
        let replies = self.target.run(commands, op).await?;
        self.talked = true;
        Ok(replies)
    }

    async fn write(
        &mut self,
        phases: &[Vec<Command>],
        op: &'static str,
    ) -> Result<(), RedisWriterError> {
        if let Some(lock) = &self.lock
            && !lock.is_held()
        {
            return Err(RedisWriterError::LockNotHeld {
                key: self.config.lock.key.clone(),
            });
        }
        self.target.write(phases, op).await?;
        self.talked = true;
        Ok(())
    }

    /// Book the outcome of Redis work in the status (the breaker is booked
    /// by the tailer, or by [`RedisCache::cleanup_now`]).
    fn book<T>(&mut self, result: Result<&T, &RedisWriterError>) {
        match result {
            Ok(_) => {
                if self.talked {
                    self.status.set_connected(true);
                }
                self.status.clear_error();
            }
            Err(RedisWriterError::LockNotHeld { .. }) => {
                self.synced = false;
            }
            Err(error) => {
                if error.is_redis() {
                    self.status.set_connected(false);
                    // Redis may have restarted empty: re-read the offset.
                    self.synced = false;
                }
                self.status.error(error);
            }
        }
    }

    /// Take the lock if it is free; an error when another owner holds it.
    /// A new acquisition re-reads the state from Redis.
    async fn hold_lock(&mut self) -> Result<(), RedisWriterError> {
        let Some(lock) = self.lock.clone() else {
            return Ok(());
        };
        if !lock.is_held() {
            let held = lock.tick(&self.target).await?;
            self.talked = true;
            if !held {
                self.synced = false;
                return Err(RedisWriterError::LockNotHeld {
                    key: self.config.lock.key.clone(),
                });
            }
        }
        if lock.epoch() != self.lock_epoch {
            self.lock_epoch = lock.epoch();
            self.synced = false;
        }
        Ok(())
    }

    // ------------------------------------------------------------ scope

    fn explicit(&self) -> bool {
        !self.config.entities.is_empty()
    }

    /// Whether `entity` was deleted: the store no longer defines it and no
    /// plugin has it assigned. Its keys are purged and nothing is written.
    fn gone(&self, entity: &str) -> bool {
        self.defined
            .as_ref()
            .is_some_and(|defined| !defined.contains(entity))
            && !self.registry.is_assigned(entity)
    }

    /// Whether `entity` is this writer's at all (the configured entities,
    /// else every entity).
    fn wants(&self, entity: &str) -> bool {
        !self.explicit() || self.config.entities.iter().any(|e| e == entity)
    }

    /// How `entity`'s rows are written now (its version resolved by
    /// [`RedisCache::check_versions`]).
    fn scope(&self, entity: &str) -> Scope {
        if self.gone(entity) || !self.wants(entity) {
            return Scope::Out;
        }
        let plugin = self.registry.for_entity(entity);
        match (plugin, self.current.get(entity)) {
            (Some(plugin), Some(version)) => Scope::In(plugin, version.clone()),
            _ if self.explicit()
                || self.layouts.contains_key(entity)
                || self.current.contains_key(entity)
                || matches!(self.stored.get(entity), Some(Some(_))) =>
            {
                Scope::Missing
            }
            _ => Scope::Out,
        }
    }

    /// The entities to bootstrap and check: the configured ones, or every
    /// entity defined in the store (at the last full read) or with a pushed
    /// layout.
    async fn candidates(&mut self, fresh: bool) -> Result<Vec<String>, RedisWriterError> {
        if self.explicit() {
            return Ok(self.config.entities.clone());
        }
        if fresh || self.defined.is_none() {
            self.read_defined().await?;
        }
        let mut names = self.candidates.clone();
        names.extend(self.layouts.keys().cloned());
        Ok(names.into_iter().collect())
    }

    /// Re-read which entities the store defines.
    async fn read_defined(&mut self) -> Result<(), RedisWriterError> {
        let defined: BTreeSet<String> = self
            .store
            .entities()
            .await?
            .into_iter()
            .map(|e| e.name)
            .collect();
        self.candidates = defined.clone();
        self.defined = Some(defined);
        Ok(())
    }

    /// `entity`'s layout version: as pushed, else as published in the store
    /// (an entity another node created before this node's manager saw it).
    async fn resolve_version(&mut self, entity: &str) -> Result<Option<String>, RedisWriterError> {
        if let Some(version) = self.current.get(entity) {
            return Ok(Some(version.clone()));
        }
        let version = match self.layouts.get(entity) {
            Some(layout) => Some(layout.version.clone()),
            None => EntityLayout::load(self.store.as_ref(), entity)
                .await?
                .map(|layout| layout.version),
        };
        if let Some(version) = &version {
            self.current.insert(entity.to_owned(), version.clone());
        }
        Ok(version)
    }

    // ------------------------------------------------------------ steps

    /// Re-read which entities the store defines; purge the cache of every
    /// entity this writer holds state for that is gone (deleted): its keys
    /// (by the remembered-keys hash), the hash and its version key.
    async fn purge_deleted(&mut self) -> Result<(), RedisWriterError> {
        self.read_defined().await?;
        let gone: Vec<String> = self
            .stored
            .iter()
            .filter(|(entity, version)| version.is_some() && self.gone(entity))
            .map(|(entity, _)| entity.clone())
            .collect();
        for entity in gone {
            let mut report = StepReport::default();
            let removed = self.remove_unlisted(&entity, &mut report).await?;
            self.write(
                &[vec![
                    Command::Del {
                        key: self.config.keys_key(&entity),
                    },
                    Command::Del {
                        key: self.config.version_key(&entity),
                    },
                ]],
                "purge a deleted entity",
            )
            .await?;
            self.stored.insert(entity.clone(), None);
            self.current.remove(&entity);
            self.status.set_version(&entity, None);
            self.status.set_waiting(&entity, false);
            tracing::info!(entity = %entity, rows = removed, keys_deleted = report.keys_deleted, "deleted entity purged from the cache");
        }
        Ok(())
    }

    /// Read the offset and the stored versions from Redis; bootstrap when
    /// the offset is missing.
    async fn sync_state(&mut self, report: &mut StepReport) -> Result<(), RedisWriterError> {
        let candidates = self.candidates(!self.synced).await?;
        let mut commands = vec![Command::Get {
            key: self.config.offset_key(),
        }];
        commands.extend(candidates.iter().map(|entity| Command::Get {
            key: self.config.version_key(entity),
        }));
        let mut replies = self.exec(&commands, "read state").await?.into_iter();
        let offset = replies.next().and_then(Reply::into_value);
        self.stored.clear();
        for (entity, reply) in candidates.iter().zip(replies) {
            let version = reply.into_value();
            self.status.set_version(entity, version.as_deref());
            self.stored.insert(entity.clone(), version);
        }
        self.last_state_check = Some(Instant::now());
        let head = self.store.head().await?;
        match resume(offset.as_deref(), self.store.identity(), head) {
            Resume::Bootstrap(reason) => {
                if self.synced || reason != BootstrapReason::Missing {
                    tracing::warn!(
                        key = %self.config.offset_key(),
                        offset = self.offset,
                        %reason,
                        "redis cache bootstrapping from the latest rows"
                    );
                }
                self.bootstrap(&reason, report).await?;
            }
            Resume::After(offset) => {
                if self.synced && offset != self.offset {
                    tracing::warn!(
                        ours = self.offset,
                        redis = offset,
                        "offset in Redis changed behind the writer: resuming from it"
                    );
                }
                if !self.synced || offset != self.offset {
                    self.remembered.clear();
                    self.cursor_written = None;
                }
                self.offset = offset;
                self.status.set_applied(offset);
            }
        }
        self.synced = true;
        Ok(())
    }

    /// The offset `id` of this oplog, as saved in Redis.
    fn offset_command(&self, id: i64) -> Command {
        Command::SetState {
            key: self.config.offset_key(),
            value: Offset::new(self.store.identity(), id).encode(),
        }
    }

    /// Write every live row of every in-scope entity, then the offset = the
    /// log head read first. When the cache may hold another oplog's data
    /// (`reason`), rows it remembers that are not live here are deleted too.
    async fn bootstrap(
        &mut self,
        reason: &BootstrapReason,
        report: &mut StepReport,
    ) -> Result<(), RedisWriterError> {
        let started = std::time::Instant::now();
        let head = self.store.head().await?;
        self.remembered.clear();
        self.cursor_written = None;
        let candidates = self.candidates(true).await?;
        let mut versions = Vec::new();
        let mut rows = 0;
        for entity in candidates {
            if self.resolve_version(&entity).await?.is_none() {
                continue;
            }
            let (plugin, version) = match self.scope(&entity) {
                Scope::In(plugin, version) => (plugin, version),
                Scope::Missing => {
                    tracing::warn!(entity = %entity, "no plugin serves the entity here: not bootstrapped (rebuilt once one does)");
                    continue;
                }
                Scope::Out => continue,
            };
            rows += self.load_entity(&entity, &plugin, &version, report).await?;
            if reason.may_hold_foreign_data() {
                self.remove_unlisted(&entity, report).await?;
            }
            versions.push((entity, version));
        }
        let version_keys: Vec<Command> = versions
            .iter()
            .map(|(entity, version)| Command::SetState {
                key: self.config.version_key(entity),
                value: version.clone(),
            })
            .collect();
        let offset = vec![self.offset_command(head)];
        self.write(&[version_keys, offset], "bootstrap").await?;
        for (entity, version) in versions {
            self.status.set_version(&entity, Some(&version));
            self.status.set_waiting(&entity, false);
            self.stored.insert(entity, Some(version));
        }
        self.offset = head;
        self.status.set_applied(head);
        self.status.set_head(head);
        self.status.add_bootstrap();
        report.bootstrapped = true;
        tracing::info!(
            head,
            rows,
            %reason,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "redis cache bootstrapped from the latest rows"
        );
        Ok(())
    }

    /// Delete the rows that `entity`'s remembered-keys hash lists but that
    /// are not live in this oplog's latest rows (the cache held another
    /// oplog's data). Returns how many.
    async fn remove_unlisted(
        &mut self,
        entity: &str,
        report: &mut StepReport,
    ) -> Result<u64, RedisWriterError> {
        let replies = self
            .exec(
                &[Command::HKeys {
                    key: self.config.keys_key(entity),
                }],
                "list remembered rows",
            )
            .await?;
        let ids: Vec<String> = replies
            .into_iter()
            .next()
            .map(Reply::into_values)
            .unwrap_or_default()
            .into_iter()
            .flatten()
            .collect();
        let mut removed = 0u64;
        for chunk in ids.chunks(self.config.batch_size) {
            let live: BTreeSet<String> = self
                .store
                .latest(entity, chunk)
                .await?
                .into_iter()
                .filter(|row| row.op == Op::Upsert)
                .map(|row| row.doc_id)
                .collect();
            let items: Vec<Item> = chunk
                .iter()
                .filter(|id| !live.contains(*id))
                .map(|id| Item {
                    entity: entity.to_owned(),
                    doc_id: id.clone(),
                    oplog_id: 0,
                    op: Op::Delete,
                    data: None,
                })
                .collect();
            if items.is_empty() {
                continue;
            }
            removed += items.len() as u64;
            self.apply_items(items, &HashMap::new(), Vec::new(), None, report)
                .await?;
        }
        if removed > 0 {
            tracing::info!(
                entity,
                removed,
                "rows this oplog does not have removed from the cache"
            );
        }
        Ok(removed)
    }

    /// Write every live row of `entity` under `version` (pages of
    /// `batch_size`). Returns the rows read.
    async fn load_entity(
        &mut self,
        entity: &str,
        plugin: &Arc<LoadedPlugin>,
        version: &str,
        report: &mut StepReport,
    ) -> Result<u64, RedisWriterError> {
        let mut plugins = HashMap::new();
        plugins.insert(entity.to_owned(), (plugin.clone(), version.to_owned()));
        let mut pages = LatestPages::new(entity, self.config.batch_size);
        let mut rows = 0u64;
        while let Some(page) = pages.next(self.store.as_ref()).await? {
            rows += page.len() as u64;
            let items = page
                .into_iter()
                .filter(|r| r.op == Op::Upsert)
                .map(|r| Item {
                    entity: entity.to_owned(),
                    doc_id: r.doc_id,
                    oplog_id: r.oplog_id,
                    op: Op::Upsert,
                    data: r.data,
                })
                .collect();
            self.apply_items(items, &plugins, Vec::new(), None, report)
                .await?;
        }
        Ok(rows)
    }

    /// Compare the layout version of each of `entities` with the version
    /// stored in Redis; rebuild the entities whose version changed. An
    /// entity with no plugin or layout here waits (rebuilt once it has).
    async fn check_versions(
        &mut self,
        entities: BTreeSet<String>,
        report: &mut StepReport,
    ) -> Result<(), RedisWriterError> {
        let mut scoped: Vec<(String, Arc<LoadedPlugin>, String)> = Vec::new();
        for entity in entities {
            if self.gone(&entity) || !self.wants(&entity) {
                continue;
            }
            if self.resolve_version(&entity).await?.is_none() && self.explicit() {
                tracing::warn!(entity = %entity, "the entity has no published cache layout yet");
            }
            match self.scope(&entity) {
                Scope::In(plugin, version) => scoped.push((entity, plugin, version)),
                Scope::Missing => self.status.set_waiting(&entity, true),
                Scope::Out => {}
            }
        }
        let unknown: Vec<String> = scoped
            .iter()
            .map(|(entity, _, _)| entity)
            .filter(|entity| !self.stored.contains_key(*entity))
            .cloned()
            .collect();
        if !unknown.is_empty() {
            let commands: Vec<Command> = unknown
                .iter()
                .map(|entity| Command::Get {
                    key: self.config.version_key(entity),
                })
                .collect();
            let replies = self.exec(&commands, "read versions").await?;
            for (entity, reply) in unknown.into_iter().zip(replies) {
                self.stored.insert(entity, reply.into_value());
            }
        }
        for (entity, plugin, version) in scoped {
            let stored = self.stored.get(&entity).cloned().flatten();
            if stored.as_deref() == Some(version.as_str()) {
                self.status.set_waiting(&entity, false);
                continue;
            }
            let started = std::time::Instant::now();
            let rows = self.load_entity(&entity, &plugin, &version, report).await?;
            // Rows deleted while the entity had no version (or under the old
            // one, in another oplog) still have keys: remove them.
            self.remove_unlisted(&entity, report).await?;
            self.write(
                &[vec![Command::SetState {
                    key: self.config.version_key(&entity),
                    value: version.clone(),
                }]],
                "store version",
            )
            .await?;
            tracing::info!(
                entity = %entity,
                from = stored.as_deref().unwrap_or(""),
                to = %version,
                rows,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "entity rebuilt under a new cache version"
            );
            self.status.set_version(&entity, Some(&version));
            self.status.set_waiting(&entity, false);
            self.status.add_rebuild();
            self.stored.insert(entity, Some(version));
            report.rebuilt += 1;
        }
        Ok(())
    }

    /// Apply one batch of log entries and move the offset past it.
    async fn apply_log(
        &mut self,
        entries: Vec<OplogEntry>,
        report: &mut StepReport,
    ) -> Result<(), RedisWriterError> {
        let Some(last) = entries.last().map(|e| e.id) else {
            return Ok(());
        };
        let mut plugins: HashMap<String, (Arc<LoadedPlugin>, String)> = HashMap::new();
        let mut missing: BTreeMap<String, (usize, String)> = BTreeMap::new();
        let mut items = Vec::with_capacity(entries.len());
        let mut skipped = 0u64;
        for entry in entries {
            if !plugins.contains_key(&entry.entity) {
                match self.scope(&entry.entity) {
                    Scope::Out => {
                        report.ignored += 1;
                        continue;
                    }
                    Scope::Missing => {
                        missing
                            .entry(entry.entity.clone())
                            .or_insert_with(|| (0, entry.doc_id.clone()))
                            .0 += 1;
                        continue;
                    }
                    Scope::In(plugin, version) => {
                        plugins.insert(entry.entity.clone(), (plugin, version));
                    }
                }
            }
            items.push(Item {
                entity: entry.entity,
                doc_id: entry.doc_id,
                oplog_id: entry.id,
                op: entry.op,
                data: entry.data,
            });
        }
        let mut extra_state = Vec::new();
        for (entity, (rows, first)) in missing {
            tracing::warn!(entity = %entity, doc_id = %first, rows, error = "no plugin serves the entity here or it has no published layout", "entity waits: rebuilt from its latest rows once it has a version");
            skipped += rows as u64;
            self.status.set_waiting(&entity, true);
            // Forget the stored version: the entity is rebuilt from its
            // latest rows once a plugin serves it again.
            if matches!(self.stored.get(&entity), Some(Some(_))) {
                extra_state.push(Command::Del {
                    key: self.config.version_key(&entity),
                });
            }
            self.stored.insert(entity.clone(), None);
            self.status.set_version(&entity, None);
        }
        report.skipped += skipped as usize;
        self.status.add_skipped(skipped);
        self.apply_items(items, &plugins, extra_state, Some(last), report)
            .await?;
        self.offset = last;
        self.status.set_applied(last);
        Ok(())
    }

    /// Derive the writes of `items` (one `keys` call per entity, on a
    /// blocking thread), diff them against the remembered keys and write
    /// the batch: data, then remembered entries and `extra_state`, then the
    /// offset (when given).
    async fn apply_items(
        &mut self,
        items: Vec<Item>,
        plugins: &HashMap<String, (Arc<LoadedPlugin>, String)>,
        extra_state: Vec<Command>,
        offset: Option<i64>,
        report: &mut StepReport,
    ) -> Result<(), RedisWriterError> {
        // 1. keys(), one call per entity.
        let mut jobs: Vec<(String, Arc<LoadedPlugin>, Vec<Row>)> = Vec::new();
        let mut job_of: HashMap<String, usize> = HashMap::new();
        let mut slots: Vec<Option<(usize, usize)>> = Vec::with_capacity(items.len());
        let mut heads: Vec<(String, String, Op, i64)> = Vec::with_capacity(items.len());
        for item in items {
            let slot = match (item.op, item.data, plugins.get(&item.entity)) {
                (Op::Upsert, Some(data), Some((plugin, _))) => {
                    let job = *job_of.entry(item.entity.clone()).or_insert_with(|| {
                        jobs.push((item.entity.clone(), plugin.clone(), Vec::new()));
                        jobs.len() - 1
                    });
                    let rows = &mut jobs[job].2;
                    rows.push(Row {
                        entity: item.entity.clone(),
                        id: item.doc_id.clone(),
                        op: RowOp::Upsert,
                        data,
                    });
                    Some((job, rows.len() - 1))
                }
                _ => None,
            };
            slots.push(slot);
            heads.push((item.entity, item.doc_id, item.op, item.oplog_id));
        }
        // A call that fails as a whole (trap, deadline) is narrowed down to
        // the rows that cause it; only those fail.
        let mut results: Vec<(Vec<Row>, Vec<Option<KeysResult>>)> = if jobs.is_empty() {
            Vec::new()
        } else {
            blocking(move || {
                jobs.into_iter()
                    .map(|(entity, plugin, rows)| {
                        // The first call takes the rows by value (no copy);
                        // only a whole failure calls again, on parts.
                        let mut calls = 1;
                        let (rows, first) = plugin.keys_owned(&entity, rows);
                        let results = bisect_after(
                            &rows,
                            first,
                            &mut |part: &[Row]| plugin.keys(&entity, part),
                            &|error: &ItemError| matches!(error, ItemError::BatchFailed { .. }),
                            &mut calls,
                        );
                        if calls > 1 {
                            tracing::warn!(entity = %entity, plugin = %plugin.label(), rows = rows.len(), calls, "keys failed for a whole batch: narrowed to the rows that fail");
                        }
                        (rows, results.into_iter().map(Some).collect::<Vec<_>>())
                    })
                    .collect()
            })
            .await?
        };

        // 2. Remembered entries the cache lacks: one HMGET per entity.
        self.remembered.reserve(heads.len());
        let mut by_entity: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (entity, doc_id, _, _) in &heads {
            by_entity.entry(entity).or_default().push(doc_id);
        }
        let mut reads: Vec<(String, Vec<String>)> = Vec::new();
        for (entity, docs) in by_entity {
            let missing = self.remembered.missing(entity, docs);
            if !missing.is_empty() {
                reads.push((entity.to_owned(), missing));
            }
        }
        if !reads.is_empty() {
            let commands: Vec<Command> = reads
                .iter()
                .map(|(entity, fields)| Command::HMGet {
                    key: self.config.keys_key(entity),
                    fields: fields.clone(),
                })
                .collect();
            let replies = self.exec(&commands, "read remembered keys").await?;
            for ((entity, fields), reply) in reads.into_iter().zip(replies) {
                let values = reply.into_values();
                for (i, doc_id) in fields.iter().enumerate() {
                    let entry = values
                        .get(i)
                        .cloned()
                        .flatten()
                        .and_then(|text| Remembered::parse(&entity, doc_id, &text));
                    self.remembered.insert(&entity, doc_id, entry);
                }
            }
        }

        // 3. The plan, in log order.
        let mut plan = Plan::default();
        let (mut upserted, mut deleted) = (0usize, 0usize);
        let mut dead: Vec<DeadRow> = Vec::new();
        let dead_row = |entity: &str,
                        doc_id: &str,
                        oplog_id: i64,
                        data: Option<String>,
                        error: String| {
            let (plugin, version) = plugins
                .get(entity)
                .map(|(p, _)| (p.name().to_owned(), p.version().to_owned()))
                .unwrap_or_default();
            tracing::warn!(entity, doc_id, oplog_id, %error, "row dead-lettered: the redis writer cannot apply it (replay it from the rejected records)");
            DeadRow {
                writer: WRITER_NAME,
                entity: entity.to_owned(),
                doc_id: doc_id.to_owned(),
                oplog_id,
                op: Op::Upsert,
                data,
                plugin,
                plugin_version: version,
                error,
            }
        };
        for ((entity, doc_id, op, oplog_id), slot) in heads.into_iter().zip(slots) {
            let before = self.remembered.get(&entity, &doc_id).cloned().flatten();
            match (op, slot) {
                (Op::Delete, _) => {
                    plan.delete(&entity, &doc_id, before);
                    deleted += 1;
                }
                (Op::Upsert, None) => {
                    dead.push(dead_row(
                        &entity,
                        &doc_id,
                        oplog_id,
                        None,
                        "upsert row without data".to_owned(),
                    ));
                }
                (Op::Upsert, Some((job, index))) => {
                    let (rows, job_results) = match results.get_mut(job) {
                        Some((rows, results)) => (Some(rows), results.get_mut(index)),
                        None => (None, None),
                    };
                    let result = job_results.and_then(Option::take);
                    let data = || {
                        rows.and_then(|rows| rows.get_mut(index))
                            .map(|row| std::mem::take(&mut row.data))
                    };
                    match result {
                        Some(Ok(writes)) => {
                            let version = plugins
                                .get(&entity)
                                .map(|(_, v)| v.as_str())
                                .unwrap_or_default();
                            let writes = writes.into_iter().map(|w| (w.key, w.value)).collect();
                            plan.upsert(&entity, &doc_id, version, writes, before);
                            upserted += 1;
                        }
                        Some(Err(error)) => {
                            dead.push(dead_row(
                                &entity,
                                &doc_id,
                                oplog_id,
                                data(),
                                error.to_string(),
                            ));
                        }
                        None => {
                            dead.push(dead_row(
                                &entity,
                                &doc_id,
                                oplog_id,
                                data(),
                                "the plugin returned no result".to_owned(),
                            ));
                        }
                    }
                }
            }
        }

        // 4. Dead rows are committed before the offset may pass them (once:
        // a batch retried after a failed write does not keep them again).
        dead.retain(|row| {
            row.oplog_id == 0
                || !self
                    .dead_pending
                    .contains(&(row.entity.clone(), row.oplog_id))
        });
        let keys: Vec<(String, i64)> = dead
            .iter()
            .filter(|row| row.oplog_id > 0)
            .map(|row| (row.entity.clone(), row.oplog_id))
            .collect();
        let dead_lettered = dead_letter::commit(self.store.as_ref(), dead).await? as u64;
        self.dead_pending.extend(keys);
        if dead_lettered > 0 {
            self.status.add_dead_lettered(dead_lettered);
            report.dead_lettered += dead_lettered as usize;
        }

        // 5. Write: data, then remembered entries, then the offset.
        let ttl = self.config.ttl();
        let config = &self.config;
        let mut out = plan.commands(ttl, |entity| config.keys_key(entity));
        out.state.extend(extra_state);
        let offset_phase: Vec<Command> = offset
            .map(|offset| self.offset_command(offset))
            .into_iter()
            .collect();
        self.write(
            &[
                std::mem::take(&mut out.data),
                std::mem::take(&mut out.state),
                offset_phase,
            ],
            "write batch",
        )
        .await?;
        for (entity, doc_id, entry) in out.remembered {
            self.remembered.insert(&entity, &doc_id, entry);
        }
        if let Some(offset) = offset {
            self.dead_pending.retain(|(_, id)| *id > offset);
        }
        self.status
            .add_batch((upserted + deleted) as u64, 0, out.written, out.deleted);
        report.upserted += upserted;
        report.deleted += deleted;
        report.keys_written += out.written;
        report.keys_deleted += out.deleted;
        Ok(())
    }

    /// Caught up: note the log head and mirror the replay cursor if it
    /// changed. The position is read before the head, so when the head is
    /// applied, so are the rows the position stands for.
    async fn mirror_cursor(&mut self) -> Result<(), RedisWriterError> {
        self.last_cursor_check = Some(Instant::now());
        self.cursor_checked_at = self.offset;
        let position = match &self.config.replay_cursor {
            Some(cursor) => self.store.source_position(&cursor.source).await?,
            None => None,
        };
        let head = self.store.head().await?;
        self.status.set_head(head);
        let (Some(cursor), Some(position)) = (self.config.replay_cursor.clone(), position) else {
            return Ok(());
        };
        if head > self.offset || self.cursor_written.as_ref() == Some(&position) {
            return Ok(());
        }
        self.write(
            &[vec![Command::SetState {
                key: cursor.key.clone(),
                value: position.clone(),
            }]],
            "mirror replay cursor",
        )
        .await?;
        tracing::debug!(key = %cursor.key, position = %position, "replay cursor mirrored");
        self.cursor_written = Some(position);
        Ok(())
    }

    /// Run the stale-version cleanup now: delete the keys under
    /// `cleanup_prefixes` whose version is not the current version of any
    /// in-scope entity (after re-checking the versions, so a pending
    /// rebuild happens first). Refused while the breaker is open.
    pub async fn cleanup_now(&mut self) -> Result<CleanupReport, RedisWriterError> {
        if let Err(open) = self.breaker.check() {
            return Err(RedisWriterError::BreakerOpen {
                retry_in: open.retry_in,
            });
        }
        self.talked = false;
        let result = self.guarded_cleanup().await;
        match &result {
            Ok(_) if self.talked => self.breaker.success(),
            Err(error) if error.is_redis() => self.breaker.failure(),
            _ => {}
        }
        self.book(result.as_ref());
        if let Ok(report) = &result {
            self.status.add_cleanup(report.removed);
            tracing::info!(
                removed = report.removed,
                scanned = report.scanned,
                nodes = report.nodes,
                versions = ?report.versions,
                "stale-version cleanup done"
            );
        }
        result
    }

    async fn guarded_cleanup(&mut self) -> Result<CleanupReport, RedisWriterError> {
        self.hold_lock().await?;
        let mut report = StepReport::default();
        self.sync_state(&mut report).await?;
        let candidates = self.candidates(false).await?;
        self.check_versions(candidates.into_iter().collect(), &mut report)
            .await?;
        let versions: BTreeSet<String> = self.status.versions().into_values().collect();
        let result = cleanup(&self.target, &self.config.cleanup_prefixes, &versions).await?;
        self.talked = true;
        Ok(result)
    }

    /// Release the writer lock if this writer holds it.
    pub async fn release_lock(&self) -> Result<bool, RedisWriterError> {
        match &self.lock {
            Some(lock) => lock.release(&self.target).await,
            None => Ok(false),
        }
    }
}

impl WriterError for RedisWriterError {
    fn target_failed(&self) -> bool {
        self.is_redis()
    }

    fn waiting(&self) -> Option<Waiting> {
        match self {
            RedisWriterError::LockNotHeld { .. } => Some(Waiting::Lock),
            _ => None,
        }
    }
}

#[async_trait]
impl CacheWriter for RedisCache {
    type Error = RedisWriterError;

    fn name(&self) -> &'static str {
        WRITER_NAME
    }

    fn read_position(&self) -> i64 {
        self.offset
    }

    fn offset(&self) -> i64 {
        self.offset
    }

    /// Hold the lock; re-read the offset and stored versions from Redis
    /// (bootstrapping when the offset is missing or not this oplog's) on a
    /// full step, after a reconnect or lock acquisition, and every
    /// `STATE_CHECK_EVERY` (a flushed Redis is state outside the oplog);
    /// on a full step, also re-check every version and purge deleted
    /// entities.
    async fn sync(&mut self, full: bool, cx: &mut StepContext<'_>) -> Result<(), RedisWriterError> {
        self.talked = false;
        self.layouts = cx.layouts.clone();
        if full {
            self.current.clear();
        }
        self.hold_lock().await?;
        let probing = !self.status.connected();
        if full || probing || !self.synced || due(self.last_state_check, STATE_CHECK_EVERY) {
            self.sync_state(cx.report).await?;
        }
        if full {
            self.purge_deleted().await?;
            let candidates = self.candidates(false).await?;
            self.check_versions(candidates.into_iter().collect(), cx.report)
                .await?;
        }
        Ok(())
    }

    async fn layouts_changed(
        &mut self,
        changed: &BTreeSet<String>,
        cx: &mut StepContext<'_>,
    ) -> Result<(), RedisWriterError> {
        self.layouts = cx.layouts.clone();
        for entity in changed {
            self.current.remove(entity);
        }
        if changed
            .iter()
            .any(|entity| !cx.layouts.contains_key(entity))
        {
            // A withdrawn layout: the entity may be deleted.
            self.purge_deleted().await?;
        }
        self.check_versions(changed.clone(), cx.report).await
    }

    async fn apply(
        &mut self,
        entries: Vec<OplogEntry>,
        cx: &mut StepContext<'_>,
    ) -> Result<(), RedisWriterError> {
        let entities: BTreeSet<String> = entries
            .iter()
            .filter(|e| !self.current.contains_key(&e.entity))
            .map(|e| e.entity.clone())
            .collect();
        if !entities.is_empty() {
            self.check_versions(entities, cx.report).await?;
        }
        self.apply_log(entries, cx.report).await
    }

    async fn caught_up(
        &mut self,
        full: bool,
        _cx: &mut StepContext<'_>,
    ) -> Result<(), RedisWriterError> {
        if full
            || self.cursor_checked_at != self.offset
            || due(self.last_cursor_check, CURSOR_CHECK_EVERY)
        {
            self.mirror_cursor().await?;
        }
        Ok(())
    }

    fn settle(&mut self, outcome: Result<(), &RedisWriterError>) {
        self.book(outcome.as_ref().map_err(|e| *e));
    }

    fn set_caught_up(&self, caught_up: bool) {
        self.status.set_caught_up(caught_up);
    }

    fn lock_wait(&self) -> Duration {
        self.lock
            .as_ref()
            .map_or(self.config.poll_interval(), |l| l.renew_every())
    }

    fn housekeeping_due(&self) -> Option<Instant> {
        self.next_cleanup
    }

    async fn housekeeping(&mut self) -> Result<(), RedisWriterError> {
        self.next_cleanup = self
            .config
            .cleanup_interval()
            .map(|every| Instant::now() + every);
        self.cleanup_now().await.map(|_| ())
    }

    /// Renew the lock every `ttl / 3` on a task of its own.
    async fn start(&mut self, cancel: &CancellationToken) {
        self.renewal = self.lock.clone().map(|lock| {
            let target = self.target.clone();
            let stop = cancel.child_token();
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(lock.renew_every()) => {}
                    }
                    if let Err(error) = lock.tick(&target).await {
                        tracing::warn!(%error, "writer lock renewal failed");
                    }
                }
            })
        });
    }

    /// Stop renewing and release the lock.
    async fn stop(&mut self) {
        if let Some(renewal) = self.renewal.take() {
            renewal.abort();
        }
        if let Some(lock) = &self.lock
            && lock.is_held()
            && let Err(error) = self.release_lock().await
        {
            tracing::warn!(%error, "cannot release the writer lock");
        }
    }
}
