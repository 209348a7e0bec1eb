//! Sources of changes. A [`Source`] reads changes and sends them, in
//! batches with the position after each, into a bounded channel: when the
//! pipeline falls behind, `send` waits, so memory never grows with the
//! backlog.
//!
//! - [`jsonl`]: JSON-lines files, one change per line (CLI, backfills, demos).

pub mod jsonl;

use async_trait::async_trait;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::plugin::Change;

/// A batch of changes from one source.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceBatch {
    /// The source name.
    pub source: String,
    /// The changes, in source order.
    pub changes: Vec<Change>,
    /// The source position after the last change; committed with the rows.
    pub position: Option<String>,
    /// Whether these changes are an initial load (see `oplog::AppendBatch::snapshot`).
    pub snapshot: bool,
}

/// Why a source stopped.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// Reading failed.
    #[error("source {source_name}: {reason}")]
    Read {
        /// The source.
        source_name: String,
        /// What went wrong.
        reason: String,
    },
    /// The pipeline is gone.
    #[error("source {0}: the pipeline stopped")]
    Closed(String),
}

/// A source of changes.
#[async_trait]
pub trait Source: Send {
    /// The source name (its positions are stored under it).
    fn name(&self) -> &str;

    /// Send batches to `out`, resuming after `position`, until the source
    /// ends (finite sources) or `cancel` fires.
    async fn run(
        &mut self,
        position: Option<String>,
        out: mpsc::Sender<SourceBatch>,
        cancel: CancellationToken,
    ) -> Result<(), SourceError>;
}
