//! The MongoDB source against a real server: SecantusDB
//! ([`MongoServer`], pinned), started by the harness as its own process.
//! Where SecantusDB differs from mongod, the tests follow mongod's
//! documented behaviour and say so beside the check.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use emcachers::config::Config;
use emcachers::model::{Change, ChangeOp};
use emcachers::node::Node;
use emcachers::oplog::{Op, OplogEntry};
use emcachers::sources::mongo::{FullDocument, MongoSource, MongoSourceConfig};
use emcachers::sources::{Source, SourceBatch};
use emcachers_tests::services::MongoServer;
use emcachers_tests::{emcachers_bin, plugin_cache_dir, wait_until};
use mongodb::bson::oid::ObjectId;
use mongodb::bson::{DateTime, Document, doc};
use rusqlite::{Connection, OpenFlags, OptionalExtension};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Deadline of every wait.
pub(crate) const WAIT: Duration = Duration::from_secs(60);

pub(crate) const DB: &str = "app";

/// The shape of the `items` entities: typed columns, an ObjectId, a date.
pub(crate) fn items_shape() -> Value {
    json!({
        "columns": [
            {"name": "id", "type": "Text", "path": "_id"},
            {"name": "name", "type": "Text", "path": "name"},
            {"name": "qty", "type": "Integer", "path": "qty"},
            {"name": "owner", "type": "Text", "path": "owner"},
            {"name": "at", "type": "Text", "path": "at"},
            {"name": "city", "type": "Text", "path": "address.city"},
            {"name": "nick", "type": "Text", "path": "nick"}
        ]
    })
}

/// A project directory: built-in plugins, the shared compile cache,
/// `sources` and `entities` as TOML.
pub(crate) fn project(extra: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let plugins = dir.path().join("plugins");
    std::fs::create_dir_all(&plugins).expect("mkdir plugins");
    let config = dir.path().join("emcachers.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {data:?}\n[api]\nlisten = \"127.0.0.1:0\"\n\
             [plugins]\ndir = {plugins:?}\ncache_dir = {cache:?}\nwatch = false\n{extra}\n",
            data = dir.path().join("data").display().to_string(),
            plugins = plugins.display().to_string(),
            cache = plugin_cache_dir().display().to_string(),
        ),
    )
    .expect("write config");
    (dir, config)
}

pub(crate) fn mongo_source(name: &str, uri: &str, mode: &str, extra: &str) -> String {
    format!(
        "[[sources]]\nkind = \"mongo\"\nname = \"{name}\"\nuri = \"{uri}\"\ndatabase = \"{DB}\"\n\
         full_document = \"{mode}\"\n{extra}\n"
    )
}

pub(crate) fn items_entity(name: &str, source: &str) -> String {
    format!(
        "[[entities]]\nname = \"{name}\"\nplugin = \"shape\"\nsource = \"{source}\"\n\
         collection = \"items\"\nconfig = {}\n",
        toml_inline(&items_shape())
    )
}

/// A JSON value as an inline TOML value.
pub(crate) fn toml_inline(value: &Value) -> String {
    match value {
        Value::Object(map) => format!(
            "{{ {} }}",
            map.iter()
                .map(|(k, v)| format!("{k:?} = {}", toml_inline(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Value::Array(items) => format!(
            "[{}]",
            items.iter().map(toml_inline).collect::<Vec<_>>().join(", ")
        ),
        other => other.to_string(),
    }
}

pub(crate) async fn client(mongo: &MongoServer) -> mongodb::Client {
    mongodb::Client::with_uri_str(mongo.uri())
        .await
        .expect("mongodb client")
}

/// Read a value with `read` every 20 ms until `done` holds for it or
/// [`WAIT`] passes; returns whether it held, and the last value.
pub(crate) async fn poll<T, F, Fut>(mut read: F, done: impl Fn(&T) -> bool) -> (bool, T)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = T>,
{
    let deadline = Instant::now() + WAIT;
    loop {
        let value = read().await;
        if done(&value) {
            return (true, value);
        }
        if Instant::now() >= deadline {
            return (false, value);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub(crate) async fn start_node(config: &Path) -> Node {
    let mut node = Node::open(Config::load(Some(config)).expect("config"))
        .await
        .expect("open node");
    node.start().await.expect("start node");
    node
}

async fn wait_for_position(node: &Node, source: &str) -> String {
    let (found, position) = poll(
        || async { node.store.source_position(source).await.expect("position") },
        Option::is_some,
    )
    .await;
    assert!(found, "source {source} never saved a position");
    position.unwrap_or_default()
}

/// A node with the source `mongo` (default update mode) on `mongo` and
/// the entity `items`, once its stream has saved a position.
async fn streaming_items(mongo: &MongoServer) -> (tempfile::TempDir, Node) {
    let (dir, config) = project(&format!(
        "{}{}",
        mongo_source("mongo", &mongo.uri(), "default", ""),
        items_entity("items", "mongo"),
    ));
    let node = start_node(&config).await;
    wait_for_position(&node, "mongo").await;
    (dir, node)
}

/// Wait until `entity` is `ready` (its load ended), at most [`WAIT`].
pub(crate) async fn wait_ready(node: &Node, entity: &str) {
    let (ready, status) = poll(
        || async { node.store.entity(entity).await.unwrap().map(|d| d.status) },
        |s| *s == Some(emcachers::oplog::EntityStatus::Ready),
    )
    .await;
    assert!(ready, "{entity} never became ready: {status:?}");
}

pub(crate) async fn entity_log(node: &Node, entity: &str) -> Vec<OplogEntry> {
    node.store
        .read_log(0, 100_000)
        .await
        .expect("read log")
        .into_iter()
        .filter(|e| e.entity == entity)
        .collect()
}

/// The cache rows of an `items` entity, by id: (name, qty, owner, at, city, nick).
pub(crate) type ItemRow = (
    Option<String>,
    Option<i64>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
);

pub(crate) fn cache_rows(data: &Path, entity: &str) -> Option<BTreeMap<String, ItemRow>> {
    let path = data.join(format!("dbs/{entity}/db.sqlite"));
    let conn = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY).ok()?;
    let mut stmt = conn
        .prepare(&format!(
            "SELECT id, name, qty, owner, at, city, nick FROM \"{entity}\""
        ))
        .ok()?;
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                (
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                ),
            ))
        })
        .ok()?
        .collect::<Result<BTreeMap<_, _>, _>>()
        .ok()?;
    Some(rows)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_type_lands_in_the_oplog_and_the_cache_in_both_update_modes() {
    let mongo = MongoServer::start();
    let (dir, config) = project(&format!(
        "{}{}{}{}",
        mongo_source(
            "mongo_d",
            &mongo.uri(),
            "default",
            "collections = [\"items\"]"
        ),
        mongo_source("mongo_u", &mongo.uri(), "updateLookup", ""),
        items_entity("items_d", "mongo_d"),
        items_entity("items_u", "mongo_u"),
    ));
    let node = start_node(&config).await;
    wait_for_position(&node, "mongo_d").await;
    wait_for_position(&node, "mongo_u").await;
    // The initial (empty) snapshots end first: a document written while a
    // scan runs may be read by it as well as streamed (two rows, one
    // change), and this test counts rows per change.
    for entity in ["items_d", "items_u"] {
        wait_ready(&node, entity).await;
    }

    let client = client(&mongo).await;
    let items = client.database(DB).collection::<Document>("items");
    let oid = ObjectId::parse_str("65f0a1b2c3d4e5f601234567").unwrap();
    let owner = ObjectId::parse_str("0123456789abcdef01234567").unwrap();
    let at = DateTime::from_millis(1_700_000_000_123);
    items
        .insert_one(
            doc! {"_id": oid, "name": "a", "qty": 1_i32, "owner": owner, "at": at,
            "address": {"city": "Oslo"}, "nick": "n"},
        )
        .await
        .unwrap();
    items
        .insert_one(doc! {"_id": "s2", "name": "b", "qty": 2_i64})
        .await
        .unwrap();
    items
        .update_one(
            doc! {"_id": oid},
            doc! {"$set": {"address.city": "Bergen", "qty": 5_i32}, "$unset": {"nick": ""}},
        )
        .await
        .unwrap();
    items
        .replace_one(doc! {"_id": "s2"}, doc! {"name": "b2", "qty": 20_i32})
        .await
        .unwrap();
    items
        .insert_one(doc! {"_id": 3_i32, "name": "c"})
        .await
        .unwrap();
    items.delete_one(doc! {"_id": 3_i32}).await.unwrap();
    items
        .update_one(doc! {"_id": oid}, doc! {"$inc": {"qty": 1_i32}})
        .await
        .unwrap();
    // Not routed: filtered by the `$match` of mongo_d, counted unrouted by mongo_u.
    client
        .database(DB)
        .collection::<Document>("other")
        .insert_one(doc! {"x": 1_i32})
        .await
        .unwrap();

    let oid_hex = oid.to_hex();
    let expected_ops = vec![
        (oid_hex.clone(), Op::Upsert),
        ("s2".to_owned(), Op::Upsert),
        (oid_hex.clone(), Op::Upsert),
        ("s2".to_owned(), Op::Upsert),
        ("3".to_owned(), Op::Upsert),
        ("3".to_owned(), Op::Delete),
        (oid_hex.clone(), Op::Upsert),
    ];
    let mut expected_rows = BTreeMap::new();
    expected_rows.insert(
        oid_hex.clone(),
        (
            Some("a".to_owned()),
            Some(6),
            Some(owner.to_hex()),
            Some("2023-11-14T22:13:20.123Z".to_owned()),
            Some("Bergen".to_owned()),
            None,
        ),
    );
    expected_rows.insert(
        "s2".to_owned(),
        (Some("b2".to_owned()), Some(20), None, None, None, None),
    );
    let data = dir.path().join("data");
    for entity in ["items_d", "items_u"] {
        let (complete, log) = poll(
            || entity_log(&node, entity),
            |log| log.len() >= expected_ops.len(),
        )
        .await;
        assert!(
            complete,
            "{entity}: the oplog got {} rows: {log:?}",
            log.len()
        );
        let ops: Vec<(String, Op)> = log.iter().map(|e| (e.doc_id.clone(), e.op)).collect();
        assert_eq!(ops, expected_ops, "{entity}: one row per event, in order");
        // The partial update (default mode) merged onto the current row:
        // city replaced through its dotted path, nick removed.
        let third: Value = serde_json::from_str(log[2].data.as_deref().unwrap()).unwrap();
        assert_eq!(third["city"], "Bergen", "{entity}: {third}");
        if entity == "items_d" {
            // With updateLookup the document is looked up when the event is
            // read, so it may already hold the later `$inc`.
            assert_eq!(third["qty"], 5, "{entity}: {third}");
        }
        assert_eq!(third["nick"], Value::Null, "{entity}: {third}");
        assert_eq!(third["name"], "a", "{entity}: {third}");
        assert_eq!(third["owner"], owner.to_hex(), "{entity}: {third}");

        let mut rows = None;
        let cached = wait_until(WAIT, || {
            rows = cache_rows(&data, entity);
            rows.as_ref() == Some(&expected_rows)
        });
        assert!(
            cached,
            "{entity}: cache {rows:?}, expected {expected_rows:?}"
        );
    }
    node.shutdown(Duration::from_secs(5)).await;
}

/// Run `source` from `position` until `count` changes arrived (or, with
/// `count` 0, until a position without a scan under way: the initial
/// snapshot ended); returns the changes and the last position.
async fn read_changes(
    config: &MongoSourceConfig,
    position: Option<String>,
    count: usize,
) -> (Vec<Change>, Option<String>) {
    let mut source = MongoSource::new(
        config.clone(),
        100,
        std::sync::Arc::new(emcachers::sources::CollectionsAsEntities::default()),
    );
    let (tx, mut rx) = mpsc::channel::<SourceBatch>(16);
    let cancel = CancellationToken::new();
    let task = {
        let cancel = cancel.clone();
        tokio::spawn(async move { source.run(position, tx, cancel).await })
    };
    let mut changes = Vec::new();
    let mut last = None;
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let batch = tokio::time::timeout(left, rx.recv())
            .await
            .unwrap_or_else(|_| panic!("only {} of {count} changes: {changes:?}", changes.len()))
            .expect("the source stopped");
        last = batch.position.or(last);
        changes.extend(batch.changes);
        let scanning = last.as_deref().is_some_and(|p| p.contains("\"scan\""));
        if changes.len() >= count && !(count == 0 && scanning) {
            break;
        }
    }
    cancel.cancel();
    task.await.expect("join").expect("the source ended cleanly");
    (changes, last)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_lookup_of_a_deleted_document_is_a_partial() {
    let mongo = MongoServer::start();
    let mut config = MongoSourceConfig {
        name: "m".into(),
        uri: mongo.uri(),
        database: DB.into(),
        collections: Some(vec!["items".into()]),
        full_document: FullDocument::UpdateLookup,
        token_persist_ms: 10_000,
        scan_chunk: 1000,
    };
    // Without a position the source saves the stream's first token at once
    // (with the snapshot of the empty collection, which ends at once).
    let (none, start) = read_changes(&config, None, 0).await;
    assert!(none.is_empty());
    let start = start.expect("a first token");

    let client = client(&mongo).await;
    let items = client.database(DB).collection::<Document>("items");
    items
        .insert_one(doc! {"_id": 1_i32, "a": 1_i32, "b": 1_i32})
        .await
        .unwrap();
    items
        .update_one(
            doc! {"_id": 1_i32},
            doc! {"$set": {"a": 2_i32}, "$unset": {"b": ""}},
        )
        .await
        .unwrap();
    items.delete_one(doc! {"_id": 1_i32}).await.unwrap();

    // The events are read after the delete: the lookup finds nothing
    // (`fullDocument: null`, as mongod does), so the update is the same
    // partial change as without lookup.
    for mode in [FullDocument::UpdateLookup, FullDocument::Default] {
        config.full_document = mode;
        let (changes, _) = read_changes(&config, Some(start.clone()), 3).await;
        let seen: Vec<(ChangeOp, String, Option<Value>)> = changes
            .iter()
            .map(|c| {
                (
                    c.op,
                    c.id.clone(),
                    c.document
                        .as_deref()
                        .map(|d| serde_json::from_str(d).unwrap()),
                )
            })
            .collect();
        assert_eq!(
            seen,
            vec![
                (
                    ChangeOp::Upsert,
                    "1".into(),
                    Some(json!({"_id": 1, "a": 1, "b": 1}))
                ),
                (
                    ChangeOp::Partial,
                    "1".into(),
                    Some(json!({"a": 2, "b": null}))
                ),
                (ChangeOp::Delete, "1".into(), None),
            ],
            "{mode:?}"
        );
    }
}

async fn fail_point(client: &mongodb::Client, code: i32, labels: &[&str]) {
    client
        .database("admin")
        .run_command(doc! {
            "configureFailPoint": "failCommand",
            "mode": {"times": 1_i32},
            "data": {"failCommands": ["getMore"], "errorCode": code, "errorLabels": labels},
        })
        .await
        .expect("configureFailPoint");
}

async fn insert_items(items: &mongodb::Collection<Document>, range: std::ops::Range<i32>) {
    for i in range {
        items
            .insert_one(doc! {"_id": format!("i{i:03}"), "name": format!("n{i}"), "qty": i})
            .await
            .unwrap();
    }
}

/// Every doc id of the entity's log appears once (inserts only).
async fn assert_log_is(node: &Node, count: usize) {
    let (done, log) = poll(|| entity_log(node, "items"), |log| log.len() >= count).await;
    assert!(done, "{} of {count} rows", log.len());
    let mut ids: Vec<&str> = log.iter().map(|e| e.doc_id.as_str()).collect();
    assert_eq!(ids.len(), count, "no row twice: {ids:?}");
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), count, "no row twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumable_failpoint_resumes_and_a_lost_history_resnapshots() {
    let mongo = MongoServer::start();
    let (_dir, config) = project(&format!(
        "{}{}",
        mongo_source(
            "mongo",
            &mongo.uri(),
            "default",
            "collections = [\"items\"]"
        ),
        items_entity("items", "mongo"),
    ));
    let node = start_node(&config).await;
    wait_for_position(&node, "mongo").await;
    let client = client(&mongo).await;
    let items = client.database(DB).collection::<Document>("items");
    insert_items(&items, 0..5).await;
    assert_log_is(&node, 5).await;

    // A resumable error on getMore: the driver resumes by itself, nothing
    // is lost or repeated, the source never stops.
    fail_point(&client, 6, &["ResumableChangeStreamError"]).await;
    insert_items(&items, 5..10).await;
    assert_log_is(&node, 10).await;
    let state = node.jobs.states().snapshot()["source:mongo"].clone();
    assert_eq!((state.restarts, state.failures), (0, 0), "{state:?}");
    // SecantusDB differs: its `configureFailPoint` reply has no `count`
    // (mongod reports how often the fail point was entered), so this cannot
    // check here that it fired; the 286 fail point below shows that fail
    // points on `getMore` do reach this stream. Switch it off either way.
    client
        .database("admin")
        .run_command(doc! {"configureFailPoint": "failCommand", "mode": "off"})
        .await
        .expect("fail point off");

    // ChangeStreamHistoryLost: no longer a stop. The source opens a new
    // stream and snapshots the collection again; the source never fails.
    // The document deleted right after the fail point is set is gone from
    // the cache either way (by its delete event, when read before the
    // failed getMore, else by the re-snapshot's eviction).
    fail_point(&client, 286, &[]).await;
    items.delete_one(doc! {"_id": "i000"}).await.unwrap();
    insert_items(&items, 10..15).await;
    // The re-snapshot writes a snapshot row for every document again: an
    // untouched document gets a second row.
    let (resnapshotted, log) = poll(
        || entity_log(&node, "items"),
        |log| log.iter().filter(|e| e.doc_id == "i001").count() >= 2,
    )
    .await;
    assert!(resnapshotted, "no re-snapshot: {} rows", log.len());
    let expected: NameQty = (1..15)
        .map(|i| {
            (
                format!("i{i:03}"),
                (Some(format!("n{i}")), Some(i64::from(i))),
            )
        })
        .collect();
    let (converged, rows) = poll(
        || async { name_qty(&cache_rows(&node.config.data_dir, "items")) },
        |rows| rows.as_ref() == Some(&expected),
    )
    .await;
    assert!(converged, "cache {rows:?}");
    let state = node.jobs.states().snapshot()["source:mongo"].clone();
    assert_eq!(state.failures, 0, "{state:?}");
    node.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_streams_saved_token_advances() {
    let mongo = MongoServer::start();
    let (_dir, config) = project(&format!(
        "{}{}",
        mongo_source(
            "mongo",
            &mongo.uri(),
            "default",
            "collections = [\"items\"]\ntoken_persist_ms = 100"
        ),
        items_entity("items", "mongo"),
    ));
    let node = start_node(&config).await;
    let mut position = wait_for_position(&node, "mongo").await;
    let client = client(&mongo).await;
    let other = client.database(DB).collection::<Document>("other");
    for round in 0..2 {
        // Writes to a collection the stream filters out: no event, but the
        // server's postBatchResumeToken moves past them. (mongod also moves
        // it on a quiet replica set, by its periodic no-op oplog writes every
        // 10 s; SecantusDB only with `--noop-heartbeat-seconds`, off by
        // default, so this test writes instead of waiting.)
        other.insert_one(doc! {"round": round}).await.unwrap();
        let before = position.clone();
        let (advanced, now) = poll(
            || async {
                node.store
                    .source_position("mongo")
                    .await
                    .expect("position")
                    .unwrap_or_default()
            },
            |now| *now != before,
        )
        .await;
        assert!(advanced, "round {round}: the token stayed {before}");
        position = now;
    }
    assert!(entity_log(&node, "items").await.is_empty());
    node.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_routed_collection_evicts_its_rows_and_the_stream_goes_on() {
    let mongo = MongoServer::start();
    let (_dir, node) = streaming_items(&mongo).await;
    let client = client(&mongo).await;
    let db = client.database(DB);
    // A drop of a collection no entity routes is skipped.
    db.collection::<Document>("scratch")
        .insert_one(doc! {"x": 1_i32})
        .await
        .unwrap();
    db.collection::<Document>("scratch").drop().await.unwrap();
    let items = db.collection::<Document>("items");
    insert_items(&items, 0..3).await;
    assert_log_is(&node, 3).await;
    items.drop().await.unwrap();
    // The dropped collection is snapshotted again, as empty: its rows are
    // evicted (a delete row each), in the log and in the cache.
    let (evicted, log) = poll(
        || entity_log(&node, "items"),
        |log| log.iter().filter(|e| e.op == Op::Delete).count() >= 3,
    )
    .await;
    assert!(evicted, "{log:?}");
    let (empty, rows) = poll(
        || async { cache_rows(&node.config.data_dir, "items") },
        |rows| rows.as_ref().is_some_and(BTreeMap::is_empty),
    )
    .await;
    assert!(empty, "{rows:?}");
    // The stream goes on: the collection written again feeds the entity.
    insert_items(&items, 7..8).await;
    let (back, rows) = poll(
        || async { cache_rows(&node.config.data_dir, "items") },
        |rows| {
            rows.as_ref()
                .is_some_and(|r| r.contains_key("i007") && r.len() == 1)
        },
    )
    .await;
    assert!(back, "{rows:?}");
    let state = node.jobs.states().snapshot()["source:mongo"].clone();
    assert_eq!(state.failures, 0, "{state:?}");
    node.shutdown(Duration::from_secs(5)).await;
}

/// A routed collection renamed away scans as empty (its rows are evicted);
/// a collection renamed in under a routed name is loaded; `dropDatabase`
/// (followed by `invalidate` on a database stream: the stream is reopened
/// with `startAfter`) evicts every routed entity; the stream goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rename_and_drop_database_resnapshot_and_the_stream_goes_on() {
    let mongo = MongoServer::start();
    let (_dir, node) = streaming_items(&mongo).await;
    let client = client(&mongo).await;
    let db = client.database(DB);
    let items = db.collection::<Document>("items");
    insert_items(&items, 0..3).await;
    assert_log_is(&node, 3).await;
    let data = node.config.data_dir.clone();
    let ids = || async {
        cache_rows(&data, "items").map(|rows| rows.keys().cloned().collect::<Vec<_>>())
    };
    let (seen, got) = poll(ids, |ids| ids.as_ref().is_some_and(|i| i.len() == 3)).await;
    assert!(seen, "{got:?}");

    // Renamed away: `items` no longer exists, its rows are evicted.
    let admin = client.database("admin");
    admin
        .run_command(
            doc! {"renameCollection": format!("{DB}.items"), "to": format!("{DB}.archive")},
        )
        .await
        .unwrap();
    let (empty, got) = poll(ids, |ids| ids.as_ref().is_some_and(Vec::is_empty)).await;
    assert!(empty, "the renamed-away collection's rows stay: {got:?}");

    // Renamed in: the documents of `staging` become those of `items`.
    let staging = db.collection::<Document>("staging");
    insert_items(&staging, 10..12).await;
    admin
        .run_command(
            doc! {"renameCollection": format!("{DB}.staging"), "to": format!("{DB}.items")},
        )
        .await
        .unwrap();
    let want = vec!["i010".to_owned(), "i011".to_owned()];
    let (loaded, got) = poll(ids, |ids| ids.as_ref() == Some(&want)).await;
    assert!(loaded, "the renamed-in collection is not loaded: {got:?}");

    // dropDatabase: every routed entity is snapshotted again, as empty.
    db.drop().await.unwrap();
    let (empty, got) = poll(ids, |ids| ids.as_ref().is_some_and(Vec::is_empty)).await;
    assert!(empty, "rows stay after dropDatabase: {got:?}");

    // The stream goes on (reopened after `invalidate`).
    insert_items(&items, 20..21).await;
    let want = vec!["i020".to_owned()];
    let (back, got) = poll(ids, |ids| ids.as_ref() == Some(&want)).await;
    assert!(back, "{got:?}");
    let state = node.jobs.states().snapshot()["source:mongo"].clone();
    assert_eq!(state.failures, 0, "{state:?}");
    let position = node
        .store
        .source_position("mongo")
        .await
        .unwrap()
        .unwrap_or_default();
    assert!(
        !position.contains("\"scan\""),
        "no scan left under way: {position}"
    );
    node.shutdown(Duration::from_secs(5)).await;
}

/// MongoDB down for 30 s (killed with SIGKILL, then started again on the
/// same port and storage): the source reopens or restarts from its
/// committed token, catches up, and nothing is lost or repeated.
///
/// The writes are journaled (`j: true`), as data that must survive a crash
/// is: SecantusDB, like mongod, keeps journaled writes across a SIGKILL,
/// but it loses unjournaled acknowledged writes and then reuses their
/// change-event positions, which mongod never does (a resumed stream would
/// skip the events that reuse them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongodb_down_for_30_s_catches_up_and_loses_nothing() {
    let mongo = MongoServer::start();
    let (_dir, node) = streaming_items(&mongo).await;
    let journaled = |client: &mongodb::Client| {
        let options = mongodb::options::CollectionOptions::builder()
            .write_concern(
                mongodb::options::WriteConcern::builder()
                    .journal(true)
                    .build(),
            )
            .build();
        client
            .database(DB)
            .collection_with_options::<Document>("items", options)
    };
    let client = client(&mongo).await;
    let items = journaled(&client);
    insert_items(&items, 0..3).await;
    assert_log_is(&node, 3).await;
    // Written just before the crash: maybe not read by the source yet.
    insert_items(&items, 3..6).await;
    mongo.kill9();
    // The outage itself (a scenario, not a wait for anything).
    tokio::time::sleep(Duration::from_secs(30)).await;
    mongo.start_again();
    let client = self::client(&mongo).await;
    let items = journaled(&client);
    insert_items(&items, 6..9).await;
    let want: Vec<String> = (0..9).map(|i| format!("i{i:03}")).collect();
    let data = node.config.data_dir.clone();
    let (caught_up, got) = poll(
        || async { cache_rows(&data, "items").map(|r| r.keys().cloned().collect::<Vec<_>>()) },
        |ids| ids.as_ref() == Some(&want),
    )
    .await;
    assert!(caught_up, "{got:?}\n{}", mongo.log());
    // Exactly one oplog row per change: nothing read twice.
    assert_log_is(&node, 9).await;
    let status = node.statuses.mongos[0].1.report();
    assert!(status.connected && status.error.is_none(), "{status:?}");
    node.shutdown(Duration::from_secs(5)).await;
}

/// `_id`s of every sortable BSON type in one collection: the scan reads
/// them bracket by bracket (`$gt` compares within a type only), in chunks
/// that cross bracket borders, and the cache holds every document.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scan_reads_ids_of_every_type() {
    use mongodb::bson::{Binary, Bson, Timestamp, spec::BinarySubtype};
    let mongo = MongoServer::start();
    let client = client(&mongo).await;
    let items = client.database(DB).collection::<Document>("items");
    let mut ids: Vec<Bson> = Vec::new();
    ids.extend((0..20).map(Bson::Int32));
    ids.extend((20..25).map(|i| Bson::Int64(i64::from(i) * 1_000_000_000_000)));
    ids.push(Bson::Double(2.5));
    ids.extend((0..20).map(|i| Bson::String(format!("s{i:02}"))));
    ids.extend((0..9).map(|_| Bson::ObjectId(ObjectId::new())));
    ids.extend([
        Bson::Null,
        Bson::MinKey,
        Bson::MaxKey,
        Bson::Boolean(true),
        Bson::Boolean(false),
        Bson::Document(doc! {"a": 1_i32}),
        Bson::DateTime(DateTime::from_millis(1_700_000_000_000)),
        Bson::Timestamp(Timestamp {
            time: 7,
            increment: 1,
        }),
        Bson::Binary(Binary {
            subtype: BinarySubtype::Generic,
            bytes: vec![1, 2, 3],
        }),
    ]);
    for (n, id) in ids.iter().enumerate() {
        items
            .insert_one(doc! {"_id": id.clone(), "name": format!("n{n}")})
            .await
            .unwrap();
    }
    let (_dir, config) = project(&format!(
        "{}{}",
        mongo_source("mongo", &mongo.uri(), "default", "scan_chunk = 7"),
        items_entity("items", "mongo"),
    ));
    let node = start_node(&config).await;
    let data = node.config.data_dir.clone();
    let want: std::collections::BTreeSet<String> = ids
        .iter()
        .map(emcachers::sources::mongo::bson::id_string)
        .collect();
    assert_eq!(want.len(), ids.len(), "distinct row ids");
    let (all, got) = poll(
        || async {
            cache_rows(&data, "items")
                .map(|rows| rows.into_keys().collect::<std::collections::BTreeSet<_>>())
        },
        |got| got.as_ref() == Some(&want),
    )
    .await;
    let missing: Vec<&String> = want
        .iter()
        .filter(|id| !got.iter().flatten().any(|g| g == *id))
        .collect();
    assert!(all, "missing {missing:?}");
    wait_ready(&node, "items").await;
    // Each document once: no bracket read twice.
    assert_log_is(&node, ids.len()).await;
    node.shutdown(Duration::from_secs(5)).await;
}

/// A stream that is never idle (a write every few milliseconds while the
/// initial scan runs and after it): the load still ends, once an event
/// after the scan's end arrives, and the cache equals the collection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_ends_on_a_stream_that_is_never_idle() {
    let mongo = MongoServer::start();
    let client = client(&mongo).await;
    let db = client.database(DB);
    seed(&db, 2000).await;
    let (_dir, config) = project(&format!(
        "{}{}",
        mongo_source("mongo", &mongo.uri(), "default", "scan_chunk = 100"),
        items_entity("items", "mongo"),
    ));
    let stop = CancellationToken::new();
    let writer = {
        let (items, stop) = (db.collection::<Document>("items"), stop.clone());
        tokio::spawn(async move {
            let mut n = 100_000_i32;
            while !stop.is_cancelled() {
                items
                    .insert_one(doc! {"_id": n, "name": format!("w{n}"), "qty": 1_i32})
                    .await
                    .unwrap();
                n += 1;
                // Load, not synchronisation: a change every 5 ms keeps
                // every `getMore` busy.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            n - 100_000
        })
    };
    let node = start_node(&config).await;
    // The load ends while writes keep coming.
    wait_ready(&node, "items").await;
    assert!(
        !stop.is_cancelled() && !writer.is_finished(),
        "writes were still coming"
    );
    stop.cancel();
    let written = writer.await.unwrap();
    assert!(written > 0);
    let expected = collection_name_qty(&db.collection::<Document>("items")).await;
    let data = node.config.data_dir.clone();
    let (same, rows) = poll(
        || async { name_qty(&cache_rows(&data, "items")) },
        |rows| rows.as_ref() == Some(&expected),
    )
    .await;
    assert!(
        same,
        "cache {} rows, collection {}",
        rows.map_or(0, |r| r.len()),
        expected.len()
    );
    node.shutdown(Duration::from_secs(5)).await;
}

/// Kills the child on drop.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn run_binary(config: &Path, log: &Path) -> ChildGuard {
    ChildGuard(
        Command::new(emcachers_bin())
            .args(["run", "--config"])
            .arg(config)
            .env("RUST_LOG", "info,emcachers=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).expect("log"))
            .spawn()
            .expect("start emcachers"),
    )
}

fn oplog_count(data: &Path, entity: &str) -> Option<i64> {
    let conn =
        Connection::open_with_flags(data.join("oplog.sqlite"), OpenFlags::SQLITE_OPEN_READ_ONLY)
            .ok()?;
    conn.query_row(
        "SELECT count(*) FROM oplog WHERE entity = ?1",
        [entity],
        |r| r.get(0),
    )
    .ok()
}

fn saved_position(data: &Path) -> Option<String> {
    let conn =
        Connection::open_with_flags(data.join("oplog.sqlite"), OpenFlags::SQLITE_OPEN_READ_ONLY)
            .ok()?;
    conn.query_row(
        "SELECT position FROM source_positions WHERE source = 'mongo'",
        [],
        |r| r.get(0),
    )
    .optional()
    .ok()
    .flatten()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_emcachers_while_documents_change_loses_and_repeats_nothing() {
    let mongo = MongoServer::start();
    let (dir, config) = project(&format!(
        "{}{}",
        mongo_source("mongo", &mongo.uri(), "default", ""),
        items_entity("items", "mongo"),
    ));
    let data = dir.path().join("data");
    let first_log = dir.path().join("first.log");
    let mut running = run_binary(&config, &first_log);
    let saved = wait_until(WAIT, || saved_position(&data).is_some());
    assert!(
        saved,
        "no position saved:\n{}",
        std::fs::read_to_string(&first_log).unwrap_or_default()
    );

    let client = client(&mongo).await;
    let items = client.database(DB).collection::<Document>("items");
    // Inserts, updates and deletes; every call is exactly one event.
    let mut events = 0i64;
    let mut live: Vec<i32> = Vec::new();
    let second_log = dir.path().join("second.log");
    for i in 0..450 {
        let target = live.len().checked_sub(2).map(|at| live[at]);
        match (i % 5, target) {
            (3, Some(t)) => {
                items
                    .update_one(
                        doc! {"_id": t},
                        doc! {"$inc": {"qty": 1_i32}, "$set": {"name": format!("u{i}")}},
                    )
                    .await
                    .unwrap();
            }
            (4, Some(t)) => {
                items.delete_one(doc! {"_id": t}).await.unwrap();
                live.retain(|x| *x != t);
            }
            _ => {
                items
                    .insert_one(doc! {"_id": i, "name": format!("n{i}"), "qty": i})
                    .await
                    .unwrap();
                live.push(i);
            }
        }
        events += 1;
        if i == 150 {
            // Killed while documents keep changing (the writes go on while
            // it is down).
            running.0.kill().expect("kill -9");
            let _ = running.0.wait();
            eprintln!(
                "killed after {events} events with {:?} oplog rows committed",
                oplog_count(&data, "items")
            );
        }
        if i == 300 {
            running = run_binary(&config, &second_log);
        }
    }

    // The cache equals the collection, and each event made exactly one row.
    let mut expected = BTreeMap::new();
    let mut cursor = items.find(doc! {}).await.unwrap();
    while cursor.advance().await.unwrap() {
        let doc = cursor.deserialize_current().unwrap();
        let id = doc.get_i32("_id").unwrap();
        expected.insert(
            id.to_string(),
            (
                Some(doc.get_str("name").unwrap().to_owned()),
                Some(i64::from(doc.get_i32("qty").unwrap())),
                None,
                None,
                None,
                None,
            ),
        );
    }
    let mut rows = None;
    let converged = wait_until(WAIT, || {
        rows = cache_rows(&data, "items");
        rows.as_ref() == Some(&expected)
    });
    let log = || std::fs::read_to_string(&second_log).unwrap_or_default();
    assert!(
        converged,
        "cache {} rows, collection {} rows\n{}",
        rows.as_ref().map_or(0, BTreeMap::len),
        expected.len(),
        log()
    );
    assert_eq!(
        oplog_count(&data, "items"),
        Some(events),
        "one oplog row per event: none lost, none twice\n{}",
        log()
    );
    drop(running);
}

/// (name, qty) by row id.
pub(crate) type NameQty = BTreeMap<String, (Option<String>, Option<i64>)>;

/// The (name, qty) of cache rows, by id.
pub(crate) fn name_qty(rows: &Option<BTreeMap<String, ItemRow>>) -> Option<NameQty> {
    rows.as_ref().map(|rows| {
        rows.iter()
            .map(|(id, row)| (id.clone(), (row.0.clone(), row.1)))
            .collect()
    })
}

/// The (name, qty) of every document of a collection, by id (`_id` as the
/// row id: an int or a string).
pub(crate) async fn collection_name_qty(collection: &mongodb::Collection<Document>) -> NameQty {
    let mut out = BTreeMap::new();
    let mut cursor = collection.find(doc! {}).await.unwrap();
    while cursor.advance().await.unwrap() {
        let doc = cursor.deserialize_current().unwrap();
        let id = match doc.get("_id") {
            Some(mongodb::bson::Bson::Int32(i)) => i.to_string(),
            Some(mongodb::bson::Bson::String(s)) => s.clone(),
            Some(mongodb::bson::Bson::ObjectId(o)) => o.to_hex(),
            other => panic!("unexpected _id {other:?}"),
        };
        let qty = match doc.get("qty") {
            Some(mongodb::bson::Bson::Int32(i)) => Some(i64::from(*i)),
            Some(mongodb::bson::Bson::Int64(i)) => Some(*i),
            _ => None,
        };
        out.insert(id, (doc.get_str("name").ok().map(str::to_owned), qty));
    }
    out
}

pub(crate) fn entity(name: &str, source: &str, collection: &str) -> String {
    items_entity(name, source).replace(
        "collection = \"items\"",
        &format!("collection = \"{collection}\""),
    )
}

/// `count` documents of several BSON types: ints, 64-bit ints, dates,
/// nested documents; ObjectId ids in `people`.
pub(crate) async fn seed(db: &mongodb::Database, count: i32) {
    let items: Vec<Document> = (0..count)
        .map(|i| {
            doc! {"_id": i, "name": format!("n{i}"), "qty": i64::from(i) * 1_000_000_007,
            "at": DateTime::from_millis(1_700_000_000_000 + i64::from(i)),
            "address": {"city": format!("c{}", i % 7)}}
        })
        .collect();
    db.collection::<Document>("items")
        .insert_many(items)
        .await
        .unwrap();
    let people: Vec<Document> = (0..count / 3)
        .map(|i| doc! {"_id": ObjectId::new(), "name": format!("p{i}"), "qty": i})
        .collect();
    db.collection::<Document>("people")
        .insert_many(people)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_initial_scan_lands_every_document_and_keeps_the_writes_made_during_it() {
    let mongo = MongoServer::start();
    let client = client(&mongo).await;
    let db = client.database(DB);
    seed(&db, 3000).await;
    let (_dir, config) = project(&format!(
        "{}{}{}",
        mongo_source("mongo", &mongo.uri(), "default", "scan_chunk = 100"),
        items_entity("items", "mongo"),
        entity("people", "mongo", "people"),
    ));
    let node = start_node(&config).await;
    // Once the first chunk is committed (the position records its last
    // `_id`), documents change while the scan goes on.
    let (scanning, position) = poll(
        || async {
            node.store
                .source_position("mongo")
                .await
                .expect("position")
                .unwrap_or_default()
        },
        |p| p.contains("\"after\""),
    )
    .await;
    assert!(scanning, "no chunk committed: {position}");
    let items = db.collection::<Document>("items");
    for i in (0..3000).step_by(97) {
        items
            .update_one(doc! {"_id": i}, doc! {"$set": {"name": format!("w{i}")}})
            .await
            .unwrap();
    }
    items
        .delete_many(doc! {"_id": {"$gte": 2990}})
        .await
        .unwrap();
    items
        .insert_one(doc! {"_id": 5000_i32, "name": "late", "qty": 1_i32})
        .await
        .unwrap();
    let still = node
        .store
        .source_position("mongo")
        .await
        .unwrap()
        .unwrap_or_default();
    eprintln!(
        "writes made while the scan {}",
        if still.contains("\"scan\"") {
            "was still under way"
        } else {
            "had already ended"
        }
    );

    let data = node.config.data_dir.clone();
    for (entity, collection) in [("items", "items"), ("people", "people")] {
        let expected = collection_name_qty(&db.collection::<Document>(collection)).await;
        let (converged, rows) = poll(
            || async { name_qty(&cache_rows(&data, entity)) },
            |rows| rows.as_ref() == Some(&expected),
        )
        .await;
        let diff: Vec<_> = rows
            .iter()
            .flatten()
            .filter(|(id, row)| expected.get(*id) != Some(row))
            .take(5)
            .collect();
        if !converged {
            for (id, _) in &diff {
                let log: Vec<_> = entity_log(&node, entity)
                    .await
                    .into_iter()
                    .filter(|e| &e.doc_id == *id)
                    .collect();
                eprintln!("log of {id}: {log:?}");
            }
        }
        assert!(
            converged,
            "{entity}: cache {} rows, collection {}; differing: {diff:?}",
            rows.as_ref().map_or(0, |r| r.len()),
            expected.len()
        );
    }
    // The load ended: the entities are ready and the position holds no
    // scan any more.
    for name in ["items", "people"] {
        let def = node.store.entity(name).await.unwrap().unwrap();
        assert_eq!(def.status, emcachers::oplog::EntityStatus::Ready, "{name}");
    }
    let (ended, position) = poll(
        || async {
            node.store
                .source_position("mongo")
                .await
                .unwrap()
                .unwrap_or_default()
        },
        |p| !p.contains("\"scan\""),
    )
    .await;
    assert!(ended, "{position}");
    node.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_the_scan_continues_after_the_last_committed_chunk() {
    let mongo = MongoServer::start();
    let client = client(&mongo).await;
    let db = client.database(DB);
    seed(&db, 3000).await;
    let (dir, config) = project(&format!(
        "{}{}",
        mongo_source("mongo", &mongo.uri(), "default", "scan_chunk = 50"),
        items_entity("items", "mongo"),
    ));
    let data = dir.path().join("data");
    let first_log = dir.path().join("first.log");
    let mut running = run_binary(&config, &first_log);
    let scanning = wait_until(WAIT, || {
        saved_position(&data).is_some_and(|p| p.contains("\"after\""))
            && oplog_count(&data, "items").is_some_and(|n| n >= 100)
    });
    assert!(
        scanning,
        "no chunk committed:\n{}",
        std::fs::read_to_string(&first_log).unwrap_or_default()
    );
    running.0.kill().expect("kill -9");
    let _ = running.0.wait();
    let at_kill = saved_position(&data).unwrap_or_default();
    let committed = oplog_count(&data, "items");
    eprintln!("killed with {committed:?} snapshot rows committed; position {at_kill}");
    assert!(
        at_kill.contains("\"scan\""),
        "the scan had ended before the kill: {at_kill}"
    );

    let second_log = dir.path().join("second.log");
    let running = run_binary(&config, &second_log);
    let expected = collection_name_qty(&db.collection::<Document>("items")).await;
    let mut rows = None;
    let converged = wait_until(WAIT, || {
        rows = name_qty(&cache_rows(&data, "items"));
        rows.as_ref() == Some(&expected)
    });
    let log = || std::fs::read_to_string(&second_log).unwrap_or_default();
    assert!(
        converged,
        "cache {} rows, collection {}\n{}",
        rows.map_or(0, |r| r.len()),
        expected.len(),
        log()
    );
    // Each document's snapshot row is in the oplog once: the committed
    // chunks were not copied again.
    let conn =
        Connection::open_with_flags(data.join("oplog.sqlite"), OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    let (rows_n, ids_n): (i64, i64) = conn
        .query_row(
            "SELECT count(*), count(DISTINCT doc_id) FROM oplog WHERE entity = 'items'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((rows_n, ids_n), (3000, 3000), "{}", log());
    assert!(log().contains("resumed_after=Some"), "{}", log());
    drop(running);
}
