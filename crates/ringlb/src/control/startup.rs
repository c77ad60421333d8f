//! Start: claim the control socket (the instance lock), bind every listener and the admin
//! endpoint, start the workers and the prober, then serve until shutdown.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use ringlb_config::{Config, Listener, Workers};
use ringlb_dataplane::sys::{self, UringUnavailable};
use ringlb_dataplane::worker::{self, Command, WorkerEvent, WorkerHandle};
use ringlb_prober::Transition;
use socket2::Socket;
use thiserror::Error;

use super::admin_book::AdminBook;
use super::inherit::{self, Inherited};
use super::listeners::{bind, ListenerBindError};
use super::ControlPlane;
use crate::admin::AdminServer;
use crate::control_socket::path::{self as control_path, ClaimError, PathError};
use crate::control_socket::ControlServer;
use crate::notify::notify_or_log;
use crate::readiness::Phase;
use crate::registry::Registry;
use crate::signals;

/// How long workers get to create their rings and report in.
const WORKER_START_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Error)]
pub enum RunError {
    #[error("{0}")]
    Admin(#[from] crate::admin::AdminError),
    #[error("{0}")]
    Uring(#[from] UringUnavailable),
    #[error("{0}")]
    Bind(#[from] ListenerBindError),
    #[error("control socket: {0}")]
    ControlPath(#[from] PathError),
    #[error("{0}")]
    Claim(#[from] ClaimError),
    #[error("another ringlb (pid {pid}) already serves {config} (control socket {socket}); to replace it without dropping connections run `ringlb upgrade --config {config}`; to stop it, send SIGTERM to pid {pid}")]
    AlreadyRunning {
        config: String,
        socket: String,
        pid: u32,
    },
    #[error("{0}")]
    Audit(#[from] crate::audit::AuditError),
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
    #[error("live upgrade: {0}")]
    Upgrade(String),
}

/// Serves `config` until SIGTERM/SIGINT has drained the workers, or a live upgrade has
/// handed everything to a new process. `path` is re-read on SIGHUP; `workers_override`
/// (the command line) wins over the file's `workers`.
pub fn run(config: Config, path: PathBuf, workers_override: Option<usize>) -> Result<(), RunError> {
    let mut inherited = match inherit::from_env() {
        Some(Ok(inherited)) => Some(inherited),
        Some(Err(e)) => return Err(RunError::Upgrade(e)),
        None => None,
    };
    let result = start(config, path, workers_override, &mut inherited);
    if let (Err(e), Some(inherited)) = (&result, &inherited) {
        inherited.fail(&e.to_string());
    }
    let Started {
        plane,
        admin,
        transitions,
        mut control,
        socket_path,
        requests,
    } = result?;
    let signals = signals::listen().map_err(|source| RunError::Thread {
        what: "the signal thread",
        source,
    })?;
    plane.registry.readiness.set_phase(Phase::Serving);
    info!(
        "ready: {} listener(s) on {} worker(s)",
        plane.listeners.len(),
        plane.workers.len()
    );
    if let Some(inherited) = inherited {
        plane.take_over(inherited);
        // The path still names the old process's socket until here, so a failed upgrade
        // leaves `ringlb ctl` talking to the process that kept serving.
        control = match control_path::take_over(&socket_path) {
            Ok(listener) => ControlServer::spawn(
                listener,
                socket_path.clone(),
                requests,
                Arc::clone(&plane.registry),
            )
            .map_err(|e| error!("control socket {}: {e}", socket_path.display()))
            .ok(),
            Err(e) => {
                error!(
                    "control socket {}: {e}; `ringlb ctl` cannot reach this process",
                    socket_path.display()
                );
                None
            }
        };
        notify_or_log(&format!("MAINPID={}", std::process::id()));
    }
    notify_or_log("READY=1");
    match plane.serve(signals, transitions) {
        Exit::Shutdown => {
            // Served through the drain; stopped once the workers are gone.
            if let Some(admin) = admin {
                admin.stop();
            }
        }
        // The admin socket is the new process's now: shutting it down here would stop
        // its endpoint too. The thread ends with this process.
        Exit::Upgraded => std::mem::forget(admin),
    }
    // The control socket file is removed only while it is still ours (a successor
    // replaced it after an upgrade).
    if let Some(control) = control {
        control.stop();
    }
    Ok(())
}

/// How serving ended.
pub(super) enum Exit {
    Shutdown,
    Upgraded,
}

/// Everything `start` brings up, for `run` to serve.
struct Started {
    plane: ControlPlane,
    admin: Option<AdminServer>,
    transitions: Receiver<Transition>,
    /// `None` in a process started by an upgrade until it has taken over.
    control: Option<ControlServer>,
    socket_path: PathBuf,
    /// Where control-socket requests go (the plane holds the receiver).
    requests: Sender<crate::control_socket::ControlRequest>,
}

/// Everything up to serving: the instance lock, bind (or take the old process's sockets),
/// start the workers, the admin endpoint and the prober.
fn start(
    config: Config,
    path: PathBuf,
    workers_override: Option<usize>,
    inherited: &mut Option<Inherited>,
) -> Result<Started, RunError> {
    // Before any thread exists, so every thread inherits the mask.
    signals::block().map_err(RunError::Signals)?;
    let socket_path = control_path::resolve(&path, config.control.as_deref())?;
    control_path::prepare_dir(&socket_path, config.control.is_none())?;
    let registry = Arc::new(Registry::default());
    if inherited.is_some() {
        // A successor shares its predecessor's admin socket: until it serves, its /ready
        // says "handing over" as the predecessor's does. "starting" would make a routing
        // daemon following /ready withdraw the host for every live upgrade.
        registry.readiness.set_phase(Phase::HandingOver);
    }
    let (request_tx, request_rx) = crossbeam_channel::unbounded();
    // The instance lock first: a second `run` of this file stops here, before it binds or
    // probes anything, naming the instance that serves it. A process started by a live
    // upgrade is that instance's successor: it takes the path over once it serves.
    let control = match inherited {
        Some(_) => None,
        None => Some(claim_control(&path, &socket_path, &request_tx, &registry)?),
    };
    sys::probe_io_uring()?;
    match sys::raise_fd_limit() {
        Ok(limit) => {
            info!("file descriptor limit: {limit}");
            ringlb_dataplane::fdbudget::apply(&config, limit);
        }
        Err(e) => warn!("cannot raise the file descriptor limit: {e}"),
    }
    let cpus = sys::allowed_cpus();
    let worker_count = match inherited {
        // The inherited sockets are one per worker of the old process.
        Some(inherited) => inherited.workers,
        None => workers_override.unwrap_or(match config.workers {
            Workers::Auto => cpus.len().max(1),
            Workers::Count(n) => n,
        }),
    };

    // Bind everything before starting threads: a port in use fails the start cleanly.
    let bound = config
        .listeners
        .iter()
        .map(|listener| {
            let taken = inherited.as_mut().and_then(|i| i.take(listener));
            let (sockets, addr) = match taken {
                Some(taken) => taken,
                None => bind(listener, worker_count)?,
            };
            Ok((listener.clone(), sockets, addr))
        })
        .collect::<Result<Vec<_>, RunError>>()?;
    // Also before any thread: an admin port in use fails the start as cleanly.
    let admin = match config.admin {
        Some(addr) => {
            let socket = inherited.as_mut().and_then(|i| i.admin.take());
            Some(crate::admin::spawn(addr, socket, Arc::clone(&registry))?)
        }
        None => None,
    };
    let admin_socket = admin.as_ref().and_then(|a| match a.try_clone_listener() {
        Ok(socket) => Some(socket),
        Err(e) => {
            warn!("cannot keep a copy of the admin socket ({e}); a live upgrade will rebind it");
            None
        }
    });

    let (event_tx, event_rx) = crossbeam_channel::unbounded();
    let workers = spawn_workers(worker_count, &cpus, &event_tx)?;
    await_started(&event_rx, worker_count)?;
    if worker_count > cpus.len() && !cpus.is_empty() {
        warn!(
            "{worker_count} workers on {} CPUs: some workers share a core",
            cpus.len()
        );
    }
    if inherited.is_some() {
        // UDP receives only once the old process's sessions are here (see `take_over`).
        for worker in &workers {
            worker.send(Command::HoldUdp);
        }
    }

    let (transition_tx, transition_rx) = crossbeam_channel::unbounded();
    let upgraded = inherited.is_some();
    let book = inherited.as_mut().and_then(|i| i.book.take());
    let audit = match config.audit_log.as_deref() {
        Some(path) => Some(std::cell::RefCell::new(crate::audit::AuditLog::open(path)?)),
        None => None,
    };
    let mut sticky = super::sticky::StickyKeeper::default();
    if let Some(dumps) = inherited.as_mut().and_then(|i| i.sticky.take()) {
        sticky.inherit(dumps);
    }
    let plane = ControlPlane {
        path,
        workers,
        events: event_rx,
        listeners: HashMap::new(),
        prober: None,
        transitions: transition_tx,
        registry,
        log_level_from_env: std::env::var_os("RUST_LOG").is_some(),
        requests: request_rx,
        book: AdminBook::default(),
        config,
        sockets: HashMap::new(),
        admin_socket,
        handed_over: None,
        tiers_seen: HashMap::new(),
        audit,
        sticky,
    };
    plane.audit(
        "start",
        serde_json::json!({
            "pid": std::process::id(),
            "version": env!("CARGO_PKG_VERSION"),
            "config": plane.path.display().to_string(),
            "config_sha256": super::audited::config_digest(&plane.path),
            "listeners": plane.config.listeners.iter().map(|l| l.name.as_str()).collect::<Vec<_>>(),
            "upgrade": upgraded,
        }),
    );
    Ok(Started {
        plane: plane.start(bound, book),
        admin,
        transitions: transition_rx,
        control,
        socket_path,
        requests: request_tx,
    })
}

/// Bind the control socket (the instance lock) and serve it.
fn claim_control(
    config: &std::path::Path,
    socket_path: &std::path::Path,
    requests: &Sender<crate::control_socket::ControlRequest>,
    registry: &Arc<Registry>,
) -> Result<ControlServer, RunError> {
    let listener = control_path::claim(socket_path).map_err(|e| match e {
        ClaimError::Running { path: socket, pid } => RunError::AlreadyRunning {
            config: std::fs::canonicalize(config)
                .unwrap_or_else(|_| config.to_path_buf())
                .display()
                .to_string(),
            socket: socket.display().to_string(),
            pid,
        },
        other => RunError::Claim(other),
    })?;
    let control = ControlServer::spawn(
        listener,
        socket_path.to_path_buf(),
        requests.clone(),
        Arc::clone(registry),
    )
    .map_err(|source| RunError::Thread {
        what: "the control socket thread",
        source,
    })?;
    info!("control socket {}", socket_path.display());
    Ok(control)
}

/// One worker per CPU slot, round-robin over the CPUs this process may run on.
fn spawn_workers(
    count: usize,
    cpus: &[usize],
    events: &Sender<WorkerEvent>,
) -> Result<Vec<WorkerHandle>, RunError> {
    (0..count)
        .map(|id| {
            let cpu = cpus.get(id % cpus.len().max(1)).copied();
            worker::spawn(id, cpu, events.clone()).map_err(|source| RunError::Thread {
                what: "a worker thread",
                source,
            })
        })
        .collect()
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

impl ControlPlane {
    /// Restores the operator's admin state and the sticky tables (handed over by the
    /// previous process in a live upgrade, else `state_file`), hands the listeners bound by
    /// `run` to the workers and starts the prober.
    fn start(
        mut self,
        bound: Vec<(Listener, Vec<Socket>, SocketAddr)>,
        handed: Option<AdminBook>,
    ) -> ControlPlane {
        match handed {
            Some(book) => {
                self.registry.readiness.set_node_failed(book.node_failed);
                self.book = book;
            }
            None => {
                self.load_book();
                self.load_sticky();
            }
        }
        for (listener, sockets, addr) in bound {
            self.start_listener(listener, sockets, addr);
        }
        self.forget_pending_sticky();
        self.sync_book();
        self.publish_registry();
        self.restart_prober();
        self
    }
}
