//! The in-process target: the writer's keys in a bounded map, for running a
//! profile such as Schematic's with no Redis at all.
//!
//! Entity keys (the data, as opposed to the writer's state keys) are
//! bounded by `max_entries`: when a write would exceed it, the least
//! recently used key goes (reads and writes both count as use). Their
//! expiry (`PX`) is honoured on read. State keys and hashes (offset,
//! versions, remembered keys) are kept apart and never evicted.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard};

use tokio::time::Instant;

use super::target::{Command, Reply};

#[derive(Debug)]
struct Slot {
    value: String,
    expires: Option<Instant>,
    tick: u64,
}

#[derive(Debug, Default)]
struct Inner {
    data: HashMap<String, Slot>,
    /// Use order of `data`: tick → key.
    lru: BTreeMap<u64, String>,
    tick: u64,
    state: HashMap<String, String>,
    hashes: HashMap<String, HashMap<String, String>>,
    evicted: u64,
}

impl Inner {
    fn next_tick(&mut self) -> u64 {
        self.tick += 1;
        self.tick
    }

    fn remove_data(&mut self, key: &str) -> bool {
        match self.data.remove(key) {
            Some(slot) => {
                self.lru.remove(&slot.tick);
                true
            }
            None => false,
        }
    }

    /// The live slot of `key`, touched; an expired one is dropped.
    fn live(&mut self, key: &str, now: Instant) -> Option<String> {
        let expired = self
            .data
            .get(key)
            .is_some_and(|s| s.expires.is_some_and(|at| at <= now));
        if expired {
            self.remove_data(key);
            return None;
        }
        let tick = self.next_tick();
        let slot = self.data.get_mut(key)?;
        let old = std::mem::replace(&mut slot.tick, tick);
        let value = slot.value.clone();
        self.lru.remove(&old);
        self.lru.insert(tick, key.to_owned());
        Some(value)
    }

    fn set_data(&mut self, key: &str, value: &str, expires: Option<Instant>, max: usize) {
        self.remove_data(key);
        while self.data.len() >= max.max(1) {
            let Some((_, oldest)) = self.lru.pop_first() else {
                break;
            };
            self.data.remove(&oldest);
            self.evicted += 1;
        }
        let tick = self.next_tick();
        self.lru.insert(tick, key.to_owned());
        self.data.insert(
            key.to_owned(),
            Slot {
                value: value.to_owned(),
                expires,
                tick,
            },
        );
    }

    fn get_any(&mut self, key: &str, now: Instant) -> Option<String> {
        self.live(key, now).or_else(|| self.state.get(key).cloned())
    }
}

/// A bounded in-process key-value map with the writer's command set.
#[derive(Debug)]
pub struct MemoryTarget {
    max_entries: usize,
    inner: Mutex<Inner>,
}

impl MemoryTarget {
    /// An empty map holding at most `max_entries` entity keys (0 counts as 1).
    pub fn new(max_entries: usize) -> MemoryTarget {
        MemoryTarget {
            max_entries: max_entries.max(1),
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The value of `key` (an entity key or a state key), unless it is
    /// missing or expired.
    pub fn get(&self, key: &str) -> Option<String> {
        self.lock().get_any(key, Instant::now())
    }

    /// One field of a hash (e.g. a remembered-keys entry).
    pub fn hget(&self, key: &str, field: &str) -> Option<String> {
        self.lock().hashes.get(key)?.get(field).cloned()
    }

    /// Entity keys held (expired ones not yet dropped included).
    pub fn len(&self) -> usize {
        self.lock().data.len()
    }

    /// Whether no entity key is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bound on entity keys.
    pub fn max_entries(&self) -> usize {
        self.max_entries
    }

    /// Entity keys evicted to stay within the bound.
    pub fn evicted(&self) -> u64 {
        self.lock().evicted
    }

    /// Every live key (entity and state) starting with `prefix`, sorted.
    pub fn keys_with_prefix(&self, prefix: &str) -> Vec<String> {
        let now = Instant::now();
        let inner = self.lock();
        let mut keys: Vec<String> = inner
            .data
            .iter()
            .filter(|(k, s)| k.starts_with(prefix) && s.expires.is_none_or(|at| at > now))
            .map(|(k, _)| k.clone())
            .chain(
                inner
                    .state
                    .keys()
                    .filter(|k| k.starts_with(prefix))
                    .cloned(),
            )
            .collect();
        keys.sort();
        keys
    }

    /// Remove everything (what `FLUSHALL` is to Redis).
    pub fn clear(&self) {
        *self.lock() = Inner::default();
    }

    /// Run `commands` in order, one reply each.
    pub(crate) fn run(&self, commands: &[Command]) -> Vec<Reply> {
        let now = Instant::now();
        let mut inner = self.lock();
        commands
            .iter()
            .map(|command| match command {
                Command::Get { key } => Reply::Value(inner.get_any(key, now)),
                Command::Set { key, value, ttl } => {
                    inner.set_data(key, value, ttl.map(|t| now + t), self.max_entries);
                    Reply::Done
                }
                Command::SetState { key, value } => {
                    inner.state.insert(key.clone(), value.clone());
                    Reply::Done
                }
                Command::Del { key } => {
                    let mut removed = inner.remove_data(key);
                    removed |= inner.state.remove(key).is_some();
                    removed |= inner.hashes.remove(key).is_some();
                    Reply::Flag(removed)
                }
                Command::HMGet { key, fields } => {
                    let hash = inner.hashes.get(key);
                    Reply::Values(
                        fields
                            .iter()
                            .map(|f| hash.and_then(|h| h.get(f)).cloned())
                            .collect(),
                    )
                }
                Command::HKeys { key } => Reply::Values(
                    inner
                        .hashes
                        .get(key)
                        .map(|h| h.keys().cloned().map(Some).collect())
                        .unwrap_or_default(),
                ),
                Command::HSet { key, field, value } => {
                    inner
                        .hashes
                        .entry(key.clone())
                        .or_default()
                        .insert(field.clone(), value.clone());
                    Reply::Done
                }
                Command::HDel { key, field } => {
                    let removed = inner
                        .hashes
                        .get_mut(key)
                        .is_some_and(|h| h.remove(field).is_some());
                    if inner.hashes.get(key).is_some_and(HashMap::is_empty) {
                        inner.hashes.remove(key);
                    }
                    Reply::Flag(removed)
                }
                Command::LockAcquire { key, token, .. } => {
                    if inner.state.contains_key(key) {
                        Reply::Flag(false)
                    } else {
                        inner.state.insert(key.clone(), token.clone());
                        Reply::Flag(true)
                    }
                }
                Command::LockRenew { key, token, .. } => {
                    Reply::Flag(inner.state.get(key) == Some(token))
                }
                Command::LockRelease { key, token } => {
                    if inner.state.get(key) == Some(token) {
                        inner.state.remove(key);
                        Reply::Flag(true)
                    } else {
                        Reply::Flag(false)
                    }
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn set(key: &str, value: &str, ttl: Option<Duration>) -> Command {
        Command::Set {
            key: key.into(),
            value: value.into(),
            ttl,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn evicts_least_recently_used_and_honours_ttl() {
        let memory = MemoryTarget::new(2);
        memory.run(&[set("a", "1", None), set("b", "2", None)]);
        assert_eq!(memory.get("a").as_deref(), Some("1")); // a is now newer than b
        memory.run(&[set("c", "3", Some(Duration::from_secs(1)))]);
        assert_eq!(memory.get("b"), None, "b was least recently used");
        assert_eq!(memory.evicted(), 1);
        assert_eq!(memory.get("c").as_deref(), Some("3"));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(memory.get("c"), None, "expired");
        assert_eq!(memory.keys_with_prefix(""), vec!["a".to_owned()]);
    }

    #[test]
    fn state_and_hashes_are_never_evicted() {
        let memory = MemoryTarget::new(1);
        memory.run(&[
            Command::SetState {
                key: "s:offset".into(),
                value: "7".into(),
            },
            Command::HSet {
                key: "s:keys:e".into(),
                field: "d".into(),
                value: "{}".into(),
            },
            set("a", "1", None),
            set("b", "2", None),
        ]);
        assert_eq!(memory.get("s:offset").as_deref(), Some("7"));
        assert_eq!(memory.hget("s:keys:e", "d").as_deref(), Some("{}"));
        assert_eq!(memory.len(), 1);
        let replies = memory.run(&[Command::HMGet {
            key: "s:keys:e".into(),
            fields: vec!["d".into(), "x".into()],
        }]);
        assert_eq!(replies, vec![Reply::Values(vec![Some("{}".into()), None])]);
    }
}
