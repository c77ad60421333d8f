//! SIGTERM/SIGINT: stop accepting and let connections drain for up to `shutdown_timeout`
//! (a second signal ends the wait), then cut what is left and join the workers.

use std::time::{Duration, Instant};

use crossbeam_channel::{select, Receiver};
use nix::sys::signal::Signal;
use ringlb_dataplane::worker::{Command, WorkerEvent};
use ringlb_prober::Transition;

use super::ControlPlane;
use crate::notify::notify_or_log;
use crate::readiness::Phase;
use crate::signals::ControlSignal;

/// How a wait while stopping ended.
enum Waited {
    Done,
    Deadline,
    /// A second shutdown signal.
    Signal(Signal),
}

/// After the cut, how long to wait for workers to report and exit.
const WORKER_EXIT_TIMEOUT: Duration = Duration::from_secs(10);

impl ControlPlane {
    pub(super) fn shutdown(
        mut self,
        signal: Signal,
        signals: &Receiver<ControlSignal>,
        transitions: &Receiver<Transition>,
    ) {
        // After a live upgrade the audit log is the new process's to write.
        if signal != Signal::SIGUSR2 {
            self.audit("shutdown", serde_json::json!({ "signal": signal.as_str() }));
        }
        // After a live upgrade this process still shares the admin socket with the new
        // one while it drains what did not move: it goes on answering "handing over",
        // since the host serves on. "draining" would make a routing daemon following
        // /ready withdraw it.
        if signal != Signal::SIGUSR2 {
            self.registry.readiness.set_phase(Phase::Draining);
        }
        // After a live upgrade (SIGUSR2) the service goes on in the new process, which
        // systemd now follows: a STOPPING=1 from here would stop the unit, and with it the
        // new process.
        if signal != Signal::SIGUSR2 {
            notify_or_log("STOPPING=1");
        }
        let delay = self.config.withdraw_delay;
        if signal != Signal::SIGUSR2 && !delay.is_zero() {
            info!(
                "{signal}: /ready answers 503; still accepting for withdraw_delay {delay:?} so routers following it stop sending new connections first"
            );
            if !self.withdraw(delay, signals, transitions) {
                warn!("shutdown signal again: skipping the rest of withdraw_delay");
            }
        }
        // The listening sockets close once the workers drop theirs: new connects are
        // refused for the whole drain, not queued on copies kept for a live upgrade.
        self.sockets.clear();
        let timeout = self.config.shutdown_timeout;
        let live: u32 = self.listeners.values().map(|l| l.active()).sum();
        info!("{signal}: stopped accepting; draining {live} connection(s) for up to {timeout:?}");
        self.drain(timeout, signals, transitions);
        let cut = self.cut();
        if let Some(prober) = self.prober.take() {
            prober.stop();
        }
        if cut > 0 {
            warn!("shutdown: {cut} connection(s) still open after {timeout:?} were cut");
        } else {
            info!("shutdown: all connections finished");
        }
        for worker in self.workers.drain(..) {
            worker.join();
        }
        // After a live upgrade the tables are the new process's to keep.
        if signal != Signal::SIGUSR2 {
            self.save_sticky_now();
        }
    }

    /// Phase 0: `/ready` already answers 503 and the listeners still accept for `delay`,
    /// while health transitions and control requests are served. Returns false when a
    /// second shutdown signal cut it short.
    fn withdraw(
        &mut self,
        delay: Duration,
        signals: &Receiver<ControlSignal>,
        transitions: &Receiver<Transition>,
    ) -> bool {
        let ended = self.serve_until(Instant::now() + delay, signals, transitions, |_| false);
        !matches!(ended, Waited::Signal(_))
    }

    /// Phase 1: every worker stops accepting; waits until all report `Drained`, `timeout`
    /// passes or a second shutdown signal comes. Health transitions are still logged and
    /// `ringlb ctl status` still answered.
    fn drain(
        &mut self,
        timeout: Duration,
        signals: &Receiver<ControlSignal>,
        transitions: &Receiver<Transition>,
    ) {
        self.broadcast(|| Command::Drain);
        let workers = self.workers.len();
        if workers == 0 {
            return;
        }
        let mut drained = 0;
        let ended = self.serve_until(Instant::now() + timeout, signals, transitions, |event| {
            if matches!(event, WorkerEvent::Drained { .. }) {
                drained += 1;
            }
            drained >= workers
        });
        if let Waited::Signal(again) = ended {
            warn!("{again} again: cutting connections now");
        }
    }

    /// While stopping: serves health transitions and (read-only) control requests until
    /// `done` says a worker event finished the wait, `deadline` passes, or a second
    /// shutdown signal comes.
    fn serve_until(
        &mut self,
        deadline: Instant,
        signals: &Receiver<ControlSignal>,
        transitions: &Receiver<Transition>,
        mut done: impl FnMut(&WorkerEvent) -> bool,
    ) -> Waited {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Waited::Deadline;
            }
            select! {
                recv(self.events) -> event => match event {
                    Ok(event) if done(&event) => return Waited::Done,
                    Ok(_) => {}
                    // Every worker is gone: nothing left to wait for.
                    Err(_) => return Waited::Done,
                },
                recv(signals) -> s => {
                    if let Ok(ControlSignal::Shutdown(again)) = s {
                        return Waited::Signal(again);
                    }
                }
                recv(transitions) -> t => {
                    if let Ok(t) = t {
                        self.on_transition(&t);
                    }
                }
                recv(self.requests) -> request => {
                    if let Ok(r) = request {
                        self.handle_audited(r, true);
                    }
                }
                default(left) => return Waited::Deadline,
            }
        }
    }

    /// Phase 2: every worker resets what is left and exits; returns how many connections
    /// were cut.
    fn cut(&self) -> usize {
        self.broadcast(|| Command::Cut);
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
                    error!(
                        "{} worker(s) did not finish in time",
                        self.workers.len() - finished
                    );
                    break;
                }
            }
        }
        cut
    }
}
