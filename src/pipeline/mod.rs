//! The stages' wiring: [`ingest`] moves changes from a source into the log, [`apply`]
//! moves them from each log partition into a sink. [`partitioner`] decides where a key
//! goes in both.

mod applied;
pub mod apply;
pub mod backoff;
pub mod budget;
pub mod dead_letter;
pub mod ingest;
pub mod partitioner;
pub mod schema_barrier;
mod stats;

pub use stats::Stats;
