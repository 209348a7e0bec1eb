//! Throughput and latency of the Schematic replicator path: the dev
//! datastream server → `emcachers run` → Redis.
//!
//! Run: `cargo bench -p emcachers-tests --bench datastream` (about two
//! minutes with the defaults, after the builds). It ends with a summary.
//!
//! What runs:
//!
//! - **Redis**: a real `redis-server` of the bench's own
//!   ([`RedisServer`]: loopback, free port, persistence off).
//! - **emcachers**: the real binary, built in release by the bench
//!   ([`emcachers_bin`]: the bench executable lives in `target/release`), run
//!   as users run it in place of Schematic's Go replicator: the environment
//!   profile (`SCHEMATIC_API_KEY`, `SCHEMATIC_API_URL`, `REDIS_ADDR`,
//!   `HEALTH_PORT`, default `LOG_LEVEL` info), the schematic plugin built by
//!   [`plugins`], the SQLite oplog in a temporary data directory. A separate
//!   process, so its CPU time is measured on its own.
//! - **the dev server** ([`DevServer`], in this process on a 2-thread tokio
//!   runtime), started without fixtures. Messages come from its flood:
//!   `rulesengine.Company` `full` messages of about `SIZE` bytes (1 KiB) over
//!   `IDS` company ids (`bench_comp_0` …), each document carrying
//!   `bench_sent_unix_ns` (the server's clock when it queued the message)
//!   and `bench_seq`. The server buffers as much as needed (per-connection
//!   queue raised to hold a whole run), so a slow consumer is not cut off.
//!
//! Before the measurements a warm-up flood writes every id once, so every run
//! updates existing keys; the warm-up also checks that one flood message is
//! one oplog row (the landing measure below relies on it).
//!
//! 1. **saturation**: flood `MESSAGES` messages as fast as the server makes
//!    them. Landing is read from Redis itself: the writer's offset key
//!    (`emcachers:redis:offset`, the oplog id everything up to which is in
//!    Redis, written with each batch), polled every millisecond. The rate is
//!    messages from the first landing to the last (`MESSAGES` / (last −
//!    first)), the median over `RUNS` runs; also shown: from the flood's
//!    start, and, from `/debug` polled every 50 ms, when the source had
//!    received every message (datastream `messages` counter) and when the
//!    oplog held them all (`oplog.head`): received ≈ committed ≪ landed means
//!    the Redis writer is the bottleneck, received ≈ landed means the
//!    pipeline in front of it is.
//! 2. **latency**: a flood at `RATE` messages/s for `LATENCY_SECS` s. Redis
//!    keyspace notifications (`CONFIG SET notify-keyspace-events K$`,
//!    `PSUBSCRIBE __keyspace@0__:schematic:company:{ver}:bench_comp_*`) tell
//!    when each company key is set; every `SAMPLE_EVERY`-th notification the
//!    bench GETs the key and records notification time − the document's
//!    `bench_sent_unix_ns` (same machine, same clock). Printed: p50, p90,
//!    p99, p99.9, max and the sample count. A sample whose document is newer
//!    than its notification (overwritten before the GET) is dropped and
//!    counted.
//!
//! Every measurement also reports the cores busy meanwhile (from `/proc`):
//! this process (the dev server and the probes), emcachers, redis-server,
//! and everything else on the machine, so a disturbed run shows.
//!
//! Environment knobs (all optional):
//!
//! | variable | default | |
//! |---|---|---|
//! | `DATASTREAM_BENCH` | `saturation,latency` | sections to run (any subset) |
//! | `DATASTREAM_BENCH_MESSAGES` | 200000 | messages per saturation run |
//! | `DATASTREAM_BENCH_RUNS` | 3 | saturation runs |
//! | `DATASTREAM_BENCH_IDS` | 10000 | company ids the flood cycles over |
//! | `DATASTREAM_BENCH_SIZE` | 1024 | bytes per document |
//! | `DATASTREAM_BENCH_RATE` | 10000 | offered messages/s of the latency run |
//! | `DATASTREAM_BENCH_LATENCY_SECS` | 10 | length of the latency run |
//! | `DATASTREAM_BENCH_SAMPLE_EVERY` | 10 | latency: GET one key in this many notifications |
//! | `DATASTREAM_BENCH_PLUGIN` | the built `schematic` plugin | another build of it, e.g. one with its name section kept (`CARGO_PROFILE_PLUGIN_STRIP=false`) so a profile names the plugin's functions |
//! | `DATASTREAM_BENCH_PERF` | off | `1`: one more saturation run (not counted) under `perf record -p <emcachers>`, then the top of `perf report` by thread, shared object and symbol; `callgraph`: the same with DWARF call graphs, reporting inclusive time per function (slower, a few hundred MB of perf data); emcachers then runs with `EMCACHERS_WASM_PROFILER=perfmap`, so the plugin's JIT-compiled functions have names (wasmtime writes `/tmp/perf-<pid>.map`, left for later `perf report`s) |

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use emcachers_datastream_server::{COMPANY, Config as DevConfig, DevServer, FloodRequest};
use emcachers_tests::services::RedisServer;
use emcachers_tests::{emcachers_bin, plugins, wait_until, workspace_root};
use serde_json::Value;

const API_KEY: &str = "sch_bench";
/// The Redis writer's offset key (its default `state_prefix` + `offset`).
const OFFSET_KEY: &str = "emcachers:redis:offset";

/// The knobs of the module documentation.
struct Knobs {
    sections: String,
    messages: u64,
    runs: usize,
    ids: u64,
    size: usize,
    rate: u64,
    latency_secs: u64,
    sample_every: u64,
    perf: Perf,
}

/// `DATASTREAM_BENCH_PERF`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Perf {
    Off,
    /// `1`: a flat profile (self time by thread, object, symbol).
    Flat,
    /// `callgraph`: DWARF call graphs, inclusive time by function.
    CallGraph,
}

fn env_num(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        _ => default,
    }
}

impl Knobs {
    fn from_env() -> Knobs {
        Knobs {
            sections: std::env::var("DATASTREAM_BENCH").unwrap_or_default(),
            messages: env_num("DATASTREAM_BENCH_MESSAGES", 200_000).max(1),
            runs: env_num("DATASTREAM_BENCH_RUNS", 3).max(1) as usize,
            ids: env_num("DATASTREAM_BENCH_IDS", 10_000).max(1),
            size: env_num("DATASTREAM_BENCH_SIZE", 1024) as usize,
            rate: env_num("DATASTREAM_BENCH_RATE", 10_000).max(1),
            latency_secs: env_num("DATASTREAM_BENCH_LATENCY_SECS", 10).max(1),
            sample_every: env_num("DATASTREAM_BENCH_SAMPLE_EVERY", 10).max(1),
            perf: match std::env::var("DATASTREAM_BENCH_PERF").as_deref() {
                Ok("1") => Perf::Flat,
                Ok("callgraph") => Perf::CallGraph,
                _ => Perf::Off,
            },
        }
    }

    fn run(&self, section: &str) -> bool {
        self.sections.is_empty() || self.sections.split(',').any(|s| s.trim() == section)
    }
}

// ------------------------------------------------------------ CPU accounting

/// USER_HZ, the unit of `/proc` CPU times: 100 on every Linux architecture.
const TICK: f64 = 0.01;

/// utime + stime of a process, in seconds (0 when unreadable).
fn process_cpu(stat_path: &str) -> f64 {
    std::fs::read_to_string(stat_path)
        .ok()
        .and_then(|stat| {
            // Fields after the parenthesised command: utime is field 14,
            // stime 15 (11 and 12 after the state field).
            let rest = stat.rsplit_once(')')?.1;
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let user: f64 = fields.get(11)?.parse().ok()?;
            let system: f64 = fields.get(12)?.parse().ok()?;
            Some((user + system) * TICK)
        })
        .unwrap_or_default()
}

/// Busy CPU seconds of the whole machine (all but idle and iowait).
fn machine_cpu() -> f64 {
    std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|stat| {
            let line = stat.lines().next()?;
            let ticks: Vec<f64> = line
                .split_whitespace()
                .skip(1)
                .filter_map(|t| t.parse().ok())
                .collect();
            Some(
                ticks
                    .iter()
                    .take(8)
                    .enumerate()
                    .filter(|(i, _)| *i != 3 && *i != 4)
                    .map(|(_, t)| t)
                    .sum::<f64>()
                    * TICK,
            )
        })
        .unwrap_or_default()
}

/// The processes whose CPU time is reported apart.
#[derive(Clone)]
struct Pids {
    emcachers: u32,
    redis: u32,
}

/// CPU seconds so far: (bench, emcachers, redis, machine).
fn cpu_now(pids: &Pids) -> [f64; 4] {
    [
        process_cpu("/proc/self/stat"),
        process_cpu(&format!("/proc/{}/stat", pids.emcachers)),
        process_cpu(&format!("/proc/{}/stat", pids.redis)),
        machine_cpu(),
    ]
}

/// Cores busy on average over a span: bench, emcachers, redis, the rest.
#[derive(Clone, Copy, Default)]
struct Cores([f64; 4]);

struct CpuClock {
    pids: Pids,
    start: Instant,
    cpu: [f64; 4],
}

impl CpuClock {
    fn start(pids: &Pids) -> CpuClock {
        CpuClock {
            pids: pids.clone(),
            cpu: cpu_now(pids),
            start: Instant::now(),
        }
    }

    fn stop(self) -> Cores {
        let wall = self.start.elapsed().as_secs_f64().max(1e-9);
        let now = cpu_now(&self.pids);
        let d: Vec<f64> = (0..4).map(|i| now[i] - self.cpu[i]).collect();
        let other = (d[3] - d[0] - d[1] - d[2]).max(0.0);
        Cores([d[0] / wall, d[1] / wall, d[2] / wall, other / wall])
    }
}

impl std::fmt::Display for Cores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let [bench, emcachers, redis, other] = self.0;
        write!(
            f,
            "cores busy: emcachers {emcachers:.2}, redis {redis:.2}, bench+dev server {bench:.2}, other {other:.2}"
        )
    }
}

fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or_default()
}

// ------------------------------------------------------------ emcachers

/// `emcachers run` with the Schematic environment profile; killed on drop.
struct Emcachers {
    child: Child,
    log: PathBuf,
    health: String,
    agent: ureq::Agent,
}

impl Emcachers {
    fn start(
        bin: &Path,
        plugin: &Path,
        dir: &Path,
        api_url: &str,
        redis_addr: &str,
        perfmap: bool,
    ) -> Emcachers {
        let plugin_dir = dir.join("plugins");
        std::fs::create_dir_all(&plugin_dir).expect("plugin dir");
        std::fs::copy(plugin, plugin_dir.join("schematic.wasm")).expect("copy the plugin");
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let log = dir.join("emcachers.log");
        let file = std::fs::File::create(&log).expect("log file");
        let mut command = Command::new(bin);
        command.env_clear();
        if perfmap {
            // wasmtime names the JIT-compiled plugin code in /tmp/perf-<pid>.map.
            command.env("EMCACHERS_WASM_PROFILER", "perfmap");
        }
        let child = command
            .arg("run")
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("SCHEMATIC_API_KEY", API_KEY)
            .env("SCHEMATIC_API_URL", api_url)
            .env("REDIS_ADDR", redis_addr)
            .env("HEALTH_PORT", port.to_string())
            .env("EMCACHERS_DATA_DIR", dir.join("data"))
            .env("EMCACHERS_PLUGINS__DIR", &plugin_dir)
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log file"))
            .stderr(file)
            .spawn()
            .expect("start emcachers run");
        Emcachers {
            child,
            log,
            health: format!("http://127.0.0.1:{port}"),
            agent: ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_global(Some(Duration::from_secs(5)))
                .build()
                .into(),
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    fn log_len(&self) -> u64 {
        std::fs::metadata(&self.log).map_or(0, |m| m.len())
    }

    /// GET a health endpoint: (status, JSON body).
    fn get(&self, path: &str) -> Option<(u16, Value)> {
        let mut response = self
            .agent
            .get(&format!("{}{path}", self.health))
            .call()
            .ok()?;
        let text = response.body_mut().read_to_string().ok()?;
        Some((
            response.status().as_u16(),
            serde_json::from_str(&text).unwrap_or(Value::Null),
        ))
    }

    fn wait_ready(&mut self, timeout: Duration) -> Value {
        let mut body = Value::Null;
        let mut exited = None;
        let ready = wait_until(timeout, || {
            if let Ok(Some(status)) = self.child.try_wait() {
                exited = Some(status);
                return true;
            }
            match self.get("/ready") {
                Some((status, b)) => {
                    body = b;
                    status == 200
                }
                None => false,
            }
        });
        assert!(
            ready && exited.is_none(),
            "emcachers not ready within {timeout:?} (exit {exited:?}, last /ready {body}):\n{}",
            self.log_tail()
        );
        body
    }

    /// The counters of `/debug` the bench follows.
    fn counters(&self) -> Counters {
        let (_, debug) = self.get("/debug").expect("GET /debug");
        let n = |v: &Value| v.as_i64().unwrap_or(-1);
        Counters {
            received: n(&debug["sources"][0]["status"]["counters"]["messages"]),
            head: n(&debug["oplog"]["head"]),
            applied: n(&debug["writers"][0]["status"]["applied_offset"]),
            batches: n(&debug["writers"][0]["status"]["batches"]),
            errors: n(&debug["writers"][0]["status"]["errors"]),
        }
    }
}

impl Drop for Emcachers {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What `/debug` says at one moment.
#[derive(Debug, Clone, Copy)]
struct Counters {
    /// Change messages the datastream source received.
    received: i64,
    /// The oplog head.
    head: i64,
    /// The Redis writer's applied offset.
    applied: i64,
    batches: i64,
    errors: i64,
}

/// Where messages wait, from `/debug` samples: between the source receiving
/// them and the oplog holding them (source batching, plugin, oplog commit),
/// and between the oplog and Redis (the writer's poll, plugin keys, Redis
/// writes).
#[derive(Default)]
struct Backlog {
    samples: u64,
    pipeline: (i64, i64),
    writer: (i64, i64),
}

impl Backlog {
    fn add(&mut self, before: &Counters, now: &Counters) {
        let pipeline = ((now.received - before.received) - (now.head - before.head)).max(0);
        let writer = (now.head - now.applied).max(0);
        self.samples += 1;
        self.pipeline = (self.pipeline.0 + pipeline, self.pipeline.1.max(pipeline));
        self.writer = (self.writer.0 + writer, self.writer.1.max(writer));
    }

    fn mean(sum: i64, samples: u64) -> f64 {
        sum as f64 / samples.max(1) as f64
    }

    /// Mean and max backlog per stage; with a steady `rate`, the mean time
    /// in each stage too (Little's law).
    fn describe(&self, rate: Option<f64>) -> String {
        let (p, w) = (
            Self::mean(self.pipeline.0, self.samples),
            Self::mean(self.writer.0, self.samples),
        );
        let time = |mean: f64| {
            rate.map(|r| format!(" ≈ {:.1} ms", mean / r * 1000.0))
                .unwrap_or_default()
        };
        format!(
            "backlog (mean / max msgs, {} samples): received→oplog {p:.0} / {}{}, oplog→Redis {w:.0} / {}{}",
            self.samples,
            self.pipeline.1,
            time(p),
            self.writer.1,
            time(w)
        )
    }
}

// ------------------------------------------------------------ the bench

struct Bench {
    knobs: Knobs,
    server: DevServer,
    emcachers: Emcachers,
    redis: RedisServer,
    conn: redis::Connection,
    pids: Pids,
    version: String,
}

impl Bench {
    fn offset(&mut self) -> i64 {
        let value: Option<String> = redis::cmd("GET")
            .arg(OFFSET_KEY)
            .query(&mut self.conn)
            .expect("GET the writer offset");
        value
            .and_then(|v| emcachers::cache::Offset::parse(&v))
            .map_or(0, |o| o.id)
    }

    fn flood(&self, count: u64, rate_per_sec: u64) {
        self.server
            .flood(FloodRequest {
                count,
                rate_per_sec,
                entity_type: COMPANY.into(),
                size_bytes: self.knobs.size,
                ids: self.knobs.ids,
            })
            .expect("start a flood");
    }

    /// Poll the offset every millisecond until it reaches `target`; the
    /// time it first moved past `from` and the time it reached `target`,
    /// from `start`.
    fn wait_landing(
        &mut self,
        start: Instant,
        from: i64,
        target: i64,
        timeout: Duration,
        mut on_poll: impl FnMut(&mut Self),
    ) -> (Duration, Duration) {
        let mut first = None;
        loop {
            let offset = self.offset();
            if first.is_none() && offset > from {
                first = Some(start.elapsed());
            }
            if offset >= target {
                return (first.unwrap_or_else(|| start.elapsed()), start.elapsed());
            }
            assert!(
                start.elapsed() < timeout,
                "offset {offset} did not reach {target} within {timeout:?} ({:?}):\n{}",
                self.emcachers.counters(),
                self.emcachers.log_tail()
            );
            on_poll(self);
            std::thread::sleep(Duration::from_millis(1)); // poll interval
        }
    }

    /// The warm-up: every id once; checks one message = one oplog row.
    fn warm_up(&mut self) {
        let before = self.emcachers.counters();
        let from = self.offset();
        let start = Instant::now();
        self.flood(self.knobs.ids, 0);
        let target = from + self.knobs.ids as i64;
        let (_, landed) = self.wait_landing(start, from, target, Duration::from_secs(300), |_| {});
        let after = self.emcachers.counters();
        assert_eq!(
            (after.received - before.received, after.head - before.head),
            (self.knobs.ids as i64, self.knobs.ids as i64),
            "one flood message must be one oplog row: {before:?} -> {after:?}"
        );
        println!(
            "warm-up: {} companies written in {:.2} s",
            self.knobs.ids,
            landed.as_secs_f64()
        );
    }

    fn saturation_run(&mut self, n: u64) -> SaturationRun {
        let before = self.emcachers.counters();
        let stats = self.server.stats();
        let from = self.offset();
        assert_eq!(from, before.applied, "idle before the run");
        let clock = CpuClock::start(&self.pids);
        let start = Instant::now();
        self.flood(n, 0);
        let (mut received, mut committed, mut generated) = (None, None, None);
        let mut last_debug = Instant::now();
        let mut backlog = Backlog::default();
        let target = from + n as i64;
        let timeout = Duration::from_secs(120 + n / 1000);
        let (first, last) = self.wait_landing(start, from, target, timeout, |bench| {
            if generated.is_none() {
                let flood = bench.server.flood_status();
                if !flood.running && flood.sent == n {
                    generated = Some(start.elapsed());
                }
            }
            if last_debug.elapsed() >= Duration::from_millis(50) {
                last_debug = Instant::now();
                let c = bench.emcachers.counters();
                backlog.add(&before, &c);
                if received.is_none() && c.received >= before.received + n as i64 {
                    received = Some(start.elapsed());
                }
                if committed.is_none() && c.head >= target {
                    committed = Some(start.elapsed());
                }
            }
        });
        let cores = clock.stop();
        let after = self.emcachers.counters();
        let end = start.elapsed();
        let stats_after = self.server.stats();
        assert_eq!(
            (stats_after.connects_total, stats_after.slow_closed),
            (stats.connects_total, stats.slow_closed),
            "the connection must survive the run"
        );
        assert_eq!(after.errors, before.errors, "writer errors during the run");
        SaturationRun {
            messages: n,
            first,
            last,
            generated: generated.unwrap_or(end),
            received: received.unwrap_or(end),
            committed: committed.unwrap_or(end),
            batches: after.batches - before.batches,
            backlog,
            cores,
        }
    }

    fn latency_run(&mut self) -> LatencyRun {
        let (rate, secs, every) = (
            self.knobs.rate,
            self.knobs.latency_secs,
            self.knobs.sample_every,
        );
        let count = rate * secs;
        let reply = self
            .redis
            .cli(&["CONFIG", "SET", "notify-keyspace-events", "K$"]);
        assert!(reply.trim() == "OK", "CONFIG SET: {reply}");
        let pattern = format!(
            "__keyspace@0__:schematic:company:{}:bench_comp_*",
            self.version
        );
        let seen = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let url = self.redis.url();
        let (seen_in, stop_in) = (seen.clone(), stop.clone());
        let subscriber = std::thread::spawn(move || {
            let client = redis::Client::open(url).expect("redis client");
            let mut getter = client.get_connection().expect("redis connection");
            let mut sub = client.get_connection().expect("redis connection");
            let mut pubsub = sub.as_pubsub();
            pubsub.psubscribe(&pattern).expect("PSUBSCRIBE");
            pubsub
                .set_read_timeout(Some(Duration::from_millis(100)))
                .expect("read timeout");
            let _ = ready_tx.send(());
            let (mut samples, mut stale) = (Vec::new(), 0u64);
            while !stop_in.load(Ordering::Relaxed) {
                let msg = match pubsub.get_message() {
                    Ok(msg) => msg,
                    Err(e) if e.is_timeout() => continue,
                    Err(e) => panic!("keyspace notifications: {e}"),
                };
                let now = unix_ns();
                let n = seen_in.fetch_add(1, Ordering::Relaxed) + 1;
                if !n.is_multiple_of(every) {
                    continue;
                }
                let channel = msg.get_channel_name();
                let key = channel.split_once(':').map_or(channel, |(_, k)| k);
                let doc: Option<String> = redis::cmd("GET")
                    .arg(key)
                    .query(&mut getter)
                    .expect("GET a company");
                let sent = doc
                    .and_then(|d| serde_json::from_str::<Value>(&d).ok())
                    .and_then(|d| d["bench_sent_unix_ns"].as_u64());
                match sent {
                    Some(sent) if sent <= now => samples.push(now - sent),
                    _ => stale += 1,
                }
            }
            (samples, stale)
        });
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the subscriber subscribed");
        let from = self.offset();
        let before = self.emcachers.counters();
        let mut backlog = Backlog::default();
        let mut last_debug = Instant::now();
        let clock = CpuClock::start(&self.pids);
        let start = Instant::now();
        self.flood(count, rate);
        let timeout = Duration::from_secs(secs * 3 + 60);
        let (_, last) = self.wait_landing(start, from, from + count as i64, timeout, |bench| {
            if last_debug.elapsed() >= Duration::from_millis(50) {
                last_debug = Instant::now();
                backlog.add(&before, &bench.emcachers.counters());
            }
        });
        let cores = clock.stop();
        // Every set has been made; let its notification arrive.
        let notified = wait_until(Duration::from_secs(10), || {
            seen.load(Ordering::Relaxed) >= count
        });
        stop.store(true, Ordering::Relaxed);
        let (mut samples, stale) = subscriber.join().expect("subscriber thread");
        samples.sort_unstable();
        let _ = self
            .redis
            .cli(&["CONFIG", "SET", "notify-keyspace-events", ""]);
        LatencyRun {
            offered: rate,
            messages: count,
            landed_after: last,
            notifications: seen.load(Ordering::Relaxed),
            all_notified: notified,
            samples,
            stale,
            backlog,
            cores,
        }
    }

    /// One more saturation run under `perf record`, then its report.
    /// One more saturation run under `perf record`; the data stays in
    /// `target/datastream-bench.perf.data` for `perf report -i`.
    fn profile(&mut self, n: u64) {
        let data = workspace_root().join("target/datastream-bench.perf.data");
        let mode = self.knobs.perf;
        let perf = Command::new("perf")
            .arg("record")
            .args(if mode == Perf::CallGraph {
                &["-F", "999", "--call-graph", "dwarf,16384"][..]
            } else {
                &["-F", "999"][..]
            })
            .arg("-o")
            .arg(&data)
            .args(["-p", &self.pids.emcachers.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let Ok(mut perf) = perf else {
            println!("profile: perf is not available");
            return;
        };
        let run = self.saturation_run(n);
        let _ = Command::new("kill")
            .args(["-INT", &perf.id().to_string()])
            .status();
        let _ = perf.wait();
        println!(
            "profile run (under perf, not counted): {:.0} msgs/s; data in {}",
            run.rate(),
            data.display()
        );
        let reports: &[(&str, &[&str])] = if mode == Perf::CallGraph {
            &[(
                "inclusive (children, self) by function",
                &[
                    "--children",
                    "-g",
                    "none",
                    "--percent-limit",
                    "3",
                    "--sort",
                    "symbol",
                ],
            )]
        } else {
            &[
                ("by thread", &["--no-children", "--sort", "comm"]),
                ("by shared object", &["--no-children", "--sort", "dso"]),
                (
                    "by symbol (self)",
                    &[
                        "--no-children",
                        "--percent-limit",
                        "0.7",
                        "--sort",
                        "dso,symbol",
                    ],
                ),
            ]
        };
        for (title, args) in reports {
            let report = Command::new("perf")
                .args(["report", "--stdio", "-i"])
                .arg(&data)
                .args(*args)
                .stderr(Stdio::null())
                .output();
            let Ok(report) = report else { continue };
            println!("  perf report {title}:");
            // Runtime plumbing (thread start, tokio's scheduler, syscall
            // entry) is on every stack: left out of the inclusive view.
            const PLUMBING: [&str; 10] = [
                "tokio::runtime::",
                "std::sys::",
                "core::ops::function",
                "clone3",
                "start_thread",
                "0xffffffffffffffff",
                "entry_SYSCALL",
                "do_syscall",
                "TrackedFuture",
                "(inlined)",
            ];
            for line in String::from_utf8_lossy(&report.stdout)
                .lines()
                .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
                .filter(|l| !PLUMBING.iter().any(|p| l.contains(p)))
                .take(45)
            {
                let line: String = line
                    .trim_end()
                    .trim_end_matches(['-', ' '])
                    .chars()
                    .take(180)
                    .collect();
                println!("    {line}");
            }
        }
    }
}

struct SaturationRun {
    messages: u64,
    /// From the flood's start: first landing, last landing.
    first: Duration,
    last: Duration,
    /// When the dev server had queued every message.
    generated: Duration,
    /// When emcachers' source had received them all (/debug, ±50 ms).
    received: Duration,
    /// When the oplog held them all (/debug, ±50 ms).
    committed: Duration,
    batches: i64,
    backlog: Backlog,
    cores: Cores,
}

impl SaturationRun {
    /// Messages/s from the first landing to the last.
    fn rate(&self) -> f64 {
        self.messages as f64 / (self.last - self.first).as_secs_f64().max(1e-9)
    }

    fn rate_from_start(&self) -> f64 {
        self.messages as f64 / self.last.as_secs_f64().max(1e-9)
    }

    fn print(&self, index: usize) {
        println!(
            "  run {index}: {:>7.0} msgs/s first→last landing ({:.0} from the flood's start); \
             generated {:.2} s, received {:.2} s, in the oplog {:.2} s, first landed {:.3} s, last landed {:.2} s; \
             {} writer batches ({:.0} rows each); {}; {}",
            self.rate(),
            self.rate_from_start(),
            self.generated.as_secs_f64(),
            self.received.as_secs_f64(),
            self.committed.as_secs_f64(),
            self.first.as_secs_f64(),
            self.last.as_secs_f64(),
            self.batches,
            self.messages as f64 / self.batches.max(1) as f64,
            self.backlog.describe(None),
            self.cores
        );
    }
}

struct LatencyRun {
    offered: u64,
    messages: u64,
    landed_after: Duration,
    notifications: u64,
    all_notified: bool,
    /// Nanoseconds, sorted.
    samples: Vec<u64>,
    stale: u64,
    backlog: Backlog,
    cores: Cores,
}

impl LatencyRun {
    fn percentile(&self, p: f64) -> f64 {
        if self.samples.is_empty() {
            return f64::NAN;
        }
        let index = ((self.samples.len() as f64 - 1.0) * p).round() as usize;
        self.samples[index.min(self.samples.len() - 1)] as f64 / 1e6
    }

    fn print(&self) {
        println!(
            "  offered {} msgs/s for {} messages: all landed after {:.2} s ({:.0} msgs/s achieved); \
             {} notifications{}",
            self.offered,
            self.messages,
            self.landed_after.as_secs_f64(),
            self.messages as f64 / self.landed_after.as_secs_f64().max(1e-9),
            self.notifications,
            if self.all_notified {
                ""
            } else {
                " (fewer than the messages)"
            }
        );
        println!(
            "  sent → key written: p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms; \
             {} samples, {} dropped (overwritten before the GET); {}",
            self.percentile(0.5),
            self.percentile(0.9),
            self.percentile(0.99),
            self.percentile(0.999),
            self.percentile(1.0),
            self.samples.len(),
            self.stale,
            self.cores
        );
        println!("  {}", self.backlog.describe(Some(self.offered as f64)));
    }
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn main() {
    let knobs = Knobs::from_env();
    let started = Instant::now();
    println!("machine: {}", emcachers_tests::machine());
    // Build before anything runs: the binary (release) and the plugin.
    let bin = emcachers_bin();
    let plugin = match std::env::var_os("DATASTREAM_BENCH_PLUGIN") {
        Some(path) if !path.is_empty() => PathBuf::from(path),
        _ => plugins().schematic.clone(),
    };

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let _entered = runtime.enter(); // the dev server's flood spawns tasks
    let redis = RedisServer::start();
    let info = redis.cli(&["INFO", "server"]);
    let redis_pid = info
        .lines()
        .find_map(|l| l.trim().strip_prefix("process_id:"))
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    let buffered = usize::try_from(knobs.messages.max(knobs.rate * knobs.latency_secs))
        .unwrap_or(usize::MAX)
        .saturating_mul(2)
        .max(65_536);
    let server = runtime
        .block_on(DevServer::start(DevConfig {
            api_keys: vec![API_KEY.into()],
            queue_capacity: buffered,
            ..DevConfig::default()
        }))
        .expect("dev server");
    let dir = tempfile::Builder::new()
        .prefix("emcachers-datastream-bench-")
        .tempdir()
        .expect("tempdir");
    let mut emcachers = Emcachers::start(
        &bin,
        &plugin,
        dir.path(),
        &server.http_url(),
        &redis.addr(),
        knobs.perf != Perf::Off,
    );
    let ready = emcachers.wait_ready(Duration::from_secs(120));
    let version = ready["cache_version"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let conn = redis::Client::open(redis.url())
        .and_then(|c| c.get_connection())
        .expect("redis connection");
    let pids = Pids {
        emcachers: emcachers.pid(),
        redis: redis_pid,
    };
    println!(
        "emcachers {} (release), cache_version {version}; documents ~{} bytes over {} company ids",
        bin.display(),
        knobs.size,
        knobs.ids
    );
    let mut bench = Bench {
        knobs,
        server,
        emcachers,
        redis,
        conn,
        pids,
        version,
    };
    bench.warm_up();

    let mut summary: BTreeMap<&str, String> = BTreeMap::new();
    if bench.knobs.run("saturation") {
        let n = bench.knobs.messages;
        println!("saturation: {n} messages as fast as the dev server makes them");
        let runs: Vec<SaturationRun> = (0..bench.knobs.runs)
            .map(|i| {
                let run = bench.saturation_run(n);
                run.print(i + 1);
                run
            })
            .collect();
        let rates: Vec<f64> = runs.iter().map(SaturationRun::rate).collect();
        let mut cores = Cores::default();
        for run in &runs {
            for i in 0..4 {
                cores.0[i] += run.cores.0[i] / runs.len() as f64;
            }
        }
        let line = format!(
            "median {:.0} msgs/s (min {:.0}, max {:.0}) over {} runs of {n}; {cores}",
            median(&rates),
            rates.iter().copied().fold(f64::INFINITY, f64::min),
            rates.iter().copied().fold(0.0, f64::max),
            runs.len()
        );
        println!("  {line}");
        summary.insert("1 saturation", line);
    }
    if bench.knobs.run("latency") {
        println!(
            "latency: {} msgs/s for {} s, one GET per {} notifications",
            bench.knobs.rate, bench.knobs.latency_secs, bench.knobs.sample_every
        );
        let run = bench.latency_run();
        run.print();
        summary.insert(
            "2 latency",
            format!(
                "at {} msgs/s: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} samples); {}",
                run.offered,
                run.percentile(0.5),
                run.percentile(0.99),
                run.percentile(1.0),
                run.samples.len(),
                run.cores
            ),
        );
    }
    if bench.knobs.perf != Perf::Off {
        let n = bench.knobs.messages;
        bench.profile(n);
    }
    println!();
    println!(
        "summary: {}; emcachers log {} bytes; total {:.0} s",
        emcachers_tests::machine(),
        bench.emcachers.log_len(),
        started.elapsed().as_secs_f64()
    );
    for (name, line) in &summary {
        println!("  {}: {line}", &name[2..]);
    }
    drop(bench);
    drop(dir);
}
