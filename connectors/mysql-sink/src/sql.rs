//! Statement text for one table schema. Statements are built once per (schema, kind,
//! row count) and prepared by the connection's statement cache; row counts are drawn
//! from a few fixed sizes so a handful of prepared statements serve every batch.

use rowlog_api::{Column, ColumnType, TableSchema};

/// Rows per multi-row statement, largest first; a batch is cut greedily into these.
pub(crate) const CHUNK_SIZES: [usize; 4] = [256, 32, 4, 1];
/// The protocol's limit on placeholders in one prepared statement.
const MAX_PLACEHOLDERS: usize = 65_535;

pub(crate) fn quote(ident: &str) -> String {
    format!("`{}`", ident.replace('`', "``"))
}

pub(crate) fn table_ident(t: &TableSchema) -> String {
    format!("{}.{}", quote(&t.name.db), quote(&t.name.table))
}

/// Splits `n` rows of `width` parameters into chunk sizes from [`CHUNK_SIZES`] that fit
/// the placeholder limit.
pub(crate) fn chunks(mut n: usize, width: usize) -> Vec<usize> {
    let cap = (MAX_PLACEHOLDERS / width.max(1)).max(1);
    let mut out = Vec::new();
    for &size in CHUNK_SIZES.iter().filter(|&&s| s <= cap) {
        while n >= size {
            out.push(size);
            n -= size;
        }
    }
    // Only reachable if a single row exceeds the placeholder limit (impossible: MySQL
    // tables have at most 4096 columns).
    out.extend(std::iter::repeat_n(1, n));
    out
}

/// How one column's value is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Send {
    /// As a typed parameter (strings in the connection's utf8mb4).
    Plain,
    /// As hex text the statement turns back into the column's bytes. A string
    /// parameter is labelled utf8mb4 and the server refuses (or converts) bytes that
    /// are not; hex carries any bytes unchanged.
    Hex,
}

/// The character set a text column's bytes are in, when it is not utf8-compatible
/// (latin1, cp1251, gbk…): those bytes go as hex and are relabelled, never converted.
fn foreign_charset(c: &Column) -> Option<&str> {
    let text = matches!(
        c.ty,
        ColumnType::FixedString { .. } | ColumnType::VarString { .. } | ColumnType::Blob
    );
    let cs = c.charset_name.as_deref()?;
    let utf8_compatible = matches!(cs, "utf8mb4" | "utf8mb3" | "utf8" | "ascii" | "binary");
    (text && !utf8_compatible && cs.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
        .then_some(cs)
}

/// `BINARY(n)`, and MariaDB's UUID and INET6, which the binlog shows as `BINARY(16)`:
/// those types take a binary string byte for byte, but not a utf8mb4 one.
fn fixed_binary(c: &Column) -> bool {
    c.charset == Some(Column::BINARY_COLLATION) && matches!(c.ty, ColumnType::FixedString { .. })
}

pub(crate) fn send(c: &Column) -> Send {
    if fixed_binary(c) || foreign_charset(c).is_some() {
        Send::Hex
    } else {
        Send::Plain
    }
}

/// The placeholder for one column's value (see [`send`]).
fn placeholder(c: &Column) -> String {
    match foreign_charset(c) {
        Some(cs) => format!("CONVERT(UNHEX(?) USING {cs})"),
        None if fixed_binary(c) => "UNHEX(?)".into(),
        None => "?".into(),
    }
}

fn tuple<'a>(cols: impl Iterator<Item = &'a Column>) -> String {
    format!("({})", cols.map(placeholder).collect::<Vec<_>>().join(","))
}

/// `INSERT … VALUES (…),… ON DUPLICATE KEY UPDATE c = VALUES(c), …` with every column.
pub(crate) fn upsert(t: &TableSchema, rows: usize) -> String {
    let cols: Vec<String> = t.written_columns().map(|(_, c)| quote(&c.name)).collect();
    let values = vec![tuple(t.written_columns().map(|(_, c)| c)); rows].join(",");
    let non_key: Vec<String> = t
        .written_columns()
        .filter(|(i, _)| !t.primary_key.contains(i))
        .map(|(_, c)| format!("{0}=VALUES({0})", quote(&c.name)))
        .collect();
    let update = if non_key.is_empty() {
        // Every column is in the key: the row either exists or is inserted.
        let k = quote(&t.columns[t.primary_key[0]].name);
        format!("{k}={k}")
    } else {
        non_key.join(",")
    };
    format!(
        "INSERT INTO {} ({}) VALUES {} ON DUPLICATE KEY UPDATE {}",
        table_ident(t),
        cols.join(","),
        values,
        update
    )
}

/// `REPLACE INTO … VALUES (…),…`: removes every row that conflicts on any unique key,
/// then inserts (for tables with secondary unique keys; see the sink).
pub(crate) fn replace(t: &TableSchema, rows: usize) -> String {
    let cols: Vec<String> = t.written_columns().map(|(_, c)| quote(&c.name)).collect();
    let values = vec![tuple(t.written_columns().map(|(_, c)| c)); rows].join(",");
    format!(
        "REPLACE INTO {} ({}) VALUES {}",
        table_ident(t),
        cols.join(","),
        values
    )
}

/// `INSERT INTO … VALUES (…),…`: a keyless table's rows (nothing to conflict with).
pub(crate) fn insert(t: &TableSchema, rows: usize) -> String {
    let cols: Vec<String> = t.written_columns().map(|(_, c)| quote(&c.name)).collect();
    let values = vec![tuple(t.written_columns().map(|(_, c)| c)); rows].join(",");
    format!(
        "INSERT INTO {} ({}) VALUES {}",
        table_ident(t),
        cols.join(","),
        values
    )
}

/// `DELETE … WHERE c1 <=> ? AND … LIMIT 1`: one row equal to a keyless table's
/// before-image (`<=>` so NULLs match).
pub(crate) fn delete_one_equal(t: &TableSchema) -> String {
    let cond: Vec<String> = t
        .written_columns()
        .map(|(_, c)| format!("{} <=> {}", quote(&c.name), placeholder(c)))
        .collect();
    format!(
        "DELETE FROM {} WHERE {} LIMIT 1",
        table_ident(t),
        cond.join(" AND ")
    )
}

/// `DELETE … WHERE (k1, k2) IN ((?, ?), …)`.
pub(crate) fn delete(t: &TableSchema, rows: usize) -> String {
    let key: Vec<String> = t.pk_columns().map(|c| quote(&c.name)).collect();
    let (lhs, item) = if key.len() == 1 {
        (key[0].clone(), t.pk_columns().map(placeholder).collect())
    } else {
        (format!("({})", key.join(",")), tuple(t.pk_columns()))
    };
    format!(
        "DELETE FROM {} WHERE {} IN ({})",
        table_ident(t),
        lhs,
        vec![item; rows].join(",")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use rowlog_api::{Column, ColumnType, TableName};

    fn t(pk: Vec<usize>) -> TableSchema {
        let col = |name: &str| Column {
            name: name.into(),
            ty: ColumnType::Int,
            unsigned: false,
            charset: None,
            charset_name: None,
            generated: false,
            nullable: false,
        };
        TableSchema {
            name: TableName::new("d", "t`x"),
            columns: vec![col("id"), col("a"), col("b")],
            primary_key: pk,
            unique_keys: vec![],
            keyless: false,
        }
    }

    #[test]
    fn upsert_updates_every_non_key_column_and_quotes_identifiers() {
        assert_eq!(
            upsert(&t(vec![0]), 2),
            "INSERT INTO `d`.`t``x` (`id`,`a`,`b`) VALUES (?,?,?),(?,?,?) ON DUPLICATE KEY UPDATE `a`=VALUES(`a`),`b`=VALUES(`b`)"
        );
    }

    #[test]
    fn composite_keys_delete_by_row_constructor() {
        assert_eq!(
            delete(&t(vec![0, 2]), 2),
            "DELETE FROM `d`.`t``x` WHERE (`id`,`b`) IN ((?,?),(?,?))"
        );
        assert_eq!(
            delete(&t(vec![0]), 3),
            "DELETE FROM `d`.`t``x` WHERE `id` IN (?,?,?)"
        );
    }

    #[test]
    fn chunks_cover_every_row_and_respect_the_placeholder_limit() {
        assert_eq!(chunks(293, 3), vec![256, 32, 4, 1]);
        assert_eq!(chunks(300, 1000).iter().sum::<usize>(), 300);
        assert!(chunks(300, 1000)
            .iter()
            .all(|&c| c * 1000 <= MAX_PLACEHOLDERS));
    }
}
