//! The vocabulary shared by rowlog's stages: what a change is, where it came from,
//! and the two seams a connector implements.
//!
//! * [`ChangeEvent`] is plain data: a table schema version, an operation, typed
//!   before/after images and the [`SourceMeta`] that says where in the source it was read.
//! * [`BinlogPosition`] and [`ChangeId`] are totally ordered types, never strings: the
//!   pipeline compares them to decide what is already stored and what must be re-read.
//! * [`ChangeSource`] (a binlog reader) yields [`SourceEvent`]s; [`ChangeSink`] applies
//!   batches of changes together with the log offset they reach, atomically.
//!
//! Connectors depend on this crate only; they never see the log or the pipeline.

mod change;
mod param;
mod position;
mod schema;
mod schema_change;
mod traits;
pub mod url;
mod value;

pub use change::{key_bytes, ChangeEvent, Op, SourceMeta};
pub use param::hex_param;
pub use position::{
    BinlogFileName, BinlogPosition, ChangeId, Gtid, GtidState, MariadbGtid, MariadbGtidPos,
    MysqlGtid, MysqlGtidRanges, MysqlGtidSet, ParsePositionError, ResumePoint,
};
pub use schema::{Column, ColumnType, TableName, TableSchema};
pub use schema_change::{SchemaChange, SchemaChangeKind, SchemaChangePolicy};
pub use traits::{
    ApplyBatch, ChangeSink, ChangeSource, Retry, SinkProgress, SourceEvent, WorkerProgress,
};
pub use value::{SmallBytes, SmallText, Value};

/// The text of a caught panic (a library's, or a bug's): what an error reports of it.
pub fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".into())
}
