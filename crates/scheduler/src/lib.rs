//! ringlb-scheduler: which backend a new TCP connection or UDP session goes to.
//!
//! Owns: immutable backend-set snapshots published by an atomic pointer swap, per-backend
//! live state in atomics ([`BackendState`]), and every balancing algorithm of the contract.
//! Must not: open sockets, read clocks, use a global RNG, take locks on the pick path.
//! Time and randomness come in as arguments.
//!
//! PUBLIC API (other crates code against exactly this; extend, don't break):
//! ```ignore
//! pub struct BackendSpec { pub addr: SocketAddr, pub label: String, pub weight: u32,
//!                          pub max_connections: u32, pub backup: bool }
//! impl From<&ringlb_config::Backend> for BackendSpec
//! pub struct Backend { pub spec: BackendSpec, pub state: Arc<BackendState> }
//! pub struct Scheduler;                         // one per listener, Send + Sync
//! impl Scheduler {
//!     pub fn new(algorithm: Algorithm, specs: Vec<BackendSpec>) -> Scheduler;
//!     /// Reload: new snapshot; states of backends with the same `label` carry over.
//!     pub fn reconfigure(&self, algorithm: Algorithm, specs: Vec<BackendSpec>);
//!     /// Health changed (prober): rebuild tables that depend on the up set.
//!     pub fn health_changed(&self);
//!     pub fn snapshot(&self) -> Arc<Snapshot>;
//! }
//! impl Snapshot {
//!     pub fn algorithm(&self) -> Algorithm;
//!     pub fn backends(&self) -> &[Backend];
//!     /// `random`: caller-supplied randomness; `tried`: backends already tried for this
//!     /// connection (never picked again). None = no candidate.
//!     pub fn pick(&self, client: IpAddr, random: u64, tried: &Tried) -> Option<usize>;
//! }
//! pub struct Tried;  // small set of backend indices: new(), insert(i), contains(i), len()
//! ```
//!
//! Additions: [`AdminState`] with [`BackendState::set_admin_state`],
//! [`BackendState::set_weight_override`], [`Scheduler::admin_changed`],
//! [`Backend::admin_state`] and [`Backend::effective_weight`] (the operator's drain,
//! maintenance and weight); [`Scheduler::for_listener`] / [`Scheduler::reconfigure_from`] (from a
//! validated listener), [`explain`] (what `ringlb explain` prints),
//! [`Snapshot::is_candidate`], [`Snapshot::maglev_table_size`], [`Snapshot::maglev_slot_counts`],
//! [`Backend::try_acquire`] / [`BackendState::try_acquire`] (a hard `max_connections`),
//! [`client_hash`] (the fixed hash `source_hash` and `maglev` use).
//!
//! Algorithms, guarantees, tie-breaking and figures: `docs/scheduler.md`.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

mod explain;
mod failure;
mod hash;
mod snapshot;
mod state;
mod tables;
mod tried;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use ringlb_config::{Algorithm, Listener};

pub use explain::{explain, pins_clients, Chosen, Explanation};
pub use failure::ConnectFailure;
pub use hash::client_hash;
pub use snapshot::{Snapshot, DYNAMIC_WEIGHT_CAPACITY_PER_WEIGHT};
pub use state::{ActiveGuard, AdminState, BackendState};
pub use tables::{maglev_table_size, MAGLEV_DEFAULT_SIZE};
pub use tried::Tried;

/// What the configuration says about one backend.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BackendSpec {
    pub addr: SocketAddr,
    /// `addr` exactly as written in the config: identity across reloads, metric label,
    /// and the maglev permutation key.
    pub label: String,
    /// As configured: 0 means drained (no new connections; see [`Backend::admin_state`]).
    /// Tables treat any weight below 1 as 1.
    pub weight: u32,
    /// 0 = unlimited.
    pub max_connections: u32,
    /// Serves only while no primary backend is up.
    pub backup: bool,
}

impl From<&ringlb_config::Backend> for BackendSpec {
    fn from(b: &ringlb_config::Backend) -> Self {
        BackendSpec {
            addr: b.addr,
            label: b.label.clone(),
            weight: b.weight,
            max_connections: b.max_connections,
            backup: b.backup,
        }
    }
}

/// What a listener's configuration says about its backends, in file order.
fn specs(listener: &Listener) -> Vec<BackendSpec> {
    listener.backends.iter().map(BackendSpec::from).collect()
}

/// A backend of one snapshot: its configuration and its live state, which is shared with
/// every other snapshot that has a backend of the same label.
#[derive(Debug, Clone)]
pub struct Backend {
    pub spec: BackendSpec,
    pub state: Arc<BackendState>,
}

impl Backend {
    /// The weight in use: the operator's override if set, else the configured one.
    pub fn effective_weight(&self) -> u32 {
        self.state.weight_override().unwrap_or(self.spec.weight)
    }

    /// The admin state in effect: the operator's, except that a `ready` backend whose
    /// effective weight is 0 is drained (`weight: 0` in the file means drained).
    pub fn admin_state(&self) -> AdminState {
        match self.state.admin_state() {
            AdminState::Ready if self.effective_weight() == 0 => AdminState::Drain,
            state => state,
        }
    }

    /// Counts a connection against this backend unless it is at `max_connections`.
    pub fn try_acquire(&self) -> Option<ActiveGuard> {
        self.state.try_acquire(self.spec.max_connections)
    }
}

/// The backend selector of one listener. `Send + Sync`; workers call
/// [`snapshot`](Self::snapshot) and pick without locks. The writers (reload, health
/// changes) serialise among themselves on a mutex that no pick ever touches.
#[derive(Debug)]
pub struct Scheduler {
    current: ArcSwap<Snapshot>,
    writer: Mutex<()>,
}

impl Scheduler {
    pub fn new(algorithm: Algorithm, specs: Vec<BackendSpec>) -> Scheduler {
        let backends = specs
            .into_iter()
            .map(|spec| Backend {
                spec,
                state: Arc::new(BackendState::new()),
            })
            .collect();
        Scheduler {
            current: ArcSwap::from_pointee(Snapshot::build(algorithm, backends, None)),
            writer: Mutex::new(()),
        }
    }

    /// A scheduler for a validated listener: its algorithm over its backends, in file order.
    pub fn for_listener(listener: &Listener) -> Scheduler {
        Scheduler::new(listener.algorithm, specs(listener))
    }

    /// [`reconfigure`](Self::reconfigure) to a validated listener's algorithm and backends.
    pub fn reconfigure_from(&self, listener: &Listener) {
        self.reconfigure(listener.algorithm, specs(listener));
    }

    /// Reload: publishes a new snapshot. A backend whose `label` was already present keeps
    /// its `Arc<BackendState>` (health, active connections, failure count); new labels start
    /// up with zero connections. Snapshots already handed out stay valid and unchanged.
    pub fn reconfigure(&self, algorithm: Algorithm, specs: Vec<BackendSpec>) {
        let _writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let old = self.current.load_full();
        let mut carried: std::collections::HashMap<&str, &Arc<BackendState>> = old
            .backends()
            .iter()
            .map(|b| (b.spec.label.as_str(), &b.state))
            .collect();
        let backends = specs
            .into_iter()
            .map(|spec| {
                // `remove`: a label listed twice must not share one counter.
                let state = carried
                    .remove(spec.label.as_str())
                    .map(Arc::clone)
                    .unwrap_or_else(|| Arc::new(BackendState::new()));
                Backend { spec, state }
            })
            .collect();
        self.current
            .store(Arc::new(Snapshot::build(algorithm, backends, None)));
    }

    /// Called after the prober flips a backend's up flag: rebuilds the tables that depend
    /// on the up set (maglev, the round-robin ring and schedule, the random weights) and
    /// publishes them. A no-op when the flags match the ones the current tables were built
    /// from. Until it runs, picks still never return a down backend (live check + fallback).
    pub fn health_changed(&self) {
        let _writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let old = self.current.load_full();
        if !old.health_differs() {
            return;
        }
        let rebuilt = Snapshot::build(old.algorithm(), old.backends().to_vec(), Some(&old));
        self.current.store(Arc::new(rebuilt));
    }

    /// Called after the operator changed a backend's admin state or weight override (see
    /// [`BackendState::set_admin_state`]): rebuilds every table from scratch, since a new
    /// weight changes even the health-independent ones (the maglev permutation fill).
    /// Picks refuse a backend that is not `ready` from the moment its state is set.
    pub fn admin_changed(&self) {
        let _writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let old = self.current.load_full();
        let rebuilt = Snapshot::build(old.algorithm(), old.backends().to_vec(), None);
        self.current.store(Arc::new(rebuilt));
    }

    /// The current snapshot. Keep it for the life of the connection (and its retries).
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn shared_types_are_send_sync() {
        assert_send_sync::<Scheduler>();
        assert_send_sync::<Snapshot>();
        assert_send_sync::<Backend>();
        assert_send_sync::<Tried>();
    }
}
