//! The embedded log as a storage engine: seeks by offset and time through the index,
//! group commit, the fsync policies, retention that respects consumers, and a full
//! disk that fails appends cleanly and recovers when space returns.

use crate::common;

use std::process::Command;
use std::time::Duration;

use common::records::{append, change, change_at, read_from, table};
use rowlog::log::{
    verify, EmbeddedLog, FsyncPolicy, LogError, PartitionReader, PartitionedLog, Retention,
};

#[tokio::test]
async fn any_offset_and_any_time_is_found_through_the_index() {
    let dir = tempfile::tempdir().unwrap();
    let t = table();
    let log = EmbeddedLog::open(dir.path(), 1, 64 << 10).unwrap();
    // 20,000 records of ~200 bytes over ~60 segments; commit times rise 10 ms apart.
    for chunk in 0..20u64 {
        let batch = (chunk * 1000..chunk * 1000 + 1000)
            .map(|i| change_at(&t, i, 150, 1_000_000 + i * 10))
            .collect();
        append(&log, 0, batch).await.unwrap();
    }
    assert!(log.segments(0).unwrap().len() > 50, "segments rolled");
    for from in [0u64, 1, 4095, 4096, 10_001, 19_999] {
        let got = read_from(&log, 0, from).await.unwrap();
        assert_eq!(got.len() as u64, 20_000 - from);
        assert_eq!(got[0].0, from);
        assert_eq!(got[0].1, change_at(&t, from, 150, 1_000_000 + from * 10));
    }
    for (time, expected) in [
        (0, 0),
        (1_000_000, 0),
        (1_000_005, 1),
        (1_100_000, 10_000),
        (1_199_990, 19_999),
        (9_999_999, 20_000),
    ] {
        assert_eq!(
            log.offset_for_time(0, time).await.unwrap(),
            expected,
            "first record at or after {time}"
        );
    }
    let report = verify(&log).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!(report.records, 20_000);
}

#[tokio::test]
async fn a_missing_or_damaged_index_is_rebuilt_from_its_segment() {
    let dir = tempfile::tempdir().unwrap();
    let t = table();
    {
        let log = EmbeddedLog::open(dir.path(), 1, 64 << 10).unwrap();
        append(&log, 0, (0..3000).map(|i| change(&t, i)).collect())
            .await
            .unwrap();
    }
    let part = dir.path().join("partitions/00000");
    let first_index = part.join(format!("{:020}.index", 0));
    std::fs::remove_file(&first_index).unwrap();
    let second = std::fs::read_dir(&part)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "index"))
        .min()
        .unwrap();
    std::fs::write(&second, b"garbage").unwrap();
    let log = EmbeddedLog::open(dir.path(), 1, 64 << 10).unwrap();
    let got = read_from(&log, 0, 2500).await.unwrap();
    assert_eq!(got[0].1, change(&t, 2500));
    // Reading into every segment uses (and so repairs) every index.
    for base in log.segments(0).unwrap() {
        let got = read_from(&log, 0, base + 1).await.unwrap();
        assert_eq!(got[0].1, change(&t, base + 1));
    }
    assert!(first_index.exists(), "the index was written again");
    assert!(verify(&log).unwrap().problems.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appends_share_fsyncs() {
    let dir = tempfile::tempdir().unwrap();
    let t = table();
    let log = EmbeddedLog::open(dir.path(), 1, 1 << 30).unwrap();
    let mut tasks = Vec::new();
    for writer in 0..8u64 {
        let (log, t) = (log.clone(), t.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..50 {
                append(&log, 0, vec![change(&t, writer * 1000 + i)])
                    .await
                    .unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let got = read_from(&log, 0, 0).await.unwrap();
    assert_eq!(got.len(), 400, "every acknowledged append is there");
    for writer in 0..8u64 {
        let mine: Vec<u64> = got
            .iter()
            .map(|(_, c)| c.source.id.event.pos)
            .filter(|p| (p - 1000) / 100 / 1000 == writer)
            .collect();
        assert!(
            mine.windows(2).all(|w| w[0] < w[1]),
            "each writer's appends keep their order"
        );
    }
    let fsyncs = log.fsyncs(0);
    assert!(
        fsyncs < 400,
        "400 appends took {fsyncs} fsyncs: concurrent appends were not grouped"
    );
}

#[tokio::test]
async fn the_interval_policy_shows_readers_and_checkpoints_only_synced_records() {
    let dir = tempfile::tempdir().unwrap();
    let t = table();
    let log = EmbeddedLog::open_with(
        dir.path(),
        2,
        1 << 20,
        FsyncPolicy::Interval(Duration::from_millis(300)),
    )
    .unwrap();
    append(&log, 1, (0..10).map(|i| change(&t, i)).collect())
        .await
        .unwrap();
    assert_eq!(log.end_offset(1), 0, "not yet synced: invisible to readers");
    // Storing a checkpoint waits for (and forces) durability of what it covers.
    log.store_checkpoint(common::records::resume_at("binlog.000001:99999"))
        .await
        .unwrap();
    assert_eq!(log.end_offset(1), 10);
    assert_eq!(log.checkpoint().await.unwrap().unwrap().ends, vec![0, 10]);
    append(&log, 1, (10..20).map(|i| change(&t, i)).collect())
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while log.end_offset(1) < 20 {
        assert!(
            std::time::Instant::now() < deadline,
            "the flusher never synced"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(read_from(&log, 1, 0).await.unwrap().len(), 20);
}

/// The `rowlog log` tools open the log read-only beside the daemon. They show what
/// the daemon has synced, never records still waiting for their fsync, which a failed
/// fsync or a power failure could take back (the interval policy keeps them waiting
/// for up to `log.fsync_interval_ms`).
#[tokio::test]
async fn a_read_only_opener_beside_the_writer_sees_only_synced_records() {
    let dir = tempfile::tempdir().unwrap();
    let t = table();
    // An interval far beyond the test: only the checkpoint below syncs.
    let log = EmbeddedLog::open_with(
        dir.path(),
        2,
        1 << 20,
        FsyncPolicy::Interval(Duration::from_secs(3600)),
    )
    .unwrap();
    append(&log, 1, (0..10).map(|i| change(&t, i)).collect())
        .await
        .unwrap();
    let tool = EmbeddedLog::open_read_only(dir.path()).unwrap();
    assert_eq!(tool.end_offset(1), 0, "written, not synced: not shown");
    tool.refresh().unwrap();
    assert_eq!(tool.end_offset(1), 0, "nor after a second look");

    log.store_checkpoint(common::records::resume_at("binlog.000001:99999"))
        .await
        .unwrap();
    tool.refresh().unwrap();
    assert_eq!(tool.end_offset(1), 10, "synced: shown");
    let got = read_from(&tool, 1, 0).await.unwrap();
    assert_eq!(got.len(), 10);
    for (i, (offset, c)) in got.iter().enumerate() {
        assert_eq!((*offset, c), (i as u64, &change(&t, i as u64)));
    }

    append(&log, 1, (10..15).map(|i| change(&t, i)).collect())
        .await
        .unwrap();
    tool.refresh().unwrap();
    assert_eq!(
        tool.end_offset(1),
        10,
        "the next unsynced records are not shown either"
    );
    let reopened = EmbeddedLog::open_read_only(dir.path()).unwrap();
    assert_eq!(reopened.end_offset(1), 10, "nor to a tool opened now");
}

#[tokio::test]
async fn retention_by_size_never_removes_what_a_consumer_has_not_committed() {
    let dir = tempfile::tempdir().unwrap();
    let t = table();
    let log = EmbeddedLog::open(dir.path(), 1, 64 << 10).unwrap();
    append(&log, 0, (0..5000).map(|i| change(&t, i)).collect())
        .await
        .unwrap();
    log.commit("sink", 0, 1200).await.unwrap();
    let policy = Retention {
        max_bytes: 200 << 10,
        max_age: Duration::ZERO,
        force: false,
    };
    let removed = log.enforce_retention(policy, 0).await.unwrap();
    assert!(removed.segments > 0);
    let start = log.segments(0).unwrap()[0];
    assert!(
        start <= 1200,
        "start {start} passed the consumer's committed offset"
    );
    assert_eq!(
        read_from(&log, 0, 1200).await.unwrap()[0].1,
        change(&t, 1200)
    );

    // Once the consumer has committed everything, size alone decides.
    log.commit("sink", 0, 5000).await.unwrap();
    log.enforce_retention(policy, 0).await.unwrap();
    let info = &log.info().await.unwrap()[0];
    assert!(
        info.bytes <= (200 << 10) + (64 << 10),
        "{} bytes kept",
        info.bytes
    );
    assert_eq!(info.end, 5000);
    assert!(matches!(
        log.reader(0, 0).await,
        Err(LogError::OffsetOutOfRange { .. })
    ));
}

/// A read-only view (`rowlog log tail --follow`, `replay`) of a log whose writer's
/// retention removes segments: the view's start moves up with the writer's, a read
/// below it is "out of range", and following goes on. Before, the view kept the
/// removed segments: every later look failed to open the file it had followed, and a
/// read from the old start failed on a missing file.
#[tokio::test]
async fn a_read_only_view_follows_the_log_past_segments_retention_removed() {
    let dir = tempfile::tempdir().unwrap();
    let t = table();
    let log = EmbeddedLog::open(dir.path(), 1, 64 << 10).unwrap();
    append(&log, 0, (0..100).map(|i| change(&t, i)).collect())
        .await
        .unwrap();
    // One view follows the first segment; the other is opened once it has rolled.
    let following = EmbeddedLog::open_read_only(dir.path()).unwrap();
    assert_eq!(following.end_offset(0), 100);
    append(&log, 0, (100..5000).map(|i| change(&t, i)).collect())
        .await
        .unwrap();
    let later = EmbeddedLog::open_read_only(dir.path()).unwrap();
    assert_eq!(later.segments(0).unwrap()[0], 0);

    log.commit("sink", 0, 5000).await.unwrap();
    let policy = Retention {
        max_bytes: 200 << 10,
        max_age: Duration::ZERO,
        force: false,
    };
    assert!(log.enforce_retention(policy, 0).await.unwrap().segments > 0);
    let start = log.segments(0).unwrap()[0];
    assert!(start > 0);

    // The view that followed the removed segment catches up with the writer.
    following.refresh().unwrap();
    assert_eq!(following.end_offset(0), 5000);
    assert_eq!(following.segments(0).unwrap()[0], start);
    let got = read_from(&following, 0, start).await.unwrap();
    assert_eq!(got.len() as u64, 5000 - start);
    assert_eq!(got[0], (start, change(&t, start)));
    assert_eq!(got.last().unwrap(), &(4999, change(&t, 4999)));

    // The view opened before the removal: a read from its old start is out of range,
    // with or without a fresh look.
    for look in [false, true] {
        if look {
            later.refresh().unwrap();
            assert_eq!(later.segments(0).unwrap()[0], start);
        }
        match read_from(&later, 0, 0).await {
            Err(LogError::OffsetOutOfRange {
                requested: 0,
                start: s,
                ..
            }) => assert_eq!(s, start),
            Err(e) => panic!("a read below the removed segments got {e}"),
            Ok(r) => panic!("read {} records that retention removed", r.len()),
        }
    }
    append(&log, 0, (5000..5010).map(|i| change(&t, i)).collect())
        .await
        .unwrap();
    following.refresh().unwrap();
    assert_eq!(following.end_offset(0), 5010);
}

#[tokio::test]
async fn retention_by_age_and_forced_retention_makes_lagging_consumers_fail_loudly() {
    let dir = tempfile::tempdir().unwrap();
    let t = table();
    let log = EmbeddedLog::open(dir.path(), 1, 64 << 10).unwrap();
    // Old records, then new ones.
    append(
        &log,
        0,
        (0..2000).map(|i| change_at(&t, i, 150, 1_000)).collect(),
    )
    .await
    .unwrap();
    append(
        &log,
        0,
        (2000..4000)
            .map(|i| change_at(&t, i, 150, 1_000_000))
            .collect(),
    )
    .await
    .unwrap();
    log.commit("slow", 0, 0).await.unwrap();
    let by_age = Retention {
        max_bytes: 0,
        max_age: Duration::from_secs(100),
        force: false,
    };
    assert_eq!(
        log.enforce_retention(by_age, 1_000_000)
            .await
            .unwrap()
            .segments,
        0,
        "the consumer holds everything back"
    );
    // A consumer already reading from the start when forced retention runs.
    let mut inflight = log.reader(0, 0).await.unwrap();
    let first = inflight.next_batch(10).await.unwrap();
    assert_eq!(first[0].offset, 0);
    let forced = Retention {
        force: true,
        ..by_age
    };
    assert!(
        log.enforce_retention(forced, 1_000_000)
            .await
            .unwrap()
            .segments
            > 0
    );
    let start = log.segments(0).unwrap()[0];
    assert!(
        start > 0 && start <= 2000,
        "only old segments went (start {start})"
    );
    match log.reader(0, 0).await {
        Err(e @ LogError::OffsetOutOfRange { .. }) => {
            assert!(e.to_string().contains("out of range"), "{e}")
        }
        Err(e) => panic!("unexpected {e}"),
        Ok(_) => panic!("a consumer behind retention must get an error, not skip"),
    }
    // The in-flight consumer reads on (its open segment stays readable) in order, then
    // gets "out of range" where the removed records were: never a jump past them.
    let mut next = 10;
    loop {
        match inflight.next_batch(500).await {
            Ok(batch) => {
                for r in &batch {
                    assert_eq!(r.offset, next, "records in order with no gap");
                    next += 1;
                }
                assert!(next < start, "read past the removed records to {next}");
            }
            Err(e @ LogError::OffsetOutOfRange { .. }) => {
                assert!(next < start, "{e}");
                break;
            }
            Err(e) => panic!("an in-flight consumer behind forced retention got {e}"),
        }
    }
}

/// A real full disk: a 2 MiB tmpfs.
struct SmallFs {
    dir: tempfile::TempDir,
}

impl SmallFs {
    fn mount(bytes: u64) -> SmallFs {
        Self::mount_with(&format!("size={bytes}"))
    }

    /// With tmpfs options, e.g. `nr_inodes=` for a filesystem out of files.
    fn mount_with(options: &str) -> SmallFs {
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("run mount");
        assert!(
            status.success(),
            "mounting a tmpfs needs root (CI runs as root)"
        );
        SmallFs { dir }
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

#[tokio::test]
async fn a_full_disk_fails_appends_cleanly_and_the_log_resumes_when_space_returns() {
    let fs = SmallFs::mount(2 << 20);
    let dir = fs.dir.path().join("log");
    let filler = fs.dir.path().join("filler");
    std::fs::write(&filler, vec![0u8; 1 << 20]).unwrap();
    let t = table();
    let log = EmbeddedLog::open(&dir, 1, 256 << 10).unwrap();
    let mut acknowledged = 0u64;
    let err = loop {
        let batch = (acknowledged..acknowledged + 100)
            .map(|i| change(&t, i))
            .collect();
        match append(&log, 0, batch).await {
            Ok(()) => acknowledged += 100,
            Err(e) => break e,
        }
        assert!(acknowledged < 100_000, "the disk never filled");
    };
    let msg = rowlog::report::error_chain(&err);
    assert!(
        msg.contains("No space left on device") && msg.contains(&dir.display().to_string()),
        "{msg}"
    );
    // Nothing acknowledged is damaged, nothing unacknowledged is visible.
    assert_eq!(log.end_offset(0), acknowledged);
    let got = read_from(&log, 0, 0).await.unwrap();
    assert_eq!(got.len() as u64, acknowledged);
    assert_eq!(got.last().unwrap().1, change(&t, acknowledged - 1));
    assert!(verify(&log).unwrap().problems.is_empty());

    // Space returns: the same open log takes appends again.
    std::fs::remove_file(&filler).unwrap();
    append(
        &log,
        0,
        (acknowledged..acknowledged + 100)
            .map(|i| change(&t, i))
            .collect(),
    )
    .await
    .unwrap();
    drop(log);
    let log = EmbeddedLog::open(&dir, 1, 256 << 10).unwrap();
    let got = read_from(&log, 0, 0).await.unwrap();
    assert_eq!(got.len() as u64, acknowledged + 100);
    assert!(got
        .iter()
        .enumerate()
        .all(|(i, (o, c))| *o == i as u64 && *c == change(&t, i as u64)));
}

/// The disk fills while a new table schema is being stored: the part of it that was
/// written is cut off, and the schemas stored before it, which written records use,
/// are kept (cutting by the new schema's length from the end took them with it).
#[tokio::test]
async fn a_full_disk_while_storing_a_schema_keeps_the_schemas_stored_before() {
    let fs = SmallFs::mount(1 << 20);
    let dir = fs.dir.path().join("log");
    let v1 = table();
    let log = EmbeddedLog::open(&dir, 1, 256 << 10).unwrap();
    append(&log, 0, (0..10).map(|i| change(&v1, i)).collect())
        .await
        .unwrap();

    // Every free page taken: the schema store's last page has room for part of a
    // schema, not for one of 12 KiB.
    let filler = fs.dir.path().join("filler");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).unwrap();
        while f.write_all(&[0u8; 4096]).is_ok() {}
    }
    let mut wide = (*v1).clone();
    wide.columns.push(rowlog_api::Column {
        name: "c".repeat(12 << 10),
        ty: rowlog_api::ColumnType::Int,
        unsigned: true,
        charset: None,
        charset_name: None,
        generated: false,
        nullable: true,
    });
    let v2 = std::sync::Arc::new(wide);
    let with_column = |i: u64| {
        let mut c = change(&v2, i);
        c.after.as_mut().unwrap().push(rowlog_api::Value::UInt(i));
        c
    };
    let err = append(&log, 0, vec![with_column(10)])
        .await
        .expect_err("no room for the new schema");
    let msg = rowlog::report::error_chain(&err);
    assert!(msg.contains("No space left on device"), "{msg}");
    assert_eq!(log.end_offset(0), 10);

    // Space returns; the same log stores the schema and the change.
    std::fs::remove_file(&filler).unwrap();
    append(&log, 0, vec![with_column(10)]).await.unwrap();
    drop(log);

    let log = EmbeddedLog::open(&dir, 1, 256 << 10).unwrap();
    let got = read_from(&log, 0, 0).await.unwrap();
    assert_eq!(got.len(), 11);
    for (offset, c) in &got[..10] {
        assert_eq!(
            *c,
            change(&v1, *offset),
            "offset {offset} with the first schema"
        );
    }
    assert_eq!(got[10].1, with_column(10));
    assert!(verify(&log).unwrap().problems.is_empty());
}

/// Records keep the schema version they were written with: after an ALTER on the
/// source, old records still decode with the old columns and new ones with the new,
/// also after the log is closed and reopened (the schema store is on disk).
#[tokio::test]
async fn each_record_decodes_with_the_schema_version_it_was_written_with() {
    let dir = tempfile::tempdir().unwrap();
    let v1 = table();
    let mut altered = (*v1).clone();
    altered.columns.push(rowlog_api::Column {
        name: "added".into(),
        ty: rowlog_api::ColumnType::Int,
        unsigned: true,
        charset: None,
        charset_name: None,
        generated: false,
        nullable: true,
    });
    let v2 = std::sync::Arc::new(altered);
    {
        let log = EmbeddedLog::open(dir.path(), 1, 64 << 10).unwrap();
        append(&log, 0, (0..50).map(|i| change(&v1, i)).collect())
            .await
            .unwrap();
        let with_column = (50..100)
            .map(|i| {
                let mut c = change(&v2, i);
                c.after.as_mut().unwrap().push(rowlog_api::Value::UInt(i));
                c
            })
            .collect();
        append(&log, 0, with_column).await.unwrap();
    }
    let log = EmbeddedLog::open(dir.path(), 1, 64 << 10).unwrap();
    let records = read_from(&log, 0, 0).await.unwrap();
    assert_eq!(records.len(), 100);
    for (offset, c) in records {
        let (schema, width) = if offset < 50 { (&v1, 2) } else { (&v2, 3) };
        assert_eq!(*c.table, **schema, "schema of offset {offset}");
        assert_eq!(c.after.as_ref().unwrap().len(), width);
        if offset >= 50 {
            assert_eq!(
                c.after.as_ref().unwrap()[2],
                rowlog_api::Value::UInt(offset)
            );
        }
    }
}

/// A segment roll that cannot finish (here: no inode left for the new segment's index,
/// after its segment file was created) takes its half-made segment back with it: the
/// write fails, the log takes appends again once files can be created, and it opens
/// again (an empty segment left behind started where the old one no longer ended,
/// which made the next open refuse the partition).
#[tokio::test]
async fn a_segment_roll_that_cannot_finish_leaves_no_segment_behind() {
    let fs = SmallFs::mount_with("size=64m,nr_inodes=64");
    let dir = fs.dir.path().join("log");
    let t = table();
    let log = EmbeddedLog::open(&dir, 1, 64 << 10).unwrap();
    append(&log, 0, (0..100).map(|i| change(&t, i)).collect())
        .await
        .unwrap();
    // Take every inode left, then give one back: enough for a segment file, not for
    // its index.
    let mut fillers = Vec::new();
    for i in 0.. {
        let f = fs.dir.path().join(format!("filler-{i}"));
        if std::fs::File::create(&f).is_err() {
            break;
        }
        fillers.push(f);
        assert!(i < 100, "inodes never ran out");
    }
    std::fs::remove_file(fillers.pop().unwrap()).unwrap();

    // ~200 bytes a record: 1,000 records roll past 64 KiB.
    let err = append(&log, 0, (100..1100).map(|i| change(&t, i)).collect())
        .await
        .expect_err("no inode for the new segment's index");
    let msg = rowlog::report::error_chain(&err);
    assert!(
        msg.contains(".index"),
        "the error names the index file: {msg}"
    );
    assert_eq!(log.end_offset(0), 100);
    assert_eq!(log.segments(0).unwrap(), vec![0], "no segment was added");
    // Beside the partition's durable.end, which the tools read.
    let files: Vec<String> = std::fs::read_dir(dir.join("partitions/00000"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name != "durable.end")
        .collect();
    assert_eq!(files.len(), 2, "segment 0 and its index only: {files:?}");

    // Files can be created again: the same log rolls and takes the batch.
    for f in fillers.drain(..) {
        std::fs::remove_file(f).unwrap();
    }
    append(&log, 0, (100..1100).map(|i| change(&t, i)).collect())
        .await
        .unwrap();
    assert!(log.segments(0).unwrap().len() > 1, "it rolled");
    drop(log);
    let log = EmbeddedLog::open(&dir, 1, 64 << 10).unwrap();
    let got = read_from(&log, 0, 0).await.unwrap();
    assert_eq!(got.len(), 1100);
    assert!(got
        .iter()
        .enumerate()
        .all(|(i, (o, c))| *o == i as u64 && *c == change(&t, i as u64)));
}
