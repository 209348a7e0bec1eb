//! See the module documentation of [`crate::ingest`].

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::load::{LoadControl, LoadCoordinator};
use super::rejected::{self, rejection};
use super::retry;
use crate::entities::EntityManager;
use crate::model::{Change, ChangeOp, RowOp};
use crate::oplog::{
    AppendBatch, EntityDef, NewRejected, NewRow, Op, OplogStore, SourcePosition, StoreError,
};
use crate::plugin::{ItemError, LoadedPlugin};
use crate::sources::{Source, SourceBatch, SourceError};

/// Why a batch could not be processed.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The store failed (the batch was not committed).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The source failed.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// A blocking task failed.
    #[error("pipeline worker failed: {0}")]
    Worker(String),
    /// A batch of `source` failed to commit `attempts` times (`[retry]
    /// max_attempts`): the source stops and restarts from its committed
    /// position.
    #[error("source {source_name}: batch not committed after {attempts} attempts: {reason}")]
    GaveUp {
        /// The source.
        source_name: String,
        /// The attempts made.
        attempts: u32,
        /// The last error.
        reason: String,
    },
}

/// Counters of ingested batches.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct IngestReport {
    /// Batches committed.
    pub batches: usize,
    /// Changes received.
    pub changes: usize,
    /// Rows appended to the log.
    pub appended: usize,
    /// Rows staged for loading entities.
    pub staged: usize,
    /// Changes rejected (kept as rejected records).
    pub rejected: usize,
    /// Changes no entity is fed by.
    pub unrouted: usize,
}

impl IngestReport {
    fn add(&mut self, other: IngestReport) {
        self.batches += other.batches;
        self.changes += other.changes;
        self.appended += other.appended;
        self.staged += other.staged;
        self.rejected += other.rejected;
        self.unrouted += other.unrouted;
    }
}

/// Shapes source batches with plugins and commits them to the store.
pub struct Pipeline {
    store: Arc<dyn OplogStore>,
    entities: Arc<EntityManager>,
    loads: LoadCoordinator,
    /// Everything committed since the pipeline was made.
    totals: std::sync::Mutex<IngestReport>,
    /// How failed commits are retried.
    retry: retry::RetryConfig,
}

/// Each entity's changes of one batch, in source order.
type Groups = Vec<(EntityDef, Vec<Change>)>;

/// Opens once the previous batch is committed: shaping a batch while the
/// previous one commits must not read the store before that (a partial
/// change's current row, a complete set's live rows). Default: open.
#[derive(Default)]
struct Gate(Option<tokio::sync::watch::Receiver<bool>>);

impl Gate {
    async fn wait(&self) {
        if let Some(open) = &self.0 {
            // A dropped sender means the commit ended too.
            let _ = open.clone().wait_for(|open| *open).await;
        }
    }
}

/// A routed, shaped batch and the append that commits it.
struct Prepared {
    append: AppendBatch,
    report: IngestReport,
}

/// Whether `batch` may be shaped while the previous one commits: no load
/// brackets (they change entity statuses, which routing and staging read)
/// and no commit signal (it reports the head after this very batch).
fn overlaps(batch: &SourceBatch) -> bool {
    batch.load.is_none() && batch.committed.is_none()
}

/// Rows and rejections produced for one batch.
#[derive(Default)]
struct Output {
    rows: Vec<NewRow>,
    rejected: Vec<NewRejected>,
}

impl Pipeline {
    /// A pipeline committing to `store`, routing with `entities`.
    pub fn new(store: Arc<dyn OplogStore>, entities: Arc<EntityManager>) -> Self {
        Pipeline {
            loads: LoadCoordinator::new(store.clone(), entities.clone()),
            store,
            entities,
            totals: std::sync::Mutex::new(IngestReport::default()),
            retry: retry::RetryConfig::default(),
        }
    }

    /// Retry failed commits as `config` says (default: 100 ms doubling to
    /// 10 s, without end).
    pub fn with_retry(mut self, config: retry::RetryConfig) -> Self {
        self.retry = config;
        self
    }

    /// Everything this pipeline committed since it was made (for the
    /// system statistics: throughput and error rate).
    pub fn totals(&self) -> IngestReport {
        *self.totals.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Shape and commit one source batch.
    pub async fn process(&self, batch: SourceBatch) -> Result<IngestReport, PipelineError> {
        let report = self.process_batch(batch).await?;
        self.totals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .add(report);
        Ok(report)
    }

    /// Route `changes` of `source` to their entities (`only`: a
    /// backfill's entities alone): each entity's changes in source order,
    /// and how many changes no entity is fed by.
    fn route(&self, changes: Vec<Change>, only: Option<&[String]>) -> (Groups, usize) {
        let mut unrouted = 0;
        // Route: entity → its changes, in source order.
        let mut order: Vec<EntityDef> = Vec::new();
        let mut routed: HashMap<String, Vec<Change>> = HashMap::new();
        // A batch spans few collections: a short list, searched without
        // allocating a key per change.
        let mut routes_cache: Vec<((String, String), Vec<EntityDef>)> = Vec::new();
        for change in changes {
            let cached = routes_cache
                .iter()
                .position(|((s, c), _)| *s == change.source && *c == change.collection);
            let index = match cached {
                Some(index) => index,
                None => {
                    let mut targets = self.entities.routes(&change.source, &change.collection);
                    if let Some(only) = only {
                        // A backfill's batch: its entities alone.
                        targets.retain(|def| only.contains(&def.name));
                    }
                    routes_cache
                        .push(((change.source.clone(), change.collection.clone()), targets));
                    routes_cache.len() - 1
                }
            };
            let targets = &routes_cache[index].1;
            if targets.is_empty() {
                unrouted += 1;
                continue;
            }
            // The last target takes the change itself: no copy of the
            // document in the usual one-entity case.
            let last = targets.len() - 1;
            let mut change = Some(change);
            for (index, def) in targets.iter().enumerate() {
                let list = routed.entry(def.name.clone()).or_insert_with(|| {
                    order.push(def.clone());
                    Vec::new()
                });
                let item = if index == last {
                    change.take()
                } else {
                    change.clone()
                };
                list.extend(item);
            }
        }
        let groups = order
            .into_iter()
            .map(|def| {
                let changes = routed.remove(&def.name).unwrap_or_default();
                (def, changes)
            })
            .collect();
        (groups, unrouted)
    }

    async fn process_batch(&self, batch: SourceBatch) -> Result<IngestReport, PipelineError> {
        let mut report = IngestReport {
            changes: batch.changes.len(),
            ..IngestReport::default()
        };
        let (groups, unrouted) = self.route(batch.changes, batch.only.as_deref());
        report.unrouted = unrouted;
        let position = batch.position.map(|position| SourcePosition {
            source: batch.source.clone(),
            position,
        });
        if let Some(LoadControl::Begin { collections, anew }) = &batch.load {
            self.loads
                .begin(&batch.source, collections, batch.only.as_deref(), *anew)
                .await?;
        }
        match &batch.load {
            Some(LoadControl::End {
                collections,
                complete,
            }) => {
                // The position is committed last (by the load's end): a
                // crash before it leaves no cursor, so the load runs again
                // rather than being lost.
                let committed = self.commit(groups, None, batch.snapshot).await?;
                report.add(committed);
                self.loads
                    .end(
                        &batch.source,
                        collections,
                        batch.only.as_deref(),
                        *complete,
                        position,
                    )
                    .await?;
            }
            _ => {
                let committed = self.commit(groups, position, batch.snapshot).await?;
                report.add(committed);
            }
        }
        if let Some(signal) = &batch.committed {
            signal.fire(self.store.head().await?);
        }
        Ok(report)
    }

    /// Shape the routed groups and append them with `position`.
    pub(super) async fn commit(
        &self,
        groups: Groups,
        position: Option<SourcePosition>,
        snapshot: bool,
    ) -> Result<IngestReport, PipelineError> {
        let out = self.shape(groups, &Gate::default()).await?;
        self.append(AppendBatch {
            rows: out.rows,
            rejected: out.rejected,
            position,
            snapshot,
        })
        .await
    }

    /// Shape the routed groups; store reads wait for `gate`.
    async fn shape(&self, groups: Groups, gate: &Gate) -> Result<Output, PipelineError> {
        let mut out = Output::default();
        for (def, changes) in groups {
            self.shape_entity(&def, changes, &mut out, gate).await?;
        }
        Ok(out)
    }

    /// Append one shaped batch.
    async fn append(&self, batch: AppendBatch) -> Result<IngestReport, PipelineError> {
        let rejected = batch.rejected.len();
        let receipt = self.store.append(batch).await?;
        Ok(IngestReport {
            batches: 1,
            appended: receipt.appended,
            staged: receipt.staged,
            rejected,
            ..IngestReport::default()
        })
    }

    /// Route and shape `batch` (one without load brackets or commit
    /// signal, [`overlaps`]) into the append that commits it; store reads
    /// wait for `gate` (the previous batch's commit).
    async fn prepare(&self, batch: SourceBatch, gate: &Gate) -> Result<Prepared, PipelineError> {
        let changes = batch.changes.len();
        let (groups, unrouted) = self.route(batch.changes, batch.only.as_deref());
        let out = self.shape(groups, gate).await?;
        Ok(Prepared {
            append: AppendBatch {
                rows: out.rows,
                rejected: out.rejected,
                position: batch.position.map(|position| SourcePosition {
                    source: batch.source.clone(),
                    position,
                }),
                snapshot: batch.snapshot,
            },
            report: IngestReport {
                changes,
                unrouted,
                ..IngestReport::default()
            },
        })
    }

    /// Commit a prepared batch, retrying the append as [`Self::run`] does.
    async fn commit_prepared(
        &self,
        source: &str,
        prepared: Prepared,
        cancel: &CancellationToken,
    ) -> Result<Option<IngestReport>, PipelineError> {
        let committed = retry::until_committed(source, &self.retry, cancel, || {
            self.append(prepared.append.clone())
        })
        .await;
        match committed {
            Ok(Some(mut report)) => {
                report.add(prepared.report);
                report.batches = 1;
                self.totals
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .add(report);
                Ok(Some(report))
            }
            Ok(None) => Ok(None),
            Err(gave_up) => Err(PipelineError::GaveUp {
                source_name: source.to_owned(),
                attempts: gave_up.attempts,
                reason: gave_up.error.to_string(),
            }),
        }
    }

    async fn shape_entity(
        &self,
        def: &EntityDef,
        changes: Vec<Change>,
        out: &mut Output,
        gate: &Gate,
    ) -> Result<(), PipelineError> {
        let Some(plugin) = self.entities.registry().for_entity(&def.name) else {
            let error = format!("plugin {} is not loaded", def.plugin);
            for change in &changes {
                out.rejected
                    .push(rejection(def, change, &def.plugin, "", &error));
            }
            return Ok(());
        };
        // Rows this batch already produced, by id: a partial change after an
        // upsert of the same id in the same batch merges onto that row.
        let mut local: HashMap<String, Option<String>> = HashMap::new();
        let mut pending: Vec<Change> = Vec::new();
        let mut touched: HashSet<String> = HashSet::new();
        for change in changes {
            if change.op == ChangeOp::Partial && touched.contains(&change.id) {
                self.shape_chunk(
                    def,
                    &plugin,
                    std::mem::take(&mut pending),
                    &mut local,
                    out,
                    gate,
                )
                .await?;
                touched.clear();
            }
            touched.insert(change.id.clone());
            pending.push(change);
        }
        self.shape_chunk(def, &plugin, pending, &mut local, out, gate)
            .await
    }

    async fn shape_chunk(
        &self,
        def: &EntityDef,
        plugin: &Arc<LoadedPlugin>,
        mut changes: Vec<Change>,
        local: &mut HashMap<String, Option<String>>,
        out: &mut Output,
        gate: &Gate,
    ) -> Result<(), PipelineError> {
        if changes.is_empty() {
            return Ok(());
        }
        // The current row of every partial change: from this batch, else the store.
        let missing: Vec<String> = changes
            .iter()
            .filter(|c| {
                c.op == ChangeOp::Partial && c.current.is_none() && !local.contains_key(&c.id)
            })
            .map(|c| c.id.clone())
            .collect();
        let mut stored: HashMap<String, Option<String>> = HashMap::new();
        if !missing.is_empty() {
            gate.wait().await;
            for row in self.store.latest(&def.name, &missing).await? {
                stored.insert(
                    row.doc_id,
                    if row.op == Op::Upsert { row.data } else { None },
                );
            }
        }
        for change in changes
            .iter_mut()
            .filter(|c| c.op == ChangeOp::Partial && c.current.is_none())
        {
            change.current = local
                .get(&change.id)
                .or_else(|| stored.get(&change.id))
                .cloned()
                .flatten();
        }

        let (changes, results) = plugin
            .shape_async(&def.name, changes)
            .await
            .map_err(|e| PipelineError::Worker(e.to_string()))?;

        for (change, result) in changes.iter().zip(results) {
            match result {
                Ok(shaped) => {
                    let mut upserted: HashSet<String> = HashSet::new();
                    for row in shaped.rows {
                        let op = match row.op {
                            RowOp::Upsert => Op::Upsert,
                            RowOp::Delete => Op::Delete,
                        };
                        let data = (op == Op::Upsert).then_some(row.data);
                        if row.entity == def.name {
                            local.insert(row.id.clone(), data.clone());
                        }
                        if op == Op::Upsert {
                            upserted.insert(row.id.clone());
                        }
                        out.rows.push(NewRow {
                            entity: row.entity,
                            doc_id: row.id,
                            op,
                            data,
                            plugin: plugin.name().to_owned(),
                            plugin_version: plugin.version().to_owned(),
                        });
                    }
                    if let Some(set_entity) = shaped.complete_set {
                        gate.wait().await;
                        self.complete_set(&set_entity, &upserted, plugin, local, out)
                            .await?;
                    }
                }
                Err(error) => {
                    let (name, version, message) = match &error {
                        ItemError::Rejected { message, .. } => {
                            (plugin.name(), plugin.version(), message.clone())
                        }
                        ItemError::BatchFailed { reason, .. } => {
                            (plugin.name(), plugin.version(), reason.clone())
                        }
                    };
                    tracing::debug!(entity = %def.name, id = %change.id, plugin = name, version, error = %message, "change rejected");
                    out.rejected
                        .push(rejection(def, change, name, version, &error.to_string()));
                }
            }
        }
        Ok(())
    }

    /// Delete every live row of `entity` that `upserted` lacks.
    async fn complete_set(
        &self,
        entity: &str,
        upserted: &HashSet<String>,
        plugin: &LoadedPlugin,
        local: &mut HashMap<String, Option<String>>,
        out: &mut Output,
    ) -> Result<(), PipelineError> {
        let mut live: HashSet<String> = HashSet::new();
        let mut after: Option<String> = None;
        loop {
            let page = self
                .store
                .latest_page(entity, after.as_deref(), 5000)
                .await?;
            let Some(last) = page.last().map(|r| r.doc_id.clone()) else {
                break;
            };
            live.extend(page.into_iter().map(|r| r.doc_id));
            after = Some(last);
        }
        // Rows this batch upserted or deleted earlier override the store.
        for (id, data) in local.iter() {
            if data.is_some() {
                live.insert(id.clone());
            } else {
                live.remove(id);
            }
        }
        let mut stale: Vec<String> = live
            .into_iter()
            .filter(|id| !upserted.contains(id))
            .collect();
        stale.sort();
        for id in stale {
            local.insert(id.clone(), None);
            out.rows.push(NewRow {
                entity: entity.to_owned(),
                doc_id: id,
                op: Op::Delete,
                data: None,
                plugin: plugin.name().to_owned(),
                plugin_version: plugin.version().to_owned(),
            });
        }
        Ok(())
    }

    /// Consume batches from `rx` until it closes or `cancel` fires. A batch
    /// whose commit fails is retried (with backoff, [`super::retry`]) until
    /// it succeeds: the source waits meanwhile, nothing is dropped. After
    /// `max_attempts` failures (when set) the run fails: the source stops
    /// and restarts from its committed position.
    ///
    /// Under backlog (the next batch is already queued) the next batch is
    /// routed and shaped while the previous one commits; batches still
    /// commit one at a time, in order, and a shaping step that reads the
    /// store waits for the previous commit ([`Gate`]). Load brackets and
    /// commit signals run alone. A batch is never held back waiting for
    /// the next one.
    pub async fn run(
        &self,
        mut rx: mpsc::Receiver<SourceBatch>,
        cancel: CancellationToken,
    ) -> Result<IngestReport, PipelineError> {
        let mut total = IngestReport::default();
        // The next batch, received while the previous one was handled.
        let mut next: Option<SourceBatch> = None;
        loop {
            let batch = match next.take() {
                Some(batch) => batch,
                None => tokio::select! {
                    _ = cancel.cancelled() => return Ok(total),
                    batch = rx.recv() => match batch { Some(batch) => batch, None => return Ok(total) },
                },
            };
            if !overlaps(&batch) {
                match self.process_retrying(&batch, &cancel).await? {
                    Some(report) => total.add(report),
                    None => return Ok(total),
                }
                continue;
            }
            let source = batch.source.clone();
            let mut prepared = match self.prepare(batch.clone(), &Gate::default()).await {
                Ok(prepared) => prepared,
                Err(error) => {
                    tracing::debug!(%error, "shaping failed; the batch is retried whole");
                    match self.process_retrying(&batch, &cancel).await? {
                        Some(report) => total.add(report),
                        None => return Ok(total),
                    }
                    continue;
                }
            };
            // Commit it; meanwhile shape the batches already queued.
            loop {
                let queued = match rx.try_recv() {
                    Ok(queued) if overlaps(&queued) => Some(queued),
                    Ok(queued) => {
                        next = Some(queued);
                        None
                    }
                    Err(_) => None,
                }
                .map(|queued| (queued.clone(), queued));
                let Some((queued, copy)) = queued else {
                    match self.commit_prepared(&source, prepared, &cancel).await? {
                        Some(report) => total.add(report),
                        None => return Ok(total),
                    }
                    break;
                };
                let (open, gate) = tokio::sync::watch::channel(false);
                let gate = Gate(Some(gate));
                let commit = async {
                    let committed = self.commit_prepared(&source, prepared, &cancel).await;
                    open.send_replace(true);
                    committed
                };
                let (committed, shaped) = tokio::join!(commit, self.prepare(copy, &gate));
                match committed? {
                    Some(report) => total.add(report),
                    None => return Ok(total),
                }
                match shaped {
                    Ok(shaped) => prepared = shaped,
                    Err(error) => {
                        tracing::debug!(%error, "shaping failed; the batch is retried whole");
                        next = Some(queued);
                        break;
                    }
                }
            }
        }
    }

    /// [`Self::process`] retried until it commits (see [`Self::run`]);
    /// `None` when cancelled.
    async fn process_retrying(
        &self,
        batch: &SourceBatch,
        cancel: &CancellationToken,
    ) -> Result<Option<IngestReport>, PipelineError> {
        let committed = retry::until_committed(&batch.source, &self.retry, cancel, || {
            self.process(batch.clone())
        })
        .await;
        committed.map_err(|gave_up| PipelineError::GaveUp {
            source_name: batch.source.clone(),
            attempts: gave_up.attempts,
            reason: gave_up.error.to_string(),
        })
    }

    /// Re-run up to `limit` rejected records through their entities' current
    /// plugins (`ingest::rejected`). Records that now shape are committed
    /// and removed; those that fail again are stored anew with their new
    /// error. Rows a cache writer dead-lettered are appended to the log
    /// again ([`dead_letter::replay`](crate::cache::dead_letter::replay)), so
    /// every writer applies them anew. Returns (replayed, failed again).
    pub async fn replay_rejected(&self, limit: usize) -> Result<(usize, usize), PipelineError> {
        rejected::replay(self, limit).await
    }

    /// The store the pipeline commits to.
    pub(super) fn store(&self) -> &Arc<dyn OplogStore> {
        &self.store
    }
}

/// Run `source` into `pipeline` through a bounded channel of `capacity`
/// batches, resuming from the source's committed position, until the source
/// ends or `cancel` fires.
pub async fn run_source(
    mut source: Box<dyn Source>,
    pipeline: Arc<Pipeline>,
    store: Arc<dyn OplogStore>,
    capacity: usize,
    cancel: CancellationToken,
) -> Result<IngestReport, PipelineError> {
    let position = store.source_position(source.name()).await?;
    let (tx, rx) = mpsc::channel(capacity.max(1));
    let consumer = {
        let pipeline = pipeline.clone();
        let cancel = cancel.clone();
        tokio::spawn(async move { pipeline.run(rx, cancel).await })
    };
    let produced = source.run(position, tx, cancel).await;
    // The consumer's failure explains the source's (its channel closed).
    let report = consumer
        .await
        .map_err(|e| PipelineError::Worker(e.to_string()))??;
    produced?;
    Ok(report)
}
