//! Live upgrade, new process's side: when started by a serving ringlb (`RINGLB_UPGRADE_FD`
//! names the handover channel), take its listening sockets instead of binding, say
//! `ready` once serving, then take over every connection it sends. See docs/upgrade.md.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use ringlb_config::Listener;
use ringlb_dataplane::worker::Command;
use ringlb_dataplane::{monotonic_now, Frozen, Moved, MovedConn, MovedSession};
use ringlb_scheduler::{decode_dumps, StickyDump};
use socket2::Socket;

use super::admin_book::AdminBook;
use super::ControlPlane;
use crate::upgrade::wire::{
    Channel, ConnHeader, Frame, Msg, SessionHeader, WireError, ENV_FD, VERSION,
};

/// How long the old process may take to send its listening sockets.
const LISTENERS_TIMEOUT: Duration = Duration::from_secs(10);
/// Silence from the old process, while it is handing connections over, that ends the wait.
const CONN_SILENCE: Duration = Duration::from_secs(30);

/// What the old process handed over before this one started serving.
pub(super) struct Inherited {
    channel: Channel,
    /// The old process's worker count: its sockets are one per worker.
    pub(super) workers: usize,
    listeners: HashMap<String, InheritedListener>,
    pub(super) admin: Option<TcpListener>,
    /// The old process's admin state, to start from.
    pub(super) book: Option<AdminBook>,
    /// The old process's sticky tables, by listener.
    pub(super) sticky: Option<Vec<(String, StickyDump)>>,
}

struct InheritedListener {
    protocol: String,
    bound: SocketAddr,
    sockets: Vec<Socket>,
}

/// `Some` when this process was started by an upgrade.
pub(super) fn from_env() -> Option<Result<Inherited, String>> {
    let raw = std::env::var(ENV_FD).ok()?;
    // Children of this process (the next upgrade) get their own channel.
    std::env::remove_var(ENV_FD);
    Some(receive(&raw))
}

fn receive(raw: &str) -> Result<Inherited, String> {
    let fd: i32 = raw
        .parse()
        .map_err(|_| format!("{ENV_FD}={raw:?} is not a file descriptor"))?;
    // The fd must be a seqpacket socket: check before taking ownership of it.
    let kind =
        nix::sys::socket::getsockopt(&unsafe_borrow(fd), nix::sys::socket::sockopt::SockType)
            .map_err(|e| format!("{ENV_FD}={fd}: not a socket ({e})"))?;
    if kind != nix::sys::socket::SockType::SeqPacket {
        return Err(format!("{ENV_FD}={fd}: not the handover channel"));
    }
    // SAFETY: the old process passed this descriptor for us alone, and it was just checked
    // to be an open seqpacket socket.
    let channel = unsafe { Channel::from_raw(fd) };
    channel
        .send(
            &Msg::Hello {
                v: VERSION,
                pid: std::process::id(),
            },
            &[],
            &[],
        )
        .map_err(|e| e.to_string())?;
    let mut inherited = Inherited {
        channel,
        workers: 0,
        listeners: HashMap::new(),
        admin: None,
        book: None,
        sticky: None,
    };
    // The sticky tables' bytes as they arrive, and how many are announced.
    let mut sticky: Option<(usize, Vec<u8>)> = None;
    loop {
        let Frame { msg, fds, payload } = inherited
            .channel
            .recv(LISTENERS_TIMEOUT)
            .map_err(|e| e.to_string())?;
        match msg {
            Msg::Listener {
                name,
                protocol,
                bound,
                sockets,
            } => {
                if fds.len() != sockets {
                    return Err(format!(
                        "listener {name}: {sockets} sockets announced, {} received",
                        fds.len()
                    ));
                }
                let bound: SocketAddr = bound
                    .parse()
                    .map_err(|_| format!("listener {name}: bad address {bound:?}"))?;
                if protocol == "admin" {
                    inherited.admin = fds.into_iter().next().map(TcpListener::from);
                    continue;
                }
                let sockets = fds.into_iter().map(Socket::from).collect();
                inherited.listeners.insert(
                    name,
                    InheritedListener {
                        protocol,
                        bound,
                        sockets,
                    },
                );
            }
            Msg::AdminState { book } => {
                inherited.book =
                    Some(AdminBook::from_json(&book).map_err(|e| format!("admin state: {e}"))?);
            }
            Msg::Sticky { len } => sticky = Some((len, payload)),
            Msg::StickyData => match &mut sticky {
                Some((_, bytes)) => bytes.extend_from_slice(&payload),
                None => return Err("sticky table data before its header".into()),
            },
            Msg::ListenersEnd { workers } => {
                inherited.workers = workers.max(1);
                if let Some((len, bytes)) = sticky {
                    if bytes.len() != len {
                        return Err(format!(
                            "sticky tables: {len} bytes announced, {} received",
                            bytes.len()
                        ));
                    }
                    inherited.sticky = Some(
                        decode_dumps(&bytes, super::sticky::unix_now())
                            .map_err(|e| format!("sticky tables: {e}"))?,
                    );
                }
                return Ok(inherited);
            }
            other => {
                return Err(format!(
                    "unexpected message from the old process: {other:?}"
                ))
            }
        }
    }
}

/// A borrowed view of `fd` for one getsockopt.
fn unsafe_borrow(fd: i32) -> std::os::fd::BorrowedFd<'static> {
    // SAFETY: only used for one getsockopt right away, while the fd is open (it was
    // inherited and nothing closes it meanwhile); a bad number makes getsockopt fail.
    unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) }
}

impl Inherited {
    /// The old process's sockets for `listener`, when they fit it: same name, protocol and
    /// address (or the address its port-0 bind resolved to).
    pub(super) fn take(&mut self, listener: &Listener) -> Option<(Vec<Socket>, SocketAddr)> {
        let fits = self.listeners.get(&listener.name).is_some_and(|l| {
            l.protocol == listener.protocol().as_str()
                && (l.bound == listener.bind
                    || (listener.bind.port() == 0 && l.bound.ip() == listener.bind.ip()))
        });
        if !fits {
            return None;
        }
        let l = self.listeners.remove(&listener.name)?;
        Some((l.sockets, l.bound))
    }

    /// Tell the old process this one cannot serve: it keeps everything.
    pub(super) fn fail(&self, reason: &str) {
        let _ = self.channel.send(
            &Msg::Failed {
                reason: reason.to_string(),
            },
            &[],
            &[],
        );
    }
}

impl ControlPlane {
    /// Serving: say so, then take over every connection the old process sends until it
    /// says `done` (or goes away). Logs the summary line with the pauses seen.
    pub(super) fn take_over(&self, inherited: Inherited) {
        let ch = &inherited.channel;
        let started = Instant::now();
        if let Err(e) = ch.send(&Msg::Ready, &[], &[]) {
            warn!("upgrade: the old process is gone ({e}); serving new connections only");
            self.broadcast(|| Command::OpenUdp);
            return;
        }
        let mut pauses = hdrhistogram::Histogram::<u64>::new(3).ok();
        let mut pending: Option<(ConnHeader, Vec<OwnedFd>, Vec<u8>)> = None;
        let mut taken = 0u64;
        let mut sessions = 0u64;
        loop {
            let frame = match ch.recv(CONN_SILENCE) {
                Ok(frame) => frame,
                Err(WireError::Closed) => {
                    warn!("upgrade: the old process closed the channel before `done`");
                    break;
                }
                Err(e) => {
                    warn!("upgrade: {e}; serving what was handed over");
                    break;
                }
            };
            match frame.msg {
                Msg::Conn(header) => pending = Some((header, frame.fds, frame.payload)),
                Msg::Data { id } => match &mut pending {
                    Some((header, _, bytes)) if header.id == id => {
                        bytes.extend_from_slice(&frame.payload)
                    }
                    _ => warn!("upgrade: data for unknown connection {id} ignored"),
                },
                Msg::Session(header) => {
                    let id = header.id;
                    match self.adopt_session(header, frame.fds) {
                        Ok(()) => sessions += 1,
                        Err(e) => warn!("upgrade: session {id} not taken over: {e}"),
                    }
                    let _ = ch.send(&Msg::Adopted { id }, &[], &[]);
                }
                Msg::Done { conns } => {
                    debug!("upgrade: old process done after {conns} connection(s)");
                    break;
                }
                other => warn!("upgrade: unexpected message ignored: {other:?}"),
            }
            // A connection is complete once all its carried bytes are in.
            let complete = pending
                .as_ref()
                .is_some_and(|(h, _, b)| b.len() >= h.to_backend + h.to_client);
            if complete {
                if let Some((header, fds, bytes)) = pending.take() {
                    let id = header.id;
                    let frozen_at = Duration::from_nanos(header.frozen_at_ns);
                    match self.adopt(header, fds, bytes) {
                        Ok(()) => {
                            taken += 1;
                            let pause = monotonic_now().saturating_sub(frozen_at);
                            if let Some(h) = pauses.as_mut() {
                                let _ = h.record(pause.as_micros().max(1) as u64);
                            }
                        }
                        Err(e) => warn!("upgrade: connection {id} not taken over: {e}"),
                    }
                    let _ = ch.send(&Msg::Adopted { id }, &[], &[]);
                }
            }
        }
        let (p50, p99, max) = pauses.map_or((0, 0, 0), |h| {
            (h.value_at_quantile(0.5), h.value_at_quantile(0.99), h.max())
        });
        // The old process's sessions are in the tables: receive on the UDP sockets now.
        self.broadcast(|| Command::OpenUdp);
        info!(
            "upgrade: pid {} took over {} listener(s), {taken} connection(s) and {sessions} UDP session(s) in {:?}; pause per connection p50 {p50} µs, p99 {p99} µs, max {max} µs",
            std::process::id(),
            self.listeners.len(),
            started.elapsed()
        );
    }

    /// One handed-over connection to the worker of the same index.
    fn adopt(&self, h: ConnHeader, fds: Vec<OwnedFd>, mut bytes: Vec<u8>) -> Result<(), String> {
        let mut fds = fds.into_iter();
        let (Some(client), Some(backend)) = (fds.next(), fds.next()) else {
            return Err("its sockets did not arrive".into());
        };
        let client_addr: SocketAddr = h
            .client
            .parse()
            .map_err(|_| format!("bad client address {:?}", h.client))?;
        let to_client = bytes.split_off(h.to_backend.min(bytes.len()));
        let conn = MovedConn {
            worker: h.worker,
            listener: h.listener,
            backend: h.backend,
            client_addr,
            client: Socket::from(client),
            backend_socket: Socket::from(backend),
            age: Duration::from_micros(h.age_us),
            frozen_at: Duration::from_nanos(h.frozen_at_ns),
            frozen: Frozen {
                to_backend: bytes,
                to_client,
                idle: Duration::from_micros(h.idle_us),
                bytes_in: h.bytes_in,
                bytes_out: h.bytes_out,
            },
        };
        self.adopt_on_worker(Moved::Conn(conn))
    }

    /// One handed-over UDP session to the worker of the same index (whose socket of the
    /// listener the kernel hashes its datagrams to, as in the old process).
    fn adopt_session(&self, h: SessionHeader, fds: Vec<OwnedFd>) -> Result<(), String> {
        let upstream = fds.into_iter().next().ok_or("its socket did not arrive")?;
        let client: SocketAddr = h
            .client
            .parse()
            .map_err(|_| format!("bad client address {:?}", h.client))?;
        let reply_from = match h.reply_from {
            Some(a) => Some(a.parse().map_err(|_| format!("bad local address {a:?}"))?),
            None => None,
        };
        let session = MovedSession {
            worker: h.worker,
            listener: h.listener,
            backend: h.backend,
            client,
            reply_from,
            upstream: Socket::from(upstream),
            age: Duration::from_micros(h.age_us),
            idle: Duration::from_micros(h.idle_us),
            bytes_in: h.bytes_in,
            bytes_out: h.bytes_out,
        };
        self.adopt_on_worker(Moved::Session(session))
    }
}
