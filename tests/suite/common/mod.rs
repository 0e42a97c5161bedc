//! Shared harness for integration tests: a source and a destination MariaDB started
//! fresh per test, a config pointing rowlog at them, and ways to run rowlog in-process
//! or as the real `rowlog` binary.
#![allow(dead_code)]

pub mod http;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rowlog::config::Config;
use rowlog::daemon;
use rowlog::pipeline::Stats;
use rowlog::shutdown::{self, ShutdownTrigger};
use rowlog::testkit::{wait_until_equal, MariaDb, ServerOptions, TableDiff};
use std::sync::Arc;

use mysql_async::prelude::Queryable;

pub struct Pair {
    pub src: MariaDb,
    pub dst: MariaDb,
    pub dir: tempfile::TempDir,
    /// Where rowlog starts reading: after the last [`Pair::create`], else the earliest
    /// binlog position.
    start: std::sync::Mutex<String>,
    /// Brokers of the Kafka log, when configs use `log.backend = "kafka"`.
    kafka: std::sync::Mutex<Option<String>>,
}

impl Pair {
    pub async fn start() -> Pair {
        let (src, dst) = tokio::join!(
            MariaDb::start(ServerOptions::source(1)),
            MariaDb::start(ServerOptions::destination(2))
        );
        Pair::of(
            src.expect("source server"),
            dst.expect("destination server"),
        )
    }

    /// A pair of servers started by the caller (e.g. with other options).
    pub fn of(src: MariaDb, dst: MariaDb) -> Pair {
        Pair {
            src,
            dst,
            dir: tempfile::tempdir().unwrap(),
            start: std::sync::Mutex::new("earliest".into()),
            kafka: std::sync::Mutex::new(None),
        }
    }

    /// Runs the same DDL on both servers, as when tables exist on both before
    /// replication starts: configs made afterwards start reading the source after it.
    /// (Replicating DDL itself is tested in tests/suite/ddl.rs.) The destination goes first,
    /// so a rowlog already running finds the tables in place when it replicates them.
    pub async fn create(&self, statements: &[&str]) {
        self.dst.exec(statements).await.expect("DDL on destination");
        self.src.exec(statements).await.expect("DDL on source");
        self.start_here().await;
    }

    /// Configs made from now on start reading the source at its current position.
    pub async fn start_here(&self) {
        let mut c = self.src.conn().await.unwrap();
        let row: mysql_async::Row = c
            .query_first("SHOW MASTER STATUS")
            .await
            .unwrap()
            .expect("the source has a binlog");
        let (file, pos): (String, u64) = (row.get(0).unwrap(), row.get(1).unwrap());
        *self.start.lock().unwrap() = format!("{file}:{pos}");
    }

    /// Configs made from now on put the log on this Kafka broker.
    pub fn use_kafka(&self, brokers: String) {
        *self.kafka.lock().unwrap() = Some(brokers);
    }

    pub fn log_dir(&self) -> PathBuf {
        self.dir.path().join("log")
    }

    pub fn config(&self, workers: u32, partitions: u32) -> Config {
        let toml = self.config_toml(workers, partitions);
        let path = self.dir.path().join("in-process.toml");
        std::fs::write(&path, toml).unwrap();
        Config::load_with_env(&path, Default::default()).expect("test config is valid")
    }

    pub fn config_toml(&self, workers: u32, partitions: u32) -> String {
        let kafka = match &*self.kafka.lock().unwrap() {
            Some(brokers) => format!("[kafka]\nbrokers = \"{brokers}\"\nreplication_factor = 1\n"),
            None => String::new(),
        };
        let backend = if kafka.is_empty() {
            "embedded"
        } else {
            "kafka"
        };
        format!(
            "name = \"test\"\n\
             [source]\nurl = \"{}\"\nstart = \"{}\"\nserver_id = 4001\n\
             [log]\nbackend = \"{backend}\"\ndir = \"{}\"\npartitions = {partitions}\n\
             [sink]\nurl = \"{}\"\nworkers = {workers}\n\
             [http]\nlisten = \"127.0.0.1:0\"\n{kafka}",
            self.src.url(),
            self.start.lock().unwrap(),
            self.log_dir().display(),
            self.dst.url()
        )
    }

    pub fn write_config(&self, workers: u32, partitions: u32) -> PathBuf {
        let path = self.dir.path().join("rowlog.toml");
        std::fs::write(&path, self.config_toml(workers, partitions)).unwrap();
        path
    }

    /// Waits until every table is equal on both servers and asserts it, row by row.
    pub async fn assert_converges(
        &self,
        tables: &[(&str, &str)],
        timeout: Duration,
    ) -> Vec<TableDiff> {
        let mut s = self.src.conn().await.unwrap();
        let mut d = self.dst.conn().await.unwrap();
        let diffs = wait_until_equal(&mut s, &mut d, tables, timeout)
            .await
            .unwrap();
        for diff in &diffs {
            assert!(
                diff.is_equal(),
                "{} differs after {:?}: {:#?}",
                diff.table,
                timeout,
                diff
            );
            assert!(
                diff.checksums.0.is_some(),
                "CHECKSUM TABLE returned nothing for {}",
                diff.table
            );
        }
        diffs
    }
}

/// `app.c (id, v)` on both servers; the destination's copy refuses `v >= 100` for good (a
/// CHECK constraint named `small`), after `dst_first`.
/// Returns the pair and where its dead-letter file goes.
pub async fn rejecting_pair(dst_first: &[&str]) -> (Pair, std::path::PathBuf) {
    let pair = Pair::start().await;
    pair.src
        .exec(&[
            "CREATE DATABASE app",
            "CREATE TABLE app.c (id INT PRIMARY KEY, v INT NOT NULL)",
        ])
        .await
        .unwrap();
    let mut dst = dst_first.to_vec();
    dst.extend([
        "CREATE DATABASE app",
        "CREATE TABLE app.c (id INT PRIMARY KEY, v INT NOT NULL, CONSTRAINT small CHECK (v < 100))",
    ]);
    pair.dst.exec(&dst).await.unwrap();
    let dead = pair.dir.path().join("dead-letter.jsonl");
    (pair, dead)
}

/// Sends rowlog's warnings (retries, halts) to the test's captured output, so a failing
/// test shows what the pipeline went through. `RUST_LOG` overrides the level.
pub fn init_test_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    // Several tests of one binary may call this; the first wins.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

/// `SELECT COUNT(*)` of `table` on `server`.
pub async fn count(server: &MariaDb, table: &str) -> u64 {
    let mut c = server.conn().await.unwrap();
    c.query_first(format!("SELECT COUNT(*) FROM {table}"))
        .await
        .unwrap()
        .unwrap()
}

/// Waits (60 s at most) until `count_query` on `conn` returns `want`; `what` names
/// what did not happen in the failure message.
pub async fn wait_for_count(
    conn: &mut mysql_async::Conn,
    count_query: &str,
    want: u64,
    what: &str,
) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let got: Option<u64> = conn.query_first(count_query).await.unwrap();
        if got == Some(want) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what} within 60 s: `{count_query}` returned {got:?}, not {want}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// rowlog running in this process, stopped cleanly by [`InProcess::stop`].
pub struct InProcess {
    trigger: ShutdownTrigger,
    handle: tokio::task::JoinHandle<Result<Arc<Stats>, daemon::DaemonError>>,
    /// The running pipeline's counters, to poll while it runs.
    pub stats: Arc<Stats>,
}

impl InProcess {
    pub fn start(cfg: Config) -> Self {
        init_test_logging();
        let (trigger, shutdown) = shutdown::channel();
        let stats = Arc::new(Stats::default());
        let handle = tokio::spawn(daemon::run_with_stats(cfg, shutdown, stats.clone()));
        Self {
            trigger,
            handle,
            stats,
        }
    }

    /// Whether the pipeline ended by itself (it stopped on an error).
    pub fn finished(&self) -> bool {
        self.handle.is_finished()
    }

    /// [`Pair::assert_converges`], failing at once, with the pipeline's error, if the
    /// pipeline ends first: a test that waits minutes for a pipeline that stopped on an
    /// error should say which error.
    pub async fn assert_converges_running(
        &mut self,
        pair: &Pair,
        tables: &[(&str, &str)],
        timeout: Duration,
    ) {
        tokio::select! {
            _ = pair.assert_converges(tables, timeout) => {}
            ended = &mut self.handle => match ended {
                Ok(Ok(_)) => panic!("rowlog stopped by itself before the destination converged"),
                Ok(Err(e)) => panic!(
                    "rowlog failed before the destination converged: {}",
                    rowlog::report::error_chain(&e)
                ),
                Err(e) => panic!("rowlog panicked before the destination converged: {e}"),
            },
        }
    }

    /// Waits (`within` at most) for the pipeline to stop by itself on an error, and
    /// returns that error's text; fails naming `what` if it keeps running or ends
    /// without an error.
    pub async fn stopped_error(self, within: Duration, what: &str) -> String {
        let deadline = std::time::Instant::now() + within;
        while !self.finished() {
            assert!(std::time::Instant::now() < deadline, "{what}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        match self.stop_result().await {
            Ok(_) => panic!("rowlog stopped without an error ({what})"),
            Err(e) => rowlog::report::error_chain(&e),
        }
    }

    /// Stops and returns how the pipeline ended.
    pub async fn stop_result(self) -> Result<Arc<Stats>, daemon::DaemonError> {
        self.trigger.trigger();
        tokio::time::timeout(Duration::from_secs(60), self.handle)
            .await
            .expect("rowlog did not stop within 60 s")
            .expect("rowlog panicked")
    }

    pub async fn stop(self) -> Arc<Stats> {
        self.trigger.trigger();
        match tokio::time::timeout(Duration::from_secs(60), self.handle).await {
            Ok(Ok(Ok(stats))) => stats,
            Ok(Ok(Err(e))) => panic!("rowlog failed: {}", rowlog::report::error_chain(&e)),
            Ok(Err(e)) => panic!("rowlog panicked: {e}"),
            Err(_) => panic!("rowlog did not stop within 60 s"),
        }
    }
}

/// The real `rowlog` binary as a child process.
pub struct Daemon {
    child: Child,
    pub log_path: PathBuf,
    /// Where this process's lines start in the (shared, appended) log file.
    log_start: usize,
}

impl Daemon {
    pub fn spawn(config: &Path, log_path: PathBuf) -> Self {
        Self::spawn_with(config, log_path, &[])
    }

    /// [`Daemon::spawn`] with environment variables (configuration overrides) set.
    pub fn spawn_with(config: &Path, log_path: PathBuf, env: &[(&str, &str)]) -> Self {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_rowlog"))
            .arg("run")
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn rowlog");
        let log_start = std::fs::metadata(&log_path)
            .map(|m| m.len() as usize)
            .unwrap_or(0);
        Self {
            child,
            log_path,
            log_start,
        }
    }

    /// Waits until this rowlog has started (its "log opened" line; signal handlers are
    /// installed before it) or exited. A SIGTERM before that finds the process still
    /// loading, with the signal's default action: a crash, not the drain under test.
    fn wait_started(&mut self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            let log = std::fs::read(&self.log_path).unwrap_or_default();
            let mine = log.get(self.log_start..).unwrap_or_default();
            if mine
                .windows(b"log opened".len())
                .any(|w| w == b"log opened")
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits (`within` at most) for rowlog to exit by itself; fails naming `what` and
    /// showing its log when it keeps running.
    pub fn exit_status(&mut self, within: Duration, what: &str) -> std::process::ExitStatus {
        let deadline = std::time::Instant::now() + within;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{what}: rowlog still running after {within:?}; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGKILL: no draining, no final commit — a crash.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM to a started rowlog, then waits for the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        self.wait_started();
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        for _ in 0..600 {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        panic!(
            "rowlog did not exit within 60 s of SIGTERM; log:\n{}",
            self.log()
        )
    }

    /// SIGTERM, and asserts rowlog drained and exited 0 (the log is shown otherwise).
    pub fn terminate_cleanly(self) {
        let log_path = self.log_path.clone();
        let status = self.terminate();
        assert!(
            status.success(),
            "rowlog exited with {status} on SIGTERM; log:\n{}",
            std::fs::read_to_string(&log_path).unwrap_or_default()
        );
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Log tests: a two-column table schema and its changes, without any server.
pub mod records {
    use std::sync::Arc;

    use rowlog::log::{AppendBatch, LogEntry, LogError, PartitionReader, PartitionedLog};
    use rowlog_api::{
        BinlogPosition, ChangeEvent, ChangeId, Column, ColumnType, Op, SourceMeta, TableName,
        TableSchema, Value,
    };

    pub fn table() -> Arc<TableSchema> {
        let col = |name: &str, ty| Column {
            name: name.into(),
            ty,
            unsigned: false,
            charset: Some(45),
            charset_name: None,
            generated: false,
            nullable: true,
        };
        Arc::new(TableSchema {
            name: TableName::new("app", "t"),
            columns: vec![
                col("id", ColumnType::BigInt),
                col("payload", ColumnType::Blob),
            ],
            primary_key: vec![0],
            unique_keys: vec![],
            keyless: false,
        })
    }

    /// Change number `i`: a ~200-byte record whose commit time is `time_ms`.
    pub fn change_at(
        t: &Arc<TableSchema>,
        i: u64,
        payload_len: usize,
        time_ms: u64,
    ) -> ChangeEvent {
        let after = vec![
            Value::Int(i as i64),
            Value::Bytes(vec![(i % 251) as u8; payload_len].into()),
        ];
        change_of(t, Op::Insert, None, Some(after), i, time_ms)
    }

    /// Change number `i` of any table and kind, at its own binlog position.
    pub fn change_of(
        t: &Arc<TableSchema>,
        op: Op,
        before: Option<Vec<Value>>,
        after: Option<Vec<Value>>,
        i: u64,
        time_ms: u64,
    ) -> ChangeEvent {
        let pos: BinlogPosition = format!("binlog.000001:{}", 1000 + i * 100).parse().unwrap();
        ChangeEvent {
            table: t.clone(),
            op,
            before,
            after,
            source: SourceMeta {
                id: ChangeId {
                    epoch: 0,
                    event: pos.clone(),
                    index: 0,
                },
                txn_start: pos,
                gtid: None,
                commit_time_ms: time_ms,
            },
        }
    }

    /// A resume point on server 1 in epoch 0, for checkpoints.
    pub fn resume_at(position: &str) -> rowlog_api::ResumePoint {
        rowlog_api::ResumePoint {
            position: position.parse().unwrap(),
            gtid_state: None,
            server_id: 1,
            epoch: 0,
        }
    }

    pub fn change(t: &Arc<TableSchema>, i: u64) -> ChangeEvent {
        change_at(t, i, 150, 1_700_000_000_000 + i)
    }

    pub async fn append<L: PartitionedLog>(
        log: &L,
        partition: u32,
        changes: Vec<ChangeEvent>,
    ) -> Result<(), LogError> {
        let mut batch = AppendBatch::new(log.partitions());
        batch.partitions[partition as usize] = changes.into_iter().map(LogEntry::Change).collect();
        log.append(batch).await
    }

    /// Every durable record of `partition` from `from`, in order.
    pub async fn read_from<L: PartitionedLog>(
        log: &L,
        partition: u32,
        from: u64,
    ) -> Result<Vec<(u64, ChangeEvent)>, LogError> {
        let end = log.end_offset(partition);
        let mut r = log.reader(partition, from).await?;
        let mut out = Vec::new();
        while from + (out.len() as u64) < end {
            out.extend(
                r.next_batch(1000)
                    .await?
                    .into_iter()
                    .map(|rec| match rec.entry {
                        LogEntry::Change(c) => (rec.offset, c),
                        LogEntry::Schema(s) => panic!("schema change at {}: {s:?}", rec.offset),
                    }),
            );
        }
        Ok(out)
    }
}
