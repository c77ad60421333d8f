//! Tiers and `min_active`, failback holds, slow start ramps and least_latency, on a fake
//! clock.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{ip, spec, Rng};
use ringlb_config::{Algorithm, Failback, Steering};
use ringlb_scheduler::{BackendSpec, Scheduler, TierRange, Tried, FULL_RAMP, RAMP_FLOOR};

/// A clock the test moves by hand.
#[derive(Clone, Default)]
struct FakeClock(Arc<AtomicU64>);

impl FakeClock {
    fn advance(&self, d: Duration) {
        self.0.fetch_add(d.as_nanos() as u64, Ordering::SeqCst);
    }

    fn clock(&self) -> ringlb_scheduler::Clock {
        let t = Arc::clone(&self.0);
        Arc::new(move || Duration::from_nanos(t.load(Ordering::SeqCst)))
    }
}

fn tiered(priorities: &[u8]) -> Vec<BackendSpec> {
    priorities
        .iter()
        .enumerate()
        .map(|(i, &p)| {
            let mut s = spec(i as u32, 1, 0, false);
            s.priority = p;
            s
        })
        .collect()
}

fn scheduler(
    algorithm: Algorithm,
    steering: Steering,
    specs: Vec<BackendSpec>,
) -> (Scheduler, FakeClock) {
    let clock = FakeClock::default();
    let s = Scheduler::with_steering(algorithm, steering, specs, clock.clock());
    (s, clock)
}

/// Which backends `n` picks land on.
fn counts(s: &Scheduler, n: usize, rng: &mut Rng) -> Vec<u64> {
    let snap = s.snapshot();
    let mut c = vec![0u64; snap.backends().len()];
    for _ in 0..n {
        if let Some(i) = snap.pick(rng.ip(), rng.next(), &Tried::new()) {
            c[i] += 1;
        }
    }
    c
}

fn set_up(s: &Scheduler, index: usize, up: bool) {
    s.snapshot().backends()[index].state.set_up(up);
    s.health_changed();
}

fn range(lowest: u8, highest: u8) -> Option<TierRange> {
    Some(TierRange { lowest, highest })
}

#[test]
fn min_active_adds_the_next_tier_while_too_few_are_up() {
    let steering = Steering {
        min_active: 2,
        ..Steering::default()
    };
    let (s, _) = scheduler(Algorithm::RoundRobin, steering, tiered(&[0, 0, 1, 1, 2]));
    let mut rng = Rng(1);
    assert_eq!(s.snapshot().tiers_now(), range(0, 0));
    assert_eq!(counts(&s, 100, &mut rng)[2..], [0, 0, 0]);
    set_up(&s, 0, false);
    assert_eq!(s.snapshot().tiers_now(), range(0, 1));
    let c = counts(&s, 300, &mut rng);
    assert_eq!((c[0], c[4]), (0, 0), "{c:?}");
    assert!(c[1] > 0 && c[2] > 0 && c[3] > 0, "tier 1 is added: {c:?}");
    set_up(&s, 1, false);
    set_up(&s, 2, false);
    assert_eq!(
        s.snapshot().tiers_now(),
        range(1, 2),
        "one of tier 1 + tier 2"
    );
    set_up(&s, 0, true);
    set_up(&s, 1, true);
    assert_eq!(s.snapshot().tiers_now(), range(0, 0), "immediate failback");
}

#[test]
fn manual_failback_stays_on_the_backups_until_told() {
    let steering = Steering {
        failback: Failback::Manual,
        ..Steering::default()
    };
    let (s, _) = scheduler(Algorithm::LeastConnections, steering, tiered(&[0, 0, 1]));
    let mut rng = Rng(2);
    set_up(&s, 0, false);
    let change = {
        s.snapshot().backends()[1].state.set_up(false);
        s.health_changed()
    };
    let change = change.expect("moving to the backups is a change");
    assert_eq!((change.from, change.to), (range(0, 0), range(1, 1)));
    assert_eq!(counts(&s, 50, &mut rng), [0, 0, 50]);
    set_up(&s, 0, true);
    set_up(&s, 1, true);
    assert_eq!(s.snapshot().tiers_now(), range(1, 1), "held on the backups");
    assert_eq!(counts(&s, 50, &mut rng), [0, 0, 50]);
    assert_eq!(s.tick(), None);
    // The backups die while held: failover to the primaries is never held back.
    set_up(&s, 2, false);
    assert_eq!(s.snapshot().tiers_now(), range(0, 0));
    set_up(&s, 0, false);
    set_up(&s, 1, false);
    set_up(&s, 2, true);
    set_up(&s, 0, true);
    assert_eq!(s.snapshot().tiers_now(), range(1, 1));
    assert_eq!(s.failback(), (range(1, 1), range(0, 0)));
    let c = counts(&s, 50, &mut rng);
    assert_eq!(c[2], 0, "{c:?}");
    assert_eq!(
        s.failback(),
        (range(0, 0), range(0, 0)),
        "nothing to do twice"
    );
}

#[test]
fn failback_after_a_window_restarts_when_a_primary_flaps() {
    let window = Duration::from_secs(30);
    let steering = Steering {
        failback: Failback::After(window),
        ..Steering::default()
    };
    let (s, clock) = scheduler(Algorithm::RoundRobin, steering, tiered(&[0, 1]));
    set_up(&s, 0, false);
    assert_eq!(s.snapshot().tiers_now(), range(1, 1));
    set_up(&s, 0, true);
    clock.advance(Duration::from_secs(20));
    assert_eq!(s.tick(), None);
    // A flap inside the window.
    set_up(&s, 0, false);
    set_up(&s, 0, true);
    clock.advance(Duration::from_secs(20));
    assert_eq!(
        s.tick(),
        None,
        "40 s since the first recovery, 20 s since the flap"
    );
    assert_eq!(s.snapshot().tiers_now(), range(1, 1));
    clock.advance(Duration::from_secs(10));
    let change = s.tick().expect("failback after a whole window");
    assert_eq!((change.from, change.to), (range(1, 1), range(0, 0)));
    assert!(change.cause.contains("30s"), "{}", change.cause);
    assert_eq!(s.snapshot().tiers_now(), range(0, 0));
}

#[test]
fn slow_start_ramps_a_returning_backend_from_a_small_share() {
    let window = Duration::from_secs(10);
    for algorithm in [
        Algorithm::RoundRobin,
        Algorithm::WeightedRoundRobin,
        Algorithm::Random,
        Algorithm::PowerOfTwo,
        Algorithm::DynamicWeight,
        Algorithm::LeastLatency,
    ] {
        let steering = Steering {
            slow_start: Some(window),
            ..Steering::default()
        };
        let (s, clock) = scheduler(algorithm, steering, common::equal(4));
        let mut rng = Rng(3);
        assert_eq!(
            s.snapshot().backends()[0].state.ramp(),
            FULL_RAMP,
            "no ramp at start"
        );
        set_up(&s, 0, false);
        set_up(&s, 0, true);
        let mut shares = Vec::new();
        for _ in 0..5 {
            let c = counts(&s, 4_000, &mut rng);
            shares.push(c[0] as f64 / 4_000.0);
            clock.advance(window / 4);
            s.tick();
        }
        assert_eq!(
            s.snapshot().backends()[0].state.ramp(),
            FULL_RAMP,
            "{algorithm:?}"
        );
        assert!(shares[0] < 0.05, "{algorithm:?}: starts small: {shares:?}");
        assert!(
            shares.windows(2).all(|w| w[1] + 0.02 >= w[0]),
            "{algorithm:?}: grows: {shares:?}"
        );
        assert!(
            (shares[4] - 0.25).abs() < 0.05,
            "{algorithm:?}: full share at the end: {shares:?}"
        );
    }
}

#[test]
fn slow_start_with_least_connections_limits_the_cold_backend() {
    let steering = Steering {
        slow_start: Some(Duration::from_secs(10)),
        ..Steering::default()
    };
    let (s, _) = scheduler(Algorithm::LeastConnections, steering, common::equal(2));
    let snap = s.snapshot();
    let _held: Vec<_> = (0..200)
        .map(|_| snap.backends()[1].state.acquire())
        .collect();
    set_up(&s, 0, false);
    set_up(&s, 0, true);
    assert_eq!(s.snapshot().backends()[0].state.ramp(), RAMP_FLOOR);
    // Without slow start it would take the next 200 connections; at 1/20 it takes ~10.
    let mut guards = Vec::new();
    let mut to_cold = 0;
    for r in 0..100u64 {
        let snap = s.snapshot();
        let (i, g) = snap.pick_and_acquire(ip(1), r, &mut Tried::new()).unwrap();
        to_cold += u32::from(i == 0);
        guards.push(g);
    }
    assert!((5..=20).contains(&to_cold), "{to_cold}");
}

#[test]
fn least_latency_avoids_a_slow_backend_and_tries_it_again_later() {
    let (s, clock) = scheduler(
        Algorithm::LeastLatency,
        Steering::default(),
        common::equal(3),
    );
    let mut rng = Rng(4);
    let snap = s.snapshot();
    let fast = Duration::from_micros(100);
    for _ in 0..8 {
        snap.backends()[0].state.record_latency(fast);
        snap.backends()[1].state.record_latency(fast);
        snap.backends()[2]
            .state
            .record_latency(Duration::from_millis(20));
    }
    // Connections held open, as a real load does: cost is latency × (active + 1).
    let held = |n: usize, rng: &mut Rng| -> (Vec<u64>, Vec<_>) {
        let snap = s.snapshot();
        let mut c = vec![0u64; 3];
        let mut guards = Vec::new();
        for _ in 0..n {
            let (i, g) = snap
                .pick_and_acquire(ip(1), rng.next(), &mut Tried::new())
                .unwrap();
            c[i] += 1;
            guards.push(g);
        }
        (c, guards)
    };
    let (c, guards) = held(300, &mut rng);
    assert_eq!(
        c[2], 0,
        "200 times slower: not picked while the others hold < 200: {c:?}"
    );
    drop(guards);
    // Not picked, its average moves toward the best one's until it is tried again.
    for _ in 0..10 {
        clock.advance(Duration::from_secs(1));
        s.tick();
    }
    let (c, _guards) = held(300, &mut rng);
    assert!(c[2] > 50, "{c:?}");
    // Down and back: no sample, tried first.
    set_up(&s, 2, false);
    set_up(&s, 2, true);
    assert_eq!(s.snapshot().backends()[2].state.latency(), None);
}
