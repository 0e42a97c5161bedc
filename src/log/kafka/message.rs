//! What a log record looks like as a Kafka message: the key, the Debezium-shaped JSON
//! value any Kafka consumer can read, and inside it (field `rowlog`) the exact record
//! rowlog's own sink decodes. README "Running on Kafka" documents the format.

use base64::prelude::{Engine, BASE64_STANDARD};
use rdkafka::message::Message;
use rowlog_api::{ChangeEvent, Op, SchemaChange};
use serde::Deserialize;
use serde_json::json;

use crate::log::{record, LogEntry};

/// The value's field holding the exact record (base64 of [`super::record`]'s bytes).
const RECORD_FIELD: &str = "rowlog";

/// The exact record a message value carries, or why there is none.
pub(super) fn record_of(m: &impl Message) -> Result<Vec<u8>, String> {
    #[derive(Deserialize)]
    struct Carrier {
        rowlog: Option<String>,
    }
    let value = m.payload().ok_or("the message has no value")?;
    // The other fields are skipped, not built.
    let carrier: Carrier =
        serde_json::from_slice(value).map_err(|e| format!("the value is not JSON: {e}"))?;
    let text = carrier.rowlog.ok_or_else(|| {
        format!("the value has no \"{RECORD_FIELD}\" field: it was not written by rowlog")
    })?;
    BASE64_STANDARD
        .decode(text)
        .map_err(|e| format!("the \"{RECORD_FIELD}\" field is not base64: {e}"))
}

/// One entry as a message.
pub(super) struct Encoded {
    pub key: Option<String>,
    pub value: String,
    /// The message timestamp: the source commit time.
    pub time_ms: u64,
}

/// The message of one entry: key, and the Debezium-shaped value carrying the exact
/// record in its `rowlog` field. `schema_id` is the id of a change's table schema.
pub(super) fn encode(entry: &LogEntry, schema_id: u32, topic: &str) -> Result<Encoded, String> {
    let mut record = Vec::new();
    let (key, mut value, time_ms) = match entry {
        LogEntry::Change(c) => {
            record::encode(schema_id, c, &mut record)?;
            let key = json!({
                "db": c.table.name.db,
                "table": c.table.name.table,
                "key": c.key().map(crate::tools::json::value).collect::<Vec<_>>(),
            });
            (
                Some(key.to_string()),
                envelope(c, schema_id, topic),
                c.source.commit_time_ms,
            )
        }
        LogEntry::Schema(s) => {
            record::encode_schema_change(s, &mut record)?;
            (None, schema_envelope(s, topic), s.source.commit_time_ms)
        }
    };
    if let serde_json::Value::Object(m) = &mut value {
        m.insert(
            RECORD_FIELD.into(),
            serde_json::Value::String(BASE64_STANDARD.encode(&record)),
        );
    }
    Ok(Encoded {
        key,
        value: value.to_string(),
        time_ms,
    })
}

/// The Debezium-shaped envelope of a row change.
fn envelope(c: &ChangeEvent, schema_id: u32, topic: &str) -> serde_json::Value {
    let op = match (c.source.id.is_copy(), c.op) {
        (true, _) => "r",
        (_, Op::Insert) => "c",
        (_, Op::Update) => "u",
        (_, Op::Delete) => "d",
    };
    json!({
        "before": crate::tools::json::row(c, &c.before),
        "after": crate::tools::json::row(c, &c.after),
        "source": source(&c.source, &c.table.name.db, Some(&c.table.name.table), topic, Some(schema_id)),
        "op": op,
        "ts_ms": now_ms(),
    })
}

/// A schema change in the shape of Debezium's schema-change events: no `op`, so
/// consumers of row changes pass over it.
fn schema_envelope(s: &SchemaChange, topic: &str) -> serde_json::Value {
    json!({
        "source": source(&s.source, &s.db, None, topic, None),
        "ts_ms": now_ms(),
        "databaseName": s.db,
        "ddl": s.statement,
        "tableChanges": s.tables.iter().map(|t| json!({"id": t.to_string(), "type": s.kind.as_str()})).collect::<Vec<_>>(),
    })
}

fn source(
    m: &rowlog_api::SourceMeta,
    db: &str,
    table: Option<&str>,
    topic: &str,
    schema_id: Option<u32>,
) -> serde_json::Value {
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "connector": "rowlog",
        "name": topic,
        "ts_ms": m.commit_time_ms,
        "snapshot": if m.id.is_copy() { "true" } else { "false" },
        "db": db,
        "table": table,
        "gtid": m.gtid.as_ref().map(|g| g.to_string()),
        "file": m.id.event.file.to_string(),
        "pos": m.id.event.pos,
        "row": m.id.index,
        "txn_start": m.txn_start.to_string(),
        "rowlog_schema_id": schema_id,
    })
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
