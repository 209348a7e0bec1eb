//! Hot reload: the plugin directory is watched; a new version is swapped in
//! between batches while calls keep being answered, and a corrupt file never
//! replaces a working version.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use emcachers::plugin::{PluginRegistry, PluginWatcher};
use emcachers_tests::{plugins, wait_until};
use serde_json::json;

use crate::{registry, upsert};

const WAIT: Duration = Duration::from_secs(30);

fn serving_version(registry: &PluginRegistry) -> Option<String> {
    registry.plugin("hostile").map(|p| p.version().to_owned())
}

/// Replace `to` with `from` the way a deploy does: write aside, then rename.
fn install(from: &Path, to: &Path) {
    let staging = to.with_file_name(".staging.tmp");
    std::fs::copy(from, &staging).expect("copy plugin");
    std::fs::rename(&staging, to).expect("rename plugin");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_version_is_swapped_in_while_calls_continue() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("hostile.wasm");
    install(&plugins().hostile, &file);
    let registry = registry(Duration::from_secs(5), 64);
    assert!(registry.load_dir(dir.path()).is_empty());
    let _watcher = PluginWatcher::start(registry.clone(), dir.path()).expect("watch");
    assert_eq!(serving_version(&registry).as_deref(), Some("1.0.0"));

    // A caller that keeps shaping batches and records which version answered.
    let stop = Arc::new(AtomicBool::new(false));
    let caller = {
        let registry = registry.clone();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut answered = Vec::new();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let plugin = registry
                    .plugin("hostile")
                    .expect("a version is always serving");
                let batch: Vec<_> = (0..10)
                    .map(|i| upsert("c", &format!("{n}-{i}"), json!({"i": i})))
                    .collect();
                for result in plugin.shape("hostile", &batch) {
                    let shaped = result.expect("every call is answered");
                    let data: serde_json::Value =
                        serde_json::from_str(&shaped.rows[0].data).expect("row");
                    answered.push(data["version"].as_str().unwrap_or_default().to_owned());
                }
                n += 1;
            }
            answered
        })
    };

    install(&plugins().hostile_v2, &file);
    assert!(
        wait_until(WAIT, || serving_version(&registry).as_deref()
            == Some("2.0.0")),
        "v2 swapped in"
    );
    // Let the caller run a little on v2 too, by observation rather than time.
    let seen_v2_calls = registry.plugin("hostile").expect("serving");
    assert!(seen_v2_calls.shape("hostile", &[upsert("c", "x", json!({}))])[0].is_ok());
    stop.store(true, Ordering::Relaxed);
    let answered = caller.join().expect("caller thread");

    assert!(!answered.is_empty());
    assert!(
        answered.iter().all(|v| v == "1.0.0" || v == "2.0.0"),
        "only old or new versions answer"
    );
    // Versions never go back once v2 answered.
    let first_v2 = answered.iter().position(|v| v == "2.0.0");
    if let Some(first) = first_v2 {
        assert!(
            answered[first..].iter().all(|v| v == "2.0.0"),
            "no answer from v1 after the swap"
        );
    }
    let status = registry.plugins();
    assert_eq!(status[0].version, "2.0.0");
    assert_eq!(status[0].last_error, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_file_leaves_the_old_version_serving() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("hostile.wasm");
    install(&plugins().hostile, &file);
    let registry = registry(Duration::from_secs(5), 64);
    assert!(registry.load_dir(dir.path()).is_empty());
    let _watcher = PluginWatcher::start(registry.clone(), dir.path()).expect("watch");

    let corrupt = dir.path().join("corrupt.src");
    std::fs::write(&corrupt, b"\0asm this is not a component").expect("write");
    install(&corrupt, &file);
    assert!(
        wait_until(WAIT, || registry
            .files()
            .iter()
            .any(|f| f.last_error.is_some())),
        "the load error is recorded"
    );
    let status = registry.plugins();
    assert_eq!(status.len(), 1);
    assert_eq!(
        status[0].version, "1.0.0",
        "the working version keeps serving"
    );
    assert!(
        status[0]
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("not a valid emcachers component"))
    );
    let plugin = registry.plugin("hostile").expect("still loaded");
    assert!(plugin.shape("hostile", &[upsert("c", "a", json!({}))])[0].is_ok());

    // A good file clears the error.
    install(&plugins().hostile_v2, &file);
    assert!(wait_until(WAIT, || serving_version(&registry).as_deref()
        == Some("2.0.0")));
    assert!(registry.files().iter().all(|f| f.last_error.is_none()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn added_and_removed_files_load_and_unload() {
    let dir = tempfile::tempdir().expect("tempdir");
    let registry = registry(Duration::from_secs(5), 64);
    let _watcher = PluginWatcher::start(registry.clone(), dir.path()).expect("watch");
    let file = dir.path().join("hostile.wasm");
    install(&plugins().hostile, &file);
    assert!(
        wait_until(WAIT, || serving_version(&registry).is_some()),
        "new file loads"
    );
    std::fs::remove_file(&file).expect("remove");
    assert!(
        wait_until(WAIT, || serving_version(&registry).is_none()),
        "removed file unloads"
    );
}

#[test]
fn a_rejected_configuration_keeps_the_previous_one() {
    let registry = registry(Duration::from_secs(5), 64);
    registry.load_file(&plugins().shape).expect("shape loads");
    let config = json!({"entity_name": "users", "source_name": "users",
        "columns": [{"name": "id", "type": "Text", "path": "_id"}]});
    registry
        .assign("users", "shape", &config.to_string())
        .expect("accepted");
    let bad =
        json!({"entity_name": "users", "columns": [{"name": "id", "type": "Nope", "path": "_id"}]});
    assert!(
        registry.assign("users", "shape", &bad.to_string()).is_err(),
        "a bad config is refused"
    );
    let plugin = registry.for_entity("users").expect("users is served");
    let rows = plugin.shape("users", &[upsert("users", "u1", json!({"_id": "u1"}))]);
    assert!(
        rows[0].is_ok(),
        "the previous configuration still serves: {:?}",
        rows[0]
    );
}
