//! The prober thread's loop: schedules checks, multiplexes every in-flight check (connect,
//! then any send / expect) with one poll(2), samples passive failure counters, feeds the machines and publishes flips.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TryRecvError, TrySendError};
use nix::errno::Errno;
use nix::poll::PollFd;
use ringlb_config::HealthCheck;
use ringlb_scheduler::{AdminState, BackendState};
use socket2::Socket;

use crate::machine::{first_check_offset, next_check, Flip, Machine, Observation};
use crate::probe::{self, Phase, Start, Step};
use crate::{Outcome, ProbeListener, Transition};

/// Longest sleep of the loop: bounds how late passive failures, `update` and `stop` are
/// seen.
pub(crate) const TICK: Duration = Duration::from_millis(10);

pub(crate) enum Command {
    Update(Vec<Baselined>),
    Stop,
}

/// A listener as handed to `spawn`/`update`, with each backend's passive failure counter
/// read on the caller's thread: failures recorded after the call returns are the ones
/// that count, whenever the prober thread gets to the command.
pub(crate) struct Baselined {
    listener: ProbeListener,
    passive_baselines: Vec<u64>,
}

impl Baselined {
    pub(crate) fn all(listeners: Vec<ProbeListener>) -> Vec<Baselined> {
        listeners
            .into_iter()
            .map(|listener| Baselined {
                passive_baselines: listener
                    .backends
                    .iter()
                    .map(|b| b.state.passive_failures())
                    .collect(),
                listener,
            })
            .collect()
    }
}

struct InFlight {
    socket: Socket,
    started: Instant,
    /// The whole check (connect and any exchange) ends by then.
    deadline: Instant,
    phase: Phase,
}

struct Target {
    label: String,
    /// The address checked: the backend's, with the health check's port override.
    addr: SocketAddr,
    state: Arc<BackendState>,
    machine: Machine,
    /// Last `passive_failures()` value fed into the machine.
    passive_seen: u64,
    next_due: Instant,
    inflight: Option<InFlight>,
}

struct Listener {
    name: String,
    check: HealthCheck,
    on_change: Arc<dyn Fn() + Send + Sync>,
    targets: Vec<Target>,
    /// A flip happened this iteration: call `on_change` once at its end.
    changed: bool,
}

pub(crate) struct Runner {
    listeners: Vec<Listener>,
    events: Sender<Transition>,
    dropped: Arc<AtomicU64>,
    commands: Receiver<Command>,
    /// Checks skipped for local reasons (fd exhaustion...) since the last warning.
    local_errors: u64,
    last_local_warning: Option<Instant>,
}

impl Runner {
    pub(crate) fn new(
        events: Sender<Transition>,
        dropped: Arc<AtomicU64>,
        commands: Receiver<Command>,
    ) -> Runner {
        Runner {
            listeners: Vec::new(),
            events,
            dropped,
            commands,
            local_errors: 0,
            last_local_warning: None,
        }
    }

    pub(crate) fn run(mut self, initial: Vec<Baselined>) {
        self.apply(initial, Instant::now());
        loop {
            loop {
                match self.commands.try_recv() {
                    Ok(Command::Update(listeners)) => self.apply(listeners, Instant::now()),
                    // A dropped `Prober` disconnects the channel: stop as well.
                    Ok(Command::Stop) | Err(TryRecvError::Disconnected) => return,
                    Err(TryRecvError::Empty) => break,
                }
            }
            let now = Instant::now();
            self.sample_passive(now);
            self.expire(now);
            self.start_due(now);
            self.wait_and_finish();
            self.notify_changes();
        }
    }

    /// Installs a new listener set. Machines keyed by (listener name, backend label) that
    /// survive keep their counters and schedule; new ones start up with a jittered first
    /// check; removed ones are dropped and their state left up.
    fn apply(&mut self, new: Vec<Baselined>, now: Instant) {
        let mut old: HashMap<(String, String), Target> = HashMap::new();
        let mut old_callbacks: HashMap<String, Arc<dyn Fn() + Send + Sync>> = HashMap::new();
        for listener in self.listeners.drain(..) {
            for target in listener.targets {
                old.insert((listener.name.clone(), target.label.clone()), target);
            }
            old_callbacks.insert(listener.name, listener.on_change);
        }

        for Baselined {
            listener: new_listener,
            passive_baselines,
        } in new
        {
            let check = new_listener.check;
            let count = new_listener.backends.len();
            let mut changed = false;
            let mut targets = Vec::with_capacity(count);
            for (index, (backend, baseline)) in new_listener
                .backends
                .into_iter()
                .zip(passive_baselines)
                .enumerate()
            {
                let addr = match check.port {
                    Some(port) => SocketAddr::new(backend.addr.ip(), port),
                    None => backend.addr,
                };
                let key = (new_listener.name.clone(), backend.label.clone());
                let target = match old.remove(&key) {
                    Some(mut target) => {
                        target.machine.set_thresholds(check.rise, check.fall);
                        if target.addr != addr {
                            target.addr = addr;
                            target.inflight = None;
                        }
                        if !Arc::ptr_eq(&target.state, &backend.state) {
                            target.passive_seen = baseline;
                            target.state = backend.state;
                        }
                        // A shorter interval takes effect now, not after the old one.
                        target.next_due = target.next_due.min(now + check.interval);
                        target
                    }
                    None => Target {
                        label: backend.label,
                        addr,
                        passive_seen: baseline,
                        state: backend.state,
                        machine: Machine::new(check.rise, check.fall),
                        next_due: now
                            + first_check_offset(&new_listener.name, index, count, check.interval),
                        inflight: None,
                    },
                };
                // The machine is the truth; a state handed over down (or reused) follows it.
                if target.state.is_up() != target.machine.is_up() {
                    target.state.set_up(target.machine.is_up());
                    changed = true;
                }
                targets.push(target);
            }
            self.listeners.push(Listener {
                name: new_listener.name,
                check,
                on_change: new_listener.on_change,
                targets,
                changed,
            });
        }

        // Backends no longer checked are always up (a listener without health check, or a
        // backend that left and drains): do not leave them stuck down.
        let mut notify: HashSet<String> = HashSet::new();
        for ((listener, label), target) in old {
            if !target.state.is_up() {
                log::debug!(
                    "prober: no longer checking listener={listener} backend={label}; marking it up"
                );
                target.state.set_up(true);
                notify.insert(listener);
            }
        }
        for listener in &notify {
            if let Some(on_change) = old_callbacks.get(listener) {
                call_on_change(listener, on_change.as_ref());
            }
        }
        self.notify_changes();
    }

    /// Every increase of a backend's passive failure counter counts as that many failed
    /// checks.
    fn sample_passive(&mut self, now: Instant) {
        for li in 0..self.listeners.len() {
            for ti in 0..self.listeners[li].targets.len() {
                let target = &mut self.listeners[li].targets[ti];
                let current = target.state.passive_failures();
                if current <= target.passive_seen {
                    continue;
                }
                if in_maintenance(&target.state) {
                    // Not judged while in maintenance: the count is taken as seen.
                    target.passive_seen = current;
                    continue;
                }
                let increase = current - target.passive_seen;
                target.passive_seen = current;
                let failures = u32::try_from(increase).unwrap_or(u32::MAX);
                self.observe(
                    li,
                    ti,
                    Observation::Failures(failures),
                    Outcome::ClientConnectFailed,
                    true,
                    now,
                );
            }
        }
    }

    /// Checks with no answer by their deadline fail with `timeout`.
    fn expire(&mut self, now: Instant) {
        for li in 0..self.listeners.len() {
            let interval = self.listeners[li].check.interval;
            for ti in 0..self.listeners[li].targets.len() {
                let target = &mut self.listeners[li].targets[ti];
                let Some(inflight) = target.inflight.take_if(|f| f.deadline <= now) else {
                    continue;
                };
                target.next_due = next_check(inflight.started, now, interval);
                drop(inflight.socket);
                self.record(li, ti, inflight.phase.expired(), now);
            }
        }
    }

    /// Starts every check that is due and not already in flight. A backend in
    /// maintenance is skipped (its next check moves one interval on), so its machine and
    /// up flag stay as they were until it leaves maintenance.
    fn start_due(&mut self, now: Instant) {
        for li in 0..self.listeners.len() {
            let (interval, timeout) = (
                self.listeners[li].check.interval,
                self.listeners[li].check.timeout,
            );
            let exchanges = self.listeners[li].check.exchanges();
            for ti in 0..self.listeners[li].targets.len() {
                let target = &mut self.listeners[li].targets[ti];
                if target.inflight.is_some() || target.next_due > now {
                    continue;
                }
                if in_maintenance(&target.state) {
                    target.next_due = next_check(now, now, interval);
                    continue;
                }
                match probe::start(target.addr, exchanges) {
                    Start::Pending(socket) => {
                        target.inflight = Some(InFlight {
                            socket,
                            started: now,
                            deadline: now + timeout,
                            phase: Phase::Connecting,
                        });
                    }
                    Start::Done(outcome) => {
                        target.next_due = next_check(now, now, interval);
                        self.record(li, ti, outcome, now);
                    }
                    Start::Local(err) => {
                        target.next_due = next_check(now, now, interval);
                        self.local_error(&err, now);
                    }
                }
            }
        }
    }

    /// Sleeps in poll(2) until a connect completes, a deadline or the next due check
    /// arrives, or [`TICK`] passes; then finishes every completed check.
    fn wait_and_finish(&mut self) {
        let now = Instant::now();
        let mut wake = now + TICK;
        let mut owners = Vec::new();
        let mut fds = Vec::new();
        for (li, listener) in self.listeners.iter().enumerate() {
            for (ti, target) in listener.targets.iter().enumerate() {
                match &target.inflight {
                    Some(inflight) => {
                        wake = wake.min(inflight.deadline);
                        owners.push((li, ti));
                        fds.push(PollFd::new(
                            inflight.socket.as_fd(),
                            inflight.phase.interest(),
                        ));
                    }
                    None => wake = wake.min(target.next_due),
                }
            }
        }
        let timeout = probe::poll_timeout(wake.saturating_duration_since(now));
        let ready: Vec<(usize, usize)> = match nix::poll::poll(&mut fds, timeout) {
            Ok(0) | Err(Errno::EINTR) => Vec::new(),
            Ok(_) => fds
                .iter()
                .zip(&owners)
                .filter(|(fd, _)| fd.revents().is_some_and(|r| !r.is_empty()))
                .map(|(_, owner)| *owner)
                .collect(),
            Err(errno) => {
                // Cannot happen with valid fds; do not spin if it does.
                log::error!("prober: poll failed: {errno}");
                std::thread::sleep(TICK);
                Vec::new()
            }
        };
        drop(fds);
        let now = Instant::now();
        for (li, ti) in ready {
            let listener = &mut self.listeners[li];
            let Some(target) = listener.targets.get_mut(ti) else {
                continue;
            };
            let Some(mut inflight) = target.inflight.take() else {
                continue;
            };
            let outcome =
                match probe::advance(&inflight.socket, &mut inflight.phase, &listener.check) {
                    Step::Done(outcome) => outcome,
                    Step::Wait => {
                        target.inflight = Some(inflight);
                        continue;
                    }
                };
            target.next_due = next_check(inflight.started, now, listener.check.interval);
            drop(inflight.socket);
            self.record(li, ti, outcome, now);
        }
    }

    /// Feeds an active check's outcome.
    fn record(&mut self, li: usize, ti: usize, outcome: Outcome, now: Instant) {
        let observation = if outcome == Outcome::Ok {
            Observation::Success
        } else {
            Observation::Failures(1)
        };
        log::trace!(
            "prober: check listener={} backend={} outcome={outcome}",
            self.listeners[li].name,
            self.listeners[li].targets[ti].label
        );
        self.observe(li, ti, observation, outcome, false, now);
    }

    fn observe(
        &mut self,
        li: usize,
        ti: usize,
        observation: Observation,
        outcome: Outcome,
        passive: bool,
        now: Instant,
    ) {
        let listener = &mut self.listeners[li];
        let target = &mut listener.targets[ti];
        let Some(Flip {
            up,
            consecutive,
            at,
        }) = target.machine.observe(observation, now)
        else {
            return;
        };
        target.state.set_up(up);
        listener.changed = true;
        let transition = Transition {
            listener: listener.name.clone(),
            backend: target.label.clone(),
            up,
            outcome,
            consecutive,
            passive,
            at,
        };
        match self.events.try_send(transition) {
            Ok(()) => {}
            Err(TrySendError::Full(t)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                log::warn!("prober: event channel full, dropped: {t}");
            }
            // Nobody listens any more; health is still published through the state.
            Err(TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn notify_changes(&mut self) {
        for listener in &mut self.listeners {
            if std::mem::take(&mut listener.changed) {
                call_on_change(&listener.name, listener.on_change.as_ref());
            }
        }
    }

    fn local_error(&mut self, err: &std::io::Error, now: Instant) {
        self.local_errors += 1;
        let due = match self.last_local_warning {
            None => true,
            Some(last) => now.duration_since(last) >= Duration::from_secs(1),
        };
        if due {
            log::warn!(
                "prober: {} check(s) skipped, cannot open a probe socket on this host: {err}",
                self.local_errors
            );
            self.local_errors = 0;
            self.last_local_warning = Some(now);
        }
    }
}

/// `ringlb ctl maint`: the operator works on the backend; it gets no checks.
fn in_maintenance(state: &BackendState) -> bool {
    state.admin_state() == AdminState::Maint
}

/// A panicking callback must not kill health checking for every listener.
fn call_on_change(listener: &str, on_change: &(dyn Fn() + Send + Sync)) {
    if catch_unwind(AssertUnwindSafe(on_change)).is_err() {
        log::error!("prober: on_change of listener={listener} panicked");
    }
}
