//! The ingest pipeline: source batches → shape plugin → oplog store.
//!
//! For each batch the pipeline routes changes to entities (by source and
//! collection), hands each entity's changes to its plugin in one call (with
//! the current row for partial changes), and commits the resulting rows,
//! the rejected changes and the source position in one append. A per-item
//! plugin error becomes a rejected record and the pipeline goes on; a store
//! error is retried with backoff, never dropped.
//!
//! - `pipeline`: [`Pipeline`], routing, shaping and the commit of a batch.
//! - [`load`]: the initial-load protocol ([`SnapshotLoad`] for sources,
//!   [`LoadCoordinator`] for the pipeline).
//! - [`retry`]: the backoff of a batch whose commit failed.
//! - `rejected`: rejected records and their replay.

pub mod load;
mod pipeline;
mod rejected;
pub mod retry;

pub use load::{LoadControl, LoadCoordinator, LoadEnd, SnapshotLoad};
pub use pipeline::{IngestReport, Pipeline, PipelineError, run_source};
