//! A hostile plugin costs only its own instance: loops are stopped by the
//! deadline, memory bombs by the cap, panics are contained, and the next
//! call is served by a fresh instance.

use std::time::{Duration, Instant};

use emcachers::plugin::ItemError;
use emcachers_tests::plugins;
use serde_json::json;

use crate::{registry, upsert};

fn loaded() -> (
    std::sync::Arc<emcachers::plugin::PluginRegistry>,
    std::sync::Arc<emcachers::plugin::LoadedPlugin>,
) {
    let registry = registry(Duration::from_millis(300), 32);
    registry
        .load_file(&plugins().hostile)
        .expect("hostile plugin loads");
    let plugin = registry.plugin("hostile").expect("loaded");
    (registry, plugin)
}

fn assert_batch_failed(results: &[Result<emcachers::plugin::Shaped, ItemError>], needle: &str) {
    assert!(!results.is_empty());
    for result in results {
        match result {
            Err(ItemError::BatchFailed { plugin, reason }) => {
                assert_eq!(plugin, "hostile@1.0.0", "errors name plugin and version");
                assert!(
                    reason.contains(needle),
                    "reason {reason:?} should mention {needle:?}"
                );
            }
            other => panic!("expected a batch failure, got {other:?}"),
        }
    }
}

fn assert_healthy(plugin: &emcachers::plugin::LoadedPlugin) {
    let results = plugin.shape("hostile", &[upsert("c", "ok", json!({"n": 1}))]);
    let shaped = results[0].as_ref().expect("a fresh instance answers");
    assert_eq!(shaped.rows[0].id, "ok");
}

#[test]
fn endless_loop_is_stopped_by_the_deadline_and_the_next_call_works() {
    let (_registry, plugin) = loaded();
    let started = Instant::now();
    let results = plugin.shape(
        "hostile",
        &[
            upsert("c", "a", json!({"n": 0})),
            upsert("c", "spin", json!({"action": "loop"})),
        ],
    );
    // Generous bound: only proves the call was interrupted rather than hung.
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the loop was not interrupted"
    );
    assert_batch_failed(&results, "interrupt");
    assert_healthy(&plugin);
}

#[test]
fn memory_bomb_is_capped() {
    let (_registry, plugin) = loaded();
    let results = plugin.shape(
        "hostile",
        &[upsert("c", "bomb", json!({"action": "alloc"}))],
    );
    assert_batch_failed(&results, "");
    assert_healthy(&plugin);
}

#[test]
fn panic_is_isolated() {
    let (_registry, plugin) = loaded();
    let results = plugin.shape(
        "hostile",
        &[
            upsert("c", "p", json!({"action": "panic"})),
            upsert("c", "b", json!({"n": 2})),
        ],
    );
    assert_batch_failed(&results, "unreachable");
    assert_healthy(&plugin);
}

#[test]
fn an_item_error_fails_only_its_item() {
    let (_registry, plugin) = loaded();
    let results = plugin.shape(
        "hostile",
        &[
            upsert("c", "a", json!({"n": 1})),
            upsert("c", "bad", json!({"action": "reject"})),
            upsert("c", "b", json!({"n": 2})),
        ],
    );
    assert_eq!(results[0].as_ref().expect("first item").rows[0].id, "a");
    assert_eq!(
        results[1],
        Err(ItemError::Rejected {
            plugin: "hostile@1.0.0".into(),
            message: "rejected bad".into()
        })
    );
    assert_eq!(results[2].as_ref().expect("third item").rows[0].id, "b");
}

#[test]
fn guests_see_no_environment_and_no_files() {
    let (_registry, plugin) = loaded();
    let results = plugin.shape(
        "hostile",
        &[upsert("c", "probe", json!({"action": "probe"}))],
    );
    let row = &results[0].as_ref().expect("probe answers").rows[0];
    let data: serde_json::Value = serde_json::from_str(&row.data).expect("row JSON");
    assert!(std::env::vars().count() > 0, "the host has an environment");
    assert_eq!(data["env_vars"], 0, "no host variable reaches the guest");
    assert_eq!(data["file_readable"], false, "no host file is readable");
}
