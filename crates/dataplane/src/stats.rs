//! Counters the data plane keeps and the admin endpoint reads.
//!
//! Each worker writes only its own [`WorkerCounters`] (cache-line padded, single writer), so
//! counting costs no cross-core traffic; a scrape sums the workers. Connect latency is
//! recorded in a worker-local hdrhistogram and published about once a second as an
//! immutable copy (atomic pointer swap), merged at scrape time.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use hdrhistogram::Histogram;

use crate::outcome::{DenyReason, EndReason, Outcome};

/// One worker's counters for one listener. Single writer (the worker); any reader.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct WorkerCounters {
    pub connections: Counter,
    pub denied_not_allowed: Counter,
    pub denied_limit: Counter,
    pub denied_no_backend: Counter,
    pub denied_resources: Counter,
    pub denied_connect_timeout: Counter,
    pub denied_source_limit: Counter,
    pub denied_unrouted: Counter,
    /// New sources admitted without a `per_source` entry because the table was full.
    pub source_untracked: Counter,
    /// `stickiness`: connections that went to the backend their key last used…
    pub sticky_hits: Counter,
    /// …and those that did not (no entry, expired, or that backend could not take them).
    pub sticky_misses: Counter,
    /// New entries that pushed out a live one: the table is small for the clients.
    pub sticky_evictions: Counter,
    /// client → backend bytes.
    pub bytes_in: Counter,
    /// backend → client bytes.
    pub bytes_out: Counter,
    /// Connection directions moved from copy to splice by `forwarding: auto`.
    pub splice_switches: Counter,
    /// …and back to copy once their bulk phase ended.
    pub copy_switches: Counter,
    /// `copy`: connection directions whose buffer grew for a bulk stream.
    pub bulk_buffer_grows: Counter,
    // UDP
    pub udp_sessions_active: Counter,
    pub udp_sessions_created: Counter,
    pub udp_datagrams_in: Counter,
    pub udp_datagrams_out: Counter,
    pub udp_drops_truncated: Counter,
    pub udp_drops_send_error: Counter,
    /// Forwarded connections and UDP session legs that ended, by reason (index: the
    /// reason's position in `EndReason::ALL`).
    ended: [Counter; EndReason::ALL.len()],
    /// Connect latency; replaced wholesale by the worker about once a second.
    pub connect_latency: LatencySlot,
}

impl WorkerCounters {
    pub fn denied(&self, reason: DenyReason) -> &Counter {
        match reason {
            DenyReason::NotAllowed => &self.denied_not_allowed,
            DenyReason::Limit => &self.denied_limit,
            DenyReason::NoBackend => &self.denied_no_backend,
            DenyReason::Resources => &self.denied_resources,
            DenyReason::ConnectTimeout => &self.denied_connect_timeout,
            DenyReason::SourceLimit => &self.denied_source_limit,
            DenyReason::Unrouted => &self.denied_unrouted,
        }
    }

    pub fn ended(&self, reason: EndReason) -> &Counter {
        &self.ended[reason as usize]
    }

    /// Count one connection's or session leg's outcome.
    pub(crate) fn count(&self, outcome: Outcome) {
        match outcome {
            Outcome::Denied(reason) => self.denied(reason).add(1),
            Outcome::Ended(reason) => self.ended(reason).add(1),
        }
    }
}

/// A counter written by one thread and read by any: load+store instead of an atomic
/// read-modify-write, because the only writer is the owning worker.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.store(
            self.0.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Relaxed,
        );
    }

    #[inline]
    pub fn sub(&self, n: u64) {
        self.0.store(
            self.0.load(Ordering::Relaxed).wrapping_sub(n),
            Ordering::Relaxed,
        );
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Connect latency in microseconds, 1 µs .. 60 s, 3 significant digits.
pub fn new_latency_histogram() -> Histogram<u64> {
    // Bounds are constants that hdrhistogram accepts; fall back to auto-resizing if not.
    Histogram::new_with_bounds(1, 60_000_000, 3).unwrap_or_else(|_| {
        let mut h = Histogram::new(3).unwrap_or_else(|_| unreachable_histogram());
        h.auto(true);
        h
    })
}

fn unreachable_histogram() -> Histogram<u64> {
    // sigfig 3 is always valid for Histogram::new; this path exists only to avoid a panic.
    Histogram::new(2).unwrap_or_else(|_| std::process::abort())
}

#[derive(Debug)]
pub struct LatencySlot(ArcSwap<Histogram<u64>>);

impl Default for LatencySlot {
    fn default() -> Self {
        LatencySlot(ArcSwap::from_pointee(new_latency_histogram()))
    }
}

impl LatencySlot {
    pub fn publish(&self, h: Histogram<u64>) {
        self.0.store(Arc::new(h));
    }

    pub fn load(&self) -> Arc<Histogram<u64>> {
        self.0.load_full()
    }
}
