//! Memory stays bounded under backlog: one source transaction of 1,000,000 rows, and a
//! backlog of 1 MiB rows, written while rowlog is down, replicate through the real
//! binary with a bounded peak RSS (queues and batches bounded by changes and by bytes,
//! records streamed through the log); a batch holding the bytes the partition waits
//! for is applied at once.

use crate::common;

use std::time::Duration;

use common::{Daemon, InProcess, Pair};
use mysql_async::prelude::Queryable;

fn peak_rss_mib(pid: u32) -> u64 {
    rowlog::report::proc_status_kib(&pid.to_string(), "VmHWM:") / 1024
}

/// Waits (up to 300 s) until the destination's `table` holds `rows` rows; returns the
/// daemon's peak RSS in MiB by then.
async fn catch_up(daemon: &mut Daemon, pair: &Pair, table: &str, rows: u64) -> u64 {
    let pid = daemon.pid();
    let mut peak = 0;
    let mut d = pair.dst.conn().await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    loop {
        peak = peak.max(peak_rss_mib(pid));
        let n: u64 = d
            .query_first(format!("SELECT COUNT(*) FROM {table}"))
            .await
            .unwrap()
            .unwrap();
        if n == rows {
            return peak.max(peak_rss_mib(pid));
        }
        assert!(daemon.is_running(), "rowlog exited; log:\n{}", daemon.log());
        assert!(
            std::time::Instant::now() < deadline,
            "only {n} of {rows} rows after 300 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_million_row_transaction_replicates_with_bounded_memory() {
    let pair = Pair::start().await;
    pair.create(&[
        "CREATE DATABASE app",
        "CREATE TABLE app.big (id INT PRIMARY KEY, v INT NOT NULL, s CHAR(100) NOT NULL)",
    ])
    .await;
    let config = pair.write_config(4, 8);
    // Start once so the stored position is before the transaction, then stop.
    let first = Daemon::spawn(&config, pair.dir.path().join("rowlog.log"));
    tokio::time::sleep(Duration::from_secs(2)).await;
    first.terminate_cleanly();

    let mut c = pair.src.conn().await.unwrap();
    c.query_drop(
        "INSERT INTO app.big SELECT seq, seq % 97, REPEAT('m', 100) FROM app.seq_1_to_1000000",
    )
    .await
    .unwrap();
    assert_eq!(c.affected_rows(), 1_000_000);

    let mut daemon = Daemon::spawn(&config, pair.dir.path().join("rowlog.log"));
    let peak = catch_up(&mut daemon, &pair, "app.big", 1_000_000).await;
    pair.assert_converges(&[("app.big", "id")], Duration::from_secs(60))
        .await;
    println!("peak RSS of rowlog replicating a 1,000,000-row transaction: {peak} MiB");
    assert!(peak < 300, "peak RSS {peak} MiB");
    daemon.terminate_cleanly();
}

/// Wide rows: queues bounded only by counts of changes would hold gigabytes of 1 MiB
/// rows (8,192 events between reader and log, 2,000 per worker queue); bounded by bytes
/// too, rowlog holds a few tens of MiB per stage whatever the width of the rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_of_one_mib_rows_replicates_with_memory_bounded_by_bytes() {
    let pair = Pair::start().await;
    pair.create(&[
        "CREATE DATABASE app",
        "CREATE TABLE app.wide (id INT PRIMARY KEY, b LONGBLOB NOT NULL)",
    ])
    .await;
    let config = pair.write_config(2, 8);
    let first = Daemon::spawn(&config, pair.dir.path().join("rowlog.log"));
    tokio::time::sleep(Duration::from_secs(2)).await;
    first.terminate_cleanly();

    // 480 rows of 1 MiB (480 MiB of values), 12 to a transaction, while rowlog is down.
    const ROWS: u64 = 480;
    let mut c = pair.src.conn().await.unwrap();
    for start in (1..=ROWS).step_by(12) {
        c.query_drop(format!(
            "INSERT INTO app.wide SELECT seq, REPEAT(CHAR(65 + seq % 26), 1048576) FROM app.seq_{start}_to_{}",
            start + 11
        ))
        .await
        .unwrap();
    }

    let mut daemon = Daemon::spawn(&config, pair.dir.path().join("rowlog.log"));
    let peak = catch_up(&mut daemon, &pair, "app.wide", ROWS).await;
    let mut d = pair.dst.conn().await.unwrap();
    let differing: u64 = d
        .query_first(
            "SELECT COUNT(*) FROM app.wide WHERE LENGTH(b) <> 1048576 OR b <> REPEAT(CHAR(65 + id % 26), 1048576)",
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(differing, 0, "rows arrived with other values");
    println!("peak RSS of rowlog replicating {ROWS} rows of 1 MiB: {peak} MiB");
    // Less than the backlog's values: nothing holds the backlog whole.
    assert!(
        peak < 360,
        "peak RSS {peak} MiB with {ROWS} MiB of rows in the backlog"
    );
    daemon.terminate_cleanly();
}

/// A worker filling a batch closes it as soon as its partition waits for bytes the
/// batch holds, not at `batch_max_wait_ms`: here 20 s, with a budget of 1 MiB and rows
/// of 256 KiB, so about every fourth row waits for the batch before it. Waiting each
/// time for the deadline, the 24 rows would take over 2 minutes; only the last batch,
/// which nothing waits for, waits for its deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_holding_the_bytes_its_partition_waits_for_is_applied_at_once() {
    let pair = Pair::start().await;
    pair.create(&[
        "CREATE DATABASE app",
        "CREATE TABLE app.wide (id INT PRIMARY KEY, b MEDIUMBLOB NOT NULL)",
    ])
    .await;
    let mut cfg = pair.config(1, 1);
    cfg.sink.queue_max_bytes = 1 << 20;
    cfg.sink.batch_max_wait_ms = 20_000;
    let mut rowlog = InProcess::start(cfg);
    let mut c = pair.src.conn().await.unwrap();
    for id in 1..=24 {
        c.query_drop(format!(
            "INSERT INTO app.wide VALUES ({id}, REPEAT(CHAR(64 + {id}), 262144))"
        ))
        .await
        .unwrap();
    }
    rowlog
        .assert_converges_running(&pair, &[("app.wide", "id")], Duration::from_secs(50))
        .await;
    rowlog.stop().await;
}
