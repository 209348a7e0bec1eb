//! Configuration: a TOML file, overridden by `EMCACHERS_*` environment
//! variables (`EMCACHERS_PLUGINS__DIR=/x` sets `plugins.dir`).
//!
//! Without a file, when `SCHEMATIC_API_KEY` is set, the environment
//! variables of Schematic's Go replicator make the configuration
//! ([`crate::schematic::env`]): emcachers then runs as a drop-in replacement.
//!
//! Loading goes through figment, so an error names the offending key and
//! where its value came from. Relative paths in a configuration file are
//! relative to the file's directory; without a file, to the working directory.

use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

use crate::cache::redis::RedisWriterConfig;
use crate::ingest::retry::RetryConfig;
use crate::plugin::{SandboxConfig, WasiGrants};
use crate::schematic::datastream::DatastreamConfig;
use crate::sources::mongo::MongoSourceConfig;

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file does not exist.
    #[error("configuration file {0} does not exist")]
    Missing(PathBuf),
    /// A key has a bad value, an unknown key was given, or the TOML is malformed.
    #[error("invalid configuration: {0}")]
    Invalid(#[from] Box<figment::Error>),
    /// An entity's `config_file` cannot be read or is not JSON.
    #[error("invalid configuration: entity {entity}: config_file {path}: {reason}")]
    EntityFile {
        /// The entity.
        entity: String,
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A value parsed but makes no sense.
    #[error("invalid configuration: {key}: {reason}")]
    Value {
        /// The dotted key.
        key: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

/// The whole configuration of `emcachers run`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where emcachers keeps its state (oplog, caches, compiled plugins).
    pub data_dir: PathBuf,
    /// Logging.
    pub log: LogConfig,
    /// The plugin runtime.
    pub plugins: PluginsConfig,
    /// The oplog store.
    pub oplog: OplogConfig,
    /// The per-entity SQLite caches.
    pub cache: CacheConfig,
    /// Background jobs.
    pub jobs: JobsConfig,
    /// The REST API.
    pub api: ApiConfig,
    /// Entities declared in the file, applied at start.
    pub entities: Vec<EntityConfig>,
    /// Sources read by `emcachers run`.
    pub sources: Vec<SourceConfig>,
    /// The health endpoints (`/health`, `/ready`, `/debug`, `/metrics`).
    pub health: HealthConfig,
    /// The Redis cache writer; off when absent.
    pub redis: Option<RedisWriterConfig>,
    /// How failed commits are retried (seed 004's `[retry]`).
    pub retry: RetryConfig,
    /// Seed 004's `[server]` (`host`, `port`): the REST API's address.
    pub server: Option<SeedServer>,
    /// Seed 004's `[database]` (`postgres_url`, `mongodb_url`).
    pub database: Option<SeedDatabase>,
    /// Seed 004's `[batch]` (`oplog_batch_size`, `postgres_batch_size`).
    pub batch: Option<SeedBatch>,
}

/// The database a MongoDB connection string names in its path
/// (`mongodb://u:p@host:27017/app?replicaSet=rs0` → `app`).
fn mongo_database_of(url: &str) -> Option<String> {
    let rest = url
        .strip_prefix("mongodb://")
        .or_else(|| url.strip_prefix("mongodb+srv://"))?;
    let (_, path) = rest.split_once('/')?;
    let database = path.split('?').next().unwrap_or_default();
    (!database.is_empty()).then(|| database.to_owned())
}

/// Seed 004's `[server]`: `api.listen = "{host}:{port}"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SeedServer {
    /// The address to listen on.
    pub host: String,
    /// The port.
    pub port: u16,
}

impl Default for SeedServer {
    fn default() -> Self {
        SeedServer {
            host: "0.0.0.0".into(),
            port: 8080,
        }
    }
}

/// Seed 004's `[database]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SeedDatabase {
    /// `oplog.postgres_url`.
    pub postgres_url: Option<String>,
    /// The `uri` of a MongoDB source named `mongo` (its database is the
    /// URL's path).
    pub mongodb_url: Option<String>,
}

/// Seed 004's `[batch]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SeedBatch {
    /// `oplog.batch_size`: changes per source batch.
    pub oplog_batch_size: Option<usize>,
    /// `cache.batch_size`: oplog entries a cache writer reads from the
    /// store (PostgreSQL in seed 004's deployment) per batch.
    pub postgres_batch_size: Option<usize>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("data"),
            log: LogConfig::default(),
            plugins: PluginsConfig::default(),
            oplog: OplogConfig::default(),
            cache: CacheConfig::default(),
            jobs: JobsConfig::default(),
            api: ApiConfig::default(),
            entities: Vec::new(),
            sources: Vec::new(),
            health: HealthConfig::default(),
            redis: None,
            retry: RetryConfig::default(),
            server: None,
            database: None,
            batch: None,
        }
    }
}

/// Log output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A `tracing` filter such as `info` or `emcachers=debug,plugin=trace`;
    /// `RUST_LOG` wins when set.
    pub level: String,
    /// `text` or `json`.
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The plugin runtime.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PluginsConfig {
    /// The plugin directory, watched for `*.wasm` files.
    pub dir: PathBuf,
    /// Where compiled plugins are cached; default `{data_dir}/plugin-cache`.
    pub cache_dir: Option<PathBuf>,
    /// Deadline of one plugin call (one batch), in milliseconds.
    pub deadline_ms: u64,
    /// Memory cap of one plugin instance, in MiB.
    pub memory_limit_mib: u64,
    /// Idle instances kept per plugin.
    pub max_idle_instances: usize,
    /// Whether to reload plugins when their files change.
    pub watch: bool,
    /// Whether the plugins built into the binary (`shape`, `schematic`)
    /// serve; a file of `dir` with the same plugin name overrides one.
    pub builtins: bool,
    /// What plugins may touch (nothing by default).
    pub wasi: WasiGrants,
}

impl Default for PluginsConfig {
    fn default() -> Self {
        PluginsConfig {
            dir: PathBuf::from("plugins"),
            cache_dir: None,
            deadline_ms: 1000,
            memory_limit_mib: 64,
            max_idle_instances: 4,
            watch: true,
            builtins: true,
            wasi: WasiGrants::default(),
        }
    }
}

/// The oplog store: embedded SQLite unless `postgres_url` is set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct OplogConfig {
    /// PostgreSQL connection URL; when set, the oplog lives there.
    pub postgres_url: Option<String>,
    /// The SQLite file; default `{data_dir}/oplog.sqlite`.
    pub sqlite_path: Option<PathBuf>,
    /// Changes per source batch.
    pub batch_size: Option<usize>,
    /// Source batches buffered between a source and the pipeline.
    pub queue_batches: Option<usize>,
}

/// The per-entity SQLite caches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Whether this node runs the SQLite cache replicator.
    pub enabled: bool,
    /// Root of `{entity}/db.sqlite`; default `{data_dir}/dbs`.
    pub dir: Option<PathBuf>,
    /// Close an entity database idle longer than this many seconds.
    pub idle_close_secs: u64,
    /// Oplog entries applied per batch.
    pub batch_size: usize,
    /// Poll interval when the oplog has nothing new, in milliseconds.
    pub poll_ms: u64,
    /// After this many consecutive failures of an entity, the rows that
    /// fail on their own are dead-lettered (rejected records, source
    /// `cache-writer:sqlite`) and the rest of the entity goes on.
    pub dead_letter_after: u32,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            enabled: true,
            dir: None,
            idle_close_secs: 300,
            batch_size: 5000,
            poll_ms: 50,
            dead_letter_after: 3,
        }
    }
}

/// Background job intervals.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JobsConfig {
    /// Re-read entity definitions from the store every this many seconds.
    pub entity_refresh_secs: u64,
    /// Check for idle cache connections every this many seconds.
    pub idle_check_secs: u64,
}

impl Default for JobsConfig {
    fn default() -> Self {
        JobsConfig {
            entity_refresh_secs: 5,
            idle_check_secs: 30,
        }
    }
}

/// The REST API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Whether `emcachers run` serves it.
    pub enabled: bool,
    /// Listen address (`127.0.0.1:0` picks a free port).
    pub listen: String,
    /// Oplog entries the slowest cache writer may have still to apply
    /// before `/api/system/stats` flags it.
    pub pending_oplog_limit: i64,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            enabled: true,
            listen: "127.0.0.1:8080".into(),
            pending_oplog_limit: 10_000,
        }
    }
}

/// The health endpoints, on their own port (Schematic's `HEALTH_PORT`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    /// Whether `emcachers run` serves them.
    pub enabled: bool,
    /// Listen address.
    pub listen: String,
    /// The entity whose cache version `/ready` reports as `cache_version`;
    /// default: the first entity fed by a datastream source.
    pub version_entity: Option<String>,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            enabled: false,
            listen: "0.0.0.0:8090".into(),
            version_entity: None,
        }
    }
}

/// A source read by `emcachers run`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum SourceConfig {
    /// A JSON-lines file, read once; its position survives restarts.
    Jsonl(JsonlSourceConfig),
    /// Schematic's datastream with its REST initial load.
    Schematic(DatastreamConfig),
    /// A MongoDB change stream on one database.
    Mongo(MongoSourceConfig),
}

/// A JSON-lines file source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JsonlSourceConfig {
    /// The source name (entities refer to it).
    pub name: String,
    /// The file; relative to the configuration file.
    pub path: PathBuf,
}

impl SourceConfig {
    /// The source name.
    pub fn name(&self) -> &str {
        match self {
            SourceConfig::Jsonl(config) => &config.name,
            SourceConfig::Schematic(config) => &config.name,
            SourceConfig::Mongo(config) => &config.name,
        }
    }
}

/// An entity declared in the configuration file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntityConfig {
    /// Entity name.
    pub name: String,
    /// The plugin that shapes it.
    pub plugin: String,
    /// The source it comes from (`*` for any).
    #[serde(default = "any")]
    pub source: String,
    /// The collection within the source (default: the entity name).
    #[serde(default)]
    pub collection: Option<String>,
    /// The plugin's configuration for it (any JSON/TOML value).
    #[serde(default = "empty_object")]
    pub config: serde_json::Value,
    /// A JSON file holding the plugin's configuration, instead of `config`;
    /// a relative path is relative to the configuration file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_file: Option<PathBuf>,
}

fn any() -> String {
    "*".into()
}

fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(Default::default())
}

impl Config {
    /// Load `path` (when given; it must exist) and the environment.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let defaults = match path {
            None if crate::schematic::env::active() => crate::schematic::env::config_from_env()?,
            _ => Config::default(),
        };
        let mut figment = Figment::from(Serialized::defaults(defaults));
        if let Some(path) = path {
            if !path.exists() {
                return Err(ConfigError::Missing(path.to_owned()));
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        let mut config = Self::extract(
            figment.merge(
                Env::prefixed("EMCACHERS_")
                    .ignore(&["WASM_PROFILER"])
                    .split("__"),
            ),
        )?;
        let base = path.and_then(Path::parent).unwrap_or(Path::new("."));
        if path.is_some() {
            config.resolve_paths(base);
        }
        config.read_entity_files(base)?;
        Ok(config)
    }

    /// Make every relative path of a configuration file relative to the
    /// file's directory, so the file means the same from any working directory.
    fn resolve_paths(&mut self, base: &Path) {
        let resolve = |path: &mut PathBuf| {
            if path.is_relative() {
                *path = base.join(&*path);
            }
        };
        resolve(&mut self.data_dir);
        resolve(&mut self.plugins.dir);
        self.plugins.cache_dir.iter_mut().for_each(resolve);
        self.plugins
            .wasi
            .read_only_dirs
            .iter_mut()
            .for_each(resolve);
        self.oplog.sqlite_path.iter_mut().for_each(resolve);
        self.cache.dir.iter_mut().for_each(resolve);
        for source in &mut self.sources {
            match source {
                SourceConfig::Jsonl(config) => resolve(&mut config.path),
                SourceConfig::Schematic(_) | SourceConfig::Mongo(_) => {}
            }
        }
    }

    /// Replace each entity's `config` by the content of its `config_file`.
    fn read_entity_files(&mut self, base: &Path) -> Result<(), ConfigError> {
        for entity in &mut self.entities {
            let Some(file) = entity.config_file.take() else {
                continue;
            };
            let path = base.join(&file);
            let fail = |reason: String| ConfigError::EntityFile {
                entity: entity.name.clone(),
                path: path.clone(),
                reason,
            };
            let text = std::fs::read_to_string(&path).map_err(|e| fail(e.to_string()))?;
            entity.config = serde_json::from_str(&text).map_err(|e| fail(e.to_string()))?;
            entity.config_file = Some(path);
        }
        Ok(())
    }

    /// Parse a configuration from TOML text alone (no environment).
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        Self::extract(
            Figment::from(Serialized::defaults(Config::default())).merge(Toml::string(text)),
        )
    }

    fn extract(figment: Figment) -> Result<Config, ConfigError> {
        let mut config: Config = figment.extract().map_err(Box::new)?;
        config.apply_seed_keys()?;
        config.check()?;
        Ok(config)
    }

    /// Apply seed 004's keys to the settings they name (a key given both
    /// ways with different values is an error naming both).
    fn apply_seed_keys(&mut self) -> Result<(), ConfigError> {
        if let Some(server) = &self.server {
            self.api.listen = format!("{}:{}", server.host, server.port);
        }
        if let Some(database) = self.database.clone() {
            if let Some(url) = database.postgres_url {
                match &self.oplog.postgres_url {
                    Some(own) if *own != url => {
                        return Err(ConfigError::Value {
                            key: "database.postgres_url",
                            reason: "differs from oplog.postgres_url: give one of them".into(),
                        });
                    }
                    _ => self.oplog.postgres_url = Some(url),
                }
            }
            if let Some(url) = database.mongodb_url {
                self.add_seed_mongo_source(&url)?;
            }
        }
        if let Some(batch) = &self.batch {
            if let Some(size) = batch.oplog_batch_size {
                self.oplog.batch_size = Some(size);
            }
            if let Some(size) = batch.postgres_batch_size {
                self.cache.batch_size = size;
            }
        }
        Ok(())
    }

    /// Seed 004's `[database] mongodb_url`: a MongoDB source named `mongo`
    /// reading the database the URL's path names (`mongodb://host/app`),
    /// with the defaults of `[[sources]] kind = "mongo"`.
    fn add_seed_mongo_source(&mut self, url: &str) -> Result<(), ConfigError> {
        let problem = |reason: &str| ConfigError::Value {
            key: "database.mongodb_url",
            reason: reason.to_owned(),
        };
        if self.sources.iter().any(|s| s.name() == "mongo") {
            return Err(problem(
                "a source named mongo is declared too: give one of them",
            ));
        }
        let database = mongo_database_of(url)
            .ok_or_else(|| problem("names no database: mongodb://host:27017/{database}"))?;
        self.sources.push(SourceConfig::Mongo(MongoSourceConfig {
            name: "mongo".into(),
            uri: url.to_owned(),
            database,
            collections: None,
            full_document: crate::sources::mongo::FullDocument::default(),
            token_persist_ms: 10_000,
            scan_chunk: 1000,
        }));
        Ok(())
    }

    fn check(&self) -> Result<(), ConfigError> {
        self.retry
            .check()
            .map_err(|(key, reason)| ConfigError::Value { key, reason })?;
        if self.plugins.deadline_ms == 0 {
            return Err(ConfigError::Value {
                key: "plugins.deadline_ms",
                reason: "must be at least 1".into(),
            });
        }
        if self.plugins.memory_limit_mib == 0 {
            return Err(ConfigError::Value {
                key: "plugins.memory_limit_mib",
                reason: "must be at least 1".into(),
            });
        }
        let mut names = std::collections::HashSet::new();
        for source in &self.sources {
            if !names.insert(source.name()) {
                return Err(ConfigError::Value {
                    key: "sources.name",
                    reason: format!("source {} is declared twice", source.name()),
                });
            }
            if let SourceConfig::Schematic(config) = source
                && config.api_key.trim().is_empty()
            {
                return Err(ConfigError::Value {
                    key: "sources.api_key",
                    reason: format!("source {} needs an API key", config.name),
                });
            }
            if let SourceConfig::Mongo(config) = source {
                config.check().map_err(|problem| ConfigError::Value {
                    key: problem.key,
                    reason: problem.reason,
                })?;
            }
        }
        if let Some(redis) = &self.redis {
            redis.check().map_err(|problem| ConfigError::Value {
                key: problem.key,
                reason: problem.reason,
            })?;
        }
        let mut seen = std::collections::HashSet::new();
        for entity in &self.entities {
            if let Err(error) = crate::entities::validate_name(&entity.name) {
                return Err(ConfigError::Value {
                    key: "entities.name",
                    reason: error.to_string(),
                });
            }
            if !seen.insert(&entity.name) {
                return Err(ConfigError::Value {
                    key: "entities.name",
                    reason: format!("entity {} is declared twice", entity.name),
                });
            }
        }
        Ok(())
    }

    /// The SQLite oplog file.
    pub fn oplog_sqlite_path(&self) -> PathBuf {
        self.oplog
            .sqlite_path
            .clone()
            .unwrap_or_else(|| self.data_dir.join("oplog.sqlite"))
    }

    /// The root of the per-entity caches.
    pub fn cache_dir(&self) -> PathBuf {
        self.cache
            .dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("dbs"))
    }

    /// The sandbox settings for the plugin engine.
    pub fn sandbox(&self) -> SandboxConfig {
        SandboxConfig {
            deadline: Duration::from_millis(self.plugins.deadline_ms),
            memory_limit: (self.plugins.memory_limit_mib as usize).saturating_mul(1024 * 1024),
            max_idle_instances: self.plugins.max_idle_instances,
            cache_dir: Some(
                self.plugins
                    .cache_dir
                    .clone()
                    .unwrap_or_else(|| self.data_dir.join("plugin-cache")),
            ),
            wasi: self.plugins.wasi.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_004_mongodb_url_is_a_source_named_mongo() {
        let config = Config::from_toml(
            "[database]\nmongodb_url = \"mongodb://u:p@db:27017/myapp?replicaSet=rs0\"\n",
        )
        .expect("parses");
        let Some(SourceConfig::Mongo(source)) = config.sources.first() else {
            panic!("a mongo source: {:?}", config.sources);
        };
        assert_eq!(
            (source.name.as_str(), source.database.as_str()),
            ("mongo", "myapp")
        );
        assert_eq!(mongo_database_of("mongodb://h:1/?x=1"), None);
        let none = Config::from_toml("[database]\nmongodb_url = \"mongodb://h:1\"\n");
        assert!(matches!(
            none,
            Err(ConfigError::Value {
                key: "database.mongodb_url",
                ..
            })
        ));
    }

    #[test]
    fn the_shipped_templates_load() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        for file in ["config.toml.template", "examples/mongo/emcachers.toml"] {
            let text = std::fs::read_to_string(root.join(file)).expect("the file");
            let config = Config::from_toml(&text).unwrap_or_else(|e| panic!("{file}: {e}"));
            assert!(
                config
                    .sources
                    .iter()
                    .any(|s| matches!(s, SourceConfig::Mongo(_))),
                "{file} reads MongoDB"
            );
        }
    }

    #[test]
    fn seed_004_keys_drive_the_settings_they_name() {
        let config = Config::from_toml(
            r#"
[server]
host = "127.0.0.1"
port = 9090

[database]
postgres_url = "postgresql://u:p@localhost:5432/emcachers"

[batch]
oplog_batch_size = 700
postgres_batch_size = 300

[retry]
max_attempts = 3
initial_delay_ms = 1000
backoff_multiplier = 2.0
"#,
        )
        .expect("seed keys parse");
        assert_eq!(config.api.listen, "127.0.0.1:9090");
        assert_eq!(
            config.oplog.postgres_url.as_deref(),
            Some("postgresql://u:p@localhost:5432/emcachers")
        );
        assert_eq!(config.oplog.batch_size, Some(700));
        assert_eq!(config.cache.batch_size, 300);
        assert_eq!(config.retry.max_attempts, 3);
        assert_eq!(config.retry.initial_delay_ms, 1000);

        let clash = Config::from_toml(
            "[oplog]\npostgres_url = \"postgresql://a\"\n[database]\npostgres_url = \"postgresql://b\"\n",
        );
        assert!(
            matches!(
                clash,
                Err(ConfigError::Value {
                    key: "database.postgres_url",
                    ..
                })
            ),
            "{clash:?}"
        );
        let bad = Config::from_toml("[retry]\nbackoff_multiplier = 0.5\n");
        assert!(
            matches!(
                bad,
                Err(ConfigError::Value {
                    key: "retry.backoff_multiplier",
                    ..
                })
            ),
            "{bad:?}"
        );
    }

    #[test]
    fn schematic_sources_and_redis_parse_from_toml() {
        let config = Config::from_toml(
            r#"
[[sources]]
kind = "schematic"
api_key = "k"
api_url = "http://127.0.0.1:1"
[sources.load]
page_size = 10

[redis]
addr = "127.0.0.1:6399"
ttl_secs = 60

[health]
enabled = true
listen = "127.0.0.1:0"
"#,
        )
        .unwrap();
        let SourceConfig::Schematic(source) = &config.sources[0] else {
            panic!("not a schematic source")
        };
        assert_eq!(
            (source.name.as_str(), source.api_key.as_str()),
            ("schematic", "k")
        );
        assert_eq!(source.load.page_size, 10);
        assert_eq!(source.load.max_concurrent, 5);
        assert_eq!(config.redis.as_ref().map(|r| r.ttl_secs), Some(60));
        assert!(config.health.enabled);

        let err = Config::from_toml("[[sources]]\nkind = \"schematic\"\napi_kye = \"k\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("api_kye"), "{err}");
        let err = Config::from_toml("[[sources]]\nkind = \"schematic\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("api_key"), "{err}");
    }

    #[test]
    fn defaults_without_file() {
        let config = Config::from_toml("").expect("empty config is valid");
        assert_eq!(config.plugins.deadline_ms, 1000);
        assert_eq!(config.plugins.memory_limit_mib, 64);
        assert_eq!(config.sandbox().memory_limit, 64 << 20);
    }

    #[test]
    fn errors_name_the_key() {
        let err = Config::from_toml("[plugins]\ndeadline_ms = \"soon\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("plugins.deadline_ms"), "{err}");
        let err = Config::from_toml("[plugins]\ndirectory = \"x\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("directory"), "{err}");
        let err = Config::from_toml("[plugins]\ndeadline_ms = 0")
            .unwrap_err()
            .to_string();
        assert!(err.contains("plugins.deadline_ms"), "{err}");
        // Entity names follow the entity manager's rules.
        let err = Config::from_toml("[[entities]]\nname = \"sqlite_users\"\nplugin = \"shape\"")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("entities.name") && err.contains("'sqlite_' are reserved"),
            "{err}"
        );
    }

    #[test]
    fn entity_config_file_is_read_relative_to_the_config() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("users.json"), r#"{"columns": []}"#).unwrap();
        let file = dir.path().join("emcachers.toml");
        std::fs::write(
            &file,
            "[[entities]]\nname = \"users\"\nplugin = \"shape\"\nconfig_file = \"users.json\"\n",
        )
        .unwrap();
        let config = Config::load(Some(&file)).unwrap();
        assert_eq!(
            config.entities[0].config,
            serde_json::json!({"columns": []})
        );

        std::fs::write(dir.path().join("users.json"), "{oops").unwrap();
        let err = Config::load(Some(&file)).unwrap_err().to_string();
        assert!(
            err.contains("entity users") && err.contains("users.json"),
            "{err}"
        );
    }

    #[test]
    fn relative_paths_are_relative_to_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("emcachers.toml");
        std::fs::write(&file, "data_dir = \"state\"\n[plugins]\ndir = \"/abs/plugins\"\n[[sources]]\nkind = \"jsonl\"\nname = \"s\"\npath = \"in.jsonl\"\n").unwrap();
        let config = Config::load(Some(&file)).unwrap();
        assert_eq!(config.data_dir, dir.path().join("state"));
        assert_eq!(config.plugins.dir, PathBuf::from("/abs/plugins"));
        assert_eq!(
            config.oplog_sqlite_path(),
            dir.path().join("state/oplog.sqlite")
        );
        assert_eq!(
            config.sources[0],
            SourceConfig::Jsonl(JsonlSourceConfig {
                name: "s".into(),
                path: dir.path().join("in.jsonl")
            })
        );
    }

    #[test]
    fn entities_with_inline_config() {
        let config = Config::from_toml(
            r#"
            [[entities]]
            name = "users"
            plugin = "shape"
            config = { entity_name = "users", columns = [{ name = "id", type = "Text", path = "_id" }] }
            "#,
        )
        .expect("valid");
        assert_eq!(config.entities[0].config["columns"][0]["path"], "_id");
    }

    #[test]
    fn mongo_sources_parse_from_toml_and_are_checked() {
        use crate::sources::mongo::FullDocument;
        let config = Config::from_toml(
            r#"
            [[sources]]
            kind = "mongo"
            name = "mongo"
            uri = "mongodb://127.0.0.1:27017/?directConnection=true"
            database = "app"
            collections = ["users", "orders"]
            full_document = "updateLookup"
            "#,
        )
        .expect("valid");
        let SourceConfig::Mongo(source) = &config.sources[0] else {
            panic!("a mongo source: {:?}", config.sources[0]);
        };
        assert_eq!(source.database, "app");
        assert_eq!(
            source.collections.as_deref(),
            Some(&["users".to_owned(), "orders".to_owned()][..])
        );
        assert_eq!(source.full_document, FullDocument::UpdateLookup);
        assert_eq!(source.token_persist_ms, 10_000);

        let minimal = "[[sources]]\nkind = \"mongo\"\nname = \"m\"\nuri = \"mongodb://h\"\ndatabase = \"d\"\n";
        let config = Config::from_toml(minimal).expect("valid");
        let SourceConfig::Mongo(source) = &config.sources[0] else {
            panic!("a mongo source");
        };
        assert_eq!(source.full_document, FullDocument::Default);
        assert_eq!(source.collections, None);

        for (extra, key) in [
            ("typo = 1\n", "typo"),
            ("full_document = \"whenAvailable\"\n", "whenAvailable"),
            ("token_persist_ms = 0\n", "sources.token_persist_ms"),
        ] {
            let error = Config::from_toml(&format!("{minimal}{extra}"))
                .unwrap_err()
                .to_string();
            assert!(error.contains(key), "{extra}: {error}");
        }
        let error = Config::from_toml(&minimal.replace("mongodb://h", "http://h"))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("sources.uri") && error.contains("source m"),
            "{error}"
        );
    }
}
