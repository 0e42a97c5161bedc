//! One row change read from the source.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::{BinlogPosition, ChangeId, Column, Gtid, TableName, TableSchema, Value};

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

    /// What partitioning and worker dispatch hash: the primary key's parts that
    /// compare by their bytes (all of them, for keys of numbers, times and binary
    /// strings), or for a table with secondary unique keys the table alone.
    ///
    /// Why the table alone: two keys' changes can collide on a unique value. Source
    /// order, row A frees `x`, then row B takes it. Routed by primary key, A and B may
    /// be applied by different workers in either order; B first fails with a duplicate
    /// key, and no local fix is right in every case (evicting the holder is wrong when
    /// the holder's change is the newer one). Routed by table, the table's changes
    /// apply in source order and the sink can write them with REPLACE safely. The
    /// cost: one worker per such table.
    ///
    /// Why not the parts that compare by collation (text, also `_bin` collations,
    /// which ignore trailing spaces): keys of other bytes can be one row on the
    /// destination. `UPDATE … SET email = LOWER(email)` is a delete of 'A@x' and an
    /// insert of 'a@x'; routed apart, the insert can run first (updating the row
    /// 'A@x' in place) and the delete then removes the row. Every key equal under
    /// the collation must take one route, and no function of the bytes short of the
    /// collation's own weights maps them together ('ß' is 'ss', 'é' is 'e', '１' is
    /// '1' under some), so those parts do not route. The cost: a table keyed by text
    /// alone goes to one worker, as a table with unique keys does.
    pub fn routing_key_bytes(&self) -> Vec<u8> {
        if !self.table.unique_keys.is_empty() {
            return key_bytes(&self.table.name, std::iter::empty());
        }
        let image = self.key_image();
        let columns = &self.table.columns;
        key_bytes(
            &self.table.name,
            self.table
                .primary_key
                .iter()
                .filter(|&&i| columns.get(i).is_some_and(Column::compares_by_bytes))
                .filter_map(|&i| image.get(i)),
        )
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ColumnType;

    fn text(name: &str) -> Column {
        Column {
            charset: Some(45),
            charset_name: Some("utf8mb4".into()),
            ..Column::plain(name, ColumnType::VarString { max_bytes: 80 })
        }
    }

    fn change(columns: Vec<Column>, key: Vec<usize>, op: Op, row: Vec<Value>) -> ChangeEvent {
        let table = Arc::new(TableSchema {
            name: TableName::new("app", "t"),
            columns,
            primary_key: key,
            unique_keys: vec![],
            keyless: false,
        });
        let pos: BinlogPosition = "binlog.000001:4".parse().unwrap();
        let (before, after) = match op {
            Op::Delete => (Some(row), None),
            _ => (None, Some(row)),
        };
        ChangeEvent {
            table,
            op,
            before,
            after,
            source: SourceMeta {
                id: ChangeId {
                    epoch: 0,
                    event: pos.clone(),
                    index: 0,
                },
                txn_start: pos,
                gtid: None,
                commit_time_ms: 0,
            },
        }
    }

    fn s(v: &str) -> Value {
        Value::Bytes(v.as_bytes().into())
    }

    #[test]
    fn keys_equal_under_a_collation_take_one_route_and_byte_keys_route_whole() {
        // A text key: 'abc' deleted and 'ABC' inserted route together.
        let del = change(vec![text("k")], vec![0], Op::Delete, vec![s("abc")]);
        let ins = change(vec![text("k")], vec![0], Op::Insert, vec![s("ABC")]);
        assert_ne!(del.key_bytes(), ins.key_bytes());
        assert_eq!(del.routing_key_bytes(), ins.routing_key_bytes());
        assert!(!del.table.routes_by_whole_key());

        // A number beside the text still routes.
        let cols = || vec![Column::plain("tenant", ColumnType::Int), text("tag")];
        let a = change(cols(), vec![0, 1], Op::Delete, vec![Value::Int(1), s("x")]);
        let b = change(cols(), vec![0, 1], Op::Insert, vec![Value::Int(1), s("X")]);
        let c = change(cols(), vec![0, 1], Op::Insert, vec![Value::Int(2), s("x")]);
        assert_eq!(a.routing_key_bytes(), b.routing_key_bytes());
        assert_ne!(a.routing_key_bytes(), c.routing_key_bytes());

        // Numbers and binary strings route by the whole key, with the bytes they always had.
        let binary = Column {
            charset: Some(Column::BINARY_COLLATION),
            ..Column::plain("b", ColumnType::VarString { max_bytes: 16 })
        };
        let n = change(
            vec![Column::plain("id", ColumnType::BigInt), binary],
            vec![0, 1],
            Op::Insert,
            vec![Value::Int(7), s("abc")],
        );
        assert!(n.table.routes_by_whole_key());
        assert_eq!(n.routing_key_bytes(), n.key_bytes());
        let m = change(
            n.table.columns.clone(),
            vec![0, 1],
            Op::Insert,
            vec![Value::Int(7), s("ABC")],
        );
        assert_ne!(n.routing_key_bytes(), m.routing_key_bytes());
    }
}
