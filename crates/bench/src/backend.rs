//! The benchmark's backends: echo (TCP, UDP), respond (N-byte requests, M-byte replies),
//! sink and source. They serve until a shutdown future resolves (SIGTERM/SIGINT in the binary,
//! a channel in tests), then drain: stop accepting, let open connections finish.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

/// First bytes a client may send to ask "which backend are you?". Every TCP backend answers
/// it once, at the start of a connection, with `TAG\n` and then behaves as usual; clients that
/// never send it see a pure echo/respond server, so latency without tags is unaffected.
pub const TAG_QUERY: &[u8] = b"RINGLB-TAG?\n";

/// Byte `i` of every request and reply: a fixed pattern, so an echo of a request and a
/// `respond` reply of the same length are identical and clients can verify both.
pub fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| b'a' + (i % 26) as u8).collect()
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// Answers each read with the data it read.
    Echo,
    /// Reads requests of `request` bytes, answers each with `response` bytes.
    Respond { request: usize, response: usize },
    /// Reads and discards.
    Sink,
    /// Writes `chunk`-byte buffers until the peer goes away.
    Source { chunk: usize },
}

#[derive(Debug, Clone)]
pub struct Backend {
    pub kind: Kind,
    /// Answer to [`TAG_QUERY`]; the listen address when not given.
    pub tag: String,
    /// Wait before each answer (echo, respond): a backend whose process is slow while its
    /// kernel still completes handshakes at once.
    pub delay: Duration,
}

impl Backend {
    async fn answer_delay(&self) {
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
    }
}

const BUF: usize = 64 * 1024;

/// Accept-queue length asked for (the kernel caps it at net.core.somaxconn). Large, because
/// the idle scenario opens thousands of connections faster than one thread accepts them,
/// and a full queue drops SYNs into 1 s retransmits.
pub const BACKLOG: u32 = 4096;

/// A TCP listener with [`BACKLOG`] and SO_REUSEADDR (restarts do not wait out TIME_WAIT).
pub fn tcp_listener(addr: SocketAddr) -> io::Result<TcpListener> {
    let sock = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    sock.set_reuseaddr(true)?;
    sock.bind(addr)?;
    sock.listen(BACKLOG)
}

/// Serves TCP on `listener` until `shutdown` resolves, then stops accepting (after taking
/// what is already in the accept queue, so those clients are served rather than reset) and
/// waits up to `drain` for open connections to end.
pub async fn serve_tcp(
    listener: TcpListener,
    backend: Arc<Backend>,
    shutdown: impl Future<Output = ()>,
    drain: Duration,
) {
    let active = Arc::new(AtomicUsize::new(0));
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            res = listener.accept() => match res {
                Ok((stream, _)) => spawn_conn(stream, &backend, &active),
                // fd exhaustion and the like: back off instead of spinning.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
        }
    }
    // Timeout polls the accept once before looking at the (zero) deadline.
    while let Ok(Ok((stream, _))) = tokio::time::timeout(Duration::ZERO, listener.accept()).await {
        spawn_conn(stream, &backend, &active);
    }
    drop(listener);
    let until = Instant::now() + drain;
    while active.load(Ordering::Acquire) > 0 && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn spawn_conn(stream: TcpStream, backend: &Arc<Backend>, active: &Arc<AtomicUsize>) {
    let _ = stream.set_nodelay(true);
    let backend = Arc::clone(backend);
    let active = Arc::clone(active);
    active.fetch_add(1, Ordering::AcqRel);
    tokio::spawn(async move {
        // A peer that resets is normal under load tests; nothing to report.
        let _ = handle(stream, &backend).await;
        active.fetch_sub(1, Ordering::AcqRel);
    });
}

async fn handle(mut s: TcpStream, b: &Backend) -> io::Result<()> {
    let mut buf = vec![0u8; BUF];
    // Source writes at once; the tag query is not supported there (nothing reads it).
    if let Kind::Source { chunk } = b.kind {
        let data = pattern(chunk.max(1));
        loop {
            s.write_all(&data).await?;
        }
    }
    let mut have = match tag_prelude(&mut s, &mut buf, &b.tag).await? {
        Some(n) => n,
        None => return Ok(()),
    };
    match b.kind {
        Kind::Echo => loop {
            if have > 0 {
                b.answer_delay().await;
                s.write_all(&buf[..have]).await?;
            }
            have = s.read(&mut buf).await?;
            if have == 0 {
                return Ok(());
            }
        },
        Kind::Respond { request, response } => {
            let request = request.max(1);
            // Replies for several pipelined requests go out in one write.
            let reply = pattern(response);
            let mut out = Vec::with_capacity(response);
            let mut pending = 0usize;
            loop {
                pending += have;
                let n = pending / request;
                pending %= request;
                if n > 0 && response > 0 {
                    b.answer_delay().await;
                    out.clear();
                    for _ in 0..n {
                        out.extend_from_slice(&reply);
                    }
                    s.write_all(&out).await?;
                }
                have = s.read(&mut buf).await?;
                if have == 0 {
                    return Ok(());
                }
            }
        }
        Kind::Sink => loop {
            if s.read(&mut buf).await? == 0 {
                return Ok(());
            }
        },
        Kind::Source { .. } => Ok(()),
    }
}

/// Reads the first bytes of a connection. If they are [`TAG_QUERY`], answers the tag and
/// returns the bytes after the query; otherwise returns what was read, untouched.
/// `None`: the peer closed before sending anything.
async fn tag_prelude(s: &mut TcpStream, buf: &mut [u8], tag: &str) -> io::Result<Option<usize>> {
    let mut have = 0;
    loop {
        let n = s.read(&mut buf[have..]).await?;
        if n == 0 {
            return Ok((have > 0).then_some(have));
        }
        have += n;
        let cmp = have.min(TAG_QUERY.len());
        if buf[..cmp] != TAG_QUERY[..cmp] {
            return Ok(Some(have));
        }
        if have >= TAG_QUERY.len() {
            let mut line = Vec::with_capacity(tag.len() + 1);
            line.extend_from_slice(tag.as_bytes());
            line.push(b'\n');
            s.write_all(&line).await?;
            buf.copy_within(TAG_QUERY.len()..have, 0);
            return Ok(Some(have - TAG_QUERY.len()));
        }
    }
}

/// UDP echo: each datagram goes back to its sender.
pub async fn serve_udp(sock: UdpSocket, shutdown: impl Future<Output = ()>) {
    let mut buf = vec![0u8; 65536];
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            res = sock.recv_from(&mut buf) => {
                if let Ok((n, peer)) = res {
                    let _ = sock.send_to(&buf[..n], peer).await;
                }
            }
        }
    }
}

/// A backend running on its own thread, for tests and for embedding: bound on
/// 127.0.0.1:0 (or the given address), stopped and joined on drop.
pub struct Running {
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Running {
    /// Starts a TCP backend of `kind` on `addr` (port 0 for an ephemeral one).
    pub fn tcp(addr: SocketAddr, kind: Kind, tag: Option<&str>) -> io::Result<Running> {
        let rt = runtime()?;
        // Bound here, on the caller's thread, so the address is known and accepting on
        // return; the listener then moves to the backend's thread with its runtime.
        let listener = {
            let _enter = rt.enter();
            tcp_listener(addr)?
        };
        let addr = listener.local_addr()?;
        let backend = Arc::new(Backend {
            kind,
            tag: tag.map_or_else(|| addr.to_string(), str::to_string),
            delay: Duration::ZERO,
        });
        Self::spawn(rt, addr, move |rx| async move {
            let stop = async {
                let _ = rx.await;
            };
            serve_tcp(listener, backend, stop, Duration::from_secs(1)).await
        })
    }

    /// Starts a UDP echo backend on `addr`.
    pub fn udp_echo(addr: SocketAddr) -> io::Result<Running> {
        let rt = runtime()?;
        let sock = {
            let _enter = rt.enter();
            let std_sock = std::net::UdpSocket::bind(addr)?;
            std_sock.set_nonblocking(true)?;
            UdpSocket::from_std(std_sock)?
        };
        let addr = sock.local_addr()?;
        Self::spawn(rt, addr, move |rx| async move {
            serve_udp(sock, async {
                let _ = rx.await;
            })
            .await
        })
    }

    fn spawn<F, Fut>(rt: tokio::runtime::Runtime, addr: SocketAddr, f: F) -> io::Result<Running>
    where
        F: FnOnce(tokio::sync::oneshot::Receiver<()>) -> Fut + Send + 'static,
        Fut: Future<Output = ()>,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let thread = std::thread::Builder::new()
            .name(format!("backend-{addr}"))
            .spawn(move || rt.block_on(f(rx)))?;
        Ok(Running {
            addr,
            stop: Some(tx),
            thread: Some(thread),
        })
    }
}

fn runtime() -> io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    fn connect(addr: SocketAddr) -> std::net::TcpStream {
        let s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s
    }

    #[test]
    fn pattern_is_stable() {
        assert_eq!(pattern(3), b"abc");
        assert_eq!(pattern(28)[26..], *b"ab");
    }

    #[test]
    fn tagged_echo_answers_query_then_echoes() {
        let b = Running::tcp("127.0.0.1:0".parse().unwrap(), Kind::Echo, Some("b1")).unwrap();
        let mut s = connect(b.addr);
        // Query and first data in one write: the data after the query is still echoed.
        s.write_all(b"RINGLB-TAG?\nhello").unwrap();
        let mut got = [0u8; 8];
        s.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"b1\nhello");
    }

    #[test]
    fn echo_without_query_is_pure_even_for_a_prefix_of_it() {
        let b = Running::tcp("127.0.0.1:0".parse().unwrap(), Kind::Echo, Some("b1")).unwrap();
        let mut s = connect(b.addr);
        s.write_all(b"RINGLB-X").unwrap();
        let mut got = [0u8; 8];
        s.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"RINGLB-X");
    }

    #[test]
    fn respond_answers_each_full_request() {
        let kind = Kind::Respond {
            request: 4,
            response: 6,
        };
        let b = Running::tcp("127.0.0.1:0".parse().unwrap(), kind, None).unwrap();
        let mut s = connect(b.addr);
        // 1.5 requests: one reply now, the second after the rest arrives.
        s.write_all(b"xxxxyy").unwrap();
        let mut got = [0u8; 6];
        s.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"abcdef");
        s.write_all(b"yy").unwrap();
        s.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"abcdef");
        // Untagged backends answer the query with their address.
        let mut s = connect(b.addr);
        s.write_all(TAG_QUERY).unwrap();
        let want = format!("{}\n", b.addr);
        let mut got = vec![0u8; want.len()];
        s.read_exact(&mut got).unwrap();
        assert_eq!(got, want.as_bytes());
    }

    #[test]
    fn udp_echo_returns_datagrams() {
        let b = Running::udp_echo("127.0.0.1:0".parse().unwrap()).unwrap();
        let c = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        c.send_to(b"ping", b.addr).unwrap();
        let mut got = [0u8; 16];
        let (n, from) = c.recv_from(&mut got).unwrap();
        assert_eq!(&got[..n], b"ping");
        assert_eq!(from, b.addr);
    }
}
