//! The REST API over real HTTP: entity CRUD with the plugin checking
//! configurations, bad payloads answered with clear errors, oplog, plugins,
//! rejected records and replay, replication stats; the entity lifecycle
//! (delete and re-create, reserved names, internal statuses, atomic
//! creates) on both store backends; one entity whose cache cannot be
//! written not stopping the others.

use std::path::Path;
use std::time::Duration;

use emcachers::config::Config;
use emcachers::node::Node;
use emcachers::sources::jsonl::JsonlFileSource;
use serde_json::{Value, json};

use emcachers_tests::services::PostgresServer;

use crate::end_to_end::{CHANGES, project};

/// A blocking HTTP client of one node's API, called from async tests.
pub(crate) struct Client {
    base: String,
    agent: ureq::Agent,
}

impl Client {
    /// A client of `node`'s API (non-2xx answers are answers, not errors).
    pub(crate) fn for_node(node: &Node) -> Client {
        Client {
            base: format!("http://{}", node.api_addr().expect("API bound")),
            agent: ureq::Agent::config_builder()
                .http_status_as_error(false)
                .build()
                .into(),
        }
    }

    /// `method path` with an optional JSON body: (status, JSON body or null).
    pub(crate) async fn call(
        &self,
        method: &'static str,
        path: &str,
        body: Option<String>,
    ) -> (u16, Value) {
        let (agent, url) = (self.agent.clone(), format!("{}{path}", self.base));
        tokio::task::spawn_blocking(move || {
            let response = match (method, body) {
                ("GET", _) => agent.get(&url).call(),
                ("DELETE", _) => agent.delete(&url).call(),
                ("POST", body) => agent
                    .post(&url)
                    .header("content-type", "application/json")
                    .send(body.unwrap_or_default()),
                ("PUT", body) => agent
                    .put(&url)
                    .header("content-type", "application/json")
                    .send(body.unwrap_or_default()),
                _ => unreachable!("method {method}"),
            };
            let mut response = response.expect("HTTP exchange");
            let status = response.status().as_u16();
            let text = response.body_mut().read_to_string().unwrap_or_default();
            (status, serde_json::from_str(&text).unwrap_or(Value::Null))
        })
        .await
        .expect("HTTP task")
    }
}

fn users_spec(name: &str) -> Value {
    let shape: Value = serde_json::from_str(include_str!("../../../examples/shape/users.json"))
        .expect("example shape");
    let mut shape = shape;
    shape["entity_name"] = json!(name);
    json!({"name": name, "source": "jsonl", "collection": "users", "plugin": "shape", "config": shape})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entities_plugins_rejected_and_stats_over_http() {
    let (dir, config) = project("");
    let mut node = Node::open(Config::load(Some(&config)).expect("config"))
        .await
        .expect("node");
    node.start().await.expect("start");
    let api = Client::for_node(&node);

    assert_eq!(api.call("GET", "/health", None).await.0, 200);

    // Create: the plugin checks the configuration first.
    let (status, created) = api
        .call(
            "POST",
            "/api/entities",
            Some(users_spec("members").to_string()),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["status"], "ready");
    let (status, body) = api
        .call(
            "POST",
            "/api/entities",
            Some(users_spec("members").to_string()),
        )
        .await;
    assert_eq!(status, 409, "{body}");
    let mut bad_shape = users_spec("broken");
    bad_shape["config"]["columns"][1]["type"] = json!("Decimal");
    let (status, body) = api
        .call("POST", "/api/entities", Some(bad_shape.to_string()))
        .await;
    assert_eq!(status, 422);
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("Decimal")),
        "{body}"
    );
    let (status, body) = api
        .call("POST", "/api/entities", Some("{not json".into()))
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].is_string());
    let (status, body) = api
        .call(
            "POST",
            "/api/entities",
            Some(json!({"name": "x"}).to_string()),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    let (status, body) = api
        .call(
            "POST",
            "/api/entities",
            Some(
                json!({"name": "../etc", "source": "s", "collection": "c", "plugin": "shape"})
                    .to_string(),
            ),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(api.call("GET", "/api/entities/broken", None).await.0, 404);

    let (status, list) = api.call("GET", "/api/entities", None).await;
    assert_eq!(status, 200);
    let names: Vec<&str> = list
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|e| e["name"].as_str())
        .collect();
    assert_eq!(names, vec!["members", "users"]);

    // Update through PUT; the path names the entity.
    let mut update = users_spec("members");
    update["collection"] = json!("people");
    let (status, updated) = api
        .call("PUT", "/api/entities/members", Some(update.to_string()))
        .await;
    assert_eq!(
        (status, updated["collection"].clone()),
        (200, json!("people"))
    );

    // Ingest, then look at the log, the rejected records, and replay them.
    let input = dir.path().join("changes.jsonl");
    std::fs::write(&input, CHANGES).expect("write");
    node.ingest(Box::new(JsonlFileSource::new("jsonl", &input, 100)))
        .await
        .expect("ingest");
    let (status, log) = api.call("GET", "/api/oplogs/users?limit=2", None).await;
    assert_eq!(status, 200);
    assert_eq!(log.as_array().map(Vec::len), Some(2));
    assert_eq!(log[0]["entity"], "users");
    assert_eq!(
        api.call("GET", "/api/oplogs/users?limit=abc", None).await.0,
        400
    );
    let (_, rejected) = api.call("GET", "/api/rejected", None).await;
    let doc_ids: Vec<&str> = rejected
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|r| r["doc_id"].as_str())
        .collect();
    assert_eq!(doc_ids, vec!["u2"]);
    let (status, replay) = api.call("POST", "/api/rejected/replay", None).await;
    assert_eq!(
        (status, replay["failed_again"].clone()),
        (200, json!(1)),
        "still a bad document"
    );

    let (_, plugins) = api.call("GET", "/api/plugins", None).await;
    let shape = plugins["plugins"]
        .as_array()
        .and_then(|all| all.iter().find(|p| p["name"] == "shape"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(shape["origin"]["kind"], "file", "{plugins}");
    assert!(shape["overrides_builtin"].is_string(), "{plugins}");
    assert!(
        shape["entities"]
            .as_array()
            .is_some_and(|e| e.contains(&json!("members")))
    );
    let schematic = plugins["plugins"]
        .as_array()
        .and_then(|all| all.iter().find(|p| p["name"] == "schematic"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(schematic["origin"]["kind"], "builtin", "{plugins}");

    // The node's own replicator applies the log; poll the stats until it has.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let stats = loop {
        let (_, stats) = api.call("GET", "/api/replication/stats", None).await;
        let rows = stats["entities"]
            .as_array()
            .and_then(|all| all.iter().find(|e| e["entity"] == "users"))
            .map(|users| users["cache"]["rows"].clone());
        if rows == Some(json!(1)) || tokio::time::Instant::now() > deadline {
            break stats;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(stats["backend"], "sqlite");
    assert!(stats["oplog_head"].as_i64().is_some_and(|h| h > 0));
    let users = stats["entities"]
        .as_array()
        .and_then(|all| all.iter().find(|e| e["entity"] == "users").cloned());
    assert_eq!(users.expect("users stats")["cache"]["rows"], 1, "{stats}");

    // Delete.
    assert_eq!(
        api.call("DELETE", "/api/entities/members", None).await.0,
        204
    );
    assert_eq!(api.call("GET", "/api/entities/members", None).await.0, 404);
    assert_eq!(
        api.call("DELETE", "/api/entities/members", None).await.0,
        404
    );
    node.shutdown(Duration::from_secs(5)).await;
}

/// A started node of `project(extra)` and a client of its API.
async fn start(extra: &str) -> (tempfile::TempDir, Node, Client) {
    let (dir, config) = project(extra);
    let mut node = Node::open(Config::load(Some(&config)).expect("config"))
        .await
        .expect("node");
    node.start().await.expect("start");
    let api = Client::for_node(&node);
    (dir, node, api)
}

/// Poll `probe` until it returns `Some`, at most 60 s.
async fn poll<T>(what: &str, mut probe: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The ids in `entity`'s cache database, when it exists.
fn cached_ids(dbs: &Path, entity: &str) -> Option<Vec<String>> {
    let path = dbs.join(entity).join("db.sqlite");
    if !path.exists() {
        return None;
    }
    let conn = rusqlite::Connection::open(&path).ok()?;
    let mut stmt = conn
        .prepare(&format!("SELECT id FROM \"{entity}\" ORDER BY id"))
        .ok()?;
    let ids = stmt.query_map([], |r| r.get::<_, String>(0)).ok()?;
    ids.collect::<Result<_, _>>().ok()
}

/// `rebuild-*` files in `entity`'s cache directory.
fn rebuild_files(dbs: &Path, entity: &str) -> Vec<String> {
    std::fs::read_dir(dbs.join(entity))
        .map(|files| {
            files
                .filter_map(|f| f.ok())
                .map(|f| f.file_name().to_string_lossy().into_owned())
                .filter(|n| n.contains("rebuild"))
                .collect()
        })
        .unwrap_or_default()
}

fn user(id: &str, email: &str) -> String {
    json!({"collection": "users", "op": "upsert", "id": id, "document": {"_id": id, "email": email}})
        .to_string()
}

async fn ingest(node: &Node, dir: &Path, source: &str, lines: &[String]) {
    let input = dir.join(format!("{source}.jsonl"));
    std::fs::write(&input, lines.join("\n") + "\n").expect("write changes");
    node.ingest(Box::new(JsonlFileSource::new(source, &input, 100)))
        .await
        .expect("ingest");
}

/// Names that collide with what the host or SQLite use are refused with a
/// 400 naming the rule; so are the statuses only the host sets. Nothing is
/// created by a refused request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reserved_names_and_internal_statuses_are_refused() {
    let (_dir, node, api) = start("").await;
    let long = "x".repeat(129);
    let refused: [(&str, &str); 9] = [
        ("sqlite_master", "'sqlite_' are reserved"),
        ("SQLITE_stat1", "'sqlite_' are reserved"),
        ("_emcachers_meta", "'_emcachers' are reserved"),
        ("../etc", "no path separators"),
        ("a/b", "no path separators"),
        ("..", "no path separators"),
        ("", "must not be empty"),
        (&long, "at most 128 characters"),
        ("-rf", "must not start with '-'"),
    ];
    for (name, rule) in refused {
        let mut spec = users_spec("placeholder");
        spec["name"] = json!(name);
        let (status, body) = api
            .call("POST", "/api/entities", Some(spec.to_string()))
            .await;
        assert_eq!(status, 400, "{name:?}: {body}");
        let error = body["error"].as_str().unwrap_or_default();
        assert!(
            error.contains("invalid entity name") && error.contains(rule),
            "{name:?}: {error}"
        );
    }
    // Names near the rules are fine.
    for name in ["replicator", "my_sqlite_rows", "emcachers_meta"] {
        let (status, body) = api
            .call("POST", "/api/entities", Some(users_spec(name).to_string()))
            .await;
        assert_eq!(status, 201, "{name}: {body}");
    }

    for internal in ["pending", "scanning", "deleting", "bogus"] {
        let mut spec = users_spec("members");
        spec["status"] = json!(internal);
        let (status, body) = api
            .call("POST", "/api/entities", Some(spec.to_string()))
            .await;
        assert_eq!(status, 400, "{internal}: {body}");
        let error = body["error"].as_str().unwrap_or_default();
        assert!(
            error.contains(internal) && error.contains("may ask for: ready"),
            "{internal}: {error}"
        );
        assert_eq!(
            api.call("GET", "/api/entities/members", None).await.0,
            404,
            "a refused status creates nothing"
        );
    }
    let mut spec = users_spec("members");
    spec["status"] = json!("ready");
    let (status, body) = api
        .call("POST", "/api/entities", Some(spec.to_string()))
        .await;
    assert_eq!(
        (status, body["status"].clone()),
        (201, json!("ready")),
        "{body}"
    );

    let (_, list) = api.call("GET", "/api/entities", None).await;
    let names: Vec<&str> = list
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|e| e["name"].as_str())
        .collect();
    assert_eq!(
        names,
        vec![
            "emcachers_meta",
            "members",
            "my_sqlite_rows",
            "replicator",
            "users"
        ]
    );
    node.shutdown(Duration::from_secs(5)).await;
}

/// Delete an entity, create it again under the same name: the create
/// answers 201, the cache database appears again and holds only the new
/// life's rows. A create whose store write fails leaves nothing behind (no
/// definition, no layout, no plugin assignment): `refuse_layout_of_doomed`
/// installs a trigger in the store that refuses the layout of `doomed`.
async fn delete_and_recreate(extra: &str, refuse_layout_of_doomed: impl FnOnce(&Path)) {
    let (dir, node, api) = start(extra).await;
    let dbs = dir.path().join("data/dbs");

    // First life, fed by source `first`.
    let mut spec = users_spec("members");
    spec["source"] = json!("first");
    let (status, body) = api
        .call("POST", "/api/entities", Some(spec.to_string()))
        .await;
    assert_eq!(status, 201, "{body}");
    ingest(&node, dir.path(), "first", &[user("u1", "ada@example.com")]).await;
    let ids = poll("the first life's cache", async || {
        cached_ids(&dbs, "members").filter(|ids| !ids.is_empty())
    })
    .await;
    assert_eq!(ids, vec!["u1"]);

    // Delete: the directory, the rows and the layout go.
    let (status, body) = api.call("DELETE", "/api/entities/members", None).await;
    assert_eq!(status, 204, "{body}");
    assert_eq!(api.call("GET", "/api/entities/members", None).await.0, 404);
    assert!(!dbs.join("members").exists());
    assert!(
        node.store
            .meta_get("layout:members")
            .await
            .unwrap()
            .is_none(),
        "the layout is removed, not left as null"
    );

    // Second life, fed by source `second`.
    let mut spec = users_spec("members");
    spec["source"] = json!("second");
    let (status, body) = api
        .call("POST", "/api/entities", Some(spec.to_string()))
        .await;
    assert_eq!(status, 201, "re-create: {body}");
    assert_eq!(body["source"], "second");
    let (status, body) = api.call("GET", "/api/entities/members", None).await;
    assert_eq!((status, body["source"].clone()), (200, json!("second")));
    ingest(&node, dir.path(), "second", &[user("u9", "cy@example.com")]).await;
    let ids = poll("the second life's cache", async || {
        cached_ids(&dbs, "members").filter(|ids| !ids.is_empty())
    })
    .await;
    assert_eq!(ids, vec!["u9"], "only the new life's rows");

    // A create whose layout cannot be stored: the definition goes with it.
    refuse_layout_of_doomed(dir.path());
    let (status, body) = api
        .call(
            "POST",
            "/api/entities",
            Some(users_spec("doomed").to_string()),
        )
        .await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(
        api.call("GET", "/api/entities/doomed", None).await.0,
        404,
        "no half-created entity"
    );
    let (_, plugins) = api.call("GET", "/api/plugins", None).await;
    let assigned = plugins["plugins"]
        .as_array()
        .and_then(|all| all.iter().find(|p| p["name"] == "shape"))
        .map(|shape| shape["entities"].clone())
        .unwrap_or_default();
    assert!(
        assigned
            .as_array()
            .is_some_and(|e| e.contains(&json!("members")) && !e.contains(&json!("doomed"))),
        "the plugin assignment is undone: {assigned}"
    );
    assert!(
        node.store
            .meta_get("layout:doomed")
            .await
            .unwrap()
            .is_none()
    );
    node.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_and_recreate_on_sqlite() {
    delete_and_recreate("", |dir| {
        let conn =
            rusqlite::Connection::open(dir.join("data/oplog.sqlite")).expect("open the store");
        conn.execute_batch(
            "CREATE TRIGGER refuse_doomed BEFORE INSERT ON metadata WHEN NEW.key = 'layout:doomed'
             BEGIN SELECT RAISE(ABORT, 'refused by the test'); END;",
        )
        .expect("trigger");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_and_recreate_on_postgres() {
    let server = PostgresServer::shared();
    let url = server.create_database(&format!("lifecycle_{}", std::process::id()));
    let extra = format!("[oplog]\npostgres_url = {url:?}\n");
    delete_and_recreate(&extra, |_| {
        server.psql(
            &url,
            "CREATE FUNCTION refuse_doomed() RETURNS trigger AS $$ BEGIN
               RAISE EXCEPTION 'refused by the test'; END; $$ LANGUAGE plpgsql;
             CREATE TRIGGER refuse_doomed BEFORE INSERT ON metadata FOR EACH ROW
               WHEN (NEW.key = 'layout:doomed') EXECUTE FUNCTION refuse_doomed();",
        );
    })
    .await;
}

/// Entity `users` has a unique index on `email`, `members` has none; two
/// users share an email. `users`' cache cannot be built, `members` goes on
/// replicating (also rows logged after `users`' failing ones, which a
/// replicator stuck on `users` with batches of 2 would never read), the
/// replicator's offset stays before `users`' first row, the failure is
/// reported, no rebuild file is left behind, and once the index is dropped
/// `users` catches up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_the_sqlite_cache_cannot_take_are_dead_lettered_and_replayable() {
    let (dir, node, api) = start("[cache]\nbatch_size = 2\n").await;
    let dbs = dir.path().join("data/dbs");
    let lines = vec![
        user("u1", "same@example.com"),
        user("u2", "same@example.com"),
        user("u3", "other@example.com"),
    ];
    ingest(&node, dir.path(), "jsonl", &lines).await;

    // After a few failed attempts the row that breaks the unique index is
    // narrowed down and kept; the rest of the entity lands.
    let ids = poll("users cached without the conflicting row", async || {
        cached_ids(&dbs, "users").filter(|ids| ids.len() == 2)
    })
    .await;
    assert_eq!(ids, vec!["u1", "u3"]);
    let stats = poll("no entity failing", async || {
        let (_, stats) = api.call("GET", "/api/replication/stats", None).await;
        (stats["replicator"]["failing"] == json!([])
            && stats["replicator"]["offset"] == stats["oplog_head"])
            .then_some(stats)
    })
    .await;
    assert!(
        stats["replicator"]["failures_total"].as_u64() >= Some(1),
        "{stats}"
    );
    let (_, rejected) = api.call("GET", "/api/rejected", None).await;
    let dead: Vec<&Value> = rejected
        .as_array()
        .map(|all| {
            all.iter()
                .filter(|r| r["source"] == "cache-writer:sqlite")
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(dead.len(), 1, "{rejected}");
    assert_eq!(dead[0]["doc_id"], "u2");
    assert!(
        dead[0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("UNIQUE")),
        "{rejected}"
    );

    // Fix the cause (drop the unique index), replay: the row lands.
    let mut users = users_spec("users");
    users["config"]["indexes"] = json!([]);
    let (status, body) = api
        .call("PUT", "/api/entities/users", Some(users.to_string()))
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = api.call("POST", "/api/rejected/replay", None).await;
    assert_eq!(status, 200, "{body}");
    let ids = poll("the replayed row cached", async || {
        cached_ids(&dbs, "users").filter(|ids| ids.len() == 3)
    })
    .await;
    assert_eq!(ids, vec!["u1", "u2", "u3"]);
    let (_, rejected) = api.call("GET", "/api/rejected", None).await;
    assert!(
        !rejected.to_string().contains("cache-writer:sqlite"),
        "{rejected}"
    );
    node.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entity_that_cannot_be_cached_does_not_stop_the_others() {
    // Retried, never dead-lettered here: the isolation alone is under test.
    let (dir, node, api) = start("[cache]\nbatch_size = 2\ndead_letter_after = 1000000\n").await;
    let dbs = dir.path().join("data/dbs");
    let mut members = users_spec("members");
    members["config"]["indexes"] = json!([]);
    let (status, body) = api
        .call("POST", "/api/entities", Some(members.to_string()))
        .await;
    assert_eq!(status, 201, "{body}");
    let mut lines = vec![
        user("u1", "same@example.com"),
        user("u2", "same@example.com"),
        user("u3", "other@example.com"),
    ];
    ingest(&node, dir.path(), "jsonl", &lines).await;

    // Failures are retried with backoff; each failed rebuild removes its file.
    let stats = poll("users failing twice without leftovers", async || {
        let (_, stats) = api.call("GET", "/api/replication/stats", None).await;
        let failing = stats["replicator"]["failing"].as_array()?.first()?.clone();
        (failing["entity"] == "users"
            && failing["attempts"].as_u64().is_some_and(|n| n >= 2)
            && rebuild_files(&dbs, "users").is_empty())
        .then_some(stats)
    })
    .await;
    let failing = &stats["replicator"]["failing"][0];
    assert!(
        failing["error"]
            .as_str()
            .is_some_and(|e| e.contains("UNIQUE")),
        "{failing}"
    );
    assert!(stats["replicator"]["failures_total"].as_u64() >= Some(2));
    // The layout may have been pushed before the rows arrived (an empty
    // database, then u1 applied) or not (built from u1..u3 at once, which
    // fails): either way u2, which breaks the unique email, is not cached.
    let users_cached = cached_ids(&dbs, "users").unwrap_or_default();
    assert!(
        users_cached.iter().all(|id| id == "u1"),
        "users cached rows past its failing one: {users_cached:?}"
    );
    let (_, users_log) = api.call("GET", "/api/oplogs/users?limit=10", None).await;
    let failing_id = users_log
        .as_array()
        .and_then(|log| log.iter().find(|e| e["doc_id"] == "u2"))
        .and_then(|e| e["id"].as_i64())
        .expect("users' entry of u2");
    let offset = stats["replicator"]["offset"].as_i64().expect("offset");
    assert!(
        offset < failing_id,
        "the offset ({offset}) must not pass users' unapplied rows (u2 at {failing_id})"
    );
    assert_eq!(failing["resume_after"].as_i64(), Some(offset));

    // Rows logged after users' failing ones still reach members.
    lines.push(user("u4", "fourth@example.com"));
    ingest(&node, dir.path(), "jsonl", &lines).await;
    let ids = poll("members replicated", async || {
        cached_ids(&dbs, "members").filter(|ids| ids.len() == 4)
    })
    .await;
    assert_eq!(ids, vec!["u1", "u2", "u3", "u4"]);

    // Drop the unique index: a new layout version, and users catches up.
    let mut users = users_spec("users");
    users["config"]["indexes"] = json!([]);
    let (status, body) = api
        .call("PUT", "/api/entities/users", Some(users.to_string()))
        .await;
    assert_eq!(status, 200, "{body}");
    let ids = poll("users caught up", async || {
        cached_ids(&dbs, "users").filter(|ids| ids.len() == 4)
    })
    .await;
    assert_eq!(ids, vec!["u1", "u2", "u3", "u4"]);
    let stats = poll("no entity failing", async || {
        let (_, stats) = api.call("GET", "/api/replication/stats", None).await;
        (stats["replicator"]["failing"] == json!([])
            && stats["replicator"]["offset"] == stats["oplog_head"])
            .then_some(stats)
    })
    .await;
    assert!(stats["replicator"]["recoveries_total"].as_u64() >= Some(1));
    assert!(rebuild_files(&dbs, "users").is_empty());
    node.shutdown(Duration::from_secs(5)).await;
}

/// Seed 004's REST surface: the oplog of several entities paged by id,
/// the detailed health of every component, the system figures flagged
/// against their thresholds, and the seed's entity body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_004_oplog_batch_detailed_health_system_stats_and_entity_body() {
    let (dir, node, api) = start("").await;
    for name in ["a1", "a2"] {
        let (status, body) = api
            .call("POST", "/api/entities", Some(users_spec(name).to_string()))
            .await;
        assert_eq!(status, 201, "{body}");
    }
    let lines = [
        user("u1", "ada@example.com"),
        user("u2", "bob@example.com"),
        user("u3", "cy@example.com"),
    ];
    ingest(&node, dir.path(), "jsonl", &lines).await;

    // Several entities, in id order, paged.
    let ask =
        |after: i64| json!({"entities": ["a1", "a2"], "after": after, "limit": 4}).to_string();
    let (status, first) = api.call("POST", "/api/oplogs/batch", Some(ask(0))).await;
    assert_eq!(status, 200, "{first}");
    let entries = first["entries"].as_array().expect("entries");
    assert_eq!(entries.len(), 4, "{first}");
    let ids: Vec<i64> = entries.iter().filter_map(|e| e["id"].as_i64()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "id order: {ids:?}");
    assert!(
        entries
            .iter()
            .all(|e| e["entity"] == "a1" || e["entity"] == "a2")
    );
    let next = first["next_after"].as_i64().expect("a next page");
    assert_eq!(next, ids[3]);
    let (_, second) = api.call("POST", "/api/oplogs/batch", Some(ask(next))).await;
    assert_eq!(
        second["entries"].as_array().map(Vec::len),
        Some(2),
        "{second}"
    );
    assert!(second["next_after"].is_null());
    let (status, _) = api
        .call(
            "POST",
            "/api/oplogs/batch",
            Some(json!({"entities": ["a1", "nope"]}).to_string()),
        )
        .await;
    assert_eq!(status, 404);
    let (status, body) = api
        .call(
            "POST",
            "/api/oplogs/batch",
            Some(json!({"entities": []}).to_string()),
        )
        .await;
    assert_eq!(status, 400, "{body}");

    // Every component.
    let (status, health) = api.call("GET", "/health/detailed", None).await;
    assert_eq!(status, 200, "{health}");
    assert_eq!(health["oplog"]["reachable"], true, "{health}");
    assert!(health["oplog"]["head"].as_i64().is_some_and(|h| h >= 6));
    let jsonl = health["sources"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == "jsonl"))
        .unwrap_or_else(|| panic!("the jsonl source: {health}"));
    assert!(jsonl["position"].is_string(), "{health}");
    assert!(jsonl["position_age_ms"].as_i64().is_some_and(|a| a >= 0));
    assert!(health["replicator"]["lag"].as_i64().is_some(), "{health}");
    assert!(
        health["plugins"]
            .as_array()
            .is_some_and(|p| p.iter().any(|p| p["name"] == "shape"))
    );
    assert!(health["tasks"].is_object(), "{health}");

    // System figures, flagged against the seed's thresholds.
    let (status, stats) = api.call("GET", "/api/system/stats", None).await;
    assert_eq!(status, 200, "{stats}");
    assert!(
        stats["ingested"]["changes"]
            .as_u64()
            .is_some_and(|c| c >= 3),
        "{stats}"
    );
    assert_eq!(stats["cpu_percent"]["threshold"], 80.0);
    assert_eq!(stats["memory_percent"]["threshold"], 85.0);
    assert_eq!(stats["error_rate_percent"]["threshold"], 5.0);
    assert_eq!(stats["error_rate_percent"]["value"], 0.0);
    assert_eq!(stats["pending_oplog"]["threshold"], 10_000);
    let memory = stats["memory_percent"]["value"]
        .as_f64()
        .expect("Linux /proc");
    assert!((0.0..=100.0).contains(&memory), "{stats}");
    assert!(
        stats["process_memory_bytes"]
            .as_u64()
            .is_some_and(|b| b > 0)
    );

    // The seed's entity body: a shape entity of the source `mongo`.
    let seed = json!({
        "name": "people",
        "shape": {
            "entity_name": "User",
            "source_name": "users",
            "columns": [
                {"name": "id", "type": "Text", "path": "_id"},
                {"name": "email", "type": "Text", "path": "email"}
            ]
        }
    });
    let (status, created) = api
        .call("POST", "/api/entities", Some(seed.to_string()))
        .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(
        (
            &created["plugin"],
            &created["source"],
            &created["collection"]
        ),
        (&json!("shape"), &json!("mongo"), &json!("users"))
    );
    let (status, body) = api
        .call(
            "POST",
            "/api/entities",
            Some(json!({"name": "broken", "shape": {"source_name": "x"}}).to_string()),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("shape.columns"))
    );
    node.shutdown(Duration::from_secs(5)).await;
}
