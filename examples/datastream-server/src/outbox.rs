//! The per-connection outgoing queue.
//!
//! Replies to the client's own requests (flag bulk, confirmations, replay)
//! are always queued; live broadcasts count against a capacity, and a
//! connection whose live backlog is full is closed instead of slowing
//! anybody else down. Everything is queued under the server's state lock,
//! so a connection sees replies and broadcasts in one consistent order.

use std::collections::VecDeque;
use std::sync::{Mutex, PoisonError};

use axum::extract::ws::Utf8Bytes;
use tokio::sync::Notify;

/// What the connection task sends next.
#[derive(Debug)]
pub(crate) enum Next {
    /// A text message.
    Text(Utf8Bytes),
    /// A close frame; the connection ends after it.
    Close(u16, String),
}

#[derive(Default)]
struct Inner {
    queue: VecDeque<(Utf8Bytes, bool)>,
    live: usize,
    close: Option<(u16, String)>,
}

/// One connection's outgoing queue (see the module docs).
#[derive(Default)]
pub(crate) struct Outbox {
    inner: Mutex<Inner>,
    /// Signalled whenever something was queued.
    pub notify: Notify,
}

impl Outbox {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queue a reply (not counted against the capacity).
    pub fn reply(&self, text: Utf8Bytes) {
        self.lock().queue.push_back((text, false));
        self.notify.notify_one();
    }

    /// Queue a live message; `false` (and nothing queued) when `capacity`
    /// live messages are already waiting.
    pub fn live(&self, text: Utf8Bytes, capacity: usize) -> bool {
        let mut inner = self.lock();
        if inner.live >= capacity {
            return false;
        }
        inner.live += 1;
        inner.queue.push_back((text, true));
        drop(inner);
        self.notify.notify_one();
        true
    }

    /// Close the connection with a close frame, ahead of anything queued.
    pub fn close(&self, code: u16, reason: &str) {
        self.lock().close = Some((code, reason.to_owned()));
        self.notify.notify_one();
    }

    /// The next thing to send: a pending close first, then the queue.
    pub fn pop(&self) -> Option<Next> {
        let mut inner = self.lock();
        if let Some((code, reason)) = inner.close.take() {
            inner.queue.clear();
            inner.live = 0;
            return Some(Next::Close(code, reason));
        }
        let (text, live) = inner.queue.pop_front()?;
        if live {
            inner.live -= 1;
        }
        Some(Next::Text(text))
    }
}
