//! A Schematic datastream server for development, tests and benchmarks.
//!
//! It speaks the contract of `shared/specs/schematic-datastream.md` from the
//! server side: the REST pages of the initial load (`GET /companies/count`,
//! `GET /companies?limit=&offset=`, same for users) and the WebSocket at
//! `GET /datastream` (flags bulk on start, subscription confirmations,
//! live messages, `replay_from`, `reload`, close code 4001 for a bad key).
//! A JSON control API under `/_dev/` pushes messages, floods, drops
//! connections, rejects keys and fails pages on demand.
//!
//! Start it in-process:
//!
//! ```no_run
//! # async fn demo() -> Result<(), emcachers_datastream_server::Error> {
//! use emcachers_datastream_server::{Config, DevServer, Envelope};
//! use serde_json::json;
//!
//! let server = DevServer::start(Config::default()).await?;
//! println!("{}", server.ws_url()); // ws://127.0.0.1:PORT/datastream
//! server.push(&[Envelope::new("rulesengine.Flag", "full", None,
//!     json!({"id": "flag_1", "key": "beta", "default_value": true, "rules": []}))]);
//! server.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! # What pushing changes
//!
//! Every pushed message gets the next stream id, goes to the replay log and
//! to every connection that started its family, and updates the data:
//! `rulesengine.Flags` full replaces all flags; `rulesengine.Flag`
//! full/partial replaces the flag with the same `key` (or adds it), delete
//! removes it by `key` (or `id`); `rulesengine.Company`/`User` full stores
//! the entity (rulesengine shape) by `entity_id` (or `data.id`), partial
//! overwrites its top-level fields, delete forgets it. Later flag bulks
//! and single-entity answers reflect this. The REST pages keep serving the
//! REST lists (fixtures, generated entities or `POST /_dev/rest`): pushed
//! companies and users are not converted back to the REST shape.
//!
//! # Replay
//!
//! Stream ids are `"<unix_ms>-<seq>"`, starting after the server's start
//! time. A start with `replay_from` gets every logged message of its
//! family with a greater id, in order (companies and users after their
//! confirmation; flags instead of the bulk). When `replay_from` is older
//! than the log (retention or the flood cap dropped entries after it, or it
//! predates this server) or newer than the head, the answer is a `reload`
//! envelope followed by the usual answer (flags bulk or confirmation).

mod convert;
mod envelope;
mod flood;
pub mod generate;
mod http;
mod outbox;
mod state;
mod stream_id;
mod ws;

use std::collections::HashSet;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use envelope::{COMPANIES, COMPANY, Envelope, FLAG, FLAGS, Family, USER, USERS};
pub use flood::{FloodError, FloodRequest, flood_entity_id};
pub use state::{ClientMessageRecord, ConnectionInfo, FloodStatus, Stats};
pub use stream_id::{InvalidStreamId, StreamId};

use state::{Settings, Shared, State};

/// The close code sent to a connection whose API key is rejected.
pub const CLOSE_INVALID_API_KEY: u16 = state::CLOSE_INVALID_KEY;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: io::Error,
    },
    /// A fixture file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    ReadFixture {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// A fixture file is not a JSON array.
    #[error("{} is not a JSON array: {reason}", path.display())]
    ParseFixture {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// What the server serves at start.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Fixtures {
    /// rulesengine Flags (the bulk of a flags start).
    pub flags: Vec<Value>,
    /// REST companies (`CompanyDetailResponseData`) for `GET /companies`.
    pub companies: Vec<Value>,
    /// REST users (`UserDetailResponseData`) for `GET /users`.
    pub users: Vec<Value>,
}

impl Fixtures {
    /// `flags.json`, `companies.json` and `users.json` of `dir`, each a
    /// JSON array; a missing file is an empty list.
    pub fn load(dir: &Path) -> Result<Fixtures, Error> {
        Ok(Fixtures {
            flags: load_list(&dir.join("flags.json"))?,
            companies: load_list(&dir.join("companies.json"))?,
            users: load_list(&dir.join("users.json"))?,
        })
    }
}

fn load_list(path: &Path) -> Result<Vec<Value>, Error> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(Error::ReadFixture {
                path: path.to_owned(),
                source,
            });
        }
    };
    match serde_json::from_str(&text) {
        Ok(Value::Array(items)) => Ok(items),
        Ok(_) => Err(Error::ParseFixture {
            path: path.to_owned(),
            reason: "not an array".into(),
        }),
        Err(e) => Err(Error::ParseFixture {
            path: path.to_owned(),
            reason: e.to_string(),
        }),
    }
}

/// How to run the server.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where to listen (default `127.0.0.1:0`: a free port).
    pub listen: SocketAddr,
    /// Accepted API keys; empty (the default) accepts any non-empty key.
    pub api_keys: Vec<String>,
    /// Initial data.
    pub fixtures: Fixtures,
    /// Keep at most this many messages in the replay log; `None` (the
    /// default) keeps everything pushed through the control API.
    pub log_retention: Option<usize>,
    /// While flooding, the log is trimmed to this many entries (default
    /// 100 000) so memory stays bounded.
    pub flood_log_cap: usize,
    /// Live messages queued per connection before it is closed as too
    /// slow (default 65 536). Replies to its own requests (bulk, replay)
    /// do not count.
    pub queue_capacity: usize,
    /// Largest WebSocket message and frame accepted, and largest control
    /// request body (default 256 MiB).
    pub max_message_bytes: usize,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            api_keys: Vec::new(),
            fixtures: Fixtures::default(),
            log_retention: None,
            flood_log_cap: 100_000,
            queue_capacity: 65_536,
            max_message_bytes: 256 * 1024 * 1024,
        }
    }
}

/// A running server. Dropping it stops the server and its connections.
pub struct DevServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl DevServer {
    /// Bind `config.listen` and serve in the background (on the current
    /// tokio runtime).
    pub async fn start(config: Config) -> Result<DevServer, Error> {
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|source| Error::Bind {
                addr: config.listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| Error::Bind {
            addr: config.listen,
            source,
        })?;
        let state = State::new(
            config.api_keys.into_iter().collect::<HashSet<_>>(),
            config.fixtures.flags,
            config.fixtures.companies,
            config.fixtures.users,
            config.log_retention,
        );
        let shared = Arc::new(Shared::new(
            state,
            Settings {
                queue_capacity: config.queue_capacity.max(1),
                flood_log_cap: config.flood_log_cap.max(1),
                max_message_bytes: config.max_message_bytes,
            },
        ));
        let (tx, rx) = oneshot::channel::<()>();
        let app = http::router(shared.clone());
        let task = tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                })
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "server failed");
            }
        });
        tracing::info!(%addr, "datastream dev server listening");
        Ok(DevServer {
            addr,
            shared,
            shutdown: Some(tx),
            task: Some(task),
        })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR`: the API base URL (`SCHEMATIC_API_URL`).
    pub fn http_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `ws://ADDR/datastream` (`SCHEMATIC_DATASTREAM_URL`).
    pub fn ws_url(&self) -> String {
        format!("ws://{}/datastream", self.addr)
    }

    /// Push messages (like `POST /_dev/push`); their stream ids.
    pub fn push(&self, envelopes: &[Envelope]) -> Vec<StreamId> {
        self.shared.push(envelopes)
    }

    /// Send `reload` to every connection (`POST /_dev/reload`); how many.
    pub fn reload(&self) -> usize {
        self.shared.reload()
    }

    /// Drop every WebSocket connection without a close frame
    /// (`POST /_dev/drop`); how many.
    pub fn drop_connections(&self) -> usize {
        self.shared.drop_connections()
    }

    /// Reject `key` and close its connections with 4001
    /// (`POST /_dev/reject-key`); how many were closed.
    pub fn reject_key(&self, key: &str) -> usize {
        self.shared.reject_key(key)
    }

    /// Accept `key` again (`POST /_dev/allow-key`).
    pub fn allow_key(&self, key: &str) {
        self.shared.allow_key(key);
    }

    /// Fail the next `count` REST page requests with `status`
    /// (`POST /_dev/fail-pages`).
    pub fn fail_pages(&self, count: u64, status: u16) {
        self.shared.fail_pages(count, status);
    }

    /// Replace the REST lists given (`POST /_dev/rest`).
    pub fn set_rest(&self, companies: Option<Vec<Value>>, users: Option<Vec<Value>>) {
        self.shared.set_rest(companies, users);
    }

    /// Start a flood (`POST /_dev/flood`).
    pub fn flood(&self, request: FloodRequest) -> Result<(), FloodError> {
        flood::start(&self.shared, request)
    }

    /// Stop the running flood after its current batch
    /// (`DELETE /_dev/flood`).
    pub fn stop_flood(&self) {
        flood::stop(&self.shared);
    }

    /// The flood's progress (`GET /_dev/flood`).
    pub fn flood_status(&self) -> FloodStatus {
        self.shared.lock().flood.status
    }

    /// The stats (`GET /_dev/stats`).
    pub fn stats(&self) -> Stats {
        self.shared.lock().stats()
    }

    /// The last stream id assigned.
    pub fn head(&self) -> StreamId {
        self.shared.lock().head()
    }

    /// Stop accepting, drop every connection and wait for the server task.
    pub async fn shutdown(mut self) {
        self.shared.stop_all();
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for DevServer {
    fn drop(&mut self) {
        self.shared.stop_all();
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
