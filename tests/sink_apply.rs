//! The apply path under conflict and fault: secondary unique keys swapped across
//! workers, lock waits, a destination restart, and a change the destination rejects
//! for good.

mod common;

use std::time::{Duration, Instant};

use common::{InProcess, Pair};
use mysql_async::prelude::Queryable;
use rowlog::pipeline::partitioner::{key_hash, partition_of};
use rowlog::pipeline::Stats;
use rowlog_api::{key_bytes, TableName, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unique_key_swaps_and_chains_across_workers_converge() {
    let pair = Pair::start().await;
    pair.create(&[
        "CREATE DATABASE app",
        "CREATE TABLE app.users (id INT PRIMARY KEY, email VARCHAR(64) NOT NULL, n INT NOT NULL, UNIQUE KEY email (email))",
    ])
    .await;
    let rowlog = InProcess::start(pair.config(4, 8));
    let mut c = pair.src.conn().await.unwrap();
    let users = 60usize;
    let mut email: Vec<String> = (0..users).map(|i| format!("user{i}@example.com")).collect();
    c.query_drop(format!(
        "INSERT INTO app.users VALUES {}",
        (0..users)
            .map(|i| format!("({i}, '{}', 0)", email[i]))
            .collect::<Vec<_>>()
            .join(",")
    ))
    .await
    .unwrap();
    for round in 0..400usize {
        let a = (round * 7) % users;
        let b = (round * 13 + 5) % users;
        let d = (round * 29 + 11) % users;
        if a == b || b == d || a == d {
            continue;
        }
        let mut tx = c.start_transaction(Default::default()).await.unwrap();
        if round % 2 == 0 {
            // Swap a and b through a temporary value.
            tx.query_drop(format!(
                "UPDATE app.users SET email = 'tmp', n = n + 1 WHERE id = {a}"
            ))
            .await
            .unwrap();
            tx.query_drop(format!(
                "UPDATE app.users SET email = '{}', n = n + 1 WHERE id = {b}",
                email[a]
            ))
            .await
            .unwrap();
            tx.query_drop(format!(
                "UPDATE app.users SET email = '{}' WHERE id = {a}",
                email[b]
            ))
            .await
            .unwrap();
            email.swap(a, b);
        } else {
            // Rotate a → b → d → a.
            tx.query_drop(format!("UPDATE app.users SET email = 'tmp' WHERE id = {a}"))
                .await
                .unwrap();
            tx.query_drop(format!(
                "UPDATE app.users SET email = '{}' WHERE id = {d}",
                email[a]
            ))
            .await
            .unwrap();
            tx.query_drop(format!(
                "UPDATE app.users SET email = '{}' WHERE id = {b}",
                email[d]
            ))
            .await
            .unwrap();
            tx.query_drop(format!(
                "UPDATE app.users SET email = '{}', n = n + 1 WHERE id = {a}",
                email[b]
            ))
            .await
            .unwrap();
            let (ea, eb, ed) = (email[a].clone(), email[b].clone(), email[d].clone());
            email[d] = ea;
            email[b] = ed;
            email[a] = eb;
        }
        tx.commit().await.unwrap();
    }
    pair.assert_converges(&[("app.users", "id")], Duration::from_secs(90))
        .await;
    let stats = rowlog.stop().await;
    assert!(stats.halted().is_empty(), "{:?}", stats.halted());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_wait_timeout_is_retried_until_the_lock_is_released() {
    let pair = Pair::start().await;
    pair.create(&[
        "CREATE DATABASE app",
        "CREATE TABLE app.t (id INT PRIMARY KEY, v INT NOT NULL)",
    ])
    .await;
    pair.dst
        .exec(&["SET GLOBAL innodb_lock_wait_timeout = 1"])
        .await
        .unwrap();
    let rowlog = InProcess::start(pair.config(2, 2));
    pair.src
        .exec(&["INSERT INTO app.t VALUES (1, 1), (2, 2)"])
        .await
        .unwrap();
    pair.assert_converges(&[("app.t", "id")], Duration::from_secs(30))
        .await;

    // Another session holds the row rowlog must update.
    let mut holder = pair.dst.conn().await.unwrap();
    holder.query_drop("BEGIN").await.unwrap();
    holder
        .query_drop("SELECT * FROM app.t WHERE id = 1 FOR UPDATE")
        .await
        .unwrap();
    pair.src
        .exec(&["UPDATE app.t SET v = 10 WHERE id = 1"])
        .await
        .unwrap();
    let started = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut d = pair.dst.conn().await.unwrap();
        // Read without locking: still the old value while the lock is held.
        let v: i32 = d
            .query_first("SELECT v FROM app.t WHERE id = 1")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(v, 1);
        if started.elapsed() > Duration::from_secs(4) {
            break;
        }
    }
    holder.query_drop("ROLLBACK").await.unwrap();
    pair.assert_converges(&[("app.t", "id")], Duration::from_secs(60))
        .await;
    let stats = rowlog.stop().await;
    assert!(
        Stats::get(&stats.apply_retries) >= 1,
        "the lock wait timeout was retried"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_restart_mid_stream_loses_nothing() {
    let mut pair = Pair::start().await;
    pair.create(&[
        "CREATE DATABASE app",
        "CREATE TABLE app.t (id INT PRIMARY KEY, v INT NOT NULL)",
    ])
    .await;
    let rowlog = InProcess::start(pair.config(2, 4));
    let src_url = pair.src.url();
    let writer = tokio::spawn(async move {
        let mut c = mysql_async::Conn::new(mysql_async::Opts::from_url(&src_url).unwrap())
            .await
            .unwrap();
        for i in 0..400 {
            c.query_drop(format!(
                "INSERT INTO app.t SELECT seq, {i} FROM app.seq_{}_to_{}",
                i * 10 + 1,
                i * 10 + 10
            ))
            .await
            .unwrap();
            c.query_drop(format!(
                "UPDATE app.t SET v = v + 1 WHERE id % 37 = {}",
                i % 37
            ))
            .await
            .unwrap();
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    pair.dst.stop();
    tokio::time::sleep(Duration::from_secs(5)).await;
    pair.dst.restart().await.unwrap();
    writer.await.unwrap();
    pair.assert_converges(&[("app.t", "id")], Duration::from_secs(120))
        .await;
    let stats = rowlog.stop().await;
    assert!(
        Stats::get(&stats.apply_retries) >= 1,
        "batches were retried while the destination was down"
    );
}

fn partition_of_key(table: &str, id: i64, partitions: u32) -> u32 {
    let key = [Value::Int(id)];
    partition_of(
        key_hash(&key_bytes(&TableName::new("app", table), key.iter())),
        partitions,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_the_destination_rejects_halts_its_partition_naming_it_and_others_continue() {
    let pair = Pair::start().await;
    pair.src
        .exec(&[
            "CREATE DATABASE app",
            "CREATE TABLE app.bad (id INT PRIMARY KEY, extra INT)",
            "CREATE TABLE app.good (id INT PRIMARY KEY)",
        ])
        .await
        .unwrap();
    // The destination's table lacks a column: every change to it is rejected for good.
    pair.dst
        .exec(&[
            "CREATE DATABASE app",
            "CREATE TABLE app.bad (id INT PRIMARY KEY)",
            "CREATE TABLE app.good (id INT PRIMARY KEY)",
        ])
        .await
        .unwrap();
    let partitions = 4;
    let rowlog = InProcess::start(pair.config(2, partitions));
    pair.src
        .exec(&[
            "INSERT INTO app.bad VALUES (7, 1)",
            "INSERT INTO app.good SELECT seq FROM app.seq_1_to_400",
        ])
        .await
        .unwrap();
    let halted_partition = partition_of_key("bad", 7, partitions);
    let expected: Vec<i64> = (1..=400)
        .filter(|&id| partition_of_key("good", id, partitions) != halted_partition)
        .collect();
    assert!(!expected.is_empty());

    let mut d = pair.dst.conn().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let present: Vec<i64> = d
            .query("SELECT id FROM app.good ORDER BY id")
            .await
            .unwrap();
        if expected.iter().all(|id| present.binary_search(id).is_ok()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "partitions other than {halted_partition} did not apply their rows"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let result = rowlog.stop_result().await;
    let err =
        rowlog::report::error_chain(&result.err().expect("a halted partition makes the run fail"));
    for needle in [
        format!("partition {halted_partition}"),
        "app.bad".to_string(),
        "key id=7".to_string(),
        "log offsets up to".to_string(),
        "source binlog.".to_string(),
        "Unknown column 'extra'".to_string(),
    ] {
        assert!(
            err.contains(&needle),
            "error does not say {needle:?}: {err}"
        );
    }
    let bad: u64 = d
        .query_first("SELECT COUNT(*) FROM app.bad")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(bad, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_dead_letter_file_a_rejected_change_is_recorded_there_and_the_partition_goes_on() {
    let pair = Pair::start().await;
    pair.src
        .exec(&[
            "CREATE DATABASE app",
            "CREATE TABLE app.c (id INT PRIMARY KEY, v INT NOT NULL)",
        ])
        .await
        .unwrap();
    pair.dst
        .exec(&["CREATE DATABASE app", "CREATE TABLE app.c (id INT PRIMARY KEY, v INT NOT NULL, CONSTRAINT small CHECK (v < 100))"])
        .await
        .unwrap();
    let dead = pair.dir.path().join("dead-letter.jsonl");
    let config = || {
        let mut cfg = pair.config(1, 1);
        cfg.sink.dead_letter_file = Some(dead.clone());
        cfg
    };
    let rowlog = InProcess::start(config());
    // One partition, one worker: the rejected row sits in the middle of one batch.
    pair.src
        .exec(&["INSERT INTO app.c SELECT seq, IF(seq = 7, 500, seq) FROM app.seq_1_to_20"])
        .await
        .unwrap();
    pair.src
        .exec(&["INSERT INTO app.c SELECT seq, seq FROM app.seq_21_to_30"])
        .await
        .unwrap();
    let mut d = pair.dst.conn().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let n: u64 = d
            .query_first("SELECT COUNT(*) FROM app.c")
            .await
            .unwrap()
            .unwrap();
        if n == 29 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {n} of the 29 acceptable rows arrived"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let missing: Vec<i32> = d
        .query("SELECT seq FROM app.seq_1_to_30 WHERE seq NOT IN (SELECT id FROM app.c)")
        .await
        .unwrap();
    assert_eq!(missing, vec![7]);
    let stats = rowlog.stop().await;
    assert!(stats.halted().is_empty(), "{:?}", stats.halted());
    assert_eq!(Stats::get(&stats.dead_lettered), 1);

    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&dead)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["record"]["table"], "app.c");
    assert_eq!(lines[0]["record"]["key"][0], 7);
    assert_eq!(lines[0]["record"]["after"]["v"], 500);
    assert!(
        lines[0]["error"].as_str().unwrap().contains("small"),
        "{}",
        lines[0]["error"]
    );

    // After a restart the rejected change is not tried (and recorded) again.
    let rowlog = InProcess::start(config());
    pair.src
        .exec(&["INSERT INTO app.c VALUES (31, 31)"])
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while d
        .query_first::<u64, _>("SELECT COUNT(*) FROM app.c")
        .await
        .unwrap()
        .unwrap()
        != 30
    {
        assert!(Instant::now() < deadline, "row 31 did not arrive");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    rowlog.stop().await;
    assert_eq!(std::fs::read_to_string(&dead).unwrap().lines().count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadlock_on_the_destination_is_retried_without_loss() {
    let pair = Pair::start().await;
    pair.create(&[
        "CREATE DATABASE app",
        "CREATE TABLE app.t (id INT PRIMARY KEY, v INT NOT NULL)",
    ])
    .await;
    // Destination only: a table whose many changes make the other session the heavier
    // transaction (InnoDB rolls back the lighter one of a deadlock: rowlog's), and a
    // trigger that keeps rowlog's transaction open while it holds row 1.
    pair.dst
        .exec(&[
            "CREATE TABLE app.scratch (id INT PRIMARY KEY, x INT NOT NULL)",
            "INSERT INTO app.scratch SELECT seq, 0 FROM app.seq_1_to_500",
            "CREATE TRIGGER app.slow BEFORE INSERT ON app.t FOR EACH ROW BEGIN IF NEW.id = 2 AND NEW.v = 21 THEN DO SLEEP(2); END IF; END",
        ])
        .await
        .unwrap();
    let rowlog = InProcess::start(pair.config(1, 1));
    pair.src
        .exec(&["INSERT INTO app.t VALUES (1, 10), (2, 20)"])
        .await
        .unwrap();
    pair.assert_converges(&[("app.t", "id")], Duration::from_secs(30))
        .await;

    // rowlog's batch: upsert 1 (locks row 1), then 2 (the trigger sleeps first).
    pair.src
        .exec(&["UPDATE app.t SET v = v + 1 WHERE id IN (1, 2)"])
        .await
        .unwrap();
    // Wait until rowlog's statement is inside the trigger's sleep, holding row 1.
    let mut other = pair.dst.conn().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let sleeping: u64 = other
            .query_first("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE INFO LIKE 'DO SLEEP%' OR STATE = 'User sleep'")
            .await
            .unwrap()
            .unwrap();
        if sleeping > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "rowlog never reached the slow trigger"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    other.query_drop("BEGIN").await.unwrap();
    other
        .query_drop("UPDATE app.scratch SET x = x + 1")
        .await
        .unwrap();
    other
        .query_drop("UPDATE app.t SET v = v WHERE id = 2")
        .await
        .unwrap();
    // Waits for row 1; when rowlog wakes and asks for row 2, InnoDB sees the cycle.
    other
        .query_drop("UPDATE app.t SET v = v WHERE id = 1")
        .await
        .unwrap();
    other.query_drop("COMMIT").await.unwrap();

    pair.assert_converges(&[("app.t", "id")], Duration::from_secs(60))
        .await;
    let status: mysql_async::Row = pair
        .dst
        .conn()
        .await
        .unwrap()
        .query_first("SHOW ENGINE INNODB STATUS")
        .await
        .unwrap()
        .unwrap();
    let text: String = status.get("Status").unwrap();
    assert!(
        text.contains("LATEST DETECTED DEADLOCK"),
        "no deadlock happened: {text}"
    );
    let stats = rowlog.stop().await;
    assert!(
        Stats::get(&stats.apply_retries) >= 1,
        "the deadlock was retried"
    );
}
