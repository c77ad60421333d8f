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
//! [`client_hash`] (the fixed hash `source_hash` and `maglev` use); learned stickiness:
//! [`Snapshot::sticky_target`] / [`Snapshot::sticky_remember`] /
//! [`Snapshot::pick_and_acquire_preferring`] on the connect path, and
//! [`Scheduler::sticky_tick`], `sticky_dump` / `sticky_restore`, `sticky_clear`,
//! `sticky_move` and `sticky_status` for the control plane ([`StickyTable`]).
//!
//! Algorithms, guarantees, tie-breaking and figures: `docs/scheduler.md`.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

mod explain;
mod failure;
mod hash;
mod snapshot;
mod state;
mod steer;
mod sticky;
mod tables;
mod tried;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use ringlb_config::{Algorithm, Listener, Steering};

pub use explain::{explain, pins_clients, Chosen, Explanation};
pub use failure::ConnectFailure;
pub use hash::client_hash;
pub use snapshot::{Snapshot, DYNAMIC_WEIGHT_CAPACITY_PER_WEIGHT};
pub use state::{ActiveGuard, AdminState, BackendState, FULL_RAMP};
pub use steer::{TierChange, TierRange, LATENCY_IDLE_HALF_LIFE, RAMP_FLOOR};
pub use sticky::{
    decode_dumps, encode_dumps, ActiveChange, DumpEntry, DumpError, KeyFilter, Remembered,
    StickyDump, StickyKey, StickyStatus, StickyTable, SLOT_BYTES,
};
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
    /// Tier: 0 first; later tiers serve while earlier ones have too few backends up.
    pub priority: u8,
}

impl From<&ringlb_config::Backend> for BackendSpec {
    fn from(b: &ringlb_config::Backend) -> Self {
        BackendSpec {
            addr: b.addr,
            label: b.label.clone(),
            weight: b.weight,
            max_connections: b.max_connections,
            priority: b.priority,
        }
    }
}

/// A listener's `stickiness` (TCP only).
fn stickiness_of(listener: &Listener) -> Option<ringlb_config::Stickiness> {
    listener.tcp().and_then(|tcp| tcp.stickiness)
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

    /// The effective weight scaled by its slow-start ramp: the share it is given now.
    pub fn current_weight(&self) -> f64 {
        f64::from(self.effective_weight()) * f64::from(self.state.ramp()) / f64::from(FULL_RAMP)
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

/// Where the scheduler's time comes from: a monotonic clock by default, a fake in tests.
pub type Clock = Arc<dyn Fn() -> Duration + Send + Sync>;

/// The monotonic clock a scheduler uses unless given another.
pub fn monotonic_clock() -> Clock {
    let start = Instant::now();
    Arc::new(move || start.elapsed())
}

/// The backend selector of one listener. `Send + Sync`; workers call
/// [`snapshot`](Self::snapshot) and pick without locks. The writers (reload, health
/// changes, the steering tick, the operator) serialise among themselves on a mutex that
/// no pick ever touches.
pub struct Scheduler {
    current: ArcSwap<Snapshot>,
    writer: Mutex<Writer>,
    clock: Clock,
}

/// What only writers touch.
struct Writer {
    steering: Steering,
    pin: Arc<steer::Pin>,
    steerer: steer::Steerer,
    sticky: Option<sticky::StickyState>,
}

impl std::fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduler")
            .field("current", &self.current)
            .finish_non_exhaustive()
    }
}

impl Scheduler {
    pub fn new(algorithm: Algorithm, specs: Vec<BackendSpec>) -> Scheduler {
        Scheduler::with_steering(algorithm, Steering::default(), specs, monotonic_clock())
    }

    /// A scheduler with tiers, failback and slow start as `steering` says, on `clock`.
    pub fn with_steering(
        algorithm: Algorithm,
        steering: Steering,
        specs: Vec<BackendSpec>,
        clock: Clock,
    ) -> Scheduler {
        let backends: Vec<Backend> = specs
            .into_iter()
            .map(|spec| Backend {
                spec,
                state: Arc::new(BackendState::new()),
            })
            .collect();
        let pin = Arc::new(steer::Pin::default());
        let scheduler = Scheduler {
            current: ArcSwap::from_pointee(Snapshot::build(
                algorithm,
                steering,
                Arc::clone(&pin),
                backends,
                None,
            )),
            writer: Mutex::new(Writer {
                steering,
                pin,
                steerer: steer::Steerer::default(),
                sticky: None,
            }),
            clock,
        };
        // Take the first look, so that the hold and the tiers in use start out known.
        scheduler.tick();
        scheduler
    }

    /// A scheduler for a validated listener: its algorithm over its backends, in file
    /// order, with its stickiness.
    pub fn for_listener(listener: &Listener) -> Scheduler {
        let scheduler = Scheduler::balancing(listener);
        scheduler.set_stickiness(stickiness_of(listener));
        scheduler
    }

    /// A listener's balancing alone, without a sticky table (`explain`).
    pub(crate) fn balancing(listener: &Listener) -> Scheduler {
        Scheduler::with_steering(
            listener.algorithm,
            listener.steering,
            specs(listener),
            monotonic_clock(),
        )
    }

    /// [`reconfigure`](Self::reconfigure) to a validated listener's algorithm, steering,
    /// backends and stickiness. The sticky table stays (resized, or emptied for a new key,
    /// when those changed), and so do the entries of backends that stay.
    pub fn reconfigure_from(&self, listener: &Listener) {
        self.apply_stickiness(stickiness_of(listener));
        self.reconfigure_with(listener.algorithm, Some(listener.steering), specs(listener));
    }

    /// Reload: publishes a new snapshot. A backend whose `label` was already present keeps
    /// its `Arc<BackendState>` (health, active connections, failure count); new labels start
    /// up with zero connections. Snapshots already handed out stay valid and unchanged.
    pub fn reconfigure(&self, algorithm: Algorithm, specs: Vec<BackendSpec>) {
        self.reconfigure_with(algorithm, None, specs);
    }

    /// [`reconfigure`](Self::reconfigure), with new steering settings when given. The
    /// failback hold survives.
    pub fn reconfigure_with(
        &self,
        algorithm: Algorithm,
        steering: Option<Steering>,
        specs: Vec<BackendSpec>,
    ) -> Option<TierChange> {
        let mut writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(steering) = steering {
            writer.steering = steering;
        }
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
        self.publish(&mut writer, algorithm, backends, None, true)
    }

    /// Called after the prober flips a backend's up flag: rebuilds the tables that depend
    /// on the up set (maglev, the round-robin ring and schedule, the random weights) and
    /// publishes them. A no-op when the flags match the ones the current tables were built
    /// from and steering has nothing new. Until it runs, picks still never return a down
    /// backend (live check + fallback). Returns a change of the tiers in use, to log.
    pub fn health_changed(&self) -> Option<TierChange> {
        let mut writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let old = self.current.load_full();
        self.publish(
            &mut writer,
            old.algorithm(),
            old.backends().to_vec(),
            Some(&old),
            false,
        )
    }

    /// Called after the operator changed a backend's admin state or weight override (see
    /// [`BackendState::set_admin_state`]): rebuilds every table from scratch, since a new
    /// weight changes even the health-independent ones (the maglev permutation fill).
    /// Picks refuse a backend that is not `ready` from the moment its state is set.
    pub fn admin_changed(&self) -> Option<TierChange> {
        let mut writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        self.rebuild(&mut writer)
    }

    /// The steering tick (the control plane calls it a few times a second): moves slow
    /// starts on, lets latency averages of idle backends decay, and fails back once a
    /// `failback` window has passed. Rebuilds only when something changed.
    pub fn tick(&self) -> Option<TierChange> {
        self.health_changed()
    }

    /// `ringlb ctl failback`: new connections go to the tiers health wants now, whatever
    /// the failback policy held them on. Returns the tiers in use before and after.
    pub fn failback(&self) -> (Option<TierRange>, Option<TierRange>) {
        let mut writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let old = self.current.load_full();
        let before = old.tiers_now();
        let writer = &mut *writer;
        if writer.steerer.failback_now(
            steer::wanted_of(old.backends(), writer.steering.min_active),
            &writer.pin,
        ) {
            let _ = self.rebuild(writer);
        }
        (before, self.current.load().tiers_now())
    }

    /// The tiers the failback policy holds traffic on (`None` with `failback: immediate`):
    /// what a live upgrade or `state_file` carries, so a restart does not fail back.
    pub fn hold(&self) -> Option<TierRange> {
        self.writer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pin
            .held()
    }

    /// Puts back a hold kept by [`hold`](Self::hold) (previous process, `state_file`). A
    /// no-op with `failback: immediate`; failover is never held back by it.
    pub fn restore_hold(&self, range: TierRange) -> Option<TierChange> {
        let mut writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        if writer.steering.failback == ringlb_config::Failback::Immediate {
            return None;
        }
        writer.pin.hold(Some(range));
        self.rebuild(&mut writer)
    }

    /// Every table rebuilt from scratch over the current backends, after a steering look.
    fn rebuild(&self, writer: &mut Writer) -> Option<TierChange> {
        let old = self.current.load_full();
        self.publish(writer, old.algorithm(), old.backends().to_vec(), None, true)
    }

    /// A failback the policy holds back: the tiers health would use now, when they differ
    /// from the ones in use (what `ringlb ctl failback` would switch to).
    pub fn failback_pending(&self) -> Option<TierRange> {
        let writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let snapshot = self.current.load();
        let wanted = steer::wanted_of(snapshot.backends(), writer.steering.min_active)?;
        (snapshot.tiers_now() != Some(wanted)).then_some(wanted)
    }

    /// Steering look, then a rebuild when anything changed (or `always`).
    fn publish(
        &self,
        writer: &mut Writer,
        algorithm: Algorithm,
        backends: Vec<Backend>,
        same_set: Option<&Snapshot>,
        always: bool,
    ) -> Option<TierChange> {
        let old = self.current.load_full();
        let decay = algorithm == Algorithm::LeastLatency;
        let wanted = steer::wanted_of(&backends, writer.steering.min_active);
        let steered = writer.steerer.look(
            (self.clock)(),
            &writer.steering,
            &backends,
            wanted,
            &writer.pin,
            decay,
        );
        let stale = old.health_differs() || old.tiers_built() != old.tiers_now();
        if always || steered.ramps || steered.pin || stale {
            let sticky = writer.sticky.as_mut().map(|s| s.view(&backends));
            self.current.store(Arc::new(
                Snapshot::build(
                    algorithm,
                    writer.steering,
                    Arc::clone(&writer.pin),
                    backends,
                    same_set,
                )
                .with_sticky(sticky),
            ));
        }
        steered.change
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
