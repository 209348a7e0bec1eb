//! Configuration: a TOML file, overridden by `EMCACHERS_*` environment
//! variables (`EMCACHERS_PLUGINS__DIR=/x` sets `plugins.dir`).
//!
//! Loading goes through figment, so an error names the offending key and
//! where its value came from.

use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

use crate::plugin::{SandboxConfig, WasiGrants};

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file does not exist.
    #[error("configuration file {0} does not exist")]
    Missing(PathBuf),
    /// A key has a bad value, an unknown key was given, or the TOML is malformed.
    #[error("invalid configuration: {0}")]
    Invalid(#[from] Box<figment::Error>),
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
    /// Entities declared in the file, applied at start.
    pub entities: Vec<EntityConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("data"),
            log: LogConfig::default(),
            plugins: PluginsConfig::default(),
            entities: Vec::new(),
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
            wasi: WasiGrants::default(),
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
    /// The source it comes from.
    #[serde(default)]
    pub source: Option<String>,
    /// The collection within the source.
    #[serde(default)]
    pub collection: Option<String>,
    /// The plugin's configuration for it (any JSON/TOML value).
    #[serde(default = "empty_object")]
    pub config: serde_json::Value,
}

fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(Default::default())
}

impl Config {
    /// Load `path` (when given; it must exist) and the environment.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = path {
            if !path.exists() {
                return Err(ConfigError::Missing(path.to_owned()));
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        Self::extract(figment.merge(Env::prefixed("EMCACHERS_").split("__")))
    }

    /// Parse a configuration from TOML text alone (no environment).
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        Self::extract(
            Figment::from(Serialized::defaults(Config::default())).merge(Toml::string(text)),
        )
    }

    fn extract(figment: Figment) -> Result<Config, ConfigError> {
        let config: Config = figment.extract().map_err(Box::new)?;
        config.check()?;
        Ok(config)
    }

    fn check(&self) -> Result<(), ConfigError> {
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
        let mut seen = std::collections::HashSet::new();
        for entity in &self.entities {
            if entity.name.trim().is_empty() {
                return Err(ConfigError::Value {
                    key: "entities.name",
                    reason: "must not be empty".into(),
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
}
