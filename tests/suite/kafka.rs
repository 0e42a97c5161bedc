//! The log on Kafka (`log.backend = "kafka"`) against a real Kafka-protocol broker
//! (`tansu`): what any Kafka consumer sees in rowlog's topic, a topic of the wrong
//! shape, and a broker that goes away mid-stream. The shared end-to-end and crash
//! tests run on Kafka too (tests/suite/replication.rs, tests/suite/crash_restart.rs), and so does
//! the log trait's contract (tests/suite/log_conformance.rs).

use crate::common;

use std::time::Duration;

use common::http::{assert_status_caught_up, free_port, get, poll};
use common::{Daemon, InProcess, Pair};
use mysql_async::prelude::Queryable;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use rowlog::log::{KafkaLog, LogError};
use rowlog::testkit::Tansu;
use serde_json::Value as Json;

/// A source and a destination with rowlog's log on `broker`, and the table `app.t`
/// the tests below write.
async fn pair_on(broker: &Tansu) -> Pair {
    let pair = Pair::start().await;
    pair.use_kafka(broker.brokers());
    pair.create(&[
        "CREATE DATABASE app",
        "CREATE TABLE app.t (id BIGINT PRIMARY KEY, v BIGINT NOT NULL)",
    ])
    .await;
    pair
}

/// Every message of `topic`'s `partitions` partitions, read with a plain librdkafka
/// consumer that knows nothing of rowlog: (key, value) as JSON.
fn read_topic(brokers: &str, topic: &str, partitions: i32, expected: usize) -> Vec<(Json, Json)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "any-debezium-consumer")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while out.len() < expected && std::time::Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            let json = |b: Option<&[u8]>| {
                b.map(|b| serde_json::from_slice(b).expect("JSON"))
                    .unwrap_or(Json::Null)
            };
            out.push((json(m.key()), json(m.payload())));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_kafka_consumer_reads_debezium_shaped_events() {
    let broker = Tansu::start().expect("tansu broker starts");
    let pair = Pair::start().await;
    pair.use_kafka(broker.brokers());
    pair.create(&[
        "CREATE DATABASE app",
        "CREATE TABLE app.t (id INT PRIMARY KEY, name VARCHAR(20), price DECIMAL(10,2))",
    ])
    .await;
    let rowlog = InProcess::start(pair.config(2, 4));
    let mut c = pair.src.conn().await.unwrap();
    c.query_drop("INSERT INTO app.t VALUES (1, 'one', 1.50), (2, 'two', 2.00)")
        .await
        .unwrap();
    c.query_drop("UPDATE app.t SET name = 'uno' WHERE id = 1")
        .await
        .unwrap();
    c.query_drop("DELETE FROM app.t WHERE id = 2")
        .await
        .unwrap();
    pair.assert_converges(&[("app.t", "id")], Duration::from_secs(60))
        .await;
    rowlog.stop().await;
    let master: mysql_async::Row = c.query_first("SHOW MASTER STATUS").await.unwrap().unwrap();
    let binlog_file: String = master.get(0).unwrap();

    let brokers = broker.brokers();
    let events = tokio::task::spawn_blocking(move || read_topic(&brokers, "rowlog.test", 4, 4))
        .await
        .unwrap();
    assert_eq!(events.len(), 4, "one message per row change: {events:#?}");
    let of = |id: i64, op: &str| {
        events
            .iter()
            .find(|(k, v)| k["key"][0] == id && v["op"] == op)
            .unwrap_or_else(|| panic!("no op {op} for id {id} in {events:#?}"))
            .clone()
    };
    let (key, insert) = of(1, "c");
    assert_eq!(key["db"], "app");
    assert_eq!(key["table"], "t");
    assert_eq!(insert["before"], Json::Null);
    assert_eq!(insert["after"]["name"], "one");
    assert_eq!(
        insert["after"]["price"], "1.50",
        "decimals are exact strings"
    );
    let source = &insert["source"];
    assert_eq!(source["connector"], "rowlog");
    assert_eq!(source["db"], "app");
    assert_eq!(source["table"], "t");
    assert_eq!(source["file"], binlog_file, "the source's binlog file");
    assert!(source["pos"].as_u64().is_some_and(|p| p > 4));
    assert!(source["ts_ms"]
        .as_u64()
        .is_some_and(|t| t > 1_600_000_000_000));
    assert!(
        source["rowlog_schema_id"].is_u64(),
        "the schema version is named"
    );
    assert!(insert["ts_ms"].is_u64());

    let (_, update) = of(1, "u");
    assert_eq!(update["before"]["name"], "one");
    assert_eq!(update["after"]["name"], "uno");
    let (_, delete) = of(2, "d");
    assert_eq!(delete["before"]["name"], "two");
    assert_eq!(delete["after"], Json::Null);

    // rowlog's own tools read the topic through the config.
    let config = pair.write_config(2, 4);
    let rowlog_cmd = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_rowlog"))
            .args(args)
            .arg("--config")
            .arg(&config)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "rowlog {args:?} failed: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        text
    };
    let partitions = rowlog_cmd(&["log", "partitions"]);
    let ends: u64 = partitions
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.first()?.parse::<u32>().ok()?;
            f.get(2)?.parse::<u64>().ok()
        })
        .sum();
    assert_eq!(ends, 4, "four records across the partitions:\n{partitions}");
    assert!(partitions.contains("sink-test="), "{partitions}");
    let verify = rowlog_cmd(&["log", "verify"]);
    assert!(
        verify.contains("4 records checked: ok"),
        "log verify: {verify}"
    );
    let mut lines = Vec::new();
    for p in 0..4 {
        let tail = rowlog_cmd(&["log", "tail", "-p", &p.to_string(), "--from", "0"]);
        lines.extend(
            tail.lines()
                .map(|l| serde_json::from_str::<Json>(l).unwrap()),
        );
    }
    assert_eq!(lines.len(), 4, "log tail prints every record: {lines:#?}");
    assert!(lines
        .iter()
        .any(|l| l["op"] == "update" && l["after"]["name"] == "uno"));
    let show = rowlog_cmd(&["offsets", "show"]);
    assert!(show.contains("source checkpoint"), "offsets show: {show}");
    // Replay by time reads the topic through Kafka's time index: from the start of
    // time, every key; the destination already equals the source, so nothing changes.
    let replay = rowlog_cmd(&["replay", "--from-time", "0", "--dry-run"]);
    assert!(
        replay.contains("dry run: 2 keys examined, nothing changed"),
        "replay: {replay}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_with_another_partition_count_is_refused() {
    let broker = Tansu::start().expect("tansu broker starts");
    let s = broker.settings();
    drop(
        KafkaLog::open(&s, "shop", 2)
            .await
            .expect("first open creates the topic"),
    );
    match KafkaLog::open(&s, "shop", 4).await {
        Err(e @ LogError::TopicPartitions { .. }) => {
            let text = e.to_string();
            assert!(
                text.contains("rowlog.shop")
                    && text.contains("2 partitions")
                    && text.contains("is 4"),
                "the error names the topic and both counts: {text}"
            );
        }
        Err(e) => panic!("expected a partition-count error, got {e}"),
        Ok(_) => panic!("a 2-partition topic was used as 4 partitions"),
    }
}

/// Transactions of inserts and updates, `txns` of them, from id `first`.
async fn write(url: String, first: u64, txns: u64) {
    let mut c = mysql_async::Conn::new(mysql_async::Opts::from_url(&url).unwrap())
        .await
        .unwrap();
    for t in 0..txns {
        let base = first + t * 10;
        c.query_drop(format!(
            "INSERT INTO app.t (id, v) SELECT seq, seq FROM app.seq_{base}_to_{}",
            base + 9
        ))
        .await
        .unwrap();
        c.query_drop(format!(
            "UPDATE app.t SET v = v + 1 WHERE id BETWEEN {} AND {}",
            base.saturating_sub(5),
            base + 2
        ))
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_down_for_30_seconds_mid_stream_loses_nothing() {
    common::init_test_logging();
    let mut broker = Tansu::start().expect("tansu broker starts");
    let pair = pair_on(&broker).await;
    let mut rowlog = InProcess::start(pair.config(2, 4));
    let writer = tokio::spawn(write(pair.src.url(), 1, 600));
    tokio::time::sleep(Duration::from_secs(3)).await;

    broker.stop();
    let down_at_source = common::count(&pair.src, "app.t").await;
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert!(
        !rowlog.finished(),
        "rowlog waits for the broker instead of stopping"
    );
    broker.restart().expect("tansu comes back");
    writer.await.unwrap();
    let total = common::count(&pair.src, "app.t").await;
    assert!(
        total > down_at_source,
        "the source kept writing while the broker was away ({down_at_source} → {total})"
    );
    rowlog
        .assert_converges_running(&pair, &[("app.t", "id")], Duration::from_secs(180))
        .await;
    rowlog.stop().await;
}

/// Sends the broker stored but whose replies were lost: after the connection drops,
/// the idempotent producer sends them again and the broker confirms them as duplicates,
/// for which librdkafka reports no offset. The log reads those partitions' ends from
/// the broker instead: the checkpoint's ends are the topic's, and a restart opens the
/// log and goes on (an end taken from the missing offset made the next start refuse the
/// log as having lost acknowledged records).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_confirmed_as_duplicates_after_lost_replies_keep_the_ends_right() {
    common::init_test_logging();
    let (broker, proxy) = Tansu::start_behind_proxy()
        .await
        .expect("tansu broker starts");
    let pair = pair_on(&broker).await;
    let mut rowlog = InProcess::start(pair.config(2, 4));
    write(pair.src.url(), 1, 10).await;
    rowlog
        .assert_converges_running(&pair, &[("app.t", "id")], Duration::from_secs(60))
        .await;

    // The broker stores what the source appends now, and rowlog hears nothing back
    // until the connections drop.
    proxy.hold_replies();
    // One transaction, so one append: the last before the checkpoint is stored.
    let mut c = pair.src.conn().await.unwrap();
    c.query_drop("INSERT INTO app.t SELECT seq, seq FROM app.seq_1001_to_1040")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    proxy.cut();
    tokio::time::sleep(Duration::from_secs(1)).await;
    proxy.restore();
    rowlog
        .assert_converges_running(&pair, &[("app.t", "id")], Duration::from_secs(120))
        .await;
    rowlog.stop().await;
    assert!(
        broker.log().contains("DuplicateSequenceNumber"),
        "the broker confirmed at least one send as a duplicate; its log:\n{}",
        broker.log()
    );

    let log = KafkaLog::open_existing(&broker.settings(), "test", 4)
        .await
        .expect("the log opens");
    let cp = rowlog::log::PartitionedLog::checkpoint(&log)
        .await
        .unwrap()
        .expect("a checkpoint was stored");
    let ends: Vec<u64> = (0..4)
        .map(|p| rowlog::log::PartitionedLog::end_offset(&log, p))
        .collect();
    assert_eq!(cp.ends, ends, "the checkpoint's ends are the topic's");
    drop(log);

    // The next start accepts the log and goes on.
    let mut again = InProcess::start(pair.config(2, 4));
    write(pair.src.url(), 3001, 10).await;
    again
        .assert_converges_running(&pair, &[("app.t", "id")], Duration::from_secs(60))
        .await;
    again.stop().await;
}

/// The destination's progress table is the truth: a consumer group whose offsets were
/// moved back (or lost) does not make the sink apply again what the destination has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sink_resumes_from_the_destination_when_it_is_ahead_of_the_group() {
    let broker = Tansu::start().expect("tansu broker starts");
    let pair = pair_on(&broker).await;
    let mut c = pair.src.conn().await.unwrap();
    c.query_drop("INSERT INTO app.t SELECT seq, seq FROM app.seq_1_to_1000")
        .await
        .unwrap();
    let first = InProcess::start(pair.config(2, 4));
    pair.assert_converges(&[("app.t", "id")], Duration::from_secs(60))
        .await;
    let stats = first.stop().await;
    assert_eq!(rowlog::pipeline::Stats::get(&stats.applied), 1000);

    // Move the sink's consumer group back to the start of every partition.
    let log = KafkaLog::open_existing(&broker.settings(), "test", 4)
        .await
        .unwrap();
    for p in 0..4 {
        rowlog::log::PartitionedLog::commit(&log, "sink-test", p, 0)
            .await
            .unwrap();
    }
    drop(log);

    c.query_drop("UPDATE app.t SET v = -1 WHERE id = 500")
        .await
        .unwrap();
    let second = InProcess::start(pair.config(2, 4));
    pair.assert_converges(&[("app.t", "id")], Duration::from_secs(60))
        .await;
    let stats = second.stop().await;
    assert_eq!(
        rowlog::pipeline::Stats::get(&stats.applied),
        1,
        "only the new change is applied; the 1000 the destination holds are not replayed"
    );
}

/// SIGTERM while the broker is away: appends cannot be confirmed, so draining cannot
/// finish; rowlog exits after `shutdown_timeout_secs`, and the next start (broker back)
/// sends what was not confirmed, losing nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_while_the_broker_is_away_exits_in_time_and_loses_nothing() {
    let mut broker = Tansu::start().expect("tansu broker starts");
    let pair = pair_on(&broker).await;
    let config = pair.dir.path().join("rowlog.toml");
    std::fs::write(
        &config,
        format!("shutdown_timeout_secs = 5\n{}", pair.config_toml(2, 4)),
    )
    .unwrap();
    let log = pair.dir.path().join("rowlog.log");
    let daemon = Daemon::spawn(&config, log.clone());
    let mut c = pair.src.conn().await.unwrap();
    c.query_drop("INSERT INTO app.t SELECT seq, seq FROM app.seq_1_to_100")
        .await
        .unwrap();
    pair.assert_converges(&[("app.t", "id")], Duration::from_secs(60))
        .await;

    broker.stop();
    c.query_drop("INSERT INTO app.t SELECT seq, seq FROM app.seq_101_to_300")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let asked = std::time::Instant::now();
    let status = daemon.terminate();
    let took = asked.elapsed();
    assert!(
        took < Duration::from_secs(15),
        "rowlog took {took:?} to exit with shutdown_timeout_secs = 5"
    );
    assert!(
        !status.success(),
        "draining could not finish without the broker, and the exit code says so"
    );

    broker.restart().expect("tansu comes back");
    let daemon = Daemon::spawn(&config, log.clone());
    pair.assert_converges(&[("app.t", "id")], Duration::from_secs(120))
        .await;
    daemon.terminate_cleanly();
}

/// `/metrics` and `/status` of a pipeline whose log is on Kafka: rows read and applied,
/// each partition's end offset (the topic's high watermark) and committed offset (the
/// consumer group's, after the destination), no lag, ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_report_offsets_and_rows_of_a_pipeline_on_kafka() {
    use common::http::{
        assert_rows_by_op, assert_status_caught_up, config_with_http, get, poll, scrape,
    };
    let broker = Tansu::start().expect("tansu broker starts");
    let pair = pair_on(&broker).await;
    let (cfg, addr) = config_with_http(&pair, 2, 4);
    let rowlog = InProcess::start(cfg);
    pair.src
        .exec(&[
            "INSERT INTO app.t SELECT seq, seq FROM app.seq_1_to_600",
            "UPDATE app.t SET v = v + 1 WHERE id <= 200",
            "DELETE FROM app.t WHERE id > 500",
        ])
        .await
        .unwrap();
    pair.assert_converges(&[("app.t", "id")], Duration::from_secs(60))
        .await;
    let m = poll(
        "all 900 changes applied and committed",
        Duration::from_secs(30),
        || async {
            let m = scrape(&addr).await;
            (m.sum("rowlog_sink_rows_applied_total", &[]) == Some(900.0)
                && m.get("rowlog_sink_lag_records", &[]) == 0.0)
                .then_some(m)
        },
    )
    .await;
    assert_rows_by_op(
        &m,
        "app.t",
        &[("insert", 600.0), ("update", 200.0), ("delete", 100.0)],
    );
    assert_eq!(m.get("rowlog_log_appended_records_total", &[]), 900.0);
    assert_eq!(m.get("rowlog_log_end_offset", &[]), 900.0);
    assert_eq!(m.get("rowlog_sink_committed_offset", &[]), 900.0);
    assert_eq!(m.get("rowlog_pipeline_halted", &[]), 0.0);
    assert_eq!(m.get("rowlog_errors_total", &[("kind", "definite")]), 0.0);

    let (code, body) = poll("/readyz 200", Duration::from_secs(10), || async {
        get(&addr, "/readyz").await.filter(|(c, _)| *c == 200)
    })
    .await;
    assert_eq!(code, 200, "{body}");
    let (code, body) = get(&addr, "/status").await.unwrap();
    assert_eq!(code, 200);
    let status: Json = serde_json::from_str(&body).unwrap();
    assert_status_caught_up(&status, 4, 900);
    assert_eq!(status["halted"], false);
    rowlog.stop().await;
}

/// An append whose records fill librdkafka's queue and then meet a table not seen
/// before: storing the new schema waits for room in the queue like any record. Before,
/// it failed as retryable while the records already queued were delivered anyway, so
/// the retry appended them a second time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_schema_behind_a_full_producer_queue_waits_for_room() {
    use rowlog::log::{AppendBatch, LogEntry, PartitionedLog};
    let broker = Tansu::start().expect("tansu broker starts");
    let mut settings = broker.settings();
    settings
        .properties
        .insert("queue.buffering.max.messages".into(), "10".into());
    let log = KafkaLog::open(&settings, "queue", 4)
        .await
        .expect("the log opens");
    let a = common::records::table();
    let mut b = (*a).clone();
    b.name = rowlog_api::TableName::new("app", "other");
    let b = std::sync::Arc::new(b);
    let mut batch = AppendBatch::new(4);
    let changes: Vec<_> = (0..50)
        .map(|i| common::records::change_at(&a, i, 100, 0))
        .collect();
    let last_of_a = changes[49].source.id.clone();
    batch.partitions[0] = changes.into_iter().map(LogEntry::Change).collect();
    batch.partitions[1] = vec![LogEntry::Change(common::records::change_at(&b, 50, 100, 0))];
    log.append(batch)
        .await
        .expect("the append waits for room instead of failing");
    assert_eq!((log.end_offset(0), log.end_offset(1)), (50, 1));
    assert_eq!(log.last_change(0), Some(last_of_a));
    drop(log);
    // What the broker holds is what the log counted.
    let log = KafkaLog::open_existing(&broker.settings(), "queue", 4)
        .await
        .expect("the log opens again");
    assert_eq!((log.end_offset(0), log.end_offset(1)), (50, 1));
}

/// The checkpoint topic holds the log's identity and source position. Lost while the
/// log's topic still holds records (here the topic is mirrored without it, as a mirror
/// of the data topics alone would; retention can expire it the same way), it is not
/// silently started over as a new, empty log: that would drop the sink's progress and
/// read the source from `source.start`, skipping what came between.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_checkpoint_topic_is_refused_not_started_over() {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::producer::{FutureProducer, FutureRecord};
    use rowlog::log::{AppendBatch, LogEntry, PartitionedLog};
    let broker = Tansu::start().expect("tansu broker starts");
    let mut original = broker.settings();
    original.topic = Some("orig".into());
    let log = KafkaLog::open(&original, "lost", 2)
        .await
        .expect("the log opens");
    let t = common::records::table();
    let mut batch = AppendBatch::new(2);
    batch.partitions[0] = (0..5)
        .map(|i| LogEntry::Change(common::records::change_at(&t, i, 10, 0)))
        .collect();
    log.append(batch).await.unwrap();
    drop(log);

    // The mirror: the records and the schemas, not the checkpoint.
    let brokers = broker.brokers();
    let admin: AdminClient<rdkafka::client::DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .unwrap();
    let created = admin
        .create_topics(
            &[
                NewTopic::new("copy", 2, TopicReplication::Fixed(1)),
                NewTopic::new("copy.schemas", 1, TopicReplication::Fixed(1)),
            ],
            &AdminOptions::new(),
        )
        .await
        .unwrap();
    assert!(created.iter().all(|r| r.is_ok()), "{created:?}");
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .unwrap();
    for (from, to, n) in [("orig", "copy", 5), ("orig.schemas", "copy.schemas", 1)] {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("group.id", "mirror")
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(from, 0, Offset::Beginning)
            .unwrap();
        consumer.assign(&tpl).unwrap();
        let mut copied = 0;
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while copied < n {
            assert!(
                std::time::Instant::now() < deadline,
                "{from}: {copied} of {n} copied"
            );
            let Some(m) = consumer.poll(Duration::from_millis(200)) else {
                continue;
            };
            let m = m.unwrap();
            let mut rec: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(to)
                .partition(0)
                .payload(m.payload().unwrap_or_default());
            if let Some(k) = m.key() {
                rec = rec.key(k);
            }
            producer
                .send(rec, Duration::from_secs(10))
                .await
                .map_err(|(e, _)| e)
                .unwrap();
            copied += 1;
        }
    }

    let mut mirrored = broker.settings();
    mirrored.topic = Some("copy".into());
    match KafkaLog::open(&mirrored, "lost", 2).await {
        Err(e @ LogError::IdentityLost { held: 5, .. }) => {
            let text = e.to_string();
            assert!(text.contains("copy.checkpoint"), "{text}");
        }
        Err(other) => panic!("refused for another reason: {other}"),
        Ok(_) => panic!("a log whose checkpoint topic is gone was opened as a new log"),
    }
}

/// Kafka's retention counts from a message's timestamp. Catching up on a binlog older
/// than `retention.ms`, records stamped with their commit times would be deleted by
/// the broker before the sink read them; they are stamped no more than an hour before
/// their append instead, and never before their commit time. A search by commit time
/// still finds them exactly, from the records themselves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_of_an_old_binlog_are_stamped_near_their_append_and_found_by_commit_time() {
    use common::records::{append, change, change_at, table};
    use rowlog::log::PartitionedLog;
    let broker = Tansu::start().expect("tansu broker starts");
    let log = KafkaLog::open(&broker.settings(), "stamps", 1)
        .await
        .expect("the log opens");
    let t = table();
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64
    };
    let before = now();
    // Committed in November 2023.
    append(&log, 0, (0..100).map(|i| change(&t, i)).collect())
        .await
        .unwrap();
    let after = now();
    // Committed a second ago.
    let recent = (after - 1000) as u64;
    append(
        &log,
        0,
        (100..110).map(|i| change_at(&t, i, 150, recent)).collect(),
    )
    .await
    .unwrap();

    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker.brokers())
        .set("group.id", "stamps-reader")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&broker.settings().topic_for("stamps"), 0, Offset::Beginning)
        .unwrap();
    consumer.assign(&tpl).unwrap();
    let mut stamps = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while stamps.len() < 110 && std::time::Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            stamps.push((m.offset(), m.timestamp().to_millis().unwrap()));
        }
    }
    assert_eq!(stamps.len(), 110);
    let hour = rowlog::log::STAMP_LAG_MAX_MS as i64;
    for &(offset, stamp) in &stamps {
        if offset < 100 {
            assert!(
                before - hour - 1000 <= stamp && stamp <= after - hour + 1000,
                "message {offset} of 2023 stamped {stamp}, appended between {before} and {after}"
            );
        } else {
            assert_eq!(stamp, recent as i64, "a recent commit time is the stamp");
        }
    }
    // By commit time: exact, the old records included.
    let at = |i: u64| 1_700_000_000_000 + i;
    assert_eq!(log.offset_for_time(0, at(0)).await.unwrap(), 0);
    assert_eq!(log.offset_for_time(0, at(57)).await.unwrap(), 57);
    assert_eq!(log.offset_for_time(0, at(100)).await.unwrap(), 100);
    assert_eq!(log.offset_for_time(0, recent).await.unwrap(), 100);
    assert_eq!(log.offset_for_time(0, recent + 1).await.unwrap(), 110);
}

/// Two daemons of one pipeline, on two hosts, share its topic: the second waits for
/// the lease while the first appends and applies. Once the first stops and the second
/// holds the lease, the second reads the topic's ends, last changes and checkpoint
/// again, so it neither logs nor applies a second time what the first did (a table
/// without a key would keep every row applied twice).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_that_waited_for_the_lease_goes_on_where_the_holder_stopped() {
    let broker = Tansu::start().expect("tansu broker starts");
    let pair = pair_on(&broker).await;
    pair.create(&["CREATE TABLE app.k (v BIGINT NOT NULL)"])
        .await;
    let config = pair.dir.path().join("rowlog.toml");
    std::fs::write(
        &config,
        pair.config_toml(1, 4)
            .replace("[source]\n", "[source]\nno_pk = \"full_row\"\n"),
    )
    .unwrap();
    let first = Daemon::spawn(&config, pair.dir.path().join("first.log"));
    let mut c = pair.src.conn().await.unwrap();
    c.query_drop("INSERT INTO app.t VALUES (0, 0)")
        .await
        .unwrap();
    pair.assert_converges(&[("app.t", "id")], Duration::from_secs(60))
        .await;

    let addr = format!("127.0.0.1:{}", free_port());
    let elsewhere = pair.dir.path().join("elsewhere");
    let env = [
        ("ROWLOG__LOG__DIR", elsewhere.to_str().unwrap()),
        ("ROWLOG__HTTP__LISTEN", addr.as_str()),
    ];
    let second = Daemon::spawn_with(&config, pair.dir.path().join("second.log"), &env);
    poll(
        "the second daemon waiting for the lease, its log open",
        Duration::from_secs(30),
        || async {
            let (code, body) = get(&addr, "/status").await?;
            (code == 200 && body.contains(r#""lease":{"state":"waiting""#)).then_some(())
        },
    )
    .await;
    // Logged and applied by the first while the second waits.
    c.query_drop("INSERT INTO app.k SELECT seq FROM app.seq_1_to_1000")
        .await
        .unwrap();
    c.query_drop("INSERT INTO app.t SELECT seq, seq FROM app.seq_1_to_1000")
        .await
        .unwrap();
    pair.assert_converges(&[("app.t", "id")], Duration::from_secs(60))
        .await;
    let mut d = pair.dst.conn().await.unwrap();
    common::wait_for_count(
        &mut d,
        "SELECT COUNT(*) FROM app.k",
        1000,
        "the first daemon applies app.k",
    )
    .await;
    first.terminate_cleanly();

    // The second takes the lease over; one more change of each table comes after.
    c.query_drop("INSERT INTO app.k VALUES (1001)")
        .await
        .unwrap();
    c.query_drop("INSERT INTO app.t VALUES (1001, 1001)")
        .await
        .unwrap();
    pair.assert_converges(&[("app.t", "id")], Duration::from_secs(90))
        .await;
    // Row 1001 of app.t is applied, so whatever the second logged before it is in
    // the log; once every partition is committed to its end, all of it is applied.
    let status = poll(
        "the second daemon caught up in every partition",
        Duration::from_secs(60),
        || async {
            let (code, body) = get(&addr, "/status").await?;
            let status: Json = serde_json::from_str(&body).ok()?;
            let parts = status["partitions"].as_array()?;
            (code == 200 && parts.len() == 4 && parts.iter().all(|p| p["lag_records"] == 0))
                .then_some(status)
        },
    )
    .await;
    assert_eq!(common::count(&pair.dst, "app.k").await, 1001, "app.k rows");
    // 1 + 1,000 + 1,000 changes from the first, 2 from the second.
    assert_status_caught_up(&status, 4, 2003);
    second.terminate_cleanly();
}

/// A row too large for a Kafka message (librdkafka's default `message.max.bytes` is
/// 1,000,000, and the message carries the row twice) stops the pipeline with an error
/// naming the table, the change's position and the setting to raise; the rows before
/// it are applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_too_large_for_a_kafka_message_stops_the_pipeline_naming_it() {
    let broker = Tansu::start().expect("tansu broker starts");
    let pair = pair_on(&broker).await;
    pair.create(&["CREATE TABLE app.docs (id BIGINT PRIMARY KEY, body LONGTEXT NOT NULL)"])
        .await;
    let rowlog = InProcess::start(pair.config(1, 2));
    let mut c = pair.src.conn().await.unwrap();
    c.query_drop("INSERT INTO app.t SELECT seq, seq FROM app.seq_1_to_100")
        .await
        .unwrap();
    pair.assert_converges(&[("app.t", "id")], Duration::from_secs(60))
        .await;
    c.query_drop("INSERT INTO app.docs VALUES (7, REPEAT('x', 600000))")
        .await
        .unwrap();
    let error = rowlog
        .stopped_error(
            Duration::from_secs(60),
            "the pipeline stops on a row too large for a message",
        )
        .await;
    for needle in ["app.docs", "message.max.bytes", "max.message.bytes"] {
        assert!(error.contains(needle), "{needle:?} not named: {error}");
    }
    assert_eq!(common::count(&pair.dst, "app.docs").await, 0);
}

/// A holder that pauses past its lease (SIGSTOP) while an operator on another host
/// moves the offsets back with `rowlog offsets set` does not commit its older, higher
/// watermark to the topic when it wakes: it commits only while it holds the lease, so
/// the rewind stands and the holder stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_paused_past_its_lease_does_not_commit_over_an_operators_rewind() {
    let broker = Tansu::start().expect("tansu broker starts");
    let pair = pair_on(&broker).await;
    let config = pair.dir.path().join("rowlog.toml");
    std::fs::write(
        &config,
        pair.config_toml(1, 1)
            .replace("[sink]\n", "[sink]\nlease_secs = 3\n"),
    )
    .unwrap();
    let mut holder = Daemon::spawn(&config, pair.dir.path().join("holder.log"));
    let mut c = pair.src.conn().await.unwrap();
    c.query_drop("INSERT INTO app.t SELECT seq, seq FROM app.seq_1_to_100")
        .await
        .unwrap();
    pair.assert_converges(&[("app.t", "id")], Duration::from_secs(60))
        .await;
    // Single-row transactions up to the pause: the holder has applied changes it has
    // not committed to the topic yet (it commits once a second).
    for id in 101..=300 {
        c.query_drop(format!("INSERT INTO app.t VALUES ({id}, {id})"))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let signal = |sig: &str| {
        let ok = std::process::Command::new("kill")
            .args([sig, &holder.pid().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig}");
    };
    signal("-STOP");
    // Past its 3-second lease by the destination's clock.
    tokio::time::sleep(Duration::from_secs(5)).await;

    // The operator, on another host (another log directory), moves partition 0 back.
    let elsewhere = pair.dir.path().join("elsewhere");
    let rowlog = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_rowlog"))
            .args(args)
            .arg("-c")
            .arg(&config)
            .env("ROWLOG__LOG__DIR", &elsewhere)
            .output()
            .unwrap();
        assert!(out.status.success(), "rowlog {args:?}: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    // The holder may have been stopped inside a commit, holding the lease's row: then
    // the operator's tool waits for it. So the tool runs beside, and the holder wakes
    // a few seconds into it either way. Woken inside a commit, the holder finishes that
    // one (its check passed before the pause) and lets the row go; the tool's rewind
    // comes after it. Woken anywhere else, it finds its lease gone.
    let set = std::thread::spawn({
        let (config, elsewhere) = (config.clone(), elsewhere.clone());
        move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_rowlog"))
                .args(["offsets", "set", "--to", "50", "-c"])
                .arg(&config)
                .env("ROWLOG__LOG__DIR", &elsewhere)
                .output()
                .unwrap()
        }
    });
    let woken = std::time::Instant::now() + Duration::from_secs(4);
    while !set.is_finished() && std::time::Instant::now() < woken {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    signal("-CONT");
    let out = set.join().expect("offsets set ran");
    let set = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && set.contains("-> 50"), "{out:?}");
    let status = holder.exit_status(Duration::from_secs(60), "the holder stops, its lease gone");
    assert!(!status.success(), "{}", holder.log());
    let shown = rowlog(&["offsets", "show"]);
    let committed = shown
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|cols| cols.first() == Some(&"0"))
        .and_then(|cols| cols.get(3).map(|c| c.to_string()));
    assert_eq!(
        committed.as_deref(),
        Some("50"),
        "the rewind stands:\n{shown}\nholder's log:\n{}",
        holder.log()
    );
}
