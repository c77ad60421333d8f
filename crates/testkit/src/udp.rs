//! A UDP echo backend on 127.0.0.1. Its thread polls a stop flag between 20 ms receive
//! timeouts and is joined on Drop.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crate::client::wait_until;
use crate::server::lock;

/// Replies to each datagram from the address it came from: with the payload (plain) or
/// with `TAG\n` followed by the payload (tagged; split it with [`crate::split_tag`]).
/// Records the source address of every datagram.
pub struct UdpEchoBackend {
    addr: SocketAddr,
    tag: Option<String>,
    sources: Arc<Mutex<Vec<SocketAddr>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl UdpEchoBackend {
    pub fn start() -> UdpEchoBackend {
        Self::build(None)
    }

    pub fn tagged(tag: &str) -> UdpEchoBackend {
        assert!(
            !tag.contains('\n'),
            "testkit: a tag must not contain a newline: {tag:?}"
        );
        Self::build(Some(tag.to_string()))
    }

    fn build(tag: Option<String>) -> UdpEchoBackend {
        let sock = UdpSocket::bind("127.0.0.1:0")
            .unwrap_or_else(|e| panic!("testkit: udp echo: bind 127.0.0.1:0: {e}"));
        sock.set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap_or_else(|e| panic!("testkit: udp echo: SO_RCVTIMEO: {e}"));
        let addr = sock
            .local_addr()
            .unwrap_or_else(|e| panic!("testkit: udp echo: local_addr: {e}"));
        let sources = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (src, st) = (sources.clone(), stop.clone());
        let prefix = tag.as_ref().map(|t| format!("{t}\n").into_bytes());
        let thread = thread::Builder::new()
            .name(format!("testkit-udp-{}", addr.port()))
            .spawn(move || {
                let mut buf = vec![0u8; 65536];
                let mut reply = Vec::with_capacity(65536 + 64);
                while !st.load(Ordering::SeqCst) {
                    let (n, from) = match sock.recv_from(&mut buf) {
                        Ok(x) => x,
                        Err(e)
                            if matches!(
                                e.kind(),
                                io::ErrorKind::WouldBlock
                                    | io::ErrorKind::TimedOut
                                    | io::ErrorKind::Interrupted
                                    // An ICMP error from an earlier reply.
                                    | io::ErrorKind::ConnectionRefused
                            ) =>
                        {
                            continue
                        }
                        Err(e) => panic!("testkit: udp echo {addr}: recv_from: {e}"),
                    };
                    lock(&src).push(from);
                    reply.clear();
                    if let Some(p) = &prefix {
                        reply.extend_from_slice(p);
                    }
                    reply.extend_from_slice(&buf[..n]);
                    // A lost reply is the test's to notice; do not kill the backend.
                    let _ = sock.send_to(&reply, from);
                }
            })
            .unwrap_or_else(|e| panic!("testkit: udp echo: spawn: {e}"));
        UdpEchoBackend {
            addr,
            tag,
            sources,
            stop,
            thread: Some(thread),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// Datagrams received so far.
    pub fn received(&self) -> usize {
        lock(&self.sources).len()
    }

    /// Source address of every datagram, in arrival order.
    pub fn sources(&self) -> Vec<SocketAddr> {
        lock(&self.sources).clone()
    }

    /// Distinct source addresses, in order of first appearance.
    pub fn distinct_sources(&self) -> Vec<SocketAddr> {
        let mut out: Vec<SocketAddr> = Vec::new();
        for s in lock(&self.sources).iter() {
            if !out.contains(s) {
                out.push(*s);
            }
        }
        out
    }

    pub fn wait_received(&self, n: usize, timeout: Duration) -> bool {
        wait_until(timeout, || self.received() >= n)
    }
}

impl Drop for UdpEchoBackend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
