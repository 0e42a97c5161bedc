//! The initial snapshot: an empty destination gets a copy of every replicated table
//! while the source takes writes, then the stream goes on from exactly where each copy
//! left off; a crash mid-copy resumes after the last chunk; `rowlog snapshot --tables`
//! copies chosen tables again.

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

    let stop = Arc::new(AtomicBool::new(false));
    let writes = load(pair.src.url(), stop.clone());
    let daemon = Daemon::spawn(&config, pair.dir.path().join("second.log"));
    wait_for_log(&daemon, "snapshot done", Duration::from_secs(240)).await;
    let log = daemon.log();
    assert!(
        log.contains("copying table") && log.contains("resume=true"),
        "the second run goes on after the last chunk, not from zero:\n{log}"
    );
    stop.store(true, Ordering::Relaxed);
    writes.await.unwrap();
    converge_and_verify(&pair, &config).await;
    daemon.terminate_cleanly();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rowlog_snapshot_copies_chosen_tables_again_and_the_stream_goes_on() {
    let pair = Pair::start().await;
    fill(&pair, 20_000).await;
    let config = snapshot_config(&pair, "");
    let daemon = Daemon::spawn(&config, pair.dir.path().join("first.log"));
    wait_for_log(&daemon, "snapshot done", Duration::from_secs(120)).await;
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
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rowlog"))
        .args(["snapshot", "-c"])
        .arg(&config)
        .args(["--tables", "app.events,app.tags"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
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
