//! The bulk path for upserts, off by default (`sink.load_data`): `LOAD DATA LOCAL
//! INFILE … REPLACE` from a batch encoded in memory. The `mariadb` client on one
//! connection loaded about 2.4 times as many rows per second as 1,000-row `INSERT … ON
//! DUPLICATE KEY UPDATE`; inside rowlog's pipeline on the 2-core bench machine it was
//! no faster (README, Performance), so the statements stay the default.
//!
//! When on, it is used only where it has the upsert's exact effect:
//! * the table has no secondary unique key (REPLACE would delete a row holding one);
//! * on the destination, the table has exactly the columns the event carries, by name
//!   (REPLACE writes whole rows: a column only the destination has would be reset),
//!   text columns in the event's character sets (bytes go unconverted), the primary
//!   key on the event's key columns as its only unique index, no triggers (REPLACE
//!   fires DELETE and INSERT triggers, the upsert UPDATE ones) and no foreign key
//!   referencing it (REPLACE may delete the parent row); checked per table version and
//!   again every minute;
//! * every written column has a type whose text form this file renders exactly, in a
//!   character set the bytes can go to unconverted (`CHARACTER SET binary`).
//!
//! Otherwise, and when the destination refuses local files (`local_infile=OFF`), the
//! sink uses the upsert statement. Every value error still fails the batch: strict
//! mode applies to LOAD DATA on MariaDB, and any warning it leaves (MySQL treats LOCAL
//! as IGNORE) is raised as an error by the sink.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::stream::{self, StreamExt};
use mysql_async::LocalInfileError;
use rowlog_api::{ColumnType, TableSchema, Value};

use crate::sql::{quote, table_ident};

/// The file name a statement asks for; the connection's handler answers it with the
/// staged bytes (one statement runs at a time on a connection).
pub const FILE: &str = "rowlog-batch";

/// An upsert group smaller than this goes as statements: LOAD DATA costs one more
/// round trip, which only pays off over enough rows.
pub(crate) const MIN_ROWS: usize = 16;

/// The bytes a connection's LOCAL INFILE handler serves as [`FILE`]: set them, then
/// run a `LOAD DATA LOCAL INFILE` of that name on the connection.
#[derive(Clone, Default)]
pub struct Staged(Arc<Mutex<Bytes>>);

impl Staged {
    pub fn set(&self, data: Bytes) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = data;
    }

    /// The handler for the connection's options: serves the staged bytes for
    /// [`FILE`] and refuses any other name (the server names the file, so a
    /// statement rowlog did not write cannot read anything else).
    pub fn handler(
        &self,
    ) -> impl for<'a> Fn(
        &'a [u8],
    ) -> futures_util::future::BoxFuture<
        'static,
        Result<mysql_async::InfileData, LocalInfileError>,
    > + Send
           + Sync
           + 'static {
        let staged = self.0.clone();
        move |name: &[u8]| {
            let answer = if name == FILE.as_bytes() {
                let data = staged.lock().unwrap_or_else(|p| p.into_inner()).clone();
                Ok(stream::once(async move { Ok(data) }).boxed())
            } else {
                Err(LocalInfileError::PathIsNotInTheWhiteList(
                    String::from_utf8_lossy(name).into_owned(),
                ))
            };
            Box::pin(async move { answer })
        }
    }
}

/// Whether every written column of `t` can travel in LOAD DATA's text form (the
/// destination's side is checked by the sink, see the module comment).
pub(crate) fn columns_fit(t: &TableSchema) -> bool {
    !t.keyless
        && t.unique_keys.is_empty()
        && t.written_columns().all(|(_, c)| {
            let charset_ok = c.charset_name.as_deref().is_none_or(|cs| {
                matches!(
                    cs,
                    "utf8mb4" | "utf8mb3" | "utf8" | "ascii" | "latin1" | "binary"
                )
            });
            let type_ok = match c.ty {
                ColumnType::TinyInt
                | ColumnType::SmallInt
                | ColumnType::MediumInt
                | ColumnType::Int
                | ColumnType::BigInt
                | ColumnType::Float
                | ColumnType::Double
                | ColumnType::Decimal { .. }
                | ColumnType::Date
                | ColumnType::DateTime { .. }
                | ColumnType::Timestamp { .. }
                | ColumnType::Time { .. }
                | ColumnType::Year
                | ColumnType::VarString { .. }
                | ColumnType::Blob => true,
                // BINARY(n) is also how the binlog shows MariaDB's UUID and INET6,
                // which read text, not bytes; CHAR(n) is plain text.
                ColumnType::FixedString { .. } => c.charset_name.as_deref() != Some("binary"),
                ColumnType::Bit { .. }
                | ColumnType::Enum
                | ColumnType::Set
                | ColumnType::Json
                | ColumnType::Geometry
                | ColumnType::Other(_) => false,
            };
            charset_ok && type_ok
        })
}

/// `LOAD DATA LOCAL INFILE 'rowlog-batch' REPLACE INTO TABLE … (columns)`: tab-separated
/// fields, backslash escapes, `\N` for NULL, bytes unconverted.
pub(crate) fn statement(t: &TableSchema) -> String {
    let cols: Vec<String> = t.written_columns().map(|(_, c)| quote(&c.name)).collect();
    format!(
        "LOAD DATA LOCAL INFILE '{FILE}' REPLACE INTO TABLE {} CHARACTER SET binary \
         FIELDS TERMINATED BY '\\t' ESCAPED BY '\\\\' LINES TERMINATED BY '\\n' ({})",
        table_ident(t),
        cols.join(",")
    )
}

/// Appends `rows` (full rows of `t`) in the format [`statement`] reads.
pub(crate) fn encode(t: &TableSchema, rows: &[&[Value]], out: &mut Vec<u8>) {
    for row in rows {
        for (n, (i, c)) in t.written_columns().enumerate() {
            if n > 0 {
                out.push(b'\t');
            }
            field(&row[i], &c.ty, out);
        }
        out.push(b'\n');
    }
}

fn field(v: &Value, ty: &ColumnType, out: &mut Vec<u8>) {
    use mysql_async::Value as My;
    use std::io::Write;
    // Writing to a Vec cannot fail.
    let _ = match v {
        Value::Null => write!(out, "\\N"),
        Value::Int(i) => write!(out, "{i}"),
        Value::UInt(u) => write!(out, "{u}"),
        // The server reads a float's text as a double, then rounds: the exact double of
        // the float rounds back to it (the float's own shortest digits may not, e.g.
        // its maximum reads as a double just above it, out of range).
        Value::Float(f) => write!(out, "{:e}", f64::from(*f)),
        // The shortest digits that read back as the same value.
        Value::Double(d) => write!(out, "{d:e}"),
        Value::Decimal(s) => write!(out, "{s}"),
        Value::Json(s) => {
            escape(s.as_bytes(), out);
            Ok(())
        }
        Value::Bytes(b) => {
            escape(b, out);
            Ok(())
        }
        // The fields the statements' parameters carry (a TIMESTAMP as UTC fields: the
        // sink's session time zone is +00:00).
        Value::Date { .. }
        | Value::DateTime { .. }
        | Value::Timestamp { .. }
        | Value::Time { .. } => match v.to_param() {
            My::Date(y, mo, d, ..) if matches!(ty, ColumnType::Date) => {
                write!(out, "{y:04}-{mo:02}-{d:02}")
            }
            My::Date(y, mo, d, h, mi, s, us) => {
                write!(out, "{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}.{us:06}")
            }
            My::Time(negative, days, h, mi, s, us) => write!(
                out,
                "{}{}:{mi:02}:{s:02}.{us:06}",
                if negative { "-" } else { "" },
                days * 24 + u32::from(h)
            ),
            other => unreachable!("a date or time converts to date or time fields, not {other:?}"),
        },
        // Text `0` would read as the year 2000.
        Value::Year(y) => write!(out, "{y:04}"),
        Value::Bit(b) => write!(out, "{b}"),
        Value::Enum(i) => write!(out, "{i}"),
        Value::Set(s) => write!(out, "{s}"),
    };
}

/// LOAD DATA's escapes for the bytes that would end a field or line, or start an
/// escape; NUL goes as `\0` so no tool in between mistakes it for an end.
fn escape(bytes: &[u8], out: &mut Vec<u8>) {
    for &b in bytes {
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b'\n' => out.extend_from_slice(b"\\n"),
            0 => out.extend_from_slice(b"\\0"),
            _ => out.push(b),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_escape_separators_and_render_edge_values() {
        let mut out = Vec::new();
        escape(b"a\tb\nc\\d\0e", &mut out);
        assert_eq!(out, b"a\\tb\\nc\\\\d\\0e");
        let cases: [(Value, ColumnType, &str); 8] = [
            (Value::Null, ColumnType::Int, "\\N"),
            (Value::Year(0), ColumnType::Year, "0000"),
            (Value::Float(-0.0), ColumnType::Float, "-0e0"),
            (
                Value::Float(f32::MAX),
                ColumnType::Float,
                "3.4028234663852886e38",
            ),
            (Value::Double(5e-324), ColumnType::Double, "5e-324"),
            (
                Value::Time {
                    negative: true,
                    hours: 838,
                    minutes: 59,
                    seconds: 58,
                    micros: 999_900,
                },
                ColumnType::Time { fsp: 4 },
                "-838:59:58.999900",
            ),
            (
                Value::Timestamp {
                    secs: 2_147_483_647,
                    micros: 999_999,
                },
                ColumnType::Timestamp { fsp: 6 },
                "2038-01-19 03:14:07.999999",
            ),
            (
                Value::Timestamp { secs: 0, micros: 0 },
                ColumnType::Timestamp { fsp: 0 },
                "0000-00-00 00:00:00.000000",
            ),
        ];
        for (v, ty, text) in cases {
            let mut out = Vec::new();
            field(&v, &ty, &mut out);
            assert_eq!(String::from_utf8_lossy(&out), text, "{v:?}");
        }
    }
}
