//! What the source reads and refuses: table filters, tables without a primary key,
//! and a source without full row metadata.

mod common;

use std::time::Duration;

use common::{Daemon, InProcess, Pair};
use mysql_async::prelude::Queryable;
use rowlog::testkit::{MariaDb, ServerOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn excluded_tables_are_not_replicated() {
    let pair = Pair::start().await;
    pair.create(&[
        "CREATE DATABASE app",
        "CREATE TABLE app.kept (id INT PRIMARY KEY, v INT)",
        "CREATE TABLE app.skipped (id INT PRIMARY KEY, v INT)",
        "CREATE TABLE app.nokey (v INT)",
    ])
    .await;
    let mut cfg = pair.config(2, 2);
    cfg.source.exclude.push("app.skip*".into());
    cfg.source.exclude.push("app.nokey".into());
    let rowlog = InProcess::start(cfg);
    pair.src
        .exec(&[
            "INSERT INTO app.skipped VALUES (1, 1)",
            "INSERT INTO app.nokey VALUES (1)",
            "INSERT INTO app.kept VALUES (1, 1), (2, 2)",
        ])
        .await
        .unwrap();
    pair.assert_converges(&[("app.kept", "id")], Duration::from_secs(30))
        .await;
    let mut d = pair.dst.conn().await.unwrap();
    let skipped: u64 = d
        .query_first("SELECT COUNT(*) FROM app.skipped")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(skipped, 0);
    rowlog.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_without_a_primary_key_stops_the_pipeline_naming_it() {
    let pair = Pair::start().await;
    pair.create(&["CREATE DATABASE app", "CREATE TABLE app.nokey (v INT)"])
        .await;
    let config = pair.write_config(2, 2);
    let mut daemon = Daemon::spawn(&config, pair.dir.path().join("rowlog.log"));
    tokio::time::sleep(Duration::from_secs(1)).await;
    pair.src
        .exec(&["INSERT INTO app.nokey VALUES (1)"])
        .await
        .unwrap();
    let mut exited = false;
    for _ in 0..100 {
        if !daemon.is_running() {
            exited = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = daemon.log();
    assert!(exited, "rowlog kept running; log:\n{log}");
    assert!(
        log.contains("table app.nokey has no primary key") && log.contains("source.exclude"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_full_row_metadata_names_and_signedness_come_from_information_schema() {
    let mut opts = ServerOptions::source(21);
    opts.extra_args.push("--binlog-row-metadata=NO_LOG".into());
    let (src, dst) = tokio::join!(
        MariaDb::start(opts),
        MariaDb::start(ServerOptions::destination(22))
    );
    let pair = Pair {
        src: src.unwrap(),
        dst: dst.unwrap(),
        dir: tempfile::tempdir().unwrap(),
    };
    pair.create(&[
        "CREATE DATABASE app",
        "CREATE TABLE app.t (v TINYINT UNSIGNED, id INT UNSIGNED NOT NULL, w INT, PRIMARY KEY (id))",
    ])
    .await;
    let rowlog = InProcess::start(pair.config(2, 2));
    pair.src
        .exec(&[
            "INSERT INTO app.t VALUES (255, 4294967295, -1), (0, 1, 2)",
            "UPDATE app.t SET v = 200 WHERE id = 1",
        ])
        .await
        .unwrap();
    pair.assert_converges(&[("app.t", "id")], Duration::from_secs(30))
        .await;
    rowlog.stop().await;
}
