//! The session table of one UDP listener on one worker, and its expiry rule. Pure: no
//! sockets, no clock reads — time comes in as milliseconds of a coarse worker-local clock,
//! so every rule here is tested deterministically.
//!
//! Expiry is a periodic sweep, not a timer per session: a datagram only stores the coarse
//! clock in its session (one `Cell` write, no syscall, no timer re-arm); the sweep runs
//! every [`sweep_interval`] and removes the sessions whose last activity is old enough.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::time::Duration;

/// Shortest and longest sweep period.
pub(crate) const SWEEP_MIN: Duration = Duration::from_millis(100);
pub(crate) const SWEEP_MAX: Duration = Duration::from_secs(1);

/// What the table needs to know about a session.
pub(crate) trait Activity {
    /// Coarse clock (ms) at the last datagram in either direction.
    fn last_active_ms(&self) -> u64;
}

/// How often the sweep runs for a given `session_timeout`: a quarter of it, between
/// 100 ms and 1 s. A session then expires after between `timeout` and
/// `timeout + 2 × interval` of silence (see [`is_expired`]).
pub(crate) fn sweep_interval(timeout: Duration) -> Duration {
    (timeout / 4).clamp(SWEEP_MIN, SWEEP_MAX)
}

/// The clock is advanced only by the sweep, so an activity stamp lags the real time by
/// up to one interval. Requiring `timeout + interval` of coarse silence guarantees at
/// least `timeout` of real silence; the next sweep after that adds at most one interval.
pub(crate) fn is_expired(now_ms: u64, last_ms: u64, timeout: Duration, interval: Duration) -> bool {
    let limit = timeout.as_millis() as u64 + interval.as_millis() as u64;
    now_ms.saturating_sub(last_ms) >= limit
}

/// What identifies a session: the client's address and, on a wildcard listener, the local
/// address it sent to (a client talking to two addresses of the host is two flows, each
/// answered from its own address).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Flow {
    pub(crate) client: SocketAddr,
    pub(crate) local: Option<IpAddr>,
}

/// Flow → session. Never evicts to make room: admission (the listener-wide
/// `max_sessions` budget) is decided before [`insert`](Self::insert).
pub(crate) struct SessionTable<S> {
    map: HashMap<Flow, Rc<S>>,
}

impl<S: Activity> SessionTable<S> {
    pub(crate) fn new() -> Self {
        SessionTable {
            map: HashMap::new(),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub(crate) fn get(&self, flow: &Flow) -> Option<Rc<S>> {
        self.map.get(flow).cloned()
    }

    /// False (and nothing changes) when the client already has a session.
    pub(crate) fn insert(&mut self, flow: Flow, session: Rc<S>) -> bool {
        match self.map.entry(flow) {
            std::collections::hash_map::Entry::Occupied(_) => false,
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(session);
                true
            }
        }
    }

    /// Removes and returns every session silent for long enough at `now_ms`.
    pub(crate) fn expire(
        &mut self,
        now_ms: u64,
        timeout: Duration,
        interval: Duration,
    ) -> Vec<(Flow, Rc<S>)> {
        let mut out = Vec::new();
        self.map.retain(|addr, s| {
            if is_expired(now_ms, s.last_active_ms(), timeout, interval) {
                out.push((*addr, Rc::clone(s)));
                false
            } else {
                true
            }
        });
        out
    }

    /// Removes and returns every session (listener stopped or shutdown cut).
    pub(crate) fn drain(&mut self) -> Vec<(Flow, Rc<S>)> {
        self.map.drain().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    struct S(Cell<u64>);
    impl Activity for S {
        fn last_active_ms(&self) -> u64 {
            self.0.get()
        }
    }

    fn addr(port: u16) -> Flow {
        Flow {
            client: SocketAddr::from(([127, 0, 0, 1], port)),
            local: None,
        }
    }

    #[test]
    fn sweep_interval_is_a_quarter_clamped() {
        assert_eq!(
            sweep_interval(Duration::from_secs(30)),
            Duration::from_secs(1)
        );
        assert_eq!(
            sweep_interval(Duration::from_secs(2)),
            Duration::from_millis(500)
        );
        assert_eq!(
            sweep_interval(Duration::from_millis(200)),
            Duration::from_millis(100)
        );
        assert_eq!(sweep_interval(Duration::ZERO), Duration::from_millis(100));
    }

    #[test]
    fn expiry_needs_timeout_plus_one_interval_of_coarse_silence() {
        let t = Duration::from_millis(1000);
        let i = Duration::from_millis(250);
        assert!(!is_expired(1249, 0, t, i));
        assert!(is_expired(1250, 0, t, i));
        // A stamp from the future (clock not yet advanced) is never expired.
        assert!(!is_expired(10, 20, t, i));
    }

    /// Simulates the sweep: the coarse clock advances only at sweeps; activity at real time
    /// r is stamped with the clock of the last sweep. Expiry must come after at least
    /// `timeout` and at most `timeout + 2 × interval` of real silence.
    #[test]
    fn real_silence_before_expiry_is_bounded() {
        let t = Duration::from_millis(1000);
        let i = Duration::from_millis(250);
        for activity_real in (0..2000u64).step_by(7) {
            let stamp = activity_real / 250 * 250;
            let mut sweep = 0;
            let expired_at = loop {
                sweep += 250;
                if sweep > activity_real && is_expired(sweep, stamp, t, i) {
                    break sweep;
                }
            };
            let silence = expired_at - activity_real;
            assert!(
                silence >= 1000,
                "activity at {activity_real} expired after {silence} ms"
            );
            assert!(
                silence <= 1500,
                "activity at {activity_real} expired after {silence} ms"
            );
        }
    }

    #[test]
    fn table_inserts_once_expires_idle_and_keeps_active() {
        let mut table = SessionTable::new();
        let a = Rc::new(S(Cell::new(0)));
        assert!(table.insert(addr(1), Rc::clone(&a)));
        assert!(
            !table.insert(addr(1), Rc::new(S(Cell::new(0)))),
            "a second insert must not replace"
        );
        assert!(table.insert(addr(2), Rc::new(S(Cell::new(0)))));
        let other_local = Flow {
            local: Some(IpAddr::from([127, 0, 0, 3])),
            ..addr(2)
        };
        assert!(
            table.insert(other_local, Rc::new(S(Cell::new(900)))),
            "same client, other local address: another flow"
        );
        assert_eq!(table.len(), 3);
        // addr(1) talks at 900 ms (as did `other_local`); addr(2) stays silent.
        a.0.set(900);
        let t = Duration::from_millis(1000);
        let i = Duration::from_millis(250);
        let gone = table.expire(1250, t, i);
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].0, addr(2));
        assert!(table.get(&addr(1)).is_some());
        assert!(table.get(&addr(2)).is_none());
        assert!(
            table.get(&other_local).is_some(),
            "only the silent flow of that client expired"
        );
        assert!(table.expire(2149, t, i).is_empty());
        assert_eq!(table.expire(2150, t, i).len(), 2);
        assert!(table.is_empty());
    }

    #[test]
    fn drain_takes_everything() {
        let mut table = SessionTable::new();
        for p in 1..=5 {
            table.insert(addr(p), Rc::new(S(Cell::new(0))));
        }
        let mut all: Vec<u16> = table
            .drain()
            .into_iter()
            .map(|(a, _)| a.client.port())
            .collect();
        all.sort_unstable();
        assert_eq!(all, vec![1, 2, 3, 4, 5]);
        assert!(table.is_empty());
    }
}
