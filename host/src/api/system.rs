//! Host figures for `GET /api/system/stats`: CPU and memory from Linux's
//! `/proc` (the platform the image runs on; elsewhere they read as absent),
//! ingest throughput and error rate from the pipeline's totals, and the
//! oplog entries the writers have still to apply, each flagged against the
//! thresholds of seed 004 (CPU 80 %, memory 85 %, error rate 5 %, a
//! configurable pending-oplog limit).

use std::sync::Mutex;
use std::time::Instant;

use serde::Serialize;

use crate::ingest::IngestReport;

/// CPU above this share of the machine is flagged.
pub const CPU_THRESHOLD_PERCENT: f64 = 80.0;
/// Memory in use above this share of the machine is flagged.
pub const MEMORY_THRESHOLD_PERCENT: f64 = 85.0;
/// Rejected changes above this share of the changes routed are flagged.
pub const ERROR_RATE_THRESHOLD_PERCENT: f64 = 5.0;

/// CPU counters at one instant (clock ticks since boot).
#[derive(Debug, Clone, Copy)]
struct CpuSample {
    at: Instant,
    ingested: IngestReport,
    total: u64,
    idle: u64,
}

/// Computes rates between successive calls: CPU use and throughput are the
/// averages since the previous call (since boot, or since the process
/// started, on the first one).
#[derive(Debug)]
pub struct SystemSampler {
    started: Instant,
    last: Mutex<Option<CpuSample>>,
}

impl Default for SystemSampler {
    fn default() -> Self {
        SystemSampler::new()
    }
}

/// One figure and whether it crosses its threshold.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Flagged<T> {
    /// The value (absent when the platform does not tell).
    pub value: Option<T>,
    /// The threshold.
    pub threshold: T,
    /// Whether the value is above the threshold.
    pub alert: bool,
}

impl<T: PartialOrd + Copy> Flagged<T> {
    fn new(value: Option<T>, threshold: T) -> Flagged<T> {
        Flagged {
            value,
            threshold,
            alert: value.is_some_and(|v| v > threshold),
        }
    }
}

/// What `GET /api/system/stats` answers.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SystemStats {
    /// Seconds since the process started.
    pub uptime_secs: u64,
    /// Share of the machine's CPU in use (all cores), in percent.
    pub cpu_percent: Flagged<f64>,
    /// Share of the machine's memory in use, in percent.
    pub memory_percent: Flagged<f64>,
    /// This process's resident memory in bytes.
    pub process_memory_bytes: Option<u64>,
    /// Changes ingested per second since the previous call.
    pub throughput_changes_per_sec: f64,
    /// Rejected changes among the routed ones since the process started,
    /// in percent.
    pub error_rate_percent: Flagged<f64>,
    /// Oplog entries the slowest cache writer has still to apply.
    pub pending_oplog: Flagged<i64>,
    /// The pipeline's totals since the process started.
    pub ingested: IngestTotals,
    /// Whether any figure is flagged.
    pub alert: bool,
}

/// The pipeline's totals.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct IngestTotals {
    /// Changes received.
    pub changes: usize,
    /// Rows appended to the log.
    pub appended: usize,
    /// Changes rejected.
    pub rejected: usize,
    /// Changes no entity is fed by.
    pub unrouted: usize,
}

impl SystemSampler {
    /// A sampler; the first call reports averages since boot.
    pub fn new() -> SystemSampler {
        SystemSampler {
            started: Instant::now(),
            last: Mutex::new(None),
        }
    }

    /// The figures now. `pending` is the oplog head minus the slowest
    /// writer's offset; `pending_limit` its threshold.
    pub fn sample(&self, ingested: IngestReport, pending: i64, pending_limit: i64) -> SystemStats {
        let now = Instant::now();
        let cpu = read_cpu();
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let cpu_percent = cpu.and_then(|(total, idle)| {
            let (total, idle) = match *last {
                Some(prev) => (
                    total.saturating_sub(prev.total),
                    idle.saturating_sub(prev.idle),
                ),
                None => (total, idle),
            };
            (total > 0).then(|| 100.0 * (total.saturating_sub(idle)) as f64 / total as f64)
        });
        let (since, before) = match *last {
            Some(prev) => (prev.at, prev.ingested.changes),
            None => (self.started, 0),
        };
        let secs = now.duration_since(since).as_secs_f64();
        let throughput = if secs > 0.0 {
            ingested.changes.saturating_sub(before) as f64 / secs
        } else {
            0.0
        };
        if let Some((total, idle)) = cpu {
            *last = Some(CpuSample {
                at: now,
                ingested,
                total,
                idle,
            });
        }
        drop(last);
        let routed = ingested.changes.saturating_sub(ingested.unrouted);
        let error_rate = if routed > 0 {
            100.0 * ingested.rejected as f64 / routed as f64
        } else {
            0.0
        };
        let memory = read_memory_percent();
        let stats = SystemStats {
            uptime_secs: self.started.elapsed().as_secs(),
            cpu_percent: Flagged::new(cpu_percent, CPU_THRESHOLD_PERCENT),
            memory_percent: Flagged::new(memory, MEMORY_THRESHOLD_PERCENT),
            process_memory_bytes: read_process_rss(),
            throughput_changes_per_sec: throughput,
            error_rate_percent: Flagged::new(Some(error_rate), ERROR_RATE_THRESHOLD_PERCENT),
            pending_oplog: Flagged::new(Some(pending.max(0)), pending_limit),
            ingested: IngestTotals {
                changes: ingested.changes,
                appended: ingested.appended,
                rejected: ingested.rejected,
                unrouted: ingested.unrouted,
            },
            alert: false,
        };
        SystemStats {
            alert: stats.cpu_percent.alert
                || stats.memory_percent.alert
                || stats.error_rate_percent.alert
                || stats.pending_oplog.alert,
            ..stats
        }
    }
}

/// (total, idle) clock ticks of all CPUs since boot, from `/proc/stat`.
fn read_cpu() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    parse_cpu(&text)
}

fn parse_cpu(text: &str) -> Option<(u64, u64)> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is
    // already in user).
    let total: u64 = fields.iter().take(8).sum();
    let idle = fields.get(3).copied()? + fields.get(4).copied().unwrap_or(0);
    Some((total, idle))
}

/// The share of memory in use, from `/proc/meminfo` (`MemAvailable`).
fn read_memory_percent() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    parse_memory_percent(&text)
}

fn meminfo_kib(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|rest| rest.trim_start_matches(':').split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

fn parse_memory_percent(text: &str) -> Option<f64> {
    let total = meminfo_kib(text, "MemTotal")?;
    let available = meminfo_kib(text, "MemAvailable")?;
    (total > 0).then(|| 100.0 * total.saturating_sub(available) as f64 / total as f64)
}

/// This process's resident memory, from `/proc/self/status` (`VmRSS`).
fn read_process_rss() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    meminfo_kib(&text, "VmRSS").map(|kib| kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_files() {
        let stat = "cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 1 2 3 4\n";
        assert_eq!(parse_cpu(stat), Some((1000, 850)));
        let meminfo = "MemTotal:       1000 kB\nMemFree:         100 kB\nMemAvailable:    250 kB\n";
        assert_eq!(parse_memory_percent(meminfo), Some(75.0));
        assert_eq!(parse_cpu("nothing"), None);
    }

    #[test]
    fn flags_cross_their_thresholds() {
        let sampler = SystemSampler::new();
        let ingested = IngestReport {
            changes: 110,
            unrouted: 10,
            rejected: 6,
            ..IngestReport::default()
        };
        let stats = sampler.sample(ingested, 20, 10);
        assert_eq!(stats.error_rate_percent.value, Some(6.0));
        assert!(stats.error_rate_percent.alert && stats.pending_oplog.alert && stats.alert);
        let calm = sampler.sample(
            IngestReport {
                changes: 200,
                ..IngestReport::default()
            },
            0,
            10,
        );
        assert!(!calm.pending_oplog.alert && !calm.error_rate_percent.alert);
    }
}
