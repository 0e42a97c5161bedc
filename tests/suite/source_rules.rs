//! What the source reads and refuses: table filters, tables without a primary key,
//! and a source without full row metadata.

use crate::common;

use std::time::Duration;

use common::{Daemon, InProcess, Pair};
use mysql_async::prelude::Queryable;
use rowlog::testkit::{MariaDb, ServerOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn excluded_tables_are_not_replicated() {
    let pair = Pair::start().await;
    pair.create(&[
        "CREATE DATABASE app",
        "CREATE TABLE app.kept (id INT PRIMARY KEY, v INT)",
        "CREATE TABLE app.skipped (id INT PRIMARY KEY, v INT)",
        "CREATE TABLE app.nokey (v INT)",
    ])
    .await;
    let mut cfg = pair.config(2, 2);
    cfg.source.exclude.push("app.skip*".into());
    cfg.source.exclude.push("app.nokey".into());
    let rowlog = InProcess::start(cfg);
    pair.src
        .exec(&[
            "INSERT INTO app.skipped VALUES (1, 1)",
            "INSERT INTO app.nokey VALUES (1)",
            "INSERT INTO app.kept VALUES (1, 1), (2, 2)",
        ])
        .await
        .unwrap();
    pair.assert_converges(&[("app.kept", "id")], Duration::from_secs(30))
        .await;
    let mut d = pair.dst.conn().await.unwrap();
    let skipped: u64 = d
        .query_first("SELECT COUNT(*) FROM app.skipped")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(skipped, 0);
    rowlog.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_without_a_primary_key_stops_the_pipeline_naming_it() {
    let pair = Pair::start().await;
    pair.create(&["CREATE DATABASE app", "CREATE TABLE app.nokey (v INT)"])
        .await;
    let config = pair.write_config(2, 2);
    let mut daemon = Daemon::spawn(&config, pair.dir.path().join("rowlog.log"));
    tokio::time::sleep(Duration::from_secs(1)).await;
    pair.src
        .exec(&["INSERT INTO app.nokey VALUES (1)"])
        .await
        .unwrap();
    let mut exited = false;
    for _ in 0..100 {
        if !daemon.is_running() {
            exited = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = daemon.log();
    assert!(exited, "rowlog kept running; log:\n{log}");
    assert!(
        log.contains("table app.nokey has no primary key") && log.contains("source.exclude"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_full_row_metadata_names_signedness_and_binary_columns_come_from_information_schema(
) {
    let mut opts = ServerOptions::source(21);
    opts.extra_args.push("--binlog-row-metadata=NO_LOG".into());
    let (src, dst) = tokio::join!(
        MariaDb::start(opts),
        MariaDb::start(ServerOptions::destination(22))
    );
    let pair = Pair::of(src.unwrap(), dst.unwrap());
    pair.create(&[
        "CREATE DATABASE app",
        "CREATE TABLE app.t (v TINYINT UNSIGNED, id INT UNSIGNED NOT NULL, w INT, PRIMARY KEY (id))",
        // Binary columns: only information_schema says they have no character set.
        "CREATE TABLE app.b (id BINARY(4) PRIMARY KEY, u UUID, i INET6, \
           s VARCHAR(10) CHARACTER SET latin1, vb VARBINARY(8))",
        // One column of every other type family: the binlog's types are checked
        // against information_schema's, and none of these may be taken for a change.
        "CREATE TABLE app.f (id SMALLINT PRIMARY KEY, mi MEDIUMINT, bi BIGINT, fl FLOAT, \
           db DOUBLE, de DECIMAL(12,3), da DATE, dt DATETIME(6), ts TIMESTAMP(3) NULL, \
           ti TIME, y YEAR, bt BIT(5), c CHAR(3), e ENUM('x','y'), st SET('p','q'), \
           tx TEXT, bl BLOB, j JSON, g POINT, i4 INET4)",
    ])
    .await;
    let rowlog = InProcess::start(pair.config(2, 2));
    pair.src
        .exec(&[
            "INSERT INTO app.t VALUES (255, 4294967295, -1), (0, 1, 2)",
            "UPDATE app.t SET v = 200 WHERE id = 1",
            // Keys whose stored value ends in the zero padding the binlog leaves off.
            "INSERT INTO app.b VALUES \
               (X'61', '123e4567-e89b-12d3-a456-426655440000', '::1', 'café', X'00ff'), \
               (X'6200', 'ffffffff-0000-0000-0000-000000000001', '::ffff:10.0.0.1', 'x', X'00'), \
               (X'63', NULL, NULL, NULL, NULL)",
            "UPDATE app.b SET s = 'neu', u = '00000000-0000-0000-0000-0000000000ff' WHERE id = X'61000000'",
            "DELETE FROM app.b WHERE id = X'62000000'",
            "INSERT INTO app.f VALUES (1, -8388608, -9223372036854775808, 1.5, -2.25, \
               123456789.125, '2026-11-28', '2026-11-28 12:00:00.123456', \
               '2026-11-28 12:00:00.125', '-838:59:59', 2155, b'10101', 'abc', 'y', 'p,q', \
               'text', X'00ff', '{\"k\": [1, 2]}', POINT(1, 2), '10.0.0.1')",
            "UPDATE app.f SET tx = 'changed' WHERE id = 1",
        ])
        .await
        .unwrap();
    pair.assert_converges(
        &[("app.t", "id"), ("app.b", "id"), ("app.f", "id")],
        Duration::from_secs(30),
    )
    .await;
    let mut d = pair.dst.conn().await.unwrap();
    let rows: Vec<(Vec<u8>, Option<String>, Option<String>)> = d
        .query("SELECT id, CAST(u AS CHAR), s FROM app.b ORDER BY id")
        .await
        .unwrap();
    assert_eq!(
        rows,
        [
            (
                b"a\0\0\0".to_vec(),
                Some("00000000-0000-0000-0000-0000000000ff".to_string()),
                Some("neu".to_string())
            ),
            (b"c\0\0\0".to_vec(), None, None),
        ],
        "the update and the delete found their rows by the padded key"
    );
    rowlog.stop().await;
}

/// Without FULL metadata the names come from information_schema as it is now. A
/// column moved since the events were written (here while rowlog was stopped) would
/// give their values another column's name: a number stored as a code string would
/// silently swap with the count beside it. The reader sees that the binlog's types do
/// not fit the columns listed now and stops, naming table, column and position.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_full_row_metadata_a_column_moved_since_the_events_stops_the_reader() {
    let mut opts = ServerOptions::source(23);
    opts.extra_args.push("--binlog-row-metadata=NO_LOG".into());
    let (src, dst) = tokio::join!(
        MariaDb::start(opts),
        MariaDb::start(ServerOptions::destination(24))
    );
    let pair = Pair::of(src.unwrap(), dst.unwrap());
    pair.create(&[
        "CREATE DATABASE app",
        "CREATE TABLE app.r (id INT PRIMARY KEY, code VARCHAR(10), n INT)",
    ])
    .await;
    pair.src
        .exec(&[
            "INSERT INTO app.r VALUES (1, '42', 7)",
            "ALTER TABLE app.r MODIFY n INT AFTER id",
            "INSERT INTO app.r VALUES (2, 8, '43')",
        ])
        .await
        .unwrap();
    let rowlog = InProcess::start(pair.config(2, 2));
    let error = rowlog
        .stopped_error(
            Duration::from_secs(60),
            "rowlog kept running on names information_schema gave a moved column",
        )
        .await;
    assert!(
        error.contains("table app.r at ")
            && error.contains("column 2 is VarString")
            && error.contains("`n` int(11)")
            && error.contains("binlog_row_metadata=FULL"),
        "{error}"
    );
    let mut d = pair.dst.conn().await.unwrap();
    let rows: Vec<(i32, Option<String>, Option<i32>)> =
        d.query("SELECT id, code, n FROM app.r").await.unwrap();
    assert!(
        rows.is_empty(),
        "no row applied under wrong names: {rows:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_pk_skip_a_keyless_table_is_left_out_and_the_rest_replicates() {
    let pair = Pair::start().await;
    pair.create(&[
        "CREATE DATABASE app",
        "CREATE TABLE app.kept (id INT PRIMARY KEY, v INT)",
        "CREATE TABLE app.nokey (v INT)",
    ])
    .await;
    let mut cfg = pair.config(2, 2);
    cfg.source.no_pk = rowlog_mysql_binlog::NoPrimaryKey::Skip;
    let rowlog = InProcess::start(cfg);
    pair.src
        .exec(&[
            "INSERT INTO app.nokey VALUES (1), (2)",
            "INSERT INTO app.kept VALUES (1, 1), (2, 2)",
        ])
        .await
        .unwrap();
    pair.assert_converges(&[("app.kept", "id")], Duration::from_secs(30))
        .await;
    let mut d = pair.dst.conn().await.unwrap();
    let n: u64 = d
        .query_first("SELECT COUNT(*) FROM app.nokey")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n, 0, "the keyless table is skipped");
    rowlog.stop().await;
}

/// Keyless rows are identified by their whole value: duplicates stay duplicates, a
/// delete removes one of several equal rows, NULLs match, updates move one row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_pk_full_row_keyless_duplicates_nulls_updates_and_deletes_converge() {
    let pair = Pair::start().await;
    pair.create(&[
        "CREATE DATABASE app",
        "CREATE TABLE app.k (a INT, b VARCHAR(20) NULL, c BLOB NULL)",
    ])
    .await;
    let mut cfg = pair.config(2, 4);
    cfg.source.no_pk = rowlog_mysql_binlog::NoPrimaryKey::FullRow;
    let rowlog = InProcess::start(cfg);
    pair.src
        .exec(&[
            "INSERT INTO app.k VALUES (1, 'x', 'blob'), (1, 'x', 'blob'), (1, 'x', 'blob')",
            "INSERT INTO app.k VALUES (2, NULL, NULL), (2, NULL, NULL), (3, 'y', NULL)",
            "INSERT INTO app.k SELECT seq % 50, CONCAT('r', seq % 7), NULL FROM app.seq_1_to_500",
            // One of three equal rows goes; NULL-valued rows are matched with <=>.
            "DELETE FROM app.k WHERE a = 1 LIMIT 1",
            "DELETE FROM app.k WHERE a = 2 AND b IS NULL LIMIT 1",
            "UPDATE app.k SET b = 'changed' WHERE a = 3",
            "UPDATE app.k SET c = 'now equal' WHERE a = 10 LIMIT 2",
            "DELETE FROM app.k WHERE a = 20",
        ])
        .await
        .unwrap();
    let diffs = pair
        .assert_converges(&[("app.k", "a, b, c")], Duration::from_secs(30))
        .await;
    assert_eq!(diffs[0].source_rows, 506 - 1 - 1 - 10);
    rowlog.stop().await;
}

/// One-phase XA is an ordinary commit and replicates. A statement-based change hidden
/// behind a leading comment is still recognised as one, and stops the pipeline naming
/// it: read as anything else it would be skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_phase_xa_replicates_and_a_commented_statement_based_change_stops_the_pipeline() {
    let (pair, rowlog) = running_on_app_t().await;
    pair.src
        .exec(&[
            "XA START 'one'",
            "INSERT INTO app.t VALUES (1, 1), (2, 2)",
            "XA END 'one'",
            "XA COMMIT 'one' ONE PHASE",
        ])
        .await
        .unwrap();
    pair.assert_converges(&[("app.t", "id")], Duration::from_secs(60))
        .await;
    pair.src
        .exec(&[
            "SET SESSION binlog_format = 'STATEMENT'",
            "/* from the app */ UPDATE app.t SET v = v + 1",
        ])
        .await
        .unwrap();
    let error = rowlog
        .stopped_error(Duration::from_secs(20), "rowlog kept running")
        .await;
    assert!(
        error.contains("statement-based change") && error.contains("/* from the app */ UPDATE"),
        "{error}"
    );
    let mut d = pair.dst.conn().await.unwrap();
    let v: Option<i64> = d
        .query_first("SELECT SUM(v) FROM app.t")
        .await
        .unwrap()
        .flatten();
    assert_eq!(
        v,
        Some(3),
        "nothing of the statement reached the destination"
    );
}

/// A prepared XA transaction may still roll back: its rows are not applied at XA
/// PREPARE; the pipeline stops there, naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prepared_xa_transaction_stops_the_pipeline_before_its_rows_are_applied() {
    let (pair, rowlog) = running_on_app_t().await;
    pair.src
        .exec(&[
            "XA START 'two'",
            "INSERT INTO app.t VALUES (1, 1)",
            "XA END 'two'",
            "XA PREPARE 'two'",
            "XA ROLLBACK 'two'",
        ])
        .await
        .unwrap();
    let error = rowlog
        .stopped_error(Duration::from_secs(20), "rowlog kept running")
        .await;
    assert!(error.contains("XA PREPARE at binlog."), "{error}");
    let mut d = pair.dst.conn().await.unwrap();
    let n: Option<i64> = d.query_first("SELECT COUNT(*) FROM app.t").await.unwrap();
    assert_eq!(n, Some(0), "the rolled-back rows were not applied");
}

/// A source and destination with `app.t (id, v)`, and rowlog running on them.
async fn running_on_app_t() -> (Pair, InProcess) {
    let pair = Pair::start().await;
    pair.create(&[
        "CREATE DATABASE app",
        "CREATE TABLE app.t (id INT PRIMARY KEY, v INT)",
    ])
    .await;
    let rowlog = InProcess::start(pair.config(2, 2));
    (pair, rowlog)
}
