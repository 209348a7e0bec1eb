//! The host's own model of what flows through ingest: a [`Change`] a source
//! saw, the [`Row`]s a plugin shapes it into, and a plugin's answer for one
//! change ([`Shaped`]).
//!
//! These mirror the records of `wit/plugin.wit` (`change`, `change-op`,
//! `row`, `row-op`, `shaped`) field for field, but they are plain Rust
//! types: sources, the pipeline and the oplog use them without depending on
//! the WebAssembly runtime. The conversion to and from the generated
//! bindings lives in `plugin::convert` only, at the plugin boundary (and
//! `crate::plugin` re-exports these types under their old names).

/// What a source saw happen to one document.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChangeOp {
    /// The document was created or replaced; `document` holds all of it.
    Upsert,
    /// The document was removed; `document` may hold its last known state.
    Delete,
    /// Some fields changed; `document` holds only those fields and `current`
    /// the entity's current row, when the host has one.
    Partial,
}

impl ChangeOp {
    /// The name used in the JSON-lines change format and in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeOp::Upsert => "upsert",
            ChangeOp::Delete => "delete",
            ChangeOp::Partial => "partial",
        }
    }
}

/// One change read from a source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The source that produced the change, e.g. `mongo` or `schematic`.
    pub source: String,
    /// The collection (or entity type) within the source, e.g. `users`.
    pub collection: String,
    /// What happened.
    pub op: ChangeOp,
    /// The document's id, as a string.
    pub id: String,
    /// The document (for a partial change, the changed fields) as JSON text.
    pub document: Option<String>,
    /// The entity's current row (a JSON object) for this id, when the host
    /// has one; the pipeline fills it in for partial changes.
    pub current: Option<String>,
}

/// What a row does to its entity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RowOp {
    /// Insert or replace the row.
    Upsert,
    /// Remove the row.
    Delete,
}

/// One row of an entity, as a plugin shaped it (and as a cache writer hands
/// it to a plugin's `keys`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// The entity the row belongs to.
    pub entity: String,
    /// The row's id within its entity.
    pub id: String,
    /// Upsert or delete.
    pub op: RowOp,
    /// The row as a JSON object (`{}` for a delete).
    pub data: String,
}

/// What one change turned into.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Shaped {
    /// Zero or more rows.
    pub rows: Vec<Row>,
    /// When set, `rows` is the complete set of the named entity: the host
    /// deletes every live row of it that `rows` does not upsert (snapshots
    /// delivered as one message, e.g. all flags).
    pub complete_set: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::ChangeOp;

    #[test]
    fn op_names_are_the_jsonl_names() {
        assert_eq!(ChangeOp::Upsert.as_str(), "upsert");
        assert_eq!(ChangeOp::Delete.as_str(), "delete");
        assert_eq!(ChangeOp::Partial.as_str(), "partial");
    }
}
