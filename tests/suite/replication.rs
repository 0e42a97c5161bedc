//! End to end: row changes on a real MariaDB source arrive on a real MariaDB
//! destination through rowlog, value for value.

use crate::common;

use std::time::Duration;

use common::{InProcess, Pair};
use mysql_async::prelude::Queryable;
use rowlog::testkit::Tansu;

const ITEMS: &str = "CREATE TABLE app.items (
    id INT PRIMARY KEY,
    qty BIGINT UNSIGNED NOT NULL,
    small MEDIUMINT NULL,
    tiny TINYINT NULL,
    price DECIMAL(20,6) NULL,
    seen DATETIME(6) NULL,
    stamp TIMESTAMP(3) NULL,
    day DATE NULL,
    name VARCHAR(100) CHARACTER SET utf8mb4 NULL,
    body TEXT NULL,
    data BLOB NULL,
    ratio DOUBLE NULL
)";
const PAIRS: &str =
    "CREATE TABLE app.pairs (a INT NOT NULL, b VARCHAR(20) NOT NULL, v INT, PRIMARY KEY (a, b))";

async fn inserts_updates_deletes_transactions_and_key_changes_arrive_value_for_value_on(
    kafka: Option<&Tansu>,
) {
    let pair = Pair::start().await;
    if let Some(k) = kafka {
        pair.use_kafka(k.brokers());
    }
    pair.create(&["CREATE DATABASE app", ITEMS, PAIRS]).await;
    let rowlog = InProcess::start(pair.config(4, 8));

    let mut c = pair.src.conn().await.unwrap();
    c.query_drop("SET NAMES utf8mb4").await.unwrap();
    // Edge values of each type, and a row of NULLs.
    c.query_drop(
        "INSERT INTO app.items VALUES
         (1, 18446744073709551615, -8388608, -128, '-12345678901234.123456', '2024-02-29 23:59:59.999999',
          '2038-01-19 03:14:07.999', '1000-01-01', 'emoji 😀 ünïcode ☕', REPEAT('long text ', 500), X'00FF0000', -1.5e300),
         (2, 0, 8388607, 127, '0.000001', '1970-01-01 00:00:00.000001', '1970-01-01 00:00:01.000', '9999-12-31', '', '', X'', 0),
         (3, 42, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)",
    )
    .await
    .unwrap();
    // A multi-statement transaction.
    let mut tx = c.start_transaction(Default::default()).await.unwrap();
    tx.query_drop("INSERT INTO app.items (id, qty, name) VALUES (4, 4, 'four'), (5, 5, 'five'), (6, 6, 'six')").await.unwrap();
    tx.query_drop("UPDATE app.items SET name = 'FIVE', price = 5.5 WHERE id = 5")
        .await
        .unwrap();
    tx.query_drop("DELETE FROM app.items WHERE id = 4")
        .await
        .unwrap();
    tx.commit().await.unwrap();
    // Values to NULL and back; a primary-key change; a delete.
    c.query_drop("UPDATE app.items SET small = NULL, data = NULL WHERE id = 1")
        .await
        .unwrap();
    c.query_drop("UPDATE app.items SET small = -1, data = X'000102' WHERE id = 3")
        .await
        .unwrap();
    c.query_drop("UPDATE app.items SET id = 1000 WHERE id = 2")
        .await
        .unwrap();
    c.query_drop("DELETE FROM app.items WHERE id = 6")
        .await
        .unwrap();
    // Composite keys, including a change of one key column.
    c.query_drop("INSERT INTO app.pairs VALUES (1, 'a', 1), (1, 'b', 2), (2, 'a', 3)")
        .await
        .unwrap();
    c.query_drop("UPDATE app.pairs SET b = 'c', v = 20 WHERE a = 1 AND b = 'b'")
        .await
        .unwrap();
    c.query_drop("DELETE FROM app.pairs WHERE a = 2")
        .await
        .unwrap();
    // Many keys in one statement and one transaction.
    c.query_drop("INSERT INTO app.items (id, qty) SELECT seq, seq * 3 FROM app.seq_10000_to_12000")
        .await
        .unwrap();
    c.query_drop("UPDATE app.items SET qty = qty + 1 WHERE id BETWEEN 10500 AND 11500")
        .await
        .unwrap();
    c.query_drop("DELETE FROM app.items WHERE id BETWEEN 11000 AND 11200")
        .await
        .unwrap();

    pair.assert_converges(
        &[("app.items", "id"), ("app.pairs", "a, b")],
        Duration::from_secs(60),
    )
    .await;
    let mut d = pair.dst.conn().await.unwrap();
    let moved: Option<(i32, u64)> = d
        .query_first("SELECT id, qty FROM app.items WHERE id = 1000")
        .await
        .unwrap();
    assert_eq!(
        moved,
        Some((1000, 0)),
        "the row whose key changed is at its new key"
    );
    let old: Option<i32> = d
        .query_first("SELECT id FROM app.items WHERE id = 2")
        .await
        .unwrap();
    assert_eq!(old, None, "and gone from its old key");
    let name: Option<Vec<u8>> = d
        .query_first("SELECT name FROM app.items WHERE id = 1")
        .await
        .unwrap();
    assert_eq!(name, Some("emoji 😀 ünïcode ☕".as_bytes().to_vec()));

    let stats = rowlog.stop().await;
    assert_eq!(
        rowlog::pipeline::Stats::get(&stats.applied),
        rowlog::pipeline::Stats::get(&stats.appended),
        "every appended change was applied before shutdown"
    );
}

async fn a_restarted_pipeline_resumes_from_its_stored_positions_on(kafka: Option<&Tansu>) {
    let pair = Pair::start().await;
    if let Some(k) = kafka {
        pair.use_kafka(k.brokers());
    }
    pair.create(&[
        "CREATE DATABASE app",
        "CREATE TABLE app.t (id INT PRIMARY KEY, v INT NOT NULL)",
    ])
    .await;
    let mut c = pair.src.conn().await.unwrap();
    c.query_drop("INSERT INTO app.t SELECT seq, seq FROM app.seq_1_to_3000")
        .await
        .unwrap();

    let first = InProcess::start(pair.config(3, 4));
    pair.assert_converges(&[("app.t", "id")], Duration::from_secs(60))
        .await;
    let stats = first.stop().await;
    assert_eq!(rowlog::pipeline::Stats::get(&stats.applied), 3000);

    // Written while rowlog is down: must be picked up from the stored checkpoint.
    c.query_drop("UPDATE app.t SET v = v * 2 WHERE id % 2 = 0")
        .await
        .unwrap();
    c.query_drop("DELETE FROM app.t WHERE id > 2500")
        .await
        .unwrap();
    c.query_drop("INSERT INTO app.t VALUES (5000, 5)")
        .await
        .unwrap();

    let second = InProcess::start(pair.config(3, 4));
    pair.assert_converges(&[("app.t", "id")], Duration::from_secs(60))
        .await;
    let stats = second.stop().await;
    // 1500 updates + 500 deletes + 1 insert: nothing before the checkpoint was read again.
    assert_eq!(rowlog::pipeline::Stats::get(&stats.appended), 2001);
    assert_eq!(rowlog::pipeline::Stats::get(&stats.duplicates_dropped), 0);
}

/// The binlog a stored position points into was purged while rowlog was down: it
/// stops, naming the lost position, the oldest file left and the explicit way on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purged_stored_position_stops_naming_it_and_the_way_to_accept_the_gap() {
    let pair = Pair::start().await;
    pair.create(&[
        "CREATE DATABASE app",
        "CREATE TABLE app.t (id INT PRIMARY KEY, v INT NOT NULL)",
    ])
    .await;
    let first = InProcess::start(pair.config(1, 2));
    pair.src
        .exec(&["INSERT INTO app.t VALUES (1, 1)"])
        .await
        .unwrap();
    pair.assert_converges(&[("app.t", "id")], Duration::from_secs(60))
        .await;
    first.stop().await;
    pair.src
        .exec(&[
            "INSERT INTO app.t VALUES (2, 2)",
            "FLUSH BINARY LOGS",
            "FLUSH BINARY LOGS",
        ])
        .await
        .unwrap();
    let oldest = pair.src.purge_binlogs().await.unwrap();
    let second = InProcess::start(pair.config(1, 2));
    let err = second
        .stopped_error(Duration::from_secs(30), "rowlog went on")
        .await;
    assert!(
        err.contains("binlog.000001:")
            && err.contains(&format!("oldest binlog there: {oldest}"))
            && err.contains(&format!("rowlog source reset --to {oldest}:4")),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inserts_updates_deletes_transactions_and_key_changes_arrive_value_for_value() {
    inserts_updates_deletes_transactions_and_key_changes_arrive_value_for_value_on(None).await
}

/// The same, with the log on Kafka.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inserts_updates_deletes_transactions_and_key_changes_arrive_value_for_value_through_kafka()
{
    let broker = Tansu::start().expect("tansu broker starts");
    inserts_updates_deletes_transactions_and_key_changes_arrive_value_for_value_on(Some(&broker))
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_pipeline_resumes_from_its_stored_positions() {
    a_restarted_pipeline_resumes_from_its_stored_positions_on(None).await
}

/// The same, with the log on Kafka: the checkpoint, last changes and group offsets come back from the broker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_pipeline_resumes_from_its_stored_positions_through_kafka() {
    let broker = Tansu::start().expect("tansu broker starts");
    a_restarted_pipeline_resumes_from_its_stored_positions_on(Some(&broker)).await
}
