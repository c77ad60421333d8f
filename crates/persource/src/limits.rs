//! The limits an admission is checked against, and one source's state.
//!
//! The token bucket is kept as GCRA (the generic cell rate algorithm) keeps it: one
//! timestamp per source, `tat`, the time at which its bucket is full again. A new
//! connection at `now` takes a token when `max(tat, now) + interval - now ≤ burst ×
//! interval`, and then `tat` moves to `max(tat, now) + interval`. That is exactly a bucket
//! of `burst` tokens refilled one per `interval`, with integer arithmetic and no refill
//! step; and "idle" (nothing to remember about the source) is simply `tat ≤ now` with no
//! live connection. Limits changed by a reload apply to the same `tat` at once.

use ringlb_config::{PerSource, SourceRate};

const NANOS_PER_SEC: u64 = 1_000_000_000;

/// Which limit refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Over {
    /// The source already holds `max_connections` live connections.
    Connections,
    /// The source's bucket of new connections is empty.
    Rate,
}

/// `per_source` in the table's units (nanoseconds, as [`crate::SourceTable::time`] counts).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Live connections per source; `u32::MAX` when not limited.
    pub max_connections: u32,
    /// Nanoseconds per token at the sustained rate; 0: no rate limit.
    pub interval: u64,
    /// How far ahead of now a source's `tat` may run: burst × interval.
    pub tolerance: u64,
    /// Sources tracked at once.
    pub max_sources: usize,
}

impl Limits {
    pub fn new(max_connections: Option<u32>, rate: Option<SourceRate>, max_sources: u32) -> Self {
        let (interval, tolerance) = match rate {
            Some(rate) if rate.per_second > 0 => {
                let interval = (NANOS_PER_SEC / u64::from(rate.per_second)).max(1);
                let burst = u64::from(rate.burst.max(1));
                (interval, interval.saturating_mul(burst))
            }
            _ => (0, 0),
        };
        Limits {
            max_connections: max_connections.unwrap_or(u32::MAX),
            interval,
            tolerance,
            max_sources: usize::try_from(max_sources).unwrap_or(usize::MAX),
        }
    }
}

impl From<&PerSource> for Limits {
    fn from(p: &PerSource) -> Self {
        Limits::new(p.max_connections, p.rate, p.max_sources)
    }
}

/// One tracked source.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Entry {
    /// Its connections that are still open.
    pub(crate) live: u32,
    /// When its bucket is full again (GCRA's theoretical arrival time); 0 for a source
    /// never rate limited.
    pub(crate) tat: u64,
}

impl Entry {
    /// Count a new connection at `now`, or say which limit refuses it. A refused
    /// connection takes no token and no slot.
    pub(crate) fn open(&mut self, now: u64, limits: &Limits) -> Result<(), Over> {
        if self.live >= limits.max_connections {
            return Err(Over::Connections);
        }
        if limits.interval > 0 {
            // max(tat, now) ≥ now, so the difference cannot underflow.
            let next = self.tat.max(now).saturating_add(limits.interval);
            if next - now > limits.tolerance {
                return Err(Over::Rate);
            }
            self.tat = next;
        }
        self.live = self.live.saturating_add(1);
        Ok(())
    }

    /// Count a connection admitted elsewhere (a live upgrade's previous process): no
    /// limit is checked and no token taken.
    pub(crate) fn adopt(&mut self) {
        self.live = self.live.saturating_add(1);
    }

    pub(crate) fn close(&mut self) {
        debug_assert!(self.live > 0, "per-source live count underflow");
        self.live = self.live.saturating_sub(1);
    }

    /// No live connection and the bucket full again: nothing left to remember.
    pub(crate) fn idle(&self, now: u64) -> bool {
        self.live == 0 && self.tat <= now
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn rate(per_second: u32, burst: u32) -> Limits {
        Limits::new(None, Some(SourceRate { per_second, burst }), 10)
    }

    #[test]
    fn limits_in_nanoseconds() {
        let l = rate(10, 3);
        assert_eq!((l.interval, l.tolerance), (100 * MS, 300 * MS));
        assert_eq!(l.max_connections, u32::MAX);
        let l = Limits::new(Some(4), None, 7);
        assert_eq!((l.max_connections, l.interval, l.max_sources), (4, 0, 7));
    }

    #[test]
    fn burst_then_one_per_interval() {
        let l = rate(10, 3);
        let mut e = Entry::default();
        let t0 = 5_000 * MS;
        for _ in 0..3 {
            assert_eq!(e.open(t0, &l), Ok(()));
        }
        assert_eq!(e.open(t0, &l), Err(Over::Rate));
        assert_eq!(e.open(t0 + 99 * MS, &l), Err(Over::Rate));
        assert_eq!(e.open(t0 + 100 * MS, &l), Ok(()));
        assert_eq!(e.open(t0 + 100 * MS, &l), Err(Over::Rate));
        assert_eq!(e.live, 4, "refused connections are not counted");
        // Full again 3 intervals after the last token was taken.
        assert_eq!(e.tat, t0 + 400 * MS);
        for _ in 0..4 {
            e.close();
        }
        assert!(!e.idle(t0 + 399 * MS));
        assert!(e.idle(t0 + 400 * MS));
        for _ in 0..3 {
            assert_eq!(e.open(t0 + 400 * MS, &l), Ok(()));
        }
        assert_eq!(e.open(t0 + 400 * MS, &l), Err(Over::Rate));
    }

    #[test]
    fn a_long_pause_refills_no_more_than_burst() {
        let l = rate(1, 2);
        let mut e = Entry::default();
        assert_eq!(e.open(0, &l), Ok(()));
        let later = 3_600_000 * MS;
        assert_eq!(e.open(later, &l), Ok(()));
        assert_eq!(e.open(later, &l), Ok(()));
        assert_eq!(e.open(later, &l), Err(Over::Rate));
    }

    #[test]
    fn connections_are_checked_before_the_bucket() {
        let l = Limits {
            max_connections: 1,
            ..rate(1, 5)
        };
        let mut e = Entry::default();
        assert_eq!(e.open(0, &l), Ok(()));
        let tat = e.tat;
        assert_eq!(e.open(0, &l), Err(Over::Connections));
        assert_eq!(e.tat, tat, "a refusal takes no token");
        e.close();
        assert_eq!(e.open(0, &l), Ok(()));
    }

    #[test]
    fn without_a_rate_only_live_connections_count() {
        let l = Limits::new(Some(2), None, 10);
        let mut e = Entry::default();
        assert_eq!(e.open(0, &l), Ok(()));
        assert_eq!(e.open(0, &l), Ok(()));
        assert_eq!(e.open(0, &l), Err(Over::Connections));
        e.close();
        e.close();
        assert!(e.idle(0));
        e.adopt();
        assert!(!e.idle(0));
    }
}
