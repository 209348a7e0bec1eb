//! Throughput of the oplog store and of the SQLite cache replicator.
//!
//! Run: `cargo bench -p emcachers-tests --bench oplog` (about two minutes;
//! `OPLOG_BENCH=sqlite,postgres,replicator`, any subset, runs only those
//! sections). It ends with a summary table to copy.
//!
//! A plain timing loop, not criterion: every measurement changes a database
//! that keeps growing, so each run is a fixed amount of work timed once, and
//! the report is the median over several runs, with min and max, rows per
//! second and the ratio to the target. Each measurement also reports
//! how many cores were busy meanwhile, in this process and in everything
//! else (from `/proc`), so a run disturbed by other work on the machine shows.
//!
//! 1. **append**, SQLite and PostgreSQL: batches of 1000 rows of ~1 KB JSON
//!    (12 fields, strings and numbers), each committed with a source position,
//!    one batch at a time. Two mixes: every row a new id, and every other row
//!    updating an id appended earlier (the latest-row table then updates
//!    rows at random places). Batches are built before the clock starts.
//!    PostgreSQL is a fresh local cluster started by the bench
//!    ([`PostgresServer`]: `fsync=off`, `synchronous_commit=on`), a fresh
//!    database per mix; SQLite is a fresh file per mix (WAL,
//!    `synchronous=NORMAL`, as the store opens it).
//! 2. **replicator apply**: an oplog pre-filled with [`REPLICATOR_ROWS`] rows
//!    of one entity whose published layout has 12 typed columns (text,
//!    integer, number, bool, JSONB); each run starts from a copy of the
//!    empty entity database `ensure_layout` made before the log was filled,
//!    and times `catch_up()`: reading the log, decoding the JSON and upserting
//!    into the typed table, 5000 entries a transaction.
//! 3. **replicator rebuild**: `ensure_layout` with no database, which
//!    bootstraps it from the latest-row table page by page.
//!
//! After the replicator runs, one more catch-up, written out as the serial
//! loop `step()` runs, times its phases to show where the time goes.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use emcachers::cache::{
    CacheDbManager, ColumnKind, ColumnSpec, EntityLayout, Layouts, ReplicatorConfig,
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
const REPLICATOR_RUNS: usize = 5;
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
        "active": rng.next().is_multiple_of(2),
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
        generation: 0,
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

/// CPU time so far, in seconds: this process's (all threads) and the whole
/// machine's (every core, every process), from `/proc`. Zero where `/proc`
/// is missing.
fn cpu_seconds() -> (f64, f64) {
    // USER_HZ, the unit of both files, is 100 on every Linux architecture.
    const TICK: f64 = 0.01;
    let own = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|stat| {
            // Fields after the parenthesised command: state is field 3,
            // utime 14 and stime 15.
            let rest = stat.rsplit_once(')')?.1;
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let user: f64 = fields.get(11)?.parse().ok()?;
            let system: f64 = fields.get(12)?.parse().ok()?;
            Some((user + system) * TICK)
        })
        .unwrap_or_default();
    let machine = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|stat| {
            let line = stat.lines().next()?;
            let ticks: Vec<f64> = line
                .split_whitespace()
                .skip(1)
                .filter_map(|t| t.parse().ok())
                .collect();
            // user nice system idle iowait irq softirq steal: busy = all but idle and iowait.
            let busy: f64 = ticks
                .iter()
                .take(8)
                .enumerate()
                .filter(|(i, _)| *i != 3 && *i != 4)
                .map(|(_, t)| t)
                .sum();
            Some(busy * TICK)
        })
        .unwrap_or_default();
    (own, machine)
}

/// One timed run: wall time and the CPU used meanwhile.
#[derive(Clone, Copy)]
struct Sample {
    wall: Duration,
    /// CPU seconds of this process.
    own_cpu: f64,
    /// CPU seconds of everything else on the machine.
    other_cpu: f64,
}

/// Times one run of work.
struct Stopwatch {
    start: Instant,
    cpu: (f64, f64),
}

impl Stopwatch {
    fn start() -> Stopwatch {
        Stopwatch {
            cpu: cpu_seconds(),
            start: Instant::now(),
        }
    }

    fn stop(self) -> Sample {
        let wall = self.start.elapsed();
        let (own, machine) = cpu_seconds();
        let own_cpu = own - self.cpu.0;
        Sample {
            wall,
            own_cpu,
            other_cpu: (machine - self.cpu.1 - own_cpu).max(0.0),
        }
    }
}

/// One measurement: a fixed number of rows per run, timed over several runs.
struct Measurement {
    name: String,
    rows_per_run: usize,
    runs: Vec<Sample>,
    target: Option<f64>,
}

impl Measurement {
    fn rate(&self, sample: &Sample) -> f64 {
        self.rows_per_run as f64 / sample.wall.as_secs_f64()
    }

    fn rates(&self) -> Vec<f64> {
        let mut rates: Vec<f64> = self.runs.iter().map(|s| self.rate(s)).collect();
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

    /// Average cores busy during the runs: this process, everything else.
    fn cores(&self) -> (f64, f64) {
        let wall: f64 = self.runs.iter().map(|s| s.wall.as_secs_f64()).sum();
        let own: f64 = self.runs.iter().map(|s| s.own_cpu).sum();
        let other: f64 = self.runs.iter().map(|s| s.other_cpu).sum();
        (own / wall, other / wall)
    }

    fn print(&self) {
        let rates = self.rates();
        let shown: Vec<String> = self
            .runs
            .iter()
            .map(|s| format!("{:.0}", self.rate(s)))
            .collect();
        let (own, other) = self.cores();
        println!(
            "  {:<34} median {:>7.0} rows/s  min {:.0}, max {:.0}; cores busy: bench {own:.2}, other {other:.2}; runs: {}",
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
        let clock = Stopwatch::start();
        for batch in batches {
            let receipt = store.append(batch).await.expect("append");
            assert_eq!(receipt.appended, BATCH);
        }
        runs.push(clock.stop());
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

/// A cache root holding a copy of the entity database in `template`.
fn cache_from_template(template: &CacheDbManager, root: &Path) -> CacheDbManager {
    let dbs = CacheDbManager::new(root, Duration::from_secs(3600));
    let from = template.entity_dir(ENTITY);
    let to = dbs.entity_dir(ENTITY);
    std::fs::create_dir_all(&to).expect("create entity directory");
    for file in std::fs::read_dir(&from).expect("read template directory") {
        let file = file.expect("template file");
        std::fs::copy(file.path(), to.join(file.file_name())).expect("copy template file");
    }
    dbs
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

    let config = ReplicatorConfig::default();

    // The entity database, made by `ensure_layout` while the log is empty:
    // a table with the layout, applied up to id 0. Every apply run starts
    // from a copy, so `catch_up` applies the whole log.
    let template = CacheDbManager::new(dir.join("template"), Duration::from_secs(3600));
    let replicator = SqliteReplicator::open(
        store.clone(),
        template.clone(),
        Layouts::published_only(),
        config.clone(),
    )
    .await
    .expect("open replicator");
    assert!(
        replicator
            .ensure_layout(ENTITY, &layout)
            .await
            .expect("ensure layout")
    );
    drop(replicator);
    assert_eq!(
        template
            .state(ENTITY)
            .expect("template state")
            .map(|s| s.applied_id),
        Some(0)
    );
    drop(template);
    let template = CacheDbManager::new(dir.join("template"), Duration::from_secs(3600));

    let mut work = Workload::new(Mix::Distinct);
    let fill = Instant::now();
    for _ in 0..REPLICATOR_ROWS / BATCH {
        store.append(work.batch()).await.expect("fill append");
    }
    let head = store.head().await.expect("head");
    assert_eq!(head, REPLICATOR_ROWS as i64);
    println!(
        "  (oplog pre-filled with {REPLICATOR_ROWS} rows in {:.1} s)",
        fill.elapsed().as_secs_f64()
    );

    let mut apply = Vec::new();
    for run in 0..REPLICATOR_RUNS {
        let root = dir.join(format!("apply-{run}"));
        let dbs = cache_from_template(&template, &root);
        let mut replicator = SqliteReplicator::open(
            store.clone(),
            dbs,
            Layouts::published_only(),
            config.clone(),
        )
        .await
        .expect("open replicator");
        assert!(
            !replicator
                .ensure_layout(ENTITY, &layout)
                .await
                .expect("ensure layout"),
            "the entity database exists, nothing to build"
        );
        let clock = Stopwatch::start();
        let report = replicator.catch_up().await.expect("catch up");
        apply.push(clock.stop());
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
        name: "replicator apply (catch_up)".into(),
        rows_per_run: REPLICATOR_ROWS,
        runs: apply,
        target: Some(TARGET_APPLY),
    };
    apply.print();

    let mut rebuild = Vec::new();
    for run in 0..REPLICATOR_RUNS {
        let root = dir.join(format!("rebuild-{run}"));
        let dbs = CacheDbManager::new(&root, Duration::from_secs(3600));
        let replicator = SqliteReplicator::open(
            store.clone(),
            dbs,
            Layouts::published_only(),
            config.clone(),
        )
        .await
        .expect("open replicator");
        let clock = Stopwatch::start();
        let built = replicator
            .ensure_layout(ENTITY, &layout)
            .await
            .expect("bootstrap");
        rebuild.push(clock.stop());
        assert!(built);
        assert_eq!(
            replicator.dbs().row_count(ENTITY).expect("count"),
            Some(REPLICATOR_ROWS as u64)
        );
        drop(replicator);
        std::fs::remove_dir_all(&root).expect("remove run directory");
    }
    let rebuild = Measurement {
        name: "replicator rebuild (bootstrap)".into(),
        rows_per_run: REPLICATOR_ROWS,
        runs: rebuild,
        target: None,
    };
    rebuild.print();

    // Where catch_up's time goes: the same serial loop as `step()` (read a
    // page, copy its entries out for the blocking task, apply them), each
    // phase timed.
    let root = dir.join("apply-breakdown");
    let dbs = cache_from_template(&template, &root);
    let (mut read, mut copy, mut write) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    let mut offset = 0;
    let total = Instant::now();
    loop {
        let start = Instant::now();
        let page = store
            .read_log(offset, config.batch_size)
            .await
            .expect("read log");
        read += start.elapsed();
        let Some(last) = page.last().map(|e| e.id) else {
            break;
        };
        offset = last;
        let start = Instant::now();
        let batch: Vec<OplogEntry> = page.to_vec();
        copy += start.elapsed();
        drop(page);
        let start = Instant::now();
        let db = dbs.clone();
        tokio::task::spawn_blocking(move || {
            let refs: Vec<&OplogEntry> = batch.iter().collect();
            db.apply(ENTITY, &refs)
        })
        .await
        .expect("apply task")
        .expect("apply")
        .expect("db exists");
        write += start.elapsed();
    }
    let total = total.elapsed();
    drop(dbs);
    std::fs::remove_dir_all(&root).expect("remove run directory");
    println!(
        "  breakdown of one serial catch-up ({:.0} ms, {:.0} rows/s):",
        total.as_secs_f64() * 1000.0,
        REPLICATOR_ROWS as f64 / total.as_secs_f64()
    );
    for (name, took) in [
        ("read_log (oplog store)", read),
        ("copy entries (step clones them)", copy),
        ("EntityDb::apply (decode + upsert)", write),
    ] {
        println!(
            "    {name:<34} {:>5.0} ms  {:>3.0}%  ({:.0} rows/s alone)",
            took.as_secs_f64() * 1000.0,
            100.0 * took.as_secs_f64() / total.as_secs_f64(),
            REPLICATOR_ROWS as f64 / took.as_secs_f64()
        );
    }
    vec![apply, rebuild]
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
        "summary: {}; medians of {APPEND_RUNS} append runs of {} rows and of {REPLICATOR_RUNS} replicator runs of {REPLICATOR_ROWS} rows; total {:.0} s",
        emcachers_tests::machine(),
        BATCH * BATCHES_PER_RUN,
        started.elapsed().as_secs_f64()
    );
    println!(
        "| {:<34} | {:>13} | {:>17} | {:>7} | {:>5} | {:>12} |",
        "benchmark", "median rows/s", "min - max", "target", "ratio", "cores b/o"
    );
    println!(
        "|{:-<36}|{:->15}|{:->19}|{:->9}|{:->7}|{:->14}|",
        "", "", "", "", "", ""
    );
    for m in &all {
        let (target, ratio) = match m.target {
            Some(t) => (
                format!("{:.0}k", t / 1000.0),
                format!("{:.2}", m.median() / t),
            ),
            None => ("-".into(), "-".into()),
        };
        let rates = m.rates();
        let (own, other) = m.cores();
        println!(
            "| {:<34} | {:>13.0} | {:>17} | {:>7} | {:>5} | {:>12} |",
            m.name,
            m.median(),
            format!(
                "{:.0} - {:.0}",
                rates.first().copied().unwrap_or_default(),
                rates.last().copied().unwrap_or_default()
            ),
            target,
            ratio,
            format!("{own:.2} / {other:.2}")
        );
    }
    println!(
        "(cores b/o: cores busy on average during the runs, bench process / everything else; \
         for PostgreSQL \"else\" includes the server)"
    );
}
