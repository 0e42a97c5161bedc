//! The embedded log keeps what it acknowledged and recovers from what a crash leaves:
//! a torn tail is cut back to the last whole record, a damaged sealed segment is a
//! hard error naming the file and byte, and missing acknowledged records are refused.

use crate::common;

use std::fs::OpenOptions;
use std::path::Path;

use common::records::{change, read_from, table};
use rowlog::log::{EmbeddedLog, LogError, PartitionedLog};
use rowlog_api::ChangeEvent;

async fn append(log: &EmbeddedLog, changes: Vec<ChangeEvent>) {
    common::records::append(log, 0, changes).await.unwrap();
}

async fn read_all(log: &EmbeddedLog) -> Result<Vec<ChangeEvent>, LogError> {
    Ok(read_from(log, 0, 0)
        .await?
        .into_iter()
        .map(|(_, c)| c)
        .collect())
}

fn segments(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir.join("partitions/00000"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn a_torn_tail_is_cut_back_to_the_last_whole_record() {
    let dir = tempfile::tempdir().unwrap();
    let t = table();
    let written: Vec<ChangeEvent> = (0..10).map(|i| change(&t, i)).collect();
    {
        let log = EmbeddedLog::open(dir.path(), 1, 1 << 20).unwrap();
        append(&log, written.clone()).await;
    }
    // A crash in the middle of writing the last record.
    let seg = segments(dir.path()).pop().unwrap();
    let len = std::fs::metadata(&seg).unwrap().len();
    OpenOptions::new()
        .write(true)
        .open(&seg)
        .unwrap()
        .set_len(len - 37)
        .unwrap();

    let log = EmbeddedLog::open(dir.path(), 1, 1 << 20).unwrap();
    assert_eq!(log.end_offset(0), 9, "the torn record is dropped");
    assert_eq!(
        read_all(&log).await.unwrap(),
        written[..9].to_vec(),
        "every whole record reads back identical"
    );
    assert_eq!(
        log.last_change(0),
        Some(written[8].source.id.clone()),
        "de-duplication resumes after the last whole record"
    );
    // Appending continues at the recovered end.
    append(&log, vec![change(&t, 9)]).await;
    assert_eq!(read_all(&log).await.unwrap(), written);
}

#[tokio::test]
async fn a_damaged_sealed_segment_is_a_hard_error_naming_file_and_byte() {
    let dir = tempfile::tempdir().unwrap();
    let t = table();
    {
        let log = EmbeddedLog::open(dir.path(), 1, 1 << 16).unwrap();
        for chunk in 0..5 {
            append(
                &log,
                (chunk * 200..chunk * 200 + 200)
                    .map(|i| change(&t, i))
                    .collect(),
            )
            .await;
        }
        assert!(log.segments(0).unwrap().len() > 2, "segments rolled");
    }
    let first = segments(dir.path()).into_iter().next().unwrap();
    let mut bytes = std::fs::read(&first).unwrap();
    bytes[5000] ^= 0x10;
    std::fs::write(&first, bytes).unwrap();

    let log = EmbeddedLog::open(dir.path(), 1, 1 << 16).unwrap();
    let err = read_all(&log).await.unwrap_err();
    assert!(matches!(err, LogError::Corrupt { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains(&first.display().to_string()) && msg.contains("byte"),
        "{msg}"
    );
}

/// A record of the active segment whose bytes are all there but fail their CRC, with
/// fsynced records after it, is damage, not a torn write: the open fails naming the
/// file and byte, and says how to give the records up. Before, recovery cut the
/// segment there with only a warning, dropping five fsynced records.
#[tokio::test]
async fn a_damaged_record_below_the_durable_end_of_the_active_segment_is_not_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let t = table();
    let written: Vec<ChangeEvent> = (0..10).map(|i| change(&t, i)).collect();
    {
        let log = EmbeddedLog::open(dir.path(), 1, 1 << 20).unwrap();
        append(&log, written.clone()).await;
    }
    let seg = segments(dir.path()).pop().unwrap();
    let mut bytes = std::fs::read(&seg).unwrap();
    // Where record 5 starts, walking the frames.
    let mut at = 0;
    for _ in 0..5 {
        match rowlog::log::frame::decode(&bytes[at..]) {
            rowlog::log::frame::Frame::Valid { len, .. } => at += len,
            other => panic!("record before 5 not whole: {other:?}"),
        }
    }
    bytes[at + rowlog::log::frame::HEADER_LEN + 3] ^= 0x01;
    std::fs::write(&seg, &bytes).unwrap();

    let err = EmbeddedLog::open(dir.path(), 1, 1 << 20)
        .err()
        .expect("opened a log whose fsynced records are damaged");
    match &err {
        LogError::Corrupt { path, byte, .. } => {
            assert_eq!(path, &seg);
            assert_eq!(*byte, at as u64);
        }
        other => panic!("unexpected error {other}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains("CRC mismatch") && msg.contains("truncate -s"),
        "{msg}"
    );
    assert_eq!(
        std::fs::metadata(&seg).unwrap().len(),
        bytes.len() as u64,
        "the segment was left as it was"
    );

    // The operator gives the damaged records up, as the error says.
    OpenOptions::new()
        .write(true)
        .open(&seg)
        .unwrap()
        .set_len(at as u64)
        .unwrap();
    let log = EmbeddedLog::open(dir.path(), 1, 1 << 20).unwrap();
    assert_eq!(log.end_offset(0), 5);
    assert_eq!(read_all(&log).await.unwrap(), written[..5].to_vec());
}

#[tokio::test]
async fn records_acknowledged_in_a_checkpoint_must_be_there_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let t = table();
    {
        let log = EmbeddedLog::open(dir.path(), 1, 1 << 20).unwrap();
        append(&log, (0..10).map(|i| change(&t, i)).collect()).await;
        log.store_checkpoint(common::records::resume_at("binlog.000001:5000"))
            .await
            .unwrap();
    }
    // Lose durable records (a restored backup, a damaged disk).
    let seg = segments(dir.path()).pop().unwrap();
    let len = std::fs::metadata(&seg).unwrap().len();
    OpenOptions::new()
        .write(true)
        .open(&seg)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    match EmbeddedLog::open(dir.path(), 1, 1 << 20) {
        Err(LogError::LostAcknowledged {
            partition: 0,
            expected: 10,
            found,
        }) => assert!(found < 10),
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("opened a log that lost acknowledged records"),
    }
}

#[tokio::test]
async fn reopening_with_another_partition_count_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    drop(EmbeddedLog::open(dir.path(), 4, 1 << 20).unwrap());
    let err = EmbeddedLog::open(dir.path(), 8, 1 << 20)
        .err()
        .expect("must refuse");
    assert!(
        err.to_string().contains("log.partitions is 8")
            && err.to_string().contains("created with 4"),
        "{err}"
    );
}

#[tokio::test]
async fn a_second_writer_is_locked_out() {
    let dir = tempfile::tempdir().unwrap();
    let _first = EmbeddedLog::open(dir.path(), 1, 1 << 20).unwrap();
    assert!(matches!(
        EmbeddedLog::open(dir.path(), 1, 1 << 20),
        Err(LogError::Locked { .. })
    ));
}

#[tokio::test]
async fn consumer_offsets_survive_reopen_and_damage_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = EmbeddedLog::open(dir.path(), 2, 1 << 20).unwrap();
        assert_eq!(log.committed("sink", 1).await.unwrap(), None);
        log.commit("sink", 1, 42).await.unwrap();
    }
    let log = EmbeddedLog::open(dir.path(), 2, 1 << 20).unwrap();
    assert_eq!(log.committed("sink", 1).await.unwrap(), Some(42));
    assert_eq!(log.committed("sink", 0).await.unwrap(), None);
    let path = dir.path().join("consumers/sink/00001.offset");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();
    let err = log.committed("sink", 1).await.unwrap_err();
    assert!(err.to_string().contains("00001.offset"), "{err}");
}
