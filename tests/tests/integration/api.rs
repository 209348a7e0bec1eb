//! The REST API over real HTTP: entity CRUD with the plugin checking
//! configurations, bad payloads answered with clear errors, oplog, plugins,
//! rejected records and replay, replication stats.

use std::time::Duration;

use emcachers::config::Config;
use emcachers::node::Node;
use emcachers::sources::jsonl::JsonlFileSource;
use serde_json::{Value, json};

use crate::end_to_end::{CHANGES, project};

struct Client {
    base: String,
    agent: ureq::Agent,
}

impl Client {
    async fn call(&self, method: &'static str, path: &str, body: Option<String>) -> (u16, Value) {
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
    let addr = node.api_addr().expect("API bound");
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let api = Client {
        base: format!("http://{addr}"),
        agent,
    };

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
    assert_eq!(status, 422, "{body}");
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
    assert_eq!(plugins["plugins"][0]["name"], "shape");
    assert!(
        plugins["plugins"][0]["entities"]
            .as_array()
            .is_some_and(|e| e.contains(&json!("members")))
    );

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
