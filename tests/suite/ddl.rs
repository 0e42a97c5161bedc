//! Schema changes in the middle of a row stream: each DDL reaches the destination in
//! order with the rows around it (rows before it in the old shape, rows after it in
//! the new), across partitions and workers, also across a crash; `sink.ddl = "halt"`
//! stops at it after applying everything before.

use crate::common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{Daemon, InProcess, Pair};
use mysql_async::prelude::Queryable;
use rowlog::log::{EmbeddedLog, LogEntry, PartitionReader, PartitionedLog};

/// Writes rows into `table` until `stop`: inserts of new ids and updates of recent
/// ones, one transaction each, naming only `id` and `v` (which every shape has).
fn writer(
    url: String,
    table: &'static str,
    first_id: u64,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let mut c = mysql_async::Conn::new(mysql_async::Opts::from_url(&url).unwrap())
            .await
            .unwrap();
        let mut id = first_id;
        while !stop.load(Ordering::Relaxed) {
            c.exec_drop(
                format!("INSERT INTO {table} (id, v) VALUES (?, ?)"),
                (id, id),
            )
            .await
            .unwrap();
            if id > first_id + 5 {
                c.exec_drop(
                    format!("UPDATE {table} SET v = v + 1 WHERE id = ?"),
                    (id - 5,),
                )
                .await
                .unwrap();
            }
            id += 1;
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        id - first_id
    })
}

async fn show_create(conn: &mut mysql_async::Conn, table: &str) -> String {
    let row: (String, String) = conn
        .query_first(format!("SHOW CREATE TABLE {table}"))
        .await
        .unwrap()
        .unwrap();
    row.1
}

async fn exists(conn: &mut mysql_async::Conn, db: &str, table: &str) -> bool {
    let n: u64 = conn
        .exec_first(
            "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?",
            (db, table),
        )
        .await
        .unwrap()
        .unwrap();
    n > 0
}

async fn pause() {
    tokio::time::sleep(Duration::from_millis(300)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn columns_added_modified_and_dropped_mid_stream_reach_the_destination_in_order() {
    let pair = Pair::start().await;
    // Only the source: the database and table reach the destination through rowlog.
    let rowlog = InProcess::start(pair.config(2, 4));
    pair.src
        .exec(&[
            "CREATE DATABASE app",
            "CREATE TABLE app.t (id BIGINT PRIMARY KEY, v INT NOT NULL)",
        ])
        .await
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let rows = writer(pair.src.url(), "app.t", 1, stop.clone());
    pause().await;
    let mut s = pair.src.conn().await.unwrap();
    for q in [
        "ALTER TABLE app.t ADD COLUMN c VARCHAR(20) NOT NULL DEFAULT 'x'",
        "UPDATE app.t SET c = CONCAT('c', id) WHERE id % 3 = 0",
        // Values that only fit once the MODIFY is applied: a row written before it
        // on the destination would be rejected.
        "ALTER TABLE app.t MODIFY COLUMN v BIGINT NOT NULL",
        "UPDATE app.t SET v = v * 10000000000 WHERE id % 7 = 0",
        "ALTER TABLE app.t DROP COLUMN c",
        "ALTER TABLE app.t ADD COLUMN d DATETIME(6) NULL, ADD INDEX by_v (v)",
        "UPDATE app.t SET d = '2026-11-26 12:34:56.789012' WHERE id % 2 = 0",
    ] {
        s.query_drop(q).await.unwrap();
        pause().await;
    }
    stop.store(true, Ordering::Relaxed);
    let written = rows.await.unwrap();
    assert!(written > 100, "the writer ran alongside ({written} rows)");
    pair.assert_converges(&[("app.t", "id")], Duration::from_secs(60))
        .await;
    let mut d = pair.dst.conn().await.unwrap();
    assert_eq!(
        show_create(&mut s, "app.t").await,
        show_create(&mut d, "app.t").await,
        "the destination has the source's final shape"
    );
    let applied: u64 = d
        .query_first("SELECT COUNT(*) FROM rowlog.rowlog_schema_changes WHERE outcome = 'applied'")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        applied,
        2 + 4,
        "CREATE DATABASE, CREATE TABLE and four ALTERs"
    );

    // The log keeps each row in the shape it was written: app.t records of 2, 3 and
    // 2 columns again, around the schema changes, all in one partition.
    let log = EmbeddedLog::open_read_only(&pair.log_dir()).unwrap();
    let mut widths = Vec::new();
    let mut r = log.reader(0, 0).await.unwrap();
    let end = log.end_offset(0);
    let mut seen = 0;
    while seen < end {
        for rec in r.next_batch(1000).await.unwrap() {
            seen += 1;
            let w = match rec.entry {
                LogEntry::Change(c) => c.table.columns.len(),
                LogEntry::Schema(_) => 0,
            };
            if widths.last() != Some(&w) {
                widths.push(w);
            }
        }
    }
    assert!(
        widths.windows(4).any(|w| w == [2, 0, 3, 0]),
        "old rows keep 2 columns, new rows have 3: {widths:?}"
    );
    rowlog.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rename_truncate_create_and_drop_mid_stream_reach_the_destination() {
    let pair = Pair::start().await;
    let rowlog = InProcess::start(pair.config(2, 4));
    pair.src
        .exec(&[
            "CREATE DATABASE app",
            "CREATE TABLE app.a (id BIGINT PRIMARY KEY, v INT NOT NULL)",
            "CREATE TABLE app.b (id BIGINT PRIMARY KEY, v INT NOT NULL)",
            "INSERT INTO app.a SELECT seq, seq FROM app.seq_1_to_200",
        ])
        .await
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let rows = writer(pair.src.url(), "app.b", 1, stop.clone());
    pause().await;
    let mut s = pair.src.conn().await.unwrap();
    for q in [
        "RENAME TABLE app.a TO app.a2",
        "INSERT INTO app.a2 SELECT seq, -seq FROM app.seq_201_to_300",
        "TRUNCATE TABLE app.b",
        "CREATE TABLE app.n (id INT PRIMARY KEY, s VARCHAR(10))",
        "INSERT INTO app.n VALUES (1, 'one'), (2, 'two')",
        "CREATE TABLE app.gone (id INT PRIMARY KEY)",
        "INSERT INTO app.gone VALUES (1)",
        "DROP TABLE app.gone",
        "ALTER TABLE app.a2 RENAME TO app.a3",
        "UPDATE app.a3 SET v = v + 1000 WHERE id <= 10",
    ] {
        s.query_drop(q).await.unwrap();
        pause().await;
    }
    stop.store(true, Ordering::Relaxed);
    rows.await.unwrap();
    pair.assert_converges(
        &[("app.a3", "id"), ("app.b", "id"), ("app.n", "id")],
        Duration::from_secs(60),
    )
    .await;
    let mut d = pair.dst.conn().await.unwrap();
    for gone in ["a", "a2", "gone"] {
        assert!(!exists(&mut d, "app", gone).await, "app.{gone} is gone");
    }
    let b_min: Option<u64> = d.query_first("SELECT MIN(id) FROM app.b").await.unwrap();
    assert!(
        b_min.is_some_and(|m| m > 1),
        "rows before the TRUNCATE are gone, rows after it are there ({b_min:?})"
    );
    rowlog.stop().await;
}

/// Schema changes as MariaDB users write them reach the destination as the source ran
/// them. `SET STATEMENT var = value FOR TRUNCATE …` (or `… FOR ALTER …`): the binlog
/// holds the whole text, and it was taken for a SET and dropped with a debug line, so
/// the destination kept the truncated rows and missed the column. And an `ADD COLUMN
/// … DEFAULT CURRENT_TIMESTAMP` gives the rows already there the source's time of the
/// ALTER, not the time rowlog applies it. All of it with the session in a database
/// the destination does not have (`USE scratch`, not replicated), which stopped the
/// pipeline with error 1049 though every name in the statements is qualified.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_statement_ddl_and_the_source_clock_reach_the_destination() {
    let pair = Pair::start().await;
    let mut cfg = pair.config(2, 2);
    cfg.source.exclude.push("scratch.*".into());
    let rowlog = InProcess::start(cfg);
    pair.src
        .exec(&[
            "CREATE DATABASE app",
            "CREATE DATABASE scratch",
            "CREATE TABLE app.t (id INT PRIMARY KEY, v INT NOT NULL)",
            "CREATE TABLE app.u (id INT PRIMARY KEY, v INT NOT NULL)",
            "INSERT INTO app.t VALUES (1, 1), (2, 2)",
            "INSERT INTO app.u VALUES (1, 1), (2, 2)",
        ])
        .await
        .unwrap();
    let mut s = pair.src.conn().await.unwrap();
    for q in [
        // The session's database is one rowlog does not replicate, which the
        // destination does not have: the statements name their tables in full.
        "USE scratch",
        "SET STATEMENT lock_wait_timeout = 10 FOR TRUNCATE TABLE app.t",
        "INSERT INTO app.t VALUES (3, 3)",
        "SET STATEMENT sql_mode = '', max_statement_time = 100 FOR \
         ALTER TABLE app.u ADD COLUMN w INT NOT NULL DEFAULT 7",
        // 2001-01-01 00:00:00 UTC: the ALTER runs, and is logged, at that time.
        "SET timestamp = 978307200",
        "ALTER TABLE app.u ADD COLUMN created TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP",
        "SET timestamp = DEFAULT",
        "INSERT INTO app.u (id, v, w) VALUES (3, 3, 8)",
    ] {
        s.query_drop(q).await.unwrap();
    }
    pair.assert_converges(&[("app.t", "id"), ("app.u", "id")], Duration::from_secs(60))
        .await;
    let mut d = pair.dst.conn().await.unwrap();
    let scratch: Option<String> = d
        .query_first("SHOW DATABASES LIKE 'scratch'")
        .await
        .unwrap();
    assert_eq!(
        scratch, None,
        "the test's premise: no scratch on the destination"
    );
    let t: Vec<(i32, i32)> = d
        .query("SELECT id, v FROM app.t ORDER BY id")
        .await
        .unwrap();
    assert_eq!(t, [(3, 3)], "rows before the TRUNCATE are gone");
    let u: Vec<(i32, i32, i64)> = d
        .query("SELECT id, w, UNIX_TIMESTAMP(created) FROM app.u ORDER BY id")
        .await
        .unwrap();
    assert_eq!(&u[..2], [(1, 7, 978307200), (2, 7, 978307200)]);
    assert_eq!(u[2].1, 8);
    assert!(u[2].2 > 978307200, "{u:?}");
    rowlog.stop().await;
}

/// A source with `lower_case_table_names=1` names tables in lower case in its table
/// maps, while a statement keeps the case its author typed: `TRUNCATE TABLE
/// App.Orders` under `source.include = ["app.*"]` was taken for a table not
/// replicated and dropped with a debug line (the destination kept the rows, and missed
/// the column of the ALTER after it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ddl_typed_in_mixed_case_reaches_the_destination_under_lower_case_table_names() {
    use rowlog::testkit::{MariaDb, ServerOptions};
    let lower = |mut o: ServerOptions| {
        o.extra_args.push("--lower-case-table-names=1".into());
        o
    };
    let (src, dst) = tokio::join!(
        MariaDb::start(lower(ServerOptions::source(1))),
        MariaDb::start(lower(ServerOptions::destination(2)))
    );
    let pair = Pair::of(src.unwrap(), dst.unwrap());
    pair.create(&[
        "CREATE DATABASE app",
        "CREATE TABLE app.orders (id INT PRIMARY KEY, v INT NOT NULL)",
    ])
    .await;
    let mut cfg = pair.config(1, 2);
    cfg.source.include = vec!["app.*".into()];
    let rowlog = InProcess::start(cfg);
    pair.src
        .exec(&[
            "INSERT INTO app.orders VALUES (1, 1), (2, 2)",
            "TRUNCATE TABLE App.Orders",
            "INSERT INTO app.orders VALUES (3, 3)",
            "ALTER TABLE APP.ORDERS ADD COLUMN w INT NOT NULL DEFAULT 5",
            "INSERT INTO app.orders VALUES (4, 4, 6)",
        ])
        .await
        .unwrap();
    pair.assert_converges(&[("app.orders", "id")], Duration::from_secs(60))
        .await;
    let rows: Vec<(i32, i32, i32)> = pair
        .dst
        .conn()
        .await
        .unwrap()
        .query("SELECT id, v, w FROM app.orders ORDER BY id")
        .await
        .unwrap();
    assert_eq!(rows, [(3, 3, 5), (4, 4, 6)]);
    rowlog.stop().await;
}

/// `CREATE TABLE … SELECT` is logged under ROW format as one transaction: a CREATE
/// TABLE the server generated, then the selected rows as row events. It stopped the
/// reader ("rowlog cannot tell which rows it changed"), also for a table rowlog does
/// not replicate. Now the table and its rows reach the destination, and one not
/// replicated is left out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_table_select_reaches_the_destination_with_its_rows() {
    let pair = Pair::start().await;
    pair.create(&[
        "CREATE DATABASE app",
        "CREATE TABLE app.t (id INT PRIMARY KEY, v INT NOT NULL)",
    ])
    .await;
    let mut cfg = pair.config(1, 2);
    cfg.source.include = vec!["app.*".into()];
    let rowlog = InProcess::start(cfg);
    pair.src
        .exec(&[
            "INSERT INTO app.t SELECT seq, seq * 2 FROM app.seq_1_to_50",
            "CREATE TABLE app.copy (PRIMARY KEY (id)) SELECT id, v FROM app.t WHERE id <= 20",
            "CREATE DATABASE rpt",
            "CREATE TABLE rpt.daily AS SELECT 1 AS id",
            "INSERT INTO app.copy VALUES (100, 100)",
            "UPDATE app.t SET v = 0 WHERE id = 1",
        ])
        .await
        .unwrap();
    pair.assert_converges(
        &[("app.t", "id"), ("app.copy", "id")],
        Duration::from_secs(60),
    )
    .await;
    let mut d = pair.dst.conn().await.unwrap();
    let copied: (u64, i64) = d
        .query_first("SELECT COUNT(*), SUM(v) FROM app.copy")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(copied, (21, 420 + 100));
    let rpt: Option<String> = d.query_first("SHOW DATABASES LIKE 'rpt'").await.unwrap();
    assert_eq!(rpt, None, "rpt is not replicated");
    rowlog.stop().await;
}

/// The rowlog process is killed while schema changes and rows stream; after each
/// restart it catches up, and no DDL runs twice into an error or a lost row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_around_schema_changes_it_converges_and_applies_each_once() {
    let pair = Pair::start().await;
    let config = pair.write_config(2, 4);
    let log = pair.dir.path().join("rowlog.log");
    pair.src
        .exec(&[
            "CREATE DATABASE app",
            "CREATE TABLE app.t (id BIGINT PRIMARY KEY, v INT NOT NULL)",
        ])
        .await
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let rows = writer(pair.src.url(), "app.t", 1, stop.clone());
    let mut s = pair.src.conn().await.unwrap();
    let alters = [
        "ALTER TABLE app.t ADD COLUMN a INT NULL",
        "ALTER TABLE app.t ADD COLUMN b VARCHAR(10) NULL",
        "ALTER TABLE app.t DROP COLUMN a",
        "CREATE INDEX by_b ON app.t (b)",
        "ALTER TABLE app.t ADD COLUMN c BIGINT NOT NULL DEFAULT 7",
        "DROP INDEX by_b ON app.t",
    ];
    for (round, q) in alters.iter().enumerate() {
        let daemon = Daemon::spawn(&config, log.clone());
        tokio::time::sleep(Duration::from_millis(600 + 150 * round as u64)).await;
        s.query_drop(*q).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        daemon.kill();
    }
    stop.store(true, Ordering::Relaxed);
    rows.await.unwrap();
    let daemon = Daemon::spawn(&config, log.clone());
    pair.assert_converges(&[("app.t", "id")], Duration::from_secs(120))
        .await;
    let mut d = pair.dst.conn().await.unwrap();
    assert_eq!(
        show_create(&mut s, "app.t").await,
        show_create(&mut d, "app.t").await
    );
    let recorded: u64 = d
        .query_first("SELECT COUNT(*) FROM rowlog.rowlog_schema_changes")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        recorded,
        2 + alters.len() as u64,
        "each schema change recorded once"
    );
    daemon.terminate_cleanly();
}

/// Under `sink.ddl = "halt"`, rowlog reads app.t's 100 rows, an ALTER adding `w`, and
/// 50 rows after it, and stops at the ALTER. Returns the config (ddl = "halt") and the
/// error it stopped with.
async fn stopped_at_an_alter(pair: &Pair) -> (rowlog::config::Config, String) {
    pair.create(&[
        "CREATE DATABASE app",
        "CREATE TABLE app.t (id INT PRIMARY KEY, v INT NOT NULL)",
    ])
    .await;
    let mut cfg = pair.config(2, 4);
    cfg.sink.ddl = rowlog_api::SchemaChangePolicy::Halt;
    let rowlog = InProcess::start(cfg.clone());
    pair.src
        .exec(&[
            "INSERT INTO app.t SELECT seq, seq FROM app.seq_1_to_100",
            "ALTER TABLE app.t ADD COLUMN w INT NOT NULL DEFAULT 0",
            "INSERT INTO app.t SELECT seq, seq, 1 FROM app.seq_101_to_150",
        ])
        .await
        .unwrap();
    let err = rowlog
        .stopped_error(Duration::from_secs(60), "never stopped at the ALTER")
        .await;
    (cfg, err)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_ddl_halt_the_pipeline_stops_at_the_schema_change_after_the_rows_before_it() {
    let pair = Pair::start().await;
    let (mut cfg, err) = stopped_at_an_alter(&pair).await;
    assert!(
        err.contains("ALTER TABLE app.t ADD COLUMN w")
            && err.contains("binlog.")
            && err.contains("ignore"),
        "{err}"
    );
    let mut d = pair.dst.conn().await.unwrap();
    let (n, max): (u64, Option<i64>) = d
        .query_first("SELECT COUNT(*), MAX(id) FROM app.t")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (n, max),
        (100, Some(100)),
        "every row before the DDL, none after"
    );

    // The operator changes the destination, then lets rowlog go past the DDL.
    d.query_drop("ALTER TABLE app.t ADD COLUMN w INT NOT NULL DEFAULT 0")
        .await
        .unwrap();
    cfg.sink.ddl = rowlog_api::SchemaChangePolicy::Ignore;
    let rowlog = InProcess::start(cfg);
    pair.assert_converges(&[("app.t", "id")], Duration::from_secs(60))
        .await;
    rowlog.stop().await;
}

/// A partition moved past a schema change that was never applied (`rowlog offsets
/// set`, here after `sink.ddl = "halt"` stopped every partition before it) never meets
/// it again. The others must not wait for it there: they apply the change and go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_do_not_wait_at_a_schema_change_for_one_moved_past_it() {
    use rowlog::pipeline::partitioner::{key_hash, partition_of};
    use rowlog_api::{key_bytes, TableName, Value};
    let pair = Pair::start().await;
    let (mut cfg, _) = stopped_at_an_alter(&pair).await;

    // Partition 0 is moved to its end: past the DDL and its rows after it.
    let config = pair.write_config(2, 4);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rowlog"))
        .args(["offsets", "set", "-c"])
        .arg(&config)
        .args(["--partition", "0", "--to-end"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");

    cfg.sink.ddl = rowlog_api::SchemaChangePolicy::Apply;
    let rowlog = InProcess::start(cfg);
    let in_partition_0 = |id: i64| {
        let key = [Value::Int(id)];
        partition_of(
            key_hash(&key_bytes(&TableName::new("app", "t"), key.iter())),
            4,
        ) == 0
    };
    // The other partitions' rows after the schema change (partition 0 may still get
    // some of its own, if the first run had not logged them all when it stopped).
    let ids: Vec<String> = (101..=150)
        .filter(|&id| !in_partition_0(id))
        .map(|id| id.to_string())
        .collect();
    assert!(!ids.is_empty());
    let mut d = pair.dst.conn().await.unwrap();
    common::wait_for_count(
        &mut d,
        &format!("SELECT COUNT(*) FROM app.t WHERE id IN ({})", ids.join(",")),
        ids.len() as u64,
        "the other partitions' rows after the schema change",
    )
    .await;
    let w: Option<u64> = d
        .query_first(format!(
            "SELECT COUNT(*) FROM app.t WHERE w = 1 AND id IN ({})",
            ids.join(",")
        ))
        .await
        .unwrap();
    assert_eq!(
        w,
        Some(ids.len() as u64),
        "the schema change ran before them"
    );
    rowlog.stop().await;
}

/// MariaDB's two-phase ALTER (`binlog_alter_two_phase=ON`) binlogs each ALTER twice:
/// once before it runs (START ALTER) and once when it succeeded (COMMIT ALTER) or
/// failed (ROLLBACK ALTER). The destination runs it once, and not at all when it
/// failed on the source: an unnamed index is not made twice, and a failed narrowing
/// of a column is neither run nor halts the pipeline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_two_phase_alter_runs_once_and_a_rolled_back_one_not_at_all() {
    let pair = Pair::start().await;
    pair.create(&[
        "CREATE DATABASE app",
        "CREATE TABLE app.t (id INT PRIMARY KEY, v INT NOT NULL)",
    ])
    .await;
    let rowlog = InProcess::start(pair.config(1, 2));
    let mut c = pair.src.conn().await.unwrap();
    c.query_drop("SET SESSION binlog_alter_two_phase = ON")
        .await
        .unwrap();
    c.query_drop("INSERT INTO app.t VALUES (1, 1000), (2, 2)")
        .await
        .unwrap();
    c.query_drop("ALTER TABLE app.t ADD INDEX (v)")
        .await
        .unwrap();
    // 1000 does not fit a TINYINT: the ALTER fails on the source (strict mode).
    assert!(c
        .query_drop("ALTER TABLE app.t MODIFY v TINYINT NOT NULL")
        .await
        .is_err());
    c.query_drop("INSERT INTO app.t VALUES (3, 3)")
        .await
        .unwrap();
    // The source did split them: each ALTER is in its binlog twice.
    let infos: Vec<String> = c
        .query_map("SHOW BINLOG EVENTS", |row: mysql_async::Row| {
            row.get::<String, _>("Info").unwrap_or_default()
        })
        .await
        .unwrap();
    for alter in ["ADD INDEX (v)", "MODIFY v TINYINT"] {
        let n = infos.iter().filter(|i| i.contains(alter)).count();
        assert_eq!(n, 2, "{alter} in the source's binlog: {infos:#?}");
    }
    pair.assert_converges(&[("app.t", "id")], Duration::from_secs(60))
        .await;
    let mut d = pair.dst.conn().await.unwrap();
    let (src, dst) = (
        show_create(&mut c, "app.t").await,
        show_create(&mut d, "app.t").await,
    );
    assert_eq!(dst, src, "the destination's table has the source's shape");
    assert!(!dst.contains("`v_2`"), "one index on v: {dst}");
    assert!(dst.contains("KEY `v`"), "the index was made: {dst}");
    rowlog.stop().await;
}

/// A table renamed to a name rowlog leaves out (`source.exclude`) and later back would
/// hide the changes made under the left-out name: the destination would follow both
/// renames and never see them. The reader stops at the first rename instead, naming
/// both names and the fix, and the destination does not follow it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rename_across_include_and_exclude_stops_naming_both_names() {
    let pair = Pair::start().await;
    pair.create(&[
        "CREATE DATABASE app",
        "CREATE TABLE app.t (id INT PRIMARY KEY, v INT NOT NULL)",
    ])
    .await;
    let mut cfg = pair.config(1, 2);
    cfg.source.exclude.push("app.t_old".into());
    let rowlog = InProcess::start(cfg);
    pair.src
        .exec(&[
            "INSERT INTO app.t VALUES (1, 1)",
            "RENAME TABLE app.t TO app.t_old",
            "UPDATE app.t_old SET v = 2",
            "RENAME TABLE app.t_old TO app.t",
        ])
        .await
        .unwrap();
    let error = rowlog
        .stopped_error(
            Duration::from_secs(60),
            "the reader stops at a rename across the filter",
        )
        .await;
    for needle in [
        "app.t_old",
        "RENAME TABLE app.t TO app.t_old",
        "source.include/exclude",
        "snapshot",
    ] {
        assert!(error.contains(needle), "{needle:?} not named: {error}");
    }
    let mut d = pair.dst.conn().await.unwrap();
    assert!(
        exists(&mut d, "app", "t").await,
        "the destination did not follow"
    );
    assert!(!exists(&mut d, "app", "t_old").await);
}

/// A table swap (`RENAME TABLE a TO tmp, b TO a, tmp TO b`) succeeds however often it
/// runs, each run swapping back. Its reply lost (the connection cut right after the
/// destination got it), rowlog tries again: the swap must not run a second time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_swap_whose_reply_was_lost_is_run_once() {
    // A COM_QUERY packet: command byte 3, then the statement.
    swap_with_the_connection_cut_after(b"\x03RENAME TABLE").await;
}

/// The same, with the connection cut after the swap ran, as its record is being
/// prepared: the try after it finds no record, and must find that the swap ran.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_swap_whose_record_was_cut_off_is_run_once() {
    // A COM_STMT_PREPARE packet: command byte 0x16, then the statement.
    swap_with_the_connection_cut_after(b"\x16INSERT INTO `rowlog`.`rowlog_schema_changes`").await;
}

async fn swap_with_the_connection_cut_after(request: &[u8]) {
    let pair = Pair::start().await;
    pair.create(&[
        "CREATE DATABASE app",
        "CREATE TABLE app.a (id INT PRIMARY KEY, v VARCHAR(16) NOT NULL)",
        "CREATE TABLE app.b (id INT PRIMARY KEY, v VARCHAR(16) NOT NULL)",
        "INSERT INTO app.a VALUES (1, 'was a')",
        "INSERT INTO app.b VALUES (1, 'was b')",
    ])
    .await;
    let proxy = rowlog::testkit::Proxy::start(pair.dst.port).await.unwrap();
    let mut cfg = pair.config(1, 2);
    cfg.sink.url = format!("mysql://root@127.0.0.1:{}/", proxy.port);
    let mut rowlog = InProcess::start(cfg);
    proxy.cut_after_request(request);
    let mut c = pair.src.conn().await.unwrap();
    c.query_drop("RENAME TABLE app.a TO app.tmp, app.b TO app.a, app.tmp TO app.b")
        .await
        .unwrap();
    c.query_drop("INSERT INTO app.a VALUES (2, 'after')")
        .await
        .unwrap();
    rowlog
        .assert_converges_running(
            &pair,
            &[("app.a", "id"), ("app.b", "id")],
            Duration::from_secs(60),
        )
        .await;
    assert!(
        proxy.cut_after_request_done(),
        "the connection was cut right after {}",
        String::from_utf8_lossy(request)
    );
    let mut d = pair.dst.conn().await.unwrap();
    let a: Vec<String> = d.query("SELECT v FROM app.a ORDER BY id").await.unwrap();
    assert_eq!(a, ["was b", "after"]);
    // The marker rowlog renamed with the swap is gone.
    let left: u64 = d
        .query_first("SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_NAME LIKE 'rowlog\\_rename\\_%'")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(left, 0);
    rowlog.stop().await;
}

/// An unnamed `ADD INDEX (v)` succeeds however often it runs, each run adding one more
/// index (`v`, `v_2`, …). Its reply lost, rowlog tries again: the destination must end
/// with the source's one index, the table's definition stored before the first run
/// telling that it went through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unnamed_index_whose_reply_was_lost_is_added_once() {
    let pair = Pair::start().await;
    pair.create(&[
        "CREATE DATABASE app",
        "CREATE TABLE app.t (id INT PRIMARY KEY, v INT NOT NULL)",
    ])
    .await;
    let proxy = rowlog::testkit::Proxy::start(pair.dst.port).await.unwrap();
    let mut cfg = pair.config(1, 2);
    cfg.sink.url = format!("mysql://root@127.0.0.1:{}/", proxy.port);
    let mut rowlog = InProcess::start(cfg);
    proxy.cut_after_request(b"\x03ALTER TABLE");
    let mut c = pair.src.conn().await.unwrap();
    c.query_drop("ALTER TABLE app.t ADD INDEX (v)")
        .await
        .unwrap();
    c.query_drop("INSERT INTO app.t VALUES (1, 1)")
        .await
        .unwrap();
    rowlog
        .assert_converges_running(&pair, &[("app.t", "id")], Duration::from_secs(60))
        .await;
    assert!(
        proxy.cut_after_request_done(),
        "the connection was cut right after the ALTER"
    );
    let indexes = "SELECT DISTINCT INDEX_NAME FROM information_schema.STATISTICS \
                   WHERE TABLE_SCHEMA = 'app' AND TABLE_NAME = 't' ORDER BY INDEX_NAME";
    let on_source: Vec<String> = c.query(indexes).await.unwrap();
    let mut d = pair.dst.conn().await.unwrap();
    let on_destination: Vec<String> = d.query(indexes).await.unwrap();
    assert_eq!(on_source, ["PRIMARY", "v"]);
    assert_eq!(on_destination, on_source);
    let runs_left: u64 = d
        .query_first("SELECT COUNT(*) FROM rowlog.rowlog_schema_runs")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        runs_left, 0,
        "the started run's row is removed once recorded"
    );
    rowlog.stop().await;
}
