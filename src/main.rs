//! The `rowlog` command. Exit codes: 0 success, 1 the pipeline failed (the log line
//! says what and where), 2 invalid configuration or usage.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use rowlog::config::{Config, LogFormat};
use rowlog::daemon::{self, error_chain};
use rowlog::shutdown;
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "rowlog",
    version,
    about = "Change data capture from MySQL/MariaDB into MySQL/MariaDB"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the pipeline in the foreground until SIGINT or SIGTERM, then drain and exit.
    Run {
        /// The TOML config file; ROWLOG__SECTION__KEY environment variables override it.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a config file (with environment overrides) without connecting anywhere.
    CheckConfig { file: PathBuf },
    /// Inspect the embedded log (read-only; works while the daemon runs).
    Log {
        #[command(subcommand)]
        command: LogCommand,
    },
    /// Show or move the sink's positions (both the log's and the destination's).
    Offsets {
        #[command(subcommand)]
        command: OffsetsCommand,
    },
    /// Re-apply a stretch of the log to the destination without moving any position
    /// (the daemon must be stopped).
    Replay {
        #[arg(long, short)]
        config: PathBuf,
        /// Start at PARTITION:OFFSET (that partition only).
        #[arg(
            long,
            conflicts_with = "from_time",
            required_unless_present = "from_time"
        )]
        from_offset: Option<String>,
        /// Start, in every partition, at the first record committed at or after this
        /// time (UTC, 2026-11-24T15:00:00Z, or epoch milliseconds).
        #[arg(long)]
        from_time: Option<String>,
        /// Stop before this offset (with --from-offset).
        #[arg(long, conflicts_with = "to_time", requires = "from_offset")]
        to_offset: Option<u64>,
        /// Stop before the first record committed at or after this time.
        #[arg(long)]
        to_time: Option<String>,
        /// Print what would change, key by key, and change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Replay a stretch with schema changes in it (the destination has them
        /// already), or one that ends before the committed offset (its keys are left
        /// at older versions). Refused without it.
        #[arg(long)]
        force: bool,
    },
    /// Copy tables to the destination again: through the running daemon while it
    /// streams the rest, or straight to the destination when rowlog is stopped.
    Snapshot {
        #[arg(long, short)]
        config: PathBuf,
        /// Only these tables (db.table globs, comma-separated); default: all replicated.
        #[arg(long, value_delimiter = ',')]
        tables: Vec<String>,
    },
    /// Compare the destination's tables with the source's, chunk by chunk, allowing
    /// for replication lag; print differing keys and exit 1 when anything differs.
    Verify {
        #[arg(long, short)]
        config: PathBuf,
        /// Only these tables (db.table globs, comma-separated); default: all replicated.
        #[arg(long, value_delimiter = ',')]
        tables: Vec<String>,
        /// Rows per chunk.
        #[arg(long, default_value_t = 10_000)]
        chunk_rows: u64,
        /// How long a differing chunk may wait for the sink to catch up before it is
        /// reported, in seconds.
        #[arg(long, default_value_t = 60)]
        lag_timeout_secs: u64,
    },
    /// Read binlog files offline.
    Binlog {
        #[command(subcommand)]
        command: BinlogCommand,
    },
    /// The source's stored position.
    Source {
        #[command(subcommand)]
        command: SourceCommand,
    },
    /// Benchmarks that print a ratio against a baseline measured in the same run.
    Bench {
        #[command(subcommand)]
        command: BenchCommand,
    },
    /// Faults under a sysbench load (kills, server restarts, network cuts, stalls,
    /// latency), then every table compared; prints a summary table, exits 1 on any
    /// divergent row.
    Chaos {
        /// Seconds of sysbench load.
        #[arg(long, default_value_t = 120)]
        seconds: u64,
        /// SIGKILLs of rowlog during the load.
        #[arg(long, default_value_t = 10)]
        kills: u32,
        /// How long the destination server stays down.
        #[arg(long, default_value_t = 30)]
        destination_down_secs: u64,
        /// How long each network cut, stall or slowdown lasts.
        #[arg(long, default_value_t = 5)]
        network_fault_secs: u64,
        #[arg(long, default_value_t = 4)]
        tables: u32,
        #[arg(long, default_value_t = 10_000)]
        table_size: u64,
        /// Seed for the fault moments (default: from the clock; printed).
        #[arg(long)]
        seed: Option<u64>,
    },
    /// Start two throw-away MariaDB servers, replicate a demo workload, print how far it got.
    Demo {
        /// Row changes the demo workload writes on the source.
        #[arg(long, default_value_t = 50_000)]
        changes: u64,
    },
}

#[derive(Subcommand)]
enum BinlogCommand {
    /// Print a binlog file's row changes and commits as JSON lines, decoded as the
    /// live reader would; stops with a named error at an event it cannot decode.
    Decode {
        file: PathBuf,
        /// `db.table` globs of tables to print (default: all).
        #[arg(long, value_delimiter = ',')]
        include: Vec<String>,
        /// `db.table` globs of tables to leave out.
        #[arg(long, value_delimiter = ',')]
        exclude: Vec<String>,
        /// Tables without a primary key: full_row (print them), skip, or halt.
        #[arg(long, default_value = "full_row")]
        no_pk: String,
    },
}

/// Where the log is: a directory, or the `log.dir` of a config file.
#[derive(clap::Args)]
#[group(required = true, multiple = false)]
struct LogLocation {
    /// The embedded log's directory.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// A config file whose log to use (log.dir, or the Kafka topic with log.backend = "kafka").
    #[arg(long, short)]
    config: Option<PathBuf>,
}

#[derive(Subcommand)]
enum LogCommand {
    /// Per partition: start and end offsets, size, segments, consumers' committed offsets.
    Partitions {
        #[command(flatten)]
        at: LogLocation,
    },
    /// Print a partition's records as JSON lines.
    Tail {
        #[command(flatten)]
        at: LogLocation,
        #[arg(long, short)]
        partition: u32,
        /// First offset to print.
        #[arg(long, conflicts_with = "from_time")]
        from: Option<u64>,
        /// Print from the first record committed at or after this time (UTC,
        /// 2026-11-24T15:00:00Z, or epoch milliseconds).
        #[arg(long)]
        from_time: Option<String>,
        /// Keep printing new records as they are appended.
        #[arg(long)]
        follow: bool,
        /// Stop after this many records.
        #[arg(long)]
        limit: Option<u64>,
    },
    /// Check every record's CRC and offset, every index entry, every schema reference.
    Verify {
        #[command(flatten)]
        at: LogLocation,
    },
}

#[derive(Subcommand)]
enum BenchCommand {
    /// rowlog against native replication and raw upsert capacity, on private servers.
    Replication {
        /// Rows of the bulk shape (inserted in 1,000-row transactions, half updated).
        #[arg(long, default_value_t = 200_000)]
        bulk_rows: u64,
        /// Single-row transactions of the oltp shape.
        #[arg(long, default_value_t = 40_000)]
        oltp_txns: u64,
        /// Seconds of steady load for the lag measurement (0 to skip).
        #[arg(long, default_value_t = 10)]
        lag_secs: u64,
        /// Log partitions (the configuration's default).
        #[arg(long, default_value_t = 8)]
        partitions: u32,
        /// Workers per partition (the configuration's default).
        #[arg(long, default_value_t = 1)]
        workers: u32,
        /// Also catch up a backlog of this many row changes and report peak RSS (0: skip).
        #[arg(long, default_value_t = 0)]
        backlog_rows: u64,
        /// rowlog's bulk upserts as LOAD DATA where exact (`sink.load_data = true`).
        #[arg(long)]
        load_data: bool,
    },
    /// Embedded log append and read speed against raw sequential write bandwidth.
    Log {
        /// Records to append and read (about 200 bytes each).
        #[arg(long, default_value_t = 2_000_000)]
        records: u64,
        #[arg(long, default_value_t = 8)]
        partitions: u32,
        /// Records per append (one fsync per written partition each).
        #[arg(long, default_value_t = 10_000)]
        batch: u64,
        /// Scratch directory (removed afterwards); its filesystem is what is measured.
        #[arg(long, default_value = "rowlog-bench")]
        dir: PathBuf,
        /// Rounds to run, each against its own raw baseline; with more than one, the
        /// median and range of the ratios follow.
        #[arg(long, default_value_t = 1)]
        rounds: u32,
    },
}

#[derive(Subcommand)]
enum OffsetsCommand {
    /// Per partition: log start and end, committed offset, destination progress, lag.
    Show {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Set where the sink resumes, in the log and on the destination (daemon stopped).
    Set {
        #[arg(long, short)]
        config: PathBuf,
        /// One partition; all partitions when absent.
        #[arg(long, short)]
        partition: Option<u32>,
        #[command(flatten)]
        to: SetTarget,
        /// Move back across schema changes the destination has already applied (the
        /// rows before them are applied again over them). Refused without it.
        #[arg(long)]
        force: bool,
    },
}

#[derive(clap::Args)]
#[group(required = true, multiple = false)]
struct SetTarget {
    /// The next offset to apply.
    #[arg(long)]
    to: Option<u64>,
    /// The first record committed at or after this time.
    #[arg(long)]
    to_time: Option<String>,
    /// The oldest record the log still has.
    #[arg(long)]
    to_earliest: bool,
    /// The end: skip everything not yet applied.
    #[arg(long)]
    to_end: bool,
}

#[derive(Subcommand)]
enum SourceCommand {
    /// Re-read the source's binlog from an earlier (or later) point (daemon stopped).
    Reset {
        #[arg(long, short)]
        config: PathBuf,
        /// A binlog position FILE.NNNNNN:POS at a transaction boundary.
        #[arg(long, conflicts_with = "to_gtid", required_unless_present = "to_gtid")]
        to: Option<String>,
        /// MariaDB: a GTID state D-S-N[,D-S-N…] (one per domain): the source resumes
        /// after those transactions; its position is looked up on the source.
        #[arg(long)]
        to_gtid: Option<String>,
        /// Read again across schema changes the destination has applied (they would
        /// run a second time).
        #[arg(long)]
        force: bool,
    },
}

const EXIT_FAILED: u8 = 1;
const EXIT_CONFIG: u8 = 2;

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

fn load(path: &std::path::Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|e| usage(e.to_string()))
}

fn main() -> ExitCode {
    // mysql_async keeps up to 128 packet buffers for reuse, each of up to 4 MiB by
    // default: after wide rows, hundreds of MiB held by connections at rest (measured:
    // 299 against 253 MiB peak with 1 MiB rows, tests/suite/memory.rs). 256 KiB covers
    // ordinary packets; a larger one is allocated for its use. The operator's own
    // setting wins. Set before any thread starts, as set_var requires.
    if std::env::var_os("MYSQL_ASYNC_BUFFER_SIZE_CAP").is_none() {
        std::env::set_var("MYSQL_ASYNC_BUFFER_SIZE_CAP", "262144");
    }
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { file } => match load(&file) {
            Ok(_) => {
                println!("{}: ok", file.display());
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Command::Run { config } => {
            let cfg = match load(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            init_logging(cfg.logging.format);
            match runtime().and_then(|rt| rt.block_on(run(cfg))) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %format!("{e:#}"), "rowlog stopped");
                    ExitCode::from(EXIT_FAILED)
                }
            }
        }
        Command::Log { command } => {
            let request = match log_request(command) {
                Ok(r) => r,
                Err(code) => return code,
            };
            match runtime().and_then(|rt| rt.block_on(log_command(request))) {
                Ok(code) => code,
                Err(e) => {
                    eprintln!("rowlog: {e:#}");
                    ExitCode::from(EXIT_FAILED)
                }
            }
        }
        Command::Bench {
            command:
                BenchCommand::Log {
                    records,
                    partitions,
                    batch,
                    dir,
                    rounds,
                },
        } => {
            match runtime().and_then(|rt| {
                rt.block_on(rowlog::tools::bench_log::run(
                    &dir,
                    records,
                    partitions,
                    batch.max(1),
                    rounds,
                ))
                .map_err(anyhow::Error::from)
            }) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("rowlog bench failed: {e:#}");
                    ExitCode::from(EXIT_FAILED)
                }
            }
        }
        Command::Bench {
            command:
                BenchCommand::Replication {
                    bulk_rows,
                    oltp_txns,
                    lag_secs,
                    partitions,
                    workers,
                    backlog_rows,
                    load_data,
                },
        } => {
            let opts = rowlog::tools::bench_replication::BenchOptions {
                bulk_rows,
                oltp_txns,
                lag_secs,
                partitions,
                workers,
                backlog_rows,
                load_data,
            };
            match runtime().and_then(|rt| {
                rt.block_on(rowlog::tools::bench_replication::run(opts))
                    .map_err(|e| anyhow::anyhow!(e))
            }) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("rowlog bench failed: {e:#}");
                    ExitCode::from(EXIT_FAILED)
                }
            }
        }
        Command::Offsets { command } => {
            let path = match &command {
                OffsetsCommand::Show { config } | OffsetsCommand::Set { config, .. } => {
                    config.clone()
                }
            };
            let cfg = match load(&path) {
                Ok(c) => c,
                Err(code) => return code,
            };
            use rowlog::tools::offsets::{self, Target};
            match command {
                OffsetsCommand::Show { .. } => tool(async move { offsets::show(&cfg).await }),
                OffsetsCommand::Set {
                    partition,
                    to,
                    force,
                    ..
                } => {
                    let target = match (to.to, to.to_time, to.to_earliest) {
                        (Some(o), _, _) => Target::Offset(o),
                        (_, Some(t), _) => match parse_time(&t, "--to-time") {
                            Ok(ms) => Target::TimeMs(ms),
                            Err(code) => return code,
                        },
                        (_, _, true) => Target::Earliest,
                        _ => Target::End,
                    };
                    tool(async move { offsets::set(&cfg, partition, target, force).await })
                }
            }
        }
        Command::Replay {
            config,
            from_offset,
            from_time,
            to_offset,
            to_time,
            dry_run,
            force,
        } => {
            let cfg = match load(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            use rowlog::tools::offsets::{self, Range, Target};
            let (partition, from) = match (from_offset, from_time) {
                (Some(po), _) => {
                    let parsed = po
                        .split_once(':')
                        .and_then(|(p, o)| Some((p.trim().parse().ok()?, o.trim().parse().ok()?)));
                    let Some((p, o)) = parsed else {
                        return usage(format!(
                            "--from-offset {po}: expected PARTITION:OFFSET, e.g. 3:1200"
                        ));
                    };
                    (Some(p), Target::Offset(o))
                }
                (None, Some(t)) => match parse_time(&t, "--from-time") {
                    Ok(ms) => (None, Target::TimeMs(ms)),
                    Err(code) => return code,
                },
                (None, None) => return usage("give --from-offset or --from-time".into()),
            };
            let to = match (to_offset, to_time) {
                (Some(o), _) => Some(Target::Offset(o)),
                (None, Some(t)) => match parse_time(&t, "--to-time") {
                    Ok(ms) => Some(Target::TimeMs(ms)),
                    Err(code) => return code,
                },
                (None, None) => None,
            };
            let range = Range {
                partition,
                from,
                to,
                force,
            };
            tool(async move { offsets::replay(&cfg, range, dry_run).await })
        }
        Command::Source {
            command:
                SourceCommand::Reset {
                    config,
                    to,
                    to_gtid,
                    force,
                },
        } => {
            let cfg = match load(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            use rowlog::tools::offsets::{source_reset, ResetTo};
            let target = match (to, to_gtid) {
                (Some(p), None) => match p.parse() {
                    Ok(p) => ResetTo::Position(p),
                    Err(e) => return usage(format!("--to {p}: {e}")),
                },
                (None, Some(g)) => match g.parse() {
                    Ok(g) => ResetTo::Gtid(g),
                    Err(e) => return usage(format!("--to-gtid {g}: {e}")),
                },
                _ => {
                    return usage("give one of --to FILE.NNNNNN:POS or --to-gtid D-S-N[,…]".into())
                }
            };
            tool(async move { source_reset(&cfg, target, force).await })
        }
        Command::Snapshot { config, tables } => {
            let cfg = match load(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            tool(async move { rowlog::tools::snapshot_cmd::snapshot_cmd(&cfg, &tables).await })
        }
        Command::Verify {
            config,
            tables,
            chunk_rows,
            lag_timeout_secs,
        } => {
            let cfg = match load(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let opts = rowlog::tools::verify_tables::VerifyOptions {
                tables,
                chunk_rows: chunk_rows.max(1),
                lag_timeout: std::time::Duration::from_secs(lag_timeout_secs),
            };
            match runtime().and_then(|rt| {
                rt.block_on(rowlog::tools::verify_tables::verify_cmd(&cfg, &opts))
                    .map_err(|e| anyhow::anyhow!(rowlog::report::error_chain(&*e)))
            }) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::from(EXIT_FAILED),
                Err(e) => {
                    eprintln!("rowlog: {e:#}");
                    ExitCode::from(EXIT_FAILED)
                }
            }
        }
        Command::Binlog {
            command:
                BinlogCommand::Decode {
                    file,
                    include,
                    exclude,
                    no_pk,
                },
        } => {
            let opts = match binlog_decode_options(&include, &exclude, &no_pk) {
                Ok(o) => o,
                Err(e) => return usage(e),
            };
            tool(async move {
                use rowlog::tools::binlog_decode;
                let mut out = std::io::BufWriter::new(std::io::stdout().lock());
                let result = binlog_decode::decode(&file, opts, &mut out).await;
                std::io::Write::flush(&mut out)?;
                let n = result?;
                eprintln!(
                    "{}: {} changes in {} transactions",
                    file.display(),
                    n.changes,
                    n.commits
                );
                Ok(())
            })
        }
        Command::Chaos {
            seconds,
            kills,
            destination_down_secs,
            network_fault_secs,
            tables,
            table_size,
            seed,
        } => {
            let rowlog = match std::env::current_exe() {
                Ok(p) => p,
                Err(e) => {
                    eprintln!("rowlog chaos: cannot find its own binary: {e}");
                    return ExitCode::from(EXIT_FAILED);
                }
            };
            let seed = seed.unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(1)
            });
            let opts = rowlog::tools::chaos::ChaosOptions {
                seconds,
                kills,
                destination_down_secs,
                network_fault_secs,
                tables: tables.max(1),
                table_size,
                rowlog,
                seed,
            };
            match runtime().and_then(|rt| {
                rt.block_on(rowlog::tools::chaos::run(opts))
                    .map_err(|e| anyhow::anyhow!(rowlog::report::error_chain(&*e)))
            }) {
                Ok(report) => {
                    report.print();
                    if report.rows_divergent == 0 {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::from(EXIT_FAILED)
                    }
                }
                Err(e) => {
                    eprintln!("rowlog chaos failed: {e:#}");
                    ExitCode::from(EXIT_FAILED)
                }
            }
        }
        Command::Demo { changes } => {
            init_logging(LogFormat::Text);
            match runtime().and_then(|rt| rt.block_on(rowlog::demo::run(changes))) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("rowlog demo failed: {e:#}");
                    ExitCode::from(EXIT_FAILED)
                }
            }
        }
    }
}

fn binlog_decode_options(
    include: &[String],
    exclude: &[String],
    no_pk: &str,
) -> Result<rowlog_mysql_binlog::FileDecodeOptions, String> {
    use rowlog_mysql_binlog::{FileDecodeOptions, NoPrimaryKey, TableFilter};
    let no_pk = match no_pk {
        "full_row" => NoPrimaryKey::FullRow,
        "skip" => NoPrimaryKey::Skip,
        "halt" => NoPrimaryKey::Halt,
        other => return Err(format!("--no-pk {other}: expected full_row, skip or halt")),
    };
    let filter = TableFilter::new(include, exclude).map_err(|e| e.to_string())?;
    Ok(FileDecodeOptions { filter, no_pk })
}

/// A `rowlog log` command with its arguments checked: the log it reads (an embedded
/// log's directory, or a config whose log may be on Kafka) and where to start.
enum LogRequest {
    Partitions(rowlog::tools::LogLocation),
    Tail {
        at: rowlog::tools::LogLocation,
        partition: u32,
        from: rowlog::tools::log_cmd::From,
        follow: bool,
        limit: Option<u64>,
    },
    Verify(rowlog::tools::LogLocation),
}

/// Checks a `rowlog log` command's arguments and config; what is wrong exits 2.
fn log_request(command: LogCommand) -> Result<LogRequest, ExitCode> {
    use rowlog::tools::log_cmd;
    use rowlog::tools::LogLocation as At;
    let location = |at: &LogLocation| -> Result<At, ExitCode> {
        match (&at.dir, &at.config) {
            (Some(d), _) => Ok(At::Dir(d.clone())),
            (None, Some(c)) => Ok(At::Config(Box::new(load(c)?))),
            (None, None) => Err(usage("give --dir or --config".into())),
        }
    };
    Ok(match command {
        LogCommand::Partitions { at } => LogRequest::Partitions(location(&at)?),
        LogCommand::Tail {
            at,
            partition,
            from,
            from_time,
            follow,
            limit,
        } => LogRequest::Tail {
            from: match from_time {
                Some(t) => log_cmd::From::TimeMs(parse_time(&t, "--from-time")?),
                None => log_cmd::From::Offset(from.unwrap_or(0)),
            },
            at: location(&at)?,
            partition,
            follow,
            limit,
        },
        LogCommand::Verify { at } => LogRequest::Verify(location(&at)?),
    })
}

async fn log_command(request: LogRequest) -> anyhow::Result<ExitCode> {
    use rowlog::tools::log_cmd;
    match request {
        LogRequest::Partitions(at) => log_cmd::partitions(&at).await?,
        LogRequest::Tail {
            at,
            partition,
            from,
            follow,
            limit,
        } => log_cmd::tail(&at, partition, from, follow, limit).await?,
        LogRequest::Verify(at) => {
            if !log_cmd::verify_cmd(&at).await? {
                return Ok(ExitCode::from(EXIT_FAILED));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A usage error: said on one line, exit 2.
fn usage(detail: String) -> ExitCode {
    eprintln!("rowlog: {detail}");
    ExitCode::from(EXIT_CONFIG)
}

/// A time argument (`flag` names it in the error), or exit 2.
fn parse_time(t: &str, flag: &str) -> Result<u64, ExitCode> {
    rowlog::tools::log_cmd::parse_time(t).map_err(|e| usage(format!("{flag} {t}: {e}")))
}

/// Runs a tool command; errors print on one line and exit 1.
fn tool(
    fut: impl std::future::Future<Output = Result<(), Box<dyn std::error::Error + Send + Sync>>>,
) -> ExitCode {
    match runtime().and_then(|rt| {
        rt.block_on(fut)
            .map_err(|e| anyhow::anyhow!(rowlog::report::error_chain(&*e)))
    }) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rowlog: {e:#}");
            ExitCode::from(EXIT_FAILED)
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

async fn run(cfg: Config) -> anyhow::Result<()> {
    let (trigger, shutdown) = shutdown::channel();
    let deadline = std::time::Duration::from_secs(cfg.shutdown_timeout_secs);
    // Handlers are installed here, before anything else runs: a SIGTERM that arrives
    // while rowlog is still starting (an operator stopping it at once) drains too,
    // instead of killing the process with the signal's default action.
    let mut signals = Signals::install();
    tokio::spawn(async move {
        signals.next().await;
        trigger.trigger();
        tokio::select! {
            // A second signal while draining means "now".
            _ = signals.next() => {
                tracing::warn!("second signal: exiting without draining; the next start replays what was not committed");
                std::process::exit(130);
            }
            _ = tokio::time::sleep(deadline) => {
                tracing::error!(
                    shutdown_timeout_secs = deadline.as_secs(),
                    "draining did not finish in time; exiting without it (nothing is lost: the next start replays what was not committed)"
                );
                std::process::exit(EXIT_FAILED as i32);
            }
        }
    });
    daemon::run(cfg, shutdown)
        .await
        .map_err(|e| anyhow::anyhow!(error_chain(&e)))?;
    Ok(())
}

/// SIGTERM and SIGINT stop rowlog; SIGHUP is answered with a log line: rowlog does not
/// reload its configuration (a restart applies it, and loses nothing).
struct Signals {
    streams: Option<(
        tokio::signal::unix::Signal,
        tokio::signal::unix::Signal,
        tokio::signal::unix::Signal,
    )>,
}

impl Signals {
    fn install() -> Self {
        use tokio::signal::unix::{signal, SignalKind};
        let streams = match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::hangup()),
        ) {
            (Ok(t), Ok(i), Ok(h)) => Some((t, i, h)),
            _ => {
                tracing::warn!("cannot install signal handlers; SIGTERM will not drain");
                None
            }
        };
        Self { streams }
    }

    /// The next SIGTERM or SIGINT.
    async fn next(&mut self) {
        let Some((term, int, hup)) = self.streams.as_mut() else {
            // Without handlers the process can still be killed; never return early.
            return std::future::pending().await;
        };
        loop {
            tokio::select! {
                _ = term.recv() => return tracing::info!("SIGTERM received"),
                _ = int.recv() => return tracing::info!("SIGINT received"),
                _ = hup.recv() => tracing::warn!("SIGHUP ignored: rowlog does not reload its configuration; restart it to apply changes"),
            }
        }
    }
}

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
