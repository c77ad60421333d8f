//! The control plane: binds listeners, starts the workers and the prober, then turns
//! signals into reloads and a draining shutdown. It runs on the main thread and never on a
//! worker's ring.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{select, Receiver};
use ringlb_config::{Config, Listener, Protocol, Workers};
use ringlb_dataplane::sys::{self, BindError, UringUnavailable};
use ringlb_dataplane::worker::{self, Command, WorkerEvent, WorkerHandle};
use ringlb_dataplane::ListenerShared;
use ringlb_prober::{ProbeBackend, ProbeListener, Prober, Transition};
use ringlb_scheduler::{BackendSpec, Scheduler};
use thiserror::Error;

use crate::registry::Registry;
use crate::signals::{self, ControlSignal};

/// How long workers get to create their rings and report in.
const WORKER_START_TIMEOUT: Duration = Duration::from_secs(10);
/// After the cut, how long to wait for workers to report and exit.
const WORKER_EXIT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Error)]
pub enum RunError {
    #[error("{0}")]
    Admin(#[from] crate::admin::AdminError),
    #[error("{0}")]
    Uring(#[from] UringUnavailable),
    #[error("{0}")]
    Bind(#[from] BindError),
    #[error("cannot block signals: {0}")]
    Signals(nix::Error),
    #[error("cannot start {what}: {source}")]
    Thread {
        what: &'static str,
        source: std::io::Error,
    },
    #[error("worker {worker} failed to start: {error}")]
    Worker { worker: usize, error: String },
    #[error("workers did not start within {0:?}")]
    WorkerTimeout(Duration),
}

/// One running listener: shared state plus what identifies its sockets.
struct Running {
    shared: Arc<ListenerShared>,
    bind: SocketAddr,
    protocol: Protocol,
}

struct ControlPlane {
    config: Config,
    path: PathBuf,
    workers: Vec<WorkerHandle>,
    events: Receiver<WorkerEvent>,
    listeners: HashMap<String, Running>,
    prober: Option<Prober>,
    transitions: crossbeam_channel::Sender<Transition>,
    registry: Arc<Registry>,
    log_level_from_env: bool,
}

pub fn run(config: Config, path: PathBuf, workers_override: Option<usize>) -> Result<(), RunError> {
    // Before any thread exists, so every thread inherits the mask.
    signals::block().map_err(RunError::Signals)?;
    sys::probe_io_uring()?;
    match sys::raise_fd_limit() {
        Ok(limit) => log::info!("file descriptor limit: {limit}"),
        Err(e) => log::warn!("cannot raise the file descriptor limit: {e}"),
    }
    let cpus = sys::allowed_cpus();
    let worker_count = workers_override.unwrap_or(match config.workers {
        Workers::Auto => cpus.len().max(1),
        Workers::Count(n) => n,
    });

    // Bind everything before starting threads: a port in use fails the start cleanly.
    let mut bound = Vec::new();
    for listener in &config.listeners {
        let (sockets, addr) = sys::bind_reuseport(
            listener.bind,
            listener.protocol() == Protocol::Udp,
            worker_count,
        )?;
        bound.push((listener.clone(), sockets, addr));
    }
    // Also before any thread: an admin port in use fails the start as cleanly.
    let registry = Arc::new(Registry::default());
    let admin = match config.admin {
        Some(addr) => Some(crate::admin::spawn(addr, Arc::clone(&registry))?),
        None => None,
    };

    let (event_tx, event_rx) = crossbeam_channel::unbounded();
    let mut workers = Vec::with_capacity(worker_count);
    for id in 0..worker_count {
        let cpu = if cpus.is_empty() {
            None
        } else {
            Some(cpus[id % cpus.len()])
        };
        let handle =
            worker::spawn(id, cpu, event_tx.clone()).map_err(|source| RunError::Thread {
                what: "a worker thread",
                source,
            })?;
        workers.push(handle);
    }
    await_started(&event_rx, worker_count)?;
    if worker_count > cpus.len() && !cpus.is_empty() {
        log::warn!(
            "{worker_count} workers on {} CPUs: some workers share a core",
            cpus.len()
        );
    }

    let (transition_tx, transition_rx) = crossbeam_channel::unbounded();
    let mut plane = ControlPlane {
        path,
        workers,
        events: event_rx,
        listeners: HashMap::new(),
        prober: None,
        transitions: transition_tx,
        registry,
        log_level_from_env: std::env::var_os("RUST_LOG").is_some(),
        config,
    };
    for (listener, sockets, addr) in bound {
        plane.start_listener(listener, sockets, addr);
    }
    plane.publish_registry();
    plane.restart_prober();
    let signals = signals::listen().map_err(|source| RunError::Thread {
        what: "the signal thread",
        source,
    })?;
    log::info!(
        "ready: {} listener(s) on {worker_count} worker(s)",
        plane.listeners.len()
    );
    plane.serve(signals, transition_rx);
    // Served through the drain; stopped once the workers are gone.
    if let Some(admin) = admin {
        admin.stop();
    }
    Ok(())
}

fn await_started(events: &Receiver<WorkerEvent>, count: usize) -> Result<(), RunError> {
    let deadline = Instant::now() + WORKER_START_TIMEOUT;
    let mut started = 0;
    while started < count {
        let left = deadline.saturating_duration_since(Instant::now());
        match events.recv_timeout(left) {
            Ok(WorkerEvent::Started { .. }) => started += 1,
            Ok(WorkerEvent::Failed { worker, error }) => {
                return Err(RunError::Worker { worker, error })
            }
            Ok(_) => {}
            Err(_) => return Err(RunError::WorkerTimeout(WORKER_START_TIMEOUT)),
        }
    }
    Ok(())
}

fn specs(listener: &Listener) -> Vec<BackendSpec> {
    listener.backends.iter().map(BackendSpec::from).collect()
}

impl ControlPlane {
    fn start_listener(
        &mut self,
        listener: Listener,
        sockets: Vec<socket2::Socket>,
        addr: SocketAddr,
    ) {
        let shared = self.new_shared(&listener, addr);
        for (worker, socket) in self.workers.iter().zip(sockets) {
            let listener = Arc::clone(&shared);
            let command = match shared.settings.load().protocol() {
                Protocol::Tcp => Command::AddTcp { listener, socket },
                Protocol::Udp => Command::AddUdp { listener, socket },
            };
            if !worker.send(command) {
                log::error!(
                    "worker {} is gone; listener {} runs without it",
                    worker.id,
                    shared.name
                );
            }
        }
        self.register(&listener, shared, "");
    }

    /// Move a TCP listener's sockets to a new name (see `reload`).
    fn rename_listener(&mut self, old: &str, listener: Listener) {
        let Some(running) = self.listeners.remove(old) else {
            return;
        };
        let shared = self.new_shared(&listener, running.shared.bound);
        for worker in &self.workers {
            worker.send(Command::Rename {
                old: old.to_string(),
                listener: Arc::clone(&shared),
            });
        }
        self.register(&listener, shared, &format!(", renamed from \"{old}\""));
    }

    fn new_shared(&self, listener: &Listener, bound: SocketAddr) -> Arc<ListenerShared> {
        let scheduler = Arc::new(Scheduler::new(listener.algorithm, specs(listener)));
        Arc::new(ListenerShared::new(
            listener.clone(),
            bound,
            scheduler,
            self.workers.len(),
            self.config.access_log,
        ))
    }

    /// Record a running listener, publish it to the admin endpoint, then log its port
    /// (tests and operators read the port from this line, so the registry comes first).
    fn register(&mut self, listener: &Listener, shared: Arc<ListenerShared>, note: &str) {
        let bound = shared.bound;
        self.listeners.insert(
            listener.name.clone(),
            Running {
                shared,
                bind: listener.bind,
                protocol: listener.protocol(),
            },
        );
        self.publish_registry();
        log::info!(
            "listener \"{}\" listening on {bound} ({}, {} workers, {}, {} backend(s)){note}",
            listener.name,
            listener.protocol().as_str(),
            self.workers.len(),
            listener.algorithm.as_str(),
            listener.backends.len()
        );
    }

    fn stop_listener(&mut self, name: &str) {
        if self.listeners.remove(name).is_some() {
            for worker in &self.workers {
                worker.send(Command::Remove {
                    name: name.to_string(),
                });
            }
        }
    }

    fn publish_registry(&self) {
        let mut list: Vec<Arc<ListenerShared>> = self
            .listeners
            .values()
            .map(|r| Arc::clone(&r.shared))
            .collect();
        list.sort_by(|a, b| a.name.cmp(&b.name));
        self.registry.listeners.store(Arc::new(list));
    }

    /// Health-checked listeners go to the prober; it is rebuilt from the current snapshots
    /// and keeps the counters of (listener, backend) pairs that survive.
    fn probe_targets(&self) -> Vec<ProbeListener> {
        let mut out = Vec::new();
        for running in self.listeners.values() {
            let settings = running.shared.settings.load();
            let Some(check) = settings.health_check else {
                continue;
            };
            let snapshot = running.shared.scheduler.snapshot();
            let backends = snapshot
                .backends()
                .iter()
                .map(|b| ProbeBackend {
                    label: b.spec.label.clone(),
                    addr: b.spec.addr,
                    state: Arc::clone(&b.state),
                })
                .collect();
            let scheduler = Arc::clone(&running.shared.scheduler);
            out.push(ProbeListener {
                name: running.shared.name.clone(),
                check,
                backends,
                on_change: Arc::new(move || scheduler.health_changed()),
            });
        }
        out
    }

    fn restart_prober(&mut self) {
        let targets = self.probe_targets();
        match &self.prober {
            Some(prober) => prober.update(targets),
            None => match Prober::spawn(targets, self.transitions.clone()) {
                Ok(prober) => self.prober = Some(prober),
                Err(e) => log::error!("cannot start the health prober: {e}; backends stay up"),
            },
        }
    }

    fn serve(mut self, signals: Receiver<ControlSignal>, transitions: Receiver<Transition>) {
        loop {
            select! {
                recv(signals) -> signal => match signal {
                    Ok(ControlSignal::Reload) => self.reload(),
                    Ok(ControlSignal::Shutdown(sig)) => {
                        self.shutdown(sig, &signals, &transitions);
                        return;
                    }
                    Err(_) => {
                        log::error!("signal thread ended; shutting down");
                        self.shutdown(nix::sys::signal::Signal::SIGTERM, &signals, &transitions);
                        return;
                    }
                },
                recv(transitions) -> transition => {
                    if let Ok(t) = transition {
                        self.log_transition(&t);
                    }
                }
                recv(self.events) -> event => {
                    if let Ok(event) = event {
                        log::debug!("worker event: {event:?}");
                    }
                }
            }
        }
    }

    fn log_transition(&self, t: &Transition) {
        if t.up {
            log::info!("{t}");
        } else {
            log::warn!("{t}");
        }
        self.registry
            .record_transition(&t.listener, &t.backend, t.up, t.to_string());
    }

    fn reload(&mut self) {
        let new = match ringlb_config::load(&self.path) {
            Ok(config) => config,
            Err(errors) => {
                self.registry.reloads_failed.fetch_add(1, Ordering::Relaxed);
                log::error!(
                    "reload rejected: {} has {} problem(s); still serving the previous configuration",
                    self.path.display(),
                    errors.errors.len()
                );
                for e in &errors.errors {
                    log::error!("error: {e}");
                }
                return;
            }
        };
        let mut summary = Vec::new();
        if new.workers != self.config.workers {
            log::warn!(
                "reload: `workers` changes need a restart; keeping {} workers",
                self.workers.len()
            );
        }
        if new.admin != self.config.admin {
            log::warn!(
                "reload: `admin` changes need a restart; keeping the current admin endpoint"
            );
        }
        if new.log_level != self.config.log_level && !self.log_level_from_env {
            log::set_max_level(new.log_level);
            summary.push(format!("log_level={}", new.log_level));
        }

        let old_names: BTreeSet<String> = self.listeners.keys().cloned().collect();
        let new_names: BTreeSet<String> = new.listeners.iter().map(|l| l.name.clone()).collect();
        let mut removed: Vec<String> = old_names.difference(&new_names).cloned().collect();
        let mut added = Vec::new();
        let mut changed = Vec::new();
        // A TCP listener renamed on the same bind keeps its sockets: closing them would
        // reset the connections queued there while the new sockets join the same port.
        let mut renamed = Vec::new();
        for listener in new
            .listeners
            .iter()
            .filter(|l| !old_names.contains(&l.name))
        {
            let Some(old) = removed.iter().position(|name| {
                self.listeners.get(name).is_some_and(|r| {
                    r.protocol == Protocol::Tcp
                        && listener.protocol() == Protocol::Tcp
                        && r.bind == listener.bind
                })
            }) else {
                continue;
            };
            let old = removed.remove(old);
            self.rename_listener(&old, listener.clone());
            renamed.push((old, listener.name.clone()));
        }
        for name in &removed {
            self.stop_listener(name);
        }
        for listener in &new.listeners {
            if renamed
                .iter()
                .any(|(_, new_name)| *new_name == listener.name)
            {
                continue;
            }
            match self.listeners.get(&listener.name) {
                Some(running)
                    if running.bind == listener.bind && running.protocol == listener.protocol() =>
                {
                    let before = running.shared.settings.load_full();
                    if let Some(diff) = describe_change(&before, listener) {
                        changed.push(format!("{} ({diff})", listener.name));
                    }
                    running
                        .shared
                        .scheduler
                        .reconfigure(listener.algorithm, specs(listener));
                    running.shared.settings.store(Arc::new(listener.clone()));
                    running
                        .shared
                        .access_log
                        .store(new.access_log, Ordering::Relaxed);
                }
                existing => {
                    // New listener, or its socket identity changed: bind first, so a port
                    // conflict leaves the old one serving.
                    let replacing = existing.is_some();
                    match sys::bind_reuseport(
                        listener.bind,
                        listener.protocol() == Protocol::Udp,
                        self.workers.len(),
                    ) {
                        Ok((sockets, addr)) => {
                            if replacing {
                                self.stop_listener(&listener.name);
                                removed.push(format!("{} (rebound)", listener.name));
                            }
                            self.start_listener(listener.clone(), sockets, addr);
                            added.push(listener.name.clone());
                        }
                        Err(e) => {
                            log::error!("reload: listener {}: {e}; not started", listener.name)
                        }
                    }
                }
            }
        }
        let access_log = new.access_log;
        for running in self.listeners.values() {
            running
                .shared
                .access_log
                .store(access_log, Ordering::Relaxed);
        }
        let keep_admin = self.config.admin;
        let keep_workers = self.config.workers;
        self.config = new;
        self.config.admin = keep_admin;
        self.config.workers = keep_workers;
        self.publish_registry();
        self.restart_prober();
        self.registry.reloads_ok.fetch_add(1, Ordering::Relaxed);
        if !renamed.is_empty() {
            let pairs: Vec<String> = renamed.iter().map(|(o, n)| format!("{o}→{n}")).collect();
            summary.push(format!("renamed [{}]", pairs.join(", ")));
        }
        log::info!(
            "reload applied: added [{}] removed [{}] changed [{}]{}",
            added.join(", "),
            removed.join(", "),
            changed.join("; "),
            if summary.is_empty() {
                String::new()
            } else {
                format!(" {}", summary.join(" "))
            }
        );
    }

    fn shutdown(
        mut self,
        signal: nix::sys::signal::Signal,
        signals: &Receiver<ControlSignal>,
        transitions: &Receiver<Transition>,
    ) {
        let timeout = self.config.shutdown_timeout;
        let live: u32 = self.listeners.values().map(|r| r.shared.active()).sum();
        log::info!(
            "{signal}: stopped accepting; draining {live} connection(s) for up to {timeout:?}"
        );
        for worker in &self.workers {
            worker.send(Command::Drain);
        }
        let deadline = Instant::now() + timeout;
        let mut drained = 0;
        while drained < self.workers.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            select! {
                recv(self.events) -> event => match event {
                    Ok(WorkerEvent::Drained { .. }) => drained += 1,
                    Ok(_) => {}
                    Err(_) => break,
                },
                recv(signals) -> s => {
                    if let Ok(ControlSignal::Shutdown(again)) = s {
                        log::warn!("{again} again: cutting connections now");
                        break;
                    }
                }
                recv(transitions) -> t => {
                    if let Ok(t) = t {
                        self.log_transition(&t);
                    }
                }
                default(left) => break,
            }
        }
        for worker in &self.workers {
            worker.send(Command::Cut);
        }
        let mut cut = 0;
        let mut finished = 0;
        let deadline = Instant::now() + WORKER_EXIT_TIMEOUT;
        while finished < self.workers.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(WorkerEvent::Finished { cut: n, .. }) => {
                    cut += n;
                    finished += 1;
                }
                Ok(_) => {}
                Err(_) => {
                    log::error!(
                        "{} worker(s) did not finish in time",
                        self.workers.len() - finished
                    );
                    break;
                }
            }
        }
        if let Some(prober) = self.prober.take() {
            prober.stop();
        }
        if cut > 0 {
            log::warn!("shutdown: {cut} connection(s) still open after {timeout:?} were cut");
        } else {
            log::info!("shutdown: all connections finished");
        }
        for worker in self.workers.drain(..) {
            worker.join();
        }
    }
}

/// One-line description of what a reload changes in a listener, or None if nothing.
fn describe_change(before: &Listener, after: &Listener) -> Option<String> {
    let mut parts = Vec::new();
    let old: HashMap<&str, &ringlb_config::Backend> = before
        .backends
        .iter()
        .map(|b| (b.label.as_str(), b))
        .collect();
    let new: HashMap<&str, &ringlb_config::Backend> = after
        .backends
        .iter()
        .map(|b| (b.label.as_str(), b))
        .collect();
    let mut added: Vec<&str> = new
        .keys()
        .filter(|k| !old.contains_key(*k))
        .copied()
        .collect();
    let mut removed: Vec<&str> = old
        .keys()
        .filter(|k| !new.contains_key(*k))
        .copied()
        .collect();
    let mut reweighted: Vec<String> = new
        .iter()
        .filter_map(|(k, b)| {
            old.get(k)
                .filter(|o| {
                    o.weight != b.weight
                        || o.backup != b.backup
                        || o.max_connections != b.max_connections
                })
                .map(|o| format!("{k} weight {}→{}", o.weight, b.weight))
        })
        .collect();
    added.sort_unstable();
    removed.sort_unstable();
    reweighted.sort_unstable();
    if !added.is_empty() {
        parts.push(format!("backends added {}", added.join(" ")));
    }
    if !removed.is_empty() {
        parts.push(format!("backends removed {}", removed.join(" ")));
    }
    if !reweighted.is_empty() {
        parts.push(format!("changed {}", reweighted.join(", ")));
    }
    if before.algorithm != after.algorithm {
        parts.push(format!(
            "algorithm {}→{}",
            before.algorithm.as_str(),
            after.algorithm.as_str()
        ));
    }
    let mut other = before.clone();
    other.backends = after.backends.clone();
    other.algorithm = after.algorithm;
    if other != *after {
        parts.push("settings".to_string());
    }
    if parts.is_empty() {
        None
    } else {
        Some(parts.join(", "))
    }
}
