//! An entity's cache layout: the plugin's version string and table, as
//! published in the oplog store so that any cache node can read it without
//! running the plugin.

use serde::{Deserialize, Serialize};

use crate::oplog::{OplogStore, StoreError};
use crate::plugin;

/// A column type of a tabular cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ColumnKind {
    /// Any JSON value, stored as JSON text.
    Jsonb,
    /// A scalar stored as is; arrays and objects as JSON text.
    Any,
    /// Stored as 0 / 1.
    Bool,
    /// REAL.
    Number,
    /// INTEGER.
    Integer,
    /// TEXT.
    Text,
}

impl ColumnKind {
    /// The SQLite declared type.
    pub fn sql_type(self) -> &'static str {
        match self {
            ColumnKind::Jsonb | ColumnKind::Text => "TEXT",
            ColumnKind::Any => "ANY",
            ColumnKind::Bool | ColumnKind::Integer => "INTEGER",
            ColumnKind::Number => "REAL",
        }
    }
}

/// One column.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ColumnSpec {
    /// Column name.
    pub name: String,
    /// Its type.
    pub kind: ColumnKind,
}

/// One secondary index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexSpec {
    /// Index name.
    pub name: String,
    /// Its columns.
    pub columns: Vec<String>,
    /// Unique or not.
    pub unique: bool,
}

/// A table layout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableSpec {
    /// Columns; `id` is the primary key.
    pub columns: Vec<ColumnSpec>,
    /// Secondary indexes.
    pub indexes: Vec<IndexSpec>,
}

impl TableSpec {
    /// The layout of an entity whose plugin defines no table: `id` and the
    /// row as JSON in `data`.
    pub fn json_document() -> TableSpec {
        TableSpec {
            columns: vec![
                ColumnSpec {
                    name: "id".into(),
                    kind: ColumnKind::Text,
                },
                ColumnSpec {
                    name: "data".into(),
                    kind: ColumnKind::Jsonb,
                },
            ],
            indexes: Vec::new(),
        }
    }

    /// Whether rows are stored whole in a `data` column (no plugin table).
    pub fn is_json_document(&self) -> bool {
        *self == TableSpec::json_document()
    }
}

/// What a cache needs to know about an entity's layout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntityLayout {
    /// The plugin's version string for the entity; a change rebuilds caches.
    pub version: String,
    /// The table.
    pub table: TableSpec,
}

impl EntityLayout {
    /// The layout a plugin reports (`version`, `table`).
    pub fn from_plugin(version: String, table: Option<plugin::TableLayout>) -> EntityLayout {
        let table = match table {
            None => TableSpec::json_document(),
            Some(layout) => TableSpec {
                columns: layout
                    .columns
                    .into_iter()
                    .map(|c| ColumnSpec {
                        name: c.name,
                        kind: match c.type_ {
                            plugin::ColumnType::Jsonb => ColumnKind::Jsonb,
                            plugin::ColumnType::Any => ColumnKind::Any,
                            plugin::ColumnType::Boolean => ColumnKind::Bool,
                            plugin::ColumnType::Number => ColumnKind::Number,
                            plugin::ColumnType::Integer => ColumnKind::Integer,
                            plugin::ColumnType::Text => ColumnKind::Text,
                        },
                    })
                    .collect(),
                indexes: layout
                    .indexes
                    .into_iter()
                    .map(|i| IndexSpec {
                        name: i.name,
                        columns: i.columns,
                        unique: i.unique,
                    })
                    .collect(),
            },
        };
        EntityLayout { version, table }
    }

    fn key(entity: &str) -> String {
        format!("layout:{entity}")
    }

    /// The layout published for `entity`, if any.
    pub async fn load(
        store: &dyn OplogStore,
        entity: &str,
    ) -> Result<Option<EntityLayout>, StoreError> {
        match store.meta_get(&Self::key(entity)).await? {
            None => Ok(None),
            Some(value) => {
                serde_json::from_value(value)
                    .map(Some)
                    .map_err(|e| StoreError::Corrupt {
                        what: "metadata layout",
                        reason: e.to_string(),
                    })
            }
        }
    }

    /// Publish this layout for `entity`; returns whether it changed.
    pub async fn publish(&self, store: &dyn OplogStore, entity: &str) -> Result<bool, StoreError> {
        if Self::load(store, entity).await?.as_ref() == Some(self) {
            return Ok(false);
        }
        let value = serde_json::to_value(self).map_err(|e| StoreError::Corrupt {
            what: "metadata layout",
            reason: e.to_string(),
        })?;
        store.meta_set(&Self::key(entity), &value).await?;
        Ok(true)
    }
}
