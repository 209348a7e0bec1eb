//! The server's state: auth, data, the replay log, connections and stats.
//! One `std::sync::Mutex` guards it all; nothing awaits while holding it,
//! and everything a connection receives is queued under it, so every
//! connection sees messages in push order.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use axum::extract::ws::Utf8Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::task::AbortHandle;

use crate::convert;
use crate::envelope::{self, Envelope, FLAG, FLAGS, Family, Outgoing};
use crate::outbox::Outbox;
use crate::stream_id::{StreamId, unix_ms};

/// At most this many entries are kept in each stats list (oldest dropped).
const STATS_CAP: usize = 100_000;

/// The close code for a rejected API key.
pub(crate) const CLOSE_INVALID_KEY: u16 = 4001;
/// The close reason for a rejected API key.
pub(crate) const CLOSE_INVALID_KEY_REASON: &str = "invalid api key";

/// Settings fixed at start.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub queue_capacity: usize,
    pub flood_log_cap: usize,
    pub max_message_bytes: usize,
}

/// Everything the handlers share.
pub(crate) struct Shared {
    state: Mutex<State>,
    pub settings: Settings,
}

impl Shared {
    pub fn new(state: State, settings: Settings) -> Shared {
        Shared {
            state: Mutex::new(state),
            settings,
        }
    }

    /// The state (a poisoned lock is taken over: every update leaves the
    /// state consistent enough for a dev server).
    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One entry of the replay log.
struct LogEntry {
    id: StreamId,
    family: Option<Family>,
    text: Utf8Bytes,
}

/// One open, accepted WebSocket connection.
pub(crate) struct Conn {
    pub api_key: String,
    /// Bits of [`Family::bit`] this connection started.
    pub families: u8,
    pub outbox: Arc<Outbox>,
    pub abort: AbortHandle,
}

/// A client message as recorded in [`Stats::client_messages`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClientMessageRecord {
    /// The connection number (1, 2, …).
    pub connection: u64,
    /// When it arrived.
    pub unix_ms: u64,
    /// The message as JSON (a JSON string when it was not JSON).
    pub message: Value,
}

/// The upgrade request of one connection, as recorded in
/// [`Stats::headers`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConnectionInfo {
    /// The connection number (1, 2, …).
    pub connection: u64,
    /// `X-Schematic-Api-Key`.
    pub api_key: Option<String>,
    /// `X-Schematic-Datastream-Mode`.
    pub mode: Option<String>,
    /// `X-Schematic-Client`.
    pub client: Option<String>,
    /// `X-Schematic-Client-Version`.
    pub client_version: Option<String>,
    /// Whether the key was accepted (else the connection was closed with
    /// 4001 right after the upgrade).
    pub accepted: bool,
    /// Whether the connection is still open.
    pub open: bool,
    /// When it connected.
    pub connected_unix_ms: u64,
}

/// What `GET /_dev/stats` answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// Open accepted WebSocket connections.
    pub connections: usize,
    /// WebSocket upgrades so far (accepted or not).
    pub connects_total: u64,
    /// Upgrades closed with 4001.
    pub rejected_connects: u64,
    /// Connections closed because their live queue was full.
    pub slow_closed: u64,
    /// Every client message (the last 100 000), with its connection number.
    pub client_messages: Vec<ClientMessageRecord>,
    /// The headers of every connection (the last 100 000).
    pub headers: Vec<ConnectionInfo>,
    /// REST requests by path (`/companies`, `/companies/count`, …).
    pub rest_requests: BTreeMap<String, u64>,
    /// When each REST request arrived (the last 100 000).
    pub rest_request_unix_ms: Vec<u64>,
    /// Messages pushed (control API and floods).
    pub pushed: u64,
    /// The last stream id assigned (the start id before any push).
    pub head: String,
    /// Entries in the replay log.
    pub log_len: usize,
    /// Replay from an id older than this answers `reload`.
    pub log_floor: String,
}

/// What `GET /_dev/flood` answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct FloodStatus {
    /// Whether a flood is running.
    pub running: bool,
    /// Messages the current (or last) flood pushed.
    pub sent: u64,
    /// Messages it was asked to push.
    pub count: u64,
}

/// The running flood's handles.
#[derive(Default)]
pub(crate) struct Flood {
    pub status: FloodStatus,
    pub stop: Arc<AtomicBool>,
    pub task: Option<AbortHandle>,
}

/// The mutable state behind [`Shared::lock`].
pub(crate) struct State {
    /// Accepted keys; empty = any non-empty key.
    pub allowed: HashSet<String>,
    pub rejected: HashSet<String>,
    pub flags: Vec<Value>,
    pub rest_companies: Vec<Value>,
    pub rest_users: Vec<Value>,
    /// Latest rulesengine companies / users pushed, by id.
    pub companies: HashMap<String, Value>,
    pub users: HashMap<String, Value>,
    head: StreamId,
    floor: StreamId,
    log: VecDeque<LogEntry>,
    pub retention: Option<usize>,
    pub conns: BTreeMap<u64, Conn>,
    next_conn: u64,
    pub fail_pages: u64,
    pub fail_pages_status: u16,
    pub flood: Flood,
    // stats
    rejected_connects: u64,
    pub slow_closed: u64,
    client_messages: VecDeque<ClientMessageRecord>,
    headers: VecDeque<ConnectionInfo>,
    rest_requests: BTreeMap<String, u64>,
    rest_request_unix_ms: VecDeque<u64>,
    pushed: u64,
}

fn capped_push<T>(list: &mut VecDeque<T>, item: T) {
    if list.len() >= STATS_CAP {
        list.pop_front();
    }
    list.push_back(item);
}

impl State {
    /// A fresh state; stream ids start after the current time.
    pub fn new(
        allowed: HashSet<String>,
        flags: Vec<Value>,
        rest_companies: Vec<Value>,
        rest_users: Vec<Value>,
        retention: Option<usize>,
    ) -> State {
        let start = StreamId {
            ms: unix_ms(),
            seq: 0,
        };
        State {
            allowed,
            rejected: HashSet::new(),
            flags,
            rest_companies,
            rest_users,
            companies: HashMap::new(),
            users: HashMap::new(),
            head: start,
            floor: start,
            log: VecDeque::new(),
            retention,
            conns: BTreeMap::new(),
            next_conn: 0,
            fail_pages: 0,
            fail_pages_status: 500,
            flood: Flood::default(),
            rejected_connects: 0,
            slow_closed: 0,
            client_messages: VecDeque::new(),
            headers: VecDeque::new(),
            rest_requests: BTreeMap::new(),
            rest_request_unix_ms: VecDeque::new(),
            pushed: 0,
        }
    }

    /// Whether `key` may connect and read REST pages.
    pub fn key_accepted(&self, key: &str) -> bool {
        !key.is_empty()
            && !self.rejected.contains(key)
            && (self.allowed.is_empty() || self.allowed.contains(key))
    }

    /// Record a REST request to `path`.
    pub fn record_rest(&mut self, path: &str) {
        *self.rest_requests.entry(path.to_owned()).or_default() += 1;
        capped_push(&mut self.rest_request_unix_ms, unix_ms());
    }

    /// Record a new connection; its number and whether its key is accepted.
    pub fn record_connect(&mut self, mut info: ConnectionInfo) -> (u64, bool) {
        self.next_conn += 1;
        let accepted = self.key_accepted(info.api_key.as_deref().unwrap_or_default());
        if !accepted {
            self.rejected_connects += 1;
        }
        info.connection = self.next_conn;
        info.accepted = accepted;
        info.open = accepted;
        capped_push(&mut self.headers, info);
        (self.next_conn, accepted)
    }

    /// Forget connection `id` (it ended).
    pub fn record_close(&mut self, id: u64) {
        self.conns.remove(&id);
        if let Some(info) = self.headers.iter_mut().rev().find(|i| i.connection == id) {
            info.open = false;
        }
    }

    /// The stats.
    pub fn stats(&self) -> Stats {
        Stats {
            connections: self.conns.len(),
            connects_total: self.next_conn,
            rejected_connects: self.rejected_connects,
            slow_closed: self.slow_closed,
            client_messages: self.client_messages.iter().cloned().collect(),
            headers: self.headers.iter().cloned().collect(),
            rest_requests: self.rest_requests.clone(),
            rest_request_unix_ms: self.rest_request_unix_ms.iter().copied().collect(),
            pushed: self.pushed,
            head: self.head.to_string(),
            log_len: self.log.len(),
            log_floor: self.floor.to_string(),
        }
    }

    /// The last assigned stream id.
    pub fn head(&self) -> StreamId {
        self.head
    }

    /// Push one message: assign its stream id, apply it to the data, log it
    /// and queue it to every connection that started its family (every
    /// connection when it has none). Connections whose live queue is full
    /// are removed; their tasks land in `to_abort`. `log_cap` bounds the
    /// log on top of the retention.
    pub fn push(
        &mut self,
        env: &Envelope,
        log_cap: Option<usize>,
        queue_capacity: usize,
        to_abort: &mut Vec<AbortHandle>,
    ) -> StreamId {
        let id = self.head.next_after(unix_ms());
        self.head = id;
        self.pushed += 1;
        let text: Utf8Bytes = Outgoing {
            entity_type: &env.entity_type,
            message_type: &env.message_type,
            entity_id: env.entity_id.as_deref(),
            data: &env.data,
            stream_id: Some(id.to_string()),
        }
        .to_text()
        .into();
        self.apply(env);
        let family = Family::of(&env.entity_type);
        self.log.push_back(LogEntry {
            id,
            family,
            text: text.clone(),
        });
        let cap = match (self.retention, log_cap) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if let Some(cap) = cap {
            while self.log.len() > cap {
                if let Some(entry) = self.log.pop_front() {
                    self.floor = entry.id;
                }
            }
        }
        let mut slow = Vec::new();
        for (conn_id, conn) in &self.conns {
            let wanted = family.is_none_or(|f| conn.families & f.bit() != 0);
            if wanted && !conn.outbox.live(text.clone(), queue_capacity) {
                slow.push(*conn_id);
            }
        }
        for conn_id in slow {
            if let Some(conn) = self.conns.remove(&conn_id) {
                tracing::warn!(
                    connection = conn_id,
                    capacity = queue_capacity,
                    "closing a connection that cannot keep up"
                );
                self.slow_closed += 1;
                to_abort.push(conn.abort);
            }
        }
        id
    }

    /// Apply a pushed message to the data (see the crate docs).
    fn apply(&mut self, env: &Envelope) {
        let data = &env.data;
        let id_of = |env: &Envelope| {
            env.entity_id
                .clone()
                .or_else(|| data.get("id").and_then(Value::as_str).map(str::to_owned))
        };
        match (env.entity_type.as_str(), env.message_type.as_str()) {
            (FLAGS, "full") => {
                if let Value::Array(flags) = data {
                    self.flags = flags.clone();
                }
            }
            (FLAG, "full" | "partial") => {
                if let Some(key) = data.get("key").and_then(Value::as_str) {
                    match self
                        .flags
                        .iter_mut()
                        .find(|f| f.get("key").and_then(Value::as_str) == Some(key))
                    {
                        Some(flag) => *flag = data.clone(),
                        None => self.flags.push(data.clone()),
                    }
                }
            }
            (FLAG, "delete") => {
                let key = data.get("key").and_then(Value::as_str);
                let id = data.get("id").and_then(Value::as_str);
                self.flags.retain(|f| match key {
                    Some(key) => f.get("key").and_then(Value::as_str) != Some(key),
                    None => id.is_none() || f.get("id").and_then(Value::as_str) != id,
                });
            }
            (envelope::COMPANY | envelope::USER, message_type) => {
                let Some(id) = id_of(env) else { return };
                let map = if env.entity_type == envelope::COMPANY {
                    &mut self.companies
                } else {
                    &mut self.users
                };
                match message_type {
                    "full" => {
                        map.insert(id, data.clone());
                    }
                    "partial" => {
                        if let (Some(Value::Object(base)), Value::Object(changes)) =
                            (map.get_mut(&id), data)
                        {
                            for (field, value) in changes {
                                base.insert(field.clone(), value.clone());
                            }
                        }
                    }
                    "delete" => {
                        map.remove(&id);
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }

    /// Handle one client message of connection `conn_id`.
    pub fn client_message(&mut self, conn_id: u64, text: &str) {
        let parsed = serde_json::from_str::<Value>(text);
        capped_push(
            &mut self.client_messages,
            ClientMessageRecord {
                connection: conn_id,
                unix_ms: unix_ms(),
                message: parsed
                    .as_ref()
                    .map_or_else(|_| Value::String(text.to_owned()), Clone::clone),
            },
        );
        let Some(outbox) = self.conns.get(&conn_id).map(|c| c.outbox.clone()) else {
            return;
        };
        let request = match parsed
            .map_err(|e| Rejected::new("", format!("not JSON: {e}"), Value::Null))
            .and_then(|v| Request::parse(&v))
        {
            Ok(request) => request,
            Err(rejected) => {
                tracing::debug!(connection = conn_id, error = %rejected.error, "malformed client message");
                let keys = if rejected.keys.is_null() {
                    Value::Object(Map::new())
                } else {
                    rejected.keys
                };
                outbox.reply(
                    envelope::error_text(&rejected.entity_type, &rejected.error, &keys).into(),
                );
                return;
            }
        };
        tracing::debug!(connection = conn_id, action = ?request.action, entity_type = %request.entity_type, "client request");
        let family = request.family;
        if let Some(conn) = self.conns.get_mut(&conn_id) {
            match request.action {
                Action::Start => conn.families |= family.bit(),
                Action::Stop => {
                    conn.families &= !family.bit();
                    return;
                }
            }
        }
        let mut replies: Vec<Utf8Bytes> = Vec::new();
        let mut normal = true;
        if let Some(from) = request.replay_from {
            if from < self.floor || from > self.head {
                replies.push(envelope::reload_text().into());
            } else {
                let start = self.log.partition_point(|e| e.id <= from);
                let replay = self
                    .log
                    .range(start..)
                    .filter(|e| e.family == Some(family))
                    .map(|e| e.text.clone());
                if family == Family::Flags {
                    // The replay brings the client to the head: no bulk.
                    normal = false;
                    replies.extend(replay);
                } else {
                    let replay: Vec<_> = replay.collect();
                    replies.push(self.answer(&request).into());
                    replies.extend(replay);
                    normal = false;
                }
            }
        }
        if normal {
            replies.push(self.answer(&request).into());
        }
        for reply in replies {
            outbox.reply(reply);
        }
    }

    /// The answer to a start: the flags bulk, one entity, or a
    /// confirmation.
    fn answer(&self, request: &Request) -> String {
        match (request.family, &request.keys) {
            (Family::Flags, _) => Outgoing {
                entity_type: FLAGS,
                message_type: "full",
                entity_id: None,
                data: &self.flags,
                stream_id: Some(self.head.to_string()),
            }
            .to_text(),
            (family, Some(keys)) if !keys.is_empty() => match self.lookup(family, keys) {
                Some(entity) => Outgoing {
                    entity_type: family.singular(),
                    message_type: "full",
                    entity_id: entity.get("id").and_then(Value::as_str),
                    data: &entity,
                    stream_id: None,
                }
                .to_text(),
                None => envelope::error_text(
                    family.singular(),
                    "not found",
                    &Value::Object(keys.clone()),
                ),
            },
            (family, _) => Outgoing {
                entity_type: family.plural(),
                message_type: "full",
                entity_id: None,
                data: serde_json::json!({"subscribed": true}),
                stream_id: None,
            }
            .to_text(),
        }
    }

    /// A company or user with any of `keys`: the latest pushed one, else a
    /// REST fixture converted to the rulesengine shape.
    fn lookup(&self, family: Family, keys: &Map<String, Value>) -> Option<Value> {
        let (pushed, rest, convert): (_, _, fn(&Value) -> Value) = match family {
            Family::Companies => (&self.companies, &self.rest_companies, convert::company),
            Family::Users => (&self.users, &self.rest_users, convert::user),
            Family::Flags => return None,
        };
        let has_keys = |entity: &&Value| match entity.get("keys") {
            Some(Value::Object(map)) => convert::matches(map, keys),
            _ => false,
        };
        pushed.values().find(has_keys).cloned().or_else(|| {
            rest.iter()
                .find(|doc| convert::matches(&convert::keys(doc.get("keys")), keys))
                .map(convert)
        })
    }
}

/// `start` or `stop`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Start,
    Stop,
}

/// A well-formed client request.
struct Request {
    action: Action,
    entity_type: String,
    family: Family,
    keys: Option<Map<String, Value>>,
    replay_from: Option<StreamId>,
}

/// Why a client message was refused (sent back as an `error` envelope).
struct Rejected {
    entity_type: String,
    error: String,
    keys: Value,
}

impl Rejected {
    fn new(entity_type: &str, error: impl Into<String>, keys: Value) -> Rejected {
        Rejected {
            entity_type: entity_type.to_owned(),
            error: error.into(),
            keys,
        }
    }
}

impl Request {
    /// `{"data": {"action", "entity_type", "keys"?, "replay_from"?}}`.
    fn parse(message: &Value) -> Result<Request, Rejected> {
        let Some(Value::Object(data)) = message.get("data") else {
            return Err(Rejected::new("", "expected {\"data\": {...}}", Value::Null));
        };
        let entity_type = match data.get("entity_type") {
            Some(Value::String(s)) => s.clone(),
            _ => String::new(),
        };
        let keys_value = data.get("keys").cloned().unwrap_or(Value::Null);
        let fail = |error: String| Rejected::new(&entity_type, error, keys_value.clone());
        let action = match data.get("action") {
            None | Some(Value::Null) => Action::Start,
            Some(Value::String(a)) if a.is_empty() || a == "start" => Action::Start,
            Some(Value::String(a)) if a == "stop" => Action::Stop,
            Some(other) => return Err(fail(format!("unknown action {other}"))),
        };
        let Some(family) = Family::of(&entity_type) else {
            return Err(fail(format!(
                "unknown entity_type {:?}",
                data.get("entity_type").unwrap_or(&Value::Null)
            )));
        };
        let keys = match data.get("keys") {
            None | Some(Value::Null) => None,
            Some(Value::Object(keys)) => Some(keys.clone()),
            Some(other) => return Err(fail(format!("keys must be an object, not {other}"))),
        };
        let replay_from = match data.get("replay_from") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if s.is_empty() => None,
            Some(Value::String(s)) => Some(s.parse().map_err(|e| fail(format!("{e}")))?),
            Some(other) => return Err(fail(format!("replay_from must be a string, not {other}"))),
        };
        Ok(Request {
            action,
            entity_type,
            family,
            keys,
            replay_from,
        })
    }
}

/// The control operations (shared by `/_dev/` and [`crate::DevServer`]).
impl Shared {
    /// Push messages in order; their stream ids.
    pub fn push(&self, envelopes: &[Envelope]) -> Vec<StreamId> {
        let mut to_abort = Vec::new();
        let ids = {
            let mut state = self.lock();
            envelopes
                .iter()
                .map(|env| state.push(env, None, self.settings.queue_capacity, &mut to_abort))
                .collect()
        };
        to_abort.iter().for_each(AbortHandle::abort);
        ids
    }

    /// Send a `reload` envelope to every connection; how many.
    pub fn reload(&self) -> usize {
        let state = self.lock();
        let text: Utf8Bytes = envelope::reload_text().into();
        for conn in state.conns.values() {
            conn.outbox.reply(text.clone());
        }
        state.conns.len()
    }

    /// Drop every connection without a close frame; how many.
    pub fn drop_connections(&self) -> usize {
        let conns = std::mem::take(&mut self.lock().conns);
        tracing::info!(connections = conns.len(), "dropping every connection");
        for conn in conns.values() {
            conn.abort.abort();
        }
        conns.len()
    }

    /// Reject `key` from now on and close its connections with 4001; how
    /// many were closed.
    pub fn reject_key(&self, key: &str) -> usize {
        let mut state = self.lock();
        state.rejected.insert(key.to_owned());
        let mut closed = 0;
        for conn in state.conns.values_mut().filter(|c| c.api_key == key) {
            conn.families = 0;
            conn.outbox
                .close(CLOSE_INVALID_KEY, CLOSE_INVALID_KEY_REASON);
            closed += 1;
        }
        tracing::info!(closed, "api key rejected");
        closed
    }

    /// Accept `key` again (and add it to the allowed keys when only some
    /// keys are allowed).
    pub fn allow_key(&self, key: &str) {
        let mut state = self.lock();
        state.rejected.remove(key);
        if !state.allowed.is_empty() {
            state.allowed.insert(key.to_owned());
        }
    }

    /// Fail the next `count` REST page requests with `status`.
    pub fn fail_pages(&self, count: u64, status: u16) {
        let mut state = self.lock();
        state.fail_pages = count;
        state.fail_pages_status = status;
    }

    /// Replace the REST lists given; the list lengths afterwards.
    pub fn set_rest(
        &self,
        companies: Option<Vec<Value>>,
        users: Option<Vec<Value>>,
    ) -> (usize, usize) {
        let mut state = self.lock();
        if let Some(companies) = companies {
            state.rest_companies = companies;
        }
        if let Some(users) = users {
            state.rest_users = users;
        }
        (state.rest_companies.len(), state.rest_users.len())
    }

    /// Stop the flood and drop every connection (shutdown).
    pub fn stop_all(&self) {
        if let Some(task) = self.lock().flood.task.take() {
            task.abort();
        }
        self.drop_connections();
    }
}
