//! A misbehaving plugin for the host's isolation tests.
//!
//! `shape` looks at the document's `action` field:
//! - `"loop"`: spins forever (the host's deadline must stop it);
//! - `"alloc"`: allocates until memory runs out (the host's cap must stop it);
//! - `"panic"`: panics (a trap);
//! - `"reject"`: returns an item error;
//! - `"probe"`: reports what the sandbox lets it see (environment variables,
//!   a host file);
//! - anything else: echoes the document as a row, tagged with the plugin version.
//!
//! `keys` is the SDK's default (`{entity}:{version}:{id}` → the row), except
//! for the row ids an entity's configuration names:
//! `{"keys_panic_on": [ids]}` traps the whole `keys` call when the batch
//! holds one of them, `{"keys_reject_on": [ids]}` fails just that row.
//!
//! Built with the `v2` feature it reports version 2.0.0, so hot-reload tests
//! can tell which version answered.

use std::collections::HashMap;

use emcachers_plugin_sdk::{
    CacheWrite, Change, Error, Plugin, PluginInfo, Result, Row, Shaped, Value, log,
};

/// The version this build reports.
pub const VERSION: &str = if cfg!(feature = "v2") {
    "2.0.0"
} else {
    "1.0.0"
};

/// The hostile plugin.
#[derive(Default)]
pub struct Hostile {
    /// Per entity: row ids whose `keys` traps, and those it rejects.
    keys_faults: HashMap<String, (Vec<String>, Vec<String>)>,
}

fn ids(config: &Value, field: &str) -> Vec<String> {
    config
        .get(field)
        .and_then(Value::as_array)
        .map(|ids| {
            ids.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

impl Plugin for Hostile {
    fn describe(&self) -> PluginInfo {
        PluginInfo::new("hostile", VERSION)
            .description("misbehaves on request")
            .serving("hostile", "*", "*")
    }

    fn configure(&mut self, entity: &str, config: Value) -> Result<()> {
        let faults = (
            ids(&config, "keys_panic_on"),
            ids(&config, "keys_reject_on"),
        );
        self.keys_faults.insert(entity.to_owned(), faults);
        Ok(())
    }

    fn keys(&self, entity: &str, row: &Row) -> Result<Vec<CacheWrite>> {
        if let Some((panic_on, reject_on)) = self.keys_faults.get(entity) {
            if panic_on.contains(&row.id) {
                panic!("asked to trap in keys on {}", row.id);
            }
            if reject_on.contains(&row.id) {
                return Err(Error::msg(format!("keys rejected {}", row.id)));
            }
        }
        let key = format!("{entity}:{}:{}", self.version(entity), row.id);
        Ok(vec![CacheWrite::new(
            key,
            emcachers_plugin_sdk::serde_json::to_string(&row.data).unwrap_or_default(),
        )])
    }

    fn shape(&self, entity: &str, change: Change) -> Result<Shaped> {
        let doc = change.document.clone().unwrap_or(Value::Null);
        match doc.get("action").and_then(Value::as_str) {
            Some("loop") => {
                let mut n: u64 = 0;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            Some("alloc") => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            Some("panic") => panic!("asked to panic on {}", change.id),
            Some("reject") => Err(Error::msg(format!("rejected {}", change.id))),
            Some("probe") => {
                let file = std::fs::read_to_string("/etc/hostname").map_err(|e| e.to_string());
                Ok(Shaped::row(Row::upsert(
                    entity,
                    change.id,
                    [
                        ("env_vars", Value::from(std::env::vars().count())),
                        ("file_readable", Value::from(file.is_ok())),
                    ],
                )))
            }
            _ => {
                log::debug("echo", &[("id", &change.id)]);
                Ok(Shaped::row(Row::upsert(
                    entity,
                    change.id,
                    [("version", Value::from(VERSION)), ("document", doc)],
                )))
            }
        }
    }
}

emcachers_plugin_sdk::export_plugin!(Hostile);
