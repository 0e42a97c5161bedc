//! The payload of a change record: a format version byte, then the change encoded with
//! postcard (serde's compact, stable 1.0 wire format). The table schema is stored once
//! in the schema store and referenced here by id, so old records always decode with
//! the columns they were written with, whatever the live source schema is now.

use rowlog_api::{ChangeEvent, Op, SourceMeta, TableSchema, Value};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

const FORMAT_V1: u8 = 1;

#[derive(Serialize)]
struct BodyRef<'a> {
    schema: u32,
    op: Op,
    before: Option<&'a [Value]>,
    after: Option<&'a [Value]>,
    source: &'a SourceMeta,
}

#[derive(Deserialize)]
struct Body {
    schema: u32,
    op: Op,
    before: Option<Vec<Value>>,
    after: Option<Vec<Value>>,
    source: SourceMeta,
}

pub fn encode(schema_id: u32, c: &ChangeEvent, out: &mut Vec<u8>) -> Result<(), String> {
    out.push(FORMAT_V1);
    let body = BodyRef {
        schema: schema_id,
        op: c.op,
        before: c.before.as_deref(),
        after: c.after.as_deref(),
        source: &c.source,
    };
    let encoded = postcard::to_extend(&body, std::mem::take(out)).map_err(|e| e.to_string())?;
    *out = encoded;
    Ok(())
}

fn body(payload: &[u8]) -> Result<Body, String> {
    match payload.split_first() {
        Some((&FORMAT_V1, rest)) => postcard::from_bytes(rest).map_err(|e| format!("payload: {e}")),
        Some((v, _)) => Err(format!("unknown record format {v}")),
        None => Err("empty payload".into()),
    }
}

/// Decodes a change, resolving its schema id with `schema`.
pub fn decode(
    payload: &[u8],
    schema: impl FnOnce(u32) -> Option<Arc<TableSchema>>,
) -> Result<ChangeEvent, String> {
    let b = body(payload)?;
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
    body(payload).map(|b| b.source)
}
