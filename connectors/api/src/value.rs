//! Typed column values as they travel from source to sink.
//!
//! Values keep the source's exact representation: integers with their signedness,
//! decimals as the exact text the server prints, strings as bytes in the column's own
//! charset (never transcoded), temporal values as fields. The sink sends them back as
//! typed parameters, so nothing is rounded or reinterpreted on the way.

use serde::{Deserialize, Serialize};

/// Bytes that are kept inline up to 16 (a `Vec<u8>`'s size), on the heap beyond.
/// Serialized exactly as a `Vec<u8>` is, so records written before read the same.
pub type SmallBytes = smallvec::SmallVec<[u8; 16]>;

/// Text kept inline up to 24 bytes (a `String`'s size), on the heap beyond.
/// Serialized exactly as a `String` is.
pub type SmallText = compact_str::CompactString;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Value {
    Null,
    Int(i64),
    UInt(u64),
    Float(f32),
    Double(f64),
    /// Exact decimal text, e.g. `-12345.678900`.
    Decimal(SmallText),
    /// CHAR/VARCHAR/TEXT in the column charset, BINARY/BLOB, MariaDB JSON (LONGTEXT),
    /// spatial values as stored (WKB with SRID prefix).
    Bytes(#[serde(deserialize_with = "small_bytes")] SmallBytes),
    /// DATE; all-zero fields are the zero date `0000-00-00`.
    Date {
        year: u16,
        month: u8,
        day: u8,
    },
    /// DATETIME(fsp) in wall-clock fields, no time zone.
    DateTime {
        year: u16,
        month: u8,
        day: u8,
        hour: u8,
        minute: u8,
        second: u8,
        micros: u32,
    },
    /// TIMESTAMP(fsp): seconds since the Unix epoch in UTC; 0 is the zero timestamp.
    Timestamp {
        secs: u32,
        micros: u32,
    },
    /// TIME(fsp), which may be negative and exceed 24 hours.
    Time {
        negative: bool,
        hours: u32,
        minutes: u8,
        seconds: u8,
        micros: u32,
    },
    /// YEAR; 0 is the zero year `0000`.
    Year(u16),
    /// BIT(n), right-aligned.
    Bit(u64),
    /// ENUM by 1-based index (0 is the empty error value).
    Enum(u16),
    /// SET as a bitmask of members.
    Set(u64),
    /// JSON as text (decoded from MySQL's binary JSON).
    Json(String),
}

/// Reads [`SmallBytes`] as a byte string where the format has one, as a sequence of
/// numbers otherwise (JSON arrays, as `Vec<u8>` serializes into JSON).
///
/// Why: smallvec's own `Deserialize` takes a sequence element by element, one call per
/// byte, and that was the largest cost of reading the log back (`rowlog bench log`'s
/// read). Postcard writes a byte sequence and a byte string alike (the length, then
/// the bytes), so the bytes of every record ever written read the same.
fn small_bytes<'de, D: serde::Deserializer<'de>>(d: D) -> Result<SmallBytes, D::Error> {
    struct Visitor;
    impl<'de> serde::de::Visitor<'de> for Visitor {
        type Value = SmallBytes;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("bytes")
        }
        fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<SmallBytes, E> {
            Ok(SmallBytes::from_slice(v))
        }
        fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<SmallBytes, E> {
            Ok(SmallBytes::from_vec(v))
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> Result<SmallBytes, A::Error> {
            // The hint comes from the input: capped, so a damaged length cannot make
            // this reserve gigabytes before the elements run out.
            let mut out = SmallBytes::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 16));
            while let Some(b) = seq.next_element::<u8>()? {
                out.push(b);
            }
            Ok(out)
        }
    }
    d.deserialize_bytes(Visitor)
}

impl Value {
    /// Roughly the memory the value takes.
    pub fn approx_bytes(&self) -> usize {
        match self {
            Value::Bytes(b) => 24 + b.len(),
            Value::Decimal(s) => 24 + s.len(),
            Value::Json(s) => 24 + s.len(),
            _ => 24,
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    /// Appends a canonical, unambiguous encoding of the value to `out`, used for
    /// hashing keys: equal values give equal bytes, and values of different variants
    /// never collide.
    pub fn write_key_bytes(&self, out: &mut Vec<u8>) {
        fn tagged(out: &mut Vec<u8>, tag: u8, bytes: &[u8]) {
            out.push(tag);
            out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
            out.extend_from_slice(bytes);
        }
        match self {
            Value::Null => out.push(0),
            Value::Int(v) => tagged(out, 1, &v.to_le_bytes()),
            Value::UInt(v) => tagged(out, 2, &v.to_le_bytes()),
            Value::Float(v) => tagged(out, 3, &v.to_bits().to_le_bytes()),
            Value::Double(v) => tagged(out, 4, &v.to_bits().to_le_bytes()),
            Value::Decimal(s) => tagged(out, 5, s.as_bytes()),
            Value::Bytes(b) => tagged(out, 6, b),
            Value::Date { year, month, day } => {
                tagged(out, 7, &[&year.to_le_bytes()[..], &[*month, *day]].concat())
            }
            Value::DateTime {
                year,
                month,
                day,
                hour,
                minute,
                second,
                micros,
            } => tagged(
                out,
                8,
                &[
                    &year.to_le_bytes()[..],
                    &[*month, *day, *hour, *minute, *second],
                    &micros.to_le_bytes(),
                ]
                .concat(),
            ),
            Value::Timestamp { secs, micros } => {
                tagged(out, 9, &[secs.to_le_bytes(), micros.to_le_bytes()].concat())
            }
            Value::Time {
                negative,
                hours,
                minutes,
                seconds,
                micros,
            } => tagged(
                out,
                10,
                &[
                    &[*negative as u8][..],
                    &hours.to_le_bytes(),
                    &[*minutes, *seconds],
                    &micros.to_le_bytes(),
                ]
                .concat(),
            ),
            Value::Year(v) => tagged(out, 11, &v.to_le_bytes()),
            Value::Bit(v) => tagged(out, 12, &v.to_le_bytes()),
            Value::Enum(v) => tagged(out, 13, &v.to_le_bytes()),
            Value::Set(v) => tagged(out, 14, &v.to_le_bytes()),
            Value::Json(s) => tagged(out, 15, s.as_bytes()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Inline short values must not make every value bigger: a row image is a
    /// `Vec<Value>`, and a value of any type costs this much.
    #[test]
    #[cfg(target_pointer_width = "64")]
    fn a_value_stays_as_small_as_a_vec_and_a_tag() {
        assert_eq!(std::mem::size_of::<SmallBytes>(), 24);
        assert_eq!(std::mem::size_of::<SmallText>(), 24);
        assert_eq!(std::mem::size_of::<Value>(), 32);
    }

    #[test]
    fn short_values_are_inline_and_long_ones_spill() {
        let short: SmallBytes = b"owner-1234567".to_vec().into();
        assert!(!short.spilled());
        let long: SmallBytes = vec![7u8; 17].into();
        assert!(long.spilled());
        assert_eq!(&long[..], &[7u8; 17][..]);
        let text = SmallText::from("-12345678901234.567890");
        assert!(!text.is_heap_allocated());
    }

    /// Bytes are read as a byte string from postcard (the log's records) and as an
    /// array of numbers from JSON (snapshot and re-snapshot state files), and read back
    /// what was written, inline or spilled, in both.
    #[test]
    fn bytes_read_back_from_postcard_and_from_json() {
        for len in [0usize, 1, 16, 17, 300] {
            let v = Value::Bytes((0..len).map(|i| (i * 7 % 256) as u8).collect());
            let record = postcard::to_allocvec(&v).unwrap();
            assert_eq!(postcard::from_bytes::<Value>(&record).unwrap(), v);
            let json = serde_json::to_string(&v).unwrap();
            assert_eq!(serde_json::from_str::<Value>(&json).unwrap(), v, "{json}");
        }
    }
}
