//! One TCP-connect check: a non-blocking connect started here, completed by the caller's
//! poll(2), classified into an [`Outcome`].

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

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

/// Starts a non-blocking connect to `addr`.
pub(crate) fn start(addr: SocketAddr) -> Start {
    let socket = match new_socket(addr) {
        Ok(socket) => socket,
        Err(err) => return Start::Local(err),
    };
    match socket.connect(&SockAddr::from(addr)) {
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

/// A single blocking check with the same code path as the prober: connect, wait at most
/// `timeout`, classify. For tools and tests; the prober itself never blocks on one backend.
pub fn probe_once(addr: SocketAddr, timeout: Duration) -> Outcome {
    let socket = match start(addr) {
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
    // No Nagle/keepalive tuning: no byte is ever sent.
    Ok(socket)
}

/// The handshake completed: that is the whole check. Dropping closes with RST (see
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

    #[test]
    fn classifies_errnos() {
        assert_eq!(classify(&os(Errno::ECONNREFUSED)), Outcome::Refused);
        assert_eq!(classify(&os(Errno::ETIMEDOUT)), Outcome::Timeout);
        assert_eq!(classify(&os(Errno::EHOSTUNREACH)), Outcome::Unreachable);
        assert_eq!(classify(&os(Errno::ENETUNREACH)), Outcome::Unreachable);
        assert_eq!(
            classify(&os(Errno::EACCES)),
            Outcome::Error("EACCES".into())
        );
        assert_eq!(
            classify(&io::Error::new(io::ErrorKind::InvalidInput, "x y")),
            Outcome::Error("InvalidInput".into())
        );
    }

    #[test]
    fn poll_timeout_rounds_up() {
        assert_eq!(i32::from(poll_timeout(Duration::from_micros(300))), 1);
        assert_eq!(i32::from(poll_timeout(Duration::from_millis(10))), 10);
        assert_eq!(i32::from(poll_timeout(Duration::ZERO)), 0);
    }
}
