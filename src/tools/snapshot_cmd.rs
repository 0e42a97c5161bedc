//! `rowlog snapshot [--tables …]`: copies chosen tables to the destination again (the
//! daemon must be stopped), printing progress; the next `rowlog run` streams on from
//! its checkpoint and skips, per table, what the new copies hold (see
//! [`crate::snapshot`]).

use std::io::Write;
use std::sync::Mutex;
use std::time::Instant;

use rowlog_mysql_binlog::TableFilter;

use crate::config::Config;
use crate::log::PartitionedLog;
use crate::metrics::Metrics;
use crate::snapshot::{self, Progress, SnapshotState};

type ToolResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

pub async fn snapshot_cmd(cfg: &Config, tables: &[String]) -> ToolResult<()> {
    let log = super::offsets::open_stopped(cfg)?;
    let only = TableFilter::new(tables, &[])?;
    let checkpoint = log.checkpoint().await?;
    let mut state = SnapshotState::load(&cfg.log.dir)?.unwrap_or_default();
    // New floors are in the epoch the stream goes on in.
    state.epoch = checkpoint.as_ref().map(|c| c.resume.epoch).unwrap_or(0);
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
        &log,
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
