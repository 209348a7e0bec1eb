//! Everything Schematic-specific: emcachers as a drop-in replacement for
//! Schematic's Go replicator (spec `schematic-datastream.md`).
//!
//! - [`readiness`]: Schematic's `/ready` body over the generic readiness.

pub mod readiness;

pub use readiness::SchematicBody;
