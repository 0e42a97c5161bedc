//! `rowlog demo`: the quick start. Installs MariaDB when it is missing (Debian, as
//! root), starts a throw-away source and destination on loopback, writes a workload of
//! inserts, updates and deletes, runs the same pipeline as `rowlog run` against them,
//! prints how far it got, and compares every row.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use mysql_async::prelude::Queryable;

use crate::config::{Config, HttpConfig, LogConfig, LoggingConfig};
use crate::pipeline::Stats;
use crate::shutdown;
use crate::testkit::{wait_until_equal, MariaDb, ServerOptions};

fn ensure_mariadb() -> anyhow::Result<()> {
    if std::path::Path::new("/usr/sbin/mariadbd").exists() {
        return Ok(());
    }
    println!("mariadbd not found: installing mariadb-server with apt-get");
    let ok = std::process::Command::new("sh")
        .arg("-c")
        .arg("(apt-get update -qq || true) && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mariadb-server >/dev/null")
        .status()
        .context("running apt-get")?
        .success();
    if !ok {
        bail!("could not install mariadb-server; install it and run the demo again");
    }
    Ok(())
}

pub async fn run(changes: u64) -> anyhow::Result<()> {
    ensure_mariadb()?;
    println!("starting source and destination MariaDB servers on loopback…");
    let src = MariaDb::start(ServerOptions::source(1))
        .await
        .context("starting the source")?;
    let dst = MariaDb::start(ServerOptions::destination(2))
        .await
        .context("starting the destination")?;
    println!("  source      {}\n  destination {}", src.url(), dst.url());

    let schema = "CREATE TABLE demo.accounts (id BIGINT PRIMARY KEY, owner VARCHAR(64) NOT NULL, \
                  balance DECIMAL(18,2) NOT NULL, updated DATETIME(6) NOT NULL, note TEXT)";
    for s in [&src, &dst] {
        s.exec(&["CREATE DATABASE demo", schema]).await?;
    }
    let dir = std::env::temp_dir().join(format!("rowlog-demo-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    // Start at the binlog's end as of now, read before the workload is written: the
    // pipeline then sees every demo change however long it takes to attach.
    let (file, pos): (String, u64) = src
        .conn()
        .await?
        .query_first("SHOW MASTER STATUS")
        .await?
        .map(|row: mysql_async::Row| {
            let file = row.get::<String, _>(0).unwrap_or_default();
            let pos = row.get::<u64, _>(1).unwrap_or(4);
            (file, pos)
        })
        .context("SHOW MASTER STATUS on the demo source returned no row (binlog off?)")?;
    let source_toml = format!("url = \"{}\"\nstart = \"{file}:{pos}\"", src.url());
    let cfg = Config {
        name: "demo".into(),
        shutdown_timeout_secs: 30,
        source: toml_section(&source_toml)?,
        log: LogConfig {
            dir: dir.clone(),
            ..LogConfig::default()
        },
        sink: toml_section(&format!("url = \"{}\"", dst.url()))?,
        logging: LoggingConfig::default(),
        http: HttpConfig::disabled(),
        snapshot: Default::default(),
        kafka: None,
    };
    let (trigger, stop) = shutdown::channel();
    let pipeline = tokio::spawn(crate::daemon::run(cfg, stop));

    println!("writing {changes} row changes on the source…");
    let started = Instant::now();
    let mut c = src.conn().await?;
    let mut written = 0u64;
    let mut id = 0u64;
    while written < changes {
        let mut tx = c.start_transaction(Default::default()).await?;
        for _ in 0..100 {
            id += 1;
            tx.exec_drop(
                "INSERT INTO demo.accounts VALUES (?, ?, ?, NOW(6), ?)",
                (
                    id,
                    format!("owner-{id}"),
                    format!("{}.{:02}", id * 7, id % 100),
                    "naïve café ☕",
                ),
            )
            .await?;
            written += 1;
            if id.is_multiple_of(3) {
                tx.exec_drop(
                    "UPDATE demo.accounts SET balance = balance + 1, updated = NOW(6) WHERE id = ?",
                    (id - 1,),
                )
                .await?;
                written += 1;
            }
            if id.is_multiple_of(10) {
                tx.exec_drop("DELETE FROM demo.accounts WHERE id = ?", (id - 5,))
                    .await?;
                written += 1;
            }
        }
        tx.commit().await?;
    }
    println!(
        "  wrote {written} changes in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let mut s = src.conn().await?;
    let mut d = dst.conn().await?;
    let diffs = wait_until_equal(
        &mut s,
        &mut d,
        &[("demo.accounts", "id")],
        Duration::from_secs(120),
    )
    .await?;
    println!(
        "replicated in {:.1} s after the workload started",
        started.elapsed().as_secs_f64()
    );
    trigger.trigger();
    let stats = pipeline
        .await
        .context("pipeline task")?
        .map_err(|e| anyhow::anyhow!(crate::daemon::error_chain(&e)))?;
    report(&stats);
    let _ = std::fs::remove_dir_all(&dir);
    for diff in &diffs {
        if !diff.is_equal() {
            bail!("{} differs: {:?}", diff.table, diff);
        }
        println!(
            "{}: {} rows on both sides, every row equal, CHECKSUM TABLE {:?} on both",
            diff.table,
            diff.source_rows,
            diff.checksums.0.unwrap_or_default()
        );
    }
    let rows: u64 = d
        .query_first("SELECT COUNT(*) FROM demo.accounts")
        .await?
        .unwrap_or(0);
    println!("demo done: destination holds {rows} rows, equal to the source");
    Ok(())
}

fn report(stats: &Stats) {
    println!(
        "pipeline: read {} changes, appended {} to the log, applied {} to the destination, checkpoint {}",
        Stats::get(&stats.source_changes),
        Stats::get(&stats.appended),
        Stats::get(&stats.applied),
        stats.checkpoint()
    );
}

fn toml_section<T: serde::de::DeserializeOwned>(body: &str) -> anyhow::Result<T> {
    config::Config::builder()
        .add_source(config::File::from_str(body, config::FileFormat::Toml))
        .build()?
        .try_deserialize()
        .context("demo config")
}
