//! The `rowlog` command's contract with operators: invalid configuration exits 2 with
//! a message naming the key; a source that cannot be replicated is refused at start
//! with the setting to change.

use std::process::Command;

use rowlog::testkit::{MariaDb, ServerOptions};

fn rowlog(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_rowlog"))
        .args(args)
        .output()
        .expect("run rowlog")
}

fn config_file(dir: &std::path::Path, body: &str) -> String {
    let p = dir.join("rowlog.toml");
    std::fs::write(&p, body).unwrap();
    p.display().to_string()
}

const VALID: &str =
    "[source]\nurl = \"mysql://root@127.0.0.1:1/\"\n[sink]\nurl = \"mysql://root@127.0.0.1:2/\"\n";

#[test]
fn invalid_config_exits_2_and_names_the_key() {
    let dir = tempfile::tempdir().unwrap();
    for (body, key) in [
        (
            VALID.replace("[sink]", "[sink]\nworkers = 0"),
            "sink.workers",
        ),
        (
            VALID.replace("[source]", "[source]\nstrat = \"earliest\""),
            "strat",
        ),
        (format!("{VALID}[log]\npartitions = -3\n"), "partitions"),
        (
            VALID.replace("[source]", "[source]\nstart = \"binlog:12\""),
            "binlog:12",
        ),
        ("[source\nurl=".to_string(), "rowlog.toml"),
        (
            VALID.replace("127.0.0.1:2", "127.0.0.1:1"),
            "replicate a server into itself",
        ),
    ] {
        let path = config_file(dir.path(), &body);
        for args in [vec!["run", "--config", &path], vec!["check-config", &path]] {
            let out = rowlog(&args);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(
                out.status.code(),
                Some(2),
                "{args:?} with {body:?}: {stderr}"
            );
            assert!(
                stderr.contains(key),
                "message does not name {key:?}: {stderr}"
            );
        }
    }
    let path = config_file(dir.path(), VALID);
    let out = rowlog(&["check-config", &path]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn every_command_exits_2_on_an_invalid_config_or_argument() {
    let dir = tempfile::tempdir().unwrap();
    let bad = config_file(dir.path(), &VALID.replace("[sink]", "[sink]\nworkers = 0"));
    let commands: [&[&str]; 10] = [
        &["log", "partitions", "--config"],
        &["log", "tail", "--partition", "0", "--config"],
        &["log", "verify", "--config"],
        &["offsets", "show", "--config"],
        &["offsets", "set", "--to-earliest", "--config"],
        &["replay", "--from-offset", "0:0", "--config"],
        &["source", "reset", "--to", "binlog.000001:4", "--config"],
        &["snapshot", "--config"],
        &["verify", "--config"],
        &["run", "--config"],
    ];
    for command in commands {
        let args = [command, &[bad.as_str()]].concat();
        let out = rowlog(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains("sink.workers"), "{args:?}: {stderr}");
    }
    // A valid config (its servers are never reached): the argument is what is wrong.
    let good = config_file(dir.path(), VALID);
    let misuses: [(&[&str], &str); 6] = [
        (&["replay", "--from-offset", "three"], "--from-offset three"),
        (
            &["replay", "--from-time", "yesterday"],
            "--from-time yesterday",
        ),
        (
            &["replay", "--from-offset", "0:5", "--to-time", "soon"],
            "--to-time soon",
        ),
        (&["offsets", "set", "--to-time", "later"], "--to-time later"),
        (&["source", "reset", "--to", "binlog:12"], "--to binlog:12"),
        (
            &["log", "tail", "--partition", "0", "--from-time", "noon"],
            "--from-time noon",
        ),
    ];
    for (command, named) in misuses {
        let args = [command, &["--config", good.as_str()]].concat();
        let out = rowlog(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains(named),
            "{args:?} does not name {named:?}: {stderr}"
        );
    }
}

#[test]
fn a_missing_config_file_exits_2() {
    let out = rowlog(&["run", "--config", "/nonexistent/rowlog.toml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/rowlog.toml"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_writing_statement_binlogs_is_refused_with_the_fix() {
    let mut opts = ServerOptions::source(11);
    opts.extra_args.push("--binlog-format=STATEMENT".into());
    let (src, dst) = tokio::join!(
        MariaDb::start(opts),
        MariaDb::start(ServerOptions::destination(12))
    );
    let (src, dst) = (src.unwrap(), dst.unwrap());
    let dir = tempfile::tempdir().unwrap();
    let body = format!(
        "[source]\nurl = \"{}\"\n[log]\ndir = \"{}\"\n[sink]\nurl = \"{}\"\n",
        src.url(),
        dir.path().join("log").display(),
        dst.url()
    );
    let path = config_file(dir.path(), &body);
    let out = rowlog(&["run", "--config", &path]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("binlog_format=STATEMENT")
            && stderr.contains("SET GLOBAL binlog_format=ROW"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_destination_fails_at_start_naming_it() {
    let src = MariaDb::start(ServerOptions::source(13)).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let body = format!(
        "[source]\nurl = \"{}\"\n[log]\ndir = \"{}\"\n[sink]\nurl = \"mysql://root@127.0.0.1:{port}/\"\n",
        src.url(),
        dir.path().join("log").display()
    );
    let path = config_file(dir.path(), &body);
    let out = rowlog(&["run", "--config", &path]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("127.0.0.1:{port}")) && stderr.contains("destination"),
        "{stderr}"
    );
}

/// The README's quick start: `rowlog demo` starts its own servers, replicates its
/// workload and reports both tables equal (a smaller workload than the default).
#[test]
fn the_quick_start_demo_replicates_its_workload_and_reports_equal_tables() {
    let out = rowlog(&["demo", "--changes", "3000"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed:\n{stdout}\n{stderr}");
    assert!(
        stdout.contains("every row equal") && stdout.contains("demo done"),
        "{stdout}"
    );
    // "read N changes, appended N …, applied N": the workload's every change went through.
    let read: u64 = stdout
        .split("read ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no change count in:\n{stdout}"));
    assert!(read >= 3000, "the pipeline read {read} changes:\n{stdout}");
}
