//! The embedded oplog store: one SQLite file (WAL), a writer connection and
//! a reader connection, each used from blocking threads.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, Transaction, params};

use super::model::{
    AppendBatch, AppendReceipt, EntityDef, EntityStatus, LatestRow, NewRow, Op, OplogEntry,
    RejectedRecord, now_millis,
};
use super::{OplogStore, StoreError, entity_meta_keys, last_per_key};

/// Schema migrations, applied in order; `PRAGMA user_version` counts them.
const MIGRATIONS: &[&str] = &[r#"
CREATE TABLE oplog_sequence (singleton INTEGER PRIMARY KEY CHECK (singleton = 1), last_id INTEGER NOT NULL);
INSERT INTO oplog_sequence (singleton, last_id) VALUES (1, 0);
CREATE TABLE oplog (
    id INTEGER PRIMARY KEY,
    entity TEXT NOT NULL,
    doc_id TEXT NOT NULL,
    op INTEGER NOT NULL,
    data TEXT,
    created_at INTEGER NOT NULL,
    plugin TEXT NOT NULL,
    plugin_version TEXT NOT NULL
);
CREATE INDEX oplog_by_entity ON oplog (entity, id);
CREATE TABLE latest (
    entity TEXT NOT NULL,
    doc_id TEXT NOT NULL,
    oplog_id INTEGER NOT NULL,
    op INTEGER NOT NULL,
    PRIMARY KEY (entity, doc_id)
) WITHOUT ROWID;
CREATE TABLE source_positions (
    source TEXT PRIMARY KEY,
    position TEXT NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE TABLE entities (
    name TEXT PRIMARY KEY,
    source TEXT NOT NULL,
    collection TEXT NOT NULL,
    plugin TEXT NOT NULL,
    config TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE TABLE staging (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    entity TEXT NOT NULL,
    doc_id TEXT NOT NULL,
    op INTEGER NOT NULL,
    data TEXT,
    created_at INTEGER NOT NULL,
    plugin TEXT NOT NULL,
    plugin_version TEXT NOT NULL
);
CREATE INDEX staging_by_entity ON staging (entity, id);
CREATE TABLE rejected (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    source TEXT NOT NULL,
    collection TEXT NOT NULL,
    entity TEXT NOT NULL,
    doc_id TEXT NOT NULL,
    change TEXT NOT NULL,
    plugin TEXT NOT NULL,
    plugin_version TEXT NOT NULL,
    error TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE TABLE metadata (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"#];

/// The embedded SQLite oplog store.
#[derive(Clone)]
pub struct SqliteStore {
    writer: Arc<Mutex<Connection>>,
    reader: Arc<Mutex<Connection>>,
    path: PathBuf,
    identity: String,
    commits: super::CommitWatch,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish()
    }
}

fn open_connection(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // NORMAL in WAL mode: a commit survives a process crash; only an OS crash
    // can lose the last transactions, never corrupt the file.
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(conn)
}

fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let applied: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(applied.max(0) as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (index + 1) as i64)?;
        tx.commit()?;
        tracing::info!(version = index + 1, "sqlite oplog store migrated");
    }
    Ok(())
}

/// WAL pages after which a committing writer checkpoints the WAL itself
/// (SQLite's default is 1000). Normally the background checkpointer has
/// copied most of them already; this bounds the WAL (about 40 MB) when it
/// cannot keep up.
const WRITER_AUTOCHECKPOINT_PAGES: i64 = 10_000;

/// How often the background checkpointer copies the WAL into the database.
const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(100);

/// Checkpoint the WAL from a thread of its own, every [`CHECKPOINT_INTERVAL`],
/// while `writer` is alive: the copy into the database file and its `fsync`
/// then run beside appends instead of inside the commit of every fourth batch.
/// A passive checkpoint never blocks readers or the writer; durability is the
/// same (a checkpoint syncs the WAL before copying and the database after).
fn spawn_checkpointer(path: &Path, writer: Weak<Mutex<Connection>>) -> Result<(), StoreError> {
    let conn = open_connection(path)?;
    let path = path.to_owned();
    std::thread::Builder::new()
        .name("oplog-checkpointer".into())
        .spawn(move || {
            while writer.strong_count() > 0 {
                std::thread::sleep(CHECKPOINT_INTERVAL);
                if let Err(error) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
                {
                    tracing::warn!(%error, path = %path.display(), "oplog checkpoint failed");
                }
            }
        })
        .map_err(|e| StoreError::Worker(format!("cannot start the checkpointer: {e}")))?;
    Ok(())
}

impl SqliteStore {
    /// Open (creating when needed) the store at `path` and run migrations.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::Directory {
                path: dir.to_owned(),
                source,
            })?;
        }
        let mut writer = open_connection(path)?;
        migrate(&mut writer)?;
        writer.execute(
            "INSERT INTO metadata (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO NOTHING",
            params![
                super::IDENTITY_KEY,
                serde_json::Value::from(super::new_identity()).to_string()
            ],
        )?;
        let identity: String = writer.query_row(
            "SELECT value FROM metadata WHERE key = ?1",
            params![super::IDENTITY_KEY],
            |r| r.get(0),
        )?;
        let identity = match serde_json::from_str::<serde_json::Value>(&identity) {
            Ok(serde_json::Value::String(identity)) if !identity.is_empty() => identity,
            _ => {
                return Err(StoreError::Corrupt {
                    what: "metadata oplog_identity",
                    reason: format!("not a JSON string: {identity}"),
                });
            }
        };
        writer.pragma_update(None, "wal_autocheckpoint", WRITER_AUTOCHECKPOINT_PAGES)?;
        let reader = open_connection(path)?;
        let writer = Arc::new(Mutex::new(writer));
        spawn_checkpointer(path, Arc::downgrade(&writer))?;
        Ok(SqliteStore {
            writer,
            reader: Arc::new(Mutex::new(reader)),
            path: path.to_owned(),
            identity,
            commits: super::CommitWatch::default(),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    async fn with<T: Send + 'static>(
        conn: &Arc<Mutex<Connection>>,
        work: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let conn = conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = conn
                .lock()
                .map_err(|_| StoreError::Worker("connection lock poisoned".into()))?;
            work(&mut guard)
        })
        .await
        .map_err(|e| StoreError::Worker(e.to_string()))?
    }

    async fn write<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        Self::with(&self.writer, work).await
    }

    async fn read<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        Self::with(&self.reader, work).await
    }
}

/// Reserve `n` ids; returns the first.
fn reserve_ids(tx: &Transaction<'_>, n: usize) -> Result<i64, StoreError> {
    let last: i64 = tx.query_row(
        "UPDATE oplog_sequence SET last_id = last_id + ?1 WHERE singleton = 1 RETURNING last_id",
        params![n as i64],
        |r| r.get(0),
    )?;
    Ok(last - n as i64 + 1)
}

/// Append `rows` to the log and update the latest rows; returns the last id.
fn append_to_log(
    tx: &Transaction<'_>,
    rows: &[&NewRow],
    created_at: i64,
) -> Result<Option<i64>, StoreError> {
    if rows.is_empty() {
        return Ok(None);
    }
    let first = reserve_ids(tx, rows.len())?;
    let mut insert = tx.prepare_cached(
        "INSERT INTO oplog (id, entity, doc_id, op, data, created_at, plugin, plugin_version)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?;
    let mut numbered = Vec::with_capacity(rows.len());
    for (offset, row) in rows.iter().enumerate() {
        let id = first + offset as i64;
        insert.execute(params![
            id,
            row.entity,
            row.doc_id,
            row.op.code(),
            row.data,
            created_at,
            row.plugin,
            row.plugin_version
        ])?;
        numbered.push((id, *row));
    }
    let mut latest = tx.prepare_cached(
        "INSERT INTO latest (entity, doc_id, oplog_id, op) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (entity, doc_id) DO UPDATE SET oplog_id = excluded.oplog_id, op = excluded.op",
    )?;
    for (id, position) in last_per_key(&numbered) {
        let row = numbered[position].1;
        latest.execute(params![row.entity, row.doc_id, id, row.op.code()])?;
    }
    Ok(Some(first + rows.len() as i64 - 1))
}

fn entity_status(tx: &Transaction<'_>, name: &str) -> Result<Option<EntityStatus>, StoreError> {
    let status: Option<String> = tx
        .prepare_cached("SELECT status FROM entities WHERE name = ?1")?
        .query_row(params![name], |r| r.get(0))
        .optional()?;
    status.map(|s| parse_status(&s)).transpose()
}

fn parse_status(text: &str) -> Result<EntityStatus, StoreError> {
    EntityStatus::parse(text).ok_or_else(|| StoreError::Corrupt {
        what: "entities.status",
        reason: text.to_owned(),
    })
}

fn entity_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<(EntityDef, String, String)> {
    Ok((
        EntityDef {
            name: row.get(0)?,
            source: row.get(1)?,
            collection: row.get(2)?,
            plugin: row.get(3)?,
            config: serde_json::Value::Null,
            status: EntityStatus::Pending,
            created_at: row.get(6)?,
            updated_at: row.get(7)?,
        },
        row.get::<_, String>(4)?,
        row.get::<_, String>(5)?,
    ))
}

fn finish_entity(
    (mut def, config, status): (EntityDef, String, String),
) -> Result<EntityDef, StoreError> {
    def.config = serde_json::from_str(&config).map_err(|e| StoreError::Corrupt {
        what: "entities.config",
        reason: e.to_string(),
    })?;
    def.status = parse_status(&status)?;
    Ok(def)
}

const ENTITY_COLUMNS: &str =
    "name, source, collection, plugin, config, status, created_at, updated_at";

#[async_trait]
impl OplogStore for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    fn identity(&self) -> &str {
        &self.identity
    }

    fn commits(&self) -> tokio::sync::watch::Receiver<u64> {
        self.commits.subscribe()
    }

    async fn append(&self, batch: AppendBatch) -> Result<AppendReceipt, StoreError> {
        self.write(move |conn| {
            let tx = conn.transaction()?;
            let now = now_millis();
            let mut to_log: Vec<&NewRow> = Vec::with_capacity(batch.rows.len());
            let mut to_stage: Vec<&NewRow> = Vec::new();
            if batch.snapshot {
                to_log.extend(batch.rows.iter());
            } else {
                let mut staging: std::collections::HashMap<&str, bool> = std::collections::HashMap::new();
                for row in &batch.rows {
                    let staged = match staging.get(row.entity.as_str()) {
                        Some(staged) => *staged,
                        None => {
                            let staged = entity_status(&tx, &row.entity)?.is_some_and(EntityStatus::stages_stream_rows);
                            staging.insert(&row.entity, staged);
                            staged
                        }
                    };
                    if staged { to_stage.push(row) } else { to_log.push(row) }
                }
            }
            let last_id = append_to_log(&tx, &to_log, now)?;
            {
                let mut stage = tx.prepare_cached(
                    "INSERT INTO staging (entity, doc_id, op, data, created_at, plugin, plugin_version)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )?;
                for row in &to_stage {
                    stage.execute(params![row.entity, row.doc_id, row.op.code(), row.data, now, row.plugin, row.plugin_version])?;
                }
                let mut reject = tx.prepare_cached(
                    "INSERT INTO rejected (source, collection, entity, doc_id, change, plugin, plugin_version, error, created_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                )?;
                for r in &batch.rejected {
                    reject.execute(params![r.source, r.collection, r.entity, r.doc_id, r.change, r.plugin, r.plugin_version, r.error, now])?;
                }
                if let Some(position) = &batch.position {
                    tx.prepare_cached(
                        "INSERT INTO source_positions (source, position, updated_at) VALUES (?1, ?2, ?3)
                         ON CONFLICT (source) DO UPDATE SET position = excluded.position, updated_at = excluded.updated_at",
                    )?
                    .execute(params![position.source, position.position, now])?;
                }
            }
            tx.commit()?;
            Ok(AppendReceipt {
                appended: to_log.len(),
                staged: to_stage.len(),
                rejected: batch.rejected.len(),
                last_id,
            })
        })
        .await
        .inspect(|receipt| {
            if receipt.last_id.is_some() {
                self.commits.notify();
            }
        })
    }

    async fn read_log(&self, after: i64, limit: usize) -> Result<Vec<OplogEntry>, StoreError> {
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT id, entity, doc_id, op, data, created_at, plugin, plugin_version
                 FROM oplog WHERE id > ?1 ORDER BY id LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![after, limit as i64], entry_of)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn read_entity_log(
        &self,
        entity: &str,
        after: i64,
        limit: usize,
    ) -> Result<Vec<OplogEntry>, StoreError> {
        let entity = entity.to_owned();
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT id, entity, doc_id, op, data, created_at, plugin, plugin_version
                 FROM oplog WHERE entity = ?1 AND id > ?2 ORDER BY id LIMIT ?3",
            )?;
            let rows = stmt.query_map(params![entity, after, limit as i64], entry_of)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn head(&self) -> Result<i64, StoreError> {
        self.read(|conn| {
            Ok(conn.query_row(
                "SELECT last_id FROM oplog_sequence WHERE singleton = 1",
                [],
                |r| r.get(0),
            )?)
        })
        .await
    }

    async fn latest(&self, entity: &str, doc_ids: &[String]) -> Result<Vec<LatestRow>, StoreError> {
        let entity = entity.to_owned();
        let doc_ids = doc_ids.to_vec();
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT l.doc_id, l.oplog_id, l.op, o.data FROM latest l JOIN oplog o ON o.id = l.oplog_id
                 WHERE l.entity = ?1 AND l.doc_id = ?2",
            )?;
            let mut out = Vec::with_capacity(doc_ids.len());
            for doc_id in &doc_ids {
                let row = stmt
                    .query_row(params![entity, doc_id], |r| {
                        Ok(LatestRow { doc_id: r.get(0)?, oplog_id: r.get(1)?, op: Op::from_code(r.get(2)?), data: r.get(3)? })
                    })
                    .optional()?;
                out.extend(row);
            }
            Ok(out)
        })
        .await
    }

    async fn latest_page(
        &self,
        entity: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<LatestRow>, StoreError> {
        let entity = entity.to_owned();
        let after = after.map(str::to_owned);
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT l.doc_id, l.oplog_id, l.op, o.data FROM latest l JOIN oplog o ON o.id = l.oplog_id
                 WHERE l.entity = ?1 AND l.op = 0 AND (?2 IS NULL OR l.doc_id > ?2) ORDER BY l.doc_id LIMIT ?3",
            )?;
            let rows = stmt.query_map(params![entity, after, limit as i64], |r| {
                Ok(LatestRow { doc_id: r.get(0)?, oplog_id: r.get(1)?, op: Op::from_code(r.get(2)?), data: r.get(3)? })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn source_position(&self, source: &str) -> Result<Option<String>, StoreError> {
        let source = source.to_owned();
        self.read(move |conn| {
            Ok(conn
                .query_row(
                    "SELECT position FROM source_positions WHERE source = ?1",
                    params![source],
                    |r| r.get(0),
                )
                .optional()?)
        })
        .await
    }

    async fn source_position_at(&self, source: &str) -> Result<Option<(String, i64)>, StoreError> {
        let source = source.to_owned();
        self.read(move |conn| {
            Ok(conn
                .query_row(
                    "SELECT position, updated_at FROM source_positions WHERE source = ?1",
                    params![source],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?)
        })
        .await
    }

    async fn put_entity_with_meta(
        &self,
        entity: &EntityDef,
        meta: &[(String, serde_json::Value)],
    ) -> Result<(), StoreError> {
        let entity = entity.clone();
        let meta: Vec<(String, String)> = meta
            .iter()
            .map(|(key, value)| (key.clone(), value.to_string()))
            .collect();
        self.write(move |conn| {
            let tx = conn.transaction()?;
            tx.execute(
                "INSERT INTO entities (name, source, collection, plugin, config, status, created_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                 ON CONFLICT (name) DO UPDATE SET source = excluded.source, collection = excluded.collection,
                   plugin = excluded.plugin, config = excluded.config, status = excluded.status,
                   updated_at = excluded.updated_at",
                params![
                    entity.name,
                    entity.source,
                    entity.collection,
                    entity.plugin,
                    entity.config.to_string(),
                    entity.status.as_str(),
                    entity.created_at,
                    entity.updated_at
                ],
            )?;
            for (key, value) in &meta {
                tx.execute(
                    "INSERT INTO metadata (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    params![key, value],
                )?;
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn entity(&self, name: &str) -> Result<Option<EntityDef>, StoreError> {
        let name = name.to_owned();
        self.read(move |conn| {
            let raw = conn
                .query_row(
                    &format!("SELECT {ENTITY_COLUMNS} FROM entities WHERE name = ?1"),
                    params![name],
                    entity_from_row,
                )
                .optional()?;
            raw.map(finish_entity).transpose()
        })
        .await
    }

    async fn entities(&self) -> Result<Vec<EntityDef>, StoreError> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {ENTITY_COLUMNS} FROM entities ORDER BY name"
            ))?;
            let raw = stmt
                .query_map([], entity_from_row)?
                .collect::<Result<Vec<_>, _>>()?;
            raw.into_iter().map(finish_entity).collect()
        })
        .await
    }

    async fn set_entity_status(
        &self,
        name: &str,
        status: EntityStatus,
    ) -> Result<bool, StoreError> {
        let name = name.to_owned();
        self.write(move |conn| {
            let changed = conn.execute(
                "UPDATE entities SET status = ?2, updated_at = ?3 WHERE name = ?1",
                params![name, status.as_str(), now_millis()],
            )?;
            Ok(changed > 0)
        })
        .await
    }

    async fn delete_entity(&self, name: &str) -> Result<bool, StoreError> {
        let name = name.to_owned();
        self.write(move |conn| {
            let tx = conn.transaction()?;
            for table in ["oplog", "latest", "staging", "rejected"] {
                tx.execute(
                    &format!("DELETE FROM {table} WHERE entity = ?1"),
                    params![name],
                )?;
            }
            for key in entity_meta_keys(&name) {
                tx.execute("DELETE FROM metadata WHERE key = ?1", params![key])?;
            }
            let existed = tx.execute("DELETE FROM entities WHERE name = ?1", params![name])? > 0;
            tx.commit()?;
            Ok(existed)
        })
        .await
    }

    async fn finish_load(&self, entity: &str) -> Result<usize, StoreError> {
        let entity = entity.to_owned();
        self.write(move |conn| {
            let tx = conn.transaction()?;
            let staged: Vec<NewRow> = {
                let mut stmt = tx.prepare_cached(
                    "SELECT entity, doc_id, op, data, plugin, plugin_version FROM staging WHERE entity = ?1 ORDER BY id",
                )?;
                let rows = stmt.query_map(params![entity], |r| {
                    Ok(NewRow {
                        entity: r.get(0)?,
                        doc_id: r.get(1)?,
                        op: Op::from_code(r.get(2)?),
                        data: r.get(3)?,
                        plugin: r.get(4)?,
                        plugin_version: r.get(5)?,
                    })
                })?;
                rows.collect::<Result<_, _>>()?
            };
            let refs: Vec<&NewRow> = staged.iter().collect();
            append_to_log(&tx, &refs, now_millis())?;
            tx.execute("DELETE FROM staging WHERE entity = ?1", params![entity])?;
            tx.execute(
                "UPDATE entities SET status = 'ready', updated_at = ?2 WHERE name = ?1",
                params![entity, now_millis()],
            )?;
            tx.commit()?;
            Ok(staged.len())
        })
        .await
        .inspect(|_| self.commits.notify())
    }

    async fn staged_count(&self, entity: &str) -> Result<u64, StoreError> {
        let entity = entity.to_owned();
        self.read(move |conn| {
            let n: i64 = conn.query_row(
                "SELECT COUNT(*) FROM staging WHERE entity = ?1",
                params![entity],
                |r| r.get(0),
            )?;
            Ok(n as u64)
        })
        .await
    }

    async fn rejected(&self, after: i64, limit: usize) -> Result<Vec<RejectedRecord>, StoreError> {
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT id, source, collection, entity, doc_id, change, plugin, plugin_version, error, created_at
                 FROM rejected WHERE id > ?1 ORDER BY id LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![after, limit as i64], |r| {
                Ok(RejectedRecord {
                    id: r.get(0)?,
                    source: r.get(1)?,
                    collection: r.get(2)?,
                    entity: r.get(3)?,
                    doc_id: r.get(4)?,
                    change: r.get(5)?,
                    plugin: r.get(6)?,
                    plugin_version: r.get(7)?,
                    error: r.get(8)?,
                    created_at: r.get(9)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn remove_rejected(&self, ids: &[i64]) -> Result<usize, StoreError> {
        let ids = ids.to_vec();
        self.write(move |conn| {
            let tx = conn.transaction()?;
            let mut removed = 0;
            {
                let mut stmt = tx.prepare_cached("DELETE FROM rejected WHERE id = ?1")?;
                for id in ids {
                    removed += stmt.execute(params![id])?;
                }
            }
            tx.commit()?;
            Ok(removed)
        })
        .await
    }

    async fn meta_get(&self, key: &str) -> Result<Option<serde_json::Value>, StoreError> {
        let key = key.to_owned();
        self.read(move |conn| {
            let text: Option<String> = conn
                .query_row(
                    "SELECT value FROM metadata WHERE key = ?1",
                    params![key],
                    |r| r.get(0),
                )
                .optional()?;
            text.map(|t| {
                serde_json::from_str(&t).map_err(|e| StoreError::Corrupt {
                    what: "metadata.value",
                    reason: e.to_string(),
                })
            })
            .transpose()
        })
        .await
    }

    async fn meta_set(&self, key: &str, value: &serde_json::Value) -> Result<(), StoreError> {
        let key = key.to_owned();
        let value = value.to_string();
        self.write(move |conn| {
            conn.execute(
                "INSERT INTO metadata (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                params![key, value],
            )?;
            Ok(())
        })
        .await
    }

    async fn meta_delete(&self, key: &str) -> Result<bool, StoreError> {
        let key = key.to_owned();
        self.write(move |conn| {
            Ok(conn.execute("DELETE FROM metadata WHERE key = ?1", params![key])? > 0)
        })
        .await
    }
}

/// A log entry from a row of `SELECT id, entity, doc_id, op, data,
/// created_at, plugin, plugin_version FROM oplog`.
fn entry_of(r: &rusqlite::Row<'_>) -> rusqlite::Result<OplogEntry> {
    Ok(OplogEntry {
        id: r.get(0)?,
        entity: r.get(1)?,
        doc_id: r.get(2)?,
        op: Op::from_code(r.get(3)?),
        data: r.get(4)?,
        created_at: r.get(5)?,
        plugin: r.get(6)?,
        plugin_version: r.get(7)?,
    })
}
