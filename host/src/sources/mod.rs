//! Sources of changes. A [`Source`] reads changes and sends them, in
//! batches with the position after each, into a bounded channel: when the
//! pipeline falls behind, `send` waits, so memory never grows with the
//! backlog.
//!
//! - [`jsonl`]: JSON-lines files, one change per line (CLI, backfills, demos).
//! - [`mongo`]: a MongoDB change stream on one database, its resume token
//!   as the position.
//! - [`datastream`]: Schematic's datastream (WebSocket) with its REST
//!   initial load.
//!
//! A source that loads a snapshot drives a [`SnapshotLoad`] (the protocol
//! lives in [`crate::ingest::load`]): between its `begin` and `end` the
//! stream rows of the loaded entities are staged, so a snapshot row read
//! before a change can never overwrite it.

pub mod jsonl;
pub mod mongo;

use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use crate::ingest::load::{LoadControl, LoadEnd, SnapshotLoad};
use crate::model::Change;

/// A batch of changes from one source.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SourceBatch {
    /// The source name.
    pub source: String,
    /// The changes, in source order.
    pub changes: Vec<Change>,
    /// The source position after the last change; committed with the rows.
    pub position: Option<String>,
    /// Whether these changes are an initial load (see `oplog::AppendBatch::snapshot`).
    pub snapshot: bool,
    /// Start or end of an initial load, applied around this batch's changes
    /// (`Begin` before them, `End` after them).
    pub load: Option<LoadControl>,
    /// Told the oplog head once this batch is committed.
    pub committed: Option<CommitSignal>,
    /// The batch concerns only these entities (a backfill's pages and
    /// brackets): its changes are routed to them alone, and its load
    /// brackets resolve to them instead of every entity the collections
    /// feed. `None`: every entity its changes route to.
    pub only: Option<Vec<String>>,
}

/// What a source knows of the entities it feeds (the entity manager's view
/// for one source, [`crate::entities::EntityManager::source_view`]).
pub trait SourceEntities: Send + Sync {
    /// The entities `collection` of this source feeds, by name.
    fn routes(&self, collection: &str) -> Vec<String>;

    /// The entities of this source waiting for a load (status `pending`:
    /// created on a running source, or a recreate was asked), by name.
    fn pending(&self) -> Vec<String>;

    /// Changes when an entity is created, changed or removed: a source
    /// waits on it to notice pending entities.
    fn changed(&self) -> tokio::sync::watch::Receiver<u64>;
}

/// The view of a source run without entities (tests, one-off ingests):
/// every collection feeds the entity of its own name, nothing is pending.
#[derive(Debug)]
pub struct CollectionsAsEntities(tokio::sync::watch::Sender<u64>);

impl Default for CollectionsAsEntities {
    fn default() -> Self {
        CollectionsAsEntities(tokio::sync::watch::channel(0).0)
    }
}

impl SourceEntities for CollectionsAsEntities {
    fn routes(&self, collection: &str) -> Vec<String> {
        vec![collection.to_owned()]
    }

    fn pending(&self) -> Vec<String> {
        Vec::new()
    }

    fn changed(&self) -> tokio::sync::watch::Receiver<u64> {
        self.0.subscribe()
    }
}

/// A one-shot signal carrying the oplog head after a batch was committed.
/// Cloning shares the signal (a retried batch signals once).
#[derive(Debug, Clone)]
pub struct CommitSignal(Arc<tokio::sync::watch::Sender<Option<i64>>>);

impl CommitSignal {
    /// A signal and the receiver that sees the head once it fires.
    pub fn new() -> (CommitSignal, tokio::sync::watch::Receiver<Option<i64>>) {
        let (tx, rx) = tokio::sync::watch::channel(None);
        (CommitSignal(Arc::new(tx)), rx)
    }

    /// Fire with the oplog head after the commit.
    pub fn fire(&self, head: i64) {
        self.0.send_replace(Some(head));
    }
}

impl PartialEq for CommitSignal {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

/// Why a source stopped.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// Reading failed.
    #[error("source {source_name}: {reason}")]
    Read {
        /// The source.
        source_name: String,
        /// What went wrong.
        reason: String,
    },
    /// The pipeline is gone.
    #[error("source {0}: the pipeline stopped")]
    Closed(String),
}

/// A source of changes.
#[async_trait]
pub trait Source: Send {
    /// The source name (its positions are stored under it).
    fn name(&self) -> &str;

    /// Send batches to `out`, resuming after `position`, until the source
    /// ends (finite sources) or `cancel` fires.
    async fn run(
        &mut self,
        position: Option<String>,
        out: mpsc::Sender<SourceBatch>,
        cancel: CancellationToken,
    ) -> Result<(), SourceError>;
}
