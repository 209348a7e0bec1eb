//! The cache replicator: tails the oplog from its own saved offset and
//! applies it, entity by entity, to the per-entity SQLite databases.
//!
//! Offsets: each entity database records the highest oplog id it applied in
//! the same transaction as the rows (so applying is idempotent and a batch
//! lands whole); the replicator's own offset — where to resume reading the
//! log — is saved in a local metadata database (`{root}/replicator.sqlite`)
//! after each batch. A crash between the two re-reads a batch whose entries
//! every database then skips.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};
use tokio_util::sync::CancellationToken;

use super::entity_db::CacheDbError;
use super::layout::EntityLayout;
use super::manager::CacheDbManager;
use crate::oplog::{OplogEntry, OplogStore, StoreError};

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
}

impl Default for ReplicatorConfig {
    fn default() -> Self {
        ReplicatorConfig {
            batch_size: 5000,
            poll_interval: Duration::from_millis(50),
            rebuild_page: 5000,
        }
    }
}

/// Counters of one replication step.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct StepReport {
    /// Log entries read.
    pub read: usize,
    /// Rows upserted.
    pub upserted: usize,
    /// Rows deleted.
    pub deleted: usize,
    /// Entries skipped (already applied, or entity without a layout).
    pub skipped: usize,
    /// Databases rebuilt.
    pub rebuilt: usize,
    /// The offset after the step.
    pub offset: i64,
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

    fn offset(&self) -> Result<i64, ReplicatorError> {
        let value: Option<String> = self
            .conn
            .query_row(
                "SELECT value FROM metadata WHERE key = 'oplog_offset'",
                [],
                |r| r.get(0),
            )
            .optional()
            .map_err(|source| ReplicatorError::Meta {
                path: self.path.clone(),
                source,
            })?;
        Ok(value.and_then(|v| v.parse().ok()).unwrap_or(0))
    }

    fn save_offset(&self, offset: i64) -> Result<(), ReplicatorError> {
        self.conn
            .execute(
                "INSERT INTO metadata (key, value) VALUES ('oplog_offset', ?1)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                params![offset.to_string()],
            )
            .map_err(|source| ReplicatorError::Meta {
                path: self.path.clone(),
                source,
            })?;
        Ok(())
    }
}

/// Applies the oplog to per-entity SQLite caches.
pub struct SqliteReplicator {
    store: Arc<dyn OplogStore>,
    dbs: CacheDbManager,
    config: ReplicatorConfig,
    meta: Arc<Mutex<LocalMeta>>,
    offset: i64,
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ReplicatorError> + Send + 'static,
) -> Result<T, ReplicatorError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| ReplicatorError::Worker(e.to_string()))?
}

impl SqliteReplicator {
    /// A replicator from `store` into `dbs`, resuming from the offset saved
    /// in `dbs`' root.
    pub async fn open(
        store: Arc<dyn OplogStore>,
        dbs: CacheDbManager,
        config: ReplicatorConfig,
    ) -> Result<SqliteReplicator, ReplicatorError> {
        let path = dbs.root().join("replicator.sqlite");
        let (meta, offset) = blocking(move || {
            let meta = LocalMeta::open(&path)?;
            let offset = meta.offset()?;
            Ok((meta, offset))
        })
        .await?;
        Ok(SqliteReplicator {
            store,
            dbs,
            config,
            meta: Arc::new(Mutex::new(meta)),
            offset,
        })
    }

    /// The offset: every log entry up to it has been handled.
    pub fn offset(&self) -> i64 {
        self.offset
    }

    /// The database manager.
    pub fn dbs(&self) -> &CacheDbManager {
        &self.dbs
    }

    /// Read and apply one batch. Returns what it did; `read == 0` means the
    /// replicator is caught up.
    pub async fn step(&mut self) -> Result<StepReport, ReplicatorError> {
        let entries = self
            .store
            .read_log(self.offset, self.config.batch_size)
            .await?;
        let mut report = StepReport {
            read: entries.len(),
            offset: self.offset,
            ..StepReport::default()
        };
        let Some(last) = entries.last().map(|e| e.id) else {
            return Ok(report);
        };

        // Group by entity, keeping log order within each.
        let mut order: Vec<&str> = Vec::new();
        let mut groups: HashMap<&str, Vec<usize>> = HashMap::new();
        for (index, entry) in entries.iter().enumerate() {
            groups
                .entry(entry.entity.as_str())
                .or_insert_with(|| {
                    order.push(entry.entity.as_str());
                    Vec::new()
                })
                .push(index);
        }
        let mut layouts: HashMap<String, Option<EntityLayout>> = HashMap::new();
        for entity in &order {
            layouts.insert(
                (*entity).to_owned(),
                EntityLayout::load(self.store.as_ref(), entity).await?,
            );
        }
        for entity in order {
            let indexes = &groups[entity];
            let Some(layout) = layouts.remove(entity).flatten() else {
                // No published layout (plugin not loaded yet): the database
                // is bootstrapped from the latest rows once it is.
                report.skipped += indexes.len();
                continue;
            };
            if self.ensure_layout(entity, &layout).await? {
                report.rebuilt += 1;
            }
            let batch: Vec<OplogEntry> = indexes.iter().map(|&i| entries[i].clone()).collect();
            let dbs = self.dbs.clone();
            let name = entity.to_owned();
            let applied = blocking(move || {
                let refs: Vec<&OplogEntry> = batch.iter().collect();
                Ok(dbs.apply(&name, &refs)?)
            })
            .await?;
            if let Some(applied) = applied {
                report.upserted += applied.upserted;
                report.deleted += applied.deleted;
                report.skipped += applied.skipped;
            }
        }
        let meta = self.meta.clone();
        blocking(move || {
            meta.lock()
                .map_err(|_| ReplicatorError::Worker("metadata lock poisoned".into()))?
                .save_offset(last)
        })
        .await?;
        self.offset = last;
        report.offset = last;
        Ok(report)
    }

    /// Make sure `entity`'s database exists with `layout`: create it from the
    /// latest rows when it is missing, rebuild it when its version differs.
    /// Returns whether it (re)built.
    pub async fn ensure_layout(
        &self,
        entity: &str,
        layout: &EntityLayout,
    ) -> Result<bool, ReplicatorError> {
        let dbs = self.dbs.clone();
        let name = entity.to_owned();
        let state = blocking(move || Ok(dbs.state(&name)?)).await?;
        if state.as_ref().is_some_and(|s| s.version == layout.version) {
            return Ok(false);
        }
        self.rebuild(entity, layout).await?;
        Ok(true)
    }

    /// Rebuild `entity`'s database from the latest-row table under `layout`.
    /// The old file keeps serving until the new one is complete.
    pub async fn rebuild(
        &self,
        entity: &str,
        layout: &EntityLayout,
    ) -> Result<u64, ReplicatorError> {
        let head = self.store.head().await?;
        let (dbs, name, spec) = (self.dbs.clone(), entity.to_owned(), layout.clone());
        let mut rebuild = blocking(move || Ok(dbs.begin_rebuild(&name, &spec, head)?)).await?;
        let mut after: Option<String> = None;
        let mut loaded = 0u64;
        loop {
            let page = self
                .store
                .latest_page(entity, after.as_deref(), self.config.rebuild_page)
                .await?;
            let Some(last) = page.last().map(|r| r.doc_id.clone()) else {
                break;
            };
            let (n, back) = blocking(move || {
                let n = rebuild.load(&page)?;
                Ok((n, rebuild))
            })
            .await?;
            rebuild = back;
            loaded += n as u64;
            after = Some(last);
        }
        let dbs = self.dbs.clone();
        blocking(move || Ok(dbs.finish_rebuild(rebuild)?)).await?;
        tracing::info!(entity, version = %layout.version, rows = loaded, from_oplog_id = head, "entity cache rebuilt");
        Ok(loaded)
    }

    /// Apply batches until the log is exhausted; returns the total.
    pub async fn catch_up(&mut self) -> Result<StepReport, ReplicatorError> {
        let mut total = StepReport {
            offset: self.offset,
            ..StepReport::default()
        };
        loop {
            let step = self.step().await?;
            if step.read == 0 {
                return Ok(total);
            }
            total.read += step.read;
            total.upserted += step.upserted;
            total.deleted += step.deleted;
            total.skipped += step.skipped;
            total.rebuilt += step.rebuilt;
            total.offset = step.offset;
        }
    }

    /// Replicate until `cancel` fires. Errors are logged and retried with
    /// backoff: the store being unreachable pauses replication, it does not
    /// end it.
    pub async fn run(mut self, cancel: CancellationToken) {
        let mut backoff = self.config.poll_interval;
        loop {
            let result = tokio::select! {
                _ = cancel.cancelled() => return,
                result = self.step() => result,
            };
            let wait = match result {
                Ok(report) if report.read > 0 => {
                    tracing::debug!(
                        read = report.read,
                        upserted = report.upserted,
                        deleted = report.deleted,
                        offset = report.offset,
                        "replicated"
                    );
                    backoff = self.config.poll_interval;
                    continue;
                }
                Ok(_) => self.config.poll_interval,
                Err(error) => {
                    tracing::warn!(%error, retry_in_ms = backoff.as_millis() as u64, "replication step failed");
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                    backoff
                }
            };
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
}
