//! A schema change read from the source: one DDL statement, with the tables it names
//! and where in the stream it ran.
//!
//! Ordering: a schema change separates the row changes before it from those after it,
//! for every key of its tables. The pipeline therefore carries it through *every*
//! partition and applies it only once all partitions have applied what precedes it
//! (a barrier), so no row is written with the wrong shape on either side of it.

use serde::{Deserialize, Serialize};

use crate::{SourceMeta, TableName};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SchemaChangeKind {
    CreateTable,
    AlterTable,
    DropTable,
    RenameTable,
    TruncateTable,
    CreateIndex,
    DropIndex,
    CreateDatabase,
    AlterDatabase,
    DropDatabase,
}

impl SchemaChangeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CreateTable => "create_table",
            Self::AlterTable => "alter_table",
            Self::DropTable => "drop_table",
            Self::RenameTable => "rename_table",
            Self::TruncateTable => "truncate_table",
            Self::CreateIndex => "create_index",
            Self::DropIndex => "drop_index",
            Self::CreateDatabase => "create_database",
            Self::AlterDatabase => "alter_database",
            Self::DropDatabase => "drop_database",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchemaChange {
    pub kind: SchemaChangeKind,
    /// The session's default database when the statement ran (unqualified names in the
    /// statement refer to it); empty when none was selected.
    pub db: String,
    /// The statement to run on the destination, as the source ran it (or narrowed to
    /// the replicated tables, for a multi-table DROP TABLE).
    pub statement: String,
    /// Every table the statement names, qualified: created, altered, dropped, renamed
    /// (both names), truncated. Empty for database statements.
    pub tables: Vec<TableName>,
    /// The database a CREATE/ALTER/DROP DATABASE statement is about.
    #[serde(default)]
    pub database: Option<String>,
    /// `id` is (end of the QUERY event, 0): ordered with the row changes around it.
    pub source: SourceMeta,
}

/// What the sink does with schema changes (`sink.ddl`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SchemaChangePolicy {
    /// Run them on the destination, in order with the rows around them (the default
    /// for MySQL → MySQL: the destination keeps the source's shape).
    #[default]
    Apply,
    /// Leave the destination's schema alone (it is managed by hand or another tool).
    Ignore,
    /// Stop the pipeline at the first one, after applying every row before it, so an
    /// operator can change the destination and restart with `ddl = "ignore"`.
    Halt,
}
