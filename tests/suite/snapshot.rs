//! The initial snapshot: an empty destination gets a copy of every replicated table
//! while the source takes writes, then the stream goes on from exactly where each copy
//! left off; a crash mid-copy resumes after the last chunk; `when_needed` copies again
//! after a purged position; `rowlog snapshot --tables` copies chosen tables again, with
//! rowlog stopped or while it streams the rest.

use crate::common;

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

/// Waits until the destination's `table` has at least `rows` rows (a copy under way).
async fn wait_for_rows(pair: &Pair, table: &str, rows: u64) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let n: Option<u64> = pair
            .dst
            .conn()
            .await
            .unwrap()
            .query_first(format!("SELECT COUNT(*) FROM {table}"))
            .await
            .unwrap_or(None);
        if n.unwrap_or(0) >= rows {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the copy of {table} never got going"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
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
    wait_for_rows(&pair, "app.accounts", 50_000).await;
    daemon.kill();
    let state = std::fs::read(pair.log_dir().join("snapshot.state")).unwrap();
    assert!(!state.is_empty());
    // A table the interrupted copy still had to do is dropped meanwhile: the next
    // start gives it up instead of failing on it at every start. Its last change
    // comes after the stream's start (the big table's floor), and the destination
    // never got the table: that change is not applied (it would halt its partition).
    pair.src
        .exec(&["INSERT INTO app.gone VALUES (11)", "DROP TABLE app.gone"])
        .await
        .unwrap();

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

/// A table created after the snapshot listed the tables but before its copies took
/// their floors is not copied (not listed); streaming starting at the lowest floor, it
/// would never reach the destination. Streaming starts at a position taken before the
/// listing instead, so its CREATE and rows are streamed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_created_after_the_snapshot_listed_the_tables_is_streamed_from_its_create() {
    let pair = Pair::start().await;
    fill(&pair, 2_000).await;
    // The source behind a slow proxy: a copy's consistent read takes seconds to open,
    // and the window between the listing and the first floor is wide enough to write in.
    let proxy = rowlog::testkit::Proxy::start(pair.src.port).await.unwrap();
    proxy.set_latency(Duration::from_millis(200));
    let config = snapshot_config(&pair, "concurrency = 1\n");
    let toml = std::fs::read_to_string(&config).unwrap().replace(
        &pair.src.url(),
        &format!("mysql://root@127.0.0.1:{}/", proxy.port),
    );
    std::fs::write(&config, toml).unwrap();
    let daemon = Daemon::spawn(&config, pair.dir.path().join("rowlog.log"));
    // snapshot.state is first written right after the listing.
    let state = pair.log_dir().join("snapshot.state");
    let deadline = Instant::now() + Duration::from_secs(120);
    while !state.exists() {
        assert!(
            Instant::now() < deadline,
            "no snapshot.state:\n{}",
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    proxy.stall();
    pair.src
        .exec(&[
            "CREATE TABLE app.late (id INT PRIMARY KEY, v VARCHAR(10))",
            "INSERT INTO app.late SELECT seq, 'early' FROM app.seq_1_to_50",
        ])
        .await
        .unwrap();
    let mut c = pair.src.conn().await.unwrap();
    let (file, pos): (String, u64) = c
        .query_first("SHOW MASTER STATUS")
        .await
        .unwrap()
        .map(|(f, p, _, _): (String, u64, String, String)| (f, p))
        .unwrap();
    proxy.set_latency(Duration::ZERO);
    proxy.restore();
    wait_for_log(&daemon, "snapshot done", Duration::from_secs(120)).await;
    // The test made the race it is about: every floor is after the new table's rows.
    let written: rowlog_api::BinlogPosition = format!("{file}:{pos}").parse().unwrap();
    let taken = rowlog::snapshot::SnapshotState::load(&pair.log_dir())
        .unwrap()
        .unwrap();
    for t in taken.tables.iter().filter(|t| t.table.table != "late") {
        let floor = &t.floor.as_ref().unwrap().position;
        assert!(
            *floor >= written,
            "{}: floor {floor} before the new table's rows at {written}",
            t.table
        );
    }
    c.query_drop("INSERT INTO app.late SELECT seq, 'streamed' FROM app.seq_51_to_80")
        .await
        .unwrap();
    c.query_drop("UPDATE app.late SET v = 'changed' WHERE id % 7 = 0")
        .await
        .unwrap();
    pair.assert_converges(
        &[
            ("app.late", "id"),
            ("app.accounts", "id"),
            ("app.events", "stream, seq"),
        ],
        Duration::from_secs(60),
    )
    .await;
    let n: Option<u64> = pair
        .dst
        .conn()
        .await
        .unwrap()
        .query_first("SELECT COUNT(*) FROM app.late")
        .await
        .unwrap();
    assert_eq!(n, Some(80));
    daemon.terminate_cleanly();
}

/// A table without a primary key cannot be copied chunk after chunk by key, but it is
/// still not read into memory whole: the rows stream from one consistent read and go
/// to the destination a chunk at a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyless_table_of_half_a_million_rows_is_copied_with_bounded_memory() {
    let pair = Pair::start().await;
    pair.src
        .exec(&[
            "CREATE DATABASE app",
            "CREATE TABLE app.log (at INT NOT NULL, line CHAR(100) NOT NULL)",
            "INSERT INTO app.log SELECT seq % 1000, CONCAT('line ', seq, REPEAT('.', 80)) \
             FROM app.seq_1_to_500000",
        ])
        .await
        .unwrap();
    let config = snapshot_config(&pair, "chunk_rows = 10000\n");
    let mut daemon = Daemon::spawn(&config, pair.dir.path().join("rowlog.log"));
    let deadline = Instant::now() + Duration::from_secs(240);
    while !daemon.log().contains("snapshot done") {
        assert!(daemon.is_running(), "rowlog exited:\n{}", daemon.log());
        assert!(
            Instant::now() < deadline,
            "no `snapshot done`:\n{}",
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The high-water mark of the process's resident memory, so far.
    let peak = rowlog::report::proc_status_kib(&daemon.pid().to_string(), "VmHWM:") / 1024;
    pair.assert_converges(&[("app.log", "at, line")], Duration::from_secs(60))
        .await;
    println!("peak RSS of rowlog copying a 500,000-row keyless table: {peak} MiB");
    // Measured here: read whole in one chunk, 312 MiB at the peak (599 MiB for a
    // million rows); streamed, 43 MiB.
    assert!(peak < 160, "peak RSS {peak} MiB");
    daemon.terminate_cleanly();
}

/// A copy interrupted midway goes on after its last chunk, into the destination table
/// it made. If the source table changed shape meanwhile, the rows read now would not
/// fit that table: the copy starts over, with the table in its new shape.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_altered_while_its_copy_was_interrupted_is_copied_again_in_its_new_shape() {
    let pair = Pair::start().await;
    pair.src
        .exec(&[
            "CREATE DATABASE app",
            "CREATE TABLE app.wide (id INT PRIMARY KEY, v VARCHAR(40) NOT NULL)",
            "INSERT INTO app.wide SELECT seq, CONCAT('v', seq) FROM app.seq_1_to_200000",
        ])
        .await
        .unwrap();
    let config = snapshot_config(&pair, "concurrency = 1\nchunk_rows = 2000\n");
    let daemon = Daemon::spawn(&config, pair.dir.path().join("first.log"));
    wait_for_rows(&pair, "app.wide", 20_000).await;
    daemon.kill();
    let left: u64 = pair
        .dst
        .conn()
        .await
        .unwrap()
        .query_first("SELECT COUNT(*) FROM app.wide")
        .await
        .unwrap()
        .unwrap();
    assert!(
        left < 200_000,
        "the copy was interrupted midway ({left} rows)"
    );
    pair.src
        .exec(&[
            "ALTER TABLE app.wide ADD COLUMN w INT NOT NULL DEFAULT 7, MODIFY v VARCHAR(60) NOT NULL",
            "UPDATE app.wide SET w = id % 5, v = CONCAT(v, '-longer-than-forty-characters-now') WHERE id % 9 = 0",
        ])
        .await
        .unwrap();
    let daemon = Daemon::spawn(&config, pair.dir.path().join("second.log"));
    wait_for_log(&daemon, "snapshot done", Duration::from_secs(120)).await;
    let log = daemon.log();
    assert!(
        log.contains("changed shape on the source while its copy was interrupted"),
        "{log}"
    );
    pair.src
        .exec(&["UPDATE app.wide SET w = 100 WHERE id <= 10"])
        .await
        .unwrap();
    pair.assert_converges(&[("app.wide", "id")], Duration::from_secs(60))
        .await;
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
    // So is a table the destination does not have (an online copy makes no tables),
    // instead of being waited for without end. Made outside the binlog, so only the
    // source has it; dropped the same way afterwards.
    pair.src
        .exec(&[
            "SET sql_log_bin = 0",
            "CREATE TABLE app.source_only (id INT PRIMARY KEY)",
            "INSERT INTO app.source_only VALUES (1), (2)",
        ])
        .await
        .unwrap();
    let out = run("app.source_only").await.unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("app.source_only is not on the destination"),
        "{err}"
    );
    pair.src
        .exec(&["SET sql_log_bin = 0", "DROP TABLE app.source_only"])
        .await
        .unwrap();
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

/// A destination row whose text key the collation calls equal to the source's but
/// whose bytes differ ('abc' against 'ABC', 'cafe' against 'Café'): a copy while
/// rowlog runs gives it the source's bytes. Before, the upsert matched the row and
/// kept the destination's key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_while_streaming_gives_a_text_key_the_sources_bytes() {
    let pair = Pair::start().await;
    pair.src
        .exec(&[
            "CREATE DATABASE app",
            "CREATE TABLE app.names (name VARCHAR(20) CHARACTER SET utf8mb4 \
             COLLATE utf8mb4_general_ci PRIMARY KEY, v INT NOT NULL)",
            "INSERT INTO app.names VALUES ('ABC', 1), ('Café', 2), ('xyz', 3)",
        ])
        .await
        .unwrap();
    let config = snapshot_config(&pair, "");
    let daemon = Daemon::spawn(&config, pair.dir.path().join("rowlog.log"));
    wait_for_log(&daemon, "snapshot done", Duration::from_secs(120)).await;
    let names = [("app.names", "v")];
    pair.assert_converges(&names, Duration::from_secs(60)).await;
    pair.dst
        .exec(&[
            "UPDATE app.names SET name = 'abc' WHERE v = 1",
            "UPDATE app.names SET name = 'cafe', v = 0 WHERE v = 2",
        ])
        .await
        .unwrap();
    let out = tokio::task::spawn_blocking({
        let config = config.clone();
        move || rowlog_snapshot(&config, "app.names")
    })
    .await
    .unwrap();
    let text = succeeded(&out);
    assert!(text.contains("1 table(s) copied"), "{text}");
    pair.assert_converges(&names, Duration::from_secs(60)).await;
    let rows: Vec<(String, i32)> = pair
        .dst
        .conn()
        .await
        .unwrap()
        .query("SELECT name, v FROM app.names ORDER BY v")
        .await
        .unwrap();
    assert_eq!(
        rows,
        [("ABC".into(), 1), ("Café".into(), 2), ("xyz".into(), 3)]
    );
    daemon.terminate_cleanly();
}

/// The rows of `table` as (key bytes, v), in the order of `v`.
async fn keys_and_values(server: &rowlog::testkit::MariaDb, table: &str) -> Vec<(Vec<u8>, i32)> {
    server
        .conn()
        .await
        .unwrap()
        .query(format!(
            "SELECT CAST(k AS BINARY), v FROM {table} ORDER BY v"
        ))
        .await
        .unwrap()
}

/// The keys of `table` in the server's own key order.
async fn key_order(server: &rowlog::testkit::MariaDb, table: &str) -> Vec<String> {
    server
        .conn()
        .await
        .unwrap()
        .query(format!("SELECT k FROM {table} ORDER BY k"))
        .await
        .unwrap()
}

/// Source and destination order a text key differently (the source's
/// `utf8mb4_general_ci` puts 'b' before 'C', the destination's `utf8mb4_bin` after
/// it), and the copy reads two keys per chunk. Before, a chunk ended at the
/// destination's second key and read the source only up to it, LIMIT 2: by the code,
/// `app.k` lost the source's row 'c' and `app.m` kept the destination's stale spelling
/// 'D' beside the source's 'd' (a key spelled otherwise in another chunk was left
/// alone); the copy of `app.l` went round in circles without end (seen: the old code
/// failed this test at its 120-s limit). Now each server's keys are scanned in its
/// own order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_while_streaming_misses_no_row_when_the_destination_orders_keys_otherwise() {
    let pair = Pair::start().await;
    let table = |t: &str| {
        format!(
            "CREATE TABLE app.{t} (k VARCHAR(10) CHARACTER SET utf8mb4 \
             COLLATE utf8mb4_general_ci PRIMARY KEY, v INT NOT NULL)"
        )
    };
    pair.src
        .exec(&[
            "CREATE DATABASE app",
            &table("k"),
            &table("l"),
            &table("m"),
            "INSERT INTO app.k VALUES ('A', 1), ('b', 2), ('c', 3), ('D', 4)",
            "INSERT INTO app.l VALUES ('a', 1), ('b', 2), ('C', 3), ('D', 4), ('e', 5)",
            "INSERT INTO app.m VALUES ('a', 1), ('b', 2), ('c', 3), ('d', 4)",
        ])
        .await
        .unwrap();
    let config = snapshot_config(&pair, "chunk_rows = 2\n");
    let daemon = Daemon::spawn(&config, pair.dir.path().join("rowlog.log"));
    wait_for_log(&daemon, "snapshot done", Duration::from_secs(120)).await;
    for t in ["app.k", "app.l", "app.m"] {
        let deadline = Instant::now() + Duration::from_secs(60);
        while keys_and_values(&pair.dst, t).await != keys_and_values(&pair.src, t).await {
            assert!(
                Instant::now() < deadline,
                "{t} never reached the destination"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // Behind rowlog's back: the destination's keys become binary, and rows go wrong.
    let binary = |t: &str| {
        format!(
            "ALTER TABLE app.{t} MODIFY k VARCHAR(10) CHARACTER SET utf8mb4 \
             COLLATE utf8mb4_bin NOT NULL"
        )
    };
    pair.dst
        .exec(&[
            &binary("k"),
            &binary("l"),
            &binary("m"),
            "DELETE FROM app.k WHERE k = 'c'",
            "DELETE FROM app.l WHERE k = 'C'",
            "INSERT INTO app.l VALUES ('zz', 99)",
            "UPDATE app.m SET k = 'D' WHERE k = 'd'",
        ])
        .await
        .unwrap();
    // The premise: the two servers order the keys differently.
    assert_eq!(
        key_order(&pair.src, "app.l").await,
        ["a", "b", "C", "D", "e"]
    );
    assert_eq!(
        key_order(&pair.dst, "app.l").await,
        ["D", "a", "b", "e", "zz"]
    );

    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_rowlog"))
        .args(["snapshot", "-c"])
        .arg(&config)
        .args(["--tables", "app.k,app.l,app.m"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while command.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = command.kill();
            panic!(
                "the copy did not end in 120 s; rowlog's log:\n{}",
                daemon.log()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let text = succeeded(&command.wait_with_output().unwrap());
    assert!(text.contains("3 table(s) copied"), "{text}");
    let rows = |r: &[(&str, i32)]| -> Vec<(Vec<u8>, i32)> {
        r.iter().map(|(k, v)| (k.as_bytes().to_vec(), *v)).collect()
    };
    let expected = [
        ("app.k", rows(&[("A", 1), ("b", 2), ("c", 3), ("D", 4)])),
        (
            "app.l",
            rows(&[("a", 1), ("b", 2), ("C", 3), ("D", 4), ("e", 5)]),
        ),
        ("app.m", rows(&[("a", 1), ("b", 2), ("c", 3), ("d", 4)])),
    ];
    for (t, want) in expected {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let got = keys_and_values(&pair.dst, t).await;
            if got == want {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{t} on the destination: {got:?}, want {want:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(
            keys_and_values(&pair.src, t).await,
            want,
            "{t} on the source"
        );
    }
    daemon.terminate_cleanly();
}

/// A table copy that fails for good stops the snapshot at once. Before, the other
/// workers went on to copy every remaining table (hours, on a big source), and only
/// then was the error reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_table_copy_stops_the_snapshot_without_copying_the_rest_first() {
    let pair = Pair::start().await;
    let b = |t: &str| format!("CREATE TABLE app.{t} (id INT PRIMARY KEY, v VARCHAR(200))");
    pair.src
        .exec(&[
            "CREATE DATABASE app",
            "CREATE TABLE app.a_missing (id INT PRIMARY KEY)",
            "INSERT INTO app.a_missing VALUES (1)",
            &b("b1"),
            "INSERT INTO app.b1 SELECT seq, REPEAT('x', 200) FROM app.seq_1_to_300000",
            &b("b2"),
            "INSERT INTO app.b2 VALUES (1, 'one')",
        ])
        .await
        .unwrap();
    // The destination has every table but the first one copied.
    pair.dst
        .exec(&["CREATE DATABASE app", &b("b1"), &b("b2")])
        .await
        .unwrap();
    // Tables are copied in name order: one worker fails on app.a_missing at once,
    // while the other is copying app.b1.
    let path = snapshot_config(
        &pair,
        "concurrency = 2\nchunk_rows = 2000\ncreate_tables = false\n",
    );
    let cfg = rowlog::config::Config::load_with_env(&path, Default::default()).unwrap();
    let rowlog = common::InProcess::start(cfg);
    let error = rowlog
        .stopped_error(
            Duration::from_secs(120),
            "the snapshot stops at the missing table",
        )
        .await;
    assert!(
        error.contains("app.a_missing") && error.contains("create_tables"),
        "{error}"
    );
    let count = |t: &'static str| {
        let dst = &pair.dst;
        async move {
            let n: Option<u64> = dst
                .conn()
                .await
                .unwrap()
                .query_first(format!("SELECT COUNT(*) FROM app.{t}"))
                .await
                .unwrap();
            n.unwrap()
        }
    };
    assert_eq!(count("b2").await, 0, "app.b2 was copied after the failure");
    assert!(
        count("b1").await < 300_000,
        "app.b1 was copied to its end after the failure"
    );
}

/// A copy while streaming that stops for good says why in `/status`
/// (`snapshot.failed`), and no copy shows as running. Before, `/status` said a copy
/// was running until the daemon restarted, and named no failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_while_streaming_that_fails_shows_the_failure_in_status() {
    let pair = Pair::start().await;
    pair.create(&["CREATE DATABASE app", "CREATE TABLE app.k (id INT)"])
        .await;
    let (cfg, addr) = common::http::config_with_http(&pair, 1, 2);
    let dir = cfg.log.dir.clone();
    let rowlog = common::InProcess::start(cfg);
    common::http::poll("/status to answer", Duration::from_secs(60), || {
        common::http::get(&addr, "/status")
    })
    .await;
    rowlog::resnapshot::Request::submit(&dir, vec![rowlog_api::TableName::new("app", "k")])
        .unwrap();
    let status: serde_json::Value = common::http::poll(
        "a failed copy in /status",
        Duration::from_secs(60),
        || async {
            let (_, body) = common::http::get(&addr, "/status").await?;
            let v: serde_json::Value = serde_json::from_str(&body).ok()?;
            v["snapshot"]["failed"].is_string().then_some(v)
        },
    )
    .await;
    let failed = status["snapshot"]["failed"].as_str().unwrap();
    assert!(failed.contains("app.k has no primary key"), "{failed}");
    assert_eq!(status["snapshot"]["running"], false, "{status}");
    rowlog.stop().await;
}

/// SIGTERM while an initial snapshot's read hangs on a source gone silent: the copy is
/// dropped a third of `shutdown_timeout_secs` after the signal, rowlog exits 0 (its
/// lease released), and the next start copies on and converges. Before, it waited for
/// the read until the shutdown time-out and exited 1 without releasing its lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_while_a_snapshot_read_hangs_exits_cleanly_and_the_copy_resumes() {
    let pair = Pair::start().await;
    fill(&pair, 100_000).await;
    let proxy = rowlog::testkit::Proxy::start(pair.src.port).await.unwrap();
    let config = snapshot_config(&pair, "concurrency = 1\nchunk_rows = 2000\n");
    let toml = std::fs::read_to_string(&config).unwrap().replace(
        &pair.src.url(),
        &format!("mysql://root@127.0.0.1:{}/", proxy.port),
    );
    std::fs::write(&config, toml).unwrap();
    let daemon = Daemon::spawn(&config, pair.dir.path().join("first.log"));
    wait_for_rows(&pair, "app.accounts", 4000).await;
    // The source stops answering mid-copy, as over a network partition.
    proxy.stall();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let log_path = pair.dir.path().join("first.log");
    let started = Instant::now();
    daemon.terminate_cleanly();
    assert!(
        started.elapsed() < Duration::from_secs(25),
        "exited after {:?}",
        started.elapsed()
    );
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(log.contains("dropped where it was"), "{log}");
    proxy.restore();
    let daemon = Daemon::spawn(&config, pair.dir.path().join("second.log"));
    wait_for_log(&daemon, "snapshot done", Duration::from_secs(180)).await;
    converge_and_verify(&pair, &config).await;
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
    // And routes like it: the copy's schema names some types differently.
    let copied_change = rowlog_api::ChangeEvent {
        table: table.schema.clone(),
        op: rowlog_api::Op::Insert,
        before: None,
        after: Some(copied),
        source: streamed.source.clone(),
    };
    assert_eq!(
        copied_change.routing_key_bytes(),
        streamed.routing_key_bytes()
    );
    session.close().await;
}
