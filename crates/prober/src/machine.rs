//! The pure health state machine: consecutive-result counting with rise/fall thresholds,
//! and the deterministic schedule of first checks.
//!
//! No sockets, no clock: results and instants come in as arguments, so every sequence
//! (rise, fall, flapping, passive bursts) is unit-tested deterministically.

use std::time::{Duration, Instant};

/// What one observation says about a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observation {
    /// An active check connected.
    Success,
    /// `n` failures at once: 1 for a failed active check, the counter increase for
    /// passive failures (real client connects that were refused or timed out).
    Failures(u32),
}

/// A flip of the machine's up/down state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flip {
    /// The new state.
    pub up: bool,
    /// Length of the streak that caused the flip (≥ rise or ≥ fall; more than `fall`
    /// when a burst of passive failures crossed the threshold at once).
    pub consecutive: u32,
    pub at: Instant,
}

/// Rise/fall counter of one backend.
///
/// A backend starts up. While up, `fall` consecutive failures mark it down; while down,
/// `rise` consecutive successes mark it up. A success resets the failure streak and a
/// failure resets the success streak, so only an unbroken run flips the state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Machine {
    rise: u32,
    fall: u32,
    up: bool,
    /// Consecutive results contrary to the current state (failures while up,
    /// successes while down). Results agreeing with the state keep it at zero.
    streak: u32,
}

impl Machine {
    /// A new machine, up. Thresholds below 1 are treated as 1 (config validation already
    /// rejects them; a zero here must not make a single result meaningless).
    pub fn new(rise: u32, fall: u32) -> Machine {
        Machine {
            rise: rise.max(1),
            fall: fall.max(1),
            up: true,
            streak: 0,
        }
    }

    pub fn is_up(&self) -> bool {
        self.up
    }

    /// Consecutive results against the current state so far.
    pub fn streak(&self) -> u32 {
        self.streak
    }

    pub fn rise(&self) -> u32 {
        self.rise
    }

    pub fn fall(&self) -> u32 {
        self.fall
    }

    /// Reload: new thresholds apply from the next observation; the streak is kept, so a
    /// backend half-way to down stays half-way (and crosses at once if the new threshold
    /// is already reached by the next result).
    pub fn set_thresholds(&mut self, rise: u32, fall: u32) {
        self.rise = rise.max(1);
        self.fall = fall.max(1);
    }

    /// Feeds one observation; returns the flip it caused, if any.
    pub fn observe(&mut self, observation: Observation, now: Instant) -> Option<Flip> {
        match (self.up, observation) {
            // Results that agree with the state end any contrary streak.
            (true, Observation::Success) => {
                self.streak = 0;
                None
            }
            (false, Observation::Failures(n)) => {
                if n > 0 {
                    self.streak = 0;
                }
                None
            }
            (true, Observation::Failures(n)) => {
                if n == 0 {
                    return None;
                }
                self.streak = self.streak.saturating_add(n);
                self.flip_if(self.fall, false, now)
            }
            (false, Observation::Success) => {
                self.streak = self.streak.saturating_add(1);
                self.flip_if(self.rise, true, now)
            }
        }
    }

    fn flip_if(&mut self, threshold: u32, up: bool, now: Instant) -> Option<Flip> {
        if self.streak < threshold {
            return None;
        }
        let consecutive = self.streak;
        self.up = up;
        self.streak = 0;
        Some(Flip {
            up,
            consecutive,
            at: now,
        })
    }
}

/// Offset of a backend's first check within the interval, so many backends do not probe
/// in one burst: backend `index` of `count` gets `interval × index / count`, shifted by a
/// per-listener phase (a stable hash of its name) so listeners do not line up either.
pub fn first_check_offset(
    listener: &str,
    index: usize,
    count: usize,
    interval: Duration,
) -> Duration {
    if count == 0 || interval.is_zero() {
        return Duration::ZERO;
    }
    let interval_ns = interval.as_nanos();
    let phase = u128::from(fnv1a(listener.as_bytes())) % interval_ns;
    let spread = interval_ns * (index as u128 % count as u128) / count as u128;
    let offset = (phase + spread) % interval_ns;
    // offset < interval, which came from a Duration: it fits in u64 nanoseconds unless the
    // interval is centuries long, where saturating is harmless.
    Duration::from_nanos(u64::try_from(offset).unwrap_or(u64::MAX))
}

/// The instant of the check after one that started at `started` and finished at
/// `finished`: fixed rate (no drift from check duration), but never two checks of the
/// same backend at once.
pub fn next_check(started: Instant, finished: Instant, interval: Duration) -> Instant {
    (started + interval).max(finished)
}

/// FNV-1a 64: stable across builds and platforms, unlike `DefaultHasher`.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;
    use Observation::{Failures, Success};

    const F: Observation = Failures(1);

    /// Feeds a sequence; returns the up state after each step and the flips.
    fn run(machine: &mut Machine, seq: &[Observation]) -> (Vec<bool>, Vec<Flip>) {
        let t0 = Instant::now();
        let mut states = Vec::new();
        let mut flips = Vec::new();
        for (i, obs) in seq.iter().enumerate() {
            if let Some(flip) = machine.observe(*obs, t0 + Duration::from_secs(i as u64)) {
                flips.push(flip);
            }
            states.push(machine.is_up());
        }
        (states, flips)
    }

    #[test]
    fn starts_up() {
        let m = Machine::new(2, 3);
        assert!(m.is_up());
        assert_eq!(m.streak(), 0);
    }

    #[test]
    fn fall_consecutive_failures_mark_down() {
        let mut m = Machine::new(2, 3);
        let (states, flips) = run(&mut m, &[F, F, F]);
        assert_eq!(states, vec![true, true, false]);
        assert_eq!(flips.len(), 1);
        assert!(!flips[0].up);
        assert_eq!(flips[0].consecutive, 3);
    }

    #[test]
    fn rise_consecutive_successes_mark_up() {
        let mut m = Machine::new(2, 1);
        let (states, flips) = run(&mut m, &[F, Success, Success, Success]);
        assert_eq!(states, vec![false, false, true, true]);
        assert_eq!(flips.len(), 2);
        assert!(flips[1].up);
        assert_eq!(flips[1].consecutive, 2);
    }

    #[test]
    fn success_resets_failure_streak() {
        let mut m = Machine::new(2, 3);
        let (states, flips) = run(&mut m, &[F, F, Success, F, F, Success, F, F]);
        assert!(states.iter().all(|up| *up), "{states:?}");
        assert!(flips.is_empty());
        assert_eq!(m.streak(), 2);
    }

    #[test]
    fn failure_resets_success_streak() {
        let mut m = Machine::new(3, 1);
        let (states, _) = run(&mut m, &[F, Success, Success, F, Success, Success, F]);
        assert!(states.iter().all(|up| !*up), "{states:?}");
        let (states, flips) = run(&mut m, &[Success, Success, Success]);
        assert_eq!(states, vec![false, false, true]);
        assert_eq!(flips.len(), 1);
    }

    #[test]
    fn flapping_backend_flips_only_on_full_streaks() {
        // rise 2, fall 2: alternating results never flip; pairs do.
        let mut m = Machine::new(2, 2);
        let alternating: Vec<_> = (0..20)
            .map(|i| if i % 2 == 0 { F } else { Success })
            .collect();
        let (_, flips) = run(&mut m, &alternating);
        assert!(flips.is_empty());
        let (states, flips) = run(&mut m, &[F, F, Success, F, Success, Success, F, F]);
        assert_eq!(
            states,
            vec![true, false, false, false, false, true, true, false]
        );
        let ups: Vec<bool> = flips.iter().map(|f| f.up).collect();
        assert_eq!(ups, vec![false, true, false]);
    }

    #[test]
    fn passive_burst_counts_as_that_many_failures() {
        let mut m = Machine::new(2, 3);
        assert_eq!(m.observe(F, Instant::now()), None);
        let flip = m
            .observe(Failures(5), Instant::now())
            .expect("crosses fall");
        assert!(!flip.up);
        assert_eq!(flip.consecutive, 6);
        // Below the threshold it only accumulates.
        let mut m = Machine::new(2, 3);
        assert_eq!(m.observe(Failures(2), Instant::now()), None);
        assert_eq!(m.streak(), 2);
        assert!(m.observe(Failures(1), Instant::now()).is_some());
    }

    #[test]
    fn zero_failures_change_nothing() {
        let mut m = Machine::new(2, 3);
        m.observe(Failures(2), Instant::now());
        assert_eq!(m.observe(Failures(0), Instant::now()), None);
        assert_eq!(m.streak(), 2);
        let mut down = Machine::new(3, 1);
        down.observe(F, Instant::now());
        down.observe(Success, Instant::now());
        assert_eq!(down.observe(Failures(0), Instant::now()), None);
        assert_eq!(
            down.streak(),
            1,
            "an empty passive sample must not reset the rise streak"
        );
    }

    #[test]
    fn failures_while_down_reset_rise_streak() {
        // Passive failures only ever push toward down: while down they break a recovery.
        let mut m = Machine::new(2, 1);
        m.observe(F, Instant::now());
        m.observe(Success, Instant::now());
        assert_eq!(m.observe(Failures(3), Instant::now()), None);
        assert_eq!(m.observe(Success, Instant::now()), None);
        assert!(m.observe(Success, Instant::now()).is_some());
    }

    #[test]
    fn reload_keeps_streak_and_applies_new_thresholds() {
        let mut m = Machine::new(2, 5);
        run(&mut m, &[F, F, F]);
        m.set_thresholds(2, 3);
        assert!(m.is_up());
        let flip = m.observe(F, Instant::now()).expect("streak 4 ≥ new fall 3");
        assert_eq!(flip.consecutive, 4);
    }

    #[test]
    fn zero_thresholds_behave_as_one() {
        let mut m = Machine::new(0, 0);
        assert!(m.observe(F, Instant::now()).is_some());
        assert!(m.observe(Success, Instant::now()).is_some());
    }

    #[test]
    fn first_checks_spread_over_interval() {
        let interval = Duration::from_millis(1000);
        let n = 10;
        let mut offsets: Vec<Duration> = (0..n)
            .map(|i| first_check_offset("payment", i, n, interval))
            .collect();
        assert!(offsets.iter().all(|o| *o < interval));
        offsets.sort();
        // Evenly spread: every gap (including the wrap-around) is interval / n.
        for pair in offsets.windows(2) {
            assert_eq!(pair[1] - pair[0], interval / n as u32);
        }
        assert_eq!(offsets[0] + interval - offsets[n - 1], interval / n as u32);
        // Deterministic.
        assert_eq!(
            first_check_offset("payment", 3, n, interval),
            first_check_offset("payment", 3, n, interval)
        );
    }

    #[test]
    fn listeners_get_different_phases() {
        let interval = Duration::from_millis(1000);
        let a = first_check_offset("payment", 0, 1, interval);
        let b = first_check_offset("query", 0, 1, interval);
        assert_ne!(a, b);
        assert_eq!(first_check_offset("x", 0, 0, interval), Duration::ZERO);
        assert_eq!(
            first_check_offset("x", 2, 3, Duration::ZERO),
            Duration::ZERO
        );
    }

    #[test]
    fn next_check_is_fixed_rate_but_never_overlapping() {
        let t0 = Instant::now();
        let interval = Duration::from_millis(100);
        assert_eq!(
            next_check(t0, t0 + Duration::from_millis(30), interval),
            t0 + interval
        );
        let late = t0 + Duration::from_millis(250);
        assert_eq!(next_check(t0, late, interval), late);
    }

    proptest::proptest! {
        /// Against a direct model: the state flips exactly when the run of contrary
        /// results reaches the threshold.
        #[test]
        fn matches_model(rise in 1u32..5, fall in 1u32..5,
                         seq in proptest::collection::vec(0u32..4, 0..200)) {
            let mut m = Machine::new(rise, fall);
            let (mut up, mut run_len) = (true, 0u32);
            let now = Instant::now();
            for s in seq {
                // 0 = success, k>0 = k failures at once.
                let obs = if s == 0 { Success } else { Failures(s) };
                let contrary = (s == 0) != up;
                if contrary {
                    run_len += if s == 0 { 1 } else { s };
                } else {
                    run_len = 0;
                }
                let threshold = if up { fall } else { rise };
                let expect_flip = contrary && run_len >= threshold;
                let flip = m.observe(obs, now);
                proptest::prop_assert_eq!(flip.is_some(), expect_flip);
                if expect_flip {
                    proptest::prop_assert_eq!(flip.map(|f| f.consecutive), Some(run_len));
                    up = !up;
                    run_len = 0;
                }
                proptest::prop_assert_eq!(m.is_up(), up);
            }
        }
    }
}
