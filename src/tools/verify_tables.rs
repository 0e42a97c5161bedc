//! `rowlog verify`: are the destination's tables equal to the source's, while
//! replication runs? Like pt-table-checksum and TiDB's sync-diff-inspector, built in.
//!
//! Each replicated table is cut into chunks of `--chunk-rows` rows by primary key
//! (keyset pagination on the source). Per chunk both servers compute a row count and
//! `BIT_XOR` of a CRC32 per row over every column and every column's NULL-ness, the
//! pt-table-checksum way. Equal chunks are done.
//!
//! Lag: a chunk can differ only because the destination is behind. So a differing
//! chunk is not reported at once: verify notes the source's binlog position, waits
//! until the sink has passed it (the log's checkpoint covers the position, and every
//! partition's committed offset reached the log's end at that moment), and checks
//! the chunk again. What still differs is narrowed to its rows: each side's per-row
//! CRC by primary key, and the keys that are missing, extra or different are printed.
//! Tables without a primary key are compared whole (count and checksum), once the sink
//! has passed the position.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts, Value};
use rowlog_api::{BinlogPosition, TableName};
use rowlog_mysql_binlog::TableFilter;

use crate::config::Config;
use crate::log::{EmbeddedLog, PartitionedLog};

type ToolResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

pub struct VerifyOptions {
    /// Only these tables (`db.table` globs); empty means every replicated table.
    pub tables: Vec<String>,
    pub chunk_rows: u64,
    /// How long to wait for the sink to pass the position a difference was seen at.
    pub lag_timeout: Duration,
}

/// What verify found in one table.
#[derive(Debug, Default)]
pub struct TableReport {
    pub table: String,
    pub rows: u64,
    pub chunks: u64,
    /// Rendered primary keys with what differs: "id=5 (differs)".
    pub differences: Vec<String>,
    /// Chunks that differed at first and were checked again after the sink caught up.
    pub rechecked: u64,
}

struct Table {
    name: TableName,
    columns: Vec<String>,
    /// Primary-key columns; empty for a table without one.
    key: Vec<String>,
}

fn quote(ident: &str) -> String {
    format!("`{}`", ident.replace('`', "``"))
}

impl Table {
    fn ident(&self) -> String {
        format!("{}.{}", quote(&self.name.db), quote(&self.name.table))
    }

    /// CRC32 of one row: every column and, separately, which ones are NULL.
    fn row_crc(&self) -> String {
        let cols: Vec<String> = self.columns.iter().map(|c| quote(c)).collect();
        let nulls: Vec<String> = cols.iter().map(|c| format!("ISNULL({c})")).collect();
        format!(
            "CRC32(CONCAT_WS('#', {}, CONCAT({})))",
            cols.join(", "),
            nulls.join(", ")
        )
    }

    fn key_list(&self) -> String {
        let k: Vec<String> = self.key.iter().map(|c| quote(c)).collect();
        if k.len() == 1 {
            k[0].clone()
        } else {
            format!("({})", k.join(", "))
        }
    }

    fn key_tuple(&self) -> String {
        if self.key.len() == 1 {
            "?".into()
        } else {
            format!("({})", vec!["?"; self.key.len()].join(", "))
        }
    }

    /// `WHERE` for the chunk `(lo, hi]`; `None` ends are open.
    fn range(&self, lo: &Option<Vec<Value>>, hi: &Option<Vec<Value>>) -> (String, Vec<Value>) {
        let mut cond = vec!["1 = 1".to_string()];
        let mut params = Vec::new();
        if let Some(lo) = lo {
            cond.push(format!("{} > {}", self.key_list(), self.key_tuple()));
            params.extend(lo.iter().cloned());
        }
        if let Some(hi) = hi {
            cond.push(format!("{} <= {}", self.key_list(), self.key_tuple()));
            params.extend(hi.iter().cloned());
        }
        (cond.join(" AND "), params)
    }
}

async fn connect(url: &str) -> ToolResult<Conn> {
    Ok(Conn::new(Opts::from_url(&rowlog_api::url::tcp_as_given(url))?).await?)
}

/// The replicated tables on the source, with their columns and primary keys.
async fn tables(src: &mut Conn, cfg: &Config, only: &[String]) -> ToolResult<Vec<Table>> {
    let filter = TableFilter::new(&cfg.source.include, &cfg.source.exclude)?;
    let only = TableFilter::new(only, &[])?;
    let names: Vec<(String, String)> = src
        .query(
            "SELECT TABLE_SCHEMA, TABLE_NAME FROM information_schema.TABLES \
             WHERE TABLE_TYPE = 'BASE TABLE' ORDER BY TABLE_SCHEMA, TABLE_NAME",
        )
        .await?;
    let mut out = Vec::new();
    for (db, table) in names {
        let name = TableName::new(db, table);
        if !filter.includes(&name) || !only.includes(&name) || name.db == cfg.sink.progress_database
        {
            continue;
        }
        let columns: Vec<String> = src
            .exec(
                "SELECT COLUMN_NAME FROM information_schema.COLUMNS \
                 WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? ORDER BY ORDINAL_POSITION",
                (&name.db, &name.table),
            )
            .await?;
        let key: Vec<String> = src
            .exec(
                "SELECT COLUMN_NAME FROM information_schema.KEY_COLUMN_USAGE \
                 WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? AND CONSTRAINT_NAME = 'PRIMARY' \
                 ORDER BY ORDINAL_POSITION",
                (&name.db, &name.table),
            )
            .await?;
        out.push(Table { name, columns, key });
    }
    Ok(out)
}

/// Row count and XOR of row CRCs of a chunk; `None` when the table is missing.
async fn checksum(
    conn: &mut Conn,
    t: &Table,
    lo: &Option<Vec<Value>>,
    hi: &Option<Vec<Value>>,
) -> ToolResult<Option<(u64, u64)>> {
    let (cond, params) = t.range(lo, hi);
    let q = format!(
        "SELECT COUNT(*), COALESCE(BIT_XOR({}), 0) FROM {} WHERE {cond}",
        t.row_crc(),
        t.ident()
    );
    match conn.exec_first::<(u64, u64), _, _>(q, params).await {
        Ok(r) => Ok(r),
        Err(mysql_async::Error::Server(e)) if e.code == 1146 => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// The upper key of the chunk of `n` rows after `lo`, or `None` for the last chunk.
async fn chunk_end(
    src: &mut Conn,
    t: &Table,
    lo: &Option<Vec<Value>>,
    n: u64,
) -> ToolResult<Option<Vec<Value>>> {
    let (cond, params) = t.range(lo, &None);
    let cols: Vec<String> = t.key.iter().map(|c| quote(c)).collect();
    let q = format!(
        "SELECT {} FROM {} WHERE {cond} ORDER BY {} LIMIT 1 OFFSET {}",
        cols.join(", "),
        t.ident(),
        cols.join(", "),
        n.saturating_sub(1)
    );
    let row: Option<mysql_async::Row> = src.exec_first(q, params).await?;
    Ok(row.map(|r| r.unwrap()))
}

/// The source's greatest primary key now, `None` for an empty table.
async fn last_key(src: &mut Conn, t: &Table) -> ToolResult<Option<Vec<Value>>> {
    let cols: Vec<String> = t.key.iter().map(|c| quote(c)).collect();
    let desc: Vec<String> = cols.iter().map(|c| format!("{c} DESC")).collect();
    let q = format!(
        "SELECT {} FROM {} ORDER BY {} LIMIT 1",
        cols.join(", "),
        t.ident(),
        desc.join(", ")
    );
    let row: Option<mysql_async::Row> = src.query_first(q).await?;
    Ok(row.map(|r| r.unwrap()))
}

/// Each side's rows of a chunk as primary key → row CRC.
async fn row_crcs(
    conn: &mut Conn,
    t: &Table,
    lo: &Option<Vec<Value>>,
    hi: &Option<Vec<Value>>,
) -> ToolResult<BTreeMap<Vec<u8>, (String, u64)>> {
    let (cond, params) = t.range(lo, hi);
    let cols: Vec<String> = t.key.iter().map(|c| quote(c)).collect();
    let q = format!(
        "SELECT {}, {} FROM {} WHERE {cond}",
        t.row_crc(),
        cols.join(", "),
        t.ident()
    );
    let rows: Vec<mysql_async::Row> = match conn.exec(q, params).await {
        Ok(r) => r,
        Err(mysql_async::Error::Server(e)) if e.code == 1146 => Vec::new(),
        Err(e) => return Err(e.into()),
    };
    let mut out = BTreeMap::new();
    for row in rows {
        let mut values = row.unwrap();
        let crc = match values.remove(0) {
            Value::Int(i) => i as u64,
            Value::UInt(u) => u,
            Value::Bytes(b) => String::from_utf8_lossy(&b).parse().unwrap_or(0),
            _ => 0,
        };
        let rendered = t
            .key
            .iter()
            .zip(&values)
            .map(|(c, v)| format!("{c}={}", v.as_sql(false)))
            .collect::<Vec<_>>()
            .join(", ");
        let sortable = values
            .iter()
            .flat_map(|v| v.as_sql(false).into_bytes())
            .collect();
        out.insert(sortable, (rendered, crc));
    }
    Ok(out)
}

/// Waits until the sink has applied everything the source had written up to now:
/// the log's checkpoint reaches the source's current position, then every
/// partition's committed offset reaches the log's end at that moment. `false` at the
/// deadline (or when there is no log to ask).
async fn wait_for_sink(cfg: &Config, src: &mut Conn, deadline: Instant) -> ToolResult<bool> {
    let row: Option<mysql_async::Row> = src.query_first("SHOW MASTER STATUS").await?;
    let Some(row) = row else { return Ok(false) };
    let (Some(file), Some(pos)) = (row.get::<String, _>(0), row.get::<u64, _>(1)) else {
        return Ok(false);
    };
    let target: BinlogPosition = format!("{file}:{pos}").parse()?;
    let consumer = cfg.apply().consumer;
    let mut ends: Option<Vec<u64>> = None;
    while Instant::now() < deadline {
        let Ok(log) = EmbeddedLog::open_read_only(&cfg.log.dir) else {
            return Ok(false);
        };
        match &ends {
            None => {
                let covered = log
                    .checkpoint()
                    .await?
                    .is_some_and(|c| c.resume.position >= target);
                if covered {
                    ends = Some((0..log.partitions()).map(|p| log.end_offset(p)).collect());
                    continue;
                }
            }
            Some(ends) => {
                let mut passed = true;
                for (p, &end) in ends.iter().enumerate() {
                    passed &= log.committed(&consumer, p as u32).await?.unwrap_or(0) >= end;
                }
                if passed {
                    return Ok(true);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(false)
}

/// Compares every replicated table; returns one report per table.
pub async fn verify(cfg: &Config, opts: &VerifyOptions) -> ToolResult<Vec<TableReport>> {
    let mut src = connect(&cfg.source.url).await?;
    let mut dst = connect(&cfg.sink.url).await?;
    let mut reports = Vec::new();
    for t in tables(&mut src, cfg, &opts.tables).await? {
        let mut report = TableReport {
            table: t.name.to_string(),
            ..Default::default()
        };
        if t.key.is_empty() {
            // No key to cut by: the whole table, once the sink has caught up.
            let deadline = Instant::now() + opts.lag_timeout;
            let mut same = false;
            loop {
                let (a, b) = (
                    checksum(&mut src, &t, &None, &None).await?,
                    checksum(&mut dst, &t, &None, &None).await?,
                );
                report.rows = a.map(|x| x.0).unwrap_or(0);
                report.chunks = 1;
                if a == b {
                    same = true;
                    break;
                }
                if !wait_for_sink(cfg, &mut src, deadline).await? {
                    break;
                }
            }
            if !same {
                report
                    .differences
                    .push("the table differs (no primary key: rows cannot be told apart)".into());
            }
            reports.push(report);
            continue;
        }
        let mut lo: Option<Vec<Value>> = None;
        loop {
            // The last chunk ends at the source's last key now: rows inserted while
            // verify runs are beyond it (the destination can only be behind there).
            let (hi, last) = match chunk_end(&mut src, &t, &lo, opts.chunk_rows).await? {
                Some(h) => (Some(h), false),
                None => (last_key(&mut src, &t).await?, true),
            };
            report.chunks += 1;
            let mut a = checksum(&mut src, &t, &lo, &hi).await?;
            let mut b = checksum(&mut dst, &t, &lo, &hi).await?;
            if a != b {
                // Possibly only lag: re-check once the sink has passed the position.
                report.rechecked += 1;
                let deadline = Instant::now() + opts.lag_timeout;
                while a != b && wait_for_sink(cfg, &mut src, deadline).await? {
                    a = checksum(&mut src, &t, &lo, &hi).await?;
                    b = checksum(&mut dst, &t, &lo, &hi).await?;
                }
            }
            report.rows += a.map(|x| x.0).unwrap_or(0);
            if a != b {
                let left = row_crcs(&mut src, &t, &lo, &hi).await?;
                let right = row_crcs(&mut dst, &t, &lo, &hi).await?;
                for (k, (key, crc)) in &left {
                    match right.get(k) {
                        None => report
                            .differences
                            .push(format!("{key} (missing on the destination)")),
                        Some((_, c)) if c != crc => {
                            report.differences.push(format!("{key} (differs)"))
                        }
                        Some(_) => {}
                    }
                }
                for (k, (key, _)) in &right {
                    if !left.contains_key(k) {
                        report
                            .differences
                            .push(format!("{key} (only on the destination)"));
                    }
                }
            }
            if last && hi.is_some() {
                // Beyond the source's last key the destination must have nothing.
                let beyond = row_crcs(&mut dst, &t, &hi, &None).await?;
                let mut extra = Vec::new();
                for (key, _) in beyond.values() {
                    extra.push(key.clone());
                }
                if !extra.is_empty() {
                    let deadline = Instant::now() + opts.lag_timeout;
                    wait_for_sink(cfg, &mut src, deadline).await?;
                    let on_source = row_crcs(&mut src, &t, &hi, &None).await?;
                    for (k, (key, _)) in &beyond {
                        if !on_source.contains_key(k) {
                            report
                                .differences
                                .push(format!("{key} (only on the destination)"));
                        }
                    }
                }
            }
            if last {
                break;
            }
            lo = hi;
        }
        reports.push(report);
    }
    Ok(reports)
}

/// The command: prints a line per table and each differing key; `Ok(false)` when
/// anything differs.
pub async fn verify_cmd(cfg: &Config, opts: &VerifyOptions) -> ToolResult<bool> {
    let reports = verify(cfg, opts).await?;
    let mut equal = true;
    for r in &reports {
        let lag = if r.rechecked > 0 {
            format!(" ({} re-checked after the sink caught up)", r.rechecked)
        } else {
            String::new()
        };
        if r.differences.is_empty() {
            println!(
                "{}: {} rows in {} chunks{lag}, equal",
                r.table, r.rows, r.chunks
            );
        } else {
            equal = false;
            println!(
                "{}: {} rows in {} chunks{lag}, {} DIFFER",
                r.table,
                r.rows,
                r.chunks,
                r.differences.len()
            );
            for d in r.differences.iter().take(1000) {
                println!("  {}: {d}", r.table);
            }
        }
    }
    println!(
        "{} tables: {}",
        reports.len(),
        if equal { "equal" } else { "DIFFERENT" }
    );
    Ok(equal)
}
