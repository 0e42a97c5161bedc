//! Change records as JSON for people and scripts: one object per record, values typed
//! as JSON allows (integers as numbers, decimals as exact strings, text as strings,
//! bytes that are not UTF-8 as `{"hex": "…"}`, temporal values in ISO-8601 form).

use rowlog_api::{ChangeEvent, SchemaChange, SourceMeta, Value};

use crate::log::LogEntry;
use serde_json::{json, Map, Value as Json};

pub fn value(v: &Value) -> Json {
    match v {
        Value::Null => Json::Null,
        Value::Int(i) => json!(i),
        Value::UInt(u) => json!(u),
        Value::Float(f) => json!(f),
        Value::Double(d) => json!(d),
        Value::Decimal(s) => json!(s),
        Value::Bytes(b) => match std::str::from_utf8(b) {
            Ok(s) => json!(s),
            Err(_) => json!({ "hex": b.iter().map(|x| format!("{x:02x}")).collect::<String>() }),
        },
        Value::Json(s) => serde_json::from_str(s).unwrap_or_else(|_| json!(s)),
        Value::Date { year, month, day } => json!(format!("{year:04}-{month:02}-{day:02}")),
        Value::DateTime {
            year,
            month,
            day,
            hour,
            minute,
            second,
            micros,
        } => {
            json!(format!(
                "{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}.{micros:06}"
            ))
        }
        Value::Timestamp { secs, micros } => json!({ "epoch_seconds": secs, "micros": micros }),
        Value::Time {
            negative,
            hours,
            minutes,
            seconds,
            micros,
        } => {
            json!(format!(
                "{}{hours:02}:{minutes:02}:{seconds:02}.{micros:06}",
                if *negative { "-" } else { "" }
            ))
        }
        Value::Year(y) => json!(y),
        Value::Bit(b) => json!(b),
        Value::Enum(i) => json!({ "enum_index": i }),
        Value::Set(s) => json!({ "set_bits": s }),
    }
}

/// A row image as an object of column name → value.
pub fn row(c: &ChangeEvent, image: &Option<Vec<Value>>) -> Json {
    match image {
        None => Json::Null,
        Some(values) => {
            let mut m = Map::new();
            for (col, v) in c.table.columns.iter().zip(values) {
                m.insert(col.name.clone(), value(v));
            }
            Json::Object(m)
        }
    }
}

/// One record: where it is in the log, what changed, and where it came from.
pub fn record(partition: u32, offset: u64, entry: &LogEntry) -> Json {
    match entry {
        LogEntry::Change(c) => change_record(partition, offset, c),
        LogEntry::Schema(s) => at(partition, offset, schema_change(s)),
    }
}

/// A change record, as [`record`] prints it.
pub fn change_record(partition: u32, offset: u64, c: &ChangeEvent) -> Json {
    at(partition, offset, change(c))
}

/// `body` with the record's partition and offset in front.
fn at(partition: u32, offset: u64, body: Json) -> Json {
    let mut out = Map::new();
    out.insert("partition".into(), json!(partition));
    out.insert("offset".into(), json!(offset));
    if let Json::Object(m) = body {
        out.extend(m);
    }
    Json::Object(out)
}

/// A schema change: the statement, its kind and tables, where it ran.
pub fn schema_change(s: &SchemaChange) -> Json {
    json!({
        "ddl": s.statement,
        "kind": s.kind.as_str(),
        "db": s.db,
        "tables": s.tables.iter().map(|t| t.to_string()).collect::<Vec<_>>(),
        "source": source(&s.source),
    })
}

fn source(m: &SourceMeta) -> Json {
    json!({
        "position": m.id.event.to_string(),
        "index": m.id.index,
        "txn_start": m.txn_start.to_string(),
        "gtid": m.gtid.as_ref().map(|g| g.to_string()),
        "commit_time_ms": m.commit_time_ms,
    })
}

/// A change as read from the source: table, operation, key, images, source position.
pub fn change(c: &ChangeEvent) -> Json {
    json!({
        "table": c.table.name.to_string(),
        "op": c.op.as_str(),
        "key": c.key().map(value).collect::<Vec<_>>(),
        "before": row(c, &c.before),
        "after": row(c, &c.after),
        "source": source(&c.source),
    })
}
