//! Schematic's datastream: a WebSocket feed of flags, companies and users
//! (spec `schematic-datastream.md` §1–§2), with its REST initial load.
//!
//! On every connect the source sends `start` for companies, users and flags
//! (with `replay_from` when it has a cursor). Server messages become changes
//! (`full` → upsert, `partial` → partial, `delete` → delete) whose collection
//! is the entity type, so the schematic plugin shapes them; messages keep
//! their arrival order. Without a cursor the source runs an initial load:
//! `Begin` (stream rows of companies and users are staged), the REST pages,
//! then `End` once the pages and the bulk flags message are in, carrying
//! the cursor: **the replay cursor is committed only with a finished load**,
//! so a crash mid-load loads again instead of replaying over a hole.
//! After a load, every batch commits the cursor of its last message.
//!
//! The source counts as connected once the server answers on the socket
//! (a ping goes out right after the starts, so its pong suffices): a server
//! that rejects the key closes with 4001 first, and `/ready` never flickers
//! to 200 on such a connection.
//!
//! Keepalive: a ping every 30 s; a connection from which no frame (pong,
//! message, ping) arrived for 40 s is dead, detected at that moment (a
//! deadline since the last frame, not a check at the next ping), dropped and
//! made again; `keepalive_timeouts` counts these.
//! Reconnects back off exponentially (1 s doubling to 30 s, plus up to 1 s
//! of jitter), reset by a connection that delivered a message. A close with
//! code 4001 (key rejected) is reported on the status (and so on `/ready`)
//! and retried slowly. A `reload` drops the cursor and loads again.

mod config;
mod loader;
pub mod protocol;
mod status;
mod url;

pub use config::{DatastreamConfig, LoadConfig};
pub use loader::{LoadError, LoadOutcome, RestLoader, loaded_collections};
pub use protocol::{ClientMessage, Message, ProtocolError, StreamId, decode, is_newer};
pub use status::{DatastreamCounters, DatastreamProbe, DatastreamSnapshot, DatastreamStatus};
pub use url::{UrlError, api_base, datastream_url};

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::{FutureExt, SinkExt, StreamExt};
use rand::Rng;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message as WsMessage};
use tokio_util::sync::CancellationToken;

use self::status::bump;
use crate::model::Change;
use crate::sources::{CommitSignal, LoadEnd, SnapshotLoad, Source, SourceBatch, SourceError};

/// The close code of a rejected API key.
pub const CLOSE_UNAUTHORIZED: u16 = 4001;

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The datastream source.
pub struct DatastreamSource {
    config: DatastreamConfig,
    url: String,
    status: Arc<DatastreamStatus>,
    loader: RestLoader,
}

/// How a connection ended.
enum SessionEnd {
    /// Cancelled: stop.
    Cancelled,
    /// The pipeline is gone: stop.
    Closed,
    /// The server rejected the key.
    Unauthorized,
    /// Lost; `healthy` when it delivered at least one message.
    Lost { reason: String, healthy: bool },
}

/// Why a source cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum DatastreamError {
    /// No API key.
    #[error("the datastream source {0} needs an API key (SCHEMATIC_API_KEY)")]
    NoApiKey(String),
    /// The URL is unusable.
    #[error(transparent)]
    Url(#[from] UrlError),
    /// The HTTP client cannot be built.
    #[error("HTTP client: {0}")]
    Http(#[from] reqwest::Error),
}

impl DatastreamSource {
    /// A source for `config`, reporting on `status`.
    pub fn new(
        config: DatastreamConfig,
        status: Arc<DatastreamStatus>,
    ) -> Result<DatastreamSource, DatastreamError> {
        if config.api_key.trim().is_empty() {
            return Err(DatastreamError::NoApiKey(config.name.clone()));
        }
        let url = datastream_url(config.datastream_url.as_deref(), &config.api_url)?;
        if config.ping_interval_ms >= config.pong_timeout_ms {
            tracing::warn!(source = %config.name, ping_interval_ms = config.ping_interval_ms,
                pong_timeout_ms = config.pong_timeout_ms,
                "the ping period is not below the pong timeout: a quiet server will be taken for dead");
        }
        let loader = RestLoader::new(
            &api_base(&config.api_url),
            &config.api_key,
            &config.name,
            config.load.clone(),
            status.clone(),
        )?;
        Ok(DatastreamSource {
            config,
            url,
            status,
            loader,
        })
    }

    /// The WebSocket URL it connects to.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Its status.
    pub fn status(&self) -> Arc<DatastreamStatus> {
        self.status.clone()
    }

    async fn connect(&self) -> Result<Socket, tungstenite::Error> {
        let mut request = self.url.as_str().into_client_request()?;
        let headers = request.headers_mut();
        let value = |text: &str| {
            HeaderValue::from_str(text).map_err(|e| tungstenite::Error::HttpFormat(e.into()))
        };
        headers.insert("X-Schematic-Api-Key", value(&self.config.api_key)?);
        headers.insert("X-Schematic-Datastream-Mode", value("replicator")?);
        headers.insert("X-Schematic-Client", value(&self.config.client_name)?);
        headers.insert(
            "X-Schematic-Client-Version",
            value(env!("CARGO_PKG_VERSION"))?,
        );
        let max = self.config.max_message_mib.max(1) << 20;
        let ws_config = WebSocketConfig::default()
            .max_message_size(Some(max))
            .max_frame_size(Some(max));
        let connect = tokio_tungstenite::connect_async_with_config(request, Some(ws_config), true);
        match tokio::time::timeout(Duration::from_secs(30), connect).await {
            Ok(result) => result.map(|(socket, _)| socket),
            Err(_) => Err(tungstenite::Error::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "connect timed out",
            ))),
        }
    }

    /// The reconnect delay after `failures` consecutive failures (≥ 1).
    fn backoff(&self, failures: u32) -> Duration {
        let base = 1000u64.saturating_mul(1u64 << failures.saturating_sub(1).min(20));
        let capped = base.min(self.config.reconnect_max_ms.max(1));
        Duration::from_millis(capped + rand::rng().random_range(0..1000))
    }

    async fn session(
        &self,
        socket: Socket,
        cursor: &mut Option<String>,
        out: &mpsc::Sender<SourceBatch>,
        cancel: &CancellationToken,
    ) -> SessionEnd {
        // The upgrade is the first thing heard from the server.
        let mut last_heard = tokio::time::Instant::now();
        let (mut sink, mut stream) = socket.split();
        let mut session = Session::new(self, out, cancel);
        let write_timeout = Duration::from_millis(self.config.write_timeout_ms.max(1));
        let replay_from = if self.config.replay {
            cursor.clone()
        } else {
            None
        };
        for start in ClientMessage::starts(replay_from.as_deref()) {
            match tokio::time::timeout(write_timeout, sink.send(WsMessage::text(start))).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => return session.lost(format!("sending start: {error}")),
                Err(_) => return session.lost("sending start timed out".into()),
            }
        }
        // Ping at once: the pong (or any message) shows the server took the
        // key. A server rejecting it closes (4001) before answering, and
        // until something else arrives the source is not connected: no
        // ready flicker, and the 4001 error stays on /ready meanwhile.
        match tokio::time::timeout(write_timeout, sink.send(WsMessage::Ping(Vec::new().into())))
            .await
        {
            Ok(Ok(())) => {}
            Ok(Err(error)) => return session.lost(format!("ping: {error}")),
            Err(_) => return session.lost("ping write timed out".into()),
        }
        tracing::info!(source = %self.config.name, url = %self.url, replay_from = replay_from.as_deref().unwrap_or(""), "datastream connected");
        if replay_from.is_none() {
            *cursor = None;
            if let Err(end) = session.start_load(true).await {
                return end;
            }
        } else if let Err(end) = session.mark_when_committed(cursor.clone()).await {
            return end;
        }

        let mut ping =
            tokio::time::interval(Duration::from_millis(self.config.ping_interval_ms.max(1)));
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ping.tick().await;
        let pong_timeout = Duration::from_millis(self.config.pong_timeout_ms.max(1));
        loop {
            // Dead exactly `pong_timeout` after the last frame, whatever the
            // ping period.
            let dead_at = dead_at(last_heard, pong_timeout);
            tokio::select! {
                _ = cancel.cancelled() => {
                    let _ = tokio::time::timeout(write_timeout, sink.send(WsMessage::Close(None))).await;
                    session.stop_load();
                    return SessionEnd::Cancelled;
                }
                _ = tokio::time::sleep_until(dead_at) => {
                    bump(&self.status.counters.keepalive_timeouts);
                    let silent_ms = u64::try_from(last_heard.elapsed().as_millis()).unwrap_or(u64::MAX);
                    tracing::warn!(source = %self.config.name, silent_ms, pong_timeout_ms = self.config.pong_timeout_ms,
                        "datastream server silent past the pong timeout: connection dead");
                    return session.lost(format!("nothing heard for {silent_ms} ms (pong timeout {} ms)", pong_timeout.as_millis()));
                }
                _ = ping.tick() => {
                    match tokio::time::timeout(write_timeout, sink.send(WsMessage::Ping(Vec::new().into()))).await {
                        Ok(Ok(())) => {}
                        Ok(Err(error)) => return session.lost(format!("ping: {error}")),
                        Err(_) => return session.lost("ping write timed out".into()),
                    }
                }
                outcome = load_finished(&mut session.load) => {
                    if let Err(end) = session.on_load_finished(outcome, cursor).await {
                        return end;
                    }
                }
                _ = retry_due(session.retry_at) => {
                    // The bulk flags of this connection are in (and kept
                    // current by the stream): only the pages are read again.
                    if let Err(end) = session.start_load(false).await {
                        return end;
                    }
                }
                frame = stream.next() => {
                    last_heard = tokio::time::Instant::now();
                    let mut frames = vec![frame];
                    // Drain what is already buffered: one batch per wake-up.
                    while frames.len() < self.config.batch_max.max(1) {
                        match stream.next().now_or_never() {
                            Some(frame) => frames.push(frame),
                            None => break,
                        }
                    }
                    let mut reload = false;
                    for frame in frames {
                        if let Some(Ok(message)) = &frame
                            && !matches!(message, WsMessage::Close(_))
                        {
                            session.accepted();
                        }
                        match frame {
                            None => return session.lost("connection closed".into()),
                            Some(Err(error)) => return session.lost(error.to_string()),
                            Some(Ok(WsMessage::Text(text))) => {
                                reload |= session.on_text(text.as_str(), cursor);
                            }
                            Some(Ok(WsMessage::Binary(bytes))) => match std::str::from_utf8(&bytes) {
                                Ok(text) => reload |= session.on_text(text, cursor),
                                Err(_) => {
                                    bump(&self.status.counters.malformed);
                                    tracing::warn!(source = %self.config.name, "binary message is not UTF-8; skipped");
                                }
                            },
                            Some(Ok(WsMessage::Ping(_))) => {
                                // tungstenite queued the pong; flush it now.
                                if let Err(error) = sink.flush().await {
                                    return session.lost(format!("pong: {error}"));
                                }
                            }
                            Some(Ok(WsMessage::Pong(_) | WsMessage::Frame(_))) => {}
                            Some(Ok(WsMessage::Close(frame))) => {
                                let code = frame.as_ref().map(|f| u16::from(f.code));
                                if code == Some(CLOSE_UNAUTHORIZED) {
                                    return SessionEnd::Unauthorized;
                                }
                                return session.lost(format!("closed by server (code {code:?})"));
                            }
                        }
                    }
                    if let Err(end) = session.flush(cursor).await {
                        return end;
                    }
                    if reload {
                        tracing::info!(source = %self.config.name, "reload requested: loading everything again");
                        *cursor = None;
                        for start in ClientMessage::starts(None) {
                            match tokio::time::timeout(write_timeout, sink.send(WsMessage::text(start))).await {
                                Ok(Ok(())) => {}
                                Ok(Err(error)) => return session.lost(format!("sending start: {error}")),
                                Err(_) => return session.lost("sending start timed out".into()),
                            }
                        }
                        session.stop_load();
                        if let Err(end) = session.start_load(true).await {
                            return end;
                        }
                    }
                }
            }
        }
    }
}

type LoadTask = (
    JoinHandle<Result<LoadOutcome, LoadError>>,
    CancellationToken,
);

/// Resolves when the running load finishes; never without one.
async fn load_finished(load: &mut Option<LoadTask>) -> Result<LoadOutcome, LoadError> {
    match load.as_mut() {
        Some((task, _)) => {
            let result = task.await.unwrap_or(Err(LoadError::Cancelled));
            *load = None;
            result
        }
        None => std::future::pending().await,
    }
}

/// When a connection last heard at `last_heard` counts as dead: `wait`
/// later (far in the future when that overflows the clock).
fn dead_at(last_heard: tokio::time::Instant, wait: Duration) -> tokio::time::Instant {
    last_heard
        .checked_add(wait)
        .unwrap_or_else(|| last_heard + Duration::from_secs(100 * 365 * 24 * 3600))
}

/// Resolves at `at`; never without it.
async fn retry_due(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The state of one connection.
struct Session<'a> {
    source: &'a DatastreamSource,
    out: &'a mpsc::Sender<SourceBatch>,
    cancel: &'a CancellationToken,
    /// Changes decoded and not yet sent.
    pending: Vec<Change>,
    /// The running load, if any.
    load: Option<LoadTask>,
    /// A finished load waiting for the bulk flags message.
    finished: Option<LoadOutcome>,
    /// Whether the bulk flags message arrived since the load began.
    flags_seen: bool,
    /// When to try an incomplete load again.
    retry_at: Option<tokio::time::Instant>,
    /// Whether this connection delivered a message.
    healthy: bool,
    /// Whether the server answered anything but a close (it took the key).
    accepted: bool,
    /// Cancelled when the connection ends: stops its ready-mark watchers,
    /// so a commit of an ended connection never marks a later one ready.
    token: CancellationToken,
}

impl Drop for Session<'_> {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

impl<'a> Session<'a> {
    fn new(
        source: &'a DatastreamSource,
        out: &'a mpsc::Sender<SourceBatch>,
        cancel: &'a CancellationToken,
    ) -> Self {
        Session {
            source,
            out,
            cancel,
            pending: Vec::new(),
            load: None,
            finished: None,
            flags_seen: false,
            retry_at: None,
            healthy: false,
            accepted: false,
            token: cancel.child_token(),
        }
    }

    /// The server answered on this connection: it is up, the key is good.
    fn accepted(&mut self) {
        if !self.accepted {
            self.accepted = true;
            self.source.status.set_connected(true);
        }
    }

    fn name(&self) -> &str {
        &self.source.config.name
    }

    fn lost(&mut self, reason: String) -> SessionEnd {
        self.stop_load();
        SessionEnd::Lost {
            reason,
            healthy: self.healthy,
        }
    }

    fn stop_load(&mut self) {
        if let Some((_, token)) = self.load.take() {
            token.cancel();
        }
        self.finished = None;
        self.source.status.set_loading(false);
    }

    /// The load protocol of this source: the REST collections.
    fn snapshot_load(&self) -> SnapshotLoad {
        SnapshotLoad::new(self.name(), loaded_collections())
    }

    async fn send(&self, batch: SourceBatch) -> Result<(), SessionEnd> {
        bump(&self.source.status.counters.batches);
        self.out.send(batch).await.map_err(|_| SessionEnd::Closed)
    }

    /// Begin a load: stage stream rows, page the REST API in the background.
    /// `flags_requested`: a flags start was just sent, so the load also waits
    /// for its bulk answer; a retry of an incomplete load on the same
    /// connection sends none (the bulk it got is kept current by the
    /// stream), so it must not wait for another one.
    async fn start_load(&mut self, flags_requested: bool) -> Result<(), SessionEnd> {
        self.retry_at = None;
        self.finished = None;
        if flags_requested {
            self.flags_seen = false;
        }
        self.source.status.set_loading(true);
        self.source.status.set_ready_mark(None);
        let load = self.snapshot_load();
        self.send(load.begin()).await?;
        let token = self.cancel.child_token();
        let (loader, out, child) = (self.source.loader.clone(), self.out.clone(), token.clone());
        let task = tokio::spawn(async move { loader.load(&load, &out, &child).await });
        self.load = Some((task, token));
        Ok(())
    }

    async fn on_load_finished(
        &mut self,
        outcome: Result<LoadOutcome, LoadError>,
        cursor: &Option<String>,
    ) -> Result<(), SessionEnd> {
        match outcome {
            Ok(outcome) => {
                self.finished = Some(outcome);
                self.finish_if_ready(cursor).await
            }
            Err(LoadError::Closed) => Err(SessionEnd::Closed),
            Err(LoadError::Cancelled) => Ok(()),
        }
    }

    /// End the load once its pages and the bulk flags are in: the cursor
    /// is committed with the end, and the ready mark set once committed.
    async fn finish_if_ready(&mut self, cursor: &Option<String>) -> Result<(), SessionEnd> {
        if !self.flags_seen {
            return Ok(());
        }
        let Some(outcome) = self.finished.take() else {
            return Ok(());
        };
        let counters = &self.source.status.counters;
        if outcome.complete {
            bump(&counters.loads_completed);
        } else {
            bump(&counters.loads_incomplete);
        }
        tracing::info!(source = %self.name(), complete = outcome.complete, entities = outcome.entities,
            failed_pages = outcome.failed_pages, "initial load read");
        let (signal, receiver) = CommitSignal::new();
        self.send(self.snapshot_load().end(LoadEnd {
            complete: outcome.complete,
            position: if outcome.complete {
                cursor.clone()
            } else {
                None
            },
            committed: Some(signal),
        }))
        .await?;
        self.source.status.set_loading(false);
        if outcome.complete {
            self.watch_mark(receiver);
        } else {
            let wait = Duration::from_millis(self.source.config.load.retry_incomplete_ms.max(1));
            self.retry_at = Some(tokio::time::Instant::now() + wait);
            tracing::warn!(source = %self.name(), retry_in_ms = wait.as_millis() as u64,
                "initial load incomplete: nothing evicted, not ready; loading again later");
        }
        Ok(())
    }

    /// Send an empty batch committing `cursor`; the ready mark is the oplog
    /// head once it is committed (everything before it is in the store).
    async fn mark_when_committed(&mut self, cursor: Option<String>) -> Result<(), SessionEnd> {
        let (signal, receiver) = CommitSignal::new();
        self.send(SourceBatch {
            source: self.name().to_owned(),
            position: cursor,
            committed: Some(signal),
            ..SourceBatch::default()
        })
        .await?;
        self.watch_mark(receiver);
        Ok(())
    }

    fn watch_mark(&self, mut receiver: tokio::sync::watch::Receiver<Option<i64>>) {
        let status = self.source.status.clone();
        let cancel = self.token.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = cancel.cancelled() => {}
                changed = receiver.wait_for(Option::is_some) => {
                    if let Ok(head) = changed {
                        status.set_ready_mark(*head);
                    }
                }
            }
        });
    }

    /// Handle one text message; true when it asks for a reload.
    fn on_text(&mut self, text: &str, cursor: &mut Option<String>) -> bool {
        self.healthy = true;
        let status = &self.source.status;
        match decode(text, &self.source.config.name) {
            Ok(Message::Change { change, stream_id }) => {
                bump(&status.counters.messages);
                status
                    .counters
                    .bytes
                    .fetch_add(text.len() as u64, std::sync::atomic::Ordering::Relaxed);
                if change.collection == protocol::FLAGS {
                    self.flags_seen = true;
                }
                if let Some(id) = stream_id
                    && is_newer(&id, cursor.as_deref())
                {
                    *cursor = Some(id);
                }
                self.pending.push(change);
                false
            }
            Ok(Message::Confirmation { entity_type }) => {
                bump(&status.counters.confirmations);
                tracing::debug!(source = %self.name(), entity_type, "subscription confirmed");
                false
            }
            Ok(Message::Error { detail }) => {
                bump(&status.counters.server_errors);
                tracing::warn!(source = %self.name(), detail, "datastream error message");
                status.set_error(format!("server error: {detail}"));
                false
            }
            Ok(Message::Reload) => {
                bump(&status.counters.reloads);
                true
            }
            Err(error) => {
                bump(&status.counters.malformed);
                let sample: String = text.chars().take(200).collect();
                tracing::warn!(source = %self.name(), %error, sample, "datastream message skipped");
                status.set_error(error.to_string());
                false
            }
        }
    }

    /// Send the pending changes. While a load runs no cursor is committed.
    async fn flush(&mut self, cursor: &Option<String>) -> Result<(), SessionEnd> {
        let loading = self.load.is_some() || self.finished.is_some() || self.retry_at.is_some();
        self.source.status.set_cursor(cursor.as_deref());
        if !self.pending.is_empty() {
            let changes = std::mem::take(&mut self.pending);
            self.send(SourceBatch {
                source: self.name().to_owned(),
                changes,
                position: if loading { None } else { cursor.clone() },
                ..SourceBatch::default()
            })
            .await?;
        }
        if self.finished.is_some() {
            self.finish_if_ready(cursor).await?;
        }
        Ok(())
    }
}

#[async_trait]
impl Source for DatastreamSource {
    fn name(&self) -> &str {
        &self.config.name
    }

    async fn run(
        &mut self,
        position: Option<String>,
        out: mpsc::Sender<SourceBatch>,
        cancel: CancellationToken,
    ) -> Result<(), SourceError> {
        let mut cursor = if self.config.replay { position } else { None };
        let mut failures: u32 = 0;
        loop {
            if cancel.is_cancelled() {
                return Ok(());
            }
            let delay = match self.connect().await {
                Ok(socket) => {
                    bump(&self.status.counters.connects);
                    // Connected once the server answers (see `session`).
                    let end = self.session(socket, &mut cursor, &out, &cancel).await;
                    self.status.set_connected(false);
                    self.status.set_loading(false);
                    match end {
                        SessionEnd::Cancelled => return Ok(()),
                        SessionEnd::Closed => {
                            return Err(SourceError::Closed(self.config.name.clone()));
                        }
                        SessionEnd::Unauthorized => {
                            bump(&self.status.counters.unauthorized);
                            self.status.set_unauthorized();
                            self.status
                                .set_error("the datastream rejected the API key (close code 4001)");
                            tracing::error!(source = %self.config.name, retry_in_ms = self.config.unauthorized_retry_ms,
                                "datastream rejected the API key (4001); check SCHEMATIC_API_KEY");
                            failures = failures.saturating_add(1);
                            Duration::from_millis(self.config.unauthorized_retry_ms.max(1))
                        }
                        SessionEnd::Lost { reason, healthy } => {
                            if healthy {
                                failures = 0;
                            }
                            failures = failures.saturating_add(1);
                            self.status.set_error(format!("connection lost: {reason}"));
                            let delay = self.backoff(failures);
                            tracing::warn!(source = %self.config.name, reason, retry_in_ms = delay.as_millis() as u64, "datastream connection lost");
                            delay
                        }
                    }
                }
                Err(error) => {
                    bump(&self.status.counters.connect_failures);
                    failures = failures.saturating_add(1);
                    let unauthorized = matches!(&error, tungstenite::Error::Http(response)
                        if matches!(response.status().as_u16(), 401 | 403));
                    if unauthorized {
                        self.status.set_unauthorized();
                    }
                    self.status.set_error(format!("connect: {error}"));
                    let delay = if unauthorized {
                        Duration::from_millis(self.config.unauthorized_retry_ms.max(1))
                    } else {
                        self.backoff(failures)
                    };
                    tracing::warn!(source = %self.config.name, url = %self.url, %error, retry_in_ms = delay.as_millis() as u64, "datastream connect failed");
                    delay
                }
            };
            tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source() -> DatastreamSource {
        DatastreamSource::new(
            DatastreamConfig {
                api_key: "k".into(),
                api_url: "http://127.0.0.1:9".into(),
                ..DatastreamConfig::default()
            },
            Arc::default(),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn backoff_doubles_to_the_cap_with_jitter() {
        let source = source();
        for (failures, base) in [
            (1, 1000),
            (2, 2000),
            (3, 4000),
            (5, 16_000),
            (6, 30_000),
            (40, 30_000),
        ] {
            let delay = source.backoff(failures).as_millis() as u64;
            assert!(
                (base..base + 1000).contains(&delay),
                "failures {failures}: {delay} not in [{base}, {})",
                base + 1000
            );
        }
    }

    #[test]
    fn needs_a_key_and_a_usable_url() {
        assert!(matches!(
            DatastreamSource::new(DatastreamConfig::default(), Arc::default()),
            Err(DatastreamError::NoApiKey(_))
        ));
        assert!(matches!(
            DatastreamSource::new(
                DatastreamConfig {
                    api_key: "k".into(),
                    api_url: "nope".into(),
                    ..DatastreamConfig::default()
                },
                Arc::default()
            ),
            Err(DatastreamError::Url(_))
        ));
    }
}
