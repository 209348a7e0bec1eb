//! The snapshot scan: each collection of a [`ScanState`] read in `_id`
//! order in chunks (`find({_id: {$gt: last}})`, sorted by `_id`, `limit` =
//! the chunk size), from a background task, while the source keeps
//! streaming. The task only reads; the source sends each chunk as one page
//! with its progress in the position (see [`super`]).
//!
//! `$gt` compares within one BSON type bracket only, so a collection whose
//! `_id`s mix types (numbers and strings, say) is read bracket by bracket,
//! in MongoDB's sort order ([`BRACKETS`]): its first chunk selected by
//! `$type`, the next ones `$gt` the last `_id` read; the brackets of one
//! value (MinKey, null, NaN, MaxKey) are read once. A resumed scan continues in the
//! bracket of its last `_id`. `_id`s of types MongoDB does not sort into
//! these brackets (JavaScript code, and the array, regex and undefined
//! values MongoDB refuses as `_id`) are not read.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
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

/// The state of one MongoDB source, cheap to read (for logs, readiness,
/// the API and metrics): its stream, its last error and the progress of its
/// snapshot scans. Shared across restarts of the source.
#[derive(Debug)]
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
    /// Backfills begun (entities loaded alone).
    pub backfills: AtomicU64,
    /// Whether the change stream is open.
    pub connected: std::sync::atomic::AtomicBool,
    /// The oplog head the caches must reach before the source's data counts
    /// as landed: 0 once the stream is open without a load, the head after
    /// a load's end once committed; -1 while a load runs or before the
    /// stream opened.
    pub ready_mark: AtomicI64,
    /// When the scan under way started.
    started: std::sync::Mutex<Option<Instant>>,
    /// Why the source last stopped (cleared when the stream opens).
    error: std::sync::Mutex<Option<String>>,
}

impl Default for ScanStatus {
    fn default() -> Self {
        ScanStatus {
            scanning: Default::default(),
            scanned: AtomicU64::new(0),
            estimated: AtomicU64::new(0),
            completed: AtomicU64::new(0),
            resnapshots: AtomicU64::new(0),
            backfills: AtomicU64::new(0),
            connected: Default::default(),
            ready_mark: AtomicI64::new(-1),
            started: std::sync::Mutex::new(None),
            error: std::sync::Mutex::new(None),
        }
    }
}

/// A copy of [`ScanStatus`], with the scan's rate and ETA.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ScanReport {
    /// Whether the change stream is open.
    pub connected: bool,
    /// Why the source last stopped, if it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Whether a scan is under way.
    pub scanning: bool,
    /// Documents read by the scan under way.
    pub scanned: u64,
    /// Its estimated documents.
    pub estimated: u64,
    /// Documents read per second since the scan started.
    pub rate_per_s: u64,
    /// Seconds left at that rate (0 when unknown or done).
    pub eta_s: u64,
    /// Scans finished.
    pub completed: u64,
    /// Re-snapshots.
    pub resnapshots: u64,
    /// Backfills begun.
    pub backfills: u64,
}

impl ScanStatus {
    /// The counters now.
    pub fn report(&self) -> ScanReport {
        let scanning = self.scanning.load(Ordering::Relaxed);
        let scanned = self.scanned.load(Ordering::Relaxed);
        let estimated = self.estimated.load(Ordering::Relaxed);
        let took = lock(&self.started).map(|at| at.elapsed());
        let (rate_per_s, eta_s) = match took.filter(|_| scanning) {
            Some(took) => rate_and_eta(scanned, estimated, took),
            None => (0, 0),
        };
        ScanReport {
            connected: self.connected.load(Ordering::Relaxed),
            error: lock(&self.error).clone(),
            scanning,
            scanned,
            estimated,
            rate_per_s,
            eta_s,
            completed: self.completed.load(Ordering::Relaxed),
            resnapshots: self.resnapshots.load(Ordering::Relaxed),
            backfills: self.backfills.load(Ordering::Relaxed),
        }
    }

    /// The stream is open: the error is cleared.
    pub fn opened(&self) {
        self.connected.store(true, Ordering::Relaxed);
        *lock(&self.error) = None;
    }

    /// The source stopped (with `error` when it failed).
    pub fn stopped(&self, error: Option<String>) {
        self.connected.store(false, Ordering::Relaxed);
        *lock(&self.error) = error;
    }
}

fn lock<T: Clone>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Documents per second and the seconds left for `estimated`.
fn rate_and_eta(scanned: u64, estimated: u64, took: Duration) -> (u64, u64) {
    let rate = scanned as f64 / took.as_secs_f64().max(0.001);
    let eta = if rate > 0.0 {
        (estimated.saturating_sub(scanned) as f64 / rate).round() as u64
    } else {
        0
    };
    (rate.round() as u64, eta)
}

/// [`ScanStatus`] as a source of readiness, `/debug` and `/metrics`
/// (`emcachers_mongo_*`).
pub struct MongoProbe {
    name: String,
    status: Arc<ScanStatus>,
}

impl MongoProbe {
    /// The probe of source `name`.
    pub fn new(name: String, status: Arc<ScanStatus>) -> Self {
        MongoProbe { name, status }
    }
}

impl crate::health::SourceProbe for MongoProbe {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        "mongo"
    }

    fn connected(&self) -> bool {
        self.status.connected.load(Ordering::Relaxed)
    }

    fn ready_mark(&self) -> Option<i64> {
        let mark = self.status.ready_mark.load(Ordering::Relaxed);
        (mark >= 0).then_some(mark)
    }

    fn error(&self) -> Option<String> {
        lock(&self.status.error).clone()
    }

    fn debug(&self) -> serde_json::Value {
        serde_json::to_value(self.status.report()).unwrap_or(serde_json::Value::Null)
    }

    fn metrics(&self) -> Vec<crate::health::Metric> {
        use crate::health::Metric;
        let r = self.status.report();
        // One source per kind speaks in `/metrics` (no labels yet).
        let name = |metric: &str| format!("emcachers_mongo_{metric}");
        vec![
            Metric::gauge(
                name("connected"),
                "1 while the change stream is open.",
                f64::from(u8::from(r.connected)),
            ),
            Metric::gauge(
                name("scanning"),
                "1 while a snapshot scan runs.",
                f64::from(u8::from(r.scanning)),
            ),
            Metric::gauge(
                name("scan_scanned"),
                "Documents read by the scan under way.",
                r.scanned as f64,
            ),
            Metric::gauge(
                name("scan_estimated"),
                "Estimated documents of the scan under way.",
                r.estimated as f64,
            ),
            Metric::gauge(
                name("scan_rate_per_second"),
                "Documents read per second by the scan under way.",
                r.rate_per_s as f64,
            ),
            Metric::gauge(
                name("scan_eta_seconds"),
                "Seconds the scan under way has left at its rate.",
                r.eta_s as f64,
            ),
            Metric::counter(
                name("scans_completed_total"),
                "Snapshot loads ended.",
                r.completed as f64,
            ),
            Metric::counter(
                name("resnapshots_total"),
                "Re-snapshots after a lost history, drop, rename, dropDatabase or invalidate.",
                r.resnapshots as f64,
            ),
            Metric::counter(
                name("backfills_total"),
                "Backfills of entities loaded alone.",
                r.backfills as f64,
            ),
        ]
    }
}

/// A BSON type bracket of `_id` values, as the filter of its first read.
#[derive(Debug)]
pub enum Bracket {
    /// The bracket holds this one value (read by equality).
    Value(Bson),
    /// The bracket's values have these `$type`s; `single`: it holds one
    /// value at most (MinKey, null, MaxKey), so it is read once.
    Types {
        /// The `$type` aliases.
        types: &'static [&'static str],
        /// Whether it holds one value at most.
        single: bool,
    },
}

impl Bracket {
    fn single(&self) -> bool {
        match self {
            Bracket::Value(_) => true,
            Bracket::Types { single, .. } => *single,
        }
    }

    /// The filter of the bracket's first read.
    fn first(&self) -> Document {
        match self {
            Bracket::Value(value) => doc! {"_id": value.clone()},
            Bracket::Types { types, .. } => doc! {"_id": {"$type": types.to_vec()}},
        }
    }
}

const fn types(types: &'static [&'static str]) -> Bracket {
    Bracket::Types {
        types,
        single: false,
    }
}

const fn one(types: &'static [&'static str]) -> Bracket {
    Bracket::Types {
        types,
        single: true,
    }
}

/// The brackets of `_id` values in MongoDB's sort order. The first read of
/// each selects by `$type` (a least value would be needed otherwise, and
/// extreme ones such as the least date are not portable).
pub static BRACKETS: std::sync::LazyLock<Vec<Bracket>> = std::sync::LazyLock::new(|| {
    vec![
        one(&["minKey"]),
        one(&["null", "undefined"]),
        // NaN sorts before every other number; `$gt` another number never
        // reaches it.
        Bracket::Value(Bson::Double(f64::NAN)),
        types(&["double", "int", "long", "decimal"]),
        types(&["string", "symbol"]),
        types(&["object"]),
        types(&["binData"]),
        types(&["objectId"]),
        types(&["bool"]),
        types(&["date"]),
        types(&["timestamp"]),
        one(&["maxKey"]),
    ]
});

/// The index in [`BRACKETS`] of the bracket `id` sorts in (types outside
/// them: past the end).
pub fn bracket_of(id: &Bson) -> usize {
    match id {
        Bson::MinKey => 0,
        Bson::Null | Bson::Undefined => 1,
        Bson::Double(d) if d.is_nan() => 2,
        Bson::Double(_) | Bson::Int32(_) | Bson::Int64(_) | Bson::Decimal128(_) => 3,
        Bson::String(_) | Bson::Symbol(_) => 4,
        Bson::Document(_) => 5,
        Bson::Binary(_) => 6,
        Bson::ObjectId(_) => 7,
        Bson::Boolean(_) => 8,
        Bson::DateTime(_) => 9,
        Bson::Timestamp(_) => 10,
        Bson::MaxKey => 11,
        _ => BRACKETS.len(),
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
    *lock(&status.started) = Some(Instant::now());
    status.scanning.store(true, Ordering::Relaxed);
    tracing::info!(source = %source, collections = ?remaining, resumed_after = ?state.after,
        estimated, chunk, "snapshot scan started");
    let started = Instant::now();
    let mut logged = Instant::now();
    let mut scanned = 0u64;
    let limit = i64::try_from(chunk).unwrap_or(i64::MAX);
    let batch = u32::try_from(chunk).unwrap_or(u32::MAX);
    for (index, collection) in remaining.iter().enumerate() {
        let handle = db.collection::<Document>(collection);
        // A resumed scan continues in the bracket of its last `_id`.
        let resume = if index == 0 { state.after_bson() } else { None };
        let first = resume.as_ref().map_or(0, bracket_of);
        for (at, bracket) in BRACKETS.iter().enumerate().skip(first) {
            let mut after = resume.clone().filter(|_| at == first);
            if after.is_some() && bracket.single() {
                // Its one value was read.
                continue;
            }
            loop {
                let filter = match &after {
                    Some(last) => doc! {"_id": {"$gt": last.clone()}},
                    None => bracket.first(),
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
                // Only this bracket's values: a server that does not bracket
                // `$gt` must not make the scan read a value twice.
                let docs: Vec<Document> = docs
                    .into_iter()
                    .filter(|d| d.get("_id").is_some_and(|id| bracket_of(id) == at))
                    .collect();
                let Some(last) = docs.last().and_then(|d| d.get("_id")).cloned() else {
                    break;
                };
                let full = docs.len() >= chunk && !bracket.single();
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
    }
    log_progress(&source, "", scanned, estimated, started.elapsed());
    let _ = out.send(ScanMsg::Done).await;
}

/// One progress line: scanned of estimated, rate, ETA.
fn log_progress(source: &str, collection: &str, scanned: u64, estimated: u64, took: Duration) {
    let (rate, eta_s) = rate_and_eta(scanned, estimated, took);
    tracing::info!(
        source,
        collection,
        scanned,
        estimated,
        rate_per_s = rate,
        eta_s,
        elapsed_s = took.as_secs(),
        "snapshot scan progress"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_sort_into_their_brackets() {
        use mongodb::bson::oid::ObjectId;
        let values = [
            Bson::MinKey,
            Bson::Null,
            Bson::Double(f64::NAN),
            Bson::Int32(1),
            Bson::String("a".into()),
            Bson::Document(Document::new()),
            Bson::Binary(mongodb::bson::Binary {
                subtype: mongodb::bson::spec::BinarySubtype::Generic,
                bytes: Vec::new(),
            }),
            Bson::ObjectId(ObjectId::new()),
            Bson::Boolean(false),
            Bson::DateTime(mongodb::bson::DateTime::MIN),
            Bson::Timestamp(mongodb::bson::Timestamp {
                time: 0,
                increment: 0,
            }),
            Bson::MaxKey,
        ];
        assert_eq!(values.len(), BRACKETS.len());
        for (index, value) in values.iter().enumerate() {
            assert_eq!(bracket_of(value), index, "{value:?}");
        }
        assert!(BRACKETS[0].single() && BRACKETS[2].single() && !BRACKETS[3].single());
        assert_eq!(bracket_of(&Bson::Int64(-5)), bracket_of(&Bson::Double(2.5)));
        assert_eq!(
            bracket_of(&Bson::JavaScriptCode("x".into())),
            BRACKETS.len()
        );
    }
}
