//! The cache replicator: tails the oplog from its own saved offset and
//! applies it, entity by entity, to the per-entity SQLite databases.
//!
//! Offsets: each entity database records the highest oplog id it applied in
//! the same transaction as the rows (so applying is idempotent and a batch
//! lands whole); the replicator's own offset — where to resume reading the
//! log — is saved in a local metadata database (`{root}/replicator.sqlite`)
//! after each batch. A crash between the two re-reads a batch whose entries
//! every database then skips.
//!
//! Isolation: an error applying one entity's entries (a unique index its
//! rows break, a damaged file) does not stop the others. The entity is put
//! aside in [`FailedEntities`](super::isolation::FailedEntities): its entries
//! are held back, it is retried on its own with backoff (re-reading the log
//! from the last entry it handled), and the saved offset stays at or below
//! that entry until it catches up, so a restart re-reads what it misses.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, params};

use super::dead_letter::{self, DeadRow};
use super::entity_db::Applied;
use super::entity_db::CacheDbError;
use super::isolation::{EntityFailure, FailedEntities};
use super::layout::{EntityLayout, LayoutMap, Layouts};
use super::manager::CacheDbManager;
use super::offset::{BootstrapReason, Offset, Resume, resume};
use super::tailer::{
    CacheWriter, LatestPages, StepContext, StepReport, Tailer, TailerConfig, WriterError,
};
use crate::oplog::{LatestRow, OplogEntry, OplogStore, REPLICATOR_OFFSET_KEY, StoreError};

/// Why replication stopped or a step failed.
#[derive(Debug, thiserror::Error)]
pub enum ReplicatorError {
    /// The oplog store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A cache database failed.
    #[error(transparent)]
    CacheDb(#[from] CacheDbError),
    /// The local metadata database failed.
    #[error("replicator metadata {path}: {source}")]
    Meta {
        /// The file.
        path: PathBuf,
        /// The error.
        source: rusqlite::Error,
    },
    /// A blocking task failed.
    #[error("replicator worker failed: {0}")]
    Worker(String),
}

/// Replicator settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicatorConfig {
    /// Log entries read per batch.
    pub batch_size: usize,
    /// How long to wait when the log has nothing new.
    pub poll_interval: Duration,
    /// Latest rows read per page during a rebuild.
    pub rebuild_page: usize,
    /// How long a failing entity waits before its first retry; the wait
    /// doubles with each consecutive failure.
    pub retry_initial: Duration,
    /// The longest wait between two retries of a failing entity.
    pub retry_max: Duration,
    /// After this many consecutive failures of an entity, its entries are
    /// applied bisecting: the rows that fail on their own are kept as
    /// rejected records (`cache-writer:sqlite`) and the rest land.
    pub dead_letter_after: u32,
}

impl Default for ReplicatorConfig {
    fn default() -> Self {
        ReplicatorConfig {
            batch_size: 5000,
            poll_interval: Duration::from_millis(50),
            rebuild_page: 5000,
            retry_initial: Duration::from_millis(200),
            retry_max: Duration::from_secs(30),
            dead_letter_after: 3,
        }
    }
}

/// What a running replicator shows: its offset, how many entity applies
/// failed, and the entities being retried on their own.
#[derive(Debug, Default)]
pub struct ReplicatorStatus {
    offset: AtomicI64,
    failures: AtomicU64,
    recoveries: AtomicU64,
    dead_lettered: AtomicU64,
    caught_up: std::sync::atomic::AtomicBool,
    failing: Mutex<Vec<EntityFailure>>,
}

impl ReplicatorStatus {
    /// The saved offset: every log entry up to it is applied.
    pub fn offset(&self) -> i64 {
        self.offset.load(Ordering::Relaxed)
    }

    /// Whether the running replicator's last step found nothing new (it
    /// waits for a commit or its poll).
    pub fn caught_up(&self) -> bool {
        self.caught_up.load(Ordering::Acquire)
    }

    /// Rows kept as rejected records so far.
    pub fn dead_lettered_total(&self) -> u64 {
        self.dead_lettered.load(Ordering::Relaxed)
    }

    /// Entity applies (or retries) that failed since the start.
    pub fn failures_total(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Failing entities that caught up since the start.
    pub fn recoveries_total(&self) -> u64 {
        self.recoveries.load(Ordering::Relaxed)
    }

    /// The entities failing now, by name.
    pub fn failing(&self) -> Vec<EntityFailure> {
        self.failing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn set_failing(&self, failing: Vec<EntityFailure>) {
        *self.failing.lock().unwrap_or_else(|p| p.into_inner()) = failing;
    }
}

/// The local metadata database of a cache node.
struct LocalMeta {
    conn: Connection,
    path: PathBuf,
}

impl LocalMeta {
    fn open(path: &Path) -> Result<LocalMeta, ReplicatorError> {
        let err = |source| ReplicatorError::Meta {
            path: path.to_owned(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| {
                ReplicatorError::CacheDb(CacheDbError::Io {
                    path: dir.to_owned(),
                    source: e,
                })
            })?;
        }
        let conn = Connection::open(path).map_err(err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(err)?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS metadata (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        )
        .map_err(err)?;
        Ok(LocalMeta {
            conn,
            path: path.to_owned(),
        })
    }

    /// The saved offset, as [`Offset::encode`] wrote it.
    fn offset(&self) -> Result<Option<String>, ReplicatorError> {
        let value: Option<String> = self
            .conn
            .query_row(
                "SELECT value FROM metadata WHERE key = ?1",
                [REPLICATOR_OFFSET_KEY],
                |r| r.get(0),
            )
            .optional()
            .map_err(|source| ReplicatorError::Meta {
                path: self.path.clone(),
                source,
            })?;
        Ok(value)
    }

    fn save_offset(&self, offset: &Offset) -> Result<(), ReplicatorError> {
        self.conn
            .execute(
                "INSERT INTO metadata (key, value) VALUES (?1, ?2)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                params![REPLICATOR_OFFSET_KEY, offset.encode()],
            )
            .map_err(|source| ReplicatorError::Meta {
                path: self.path.clone(),
                source,
            })?;
        Ok(())
    }
}

/// The replicator's name on dead rows (`cache-writer:sqlite`).
const WRITER_NAME: &str = "sqlite";

/// The per-entity SQLite databases as a [`CacheWriter`] backend.
pub struct SqliteCaches {
    store: Arc<dyn OplogStore>,
    dbs: CacheDbManager,
    config: ReplicatorConfig,
    meta: Arc<Mutex<LocalMeta>>,
    /// Where the main tail reads from: every entry up to it is applied,
    /// skipped, or held back for a failing entity.
    read_offset: i64,
    /// The offset last saved in `replicator.sqlite`.
    saved_offset: i64,
    failed: FailedEntities,
    status: Arc<ReplicatorStatus>,
    /// The published layouts of the current step.
    layouts: Arc<LayoutMap>,
    /// Entities whose pushed layout change failed to apply: tried again at
    /// the next step.
    pending_layouts: BTreeSet<String>,
}

/// Applies the oplog to per-entity SQLite caches: the [`Tailer`] of
/// [`SqliteCaches`].
pub type SqliteReplicator = Tailer<SqliteCaches>;

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ReplicatorError> + Send + 'static,
) -> Result<T, ReplicatorError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| ReplicatorError::Worker(e.to_string()))?
}

impl Tailer<SqliteCaches> {
    /// A replicator from `store` into `dbs`, resuming from the offset saved
    /// in `dbs`' root, told layout changes by `layouts`.
    pub async fn open(
        store: Arc<dyn OplogStore>,
        dbs: CacheDbManager,
        layouts: Layouts,
        config: ReplicatorConfig,
    ) -> Result<SqliteReplicator, ReplicatorError> {
        let tailer = TailerConfig {
            batch_size: config.batch_size,
            poll_interval: config.poll_interval,
            backoff_min: config.poll_interval,
            backoff_max: Duration::from_secs(10),
        };
        let caches = SqliteCaches::open(store.clone(), dbs, config).await?;
        Ok(Tailer::new(caches, store, layouts, tailer))
    }

    /// The database manager.
    pub fn dbs(&self) -> &CacheDbManager {
        &self.writer().dbs
    }

    /// The status handle (offset, failures, failing entities), readable
    /// while the replicator runs.
    pub fn status(&self) -> Arc<ReplicatorStatus> {
        self.writer().status.clone()
    }

    /// The entities failing now, by name.
    pub fn failing(&self) -> Vec<EntityFailure> {
        self.writer().failed.snapshot()
    }

    /// See [`SqliteCaches::ensure_layout`].
    pub async fn ensure_layout(
        &self,
        entity: &str,
        layout: &EntityLayout,
    ) -> Result<bool, ReplicatorError> {
        self.writer().ensure_layout(entity, layout).await
    }

    /// See [`SqliteCaches::rebuild`].
    pub async fn rebuild(
        &self,
        entity: &str,
        layout: &EntityLayout,
    ) -> Result<u64, ReplicatorError> {
        self.writer().rebuild(entity, layout).await
    }
}

impl SqliteCaches {
    /// The backend over `dbs`, resuming from the offset saved in `dbs`'
    /// root (bringing every database to this oplog when that offset is
    /// missing or names another).
    pub async fn open(
        store: Arc<dyn OplogStore>,
        dbs: CacheDbManager,
        config: ReplicatorConfig,
    ) -> Result<SqliteCaches, ReplicatorError> {
        let path = dbs.root().join("replicator.sqlite");
        let (meta, saved) = blocking(move || {
            let meta = LocalMeta::open(&path)?;
            let saved = meta.offset()?;
            Ok((meta, saved))
        })
        .await?;
        let head = store.head().await?;
        let (offset, bootstrap) = match resume(saved.as_deref(), store.identity(), head) {
            Resume::After(offset) => (offset, None),
            Resume::Bootstrap(reason) => {
                if reason != BootstrapReason::Missing {
                    tracing::warn!(%reason, "sqlite caches: reading the oplog from its start and rebuilding every entity database of another oplog");
                }
                (0, Some(reason))
            }
        };
        let status = dbs.replicator_status();
        status.offset.store(offset, Ordering::Relaxed);
        status.set_failing(Vec::new());
        let replicator = SqliteCaches {
            store,
            dbs,
            layouts: Arc::new(LayoutMap::new()),
            pending_layouts: BTreeSet::new(),
            failed: FailedEntities::new(config.retry_initial, config.retry_max),
            config,
            meta: Arc::new(Mutex::new(meta)),
            read_offset: offset,
            // Saved again at the first step, with this oplog's identity.
            saved_offset: -1,
            status,
        };
        if bootstrap.is_some_and(|reason| reason.may_hold_foreign_data()) {
            replicator.ensure_all_layouts().await;
        }
        Ok(replicator)
    }

    /// Bring the database of every entity the store defines to its
    /// published layout and this oplog (after the offset was lost or named
    /// another oplog). A failure is logged: that entity is handled again
    /// when its entries are read.
    async fn ensure_all_layouts(&self) {
        let mut names: std::collections::BTreeSet<String> =
            self.dbs.entities_on_disk().into_iter().collect();
        match self.store.entities().await {
            Ok(entities) => names.extend(entities.into_iter().map(|e| e.name)),
            Err(error) => {
                tracing::warn!(%error, "cannot list entities to check their caches");
            }
        }
        for name in names {
            let result = match EntityLayout::load(self.store.as_ref(), &name).await {
                Ok(Some(layout)) => self.ensure_layout(&name, &layout).await.map(|_| ()),
                Ok(None) => Ok(()),
                Err(error) => Err(error.into()),
            };
            if let Err(error) = result {
                tracing::warn!(entity = %name, %error, "entity cache not checked; it is when its entries are read");
            }
        }
    }

    /// The database manager.
    pub fn dbs(&self) -> &CacheDbManager {
        &self.dbs
    }

    /// Apply one batch of the log: group it by entity (log order within
    /// each) and apply each group in one transaction; an entity whose group
    /// fails is put aside and retried on its own while the others go on.
    async fn apply_batch(
        &mut self,
        entries: Vec<OplogEntry>,
        report: &mut StepReport,
    ) -> Result<(), ReplicatorError> {
        let Some(last) = entries.last().map(|e| e.id) else {
            return Ok(());
        };
        let mut order: Vec<String> = Vec::new();
        let mut groups: HashMap<String, Vec<OplogEntry>> = HashMap::new();
        for entry in entries {
            groups
                .entry(entry.entity.clone())
                .or_insert_with(|| {
                    order.push(entry.entity.clone());
                    Vec::new()
                })
                .push(entry);
        }
        for entity in order {
            let Some(group) = groups.remove(&entity) else {
                continue;
            };
            if self.failed.contains(&entity) {
                // Held back: its retry re-reads these entries.
                continue;
            }
            let first = group.first().map_or(self.read_offset + 1, |e| e.id);
            match self.apply_group(&entity, group, false).await {
                Ok(applied) => report.add_counts(&applied),
                Err(error) => {
                    report.failed += 1;
                    self.record_failure(&entity, first - 1, &error);
                }
            }
        }
        self.read_offset = last;
        self.save_offset().await
    }

    /// Apply one entity's entries (log order): bring its database to the
    /// published layout (building it when missing), then apply them in one
    /// transaction. An entity without a published layout skips them.
    ///
    /// `dead_letter` (an entity that keeps failing): apply them in halves,
    /// down to single rows ([`dead_letter::bisect`]); a row that fails alone
    /// is committed as a rejected record (`cache-writer:sqlite`), the others
    /// land. Errors that are not a row's (the layout, the store) still fail
    /// the group.
    async fn apply_group(
        &self,
        entity: &str,
        group: Vec<OplogEntry>,
        dead_letter: bool,
    ) -> Result<StepReport, ReplicatorError> {
        let mut counts = StepReport::default();
        let pushed = self.layouts.get(entity).cloned();
        let layout = match pushed {
            Some(layout) => Some(layout),
            // Not pushed yet (another node's new entity): as published.
            None => EntityLayout::load(self.store.as_ref(), entity).await?,
        };
        let Some(layout) = layout else {
            // No published layout (plugin not loaded yet): the database
            // is bootstrapped from the latest rows once it is.
            counts.skipped = group.len();
            return Ok(counts);
        };
        match self.ensure_layout_with(entity, &layout, dead_letter).await {
            Ok(true) => counts.rebuilt += 1,
            Ok(false) => {}
            Err(ReplicatorError::CacheDb(CacheDbError::Retired { .. })) => {
                // Deleted while its entries were read: they go with it.
                tracing::debug!(
                    entity,
                    entries = group.len(),
                    "entity deleted; its entries are not applied"
                );
                counts.skipped = group.len();
                return Ok(counts);
            }
            Err(error) => return Err(error),
        }
        let dbs = self.dbs.clone();
        let name = entity.to_owned();
        let (applied, dead) = blocking(move || {
            if !dead_letter {
                let refs: Vec<&OplogEntry> = group.iter().collect();
                return Ok((dbs.apply(&name, &refs)?.unwrap_or_default(), Vec::new()));
            }
            let mut applied = Applied::default();
            let mut calls = 0;
            let results = dead_letter::bisect(
                &group,
                &mut |part: &[OplogEntry]| {
                    let refs: Vec<&OplogEntry> = part.iter().collect();
                    match dbs.apply(&name, &refs) {
                        Ok(done) => {
                            if let Some(done) = done {
                                applied.upserted += done.upserted;
                                applied.deleted += done.deleted;
                                applied.skipped += done.skipped;
                            }
                            part.iter().map(|_| Ok(())).collect()
                        }
                        Err(error) => {
                            let error = error.to_string();
                            part.iter().map(|_| Err(error.clone())).collect()
                        }
                    }
                },
                &|_: &String| true,
                &mut calls,
            );
            let dead: Vec<DeadRow> = group
                .into_iter()
                .zip(results)
                .filter_map(|(entry, result)| {
                    result.err().map(|error| DeadRow {
                        writer: WRITER_NAME,
                        entity: entry.entity,
                        doc_id: entry.doc_id,
                        oplog_id: entry.id,
                        op: entry.op,
                        data: entry.data,
                        plugin: entry.plugin,
                        plugin_version: entry.plugin_version,
                        error,
                    })
                })
                .collect();
            Ok((applied, dead))
        })
        .await?;
        counts.dead_lettered = self.commit_dead(dead).await?;
        counts.upserted = applied.upserted;
        counts.deleted = applied.deleted;
        counts.skipped = applied.skipped;
        Ok(counts)
    }

    /// Keep `dead` as rejected records (logged and counted); returns how many.
    async fn commit_dead(&self, dead: Vec<DeadRow>) -> Result<usize, ReplicatorError> {
        for row in &dead {
            tracing::warn!(entity = %row.entity, doc_id = %row.doc_id, oplog_id = row.oplog_id, error = %row.error, "row dead-lettered: the sqlite cache cannot apply it (replay it from the rejected records)");
        }
        let committed = dead_letter::commit(self.store.as_ref(), dead).await?;
        self.status
            .dead_lettered
            .fetch_add(committed as u64, Ordering::Relaxed);
        Ok(committed)
    }

    /// Note a failure of `entity` (everything of it up to `resume_after` is
    /// handled): log it, count it, schedule its retry.
    fn record_failure(&mut self, entity: &str, resume_after: i64, error: &ReplicatorError) {
        let (attempts, wait) =
            self.failed
                .record(entity, resume_after, error.to_string(), Instant::now());
        self.status.failures.fetch_add(1, Ordering::Relaxed);
        self.status.set_failing(self.failed.snapshot());
        tracing::warn!(
            entity,
            resume_after,
            attempts,
            retry_in_ms = wait.as_millis() as u64,
            %error,
            "cannot apply entity to its cache; retrying it on its own, other entities go on"
        );
    }

    /// Retry every failing entity that is due: re-read the log from its
    /// position up to the main tail's, for it alone. One that catches up
    /// rejoins the main tail; one that fails again waits longer.
    async fn retry_failed(&mut self, report: &mut StepReport) {
        for (entity, resume_after) in self.failed.due(Instant::now()) {
            match self.catch_up_entity(&entity, resume_after, report).await {
                Ok(()) => {
                    self.failed.recover(&entity);
                    self.status.recoveries.fetch_add(1, Ordering::Relaxed);
                    self.status.set_failing(self.failed.snapshot());
                    report.recovered += 1;
                    tracing::info!(entity = %entity, offset = self.read_offset, "entity cache caught up after failures");
                }
                Err((at, error)) => {
                    report.failed += 1;
                    self.record_failure(&entity, at, &error);
                }
            }
        }
    }

    /// Apply `entity`'s entries after `from` up to the main tail's read
    /// offset. On error, returns how far it got with the error.
    async fn catch_up_entity(
        &mut self,
        entity: &str,
        from: i64,
        report: &mut StepReport,
    ) -> Result<(), (i64, ReplicatorError)> {
        let mut position = from;
        while position < self.read_offset {
            let page = self
                .store
                .read_log(position, self.config.batch_size)
                .await
                .map_err(|e| (position, e.into()))?;
            let Some(last) = page.last().map(|e| e.id) else {
                break;
            };
            let group: Vec<OplogEntry> = page
                .into_iter()
                .filter(|e| e.id <= self.read_offset && e.entity == entity)
                .collect();
            if let Some(first) = group.first().map(|e| e.id) {
                let attempts = self
                    .failed
                    .snapshot()
                    .iter()
                    .find(|f| f.entity == entity)
                    .map_or(0, |f| f.attempts);
                let applied = self
                    .apply_group(entity, group, attempts >= self.config.dead_letter_after)
                    .await
                    .map_err(|e| (first - 1, e))?;
                report.add_counts(&applied);
            }
            position = last.min(self.read_offset);
            self.failed.advance(entity, position);
        }
        Ok(())
    }

    /// Save the offset when it moved.
    async fn save_offset(&mut self) -> Result<(), ReplicatorError> {
        let offset = self.failed.safe_offset(self.read_offset);
        self.status.offset.store(offset, Ordering::Relaxed);
        if offset == self.saved_offset {
            return Ok(());
        }
        let meta = self.meta.clone();
        let saved = Offset::new(self.store.identity(), offset);
        blocking(move || {
            meta.lock()
                .map_err(|_| ReplicatorError::Worker("metadata lock poisoned".into()))?
                .save_offset(&saved)
        })
        .await?;
        self.saved_offset = offset;
        Ok(())
    }

    /// Make sure `entity`'s database exists with `layout`: create it from the
    /// latest rows when it is missing, rebuild it when its version differs.
    /// Returns whether it (re)built.
    pub async fn ensure_layout(
        &self,
        entity: &str,
        layout: &EntityLayout,
    ) -> Result<bool, ReplicatorError> {
        self.ensure_layout_with(entity, layout, false).await
    }

    /// [`ensure_layout`](Self::ensure_layout); `dead_letter`: a rebuild
    /// keeps rows that fail on their own as rejected records instead of
    /// failing.
    async fn ensure_layout_with(
        &self,
        entity: &str,
        layout: &EntityLayout,
        dead_letter: bool,
    ) -> Result<bool, ReplicatorError> {
        let dbs = self.dbs.clone();
        let name = entity.to_owned();
        let state = blocking(move || Ok(dbs.state(&name)?)).await?;
        if state.as_ref().is_some_and(|s| {
            layout.is_served_by(&s.version, s.generation) && s.oplog == self.store.identity()
        }) {
            return Ok(false);
        }
        self.rebuild_with(entity, layout, dead_letter).await?;
        Ok(true)
    }

    /// Rebuild `entity`'s database from the latest-row table under `layout`.
    /// The old file keeps serving until the new one is complete.
    pub async fn rebuild(
        &self,
        entity: &str,
        layout: &EntityLayout,
    ) -> Result<u64, ReplicatorError> {
        self.rebuild_with(entity, layout, false).await
    }

    async fn rebuild_with(
        &self,
        entity: &str,
        layout: &EntityLayout,
        dead_letter: bool,
    ) -> Result<u64, ReplicatorError> {
        let head = self.store.head().await?;
        let (dbs, name, spec) = (self.dbs.clone(), entity.to_owned(), layout.clone());
        let applied = Offset::new(self.store.identity(), head);
        let mut rebuild = blocking(move || Ok(dbs.begin_rebuild(&name, &spec, &applied)?)).await?;
        let mut pages = LatestPages::new(entity, self.config.rebuild_page);
        let mut loaded = 0u64;
        while let Some(page) = pages.next(self.store.as_ref()).await? {
            let name = entity.to_owned();
            let (n, dead, back) = blocking(move || {
                let error = match rebuild.load(&page) {
                    Ok(n) => return Ok((n, Vec::new(), rebuild)),
                    Err(error) if !dead_letter || page.len() < 2 => return Err(error.into()),
                    Err(error) => error,
                };
                // A page that fails as a whole: load it in halves, down to
                // single rows; rows that fail alone are dead-lettered. When
                // every row fails alone the cause is not a row's: fail.
                let mut n = 0;
                let mut calls = 0;
                let results = dead_letter::bisect(
                    &page,
                    &mut |part: &[LatestRow]| match rebuild.load(part) {
                        Ok(done) => {
                            n += done;
                            part.iter().map(|_| Ok(())).collect()
                        }
                        Err(error) => {
                            let error = error.to_string();
                            part.iter().map(|_| Err(error.clone())).collect()
                        }
                    },
                    &|_: &String| true,
                    &mut calls,
                );
                if results.iter().all(Result::is_err) {
                    return Err(error.into());
                }
                let dead: Vec<DeadRow> = page
                    .into_iter()
                    .zip(results)
                    .filter_map(|(row, result)| {
                        result.err().map(|error| DeadRow {
                            writer: WRITER_NAME,
                            entity: name.clone(),
                            doc_id: row.doc_id,
                            oplog_id: row.oplog_id,
                            op: row.op,
                            data: row.data,
                            plugin: String::new(),
                            plugin_version: String::new(),
                            error,
                        })
                    })
                    .collect();
                Ok((n, dead, rebuild))
            })
            .await?;
            rebuild = back;
            self.commit_dead(dead).await?;
            loaded += n as u64;
        }
        let dbs = self.dbs.clone();
        blocking(move || Ok(dbs.finish_rebuild(rebuild)?)).await?;
        tracing::info!(entity, version = %layout.version, rows = loaded, from_oplog_id = head, "entity cache rebuilt");
        Ok(loaded)
    }
}

impl WriterError for ReplicatorError {
    fn target_failed(&self) -> bool {
        // No breaker: a failing database is isolated per entity, and the
        // store being unreachable is retried with backoff.
        false
    }
}

#[async_trait]
impl CacheWriter for SqliteCaches {
    type Error = ReplicatorError;

    fn name(&self) -> &'static str {
        WRITER_NAME
    }

    fn read_position(&self) -> i64 {
        self.read_offset
    }

    /// The saved offset: a failing entity holds it at the last entry it
    /// handled.
    fn offset(&self) -> i64 {
        self.failed.safe_offset(self.read_offset)
    }

    async fn sync(&mut self, _full: bool, cx: &mut StepContext<'_>) -> Result<(), ReplicatorError> {
        self.layouts = cx.layouts.clone();
        self.retry_failed(cx.report).await;
        Ok(())
    }

    async fn layouts_changed(
        &mut self,
        changed: &BTreeSet<String>,
        cx: &mut StepContext<'_>,
    ) -> Result<(), ReplicatorError> {
        let mut entities = std::mem::take(&mut self.pending_layouts);
        entities.extend(changed.iter().cloned());
        for entity in entities {
            // A failing entity is brought to its layout by its retry.
            if self.failed.contains(&entity) {
                continue;
            }
            let Some(layout) = cx.layouts.get(&entity).cloned() else {
                continue;
            };
            match self.ensure_layout(&entity, &layout).await {
                Ok(true) => cx.report.rebuilt += 1,
                Ok(false) => {}
                Err(error) => {
                    tracing::warn!(entity = %entity, version = %layout.version, %error, "cannot bring the entity cache to its new layout; trying again");
                    self.pending_layouts.insert(entity);
                }
            }
        }
        Ok(())
    }

    async fn apply(
        &mut self,
        entries: Vec<OplogEntry>,
        cx: &mut StepContext<'_>,
    ) -> Result<(), ReplicatorError> {
        self.apply_batch(entries, cx.report).await
    }

    async fn caught_up(
        &mut self,
        _full: bool,
        _cx: &mut StepContext<'_>,
    ) -> Result<(), ReplicatorError> {
        // A recovered entity may have moved the safe offset.
        self.save_offset().await
    }

    fn settle(&mut self, _outcome: Result<(), &ReplicatorError>) {}

    fn set_caught_up(&self, caught_up: bool) {
        self.status.caught_up.store(caught_up, Ordering::Release);
    }
}
