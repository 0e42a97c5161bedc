//! Faults the pipeline survives without losing a row.

use crate::common;

use std::process::Command;
use std::time::Duration;

use common::{InProcess, Pair};
use mysql_async::prelude::Queryable;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_log_disk_pauses_ingest_and_it_resumes_when_space_returns() {
    let pair = Pair::start().await;
    pair.create(&[
        "CREATE DATABASE app",
        "CREATE TABLE app.t (id INT PRIMARY KEY, body VARCHAR(2000) NOT NULL)",
    ])
    .await;
    // The log on a 3 MiB filesystem, most of it taken by a filler file.
    let mount = tempfile::tempdir().unwrap();
    assert!(
        Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=3m", "tmpfs"])
            .arg(mount.path())
            .status()
            .unwrap()
            .success(),
        "needs root"
    );
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(mount.path().to_path_buf());
    let filler = mount.path().join("filler");
    std::fs::write(&filler, vec![0u8; 2 << 20]).unwrap();

    let mut cfg = pair.config(2, 2);
    cfg.log.dir = mount.path().join("log");
    cfg.log.segment_bytes = 1 << 20;
    let rowlog = InProcess::start(cfg);

    // ~3 MiB of changes: more than the filesystem has left.
    let mut c = pair.src.conn().await.unwrap();
    for chunk in 0..30 {
        c.query_drop(format!(
            "INSERT INTO app.t SELECT seq, REPEAT('x', 900) FROM app.seq_{}_to_{}",
            chunk * 100 + 1,
            chunk * 100 + 100
        ))
        .await
        .unwrap();
    }
    // Wait until the log has hit the wall: the destination stalls short of the source.
    let mut d = pair.dst.conn().await.unwrap();
    let mut stalled_at = 0u64;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let n: u64 = d
            .query_first("SELECT COUNT(*) FROM app.t")
            .await
            .unwrap()
            .unwrap();
        if n == stalled_at && n < 3000 {
            break;
        }
        stalled_at = n;
    }
    assert!(stalled_at < 3000, "the disk never filled");

    // Space returns; everything arrives, nothing lost or duplicated.
    std::fs::remove_file(&filler).unwrap();
    pair.assert_converges(&[("app.t", "id")], Duration::from_secs(120))
        .await;
    let stats = rowlog.stop().await;
    // (Stats::appended counts successful appends; records a failed append kept in
    // segments sealed before the failure are in the log but not in that count.)
    assert_eq!(
        rowlog::pipeline::Stats::get(&stats.applied),
        3000,
        "each change applied once"
    );
    let verify = rowlog::log::verify(
        &rowlog::log::EmbeddedLog::open_read_only(&mount.path().join("log")).unwrap(),
    )
    .unwrap();
    assert!(verify.problems.is_empty(), "{:?}", verify.problems);
    assert_eq!(
        verify.records, 3000,
        "each change is in the log exactly once"
    );
}

/// The source's connection goes silent without a reset (a network partition): no
/// event, no heartbeat, no error. rowlog notices the silence, connects again and goes
/// on; the rows written meanwhile arrive, none twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_connection_gone_silent_is_noticed_and_opened_again() {
    common::init_test_logging();
    let pair = Pair::start().await;
    pair.create(&[
        "CREATE DATABASE app",
        "CREATE TABLE app.t (id INT PRIMARY KEY, v INT NOT NULL)",
    ])
    .await;
    let proxy = rowlog::testkit::Proxy::start(pair.src.port).await.unwrap();
    let mut cfg = pair.config(2, 2);
    cfg.source.url = format!("mysql://root@127.0.0.1:{}/", proxy.port);
    cfg.source.heartbeat_ms = 200;
    let mut rowlog = InProcess::start(cfg);
    let mut c = pair.src.conn().await.unwrap();
    c.query_drop("INSERT INTO app.t SELECT seq, seq FROM app.seq_1_to_100")
        .await
        .unwrap();
    pair.assert_converges(&[("app.t", "id")], Duration::from_secs(60))
        .await;

    proxy.stall_open();
    c.query_drop("INSERT INTO app.t SELECT seq, seq FROM app.seq_101_to_200")
        .await
        .unwrap();
    c.query_drop("UPDATE app.t SET v = v + 1 WHERE id % 3 = 0")
        .await
        .unwrap();
    // The silence limit is 5 s here (three heartbeats, at least 5 s).
    rowlog
        .assert_converges_running(&pair, &[("app.t", "id")], Duration::from_secs(60))
        .await;
    let stats = rowlog.stop().await;
    assert_eq!(
        rowlog::pipeline::Stats::get(&stats.applied),
        200 + 66,
        "every change applied once"
    );
}

/// The destination's connections go silent without a reset (a network partition):
/// a worker's statement never gets an answer. After `sink.call_timeout_secs` the
/// connection is taken for dead, the worker checks on a new one whether its batch
/// committed, and goes on; the rows written meanwhile arrive, none twice, and the
/// pipeline still stops cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_connection_gone_silent_is_given_up_and_opened_again() {
    common::init_test_logging();
    let pair = Pair::start().await;
    pair.create(&["CREATE DATABASE app", "CREATE TABLE app.k (v INT NOT NULL)"])
        .await;
    let proxy = rowlog::testkit::Proxy::start(pair.dst.port).await.unwrap();
    let mut cfg = pair.config(1, 2);
    cfg.sink.url = format!("mysql://root@127.0.0.1:{}/", proxy.port);
    cfg.sink.call_timeout_secs = 3;
    // A table without a key: a batch applied twice would show as rows twice.
    cfg.source.no_pk = rowlog_mysql_binlog::NoPrimaryKey::FullRow;
    let mut rowlog = InProcess::start(cfg);
    let mut c = pair.src.conn().await.unwrap();
    c.query_drop("INSERT INTO app.k SELECT seq FROM app.seq_1_to_100")
        .await
        .unwrap();
    let mut d = pair.dst.conn().await.unwrap();
    common::wait_for_count(&mut d, "SELECT COUNT(*) FROM app.k", 100, "the first rows").await;

    proxy.stall_open();
    c.query_drop("INSERT INTO app.k SELECT seq FROM app.seq_101_to_200")
        .await
        .unwrap();
    rowlog
        .assert_converges_running(&pair, &[("app.k", "v")], Duration::from_secs(60))
        .await;
    let rows: Vec<i32> = d.query("SELECT v FROM app.k ORDER BY v").await.unwrap();
    assert_eq!(rows, (1..=200).collect::<Vec<i32>>(), "every row once");
    let stats = rowlog.stop().await;
    assert_eq!(rowlog::pipeline::Stats::get(&stats.applied), 200);
    assert!(
        rowlog::pipeline::Stats::get(&stats.apply_retries) >= 1,
        "a silent connection was given up"
    );
}

/// The destination's connection is lost right after it received a batch's COMMIT: the
/// batch is committed but rowlog cannot know. The worker's progress row, written in
/// the same transaction, tells it, so the batch is not applied a second time: for a
/// table without a primary key, a second time would be a second copy of each row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_whose_commit_reply_was_lost_is_not_applied_twice() {
    common::init_test_logging();
    let pair = Pair::start().await;
    pair.create(&["CREATE DATABASE app", "CREATE TABLE app.k (v INT NOT NULL)"])
        .await;
    let proxy = rowlog::testkit::Proxy::start(pair.dst.port).await.unwrap();
    let mut cfg = pair.config(1, 1);
    cfg.sink.url = format!("mysql://root@127.0.0.1:{}/", proxy.port);
    cfg.source.no_pk = rowlog_mysql_binlog::NoPrimaryKey::FullRow;
    let mut rowlog = InProcess::start(cfg);
    let mut c = pair.src.conn().await.unwrap();
    c.query_drop("INSERT INTO app.k VALUES (1)").await.unwrap();
    let mut d = pair.dst.conn().await.unwrap();
    common::wait_for_count(&mut d, "SELECT COUNT(*) FROM app.k", 1, "the first row").await;

    // A COM_QUERY packet: command byte 3, then the statement.
    proxy.cut_after_request(b"\x03COMMIT");
    c.query_drop("INSERT INTO app.k SELECT seq FROM app.seq_2_to_11")
        .await
        .unwrap();
    common::wait_for_count(&mut d, "SELECT COUNT(*) FROM app.k", 11, "the batch").await;
    assert!(
        proxy.cut_after_request_done(),
        "the connection was cut after a COMMIT"
    );
    // One more source transaction after the fault, to be sure the retry is over.
    c.query_drop("INSERT INTO app.k VALUES (12)").await.unwrap();
    rowlog
        .assert_converges_running(&pair, &[("app.k", "v")], Duration::from_secs(60))
        .await;
    let rows: Vec<i32> = d.query("SELECT v FROM app.k ORDER BY v").await.unwrap();
    assert_eq!(rows, (1..=12).collect::<Vec<i32>>(), "every row once");
    let stats = rowlog.stop().await;
    assert_eq!(
        rowlog::pipeline::Stats::get(&stats.applied),
        12,
        "each change counted once"
    );
    assert!(
        rowlog::pipeline::Stats::get(&stats.apply_retries) >= 1,
        "the lost connection was retried"
    );
}

/// A destination that stops letting rowlog in while it runs (its user dropped, its
/// connections killed): the reconnect is refused with "access denied", which no retry
/// can fix, so rowlog stops with that error instead of retrying forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_that_refuses_rowlog_mid_run_stops_it_naming_why() {
    let pair = Pair::start().await;
    pair.create(&[
        "CREATE DATABASE app",
        "CREATE TABLE app.t (id INT PRIMARY KEY, v INT NOT NULL)",
    ])
    .await;
    pair.dst
        .exec(&[
            "CREATE USER 'rl'@'%' IDENTIFIED BY 'pw'",
            "GRANT ALL ON *.* TO 'rl'@'%'",
            "CREATE USER 'rl'@'localhost' IDENTIFIED BY 'pw'",
            "GRANT ALL ON *.* TO 'rl'@'localhost'",
        ])
        .await
        .unwrap();
    let mut cfg = pair.config(2, 2);
    cfg.sink.url = format!("mysql://rl:pw@127.0.0.1:{}/", pair.dst.port);
    let rowlog = InProcess::start(cfg);
    let mut c = pair.src.conn().await.unwrap();
    c.query_drop("INSERT INTO app.t SELECT seq, seq FROM app.seq_1_to_100")
        .await
        .unwrap();
    pair.assert_converges(&[("app.t", "id")], Duration::from_secs(60))
        .await;

    let mut d = pair.dst.conn().await.unwrap();
    d.query_drop("DROP USER 'rl'@'%', 'rl'@'localhost'")
        .await
        .unwrap();
    let ids: Vec<u64> = d
        .query("SELECT ID FROM information_schema.PROCESSLIST WHERE USER = 'rl'")
        .await
        .unwrap();
    assert!(!ids.is_empty(), "rowlog's connections are open");
    for id in ids {
        let _ = d.query_drop(format!("KILL {id}")).await;
    }
    c.query_drop("INSERT INTO app.t SELECT seq, seq FROM app.seq_101_to_200")
        .await
        .unwrap();
    let err = rowlog
        .stopped_error(
            Duration::from_secs(60),
            "rowlog kept retrying a refused login",
        )
        .await;
    assert!(
        err.contains("retrying cannot fix")
            && err.contains("cannot connect to the destination")
            && err.contains("Access denied"),
        "{err}"
    );
}
