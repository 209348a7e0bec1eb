//! `POST /_dev/flood`: generated company or user messages at a paced rate.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::time::MissedTickBehavior;

use crate::envelope::{COMPANY, Envelope, Family, USER};
use crate::generate::{flood_document, padding};
use crate::state::{FloodStatus, Shared};
use crate::stream_id::unix_ns;

/// At most this many messages are pushed under one lock.
const MAX_BATCH: u64 = 5_000;

/// A flood request (`POST /_dev/flood`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FloodRequest {
    /// Messages to push.
    pub count: u64,
    /// Messages per second; 0 = as fast as possible.
    #[serde(default)]
    pub rate_per_sec: u64,
    /// `rulesengine.Company` (default) or `rulesengine.User`.
    #[serde(default = "default_entity_type")]
    pub entity_type: String,
    /// Approximate size of each document in bytes (default 1024).
    #[serde(default = "default_size")]
    pub size_bytes: usize,
    /// Entity ids to cycle over (default 1000; 0 counts as 1).
    #[serde(default = "default_ids")]
    pub ids: u64,
}

fn default_entity_type() -> String {
    COMPANY.to_owned()
}

fn default_size() -> usize {
    1024
}

fn default_ids() -> u64 {
    1000
}

impl FloodRequest {
    /// `count` company messages of about 1 KiB over 1000 ids, at `rate`
    /// messages per second.
    pub fn companies(count: u64, rate_per_sec: u64) -> FloodRequest {
        FloodRequest {
            count,
            rate_per_sec,
            entity_type: default_entity_type(),
            size_bytes: default_size(),
            ids: default_ids(),
        }
    }
}

/// Why a flood did not start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FloodError {
    /// Only one flood runs at a time.
    #[error("a flood is already running")]
    Running,
    /// Floods generate companies or users.
    #[error("entity_type must be rulesengine.Company or rulesengine.User, not {0:?}")]
    EntityType(String),
}

/// The id of flood entity `n` (of companies or users).
pub fn flood_entity_id(user: bool, n: u64) -> String {
    if user {
        format!("bench_user_{n}")
    } else {
        format!("bench_comp_{n}")
    }
}

/// Start a flood in the background.
pub(crate) fn start(shared: &Arc<Shared>, request: FloodRequest) -> Result<(), FloodError> {
    let user = match Family::of(&request.entity_type) {
        Some(Family::Companies) => false,
        Some(Family::Users) => true,
        _ => return Err(FloodError::EntityType(request.entity_type)),
    };
    let mut state = shared.lock();
    if state.flood.status.running {
        return Err(FloodError::Running);
    }
    let stop = Arc::new(AtomicBool::new(false));
    state.flood.status = FloodStatus {
        running: true,
        sent: 0,
        count: request.count,
    };
    state.flood.stop = stop.clone();
    tracing::info!(?request, "flood started");
    let task = tokio::spawn(run(shared.clone(), request, user, stop));
    state.flood.task = Some(task.abort_handle());
    Ok(())
}

/// Stop the running flood (if any) after its current batch.
pub(crate) fn stop(shared: &Shared) {
    shared.lock().flood.stop.store(true, Ordering::Relaxed);
}

async fn run(shared: Arc<Shared>, request: FloodRequest, user: bool, stop: Arc<AtomicBool>) {
    let entity_type = if user { USER } else { COMPANY };
    let ids = request.ids.max(1);
    let base = flood_document(user, &flood_entity_id(user, ids - 1), 0, unix_ns(), "")
        .to_string()
        .len();
    // The sequence number grows; a few bytes of slack keep sizes close.
    let pad = padding(request.size_bytes.saturating_sub(base + 4));
    let cap = Some(shared.settings.flood_log_cap);
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut sent = 0u64;
    while sent < request.count && !stop.load(Ordering::Relaxed) {
        let due = if request.rate_per_sec == 0 {
            tokio::task::yield_now().await;
            request.count
        } else {
            tick.tick().await;
            let due =
                started.elapsed().as_nanos() * u128::from(request.rate_per_sec) / 1_000_000_000;
            u64::try_from(due).unwrap_or(u64::MAX).min(request.count)
        };
        let batch = due.saturating_sub(sent).min(MAX_BATCH);
        if batch == 0 {
            continue;
        }
        let mut to_abort = Vec::new();
        {
            let mut state = shared.lock();
            for seq in sent..sent + batch {
                let id = flood_entity_id(user, seq % ids);
                let data = flood_document(user, &id, seq, unix_ns(), &pad);
                let envelope = Envelope::new(entity_type, "full", Some(id), data);
                state.push(
                    &envelope,
                    cap,
                    shared.settings.queue_capacity,
                    &mut to_abort,
                );
            }
            sent += batch;
            state.flood.status.sent = sent;
        }
        to_abort.iter().for_each(tokio::task::AbortHandle::abort);
    }
    let mut state = shared.lock();
    state.flood.status.running = false;
    state.flood.task = None;
    tracing::info!(sent, elapsed = ?started.elapsed(), "flood finished");
}
