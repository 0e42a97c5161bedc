//! Helpers for tests of the operations port: a free port, a bare HTTP/1.0 GET, polling
//! until a deadline, and a parser for the Prometheus text exposition.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use super::Pair;

/// A port for rowlog's ops server, leased from the tests' range (see
/// `rowlog::testkit::lease_port`) and held until the test process ends: nextest runs
/// each test in a process of its own, and rowlog binds it only after it starts, so a
/// port probed with `bind(0)` could be taken by any connection meanwhile.
pub fn free_port() -> u16 {
    let lease = rowlog::testkit::lease_port().expect("a free loopback port for the ops server");
    let port = lease.port;
    std::mem::forget(lease);
    port
}

/// One HTTP/1.0 GET (the server closes the connection after the response, so the body
/// is simply everything after the headers). `None` when nothing listens yet.
pub async fn get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.ok()?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n")?;
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, body.to_owned()))
}

/// Polls `check` every 100 ms until it returns `Some`, or panics with `what` at the deadline.
pub async fn poll<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One sample of the text exposition: name, labels, value.
pub type Sample = (String, Vec<(String, String)>, f64);

/// Parsed Prometheus text exposition.
pub struct Scrape(pub Vec<Sample>);

impl Scrape {
    pub fn parse(text: &str) -> Self {
        let mut out = Vec::new();
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            let (series, value) = line.rsplit_once(' ').expect("sample line");
            let value: f64 = value.parse().expect("sample value");
            let (name, labels) = match series.split_once('{') {
                None => (series.to_owned(), Vec::new()),
                Some((name, rest)) => {
                    let rest = rest.trim_end_matches('}');
                    let labels = rest
                        .split("\",")
                        .filter(|kv| !kv.is_empty())
                        .map(|kv| {
                            let (k, v) = kv.split_once("=\"").expect("label pair");
                            (k.to_owned(), v.trim_end_matches('"').to_owned())
                        })
                        .collect();
                    (name.to_owned(), labels)
                }
            };
            out.push((name, labels, value));
        }
        Scrape(out)
    }

    /// Sum over the series of `name` having every label in `want`; `None` if there is none.
    pub fn sum(&self, name: &str, want: &[(&str, &str)]) -> Option<f64> {
        let mut found = None;
        for (n, labels, v) in &self.0 {
            if n == name
                && want
                    .iter()
                    .all(|(k, val)| labels.iter().any(|(lk, lv)| lk == k && lv == val))
            {
                *found.get_or_insert(0.0) += v;
            }
        }
        found
    }

    pub fn get(&self, name: &str, want: &[(&str, &str)]) -> f64 {
        self.sum(name, want)
            .unwrap_or_else(|| panic!("no series {name}{want:?} in /metrics"))
    }
}

pub async fn scrape(addr: &str) -> Scrape {
    let (code, body) = get(addr, "/metrics").await.expect("/metrics answers");
    assert_eq!(code, 200, "{body}");
    Scrape::parse(&body)
}

pub fn config_with_http(
    pair: &Pair,
    workers: u32,
    partitions: u32,
) -> (rowlog::config::Config, String) {
    let mut cfg = pair.config(workers, partitions);
    let addr = format!("127.0.0.1:{}", free_port());
    cfg.http.listen = addr.clone();
    (cfg, addr)
}

/// Rows read from the source and applied to the destination, by operation, equal
/// `expected` for `table`.
pub fn assert_rows_by_op(m: &Scrape, table: &str, expected: &[(&str, f64)]) {
    for &(op, n) in expected {
        let labels = [("table", table), ("op", op)];
        assert_eq!(m.get("rowlog_source_rows_total", &labels), n, "{op} read");
        assert_eq!(
            m.get("rowlog_sink_rows_applied_total", &labels),
            n,
            "{op} applied"
        );
    }
}

/// `/status` lists `partitions` partitions, each committed up to its end, holding
/// `records` in all.
pub fn assert_status_caught_up(status: &serde_json::Value, partitions: usize, records: i64) {
    let parts = status["partitions"].as_array().unwrap();
    assert_eq!(parts.len(), partitions, "{status:#}");
    let mut total = 0;
    for p in parts {
        assert_eq!(p["end_offset"], p["committed_offset"], "{p}");
        assert_eq!(p["lag_records"], 0, "{p}");
        total += p["end_offset"].as_i64().unwrap();
    }
    assert_eq!(total, records, "{status:#}");
}
