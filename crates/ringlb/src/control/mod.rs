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
//! - `commands`: control-socket requests (`ringlb ctl`), applied here.
//! - `sessions`: ending a backend's open connections (`on_down`, `shutdown-sessions`).
//! - `admin_book`: the operator's admin state and weights, and the `state_file`.
//! - `ports`: refusing a port another process already serves.
//! - `upgrade`: the live-upgrade hook.
//! - `sticky`: learned stickiness: its tick, the tables kept across reloads, upgrades and
//!   restarts, `ringlb ctl stick`.

// Every control-plane line keeps the target `ringlb::control`, whichever file of this
// module writes it: operators filter (`RUST_LOG`) and grep on it.
macro_rules! debug { ($($arg:tt)+) => { log::debug!(target: "ringlb::control", $($arg)+) }; }
macro_rules! info { ($($arg:tt)+) => { log::info!(target: "ringlb::control", $($arg)+) }; }
macro_rules! warn { ($($arg:tt)+) => { log::warn!(target: "ringlb::control", $($arg)+) }; }
macro_rules! error { ($($arg:tt)+) => { log::error!(target: "ringlb::control", $($arg)+) }; }

mod admin_book;
mod audited;
mod commands;
mod inherit;
mod listeners;
mod plan;
pub(crate) mod ports;
mod reload;
mod route_pools;
mod sessions;
mod shutdown;
mod startup;
mod steering;
mod sticky;

pub(crate) use steering::failback_name;
mod upgrade;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use crossbeam_channel::{select, Receiver, Sender};
use ringlb_config::Config;
use ringlb_dataplane::worker::{WorkerEvent, WorkerHandle};
use ringlb_dataplane::ListenerState;
use ringlb_prober::{Prober, Transition};

use crate::control_socket::ControlRequest;
use crate::registry::Registry;
use crate::signals::ControlSignal;
use admin_book::AdminBook;

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
    /// Control-socket requests (`ringlb ctl`), answered on this thread.
    requests: Receiver<ControlRequest>,
    /// The operator's admin state and weights; the truth every new scheduler is given.
    book: AdminBook,
    /// A duplicate of every worker's listening socket, by listener: what a live upgrade
    /// hands to the new process, and what accepting again starts from if it is called off.
    sockets: HashMap<String, Vec<socket2::Socket>>,
    /// A duplicate of the admin endpoint's socket, for the same reason.
    admin_socket: Option<std::net::TcpListener>,
    /// Set by a live upgrade that handed everything over: the serve loop then exits.
    handed_over: Option<upgrade::Handed>,
    /// The tiers each listener used at the last look: `on_recover` sheds connections on
    /// tiers that fell out of use.
    tiers_seen: HashMap<String, Option<ringlb_scheduler::TierRange>>,
    /// `audit_log`, when configured.
    audit: Option<std::cell::RefCell<crate::audit::AuditLog>>,
    /// Sticky tables waiting for their listener, and their state file.
    sticky: sticky::StickyKeeper,
}

impl ControlPlane {
    fn serve(
        mut self,
        signals: Receiver<ControlSignal>,
        transitions: Receiver<Transition>,
    ) -> Exit {
        let steer_tick = crossbeam_channel::tick(steering::STEER_TICK);
        loop {
            select! {
                recv(steer_tick) -> _ => self.steer(),
                recv(signals) -> signal => match signal {
                    Ok(ControlSignal::Reload) => self.reload(),
                    Ok(ControlSignal::Upgrade) => {
                        info!("SIGUSR2: starting a live upgrade");
                        if let Err(why) = self.start_upgrade(None) {
                            error!("upgrade failed: {why}; this process keeps serving");
                        }
                    }
                    Ok(ControlSignal::Ignored(sig)) => {
                        info!("{sig}: ignored (logs go to stderr: there is no log file to reopen)");
                    }
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
                        self.on_transition(&t);
                    }
                }
                recv(self.events) -> event => {
                    if let Ok(event) = event {
                        debug!("worker event: {event:?}");
                    }
                }
                recv(self.requests) -> request => {
                    if let Ok(r) = request {
                        self.handle_audited(r, false);
                    }
                }
            }
            // After the reply to `ringlb upgrade` went out: everything is the new process's.
            if let Some(handed) = self.handed_over.take() {
                info!(
                    "upgrade: handed {} listener(s), {} connection(s) and {} session(s) to pid {} in {:?}; exiting",
                    handed.listeners, handed.conns, handed.sessions, handed.pid, handed.took
                );
                self.shutdown(nix::sys::signal::Signal::SIGUSR2, &signals, &transitions);
                return Exit::Upgraded;
            }
        }
    }

    /// Gives every running listener's backends their settings from the book and drops
    /// the settings of backends that no longer run (logged), saving the book if that
    /// changed it.
    fn sync_book(&mut self) {
        for shared in self.listeners.values() {
            self.book.apply(&shared.name, &shared.scheduler);
        }
        let listeners = &self.listeners;
        self.book.retain_holds(|l| listeners.contains_key(l));
        let dropped = self.book.retain_running(|listener, backend| {
            listeners.get(listener).is_some_and(|l| {
                l.scheduler
                    .snapshot()
                    .backends()
                    .iter()
                    .any(|b| b.spec.label == backend)
            })
        });
        for (listener, backend, setting) in &dropped {
            info!(
                "admin state of listener \"{listener}\" backend {backend} ({}) forgotten: it is not in the configuration",
                setting.state
            );
        }
        if !dropped.is_empty() {
            if let Err(e) = self.save_book() {
                warn!("{e}");
            }
        }
    }

    /// Writes the book to `state_file`, if there is one.
    fn save_book(&self) -> Result<(), String> {
        let Some(path) = &self.config.state_file else {
            return Ok(());
        };
        self.book.save(path).map_err(|e| {
            let message = format!(
                "state_file {}: cannot write it: {e}; the change applies but will not survive a restart",
                path.display()
            );
            warn!("{message}");
            message
        })
    }

    /// Reads `state_file` at start; a file that cannot be read is reported and ignored.
    fn load_book(&mut self) {
        let Some(path) = self.config.state_file.clone() else {
            return;
        };
        match AdminBook::load(&path) {
            Ok(Some(book)) => {
                info!("state_file {}: admin state restored", path.display());
                self.registry.readiness.set_node_failed(book.node_failed);
                if book.node_failed {
                    warn!("node failed (from state_file): /ready answers 503 until `ringlb ctl node ok`");
                }
                self.book = book;
            }
            Ok(None) => {}
            Err(e) => warn!(
                "state_file {}: {e}; ignored: every backend starts ready",
                path.display()
            ),
        }
    }

    fn log_transition(&self, t: &Transition) {
        // The fields are what the JSON log format writes besides the message.
        let level = if t.up {
            log::Level::Info
        } else {
            log::Level::Warn
        };
        log::log!(target: "ringlb::control", level,
            listener = t.listener.as_str(), backend = t.backend.as_str(),
            outcome:% = t.outcome, consecutive = t.consecutive, passive = t.passive;
            "{t}");
        self.registry
            .record_transition(&t.listener, &t.backend, t.up, t.to_string());
    }
}
