//! File-descriptor budget: UDP sessions (one upstream socket each) may use the process's
//! descriptors only up to a budget computed once at start, so a flood of new UDP clients
//! cannot starve TCP accepts, backend connects, the admin endpoint or the prober.
//!
//! The budget is `RLIMIT_NOFILE − reserve − descriptors already open at start`, with
//! `reserve = max(1024, 10 % of the limit)` (at most half the limit); see docs/udp.md.
//! Admission is one atomic add and compare per new session, never a syscall per datagram.

use std::sync::atomic::{AtomicUsize, Ordering};

use ringlb_config::{Config, Transport};

/// Descriptors kept for everything but UDP upstream sockets, at least.
const RESERVE_MIN: u64 = 1024;

/// UDP upstream sockets open in this process (all listeners, all workers).
static UDP_SOCKETS: AtomicUsize = AtomicUsize::new(0);
/// How many there may be; unlimited until [`set_udp_budget`] runs.
static UDP_BUDGET: AtomicUsize = AtomicUsize::new(usize::MAX);

/// Descriptors reserved for TCP, the admin endpoint and the prober under `limit`:
/// `max(1024, limit / 10)`, but at most half the limit so a small limit still leaves UDP
/// some room.
pub fn reserve(limit: u64) -> u64 {
    RESERVE_MIN.max(limit / 10).min(limit / 2)
}

/// What the configured limits could need against the descriptor limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdPlan {
    /// RLIMIT_NOFILE (soft).
    pub limit: u64,
    pub reserve: u64,
    /// Sum over listeners: TCP `max_connections × 2` (client + backend socket), UDP
    /// `max_sessions` (one upstream socket each).
    pub needed: u64,
}

impl FdPlan {
    pub fn new(config: &Config, limit: u64) -> Self {
        let needed = config
            .listeners
            .iter()
            .map(|l| match &l.transport {
                Transport::Tcp(_) => u64::from(l.max_connections) * 2,
                Transport::Udp(udp) => u64::from(udp.max_sessions),
            })
            .sum();
        FdPlan {
            limit,
            reserve: reserve(limit),
            needed,
        }
    }

    /// `Some(message)` when the configured limits exceed what the descriptor limit leaves
    /// after the reserve. A warning only: the limits are ceilings, not expected load.
    pub fn warning(&self) -> Option<String> {
        let available = self.limit.saturating_sub(self.reserve);
        (self.needed > available).then(|| {
            format!(
                "the configured limits may need {} file descriptors (sum of max_connections x 2 over tcp listeners and max_sessions over udp listeners), more than the {} left by RLIMIT_NOFILE {} minus the reserve of {}; new udp sessions are refused (reason=resources) before they eat into the reserve; raise the limit (ulimit -n, LimitNOFILE=) or lower max_connections / max_sessions",
                self.needed, available, self.limit, self.reserve
            )
        })
    }
}

/// Set the process's UDP socket budget once at start (after raising RLIMIT_NOFILE):
/// `limit − reserve(limit) − open` where `open` counts the descriptors already open.
/// Returns the budget.
pub fn set_udp_budget(limit: u64, open: u64) -> usize {
    let budget = usize::try_from(udp_budget(limit, open)).unwrap_or(usize::MAX);
    UDP_BUDGET.store(budget, Ordering::Relaxed);
    budget
}

/// At start, after RLIMIT_NOFILE was raised to `limit`: warn if the configured limits
/// exceed it (minus the reserve) and set the UDP socket budget.
pub fn apply(config: &Config, limit: u64) {
    let plan = FdPlan::new(config, limit);
    if let Some(warning) = plan.warning() {
        log::warn!("{warning}");
    }
    let open = open_fds();
    let budget = set_udp_budget(limit, open);
    log::info!(
        "udp socket budget: {budget} (RLIMIT_NOFILE {limit} - reserve {} - {open} open at start)",
        plan.reserve
    );
}

/// UDP upstream sockets allowed under `limit` with `open` descriptors already taken.
pub fn udp_budget(limit: u64, open: u64) -> u64 {
    limit.saturating_sub(reserve(limit)).saturating_sub(open)
}

/// Descriptors open in this process now (for [`set_udp_budget`]); 0 if unknown.
pub fn open_fds() -> u64 {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64)
}

/// The budget in force and the UDP upstream sockets open now.
pub fn udp_usage() -> (usize, usize) {
    (
        UDP_BUDGET.load(Ordering::Relaxed),
        UDP_SOCKETS.load(Ordering::Relaxed),
    )
}

/// One UDP upstream socket counted against the budget; dropping it gives the slot back.
#[derive(Debug)]
pub(crate) struct UdpSlot(());

impl UdpSlot {
    /// `None`: the budget is used up.
    pub(crate) fn try_acquire() -> Option<Self> {
        // `then`, not `then_some`: a slot built and dropped on refusal would decrement.
        take(&UDP_SOCKETS, UDP_BUDGET.load(Ordering::Relaxed)).then(|| UdpSlot(()))
    }

    /// Counted whatever the budget, so the count stays true: a socket that exists already
    /// (a session handed over by a live upgrade), or one that replaces a session's socket
    /// about to close (a move to another backend), which must not fail at a full budget.
    pub(crate) fn force() -> Self {
        UDP_SOCKETS.fetch_add(1, Ordering::Relaxed);
        UdpSlot(())
    }
}

/// One more in `count` unless that would pass `budget`. Add first, then check, so two
/// workers racing for the last place cannot both take it.
fn take(count: &AtomicUsize, budget: usize) -> bool {
    if count.fetch_add(1, Ordering::Relaxed) >= budget {
        count.fetch_sub(1, Ordering::Relaxed);
        return false;
    }
    true
}

impl Drop for UdpSlot {
    fn drop(&mut self) {
        UDP_SOCKETS.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserve_is_max_of_1024_and_a_tenth_capped_at_half() {
        assert_eq!(reserve(20_000), 2_000);
        assert_eq!(reserve(1_048_576), 104_857);
        assert_eq!(reserve(4_096), 1_024);
        assert_eq!(reserve(2_048), 1_024);
        assert_eq!(reserve(512), 256);
    }

    #[test]
    fn take_stops_at_the_budget_and_leaves_the_count_true() {
        let count = AtomicUsize::new(0);
        assert!(take(&count, 2));
        assert!(take(&count, 2));
        assert!(!take(&count, 2));
        assert_eq!(count.load(Ordering::Relaxed), 2);
        assert!(!take(&count, 0));
        assert!(take(&count, usize::MAX));
    }

    #[test]
    fn budget_is_the_limit_minus_reserve_and_open() {
        assert_eq!(udp_budget(20_000, 6), 17_994);
        assert_eq!(udp_budget(1_024, 25), 487);
        assert_eq!(udp_budget(100, 80), 0);
    }

    fn config(yaml: &str) -> Config {
        ringlb_config::parse(yaml).unwrap()
    }

    #[test]
    fn plan_warns_when_limits_exceed_the_limit_minus_reserve() {
        let c = config(
            "listeners:\n  - {name: t, bind: 127.0.0.1:1, protocol: tcp, max_connections: 1000, backends: [{addr: 127.0.0.1:2}]}\n  - {name: u, bind: 127.0.0.1:1, protocol: udp, backends: [{addr: 127.0.0.1:2}]}\n",
        );
        let plan = FdPlan::new(&c, 20_000);
        assert_eq!(plan.needed, 2_000 + 100_000);
        assert_eq!(plan.reserve, 2_000);
        let w = plan.warning().unwrap();
        assert!(
            w.contains("102000") && w.contains("18000") && w.contains("20000"),
            "{w}"
        );
        assert_eq!(FdPlan::new(&c, 1 << 20).warning(), None);
    }
}
