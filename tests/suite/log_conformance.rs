//! The log trait's contract, run against both backends: the embedded on-disk log and
//! Kafka (a real Kafka-protocol broker, `tansu`). Each behaviour is written once, as a
//! function over any [`PartitionedLog`], and called for each backend.

use crate::common;

use std::future::Future;
use std::time::Duration;

use common::records::{append, change, change_at, read_from, resume_at, table};
use rowlog::log::{
    AppendBatch, EmbeddedLog, KafkaLog, LogEntry, LogError, PartitionReader, PartitionedLog,
};
use rowlog::testkit::Tansu;
use rowlog_api::{SchemaChange, SchemaChangeKind, TableName};

const PARTITIONS: u32 = 3;

/// Opens the same log again and again (the previous handle is dropped first).
trait Backend {
    type Log: PartitionedLog + Clone;
    fn open(&self) -> impl Future<Output = Self::Log>;
}

struct Embedded(tempfile::TempDir);

impl Backend for Embedded {
    type Log = EmbeddedLog;
    async fn open(&self) -> EmbeddedLog {
        EmbeddedLog::open(self.0.path(), PARTITIONS, 64 << 10).expect("embedded log opens")
    }
}

fn embedded() -> Embedded {
    Embedded(tempfile::tempdir().unwrap())
}

struct Kafka(Tansu);

impl Backend for Kafka {
    type Log = KafkaLog;
    async fn open(&self) -> KafkaLog {
        KafkaLog::open(&self.0.settings(), "conformance", PARTITIONS)
            .await
            .expect("Kafka log opens")
    }
}

fn kafka() -> Kafka {
    Kafka(Tansu::start().expect("tansu broker starts"))
}

async fn keeps_order_and_reads_from_any_offset<B: Backend>(b: B) {
    let log = b.open().await;
    let t = table();
    // Interleaved appends to two partitions, in three batches.
    for round in 0..3u64 {
        let mut batch = AppendBatch::new(PARTITIONS);
        batch.partitions[0] = (0..100)
            .map(|i| LogEntry::Change(change(&t, round * 100 + i)))
            .collect();
        batch.partitions[2] = (0..40)
            .map(|i| LogEntry::Change(change(&t, 10_000 + round * 40 + i)))
            .collect();
        log.append(batch).await.unwrap();
    }
    assert_eq!(log.end_offset(0), 300);
    assert_eq!(log.end_offset(1), 0);
    assert_eq!(log.end_offset(2), 120);

    let all = read_from(&log, 0, 0).await.unwrap();
    assert_eq!(all.len(), 300);
    for (i, (offset, c)) in all.iter().enumerate() {
        assert_eq!(*offset, i as u64, "offsets are dense from 0");
        assert_eq!(c, &change(&t, i as u64), "record {i} reads back as written");
    }
    let tail = read_from(&log, 0, 250).await.unwrap();
    assert_eq!(tail.first().map(|r| r.0), Some(250));
    assert_eq!(tail.len(), 50);
    assert_eq!(tail[0].1, change(&t, 250));
    let other = read_from(&log, 2, 39).await.unwrap();
    assert_eq!(other.len(), 81);
    assert_eq!(other[0].1, change(&t, 10_000 + 39));
    assert_eq!(
        log.last_change(0),
        Some(change(&t, 299).source.id),
        "the last change of a partition is known"
    );
    assert_eq!(log.last_change(1), None);
    assert_eq!(log.start_offset(0).await.unwrap(), 0);
    // Change i was committed at 1_700_000_000_000 + i: found by time.
    let at = |i: u64| 1_700_000_000_000 + i;
    assert_eq!(log.offset_for_time(0, at(120)).await.unwrap(), 120);
    assert_eq!(log.offset_for_time(0, 0).await.unwrap(), 0);
    assert_eq!(
        log.offset_for_time(0, at(1_000_000)).await.unwrap(),
        300,
        "a time after every record is the end"
    );
    assert_eq!(
        log.offset_for_time(1, at(0)).await.unwrap(),
        0,
        "an empty partition's answer is its end"
    );
}

async fn a_reader_waits_for_the_next_append<B: Backend>(b: B) {
    let log = b.open().await;
    let t = table();
    append(&log, 1, vec![change(&t, 0)]).await.unwrap();
    let mut r = log.reader(1, 1).await.unwrap();
    let waited = tokio::time::timeout(Duration::from_millis(500), r.next_batch(10)).await;
    assert!(waited.is_err(), "nothing to read yet, so the reader waits");
    append(&log, 1, vec![change(&t, 1), change(&t, 2)])
        .await
        .unwrap();
    // The cancelled wait above consumed nothing: the next call gets offset 1 first.
    let mut got = Vec::new();
    while got.len() < 2 {
        let batch = tokio::time::timeout(Duration::from_secs(30), r.next_batch(10))
            .await
            .expect("the appended records arrive")
            .unwrap();
        got.extend(batch);
    }
    assert_eq!(got.iter().map(|r| r.offset).collect::<Vec<_>>(), vec![1, 2]);
    match &got[1].entry {
        LogEntry::Change(c) => assert_eq!(c, &change(&t, 2)),
        other => panic!("expected a change, got {other:?}"),
    }
}

async fn out_of_range_reads_are_refused<B: Backend>(b: B) {
    let log = b.open().await;
    let t = table();
    append(&log, 0, (0..5).map(|i| change(&t, i)).collect())
        .await
        .unwrap();
    match log.reader(0, 6).await {
        Err(LogError::OffsetOutOfRange {
            partition: 0,
            requested: 6,
            end: 5,
            ..
        }) => {}
        Err(e) => panic!("expected offset out of range, got {e}"),
        Ok(_) => panic!("a reader past the end was created"),
    }
    assert!(matches!(
        log.reader(PARTITIONS, 0).await,
        Err(LogError::NoSuchPartition { .. })
    ));
}

async fn commits_offsets_per_consumer<B: Backend>(b: B) {
    let log = b.open().await;
    assert_eq!(log.committed("sink-a", 0).await.unwrap(), None);
    log.commit("sink-a", 0, 5).await.unwrap();
    log.commit("sink-a", 2, 9).await.unwrap();
    log.commit("sink-a", 0, 7).await.unwrap();
    log.commit("sink-b", 0, 1).await.unwrap();
    assert_eq!(log.committed("sink-a", 0).await.unwrap(), Some(7));
    assert_eq!(log.committed("sink-a", 1).await.unwrap(), None);
    assert_eq!(log.committed("sink-a", 2).await.unwrap(), Some(9));
    assert_eq!(log.committed("sink-b", 0).await.unwrap(), Some(1));
    drop(log);
    let log = b.open().await;
    assert_eq!(
        log.committed("sink-a", 0).await.unwrap(),
        Some(7),
        "committed offsets survive a restart"
    );
    assert_eq!(log.committed("sink-b", 0).await.unwrap(), Some(1));
}

async fn resumes_where_it_was_after_a_restart<B: Backend>(b: B) {
    let t = table();
    let (log_id, ends) = {
        let log = b.open().await;
        assert_eq!(
            log.checkpoint().await.unwrap(),
            None,
            "a new log has no checkpoint"
        );
        append(&log, 0, (0..50).map(|i| change(&t, i)).collect())
            .await
            .unwrap();
        append(&log, 1, (50..60).map(|i| change(&t, i)).collect())
            .await
            .unwrap();
        log.store_checkpoint(resume_at("binlog.000001:99999"))
            .await
            .unwrap();
        (
            log.log_id(),
            vec![log.end_offset(0), log.end_offset(1), log.end_offset(2)],
        )
    };
    let log = b.open().await;
    assert_eq!(log.log_id(), log_id, "the log keeps its identity");
    assert_eq!(ends, vec![50, 10, 0]);
    for p in 0..PARTITIONS {
        assert_eq!(log.end_offset(p), ends[p as usize], "partition {p} end");
    }
    let cp = log.checkpoint().await.unwrap().expect("checkpoint stored");
    assert_eq!(cp.resume, resume_at("binlog.000001:99999"));
    assert_eq!(cp.ends, ends);
    assert_eq!(log.last_change(0), Some(change(&t, 49).source.id));
    assert_eq!(log.last_change(1), Some(change(&t, 59).source.id));
    // Appends go on densely after the restart, and everything reads back.
    append(&log, 0, (60..70).map(|i| change(&t, i)).collect())
        .await
        .unwrap();
    let all = read_from(&log, 0, 0).await.unwrap();
    assert_eq!(all.len(), 60);
    assert_eq!(all[55], (55, change(&t, 65)));
}

async fn schema_changes_keep_their_place<B: Backend>(b: B) {
    let log = b.open().await;
    let t = table();
    let ddl = std::sync::Arc::new(SchemaChange {
        statement: "ALTER TABLE t ADD COLUMN c INT".into(),
        kind: SchemaChangeKind::AlterTable,
        database: None,
        db: "app".into(),
        tables: vec![TableName::new("app", "t")],
        source: change(&t, 1).source,
    });
    let mut batch = AppendBatch::new(PARTITIONS);
    for p in 0..PARTITIONS as usize {
        batch.partitions[p] = vec![
            LogEntry::Change(change(&t, 0)),
            LogEntry::Schema(ddl.clone()),
            LogEntry::Change(change(&t, 2)),
        ];
    }
    log.append(batch).await.unwrap();
    for p in 0..PARTITIONS {
        let mut r = log.reader(p, 0).await.unwrap();
        let mut got = Vec::new();
        while got.len() < 3 {
            got.extend(r.next_batch(10).await.unwrap());
        }
        match &got[1].entry {
            LogEntry::Schema(s) => assert_eq!(s.as_ref(), ddl.as_ref()),
            other => panic!("partition {p}: expected the schema change second, got {other:?}"),
        }
        assert!(matches!(&got[2].entry, LogEntry::Change(c) if *c == change(&t, 2)));
    }
}

/// Commit times in a partition need not rise: a binlog stamps a transaction with the
/// start of its statement, so a long one committed after short ones carries an older
/// time. A seek by time finds the first record committed at or after it all the same.
/// Before, the Kafka log answered "the end" whenever its last record was older than
/// the time asked, skipping the newer records before it.
async fn a_seek_by_time_finds_records_whose_commit_times_go_back<B: Backend>(b: B) {
    let log = b.open().await;
    let t = table();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let mut batch = AppendBatch::new(PARTITIONS);
    batch.partitions[0] = [60_000, 10_000, 50_000]
        .iter()
        .enumerate()
        .map(|(i, ago)| LogEntry::Change(change_at(&t, i as u64, 10, now - ago)))
        .collect();
    log.append(batch).await.unwrap();
    assert_eq!(log.offset_for_time(0, now - 30_000).await.unwrap(), 1);
    assert_eq!(log.offset_for_time(0, now - 55_000).await.unwrap(), 1);
    assert_eq!(log.offset_for_time(0, now - 70_000).await.unwrap(), 0);
    assert_eq!(log.offset_for_time(0, now - 5_000).await.unwrap(), 3);
}

macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod embedded_log {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::embedded()).await
                }
            )*
        }
        mod kafka_log {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::kafka()).await
                }
            )*
        }
    };
}

on_both_backends!(
    keeps_order_and_reads_from_any_offset,
    a_reader_waits_for_the_next_append,
    out_of_range_reads_are_refused,
    commits_offsets_per_consumer,
    resumes_where_it_was_after_a_restart,
    schema_changes_keep_their_place,
    a_seek_by_time_finds_records_whose_commit_times_go_back,
);
