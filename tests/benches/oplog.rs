//! Throughput of the oplog store and of the SQLite cache replicator.
//!
//! A plain timing loop (no criterion): every measurement mutates a database
//! that keeps growing, so each run is a fixed amount of work timed once, and
//! the report is the median over several runs (min and max beside it).
//!
//! 1. `append`, SQLite and PostgreSQL: batches of 1000 rows of ~1 KB JSON
//!    (12 fields, strings and numbers) committed with a source position, one
//!    batch at a time. Two mixes: every row a new id, and half the rows
//!    updating ids appended earlier (the latest-row table then updates).
//!    Batches are built before the clock starts. PostgreSQL is a fresh
//!    cluster started by the bench ([`PostgresServer`]: `fsync=off`,
//!    `synchronous_commit=on`), one fresh database per mix.
//! 2. `replicator apply`: an oplog pre-filled with [`REPLICATOR_ROWS`] rows
//!    of one entity with a published 12-column layout; each run starts from an
//!    empty entity database (created as `ensure_layout` creates it on an empty
//!    log, applied id 0) and times `catch_up()`: reading the log, parsing the
//!    JSON and upserting into the typed table.
//! 3. `replicator rebuild`: `ensure_layout` with no database, which
//!    bootstraps from the latest-row table page by page.
//!
//! A breakdown of the replicator follows (reading the log alone, parsing the
//! JSON alone, `EntityDb::apply` alone) to show where its time goes.
//!
//! Run: `cargo bench -p emcachers-tests --bench oplog` (about two minutes).
//! `OPLOG_BENCH=sqlite,postgres,replicator` (any subset) runs only those
//! sections.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use emcachers::cache::{
    CacheDbManager, ColumnKind, ColumnSpec, EntityDb, EntityLayout, ReplicatorConfig,
    SqliteReplicator, TableSpec,
};
use emcachers::oplog::{
    AppendBatch, NewRow, Op, OplogEntry, OplogStore, PostgresStore, SourcePosition, SqliteStore,
};
use emcachers_tests::services::PostgresServer;
use serde_json::json;

/// Rows per append batch.
const BATCH: usize = 1000;
/// Batches appended per timed run.
const BATCHES_PER_RUN: usize = 50;
/// Timed append runs per store and mix.
const APPEND_RUNS: usize = 5;
/// Batches appended before the first timed run (they also provide the ids
/// the update mix updates).
const WARMUP_BATCHES: usize = 20;
/// Rows in the oplog the replicator applies.
const REPLICATOR_ROWS: usize = 200_000;
/// Timed replicator runs (apply and rebuild each).
const REPLICATOR_RUNS: usize = 3;
/// The entity of every row.
const ENTITY: &str = "items";

/// Targets of the issue, rows per second.
const TARGET_SQLITE_APPEND: f64 = 100_000.0;
const TARGET_POSTGRES_APPEND: f64 = 50_000.0;
const TARGET_APPLY: f64 = 200_000.0;

/// A short deterministic pseudo-random generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

const WORDS: [&str; 16] = [
    "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet",
    "kilo", "lima", "mike", "november", "oscar", "papa",
];
const CITIES: [&str; 6] = ["London", "Paris", "Berlin", "Madrid", "Rome", "Vienna"];

fn doc_id(n: usize) -> String {
    format!("item-{n:08}")
}

/// A ~1 KB JSON row with 12 fields matching [`layout`].
fn document(n: usize, revision: u64, rng: &mut Rng) -> String {
    let mut bio = String::with_capacity(760);
    while bio.len() < 700 {
        bio.push_str(WORDS[rng.below(WORDS.len())]);
        bio.push(' ');
    }
    let status = ["new", "active", "suspended", "closed"][rng.below(4)];
    json!({
        "id": doc_id(n),
        "name": format!("Item number {n}"),
        "email": format!("owner{n}@example.com"),
        "age": 18 + rng.below(70),
        "score": rng.below(10_000) as f64 / 100.0,
        "balance": (rng.next() % 10_000_000) as f64 / 100.0 - 50_000.0,
        "active": rng.next() % 2 == 0,
        "status": status,
        "created_at": 1_700_000_000_000_i64 + n as i64 * 1000 + revision as i64,
        "tags": [WORDS[rng.below(16)], WORDS[rng.below(16)], WORDS[rng.below(16)]],
        "address": {
            "street": format!("{} {} Street", 1 + rng.below(200), WORDS[rng.below(16)]),
            "city": CITIES[rng.below(CITIES.len())],
            "zip": format!("{:05}", rng.below(100_000)),
            "country": "EU"
        },
        "bio": bio,
    })
    .to_string()
}

/// The published layout of [`ENTITY`]: 12 typed columns, no secondary index.
fn layout() -> EntityLayout {
    let col = |name: &str, kind| ColumnSpec {
        name: name.into(),
        kind,
    };
    EntityLayout {
        version: "bench-v1".into(),
        table: TableSpec {
            columns: vec![
                col("id", ColumnKind::Text),
                col("name", ColumnKind::Text),
                col("email", ColumnKind::Text),
                col("age", ColumnKind::Integer),
                col("score", ColumnKind::Number),
                col("balance", ColumnKind::Number),
                col("active", ColumnKind::Bool),
                col("status", ColumnKind::Text),
                col("created_at", ColumnKind::Integer),
                col("tags", ColumnKind::Jsonb),
                col("address", ColumnKind::Jsonb),
                col("bio", ColumnKind::Text),
            ],
            indexes: Vec::new(),
        },
    }
}

/// Which ids a batch touches.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mix {
    /// Every row a new id.
    Distinct,
    /// Every other row updates an id appended earlier.
    HalfUpdates,
}

/// Builds append batches: ids, revisions and source positions.
struct Workload {
    mix: Mix,
    next_id: usize,
    batches: u64,
    rng: Rng,
}

impl Workload {
    fn new(mix: Mix) -> Workload {
        Workload {
            mix,
            next_id: 0,
            batches: 0,
            rng: Rng(0x9E37_79B9_7F4A_7C15),
        }
    }

    fn batch(&mut self) -> AppendBatch {
        self.batches += 1;
        let existing = self.next_id;
        let rows = (0..BATCH)
            .map(|i| {
                let update = self.mix == Mix::HalfUpdates && existing > 0 && i % 2 == 1;
                let n = if update {
                    self.rng.below(existing)
                } else {
                    self.next_id += 1;
                    self.next_id - 1
                };
                NewRow {
                    entity: ENTITY.into(),
                    doc_id: doc_id(n),
                    op: Op::Upsert,
                    data: Some(document(n, self.batches, &mut self.rng)),
                    plugin: "shape".into(),
                    plugin_version: "1.0.0".into(),
                }
            })
            .collect();
        AppendBatch {
            rows,
            rejected: Vec::new(),
            position: Some(SourcePosition {
                source: "bench-source".into(),
                position: format!("{{\"batch\":{}}}", self.batches),
            }),
            snapshot: false,
        }
    }
}

/// One measurement: a fixed number of rows per run, timed over several runs.
struct Measurement {
    name: String,
    rows_per_run: usize,
    runs: Vec<Duration>,
    target: Option<f64>,
}

impl Measurement {
    fn rates(&self) -> Vec<f64> {
        let mut rates: Vec<f64> = self
            .runs
            .iter()
            .map(|d| self.rows_per_run as f64 / d.as_secs_f64())
            .collect();
        rates.sort_by(f64::total_cmp);
        rates
    }

    fn median(&self) -> f64 {
        let rates = self.rates();
        let mid = rates.len() / 2;
        if rates.len() % 2 == 1 {
            rates[mid]
        } else {
            (rates[mid - 1] + rates[mid]) / 2.0
        }
    }

    fn print(&self) {
        let rates = self.rates();
        let shown: Vec<String> = self
            .runs
            .iter()
            .map(|d| format!("{:.0}", self.rows_per_run as f64 / d.as_secs_f64()))
            .collect();
        println!(
            "  {:<40} median {:>9.0} rows/s  (min {:.0}, max {:.0}; runs: {})",
            self.name,
            self.median(),
            rates.first().copied().unwrap_or_default(),
            rates.last().copied().unwrap_or_default(),
            shown.join(", ")
        );
    }
}

/// Append throughput of `store` for `mix`.
async fn bench_append(store: &dyn OplogStore, name: &str, mix: Mix, target: f64) -> Measurement {
    let mut work = Workload::new(mix);
    for _ in 0..WARMUP_BATCHES {
        store.append(work.batch()).await.expect("warm-up append");
    }
    let mut runs = Vec::with_capacity(APPEND_RUNS);
    for _ in 0..APPEND_RUNS {
        let batches: Vec<AppendBatch> = (0..BATCHES_PER_RUN).map(|_| work.batch()).collect();
        let start = Instant::now();
        for batch in batches {
            let receipt = store.append(batch).await.expect("append");
            assert_eq!(receipt.appended, BATCH);
        }
        runs.push(start.elapsed());
    }
    let position = store
        .source_position("bench-source")
        .await
        .expect("source position");
    assert_eq!(
        position.as_deref(),
        Some(format!("{{\"batch\":{}}}", work.batches).as_str())
    );
    let m = Measurement {
        name: name.into(),
        rows_per_run: BATCH * BATCHES_PER_RUN,
        runs,
        target: Some(target),
    };
    m.print();
    m
}

/// A fresh entity database at `root` with `layout`, applied up to `applied`:
/// what `ensure_layout` makes when the log is at `applied`.
fn empty_entity_db(root: &Path, layout: &EntityLayout, applied: i64) -> CacheDbManager {
    let dbs = CacheDbManager::new(root, Duration::from_secs(3600));
    EntityDb::create(&dbs.db_path(ENTITY), ENTITY, layout, applied).expect("create entity db");
    dbs
}

fn time_once<T>(work: impl FnOnce() -> T) -> (T, Duration) {
    let start = Instant::now();
    let out = work();
    (out, start.elapsed())
}

/// Replicator apply and rebuild throughput, and where the apply time goes.
async fn bench_replicator(dir: &Path) -> Vec<Measurement> {
    let store: Arc<dyn OplogStore> =
        Arc::new(SqliteStore::open(&dir.join("oplog.sqlite")).expect("open sqlite store"));
    let layout = layout();
    layout
        .publish(store.as_ref(), ENTITY)
        .await
        .expect("publish layout");

    let mut work = Workload::new(Mix::Distinct);
    let (_, fill) = {
        let start = Instant::now();
        for _ in 0..REPLICATOR_ROWS / BATCH {
            store.append(work.batch()).await.expect("fill append");
        }
        ((), start.elapsed())
    };
    let head = store.head().await.expect("head");
    assert_eq!(head, REPLICATOR_ROWS as i64);
    println!(
        "  (oplog pre-filled with {REPLICATOR_ROWS} rows in {:.1} s)",
        fill.as_secs_f64()
    );

    let config = ReplicatorConfig::default();
    let mut apply = Vec::new();
    for run in 0..REPLICATOR_RUNS {
        let root = dir.join(format!("apply-{run}"));
        let dbs = empty_entity_db(&root, &layout, 0);
        let mut replicator = SqliteReplicator::open(store.clone(), dbs, config.clone())
            .await
            .expect("open replicator");
        assert!(
            !replicator
                .ensure_layout(ENTITY, &layout)
                .await
                .expect("ensure layout"),
            "the entity database exists, nothing to build"
        );
        let start = Instant::now();
        let report = replicator.catch_up().await.expect("catch up");
        apply.push(start.elapsed());
        assert_eq!(
            (report.upserted, report.offset),
            (REPLICATOR_ROWS, head),
            "every row applied"
        );
        assert_eq!(
            replicator.dbs().row_count(ENTITY).expect("count"),
            Some(REPLICATOR_ROWS as u64)
        );
        drop(replicator);
        std::fs::remove_dir_all(&root).expect("remove run directory");
    }
    let apply = Measurement {
        name: format!("replicator apply (catch_up, batch {})", config.batch_size),
        rows_per_run: REPLICATOR_ROWS,
        runs: apply,
        target: Some(TARGET_APPLY),
    };
    apply.print();

    let mut rebuild = Vec::new();
    for run in 0..REPLICATOR_RUNS {
        let root = dir.join(format!("rebuild-{run}"));
        let dbs = CacheDbManager::new(&root, Duration::from_secs(3600));
        let replicator = SqliteReplicator::open(store.clone(), dbs, config.clone())
            .await
            .expect("open replicator");
        let start = Instant::now();
        let built = replicator
            .ensure_layout(ENTITY, &layout)
            .await
            .expect("bootstrap");
        rebuild.push(start.elapsed());
        assert!(built);
        assert_eq!(
            replicator.dbs().row_count(ENTITY).expect("count"),
            Some(REPLICATOR_ROWS as u64)
        );
        drop(replicator);
        std::fs::remove_dir_all(&root).expect("remove run directory");
    }
    let rebuild = Measurement {
        name: format!("replicator rebuild (page {})", config.rebuild_page),
        rows_per_run: REPLICATOR_ROWS,
        runs: rebuild,
        target: None,
    };
    rebuild.print();

    println!("  breakdown of apply (one run each):");
    let mut breakdown = Vec::new();
    // Reading the log alone, as catch_up pages it.
    let mut entries: Vec<OplogEntry> = Vec::with_capacity(REPLICATOR_ROWS);
    let start = Instant::now();
    loop {
        let after = entries.last().map_or(0, |e| e.id);
        let page = store
            .read_log(after, config.batch_size)
            .await
            .expect("read log");
        if page.is_empty() {
            break;
        }
        entries.extend(page);
    }
    breakdown.push(("read_log pages", start.elapsed()));
    // Parsing the JSON alone, as row_values does (into a map).
    let ((), parse) = time_once(|| {
        for entry in &entries {
            let map: serde_json::Map<String, serde_json::Value> =
                serde_json::from_str(entry.data.as_deref().unwrap_or("{}")).expect("json");
            std::hint::black_box(map);
        }
    });
    breakdown.push(("serde_json parse to Map", parse));
    // EntityDb::apply alone, entries already in memory.
    let root = dir.join("apply-direct");
    let dbs = empty_entity_db(&root, &layout, 0);
    let ((), direct) = time_once(|| {
        for chunk in entries.chunks(config.batch_size) {
            let refs: Vec<&OplogEntry> = chunk.iter().collect();
            dbs.apply(ENTITY, &refs).expect("apply").expect("db exists");
        }
    });
    breakdown.push(("EntityDb::apply (in memory)", direct));
    drop(dbs);
    std::fs::remove_dir_all(&root).expect("remove run directory");
    for (name, took) in breakdown {
        println!(
            "    {name:<30} {:>9.0} rows/s  ({:.0} ms)",
            REPLICATOR_ROWS as f64 / took.as_secs_f64(),
            took.as_secs_f64() * 1000.0
        );
    }
    vec![apply, rebuild]
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cores} cores, {cpu}")
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let dir = tempfile::Builder::new()
        .prefix("emcachers-oplog-bench-")
        .tempdir()
        .expect("tempdir");
    let started = Instant::now();
    let mut all = Vec::new();
    let sections = std::env::var("OPLOG_BENCH").unwrap_or_default();
    let run = |section: &str| sections.is_empty() || sections.split(',').any(|s| s == section);

    let sample = Workload::new(Mix::Distinct).batch();
    let bytes: usize = sample
        .rows
        .iter()
        .filter_map(|r| r.data.as_ref())
        .map(String::len)
        .sum();
    println!(
        "row data: {} bytes on average, 12 fields; {BATCH} rows per batch, a source position per batch",
        bytes / sample.rows.len()
    );
    if run("sqlite") {
        println!("oplog append, SQLite");
        runtime.block_on(async {
            for (mix, name) in [
                (Mix::Distinct, "sqlite append, new ids"),
                (Mix::HalfUpdates, "sqlite append, half updates"),
            ] {
                let path = dir.path().join(format!("append-{}.sqlite", all.len()));
                let store = SqliteStore::open(&path).expect("open sqlite store");
                all.push(bench_append(&store, name, mix, TARGET_SQLITE_APPEND).await);
            }
        });
    }

    if run("postgres") {
        println!("oplog append, PostgreSQL (same batches; local server, fsync=off)");
        let server = PostgresServer::start();
        runtime.block_on(async {
            for (index, (mix, name)) in [
                (Mix::Distinct, "postgres append, new ids"),
                (Mix::HalfUpdates, "postgres append, half updates"),
            ]
            .into_iter()
            .enumerate()
            {
                let url = server.create_database(&format!("oplog_bench_{index}"));
                let store = PostgresStore::connect(&url)
                    .await
                    .expect("connect postgres store");
                all.push(bench_append(&store, name, mix, TARGET_POSTGRES_APPEND).await);
                store.pool().close().await;
            }
        });
        drop(server);
    }

    if run("replicator") {
        println!("replicator into a per-entity SQLite database (12 typed columns, no index)");
        all.extend(runtime.block_on(bench_replicator(dir.path())));
    }

    println!();
    println!(
        "summary ({}; total {:.0} s)",
        machine(),
        started.elapsed().as_secs_f64()
    );
    println!(
        "| {:<40} | {:>13} | {:>9} | {:>6} |",
        "benchmark", "median rows/s", "target", "ratio"
    );
    println!("|{:-<42}|{:->15}|{:->11}|{:->8}|", "", "", "", "");
    for m in &all {
        let (target, ratio) = match m.target {
            Some(t) => (format!("{t:.0}"), format!("{:.2}x", m.median() / t)),
            None => ("-".into(), "-".into()),
        };
        println!(
            "| {:<40} | {:>13.0} | {:>9} | {:>6} |",
            m.name,
            m.median(),
            target,
            ratio
        );
    }
}

// ---- TEMPORARY experiments
#[allow(dead_code, missing_docs, clippy::all)]
mod exp {
    use super::*;
    use rusqlite::types::Value as SqlValue;
    use rusqlite::{Connection, params_from_iter};

    fn cols() -> Vec<(String, ColumnKind)> {
        layout()
            .table
            .columns
            .iter()
            .map(|c| (c.name.clone(), c.kind))
            .collect()
    }

    fn sql_value(kind: ColumnKind, value: &serde_json::Value) -> SqlValue {
        use serde_json::Value;
        match (kind, value) {
            (_, Value::Null) => SqlValue::Null,
            (ColumnKind::Jsonb, v) => SqlValue::Text(v.to_string()),
            (_, Value::Bool(b)) => SqlValue::Integer(i64::from(*b)),
            (ColumnKind::Number, Value::Number(n)) => {
                n.as_f64().map(SqlValue::Real).unwrap_or(SqlValue::Null)
            }
            (_, Value::Number(n)) => match n.as_i64() {
                Some(i) => SqlValue::Integer(i),
                None => n.as_f64().map(SqlValue::Real).unwrap_or(SqlValue::Null),
            },
            (_, Value::String(s)) => SqlValue::Text(s.clone()),
            (_, c) => SqlValue::Text(c.to_string()),
        }
    }

    pub fn values(rows: &[(String, String)]) -> Vec<Vec<SqlValue>> {
        let cols = cols();
        rows.iter()
            .map(|(id, data)| {
                let obj: serde_json::Map<String, serde_json::Value> =
                    serde_json::from_str(data).unwrap();
                let mut v = vec![SqlValue::Text(id.clone())];
                for (n, k) in cols.iter().skip(1) {
                    v.push(
                        obj.get(n)
                            .map(|x| sql_value(*k, x))
                            .unwrap_or(SqlValue::Null),
                    );
                }
                v
            })
            .collect()
    }

    fn open(path: &Path, pragmas: &str) -> Connection {
        let conn = Connection::open(path).unwrap();
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        conn.pragma_update(None, "synchronous", "NORMAL").unwrap();
        conn.execute_batch(pragmas).unwrap();
        let defs: Vec<String> = cols()
            .iter()
            .map(|(n, k)| {
                format!(
                    "\"{n}\" {}{}",
                    k.sql_type(),
                    if n == "id" {
                        " PRIMARY KEY NOT NULL"
                    } else {
                        ""
                    }
                )
            })
            .collect();
        conn.execute_batch(&format!("CREATE TABLE t ({})", defs.join(", ")))
            .unwrap();
        conn
    }

    fn upsert_sql(rows_per_stmt: usize, conflict: bool) -> String {
        let cols = cols();
        let names: Vec<String> = cols.iter().map(|(n, _)| format!("\"{n}\"")).collect();
        let one = format!("({})", vec!["?"; cols.len()].join(", "));
        let mut sql = format!(
            "INSERT INTO t ({}) VALUES {}",
            names.join(", "),
            vec![one; rows_per_stmt].join(", ")
        );
        if conflict {
            let up: Vec<String> = names
                .iter()
                .skip(1)
                .map(|n| format!("{n} = excluded.{n}"))
                .collect();
            sql.push_str(&format!(
                " ON CONFLICT (\"id\") DO UPDATE SET {}",
                up.join(", ")
            ));
        }
        sql
    }

    pub fn run(
        dir: &Path,
        rows: &[(String, String)],
        name: &str,
        pragmas: &str,
        per_stmt: usize,
        conflict: bool,
        parse: bool,
        txn: usize,
    ) {
        let pre = if parse { None } else { Some(values(rows)) };
        let path = dir.join(format!("exp-{name}.sqlite"));
        let mut conn = open(&path, pragmas);
        let sql1 = upsert_sql(1, conflict);
        let sqln = upsert_sql(per_stmt, conflict);
        let start = Instant::now();
        for (ci, chunk) in rows.chunks(txn).enumerate() {
            let owned;
            let vals: &[Vec<SqlValue>] = match &pre {
                Some(p) => &p[ci * txn..ci * txn + chunk.len()],
                None => {
                    owned = values(chunk);
                    &owned
                }
            };
            let tx = conn.transaction().unwrap();
            {
                let mut s1 = tx.prepare_cached(&sql1).unwrap();
                let mut sn = tx.prepare_cached(&sqln).unwrap();
                let mut it = vals.chunks(per_stmt);
                for group in &mut it {
                    if group.len() == per_stmt && per_stmt > 1 {
                        sn.execute(params_from_iter(group.iter().flatten()))
                            .unwrap();
                    } else {
                        for v in group {
                            s1.execute(params_from_iter(v.iter())).unwrap();
                        }
                    }
                }
            }
            tx.commit().unwrap();
        }
        let t = start.elapsed();
        drop(conn);
        println!(
            "    {name:<44} {:>9.0} rows/s",
            rows.len() as f64 / t.as_secs_f64()
        );
        for s in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{s}", path.display()));
        }
    }
}
