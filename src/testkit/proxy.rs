//! A TCP proxy for fault tests: rowlog talks to a server through it, and the test cuts
//! the connection (every open connection is closed and new ones are refused), stalls
//! it (connections stay open but no byte moves: all of them, or only those open at the
//! time), holds back the server's replies (the
//! server gets and acts on every request, rowlog hears nothing back), cuts it right
//! after one chosen request reached the server (a COMMIT whose outcome the client
//! cannot know), or slows it (each chunk waits). New connections can be sent to
//! another server (a failover behind one address, as a virtual IP or a router does).
//!
//! Faults are what the network does to rowlog, so they are injected between rowlog
//! and the servers, not inside either.

use std::io;
use std::sync::atomic::{AtomicU16, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{AbortHandle, JoinHandle};

const PASS: u8 = 0;
const CUT: u8 = 1;
const STALL: u8 = 2;
const DEAF: u8 = 3;

#[derive(Default)]
struct Control {
    mode: AtomicU8,
    /// The loopback port new connections go to.
    upstream: AtomicU16,
    /// Connections numbered at or below this stall, whatever the mode: see
    /// [`Proxy::stall_open`]. 0: none.
    stalled_up_to: AtomicU64,
    opened: AtomicU64,
    latency_ms: AtomicU64,
    connections: Mutex<Vec<AbortHandle>>,
    /// Armed by [`Proxy::cut_after_request`]: the bytes of the request to cut after.
    cut_after: Mutex<Option<Vec<u8>>>,
}

impl Control {
    fn connections(&self) -> std::sync::MutexGuard<'_, Vec<AbortHandle>> {
        self.connections.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn cut(&self) {
        self.mode.store(CUT, Ordering::Release);
        for c in self.connections().drain(..) {
            c.abort();
        }
    }

    /// Disarms and returns true when `chunk` holds the armed request.
    fn take_cut_after(&self, chunk: &[u8]) -> bool {
        let mut armed = self.cut_after.lock().unwrap_or_else(|e| e.into_inner());
        let hit = armed
            .as_deref()
            .is_some_and(|p| chunk.windows(p.len()).any(|w| w == p));
        if hit {
            *armed = None;
        }
        hit
    }
}

pub struct Proxy {
    pub port: u16,
    control: Arc<Control>,
    acceptor: JoinHandle<()>,
}

impl Proxy {
    /// Listens on a free loopback port and forwards to `127.0.0.1:upstream`.
    pub async fn start(upstream: u16) -> io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let control = Arc::new(Control::default());
        control.upstream.store(upstream, Ordering::Release);
        let ctl = control.clone();
        let acceptor = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if ctl.mode.load(Ordering::Acquire) == CUT {
                    drop(client);
                    continue;
                }
                let ctl2 = ctl.clone();
                let number = ctl.opened.fetch_add(1, Ordering::AcqRel) + 1;
                let upstream = ctl.upstream.load(Ordering::Acquire);
                let task = tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)).await else {
                        return;
                    };
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    tokio::select! {
                        _ = pump(cr, sw, ctl2.clone(), false, number) => {}
                        _ = pump(sr, cw, ctl2, true, number) => {}
                    }
                });
                let mut conns = ctl.connections();
                conns.retain(|h| !h.is_finished());
                conns.push(task.abort_handle());
            }
        });
        Ok(Self {
            port,
            control,
            acceptor,
        })
    }

    /// Closes every open connection and refuses new ones until [`Proxy::restore`].
    pub fn cut(&self) {
        self.control.cut();
    }

    /// The next request whose bytes contain `request` reaches the server, and then,
    /// before any reply gets back, every connection is cut (new ones are accepted
    /// again right after). Once: the proxy passes everything again afterwards.
    pub fn cut_after_request(&self, request: &[u8]) {
        *self
            .control
            .cut_after
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(request.to_vec());
    }

    /// Whether the request armed by [`Proxy::cut_after_request`] has been seen.
    pub fn cut_after_request_done(&self) -> bool {
        self.control
            .cut_after
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_none()
    }

    /// Keeps connections open but moves no byte until [`Proxy::restore`].
    pub fn stall(&self) {
        self.control.mode.store(STALL, Ordering::Release);
    }

    /// The connections open now stop moving bytes and stay open, as over a network
    /// partition with no reset; new connections work. What a client must notice by
    /// itself: nothing tells it the old ones are gone.
    pub fn stall_open(&self) {
        let opened = self.control.opened.load(Ordering::Acquire);
        self.control.stalled_up_to.store(opened, Ordering::Release);
    }

    /// Forwards requests but holds back the server's replies until [`Proxy::cut`]
    /// drops them or [`Proxy::restore`] lets them through: the server did what was
    /// asked, the client cannot know it.
    pub fn hold_replies(&self) {
        self.control.mode.store(DEAF, Ordering::Release);
    }

    /// New connections go to `127.0.0.1:upstream` from now on; open ones stay where
    /// they are (cut them to move everything).
    pub fn switch_upstream(&self, upstream: u16) {
        self.control.upstream.store(upstream, Ordering::Release);
    }

    pub fn restore(&self) {
        self.control.mode.store(PASS, Ordering::Release);
    }

    /// Delays every chunk forwarded in either direction.
    pub fn set_latency(&self, latency: Duration) {
        self.control
            .latency_ms
            .store(latency.as_millis() as u64, Ordering::Release);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.acceptor.abort();
        for c in self.control.connections().drain(..) {
            c.abort();
        }
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    ctl: Arc<Control>,
    replies: bool,
    number: u64,
) {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        loop {
            let mode = ctl.mode.load(Ordering::Acquire);
            let stalled = number <= ctl.stalled_up_to.load(Ordering::Acquire);
            if mode != STALL && !(replies && mode == DEAF) && !stalled {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let latency = ctl.latency_ms.load(Ordering::Acquire);
        if latency > 0 {
            tokio::time::sleep(Duration::from_millis(latency)).await;
        }
        let cut_after = !replies && ctl.take_cut_after(&buf[..n]);
        if cut_after {
            // Hold the replies first, so none of them slips through before the cut.
            ctl.mode.store(DEAF, Ordering::Release);
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
        if cut_after {
            // From a task of its own: the cut aborts this connection's task.
            let ctl = ctl.clone();
            tokio::spawn(async move {
                // Time for the server to act on the request.
                tokio::time::sleep(Duration::from_millis(500)).await;
                ctl.cut();
                ctl.mode.store(PASS, Ordering::Release);
            });
        }
    }
}
