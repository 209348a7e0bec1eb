//! The snapshot scan: each collection of a [`ScanState`] read in `_id`
//! order in chunks (`find({_id: {$gt: last}})`, sorted by `_id`, `limit` =
//! the chunk size), from a background task, while the source keeps
//! streaming. The task only reads; the source sends each chunk as one page
//! with its progress in the position (see [`super`]).
//!
//! `_id`s are compared within one BSON type bracket (MongoDB's `$gt`): a
//! collection whose `_id`s mix types (numbers and strings, say) is read up
//! to the end of the first type only. Numbers of every width are one
//! bracket.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use mongodb::Database;
use mongodb::bson::{Bson, Document, doc};
use serde::Serialize;
use serde_json::Value;
use tokio::sync::mpsc;

use super::bson::{document_text, id_string};
use super::position::ScanState;
use crate::model::{Change, ChangeOp};

/// How often the scan logs its progress.
pub const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// What the scan task tells the source.
#[derive(Debug)]
pub enum ScanMsg {
    /// One chunk of `collection`, up to and including `after` (the last
    /// `_id`, canonical Extended JSON).
    Chunk {
        /// The collection read.
        collection: String,
        /// The last `_id` of the chunk.
        after: Value,
        /// The documents as upserts.
        changes: Vec<Change>,
    },
    /// Every collection was read to its end.
    Done,
    /// A read failed.
    Failed(mongodb::error::Error),
}

/// Progress of the snapshot scans of one source, cheap to read (for logs,
/// the API and metrics).
#[derive(Debug, Default)]
pub struct ScanStatus {
    /// Whether a scan is under way.
    pub scanning: std::sync::atomic::AtomicBool,
    /// Documents read by the scan under way (this run).
    pub scanned: AtomicU64,
    /// Estimated documents of the collections the scan under way has left
    /// (`estimatedDocumentCount`), when it started.
    pub estimated: AtomicU64,
    /// Scans finished (the load ended).
    pub completed: AtomicU64,
    /// Re-snapshots after a lost history or a drop, rename,
    /// dropDatabase or invalidate.
    pub resnapshots: AtomicU64,
}

/// A copy of [`ScanStatus`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ScanReport {
    /// Whether a scan is under way.
    pub scanning: bool,
    /// Documents read by the scan under way.
    pub scanned: u64,
    /// Its estimated documents.
    pub estimated: u64,
    /// Scans finished.
    pub completed: u64,
    /// Re-snapshots.
    pub resnapshots: u64,
}

impl ScanStatus {
    /// The counters now.
    pub fn report(&self) -> ScanReport {
        ScanReport {
            scanning: self.scanning.load(Ordering::Relaxed),
            scanned: self.scanned.load(Ordering::Relaxed),
            estimated: self.estimated.load(Ordering::Relaxed),
            completed: self.completed.load(Ordering::Relaxed),
            resnapshots: self.resnapshots.load(Ordering::Relaxed),
        }
    }
}

/// Read the collections `state` has left from `db`, `chunk` documents at a
/// time, into `out` (a bounded channel: reading waits when the source has
/// not sent the previous chunks yet). Ends with [`ScanMsg::Done`], or
/// [`ScanMsg::Failed`] at the first error.
pub async fn run(
    db: Database,
    source: String,
    state: ScanState,
    chunk: usize,
    status: Arc<ScanStatus>,
    out: mpsc::Sender<ScanMsg>,
) {
    let remaining: Vec<String> = state.remaining().to_vec();
    let mut estimated = 0u64;
    for collection in &remaining {
        match db
            .collection::<Document>(collection)
            .estimated_document_count()
            .await
        {
            Ok(n) => estimated += n,
            Err(error) => {
                tracing::debug!(collection = %collection, %error, "no estimated document count")
            }
        }
    }
    status.scanned.store(0, Ordering::Relaxed);
    status.estimated.store(estimated, Ordering::Relaxed);
    status.scanning.store(true, Ordering::Relaxed);
    tracing::info!(source = %source, collections = ?remaining, resumed_after = ?state.after,
        estimated, chunk, "snapshot scan started");
    let started = Instant::now();
    let mut logged = Instant::now();
    let mut scanned = 0u64;
    let limit = i64::try_from(chunk).unwrap_or(i64::MAX);
    let batch = u32::try_from(chunk).unwrap_or(u32::MAX);
    for (index, collection) in remaining.iter().enumerate() {
        let mut after: Option<Bson> = if index == 0 { state.after_bson() } else { None };
        let handle = db.collection::<Document>(collection);
        loop {
            let filter = match &after {
                Some(last) => doc! {"_id": {"$gt": last.clone()}},
                None => doc! {},
            };
            let read = async {
                let mut cursor = handle
                    .find(filter)
                    .sort(doc! {"_id": 1_i32})
                    .limit(limit)
                    .batch_size(batch)
                    .await?;
                let mut docs = Vec::with_capacity(chunk);
                while cursor.advance().await? {
                    docs.push(cursor.deserialize_current()?);
                }
                Ok::<_, mongodb::error::Error>(docs)
            };
            let docs = match read.await {
                Ok(docs) => docs,
                Err(error) => {
                    tracing::warn!(source = %source, collection = %collection, %error, "snapshot scan read failed");
                    let _ = out.send(ScanMsg::Failed(error)).await;
                    return;
                }
            };
            let Some(last) = docs.last().and_then(|d| d.get("_id")).cloned() else {
                break;
            };
            let full = docs.len() >= chunk;
            scanned += docs.len() as u64;
            status.scanned.store(scanned, Ordering::Relaxed);
            let changes = docs
                .iter()
                .map(|d| Change {
                    source: source.clone(),
                    collection: collection.clone(),
                    op: ChangeOp::Upsert,
                    id: d.get("_id").map(id_string).unwrap_or_default(),
                    document: Some(document_text(d)),
                    current: None,
                })
                .collect();
            let message = ScanMsg::Chunk {
                collection: collection.clone(),
                after: last.clone().into_canonical_extjson(),
                changes,
            };
            if out.send(message).await.is_err() {
                return;
            }
            after = Some(last);
            if logged.elapsed() >= PROGRESS_EVERY {
                logged = Instant::now();
                log_progress(&source, collection, scanned, estimated, started.elapsed());
            }
            if !full {
                break;
            }
        }
    }
    log_progress(&source, "", scanned, estimated, started.elapsed());
    let _ = out.send(ScanMsg::Done).await;
}

/// One progress line: scanned of estimated, rate, ETA.
fn log_progress(source: &str, collection: &str, scanned: u64, estimated: u64, took: Duration) {
    let secs = took.as_secs_f64().max(0.001);
    let rate = scanned as f64 / secs;
    let eta_s = if rate > 0.0 {
        (estimated.saturating_sub(scanned) as f64 / rate).round() as u64
    } else {
        0
    };
    tracing::info!(
        source,
        collection,
        scanned,
        estimated,
        rate_per_s = rate.round() as u64,
        eta_s,
        elapsed_s = took.as_secs(),
        "snapshot scan progress"
    );
}
