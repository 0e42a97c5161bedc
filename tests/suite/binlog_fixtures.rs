//! Binlog files written by real MySQL servers 5.1–8.4 (and one MariaDB), decoded
//! offline by the reader's own decoder: the only evidence available here for what only
//! MySQL 8 writes (v2 rows events, MySQL and tagged GTIDs, compressed transactions,
//! binary JSON with opaque scalars, VECTOR). Every file must decode to change events
//! or stop at a named, deliberate error; values are checked against what
//! `mariadb-binlog --verbose` prints for the same files.

use std::path::PathBuf;
use std::process::Command;

use rowlog::tools::binlog_decode::{decode, DecodeError, Decoded};
use rowlog_mysql_binlog::FileDecodeOptions;
use serde_json::Value as Json;

fn fixtures() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures/mysql-binlogs");
    assert!(
        dir.is_dir(),
        "{} is missing: the fixtures live beside the project (../shared)",
        dir.display()
    );
    dir
}

/// Decodes a fixture; returns its JSON lines and the outcome.
async fn run(file: &str) -> (Vec<Json>, Result<Decoded, DecodeError>) {
    let mut out = Vec::new();
    let result = decode(
        &fixtures().join(file),
        FileDecodeOptions::default(),
        &mut out,
    )
    .await;
    let lines = String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (lines, result)
}

fn changes(lines: &[Json]) -> Vec<&Json> {
    lines.iter().filter(|l| l.get("op").is_some()).collect()
}

enum Expect {
    Decodes {
        changes: u64,
        ddl: u64,
        commits: u64,
    },
    Fails(&'static str),
}
use Expect::*;

const STATEMENT: Expect = Fails("binlog_format=STATEMENT");

/// Every fixture and what it must do. A new fixture without an entry fails the test.
const ALL: &[(&str, Expect)] = &[
    (
        "binlog-invisible-columns.000001",
        Decodes {
            changes: 4,
            ddl: 1,
            commits: 5,
        },
    ),
    ("binlog_56_gtid_reserved_word.000001", STATEMENT),
    ("binlog_savepoint.000001", STATEMENT),
    ("binlog_transaction.000001", STATEMENT),
    (
        "binlog_transaction_previous_GTID_no_tag.000001",
        Decodes {
            changes: 0,
            ddl: 0,
            commits: 1,
        },
    ),
    ("binlog_transaction_with_GTID.000001", STATEMENT),
    (
        "binlog_transaction_with_GTID_TAG.000001",
        Decodes {
            changes: 1,
            ddl: 0,
            commits: 2,
        },
    ),
    ("binlog_transaction_with_anonymous_GTID.000001", STATEMENT),
    (
        "binlog_truncated_event.000001",
        Fails("ends inside an event: 10 bytes from byte 4"),
    ),
    (
        "binlog_truncated_prev_gtid_event.000001",
        Fails("ends inside an event: 9 bytes from byte 120"),
    ),
    ("bug11747887-bin.000003", STATEMENT),
    ("bug16266.000001", STATEMENT),
    (
        "bug27213339-bin.000001",
        Decodes {
            changes: 0,
            ddl: 2,
            commits: 46,
        },
    ),
    (
        "bug32407.001",
        Decodes {
            changes: 2,
            ddl: 1,
            commits: 3,
        },
    ),
    ("bug33029-slave-relay-bin.000001", STATEMENT),
    ("bug40482-bin.000001", Fails("(INCIDENT)")),
    ("corrupt-relay-bin.000624", STATEMENT),
    (
        "json-opaque.binlog",
        Decodes {
            changes: 8,
            ddl: 2,
            commits: 3,
        },
    ),
    ("json.binlog.000001", Fails("(PARTIAL_UPDATE_ROWS)")),
    (
        "mariadb-bin.000001",
        Decodes {
            changes: 2,
            ddl: 0,
            commits: 2,
        },
    ),
    (
        "master-bin.000001",
        Decodes {
            changes: 0,
            ddl: 0,
            commits: 0,
        },
    ),
    (
        "minimal_row_metadata.000001",
        Fails("carries 3 of 5 columns"),
    ),
    (
        "mysql-enum-string-set.000001",
        Decodes {
            changes: 4,
            ddl: 1,
            commits: 5,
        },
    ),
    (
        "mysql_type_bit.000001",
        Decodes {
            changes: 1,
            ddl: 1,
            commits: 3,
        },
    ),
    (
        "rpl_atomic_ddl_rollback_full.000001",
        Decodes {
            changes: 0,
            ddl: 2,
            commits: 4,
        },
    ),
    (
        "rpl_atomic_ddl_rollback_table.000001",
        Decodes {
            changes: 0,
            ddl: 2,
            commits: 2,
        },
    ),
    (
        "rpl_atomic_ddl_rollback_view.000001",
        Decodes {
            changes: 0,
            ddl: 0,
            commits: 2,
        },
    ),
    (
        "rpl_cross_version_default_utf8mb4_collation.000001",
        STATEMENT,
    ),
    // MySQL never logs the hidden generated column behind a functional index.
    (
        "rpl_unfiltered_hidden_gcol.000001",
        Fails("carries 2 of 3 columns"),
    ),
    (
        "slave-relay-bin.000001",
        Decodes {
            changes: 0,
            ddl: 2,
            commits: 2,
        },
    ),
    (
        "time_issue.000001",
        Decodes {
            changes: 1,
            ddl: 0,
            commits: 2,
        },
    ),
    (
        "transaction_compression.000001",
        Decodes {
            changes: 1,
            ddl: 0,
            commits: 2,
        },
    ),
    // NDB logs deletes with the key only, whatever binlog_row_image says.
    ("update-full-row.binlog", Fails("carries 1 of 3 columns")),
    ("update-partial-row.binlog", Fails("carries 2 of 3 columns")),
    (
        "vector.binlog",
        Decodes {
            changes: 10,
            ddl: 7,
            commits: 10,
        },
    ),
    (
        "ver_5_1-wl2325_r.001",
        Fails("LOAD DATA was logged as a statement"),
    ),
    ("ver_5_1-wl2325_s.001", STATEMENT),
    ("ver_5_1_23.001", STATEMENT),
    ("ver_trunk_row_v2.001", STATEMENT),
    ("write-full-row.binlog", Fails("carries 1 of 3 columns")),
    ("write-partial-row.binlog", Fails("carries 2 of 3 columns")),
];

#[tokio::test]
async fn every_fixture_decodes_to_changes_or_stops_at_a_named_error() {
    let mut names: Vec<String> = std::fs::read_dir(fixtures())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != "README.md")
        .collect();
    names.sort();
    let listed: Vec<&str> = ALL.iter().map(|(n, _)| *n).collect();
    assert_eq!(names, listed, "every fixture needs an expectation");
    for (file, expect) in ALL {
        let (lines, result) = run(file).await;
        match (expect, result) {
            (
                Decodes {
                    changes,
                    ddl,
                    commits,
                },
                Ok(n),
            ) => {
                assert_eq!(
                    n,
                    Decoded {
                        changes: *changes,
                        schema_changes: *ddl,
                        commits: *commits
                    },
                    "{file}"
                );
                assert_eq!(self::changes(&lines).len() as u64, *changes, "{file}");
            }
            (Fails(what), Err(e)) => {
                let msg = e.to_string();
                assert!(msg.contains(what), "{file}: {msg}");
                // Named: the message says where (file or binlog position).
                assert!(
                    msg.contains(':') && (msg.contains("at ") || msg.contains("byte")),
                    "{file}: {msg}"
                );
            }
            (Decodes { .. }, Err(e)) => panic!("{file} failed: {e}"),
            (Fails(what), Ok(n)) => panic!("{file} decoded ({n:?}) but should fail with {what}"),
        }
    }
}

#[tokio::test]
async fn mysql8_gtids_tagged_gtids_and_compressed_transactions_decode() {
    let (lines, result) = run("binlog_transaction_with_GTID_TAG.000001").await;
    result.unwrap();
    let c = changes(&lines)[0];
    assert_eq!(
        c["source"]["gtid"],
        "55778904-0299-11f1-b1b8-4ef0c4956feb:mytag:3"
    );
    assert_eq!(c["table"], "test.orders");
    assert_eq!(c["after"]["@2"], "250.00", "DECIMAL keeps its exact digits");

    let (lines, result) = run("mysql_type_bit.000001").await;
    result.unwrap();
    let c = changes(&lines)[0];
    assert_eq!(
        c["source"]["gtid"],
        "fbda2ad0-7c46-11ec-ae30-4ef7efc81a2a:3"
    );
    // BIT(3) b'100' and BIT(8) b'00100000'.
    assert_eq!(
        (c["after"]["a"].as_u64(), c["after"]["c"].as_u64()),
        (Some(4), Some(32))
    );

    // The GTID state each commit leaves: MySQL's executed set, from the file's
    // PREVIOUS_GTIDS plus every GTID since (tagged origins kept apart), MariaDB's
    // position per domain. It is what a resume by GTID sends.
    let last_state = |lines: &[Json]| {
        lines
            .iter()
            .filter_map(|l| l.get("commit"))
            .next_back()
            .map(|c| c["gtid_state"].as_str().unwrap_or("").to_owned())
            .unwrap()
    };
    assert_eq!(
        last_state(&lines),
        "fbda2ad0-7c46-11ec-ae30-4ef7efc81a2a:1-3"
    );
    let (lines, _) = run("binlog_transaction_with_GTID_TAG.000001").await;
    assert_eq!(
        last_state(&lines),
        "55778904-0299-11f1-b1b8-4ef0c4956feb:1-13,55778904-0299-11f1-b1b8-4ef0c4956feb:mytag:1-3"
    );
    let (lines, _) = run("binlog-invisible-columns.000001").await;
    assert_eq!(
        last_state(&lines),
        "97c7af02-4c50-11ec-acd8-681842034964:1-5"
    );
    let (lines, _) = run("mariadb-bin.000001").await;
    assert_eq!(last_state(&lines), "0-1-2");

    // The row inside a zstd-compressed TRANSACTION_PAYLOAD, resuming after the payload.
    let (lines, result) = run("transaction_compression.000001").await;
    result.unwrap();
    let c = changes(&lines)[0];
    assert_eq!(
        (c["table"].as_str(), c["after"]["@0"].as_i64()),
        (Some("test.tb1"), Some(1))
    );
    let commit = lines.iter().find(|l| l.get("commit").is_some()).unwrap();
    assert_eq!(
        commit["commit"]["position"],
        "transaction_compression.000001:431"
    );
}

#[tokio::test]
async fn values_match_what_the_server_wrote() {
    // TIME below -24 h.
    let (lines, _) = run("time_issue.000001").await;
    assert_eq!(changes(&lines)[0]["after"]["@0"], "-507:48:27.000000");

    // ENUM by index, SET by bitmask (mariadb-binlog: @3=1, @4=b'00000101', updated to
    // @3=2, @4=b'00001010'). The table has no primary key: under no_pk = full_row the
    // update is a delete of the old row and an insert of the new one.
    let (lines, _) = run("mysql-enum-string-set.000001").await;
    let ops: Vec<&str> = changes(&lines)
        .iter()
        .map(|c| c["op"].as_str().unwrap())
        .collect();
    assert_eq!(ops, ["insert", "delete", "insert", "delete"]);
    let c = changes(&lines);
    assert_eq!(c[1]["before"]["f3"]["enum_index"], 1);
    assert_eq!(c[1]["before"]["f4"]["set_bits"], 5);
    assert_eq!(c[2]["after"]["f1"], "field1");
    assert_eq!(c[2]["after"]["f3"]["enum_index"], 2);
    assert_eq!(c[2]["after"]["f4"]["set_bits"], 10);

    // MariaDB: GTIDs domain-server-seq, TIMESTAMP as epoch seconds.
    let (lines, _) = run("mariadb-bin.000001").await;
    let c = changes(&lines);
    assert_eq!(c[0]["source"]["gtid"], "0-1-1");
    assert_eq!(c[1]["source"]["gtid"], "0-1-2");
    assert_eq!(c[0]["after"]["created"]["epoch_seconds"], 1650493084);
    assert_eq!(c[0]["after"]["id"], 62);

    // MySQL binary JSON with opaque scalars: a DECIMAL stays a number, DATE/DATETIME/
    // TIME print as MySQL prints them.
    let (lines, _) = run("json-opaque.binlog").await;
    let docs: Vec<String> = changes(&lines)
        .iter()
        .map(|c| c["after"]["a"].to_string())
        .collect();
    for want in [
        r#"{"b":"2012-03-18"}"#,
        r#"{"c":"2012-03-18 11:30:45.000000"}"#,
        r#"{"c":"87:31:46.654321"}"#,
        r#"{"d":123.456}"#,
    ] {
        assert!(docs.iter().any(|d| d == want), "{want} not in {docs:?}");
    }

    // MySQL 9 VECTOR passes through as its bytes (little-endian float32s).
    let (lines, _) = run("vector.binlog").await;
    let last = changes(&lines).last().copied().unwrap();
    assert_eq!(last["after"]["vector_column"]["hex"], "d7a30040d7a300c0");
}

#[test]
fn the_decode_command_prints_json_lines_and_exits_1_naming_the_event_it_cannot_read() {
    let rowlog = |file: &str| {
        Command::new(env!("CARGO_BIN_EXE_rowlog"))
            .args(["binlog", "decode"])
            .arg(fixtures().join(file))
            .output()
            .unwrap()
    };
    let ok = rowlog("mariadb-bin.000001");
    assert!(ok.status.success());
    let stdout = String::from_utf8(ok.stdout).unwrap();
    assert_eq!(
        stdout.lines().count(),
        4,
        "2 changes and 2 commits:\n{stdout}"
    );
    assert!(String::from_utf8_lossy(&ok.stderr).contains("2 changes in 2 transactions"));

    let failed = rowlog("json.binlog.000001");
    assert_eq!(failed.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(
        stderr.contains("PARTIAL_UPDATE_ROWS") && stderr.contains("json.binlog.000001:3980"),
        "{stderr}"
    );
    // What came before the failing event was printed.
    assert!(String::from_utf8_lossy(&failed.stdout).lines().count() > 2);
}
