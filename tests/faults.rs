//! Faults the pipeline survives without losing a row.

mod common;

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
