//! Schematic's datastream replicated into real Redis, end to end (spec
//! `shared/specs/schematic-datastream.md`): the dev Schematic server
//! (`emcachers-datastream-server`) over real WebSockets and REST, a node
//! running the real Schematic profile (`schematic_env::config_from`) with
//! the compiled `schematic` plugin, and real `redis-server`s (a single node
//! and a 3-master cluster).
//!
//! Every test keeps a [`Model`] of what Redis must hold under
//! `schematic:{flags,company,user}:` (every key and its exact value) and
//! waits until Redis holds exactly that, so a stale lookup, a `null` where
//! `[]` belongs or an unquoted lookup id fails it.
//!
//! The node and the dev server run on a runtime of their own; the test
//! bodies are synchronous and poll conditions with deadlines (HTTP with
//! `ureq`, Redis with the `redis` crate).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use emcachers::config::{Config, SourceConfig};
use emcachers::node::Node;
use emcachers::oplog::RejectedRecord;
use emcachers::schematic::env as schematic_env;
use emcachers_datastream_server::{Config as ServerConfig, DevServer, Envelope, Fixtures};
use emcachers_tests::services::{RedisCluster, RedisServer};
use emcachers_tests::{emcachers_bin, plugins, wait_until};
use serde_json::{Value, json};

/// The API key the node uses.
const API_KEY: &str = "sch_test_key";
/// Deadline of every wait (generous: two cores, other builds running).
const WAIT: Duration = Duration::from_secs(60);
/// `fail_pages` count that outlasts any test.
const FAIL_FOREVER: u64 = 1_000_000;
/// The replay cursor key of the profile.
const CURSOR_KEY: &str = "schematic:datastream:replay_cursor";
/// The writer lock key of the profile.
const LOCK_KEY: &str = "schematic:datastream:writer_lock";
/// Timeout of one Redis call made by the test.
const REDIS_TIMEOUT: Duration = Duration::from_secs(3);

const FLAG: &str = "rulesengine.Flag";
const FLAGS: &str = "rulesengine.Flags";
const COMPANY: &str = "rulesengine.Company";
const USER: &str = "rulesengine.User";

// ---------------------------------------------------------------- Redis

/// The Redis the node writes to.
enum Backend {
    Single(RedisServer),
    Cluster(RedisCluster),
}

fn connect(url: &str) -> redis::RedisResult<redis::Connection> {
    let con = redis::Client::open(url)?.get_connection_with_timeout(REDIS_TIMEOUT)?;
    con.set_read_timeout(Some(REDIS_TIMEOUT))?;
    con.set_write_timeout(Some(REDIS_TIMEOUT))?;
    Ok(con)
}

/// A Redis value as the model compares it: JSON, or a marker for text that
/// is not JSON (an unquoted lookup id would show up as one).
fn parse(raw: &str) -> Value {
    serde_json::from_str(raw).unwrap_or_else(|_| Value::String(format!("<not JSON> {raw}")))
}

impl Backend {
    fn single() -> Backend {
        Backend::Single(RedisServer::start())
    }

    fn cluster() -> Backend {
        Backend::Cluster(RedisCluster::start(RedisCluster::DEFAULT_MASTERS))
    }

    /// The profile's variables naming this Redis.
    fn vars(&self) -> Vec<(&'static str, String)> {
        match self {
            Backend::Single(server) => vec![("REDIS_ADDR", server.addr())],
            Backend::Cluster(cluster) => vec![
                ("REDIS_CLUSTER_MODE", "true".into()),
                ("REDIS_CLUSTER_ADDRS", cluster.addrs().join(",")),
            ],
        }
    }

    /// `redis://` URL of every master.
    fn masters(&self) -> Vec<String> {
        match self {
            Backend::Single(server) => vec![server.url()],
            Backend::Cluster(cluster) => cluster.urls(),
        }
    }

    fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> redis::RedisResult<T> {
        match self {
            Backend::Single(server) => cmd.query(&mut connect(&server.url())?),
            Backend::Cluster(cluster) => {
                let client = redis::cluster::ClusterClient::builder(cluster.urls())
                    .connection_timeout(REDIS_TIMEOUT)
                    .response_timeout(REDIS_TIMEOUT)
                    .build()?;
                cmd.query(&mut client.get_connection()?)
            }
        }
    }

    fn get(&self, key: &str) -> redis::RedisResult<Option<String>> {
        self.query(redis::cmd("GET").arg(key))
    }

    fn set(&self, key: &str, value: &str) {
        self.query::<()>(redis::cmd("SET").arg(key).arg(value))
            .unwrap_or_else(|e| panic!("SET {key}: {e}"));
    }

    /// Every key of `master` matching `pattern` (SCAN).
    fn scan(con: &mut redis::Connection, pattern: &str) -> redis::RedisResult<Vec<String>> {
        let mut keys = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(pattern)
                .arg("COUNT")
                .arg(1000)
                .query(con)?;
            keys.extend(batch);
            if next == 0 {
                return Ok(keys);
            }
            cursor = next;
        }
    }

    /// Every key under the Schematic entity prefixes with its value, read
    /// from every master.
    fn snapshot(&self) -> redis::RedisResult<BTreeMap<String, Value>> {
        let mut out = BTreeMap::new();
        for url in self.masters() {
            let mut con = connect(&url)?;
            let keys: Vec<String> = Self::scan(&mut con, "schematic:*")?
                .into_iter()
                .filter(|k| {
                    schematic_env::CLEANUP_PREFIXES
                        .iter()
                        .any(|p| k.starts_with(p))
                })
                .collect();
            if keys.is_empty() {
                continue;
            }
            let mut pipe = redis::pipe();
            for key in &keys {
                pipe.cmd("GET").arg(key);
            }
            let values: Vec<Option<String>> = pipe.query(&mut con)?;
            for (key, value) in keys.into_iter().zip(values) {
                if let Some(value) = value {
                    out.insert(key, parse(&value));
                }
            }
        }
        Ok(out)
    }

    /// How many keys matching `pattern` each master holds.
    fn per_master(&self, pattern: &str) -> Vec<usize> {
        self.masters()
            .iter()
            .map(|url| {
                let mut con = connect(url).expect("connect to a master");
                Self::scan(&mut con, pattern).expect("scan").len()
            })
            .collect()
    }
}

// ---------------------------------------------------------------- model

/// What Redis must hold under `schematic:{flags,company,user}:`.
#[derive(Debug, Clone)]
struct Model {
    ver: String,
    keys: BTreeMap<String, Value>,
}

impl Model {
    fn new(ver: &str) -> Model {
        Model {
            ver: ver.into(),
            keys: BTreeMap::new(),
        }
    }

    fn prefix(&self, kind: &str) -> String {
        format!("schematic:{kind}:{}:", self.ver)
    }

    /// Set a (normalised) flag: key `lower(flag.key)`.
    fn flag(&mut self, doc: Value) {
        let key = doc["key"].as_str().expect("flag key").to_lowercase();
        self.keys
            .insert(format!("{}{key}", self.prefix("flags")), doc);
    }

    fn remove_flag(&mut self, key: &str) {
        let key = format!("{}{}", self.prefix("flags"), key.to_lowercase());
        assert!(self.keys.remove(&key).is_some(), "model has no {key}");
    }

    /// Exactly these flags.
    fn only_flags(&mut self, docs: impl IntoIterator<Item = Value>) {
        let prefix = self.prefix("flags");
        self.keys.retain(|k, _| !k.starts_with(&prefix));
        docs.into_iter().for_each(|doc| self.flag(doc));
    }

    /// Set a (normalised) company or user and its lookups, dropping the
    /// lookups it had.
    fn entity(&mut self, kind: &str, doc: Value) {
        let id = doc["id"].as_str().expect("entity id").to_owned();
        self.remove_entity(kind, &id);
        let prefix = self.prefix(kind);
        if let Some(keys) = doc["keys"].as_object() {
            for (name, value) in keys {
                let value = value.as_str().expect("key value");
                self.keys.insert(
                    format!("{prefix}{}:{}", name.to_lowercase(), value.to_lowercase()),
                    json!(id),
                );
            }
        }
        self.keys.insert(format!("{prefix}{id}"), doc);
    }

    /// Drop a company or user and every lookup pointing at it.
    fn remove_entity(&mut self, kind: &str, id: &str) {
        let prefix = self.prefix(kind);
        let entity_key = format!("{prefix}{id}");
        let id_value = json!(id);
        self.keys
            .retain(|k, v| !(k.starts_with(&prefix) && (*k == entity_key || *v == id_value)));
    }

    fn doc(&self, kind: &str, id: &str) -> Value {
        self.keys[&format!("{}{id}", self.prefix(kind))].clone()
    }

    /// The same data under another version.
    fn with_version(&self, ver: &str) -> Model {
        let keys = self
            .keys
            .iter()
            .map(|(key, value)| {
                let mut parts: Vec<&str> = key.splitn(4, ':').collect();
                parts[2] = ver;
                (parts.join(":"), value.clone())
            })
            .collect();
        Model {
            ver: ver.into(),
            keys,
        }
    }
}

/// `base` with the top-level fields of `fields` set.
fn with(base: Value, fields: Value) -> Value {
    let (Value::Object(mut base), Value::Object(fields)) = (base, fields) else {
        panic!("objects expected");
    };
    base.extend(fields);
    Value::Object(base)
}

/// A flag as the plugin writes it: the Go model's fields filled in.
fn flag_doc(fields: Value) -> Value {
    with(
        json!({"id": "", "account_id": "", "environment_id": "", "default_value": false, "rules": []}),
        fields,
    )
}

/// A company as the plugin writes it: `[]`/`{}` for empty lists and maps,
/// `null` for the optional fields.
fn company_doc(fields: Value) -> Value {
    with(
        json!({
            "id": "", "account_id": "", "environment_id": "", "base_plan_id": null,
            "billing_product_ids": [], "credit_balances": {}, "entitlements": [], "keys": {},
            "metrics": [], "plan_ids": [], "plan_version_ids": [], "rules": [],
            "subscription": null, "traits": []
        }),
        fields,
    )
}

/// A user as the plugin writes it.
fn user_doc(fields: Value) -> Value {
    with(
        json!({"id": "", "account_id": "", "environment_id": "", "keys": {}, "traits": [], "rules": []}),
        fields,
    )
}

fn trait_(id: &str, comparable_type: &str, entity_type: &str, value: &str) -> Value {
    json!({
        "trait_definition": {"id": id, "comparable_type": comparable_type, "entity_type": entity_type},
        "value": value,
    })
}

fn envelope(entity_type: &str, message_type: &str, id: Option<&str>, data: Value) -> Envelope {
    Envelope::new(entity_type, message_type, id.map(str::to_owned), data)
}

// ---------------------------------------------------------------- fixtures

/// REST companies of the fixtures, by id.
fn rest_company(id: &str) -> Value {
    match id {
        "comp_1" => json!({
            "id": "comp_1", "name": "Acme", "environment_id": "env_1", "user_count": 4,
            "keys": [
                {"id": "ek_1", "key": "Domain", "value": "Acme.Example"},
                {"id": "ek_2", "key": "stripe_id", "value": "cus_1"}
            ],
            "entity_traits": [
                {"id": "et_1", "value": "80", "definition": {"id": "td_seats", "trait_type": "number"}},
                {"id": "et_2", "value": "eu", "definition": {"id": "td_region", "trait_type": "string"}}
            ],
            "plan": {"id": "plan_pro", "name": "Pro", "plan_version_id": "pv_pro"},
            "add_ons": [{"id": "addon_1", "plan_version_id": "pv_addon"}],
            "plans": [{"id": "plan_pro", "name": "Pro"}],
            "billing_subscription": {
                "id": "sub_1", "period_start": 1_714_521_600, "period_end": 1_717_200_000,
                "products": [{"id": "prod_pro"}]
            },
            "billing_subscriptions": [{"id": "sub_1", "products": [{"id": "prod_pro"}, {"id": "prod_extra"}]}],
            "billing_credit_balances": {"cred_ai": 620.5},
            "metrics": [{
                "event_subtype": "api_call", "period": "current_month", "month_reset": "first_of_month",
                "value": 10, "created_at": "2024-05-01T00:00:00Z", "valid_until": null
            }],
            "rules": [
                {"id": "rule_override", "rule_type": "company_override", "conditions": [], "condition_groups": []},
                {"id": "rule_std", "rule_type": "standard", "conditions": [], "condition_groups": []}
            ],
            "entitlements": [
                {"feature_key": "api-calls", "event_name": "api_call", "metric_period": "current_month",
                 "month_reset": "first_of_month", "usage": 10},
                {"feature_key": "ai-tokens", "credit_id": "cred_ai", "credit_remaining": 620.5}
            ]
        }),
        "comp_Mixed" => json!({
            "id": "comp_Mixed", "environment_id": "env_1",
            "keys": [{"key": "domain", "value": "Globex.Example"}],
            "billing_credit_balances": null, "entitlements": null, "metrics": null
        }),
        "comp_3" => json!({"id": "comp_3", "keys": [{"key": "domain", "value": "three.example"}]}),
        other => panic!("no REST company {other}"),
    }
}

/// The rulesengine company the plugin makes of [`rest_company`] (spec §2).
fn converted_company(id: &str) -> Value {
    match id {
        "comp_1" => company_doc(json!({
            "id": "comp_1", "environment_id": "env_1",
            "keys": {"Domain": "Acme.Example", "stripe_id": "cus_1"},
            "traits": [
                trait_("td_seats", "int", "company", "80"),
                trait_("td_region", "string", "company", "eu")
            ],
            "base_plan_id": "plan_pro",
            "plan_version_ids": ["pv_pro", "pv_addon"],
            "billing_product_ids": ["prod_pro", "prod_extra"],
            "plan_ids": ["plan_pro"],
            "subscription": {"id": "sub_1", "period_start": "2024-05-01T00:00:00Z", "period_end": "2024-06-01T00:00:00Z"},
            "credit_balances": {"cred_ai": 620.5},
            "metrics": [{
                "account_id": "", "environment_id": "", "company_id": "",
                "event_subtype": "api_call", "period": "current_month", "month_reset": "first_of_month",
                "value": 10, "created_at": "2024-05-01T00:00:00Z", "valid_until": null
            }],
            "rules": [{"id": "rule_override", "rule_type": "company_override", "conditions": [], "condition_groups": []}],
            "entitlements": rest_company("comp_1")["entitlements"].clone(),
        })),
        "comp_Mixed" => company_doc(json!({
            "id": "comp_Mixed", "environment_id": "env_1", "keys": {"domain": "Globex.Example"}
        })),
        "comp_3" => company_doc(json!({"id": "comp_3", "keys": {"domain": "three.example"}})),
        other => panic!("no REST company {other}"),
    }
}

const COMPANY_IDS: [&str; 3] = ["comp_1", "comp_Mixed", "comp_3"];
const USER_IDS: [&str; 2] = ["user_1", "user_2"];

fn rest_user(id: &str) -> Value {
    match id {
        "user_1" => json!({
            "id": "user_1", "name": "Ann", "environment_id": "env_1",
            "keys": [
                {"key": "Email", "value": "Ann@Acme.Example"},
                {"key": "user_id", "value": "u-1"}
            ],
            "entity_traits": [{"value": "true", "definition": {"id": "td_admin", "trait_type": "boolean"}}]
        }),
        "user_2" => {
            json!({"id": "user_2", "keys": [{"key": "email", "value": "bob@globex.example"}]})
        }
        other => panic!("no REST user {other}"),
    }
}

fn converted_user(id: &str) -> Value {
    match id {
        "user_1" => user_doc(json!({
            "id": "user_1", "environment_id": "env_1",
            "keys": {"Email": "Ann@Acme.Example", "user_id": "u-1"},
            "traits": [trait_("td_admin", "bool", "user", "true")]
        })),
        "user_2" => user_doc(json!({"id": "user_2", "keys": {"email": "bob@globex.example"}})),
        other => panic!("no REST user {other}"),
    }
}

/// The bulk flags of the fixtures (rulesengine shape, with `null`s the
/// plugin must turn into `[]`, and a field it does not know).
fn fixture_flags() -> Vec<Value> {
    vec![
        json!({
            "id": "flag_1", "key": "Beta-Dashboard", "account_id": "acc_1", "environment_id": "env_1",
            "default_value": true, "rules": null, "future_field": {"kept": true}
        }),
        json!({
            "id": "flag_2", "key": "dark_mode", "default_value": false,
            "rules": [{"id": "rule_1", "conditions": null, "condition_groups": [{"conditions": [{"resource_ids": null}]}]}]
        }),
    ]
}

fn fixtures() -> Fixtures {
    Fixtures {
        flags: fixture_flags(),
        companies: COMPANY_IDS.iter().map(|id| rest_company(id)).collect(),
        users: USER_IDS.iter().map(|id| rest_user(id)).collect(),
    }
}

/// What Redis holds once the fixtures are loaded.
fn initial_model(ver: &str) -> Model {
    let mut model = Model::new(ver);
    model.flag(flag_doc(json!({
        "id": "flag_1", "key": "Beta-Dashboard", "account_id": "acc_1", "environment_id": "env_1",
        "default_value": true, "future_field": {"kept": true}
    })));
    model.flag(flag_doc(json!({
        "id": "flag_2", "key": "dark_mode",
        "rules": [{"id": "rule_1", "conditions": [], "condition_groups": [{"conditions": [{"resource_ids": []}]}]}]
    })));
    for id in COMPANY_IDS {
        model.entity("company", converted_company(id));
    }
    for id in USER_IDS {
        model.entity("user", converted_user(id));
    }
    model
}

// ---------------------------------------------------------------- harness

/// A dev server, a Redis and (when started) a node, on a runtime of their own.
struct Harness {
    node: Option<Node>,
    server: DevServer,
    backend: Backend,
    health: Option<SocketAddr>,
    http: ureq::Agent,
    vars: BTreeMap<&'static str, String>,
    dir: tempfile::TempDir,
    rt: Option<tokio::runtime::Runtime>,
}

fn http_agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(5)))
        .build()
        .into()
}

/// `GET url` → (status, JSON body); (0, null) when nothing answers.
fn get_json(agent: &ureq::Agent, url: &str) -> (u16, Value) {
    match agent.get(url).call() {
        Ok(mut response) => {
            let status = response.status().as_u16();
            let text = response.body_mut().read_to_string().unwrap_or_default();
            (status, serde_json::from_str(&text).unwrap_or(Value::Null))
        }
        Err(_) => (0, Value::Null),
    }
}

/// Wait until `condition` holds; panic naming `what` otherwise.
fn eventually(what: &str, condition: impl FnMut() -> bool) {
    assert!(wait_until(WAIT, condition), "timed out waiting for {what}");
}

/// The `/ready` body of spec §6 at 200.
fn assert_ready_body(body: &Value, version: &str) {
    let fields: BTreeSet<&str> = body
        .as_object()
        .expect("object body")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        fields,
        BTreeSet::from([
            "status",
            "ready",
            "connected",
            "components",
            "cache_version",
            "timestamp"
        ]),
        "{body}"
    );
    assert_eq!(body["status"], "healthy", "{body}");
    assert_eq!(body["ready"], true, "{body}");
    assert_eq!(body["connected"], true, "{body}");
    assert_eq!(
        body["components"],
        json!({"redis": "connected", "datastream": "ready"}),
        "{body}"
    );
    assert_eq!(body["cache_version"], version, "{body}");
    let timestamp = body["timestamp"].as_str().expect("timestamp");
    let shape = timestamp.len() == 20
        && timestamp.char_indices().all(|(i, c)| match i {
            4 | 7 => c == '-',
            10 => c == 'T',
            13 | 16 => c == ':',
            19 => c == 'Z',
            _ => c.is_ascii_digit(),
        });
    assert!(shape, "timestamp {timestamp:?} is not RFC 3339 UTC");
}

impl Harness {
    fn new(backend: Backend, fixtures: Fixtures) -> Harness {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let server = rt
            .block_on(DevServer::start(ServerConfig {
                fixtures,
                ..ServerConfig::default()
            }))
            .expect("dev server");
        let dir = tempfile::tempdir().expect("tempdir");
        let plugin_dir = dir.path().join("plugins");
        std::fs::create_dir_all(&plugin_dir).expect("plugin dir");
        std::fs::copy(&plugins().schematic, plugin_dir.join("schematic.wasm"))
            .expect("copy the schematic plugin");
        let mut vars: BTreeMap<&'static str, String> = BTreeMap::from([
            ("SCHEMATIC_API_KEY", API_KEY.to_owned()),
            ("SCHEMATIC_API_URL", server.http_url()),
            ("ASYNC_LOADER_RATE_LIMIT_RPS", "1000".to_owned()),
            ("CIRCUIT_BREAKER_TIMEOUT", "200ms".to_owned()),
            ("ASYNC_LOADER_CIRCUIT_BREAKER_TIMEOUT", "200ms".to_owned()),
        ]);
        vars.extend(backend.vars());
        Harness {
            node: None,
            server,
            backend,
            health: None,
            http: http_agent(),
            vars,
            dir,
            rt: Some(rt),
        }
    }

    fn rt(&self) -> &tokio::runtime::Runtime {
        self.rt.as_ref().expect("runtime")
    }

    /// The real profile from the variables, with test paths and short
    /// delays.
    fn config(&self) -> Config {
        let vars = self.vars.clone();
        let mut config =
            schematic_env::config_from(|name| vars.get(name).cloned()).expect("Schematic profile");
        config.data_dir = self.dir.path().join("data");
        config.plugins.dir = self.dir.path().join("plugins");
        config.plugins.watch = false;
        config.health.listen = "127.0.0.1:0".into();
        let SourceConfig::Schematic(source) = &mut config.sources[0] else {
            panic!("the profile has a schematic source");
        };
        source.ping_interval_ms = 1000;
        source.pong_timeout_ms = 10_000;
        source.reconnect_max_ms = 100;
        source.unauthorized_retry_ms = 300;
        source.load.page_retries = 1;
        source.load.retry_backoff_ms = 10;
        source.load.retry_incomplete_ms = 200;
        let redis = config.redis.as_mut().expect("redis writer");
        redis.timeout_ms = 1000;
        config
    }

    fn start(&mut self) {
        assert!(self.node.is_none(), "node already running");
        let config = self.config();
        let node = self
            .rt()
            .block_on(async {
                let mut node = Node::open(config).await?;
                node.start().await?;
                Ok::<_, emcachers::node::NodeError>(node)
            })
            .expect("node starts");
        self.health = node.health_addr();
        self.node = Some(node);
    }

    fn stop(&mut self) {
        if let Some(node) = self.node.take() {
            self.rt().block_on(node.shutdown(Duration::from_secs(5)));
        }
        self.health = None;
    }

    fn node(&self) -> &Node {
        self.node.as_ref().expect("node running")
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.health.expect("health endpoints"))
    }

    fn ready(&self) -> (u16, Value) {
        get_json(&self.http, &self.url("/ready"))
    }

    fn debug(&self) -> Value {
        let (status, body) = get_json(&self.http, &self.url("/debug"));
        assert_eq!(status, 200, "/debug: {body}");
        body
    }

    /// A counter of the datastream source, from `/debug`.
    fn counter(&self, name: &str) -> u64 {
        let debug = self.debug();
        debug["sources"][0]["status"]["counters"][name]
            .as_u64()
            .unwrap_or_else(|| panic!("no datastream counter {name} in {debug}"))
    }

    /// Wait until `/ready` satisfies `accept`; its answer.
    fn ready_when(&self, what: &str, accept: impl Fn(u16, &Value) -> bool) -> (u16, Value) {
        let mut last = (0, Value::Null);
        let ok = wait_until(WAIT, || {
            last = self.ready();
            accept(last.0, &last.1)
        });
        assert!(ok, "timed out waiting for /ready: {what}; last {last:?}");
        last
    }

    /// Wait for `/ready` 200; its body.
    fn wait_ready(&self) -> Value {
        self.ready_when("200", |status, _| status == 200).1
    }

    /// Wait until Redis holds exactly `model`.
    fn converge(&self, model: &Model) {
        let mut last = None;
        let ok = wait_until(WAIT, || match self.backend.snapshot() {
            Ok(snapshot) => {
                let same = snapshot == model.keys;
                last = Some(snapshot);
                same
            }
            Err(_) => false,
        });
        if !ok {
            panic!("{}", diff(&model.keys, last.as_ref()));
        }
    }

    /// Redis holds exactly `model` now.
    fn assert_holds(&self, model: &Model) {
        let snapshot = self.backend.snapshot().expect("read Redis");
        assert!(
            snapshot == model.keys,
            "{}",
            diff(&model.keys, Some(&snapshot))
        );
    }

    fn push(&self, envelopes: &[Envelope]) -> Vec<String> {
        self.server
            .push(envelopes)
            .into_iter()
            .map(|id| id.to_string())
            .collect()
    }

    /// REST requests the dev server answered so far.
    fn rest_requests(&self) -> u64 {
        self.server.stats().rest_requests.values().sum()
    }

    /// The client messages of the latest connection, as `data` objects.
    fn latest_starts(&self) -> Vec<Value> {
        let stats = self.server.stats();
        let connection = stats.headers.last().expect("a connection").connection;
        stats
            .client_messages
            .iter()
            .filter(|m| m.connection == connection)
            .map(|m| m.message["data"].clone())
            .collect()
    }

    /// Wait for a new, open connection after `connects` upgrades.
    fn wait_reconnect(&self, connects: u64) {
        eventually("the reconnect", || {
            let stats = self.server.stats();
            stats.connections == 1
                && stats.connects_total > connects
                && stats.headers.last().is_some_and(|c| c.accepted && c.open)
        });
    }

    /// The latest connection's starts carried `replay_from` = `cursor`.
    fn assert_replayed_from(&self, cursor: &str) {
        let mut starts = Vec::new();
        eventually("the reconnect's three starts", || {
            starts = self.latest_starts();
            starts.len() >= 3
        });
        let types: Vec<&str> = starts
            .iter()
            .map(|s| s["entity_type"].as_str().unwrap_or_default())
            .collect();
        assert_eq!(
            types,
            [
                "rulesengine.Companies",
                "rulesengine.Users",
                "rulesengine.Flags"
            ],
            "{starts:?}"
        );
        for start in &starts {
            assert_eq!(start["action"], "start", "{start}");
            assert_eq!(start["replay_from"], cursor, "{start}");
        }
    }

    fn rejected(&self) -> Vec<RejectedRecord> {
        let store = self.node().store.clone();
        self.rt()
            .block_on(async move { store.rejected(0, 1000).await })
            .expect("rejected records")
    }

    /// Wait until the Redis writer has applied the whole oplog.
    fn wait_applied(&self) {
        eventually("the Redis writer to apply the oplog head", || {
            let debug = self.debug();
            let head = debug["oplog"]["head"].as_i64().unwrap_or(i64::MAX);
            debug["writers"][0]["status"]["applied_offset"]
                .as_i64()
                .is_some_and(|applied| applied >= head)
        });
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let (Some(node), Some(rt)) = (self.node.take(), self.rt.as_ref()) {
            rt.block_on(node.shutdown(Duration::from_secs(5)));
        }
        if let Some(rt) = self.rt.take() {
            rt.shutdown_timeout(Duration::from_secs(5));
        }
    }
}

/// What differs between the model and Redis.
fn diff(expected: &BTreeMap<String, Value>, actual: Option<&BTreeMap<String, Value>>) -> String {
    let Some(actual) = actual else {
        return "Redis never answered".into();
    };
    let mut out = String::from("Redis does not hold the model:\n");
    for (key, value) in expected {
        match actual.get(key) {
            None => out.push_str(&format!("  missing    {key} = {value}\n")),
            Some(got) if got != value => {
                out.push_str(&format!(
                    "  different  {key}\n    expected {value}\n    found    {got}\n"
                ));
            }
            Some(_) => {}
        }
    }
    for (key, value) in actual {
        if !expected.contains_key(key) {
            out.push_str(&format!("  unexpected {key} = {value}\n"));
        }
    }
    out
}

// ---------------------------------------------------------------- flows

/// Initial load behind `/ready`, then every message type with the merge
/// rules, lookup changes and deletes, on `backend`.
fn main_flow(backend: Backend) {
    let mut h = Harness::new(backend, fixtures());
    // 1. The load cannot finish while every page fails: 503, loading.
    h.server.fail_pages(FAIL_FOREVER, 500);
    h.start();
    h.ready_when("connected_loading", |_, body| {
        body["components"]["datastream"] == "connected_loading"
    });
    eventually("an incomplete load", || h.counter("loads_incomplete") >= 1);
    let (status, body) = h.ready();
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["ready"], false, "{body}");
    assert_eq!(body["connected"], true, "{body}");
    assert_eq!(
        body["components"]["datastream"], "connected_loading",
        "{body}"
    );
    assert_eq!(body["cache_version"], "v1", "{body}");
    assert_eq!(h.counter("pages"), 0);
    assert!(h.counter("page_failures") > 0);
    let early = h.backend.snapshot().expect("read Redis");
    assert!(
        early
            .keys()
            .all(|k| !k.starts_with("schematic:company:") && !k.starts_with("schematic:user:")),
        "no company or user before the load: {early:?}"
    );

    // The pages come back: the next attempt completes, and 200 means landed.
    h.server.fail_pages(0, 500);
    let body = h.wait_ready();
    assert_ready_body(&body, "v1");
    let mut model = initial_model("v1");
    h.assert_holds(&model);
    assert_eq!(h.counter("loads_completed"), 1);
    let head = h.server.head().to_string();
    eventually("the replay cursor mirrored into Redis", || {
        h.backend.get(CURSOR_KEY).ok().flatten().as_deref() == Some(head.as_str())
    });
    let lock = h.backend.get(LOCK_KEY).expect("GET lock");
    assert!(
        lock.as_deref().is_some_and(|t| t.starts_with("emcachers-")),
        "writer lock {lock:?}"
    );
    let pttl: i64 = h.backend.query(redis::cmd("PTTL").arg(LOCK_KEY)).unwrap();
    assert!((1..=15_000).contains(&pttl), "lock PTTL {pttl}");
    // Plain string keys without expiry (CACHE_TTL unset).
    for key in [
        "schematic:company:v1:comp_1",
        "schematic:company:v1:domain:acme.example",
        "schematic:user:v1:email:ann@acme.example",
        "schematic:flags:v1:dark_mode",
    ] {
        let kind: String = h.backend.query(redis::cmd("TYPE").arg(key)).unwrap();
        let pttl: i64 = h.backend.query(redis::cmd("PTTL").arg(key)).unwrap();
        assert_eq!((kind.as_str(), pttl), ("string", -1), "{key}");
    }
    let confirmations = h.counter("confirmations");

    // 2a. Single flags: full, partial (a full replacement), delete.
    h.push(&[
        envelope(
            FLAG,
            "full",
            None,
            json!({"id": "flag_3", "key": "New_Flag", "default_value": true, "rules": []}),
        ),
        envelope(
            FLAG,
            "partial",
            None,
            json!({"key": "dark_mode", "default_value": true}),
        ),
        envelope(FLAG, "delete", None, json!({"key": "Beta-Dashboard"})),
        envelope(
            FLAG,
            "full",
            None,
            json!({"id": "flag_doomed", "key": "doomed"}),
        ),
    ]);
    model.flag(flag_doc(
        json!({"id": "flag_3", "key": "New_Flag", "default_value": true}),
    ));
    model.flag(flag_doc(json!({"key": "dark_mode", "default_value": true})));
    model.remove_flag("beta-dashboard");
    model.flag(flag_doc(json!({"id": "flag_doomed", "key": "doomed"})));
    h.converge(&model);

    // 2b. The bulk message sets every flag and evicts the missing ones.
    let bulk = vec![
        json!({"id": "flag_2", "key": "dark_mode", "default_value": false, "rules": []}),
        json!({"id": "flag_3", "key": "NEW_FLAG", "default_value": false}),
        json!({"id": "flag_4", "key": "bulk_only", "rules": null}),
    ];
    h.push(&[envelope(FLAGS, "full", None, json!(bulk))]);
    model.only_flags(
        bulk.into_iter()
            .map(|flag| flag_doc(with(flag, json!({"rules": []})))),
    );
    h.converge(&model);

    // 2c. Companies and users.
    let comp_2 = json!({
        "id": "comp_2", "keys": {"domain": "Two.Example"}, "credit_balances": null,
        "brand_new_field": [1, {"x": null}]
    });
    h.push(&[envelope(COMPANY, "full", Some("comp_2"), comp_2.clone())]);
    // Unknown fields kept, `null` credit balances written as `{}`.
    model.entity(
        "company",
        company_doc(with(comp_2, json!({"credit_balances": {}}))),
    );
    h.converge(&model);

    let partial = json!({
        "id": "comp_1",
        "keys": {"Region": "EU", "stripe_id": "cus_9"},
        "traits": [trait_("td_tier", "string", "company", "gold")],
        "metrics": [
            {"event_subtype": "api_call", "period": "current_month", "month_reset": "first_of_month", "value": 42},
            {"event_subtype": "export", "period": "all_time", "month_reset": "first_of_month", "value": 3}
        ],
        "credit_balances": {"cred_new": 5}
    });
    let user_partial = json!({"keys": {"user_id": "u-1b"}, "traits": []});
    h.push(&[
        envelope(COMPANY, "partial", Some("comp_1"), partial.clone()),
        // No cached base: skipped and counted.
        envelope(
            COMPANY,
            "partial",
            Some("comp_ghost"),
            json!({"id": "comp_ghost", "keys": {"domain": "ghost.example"}}),
        ),
        envelope(
            USER,
            "partial",
            Some("user_ghost"),
            json!({"keys": {"email": "ghost@x.example"}}),
        ),
        // A lookup value change: only the old lookup key goes.
        envelope(
            COMPANY,
            "full",
            Some("comp_2"),
            json!({"id": "comp_2", "keys": {"domain": "Two-New.Example"}}),
        ),
        envelope(
            USER,
            "full",
            Some("user_3"),
            json!({"id": "user_3", "keys": {"email": "Cy@X.Example"}}),
        ),
        envelope(USER, "partial", Some("user_1"), user_partial),
        // Confirmations are ignored; an error message is counted.
        envelope(
            "rulesengine.Companies",
            "full",
            None,
            json!({"subscribed": true}),
        ),
        envelope(
            "rulesengine.Users",
            "full",
            None,
            json!({"subscribed": true}),
        ),
        envelope(
            COMPANY,
            "error",
            None,
            json!({"error": "boom", "keys": {"domain": "x"}, "entity_type": COMPANY}),
        ),
    ]);
    // Spec §4: keys shallow-merge, traits replaced, metrics upserted by
    // (event_subtype, period, month_reset), balances shallow-merge, and the
    // entitlements' usage follows the merged metric.
    let mut comp_1 = model.doc("company", "comp_1");
    comp_1["keys"] = json!({"Domain": "Acme.Example", "stripe_id": "cus_9", "Region": "EU"});
    comp_1["traits"] = partial["traits"].clone();
    comp_1["metrics"] = json!([
        {"event_subtype": "api_call", "period": "current_month", "month_reset": "first_of_month", "value": 42},
        {"event_subtype": "export", "period": "all_time", "month_reset": "first_of_month", "value": 3}
    ]);
    comp_1["credit_balances"] = json!({"cred_ai": 620.5, "cred_new": 5});
    comp_1["entitlements"][0]["usage"] = json!(42);
    model.entity("company", comp_1);
    model.entity(
        "company",
        company_doc(json!({"id": "comp_2", "keys": {"domain": "Two-New.Example"}})),
    );
    model.entity(
        "user",
        user_doc(json!({"id": "user_3", "keys": {"email": "Cy@X.Example"}})),
    );
    let mut user_1 = model.doc("user", "user_1");
    user_1["keys"] = json!({"Email": "Ann@Acme.Example", "user_id": "u-1b"});
    user_1["traits"] = json!([]);
    model.entity("user", user_1);
    h.converge(&model);
    assert!(
        !model
            .keys
            .contains_key("schematic:company:v1:stripe_id:cus_1")
            && model
                .keys
                .contains_key("schematic:company:v1:domain:acme.example"),
        "the model itself drops exactly the changed lookup"
    );

    // 2d. Deletes name only some lookups; every cached one goes.
    h.push(&[
        envelope(
            COMPANY,
            "delete",
            Some("comp_1"),
            json!({"id": "comp_1", "keys": {"domain": "acme.example"}}),
        ),
        envelope(
            USER,
            "delete",
            Some("user_1"),
            json!({"id": "user_1", "keys": {}}),
        ),
    ]);
    model.remove_entity("company", "comp_1");
    model.remove_entity("user", "user_1");
    h.converge(&model);
    assert!(
        model
            .keys
            .keys()
            .all(|k| !k.contains("cus_9") && !k.contains("region:eu") && !k.contains("u-1b")),
        "lookups not named in the deletes are gone too"
    );

    // The skipped partials are counted as rejected, with the reason.
    let rejected = h.rejected();
    for ghost in ["comp_ghost", "user_ghost"] {
        let record = rejected
            .iter()
            .find(|r| r.doc_id == ghost)
            .unwrap_or_else(|| panic!("{ghost} not counted: {rejected:?}"));
        assert!(record.error.contains("cached base"), "{}", record.error);
    }
    assert_eq!(rejected.len(), 2, "{rejected:?}");
    // The error message is counted, the connection kept, confirmations
    // ignored.
    assert_eq!(h.counter("server_errors"), 1);
    assert_eq!(h.counter("confirmations"), confirmations + 2);
    assert_eq!(h.counter("connects"), 1);
    let stats = h.server.stats();
    assert_eq!((stats.connections, stats.connects_total), (1, 1));
    assert_eq!(h.counter("malformed"), 0);
    assert_eq!(h.ready().0, 200);
    h.stop();
}

/// Stale-version keys go, current ones stay; then a version change
/// rebuilds under the new version and the old one is cleaned up.
fn cleanup_flow(backend: Backend) {
    let mut h = Harness::new(backend, fixtures());
    h.vars.insert("CACHE_CLEANUP_INTERVAL", "1s".into());
    h.start();
    let body = h.wait_ready();
    assert_eq!(body["cache_version"], "v1");
    let model = initial_model("v1");
    h.converge(&model);

    let stale: Vec<String> = (0..30)
        .map(|i| match i % 3 {
            0 => format!("schematic:company:old:comp_{i}"),
            1 => format!("schematic:flags:old:flag_{i}"),
            _ => format!("schematic:user:v0:email:u{i}@x.example"),
        })
        .collect();
    for key in &stale {
        h.backend.set(key, "\"stale\"");
    }
    h.backend.set("unrelated:old:key", "kept");
    let before = h.backend.snapshot().expect("read Redis");
    assert!(
        stale.iter().all(|k| before.contains_key(k)),
        "stale keys set"
    );
    if matches!(h.backend, Backend::Cluster(_)) {
        let spread = h.backend.per_master("schematic:*:old:*");
        assert!(
            spread.iter().all(|n| *n > 0),
            "stale keys on every master: {spread:?}"
        );
    }
    h.converge(&model);
    assert_eq!(
        h.backend.get("unrelated:old:key").unwrap().as_deref(),
        Some("kept")
    );
    let removed = h.debug()["writers"][0]["status"]["cleanup_removed"]
        .as_u64()
        .unwrap();
    assert!(removed >= stale.len() as u64, "cleanup_removed {removed}");

    // A new version: rebuilt under v2, v1 cleaned up.
    h.stop();
    h.vars.insert("SCHEMATIC_CACHE_VERSION", "v2".into());
    h.start();
    let body = h.ready_when("200 with cache_version v2", |status, body| {
        status == 200 && body["cache_version"] == "v2"
    });
    assert_ready_body(&body.1, "v2");
    h.converge(&model.with_version("v2"));
    h.stop();
}

// ---------------------------------------------------------------- tests

/// Spec §2, §4, §5, §6 on a single Redis node: the initial load lands
/// exactly the §5 keys before `/ready` turns 200; every message type
/// applies with the merge rules; lookup changes and deletes leave no stale
/// key.
#[test]
fn load_and_every_message_type_on_a_single_node() {
    main_flow(Backend::single());
}

/// The same flow on a 3-master Redis Cluster.
#[test]
fn load_and_every_message_type_on_a_cluster() {
    main_flow(Backend::cluster());
}

/// A dropped connection reconnects with `replay_from` = the last stream
/// id: what was pushed meanwhile arrives, nothing is loaded over REST.
#[test]
fn reconnect_replays_from_the_last_stream_id_without_reloading() {
    let mut h = Harness::new(Backend::single(), fixtures());
    h.start();
    h.wait_ready();
    let mut model = initial_model("v1");
    h.converge(&model);
    let ids = h.push(&[envelope(
        FLAG,
        "full",
        None,
        json!({"id": "f_before", "key": "before_drop"}),
    )]);
    model.flag(flag_doc(json!({"id": "f_before", "key": "before_drop"})));
    h.converge(&model);
    let cursor = ids[0].clone();
    let rest = h.rest_requests();
    let connects = h.server.stats().connects_total;

    assert_eq!(h.server.drop_connections(), 1);
    // Pushed while the client is away (or reconnecting).
    h.push(&[
        envelope(
            COMPANY,
            "full",
            Some("comp_r"),
            json!({"id": "comp_r", "keys": {"domain": "r.example"}}),
        ),
        envelope(
            USER,
            "partial",
            Some("user_2"),
            json!({"keys": {"slack": "@bob"}}),
        ),
        envelope(FLAG, "delete", None, json!({"key": "dark_mode"})),
    ]);
    h.wait_reconnect(connects);
    // And right after it.
    h.push(&[
        envelope(
            COMPANY,
            "partial",
            Some("comp_r"),
            json!({"keys": {"domain": "r2.example"}}),
        ),
        envelope(
            FLAG,
            "full",
            None,
            json!({"id": "f_after", "key": "after_reconnect"}),
        ),
    ]);
    model.entity(
        "company",
        company_doc(json!({"id": "comp_r", "keys": {"domain": "r2.example"}})),
    );
    let mut user_2 = model.doc("user", "user_2");
    user_2["keys"]["slack"] = json!("@bob");
    model.entity("user", user_2);
    model.remove_flag("dark_mode");
    model.flag(flag_doc(json!({"id": "f_after", "key": "after_reconnect"})));
    h.converge(&model);

    h.assert_replayed_from(&cursor);
    let stats = h.server.stats();
    let info = stats.headers.last().expect("headers");
    assert_eq!(info.api_key.as_deref(), Some(API_KEY));
    assert_eq!(info.mode.as_deref(), Some("replicator"));
    assert_eq!(info.client.as_deref(), Some("emcachers"));
    assert!(info.client_version.is_some());
    assert_eq!(h.rest_requests(), rest, "nothing reloaded over REST");
    assert_eq!(h.counter("loads_completed"), 1);
    assert_eq!(h.counter("connects"), 2);
    h.wait_ready();
}

/// A restarted node resumes from its stored cursor with `replay_from` and
/// does not run the REST load again.
#[test]
fn restart_resumes_with_replay_from_without_loading_again() {
    let mut h = Harness::new(Backend::single(), fixtures());
    h.start();
    h.wait_ready();
    let mut model = initial_model("v1");
    let ids = h.push(&[envelope(
        COMPANY,
        "full",
        Some("comp_r"),
        json!({"id": "comp_r", "keys": {"domain": "r.example"}}),
    )]);
    model.entity(
        "company",
        company_doc(json!({"id": "comp_r", "keys": {"domain": "r.example"}})),
    );
    h.converge(&model);
    let cursor = ids[0].clone();
    eventually("the replay cursor mirrored into Redis", || {
        h.backend.get(CURSOR_KEY).ok().flatten().as_deref() == Some(cursor.as_str())
    });
    let rest = h.rest_requests();
    h.stop();

    // Pushed while the node is down.
    let ids = h.push(&[
        envelope(
            FLAG,
            "full",
            None,
            json!({"id": "f_down", "key": "while_down"}),
        ),
        envelope(
            COMPANY,
            "delete",
            Some("comp_Mixed"),
            json!({"id": "comp_Mixed", "keys": {}}),
        ),
    ]);
    model.flag(flag_doc(json!({"id": "f_down", "key": "while_down"})));
    model.remove_entity("company", "comp_Mixed");

    h.start();
    let body = h.wait_ready();
    assert_ready_body(&body, "v1");
    h.converge(&model);
    h.assert_replayed_from(&cursor);
    assert_eq!(h.rest_requests(), rest, "no REST load after a restart");
    assert_eq!(h.counter("loads_completed"), 0);
    assert_eq!(h.counter("pages"), 0);
    let last = ids[1].clone();
    eventually("the new cursor mirrored into Redis", || {
        h.backend.get(CURSOR_KEY).ok().flatten().as_deref() == Some(last.as_str())
    });
}

/// `reload` drops the cursor and loads everything again; a complete reload
/// evicts what REST no longer has, an incomplete one evicts nothing.
#[test]
fn reload_loads_again_and_evicts_only_after_a_complete_load() {
    let mut h = Harness::new(Backend::single(), fixtures());
    h.start();
    h.wait_ready();
    let mut model = initial_model("v1");
    h.converge(&model);
    // Give the node a replay cursor on a connection of its own.
    let ids = h.push(&[envelope(
        FLAG,
        "full",
        None,
        json!({"id": "f1", "key": "with_cursor"}),
    )]);
    model.flag(flag_doc(json!({"id": "f1", "key": "with_cursor"})));
    h.converge(&model);
    let connects = h.server.stats().connects_total;
    assert_eq!(h.server.drop_connections(), 1);
    h.wait_reconnect(connects);
    h.assert_replayed_from(&ids[0]);
    h.wait_ready();
    let rest = h.rest_requests();

    // comp_3 and user_2 leave the REST lists: the complete reload evicts them.
    h.server.set_rest(
        Some(vec![rest_company("comp_1"), rest_company("comp_Mixed")]),
        Some(vec![rest_user("user_1")]),
    );
    assert_eq!(h.server.reload(), 1);
    eventually("a second complete load", || {
        h.counter("loads_completed") == 2
    });
    assert_eq!(h.counter("reloads"), 1);
    model.remove_entity("company", "comp_3");
    model.remove_entity("user", "user_2");
    h.converge(&model);
    assert_ready_body(&h.wait_ready(), "v1");
    let rest_after = h.rest_requests();
    assert!(rest_after > rest, "REST read again: {rest} → {rest_after}");
    // The connection started with a replay; the reload asked for
    // everything again, without it.
    let starts = h.latest_starts();
    assert_eq!(starts.len(), 6, "{starts:?}");
    assert!(
        starts[..3]
            .iter()
            .all(|s| s["replay_from"] == ids[0].as_str())
    );
    assert!(
        starts[3..].iter().all(|s| s.get("replay_from").is_none()),
        "{starts:?}"
    );

    // comp_Mixed leaves too, but the pages fail: nothing is evicted.
    h.server.set_rest(Some(vec![rest_company("comp_1")]), None);
    h.server.fail_pages(FAIL_FOREVER, 503);
    let incomplete = h.counter("loads_incomplete");
    assert_eq!(h.server.reload(), 1);
    eventually("an incomplete reload", || {
        h.counter("loads_incomplete") > incomplete
    });
    h.wait_applied();
    h.assert_holds(&model);
    let (status, body) = h.ready();
    assert_eq!(
        status, 503,
        "not ready while the reload is incomplete: {body}"
    );
    assert_eq!(body["components"]["datastream"], "connected_loading");

    // Pages back: the retried load completes and evicts comp_Mixed.
    h.server.fail_pages(0, 503);
    model.remove_entity("company", "comp_Mixed");
    h.converge(&model);
    h.wait_ready();
    assert_eq!(h.counter("loads_completed"), 3);
}

/// A rejected key (close 4001) shows on `/ready` and the node keeps
/// retrying; once the key is accepted again it resumes with a replay.
#[test]
fn rejected_key_shows_on_ready_and_recovers() {
    let mut h = Harness::new(Backend::single(), fixtures());
    h.start();
    h.wait_ready();
    let mut model = initial_model("v1");
    let ids = h.push(&[envelope(
        FLAG,
        "full",
        None,
        json!({"id": "f1", "key": "before_reject"}),
    )]);
    model.flag(flag_doc(json!({"id": "f1", "key": "before_reject"})));
    h.converge(&model);
    let rest = h.rest_requests();

    assert_eq!(h.server.reject_key(API_KEY), 1);
    let (status, body) = h.ready_when("disconnected with a 4001 error", |_, body| {
        body["components"]["datastream"] == "disconnected"
            && body["error"].as_str().is_some_and(|e| e.contains("4001"))
    });
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["ready"], false);
    assert_eq!(body["connected"], false);
    assert!(h.counter("unauthorized") >= 1);
    // It keeps retrying (slowly), and while every retry is rejected /ready
    // stays 503 with the error: it never flickers to 200 on the short-lived
    // connections the server closes with 4001.
    // Sampled back to back: the window of such a connection is short.
    let attempts = h.server.stats().connects_total;
    let mut samples: BTreeMap<String, usize> = BTreeMap::new();
    let deadline = Instant::now() + WAIT;
    while h.server.stats().connects_total < attempts + 8 {
        assert!(Instant::now() < deadline, "no retries: {samples:?}");
        let (status, body) = h.ready();
        let sample = format!(
            "{status} {} error={}",
            body["components"]["datastream"],
            body["error"].as_str().unwrap_or("none")
        );
        *samples.entry(sample).or_default() += 1;
    }
    assert_eq!(
        samples.keys().collect::<Vec<_>>(),
        ["503 \"disconnected\" error=the datastream rejected the API key (close code 4001)"],
        "/ready while rejected: {samples:?}"
    );
    assert!(
        h.server.stats().rejected_connects >= 8,
        "the retries are rejected"
    );
    assert!(h.backend.snapshot().unwrap() == model.keys, "data kept");

    h.server.allow_key(API_KEY);
    let body = h.wait_ready();
    assert_ready_body(&body, "v1");
    h.assert_replayed_from(&ids[0]);
    assert_eq!(h.rest_requests(), rest, "no reload after 4001");
    // Still replicating.
    h.push(&[envelope(
        FLAG,
        "full",
        None,
        json!({"id": "f2", "key": "after_allow"}),
    )]);
    model.flag(flag_doc(json!({"id": "f2", "key": "after_allow"})));
    h.converge(&model);
}

/// A bulk flags message over 1 MiB arrives and lands whole.
#[test]
fn bulk_flags_over_one_mebibyte_land_whole() {
    let mut h = Harness::new(Backend::single(), fixtures());
    h.start();
    h.wait_ready();
    let mut model = initial_model("v1");
    h.converge(&model);

    let flags: Vec<Value> = (0..3000)
        .map(|i| {
            json!({
                "id": format!("flag_big_{i}"), "key": format!("Big_{i:05}"),
                "account_id": "acc_1", "environment_id": "env_1", "default_value": i % 2 == 0,
                "rules": [{
                    "id": format!("rule_{i}"), "name": "x".repeat(400),
                    "conditions": [], "condition_groups": []
                }]
            })
        })
        .collect();
    let bulk = envelope(FLAGS, "full", None, json!(flags));
    let size = serde_json::to_string(&bulk).unwrap().len();
    assert!(size > 1 << 20, "the message is {size} bytes");
    h.push(&[bulk]);
    model.only_flags(flags);
    h.converge(&model);
    assert_eq!(h.counter("malformed"), 0);
    assert_eq!(h.counter("connects"), 1, "no reconnect");
    assert!(h.counter("bytes") > 1 << 20);
}

/// Redis stops while messages keep coming, then restarts empty: every
/// entity lands, nothing is lost; `/ready` is 503 meanwhile.
#[test]
fn redis_stopped_and_restarted_under_load_loses_nothing() {
    let mut h = Harness::new(Backend::single(), fixtures());
    h.start();
    h.wait_ready();
    let mut model = initial_model("v1");
    h.converge(&model);

    const IDS: usize = 150;
    let pushed = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let message = |i: usize| {
        let id = format!("comp_load_{}", i % IDS);
        json!({"id": id, "keys": {"load_id": format!("L{}", i % IDS)}, "seq": i})
    };
    let total = std::thread::scope(|scope| {
        let server = &h.server;
        let pusher = scope.spawn(|| {
            let mut i = 0;
            while !stop.load(Ordering::Acquire) {
                let doc = message(i);
                let id = doc["id"].as_str().unwrap().to_owned();
                server.push(&[envelope(COMPANY, "full", Some(&id), doc)]);
                i += 1;
                pushed.store(i, Ordering::Release);
                // Pacing of the load, not synchronisation.
                std::thread::sleep(Duration::from_millis(3));
            }
            i
        });
        let at_least = |n: usize| {
            eventually(&format!("{n} messages pushed"), || {
                pushed.load(Ordering::Acquire) >= n
            })
        };
        at_least(200);
        let Backend::Single(redis) = &h.backend else {
            unreachable!()
        };
        redis.stop();
        let down_at = pushed.load(Ordering::Acquire);
        let (status, body) = h.ready_when("redis disconnected", |_, body| {
            body["components"]["redis"] == "disconnected"
        });
        assert_eq!(status, 503, "{body}");
        assert_eq!(body["ready"], false);
        at_least(down_at + 300);
        redis.restart();
        let up_at = pushed.load(Ordering::Acquire);
        at_least(up_at + 200);
        stop.store(true, Ordering::Release);
        pusher.join().expect("pusher")
    });
    assert!(total >= 700, "{total} messages pushed");
    // The last message of each id wins.
    for i in total.saturating_sub(IDS)..total {
        model.entity("company", company_doc(message(i)));
    }
    h.converge(&model);
    let body = h.wait_ready();
    assert_ready_body(&body, "v1");
    let writer = h.debug()["writers"][0]["status"].clone();
    let bootstraps = writer["bootstraps"].as_u64().unwrap();
    assert!(bootstraps >= 1, "the empty Redis was rebuilt: {writer}");
    assert_eq!(h.rejected().len(), 0);
    let head = h.server.head().to_string();
    eventually("the replay cursor restored in Redis", || {
        h.backend.get(CURSOR_KEY).ok().flatten().as_deref() == Some(head.as_str())
    });

    // Redis hangs (its data kept) while messages come: the writer's calls
    // time out, it waits and retries from its offset, nothing is skipped.
    let Backend::Single(redis) = &h.backend else {
        unreachable!()
    };
    let paused = redis.cli(&["client", "pause", "3000", "all"]);
    assert!(paused.contains("OK"), "{paused}");
    let mut updates = Vec::new();
    for i in 0..IDS {
        let doc = json!({"id": format!("comp_load_{i}"), "keys": {"load_id": format!("P{i}")}});
        updates.push(envelope(
            COMPANY,
            "full",
            Some(&format!("comp_load_{i}")),
            doc.clone(),
        ));
        model.entity("company", company_doc(doc));
    }
    h.push(&updates);
    let (status, body) = h.ready_when("redis disconnected while paused", |_, body| {
        body["components"]["redis"] == "disconnected"
    });
    assert_eq!(status, 503, "{body}");
    h.converge(&model);
    h.wait_ready();
    let writer = h.debug()["writers"][0]["status"].clone();
    assert_eq!(
        writer["bootstraps"].as_u64(),
        Some(bootstraps),
        "resumed from its offset, not rebuilt: {writer}"
    );
}

/// Stale-version cleanup on a single node, and after a version change.
#[test]
fn stale_version_cleanup_on_a_single_node() {
    cleanup_flow(Backend::single());
}

/// Stale-version cleanup on a cluster scans every master.
#[test]
fn stale_version_cleanup_on_a_cluster() {
    cleanup_flow(Backend::cluster());
}

/// Kills the child on drop, so no process outlives the test.
struct ChildGuard(std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// `emcachers run` with only the Go replicator's environment: `/ready`
/// turns 200, the keys are in Redis, SIGTERM stops it cleanly.
#[test]
fn env_profile_through_the_binary() {
    let bin = emcachers_bin();
    let h = Harness::new(Backend::single(), fixtures());
    let Backend::Single(redis) = &h.backend else {
        unreachable!()
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let log_path = h.dir.path().join("emcachers.log");
    let log = std::fs::File::create(&log_path).expect("log file");
    let cwd = h.dir.path().join("empty-cwd");
    std::fs::create_dir_all(&cwd).expect("cwd");
    let started = Instant::now();
    let child = Command::new(bin)
        .arg("run")
        .env_clear()
        .env("SCHEMATIC_API_KEY", API_KEY)
        .env("SCHEMATIC_API_URL", h.server.http_url())
        .env("REDIS_ADDR", redis.addr())
        .env("HEALTH_PORT", port.to_string())
        .env("EMCACHERS_DATA_DIR", h.dir.path().join("data"))
        // No plugin directory: the schematic plugin built into the binary serves.
        .current_dir(&cwd)
        .env(
            "EMCACHERS_PLUGINS__CACHE_DIR",
            emcachers_tests::plugin_cache_dir(),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start emcachers run");
    let mut child = ChildGuard(child);
    let log_text = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let ready_url = format!("http://127.0.0.1:{port}/ready");
    let mut last = (0, Value::Null);
    let ok = wait_until(WAIT, || {
        last = get_json(&h.http, &ready_url);
        last.0 == 200
    });
    assert!(ok, "/ready never 200: {last:?}\n{}", log_text());
    assert_ready_body(&last.1, "v1");
    h.assert_holds(&initial_model("v1"));
    assert!(
        log_text().contains("built-in plugin loaded"),
        "the built-in schematic plugin served:\n{}",
        log_text()
    );
    let (status, _) = get_json(&h.http, &format!("http://127.0.0.1:{port}/health"));
    assert_eq!(status, 200);
    assert!(
        h.backend.get(LOCK_KEY).unwrap().is_some(),
        "the writer lock is held"
    );

    let pid = child.0.id().to_string();
    let killed = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(killed.success());
    let mut status = None;
    eventually("emcachers to exit after SIGTERM", || {
        status = child.0.try_wait().expect("try_wait");
        status.is_some()
    });
    let status = status.expect("exit status");
    assert!(status.success(), "exit {status}\n{}", log_text());
    assert_eq!(
        h.backend.get(LOCK_KEY).unwrap(),
        None,
        "the lock is released on the way out"
    );
    assert!(started.elapsed() < WAIT * 2);
}
