//! `rowlog snapshot [--tables …]`: copies chosen tables to the destination again,
//! printing progress.
//!
//! * rowlog stopped: the copy goes straight to the destination; the next `rowlog run`
//!   streams on from its checkpoint and skips, per table, what the new copies hold
//!   (see [`crate::snapshot`]).
//! * rowlog running: the command hands the request to the daemon, which copies the
//!   tables through the log while it streams the rest (see [`crate::resnapshot`]),
//!   and follows its progress until it is done.

use std::io::Write;
use std::sync::Mutex;
use std::time::Instant;

use rowlog_mysql_binlog::TableFilter;

use crate::config::Config;
use crate::log::{EmbeddedLog, PartitionedLog};
use crate::metrics::Metrics;
use crate::resnapshot::Request;
use crate::snapshot::{self, Progress, SnapshotState};

type ToolResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

pub async fn snapshot_cmd(cfg: &Config, tables: &[String]) -> ToolResult<()> {
    if EmbeddedLog::in_use(&cfg.log.dir) {
        return while_running(cfg, tables).await;
    }
    on_stopped_log!(cfg, "rowlog snapshot", |log| offline(cfg, tables, &log)
        .await)
}

/// The snapshot with the daemon stopped: this command copies the tables itself.
async fn offline<L: PartitionedLog>(cfg: &Config, tables: &[String], log: &L) -> ToolResult<()> {
    let only = TableFilter::new(tables, &[])?;
    let checkpoint = log.checkpoint().await?;
    let mut state = SnapshotState::load(&cfg.log.dir)?.unwrap_or_default();
    // New floors are in the epoch the stream goes on in: after the log's own, when it
    // holds a later one than the checkpoint.
    state.epoch = checkpoint
        .as_ref()
        .map(|c| crate::pipeline::ingest::newer_epoch_than_the_log(log, c.resume.clone()).epoch)
        .unwrap_or(0);
    let metrics = Metrics::new(cfg.log.partitions, std::time::Duration::from_secs(60));
    let (_trigger, shutdown) = crate::shutdown::channel();
    let last_print = Mutex::new(Instant::now());
    let print = |p: Progress<'_>| {
        let mut last = last_print.lock().unwrap_or_else(|e| e.into_inner());
        if !p.done && last.elapsed().as_millis() < 500 {
            return;
        }
        *last = Instant::now();
        let pct = if p.estimated_rows > 0 {
            format!(
                " ({:.0}%)",
                (p.rows as f64 * 100.0 / p.estimated_rows as f64).min(100.0)
            )
        } else {
            String::new()
        };
        let mut out = std::io::stdout().lock();
        let _ = writeln!(
            out,
            "{}: {} of ~{} rows{pct}{}",
            p.table,
            p.rows,
            p.estimated_rows,
            if p.done { ", done" } else { "" }
        );
    };
    let outcome = snapshot::run(
        cfg,
        log,
        state,
        &only,
        checkpoint.is_none(),
        &metrics,
        &shutdown,
        print,
    )
    .await?
    .ok_or("the snapshot was interrupted; run it again to resume")?;
    println!(
        "snapshot: {} tables, {} rows in {:.1} s ({:.0} rows/s); the next run streams on from {}",
        outcome.tables,
        outcome.rows,
        outcome.seconds,
        outcome.rows as f64 / outcome.seconds.max(1e-9),
        log.checkpoint()
            .await?
            .map(|c| c.resume.to_string())
            .unwrap_or_else(|| "-".into())
    );
    Ok(())
}

/// The daemon runs: hand it the request and follow its progress.
async fn while_running(cfg: &Config, tables: &[String]) -> ToolResult<()> {
    let only = TableFilter::new(tables, &[])?;
    let chosen = rowlog_mysql_binlog::list_tables(&cfg.source, &only).await?;
    if chosen.is_empty() {
        return Err(format!(
            "no replicated table of the source matches --tables {}",
            tables.join(",")
        )
        .into());
    }
    let dir = &cfg.log.dir;
    // A request the daemon gave up on stays for its command to report; when that
    // command is gone, the next one reports it and takes its place.
    if let Some(Request { error: Some(e), .. }) = Request::load(dir)? {
        eprintln!("an earlier re-snapshot failed: {e}; this request replaces it");
        std::fs::remove_file(crate::resnapshot::request_path(dir))?;
    }
    Request::submit(dir, chosen.clone())?;
    println!(
        "rowlog is running: it copies {} table(s) through the log while it streams ({})",
        chosen.len(),
        crate::resnapshot::request_path(dir).display()
    );
    let started = Instant::now();
    let mut shown = (usize::MAX, u64::MAX);
    loop {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let Some(req) = Request::load(dir)? else {
            println!(
                "snapshot: {} table(s) copied in {:.1} s while streaming",
                chosen.len(),
                started.elapsed().as_secs_f64()
            );
            return Ok(());
        };
        if let Some(e) = req.error {
            let _ = std::fs::remove_file(crate::resnapshot::request_path(dir));
            return Err(e.into());
        }
        if let (Some(t), Some(&rows)) = (req.tables.get(req.current), req.rows.get(req.current)) {
            if shown != (req.current, rows) {
                shown = (req.current, rows);
                println!("{t}: {rows} rows");
            }
        }
        if !EmbeddedLog::in_use(dir) {
            return Err(
                "rowlog stopped before the copy finished; it goes on when rowlog runs again".into(),
            );
        }
    }
}
