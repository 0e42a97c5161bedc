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
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

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
