//! A backend whose connects time out: a loopback listener that never accepts, with its
//! accept queue full, so the kernel drops new SYNs (Linux drops a SYN when
//! `sk_ack_backlog > sk_max_ack_backlog`, whatever `tcp_syncookies` says) and the
//! connecting side keeps retransmitting until its own timeout.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use socket2::{Domain, Socket, Type};

/// How long the constructor waits to be sure a connect does not complete.
pub const BLACKHOLE_VERIFY: Duration = Duration::from_millis(300);

/// See the module docs. No threads; Drop closes the listener and the filler sockets.
pub struct BlackholeBackend {
    addr: SocketAddr,
    _listener: Socket,
    /// Connections sitting in the accept queue (keep it full).
    _fillers: Vec<Socket>,
    /// Connects whose SYNs are being dropped (kept so they do not turn into RSTs).
    _pending: Vec<Socket>,
}

impl BlackholeBackend {
    /// Builds the blackhole and verifies on this kernel that a further connect does not
    /// complete within [`BLACKHOLE_VERIFY`]; panics with the reason otherwise.
    pub fn start() -> BlackholeBackend {
        let listener = Socket::new(Domain::IPV4, Type::STREAM, None)
            .unwrap_or_else(|e| panic!("testkit: blackhole: socket: {e}"));
        let any = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0));
        listener
            .bind(&any.into())
            .unwrap_or_else(|e| panic!("testkit: blackhole: bind 127.0.0.1:0: {e}"));
        listener
            .listen(0)
            .unwrap_or_else(|e| panic!("testkit: blackhole: listen(0): {e}"));
        let addr = listener
            .local_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .unwrap_or_else(|| panic!("testkit: blackhole: listener has no inet address"));

        // Fill the accept queue: connects complete until it is full (one with backlog
        // 0 on Linux); the first one that stalls marks the queue full.
        let mut fillers = Vec::new();
        let mut pending = Vec::new();
        for _ in 0..16 {
            let s = start_connect(addr);
            if wait_connected(&s, Duration::from_millis(100)) {
                fillers.push(s);
            } else {
                pending.push(s);
                break;
            }
        }
        if pending.is_empty() {
            panic!(
                "testkit: blackhole: 16 connects to a listen(0) socket on {addr} all \
                 completed; this kernel does not drop SYNs on a full accept queue"
            );
        }
        let probe = start_connect(addr);
        let t = Instant::now();
        if wait_connected(&probe, BLACKHOLE_VERIFY) {
            panic!(
                "testkit: blackhole: a connect to {addr} completed after {:?} with the \
                 accept queue full ({} fillers); connect-timeout tests cannot rely on it here",
                t.elapsed(),
                fillers.len()
            );
        }
        pending.push(probe);
        BlackholeBackend {
            addr,
            _listener: listener,
            _fillers: fillers,
            _pending: pending,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

fn start_connect(addr: SocketAddr) -> Socket {
    let s = Socket::new(Domain::IPV4, Type::STREAM, None)
        .unwrap_or_else(|e| panic!("testkit: blackhole: socket: {e}"));
    s.set_nonblocking(true)
        .unwrap_or_else(|e| panic!("testkit: blackhole: O_NONBLOCK: {e}"));
    match s.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => panic!("testkit: blackhole: connect {addr}: {e}"),
    }
    s
}

/// True if the nonblocking connect on `s` completed successfully within `timeout`.
fn wait_connected(s: &Socket, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut pfd = libc::pollfd {
            fd: s.as_raw_fd(),
            events: libc::POLLOUT,
            revents: 0,
        };
        let ms = left.as_millis().min(i32::MAX as u128) as libc::c_int;
        // SAFETY: one valid pollfd.
        let r = unsafe { libc::poll(&mut pfd, 1, ms) };
        if r < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
            continue;
        }
        if r <= 0 {
            return false;
        }
        // POLLOUT also reports a failed connect; only no error plus a peer is success.
        return matches!(s.take_error(), Ok(None)) && s.peer_addr().is_ok();
    }
}
