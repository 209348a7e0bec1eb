//! Backfill and recreate: an entity created on a running source is loaded
//! by that source alone (the stream keeps serving the other entities of the
//! same collections, which are not loaded again), and `POST
//! /api/replication/recreate/{entity}` snapshots one entity again, evicting
//! what its source no longer holds. On MongoDB (SecantusDB) and on a
//! JSON-lines file (its committed lines replayed).

use std::path::Path;
use std::time::Duration;

use emcachers::node::Node;
use emcachers::oplog::{AppendBatch, NewRow, Op};
use emcachers_tests::services::{MongoServer, PostgresServer};
use mongodb::bson::{Document, doc};
use serde_json::{Value, json};

use crate::api::Client;
use crate::mongo::{
    DB, cache_rows, client, collection_name_qty, entity, items_entity, items_shape, mongo_source,
    name_qty, poll, project, seed, start_node, wait_ready,
};

/// An HTTP call on the node's API: (status, JSON body).
async fn call(node: &Node, method: &'static str, path: &str, body: Option<Value>) -> (u16, Value) {
    Client::for_node(node)
        .call(method, path, body.map(|b| b.to_string()))
        .await
}

async fn log_count(node: &Node, entity: &str) -> usize {
    node.store
        .read_entity_log(entity, 0, 1_000_000)
        .await
        .expect("entity log")
        .len()
}

/// Wait until `entity` is ready and its cache equals `collection`.
async fn converges(node: &Node, data: &Path, db: &mongodb::Database, name: &str, collection: &str) {
    wait_ready(node, name).await;
    let expected = collection_name_qty(&db.collection::<Document>(collection)).await;
    let (same, rows) = poll(
        || async { name_qty(&cache_rows(data, name)) },
        |rows| rows.as_ref() == Some(&expected),
    )
    .await;
    assert!(
        same,
        "{name}: cache {} rows, collection {collection} {}",
        rows.as_ref().map_or(0, |r| r.len()),
        expected.len()
    );
}

fn items_spec(name: &str, collection: &str) -> Value {
    json!({"name": name, "source": "mongo", "collection": collection, "plugin": "shape",
           "config": items_shape()})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_entity_on_a_running_mongo_source_is_backfilled_alone_and_recreate_evicts() {
    mongo_backfill_and_recreate("").await;
}

/// The same on the PostgreSQL oplog.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongo_backfill_and_recreate_on_the_postgres_oplog() {
    let server = PostgresServer::shared();
    let url = server.create_database(&format!("backfill_{}", std::process::id()));
    mongo_backfill_and_recreate(&format!("[oplog]\npostgres_url = {url:?}\n")).await;
}

async fn mongo_backfill_and_recreate(oplog: &str) {
    let mongo = MongoServer::start();
    let client = client(&mongo).await;
    let db = client.database(DB);
    seed(&db, 600).await;
    let (_dir, config) = project(&format!(
        "{oplog}{}{}",
        mongo_source("mongo", &mongo.uri(), "default", "scan_chunk = 50"),
        items_entity("items", "mongo"),
    ));
    let node = start_node(&config).await;
    let data = node.config.data_dir.clone();
    converges(&node, &data, &db, "items", "items").await;
    let items_log = log_count(&node, "items").await;

    // Created while the stream runs: `items2` on the collection `items`
    // already feeds, `people` on one nothing fed yet. Both start pending.
    for (name, collection) in [("items2", "items"), ("people", "people")] {
        let (status, body) = call(
            &node,
            "POST",
            "/api/entities",
            Some(items_spec(name, collection)),
        )
        .await;
        assert_eq!(status, 201, "{body}");
        assert_eq!(body["status"], "pending", "{body}");
    }
    // Writes while they load: the stream serves `items` at once and
    // stages the rows of the loading ones.
    let items = db.collection::<Document>("items");
    items
        .update_one(doc! {"_id": 7}, doc! {"$set": {"name": "during"}})
        .await
        .unwrap();
    items
        .insert_one(doc! {"_id": 9000_i32, "name": "new", "qty": 3_i32})
        .await
        .unwrap();
    converges(&node, &data, &db, "items2", "items").await;
    converges(&node, &data, &db, "people", "people").await;
    converges(&node, &data, &db, "items", "items").await;
    // `items` was not loaded again: only the two stream changes were added.
    assert_eq!(log_count(&node, "items").await, items_log + 2);

    // A row the source does not hold (written behind its back): a
    // recreate snapshots `items2` again and evicts it.
    node.store
        .append(AppendBatch {
            rows: vec![NewRow {
                entity: "items2".into(),
                doc_id: "ghost".into(),
                op: Op::Upsert,
                data: Some(json!({"id": "ghost", "name": "boo"}).to_string()),
                plugin: "shape".into(),
                plugin_version: String::new(),
            }],
            ..AppendBatch::default()
        })
        .await
        .unwrap();
    let (seen, _) = poll(
        || async { name_qty(&cache_rows(&data, "items2")) },
        |rows| rows.as_ref().is_some_and(|r| r.contains_key("ghost")),
    )
    .await;
    assert!(seen, "the ghost row never reached the cache");
    let (status, body) = call(&node, "POST", "/api/replication/recreate/items2", None).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["status"], "pending", "{body}");
    converges(&node, &data, &db, "items2", "items").await;

    // The source's state and load progress on the API.
    let (status, stats) = call(&node, "GET", "/api/replication/stats", None).await;
    assert_eq!(status, 200, "{stats}");
    let mongo = &stats["sources"]["mongo"];
    assert_eq!(mongo["kind"], "mongo", "{stats}");
    assert_eq!(mongo["connected"], true, "{stats}");
    assert_eq!(mongo["scanning"], false, "{stats}");
    // The initial scan, then one backfill of both new entities, then the
    // recreate.
    assert_eq!(mongo["backfills"], 2, "{stats}");
    assert_eq!(mongo["completed"], 3, "{stats}");
    assert!(mongo["scanned"].as_u64().is_some_and(|n| n > 0), "{stats}");

    // Unknown entities and entities of sources that cannot load: clear errors.
    let (status, body) = call(&node, "POST", "/api/replication/recreate/nope", None).await;
    assert_eq!(status, 404, "{body}");
    node.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_entity_on_a_jsonl_source_is_backfilled_from_the_committed_lines() {
    let lines: Vec<String> = (0..120)
        .map(|i| {
            json!({"collection": "items", "op": "upsert", "id": format!("i{i:03}"),
                   "document": {"_id": format!("i{i:03}"), "name": format!("n{i}"), "qty": i}})
            .to_string()
        })
        .chain([json!({"collection": "items", "op": "delete", "id": "i005"}).to_string()])
        .collect();
    let (dir, config) = project(&format!(
        "[[sources]]\nkind = \"jsonl\"\nname = \"file\"\npath = \"changes.jsonl\"\n{}",
        entity("items", "file", "items")
    ));
    std::fs::write(dir.path().join("changes.jsonl"), lines.join("\n") + "\n").unwrap();
    // The source path is relative to the working directory: make it absolute.
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "path = \"changes.jsonl\"",
        &format!("path = {:?}", dir.path().join("changes.jsonl")),
    );
    std::fs::write(&config, text).unwrap();
    let node = start_node(&config).await;
    let data = node.config.data_dir.clone();
    let expected: Vec<String> = (0..120)
        .filter(|i| *i != 5)
        .map(|i| format!("i{i:03}"))
        .collect();
    let ids = |name: &'static str| {
        let data = data.clone();
        move || {
            let data = data.clone();
            async move { cache_rows(&data, name).map(|rows| rows.keys().cloned().collect::<Vec<_>>()) }
        }
    };
    // A configured entity of a source that loads starts pending; the
    // first read of the file is its load.
    let (done, got) = poll(ids("items"), |got| got.as_ref() == Some(&expected)).await;
    assert!(done, "{got:?}");
    wait_ready(&node, "items").await;
    let items_log = log_count(&node, "items").await;

    let mut spec = items_spec("copy", "items");
    spec["source"] = json!("file");
    let (status, body) = call(&node, "POST", "/api/entities", Some(spec)).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["status"], "pending", "{body}");
    let (done, got) = poll(ids("copy"), |got| got.as_ref() == Some(&expected)).await;
    assert!(done, "the backfill of copy: {got:?}");
    wait_ready(&node, "copy").await;
    assert_eq!(
        log_count(&node, "items").await,
        items_log,
        "items was not read again"
    );

    // Recreate replays the file for `copy` alone.
    let (status, body) = call(&node, "POST", "/api/replication/recreate/copy", None).await;
    assert_eq!(status, 202, "{body}");
    wait_ready(&node, "copy").await;
    let (done, got) = poll(ids("copy"), |got| got.as_ref() == Some(&expected)).await;
    assert!(done, "{got:?}");
    assert_eq!(log_count(&node, "items").await, items_log);
    node.shutdown(Duration::from_secs(5)).await;
}
