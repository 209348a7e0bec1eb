//! The environment of Schematic's Go replicator (spec §7, and the seed
//! READMEs 000 and 001) as a configuration: with `SCHEMATIC_API_KEY` and a
//! Redis set, `emcachers run` replicates the datastream into Redis under the
//! same keys, and serves `/health` and `/ready` on `HEALTH_PORT`.
//!
//! | variable | default | becomes |
//! |---|---|---|
//! | `SCHEMATIC_API_KEY` | required | `sources[0].api_key` |
//! | `SCHEMATIC_API_URL` | `https://api.schematichq.com` | `sources[0].api_url` (REST load; the datastream URL is derived from it) |
//! | `SCHEMATIC_DATASTREAM_URL` | derived from the API URL | `sources[0].datastream_url`; a `ws://`/`wss://` URL |
//! | `SCHEMATIC_BASE_URL` | none | seed 000's name of the datastream URL, used when `SCHEMATIC_DATASTREAM_URL` is not set (that one wins); a `ws(s)://` value as given, an `http(s)://` one derived like the API URL |
//! | `SCHEMATIC_CACHE_VERSION` | the plugin's (`v1`) | `cache_version` of the three entities |
//! | `CACHE_TTL` | `0` (none) | `redis.ttl_ms` (sub-second TTLs are kept; under 1 ms rounds up to 1 ms, as go-redis does) |
//! | `CACHE_CLEANUP_INTERVAL` | `1h` (`0` = off) | `redis.cleanup_interval_secs` (rounded up to whole seconds) |
//! | `LOG_LEVEL` | `info` | `log.level` |
//! | `HEALTH_PORT` | `8090` | `health.listen` = `0.0.0.0:{port}` |
//! | `REDIS_URL` | none | `redis://[user][:password@]host[:port][/db][?option=…]` or `rediss://…` (TLS): `redis.addr`, `username`, `password`, `db`, `tls`; options `db`, `dial_timeout`, `read_timeout`, `write_timeout`, `max_retries`, `max_redirects` are honoured, go-redis's pool options accepted and ignored, anything else is an error. What the URL states wins over `REDIS_ADDR`, `REDIS_PASSWORD`, `REDIS_DB` and the timeout/retry variables; they fill in what it leaves out; `REDIS_TLS=true` also turns TLS on for a `redis://` URL |
//! | `REDIS_ADDR` | `localhost:6379` | `redis.addr` |
//! | `REDIS_PASSWORD`, `REDIS_DB`, `REDIS_TLS` | none, 0, false | `redis.password`, `redis.db`, `redis.tls` |
//! | `REDIS_CLUSTER_ADDRS` | none | `redis.cluster_addrs` (comma-separated); set alone, it selects cluster mode |
//! | `REDIS_CLUSTER_MODE` | true when `REDIS_CLUSTER_ADDRS` is set | `redis.cluster` (an explicit `false` wins: single node at `REDIS_URL`/`REDIS_ADDR`); seeds are `REDIS_CLUSTER_ADDRS`, else the URL's or `REDIS_ADDR`'s node |
//! | `REDIS_DIAL_TIMEOUT`, `REDIS_READ_TIMEOUT`, `REDIS_WRITE_TIMEOUT` | `5s`, `3s`, `3s` (`0` = these defaults; a zero write timeout takes the read timeout, as go-redis) | `redis.connect_timeout_ms`, `read_timeout_ms`, `write_timeout_ms` |
//! | `REDIS_MAX_RETRIES` | 3 (`0` = 3, `-1` = none, as go-redis) | `redis.max_retries`: reconnect attempts of a single node within one call |
//! | `REDIS_MAX_REDIRECTS` | 8 (`0` = 3, `-1` = none, as go-redis) | `redis.max_redirects`: redirections/retries of a cluster request |
//! | `REDIS_ROUTE_BY_LATENCY` | | accepted and checked; writes go to masters, so there is nothing to route |
//! | `CIRCUIT_BREAKER_THRESHOLD`, `CIRCUIT_BREAKER_TIMEOUT` | 3, `15s` | the Redis writer's breaker (seed 001: "Redis failures before circuit breaker opens") |
//! | `ASYNC_LOADER_CIRCUIT_BREAKER_THRESHOLD`, `ASYNC_LOADER_CIRCUIT_BREAKER_TIMEOUT` | 5, `30s` | the REST loader's breaker (`sources[0].load.breaker_*`) |
//! | `ASYNC_LOADER_PAGE_SIZE`, `ASYNC_LOADER_MAX_CONCURRENT_REQUESTS`, `ASYNC_LOADER_RATE_LIMIT_RPS` | 100, 5, 10 | `sources[0].load.*` (rate: 0.01 to 1,000,000 requests per second) |
//! | `REPLAY_DISABLED` | false | `sources[0].replay = false` |
//! | `REPLAY_CURSOR_KEY` | `schematic:datastream:replay_cursor` | `redis.replay_cursor.key` |
//! | `WRITER_LOCK_DISABLED`, `WRITER_LOCK_TTL`, `WRITER_LOCK_KEY` | false, `15s`, `schematic:datastream:writer_lock` | `redis.lock.*` |
//! | `NUM_WORKERS`, `BATCH_SIZE`, `BATCH_TIMEOUT`, `*_CHANNEL_SIZE`, `USE_ASYNC_LOADING` | | accepted and checked; emcachers batches by itself (the Go worker pool has no equivalent) |
//!
//! Durations take Go's syntax (`1h`, `15s`, `1h30m`, `500ms`); a bare
//! number is seconds; at most 100 years ([`MAX_DURATION`]). Booleans take
//! `true/false/1/0/yes/no`. A malformed value, or one that would overflow
//! (`CACHE_TTL=1e20`, `ASYNC_LOADER_RATE_LIMIT_RPS=1e12`), is an error
//! naming the variable; an error about `REDIS_URL` never repeats the URL (it
//! may hold a password).
//!
//! Everything else has emcachers' defaults and can be changed with
//! `EMCACHERS_*` variables on top (`EMCACHERS_DATA_DIR`,
//! `EMCACHERS_PLUGINS__DIR`, `EMCACHERS_API__ENABLED`, ...). In this profile
//! the REST API and the per-entity SQLite caches are off unless enabled. A
//! TLS Redis whose certificate does not chain to a public CA needs
//! `EMCACHERS_REDIS__TLS_CA_FILE=/path/ca.pem` (the Go replicator used the
//! system's trust store; emcachers trusts the web PKI roots built into it,
//! or exactly the CAs of that file).

use std::time::Duration;

pub use crate::cache::redis::config::MAX_DURATION;
use crate::cache::redis::{LockConfig, RedisWriterConfig, ReplayCursorConfig};
use crate::config::{Config, ConfigError, EntityConfig, HealthConfig, SourceConfig};
use crate::schematic::datastream::{DatastreamConfig, datastream_url};

/// The variable that selects this profile.
pub const API_KEY: &str = "SCHEMATIC_API_KEY";

/// The entities of the profile (the schematic plugin serves exactly these).
pub const ENTITIES: [&str; 3] = ["flags", "companies", "users"];

/// The key prefixes the stale-version cleanup scans.
pub const CLEANUP_PREFIXES: [&str; 3] = crate::schematic::KEY_PREFIXES;

/// The fastest REST rate `ASYNC_LOADER_RATE_LIMIT_RPS` may ask for.
pub const MAX_RATE_LIMIT_RPS: f64 = 1_000_000.0;

/// The slowest REST rate `ASYNC_LOADER_RATE_LIMIT_RPS` may ask for.
pub const MIN_RATE_LIMIT_RPS: f64 = 0.01;

/// go-redis's retry count when `MaxRetries`/`MaxRedirects` is 0.
const GO_REDIS_RETRIES: u32 = 3;

/// Whether the environment asks for the Schematic profile.
pub fn active() -> bool {
    std::env::var_os(API_KEY).is_some_and(|v| !v.is_empty())
}

/// The configuration the process environment describes.
pub fn config_from_env() -> Result<Config, ConfigError> {
    config_from(|name| std::env::var(name).ok())
}

/// Why a variable is unusable.
fn bad(variable: &'static str, value: &str, expected: &str) -> ConfigError {
    ConfigError::Value {
        key: variable,
        reason: format!("{value:?} is not {expected}"),
    }
}

/// Why a duration does not parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DurationError {
    /// Not Go's syntax, or negative.
    Malformed,
    /// Longer than [`MAX_DURATION`].
    TooLong,
}

/// A duration variable's value, checked.
fn checked_duration(name: &'static str, value: &str) -> Result<Duration, ConfigError> {
    parse_go_duration(value).map_err(|error| match error {
        DurationError::Malformed => bad(name, value, "a duration such as 15s or 1h"),
        DurationError::TooLong => ConfigError::Value {
            key: name,
            reason: format!("{value:?} is longer than the longest duration allowed (100 years)"),
        },
    })
}

/// Whole milliseconds of `duration`, rounded up (a non-zero duration never
/// becomes 0).
fn ceil_millis(duration: Duration) -> u64 {
    let millis = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
    if duration > Duration::from_millis(millis) {
        millis.saturating_add(1)
    } else {
        millis
    }
}

/// Whole seconds of `duration`, rounded up.
fn ceil_secs(duration: Duration) -> u64 {
    let secs = duration.as_secs();
    if duration.subsec_nanos() > 0 {
        secs.saturating_add(1)
    } else {
        secs
    }
}

/// A go-redis retry count: `-1` none, `0` go-redis's default (3).
fn go_redis_retries(name: &'static str, value: i64) -> Result<u32, ConfigError> {
    match value {
        -1 => Ok(0),
        0 => Ok(GO_REDIS_RETRIES),
        n => u32::try_from(n).map_err(|_| ConfigError::Value {
            key: name,
            reason: format!("{n} is not a retry count (-1 for none, 0 for the default, or more)"),
        }),
    }
}

/// A `ws://` or `wss://` URL with a host, or an error naming `name` that
/// says `expected`.
fn websocket_url(name: &'static str, value: &str, expected: &str) -> Result<String, ConfigError> {
    let fail = || bad(name, value, expected);
    let (scheme, rest) = value.split_once("://").ok_or_else(fail)?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if !matches!(scheme.to_ascii_lowercase().as_str(), "ws" | "wss")
        || authority.is_empty()
        || value.chars().any(char::is_whitespace)
    {
        return Err(fail());
    }
    Ok(value.to_owned())
}

/// The configuration described by the variables `var` returns.
pub fn config_from(var: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
    let get = |name: &str| {
        var(name)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    };
    let duration = |name: &'static str| -> Result<Option<Duration>, ConfigError> {
        get(name).map(|v| checked_duration(name, &v)).transpose()
    };
    let boolean = |name: &'static str| -> Result<Option<bool>, ConfigError> {
        get(name)
            .map(|v| parse_bool(&v).ok_or_else(|| bad(name, &v, "a boolean")))
            .transpose()
    };
    fn number<T: std::str::FromStr>(
        name: &'static str,
        value: Option<String>,
    ) -> Result<Option<T>, ConfigError> {
        value
            .map(|v| {
                v.parse::<T>()
                    .map_err(|_| bad(name, &v, "a whole number in range"))
            })
            .transpose()
    }

    let api_key = get(API_KEY).ok_or(ConfigError::Value {
        key: API_KEY,
        reason: "must be set".into(),
    })?;
    let mut source = DatastreamConfig {
        api_key,
        ..DatastreamConfig::default()
    };
    if let Some(url) = get("SCHEMATIC_API_URL") {
        source.api_url = url;
    }
    source.datastream_url = match (get("SCHEMATIC_DATASTREAM_URL"), get("SCHEMATIC_BASE_URL")) {
        (Some(url), _) => Some(websocket_url(
            "SCHEMATIC_DATASTREAM_URL",
            &url,
            "a ws:// or wss:// URL",
        )?),
        (None, Some(base)) => {
            let lower = base.to_ascii_lowercase();
            if lower.starts_with("http://") || lower.starts_with("https://") {
                let derived = datastream_url(None, &base).map_err(|e| ConfigError::Value {
                    key: "SCHEMATIC_BASE_URL",
                    reason: e.to_string(),
                })?;
                Some(derived)
            } else {
                Some(websocket_url(
                    "SCHEMATIC_BASE_URL",
                    &base,
                    "a ws://, wss://, http:// or https:// URL",
                )?)
            }
        }
        (None, None) => None,
    };
    if let Some(disabled) = boolean("REPLAY_DISABLED")? {
        source.replay = !disabled;
    }
    if let Some(size) = number::<usize>("ASYNC_LOADER_PAGE_SIZE", get("ASYNC_LOADER_PAGE_SIZE"))? {
        source.load.page_size = size.max(1);
    }
    if let Some(n) = number::<usize>(
        "ASYNC_LOADER_MAX_CONCURRENT_REQUESTS",
        get("ASYNC_LOADER_MAX_CONCURRENT_REQUESTS"),
    )? {
        source.load.max_concurrent = n.max(1);
    }
    if let Some(text) = get("ASYNC_LOADER_RATE_LIMIT_RPS") {
        let expected = "a rate from 0.01 to 1000000 requests per second";
        let rps: f64 = text
            .parse()
            .map_err(|_| bad("ASYNC_LOADER_RATE_LIMIT_RPS", &text, expected))?;
        if !(MIN_RATE_LIMIT_RPS..=MAX_RATE_LIMIT_RPS).contains(&rps) {
            return Err(bad("ASYNC_LOADER_RATE_LIMIT_RPS", &text, expected));
        }
        source.load.rate_limit_rps = rps;
    }
    if let Some(threshold) = number::<u32>(
        "ASYNC_LOADER_CIRCUIT_BREAKER_THRESHOLD",
        get("ASYNC_LOADER_CIRCUIT_BREAKER_THRESHOLD"),
    )? {
        source.load.breaker_threshold = threshold.max(1);
    }
    if let Some(timeout) = duration("ASYNC_LOADER_CIRCUIT_BREAKER_TIMEOUT")? {
        source.load.breaker_timeout_ms = ceil_millis(timeout);
    }

    let redis = redis_config(&get, &source.name)?;

    // Accepted for compatibility; checked so a typo does not go unnoticed.
    for name in [
        "NUM_WORKERS",
        "BATCH_SIZE",
        "COMPANY_CHANNEL_SIZE",
        "USER_CHANNEL_SIZE",
        "FLAGS_CHANNEL_SIZE",
    ] {
        let name: &'static str = name;
        number::<u64>(name, get(name))?;
    }
    duration("BATCH_TIMEOUT")?;
    boolean("USE_ASYNC_LOADING")?;
    boolean("REDIS_ROUTE_BY_LATENCY")?;

    let mut health = HealthConfig {
        enabled: true,
        ..HealthConfig::default()
    };
    if let Some(port) = number::<u16>("HEALTH_PORT", get("HEALTH_PORT"))? {
        health.listen = format!("0.0.0.0:{port}");
    }

    let entity_config = match get("SCHEMATIC_CACHE_VERSION") {
        Some(version) => serde_json::json!({ "cache_version": version }),
        None => serde_json::json!({}),
    };
    let entity = |name: &str, collections: &str| EntityConfig {
        name: name.to_owned(),
        plugin: "schematic".into(),
        source: source.name.clone(),
        collection: Some(collections.to_owned()),
        config: entity_config.clone(),
        config_file: None,
    };
    let entities = vec![
        entity("flags", "rulesengine.Flags,rulesengine.Flag"),
        entity("companies", "rulesengine.Company,rest.Company"),
        entity("users", "rulesengine.User,rest.User"),
    ];

    let mut config = Config {
        entities,
        health,
        redis: Some(redis),
        ..Config::default()
    };
    if let Some(level) = get("LOG_LEVEL") {
        config.log.level = level.to_ascii_lowercase();
    }
    config.api.enabled = false;
    config.cache.enabled = false;
    config.sources = vec![SourceConfig::Schematic(source)];
    Ok(config)
}

/// The Redis writer of the profile: the target (`REDIS_URL`, or
/// `REDIS_ADDR` and friends, or a cluster), its timeouts and retries, TTL,
/// cleanup, breaker, lock and replay cursor.
fn redis_config(
    get: &impl Fn(&str) -> Option<String>,
    source: &str,
) -> Result<RedisWriterConfig, ConfigError> {
    let duration = |name: &'static str| -> Result<Option<Duration>, ConfigError> {
        get(name).map(|v| checked_duration(name, &v)).transpose()
    };
    let boolean = |name: &'static str| -> Result<Option<bool>, ConfigError> {
        get(name)
            .map(|v| parse_bool(&v).ok_or_else(|| bad(name, &v, "a boolean")))
            .transpose()
    };
    let integer = |name: &'static str| -> Result<Option<i64>, ConfigError> {
        get(name)
            .map(|v| {
                v.parse::<i64>()
                    .map_err(|_| bad(name, &v, "a whole number in range"))
            })
            .transpose()
    };

    let url = get("REDIS_URL")
        .map(|text| {
            parse_redis_url(&text).map_err(|reason| ConfigError::Value {
                key: "REDIS_URL",
                reason,
            })
        })
        .transpose()?
        .unwrap_or_default();

    let mut redis = RedisWriterConfig {
        cleanup_prefixes: CLEANUP_PREFIXES.iter().map(|p| (*p).to_owned()).collect(),
        entities: ENTITIES.iter().map(|e| (*e).to_owned()).collect(),
        replay_cursor: Some(ReplayCursorConfig {
            source: source.to_owned(),
            key: get("REPLAY_CURSOR_KEY")
                .unwrap_or_else(|| crate::schematic::REPLAY_CURSOR_KEY.into()),
        }),
        ..RedisWriterConfig::default()
    };

    // The target: what REDIS_URL states wins, the separate variables fill in.
    if let Some(addr) = url.addr.clone().or_else(|| get("REDIS_ADDR")) {
        redis.addr = addr;
    }
    redis.username = url.username.clone();
    redis.password = url.password.clone().or_else(|| get("REDIS_PASSWORD"));
    let (db, db_variable) = match url.db {
        Some(db) => (db, "REDIS_URL"),
        None => (integer("REDIS_DB")?.unwrap_or(0), "REDIS_DB"),
    };
    if db < 0 {
        return Err(bad(
            db_variable,
            &db.to_string(),
            "a database number (0 or more)",
        ));
    }
    redis.db = db;
    redis.tls = url.tls || boolean("REDIS_TLS")?.unwrap_or(false);
    if let Some(addrs) = get("REDIS_CLUSTER_ADDRS") {
        redis.cluster_addrs = addrs
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .map(str::to_owned)
            .collect();
    }
    redis.cluster = boolean("REDIS_CLUSTER_MODE")?.unwrap_or(!redis.cluster_addrs.is_empty());
    if redis.cluster && redis.db != 0 {
        return Err(ConfigError::Value {
            key: db_variable,
            reason: format!("database {}: a Redis Cluster has only database 0", redis.db),
        });
    }

    // Timeouts and retries, with go-redis's meaning of 0 and -1.
    let dial = match url.dial_timeout {
        Some(d) => Some(d),
        None => duration("REDIS_DIAL_TIMEOUT")?,
    };
    let read = match url.read_timeout {
        Some(d) => Some(d),
        None => duration("REDIS_READ_TIMEOUT")?,
    };
    let write = match url.write_timeout {
        Some(d) => Some(d),
        None => duration("REDIS_WRITE_TIMEOUT")?,
    };
    let nonzero = |d: Option<Duration>| d.filter(|d| !d.is_zero()).map(ceil_millis);
    redis.connect_timeout_ms =
        nonzero(dial).unwrap_or(RedisWriterConfig::DEFAULT_CONNECT_TIMEOUT_MS);
    redis.read_timeout_ms = nonzero(read).unwrap_or(RedisWriterConfig::DEFAULT_READ_TIMEOUT_MS);
    redis.write_timeout_ms = nonzero(write).unwrap_or(redis.read_timeout_ms);
    let max_retries = match url.max_retries {
        Some(n) => Some((n, "REDIS_URL")),
        None => integer("REDIS_MAX_RETRIES")?.map(|n| (n, "REDIS_MAX_RETRIES")),
    };
    if let Some((n, name)) = max_retries {
        redis.max_retries = go_redis_retries(name, n)?;
    }
    let max_redirects = match url.max_redirects {
        Some(n) => Some((n, "REDIS_URL")),
        None => integer("REDIS_MAX_REDIRECTS")?.map(|n| (n, "REDIS_MAX_REDIRECTS")),
    };
    if let Some((n, name)) = max_redirects {
        redis.max_redirects = go_redis_retries(name, n)?;
    }

    if let Some(ttl) = duration("CACHE_TTL")? {
        redis.ttl_secs = 0;
        redis.ttl_ms = ceil_millis(ttl);
    }
    if let Some(interval) = duration("CACHE_CLEANUP_INTERVAL")? {
        redis.cleanup_interval_secs = ceil_secs(interval);
    }
    if let Some(threshold) = get("CIRCUIT_BREAKER_THRESHOLD") {
        let threshold: u32 = threshold.parse().map_err(|_| {
            bad(
                "CIRCUIT_BREAKER_THRESHOLD",
                &threshold,
                "a whole number in range",
            )
        })?;
        redis.breaker_threshold = threshold.max(1);
    }
    if let Some(timeout) = duration("CIRCUIT_BREAKER_TIMEOUT")? {
        redis.breaker_timeout_ms = ceil_millis(timeout);
    }
    redis.lock = LockConfig {
        enabled: !boolean("WRITER_LOCK_DISABLED")?.unwrap_or(false),
        key: get("WRITER_LOCK_KEY").unwrap_or_else(|| crate::schematic::WRITER_LOCK_KEY.into()),
        ttl_ms: duration("WRITER_LOCK_TTL")?
            .map(ceil_millis)
            .unwrap_or_else(|| LockConfig::default().ttl_ms),
    };
    Ok(redis)
}

/// What a `REDIS_URL` states (go-redis's `ParseURL`); `None` = not stated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct RedisUrl {
    /// `host:port` (`[v6]:port`), port 6379 when absent.
    addr: Option<String>,
    username: Option<String>,
    password: Option<String>,
    db: Option<i64>,
    tls: bool,
    dial_timeout: Option<Duration>,
    read_timeout: Option<Duration>,
    write_timeout: Option<Duration>,
    max_retries: Option<i64>,
    max_redirects: Option<i64>,
}

/// go-redis options that only tune its connection pool, routing or client
/// name: accepted in a `REDIS_URL`, with nothing to do here.
const IGNORED_URL_OPTIONS: [&str; 19] = [
    "protocol",
    "client_name",
    "min_retry_backoff",
    "max_retry_backoff",
    "pool_fifo",
    "pool_size",
    "pool_timeout",
    "min_idle_conns",
    "max_idle_conns",
    "max_active_conns",
    "conn_max_idle_time",
    "conn_max_lifetime",
    "idle_timeout",
    "max_conn_age",
    "idle_check_frequency",
    "route_by_latency",
    "route_randomly",
    "read_only",
    "context_timeout_enabled",
];

/// The expected shape, for errors.
const REDIS_URL_SHAPE: &str = "expected redis://[user][:password@]host[:port][/db] or rediss://…";

/// Parse a `REDIS_URL` as go-redis does. Errors say what is wrong without
/// repeating the URL (it may carry a password).
fn parse_redis_url(text: &str) -> Result<RedisUrl, String> {
    let mut url = RedisUrl::default();
    if text.chars().any(char::is_whitespace) {
        return Err(format!("contains white space; {REDIS_URL_SHAPE}"));
    }
    let (scheme, rest) = text
        .split_once("://")
        .ok_or_else(|| format!("has no scheme; {REDIS_URL_SHAPE}"))?;
    url.tls = match scheme.to_ascii_lowercase().as_str() {
        "redis" => false,
        "rediss" => true,
        "unix" => {
            return Err("unix sockets are not supported: use redis:// or rediss://".into());
        }
        other => return Err(format!("unsupported scheme {other:?}; {REDIS_URL_SHAPE}")),
    };
    let (rest, fragment) = match rest.split_once('#') {
        Some((rest, fragment)) => (rest, Some(fragment)),
        None => (rest, None),
    };
    if let Some(fragment) = fragment.filter(|f| !f.is_empty()) {
        return Err(format!(
            "the fragment #{fragment} is not supported (for a server with a private or \
             self-signed certificate, give its CA with EMCACHERS_REDIS__TLS_CA_FILE)"
        ));
    }
    let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (authority, path) = match rest.find('/') {
        Some(slash) => (&rest[..slash], &rest[slash..]),
        None => (rest, ""),
    };
    let host_port = match authority.rsplit_once('@') {
        Some((userinfo, host_port)) => {
            let (user, password) = match userinfo.split_once(':') {
                Some((user, password)) => (user, Some(password)),
                None => (userinfo, None),
            };
            let user = percent_decode(user).map_err(|e| format!("user name: {e}"))?;
            url.username = (!user.is_empty()).then_some(user);
            if let Some(password) = password {
                let password = percent_decode(password).map_err(|e| format!("password: {e}"))?;
                url.password = (!password.is_empty()).then_some(password);
            }
            host_port
        }
        None => authority,
    };
    url.addr = Some(parse_host_port(host_port)?);
    let path = path.trim_matches('/');
    if !path.is_empty() {
        url.db = Some(parse_db(path)?);
    }
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let key = percent_decode(key).map_err(|e| format!("option name: {e}"))?;
        let value =
            percent_decode(&value.replace('+', " ")).map_err(|e| format!("option {key}: {e}"))?;
        if value.is_empty() {
            continue;
        }
        let duration = || match parse_go_duration(&value) {
            Ok(d) => Ok(Some(d)),
            Err(DurationError::Malformed) => Err(format!(
                "option {key}: {value:?} is not a duration such as 3s"
            )),
            Err(DurationError::TooLong) => Err(format!(
                "option {key}: longer than the longest duration allowed (100 years)"
            )),
        };
        let integer = || {
            value
                .parse::<i64>()
                .map(Some)
                .map_err(|_| format!("option {key}: {value:?} is not a whole number"))
        };
        match key.as_str() {
            "db" => {
                if url.db.is_some() {
                    return Err("the database is given twice (path and ?db=)".into());
                }
                url.db = Some(parse_db(&value)?);
            }
            "dial_timeout" => url.dial_timeout = duration()?,
            "read_timeout" => url.read_timeout = duration()?,
            "write_timeout" => url.write_timeout = duration()?,
            "max_retries" => url.max_retries = integer()?,
            "max_redirects" => url.max_redirects = integer()?,
            "skip_verify" => {
                return Err(
                    "option skip_verify is not supported (for a server with a private \
                            or self-signed certificate, give its CA with \
                            EMCACHERS_REDIS__TLS_CA_FILE)"
                        .into(),
                );
            }
            other if IGNORED_URL_OPTIONS.contains(&other) => {}
            other => return Err(format!("unknown option {other:?}")),
        }
    }
    Ok(url)
}

/// `host[:port]` or `[v6][:port]` → `host:port` (`[v6]:port`).
fn parse_host_port(text: &str) -> Result<String, String> {
    let (host, port) = if let Some(v6) = text.strip_prefix('[') {
        let (host, after) = v6
            .split_once(']')
            .ok_or_else(|| "an IPv6 host lacks its closing ]".to_owned())?;
        let port = match after {
            "" => None,
            _ => Some(
                after
                    .strip_prefix(':')
                    .ok_or_else(|| "unexpected text after the IPv6 host".to_owned())?,
            ),
        };
        (format!("[{host}]"), port)
    } else {
        match text.rsplit_once(':') {
            Some((host, port)) => (host.to_owned(), Some(port)),
            None => (text.to_owned(), None),
        }
    };
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if bare.is_empty() {
        return Err(format!("has no host; {REDIS_URL_SHAPE}"));
    }
    if bare.contains(['/', '@', '?', '#', '[', ']']) {
        return Err("the host is malformed".into());
    }
    let port = match port {
        None | Some("") => 6379,
        Some(port) => port
            .parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("port {port:?} is not a number from 1 to 65535"))?,
    };
    Ok(format!("{host}:{port}"))
}

/// A database number (0 or more).
fn parse_db(text: &str) -> Result<i64, String> {
    text.parse::<i64>()
        .ok()
        .filter(|db| *db >= 0)
        .ok_or_else(|| format!("database {text:?} is not a number (0 or more)"))
}

/// `%XX` escapes decoded; the result must be UTF-8.
fn percent_decode(text: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| "a % is not followed by two hex digits".to_owned())?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "not UTF-8 once decoded".to_owned())
}

/// Parse a Go duration (`1h30m`, `15s`, `500ms`, `0`); a bare number is
/// seconds. `None` when malformed, negative or longer than
/// [`MAX_DURATION`].
pub fn parse_duration(text: &str) -> Option<Duration> {
    parse_go_duration(text).ok()
}

fn parse_go_duration(text: &str) -> Result<Duration, DurationError> {
    let text = text.trim();
    let text = text.strip_prefix('+').unwrap_or(text);
    if text.is_empty() {
        return Err(DurationError::Malformed);
    }
    let bounded = |seconds: f64| -> Result<Duration, DurationError> {
        if seconds.is_nan() || seconds < 0.0 {
            return Err(DurationError::Malformed);
        }
        let duration = Duration::try_from_secs_f64(seconds).map_err(|_| DurationError::TooLong)?;
        if duration > MAX_DURATION {
            return Err(DurationError::TooLong);
        }
        Ok(duration)
    };
    if text
        .chars()
        .all(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '-' | '+'))
    {
        let seconds: f64 = text.parse().map_err(|_| DurationError::Malformed)?;
        return bounded(seconds);
    }
    let mut total = 0f64;
    let mut rest = text;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if number_len == 0 {
            return Err(DurationError::Malformed);
        }
        let value: f64 = rest[..number_len]
            .parse()
            .map_err(|_| DurationError::Malformed)?;
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let seconds_per = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(DurationError::Malformed),
        };
        rest = &rest[unit_len..];
        total += value * seconds_per;
    }
    bounded(total)
}

/// Parse a boolean as Go's `strconv.ParseBool` does, plus yes/no/on/off.
pub fn parse_bool(text: &str) -> Option<bool> {
    match text.trim().to_ascii_lowercase().as_str() {
        "1" | "t" | "true" | "yes" | "y" | "on" => Some(true),
        "0" | "f" | "false" | "no" | "n" | "off" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn config(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        config_from(|name| vars.get(name).cloned())
    }

    fn source(config: &Config) -> &DatastreamConfig {
        match &config.sources[0] {
            SourceConfig::Schematic(source) => source,
            other => panic!("not a schematic source: {other:?}"),
        }
    }

    #[test]
    fn key_and_redis_addr_alone_make_a_replicator() {
        let config = config(&[("SCHEMATIC_API_KEY", "sch_1"), ("REDIS_ADDR", "r:6380")]).unwrap();
        let source = source(&config);
        assert_eq!(source.api_key, "sch_1");
        assert_eq!(source.api_url, "https://api.schematichq.com");
        assert!(source.replay);
        assert_eq!(
            (
                source.load.page_size,
                source.load.max_concurrent,
                source.load.rate_limit_rps
            ),
            (100, 5, 10.0)
        );
        assert_eq!(source.datastream_url, None);
        assert_eq!(
            (
                source.load.breaker_threshold,
                source.load.breaker_timeout_ms
            ),
            (5, 30_000),
            "the loader's breaker has the seed's defaults"
        );
        let redis = config.redis.as_ref().unwrap();
        assert_eq!(redis.addr, "r:6380");
        assert_eq!(
            (redis.username.as_deref(), redis.password.as_deref()),
            (None, None)
        );
        assert_eq!((redis.db, redis.tls, redis.cluster), (0, false, false));
        assert_eq!(
            (redis.ttl_secs, redis.ttl_ms, redis.cleanup_interval_secs),
            (0, 0, 3600)
        );
        assert_eq!(redis.ttl(), None);
        assert_eq!(
            (redis.breaker_threshold, redis.breaker_timeout_ms),
            (3, 15_000)
        );
        assert_eq!(
            (
                redis.connect_timeout_ms,
                redis.read_timeout_ms,
                redis.write_timeout_ms,
                redis.timeout_ms
            ),
            (5_000, 3_000, 3_000, 0)
        );
        assert_eq!((redis.max_retries, redis.max_redirects), (3, 8));
        assert_eq!(redis.check(), Ok(()));
        assert!(redis.lock.enabled);
        assert_eq!(redis.lock.key, "schematic:datastream:writer_lock");
        assert_eq!(redis.lock.ttl_ms, 15_000);
        assert_eq!(
            redis.replay_cursor.as_ref().unwrap().key,
            "schematic:datastream:replay_cursor"
        );
        assert_eq!(redis.cleanup_prefixes, CLEANUP_PREFIXES);
        assert_eq!(redis.entities, ENTITIES);
        assert_eq!(
            config.health,
            HealthConfig {
                enabled: true,
                ..HealthConfig::default()
            }
        );
        let names: Vec<_> = config.entities.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["flags", "companies", "users"]);
        assert!(
            config
                .entities
                .iter()
                .all(|e| e.plugin == "schematic" && e.config == serde_json::json!({}))
        );
        assert!(!config.api.enabled && !config.cache.enabled);
    }

    #[test]
    fn every_variable_is_honoured() {
        let config = config(&[
            ("SCHEMATIC_API_KEY", "k"),
            ("SCHEMATIC_API_URL", "http://localhost:9999"),
            ("SCHEMATIC_DATASTREAM_URL", "ws://ds:1/datastream"),
            ("SCHEMATIC_CACHE_VERSION", "abc123"),
            ("CACHE_TTL", "5m"),
            ("CACHE_CLEANUP_INTERVAL", "0"),
            ("LOG_LEVEL", "DEBUG"),
            ("HEALTH_PORT", "9191"),
            ("REDIS_PASSWORD", "pw"),
            ("REDIS_DB", "3"),
            ("REDIS_TLS", "true"),
            ("REDIS_DIAL_TIMEOUT", "2s"),
            ("REDIS_READ_TIMEOUT", "1500ms"),
            ("REDIS_WRITE_TIMEOUT", "250ms"),
            ("REDIS_MAX_RETRIES", "5"),
            ("REDIS_MAX_REDIRECTS", "2"),
            ("REDIS_ROUTE_BY_LATENCY", "true"),
            ("CIRCUIT_BREAKER_THRESHOLD", "7"),
            ("CIRCUIT_BREAKER_TIMEOUT", "1m30s"),
            ("ASYNC_LOADER_CIRCUIT_BREAKER_THRESHOLD", "9"),
            ("ASYNC_LOADER_CIRCUIT_BREAKER_TIMEOUT", "45s"),
            ("ASYNC_LOADER_PAGE_SIZE", "50"),
            ("ASYNC_LOADER_MAX_CONCURRENT_REQUESTS", "2"),
            ("ASYNC_LOADER_RATE_LIMIT_RPS", "2.5"),
            ("REPLAY_DISABLED", "true"),
            ("REPLAY_CURSOR_KEY", "cur"),
            ("WRITER_LOCK_DISABLED", "yes"),
            ("WRITER_LOCK_TTL", "30s"),
            ("WRITER_LOCK_KEY", "lk"),
            ("NUM_WORKERS", "4"),
            ("BATCH_SIZE", "5"),
            ("BATCH_TIMEOUT", "10ms"),
            ("USE_ASYNC_LOADING", "true"),
            ("COMPANY_CHANNEL_SIZE", "200"),
        ])
        .unwrap();
        let source = source(&config);
        assert_eq!(source.api_url, "http://localhost:9999");
        assert_eq!(
            source.datastream_url.as_deref(),
            Some("ws://ds:1/datastream")
        );
        assert!(!source.replay);
        assert_eq!(
            (
                source.load.page_size,
                source.load.max_concurrent,
                source.load.rate_limit_rps
            ),
            (50, 2, 2.5)
        );
        assert_eq!(
            (
                source.load.breaker_threshold,
                source.load.breaker_timeout_ms
            ),
            (9, 45_000)
        );
        let redis = config.redis.as_ref().unwrap();
        assert_eq!(
            (redis.ttl_secs, redis.ttl_ms, redis.cleanup_interval_secs),
            (0, 300_000, 0)
        );
        assert_eq!(redis.ttl(), Some(Duration::from_secs(300)));
        assert_eq!(redis.password.as_deref(), Some("pw"));
        assert_eq!((redis.db, redis.tls, redis.cluster), (3, true, false));
        assert_eq!(
            (
                redis.connect_timeout_ms,
                redis.read_timeout_ms,
                redis.write_timeout_ms
            ),
            (2_000, 1_500, 250)
        );
        assert_eq!((redis.max_retries, redis.max_redirects), (5, 2));
        assert_eq!(
            (redis.breaker_threshold, redis.breaker_timeout_ms),
            (7, 90_000)
        );
        assert!(!redis.lock.enabled);
        assert_eq!((redis.lock.key.as_str(), redis.lock.ttl_ms), ("lk", 30_000));
        assert_eq!(redis.replay_cursor.as_ref().unwrap().key, "cur");
        assert_eq!(config.health.listen, "0.0.0.0:9191");
        assert_eq!(config.log.level, "debug");
        assert!(
            config
                .entities
                .iter()
                .all(|e| e.config == serde_json::json!({"cache_version": "abc123"}))
        );
    }

    fn redis(vars: &[(&str, &str)]) -> RedisWriterConfig {
        let mut all = vec![("SCHEMATIC_API_KEY", "k")];
        all.extend_from_slice(vars);
        config(&all).expect("valid").redis.expect("redis writer")
    }

    fn error(vars: &[(&str, &str)]) -> String {
        let mut all = vec![("SCHEMATIC_API_KEY", "k")];
        all.extend_from_slice(vars);
        config(&all)
            .map(|_| ())
            .expect_err(&format!("{vars:?} must be refused"))
            .to_string()
    }

    #[test]
    fn redis_url_names_the_target() {
        let r = redis(&[(
            "REDIS_URL",
            "redis://emc:p%40ss%3Aw0rd@redis.internal:6380/4",
        )]);
        assert_eq!(r.addr, "redis.internal:6380");
        assert_eq!(r.username.as_deref(), Some("emc"));
        assert_eq!(r.password.as_deref(), Some("p@ss:w0rd"));
        assert_eq!((r.db, r.tls, r.cluster), (4, false, false));

        let r = redis(&[("REDIS_URL", "rediss://:s3cret@cache.example.com")]);
        assert_eq!(r.addr, "cache.example.com:6379");
        assert_eq!(
            (r.username.as_deref(), r.password.as_deref()),
            (None, Some("s3cret"))
        );
        assert_eq!((r.db, r.tls), (0, true));

        let r = redis(&[("REDIS_URL", "REDIS://[::1]:7000/2")]);
        assert_eq!((r.addr.as_str(), r.db), ("[::1]:7000", 2));

        let r = redis(&[("REDIS_URL", "redis://h:1?db=6&pool_size=10&client_name=x")]);
        assert_eq!((r.addr.as_str(), r.db), ("h:1", 6));
        assert_eq!(r.check(), Ok(()));
    }

    #[test]
    fn redis_url_wins_and_the_other_variables_fill_in() {
        let r = redis(&[
            ("REDIS_URL", "redis://h:1"),
            ("REDIS_ADDR", "other:2"),
            ("REDIS_PASSWORD", "pw"),
            ("REDIS_DB", "5"),
        ]);
        assert_eq!(r.addr, "h:1", "REDIS_URL wins over REDIS_ADDR");
        assert_eq!(
            (r.password.as_deref(), r.db),
            (Some("pw"), 5),
            "what the URL leaves out comes from the variables"
        );
        let r = redis(&[
            ("REDIS_URL", "redis://:url-pw@h:1/3"),
            ("REDIS_PASSWORD", "pw"),
            ("REDIS_DB", "5"),
            ("REDIS_TLS", "true"),
        ]);
        assert_eq!((r.password.as_deref(), r.db), (Some("url-pw"), 3));
        assert!(r.tls, "REDIS_TLS=true turns TLS on for a redis:// URL");
        let r = redis(&[
            (
                "REDIS_URL",
                "redis://h?dial_timeout=1s&read_timeout=2&write_timeout=500ms&max_retries=-1&max_redirects=4",
            ),
            ("REDIS_READ_TIMEOUT", "9s"),
            ("REDIS_MAX_RETRIES", "7"),
        ]);
        assert_eq!(
            (r.connect_timeout_ms, r.read_timeout_ms, r.write_timeout_ms),
            (1_000, 2_000, 500)
        );
        assert_eq!((r.max_retries, r.max_redirects), (0, 4));
    }

    #[test]
    fn malformed_redis_urls_are_errors_that_hide_the_password() {
        for url in [
            "localhost:6379",
            "http://s3cret@h:6379",
            "redis://",
            "redis://:s3cret@",
            "redis://:s3cret@h:notaport",
            "redis://h:70000",
            "redis://h:0",
            "redis://h/abc",
            "redis://h/-1",
            "redis://h/1/2",
            "redis://h/1?db=2",
            "redis://h?foo=1",
            "redis://:s3cret@h?skip_verify=true",
            "rediss://:s3cret@h/#insecure",
            "unix:///tmp/redis.sock",
            "redis://u:s3cret%zz@h",
            "redis://[::1",
            "redis://[::1]x",
            "redis://h?dial_timeout=1e20",
            "redis://h?read_timeout=soon",
            "redis://h?max_retries=many",
            "redis://h?max_retries=-2",
            "redis://h x:1",
        ] {
            let error = error(&[("REDIS_URL", url)]);
            assert!(error.contains("REDIS_URL"), "{url}: {error}");
            assert!(
                !error.contains("s3cret"),
                "{url}: the error shows the password: {error}"
            );
        }
    }

    #[test]
    fn cluster_addrs_alone_select_cluster_mode() {
        let r = redis(&[("REDIS_CLUSTER_ADDRS", "a:1, b:2,,c:3")]);
        assert!(r.cluster);
        assert_eq!(r.cluster_addrs, ["a:1", "b:2", "c:3"]);
        assert_eq!(r.seed_addrs(), ["a:1", "b:2", "c:3"]);
        let r = redis(&[
            ("REDIS_CLUSTER_ADDRS", "a:1,b:2"),
            ("REDIS_CLUSTER_MODE", "false"),
        ]);
        assert!(!r.cluster, "an explicit REDIS_CLUSTER_MODE=false wins");
        let r = redis(&[
            ("REDIS_CLUSTER_MODE", "true"),
            ("REDIS_URL", "redis://:pw@seed:7000"),
        ]);
        assert!(r.cluster);
        assert_eq!(r.seed_addrs(), ["seed:7000"]);
        assert_eq!(r.password.as_deref(), Some("pw"));
        assert!(!redis(&[]).cluster);
        let e = error(&[("REDIS_CLUSTER_ADDRS", "a:1"), ("REDIS_DB", "2")]);
        assert!(
            e.contains("REDIS_DB") && e.contains("only database 0"),
            "{e}"
        );
        let e = error(&[("REDIS_CLUSTER_ADDRS", "a:1"), ("REDIS_URL", "redis://h/2")]);
        assert!(
            e.contains("REDIS_URL") && e.contains("only database 0"),
            "{e}"
        );
    }

    #[test]
    fn loader_and_writer_breakers_are_configured_apart() {
        let only_writer = config(&[
            ("SCHEMATIC_API_KEY", "k"),
            ("CIRCUIT_BREAKER_THRESHOLD", "7"),
            ("CIRCUIT_BREAKER_TIMEOUT", "1s"),
        ])
        .unwrap();
        let load = &source(&only_writer).load;
        assert_eq!(
            (load.breaker_threshold, load.breaker_timeout_ms),
            (5, 30_000)
        );
        let r = only_writer.redis.as_ref().unwrap();
        assert_eq!((r.breaker_threshold, r.breaker_timeout_ms), (7, 1_000));

        let only_loader = config(&[
            ("SCHEMATIC_API_KEY", "k"),
            ("ASYNC_LOADER_CIRCUIT_BREAKER_THRESHOLD", "0"),
            ("ASYNC_LOADER_CIRCUIT_BREAKER_TIMEOUT", "250ms"),
        ])
        .unwrap();
        let load = &source(&only_loader).load;
        assert_eq!((load.breaker_threshold, load.breaker_timeout_ms), (1, 250));
        let r = only_loader.redis.as_ref().unwrap();
        assert_eq!((r.breaker_threshold, r.breaker_timeout_ms), (3, 15_000));
    }

    #[test]
    fn redis_timeouts_and_retries_follow_go_redis() {
        let r = redis(&[
            ("REDIS_DIAL_TIMEOUT", "0"),
            ("REDIS_READ_TIMEOUT", "1s"),
            ("REDIS_WRITE_TIMEOUT", "0s"),
            ("REDIS_MAX_RETRIES", "0"),
            ("REDIS_MAX_REDIRECTS", "-1"),
        ]);
        assert_eq!(
            (r.connect_timeout_ms, r.read_timeout_ms, r.write_timeout_ms),
            (5_000, 1_000, 1_000),
            "0 is the default; a zero write timeout takes the read timeout"
        );
        assert_eq!((r.max_retries, r.max_redirects), (3, 0));
        assert_eq!(r.connect_timeout(), Duration::from_secs(5));
        assert_eq!(r.response_timeout(), Duration::from_secs(2));
        assert_eq!(r.call_timeout(), Duration::from_secs(7));
        let r = redis(&[("REDIS_MAX_RETRIES", "-1"), ("REDIS_MAX_REDIRECTS", "0")]);
        assert_eq!((r.max_retries, r.max_redirects), (0, 3));
        for (name, value) in [
            ("REDIS_MAX_RETRIES", "-2"),
            ("REDIS_MAX_RETRIES", "99999999999"),
            ("REDIS_MAX_REDIRECTS", "lots"),
            ("REDIS_DIAL_TIMEOUT", "-1s"),
            ("REDIS_READ_TIMEOUT", "1e20"),
            ("REDIS_WRITE_TIMEOUT", "3 s"),
            ("REDIS_ROUTE_BY_LATENCY", "fastest"),
        ] {
            let e = error(&[(name, value)]);
            assert!(e.contains(name), "{e}");
        }
    }

    #[test]
    fn base_url_is_the_datastream_url_unless_datastream_url_is_set() {
        let url = |vars: &[(&str, &str)]| {
            let mut all = vec![("SCHEMATIC_API_KEY", "k")];
            all.extend_from_slice(vars);
            source(&config(&all).unwrap()).datastream_url.clone()
        };
        assert_eq!(
            url(&[("SCHEMATIC_BASE_URL", "ws://localhost:8080/datastream")]).as_deref(),
            Some("ws://localhost:8080/datastream")
        );
        assert_eq!(
            url(&[
                ("SCHEMATIC_BASE_URL", "ws://old:1/datastream"),
                ("SCHEMATIC_DATASTREAM_URL", "wss://new:2/datastream"),
            ])
            .as_deref(),
            Some("wss://new:2/datastream"),
            "SCHEMATIC_DATASTREAM_URL wins"
        );
        assert_eq!(
            url(&[("SCHEMATIC_BASE_URL", "https://api.example.com")]).as_deref(),
            Some("wss://datastream.example.com/datastream"),
            "an http(s) base URL is derived like the API URL"
        );
        for (name, value) in [
            ("SCHEMATIC_BASE_URL", "ftp://x/datastream"),
            ("SCHEMATIC_BASE_URL", "localhost:8080"),
            ("SCHEMATIC_BASE_URL", "ws://"),
            (
                "SCHEMATIC_DATASTREAM_URL",
                "https://ds.example.com/datastream",
            ),
            ("SCHEMATIC_DATASTREAM_URL", "datastream"),
        ] {
            let e = error(&[(name, value)]);
            assert!(e.contains(name), "{e}");
        }
    }

    #[test]
    fn sub_second_ttls_are_kept() {
        let r = redis(&[("CACHE_TTL", "500ms")]);
        assert_eq!((r.ttl_secs, r.ttl_ms), (0, 500));
        assert_eq!(r.ttl(), Some(Duration::from_millis(500)));
        assert_eq!(redis(&[("CACHE_TTL", "1.5s")]).ttl_ms, 1_500);
        assert_eq!(
            redis(&[("CACHE_TTL", "100us")]).ttl(),
            Some(Duration::from_millis(1)),
            "under 1 ms rounds up to 1 ms (go-redis does too), never to no expiry"
        );
        assert_eq!(redis(&[("CACHE_TTL", "0s")]).ttl(), None);
        assert_eq!(
            redis(&[("CACHE_CLEANUP_INTERVAL", "500ms")]).cleanup_interval(),
            Some(Duration::from_secs(1)),
            "a sub-second cleanup interval does not turn the cleanup off"
        );
    }

    #[test]
    fn values_that_would_overflow_are_errors_naming_the_variable() {
        for (name, value) in [
            ("CACHE_TTL", "1e20"),
            ("CACHE_TTL", "1e400"),
            ("CACHE_TTL", "876001h"),
            ("CACHE_TTL", "99999999999999999999999h"),
            ("CACHE_CLEANUP_INTERVAL", "18446744073709551615"),
            ("CACHE_CLEANUP_INTERVAL", "9999999999999999h"),
            ("CIRCUIT_BREAKER_TIMEOUT", "1e19"),
            ("ASYNC_LOADER_CIRCUIT_BREAKER_TIMEOUT", "1e19"),
            ("WRITER_LOCK_TTL", "1e300"),
            ("BATCH_TIMEOUT", "1e30"),
            ("ASYNC_LOADER_RATE_LIMIT_RPS", "1e12"),
            ("ASYNC_LOADER_RATE_LIMIT_RPS", "inf"),
            ("ASYNC_LOADER_RATE_LIMIT_RPS", "NaN"),
            ("ASYNC_LOADER_RATE_LIMIT_RPS", "0.001"),
            ("ASYNC_LOADER_RATE_LIMIT_RPS", "-5"),
            ("CIRCUIT_BREAKER_THRESHOLD", "99999999999"),
            ("ASYNC_LOADER_CIRCUIT_BREAKER_THRESHOLD", "-1"),
            ("ASYNC_LOADER_PAGE_SIZE", "1e3"),
            (
                "ASYNC_LOADER_MAX_CONCURRENT_REQUESTS",
                "99999999999999999999999",
            ),
            ("REDIS_DB", "-1"),
            ("REDIS_DB", "99999999999999999999"),
            ("HEALTH_PORT", "65536"),
        ] {
            let e = error(&[(name, value)]);
            assert!(e.contains(name), "{name}={value}: {e}");
        }
        // The longest allowed duration is usable everywhere.
        let r = redis(&[
            ("CACHE_TTL", "876000h"),
            ("CACHE_CLEANUP_INTERVAL", "876000h"),
            ("CIRCUIT_BREAKER_TIMEOUT", "876000h"),
            ("WRITER_LOCK_TTL", "876000h"),
            ("REDIS_READ_TIMEOUT", "876000h"),
        ]);
        assert_eq!(r.ttl(), Some(MAX_DURATION));
        assert_eq!(r.check(), Ok(()));
        let fastest = config(&[
            ("SCHEMATIC_API_KEY", "k"),
            ("ASYNC_LOADER_RATE_LIMIT_RPS", "1000000"),
        ])
        .unwrap();
        assert_eq!(source(&fastest).load.rate_limit_rps, MAX_RATE_LIMIT_RPS);
    }

    #[test]
    fn malformed_values_name_the_variable() {
        for (name, value) in [
            ("CACHE_TTL", "soon"),
            ("REDIS_DB", "zero"),
            ("REDIS_TLS", "maybe"),
            ("HEALTH_PORT", "70000"),
            ("NUM_WORKERS", "-1"),
            ("ASYNC_LOADER_RATE_LIMIT_RPS", "0"),
            ("BATCH_TIMEOUT", "10 parsecs"),
        ] {
            let error = config(&[("SCHEMATIC_API_KEY", "k"), (name, value)])
                .expect_err(name)
                .to_string();
            assert!(error.contains(name), "{error}");
        }
        assert!(config(&[]).unwrap_err().to_string().contains(API_KEY));
    }

    #[test]
    fn go_durations_parse() {
        let cases = [
            ("0", 0.0),
            ("0s", 0.0),
            ("15s", 15.0),
            ("1h", 3600.0),
            ("1h30m", 5400.0),
            ("500ms", 0.5),
            ("1.5h", 5400.0),
            ("300", 300.0),
            ("2m3s", 123.0),
        ];
        for (text, seconds) in cases {
            assert_eq!(
                parse_duration(text),
                Some(Duration::from_secs_f64(seconds)),
                "{text}"
            );
        }
        assert_eq!(parse_duration("+5s"), Some(Duration::from_secs(5)));
        assert_eq!(parse_duration("1µs"), Some(Duration::from_micros(1)));
        for text in [
            "", "h", "5x", "-1s", "1h-", "-1", "inf", "NaN", "1e20", "1e400", "3 s", "1..5s",
        ] {
            assert_eq!(parse_duration(text), None, "{text}");
        }
    }
}
