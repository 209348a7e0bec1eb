//! The SQLite cache replicator against a real oplog store: apply, re-apply,
//! delete, column types, indexes, offset resume, rebuild on a new layout
//! version, entity deletion and idle connections; one failing entity not
//! stopping the others, failed rebuilds leaving no files, and a re-created
//! entity not reusing its previous life's cache.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use emcachers::cache::{
    CacheDbManager, ColumnKind, ColumnSpec, EntityLayout, IndexSpec, Layouts, ReplicatorConfig,
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
        generation: 0,
    }
}

/// `layout(version)` with a unique index on `name`.
fn unique_names(version: &str) -> EntityLayout {
    let mut layout = layout(version);
    layout.table.indexes[0].unique = true;
    layout
}

fn row(entity: &str, id: &str, data: Value) -> NewRow {
    NewRow {
        entity: entity.into(),
        ..upsert(id, data)
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
        Layouts::published_only(),
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
    assert!(s.dbs.remove("people", i64::MAX).unwrap());
    assert!(!s.dbs.entity_dir("people").exists());
    assert!(s.dir.path().join("dbs").exists());
}

fn rebuild_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|files| {
            files
                .filter_map(|f| f.ok())
                .map(|f| f.file_name().to_string_lossy().into_owned())
                .filter(|n| n.contains("rebuild"))
                .collect()
        })
        .unwrap_or_default()
}

async fn quick_retries(s: &Setup) -> SqliteReplicator {
    SqliteReplicator::open(
        s.store.clone(),
        s.dbs.clone(),
        Layouts::published_only(),
        ReplicatorConfig {
            batch_size: 3,
            retry_initial: Duration::from_millis(1),
            retry_max: Duration::from_millis(5),
            ..ReplicatorConfig::default()
        },
    )
    .await
    .expect("replicator")
}

/// Step `replicator` until `done` holds (retries are due after a few ms),
/// at most 30 s.
async fn step_until(
    replicator: &mut SqliteReplicator,
    what: &str,
    mut done: impl FnMut(&SqliteReplicator) -> bool,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !done(replicator) {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        replicator.step().await.expect("step");
        tokio::task::yield_now().await;
    }
}

/// `people` has a unique index on `name` and two rows with the same name;
/// `pets` replicates all the same, the offset stays before `people`'s
/// failing entries (also across a restart), and `people` catches up once
/// its layout no longer has the index.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_entity_does_not_stop_the_others() {
    let s = setup(Duration::from_secs(60));
    unique_names("v1")
        .publish(s.store.as_ref(), "people")
        .await
        .unwrap();
    layout("v1")
        .publish(s.store.as_ref(), "pets")
        .await
        .unwrap();
    let mut replicator = quick_retries(&s).await;
    // Both databases exist, so the failure is in applying entries (not in a rebuild).
    for (entity, layout) in [("people", unique_names("v1")), ("pets", layout("v1"))] {
        replicator.ensure_layout(entity, &layout).await.unwrap();
    }
    append(
        &s.store,
        vec![
            row("pets", "x1", json!({"name": "Rex"})),
            row("people", "p1", json!({"name": "Ada"})),
            row("pets", "x2", json!({"name": "Tom"})),
        ],
    )
    .await;
    append(
        &s.store,
        vec![
            row("people", "p2", json!({"name": "Ada"})),
            row("pets", "x3", json!({"name": "Kit"})),
        ],
    )
    .await;

    let first = replicator.step().await.unwrap();
    assert_eq!((first.read, first.upserted, first.failed), (3, 3, 0));
    let second = replicator.step().await.unwrap();
    assert_eq!(
        (second.read, second.upserted, second.failed),
        (2, 1, 1),
        "pets' x3 applies, people's p2 fails"
    );
    assert_eq!(second.offset, 3, "held before people's failing entry 4");
    let failing = replicator.failing();
    assert_eq!(failing.len(), 1);
    assert_eq!(
        (failing[0].entity.as_str(), failing[0].resume_after),
        ("people", 3)
    );
    assert!(failing[0].error.contains("UNIQUE"), "{}", failing[0].error);
    let status = s.dbs.replicator_status();
    assert_eq!(status.failures_total(), 1);
    assert_eq!(status.failing(), failing);

    // The others go on while people is retried (and fails again).
    append(&s.store, vec![row("pets", "x4", json!({"name": "Bo"}))]).await;
    step_until(&mut replicator, "people retried twice", |r| {
        r.failing().first().is_some_and(|f| f.attempts >= 3)
    })
    .await;
    assert_eq!(
        query(&s.dbs.db_path("pets"), "SELECT id FROM pets ORDER BY id"),
        vec![
            vec![json!("x1")],
            vec![json!("x2")],
            vec![json!("x3")],
            vec![json!("x4")]
        ]
    );
    assert_eq!(
        query(
            &s.dbs.db_path("people"),
            "SELECT id FROM people ORDER BY id"
        ),
        vec![vec![json!("p1")]]
    );
    assert_eq!(replicator.offset(), 3);
    drop(replicator);

    // A restart forgets the failure but not the offset: people's entry is read again.
    let mut replicator = quick_retries(&s).await;
    assert_eq!(replicator.offset(), 3);
    let report = replicator.step().await.unwrap();
    assert_eq!((report.read, report.failed, report.skipped), (3, 1, 2));
    assert_eq!(replicator.offset(), 3);

    // Without the unique index people is rebuilt from the latest rows and rejoins.
    layout("v2")
        .publish(s.store.as_ref(), "people")
        .await
        .unwrap();
    step_until(&mut replicator, "people recovered", |r| {
        r.failing().is_empty()
    })
    .await;
    assert_eq!(replicator.offset(), 6);
    assert_eq!(
        query(
            &s.dbs.db_path("people"),
            "SELECT id, name FROM people ORDER BY id"
        ),
        vec![
            vec![json!("p1"), json!("Ada")],
            vec![json!("p2"), json!("Ada")]
        ]
    );
    assert!(s.dbs.replicator_status().recoveries_total() >= 1);
    append(&s.store, vec![row("people", "p3", json!({"name": "Cy"}))]).await;
    let report = replicator.catch_up().await.unwrap();
    assert_eq!((report.upserted, report.failed, report.offset), (1, 0, 7));
}

/// A rebuild that fails (its rows break a unique index) removes its file
/// every time; files of dead processes are swept when a manager opens the
/// directory, files of live ones are kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_rebuilds_leave_no_files_and_leftovers_are_swept() {
    let s = setup(Duration::from_secs(60));
    unique_names("v1")
        .publish(s.store.as_ref(), "people")
        .await
        .unwrap();
    append(
        &s.store,
        vec![
            upsert("p1", json!({"name": "Ada"})),
            upsert("p2", json!({"name": "Ada"})),
        ],
    )
    .await;
    let mut replicator = quick_retries(&s).await;
    let error = replicator
        .rebuild("people", &unique_names("v1"))
        .await
        .expect_err("the rows break the unique index");
    assert!(error.to_string().contains("UNIQUE"), "{error}");
    let dir = s.dbs.entity_dir("people");
    assert!(rebuild_files(&dir).is_empty(), "{:?}", rebuild_files(&dir));
    // The replicator's bootstrap fails the same way, again and again.
    step_until(&mut replicator, "three failed bootstraps", |r| {
        r.failing().first().is_some_and(|f| f.attempts >= 3)
    })
    .await;
    assert!(rebuild_files(&dir).is_empty(), "{:?}", rebuild_files(&dir));
    assert!(!s.dbs.db_path("people").exists());
    drop(replicator);

    // Leftovers of a process that died mid-rebuild; one of this (live) process.
    std::fs::create_dir_all(&dir).unwrap();
    let own = format!("db.sqlite.rebuild-{}-999", std::process::id());
    for name in [
        "db.sqlite.rebuild-999999999-0",
        "db.sqlite.rebuild-999999999-0-wal",
        "db.sqlite.rebuild-999999999-0-shm",
        own.as_str(),
    ] {
        std::fs::write(dir.join(name), b"partial").unwrap();
    }
    let reopened = CacheDbManager::open(s.dbs.root(), Duration::from_secs(60)).unwrap();
    assert_eq!(rebuild_files(&reopened.entity_dir("people")), vec![own]);
}

/// Removing an entity retires its life: a rebuild under way when the
/// directory goes finishes into nothing (no directory comes back under the
/// entity's name), a rebuild for the removed life is refused, and only a
/// later life builds there again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_life_is_not_rebuilt_by_a_writer_that_still_holds_it() {
    let s = setup(Duration::from_secs(60));
    let old_life = EntityLayout {
        generation: 1000,
        ..layout("v1")
    };
    old_life.publish(s.store.as_ref(), "people").await.unwrap();
    append(&s.store, vec![upsert("p1", json!({"name": "A"}))]).await;
    replicator(&s).await.catch_up().await.unwrap();
    let applied = s.dbs.state("people").unwrap().expect("built");
    let offset = emcachers::cache::Offset::new(applied.oplog.clone(), applied.applied_id);

    // A rebuild is under way (its file is in the directory) when the
    // entity is removed.
    let mut rebuild = s.dbs.begin_rebuild("people", &old_life, &offset).unwrap();
    assert!(s.dbs.remove("people", 1000).unwrap());
    assert!(!s.dbs.entity_dir("people").exists());
    // Its page fails or lands in the removed directory; finishing is refused.
    let _ = rebuild.load(&[]);
    let finished = s.dbs.finish_rebuild(rebuild);
    assert!(
        matches!(
            finished,
            Err(emcachers::cache::CacheDbError::Retired { .. })
        ),
        "{finished:?}"
    );
    assert!(!s.dbs.entity_dir("people").exists(), "nothing came back");
    // A rebuild for the removed life is refused before it makes a file.
    assert!(matches!(
        s.dbs.begin_rebuild("people", &old_life, &offset),
        Err(emcachers::cache::CacheDbError::Retired { .. })
    ));
    assert!(!s.dbs.entity_dir("people").exists());
    let left: Vec<String> = std::fs::read_dir(s.dbs.root())
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|name| name.starts_with('.'))
        .collect();
    assert!(
        left.is_empty(),
        "the renamed directory is gone too: {left:?}"
    );

    // The next life builds.
    let new_life = EntityLayout {
        generation: 2000,
        ..layout("v1")
    };
    let rebuild = s.dbs.begin_rebuild("people", &new_life, &offset).unwrap();
    s.dbs.finish_rebuild(rebuild).unwrap();
    assert_eq!(
        s.dbs.state("people").unwrap().map(|st| st.generation),
        Some(2000)
    );
}

/// A node that missed an entity's delete still has its database; when the
/// entity is created again (a new generation in its layout) the database
/// is rebuilt, not reused with the previous life's rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recreated_entity_does_not_reuse_its_previous_cache() {
    let s = setup(Duration::from_secs(60));
    let first_life = EntityLayout {
        generation: 1000,
        ..layout("v1")
    };
    first_life
        .publish(s.store.as_ref(), "people")
        .await
        .unwrap();
    append(&s.store, vec![upsert("p1", json!({"name": "old"}))]).await;
    let mut replicator = replicator(&s).await;
    replicator.catch_up().await.unwrap();
    assert_eq!(
        query(&s.dbs.db_path("people"), "SELECT id FROM people"),
        vec![vec![json!("p1")]]
    );

    // Deleted and created again elsewhere: same plugin version, new life.
    assert!(!s.store.delete_entity("people").await.unwrap());
    assert_eq!(
        EntityLayout::load(s.store.as_ref(), "people")
            .await
            .unwrap(),
        None
    );
    let second_life = EntityLayout {
        generation: 2000,
        ..layout("v1")
    };
    second_life
        .publish(s.store.as_ref(), "people")
        .await
        .unwrap();
    append(&s.store, vec![upsert("p9", json!({"name": "new"}))]).await;
    let report = replicator.catch_up().await.unwrap();
    assert_eq!(report.rebuilt, 1);
    assert_eq!(
        query(&s.dbs.db_path("people"), "SELECT id FROM people"),
        vec![vec![json!("p9")]]
    );
    assert_eq!(
        s.dbs.state("people").unwrap().map(|st| st.generation),
        Some(2000)
    );
}

/// The replicator's offset and the entity databases name the oplog they
/// count in: pointed at another oplog (a wiped one, another process's), the
/// caches are rebuilt from its latest rows instead of skipping its entries
/// until their ids pass the old numbers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caches_of_another_oplog_are_rebuilt() {
    let s = setup(Duration::from_secs(60));
    layout("v1")
        .publish(s.store.as_ref(), "people")
        .await
        .unwrap();
    let old: Vec<NewRow> = (0..10)
        .map(|i| upsert(&format!("old{i}"), json!({"name": format!("O{i}")})))
        .collect();
    append(&s.store, old).await;
    let mut first = replicator(&s).await;
    first.catch_up().await.unwrap();
    assert_eq!(first.offset(), 10);
    drop(first);

    // A new oplog (another identity) with fewer, other rows, same caches.
    let other: Arc<dyn OplogStore> =
        Arc::new(SqliteStore::open(&s.dir.path().join("other.sqlite")).expect("store"));
    assert_ne!(other.identity(), s.store.identity());
    layout("v1")
        .publish(other.as_ref(), "people")
        .await
        .unwrap();
    append(&other, vec![upsert("new1", json!({"name": "N"}))]).await;
    let mut second = SqliteReplicator::open(
        other.clone(),
        s.dbs.clone(),
        Layouts::published_only(),
        ReplicatorConfig {
            batch_size: 3,
            ..ReplicatorConfig::default()
        },
    )
    .await
    .expect("replicator");
    assert_eq!(second.offset(), 0, "the old offset is not resumed");
    second.catch_up().await.unwrap();
    let rows = query(
        &s.dbs.db_path("people"),
        "SELECT id FROM people ORDER BY id",
    );
    assert_eq!(rows, vec![vec![json!("new1")]]);
    let state = s.dbs.state("people").unwrap().expect("state");
    assert_eq!(state.oplog, other.identity());
    assert_eq!(second.offset(), 1);
}

/// A caught-up replicator wakes on the store's commit, not on its poll.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caught_up_replicator_wakes_on_commit() {
    let s = setup(Duration::from_secs(60));
    layout("v1")
        .publish(s.store.as_ref(), "people")
        .await
        .unwrap();
    append(&s.store, vec![upsert("p1", json!({"name": "A"}))]).await;
    let mut replicator = SqliteReplicator::open(
        s.store.clone(),
        s.dbs.clone(),
        Layouts::published_only(),
        ReplicatorConfig {
            poll_interval: Duration::from_secs(60),
            ..ReplicatorConfig::default()
        },
    )
    .await
    .expect("replicator");
    replicator.catch_up().await.unwrap();
    let status = replicator.status();
    let cancel = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(replicator.run(cancel.clone()));
    // Its first step finds nothing new: from then on it waits.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !status.caught_up() {
        assert!(std::time::Instant::now() < deadline, "never caught up");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    append(&s.store, vec![upsert("p2", json!({"name": "B"}))]).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let rows = query(
            &s.dbs.db_path("people"),
            "SELECT id FROM people ORDER BY id",
        );
        if rows.len() == 2 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the replicator did not wake on the commit (poll is 60 s)"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    cancel.cancel();
    task.await.expect("replicator task");
}
