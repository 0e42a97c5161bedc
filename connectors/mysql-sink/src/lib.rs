//! rowlog's MySQL/MariaDB sink: applies batches of change events to the destination
//! with idempotent statements, and records how far it got in the same transaction.
//!
//! # Guarantees
//! * **Idempotent**: inserts and updates are `INSERT … ON DUPLICATE KEY UPDATE` with the
//!   full after-image — or, with `sink.load_data`, for 16 rows or more of a table
//!   where it has exactly that effect, `LOAD DATA LOCAL INFILE … REPLACE` (see
//!   [`load`]) — and deletes are
//!   `DELETE … WHERE pk IN (…)`. Applying any stretch of changes twice leaves the same
//!   rows as applying it once.
//! * **Atomic progress**: each batch's data and the worker's progress row
//!   (`<progress_database>.rowlog_progress`) commit in one destination transaction, so
//!   after a crash the stored offset says exactly which changes are in.
//! * **Per-key order**: within a batch, several changes of one key collapse to the last
//!   state (see [`coalesce`]); batches of one worker are applied in log order.
//!
//! # What the destination must provide
//! A user with `SELECT, INSERT, UPDATE, DELETE` on the replicated tables and
//! `CREATE, INSERT, UPDATE, DELETE, SELECT` on the progress database (its tables:
//! progress rows, schema changes applied, and the pipeline's [`lease`]). Tables must exist with
//! the source's columns and primary key.

mod coalesce;
mod config;
mod error;
pub mod lease;
mod load;
mod params;
mod sink;
mod sql;

pub use coalesce::{coalesce, Coalesced};
pub use config::SinkConfig;
pub use error::SinkError;
pub use load::{Staged as StagedInfile, FILE as STAGED_INFILE};
pub use sink::{table_exists, MySqlSink, Planned};
