//! How errors are rendered for operators: the whole cause chain on one line, so a log
//! line says what failed and why ("destination rejected changes to app.users …:
//! Server error: `ERROR 40001 (1213): Deadlock found …`").

pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let text = c.to_string();
        // Some errors repeat their cause in their own message; say it once.
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        cur = c.source();
    }
    s
}

/// A `/proc/<pid>/status` field in KiB (`VmRSS:`, `VmHWM:`), or 0 where there is no
/// procfs. `pid` is `"self"` or a process id.
pub fn proc_status_kib(pid: &str, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}
