//! Moving positions deliberately: `rowlog offsets show | set`, `rowlog replay`,
//! `rowlog source reset`, and what signals do to the daemon.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{Daemon, Pair};
use mysql_async::prelude::Queryable;

fn rowlog(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_rowlog"))
        .args(args)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

async fn count(pair: &Pair, sql: &str) -> u64 {
    pair.dst
        .conn()
        .await
        .unwrap()
        .query_first(sql)
        .await
        .unwrap()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_and_replay_repair_a_damaged_destination() {
    let pair = Pair::start().await;
    pair.create(&[
        "CREATE DATABASE app",
        "CREATE TABLE app.t (id INT PRIMARY KEY, v INT NOT NULL)",
    ])
    .await;
    let config = pair.write_config(2, 4);
    let cfg = config.to_str().unwrap();
    let log = pair.dir.path().join("rowlog.log");

    let mut daemon = Daemon::spawn(&config, log.clone());
    pair.src
        .exec(&["INSERT INTO app.t SELECT seq, seq FROM app.seq_1_to_500"])
        .await
        .unwrap();
    pair.assert_converges(&[("app.t", "id")], Duration::from_secs(60))
        .await;

    // SIGHUP does not stop or reload it; it says so.
    Command::new("kill")
        .args(["-HUP", &daemon.pid().to_string()])
        .status()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(daemon.is_running(), "SIGHUP stopped rowlog");
    assert!(daemon.log().contains("SIGHUP ignored"), "{}", daemon.log());
    // Positions cannot be moved under a running daemon.
    let (code, out) = rowlog(&["offsets", "set", "-c", cfg, "--to-earliest"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("in use by a running rowlog"), "{out}");
    // SIGTERM drains and commits: afterwards every partition's committed offset is its end.
    daemon.terminate_cleanly();
    let (code, out) = rowlog(&["offsets", "show", "-c", cfg]);
    assert_eq!(code, 0, "{out}");
    let rows: Vec<Vec<&str>> = out
        .lines()
        .filter(|l| l.trim_start().starts_with(|c: char| c.is_ascii_digit()))
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows.len(), 4, "{out}");
    let total: u64 = rows.iter().map(|r| r[2].parse::<u64>().unwrap()).sum();
    assert_eq!(total, 500, "{out}");
    for r in &rows {
        assert_eq!(
            r[2], r[3],
            "partition {} end {} committed {}: {out}",
            r[0], r[2], r[3]
        );
        assert_eq!(*r.last().unwrap(), "0", "lag: {out}");
    }

    // Someone damages the destination.
    pair.dst
        .exec(&[
            "DELETE FROM app.t WHERE id <= 50",
            "UPDATE app.t SET v = -1 WHERE id BETWEEN 100 AND 110",
        ])
        .await
        .unwrap();
    let (code, out) = rowlog(&["replay", "-c", cfg, "--from-time", "0", "--dry-run"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("app.t id=7 → insert"), "{out}");
    assert!(out.contains("app.t id=105 → update"), "{out}");
    assert!(out.contains("app.t id=300 → unchanged"), "{out}");
    assert!(out.contains("nothing changed"), "{out}");
    assert_eq!(
        count(&pair, "SELECT COUNT(*) FROM app.t").await,
        450,
        "a dry run changes nothing"
    );

    let (code, out) = rowlog(&["replay", "-c", cfg, "--from-time", "0"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("replayed 500 changes"), "{out}");
    pair.assert_converges(&[("app.t", "id")], Duration::from_secs(10))
        .await;

    // Rewind the sink's positions instead: the daemon re-applies from the start.
    pair.dst
        .exec(&["DELETE FROM app.t WHERE id <= 20"])
        .await
        .unwrap();
    let (code, out) = rowlog(&["offsets", "set", "-c", cfg, "--to-earliest"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("partition 0: next offset 0"), "{out}");
    let daemon = Daemon::spawn(&config, log.clone());
    pair.assert_converges(&[("app.t", "id")], Duration::from_secs(60))
        .await;
    daemon.terminate_cleanly();

    // Skip to the end: what is not applied stays unapplied (an operator's decision).
    pair.dst
        .exec(&["DELETE FROM app.t WHERE id = 1"])
        .await
        .unwrap();
    let (code, out) = rowlog(&["offsets", "set", "-c", cfg, "--partition", "9", "--to-end"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("partition 9 does not exist"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_reset_re_reads_the_binlog_from_an_earlier_position() {
    let pair = Pair::start().await;
    pair.create(&[
        "CREATE DATABASE app",
        "CREATE TABLE app.t (id INT PRIMARY KEY, v INT NOT NULL)",
    ])
    .await;
    let config = pair.write_config(2, 2);
    let cfg = config.to_str().unwrap();
    let log = pair.dir.path().join("rowlog.log");
    let daemon = Daemon::spawn(&config, log.clone());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let row: mysql_async::Row = pair
        .src
        .conn()
        .await
        .unwrap()
        .query_first("SHOW MASTER STATUS")
        .await
        .unwrap()
        .unwrap();
    let before = format!(
        "{}:{}",
        row.get::<String, _>(0).unwrap(),
        row.get::<u64, _>(1).unwrap()
    );
    pair.src
        .exec(&[
            "INSERT INTO app.t SELECT seq, seq FROM app.seq_1_to_300",
            "UPDATE app.t SET v = 0 WHERE id < 10",
        ])
        .await
        .unwrap();
    pair.assert_converges(&[("app.t", "id")], Duration::from_secs(60))
        .await;
    daemon.terminate_cleanly();

    // The destination loses the table's rows; the log still has them, but so does the binlog.
    pair.dst.exec(&["TRUNCATE app.t"]).await.unwrap();
    let (code, out) = rowlog(&["source", "reset", "-c", cfg, "--to", &before]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(&format!("→ {before}")), "{out}");
    let daemon = Daemon::spawn(&config, log.clone());
    pair.assert_converges(&[("app.t", "id")], Duration::from_secs(60))
        .await;
    daemon.terminate_cleanly();
    assert_eq!(count(&pair, "SELECT COUNT(*) FROM app.t").await, 300);

    // Again by GTID (MariaDB): the state at that position is looked up on the source.
    let state: String = pair
        .src
        .conn()
        .await
        .unwrap()
        .exec_first(
            "SELECT BINLOG_GTID_POS(?, ?)",
            before.split_once(':').unwrap(),
        )
        .await
        .unwrap()
        .unwrap();
    pair.dst.exec(&["TRUNCATE app.t"]).await.unwrap();
    let (code, out) = rowlog(&["source", "reset", "-c", cfg, "--to-gtid", &state]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!("→ {before} (gtid {state})")),
        "the GTID state maps to the same position:\n{out}"
    );
    let daemon = Daemon::spawn(&config, log.clone());
    pair.assert_converges(&[("app.t", "id")], Duration::from_secs(60))
        .await;
    daemon.terminate_cleanly();

    // A GTID the source never wrote is refused, naming it.
    let (code, out) = rowlog(&["source", "reset", "-c", cfg, "--to-gtid", "0-1-999999"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("0-1-999999"), "{out}");
}
