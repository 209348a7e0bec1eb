//! One entity's SQLite cache: `dbs/{entity}/db.sqlite`, a table named after
//! the entity with the plugin's typed columns and indexes, and a meta table
//! holding the applied oplog id and the layout version.

use std::path::{Path, PathBuf};

use rusqlite::types::Value as SqlValue;
use rusqlite::{Connection, OptionalExtension, params, params_from_iter};
use serde_json::Value;

use super::layout::{ColumnKind, EntityLayout, TableSpec};
use crate::oplog::{LatestRow, Op, OplogEntry};

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

/// The SQLite value of a JSON value in a column of `kind`.
fn sql_value(kind: ColumnKind, value: &Value) -> SqlValue {
    match (kind, value) {
        (_, Value::Null) => SqlValue::Null,
        (ColumnKind::Jsonb, v) => SqlValue::Text(v.to_string()),
        (_, Value::Bool(b)) => SqlValue::Integer(i64::from(*b)),
        (ColumnKind::Number, Value::Number(n)) => {
            n.as_f64().map(SqlValue::Real).unwrap_or(SqlValue::Null)
        }
        (_, Value::Number(n)) => match n.as_i64() {
            Some(i) => SqlValue::Integer(i),
            None => n.as_f64().map(SqlValue::Real).unwrap_or(SqlValue::Null),
        },
        (_, Value::String(s)) => SqlValue::Text(s.clone()),
        (_, compound) => SqlValue::Text(compound.to_string()),
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
        let (Some(layout), Some(applied)) = (get("layout")?, get("applied_oplog_id")?) else {
            return Ok(None);
        };
        let Ok(layout) = serde_json::from_str::<EntityLayout>(&layout) else {
            return Ok(None);
        };
        let applied_id = applied.parse().unwrap_or(0);
        Ok(Some(Self::with_layout(
            conn, path, entity, layout, applied_id,
        )))
    }

    /// Create a fresh cache database at `path` (which must not exist) with
    /// `layout`, marked as applied up to `applied_id`.
    pub fn create(
        path: &Path,
        entity: &str,
        layout: &EntityLayout,
        applied_id: i64,
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
        tx.execute(
            &format!("INSERT INTO {META_TABLE} (key, value) VALUES ('layout', ?1)"),
            params![layout_text],
        )
        .map_err(&err)?;
        tx.execute(
            &format!("INSERT INTO {META_TABLE} (key, value) VALUES ('layout_version', ?1)"),
            params![layout.version],
        )
        .map_err(&err)?;
        tx.execute(
            &format!("INSERT INTO {META_TABLE} (key, value) VALUES ('applied_oplog_id', ?1)"),
            params![applied_id.to_string()],
        )
        .map_err(&err)?;
        tx.commit().map_err(&err)?;
        Ok(Self::with_layout(
            conn,
            path,
            entity,
            layout.clone(),
            applied_id,
        ))
    }

    fn with_layout(
        conn: Connection,
        path: &Path,
        entity: &str,
        layout: EntityLayout,
        applied_id: i64,
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
            layout,
            applied_id,
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

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The SQLite values of one row, in column order.
    fn row_values(
        &self,
        id: i64,
        doc_id: &str,
        data: Option<&str>,
    ) -> Result<Vec<SqlValue>, CacheDbError> {
        let bad = |reason: String| CacheDbError::BadRow {
            path: self.path.clone(),
            entity: self.entity.clone(),
            id,
            reason,
        };
        let text = data.unwrap_or("{}");
        if self.layout.table.is_json_document() {
            return Ok(vec![
                SqlValue::Text(doc_id.to_owned()),
                SqlValue::Text(text.to_owned()),
            ]);
        }
        let object: serde_json::Map<String, Value> =
            serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
        let columns = columns_with_id(&self.layout.table);
        let mut values = Vec::with_capacity(columns.len());
        values.push(SqlValue::Text(doc_id.to_owned()));
        for (name, kind) in columns.iter().skip(1) {
            values.push(
                object
                    .get(name)
                    .map(|v| sql_value(*kind, v))
                    .unwrap_or(SqlValue::Null),
            );
        }
        Ok(values)
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
                "UPDATE {META_TABLE} SET value = ?1 WHERE key = 'applied_oplog_id'"
            ))
            .map_err(&err)?
            .execute(params![last.to_string()])
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
