//! Converts mysql_common's decoded binlog values into rowlog [`Value`]s, typed by the
//! column, and corrects what the library gets wrong or leaves ambiguous:
//! * signed MEDIUMINT is not sign-extended by mysql_common 0.37 (-1 arrives as 16777215);
//! * BINARY(n) arrives without its trailing 0x00 bytes: padded back to n;
//! * YEAR arrives as text with 1900 added, so the zero year reads "1900";
//! * TIMESTAMP arrives as "secs[.micros]" text; SET as little-endian bytes; BIT as big-endian bytes.
//! * MySQL's binary JSON is written back as JSON text here: the library's own
//!   conversion refuses "opaque" scalars (DECIMAL, DATE, TIME, DATETIME inside a JSON
//!   document, as `CAST(… AS JSON)` stores them) and turns decimals into strings.

use mysql_async::binlog::jsonb::{self, JsonContainer, JsonDom, JsonNumber, JsonScalar};
use mysql_async::binlog::value::BinlogValue;
use mysql_async::Value as My;
use rowlog_api::{Column, ColumnType, Value};

pub(crate) fn convert(col: &Column, v: BinlogValue<'_>) -> Result<Value, String> {
    let v = match v {
        BinlogValue::Value(v) => v,
        BinlogValue::Jsonb(j) => {
            check_jsonb(&j, 0).map_err(|e| format!("binary JSON: {e}"))?;
            let dom = j.parse().map_err(|e| format!("binary JSON: {e}"))?;
            let mut text = String::new();
            write_json(&dom, &mut text);
            return Ok(Value::Json(text));
        }
        BinlogValue::JsonDiff(_) => {
            return Err(
                "partial JSON update (binlog_row_value_options=PARTIAL_JSON) is not supported"
                    .into(),
            )
        }
    };
    if matches!(v, My::NULL) {
        return Ok(Value::Null);
    }
    let mismatch = |v: &My| format!("unexpected value {v:?} for {:?}", col.ty);
    Ok(match (&col.ty, v) {
        (
            ColumnType::TinyInt | ColumnType::SmallInt | ColumnType::Int | ColumnType::BigInt,
            My::Int(i),
        ) => {
            if col.unsigned {
                // Without signedness metadata mysql_common decodes unsigned columns as
                // signed: reinterpret the column's width, e.g. TINYINT UNSIGNED -1 → 255.
                Value::UInt(match col.ty {
                    ColumnType::TinyInt => i as u8 as u64,
                    ColumnType::SmallInt => i as u16 as u64,
                    ColumnType::Int => i as u32 as u64,
                    _ => i as u64,
                })
            } else {
                Value::Int(i)
            }
        }
        (
            ColumnType::TinyInt | ColumnType::SmallInt | ColumnType::Int | ColumnType::BigInt,
            My::UInt(u),
        ) => {
            if col.unsigned {
                Value::UInt(u)
            } else {
                Value::Int(u as i64)
            }
        }
        (ColumnType::MediumInt, My::Int(i)) => {
            if col.unsigned {
                Value::UInt(i as u64 & 0xff_ffff)
            } else {
                // Sign-extend the 24-bit value mysql_common left unextended.
                let raw = i & 0xff_ffff;
                Value::Int(if raw & 0x80_0000 != 0 {
                    raw - 0x100_0000
                } else {
                    raw
                })
            }
        }
        (ColumnType::Float, My::Float(f)) => Value::Float(f),
        (ColumnType::Double, My::Double(d)) => Value::Double(d),
        (ColumnType::Decimal { .. }, My::Bytes(b)) => Value::Decimal(
            rowlog_api::SmallText::from_utf8(b).map_err(|e| format!("decimal text: {e}"))?,
        ),
        (ColumnType::Date, My::Date(year, month, day, ..)) => Value::Date { year, month, day },
        (ColumnType::DateTime { .. }, My::Date(year, month, day, hour, minute, second, micros)) => {
            Value::DateTime {
                year,
                month,
                day,
                hour,
                minute,
                second,
                micros,
            }
        }
        (ColumnType::Timestamp { .. }, My::Int(secs)) => Value::Timestamp {
            secs: u32::try_from(secs).map_err(|_| format!("timestamp {secs}"))?,
            micros: 0,
        },
        (ColumnType::Timestamp { .. }, My::Bytes(b)) => parse_timestamp(&b)?,
        (ColumnType::Time { .. }, My::Time(negative, days, h, minutes, seconds, micros)) => {
            Value::Time {
                negative,
                hours: days.saturating_mul(24).saturating_add(h as u32),
                minutes,
                seconds,
                micros,
            }
        }
        (ColumnType::Year, My::Bytes(b)) => {
            let y: u16 = std::str::from_utf8(&b)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| format!("year {b:?}"))?;
            Value::Year(if y == 1900 { 0 } else { y })
        }
        (ColumnType::Year, My::Int(y)) => Value::Year(y as u16),
        (ColumnType::Bit { .. }, My::Bytes(b)) => {
            if b.len() > 8 {
                return Err(format!("BIT value of {} bytes", b.len()));
            }
            Value::Bit(b.iter().fold(0u64, |acc, &x| (acc << 8) | x as u64))
        }
        (ColumnType::Enum, My::Int(i)) => {
            Value::Enum(u16::try_from(i).map_err(|_| format!("enum index {i}"))?)
        }
        (ColumnType::Set, My::Bytes(b)) => {
            if b.len() > 8 {
                return Err(format!("SET value of {} bytes", b.len()));
            }
            Value::Set(b.iter().rev().fold(0u64, |acc, &x| (acc << 8) | x as u64))
        }
        (ColumnType::FixedString { max_bytes }, My::Bytes(mut b)) => {
            if col.charset == Some(Column::BINARY_COLLATION) && b.len() < *max_bytes as usize {
                b.resize(*max_bytes as usize, 0);
            }
            Value::Bytes(b.into())
        }
        (
            ColumnType::VarString { .. }
            | ColumnType::Blob
            | ColumnType::Geometry
            | ColumnType::Json
            | ColumnType::Other(_),
            My::Bytes(b),
        ) => Value::Bytes(b.into()),
        (_, v) => return Err(mismatch(&v)),
    })
}

/// MySQL caps JSON nesting at 100 levels; deeper is damage (and would overflow the
/// stack of the library's recursive parser).
const MAX_JSON_DEPTH: usize = 100;

/// Checks what mysql_common's JSON parser trusts: nesting depth, and each DECIMAL
/// scalar's precision and scale (a scale above the precision makes it panic on an
/// integer underflow; found by `tests/suite/decode_fuzz.rs`).
fn check_jsonb(v: &jsonb::Value<'_>, depth: usize) -> Result<(), String> {
    use jsonb::Value as J;
    if depth > MAX_JSON_DEPTH {
        return Err(format!("nested deeper than {MAX_JSON_DEPTH} levels"));
    }
    let io = |e: std::io::Error| e.to_string();
    match v {
        J::SmallArray(a) => a
            .iter()
            .try_for_each(|x| check_jsonb(&x.map_err(io)?, depth + 1)),
        J::LargeArray(a) => a
            .iter()
            .try_for_each(|x| check_jsonb(&x.map_err(io)?, depth + 1)),
        J::SmallObject(o) => o
            .iter()
            .try_for_each(|x| check_jsonb(&x.map_err(io)?.1, depth + 1)),
        J::LargeObject(o) => o
            .iter()
            .try_for_each(|x| check_jsonb(&x.map_err(io)?.1, depth + 1)),
        J::Opaque(op)
            if op.value_type() == mysql_async::consts::ColumnType::MYSQL_TYPE_NEWDECIMAL =>
        {
            let d = op.data_raw();
            let (Some(&p), Some(&s)) = (d.first(), d.get(1)) else {
                return Err("DECIMAL without precision and scale".into());
            };
            if s > p || p > 65 || p == 0 {
                return Err(format!("DECIMAL({p},{s})"));
            }
            let need = 2 + mysql_common::binlog::decimal::decimal_bin_size(p as usize, s as usize);
            if d.len() < need {
                return Err(format!("DECIMAL({p},{s}) in {} bytes", d.len()));
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// JSON text of a binary JSON document as MySQL prints it: decimals as numbers with
/// their exact digits, temporal scalars as quoted strings, other opaque scalars in
/// MySQL's `base64:typeN:…` form. Object keys come out sorted, as MySQL stores them.
fn write_json(dom: &JsonDom, out: &mut String) {
    use std::fmt::Write;
    match dom {
        JsonDom::Container(JsonContainer::Array(items)) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_json(item, out);
            }
            out.push(']');
        }
        JsonDom::Container(JsonContainer::Object(map)) => {
            out.push('{');
            for (i, (k, v)) in map.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                out.push_str(&serde_json::Value::String(k.clone()).to_string());
                out.push_str(": ");
                write_json(v, out);
            }
            out.push('}');
        }
        JsonDom::Scalar(JsonScalar::Number(JsonNumber::Decimal(d))) => {
            let _ = write!(out, "{d}");
        }
        JsonDom::Scalar(JsonScalar::DateTime(t)) => {
            out.push_str(&serde_json::Value::String(format!("{t:.6}")).to_string());
        }
        JsonDom::Scalar(scalar) => {
            out.push_str(&serde_json::Value::from(scalar.clone()).to_string());
        }
    }
}

fn parse_timestamp(b: &[u8]) -> Result<Value, String> {
    let s = std::str::from_utf8(b).map_err(|_| format!("timestamp {b:?}"))?;
    let (secs, frac) = s.split_once('.').unwrap_or((s, "0"));
    let secs = secs.parse().map_err(|_| format!("timestamp {s}"))?;
    let micros = frac.parse().map_err(|_| format!("timestamp {s}"))?;
    Ok(Value::Timestamp { secs, micros })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(ty: ColumnType, unsigned: bool) -> Column {
        Column {
            name: "c".into(),
            ty,
            unsigned,
            charset: None,
            charset_name: None,
            generated: false,
            nullable: true,
        }
    }

    #[test]
    fn signed_mediumint_is_sign_extended() {
        let c = col(ColumnType::MediumInt, false);
        assert_eq!(
            convert(&c, BinlogValue::Value(My::Int(16777215))).unwrap(),
            Value::Int(-1)
        );
        assert_eq!(
            convert(&c, BinlogValue::Value(My::Int(8388608))).unwrap(),
            Value::Int(-8388608)
        );
        assert_eq!(
            convert(&c, BinlogValue::Value(My::Int(8388607))).unwrap(),
            Value::Int(8388607)
        );
        let u = col(ColumnType::MediumInt, true);
        assert_eq!(
            convert(&u, BinlogValue::Value(My::Int(16777215))).unwrap(),
            Value::UInt(16777215)
        );
    }

    #[test]
    fn binary_is_padded_to_its_length_but_char_is_not() {
        let mut c = col(ColumnType::FixedString { max_bytes: 4 }, false);
        c.charset = Some(Column::BINARY_COLLATION);
        assert_eq!(
            convert(&c, BinlogValue::Value(My::Bytes(b"a\0".to_vec()))).unwrap(),
            Value::Bytes(b"a\0\0\0".to_vec().into())
        );
        c.charset = Some(45);
        assert_eq!(
            convert(&c, BinlogValue::Value(My::Bytes(b"a".to_vec()))).unwrap(),
            Value::Bytes(b"a".to_vec().into())
        );
    }

    #[test]
    fn timestamps_years_sets_and_bits() {
        let ts = col(ColumnType::Timestamp { fsp: 6 }, false);
        assert_eq!(
            convert(
                &ts,
                BinlogValue::Value(My::Bytes(b"2147483647.000001".to_vec()))
            )
            .unwrap(),
            Value::Timestamp {
                secs: 2147483647,
                micros: 1
            }
        );
        let y = col(ColumnType::Year, false);
        assert_eq!(
            convert(&y, BinlogValue::Value(My::Bytes(b"1900".to_vec()))).unwrap(),
            Value::Year(0)
        );
        let s = col(ColumnType::Set, false);
        assert_eq!(
            convert(&s, BinlogValue::Value(My::Bytes(vec![0x01, 0x02]))).unwrap(),
            Value::Set(0x0201)
        );
        let b = col(ColumnType::Bit { bits: 16 }, false);
        assert_eq!(
            convert(&b, BinlogValue::Value(My::Bytes(vec![0x01, 0x02]))).unwrap(),
            Value::Bit(0x0102)
        );
    }

    #[test]
    fn unsigned_columns_decoded_as_signed_are_reinterpreted_at_their_width() {
        let c = col(ColumnType::TinyInt, true);
        assert_eq!(
            convert(&c, BinlogValue::Value(My::Int(-1))).unwrap(),
            Value::UInt(255)
        );
        let c = col(ColumnType::Int, true);
        assert_eq!(
            convert(&c, BinlogValue::Value(My::Int(-1))).unwrap(),
            Value::UInt(4294967295)
        );
        let c = col(ColumnType::BigInt, true);
        assert_eq!(
            convert(&c, BinlogValue::Value(My::UInt(u64::MAX))).unwrap(),
            Value::UInt(u64::MAX)
        );
    }

    #[test]
    fn a_value_of_the_wrong_shape_is_an_error_not_a_guess() {
        let c = col(ColumnType::Date, false);
        assert!(convert(&c, BinlogValue::Value(My::Int(3))).is_err());
    }
}
