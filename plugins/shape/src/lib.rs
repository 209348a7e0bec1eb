//! Declarative shapes: map source documents to typed entity rows by JSON path.
//!
//! The `shape` plugin serves any entity (its binding is `*`/`*`/`*`); what it
//! does for an entity is set by that entity's configuration, the shape format
//! of the original emcachers design:
//!
//! ```json
//! {
//!   "entity_name": "users",
//!   "source_name": "users",
//!   "columns": [
//!     {"name": "id",         "type": "Text",    "path": "_id"},
//!     {"name": "email",      "type": "Text",    "path": "email"},
//!     {"name": "city",       "type": "Text",    "path": "address.city"},
//!     {"name": "logins",     "type": "Integer", "path": "stats.logins"},
//!     {"name": "active",     "type": "Bool",    "path": "active"},
//!     {"name": "created_at", "type": "Text",    "path": "createdAt"},
//!     {"name": "tags",       "type": "JSONB",   "path": "tags"}
//!   ],
//!   "indexes": [
//!     {"name": "by_email", "columns": ["email"], "unique": true},
//!     {"columns": ["city"]}
//!   ]
//! }
//! ```
//!
//! # Fields
//!
//! * `columns` (required, at least one): `name`, `type` and `path`.
//!   * `type` is one of `JSONB`, `Any`, `Bool`, `Number`, `Integer`, `Text`
//!     (case-insensitive; see [`ColumnType::parse`] for the accepted aliases).
//!   * `path` is a dotted JSON path into the document (`address.city`,
//!     `items.0.sku`; see [`json_path`]). It defaults to the column name; the
//!     empty path `""` is the whole document.
//!   * Column names must be unique, compared case-insensitively (SQLite
//!     column names are).
//!   * A column named `id` is required. It holds the row id, which is always
//!     the change's id (for MongoDB, the `_id` rendered as a string): its
//!     `path` is documentation only. Its type must be `Text` or `Integer`. The
//!     plugin does not invent an implicit `id` column; a shape without one is
//!     rejected, so every table's key is visible in its configuration.
//! * `indexes` (optional): `columns` (required, existing column names),
//!   `name` (default `{entity}_{columns joined by _}`), `unique` (default
//!   `false`).
//! * `entity_name` (optional): when present it must equal the entity being
//!   configured, which catches a configuration pasted under the wrong entity.
//! * `source_name` (optional): recorded for reference; routing changes to
//!   entities is the host's job.
//!
//! Any other field is an error, so a typo such as `"colums"` or `"pth"` is
//! reported at configuration time instead of silently producing nulls.
//!
//! # Changes to rows
//!
//! * **Upsert**: every column is read at its path; a missing field is `null`;
//!   a present value is converted with [`coerce::column`] (which understands
//!   MongoDB extended JSON such as `{"$oid": ..}`, `{"$date": ..}`,
//!   `{"$numberLong": ..}`). A value that does not fit its type is an item
//!   error naming the entity, the id, the column and the value, e.g.
//!   `entity users, id u1, column logins: expected Integer, found "abc"`.
//!   The rest of the batch is unaffected.
//! * **Delete**: one delete row.
//! * **Partial**: needs the entity's current row (`change.current`). The row
//!   starts from the current values; a column is replaced when the partial
//!   document touches its path: the path itself is present (as nested
//!   objects or as a dotted key such as MongoDB's `{"address.city": ..}`), a
//!   parent of it was replaced (`{"address": {..}}` without `city` makes
//!   `city` null), or a field below it changed (`{"tags.0": ..}` patches the
//!   current value of a `tags` column).
//!
//! # Keys, version and table
//!
//! * `keys`: one write, `{entity}:{version}:{id}` → the row as JSON.
//! * `version`: `shape-v{major}-{hash}`, where `hash` is the first 12 hex
//!   digits of the SHA-256 of the entity's normalized shape (columns in table
//!   order with canonical type names and paths, the `id` path left out as it
//!   is not used; indexes with their resolved names; a revision of the
//!   mapping rules). It changes exactly when the layout or the mapping changes, not
//!   when the configuration is merely re-spelled (`"text"` for `"Text"`, the
//!   `id` column moved, an index name spelled out as its default).
//! * `table`: the columns, `id` first, and the indexes.

use std::borrow::Cow;
use std::collections::HashMap;

use emcachers_plugin_sdk::json_path::Selector;
use emcachers_plugin_sdk::{
    CacheWrite, Change, ChangeOp, Column, ColumnType, Error, Index, Map, Plugin, PluginInfo,
    RawChange, RawRow, RawShaped, Result, Row, RowOp, Shaped, TableLayout, Value, coerce,
    json_path, serde_json,
};
use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize, Serializer};
use sha2::{Digest, Sha256};

/// The plugin's name, as entities refer to it.
pub const NAME: &str = "shape";

/// The plugin's version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Revision of the mapping rules, hashed into every entity version. Bump it
/// when the same configuration starts producing different rows, so the host
/// rebuilds the caches.
const RULES: u32 = 1;

/// The name of the column that holds the row id.
const ID: &str = "id";

/// The configuration of one entity, as given to `configure`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShapeConfig {
    /// The entity's name; when present it must match the configured entity.
    #[serde(default)]
    pub entity_name: Option<String>,
    /// The source collection the entity comes from (informational).
    #[serde(default)]
    pub source_name: Option<String>,
    /// The columns; one must be named `id`.
    pub columns: Vec<ColumnConfig>,
    /// Secondary indexes.
    #[serde(default)]
    pub indexes: Vec<IndexConfig>,
}

/// One column of a [`ShapeConfig`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnConfig {
    /// Column name.
    pub name: String,
    /// Type name: `JSONB`, `Any`, `Bool`, `Number`, `Integer` or `Text`.
    #[serde(rename = "type")]
    pub ty: String,
    /// Dotted path into the document; defaults to the column name.
    #[serde(default)]
    pub path: Option<String>,
}

/// One index of a [`ShapeConfig`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IndexConfig {
    /// Index name; defaults to `{entity}_{columns joined by _}`.
    #[serde(default)]
    pub name: Option<String>,
    /// Indexed columns, in order.
    pub columns: Vec<String>,
    /// Whether the index is unique (default `false`).
    #[serde(default)]
    pub unique: bool,
}

/// A non-id column, ready for mapping.
#[derive(Debug, Clone)]
struct Field {
    name: String,
    ty: ColumnType,
    path: String,
}

/// The compiled shape of one entity: everything `shape` and `keys` need,
/// computed once at `configure`.
#[derive(Debug, Clone)]
struct EntityShape {
    id_ty: ColumnType,
    fields: Vec<Field>,
    layout: TableLayout,
    version: String,
    /// `{entity}:{version}:`, the prefix of every cache key.
    key_prefix: String,
    /// Parses upsert documents down to what the field paths reach.
    selector: Selector,
    /// The row's members in the order of its JSON object (`Map`'s: by
    /// name): `None` for `id`, else the index into `fields`.
    json_order: Vec<Option<usize>>,
}

/// The `shape` plugin: declarative, per-entity mapping of documents to typed
/// rows. Use it through [`Plugin`] (or natively through
/// `emcachers_plugin_sdk::testing::Harness<ShapePlugin>`).
#[derive(Debug, Default)]
pub struct ShapePlugin {
    entities: HashMap<String, EntityShape>,
}

impl ShapePlugin {
    /// Whether `entity` has an accepted configuration.
    pub fn is_configured(&self, entity: &str) -> bool {
        self.entities.contains_key(entity)
    }

    fn entity(&self, entity: &str) -> Result<&EntityShape> {
        self.entities
            .get(entity)
            .ok_or_else(|| Error::msg(format!("entity {entity} is not configured")))
    }
}

impl Plugin for ShapePlugin {
    fn describe(&self) -> PluginInfo {
        PluginInfo::new(NAME, VERSION)
            .description("Declarative shapes: map documents to typed entity rows by JSON path")
            .serving("*", "*", "*")
    }

    fn configure(&mut self, entity: &str, config: Value) -> Result<()> {
        // A rejected configuration leaves the entity unserved, not on its old shape.
        self.entities.remove(entity);
        let shape = EntityShape::compile(entity, config)?;
        self.entities.insert(entity.to_owned(), shape);
        Ok(())
    }

    fn shape(&self, entity: &str, change: Change) -> Result<Shaped> {
        let shape = self.entity(entity)?;
        let data = match change.op {
            ChangeOp::Delete => return Ok(Shaped::row(Row::delete(entity, change.id))),
            ChangeOp::Upsert => shape.upsert(entity, &change)?,
            ChangeOp::Partial => shape.partial(entity, &change)?,
        };
        Ok(Shaped::row(Row::upsert_map(entity, change.id, data)))
    }

    /// Upserts, the bulk of the traffic, skip the document DOM and the row
    /// map: the document is parsed only as far as the field paths reach
    /// (validated all the same) and the row JSON is written directly, with
    /// the same text as [`shape`](Plugin::shape) makes. Everything else goes
    /// the default way.
    fn shape_raw(&self, entity: &str, change: RawChange) -> Result<RawShaped> {
        match (&change.op, &change.document, &change.current) {
            (ChangeOp::Upsert, Some(text), None) if self.is_configured(entity) => {
                let shape = self.entity(entity)?;
                let doc = shape.selector.parse(text).map_err(|e| {
                    // The SDK's message for a document that does not parse.
                    Error::msg(format!("document {} is not valid JSON: {e}", change.id))
                })?;
                if !doc.is_object() {
                    return Err(not_an_object(entity, &change.id, doc.as_value()));
                }
                let (id, values) = shape.upsert_values(entity, &change.id, |path| doc.get(path))?;
                let data = serde_json::to_string(&RowJson {
                    shape,
                    id: &id,
                    values: &values,
                })?;
                Ok(RawShaped::row(RawRow::upsert(entity, change.id, data)))
            }
            _ => {
                let change = change.parse()?;
                self.shape(entity, change).map(RawShaped::from)
            }
        }
    }

    /// One write, `{entity}:{version}:{id}` → the row's JSON. Delete rows
    /// imply no writes.
    fn keys(&self, entity: &str, row: &Row) -> Result<Vec<CacheWrite>> {
        let shape = self.entity(entity)?;
        if row.op == RowOp::Delete {
            return Ok(Vec::new());
        }
        let mut key = String::with_capacity(shape.key_prefix.len() + row.id.len());
        key.push_str(&shape.key_prefix);
        key.push_str(&row.id);
        Ok(vec![CacheWrite {
            key,
            value: serde_json::to_string(&row.data)?,
        }])
    }

    fn version(&self, entity: &str) -> String {
        match self.entities.get(entity) {
            Some(shape) => shape.version.clone(),
            None => VERSION.to_owned(),
        }
    }

    fn table(&self, entity: &str) -> Option<TableLayout> {
        self.entities.get(entity).map(|shape| shape.layout.clone())
    }
}

impl EntityShape {
    /// Parse and validate `config` for `entity`.
    fn compile(entity: &str, config: Value) -> Result<EntityShape> {
        let config: ShapeConfig = serde_json::from_value(config).map_err(|e| {
            Error::msg(format!("entity {entity}: invalid shape configuration: {e}"))
        })?;
        let fail = |message: String| Error::msg(format!("entity {entity}: {message}"));

        if let Some(name) = &config.entity_name
            && name != entity
        {
            return Err(fail(format!(
                "entity_name {name:?} does not match the entity being configured"
            )));
        }
        if config.columns.is_empty() {
            return Err(fail("the shape has no columns".into()));
        }

        let mut id_ty = None;
        let mut fields = Vec::with_capacity(config.columns.len());
        let mut seen: Vec<String> = Vec::with_capacity(config.columns.len());
        for column in &config.columns {
            if column.name.trim().is_empty() {
                return Err(fail("a column has an empty name".into()));
            }
            let folded = column.name.to_lowercase();
            if seen.contains(&folded) {
                return Err(fail(format!(
                    "column {:?} is defined twice (names are compared case-insensitively)",
                    column.name
                )));
            }
            seen.push(folded);
            let ty = ColumnType::parse(&column.ty).ok_or_else(|| {
                fail(format!(
                    "column {}: unknown type {:?} (expected one of JSONB, Any, Bool, Number, \
                     Integer, Text)",
                    column.name, column.ty
                ))
            })?;
            if column.name == ID {
                if !matches!(ty, ColumnType::Text | ColumnType::Integer) {
                    return Err(fail(format!(
                        "column id: type {} cannot hold a row id (use Text or Integer)",
                        ty.name()
                    )));
                }
                id_ty = Some(ty);
            } else {
                let path = column.path.clone().unwrap_or_else(|| column.name.clone());
                fields.push(Field {
                    name: column.name.clone(),
                    ty,
                    path,
                });
            }
        }
        let Some(id_ty) = id_ty else {
            let hint = if seen.iter().any(|name| name == ID) {
                " (column names are case-sensitive here: name it exactly `id`)"
            } else {
                ""
            };
            return Err(fail(format!(
                "the shape has no column named `id`{hint}; add \
                 {{\"name\": \"id\", \"type\": \"Text\", \"path\": \"_id\"}}"
            )));
        };

        let mut indexes: Vec<Index> = Vec::with_capacity(config.indexes.len());
        for index in &config.indexes {
            if index.columns.is_empty() {
                return Err(fail(format!(
                    "index {}: lists no columns",
                    index.name.as_deref().unwrap_or("(unnamed)")
                )));
            }
            let name = match &index.name {
                Some(name) if name.trim().is_empty() => {
                    return Err(fail("an index has an empty name".into()));
                }
                Some(name) => name.clone(),
                None => format!("{entity}_{}", index.columns.join("_")),
            };
            for (i, column) in index.columns.iter().enumerate() {
                if column != ID && !fields.iter().any(|f| &f.name == column) {
                    return Err(fail(format!("index {name}: unknown column {column:?}")));
                }
                if index.columns[..i].contains(column) {
                    return Err(fail(format!(
                        "index {name}: column {column:?} is listed twice"
                    )));
                }
            }
            if indexes.iter().any(|other| other.name == name) {
                return Err(fail(format!("index {name} is defined twice")));
            }
            indexes.push(Index {
                name,
                columns: index.columns.clone(),
                unique: index.unique,
            });
        }

        let mut columns = Vec::with_capacity(fields.len() + 1);
        columns.push(Column {
            name: ID.to_owned(),
            ty: id_ty,
        });
        columns.extend(fields.iter().map(|f| Column {
            name: f.name.clone(),
            ty: f.ty,
        }));
        let layout = TableLayout { columns, indexes };
        let version = version_of(&layout, &fields);
        let key_prefix = format!("{entity}:{version}:");
        let selector = Selector::new(fields.iter().map(|f| f.path.as_str()));
        let mut json_order: Vec<Option<usize>> = std::iter::once(None)
            .chain((0..fields.len()).map(Some))
            .collect();
        json_order.sort_by_key(|slot| slot.map_or(ID, |i| fields[i].name.as_str()));
        Ok(EntityShape {
            id_ty,
            fields,
            layout,
            version,
            key_prefix,
            selector,
            json_order,
        })
    }

    /// The row data of a whole document.
    fn upsert(&self, entity: &str, change: &Change) -> Result<Map<String, Value>> {
        let doc = match &change.document {
            Some(doc @ Value::Object(_)) => doc,
            other => return Err(not_an_object(entity, &change.id, other.as_ref())),
        };
        let (id, values) =
            self.upsert_values(entity, &change.id, |path| json_path::get(doc, path))?;
        let mut data = Map::new();
        data.insert(ID.to_owned(), id);
        for (field, value) in self.fields.iter().zip(values) {
            data.insert(field.name.clone(), value.into_owned());
        }
        Ok(data)
    }

    /// The `id` value and the field values (in `fields` order) of a whole
    /// document, an object that `get` reads by path.
    fn upsert_values<'d>(
        &self,
        entity: &str,
        id: &str,
        get: impl Fn(&str) -> Option<&'d Value>,
    ) -> Result<(Value, Vec<Cow<'d, Value>>)> {
        let id_value = self.id_value(entity, id)?;
        let mut values = Vec::with_capacity(self.fields.len());
        for field in &self.fields {
            let value = match get(&field.path) {
                Some(raw) => coerce::column_ref(field.ty, raw)
                    .map_err(|e| column_error(entity, id, &field.name, e))?,
                None => Cow::Owned(Value::Null),
            };
            values.push(value);
        }
        Ok((id_value, values))
    }

    /// The row data after a partial change: the current row with the touched
    /// columns replaced.
    fn partial(&self, entity: &str, change: &Change) -> Result<Map<String, Value>> {
        let Some(current) = &change.current else {
            return Err(item_error(
                entity,
                &change.id,
                "a partial change needs the entity's current row, and the host has none",
            ));
        };
        let (doc, updated) = match &change.document {
            Some(doc @ Value::Object(updated)) => (doc, updated),
            Some(other) => {
                return Err(item_error(
                    entity,
                    &change.id,
                    format_args!(
                        "the partial document is not a JSON object (found {})",
                        kind(other)
                    ),
                ));
            }
            None => {
                return Err(item_error(
                    entity,
                    &change.id,
                    "a partial change has no document",
                ));
            }
        };
        let mut data = Map::new();
        data.insert(ID.to_owned(), self.id_value(entity, &change.id)?);
        for field in &self.fields {
            let now = current.get(&field.name);
            let value = match touched(doc, updated, &field.path, now) {
                Ok(Some(raw)) => convert(entity, &change.id, field, &raw)?,
                Ok(None) => now.cloned().unwrap_or(Value::Null),
                Err(TooDeep) => {
                    let message =
                        format_args!("an update is nested more than {MAX_DEPTH} levels deep");
                    return Err(column_error(entity, &change.id, &field.name, message));
                }
            };
            data.insert(field.name.clone(), value);
        }
        Ok(data)
    }

    /// The value of the `id` column: the change id, in the column's type.
    fn id_value(&self, entity: &str, id: &str) -> Result<Value> {
        match self.id_ty {
            ColumnType::Integer => coerce::column(ColumnType::Integer, &Value::String(id.into()))
                .map_err(|e| column_error(entity, id, ID, e)),
            _ => Ok(Value::String(id.to_owned())),
        }
    }
}

/// A row's JSON object, written in [`EntityShape::json_order`] without
/// building a `Map`.
struct RowJson<'a> {
    shape: &'a EntityShape,
    id: &'a Value,
    values: &'a [Cow<'a, Value>],
}

impl Serialize for RowJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.values.len() + 1))?;
        for slot in &self.shape.json_order {
            match *slot {
                None => map.serialize_entry(ID, self.id)?,
                Some(i) => map.serialize_entry(&self.shape.fields[i].name, &*self.values[i])?,
            }
        }
        map.end()
    }
}

/// The error for an upsert whose document is not an object, or missing.
fn not_an_object(entity: &str, id: &str, document: Option<&Value>) -> Error {
    match document {
        Some(other) => item_error(
            entity,
            id,
            format_args!("the document is not a JSON object (found {})", kind(other)),
        ),
        None => item_error(entity, id, "an upsert change has no document"),
    }
}

/// `entity E, id I: message`.
fn item_error(entity: &str, id: &str, message: impl std::fmt::Display) -> Error {
    Error::msg(format!("entity {entity}, id {id}: {message}"))
}

/// `entity E, id I, column C: message`, e.g. `..: expected T, found V`.
fn column_error(entity: &str, id: &str, column: &str, message: impl std::fmt::Display) -> Error {
    Error::msg(format!(
        "entity {entity}, id {id}, column {column}: {message}"
    ))
}

/// Convert a raw document value to `field`'s type.
fn convert(entity: &str, id: &str, field: &Field, raw: &Value) -> Result<Value> {
    coerce::column(field.ty, raw).map_err(|e| column_error(entity, id, &field.name, e))
}

/// What kind of JSON value `value` is, for error messages.
fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// An update nested deeper than [`MAX_DEPTH`] levels.
#[derive(Debug)]
struct TooDeep;

/// The new raw value at `path` when the partial document `doc` (whose
/// top-level keys are `updated`) touches it, `None` when it leaves it alone.
/// `current` is the column's current value, patched when only fields below
/// `path` changed.
fn touched<'a>(
    doc: &'a Value,
    updated: &Map<String, Value>,
    path: &str,
    current: Option<&Value>,
) -> Result<Option<Cow<'a, Value>>, TooDeep> {
    if path.is_empty() {
        // The whole-document column: apply every update to its current value.
        let mut base = current.cloned().unwrap_or(Value::Null);
        for (key, value) in updated {
            set_path(&mut base, key, value.clone())?;
        }
        return Ok(Some(Cow::Owned(base)));
    }
    if let Some(value) = json_path::get(doc, path) {
        return Ok(Some(Cow::Borrowed(value)));
    }
    let mut patched: Option<Value> = None;
    for (key, value) in updated {
        if below(path, key).is_some() {
            // A parent of `path` was replaced by a value without it.
            return Ok(Some(Cow::Owned(Value::Null)));
        }
        if let Some(rest) = below(key, path) {
            let base = patched.get_or_insert_with(|| current.cloned().unwrap_or(Value::Null));
            set_path(base, rest, value.clone())?;
        }
    }
    Ok(patched.map(Cow::Owned))
}

/// When `path` lies strictly below `parent` (`a.b.c` below `a`), the rest of
/// it (`b.c`).
fn below<'p>(path: &'p str, parent: &str) -> Option<&'p str> {
    path.strip_prefix(parent)?.strip_prefix('.')
}

/// The most array slots a patch may add (MongoDB pads with nulls; a hostile
/// index must not allocate without bound).
const MAX_PAD: usize = 1024;

/// The deepest path a patch may write (MongoDB's own nesting limit); deeper
/// structures could not be serialised back safely.
const MAX_DEPTH: usize = 100;

/// Set the value at the dotted `path` in `target`, creating objects (or
/// replacing scalars) on the way, as MongoDB's `$set` does.
fn set_path(target: &mut Value, path: &str, value: Value) -> Result<(), TooDeep> {
    if path.split('.').nth(MAX_DEPTH).is_some() {
        return Err(TooDeep);
    }
    let mut slot = target;
    for segment in path.split('.') {
        slot = step(slot, segment);
    }
    *slot = value;
    Ok(())
}

/// The child `segment` of `slot`: an array element (padding with nulls), or
/// an object member (turning a non-object into an object first).
fn step<'v>(slot: &'v mut Value, segment: &str) -> &'v mut Value {
    let index = match (&*slot, segment.parse::<usize>()) {
        (Value::Array(items), Ok(i)) if i < items.len() + MAX_PAD => Some(i),
        _ => None,
    };
    if index.is_none() && !slot.is_object() {
        *slot = Value::Object(Map::new());
    }
    match (slot, index) {
        (Value::Array(items), Some(i)) => {
            if i >= items.len() {
                items.resize(i + 1, Value::Null);
            }
            &mut items[i]
        }
        (Value::Object(map), _) => map.entry(segment).or_insert(Value::Null),
        (other, _) => other,
    }
}

/// `shape-v{major}-{12 hex}` of the normalized shape.
fn version_of(layout: &TableLayout, fields: &[Field]) -> String {
    let paths = std::iter::once(None).chain(fields.iter().map(|f| Some(f.path.as_str())));
    let columns: Vec<Value> = layout
        .columns
        .iter()
        .zip(paths)
        .map(|(c, path)| serde_json::json!([c.name, c.ty.name(), path]))
        .collect();
    let indexes: Vec<Value> = layout
        .indexes
        .iter()
        .map(|i| serde_json::json!([i.name, i.columns, i.unique]))
        .collect();
    let canonical = serde_json::json!({"rules": RULES, "columns": columns, "indexes": indexes});
    let digest = Sha256::digest(canonical.to_string().as_bytes());
    let hash = hex::encode(&digest[..6]);
    format!("shape-v{}-{hash}", env!("CARGO_PKG_VERSION_MAJOR"))
}

emcachers_plugin_sdk::export_plugin!(ShapePlugin);

#[cfg(test)]
mod tests;
