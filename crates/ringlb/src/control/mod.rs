//! The control plane: binds listeners, starts the workers and the prober, then turns
//! signals into reloads and a draining shutdown. It runs on the main thread and never on a
//! worker's ring.
//!
//! - `startup`: [`run`] binds every listener, starts the threads, then serves.
//! - `listeners`: starts, renames and stops one listener on the workers; keeps the admin
//!   registry and the health prober in step.
//! - `plan`: what a reload changes (pure).
//! - `reload`: loads the file, carries a plan out and keeps as the running configuration
//!   only what really runs.
//! - `shutdown`: drain, then cut.

// Every control-plane line keeps the target `ringlb::control`, whichever file of this
// module writes it: operators filter (`RUST_LOG`) and grep on it.
macro_rules! debug { ($($arg:tt)+) => { log::debug!(target: "ringlb::control", $($arg)+) }; }
macro_rules! info { ($($arg:tt)+) => { log::info!(target: "ringlb::control", $($arg)+) }; }
macro_rules! warn { ($($arg:tt)+) => { log::warn!(target: "ringlb::control", $($arg)+) }; }
macro_rules! error { ($($arg:tt)+) => { log::error!(target: "ringlb::control", $($arg)+) }; }

mod inherit;
mod listeners;
mod plan;
mod reload;
mod shutdown;
mod startup;
mod upgrade;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use crossbeam_channel::{select, Receiver, Sender};
use ringlb_config::Config;
use ringlb_dataplane::worker::{WorkerEvent, WorkerHandle};
use ringlb_dataplane::ListenerState;
use ringlb_prober::{Prober, Transition};

use crate::registry::Registry;
use crate::signals::ControlSignal;

pub use startup::run;
use startup::Exit;

struct ControlPlane {
    /// Exactly what runs: a listener a reload failed to bind is kept here as it still runs
    /// (or left out when it never ran), so the next reload plans from the truth.
    config: Config,
    path: PathBuf,
    workers: Vec<WorkerHandle>,
    events: Receiver<WorkerEvent>,
    /// The running listeners by name; the same names as `config.listeners`.
    listeners: HashMap<String, Arc<ListenerState>>,
    prober: Option<Prober>,
    transitions: Sender<Transition>,
    registry: Arc<Registry>,
    log_level_from_env: bool,
    /// A duplicate of every worker's listening socket, by listener: what a live upgrade
    /// hands to the new process, and what accepting again starts from if it is called off.
    sockets: HashMap<String, Vec<socket2::Socket>>,
    /// A duplicate of the admin endpoint's socket, for the same reason.
    admin_socket: Option<std::net::TcpListener>,
}

impl ControlPlane {
    fn serve(
        mut self,
        signals: Receiver<ControlSignal>,
        transitions: Receiver<Transition>,
    ) -> Exit {
        loop {
            select! {
                recv(signals) -> signal => match signal {
                    Ok(ControlSignal::Reload) => self.reload(),
                    Ok(ControlSignal::Upgrade) => match self.upgrade(None) {
                        Ok(handed) => {
                            info!(
                                "upgrade: handed {} listener(s) and {} connection(s) to pid {} in {:?}; exiting",
                                handed.listeners, handed.conns, handed.pid, handed.took
                            );
                            self.shutdown(nix::sys::signal::Signal::SIGUSR2, &signals, &transitions);
                            return Exit::Upgraded;
                        }
                        Err(e) => error!("upgrade failed: {e}; this process keeps serving"),
                    },
                    Ok(ControlSignal::Shutdown(sig)) => {
                        self.shutdown(sig, &signals, &transitions);
                        return Exit::Shutdown;
                    }
                    Err(_) => {
                        error!("signal thread ended; shutting down");
                        self.shutdown(nix::sys::signal::Signal::SIGTERM, &signals, &transitions);
                        return Exit::Shutdown;
                    }
                },
                recv(transitions) -> transition => {
                    if let Ok(t) = transition {
                        self.log_transition(&t);
                    }
                }
                recv(self.events) -> event => {
                    if let Ok(event) = event {
                        debug!("worker event: {event:?}");
                    }
                }
            }
        }
    }

    fn log_transition(&self, t: &Transition) {
        if t.up {
            info!("{t}");
        } else {
            warn!("{t}");
        }
        self.registry
            .record_transition(&t.listener, &t.backend, t.up, t.to_string());
    }
}
