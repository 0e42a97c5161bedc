//! `rowlog run` with 8 partitions and 4 workers per partition replicates a workload of
//! more than 100,000 row changes, every destination row equal to the source.

use crate::common;

use std::time::Duration;

use common::{Daemon, Pair};
use mysql_async::prelude::Queryable;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_changes_through_8_partitions_and_4_workers() {
    let pair = Pair::start().await;
    pair.create(&[
        "CREATE DATABASE bench",
        "CREATE TABLE bench.accounts (id BIGINT PRIMARY KEY, owner VARCHAR(64) NOT NULL, balance DECIMAL(18,2) NOT NULL, \
         updated DATETIME(6) NOT NULL, note TEXT NULL)",
        "CREATE TABLE bench.events (account BIGINT NOT NULL, seq INT NOT NULL, kind ENUM('open','pay','close') NOT NULL, \
         amount DOUBLE, PRIMARY KEY (account, seq))",
    ])
    .await;
    let config = pair.write_config(4, 8);
    let daemon = Daemon::spawn(&config, pair.dir.path().join("rowlog.log"));

    let mut c = pair.src.conn().await.unwrap();
    let mut changes = 0u64;
    // Bulk transactions: 60,000 inserts in 1,000-row statements.
    for chunk in 0..60 {
        let lo = chunk * 1000 + 1;
        c.query_drop(format!(
            "INSERT INTO bench.accounts SELECT seq, CONCAT('owner-', seq), seq * 1.25, NOW(6), IF(seq % 7 = 0, NULL, 'note ✓') \
             FROM bench.seq_{lo}_to_{}",
            lo + 999
        ))
        .await
        .unwrap();
        changes += c.affected_rows();
    }
    c.query_drop("INSERT INTO bench.events SELECT seq DIV 4, seq MOD 4, 1 + seq MOD 3, seq / 3 FROM bench.seq_4_to_20003")
        .await
        .unwrap();
    changes += c.affected_rows();
    // Single-row transactions: updates and deletes spread over the key space.
    for i in 0..3_000u64 {
        let id = (i * 7919) % 60_000 + 1;
        c.query_drop(format!(
            "UPDATE bench.accounts SET balance = balance + 1, updated = NOW(6) WHERE id = {id}"
        ))
        .await
        .unwrap();
        changes += c.affected_rows();
    }
    c.query_drop("UPDATE bench.accounts SET owner = UPPER(owner) WHERE id % 5 = 0")
        .await
        .unwrap();
    changes += c.affected_rows();
    c.query_drop("DELETE FROM bench.accounts WHERE id % 11 = 0")
        .await
        .unwrap();
    changes += c.affected_rows();
    c.query_drop("DELETE FROM bench.events WHERE seq = 3")
        .await
        .unwrap();
    changes += c.affected_rows();
    assert!(
        changes >= 100_000,
        "workload made only {changes} row changes"
    );

    pair.assert_converges(
        &[("bench.accounts", "id"), ("bench.events", "account, seq")],
        Duration::from_secs(300),
    )
    .await;
    daemon.terminate_cleanly();
}
