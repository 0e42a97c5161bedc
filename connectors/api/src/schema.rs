//! Table schemas as the source described them at a point in its stream.
//!
//! A [`TableSchema`] is immutable: when a table changes, the source produces a new
//! value and the log stores it as a new schema version, so that old records are always
//! decoded with the columns they were written with.

use std::fmt;

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TableName {
    pub db: String,
    pub table: String,
}

impl TableName {
    pub fn new(db: impl Into<String>, table: impl Into<String>) -> Self {
        Self {
            db: db.into(),
            table: table.into(),
        }
    }
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.db, self.table)
    }
}

/// Column types at the level the pipeline needs them: enough to decode, validate and
/// bind values; lengths and precisions as the binlog's table map gives them.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ColumnType {
    TinyInt,
    SmallInt,
    MediumInt,
    Int,
    BigInt,
    Float,
    Double,
    Decimal {
        precision: u8,
        scale: u8,
    },
    Date,
    DateTime {
        fsp: u8,
    },
    Timestamp {
        fsp: u8,
    },
    Time {
        fsp: u8,
    },
    Year,
    Bit {
        bits: u16,
    },
    /// CHAR(n) / BINARY(n): `max_bytes` is the column's length in bytes.
    FixedString {
        max_bytes: u16,
    },
    VarString {
        max_bytes: u16,
    },
    Blob,
    Enum,
    Set,
    Json,
    Geometry,
    /// A type the table map names that rowlog passes through as bytes (e.g. VECTOR).
    Other(u8),
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Column {
    pub name: String,
    pub ty: ColumnType,
    pub unsigned: bool,
    /// Collation id for character columns ([`Column::BINARY_COLLATION`] for binary
    /// strings), when the source reported it.
    pub charset: Option<u16>,
    /// The character set of that collation (`latin1`, `utf8mb4`…), as the source names
    /// it: the sink sends a column's bytes labelled with it, unconverted.
    #[serde(default)]
    pub charset_name: Option<String>,
    /// A generated (computed) column: the source logs its value, the destination
    /// computes its own, so the sink never writes it.
    #[serde(default)]
    pub generated: bool,
    pub nullable: bool,
}

impl Column {
    /// The collation id of the `binary` character set: BINARY, VARBINARY, BLOB.
    pub const BINARY_COLLATION: u16 = 63;

    /// Whether two values of this column are one value on a server only when their
    /// bytes are equal: integers, decimals, times, bits, enums, sets, binary strings
    /// and types rowlog passes through as bytes. Not text, whose collation calls other
    /// bytes equal ('a' = 'A', 'a' = 'a ' even under `_bin`), nor floats (-0 = 0).
    ///
    /// `Other` counts as bytes also because a re-snapshot's schema
    /// (`SnapshotSession::describe`) names numbers and times `Other`: its copied rows
    /// must route as the binlog's typed changes of the same rows do. (It names FLOAT
    /// `Other` too; a re-snapshot refuses FLOAT keys.)
    pub fn compares_by_bytes(&self) -> bool {
        match self.ty {
            ColumnType::TinyInt
            | ColumnType::SmallInt
            | ColumnType::MediumInt
            | ColumnType::Int
            | ColumnType::BigInt
            | ColumnType::Decimal { .. }
            | ColumnType::Date
            | ColumnType::DateTime { .. }
            | ColumnType::Timestamp { .. }
            | ColumnType::Time { .. }
            | ColumnType::Year
            | ColumnType::Bit { .. }
            | ColumnType::Enum
            | ColumnType::Set
            | ColumnType::Other(_) => true,
            ColumnType::FixedString { .. } | ColumnType::VarString { .. } | ColumnType::Blob => {
                self.charset == Some(Self::BINARY_COLLATION)
            }
            ColumnType::Float | ColumnType::Double | ColumnType::Json | ColumnType::Geometry => {
                false
            }
        }
    }

    /// A nullable, signed column of `ty` without a character set, not generated: what
    /// tests and tools build by hand.
    pub fn plain(name: &str, ty: ColumnType) -> Column {
        Column {
            name: name.into(),
            ty,
            unsigned: false,
            charset: None,
            charset_name: None,
            generated: false,
            nullable: true,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TableSchema {
    pub name: TableName,
    pub columns: Vec<Column>,
    /// Indexes into `columns` of the primary key, in key order. Never empty: the source
    /// refuses tables without a primary key before any of their rows reach the log.
    pub primary_key: Vec<usize>,
    /// Secondary unique keys (column indexes each). Their changes must reach the
    /// destination in source order, so such tables are routed whole (see
    /// [`crate::ChangeEvent::routing_key_bytes`]).
    #[serde(default)]
    pub unique_keys: Vec<Vec<usize>>,
    /// The source table has no primary key (`source.no_pk = "full_row"`): `primary_key`
    /// lists every column, a change is identified by its whole row, and the sink
    /// inserts plainly and deletes one equal row at a time.
    #[serde(default)]
    pub keyless: bool,
}

impl TableSchema {
    /// Whether changes route by their whole primary key (see
    /// [`crate::ChangeEvent::routing_key_bytes`]): no secondary unique keys, and every
    /// key column compares by its bytes.
    pub fn routes_by_whole_key(&self) -> bool {
        self.unique_keys.is_empty() && self.pk_columns().all(Column::compares_by_bytes)
    }

    pub fn pk_columns(&self) -> impl Iterator<Item = &Column> {
        self.primary_key.iter().map(|&i| &self.columns[i])
    }

    /// The columns a sink writes (every column but generated ones), with their indexes.
    pub fn written_columns(&self) -> impl Iterator<Item = (usize, &Column)> {
        self.columns
            .iter()
            .enumerate()
            .filter(|(_, c)| !c.generated)
    }

    /// Checks the invariants the rest of the pipeline relies on; used when a schema is
    /// read back from disk, where it may have been damaged.
    pub fn validate(&self) -> Result<(), String> {
        if self.columns.is_empty() {
            return Err(format!("table {} has no columns", self.name));
        }
        if self.primary_key.is_empty() {
            return Err(format!("table {} has no primary key", self.name));
        }
        if let Some(&i) = self
            .primary_key
            .iter()
            .chain(self.unique_keys.iter().flatten())
            .find(|&&i| i >= self.columns.len())
        {
            return Err(format!(
                "table {}: primary key column index {i} out of range",
                self.name
            ));
        }
        Ok(())
    }
}
