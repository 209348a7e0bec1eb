//! Schematic's real Python SDK (PyPI `schematichq` 1.4.6) in replicator mode
//! against the real `emcachers run` binary (spec §9): the dev datastream
//! server feeds emcachers, emcachers fills a real Redis, and the SDK
//! evaluates flags from that Redis with its own rules engine.
//!
//! The script is `tests/python/schematic_sdk_check.py`; it runs with the
//! venv at `target/pyvenv`, which `tests/run-all.sh` creates and this test
//! creates too when it is missing (`python3 -m venv` + `pip install -r
//! tests/python/requirements.txt`: needs python3 with venv, and PyPI).
//!
//! A stand-in for Schematic's REST API and event capture (a tiny HTTP
//! server recording every request) makes the SDK's fallback visible: a flag
//! the SDK does not find in Redis is checked with `POST
//! /flags/<key>/check`. The test asserts that only the one control flag
//! that exists nowhere went there, that each expected value came from the
//! entity the SDK found in Redis (the rules engine's `company_id` /
//! `user_id`), and that changes pushed through the datastream afterwards
//! (a flag rule and default flipped, a trait changed by a partial message,
//! a lookup key dropped, a company deleted, a new company) are seen by the
//! same SDK instance.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use emcachers_datastream_server::{
    COMPANY, Config as DevConfig, DevServer, Envelope, FLAG, Fixtures,
};
use emcachers_tests::services::RedisServer;
use emcachers_tests::{emcachers_bin, plugins, wait_until, workspace_root};
use serde_json::{Value, json};

const API_KEY: &str = "sch_python_sdk_test";
/// The version `/ready` reports with no `SCHEMATIC_CACHE_VERSION`: the
/// plugin's default. The SDK's own default (its rules engine's version key)
/// differs, so keys are only found when the SDK read this from `/ready`.
const CACHE_VERSION: &str = "v1";
/// The pinned SDK release.
const SDK_VERSION: &str = "1.4.6";
/// A flag that exists nowhere: the control that the sink sees fallbacks.
const MISSING_FLAG: &str = "no-such-flag";

// ------------------------------------------------------------ Python venv

/// `target/pyvenv/bin/python` with the SDK installed, creating the venv when
/// missing or incomplete (idempotent; once per process).
fn venv_python() -> PathBuf {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON
        .get_or_init(|| {
            let venv = workspace_root().join("target/pyvenv");
            let python = venv.join("bin/python");
            if sdk_installed(&python) {
                return python;
            }
            if !python.exists() {
                run_setup(
                    Command::new("python3").arg("-m").arg("venv").arg(&venv),
                    "python3 -m venv target/pyvenv (Debian: apt-get install python3-venv; tests/run-all.sh does it)",
                );
            }
            run_setup(
                Command::new(&python)
                    .args(["-m", "pip", "install", "--quiet", "-r"])
                    .arg(workspace_root().join("tests/python/requirements.txt")),
                "pip install -r tests/python/requirements.txt (needs PyPI)",
            );
            assert!(
                sdk_installed(&python),
                "{} still lacks schematichq {SDK_VERSION} with wasmtime and redis after pip install",
                python.display()
            );
            python
        })
        .clone()
}

fn sdk_installed(python: &Path) -> bool {
    let probe = format!(
        "import importlib.metadata as m, wasmtime, redis, schematic\n\
         assert m.version('schematichq') == '{SDK_VERSION}'"
    );
    python.exists()
        && Command::new(python)
            .args(["-c", &probe])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
}

fn run_setup(command: &mut Command, what: &str) {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    assert!(
        output.status.success(),
        "{what} failed: {}\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

// ------------------------------------------------------------ the sink

/// Schematic's REST API and event capture, as far as the SDK can tell: every
/// request is recorded (`METHOD /path`) and answered `200 {}`.
struct Sink {
    addr: std::net::SocketAddr,
    requests: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
}

impl Sink {
    fn start() -> Sink {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the sink");
        let addr = listener.local_addr().expect("sink address");
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (log, stopped) = (requests.clone(), stop.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stopped.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let log = log.clone();
                std::thread::spawn(move || serve_one(stream, &log));
            }
        });
        Sink {
            addr,
            requests,
            stop,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().map(|r| r.clone()).unwrap_or_default()
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(self.addr); // wake the accept loop
    }
}

/// Read one HTTP/1.1 request (head and `Content-Length` body), record it,
/// answer `200 {}` and close.
fn serve_one(stream: TcpStream, log: &Mutex<Vec<String>>) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let Ok(write_half) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
        return;
    }
    let mut length = 0usize;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).unwrap_or(0) == 0 {
            return;
        }
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0; length];
    let _ = reader.read_exact(&mut body);
    let mut parts = request_line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or(target);
    if let Ok(mut log) = log.lock() {
        log.push(format!("{method} {path}"));
    }
    let mut out = write_half;
    let _ = out.write_all(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
    );
}

// ------------------------------------------------------------ emcachers

/// `emcachers run` with the Schematic environment profile; killed on drop.
struct Emcachers {
    child: Child,
    log: PathBuf,
    health: String,
}

impl Emcachers {
    fn start(dir: &Path, api_url: &str, redis_addr: &str) -> Emcachers {
        let plugin_dir = dir.join("plugins");
        std::fs::create_dir_all(&plugin_dir).expect("plugin dir");
        std::fs::copy(&plugins().schematic, plugin_dir.join("schematic.wasm"))
            .expect("copy the schematic plugin");
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let log = dir.join("emcachers.log");
        let log_file = std::fs::File::create(&log).expect("log file");
        let child = Command::new(emcachers_bin())
            .arg("run")
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("SCHEMATIC_API_KEY", API_KEY)
            .env("SCHEMATIC_API_URL", api_url)
            .env("REDIS_ADDR", redis_addr)
            .env("HEALTH_PORT", port.to_string())
            .env("LOG_LEVEL", "info")
            .env("EMCACHERS_DATA_DIR", dir.join("data"))
            .env("EMCACHERS_PLUGINS__DIR", &plugin_dir)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("log file"))
            .stderr(log_file)
            .spawn()
            .expect("start emcachers run");
        Emcachers {
            child,
            log,
            health: format!("http://127.0.0.1:{port}"),
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Wait until `/ready` answers 200; its body.
    fn wait_ready(&mut self, timeout: Duration) -> Value {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(2)))
            .build()
            .into();
        let url = format!("{}/ready", self.health);
        let mut body = Value::Null;
        let mut exited = None;
        let ready = wait_until(timeout, || {
            if let Ok(Some(status)) = self.child.try_wait() {
                exited = Some(status);
                return true;
            }
            match agent.get(&url).call() {
                Ok(mut response) => {
                    let text = response.body_mut().read_to_string().unwrap_or_default();
                    body = serde_json::from_str(&text).unwrap_or(Value::Null);
                    response.status() == 200
                }
                Err(_) => false,
            }
        });
        assert!(
            exited.is_none(),
            "emcachers exited ({exited:?}):\n{}",
            self.log_tail()
        );
        assert!(
            ready,
            "/ready not 200 within {timeout:?} (last body {body}):\n{}",
            self.log_tail()
        );
        body
    }
}

impl Drop for Emcachers {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ------------------------------------------------------------ the script

/// The Python script, its stdout lines arriving on a channel.
struct Script {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    stderr: Arc<Mutex<String>>,
}

impl Script {
    fn start(python: &Path, spec: &Path) -> Script {
        let mut child = Command::new(python)
            .arg(workspace_root().join("tests/python/schematic_sdk_check.py"))
            .arg(spec)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the SDK script");
        let (tx, lines) = channel();
        let stdout = child.stdout.take().expect("script stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let (pipe, text) = (child.stderr.take().expect("script stderr"), stderr.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                if let Ok(mut text) = text.lock() {
                    text.push_str(&line);
                    text.push('\n');
                }
            }
        });
        Script {
            stdin: child.stdin.take(),
            child,
            lines,
            stderr,
        }
    }

    fn stderr(&self) -> String {
        self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// The next JSON line the script prints.
    fn next(&self, timeout: Duration) -> Value {
        match self.lines.recv_timeout(timeout) {
            Ok(line) => serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("script printed {line:?}: {e}\n{}", self.stderr())),
            Err(RecvTimeoutError::Timeout) => {
                panic!(
                    "no line from the script within {timeout:?}\n{}",
                    self.stderr()
                )
            }
            Err(RecvTimeoutError::Disconnected) => {
                panic!("the script ended early\n{}", self.stderr())
            }
        }
    }

    /// Tell the script to run its next phase.
    fn go(&mut self) {
        let stdin = self.stdin.as_mut().expect("script stdin");
        stdin.write_all(b"next\n").expect("signal the script");
        stdin.flush().expect("signal the script");
    }

    /// Wait for the script to exit; whether it succeeded.
    fn finish(&mut self, timeout: Duration) -> bool {
        self.stdin = None;
        let mut status = None;
        let done = wait_until(timeout, || {
            status = self.child.try_wait().ok().flatten();
            status.is_some()
        });
        if !done {
            let _ = self.child.kill();
        }
        status.is_some_and(|s| s.success())
    }
}

impl Drop for Script {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ------------------------------------------------------------ expectations

/// One flag check and what it must answer: the value and the company and
/// user ids the SDK's rules engine reports (`None`: no entity found).
fn check(
    flag: &str,
    company: Option<Value>,
    user: Option<Value>,
    value: bool,
    company_id: Option<&str>,
    user_id: Option<&str>,
) -> Value {
    json!({
        "name": format!("{flag} for {} / {}", company.clone().unwrap_or(Value::Null), user.clone().unwrap_or(Value::Null)),
        "flag": flag,
        "company": company,
        "user": user,
        "value": value,
        "company_id": company_id,
        "user_id": user_id,
    })
}

fn domain(d: &str) -> Option<Value> {
    Some(json!({ "domain": d }))
}

/// Checks against `examples/schematic/fixtures` as loaded (REST companies
/// and users, rulesengine flags). Every default value is false, so a true
/// comes only from a rule matching the cached entity.
fn initial_checks() -> Vec<Value> {
    vec![
        // beta-dashboard: company rule lists comp_acme and comp_globex.
        check(
            "beta-dashboard",
            domain("acme.example"),
            None,
            true,
            Some("comp_acme"),
            None,
        ),
        check(
            "beta-dashboard",
            domain("initech.example"),
            None,
            false,
            Some("comp_initech"),
            None,
        ),
        // Looked up by the other key, upper case: the SDK lower-cases the
        // value, so the lookup key must be stored lower-cased.
        check(
            "beta-dashboard",
            Some(json!({"stripe_id": "CUS_GLOBEX02"})),
            None,
            true,
            Some("comp_globex"),
            None,
        ),
        // The user rule lists user_ada: true with a company that alone is false.
        check(
            "beta-dashboard",
            domain("initech.example"),
            Some(json!({"email": "ada@acme.example"})),
            true,
            Some("comp_initech"),
            Some("user_ada"),
        ),
        check(
            "beta-dashboard",
            None,
            Some(json!({"user_id": "u-1003"})),
            false,
            None,
            Some("user_alan"),
        ),
        // ai-tokens: comp_umbrella has a company_override rule (carried in
        // the company's `rules`); globex is on the starter plan.
        check(
            "ai-tokens",
            domain("umbrella.example"),
            None,
            true,
            Some("comp_umbrella"),
            None,
        ),
        check(
            "ai-tokens",
            domain("globex.example"),
            None,
            false,
            Some("comp_globex"),
            None,
        ),
        // api-calls: api_call metric <= 10000 this month and a paid plan.
        check(
            "api-calls",
            domain("acme.example"),
            None,
            true,
            Some("comp_acme"),
            None,
        ),
        check(
            "api-calls",
            domain("initech.example"),
            None,
            false,
            Some("comp_initech"),
            None,
        ),
        check(
            "api-calls",
            Some(json!({"stripe_id": "cus_umbrella4"})),
            None,
            true,
            Some("comp_umbrella"),
            None,
        ),
        // NewCheckoutFlow (a mixed-case flag key, stored lower-cased):
        // seats >= 50 or region eu-west.
        check(
            "NewCheckoutFlow",
            domain("acme.example"),
            None,
            true,
            Some("comp_acme"),
            None,
        ),
        check(
            "NewCheckoutFlow",
            domain("globex.example"),
            None,
            false,
            Some("comp_globex"),
            None,
        ),
        check(
            "NewCheckoutFlow",
            domain("umbrella.example"),
            None,
            true,
            Some("comp_umbrella"),
            None,
        ),
        // A global override switches the banner off.
        check(
            "maintenance-banner",
            domain("acme.example"),
            None,
            false,
            Some("comp_acme"),
            None,
        ),
        // The control: in no cache, so the SDK asks the sink.
        check(
            MISSING_FLAG,
            domain("acme.example"),
            None,
            false,
            None,
            None,
        ),
    ]
}

/// Checks after [`push_changes`].
fn changed_checks() -> Vec<Value> {
    vec![
        // Unchanged.
        check(
            "beta-dashboard",
            domain("acme.example"),
            None,
            true,
            Some("comp_acme"),
            None,
        ),
        // beta-dashboard's default flipped to true: initech now true.
        check(
            "beta-dashboard",
            domain("initech.example"),
            None,
            true,
            Some("comp_initech"),
            None,
        ),
        // The banner's global override now says true.
        check(
            "maintenance-banner",
            domain("acme.example"),
            None,
            true,
            Some("comp_acme"),
            None,
        ),
        // globex's seats went to 60 in a partial message.
        check(
            "NewCheckoutFlow",
            domain("globex.example"),
            None,
            true,
            Some("comp_globex"),
            None,
        ),
        // initech lost its stripe_id key: that lookup is gone.
        check(
            "api-calls",
            Some(json!({"stripe_id": "cus_initech3"})),
            None,
            false,
            None,
            None,
        ),
        // umbrella was deleted (the message named only its domain key):
        // every lookup is gone.
        check(
            "ai-tokens",
            Some(json!({"stripe_id": "cus_umbrella4"})),
            None,
            false,
            None,
            None,
        ),
        check(
            "ai-tokens",
            domain("umbrella.example"),
            None,
            false,
            None,
            None,
        ),
        // A new company from the stream, in the EU.
        check(
            "NewCheckoutFlow",
            domain("hooli.example"),
            None,
            true,
            Some("comp_hooli"),
            None,
        ),
    ]
}

/// The flag of `fixtures` with `key`.
fn fixture_flag(fixtures: &Fixtures, key: &str) -> Value {
    fixtures
        .flags
        .iter()
        .find(|f| f["key"] == key)
        .cloned()
        .unwrap_or_else(|| panic!("fixture flag {key}"))
}

fn company_trait(id: &str, kind: &str, value: &str) -> Value {
    json!({
        "value": value,
        "trait_definition": {"id": id, "comparable_type": kind, "entity_type": "company"},
    })
}

/// Push what [`changed_checks`] expects. `initech` is the cached
/// rulesengine company (read back from Redis).
fn push_changes(server: &DevServer, fixtures: &Fixtures, mut initech: Value) {
    let mut banner = fixture_flag(fixtures, "maintenance-banner");
    banner["rules"][0]["value"] = json!(true);
    let mut beta = fixture_flag(fixtures, "beta-dashboard");
    beta["default_value"] = json!(true);
    initech["keys"] = json!({"domain": "initech.example"});
    let hooli = json!({
        "id": "comp_hooli",
        "account_id": "acc_demo",
        "environment_id": "env_demo",
        "base_plan_id": null,
        "billing_product_ids": [],
        "credit_balances": {},
        "entitlements": [],
        "keys": {"domain": "hooli.example"},
        "metrics": [],
        "plan_ids": [],
        "plan_version_ids": [],
        "rules": [],
        "subscription": null,
        "traits": [company_trait("td_seats", "int", "12"), company_trait("td_region", "string", "eu-west")],
    });
    let ids = server.push(&[
        Envelope::new(FLAG, "full", None, banner),
        Envelope::new(FLAG, "full", None, beta),
        Envelope::new(
            COMPANY,
            "partial",
            Some("comp_globex".into()),
            json!({
                "id": "comp_globex",
                "traits": [company_trait("td_seats", "int", "60"), company_trait("td_region", "string", "us-east")],
            }),
        ),
        Envelope::new(COMPANY, "full", Some("comp_initech".into()), initech),
        Envelope::new(
            COMPANY,
            "delete",
            Some("comp_umbrella".into()),
            json!({"id": "comp_umbrella", "keys": {"domain": "umbrella.example"}}),
        ),
        Envelope::new(COMPANY, "full", Some("comp_hooli".into()), hooli),
    ]);
    assert_eq!(ids.len(), 6);
}

/// Compare a phase report with its checks, here rather than only in the
/// script.
fn assert_phase(report: &Value, checks: &[Value], stderr: &str) {
    let results = report["results"].as_array().expect("results");
    assert_eq!(results.len(), checks.len(), "{report}");
    let mut wrong = Vec::new();
    for (result, check) in results.iter().zip(checks) {
        for field in ["value", "company_id", "user_id"] {
            if result[field] != check[field] {
                let reason: String = result["reason"]
                    .as_str()
                    .unwrap_or_default()
                    .chars()
                    .take(100)
                    .collect();
                wrong.push(format!(
                    "{}: {field} expected {}, got {} (reason: {reason})",
                    check["name"], check[field], result[field]
                ));
            }
        }
    }
    assert!(
        wrong.is_empty() && report["ok"] == true,
        "phase {}:\n{}\n--- script stderr ---\n{stderr}",
        report["phase"],
        wrong.join("\n")
    );
}

#[test]
fn python_sdk_reads_flags_companies_and_users_from_redis() {
    let python = venv_python();
    let dir = tempfile::tempdir().expect("tempdir");
    let redis = RedisServer::start();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let fixtures =
        Fixtures::load(&workspace_root().join("examples/schematic/fixtures")).expect("fixtures");
    let server = runtime
        .block_on(DevServer::start(DevConfig {
            api_keys: vec![API_KEY.into()],
            fixtures: fixtures.clone(),
            ..DevConfig::default()
        }))
        .expect("dev server");
    let sink = Sink::start();
    let mut emcachers = Emcachers::start(dir.path(), &server.http_url(), &redis.addr());
    let ready = emcachers.wait_ready(Duration::from_secs(120));
    assert_eq!(ready["cache_version"], CACHE_VERSION, "{ready}");

    let (initial, changed) = (initial_checks(), changed_checks());
    let spec = json!({
        "api_key": API_KEY,
        "redis_url": redis.url(),
        "ready_url": format!("{}/ready", emcachers.health),
        "sink_url": sink.url(),
        "cache_version": CACHE_VERSION,
        "phases": [
            {"name": "initial load", "wait_secs": 0, "checks": initial},
            {"name": "after pushed changes", "wait_secs": 30, "checks": changed},
        ],
    });
    let spec_path = dir.path().join("spec.json");
    std::fs::write(&spec_path, spec.to_string()).expect("write spec");

    let mut script = Script::start(&python, &spec_path);
    // Loading wasmtime and compiling the SDK's rules engine takes a while.
    let setup = script.next(Duration::from_secs(120));
    assert_eq!(
        setup["setup"],
        json!({"replicator_mode": true, "replicator_ready": true, "cache_version": CACHE_VERSION}),
        "{setup}\n{}",
        script.stderr()
    );
    let first = script.next(Duration::from_secs(60));
    assert_phase(&first, &initial, &script.stderr());

    let initech = redis.cli(&[
        "GET",
        &format!("schematic:company:{CACHE_VERSION}:comp_initech"),
    ]);
    let initech: Value = serde_json::from_str(initech.trim()).expect("cached initech");
    let started = Instant::now();
    push_changes(&server, &fixtures, initech);
    script.go();
    let second = script.next(Duration::from_secs(60));
    assert_phase(&second, &changed, &script.stderr());
    let propagated = started.elapsed();
    assert!(
        script.finish(Duration::from_secs(30)),
        "the script failed\n{}",
        script.stderr()
    );

    // What reached the REST API stand-in: the control's fallback and the
    // flag_check events (flushed at shutdown), nothing else.
    let requests = sink.requests();
    let checks: Vec<&String> = requests.iter().filter(|r| r.contains("/flags")).collect();
    assert_eq!(
        checks,
        [&format!("POST /flags/{MISSING_FLAG}/check")],
        "flag checks that fell back to the REST API: {requests:?}"
    );
    assert!(
        requests.iter().any(|r| r == "POST /batch"),
        "the SDK sent its events to the sink: {requests:?}"
    );
    assert!(
        requests
            .iter()
            .all(|r| r == "POST /batch" || r.contains("/flags/")),
        "unexpected requests: {requests:?}"
    );
    eprintln!(
        "python sdk: changes visible to the SDK after {} ms ({} attempts), {} sink requests",
        propagated.as_millis(),
        second["attempts"],
        requests.len()
    );
    drop(emcachers);
    drop(server);
}
