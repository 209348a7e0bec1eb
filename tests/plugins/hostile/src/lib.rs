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
//! Built with the `v2` feature it reports version 2.0.0, so hot-reload tests
//! can tell which version answered.

use emcachers_plugin_sdk::{Change, Error, Plugin, PluginInfo, Result, Row, Shaped, Value, log};

/// The version this build reports.
pub const VERSION: &str = if cfg!(feature = "v2") {
    "2.0.0"
} else {
    "1.0.0"
};

/// The hostile plugin.
#[derive(Default)]
pub struct Hostile;

impl Plugin for Hostile {
    fn describe(&self) -> PluginInfo {
        PluginInfo::new("hostile", VERSION)
            .description("misbehaves on request")
            .serving("hostile", "*", "*")
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
