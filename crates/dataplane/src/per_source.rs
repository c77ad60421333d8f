//! TCP `per_source` limits on the accept path. The listener's shared `SourceTable`
//! (crate ringlb-persource) decides; this module counts what it decided on the worker's
//! counters and writes the rate-limited log lines.
//!
//! When the table is full (`max_sources` sources tracked), a new source is admitted
//! without an entry rather than refused: a table filled by many addresses (a botnet, or
//! the many /64s of one IPv6 allocation) must not lock every new payment terminal out.
//! Sources already tracked stay limited, the listener's `max_connections` still bounds
//! everything, and each such admission is counted and logged.

use std::cell::Cell;
use std::net::SocketAddr;
use std::time::Instant;

use ringlb_config::PerSource;
use ringlb_persource::{Limits, Over, SourceKey, SourceSlot, Verdict};

use crate::listener::ListenerState;
use crate::outcome::DenyReason;
use crate::ratelog::RateLog;
use crate::stats::WorkerCounters;

/// One worker's per-source state for one listener: its log lines, each at most once per
/// interval, and the limits in the table's units for the last `per_source` seen.
#[derive(Default)]
pub(crate) struct SourceGate {
    refused: RateLog,
    untracked: RateLog,
    /// Converting costs a division; the settings change only on a reload.
    limits: Cell<Option<(PerSource, Limits)>>,
}

impl SourceGate {
    /// The accept path's one call, for a client accepted at `accepted`. `Ok(Some(slot))`:
    /// admitted and counted against its source until the slot is dropped; `Ok(None)`:
    /// admitted uncounted (no `per_source`, or the table is full); `Err`: over a limit, to
    /// be closed at once.
    pub(crate) fn admit<'a>(
        &self,
        state: &'a ListenerState,
        counters: &WorkerCounters,
        per_source: Option<&PerSource>,
        peer: SocketAddr,
        accepted: Instant,
    ) -> Result<Option<SourceSlot<'a>>, DenyReason> {
        let Some(per_source) = per_source else {
            return Ok(None);
        };
        let limits = self.limits(per_source);
        let now = state.sources.time(accepted);
        match state.sources.admit(peer.ip(), &limits, now) {
            Verdict::Tracked(slot) => Ok(Some(slot)),
            Verdict::Untracked => {
                counters.source_untracked.add(1);
                self.untracked.note(log::Level::Warn, &state.name, || {
                    format!(
                        "per-source table full ({} sources, per_source.max_sources): new source {} admitted without a per-source limit",
                        limits.max_sources,
                        SourceKey::of(peer.ip())
                    )
                });
                Ok(None)
            }
            Verdict::Refused(over) => {
                self.refused.note(log::Level::Warn, &state.name, || {
                    format!(
                        "source {} refused: {}",
                        SourceKey::of(peer.ip()),
                        why(over, per_source)
                    )
                });
                Err(DenyReason::SourceLimit)
            }
        }
    }

    fn limits(&self, per_source: &PerSource) -> Limits {
        match self.limits.get() {
            Some((seen, limits)) if seen == *per_source => limits,
            _ => {
                let limits = Limits::from(per_source);
                self.limits.set(Some((*per_source, limits)));
                limits
            }
        }
    }
}

/// Count a connection a previous process admitted (live upgrade) against its source, so
/// the limits hold across the upgrade; no limit is checked. `None`: no `per_source`, or
/// the table is full.
pub(crate) fn adopt<'a>(
    state: &'a ListenerState,
    per_source: Option<&PerSource>,
    peer: SocketAddr,
) -> Option<SourceSlot<'a>> {
    let limits = Limits::from(per_source?);
    state.sources.adopt(peer.ip(), &limits)
}

fn why(over: Over, limits: &PerSource) -> String {
    match (over, limits.max_connections, limits.rate) {
        (Over::Connections, Some(max), _) => {
            format!("{max} live connections (per_source.max_connections)")
        }
        (Over::Rate, _, Some(rate)) => format!(
            "more than {} new connections per second, burst {} (per_source.new_per_second)",
            rate.per_second, rate.burst
        ),
        (Over::Connections, None, _) => "per_source.max_connections".to_string(),
        (Over::Rate, _, None) => "per_source.new_per_second".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringlb_config::SourceRate;

    #[test]
    fn refusals_say_which_limit() {
        let limits = PerSource {
            max_connections: Some(4),
            rate: Some(SourceRate {
                per_second: 2,
                burst: 5,
            }),
            max_sources: 10,
        };
        assert_eq!(
            why(Over::Connections, &limits),
            "4 live connections (per_source.max_connections)"
        );
        assert_eq!(
            why(Over::Rate, &limits),
            "more than 2 new connections per second, burst 5 (per_source.new_per_second)"
        );
    }

    #[test]
    fn limits_follow_a_reload() {
        let gate = SourceGate::default();
        let before = PerSource {
            max_connections: Some(4),
            rate: None,
            max_sources: 10,
        };
        let after = PerSource {
            max_connections: Some(2),
            ..before
        };
        assert_eq!(gate.limits(&before), Limits::from(&before));
        assert_eq!(gate.limits(&before).max_connections, 4);
        assert_eq!(gate.limits(&after), Limits::from(&after));
        assert_eq!(gate.limits(&after).max_connections, 2);
    }
}
