//! Sources of changes. Each turns what it reads into [`Change`](crate::plugin::Change)s.
//!
//! - [`jsonl`]: JSON-lines files, one change per line (CLI, backfills, demos).

pub mod jsonl;
