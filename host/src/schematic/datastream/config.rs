//! Configuration of a datastream source (`[[sources]] kind = "schematic"`).
//! The defaults are those of Schematic's Go replicator (spec §1, §7).

use serde::{Deserialize, Serialize};

/// A Schematic datastream source.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatastreamConfig {
    /// The source name: positions (the replay cursor) are stored under it,
    /// and entities name it as their source.
    pub name: String,
    /// `SCHEMATIC_API_KEY`.
    pub api_key: String,
    /// `SCHEMATIC_API_URL`: the REST API (initial load) and, unless
    /// `datastream_url` is set, where the datastream URL is derived from.
    pub api_url: String,
    /// `SCHEMATIC_DATASTREAM_URL` (or the older `SCHEMATIC_BASE_URL`);
    /// derived from `api_url` when absent.
    pub datastream_url: Option<String>,
    /// Resume with `replay_from` after a reconnect or restart
    /// (`REPLAY_DISABLED` turns it off: every connect loads everything).
    pub replay: bool,
    /// Sent as `X-Schematic-Client`.
    pub client_name: String,
    /// The largest message accepted, in MiB (the bulk flags message can be
    /// large).
    pub max_message_mib: usize,
    /// WebSocket ping period; keep it below `pong_timeout_ms`, or a quiet
    /// but healthy server is taken for dead.
    pub ping_interval_ms: u64,
    /// A connection that sent nothing (not even a pong) for this long since
    /// the last frame it sent is dead: dropped and made again.
    pub pong_timeout_ms: u64,
    /// How long a write may take.
    pub write_timeout_ms: u64,
    /// The longest reconnect delay (before jitter).
    pub reconnect_max_ms: u64,
    /// The delay before retrying after the server rejected the key (4001).
    pub unauthorized_retry_ms: u64,
    /// The most changes in one pipeline batch.
    pub batch_max: usize,
    /// The REST initial load.
    pub load: LoadConfig,
}

impl Default for DatastreamConfig {
    fn default() -> Self {
        DatastreamConfig {
            name: "schematic".into(),
            api_key: String::new(),
            api_url: "https://api.schematichq.com".into(),
            datastream_url: None,
            replay: true,
            client_name: "emcachers".into(),
            max_message_mib: 256,
            ping_interval_ms: 30_000,
            pong_timeout_ms: 40_000,
            write_timeout_ms: 10_000,
            reconnect_max_ms: 30_000,
            unauthorized_retry_ms: 60_000,
            batch_max: 1000,
            load: LoadConfig::default(),
        }
    }
}

/// The REST initial load.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoadConfig {
    /// `ASYNC_LOADER_PAGE_SIZE`.
    pub page_size: usize,
    /// `ASYNC_LOADER_MAX_CONCURRENT_REQUESTS`.
    pub max_concurrent: usize,
    /// `ASYNC_LOADER_RATE_LIMIT_RPS`.
    pub rate_limit_rps: f64,
    /// Retries of one request before its page counts as failed.
    pub page_retries: u32,
    /// First delay between retries (doubling, at most 30 s).
    pub retry_backoff_ms: u64,
    /// `ASYNC_LOADER_CIRCUIT_BREAKER_THRESHOLD`: consecutive failed
    /// requests that open the loader's breaker.
    pub breaker_threshold: u32,
    /// `ASYNC_LOADER_CIRCUIT_BREAKER_TIMEOUT`: how long it stays open.
    pub breaker_timeout_ms: u64,
    /// Timeout of one request.
    pub request_timeout_ms: u64,
    /// After a load that missed pages, when to load again.
    pub retry_incomplete_ms: u64,
}

impl Default for LoadConfig {
    fn default() -> Self {
        LoadConfig {
            page_size: 100,
            max_concurrent: 5,
            rate_limit_rps: 10.0,
            page_retries: 5,
            retry_backoff_ms: 500,
            breaker_threshold: 5,
            breaker_timeout_ms: 30_000,
            request_timeout_ms: 30_000,
            retry_incomplete_ms: 30_000,
        }
    }
}
