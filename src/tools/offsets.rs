//! `rowlog offsets show | set`, `rowlog replay`, `rowlog source reset`: moving the
//! pipeline's positions deliberately.
//!
//! Positions live in two places that must agree: the log's consumer offsets and the
//! destination's `rowlog_progress` rows (the truth). `offsets set` rewrites both;
//! `replay` re-applies a stretch without touching either; `source reset` moves the
//! source checkpoint. Commands that write take the log's lock, so they refuse to run
//! while `rowlog run` does (two writers would race).

use std::io::Write;

use rowlog_api::{BinlogPosition, ChangeEvent, ChangeSink, GtidState, WorkerProgress};
use rowlog_mysql_sink::MySqlSink;

use super::{open_read_only, open_stopped, LogLocation, ToolLog};
use crate::config::Config;
use crate::log::{LogEntry, PartitionReader, PartitionedLog};

type ToolResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// Per partition: log end, the log's committed offset, the destination's progress, lag.
pub async fn show(cfg: &Config) -> ToolResult<()> {
    match open_read_only(&LogLocation::Config(Box::new(cfg.clone()))).await? {
        ToolLog::Embedded(log) => show_on(cfg, &log).await,
        ToolLog::Kafka(log, _) => show_on(cfg, &log).await,
    }
}

async fn show_on<L: PartitionedLog>(cfg: &Config, log: &L) -> ToolResult<()> {
    let consumer = cfg.apply().consumer;
    let mut sink = MySqlSink::connect(&cfg.sink, &cfg.name).await?;
    sink.ensure_progress_table().await?;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{:>9} {:>12} {:>12} {:>12} {:>24} {:>10}",
        "partition", "start", "end", "committed", "destination (min..max)", "lag"
    )?;
    for p in 0..log.partitions() {
        let committed = log.committed(&consumer, p).await?;
        let rows: Vec<WorkerProgress> = sink
            .load_progress(p)
            .await?
            .into_iter()
            .filter(|r| r.log_id == log.log_id())
            .collect();
        let dest = match (
            rows.iter().map(|r| r.offset).min(),
            rows.iter().map(|r| r.offset).max(),
        ) {
            (Some(a), Some(b)) => format!("{a}..{b} ({} workers)", rows.len()),
            _ => "-".into(),
        };
        let end = log.end_offset(p);
        let lag = end.saturating_sub(committed.unwrap_or(0));
        let start = log.start_offset(p).await?;
        let committed = committed
            .map(|c| c.to_string())
            .unwrap_or_else(|| "-".into());
        writeln!(
            out,
            "{p:>9} {start:>12} {end:>12} {committed:>12} {dest:>24} {lag:>10}"
        )?;
    }
    if let Some(cp) = log.checkpoint().await? {
        writeln!(
            out,
            "source checkpoint: {} (server_id {}, epoch {})",
            cp.resume, cp.resume.server_id, cp.resume.epoch
        )?;
    }
    Ok(())
}

pub enum Target {
    Offset(u64),
    TimeMs(u64),
    Earliest,
    End,
}

/// Moves partitions' positions to `target`: the log's committed offset and the
/// destination's progress rows, so the next `rowlog run` applies from there.
pub async fn set(cfg: &Config, partitions: Option<u32>, target: Target) -> ToolResult<()> {
    match open_stopped(cfg).await? {
        ToolLog::Embedded(log) => set_on(cfg, &log, partitions, target).await,
        ToolLog::Kafka(log, _lock) => set_on(cfg, &log, partitions, target).await,
    }
}

async fn set_on<L: PartitionedLog>(
    cfg: &Config,
    log: &L,
    partitions: Option<u32>,
    target: Target,
) -> ToolResult<()> {
    let consumer = cfg.apply().consumer;
    let mut sink = MySqlSink::connect(&cfg.sink, &cfg.name).await?;
    sink.ensure_progress_table().await?;
    let workers = cfg.sink.workers;
    let list: Vec<u32> = match partitions {
        Some(p) if p < log.partitions() => vec![p],
        Some(p) => {
            return Err(format!(
                "partition {p} does not exist (the log has {})",
                log.partitions()
            )
            .into())
        }
        None => (0..log.partitions()).collect(),
    };
    for p in list {
        let start = log.start_offset(p).await?;
        let end = log.end_offset(p);
        let to = match target {
            Target::Offset(o) => o,
            Target::TimeMs(t) => log.offset_for_time(p, t).await?,
            Target::Earliest => start,
            Target::End => end,
        };
        if to < start || to > end {
            return Err(format!(
                "offset {to} is out of range for partition {p} (records {start}..{end})"
            )
            .into());
        }
        // Each worker resumes after `to - 1`; with `to == 0` no rows: from the start.
        let rows: Vec<WorkerProgress> = match to.checked_sub(1) {
            Some(offset) => (0..workers)
                .map(|worker| WorkerProgress {
                    log_id: log.log_id(),
                    partition: p,
                    worker,
                    workers,
                    offset,
                })
                .collect(),
            None => Vec::new(),
        };
        sink.set_progress(p, &rows).await?;
        log.commit(&consumer, p, to).await?;
        println!("partition {p}: next offset {to} (records {start}..{end})");
    }
    Ok(())
}

pub struct Range {
    pub partition: Option<u32>,
    pub from: Target,
    pub to: Option<Target>,
}

/// Re-applies a stretch of the log to the destination without moving any position; with
/// `dry_run`, prints what it would change instead.
pub async fn replay(cfg: &Config, range: Range, dry_run: bool) -> ToolResult<()> {
    match open_stopped(cfg).await? {
        ToolLog::Embedded(log) => replay_on(cfg, &log, range, dry_run).await,
        ToolLog::Kafka(log, _lock) => replay_on(cfg, &log, range, dry_run).await,
    }
}

async fn replay_on<L: PartitionedLog>(
    cfg: &Config,
    log: &L,
    range: Range,
    dry_run: bool,
) -> ToolResult<()> {
    let mut sink = MySqlSink::connect(&cfg.sink, &cfg.name).await?;
    let list: Vec<u32> = match range.partition {
        Some(p) => vec![p],
        None => (0..log.partitions()).collect(),
    };

    let (mut applied, mut planned) = (0u64, 0u64);
    for p in list {
        let from = resolve(log, p, &range.from).await?;
        let to = match &range.to {
            Some(t) => resolve(log, p, t).await?,
            None => log.end_offset(p),
        }
        .min(log.end_offset(p));
        if from >= to {
            continue;
        }
        let mut reader = log.reader(p, from).await?;
        let mut next = from;
        while next < to {
            let want = ((to - next) as usize).min(cfg.sink.batch_max_rows);
            let records = reader.next_batch(want).await?;
            next += records.len() as u64;
            let mut batch: Vec<ChangeEvent> = Vec::with_capacity(records.len());
            for r in records {
                match r.entry {
                    LogEntry::Change(c) => batch.push(c),
                    // Replay re-applies rows; the destination already has the schema.
                    LogEntry::Schema(s) => println!(
                        "partition {p}: offset {} is a schema change ({}), not replayed: `{}`",
                        r.offset,
                        s.kind.as_str(),
                        s.statement
                    ),
                }
            }
            if dry_run {
                for plan in sink.plan(&batch).await? {
                    println!(
                        "partition {p}: {} {} → {}",
                        plan.table, plan.key, plan.action
                    );
                    planned += 1;
                }
            } else {
                sink.apply_without_progress(&batch).await?;
                applied += batch.len() as u64;
            }
        }
        println!(
            "partition {p}: offsets {from}..{to} {}",
            if dry_run { "planned" } else { "re-applied" }
        );
    }
    if dry_run {
        println!("dry run: {planned} keys examined, nothing changed");
    } else {
        println!("replayed {applied} changes");
    }
    Ok(())
}

/// The offset of `partition` a target names.
async fn resolve<L: PartitionedLog>(log: &L, p: u32, t: &Target) -> ToolResult<u64> {
    Ok(match *t {
        Target::Offset(o) => o,
        Target::TimeMs(ms) => log.offset_for_time(p, ms).await?,
        Target::Earliest => log.start_offset(p).await?,
        Target::End => log.end_offset(p),
    })
}

/// Where `rowlog source reset` points the source.
pub enum ResetTo {
    Position(BinlogPosition),
    Gtid(GtidState),
}

/// Points the source back (or forward); the next `rowlog run` reads from there and
/// appends what it reads, also changes the log already holds (in a new epoch, so none
/// is taken for a duplicate). The place is checked on the source and completed there:
/// a position gets its GTID state, a GTID state gets its position.
pub async fn source_reset(cfg: &Config, to: ResetTo) -> ToolResult<()> {
    match open_stopped(cfg).await? {
        ToolLog::Embedded(log) => source_reset_on(cfg, &log, to).await,
        ToolLog::Kafka(log, _lock) => source_reset_on(cfg, &log, to).await,
    }
}

async fn source_reset_on<L: PartitionedLog>(cfg: &Config, log: &L, to: ResetTo) -> ToolResult<()> {
    let before = log.checkpoint().await?.map(|c| c.resume);
    let mut resume = match to {
        ResetTo::Position(p) => rowlog_mysql_binlog::locate_position(&cfg.source, p).await?,
        ResetTo::Gtid(g) => rowlog_mysql_binlog::locate_gtid(&cfg.source, g).await?,
    };
    resume.epoch = before.as_ref().map(|b| b.epoch + 1).unwrap_or(0);
    log.store_checkpoint(resume.clone()).await?;
    println!(
        "source checkpoint: {} → {resume}; the next run reads from there (epoch {})",
        before
            .map(|b| b.to_string())
            .unwrap_or_else(|| "none".into()),
        resume.epoch
    );
    Ok(())
}
