//! What moves between two ringlb processes in a live upgrade: established TCP connections,
//! frozen at a clean point, and UDP sessions with their upstream sockets. The wire format lives with the upgrade in the binary crate;
//! this is the data plane's side of it.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use socket2::Socket;

/// What a frozen worker sends to the upgrade.
#[derive(Debug)]
pub enum Moved {
    Conn(MovedConn),
    Session(MovedSession),
}

impl Moved {
    /// The worker it ran on: the new process gives it to the worker of the same index.
    pub fn worker(&self) -> usize {
        match self {
            Moved::Conn(c) => c.worker,
            Moved::Session(s) => s.worker,
        }
    }

    /// The listener it belongs to, by name.
    pub fn listener(&self) -> &str {
        match self {
            Moved::Conn(c) => &c.listener,
            Moved::Session(s) => &s.listener,
        }
    }
}

/// One UDP session leaving this process (or arriving from the previous one): its client,
/// its backend and the connected socket the backend answers on.
#[derive(Debug)]
pub struct MovedSession {
    pub worker: usize,
    pub listener: String,
    pub backend: String,
    pub client: SocketAddr,
    /// Wildcard listeners: the address the client sent to, which replies come from.
    pub reply_from: Option<IpAddr>,
    pub upstream: Socket,
    pub age: Duration,
    pub idle: Duration,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

/// One established TCP connection leaving this process, or arriving from the previous one.
#[derive(Debug)]
pub struct MovedConn {
    /// The worker it ran on (the new process puts it on the worker of the same index).
    pub worker: usize,
    pub listener: String,
    /// The backend's label (its `addr` as written in the config).
    pub backend: String,
    pub client_addr: SocketAddr,
    pub client: Socket,
    pub backend_socket: Socket,
    /// Since it was accepted.
    pub age: Duration,
    /// CLOCK_MONOTONIC when it froze ([`monotonic_now`]): the same clock in every process
    /// of the host, so the new process can tell how long the connection paused.
    pub frozen_at: Duration,
    /// Its relay's state at the freeze.
    pub frozen: Frozen,
}

/// A relay stopped for a live upgrade, or one resuming after it: the bytes read from one
/// side and not yet written to the other, how long the link has been idle, and what it
/// forwarded so far.
#[derive(Debug, Default)]
pub struct Frozen {
    /// Read from the client, owed to the backend.
    pub to_backend: Vec<u8>,
    /// Read from the backend, owed to the client.
    pub to_client: Vec<u8>,
    /// Since its last byte either way.
    pub idle: Duration,
    /// Forwarded so far, client → backend and backend → client.
    pub bytes_in: u64,
    pub bytes_out: u64,
}

/// CLOCK_MONOTONIC now, comparable across processes on one host (unlike `Instant`, whose
/// values cannot be sent to another process).
pub fn monotonic_now() -> Duration {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(Duration::from)
        .unwrap_or_default()
}
