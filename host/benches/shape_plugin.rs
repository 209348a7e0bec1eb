//! Per-item cost of the shape plugin through wasmtime against the same
//! mapping compiled natively, at batch sizes 1, 100 and 1000.
//!
//! Both sides run the identical code path, JSON text in → JSON text out:
//! natively the plugin crate's `Runner` (what the component export calls),
//! in WebAssembly the compiled component through the host runtime (lowering
//! the batch into the guest, the epoch deadline, lifting the results).
//!
//! Run: `bash tests/build-plugins.sh && cargo bench -p emcachers --bench shape_plugin`
//! (the component must exist at `target/wasm32-wasip2/plugin/emcachers_plugin_shape.wasm`).

use std::path::PathBuf;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use emcachers::plugin::{self, PluginEngine, PluginRegistry, SandboxConfig};
use emcachers_plugin_sdk::Runner;
use emcachers_plugin_sdk::bindings::emcachers::plugin::types as guest;
use emcachers_plugin_shape::ShapePlugin;
use serde_json::json;

const BATCH_SIZES: [usize; 3] = [1, 100, 1000];

fn config() -> String {
    std::fs::read_to_string(workspace().join("examples/shape/users.json"))
        .expect("examples/shape/users.json")
}

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A realistic user document (~450 bytes) with nested paths and extended JSON.
fn document(i: usize) -> String {
    json!({
        "_id": format!("user-{i}"),
        "email": format!("user{i}@example.com"),
        "profile": {"name": format!("User Number {i}"), "address": {"city": "London", "zip": "W1 1AA", "street": "1 Long Street"}},
        "orgId": {"$oid": "65f0a1b2c3d4e5f6a7b8c9d0"},
        "stats": {"logins": {"$numberLong": (i * 7).to_string()}, "score": 4.5, "streak": 3},
        "active": i.is_multiple_of(2),
        "createdAt": {"$date": "2024-03-01T12:00:00Z"},
        "tags": ["admin", "beta", "early-adopter"],
        "preferences": {"theme": "dark", "language": "en-GB", "notifications": {"email": true, "sms": false}}
    })
    .to_string()
}

fn host_batch(n: usize) -> Vec<plugin::Change> {
    (0..n)
        .map(|i| plugin::Change {
            source: "mongo".into(),
            collection: "users".into(),
            op: plugin::ChangeOp::Upsert,
            id: format!("user-{i}"),
            document: Some(document(i)),
            current: None,
        })
        .collect()
}

fn guest_batch(n: usize) -> Vec<guest::Change> {
    (0..n)
        .map(|i| guest::Change {
            source: "mongo".into(),
            collection: "users".into(),
            op: guest::ChangeOp::Upsert,
            id: format!("user-{i}"),
            document: Some(document(i)),
            current: None,
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let wasm = workspace().join("target/wasm32-wasip2/plugin/emcachers_plugin_shape.wasm");
    let registry =
        PluginRegistry::new(PluginEngine::new(SandboxConfig::default()).expect("engine"));
    registry
        .load_file(&wasm)
        .unwrap_or_else(|e| panic!("{e}: build it with tests/build-plugins.sh"));
    registry
        .assign("users", "shape", &config())
        .expect("config");
    let component = registry.plugin("shape").expect("loaded");

    let mut native = Runner::new(ShapePlugin::default());
    native.configure("users", &config()).expect("config");

    let mut group = c.benchmark_group("shape");
    group
        .sample_size(30)
        .measurement_time(Duration::from_secs(4))
        .warm_up_time(Duration::from_secs(1));
    for n in BATCH_SIZES {
        group.throughput(Throughput::Elements(n as u64));
        let batch = guest_batch(n);
        group.bench_with_input(BenchmarkId::new("native", n), &batch, |b, batch| {
            b.iter(|| {
                let out = native.shape("users", batch.clone());
                assert!(out.iter().all(Result::is_ok));
                out
            })
        });
        let batch = host_batch(n);
        group.bench_with_input(BenchmarkId::new("wasm", n), &batch, |b, batch| {
            b.iter(|| {
                let out = component.shape("users", batch);
                assert!(out.iter().all(Result::is_ok));
                out
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
