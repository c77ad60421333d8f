//! ringlb-prober: backend health.
//!
//! Owns: active TCP checks (interval, timeout, rise, fall; connect, or connect, send and
//! expect a reply) for every backend of
//! every health-checked listener, on ONE thread (`ringlb-prober`) that multiplexes
//! non-blocking connects with poll(2); ingestion of passive failures (real client
//! connects the data plane saw refused or time out); the pure rise/fall state machine
//! ([`machine`]), skipping backends the operator put in maintenance
//! ([`ringlb_scheduler::AdminState::Maint`]); publishing up/down into [`BackendState::set_up`] — the prober is the
//! only writer of it — and sending every [`Transition`] over a crossbeam channel.
//!
//! Must not: block on one backend, spawn a thread per check, depend on the scheduler's
//! tables or the data plane (it sees backends only through `Arc<BackendState>`), log the
//! transitions itself (the control plane logs them, using [`Transition`]'s `Display`), or
//! block on the event channel.
//!
//! Health semantics, outcomes and detection bounds: `docs/health.md`.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod machine;
mod probe;
mod runner;

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use crossbeam_channel::Sender;
pub use probe::probe_once;
pub use ringlb_config::HealthCheck;
pub use ringlb_scheduler::BackendState;
use ringlb_scheduler::ConnectFailure;

use runner::{Baselined, Command, Runner};

/// One backend to check.
#[derive(Debug, Clone)]
pub struct ProbeBackend {
    /// The backend's `addr` as written in the config: its identity across reloads and the
    /// `backend=` field of the transition line.
    pub label: String,
    /// The backend's address; the prober applies `HealthCheck::port` itself.
    pub addr: SocketAddr,
    pub state: Arc<BackendState>,
}

/// One health-checked listener. Listeners without `health_check` are not given to the
/// prober: their backends are always up.
#[derive(Clone)]
pub struct ProbeListener {
    pub name: String,
    pub check: HealthCheck,
    pub backends: Vec<ProbeBackend>,
    /// Called on the prober thread after up/down flips in this listener (once per loop
    /// iteration however many flipped), e.g. to rebuild maglev. Keep it short: the
    /// prober's checks wait for it. A panic in it is caught and logged.
    pub on_change: Arc<dyn Fn() + Send + Sync>,
}

impl fmt::Debug for ProbeListener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProbeListener")
            .field("name", &self.name)
            .field("check", &self.check)
            .field("backends", &self.backends)
            .finish_non_exhaustive()
    }
}

/// What a check (or a passive failure) found. `Display` gives the `outcome=` token of the
/// transition line: one word, no spaces.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The TCP handshake completed and, with `send` / `expect`, the reply passed (`ok`).
    Ok,
    /// ECONNREFUSED: the host answered with RST, nothing listens on the port (`refused`).
    Refused,
    /// No answer within the check's `timeout`, or the kernel's ETIMEDOUT (`timeout`).
    Timeout,
    /// EHOSTUNREACH, ENETUNREACH, EHOSTDOWN, ENETDOWN: no route or ICMP unreachable
    /// (`unreachable`).
    Unreachable,
    /// Any other errno, by name, e.g. `Error("EACCES")` → `error:EACCES`.
    Error(String),
    /// Connected, but nothing (or less than `expect`) came back within the check's
    /// `timeout` (`no_reply`): e.g. a stopped process whose kernel still accepts.
    NoReply,
    /// The reply's first bytes differ from `expect` (`bad_reply`).
    BadReply,
    /// The backend closed or reset the connection before a full reply (`closed`).
    Closed,
    /// Real client connects to the backend were refused or timed out: the data plane's
    /// `record_connect_failure` (`client_connect_failed`). The data plane does not say
    /// which of the two, so the prober does not pretend to know.
    ClientConnectFailed,
}

impl From<ConnectFailure> for Outcome {
    fn from(failure: ConnectFailure) -> Self {
        match failure {
            ConnectFailure::Refused => Outcome::Refused,
            ConnectFailure::Timeout => Outcome::Timeout,
            ConnectFailure::Unreachable => Outcome::Unreachable,
            ConnectFailure::Error(errno) => Outcome::Error(errno),
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Ok => f.write_str("ok"),
            Outcome::Refused => f.write_str("refused"),
            Outcome::Timeout => f.write_str("timeout"),
            Outcome::Unreachable => f.write_str("unreachable"),
            Outcome::Error(errno) => write!(f, "error:{errno}"),
            Outcome::NoReply => f.write_str("no_reply"),
            Outcome::BadReply => f.write_str("bad_reply"),
            Outcome::Closed => f.write_str("closed"),
            Outcome::ClientConnectFailed => f.write_str("client_connect_failed"),
        }
    }
}

/// An up/down flip of one backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub listener: String,
    /// The backend's label (its `addr` as written in the config).
    pub backend: String,
    /// The new state.
    pub up: bool,
    /// The result that completed the streak.
    pub outcome: Outcome,
    /// Length of that streak (≥ rise or fall; more after a burst of passive failures).
    pub consecutive: u32,
    /// The flip was caused by real client connects, not by an active check.
    pub passive: bool,
    pub at: Instant,
}

impl fmt::Display for Transition {
    /// `backend down: listener=NAME backend=ADDR outcome=refused consecutive=3`, then
    /// ` passive=true` when passive. Log it at warn when down, info when up.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "backend {}: listener={} backend={} outcome={} consecutive={}",
            if self.up { "up" } else { "down" },
            self.listener,
            self.backend,
            self.outcome,
            self.consecutive
        )?;
        if self.passive {
            f.write_str(" passive=true")?;
        }
        Ok(())
    }
}

/// Handle of the prober thread. Dropping it stops the thread like [`Prober::stop`].
pub struct Prober {
    commands: crossbeam_channel::Sender<Command>,
    thread: Option<JoinHandle<()>>,
    dropped: Arc<AtomicU64>,
}

impl Prober {
    /// Starts the `ringlb-prober` thread checking `listeners`. Transitions go to `events`
    /// with `try_send`: a full bounded channel drops them (counted by
    /// [`Prober::dropped_events`]), it never blocks the prober. Use an unbounded channel
    /// unless losing log lines is preferable to memory growth.
    ///
    /// Passive failures count from this call on: each backend's `passive_failures()` is
    /// read here, on the caller's thread, as the starting point.
    pub fn spawn(
        listeners: Vec<ProbeListener>,
        events: Sender<Transition>,
    ) -> std::io::Result<Prober> {
        let (commands, receiver) = crossbeam_channel::unbounded();
        let dropped = Arc::new(AtomicU64::new(0));
        let runner = Runner::new(events, Arc::clone(&dropped), receiver);
        let listeners = Baselined::all(listeners);
        let thread = std::thread::Builder::new()
            .name("ringlb-prober".into())
            .spawn(move || runner.run(listeners))?;
        Ok(Prober {
            commands,
            thread: Some(thread),
            dropped,
        })
    }

    /// Reload: replaces the checked set (seen by the thread within ~10 ms). Machines of
    /// (listener name, backend label) that survive keep their counters, state and schedule
    /// (new rise/fall/interval apply from their next check); new ones start up, with a
    /// first check spread over the interval; removed ones are dropped and their state set
    /// up (an unchecked backend is always up).
    /// As with `spawn`, a new backend's passive failures count from this call on.
    pub fn update(&self, listeners: Vec<ProbeListener>) {
        // Fails only if the thread is gone (it panicked); nothing to update then.
        if self
            .commands
            .send(Command::Update(Baselined::all(listeners)))
            .is_err()
        {
            log::error!("prober: thread is not running; health update ignored");
        }
    }

    /// Transitions dropped because the event channel was full or disconnected.
    pub fn dropped_events(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Stops and joins the thread; returns within about 10 ms (one loop tick). In-flight
    /// checks are abandoned (their sockets closed).
    pub fn stop(self) {
        drop(self);
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        let _ = self.commands.send(Command::Stop);
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                log::error!("prober: thread panicked");
            }
        }
    }
}

impl fmt::Debug for Prober {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Prober")
            .field(
                "running",
                &self.thread.as_ref().is_some_and(|t| !t.is_finished()),
            )
            .field("dropped_events", &self.dropped_events())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transition(up: bool, outcome: Outcome, passive: bool) -> Transition {
        Transition {
            listener: "payment".into(),
            backend: "10.0.0.11:7000".into(),
            up,
            outcome,
            consecutive: 3,
            passive,
            at: Instant::now(),
        }
    }

    #[test]
    fn transition_line_shape() {
        assert_eq!(
            transition(false, Outcome::Refused, false).to_string(),
            "backend down: listener=payment backend=10.0.0.11:7000 outcome=refused consecutive=3"
        );
        assert_eq!(
            transition(true, Outcome::Ok, false).to_string(),
            "backend up: listener=payment backend=10.0.0.11:7000 outcome=ok consecutive=3"
        );
        assert_eq!(
            transition(false, Outcome::ClientConnectFailed, true).to_string(),
            "backend down: listener=payment backend=10.0.0.11:7000 outcome=client_connect_failed consecutive=3 passive=true"
        );
    }

    #[test]
    fn outcome_tokens() {
        let all = [
            (Outcome::Ok, "ok"),
            (Outcome::Refused, "refused"),
            (Outcome::Timeout, "timeout"),
            (Outcome::Unreachable, "unreachable"),
            (Outcome::Error("EACCES".into()), "error:EACCES"),
            (Outcome::ClientConnectFailed, "client_connect_failed"),
        ];
        for (outcome, text) in all {
            assert_eq!(outcome.to_string(), text);
        }
    }
}
