//! Property: whatever sequence of appends, reads, segment rolls, reopens, torn tails
//! and truncations happens, what the log acknowledged reads back identical and in
//! order — and after a truncation of acknowledged bytes (a damaged disk) the log is a
//! prefix of what was written, never garbage.

use crate::common;

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;

use common::records::{append, change_at, read_from, table};
use proptest::prelude::*;
use rowlog::log::{frame, verify, EmbeddedLog, PartitionedLog};
use rowlog_api::ChangeEvent;

const SEGMENT_BYTES: u64 = 4096;

#[derive(Debug, Clone)]
enum Op {
    /// Append one batch with these payload sizes.
    Append(Vec<usize>),
    Reopen,
    /// A crash mid-append: a strict prefix (this many bytes) of a frame lands at the end.
    TornTail(usize),
    /// A crash leaving random bytes after the last whole record.
    GarbageTail(Vec<u8>),
    /// Damage: the active segment cut at this fraction of its length.
    Truncate(f64),
    /// Read from this fraction of the log.
    Read(f64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => prop::collection::vec(0usize..600, 1..40).prop_map(Op::Append),
        1 => Just(Op::Reopen),
        1 => (1usize..300).prop_map(Op::TornTail),
        1 => prop::collection::vec(any::<u8>(), 1..100).prop_map(Op::GarbageTail),
        1 => (0.0f64..1.0).prop_map(Op::Truncate),
        2 => (0.0f64..=1.0).prop_map(Op::Read),
    ]
}

fn active_segment(dir: &Path) -> std::path::PathBuf {
    std::fs::read_dir(dir.join("partitions/00000"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .max()
        .unwrap()
}

async fn run(ops: Vec<Op>) {
    let dir = tempfile::tempdir().unwrap();
    let t = table();
    let mut model: Vec<ChangeEvent> = Vec::new();
    let mut log = Some(EmbeddedLog::open(dir.path(), 1, SEGMENT_BYTES).unwrap());
    let mut next_id = 0u64;
    for op in ops {
        match op {
            Op::Append(sizes) => {
                let batch: Vec<ChangeEvent> = sizes
                    .iter()
                    .map(|&n| {
                        next_id += 1;
                        change_at(&t, next_id, n, next_id * 7)
                    })
                    .collect();
                append(log.as_ref().unwrap(), 0, batch.clone())
                    .await
                    .unwrap();
                model.extend(batch);
            }
            Op::Reopen => {
                drop(log.take());
                log = Some(EmbeddedLog::open(dir.path(), 1, SEGMENT_BYTES).unwrap());
            }
            Op::TornTail(n) => {
                drop(log.take());
                let mut frame_bytes = Vec::new();
                frame::encode(model.len() as u64, 1, &vec![0xAB; 400], &mut frame_bytes);
                let cut = n.min(frame_bytes.len() - 1);
                OpenOptions::new()
                    .append(true)
                    .open(active_segment(dir.path()))
                    .unwrap()
                    .write_all(&frame_bytes[..cut])
                    .unwrap();
                log = Some(EmbeddedLog::open(dir.path(), 1, SEGMENT_BYTES).unwrap());
            }
            Op::GarbageTail(bytes) => {
                drop(log.take());
                OpenOptions::new()
                    .append(true)
                    .open(active_segment(dir.path()))
                    .unwrap()
                    .write_all(&bytes)
                    .unwrap();
                log = Some(EmbeddedLog::open(dir.path(), 1, SEGMENT_BYTES).unwrap());
            }
            Op::Truncate(fraction) => {
                drop(log.take());
                let seg = active_segment(dir.path());
                let len = std::fs::metadata(&seg).unwrap().len();
                OpenOptions::new()
                    .write(true)
                    .open(&seg)
                    .unwrap()
                    .set_len((len as f64 * fraction) as u64)
                    .unwrap();
                let reopened = EmbeddedLog::open(dir.path(), 1, SEGMENT_BYTES).unwrap();
                let end = reopened.end_offset(0) as usize;
                assert!(end <= model.len(), "records appeared from nowhere");
                model.truncate(end);
                log = Some(reopened);
            }
            Op::Read(fraction) => {
                let l = log.as_ref().unwrap();
                let from = (model.len() as f64 * fraction) as u64;
                let got = read_from(l, 0, from).await.unwrap();
                let expected = &model[from as usize..];
                assert_eq!(got.len(), expected.len());
                for (i, ((offset, c), want)) in got.iter().zip(expected).enumerate() {
                    assert_eq!(*offset, from + i as u64);
                    assert_eq!(c, want, "record at offset {offset} differs");
                }
            }
        }
        let l = log.as_ref().unwrap();
        assert_eq!(
            l.end_offset(0),
            model.len() as u64,
            "acknowledged records lost or invented"
        );
        assert_eq!(l.last_change(0), model.last().map(|c| c.source.id.clone()));
    }
    let l = log.as_ref().unwrap();
    let got = read_from(l, 0, 0).await.unwrap();
    assert_eq!(got.into_iter().map(|(_, c)| c).collect::<Vec<_>>(), model);
    let report = verify(l).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, failure_persistence: crate::regressions_beside_this_file(), ..ProptestConfig::default() })]

    #[test]
    fn acknowledged_records_read_back_identical_and_in_order(ops in prop::collection::vec(op(), 1..50)) {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(run(ops));
    }
}
