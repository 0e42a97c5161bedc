//! The initial snapshot: an empty destination gets a copy of every replicated table
//! while the source takes writes, then the stream goes on from exactly where each copy
//! left off; a crash mid-copy resumes after the last chunk; `when_needed` copies again
//! after a purged position; `rowlog snapshot --tables` copies chosen tables again, with
//! rowlog stopped or while it streams the rest.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Daemon, Pair};
use mysql_async::prelude::Queryable;

const TABLES: &[&str] = &[
    "CREATE DATABASE app",
    "CREATE TABLE app.accounts (id BIGINT PRIMARY KEY, owner VARCHAR(40) NOT NULL, \
     balance DECIMAL(14,2) NOT NULL, note VARCHAR(30) CHARACTER SET latin1, \
     updated DATETIME(6) NOT NULL, UNIQUE KEY owner (owner))",
    "CREATE TABLE app.events (stream INT, seq INT, payload BLOB, at TIMESTAMP(3) NULL, \
     PRIMARY KEY (stream, seq))",
    "CREATE TABLE app.tags (tag VARCHAR(20), weight INT)",
];

/// Writes on the source until `stop`: updates and deletes of copied rows, inserts of
/// new ones, in every table (the keyless one too).
fn load(url: String, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let mut c = mysql_async::Conn::new(mysql_async::Opts::from_url(&url).unwrap())
            .await
            .unwrap();
        let mut i: u64 = 0;
        while !stop.load(Ordering::Relaxed) {
            i += 1;
            let id = (i * 7919) % 600_000 + 1;
            let mut tx = c.start_transaction(Default::default()).await.unwrap();
            tx.exec_drop(
                "UPDATE app.accounts SET balance = balance + 1, updated = NOW(6) WHERE id = ?",
                (id,),
            )
            .await
            .unwrap();
            tx.exec_drop(
                "INSERT INTO app.accounts VALUES (?, ?, 0, 'été', NOW(6))",
                (1_000_000 + i, format!("new-{i}")),
            )
            .await
            .unwrap();
            if i.is_multiple_of(3) {
                tx.exec_drop("DELETE FROM app.accounts WHERE id = ?", (id + 1,))
                    .await
                    .unwrap();
                tx.exec_drop(
                    "UPDATE app.events SET payload = ? WHERE stream = ? AND seq = ?",
                    (vec![0u8, 255, i as u8], (i % 100) as i64, (i % 3000) as i64),
                )
                .await
                .unwrap();
                tx.exec_drop("INSERT INTO app.tags VALUES ('load', ?)", (i,))
                    .await
                    .unwrap();
            }
            tx.commit().await.unwrap();
        }
        i
    })
}

async fn fill(pair: &Pair, accounts: u64) {
    pair.src.exec(TABLES).await.unwrap();
    pair.src
        .exec(&[
            &format!(
                "INSERT INTO app.accounts SELECT seq, CONCAT('owner-', seq), seq / 100, \
                 IF(seq % 2, 'café', NULL), '2026-01-01 00:00:00' + INTERVAL seq SECOND \
                 FROM app.seq_1_to_{accounts}"
            ),
            "INSERT INTO app.events SELECT seq % 100, seq DIV 100, REPEAT(CHAR(seq % 256), seq % 50), \
             FROM_UNIXTIME(1700000000 + seq) FROM app.seq_1_to_300000",
            "INSERT INTO app.tags SELECT CONCAT('t', seq % 1000), seq % 7 FROM app.seq_1_to_100000",
        ])
        .await
        .unwrap();
}

fn snapshot_config(pair: &Pair, extra: &str) -> std::path::PathBuf {
    let toml = pair
        .config_toml(2, 4)
        .replace("start = \"earliest\"", "start = \"current\"")
        .replace("[source]\n", "[source]\nno_pk = \"full_row\"\n")
        + &format!("[snapshot]\nmode = \"initial\"\n{extra}");
    let path = pair.dir.path().join("rowlog.toml");
    std::fs::write(&path, toml).unwrap();
    path
}

async fn converge_and_verify(pair: &Pair, config: &std::path::Path) {
    pair.assert_converges(
        &[
            ("app.accounts", "id"),
            ("app.events", "stream, seq"),
            ("app.tags", "tag, weight"),
        ],
        Duration::from_secs(180),
    )
    .await;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rowlog"))
        .args(["verify", "-c"])
        .arg(config)
        .args(["--lag-timeout-secs", "10"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "rowlog verify:\n{text}");
    assert!(text.contains("3 tables: equal"), "{text}");
}

/// `rowlog snapshot -c CONFIG --tables TABLES`, run to its end.
fn rowlog_snapshot(config: &std::path::Path, tables: &str) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_rowlog"))
        .args(["snapshot", "-c"])
        .arg(config)
        .args(["--tables", tables])
        .output()
        .unwrap()
}

/// The command's output, once it is known to have exited 0.
fn succeeded(out: &std::process::Output) -> String {
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// Private servers whose destination got its tables through an initial snapshot, and
/// the daemon that made it, now streaming.
async fn snapshotted(
    accounts: u64,
    snapshot: &str,
    log: &str,
) -> (Pair, std::path::PathBuf, Daemon) {
    let pair = Pair::start().await;
    fill(&pair, accounts).await;
    let config = snapshot_config(&pair, snapshot);
    let daemon = Daemon::spawn(&config, pair.dir.path().join(log));
    wait_for_log(&daemon, "snapshot done", Duration::from_secs(120)).await;
    (pair, config, daemon)
}

async fn wait_for_log(daemon: &Daemon, what: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while !daemon.log().contains(what) {
        assert!(
            Instant::now() < deadline,
            "no `{what}` in the log:\n{}",
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_initial_snapshot_of_a_million_rows_under_write_load_hands_off_to_the_stream() {
    let pair = Pair::start().await;
    fill(&pair, 600_000).await;
    let config = snapshot_config(&pair, "concurrency = 2\nchunk_rows = 20000\n");
    let stop = Arc::new(AtomicBool::new(false));
    let writes = load(pair.src.url(), stop.clone());
    let daemon = Daemon::spawn(&config, pair.dir.path().join("rowlog.log"));
    wait_for_log(&daemon, "snapshot done", Duration::from_secs(240)).await;
    // The load goes on a little into streaming, then stops.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let written = writes.await.unwrap();
    assert!(
        written > 50,
        "the load ran during the snapshot ({written} transactions)"
    );
    converge_and_verify(&pair, &config).await;
    let log = daemon.log();
    for table in ["app.accounts", "app.events", "app.tags"] {
        assert!(
            log.lines()
                .any(|l| l.contains("table copied") && l.contains(table)),
            "{table} not copied:\n{log}"
        );
    }
    daemon.terminate_cleanly();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_killed_mid_copy_resumes_after_its_last_chunk() {
    let pair = Pair::start().await;
    fill(&pair, 300_000).await;
    // Copied after app.accounts (tables go in name order): still to copy when the
    // first run is killed, and dropped before the second.
    pair.src
        .exec(&[
            "CREATE TABLE app.gone (id INT PRIMARY KEY)",
            "INSERT INTO app.gone SELECT seq FROM app.seq_1_to_10",
        ])
        .await
        .unwrap();
    let config = snapshot_config(&pair, "concurrency = 1\nchunk_rows = 5000\n");
    let daemon = Daemon::spawn(&config, pair.dir.path().join("first.log"));
    // Kill it once part of the big table is on the destination.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let n: Option<u64> = pair
            .dst
            .conn()
            .await
            .unwrap()
            .query_first("SELECT COUNT(*) FROM app.accounts")
            .await
            .unwrap_or(None);
        if n.unwrap_or(0) >= 50_000 {
            break;
        }
        assert!(Instant::now() < deadline, "the copy never got going");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    daemon.kill();
    let state = std::fs::read(pair.log_dir().join("snapshot.state")).unwrap();
    assert!(!state.is_empty());
    // A table the interrupted copy still had to do is dropped meanwhile: the next
    // start gives it up instead of failing on it at every start.
    pair.src.exec(&["DROP TABLE app.gone"]).await.unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let writes = load(pair.src.url(), stop.clone());
    let daemon = Daemon::spawn(&config, pair.dir.path().join("second.log"));
    wait_for_log(&daemon, "snapshot done", Duration::from_secs(240)).await;
    let log = daemon.log();
    assert!(
        log.contains("copying table") && log.contains("resume=true"),
        "the second run goes on after the last chunk, not from zero:\n{log}"
    );
    assert!(
        log.contains("its unfinished copy is abandoned") && log.contains("app.gone"),
        "{log}"
    );
    stop.store(true, Ordering::Relaxed);
    writes.await.unwrap();
    converge_and_verify(&pair, &config).await;
    daemon.terminate_cleanly();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rowlog_snapshot_copies_chosen_tables_again_and_the_stream_goes_on() {
    let (pair, config, daemon) = snapshotted(20_000, "", "first.log").await;
    pair.src
        .exec(&["UPDATE app.events SET payload = 'streamed' WHERE seq < 10"])
        .await
        .unwrap();
    converge_and_verify(&pair, &config).await;
    daemon.terminate_cleanly();

    // The destination's copy of one table is damaged; it is copied again while the
    // source takes writes, and the next run streams on from the stored checkpoint.
    pair.dst
        .exec(&[
            "DELETE FROM app.events WHERE stream < 50",
            "UPDATE app.tags SET weight = -1",
        ])
        .await
        .unwrap();
    pair.src
        .exec(&["UPDATE app.events SET payload = 'before the copy' WHERE seq = 20"])
        .await
        .unwrap();
    let out = rowlog_snapshot(&config, "app.events,app.tags");
    let text = succeeded(&out);
    assert!(
        text.contains("app.events: 300000 of ~") && text.contains("done"),
        "{text}"
    );
    assert!(text.contains("snapshot: 2 tables"), "{text}");
    pair.src
        .exec(&["UPDATE app.events SET payload = 'after the copy' WHERE seq = 21"])
        .await
        .unwrap();
    let daemon = Daemon::spawn(&config, pair.dir.path().join("second.log"));
    converge_and_verify(&pair, &config).await;
    daemon.terminate_cleanly();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rowlog_snapshot_while_rowlog_runs_repairs_chosen_tables_and_the_stream_never_stops() {
    let (pair, config, daemon) = snapshotted(20_000, "chunk_rows = 3000\n", "rowlog.log").await;
    converge_and_verify(&pair, &config).await;

    // The destination is damaged behind rowlog's back: rows missing, rows changed,
    // rows the source never had.
    pair.dst
        .exec(&[
            "DELETE FROM app.events WHERE stream < 30",
            "UPDATE app.events SET payload = 'damaged' WHERE stream = 60",
            "INSERT INTO app.events VALUES (1000, 1, 'extra', NULL), (1000, 2, 'extra', NULL)",
            "INSERT INTO app.accounts VALUES (5000000, 'ghost', 0, NULL, NOW())",
        ])
        .await
        .unwrap();
    // The source takes writes to every table the whole time.
    let stop = Arc::new(AtomicBool::new(false));
    let writes = load(pair.src.url(), stop.clone());
    let run = |tables: &'static str| {
        let config = config.clone();
        tokio::task::spawn_blocking(move || rowlog_snapshot(&config, tables))
    };
    let out = run("app.events,app.accounts").await.unwrap();
    let text = succeeded(&out);
    assert!(
        text.contains("rowlog is running") && text.contains("2 table(s) copied"),
        "{text}"
    );
    // A table the copy cannot key is refused with the reason, and streaming goes on.
    let out = run("app.tags").await.unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("app.tags has no primary key"),
        "{err}"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    let written = writes.await.unwrap();
    assert!(
        written > 20,
        "the load ran during the copy ({written} transactions)"
    );
    converge_and_verify(&pair, &config).await;
    let log = daemon.log();
    assert!(log.contains("re-snapshot done"), "{log}");
    daemon.terminate_cleanly();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_while_streaming_killed_midway_goes_on_after_its_last_chunk_on_restart() {
    let (pair, config, daemon) = snapshotted(20_000, "chunk_rows = 2000\n", "first.log").await;
    pair.dst
        .exec(&[
            "DELETE FROM app.events WHERE stream BETWEEN 10 AND 60",
            "INSERT INTO app.events VALUES (1000, 1, 'extra', NULL)",
        ])
        .await
        .unwrap();
    let command = std::process::Command::new(env!("CARGO_BIN_EXE_rowlog"))
        .args(["snapshot", "-c"])
        .arg(&config)
        .args(["--tables", "app.events"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Killed once some chunks of the table are in the log.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let req = rowlog::resnapshot::Request::load(&pair.log_dir()).unwrap();
        if req.is_some_and(|r| r.rows.first().is_some_and(|&n| n >= 10_000)) {
            break;
        }
        assert!(Instant::now() < deadline, "the copy never got going");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    daemon.kill();
    let out = tokio::task::spawn_blocking(move || command.wait_with_output().unwrap())
        .await
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("rowlog stopped before the copy finished"),
        "{err}"
    );

    let daemon = Daemon::spawn(&config, pair.dir.path().join("second.log"));
    wait_for_log(&daemon, "re-snapshot done", Duration::from_secs(120)).await;
    let log = daemon.log();
    assert!(
        log.contains("re-snapshot requested") && log.contains("resume_after=Some"),
        "the second run goes on after the last chunk, not from zero:\n{log}"
    );
    assert!(!pair
        .log_dir()
        .join(rowlog::resnapshot::REQUEST_FILE)
        .exists());
    converge_and_verify(&pair, &config).await;
    daemon.terminate_cleanly();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_needed_copies_again_once_the_stored_position_is_purged_from_the_source() {
    let pair = Pair::start().await;
    fill(&pair, 2_000).await;
    let config = snapshot_config(&pair, "");
    let toml = std::fs::read_to_string(&config)
        .unwrap()
        .replace("mode = \"initial\"", "mode = \"when_needed\"");
    std::fs::write(&config, toml).unwrap();
    let daemon = Daemon::spawn(&config, pair.dir.path().join("first.log"));
    wait_for_log(&daemon, "snapshot done", Duration::from_secs(120)).await;
    converge_and_verify(&pair, &config).await;
    daemon.terminate_cleanly();

    // While rowlog is stopped the source changes and drops the binlogs holding its
    // stored position.
    pair.src
        .exec(&[
            "UPDATE app.accounts SET balance = -1 WHERE id <= 100",
            "DELETE FROM app.events WHERE stream = 7",
            "FLUSH BINARY LOGS",
        ])
        .await
        .unwrap();
    pair.src.purge_binlogs().await.unwrap();

    let daemon = Daemon::spawn(&config, pair.dir.path().join("second.log"));
    wait_for_log(&daemon, "snapshot done", Duration::from_secs(120)).await;
    assert!(
        daemon.log().contains("no longer on the source"),
        "{}",
        daemon.log()
    );
    converge_and_verify(&pair, &config).await;
    daemon.terminate_cleanly();
}

/// Changes are partitioned and coalesced by their key's bytes: a row a re-snapshot
/// copies while streaming must key exactly like the binlog's change of that row, or
/// the two could land in different partitions and apply out of order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copied_row_keys_exactly_like_the_binlogs_change_of_that_row() {
    use rowlog_api::{ChangeSource, SourceEvent, TableName, Value};
    let pair = Pair::start().await;
    pair.src
        .exec(&[
            "CREATE DATABASE app",
            "CREATE TABLE app.k (a INT UNSIGNED, b BIGINT, c DECIMAL(10,2), d DATE, \
             e DATETIME(6), f TIME(3), g VARCHAR(10), h VARBINARY(4), \
             i CHAR(3) CHARACTER SET latin1, j SMALLINT, v INT, \
             PRIMARY KEY (a, b, c, d, e, f, g, h, i, j))",
            "INSERT INTO app.k VALUES (4000000000, -5, -12.50, '2026-11-26', \
             '2026-11-26 10:00:00.123456', '-12:34:56.789', 'ß', 0x00ff, 'é', -3, 1)",
        ])
        .await
        .unwrap();
    let cfg = pair.config(1, 2);
    let mut reader = rowlog_mysql_binlog::BinlogReader::connect(&cfg.source, None)
        .await
        .unwrap();
    let streamed = loop {
        let ev = tokio::time::timeout(Duration::from_secs(30), reader.next_event())
            .await
            .expect("the insert is streamed")
            .unwrap();
        if let SourceEvent::Change(c) = ev {
            break c;
        }
    };
    let mut session = rowlog_mysql_binlog::SnapshotSession::open(&cfg.source)
        .await
        .unwrap();
    let table = session.describe(&TableName::new("app", "k")).await.unwrap();
    let rows = session.read_chunk(&table, None, 10).await.unwrap();
    let copied = table.binlog_shaped(rows[0].clone()).unwrap();
    let copied_key: Vec<&Value> = table
        .schema
        .primary_key
        .iter()
        .map(|&i| &copied[i])
        .collect();
    let streamed_key: Vec<&Value> = streamed.key().collect();
    assert_eq!(copied_key, streamed_key);
    assert_eq!(
        rowlog_api::key_bytes(&table.schema.name, copied_key.into_iter()),
        streamed.key_bytes()
    );
    session.close().await;
}
