//! `rowlog log partitions | tail | verify`.

use std::io::Write;
use std::time::Duration;

use super::{open_read_only, LogLocation, ToolLog};
use crate::log::{verify, KafkaLog, LogError, PartitionReader, PartitionedLog};

/// Prints one line per partition: offsets, size, segments and consumers' commits.
pub async fn partitions(at: &LogLocation) -> Result<(), LogError> {
    let log = match open_read_only(at).await? {
        ToolLog::Embedded(log) => log,
        ToolLog::Kafka(log, _) => return kafka_partitions(at, &log).await,
    };
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "{:>9} {:>12} {:>12} {:>14} {:>8}  committed",
        "partition", "start", "end", "bytes", "segments"
    );
    for p in log.info().await? {
        let committed = p
            .committed
            .iter()
            .map(|(c, o)| format!("{c}={}", offset_text(*o)))
            .collect::<Vec<_>>()
            .join(" ");
        let _ = writeln!(
            out,
            "{:>9} {:>12} {:>12} {:>14} {:>8}  {}",
            p.partition, p.start, p.end, p.bytes, p.segments, committed
        );
    }
    Ok(())
}

fn offset_text(o: Option<u64>) -> String {
    o.map(|o| o.to_string()).unwrap_or_else(|| "-".into())
}

/// The Kafka log's partitions: offsets and the sink's consumer group; sizes and segments
/// are the broker's business.
async fn kafka_partitions(at: &LogLocation, log: &KafkaLog) -> Result<(), LogError> {
    let consumer = match at {
        LogLocation::Config(cfg) => cfg.apply().consumer,
        LogLocation::Dir(_) => String::new(),
    };
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "topic {}", log.topic());
    let _ = writeln!(
        out,
        "{:>9} {:>12} {:>12}  committed",
        "partition", "start", "end"
    );
    for p in 0..log.partitions() {
        let committed = log.committed(&consumer, p).await?;
        let _ = writeln!(
            out,
            "{p:>9} {:>12} {:>12}  {consumer}={}",
            log.start_offset(p).await?,
            log.end_offset(p),
            offset_text(committed)
        );
    }
    Ok(())
}

pub enum From {
    Offset(u64),
    TimeMs(u64),
}

/// Prints records of one partition as JSON lines, from an offset or a time; with
/// `follow`, keeps printing what the daemon appends until interrupted.
pub async fn tail(
    at: &LogLocation,
    partition: u32,
    from: From,
    follow: bool,
    limit: Option<u64>,
) -> Result<(), LogError> {
    match open_read_only(at).await? {
        ToolLog::Embedded(log) => {
            let refresh = || std::future::ready(log.refresh());
            tail_on(&log, refresh, partition, from, follow, limit).await
        }
        ToolLog::Kafka(log, _) => {
            tail_on(&log, || log.refresh(), partition, from, follow, limit).await
        }
    }
}

async fn tail_on<L: PartitionedLog, F: std::future::Future<Output = Result<(), LogError>>>(
    log: &L,
    refresh: impl Fn() -> F,
    partition: u32,
    from: From,
    follow: bool,
    limit: Option<u64>,
) -> Result<(), LogError> {
    let start = match from {
        From::Offset(o) => o,
        From::TimeMs(t) => log.offset_for_time(partition, t).await?,
    };
    let mut reader = log.reader(partition, start).await?;
    let mut printed = 0u64;
    let mut out = std::io::stdout().lock();
    loop {
        // Checked first: `--limit 0` prints nothing (a reader asked for no records
        // still hands out one).
        if limit.is_some_and(|l| printed >= l) {
            return Ok(());
        }
        let end = log.end_offset(partition);
        let next = start + printed;
        if next < end {
            let want = limit.map(|l| l - printed).unwrap_or(u64::MAX).min(1000) as usize;
            for rec in reader.next_batch(want).await? {
                let line = crate::tools::json::record(partition, rec.offset, &rec.entry);
                if writeln!(out, "{line}").is_err() {
                    return Ok(()); // stdout closed (e.g. piped into head)
                }
                printed += 1;
            }
            let _ = out.flush();
        } else if !follow {
            return Ok(());
        } else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            refresh().await?;
        }
    }
}

/// Checks every record and index; returns whether the log is sound.
pub async fn verify_cmd(at: &LogLocation) -> Result<bool, LogError> {
    let log = match open_read_only(at).await? {
        ToolLog::Embedded(log) => log,
        ToolLog::Kafka(log, _) => return verify_kafka(&log).await,
    };
    let report = verify(&log)?;
    for p in &report.problems {
        println!("PROBLEM {p}");
    }
    for t in &report.tails {
        println!("NOTE {t}: an unfinished tail (a write in progress, or torn by a crash and cut back on the next open); nothing acknowledged is there");
    }
    println!(
        "{} partitions, {} segments, {} records, {} bytes checked: {}",
        report.partitions,
        report.segments,
        report.records,
        report.bytes,
        verdict(report.problems.len())
    );
    Ok(report.problems.is_empty())
}

fn verdict(problems: usize) -> String {
    if problems == 0 {
        "ok".to_string()
    } else {
        format!("{problems} problems")
    }
}

/// On Kafka the broker checks its own batch CRCs; what rowlog checks is that every
/// record decodes, refers to a stored schema, and sits at the next offset.
async fn verify_kafka(log: &KafkaLog) -> Result<bool, LogError> {
    let (mut records, mut problems) = (0u64, 0usize);
    for p in 0..log.partitions() {
        let (start, end) = (log.start_offset(p).await?, log.end_offset(p));
        if start >= end {
            continue;
        }
        let mut reader = log.reader(p, start).await?;
        let mut next = start;
        while next < end {
            match reader.next_batch(1000).await {
                Ok(batch) => {
                    for rec in batch {
                        if rec.offset != next {
                            println!(
                                "PROBLEM partition {p}: offset {} where {next} was expected",
                                rec.offset
                            );
                            problems += 1;
                        }
                        next = rec.offset + 1;
                        records += 1;
                    }
                }
                Err(e) => {
                    // The reader stops at a record it cannot decode: the rest of this
                    // partition is not checked.
                    println!("PROBLEM partition {p}: {}", crate::report::error_chain(&e));
                    problems += 1;
                    break;
                }
            }
        }
    }
    println!(
        "topic {}: {} partitions, {records} records checked: {}",
        log.topic(),
        log.partitions(),
        verdict(problems)
    );
    Ok(problems == 0)
}

/// Parses `2026-11-24T15:00:00Z`, `2026-11-24T15:00:00.250Z`, `2026-11-24 15:00:00`
/// (UTC) or milliseconds since the epoch.
pub fn parse_time(s: &str) -> Result<u64, String> {
    if let Ok(ms) = s.parse::<u64>() {
        return Ok(ms);
    }
    let err = || format!("`{s}` is not a time: use 2026-11-24T15:00:00Z or epoch milliseconds");
    let s = s.trim_end_matches('Z');
    let (date, time) = s.split_once(['T', ' ']).ok_or_else(err)?;
    let d: Vec<i64> = date
        .split('-')
        .map(|x| x.parse().map_err(|_| err()))
        .collect::<Result<_, _>>()?;
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let t: Vec<i64> = hms
        .split(':')
        .map(|x| x.parse().map_err(|_| err()))
        .collect::<Result<_, _>>()?;
    if d.len() != 3 || t.len() != 3 {
        return Err(err());
    }
    let ms_frac: i64 = format!("{frac:0<3}")[..3].parse().map_err(|_| err())?;
    // Days from civil (Howard Hinnant).
    let (y, m, day) = (if d[1] <= 2 { d[0] - 1 } else { d[0] }, d[1], d[2]);
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let ms = ((days * 86_400 + t[0] * 3600 + t[1] * 60 + t[2]) * 1000) + ms_frac;
    u64::try_from(ms).map_err(|_| err())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_as_utc() {
        assert_eq!(parse_time("1970-01-01T00:00:01Z").unwrap(), 1000);
        assert_eq!(
            parse_time("2038-01-19 03:14:07.5").unwrap(),
            2_147_483_647_500
        );
        assert_eq!(parse_time("1700000000000").unwrap(), 1_700_000_000_000);
        assert!(parse_time("yesterday").is_err());
    }
}
