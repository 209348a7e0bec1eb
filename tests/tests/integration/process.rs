//! Process hygiene: one process per data directory (an OS lock on
//! `{data_dir}/emcachers.lock`), and supervised background tasks whose
//! states `/health` shows.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use emcachers::config::Config;
use emcachers::datadir::DataDirError;
use emcachers::node::{Node, NodeError};
use emcachers_tests::{emcachers_bin, wait_until};
use serde_json::{Value, json};

use crate::end_to_end::project;

/// Kills the child on drop, so no process outlives the test.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

fn get_json(url: &str) -> (u16, Value) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(5)))
        .build()
        .into();
    match agent.get(url).call() {
        Ok(mut response) => {
            let status = response.status().as_u16();
            let text = response.body_mut().read_to_string().unwrap_or_default();
            (status, serde_json::from_str(&text).unwrap_or(Value::Null))
        }
        Err(error) => (0, json!({ "error": error.to_string() })),
    }
}

/// Run `emcachers` with `args` to its end (killed after `timeout`); returns
/// (exit code, stderr, how long it ran).
fn run_to_end(args: &[&str], timeout: Duration) -> (Option<i32>, String, Duration) {
    let started = Instant::now();
    let mut child = ChildGuard(
        Command::new(emcachers_bin())
            .args(args)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start emcachers"),
    );
    let mut stderr = child.0.stderr.take().expect("stderr");
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let mut status = None;
    wait_until(timeout, || {
        status = child.0.try_wait().expect("try_wait");
        status.is_some()
    });
    drop(child); // kills it if it is still running
    let stderr = reader.join().expect("stderr reader");
    (status.and_then(|s| s.code()), stderr, started.elapsed())
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

#[test]
fn a_second_process_on_the_same_data_dir_exits_at_once() {
    let port = free_port();
    let (dir, config) = project(&format!(
        "[health]\nenabled = true\nlisten = \"127.0.0.1:{port}\"\n"
    ));
    let data_dir = dir.path().join("data");

    // The first process: wait until it serves.
    let mut first = ChildGuard(
        Command::new(emcachers_bin())
            .args(["run", "--config", path(&config)])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the first emcachers run"),
    );
    let first_pid = first.0.id();
    let log = Arc::new(Mutex::new(String::new()));
    let (running_tx, running_rx) = std::sync::mpsc::channel();
    {
        let stderr = first.0.stderr.take().expect("stderr");
        let log = log.clone();
        // Drains stderr for the process's whole life, so it never blocks on
        // a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("emcachers running") {
                    let _ = running_tx.send(());
                }
                if let Ok(mut log) = log.lock() {
                    log.push_str(&line);
                    log.push('\n');
                }
            }
        });
    }
    let log_text = || log.lock().map(|l| l.clone()).unwrap_or_default();
    assert!(
        running_rx.recv_timeout(Duration::from_secs(60)).is_ok(),
        "the first process never came up:\n{}",
        log_text()
    );
    let health_url = format!("http://127.0.0.1:{port}/health");
    let (status, _) = get_json(&health_url);
    assert_eq!(status, 200, "the first process serves /health");

    // A second `run` and an `ingest` on the same data directory are refused
    // at once, naming the directory and the holder.
    let input = dir.path().join("empty.jsonl");
    std::fs::write(&input, "").expect("write input");
    for args in [
        vec!["run", "--config", path(&config)],
        vec!["ingest", "--config", path(&config), path(&input)],
    ] {
        let (code, stderr, took) = run_to_end(&args, Duration::from_secs(30));
        assert!(
            code.is_some_and(|c| c != 0),
            "{args:?}: exit {code:?}\n{stderr}"
        );
        assert!(
            stderr.contains(&format!("data directory {}", data_dir.display()))
                && stderr.contains(&format!("pid {first_pid}")),
            "{args:?}: the error names the directory and the holder:\n{stderr}"
        );
        assert!(
            took < Duration::from_secs(20),
            "{args:?} exits at once, took {took:?}"
        );
    }

    // The first keeps serving, and /health shows its tasks.
    assert!(
        matches!(first.0.try_wait(), Ok(None)),
        "the first process still runs:\n{}",
        log_text()
    );
    let (status, body) = get_json(&health_url);
    assert_eq!(status, 200);
    for task in ["api", "health", "replicator", "entity-refresh"] {
        assert_eq!(body["tasks"][task]["state"], "running", "{task} in {body}");
    }
    assert_eq!(body["degraded"], json!([]));

    // The lock is the kernel's: a killed holder leaves none behind.
    first.0.kill().expect("kill the first process");
    let _ = first.0.wait();
    let (code, stderr, _) = run_to_end(
        &["ingest", "--config", path(&config), path(&input)],
        Duration::from_secs(60),
    );
    assert_eq!(code, Some(0), "the directory is free again:\n{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_locks_its_data_dir_until_it_is_shut_down() {
    let (dir, config) = project("");
    let config = Config::load(Some(&config)).expect("config");
    let node = Node::open(config.clone()).await.expect("first node");
    match Node::open(config.clone()).await {
        Err(NodeError::DataDir(DataDirError::Locked { dir: locked, pid })) => {
            assert_eq!(locked, dir.path().join("data"));
            assert_eq!(pid, Some(std::process::id()));
        }
        Err(other) => panic!("expected the lock error, got {other}"),
        Ok(_) => panic!("a second node opened the same data directory"),
    }
    node.shutdown(Duration::from_secs(5)).await;
    let again = Node::open(config.clone())
        .await
        .expect("reopen after shutdown");
    drop(again);
    let again = Node::open(config).await.expect("reopen after drop");
    again.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_shows_task_states_and_a_restarting_task() {
    let (_dir, config) = project("[health]\nenabled = true\nlisten = \"127.0.0.1:0\"\n");
    let mut node = Node::open(Config::load(Some(&config)).expect("config"))
        .await
        .expect("node");
    node.start().await.expect("start");
    // A task that keeps failing, the way a broken writer would.
    node.jobs.spawn("flaky", |_cancel| async {
        tokio::task::yield_now().await;
    });
    let url = format!(
        "http://{}/health",
        node.health_addr().expect("health bound")
    );
    let (status, body) = tokio::task::spawn_blocking(move || {
        let mut last = (0, Value::Null);
        wait_until(Duration::from_secs(20), || {
            last = get_json(&url);
            last.1["tasks"]["flaky"]["restarts"].as_u64() >= Some(1)
        });
        last
    })
    .await
    .expect("probe /health");
    assert!(
        body["tasks"]["flaky"]["restarts"].as_u64() >= Some(1),
        "the flaky task was restarted: {body}"
    );
    assert_eq!(status, 200, "/health stays 200 with a degraded task");
    assert_eq!(body["status"], "healthy");
    for task in [
        "api",
        "health",
        "replicator",
        "entity-refresh",
        "close-idle-caches",
    ] {
        assert_eq!(body["tasks"][task]["state"], "running", "{task}: {body}");
        assert_eq!(body["tasks"][task]["restarts"], 0, "{task}: {body}");
    }
    let flaky = &body["tasks"]["flaky"];
    assert_eq!(flaky["kind"], "task");
    assert_eq!(flaky["last_failure"], "the task returned");
    assert!(flaky["failures"].as_u64() >= Some(1), "{flaky}");
    // Right after a restart the task fails again within a tick: it is
    // restarting (degraded) nearly all the time.
    if flaky["state"] == "restarting" {
        assert_eq!(body["degraded"], json!(["flaky"]));
        assert!(flaky["retry_in_ms"].as_u64() >= Some(1000), "{flaky}");
    }
    node.shutdown(Duration::from_secs(5)).await;
}
