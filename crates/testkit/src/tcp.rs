//! TCP backends on 127.0.0.1 ephemeral ports. Each stops (listener closed, connections
//! shut down, threads joined) when its handle is dropped.

use std::io::{self, Read};
use std::net::{Shutdown, SocketAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use crate::checksum::{Checksum, Pattern, BACKEND_SEED};
use crate::client::wait_until;
use crate::server::{
    bind_exact, bind_loopback, classify, Conn, ConnEnd, ConnRecord, Records, TcpServer,
};

const BUF: usize = 64 * 1024;

/// Accessors every TCP backend has, forwarded to its [`TcpServer`].
macro_rules! tcp_backend_common {
    ($t:ty) => {
        impl $t {
            /// The backend's listening address (127.0.0.1, ephemeral port).
            pub fn addr(&self) -> SocketAddr {
                self.server.addr()
            }
            /// Connections accepted so far (ringlb's, and the prober's if health checks
            /// are configured).
            pub fn accepted(&self) -> usize {
                self.server.accepted()
            }
            /// How each finished connection ended, in order of acceptance.
            pub fn ends(&self) -> Vec<ConnEnd> {
                self.server.ends()
            }
            /// Every accepted connection with byte counts; `end` is `None` while open.
            pub fn conns(&self) -> Vec<ConnRecord> {
                self.server.records()
            }
            /// Connections currently open.
            pub fn open(&self) -> usize {
                self.server.open()
            }
            /// Waits until at least `n` connections were accepted.
            pub fn wait_accepted(&self, n: usize, timeout: Duration) -> bool {
                wait_until(timeout, || self.accepted() >= n)
            }
            /// Waits until at least `n` connections have ended.
            pub fn wait_ends(&self, n: usize, timeout: Duration) -> bool {
                wait_until(timeout, || self.ends().len() >= n)
            }
        }
    };
}

pub(crate) use tcp_backend_common;

/// Echoes every byte back. After the peer's FIN it shuts down its own write side, so a
/// client half-close comes back as EOF once the echo is flushed.
pub struct EchoBackend {
    server: TcpServer,
    tag: Option<String>,
}

impl EchoBackend {
    /// A plain echo backend.
    pub fn start() -> EchoBackend {
        Self::build_on(bind_loopback("echo"), None)
    }

    /// On each new connection first writes `TAG\n`, then echoes. Tests read the tag with
    /// [`crate::read_line_tag`] to see which backend a connection reached.
    pub fn tagged(tag: &str) -> EchoBackend {
        Self::tagged_on(bind_loopback("echo"), tag)
    }

    /// [`EchoBackend::tagged`] listening on exactly `addr`, e.g. a backend restarted on
    /// the port of one the test dropped (retried for up to 5 s while the old listener is
    /// still closing).
    pub fn tagged_at(addr: SocketAddr, tag: &str) -> EchoBackend {
        Self::tagged_on(bind_exact(addr), tag)
    }

    /// [`EchoBackend::tagged`] on a listener the test created (say, inside a network
    /// namespace).
    pub fn tagged_on(listener: TcpListener, tag: &str) -> EchoBackend {
        assert!(
            !tag.contains('\n'),
            "testkit: a tag must not contain a newline: {tag:?}"
        );
        Self::build_on(listener, Some(tag.to_string()))
    }

    fn build_on(listener: TcpListener, tag: Option<String>) -> EchoBackend {
        let greeting = tag.as_ref().map(|t| format!("{t}\n").into_bytes());
        let server = TcpServer::start_on(
            "echo",
            listener,
            Arc::new(move |c: &mut Conn| {
                if let Some(g) = &greeting {
                    if let Err(e) = c.write_all(g) {
                        return classify(&e);
                    }
                }
                echo_loop(c)
            }),
        );
        EchoBackend { server, tag }
    }

    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// Connections that carried client bytes. Health checks connect and close without
    /// sending any, so this counts the balancer's client connections only.
    pub fn client_conns(&self) -> usize {
        self.conns().iter().filter(|c| c.bytes_in > 0).count()
    }

    /// Whether the listening socket is open (see [`EchoBackend::close_listener`]).
    pub fn listening(&self) -> bool {
        self.server.listening()
    }

    /// Stops accepting and closes the listening socket: once this returns new connects
    /// are refused. Established connections keep echoing; records are kept.
    pub fn close_listener(&mut self) {
        self.server.close_listener();
    }

    /// Listens again on the same address after [`EchoBackend::close_listener`]; new
    /// connections are recorded after the earlier ones.
    pub fn reopen(&mut self) {
        self.server.reopen();
    }
}
tcp_backend_common!(EchoBackend);

/// A tagged echo backend that waits before each answer: a backend whose process is slow
/// while its kernel completes handshakes at once. The delay can change while it runs.
pub struct DelayedEchoBackend {
    server: TcpServer,
    delay_us: Arc<AtomicU64>,
}

impl DelayedEchoBackend {
    /// Writes `TAG\n` on each new connection, then echoes each read `delay` after it.
    pub fn tagged(tag: &str, delay: Duration) -> DelayedEchoBackend {
        let delay_us = Arc::new(AtomicU64::new(delay.as_micros() as u64));
        let greeting = format!("{tag}\n").into_bytes();
        let d = Arc::clone(&delay_us);
        let server = TcpServer::start(
            "delayed echo",
            Arc::new(move |c: &mut Conn| {
                if let Err(e) = c.write_all(&greeting) {
                    return classify(&e);
                }
                echo_loop_after(c, || {
                    thread::sleep(Duration::from_micros(d.load(Ordering::Relaxed)));
                })
            }),
        );
        DelayedEchoBackend { server, delay_us }
    }

    /// Answers from now on after `delay`.
    pub fn set_delay(&self, delay: Duration) {
        self.delay_us
            .store(delay.as_micros() as u64, Ordering::Relaxed);
    }
}
tcp_backend_common!(DelayedEchoBackend);

/// Echoes until EOF (then shuts down its write side) or an error.
pub(crate) fn echo_loop(c: &mut Conn) -> ConnEnd {
    echo_loop_after(c, || {})
}

/// [`echo_loop`], calling `before_answer` before each echo (a slow backend sleeps there).
fn echo_loop_after(c: &mut Conn, before_answer: impl Fn()) -> ConnEnd {
    let mut buf = vec![0u8; BUF];
    loop {
        match c.read(&mut buf) {
            Ok(0) => {
                let _ = c.stream.shutdown(Shutdown::Write);
                return c.eof();
            }
            Ok(n) => {
                before_answer();
                if let Err(e) = c.write_all(&buf[..n]) {
                    return classify(&e);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return classify(&e),
        }
    }
}

/// What a [`SinkSourceBackend`] saw on one connection that sent its 8-byte header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SinkRecord {
    /// Bytes the client asked to receive (the header).
    pub requested: u64,
    /// Bytes actually written back (== `requested` unless the connection broke).
    pub sent: u64,
    /// Bytes received after the header, up to EOF.
    pub received: u64,
    /// [`crate::Checksum`] of the bytes received after the header.
    pub checksum: u64,
    /// How the receiving half ended (a write failure overrides a clean EOF).
    pub end: ConnEnd,
}

/// Bulk-transfer backend. Protocol: the client's first 8 bytes are a big-endian `u64`
/// N; the backend then, concurrently, writes N bytes of the [`BACKEND_SEED`] pattern
/// followed by shutdown(SHUT_WR), and reads the client's stream to EOF computing a
/// [`Checksum`]. One [`SinkRecord`] per connection that sent a full header.
/// Client side: [`crate::sink_source_exchange`].
pub struct SinkSourceBackend {
    server: TcpServer,
    records: Records<SinkRecord>,
}

impl SinkSourceBackend {
    pub fn start() -> SinkSourceBackend {
        let (server, records) = TcpServer::start_recording("sinksource", move |c, recs| {
            let mut hdr = [0u8; 8];
            if let Err(end) = c.read_exact(&mut hdr) {
                return end;
            }
            let requested = u64::from_be_bytes(hdr);
            let mut wc = match c.try_clone() {
                Ok(w) => w,
                Err(e) => return classify(&e),
            };
            let writer = thread::spawn(move || -> (u64, Option<ConnEnd>) {
                let mut p = Pattern::new(BACKEND_SEED);
                let mut buf = vec![0u8; BUF];
                let mut sent = 0u64;
                while sent < requested {
                    let n = (requested - sent).min(BUF as u64) as usize;
                    p.fill(&mut buf[..n]);
                    if let Err(e) = wc.write_all(&buf[..n]) {
                        return (sent, Some(classify(&e)));
                    }
                    sent += n as u64;
                }
                let _ = wc.stream.shutdown(Shutdown::Write);
                (sent, None)
            });
            let mut sum = Checksum::new();
            let mut buf = vec![0u8; BUF];
            let read_end = loop {
                match c.read(&mut buf) {
                    Ok(0) => break c.eof(),
                    Ok(n) => sum.update(&buf[..n]),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => break classify(&e),
                }
            };
            if read_end != ConnEnd::Eof {
                // Unblock the writer if the reading half broke.
                let _ = c.stream.shutdown(Shutdown::Both);
            }
            let (sent, write_err) = writer.join().unwrap_or((0, Some(ConnEnd::Closed)));
            let end = match (read_end, write_err) {
                (ConnEnd::Eof, Some(w)) => w,
                (r, _) => r,
            };
            recs.push(SinkRecord {
                requested,
                sent,
                received: sum.len(),
                checksum: sum.value(),
                end,
            });
            end
        });
        SinkSourceBackend { server, records }
    }

    /// Records of finished connections that sent a header, in order of completion.
    pub fn records(&self) -> Vec<SinkRecord> {
        self.records.all()
    }

    /// Waits until at least `n` records exist.
    pub fn wait_records(&self, n: usize, timeout: Duration) -> bool {
        self.records.wait(n, timeout)
    }
}
tcp_backend_common!(SinkSourceBackend);

/// What a [`HalfCloseBackend`] read on one finished connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HalfCloseRecord {
    pub received: Vec<u8>,
    pub end: ConnEnd,
}

/// Half-close backends, one per direction.
pub struct HalfCloseBackend {
    server: TcpServer,
    records: Records<HalfCloseRecord>,
}

impl HalfCloseBackend {
    /// Reads until EOF, then writes back everything it read and closes. A reply proves
    /// the client's shutdown(SHUT_WR) reached the backend as EOF while the
    /// backend→client direction still flows.
    pub fn echo_after_eof() -> HalfCloseBackend {
        Self::build("halfclose-echo", None)
    }

    /// Writes `payload`, shuts down its write side, then keeps reading until EOF. The
    /// client sees `payload` then EOF, and can still send: the record's `received`
    /// proves client→backend flowed after the backend's half-close.
    pub fn send_then_shutdown(payload: &[u8]) -> HalfCloseBackend {
        Self::build("halfclose-send", Some(payload.to_vec()))
    }

    fn build(what: &str, payload: Option<Vec<u8>>) -> HalfCloseBackend {
        let (server, records) = TcpServer::start_recording(what, move |c, recs| {
            if let Some(p) = &payload {
                if let Err(e) = c.write_all(p) {
                    return classify(&e);
                }
                if let Err(e) = c.stream.shutdown(Shutdown::Write) {
                    return classify(&e);
                }
            }
            let mut received = Vec::new();
            let mut buf = vec![0u8; BUF];
            let mut end = loop {
                match c.read(&mut buf) {
                    Ok(0) => break c.eof(),
                    Ok(n) => received.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => break classify(&e),
                }
            };
            if payload.is_none() && end == ConnEnd::Eof {
                if let Err(e) = c.write_all(&received) {
                    end = classify(&e);
                }
            }
            recs.push(HalfCloseRecord { received, end });
            end
        });
        HalfCloseBackend { server, records }
    }

    /// Records of finished connections, in order of completion.
    pub fn records(&self) -> Vec<HalfCloseRecord> {
        self.records.all()
    }

    pub fn wait_records(&self, n: usize, timeout: Duration) -> bool {
        self.records.wait(n, timeout)
    }
}
tcp_backend_common!(HalfCloseBackend);

/// Accepts, optionally reads or writes a little, then closes with SO_LINGER 0 so the
/// peer receives a RST instead of a FIN.
pub struct ResetBackend {
    server: TcpServer,
}

impl ResetBackend {
    /// Resets every connection right after accept.
    pub fn start() -> ResetBackend {
        Self::build(0, Vec::new())
    }

    /// Reads `n` bytes (or until EOF), then resets.
    pub fn after_read(n: usize) -> ResetBackend {
        Self::build(n, Vec::new())
    }

    /// Writes `payload`, waits (up to 2 s) until the peer has acknowledged it, then
    /// resets: the peer holds the data and then sees the RST.
    pub fn after_write(payload: &[u8]) -> ResetBackend {
        Self::build(0, payload.to_vec())
    }

    fn build(read_first: usize, payload: Vec<u8>) -> ResetBackend {
        let server = TcpServer::start(
            "reset",
            Arc::new(move |c: &mut Conn| {
                let mut left = read_first;
                let mut buf = vec![0u8; 4096];
                while left > 0 {
                    let n = buf.len().min(left);
                    match c.read(&mut buf[..n]) {
                        Ok(0) => break,
                        Ok(n) => left -= n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return classify(&e),
                    }
                }
                if !payload.is_empty() {
                    if let Err(e) = c.write_all(&payload) {
                        return classify(&e);
                    }
                    // Linger 0 discards unacknowledged data, so wait for the ACKs.
                    wait_until(Duration::from_secs(2), || unacked(&c.stream) == 0);
                }
                // The RST goes out when the last fd of the socket closes, which the
                // server does right after the handler returns (no shutdown: that would
                // send a FIN first).
                set_linger_zero(&c.stream);
                ConnEnd::Closed
            }),
        );
        ResetBackend { server }
    }
}
tcp_backend_common!(ResetBackend);

/// Bytes in the socket's send queue not yet acknowledged by the peer (SIOCOUTQ).
fn unacked(s: &std::net::TcpStream) -> i32 {
    let mut n: libc::c_int = 0;
    // SAFETY: TIOCOUTQ (== SIOCOUTQ) writes one c_int through the pointer.
    let r = unsafe { libc::ioctl(s.as_raw_fd(), libc::TIOCOUTQ, &mut n) };
    if r < 0 {
        0
    } else {
        n
    }
}

pub(crate) fn set_linger_zero(s: &std::net::TcpStream) {
    socket2::SockRef::from(s)
        .set_linger(Some(Duration::ZERO))
        .unwrap_or_else(|e| panic!("testkit: set SO_LINGER 0: {e}"));
}

/// Accepts and does not read until [`SlowBackend::resume`]: its receive buffers fill
/// and the sender (ringlb) must apply backpressure.
pub struct SlowBackend {
    server: TcpServer,
    resume: Arc<AtomicBool>,
    bytes_read: Arc<AtomicU64>,
}

impl SlowBackend {
    pub fn start() -> SlowBackend {
        Self::build(None)
    }

    /// Like [`SlowBackend::start`], with SO_RCVBUF set on the listener (inherited by
    /// accepted sockets) so the buffers fill after fewer bytes.
    pub fn with_rcvbuf(bytes: usize) -> SlowBackend {
        Self::build(Some(bytes))
    }

    fn build(rcvbuf: Option<usize>) -> SlowBackend {
        let listener = bind_loopback("slow");
        if let Some(b) = rcvbuf {
            socket2::SockRef::from(&listener)
                .set_recv_buffer_size(b)
                .unwrap_or_else(|e| panic!("testkit: slow: SO_RCVBUF {b}: {e}"));
        }
        let resume = Arc::new(AtomicBool::new(false));
        let bytes_read = Arc::new(AtomicU64::new(0));
        let (r, br) = (resume.clone(), bytes_read.clone());
        let server = TcpServer::start_on(
            "slow",
            listener,
            Arc::new(move |c: &mut Conn| {
                while !r.load(Ordering::SeqCst) {
                    if c.shared.stopping() {
                        return ConnEnd::Stopped;
                    }
                    thread::sleep(Duration::from_millis(5));
                }
                let mut buf = vec![0u8; BUF];
                loop {
                    match c.read(&mut buf) {
                        Ok(0) => return c.eof(),
                        Ok(n) => {
                            br.fetch_add(n as u64, Ordering::SeqCst);
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return classify(&e),
                    }
                }
            }),
        );
        SlowBackend {
            server,
            resume,
            bytes_read,
        }
    }

    /// From now on every connection (open or future) reads and discards to EOF.
    pub fn resume(&self) {
        self.resume.store(true, Ordering::SeqCst);
    }

    /// Bytes read since [`SlowBackend::resume`].
    pub fn bytes_read(&self) -> u64 {
        self.bytes_read.load(Ordering::SeqCst)
    }
}
tcp_backend_common!(SlowBackend);

/// A 127.0.0.1 address with nothing listening: connects are refused (RST).
///
/// Binds port 0, notes the port and closes it. Tiny race: another process may bind the
/// same port before the test connects; the kernel hands out ephemeral ports in a
/// rotating way, so reuse within a test's lifetime is unlikely.
pub fn refused_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0")
        .unwrap_or_else(|e| panic!("testkit: refused_addr: bind 127.0.0.1:0: {e}"));
    l.local_addr()
        .unwrap_or_else(|e| panic!("testkit: refused_addr: local_addr: {e}"))
}
