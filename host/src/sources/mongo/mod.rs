//! The MongoDB source: one change stream on a database
//! (`[[sources]] kind = "mongo"`).
//!
//! - [`config`]: [`MongoSourceConfig`] (`name`, `uri`, `database`,
//!   `collections`, `full_document`, `token_persist_ms`).
//! - [`bson`]: BSON → JSON (relaxed Extended JSON), document ids as strings,
//!   resume tokens as text — documented behaviour.
//! - `events`: change events → host changes (insert / replace → upsert,
//!   delete → delete, update → partial, or upsert with `updateLookup`;
//!   drop / rename / dropDatabase / invalidate stop the source).
//! - `errors`: what a driver error means (history lost, resumable,
//!   configuration, fatal).
//!
//! # Position
//!
//! The source position is the resume token, as Extended JSON text
//! ([`bson::token_to_text`]). [`MongoSource::run`] opens `db.watch()` with
//! `resumeAfter` = the position the pipeline passes (the last committed
//! one), or from the current time when there is none; right after opening
//! without a position it sends an empty batch carrying the stream's first
//! token, so a restart resumes from there instead of "now" again. Each batch
//! of changes carries the token after its last event, and the pipeline
//! commits it with the batch's rows in one transaction: after a crash the
//! stream resumes exactly after the last committed change.
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
//! out of the server's oplog window.
//!
//! # Failures
//!
//! The driver resumes once by itself on resumable errors. One that still
//! reaches the source (`errors::ErrorClass::Resumable`) is retried by
//! reopening the stream from the last token, with backoff
//! ([`crate::ingest::retry::Backoff`]), at most [`MAX_REOPENS`] times in a
//! row; then the source stops and its supervisor restarts it from the
//! committed token (shown on `/health`). A lost history (286, 260, 280,
//! 136) stops the source with an error saying so: this slice has no
//! snapshot to recover with, and it never continues from "now". A drop,
//! rename, dropDatabase or invalidate event stops it the same way (after
//! sending the changes before it), naming the event and collection; the
//! supervisor's restarts meet the same event again, so the entities never
//! silently go stale. Authentication and configuration errors stop it with
//! an error naming the source.

pub mod bson;
pub mod config;
mod errors;
pub mod events;

use std::sync::Arc;
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

use super::{Source, SourceBatch, SourceError};
use crate::ingest::retry::Backoff;
use crate::model::Change;

/// The longest a change waits for more changes to join its batch while
/// events keep arriving.
pub const BATCH_DELAY: Duration = Duration::from_millis(50);

/// How long one `getMore` of an idle stream waits for events on the server.
pub const MAX_AWAIT: Duration = Duration::from_millis(250);

/// Reopens in a row after resumable errors before the source gives up (and
/// its supervisor restarts it).
pub const MAX_REOPENS: u32 = 8;

/// Whether an entity is fed by a collection of this source (drops and
/// renames of other collections do not stop the source).
pub type Routed = Arc<dyn Fn(&str) -> bool + Send + Sync>;

type Stream = ChangeStream<ChangeStreamEvent<Document>>;

/// A MongoDB change stream as a [`Source`] (see the module documentation).
pub struct MongoSource {
    config: MongoSourceConfig,
    batch_max: usize,
    routed: Routed,
}

impl MongoSource {
    /// The source `config` describes, at most `batch_max` changes per
    /// batch. `routed` tells whether an entity is fed by a collection; with
    /// `None` every collection counts as routed.
    pub fn new(config: MongoSourceConfig, batch_max: usize, routed: Option<Routed>) -> Self {
        MongoSource {
            config,
            batch_max: batch_max.max(1),
            routed: routed.unwrap_or_else(|| Arc::new(|_: &str| true)),
        }
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
    ) -> mongodb::error::Result<Stream> {
        let batch = u32::try_from(self.batch_max).unwrap_or(u32::MAX);
        let mut watch = db
            .watch()
            .pipeline(self.pipeline())
            .max_await_time(MAX_AWAIT)
            .batch_size(batch)
            .resume_after(token);
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
                "change stream history lost on database {db} (code {}): the saved resume token can no longer be resumed; the snapshot slice will re-snapshot, the source does not continue from now: {error}",
                errors::code(error).map_or_else(|| "?".into(), |c| c.to_string())
            )),
            ErrorClass::Config => self.error(format!(
                "cannot read database {db} (authentication or configuration): {error}"
            )),
            ErrorClass::Resumable => self.error(format!(
                "change stream on database {db} could not be reopened ({MAX_REOPENS} attempts): {error}"
            )),
            ErrorClass::Fatal => self.error(format!("change stream on database {db}: {error}")),
        }
    }

    async fn send(
        &self,
        out: &mpsc::Sender<SourceBatch>,
        cancel: &CancellationToken,
        changes: Vec<Change>,
        position: String,
    ) -> Result<bool, SourceError> {
        let batch = SourceBatch {
            source: self.config.name.clone(),
            changes,
            position: Some(position),
            ..SourceBatch::default()
        };
        tokio::select! {
            _ = cancel.cancelled() => Ok(false),
            sent = out.send(batch) => match sent {
                Ok(()) => Ok(true),
                Err(_) => Err(SourceError::Closed(self.config.name.clone())),
            }
        }
    }

    fn token_text(&self, token: &ResumeToken) -> Result<String, SourceError> {
        bson::token_to_text(token).map_err(|e| self.error(e.to_string()))
    }

    async fn stream(
        &self,
        position: Option<String>,
        out: mpsc::Sender<SourceBatch>,
        cancel: CancellationToken,
    ) -> Result<(), SourceError> {
        let mut token = match position.as_deref() {
            Some(text) => Some(bson::token_from_text(text).map_err(|e| {
                self.error(format!("the saved position is not a resume token: {e}"))
            })?),
            None => None,
        };
        let client = self.client().await?;
        let db = client.database(&self.config.database);
        let opened = tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            opened = self.open(&db, token.clone()) => opened,
        };
        let mut stream = opened.map_err(|error| {
            let class = errors::classify(&error);
            match class {
                ErrorClass::HistoryLost | ErrorClass::Config => self.stop_error(class, &error),
                _ => self.error(format!(
                    "cannot open the change stream on database {}: {error}",
                    self.config.database
                )),
            }
        })?;
        tracing::info!(resumed = position.is_some(), collections = ?self.config.collections,
            full_document = ?self.config.full_document, "change stream open");
        // The position saved last (or sent to be saved).
        let mut saved = position;
        let mut saved_at = Instant::now();
        if saved.is_none()
            && let Some(first) = stream.resume_token()
        {
            let text = self.token_text(&first)?;
            if !self.send(&out, &cancel, Vec::new(), text.clone()).await? {
                return Ok(());
            }
            token = Some(first);
            saved = Some(text);
            saved_at = Instant::now();
        }
        let mut pending: Vec<Change> = Vec::new();
        let mut pending_since = Instant::now();
        let mut backoff = Backoff::default();
        let persist_every = Duration::from_millis(self.config.token_persist_ms);
        loop {
            let next = tokio::select! {
                biased;
                _ = cancel.cancelled() => return Ok(()),
                next = stream.next_if_any() => next,
            };
            match next {
                Ok(Some(event)) => {
                    backoff = Backoff::default();
                    let event_token = event.id.clone();
                    match events::convert(
                        &self.config.name,
                        event,
                        self.config.full_document,
                        &*self.routed,
                    ) {
                        Converted::Change(change) => {
                            if pending.is_empty() {
                                pending_since = Instant::now();
                            }
                            pending.push(change);
                        }
                        Converted::Skip(what) => {
                            tracing::info!(event = %what, "change stream event skipped");
                        }
                        Converted::Stop(why) => {
                            // The changes before the event are committed;
                            // the event itself never is, so every restart
                            // meets it again.
                            if !pending.is_empty()
                                && let Some(before) = &token
                            {
                                let text = self.token_text(before)?;
                                self.send(&out, &cancel, std::mem::take(&mut pending), text)
                                    .await?;
                            }
                            tracing::error!(reason = %why, "change stream stops");
                            return Err(self.error(why));
                        }
                    }
                    token = Some(stream.resume_token().unwrap_or(event_token));
                    if (pending.len() >= self.batch_max || pending_since.elapsed() >= BATCH_DELAY)
                        && let Some(after) = &token
                    {
                        let text = self.token_text(after)?;
                        if !self
                            .send(&out, &cancel, std::mem::take(&mut pending), text.clone())
                            .await?
                        {
                            return Ok(());
                        }
                        saved = Some(text);
                        saved_at = Instant::now();
                    }
                }
                Ok(None) if !stream.is_alive() => {
                    // The server closed the cursor without an event saying
                    // why: reopen from the token, like a resumable error.
                    tracing::warn!(
                        has_token = token.is_some(),
                        "change stream cursor closed; reopening from the last token"
                    );
                    match self.reopen(&db, &token, &mut backoff, &cancel).await? {
                        Some(reopened) => stream = reopened,
                        None => return Ok(()),
                    }
                }
                Ok(None) => {
                    backoff = Backoff::default();
                    if let Some(latest) = stream.resume_token() {
                        token = Some(latest);
                    }
                    let Some(latest) = &token else { continue };
                    let text = self.token_text(latest)?;
                    let due = !pending.is_empty()
                        || (saved.as_deref() != Some(text.as_str())
                            && saved_at.elapsed() >= persist_every);
                    if due {
                        let changes = std::mem::take(&mut pending);
                        let idle = changes.is_empty();
                        if !self.send(&out, &cancel, changes, text.clone()).await? {
                            return Ok(());
                        }
                        if idle {
                            tracing::debug!("idle change stream: token saved");
                        }
                        saved = Some(text);
                        saved_at = Instant::now();
                    }
                }
                Err(error) => {
                    // What was read before the error is sent first.
                    if !pending.is_empty()
                        && let Some(after) = &token
                    {
                        let text = self.token_text(after)?;
                        if !self
                            .send(&out, &cancel, std::mem::take(&mut pending), text.clone())
                            .await?
                        {
                            return Ok(());
                        }
                        saved = Some(text);
                        saved_at = Instant::now();
                    }
                    let class = errors::classify(&error);
                    if class != ErrorClass::Resumable {
                        let stop = self.stop_error(class, &error);
                        tracing::error!(class = ?class, code = ?errors::code(&error), error = %stop, "change stream stops");
                        return Err(stop);
                    }
                    tracing::warn!(code = ?errors::code(&error), %error, has_token = token.is_some(),
                        "change stream failed; reopening from the last token");
                    match self.reopen(&db, &token, &mut backoff, &cancel).await? {
                        Some(reopened) => stream = reopened,
                        None => return Ok(()),
                    }
                }
            }
        }
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
        for attempt in 1..=MAX_REOPENS {
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
                reopened = self.open(db, token.clone()) => reopened,
            };
            match reopened {
                Ok(stream) => {
                    tracing::info!(attempt, "change stream reopened");
                    return Ok(Some(stream));
                }
                Err(error) => {
                    let class = errors::classify(&error);
                    if class != ErrorClass::Resumable || attempt == MAX_REOPENS {
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
        self.stream(position, out, cancel).instrument(span).await
    }
}
