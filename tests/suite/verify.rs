//! `rowlog verify` compares source and destination chunk by chunk while replication
//! runs: lag is not a difference, a damaged row is, and it is named by its key.

use crate::common;

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{Daemon, Pair};
use mysql_async::prelude::Queryable;

fn verify(config: &std::path::Path, lag_timeout: &str, extra: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_rowlog"))
        .args(["verify", "-c"])
        .arg(config)
        .args(["--chunk-rows", "700", "--lag-timeout-secs", lag_timeout])
        .args(extra)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_allows_for_lag_and_names_every_damaged_row() {
    let pair = Pair::start().await;
    pair.create(&[
        "CREATE DATABASE app",
        "CREATE TABLE app.t (id INT PRIMARY KEY, v INT NOT NULL, s VARCHAR(20))",
        "CREATE TABLE app.pairs (a INT, b VARCHAR(10), v INT, PRIMARY KEY (a, b))",
    ])
    .await;
    // Batches wait up to 300 ms: the destination is visibly behind under load.
    let toml = pair
        .config_toml(2, 4)
        .replace("[sink]\n", "[sink]\nbatch_max_wait_ms = 300\n");
    let config = pair.dir.path().join("rowlog.toml");
    std::fs::write(&config, toml).unwrap();
    let daemon = Daemon::spawn(&config, pair.dir.path().join("rowlog.log"));
    pair.src
        .exec(&[
            "INSERT INTO app.t SELECT seq, seq, CONCAT('s', seq) FROM app.seq_1_to_5000",
            "INSERT INTO app.pairs SELECT seq % 40, CONCAT('k', seq), seq FROM app.seq_1_to_2000",
        ])
        .await
        .unwrap();
    pair.assert_converges(
        &[("app.t", "id"), ("app.pairs", "a, b")],
        Duration::from_secs(60),
    )
    .await;

    // A write load while verify runs: new rows, and updates of the rows just written.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (url, stop) = (pair.src.url(), stop.clone());
        tokio::spawn(async move {
            let mut c = mysql_async::Conn::new(mysql_async::Opts::from_url(&url).unwrap())
                .await
                .unwrap();
            let mut id = 10_000;
            while !stop.load(Ordering::Relaxed) {
                c.exec_drop("INSERT INTO app.t VALUES (?, ?, 'load')", (id, id))
                    .await
                    .unwrap();
                c.exec_drop("UPDATE app.t SET v = v + 1 WHERE id = ?", (id - 5,))
                    .await
                    .unwrap();
                id += 1;
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
        })
    };
    let (code, out) = tokio::task::spawn_blocking({
        let config = config.clone();
        move || verify(&config, "30", &[])
    })
    .await
    .unwrap();
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    assert_eq!(code, 0, "lag is not a difference:\n{out}");
    assert!(
        out.contains("app.t: ") && out.contains("app.pairs: 2000 rows"),
        "{out}"
    );
    assert!(out.contains("2 tables: equal"), "{out}");

    // Damage the destination: a changed row, a missing one, an extra one, and a
    // changed row of the composite-key table.
    pair.assert_converges(&[("app.t", "id")], Duration::from_secs(60))
        .await;
    pair.dst
        .exec(&[
            "UPDATE app.t SET s = 'tampered' WHERE id = 1234",
            "DELETE FROM app.t WHERE id = 4321",
            "INSERT INTO app.t VALUES (99999999, 0, 'extra')",
            "UPDATE app.pairs SET v = -1 WHERE a = 7 AND b = 'k7'",
        ])
        .await
        .unwrap();
    let (code, out) = tokio::task::spawn_blocking({
        let config = config.clone();
        move || verify(&config, "3", &[])
    })
    .await
    .unwrap();
    assert_eq!(code, 1, "{out}");
    for line in [
        "app.t: id=1234 (differs)",
        "app.t: id=4321 (missing on the destination)",
        "app.t: id=99999999 (only on the destination)",
        "app.pairs: a=7, b='k7' (differs)",
    ] {
        assert!(out.contains(line), "{line} not in:\n{out}");
    }
    assert!(out.contains("app.t: ") && out.contains("3 DIFFER"), "{out}");
    assert!(out.contains("DIFFERENT"), "{out}");

    // --tables narrows it to one table.
    let (code, out) = tokio::task::spawn_blocking({
        let config = config.clone();
        move || verify(&config, "3", &["--tables", "app.pairs"])
    })
    .await
    .unwrap();
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("1 tables") && !out.contains("app.t:"), "{out}");
    daemon.terminate_cleanly();
}
