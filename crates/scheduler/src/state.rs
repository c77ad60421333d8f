//! Live per-backend state shared by workers, the prober and the admin endpoint.
//! Plain atomics: a worker's pick reads them, nobody takes a lock.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

/// What the operator says about a backend (`ringlb ctl drain|maint|ready`), independent of
/// its health.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AdminState {
    /// Normal: a candidate for new connections while it is up.
    Ready,
    /// No new connections; established ones stay; health checks go on.
    Drain,
    /// Like `Drain`, and the prober does not check it either.
    Maint,
}

impl AdminState {
    pub const ALL: [AdminState; 3] = [AdminState::Ready, AdminState::Drain, AdminState::Maint];

    pub fn as_str(self) -> &'static str {
        match self {
            AdminState::Ready => "ready",
            AdminState::Drain => "drain",
            AdminState::Maint => "maint",
        }
    }

    pub fn parse(text: &str) -> Option<AdminState> {
        AdminState::ALL.into_iter().find(|s| s.as_str() == text)
    }

    fn to_bits(self) -> u64 {
        match self {
            AdminState::Ready => 0,
            AdminState::Drain => 1,
            AdminState::Maint => 2,
        }
    }

    fn from_bits(bits: u64) -> AdminState {
        match bits {
            1 => AdminState::Drain,
            2 => AdminState::Maint,
            _ => AdminState::Ready,
        }
    }
}

impl fmt::Display for AdminState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The operator's settings packed in one word, so a pick reads both with one load:
/// bits 0..32 the weight override (`NO_OVERRIDE`: none), bits 32..40 the [`AdminState`].
const NO_OVERRIDE: u64 = u32::MAX as u64;
const WEIGHT_MASK: u64 = 0xffff_ffff;
const READY_NO_OVERRIDE: u64 = NO_OVERRIDE;

fn pack(state: AdminState, weight: Option<u32>) -> u64 {
    (state.to_bits() << 32) | weight.map_or(NO_OVERRIDE, u64::from)
}

fn unpack(word: u64) -> (AdminState, Option<u32>) {
    let weight = word & WEIGHT_MASK;
    (
        AdminState::from_bits(word >> 32),
        (weight != NO_OVERRIDE).then_some(weight as u32),
    )
}

/// Live state of one backend. It outlives snapshots: a backend that survives a reload
/// (same listener, same `addr` text) keeps the same `Arc<BackendState>`.
///
/// Aligned to a cache line: workers on different cores update the counters of different
/// backends, and two states sharing a line would bounce it between cores for nothing.
#[derive(Debug)]
#[repr(align(64))]
pub struct BackendState {
    up: AtomicBool,
    active: AtomicU32,
    /// Monotonic count of real client connects that were refused or timed out.
    connect_failures: AtomicU64,
    /// Monotonic count of exchanges the backend left unanswered for `response_timeout`.
    response_timeouts: AtomicU64,
    /// The operator's [`AdminState`] and weight override, packed (see [`pack`]). Only the
    /// control plane writes it.
    admin: AtomicU64,
    /// Slow start: the share of its weight the backend has now, in thousandths
    /// ([`FULL_RAMP`] when not ramping). Written by the control plane only.
    ramp: AtomicU32,
    /// Slow start bookkeeping of the control plane (under the scheduler's writer lock):
    /// whether the backend admitted connections at the last look, and when (its clock, in
    /// nanoseconds + 1; 0 = not ramping) its ramp began.
    seen_admitting: AtomicBool,
    ramp_began: AtomicU64,
    /// least_latency: moving average of the latency ringlb sees, in nanoseconds; 0 = no
    /// sample yet.
    latency_ns: AtomicU64,
}

/// A ramp at its end: the backend has its whole weight.
pub const FULL_RAMP: u32 = 1000;

/// Weight of a new latency sample in the moving average: 1/4, so about 2.4 samples halve
/// the influence of the past.
const LATENCY_SAMPLE_SHIFT: u32 = 2;

impl Default for BackendState {
    fn default() -> Self {
        Self::new()
    }
}

impl BackendState {
    /// A backend starts up: it takes traffic until checks or passive failures say otherwise.
    pub fn new() -> Self {
        BackendState {
            up: AtomicBool::new(true),
            active: AtomicU32::new(0),
            connect_failures: AtomicU64::new(0),
            response_timeouts: AtomicU64::new(0),
            admin: AtomicU64::new(READY_NO_OVERRIDE),
            ramp: AtomicU32::new(FULL_RAMP),
            seen_admitting: AtomicBool::new(true),
            ramp_began: AtomicU64::new(0),
            latency_ns: AtomicU64::new(0),
        }
    }

    /// Slow start: thousandths of its weight the backend has now ([`FULL_RAMP`]: all).
    pub fn ramp(&self) -> u32 {
        self.ramp.load(Ordering::Relaxed)
    }

    pub(crate) fn set_ramp(&self, thousandths: u32) {
        self.ramp
            .store(thousandths.min(FULL_RAMP), Ordering::Relaxed);
    }

    /// Control plane: the admitting flag seen at the last look; stores the new one.
    pub(crate) fn swap_seen_admitting(&self, now: bool) -> bool {
        self.seen_admitting.swap(now, Ordering::Relaxed)
    }

    /// When the current ramp began (scheduler clock), if one is running.
    pub(crate) fn ramp_began(&self) -> Option<std::time::Duration> {
        match self.ramp_began.load(Ordering::Relaxed) {
            0 => None,
            n => Some(std::time::Duration::from_nanos(n - 1)),
        }
    }

    pub(crate) fn set_ramp_began(&self, at: Option<std::time::Duration>) {
        let n = at.map_or(0, |d| (d.as_nanos() as u64).saturating_add(1));
        self.ramp_began.store(n, Ordering::Relaxed);
    }

    /// least_latency: the moving average of this backend's latency; `None` before the
    /// first sample (or after it came back up, when the old figure no longer says much).
    pub fn latency(&self) -> Option<std::time::Duration> {
        match self.latency_ns.load(Ordering::Relaxed) {
            0 => None,
            n => Some(std::time::Duration::from_nanos(n)),
        }
    }

    pub(crate) fn latency_ns(&self) -> u64 {
        self.latency_ns.load(Ordering::Relaxed)
    }

    /// Folds one latency sample (connect time, or the time from forwarding a client's bytes
    /// to the backend's first bytes back) into the moving average. Lock-free; any worker.
    pub fn record_latency(&self, sample: std::time::Duration) {
        // At least 1 ns, so that a sample is never mistaken for "none yet".
        let sample = (sample.as_nanos().min(u128::from(u64::MAX >> 8)) as u64).max(1);
        let _ = self
            .latency_ns
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
                Some(if old == 0 {
                    sample
                } else {
                    // old + (sample − old) / 4, without going through negative numbers.
                    (old - (old >> LATENCY_SAMPLE_SHIFT) + (sample >> LATENCY_SAMPLE_SHIFT)).max(1)
                })
            });
    }

    /// Control plane, every steering tick: moves the average toward `floor` (the best
    /// backend's), keeping `keep / 1024` of the gap, so that a backend that stopped being
    /// picked because it was slow is tried again in time.
    pub(crate) fn decay_latency(&self, floor: u64, keep: u64) {
        let _ = self
            .latency_ns
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
                (old > floor).then(|| floor + (((old - floor) * keep) >> 10))
            });
    }

    /// Forgets the latency average: the backend is tried again as if new.
    pub(crate) fn forget_latency(&self) {
        self.latency_ns.store(0, Ordering::Relaxed);
    }
    /// The operator's state as set; a backend whose effective weight is 0 takes no new
    /// connection even when this says `Ready` (see [`crate::Backend::admin_state`]).
    pub fn admin_state(&self) -> AdminState {
        unpack(self.admin.load(Ordering::Acquire)).0
    }

    /// The weight the operator set in place of the configured one, if any.
    pub fn weight_override(&self) -> Option<u32> {
        unpack(self.admin.load(Ordering::Acquire)).1
    }

    /// Sets the operator's state; returns the previous one. Call
    /// [`Scheduler::admin_changed`](crate::Scheduler::admin_changed) afterwards so the
    /// tables follow (picks already refuse a backend that is not `Ready`).
    pub fn set_admin_state(&self, state: AdminState) -> AdminState {
        unpack(self.update_admin(|(_, weight)| pack(state, weight))).0
    }

    /// Sets (or with `None` clears) the weight override; returns the previous one. Values
    /// above `u32::MAX - 1` are clamped (`u32::MAX` marks "no override"). Call
    /// [`Scheduler::admin_changed`](crate::Scheduler::admin_changed) afterwards.
    pub fn set_weight_override(&self, weight: Option<u32>) -> Option<u32> {
        let weight = weight.map(|w| w.min(u32::MAX - 1));
        unpack(self.update_admin(|(state, _)| pack(state, weight))).1
    }

    /// Replaces the admin word with `f(current)`; returns the previous word.
    fn update_admin(&self, f: impl Fn((AdminState, Option<u32>)) -> u64) -> u64 {
        let mut current = self.admin.load(Ordering::Acquire);
        loop {
            match self.admin.compare_exchange_weak(
                current,
                f(unpack(current)),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(previous) => return previous,
                Err(seen) => current = seen,
            }
        }
    }

    /// Whether this backend may take a new connection as far as health and the operator
    /// go: up, `Ready`, and a non-zero effective weight (`configured` unless overridden).
    /// Limits and retries are the snapshot's business.
    #[inline]
    pub fn admits(&self, configured: u32) -> bool {
        let (state, weight) = unpack(self.admin.load(Ordering::Acquire));
        state == AdminState::Ready && weight.unwrap_or(configured) > 0 && self.is_up()
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// Only the prober (the single writer of health) calls this. Returns the previous value.
    pub fn set_up(&self, up: bool) -> bool {
        self.up.swap(up, Ordering::AcqRel)
    }

    pub fn active(&self) -> u32 {
        self.active.load(Ordering::Relaxed)
    }

    /// Counts a connection against this backend until the guard is dropped.
    pub fn acquire(self: &std::sync::Arc<Self>) -> ActiveGuard {
        self.active.fetch_add(1, Ordering::Relaxed);
        ActiveGuard {
            state: std::sync::Arc::clone(self),
        }
    }

    /// Like [`acquire`](Self::acquire), but only while fewer than `max` connections are
    /// active (`max == 0`: unlimited). A compare-and-swap loop, so concurrent workers can
    /// never push the count past `max`; `pick` only reads the count, which is a soft limit
    /// that two workers racing for the last slot may both pass.
    pub fn try_acquire(self: &std::sync::Arc<Self>, max: u32) -> Option<ActiveGuard> {
        if max == 0 {
            return Some(self.acquire());
        }
        let mut current = self.active.load(Ordering::Relaxed);
        loop {
            if current >= max {
                return None;
            }
            match self.active.compare_exchange_weak(
                current,
                current + 1,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    return Some(ActiveGuard {
                        state: std::sync::Arc::clone(self),
                    })
                }
                Err(seen) => current = seen,
            }
        }
    }

    /// A real client connect to this backend was refused or timed out.
    pub fn record_connect_failure(&self) {
        self.connect_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// Client bytes waited `response_timeout` for an answer from this backend.
    pub fn record_response_timeout(&self) {
        self.response_timeouts.fetch_add(1, Ordering::Relaxed);
    }

    pub fn connect_failures(&self) -> u64 {
        self.connect_failures.load(Ordering::Relaxed)
    }

    pub fn response_timeouts(&self) -> u64 {
        self.response_timeouts.load(Ordering::Relaxed)
    }

    /// Connect failures and response timeouts, monotonic: the prober feeds the increase
    /// since its last look into the health machine.
    pub fn passive_failures(&self) -> u64 {
        self.connect_failures() + self.response_timeouts()
    }
}

/// Decrements the backend's active-connection count when dropped.
#[derive(Debug)]
pub struct ActiveGuard {
    state: std::sync::Arc<BackendState>,
}

impl ActiveGuard {
    pub fn state(&self) -> &BackendState {
        &self.state
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        let previous = self.state.active.fetch_sub(1, Ordering::Relaxed);
        debug_assert!(previous > 0, "active connection count underflow");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_word_round_trips() {
        for state in AdminState::ALL {
            for weight in [None, Some(0), Some(1), Some(65_535), Some(u32::MAX - 1)] {
                assert_eq!(unpack(pack(state, weight)), (state, weight));
            }
            assert_eq!(AdminState::parse(state.as_str()), Some(state));
        }
        assert_eq!(AdminState::parse("READY"), None);
    }

    #[test]
    fn admits_needs_up_ready_and_a_weight() {
        let s = BackendState::new();
        assert!(s.admits(1));
        assert!(!s.admits(0), "configured weight 0 means drained");
        s.set_weight_override(Some(3));
        assert!(
            s.admits(0),
            "an override gives a weight-0 backend its weight"
        );
        s.set_weight_override(Some(0));
        assert!(!s.admits(5));
        assert_eq!(s.set_weight_override(None), Some(0));
        for state in [AdminState::Drain, AdminState::Maint] {
            s.set_admin_state(state);
            assert!(!s.admits(1), "{state}");
            assert_eq!(
                s.weight_override(),
                None,
                "state and weight are independent"
            );
        }
        assert_eq!(s.set_admin_state(AdminState::Ready), AdminState::Maint);
        s.set_up(false);
        assert!(!s.admits(1));
        s.set_weight_override(Some(u32::MAX));
        assert_eq!(s.weight_override(), Some(u32::MAX - 1));
    }

    #[test]
    fn latency_average_moves_a_quarter_per_sample_and_decays() {
        use std::time::Duration;
        let s = BackendState::new();
        assert_eq!(s.latency(), None);
        s.record_latency(Duration::from_micros(800));
        assert_eq!(s.latency(), Some(Duration::from_micros(800)));
        s.record_latency(Duration::from_micros(0));
        assert_eq!(s.latency(), Some(Duration::from_micros(600)));
        s.decay_latency(200_000, 512);
        assert_eq!(s.latency(), Some(Duration::from_micros(400)));
        s.forget_latency();
        assert_eq!(s.latency(), None);
        s.decay_latency(0, 512);
        assert_eq!(s.latency(), None, "no sample stays no sample");
        s.record_latency(Duration::ZERO);
        assert_eq!(s.latency(), Some(Duration::from_nanos(1)));
    }
}
