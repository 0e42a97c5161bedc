//! The short form of `rowlog chaos` (the full run is `rowlog chaos`, see README): a
//! sysbench OLTP write load while rowlog is SIGKILLed ten times, the destination is
//! stopped and started, the source restarted, the network to each server cut, stalled
//! and slowed; then every table must be equal, row by row.

use std::process::Command;

#[test]
fn under_kills_restarts_and_network_faults_no_row_is_lost_or_wrong() {
    if Command::new("sysbench").arg("--version").output().is_err() {
        // CI installs sysbench (.ci/run); a developer machine without it says so.
        assert!(
            std::env::var_os("CI").is_none(),
            "sysbench is missing: apt-get install sysbench"
        );
        eprintln!("skipped: sysbench is not installed");
        return;
    }
    let out = Command::new(env!("CARGO_BIN_EXE_rowlog"))
        .args([
            "chaos",
            "--seconds",
            "45",
            "--kills",
            "10",
            "--destination-down-secs",
            "5",
            "--network-fault-secs",
            "2",
            "--tables",
            "2",
            "--table-size",
            "5000",
            "--seed",
            "20261126",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "chaos failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("rows divergent: 0"), "{stdout}");
    for fault in [
        "SIGKILL of rowlog",
        "destination restart",
        "source restart",
        "network cut to source",
        "network cut to destination",
        "network stall to destination",
        "slow destination",
    ] {
        assert!(
            stdout.contains(fault),
            "{fault} was not injected:\n{stdout}"
        );
    }
    let kills: u32 = stdout
        .lines()
        .find(|l| l.starts_with("SIGKILL of rowlog"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert_eq!(kills, 10, "{stdout}");
    let compared: u64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("rows compared: "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    assert!(compared >= 10_000, "{stdout}");
}
