//! UDP load balancing on the worker's ring: one receive loop per listener per worker on
//! its own SO_REUSEPORT socket, a worker-local session table (no sharing, no locks), one
//! connected upstream socket per session, and a periodic expiry sweep.
//!
//! Client → backend: recvmsg on the listener socket (65,536-byte buffer, MSG_TRUNC
//! detection) → session lookup (or admission: allow-list, `max_sessions`, pick) → send on
//! the session's connected upstream socket. Backend → client: the upstream loop waits for
//! readiness (poll, no buffer held while idle), receives with a pooled buffer and answers
//! with sendmsg on the listener socket, so the client sees the listener's address (with
//! IP_PKTINFO on a wildcard bind: the very address it sent to). Details: docs/udp.md.
//!
//! Must not: share a session table between workers, evict an established session to make
//! room, hold a receive buffer per idle session, or forward a truncated datagram.

mod ops;
mod table;

use std::cell::{Cell, RefCell};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ringlb_config::ProxyProtocol;
use ringlb_scheduler::{ActiveGuard, BackendState, Tried};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::ctx::{LiveGuard, WorkerCtx};
use crate::fdbudget::{self, UdpSlot};
use crate::handover::{Moved, MovedSession};
use crate::listener::{is_allowed, ListenerState};
use crate::outcome::{DenyReason, EndReason, Outcome, Record};
use crate::proxy_protocol::{self, Transport};
use crate::ratelog::RateLog;
use crate::stats::WorkerCounters;
use crate::uring;

use ops::{Dgram, HEADROOM, MAX_DATAGRAM};
use table::{Activity, Flow, SessionTable};

/// Receive buffer asked for on the listener socket (the kernel caps it at
/// net.core.rmem_max): room for a burst while the worker is busy elsewhere.
const LISTENER_RCVBUF: usize = 4 << 20;
/// Idle datagram buffers kept per listener and worker for the reply direction.
const POOL_MAX: usize = 32;
/// While a stopped listener drains, a session ends after this much silence (or its own
/// `session_timeout`, if shorter): the replies still in flight get through, and shutdown
/// does not wait a full timeout for clients that can no longer be told apart from gone.
const DRAIN_QUIET: Duration = Duration::from_secs(1);
/// Pause after an unexpected receive error so a persistent one cannot spin the worker.
const ERROR_PAUSE: Duration = Duration::from_millis(10);
/// Client → backend sends running beside the receive loop, per listener and worker. Beyond
/// it the loop sends inline, so a backend that stops draining cannot pile up buffers.
const SENDS_IN_FLIGHT_MAX: usize = 32;

/// Replies arriving one per wake-up: still probe for a burst on every this-many wake-ups
/// (a power of two).
const PROBE_EVERY: u32 = 8;

/// One UDP listener on one worker.
pub(crate) struct UdpListener {
    local: Rc<UdpWorkerListener>,
}

impl UdpListener {
    /// Start serving `socket` (this worker's bound SO_REUSEPORT socket for `listener`).
    pub(crate) fn start(
        ctx: Rc<WorkerCtx>,
        listener: Arc<ListenerState>,
        socket: Socket,
    ) -> io::Result<Rc<Self>> {
        if listener.workers.get(ctx.id).is_none() {
            return Err(io::Error::other(format!(
                "listener {} has no counters for worker {}",
                listener.name, ctx.id
            )));
        }
        let bound = listener.bound;
        let pktinfo = bound.ip().is_unspecified();
        if pktinfo {
            ops::enable_pktinfo(&socket, bound.is_ipv6())?;
        }
        if let Err(e) = socket.set_recv_buffer_size(LISTENER_RCVBUF) {
            log::debug!("listener {}: cannot raise SO_RCVBUF: {e}", listener.name);
        }
        let local = Rc::new(UdpWorkerListener {
            worker: ctx.id,
            ctx,
            listener,
            socket: Rc::new(socket),
            pktinfo,
            table: RefCell::new(SessionTable::new()),
            epoch: Instant::now(),
            now_ms: Cell::new(0),
            draining: Cell::new(false),
            finished: Cell::new(false),
            wake: tokio::sync::Notify::new(),
            pool: RefCell::new(Vec::new()),
            sends_in_flight: Cell::new(0),
            fallback: WorkerCounters::default(),
            log_limit: RateLog::default(),
            log_no_backend: RateLog::default(),
            log_resources: RateLog::default(),
        });
        tokio_uring::spawn(receive_loop(Rc::clone(&local)));
        tokio_uring::spawn(sweep_loop(Rc::clone(&local)));
        Ok(Rc::new(UdpListener { local }))
    }

    /// Live upgrade: hand every session to `sink` and stop receiving.
    pub(crate) async fn freeze(&self, sink: &crossbeam_channel::Sender<Moved>) {
        self.local.freeze(sink).await;
    }

    /// Live upgrade: take over a session of the previous process.
    pub(crate) fn adopt(&self, moved: MovedSession) {
        self.local.adopt(moved);
    }

    /// Stop admitting new clients. Established sessions keep flowing both ways until they
    /// are quiet for `min(session_timeout, 1 s)` or the shutdown cut; then the receive loop
    /// ends and its pending recvmsg is cancelled. Returns at once (the worker's command loop
    /// must not block); with no session left the receive op is cancelled before returning.
    pub(crate) async fn stop(&self) {
        let local = &self.local;
        local.draining.set(true);
        let sessions = local.table.borrow().len();
        log::debug!(
            "listener {}: worker {} stops admitting; {sessions} session(s) drain",
            local.listener.name,
            local.worker
        );
        if sessions == 0 {
            local.finish().await;
        } else {
            local.wake.notify_one();
        }
    }
}

/// This worker's state for one UDP listener.
struct UdpWorkerListener {
    ctx: Rc<WorkerCtx>,
    worker: usize,
    listener: Arc<ListenerState>,
    socket: Rc<Socket>,
    /// Wildcard bind: learn each datagram's destination and answer from it.
    pktinfo: bool,
    table: RefCell<SessionTable<Session>>,
    /// Origin of the coarse clock.
    epoch: Instant,
    /// Coarse clock (ms since `epoch`), advanced by the sweep; datagrams stamp it.
    now_ms: Cell<u64>,
    draining: Cell<bool>,
    finished: Cell<bool>,
    /// Wakes the sweep early (stop).
    wake: tokio::sync::Notify,
    /// Boxed: a `Dgram` holds pointers into itself, and ops move it by its box.
    #[allow(clippy::vec_box)]
    pool: RefCell<Vec<Box<Dgram>>>,
    sends_in_flight: Cell<usize>,
    /// Used only if the worker has no counter slot (checked at start; never expected).
    fallback: WorkerCounters,
    log_limit: RateLog,
    log_no_backend: RateLog,
    log_resources: RateLog,
}

impl UdpWorkerListener {
    fn counters(&self) -> &WorkerCounters {
        self.listener
            .workers
            .get(self.worker)
            .unwrap_or(&self.fallback)
    }

    fn take_dgram(&self) -> Box<Dgram> {
        self.pool.borrow_mut().pop().unwrap_or_else(Dgram::new)
    }

    fn put_dgram(&self, d: Box<Dgram>) {
        let mut pool = self.pool.borrow_mut();
        if pool.len() < POOL_MAX {
            pool.push(d);
        }
    }

    /// End receiving: no session is left or the worker is cutting.
    async fn finish(&self) {
        if self.finished.replace(true) {
            return;
        }
        self.wake.notify_one();
        uring::cancel_all(self.socket.as_raw_fd()).await;
    }

    fn end_session(&self, session: &Rc<Session>, end: EndReason) {
        if session.closed.replace(true) {
            return;
        }
        let leg = session.leg.borrow();
        self.listener
            .finish(self.counters(), &leg.record(session.client, end));
        cancel_socket(Rc::clone(&leg.socket));
    }

    fn end_all(&self, end: EndReason) {
        let all = self.table.borrow_mut().drain();
        for (_, session) in all {
            self.end_session(&session, end);
        }
    }

    /// A client datagram of `len` bytes sits at `d.buf[HEADROOM..]`: find or create its
    /// session, move it off a down or refusing backend, and write the PROXY header in front.
    /// Returns the session and where the datagram to send starts; `None`: drop it.
    fn route(
        self: &Rc<Self>,
        d: &mut Dgram,
        client: SocketAddr,
        dst: Option<IpAddr>,
    ) -> Option<(Rc<Session>, usize)> {
        let flow = Flow {
            client,
            local: dst.filter(|_| self.pktinfo),
        };
        let existing = self.table.borrow().get(&flow);
        let session = match existing {
            Some(s) => s,
            // A draining listener only serves the sessions it has.
            None if self.draining.get() => return None,
            None => match self.create_session(flow) {
                Ok(s) => s,
                Err(reason) => {
                    self.refuse(client, reason);
                    return None;
                }
            },
        };
        session.last.set(self.now_ms.get());
        if session.refused.get() || !session.leg.borrow().state.is_up() {
            let exclude = session.refused.replace(false);
            self.move_session(&session, exclude);
        }
        let start = match &session.header {
            Some(h) => {
                let start = HEADROOM - h.len();
                d.buf[start..HEADROOM].copy_from_slice(h);
                start
            }
            None => HEADROOM,
        };
        Some((session, start))
    }

    /// Send `d.buf[start..HEADROOM + len]`; on ECONNREFUSED (the backend's port is closed:
    /// nothing was sent) count a passive failure and retry once on another backend.
    async fn send_upstream(
        self: &Rc<Self>,
        session: &Rc<Session>,
        d: Box<Dgram>,
        start: usize,
        len: usize,
    ) -> Box<Dgram> {
        let end = HEADROOM + len;
        let mut d = d;
        for attempt in 0..2 {
            let socket = Rc::clone(&session.leg.borrow().socket);
            let (res, back) = ops::send(&socket, d, start, end).await;
            d = back;
            match res {
                Ok(_) => {
                    let c = self.counters();
                    c.udp_datagrams_in.add(1);
                    c.bytes_in.add(len as u64);
                    session.add_in(len);
                    return d;
                }
                Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) && attempt == 0 => {
                    session.leg.borrow().state.record_connect_failure();
                    if !self.move_session(session, true) {
                        break;
                    }
                }
                Err(e) => {
                    log::debug!(
                        "listener {}: datagram from {} to {} dropped: {e}",
                        self.listener.name,
                        session.client,
                        session.leg.borrow().label
                    );
                    break;
                }
            }
        }
        self.counters().udp_drops_send_error.add(1);
        d
    }

    /// New client: allow-list → listener-wide `max_sessions` → pick → connected socket.
    fn create_session(self: &Rc<Self>, flow: Flow) -> Result<Rc<Session>, DenyReason> {
        let client = flow.client;
        let settings = self.listener.settings.load();
        if !is_allowed(&settings, &client) {
            return Err(DenyReason::NotAllowed);
        }
        // Only UDP listeners get a UDP receive loop, so this cannot fail; were it to, no
        // session is admitted rather than one run with settings of another protocol.
        let Some(udp) = settings.udp() else {
            debug_assert!(false, "listener {} has no udp settings", self.listener.name);
            return Err(DenyReason::Limit);
        };
        if !self.listener.try_admit(udp.max_sessions) {
            return Err(DenyReason::Limit);
        }
        // The process-wide descriptor budget: a flood of new clients must not take the
        // descriptors TCP, the admin endpoint and the prober need (docs/udp.md).
        let Some(slot) = UdpSlot::try_acquire() else {
            self.listener.release();
            self.log_resources
                .note(log::Level::Warn, &self.listener.name, || {
                    let (budget, open) = fdbudget::udp_usage();
                    format!(
                        "udp socket budget ({open} of {budget} upstream sockets, RLIMIT_NOFILE minus the reserve) used up: datagrams from new clients refused"
                    )
                });
            return Err(DenyReason::Resources);
        };
        let leg = match self.open_leg(client, &Tried::new(), slot) {
            Ok(leg) => leg,
            Err(reason) => {
                self.listener.release();
                return Err(reason);
            }
        };
        let header = self.proxy_header(client, flow.local);
        self.counters().udp_sessions_created.add(1);
        Ok(self.install(flow, leg, header, self.now_ms.get()))
    }

    /// Put an admitted session in the table and start its upstream loop.
    fn install(
        self: &Rc<Self>,
        flow: Flow,
        leg: Leg,
        header: Option<Vec<u8>>,
        last_ms: u64,
    ) -> Rc<Session> {
        let socket = Rc::clone(&leg.socket);
        let session = Rc::new(Session {
            client: flow.client,
            reply_from: flow.local,
            header: header.filter(|h| h.len() <= HEADROOM),
            leg: RefCell::new(leg),
            last: Cell::new(last_ms),
            closed: Cell::new(false),
            refused: Cell::new(false),
            listener: Arc::clone(&self.listener),
            worker: self.worker,
            _live: self.ctx.enter(),
        });
        self.table.borrow_mut().insert(flow, Rc::clone(&session));
        self.counters().udp_sessions_active.add(1);
        tokio_uring::spawn(upstream_loop(Rc::clone(self), Rc::clone(&session), socket));
        session
    }

    /// The PROXY v2 header every datagram of `client`'s session carries, if configured.
    fn proxy_header(&self, client: SocketAddr, local: Option<IpAddr>) -> Option<Vec<u8>> {
        let local_addr = SocketAddr::new(
            local.unwrap_or(self.listener.bound.ip()),
            self.listener.bound.port(),
        );
        match self.listener.settings.load().proxy_protocol {
            ProxyProtocol::V2 => Some(proxy_protocol::v2(client, local_addr, Transport::Datagram)),
            // v1 cannot describe a datagram; config validation rejects it on udp.
            ProxyProtocol::V1 | ProxyProtocol::None => None,
        }
    }

    /// Live upgrade, old process: stop receiving (the new process receives on the same
    /// sockets once it has the sessions) and send every session, with its upstream socket,
    /// to `sink`. Replies already queued on an upstream socket go with it.
    async fn freeze(self: &Rc<Self>, sink: &crossbeam_channel::Sender<Moved>) {
        // Take the sessions before finishing: the sweep, woken by `finish`, would end them.
        let now = self.now_ms.get();
        let sessions = self.table.borrow_mut().drain();
        for (flow, session) in sessions {
            session.closed.set(true);
            let leg = session.leg.borrow();
            let upstream = match leg.socket.try_clone() {
                Ok(s) => s,
                Err(e) => {
                    log::warn!(
                        "listener {}: session {} cannot be handed over: {e}",
                        self.listener.name,
                        flow.client
                    );
                    continue;
                }
            };
            cancel_socket(Rc::clone(&leg.socket));
            let moved = MovedSession {
                worker: self.worker,
                listener: self.listener.name.clone(),
                backend: leg.label.clone(),
                client: flow.client,
                reply_from: flow.local,
                upstream,
                age: leg.started.elapsed(),
                idle: Duration::from_millis(now.saturating_sub(session.last.get())),
                bytes_in: leg.bytes_in.get(),
                bytes_out: leg.bytes_out.get(),
            };
            if sink.send(Moved::Session(moved)).is_err() {
                log::warn!(
                    "listener {}: session {} dropped: no upgrade takes it",
                    self.listener.name,
                    flow.client
                );
            }
        }
        self.finish().await;
    }

    /// Live upgrade: take over a session the previous process handed over.
    fn adopt(self: &Rc<Self>, moved: MovedSession) {
        // Admitted by the previous process: count it whatever the limit.
        if !self.listener.try_admit(u32::MAX) {
            return;
        }
        let snapshot = self.listener.scheduler.snapshot();
        // A backend a reload removed meanwhile is still this session's backend.
        let state = snapshot
            .backends()
            .iter()
            .find(|b| b.spec.label == moved.backend)
            .map_or_else(|| Arc::new(BackendState::new()), |b| Arc::clone(&b.state));
        let leg = Leg {
            socket: Rc::new(moved.upstream),
            _slot: UdpSlot::force(),
            label: moved.backend,
            _active: state.acquire(),
            state,
            started: Instant::now()
                .checked_sub(moved.age)
                .unwrap_or_else(Instant::now),
            bytes_in: Cell::new(moved.bytes_in),
            bytes_out: Cell::new(moved.bytes_out),
        };
        let flow = Flow {
            client: moved.client,
            local: moved.reply_from,
        };
        let header = self.proxy_header(moved.client, moved.reply_from);
        let idle_ms = moved.idle.as_millis() as u64;
        self.install(flow, leg, header, self.now_ms.get().saturating_sub(idle_ms));
    }

    /// Pick a backend (never one in `tried`) and open a socket connected to it, counted
    /// in the descriptor budget by `slot`.
    fn open_leg(
        &self,
        client: SocketAddr,
        tried: &Tried,
        slot: UdpSlot,
    ) -> Result<Leg, DenyReason> {
        let snapshot = self.listener.scheduler.snapshot();
        let mut tried = tried.clone();
        let (index, active) = snapshot
            .pick_and_acquire(client.ip().to_canonical(), self.ctx.random(), &mut tried)
            .ok_or(DenyReason::NoBackend)?;
        let backend = snapshot
            .backends()
            .get(index)
            .ok_or(DenyReason::NoBackend)?;
        let socket = connected_socket(backend.spec.addr).map_err(|e| {
            self.log_resources
                .note(log::Level::Warn, &self.listener.name, || {
                    format!(
                        "cannot open a udp socket toward {}: {e}",
                        backend.spec.label
                    )
                });
            DenyReason::Resources
        })?;
        Ok(Leg {
            socket: Rc::new(socket),
            _slot: slot,
            label: backend.spec.label.clone(),
            state: Arc::clone(&backend.state),
            _active: active,
            started: Instant::now(),
            bytes_in: Cell::new(0),
            bytes_out: Cell::new(0),
        })
    }

    /// Move a session whose backend is down or refused to another candidate. With
    /// `exclude_current`, the current backend is not picked again. Returns false when no
    /// other backend is available (the session stays where it is).
    fn move_session(self: &Rc<Self>, session: &Rc<Session>, exclude_current: bool) -> bool {
        let mut tried = Tried::new();
        if exclude_current {
            let snapshot = self.listener.scheduler.snapshot();
            let current = &session.leg.borrow().state;
            if let Some(i) = snapshot
                .backends()
                .iter()
                .position(|b| Arc::ptr_eq(&b.state, current))
            {
                tried.insert(i);
            }
        }
        // The old leg's socket closes right after: a move does not grow the count.
        let Ok(leg) = self.open_leg(session.client, &tried, UdpSlot::force()) else {
            return false;
        };
        let socket = Rc::clone(&leg.socket);
        let old = session.leg.replace(leg);
        self.listener.finish(
            self.counters(),
            &old.record(session.client, EndReason::Moved),
        );
        log::debug!(
            "listener {}: session {} moved from {} to {}",
            self.listener.name,
            session.client,
            old.label,
            session.leg.borrow().label
        );
        cancel_socket(Rc::clone(&old.socket));
        drop(old);
        tokio_uring::spawn(upstream_loop(Rc::clone(self), Rc::clone(session), socket));
        true
    }

    fn refuse(&self, client: SocketAddr, reason: DenyReason) {
        // Counted without an access-log line: refusals come one per datagram, and a flood
        // must not become a flood of log lines (they are logged rate-limited below).
        self.counters().count(Outcome::Denied(reason));
        let name = &self.listener.name;
        match reason {
            DenyReason::Limit => self.log_limit.note(log::Level::Warn, name, || {
                format!(
                    "session table full (max_sessions={}): datagrams from new clients refused",
                    self.listener
                        .settings
                        .load()
                        .udp()
                        .map_or(0, |u| u.max_sessions)
                )
            }),
            DenyReason::NoBackend => self.log_no_backend.note(log::Level::Warn, name, || {
                "no backend available: datagrams from new clients refused".to_string()
            }),
            // Logged where the socket failed; allow-list refusals are counted only. (No
            // per-source limit on UDP: validation rejects `per_source` there.)
            DenyReason::Resources
            | DenyReason::NotAllowed
            | DenyReason::ConnectTimeout
            | DenyReason::SourceLimit
            | DenyReason::Unrouted => {
                log::debug!(
                    "listener {name}: datagram from {client} refused: {}",
                    reason.as_str()
                )
            }
        }
    }
}

/// One client's session on this worker.
struct Session {
    client: SocketAddr,
    /// Source address for replies (wildcard listeners only): where the client sent to.
    reply_from: Option<IpAddr>,
    /// PROXY v2 header put in front of every datagram to the backend.
    header: Option<Vec<u8>>,
    leg: RefCell<Leg>,
    /// Coarse clock at the last datagram either way.
    last: Cell<u64>,
    closed: Cell<bool>,
    /// The backend answered with ICMP port unreachable: move on the next datagram.
    refused: Cell<bool>,
    listener: Arc<ListenerState>,
    worker: usize,
    _live: LiveGuard,
}

impl Session {
    fn add_in(&self, n: usize) {
        let leg = self.leg.borrow();
        leg.bytes_in.set(leg.bytes_in.get() + n as u64);
    }

    fn add_out(&self, n: usize) {
        let leg = self.leg.borrow();
        leg.bytes_out.set(leg.bytes_out.get() + n as u64);
    }

    fn is_current(&self, socket: &Rc<Socket>) -> bool {
        !self.closed.get() && Rc::ptr_eq(&self.leg.borrow().socket, socket)
    }
}

impl Activity for Session {
    fn last_active_ms(&self) -> u64 {
        self.last.get()
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.listener.release();
        if let Some(c) = self.listener.workers.get(self.worker) {
            c.udp_sessions_active.sub(1);
        }
    }
}

/// A session's current backend: its connected socket and the slot it holds there.
struct Leg {
    socket: Rc<Socket>,
    /// This socket's place in the process's descriptor budget.
    _slot: UdpSlot,
    label: String,
    state: Arc<BackendState>,
    _active: ActiveGuard,
    started: Instant,
    bytes_in: Cell<u64>,
    bytes_out: Cell<u64>,
}

impl Leg {
    fn record(&self, client: SocketAddr, end: EndReason) -> Record<'_> {
        Record {
            client,
            backend: &self.label,
            duration: self.started.elapsed(),
            bytes_in: self.bytes_in.get(),
            bytes_out: self.bytes_out.get(),
            outcome: Outcome::Ended(end),
            tls: None,
        }
    }
}

fn connected_socket(addr: SocketAddr) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    // A UDP connect only sets the default peer and the local port: it does not block.
    socket.connect(&SockAddr::from(addr))?;
    Ok(socket)
}

/// Cancel whatever is pending on a socket we are done with; the op keeps it open meanwhile.
fn cancel_socket(socket: Rc<Socket>) {
    tokio_uring::spawn(async move {
        uring::cancel_all(socket.as_raw_fd()).await;
        drop(socket);
    });
}

/// Client → backend: one recvmsg at a time on the listener socket, buffer reused.
async fn receive_loop(local: Rc<UdpWorkerListener>) {
    // A process started by a live upgrade receives only once it has the old one's sessions.
    local.ctx.udp_open.wait().await;
    let mut d = Dgram::new();
    while !local.finished.get() {
        let (res, back) = ops::recvmsg(&local.socket, d, MAX_DATAGRAM).await;
        d = back;
        match res {
            Ok(meta) if meta.truncated => {
                local.counters().udp_drops_truncated.add(1);
                log::debug!(
                    "listener {}: {}-byte datagram from {:?} truncated: dropped",
                    local.listener.name,
                    meta.len,
                    meta.source
                );
            }
            Ok(meta) => {
                let Some(client) = meta.source else { continue };
                let Some((session, start)) = local.route(&mut d, client, meta.destination) else {
                    continue;
                };
                if local.sends_in_flight.get() < SENDS_IN_FLIGHT_MAX {
                    // Send from a task of its own and receive the next datagram at once: the
                    // send and the next recvmsg go to the kernel in one submission.
                    local.sends_in_flight.set(local.sends_in_flight.get() + 1);
                    let next = local.take_dgram();
                    let local2 = Rc::clone(&local);
                    tokio_uring::spawn(async move {
                        let d = local2.send_upstream(&session, d, start, meta.len).await;
                        local2.put_dgram(d);
                        local2.sends_in_flight.set(local2.sends_in_flight.get() - 1);
                    });
                    d = next;
                } else {
                    d = local.send_upstream(&session, d, start, meta.len).await;
                }
            }
            Err(_) if local.finished.get() => break,
            Err(e) if e.raw_os_error() == Some(libc::ECANCELED) => {}
            Err(e) => {
                log::warn!("listener {}: recvmsg failed: {e}", local.listener.name);
                tokio::time::sleep(ERROR_PAUSE).await;
            }
        }
    }
    log::debug!(
        "listener {}: worker {} stopped receiving",
        local.listener.name,
        local.worker
    );
}

/// Backend → client for one leg: wait for readiness (no buffer held while idle), then
/// drain what is queued with pooled buffers, answering from the listener socket.
async fn upstream_loop(local: Rc<UdpWorkerListener>, session: Rc<Session>, socket: Rc<Socket>) {
    // Request/response traffic brings one reply per wake-up: probing for a second one
    // costs a recv that fails with EAGAIN. Probe only while replies come in bursts, and
    // re-check every PROBE_EVERY wake-ups whether they do.
    let mut bursty = true;
    let mut wakeups = 0u32;
    'outer: while session.is_current(&socket) {
        if let Err(e) = uring::poll(&socket, libc::POLLIN as u32).await {
            if e.raw_os_error() != Some(libc::ECANCELED) {
                log::debug!(
                    "listener {}: upstream poll failed: {e}",
                    local.listener.name
                );
            }
            break;
        }
        wakeups = wakeups.wrapping_add(1);
        let probe = bursty || wakeups & (PROBE_EVERY - 1) == 0;
        let mut received = 0u32;
        let mut d = local.take_dgram();
        loop {
            if received == 1 && !probe {
                break;
            }
            if !session.is_current(&socket) {
                local.put_dgram(d);
                break 'outer;
            }
            let (res, back) = ops::recv_dontwait(&socket, d).await;
            d = back;
            match res {
                Ok(n) if n > MAX_DATAGRAM => {
                    local.counters().udp_drops_truncated.add(1);
                }
                Ok(n) => {
                    received += 1;
                    if received == 2 {
                        bursty = true;
                    }
                    session.last.set(local.now_ms.get());
                    let (res, back) =
                        ops::sendmsg_to(&local.socket, d, n, session.client, session.reply_from)
                            .await;
                    d = back;
                    let c = local.counters();
                    match res {
                        Ok(_) => {
                            c.udp_datagrams_out.add(1);
                            c.bytes_out.add(n as u64);
                            session.add_out(n);
                        }
                        Err(e) => {
                            c.udp_drops_send_error.add(1);
                            log::debug!(
                                "listener {}: reply to {} dropped: {e}",
                                local.listener.name,
                                session.client
                            );
                        }
                    }
                }
                Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => {
                    if received == 1 {
                        bursty = false;
                    }
                    break;
                }
                Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => {
                    // ICMP port unreachable: the backend's port is closed. A passive
                    // failure for the prober; the session moves on its next datagram
                    // (unless it has already moved off this socket's backend).
                    if session.is_current(&socket) {
                        session.leg.borrow().state.record_connect_failure();
                        session.refused.set(true);
                    }
                }
                Err(e) => {
                    if e.raw_os_error() != Some(libc::ECANCELED) {
                        log::debug!(
                            "listener {}: upstream recv failed: {e}",
                            local.listener.name
                        );
                    }
                    local.put_dgram(d);
                    break 'outer;
                }
            }
        }
        local.put_dgram(d);
    }
}

/// Expiry sweep, drain and cut for one listener on this worker.
async fn sweep_loop(local: Rc<UdpWorkerListener>) {
    let cut = local.ctx.cut.wait();
    tokio::pin!(cut);
    loop {
        // Always UDP settings (see create_session); without them no session exists to
        // expire, and the drain quiet time is as good an interval as any.
        let mut timeout = local
            .listener
            .settings
            .load()
            .udp()
            .map_or(DRAIN_QUIET, |u| u.session_timeout);
        if local.draining.get() {
            timeout = timeout.min(DRAIN_QUIET);
        }
        let interval = table::sweep_interval(timeout);
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = local.wake.notified() => {}
            _ = &mut cut => {
                local.end_all(EndReason::DrainCut);
                local.finish().await;
                return;
            }
        }
        if local.finished.get() {
            local.end_all(EndReason::DrainCut);
            return;
        }
        let now = local.epoch.elapsed().as_millis() as u64;
        local.now_ms.set(now);
        let expired = local.table.borrow_mut().expire(now, timeout, interval);
        for (_, session) in expired {
            local.end_session(&session, EndReason::Expired);
        }
        if local.draining.get() && local.table.borrow().is_empty() {
            local.finish().await;
            return;
        }
    }
}
