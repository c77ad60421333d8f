//! The backend leg of a TCP connection: pick, connect (from a `source:` address when the
//! listener lists some), retry, and tell failures of the backend from failures of this
//! host. Only the backend's own failures (refused, unreachable, timed out) are passive
//! health failures; a local one (no free source port, out of fds or memory) is counted as
//! `ringlb_denied_total{reason="resources"}` and logged with its remedy.

use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::{Duration, Instant};

use ringlb_config::{Algorithm, TcpSettings};
use ringlb_scheduler::{ActiveGuard, ConnectFailure, Remembered, Snapshot, Tried};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use super::Accounting;
use crate::ctx::WorkerCtx;
use crate::outcome::DenyReason;
use crate::uring;

/// Pick and connect, up to `connect_attempts` times. Nothing has been forwarded yet, so a
/// retry is always safe. A retry goes to a backend not tried yet; when none is left, it
/// goes again to one that only timed out (a lost SYN is no verdict on the backend, and
/// with a single eligible backend this is the only retry there is). A backend that gave
/// a definite answer (refused, unreachable, no local port toward it) is not asked again.
/// The error says why the client is turned away: why the last attempt failed.
/// On success: the connected socket, the backend's index in `snapshot`, its slot, and
/// which attempt it was.
pub(super) async fn connect_backend(
    accounting: &Accounting,
    snapshot: &Snapshot,
    settings: &TcpSettings,
    peer: SocketAddr,
    ctx: &WorkerCtx,
) -> Result<(Socket, usize, ActiveGuard, u32), DenyReason> {
    let name = &accounting.state.name;
    let client = peer.ip().to_canonical();
    let mut tried = Tried::new();
    let mut answered = Tried::new();
    let mut denial = DenyReason::NoBackend;
    // Stickiness: where this client went last.
    let sticky_now = snapshot.is_sticky().then(sticky_now);
    let target = sticky_now.and_then(|now| snapshot.sticky_target(peer, ctx.random(), now));
    for attempt in 1..=settings.connect_attempts {
        let preferred = target.filter(|_| tried.is_empty());
        let Some((index, active)) = pick(snapshot, client, ctx, &mut tried, &answered, preferred)
        else {
            break;
        };
        let Some(backend) = snapshot.backends().get(index) else {
            break;
        };
        let started = Instant::now();
        match connect_from_sources(accounting, backend.spec.addr, settings).await {
            Ok(socket) => {
                let took = started.elapsed();
                accounting.record_connect(took);
                if snapshot.algorithm() == Algorithm::LeastLatency {
                    backend.state.record_latency(took);
                }
                if let Some(now) = sticky_now {
                    remember(accounting, ctx, snapshot, peer, (index, target), now);
                }
                return Ok((socket, index, active, attempt));
            }
            Err(ConnectError::Backend(failure)) => {
                // The passive health signal: the prober counts it toward `fall`.
                backend.state.record_connect_failure();
                denial = if failure == ConnectFailure::Timeout {
                    DenyReason::ConnectTimeout
                } else {
                    answered.insert(index);
                    DenyReason::NoBackend
                };
                log::debug!(
                    "listener {name}: connect to {} failed: {failure} after {:?}; {} attempt(s) left",
                    backend.spec.label,
                    started.elapsed(),
                    settings.connect_attempts.saturating_sub(attempt)
                );
            }
            Err(ConnectError::Local(local)) => {
                accounting.resource_log.note(log::Level::Error, name, || {
                    local.describe(&backend.spec.label)
                });
                denial = DenyReason::Resources;
                // Out of fds or memory: no other backend can do better. Out of ports
                // toward this one: another backend is another 4-tuple space.
                if !local.is_address_exhaustion() {
                    break;
                }
                answered.insert(index);
            }
        }
    }
    Err(denial)
}

/// The next backend to try (`preferred` first: the sticky target); see
/// [`connect_backend`] for which may be tried again.
fn pick(
    snapshot: &Snapshot,
    client: IpAddr,
    ctx: &WorkerCtx,
    tried: &mut Tried,
    answered: &Tried,
    preferred: Option<usize>,
) -> Option<(usize, ActiveGuard)> {
    if let Some(picked) =
        snapshot.pick_and_acquire_preferring(client, ctx.random(), tried, preferred)
    {
        return Some(picked);
    }
    // `answered` ⊆ `tried`: equal sizes mean no backend is left that only timed out.
    if tried.len() == answered.len() {
        return None;
    }
    tried.clone_from(answered);
    snapshot.pick_and_acquire(client, ctx.random(), tried)
}

/// The clock of the sticky tables: whole seconds of CLOCK_MONOTONIC, which every process
/// on the host shares (the control plane sweeps with it, a live upgrade carries ages).
pub(super) fn sticky_now() -> u32 {
    crate::handover::monotonic_now().as_secs() as u32
}

/// Stickiness: records where the client went (`index`, against its `target`) and counts
/// it on this worker.
fn remember(
    accounting: &Accounting,
    ctx: &WorkerCtx,
    snapshot: &Snapshot,
    peer: SocketAddr,
    (index, target): (usize, Option<usize>),
    now: u32,
) {
    let remembered = snapshot.sticky_remember(peer, index, now);
    let Some(counters) = accounting.state.workers.get(ctx.id) else {
        return;
    };
    if target == Some(index) {
        counters.sticky_hits.add(1);
    } else {
        counters.sticky_misses.add(1);
    }
    if remembered == Remembered::Evicted {
        counters.sticky_evictions.add(1);
    }
}

pub(super) enum ConnectError {
    /// The backend refused, timed out or is unreachable: counts against the backend.
    Backend(ConnectFailure),
    /// Our side failed: not the backend's fault.
    Local(LocalError),
}

/// A connect that failed for a reason on this host.
pub(super) struct LocalError {
    stage: Stage,
    /// The source address the connect was made from, if the listener lists some.
    source: Option<IpAddr>,
    error: io::Error,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Socket,
    Bind,
    Connect,
}

impl LocalError {
    fn is_address_exhaustion(&self) -> bool {
        self.stage != Stage::Socket && ConnectFailure::is_address_exhaustion(&self.error)
    }

    /// The log line: what failed toward `backend`, the error, and what to do about it.
    pub(super) fn describe(&self, backend: &str) -> String {
        let from = FromSource(self.source);
        let e = &self.error;
        match self.stage {
            Stage::Bind => format!(
                "cannot use source address {} toward {backend}: {e}; remedy: configure that address on this host or remove it from the listener's source list",
                self.source.map_or_else(|| "-".to_string(), |ip| ip.to_string())
            ),
            Stage::Connect if self.is_address_exhaustion() => format!(
                "no free local port toward {backend}{from}: {e}; remedy: widen net.ipv4.ip_local_port_range or list more local addresses in the listener's source (clients are refused with reason=resources; the backend is not blamed)",
            ),
            Stage::Socket | Stage::Connect => {
                format!("cannot connect to {backend}{from}: {e}; remedy: {}", remedy(e))
            }
        }
    }
}

/// ` from ADDR`, or nothing when the kernel chose the source.
struct FromSource(Option<IpAddr>);

impl fmt::Display for FromSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(ip) => write!(f, " from {ip}"),
            None => Ok(()),
        }
    }
}

/// What an operator can do about a local resource error (fds, memory).
pub(super) fn remedy(e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::EMFILE) => {
            "raise ringlb's open-files hard limit (ulimit -Hn, systemd LimitNOFILE); ringlb raises its soft limit to it at start"
        }
        Some(libc::ENFILE) => "raise the system-wide file limit (sysctl fs.file-max)",
        Some(libc::EADDRNOTAVAIL) | Some(libc::EADDRINUSE) => {
            "widen net.ipv4.ip_local_port_range or list more local addresses in the listener's source"
        }
        _ => "the host is short of memory for sockets: check free memory and net.ipv4.tcp_mem",
    }
}

/// Connect to `addr` from the listener's source addresses of its family, in turn: each
/// connection starts at the next one (round robin per worker) and moves on while an
/// address has no free port toward `addr`. Without source addresses the kernel chooses.
async fn connect_from_sources(
    accounting: &Accounting,
    addr: SocketAddr,
    settings: &TcpSettings,
) -> Result<Socket, ConnectError> {
    let same_family = |ip: &&IpAddr| ip.is_ipv6() == addr.is_ipv6();
    let count = settings.source.iter().filter(same_family).count();
    if count == 0 {
        return connect(addr, None, settings.connect_timeout).await;
    }
    let first = accounting.next_source();
    let mut last = None;
    for k in 0..count {
        let Some(ip) = settings
            .source
            .iter()
            .filter(same_family)
            .nth((first + k) % count)
        else {
            break;
        };
        match connect(addr, Some(*ip), settings.connect_timeout).await {
            Err(ConnectError::Local(e)) if e.is_address_exhaustion() => last = Some(e),
            other => return other,
        }
    }
    Err(ConnectError::Local(last.unwrap_or(LocalError {
        stage: Stage::Connect,
        source: None,
        error: io::Error::from_raw_os_error(libc::EADDRNOTAVAIL),
    })))
}

/// A backend socket, bound to `source` when given.
fn backend_socket(addr: SocketAddr, source: Option<IpAddr>) -> Result<Socket, LocalError> {
    let local = |stage, error| LocalError {
        stage,
        source,
        error,
    };
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
        .map_err(|e| local(Stage::Socket, e))?;
    let _ = socket.set_nodelay(true);
    if let Some(ip) = source {
        // Without it, bind() would reserve a port for this address toward every
        // destination; with it, connect() picks the port so that only the 4-tuple must be
        // unique, and each source address brings a full port range per backend.
        if let Err(e) = nix::sys::socket::setsockopt(
            &socket,
            nix::sys::socket::sockopt::IpBindAddressNoPort,
            &true,
        ) {
            log::debug!("IP_BIND_ADDRESS_NO_PORT on a backend socket: {e}");
        }
        socket
            .bind(&SockAddr::from(SocketAddr::new(ip, 0)))
            .map_err(|e| local(Stage::Bind, e))?;
    }
    Ok(socket)
}

async fn connect(
    addr: SocketAddr,
    source: Option<IpAddr>,
    timeout: Duration,
) -> Result<Socket, ConnectError> {
    let socket = Rc::new(backend_socket(addr, source).map_err(ConnectError::Local)?);
    let outcome = {
        let attempt = uring::connect(&socket, SockAddr::from(addr));
        tokio::pin!(attempt);
        match tokio::time::timeout(timeout, &mut attempt).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) if ConnectFailure::is_local(&error) => {
                Err(ConnectError::Local(LocalError {
                    stage: Stage::Connect,
                    source,
                    error,
                }))
            }
            Ok(Err(e)) => Err(ConnectError::Backend(ConnectFailure::classify(&e))),
            Err(_) => {
                // Cancel the pending connect so the socket is really gone, then report.
                uring::cancel_all(socket.as_raw_fd()).await;
                let _ = attempt.await;
                Err(ConnectError::Backend(ConnectFailure::Timeout))
            }
        }
    };
    outcome?;
    Rc::try_unwrap(socket).map_err(|_| {
        ConnectError::Local(LocalError {
            stage: Stage::Socket,
            source,
            error: io::Error::other("connect socket still shared"),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local(stage: Stage, source: Option<&str>, errno: i32) -> LocalError {
        LocalError {
            stage,
            source: source.map(|s| s.parse().unwrap()),
            error: io::Error::from_raw_os_error(errno),
        }
    }

    #[test]
    fn port_exhaustion_names_its_remedies() {
        let line = local(Stage::Connect, None, libc::EADDRNOTAVAIL).describe("10.0.0.1:80");
        assert!(
            line.starts_with("no free local port toward 10.0.0.1:80: "),
            "{line}"
        );
        assert!(line.contains("net.ipv4.ip_local_port_range"), "{line}");
        assert!(line.contains("source"), "{line}");
        let line =
            local(Stage::Connect, Some("10.0.0.5"), libc::EADDRNOTAVAIL).describe("10.0.0.1:80");
        assert!(
            line.starts_with("no free local port toward 10.0.0.1:80 from 10.0.0.5: "),
            "{line}"
        );
    }

    #[test]
    fn a_source_address_that_is_not_ours_is_named() {
        let e = local(Stage::Bind, Some("192.0.2.9"), libc::EADDRNOTAVAIL);
        // Moving on to the next source address is right: this one cannot work.
        assert!(e.is_address_exhaustion());
        let line = e.describe("10.0.0.1:80");
        assert!(
            line.starts_with("cannot use source address 192.0.2.9 toward 10.0.0.1:80"),
            "{line}"
        );
    }

    #[test]
    fn fd_and_memory_errors_are_not_exhaustion_and_say_what_to_raise() {
        let e = local(Stage::Socket, None, libc::EMFILE);
        assert!(!e.is_address_exhaustion());
        assert!(
            e.describe("b").contains("LimitNOFILE"),
            "{}",
            e.describe("b")
        );
        assert!(local(Stage::Connect, None, libc::ENFILE)
            .describe("b")
            .contains("fs.file-max"));
        assert!(local(Stage::Connect, None, libc::ENOBUFS)
            .describe("b")
            .contains("tcp_mem"));
    }
}
