//! Schematic's `/ready` body (spec §6): `{"status", "ready", "connected",
//! "components": {"redis", "datastream"}, "cache_version", "timestamp"}`,
//! plus `"error"` when the datastream rejected the API key (close code
//! 4001). The generic health module decides readiness; this only words it
//! the way Schematic's SDKs and the Go replicator's operators read it.

use serde_json::{Value, json};

use crate::cache::Layouts;
use crate::health::{HealthState, Readiness, ReadinessBody, rfc3339};

/// The Schematic readiness body. `cache_version` is the version the first
/// cache writer writes `version_entity` under, else its published layout's.
pub struct SchematicBody {
    version_entity: String,
    layouts: Layouts,
}

impl SchematicBody {
    /// The body reporting the cache version of `version_entity` (Schematic's
    /// SDKs build their keys from it).
    pub fn new(version_entity: String, layouts: Layouts) -> SchematicBody {
        SchematicBody {
            version_entity,
            layouts,
        }
    }

    /// The version `/ready` reports.
    pub fn cache_version(&self, state: &HealthState) -> String {
        state
            .writers
            .iter()
            .find_map(|w| w.version(&self.version_entity))
            .or_else(|| {
                self.layouts
                    .peek()
                    .get(&self.version_entity)
                    .map(|layout| layout.version.clone())
            })
            .unwrap_or_default()
    }
}

impl ReadinessBody for SchematicBody {
    fn body(&self, state: &HealthState, readiness: &Readiness) -> Value {
        let connected = readiness.connected();
        let writers_connected = readiness.writers_connected();
        let datastream = if !connected {
            "disconnected"
        } else if readiness.landed() && writers_connected && readiness.writers_complete() {
            "ready"
        } else {
            "connected_loading"
        };
        let component = readiness.writers.first().map_or("redis", |w| w.component);
        let mut body = json!({
            "status": if readiness.ready { "healthy" } else { "not_ready" },
            "ready": readiness.ready,
            "connected": connected,
            "components": {
                component: if writers_connected { "connected" } else { "disconnected" },
                "datastream": datastream,
            },
            "cache_version": self.cache_version(state),
            "timestamp": rfc3339(std::time::SystemTime::now()),
        });
        if let (Some(error), Some(map)) = (readiness.error(), body.as_object_mut()) {
            map.insert("error".into(), Value::String(error.to_owned()));
        }
        body
    }
}
