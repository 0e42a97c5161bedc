//! The shipped Grafana dashboard and Prometheus alert rules, proven against a real
//! Prometheus (Debian's `prometheus` package) scraping a rowlog under load: every
//! operand of every PromQL expression must return data, so a query naming a metric
//! that does not exist fails here instead of showing an empty panel in production.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::http::{config_with_http, free_port, get, poll};
use common::{InProcess, Pair};
use mysql_async::prelude::Queryable;
use tokio::time::Instant;

const TABLE: &str = "CREATE TABLE app.t (id INT PRIMARY KEY, v INT NOT NULL)";

fn find_prometheus() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin")])
        .map(|d| d.join("prometheus"))
        .find(|p| p.is_file())
}

/// Kills the Prometheus this test started when the test ends, however it ends.
struct Prometheus {
    child: Child,
    addr: String,
    log: PathBuf,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    fn start(bin: &Path, dir: &Path, target: &str, rules: &Path) -> Self {
        let addr = format!("127.0.0.1:{}", free_port());
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 rule_files:\n  - {}\n\
                 scrape_configs:\n  - job_name: rowlog\n    static_configs:\n      - targets: [\"{target}\"]\n",
                rules.display()
            ),
        )
        .unwrap();
        let log = dir.join("prometheus.log");
        let child = Command::new(bin)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start prometheus");
        Prometheus { child, addr, log }
    }

    /// The result vector of an instant query, or the API's error.
    async fn query(&self, promql: &str) -> Result<Vec<serde_json::Value>, String> {
        let path = format!("/api/v1/query?query={}", urlencode(promql));
        let (code, body) = get(&self.addr, &path)
            .await
            .ok_or_else(|| "prometheus did not answer".to_string())?;
        let v: serde_json::Value =
            serde_json::from_str(&body).map_err(|e| format!("HTTP {code}: {e}: {body}"))?;
        if v["status"] != "success" {
            return Err(format!("HTTP {code}: {body}"));
        }
        Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
    }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Every `"expr"` string anywhere in a dashboard JSON.
fn dashboard_exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("expr", serde_json::Value::String(s)) => out.push(s.clone()),
                    _ => dashboard_exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|i| dashboard_exprs(i, out)),
        _ => {}
    }
}

/// Every `expr:` of a rules file; the file keeps each on one line (checked here).
fn rule_exprs(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("expr:"))
        .map(|e| {
            let e = e.trim();
            assert!(
                !e.is_empty() && !e.starts_with('|') && !e.starts_with('>'),
                "alert expr must stay on one line: {e:?}"
            );
            e.to_owned()
        })
        .collect()
}

/// Splits an expression at its top-level set and comparison operators (`and`, `or`,
/// `unless`, `>`, `==`, …) into the operands that must each return data. An alert
/// condition `x > 30` is empty while healthy; its operand `x` must not be.
fn operands(expr: &str) -> Vec<String> {
    let b = expr.as_bytes();
    let (mut depth, mut quoted, mut start, mut i) = (0i32, false, 0usize, 0usize);
    let mut out = Vec::new();
    while i < b.len() {
        let c = b[i];
        if quoted {
            if c == b'\\' {
                i += 1;
            } else if c == b'"' {
                quoted = false;
            }
        } else {
            match c {
                b'"' => quoted = true,
                b'(' | b'[' | b'{' => depth += 1,
                b')' | b']' | b'}' => depth -= 1,
                _ if depth == 0 => {
                    let rest = &expr[i..];
                    let op = [
                        " and ", " or ", " unless ", ">=", "<=", "==", "!=", ">", "<",
                    ]
                    .into_iter()
                    .find(|op| rest.starts_with(op));
                    if let Some(op) = op {
                        out.push(expr[start..i].to_owned());
                        i += op.len();
                        start = i;
                        continue;
                    }
                }
                _ => {}
            }
        }
        i += 1;
    }
    out.push(expr[start..].to_owned());
    out.into_iter()
        .map(|s| s.trim().trim_start_matches("bool ").trim().to_owned())
        .filter(|s| !s.is_empty() && s.parse::<f64>().is_err())
        .collect()
}

#[test]
fn operands_split_conditions_but_not_selectors() {
    assert_eq!(
        operands(r#"sum by (i) (a{k=~"x|y"}) > 0 and sum(increase(b[10m])) == 0"#),
        vec![r#"sum by (i) (a{k=~"x|y"})"#, "sum(increase(b[10m]))"]
    );
    assert_eq!(operands("a / b"), vec!["a / b"]);
}

/// Every `uid` the dashboard's panels and queries give their datasource.
fn datasource_uids(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(map) => {
            if let Some(uid) = map
                .get("datasource")
                .and_then(|d| d.get("uid"))
                .and_then(|u| u.as_str())
            {
                out.push(uid.to_owned());
            }
            map.values().for_each(|v| datasource_uids(v, out));
        }
        serde_json::Value::Array(items) => items.iter().for_each(|i| datasource_uids(i, out)),
        _ => {}
    }
}

/// "No clicking": the dashboard names the datasource the provisioning file creates,
/// and the provider loads dashboards from one folder.
#[test]
fn the_dashboard_uses_the_provisioned_datasource() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("grafana");
    let datasource =
        std::fs::read_to_string(root.join("provisioning/datasources/rowlog.yaml")).unwrap();
    let uid = datasource
        .lines()
        .find_map(|l| l.trim().strip_prefix("uid:"))
        .expect("the datasource has a fixed uid")
        .trim();
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("dashboards/rowlog-overview.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(dashboard["uid"], "rowlog-overview");
    let mut uids = Vec::new();
    datasource_uids(&dashboard, &mut uids);
    let panels = dashboard["panels"].as_array().unwrap().len();
    assert!(uids.len() > panels, "panels and queries name a datasource");
    assert!(uids.iter().all(|u| u == uid), "{uids:?} vs {uid}");
    let provider =
        std::fs::read_to_string(root.join("provisioning/dashboards/rowlog.yaml")).unwrap();
    assert!(provider.contains("type: file") && provider.contains("path:"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_and_alert_query_returns_data_from_a_real_prometheus() {
    let Some(bin) = find_prometheus() else {
        // CI installs it (.ci/run); a developer machine without it skips loudly.
        assert!(
            std::env::var_os("CI").is_none(),
            "prometheus is not installed; .ci/run installs the Debian package"
        );
        eprintln!("SKIPPED: no prometheus binary (apt-get install prometheus)");
        return;
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("grafana/dashboards/rowlog-overview.json")).unwrap(),
    )
    .expect("the dashboard is valid JSON");
    let mut exprs = Vec::new();
    dashboard_exprs(&dashboard, &mut exprs);
    assert!(
        exprs.len() >= 20,
        "only {} dashboard queries found",
        exprs.len()
    );
    let rules_path = root.join("grafana/prometheus/rowlog-alerts.yml");
    let rules = rule_exprs(&std::fs::read_to_string(&rules_path).unwrap());
    assert!(rules.len() >= 5, "only {} alert rules found", rules.len());

    let pair = Pair::start().await;
    pair.create(&["CREATE DATABASE app", TABLE]).await;
    let (cfg, addr) = config_with_http(&pair, 2, 4);
    let rowlog = InProcess::start(cfg);
    poll("/healthz", Duration::from_secs(30), || async {
        get(&addr, "/healthz").await
    })
    .await;

    let prom = Prometheus::start(&bin, pair.dir.path(), &addr, &rules_path);
    poll("prometheus ready", Duration::from_secs(60), || async {
        get(&prom.addr, "/-/ready").await.filter(|(c, _)| *c == 200)
    })
    .await;

    // Load while Prometheus scrapes: a batch of writes every 200 ms until stopped.
    let writing = Arc::new(AtomicBool::new(true));
    let writer = {
        let (writing, mut c) = (writing.clone(), pair.src.conn().await.unwrap());
        tokio::spawn(async move {
            let mut next = 1;
            while writing.load(Ordering::Relaxed) {
                c.query_drop(format!(
                    "INSERT INTO app.t SELECT seq, seq FROM app.seq_{next}_to_{}",
                    next + 199
                ))
                .await
                .unwrap();
                c.query_drop(format!(
                    "UPDATE app.t SET v = v + 1 WHERE id BETWEEN {next} AND {}",
                    next + 49
                ))
                .await
                .unwrap();
                next += 200;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    let prom_ref = &prom;
    poll(
        "six successful scrapes of rowlog",
        Duration::from_secs(60),
        || async move {
            let r = prom_ref
                .query(r#"sum_over_time(up{job="rowlog"}[1m])"#)
                .await
                .ok()?;
            let n: f64 = r.first()?["value"][1].as_str()?.parse().ok()?;
            (n >= 6.0).then_some(())
        },
    )
    .await;

    // The check itself must be able to fail: a made-up metric has no data.
    assert!(prom
        .query("rowlog_no_such_metric_total")
        .await
        .unwrap()
        .is_empty());

    let mut failures = Vec::new();
    let mut checked = 0;
    for expr in exprs.iter().chain(&rules) {
        // Grafana's interval variables, as Grafana would expand them for a 1 s scrape.
        let expr = expr
            .replace("$__rate_interval", "1m")
            .replace("$__interval", "5s")
            .replace("$__range", "5m");
        for operand in operands(&expr) {
            checked += 1;
            match prom.query(&operand).await {
                Ok(r) if !r.is_empty() => {}
                Ok(_) => failures.push(format!("no data: {operand}   (from: {expr})")),
                Err(e) => failures.push(format!("error: {operand}: {e}")),
            }
        }
    }
    writing.store(false, Ordering::Relaxed);
    writer.await.unwrap();
    assert!(
        failures.is_empty(),
        "{} of {checked} queries failed:\n{}\nprometheus log:\n{}",
        failures.len(),
        failures.join("\n"),
        std::fs::read_to_string(&prom.log).unwrap_or_default()
    );

    // The rules loaded and evaluate (a rule file Prometheus rejects never gets here).
    let (code, body) = get(&prom.addr, "/api/v1/rules").await.unwrap();
    assert_eq!(code, 200);
    let loaded: serde_json::Value = serde_json::from_str(&body).unwrap();
    let n_rules: usize = loaded["data"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["rules"].as_array().map_or(0, Vec::len))
        .sum();
    assert_eq!(n_rules, rules.len(), "{loaded:#}");

    pair.assert_converges(&[("app.t", "id")], Duration::from_secs(60))
        .await;
    // Stopped while Prometheus still holds a keep-alive connection: the server must
    // not wait for the scraper to hang up.
    let stopping = Instant::now();
    rowlog.stop().await;
    assert!(
        stopping.elapsed() < Duration::from_secs(10),
        "{:?}",
        stopping.elapsed()
    );
    drop(prom);
}
