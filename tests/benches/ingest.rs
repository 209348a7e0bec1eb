//! The MongoDB change-event path, not bound by a test server: change events
//! as BSON bytes (as the driver receives them) → decode
//! (`ChangeStreamEvent<Document>`) → convert (`sources::mongo::events`) →
//! route → shape (the built-in `shape` plugin through wasmtime, with the
//! default sandbox: deadline and memory limit on) → one oplog append per
//! batch with its position, on SQLite (WAL, `synchronous=NORMAL`, as the
//! store opens it) and on PostgreSQL (a local server of the bench's own
//! with durable settings: `fsync`, `full_page_writes` and
//! `synchronous_commit` on).
//!
//! Run: `cargo bench -p emcachers-tests --bench ingest` (about a minute;
//! `INGEST_BENCH=sqlite,postgres`, any subset). Each run ingests
//! `EVENTS_PER_RUN` insert events of ~1 KB documents (12 fields) of new ids
//! in batches of `BATCH`, timed from the first decode to the last commit;
//! the figure is the median over `RUNS` runs, with the cores busy meanwhile.
//!
//! Two figures per store:
//! - **node path**: the events come from a [`Source`] run by
//!   `ingest::run_source`, exactly as a node runs a source: the source task
//!   decodes and converts while the pipeline shapes and commits the previous
//!   batches, through a channel of `QUEUE` batches (`[oplog]
//!   queue_batches`' default). This is the figure the targets are about.
//! - **serial**: decode, convert, shape and commit one after the other in one
//!   task (what one core does per change).
//!
//! Against SecantusDB the rate is bound by that (Python) server; this
//! measures emcachers' side.

use std::time::Instant;

use emcachers::entities::{EntityManager, EntitySpec};
use emcachers::ingest::{Pipeline, run_source};
use emcachers::model::Change;
use emcachers::oplog::{EntityStatus, OplogStore, PostgresStore, SqliteStore};
use emcachers::plugin::{PluginEngine, PluginRegistry, SandboxConfig};
use emcachers::sources::mongo::config::FullDocument;
use emcachers::sources::mongo::events::{Converted, convert};
use emcachers::sources::{Source, SourceBatch, SourceError};
use emcachers_tests::services::PostgresServer;
use emcachers_tests::{machine, plugins};
use mongodb::bson::{self, Document, doc};
use mongodb::change_stream::event::ChangeStreamEvent;
use serde_json::json;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Changes per source batch (the source's default batch size).
const BATCH: usize = 1000;
/// Batches between the source task and the pipeline (`[oplog] queue_batches`).
const QUEUE: usize = 4;
/// Events per timed run.
const EVENTS_PER_RUN: usize = 50_000;
/// Timed runs per store.
const RUNS: usize = 5;
/// Targets of issue 9, changes per second.
const TARGET_SQLITE: f64 = 100_000.0;
const TARGET_POSTGRES: f64 = 50_000.0;

const WORDS: [&str; 8] = [
    "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel",
];

/// An insert event of document `n`, as BSON bytes.
fn event_bytes(n: usize) -> Vec<u8> {
    let mut bio = String::with_capacity(720);
    let mut i = n;
    while bio.len() < 680 {
        bio.push_str(WORDS[i % WORDS.len()]);
        bio.push(' ');
        i = i.wrapping_mul(31).wrapping_add(7);
    }
    let id = format!("item-{n:09}");
    let status = ["new", "active", "suspended", "closed"][n % 4];
    let city = ["London", "Paris", "Berlin"][n % 3];
    let tags = vec![WORDS[n % 8], WORDS[(n / 8) % 8]];
    let event = doc! {
        "_id": {"_data": format!("8265F0A1B2{n:016X}")},
        "operationType": "insert",
        "ns": {"db": "app", "coll": "items"},
        "documentKey": {"_id": &id},
        "fullDocument": {
            "_id": &id,
            "name": format!("Item number {n}"),
            "email": format!("owner{n}@example.com"),
            "age": (18 + n % 70) as i32,
            "score": (n % 10_000) as f64 / 100.0,
            "balance": (n % 1_000_000) as i64,
            "active": n.is_multiple_of(2),
            "status": status,
            "created_at": bson::DateTime::from_millis(1_700_000_000_000 + n as i64),
            "tags": tags,
            "address": {"city": city, "zip": format!("{:05}", n % 100_000)},
            "bio": bio,
        },
    };
    bson::to_vec(&event).expect("encode the event")
}

/// The shape of the `items` entity: every field typed.
fn shape() -> serde_json::Value {
    json!({
        "source_name": "items",
        "columns": [
            {"name": "id", "type": "Text", "path": "_id"},
            {"name": "name", "type": "Text", "path": "name"},
            {"name": "email", "type": "Text", "path": "email"},
            {"name": "age", "type": "Integer", "path": "age"},
            {"name": "score", "type": "Number", "path": "score"},
            {"name": "balance", "type": "Integer", "path": "balance"},
            {"name": "active", "type": "Bool", "path": "active"},
            {"name": "status", "type": "Text", "path": "status"},
            {"name": "created_at", "type": "Text", "path": "created_at"},
            {"name": "tags", "type": "JSONB", "path": "tags"},
            {"name": "city", "type": "Text", "path": "address.city"},
            {"name": "bio", "type": "Text", "path": "bio"}
        ]
    })
}

/// A pipeline into `store` routing `mongo`/`items` to the shaped entity.
async fn pipeline(store: Arc<dyn OplogStore>) -> Pipeline {
    let engine = PluginEngine::new(SandboxConfig::default()).expect("plugin engine");
    let registry = Arc::new(PluginRegistry::new(engine));
    registry
        .load_file(&plugins().shape)
        .expect("load the shape plugin");
    let entities = Arc::new(EntityManager::new(store.clone(), registry, None));
    entities
        .create(
            EntitySpec {
                name: "items".into(),
                source: "mongo".into(),
                collection: "items".into(),
                plugin: "shape".into(),
                config: shape(),
            },
            EntityStatus::Ready,
        )
        .await
        .expect("create the entity");
    entities.refresh().await.expect("refresh");
    Pipeline::new(store, entities)
}

/// CPU seconds of this process so far (`/proc/self/stat`).
fn own_cpu() -> f64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|stat| {
            let rest = stat.rsplit_once(')')?.1;
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let user: f64 = fields.get(11)?.parse().ok()?;
            let system: f64 = fields.get(12)?.parse().ok()?;
            Some((user + system) * 0.01)
        })
        .unwrap_or_default()
}

/// Decode and convert one batch of events.
fn convert_batch(chunk: &[Vec<u8>]) -> Vec<Change> {
    chunk
        .iter()
        .map(|bytes| {
            let event: ChangeStreamEvent<Document> =
                bson::from_slice(bytes).expect("decode the event");
            match convert("mongo", event, FullDocument::Default, &|_| true) {
                Converted::Change(change) => change,
                other => panic!("an insert converts to a change: {other:?}"),
            }
        })
        .collect()
}

/// Events as BSON bytes, as a source: decodes and converts `BATCH` at a
/// time, each batch with its position (like the MongoDB source).
struct BsonEvents {
    events: Vec<Vec<u8>>,
    run: usize,
}

#[async_trait::async_trait]
impl Source for BsonEvents {
    fn name(&self) -> &str {
        "mongo"
    }

    async fn run(
        &mut self,
        _position: Option<String>,
        out: tokio::sync::mpsc::Sender<SourceBatch>,
        _cancel: CancellationToken,
    ) -> Result<(), SourceError> {
        for (index, chunk) in self.events.chunks(BATCH).enumerate() {
            let batch = SourceBatch {
                source: "mongo".into(),
                changes: convert_batch(chunk),
                position: Some(format!("{{\"run\":{},\"batch\":{index}}}", self.run)),
                ..SourceBatch::default()
            };
            out.send(batch)
                .await
                .map_err(|_| SourceError::Closed("mongo".into()))?;
        }
        Ok(())
    }
}

/// One timed run over `events`, as a node runs a source: changes per second.
async fn run_node_path(
    pipeline: &Arc<Pipeline>,
    store: &Arc<dyn OplogStore>,
    events: Vec<Vec<u8>>,
    run: usize,
) -> f64 {
    let count = events.len();
    let started = Instant::now();
    let report = run_source(
        Box::new(BsonEvents { events, run }),
        pipeline.clone(),
        store.clone(),
        QUEUE,
        CancellationToken::new(),
    )
    .await
    .expect("ingest the events");
    let rate = count as f64 / started.elapsed().as_secs_f64();
    assert_eq!(
        (report.appended, report.rejected),
        (count, 0),
        "every document shapes"
    );
    rate
}

/// One timed run over `events` in one task: changes per second.
async fn run_serial(pipeline: &Pipeline, events: &[Vec<u8>], run: usize) -> f64 {
    let started = Instant::now();
    let mut converted = 0usize;
    for (index, chunk) in events.chunks(BATCH).enumerate() {
        let changes = convert_batch(chunk);
        converted += changes.len();
        let report = pipeline
            .process(SourceBatch {
                source: "mongo".into(),
                changes,
                position: Some(format!("{{\"run\":{run},\"batch\":{index}}}")),
                ..SourceBatch::default()
            })
            .await
            .expect("commit the batch");
        assert_eq!(report.rejected, 0, "every document shapes");
    }
    converted as f64 / started.elapsed().as_secs_f64()
}

/// The median of `rates`, printed with its spread and the cores busy.
fn summarize(name: &str, mut rates: Vec<f64>, target: f64, busy: f64) -> f64 {
    rates.sort_by(f64::total_cmp);
    let median = rates[rates.len() / 2];
    println!(
        "  {name}: median {median:.0} changes/s (min {:.0}, max {:.0}) over {RUNS} runs of {EVENTS_PER_RUN}; target {target:.0} (×{:.2}); cores busy (bench process): {busy:.2}",
        rates[0],
        rates[rates.len() - 1],
        median / target
    );
    median
}

/// Ingest `RUNS` runs of new documents into `store` along the node path,
/// then `RUNS` serial runs; the medians.
async fn bench(store: Arc<dyn OplogStore>, name: &str, target: f64) -> Vec<(String, f64, f64)> {
    let pipeline = Arc::new(pipeline(store.clone()).await);
    // Warm-up: compile and instantiate the plugin, warm the store.
    let warm: Vec<Vec<u8>> = (0..BATCH).map(|n| event_bytes(10_000_000 + n)).collect();
    run_serial(&pipeline, &warm, 0).await;
    let mut out = Vec::new();
    for path in ["node path", "serial"] {
        let mut rates = Vec::new();
        let mut busy = 0.0;
        for r in 0..RUNS {
            let first = (r + if path == "serial" { RUNS } else { 0 }) * EVENTS_PER_RUN;
            let events: Vec<Vec<u8>> = (first..first + EVENTS_PER_RUN).map(event_bytes).collect();
            let (cpu, wall) = (own_cpu(), Instant::now());
            let rate = if path == "serial" {
                run_serial(&pipeline, &events, r + 1).await
            } else {
                run_node_path(&pipeline, &store, events, r + 1).await
            };
            busy += (own_cpu() - cpu) / wall.elapsed().as_secs_f64() / RUNS as f64;
            println!("  {name}, {path}, run {}: {rate:.0} changes/s", r + 1);
            rates.push(rate);
        }
        let label = format!("{name} ({path})");
        let median = summarize(&label, rates, target, busy);
        out.push((label, median, target));
    }
    out
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let dir = tempfile::Builder::new()
        .prefix("emcachers-ingest-bench-")
        .tempdir()
        .expect("tempdir");
    let sections = std::env::var("INGEST_BENCH").unwrap_or_default();
    let wanted = |s: &str| sections.is_empty() || sections.split(',').any(|x| x == s);
    let bytes = event_bytes(0).len();
    println!(
        "machine: {}; events of {bytes} bytes of BSON, {BATCH} per batch",
        machine()
    );
    let mut results = Vec::new();
    if wanted("sqlite") {
        let store: Arc<dyn OplogStore> = Arc::new(
            SqliteStore::open(&dir.path().join("oplog.sqlite")).expect("open the SQLite store"),
        );
        results.extend(runtime.block_on(bench(
            store,
            "mongo events → SQLite oplog",
            TARGET_SQLITE,
        )));
    }
    if wanted("postgres") {
        let server = PostgresServer::start_durable();
        let url = server.create_database("ingest_bench");
        results.extend(runtime.block_on(async {
            let store: Arc<dyn OplogStore> = Arc::new(
                PostgresStore::connect(&url)
                    .await
                    .expect("connect the PostgreSQL store"),
            );
            bench(store, "mongo events → PostgreSQL oplog", TARGET_POSTGRES).await
        }));
    }
    println!("\nsummary: {}", machine());
    for (name, median, target) in results {
        println!(
            "  {name}: median {median:.0} changes/s, target {target:.0}, ratio {:.2}",
            median / target
        );
    }
}
