//! One row change read from the source.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::{BinlogPosition, ChangeId, Gtid, TableName, TableSchema, Value};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Op {
    Insert,
    Update,
    Delete,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Insert => "insert",
            Op::Update => "update",
            Op::Delete => "delete",
        }
    }
}

/// Where and when a change was read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceMeta {
    /// Unique, ordered identity of the change in the source stream.
    pub id: ChangeId,
    /// Where the change's transaction began: a valid resume point.
    pub txn_start: BinlogPosition,
    /// The transaction's GTID when the source has one.
    pub gtid: Option<Gtid>,
    /// Event timestamp in milliseconds since the epoch (the binlog has second precision).
    pub commit_time_ms: u64,
}

/// A row change. An UPDATE that changes the primary key never appears as one event:
/// the source emits a DELETE of the old key and an INSERT of the new one, so that
/// every event belongs to exactly one key and per-key ordering is enough.
#[derive(Clone, Debug, PartialEq)]
pub struct ChangeEvent {
    pub table: Arc<TableSchema>,
    pub op: Op,
    /// The row before the change (updates and deletes).
    pub before: Option<Vec<Value>>,
    /// The row after the change (inserts and updates).
    pub after: Option<Vec<Value>>,
    pub source: SourceMeta,
}

impl ChangeEvent {
    /// Roughly how much memory the change's values take: what bounds a batch by size.
    pub fn approx_bytes(&self) -> usize {
        let image = |img: &Option<Vec<Value>>| {
            img.as_ref()
                .map(|r| r.iter().map(Value::approx_bytes).sum())
                .unwrap_or(0)
        };
        64 + image(&self.before) + image(&self.after)
    }

    /// The row image that identifies the key: the after-image, or the before-image of a delete.
    pub fn key_image(&self) -> &[Value] {
        match (self.op, &self.after, &self.before) {
            (Op::Delete, _, Some(b)) => b,
            (_, Some(a), _) => a,
            (_, None, Some(b)) => b,
            (_, None, None) => &[],
        }
    }

    /// The primary-key values, in key order.
    pub fn key(&self) -> impl Iterator<Item = &Value> {
        let image = self.key_image();
        self.table
            .primary_key
            .iter()
            .filter_map(move |&i| image.get(i))
    }

    /// Canonical bytes of (db, table, primary key): what partitioning and dispatch hash.
    pub fn key_bytes(&self) -> Vec<u8> {
        key_bytes(&self.table.name, self.key())
    }

    /// What partitioning and worker dispatch hash: the primary key, or for a table
    /// with secondary unique keys the table alone.
    ///
    /// Why: two keys' changes can collide on a unique value. Source order, row A
    /// frees `x`, then row B takes it. Routed by primary key, A and B may be applied by
    /// different workers in either order; B first fails with a duplicate key, and no
    /// local fix is right in every case (evicting the holder is wrong when the holder's
    /// change is the newer one). Routed by table, the table's changes apply in source
    /// order and the sink can write them with REPLACE safely. The cost: one worker per
    /// such table.
    pub fn routing_key_bytes(&self) -> Vec<u8> {
        if self.table.unique_keys.is_empty() {
            self.key_bytes()
        } else {
            key_bytes(&self.table.name, std::iter::empty())
        }
    }
}

/// Canonical bytes of a key: length-prefixed db and table names, then each key value's
/// tagged encoding. Stable forever: log partitions are chosen by hashing it.
pub fn key_bytes<'a>(table: &TableName, key: impl Iterator<Item = &'a Value>) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    for part in [table.db.as_bytes(), table.table.as_bytes()] {
        out.extend_from_slice(&(part.len() as u32).to_le_bytes());
        out.extend_from_slice(part);
    }
    for v in key {
        v.write_key_bytes(&mut out);
    }
    out
}
