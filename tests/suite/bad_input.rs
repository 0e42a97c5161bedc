//! Bad input stops rowlog at start with one clear error naming the problem and the
//! fix, exit code 1, and no damage: wrong credentials, missing privileges, an
//! unreachable source, an unknown destination database, a destination missing a table.

use crate::common;

use std::process::Command;
use std::time::Duration;

use common::{InProcess, Pair};

fn run(config: &std::path::Path) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_rowlog"))
        .args(["run", "--config"])
        .arg(config)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn write(pair: &Pair, source_url: &str, sink_url: &str) -> std::path::PathBuf {
    let path = pair.dir.path().join("bad.toml");
    std::fs::write(
        &path,
        format!(
            "[source]\nurl = \"{source_url}\"\n[log]\ndir = \"{}\"\n[sink]\nurl = \"{sink_url}\"\n",
            pair.dir.path().join("log").display()
        ),
    )
    .unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_privileges_and_reachability_are_checked_at_start() {
    let pair = Pair::start().await;
    pair.src
        .exec(&[
            "CREATE USER 'weak'@'%' IDENTIFIED BY 'pw'",
            "GRANT SELECT ON *.* TO 'weak'@'%'",
            "CREATE USER 'weak'@'localhost' IDENTIFIED BY 'pw'",
            "GRANT SELECT ON *.* TO 'weak'@'localhost'",
        ])
        .await
        .unwrap();
    let (src_port, dst) = (pair.src.port, pair.dst.url());

    let (code, err) = run(&write(
        &pair,
        &format!("mysql://root:wrong@127.0.0.1:{src_port}/"),
        &dst,
    ));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("refused the login")
            && err.contains("check the user and password in source.url"),
        "{err}"
    );

    let (code, err) = run(&write(
        &pair,
        &format!("mysql://weak:pw@127.0.0.1:{src_port}/"),
        &dst,
    ));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("lacks a privilege") && err.contains("GRANT REPLICATION SLAVE"),
        "{err}"
    );

    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (code, err) = run(&write(
        &pair,
        &format!("mysql://root@127.0.0.1:{closed}/"),
        &dst,
    ));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!(
            "cannot connect to the source at 127.0.0.1:{closed}"
        )),
        "{err}"
    );

    let (code, err) = run(&write(
        &pair,
        &pair.src.url(),
        &format!("mysql://root:wrong@127.0.0.1:{}/", pair.dst.port),
    ));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("cannot connect to the destination") && err.contains("Access denied"),
        "{err}"
    );
    // A database named in the URL that the destination does not have is the
    // operator's to fix: it stops rowlog instead of being retried forever.
    let (code, err) = run(&write(
        &pair,
        &pair.src.url(),
        &format!("mysql://root@127.0.0.1:{}/no_such_db", pair.dst.port),
    ));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("cannot connect to the destination") && err.contains("no_such_db"),
        "{err}"
    );
    // Nothing was written on the destination by the failed starts.
    let dbs: Vec<String> = mysql_async::prelude::Queryable::query(
        &mut pair.dst.conn().await.unwrap(),
        "SHOW DATABASES LIKE 'rowlog'",
    )
    .await
    .unwrap();
    assert!(dbs.is_empty(), "a failed start created {dbs:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_missing_a_table_halts_naming_it() {
    let pair = Pair::start().await;
    pair.src
        .exec(&[
            "CREATE DATABASE app",
            "CREATE TABLE app.missing (id INT PRIMARY KEY)",
        ])
        .await
        .unwrap();
    pair.dst.exec(&["CREATE DATABASE app"]).await.unwrap();
    // The tables existed before replication starts: no CREATE TABLE reaches rowlog.
    pair.start_here().await;
    let rowlog = InProcess::start(pair.config(1, 1));
    pair.src
        .exec(&["INSERT INTO app.missing VALUES (1)"])
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while rowlog.stats.halted().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the partition never halted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let err = rowlog::report::error_chain(
        &rowlog
            .stop_result()
            .await
            .err()
            .expect("the partition halts"),
    );
    assert!(
        err.contains("app.missing") && err.contains("doesn't exist") && err.contains("key id=1"),
        "{err}"
    );
}
