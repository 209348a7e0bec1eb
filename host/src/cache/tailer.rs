//! The one tail of the oplog that every cache writer runs.
//!
//! A cache backend (Redis, the per-entity SQLite databases, the in-process
//! map) implements [`CacheWriter`]: what it does with a batch of log entries,
//! how it brings its own state in line (its saved offset, a bootstrap), what
//! it does when layouts change and when it is caught up. [`Tailer`] owns
//! everything else, the same for every backend:
//!
//! - **reading the log** after the writer's position, `batch_size` entries
//!   at a time, and the [`StepReport`] of each step;
//! - **waking**: back to back while there is a backlog; caught up, it waits
//!   for a commit of this process's store ([`OplogStore::commits`]), a layout
//!   change pushed by the entity manager ([`Layouts`]), or the poll interval
//!   (other processes' commits), whichever comes first;
//! - **layouts**: changes are pushed, never polled; the tailer tells the
//!   writer which entities' layouts changed (all of them on a full step);
//! - **failures**: a failed step is retried with backoff (doubling from
//!   `backoff_min` to `backoff_max`); with a circuit breaker, failures of
//!   the target count on it and while it is open the tailer waits for it;
//! - **paging** through an entity's latest rows for bootstraps and rebuilds
//!   ([`LatestPages`]).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::layout::{LayoutMap, Layouts};
use crate::breaker::{BreakerState, CircuitBreaker};
use crate::oplog::{LatestRow, OplogEntry, OplogStore, StoreError};

/// Why a step wrote nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Waiting {
    /// Another owner holds the writer lock.
    Lock,
    /// The circuit breaker is open.
    Breaker {
        /// How long until it lets a trial call through.
        retry_in: Duration,
    },
}

/// Counters of one step of a cache writer (or the sum of several, see
/// [`Tailer::catch_up`]). Every backend fills the counters that apply to it.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct StepReport {
    /// Log entries read.
    pub read: usize,
    /// Upsert rows applied.
    pub upserted: usize,
    /// Delete rows applied.
    pub deleted: usize,
    /// Rows not written now: already applied (SQLite), or of entities that
    /// wait for a plugin or a layout (rebuilt from their latest rows once
    /// they have one).
    pub skipped: usize,
    /// Rows the writer could not apply, committed as rejected records.
    pub dead_lettered: usize,
    /// Entries of entities out of the writer's scope (only the offset moved
    /// past them).
    pub ignored: usize,
    /// Keys set (key-value caches).
    pub keys_written: u64,
    /// Keys deleted (key-value caches).
    pub keys_deleted: u64,
    /// Entity caches rebuilt (new layout, new database, new version).
    pub rebuilt: usize,
    /// Entity groups (or retries) that failed; their entities are retried
    /// on their own while the others go on.
    pub failed: usize,
    /// Failing entities that caught up and rejoined.
    pub recovered: usize,
    /// Whether the whole cache was bootstrapped from the latest rows.
    pub bootstrapped: bool,
    /// The offset after the step: every entry up to it is applied,
    /// dead-lettered or held for a retry.
    pub offset: i64,
    /// Set when the step could not write.
    pub waiting: Option<Waiting>,
}

impl StepReport {
    /// Add another step's counters; the offset and the waiting state are
    /// the later step's.
    pub fn add(&mut self, other: &StepReport) {
        self.add_counts(other);
        self.read += other.read;
        self.bootstrapped |= other.bootstrapped;
        self.offset = other.offset;
        self.waiting = other.waiting;
    }

    /// Add the row counters of `other` (not `read`, the offset or the
    /// waiting state).
    pub fn add_counts(&mut self, other: &StepReport) {
        self.upserted += other.upserted;
        self.deleted += other.deleted;
        self.skipped += other.skipped;
        self.dead_lettered += other.dead_lettered;
        self.ignored += other.ignored;
        self.keys_written += other.keys_written;
        self.keys_deleted += other.keys_deleted;
        self.rebuilt += other.rebuilt;
        self.failed += other.failed;
        self.recovered += other.recovered;
    }
}

/// What a backend's error tells the tailer.
pub trait WriterError: std::error::Error + Send + Sync + 'static {
    /// Whether the cache target failed (counts on the circuit breaker).
    fn target_failed(&self) -> bool;
    /// Set when the error only means the writer may not write now (e.g. it
    /// lost its lock): the step reports `waiting` instead of failing.
    fn waiting(&self) -> Option<Waiting> {
        None
    }
}

/// What one step gives a backend.
pub struct StepContext<'a> {
    /// The oplog.
    pub store: &'a Arc<dyn OplogStore>,
    /// The published layouts at this step.
    pub layouts: &'a Arc<LayoutMap>,
    /// The step's counters.
    pub report: &'a mut StepReport,
}

/// What a cache backend does with the oplog; [`Tailer`] drives it. See the
/// module documentation for what the tailer owns.
#[async_trait]
pub trait CacheWriter: Send + 'static {
    /// The backend's error.
    type Error: WriterError + From<StoreError>;

    /// The backend's name (`redis`, `sqlite`): dead rows are kept as
    /// `cache-writer:{name}`, and logs and health name it.
    fn name(&self) -> &'static str;

    /// Where the next read starts: every entry up to it was handed to
    /// [`CacheWriter::apply`].
    fn read_position(&self) -> i64;

    /// The offset the writer saved: every entry up to it is applied,
    /// dead-lettered or held for a retry.
    fn offset(&self) -> i64;

    /// Bring the writer's own state in line before a read (its saved offset,
    /// a bootstrap when it is missing or names another oplog, retries).
    /// `full`: the first step, after a failure, or while the breaker
    /// probes: re-read everything instead of what is due.
    async fn sync(&mut self, full: bool, cx: &mut StepContext<'_>) -> Result<(), Self::Error>;

    /// The layouts of `changed` were pushed (added, changed or removed; every
    /// entity on a full step): rebuild what no longer serves its layout.
    async fn layouts_changed(
        &mut self,
        changed: &BTreeSet<String>,
        cx: &mut StepContext<'_>,
    ) -> Result<(), Self::Error>;

    /// Apply `entries` (log order, all after [`CacheWriter::read_position`])
    /// and move the position and the saved offset past them. The offset may
    /// only pass an entry that is applied or dead-lettered.
    async fn apply(
        &mut self,
        entries: Vec<OplogEntry>,
        cx: &mut StepContext<'_>,
    ) -> Result<(), Self::Error>;

    /// Nothing new was read.
    async fn caught_up(&mut self, full: bool, cx: &mut StepContext<'_>) -> Result<(), Self::Error>;

    /// Book a step's outcome in the writer's status (after the tailer booked
    /// it on the breaker).
    fn settle(&mut self, outcome: Result<(), &Self::Error>);

    /// Publish whether the writer is caught up.
    fn set_caught_up(&self, caught_up: bool);

    /// How long to wait before trying again when the step reported
    /// [`Waiting::Lock`].
    fn lock_wait(&self) -> Duration {
        Duration::from_secs(1)
    }

    /// When periodic work (e.g. a cleanup) is due next, if any.
    fn housekeeping_due(&self) -> Option<Instant> {
        None
    }

    /// Run the periodic work; called by [`Tailer::run`] once it is due and
    /// the breaker is closed.
    async fn housekeeping(&mut self) -> Result<(), Self::Error> {
        Ok(())
    }

    /// Called once when [`Tailer::run`] starts (e.g. to start renewing a lock).
    async fn start(&mut self, _cancel: &CancellationToken) {}

    /// Called once when [`Tailer::run`] ends (e.g. to release a lock).
    async fn stop(&mut self) {}
}

/// The tailer's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TailerConfig {
    /// Log entries read per step.
    pub batch_size: usize,
    /// How long a caught-up tailer waits when no commit or layout change
    /// wakes it (commits of other processes are found this way).
    pub poll_interval: Duration,
    /// The first wait after a failed step.
    pub backoff_min: Duration,
    /// The longest wait after failed steps.
    pub backoff_max: Duration,
}

impl Default for TailerConfig {
    fn default() -> Self {
        TailerConfig {
            batch_size: 5000,
            poll_interval: Duration::from_millis(50),
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_secs(10),
        }
    }
}

/// Tails the oplog for one [`CacheWriter`]. See the module documentation.
pub struct Tailer<W: CacheWriter> {
    writer: W,
    store: Arc<dyn OplogStore>,
    layouts: Layouts,
    /// The layouts the writer was last told about.
    seen: Option<Arc<LayoutMap>>,
    breaker: Option<Arc<CircuitBreaker>>,
    config: TailerConfig,
    /// The last step failed: the next one is full.
    failed: bool,
}

impl<W: CacheWriter> std::fmt::Debug for Tailer<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tailer")
            .field("writer", &self.writer.name())
            .field("offset", &self.writer.offset())
            .field("config", &self.config)
            .finish()
    }
}

impl<W: CacheWriter> Tailer<W> {
    /// A tailer of `store` for `writer`, told layout changes by `layouts`.
    pub fn new(
        writer: W,
        store: Arc<dyn OplogStore>,
        layouts: Layouts,
        config: TailerConfig,
    ) -> Tailer<W> {
        Tailer {
            writer,
            store,
            layouts,
            seen: None,
            breaker: None,
            config,
            failed: false,
        }
    }

    /// Count the target's failures on `breaker`: while it is open, steps
    /// write nothing and report [`Waiting::Breaker`].
    pub fn with_breaker(mut self, breaker: Arc<CircuitBreaker>) -> Tailer<W> {
        self.breaker = Some(breaker);
        self
    }

    /// The backend.
    pub fn writer(&self) -> &W {
        &self.writer
    }

    /// The backend, to call its own operations.
    pub fn writer_mut(&mut self) -> &mut W {
        &mut self.writer
    }

    /// The store it tails.
    pub fn store(&self) -> &Arc<dyn OplogStore> {
        &self.store
    }

    /// The settings.
    pub fn tailer_config(&self) -> &TailerConfig {
        &self.config
    }

    /// The writer's saved offset.
    pub fn offset(&self) -> i64 {
        self.writer.offset()
    }

    /// Read and apply one batch. `read == 0` means the writer is caught up;
    /// `waiting` says it could not write (lock held elsewhere, breaker
    /// open). A failure is returned (and counted by the breaker); the batch
    /// is read again by the next step.
    pub async fn step(&mut self) -> Result<StepReport, W::Error> {
        let full = self.failed || self.seen.is_none();
        self.step_with(full).await
    }

    async fn step_with(&mut self, full: bool) -> Result<StepReport, W::Error> {
        let mut report = StepReport {
            offset: self.writer.offset(),
            ..StepReport::default()
        };
        let mut full = full;
        if let Some(breaker) = &self.breaker {
            if let Err(open) = breaker.check() {
                report.waiting = Some(Waiting::Breaker {
                    retry_in: open.retry_in,
                });
                return Ok(report);
            }
            // A trial call: re-read the writer's state.
            full |= breaker.state() != BreakerState::Closed;
        }
        let result = self.guarded_step(full, &mut report).await;
        if let Some(breaker) = &self.breaker {
            match &result {
                Ok(()) => breaker.success(),
                Err(error) if error.target_failed() => breaker.failure(),
                Err(_) => {}
            }
        }
        self.writer.settle(result.as_ref().map(|_| ()));
        report.offset = self.writer.offset();
        match result {
            Ok(()) => {
                self.failed = false;
                Ok(report)
            }
            Err(error) => {
                self.failed = true;
                match error.waiting() {
                    Some(waiting) => {
                        report.waiting = Some(waiting);
                        Ok(report)
                    }
                    None => Err(error),
                }
            }
        }
    }

    async fn guarded_step(&mut self, full: bool, report: &mut StepReport) -> Result<(), W::Error> {
        let layouts = self.layouts.current();
        let changed = match (&self.seen, full) {
            (Some(seen), false) => Layouts::diff(seen, &layouts),
            (seen, _) => {
                let mut all: BTreeSet<String> = layouts.keys().cloned().collect();
                if let Some(seen) = seen {
                    all.extend(seen.keys().cloned());
                }
                all
            }
        };
        let mut cx = StepContext {
            store: &self.store,
            layouts: &layouts,
            report,
        };
        self.writer.sync(full, &mut cx).await?;
        if !changed.is_empty() {
            self.writer.layouts_changed(&changed, &mut cx).await?;
        }
        // Seen only once handled: a failed rebuild is tried again.
        self.seen = Some(layouts.clone());
        let entries = self
            .store
            .read_log(self.writer.read_position(), self.config.batch_size)
            .await?;
        cx.report.read = entries.len();
        if entries.is_empty() {
            self.writer.set_caught_up(true);
            self.writer.caught_up(full, &mut cx).await
        } else {
            self.writer.set_caught_up(false);
            self.writer.apply(entries, &mut cx).await
        }
    }

    /// Apply batches until the log is exhausted (or the writer has to wait
    /// for its lock or the breaker); returns the totals. The first step is
    /// full: it re-reads the writer's state and checks every layout.
    pub async fn catch_up(&mut self) -> Result<StepReport, W::Error> {
        let mut total = StepReport {
            offset: self.writer.offset(),
            ..StepReport::default()
        };
        let mut full = true;
        loop {
            let step = self.step_with(full).await?;
            full = false;
            total.add(&step);
            if step.read == 0 || step.waiting.is_some() {
                return Ok(total);
            }
        }
    }

    /// Run until `cancel` fires: steps back to back while there is a
    /// backlog; caught up, waits for a commit, a layout change or the poll
    /// interval; waits out an open breaker or a lock held elsewhere; backs
    /// off after failures; runs the writer's housekeeping when due.
    pub async fn run(self, cancel: CancellationToken) {
        let span = tracing::info_span!("cache_writer", writer = self.writer.name());
        self.run_in_span(cancel).instrument(span).await
    }

    async fn run_in_span(mut self, cancel: CancellationToken) {
        self.writer.start(&cancel).await;
        let mut commits = self.store.commits();
        let mut backoff = self.config.backoff_min;
        loop {
            let result = tokio::select! {
                _ = cancel.cancelled() => break,
                result = self.step() => result,
            };
            let (wait, idle) = match result {
                Ok(StepReport {
                    waiting: Some(Waiting::Breaker { retry_in }),
                    ..
                }) => (retry_in, false),
                Ok(StepReport {
                    waiting: Some(Waiting::Lock),
                    ..
                }) => (self.writer.lock_wait(), false),
                Ok(report) => {
                    backoff = self.config.backoff_min;
                    if report.read > 0 {
                        tracing::debug!(
                            read = report.read,
                            upserted = report.upserted,
                            deleted = report.deleted,
                            dead_lettered = report.dead_lettered,
                            failed = report.failed,
                            offset = report.offset,
                            "cache batch applied"
                        );
                        (Duration::ZERO, false)
                    } else {
                        (self.config.poll_interval, true)
                    }
                }
                Err(error) => {
                    let wait = backoff;
                    backoff = (backoff * 2).min(self.config.backoff_max);
                    tracing::warn!(
                        %error,
                        retry_in_ms = wait.as_millis() as u64,
                        breaker = self.breaker.as_ref().map(|b| b.state().to_string()),
                        offset = self.writer.offset(),
                        "cache writer step failed"
                    );
                    (wait, false)
                }
            };
            if self
                .writer
                .housekeeping_due()
                .is_some_and(|at| Instant::now() >= at)
                && self
                    .breaker
                    .as_ref()
                    .is_none_or(|b| b.state() == BreakerState::Closed)
            {
                let result = tokio::select! {
                    _ = cancel.cancelled() => break,
                    result = self.writer.housekeeping() => result,
                };
                if let Err(error) = result {
                    tracing::warn!(%error, "cache writer housekeeping failed");
                }
            }
            if !wait.is_zero() {
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tokio::time::sleep(wait) => {}
                    _ = commits.changed(), if idle => {}
                    _ = self.layouts.changed(), if idle => {}
                }
            }
        }
        self.writer.stop().await;
        tracing::info!(offset = self.writer.offset(), "cache writer stopped");
    }
}

/// Pages through one entity's latest rows in id order, for bootstraps and
/// rebuilds: every backend reads them the same way.
#[derive(Debug, Clone)]
pub struct LatestPages {
    entity: String,
    after: Option<String>,
    page: usize,
    done: bool,
}

impl LatestPages {
    /// Pages of at most `page` rows of `entity`.
    pub fn new(entity: &str, page: usize) -> LatestPages {
        LatestPages {
            entity: entity.to_owned(),
            after: None,
            page: page.max(1),
            done: false,
        }
    }

    /// The next page (tombstones included), or `None` after the last.
    pub async fn next(
        &mut self,
        store: &dyn OplogStore,
    ) -> Result<Option<Vec<LatestRow>>, StoreError> {
        if self.done {
            return Ok(None);
        }
        let rows = store
            .latest_page(&self.entity, self.after.as_deref(), self.page)
            .await?;
        match rows.last() {
            None => {
                self.done = true;
                Ok(None)
            }
            Some(last) => {
                self.after = Some(last.doc_id.clone());
                Ok(Some(rows))
            }
        }
    }
}
