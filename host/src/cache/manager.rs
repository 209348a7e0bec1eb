//! The cache DB manager: opens entity databases on demand, closes those
//! idle for too long, rebuilds a database under a new layout while the old
//! file keeps serving readers, and removes an entity's directory.
//!
//! A rebuild writes `{entity}/db.sqlite.rebuild-{pid}-{n}` beside the live
//! file. A [`Rebuild`] that is dropped without [`CacheDbManager::finish_rebuild`]
//! (a failed page, a constraint its rows break) removes its file; files left
//! by a process that died mid-rebuild are swept by [`CacheDbManager::open`].
//!
//! Removing an entity ([`CacheDbManager::remove`]) retires its life: under
//! the manager's lock the directory is renamed aside (`.removing-…`, a name
//! no entity can have) and the life's generation is remembered, so a rebuild
//! or a writer that still holds the old layout can neither create files in
//! the directory being deleted nor bring the old life's database back.
//! Only a later life (a re-created entity) builds there again.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::entity_db::{Applied, CacheDbError, EntityDb};
use super::layout::EntityLayout;
use super::offset::Offset;
use super::replicator::ReplicatorStatus;
use crate::oplog::{LatestRow, OplogEntry};

struct Open {
    db: EntityDb,
    last_used: Instant,
}

/// What the manager's lock guards.
#[derive(Default)]
struct State {
    /// Open databases by entity.
    open: HashMap<String, Open>,
    /// Removed entities: the newest generation removed. A layout of that
    /// generation or an older one builds nothing any more.
    retired: HashMap<String, i64>,
}

impl State {
    /// Refuse to build `entity` under a layout of a removed life.
    fn check_live(&self, entity: &str, generation: i64) -> Result<(), CacheDbError> {
        match self.retired.get(entity) {
            Some(&removed) if generation <= removed => Err(CacheDbError::Retired {
                entity: entity.to_owned(),
                generation,
            }),
            _ => Ok(()),
        }
    }
}

/// Per-entity SQLite databases under one root (`dbs/{entity}/db.sqlite`).
#[derive(Clone)]
pub struct CacheDbManager {
    root: PathBuf,
    idle_timeout: Duration,
    state: Arc<Mutex<State>>,
    replicator: Arc<ReplicatorStatus>,
}

/// What the manager knows of an entity's database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbState {
    /// The layout version it was built with.
    pub version: String,
    /// The entity life it was built for ([`EntityLayout::generation`]).
    pub generation: i64,
    /// The highest oplog id applied.
    pub applied_id: i64,
    /// The identity of the oplog that id counts in.
    pub oplog: String,
}

/// The name prefix of rebuild files (`db.sqlite.rebuild-{pid}-{n}`).
const REBUILD_PREFIX: &str = "db.sqlite.rebuild-";

/// The name prefix of directories being removed (`.removing-{entity}-{pid}-{n}`);
/// entity names cannot start with `.`.
const REMOVING_PREFIX: &str = ".removing-";

impl CacheDbManager {
    /// A manager for databases under `root`, closing connections idle longer
    /// than `idle_timeout`.
    pub fn new(root: impl Into<PathBuf>, idle_timeout: Duration) -> Self {
        CacheDbManager {
            root: root.into(),
            idle_timeout,
            state: Arc::new(Mutex::new(State::default())),
            replicator: Arc::new(ReplicatorStatus::default()),
        }
    }

    /// The status of the replicator writing into this root (one per root:
    /// its offset file is `{root}/replicator.sqlite`). A replicator reopened
    /// on the same manager reports into the same status.
    pub fn replicator_status(&self) -> Arc<ReplicatorStatus> {
        self.replicator.clone()
    }

    /// A manager for databases under `root` (created when missing), after
    /// sweeping the rebuild files that processes which are gone left behind
    /// (see [`CacheDbManager::sweep_rebuild_leftovers`]).
    pub fn open(root: impl Into<PathBuf>, idle_timeout: Duration) -> Result<Self, CacheDbError> {
        let manager = CacheDbManager::new(root, idle_timeout);
        std::fs::create_dir_all(&manager.root).map_err(|source| CacheDbError::Io {
            path: manager.root.clone(),
            source,
        })?;
        let swept = manager.sweep_rebuild_leftovers() + manager.sweep_removals();
        if swept > 0 {
            tracing::info!(root = %manager.root.display(), swept, "removed files of interrupted cache rebuilds and removals");
        }
        Ok(manager)
    }

    /// Remove `{entity}/db.sqlite.rebuild-*` files (and their `-wal`/`-shm`)
    /// whose process is gone; returns how many files were removed. Files of
    /// this process and of processes still running are kept: their rebuild
    /// may be in progress. (Without `/proc`, only this process is known to
    /// be alive.) Failures are logged, not returned: a leftover wastes disk,
    /// it does not break anything.
    pub fn sweep_rebuild_leftovers(&self) -> usize {
        let mut removed = 0;
        for entity in self.entities_on_disk() {
            let dir = self.entity_dir(&entity);
            let Ok(files) = std::fs::read_dir(&dir) else {
                continue;
            };
            for file in files.filter_map(|f| f.ok()) {
                let name = file.file_name();
                let Some(pid) = name.to_str().and_then(rebuild_file_pid) else {
                    continue;
                };
                if process_alive(pid) {
                    continue;
                }
                let path = file.path();
                match std::fs::remove_file(&path) {
                    Ok(()) => {
                        removed += 1;
                        tracing::debug!(path = %path.display(), "removed leftover rebuild file");
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(error) => {
                        tracing::warn!(path = %path.display(), %error, "cannot remove leftover rebuild file")
                    }
                }
            }
        }
        removed
    }

    /// Remove the directories that removals interrupted by a crash left
    /// renamed aside; returns how many. Failures are logged.
    fn sweep_removals(&self) -> usize {
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return 0;
        };
        let mut removed = 0;
        for entry in entries.filter_map(|e| e.ok()) {
            let is_removal = entry
                .file_name()
                .to_str()
                .is_some_and(|name| name.starts_with(REMOVING_PREFIX));
            if !is_removal {
                continue;
            }
            let path = entry.path();
            match std::fs::remove_dir_all(&path) {
                Ok(()) => removed += 1,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(error) => {
                    tracing::warn!(path = %path.display(), %error, "cannot remove the directory of an interrupted entity removal")
                }
            }
        }
        removed
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

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
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
        let mut state = self.lock();
        let open = &mut state.open;
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
                generation: db.layout().generation,
                applied_id: db.applied_id(),
                oplog: db.oplog().to_owned(),
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
        applied: &Offset,
    ) -> Result<Rebuild, CacheDbError> {
        // Held while the file is created: a removal cannot run in between.
        let state = self.lock();
        state.check_live(entity, layout.generation)?;
        // Unique per rebuild: two replicators in one process never share a file.
        static REBUILDS: AtomicU64 = AtomicU64::new(0);
        let n = REBUILDS.fetch_add(1, Ordering::Relaxed);
        let path = self
            .entity_dir(entity)
            .join(format!("{REBUILD_PREFIX}{}-{n}", std::process::id()));
        remove_db_files(&path)?;
        // From here on the guard owns the file: an error below removes it.
        let mut rebuild = Rebuild {
            db: None,
            path,
            entity: entity.to_owned(),
            finished: false,
        };
        rebuild.db = Some(EntityDb::create(
            &rebuild.path,
            entity,
            layout,
            applied.id,
            &applied.oplog,
        )?);
        drop(state);
        Ok(rebuild)
    }

    /// Swap a finished rebuild in: the live connection is closed and the new
    /// file renamed over the old one (readers that open afterwards see it).
    /// On error the rebuild's file is removed and the live one keeps serving.
    pub fn finish_rebuild(&self, mut rebuild: Rebuild) -> Result<(), CacheDbError> {
        // Close the rebuilt database (its WAL is checkpointed into the file).
        let generation = rebuild.db.as_ref().map_or(0, |db| db.layout().generation);
        rebuild.db = None;
        let mut state = self.lock();
        // Removed meanwhile: dropping the rebuild removes its file.
        state.check_live(&rebuild.entity, generation)?;
        state.open.remove(&rebuild.entity);
        let live = self.db_path(&rebuild.entity);
        for suffix in ["-wal", "-shm"] {
            let side = PathBuf::from(format!("{}{suffix}", live.display()));
            remove_file_if_exists(&side)?;
        }
        std::fs::rename(&rebuild.path, &live).map_err(|source| CacheDbError::Io {
            path: live.clone(),
            source,
        })?;
        rebuild.finished = true;
        Ok(())
    }

    /// Close and delete `entity`'s directory, and retire its life
    /// `generation` ([`EntityLayout::generation`]): rebuilds under a layout
    /// of that life or an older one are refused from now on
    /// ([`CacheDbError::Retired`]). Returns whether a directory existed.
    ///
    /// The directory is renamed aside under the lock, then deleted: a
    /// rebuild running meanwhile writes into the renamed directory (or
    /// fails), never into a new one under the entity's name.
    pub fn remove(&self, entity: &str, generation: i64) -> Result<bool, CacheDbError> {
        static REMOVALS: AtomicU64 = AtomicU64::new(0);
        let dir = self.entity_dir(entity);
        let aside = self.root.join(format!(
            "{REMOVING_PREFIX}{entity}-{}-{}",
            std::process::id(),
            REMOVALS.fetch_add(1, Ordering::Relaxed)
        ));
        {
            let mut state = self.lock();
            state.open.remove(entity);
            let retired = state.retired.entry(entity.to_owned()).or_insert(generation);
            *retired = (*retired).max(generation);
            match std::fs::rename(&dir, &aside) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
                Err(source) => return Err(CacheDbError::Io { path: dir, source }),
            }
        }
        std::fs::remove_dir_all(&aside).map_err(|source| CacheDbError::Io {
            path: aside,
            source,
        })?;
        Ok(true)
    }

    /// Close connections idle longer than the timeout; returns how many.
    pub fn close_idle(&self) -> usize {
        let mut state = self.lock();
        let open = &mut state.open;
        let before = open.len();
        let timeout = self.idle_timeout;
        open.retain(|_, slot| slot.last_used.elapsed() < timeout);
        before - open.len()
    }

    /// How many databases are open.
    pub fn open_count(&self) -> usize {
        self.lock().open.len()
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
            .filter(|name| !name.starts_with(REMOVING_PREFIX))
            .collect()
    }
}

/// A rebuild in progress (see [`CacheDbManager::begin_rebuild`]). Dropping
/// it unfinished removes its file: a failed rebuild leaves nothing behind.
pub struct Rebuild {
    db: Option<EntityDb>,
    path: PathBuf,
    entity: String,
    finished: bool,
}

impl Rebuild {
    /// Load one page of latest rows.
    pub fn load(&mut self, rows: &[LatestRow]) -> Result<usize, CacheDbError> {
        match self.db.as_mut() {
            Some(db) => db.load(rows),
            None => Err(CacheDbError::Io {
                path: self.path.clone(),
                source: std::io::Error::other("the rebuild is already closed"),
            }),
        }
    }

    /// The file being built.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Rebuild {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        // Close the connection first, then remove the file and its WAL.
        self.db = None;
        match remove_db_files(&self.path) {
            Ok(()) => {
                tracing::debug!(entity = %self.entity, path = %self.path.display(), "unfinished rebuild removed")
            }
            Err(error) => {
                tracing::warn!(entity = %self.entity, %error, "cannot remove an unfinished rebuild file")
            }
        }
    }
}

/// The process id in a rebuild file's name (`db.sqlite.rebuild-{pid}-{n}`,
/// with an optional `-wal`/`-shm`/`-journal` suffix).
fn rebuild_file_pid(name: &str) -> Option<u32> {
    name.strip_prefix(REBUILD_PREFIX)?
        .split('-')
        .next()?
        .parse()
        .ok()
}

/// Whether process `pid` may still be rebuilding: this process, or (where
/// `/proc` exists) any running process.
fn process_alive(pid: u32) -> bool {
    if pid == std::process::id() {
        return true;
    }
    let proc = Path::new("/proc");
    proc.join("self").exists() && proc.join(pid.to_string()).exists()
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

#[cfg(test)]
mod tests {
    use super::rebuild_file_pid;

    #[test]
    fn rebuild_files_name_their_process() {
        assert_eq!(rebuild_file_pid("db.sqlite.rebuild-42-7"), Some(42));
        assert_eq!(rebuild_file_pid("db.sqlite.rebuild-42-7-wal"), Some(42));
        assert_eq!(rebuild_file_pid("db.sqlite"), None);
        assert_eq!(rebuild_file_pid("db.sqlite-wal"), None);
        assert_eq!(rebuild_file_pid("db.sqlite.rebuild-x-1"), None);
    }
}
