//! Memory stays bounded under backlog: one source transaction of 1,000,000 rows,
//! written while rowlog is down, replicates through the real binary with a bounded
//! peak RSS (bounded queues, bounded batches, records streamed through the log).

use crate::common;

use std::time::Duration;

use common::{Daemon, Pair};
use mysql_async::prelude::Queryable;

fn peak_rss_mib(pid: u32) -> u64 {
    rowlog::report::proc_status_kib(&pid.to_string(), "VmHWM:") / 1024
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
    let pid = daemon.pid();
    let mut peak = 0;
    let mut d = pair.dst.conn().await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    loop {
        peak = peak.max(peak_rss_mib(pid));
        let n: u64 = d
            .query_first("SELECT COUNT(*) FROM app.big")
            .await
            .unwrap()
            .unwrap();
        if n == 1_000_000 {
            break;
        }
        assert!(daemon.is_running(), "rowlog exited; log:\n{}", daemon.log());
        assert!(
            std::time::Instant::now() < deadline,
            "only {n} rows after 300 s"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    peak = peak.max(peak_rss_mib(pid));
    pair.assert_converges(&[("app.big", "id")], Duration::from_secs(60))
        .await;
    println!("peak RSS of rowlog replicating a 1,000,000-row transaction: {peak} MiB");
    assert!(peak < 300, "peak RSS {peak} MiB");
    daemon.terminate_cleanly();
}
