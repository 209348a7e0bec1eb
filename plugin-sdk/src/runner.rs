//! The glue between the WIT bindings and a [`Plugin`]: batch loops, JSON
//! parsing and serialisation, and the conversion of item errors to values.

use serde_json::{Map, Value};

use crate::Plugin;
use crate::bindings::emcachers::plugin::types as wit;
use crate::model::{
    Binding, CacheWrite, Change, ChangeOp, ColumnType, PluginInfo, RawChange, RawRow, RawShaped,
    Row, RowOp, Shaped, TableLayout,
};

/// Runs a [`Plugin`] behind the WIT interface. The exported component and
/// [`testing::Harness`](crate::testing::Harness) both go through it, so a
/// native test exercises the same conversions as the WebAssembly build.
pub struct Runner<P> {
    plugin: P,
}

impl<P: Plugin> Runner<P> {
    /// Wrap a plugin value.
    pub fn new(plugin: P) -> Self {
        Runner { plugin }
    }

    /// The wrapped plugin.
    pub fn plugin(&self) -> &P {
        &self.plugin
    }

    /// `describe`.
    pub fn describe(&self) -> wit::PluginInfo {
        info_to_wit(self.plugin.describe())
    }

    /// `configure`: parse the JSON and hand it to the plugin.
    pub fn configure(&mut self, entity: &str, config: &str) -> Result<(), String> {
        let config: Value = serde_json::from_str(config)
            .map_err(|e| format!("configuration of entity {entity} is not valid JSON: {e}"))?;
        self.plugin.configure(entity, config).map_err(String::from)
    }

    /// `shape`: one result per change, in order.
    pub fn shape(
        &self,
        entity: &str,
        changes: Vec<wit::Change>,
    ) -> Vec<Result<wit::Shaped, String>> {
        changes
            .into_iter()
            .map(|change| {
                let shaped = self
                    .plugin
                    .shape_raw(entity, change_to_raw(change))
                    .map_err(String::from)?;
                Ok(raw_shaped_to_wit(shaped))
            })
            .collect()
    }

    /// `keys`: one result per row, in order.
    pub fn keys(
        &self,
        entity: &str,
        rows: Vec<wit::Row>,
    ) -> Vec<Result<Vec<wit::CacheWrite>, String>> {
        rows.into_iter()
            .map(|row| {
                let writes = self
                    .plugin
                    .keys_raw(entity, row_to_raw(row))
                    .map_err(String::from)?;
                Ok(writes.into_iter().map(write_to_wit).collect())
            })
            .collect()
    }

    /// `version`.
    pub fn version(&self, entity: &str) -> String {
        self.plugin.version(entity)
    }

    /// `table`.
    pub fn table(&self, entity: &str) -> Option<wit::TableLayout> {
        self.plugin.table(entity).map(layout_to_wit)
    }
}

/// Serialise JSON straight into a `String`. (`Value::to_string` goes through
/// `fmt::Display` and is several times slower, which shows inside a guest.)
pub(crate) fn json_text<T: serde::Serialize + ?Sized>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| String::from("null"))
}

pub(crate) fn parse_object(what: &str, id: &str, text: &str) -> Result<Map<String, Value>, String> {
    match serde_json::from_str(text) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(other) => Err(format!("{what} of {id} is not a JSON object: {other}")),
        Err(e) => Err(format!("{what} of {id} is not valid JSON: {e}")),
    }
}

fn change_to_raw(change: wit::Change) -> RawChange {
    RawChange {
        source: change.source,
        collection: change.collection,
        op: match change.op {
            wit::ChangeOp::Upsert => ChangeOp::Upsert,
            wit::ChangeOp::Delete => ChangeOp::Delete,
            wit::ChangeOp::Partial => ChangeOp::Partial,
        },
        id: change.id,
        document: change.document,
        current: change.current,
    }
}

pub(crate) fn change_from_raw(change: RawChange) -> Result<Change, String> {
    let document = match change.document {
        Some(text) => Some(
            serde_json::from_str(&text)
                .map_err(|e| format!("document {} is not valid JSON: {e}", change.id))?,
        ),
        None => None,
    };
    let current = match change.current {
        Some(text) => Some(parse_object("current row", &change.id, &text)?),
        None => None,
    };
    Ok(Change {
        source: change.source,
        collection: change.collection,
        op: change.op,
        id: change.id,
        document,
        current,
    })
}

pub(crate) fn change_to_wit(change: &Change) -> wit::Change {
    wit::Change {
        source: change.source.clone(),
        collection: change.collection.clone(),
        op: match change.op {
            ChangeOp::Upsert => wit::ChangeOp::Upsert,
            ChangeOp::Delete => wit::ChangeOp::Delete,
            ChangeOp::Partial => wit::ChangeOp::Partial,
        },
        id: change.id.clone(),
        document: change.document.as_ref().map(json_text),
        current: change.current.as_ref().map(json_text),
    }
}

/// A WIT row as a [`RawRow`] (no parsing).
pub(crate) fn row_to_raw(row: wit::Row) -> RawRow {
    RawRow {
        entity: row.entity,
        id: row.id,
        op: match row.op {
            wit::RowOp::Upsert => RowOp::Upsert,
            wit::RowOp::Delete => RowOp::Delete,
        },
        data: row.data,
    }
}

pub(crate) fn row_from_wit(row: wit::Row) -> Result<Row, String> {
    let data = if row.data.is_empty() {
        Map::new()
    } else {
        parse_object("row", &row.id, &row.data)?
    };
    Ok(Row {
        entity: row.entity,
        id: row.id,
        op: match row.op {
            wit::RowOp::Upsert => RowOp::Upsert,
            wit::RowOp::Delete => RowOp::Delete,
        },
        data,
    })
}

pub(crate) fn row_to_wit(row: Row) -> wit::Row {
    wit::Row {
        data: json_text(&row.data),
        entity: row.entity,
        id: row.id,
        op: match row.op {
            RowOp::Upsert => wit::RowOp::Upsert,
            RowOp::Delete => wit::RowOp::Delete,
        },
    }
}

fn raw_shaped_to_wit(shaped: RawShaped) -> wit::Shaped {
    wit::Shaped {
        rows: shaped
            .rows
            .into_iter()
            .map(|row: RawRow| wit::Row {
                entity: row.entity,
                id: row.id,
                op: match row.op {
                    RowOp::Upsert => wit::RowOp::Upsert,
                    RowOp::Delete => wit::RowOp::Delete,
                },
                data: row.data,
            })
            .collect(),
        complete_set: shaped.complete_set,
    }
}

pub(crate) fn shaped_from_wit(shaped: wit::Shaped) -> Result<Shaped, String> {
    Ok(Shaped {
        rows: shaped
            .rows
            .into_iter()
            .map(row_from_wit)
            .collect::<Result<_, _>>()?,
        complete_set: shaped.complete_set,
    })
}

fn write_to_wit(write: CacheWrite) -> wit::CacheWrite {
    wit::CacheWrite {
        key: write.key,
        value: write.value,
    }
}

pub(crate) fn write_from_wit(write: wit::CacheWrite) -> CacheWrite {
    CacheWrite {
        key: write.key,
        value: write.value,
    }
}

fn info_to_wit(info: PluginInfo) -> wit::PluginInfo {
    wit::PluginInfo {
        name: info.name,
        version: info.version,
        description: info.description,
        bindings: info
            .bindings
            .into_iter()
            .map(|b| wit::Binding {
                entity: b.entity,
                source: b.source,
                collection: b.collection,
            })
            .collect(),
    }
}

pub(crate) fn info_from_wit(info: wit::PluginInfo) -> PluginInfo {
    PluginInfo {
        name: info.name,
        version: info.version,
        description: info.description,
        bindings: info
            .bindings
            .into_iter()
            .map(|b| Binding {
                entity: b.entity,
                source: b.source,
                collection: b.collection,
            })
            .collect(),
    }
}

fn layout_to_wit(layout: TableLayout) -> wit::TableLayout {
    wit::TableLayout {
        columns: layout
            .columns
            .into_iter()
            .map(|c| wit::Column {
                name: c.name,
                type_: match c.ty {
                    ColumnType::Jsonb => wit::ColumnType::Jsonb,
                    ColumnType::Any => wit::ColumnType::Any,
                    ColumnType::Bool => wit::ColumnType::Boolean,
                    ColumnType::Number => wit::ColumnType::Number,
                    ColumnType::Integer => wit::ColumnType::Integer,
                    ColumnType::Text => wit::ColumnType::Text,
                },
            })
            .collect(),
        indexes: layout
            .indexes
            .into_iter()
            .map(|i| wit::Index {
                name: i.name,
                columns: i.columns,
                unique: i.unique,
            })
            .collect(),
    }
}

pub(crate) fn layout_from_wit(layout: wit::TableLayout) -> TableLayout {
    use crate::model::{Column, Index};
    TableLayout {
        columns: layout
            .columns
            .into_iter()
            .map(|c| Column {
                name: c.name,
                ty: match c.type_ {
                    wit::ColumnType::Jsonb => ColumnType::Jsonb,
                    wit::ColumnType::Any => ColumnType::Any,
                    wit::ColumnType::Boolean => ColumnType::Bool,
                    wit::ColumnType::Number => ColumnType::Number,
                    wit::ColumnType::Integer => ColumnType::Integer,
                    wit::ColumnType::Text => ColumnType::Text,
                },
            })
            .collect(),
        indexes: layout
            .indexes
            .into_iter()
            .map(|i| Index {
                name: i.name,
                columns: i.columns,
                unique: i.unique,
            })
            .collect(),
    }
}
