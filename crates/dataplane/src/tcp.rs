//! TCP: the accept loop of one listener on one worker, and the per-connection path
//! accept → allow-list → listener limit → pick → connect (timeout, retries) → relay.

use std::cell::{Cell, RefCell};
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use ringlb_config::{ProxyProtocol, TcpSettings};
use ringlb_scheduler::{ActiveGuard, Snapshot, Tried};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::listener::{is_allowed, Admission, ListenerShared};
use crate::proxy_protocol;
use crate::ratelog::RateLog;
use crate::relay::{self, RelayReport};
use crate::stats::{new_latency_histogram, DenyReason};
use crate::uring;
use crate::worker::WorkerCtx;

/// First back-off after an accept failed for lack of resources; doubles up to the max.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// A listener's socket on this worker; `stop` ends its accept loop.
pub(crate) struct TcpAcceptor {
    pub(crate) socket: Rc<Socket>,
    pub(crate) stopped: Cell<bool>,
    /// The listener new connections belong to; replaced when a reload renames the
    /// listener on the same bind, so the socket (and its queued SYNs) carries over.
    pub(crate) local: RefCell<Rc<LocalListener>>,
}

impl TcpAcceptor {
    pub(crate) async fn stop(&self) {
        self.stopped.set(true);
        uring::cancel_all(self.socket.as_raw_fd()).await;
    }
}

/// This worker's view of one listener: the shared state plus worker-local latency samples.
pub(crate) struct LocalListener {
    pub(crate) shared: Arc<ListenerShared>,
    /// Out-of-fds lines (accept or backend socket): a flood must not flood the log.
    resource_log: RateLog,
    connect_latency: RefCell<Histogram<u64>>,
    unpublished: Cell<bool>,
}

impl LocalListener {
    pub(crate) fn new(shared: Arc<ListenerShared>) -> Self {
        LocalListener {
            shared,
            resource_log: RateLog::default(),
            connect_latency: RefCell::new(new_latency_histogram()),
            unpublished: Cell::new(false),
        }
    }

    fn record_connect(&self, elapsed: Duration) {
        let micros = (elapsed.as_micros() as u64).clamp(1, 60_000_000);
        if let Ok(mut h) = self.connect_latency.try_borrow_mut() {
            let _ = h.record(micros);
            self.unpublished.set(true);
        }
    }

    /// Publish a copy of the latency histogram for the admin endpoint (called ~1/s).
    pub(crate) fn publish(&self, worker: usize) {
        if !self.unpublished.replace(false) {
            return;
        }
        if let (Ok(h), Some(counters)) = (
            self.connect_latency.try_borrow(),
            self.shared.workers.get(worker),
        ) {
            counters.connect_latency.publish(h.clone());
        }
    }
}

pub(crate) async fn accept_loop(ctx: Rc<WorkerCtx>, acceptor: Rc<TcpAcceptor>) {
    let mut backoff = ACCEPT_BACKOFF_MIN;
    while !acceptor.stopped.get() {
        let result = uring::accept(&acceptor.socket).await;
        let local = Rc::clone(&acceptor.local.borrow());
        let name = &local.shared.name;
        match result {
            Ok((client, peer)) => {
                backoff = ACCEPT_BACKOFF_MIN;
                let Some(peer) = peer.as_socket() else {
                    continue;
                };
                let ctx2 = Rc::clone(&ctx);
                let local2 = Rc::clone(&local);
                tokio_uring::spawn(async move { serve(ctx2, local2, client, peer).await });
            }
            Err(e) if acceptor.stopped.get() || e.raw_os_error() == Some(libc::ECANCELED) => break,
            Err(e) if is_resource_exhaustion(&e) => {
                // Out of fds or memory: the pending connection stays queued, so retrying at
                // once would spin. Back off, count, and log at most every few seconds.
                if let Some(c) = local.shared.workers.get(ctx.id) {
                    c.denied(DenyReason::Resources).add(1);
                }
                local.resource_log.note(log::Level::Error, name, || {
                    format!("accept failed: {e}; backing off {backoff:?}")
                });
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
            }
            // The client gave up before we accepted it: nothing to do.
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ECONNABORTED) | Some(libc::EINTR)
                ) => {}
            Err(e) => {
                log::warn!("listener {name}: accept failed: {e}");
                tokio::time::sleep(ACCEPT_BACKOFF_MIN).await;
            }
        }
    }
    log::debug!(
        "listener {}: worker {} stopped accepting",
        acceptor.local.borrow().shared.name,
        ctx.id
    );
}

fn is_resource_exhaustion(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE) | Some(libc::ENFILE) | Some(libc::ENOBUFS) | Some(libc::ENOMEM)
    )
}

/// Close a client we will not serve with a reset: it learns at once, and no TIME_WAIT is left here.
fn reject(client: Socket) {
    let _ = client.set_linger(Some(Duration::ZERO));
    drop(client);
}

async fn serve(ctx: Rc<WorkerCtx>, local: Rc<LocalListener>, client: Socket, peer: SocketAddr) {
    let shared = &local.shared;
    let Some(counters) = shared.workers.get(ctx.id) else {
        return reject(client);
    };
    let settings = shared.settings.load_full();
    // Only TCP listeners get a TCP accept loop, so this cannot fail; were it to, the
    // client is refused rather than served with settings of another protocol.
    let Some(tcp_settings) = settings.tcp() else {
        debug_assert!(false, "listener {} has no tcp settings", shared.name);
        return reject(client);
    };
    let started = Instant::now();
    if !is_allowed(&settings, &peer) {
        counters.denied(DenyReason::NotAllowed).add(1);
        access_denied(shared, &peer, DenyReason::NotAllowed);
        return reject(client);
    }
    if !shared.try_admit(settings.max_connections) {
        counters.denied(DenyReason::Limit).add(1);
        access_denied(shared, &peer, DenyReason::Limit);
        return reject(client);
    }
    let _admission = Admission(shared);
    let _live = ctx.enter();
    counters.connections.add(1);

    // The snapshot this connection was balanced with; it also names the backend in the
    // access log, so no label is copied per connection.
    let snapshot = shared.scheduler.snapshot();
    let (backend, index, _active) =
        match connect_backend(&local, &snapshot, tcp_settings, peer, &ctx).await {
            Ok(connected) => connected,
            Err(reason) => {
                counters.denied(reason).add(1);
                access_denied(shared, &peer, reason);
                return reject(client);
            }
        };
    let client = Rc::new(client);
    let backend = Rc::new(backend);
    if let Some(header) = proxy_header(settings.proxy_protocol, peer, || {
        // The address this client actually reached (a wildcard bind has many).
        client
            .local_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .unwrap_or(shared.bound)
    }) {
        let (res, _) = uring::send_all(&backend, header).await;
        if res.is_err() {
            let _ = backend.set_linger(Some(Duration::ZERO));
            let _ = client.set_linger(Some(Duration::ZERO));
            return;
        }
    }
    let report = relay::relay(
        Rc::clone(&client),
        Rc::clone(&backend),
        tcp_settings.forwarding,
        tcp_settings.idle_timeout,
        counters,
        &ctx.cut,
        &ctx.pipes,
    )
    .await;
    let label = snapshot
        .backends()
        .get(index)
        .map_or("-", |b| b.spec.label.as_str());
    access_finished(shared, &peer, label, started, &report);
}

/// `local` is asked only when a header is sent: it costs a getsockname.
fn proxy_header(
    mode: ProxyProtocol,
    client: SocketAddr,
    local: impl FnOnce() -> SocketAddr,
) -> Option<Vec<u8>> {
    match mode {
        ProxyProtocol::None => None,
        ProxyProtocol::V1 => Some(proxy_protocol::v1(client, local())),
        ProxyProtocol::V2 => Some(proxy_protocol::v2(
            client,
            local(),
            proxy_protocol::Transport::Stream,
        )),
    }
}

/// Pick and connect, retrying on other backends until `connect_attempts` distinct backends
/// were tried. Nothing has been forwarded yet, so a retry is always safe here.
/// The error says why the client is turned away.
/// On success: the connected socket, the backend's index in `snapshot`, its slot.
async fn connect_backend(
    local: &LocalListener,
    snapshot: &Snapshot,
    settings: &TcpSettings,
    peer: SocketAddr,
    ctx: &WorkerCtx,
) -> Result<(Socket, usize, ActiveGuard), DenyReason> {
    let mut tried = Tried::new();
    let mut attempts = 0;
    while attempts < settings.connect_attempts {
        let (index, active) = snapshot
            .pick_and_acquire(peer.ip().to_canonical(), ctx.random(), &mut tried)
            .ok_or(DenyReason::NoBackend)?;
        let backend = snapshot
            .backends()
            .get(index)
            .ok_or(DenyReason::NoBackend)?;
        attempts += 1;
        let started = Instant::now();
        match connect(backend.spec.addr, settings.connect_timeout).await {
            Ok(socket) => {
                local.record_connect(started.elapsed());
                return Ok((socket, index, active));
            }
            Err(ConnectError::Backend(why)) => {
                backend.state.record_connect_failure();
                log::debug!(
                    "listener {}: connect to {} failed: {why}; {} attempt(s) left",
                    local.shared.name,
                    backend.spec.label,
                    settings.connect_attempts.saturating_sub(attempts)
                );
            }
            Err(ConnectError::Local(e)) => {
                local
                    .resource_log
                    .note(log::Level::Error, &local.shared.name, || {
                        format!("cannot open a socket toward {}: {e}", backend.spec.label)
                    });
                return Err(DenyReason::Resources);
            }
        }
    }
    Err(DenyReason::NoBackend)
}

enum ConnectError {
    /// The backend refused, timed out or is unreachable: counts against the backend.
    Backend(String),
    /// Our side failed (fd or memory exhaustion): not the backend's fault.
    Local(io::Error),
}

async fn connect(addr: SocketAddr, timeout: Duration) -> Result<Socket, ConnectError> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
        .map_err(ConnectError::Local)?;
    let _ = socket.set_nodelay(true);
    let socket = Rc::new(socket);
    let outcome = {
        let attempt = uring::connect(&socket, SockAddr::from(addr));
        tokio::pin!(attempt);
        match tokio::time::timeout(timeout, &mut attempt).await {
            Ok(res) => res.map_err(|e| ConnectError::Backend(e.to_string())),
            Err(_) => {
                // Cancel the pending connect so the socket is really gone, then report.
                uring::cancel_all(socket.as_raw_fd()).await;
                let _ = attempt.await;
                Err(ConnectError::Backend(format!(
                    "timed out after {timeout:?}"
                )))
            }
        }
    };
    outcome?;
    Rc::try_unwrap(socket)
        .map_err(|_| ConnectError::Local(io::Error::other("connect socket still shared")))
}

fn access_denied(shared: &ListenerShared, peer: &SocketAddr, reason: DenyReason) {
    if shared.access_log.load(std::sync::atomic::Ordering::Relaxed) {
        log::info!(
            target: "ringlb::access",
            "listener={} client={peer} backend=- duration_ms=0 bytes_in=0 bytes_out=0 end=denied_{}",
            shared.name,
            reason.as_str()
        );
    }
}

fn access_finished(
    shared: &ListenerShared,
    peer: &SocketAddr,
    backend: &str,
    started: Instant,
    report: &RelayReport,
) {
    if shared.access_log.load(std::sync::atomic::Ordering::Relaxed) {
        log::info!(
            target: "ringlb::access",
            "listener={} client={peer} backend={backend} duration_ms={} bytes_in={} bytes_out={} end={}",
            shared.name,
            started.elapsed().as_millis(),
            report.bytes_client_to_backend,
            report.bytes_backend_to_client,
            report.end.as_str()
        );
    }
}
