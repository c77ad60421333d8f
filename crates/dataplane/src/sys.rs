//! Process and socket set-up outside the ring: listener sockets, CPU pinning, fd limits,
//! and the io_uring availability probe.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use thiserror::Error;

use crate::uring::REQUIRED_OPCODES;

/// Backlog for listening sockets; the kernel caps it at net.core.somaxconn.
const LISTEN_BACKLOG: i32 = 4096;

#[derive(Debug, Error)]
pub enum BindError {
    #[error("cannot bind {protocol} {addr}: {source}")]
    Bind {
        protocol: &'static str,
        addr: SocketAddr,
        source: io::Error,
    },
}

fn reuseport_socket(addr: SocketAddr, ty: Type, proto: Protocol) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), ty, Some(proto))?;
    if addr.is_ipv6() {
        // A separate IPv4 listener on the same port must not collide with this one.
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.bind(&SockAddr::from(addr))?;
    Ok(socket)
}

/// Bind `count` SO_REUSEPORT sockets on `addr`, one per worker, so the kernel spreads
/// connections (TCP) or flows (UDP) across workers. Port 0 resolves to one ephemeral port
/// shared by all of them. Returns the sockets and the address actually bound.
pub fn bind_reuseport(
    addr: SocketAddr,
    udp: bool,
    count: usize,
) -> Result<(Vec<Socket>, SocketAddr), BindError> {
    let protocol = if udp { "udp" } else { "tcp" };
    let wrap = |source: io::Error| BindError::Bind {
        protocol,
        addr,
        source,
    };
    let (ty, proto) = if udp {
        (Type::DGRAM, Protocol::UDP)
    } else {
        (Type::STREAM, Protocol::TCP)
    };
    let mut bound = addr;
    let mut sockets = Vec::with_capacity(count);
    for _ in 0..count.max(1) {
        let socket = reuseport_socket(bound, ty, proto).map_err(wrap)?;
        if !udp {
            // Accepted sockets inherit TCP_NODELAY: set once here, not per connection.
            socket.set_nodelay(true).map_err(wrap)?;
            socket.listen(LISTEN_BACKLOG).map_err(wrap)?;
        }
        if bound.port() == 0 {
            bound = socket
                .local_addr()
                .map_err(wrap)?
                .as_socket()
                .ok_or_else(|| wrap(io::Error::other("bound address is not an IP socket")))?;
        }
        sockets.push(socket);
    }
    Ok((sockets, bound))
}

/// CPUs this process may run on, in order (respects taskset/cgroups).
pub fn allowed_cpus() -> Vec<usize> {
    match nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)) {
        Ok(set) => (0..nix::sched::CpuSet::count())
            .filter(|&cpu| set.is_set(cpu).unwrap_or(false))
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Pin the calling thread to `cpu`.
pub fn pin_current_thread(cpu: usize) -> io::Result<()> {
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu).map_err(io::Error::from)?;
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set).map_err(io::Error::from)
}

/// Raise RLIMIT_NOFILE's soft limit to the hard limit; returns the new soft limit.
pub fn raise_fd_limit() -> io::Result<u64> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(io::Error::from)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).map_err(io::Error::from)?;
    }
    Ok(hard.max(soft))
}

/// Why io_uring cannot be used here, with the remedy.
#[derive(Debug, Error)]
pub enum UringUnavailable {
    #[error("io_uring is disabled by sysctl kernel.io_uring_disabled={0}; remedy: `sysctl -w kernel.io_uring_disabled=0` (as root)")]
    DisabledBySysctl(String),
    #[error("io_uring_setup is not permitted ({0}); a seccomp filter (e.g. a container's default profile) or missing privileges block it; remedy: allow io_uring_setup/io_uring_enter/io_uring_register in the seccomp profile")]
    NotPermitted(io::Error),
    #[error("this kernel has no io_uring ({0}); remedy: run on Linux 6.1 or newer built with CONFIG_IO_URING")]
    NoKernelSupport(io::Error),
    #[error("io_uring lacks opcode(s) {0}; remedy: run on Linux 6.1 or newer")]
    MissingOpcodes(String),
    #[error("io_uring set-up failed: {0}")]
    Other(io::Error),
}

/// Create a small ring and check every opcode the data plane relies on. Called before
/// anything is bound, so a host without usable io_uring fails with one clear message.
pub fn probe_io_uring() -> Result<(), UringUnavailable> {
    let ring = match io_uring::IoUring::new(8) {
        Ok(ring) => ring,
        Err(e) => {
            let sysctl = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
                .map(|s| s.trim().to_string())
                .unwrap_or_default();
            if !sysctl.is_empty() && sysctl != "0" {
                return Err(UringUnavailable::DisabledBySysctl(sysctl));
            }
            return Err(match e.raw_os_error() {
                Some(libc::ENOSYS) => UringUnavailable::NoKernelSupport(e),
                Some(libc::EPERM) | Some(libc::EACCES) => UringUnavailable::NotPermitted(e),
                _ => UringUnavailable::Other(e),
            });
        }
    };
    let mut probe = io_uring::Probe::new();
    ring.submitter()
        .register_probe(&mut probe)
        .map_err(UringUnavailable::Other)?;
    let missing: Vec<&str> = REQUIRED_OPCODES
        .iter()
        .filter(|(code, _)| !probe.is_supported(*code))
        .map(|(_, name)| *name)
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(UringUnavailable::MissingOpcodes(missing.join(", ")))
    }
}

/// Bound this thread's io-wq pool. io_uring runs SPLICE on io-wq kernel threads; without a
/// bound, many slow splices could each park a thread. io-wq is per thread, so limiting it
/// through this small ring limits it for the worker's main ring too. Keep the ring alive.
pub fn bound_iowq(max_unbounded: u32) -> io::Result<io_uring::IoUring> {
    let ring = io_uring::IoUring::new(2)?;
    let mut limits = [max_unbounded, max_unbounded];
    ring.submitter().register_iowq_max_workers(&mut limits)?;
    Ok(ring)
}
