//! Comparing a table on two servers, row by row in primary-key order, plus the
//! server's own `CHECKSUM TABLE` as a second, independent check.

use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Row, Value};

#[derive(Debug, PartialEq)]
pub struct TableDiff {
    pub table: String,
    pub source_rows: usize,
    pub destination_rows: usize,
    /// First differing rows, rendered, at most 5.
    pub examples: Vec<String>,
    pub checksums: (Option<i64>, Option<i64>),
}

impl TableDiff {
    pub fn is_equal(&self) -> bool {
        self.examples.is_empty()
            && self.source_rows == self.destination_rows
            && self.checksums.0 == self.checksums.1
    }
}

async fn rows(
    conn: &mut Conn,
    table: &str,
    order_by: &str,
) -> mysql_async::Result<Vec<Vec<Value>>> {
    let rows: Vec<Row> = conn
        .query(format!("SELECT * FROM {table} ORDER BY {order_by}"))
        .await?;
    Ok(rows.into_iter().map(|r| r.unwrap()).collect())
}

async fn checksum(conn: &mut Conn, table: &str) -> mysql_async::Result<Option<i64>> {
    let row: Option<(String, Option<i64>)> =
        conn.query_first(format!("CHECKSUM TABLE {table}")).await?;
    Ok(row.and_then(|(_, c)| c))
}

/// Compares `table` (e.g. "app.users") ordered by `order_by` (its primary key columns).
pub async fn compare_table(
    src: &mut Conn,
    dst: &mut Conn,
    table: &str,
    order_by: &str,
) -> mysql_async::Result<TableDiff> {
    let a = rows(src, table, order_by).await?;
    let b = rows(dst, table, order_by).await?;
    let mut examples = Vec::new();
    for i in 0..a.len().max(b.len()) {
        if a.get(i) != b.get(i) {
            examples.push(format!(
                "row {i}: source {:?} / destination {:?}",
                a.get(i),
                b.get(i)
            ));
            if examples.len() == 5 {
                break;
            }
        }
    }
    Ok(TableDiff {
        table: table.to_string(),
        source_rows: a.len(),
        destination_rows: b.len(),
        examples,
        checksums: (checksum(src, table).await?, checksum(dst, table).await?),
    })
}

async fn count(conn: &mut Conn, table: &str) -> mysql_async::Result<u64> {
    Ok(conn
        .query_first(format!("SELECT COUNT(*) FROM {table}"))
        .await?
        .unwrap_or(0))
}

/// Polls (cheaply: row counts and `CHECKSUM TABLE`) until every table looks equal on
/// both servers or `timeout` passes, then compares every table row by row and returns
/// those full comparisons.
pub async fn wait_until_equal(
    src: &mut Conn,
    dst: &mut Conn,
    tables: &[(&str, &str)],
    timeout: Duration,
) -> mysql_async::Result<Vec<TableDiff>> {
    let deadline = Instant::now() + timeout;
    loop {
        let mut same = true;
        for (table, _) in tables {
            // A table the destination does not have yet (its CREATE is on the way) is
            // simply not equal yet.
            let dst_count = match count(dst, table).await {
                Err(mysql_async::Error::Server(e)) if e.code == 1146 => None,
                other => Some(other?),
            };
            if dst_count != Some(count(src, table).await?)
                || checksum(src, table).await? != checksum(dst, table).await?
            {
                same = false;
                break;
            }
        }
        if same || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut diffs = Vec::new();
    for (table, order_by) in tables {
        diffs.push(compare_table(src, dst, table, order_by).await?);
    }
    Ok(diffs)
}
