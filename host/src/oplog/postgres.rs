//! The PostgreSQL oplog store (sqlx). Batches go in as arrays through
//! `UNNEST`, so a batch of 1000 rows is a handful of statements.

use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Postgres, Row, Transaction};

use super::model::{
    AppendBatch, AppendReceipt, EntityDef, EntityStatus, LatestRow, NewRow, Op, OplogEntry,
    RejectedRecord, now_millis,
};
use super::{OplogStore, StoreError, entity_meta_keys, last_per_key};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// The PostgreSQL oplog store.
#[derive(Clone, Debug)]
pub struct PostgresStore {
    pool: PgPool,
    identity: String,
    commits: super::CommitWatch,
}

impl PostgresStore {
    /// Connect to `url` and run migrations.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let options: PgConnectOptions = url.parse()?;
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await?;
        MIGRATOR.run(&pool).await?;
        sqlx::query(
            "INSERT INTO metadata (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
        )
        .bind(super::IDENTITY_KEY)
        .bind(serde_json::Value::from(super::new_identity()).to_string())
        .execute(&pool)
        .await?;
        let text: String = sqlx::query_scalar("SELECT value FROM metadata WHERE key = $1")
            .bind(super::IDENTITY_KEY)
            .fetch_one(&pool)
            .await?;
        let identity = match serde_json::from_str::<serde_json::Value>(&text) {
            Ok(serde_json::Value::String(identity)) if !identity.is_empty() => identity,
            _ => {
                return Err(StoreError::Corrupt {
                    what: "metadata oplog_identity",
                    reason: format!("not a JSON string: {text}"),
                });
            }
        };
        Ok(PostgresStore {
            pool,
            identity,
            commits: super::CommitWatch::default(),
        })
    }

    /// The connection pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

async fn append_to_log(
    tx: &mut Transaction<'_, Postgres>,
    rows: &[&NewRow],
    created_at: i64,
) -> Result<Option<i64>, StoreError> {
    if rows.is_empty() {
        return Ok(None);
    }
    let n = rows.len() as i64;
    // The counter row is locked until commit: appends serialise here, so ids
    // become visible in order.
    let last: i64 =
        sqlx::query_scalar("UPDATE oplog_sequence SET last_id = last_id + $1 RETURNING last_id")
            .bind(n)
            .fetch_one(&mut **tx)
            .await?;
    let first = last - n + 1;
    let ids: Vec<i64> = (first..=last).collect();
    let entities: Vec<&str> = rows.iter().map(|r| r.entity.as_str()).collect();
    let doc_ids: Vec<&str> = rows.iter().map(|r| r.doc_id.as_str()).collect();
    let ops: Vec<i16> = rows.iter().map(|r| r.op.code()).collect();
    let data: Vec<Option<&str>> = rows.iter().map(|r| r.data.as_deref()).collect();
    let plugins: Vec<&str> = rows.iter().map(|r| r.plugin.as_str()).collect();
    let versions: Vec<&str> = rows.iter().map(|r| r.plugin_version.as_str()).collect();
    sqlx::query(
        "INSERT INTO oplog (id, entity, doc_id, op, data, created_at, plugin, plugin_version)
         SELECT id, entity, doc_id, op, data, $7, plugin, plugin_version
         FROM UNNEST($1::bigint[], $2::text[], $3::text[], $4::smallint[], $5::text[], $6::text[], $8::text[])
              AS t(id, entity, doc_id, op, data, plugin, plugin_version)",
    )
    .bind(&ids)
    .bind(&entities)
    .bind(&doc_ids)
    .bind(&ops)
    .bind(&data)
    .bind(&plugins)
    .bind(created_at)
    .bind(&versions)
    .execute(&mut **tx)
    .await?;

    let numbered: Vec<(i64, &NewRow)> = ids.iter().copied().zip(rows.iter().copied()).collect();
    let last_rows = last_per_key(&numbered);
    let l_entities: Vec<&str> = last_rows
        .iter()
        .map(|(_, p)| numbered[*p].1.entity.as_str())
        .collect();
    let l_doc_ids: Vec<&str> = last_rows
        .iter()
        .map(|(_, p)| numbered[*p].1.doc_id.as_str())
        .collect();
    let l_ids: Vec<i64> = last_rows.iter().map(|(id, _)| *id).collect();
    let l_ops: Vec<i16> = last_rows
        .iter()
        .map(|(_, p)| numbered[*p].1.op.code())
        .collect();
    sqlx::query(
        "INSERT INTO latest (entity, doc_id, oplog_id, op)
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::smallint[])
         ON CONFLICT (entity, doc_id) DO UPDATE SET oplog_id = EXCLUDED.oplog_id, op = EXCLUDED.op",
    )
    .bind(&l_entities)
    .bind(&l_doc_ids)
    .bind(&l_ids)
    .bind(&l_ops)
    .execute(&mut **tx)
    .await?;
    Ok(Some(last))
}

fn parse_status(text: &str) -> Result<EntityStatus, StoreError> {
    EntityStatus::parse(text).ok_or_else(|| StoreError::Corrupt {
        what: "entities.status",
        reason: text.to_owned(),
    })
}

fn entity_from_row(row: &sqlx::postgres::PgRow) -> Result<EntityDef, StoreError> {
    let config: String = row.try_get("config")?;
    let status: String = row.try_get("status")?;
    Ok(EntityDef {
        name: row.try_get("name")?,
        source: row.try_get("source")?,
        collection: row.try_get("collection")?,
        plugin: row.try_get("plugin")?,
        config: serde_json::from_str(&config).map_err(|e| StoreError::Corrupt {
            what: "entities.config",
            reason: e.to_string(),
        })?,
        status: parse_status(&status)?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

fn latest_from_row(row: &sqlx::postgres::PgRow) -> Result<LatestRow, StoreError> {
    Ok(LatestRow {
        doc_id: row.try_get("doc_id")?,
        oplog_id: row.try_get("oplog_id")?,
        op: Op::from_code(row.try_get::<i16, _>("op")?.into()),
        data: row.try_get("data")?,
    })
}

#[async_trait]
impl OplogStore for PostgresStore {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    fn identity(&self) -> &str {
        &self.identity
    }

    fn commits(&self) -> tokio::sync::watch::Receiver<u64> {
        self.commits.subscribe()
    }

    async fn append(&self, batch: AppendBatch) -> Result<AppendReceipt, StoreError> {
        let now = now_millis();
        let mut tx = self.pool.begin().await?;
        let mut to_log: Vec<&NewRow> = Vec::with_capacity(batch.rows.len());
        let mut to_stage: Vec<&NewRow> = Vec::new();
        if batch.snapshot {
            to_log.extend(batch.rows.iter());
        } else {
            let mut names: Vec<&str> = batch.rows.iter().map(|r| r.entity.as_str()).collect();
            names.sort_unstable();
            names.dedup();
            let loading: Vec<String> = if names.is_empty() {
                Vec::new()
            } else {
                sqlx::query_scalar(
                    "SELECT name FROM entities WHERE name = ANY($1::text[]) AND status IN ('pending', 'scanning')",
                )
                .bind(&names)
                .fetch_all(&mut *tx)
                .await?
            };
            for row in &batch.rows {
                if loading.contains(&row.entity) {
                    to_stage.push(row);
                } else {
                    to_log.push(row);
                }
            }
        }
        let last_id = append_to_log(&mut tx, &to_log, now).await?;
        if !to_stage.is_empty() {
            sqlx::query(
                "INSERT INTO staging (entity, doc_id, op, data, created_at, plugin, plugin_version)
                 SELECT entity, doc_id, op, data, $5, plugin, plugin_version
                 FROM UNNEST($1::text[], $2::text[], $3::smallint[], $4::text[], $6::text[], $7::text[])
                      AS t(entity, doc_id, op, data, plugin, plugin_version)",
            )
            .bind(to_stage.iter().map(|r| r.entity.as_str()).collect::<Vec<_>>())
            .bind(to_stage.iter().map(|r| r.doc_id.as_str()).collect::<Vec<_>>())
            .bind(to_stage.iter().map(|r| r.op.code()).collect::<Vec<_>>())
            .bind(to_stage.iter().map(|r| r.data.as_deref()).collect::<Vec<_>>())
            .bind(now)
            .bind(to_stage.iter().map(|r| r.plugin.as_str()).collect::<Vec<_>>())
            .bind(to_stage.iter().map(|r| r.plugin_version.as_str()).collect::<Vec<_>>())
            .execute(&mut *tx)
            .await?;
        }
        if !batch.rejected.is_empty() {
            let r = &batch.rejected;
            sqlx::query(
                "INSERT INTO rejected (source, collection, entity, doc_id, change, plugin, plugin_version, error, created_at)
                 SELECT source, collection, entity, doc_id, change, plugin, plugin_version, error, $9
                 FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[])
                      AS t(source, collection, entity, doc_id, change, plugin, plugin_version, error)",
            )
            .bind(r.iter().map(|x| x.source.as_str()).collect::<Vec<_>>())
            .bind(r.iter().map(|x| x.collection.as_str()).collect::<Vec<_>>())
            .bind(r.iter().map(|x| x.entity.as_str()).collect::<Vec<_>>())
            .bind(r.iter().map(|x| x.doc_id.as_str()).collect::<Vec<_>>())
            .bind(r.iter().map(|x| x.change.as_str()).collect::<Vec<_>>())
            .bind(r.iter().map(|x| x.plugin.as_str()).collect::<Vec<_>>())
            .bind(r.iter().map(|x| x.plugin_version.as_str()).collect::<Vec<_>>())
            .bind(r.iter().map(|x| x.error.as_str()).collect::<Vec<_>>())
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        if let Some(position) = &batch.position {
            sqlx::query(
                "INSERT INTO source_positions (source, position, updated_at) VALUES ($1, $2, $3)
                 ON CONFLICT (source) DO UPDATE SET position = EXCLUDED.position, updated_at = EXCLUDED.updated_at",
            )
            .bind(&position.source)
            .bind(&position.position)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        if last_id.is_some() {
            self.commits.notify();
        }
        Ok(AppendReceipt {
            appended: to_log.len(),
            staged: to_stage.len(),
            rejected: batch.rejected.len(),
            last_id,
        })
    }

    async fn read_entity_log(
        &self,
        entity: &str,
        after: i64,
        limit: usize,
    ) -> Result<Vec<OplogEntry>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, entity, doc_id, op, data, created_at, plugin, plugin_version
             FROM oplog WHERE entity = $1 AND id > $2 ORDER BY id LIMIT $3",
        )
        .bind(entity)
        .bind(after)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(entry_of).collect()
    }

    async fn read_log(&self, after: i64, limit: usize) -> Result<Vec<OplogEntry>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, entity, doc_id, op, data, created_at, plugin, plugin_version
             FROM oplog WHERE id > $1 ORDER BY id LIMIT $2",
        )
        .bind(after)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(entry_of).collect()
    }

    async fn head(&self) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar("SELECT last_id FROM oplog_sequence")
            .fetch_one(&self.pool)
            .await?)
    }

    async fn latest(&self, entity: &str, doc_ids: &[String]) -> Result<Vec<LatestRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT l.doc_id, l.oplog_id, l.op, o.data FROM latest l JOIN oplog o ON o.id = l.oplog_id
             WHERE l.entity = $1 AND l.doc_id = ANY($2::text[])",
        )
        .bind(entity)
        .bind(doc_ids)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(latest_from_row).collect()
    }

    async fn latest_page(
        &self,
        entity: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<LatestRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT l.doc_id, l.oplog_id, l.op, o.data FROM latest l JOIN oplog o ON o.id = l.oplog_id
             WHERE l.entity = $1 AND l.op = 0 AND ($2::text IS NULL OR l.doc_id > $2) ORDER BY l.doc_id LIMIT $3",
        )
        .bind(entity)
        .bind(after)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(latest_from_row).collect()
    }

    async fn source_position(&self, source: &str) -> Result<Option<String>, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT position FROM source_positions WHERE source = $1")
                .bind(source)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    async fn source_position_at(&self, source: &str) -> Result<Option<(String, i64)>, StoreError> {
        Ok(
            sqlx::query_as("SELECT position, updated_at FROM source_positions WHERE source = $1")
                .bind(source)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    async fn put_entity_with_meta(
        &self,
        entity: &EntityDef,
        meta: &[(String, serde_json::Value)],
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO entities (name, source, collection, plugin, config, status, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
             ON CONFLICT (name) DO UPDATE SET source = EXCLUDED.source, collection = EXCLUDED.collection,
               plugin = EXCLUDED.plugin, config = EXCLUDED.config, status = EXCLUDED.status,
               updated_at = EXCLUDED.updated_at",
        )
        .bind(&entity.name)
        .bind(&entity.source)
        .bind(&entity.collection)
        .bind(&entity.plugin)
        .bind(entity.config.to_string())
        .bind(entity.status.as_str())
        .bind(entity.created_at)
        .bind(entity.updated_at)
        .execute(&mut *tx)
        .await?;
        for (key, value) in meta {
            sqlx::query(
                "INSERT INTO metadata (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
            )
            .bind(key)
            .bind(value.to_string())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn entity(&self, name: &str) -> Result<Option<EntityDef>, StoreError> {
        let row = sqlx::query(
            "SELECT name, source, collection, plugin, config, status, created_at, updated_at FROM entities WHERE name = $1",
        )
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(entity_from_row).transpose()
    }

    async fn entities(&self) -> Result<Vec<EntityDef>, StoreError> {
        let rows = sqlx::query(
            "SELECT name, source, collection, plugin, config, status, created_at, updated_at FROM entities ORDER BY name",
        )
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(entity_from_row).collect()
    }

    async fn set_entity_status(
        &self,
        name: &str,
        status: EntityStatus,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query("UPDATE entities SET status = $2, updated_at = $3 WHERE name = $1")
            .bind(name)
            .bind(status.as_str())
            .bind(now_millis())
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn delete_entity(&self, name: &str) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        for statement in [
            "DELETE FROM oplog WHERE entity = $1",
            "DELETE FROM latest WHERE entity = $1",
            "DELETE FROM staging WHERE entity = $1",
            "DELETE FROM rejected WHERE entity = $1",
        ] {
            sqlx::query(statement).bind(name).execute(&mut *tx).await?;
        }
        sqlx::query("DELETE FROM metadata WHERE key = ANY($1::text[])")
            .bind(entity_meta_keys(name).as_slice())
            .execute(&mut *tx)
            .await?;
        let done = sqlx::query("DELETE FROM entities WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(done.rows_affected() > 0)
    }

    async fn finish_load(&self, entity: &str) -> Result<usize, StoreError> {
        let mut tx = self.pool.begin().await?;
        // Lock the entity row: two concurrent finishes serialise, the second moves nothing.
        sqlx::query("SELECT name FROM entities WHERE name = $1 FOR UPDATE")
            .bind(entity)
            .fetch_optional(&mut *tx)
            .await?;
        let rows = sqlx::query(
            "DELETE FROM staging WHERE entity = $1 RETURNING id, entity, doc_id, op, data, plugin, plugin_version",
        )
        .bind(entity)
        .fetch_all(&mut *tx)
        .await?;
        let mut staged: Vec<(i64, NewRow)> = rows
            .iter()
            .map(|row| {
                Ok((
                    row.try_get::<i64, _>("id")?,
                    NewRow {
                        entity: row.try_get("entity")?,
                        doc_id: row.try_get("doc_id")?,
                        op: Op::from_code(row.try_get::<i16, _>("op")?.into()),
                        data: row.try_get("data")?,
                        plugin: row.try_get("plugin")?,
                        plugin_version: row.try_get("plugin_version")?,
                    },
                ))
            })
            .collect::<Result<_, StoreError>>()?;
        staged.sort_by_key(|(id, _)| *id);
        let refs: Vec<&NewRow> = staged.iter().map(|(_, row)| row).collect();
        append_to_log(&mut tx, &refs, now_millis()).await?;
        sqlx::query("UPDATE entities SET status = 'ready', updated_at = $2 WHERE name = $1")
            .bind(entity)
            .bind(now_millis())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        self.commits.notify();
        Ok(staged.len())
    }

    async fn staged_count(&self, entity: &str) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM staging WHERE entity = $1")
            .bind(entity)
            .fetch_one(&self.pool)
            .await?;
        Ok(n as u64)
    }

    async fn rejected(&self, after: i64, limit: usize) -> Result<Vec<RejectedRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, source, collection, entity, doc_id, change, plugin, plugin_version, error, created_at
             FROM rejected WHERE id > $1 ORDER BY id LIMIT $2",
        )
        .bind(after)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(RejectedRecord {
                    id: row.try_get("id")?,
                    source: row.try_get("source")?,
                    collection: row.try_get("collection")?,
                    entity: row.try_get("entity")?,
                    doc_id: row.try_get("doc_id")?,
                    change: row.try_get("change")?,
                    plugin: row.try_get("plugin")?,
                    plugin_version: row.try_get("plugin_version")?,
                    error: row.try_get("error")?,
                    created_at: row.try_get("created_at")?,
                })
            })
            .collect()
    }

    async fn remove_rejected(&self, ids: &[i64]) -> Result<usize, StoreError> {
        let done = sqlx::query("DELETE FROM rejected WHERE id = ANY($1::bigint[])")
            .bind(ids)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() as usize)
    }

    async fn meta_get(&self, key: &str) -> Result<Option<serde_json::Value>, StoreError> {
        let text: Option<String> = sqlx::query_scalar("SELECT value FROM metadata WHERE key = $1")
            .bind(key)
            .fetch_optional(&self.pool)
            .await?;
        text.map(|t| {
            serde_json::from_str(&t).map_err(|e| StoreError::Corrupt {
                what: "metadata.value",
                reason: e.to_string(),
            })
        })
        .transpose()
    }

    async fn meta_set(&self, key: &str, value: &serde_json::Value) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO metadata (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
        )
        .bind(key)
        .bind(value.to_string())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn meta_delete(&self, key: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM metadata WHERE key = $1")
            .bind(key)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }
}

/// A log entry from its row.
fn entry_of(row: &sqlx::postgres::PgRow) -> Result<OplogEntry, StoreError> {
    Ok(OplogEntry {
        id: row.try_get("id")?,
        entity: row.try_get("entity")?,
        doc_id: row.try_get("doc_id")?,
        op: Op::from_code(row.try_get::<i16, _>("op")?.into()),
        data: row.try_get("data")?,
        created_at: row.try_get("created_at")?,
        plugin: row.try_get("plugin")?,
        plugin_version: row.try_get("plugin_version")?,
    })
}
