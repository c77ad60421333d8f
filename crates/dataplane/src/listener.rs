//! The state of one configured listener that the control plane and every worker share:
//! its settings, scheduler, admission count and per-worker counters.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use ringlb_config::{Listener, Protocol};
use ringlb_persource::SourceTable;
use ringlb_scheduler::Scheduler;

use crate::outcome::{log_access, Record};
use crate::records::{log_end, ConnId};
use crate::routes::Routes;
use crate::stats::WorkerCounters;

/// One listener as the workers see it. Created by the control plane; a reload that keeps
/// the listener (same name, bind and protocol) swaps `settings` and reconfigures the
/// scheduler in place, so counters, health and live connections carry over.
#[derive(Debug)]
pub struct ListenerState {
    pub name: String,
    /// Fixed for the life of this state: a protocol change is a new listener.
    pub protocol: Protocol,
    /// The address the sockets are actually bound to (port resolved when the config says 0).
    pub bound: SocketAddr,
    pub settings: ArcSwap<Listener>,
    /// The default pool's: the listener's own backends.
    pub scheduler: Arc<Scheduler>,
    /// TCP `routes`: the other pools and the names that lead to them (empty without).
    pub routes: Routes,
    /// Live TCP connections or UDP sessions across all workers (for `max_connections`).
    pub active: AtomicU32,
    pub access_log: AtomicBool,
    /// TCP `per_source`: the sources every worker counts against. Kept by a reload of
    /// the listener whatever its limits become; empty while it has none.
    pub sources: SourceTable,
    /// Index = worker id. Each worker writes only its own entry.
    pub workers: Vec<WorkerCounters>,
}

impl ListenerState {
    pub fn new(
        settings: Listener,
        bound: SocketAddr,
        scheduler: Arc<Scheduler>,
        workers: usize,
        access_log: bool,
    ) -> Self {
        ListenerState {
            routes: Routes::new(&settings),
            name: settings.name.clone(),
            protocol: settings.protocol(),
            bound,
            settings: ArcSwap::from_pointee(settings),
            scheduler,
            active: AtomicU32::new(0),
            access_log: AtomicBool::new(access_log),
            sources: SourceTable::new(),
            workers: (0..workers).map(|_| WorkerCounters::default()).collect(),
        }
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

    /// Count one connection's or session leg's outcome on `counters` (the calling worker's)
    /// and write its access-log line when the access log is on.
    pub(crate) fn finish(&self, counters: &WorkerCounters, record: &Record) {
        self.finish_as(counters, record, None);
    }

    /// [`ListenerState::finish`] for a connection with connection records on: its line is
    /// the `end` record of `id`.
    pub(crate) fn finish_as(&self, counters: &WorkerCounters, record: &Record, id: Option<ConnId>) {
        counters.count(record.outcome);
        if self.access_log.load(Ordering::Relaxed) {
            match id {
                Some(id) => log_end(id, &self.name, record),
                None => log_access(&self.name, record),
            }
        }
    }

    pub(crate) fn release(&self) {
        let previous = self.active.fetch_sub(1, Ordering::AcqRel);
        debug_assert!(previous > 0, "listener active count underflow");
    }
}

/// Holds one admitted slot of a listener; released on drop.
pub(crate) struct Admission<'a>(pub(crate) &'a ListenerState);

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
