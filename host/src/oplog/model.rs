//! The records the oplog store keeps.

use serde::{Deserialize, Serialize};

/// What a log entry does to its row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    /// Insert or replace the row.
    Upsert,
    /// Remove the row.
    Delete,
}

impl Op {
    /// The stored code (0 upsert, 1 delete).
    pub fn code(self) -> i16 {
        match self {
            Op::Upsert => 0,
            Op::Delete => 1,
        }
    }

    /// The op of a stored code.
    pub fn from_code(code: i64) -> Op {
        if code == 1 { Op::Delete } else { Op::Upsert }
    }
}

/// A row to append, as a plugin shaped it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRow {
    /// The entity.
    pub entity: String,
    /// The row id within the entity.
    pub doc_id: String,
    /// Upsert or delete.
    pub op: Op,
    /// The row as JSON text; `None` for a delete.
    pub data: Option<String>,
    /// The plugin that produced it.
    pub plugin: String,
    /// That plugin's version.
    pub plugin_version: String,
}

/// A change a plugin could not shape, kept for inspection and replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRejected {
    /// The source of the change.
    pub source: String,
    /// Its collection.
    pub collection: String,
    /// The entity it was shaped for.
    pub entity: String,
    /// The document id.
    pub doc_id: String,
    /// The change itself, as JSON text (the JSON-lines change format).
    pub change: String,
    /// The plugin that rejected it (`name`).
    pub plugin: String,
    /// That plugin's version.
    pub plugin_version: String,
    /// Why.
    pub error: String,
}

/// Where a source is: a resume token, a stream cursor, a line number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourcePosition {
    /// The source name.
    pub source: String,
    /// Its position, opaque to the store.
    pub position: String,
}

/// Everything one source batch produced, committed in one transaction: the
/// rows, the rejected changes and the source position after them. The
/// position can only be committed through a batch, so it never gets ahead of
/// the rows it stands for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AppendBatch {
    /// Rows for the log (or for staging, see [`AppendBatch::snapshot`]).
    pub rows: Vec<NewRow>,
    /// Changes the plugins rejected.
    pub rejected: Vec<NewRejected>,
    /// The source position after this batch.
    pub position: Option<SourcePosition>,
    /// Rows of an initial load: they go to the main log even while their
    /// entity is loading. Stream rows for a loading entity (`pending` or
    /// `scanning`) are staged instead and moved into the log when the load
    /// finishes.
    pub snapshot: bool,
}

/// What an append did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AppendReceipt {
    /// Rows appended to the main log.
    pub appended: usize,
    /// Rows staged for loading entities.
    pub staged: usize,
    /// Rejected records stored.
    pub rejected: usize,
    /// The id of the last appended row, if any.
    pub last_id: Option<i64>,
}

/// One entry of the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OplogEntry {
    /// Monotonic id; entries become visible in id order.
    pub id: i64,
    /// The entity.
    pub entity: String,
    /// The row id.
    pub doc_id: String,
    /// Upsert or delete.
    pub op: Op,
    /// The row as JSON text (`None` for deletes).
    pub data: Option<String>,
    /// When it was appended (Unix milliseconds).
    pub created_at: i64,
    /// The producing plugin.
    pub plugin: String,
    /// Its version.
    pub plugin_version: String,
}

/// The latest state of one row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LatestRow {
    /// The row id.
    pub doc_id: String,
    /// The log entry that set it.
    pub oplog_id: i64,
    /// Upsert (live) or delete (tombstone).
    pub op: Op,
    /// The row as JSON text (`None` for a tombstone).
    pub data: Option<String>,
}

/// The lifecycle of an entity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntityStatus {
    /// Defined; its initial load has not started.
    Pending,
    /// Its initial load is running; stream rows are staged.
    Scanning,
    /// Loaded; stream rows go to the log.
    Ready,
    /// Being removed.
    Deleting,
}

impl EntityStatus {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            EntityStatus::Pending => "pending",
            EntityStatus::Scanning => "scanning",
            EntityStatus::Ready => "ready",
            EntityStatus::Deleting => "deleting",
        }
    }

    /// Parse a stored name.
    pub fn parse(text: &str) -> Option<EntityStatus> {
        Some(match text {
            "pending" => EntityStatus::Pending,
            "scanning" => EntityStatus::Scanning,
            "ready" => EntityStatus::Ready,
            "deleting" => EntityStatus::Deleting,
            _ => return None,
        })
    }

    /// Whether stream rows of an entity in this status are staged.
    pub fn stages_stream_rows(self) -> bool {
        matches!(self, EntityStatus::Pending | EntityStatus::Scanning)
    }
}

/// An entity definition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EntityDef {
    /// Unique name; also the cache directory name.
    pub name: String,
    /// The source its changes come from.
    pub source: String,
    /// The collection within the source.
    pub collection: String,
    /// The plugin that shapes it.
    pub plugin: String,
    /// The plugin's configuration for it.
    pub config: serde_json::Value,
    /// Lifecycle status.
    pub status: EntityStatus,
    /// Created (Unix milliseconds).
    pub created_at: i64,
    /// Last changed (Unix milliseconds).
    pub updated_at: i64,
}

/// A stored rejected record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RejectedRecord {
    /// Its id.
    pub id: i64,
    /// The source of the change.
    pub source: String,
    /// Its collection.
    pub collection: String,
    /// The entity.
    pub entity: String,
    /// The document id.
    pub doc_id: String,
    /// The change, as JSON text.
    pub change: String,
    /// The plugin that rejected it.
    pub plugin: String,
    /// Its version.
    pub plugin_version: String,
    /// Why.
    pub error: String,
    /// When (Unix milliseconds).
    pub created_at: i64,
}

/// Milliseconds since the Unix epoch, now.
pub fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
