//! The initial load (snapshot) protocol, in one place.
//!
//! A source that copies a snapshot into the oplog while it keeps streaming
//! drives one [`SnapshotLoad`]:
//!
//! 1. [`SnapshotLoad::begin`] — a batch carrying [`LoadControl::Begin`]. The
//!    pipeline hands it to [`LoadCoordinator::begin`]: the oplog head is
//!    remembered as the load's start (metadata [`MetaKey::Load`]) unless a
//!    load of the entity is already under way, and the entities the loaded
//!    collections feed are marked `scanning`, so from now on their stream
//!    rows are **staged** by the store instead of logged: a snapshot row
//!    read before a change can never overwrite it.
//! 2. [`SnapshotLoad::page`] — a batch of snapshot changes (any number, in
//!    any order, concurrently); they are shaped like any change and their
//!    rows go straight to the log (`AppendBatch::snapshot`). A page made
//!    with [`SnapshotLoad::page_at`] carries a source position, committed
//!    in the same transaction as its rows (a resumable scan's progress);
//!    plain pages commit none.
//! 3. [`SnapshotLoad::end`] — a batch carrying [`LoadControl::End`] and the
//!    source position to resume from. [`LoadCoordinator::end`] **evicts**
//!    ([`LoadCoordinator::evict`]) when the load was complete: the live rows
//!    last written at or before the start are the ones the load did not
//!    see, and are deleted. Then the staged rows move into the log and the
//!    entities become `ready` (`OplogStore::finish_load`), the start is
//!    forgotten, and only then is the position committed: a crash before
//!    that leaves no position, and the load runs again.
//!
//! The store keeps its primitives (staging by entity status, `finish_load`,
//! `latest_page`); this module is the one interface sources use, and the
//! only code that sequences them.
//!
//! # Reuse
//!
//! - **MongoDB collection scan.** Record the change stream's resume token
//!   before `begin`; scan in chunks, each chunk a `page` (the stream, opened
//!   at the token, runs meanwhile and is staged); `end` with the token once
//!   the scan is done and the stream has passed the snapshot's end. The
//!   scan is resumable after a restart: its chunk progress is part of the
//!   source position, committed with each page ([`SnapshotLoad::page_at`]);
//!   `begin` keeps the start of a load that is under way, so eviction
//!   still covers the whole scan. A lost history (error 286) is a new
//!   `begin` (see [`crate::sources::mongo`]).
//! - **Backfill of one entity** (a new entity on a running source, or
//!   `POST /api/replication/recreate/{entity}`): the same brackets made by
//!   [`SnapshotLoad::only`], whose batches carry the entity names
//!   ([`SourceBatch::only`]): [`LoadCoordinator::entities`] resolves the
//!   brackets to those entities alone and the pipeline routes the pages to
//!   them alone, so the other entities of the same collections keep
//!   streaming untouched. The request itself is durable: the entity's status
//!   `pending` (set on create, or by a recreate) is what a source looks for
//!   ([`crate::sources::SourceEntities::pending`]).

use std::sync::Arc;

use crate::cache::LatestPages;
use crate::entities::EntityManager;
use crate::model::Change;
use crate::oplog::{
    AppendBatch, EntityDef, EntityStatus, MetaKey, NewRow, Op, OplogStore, SourcePosition,
    StoreError,
};
use crate::sources::{CommitSignal, SourceBatch};

/// Rows read per page when evicting.
const EVICT_PAGE: usize = 5000;

/// The brackets of an initial load, by the collections it reads. The
/// pipeline resolves them to the entities those collections feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoadControl {
    /// A load begins: the entities stage their stream rows from now on, and
    /// the oplog head is remembered as the load's start.
    Begin {
        /// The collections being loaded.
        collections: Vec<String>,
        /// The load starts over (a re-snapshot that scans from the
        /// beginning): its start is the head now even when a load of the
        /// entity is under way. Otherwise the start of a load under way is
        /// kept (a load resumed after a restart, whose earlier pages count).
        anew: bool,
    },
    /// The load ended. When `complete` (every page arrived and nothing was
    /// missed), the live rows the load did not write since its start are
    /// deleted; otherwise nothing is evicted. Either way the staged rows
    /// move into the log and the entities become ready.
    End {
        /// The collections that were loaded.
        collections: Vec<String>,
        /// Whether the load read everything.
        complete: bool,
    },
}

/// The source side of one initial load: makes the batches of the protocol
/// (see the module documentation). Cheap to clone, so a background task
/// can send pages while the source keeps streaming.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotLoad {
    source: String,
    collections: Vec<String>,
    only: Option<Vec<String>>,
}

/// How a load ended, as the source tells it.
#[derive(Debug, Clone, Default)]
pub struct LoadEnd {
    /// Every page arrived and nothing was missed: evicting is safe.
    pub complete: bool,
    /// The source position to resume from, committed after the load.
    pub position: Option<String>,
    /// Told the oplog head once the end is committed.
    pub committed: Option<CommitSignal>,
}

impl SnapshotLoad {
    /// A load of `collections` by `source`.
    pub fn new(source: impl Into<String>, collections: Vec<String>) -> Self {
        SnapshotLoad {
            source: source.into(),
            collections,
            only: None,
        }
    }

    /// This load for `entities` alone (a backfill): its batches carry them
    /// ([`SourceBatch::only`]), so the other entities of its collections are
    /// neither staged, nor written, nor evicted.
    pub fn only(mut self, entities: Vec<String>) -> Self {
        self.only = Some(entities);
        self
    }

    /// The entities the load is for, when it is for some alone.
    pub fn entities(&self) -> Option<&[String]> {
        self.only.as_deref()
    }

    /// The source name.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The collections loaded.
    pub fn collections(&self) -> &[String] {
        &self.collections
    }

    /// The batch that begins the load, or resumes one under way (its start
    /// is kept, so eviction covers what its earlier pages wrote).
    pub fn begin(&self) -> SourceBatch {
        self.begin_with(false)
    }

    /// The batch that begins the load over from the start: a load of the
    /// same entities under way is abandoned, and its start with it. What
    /// its pages wrote counts as seen only if this load writes it again.
    pub fn begin_anew(&self) -> SourceBatch {
        self.begin_with(true)
    }

    fn begin_with(&self, anew: bool) -> SourceBatch {
        SourceBatch {
            source: self.source.clone(),
            load: Some(LoadControl::Begin {
                collections: self.collections.clone(),
                anew,
            }),
            only: self.only.clone(),
            ..SourceBatch::default()
        }
    }

    /// A batch of snapshot changes (no position).
    pub fn page(&self, changes: Vec<Change>) -> SourceBatch {
        SourceBatch {
            source: self.source.clone(),
            changes,
            snapshot: true,
            only: self.only.clone(),
            ..SourceBatch::default()
        }
    }

    /// A batch of snapshot changes committed with the source `position`
    /// (e.g. the stream token and the scan's progress), in one transaction.
    pub fn page_at(&self, changes: Vec<Change>, position: String) -> SourceBatch {
        SourceBatch {
            position: Some(position),
            ..self.page(changes)
        }
    }

    /// The batch that ends the load (evicting when `end.complete`) and then
    /// commits `end.position`.
    pub fn end(&self, end: LoadEnd) -> SourceBatch {
        SourceBatch {
            source: self.source.clone(),
            position: end.position,
            load: Some(LoadControl::End {
                collections: self.collections.clone(),
                complete: end.complete,
            }),
            committed: end.committed,
            only: self.only.clone(),
            ..SourceBatch::default()
        }
    }
}

/// The value of [`MetaKey::Load`]: the oplog head when the load began.
fn load_start(head: i64) -> serde_json::Value {
    serde_json::json!({ "head": head })
}

/// The pipeline side of the protocol: runs the brackets against the store
/// and the entity manager.
pub struct LoadCoordinator {
    store: Arc<dyn OplogStore>,
    entities: Arc<EntityManager>,
}

impl LoadCoordinator {
    /// A coordinator on `store`, resolving collections with `entities`.
    pub fn new(store: Arc<dyn OplogStore>, entities: Arc<EntityManager>) -> Self {
        LoadCoordinator { store, entities }
    }

    /// The entities a load of `collections` of `source` is for: `only`
    /// when given (a backfill, by name), else every entity they feed.
    pub fn entities(
        &self,
        source: &str,
        collections: &[String],
        only: Option<&[String]>,
    ) -> Vec<EntityDef> {
        if let Some(names) = only {
            return names
                .iter()
                .filter_map(|name| self.entities.known_def(name))
                .filter(|def| def.status != EntityStatus::Deleting)
                .collect();
        }
        let mut entities: Vec<EntityDef> = Vec::new();
        for collection in collections {
            for def in self.entities.routes(source, collection) {
                if !entities.iter().any(|e| e.name == def.name) {
                    entities.push(def);
                }
            }
        }
        entities
    }

    /// Start a load: remember the oplog head (unless a load of the entity
    /// is already under way and this one is not `anew`: its start stays)
    /// and stage stream rows.
    pub async fn begin(
        &self,
        source: &str,
        collections: &[String],
        only: Option<&[String]>,
        anew: bool,
    ) -> Result<(), StoreError> {
        let head = self.store.head().await?;
        for def in self.entities(source, collections, only) {
            let key = MetaKey::Load(&def.name).key();
            let running = !anew
                && def.status.stages_stream_rows()
                && self
                    .store
                    .meta_get(&key)
                    .await?
                    .is_some_and(|v| !v.is_null());
            let start = if running {
                None
            } else {
                self.store.meta_set(&key, &load_start(head)).await?;
                Some(head)
            };
            if let Err(error) = self
                .entities
                .set_status(&def.name, EntityStatus::Scanning)
                .await
            {
                tracing::warn!(entity = %def.name, %error, "cannot mark entity as loading");
            }
            match start {
                Some(head) => {
                    tracing::info!(entity = %def.name, source, start_head = head, anew, "initial load started")
                }
                None => {
                    tracing::info!(entity = %def.name, source, "initial load resumed: its start is kept")
                }
            }
        }
        Ok(())
    }

    /// End a load: evict what a complete load did not write, move the
    /// staged rows into the log, mark the entities ready, and only then
    /// commit `position`.
    pub async fn end(
        &self,
        source: &str,
        collections: &[String],
        only: Option<&[String]>,
        complete: bool,
        position: Option<SourcePosition>,
    ) -> Result<(), StoreError> {
        for def in self.entities(source, collections, only) {
            let key = MetaKey::Load(&def.name).key();
            let start = self
                .store
                .meta_get(&key)
                .await?
                .and_then(|v| v.get("head").and_then(serde_json::Value::as_i64));
            let mut evicted = 0;
            if let (true, Some(start)) = (complete, start) {
                evicted = self.evict(&def, start).await?;
            }
            let moved = self.store.finish_load(&def.name).await?;
            self.store.meta_delete(&key).await?;
            if let Err(error) = self
                .entities
                .set_status(&def.name, EntityStatus::Ready)
                .await
            {
                tracing::warn!(entity = %def.name, %error, "cannot mark entity as ready");
            }
            tracing::info!(entity = %def.name, source, complete, evicted, staged_moved = moved, "initial load finished");
        }
        if position.is_some() {
            self.store
                .append(AppendBatch {
                    position,
                    ..AppendBatch::default()
                })
                .await?;
        }
        Ok(())
    }

    /// Delete the live rows of `def` last written at or before `start`: the
    /// rows a complete load did not see. Returns how many.
    pub async fn evict(&self, def: &EntityDef, start: i64) -> Result<usize, StoreError> {
        let (plugin, version) = match self.entities.registry().for_entity(&def.name) {
            Some(plugin) => (plugin.name().to_owned(), plugin.version().to_owned()),
            None => (def.plugin.clone(), String::new()),
        };
        let mut pages = LatestPages::new(&def.name, EVICT_PAGE);
        let mut evicted = 0;
        while let Some(page) = pages.next(self.store.as_ref()).await? {
            let rows: Vec<NewRow> = page
                .into_iter()
                .filter(|row| row.oplog_id <= start && row.op == Op::Upsert)
                .map(|row| NewRow {
                    entity: def.name.clone(),
                    doc_id: row.doc_id,
                    op: Op::Delete,
                    data: None,
                    plugin: plugin.clone(),
                    plugin_version: version.clone(),
                })
                .collect();
            evicted += rows.len();
            if !rows.is_empty() {
                self.store
                    .append(AppendBatch {
                        rows,
                        snapshot: true,
                        ..AppendBatch::default()
                    })
                    .await?;
            }
        }
        Ok(evicted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_batches_of_a_load() {
        let load = SnapshotLoad::new("ds", vec!["a".into(), "b".into()]);
        let begin = load.begin();
        assert_eq!(begin.source, "ds");
        assert_eq!(
            begin.load,
            Some(LoadControl::Begin {
                collections: vec!["a".into(), "b".into()],
                anew: false,
            })
        );
        assert!(begin.changes.is_empty() && begin.position.is_none() && !begin.snapshot);

        let page = load.page(Vec::new());
        assert!(page.snapshot && page.load.is_none() && page.position.is_none());
        let page = load.page_at(Vec::new(), "p".into());
        assert!(page.snapshot && page.load.is_none());
        assert_eq!(page.position.as_deref(), Some("p"));

        let end = load.end(LoadEnd {
            complete: true,
            position: Some("7".into()),
            committed: None,
        });
        assert_eq!(end.position.as_deref(), Some("7"));
        assert_eq!(
            end.load,
            Some(LoadControl::End {
                collections: vec!["a".into(), "b".into()],
                complete: true
            })
        );
        assert!(!end.snapshot);
    }

    #[test]
    fn the_load_start_is_stored_as_before() {
        assert_eq!(load_start(42), serde_json::json!({"head": 42}));
    }
}
