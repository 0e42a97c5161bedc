//! rowlog's MySQL/MariaDB source: connects as a replica and turns the row-based binlog
//! into typed [`rowlog_api::ChangeEvent`]s.
//!
//! # What the source server must provide
//! * `log_bin=ON`, `binlog_format=ROW`, `binlog_row_image=FULL` — checked at start; the
//!   reader refuses to run otherwise and says which setting to change.
//! * `binlog_row_metadata=FULL` (MariaDB ≥ 10.5, MySQL ≥ 8.0.1) is recommended: column
//!   names, signedness and the primary key then travel with every table map. Without it
//!   the reader asks `information_schema` at the moment it first sees a table, which is
//!   wrong if the table changed between the event and the lookup.
//! * A user with `REPLICATION SLAVE` and `REPLICATION CLIENT` (MariaDB: `BINLOG MONITOR`)
//!   and `SELECT` on `information_schema`.
//! * A `server_id` no other replica of that server uses (the server kills the older
//!   stream of two with the same id).
//!
//! # Invariants
//! * Events are yielded in binlog order. A [`rowlog_api::SourceEvent::Committed`] is
//!   yielded only at a transaction boundary, with the position a restart must use.
//! * An event the reader does not understand stops it with [`SourceError`]; nothing is
//!   skipped silently. Events known to carry no row data (GTID lists, checkpoints,
//!   annotations, heartbeats) are consumed.
//! * MariaDB-specific handling is named as such (see [`mariadb`]).

mod config;
mod ddl;
mod decoder;
mod error;
mod file;
mod filter;
pub mod mariadb;
mod mysql;
mod reader;
mod rows;
mod server;
mod snapshot;
mod table_map;
mod values;

pub use config::{NoPrimaryKey, ResumeBy, SourceConfig, StartFrom};
pub use error::SourceError;
pub use file::{BinlogFileReader, FileDecodeOptions};
pub use filter::{FilterError, TableFilter};
pub use reader::{locate_gtid, locate_position, preflight, BinlogReader};
pub use server::{ServerFlavor, ServerSettings};
pub use snapshot::{list_tables, KeylessRows, SnapshotSession, SnapshotTable};
