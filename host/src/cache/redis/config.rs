//! The settings of the Redis cache writer.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The longest duration any setting may take (100 years): longer ones
/// would overflow clock arithmetic, or Redis's `PX` (now + ttl must fit in
/// 63 bits of milliseconds).
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// Settings of the [`RedisWriter`](super::RedisWriter). Every field has a
/// default; unknown fields are errors. The Schematic profile maps Schematic's
/// environment (`REDIS_URL`, `REDIS_ADDR`, `CACHE_TTL`, `WRITER_LOCK_*`, …)
/// onto it.
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
    /// A PEM file of the certificate authorities a TLS server must chain
    /// to, trusted instead of the built-in web PKI roots (a private CA, a
    /// self-signed test server). Needs `tls`.
    pub tls_ca_file: Option<PathBuf>,
    /// Redis Cluster instead of a single node.
    pub cluster: bool,
    /// Seed nodes of the cluster, `host:port` each; empty means `addr`.
    pub cluster_addrs: Vec<String>,
    /// Expiry of every entity key in seconds (`PX` on each write); 0 means
    /// no expiry. `ttl_ms`, when not 0, wins. State keys never expire.
    pub ttl_secs: u64,
    /// Expiry of every entity key in milliseconds (`CACHE_TTL` of the
    /// Schematic profile); 0 defers to `ttl_secs`.
    pub ttl_ms: u64,
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
    /// How long connecting (TCP, TLS, `AUTH`, `SELECT`) may take, in
    /// milliseconds (`REDIS_DIAL_TIMEOUT`).
    pub connect_timeout_ms: u64,
    /// How long a reply may take once a command is sent, in milliseconds
    /// (`REDIS_READ_TIMEOUT`).
    pub read_timeout_ms: u64,
    /// How long sending a command may take, in milliseconds
    /// (`REDIS_WRITE_TIMEOUT`). The Redis client has one timeout for a
    /// command's round trip: it is `write + read`.
    pub write_timeout_ms: u64,
    /// The older single knob: when not 0, it wins over the three above and
    /// bounds everything at once, as it always did: connecting, a command's
    /// round trip, and a whole call.
    pub timeout_ms: u64,
    /// Single node: reconnect attempts within one call before it fails
    /// (`REDIS_MAX_RETRIES`). The writer retries failed batches itself.
    pub max_retries: u32,
    /// Cluster: how often a request follows a `MOVED`/`ASK` redirection or
    /// is retried after a connection error (`REDIS_MAX_REDIRECTS`).
    pub max_redirects: u32,
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
            tls_ca_file: None,
            cluster: false,
            cluster_addrs: Vec::new(),
            ttl_secs: 0,
            ttl_ms: 0,
            cleanup_interval_secs: 3600,
            cleanup_prefixes: Vec::new(),
            state_prefix: "emcachers:redis:".into(),
            batch_size: 1000,
            poll_ms: 10,
            entities: Vec::new(),
            breaker_threshold: 3,
            breaker_timeout_ms: 15_000,
            connect_timeout_ms: Self::DEFAULT_CONNECT_TIMEOUT_MS,
            read_timeout_ms: Self::DEFAULT_READ_TIMEOUT_MS,
            write_timeout_ms: Self::DEFAULT_WRITE_TIMEOUT_MS,
            timeout_ms: 0,
            max_retries: Self::DEFAULT_MAX_RETRIES,
            max_redirects: Self::DEFAULT_MAX_REDIRECTS,
            lock: LockConfig::default(),
            replay_cursor: None,
            memory: None,
        }
    }
}

/// A setting out of range: the dotted key and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {reason}")]
pub struct ConfigProblem {
    /// The dotted key (`redis.ttl_secs`).
    pub key: &'static str,
    /// What is wrong with it.
    pub reason: String,
}

impl RedisWriterConfig {
    /// Default of `connect_timeout_ms` (go-redis's `DialTimeout`).
    pub const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 5_000;
    /// Default of `read_timeout_ms` (go-redis's `ReadTimeout`).
    pub const DEFAULT_READ_TIMEOUT_MS: u64 = 3_000;
    /// Default of `write_timeout_ms` (go-redis's `WriteTimeout`).
    pub const DEFAULT_WRITE_TIMEOUT_MS: u64 = 3_000;
    /// Default of `max_retries` (go-redis's `MaxRetries`).
    pub const DEFAULT_MAX_RETRIES: u32 = 3;
    /// Default of `max_redirects` (the Go replicator's
    /// `REDIS_MAX_REDIRECTS`).
    pub const DEFAULT_MAX_REDIRECTS: u32 = 8;

    /// The entity-key expiry, if any: `ttl_ms`, else `ttl_secs`.
    pub fn ttl(&self) -> Option<Duration> {
        if self.ttl_ms > 0 {
            Some(Duration::from_millis(self.ttl_ms))
        } else {
            (self.ttl_secs > 0).then(|| Duration::from_secs(self.ttl_secs))
        }
    }

    /// The cleanup period, if the cleanup is on.
    pub fn cleanup_interval(&self) -> Option<Duration> {
        (self.cleanup_interval_secs > 0).then(|| Duration::from_secs(self.cleanup_interval_secs))
    }

    /// The wait between polls when caught up.
    pub fn poll_interval(&self) -> Duration {
        Duration::from_millis(self.poll_ms)
    }

    fn timeout_or(&self, ms: u64) -> Duration {
        let ms = if self.timeout_ms > 0 {
            self.timeout_ms
        } else {
            ms
        };
        Duration::from_millis(ms.max(1))
    }

    /// How long connecting may take (at least 1 ms).
    pub fn connect_timeout(&self) -> Duration {
        self.timeout_or(self.connect_timeout_ms)
    }

    /// How long a reply may take (at least 1 ms).
    pub fn read_timeout(&self) -> Duration {
        self.timeout_or(self.read_timeout_ms)
    }

    /// How long sending may take (at least 1 ms).
    pub fn write_timeout(&self) -> Duration {
        self.timeout_or(self.write_timeout_ms)
    }

    /// The round trip of one command: write + read (or `timeout_ms`).
    pub fn response_timeout(&self) -> Duration {
        if self.timeout_ms > 0 {
            return self.timeout_or(0);
        }
        self.write_timeout().saturating_add(self.read_timeout())
    }

    /// The bound of one call, a reconnect included: connect + write + read
    /// (or `timeout_ms`).
    pub fn call_timeout(&self) -> Duration {
        if self.timeout_ms > 0 {
            return self.timeout_or(0);
        }
        self.connect_timeout()
            .saturating_add(self.response_timeout())
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

    /// Check the values that would overflow clock arithmetic or that Redis
    /// would refuse: every duration at most [`MAX_DURATION`], a database
    /// number ≥ 0 (0 on a cluster), a CA file only with TLS.
    pub fn check(&self) -> Result<(), ConfigProblem> {
        let max_ms = u64::try_from(MAX_DURATION.as_millis()).unwrap_or(u64::MAX);
        let max_secs = MAX_DURATION.as_secs();
        let too_long = |key: &'static str| ConfigProblem {
            key,
            reason: format!("must be at most {max_secs} s (100 years)"),
        };
        for (key, secs) in [
            ("redis.ttl_secs", self.ttl_secs),
            ("redis.cleanup_interval_secs", self.cleanup_interval_secs),
        ] {
            if secs > max_secs {
                return Err(too_long(key));
            }
        }
        for (key, ms) in [
            ("redis.ttl_ms", self.ttl_ms),
            ("redis.poll_ms", self.poll_ms),
            ("redis.breaker_timeout_ms", self.breaker_timeout_ms),
            ("redis.connect_timeout_ms", self.connect_timeout_ms),
            ("redis.read_timeout_ms", self.read_timeout_ms),
            ("redis.write_timeout_ms", self.write_timeout_ms),
            ("redis.timeout_ms", self.timeout_ms),
            ("redis.lock.ttl_ms", self.lock.ttl_ms),
        ] {
            if ms > max_ms {
                return Err(too_long(key));
            }
        }
        if self.db < 0 {
            return Err(ConfigProblem {
                key: "redis.db",
                reason: format!("{} is not a database number (0 or more)", self.db),
            });
        }
        if self.cluster && self.db != 0 && self.memory.is_none() {
            return Err(ConfigProblem {
                key: "redis.db",
                reason: format!("{}: a Redis Cluster has only database 0", self.db),
            });
        }
        if self.tls_ca_file.is_some() && !self.tls && self.memory.is_none() {
            return Err(ConfigProblem {
                key: "redis.tls_ca_file",
                reason: "is set but TLS is off (set redis.tls, or use a rediss:// URL)".into(),
            });
        }
        Ok(())
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
            key: "emcachers:redis:writer_lock".into(),
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

/// Mirror of a source's committed position into a Redis key, written once
/// the cache applied everything up to it (the Schematic profile mirrors its
/// datastream's replay cursor, see [`crate::schematic::REPLAY_CURSOR_KEY`]).
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
        assert_eq!(config.lock.key, "emcachers:redis:writer_lock");
        assert_eq!(config.lock.renew_every(), Duration::from_secs(1));
        assert_eq!(config.offset_key(), "emcachers:redis:offset");
        assert_eq!(config.seed_addrs(), vec!["localhost:6379".to_owned()]);
        assert_eq!(RedisWriterConfig::default().ttl(), None);
    }

    #[test]
    fn ttl_ms_wins_over_ttl_secs() {
        let config: RedisWriterConfig =
            serde_json::from_str(r#"{"ttl_secs": 60, "ttl_ms": 250}"#).expect("parses");
        assert_eq!(config.ttl(), Some(Duration::from_millis(250)));
        let config: RedisWriterConfig =
            serde_json::from_str(r#"{"ttl_secs": 60, "ttl_ms": 0}"#).expect("parses");
        assert_eq!(config.ttl(), Some(Duration::from_secs(60)));
    }

    #[test]
    fn timeouts_and_the_older_single_knob() {
        let config = RedisWriterConfig::default();
        assert_eq!(config.connect_timeout(), Duration::from_secs(5));
        assert_eq!(config.response_timeout(), Duration::from_secs(6));
        assert_eq!(config.call_timeout(), Duration::from_secs(11));
        let config = RedisWriterConfig {
            timeout_ms: 500,
            ..RedisWriterConfig::default()
        };
        assert_eq!(config.connect_timeout(), Duration::from_millis(500));
        assert_eq!(config.read_timeout(), Duration::from_millis(500));
        assert_eq!(config.write_timeout(), Duration::from_millis(500));
        assert_eq!(config.response_timeout(), Duration::from_millis(500));
        assert_eq!(
            config.call_timeout(),
            Duration::from_millis(500),
            "the older knob bounds a whole call, as it did"
        );
    }

    #[test]
    fn values_that_would_overflow_are_refused_naming_the_key() {
        assert_eq!(RedisWriterConfig::default().check(), Ok(()));
        let problem = |json: &str| {
            serde_json::from_str::<RedisWriterConfig>(json)
                .expect("parses")
                .check()
                .expect_err(json)
                .key
        };
        assert_eq!(
            problem(r#"{"ttl_secs": 18446744073709551615}"#),
            "redis.ttl_secs"
        );
        assert_eq!(
            problem(r#"{"ttl_ms": 18446744073709551615}"#),
            "redis.ttl_ms"
        );
        assert_eq!(
            problem(r#"{"cleanup_interval_secs": 18446744073709551615}"#),
            "redis.cleanup_interval_secs"
        );
        assert_eq!(
            problem(r#"{"breaker_timeout_ms": 18446744073709551615}"#),
            "redis.breaker_timeout_ms"
        );
        assert_eq!(
            problem(r#"{"lock": {"ttl_ms": 18446744073709551615}}"#),
            "redis.lock.ttl_ms"
        );
        assert_eq!(problem(r#"{"db": -1}"#), "redis.db");
        assert_eq!(problem(r#"{"cluster": true, "db": 2}"#), "redis.db");
        assert_eq!(
            problem(r#"{"tls_ca_file": "/ca.pem"}"#),
            "redis.tls_ca_file"
        );
        let longest = MAX_DURATION.as_secs();
        let config: RedisWriterConfig = serde_json::from_str(&format!(
            r#"{{"ttl_secs": {longest}, "cleanup_interval_secs": {longest}}}"#
        ))
        .expect("parses");
        assert_eq!(config.check(), Ok(()));
    }

    #[test]
    fn unknown_fields_are_errors() {
        let error = serde_json::from_str::<RedisWriterConfig>(r#"{"adress": "x"}"#)
            .expect_err("unknown field");
        assert!(error.to_string().contains("adress"), "{error}");
        assert!(serde_json::from_str::<RedisWriterConfig>(r#"{"lock": {"ttl": 1}}"#).is_err());
    }
}
