//! MariaDB GTID positions: with `source.resume_by = "gtid"` a stopped rowlog continues
//! on *another* server of the same replication topology (a replica that became the
//! source), from the GTID state it stored, although that server's binlog files and
//! offsets are its own. By position, the same switch is refused with a named error.

use crate::common;

use std::time::{Duration, Instant};

use common::{Daemon, InProcess, Pair};
use mysql_async::prelude::Queryable;
use rowlog::pipeline::Stats;
use rowlog::testkit::{MariaDb, ServerOptions};

async fn gtid_pos(server: &MariaDb, var: &str) -> String {
    let v: Option<String> = server
        .conn()
        .await
        .unwrap()
        .query_first(format!("SELECT @@{var}"))
        .await
        .unwrap();
    v.unwrap_or_default()
}

/// A source with app.t, a replica of it with its own binlog (log_slave_updates), as
/// a failover candidate has: same GTIDs, different files and offsets; and rowlog's
/// config (resume by GTID) with its path.
async fn source_replica_and_config() -> (Pair, MariaDb, String, std::path::PathBuf) {
    let pair = Pair::start().await;
    let mut opts = ServerOptions::source(3);
    opts.extra_args.push("--log-slave-updates".into());
    let replica = MariaDb::start(opts).await.unwrap();
    replica
        .exec(&[
            "FLUSH BINARY LOGS",
            "FLUSH BINARY LOGS",
            &format!(
                "CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT={}, MASTER_USER='root', \
                 MASTER_PASSWORD='', MASTER_USE_GTID=slave_pos",
                pair.src.port
            ),
            "START SLAVE",
        ])
        .await
        .unwrap();
    let table = [
        "CREATE DATABASE app",
        "CREATE TABLE app.t (id INT PRIMARY KEY, v INT NOT NULL)",
    ];
    pair.dst.exec(&table).await.unwrap();
    pair.src.exec(&table).await.unwrap();
    let toml = pair
        .config_toml(2, 4)
        .replace("[source]\n", "[source]\nresume_by = \"gtid\"\n");
    let config = pair.dir.path().join("rowlog.toml");
    std::fs::write(&config, &toml).unwrap();
    (pair, replica, toml, config)
}

/// What `rowlog offsets show` prints for `config`.
fn offsets_show(config: &std::path::Path) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rowlog"))
        .args(["offsets", "show", "-c"])
        .arg(config)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn replica_catches_up(pair: &Pair, replica: &MariaDb) {
    let target = gtid_pos(&pair.src, "gtid_binlog_pos").await;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while gtid_pos(replica, "gtid_slave_pos").await != target {
        assert!(
            std::time::Instant::now() < deadline,
            "the replica did not catch up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resuming_by_gtid_continues_on_another_server_of_the_topology() {
    let (pair, replica, toml, config) = source_replica_and_config().await;

    let daemon = Daemon::spawn(&config, pair.dir.path().join("first.log"));
    pair.src
        .exec(&[
            "INSERT INTO app.t SELECT seq, seq FROM app.seq_1_to_1000",
            "UPDATE app.t SET v = -v WHERE id % 3 = 0",
        ])
        .await
        .unwrap();
    pair.assert_converges(&[("app.t", "id")], Duration::from_secs(60))
        .await;
    daemon.terminate_cleanly();

    // While rowlog is stopped, more changes reach the source and its replica.
    pair.src
        .exec(&[
            "INSERT INTO app.t SELECT seq, seq FROM app.seq_1001_to_1500",
            "DELETE FROM app.t WHERE id % 10 = 0",
        ])
        .await
        .unwrap();
    replica_catches_up(&pair, &replica).await;

    // Failover: rowlog is pointed at the replica.
    let failover = toml.replace(&pair.src.url(), &replica.url());
    std::fs::write(
        &config,
        failover.replace("resume_by = \"gtid\"", "resume_by = \"position\""),
    )
    .unwrap();
    // By position, the stored file:pos belongs to the old source: refused, named.
    let refused = Daemon::spawn(&config, pair.dir.path().join("refused.log"));
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut refused = refused;
    while refused.is_running() {
        assert!(
            std::time::Instant::now() < deadline,
            "rowlog did not refuse"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = refused.log();
    assert!(
        log.contains("server_id 1") && log.contains("server_id 3") && log.contains("resume_by"),
        "{log}"
    );

    std::fs::write(&config, &failover).unwrap();
    let daemon = Daemon::spawn(&config, pair.dir.path().join("second.log"));
    // And the replica, now the source, takes new writes (as after a promotion).
    replica
        .exec(&[
            "STOP SLAVE",
            "INSERT INTO app.t SELECT seq, seq * 7 FROM app.seq_1501_to_1600",
            "UPDATE app.t SET v = 0 WHERE id BETWEEN 1 AND 50",
        ])
        .await
        .unwrap();
    let mut d = pair.dst.conn().await.unwrap();
    let mut r = replica.conn().await.unwrap();
    let diffs = rowlog::testkit::wait_until_equal(
        &mut r,
        &mut d,
        &[("app.t", "id")],
        Duration::from_secs(60),
    )
    .await
    .unwrap();
    assert!(diffs[0].is_equal(), "{:?}", diffs[0]);
    assert_eq!(diffs[0].source_rows, 1600 - 150);
    let log = daemon.log();
    assert!(
        log.contains("resuming by GTID on another server of the topology"),
        "{log}"
    );
    daemon.terminate_cleanly();

    // The stored checkpoint now belongs to the new server, in a new epoch.
    let out = offsets_show(&config);
    assert!(out.contains("server_id 3, epoch 1"), "{out}");
    assert!(
        out.contains(&gtid_pos(&replica, "gtid_binlog_pos").await),
        "{out}"
    );
}

/// A failover stores a checkpoint on the new server, in its new epoch, before it logs
/// anything read there; then a crash before the next checkpoint neither repeats nor
/// loses a change. Restarted on the same server, the changes it had logged are
/// dropped as held (a keyless table would get them twice: before, they were read
/// again in yet another epoch). Failed back to the old source, its new changes are
/// not taken for ones already logged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_a_failover_neither_repeats_nor_loses_a_change() {
    let (pair, replica, toml, config) = source_replica_and_config().await;
    // Checkpoints at most once a minute: the crashes below come before the next one.
    let toml = toml
        .replace("[log]\n", "[log]\ncheckpoint_interval_ms = 60000\n")
        .replace("[source]\n", "[source]\nno_pk = \"full_row\"\n");
    std::fs::write(&config, &toml).unwrap();
    let keyless = "CREATE TABLE app.k (v INT NOT NULL)";
    pair.dst.exec(&[keyless]).await.unwrap();
    pair.src.exec(&[keyless]).await.unwrap();
    let daemon = Daemon::spawn(&config, pair.dir.path().join("first.log"));
    pair.src
        .exec(&["INSERT INTO app.t SELECT seq, seq FROM app.seq_1_to_100"])
        .await
        .unwrap();
    pair.assert_converges(&[("app.t", "id")], Duration::from_secs(60))
        .await;
    // Stored on a clean stop: the checkpoint is on the source, epoch 0.
    daemon.terminate_cleanly();
    replica_catches_up(&pair, &replica).await;

    // Failover to the replica, which takes writes; rowlog logs them in epoch 1 and is
    // killed long before a checkpoint falls due.
    let on_replica = toml.replace(&pair.src.url(), &replica.url());
    std::fs::write(&config, &on_replica).unwrap();
    let daemon = Daemon::spawn(&config, pair.dir.path().join("second.log"));
    replica
        .exec(&[
            "STOP SLAVE",
            "INSERT INTO app.t SELECT seq, seq FROM app.seq_101_to_150",
            "INSERT INTO app.k SELECT seq FROM app.seq_1_to_50",
        ])
        .await
        .unwrap();
    let mut d = pair.dst.conn().await.unwrap();
    common::wait_for_count(
        &mut d,
        "SELECT (SELECT COUNT(*) FROM app.t) + (SELECT COUNT(*) FROM app.k)",
        200,
        "the replica's rows",
    )
    .await;
    daemon.kill();
    let out = offsets_show(&config);
    assert!(
        out.contains("server_id 3, epoch 1"),
        "the new epoch was checkpointed before its changes were logged: {out}"
    );

    // Restarted on the replica: what the log holds is not logged again.
    let daemon = Daemon::spawn(&config, pair.dir.path().join("third.log"));
    replica
        .exec(&["INSERT INTO app.k SELECT seq FROM app.seq_51_to_60"])
        .await
        .unwrap();
    common::wait_for_count(
        &mut d,
        "SELECT COUNT(*) FROM app.k WHERE v > 50",
        10,
        "the replica's rows after the restart",
    )
    .await;
    let keyless: (u64, u64) = d
        .query_first("SELECT COUNT(*), COUNT(DISTINCT v) FROM app.k")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(keyless, (60, 60), "each keyless row once: (rows, distinct)");
    daemon.kill();

    // Failback: the old source takes writes again and rowlog reads it from the
    // checkpoint, which holds the GTID state both servers share.
    std::fs::write(&config, &toml).unwrap();
    let daemon = Daemon::spawn(&config, pair.dir.path().join("fourth.log"));
    pair.src
        .exec(&[
            "INSERT INTO app.t SELECT seq, -seq FROM app.seq_1001_to_1040",
            "UPDATE app.t SET v = 0 WHERE id <= 10",
        ])
        .await
        .unwrap();
    common::wait_for_count(
        &mut d,
        "SELECT COUNT(*) FROM app.t WHERE id > 1000 OR (id <= 10 AND v = 0)",
        50,
        "the old source's new changes",
    )
    .await;
    assert_eq!(
        common::count(&pair.dst, "app.t").await,
        190,
        "the replica's rows stay, the source's new ones are added"
    );
    let log = daemon.log();
    assert!(
        log.contains("resuming by GTID on another server of the topology"),
        "{log}"
    );
    daemon.terminate_cleanly();
}

/// A failover while rowlog reads a large transaction: the stream is cut in its middle
/// and the same address now leads to the replica, which rowlog reads in a new epoch
/// and which sends the transaction again from its start. The changes rowlog already
/// logged are dropped by GTID and count; each row of a keyless table arrives once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_in_the_middle_of_a_transaction_logs_each_change_once() {
    const ROWS: u64 = 20_000;
    let (pair, replica, _, _) = source_replica_and_config().await;
    let keyless = "CREATE TABLE app.k (v INT NOT NULL, pad CHAR(200) NOT NULL)";
    pair.dst.exec(&[keyless]).await.unwrap();
    pair.src.exec(&[keyless]).await.unwrap();
    let proxy = rowlog::testkit::Proxy::start(pair.src.port).await.unwrap();
    let mut cfg = pair.config(2, 4);
    cfg.source.url = format!("mysql://root@127.0.0.1:{}/", proxy.port);
    cfg.source.resume_by = rowlog_mysql_binlog::ResumeBy::Gtid;
    cfg.source.no_pk = rowlog_mysql_binlog::NoPrimaryKey::FullRow;
    let rowlog = InProcess::start(cfg);
    pair.src
        .exec(&["INSERT INTO app.t SELECT seq, seq FROM app.seq_1_to_10"])
        .await
        .unwrap();
    pair.assert_converges(&[("app.t", "id")], Duration::from_secs(60))
        .await;

    // The stream slowed down, one transaction of ~4 MiB of rows.
    proxy.set_latency(Duration::from_millis(50));
    let before = Stats::get(&rowlog.stats.source_changes);
    pair.src
        .exec(&[&format!(
            "INSERT INTO app.k SELECT seq, REPEAT('p', 200) FROM app.seq_1_to_{ROWS}"
        )])
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while Stats::get(&rowlog.stats.source_changes) < before + 1_000 {
        assert!(
            Instant::now() < deadline,
            "rowlog did not read the transaction"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    proxy.cut();
    let read = Stats::get(&rowlog.stats.source_changes) - before;
    assert!(
        read < ROWS,
        "the cut came after the whole transaction was read ({read} changes)"
    );
    replica_catches_up(&pair, &replica).await;
    replica.exec(&["STOP SLAVE"]).await.unwrap();
    proxy.switch_upstream(replica.port);
    proxy.set_latency(Duration::ZERO);
    proxy.restore();

    let mut d = pair.dst.conn().await.unwrap();
    common::wait_for_count(
        &mut d,
        "SELECT COUNT(DISTINCT v) FROM app.k",
        ROWS,
        "every row of the transaction",
    )
    .await;
    let rows: u64 = d
        .query_first("SELECT COUNT(*) FROM app.k")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rows, ROWS, "each row once");
    assert!(
        Stats::get(&rowlog.stats.duplicates_dropped) >= read,
        "the {read} changes read before the cut came again and were dropped"
    );
    rowlog.stop().await;
}
