//! Remembered keys: which keys each row produced, so that a newer version of
//! the row, or its delete, removes exactly the keys that no longer apply (no
//! pattern sweeps).
//!
//! They live in Redis beside the data, one hash per entity
//! (`{state_prefix}keys:{entity}`, field = row id, value =
//! `{"v": "<entity version>", "k": ["key", …]}`), and in a bounded
//! in-memory cache of that hash. A [`Plan`] turns one batch of rows into the
//! net effect on every key it touches (the last write of a key wins, as if
//! the rows were applied one by one) and into the hash updates.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::target::Command;

/// The keys one row produced, under one entity version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Remembered {
    /// The entity version the keys were written under.
    pub v: String,
    /// The keys.
    pub k: Vec<String>,
}

impl Remembered {
    /// Parse a hash value; `None` (with a warning) when it is not ours.
    pub(crate) fn parse(entity: &str, doc_id: &str, text: &str) -> Option<Remembered> {
        match serde_json::from_str(text) {
            Ok(entry) => Some(entry),
            Err(error) => {
                tracing::warn!(entity, doc_id, %error, "unreadable remembered-keys entry ignored");
                None
            }
        }
    }

    fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// The in-memory copy of the remembered-keys hashes: entity → row id →
/// entry (`None`: known to have none). Cleared when it grows past its
/// bound, and whenever Redis may have changed behind the writer's back.
#[derive(Debug)]
pub(crate) struct RememberedCache {
    by_entity: HashMap<String, HashMap<String, Option<Remembered>>>,
    len: usize,
    max: usize,
}

impl RememberedCache {
    pub(crate) fn new(max: usize) -> RememberedCache {
        RememberedCache {
            by_entity: HashMap::new(),
            len: 0,
            max: max.max(1),
        }
    }

    pub(crate) fn clear(&mut self) {
        self.by_entity.clear();
        self.len = 0;
    }

    /// Make room for `more` entries (clears everything when over the bound).
    pub(crate) fn reserve(&mut self, more: usize) {
        if self.len + more > self.max {
            self.clear();
        }
    }

    /// `Some(entry)` when known, `None` when it must be read from Redis.
    pub(crate) fn get(&self, entity: &str, doc_id: &str) -> Option<&Option<Remembered>> {
        self.by_entity.get(entity)?.get(doc_id)
    }

    pub(crate) fn insert(&mut self, entity: &str, doc_id: &str, entry: Option<Remembered>) {
        let map = self.by_entity.entry(entity.to_owned()).or_default();
        if map.insert(doc_id.to_owned(), entry).is_none() {
            self.len += 1;
        }
    }

    /// The rows of `doc_ids` whose entries are not cached (each once).
    pub(crate) fn missing<'a>(
        &self,
        entity: &str,
        doc_ids: impl IntoIterator<Item = &'a str>,
    ) -> Vec<String> {
        let mut seen = HashSet::new();
        doc_ids
            .into_iter()
            .filter(|d| self.get(entity, d).is_none() && seen.insert(*d))
            .map(str::to_owned)
            .collect()
    }
}

/// What a batch does to one key.
#[derive(Debug, Clone, PartialEq, Eq)]
enum KeyOp {
    Set(String),
    Del,
}

#[derive(Debug)]
struct DocState {
    before: Option<Remembered>,
    now: Option<Remembered>,
}

/// The net effect of one batch.
#[derive(Debug, Default)]
pub(crate) struct Plan {
    keys: HashMap<String, KeyOp>,
    key_order: Vec<String>,
    docs: HashMap<(String, String), DocState>,
    doc_order: Vec<(String, String)>,
}

/// The commands of a [`Plan`] and what they count.
#[derive(Debug, Default)]
pub(crate) struct PlanCommands {
    /// `SET`/`DEL` of entity keys.
    pub data: Vec<Command>,
    /// `HSET`/`HDEL` of remembered entries.
    pub state: Vec<Command>,
    /// Keys set.
    pub written: u64,
    /// Keys deleted.
    pub deleted: u64,
    /// The entries to put into the cache once the commands landed.
    pub remembered: Vec<(String, String, Option<Remembered>)>,
}

impl Plan {
    fn key(&mut self, key: &str, op: KeyOp) {
        if self.keys.insert(key.to_owned(), op).is_none() {
            self.key_order.push(key.to_owned());
        }
    }

    fn doc(&mut self, entity: &str, doc_id: &str, before: Option<Remembered>) -> &mut DocState {
        let id = (entity.to_owned(), doc_id.to_owned());
        if !self.docs.contains_key(&id) {
            self.doc_order.push(id.clone());
        }
        self.docs.entry(id).or_insert_with(|| DocState {
            now: before.clone(),
            before,
        })
    }

    /// Row `doc_id` of `entity` now produces `writes` under `version`;
    /// `before` is its remembered entry before the batch. Keys it had under
    /// the same version and no longer produces are deleted; keys of another
    /// version are left for the stale-version cleanup.
    pub(crate) fn upsert(
        &mut self,
        entity: &str,
        doc_id: &str,
        version: &str,
        writes: Vec<(String, String)>,
        before: Option<Remembered>,
    ) {
        let mut keys: Vec<String> = Vec::with_capacity(writes.len());
        let mut seen: HashSet<&str> = HashSet::with_capacity(writes.len());
        for (key, _) in &writes {
            if seen.insert(key.as_str()) {
                keys.push(key.clone());
            }
        }
        let stale: Vec<String> = match &self.doc(entity, doc_id, before).now {
            Some(old) if old.v == version => old
                .k
                .iter()
                .filter(|k| !seen.contains(k.as_str()))
                .cloned()
                .collect(),
            _ => Vec::new(),
        };
        for key in stale {
            self.key(&key, KeyOp::Del);
        }
        for (key, value) in writes {
            self.key(&key, KeyOp::Set(value));
        }
        let entry = Remembered {
            v: version.to_owned(),
            k: keys,
        };
        self.doc(entity, doc_id, None).now = Some(entry);
    }

    /// Row `doc_id` of `entity` is deleted: every key it is remembered to
    /// have goes, whatever its version.
    pub(crate) fn delete(&mut self, entity: &str, doc_id: &str, before: Option<Remembered>) {
        let doc = self.doc(entity, doc_id, before);
        let old = doc.now.take();
        for key in old.map(|o| o.k).unwrap_or_default() {
            self.key(&key, KeyOp::Del);
        }
    }

    /// The commands: `SET` (with `PX ttl`) / `DEL` per touched key, and
    /// `HSET` / `HDEL` per row whose entry changed, into `hash_key(entity)`.
    pub(crate) fn commands(
        mut self,
        ttl: Option<Duration>,
        hash_key: impl Fn(&str) -> String,
    ) -> PlanCommands {
        let mut out = PlanCommands::default();
        for key in self.key_order {
            match self.keys.remove(&key) {
                Some(KeyOp::Set(value)) => {
                    out.written += 1;
                    out.data.push(Command::Set { key, value, ttl });
                }
                Some(KeyOp::Del) => {
                    out.deleted += 1;
                    out.data.push(Command::Del { key });
                }
                None => {}
            }
        }
        for id in self.doc_order {
            let Some(doc) = self.docs.remove(&id) else {
                continue;
            };
            let (entity, doc_id) = id;
            if doc.now != doc.before {
                match &doc.now {
                    Some(entry) => out.state.push(Command::HSet {
                        key: hash_key(&entity),
                        field: doc_id.clone(),
                        value: entry.to_json(),
                    }),
                    None => out.state.push(Command::HDel {
                        key: hash_key(&entity),
                        field: doc_id.clone(),
                    }),
                }
            }
            out.remembered.push((entity, doc_id, doc.now));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(key: &str, value: &str) -> (String, String) {
        (key.to_owned(), value.to_owned())
    }

    fn r(v: &str, keys: &[&str]) -> Option<Remembered> {
        Some(Remembered {
            v: v.into(),
            k: keys.iter().map(|k| (*k).to_owned()).collect(),
        })
    }

    fn hash(entity: &str) -> String {
        format!("s:keys:{entity}")
    }

    #[test]
    fn a_changed_lookup_deletes_exactly_the_old_key() {
        let mut plan = Plan::default();
        plan.upsert(
            "companies",
            "c1",
            "v1",
            vec![w("c:v1:c1", "{}"), w("c:v1:domain:b.com", "\"c1\"")],
            r("v1", &["c:v1:c1", "c:v1:domain:a.com"]),
        );
        let out = plan.commands(None, hash);
        assert_eq!(
            out.data,
            vec![
                Command::Del {
                    key: "c:v1:domain:a.com".into()
                },
                Command::Set {
                    key: "c:v1:c1".into(),
                    value: "{}".into(),
                    ttl: None
                },
                Command::Set {
                    key: "c:v1:domain:b.com".into(),
                    value: "\"c1\"".into(),
                    ttl: None
                },
            ]
        );
        assert_eq!((out.written, out.deleted), (2, 1));
        assert_eq!(out.state.len(), 1);
    }

    #[test]
    fn unchanged_entries_are_not_rewritten_and_old_versions_are_left() {
        let mut plan = Plan::default();
        plan.upsert("e", "d", "v1", vec![w("k1", "x")], r("v1", &["k1"]));
        plan.upsert("e", "o", "v2", vec![w("v2:o", "x")], r("v1", &["v1:o"]));
        let out = plan.commands(Some(Duration::from_secs(5)), hash);
        assert_eq!(out.deleted, 0, "v1:o is another version's key");
        assert_eq!(out.state.len(), 1, "only o's entry changed");
        assert!(matches!(&out.state[0], Command::HSet { field, .. } if field == "o"));
    }

    #[test]
    fn last_write_of_a_key_wins_within_a_batch() {
        let mut plan = Plan::default();
        plan.upsert("e", "d", "v1", vec![w("a", "1"), w("b", "1")], None);
        plan.upsert("e", "d", "v1", vec![w("a", "2")], None);
        plan.delete("e", "x", r("v2", &["x1"]));
        let out = plan.commands(None, hash);
        assert_eq!(
            out.data,
            vec![
                Command::Set {
                    key: "a".into(),
                    value: "2".into(),
                    ttl: None
                },
                Command::Del { key: "b".into() },
                Command::Del { key: "x1".into() },
            ]
        );
        assert_eq!(
            out.remembered,
            vec![
                ("e".into(), "d".into(), r("v1", &["a"])),
                ("e".into(), "x".into(), None)
            ]
        );
        assert!(matches!(&out.state[1], Command::HDel { field, .. } if field == "x"));
    }

    #[test]
    fn cache_bound_and_misses() {
        let mut cache = RememberedCache::new(2);
        cache.insert("e", "a", None);
        cache.insert("e", "b", r("v1", &["k"]));
        assert_eq!(cache.missing("e", ["a", "c", "c"]), vec!["c".to_owned()]);
        cache.reserve(1);
        assert!(cache.get("e", "a").is_none(), "cleared past the bound");
    }
}
