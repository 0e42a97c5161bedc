//! `rowlog chaos`: rowlog under a sysbench OLTP write load while faults are injected,
//! then every table compared row by row. It prints a summary table: faults by kind,
//! rows written, rows compared, rows divergent (must be 0), the longest catch-up after a
//! fault, peak RSS.
//!
//! Set-up: a source and a destination `mariadbd`, each behind a TCP proxy
//! ([`crate::testkit::Proxy`]) that rowlog connects through; sysbench writes straight
//! to the source. The destination starts empty and gets its tables from rowlog's
//! initial snapshot. rowlog runs as a separate process (the binary given), so a kill
//! is a real SIGKILL.
//!
//! Faults, spread over the load: SIGKILL of rowlog at random moments (restarted after
//! a random pause), the destination server stopped and started again, the source
//! server restarted, the network to each server cut (connections closed, new ones
//! refused), stalled (nothing moves), and slowed (latency per packet).
//!
//! Catch-up: after each fault a marker row is written on the source; the time until
//! it is on the destination is the fault's catch-up time.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;

use crate::testkit::{compare_table, MariaDb, Proxy, ServerOptions};

type ChaosResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

#[derive(Clone, Debug)]
pub struct ChaosOptions {
    /// Seconds of sysbench load.
    pub seconds: u64,
    /// SIGKILLs of rowlog during the load.
    pub kills: u32,
    /// How long the destination server stays down.
    pub destination_down_secs: u64,
    /// How long each network cut or stall lasts.
    pub network_fault_secs: u64,
    pub tables: u32,
    pub table_size: u64,
    /// The rowlog binary to run.
    pub rowlog: PathBuf,
    /// A seed for the fault moments (printed, so a run can be repeated).
    pub seed: u64,
}

/// What a chaos run saw.
#[derive(Debug, Default)]
pub struct ChaosReport {
    /// (fault kind, how many, longest catch-up in seconds)
    pub faults: Vec<(&'static str, u32, f64)>,
    pub transactions: u64,
    pub rows_compared: u64,
    pub rows_divergent: u64,
    pub peak_rss_mib: u64,
    /// Times rowlog started its pipeline again after its lease on the destination
    /// lapsed (a destination down for longer than the lease).
    pub lease_restarts: usize,
    pub differences: Vec<String>,
}

impl ChaosReport {
    fn fault(&mut self, kind: &'static str, catch_up: f64) {
        match self.faults.iter_mut().find(|f| f.0 == kind) {
            Some(f) => {
                f.1 += 1;
                f.2 = f.2.max(catch_up);
            }
            None => self.faults.push((kind, 1, catch_up)),
        }
    }

    pub fn print(&self) {
        println!("{:<28} {:>6} {:>18}", "fault", "count", "max catch-up (s)");
        for (kind, n, t) in &self.faults {
            println!("{kind:<28} {n:>6} {t:>18.1}");
        }
        println!("sysbench transactions on the source: {}", self.transactions);
        println!("rows compared: {}", self.rows_compared);
        println!("rows divergent: {}", self.rows_divergent);
        println!("peak RSS of rowlog: {} MiB", self.peak_rss_mib);
        println!(
            "pipeline restarts after a lapsed lease: {}",
            self.lease_restarts
        );
        for d in self.differences.iter().take(20) {
            println!("  {d}");
        }
    }
}

/// A small deterministic generator for fault moments (xorshift).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.next() % (hi - lo).max(1))
    }
}

struct Rowlog {
    child: Child,
    log: PathBuf,
    peak_rss_kib: u64,
}

impl Rowlog {
    fn spawn(bin: &Path, config: &Path, log: &Path) -> ChaosResult<Self> {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)?;
        let child = Command::new(bin)
            .args(["run", "--config"])
            .arg(config)
            // The report counts info lines (restarts after a lapsed lease).
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(out)
            .spawn()?;
        Ok(Self {
            child,
            log: log.to_path_buf(),
            peak_rss_kib: 0,
        })
    }

    fn sample_rss(&mut self) {
        let kib = crate::report::proc_status_kib(&self.child.id().to_string(), "VmHWM:");
        self.peak_rss_kib = self.peak_rss_kib.max(kib);
    }

    /// SIGKILL; returns the peak RSS it had.
    fn kill(mut self) -> u64 {
        self.sample_rss();
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.peak_rss_kib
    }

    fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    fn tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

fn sysbench(args: &[&str], port: u16, opts: &ChaosOptions) -> Command {
    let mut c = Command::new("sysbench");
    c.arg("oltp_write_only")
        .arg("--mysql-host=127.0.0.1")
        .arg(format!("--mysql-port={port}"))
        .arg("--mysql-user=root")
        .arg("--mysql-db=sbtest")
        .arg(format!("--tables={}", opts.tables))
        .arg(format!("--table-size={}", opts.table_size))
        .args(args);
    c
}

/// Writes a marker on the source and waits until the destination has it: how long
/// the pipeline took to catch up to this moment.
async fn catch_up(src: &MariaDb, dst_url: &str, marker: u64) -> ChaosResult<f64> {
    src.exec(&[&format!(
        "INSERT INTO chaos.marks VALUES ({marker}, NOW(6))"
    )])
    .await?;
    let started = Instant::now();
    loop {
        if started.elapsed() > Duration::from_secs(300) {
            return Err(format!("marker {marker} did not reach the destination in 300 s").into());
        }
        if let Ok(mut c) = mysql_async::Conn::new(mysql_async::Opts::from_url(
            &rowlog_api::url::tcp_as_given(dst_url),
        )?)
        .await
        {
            let found: Result<Option<u64>, _> = c
                .exec_first("SELECT id FROM chaos.marks WHERE id = ?", (marker,))
                .await;
            if let Ok(Some(_)) = found {
                return Ok(started.elapsed().as_secs_f64());
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub async fn run(opts: ChaosOptions) -> ChaosResult<ChaosReport> {
    if Command::new("sysbench").arg("--version").output().is_err() {
        return Err("sysbench is not installed (apt-get install sysbench)".into());
    }
    let mut rng = Rng(opts.seed.max(1));
    let (src, dst) = tokio::join!(
        MariaDb::start(ServerOptions::source(1)),
        MariaDb::start(ServerOptions::destination(2))
    );
    let (mut src, mut dst) = (src?, dst?);
    let src_proxy = Proxy::start(src.port).await?;
    let dst_proxy = Proxy::start(dst.port).await?;
    let dst_direct = dst.url();

    println!(
        "chaos: seed {}, {} s of sysbench oltp_write_only, {} kills",
        opts.seed, opts.seconds, opts.kills
    );
    src.exec(&[
        "CREATE DATABASE sbtest",
        "CREATE DATABASE chaos",
        "CREATE TABLE chaos.marks (id BIGINT PRIMARY KEY, at DATETIME(6) NOT NULL)",
    ])
    .await?;
    let prepare = sysbench(&["prepare"], src.port, &opts).output()?;
    if !prepare.status.success() {
        return Err(format!(
            "sysbench prepare failed: {}",
            String::from_utf8_lossy(&prepare.stderr)
        )
        .into());
    }

    let dir = tempfile_dir()?;
    let config = dir.join("chaos.toml");
    std::fs::write(
        &config,
        format!(
            "name = \"chaos\"\nshutdown_timeout_secs = 10\n\
             [source]\nurl = \"mysql://root@127.0.0.1:{}/\"\nstart = \"current\"\nheartbeat_ms = 500\n\
             [log]\ndir = \"{}\"\npartitions = 4\n\
             [sink]\nurl = \"mysql://root@127.0.0.1:{}/\"\nworkers = 2\n\
             [http]\nenabled = false\n\
             [snapshot]\nmode = \"initial\"\n",
            src_proxy.port,
            dir.join("log").display(),
            dst_proxy.port
        ),
    )?;
    let log_path = dir.join("rowlog.log");
    let mut report = ChaosReport::default();
    let mut peak_kib = 0u64;
    let mut rowlog = Rowlog::spawn(&opts.rowlog, &config, &log_path)?;
    // The initial snapshot copies sysbench's tables; streaming follows.
    catch_up(&src, &dst_direct, 0).await?;

    let load = sysbench(
        &[
            &format!("--time={}", opts.seconds),
            "--threads=2",
            "--report-interval=0",
            "run",
        ],
        src.port,
        &opts,
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()?;
    let started = Instant::now();
    let load_time = Duration::from_secs(opts.seconds);

    // The fault schedule: kills spread over the load, the network and destination
    // faults evenly between them. (The source restart comes after the load: sysbench
    // does not survive its server going away.)
    let others = [
        "destination restart",
        "network cut to source",
        "network cut to destination",
        "network stall to destination",
        "slow destination (30 ms)",
    ];
    let mut schedule: Vec<&'static str> = vec!["SIGKILL of rowlog"; opts.kills as usize];
    for (j, o) in others.iter().enumerate() {
        let at = ((j + 1) * schedule.len()) / (others.len() + 1) + j;
        schedule.insert(at.min(schedule.len()), o);
    }
    let slot = load_time.as_millis() as u64 / schedule.len().max(1) as u64;
    let mut marker = 1u64;
    for (i, kind) in schedule.iter().copied().enumerate() {
        let due = Duration::from_millis(slot * i as u64) + rng.millis(0, (slot / 2).max(2));
        if let Some(wait) = due.checked_sub(started.elapsed()) {
            tokio::time::sleep(wait).await;
        }
        if !rowlog.running() {
            return Err(format!("rowlog exited on its own; its log:\n{}", rowlog.tail()).into());
        }
        rowlog = inject(
            kind,
            rowlog,
            &opts,
            &config,
            &log_path,
            &mut dst,
            &src_proxy,
            &dst_proxy,
            &mut rng,
            &mut peak_kib,
        )
        .await?;
        rowlog.sample_rss();
        let took = catch_up(&src, &dst_direct, marker).await?;
        marker += 1;
        report.fault(kind, took);
    }
    let out = load.wait_with_output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    report.transactions = text
        .lines()
        .find(|l| l.trim_start().starts_with("transactions:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);

    // The source restarts while rowlog streams, and takes writes again after.
    src.restart().await?;
    let more = sysbench(&["--time=5", "--threads=2", "run"], src.port, &opts).output()?;
    if !more.status.success() {
        return Err(format!(
            "sysbench after the source restart: {}",
            String::from_utf8_lossy(&more.stderr)
        )
        .into());
    }
    let took = catch_up(&src, &dst_direct, marker).await?;
    marker += 1;
    report.fault("source restart", took);
    if !rowlog.running() {
        return Err(format!("rowlog exited on its own; its log:\n{}", rowlog.tail()).into());
    }

    // Let it finish, then compare every table row by row.
    catch_up(&src, &dst_direct, marker).await?;
    rowlog.sample_rss();
    let mut s = src.conn().await?;
    let mut d = dst.conn().await?;
    let mut tables: Vec<(String, &str)> = (1..=opts.tables)
        .map(|t| (format!("sbtest.sbtest{t}"), "id"))
        .collect();
    tables.push(("chaos.marks".into(), "id"));
    let names: Vec<(&str, &str)> = tables.iter().map(|(t, k)| (t.as_str(), *k)).collect();
    let diffs =
        crate::testkit::wait_until_equal(&mut s, &mut d, &names, Duration::from_secs(120)).await?;
    for diff in diffs.iter() {
        report.rows_compared += diff.source_rows as u64;
        if !diff.is_equal() {
            report.rows_divergent += diff.examples.len().max(1) as u64
                + diff.source_rows.abs_diff(diff.destination_rows) as u64;
            report
                .differences
                .push(format!("{}: {:?}", diff.table, diff.examples));
        }
    }
    // One more, row by row, of the first table: the comparison itself is checked.
    let _ = compare_table(&mut s, &mut d, "sbtest.sbtest1", "id").await?;
    peak_kib = peak_kib.max(rowlog.kill());
    report.peak_rss_mib = peak_kib / 1024;
    report.lease_restarts = std::fs::read_to_string(&log_path)
        .unwrap_or_default()
        .matches(crate::daemon::RESTARTED)
        .count();
    let _ = std::fs::remove_dir_all(&dir);
    Ok(report)
}

/// Injects one fault and undoes it.
#[allow(clippy::too_many_arguments)]
async fn inject(
    kind: &str,
    mut rowlog: Rowlog,
    opts: &ChaosOptions,
    config: &Path,
    log_path: &Path,
    dst: &mut MariaDb,
    src_proxy: &Proxy,
    dst_proxy: &Proxy,
    rng: &mut Rng,
    peak_kib: &mut u64,
) -> ChaosResult<Rowlog> {
    let hold = Duration::from_secs(opts.network_fault_secs);
    match kind {
        "SIGKILL of rowlog" => {
            *peak_kib = (*peak_kib).max(rowlog.kill());
            tokio::time::sleep(rng.millis(100, 1000)).await;
            rowlog = Rowlog::spawn(&opts.rowlog, config, log_path)?;
        }
        "destination restart" => {
            dst.stop();
            tokio::time::sleep(Duration::from_secs(opts.destination_down_secs)).await;
            dst.restart().await?;
        }
        "network cut to source" => {
            src_proxy.cut();
            tokio::time::sleep(hold).await;
            src_proxy.restore();
        }
        "network cut to destination" => {
            dst_proxy.cut();
            tokio::time::sleep(hold).await;
            dst_proxy.restore();
        }
        "network stall to destination" => {
            dst_proxy.stall();
            tokio::time::sleep(hold).await;
            dst_proxy.restore();
        }
        _ => {
            dst_proxy.set_latency(Duration::from_millis(30));
            tokio::time::sleep(hold).await;
            dst_proxy.set_latency(Duration::ZERO);
        }
    }
    Ok(rowlog)
}

fn tempfile_dir() -> std::io::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!(
        "rowlog-chaos-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    ));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
