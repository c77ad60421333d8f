//! State of one configured listener shared by the control plane and every worker.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use ringlb_config::Listener;
use ringlb_scheduler::Scheduler;

use crate::stats::WorkerCounters;

/// One listener as the workers see it. Created by the control plane; a reload that keeps
/// the listener (same name, bind and protocol) swaps `settings` and reconfigures the
/// scheduler in place, so counters, health and live connections carry over.
#[derive(Debug)]
pub struct ListenerShared {
    pub name: String,
    /// The address the sockets are actually bound to (port resolved when the config says 0).
    pub bound: SocketAddr,
    pub settings: ArcSwap<Listener>,
    pub scheduler: Arc<Scheduler>,
    /// Live TCP connections or UDP sessions across all workers (for `max_connections`).
    pub active: AtomicU32,
    pub access_log: AtomicBool,
    /// Index = worker id. Each worker writes only its own entry.
    pub workers: Vec<WorkerCounters>,
}

impl ListenerShared {
    pub fn new(
        settings: Listener,
        bound: SocketAddr,
        scheduler: Arc<Scheduler>,
        workers: usize,
        access_log: bool,
    ) -> Self {
        ListenerShared {
            name: settings.name.clone(),
            bound,
            settings: ArcSwap::from_pointee(settings),
            scheduler,
            active: AtomicU32::new(0),
            access_log: AtomicBool::new(access_log),
            workers: (0..workers).map(|_| WorkerCounters::default()).collect(),
        }
    }

    /// Sum one counter over the workers.
    pub fn total(&self, pick: impl Fn(&WorkerCounters) -> u64) -> u64 {
        self.workers.iter().map(pick).sum()
    }

    pub fn active(&self) -> u32 {
        self.active.load(Ordering::Relaxed)
    }

    /// Take one slot of `limit`; `false` means the listener is full.
    pub(crate) fn try_admit(&self, limit: u32) -> bool {
        let previous = self.active.fetch_add(1, Ordering::AcqRel);
        if previous >= limit {
            self.active.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        true
    }

    pub(crate) fn release(&self) {
        let previous = self.active.fetch_sub(1, Ordering::AcqRel);
        debug_assert!(previous > 0, "listener active count underflow");
    }
}

/// Holds one admitted slot of a listener; released on drop.
pub(crate) struct Admission<'a>(pub(crate) &'a ListenerShared);

impl Drop for Admission<'_> {
    fn drop(&mut self) {
        self.0.release();
    }
}

/// Whether `peer` passes the listener's source allow-list (empty: everyone).
pub(crate) fn is_allowed(settings: &Listener, peer: &SocketAddr) -> bool {
    if settings.allow.is_empty() {
        return true;
    }
    let ip = peer.ip().to_canonical();
    settings.allow.iter().any(|net| net.contains(&ip))
}
