//! Whether this process should receive new traffic: what `GET /ready` answers, what the
//! control socket's `ping` and `status` report, and what a routing daemon or an upstream
//! balancer keys on (docs/operations.md).
//!
//! Shared by the control plane (the writer), the admin endpoint and the control socket
//! (readers). Lock-free: two atomics.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

/// Where the process is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Binding listeners and starting workers: not serving yet.
    Starting,
    /// Serving every listener.
    Serving,
    /// SIGTERM/SIGINT/SIGQUIT: listeners closed, connections draining.
    Draining,
    /// A live upgrade is moving this process's sockets and connections to its successor.
    HandingOver,
}

impl Phase {
    fn to_u8(self) -> u8 {
        match self {
            Phase::Starting => 0,
            Phase::Serving => 1,
            Phase::Draining => 2,
            Phase::HandingOver => 3,
        }
    }

    fn from_u8(v: u8) -> Phase {
        match v {
            1 => Phase::Serving,
            2 => Phase::Draining,
            3 => Phase::HandingOver,
            _ => Phase::Starting,
        }
    }
}

/// Why the process should not receive new traffic, most important first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotReady {
    Starting,
    Draining,
    HandingOver,
    /// `ringlb ctl node fail`: the operator took this host out.
    NodeFailed,
}

impl NotReady {
    /// The reason as `/ready` and `ringlb ctl status` print it.
    pub fn as_str(self) -> &'static str {
        match self {
            NotReady::Starting => "starting",
            NotReady::Draining => "draining",
            NotReady::HandingOver => "handing over",
            NotReady::NodeFailed => "node failed",
        }
    }
}

impl fmt::Display for NotReady {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The readiness of this process: its [`Phase`] and the operator's node-failed flag.
#[derive(Debug)]
pub struct Readiness {
    phase: AtomicU8,
    node_failed: AtomicBool,
}

impl Default for Readiness {
    fn default() -> Self {
        Readiness {
            phase: AtomicU8::new(Phase::Starting.to_u8()),
            node_failed: AtomicBool::new(false),
        }
    }
}

impl Readiness {
    pub fn phase(&self) -> Phase {
        Phase::from_u8(self.phase.load(Ordering::Acquire))
    }

    pub fn set_phase(&self, phase: Phase) {
        self.phase.store(phase.to_u8(), Ordering::Release);
    }

    pub fn node_failed(&self) -> bool {
        self.node_failed.load(Ordering::Acquire)
    }

    /// Returns the previous value.
    pub fn set_node_failed(&self, failed: bool) -> bool {
        self.node_failed.swap(failed, Ordering::AcqRel)
    }

    /// `Ok` while serving and the node is not failed; otherwise the most important reason
    /// (a draining or handing-over process is that first, whatever the node flag says).
    pub fn check(&self) -> Result<(), NotReady> {
        match self.phase() {
            Phase::Starting => Err(NotReady::Starting),
            Phase::Draining => Err(NotReady::Draining),
            Phase::HandingOver => Err(NotReady::HandingOver),
            Phase::Serving if self.node_failed() => Err(NotReady::NodeFailed),
            Phase::Serving => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_while_serving_and_not_node_failed() {
        let r = Readiness::default();
        assert_eq!(r.check(), Err(NotReady::Starting));
        r.set_phase(Phase::Serving);
        assert_eq!(r.check(), Ok(()));
        assert!(!r.set_node_failed(true));
        assert_eq!(r.check(), Err(NotReady::NodeFailed));
        for (phase, why) in [
            (Phase::Draining, NotReady::Draining),
            (Phase::HandingOver, NotReady::HandingOver),
            (Phase::Starting, NotReady::Starting),
        ] {
            r.set_phase(phase);
            assert_eq!(r.check(), Err(why), "{phase:?} wins over node failed");
            assert_eq!(r.phase(), phase);
        }
        r.set_phase(Phase::Serving);
        assert!(r.set_node_failed(false));
        assert_eq!(r.check(), Ok(()));
    }
}
