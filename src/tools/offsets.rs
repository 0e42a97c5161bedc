//! `rowlog offsets show | set`, `rowlog replay`, `rowlog source reset`: moving the
//! pipeline's positions deliberately.
//!
//! Positions live in two places that must agree: the log's consumer offsets and the
//! destination's `rowlog_progress` rows (the truth). `offsets set` rewrites both;
//! `replay` re-applies a stretch without touching either; `source reset` moves the
//! source checkpoint. Commands that write take the log's lock, so they refuse to run
//! while `rowlog run` does (two writers would race).

use std::io::Write;

use rowlog_api::{
    BinlogFileName, BinlogPosition, ChangeEvent, ChangeSink, GtidState, WorkerProgress,
};
use rowlog_mysql_sink::MySqlSink;

use super::{open_read_only, LogLocation, ToolLog};
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
    // Read only: it runs beside the daemon, so it creates and migrates nothing.
    let has_progress = sink.has_progress_table().await?;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{:>9} {:>12} {:>12} {:>12} {:>24} {:>10}",
        "partition", "start", "end", "committed", "destination (min..max)", "lag"
    )?;
    for p in 0..log.partitions() {
        let committed = log.committed(&consumer, p).await?;
        let rows: Vec<WorkerProgress> = if has_progress {
            sink.peek_progress(p).await?
        } else {
            Vec::new()
        }
        .into_iter()
        .filter(|r| r.log_id == log.log_id())
        .collect();
        let dest = match (
            rows.iter().map(|r| r.offset).min(),
            rows.iter().map(|r| r.offset).max(),
        ) {
            (Some(a), Some(b)) => workers_stored(a, b, &rows),
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

/// `min..max (N workers)`, naming each worker count when rows of several are stored
/// (a restart with another `sink.workers` keeps the earlier count's rows until some
/// count's every worker has passed them).
fn workers_stored(min: u64, max: u64, rows: &[WorkerProgress]) -> String {
    let mut counts: Vec<u32> = rows.iter().map(|r| r.workers).collect();
    counts.sort_unstable();
    counts.dedup();
    let of = |n: u32| rows.iter().filter(|r| r.workers == n).count();
    match counts.as_slice() {
        [n] if of(*n) == *n as usize => format!("{min}..{max} ({n} workers)"),
        [n] => format!("{min}..{max} ({} of {n} workers)", of(*n)),
        _ => {
            let split: Vec<String> = counts
                .iter()
                .map(|&n| format!("{} of {n}", of(n)))
                .collect();
            format!("{min}..{max} (workers: {})", split.join(", "))
        }
    }
}

pub enum Target {
    Offset(u64),
    TimeMs(u64),
    Earliest,
    End,
}

/// Moves partitions' positions to `target`: the log's committed offset and the
/// destination's progress rows, so the next `rowlog run` applies from there. Every
/// partition's target is checked before any is moved. Moving back across a schema
/// change is refused unless `force` (see [`schema_changes_in`]).
pub async fn set(
    cfg: &Config,
    partitions: Option<u32>,
    target: Target,
    force: bool,
) -> ToolResult<()> {
    on_stopped_log!(cfg, "rowlog offsets set", |log| set_on(
        cfg, &log, partitions, target, force
    )
    .await)
}

/// The schema changes among offsets `[from, to)` of partition `p`, as lines to print.
///
/// Why they matter when positions move back: a schema change already applied is
/// not applied again (DDL is not idempotent), but the rows before it are, over a
/// destination that has it: rows a TRUNCATE or DELETE-by-DDL removed come back, and
/// rows of a dropped column or table halt the partition.
async fn schema_changes_in<L: PartitionedLog>(
    log: &L,
    p: u32,
    from: u64,
    to: u64,
) -> ToolResult<Vec<(String, String)>> {
    let mut found = Vec::new();
    if from >= to {
        return Ok(found);
    }
    let mut reader = log.reader(p, from).await?;
    let mut next = from;
    while next < to {
        let records = reader.next_batch(((to - next) as usize).min(4096)).await?;
        if records.is_empty() {
            break;
        }
        next += records.len() as u64;
        for r in records {
            if let LogEntry::Schema(s) = r.entry {
                found.push((
                    format!(
                        "{} at {}: `{}`",
                        s.kind.as_str(),
                        s.source.id.event,
                        s.statement
                    ),
                    format!("partition {p} offset {}", r.offset),
                ));
            }
        }
    }
    Ok(found)
}

/// How far the destination has partition `p`: the log's committed offset or, when
/// further, the end of what a worker's progress row on the destination says it
/// applied (the log's offset lags it by up to a second, or is gone: Kafka expires the
/// offsets of an idle consumer group).
async fn applied_end<L: PartitionedLog>(
    log: &L,
    sink: &mut MySqlSink,
    consumer: &str,
    p: u32,
) -> ToolResult<Option<u64>> {
    let committed = log.committed(consumer, p).await?;
    let progress = sink
        .load_progress(p)
        .await?
        .into_iter()
        .filter(|r| r.log_id == log.log_id())
        .map(|r| r.offset + 1)
        .max();
    Ok(committed.max(progress))
}

/// Whether keys changed in `stretch` of partition `p` change again before `applied`
/// (what the destination holds): a line saying where, if so.
async fn changed_again<L: PartitionedLog>(
    log: &L,
    p: u32,
    stretch: (u64, u64),
    applied: u64,
) -> ToolResult<Option<String>> {
    use crate::pipeline::partitioner::key_hash;
    use std::collections::HashSet;
    // Route hashes (a collision only refuses too much, never too little): keys its
    // collation calls equal are one row on the destination, and their bytes differ,
    // so a text-keyed table counts as one key, as it routes (see
    // `ChangeEvent::routing_key_bytes`); so does a table with unique keys.
    let mut keys = HashSet::new();
    let mut again: Option<(u64, String)> = None;
    let mut later = 0u64;
    let mut reader = log.reader(p, stretch.0).await?;
    let mut next = stretch.0;
    while next < applied {
        let records = reader
            .next_batch(((applied - next) as usize).min(4096))
            .await?;
        if records.is_empty() {
            break;
        }
        next += records.len() as u64;
        for r in records {
            let LogEntry::Change(c) = r.entry else {
                continue;
            };
            let k = key_hash(&c.routing_key_bytes());
            if r.offset < stretch.1 {
                keys.insert(k);
            } else if keys.contains(&k) {
                later += 1;
                again.get_or_insert((r.offset, c.table.name.to_string()));
            }
        }
    }
    Ok(again.map(|(offset, table)| {
        format!(
            "partition {p}: the stretch ends at {}, and {later} changes up to the applied offset {applied} are to keys it changes (the first: {table} at offset {offset})",
            stretch.1
        )
    }))
}

/// The partition asked for (checked), or every partition.
fn partition_list<L: PartitionedLog>(log: &L, one: Option<u32>) -> ToolResult<Vec<u32>> {
    match one {
        Some(p) if p < log.partitions() => Ok(vec![p]),
        Some(p) => Err(format!(
            "partition {p} does not exist (the log has {})",
            log.partitions()
        )
        .into()),
        None => Ok((0..log.partitions()).collect()),
    }
}

/// Schema changes as lines: every partition holds each one, so each is listed once,
/// with where it sits.
fn listed_once(changes: &[(String, String)]) -> String {
    let mut by_change: std::collections::BTreeMap<&str, Vec<&str>> = Default::default();
    for (change, at) in changes {
        by_change.entry(change).or_default().push(at);
    }
    by_change
        .iter()
        .map(|(change, at)| format!("{change} ({})", at.join(", ")))
        .collect::<Vec<_>>()
        .join("\n  ")
}

/// Why going back across a schema change is refused, for the log's position tools.
const ROWS_OVER_A_NEWER_SHAPE: &str = "A schema change the destination has is not applied again \
    (and a replay applies none), but the rows before it are, over a destination that has it: rows a \
    TRUNCATE removed come back, rows of a dropped column or table halt the partition.";

/// Why, for `source reset`: the changes read again are in a new reading epoch.
const RUN_AGAIN: &str = "Read again, each is in a new reading epoch, which its record on the \
    destination does not match: it runs a second time (a table swap swaps back, an unnamed index is \
    added twice, a dropped column halts), and the rows before it are applied over a destination \
    that has it.";

/// Refuses, listing them, to go back across `changes` unless `force`; `why` says what
/// would go wrong.
fn refuse_crossing(
    changes: &[(String, String)],
    what: &str,
    why: &str,
    force: bool,
) -> ToolResult<()> {
    if changes.is_empty() {
        return Ok(());
    }
    let list = listed_once(changes);
    if force {
        println!("--force: {what} across these schema changes:\n  {list}");
        return Ok(());
    }
    Err(format!(
        "refused: {what} across schema changes:\n  {list}\n{why} Give --force to do it anyway."
    )
    .into())
}

async fn set_on<L: PartitionedLog>(
    cfg: &Config,
    log: &L,
    partitions: Option<u32>,
    target: Target,
    force: bool,
) -> ToolResult<()> {
    let consumer = cfg.apply().consumer;
    let mut sink = MySqlSink::connect(&cfg.sink, &cfg.name).await?;
    sink.ensure_progress_table().await?;
    let workers = cfg.sink.workers;
    let list = partition_list(log, partitions)?;
    // Every partition is checked before any moves.
    let mut moves = Vec::new();
    let (mut crossed, mut skipped) = (Vec::new(), Vec::new());
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
                "offset {to} is out of range for partition {p} (records {start}..{end}); no partition was moved"
            )
            .into());
        }
        let was = log.committed(&consumer, p).await?;
        let applied = applied_end(log, &mut sink, &consumer, p).await?;
        if let Some(applied) = applied {
            crossed.extend(schema_changes_in(log, p, to, applied).await?);
        }
        // Forward: schema changes skipped with the rows (the operator's decision), said.
        skipped.extend(schema_changes_in(log, p, applied.unwrap_or(0), to).await?);
        moves.push((p, start, end, to, was));
    }
    refuse_crossing(&crossed, "moving back", ROWS_OVER_A_NEWER_SHAPE, force)?;
    if !skipped.is_empty() {
        println!(
            "skipped with the records, never applied to the destination:\n  {}",
            listed_once(&skipped)
        );
    }
    for (p, start, end, to, was) in moves {
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
        let effect = match was {
            Some(w) if to < w => format!("{} records will be applied again", w - to),
            Some(w) if to > w => format!("{} records will be skipped", to - w),
            Some(_) => "unchanged".into(),
            None => "no offset was committed before".into(),
        };
        let was = was.map_or_else(|| "-".into(), |w| w.to_string());
        println!("partition {p}: next offset {was} -> {to}: {effect} (records {start}..{end})");
        tracing::info!(partition = p, from = %was, to, "offsets set by the operator");
    }
    Ok(())
}

pub struct Range {
    pub partition: Option<u32>,
    pub from: Target,
    pub to: Option<Target>,
    /// Replay across schema changes, or stop before what is applied (see [`replay`]).
    pub force: bool,
}

/// Re-applies a stretch of the log to the destination without moving any position; with
/// `dry_run`, prints what it would change instead. Refused unless `range.force`: a
/// stretch followed by a schema change the destination has (in it, or after it up to
/// the committed offset; see [`schema_changes_in`]), and a stretch that ends before
/// changes the destination has to the same keys (they would be left at older
/// versions, until they change again).
pub async fn replay(cfg: &Config, range: Range, dry_run: bool) -> ToolResult<()> {
    on_stopped_log!(cfg, "rowlog replay", |log| replay_on(
        cfg, &log, range, dry_run
    )
    .await)
}

async fn replay_on<L: PartitionedLog>(
    cfg: &Config,
    log: &L,
    range: Range,
    dry_run: bool,
) -> ToolResult<()> {
    let mut sink = MySqlSink::connect(&cfg.sink, &cfg.name).await?;
    let list = partition_list(log, range.partition)?;
    let consumer = cfg.apply().consumer;
    if !dry_run {
        sink.ensure_progress_table().await?;
    }
    let mut stretches = Vec::new();
    let (mut crossed, mut short) = (Vec::new(), Vec::new());
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
        stretches.push((p, from, to));
        if dry_run {
            continue;
        }
        // Schema changes in the stretch, or after it up to what the destination has.
        let applied = applied_end(log, &mut sink, &consumer, p).await?;
        crossed.extend(schema_changes_in(log, p, from, applied.unwrap_or(0).max(to)).await?);
        if let Some(a) = applied.filter(|&a| to < a) {
            short.extend(changed_again(log, p, (from, to), a).await?);
        }
    }
    if !dry_run {
        refuse_crossing(&crossed, "replaying", ROWS_OVER_A_NEWER_SHAPE, range.force)?;
        if !short.is_empty() && !range.force {
            return Err(format!(
                "refused: keys the stretch changes change again after it, and the destination has that already: they would be left at older versions (until they change again):\n  {}\nGive --force to do it anyway.",
                short.join("\n  ")
            )
            .into());
        }
    }

    let (mut applied, mut planned) = (0u64, 0u64);
    for (p, from, to) in stretches {
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

/// The schema changes the destination recorded as applied after `from`: reading the
/// source again from `from` reads them again, in a new epoch, where their record does
/// not find them, so they would run a second time (a table swap swaps back, and the
/// rows before it land in the other table). Records of every epoch count: one of an
/// earlier epoch at a later position may be of this server's history too (a reset
/// forward, then back). One of another history (a source whose binlog was reset, a
/// failover) is listed as well; `--force` goes past it.
async fn recorded_since(cfg: &Config, from: &BinlogPosition) -> ToolResult<Vec<(String, String)>> {
    let mut sink = MySqlSink::connect(&cfg.sink, &cfg.name).await?;
    sink.ensure_progress_table().await?;
    let mut found = Vec::new();
    for (file, pos, kind, statement) in sink.recorded_schema_changes().await? {
        let at = BinlogFileName::parse(&file).map(|file| BinlogPosition { file, pos });
        // A name of another form than the source's files is listed: better refused
        // than run twice.
        if at.as_ref().is_none_or(|at| at > from) {
            found.push((
                format!("{kind} at {file}:{pos}: `{statement}`"),
                "recorded on the destination".to_string(),
            ));
        }
    }
    found.sort();
    Ok(found)
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
pub async fn source_reset(cfg: &Config, to: ResetTo, force: bool) -> ToolResult<()> {
    on_stopped_log!(cfg, "rowlog source reset", |log| source_reset_on(
        cfg, &log, to, force
    )
    .await)
}

async fn source_reset_on<L: PartitionedLog>(
    cfg: &Config,
    log: &L,
    to: ResetTo,
    force: bool,
) -> ToolResult<()> {
    let before = log.checkpoint().await?.map(|c| c.resume);
    let mut resume = match to {
        ResetTo::Position(p) => rowlog_mysql_binlog::locate_position(&cfg.source, p).await?,
        ResetTo::Gtid(g) => rowlog_mysql_binlog::locate_gtid(&cfg.source, g).await?,
    };
    // Positions compare within one server's binlog only.
    if before
        .as_ref()
        .is_some_and(|b| b.server_id == resume.server_id)
    {
        let crossed = match recorded_since(cfg, &resume.position).await {
            Ok(crossed) => crossed,
            // The check needs the destination; --force goes on without it, as the
            // reset did before there was a check.
            Err(e) if force => {
                println!("--force: the destination's record of schema changes could not be read ({e}); not checked");
                Vec::new()
            }
            Err(e) => return Err(e),
        };
        refuse_crossing(&crossed, "reading the source again", RUN_AGAIN, force)?;
    }
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
