//! The MongoDB source: one change stream on a database, and snapshot scans
//! of its collections (`[[sources]] kind = "mongo"`).
//!
//! - [`config`]: [`MongoSourceConfig`] (`name`, `uri`, `database`,
//!   `collections`, `full_document`, `token_persist_ms`, `scan_chunk`).
//! - [`bson`]: BSON → JSON (relaxed Extended JSON), document ids as strings,
//!   resume tokens as text — documented behaviour.
//! - [`position`]: the source position, the resume token and the scan's
//!   progress in one JSON document.
//! - [`scan`]: the snapshot scan (a background task reading chunks in
//!   `_id` order) and its progress ([`ScanStatus`]).
//! - `events`: change events → host changes (insert / replace → upsert,
//!   delete → delete, update → partial, or upsert with `updateLookup`;
//!   drop / rename / dropDatabase / invalidate → a re-snapshot).
//! - `errors`: what a driver error means (history lost, resumable,
//!   configuration, fatal).
//!
//! # Position
//!
//! The source position ([`position::Position`]) holds the resume token
//! (as Extended JSON, [`bson::token_to_text`]) and, while a snapshot scan
//! runs, its progress. Every batch the source sends carries the position
//! composed from the latest token and scan progress it has sent, and the
//! pipeline commits it with the batch's rows in one transaction: after a
//! crash the stream resumes exactly after the last committed change and
//! the scan after the last committed chunk. [`MongoSource::run`] opens
//! `db.watch()` with `resumeAfter` = the saved token, or from the current
//! time when there is none. A slice-1 position (a bare token) still
//! resumes.
//!
//! # Snapshots
//!
//! A snapshot of a set of collections is one load of the protocol in
//! [`crate::ingest::load`]:
//!
//! 1. The change stream is opened **first**; its token is the position
//!    before the scan. The `begin` batch carries that token and the scan
//!    state: from then on the stream rows of the loaded entities are staged.
//! 2. A background task ([`scan`]) reads each collection in `_id` order,
//!    `scan_chunk` documents at a time (`find({_id: {$gt: last}})`, sorted
//!    by `_id`); each chunk becomes one page whose position records the
//!    chunk's last `_id`. The stream keeps running meanwhile (its batches
//!    are committed as usual, the scanning entities' rows staged). An
//!    update event of a collection being scanned becomes an upsert of the
//!    document looked up by `_id` (nothing when it is gone): the scan may
//!    have read the document before the update without committing it yet,
//!    so a partial change would have no row to merge onto.
//! 3. Once the scan is done, the source waits until the stream has passed
//!    the snapshot's end, then sends `end`: rows the scan did not see are
//!    evicted, the staged rows move to the log and the entities become
//!    `ready`. The stream has passed the end when a `getMore` issued after
//!    the scan finished comes back empty, or, on a stream that is never
//!    idle, when an event arrives whose cluster time is after the server's
//!    operation time taken when the scan finished (a `ping`): every change
//!    before the end has then been read.
//!
//! A snapshot is taken of every routed collection when the source has no
//! saved position (or a slice-1 one: that slice never snapshotted), of
//! configured `collections` the stream did not watch before, and the scan
//! under way is resumed after a restart (`begin` keeps the load's start,
//! so eviction covers the whole scan). A routed collection is one an
//! entity is fed by (the routes [`MongoSource::new`] is given). An entity
//! fed by several collections is always loaded with all of them (eviction
//! works per entity).
//!
//! **Backfill.** An entity of this source that is `pending` (created while
//! the source runs, or `POST /api/replication/recreate/{entity}`) is loaded
//! alone: between loads, after each stream read, the source asks its
//! [`SourceEntities`] view for pending entities and snapshots the routed
//! collections that feed them with a load for those entities only
//! ([`SnapshotLoad::only`]; the scan state names them, so a restart resumes
//! the backfill). Other entities of the same collections keep streaming and
//! are not loaded again. The source waits for the previous load's end to be
//! committed before it looks, so an entity is never loaded twice for one
//! request.
//!
//! Re-snapshots, never "continue from now":
//! - a lost history (286, 260, 280, 136 — when reading or when opening
//!   from the saved token): the stream is opened anew from now, and every
//!   routed collection is snapshotted again (a complete load: what no
//!   longer exists is evicted);
//! - `drop` or `rename` of a routed collection: that collection (a dropped
//!   one scans as empty, so its entities' rows are evicted); `dropDatabase`
//!   and `invalidate`: every routed collection (after `invalidate` the
//!   stream is reopened with `startAfter`).
//!
//! The changes before such an event are committed first; the `begin` of
//! the re-snapshot is committed with the token after it. A re-snapshot
//! while a scan runs restarts the scan with both sets of collections.
//! Each is logged and counted ([`ScanStatus::resnapshots`]).
//!
//! # Batching
//!
//! Events are read with `next_if_any()` (at most one `getMore` per call).
//! A batch is sent when it holds `batch_max` changes, when its first change
//! has waited [`BATCH_DELAY`] while more kept coming, or when the server has
//! nothing more for now (a `getMore` that waited [`MAX_AWAIT`] came back
//! empty: so a lone change waits at most about that long). An idle stream sends an empty batch with its
//! latest token (the `postBatchResumeToken`) at most every
//! `token_persist_ms`, so the saved token of a quiet source does not age
//! out of the server's oplog window. Scan chunks are sent between stream
//! reads.
//!
//! # Failures
//!
//! The driver resumes once by itself on resumable errors. One that still
//! reaches the source (`errors::ErrorClass::Resumable`) is retried by
//! reopening the stream from the last token, with backoff
//! (`[retry]`: [`crate::ingest::retry::Backoff`] from `initial_delay_ms`,
//! `backoff_multiplier`, `max_delay_ms`), at most `max_attempts` (when not
//! 0, else [`MAX_REOPENS`]) times in a
//! row; then the source stops and its supervisor restarts it from the
//! committed position (shown on `/health`). A failed scan read stops the
//! source the same way (the restart continues after the last committed
//! chunk). Authentication and configuration errors stop it with an error
//! naming the source.

pub mod bson;
pub mod config;
mod errors;
pub mod events;
pub mod position;
pub mod scan;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use mongodb::bson::{Document, doc};
use mongodb::change_stream::ChangeStream;
use mongodb::change_stream::event::{ChangeStreamEvent, ResumeToken};
use mongodb::options::{ClientOptions, FullDocumentType};
use mongodb::{Client, Database};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

pub use config::{ConfigProblem, FullDocument, MongoSourceConfig};
use errors::ErrorClass;
use events::Converted;
use position::{Position, ScanState};
use scan::ScanMsg;
pub use scan::{MongoProbe, ScanReport, ScanStatus};

use super::{CommitSignal, Source, SourceBatch, SourceEntities, SourceError};
use crate::ingest::load::{LoadEnd, SnapshotLoad};
use crate::ingest::retry::{Backoff, RetryConfig};
use crate::model::{Change, ChangeOp};

/// The longest a change waits for more changes to join its batch while
/// events keep arriving.
pub const BATCH_DELAY: Duration = Duration::from_millis(50);

/// How long one `getMore` of an idle stream waits for events on the server.
pub const MAX_AWAIT: Duration = Duration::from_millis(250);

/// Reopens in a row after resumable errors before the source gives up (and
/// its supervisor restarts it), when `[retry] max_attempts` is 0.
pub const MAX_REOPENS: u32 = 8;

/// Chunks the scan task reads ahead of the source.
const SCAN_AHEAD: usize = 4;

type Stream = ChangeStream<ChangeStreamEvent<Document>>;

/// A MongoDB change stream as a [`Source`] (see the module documentation).
pub struct MongoSource {
    config: MongoSourceConfig,
    batch_max: usize,
    entities: Arc<dyn SourceEntities>,
    status: Arc<ScanStatus>,
    retry: RetryConfig,
}

impl MongoSource {
    /// The source `config` describes, at most `batch_max` changes per
    /// batch. `entities` names the entities a collection feeds (drops and
    /// renames of unrouted collections are skipped, only routed collections
    /// are snapshotted) and those waiting for a backfill.
    pub fn new(
        config: MongoSourceConfig,
        batch_max: usize,
        entities: Arc<dyn SourceEntities>,
    ) -> Self {
        MongoSource {
            config,
            batch_max: batch_max.max(1),
            entities,
            status: Arc::default(),
            retry: RetryConfig::default(),
        }
    }

    /// Reopen the stream after resumable errors as `retry` says (`[retry]`).
    pub fn with_retry(mut self, retry: RetryConfig) -> Self {
        self.retry = retry;
        self
    }

    /// Reopens in a row before the source stops.
    fn max_reopens(&self) -> u32 {
        match self.retry.max_attempts {
            0 => MAX_REOPENS,
            n => n,
        }
    }

    /// Report scan progress into `status` (shared across restarts).
    pub fn with_status(mut self, status: Arc<ScanStatus>) -> Self {
        self.status = status;
        self
    }

    /// The scan progress of this source.
    pub fn status(&self) -> &Arc<ScanStatus> {
        &self.status
    }

    fn is_routed(&self, collection: &str) -> bool {
        !collection.starts_with("system.") && !self.entities.routes(collection).is_empty()
    }

    /// Whether the stream reads `collection` (the configured filter).
    fn watches(&self, collection: &str) -> bool {
        self.config
            .collections
            .as_ref()
            .is_none_or(|list| list.iter().any(|c| c == collection))
    }

    /// Every routed collection the source knows of: the database's and the
    /// configured ones, sorted.
    async fn routed_collections(&self, db: &Database) -> Result<Vec<String>, SourceError> {
        let mut names: BTreeSet<String> = db
            .list_collection_names()
            .await
            .map_err(|e| self.error(format!("cannot list the collections: {e}")))?
            .into_iter()
            .collect();
        names.extend(self.config.collections.iter().flatten().cloned());
        Ok(names
            .into_iter()
            .filter(|c| self.watches(c) && self.is_routed(c))
            .collect())
    }

    /// `affected` with every routed collection that feeds an entity they
    /// feed (a load evicts per entity, so an entity is loaded whole).
    async fn with_siblings(
        &self,
        db: &Database,
        affected: &[String],
    ) -> Result<Vec<String>, SourceError> {
        let known = self.routed_collections(db).await?;
        let entities: BTreeSet<String> = affected
            .iter()
            .flat_map(|c| self.entities.routes(c))
            .collect();
        let mut out: BTreeSet<String> = affected
            .iter()
            .filter(|c| self.is_routed(c))
            .cloned()
            .collect();
        for collection in known {
            if self
                .entities
                .routes(&collection)
                .iter()
                .any(|e| entities.contains(e))
            {
                out.insert(collection);
            }
        }
        Ok(out.into_iter().collect())
    }

    /// The routed collections that feed any of `entities`.
    async fn collections_of(
        &self,
        db: &Database,
        entities: &[String],
    ) -> Result<Vec<String>, SourceError> {
        Ok(self
            .routed_collections(db)
            .await?
            .into_iter()
            .filter(|c| self.entities.routes(c).iter().any(|e| entities.contains(e)))
            .collect())
    }

    fn error(&self, reason: String) -> SourceError {
        SourceError::Read {
            source_name: self.config.name.clone(),
            reason,
        }
    }

    /// The client of the configured URI (no connection is made yet).
    async fn client(&self) -> Result<Client, SourceError> {
        let mut options = ClientOptions::parse(self.config.uri.clone())
            .await
            .map_err(|e| self.error(format!("invalid MongoDB uri: {e}")))?;
        if options.app_name.is_none() {
            options.app_name = Some("emcachers".into());
        }
        Client::with_options(options)
            .map_err(|e| self.error(format!("invalid MongoDB client options: {e}")))
    }

    /// The `$match` stage that keeps the configured collections (and the
    /// events that concern every collection).
    fn pipeline(&self) -> Vec<Document> {
        match &self.config.collections {
            None => Vec::new(),
            Some(collections) => vec![doc! {
                "$match": {"$or": [
                    {"ns.coll": {"$in": collections.clone()}},
                    {"to.coll": {"$in": collections.clone()}},
                    {"operationType": {"$in": ["dropDatabase", "invalidate"]}},
                ]}
            }],
        }
    }

    async fn open(
        &self,
        db: &Database,
        token: Option<ResumeToken>,
        start_after: bool,
    ) -> mongodb::error::Result<Stream> {
        let batch = u32::try_from(self.batch_max).unwrap_or(u32::MAX);
        let mut watch = db
            .watch()
            .pipeline(self.pipeline())
            .max_await_time(MAX_AWAIT)
            .batch_size(batch);
        watch = match token {
            Some(token) if start_after => watch.start_after(token),
            token => watch.resume_after(token),
        };
        if self.config.full_document == FullDocument::UpdateLookup {
            watch = watch.full_document(FullDocumentType::UpdateLookup);
        }
        watch.await
    }

    /// The error a stream error stops the source with.
    fn stop_error(&self, class: ErrorClass, error: &mongodb::error::Error) -> SourceError {
        let db = &self.config.database;
        match class {
            ErrorClass::HistoryLost => self.error(format!(
                "change stream history lost on database {db} (code {}): the resume token can no longer be resumed and a new stream could not be opened (the source never continues from now without a snapshot): {error}",
                errors::code(error).map_or_else(|| "?".into(), |c| c.to_string())
            )),
            ErrorClass::Config => self.error(format!(
                "cannot read database {db} (authentication or configuration): {error}"
            )),
            ErrorClass::Resumable => self.error(format!(
                "change stream on database {db} could not be reopened ({} attempts): {error}",
                self.max_reopens()
            )),
            ErrorClass::Fatal => self.error(format!("change stream on database {db}: {error}")),
        }
    }

    /// A resume token as the JSON value of a position.
    fn token_value(&self, token: &ResumeToken) -> Result<serde_json::Value, SourceError> {
        let text = bson::token_to_text(token).map_err(|e| self.error(e.to_string()))?;
        serde_json::from_str(&text).map_err(|e| self.error(format!("resume token text: {e}")))
    }

    /// Open the stream with the error the source stops with.
    async fn open_or_stop(
        &self,
        db: &Database,
        token: Option<ResumeToken>,
        start_after: bool,
    ) -> Result<Stream, SourceError> {
        self.open(db, token, start_after).await.map_err(|error| {
            let class = errors::classify(&error);
            match class {
                ErrorClass::HistoryLost | ErrorClass::Config => self.stop_error(class, &error),
                _ => self.error(format!(
                    "cannot open the change stream on database {}: {error}",
                    self.config.database
                )),
            }
        })
    }

    /// The snapshot to take when the source starts from `saved` (`None`:
    /// no position). `routed`: the routed collections now.
    async fn initial_scan(
        &self,
        db: &Database,
        saved: Option<&Position>,
        routed: Vec<String>,
    ) -> Result<Option<ScanState>, SourceError> {
        let saved = match saved {
            None => return Ok(ScanState::start(routed)),
            Some(p) if p.legacy => {
                tracing::info!(
                    "slice-1 position (a bare resume token): the routed collections are snapshotted once"
                );
                return Ok(ScanState::start(routed));
            }
            Some(p) => p,
        };
        // Collections the stream did not read before: never streamed, so
        // snapshotted now.
        let new: Vec<String> = match &saved.watched {
            None => Vec::new(),
            Some(before) => routed
                .iter()
                .filter(|c| !before.contains(c))
                .cloned()
                .collect(),
        };
        let new = if new.is_empty() {
            new
        } else {
            self.with_siblings(db, &new).await?
        };
        Ok(match saved.scan.clone() {
            Some(mut scan) => {
                for collection in new {
                    if let Some(entities) = scan.entities.as_mut() {
                        for entity in self.entities.routes(&collection) {
                            if !entities.contains(&entity) {
                                entities.push(entity);
                            }
                        }
                    }
                    if !scan.collections.contains(&collection) {
                        scan.collections.push(collection);
                    }
                }
                Some(scan)
            }
            None => ScanState::start(new),
        })
    }

    async fn stream(
        &self,
        position: Option<String>,
        out: mpsc::Sender<SourceBatch>,
        cancel: CancellationToken,
    ) -> Result<(), SourceError> {
        let saved = position
            .as_deref()
            .map(Position::parse)
            .transpose()
            .map_err(|e| self.error(e.to_string()))?;
        let token = match saved.as_ref().and_then(Position::token_text) {
            Some(text) => Some(bson::token_from_text(&text).map_err(|e| {
                self.error(format!("the saved position holds no resume token: {e}"))
            })?),
            None => None,
        };
        let client = self.client().await?;
        let db = client.database(&self.config.database);
        let opened = tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            opened = self.open(&db, token.clone(), false) => opened,
        };
        // A saved token that cannot be resumed: a new stream and a full
        // snapshot, never "continue from now".
        let mut lost = false;
        let stream = match opened {
            Ok(stream) => stream,
            Err(error)
                if token.is_some() && errors::classify(&error) == ErrorClass::HistoryLost =>
            {
                tracing::error!(code = ?errors::code(&error), %error,
                    "the saved resume token cannot be resumed (history lost): a new change stream and a snapshot of every routed collection");
                lost = true;
                self.status.resnapshots.fetch_add(1, Ordering::Relaxed);
                self.open_or_stop(&db, None, false).await?
            }
            Err(error) => {
                let class = errors::classify(&error);
                return Err(match class {
                    ErrorClass::HistoryLost | ErrorClass::Config => self.stop_error(class, &error),
                    _ => self.error(format!(
                        "cannot open the change stream on database {}: {error}",
                        self.config.database
                    )),
                });
            }
        };
        tracing::info!(resumed = saved.is_some() && !lost, collections = ?self.config.collections,
            full_document = ?self.config.full_document, "change stream open");
        self.status.opened();
        let sent = Position {
            token: match (&saved, lost) {
                (Some(p), false) => p.token.clone(),
                _ => None,
            },
            watched: self.config.collections.clone(),
            scan: None,
            legacy: false,
        };
        let routed = self.routed_collections(&db).await?;
        let resumes = !lost && saved.as_ref().is_some_and(|p| p.scan.is_some());
        let initial = if lost {
            ScanState::start(routed)
        } else {
            self.initial_scan(&db, saved.as_ref(), routed).await?
        };
        let mut run = Run {
            src: self,
            token: stream.resume_token().or(token),
            db,
            out,
            cancel,
            sent,
            saved_at: Instant::now(),
            pending: Vec::new(),
            pending_since: Instant::now(),
            load: None,
            changed: self.entities.changed(),
            last_end: None,
            // Entities left pending by an earlier run are backfilled once
            // the load this run starts with (if any) has ended.
            recheck: true,
        };
        let started = match initial {
            // The stream is open: its token is the position before the scan.
            // A scan of the saved position resumes: its committed chunks
            // count, so the load keeps its start.
            Some(state) => run.begin_load(state, !resumes).await?,
            // The first token (and the watched collections) are saved at
            // once, so a restart resumes from here instead of "now" again.
            None => {
                // Nothing to load: the source's data has landed as it is.
                if self.status.ready_mark.load(Ordering::Relaxed) < 0 {
                    self.status.ready_mark.store(0, Ordering::Relaxed);
                }
                let token = run.token.clone();
                run.send_changes(Vec::new(), token).await?
            }
        };
        if !started {
            return Ok(());
        }
        run.run(stream).await
    }

    /// Reopen the stream from `token` after a resumable failure, with
    /// backoff, at most [`MAX_REOPENS`] times; `None` when cancelled.
    async fn reopen(
        &self,
        db: &Database,
        token: &Option<ResumeToken>,
        backoff: &mut Backoff,
        cancel: &CancellationToken,
    ) -> Result<Option<Stream>, SourceError> {
        if token.is_none() {
            tracing::warn!("no resume token yet: the reopened stream starts from now");
        }
        self.status.connected.store(false, Ordering::Relaxed);
        let max = self.max_reopens();
        for attempt in 1..=max {
            let wait = backoff.next_wait();
            tracing::info!(
                attempt,
                retry_in_ms = wait.as_millis() as u64,
                "reopening the change stream"
            );
            tokio::select! {
                _ = cancel.cancelled() => return Ok(None),
                _ = tokio::time::sleep(wait) => {}
            }
            let reopened = tokio::select! {
                _ = cancel.cancelled() => return Ok(None),
                reopened = self.open(db, token.clone(), false) => reopened,
            };
            match reopened {
                Ok(stream) => {
                    tracing::info!(attempt, "change stream reopened");
                    self.status.opened();
                    return Ok(Some(stream));
                }
                Err(error) => {
                    let class = errors::classify(&error);
                    if class != ErrorClass::Resumable || attempt == max {
                        let stop = self.stop_error(class, &error);
                        tracing::error!(class = ?class, code = ?errors::code(&error), attempt, error = %stop, "change stream stops");
                        return Err(stop);
                    }
                    tracing::warn!(code = ?errors::code(&error), %error, attempt,
                        "reopening the change stream failed");
                }
            }
        }
        Err(self.error(format!(
            "the change stream on database {} could not be reopened",
            self.config.database
        )))
    }
}

#[async_trait]
impl Source for MongoSource {
    fn name(&self) -> &str {
        &self.config.name
    }

    async fn run(
        &mut self,
        position: Option<String>,
        out: mpsc::Sender<SourceBatch>,
        cancel: CancellationToken,
    ) -> Result<(), SourceError> {
        let span = tracing::info_span!("mongo_source", source = %self.config.name,
            database = %self.config.database);
        let result = self.stream(position, out, cancel).instrument(span).await;
        // Shown on `/health` and `/ready` until the stream opens again.
        self.status
            .stopped(result.as_ref().err().map(ToString::to_string));
        result
    }
}

/// A load under way: its batches and the scan task reading for it.
struct Load {
    snapshot: SnapshotLoad,
    rx: mpsc::Receiver<ScanMsg>,
    task: tokio::task::JoinHandle<()>,
    /// The scan read everything; `end` waits for the stream to pass it.
    done: bool,
    /// The server's operation time once the scan was done: an event after
    /// it shows that the stream has passed the snapshot's end (a stream
    /// that is never idle never shows it with an empty `getMore`).
    end_time: Option<mongodb::bson::Timestamp>,
}

impl Drop for Load {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One run of the source: the stream's state, the load under way and the
/// position last sent.
struct Run<'a> {
    src: &'a MongoSource,
    db: Database,
    out: mpsc::Sender<SourceBatch>,
    cancel: CancellationToken,
    /// The latest token read.
    token: Option<ResumeToken>,
    /// The position of the last batch sent: every batch carries the
    /// latest token and scan progress sent, in the order sent.
    sent: Position,
    /// When a batch last carried a new token.
    saved_at: Instant,
    pending: Vec<Change>,
    pending_since: Instant,
    load: Option<Load>,
    /// Entity changes: a new pending entity is backfilled.
    changed: tokio::sync::watch::Receiver<u64>,
    /// The commit of the last load's end: until it fires the loaded
    /// entities may still read as pending.
    last_end: Option<tokio::sync::watch::Receiver<Option<i64>>>,
    /// Look for pending entities even without a new entity change.
    recheck: bool,
}

impl Run<'_> {
    /// Send `batch` with the position: `token` when given (else the last
    /// sent one) and the scan progress. `false` when cancelled.
    async fn send(
        &mut self,
        mut batch: SourceBatch,
        token: Option<ResumeToken>,
    ) -> Result<bool, SourceError> {
        if let Some(token) = &token {
            self.sent.token = Some(self.src.token_value(token)?);
            self.saved_at = Instant::now();
        }
        batch.position = Some(self.sent.text());
        tokio::select! {
            _ = self.cancel.cancelled() => Ok(false),
            sent = self.out.send(batch) => match sent {
                Ok(()) => Ok(true),
                Err(_) => Err(SourceError::Closed(self.src.config.name.clone())),
            }
        }
    }

    async fn send_changes(
        &mut self,
        changes: Vec<Change>,
        token: Option<ResumeToken>,
    ) -> Result<bool, SourceError> {
        let batch = SourceBatch {
            source: self.src.config.name.clone(),
            changes,
            ..SourceBatch::default()
        };
        self.send(batch, token).await
    }

    /// Send the pending changes with the latest token.
    async fn flush(&mut self) -> Result<bool, SourceError> {
        if self.pending.is_empty() {
            return Ok(true);
        }
        let changes = std::mem::take(&mut self.pending);
        let token = self.token.clone();
        self.send_changes(changes, token).await
    }

    /// Begin a load of `state` (replacing a load under way, whose scan
    /// stops) and start its scan task. Pending changes are sent first.
    async fn begin_load(&mut self, state: ScanState, anew: bool) -> Result<bool, SourceError> {
        if !self.flush().await? {
            return Ok(false);
        }
        self.load = None;
        let name = self.src.config.name.clone();
        let mut snapshot = SnapshotLoad::new(name.clone(), state.collections.clone());
        match &state.entities {
            Some(entities) => snapshot = snapshot.only(entities.clone()),
            // A snapshot of every entity of the collections: not landed
            // until it ends (a backfill leaves the others' readiness as is).
            None => self.src.status.ready_mark.store(-1, Ordering::Relaxed),
        }
        self.sent.scan = Some(state.clone());
        let token = self.token.clone();
        let begin = if anew {
            snapshot.begin_anew()
        } else {
            snapshot.begin()
        };
        if !self.send(begin, token).await? {
            return Ok(false);
        }
        tracing::info!(collections = ?state.collections, entities = ?state.entities,
            current = %state.current, resumed_after = ?state.after, "snapshot load begun");
        let (tx, rx) = mpsc::channel(SCAN_AHEAD);
        let task = tokio::spawn(
            scan::run(
                self.db.clone(),
                name,
                state,
                self.src.config.scan_chunk.max(1),
                self.src.status.clone(),
                tx,
            )
            .in_current_span(),
        );
        self.load = Some(Load {
            snapshot,
            rx,
            task,
            done: false,
            end_time: None,
        });
        Ok(true)
    }

    /// Snapshot `collections` again, for every entity they feed (with the
    /// collections and entities of a load under way).
    async fn resnapshot(&mut self, collections: Vec<String>) -> Result<bool, SourceError> {
        let under_way = self.load.as_ref().map(|l| {
            (
                l.snapshot.collections().to_vec(),
                l.snapshot.entities().map(<[String]>::to_vec),
            )
        });
        let mut all: Vec<String> = Vec::new();
        // A backfill under way names its entities: the merged load names
        // them and every entity of the re-snapshotted collections.
        let mut entities: Option<Vec<String>> = None;
        if let Some((loading, targets)) = under_way {
            all = loading;
            if let Some(mut targets) = targets {
                for collection in &collections {
                    for entity in self.src.entities.routes(collection) {
                        if !targets.contains(&entity) {
                            targets.push(entity);
                        }
                    }
                }
                entities = Some(targets);
            }
        }
        for collection in collections {
            if !all.contains(&collection) {
                all.push(collection);
            }
        }
        match ScanState::start(all) {
            Some(mut state) => {
                state.entities = entities;
                self.begin_load(state, true).await
            }
            None => Ok(true),
        }
    }

    /// Backfill the entities waiting for a load (created on the running
    /// source, or a recreate asked for), alone: their collections are
    /// scanned while the stream serves the others. Done between loads: an
    /// entity that becomes pending during one waits for its end (its stream
    /// rows are staged meanwhile).
    async fn backfill_pending(&mut self) -> Result<bool, SourceError> {
        if self.load.is_some() {
            return Ok(true);
        }
        if let Some(end) = &self.last_end {
            let Some(head) = *end.borrow() else {
                return Ok(true);
            };
            // The caches must reach the load's end for its data to count
            // as landed.
            let status = &self.src.status;
            if status.ready_mark.load(Ordering::Relaxed) < 0 {
                status.ready_mark.store(head, Ordering::Relaxed);
            }
            self.last_end = None;
            self.recheck = true;
        }
        let woke = self.changed.has_changed().unwrap_or(false);
        if !(woke || self.recheck) {
            return Ok(true);
        }
        self.changed.borrow_and_update();
        self.recheck = false;
        let entities = self.src.entities.pending();
        if entities.is_empty() {
            return Ok(true);
        }
        let collections = self.src.collections_of(&self.db, &entities).await?;
        tracing::info!(entities = ?entities, collections = ?collections, "backfill of pending entities");
        self.src.status.backfills.fetch_add(1, Ordering::Relaxed);
        match ScanState::start(collections) {
            Some(mut state) => {
                state.entities = Some(entities);
                self.begin_load(state, true).await
            }
            None => {
                // Nothing to read yet (no routed collection exists): the
                // load begins and ends at once, and the entities are ready.
                let load =
                    SnapshotLoad::new(self.src.config.name.clone(), Vec::new()).only(entities);
                let token = self.token.clone();
                if !self.send(load.begin_anew(), token.clone()).await? {
                    return Ok(false);
                }
                let (signal, fired) = CommitSignal::new();
                self.last_end = Some(fired);
                let end = load.end(LoadEnd {
                    complete: true,
                    position: None,
                    committed: Some(signal),
                });
                self.send(end, token).await
            }
        }
    }

    /// Send the chunks the scan task has read so far, each a page with the
    /// scan's progress.
    async fn drain_scan(&mut self) -> Result<bool, SourceError> {
        loop {
            let Some(load) = self.load.as_mut() else {
                return Ok(true);
            };
            if load.done {
                return Ok(true);
            }
            let message = match load.rx.try_recv() {
                Ok(message) => message,
                Err(mpsc::error::TryRecvError::Empty) => return Ok(true),
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    return Err(self
                        .src
                        .error("the snapshot scan task ended unexpectedly".into()));
                }
            };
            match message {
                ScanMsg::Chunk {
                    collection,
                    after,
                    changes,
                } => {
                    let batch = load.snapshot.page(changes);
                    if let Some(scan) = self.sent.scan.as_mut() {
                        scan.current = collection;
                        scan.after = Some(after);
                    }
                    if !self.send(batch, None).await? {
                        return Ok(false);
                    }
                }
                ScanMsg::Done => {
                    load.done = true;
                    tracing::info!(collections = ?load.snapshot.collections(),
                        "snapshot scan done; the load ends once the stream has passed it");
                    let end_time = operation_time(&self.db).await;
                    if let Some(load) = self.load.as_mut() {
                        load.end_time = end_time;
                    }
                }
                ScanMsg::Failed(error) => {
                    return Err(self.src.error(format!(
                        "snapshot scan of database {} failed (a restart continues after the last committed chunk): {error}",
                        self.src.config.database
                    )));
                }
            }
        }
    }

    /// End the load (the scan is done and the stream has passed it):
    /// evict, move the staged rows, mark the entities ready.
    async fn end_load(&mut self) -> Result<bool, SourceError> {
        if !self.flush().await? {
            return Ok(false);
        }
        let Some(load) = self.load.take() else {
            return Ok(true);
        };
        self.sent.scan = None;
        let (signal, fired) = CommitSignal::new();
        self.last_end = Some(fired);
        let batch = load.snapshot.end(LoadEnd {
            complete: true,
            position: None,
            committed: Some(signal),
        });
        let status = &self.src.status;
        status.scanning.store(false, Ordering::Relaxed);
        status.completed.fetch_add(1, Ordering::Relaxed);
        tracing::info!(collections = ?load.snapshot.collections(),
            scanned = status.scanned.load(Ordering::Relaxed), "snapshot load ends");
        let token = self.token.clone();
        self.send(batch, token).await
    }

    /// A partial change of a collection being scanned becomes an upsert of
    /// the document looked up now (or nothing when it is gone: its delete
    /// follows in the stream): the scan may have read the document before
    /// the update but not committed it yet, so the partial would have no
    /// row to merge onto. Later events apply on top of the looked-up
    /// document, as with `full_document = "updateLookup"`.
    async fn during_scan(
        &self,
        mut change: Change,
        key: Option<mongodb::bson::Bson>,
    ) -> Result<Option<Change>, SourceError> {
        let scanning = self
            .load
            .as_ref()
            .is_some_and(|l| l.snapshot.collections().contains(&change.collection));
        let Some(id) = key.filter(|_| scanning && change.op == ChangeOp::Partial) else {
            return Ok(Some(change));
        };
        let found = self
            .db
            .collection::<Document>(&change.collection)
            .find_one(doc! {"_id": id})
            .await
            .map_err(|e| {
                self.src.error(format!(
                    "looking up {}.{} id {} during a snapshot: {e}",
                    self.src.config.database, change.collection, change.id
                ))
            })?;
        Ok(found.map(|doc| {
            change.op = ChangeOp::Upsert;
            change.document = Some(bson::document_text(&doc));
            change
        }))
    }

    /// After a lost history: a new stream from now and a snapshot of every
    /// routed collection. `None` when cancelled.
    async fn after_lost_history(
        &mut self,
        error: &mongodb::error::Error,
    ) -> Result<Option<Stream>, SourceError> {
        tracing::error!(code = ?errors::code(error), %error,
            "change stream history lost: a new change stream and a snapshot of every routed collection (never \"continue from now\")");
        self.src.status.resnapshots.fetch_add(1, Ordering::Relaxed);
        let stream = tokio::select! {
            _ = self.cancel.cancelled() => return Ok(None),
            opened = self.src.open_or_stop(&self.db, None, false) => opened?,
        };
        self.token = stream.resume_token();
        let all = self.src.routed_collections(&self.db).await?;
        if !self.resnapshot(all).await? {
            return Ok(None);
        }
        Ok(Some(stream))
    }

    async fn run(mut self, mut stream: Stream) -> Result<(), SourceError> {
        let src = self.src;
        let mut backoff = Backoff::new(&src.retry);
        let persist_every = Duration::from_millis(src.config.token_persist_ms);
        let is_routed = |collection: &str| src.is_routed(collection);
        loop {
            // Decided before the read: a `getMore` issued after the scan
            // finished that comes back empty means the stream has passed
            // the snapshot's end.
            let end_ready = self.load.as_ref().is_some_and(|l| l.done);
            let next = tokio::select! {
                biased;
                _ = self.cancel.cancelled() => return Ok(()),
                next = stream.next_if_any() => next,
            };
            match next {
                Ok(Some(event)) => {
                    backoff = Backoff::new(&src.retry);
                    let event_token = event.id.clone();
                    // An event after the time the scan was done: every
                    // change before the snapshot's end has been read.
                    let passed_end = match (&self.load, event.cluster_time) {
                        (
                            Some(Load {
                                done: true,
                                end_time: Some(end),
                                ..
                            }),
                            Some(at),
                        ) => (at.time, at.increment) > (end.time, end.increment),
                        _ => false,
                    };
                    let key = event
                        .document_key
                        .as_ref()
                        .and_then(|k| k.get("_id"))
                        .cloned();
                    match events::convert(
                        &src.config.name,
                        event,
                        src.config.full_document,
                        &is_routed,
                    ) {
                        Converted::Change(change) => {
                            if let Some(change) = self.during_scan(change, key).await? {
                                if self.pending.is_empty() {
                                    self.pending_since = Instant::now();
                                }
                                self.pending.push(change);
                            }
                        }
                        Converted::Skip(what) => {
                            tracing::info!(event = %what, "change stream event skipped");
                        }
                        Converted::Stop(why) => {
                            // The changes before the event are committed;
                            // the event itself never is.
                            self.flush().await?;
                            tracing::error!(reason = %why, "change stream stops");
                            return Err(src.error(why));
                        }
                        Converted::Resnapshot {
                            collections,
                            reason,
                            invalidate,
                        } => {
                            // The changes before the event, with the token
                            // before it; the re-snapshot's begin with the
                            // token after it.
                            if !self.flush().await? {
                                return Ok(());
                            }
                            if invalidate {
                                stream = src
                                    .open_or_stop(&self.db, Some(event_token.clone()), true)
                                    .await?;
                            }
                            self.token = Some(stream.resume_token().unwrap_or(event_token));
                            let targets = if collections.is_empty() {
                                src.routed_collections(&self.db).await?
                            } else {
                                src.with_siblings(&self.db, &collections).await?
                            };
                            src.status.resnapshots.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(%reason, collections = ?targets,
                                "re-snapshot of the affected collections");
                            if !self.resnapshot(targets).await? {
                                return Ok(());
                            }
                            if !self.drain_scan().await? {
                                return Ok(());
                            }
                            continue;
                        }
                    }
                    self.token = Some(stream.resume_token().unwrap_or(event_token));
                    if passed_end {
                        // This event's change is staged with the others
                        // (`end_load` flushes first), then the load ends.
                        if !self.end_load().await? {
                            return Ok(());
                        }
                        continue;
                    }
                    if (self.pending.len() >= src.batch_max
                        || self.pending_since.elapsed() >= BATCH_DELAY)
                        && !self.flush().await?
                    {
                        return Ok(());
                    }
                }
                Ok(None) if !stream.is_alive() => {
                    // The server closed the cursor without an event saying
                    // why: reopen from the token, like a resumable error.
                    tracing::warn!(
                        has_token = self.token.is_some(),
                        "change stream cursor closed; reopening from the last token"
                    );
                    match src
                        .reopen(&self.db, &self.token, &mut backoff, &self.cancel)
                        .await?
                    {
                        Some(reopened) => stream = reopened,
                        None => return Ok(()),
                    }
                }
                Ok(None) => {
                    backoff = Backoff::new(&src.retry);
                    if let Some(latest) = stream.resume_token() {
                        self.token = Some(latest);
                    }
                    if end_ready {
                        if !self.end_load().await? {
                            return Ok(());
                        }
                    } else if let Some(latest) = self.token.clone() {
                        let value = src.token_value(&latest)?;
                        let due = !self.pending.is_empty()
                            || (self.sent.token.as_ref() != Some(&value)
                                && self.saved_at.elapsed() >= persist_every);
                        if due {
                            let changes = std::mem::take(&mut self.pending);
                            let idle = changes.is_empty();
                            if !self.send_changes(changes, Some(latest)).await? {
                                return Ok(());
                            }
                            if idle {
                                tracing::debug!("idle change stream: token saved");
                            }
                        }
                    }
                }
                Err(error) => {
                    // What was read before the error is sent first.
                    if !self.flush().await? {
                        return Ok(());
                    }
                    let class = errors::classify(&error);
                    if class == ErrorClass::HistoryLost {
                        match self.after_lost_history(&error).await? {
                            Some(reopened) => stream = reopened,
                            None => return Ok(()),
                        }
                    } else if class != ErrorClass::Resumable {
                        let stop = src.stop_error(class, &error);
                        tracing::error!(class = ?class, code = ?errors::code(&error), error = %stop, "change stream stops");
                        return Err(stop);
                    } else {
                        tracing::warn!(code = ?errors::code(&error), %error, has_token = self.token.is_some(),
                            "change stream failed; reopening from the last token");
                        match src
                            .reopen(&self.db, &self.token, &mut backoff, &self.cancel)
                            .await?
                        {
                            Some(reopened) => stream = reopened,
                            None => return Ok(()),
                        }
                    }
                }
            }
            if !self.drain_scan().await? || !self.backfill_pending().await? {
                return Ok(());
            }
        }
    }
}

/// The server's operation time now (a `ping`'s `operationTime`); `None`
/// when it does not say (then only an empty `getMore` ends a load).
async fn operation_time(db: &Database) -> Option<mongodb::bson::Timestamp> {
    match db.run_command(doc! {"ping": 1_i32}).await {
        Ok(reply) => reply.get_timestamp("operationTime").ok(),
        Err(error) => {
            tracing::debug!(%error, "no operation time: the load ends on an idle stream");
            None
        }
    }
}
