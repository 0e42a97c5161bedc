//! Change records as JSON for people and scripts: one object per record, values typed
//! as JSON allows (integers as numbers, decimals as exact strings, text as strings,
//! bytes that are not UTF-8 as `{"hex": "…"}`, temporal values in ISO-8601 form).

use rowlog_api::{ChangeEvent, Value};
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

fn row(c: &ChangeEvent, image: &Option<Vec<Value>>) -> Json {
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
pub fn record(partition: u32, offset: u64, c: &ChangeEvent) -> Json {
    let mut out = Map::new();
    out.insert("partition".into(), json!(partition));
    out.insert("offset".into(), json!(offset));
    if let Json::Object(m) = change(c) {
        out.extend(m);
    }
    Json::Object(out)
}

/// A change as read from the source: table, operation, key, images, source position.
pub fn change(c: &ChangeEvent) -> Json {
    json!({
        "table": c.table.name.to_string(),
        "op": c.op.as_str(),
        "key": c.key().map(value).collect::<Vec<_>>(),
        "before": row(c, &c.before),
        "after": row(c, &c.after),
        "source": {
            "position": c.source.id.event.to_string(),
            "index": c.source.id.index,
            "txn_start": c.source.txn_start.to_string(),
            "gtid": c.source.gtid.as_ref().map(|g| g.to_string()),
            "commit_time_ms": c.source.commit_time_ms,
        }
    })
}
