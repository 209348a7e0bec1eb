//! One entity's SQLite cache: `dbs/{entity}/db.sqlite`, a table named after
//! the entity with the plugin's typed columns and indexes, and a meta table
//! holding the applied oplog id and the layout version.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use rusqlite::types::{ToSql, ToSqlOutput, ValueRef};
use rusqlite::{Connection, OptionalExtension, params, params_from_iter};
use serde::Deserialize;
use serde::de::{DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

use super::layout::{ColumnKind, EntityLayout, TableSpec};
use crate::oplog::{CacheMetaKey, LatestRow, Op, OplogEntry};

/// Why a cache database operation failed.
#[derive(Debug, thiserror::Error)]
pub enum CacheDbError {
    /// SQLite said no.
    #[error("cache database {path}: {source}")]
    Sqlite {
        /// The database file.
        path: PathBuf,
        /// The error.
        source: rusqlite::Error,
    },
    /// The directory could not be created or removed.
    #[error("cache directory {path}: {source}")]
    Io {
        /// The directory or file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The entity's life was removed ([`super::CacheDbManager::remove`]):
    /// its database is not built again.
    #[error("cache of {entity}: the entity (life {generation}) was deleted")]
    Retired {
        /// The entity.
        entity: String,
        /// The generation of the layout that was refused.
        generation: i64,
    },
    /// A row's data is not a JSON object.
    #[error("cache database {path}: oplog entry {id} of {entity} has invalid data: {reason}")]
    BadRow {
        /// The database file.
        path: PathBuf,
        /// The entity.
        entity: String,
        /// The oplog id.
        id: i64,
        /// What is wrong.
        reason: String,
    },
}

/// Counts of one apply.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    /// Rows upserted.
    pub upserted: usize,
    /// Rows deleted.
    pub deleted: usize,
    /// Entries skipped as already applied.
    pub skipped: usize,
}

/// An open entity cache database.
pub struct EntityDb {
    conn: Connection,
    path: PathBuf,
    entity: String,
    layout: EntityLayout,
    applied_id: i64,
    /// The identity of the oplog its applied id counts in.
    oplog: String,
    columns: Columns,
    upsert_sql: String,
    delete_sql: String,
}

const META_TABLE: &str = "_emcachers_meta";

/// Quote an SQL identifier.
pub fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The columns of `table`, with `id` first (added as TEXT when missing).
fn columns_with_id(table: &TableSpec) -> Vec<(String, ColumnKind)> {
    let mut columns: Vec<(String, ColumnKind)> = Vec::with_capacity(table.columns.len() + 1);
    match table.columns.iter().find(|c| c.name == "id") {
        Some(id) => columns.push(("id".into(), id.kind)),
        None => columns.push(("id".into(), ColumnKind::Text)),
    }
    columns.extend(
        table
            .columns
            .iter()
            .filter(|c| c.name != "id")
            .map(|c| (c.name.clone(), c.kind)),
    );
    columns
}

/// One SQLite value of a row, borrowing its text from the row's JSON when
/// the JSON string holds no escapes.
#[derive(Debug, Clone, PartialEq)]
enum Cell<'a> {
    Null,
    Integer(i64),
    Real(f64),
    Text(Cow<'a, str>),
}

impl ToSql for Cell<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(match self {
            Cell::Null => ValueRef::Null,
            Cell::Integer(i) => ValueRef::Integer(*i),
            Cell::Real(f) => ValueRef::Real(*f),
            Cell::Text(text) => ValueRef::Text(text.as_bytes()),
        }))
    }
}

/// The columns of a layout, `id` first, and where each name is.
struct Columns {
    kinds: Vec<ColumnKind>,
    /// Column name → position, for every column but `id` (which comes from
    /// the entry's doc id, not from the row's JSON).
    by_name: HashMap<String, usize>,
}

impl Columns {
    fn new(table: &TableSpec) -> Columns {
        let columns = columns_with_id(table);
        let mut by_name = HashMap::with_capacity(columns.len());
        for (position, (name, _)) in columns.iter().enumerate().skip(1) {
            by_name.entry(name.clone()).or_insert(position);
        }
        Columns {
            kinds: columns.iter().map(|(_, kind)| *kind).collect(),
            by_name,
        }
    }
}

/// Decodes a row's JSON object straight into its cells, in column order:
/// one pass over the text, no intermediate map, strings borrowed. A column
/// whose field is absent is `Null`; of duplicate keys the last wins; `id`
/// comes from the entry's doc id. The cells and the texts rejected are
/// exactly those of parsing the row into a `serde_json::Map` and converting
/// each field (fields without a column are still fully validated, as that
/// parse would).
struct RowSeed<'c, 'a> {
    columns: &'c Columns,
    doc_id: &'a str,
}

impl<'de> DeserializeSeed<'de> for RowSeed<'_, 'de> {
    type Value = Vec<Cell<'de>>;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for RowSeed<'_, 'de> {
    type Value = Vec<Cell<'de>>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a map")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut cells = vec![Cell::Null; self.columns.kinds.len()];
        cells[0] = Cell::Text(Cow::Borrowed(self.doc_id));
        while let Some(key) = map.next_key_seed(KeySeed)? {
            match self.columns.by_name.get(key.as_ref()) {
                Some(&position) => {
                    cells[position] =
                        map.next_value_seed(CellSeed(self.columns.kinds[position]))?;
                }
                None => {
                    map.next_value::<Validated>()?;
                }
            }
        }
        Ok(cells)
    }
}

/// An object key, borrowed when it holds no escapes.
struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Cow<'de, str>;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(v))
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_owned()))
    }

    fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v))
    }
}

/// The cell of one JSON value in a column of a kind: `null` is `Null`; in a
/// `Jsonb` column anything else is its JSON text; elsewhere booleans are 0 /
/// 1, numbers are REAL in a `Number` column and INTEGER when integral and in
/// range otherwise, strings are text, and arrays and objects their JSON text
/// (as `serde_json::Value` prints them).
struct CellSeed(ColumnKind);

impl<'de> DeserializeSeed<'de> for CellSeed {
    type Value = Cell<'de>;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        if self.0 == ColumnKind::Jsonb {
            let value = Value::deserialize(d)?;
            return Ok(match value {
                Value::Null => Cell::Null,
                other => Cell::Text(Cow::Owned(other.to_string())),
            });
        }
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for CellSeed {
    type Value = Cell<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any valid JSON value")
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
        Ok(Cell::Null)
    }

    fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Self::Value, E> {
        Ok(Cell::Integer(i64::from(v)))
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(match self.0 {
            ColumnKind::Number => Cell::Real(v as f64),
            _ => Cell::Integer(v),
        })
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok(match (self.0, i64::try_from(v)) {
            (ColumnKind::Number, _) | (_, Err(_)) => Cell::Real(v as f64),
            (_, Ok(i)) => Cell::Integer(i),
        })
    }

    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Self::Value, E> {
        Ok(Cell::Real(v))
    }

    fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Cell::Text(Cow::Borrowed(v)))
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Cell::Text(Cow::Owned(v.to_owned())))
    }

    fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(Cell::Text(Cow::Owned(v)))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        let value = Value::deserialize(serde::de::value::SeqAccessDeserializer::new(seq))?;
        Ok(Cell::Text(Cow::Owned(value.to_string())))
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        let value = Value::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
        Ok(Cell::Text(Cow::Owned(value.to_string())))
    }
}

/// A JSON value parsed as `serde_json::Value` would parse it (numbers in
/// range, strings with valid escapes and surrogates) but kept nowhere.
struct Validated;

impl<'de> Deserialize<'de> for Validated {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(Validated)
    }
}

impl<'de> Visitor<'de> for Validated {
    type Value = Validated;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any valid JSON value")
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
        Ok(Validated)
    }

    fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Validated)
    }

    fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(Validated)
    }

    fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(Validated)
    }

    fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Validated)
    }

    fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<Self::Value, E> {
        Ok(Validated)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<Validated>()?.is_some() {}
        Ok(Validated)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_key_seed(KeySeed)?.is_some() {
            map.next_value::<Validated>()?;
        }
        Ok(Validated)
    }
}

impl EntityDb {
    fn sqlite_err(path: &Path) -> impl Fn(rusqlite::Error) -> CacheDbError + '_ {
        move |source| CacheDbError::Sqlite {
            path: path.to_owned(),
            source,
        }
    }

    fn connect(path: &Path) -> Result<Connection, CacheDbError> {
        let err = Self::sqlite_err(path);
        let conn = Connection::open(path).map_err(&err)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(&err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(&err)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(&err)?;
        Ok(conn)
    }

    /// Open an existing cache database; `None` when the file does not exist
    /// or holds no layout (an interrupted creation).
    pub fn open(path: &Path, entity: &str) -> Result<Option<EntityDb>, CacheDbError> {
        if !path.exists() {
            return Ok(None);
        }
        let conn = Self::connect(path)?;
        let err = Self::sqlite_err(path);
        let has_meta: bool = conn
            .query_row(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1",
                params![META_TABLE],
                |_| Ok(true),
            )
            .optional()
            .map_err(&err)?
            .unwrap_or(false);
        if !has_meta {
            return Ok(None);
        }
        let get = |key: &str| -> Result<Option<String>, CacheDbError> {
            conn.query_row(
                &format!("SELECT value FROM {META_TABLE} WHERE key = ?1"),
                params![key],
                |r| r.get(0),
            )
            .optional()
            .map_err(&err)
        };
        let (Some(layout), Some(applied)) = (
            get(CacheMetaKey::Layout.as_str())?,
            get(CacheMetaKey::AppliedOplogId.as_str())?,
        ) else {
            return Ok(None);
        };
        let Ok(layout) = serde_json::from_str::<EntityLayout>(&layout) else {
            return Ok(None);
        };
        let applied_id = applied.parse().unwrap_or(0);
        // Databases made before offsets named their oplog have none: they
        // match no oplog and are rebuilt once.
        let oplog = get(CacheMetaKey::OplogIdentity.as_str())?.unwrap_or_default();
        Ok(Some(Self::with_layout(
            conn, path, entity, layout, applied_id, oplog,
        )))
    }

    /// Create a fresh cache database at `path` (which must not exist) with
    /// `layout`, marked as applied up to `applied_id` of the oplog `oplog`
    /// (its identity).
    pub fn create(
        path: &Path,
        entity: &str,
        layout: &EntityLayout,
        applied_id: i64,
        oplog: &str,
    ) -> Result<EntityDb, CacheDbError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| CacheDbError::Io {
                path: dir.to_owned(),
                source,
            })?;
        }
        let mut conn = Self::connect(path)?;
        let err = Self::sqlite_err(path);
        let columns = columns_with_id(&layout.table);
        let table = quote(entity);
        let defs: Vec<String> = columns
            .iter()
            .map(|(name, kind)| {
                let key = if name == "id" {
                    " PRIMARY KEY NOT NULL"
                } else {
                    ""
                };
                format!("{} {}{key}", quote(name), kind.sql_type())
            })
            .collect();
        let tx = conn.transaction().map_err(&err)?;
        tx.execute_batch(&format!(
            "CREATE TABLE {META_TABLE} (key TEXT PRIMARY KEY, value TEXT NOT NULL);
             CREATE TABLE {table} ({});",
            defs.join(", ")
        ))
        .map_err(&err)?;
        for index in &layout.table.indexes {
            let cols: Vec<String> = index.columns.iter().map(|c| quote(c)).collect();
            let unique = if index.unique { "UNIQUE " } else { "" };
            tx.execute_batch(&format!(
                "CREATE {unique}INDEX {} ON {table} ({})",
                quote(&format!("{entity}__{}", index.name)),
                cols.join(", ")
            ))
            .map_err(&err)?;
        }
        let layout_text = serde_json::to_string(layout).unwrap_or_default();
        let insert = format!("INSERT INTO {META_TABLE} (key, value) VALUES (?1, ?2)");
        for (key, value) in [
            (CacheMetaKey::Layout, layout_text),
            (CacheMetaKey::LayoutVersion, layout.version.clone()),
            (CacheMetaKey::AppliedOplogId, applied_id.to_string()),
            (CacheMetaKey::OplogIdentity, oplog.to_owned()),
        ] {
            tx.execute(&insert, params![key.as_str(), value])
                .map_err(&err)?;
        }
        tx.commit().map_err(&err)?;
        Ok(Self::with_layout(
            conn,
            path,
            entity,
            layout.clone(),
            applied_id,
            oplog.to_owned(),
        ))
    }

    fn with_layout(
        conn: Connection,
        path: &Path,
        entity: &str,
        layout: EntityLayout,
        applied_id: i64,
        oplog: String,
    ) -> EntityDb {
        let columns = columns_with_id(&layout.table);
        let names: Vec<String> = columns.iter().map(|(n, _)| quote(n)).collect();
        let placeholders: Vec<String> = (1..=columns.len()).map(|i| format!("?{i}")).collect();
        let updates: Vec<String> = names
            .iter()
            .skip(1)
            .map(|n| format!("{n} = excluded.{n}"))
            .collect();
        let table = quote(entity);
        let upsert_sql = if updates.is_empty() {
            format!(
                "INSERT OR IGNORE INTO {table} ({}) VALUES ({})",
                names.join(", "),
                placeholders.join(", ")
            )
        } else {
            format!(
                "INSERT INTO {table} ({}) VALUES ({}) ON CONFLICT (\"id\") DO UPDATE SET {}",
                names.join(", "),
                placeholders.join(", "),
                updates.join(", ")
            )
        };
        let delete_sql = format!("DELETE FROM {table} WHERE \"id\" = ?1");
        EntityDb {
            conn,
            path: path.to_owned(),
            entity: entity.to_owned(),
            columns: Columns::new(&layout.table),
            layout,
            applied_id,
            oplog,
            upsert_sql,
            delete_sql,
        }
    }

    /// The layout the database was built with.
    pub fn layout(&self) -> &EntityLayout {
        &self.layout
    }

    /// The highest oplog id applied.
    pub fn applied_id(&self) -> i64 {
        self.applied_id
    }

    /// The identity of the oplog its applied id counts in (empty for a
    /// database made before offsets named their oplog).
    pub fn oplog(&self) -> &str {
        &self.oplog
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The SQLite values of one row, in column order.
    fn row_values<'a>(
        &self,
        id: i64,
        doc_id: &'a str,
        data: Option<&'a str>,
    ) -> Result<Vec<Cell<'a>>, CacheDbError> {
        let text = data.unwrap_or("{}");
        if self.layout.table.is_json_document() {
            return Ok(vec![
                Cell::Text(Cow::Borrowed(doc_id)),
                Cell::Text(Cow::Borrowed(text)),
            ]);
        }
        let mut decoder = serde_json::Deserializer::from_str(text);
        RowSeed {
            columns: &self.columns,
            doc_id,
        }
        .deserialize(&mut decoder)
        .and_then(|cells| decoder.end().map(|()| cells))
        .map_err(|e| CacheDbError::BadRow {
            path: self.path.clone(),
            entity: self.entity.clone(),
            id,
            reason: e.to_string(),
        })
    }

    /// Apply log entries (in id order) in one transaction, skipping those
    /// already applied, and record the highest id with them.
    pub fn apply(&mut self, entries: &[&OplogEntry]) -> Result<Applied, CacheDbError> {
        let mut counts = Applied::default();
        let fresh: Vec<&&OplogEntry> = entries.iter().filter(|e| e.id > self.applied_id).collect();
        counts.skipped = entries.len() - fresh.len();
        let Some(last) = fresh.last().map(|e| e.id) else {
            return Ok(counts);
        };
        let mut prepared = Vec::with_capacity(fresh.len());
        for entry in &fresh {
            let values = match entry.op {
                Op::Upsert => {
                    Some(self.row_values(entry.id, &entry.doc_id, entry.data.as_deref())?)
                }
                Op::Delete => None,
            };
            prepared.push((entry.doc_id.as_str(), values));
        }
        let err = Self::sqlite_err(&self.path);
        let tx = self.conn.transaction().map_err(&err)?;
        {
            let mut upsert = tx.prepare_cached(&self.upsert_sql).map_err(&err)?;
            let mut delete = tx.prepare_cached(&self.delete_sql).map_err(&err)?;
            for (doc_id, values) in prepared {
                match values {
                    Some(values) => {
                        upsert.execute(params_from_iter(values)).map_err(&err)?;
                        counts.upserted += 1;
                    }
                    None => {
                        delete.execute(params![doc_id]).map_err(&err)?;
                        counts.deleted += 1;
                    }
                }
            }
            tx.prepare_cached(&format!(
                "UPDATE {META_TABLE} SET value = ?1 WHERE key = ?2"
            ))
            .map_err(&err)?
            .execute(params![
                last.to_string(),
                CacheMetaKey::AppliedOplogId.as_str()
            ])
            .map_err(&err)?;
        }
        tx.commit().map_err(&err)?;
        self.applied_id = last;
        Ok(counts)
    }

    /// Load latest rows (a rebuild or bootstrap page) in one transaction.
    pub fn load(&mut self, rows: &[LatestRow]) -> Result<usize, CacheDbError> {
        let mut prepared = Vec::with_capacity(rows.len());
        for row in rows.iter().filter(|r| r.op == Op::Upsert) {
            prepared.push(self.row_values(row.oplog_id, &row.doc_id, row.data.as_deref())?);
        }
        let err = Self::sqlite_err(&self.path);
        let tx = self.conn.transaction().map_err(&err)?;
        {
            let mut upsert = tx.prepare_cached(&self.upsert_sql).map_err(&err)?;
            for values in &prepared {
                upsert
                    .execute(params_from_iter(values.iter()))
                    .map_err(&err)?;
            }
        }
        tx.commit().map_err(&err)?;
        Ok(prepared.len())
    }

    /// Number of rows in the entity table.
    pub fn row_count(&self) -> Result<u64, CacheDbError> {
        let n: i64 = self
            .conn
            .query_row(
                &format!("SELECT COUNT(*) FROM {}", quote(&self.entity)),
                [],
                |r| r.get(0),
            )
            .map_err(Self::sqlite_err(&self.path))?;
        Ok(n as u64)
    }
}
