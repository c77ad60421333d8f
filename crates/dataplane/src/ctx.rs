//! The per-worker context every task on a worker shares: its id, the count of live
//! connections and sessions (what a drain waits for), the shutdown cut, the connections'
//! end requests, cheap randomness for the scheduler and the splice pipe pool. The bottom layer of the data plane: it
//! imports nothing from the listeners, the relay or the worker loop.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use crossbeam_channel::Sender;
use tokio::sync::Notify;

use crate::buffers::BufferPool;
use crate::ending::EndRegistry;
use crate::handover::Moved;
use crate::pipes::PipePool;
use crate::records::ConnIds;

/// Worker-local context shared by every task on this worker (single thread: `Cell`s).
pub(crate) struct WorkerCtx {
    pub(crate) id: usize,
    /// Live TCP connections and UDP sessions on this worker.
    live: Cell<usize>,
    /// The most `live` has been since the last memory trim (see `memory.rs`).
    peak: Cell<usize>,
    /// Woken when `live` drops to zero.
    idle: Notify,
    /// The shutdown cut: every relay resets its link, every UDP listener ends its sessions.
    pub(crate) cut: Cut,
    /// Relaying TCP connections by backend, for the control plane's end requests.
    pub(crate) ends: EndRegistry,
    rng: Cell<u64>,
    /// Connection ids (`records`).
    pub(crate) ids: ConnIds,
    /// Empty splice pipes for reuse.
    pub(crate) pipes: PipePool,
    /// Spare working copy buffers.
    pub(crate) buffers: BufferPool,
    /// Live TCP connections (a subset of `live`): what a live upgrade waits to move.
    relays: Cell<usize>,
    relays_idle: Notify,
    /// A live upgrade is taking the connections: every relay freezes and is sent here.
    pub(crate) handover: Cut,
    pub(crate) moved: RefCell<Option<Sender<Moved>>>,
    /// Fired (open) unless a live upgrade is still bringing this process the old one's UDP
    /// sessions: until then UDP receive loops wait, and datagrams queue in the sockets.
    pub(crate) udp_open: Cut,
}

impl WorkerCtx {
    pub(crate) fn new(id: usize) -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
            ^ (id as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        WorkerCtx {
            id,
            live: Cell::new(0),
            peak: Cell::new(0),
            idle: Notify::new(),
            cut: Cut::default(),
            ends: EndRegistry::default(),
            rng: Cell::new(seed | 1),
            ids: ConnIds::new(id, seed.wrapping_mul(0x2545_F491_4F6C_DD1D)),
            pipes: PipePool::new(),
            buffers: BufferPool::new(),
            relays: Cell::new(0),
            relays_idle: Notify::new(),
            handover: Cut::default(),
            moved: RefCell::new(None),
            udp_open: {
                let open = Cut::default();
                open.fire();
                open
            },
        }
    }

    /// Count a live TCP connection until the guard drops (it also counts as live).
    pub(crate) fn enter_relay(self: &Rc<Self>) -> RelayGuard {
        self.relays.set(self.relays.get() + 1);
        RelayGuard(self.enter())
    }

    /// Returns once no TCP connection is live on this worker.
    pub(crate) async fn wait_no_relays(&self) {
        while self.relays.get() > 0 {
            self.relays_idle.notified().await;
        }
    }

    /// xorshift64*: cheap per-worker randomness for the scheduler (no locks, no syscalls).
    pub(crate) fn random(&self) -> u64 {
        let mut x = self.rng.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng.set(x);
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Count a live connection/session until the guard drops.
    pub(crate) fn enter(self: &Rc<Self>) -> LiveGuard {
        let live = self.live.get() + 1;
        self.live.set(live);
        self.peak.set(self.peak.get().max(live));
        LiveGuard(Rc::clone(self))
    }

    pub(crate) fn live(&self) -> usize {
        self.live.get()
    }

    pub(crate) fn peak_live(&self) -> usize {
        self.peak.get()
    }

    /// Start a new peak from the current count (after a memory trim).
    pub(crate) fn reset_peak(&self) {
        self.peak.set(self.live.get());
    }

    /// Returns once no connection or session is live on this worker.
    pub(crate) async fn wait_idle(&self) {
        while self.live.get() > 0 {
            self.idle.notified().await;
        }
    }
}

/// The shutdown cut: fired once, and seen by every waiter, including those that start
/// waiting afterwards (a connection that was still connecting when it fired).
#[derive(Default)]
pub(crate) struct Cut {
    fired: Cell<bool>,
    notify: Notify,
}

impl Cut {
    /// Undo a fire: waiters from now on wait again (an upgrade that was called off).
    pub(crate) fn reset(&self) {
        self.fired.set(false);
    }

    pub(crate) fn fire(&self) {
        self.fired.set(true);
        self.notify.notify_waiters();
    }

    pub(crate) async fn wait(&self) {
        // One thread: nothing can fire between this check and the first poll below.
        if self.fired.get() {
            return;
        }
        self.notify.notified().await;
    }
}

/// One live connection or session; the worker's drain waits until every guard dropped.
pub(crate) struct LiveGuard(Rc<WorkerCtx>);

impl Drop for LiveGuard {
    fn drop(&mut self) {
        let live = self.0.live.get().saturating_sub(1);
        self.0.live.set(live);
        if live == 0 {
            self.0.idle.notify_waiters();
        }
    }
}

/// One live TCP connection; see [`WorkerCtx::enter_relay`].
pub(crate) struct RelayGuard(LiveGuard);

impl Drop for RelayGuard {
    fn drop(&mut self) {
        let ctx = &self.0 .0;
        let relays = ctx.relays.get().saturating_sub(1);
        ctx.relays.set(relays);
        if relays == 0 {
            ctx.relays_idle.notify_waiters();
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Runs `f` on a current-thread runtime with timers.
    pub(crate) fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .map(|rt| rt.block_on(f))
            .unwrap_or_else(|e| panic!("test runtime: {e}"))
    }

    #[test]
    fn live_count_follows_guards_and_wakes_idle_waiters() {
        let ctx = Rc::new(WorkerCtx::new(0));
        let a = ctx.enter();
        let b = ctx.enter();
        assert_eq!(ctx.live(), 2);
        drop(a);
        assert_eq!(ctx.live(), 1);
        assert_eq!(ctx.peak_live(), 2, "the peak stays until reset");
        ctx.reset_peak();
        assert_eq!(ctx.peak_live(), 1);
        block_on(async {
            let waiter = ctx.wait_idle();
            tokio::pin!(waiter);
            // Still one live guard: the waiter must not complete.
            assert!(futures_poll_once(&mut waiter).await.is_none());
            drop(b);
            tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
                .await
                .unwrap_or_else(|_| panic!("wait_idle did not return after the last guard"));
        });
        assert_eq!(ctx.live(), 0);
    }

    #[test]
    fn cut_is_seen_by_late_waiters() {
        let cut = Cut::default();
        block_on(async {
            let early = cut.wait();
            tokio::pin!(early);
            assert!(futures_poll_once(&mut early).await.is_none());
            cut.fire();
            early.await;
            // A connection that starts waiting after the cut sees it at once.
            tokio::time::timeout(std::time::Duration::from_secs(5), cut.wait())
                .await
                .unwrap_or_else(|_| panic!("late waiter missed the cut"));
        });
    }

    #[test]
    fn random_is_not_constant() {
        let ctx = WorkerCtx::new(3);
        let draws: std::collections::HashSet<u64> = (0..64).map(|_| ctx.random()).collect();
        assert!(draws.len() > 60, "xorshift repeated itself: {draws:?}");
    }

    /// Poll a future once: `Some` if it completed.
    async fn futures_poll_once<F: std::future::Future + Unpin>(f: &mut F) -> Option<F::Output> {
        use std::task::Poll;
        std::future::poll_fn(|cx| match std::pin::Pin::new(&mut *f).poll(cx) {
            Poll::Ready(v) => Poll::Ready(Some(v)),
            Poll::Pending => Poll::Ready(None),
        })
        .await
    }
}
