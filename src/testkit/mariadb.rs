//! A private MariaDB server: `mariadb-install-db` into a fresh directory, then
//! `mariadbd` on a free loopback port. Stopped and removed on drop.

use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts};

use super::port::{lease_port, PortLease};

#[derive(Clone, Debug)]
pub struct ServerOptions {
    pub server_id: u32,
    /// Write a ROW binlog with full images and full metadata (a replication source).
    pub binlog: bool,
    /// Extra `mariadbd` arguments.
    pub extra_args: Vec<String>,
}

impl ServerOptions {
    pub fn source(server_id: u32) -> Self {
        Self {
            server_id,
            binlog: true,
            extra_args: Vec::new(),
        }
    }
    pub fn destination(server_id: u32) -> Self {
        Self {
            server_id,
            binlog: false,
            extra_args: Vec::new(),
        }
    }
}

pub struct MariaDb {
    pub port: u16,
    dir: PathBuf,
    opts: ServerOptions,
    child: Option<Child>,
    /// Holds `port` for this server while it lives, stopped or not.
    port_lease: Option<PortLease>,
}

static SEQ: AtomicU32 = AtomicU32::new(0);

fn find(binary: &str) -> PathBuf {
    for dir in ["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"] {
        let p = Path::new(dir).join(binary);
        if p.exists() {
            return p;
        }
    }
    PathBuf::from(binary)
}

fn is_root() -> bool {
    std::env::var("USER").map(|u| u == "root").unwrap_or(false)
        || Command::new("id")
            .arg("-u")
            .output()
            .map(|o| o.stdout.starts_with(b"0"))
            .unwrap_or(false)
}

impl MariaDb {
    /// Initialises and starts a server; waits until it accepts connections.
    pub async fn start(opts: ServerOptions) -> io::Result<Self> {
        let dir = std::env::temp_dir().join(format!(
            "rowlog-mariadb-{}-{}-{}",
            std::process::id(),
            opts.server_id,
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("data"))?;
        // A private tmpdir: bootstraps running in parallel otherwise trip over each
        // other's temporary tables in /tmp.
        std::fs::create_dir_all(dir.join("tmp"))?;
        let mut install = Command::new(find("mariadb-install-db"));
        install
            .arg("--no-defaults")
            .arg(format!("--datadir={}", dir.join("data").display()))
            .arg(format!("--tmpdir={}", dir.join("tmp").display()))
            .arg("--auth-root-authentication-method=normal")
            .arg("--skip-test-db")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if is_root() {
            install.arg("--user=root");
        }
        let out = install.output()?;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "mariadb-install-db failed (is mariadb-server installed?): {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        let mut server = Self {
            port: 0,
            dir,
            opts,
            child: None,
            port_lease: None,
        };
        server.launch().await?;
        Ok(server)
    }

    async fn launch(&mut self) -> io::Result<()> {
        let mut last_err = None;
        for _ in 0..3 {
            let port = if self.port == 0 {
                let lease = lease_port()?;
                let port = lease.port;
                self.port_lease = Some(lease);
                port
            } else {
                self.port
            };
            let d = &self.dir;
            let mut cmd = Command::new(find("mariadbd"));
            cmd.arg("--no-defaults")
                .arg(format!("--datadir={}", d.join("data").display()))
                .arg(format!("--tmpdir={}", d.join("tmp").display()))
                .arg(format!("--port={port}"))
                .arg("--bind-address=127.0.0.1")
                .arg(format!("--socket={}", d.join("mysqld.sock").display()))
                .arg(format!("--pid-file={}", d.join("mysqld.pid").display()))
                .arg(format!("--log-error={}", d.join("error.log").display()))
                .arg(format!("--server-id={}", self.opts.server_id))
                .arg("--character-set-server=utf8mb4")
                .arg("--collation-server=utf8mb4_general_ci")
                .arg("--max-connections=1000")
                .arg("--innodb-buffer-pool-size=128M")
                .arg("--skip-log-bin")
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            if self.opts.binlog {
                cmd.arg(format!("--log-bin={}", d.join("binlog").display()))
                    .arg("--binlog-format=ROW")
                    .arg("--binlog-row-image=FULL")
                    .arg("--binlog-row-metadata=FULL");
            }
            if is_root() {
                cmd.arg("--user=root");
            }
            cmd.args(&self.opts.extra_args);
            let mut child = cmd.spawn()?;
            self.port = port;
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                if let Some(status) = child.try_wait()? {
                    last_err = Some(io::Error::other(format!(
                        "mariadbd exited with {status}: {}",
                        self.error_log_tail()
                    )));
                    break;
                }
                if let Ok(mut c) = Conn::new(self.opts()).await {
                    let _ = c.query_drop("DO 1").await;
                    let _ = c.disconnect().await;
                    self.child = Some(child);
                    return Ok(());
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(io::Error::other(format!(
                        "mariadbd did not start in 60 s: {}",
                        self.error_log_tail()
                    )));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            // The port may have been taken between probing and binding: try another.
            self.port = 0;
        }
        Err(last_err.unwrap_or_else(|| io::Error::other("mariadbd failed to start")))
    }

    fn error_log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default();
        log.lines()
            .rev()
            .take(15)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The server's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn url(&self) -> String {
        format!("mysql://root@127.0.0.1:{}/", self.port)
    }

    pub fn opts(&self) -> Opts {
        Opts::from_url(&self.url()).expect("a loopback URL is valid")
    }

    pub async fn conn(&self) -> mysql_async::Result<Conn> {
        Conn::new(self.opts()).await
    }

    /// Runs statements on a fresh connection.
    pub async fn exec(&self, statements: &[&str]) -> mysql_async::Result<()> {
        let mut c = self.conn().await?;
        for s in statements {
            c.query_drop(*s).await?;
        }
        c.disconnect().await
    }

    /// Purges every binlog before the current one and returns the current one's name.
    /// The server keeps a binlog a dump thread still reads, and a replica's thread may
    /// outlive its client by a moment: purges until the old logs are gone (30 s at most).
    pub async fn purge_binlogs(&self) -> Result<String, String> {
        let mut c = self.conn().await.map_err(|e| e.to_string())?;
        let status: Option<mysql_async::Row> = c
            .query_first("SHOW MASTER STATUS")
            .await
            .map_err(|e| e.to_string())?;
        let current: String = status
            .and_then(|r| r.get(0))
            .ok_or("SHOW MASTER STATUS is empty: no binlog")?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            c.query_drop(format!("PURGE BINARY LOGS TO '{current}'"))
                .await
                .map_err(|e| e.to_string())?;
            let logs: Vec<(String, u64)> = c
                .query("SHOW BINARY LOGS")
                .await
                .map_err(|e| e.to_string())?;
            if logs.first().map(|(f, _)| f.as_str()) == Some(current.as_str()) {
                return Ok(current);
            }
            if Instant::now() >= deadline {
                return Err(format!("binlogs not purged after 30 s: {logs:?}"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops the server cleanly (SIGTERM) and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(60);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts a stopped server again on the same port and data.
    pub async fn restart(&mut self) -> io::Result<()> {
        self.stop();
        self.launch().await
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::env::var_os("ROWLOG_KEEP_SERVERS").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
