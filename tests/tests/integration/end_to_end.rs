//! End to end: JSON lines in → shape plugin → oplog → rows queryable in the
//! entity's SQLite file, through the real `emcachers` binary.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use emcachers::config::Config;
use emcachers::node::Node;
use emcachers_tests::{emcachers_bin, plugins, wait_until, workspace_root};
use rusqlite::{Connection, OptionalExtension};
use serde_json::Value;

/// A data directory with the shape plugin and a config for entity `users`.
pub fn project(extra: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let plugin_dir = dir.path().join("plugins");
    std::fs::create_dir_all(&plugin_dir).expect("mkdir");
    std::fs::copy(&plugins().shape, plugin_dir.join("shape.wasm")).expect("copy plugin");
    let shape = workspace_root().join("examples/shape/users.json");
    let config = dir.path().join("emcachers.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {data:?}\n[api]\nlisten = \"127.0.0.1:0\"\n[plugins]\ndir = {plugins:?}\nwatch = false\n{extra}\n\
             [[entities]]\nname = \"users\"\nplugin = \"shape\"\ncollection = \"users\"\nconfig_file = {shape:?}\n",
            data = dir.path().join("data").display().to_string(),
            plugins = plugin_dir.display().to_string(),
            shape = shape.display().to_string(),
        ),
    )
    .expect("write config");
    (dir, config)
}

pub const CHANGES: &str = r#"{"collection": "users", "op": "upsert", "id": "u1", "document": {"_id": "u1", "email": "ada@example.com", "profile": {"name": "Ada", "address": {"city": "London"}}, "stats": {"logins": 1}}}
{"collection": "users", "op": "upsert", "id": "u2", "document": {"_id": "u2", "email": "bob@example.com", "stats": {"logins": "lots"}}}
{"collection": "users", "op": "upsert", "id": "u3", "document": {"_id": "u3", "email": "cy@example.com", "active": "true", "tags": ["x"]}}
{"collection": "users", "op": "partial", "id": "u1", "document": {"profile.address.city": "Bergen"}}
{"collection": "users", "op": "delete", "id": "u3"}
{"collection": "orders", "op": "upsert", "id": "o1", "document": {"total": 3}}
"#;

/// (id, email, city, logins) of every cached user.
type UserRow = (String, Option<String>, Option<String>, Option<i64>);

fn rows(db: &Path) -> Vec<UserRow> {
    let conn = Connection::open(db).expect("open cache");
    let mut stmt = conn
        .prepare("SELECT id, email, city, logins FROM users ORDER BY id")
        .expect("prepare");
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows")
}

#[test]
fn ingest_replicates_into_the_entity_sqlite_file() {
    let (dir, config) = project("");
    let input = dir.path().join("changes.jsonl");
    std::fs::write(&input, CHANGES).expect("write changes");
    let out = Command::new(emcachers_bin())
        .args([
            "ingest",
            "--config",
            config.to_str().expect("utf-8"),
            input.to_str().expect("utf-8"),
        ])
        .output()
        .expect("run ingest");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a rejected change makes ingest exit 1\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reports: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON report"))
        .collect();
    assert_eq!(reports[0]["changes"], 6);
    assert_eq!(reports[0]["rejected"], 1);
    assert_eq!(reports[0]["unrouted"], 1, "orders feeds no entity");

    let db = dir.path().join("data/dbs/users/db.sqlite");
    assert_eq!(
        rows(&db),
        vec![(
            "u1".into(),
            Some("ada@example.com".into()),
            Some("Bergen".into()),
            Some(1)
        )],
        "u1 merged by the host-supplied current row, u2 rejected, u3 deleted"
    );

    let listed = Command::new(emcachers_bin())
        .args([
            "rejected",
            "list",
            "--config",
            config.to_str().expect("utf-8"),
        ])
        .output()
        .expect("run rejected list");
    assert!(listed.status.success());
    let records: Vec<Value> = String::from_utf8_lossy(&listed.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON"))
        .collect();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["doc_id"], "u2");
    assert!(
        records[0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("logins") && e.contains("lots"))
    );
    assert!(records[0]["plugin"].as_str().is_some_and(|p| p == "shape"));
}

#[test]
fn run_with_a_jsonl_source_replicates_and_resumes() {
    let (dir, config) = project("");
    let input = dir.path().join("changes.jsonl");
    std::fs::write(&input, CHANGES).expect("write changes");
    let mut text = std::fs::read_to_string(&config).expect("read config");
    text.push_str(&format!(
        "\n[[sources]]\nkind = \"jsonl\"\nname = \"demo\"\npath = {:?}\n",
        input.display().to_string()
    ));
    std::fs::write(&config, text).expect("write config");

    let db = dir.path().join("data/dbs/users/db.sqlite");
    let start = || {
        Command::new(emcachers_bin())
            .args(["run", "--config", config.to_str().expect("utf-8")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start emcachers run")
    };
    let city = |db: &Path| -> Option<String> {
        let conn = Connection::open(db).ok()?;
        conn.query_row("SELECT city FROM users WHERE id = 'u1'", [], |r| r.get(0))
            .optional()
            .ok()?
            .flatten()
    };
    let mut child = start();
    let replicated = wait_until(Duration::from_secs(60), || {
        city(&db).as_deref() == Some("Bergen")
    });
    child.kill().expect("stop");
    let _ = child.wait();
    assert!(replicated, "the source's changes reach the entity database");

    // A restart resumes after the committed position: nothing is ingested twice.
    let oplog_entries = |dir: &Path| -> i64 {
        let conn = Connection::open(dir.join("data/oplog.sqlite")).expect("oplog");
        conn.query_row("SELECT COUNT(*) FROM oplog", [], |r| r.get(0))
            .expect("count")
    };
    let before = oplog_entries(dir.path());
    let mut child = start();
    let position = |dir: &Path| -> Option<String> {
        let conn = Connection::open(dir.join("data/oplog.sqlite")).ok()?;
        conn.query_row(
            "SELECT position FROM source_positions WHERE source = 'demo'",
            [],
            |r| r.get(0),
        )
        .optional()
        .ok()?
    };
    // Wait for the restarted node to be up (its replicator opens its metadata).
    let up = wait_until(Duration::from_secs(30), || {
        dir.path().join("data/dbs/replicator.sqlite").exists()
    });
    child.kill().expect("stop");
    let _ = child.wait();
    assert!(up);
    assert_eq!(position(dir.path()).as_deref(), Some("6"));
    assert_eq!(
        oplog_entries(dir.path()),
        before,
        "no change ingested twice"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_an_entity_deletes_its_cache_directory() {
    let (dir, config) = project("");
    let input = dir.path().join("changes.jsonl");
    std::fs::write(&input, CHANGES).expect("write changes");
    let node = Node::open(Config::load(Some(&config)).expect("config"))
        .await
        .expect("node");
    let source = emcachers::sources::jsonl::JsonlFileSource::new("jsonl", &input, 100);
    node.ingest(Box::new(source)).await.expect("ingest");
    node.replicate_once().await.expect("replicate");
    let entity_dir = node.dbs.entity_dir("users");
    assert!(entity_dir.join("db.sqlite").exists());
    node.entities.delete("users").await.expect("delete");
    assert!(!entity_dir.exists(), "the cache directory is gone");
    assert!(node.store.entity("users").await.expect("store").is_none());
    assert!(
        node.store.read_log(0, 100).await.expect("log").is_empty(),
        "its log entries are gone"
    );
}
