//! An entity's cache layout: the plugin's version string and table, as
//! published in the oplog store so that any cache node can read it without
//! running the plugin.
//!
//! The entity manager publishes layouts (in the store, for other nodes, and
//! on its [`LayoutBoard`]); cache writers never ask a plugin for a version
//! or a table: they read their [`Layouts`] view, which is pushed every
//! change.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::oplog::{MetaKey, OplogStore, StoreError};
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
    /// Which life of the entity this is: its creation time (Unix ms). A
    /// deleted and re-created entity gets a new one, so a cache built for
    /// its previous life (e.g. on a node that missed the delete) is rebuilt
    /// instead of reused. 0 when unknown (layouts published before it existed).
    #[serde(default)]
    pub generation: i64,
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
        EntityLayout {
            version,
            table,
            generation: 0,
        }
    }

    /// This layout for the entity life `generation` (see [`EntityLayout::generation`]).
    pub fn with_generation(mut self, generation: i64) -> EntityLayout {
        self.generation = generation;
        self
    }

    /// The metadata key `entity`'s layout is published under (`layout:{entity}`).
    pub fn key(entity: &str) -> String {
        MetaKey::Layout(entity).key()
    }

    /// The layout published for `entity`, if any. A JSON `null` counts as
    /// none: earlier versions deleted an entity's layout by writing `null`.
    pub async fn load(
        store: &dyn OplogStore,
        entity: &str,
    ) -> Result<Option<EntityLayout>, StoreError> {
        match store.meta_get(&Self::key(entity)).await? {
            None | Some(serde_json::Value::Null) => Ok(None),
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

    /// This layout as the JSON value stored under [`EntityLayout::key`].
    pub fn to_value(&self) -> Result<serde_json::Value, StoreError> {
        serde_json::to_value(self).map_err(|e| StoreError::Corrupt {
            what: "metadata layout",
            reason: e.to_string(),
        })
    }

    /// Publish this layout for `entity`; returns whether it changed.
    pub async fn publish(&self, store: &dyn OplogStore, entity: &str) -> Result<bool, StoreError> {
        // A value that does not decode is replaced, not an error: publishing is the repair.
        if Self::load(store, entity).await.ok().flatten().as_ref() == Some(self) {
            return Ok(false);
        }
        store
            .meta_set(&Self::key(entity), &self.to_value()?)
            .await?;
        Ok(true)
    }

    /// Whether a cache built with plugin version `version` for entity life
    /// `generation` can keep serving under this (published) layout: same
    /// version and same life (an unknown generation, 0, matches any).
    pub fn is_served_by(&self, version: &str, generation: i64) -> bool {
        self.version == version
            && (self.generation == generation || self.generation == 0 || generation == 0)
    }
}

/// The layouts the entity manager published, by entity name.
pub type LayoutMap = BTreeMap<String, EntityLayout>;

/// The publishing side of the published layouts: the entity manager owns
/// one and updates it with every layout it stores, publishes or removes;
/// every change is pushed to the [`Layouts`] views of the cache writers.
#[derive(Debug)]
pub struct LayoutBoard {
    tx: watch::Sender<Arc<LayoutMap>>,
}

impl Default for LayoutBoard {
    fn default() -> Self {
        LayoutBoard::new()
    }
}

impl LayoutBoard {
    /// An empty board.
    pub fn new() -> LayoutBoard {
        LayoutBoard {
            tx: watch::Sender::new(Arc::new(LayoutMap::new())),
        }
    }

    /// `entity` is served under `layout` from now on; subscribers are told
    /// only when it differs from what they have.
    pub fn set(&self, entity: &str, layout: &EntityLayout) {
        self.tx.send_if_modified(|map| {
            if map.get(entity) == Some(layout) {
                return false;
            }
            Arc::make_mut(map).insert(entity.to_owned(), layout.clone());
            true
        });
    }

    /// `entity` has no layout any more (deleted).
    pub fn remove(&self, entity: &str) {
        self.tx.send_if_modified(|map| {
            if !map.contains_key(entity) {
                return false;
            }
            Arc::make_mut(map).remove(entity);
            true
        });
    }

    /// A view that sees every later change.
    pub fn subscribe(&self) -> Layouts {
        Layouts {
            rx: self.tx.subscribe(),
        }
    }
}

/// A cache writer's view of the published layouts (see [`LayoutBoard`]).
/// Cloning gives an independent view.
#[derive(Debug, Clone)]
pub struct Layouts {
    rx: watch::Receiver<Arc<LayoutMap>>,
}

impl Layouts {
    /// A view to which nothing is ever pushed: a writer reads every layout
    /// as published in the store, when it applies the entity's rows (a
    /// process without an entity manager, such as a benchmark).
    pub fn published_only() -> Layouts {
        LayoutBoard::new().subscribe()
    }

    /// The layouts now, marking them seen (see [`Layouts::changed`]).
    pub fn current(&mut self) -> Arc<LayoutMap> {
        self.rx.borrow_and_update().clone()
    }

    /// The layouts now, without marking them seen.
    pub fn peek(&self) -> Arc<LayoutMap> {
        self.rx.borrow().clone()
    }

    /// Whether the layouts changed since they were last marked seen.
    pub fn has_changed(&self) -> bool {
        self.rx.has_changed().unwrap_or(false)
    }

    /// Wait until the layouts change (never returns once the board is gone).
    pub async fn changed(&mut self) {
        if self.rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// `entity`'s layout: as pushed, else as published in `store` (an
    /// entity another node created before this node's manager saw it).
    pub async fn resolve(
        &self,
        store: &dyn OplogStore,
        entity: &str,
    ) -> Result<Option<EntityLayout>, StoreError> {
        let pushed = self.rx.borrow().get(entity).cloned();
        match pushed {
            Some(layout) => Ok(Some(layout)),
            None => EntityLayout::load(store, entity).await,
        }
    }

    /// The entities whose layout differs between `before` and `after`
    /// (changed, added or removed).
    pub fn diff(before: &LayoutMap, after: &LayoutMap) -> BTreeSet<String> {
        let mut changed: BTreeSet<String> = after
            .iter()
            .filter(|(entity, layout)| before.get(*entity) != Some(*layout))
            .map(|(entity, _)| entity.clone())
            .collect();
        changed.extend(
            before
                .keys()
                .filter(|entity| !after.contains_key(*entity))
                .cloned(),
        );
        changed
    }
}
