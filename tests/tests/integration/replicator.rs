//! The SQLite cache replicator against a real oplog store: apply, re-apply,
//! delete, column types, indexes, offset resume, rebuild on a new layout
//! version, entity deletion and idle connections.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use emcachers::cache::{
    CacheDbManager, ColumnKind, ColumnSpec, EntityLayout, IndexSpec, ReplicatorConfig,
    SqliteReplicator, TableSpec,
};
use emcachers::oplog::{AppendBatch, NewRow, Op, OplogStore, SqliteStore};
use rusqlite::Connection;
use serde_json::{Value, json};

struct Setup {
    store: Arc<dyn OplogStore>,
    dbs: CacheDbManager,
    dir: tempfile::TempDir,
}

fn setup(idle: Duration) -> Setup {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(SqliteStore::open(&dir.path().join("oplog.sqlite")).expect("store"));
    let dbs = CacheDbManager::new(dir.path().join("dbs"), idle);
    Setup { store, dbs, dir }
}

fn layout(version: &str) -> EntityLayout {
    let col = |name: &str, kind| ColumnSpec {
        name: name.into(),
        kind,
    };
    EntityLayout {
        version: version.into(),
        table: TableSpec {
            columns: vec![
                col("id", ColumnKind::Text),
                col("name", ColumnKind::Text),
                col("age", ColumnKind::Integer),
                col("score", ColumnKind::Number),
                col("active", ColumnKind::Bool),
                col("tags", ColumnKind::Jsonb),
                col("extra", ColumnKind::Any),
            ],
            indexes: vec![IndexSpec {
                name: "by_name".into(),
                columns: vec!["name".into()],
                unique: false,
            }],
        },
    }
}

fn upsert(id: &str, data: Value) -> NewRow {
    NewRow {
        entity: "people".into(),
        doc_id: id.into(),
        op: Op::Upsert,
        data: Some(data.to_string()),
        plugin: "t".into(),
        plugin_version: "1".into(),
    }
}

fn delete(id: &str) -> NewRow {
    NewRow {
        entity: "people".into(),
        doc_id: id.into(),
        op: Op::Delete,
        data: None,
        plugin: "t".into(),
        plugin_version: "1".into(),
    }
}

async fn append(store: &Arc<dyn OplogStore>, rows: Vec<NewRow>) {
    store
        .append(AppendBatch {
            rows,
            ..AppendBatch::default()
        })
        .await
        .expect("append");
}

async fn replicator(s: &Setup) -> SqliteReplicator {
    SqliteReplicator::open(
        s.store.clone(),
        s.dbs.clone(),
        ReplicatorConfig {
            batch_size: 3,
            ..ReplicatorConfig::default()
        },
    )
    .await
    .expect("replicator")
}

fn query(path: &Path, sql: &str) -> Vec<Vec<Value>> {
    let conn = Connection::open(path).expect("open cache");
    let mut stmt = conn.prepare(sql).expect("prepare");
    let columns = stmt.column_count();
    let rows = stmt
        .query_map([], |r| {
            (0..columns)
                .map(|i| {
                    Ok(match r.get_ref(i)? {
                        rusqlite::types::ValueRef::Null => Value::Null,
                        rusqlite::types::ValueRef::Integer(i) => json!(i),
                        rusqlite::types::ValueRef::Real(f) => json!(f),
                        rusqlite::types::ValueRef::Text(t) => json!(String::from_utf8_lossy(t)),
                        rusqlite::types::ValueRef::Blob(_) => json!("<blob>"),
                    })
                })
                .collect()
        })
        .expect("query");
    rows.collect::<Result<_, _>>().expect("rows")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applies_every_column_type_with_indexes_and_deletes() {
    let s = setup(Duration::from_secs(60));
    layout("v1")
        .publish(s.store.as_ref(), "people")
        .await
        .unwrap();
    let mut replicator = replicator(&s).await;
    // The database exists (empty) before the entries arrive: they are applied one by one.
    assert!(
        replicator
            .ensure_layout("people", &layout("v1"))
            .await
            .unwrap()
    );
    append(
        &s.store,
        vec![
            upsert("p1", json!({"id": "p1", "name": "Ada", "age": 36, "score": 9.5, "active": true, "tags": ["a", "b"], "extra": {"k": 1}})),
            upsert("p2", json!({"id": "p2", "name": "Bob", "age": null, "score": 1, "active": false, "tags": [], "extra": "text"})),
            upsert("p3", json!({"id": "p3", "name": "Cy"})),
            delete("p3"),
        ],
    )
    .await;
    let report = replicator.catch_up().await.unwrap();
    assert_eq!(
        (report.read, report.upserted, report.deleted, report.offset),
        (4, 3, 1, 4)
    );

    let db = s.dbs.db_path("people");
    assert!(db.ends_with("dbs/people/db.sqlite"));
    let rows = query(
        &db,
        "SELECT id, name, age, score, active, tags, extra, typeof(age), typeof(score), typeof(active) FROM people ORDER BY id",
    );
    assert_eq!(
        rows,
        vec![
            vec![
                json!("p1"),
                json!("Ada"),
                json!(36),
                json!(9.5),
                json!(1),
                json!("[\"a\",\"b\"]"),
                json!("{\"k\":1}"),
                json!("integer"),
                json!("real"),
                json!("integer")
            ],
            vec![
                json!("p2"),
                json!("Bob"),
                Value::Null,
                json!(1.0),
                json!(0),
                json!("[]"),
                json!("text"),
                json!("null"),
                json!("real"),
                json!("integer")
            ],
        ]
    );
    let indexes = query(
        &db,
        "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'people' AND name NOT LIKE 'sqlite_%'",
    );
    assert_eq!(indexes, vec![vec![json!("people__by_name")]]);
    let meta = query(
        &db,
        "SELECT value FROM _emcachers_meta WHERE key IN ('applied_oplog_id', 'layout_version') ORDER BY key",
    );
    assert_eq!(meta, vec![vec![json!("4")], vec![json!("v1")]]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reapplying_is_idempotent_and_the_offset_survives_a_restart() {
    let s = setup(Duration::from_secs(60));
    layout("v1")
        .publish(s.store.as_ref(), "people")
        .await
        .unwrap();
    append(
        &s.store,
        vec![
            upsert("p1", json!({"name": "A"})),
            upsert("p2", json!({"name": "B"})),
        ],
    )
    .await;
    let mut first = replicator(&s).await;
    first.catch_up().await.unwrap();
    drop(first);

    // Restart: the offset is kept; only new entries are read.
    append(&s.store, vec![upsert("p1", json!({"name": "A2"}))]).await;
    let mut second = replicator(&s).await;
    assert_eq!(second.offset(), 2);
    let report = second.catch_up().await.unwrap();
    assert_eq!((report.read, report.upserted), (1, 1));
    drop(second);

    // Lose the replicator's offset: everything is read again and skipped.
    std::fs::remove_file(s.dbs.root().join("replicator.sqlite")).unwrap();
    let mut third = replicator(&s).await;
    assert_eq!(third.offset(), 0);
    let report = third.catch_up().await.unwrap();
    assert_eq!((report.read, report.upserted, report.skipped), (3, 0, 3));
    let rows = query(
        &s.dbs.db_path("people"),
        "SELECT id, name FROM people ORDER BY id",
    );
    assert_eq!(
        rows,
        vec![
            vec![json!("p1"), json!("A2")],
            vec![json!("p2"), json!("B")]
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_layout_version_rebuilds_from_the_latest_rows() {
    let s = setup(Duration::from_secs(60));
    layout("v1")
        .publish(s.store.as_ref(), "people")
        .await
        .unwrap();
    append(
        &s.store,
        vec![
            upsert("p1", json!({"name": "A", "age": 1})),
            upsert("p2", json!({"name": "B"})),
            delete("p2"),
        ],
    )
    .await;
    let mut replicator = replicator(&s).await;
    replicator.catch_up().await.unwrap();

    let mut v2 = layout("v2");
    v2.table.columns.push(ColumnSpec {
        name: "nickname".into(),
        kind: ColumnKind::Text,
    });
    v2.publish(s.store.as_ref(), "people").await.unwrap();
    append(
        &s.store,
        vec![upsert("p3", json!({"name": "C", "nickname": "cee"}))],
    )
    .await;
    let report = replicator.catch_up().await.unwrap();
    assert_eq!(report.rebuilt, 1);
    let db = s.dbs.db_path("people");
    let rows = query(&db, "SELECT id, name, nickname FROM people ORDER BY id");
    assert_eq!(
        rows,
        vec![
            vec![json!("p1"), json!("A"), Value::Null],
            vec![json!("p3"), json!("C"), json!("cee")]
        ]
    );
    assert_eq!(
        query(
            &db,
            "SELECT value FROM _emcachers_meta WHERE key = 'layout_version'"
        ),
        vec![vec![json!("v2")]]
    );
    // No leftover rebuild files.
    let files: Vec<String> = std::fs::read_dir(s.dbs.entity_dir("people"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("rebuild"))
        .collect();
    assert!(files.is_empty(), "{files:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_cache_node_bootstraps_from_the_latest_rows() {
    let s = setup(Duration::from_secs(60));
    layout("v1")
        .publish(s.store.as_ref(), "people")
        .await
        .unwrap();
    append(
        &s.store,
        vec![
            upsert("p1", json!({"name": "A"})),
            upsert("p2", json!({"name": "B"})),
            delete("p1"),
        ],
    )
    .await;
    // Entries are read from offset 0, but the database is first created from
    // the latest rows as of the head, so the replay is skipped.
    let mut node = replicator(&s).await;
    let report = node.catch_up().await.unwrap();
    assert_eq!((report.rebuilt, report.upserted, report.skipped), (1, 0, 3));
    assert_eq!(
        query(&s.dbs.db_path("people"), "SELECT id FROM people"),
        vec![vec![json!("p2")]]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_and_removed_entities_lose_their_directory() {
    let s = setup(Duration::ZERO);
    layout("v1")
        .publish(s.store.as_ref(), "people")
        .await
        .unwrap();
    append(&s.store, vec![upsert("p1", json!({"name": "A"}))]).await;
    let mut replicator = replicator(&s).await;
    replicator.catch_up().await.unwrap();
    assert_eq!(s.dbs.open_count(), 1);
    assert_eq!(s.dbs.close_idle(), 1);
    assert_eq!(s.dbs.open_count(), 0);
    // Reopened on demand.
    assert_eq!(s.dbs.row_count("people").unwrap(), Some(1));
    assert!(s.dbs.entity_dir("people").exists());
    assert!(s.dbs.remove("people").unwrap());
    assert!(!s.dbs.entity_dir("people").exists());
    assert!(s.dir.path().join("dbs").exists());
}
