//! `rowlog bench replication`: rowlog against MariaDB's own replication and against the
//! destination's raw upsert capacity, on private servers started for the run.
//!
//! For each workload shape — *bulk* (transactions of 1,000 rows) and *oltp* (single-row
//! transactions from 4 clients: index updates, non-index updates, delete + insert) —
//! the same binlog stretch is applied three ways, each timed from empty:
//! (a) raw: the final rows upserted into a fresh server, 1,000-row prepared
//!     `INSERT … ON DUPLICATE KEY UPDATE` from 4 connections — and, as a second
//!     baseline, the same rows as 1,000-row `LOAD DATA LOCAL INFILE … REPLACE`, the
//!     bulk path rowlog's sink takes where it has the upsert's exact effect; for the
//!     bulk shape also (a'') the stretch's own changes, not coalesced to final rows,
//!     as the same upserts: the bound on any sink that applies SQL statements here;
//! (b) native: a fresh MariaDB replica (`CHANGE MASTER TO` the stretch's start,
//!     default settings) until it has executed the stretch's end;
//! (c) rowlog: the pipeline, from the stretch's start, until every change is applied.
//! Then (d) end-to-end lag: inserts at half of rowlog's measured oltp rate (in small
//! transactions, so the load reaches that rate) for a few seconds, each row's source
//! `NOW(6)` against the destination's insert time; (e) an initial snapshot; and, when
//! asked, (f) peak RSS while a backlog of millions of changes is caught up.

use std::sync::Arc;
use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Row};

use crate::config::Config;
use crate::pipeline::Stats;
use crate::shutdown;
use crate::testkit::{MariaDb, ServerOptions};

type BenchResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

pub struct BenchOptions {
    pub bulk_rows: u64,
    pub oltp_txns: u64,
    pub lag_secs: u64,
    pub partitions: u32,
    pub workers: u32,
    /// Rows of the backlog phase (f); 0 skips it.
    pub backlog_rows: u64,
    /// `sink.load_data` for rowlog's runs.
    pub load_data: bool,
}

const TABLE: &str =
    "CREATE TABLE bench.t (id BIGINT PRIMARY KEY, k INT NOT NULL, c CHAR(120) NOT NULL, \
                     pad CHAR(60) NOT NULL, KEY k (k))";

fn vm_hwm_mib() -> u64 {
    crate::report::proc_status_kib("self", "VmHWM:") / 1024
}

async fn master_status(c: &mut Conn) -> BenchResult<(String, u64)> {
    let row: Row = c
        .query_first("SHOW MASTER STATUS")
        .await?
        .ok_or("no binlog on the source")?;
    Ok((row.get(0).ok_or("file")?, row.get(1).ok_or("position")?))
}

/// Writes the shape's workload on the source; returns the row changes it made.
async fn workload(src: &MariaDb, shape: &str, opts: &BenchOptions) -> BenchResult<u64> {
    let mut c = src.conn().await?;
    let mut changes = 0;
    if shape == "bulk" {
        for chunk in 0..opts.bulk_rows / 1000 {
            let lo = chunk * 1000 + 1;
            c.query_drop(format!(
                "INSERT INTO bench.t SELECT seq, seq % 1000, REPEAT(CHAR(65 + seq % 26), 120), REPEAT('p', 60) FROM bench.seq_{lo}_to_{}",
                lo + 999
            ))
            .await?;
            changes += c.affected_rows();
        }
        for chunk in 0..opts.bulk_rows / 2000 {
            let lo = chunk * 1000 + 1;
            c.query_drop(format!(
                "UPDATE bench.t SET k = k + 1 WHERE id BETWEEN {lo} AND {}",
                lo + 999
            ))
            .await?;
            changes += c.affected_rows();
        }
        return Ok(changes);
    }
    let clients = 4u64;
    let per_client = opts.oltp_txns / clients;
    let mut tasks = Vec::new();
    for client in 0..clients {
        let opts_url = src.opts();
        tasks.push(tokio::spawn(async move {
            let mut c = Conn::new(opts_url).await?;
            let mut changes = 0u64;
            for i in 0..per_client {
                let id = (i * 7919 + client * 104_729) % 20_000 + 1;
                match i % 4 {
                    0 => {
                        c.exec_drop("UPDATE bench.t SET k = k + 1 WHERE id = ?", (id,))
                            .await?
                    }
                    1 => {
                        c.exec_drop(
                            "UPDATE bench.t SET c = REPEAT(CHAR(65 + ? % 26), 120) WHERE id = ?",
                            (i, id),
                        )
                        .await?
                    }
                    _ => {
                        let mut tx = c.start_transaction(Default::default()).await?;
                        tx.exec_drop("DELETE FROM bench.t WHERE id = ?", (id,))
                            .await?;
                        changes += tx.affected_rows();
                        tx.exec_drop(
                            "INSERT INTO bench.t VALUES (?, ?, REPEAT('x', 120), REPEAT('p', 60))",
                            (id, i % 1000),
                        )
                        .await?;
                        changes += tx.affected_rows();
                        tx.commit().await?;
                        continue;
                    }
                }
                changes += c.affected_rows();
            }
            Ok::<u64, mysql_async::Error>(changes)
        }));
    }
    for t in tasks {
        changes += t.await??;
    }
    Ok(changes)
}

type BenchRow = (i64, i32, String, String);

async fn source_rows(src: &MariaDb) -> BenchResult<Vec<BenchRow>> {
    Ok(src
        .conn()
        .await?
        .query("SELECT id, k, c, pad FROM bench.t ORDER BY id")
        .await?)
}

/// Rows dealt to 4 connections by primary key (so each key's rows stay in order on
/// one connection), in 1,000-row chunks.
fn deal(rows: Vec<BenchRow>) -> Vec<Vec<Vec<BenchRow>>> {
    let mut parts: Vec<Vec<BenchRow>> = vec![Vec::new(); 4];
    for row in rows {
        parts[(row.0 % 4) as usize].push(row);
    }
    parts
        .into_iter()
        .map(|p| p.chunks(1000).map(<[BenchRow]>::to_vec).collect())
        .collect()
}

/// The source's final rows, dealt to 4 connections: what each raw baseline applies.
async fn final_rows(src: &MariaDb) -> BenchResult<(u64, Vec<Vec<Vec<BenchRow>>>)> {
    let rows = source_rows(src).await?;
    Ok((rows.len() as u64, deal(rows)))
}

/// Upserts the source's final rows into `dst` from 4 connections, 1,000 rows a statement.
async fn raw_upsert(src: &MariaDb, dst: &MariaDb) -> BenchResult<(u64, f64)> {
    let (n, parts) = final_rows(src).await?;
    Ok((n, upsert_parts(dst, parts).await?))
}

/// (a'') The bulk stretch's own changes, not coalesced to final rows: every row as the
/// insert wrote it, then the updated half as the update left it, as 1,000-row upserts
/// from 4 connections dealt by key, into a fresh server (as native's and rowlog's
/// destinations are: a server's first writes measured far slower than its later ones)
/// with the machine to itself.
/// That is what a sink applying SQL statements must make the destination do when its
/// batches cannot span the stretch (the updates come 200 transactions after the
/// inserts they change), so its rate bounds any such sink on this machine. Built from
/// the final rows by undoing the workload's update (`k = k + 1` on the first half of
/// the ids), so it holds for the bulk shape only. Returns (row changes, seconds).
async fn bulk_replay_upsert(src: &MariaDb, opts: &BenchOptions) -> BenchResult<(u64, f64)> {
    let dst = MariaDb::start(ServerOptions::destination(5)).await?;
    dst.exec(&["CREATE DATABASE bench", TABLE]).await?;
    let rows = source_rows(src).await?;
    let updated = (opts.bulk_rows / 2000 * 1000) as i64;
    let inserts: Vec<BenchRow> = rows
        .iter()
        .map(|(id, k, c, pad)| {
            let k = if *id <= updated { k - 1 } else { *k };
            (*id, k, c.clone(), pad.clone())
        })
        .collect();
    let updates: Vec<BenchRow> = rows.into_iter().filter(|r| r.0 <= updated).collect();
    let n = (inserts.len() + updates.len()) as u64;
    let mut parts = deal(inserts);
    for (part, later) in parts.iter_mut().zip(deal(updates)) {
        part.extend(later);
    }
    let secs = upsert_parts(&dst, parts).await?;
    same_table(src, &dst, "[bulk] the replay's destination").await?;
    Ok((n, secs))
}

/// Applies each part's chunks in order on its own connection as 1,000-row
/// `INSERT … ON DUPLICATE KEY UPDATE` statements; returns the seconds taken.
async fn upsert_parts(dst: &MariaDb, parts: Vec<Vec<Vec<BenchRow>>>) -> BenchResult<f64> {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for chunks in parts {
        let opts = dst.opts();
        tasks.push(tokio::spawn(async move {
            let mut c = Conn::new(opts).await?;
            for chunk in chunks {
                let sql = format!(
                    "INSERT INTO bench.t VALUES {} ON DUPLICATE KEY UPDATE k = VALUES(k), c = VALUES(c), pad = VALUES(pad)",
                    vec!["(?,?,?,?)"; chunk.len()].join(",")
                );
                let params: Vec<mysql_async::Value> =
                    chunk.iter().flat_map(|(id, k, cc, pad)| [(*id).into(), (*k).into(), cc.as_str().into(), pad.as_str().into()]).collect();
                c.exec_drop(sql, params).await?;
            }
            Ok::<(), mysql_async::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(started.elapsed().as_secs_f64())
}

/// The same final rows as `LOAD DATA LOCAL INFILE … REPLACE` into `dst` (emptied
/// first), 1,000 rows a load from 4 connections, served as the sink serves its loads.
async fn raw_load(src: &MariaDb, dst: &MariaDb) -> BenchResult<(u64, f64)> {
    use rowlog_mysql_sink::{StagedInfile, STAGED_INFILE};
    dst.exec(&["TRUNCATE TABLE bench.t"]).await?;
    let (n, parts) = final_rows(src).await?;
    // Encoded before the clock starts. The bench's values hold no tab, newline or
    // backslash, so they need no escapes: checked, not assumed.
    let mut files: Vec<Vec<bytes::Bytes>> = Vec::new();
    for chunks in parts {
        let mut mine = Vec::new();
        for chunk in chunks {
            let mut text = String::new();
            for (id, k, c, pad) in &chunk {
                if [c, pad].iter().any(|v| v.contains(['\t', '\n', '\\'])) {
                    return Err("raw load: a bench value needs escaping".into());
                }
                text.push_str(&format!("{id}\t{k}\t{c}\t{pad}\n"));
            }
            mine.push(text.into());
        }
        files.push(mine);
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for mine in files {
        let staged = StagedInfile::default();
        let opts = mysql_async::OptsBuilder::from_opts(dst.opts())
            .local_infile_handler(Some(staged.handler()));
        tasks.push(tokio::spawn(async move {
            let mut c = Conn::new(opts).await?;
            for data in mine {
                staged.set(data);
                c.query_drop(format!(
                    "LOAD DATA LOCAL INFILE '{STAGED_INFILE}' REPLACE INTO TABLE bench.t \
                     FIELDS TERMINATED BY '\\t' LINES TERMINATED BY '\\n' (id, k, c, pad)"
                ))
                .await?;
            }
            Ok::<(), mysql_async::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok((n, started.elapsed().as_secs_f64()))
}

async fn native(
    src: &MariaDb,
    replica: &MariaDb,
    from: &(String, u64),
    to: &(String, u64),
) -> BenchResult<f64> {
    let mut r = replica.conn().await?;
    r.query_drop(format!(
        "CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT={}, MASTER_USER='root', MASTER_PASSWORD='', \
         MASTER_LOG_FILE='{}', MASTER_LOG_POS={}",
        src.port, from.0, from.1
    ))
    .await?;
    let started = Instant::now();
    r.query_drop("START SLAVE").await?;
    loop {
        let row: Row = r
            .query_first("SHOW SLAVE STATUS")
            .await?
            .ok_or("replica has no status")?;
        let file: String = row.get("Relay_Master_Log_File").unwrap_or_default();
        let pos: u64 = row.get("Exec_Master_Log_Pos").unwrap_or(0);
        let sql_error: String = row.get("Last_SQL_Error").unwrap_or_default();
        if !sql_error.is_empty() {
            return Err(format!("native replica failed: {sql_error}").into());
        }
        if file == to.0 && pos >= to.1 {
            return Ok(started.elapsed().as_secs_f64());
        }
        if started.elapsed() > Duration::from_secs(1800) {
            return Err("native replica did not catch up in 30 minutes".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn rowlog_config(
    src: &MariaDb,
    dst: &MariaDb,
    from: &(String, u64),
    dir: &std::path::Path,
    opts: &BenchOptions,
) -> BenchResult<Config> {
    let path = dir.join("bench.toml");
    std::fs::write(
        &path,
        format!(
            "name = \"bench\"\n[source]\nurl = \"{}\"\nstart = \"{}:{}\"\nserver_id = 4280777\n\
             [log]\ndir = \"{}\"\npartitions = {}\n[sink]\nurl = \"{}\"\nworkers = {}\nload_data = {}\n",
            src.url(),
            from.0,
            from.1,
            dir.join("log").display(),
            opts.partitions,
            dst.url(),
            opts.workers,
            opts.load_data
        ),
    )?;
    // `ROWLOG__…` variables apply, as to `rowlog run`: a setting can be measured
    // without a flag of its own here (the summary names them).
    Ok(Config::load(&path)?)
}

/// Settings the benchmark makes itself (servers, log, and the split its flags set):
/// from the environment they would make the summary wrong, or measure other servers.
const BENCH_OWN: [&str; 9] = [
    "ROWLOG__NAME",
    "ROWLOG__SOURCE__URL",
    "ROWLOG__SOURCE__START",
    "ROWLOG__SOURCE__SERVER_ID",
    "ROWLOG__LOG__DIR",
    "ROWLOG__LOG__PARTITIONS",
    "ROWLOG__SINK__URL",
    "ROWLOG__SINK__WORKERS",
    "ROWLOG__SINK__LOAD_DATA",
];

/// CPU seconds used by this process (rowlog, while the bench's own clients wait) and
/// the source and destination servers: where the two cores go during a catch-up.
struct CpuOf {
    which: [String; 3],
}

impl CpuOf {
    fn new(src: &MariaDb, dst: &MariaDb) -> Self {
        let pid = |s: &MariaDb| s.pid().map_or_else(|| "0".into(), |p| p.to_string());
        CpuOf {
            which: ["self".into(), pid(src), pid(dst)],
        }
    }

    fn sample(&self) -> [f64; 3] {
        self.which
            .each_ref()
            .map(|w| crate::report::proc_cpu_secs(w))
    }

    fn since(&self, before: [f64; 3]) -> [f64; 3] {
        let now = self.sample();
        [now[0] - before[0], now[1] - before[1], now[2] - before[2]]
    }
}

/// The `ROWLOG__…` settings in the environment, which the measured rowlog takes;
/// an error naming any the benchmark sets itself.
fn env_overrides() -> BenchResult<Vec<String>> {
    // The config crate matches its prefix and keys in any case.
    let mut set: Vec<(String, String)> = std::env::vars()
        .filter(|(k, _)| k.to_ascii_uppercase().starts_with("ROWLOG__"))
        .collect();
    set.sort();
    let set: Vec<String> = set.into_iter().map(|(k, v)| format!("{k}={v}")).collect();
    let own: Vec<&String> = set
        .iter()
        .filter(|kv| {
            let key = kv
                .split('=')
                .next()
                .unwrap_or_default()
                .to_ascii_uppercase();
            BENCH_OWN.contains(&key.as_str())
        })
        .collect();
    if !own.is_empty() {
        return Err(format!(
            "the benchmark sets these itself (use its flags, or unset them): {}",
            own.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(" ")
        )
        .into());
    }
    Ok(set)
}

async fn checksum(s: &MariaDb) -> BenchResult<Option<i64>> {
    let row: Option<(String, Option<i64>)> = s
        .conn()
        .await?
        .query_first("CHECKSUM TABLE bench.t")
        .await?;
    Ok(row.and_then(|(_, c)| c))
}

/// Fails, naming `what`, unless `dst`'s bench table equals `src`'s by CHECKSUM TABLE.
async fn same_table(src: &MariaDb, dst: &MariaDb, what: &str) -> BenchResult<()> {
    let (a, b) = (checksum(src).await?, checksum(dst).await?);
    if a != b {
        return Err(
            format!("{what} differs from the source: CHECKSUM TABLE {a:?} vs {b:?}").into(),
        );
    }
    Ok(())
}

struct ShapeResult {
    shape: &'static str,
    changes: u64,
    raw: f64,
    /// Rows/s of the same final rows as LOAD DATA … REPLACE.
    raw_load: f64,
    native: f64,
    rowlog: f64,
    /// Row changes/s of the stretch's own changes as upserts (bulk only): the bound
    /// on any SQL-statement sink here.
    replay: Option<f64>,
    /// Rows/s of an initial snapshot of the shape's final table.
    snapshot: Option<f64>,
}

async fn shape(
    name: &'static str,
    opts: &BenchOptions,
    lag: bool,
) -> BenchResult<(ShapeResult, Option<Lag>)> {
    let (src, native_dst, rowlog_dst, raw_dst) = tokio::join!(
        MariaDb::start(ServerOptions::source(1)),
        MariaDb::start(ServerOptions::destination(2)),
        MariaDb::start(ServerOptions::destination(3)),
        MariaDb::start(ServerOptions::destination(4)),
    );
    let (src, native_dst, rowlog_dst, raw_dst) = (src?, native_dst?, rowlog_dst?, raw_dst?);
    let prepare = ["CREATE DATABASE bench", TABLE];
    for s in [&src, &native_dst, &rowlog_dst, &raw_dst] {
        s.exec(&prepare).await?;
    }
    if name == "oltp" {
        // The same 20,000 starting rows everywhere, written outside the measured stretch.
        let fill = "INSERT INTO bench.t SELECT seq, seq % 1000, REPEAT('s', 120), REPEAT('p', 60) FROM bench.seq_1_to_20000";
        for s in [&native_dst, &rowlog_dst] {
            s.exec(&[fill]).await?;
        }
        src.exec(&["SET sql_log_bin = 0", fill]).await?;
    }
    // The source's own durability is not what is measured: let it write fast.
    src.exec(&[
        "SET GLOBAL innodb_flush_log_at_trx_commit = 0",
        "SET GLOBAL sync_binlog = 0",
    ])
    .await?;
    let from = master_status(&mut src.conn().await?).await?;
    println!("[{name}] writing the workload on the source…");
    let changes = workload(&src, name, opts).await?;
    let to = master_status(&mut src.conn().await?).await?;
    println!(
        "[{name}] {changes} row changes, binlog {}:{} → {}:{}",
        from.0, from.1, to.0, to.1
    );

    let (raw_rows, raw_secs) = raw_upsert(&src, &raw_dst).await?;
    let raw = raw_rows as f64 / raw_secs;
    println!(
        "[{name}] (a) raw upsert capacity: {raw_rows} rows in {raw_secs:.2} s = {raw:.0} rows/s"
    );
    let (load_rows, load_secs) = raw_load(&src, &raw_dst).await?;
    let raw_load = load_rows as f64 / load_secs;
    println!(
        "[{name}] (a') raw LOAD DATA … REPLACE capacity: {load_rows} rows in {load_secs:.2} s = {raw_load:.0} rows/s"
    );

    let mut replay = None;
    if name == "bulk" {
        let (n, secs) = bulk_replay_upsert(&src, opts).await?;
        let rate = n as f64 / secs;
        println!(
            "[{name}] (a'') the stretch's own changes, uncoalesced, as 1,000-row upserts from 4 connections: {n} row changes in {secs:.2} s = {rate:.0} row changes/s"
        );
        replay = Some(rate);
    }

    let native_secs = native(&src, &native_dst, &from, &to).await?;
    let native = changes as f64 / native_secs;
    println!("[{name}] (b) native replication: {native_secs:.2} s = {native:.0} row changes/s");

    let cpu = CpuOf::new(&src, &rowlog_dst);
    let before = cpu.sample();
    let (rowlog_secs, running) = catch_up(&src, &rowlog_dst, &from, name, opts, changes).await?;
    let used = cpu.since(before);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let rowlog_rate = changes as f64 / rowlog_secs;
    same_table(&src, &rowlog_dst, &format!("[{name}] rowlog's destination")).await?;
    println!("[{name}] (c) rowlog: {rowlog_secs:.2} s = {rowlog_rate:.0} row changes/s (destination equal by CHECKSUM TABLE)");
    println!(
        "[{name}] CPU seconds over rowlog's catch-up ({:.2} core-seconds on {cores} cores): rowlog {:.2}, source server {:.2}, destination server {:.2}",
        rowlog_secs * cores as f64,
        used[0],
        used[1],
        used[2]
    );

    let mut snapshot_rate = None;
    if name == "bulk" {
        snapshot_rate = Some(snapshot_copy(&src, &from, opts, raw).await?);
    }

    let mut lag_result = None;
    if lag {
        lag_result = Some(measure_lag(&src, &rowlog_dst, rowlog_rate / 2.0, opts.lag_secs).await?);
    }
    running.stop().await;
    Ok((
        ShapeResult {
            shape: name,
            changes,
            raw,
            raw_load,
            native,
            rowlog: rowlog_rate,
            replay,
            snapshot: snapshot_rate,
        },
        lag_result,
    ))
}

/// (e) An initial snapshot of the source's table into a fresh destination (which gets
/// the table from SHOW CREATE TABLE), timed; the copy is checked by CHECKSUM TABLE.
async fn snapshot_copy(
    src: &MariaDb,
    from: &(String, u64),
    opts: &BenchOptions,
    raw: f64,
) -> BenchResult<f64> {
    let dst = MariaDb::start(ServerOptions::destination(5)).await?;
    let dir = std::env::temp_dir().join(format!("rowlog-bench-{}-snapshot", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let cfg = rowlog_config(src, &dst, from, &dir, opts)?;
    let log = crate::log::EmbeddedLog::open_with(
        &cfg.log.dir,
        cfg.log.partitions,
        cfg.log.segment_bytes,
        cfg.log.fsync_policy(),
    )?;
    let metrics = crate::metrics::Metrics::new(cfg.log.partitions, Duration::from_secs(60));
    let (_trigger, stop) = shutdown::channel();
    let only = rowlog_mysql_binlog::TableFilter::new(&["bench.t".to_string()], &[])?;
    let outcome = crate::snapshot::run(
        &cfg,
        &log,
        crate::snapshot::SnapshotState::default(),
        &only,
        true,
        &metrics,
        &stop,
        |_| {},
    )
    .await?
    .ok_or("the snapshot was interrupted")?;
    same_table(src, &dst, "[bulk] the snapshot copy").await?;
    let rate = outcome.rows as f64 / outcome.seconds;
    println!(
        "[bulk] (e) initial snapshot: {} rows in {:.2} s = {rate:.0} rows/s, {:.2} × raw upsert capacity (destination equal by CHECKSUM TABLE)",
        outcome.rows, outcome.seconds, rate / raw
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(rate)
}

/// Inserts rows at `rate` per second for `secs`, each stamped with the source's
/// `NOW(6)`; the destination stamps its own insert time. Returns (achieved rate, p50 ms, p99 ms).
async fn measure_lag(src: &MariaDb, dst: &MariaDb, rate: f64, secs: u64) -> BenchResult<Lag> {
    // The destination's first, with its arrival stamp: rowlog, running, replicates the
    // source's CREATE, and finds this one in place (error 1050, recorded as applied).
    // The other way round, its CREATE could come first and this one fail.
    dst.exec(&["CREATE TABLE bench.lag (id BIGINT PRIMARY KEY, ts DATETIME(6) NOT NULL, arrived DATETIME(6) NOT NULL DEFAULT NOW(6))"])
        .await?;
    src.exec(&["CREATE TABLE bench.lag (id BIGINT PRIMARY KEY, ts DATETIME(6) NOT NULL)"])
        .await?;
    let clients = 4u64;
    let per_client = (rate / clients as f64).max(1.0);
    // One client on a shared 2-core machine commits a few hundred transactions a
    // second: rows are grouped into small transactions so the offered load reaches
    // the target rate (each row still carries its own statement's NOW(6)).
    let rows_per_txn = (per_client / 250.0).ceil().max(1.0) as u64;
    let statement = format!(
        "INSERT INTO bench.lag VALUES {}",
        vec!["(?, NOW(6))"; rows_per_txn as usize].join(", ")
    );
    let started = Instant::now();
    let mut tasks = Vec::new();
    for client in 0..clients {
        let opts = src.opts();
        let statement = statement.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = Conn::new(opts).await?;
            let mut n = 0u64;
            while started.elapsed().as_secs_f64() < secs as f64 {
                // Pace: this client's n-th row is due at n / per_client seconds.
                let due = Duration::from_secs_f64(n as f64 / per_client);
                if let Some(wait) = due.checked_sub(started.elapsed()) {
                    tokio::time::sleep(wait).await;
                }
                let ids: Vec<u64> = (n..n + rows_per_txn)
                    .map(|i| i * clients + client)
                    .collect();
                c.exec_drop(statement.as_str(), ids).await?;
                n += rows_per_txn;
            }
            Ok::<u64, mysql_async::Error>(n)
        }));
    }
    let mut written = 0;
    for t in tasks {
        written += t.await??;
    }
    let achieved = written as f64 / started.elapsed().as_secs_f64();
    let mut d = dst.conn().await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let n: u64 = d
            .query_first("SELECT COUNT(*) FROM bench.lag")
            .await?
            .unwrap_or(0);
        if n >= written || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut lags: Vec<i64> = d
        .query("SELECT TIMESTAMPDIFF(MICROSECOND, ts, arrived) FROM bench.lag")
        .await?;
    lags.sort_unstable();
    if lags.len() as u64 != written {
        return Err(format!("only {} of {written} lag rows arrived", lags.len()).into());
    }
    let pct = |p: f64| lags[((lags.len() - 1) as f64 * p) as usize] as f64 / 1000.0;
    Ok(Lag {
        target: rate,
        achieved,
        rows_per_txn,
        p50: pct(0.50),
        p99: pct(0.99),
    })
}

/// rowlog running in this process for the benchmark.
struct Running {
    trigger: shutdown::ShutdownTrigger,
    pipeline: tokio::task::JoinHandle<Result<Arc<Stats>, crate::daemon::DaemonError>>,
    dir: std::path::PathBuf,
}

impl Running {
    async fn stop(self) {
        self.trigger.trigger();
        let _ = self.pipeline.await;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Starts rowlog from `from` into `dst` and waits until `changes` row changes are
/// applied; returns the seconds that took, with rowlog still running.
async fn catch_up(
    src: &MariaDb,
    dst: &MariaDb,
    from: &(String, u64),
    tag: &str,
    opts: &BenchOptions,
    changes: u64,
) -> BenchResult<(f64, Running)> {
    let dir = std::env::temp_dir().join(format!("rowlog-bench-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let cfg = rowlog_config(src, dst, from, &dir, opts)?;
    let (trigger, stop) = shutdown::channel();
    let stats = Arc::new(Stats::default());
    let started = Instant::now();
    let pipeline = tokio::spawn(crate::daemon::run_with_stats(cfg, stop, stats.clone()));
    let mut in_log = None;
    let mut first_logged = None;
    let mut first_applied = None;
    while Stats::get(&stats.applied) < changes {
        let now = started.elapsed().as_secs_f64();
        let appended = Stats::get(&stats.appended);
        if first_logged.is_none() && appended > 0 {
            first_logged = Some(now);
        }
        if first_applied.is_none() && Stats::get(&stats.applied) > 0 {
            first_applied = Some(now);
        }
        if in_log.is_none() && appended >= changes {
            in_log = Some(now);
        }
        if pipeline.is_finished() {
            return Err(format!("[{tag}] rowlog stopped during the benchmark").into());
        }
        if started.elapsed() > Duration::from_secs(3600) {
            return Err(format!("[{tag}] rowlog did not catch up in an hour").into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    // Where the time went: reading and decoding the binlog into the log is the first
    // stage, applying the second; they overlap.
    let in_log = in_log.unwrap_or(secs);
    let batches = Stats::get(&stats.batches);
    println!(
        "[{tag}] rowlog applied them in {batches} destination transactions, {:.0} changes each on average",
        Stats::get(&stats.applied) as f64 / batches.max(1) as f64
    );
    println!(
        "[{tag}] rowlog's source stage had every change in the log after {in_log:.2} s ({:.0} row changes/s); the first change was in the log after {:.3} s, the first applied after {:.3} s",
        changes as f64 / in_log,
        first_logged.unwrap_or(secs),
        first_applied.unwrap_or(secs),
    );
    Ok((
        secs,
        Running {
            trigger,
            pipeline,
            dir,
        },
    ))
}

struct Lag {
    target: f64,
    achieved: f64,
    rows_per_txn: u64,
    p50: f64,
    p99: f64,
}

/// (f) A backlog of `rows` row changes written while rowlog is not running, then caught
/// up from empty: what bounds memory is the pipeline's queues and batches, not the
/// backlog. Returns (seconds, peak RSS of this process in MiB during the catch-up).
async fn backlog(rows: u64, opts: &BenchOptions) -> BenchResult<(f64, u64)> {
    let (src, dst) = tokio::join!(
        MariaDb::start(ServerOptions::source(1)),
        MariaDb::start(ServerOptions::destination(2)),
    );
    let (src, dst) = (src?, dst?);
    for s in [&src, &dst] {
        s.exec(&["CREATE DATABASE bench", TABLE]).await?;
    }
    src.exec(&[
        "SET GLOBAL innodb_flush_log_at_trx_commit = 0",
        "SET GLOBAL sync_binlog = 0",
    ])
    .await?;
    let from = master_status(&mut src.conn().await?).await?;
    println!("[backlog] writing {rows} rows on the source while rowlog is not running…");
    let mut c = src.conn().await?;
    let step = 100_000;
    let mut lo = 1;
    while lo <= rows {
        let hi = (lo + step - 1).min(rows);
        c.query_drop(format!(
            "INSERT INTO bench.t SELECT seq, seq % 1000, REPEAT(CHAR(65 + seq % 26), 120), REPEAT('p', 60) FROM bench.seq_{lo}_to_{hi}"
        ))
        .await?;
        lo = hi + 1;
    }
    // The peak is measured from here: what came before was the bench's own setup.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let (secs, running) = catch_up(&src, &dst, &from, "backlog", opts, rows).await?;
    let peak = vm_hwm_mib();
    running.stop().await;
    same_table(&src, &dst, "[backlog] rowlog's destination").await?;
    println!("[backlog] caught up {rows} row changes in {secs:.1} s, destination equal by CHECKSUM TABLE");
    Ok((secs, peak))
}

pub async fn run(opts: BenchOptions) -> BenchResult<()> {
    let overrides = env_overrides()?;
    let (bulk, _) = shape("bulk", &opts, false).await?;
    let (oltp, lag) = shape("oltp", &opts, opts.lag_secs > 0).await?;
    println!();
    println!(
        "rowlog bench replication ({} partitions × {} {}, upserts {}, 2-core machine, same run):",
        opts.partitions,
        opts.workers,
        if opts.workers == 1 {
            "worker"
        } else {
            "workers"
        },
        if opts.load_data {
            "as LOAD DATA where exact"
        } else {
            "as statements"
        }
    );
    if !overrides.is_empty() {
        println!(
            "rowlog's settings from the environment: {}",
            overrides.join(" ")
        );
    }
    println!(
        "{:<6} {:>8} {:>11} {:>11} {:>11} {:>11} {:>9} {:>9} {:>10}",
        "shape",
        "changes",
        "raw rows/s",
        "load rows/s",
        "native/s",
        "rowlog/s",
        "/native",
        "/raw",
        "/raw load"
    );
    for r in [&bulk, &oltp] {
        println!(
            "{:<6} {:>8} {:>11.0} {:>11.0} {:>11.0} {:>11.0} {:>9.2} {:>9.2} {:>10.2}",
            r.shape,
            r.changes,
            r.raw,
            r.raw_load,
            r.native,
            r.rowlog,
            r.rowlog / r.native,
            r.rowlog / r.raw,
            r.rowlog / r.raw_load
        );
    }
    println!(
        "(raw: 1,000-row upserts; raw load: 1,000-row LOAD DATA … REPLACE; both from 4 connections)"
    );
    if let Some(replay) = bulk.replay {
        println!(
            "bulk ceiling for a sink of SQL statements: the destination applies the stretch's own {} changes (uncoalesced, 1,000-row upserts, 4 connections, machine to itself) at {replay:.0}/s = {:.2} × native, {:.2} × raw; rowlog reaches {:.2} of it",
            bulk.changes,
            replay / bulk.native,
            replay / bulk.raw,
            bulk.rowlog / replay
        );
    }
    if let Some(rate) = bulk.snapshot {
        println!(
            "initial snapshot of the bulk table: {rate:.0} rows/s = {:.2} × the raw upsert capacity",
            rate / bulk.raw
        );
    }
    if let Some(l) = &lag {
        println!(
            "end-to-end lag at {:.0} rows/s ({:.0} asked: half of rowlog's oltp rate; {} rows per source transaction): p50 {:.1} ms, p99 {:.1} ms",
            l.achieved, l.target, l.rows_per_txn, l.p50, l.p99
        );
    }
    println!(
        "peak RSS of this process (rowlog + bench clients): {} MiB",
        vm_hwm_mib()
    );
    println!(
        "targets: oltp rowlog/native >= 5: {}; bulk rowlog/native >= 1: {}; rowlog/raw >= 0.8: bulk {}, oltp {}; p99 lag < 500 ms: {}",
        yes(oltp.rowlog / oltp.native >= 5.0),
        yes(bulk.rowlog / bulk.native >= 1.0),
        yes(bulk.rowlog / bulk.raw >= 0.8),
        yes(oltp.rowlog / oltp.raw >= 0.8),
        match &lag {
            None => "not measured",
            // Only a load that reached (nearly) half capacity counts.
            Some(l) if l.achieved < 0.9 * l.target => "not measured at half capacity",
            Some(l) => yes(l.p99 < 500.0),
        }
    );
    if opts.backlog_rows > 0 {
        let (secs, peak) = backlog(opts.backlog_rows, &opts).await?;
        println!(
            "backlog of {} row changes caught up from empty: {:.0} rows/s, peak RSS during the catch-up {peak} MiB (target: a few hundred MiB: {})",
            opts.backlog_rows,
            opts.backlog_rows as f64 / secs,
            yes(peak < 500)
        );
    }
    Ok(())
}

fn yes(b: bool) -> &'static str {
    if b {
        "met"
    } else {
        "NOT met"
    }
}
