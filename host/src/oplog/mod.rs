//! The oplog store: a durable, ordered log of entity rows, with the latest
//! row per (entity, id), source positions, entity definitions, staging,
//! rejected records and metadata (keys typed in [`meta`]).
//!
//! One trait, [`OplogStore`], two implementations with the same semantics:
//! [`SqliteStore`] (embedded, the default) and [`PostgresStore`] (production;
//! many cache nodes share it). The test suite in `tests/` runs against both.
//!
//! Guarantees:
//! - ids are assigned from a counter row updated inside the append
//!   transaction, so they are gap-free per commit and become visible in id
//!   order: a tailer reading `id > offset` never skips a row that commits later;
//! - rows, rejected records and the source position of one [`AppendBatch`]
//!   commit together or not at all;
//! - the latest-row table is updated in the same transaction as the append,
//!   and equals a replay of the log;
//! - staged rows move into the log exactly once ([`OplogStore::finish_load`]).

pub mod meta;
mod model;
mod postgres;
mod sqlite;

use async_trait::async_trait;

pub use meta::{
    CacheMetaKey, IDENTITY_KEY, LAYOUT_META_PREFIX, LOAD_META_PREFIX, MetaKey,
    REPLICATOR_OFFSET_KEY, entity_meta_key, entity_meta_keys,
};
pub use model::{
    AppendBatch, AppendReceipt, EntityDef, EntityStatus, LatestRow, NewRejected, NewRow, Op,
    OplogEntry, RejectedRecord, SourcePosition, now_millis,
};
pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite said no.
    #[error("sqlite oplog store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// PostgreSQL said no (or could not be reached).
    #[error("postgres oplog store: {0}")]
    Postgres(#[from] sqlx::Error),
    /// A PostgreSQL migration failed.
    #[error("postgres oplog store migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A stored value could not be decoded.
    #[error("oplog store holds a corrupt value in {what}: {reason}")]
    Corrupt {
        /// Which table/column.
        what: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The blocking worker of the embedded store went away.
    #[error("sqlite oplog store worker failed: {0}")]
    Worker(String),
    /// The store directory could not be created.
    #[error("cannot create oplog store directory {path}: {source}")]
    Directory {
        /// The directory.
        path: std::path::PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// Tells cache writers that a store committed log entries: a counter in a
/// [`tokio::sync::watch`] channel, bumped after each such commit. Clones
/// share the channel.
#[derive(Debug, Clone)]
pub struct CommitWatch {
    sender: std::sync::Arc<tokio::sync::watch::Sender<u64>>,
}

impl Default for CommitWatch {
    fn default() -> Self {
        CommitWatch {
            sender: std::sync::Arc::new(tokio::sync::watch::Sender::new(0)),
        }
    }
}

impl CommitWatch {
    /// Note a commit: every receiver sees a change.
    pub fn notify(&self) {
        self.sender.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// A new receiver (its current value counts as seen).
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.sender.subscribe()
    }
}

/// A fresh identity: 128 random bits in hex.
pub fn new_identity() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// Log entries of any of `entities` with `id > after`, in id order, at most
/// `limit`: one read per entity through the `(entity, id)` index, merged.
pub async fn read_entities_log(
    store: &dyn OplogStore,
    entities: &[String],
    after: i64,
    limit: usize,
) -> Result<Vec<OplogEntry>, StoreError> {
    let mut seen = std::collections::BTreeSet::new();
    let mut entries = Vec::new();
    for entity in entities {
        if seen.insert(entity.as_str()) {
            entries.extend(store.read_entity_log(entity, after, limit).await?);
        }
    }
    entries.sort_by_key(|e| e.id);
    entries.truncate(limit);
    Ok(entries)
}

/// The oplog store. See the module documentation for its guarantees.
#[async_trait]
pub trait OplogStore: Send + Sync + 'static {
    /// `sqlite` or `postgres`.
    fn backend(&self) -> &'static str;

    /// A receiver that changes whenever this store object commits new log
    /// entries (an append with rows, a finished load). Cache writers wait on
    /// it instead of polling; appends by other processes (PostgreSQL) are
    /// still found by their poll.
    fn commits(&self) -> tokio::sync::watch::Receiver<u64>;

    /// The identity of this oplog: a random id made once, when the store was
    /// created (metadata key [`IDENTITY_KEY`]). Ids count within one
    /// identity: a cache offset saved against another identity (a wiped or
    /// different oplog) says nothing about this one.
    fn identity(&self) -> &str;

    /// Commit one batch: rows (to the log, or to staging for loading
    /// entities), rejected records and the source position, atomically.
    async fn append(&self, batch: AppendBatch) -> Result<AppendReceipt, StoreError>;

    /// Log entries with `id > after`, in id order, at most `limit`.
    async fn read_log(&self, after: i64, limit: usize) -> Result<Vec<OplogEntry>, StoreError>;

    /// Log entries of `entity` with `id > after`, in id order, at most
    /// `limit`, read through the `(entity, id)` index.
    async fn read_entity_log(
        &self,
        entity: &str,
        after: i64,
        limit: usize,
    ) -> Result<Vec<OplogEntry>, StoreError>;

    /// The highest committed log id (0 when empty).
    async fn head(&self) -> Result<i64, StoreError>;

    /// The latest rows of `entity` among `doc_ids` (tombstones included).
    async fn latest(&self, entity: &str, doc_ids: &[String]) -> Result<Vec<LatestRow>, StoreError>;

    /// Live latest rows of `entity` with `doc_id > after`, in id order, at
    /// most `limit`: the pages a cache rebuild or a new cache node reads.
    async fn latest_page(
        &self,
        entity: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<LatestRow>, StoreError>;

    /// The committed position of `source`.
    async fn source_position(&self, source: &str) -> Result<Option<String>, StoreError>;

    /// The committed position of `source` and when it was committed (Unix
    /// ms), for its age.
    async fn source_position_at(&self, source: &str) -> Result<Option<(String, i64)>, StoreError>;

    /// Create or update an entity definition (status and timestamps included).
    async fn put_entity(&self, entity: &EntityDef) -> Result<(), StoreError> {
        self.put_entity_with_meta(entity, &[]).await
    }

    /// Create or update an entity definition and set metadata values (its
    /// published layout) in the same transaction: both land or neither does.
    async fn put_entity_with_meta(
        &self,
        entity: &EntityDef,
        meta: &[(String, serde_json::Value)],
    ) -> Result<(), StoreError>;

    /// One entity definition.
    async fn entity(&self, name: &str) -> Result<Option<EntityDef>, StoreError>;

    /// Every entity definition, by name.
    async fn entities(&self) -> Result<Vec<EntityDef>, StoreError>;

    /// Set an entity's status; false when it does not exist.
    async fn set_entity_status(&self, name: &str, status: EntityStatus)
    -> Result<bool, StoreError>;

    /// Remove an entity: its definition, log entries, latest rows, staged
    /// rows, rejected records and its metadata ([`entity_meta_keys`]), in one
    /// transaction. False when it did not exist.
    async fn delete_entity(&self, name: &str) -> Result<bool, StoreError>;

    /// End an entity's initial load: move its staged rows into the log (in
    /// staging order, updating the latest rows) and mark it ready, in one
    /// transaction. Returns how many rows moved; a second call moves none.
    async fn finish_load(&self, entity: &str) -> Result<usize, StoreError>;

    /// How many rows are staged for `entity`.
    async fn staged_count(&self, entity: &str) -> Result<u64, StoreError>;

    /// Rejected records with `id > after`, oldest first, at most `limit`.
    async fn rejected(&self, after: i64, limit: usize) -> Result<Vec<RejectedRecord>, StoreError>;

    /// Remove rejected records (after a successful replay).
    async fn remove_rejected(&self, ids: &[i64]) -> Result<usize, StoreError>;

    /// A metadata value.
    async fn meta_get(&self, key: &str) -> Result<Option<serde_json::Value>, StoreError>;

    /// Set a metadata value.
    async fn meta_set(&self, key: &str, value: &serde_json::Value) -> Result<(), StoreError>;

    /// Remove a metadata value; false when there was none.
    async fn meta_delete(&self, key: &str) -> Result<bool, StoreError>;
}

/// Keep the last row per (entity, doc_id), in first-seen order of the keys:
/// the latest-row update of one batch.
pub(crate) fn last_per_key(rows: &[(i64, &NewRow)]) -> Vec<(i64, usize)> {
    let mut index: std::collections::HashMap<(&str, &str), usize> =
        std::collections::HashMap::with_capacity(rows.len());
    let mut out: Vec<(i64, usize)> = Vec::with_capacity(rows.len());
    for (position, (id, row)) in rows.iter().enumerate() {
        match index.entry((row.entity.as_str(), row.doc_id.as_str())) {
            std::collections::hash_map::Entry::Occupied(slot) => out[*slot.get()] = (*id, position),
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(out.len());
                out.push((*id, position));
            }
        }
    }
    out
}
