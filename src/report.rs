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

/// CPU seconds (user + system) from a `/proc/.../stat` file: `"self"` for the whole
/// process (its ended threads included), `"thread-self"` for the calling thread. 0
/// where there is no procfs. The kernel reports them in USER_HZ ticks, which Linux
/// fixes at 100 per second for every architecture's /proc.
pub fn proc_cpu_secs(which: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{which}/stat"))
        .ok()
        .and_then(|s| {
            // Fields after the command name, which is in parentheses and may hold spaces:
            // state is field 3, utime 14 and stime 15.
            let rest = &s[s.rfind(')')? + 1..];
            let f: Vec<&str> = rest.split_whitespace().collect();
            let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
            Some(ticks as f64 / 100.0)
        })
        .unwrap_or(0.0)
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
