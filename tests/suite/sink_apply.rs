//! The apply path under conflict and fault: secondary unique keys swapped across
//! workers, lock waits, a destination restart, a change the destination rejects for
//! good, and generated columns the destination computes out of strict bounds.

use crate::common;

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
    let mut holder = hold(&pair, "SELECT * FROM app.t WHERE id = 1 FOR UPDATE").await;
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

/// A destination down for longer than the pipeline's lease: the lease lapses, every
/// stage stops, and the pipeline starts again from its stored positions once the
/// destination answers, instead of exiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_down_longer_than_the_lease_is_ridden_out() {
    let mut pair = Pair::start().await;
    pair.create(&[
        "CREATE DATABASE app",
        "CREATE TABLE app.t (id INT PRIMARY KEY, v INT NOT NULL)",
    ])
    .await;
    let mut cfg = pair.config(2, 2);
    cfg.sink.lease_secs = 3;
    let mut rowlog = InProcess::start(cfg);
    pair.src
        .exec(&["INSERT INTO app.t SELECT seq, 0 FROM app.seq_1_to_100"])
        .await
        .unwrap();
    rowlog
        .assert_converges_running(&pair, &[("app.t", "id")], Duration::from_secs(60))
        .await;
    pair.dst.stop();
    // Changes made while the destination is down (three lifetimes of the lease).
    pair.src
        .exec(&[
            "UPDATE app.t SET v = id",
            "INSERT INTO app.t VALUES (1000, 1)",
        ])
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(9)).await;
    pair.dst.restart().await.unwrap();
    rowlog
        .assert_converges_running(&pair, &[("app.t", "id")], Duration::from_secs(120))
        .await;
    let stats = rowlog.stop().await;
    assert!(
        Stats::get(&stats.restarts) >= 1,
        "the lease lapsed while the destination was down, and the pipeline started again"
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
    // A schema change must gather every partition, and the halted one never comes:
    // the others halt there too, each saying which partition it waits for.
    pair.src
        .exec(&["CREATE TABLE app.later (id INT PRIMARY KEY)"])
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while rowlog.stats.halted().len() < partitions as usize {
        assert!(
            Instant::now() < deadline,
            "the other partitions waited at the schema change without saying so: {:?}",
            rowlog.stats.halted()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (p, why) in rowlog.stats.halted() {
        if p != halted_partition {
            assert!(
                why.contains(&format!("waits for partition {halted_partition}")),
                "partition {p}: {why}"
            );
        }
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
    let (pair, dead) = common::rejecting_pair(&[]).await;
    let rowlog = InProcess::start(dead_letter_config(&pair, &dead));
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
    let rowlog = InProcess::start(dead_letter_config(&pair, &dead));
    pair.src
        .exec(&["INSERT INTO app.c VALUES (31, 31)"])
        .await
        .unwrap();
    common::wait_for_count(
        &mut d,
        "SELECT COUNT(*) FROM app.c",
        30,
        "row 31 did not arrive",
    )
    .await;
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

/// MariaDB computes virtual columns in the update part of `INSERT … ON DUPLICATE KEY
/// UPDATE`, and strict mode rejects a computed value its column cannot hold — here
/// `i + 1` for the largest INT — although the source holds the row (a source in a
/// non-strict mode updates it). The update of such a row arrives, and the computed
/// columns match the source's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generated_column_computed_out_of_range_does_not_stop_the_update_of_its_row() {
    let pair = Pair::start().await;
    pair.create(&[
        "CREATE DATABASE app",
        "CREATE TABLE app.g (id INT PRIMARY KEY, i INT, b INT, \
           v INT AS (i + 1) VIRTUAL, s BIGINT AS (i * 2) STORED)",
    ])
    .await;
    let rowlog = InProcess::start(pair.config(2, 4));
    // A source in a non-strict sql_mode, which computes `v` leniently.
    pair.src
        .exec(&[
            "SET SESSION sql_mode = ''",
            "INSERT INTO app.g (id, i, b) VALUES (1, 2147483647, 1), (2, 5, 1)",
        ])
        .await
        .unwrap();
    pair.assert_converges(&[("app.g", "id")], Duration::from_secs(60))
        .await;
    // Both rows exist on the destination now: their updates take the upsert's update path.
    pair.src
        .exec(&[
            "SET SESSION sql_mode = ''",
            "UPDATE app.g SET b = 2",
            "UPDATE app.g SET b = 3 WHERE id = 1",
        ])
        .await
        .unwrap();
    pair.assert_converges(&[("app.g", "id")], Duration::from_secs(60))
        .await;
    let mut d = pair.dst.conn().await.unwrap();
    let rows: Vec<(i64, i64, i64, i64)> = d
        .query("SELECT id, b, v, s FROM app.g ORDER BY id")
        .await
        .unwrap();
    assert_eq!(
        rows,
        [(1, 3, 2147483647, 4294967294), (2, 2, 6, 10)],
        "the destination's computed values are the source's"
    );
    let stats = rowlog.stop().await;
    assert!(stats.halted().is_empty(), "{:?}", stats.halted());
}

/// The lenient retry above never lets a value rowlog writes be truncated. A batch
/// whose first row's generated column overflows and whose last row's written value does
/// not fit the destination's narrower column — as one multi-row upsert (4 rows) and as
/// one LOAD DATA (20 rows) — is rejected naming the last row's key and column, and the
/// destination keeps every previous value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_written_value_out_of_range_is_rejected_next_to_an_overflowing_generated_column() {
    use rowlog_api::{ChangeEvent, Column, ColumnType, Op};
    let pair = Pair::start().await;
    pair.dst
        .exec(&[
            "CREATE DATABASE app",
            "CREATE TABLE app.g (id INT PRIMARY KEY, i INT, b TINYINT, v INT AS (i + 1) VIRTUAL)",
        ])
        .await
        .unwrap();
    let col = |name: &str, generated| Column {
        generated,
        ..Column::plain(name, ColumnType::Int)
    };
    let table = std::sync::Arc::new(rowlog_api::TableSchema {
        name: TableName::new("app", "g"),
        columns: vec![
            col("id", false),
            col("i", false),
            col("b", false),
            col("v", true),
        ],
        primary_key: vec![0],
        unique_keys: vec![],
        keyless: false,
    });
    let row = |id: i64, b: i64| {
        let i = if id == 1 { i64::from(i32::MAX) } else { id };
        vec![
            Value::Int(id),
            Value::Int(i),
            Value::Int(b),
            Value::Int(i.min(i64::from(i32::MAX) - 1) + 1),
        ]
    };
    let mut sink = load_data_sink(&pair).await;
    let mut d = pair.dst.conn().await.unwrap();
    for rows in [4i64, 20] {
        d.query_drop("DELETE FROM app.g").await.unwrap();
        d.query_drop(format!(
            "INSERT INTO app.g (id, i, b) SELECT seq, IF(seq = 1, 2147483647, seq), 1 \
             FROM app.seq_1_to_{rows}"
        ))
        .await
        .unwrap();
        let changes: Vec<ChangeEvent> = (1..=rows)
            .map(|id| {
                let b = if id == rows { 1000 } else { 2 };
                let (before, after) = (Some(row(id, 1)), Some(row(id, b)));
                common::records::change_of(&table, Op::Update, before, after, id as u64, 0)
            })
            .collect();
        let err = sink
            .apply_without_progress(&changes)
            .await
            .expect_err("a value the destination cannot hold is rejected");
        let err = rowlog::report::error_chain(&err);
        for needle in [format!("key id={rows}"), "column 'b'".to_string()] {
            assert!(
                err.contains(&needle),
                "{rows} rows: error does not say {needle:?}: {err}"
            );
        }
        let b: Vec<i64> = d.query("SELECT b FROM app.g ORDER BY id").await.unwrap();
        assert_eq!(
            b,
            vec![1; rows as usize],
            "{rows} rows: nothing of the batch was kept"
        );
    }
}

/// A sink connection to `pair`'s destination with `sink.load_data` on.
async fn load_data_sink(pair: &Pair) -> rowlog_mysql_sink::MySqlSink {
    let mut cfg = pair.config(1, 1);
    cfg.sink.load_data = true;
    rowlog_mysql_sink::MySqlSink::connect(&cfg.sink, "test")
        .await
        .unwrap()
}

/// How many LOAD DATA statements the destination has run (`Com_load`).
async fn loads_run(d: &mut mysql_async::Conn) -> u64 {
    let (_, n): (String, u64) = d
        .query_first("SHOW GLOBAL STATUS LIKE 'Com_load'")
        .await
        .unwrap()
        .unwrap();
    n
}

/// With `sink.load_data`, batches of 16 or more upserts of a table go as `LOAD DATA
/// LOCAL INFILE … REPLACE`:
/// every value type that path takes, with its edge values, separators and escapes in
/// text, every byte value in binary columns, and NULLs, arrives byte for byte — first
/// as inserts, then as updates of existing rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_upserts_through_load_data_arrive_byte_for_byte() {
    let pair = Pair::start().await;
    pair.src
        .exec(&[
            "CREATE DATABASE app",
            "CREATE TABLE app.bulk (id INT PRIMARY KEY, ti TINYINT, iu INT UNSIGNED, \
               bi BIGINT, biu BIGINT UNSIGNED, d65 DECIMAL(65,30), f FLOAT, dbl DOUBLE, \
               dt6 DATETIME(6), ts6 TIMESTAMP(6) NULL DEFAULT NULL, t6 TIME(6), y YEAR, d DATE, \
               c CHAR(10) CHARACTER SET utf8mb4, vc VARCHAR(300) CHARACTER SET utf8mb4, \
               l1 VARCHAR(50) CHARACTER SET latin1, asc_ VARCHAR(20) CHARACTER SET ascii, \
               tx TEXT CHARACTER SET utf8mb4, vb VARBINARY(300), bl BLOB, \
               gen BIGINT AS (bi DIV 2) STORED)",
        ])
        .await
        .unwrap();
    let mut d = pair.dst.conn().await.unwrap();
    let loads_before = loads_run(&mut d).await;
    let mut cfg = pair.config(1, 1);
    cfg.sink.load_data = true;
    let rowlog = InProcess::start(cfg);
    let every_byte: String = (0..=255u8).map(|b| format!("{b:02X}")).collect();
    let mut s = pair.src.conn().await.unwrap();
    s.query_drop("SET time_zone = '+00:00'").await.unwrap();
    s.query_drop(format!(
        "INSERT INTO app.bulk (id, ti, iu, bi, biu, d65, f, dbl, dt6, ts6, t6, y, d, c, vc, l1, \
           asc_, tx, vb, bl) \
         SELECT seq, IF(seq % 2, -128, 127), 4294967295 - seq, \
           IF(seq % 3 = 0, -9223372036854775808, 9223372036854775807 - seq), \
           18446744073709551615 - seq, \
           CONCAT(IF(seq % 2, '-', ''), REPEAT('9', 35), '.', LPAD(seq, 30, '0')), \
           IF(seq % 2, -3.40282e38, 1.17549e-38 * seq), \
           IF(seq % 2, 4.9406564584124654e-324, -1.7976931348623157e308 / seq), \
           IF(seq % 4 = 0, '0000-00-00 00:00:00', '9999-12-31 23:59:59.999999'), \
           IF(seq % 5 = 0, NULL, '2038-01-19 03:14:07.999999'), \
           IF(seq % 2, '-838:59:59.000000', '-00:00:00.000001'), \
           IF(seq % 3 = 0, 0, 1901 + seq), IF(seq % 2, '1000-01-01', '0000-00-00'), \
           'ab😀 ', CONCAT('tab\\there\\nnl\\\\bs', CHAR(0), ' 😀 𝄞 end ', seq), \
           CONVERT('café naïve £' USING latin1), 'plain ascii ~', \
           IF(seq % 7 = 0, NULL, REPEAT('x\\t\\r', seq)), UNHEX(LEFT('{every_byte}', seq * 2)), \
           UNHEX('{every_byte}') \
         FROM app.seq_1_to_40"
    ))
    .await
    .unwrap();
    pair.assert_converges(&[("app.bulk", "id")], Duration::from_secs(60))
        .await;
    s.query_drop(
        "UPDATE app.bulk SET vc = CONCAT(vc, '\\\\!'), f = -f, t6 = '838:59:59.999999', \
           bl = REVERSE(bl), ts6 = IF(ts6 IS NULL, '1970-01-01 00:00:01', NULL)",
    )
    .await
    .unwrap();
    pair.assert_converges(&[("app.bulk", "id")], Duration::from_secs(60))
        .await;
    let loads = loads_run(&mut d).await - loads_before;
    assert!(
        loads >= 2,
        "the upserts did not go as LOAD DATA ({loads} loads)"
    );
    let stats = rowlog.stop().await;
    assert!(stats.halted().is_empty(), "{:?}", stats.halted());
}

/// LOAD DATA … REPLACE writes whole rows, sends bytes unconverted, and deletes before it
/// inserts where a table has triggers or references. With `sink.load_data` on, where
/// the destination's table has a column of its own (also in place of one of the
/// source's), a text column in another character set, a trigger, or a foreign key
/// pointing at it, upserts go as statements, which leave that column, convert the text,
/// fire UPDATE triggers only and delete nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upserts_keep_statements_where_replace_would_differ_on_the_destination() {
    let pair = Pair::start().await;
    pair.src
        .exec(&[
            "CREATE DATABASE app",
            "CREATE TABLE app.extra (id INT PRIMARY KEY, v INT)",
            "CREATE TABLE app.trig (id INT PRIMARY KEY, v INT)",
            "CREATE TABLE app.parent (id INT PRIMARY KEY, v INT)",
            "CREATE TABLE app.names (id INT PRIMARY KEY, v INT, g INT AS (v * 2) VIRTUAL)",
            "CREATE TABLE app.cs (id INT PRIMARY KEY, v INT, s VARCHAR(20) CHARACTER SET utf8mb4)",
        ])
        .await
        .unwrap();
    pair.dst
        .exec(&[
            "CREATE DATABASE app",
            "CREATE TABLE app.extra (id INT PRIMARY KEY, v INT, note VARCHAR(20) DEFAULT 'default')",
            "CREATE TABLE app.trig (id INT PRIMARY KEY, v INT)",
            "CREATE TABLE app.deleted (id INT)",
            "CREATE TRIGGER app.trig_del AFTER DELETE ON app.trig FOR EACH ROW \
               INSERT INTO app.deleted VALUES (OLD.id)",
            "CREATE TABLE app.parent (id INT PRIMARY KEY, v INT)",
            "CREATE TABLE app.child (id INT PRIMARY KEY, parent INT, \
               FOREIGN KEY (parent) REFERENCES app.parent (id) ON DELETE CASCADE)",
            // As many columns as the source's, but not the same ones.
            "CREATE TABLE app.names (id INT PRIMARY KEY, v INT, note VARCHAR(20) DEFAULT 'default')",
            // Another character set: bytes sent unconverted would be stored wrong.
            "CREATE TABLE app.cs (id INT PRIMARY KEY, v INT, s VARCHAR(20) CHARACTER SET latin1)",
        ])
        .await
        .unwrap();
    let mut d = pair.dst.conn().await.unwrap();
    let loads_before = loads_run(&mut d).await;
    let mut cfg = pair.config(1, 1);
    cfg.sink.load_data = true;
    let rowlog = InProcess::start(cfg);
    pair.src
        .exec(&[
            "INSERT INTO app.extra SELECT seq, 0 FROM app.seq_1_to_40",
            "INSERT INTO app.trig SELECT seq, 0 FROM app.seq_1_to_40",
            "INSERT INTO app.names (id, v) SELECT seq, 0 FROM app.seq_1_to_40",
            "INSERT INTO app.cs SELECT seq, 0, 'café' FROM app.seq_1_to_40",
            "INSERT INTO app.parent SELECT seq, 0 FROM app.seq_1_to_40",
        ])
        .await
        .unwrap();
    common::wait_for_count(
        &mut d,
        "SELECT COUNT(*) FROM app.parent",
        40,
        "the inserts did not arrive",
    )
    .await;
    d.query_drop("UPDATE app.extra SET note = 'kept'")
        .await
        .unwrap();
    d.query_drop("UPDATE app.names SET note = 'kept'")
        .await
        .unwrap();
    d.query_drop("INSERT INTO app.child SELECT seq, seq FROM app.seq_1_to_40")
        .await
        .unwrap();
    pair.src
        .exec(&[
            "UPDATE app.extra SET v = 1",
            "UPDATE app.trig SET v = 1",
            "UPDATE app.names SET v = 1",
            "UPDATE app.cs SET v = 1",
            "UPDATE app.parent SET v = 1",
        ])
        .await
        .unwrap();
    common::wait_for_count(
        &mut d,
        "SELECT COUNT(*) FROM app.parent WHERE v = 1",
        40,
        "the updates did not arrive",
    )
    .await;
    let stats = rowlog.stop().await;
    assert!(stats.halted().is_empty(), "{:?}", stats.halted());
    for (q, want) in [
        (
            "SELECT COUNT(*) FROM app.extra WHERE v = 1 AND note = 'kept'",
            40,
        ),
        ("SELECT COUNT(*) FROM app.trig WHERE v = 1", 40),
        ("SELECT COUNT(*) FROM app.deleted", 0),
        ("SELECT COUNT(*) FROM app.child", 40),
        (
            "SELECT COUNT(*) FROM app.names WHERE v = 1 AND note = 'kept'",
            40,
        ),
        (
            "SELECT COUNT(*) FROM app.cs WHERE v = 1 AND HEX(s) = '636166E9'",
            40,
        ),
    ] {
        let got: u64 = d.query_first(q).await.unwrap().unwrap();
        assert_eq!(got, want, "{q}");
    }
    assert_eq!(
        loads_run(&mut d).await,
        loads_before,
        "no LOAD DATA was run"
    );
}

/// A text key changed only in a way its collation ignores (case, accents) is a delete
/// of the old bytes and an insert of the new, and the destination holds them as one
/// row. Routed by their bytes they went to different partitions and workers; where
/// the insert ran first (updating the old row in place), the delete then removed the
/// row. Keys equal under the collation take one route, so the row survives. Across
/// 8 partitions × 4 workers, whole-table updates of 3,000 keys each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_changed_only_in_case_or_accents_keep_their_rows_across_workers() {
    let pair = Pair::start().await;
    pair.create(&[
        "CREATE DATABASE app",
        "CREATE TABLE app.people (email VARCHAR(64) CHARACTER SET utf8mb4 \
           COLLATE utf8mb4_general_ci PRIMARY KEY, n INT NOT NULL)",
        // A text part beside a number: the number still spreads the keys.
        "CREATE TABLE app.tagged (tenant INT, tag VARCHAR(32) CHARACTER SET utf8mb4 \
           COLLATE utf8mb4_general_ci, n INT NOT NULL, PRIMARY KEY (tenant, tag))",
    ])
    .await;
    let rowlog = InProcess::start(pair.config(4, 8));
    let mut c = pair.src.conn().await.unwrap();
    let rows = 3_000;
    for table in ["people", "tagged"] {
        let values: Vec<String> = (0..rows)
            .map(|i| match table {
                "people" => format!("('User{i}@Example.COM', 0)"),
                _ => format!("({}, 'Cafe{i}', 0)", i % 7),
            })
            .collect();
        c.query_drop(format!(
            "INSERT INTO app.{table} VALUES {}",
            values.join(",")
        ))
        .await
        .unwrap();
    }
    for step in [
        "UPDATE app.people SET email = LOWER(email), n = n + 1",
        "UPDATE app.people SET email = UPPER(email), n = n + 1",
        "UPDATE app.people SET email = REPLACE(email, 'E', 'É'), n = n + 1",
        "UPDATE app.tagged SET tag = UPPER(tag), n = n + 1",
        "UPDATE app.tagged SET tag = REPLACE(tag, 'E', 'é'), n = n + 1",
    ] {
        c.query_drop(step).await.unwrap();
    }
    pair.assert_converges(
        &[("app.people", "email"), ("app.tagged", "tenant, tag")],
        Duration::from_secs(120),
    )
    .await;
    assert_eq!(common::count(&pair.dst, "app.people").await, rows);
    assert_eq!(common::count(&pair.dst, "app.tagged").await, rows);
    let stats = rowlog.stop().await;
    assert!(stats.halted().is_empty(), "{:?}", stats.halted());
}

/// A key the source changes only in a way the destination's collation ignores ('abc' →
/// 'ABC') is a delete of one key and an upsert of the other, which the destination sees
/// as one row: the delete must go first, also when the upserts go as LOAD DATA.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_changed_only_in_case_survives_a_batch_loaded_with_load_data() {
    use rowlog_api::{ChangeEvent, Column, ColumnType, Op};
    let pair = Pair::start().await;
    pair.dst
        .exec(&[
            "CREATE DATABASE app",
            "CREATE TABLE app.k (id VARCHAR(20) CHARACTER SET utf8mb4 \
               COLLATE utf8mb4_general_ci PRIMARY KEY, v INT)",
            "INSERT INTO app.k VALUES ('abc', 1)",
        ])
        .await
        .unwrap();
    let table = std::sync::Arc::new(rowlog_api::TableSchema {
        name: TableName::new("app", "k"),
        columns: vec![
            Column {
                charset: Some(45),
                charset_name: Some("utf8mb4".into()),
                nullable: false,
                ..Column::plain("id", ColumnType::VarString { max_bytes: 80 })
            },
            Column::plain("v", ColumnType::Int),
        ],
        primary_key: vec![0],
        unique_keys: vec![],
        keyless: false,
    });
    let row = |id: &str, v: i64| vec![Value::Bytes(id.as_bytes().into()), Value::Int(v)];
    let mut changes: Vec<ChangeEvent> = vec![
        common::records::change_of(&table, Op::Delete, Some(row("abc", 1)), None, 1, 0),
        common::records::change_of(&table, Op::Insert, None, Some(row("ABC", 2)), 2, 0),
    ];
    for i in 0..16u64 {
        let after = Some(row(&format!("k{i}"), 0));
        changes.push(common::records::change_of(
            &table,
            Op::Insert,
            None,
            after,
            3 + i,
            0,
        ));
    }
    let mut sink = load_data_sink(&pair).await;
    let mut d = pair.dst.conn().await.unwrap();
    let loads_before = loads_run(&mut d).await;
    sink.apply_without_progress(&changes).await.unwrap();
    assert_eq!(
        loads_run(&mut d).await,
        loads_before + 1,
        "the upserts went as LOAD DATA"
    );
    let k: Vec<(String, i64)> = d
        .query("SELECT id, v FROM app.k WHERE id = 'abc'")
        .await
        .unwrap();
    assert_eq!(
        k,
        [("ABC".to_string(), 2)],
        "the changed key holds its new value"
    );
    assert_eq!(common::count(&pair.dst, "app.k").await, 17);
}

/// A batch the destination rejects is applied change by change to find the culprit;
/// when a transient error interrupts that pass, the retry starts after the changes the
/// pass committed. Applying them again doubled a keyless table's insert.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_an_interrupted_one_by_one_pass_applies_nothing_twice() {
    let pair = Pair::start().await;
    pair.src
        .exec(&[
            "CREATE DATABASE app",
            "CREATE TABLE app.k (v INT NOT NULL)",
            "CREATE TABLE app.bad (id INT PRIMARY KEY, v INT NOT NULL)",
            "CREATE TABLE app.t (id INT PRIMARY KEY, v INT NOT NULL)",
            // Not in the binlog: the destination has the row already, and its insert
            // would wait on the lock below before the batch under test.
            "SET SESSION sql_log_bin = 0",
            "INSERT INTO app.t VALUES (1, 1)",
        ])
        .await
        .unwrap();
    pair.dst
        .exec(&[
            "SET GLOBAL innodb_lock_wait_timeout = 1",
            "CREATE DATABASE app",
            "CREATE TABLE app.k (v INT NOT NULL)",
            "CREATE TABLE app.bad (id INT PRIMARY KEY, v INT NOT NULL, CONSTRAINT small CHECK (v < 100))",
            "CREATE TABLE app.t (id INT PRIMARY KEY, v INT NOT NULL)",
            "INSERT INTO app.t VALUES (1, 1)",
        ])
        .await
        .unwrap();
    // Another session holds the row the batch's last change updates.
    let mut holder = hold(&pair, "SELECT * FROM app.t WHERE id = 1 FOR UPDATE").await;

    let dead = pair.dir.path().join("dead-letter.jsonl");
    let mut cfg = pair.config(1, 1);
    cfg.sink.dead_letter_file = Some(dead.clone());
    cfg.source.no_pk = rowlog_mysql_binlog::NoPrimaryKey::FullRow;
    let rowlog = InProcess::start(cfg);
    // One source transaction, so one batch: a keyless insert, a change the destination
    // rejects for good, and an update that waits for the lock.
    pair.src
        .exec(&[
            "BEGIN",
            "INSERT INTO app.k VALUES (7)",
            "INSERT INTO app.bad VALUES (1, 500)",
            "UPDATE app.t SET v = 10 WHERE id = 1",
            "COMMIT",
        ])
        .await
        .unwrap();
    // The batch fails on app.bad; the pass commits app.k, dead-letters app.bad, and
    // waits on app.t until the lock wait times out; retries wait too.
    tokio::time::sleep(Duration::from_secs(5)).await;
    holder.query_drop("ROLLBACK").await.unwrap();

    let mut d = pair.dst.conn().await.unwrap();
    common::wait_for_count(
        &mut d,
        "SELECT COUNT(*) FROM app.t WHERE id = 1 AND v = 10",
        1,
        "the update arrived",
    )
    .await;
    let keyless: Vec<i32> = d.query("SELECT v FROM app.k").await.unwrap();
    assert_eq!(
        keyless,
        vec![7],
        "the keyless insert is on the destination once"
    );
    let stats = rowlog.stop().await;
    assert_eq!(Stats::get(&stats.dead_lettered), 1);
    assert!(
        Stats::get(&stats.apply_retries) >= 1,
        "the lock wait timeout interrupted the pass and was retried"
    );
}

/// The record of applied schema changes tells reading epochs apart: after a source
/// reset its binlog's file names and positions repeat, and a new change at a position
/// an old one had must still run. A record table made before the epoch was kept gets
/// it added; its records then match any epoch, as they did before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_change_at_a_position_an_earlier_epoch_had_still_runs() {
    use rowlog_api::{ChangeSink, SchemaChange, SchemaChangeKind, SchemaChangePolicy};
    let pair = Pair::start().await;
    // The record table as rowlog made it before the epoch was part of its key, with a
    // change recorded at binlog.000001:1000.
    pair.dst
        .exec(&[
            "CREATE DATABASE app",
            "CREATE DATABASE rowlog",
            "CREATE TABLE rowlog.rowlog_schema_changes (pipeline VARCHAR(128) NOT NULL, \
               binlog_file VARCHAR(255) NOT NULL, binlog_pos BIGINT UNSIGNED NOT NULL, \
               kind VARCHAR(32) NOT NULL, statement LONGTEXT NOT NULL, \
               outcome VARCHAR(255) NOT NULL, \
               applied_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6), \
               PRIMARY KEY (pipeline, binlog_file, binlog_pos)) ENGINE=InnoDB",
            "INSERT INTO rowlog.rowlog_schema_changes (pipeline, binlog_file, binlog_pos, kind, statement, outcome) \
               VALUES ('test', 'binlog.000001', 1000, 'create_table', 'CREATE TABLE app.a (id INT PRIMARY KEY)', 'applied')",
            "CREATE TABLE app.a (id INT PRIMARY KEY)",
        ])
        .await
        .unwrap();
    let cfg = pair.config(1, 1);
    let mut sink = rowlog_mysql_sink::MySqlSink::connect(&cfg.sink, "test")
        .await
        .unwrap();
    sink.ensure_progress_table().await.unwrap();
    let t = common::records::table();
    // Change `i` is at binlog.000001:(1000 + 100 i).
    let at = |epoch: u32, i: u64, name: &str| {
        let mut source = common::records::change_at(&t, i, 1, 0).source;
        source.id.epoch = epoch;
        SchemaChange {
            statement: format!("CREATE TABLE app.{name} (id INT PRIMARY KEY)"),
            kind: SchemaChangeKind::CreateTable,
            database: None,
            db: "app".into(),
            tables: vec![TableName::new("app", name)],
            source,
        }
    };
    for epoch in [0, 1] {
        assert!(
            sink.schema_change_applied(&at(epoch, 0, "a").source.id)
                .await
                .unwrap(),
            "the record made before the upgrade counts in epoch {epoch}"
        );
    }
    let old = at(0, 1, "b");
    sink.apply_schema_change(&old, SchemaChangePolicy::Apply)
        .await
        .unwrap();
    let new = at(1, 1, "c");
    assert!(sink.schema_change_applied(&old.source.id).await.unwrap());
    assert!(
        !sink.schema_change_applied(&new.source.id).await.unwrap(),
        "the same position in another epoch is another change"
    );
    sink.apply_schema_change(&new, SchemaChangePolicy::Apply)
        .await
        .unwrap();
    assert!(sink.schema_change_applied(&new.source.id).await.unwrap());
    let mut d = pair.dst.conn().await.unwrap();
    let tables: Vec<String> = d.query("SHOW TABLES FROM app").await.unwrap();
    assert_eq!(tables, ["a", "b", "c"], "both changes ran");
    let records: Vec<(u32, u64)> = d
        .query(
            "SELECT epoch, binlog_pos FROM rowlog.rowlog_schema_changes ORDER BY epoch, binlog_pos",
        )
        .await
        .unwrap();
    assert_eq!(records, [(0, 1100), (1, 1100), (u32::MAX, 1000)]);
}

/// A sink whose worker panics on the change of key 13: a bug, not an error. The rest is
/// the real destination.
struct PanicsAt13(rowlog_mysql_sink::MySqlSink);

impl rowlog_api::ChangeSink for PanicsAt13 {
    type Error = rowlog_mysql_sink::SinkError;

    async fn apply(&mut self, batch: rowlog_api::ApplyBatch<'_>) -> Result<(), Self::Error> {
        if batch
            .changes
            .iter()
            .any(|c| c.after.as_ref().is_some_and(|a| a[0] == Value::Int(13)))
        {
            panic!("a bug in the worker at key 13");
        }
        self.0.apply(batch).await
    }
    async fn while_fenced<T: Send>(
        &mut self,
        inside: impl std::future::Future<Output = T> + Send,
    ) -> Result<T, Self::Error> {
        self.0.while_fenced(inside).await
    }
    async fn schema_change_applied(
        &mut self,
        id: &rowlog_api::ChangeId,
    ) -> Result<bool, Self::Error> {
        self.0.schema_change_applied(id).await
    }
    async fn apply_schema_change(
        &mut self,
        change: &rowlog_api::SchemaChange,
        policy: rowlog_api::SchemaChangePolicy,
    ) -> Result<(), Self::Error> {
        self.0.apply_schema_change(change, policy).await
    }
    async fn load_progress(
        &mut self,
        partition: u32,
    ) -> Result<rowlog_api::SinkProgress, Self::Error> {
        self.0.load_progress(partition).await
    }
    async fn set_progress(
        &mut self,
        partition: u32,
        rows: &[rowlog_api::WorkerProgress],
    ) -> Result<(), Self::Error> {
        self.0.set_progress(partition, rows).await
    }
    async fn forget_progress(
        &mut self,
        partition: u32,
        rows: &[rowlog_api::WorkerProgress],
    ) -> Result<(), Self::Error> {
        self.0.forget_progress(partition, rows).await
    }
    async fn raise_progress(
        &mut self,
        partition: u32,
        rows: &[rowlog_api::WorkerProgress],
    ) -> Result<(), Self::Error> {
        self.0.raise_progress(partition, rows).await
    }
}

/// A worker that panics while the next record of its partition is a schema change
/// (which waits for every worker to apply what came before it) stops the partition
/// with an error naming the worker and the panic, instead of holding it for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_panics_before_a_schema_change_stops_its_partition_naming_it() {
    use rowlog::log::{AppendBatch, EmbeddedLog, LogEntry, PartitionedLog};
    use rowlog::pipeline::apply::{run_partition, ApplyError};

    let pair = Pair::start().await;
    pair.dst
        .exec(&[
            "CREATE DATABASE app",
            "CREATE TABLE app.t (id BIGINT PRIMARY KEY, payload BLOB)",
        ])
        .await
        .unwrap();
    let log = EmbeddedLog::open(&pair.dir.path().join("log"), 1, 1 << 20).unwrap();
    let t = common::records::table();
    let mut batch = AppendBatch::new(1);
    batch.partitions[0] = (0..=13)
        .map(|i| LogEntry::Change(common::records::change(&t, i)))
        .collect();
    let mut alter = common::records::change(&t, 14).source;
    alter.id.index = 0;
    batch.partitions[0].push(LogEntry::Schema(std::sync::Arc::new(
        rowlog_api::SchemaChange {
            kind: rowlog_api::SchemaChangeKind::AlterTable,
            db: "app".into(),
            statement: "ALTER TABLE app.t ADD COLUMN z INT".into(),
            tables: vec![TableName::new("app", "t")],
            database: None,
            source: alter,
        },
    )));
    log.append(batch).await.unwrap();

    let cfg = pair.config(1, 1);
    let mut sink = rowlog_mysql_sink::MySqlSink::connect(&cfg.sink, &cfg.name)
        .await
        .unwrap();
    sink.ensure_progress_table().await.unwrap();
    let mut apply_cfg = cfg.apply();
    // One change per batch: key 13's batch holds nothing else.
    apply_cfg.batch_max_rows = 1;
    let (sink_cfg, name) = (cfg.sink.clone(), cfg.name.clone());
    let connect = move || {
        let (c, n) = (sink_cfg.clone(), name.clone());
        async move {
            rowlog_mysql_sink::MySqlSink::connect(&c, &n)
                .await
                .map(PanicsAt13)
        }
    };
    let (_trigger, shutdown) = rowlog::shutdown::channel();
    let run = run_partition(
        log.clone(),
        0,
        apply_cfg,
        connect,
        rowlog::pipeline::schema_barrier::SchemaBarrier::new(1),
        std::sync::Arc::new(Stats::default()),
        std::sync::Arc::new(rowlog::metrics::Metrics::new(1, Duration::from_secs(60))),
        shutdown,
    );
    let stopped = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("the partition stopped within 60 s of its worker's panic");
    match stopped {
        Err(e @ ApplyError::WorkerLost { .. }) => {
            let text = e.to_string();
            assert!(
                text.contains("worker 0") && text.contains("a bug in the worker at key 13"),
                "{text}"
            );
        }
        other => panic!("expected the lost worker to be named, got {other:?}"),
    }
    // What came before the panic is applied; the schema change was not run.
    let mut d = pair.dst.conn().await.unwrap();
    let ids: Vec<i64> = d.query("SELECT id FROM app.t ORDER BY id").await.unwrap();
    assert_eq!(ids, (0..=12).collect::<Vec<i64>>());
    let columns: u64 = d
        .query_first("SELECT COUNT(*) FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = 'app' AND TABLE_NAME = 't'")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(columns, 2);
}

/// A rejected change is written to the dead-letter file once, even when recording its
/// offset as passed fails and the batch is tried again (here: the worker's progress
/// row is locked by another session, so the write times out).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_change_is_dead_lettered_once_when_recording_it_fails_and_is_retried() {
    let (pair, dead) = common::rejecting_pair(&["SET GLOBAL innodb_lock_wait_timeout = 1"]).await;
    let rowlog = InProcess::start(dead_letter_config(&pair, &dead));
    pair.src
        .exec(&["INSERT INTO app.c VALUES (1, 1)"])
        .await
        .unwrap();
    let mut d = pair.dst.conn().await.unwrap();
    common::wait_for_count(
        &mut d,
        "SELECT COUNT(*) FROM app.c",
        1,
        "the first row arrived",
    )
    .await;

    // Another session holds the worker's progress row: the rejected change's progress
    // write waits on it and fails with a lock wait timeout, a retryable error.
    let mut holder = hold(&pair, "SELECT * FROM rowlog.rowlog_progress FOR UPDATE").await;
    pair.src
        .exec(&["INSERT INTO app.c VALUES (2, 500)"])
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !dead.exists() {
        assert!(Instant::now() < deadline, "no dead-letter file after 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The progress write times out; reading the progress row before the retry waits
    // on the same lock, until it is released.
    tokio::time::sleep(Duration::from_secs(4)).await;
    holder.query_drop("ROLLBACK").await.unwrap();

    pair.src
        .exec(&["INSERT INTO app.c VALUES (3, 3)"])
        .await
        .unwrap();
    common::wait_for_count(
        &mut d,
        "SELECT COUNT(*) FROM app.c WHERE id = 3",
        1,
        "the row after it arrived",
    )
    .await;
    let stats = rowlog.stop().await;
    assert!(
        Stats::get(&stats.apply_retries) >= 1,
        "the progress write failed and the batch was tried again"
    );
    assert_eq!(Stats::get(&stats.dead_lettered), 1);
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&dead)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert_eq!(lines[0]["record"]["after"]["v"], 500, "{:#}", lines[0]);
}

/// One partition, one worker, rejected changes to `dead`.
fn dead_letter_config(pair: &Pair, dead: &std::path::Path) -> rowlog::config::Config {
    let mut cfg = pair.config(1, 1);
    cfg.sink.dead_letter_file = Some(dead.to_path_buf());
    cfg
}

/// A destination session in a transaction holding the rows `select_for_update` locks,
/// until it rolls back or is dropped.
async fn hold(pair: &Pair, select_for_update: &str) -> mysql_async::Conn {
    let mut holder = pair.dst.conn().await.unwrap();
    holder.query_drop("BEGIN").await.unwrap();
    holder.query_drop(select_for_update).await.unwrap();
    holder
}
