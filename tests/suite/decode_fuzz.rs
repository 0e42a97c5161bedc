//! Fuzz smoke: arbitrary bytes fed to every decoder that reads untrusted input —
//! log frames, record payloads, the schema store, MariaDB's event bodies — never
//! panic and never allocate beyond what the input justifies.

use std::sync::Arc;

use proptest::prelude::*;
use rowlog::log::{frame, record};
use rowlog_api::{Column, ColumnType, TableName, TableSchema};
use rowlog_mysql_binlog::mariadb;

fn schema() -> Arc<TableSchema> {
    let col = |name: &str| Column {
        name: name.into(),
        ty: ColumnType::BigInt,
        unsigned: false,
        charset: None,
        charset_name: None,
        generated: false,
        nullable: true,
    };
    Arc::new(TableSchema {
        name: TableName::new("d", "t"),
        columns: vec![col("a"), col("b")],
        primary_key: vec![0],
        unique_keys: vec![],
        keyless: false,
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: crate::regressions_beside_this_file(), ..ProptestConfig::default() })]

    #[test]
    fn frames_decode_or_fail_cleanly(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        match frame::decode(&bytes) {
            frame::Frame::Valid { len, payload, .. } => {
                prop_assert!(len <= bytes.len());
                prop_assert_eq!(payload.len() + frame::HEADER_LEN, len);
            }
            frame::Frame::Torn { have, need } => prop_assert!(have < need),
            frame::Frame::Corrupt { .. } => {}
        }
    }

    #[test]
    fn record_payloads_decode_or_fail_cleanly(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        // Version byte 1 then arbitrary postcard: lengths are bounded by the input.
        let mut payload = vec![1u8];
        payload.extend_from_slice(&bytes);
        let _ = record::decode(&payload, |_| None);
        // With a schema found, images must still match its columns or be refused.
        if let Ok(rowlog::log::LogEntry::Change(c)) = record::decode(&payload, |_| Some(schema())) {
            prop_assert!(c.before.iter().chain(c.after.iter()).all(|img| img.len() == 2));
        }
        let _ = record::decode_source(&payload);
        let _ = record::decode(&bytes, |_| None);
    }

    #[test]
    fn mariadb_event_bodies_decode_or_fail_cleanly(bytes in prop::collection::vec(any::<u8>(), 0..256), server in any::<u32>()) {
        let _ = mariadb::parse_gtid(&bytes, server);
        if let Some(list) = mariadb::parse_gtid_list(&bytes) {
            prop_assert!(list.len() * 16 + 4 <= bytes.len());
        }
        let _ = mariadb::parse_binlog_checkpoint(&bytes);
    }
}

#[test]
fn a_huge_declared_length_is_not_allocated() {
    // A frame header claiming 4 GiB, and a postcard vector claiming 2^60 elements.
    let mut frame_bytes = vec![0xff, 0xff, 0xff, 0xff];
    frame_bytes.extend_from_slice(&[0u8; 20]);
    assert!(matches!(
        frame::decode(&frame_bytes),
        frame::Frame::Corrupt { .. }
    ));
    let payload = [
        1u8, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x0f,
    ];
    assert!(record::decode(&payload, |_| None).is_err());
}

/// A fixture binlog with one byte changed inside one event, the event's CRC32 footer
/// recomputed so the change reaches the decoders behind the checksum.
fn mutated_binlog(file: &str, event: usize, at: usize, xor: u8) -> Option<Vec<u8>> {
    let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/fixtures/mysql-binlogs")
        .join(file);
    let mut bytes = std::fs::read(path).ok()?;
    // Walk the events: 4-byte magic, then each event's size at header offset 9.
    let mut start = 4;
    let mut n = 0;
    while start + 19 <= bytes.len() {
        let size = u32::from_le_bytes(bytes[start + 9..start + 13].try_into().ok()?) as usize;
        if size < 23 || start + size > bytes.len() {
            return None;
        }
        if n == event {
            // Inside the event after its header, never in the footer.
            let body = size - 19 - 4;
            if body == 0 {
                return None;
            }
            bytes[start + 19 + at % body] ^= xor.max(1);
            let crc = crc32fast::hash(&bytes[start..start + size - 4]);
            bytes[start + size - 4..start + size].copy_from_slice(&crc.to_le_bytes());
            return Some(bytes);
        }
        start += size;
        n += 1;
    }
    None
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, failure_persistence: crate::regressions_beside_this_file(), ..ProptestConfig::default() })]

    /// The whole binlog decoding path (table maps, rows events of every type, GTIDs,
    /// queries, compressed payloads) on damaged input: a change event or a named
    /// error, never a panic.
    #[test]
    fn damaged_binlog_events_decode_or_fail_cleanly(
        file in prop::sample::select(vec![
            "mariadb-bin.000001",
            "json.binlog.000001",
            "mysql-enum-string-set.000001",
            "binlog-invisible-columns.000001",
            "transaction_compression.000001",
            "vector.binlog",
            "json-opaque.binlog",
        ]),
        event in 1usize..40,
        at in any::<usize>(),
        xor in any::<u8>(),
    ) {
        let Some(bytes) = mutated_binlog(file, event, at, xor) else {
            return Ok(());
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(file);
        std::fs::write(&path, bytes).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(async {
            let Ok(mut reader) = rowlog_mysql_binlog::BinlogFileReader::open(
                &path,
                rowlog_mysql_binlog::FileDecodeOptions::default(),
            ) else {
                return;
            };
            for _ in 0..10_000 {
                match reader.next_event().await {
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => break,
                }
            }
        });
    }
}
