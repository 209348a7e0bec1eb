//! The Redis cache writer against real Redis (a single node and a 3-master
//! cluster) and against its in-process target, with the compiled schematic
//! plugin deriving the keys: exact keys and values, stale lookups removed,
//! deletes, idempotent re-apply, TTL, restart and bootstrap, version change
//! and stale-version cleanup, a Redis outage, the writer lock.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use emcachers::breaker::BreakerState;
use emcachers::cache::Offset;
use emcachers::cache::redis::{
    LockConfig, LockState, MemoryConfig, MemoryTarget, RedisWriter, RedisWriterConfig,
    ReplayCursorConfig, Waiting,
};
use emcachers::entities::{EntityManager, EntitySpec};
use emcachers::jobs::JobServer;
use emcachers::oplog::{
    AppendBatch, EntityStatus, NewRow, Op, OplogStore, SourcePosition, SqliteStore,
};
use emcachers::plugin::PluginRegistry;
use emcachers_tests::plugins;
use emcachers_tests::services::{RedisCluster, RedisServer};
use serde_json::{Value, json};

const LOCK: &str = "schematic:datastream:writer_lock";
const OFFSET: &str = "emcachers:redis:offset";

/// The offset `id` of the setup's oplog, as the writer saves it.
fn at(s: &Setup, id: i64) -> Option<String> {
    Some(Offset::new(s.store.identity(), id).encode())
}
const CURSOR: &str = "schematic:datastream:replay_cursor";

// ---------------------------------------------------------------- setup

struct Setup {
    store: Arc<dyn OplogStore>,
    registry: Arc<PluginRegistry>,
    entities: Arc<EntityManager>,
    _dir: tempfile::TempDir,
}

/// A SQLite oplog and an entity manager serving flags, companies and users
/// with the schematic plugin under cache version `version` (the manager
/// publishes their layouts; the writers read versions only from there).
async fn setup(version: &str) -> Setup {
    let dir = tempfile::tempdir().expect("tempdir");
    let store: Arc<dyn OplogStore> =
        Arc::new(SqliteStore::open(&dir.path().join("oplog.sqlite")).expect("store"));
    let registry = crate::registry(Duration::from_secs(5), 64);
    registry
        .load_file(&plugins().schematic)
        .expect("load the schematic plugin");
    let entities = Arc::new(EntityManager::new(store.clone(), registry.clone(), None));
    for entity in ["flags", "companies", "users"] {
        entities
            .create(spec(entity, version), EntityStatus::Ready)
            .await
            .expect("create the entity");
    }
    Setup {
        store,
        registry,
        entities,
        _dir: dir,
    }
}

fn spec(entity: &str, version: &str) -> EntitySpec {
    EntitySpec {
        name: entity.into(),
        source: "schematic".into(),
        collection: entity.into(),
        plugin: "schematic".into(),
        config: json!({ "cache_version": version }),
    }
}

/// Move every entity to cache version `version` (a new layout, pushed to
/// the writers).
async fn assign_version(s: &Setup, version: &str) {
    for entity in ["flags", "companies", "users"] {
        s.entities
            .update(spec(entity, version))
            .await
            .expect("update the entity");
    }
}

fn config(addr: String) -> RedisWriterConfig {
    RedisWriterConfig {
        addr,
        cleanup_prefixes: emcachers::schematic::KEY_PREFIXES.map(String::from).into(),
        lock: LockConfig {
            key: LOCK.into(),
            ..LockConfig::default()
        },
        batch_size: 100,
        timeout_ms: 2000,
        ..RedisWriterConfig::default()
    }
}

/// Run `writer` as a supervised task until the returned server shuts down.
fn run_in_jobs(writer: RedisWriter) -> JobServer {
    let jobs = JobServer::new();
    let run = std::sync::Mutex::new(Some(writer));
    jobs.spawn("writer", move |cancel| {
        let writer = run.lock().expect("lock").take();
        async move {
            if let Some(writer) = writer {
                writer.run(cancel).await;
            }
        }
    });
    jobs
}

async fn open(s: &Setup, config: RedisWriterConfig) -> RedisWriter {
    RedisWriter::open(
        s.store.clone(),
        s.registry.clone(),
        s.entities.layouts(),
        config,
    )
    .await
    .expect("open the writer")
}

fn row(entity: &str, id: &str, data: &Value) -> NewRow {
    NewRow {
        entity: entity.into(),
        doc_id: id.into(),
        op: Op::Upsert,
        data: Some(data.to_string()),
        plugin: "schematic".into(),
        plugin_version: "test".into(),
    }
}

fn delete(entity: &str, id: &str) -> NewRow {
    NewRow {
        entity: entity.into(),
        doc_id: id.into(),
        op: Op::Delete,
        data: None,
        plugin: "schematic".into(),
        plugin_version: "test".into(),
    }
}

fn flag_data(key: &str) -> Value {
    json!({
        "id": format!("flag_{key}"), "account_id": "acc_1", "environment_id": "env_1",
        "key": key, "default_value": true, "rules": []
    })
}

fn flag(key: &str) -> NewRow {
    row("flags", &key.to_lowercase(), &flag_data(key))
}

fn company_data(id: &str, keys: Value) -> Value {
    json!({
        "id": id, "account_id": "", "environment_id": "env_1", "base_plan_id": null,
        "billing_product_ids": [], "credit_balances": {}, "entitlements": [], "keys": keys,
        "metrics": [], "plan_ids": [], "plan_version_ids": [], "rules": [],
        "subscription": null, "traits": [{"value": "gold", "trait_definition": {"id": "t1"}}]
    })
}

fn company(id: &str, keys: Value) -> NewRow {
    row("companies", id, &company_data(id, keys))
}

fn user_data(id: &str, keys: Value) -> Value {
    json!({
        "id": id, "account_id": "", "environment_id": "env_1", "keys": keys,
        "traits": [], "rules": []
    })
}

fn user(id: &str, keys: Value) -> NewRow {
    row("users", id, &user_data(id, keys))
}

async fn append(store: &Arc<dyn OplogStore>, rows: Vec<NewRow>, position: Option<&str>) {
    store
        .append(AppendBatch {
            rows,
            position: position.map(|p| SourcePosition {
                source: "schematic".into(),
                position: p.into(),
            }),
            ..AppendBatch::default()
        })
        .await
        .expect("append");
}

/// Wait (polling every 20 ms, at most `timeout`) until `condition` holds.
async fn eventually(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    loop {
        if tokio::task::block_in_place(&mut condition) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------- reading the target

/// What the tests read from a target.
trait Kv {
    /// `GET key` (a string key).
    fn get(&self, key: &str) -> Option<String>;
    /// Every key starting with `prefix`.
    fn keys(&self, prefix: &str) -> BTreeSet<String>;
    /// Run a command, return the raw output.
    fn cmd(&self, args: &[&str]) -> String;
    /// Keys starting with `prefix` on each master.
    fn per_node(&self, prefix: &str) -> Vec<usize>;
}

fn cli_value(out: &str) -> Option<String> {
    let value = out.strip_suffix('\n').unwrap_or(out);
    (!value.is_empty()).then(|| value.to_owned())
}

fn cli_keys(out: &str) -> BTreeSet<String> {
    out.lines()
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

fn scan_args(prefix: &str) -> [String; 3] {
    ["--scan".into(), "--pattern".into(), format!("{prefix}*")]
}

impl Kv for RedisServer {
    fn get(&self, key: &str) -> Option<String> {
        cli_value(&self.cli(&["GET", key]))
    }
    fn keys(&self, prefix: &str) -> BTreeSet<String> {
        let args = scan_args(prefix);
        cli_keys(&self.cli(&args.each_ref().map(String::as_str)))
    }
    fn cmd(&self, args: &[&str]) -> String {
        self.cli(args)
    }
    fn per_node(&self, prefix: &str) -> Vec<usize> {
        vec![self.keys(prefix).len()]
    }
}

impl Kv for RedisCluster {
    fn get(&self, key: &str) -> Option<String> {
        cli_value(&self.cli(&["GET", key]))
    }
    fn keys(&self, prefix: &str) -> BTreeSet<String> {
        self.nodes().iter().flat_map(|n| n.keys(prefix)).collect()
    }
    fn cmd(&self, args: &[&str]) -> String {
        self.cli(args)
    }
    fn per_node(&self, prefix: &str) -> Vec<usize> {
        self.nodes().iter().map(|n| n.keys(prefix).len()).collect()
    }
}

impl Kv for MemoryTarget {
    fn get(&self, key: &str) -> Option<String> {
        MemoryTarget::get(self, key)
    }
    fn keys(&self, prefix: &str) -> BTreeSet<String> {
        self.keys_with_prefix(prefix).into_iter().collect()
    }
    fn cmd(&self, args: &[&str]) -> String {
        panic!("no commands on the memory target: {args:?}")
    }
    fn per_node(&self, prefix: &str) -> Vec<usize> {
        vec![self.keys_with_prefix(prefix).len()]
    }
}

fn json_at(kv: &dyn Kv, key: &str) -> Value {
    let text = kv.get(key).unwrap_or_else(|| panic!("{key} is missing"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{key} holds {text:?}: {e}"))
}

/// Every key of a single node with its value (strings as they are,
/// hashes as sorted `field=value` lines), except the writer lock.
fn dump(redis: &RedisServer) -> BTreeMap<String, String> {
    redis
        .keys("")
        .into_iter()
        .filter(|k| k != LOCK)
        .map(|key| {
            let value = match redis.cli(&["TYPE", &key]).trim() {
                "hash" => {
                    let out = redis.cli(&["HGETALL", &key]);
                    let lines: Vec<&str> = out.lines().collect();
                    let mut pairs: Vec<String> = lines
                        .chunks(2)
                        .map(|p| format!("{}={}", p[0], p.get(1).unwrap_or(&"")))
                        .collect();
                    pairs.sort();
                    pairs.join("\n")
                }
                _ => redis.get(&key).unwrap_or_default(),
            };
            (key, value)
        })
        .collect()
}

fn set(keys: &[&str]) -> BTreeSet<String> {
    keys.iter().map(|k| (*k).to_owned()).collect()
}

// ---------------------------------------------------------------- tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_lookups_deletes_and_idempotent_reapply_on_a_single_node() {
    let s = setup("v1").await;
    let redis = RedisServer::start();
    let mut config = config(redis.addr());
    config.replay_cursor = Some(ReplayCursorConfig {
        source: "schematic".into(),
        key: CURSOR.into(),
    });
    let mut writer = open(&s, config).await;
    let status = writer.status();

    // A fresh Redis: bootstrap (of nothing), then tail.
    let first = writer.catch_up().await.expect("first catch-up");
    assert!(first.bootstrapped);
    assert_eq!(redis.get(OFFSET), at(&s, 0));

    append(
        &s.store,
        vec![
            flag("My-Flag"),
            company("comp_1", json!({"domain": "Acme.com", "slug": "acme"})),
            user("user_1", json!({"email": "Ada@Example.com"})),
            // keys() rejects a non-string lookup value: dead-lettered.
            company("comp_bad", json!({"domain": 5})),
        ],
        Some("1700000000000-0"),
    )
    .await;
    let report = writer.catch_up().await.expect("catch up");
    assert_eq!(
        (
            report.read,
            report.upserted,
            report.skipped,
            report.dead_lettered,
            report.offset
        ),
        (4, 3, 0, 1, 4)
    );
    let dead = s.store.rejected(0, 10).await.expect("rejected records");
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(
        (
            dead[0].source.as_str(),
            dead[0].entity.as_str(),
            dead[0].doc_id.as_str()
        ),
        ("cache-writer:redis", "companies", "comp_bad")
    );
    assert_eq!(report.keys_written, 6);

    assert_eq!(
        json_at(&redis, "schematic:flags:v1:my-flag"),
        flag_data("My-Flag")
    );
    assert_eq!(
        json_at(&redis, "schematic:company:v1:comp_1"),
        company_data("comp_1", json!({"domain": "Acme.com", "slug": "acme"}))
    );
    assert_eq!(
        redis.get("schematic:company:v1:domain:acme.com").as_deref(),
        Some("\"comp_1\"")
    );
    assert_eq!(
        redis.get("schematic:company:v1:slug:acme").as_deref(),
        Some("\"comp_1\"")
    );
    assert_eq!(
        json_at(&redis, "schematic:user:v1:user_1"),
        user_data("user_1", json!({"email": "Ada@Example.com"}))
    );
    assert_eq!(
        redis
            .get("schematic:user:v1:email:ada@example.com")
            .as_deref(),
        Some("\"user_1\"")
    );
    assert_eq!(
        redis.keys("schematic:"),
        set(&[
            "schematic:company:v1:comp_1",
            "schematic:company:v1:domain:acme.com",
            "schematic:company:v1:slug:acme",
            "schematic:datastream:replay_cursor",
            "schematic:datastream:writer_lock",
            "schematic:flags:v1:my-flag",
            "schematic:user:v1:email:ada@example.com",
            "schematic:user:v1:user_1",
        ])
    );
    // No TTL without ttl_secs.
    assert_eq!(
        redis.cli(&["PTTL", "schematic:company:v1:comp_1"]).trim(),
        "-1"
    );
    // The replay cursor is mirrored once caught up; the lock is ours.
    assert_eq!(redis.get(CURSOR).as_deref(), Some("1700000000000-0"));
    assert_eq!(redis.get(LOCK).as_deref(), writer.lock_token());
    let snapshot = status.snapshot();
    assert_eq!(snapshot.redis, "connected");
    assert_eq!(snapshot.lock, LockState::Held);
    assert_eq!(snapshot.breaker, BreakerState::Closed);
    assert_eq!(
        (
            snapshot.applied_offset,
            snapshot.rows_skipped,
            snapshot.rows_dead_lettered
        ),
        (4, 0, 1)
    );
    assert_eq!(
        snapshot.versions,
        [("companies", "v1"), ("flags", "v1"), ("users", "v1")]
            .map(|(e, v)| (e.to_owned(), v.to_owned()))
            .into()
    );

    // A changed lookup value removes exactly the old lookup key.
    append(
        &s.store,
        vec![company(
            "comp_1",
            json!({"domain": "Acme.org", "slug": "acme"}),
        )],
        None,
    )
    .await;
    let report = writer.catch_up().await.expect("lookup change");
    assert_eq!((report.keys_written, report.keys_deleted), (3, 1));
    assert_eq!(
        redis.keys("schematic:company:"),
        set(&[
            "schematic:company:v1:comp_1",
            "schematic:company:v1:domain:acme.org",
            "schematic:company:v1:slug:acme",
        ])
    );

    // A delete removes the entity key and every lookup key it had.
    append(
        &s.store,
        vec![delete("companies", "comp_1"), delete("flags", "my-flag")],
        None,
    )
    .await;
    let report = writer.catch_up().await.expect("deletes");
    assert_eq!((report.deleted, report.keys_deleted), (2, 4));
    assert!(redis.keys("schematic:company:").is_empty());
    assert!(redis.keys("schematic:flags:").is_empty());
    assert_eq!(
        cli_value(&redis.cli(&["HGET", "emcachers:redis:keys:companies", "comp_1"])),
        None
    );
    assert_eq!(redis.keys("schematic:user:").len(), 2);

    // Applying the whole log again changes nothing.
    let before = dump(&redis);
    redis.cli(&["SET", OFFSET, &at(&s, 0).expect("offset")]);
    let again = writer.catch_up().await.expect("re-apply");
    assert_eq!((again.read, again.offset), (7, 7));
    assert_eq!(dump(&redis), before);
    assert!(writer.release_lock().await.expect("release"));
    assert_eq!(redis.get(LOCK), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_applies_to_entity_keys_only() {
    let s = setup("v1").await;
    let redis = RedisServer::start();
    let mut config = config(redis.addr());
    config.ttl_secs = 100;
    config.lock.enabled = false;
    let mut writer = open(&s, config).await;
    append(
        &s.store,
        vec![flag("f1"), company("comp_1", json!({"domain": "a.com"}))],
        None,
    )
    .await;
    writer.catch_up().await.expect("catch up");
    assert_eq!(writer.status().lock_state(), LockState::Disabled);
    let entity_keys = redis.keys("schematic:");
    assert_eq!(entity_keys.len(), 3, "{entity_keys:?}");
    for key in &entity_keys {
        let ttl: i64 = redis.cli(&["PTTL", key]).trim().parse().expect("PTTL");
        assert!(ttl > 90_000 && ttl <= 100_000, "{key}: PTTL {ttl}");
    }
    for key in [
        OFFSET,
        "emcachers:redis:version:companies",
        "emcachers:redis:keys:companies",
    ] {
        assert_eq!(redis.cli(&["PTTL", key]).trim(), "-1", "{key}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_resumes_from_the_redis_offset_and_flushall_bootstraps() {
    let s = setup("v1").await;
    let redis = RedisServer::start();
    let mut first = open(&s, config(redis.addr())).await;
    first.catch_up().await.expect("bootstrap");
    let rows: Vec<NewRow> = (0..25)
        .map(|i| company(&format!("comp_{i}"), json!({"domain": format!("d{i}.com")})))
        .chain((0..5).map(|i| flag(&format!("Flag-{i}"))))
        .collect();
    append(&s.store, rows, None).await;
    let report = first.catch_up().await.expect("tail");
    assert_eq!((report.upserted, report.offset), (30, 30));
    assert!(first.release_lock().await.expect("release"));
    drop(first);

    // A new writer resumes from the offset in Redis: nothing is re-applied.
    let mut second = open(&s, config(redis.addr())).await;
    let report = second.catch_up().await.expect("resume");
    assert_eq!((report.read, report.upserted, report.offset), (0, 0, 30));
    assert!(!report.bootstrapped);
    let snapshot = second.status().snapshot();
    assert_eq!((snapshot.rows_applied, snapshot.batches), (0, 0));
    assert_eq!(snapshot.applied_offset, 30);
    assert!(!snapshot.bootstrapped);

    // A flushed Redis is rebuilt from the latest rows, exactly as it was.
    let before = dump(&redis);
    // Entity keys, the offset, three versions, two remembered-keys hashes.
    assert_eq!(before.len(), 25 * 2 + 5 + 1 + 3 + 2, "{:?}", before.keys());
    redis.cli(&["FLUSHALL"]);
    let report = second.catch_up().await.expect("bootstrap after FLUSHALL");
    assert!(report.bootstrapped);
    assert_eq!(report.upserted, 30);
    assert_eq!(dump(&redis), before);
    assert!(second.status().snapshot().bootstrapped);
}

/// Version change to v2: new keys beside the old; the cleanup removes every
/// v1 key and foreign old-version keys, nothing else.
async fn version_change_then_cleanup(kv: &dyn Kv, config: RedisWriterConfig) {
    let s = setup("v1").await;
    let mut writer = open(&s, config).await;
    let rows: Vec<NewRow> = (0..30)
        .map(|i| company(&format!("comp_{i}"), json!({"domain": format!("d{i}.com")})))
        .chain((0..10).map(|i| user(&format!("user_{i}"), json!({"email": format!("u{i}@x.io")}))))
        .chain((0..5).map(|i| flag(&format!("Flag-{i}"))))
        .collect();
    append(&s.store, rows, None).await;
    writer.catch_up().await.expect("v1");
    let v1 = kv.keys("schematic:");
    let v1: BTreeSet<String> = v1.into_iter().filter(|k| k.contains(":v1:")).collect();
    assert_eq!(v1.len(), 30 * 2 + 10 * 2 + 5);
    kv.cmd(&["SET", "schematic:company:old:x", "\"x\""]);
    kv.cmd(&["SET", "other:v1:x", "1"]);

    assign_version(&s, "v2").await;
    let report = writer.catch_up().await.expect("v2");
    assert_eq!(report.rebuilt, 3);
    let v2: BTreeSet<String> = v1.iter().map(|k| k.replace(":v1:", ":v2:")).collect();
    let all = kv.keys("schematic:");
    assert!(all.is_superset(&v1), "old-version keys keep serving");
    assert!(all.is_superset(&v2), "new-version keys are written");
    assert_eq!(
        json_at(kv, "schematic:company:v2:comp_7"),
        json_at(kv, "schematic:company:v1:comp_7")
    );
    assert_eq!(
        kv.get("schematic:user:v2:email:u3@x.io").as_deref(),
        Some("\"user_3\"")
    );
    assert_eq!(
        writer.status().versions().into_values().collect::<Vec<_>>(),
        vec!["v2", "v2", "v2"]
    );

    let cleanup = writer.cleanup_now().await.expect("cleanup");
    assert_eq!(cleanup.removed, v1.len() as u64 + 1);
    let left: BTreeSet<String> = kv
        .keys("schematic:")
        .into_iter()
        .filter(|k| !k.starts_with("schematic:datastream:"))
        .collect();
    assert_eq!(left, v2);
    assert_eq!(kv.get("other:v1:x").as_deref(), Some("1"));
    assert_eq!(kv.get(OFFSET), at(&s, 45));
    assert_eq!(writer.status().snapshot().cleanup_removed, cleanup.removed);
    // Nothing left to clean.
    assert_eq!(writer.cleanup_now().await.expect("again").removed, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_change_and_cleanup_on_a_single_node() {
    let redis = RedisServer::start();
    version_change_then_cleanup(&redis, config(redis.addr())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_change_and_cleanup_on_a_cluster() {
    let cluster = RedisCluster::start(RedisCluster::DEFAULT_MASTERS);
    let mut config = config(String::new());
    config.cluster = true;
    config.cluster_addrs = cluster.addrs();
    // The keys spread over every master, and the cleanup reaches each.
    version_change_then_cleanup(&cluster, config).await;
    let per_node = cluster.per_node("schematic:");
    assert!(
        per_node.iter().all(|&n| n > 0),
        "keys on every master: {per_node:?}"
    );
    assert!(
        cluster
            .keys("schematic:")
            .iter()
            .all(|k| !k.contains(":v1:")),
        "no v1 key on any master"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_applies_lookup_changes_and_deletes() {
    let s = setup("v1").await;
    let cluster = RedisCluster::start(RedisCluster::DEFAULT_MASTERS);
    let mut config = config(String::new());
    config.cluster = true;
    config.cluster_addrs = cluster.addrs();
    let mut writer = open(&s, config).await;
    append(
        &s.store,
        vec![
            company("comp_1", json!({"domain": "Acme.com", "slug": "acme"})),
            flag("F"),
        ],
        None,
    )
    .await;
    writer.catch_up().await.expect("apply");
    assert_eq!(
        cluster
            .get("schematic:company:v1:domain:acme.com")
            .as_deref(),
        Some("\"comp_1\"")
    );
    append(
        &s.store,
        vec![company(
            "comp_1",
            json!({"domain": "acme.org", "slug": "acme"}),
        )],
        None,
    )
    .await;
    writer.catch_up().await.expect("lookup change");
    assert_eq!(
        cluster.keys("schematic:company:"),
        set(&[
            "schematic:company:v1:comp_1",
            "schematic:company:v1:domain:acme.org",
            "schematic:company:v1:slug:acme",
        ])
    );
    append(&s.store, vec![delete("companies", "comp_1")], None).await;
    writer.catch_up().await.expect("delete");
    assert!(cluster.keys("schematic:company:").is_empty());
    assert_eq!(cluster.get(OFFSET), at(&s, 4));
    assert_eq!(cluster.get(LOCK).as_deref(), writer.lock_token());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_opens_the_breaker_and_loses_nothing() {
    let s = setup("v1").await;
    let redis = RedisServer::start();
    let mut config = config(redis.addr());
    config.breaker_threshold = 3;
    config.breaker_timeout_ms = 300;
    config.timeout_ms = 500;
    config.batch_size = 10;
    config.lock.ttl_ms = 1500;
    let writer = open(&s, config).await;
    let status = writer.status();
    let jobs = JobServer::new();
    let cancel = jobs.token();
    let task = tokio::spawn(writer.run(cancel.clone()));

    let companies = |range: std::ops::Range<usize>| -> Vec<NewRow> {
        range
            .map(|i| company(&format!("comp_{i}"), json!({"domain": format!("d{i}.com")})))
            .collect()
    };
    append(&s.store, companies(0..20), None).await;
    eventually("the first rows applied", Duration::from_secs(20), || {
        status.applied_offset() == 20
    })
    .await;

    tokio::task::block_in_place(|| redis.stop());
    // Rows keep coming while Redis is down.
    for chunk in 0..4 {
        append(&s.store, companies(20 + chunk * 10..30 + chunk * 10), None).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eventually("the breaker to open", Duration::from_secs(20), || {
        status.snapshot().breaker_trips >= 1
    })
    .await;
    let down = status.snapshot();
    assert_eq!(down.redis, "disconnected");
    assert_eq!(down.applied_offset, 20, "the offset waits for Redis");
    assert!(down.errors >= 3);
    assert!(down.last_error.is_some());

    // Redis comes back empty (no persistence): everything lands again.
    tokio::task::block_in_place(|| redis.restart());
    eventually("every row in Redis", Duration::from_secs(30), || {
        status.applied_offset() == 60 && redis.keys("schematic:company:v1:").len() == 120
    })
    .await;
    let up = status.snapshot();
    assert_eq!(up.redis, "connected");
    assert_eq!(up.breaker, BreakerState::Closed);
    assert_eq!(up.lock, LockState::Held);
    assert!(up.bootstrapped);
    for i in [0, 25, 59] {
        assert_eq!(
            redis
                .get(&format!("schematic:company:v1:domain:d{i}.com"))
                .as_deref(),
            Some(format!("\"comp_{i}\"").as_str())
        );
    }

    cancel.cancel();
    task.await.expect("the writer task ends without panicking");
    assert_eq!(redis.get(LOCK), None, "the lock is released on shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_writer_lock_keeps_a_second_writer_out() {
    let s = setup("v1").await;
    let redis = RedisServer::start();
    append(&s.store, vec![flag("a")], None).await;
    let mut config = config(redis.addr());
    config.lock.ttl_ms = 1500;

    // Someone else holds the lock: nothing is written until it expires.
    redis.cli(&["SET", LOCK, "someone-else"]);
    let mut writer = open(&s, config.clone()).await;
    let report = writer.step().await.expect("step");
    assert_eq!(report.waiting, Some(Waiting::Lock));
    assert_eq!(writer.status().lock_state(), LockState::Waiting);
    assert_eq!(redis.get(OFFSET), None);
    assert!(redis.keys("schematic:flags:").is_empty());
    redis.cli(&["PEXPIRE", LOCK, "300"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let report = writer.catch_up().await.expect("catch up");
        if report.waiting.is_none() {
            break;
        }
        assert!(Instant::now() < deadline, "the lock never expired");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(redis.get(LOCK).as_deref(), writer.lock_token());
    assert_eq!(redis.keys("schematic:flags:").len(), 1);

    // A second writer waits while the first holds the lock, and takes over
    // once it is released.
    append(&s.store, vec![flag("b")], None).await;
    let mut second = open(&s, config).await;
    assert_eq!(
        second.catch_up().await.expect("step").waiting,
        Some(Waiting::Lock)
    );
    assert_eq!(redis.keys("schematic:flags:").len(), 1);
    assert!(writer.release_lock().await.expect("release"));
    let report = second.catch_up().await.expect("take over");
    assert_eq!(
        (report.waiting, report.upserted, report.offset),
        (None, 1, 2)
    );
    assert_eq!(redis.get(LOCK).as_deref(), second.lock_token());
    assert_eq!(redis.keys("schematic:flags:").len(), 2);
    // The first writer, lock lost, writes nothing.
    append(&s.store, vec![flag("c")], None).await;
    assert_eq!(
        writer.step().await.expect("step").waiting,
        Some(Waiting::Lock)
    );
    assert_eq!(redis.get(OFFSET), at(&s, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_memory_target_applies_the_same_semantics() {
    let s = setup("v1").await;
    let mut config = config(String::new());
    config.memory = Some(MemoryConfig { max_entries: 1000 });
    let mut writer = open(&s, config).await;
    let memory = writer.memory().expect("memory target");
    append(
        &s.store,
        vec![
            flag("My-Flag"),
            company("comp_1", json!({"domain": "Acme.com"})),
        ],
        None,
    )
    .await;
    let report = writer.catch_up().await.expect("apply");
    assert!(report.bootstrapped);
    assert_eq!(
        json_at(memory.as_ref(), "schematic:flags:v1:my-flag"),
        flag_data("My-Flag")
    );
    assert_eq!(
        memory
            .get("schematic:company:v1:domain:acme.com")
            .as_deref(),
        Some("\"comp_1\"")
    );
    append(
        &s.store,
        vec![company("comp_1", json!({"domain": "acme.org"}))],
        None,
    )
    .await;
    writer.catch_up().await.expect("lookup change");
    assert_eq!(
        memory.keys("schematic:company:"),
        set(&[
            "schematic:company:v1:comp_1",
            "schematic:company:v1:domain:acme.org"
        ])
    );
    assign_version(&s, "v2").await;
    assert_eq!(writer.catch_up().await.expect("v2").rebuilt, 3);
    assert_eq!(memory.keys("schematic:").len(), 6);
    assert_eq!(writer.cleanup_now().await.expect("cleanup").removed, 3);
    append(&s.store, vec![delete("companies", "comp_1")], None).await;
    writer.catch_up().await.expect("delete");
    assert_eq!(
        memory.keys("schematic:"),
        set(&["schematic:flags:v2:my-flag"])
    );
    assert_eq!(memory.get(OFFSET), at(&s, 4));
    let snapshot = writer.status().snapshot();
    assert_eq!(
        (snapshot.target.as_str(), snapshot.lock, snapshot.connected),
        ("memory", LockState::Disabled, true)
    );
}

/// Apply rate of the writer: 20,000 companies (three keys each: the
/// company and two lookups) tailed from the log, rewritten by a bootstrap,
/// and updated with a changed lookup (a `DEL` per row too), on a single
/// node, a 3-master cluster and the memory target. Prints rows/s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: cargo test -p emcachers-tests --release --test integration \
            redis_writer::throughput -- --ignored --nocapture"]
async fn throughput() {
    const ROWS: usize = 20_000;
    let rows = |domain: &str| -> Vec<NewRow> {
        (0..ROWS)
            .map(|i| {
                company(
                    &format!("comp_{i}"),
                    json!({"domain": format!("{i}.{domain}"), "slug": format!("s{i}")}),
                )
            })
            .collect()
    };
    let redis = RedisServer::start();
    let cluster = RedisCluster::start(RedisCluster::DEFAULT_MASTERS);
    let mut targets: Vec<(&str, RedisWriterConfig)> = Vec::new();
    targets.push(("single node", config(redis.addr())));
    let mut clustered = config(String::new());
    clustered.cluster = true;
    clustered.cluster_addrs = cluster.addrs();
    targets.push(("cluster", clustered));
    let mut memory = config(String::new());
    memory.memory = Some(MemoryConfig {
        max_entries: 4 * ROWS,
    });
    targets.push(("memory", memory));
    for (name, mut config) in targets {
        config.batch_size = 1000;
        let s = setup("v1").await;
        let mut writer = open(&s, config.clone()).await;
        writer.catch_up().await.expect("bootstrap");
        for chunk in rows("a.com").chunks(1000) {
            append(&s.store, chunk.to_vec(), None).await;
        }
        let started = Instant::now();
        let report = writer.catch_up().await.expect("tail");
        let tail = started.elapsed();
        assert_eq!(report.upserted, ROWS);
        for chunk in rows("b.com").chunks(1000) {
            append(&s.store, chunk.to_vec(), None).await;
        }
        let started = Instant::now();
        let report = writer.catch_up().await.expect("update");
        let update = started.elapsed();
        assert_eq!(report.keys_deleted, ROWS as u64);
        assert!(writer.release_lock().await.is_ok());
        drop(writer);
        match name {
            "single node" => drop(redis.cli(&["FLUSHALL"])),
            "cluster" => {
                for node in cluster.nodes() {
                    node.cli(&["FLUSHALL"]);
                }
            }
            _ => {}
        }
        let mut fresh = open(&s, config).await;
        let started = Instant::now();
        let report = fresh.catch_up().await.expect("bootstrap");
        let bootstrap = started.elapsed();
        assert!(report.bootstrapped);
        let rate = |d: Duration| (ROWS as f64 / d.as_secs_f64()).round();
        println!(
            "{name}: tail {} rows/s, update (changed lookup) {} rows/s, bootstrap {} rows/s",
            rate(tail),
            rate(update),
            rate(bootstrap)
        );
    }
}

/// A caught-up writer wakes on the store's commit, not on its poll: with a
/// poll of a minute, an appended row still lands at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caught_up_writer_wakes_on_commit() {
    let s = setup("v1").await;
    let mut config = config(String::new());
    config.memory = Some(MemoryConfig { max_entries: 1000 });
    config.poll_ms = 60_000;
    let mut writer = open(&s, config).await;
    let memory = writer.memory().expect("memory target");
    writer.catch_up().await.expect("bootstrap");
    let status = writer.status();
    let jobs = run_in_jobs(writer);
    // The writer is caught up (its steps find nothing): it waits.
    assert!(status.caught_up());
    let started = Instant::now();
    append(&s.store, vec![flag("Woken")], None).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while memory.get("schematic:flags:v1:woken").is_none() {
        assert!(
            Instant::now() < deadline,
            "the writer did not wake on the commit (poll is 60 s)"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(started.elapsed() < Duration::from_secs(20));
    jobs.shutdown(Duration::from_secs(5)).await;
}

/// A new layout version reaches a caught-up writer as a push from the entity
/// manager: with a 60 s poll, the entity is rebuilt under the new version at
/// once, and nothing asks the plugin for a version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layout_push_rebuilds_a_caught_up_writer() {
    let s = setup("v1").await;
    let mut config = config(String::new());
    config.memory = Some(MemoryConfig { max_entries: 1000 });
    config.poll_ms = 60_000;
    let mut writer = open(&s, config).await;
    let memory = writer.memory().expect("memory target");
    append(&s.store, vec![flag("Pushed")], None).await;
    writer.catch_up().await.expect("bootstrap");
    assert!(memory.get("schematic:flags:v1:pushed").is_some());
    assert!(memory.get("schematic:flags:v2:pushed").is_none());
    let status = writer.status();
    let jobs = run_in_jobs(writer);
    assert!(status.caught_up());
    assign_version(&s, "v2").await;
    let deadline = Instant::now() + Duration::from_secs(20);
    // The rebuild writes the keys, then the version key, then the status.
    while status.version("flags").as_deref() != Some("v2") {
        assert!(
            Instant::now() < deadline,
            "the layout push did not reach the writer (poll is 60 s)"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(memory.get("schematic:flags:v2:pushed").is_some());
    assert_eq!(
        memory.get("emcachers:redis:version:flags").as_deref(),
        Some("v2")
    );
    // The old version keeps serving until the cleanup.
    assert!(memory.get("schematic:flags:v1:pushed").is_some());
    jobs.shutdown(Duration::from_secs(5)).await;
}
