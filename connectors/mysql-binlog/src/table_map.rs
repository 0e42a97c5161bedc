//! Turns a TABLE_MAP event into a [`TableSchema`].
//!
//! The table map always carries column types and their metadata (lengths, precisions,
//! fsp); with `binlog_row_metadata=FULL` it also carries names, signedness, charsets
//! and the primary key. What is missing is reported so the reader can look it up.
//! Metadata lengths are validated here, because mysql_common's value decoder indexes
//! them without checking and would panic on a malformed table map.

use mysql_async::binlog::events::{OptionalMetaExtractor, TableMapEvent};
use mysql_async::consts::ColumnType as My;
use rowlog_api::{Column, ColumnType, TableName, TableSchema};

pub(crate) struct MappedTable {
    pub schema: TableSchema,
    /// Column names came from the binlog (`binlog_row_metadata=FULL`).
    pub has_names: bool,
}

pub(crate) fn table_name(tme: &TableMapEvent<'_>) -> TableName {
    TableName::new(
        tme.database_name().into_owned(),
        tme.table_name().into_owned(),
    )
}

/// Whether the server lists a charset for a column of this type in the table map's
/// charset metadata, which names columns only by their place among such columns: one
/// column counted wrongly gives every later one its neighbour's charset. The server
/// counts GEOMETRY (its field class derives from BLOB's: "Base class is blob for geom
/// type" in the server's `is_character_type`); mysql_common's `is_character_type` does
/// not. Tested by `signedness_and_charsets_stay_with_their_columns_after_year_and_geometry`
/// in tests/suite/types.rs, where a latin1 column after a POINT was sent as utf8mb4.
fn has_charset_metadata(my: My) -> bool {
    my.is_character_type() || my == My::MYSQL_TYPE_GEOMETRY
}

pub(crate) fn schema_from_table_map(tme: &TableMapEvent<'_>) -> Result<MappedTable, String> {
    let n =
        usize::try_from(tme.columns_count()).map_err(|_| "column count overflows".to_string())?;
    let extractor = OptionalMetaExtractor::new(tme.iter_optional_meta())
        .map_err(|e| format!("optional metadata: {e}"))?;
    let mut signedness = extractor.iter_signedness();
    let mut charsets = extractor.iter_charset();
    let mut enum_set_charsets = extractor.iter_enum_and_set_charset();
    let mut names = extractor.iter_column_name();
    let nulls = tme.null_bitmask();

    let mut columns = Vec::with_capacity(n.min(4096));
    let mut has_names = true;
    for i in 0..n {
        let my = tme
            .get_column_type(i)
            .map_err(|e| format!("column {i}: {e}"))?
            .ok_or_else(|| format!("column {i}: no type"))?;
        let meta = tme
            .get_column_metadata(i)
            .ok_or_else(|| format!("column {i}: no metadata"))?;
        let ty = column_type(my, meta).map_err(|e| format!("column {i} ({my:?}): {e}"))?;
        let unsigned = if my.is_numeric_type() {
            signedness.next().unwrap_or(false)
        } else {
            false
        };
        let charset = if has_charset_metadata(my) {
            let c = charsets
                .next()
                .transpose()
                .map_err(|e| format!("column {i} charset: {e}"))?;
            // A geometry's entry only keeps the count right: its bytes are binary.
            c.filter(|_| my != My::MYSQL_TYPE_GEOMETRY)
        } else if my.is_enum_or_set_type() {
            enum_set_charsets
                .next()
                .transpose()
                .map_err(|e| format!("column {i} charset: {e}"))?
        } else {
            None
        };
        let name = match names
            .next()
            .transpose()
            .map_err(|e| format!("column {i} name: {e}"))?
        {
            Some(c) => String::from_utf8_lossy(c.name_raw()).into_owned(),
            None => {
                has_names = false;
                format!("@{i}")
            }
        };
        let nullable = nulls.get(i).as_deref().copied().unwrap_or(true);
        columns.push(Column {
            name,
            ty,
            unsigned,
            charset,
            charset_name: None,
            generated: false,
            nullable,
        });
    }

    let mut primary_key = Vec::new();
    for idx in extractor.iter_primary_key() {
        let idx = idx.map_err(|e| format!("primary key metadata: {e}"))?;
        let idx = usize::try_from(idx)
            .ok()
            .filter(|&i| i < n)
            .ok_or_else(|| format!("primary key column {idx} out of range"))?;
        primary_key.push(idx);
    }
    Ok(MappedTable {
        schema: TableSchema {
            name: table_name(tme),
            columns,
            primary_key,
            unique_keys: Vec::new(),
            keyless: false,
        },
        has_names,
    })
}

fn need(meta: &[u8], n: usize) -> Result<(), String> {
    if meta.len() < n {
        Err(format!("metadata has {} bytes, expected {n}", meta.len()))
    } else {
        Ok(())
    }
}

fn column_type(my: My, meta: &[u8]) -> Result<ColumnType, String> {
    use ColumnType as T;
    Ok(match my {
        My::MYSQL_TYPE_TINY => T::TinyInt,
        My::MYSQL_TYPE_SHORT => T::SmallInt,
        My::MYSQL_TYPE_INT24 => T::MediumInt,
        My::MYSQL_TYPE_LONG => T::Int,
        My::MYSQL_TYPE_LONGLONG => T::BigInt,
        My::MYSQL_TYPE_FLOAT => T::Float,
        My::MYSQL_TYPE_DOUBLE => T::Double,
        My::MYSQL_TYPE_NEWDECIMAL => {
            need(meta, 2)?;
            T::Decimal {
                precision: meta[0],
                scale: meta[1],
            }
        }
        My::MYSQL_TYPE_DATE | My::MYSQL_TYPE_NEWDATE => T::Date,
        My::MYSQL_TYPE_DATETIME => T::DateTime { fsp: 0 },
        My::MYSQL_TYPE_DATETIME2 => {
            need(meta, 1)?;
            T::DateTime { fsp: meta[0] }
        }
        My::MYSQL_TYPE_TIMESTAMP => T::Timestamp { fsp: 0 },
        My::MYSQL_TYPE_TIMESTAMP2 => {
            need(meta, 1)?;
            T::Timestamp { fsp: meta[0] }
        }
        My::MYSQL_TYPE_TIME => T::Time { fsp: 0 },
        My::MYSQL_TYPE_TIME2 => {
            need(meta, 1)?;
            T::Time { fsp: meta[0] }
        }
        My::MYSQL_TYPE_YEAR => T::Year,
        My::MYSQL_TYPE_BIT => {
            need(meta, 2)?;
            T::Bit {
                bits: meta[1] as u16 * 8 + meta[0] as u16,
            }
        }
        My::MYSQL_TYPE_STRING => {
            need(meta, 2)?;
            // Same length rule as mysql_common's decoder (MySQL bug #37426 packing).
            let (b0, b1) = (meta[0] as u16, meta[1] as u16);
            let len = if (b0 & 0x30) != 0x30 {
                b1 | (((b0 & 0x30) ^ 0x30) << 4)
            } else {
                b1
            };
            T::FixedString { max_bytes: len }
        }
        My::MYSQL_TYPE_VARCHAR | My::MYSQL_TYPE_VAR_STRING => {
            need(meta, 2)?;
            T::VarString {
                max_bytes: u16::from_le_bytes([meta[0], meta[1]]),
            }
        }
        My::MYSQL_TYPE_ENUM => {
            need(meta, 2)?;
            if !(1..=2).contains(&meta[1]) {
                return Err(format!("ENUM with {} bytes per value", meta[1]));
            }
            T::Enum
        }
        My::MYSQL_TYPE_SET => {
            need(meta, 2)?;
            if meta[1] == 0 || meta[1] > 8 {
                return Err(format!("SET with {} bytes per value", meta[1]));
            }
            T::Set
        }
        My::MYSQL_TYPE_TINY_BLOB
        | My::MYSQL_TYPE_MEDIUM_BLOB
        | My::MYSQL_TYPE_LONG_BLOB
        | My::MYSQL_TYPE_BLOB => {
            need(meta, 1)?;
            if !(1..=4).contains(&meta[0]) {
                return Err(format!("BLOB with {}-byte length prefix", meta[0]));
            }
            T::Blob
        }
        My::MYSQL_TYPE_GEOMETRY => {
            need(meta, 1)?;
            if !(1..=4).contains(&meta[0]) {
                return Err(format!("GEOMETRY with {}-byte length prefix", meta[0]));
            }
            T::Geometry
        }
        My::MYSQL_TYPE_JSON => T::Json,
        // MySQL 9 VECTOR: little-endian float32s, passed through as bytes.
        My::MYSQL_TYPE_VECTOR => {
            need(meta, 1)?;
            T::Other(My::MYSQL_TYPE_VECTOR as u8)
        }
        other => return Err(format!("type {} is not supported", other as u8)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_column_type_rowlog_cannot_carry_is_a_named_error() {
        for (ty, meta) in [
            (My::MYSQL_TYPE_NULL, &[][..]),
            (My::MYSQL_TYPE_TYPED_ARRAY, &[3, 0][..]),
        ] {
            let err = column_type(ty, meta).unwrap_err();
            assert!(err.contains("not supported"), "{err}");
        }
        // Metadata too short for the type is refused, not indexed past its end.
        assert!(column_type(My::MYSQL_TYPE_NEWDECIMAL, &[10]).is_err());
        assert!(column_type(My::MYSQL_TYPE_BLOB, &[9]).is_err());
    }
}
