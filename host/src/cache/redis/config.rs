//! The settings of the Redis cache writer.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Settings of the [`RedisWriter`](super::RedisWriter). Every field has a
/// default; unknown fields are errors. The Schematic profile maps Schematic's
/// environment (`REDIS_ADDR`, `CACHE_TTL`, `WRITER_LOCK_*`, …) onto it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisWriterConfig {
    /// `host:port` of the single node (and, in cluster mode without
    /// `cluster_addrs`, of the seed node). Default `localhost:6379`.
    pub addr: String,
    /// The password (`AUTH`), if any.
    pub password: Option<String>,
    /// The ACL user name, if any.
    pub username: Option<String>,
    /// The database number (single node only; a cluster has only 0).
    pub db: i64,
    /// Connect with TLS (`rediss://`).
    pub tls: bool,
    /// Redis Cluster instead of a single node.
    pub cluster: bool,
    /// Seed nodes of the cluster, `host:port` each; empty means `addr`.
    pub cluster_addrs: Vec<String>,
    /// Expiry of every entity key in seconds (`PX` on each write); 0 means
    /// no expiry. State keys never expire.
    pub ttl_secs: u64,
    /// How often the stale-version cleanup runs, in seconds; 0 turns it off.
    pub cleanup_interval_secs: u64,
    /// Key prefixes the cleanup scans, e.g. `schematic:flags:`; the segment
    /// right after a prefix is the cache version.
    pub cleanup_prefixes: Vec<String>,
    /// Prefix of the writer's own keys: `{state_prefix}offset`,
    /// `{state_prefix}version:{entity}`, `{state_prefix}keys:{entity}`.
    pub state_prefix: String,
    /// Log entries read and applied per batch (one pipeline).
    pub batch_size: usize,
    /// Wait between polls of the log when caught up, in milliseconds.
    pub poll_ms: u64,
    /// The entities written to Redis; empty means every entity whose plugin
    /// is loaded.
    pub entities: Vec<String>,
    /// Consecutive Redis failures that open the circuit breaker.
    pub breaker_threshold: u32,
    /// How long the breaker stays open, in milliseconds.
    pub breaker_timeout_ms: u64,
    /// Connect and response timeout of every Redis call, in milliseconds.
    pub timeout_ms: u64,
    /// The writer lock (one writer per Redis).
    pub lock: LockConfig,
    /// Mirror a source position into a Redis key once caught up.
    pub replay_cursor: Option<ReplayCursorConfig>,
    /// Write into a bounded in-process map instead of Redis.
    pub memory: Option<MemoryConfig>,
}

impl Default for RedisWriterConfig {
    fn default() -> Self {
        RedisWriterConfig {
            addr: "localhost:6379".into(),
            password: None,
            username: None,
            db: 0,
            tls: false,
            cluster: false,
            cluster_addrs: Vec::new(),
            ttl_secs: 0,
            cleanup_interval_secs: 3600,
            cleanup_prefixes: Vec::new(),
            state_prefix: "emcachers:redis:".into(),
            batch_size: 1000,
            poll_ms: 10,
            entities: Vec::new(),
            breaker_threshold: 3,
            breaker_timeout_ms: 15_000,
            timeout_ms: 5_000,
            lock: LockConfig::default(),
            replay_cursor: None,
            memory: None,
        }
    }
}

impl RedisWriterConfig {
    /// The key prefixes of the Schematic layout (spec §5), for
    /// [`RedisWriterConfig::cleanup_prefixes`].
    pub const SCHEMATIC_PREFIXES: [&'static str; 3] =
        ["schematic:flags:", "schematic:company:", "schematic:user:"];

    /// The entity-key expiry, if any.
    pub fn ttl(&self) -> Option<Duration> {
        (self.ttl_secs > 0).then(|| Duration::from_secs(self.ttl_secs))
    }

    /// The cleanup period, if the cleanup is on.
    pub fn cleanup_interval(&self) -> Option<Duration> {
        (self.cleanup_interval_secs > 0).then(|| Duration::from_secs(self.cleanup_interval_secs))
    }

    /// The wait between polls when caught up.
    pub fn poll_interval(&self) -> Duration {
        Duration::from_millis(self.poll_ms)
    }

    /// The per-call timeout (at least 1 ms).
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms.max(1))
    }

    /// The seed nodes of a cluster: `cluster_addrs`, else `addr`.
    pub fn seed_addrs(&self) -> Vec<String> {
        if self.cluster_addrs.is_empty() {
            vec![self.addr.clone()]
        } else {
            self.cluster_addrs.clone()
        }
    }

    /// `{state_prefix}offset`.
    pub fn offset_key(&self) -> String {
        format!("{}offset", self.state_prefix)
    }

    /// `{state_prefix}version:{entity}`.
    pub fn version_key(&self, entity: &str) -> String {
        format!("{}version:{entity}", self.state_prefix)
    }

    /// `{state_prefix}keys:{entity}`: the hash of remembered keys.
    pub fn keys_key(&self, entity: &str) -> String {
        format!("{}keys:{entity}", self.state_prefix)
    }
}

/// The writer lock of spec §5: `SET key token NX PX ttl`, renewed every
/// `ttl / 3` while it is ours, released on shutdown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LockConfig {
    /// Take the lock before writing (`WRITER_LOCK_DISABLED` turns it off).
    pub enabled: bool,
    /// The lock key.
    pub key: String,
    /// Its expiry in milliseconds.
    pub ttl_ms: u64,
}

impl Default for LockConfig {
    fn default() -> Self {
        LockConfig {
            enabled: true,
            key: "schematic:datastream:writer_lock".into(),
            ttl_ms: 15_000,
        }
    }
}

impl LockConfig {
    /// The lock's expiry (at least 3 ms).
    pub fn ttl(&self) -> Duration {
        Duration::from_millis(self.ttl_ms.max(3))
    }

    /// How often the lock is renewed, or its acquisition retried: `ttl / 3`.
    pub fn renew_every(&self) -> Duration {
        self.ttl() / 3
    }
}

/// Mirror of a source's committed position into a Redis key (Schematic's
/// `schematic:datastream:replay_cursor`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplayCursorConfig {
    /// The source whose position is mirrored.
    pub source: String,
    /// The Redis key.
    pub key: String,
}

/// The in-process target: a bounded map instead of Redis.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryConfig {
    /// Entity keys kept at most; the least recently used go first.
    pub max_entries: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_partial_documents() {
        let config: RedisWriterConfig =
            serde_json::from_str(r#"{"ttl_secs": 60, "lock": {"ttl_ms": 3000}}"#).expect("parses");
        assert_eq!(config.addr, "localhost:6379");
        assert_eq!(config.ttl(), Some(Duration::from_secs(60)));
        assert!(config.lock.enabled);
        assert_eq!(config.lock.key, "schematic:datastream:writer_lock");
        assert_eq!(config.lock.renew_every(), Duration::from_secs(1));
        assert_eq!(config.offset_key(), "emcachers:redis:offset");
        assert_eq!(config.seed_addrs(), vec!["localhost:6379".to_owned()]);
        assert_eq!(RedisWriterConfig::default().ttl(), None);
    }

    #[test]
    fn unknown_fields_are_errors() {
        let error = serde_json::from_str::<RedisWriterConfig>(r#"{"adress": "x"}"#)
            .expect_err("unknown field");
        assert!(error.to_string().contains("adress"), "{error}");
        assert!(serde_json::from_str::<RedisWriterConfig>(r#"{"lock": {"ttl": 1}}"#).is_err());
    }
}
