//! One oplog store suite, run against the embedded SQLite store and a real
//! PostgreSQL started by the harness.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use emcachers::oplog::{
    AppendBatch, EntityDef, EntityStatus, NewRejected, NewRow, Op, OplogStore, PostgresStore,
    SourcePosition, SqliteStore, now_millis,
};
use emcachers_tests::services::PostgresServer;
use emcachers_tests::wait_until;
use serde_json::json;

/// A fresh store of each backend. The tempdir (SQLite) lives as long as the store is used.
pub enum Backend {
    Sqlite,
    Postgres,
}

pub struct Fresh {
    pub store: Arc<dyn OplogStore>,
    pub target: String,
    _dir: Option<tempfile::TempDir>,
}

pub async fn fresh(backend: Backend) -> Fresh {
    match backend {
        Backend::Sqlite => {
            let dir = tempfile::tempdir().expect("tempdir");
            let path = dir.path().join("oplog.sqlite");
            let store = SqliteStore::open(&path).expect("open sqlite store");
            Fresh {
                store: Arc::new(store),
                target: path.display().to_string(),
                _dir: Some(dir),
            }
        }
        Backend::Postgres => {
            let server = PostgresServer::shared();
            let url = server.create_database(&format!("oplog_{}", unique()));
            let store = PostgresStore::connect(&url)
                .await
                .expect("connect postgres store");
            Fresh {
                store: Arc::new(store),
                target: url,
                _dir: None,
            }
        }
    }
}

fn unique() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

pub fn row(entity: &str, id: &str, op: Op, data: Option<serde_json::Value>) -> NewRow {
    NewRow {
        entity: entity.into(),
        doc_id: id.into(),
        op,
        data: data.map(|d| d.to_string()),
        plugin: "test".into(),
        plugin_version: "1.0.0".into(),
    }
}

pub fn entity(name: &str, status: EntityStatus) -> EntityDef {
    EntityDef {
        name: name.into(),
        source: "src".into(),
        collection: name.into(),
        plugin: "shape".into(),
        config: json!({"columns": []}),
        status,
        created_at: now_millis(),
        updated_at: now_millis(),
    }
}

fn batch(rows: Vec<NewRow>, position: Option<&str>) -> AppendBatch {
    AppendBatch {
        rows,
        rejected: Vec::new(),
        position: position.map(|p| SourcePosition {
            source: "src".into(),
            position: p.into(),
        }),
        snapshot: false,
    }
}

macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::fresh(super::Backend::Sqlite).await).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::fresh(super::Backend::Postgres).await).await;
                }
            )*
        }
    };
}

both_backends!(
    appends_in_id_order_with_the_position,
    latest_rows_match_a_replay_of_the_log,
    staging_moves_into_the_log_exactly_once,
    rejected_records_are_listed_and_removed,
    entities_and_metadata,
    deleting_an_entity_removes_its_data,
    an_entity_and_its_metadata_come_and_go_together,
    a_batch_lands_with_its_position_or_not_at_all,
);

async fn appends_in_id_order_with_the_position(fresh: Fresh) {
    let store = fresh.store;
    assert_eq!(store.head().await.unwrap(), 0);
    assert_eq!(store.source_position("src").await.unwrap(), None);
    let first = store
        .append(batch(
            vec![
                row("users", "u1", Op::Upsert, Some(json!({"n": 1}))),
                row("users", "u2", Op::Delete, None),
            ],
            Some("p1"),
        ))
        .await
        .unwrap();
    assert_eq!((first.appended, first.last_id), (2, Some(2)));
    let second = store
        .append(batch(
            vec![row("orders", "o1", Op::Upsert, Some(json!({"total": 5})))],
            Some("p2"),
        ))
        .await
        .unwrap();
    assert_eq!(second.last_id, Some(3));
    // A batch with no rows still moves the position (an idle source's token).
    store.append(batch(Vec::new(), Some("p3"))).await.unwrap();
    assert_eq!(
        store.source_position("src").await.unwrap().as_deref(),
        Some("p3")
    );
    assert_eq!(store.head().await.unwrap(), 3);

    let log = store.read_log(0, 100).await.unwrap();
    assert_eq!(log.iter().map(|e| e.id).collect::<Vec<_>>(), vec![1, 2, 3]);
    assert_eq!(
        (log[0].entity.as_str(), log[0].doc_id.as_str(), log[0].op),
        ("users", "u1", Op::Upsert)
    );
    assert_eq!(log[0].data.as_deref(), Some(r#"{"n":1}"#));
    assert_eq!((log[1].op, log[1].data.as_deref()), (Op::Delete, None));
    assert_eq!(
        (log[2].plugin.as_str(), log[2].plugin_version.as_str()),
        ("test", "1.0.0")
    );
    assert_eq!(
        store.read_log(1, 1).await.unwrap()[0].id,
        2,
        "after and limit are honoured"
    );
}

async fn latest_rows_match_a_replay_of_the_log(fresh: Fresh) {
    let store = fresh.store;
    // A deterministic pseudo-random sequence of upserts and deletes, with
    // repeated ids inside batches.
    let mut seed: u64 = 0x2545F4914F6CDD1D;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for b in 0..20 {
        let rows = (0..50)
            .map(|i| {
                let id = format!("d{}", next() % 40);
                if next() % 4 == 0 {
                    row("docs", &id, Op::Delete, None)
                } else {
                    row("docs", &id, Op::Upsert, Some(json!({"b": b, "i": i})))
                }
            })
            .collect();
        store
            .append(batch(rows, Some(&b.to_string())))
            .await
            .unwrap();
    }
    let mut replay: BTreeMap<String, (i64, Op, Option<String>)> = BTreeMap::new();
    for entry in store.read_log(0, 10_000).await.unwrap() {
        replay.insert(
            entry.doc_id.clone(),
            (entry.id, entry.op, entry.data.clone()),
        );
    }
    let ids: Vec<String> = replay.keys().cloned().collect();
    let latest: BTreeMap<String, (i64, Op, Option<String>)> = store
        .latest("docs", &ids)
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.doc_id, (r.oplog_id, r.op, r.data)))
        .collect();
    assert_eq!(latest, replay, "latest rows equal a replay of the log");

    // Pages hold the live rows only, in id order.
    let mut paged = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = store
            .latest_page("docs", after.as_deref(), 7)
            .await
            .unwrap();
        let Some(last) = page.last().map(|r| r.doc_id.clone()) else {
            break;
        };
        paged.extend(page);
        after = Some(last);
    }
    let live: Vec<String> = replay
        .iter()
        .filter(|(_, v)| v.1 == Op::Upsert)
        .map(|(k, _)| k.clone())
        .collect();
    assert_eq!(
        paged.iter().map(|r| r.doc_id.clone()).collect::<Vec<_>>(),
        live
    );
}

async fn staging_moves_into_the_log_exactly_once(fresh: Fresh) {
    let store = fresh.store;
    store
        .put_entity(&entity("users", EntityStatus::Scanning))
        .await
        .unwrap();
    store
        .put_entity(&entity("orders", EntityStatus::Ready))
        .await
        .unwrap();
    // Stream rows while users is scanning: staged; orders goes to the log.
    let receipt = store
        .append(batch(
            vec![
                row("users", "u1", Op::Upsert, Some(json!({"v": "stream"}))),
                row("orders", "o1", Op::Upsert, Some(json!({}))),
                row("users", "u2", Op::Delete, None),
            ],
            Some("s1"),
        ))
        .await
        .unwrap();
    assert_eq!((receipt.appended, receipt.staged), (1, 2));
    assert_eq!(store.staged_count("users").await.unwrap(), 2);
    // The snapshot's rows go to the log even while scanning.
    let mut snapshot = batch(
        vec![
            row("users", "u1", Op::Upsert, Some(json!({"v": "snapshot"}))),
            row("users", "u2", Op::Upsert, Some(json!({"v": "snapshot"}))),
        ],
        None,
    );
    snapshot.snapshot = true;
    assert_eq!(store.append(snapshot).await.unwrap().appended, 2);

    assert_eq!(store.finish_load("users").await.unwrap(), 2);
    assert_eq!(
        store.finish_load("users").await.unwrap(),
        0,
        "a second finish moves nothing"
    );
    assert_eq!(store.staged_count("users").await.unwrap(), 0);
    assert_eq!(
        store.entity("users").await.unwrap().unwrap().status,
        EntityStatus::Ready
    );

    let users: Vec<_> = store
        .read_log(0, 100)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.entity == "users")
        .collect();
    assert_eq!(
        users.len(),
        4,
        "two snapshot rows, then the two staged rows, once"
    );
    assert!(
        users[2].data.as_deref().unwrap().contains("stream"),
        "staged rows come after the snapshot"
    );
    assert_eq!(users[3].op, Op::Delete);
    let latest = store
        .latest("users", &["u1".into(), "u2".into()])
        .await
        .unwrap();
    assert!(
        latest
            .iter()
            .any(|r| r.doc_id == "u1" && r.data.as_deref().is_some_and(|d| d.contains("stream")))
    );
    assert!(
        latest
            .iter()
            .any(|r| r.doc_id == "u2" && r.op == Op::Delete)
    );
}

async fn rejected_records_are_listed_and_removed(fresh: Fresh) {
    let store = fresh.store;
    let rejected = |id: &str| NewRejected {
        source: "src".into(),
        collection: "users".into(),
        entity: "users".into(),
        doc_id: id.into(),
        change: json!({"collection": "users", "op": "upsert", "id": id, "document": {"age": "x"}})
            .to_string(),
        plugin: "shape".into(),
        plugin_version: "0.1.0".into(),
        error: "expected Integer".into(),
    };
    let mut b = batch(
        vec![row("users", "ok", Op::Upsert, Some(json!({})))],
        Some("p"),
    );
    b.rejected = vec![rejected("a"), rejected("b")];
    assert_eq!(store.append(b).await.unwrap().rejected, 2);
    let listed = store.rejected(0, 10).await.unwrap();
    assert_eq!(
        listed.iter().map(|r| r.doc_id.as_str()).collect::<Vec<_>>(),
        vec!["a", "b"]
    );
    assert_eq!(
        (listed[0].plugin.as_str(), listed[0].error.as_str()),
        ("shape", "expected Integer")
    );
    assert_eq!(store.rejected(listed[0].id, 10).await.unwrap().len(), 1);
    assert_eq!(store.remove_rejected(&[listed[0].id]).await.unwrap(), 1);
    assert_eq!(store.rejected(0, 10).await.unwrap().len(), 1);
}

async fn entities_and_metadata(fresh: Fresh) {
    let store = fresh.store;
    let mut users = entity("users", EntityStatus::Pending);
    store.put_entity(&users).await.unwrap();
    store
        .put_entity(&entity("accounts", EntityStatus::Ready))
        .await
        .unwrap();
    assert_eq!(store.entity("users").await.unwrap().unwrap(), users);
    assert_eq!(
        store
            .entities()
            .await
            .unwrap()
            .iter()
            .map(|e| e.name.as_str())
            .collect::<Vec<_>>(),
        vec!["accounts", "users"]
    );
    users.plugin = "other".into();
    users.config = json!({"x": [1, 2]});
    store.put_entity(&users).await.unwrap();
    assert_eq!(
        store.entity("users").await.unwrap().unwrap().config,
        json!({"x": [1, 2]})
    );
    assert!(
        store
            .set_entity_status("users", EntityStatus::Scanning)
            .await
            .unwrap()
    );
    assert!(
        !store
            .set_entity_status("nobody", EntityStatus::Ready)
            .await
            .unwrap()
    );
    assert_eq!(
        store.entity("users").await.unwrap().unwrap().status,
        EntityStatus::Scanning
    );

    assert_eq!(store.meta_get("k").await.unwrap(), None);
    store.meta_set("k", &json!({"a": 1})).await.unwrap();
    store.meta_set("k", &json!({"a": 2})).await.unwrap();
    assert_eq!(store.meta_get("k").await.unwrap(), Some(json!({"a": 2})));
}

async fn deleting_an_entity_removes_its_data(fresh: Fresh) {
    let store = fresh.store;
    store
        .put_entity(&entity("gone", EntityStatus::Ready))
        .await
        .unwrap();
    store
        .put_entity(&entity("kept", EntityStatus::Ready))
        .await
        .unwrap();
    store
        .append(batch(
            vec![
                row("gone", "1", Op::Upsert, Some(json!({}))),
                row("kept", "1", Op::Upsert, Some(json!({}))),
            ],
            None,
        ))
        .await
        .unwrap();
    assert!(store.delete_entity("gone").await.unwrap());
    assert!(!store.delete_entity("gone").await.unwrap());
    assert!(store.entity("gone").await.unwrap().is_none());
    let log = store.read_log(0, 10).await.unwrap();
    assert_eq!(
        log.iter().map(|e| e.entity.as_str()).collect::<Vec<_>>(),
        vec!["kept"]
    );
    assert!(
        store
            .latest("gone", &["1".into()])
            .await
            .unwrap()
            .is_empty()
    );
    // Ids never go back after a delete.
    let next = store
        .append(batch(
            vec![row("kept", "2", Op::Upsert, Some(json!({})))],
            None,
        ))
        .await
        .unwrap();
    assert_eq!(next.last_id, Some(3));
}

/// An entity is stored with its layout in one transaction and deleted with
/// all its metadata (layout, load start), so its name can be used again: a
/// re-created entity publishes a layout without finding a stale one.
/// Before, a delete left the layout as JSON `null` and the next create of
/// the name failed to read it.
async fn an_entity_and_its_metadata_come_and_go_together(fresh: Fresh) {
    use emcachers::cache::{EntityLayout, TableSpec};
    let store = fresh.store;
    let layout = |version: &str, generation: i64| EntityLayout {
        version: version.into(),
        table: TableSpec::json_document(),
        generation,
    };
    let put = async |name: &str, layout: &EntityLayout| {
        store
            .put_entity_with_meta(
                &entity(name, EntityStatus::Ready),
                &[(EntityLayout::key(name), layout.to_value().unwrap())],
            )
            .await
    };
    put("gone", &layout("v1", 1)).await.unwrap();
    put("kept", &layout("v1", 1)).await.unwrap();
    store
        .meta_set("load:gone", &json!({"head": 3}))
        .await
        .unwrap();
    assert_eq!(
        EntityLayout::load(store.as_ref(), "gone").await.unwrap(),
        Some(layout("v1", 1))
    );

    assert!(store.delete_entity("gone").await.unwrap());
    assert_eq!(store.meta_get("layout:gone").await.unwrap(), None);
    assert_eq!(store.meta_get("load:gone").await.unwrap(), None);
    assert_eq!(
        EntityLayout::load(store.as_ref(), "kept").await.unwrap(),
        Some(layout("v1", 1)),
        "another entity's layout stays"
    );

    // The name again, a new life.
    put("gone", &layout("v1", 2)).await.unwrap();
    assert!(store.entity("gone").await.unwrap().is_some());
    assert_eq!(
        EntityLayout::load(store.as_ref(), "gone").await.unwrap(),
        Some(layout("v1", 2))
    );
    assert!(
        !layout("v1", 2)
            .publish(store.as_ref(), "gone")
            .await
            .unwrap()
    );

    // A layout left as null by an earlier version reads as none and is replaced.
    store.meta_set("layout:legacy", &json!(null)).await.unwrap();
    assert_eq!(
        EntityLayout::load(store.as_ref(), "legacy").await.unwrap(),
        None
    );
    assert!(
        layout("v1", 3)
            .publish(store.as_ref(), "legacy")
            .await
            .unwrap()
    );
    assert!(store.meta_delete("layout:legacy").await.unwrap());
    assert!(!store.meta_delete("layout:legacy").await.unwrap());

    // When the layout cannot be written, the definition is not written either.
    match store.backend() {
        "sqlite" => rusqlite::Connection::open(&fresh.target)
            .unwrap()
            .execute_batch(
                "CREATE TRIGGER refuse BEFORE INSERT ON metadata WHEN NEW.key = 'layout:doomed'
                 BEGIN SELECT RAISE(ABORT, 'refused by the test'); END;",
            )
            .unwrap(),
        _ => {
            PostgresServer::shared().psql(
                &fresh.target,
                "CREATE FUNCTION refuse() RETURNS trigger AS $$ BEGIN
                   RAISE EXCEPTION 'refused by the test'; END; $$ LANGUAGE plpgsql;
                 CREATE TRIGGER refuse BEFORE INSERT ON metadata FOR EACH ROW
                   WHEN (NEW.key = 'layout:doomed') EXECUTE FUNCTION refuse();",
            );
        }
    }
    let error = put("doomed", &layout("v1", 4)).await.unwrap_err();
    assert!(error.to_string().contains("refused by the test"), "{error}");
    assert!(store.entity("doomed").await.unwrap().is_none());
}

/// Kill a writer process (SIGKILL) while it appends large batches, several
/// times; after each kill, the committed position must account for exactly
/// the committed rows.
async fn a_batch_lands_with_its_position_or_not_at_all(fresh: Fresh) {
    const ROWS: usize = 4000;
    let store = fresh.store;
    for round in 0..3u64 {
        let before: u64 = position(&store).await;
        let mut writer = std::process::Command::new(env!("CARGO_BIN_EXE_oplog-writer"))
            .args([fresh.target.as_str(), &ROWS.to_string()])
            .spawn()
            .expect("start writer");
        // Wait until it committed at least one more batch, then kill it mid-flight.
        let handle = tokio::runtime::Handle::current();
        let probe = store.clone();
        let advanced = tokio::task::spawn_blocking(move || {
            wait_until(Duration::from_secs(60), || {
                handle.block_on(position(&probe)) > before
            })
        })
        .await
        .unwrap();
        assert!(advanced, "round {round}: the writer commits");
        writer.kill().expect("kill writer");
        let _ = writer.wait();

        let committed = position(&store).await;
        let mut rows = 0usize;
        let mut after = 0;
        loop {
            let page = store.read_log(after, 20_000).await.unwrap();
            let Some(last) = page.last().map(|e| e.id) else {
                break;
            };
            rows += page.iter().filter(|e| e.entity == "crash").count();
            after = last;
        }
        assert_eq!(
            rows as u64,
            committed * ROWS as u64,
            "round {round}: rows match the position {committed}"
        );
    }
}

async fn position(store: &Arc<dyn OplogStore>) -> u64 {
    store
        .source_position("crash-writer")
        .await
        .unwrap()
        .and_then(|p| p.parse().ok())
        .unwrap_or(0)
}
