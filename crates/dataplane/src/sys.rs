//! Process and socket set-up outside the ring: listener sockets, CPU pinning, fd limits,
//! and the io_uring availability probe.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use thiserror::Error;

use crate::uring::REQUIRED_OPCODES;

/// Backlog for listening sockets; the kernel caps it at net.core.somaxconn.
pub const LISTEN_BACKLOG: i32 = 4096;

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

/// RLIMIT_NOFILE's hard limit: what `raise_fd_limit` raises the soft limit to.
pub fn fd_hard_limit() -> io::Result<u64> {
    use nix::sys::resource::{getrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(io::Error::from)?;
    Ok(hard.max(soft))
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

/// Submission queue size of a worker's ring; completions are twice that by default.
pub const WORKER_RING_ENTRIES: u32 = 4096;

/// The ring set-up every worker uses. COOP_TASKRUN (Linux 5.19) + SINGLE_ISSUER (6.0):
/// completions are run at our next syscall instead of by an interrupt, and the kernel
/// skips cross-thread submission locking (measured ~20% less proxy CPU per request).
/// DEFER_TASKRUN is not used: it hangs tokio-uring's driver. The start-up probe builds
/// exactly this ring, so a kernel that rejects it fails before anything is bound.
pub fn worker_ring_builder() -> io_uring::Builder {
    let mut builder = io_uring::IoUring::builder();
    builder.setup_coop_taskrun().setup_single_issuer();
    builder
}

/// Why io_uring cannot be used here, with the remedy.
#[derive(Debug, Error)]
pub enum UringUnavailable {
    #[error("io_uring is disabled by sysctl kernel.io_uring_disabled={0}; remedy: `sysctl -w kernel.io_uring_disabled=0` (as root)")]
    DisabledBySysctl(String),
    #[error("io_uring_setup is not permitted ({0}); a seccomp filter (e.g. a container's default profile) or missing privileges block it; remedy: allow io_uring_setup/io_uring_enter/io_uring_register in the seccomp profile")]
    NotPermitted(io::Error),
    #[error("this kernel has no io_uring ({0}); remedy: run on Linux 6.0 or newer built with CONFIG_IO_URING")]
    NoKernelSupport(io::Error),
    #[error("this kernel rejects the ring set-up the workers use (COOP_TASKRUN | SINGLE_ISSUER: {0}); remedy: run on Linux 6.0 or newer")]
    SetupFlagsRejected(io::Error),
    #[error("io_uring lacks opcode(s) {0}; remedy: run on Linux 6.0 or newer")]
    MissingOpcodes(String),
    #[error("io_uring set-up failed: {0}")]
    Other(io::Error),
}

/// Build a ring exactly as the workers do and check every opcode the data plane relies
/// on. Called before anything is bound, so a host without usable io_uring fails with one
/// clear message instead of a bare "Invalid argument" from a worker.
pub fn probe_io_uring() -> Result<(), UringUnavailable> {
    let ring = worker_ring_builder()
        .build(WORKER_RING_ENTRIES)
        .map_err(classify_setup_error)?;
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

fn classify_setup_error(e: io::Error) -> UringUnavailable {
    let sysctl = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    if !sysctl.is_empty() && sysctl != "0" {
        return UringUnavailable::DisabledBySysctl(sysctl);
    }
    match e.raw_os_error() {
        Some(libc::ENOSYS) => UringUnavailable::NoKernelSupport(e),
        Some(libc::EPERM) | Some(libc::EACCES) => UringUnavailable::NotPermitted(e),
        // A plain ring works, so it is the flags the kernel does not know.
        Some(libc::EINVAL) if io_uring::IoUring::new(2).is_ok() => {
            UringUnavailable::SetupFlagsRejected(e)
        }
        _ => UringUnavailable::Other(e),
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
