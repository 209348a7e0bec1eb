//! The SDK's own types: the WIT records with JSON already parsed.

use std::fmt;

use serde_json::{Map, Value};

/// An item error: a message that names what went wrong with one change or row.
///
/// Any error type converts into it, so `?` works on `serde_json` and
/// [`coerce`](crate::coerce) results.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error(String);

impl Error {
    /// An error with this message.
    pub fn msg(message: impl Into<String>) -> Self {
        Error(message.into())
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<E: std::error::Error> From<E> for Error {
    fn from(err: E) -> Self {
        Error(err.to_string())
    }
}

impl From<Error> for String {
    fn from(err: Error) -> Self {
        err.0
    }
}

/// The result of a plugin function.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What a source saw happen to a document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeOp {
    /// Created or replaced: the document is whole.
    Upsert,
    /// Removed.
    Delete,
    /// Some fields changed: the document holds only those.
    Partial,
}

/// One change read from a source, with its JSON parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// The source, e.g. `mongo`.
    pub source: String,
    /// The collection or entity type within the source.
    pub collection: String,
    /// What happened.
    pub op: ChangeOp,
    /// The document id.
    pub id: String,
    /// The document, or for a partial change the changed fields.
    pub document: Option<Value>,
    /// The entity's current row for this id, when the host has one.
    pub current: Option<Map<String, Value>>,
}

impl Change {
    /// An upsert of `document`.
    pub fn upsert(collection: impl Into<String>, id: impl Into<String>, document: Value) -> Self {
        Self::new(ChangeOp::Upsert, collection, id, Some(document))
    }

    /// A delete.
    pub fn delete(collection: impl Into<String>, id: impl Into<String>) -> Self {
        Self::new(ChangeOp::Delete, collection, id, None)
    }

    /// A partial update carrying only the changed `fields`.
    pub fn partial(collection: impl Into<String>, id: impl Into<String>, fields: Value) -> Self {
        Self::new(ChangeOp::Partial, collection, id, Some(fields))
    }

    fn new(
        op: ChangeOp,
        collection: impl Into<String>,
        id: impl Into<String>,
        document: Option<Value>,
    ) -> Self {
        Change {
            source: String::new(),
            collection: collection.into(),
            op,
            id: id.into(),
            document,
            current: None,
        }
    }

    /// The same change from `source`.
    pub fn from_source(mut self, source: impl Into<String>) -> Self {
        self.source = source.into();
        self
    }

    /// The same change with the entity's current row attached.
    pub fn with_current(mut self, current: Map<String, Value>) -> Self {
        self.current = Some(current);
        self
    }

    /// The whole document of an upsert; `None` for deletes and partials.
    pub fn upsert_document(&self) -> Option<&Value> {
        match self.op {
            ChangeOp::Upsert => self.document.as_ref(),
            _ => None,
        }
    }
}

/// What a row does to its entity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowOp {
    /// Insert or replace.
    Upsert,
    /// Remove.
    Delete,
}

/// One row of an entity.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// The entity.
    pub entity: String,
    /// The row id within the entity.
    pub id: String,
    /// Upsert or delete.
    pub op: RowOp,
    /// The row's fields (empty for a delete).
    pub data: Map<String, Value>,
}

impl Row {
    /// An upsert row built from `(column, value)` pairs.
    pub fn upsert<K: Into<String>>(
        entity: impl Into<String>,
        id: impl Into<String>,
        fields: impl IntoIterator<Item = (K, Value)>,
    ) -> Self {
        Row {
            entity: entity.into(),
            id: id.into(),
            op: RowOp::Upsert,
            data: fields.into_iter().map(|(k, v)| (k.into(), v)).collect(),
        }
    }

    /// An upsert row with `data` as its fields.
    pub fn upsert_map(
        entity: impl Into<String>,
        id: impl Into<String>,
        data: Map<String, Value>,
    ) -> Self {
        Row {
            entity: entity.into(),
            id: id.into(),
            op: RowOp::Upsert,
            data,
        }
    }

    /// A delete row.
    pub fn delete(entity: impl Into<String>, id: impl Into<String>) -> Self {
        Row {
            entity: entity.into(),
            id: id.into(),
            op: RowOp::Delete,
            data: Map::new(),
        }
    }
}

/// What one change turned into.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Shaped {
    /// The rows, in order.
    pub rows: Vec<Row>,
    /// When set, `rows` is the complete set of this entity; the host deletes
    /// every other row of it.
    pub complete_set: Option<String>,
}

impl Shaped {
    /// No rows: the change is ignored.
    pub fn none() -> Self {
        Shaped::default()
    }

    /// Exactly one row.
    pub fn row(row: Row) -> Self {
        Shaped {
            rows: vec![row],
            complete_set: None,
        }
    }

    /// Several rows.
    pub fn rows(rows: Vec<Row>) -> Self {
        Shaped {
            rows,
            complete_set: None,
        }
    }

    /// `rows` is the complete set of `entity`.
    pub fn complete_set(entity: impl Into<String>, rows: Vec<Row>) -> Self {
        Shaped {
            rows,
            complete_set: Some(entity.into()),
        }
    }
}

/// One key-value write into a key cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheWrite {
    /// The key.
    pub key: String,
    /// The value.
    pub value: String,
}

impl CacheWrite {
    /// A write of `value` under `key`.
    pub fn new(key: impl Into<String>, value: impl Into<String>) -> Self {
        CacheWrite {
            key: key.into(),
            value: value.into(),
        }
    }
}

/// Which entity of which source collection a plugin serves (`*` = any).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    /// Entity name or `*`.
    pub entity: String,
    /// Source name or `*`.
    pub source: String,
    /// Collection name or `*`.
    pub collection: String,
}

/// What a plugin says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginInfo {
    /// Unique plugin name.
    pub name: String,
    /// Plugin version.
    pub version: String,
    /// One line on what it does.
    pub description: String,
    /// What it serves.
    pub bindings: Vec<Binding>,
}

impl PluginInfo {
    /// A plugin called `name` at `version`, serving nothing yet.
    pub fn new(name: impl Into<String>, version: impl Into<String>) -> Self {
        PluginInfo {
            name: name.into(),
            version: version.into(),
            description: String::new(),
            bindings: Vec::new(),
        }
    }

    /// Set the description.
    pub fn description(mut self, description: impl Into<String>) -> Self {
        self.description = description.into();
        self
    }

    /// Add a binding: this plugin serves `entity` from `source`/`collection`.
    pub fn serving(
        mut self,
        entity: impl Into<String>,
        source: impl Into<String>,
        collection: impl Into<String>,
    ) -> Self {
        self.bindings.push(Binding {
            entity: entity.into(),
            source: source.into(),
            collection: collection.into(),
        });
        self
    }
}

/// The type of a table column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnType {
    /// Any JSON value, stored as JSON text.
    Jsonb,
    /// A scalar stored as is; arrays and objects as JSON text.
    Any,
    /// true / false.
    Bool,
    /// A floating-point number.
    Number,
    /// A 64-bit signed integer.
    Integer,
    /// A string.
    Text,
}

impl ColumnType {
    /// Parse the names of the seed's shape format: `JSONB, Any, Bool, Number,
    /// Integer, Text` (case-insensitive).
    pub fn parse(name: &str) -> Option<ColumnType> {
        Some(match name.to_ascii_lowercase().as_str() {
            "jsonb" | "json" => ColumnType::Jsonb,
            "any" => ColumnType::Any,
            "bool" | "boolean" => ColumnType::Bool,
            "number" | "float" | "real" | "double" => ColumnType::Number,
            "integer" | "int" => ColumnType::Integer,
            "text" | "string" => ColumnType::Text,
            _ => return None,
        })
    }

    /// The canonical name (`JSONB`, `Any`, `Bool`, `Number`, `Integer`, `Text`).
    pub fn name(self) -> &'static str {
        match self {
            ColumnType::Jsonb => "JSONB",
            ColumnType::Any => "Any",
            ColumnType::Bool => "Bool",
            ColumnType::Number => "Number",
            ColumnType::Integer => "Integer",
            ColumnType::Text => "Text",
        }
    }
}

/// One column of a table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// Name; `id` holds the row id.
    pub name: String,
    /// Type.
    pub ty: ColumnType,
}

/// A secondary index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Index {
    /// Index name.
    pub name: String,
    /// Indexed columns.
    pub columns: Vec<String>,
    /// Whether it is unique.
    pub unique: bool,
}

/// The tabular layout of an entity.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TableLayout {
    /// Columns, `id` first.
    pub columns: Vec<Column>,
    /// Secondary indexes.
    pub indexes: Vec<Index>,
}

/// One change with its JSON still as text, as it crossed the boundary: the
/// input of [`Plugin::shape_raw`](crate::Plugin::shape_raw).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawChange {
    /// The source, e.g. `mongo`.
    pub source: String,
    /// The collection or entity type within the source.
    pub collection: String,
    /// What happened.
    pub op: ChangeOp,
    /// The document id.
    pub id: String,
    /// The document as JSON text, or for a partial change the changed fields.
    pub document: Option<String>,
    /// The entity's current row for this id as JSON text (an object), when
    /// the host has one.
    pub current: Option<String>,
}

impl RawChange {
    /// Parse the JSON into a [`Change`], as the SDK does before calling
    /// [`Plugin::shape`](crate::Plugin::shape). Invalid JSON, or a current
    /// row that is not an object, is an item error naming the id.
    pub fn parse(self) -> Result<Change> {
        crate::runner::change_from_raw(self).map_err(Error::msg)
    }
}

/// One row with its fields already serialised: the output of
/// [`Plugin::shape_raw`](crate::Plugin::shape_raw).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawRow {
    /// The entity.
    pub entity: String,
    /// The row id within the entity.
    pub id: String,
    /// Upsert or delete.
    pub op: RowOp,
    /// The row's fields as the JSON text of one object (`{}` for a delete).
    pub data: String,
}

impl RawRow {
    /// An upsert row whose fields are the JSON object text `data`.
    pub fn upsert(entity: impl Into<String>, id: impl Into<String>, data: String) -> Self {
        RawRow {
            entity: entity.into(),
            id: id.into(),
            op: RowOp::Upsert,
            data,
        }
    }

    /// A delete row.
    pub fn delete(entity: impl Into<String>, id: impl Into<String>) -> Self {
        RawRow {
            entity: entity.into(),
            id: id.into(),
            op: RowOp::Delete,
            data: String::from("{}"),
        }
    }
}

impl RawRow {
    /// Parse the row's fields, as the SDK does before calling
    /// [`Plugin::keys`](crate::Plugin::keys). Invalid JSON, or fields that
    /// are not an object, is an item error naming the id.
    pub fn parse(self) -> Result<Row> {
        let data = if self.data.is_empty() {
            Map::new()
        } else {
            crate::runner::parse_object("row", &self.id, &self.data).map_err(Error::msg)?
        };
        Ok(Row {
            entity: self.entity,
            id: self.id,
            op: self.op,
            data,
        })
    }
}

impl From<Row> for RawRow {
    /// Serialise the row's fields.
    fn from(row: Row) -> Self {
        RawRow {
            data: crate::runner::json_text(&row.data),
            entity: row.entity,
            id: row.id,
            op: row.op,
        }
    }
}

/// What one change turned into, with the rows serialised: the output of
/// [`Plugin::shape_raw`](crate::Plugin::shape_raw).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RawShaped {
    /// The rows, in order.
    pub rows: Vec<RawRow>,
    /// When set, `rows` is the complete set of this entity; the host deletes
    /// every other row of it.
    pub complete_set: Option<String>,
}

impl RawShaped {
    /// Exactly one row.
    pub fn row(row: RawRow) -> Self {
        RawShaped {
            rows: vec![row],
            complete_set: None,
        }
    }
}

impl From<Shaped> for RawShaped {
    /// Serialise every row.
    fn from(shaped: Shaped) -> Self {
        RawShaped {
            rows: shaped.rows.into_iter().map(RawRow::from).collect(),
            complete_set: shaped.complete_set,
        }
    }
}
