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
use ringlb_dataplane::worker::{self, WorkerEvent, WorkerHandle};
use socket2::Socket;
use thiserror::Error;

use super::admin_book::AdminBook;
use super::listeners::{bind, ListenerBindError};
use super::ControlPlane;
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

/// Serves `config` until SIGTERM/SIGINT has drained the workers. `path` is re-read on
/// SIGHUP; `workers_override` (the command line) wins over the file's `workers`.
pub fn run(config: Config, path: PathBuf, workers_override: Option<usize>) -> Result<(), RunError> {
    // Before any thread exists, so every thread inherits the mask.
    signals::block().map_err(RunError::Signals)?;
    // The instance lock first: a second `run` of this file stops here, before it binds or
    // probes anything, naming the instance that serves it.
    let socket_path = control_path::resolve(&path, config.control.as_deref())?;
    control_path::prepare_dir(&socket_path, config.control.is_none())?;
    let control_listener = control_path::claim(&socket_path).map_err(|e| match e {
        ClaimError::Running { path: socket, pid } => RunError::AlreadyRunning {
            config: std::fs::canonicalize(&path)
                .unwrap_or_else(|_| path.clone())
                .display()
                .to_string(),
            socket: socket.display().to_string(),
            pid,
        },
        other => RunError::Claim(other),
    })?;
    let registry = Arc::new(Registry::default());
    let (request_tx, request_rx) = crossbeam_channel::unbounded();
    let control = ControlServer::spawn(
        control_listener,
        socket_path.clone(),
        request_tx,
        Arc::clone(&registry),
    )
    .map_err(|source| RunError::Thread {
        what: "the control socket thread",
        source,
    })?;
    info!("control socket {}", socket_path.display());
    sys::probe_io_uring()?;
    match sys::raise_fd_limit() {
        Ok(limit) => info!("file descriptor limit: {limit}"),
        Err(e) => warn!("cannot raise the file descriptor limit: {e}"),
    }
    let cpus = sys::allowed_cpus();
    let worker_count = workers_override.unwrap_or(match config.workers {
        Workers::Auto => cpus.len().max(1),
        Workers::Count(n) => n,
    });

    // Bind everything before starting threads: a port in use fails the start cleanly.
    let bound = config
        .listeners
        .iter()
        .map(|listener| {
            let (sockets, addr) = bind(listener, worker_count)?;
            Ok((listener.clone(), sockets, addr))
        })
        .collect::<Result<Vec<_>, RunError>>()?;
    // Also before any thread: an admin port in use fails the start as cleanly.
    let admin = match config.admin {
        Some(addr) => Some(crate::admin::spawn(addr, Arc::clone(&registry))?),
        None => None,
    };

    let (event_tx, event_rx) = crossbeam_channel::unbounded();
    let workers = spawn_workers(worker_count, &cpus, &event_tx)?;
    await_started(&event_rx, worker_count)?;
    if worker_count > cpus.len() && !cpus.is_empty() {
        warn!(
            "{worker_count} workers on {} CPUs: some workers share a core",
            cpus.len()
        );
    }

    let (transition_tx, transition_rx) = crossbeam_channel::unbounded();
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
    };
    let plane = plane.start(bound);
    let signals = signals::listen().map_err(|source| RunError::Thread {
        what: "the signal thread",
        source,
    })?;
    plane.registry.readiness.set_phase(Phase::Serving);
    info!(
        "ready: {} listener(s) on {worker_count} worker(s)",
        plane.listeners.len()
    );
    notify_or_log("READY=1");
    plane.serve(signals, transition_rx);
    // Served through the drain; stopped once the workers are gone.
    if let Some(admin) = admin {
        admin.stop();
    }
    control.stop();
    Ok(())
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
    /// Restores the operator's admin state (`state_file`), hands the listeners bound by
    /// `run` to the workers and starts the prober.
    fn start(mut self, bound: Vec<(Listener, Vec<Socket>, SocketAddr)>) -> ControlPlane {
        self.load_book();
        for (listener, sockets, addr) in bound {
            self.start_listener(listener, sockets, addr);
        }
        self.sync_book();
        self.publish_registry();
        self.restart_prober();
        self
    }
}
