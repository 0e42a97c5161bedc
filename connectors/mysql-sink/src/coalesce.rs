//! Collapsing a batch to one final state per key.
//!
//! Only the last change of each (table, primary key) in a batch matters to the final
//! destination state: an upsert of its after-image, or a delete. Worked example, one
//! batch for key 7:
//!
//! ```text
//! insert 7 {a:1}  →  update 7 {a:2}  →  delete 7  →  insert 7 {a:3}
//! final: upsert 7 {a:3}
//! ```
//!
//! Distinct keys never interact through their primary keys, so once collapsed the
//! statements of one batch may run in any order; deletes run first so that a key
//! freeing a secondary unique value does so before another key takes it.
//!
//! Tables without a primary key (`keyless`, keyed by the whole row) are not collapsed:
//! two equal inserts are two rows, and `insert R, delete R` differs from
//! `delete R, insert R`. Their changes are kept in log order in `ordered`.

use std::collections::HashMap;
use std::sync::Arc;

use rowlog_api::{ChangeEvent, Op, TableSchema, Value};

/// The final changes of one batch for one table schema.
pub struct Coalesced<'a> {
    pub table: &'a Arc<TableSchema>,
    /// Before-images of keys whose final state is absent.
    pub deletes: Vec<&'a [Value]>,
    /// After-images of keys whose final state is present.
    pub upserts: Vec<&'a [Value]>,
    /// Keyless tables only: every change in log order, as (is an insert, row image).
    pub ordered: Vec<(bool, &'a [Value])>,
}

pub fn coalesce(changes: &[ChangeEvent]) -> Vec<Coalesced<'_>> {
    let mut last: HashMap<Vec<u8>, usize> = HashMap::with_capacity(changes.len());
    let mut keep: Vec<usize> = Vec::new();
    for (i, c) in changes.iter().enumerate() {
        if c.table.keyless {
            keep.push(i);
        } else {
            last.insert(c.key_bytes(), i);
        }
    }
    keep.extend(last.into_values());
    keep.sort_unstable();

    let mut out: Vec<Coalesced<'_>> = Vec::new();
    for i in keep {
        let c = &changes[i];
        let slot = match out
            .iter()
            .position(|g| Arc::ptr_eq(g.table, &c.table) || *g.table == c.table)
        {
            Some(p) => p,
            None => {
                out.push(Coalesced {
                    table: &c.table,
                    deletes: Vec::new(),
                    upserts: Vec::new(),
                    ordered: Vec::new(),
                });
                out.len() - 1
            }
        };
        let g = &mut out[slot];
        match (c.op, &c.after, &c.before) {
            (Op::Delete, _, Some(before)) if c.table.keyless => g.ordered.push((false, before)),
            (Op::Insert, Some(after), _) if c.table.keyless => g.ordered.push((true, after)),
            // The source splits a keyless update that changes the row into a delete and
            // an insert; one that reaches here leaves the row as it was.
            (Op::Update, Some(after), Some(before)) if c.table.keyless && before != after => {
                g.ordered.push((false, before));
                g.ordered.push((true, after));
            }
            (Op::Update, _, _) if c.table.keyless => {}
            (Op::Delete, _, Some(before)) => g.deletes.push(before),
            (_, Some(after), _) => g.upserts.push(after),
            // A change without the image its op needs cannot come from the source.
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rowlog_api::{BinlogPosition, ChangeId, Column, ColumnType, SourceMeta, TableName};

    fn table() -> Arc<TableSchema> {
        let col = |name: &str| Column {
            name: name.into(),
            ty: ColumnType::Int,
            unsigned: false,
            charset: None,
            charset_name: None,
            generated: false,
            nullable: false,
        };
        Arc::new(TableSchema {
            name: TableName::new("d", "t"),
            columns: vec![col("id"), col("a")],
            primary_key: vec![0],
            unique_keys: vec![],
            keyless: false,
        })
    }

    fn change(t: &Arc<TableSchema>, op: Op, id: i64, a: i64) -> ChangeEvent {
        let row = Some(vec![Value::Int(id), Value::Int(a)]);
        let pos: BinlogPosition = "b.000001:4".parse().unwrap();
        ChangeEvent {
            table: t.clone(),
            op,
            before: if op == Op::Insert { None } else { row.clone() },
            after: if op == Op::Delete { None } else { row },
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

    #[test]
    fn the_last_change_of_each_key_wins() {
        let t = table();
        let batch = vec![
            change(&t, Op::Insert, 7, 1),
            change(&t, Op::Insert, 8, 1),
            change(&t, Op::Update, 7, 2),
            change(&t, Op::Delete, 7, 2),
            change(&t, Op::Delete, 8, 1),
            change(&t, Op::Insert, 7, 3),
        ];
        let out = coalesce(&batch);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].upserts, vec![&[Value::Int(7), Value::Int(3)][..]]);
        assert_eq!(out[0].deletes, vec![&[Value::Int(8), Value::Int(1)][..]]);
    }
}
