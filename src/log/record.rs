//! The payload of a record: a format byte, then the entry encoded with postcard
//! (serde's compact, stable 1.0 wire format).
//!
//! * `1`: a row change. The table schema is stored once in the schema store and
//!   referenced here by id, so old records always decode with the columns they were
//!   written with, whatever the live source schema is now.
//! * `2`: a schema change (the DDL statement, its tables and source position).
//!
//! Row changes are encoded by [`encode`], written by hand: it writes exactly the bytes
//! postcard writes for the same body (a property test below holds the two equal over
//! every value variant), so decoding stays with serde. Why by hand: encoding is most
//! of an append's CPU, and serde's generic path costs about twice as much for the
//! same bytes.

use rowlog_api::{
    BinlogPosition, ChangeEvent, Gtid, Op, SchemaChange, SourceMeta, TableSchema, Value,
};
use serde::Deserialize;
use std::sync::Arc;

use super::LogEntry;

const FORMAT_V1: u8 = 1;
const FORMAT_SCHEMA_CHANGE: u8 = 2;

#[derive(Deserialize)]
struct Body {
    schema: u32,
    op: Op,
    before: Option<Vec<Value>>,
    after: Option<Vec<Value>>,
    source: SourceMeta,
}

pub fn encode(schema_id: u32, c: &ChangeEvent, out: &mut Vec<u8>) -> Result<(), String> {
    let image_bytes = |img: &Option<Vec<Value>>| {
        img.as_deref()
            .map_or(0, |r| r.iter().map(|v| v.approx_bytes()).sum())
    };
    out.reserve(64 + image_bytes(&c.before) + image_bytes(&c.after));
    out.push(FORMAT_V1);
    varint(out, u64::from(schema_id));
    out.push(match c.op {
        Op::Insert => 0,
        Op::Update => 1,
        Op::Delete => 2,
    });
    image(out, c.before.as_deref());
    image(out, c.after.as_deref());
    source(out, &c.source);
    Ok(())
}

// The hand encoder: postcard's wire format. Unsigned integers wider than a byte are
// LEB128 varints, signed ones zigzag-encoded first; u8 and bool are one byte; floats
// are little-endian; an enum is its variant index (a varint) and then its fields; an
// Option is 0, or 1 and the value; a sequence or string is its length and its items.

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn bytes(out: &mut Vec<u8>, b: &[u8]) {
    varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

fn image(out: &mut Vec<u8>, row: Option<&[Value]>) {
    match row {
        None => out.push(0),
        Some(row) => {
            out.push(1);
            varint(out, row.len() as u64);
            row.iter().for_each(|v| value(out, v));
        }
    }
}

fn value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::Null => out.push(0),
        Value::Int(i) => {
            out.push(1);
            varint(out, ((i << 1) ^ (i >> 63)) as u64);
        }
        Value::UInt(u) => {
            out.push(2);
            varint(out, *u);
        }
        Value::Float(f) => {
            out.push(3);
            out.extend_from_slice(&f.to_le_bytes());
        }
        Value::Double(d) => {
            out.push(4);
            out.extend_from_slice(&d.to_le_bytes());
        }
        Value::Decimal(s) => {
            out.push(5);
            bytes(out, s.as_bytes());
        }
        Value::Bytes(b) => {
            out.push(6);
            bytes(out, b);
        }
        Value::Date { year, month, day } => {
            out.push(7);
            varint(out, u64::from(*year));
            out.extend_from_slice(&[*month, *day]);
        }
        Value::DateTime {
            year,
            month,
            day,
            hour,
            minute,
            second,
            micros,
        } => {
            out.push(8);
            varint(out, u64::from(*year));
            out.extend_from_slice(&[*month, *day, *hour, *minute, *second]);
            varint(out, u64::from(*micros));
        }
        Value::Timestamp { secs, micros } => {
            out.push(9);
            varint(out, u64::from(*secs));
            varint(out, u64::from(*micros));
        }
        Value::Time {
            negative,
            hours,
            minutes,
            seconds,
            micros,
        } => {
            out.push(10);
            out.push(u8::from(*negative));
            varint(out, u64::from(*hours));
            out.extend_from_slice(&[*minutes, *seconds]);
            varint(out, u64::from(*micros));
        }
        Value::Year(y) => {
            out.push(11);
            varint(out, u64::from(*y));
        }
        Value::Bit(b) => {
            out.push(12);
            varint(out, *b);
        }
        Value::Enum(e) => {
            out.push(13);
            varint(out, u64::from(*e));
        }
        Value::Set(s) => {
            out.push(14);
            varint(out, *s);
        }
        Value::Json(s) => {
            out.push(15);
            bytes(out, s.as_bytes());
        }
    }
}

fn position(out: &mut Vec<u8>, p: &BinlogPosition) {
    bytes(out, p.file.base.as_bytes());
    varint(out, u64::from(p.file.seq));
    out.push(p.file.width);
    varint(out, p.pos);
}

fn source(out: &mut Vec<u8>, s: &SourceMeta) {
    varint(out, u64::from(s.id.epoch));
    position(out, &s.id.event);
    varint(out, u64::from(s.id.index));
    position(out, &s.txn_start);
    match &s.gtid {
        None => out.push(0),
        Some(Gtid::MariaDb(g)) => {
            out.extend_from_slice(&[1, 0]);
            varint(out, u64::from(g.domain));
            varint(out, u64::from(g.server));
            varint(out, g.seq);
        }
        Some(Gtid::MySql(g)) => {
            out.extend_from_slice(&[1, 1]);
            out.extend_from_slice(&g.sid);
            match &g.tag {
                None => out.push(0),
                Some(tag) => {
                    out.push(1);
                    bytes(out, tag.as_bytes());
                }
            }
            varint(out, g.gno);
        }
    }
    varint(out, s.commit_time_ms);
}

pub fn encode_schema_change(s: &SchemaChange, out: &mut Vec<u8>) -> Result<(), String> {
    out.push(FORMAT_SCHEMA_CHANGE);
    let encoded = postcard::to_extend(s, std::mem::take(out)).map_err(|e| e.to_string())?;
    *out = encoded;
    Ok(())
}

enum Decoded {
    Change(Body),
    Schema(SchemaChange),
}

fn body(payload: &[u8]) -> Result<Decoded, String> {
    let parse = |e: postcard::Error| format!("payload: {e}");
    match payload.split_first() {
        Some((&FORMAT_V1, rest)) => postcard::from_bytes(rest)
            .map(Decoded::Change)
            .map_err(parse),
        Some((&FORMAT_SCHEMA_CHANGE, rest)) => postcard::from_bytes(rest)
            .map(Decoded::Schema)
            .map_err(parse),
        Some((v, _)) => Err(format!("unknown record format {v}")),
        None => Err("empty payload".into()),
    }
}

/// Decodes an entry, resolving a change's schema id with `schema`.
pub fn decode(
    payload: &[u8],
    schema: impl FnOnce(u32) -> Option<Arc<TableSchema>>,
) -> Result<LogEntry, String> {
    match body(payload)? {
        Decoded::Change(b) => change(b, schema).map(LogEntry::Change),
        Decoded::Schema(s) => Ok(LogEntry::Schema(Arc::new(s))),
    }
}

fn change(
    b: Body,
    schema: impl FnOnce(u32) -> Option<Arc<TableSchema>>,
) -> Result<ChangeEvent, String> {
    let table = schema(b.schema).ok_or_else(|| format!("unknown schema id {}", b.schema))?;
    let width = table.columns.len();
    let ok_image = |img: &Option<Vec<Value>>| img.as_ref().is_none_or(|r| r.len() == width);
    let images_fit_op = match b.op {
        Op::Insert => b.after.is_some(),
        Op::Update => b.after.is_some() && b.before.is_some(),
        Op::Delete => b.before.is_some(),
    };
    if !ok_image(&b.before) || !ok_image(&b.after) || !images_fit_op {
        return Err(format!(
            "{:?} record does not match the {width} columns of {}",
            b.op, table.name
        ));
    }
    Ok(ChangeEvent {
        table,
        op: b.op,
        before: b.before,
        after: b.after,
        source: b.source,
    })
}

/// Only the source identity, without resolving the schema (used by recovery).
pub fn decode_source(payload: &[u8]) -> Result<SourceMeta, String> {
    body(payload).map(|b| match b {
        Decoded::Change(b) => b.source,
        Decoded::Schema(s) => s.source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rowlog_api::{BinlogFileName, ChangeId, MariadbGtid, MysqlGtid, TableName};

    /// The body as serde sees it: what [`encode`] must write byte for byte.
    #[derive(serde::Serialize)]
    struct BodyRef<'a> {
        schema: u32,
        op: Op,
        before: Option<&'a [Value]>,
        after: Option<&'a [Value]>,
        source: &'a SourceMeta,
    }

    fn value() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<i64>().prop_map(Value::Int),
            any::<u64>().prop_map(Value::UInt),
            any::<f32>().prop_map(Value::Float),
            any::<f64>().prop_map(Value::Double),
            ".{0,40}".prop_map(Value::Decimal),
            proptest::collection::vec(any::<u8>(), 0..300).prop_map(Value::Bytes),
            (any::<u16>(), any::<u8>(), any::<u8>()).prop_map(|(year, month, day)| Value::Date {
                year,
                month,
                day
            }),
            (any::<u16>(), any::<[u8; 5]>(), any::<u32>()).prop_map(|(year, f, micros)| {
                Value::DateTime {
                    year,
                    month: f[0],
                    day: f[1],
                    hour: f[2],
                    minute: f[3],
                    second: f[4],
                    micros,
                }
            }),
            (any::<u32>(), any::<u32>())
                .prop_map(|(secs, micros)| Value::Timestamp { secs, micros }),
            (any::<bool>(), any::<u32>(), any::<[u8; 2]>(), any::<u32>()).prop_map(
                |(negative, hours, f, micros)| Value::Time {
                    negative,
                    hours,
                    minutes: f[0],
                    seconds: f[1],
                    micros,
                }
            ),
            any::<u16>().prop_map(Value::Year),
            any::<u64>().prop_map(Value::Bit),
            any::<u16>().prop_map(Value::Enum),
            any::<u64>().prop_map(Value::Set),
            ".{0,60}".prop_map(Value::Json),
        ]
    }

    fn position() -> impl Strategy<Value = BinlogPosition> {
        ("[a-z.-]{1,20}", any::<u32>(), any::<u8>(), any::<u64>()).prop_map(
            |(base, seq, width, pos)| BinlogPosition {
                file: BinlogFileName {
                    base: base.into(),
                    seq,
                    width,
                },
                pos,
            },
        )
    }

    fn gtid() -> impl Strategy<Value = Option<Gtid>> {
        prop_oneof![
            Just(None),
            (any::<u32>(), any::<u32>(), any::<u64>()).prop_map(|(domain, server, seq)| Some(
                Gtid::MariaDb(MariadbGtid {
                    domain,
                    server,
                    seq
                })
            )),
            (
                any::<[u8; 16]>(),
                proptest::option::of("[a-z_]{1,32}"),
                any::<u64>()
            )
                .prop_map(|(sid, tag, gno)| Some(Gtid::MySql(MysqlGtid {
                    sid,
                    tag,
                    gno
                }))),
        ]
    }

    fn image() -> impl Strategy<Value = Option<Vec<Value>>> {
        proptest::option::of(proptest::collection::vec(value(), 0..20))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// The hand encoder writes exactly what postcard writes for the same body, so
        /// records it writes decode with serde, and old records read as before.
        #[test]
        fn the_hand_encoder_writes_what_postcard_writes(
            schema_id in any::<u32>(),
            op in prop_oneof![Just(Op::Insert), Just(Op::Update), Just(Op::Delete)],
            before in image(),
            after in image(),
            (epoch, index, commit_time_ms) in (any::<u32>(), any::<u32>(), any::<u64>()),
            (event, txn_start, gtid) in (position(), position(), gtid()),
        ) {
            let c = ChangeEvent {
                table: std::sync::Arc::new(TableSchema {
                    name: TableName::new("d", "t"),
                    columns: vec![],
                    primary_key: vec![],
                    unique_keys: vec![],
                    keyless: true,
                }),
                op,
                before,
                after,
                source: SourceMeta {
                    id: ChangeId { epoch, event, index },
                    txn_start,
                    gtid,
                    commit_time_ms,
                },
            };
            let mut ours = vec![0xAA];
            encode(schema_id, &c, &mut ours).unwrap();
            let body = BodyRef {
                schema: schema_id,
                op: c.op,
                before: c.before.as_deref(),
                after: c.after.as_deref(),
                source: &c.source,
            };
            let mut theirs = vec![0xAA, FORMAT_V1];
            theirs.extend(postcard::to_allocvec(&body).unwrap());
            prop_assert_eq!(ours, theirs);
        }
    }
}
