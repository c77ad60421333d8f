//! TCP: one listener's socket on one worker and its accept loop. Each accepted client is
//! served by its own task (`conn`): accept → allow-list → listener limit → (with routes:
//! read the ClientHello and choose the pool, `inspect`) → pick → connect (timeout,
//! retries) → relay.

mod conn;
mod connect;
mod inspect;
mod sockopts;

use std::cell::{Cell, RefCell};
use std::io;
use std::os::fd::AsRawFd;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use socket2::Socket;

use crate::ctx::WorkerCtx;
use crate::handover::MovedConn;
use crate::listener::ListenerState;
use crate::outcome::DenyReason;
use crate::per_source::SourceGate;
use crate::ratelog::RateLog;
use crate::stats::new_latency_histogram;
use crate::uring;

/// First back-off after an accept failed for lack of resources; doubles up to the max.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// How often worker-local latency histograms are published for the admin endpoint.
const PUBLISH_INTERVAL: Duration = Duration::from_secs(1);

/// A TCP listener on one worker: its own SO_REUSEPORT socket and accept loop.
pub(crate) struct TcpListener {
    socket: Rc<Socket>,
    stopped: Cell<bool>,
    /// The listener new connections are accounted to; replaced when a reload renames the
    /// listener on the same bind, so the socket (and its queued SYNs) carries over.
    accounting: RefCell<Rc<Accounting>>,
}

impl TcpListener {
    /// Start accepting on `socket` (this worker's bound socket for `state`).
    pub(crate) fn start(
        ctx: &Rc<WorkerCtx>,
        state: Arc<ListenerState>,
        socket: Socket,
    ) -> Rc<Self> {
        let listener = Rc::new(TcpListener {
            socket: Rc::new(socket),
            stopped: Cell::new(false),
            accounting: RefCell::new(Rc::new(Accounting::new(state))),
        });
        tokio_uring::spawn(publish_loop(ctx.id, Rc::downgrade(&listener)));
        tokio_uring::spawn(accept_loop(Rc::clone(ctx), Rc::clone(&listener)));
        listener
    }

    /// Account new connections to `state` from now on; connections already accepted keep
    /// the accounting they started with.
    pub(crate) fn rename(&self, worker: usize, state: Arc<ListenerState>) {
        let previous = self.accounting.replace(Rc::new(Accounting::new(state)));
        previous.publish(worker);
    }

    /// Take over a connection the previous process froze in a live upgrade.
    pub(crate) fn adopt(&self, ctx: &Rc<WorkerCtx>, moved: MovedConn) {
        let ctx = Rc::clone(ctx);
        let accounting = self.accounting();
        tokio_uring::spawn(async move { conn::resume(ctx, accounting, moved).await });
    }

    /// Stop accepting; established connections go on.
    pub(crate) async fn stop(&self) {
        self.stopped.set(true);
        uring::cancel_all(self.socket.as_raw_fd()).await;
    }

    fn accounting(&self) -> Rc<Accounting> {
        Rc::clone(&self.accounting.borrow())
    }
}

/// Which listener this worker's connections count toward, plus its worker-local parts.
pub(crate) struct Accounting {
    pub(crate) state: Arc<ListenerState>,
    /// Out-of-fds lines (accept or backend socket): a flood must not flood the log.
    resource_log: RateLog,
    /// Keepalive / user-timeout options the kernel refused (`sockopts`).
    sockopt_log: RateLog,
    /// `per_source` admission and its log lines.
    sources: SourceGate,
    /// Where the next connection starts in the listener's `source` list.
    source_cursor: Cell<usize>,
    connect_latency: RefCell<Histogram<u64>>,
    unpublished: Cell<bool>,
}

impl Accounting {
    fn new(state: Arc<ListenerState>) -> Self {
        Accounting {
            state,
            resource_log: RateLog::default(),
            sockopt_log: RateLog::default(),
            sources: SourceGate::default(),
            source_cursor: Cell::new(0),
            connect_latency: RefCell::new(new_latency_histogram()),
            unpublished: Cell::new(false),
        }
    }

    /// Round robin over the source addresses, per worker (no shared cursor to bounce).
    fn next_source(&self) -> usize {
        let n = self.source_cursor.get();
        self.source_cursor.set(n.wrapping_add(1));
        n
    }

    fn record_connect(&self, elapsed: Duration) {
        let micros = (elapsed.as_micros() as u64).clamp(1, 60_000_000);
        if let Ok(mut h) = self.connect_latency.try_borrow_mut() {
            let _ = h.record(micros);
            self.unpublished.set(true);
        }
    }

    /// Publish a copy of the latency histogram for the admin endpoint (called ~1/s).
    fn publish(&self, worker: usize) {
        if !self.unpublished.replace(false) {
            return;
        }
        if let (Ok(h), Some(counters)) = (
            self.connect_latency.try_borrow(),
            self.state.workers.get(worker),
        ) {
            counters.connect_latency.publish(h.clone());
        }
    }
}

async fn accept_loop(ctx: Rc<WorkerCtx>, listener: Rc<TcpListener>) {
    let mut backoff = ACCEPT_BACKOFF_MIN;
    while !listener.stopped.get() {
        let result = uring::accept(&listener.socket).await;
        let accounting = listener.accounting();
        let name = &accounting.state.name;
        match result {
            Ok((client, peer)) => {
                backoff = ACCEPT_BACKOFF_MIN;
                let Some(peer) = peer.as_socket() else {
                    continue;
                };
                let ctx = Rc::clone(&ctx);
                tokio_uring::spawn(async move { conn::serve(ctx, accounting, client, peer).await });
            }
            Err(e) if listener.stopped.get() || e.raw_os_error() == Some(libc::ECANCELED) => break,
            Err(e) if is_resource_exhaustion(&e) => {
                // Out of fds or memory: the pending connection stays queued, so retrying at
                // once would spin. Back off, count, and log at most every few seconds.
                if let Some(c) = accounting.state.workers.get(ctx.id) {
                    c.denied(DenyReason::Resources).add(1);
                }
                accounting.resource_log.note(log::Level::Error, name, || {
                    format!(
                        "accept failed: {e}; backing off {backoff:?}; remedy: {}",
                        connect::remedy(&e)
                    )
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
        listener.accounting().state.name,
        ctx.id
    );
}

fn is_resource_exhaustion(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE) | Some(libc::ENFILE) | Some(libc::ENOBUFS) | Some(libc::ENOMEM)
    )
}

/// Publishes this worker's latency histogram for one listener until the listener stops,
/// and sweeps idle sources out of its `per_source` table a few shards at a time.
/// Holds the listener weakly so a stopped listener's socket closes at once.
async fn publish_loop(worker: usize, listener: Weak<TcpListener>) {
    loop {
        tokio::time::sleep(PUBLISH_INTERVAL).await;
        let Some(listener) = listener.upgrade() else {
            return;
        };
        if listener.stopped.get() {
            return;
        }
        let accounting = listener.accounting();
        accounting.publish(worker);
        let sources = &accounting.state.sources;
        sources.maintain(sources.time(Instant::now()));
    }
}
