//! The core made right (issue 8), through the real binary where it matters:
//! built-in plugins, dead-lettered rows, offsets tied to their oplog.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use emcachers::cache::Offset;
use emcachers::plugin::{BUILTINS, PluginOrigin, content_hash};
use emcachers_tests::services::RedisServer;
use emcachers_tests::{emcachers_bin, plugins, wait_until};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);

fn sha256(path: &Path) -> String {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    content_hash(&bytes)
}

/// The plugins inside the binary are exactly what the plugin sources build
/// to now (`tests/build-plugins.sh` and `plugins()` build them afresh).
#[test]
fn embedded_plugins_equal_a_fresh_build() {
    let fresh = [
        ("emcachers-plugin-shape", &plugins().shape),
        ("emcachers-plugin-schematic", &plugins().schematic),
    ];
    assert_eq!(BUILTINS.len(), fresh.len());
    for (source, file) in fresh {
        let builtin = BUILTINS
            .iter()
            .find(|b| b.source == source)
            .unwrap_or_else(|| panic!("{source} is not built in"));
        assert_eq!(
            builtin.hash(),
            sha256(file),
            "the embedded {source} differs from a fresh build of its source: rebuild emcachers"
        );
    }
}

/// A file plugin with a built-in's name overrides it; removing the file
/// brings the built-in back.
#[test]
fn a_file_overrides_a_builtin_until_it_is_removed() {
    let registry = crate::registry(Duration::from_secs(5), 64);
    assert!(registry.load_builtins(BUILTINS).is_empty());
    let origin = |name: &str| registry.plugin(name).map(|p| p.origin().clone());
    assert!(matches!(
        origin("schematic"),
        Some(PluginOrigin::Builtin { .. })
    ));
    assert!(matches!(
        origin("shape"),
        Some(PluginOrigin::Builtin { .. })
    ));

    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("schematic.wasm");
    std::fs::copy(&plugins().schematic, &file).expect("copy");
    registry.load_file(&file).expect("load the file");
    assert_eq!(
        origin("schematic"),
        Some(PluginOrigin::File { path: file.clone() })
    );
    let listed = registry.plugins();
    let schematic = listed
        .iter()
        .find(|p| p.name == "schematic")
        .expect("listed");
    assert!(schematic.overrides_builtin.is_some(), "{schematic:?}");
    assert_eq!(listed.iter().filter(|p| p.name == "schematic").count(), 1);

    registry.unload_file(&file);
    assert!(matches!(
        origin("schematic"),
        Some(PluginOrigin::Builtin { .. })
    ));
}

/// `emcachers plugin list` shows where each serving version came from.
#[test]
fn plugin_list_shows_builtins_and_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let plugin_dir = dir.path().join("plugins");
    std::fs::create_dir_all(&plugin_dir).expect("plugin dir");
    std::fs::copy(&plugins().shape, plugin_dir.join("shape.wasm")).expect("copy");
    std::fs::copy(&plugins().hostile, plugin_dir.join("hostile.wasm")).expect("copy");
    let out = Command::new(emcachers_bin())
        .args(["plugin", "list", "--json", "--dir"])
        .arg(&plugin_dir)
        .env("EMCACHERS_DATA_DIR", dir.path().join("data"))
        .env_remove("RUST_LOG")
        .output()
        .expect("run emcachers plugin list");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listing: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let plugins = listing["plugins"].as_array().expect("plugins");
    let find = |name: &str| {
        plugins
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("{name} not listed: {listing}"))
    };
    assert_eq!(find("schematic")["origin"]["kind"], "builtin");
    assert_eq!(find("shape")["origin"]["kind"], "file");
    assert!(find("shape")["overrides_builtin"].is_string(), "{listing}");
    assert_eq!(find("hostile")["origin"]["kind"], "file");
    assert!(find("hostile")["overrides_builtin"].is_null());
    assert_eq!(plugins.len(), 3, "{listing}");
}

/// Kills the child on drop.
struct Running {
    child: Child,
    log: PathBuf,
}

impl Running {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let exited = wait_until(WAIT, || matches!(self.child.try_wait(), Ok(Some(_))));
        assert!(exited, "emcachers did not stop:\n{}", self.log());
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into()
}

fn call(method: &str, url: &str, body: Option<Value>) -> (u16, Value) {
    let agent = agent();
    let result = match (method, body) {
        ("GET", _) => agent.get(url).call(),
        ("POST", Some(body)) => agent.post(url).send_json(body),
        ("POST", None) => agent.post(url).send_empty(),
        ("PUT", Some(body)) => agent.put(url).send_json(body),
        _ => unreachable!("unused method"),
    };
    match result {
        Ok(mut response) => {
            let status = response.status().as_u16();
            let text = response.body_mut().read_to_string().unwrap_or_default();
            (status, serde_json::from_str(&text).unwrap_or(Value::Null))
        }
        Err(_) => (0, Value::Null),
    }
}

/// A node with a JSON-lines source into entity `items` (hostile plugin),
/// the Redis writer and the REST API.
struct Node {
    dir: PathBuf,
    api: u16,
    health: u16,
}

impl Node {
    fn new(dir: &Path, redis: &RedisServer, entity_config: Value) -> Node {
        let plugin_dir = dir.join("plugins");
        std::fs::create_dir_all(&plugin_dir).expect("plugin dir");
        std::fs::copy(&plugins().hostile, plugin_dir.join("hostile.wasm")).expect("copy");
        let api = free_port();
        let health = free_port();
        let config = format!(
            r#"
data_dir = "data"
[plugins]
dir = "plugins"
cache_dir = {cache:?}
[api]
listen = "127.0.0.1:{api}"
[health]
enabled = true
listen = "127.0.0.1:{health}"
[cache]
enabled = false
[[sources]]
kind = "jsonl"
name = "in"
path = "changes.jsonl"
[[entities]]
name = "items"
plugin = "hostile"
source = "in"
collection = "items"
config = {entity_config}
[redis]
addr = "{addr}"
entities = ["items"]
batch_size = 100
"#,
            addr = redis.addr(),
            cache = emcachers_tests::plugin_cache_dir(),
            entity_config = toml_inline(&entity_config),
        );
        std::fs::write(dir.join("emcachers.toml"), config).expect("config");
        Node {
            dir: dir.to_owned(),
            api,
            health,
        }
    }

    fn write_changes(&self, ids: &[&str]) {
        let lines: Vec<String> = ids
            .iter()
            .map(|id| {
                json!({"collection": "items", "op": "upsert", "id": id, "document": {"name": id}})
                    .to_string()
            })
            .collect();
        std::fs::write(self.dir.join("changes.jsonl"), lines.join("\n") + "\n").expect("changes");
    }

    fn start(&self) -> Running {
        let log = self.dir.join(format!("emcachers-{}.log", rand_suffix()));
        let child = Command::new(emcachers_bin())
            .args(["run", "--config"])
            .arg(self.dir.join("emcachers.toml"))
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("start emcachers");
        Running { child, log }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.api)
    }
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default()
}

/// A JSON object as a TOML inline table (flat objects of arrays of strings).
fn toml_inline(value: &Value) -> String {
    let fields: Vec<String> = value
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k} = {v}"))
        .collect();
    format!("{{ {} }}", fields.join(", "))
}

fn key(id: &str) -> String {
    format!("items:1.0.0:{id}")
}

fn redis_get(redis: &RedisServer, key: &str) -> Option<String> {
    let out = redis.cli(&["--no-raw", "GET", key]);
    let out = out.trim();
    (out != "(nil)" && !out.is_empty()).then(|| out.to_owned())
}

fn saved_offset(redis: &RedisServer) -> Option<Offset> {
    let out = redis.cli(&["GET", "emcachers:redis:offset"]);
    Offset::parse(out.trim())
}

/// `keys` traps on one row of a batch: the other rows land, that row is a
/// rejected record of the writer, the offset passes it only once it is
/// kept, and a replay after the fix lands it.
#[test]
fn a_row_whose_keys_trap_is_dead_lettered_and_replayable() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let node = Node::new(dir.path(), &redis, json!({"keys_panic_on": ["i3"]}));
    let ids = ["i1", "i2", "i3", "i4", "i5"];
    node.write_changes(&ids);
    let running = node.start();

    let landed = wait_until(WAIT, || {
        ["i1", "i2", "i4", "i5"]
            .iter()
            .all(|id| redis_get(&redis, &key(id)).is_some())
    });
    assert!(landed, "the healthy rows never landed:\n{}", running.log());
    assert_eq!(
        redis_get(&redis, &key("i3")),
        None,
        "the trapping row has no key"
    );

    let mut rejected = Value::Null;
    let kept = wait_until(WAIT, || {
        rejected = call("GET", &node.url("/api/rejected"), None).1;
        rejected.to_string().contains("cache-writer:redis")
    });
    assert!(
        kept,
        "no dead row in the API: {rejected}\n{}",
        running.log()
    );
    let records: Vec<&Value> = rejected
        .as_array()
        .or_else(|| rejected["records"].as_array())
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    let dead: Vec<&&Value> = records
        .iter()
        .filter(|r| r["source"] == "cache-writer:redis")
        .collect();
    assert_eq!(dead.len(), 1, "{rejected}");
    assert_eq!(dead[0]["doc_id"], "i3");
    assert_eq!(dead[0]["entity"], "items");
    assert!(
        dead[0]["error"].as_str().unwrap_or("").contains("trap")
            || dead[0]["error"].as_str().unwrap_or("").contains("failed"),
        "{rejected}"
    );
    // The offset is honest: it passed the dead row only after keeping it,
    // and counts in this node's oplog.
    let offset = saved_offset(&redis).expect("an offset with its oplog");
    assert!(!offset.oplog.is_empty());
    assert!(offset.id >= ids.len() as i64, "{offset:?}");
    let metrics = agent()
        .get(&format!("http://127.0.0.1:{}/metrics", node.health))
        .call()
        .ok()
        .and_then(|mut r| r.body_mut().read_to_string().ok())
        .unwrap_or_default();
    assert!(
        metrics
            .lines()
            .any(|l| l == "emcachers_redis_rows_dead_lettered_total 1"),
        "{metrics}"
    );

    // Fix the configuration, replay: the row lands and the record is gone.
    let (status, body) = call(
        "PUT",
        &node.url("/api/entities/items"),
        Some(json!({"source": "in", "collection": "items", "plugin": "hostile", "config": {}})),
    );
    assert_eq!(status, 200, "{body}");
    let (status, body) = call("POST", &node.url("/api/rejected/replay"), None);
    assert_eq!(status, 200, "{body}");
    let replayed = wait_until(WAIT, || redis_get(&redis, &key("i3")).is_some());
    assert!(
        replayed,
        "the replayed row never landed:\n{}",
        running.log()
    );
    let rejected = call("GET", &node.url("/api/rejected"), None).1;
    assert!(
        !rejected.to_string().contains("cache-writer:redis"),
        "{rejected}"
    );
    running.stop();
}

/// The oplog is wiped under a live Redis: the offset there counts in the
/// old oplog, so the writer rebuilds from the new one, removing the rows the
/// new oplog does not have, instead of ignoring everything until new ids
/// pass the old number.
#[test]
fn a_wiped_oplog_rebuilds_the_redis_cache() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let node = Node::new(dir.path(), &redis, json!({}));
    let first: Vec<String> = (0..50).map(|i| format!("old{i}")).collect();
    let first: Vec<&str> = first.iter().map(String::as_str).collect();
    node.write_changes(&first);
    let running = node.start();
    let landed = wait_until(WAIT, || {
        saved_offset(&redis).is_some_and(|o| o.id >= first.len() as i64)
    });
    assert!(landed, "the first run never landed:\n{}", running.log());
    let before = saved_offset(&redis).expect("offset");
    running.stop();

    std::fs::remove_dir_all(dir.path().join("data")).expect("wipe the data directory");
    node.write_changes(&["new1", "new2"]);
    let running = node.start();
    let rebuilt = wait_until(WAIT, || {
        redis_get(&redis, &key("new1")).is_some()
            && redis_get(&redis, &key("new2")).is_some()
            && redis_get(&redis, &key("old0")).is_none()
            && redis_get(&redis, &key("old49")).is_none()
    });
    assert!(rebuilt, "the cache was not rebuilt:\n{}", running.log());
    let after = saved_offset(&redis).expect("offset");
    assert_ne!(after.oplog, before.oplog, "a new oplog has a new identity");
    assert!(after.id <= 2, "{after:?}: counts in the new oplog");
    assert!(
        running.log().contains("counts in oplog"),
        "the reason is logged:\n{}",
        running.log()
    );
    running.stop();
}

/// Deleting an entity through the API removes its keys and its
/// remembered-keys hash from Redis; creating it again works.
#[test]
fn deleting_an_entity_purges_its_redis_keys_and_it_can_be_created_again() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let node = Node::new(dir.path(), &redis, json!({}));
    node.write_changes(&["d1", "d2", "d3"]);
    let running = node.start();
    let landed = wait_until(WAIT, || {
        ["d1", "d2", "d3"]
            .iter()
            .all(|id| redis_get(&redis, &key(id)).is_some())
    });
    assert!(landed, "rows never landed:\n{}", running.log());
    let hash = "emcachers:redis:keys:items";
    assert_eq!(redis.cli(&["HLEN", hash]).trim(), "3");

    let agent = agent();
    let status = agent
        .delete(&node.url("/api/entities/items"))
        .call()
        .map(|r| r.status().as_u16())
        .unwrap_or(0);
    assert!((200..300).contains(&status), "delete answered {status}");
    let purged = wait_until(WAIT, || {
        ["d1", "d2", "d3"]
            .iter()
            .all(|id| redis_get(&redis, &key(id)).is_none())
            && redis.cli(&["EXISTS", hash]).trim() == "0"
            && redis
                .cli(&["EXISTS", "emcachers:redis:version:items"])
                .trim()
                == "0"
    });
    assert!(
        purged,
        "the deleted entity's keys stayed:\n{}",
        running.log()
    );

    let (status, body) = call(
        "POST",
        &node.url("/api/entities"),
        Some(json!({"name": "items", "source": "in", "collection": "items", "plugin": "hostile"})),
    );
    assert_eq!(status, 201, "{body}");
    let (status, body) = call("GET", &node.url("/api/entities/items"), None);
    assert_eq!(status, 200, "{body}");
    running.stop();
}
