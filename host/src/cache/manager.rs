//! The cache DB manager: opens entity databases on demand, closes those
//! idle for too long, rebuilds a database under a new layout while the old
//! file keeps serving readers, and removes an entity's directory.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::entity_db::{Applied, CacheDbError, EntityDb};
use super::layout::EntityLayout;
use crate::oplog::{LatestRow, OplogEntry};

struct Open {
    db: EntityDb,
    last_used: Instant,
}

/// Per-entity SQLite databases under one root (`dbs/{entity}/db.sqlite`).
#[derive(Clone)]
pub struct CacheDbManager {
    root: PathBuf,
    idle_timeout: Duration,
    open: Arc<Mutex<HashMap<String, Open>>>,
}

/// What the manager knows of an entity's database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbState {
    /// The layout version it was built with.
    pub version: String,
    /// The highest oplog id applied.
    pub applied_id: i64,
}

impl CacheDbManager {
    /// A manager for databases under `root`, closing connections idle longer
    /// than `idle_timeout`.
    pub fn new(root: impl Into<PathBuf>, idle_timeout: Duration) -> Self {
        CacheDbManager {
            root: root.into(),
            idle_timeout,
            open: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory of `entity`.
    pub fn entity_dir(&self, entity: &str) -> PathBuf {
        self.root.join(entity)
    }

    /// The database file of `entity`.
    pub fn db_path(&self, entity: &str) -> PathBuf {
        self.entity_dir(entity).join("db.sqlite")
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Open>> {
        self.open
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Run `work` on `entity`'s open database, opening it first when needed.
    /// `None` when it does not exist (yet).
    fn with_db<T>(
        &self,
        entity: &str,
        work: impl FnOnce(&mut EntityDb) -> Result<T, CacheDbError>,
    ) -> Result<Option<T>, CacheDbError> {
        let mut open = self.lock();
        if !open.contains_key(entity) {
            match EntityDb::open(&self.db_path(entity), entity)? {
                Some(db) => {
                    open.insert(
                        entity.to_owned(),
                        Open {
                            db,
                            last_used: Instant::now(),
                        },
                    );
                }
                None => return Ok(None),
            }
        }
        let Some(slot) = open.get_mut(entity) else {
            return Ok(None);
        };
        slot.last_used = Instant::now();
        work(&mut slot.db).map(Some)
    }

    /// The layout version and applied id of `entity`'s database, if it exists.
    pub fn state(&self, entity: &str) -> Result<Option<DbState>, CacheDbError> {
        self.with_db(entity, |db| {
            Ok(DbState {
                version: db.layout().version.clone(),
                applied_id: db.applied_id(),
            })
        })
    }

    /// Apply entries of `entity`; `None` when its database does not exist.
    pub fn apply(
        &self,
        entity: &str,
        entries: &[&OplogEntry],
    ) -> Result<Option<Applied>, CacheDbError> {
        self.with_db(entity, |db| db.apply(entries))
    }

    /// Row count of `entity`'s table.
    pub fn row_count(&self, entity: &str) -> Result<Option<u64>, CacheDbError> {
        self.with_db(entity, |db| db.row_count())
    }

    /// Begin a rebuild: a fresh database beside the live one.
    pub fn begin_rebuild(
        &self,
        entity: &str,
        layout: &EntityLayout,
        applied_id: i64,
    ) -> Result<Rebuild, CacheDbError> {
        // Unique per rebuild: two replicators in one process never share a file.
        static REBUILDS: AtomicU64 = AtomicU64::new(0);
        let n = REBUILDS.fetch_add(1, Ordering::Relaxed);
        let path = self
            .entity_dir(entity)
            .join(format!("db.sqlite.rebuild-{}-{n}", std::process::id()));
        remove_db_files(&path)?;
        let db = EntityDb::create(&path, entity, layout, applied_id)?;
        Ok(Rebuild {
            db,
            entity: entity.to_owned(),
        })
    }

    /// Swap a finished rebuild in: the live connection is closed and the new
    /// file renamed over the old one (readers that open afterwards see it).
    pub fn finish_rebuild(&self, rebuild: Rebuild) -> Result<(), CacheDbError> {
        let Rebuild { db, entity } = rebuild;
        let built = db.path().to_owned();
        drop(db);
        let mut open = self.lock();
        open.remove(&entity);
        let live = self.db_path(&entity);
        for suffix in ["-wal", "-shm"] {
            let side = PathBuf::from(format!("{}{suffix}", live.display()));
            remove_file_if_exists(&side)?;
        }
        std::fs::rename(&built, &live).map_err(|source| CacheDbError::Io {
            path: live.clone(),
            source,
        })?;
        Ok(())
    }

    /// Close and delete `entity`'s directory.
    pub fn remove(&self, entity: &str) -> Result<bool, CacheDbError> {
        self.lock().remove(entity);
        let dir = self.entity_dir(entity);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(source) => Err(CacheDbError::Io { path: dir, source }),
        }
    }

    /// Close connections idle longer than the timeout; returns how many.
    pub fn close_idle(&self) -> usize {
        let mut open = self.lock();
        let before = open.len();
        let timeout = self.idle_timeout;
        open.retain(|_, slot| slot.last_used.elapsed() < timeout);
        before - open.len()
    }

    /// How many databases are open.
    pub fn open_count(&self) -> usize {
        self.lock().len()
    }

    /// Entities that have a directory under the root.
    pub fn entities_on_disk(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return Vec::new();
        };
        entries
            .filter_map(|e| e.ok())
            .filter(|e| e.path().is_dir())
            .filter_map(|e| e.file_name().to_str().map(str::to_owned))
            .collect()
    }
}

/// A rebuild in progress (see [`CacheDbManager::begin_rebuild`]).
pub struct Rebuild {
    db: EntityDb,
    entity: String,
}

impl Rebuild {
    /// Load one page of latest rows.
    pub fn load(&mut self, rows: &[LatestRow]) -> Result<usize, CacheDbError> {
        self.db.load(rows)
    }
}

fn remove_file_if_exists(path: &Path) -> Result<(), CacheDbError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(CacheDbError::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

fn remove_db_files(path: &Path) -> Result<(), CacheDbError> {
    remove_file_if_exists(path)?;
    for suffix in ["-wal", "-shm", "-journal"] {
        remove_file_if_exists(&PathBuf::from(format!("{}{suffix}", path.display())))?;
    }
    Ok(())
}
