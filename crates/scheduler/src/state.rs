//! Live per-backend state shared by workers, the prober and the admin endpoint.
//! Plain atomics: a worker's pick reads them, nobody takes a lock.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

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
    passive_failures: AtomicU64,
}

impl Default for BackendState {
    fn default() -> Self {
        Self::new()
    }
}

impl BackendState {
    /// A backend starts up: a candidate until the health prober marks it down.
    pub fn new() -> Self {
        BackendState {
            up: AtomicBool::new(true),
            active: AtomicU32::new(0),
            passive_failures: AtomicU64::new(0),
        }
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
        self.passive_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// Monotonic; the prober feeds the increase since its last look into the health machine.
    pub fn passive_failures(&self) -> u64 {
        self.passive_failures.load(Ordering::Relaxed)
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
