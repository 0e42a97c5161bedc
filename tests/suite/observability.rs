//! The operations surface against real servers: `/metrics`, `/healthz`, `/readyz` and
//! `/status` of a rowlog replicating a real MariaDB pair; a destination that blocks
//! (stalled, with the failing key), one that rejects a change (halted, with the
//! rejected change), a source that goes away, and the real binary's port.
//! The dashboards and alert rules are checked in `tests/suite/dashboards.rs`.

use crate::common;

use std::sync::Arc;
use std::time::Duration;

use common::http::{
    assert_rows_by_op, assert_status_caught_up, config_with_http, free_port, get, poll, scrape,
    Scrape,
};
use common::{InProcess, Pair};
use mysql_async::prelude::Queryable;

const TABLE: &str = "CREATE TABLE app.t (id INT PRIMARY KEY, v INT NOT NULL)";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_report_offsets_rows_lag_and_readiness_of_a_running_pipeline() {
    let pair = Pair::start().await;
    pair.create(&["CREATE DATABASE app", TABLE]).await;
    let (cfg, addr) = config_with_http(&pair, 2, 4);
    let rowlog = InProcess::start(cfg);

    let health = poll("/healthz", Duration::from_secs(30), || async {
        get(&addr, "/healthz").await
    })
    .await;
    assert_eq!(health.0, 200);

    let mut c = pair.src.conn().await.unwrap();
    c.query_drop("INSERT INTO app.t SELECT seq, seq FROM app.seq_1_to_3000")
        .await
        .unwrap();
    c.query_drop("UPDATE app.t SET v = v + 1 WHERE id <= 1000")
        .await
        .unwrap();
    c.query_drop("DELETE FROM app.t WHERE id > 2500")
        .await
        .unwrap();
    pair.assert_converges(&[("app.t", "id")], Duration::from_secs(60))
        .await;

    // Rows applied, by table and operation, equal rows written; every partition's
    // watermark reaches its end.
    let m = poll(
        "all 4500 changes applied and committed",
        Duration::from_secs(30),
        || async {
            let m = scrape(&addr).await;
            // The sampler measures log files every few seconds.
            // …and copies the log's fsync counts every second.
            let sized = (0..4).all(|p| {
                m.get("rowlog_log_size_bytes", &[("partition", &p.to_string())]) > 0.0
                    && m.get("rowlog_log_fsyncs_total", &[("partition", &p.to_string())]) >= 1.0
            });
            (m.sum("rowlog_sink_rows_applied_total", &[]) == Some(4500.0)
                && m.get("rowlog_sink_lag_records", &[]) == 0.0
                && sized)
                .then_some(m)
        },
    )
    .await;
    assert_rows_by_op(
        &m,
        "app.t",
        &[("insert", 3000.0), ("update", 1000.0), ("delete", 500.0)],
    );
    assert_eq!(m.get("rowlog_log_appended_records_total", &[]), 4500.0);
    assert_eq!(m.get("rowlog_log_end_offset", &[]), 4500.0);
    assert_eq!(m.get("rowlog_sink_committed_offset", &[]), 4500.0);
    assert_eq!(m.get("rowlog_end_to_end_lag_seconds_count", &[]), 4500.0);
    assert_eq!(m.get("rowlog_sink_batch_rows_sum", &[]), 4500.0);
    for p in 0..4 {
        let p = p.to_string();
        assert!(m.get("rowlog_log_fsyncs_total", &[("partition", &p)]) >= 1.0);
        assert!(m.get("rowlog_log_segments", &[("partition", &p)]) >= 1.0);
        assert!(m.get("rowlog_log_size_bytes", &[("partition", &p)]) > 0.0);
    }
    assert!(m.get("rowlog_log_append_duration_seconds_count", &[]) >= 1.0);
    assert!(m.get("rowlog_sink_apply_duration_seconds_count", &[]) >= 1.0);
    assert_eq!(m.get("rowlog_source_connected", &[]), 1.0);
    assert_eq!(m.get("rowlog_sink_partitions_applying", &[]), 4.0);
    assert_eq!(m.get("rowlog_pipeline_halted", &[]), 0.0);
    assert_eq!(m.get("rowlog_pipeline_stalled", &[]), 0.0);
    // No change was rejected. A loaded machine may see a transient error (a deadlock
    // between workers, a slow connect); each such error is a retry, never a loss.
    assert_eq!(m.get("rowlog_errors_total", &[("kind", "definite")]), 0.0);
    let transient = m.get(
        "rowlog_errors_total",
        &[("stage", "sink"), ("kind", "retryable")],
    );
    assert_eq!(m.get("rowlog_sink_retries_total", &[]), transient);
    assert!(m.get("rowlog_source_position_info", &[]) > 0.0);
    assert!(
        m.get("rowlog_source_gtid_sequence", &[]) >= 3.0,
        "three transactions"
    );
    assert!(m.get("rowlog_process_resident_memory_bytes", &[]) > 1e6);
    assert!(m.get("rowlog_process_open_fds", &[]) > 3.0);
    assert!(m.get("rowlog_process_uptime_seconds", &[]) > 0.0);
    assert_eq!(m.get("rowlog_build_info", &[]), 1.0);
    let lag_sum = m.get("rowlog_end_to_end_lag_seconds_sum", &[]);
    assert!(
        lag_sum / 4500.0 < 30.0,
        "mean end-to-end lag {} s",
        lag_sum / 4500.0
    );

    // Idle: heartbeats keep the source lag near zero instead of freezing it at the age
    // of the last transaction.
    let beats = m.get("rowlog_source_events_total", &[("kind", "heartbeat")]);
    let idle = poll("two more heartbeats", Duration::from_secs(20), || async {
        let m = scrape(&addr).await;
        (m.get("rowlog_source_events_total", &[("kind", "heartbeat")]) >= beats + 2.0).then_some(m)
    })
    .await;
    let lag = idle.get("rowlog_source_lag_seconds", &[]);
    assert!((0.0..3.0).contains(&lag), "idle source lag {lag} s");

    let (code, body) = poll("/readyz 200", Duration::from_secs(10), || async {
        get(&addr, "/readyz").await.filter(|(c, _)| *c == 200)
    })
    .await;
    assert_eq!(code, 200);
    let ready: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(ready["ready"], true);

    let (code, body) = get(&addr, "/status").await.unwrap();
    assert_eq!(code, 200);
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status["ready"], true, "{status:#}");
    assert_eq!(status["halted"], false);
    assert_eq!(status["name"], "test");
    assert_status_caught_up(&status, 4, 4500);
    assert_eq!(status["source"]["connected"], true);
    let position = status["source"]["position"].as_str().unwrap();
    assert!(
        position.parse::<rowlog_api::BinlogPosition>().is_ok(),
        "{position}"
    );
    assert!(
        status["source"]["checkpoint"].as_str().is_some(),
        "{status:#}"
    );
    assert!(status["source"]["gtid"].as_str().is_some(), "{status:#}");
    if transient == 0.0 {
        assert!(status["last_error"].is_null(), "{status:#}");
    } else {
        assert_eq!(status["last_error"]["retryable"], true, "{status:#}");
    }

    let stats = rowlog.stop().await;
    assert_eq!(rowlog::pipeline::Stats::get(&stats.applied), 4500);
    // The port is closed once the daemon stopped.
    assert!(get(&addr, "/healthz").await.is_none());
}

/// A restarted daemon shows the sink where it stopped while it is still starting
/// (here: waiting for the pipeline's lease, which another process holds). Before, the
/// committed offsets read 0 until each partition's task started, so every restart
/// showed the whole log as the sink's lag.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_shows_the_sinks_stored_offsets_before_its_tasks_start() {
    let pair = Pair::start().await;
    pair.create(&["CREATE DATABASE app", TABLE]).await;
    let config = pair.write_config(1, 4);
    let cfg = pair.config(1, 4);
    let first = common::Daemon::spawn(&config, pair.dir.path().join("first.log"));
    pair.src
        .exec(&["INSERT INTO app.t SELECT seq, seq FROM app.seq_1_to_1000"])
        .await
        .unwrap();
    pair.assert_converges(&[("app.t", "id")], Duration::from_secs(60))
        .await;
    // Stopped cleanly: every partition's offset is committed to its end.
    first.terminate_cleanly();

    // Another process holds the pipeline's lease: the daemon waits for it.
    let mut held = rowlog_mysql_sink::lease::acquire(
        &cfg.sink,
        &cfg.name,
        "a test holding the lease",
        Duration::from_secs(10),
        |_, _| {},
    )
    .await
    .unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let second = common::Daemon::spawn_with(
        &config,
        pair.dir.path().join("second.log"),
        &[("ROWLOG__HTTP__LISTEN", addr.as_str())],
    );
    let m = poll(
        "/metrics while the lease is held",
        Duration::from_secs(30),
        || async {
            let status = get(&addr, "/status").await?.1;
            let (_, body) = get(&addr, "/metrics").await?;
            status.contains("waiting").then(|| Scrape::parse(&body))
        },
    )
    .await;
    assert_eq!(
        m.get("rowlog_sink_committed_offset", &[]),
        m.get("rowlog_log_end_offset", &[])
    );
    // Once the sampler (every second) has worked out the lag from them.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let m = scrape(&addr).await;
    let end = m.get("rowlog_log_end_offset", &[]);
    assert!(end >= 1000.0, "log end {end}");
    assert_eq!(m.get("rowlog_sink_committed_offset", &[]), end);
    assert_eq!(m.get("rowlog_sink_lag_records", &[]), 0.0);
    let status = get(&addr, "/status").await.unwrap().1;
    assert!(status.contains("waiting"), "still waiting: {status}");

    held.release().await.unwrap();
    pair.src
        .exec(&["UPDATE app.t SET v = -v WHERE id <= 10"])
        .await
        .unwrap();
    pair.assert_converges(&[("app.t", "id")], Duration::from_secs(60))
        .await;
    second.terminate_cleanly();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_destination_shows_as_stalled_with_the_failing_key_and_recovers() {
    let pair = Pair::start().await;
    pair.create(&["CREATE DATABASE app", TABLE]).await;
    // Sink sessions give up a row lock wait after 1 s (error 1205, retried).
    pair.dst
        .exec(&["SET GLOBAL innodb_lock_wait_timeout = 1"])
        .await
        .unwrap();
    let (mut cfg, addr) = config_with_http(&pair, 1, 2);
    cfg.http.stall_after_secs = 2;
    let rowlog = InProcess::start(cfg);
    let mut c = pair.src.conn().await.unwrap();
    c.query_drop("INSERT INTO app.t SELECT seq, seq FROM app.seq_1_to_100")
        .await
        .unwrap();
    pair.assert_converges(&[("app.t", "id")], Duration::from_secs(60))
        .await;
    poll("/readyz 200", Duration::from_secs(10), || async {
        get(&addr, "/readyz").await.filter(|(c, _)| *c == 200)
    })
    .await;

    // A destination transaction holds row 42; the source changes it.
    let mut blocker = pair.dst.conn().await.unwrap();
    blocker.query_drop("BEGIN").await.unwrap();
    blocker
        .query_drop("SELECT * FROM app.t WHERE id = 42 FOR UPDATE")
        .await
        .unwrap();
    c.query_drop("UPDATE app.t SET v = -42 WHERE id = 42")
        .await
        .unwrap();

    let (code, body) = poll("/readyz 503 (stalled)", Duration::from_secs(30), || async {
        get(&addr, "/readyz").await.filter(|(c, _)| *c == 503)
    })
    .await;
    assert_eq!(code, 503);
    let reason: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(reason["ready"], false);
    assert!(
        reason["reason"].as_str().unwrap().contains("no progress"),
        "{reason}"
    );
    let status = poll(
        "the lock wait in /status",
        Duration::from_secs(30),
        || async {
            let (_, body) = get(&addr, "/status").await?;
            let s: serde_json::Value = serde_json::from_str(&body).ok()?;
            (!s["last_error"].is_null()).then_some(s)
        },
    )
    .await;
    let err = &status["last_error"];
    assert_eq!(status["stalled"], true, "{status:#}");
    assert_eq!(err["stage"], "sink");
    assert_eq!(err["retryable"], true);
    assert_eq!(err["table"], "app.t");
    assert_eq!(err["key"], "id=42");
    assert!(err["source_position"].as_str().is_some(), "{err}");
    assert!(err["offsets"].is_array(), "{err}");
    assert!(
        err["message"].as_str().unwrap().contains("1205")
            || err["message"].as_str().unwrap().contains("Lock wait"),
        "{err}"
    );
    let m = scrape(&addr).await;
    assert_eq!(m.get("rowlog_pipeline_stalled", &[]), 1.0);
    assert!(m.get("rowlog_sink_retries_total", &[("kind", "apply")]) >= 1.0);
    assert!(
        m.get(
            "rowlog_errors_total",
            &[("stage", "sink"), ("kind", "retryable")]
        ) >= 1.0
    );
    assert_eq!(m.get("rowlog_sink_lag_records", &[]), 1.0);

    // Released: the change lands, the stall clears, the pipeline is ready again.
    blocker.query_drop("ROLLBACK").await.unwrap();
    pair.assert_converges(&[("app.t", "id")], Duration::from_secs(60))
        .await;
    poll(
        "/readyz 200 after the lock is released",
        Duration::from_secs(30),
        || async { get(&addr, "/readyz").await.filter(|(c, _)| *c == 200) },
    )
    .await;
    let m = scrape(&addr).await;
    assert_eq!(m.get("rowlog_pipeline_stalled", &[]), 0.0);
    assert_eq!(m.get("rowlog_sink_lag_records", &[]), 0.0);
    rowlog.stop().await;
}

/// rowlog running in-process with `partitions` partitions of one worker over
/// [`common::rejecting_pair`], after the source wrote ids 1..=20 to `app.c`, of which
/// the destination rejects id 7: the pair, the metrics, the trigger that stops the
/// run, the run, and a source connection.
async fn rejecting_run(
    partitions: u32,
) -> (
    Pair,
    Arc<rowlog::metrics::Metrics>,
    rowlog::shutdown::ShutdownTrigger,
    tokio::task::JoinHandle<Result<Arc<rowlog::pipeline::Stats>, rowlog::daemon::DaemonError>>,
    mysql_async::Conn,
) {
    let (pair, _) = common::rejecting_pair(&[]).await;
    // The tables existed before replication starts: the log holds only the rows.
    pair.start_here().await;
    let cfg = pair.config(1, partitions);
    let metrics = Arc::new(rowlog::metrics::Metrics::new(
        partitions,
        Duration::from_secs(60),
    ));
    let (trigger, shutdown) = rowlog::shutdown::channel();
    let run = tokio::spawn(rowlog::daemon::run_with_metrics(
        cfg,
        shutdown,
        metrics.clone(),
    ));
    let mut c = pair.src.conn().await.unwrap();
    c.query_drop("INSERT INTO app.c SELECT seq, IF(seq = 7, 500, seq) FROM app.seq_1_to_20")
        .await
        .unwrap();
    (pair, metrics, trigger, run, c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_the_destination_rejects_halts_naming_its_table_key_and_position() {
    // One partition, one worker: the rows go to the destination in one batch, in order.
    let (pair, metrics, trigger, run, _c) = rejecting_run(1).await;

    // The partition halts; the pipeline keeps running its other partitions (here
    // none) until it is stopped, and then reports the halt as its result.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !metrics.is_halted() {
        assert!(
            std::time::Instant::now() < deadline,
            "the partition never halted"
        );
        assert!(
            !run.is_finished(),
            "a halted partition must not stop the whole pipeline"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    trigger.trigger();
    let result = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("rowlog stops when asked")
        .expect("no panic");
    let Err(err) = result else {
        panic!("the pipeline should halt with an error")
    };
    assert!(
        matches!(
            err,
            rowlog::daemon::DaemonError::Apply(rowlog::pipeline::apply::ApplyError::Sink { .. })
        ),
        "{err:?}"
    );
    assert!(metrics.is_halted());
    assert_eq!(
        metrics
            .errors
            .with_label_values(&["sink", "definite"])
            .get(),
        1
    );
    let report = metrics
        .state
        .last_error()
        .expect("the error is kept for /status");
    assert_eq!(report.stage, "sink");
    assert!(!report.retryable);
    assert_eq!(report.table.as_deref(), Some("app.c"));
    assert_eq!(
        report.key.as_deref(),
        Some("id=7"),
        "the rejected change, not the batch's first"
    );
    let (from, to) = report.offsets.expect("offsets");
    assert_eq!(from, to, "one change: {report:?}");
    assert_eq!(from, 6, "the 7th change of the partition");
    assert!(report.source_position.is_some());
    assert!(
        report.message.contains("CONSTRAINT") || report.message.contains("4025"),
        "{}",
        report.message
    );
    // Changes before the rejected one are applied, none after it.
    let mut d = pair.dst.conn().await.unwrap();
    let ids: Vec<i32> = d.query("SELECT id FROM app.c ORDER BY id").await.unwrap();
    assert_eq!(ids, (1..=6).collect::<Vec<_>>());
    assert_eq!(metrics.sink_batch_rows.get_sample_sum(), 6.0);
}

/// A schema change after a partition halted stops the other partitions at it (it
/// waits for every partition), and `/status` keeps naming the rejected change's
/// table, key and offsets. Before, the second stop overwrote them with "halted at the
/// schema change …, which waits for partition N".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_halt_stays_named_in_status_when_a_schema_change_then_stops_the_others() {
    let (_pair, metrics, trigger, run, mut c) = rejecting_run(2).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !metrics.is_halted() {
        assert!(std::time::Instant::now() < deadline, "never halted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let named = |what: &str| {
        let report = metrics.state.last_error().expect("an error for /status");
        assert_eq!(report.table.as_deref(), Some("app.c"), "{what}: {report:?}");
        assert_eq!(report.key.as_deref(), Some("id=7"), "{what}: {report:?}");
    };
    named("at the halt");
    // The other partition reaches the schema change and stops there at once (the
    // partition it waits for is halted); a few seconds are ample for that.
    c.query_drop("ALTER TABLE app.c ADD COLUMN w INT NULL")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    named("after the schema change");
    trigger.trigger();
    let result = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("rowlog stops when asked")
        .expect("no panic");
    assert!(result.is_err());
    named("after the stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_source_fails_readiness_and_its_lag_grows_until_it_returns() {
    let mut pair = Pair::start().await;
    pair.create(&["CREATE DATABASE app", TABLE]).await;
    let (cfg, addr) = config_with_http(&pair, 1, 2);
    let rowlog = InProcess::start(cfg);
    let mut c = pair.src.conn().await.unwrap();
    c.query_drop("INSERT INTO app.t VALUES (1, 1)")
        .await
        .unwrap();
    drop(c);
    pair.assert_converges(&[("app.t", "id")], Duration::from_secs(60))
        .await;
    poll("/readyz 200", Duration::from_secs(10), || async {
        get(&addr, "/readyz").await.filter(|(c, _)| *c == 200)
    })
    .await;

    // Blocking: waits for the server process to exit.
    tokio::task::block_in_place(|| pair.src.stop());
    let (_, body) = poll("/readyz 503", Duration::from_secs(30), || async {
        get(&addr, "/readyz").await.filter(|(c, _)| *c == 503)
    })
    .await;
    assert!(body.contains("source is not connected"), "{body}");
    // Nothing is heard from the source, so its lag must grow, not freeze.
    let m = poll("source lag above 3 s", Duration::from_secs(30), || async {
        let m = scrape(&addr).await;
        (m.get("rowlog_source_lag_seconds", &[]) > 3.0).then_some(m)
    })
    .await;
    assert_eq!(m.get("rowlog_source_connected", &[]), 0.0);
    assert!(m.get("rowlog_source_reconnects_total", &[]) >= 1.0);
    assert!(
        m.get(
            "rowlog_errors_total",
            &[("stage", "source"), ("kind", "retryable")]
        ) >= 1.0
    );
    let (_, body) = get(&addr, "/status").await.unwrap();
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status["source"]["connected"], false);
    assert_eq!(status["last_error"]["stage"], "source", "{status:#}");

    pair.src.restart().await.unwrap();
    let mut c = pair.src.conn().await.unwrap();
    c.query_drop("INSERT INTO app.t VALUES (2, 2)")
        .await
        .unwrap();
    pair.assert_converges(&[("app.t", "id")], Duration::from_secs(60))
        .await;
    poll("/readyz 200 again", Duration::from_secs(30), || async {
        get(&addr, "/readyz").await.filter(|(c, _)| *c == 200)
    })
    .await;
    let m = poll(
        "source lag back near 0",
        Duration::from_secs(30),
        || async {
            let m = scrape(&addr).await;
            (m.get("rowlog_source_lag_seconds", &[]) < 3.0).then_some(m)
        },
    )
    .await;
    assert_eq!(m.get("rowlog_source_connected", &[]), 1.0);
    rowlog.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rowlog_binary_serves_the_port_from_its_config_and_closes_it_on_sigterm_even_mid_request(
) {
    let pair = Pair::start().await;
    pair.create(&["CREATE DATABASE app", TABLE]).await;
    let addr = format!("127.0.0.1:{}", free_port());
    let config = pair.dir.path().join("binary.toml");
    std::fs::write(
        &config,
        pair.config_toml(1, 2)
            .replace("listen = \"127.0.0.1:0\"", &format!("listen = \"{addr}\"")),
    )
    .unwrap();
    let daemon = common::Daemon::spawn(&config, pair.dir.path().join("rowlog.log"));
    let mut c = pair.src.conn().await.unwrap();
    c.query_drop("INSERT INTO app.t SELECT seq, seq FROM app.seq_1_to_500")
        .await
        .unwrap();
    pair.assert_converges(&[("app.t", "id")], Duration::from_secs(60))
        .await;
    let m = poll(
        "500 rows applied in /metrics",
        Duration::from_secs(30),
        || async {
            let (code, body) = get(&addr, "/metrics").await?;
            let m = Scrape::parse(&body);
            (code == 200 && m.sum("rowlog_sink_rows_applied_total", &[]) == Some(500.0))
                .then_some(m)
        },
    )
    .await;
    assert_eq!(
        m.get(
            "rowlog_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
    assert_eq!(get(&addr, "/healthz").await.unwrap().0, 200);
    // A client that sent half a request and went quiet (a stuck scraper, a port
    // scanner) must not hold the exit: the drain ends and rowlog exits 0, not 1 at
    // `shutdown_timeout_secs`.
    let mut stuck = std::net::TcpStream::connect(&addr).unwrap();
    std::io::Write::write_all(&mut stuck, b"GET /metrics HTTP/1.1\r\nHost: x\r\n").unwrap();
    let status = daemon.terminate();
    let log = std::fs::read_to_string(pair.dir.path().join("rowlog.log")).unwrap_or_default();
    assert!(status.success(), "{status:?}\n{log}");
    drop(stuck);
    assert!(log.contains(&addr), "the bound address is logged:\n{log}");
    assert!(
        get(&addr, "/healthz").await.is_none(),
        "the port is closed after exit"
    );
}
