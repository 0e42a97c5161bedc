//! `rowlog bench log`: the embedded log's append and read speed next to the raw
//! sequential write bandwidth of the same directory, measured in the same run.
//!
//! Baseline: the same number of bytes written to one file in the same batch sizes,
//! fsynced after each batch — the best any log doing fsync-per-batch could do.
//! Reported: records/s and MB/s for append (fsync per batch) and sequential read, the
//! ratio append/raw, and the process's RSS before and after (memory must stay flat).

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use rowlog_api::{
    BinlogPosition, ChangeEvent, ChangeId, Column, ColumnType, Op, SourceMeta, TableName,
    TableSchema, Value,
};

use crate::log::{AppendBatch, EmbeddedLog, LogError, PartitionReader, PartitionedLog};
use crate::pipeline::partitioner::{key_hash, partition_of};

fn rss_kib(field: &str) -> u64 {
    crate::report::proc_status_kib("self", field)
}

fn schema() -> Arc<TableSchema> {
    let col = |name: &str, ty| Column {
        name: name.into(),
        ty,
        unsigned: false,
        charset: Some(45),
        charset_name: None,
        generated: false,
        nullable: false,
    };
    Arc::new(TableSchema {
        name: TableName::new("bench", "accounts"),
        columns: vec![
            col("id", ColumnType::BigInt),
            col("owner", ColumnType::VarString { max_bytes: 256 }),
            col(
                "balance",
                ColumnType::Decimal {
                    precision: 18,
                    scale: 2,
                },
            ),
            col("note", ColumnType::Blob),
        ],
        primary_key: vec![0],
        unique_keys: vec![],
        keyless: false,
    })
}

/// A realistic change of about 200 bytes on disk.
fn change(t: &Arc<TableSchema>, i: u64) -> ChangeEvent {
    let pos = BinlogPosition {
        file: rowlog_api::BinlogFileName {
            base: "binlog".into(),
            seq: 1 + (i / 1_000_000) as u32,
            width: 6,
        },
        pos: 4 + (i % 1_000_000) * 180,
    };
    ChangeEvent {
        table: t.clone(),
        op: Op::Update,
        before: Some(vec![
            Value::Int(i as i64),
            Value::Bytes(format!("owner-{i}").into_bytes()),
            Value::Decimal(format!("{}.{:02}", i * 3, i % 100)),
            Value::Bytes(vec![b'x'; 40]),
        ]),
        after: Some(vec![
            Value::Int(i as i64),
            Value::Bytes(format!("owner-{i}").into_bytes()),
            Value::Decimal(format!("{}.{:02}", i * 3 + 1, i % 100)),
            Value::Bytes(vec![b'y'; 40]),
        ]),
        source: SourceMeta {
            id: ChangeId {
                epoch: 0,
                event: pos.clone(),
                index: 0,
            },
            txn_start: pos,
            gtid: None,
            commit_time_ms: 1_700_000_000_000 + i,
        },
    }
}

pub async fn run(dir: &Path, records: u64, partitions: u32, batch: u64) -> Result<(), LogError> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).map_err(|source| LogError::Io {
        action: "create",
        path: dir.to_path_buf(),
        source,
    })?;
    let t = schema();
    let rss_start = rss_kib("VmRSS:");

    // Log append, fsync per batch.
    let log = EmbeddedLog::open(&dir.join("log"), partitions, 128 << 20)?;
    // Only the appends are timed: building the records is the source's work.
    let mut append_secs = 0.0;
    let mut i = 0;
    while i < records {
        let mut b = AppendBatch::new(partitions);
        for _ in 0..batch.min(records - i) {
            let c = change(&t, i);
            b.partitions[partition_of(key_hash(&c.routing_key_bytes()), partitions) as usize]
                .push(c.into());
            i += 1;
        }
        let started = Instant::now();
        log.append(b).await?;
        append_secs += started.elapsed().as_secs_f64();
    }
    let info = log.info().await?;
    let bytes: u64 = info.iter().map(|p| p.bytes).sum();
    let fsyncs: u64 = info.iter().map(|p| p.fsyncs).sum();
    let rss_after_append = rss_kib("VmRSS:");

    // Sequential read of every partition.
    let started = Instant::now();
    let mut read = 0u64;
    for p in 0..partitions {
        let mut r = log.reader(p, 0).await?;
        let end = log.end_offset(p);
        let mut n = 0;
        while n < end {
            let got = r.next_batch(4096).await?;
            n += got.len() as u64;
        }
        read += n;
    }
    let read_secs = started.elapsed().as_secs_f64();
    let rss_after_read = rss_kib("VmRSS:");
    drop(log);

    // Raw baseline: the same bytes, one file, same number of fsyncs per batch.
    let raw_path = dir.join("raw.bin");
    let chunk = vec![0x5au8; (bytes / records.div_ceil(batch)).max(1) as usize];
    let io = |source| LogError::Io {
        action: "raw write",
        path: raw_path.clone(),
        source,
    };
    let mut f = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(&raw_path)
        .map_err(io)?;
    let started = Instant::now();
    let mut written = 0;
    while written < bytes {
        f.write_all(&chunk).map_err(io)?;
        f.sync_data().map_err(io)?;
        written += chunk.len() as u64;
    }
    let raw_secs = started.elapsed().as_secs_f64();
    let _ = std::fs::remove_dir_all(dir);

    let mb = bytes as f64 / 1e6;
    let (append_mbs, raw_mbs) = (mb / append_secs, written as f64 / 1e6 / raw_secs);
    println!("rowlog bench log: {records} records in {partitions} partitions, {batch} records per append, {:.0} bytes per record on disk", bytes as f64 / records as f64);
    println!("  raw sequential write + fsync per batch  {raw_mbs:>9.1} MB/s");
    println!(
        "  log append, fsync per batch ({fsyncs} fsyncs) {:>9.0} records/s {append_mbs:>9.1} MB/s",
        records as f64 / append_secs
    );
    println!(
        "  log sequential read                     {:>9.0} records/s {:>9.1} MB/s",
        read as f64 / read_secs,
        mb / read_secs
    );
    println!(
        "  append / raw bandwidth: {:.2} (target >= 0.50); read: {:.2} M records/s (target >= 1.0)",
        append_mbs / raw_mbs,
        read as f64 / read_secs / 1e6
    );
    println!(
        "  RSS: start {} MiB, after append {} MiB, after read {} MiB",
        rss_start / 1024,
        rss_after_append / 1024,
        rss_after_read / 1024
    );
    Ok(())
}
