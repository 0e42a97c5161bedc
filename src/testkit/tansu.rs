//! A real Kafka-protocol broker for tests: a private `tansu` process (Apache-Kafka
//! compatible, from crates.io) on a free loopback port, storing in SQLite in its own
//! directory, so it can be stopped and started again with what it held.
//!
//! `tansu` is found as `$TANSU_BIN`, on `PATH`, or in `~/.cargo/bin`; `.ci/run`
//! installs it there when it is missing. Its `memory://` engine loses messages on
//! resume and it has no transactions, so neither is used.

use std::io;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::port::{lease_port, PortLease};
use super::proxy::Proxy;

pub struct Tansu {
    pub port: u16,
    /// The port clients are told to use instead of `port` (a proxy's), if any.
    advertised: Option<u16>,
    dir: PathBuf,
    child: Option<Child>,
    /// Holds `port` while the broker lives, stopped or not, so a restart finds it free.
    port_lease: Option<PortLease>,
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// Where the `tansu` binary is, if anywhere.
pub fn tansu_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("TANSU_BIN") {
        return Some(PathBuf::from(p));
    }
    let on_path = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .unwrap_or_default();
    let home = std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo/bin"));
    on_path
        .into_iter()
        .chain(home)
        .map(|d| d.join("tansu"))
        .find(|p| p.is_file())
}

impl Tansu {
    /// Starts a broker and waits until it accepts connections.
    pub fn start() -> io::Result<Tansu> {
        let mut broker = Self::unstarted()?;
        // A leased port is still free for a process outside the tests: then tansu
        // exits, and another port is tried.
        let mut last = None;
        for _ in 0..3 {
            broker.take_port()?;
            match broker.launch() {
                Ok(()) => return Ok(broker),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| io::Error::other("tansu did not start")))
    }

    /// Starts a broker that clients reach only through a [`Proxy`]: it advertises the
    /// proxy's port, so the connections librdkafka opens after bootstrapping go
    /// through the proxy too, and the test can fault them.
    pub async fn start_behind_proxy() -> io::Result<(Tansu, Proxy)> {
        let mut broker = Self::unstarted()?;
        let mut last = None;
        for _ in 0..3 {
            broker.take_port()?;
            let proxy = Proxy::start(broker.port).await?;
            broker.advertised = Some(proxy.port);
            match broker.launch() {
                Ok(()) => return Ok((broker, proxy)),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| io::Error::other("tansu did not start")))
    }

    fn unstarted() -> io::Result<Tansu> {
        let dir = std::env::temp_dir().join(format!(
            "rowlog-tansu-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        Ok(Tansu {
            port: 0,
            advertised: None,
            dir,
            child: None,
            port_lease: None,
        })
    }

    fn take_port(&mut self) -> io::Result<()> {
        let lease = lease_port()?;
        self.port = lease.port;
        self.port_lease = Some(lease);
        Ok(())
    }

    /// `host:port` for `kafka.brokers`: the proxy's when the broker is behind one.
    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.advertised.unwrap_or(self.port))
    }

    /// `[kafka]` settings for this broker: one broker, so replication factor 1.
    pub fn settings(&self) -> crate::log::KafkaSettings {
        crate::log::KafkaSettings {
            brokers: self.brokers(),
            topic: None,
            replication_factor: 1,
            request_timeout_ms: 30_000,
            properties: Default::default(),
        }
    }

    fn launch(&mut self) -> io::Result<()> {
        let bin = tansu_binary().ok_or_else(|| {
            io::Error::other(
                "the tansu broker is not installed: run `cargo install tansu --version 0.6.0 --locked --features libsql` (or `bash .ci/run`, which does), or set TANSU_BIN",
            )
        })?;
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let advertised = format!("tcp://127.0.0.1:{}", self.advertised.unwrap_or(self.port));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("tansu.log"))?;
        let child = Command::new(&bin)
            .arg("broker")
            .arg("--listener-url")
            .arg(&url)
            .arg("--advertised-listener-url")
            .arg(&advertised)
            // A relative path, from the broker's own directory: tansu reads the path of
            // `sqlite:///abs/path` without its leading slash.
            .current_dir(&self.dir)
            .arg("--storage-engine")
            .arg("sqlite://tansu.db")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .spawn()
            .map_err(|e| io::Error::other(format!("cannot start {}: {e}", bin.display())))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let listening = TcpStream::connect(("127.0.0.1", self.port)).is_ok();
            if listening {
                // Someone listens; make sure it is this tansu, not a process that
                // took the port first (tansu then exits at once).
                std::thread::sleep(Duration::from_millis(200));
            }
            let exited = self.child.as_mut().map(Child::try_wait);
            if listening && matches!(exited, Some(Ok(None))) {
                return Ok(());
            }
            if let Some(Ok(Some(status))) = exited {
                self.child = None;
                return Err(io::Error::other(format!(
                    "tansu exited with {status} before listening: {}",
                    self.log()
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.stop();
        Err(io::Error::other(format!(
            "tansu did not listen on port {} within 30 s: {}",
            self.port,
            self.log()
        )))
    }

    /// What the broker printed.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("tansu.log")).unwrap_or_default()
    }

    /// Stops the broker (SIGKILL: a broker crash; SQLite keeps what it committed).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts a stopped broker again on the same port and storage.
    pub fn restart(&mut self) -> io::Result<()> {
        self.stop();
        self.launch()
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        self.stop();
        if std::env::var_os("ROWLOG_KEEP_SERVERS").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
