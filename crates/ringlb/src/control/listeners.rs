//! One listener at a time on the workers: start, rename, update in place, stop. Every change
//! is published to the admin registry; the health prober follows with `restart_prober`.

use std::net::SocketAddr;
use std::sync::Arc;

use ringlb_config::{HealthCheck, Listener, Protocol};
use ringlb_dataplane::sys::{self, BindError};
use ringlb_dataplane::worker::Command;
use ringlb_dataplane::{ListenerState, Moved};
use ringlb_prober::{ProbeBackend, ProbeListener, Prober};
use ringlb_scheduler::Scheduler;
use socket2::Socket;
use thiserror::Error;

use super::ports::{self, PortTaken};
use super::ControlPlane;

#[derive(Debug, Error)]
pub enum ListenerBindError {
    #[error(transparent)]
    Bind(#[from] BindError),
    #[error("listener \"{listener}\": {taken}")]
    Taken { listener: String, taken: PortTaken },
}

/// One SO_REUSEPORT socket per worker on the listener's bind, and the address actually
/// bound (the port resolved when the configuration says 0). Refused when another process
/// already has a socket there (see `ports`): checked before binding, and again after, for
/// a process that bound in between.
pub(super) fn bind(
    listener: &Listener,
    workers: usize,
) -> Result<(Vec<Socket>, SocketAddr), ListenerBindError> {
    let udp = listener.protocol() == Protocol::Udp;
    let taken = |taken| ListenerBindError::Taken {
        listener: listener.name.clone(),
        taken,
    };
    ports::check(listener.bind, udp, &[]).map_err(taken)?;
    let (sockets, addr) = sys::bind_reuseport(listener.bind, udp, workers)?;
    let own: Vec<u64> = sockets
        .iter()
        .filter_map(|s| ports::inode(s).ok())
        .collect();
    // On a conflict the sockets just bound are dropped (closed) with the error.
    ports::check(addr, udp, &own).map_err(taken)?;
    Ok((sockets, addr))
}

impl ControlPlane {
    /// Hands each worker its own socket of a freshly bound listener.
    pub(super) fn start_listener(
        &mut self,
        listener: Listener,
        sockets: Vec<Socket>,
        addr: SocketAddr,
    ) {
        let shared = self.new_shared(&listener, addr);
        match sockets.iter().map(Socket::try_clone).collect::<Result<Vec<_>, _>>() {
            Ok(dups) => {
                self.sockets.insert(listener.name.clone(), dups);
            }
            Err(e) => warn!(
                "listener {}: cannot keep a copy of its sockets ({e}); a live upgrade will rebind it",
                listener.name
            ),
        }
        for (worker, socket) in self.workers.iter().zip(sockets) {
            if !worker.send(Command::Start {
                listener: Arc::clone(&shared),
                socket,
            }) {
                error!(
                    "worker {} is gone; listener {} runs without it",
                    worker.id, shared.name
                );
            }
        }
        self.register(&listener, shared, "");
    }

    /// Moves a TCP listener's sockets to a new name; the workers keep accepting on them.
    pub(super) fn rename_listener(&mut self, old: &str, listener: Listener) {
        self.carry_sticky(old, &listener.name);
        let Some(running) = self.listeners.remove(old) else {
            return;
        };
        let shared = self.new_shared(&listener, running.bound);
        if let Some(sockets) = self.sockets.remove(old) {
            self.sockets.insert(listener.name.clone(), sockets);
        }
        self.broadcast(|| Command::Rename {
            old: old.to_string(),
            listener: Arc::clone(&shared),
        });
        self.register(&listener, shared, &format!(", renamed from \"{old}\""));
    }

    /// Swaps in new settings and backends; sockets, counters and backend states stay.
    pub(super) fn update_listener(&self, listener: &Listener) {
        if let Some(running) = self.listeners.get(&listener.name) {
            running.scheduler.reconfigure_from(listener);
            running.routes.reconfigure(listener);
            running.settings.store(Arc::new(listener.clone()));
        }
    }

    /// Stops accepting on a listener; its connections drain.
    pub(super) fn stop_listener(&mut self, name: &str) {
        self.sockets.remove(name);
        if self.listeners.remove(name).is_some() {
            self.broadcast(|| Command::Stop {
                name: name.to_string(),
            });
        }
    }

    /// Every worker accepts again on its own socket of every listener (after a live
    /// upgrade was called off: freezing stopped the accept loops, not the sockets).
    pub(super) fn restart_accepting(&self) {
        for (name, state) in &self.listeners {
            let Some(sockets) = self.sockets.get(name) else {
                continue;
            };
            for (worker, socket) in self.workers.iter().zip(sockets) {
                match socket.try_clone() {
                    Ok(socket) => {
                        worker.send(Command::Start {
                            listener: Arc::clone(state),
                            socket,
                        });
                    }
                    Err(e) => error!(
                        "listener {name}: worker {} cannot accept again: {e}",
                        worker.id
                    ),
                }
            }
        }
    }

    /// A connection or session from a live upgrade to the worker of the same index as the
    /// one it ran on.
    pub(super) fn adopt_on_worker(&self, moved: Moved) -> Result<(), String> {
        let worker = self
            .workers
            .get(moved.worker() % self.workers.len().max(1))
            .ok_or("no worker")?;
        if worker.send(Command::Adopt(moved)) {
            Ok(())
        } else {
            Err(format!("worker {} is gone", worker.id))
        }
    }

    /// Sends every worker its own copy of a command; a worker that is gone has nothing
    /// left to serve, so it is not waited for.
    pub(super) fn broadcast(&self, command: impl Fn() -> Command) {
        for worker in &self.workers {
            worker.send(command());
        }
    }

    /// The shared state of a listener about to start: its scheduler carries the
    /// operator's admin state and its sticky table from the start, so no connection
    /// reaches a drained backend or misses its entry in between.
    fn new_shared(&mut self, listener: &Listener, bound: SocketAddr) -> Arc<ListenerState> {
        let scheduler = Scheduler::for_listener(listener);
        self.book.apply(&listener.name, &scheduler);
        self.restore_sticky(&listener.name, &scheduler);
        Arc::new(ListenerState::new(
            listener.clone(),
            bound,
            Arc::new(scheduler),
            self.workers.len(),
            self.config.access_log,
        ))
    }

    /// Records a running listener, publishes it to the admin endpoint, then logs its port
    /// (tests and operators read the port from this line, so the registry comes first).
    fn register(&mut self, listener: &Listener, shared: Arc<ListenerState>, note: &str) {
        let bound = shared.bound;
        self.listeners.insert(listener.name.clone(), shared);
        self.publish_registry();
        info!(
            "listener \"{}\" listening on {bound} ({}, {} workers, {}, {} backend(s)){note}",
            listener.name,
            listener.protocol().as_str(),
            self.workers.len(),
            listener.algorithm.as_str(),
            listener.backends.len()
        );
    }

    pub(super) fn publish_registry(&self) {
        let mut list: Vec<Arc<ListenerState>> = self.listeners.values().cloned().collect();
        list.sort_by(|a, b| a.name.cmp(&b.name));
        self.registry.listeners.store(Arc::new(list));
    }

    /// Health-checked listeners go to the prober; it is rebuilt from the current snapshots
    /// and keeps the counters of (listener, backend) pairs that survive.
    fn probe_targets(&self) -> Vec<ProbeListener> {
        let mut out = Vec::new();
        for shared in self.listeners.values() {
            let settings = shared.settings.load();
            let Some(check) = settings.health_check.clone() else {
                continue;
            };
            out.push(probe_target(&shared.name, &check, &shared.scheduler));
            // Each route's pool has backend states of its own, checked the same way;
            // its transitions name it LISTENER/ROUTE.
            for pool in &shared.routes.table().pools {
                let name = format!("{}/{}", shared.name, pool.name);
                out.push(probe_target(&name, &check, &pool.scheduler));
            }
        }
        out
    }

    pub(super) fn restart_prober(&mut self) {
        let targets = self.probe_targets();
        match &self.prober {
            Some(prober) => prober.update(targets),
            None => match Prober::spawn(targets, self.transitions.clone()) {
                Ok(prober) => self.prober = Some(prober),
                Err(e) => error!("cannot start the health prober: {e}; backends stay up"),
            },
        }
    }
}

/// One pool's backends for the prober; a flip rebuilds that pool's tables.
fn probe_target(name: &str, check: &HealthCheck, scheduler: &Arc<Scheduler>) -> ProbeListener {
    let backends = scheduler
        .snapshot()
        .backends()
        .iter()
        .map(|b| ProbeBackend {
            label: b.spec.label.clone(),
            addr: b.spec.addr,
            state: Arc::clone(&b.state),
        })
        .collect();
    let scheduler = Arc::clone(scheduler);
    let owned = name.to_owned();
    ProbeListener {
        name: name.to_owned(),
        check: check.clone(),
        backends,
        on_change: Arc::new(move || {
            if let Some(change) = scheduler.health_changed() {
                super::steering::log_tier_change(&owned, &change);
            }
        }),
    }
}
