//! `GET /datastream`: the WebSocket side.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::http::HeaderMap;
use axum::response::Response;

use crate::outbox::{Next, Outbox};
use crate::state::{CLOSE_INVALID_KEY, CLOSE_INVALID_KEY_REASON, Conn, ConnectionInfo, Shared};
use crate::stream_id::unix_ms;

/// How long a closing server waits for the client's close frame.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// The upgrade handler: every upgrade is accepted; a bad key is closed
/// with 4001 right after.
pub(crate) async fn datastream(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let info = ConnectionInfo {
        connection: 0,
        api_key: header(&headers, "x-schematic-api-key"),
        mode: header(&headers, "x-schematic-datastream-mode"),
        client: header(&headers, "x-schematic-client"),
        client_version: header(&headers, "x-schematic-client-version"),
        accepted: false,
        open: false,
        connected_unix_ms: unix_ms(),
    };
    let max = shared.settings.max_message_bytes;
    ws.max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |socket| connection(shared, socket, info))
}

/// Removes the connection from the state when its task ends, however it
/// ends (also when it is aborted).
struct ConnGuard {
    shared: Arc<Shared>,
    id: u64,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.shared.lock().record_close(self.id);
        tracing::info!(connection = self.id, "datastream connection closed");
    }
}

async fn connection(shared: Arc<Shared>, socket: WebSocket, info: ConnectionInfo) {
    match register(&shared, socket, info) {
        Registered::Serving(task) => {
            // Aborted (dropped on purpose) or finished: either way it is over.
            let _ = task.await;
        }
        Registered::Rejected(socket) => {
            close(*socket, CLOSE_INVALID_KEY, CLOSE_INVALID_KEY_REASON).await;
        }
    }
}

enum Registered {
    Serving(tokio::task::JoinHandle<()>),
    Rejected(Box<WebSocket>),
}

/// Record the connection; spawn its task (under the lock, so that it is
/// registered before any broadcast can miss it) unless its key is refused.
fn register(shared: &Arc<Shared>, socket: WebSocket, info: ConnectionInfo) -> Registered {
    let api_key = info.api_key.clone().unwrap_or_default();
    let client = info.client.clone();
    let mut state = shared.lock();
    let (id, accepted) = state.record_connect(info);
    if !accepted {
        tracing::info!(connection = id, "rejected api key: closing with 4001");
        return Registered::Rejected(Box::new(socket));
    }
    tracing::info!(connection = id, client = ?client, "datastream connection opened");
    let outbox = Arc::new(Outbox::default());
    let guard = ConnGuard {
        shared: shared.clone(),
        id,
    };
    let task = tokio::spawn(serve(shared.clone(), socket, id, outbox.clone(), guard));
    state.conns.insert(
        id,
        Conn {
            api_key,
            families: 0,
            outbox,
            abort: task.abort_handle(),
        },
    );
    Registered::Serving(task)
}

/// Send a close frame and wait (briefly) for the client's answer.
async fn close(mut socket: WebSocket, code: u16, reason: &str) {
    let frame = CloseFrame {
        code,
        reason: reason.into(),
    };
    if socket.send(Message::Close(Some(frame))).await.is_ok() {
        let _ = tokio::time::timeout(CLOSE_WAIT, async {
            while let Some(Ok(_)) = socket.recv().await {}
        })
        .await;
    }
}

/// One accepted connection: send what is queued, read client messages.
/// Pings are answered by tungstenite while reading (the loop always
/// reads again after a message).
async fn serve(
    shared: Arc<Shared>,
    mut socket: WebSocket,
    id: u64,
    outbox: Arc<Outbox>,
    _guard: ConnGuard,
) {
    loop {
        while let Some(next) = outbox.pop() {
            match next {
                Next::Text(text) => {
                    if let Err(e) = socket.send(Message::Text(text)).await {
                        tracing::debug!(connection = id, error = %e, "send failed");
                        return;
                    }
                }
                Next::Close(code, reason) => {
                    tracing::info!(connection = id, code, reason, "closing connection");
                    close(socket, code, &reason).await;
                    return;
                }
            }
        }
        tokio::select! {
            message = socket.recv() => match message {
                Some(Ok(Message::Text(text))) => shared.lock().client_message(id, text.as_str()),
                Some(Ok(Message::Binary(bytes))) => {
                    let text = String::from_utf8_lossy(&bytes);
                    shared.lock().client_message(id, &text);
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Close(_))) => {}
                Some(Err(e)) => {
                    tracing::debug!(connection = id, error = %e, "read failed");
                    return;
                }
                None => return,
            },
            () = outbox.notify.notified() => {}
        }
    }
}
