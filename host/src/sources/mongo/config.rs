//! `[[sources]] kind = "mongo"`.

use serde::{Deserialize, Serialize};

/// The longest duration a setting may hold (100 years), so nothing
/// overflows when it is added to an instant.
const MAX_MS: u64 = 100 * 365 * 24 * 3600 * 1000;

/// A MongoDB change stream source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MongoSourceConfig {
    /// The source name: its resume token is stored under it, and entities
    /// name it as their source.
    pub name: String,
    /// The connection string, e.g. `mongodb://host:27017/?replicaSet=rs0`.
    /// Never logged (it may hold a password).
    pub uri: String,
    /// The database whose change stream is read.
    pub database: String,
    /// The collections to read; default: every collection of the database
    /// (changes no entity routes are counted as unrouted and dropped by
    /// the pipeline).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collections: Option<Vec<String>>,
    /// What an update event carries: `default` (the changed fields: a
    /// partial change) or `updateLookup` (the document as it is when the
    /// event is read: an upsert).
    #[serde(default)]
    pub full_document: FullDocument,
    /// How often, at most, the token of an idle stream (the
    /// `postBatchResumeToken` of empty batches) is saved, so it does not
    /// age out of the oplog window.
    #[serde(default = "default_token_persist_ms")]
    pub token_persist_ms: u64,
    /// Documents per chunk of a snapshot scan: each chunk is one page,
    /// committed with the scan's progress (a restart continues after the
    /// last committed chunk).
    #[serde(default = "default_scan_chunk")]
    pub scan_chunk: usize,
}

fn default_scan_chunk() -> usize {
    1000
}

/// The largest `scan_chunk` (a chunk is read and committed as a whole).
pub const MAX_SCAN_CHUNK: usize = 100_000;

fn default_token_persist_ms() -> u64 {
    10_000
}

/// The `fullDocument` mode of the change stream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum FullDocument {
    /// Update events carry `updateDescription` only.
    #[default]
    #[serde(rename = "default")]
    Default,
    /// Update events also carry the current document (looked up when the
    /// event is read; `null` when it was deleted since).
    #[serde(rename = "updateLookup")]
    UpdateLookup,
}

/// A setting that makes no sense: the dotted key and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// The key, e.g. `sources.uri`.
    pub key: &'static str,
    /// What is wrong with it.
    pub reason: String,
}

impl MongoSourceConfig {
    /// Refuse values that cannot work, naming the key.
    pub fn check(&self) -> Result<(), ConfigProblem> {
        let problem = |key: &'static str, reason: String| {
            Err(ConfigProblem {
                key,
                reason: format!("source {}: {reason}", self.name),
            })
        };
        if self.uri.trim().is_empty() {
            return problem("sources.uri", "needs a MongoDB connection string".into());
        }
        if !(self.uri.starts_with("mongodb://") || self.uri.starts_with("mongodb+srv://")) {
            return problem(
                "sources.uri",
                "must start with mongodb:// or mongodb+srv://".into(),
            );
        }
        if self.database.trim().is_empty() {
            return problem("sources.database", "needs a database name".into());
        }
        if let Some(collections) = &self.collections {
            if collections.is_empty() {
                return problem(
                    "sources.collections",
                    "is empty: leave it out to read every collection".into(),
                );
            }
            if collections.iter().any(|c| c.trim().is_empty()) {
                return problem("sources.collections", "holds an empty name".into());
            }
        }
        if self.token_persist_ms == 0 || self.token_persist_ms > MAX_MS {
            return problem(
                "sources.token_persist_ms",
                format!("must be between 1 and {MAX_MS}"),
            );
        }
        if self.scan_chunk == 0 || self.scan_chunk > MAX_SCAN_CHUNK {
            return problem(
                "sources.scan_chunk",
                format!("must be between 1 and {MAX_SCAN_CHUNK}"),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn config() -> MongoSourceConfig {
        MongoSourceConfig {
            name: "mongo".into(),
            uri: "mongodb://127.0.0.1:27017".into(),
            database: "app".into(),
            collections: None,
            full_document: FullDocument::Default,
            token_persist_ms: 10_000,
            scan_chunk: 1000,
        }
    }

    #[test]
    fn checks_name_the_key() {
        assert_eq!(config().check(), Ok(()));
        type Edit = fn(&mut MongoSourceConfig);
        let cases: [(Edit, &str); 6] = [
            (|c| c.scan_chunk = 0, "sources.scan_chunk"),
            (|c| c.uri = " ".into(), "sources.uri"),
            (|c| c.uri = "http://x".into(), "sources.uri"),
            (|c| c.database = String::new(), "sources.database"),
            (|c| c.collections = Some(vec![]), "sources.collections"),
            (|c| c.token_persist_ms = 0, "sources.token_persist_ms"),
        ];
        for (change, key) in cases {
            let mut c = config();
            change(&mut c);
            let problem = c.check().unwrap_err();
            assert_eq!(problem.key, key);
            assert!(problem.reason.contains("source mongo"), "{problem:?}");
        }
    }
}
