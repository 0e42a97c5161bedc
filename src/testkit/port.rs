//! Loopback ports for the tests' own servers (MariaDB, the Kafka broker, rowlog's ops
//! port), each held by this process for as long as the server it names may use it.
//!
//! Why not `bind(0)`: a port probed that way and released is free for anyone, and it
//! lies in Linux's ephemeral range (32768–60999 by default), where every outgoing
//! connection of every process takes its local port. A server stopped for a while (a
//! destination-down test) could find its port taken by another test's server on its
//! restart, and the pipeline under test then wrote to that other server (seen once in
//! CI, 2026-11-29: the test failed on the other pipeline's lease); a port handed to a
//! server not yet started could be taken by any client's connection meanwhile.

use std::io;
use std::net::TcpListener;
use std::sync::atomic::{AtomicU32, Ordering};

/// Ports are taken from here: below the ephemeral range, so no `bind(0)` and no
/// outgoing connection of any process is handed one.
const PORTS: std::ops::Range<u16> = 20_000..30_000;

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A port held by a lock on a file named after it, in `$TMPDIR/rowlog-test-ports`,
/// until this is dropped (or the process ends). Every test process skips the ports
/// another one holds.
#[derive(Debug)]
pub struct PortLease {
    pub port: u16,
    _lock: std::fs::File,
}

/// Leases a port that nothing listened on when it was taken.
pub fn lease_port() -> io::Result<PortLease> {
    let dir = std::env::temp_dir().join("rowlog-test-ports");
    std::fs::create_dir_all(&dir)?;
    let span = u32::from(PORTS.end - PORTS.start);
    // Processes start at scattered places, so they rarely try the same files.
    let from = std::process::id()
        .wrapping_mul(7919)
        .wrapping_add(SEQ.fetch_add(1, Ordering::Relaxed))
        % span;
    for i in 0..span {
        let port = PORTS.start + ((from + i) % span) as u16;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(port.to_string()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => continue,
            Err(std::fs::TryLockError::Error(e)) => return Err(e),
        }
        // Something outside the tests may listen there.
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(PortLease { port, _lock: file });
        }
    }
    Err(io::Error::other(format!(
        "no free port for a test server in {}..{}",
        PORTS.start, PORTS.end
    )))
}
