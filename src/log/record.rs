//! The payload of a record: a format byte, then the entry in postcard's wire format
//! (serde's compact, stable 1.0 format).
//!
//! * `1`: a row change. The table schema is stored once in the schema store and
//!   referenced here by id, so old records always decode with the columns they were
//!   written with, whatever the live source schema is now.
//! * `2`: a schema change (the DDL statement, its tables and source position).
//!
//! Row changes, nearly every record, are written by hand in [`super::codec`], byte
//! for byte what postcard writes; everything is read with serde.

use rowlog_api::{ChangeEvent, Op, SchemaChange, SourceMeta, TableSchema, Value};
use std::sync::Arc;

use serde::Deserialize;

use super::codec;
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
    out.push(FORMAT_V1);
    codec::encode(schema_id, c, out);
    Ok(())
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
