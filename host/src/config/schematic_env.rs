//! The environment of Schematic's Go replicator (spec §7) as a
//! configuration: with `SCHEMATIC_API_KEY` and `REDIS_ADDR` set, `emcachers
//! run` replicates the datastream into Redis under the same keys, and
//! serves `/health` and `/ready` on `HEALTH_PORT`.
//!
//! | variable | default | becomes |
//! |---|---|---|
//! | `SCHEMATIC_API_KEY` | required | `sources[0].api_key` |
//! | `SCHEMATIC_API_URL` | `https://api.schematichq.com` | `sources[0].api_url` |
//! | `SCHEMATIC_DATASTREAM_URL` | derived from the API URL | `sources[0].datastream_url` |
//! | `SCHEMATIC_CACHE_VERSION` | the plugin's (`v1`) | `cache_version` of the three entities |
//! | `CACHE_TTL` | `0` (none) | `redis.ttl_secs` |
//! | `CACHE_CLEANUP_INTERVAL` | `1h` (`0` = off) | `redis.cleanup_interval_secs` |
//! | `LOG_LEVEL` | `info` | `log.level` |
//! | `HEALTH_PORT` | `8090` | `health.listen` = `0.0.0.0:{port}` |
//! | `REDIS_ADDR` | `localhost:6379` | `redis.addr` |
//! | `REDIS_PASSWORD`, `REDIS_DB`, `REDIS_TLS` | none, 0, false | `redis.password`, `redis.db`, `redis.tls` |
//! | `REDIS_CLUSTER_MODE`, `REDIS_CLUSTER_ADDRS` | false, none | `redis.cluster`, `redis.cluster_addrs` (comma-separated) |
//! | `CIRCUIT_BREAKER_THRESHOLD`, `CIRCUIT_BREAKER_TIMEOUT` | 3, `15s` | the Redis writer's and the REST loader's breakers |
//! | `ASYNC_LOADER_PAGE_SIZE`, `ASYNC_LOADER_MAX_CONCURRENT_REQUESTS`, `ASYNC_LOADER_RATE_LIMIT_RPS` | 100, 5, 10 | `sources[0].load.*` |
//! | `REPLAY_DISABLED` | false | `sources[0].replay = false` |
//! | `REPLAY_CURSOR_KEY` | `schematic:datastream:replay_cursor` | `redis.replay_cursor.key` |
//! | `WRITER_LOCK_DISABLED`, `WRITER_LOCK_TTL`, `WRITER_LOCK_KEY` | false, `15s`, `schematic:datastream:writer_lock` | `redis.lock.*` |
//! | `NUM_WORKERS`, `BATCH_SIZE`, `BATCH_TIMEOUT`, `*_CHANNEL_SIZE`, `USE_ASYNC_LOADING` | | accepted and checked; emcachers batches by itself (the Go worker pool has no equivalent) |
//!
//! Durations take Go's syntax (`1h`, `15s`, `1h30m`, `500ms`); a bare
//! number is seconds. Booleans take `true/false/1/0/yes/no`. A malformed
//! value is an error naming the variable.
//!
//! Everything else has emcachers' defaults and can be changed with
//! `EMCACHERS_*` variables on top (`EMCACHERS_DATA_DIR`,
//! `EMCACHERS_PLUGINS__DIR`, `EMCACHERS_API__ENABLED`, ...). In this profile
//! the REST API and the per-entity SQLite caches are off unless enabled.

use std::time::Duration;

use super::{Config, ConfigError, EntityConfig, HealthConfig, SourceConfig};
use crate::cache::redis::{LockConfig, RedisWriterConfig, ReplayCursorConfig};
use crate::sources::datastream::DatastreamConfig;

/// The variable that selects this profile.
pub const API_KEY: &str = "SCHEMATIC_API_KEY";

/// The entities of the profile (the schematic plugin serves exactly these).
pub const ENTITIES: [&str; 3] = ["flags", "companies", "users"];

/// The key prefixes the stale-version cleanup scans.
pub const CLEANUP_PREFIXES: [&str; 3] =
    ["schematic:flags:", "schematic:company:", "schematic:user:"];

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

/// The configuration described by the variables `var` returns.
pub fn config_from(var: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
    let get = |name: &str| {
        var(name)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    };
    let duration = |name: &'static str| -> Result<Option<Duration>, ConfigError> {
        get(name)
            .map(|v| {
                parse_duration(&v).ok_or_else(|| bad(name, &v, "a duration such as 15s or 1h"))
            })
            .transpose()
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
            .map(|v| v.parse::<T>().map_err(|_| bad(name, &v, "a number")))
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
    source.datastream_url = get("SCHEMATIC_DATASTREAM_URL");
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
    if let Some(rps) = number::<f64>(
        "ASYNC_LOADER_RATE_LIMIT_RPS",
        get("ASYNC_LOADER_RATE_LIMIT_RPS"),
    )? {
        if !(rps > 0.0 && rps.is_finite()) {
            return Err(bad(
                "ASYNC_LOADER_RATE_LIMIT_RPS",
                &rps.to_string(),
                "a positive rate",
            ));
        }
        source.load.rate_limit_rps = rps;
    }
    let threshold = number::<u32>(
        "CIRCUIT_BREAKER_THRESHOLD",
        get("CIRCUIT_BREAKER_THRESHOLD"),
    )?;
    let breaker_timeout = duration("CIRCUIT_BREAKER_TIMEOUT")?;
    if let Some(threshold) = threshold {
        source.load.breaker_threshold = threshold.max(1);
    }
    if let Some(timeout) = breaker_timeout {
        source.load.breaker_timeout_ms = timeout.as_millis() as u64;
    }

    let mut redis = RedisWriterConfig {
        cleanup_prefixes: CLEANUP_PREFIXES.iter().map(|p| (*p).to_owned()).collect(),
        entities: ENTITIES.iter().map(|e| (*e).to_owned()).collect(),
        replay_cursor: Some(ReplayCursorConfig {
            source: source.name.clone(),
            key: get("REPLAY_CURSOR_KEY")
                .unwrap_or_else(|| "schematic:datastream:replay_cursor".into()),
        }),
        ..RedisWriterConfig::default()
    };
    if let Some(addr) = get("REDIS_ADDR") {
        redis.addr = addr;
    }
    redis.password = get("REDIS_PASSWORD");
    if let Some(db) = number::<i64>("REDIS_DB", get("REDIS_DB"))? {
        redis.db = db;
    }
    if let Some(tls) = boolean("REDIS_TLS")? {
        redis.tls = tls;
    }
    if let Some(cluster) = boolean("REDIS_CLUSTER_MODE")? {
        redis.cluster = cluster;
    }
    if let Some(addrs) = get("REDIS_CLUSTER_ADDRS") {
        redis.cluster_addrs = addrs
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .map(str::to_owned)
            .collect();
    }
    if let Some(ttl) = duration("CACHE_TTL")? {
        redis.ttl_secs = ttl.as_secs();
    }
    if let Some(interval) = duration("CACHE_CLEANUP_INTERVAL")? {
        redis.cleanup_interval_secs = interval.as_secs();
    }
    if let Some(threshold) = threshold {
        redis.breaker_threshold = threshold.max(1);
    }
    if let Some(timeout) = breaker_timeout {
        redis.breaker_timeout_ms = timeout.as_millis() as u64;
    }
    redis.lock = LockConfig {
        enabled: !boolean("WRITER_LOCK_DISABLED")?.unwrap_or(false),
        key: get("WRITER_LOCK_KEY").unwrap_or_else(|| LockConfig::default().key),
        ttl_ms: duration("WRITER_LOCK_TTL")?
            .map(|d| d.as_millis() as u64)
            .unwrap_or_else(|| LockConfig::default().ttl_ms),
    };

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

/// Parse a Go duration (`1h30m`, `15s`, `500ms`, `0`); a bare number is
/// seconds.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    if let Ok(seconds) = text.parse::<f64>() {
        return (seconds >= 0.0 && seconds.is_finite()).then(|| Duration::from_secs_f64(seconds));
    }
    let mut total = 0f64;
    let mut rest = text;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if number_len == 0 {
            return None;
        }
        let value: f64 = rest[..number_len].parse().ok()?;
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let seconds_per = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += value * seconds_per;
    }
    Some(Duration::from_secs_f64(total))
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
        let redis = config.redis.as_ref().unwrap();
        assert_eq!(redis.addr, "r:6380");
        assert_eq!((redis.ttl_secs, redis.cleanup_interval_secs), (0, 3600));
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
            ("REDIS_CLUSTER_MODE", "1"),
            ("REDIS_CLUSTER_ADDRS", "a:1, b:2,,c:3"),
            ("CIRCUIT_BREAKER_THRESHOLD", "7"),
            ("CIRCUIT_BREAKER_TIMEOUT", "1m30s"),
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
            (7, 90_000)
        );
        let redis = config.redis.as_ref().unwrap();
        assert_eq!((redis.ttl_secs, redis.cleanup_interval_secs), (300, 0));
        assert_eq!(redis.password.as_deref(), Some("pw"));
        assert_eq!((redis.db, redis.tls, redis.cluster), (3, true, true));
        assert_eq!(redis.cluster_addrs, ["a:1", "b:2", "c:3"]);
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
        for text in ["", "h", "5x", "-1s", "1h-"] {
            assert_eq!(parse_duration(text), None, "{text}");
        }
    }
}
