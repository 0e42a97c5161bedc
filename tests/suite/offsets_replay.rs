//! Moving positions deliberately: `rowlog offsets show | set`, `rowlog replay`,
//! `rowlog source reset`, and what signals do to the daemon.

use crate::common;

use std::process::Command;
use std::time::Duration;

use common::http::{free_port, get, poll};
use common::{Daemon, InProcess, Pair};
use mysql_async::prelude::Queryable;
use rowlog::log::{EmbeddedLog, PartitionedLog};
use rowlog::pipeline::Stats;
use rowlog::testkit::Tansu;

fn rowlog(args: &[&str]) -> (i32, String) {
    rowlog_with(args, &[])
}

/// `rowlog` with environment variables (configuration overrides) set.
fn rowlog_with(args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_rowlog"))
        .args(args)
        .envs(env.iter().copied())
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

/// The partition lines of `rowlog offsets show`, split into their columns (partition,
/// start, end, committed, destination…).
fn partition_lines(out: &str) -> Vec<Vec<&str>> {
    out.lines()
        .filter(|l| l.trim_start().starts_with(|c: char| c.is_ascii_digit()))
        .map(|l| l.split_whitespace().collect())
        .collect()
}

/// A pair whose log is on `kafka` when given, embedded otherwise, with the table
/// `app.t (id, v)` on both servers.
async fn pair_on(kafka: Option<&Tansu>) -> Pair {
    let pair = Pair::start().await;
    if let Some(k) = kafka {
        pair.use_kafka(k.brokers());
    }
    pair.create(&[
        "CREATE DATABASE app",
        "CREATE TABLE app.t (id INT PRIMARY KEY, v INT NOT NULL)",
    ])
    .await;
    pair
}

/// Sleeps into the next whole second (binlog times have whole seconds) and returns
/// its start, in epoch milliseconds.
async fn next_second() -> u64 {
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
    };
    let at = (now() / 1000 + 1) * 1000;
    tokio::time::sleep(Duration::from_millis(at - now() + 50)).await;
    at
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_and_replay_repair_a_damaged_destination() {
    offsets_and_replay_repair_a_damaged_destination_on(None).await
}

/// The same with the log on Kafka: offsets are the consumer group's and the
/// destination's, replay reads the topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_and_replay_repair_a_damaged_destination_through_kafka() {
    let broker = Tansu::start().expect("tansu broker starts");
    offsets_and_replay_repair_a_damaged_destination_on(Some(&broker)).await
}

async fn offsets_and_replay_repair_a_damaged_destination_on(kafka: Option<&Tansu>) {
    let pair = pair_on(kafka).await;
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
    // Nor from another host, which the lock on this host's log.dir does not reach
    // (here: another log.dir): the pipeline's lease on the destination refuses it,
    // naming the daemon that holds it.
    let elsewhere = pair.dir.path().join("elsewhere");
    let other_host = [("ROWLOG__LOG__DIR", elsewhere.to_str().unwrap())];
    let holder = "in use by `rowlog run` on host".to_string();
    let pid = format!("(pid {})", daemon.pid());
    for args in [
        &["offsets", "set", "-c", cfg, "--to-earliest"][..],
        &["source", "reset", "-c", cfg, "--to", "binlog.000001:4"][..],
    ] {
        let (code, out) = rowlog_with(args, &other_host);
        assert_eq!(code, 1, "{args:?}: {out}");
        assert!(
            out.contains(&holder) && out.contains(&pid),
            "{args:?}: {out}"
        );
    }
    if kafka.is_none() {
        // A second daemon of the same name waits for the lease to run out, and the
        // first renews it: the second gives up, naming it. While it waits, its ops
        // port answers: alive, not ready, and /status names the holder.
        let addr = format!("127.0.0.1:{}", free_port());
        let env = [
            ("ROWLOG__LOG__DIR", elsewhere.to_str().unwrap()),
            ("ROWLOG__HTTP__LISTEN", addr.as_str()),
        ];
        let mut second = Daemon::spawn_with(&config, pair.dir.path().join("second.log"), &env);
        let status = poll(
            "the waiting daemon's /status naming the lease's holder",
            Duration::from_secs(30),
            || async {
                let (code, body) = get(&addr, "/status").await?;
                (code == 200 && body.contains(r#""lease":{"state":"waiting""#)).then_some(body)
            },
        )
        .await;
        assert!(
            status.contains("`rowlog run` on host") && status.contains(&pid),
            "{status}"
        );
        assert_eq!(get(&addr, "/healthz").await.map(|r| r.0), Some(200));
        let (code, body) = get(&addr, "/readyz").await.unwrap();
        assert_eq!(code, 503, "{body}");
        assert!(
            body.contains("waiting for the pipeline's lease") && body.contains(&pid),
            "{body}"
        );
        let ended = second.exit_status(
            Duration::from_secs(90),
            "the second daemon gives up waiting for a lease that is renewed",
        );
        assert!(!ended.success(), "{}", second.log());
        let out = second.log();
        assert!(out.contains(&holder) && out.contains(&pid), "{out}");
        assert!(daemon.is_running(), "the second daemon stopped the first");
    }
    // SIGTERM drains and commits: afterwards every partition's committed offset is its end.
    daemon.terminate_cleanly();
    let (code, out) = rowlog(&["offsets", "show", "-c", cfg]);
    assert_eq!(code, 0, "{out}");
    let rows = partition_lines(&out);
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
    assert!(out.contains("partition 0: next offset "), "{out}");
    assert!(out.contains("-> 0: "), "{out}");
    assert!(out.contains("records will be applied again"), "{out}");
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

/// A schema change the destination has applied is not applied again, but rows from
/// before it would be: moving positions back across a TRUNCATE would bring back the
/// rows it removed. `offsets set` and `replay` refuse it, naming the change, and move
/// nothing, unless `--force`. So does a replay of a stretch whose keys change again
/// after it: they would be left at their older versions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moving_back_across_an_applied_schema_change_is_refused_without_force() {
    let pair = pair_on(None).await;
    let config = pair.write_config(2, 2);
    let cfg = config.to_str().unwrap();
    let daemon = Daemon::spawn(&config, pair.dir.path().join("rowlog.log"));
    pair.src
        .exec(&[
            "INSERT INTO app.t SELECT seq, seq FROM app.seq_1_to_100",
            "TRUNCATE TABLE app.t",
        ])
        .await
        .unwrap();
    // Each step below starts in a second of its own.
    let inserted = next_second().await;
    pair.src
        .exec(&["INSERT INTO app.t SELECT seq, seq FROM app.seq_1000_to_1009"])
        .await
        .unwrap();
    let updated = next_second().await;
    pair.src.exec(&["UPDATE app.t SET v = -v"]).await.unwrap();
    pair.assert_converges(&[("app.t", "id")], Duration::from_secs(60))
        .await;
    daemon.terminate_cleanly();
    let (_, before) = rowlog(&["offsets", "show", "-c", cfg]);

    let (code, out) = rowlog(&["offsets", "set", "-c", cfg, "--to-earliest"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("refused"), "{out}");
    assert!(out.contains("TRUNCATE TABLE app.t"), "{out}");
    // All of it, and a stretch that ends before the change: its rows would come back.
    for stretch in [
        &["--from-time", "0"][..],
        &["--from-offset", "0:0", "--to-offset", "1"],
    ] {
        let (code, out) = rowlog(&[&["replay", "-c", cfg][..], stretch].concat());
        assert_eq!(code, 1, "{stretch:?}: {out}");
        assert!(
            out.contains("refused") && out.contains("TRUNCATE TABLE app.t"),
            "{stretch:?}: {out}"
        );
    }
    // The inserts alone: no schema change after them, but their keys were updated.
    let (code, out) = rowlog(&[
        "replay",
        "-c",
        cfg,
        "--from-time",
        &inserted.to_string(),
        "--to-time",
        &updated.to_string(),
    ]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("refused") && out.contains("are to keys it changes"),
        "{out}"
    );
    assert!(!out.contains("TRUNCATE"), "{out}");
    // Nothing moved, nothing was applied.
    let (_, after) = rowlog(&["offsets", "show", "-c", cfg]);
    assert_eq!(before, after);
    assert_eq!(
        count(&pair, "SELECT COUNT(*) FROM app.t WHERE v < 0").await,
        10
    );

    // Forward of the change, nothing is crossed.
    let (code, out) = rowlog(&["offsets", "set", "-c", cfg, "--to-end"]);
    assert_eq!(code, 0, "{out}");
    // With --force the operator takes it on.
    let (code, out) = rowlog(&["offsets", "set", "-c", cfg, "--to-earliest", "--force"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("--force: moving back across"), "{out}");
    // Forward again past the change: allowed (skipping is the operator's decision),
    // and the skipped change is named.
    let (code, out) = rowlog(&["offsets", "set", "-c", cfg, "--to-end"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("skipped with the records") && out.contains("TRUNCATE TABLE app.t"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_reset_re_reads_the_binlog_from_an_earlier_position() {
    source_reset_re_reads_the_binlog_from_an_earlier_position_on(None).await
}

/// The same with the log on Kafka: the checkpoint is in the topic's `.checkpoint`
/// companion, and the reset's new epoch makes the re-read changes sort after the
/// topic's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_reset_re_reads_the_binlog_from_an_earlier_position_through_kafka() {
    let broker = Tansu::start().expect("tansu broker starts");
    source_reset_re_reads_the_binlog_from_an_earlier_position_on(Some(&broker)).await
}

async fn source_reset_re_reads_the_binlog_from_an_earlier_position_on(kafka: Option<&Tansu>) {
    let pair = pair_on(kafka).await;
    let config = pair.write_config(2, 2);
    let cfg = config.to_str().unwrap();
    let log = pair.dir.path().join("rowlog.log");
    let daemon = Daemon::spawn(&config, log.clone());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = master_position(&pair).await;
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

/// The source's binlog position now, `file:pos`.
async fn master_position(pair: &Pair) -> String {
    let row: mysql_async::Row = pair
        .src
        .conn()
        .await
        .unwrap()
        .query_first("SHOW MASTER STATUS")
        .await
        .unwrap()
        .unwrap();
    format!(
        "{}:{}",
        row.get::<String, _>(0).unwrap(),
        row.get::<u64, _>(1).unwrap()
    )
}

/// Reading the source again from before a schema change the destination applied would
/// read that change in a new reading epoch, which its record does not match: it would
/// run a second time (this table swap would swap back, and the rows written before it
/// would land in the other table). `source reset` refuses, naming the changes, unless
/// `--force`; a reset to after them goes through. Before, it went through silently.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_reset_back_across_an_applied_schema_change_is_refused_without_force() {
    let pair = pair_on(None).await;
    let config = pair.write_config(1, 2);
    let cfg = config.to_str().unwrap();
    let daemon = Daemon::spawn(&config, pair.dir.path().join("rowlog.log"));
    pair.src
        .exec(&["INSERT INTO app.t VALUES (1, 1)"])
        .await
        .unwrap();
    let before = master_position(&pair).await;
    pair.src
        .exec(&[
            "CREATE TABLE app.u (id INT PRIMARY KEY, v INT NOT NULL)",
            "INSERT INTO app.u VALUES (2, 2)",
            "RENAME TABLE app.t TO app.tmp, app.u TO app.t, app.tmp TO app.u",
        ])
        .await
        .unwrap();
    let after = master_position(&pair).await;
    pair.src
        .exec(&["INSERT INTO app.t VALUES (3, 3)"])
        .await
        .unwrap();
    pair.assert_converges(&[("app.t", "id"), ("app.u", "id")], Duration::from_secs(60))
        .await;
    daemon.terminate_cleanly();
    let (_, shown) = rowlog(&["offsets", "show", "-c", cfg]);

    let (code, out) = rowlog(&["source", "reset", "-c", cfg, "--to", &before]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("refused"), "{out}");
    assert!(
        out.contains("RENAME TABLE app.t TO app.tmp") && out.contains("CREATE TABLE app.u"),
        "{out}"
    );
    let (_, unchanged) = rowlog(&["offsets", "show", "-c", cfg]);
    assert_eq!(shown, unchanged, "nothing moved");

    let (code, out) = rowlog(&["source", "reset", "-c", cfg, "--to", &after]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(&format!("→ {after}")), "{out}");
    let (code, out) = rowlog(&["source", "reset", "-c", cfg, "--to", &before, "--force"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("--force") && out.contains(&format!("→ {before}")),
        "{out}"
    );
}

/// Moving one partition to an offset, every partition to a time, and replaying an
/// offset range of one partition: each re-applies exactly that stretch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_move_to_an_offset_or_a_time_and_replay_takes_an_offset_range() {
    offsets_move_to_an_offset_or_a_time_and_replay_takes_an_offset_range_on(None).await
}

/// The same with the log on Kafka: times go through the topic's time index.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_move_to_an_offset_or_a_time_and_replay_takes_an_offset_range_through_kafka() {
    let broker = Tansu::start().expect("tansu broker starts");
    offsets_move_to_an_offset_or_a_time_and_replay_takes_an_offset_range_on(Some(&broker)).await
}

async fn offsets_move_to_an_offset_or_a_time_and_replay_takes_an_offset_range_on(
    kafka: Option<&Tansu>,
) {
    let pair = pair_on(kafka).await;
    let config = pair.write_config(2, 2);
    let cfg = config.to_str().unwrap();
    let log = pair.dir.path().join("rowlog.log");
    let daemon = Daemon::spawn(&config, log.clone());
    pair.src
        .exec(&["INSERT INTO app.t SELECT seq, seq FROM app.seq_1_to_200"])
        .await
        .unwrap();
    // Binlog times have second precision: the second batch starts in a later second
    // than the first, and `split` is that second's start.
    let split = next_second().await;
    pair.src
        .exec(&["INSERT INTO app.t SELECT seq, seq FROM app.seq_1001_to_1200"])
        .await
        .unwrap();
    pair.assert_converges(&[("app.t", "id")], Duration::from_secs(60))
        .await;
    daemon.terminate_cleanly();
    pair.dst.exec(&["TRUNCATE app.t"]).await.unwrap();

    // Replay offsets 0..10 of partition 0: ten changes, nothing else.
    let (code, out) = rowlog(&[
        "replay",
        "-c",
        cfg,
        "--from-offset",
        "0:0",
        "--to-offset",
        "10",
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("replayed 10 changes"), "{out}");
    assert_eq!(count(&pair, "SELECT COUNT(*) FROM app.t").await, 10);

    // Every partition from the second batch's time: the daemon applies that batch.
    let (code, out) = rowlog(&["offsets", "set", "-c", cfg, "--to-time", &split.to_string()]);
    assert_eq!(code, 0, "{out}");
    let daemon = Daemon::spawn(&config, log.clone());
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while count(&pair, "SELECT COUNT(*) FROM app.t WHERE id > 1000").await < 200 {
        assert!(
            std::time::Instant::now() < deadline,
            "the second batch never came"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    daemon.terminate_cleanly();
    assert_eq!(
        count(&pair, "SELECT COUNT(*) FROM app.t WHERE id <= 200").await,
        10,
        "nothing before the time was applied again"
    );

    // One partition back to offset 0: its share of the first batch comes back, the
    // other partition's does not.
    let (code, out) = rowlog(&["offsets", "set", "-c", cfg, "--partition", "1", "--to", "0"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("partition 1: next offset ") && out.contains("-> 0: "),
        "{out}"
    );
    let daemon = Daemon::spawn(&config, log.clone());
    tokio::time::sleep(Duration::from_secs(3)).await;
    daemon.terminate_cleanly();
    let first_batch = count(&pair, "SELECT COUNT(*) FROM app.t WHERE id <= 200").await;
    assert!(
        first_batch > 10 && first_batch < 200,
        "partition 1's part of the first batch only: {first_batch}"
    );
    assert_eq!(
        count(&pair, "SELECT COUNT(*) FROM app.t WHERE id > 1000").await,
        200
    );
}

/// SIGTERM drains within `shutdown_timeout_secs`; a drain that cannot finish (the
/// destination holds a lock the worker waits for) ends the process at the deadline with
/// exit 1 and a log line, and the next start applies what was left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_that_cannot_finish_ends_at_the_shutdown_deadline_and_loses_nothing() {
    let pair = Pair::start().await;
    pair.create(&[
        "CREATE DATABASE app",
        "CREATE TABLE app.t (id INT PRIMARY KEY, v INT NOT NULL)",
        "INSERT INTO app.t VALUES (1, 1)",
    ])
    .await;
    pair.dst
        .exec(&["SET GLOBAL innodb_lock_wait_timeout = 100"])
        .await
        .unwrap();
    let toml = pair.config_toml(1, 1).replace(
        "name = \"test\"\n",
        "name = \"test\"\nshutdown_timeout_secs = 2\n",
    );
    let config = pair.dir.path().join("deadline.toml");
    std::fs::write(&config, toml).unwrap();
    let log = pair.dir.path().join("rowlog.log");
    let mut holder = pair.dst.conn().await.unwrap();
    holder.query_drop("BEGIN").await.unwrap();
    holder
        .query_drop("SELECT * FROM app.t WHERE id = 1 FOR UPDATE")
        .await
        .unwrap();
    let mut daemon = Daemon::spawn(&config, log.clone());
    pair.src
        .exec(&["UPDATE app.t SET v = 2 WHERE id = 1"])
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let sent = std::time::Instant::now();
    Command::new("kill")
        .args(["-TERM", &daemon.pid().to_string()])
        .status()
        .unwrap();
    while daemon.is_running() {
        assert!(
            sent.elapsed() < Duration::from_secs(20),
            "no exit at the deadline"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let waited = sent.elapsed();
    assert!(waited >= Duration::from_secs(2), "exited after {waited:?}");
    let text = daemon.log();
    assert!(text.contains("draining did not finish in time"), "{text}");
    drop(daemon);

    holder.query_drop("ROLLBACK").await.unwrap();
    let daemon = Daemon::spawn(&config, log);
    pair.assert_converges(&[("app.t", "id")], Duration::from_secs(60))
        .await;
    daemon.terminate_cleanly();
}

/// A daemon whose lease ran out before it renewed it (a pause, a destination it could
/// not reach) while no other process took it stops every stage and starts again from
/// its stored positions, taking the lease again. One whose lease another process took
/// stops, naming it, instead of taking it back: that process may have moved its
/// positions meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lapsed_lease_restarts_the_pipeline_and_a_taken_one_stops_it() {
    let pair = pair_on(None).await;
    let mut rowlog = running_with_one_row(&pair).await;
    // Run out, still naming this process; at once a change, whose batch finds the
    // lease run out (unless the renewal finds it first): either way the row is left
    // naming this process, and the pipeline takes it back.
    pair.dst
        .exec(&["UPDATE rowlog.rowlog_lease SET expires_at = NOW(6) - INTERVAL 1 SECOND"])
        .await
        .unwrap();
    pair.src
        .exec(&["INSERT INTO app.t VALUES (2, 2)"])
        .await
        .unwrap();
    let restarted = std::time::Instant::now() + Duration::from_secs(30);
    while Stats::get(&rowlog.stats.restarts) == 0 {
        assert!(
            !rowlog.finished() && std::time::Instant::now() < restarted,
            "rowlog did not start again after its lease lapsed (ended: {})",
            rowlog.finished()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    pair.src
        .exec(&["INSERT INTO app.t VALUES (3, 3)"])
        .await
        .unwrap();
    rowlog
        .assert_converges_running(&pair, &[("app.t", "id")], Duration::from_secs(60))
        .await;

    give_the_lease_elsewhere(&pair, "rowlog offsets set").await;
    let error = rowlog
        .stopped_error(
            Duration::from_secs(30),
            "rowlog kept running without its lease",
        )
        .await;
    assert!(
        error.contains("lost its lease")
            && error.contains("`rowlog offsets set` on host elsewhere (pid 1) holds it now"),
        "{error}"
    );
}

/// A daemon learns that its lease was taken only at its next renewal, up to 10 s
/// later; what it applies meanwhile is fenced: a batch that finds the lease gone is
/// rolled back, and the pipeline stops, naming who holds it now. The change is not
/// lost: it is applied when rowlog holds the lease again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_whose_lease_was_taken_commits_nothing_more() {
    let pair = pair_on(None).await;
    let rowlog = running_with_one_row(&pair).await;
    // Another process takes the lease (as after this one's pause); at once, a change.
    give_the_lease_elsewhere(&pair, "rowlog run").await;
    pair.src
        .exec(&["INSERT INTO app.t VALUES (2, 2)"])
        .await
        .unwrap();
    let error = rowlog
        .stopped_error(
            Duration::from_secs(30),
            "rowlog kept running without its lease",
        )
        .await;
    assert!(error.contains("on host elsewhere (pid 1)"), "{error}");
    assert_eq!(
        common::count(&pair.dst, "app.t WHERE id = 2").await,
        0,
        "a change was applied after the lease was taken ({error})"
    );

    // The other process goes away: the change arrives.
    pair.dst
        .exec(&["DELETE FROM rowlog.rowlog_lease"])
        .await
        .unwrap();
    let mut rowlog = InProcess::start(pair.config(1, 2));
    rowlog
        .assert_converges_running(&pair, &[("app.t", "id")], Duration::from_secs(60))
        .await;
    rowlog.stop().await;
}

/// The progress a run raises at its start is fenced like a batch: a process that lost
/// the pipeline writes no progress row (an operator who took the pipeline over may
/// have moved its positions back since that process read them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_without_the_lease_raises_no_progress() {
    use rowlog_api::{ChangeSink, Retry, WorkerProgress};
    let pair = pair_on(None).await;
    running_with_one_row(&pair).await.stop().await;
    give_the_lease_elsewhere(&pair, "rowlog offsets set").await;
    let cfg = pair.config(1, 2);
    let before = count(&pair, "SELECT SUM(log_offset) FROM rowlog.rowlog_progress").await;
    let mut sink = rowlog_mysql_sink::MySqlSink::connect(&cfg.sink, &cfg.name)
        .await
        .unwrap()
        .fenced_by(rowlog_mysql_sink::lease::fence(&cfg.sink, &cfg.name));
    // New rows of another count, and the one worker's row of this run raised.
    let mut rows: Vec<WorkerProgress> = (0..2)
        .map(|w| WorkerProgress {
            log_id: 1,
            partition: 0,
            worker: w,
            workers: 2,
            offset: 1_000_000,
        })
        .collect();
    let log_id: u64 = count(&pair, "SELECT MAX(log_id) FROM rowlog.rowlog_progress").await;
    for p in 0..2 {
        rows.push(WorkerProgress {
            log_id,
            partition: p,
            worker: 0,
            workers: 1,
            offset: 1_000_000,
        });
    }
    for p in 0..2 {
        let mine: Vec<WorkerProgress> = rows.iter().copied().filter(|r| r.partition == p).collect();
        let error = sink.raise_progress(p, &mine).await.unwrap_err();
        assert!(error.is_fenced(), "{error}");
    }
    let after = count(&pair, "SELECT SUM(log_offset) FROM rowlog.rowlog_progress").await;
    assert_eq!(after, before, "no progress row was written or raised");
    let raised = count(
        &pair,
        "SELECT COUNT(*) FROM rowlog.rowlog_progress WHERE workers = 2",
    )
    .await;
    assert_eq!(raised, 0, "no progress row was written");
}

/// rowlog running in this process, with `app.t`'s first row applied.
async fn running_with_one_row(pair: &Pair) -> InProcess {
    let mut rowlog = InProcess::start(pair.config(1, 2));
    pair.src
        .exec(&["INSERT INTO app.t VALUES (1, 1)"])
        .await
        .unwrap();
    rowlog
        .assert_converges_running(pair, &[("app.t", "id")], Duration::from_secs(60))
        .await;
    rowlog
}

/// Another process (`what` on host "elsewhere", pid 1) takes the pipeline's lease.
async fn give_the_lease_elsewhere(pair: &Pair, what: &str) {
    pair.dst
        .exec(&[&format!(
            "UPDATE rowlog.rowlog_lease SET host = 'elsewhere', pid = 1, token = 1, \
             what = '{what}', expires_at = NOW(6) + INTERVAL 60 SECOND"
        )])
        .await
        .unwrap();
}

/// A restart with another `sink.workers` applies nothing twice: a change a worker of
/// the earlier count applied is looked up under that count's split, so keys that moved
/// to another worker are not replayed from the log's committed offset, which lags the
/// destination by up to a second (a crash in that second leaves it there). Before,
/// rows of another worker count were dropped and that stretch was applied again:
/// a keyless table got its rows twice. The progress table starts in the shape made
/// before 2026-11-28, keyed without the worker count, and is migrated: under that key
/// a run of two workers overwrote the rows of workers 0 and 1 of three, whose keys
/// two workers split otherwise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_with_another_worker_count_applies_nothing_twice() {
    let pair = pair_on(None).await;
    pair.create(&["CREATE TABLE app.k (v INT NOT NULL)"]).await;
    pair.dst
        .exec(&[
            "CREATE DATABASE IF NOT EXISTS rowlog",
            "CREATE TABLE rowlog.rowlog_progress (pipeline VARCHAR(128) NOT NULL, \
             log_id BIGINT UNSIGNED NOT NULL, part INT UNSIGNED NOT NULL, \
             worker INT UNSIGNED NOT NULL, workers INT UNSIGNED NOT NULL, \
             log_offset BIGINT UNSIGNED NOT NULL, source_position VARCHAR(512) NOT NULL, \
             source_commit_ms BIGINT UNSIGNED NOT NULL, \
             updated_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6), \
             PRIMARY KEY (pipeline, part, worker)) ENGINE=InnoDB",
        ])
        .await
        .unwrap();
    let tables = [("app.k", "v"), ("app.t", "id")];
    let mut next = 0;
    // The run of two workers applies one row, which one of its workers gets: under
    // the old key its rows overwrote those of workers 0 and 1 of three, and the
    // earlier count's rows lost what they said (checked: with the migration switched
    // off this test fails).
    // The second run of four starts where the four workers' rows say and removes the
    // rows of three and two workers, all below. Then one worker, as a pipeline that
    // ran with the default of 4 and is upgraded to today's default of 1 (2026-11-29):
    // its second run removes the rows of four.
    for (workers, txns, rows) in [
        (3, 10, 20),
        (2, 1, 1),
        (4, 10, 20),
        (4, 1, 20),
        (1, 10, 20),
        (1, 1, 20),
    ] {
        let mut cfg = pair.config(workers, 2);
        cfg.source.no_pk = rowlog_mysql_binlog::NoPrimaryKey::FullRow;
        let mut rowlog = InProcess::start(cfg.clone());
        for _ in 0..txns {
            let values: Vec<String> = (next..next + rows).map(|v| format!("({v})")).collect();
            let mut txn = vec![
                "BEGIN".to_string(),
                format!("INSERT INTO app.k VALUES {}", values.join(",")),
            ];
            if rows > 1 {
                txn.push(format!("INSERT INTO app.t VALUES ({next}, 0)"));
                txn.push(format!("UPDATE app.t SET v = v + 1 WHERE id < {next}"));
            }
            txn.push("COMMIT".into());
            let txn: Vec<&str> = txn.iter().map(String::as_str).collect();
            pair.src.exec(&txn).await.unwrap();
            next += rows;
        }
        rowlog
            .assert_converges_running(&pair, &tables, Duration::from_secs(60))
            .await;
        // A clean stop drains what was dispatched: a replayed row would be in by now.
        rowlog.stop().await;
        assert_eq!(
            common::count(&pair.dst, "app.k").await,
            next as u64,
            "with {workers} workers every keyless row is on the destination once"
        );
        // The log's committed offsets as a crash right after these batches leaves
        // them: from before this run (here: none).
        let log =
            EmbeddedLog::open(&cfg.log.dir, cfg.log.partitions, cfg.log.segment_bytes).unwrap();
        for p in 0..cfg.log.partitions {
            log.commit(&cfg.apply().consumer, p, 0).await.unwrap();
        }
    }
    let counts: Vec<u32> = pair
        .dst
        .conn()
        .await
        .unwrap()
        .query("SELECT DISTINCT workers FROM rowlog.rowlog_progress ORDER BY workers")
        .await
        .unwrap();
    assert_eq!(
        counts,
        vec![1],
        "the rows of earlier worker counts are gone once one worker passed them"
    );
}

/// A worker that gets no change in a run still stores progress: every run raises its
/// workers' rows to just below where it starts. Here one key takes every change, so
/// one worker of each count is busy and the others idle. Before, an idle worker
/// stored no row, its count never set a restart's start, and the rows of earlier
/// worker counts stayed for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_workers_store_progress_so_earlier_worker_counts_are_let_go() {
    let pair = pair_on(None).await;
    pair.src
        .exec(&["INSERT INTO app.t VALUES (1, 0)"])
        .await
        .unwrap();
    // Four runs: the three-worker row goes once the two-worker count's lowest row is
    // past it by more than one, i.e. once a run's start has raised the idle worker's
    // row above where the first run of two started.
    for (run, workers) in [3, 2, 2, 2].into_iter().enumerate() {
        let mut rowlog = InProcess::start(pair.config(workers, 2));
        for _ in 0..5 {
            pair.src
                .exec(&["UPDATE app.t SET v = v + 1 WHERE id = 1"])
                .await
                .unwrap();
        }
        rowlog
            .assert_converges_running(&pair, &[("app.t", "id")], Duration::from_secs(60))
            .await;
        rowlog.stop().await;
        if run == 1 {
            // The partition that holds the key (the other has nothing in its log):
            // every worker of two has a row.
            let rows = count(
                &pair,
                "SELECT MAX(n) FROM (SELECT COUNT(*) AS n FROM rowlog.rowlog_progress \
                 WHERE workers = 2 GROUP BY part) AS per_partition",
            )
            .await;
            assert_eq!(rows, 2, "both workers of two stored progress");
        }
    }
    let counts: Vec<u32> = pair
        .dst
        .conn()
        .await
        .unwrap()
        .query("SELECT DISTINCT workers FROM rowlog.rowlog_progress ORDER BY workers")
        .await
        .unwrap();
    assert_eq!(
        counts,
        vec![2],
        "the three-worker row is gone once every worker of two passed it"
    );
}

/// An upgrade keeps what an old progress table says: a table in the shape made before
/// 2026-11-28 (keyed without the worker count) that holds the rows of a run is
/// migrated in place, rows and all. After a crash that left the log's committed offsets
/// behind them, the next run (with another worker count) skips what those rows cover,
/// so no keyless row is applied twice; a migration that lost or ignored the rows would
/// replay the whole stretch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_keeps_the_progress_rows_of_an_old_progress_table() {
    let pair = pair_on(None).await;
    pair.create(&["CREATE TABLE app.k (v INT NOT NULL)"]).await;
    let tables = [("app.k", "v"), ("app.t", "id")];
    let mut next = 0;
    // A third run, with yet another count, is where rows lost under the old key
    // would show.
    for (workers, old_table) in [(3, true), (2, false), (4, false)] {
        let mut cfg = pair.config(workers, 2);
        cfg.source.no_pk = rowlog_mysql_binlog::NoPrimaryKey::FullRow;
        let mut rowlog = InProcess::start(cfg.clone());
        for _ in 0..10 {
            let values: Vec<String> = (next..next + 20).map(|v| format!("({v})")).collect();
            pair.src
                .exec(&[
                    "BEGIN",
                    &format!("INSERT INTO app.k VALUES {}", values.join(",")),
                    &format!("INSERT INTO app.t VALUES ({next}, 0)"),
                    "COMMIT",
                ])
                .await
                .unwrap();
            next += 20;
        }
        rowlog
            .assert_converges_running(&pair, &tables, Duration::from_secs(60))
            .await;
        rowlog.stop().await;
        assert_eq!(
            common::count(&pair.dst, "app.k").await,
            next as u64,
            "with {workers} workers every keyless row is on the destination once"
        );
        if old_table {
            // What the version before 2026-11-28 left: its key, with its rows.
            pair.dst
                .exec(&["ALTER TABLE rowlog.rowlog_progress DROP PRIMARY KEY, \
                         ADD PRIMARY KEY (pipeline, part, worker)"])
                .await
                .unwrap();
            let rows = count(&pair, "SELECT COUNT(*) FROM rowlog.rowlog_progress").await;
            assert!(rows >= 3, "the old table holds the run's rows: {rows}");
        }
        // A crash right after the batches: the log's committed offsets from before
        // every run.
        let log =
            EmbeddedLog::open(&cfg.log.dir, cfg.log.partitions, cfg.log.segment_bytes).unwrap();
        for p in 0..cfg.log.partitions {
            log.commit(&cfg.apply().consumer, p, 0).await.unwrap();
        }
    }
    let keyed_by_count = count(
        &pair,
        "SELECT COUNT(*) FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = 'rowlog' \
         AND TABLE_NAME = 'rowlog_progress' AND INDEX_NAME = 'PRIMARY' AND COLUMN_NAME = 'workers'",
    )
    .await;
    assert_eq!(
        keyed_by_count, 1,
        "the progress table's key names the worker count"
    );
}

/// `rowlog offsets show` takes no lock on the progress rows: it answers while a
/// worker's batch holds its partition's row (here an open transaction that locked it),
/// and so never holds off a worker's progress write either. With a locking read it
/// waited for the lock and failed with a lock wait timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_show_answers_while_a_batch_holds_the_progress_rows() {
    let pair = pair_on(None).await;
    let config = pair.write_config(1, 2);
    running_with_one_row(&pair).await.stop().await;
    // A lock wait gives up after 2 s instead of 50 (for connections made from here on).
    pair.dst
        .exec(&["SET GLOBAL innodb_lock_wait_timeout = 2"])
        .await
        .unwrap();
    let mut batch = pair.dst.conn().await.unwrap();
    batch.query_drop("BEGIN").await.unwrap();
    batch
        .query_drop("UPDATE rowlog.rowlog_progress SET log_offset = log_offset")
        .await
        .unwrap();
    let held: u64 = batch
        .query_first("SELECT COUNT(*) FROM rowlog.rowlog_progress FOR UPDATE")
        .await
        .unwrap()
        .unwrap();
    assert!(held >= 1, "the open transaction holds a progress row");

    let (code, out) = rowlog(&["offsets", "show", "-c", config.to_str().unwrap()]);
    batch.query_drop("ROLLBACK").await.unwrap();
    assert_eq!(code, 0, "{out}");
    let rows = partition_lines(&out);
    assert_eq!(rows.len(), 2, "{out}");
    assert!(
        rows.iter().any(|r| r[4] != "-"),
        "the destination's positions are shown: {out}"
    );
}

/// `rowlog offsets show` only reads: pointed at a destination without rowlog's
/// progress table (a new one, or one whose table was dropped) it shows no destination
/// positions and creates nothing there. It runs beside the daemon, which may be of
/// another version, so it must not create or migrate the table itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_show_reads_without_creating_anything_on_the_destination() {
    let pair = pair_on(None).await;
    let config = pair.write_config(2, 2);
    running_with_one_row(&pair).await.stop().await;
    pair.dst.exec(&["DROP DATABASE rowlog"]).await.unwrap();

    let (code, out) = rowlog(&["offsets", "show", "-c", config.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    let rows = partition_lines(&out);
    assert_eq!(rows.len(), 2, "{out}");
    assert!(
        rows.iter().all(|r| r[4] == "-"),
        "no destination positions: {out}"
    );
    let dbs: Vec<String> = pair
        .dst
        .conn()
        .await
        .unwrap()
        .query("SHOW DATABASES LIKE 'rowlog'")
        .await
        .unwrap();
    assert!(dbs.is_empty(), "offsets show made {dbs:?}");
}
