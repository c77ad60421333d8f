//! One check: a non-blocking connect started here, completed by the caller's poll(2),
//! classified into an [`Outcome`]; with `send` / `expect`, then a write and a read of the
//! reply's first bytes, each step also driven by the caller's poll(2) ([`advance`]).

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use ringlb_config::HealthCheck;
use ringlb_scheduler::ConnectFailure;

use crate::Outcome;

/// How a check began.
pub(crate) enum Start {
    /// Connect in progress: poll the socket for POLLOUT, then call [`finish`].
    Pending(Socket),
    /// The kernel answered at once (loopback often does).
    Done(Outcome),
    /// The check could not be attempted for a reason on this host (fd or memory
    /// exhaustion): it says nothing about the backend and must not count against it.
    Local(io::Error),
}

/// Starts a non-blocking connect to `addr`. With `exchanges` (the check sends or expects
/// bytes) a connect that completed at once is still `Pending`: [`advance`] goes on.
pub(crate) fn start(addr: SocketAddr, exchanges: bool) -> Start {
    let socket = match new_socket(addr) {
        Ok(socket) => socket,
        Err(err) => return Start::Local(err),
    };
    match socket.connect(&SockAddr::from(addr)) {
        Ok(()) if exchanges => Start::Pending(socket),
        Ok(()) => Start::Done(close_connected(socket)),
        Err(err) if err.raw_os_error() == Some(Errno::EINPROGRESS as i32) => Start::Pending(socket),
        Err(err) if ConnectFailure::is_local(&err) => Start::Local(err),
        Err(err) => Start::Done(classify(&err)),
    }
}

/// Completes a check whose socket poll(2) reported writable, hung up or in error.
pub(crate) fn finish(socket: Socket) -> Outcome {
    match socket.take_error() {
        Ok(None) => close_connected(socket),
        Ok(Some(err)) | Err(err) => classify(&err),
    }
}

/// Where a check in flight is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Phase {
    /// The handshake is in progress.
    Connecting,
    /// Connected; `send[..sent]` is written.
    Sending { sent: usize },
    /// Waiting for the reply; `got` holds what came so far (at most `len(expect)`, or 1).
    Receiving { got: Vec<u8> },
}

impl Phase {
    /// What to poll the socket for in this phase.
    pub(crate) fn interest(&self) -> PollFlags {
        match self {
            Phase::Connecting | Phase::Sending { .. } => PollFlags::POLLOUT,
            Phase::Receiving { .. } => PollFlags::POLLIN,
        }
    }

    /// The outcome when the check's `timeout` passes in this phase: before the handshake
    /// completed `timeout`, after it `no_reply` (the backend accepted but did not answer,
    /// e.g. a stopped process whose kernel still completes handshakes).
    pub(crate) fn expired(&self) -> Outcome {
        match self {
            Phase::Connecting => Outcome::Timeout,
            Phase::Sending { .. } | Phase::Receiving { .. } => Outcome::NoReply,
        }
    }
}

/// What one [`advance`] step left.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// Poll again for [`Phase::interest`].
    Wait,
    Done(Outcome),
}

/// Moves a check whose socket poll(2) reported ready as far as it goes without blocking:
/// connected → write `send` → read until `expect` is matched (or, without `expect`, one
/// byte arrived). Never reads more than `len(expect)` bytes (or 1).
pub(crate) fn advance(socket: &Socket, phase: &mut Phase, check: &HealthCheck) -> Step {
    loop {
        match phase {
            Phase::Connecting => {
                match socket.take_error() {
                    Ok(None) => {}
                    Ok(Some(err)) | Err(err) => return Step::Done(classify(&err)),
                }
                if !check.exchanges() {
                    return Step::Done(Outcome::Ok);
                }
                *phase = match check.send {
                    Some(_) => Phase::Sending { sent: 0 },
                    None => Phase::Receiving { got: Vec::new() },
                };
            }
            Phase::Sending { sent } => {
                let send = check.send.as_deref().unwrap_or_default();
                let Some(rest) = send.get(*sent..).filter(|r| !r.is_empty()) else {
                    *phase = Phase::Receiving { got: Vec::new() };
                    continue;
                };
                match (&*socket).write(rest) {
                    Ok(n) => *sent += n,
                    Err(err) => return io_step(&err),
                }
            }
            Phase::Receiving { got } => {
                let want = check.expect.as_ref().map_or(1, Vec::len);
                let mut buf = [0u8; 512];
                let room = want.saturating_sub(got.len()).min(buf.len());
                let Some(buf) = buf.get_mut(..room) else {
                    return Step::Done(Outcome::Ok);
                };
                match (&*socket).read(buf) {
                    Ok(0) => return Step::Done(Outcome::Closed),
                    Ok(n) => got.extend_from_slice(buf.get(..n).unwrap_or_default()),
                    Err(err) => return io_step(&err),
                }
                return Step::Done(match reply_verdict(got, check.expect.as_deref()) {
                    Some(outcome) => outcome,
                    None => continue,
                });
            }
        }
    }
}

/// `Some` once `got` decides the check: `ok` when it starts with all of `expect` (or, with
/// no `expect`, holds any byte), `bad_reply` at the first byte that differs. `None`: so far
/// a prefix of `expect`, read on.
pub(crate) fn reply_verdict(got: &[u8], expect: Option<&[u8]>) -> Option<Outcome> {
    let Some(expect) = expect else {
        return (!got.is_empty()).then_some(Outcome::Ok);
    };
    if !expect.starts_with(got) {
        return Some(Outcome::BadReply);
    }
    (got.len() >= expect.len()).then_some(Outcome::Ok)
}

/// A write or read error during the exchange: would-block waits; a reset or broken pipe
/// is the backend closing on us (`closed`); anything else by errno.
fn io_step(err: &io::Error) -> Step {
    match err.raw_os_error().map(Errno::from_raw) {
        Some(Errno::EAGAIN) | Some(Errno::EINTR) => Step::Wait,
        Some(Errno::ECONNRESET) | Some(Errno::EPIPE) => Step::Done(Outcome::Closed),
        _ => Step::Done(classify(err)),
    }
}

/// A single blocking check with the same code path as the prober: connect, wait at most
/// `timeout`, classify. For tools and tests; the prober itself never blocks on one backend.
pub fn probe_once(addr: SocketAddr, timeout: Duration) -> Outcome {
    let socket = match start(addr, false) {
        Start::Pending(socket) => socket,
        Start::Done(outcome) => return outcome,
        Start::Local(err) => return classify(&err),
    };
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Outcome::Timeout;
        }
        let mut fds = [PollFd::new(socket.as_fd(), PollFlags::POLLOUT)];
        match nix::poll::poll(&mut fds, poll_timeout(left)) {
            Ok(0) | Err(Errno::EINTR) => continue,
            Ok(_) => return finish(socket),
            Err(errno) => return classify(&io::Error::from(errno)),
        }
    }
}

/// Milliseconds for poll(2), rounded up so a sub-millisecond wait does not spin.
pub(crate) fn poll_timeout(wait: Duration) -> PollTimeout {
    let ms = wait.as_nanos().div_ceil(1_000_000);
    PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)
}

fn new_socket(addr: SocketAddr) -> io::Result<Socket> {
    // socket2 opens with SOCK_CLOEXEC: probe sockets never leak into child processes.
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_nonblocking(true)?;
    // Close with RST (SO_LINGER 0) instead of FIN: a connect-only check would otherwise
    // leave one TIME_WAIT socket on this host per check (60 s each on Linux), thousands
    // with many backends and short intervals, eating ephemeral ports the data plane needs.
    // The backend sees a reset instead of a clean close, as with HAProxy's connect checks.
    socket.set_linger(Some(Duration::ZERO))?;
    // No Nagle/keepalive tuning: at most one short `send` is written, in one call.
    Ok(socket)
}

/// The handshake completed: that is the whole connect-only check. Dropping closes with RST (see
/// [`new_socket`]).
fn close_connected(socket: Socket) -> Outcome {
    drop(socket);
    Outcome::Ok
}

/// Maps a connect error to the outcome operators read in the transition line (the same
/// classification the data plane uses for client connects).
pub(crate) fn classify(err: &io::Error) -> Outcome {
    Outcome::from(ConnectFailure::classify(err))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(errno: Errno) -> io::Error {
        io::Error::from_raw_os_error(errno as i32)
    }

    /// The classification itself is tested with `ConnectFailure`; here only that the
    /// prober's outcomes follow it.
    #[test]
    fn outcomes_follow_the_shared_classification() {
        assert_eq!(classify(&os(Errno::ECONNREFUSED)), Outcome::Refused);
        assert_eq!(classify(&os(Errno::EHOSTUNREACH)), Outcome::Unreachable);
        assert_eq!(
            classify(&os(Errno::EACCES)),
            Outcome::Error("EACCES".into())
        );
    }

    #[test]
    fn poll_timeout_rounds_up() {
        assert_eq!(i32::from(poll_timeout(Duration::from_micros(300))), 1);
        assert_eq!(i32::from(poll_timeout(Duration::from_millis(10))), 10);
        assert_eq!(i32::from(poll_timeout(Duration::ZERO)), 0);
    }

    #[test]
    fn reply_verdict_matches_prefixes() {
        let expect = Some(&b"PONG"[..]);
        assert_eq!(reply_verdict(b"", expect), None);
        assert_eq!(reply_verdict(b"PO", expect), None);
        assert_eq!(reply_verdict(b"PONG", expect), Some(Outcome::Ok));
        assert_eq!(reply_verdict(b"PX", expect), Some(Outcome::BadReply));
        assert_eq!(reply_verdict(b"", None), None);
        assert_eq!(reply_verdict(b"x", None), Some(Outcome::Ok));
    }

    #[test]
    fn phases_poll_for_what_they_wait_on_and_time_out_by_phase() {
        assert_eq!(Phase::Connecting.interest(), PollFlags::POLLOUT);
        assert_eq!(Phase::Sending { sent: 0 }.interest(), PollFlags::POLLOUT);
        let receiving = Phase::Receiving { got: Vec::new() };
        assert_eq!(receiving.interest(), PollFlags::POLLIN);
        assert_eq!(Phase::Connecting.expired(), Outcome::Timeout);
        assert_eq!(receiving.expired(), Outcome::NoReply);
    }
}
