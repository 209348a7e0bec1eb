//! The drop-in's Redis target and datastream keepalive settings against real
//! servers: `redis-server` with a password (`requirepass`), a non-zero
//! database and a TLS port whose certificate a CA made here (with the
//! `openssl` command) signs; the dev Schematic server for the datastream
//! and REST load; and a silent WebSocket server that upgrades and then never
//! says anything.
//!
//! The Redis tests run the real Schematic profile (`schematic_env`) either
//! in-process (a [`Node`]) or through the `emcachers` binary, and check the
//! keys in the database the URL names, reading Redis with the password
//! through the plain port.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use emcachers::config::{Config, SourceConfig};
use emcachers::node::Node;
use emcachers::schematic::datastream::{DatastreamConfig, DatastreamSource, DatastreamStatus};
use emcachers::schematic::env as schematic_env;
use emcachers::sources::Source;
use emcachers_datastream_server::{Config as ServerConfig, DevServer, Fixtures};
use emcachers_tests::services::{RedisOptions, RedisServer, TestCertificates};
use emcachers_tests::{emcachers_bin, plugins, wait_until};
use serde_json::{Value, json};

/// Deadline of every wait (generous: two cores, other builds running).
const WAIT: Duration = Duration::from_secs(60);
/// The Redis password: characters a URL must percent-encode.
const PASSWORD: &str = "p@ss:w0rd/1";
/// [`PASSWORD`] as it appears in a URL.
const PASSWORD_IN_URL: &str = "p%40ss%3Aw0rd%2F1";

// ---------------------------------------------------------------- data

fn fixtures() -> Fixtures {
    Fixtures {
        flags: vec![json!({
            "id": "flag_1", "key": "Beta-Dashboard", "account_id": "acc_1",
            "environment_id": "env_1", "default_value": true, "rules": []
        })],
        companies: vec![json!({
            "id": "comp_1", "environment_id": "env_1",
            "keys": [{"key": "Domain", "value": "Acme.Example"}]
        })],
        users: vec![json!({
            "id": "user_1", "environment_id": "env_1",
            "keys": [{"key": "email", "value": "ann@acme.example"}]
        })],
    }
}

/// Whether Redis (at `url`, a database) holds what the fixtures load into
/// it: the flag, the company, the user and their lookups.
fn loaded(url: &str) -> Result<(), String> {
    let get = |key: &str| -> Result<String, String> {
        let client = redis::Client::open(url).map_err(|e| e.to_string())?;
        let mut con = client
            .get_connection_with_timeout(Duration::from_secs(3))
            .map_err(|e| e.to_string())?;
        let value: Option<String> = redis::cmd("GET")
            .arg(key)
            .query(&mut con)
            .map_err(|e| e.to_string())?;
        value.ok_or_else(|| format!("{key} is missing"))
    };
    let json = |key: &str| -> Result<Value, String> {
        serde_json::from_str(&get(key)?).map_err(|e| format!("{key}: {e}"))
    };
    let flag = json("schematic:flags:v1:beta-dashboard")?;
    if flag["key"] != "Beta-Dashboard" {
        return Err(format!("flag {flag}"));
    }
    if json("schematic:company:v1:comp_1")?["id"] != "comp_1" {
        return Err("company".into());
    }
    if json("schematic:user:v1:user_1")?["id"] != "user_1" {
        return Err("user".into());
    }
    for (lookup, id) in [
        ("schematic:company:v1:domain:acme.example", "\"comp_1\""),
        ("schematic:user:v1:email:ann@acme.example", "\"user_1\""),
    ] {
        let value = get(lookup)?;
        if value != id {
            return Err(format!("{lookup} = {value}"));
        }
    }
    Ok(())
}

/// Wait until Redis at `url` holds the fixtures; panic with the last
/// difference (and `context`) otherwise.
fn wait_loaded(url: &str, context: impl Fn() -> String) {
    let mut last = Ok(());
    let ok = wait_until(WAIT, || {
        last = loaded(url);
        last.is_ok()
    });
    assert!(ok, "Redis never held the fixtures: {last:?}\n{}", context());
}

/// `DBSIZE` of database `db`.
fn db_size(server: &RedisServer, db: &str) -> String {
    server.cli(&["-n", db, "DBSIZE"]).trim().to_owned()
}

/// `redis://:PASSWORD@127.0.0.1:PLAIN_PORT/db`: how the test reads.
fn reader_url(server: &RedisServer, db: u32) -> String {
    format!(
        "redis://:{PASSWORD_IN_URL}@127.0.0.1:{}/{db}",
        server.port()
    )
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

// ---------------------------------------------------------------- in-process node

/// The dev server and a node running the Schematic profile of `vars`, on
/// a runtime of their own.
struct Replicator {
    node: Option<Node>,
    health: SocketAddr,
    http: ureq::Agent,
    _server: DevServer,
    _dir: tempfile::TempDir,
    rt: Option<tokio::runtime::Runtime>,
}

impl Replicator {
    /// Start it with the profile's variables `vars` (the key and the API
    /// URL are added) and `tweak` applied to the configuration.
    fn start(vars: &[(&str, String)], tweak: impl FnOnce(&mut Config)) -> Replicator {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let server = rt
            .block_on(DevServer::start(ServerConfig {
                fixtures: fixtures(),
                ..ServerConfig::default()
            }))
            .expect("dev server");
        let dir = tempfile::tempdir().expect("tempdir");
        let plugin_dir = dir.path().join("plugins");
        std::fs::create_dir_all(&plugin_dir).expect("plugin dir");
        std::fs::copy(&plugins().schematic, plugin_dir.join("schematic.wasm"))
            .expect("copy the schematic plugin");
        let mut all: Vec<(String, String)> = vec![
            ("SCHEMATIC_API_KEY".into(), "sch_test_key".into()),
            ("SCHEMATIC_API_URL".into(), server.http_url()),
            ("ASYNC_LOADER_RATE_LIMIT_RPS".into(), "1000".into()),
        ];
        all.extend(vars.iter().map(|(k, v)| ((*k).to_owned(), v.clone())));
        let mut config = schematic_env::config_from(|name| {
            all.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
        })
        .expect("Schematic profile");
        config.data_dir = dir.path().join("data");
        config.plugins.dir = plugin_dir;
        config.plugins.watch = false;
        config.health.listen = "127.0.0.1:0".into();
        let SourceConfig::Schematic(source) = &mut config.sources[0] else {
            panic!("the profile has a schematic source");
        };
        source.reconnect_max_ms = 100;
        source.load.retry_backoff_ms = 10;
        let redis = config.redis.as_mut().expect("redis writer");
        redis.breaker_timeout_ms = 200;
        tweak(&mut config);
        let node = rt
            .block_on(async {
                let mut node = Node::open(config).await?;
                node.start().await?;
                Ok::<_, emcachers::node::NodeError>(node)
            })
            .expect("node starts");
        let health = node.health_addr().expect("health endpoints");
        Replicator {
            node: Some(node),
            health,
            http: http_agent(),
            _server: server,
            _dir: dir,
            rt: Some(rt),
        }
    }

    fn get(&self, path: &str) -> (u16, Value) {
        get_json(&self.http, &format!("http://{}{path}", self.health))
    }

    /// Wait for `/ready` 200.
    fn wait_ready(&self) {
        let mut last = (0, Value::Null);
        let ok = wait_until(WAIT, || {
            last = self.get("/ready");
            last.0 == 200
        });
        assert!(
            ok,
            "/ready never 200: {last:?}\n/debug: {}",
            self.get("/debug").1
        );
    }
}

impl Drop for Replicator {
    fn drop(&mut self) {
        if let (Some(node), Some(rt)) = (self.node.take(), self.rt.as_ref()) {
            rt.block_on(node.shutdown(Duration::from_secs(5)));
        }
        if let Some(rt) = self.rt.take() {
            rt.shutdown_timeout(Duration::from_secs(5));
        }
    }
}

/// `REDIS_URL` with a user, a percent-encoded password and a database:
/// the writer authenticates, selects that database, and nothing lands in
/// database 0.
#[test]
fn redis_url_with_user_password_and_database() {
    let redis = RedisServer::start_with_options(RedisOptions {
        password: Some(PASSWORD),
        tls: None,
    });
    let url = format!(
        "redis://default:{PASSWORD_IN_URL}@127.0.0.1:{}/3",
        redis.port()
    );
    let node = Replicator::start(
        &[
            ("REDIS_URL", url),
            // The URL wins over these.
            ("REDIS_ADDR", "127.0.0.1:1".into()),
            ("REDIS_PASSWORD", "wrong".into()),
            ("REDIS_DB", "5".into()),
        ],
        |_| {},
    );
    node.wait_ready();
    wait_loaded(&reader_url(&redis, 3), String::new);
    assert_eq!(db_size(&redis, "0"), "0", "database 0 stays empty");
    assert_eq!(db_size(&redis, "5"), "0", "REDIS_DB lost to the URL");
    assert_eq!(
        redis
            .cli(&["-n", "3", "EXISTS", "schematic:datastream:writer_lock"])
            .trim(),
        "1",
        "the writer lock is in the URL's database too"
    );
}

/// `REDIS_ADDR` + `REDIS_PASSWORD` + `REDIS_DB` + `REDIS_TLS` against a TLS
/// port: refused while the test CA is not trusted (the certificate is
/// really checked), written once `redis.tls_ca_file` names the CA.
#[test]
fn redis_tls_variables_with_a_private_ca() {
    let certificates = TestCertificates::generate();
    let redis = RedisServer::start_with_options(RedisOptions {
        password: Some(PASSWORD),
        tls: Some(&certificates),
    });
    let tls_port = redis.tls_port().expect("a TLS port");
    let vars = [
        ("REDIS_ADDR", format!("127.0.0.1:{tls_port}")),
        ("REDIS_PASSWORD", PASSWORD.to_owned()),
        ("REDIS_DB", "4".to_owned()),
        ("REDIS_TLS", "true".to_owned()),
    ];

    // Without the CA the web PKI roots cannot vouch for the server.
    {
        let node = Replicator::start(&vars, |_| {});
        let mut last = Value::Null;
        let ok = wait_until(WAIT, || {
            last = node.get("/debug").1;
            last["writers"][0]["status"]["last_error"]
                .as_str()
                .is_some_and(|e| e.to_ascii_lowercase().contains("certificate"))
        });
        assert!(ok, "no certificate error on /debug: {last}");
        assert_eq!(node.get("/ready").0, 503);
    }
    assert_eq!(db_size(&redis, "4"), "0", "nothing written without trust");

    let ca = certificates.ca();
    let node = Replicator::start(&vars, |config| {
        config.redis.as_mut().expect("redis").tls_ca_file = Some(ca);
    });
    node.wait_ready();
    wait_loaded(&reader_url(&redis, 4), String::new);
    assert_eq!(db_size(&redis, "0"), "0", "database 0 stays empty");
}

/// Kills the child on drop (a failed assertion must not leave it running).
struct ChildGuard(std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// `emcachers run` with `REDIS_URL=rediss://:password@host:tls-port/2` and
/// the CA given with `EMCACHERS_REDIS__TLS_CA_FILE`: `/ready` turns 200 and
/// the keys are in database 2.
#[test]
fn rediss_url_through_the_binary() {
    let bin = emcachers_bin();
    let certificates = TestCertificates::generate();
    let redis = RedisServer::start_with_options(RedisOptions {
        password: Some(PASSWORD),
        tls: Some(&certificates),
    });
    let tls_port = redis.tls_port().expect("a TLS port");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let server = rt
        .block_on(DevServer::start(ServerConfig {
            fixtures: fixtures(),
            ..ServerConfig::default()
        }))
        .expect("dev server");
    let dir = tempfile::tempdir().expect("tempdir");
    let plugin_dir = dir.path().join("plugins");
    std::fs::create_dir_all(&plugin_dir).expect("plugin dir");
    std::fs::copy(&plugins().schematic, plugin_dir.join("schematic.wasm"))
        .expect("copy the schematic plugin");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let log_path = dir.path().join("emcachers.log");
    let log = std::fs::File::create(&log_path).expect("log file");
    let child = Command::new(bin)
        .arg("run")
        .env_clear()
        .env("SCHEMATIC_API_KEY", "sch_test_key")
        .env("SCHEMATIC_API_URL", server.http_url())
        .env(
            "REDIS_URL",
            format!("rediss://:{PASSWORD_IN_URL}@127.0.0.1:{tls_port}/2"),
        )
        .env("EMCACHERS_REDIS__TLS_CA_FILE", certificates.ca())
        .env("HEALTH_PORT", port.to_string())
        .env("ASYNC_LOADER_RATE_LIMIT_RPS", "1000")
        .env("EMCACHERS_DATA_DIR", dir.path().join("data"))
        .env("EMCACHERS_PLUGINS__DIR", &plugin_dir)
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start emcachers run");
    let mut child = ChildGuard(child);
    let log_text = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let http = http_agent();
    let mut last = (0, Value::Null);
    let ok = wait_until(WAIT, || {
        last = get_json(&http, &format!("http://127.0.0.1:{port}/ready"));
        last.0 == 200
    });
    assert!(ok, "/ready never 200: {last:?}\n{}", log_text());
    wait_loaded(&reader_url(&redis, 2), log_text);
    assert_eq!(db_size(&redis, "0"), "0", "database 0 stays empty");

    let killed = Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let mut status = None;
    let exited = wait_until(WAIT, || {
        status = child.0.try_wait().expect("try_wait");
        status.is_some()
    });
    assert!(
        exited,
        "emcachers did not exit after SIGTERM\n{}",
        log_text()
    );
    assert!(
        status.is_some_and(|s| s.success()),
        "exit {status:?}\n{}",
        log_text()
    );
    rt.block_on(server.shutdown());
}

/// A malformed `REDIS_URL` stops `emcachers run` at once with an error that
/// names the variable and does not show the password.
#[test]
fn malformed_redis_url_fails_fast_through_the_binary() {
    let bin = emcachers_bin();
    let dir = tempfile::tempdir().expect("tempdir");
    let output = Command::new(bin)
        .arg("run")
        .env_clear()
        .env("SCHEMATIC_API_KEY", "sch_test_key")
        .env("REDIS_URL", "redis://:hunter2@127.0.0.1:notaport/0")
        .env("EMCACHERS_DATA_DIR", dir.path().join("data"))
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .output()
        .expect("run emcachers");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("REDIS_URL"), "{stderr}");
    assert!(stderr.contains("notaport"), "{stderr}");
    assert!(!stderr.contains("hunter2"), "the password leaked: {stderr}");
}

// ---------------------------------------------------------------- keepalive

/// A WebSocket server that completes every upgrade and then never reads or
/// writes a frame (not even a pong). Records when each TCP connection was
/// accepted (before the upgrade, so before the client's clock starts).
struct SilentServer {
    addr: SocketAddr,
    accepted: Arc<Mutex<Vec<Instant>>>,
    task: tokio::task::JoinHandle<()>,
}

impl SilentServer {
    async fn start() -> SilentServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        let accepted: Arc<Mutex<Vec<Instant>>> = Arc::default();
        let seen = accepted.clone();
        let task = tokio::spawn(async move {
            // Held, never polled: silent, and open until the test ends.
            let mut sockets = Vec::new();
            while let Ok((tcp, _)) = listener.accept().await {
                let at = Instant::now();
                if let Ok(socket) = tokio_tungstenite::accept_async(tcp).await {
                    seen.lock().expect("lock").push(at);
                    sockets.push(socket);
                }
            }
        });
        SilentServer {
            addr,
            accepted,
            task,
        }
    }

    fn accepted(&self) -> Vec<Instant> {
        self.accepted.lock().expect("lock").clone()
    }
}

/// Poll `condition` every 10 ms until it holds or `timeout` passes; when
/// it first held.
async fn poll_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> Option<Instant> {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return Some(Instant::now());
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The server upgrades and goes silent: the source declares the
/// connection dead `pong_timeout` after the upgrade, not at its next ping
/// (the ping period here is far longer than the timeout), and connects
/// again; the new connection dies the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_datastream_server_is_dead_after_the_pong_timeout_and_replaced() {
    const PONG_TIMEOUT_MS: u64 = 800;
    const PING_INTERVAL_MS: u64 = 5_000;
    let server = SilentServer::start().await;
    let status = Arc::new(DatastreamStatus::default());
    let mut source = DatastreamSource::new(
        DatastreamConfig {
            api_key: "sch_test_key".into(),
            // Never called: with a cursor there is no initial load.
            api_url: "http://127.0.0.1:9".into(),
            datastream_url: Some(format!("ws://{}/datastream", server.addr)),
            ping_interval_ms: PING_INTERVAL_MS,
            pong_timeout_ms: PONG_TIMEOUT_MS,
            reconnect_max_ms: 1,
            ..DatastreamConfig::default()
        },
        status.clone(),
    )
    .expect("source");
    let (tx, mut rx) = tokio::sync::mpsc::channel(16);
    let drain = tokio::spawn(async move { while rx.recv().await.is_some() {} });
    let cancel = tokio_util::sync::CancellationToken::new();
    let run = tokio::spawn({
        let cancel = cancel.clone();
        async move { source.run(Some("1-0".into()), tx, cancel).await }
    });

    let timeouts = || {
        status
            .counters
            .keepalive_timeouts
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let dead = poll_until(WAIT, || timeouts() >= 1)
        .await
        .unwrap_or_else(|| panic!("never declared dead: {:?}", status.snapshot()));
    let first = server.accepted()[0];
    let pong_timeout = Duration::from_millis(PONG_TIMEOUT_MS);
    assert!(
        dead - first >= pong_timeout,
        "declared dead {:?} after the upgrade, before the pong timeout",
        dead - first
    );
    let error = status.snapshot().last_error.unwrap_or_default();
    let silent_ms: u64 = error
        .split("nothing heard for ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|ms| ms.parse().ok())
        .unwrap_or_else(|| panic!("no silence in the error {error:?}"));
    assert!(
        (PONG_TIMEOUT_MS..PONG_TIMEOUT_MS + 1_500).contains(&silent_ms),
        "dead after {silent_ms} ms of silence, not at the pong timeout ({PONG_TIMEOUT_MS} ms): {error}"
    );
    assert!(
        !status.connected(),
        "a server that never answered never counted as connected"
    );

    // It connects again, and that connection dies the same way.
    assert!(
        poll_until(WAIT, || server.accepted().len() >= 2)
            .await
            .is_some(),
        "no reconnect after the dead connection"
    );
    assert!(
        poll_until(WAIT, || timeouts() >= 2).await.is_some(),
        "the second silent connection was not declared dead: {:?}",
        status.snapshot()
    );
    let connects = status
        .counters
        .connects
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(connects >= 2, "connects {connects}");

    cancel.cancel();
    run.await
        .expect("source task")
        .expect("source ends cleanly");
    drain.await.expect("drain task");
    server.task.abort();
}
