//! Who may be picked: down/capacity/backup filtering, retries, no-candidate, reloads.

mod common;

use std::sync::Arc;

use common::{equal, ip, spec, Rng};
use ringlb_config::Algorithm;
use ringlb_scheduler::{BackendSpec, Scheduler, Snapshot, Tried};

const ALL: [Algorithm; 9] = Algorithm::ALL;

fn picked(snap: &Snapshot, n: usize, tried: &Tried) -> std::collections::BTreeSet<Option<usize>> {
    let mut rng = Rng(42);
    (0..n)
        .map(|_| snap.pick(rng.ip(), rng.next(), tried))
        .collect()
}

fn with_backups() -> Vec<BackendSpec> {
    vec![
        spec(0, 1, 0, false),
        spec(1, 3, 0, false),
        spec(2, 1, 0, true),
        spec(3, 2, 0, true),
    ]
}

#[test]
fn down_backends_are_never_picked_before_or_after_the_rebuild() {
    for alg in ALL {
        let s = Scheduler::new(alg, equal(4));
        let snap = s.snapshot();
        snap.backends()[0].state.set_up(false);
        snap.backends()[2].state.set_up(false);
        let expect = [Some(1), Some(3)].into_iter().collect();
        assert_eq!(picked(&snap, 2000, &Tried::new()), expect, "{alg:?} stale");
        s.health_changed();
        assert_eq!(
            picked(&s.snapshot(), 2000, &Tried::new()),
            expect,
            "{alg:?} rebuilt"
        );
    }
}

#[test]
fn backups_serve_only_while_no_primary_is_up() {
    for alg in ALL {
        let s = Scheduler::new(alg, with_backups());
        let snap = s.snapshot();
        let primaries = [Some(0), Some(1)].into_iter().collect();
        assert_eq!(picked(&snap, 2000, &Tried::new()), primaries, "{alg:?}");
        snap.backends()[0].state.set_up(false);
        assert_eq!(
            picked(&snap, 2000, &Tried::new()),
            [Some(1)].into_iter().collect()
        );
        snap.backends()[1].state.set_up(false);
        let backups = [Some(2), Some(3)].into_iter().collect();
        // Both before and after the rebuild.
        assert_eq!(picked(&snap, 2000, &Tried::new()), backups, "{alg:?} stale");
        s.health_changed();
        assert_eq!(
            picked(&s.snapshot(), 2000, &Tried::new()),
            backups,
            "{alg:?}"
        );
        // A primary recovers: backups stop at once, even before the rebuild.
        snap.backends()[1].state.set_up(true);
        assert_eq!(
            picked(&s.snapshot(), 2000, &Tried::new()),
            [Some(1)].into_iter().collect(),
            "{alg:?} recovery"
        );
    }
}

#[test]
fn full_or_tried_primaries_do_not_open_the_backups() {
    // The contract says backups serve while no primary is *up*; a full or already tried
    // primary is still up, so the answer is "no candidate", not a backup.
    for alg in ALL {
        let s = Scheduler::new(alg, with_backups());
        let snap = s.snapshot();
        let mut tried = Tried::new();
        tried.insert(0);
        tried.insert(1);
        assert_eq!(snap.pick(ip(9), 7, &tried), None, "{alg:?}");
        assert!(!snap.is_candidate(2, &Tried::new()));
    }
}

#[test]
fn backends_at_max_connections_are_skipped() {
    for alg in ALL {
        let specs = vec![
            spec(0, 1, 2, false),
            spec(1, 1, 0, false),
            spec(2, 1, 1, false),
        ];
        let s = Scheduler::new(alg, specs);
        let snap = s.snapshot();
        let _g0: Vec<_> = (0..2).map(|_| snap.backends()[0].state.acquire()).collect();
        let g2 = snap.backends()[2].state.acquire();
        assert_eq!(
            picked(&snap, 2000, &Tried::new()),
            [Some(1)].into_iter().collect()
        );
        drop(g2);
        assert!(
            picked(&snap, 2000, &Tried::new()).contains(&Some(2)),
            "{alg:?}"
        );
    }
}

#[test]
fn no_candidate_is_none_never_a_panic() {
    for alg in ALL {
        // Empty listener.
        assert_eq!(
            Scheduler::new(alg, vec![])
                .snapshot()
                .pick(ip(1), 1, &Tried::new()),
            None
        );
        // All down, including backups.
        let s = Scheduler::new(alg, with_backups());
        for b in s.snapshot().backends() {
            b.state.set_up(false);
        }
        assert_eq!(s.snapshot().pick(ip(1), 1, &Tried::new()), None, "{alg:?}");
        s.health_changed();
        assert_eq!(s.snapshot().pick(ip(1), 1, &Tried::new()), None, "{alg:?}");
        // All full.
        let s = Scheduler::new(alg, vec![spec(0, 1, 1, false), spec(1, 1, 1, false)]);
        let snap = s.snapshot();
        let _g: Vec<_> = snap.backends().iter().map(|b| b.state.acquire()).collect();
        assert_eq!(snap.pick(ip(1), 1, &Tried::new()), None, "{alg:?}");
        // Only backups configured (no primary at all): they serve.
        let s = Scheduler::new(alg, vec![spec(0, 1, 0, true)]);
        assert_eq!(
            s.snapshot().pick(ip(1), 1, &Tried::new()),
            Some(0),
            "{alg:?}"
        );
    }
}

#[test]
fn retries_never_return_a_tried_backend_and_end_with_none() {
    for alg in ALL {
        for n in [1u32, 3, 70] {
            let snap = Scheduler::new(alg, equal(n)).snapshot();
            let mut rng = Rng(u64::from(n));
            let client = rng.ip();
            let mut tried = Tried::new();
            for _ in 0..n {
                let i = snap
                    .pick(client, rng.next(), &tried)
                    .expect("untried backend left");
                assert!(tried.insert(i), "{alg:?}: {i} picked twice");
            }
            assert_eq!(tried.len(), n as usize);
            assert_eq!(snap.pick(client, rng.next(), &tried), None, "{alg:?}");
        }
    }
}

#[test]
fn hashing_retries_are_deterministic_per_client() {
    for alg in [Algorithm::SourceHash, Algorithm::Maglev] {
        let snap = Scheduler::new(alg, equal(6)).snapshot();
        for n in 0..500 {
            let order = |seed: u64| {
                let mut tried = Tried::new();
                let mut rng = Rng(seed);
                let mut order = vec![];
                while let Some(i) = snap.pick(ip(n), rng.next(), &tried) {
                    tried.insert(i);
                    order.push(i);
                }
                order
            };
            assert_eq!(order(1), order(2), "{alg:?} client {n}");
            assert_eq!(order(1).len(), 6);
        }
    }
}

#[test]
fn reconfigure_carries_state_by_label() {
    let s = Scheduler::new(Algorithm::LeastConnections, equal(3));
    let old = s.snapshot();
    let guard = old.backends()[1].state.acquire();
    old.backends()[2].state.set_up(false);
    // Keep 1 (reweighted) and 2, drop 0, add 5.
    let specs = vec![
        spec(2, 1, 0, false),
        spec(1, 9, 0, false),
        spec(5, 1, 0, false),
    ];
    s.reconfigure(Algorithm::Maglev, specs);
    let new = s.snapshot();
    assert_eq!(new.algorithm(), Algorithm::Maglev);
    assert!(Arc::ptr_eq(
        &new.backends()[1].state,
        &old.backends()[1].state
    ));
    assert!(Arc::ptr_eq(
        &new.backends()[0].state,
        &old.backends()[2].state
    ));
    assert_eq!(new.backends()[1].spec.weight, 9);
    assert_eq!(new.backends()[1].state.active(), 1);
    assert!(!new.backends()[0].state.is_up());
    assert!(new.backends()[2].state.is_up() && new.backends()[2].state.active() == 0);
    // The old snapshot is untouched: in-flight connections keep it.
    assert_eq!(old.algorithm(), Algorithm::LeastConnections);
    assert_eq!(old.backends().len(), 3);
    drop(guard);
    assert_eq!(new.backends()[1].state.active(), 0);
}

#[test]
fn duplicate_labels_do_not_share_a_counter() {
    let s = Scheduler::new(Algorithm::RoundRobin, equal(1));
    s.reconfigure(
        Algorithm::RoundRobin,
        vec![spec(0, 1, 0, false), spec(0, 1, 0, false)],
    );
    let snap = s.snapshot();
    assert!(!Arc::ptr_eq(
        &snap.backends()[0].state,
        &snap.backends()[1].state
    ));
}

#[test]
fn health_changed_is_a_no_op_without_a_change() {
    let s = Scheduler::new(Algorithm::Maglev, equal(3));
    let a = s.snapshot();
    s.health_changed();
    assert!(Arc::ptr_eq(&a, &s.snapshot()));
    a.backends()[0].state.set_up(false);
    s.health_changed();
    assert!(!Arc::ptr_eq(&a, &s.snapshot()));
}

#[test]
fn try_acquire_enforces_max_connections_exactly() {
    let s = Scheduler::new(Algorithm::RoundRobin, vec![spec(0, 1, 2, false)]);
    let snap = s.snapshot();
    let b = &snap.backends()[0];
    let g1 = b.try_acquire().unwrap();
    let _g2 = b.try_acquire().unwrap();
    assert!(b.try_acquire().is_none());
    drop(g1);
    assert!(b.try_acquire().is_some());
    assert_eq!(b.state.active(), 1);
}

#[test]
fn from_config_backend() {
    let c = ringlb_config::Backend {
        addr: "10.0.0.11:7000".parse().unwrap(),
        label: "10.0.0.11:7000".into(),
        weight: 5,
        max_connections: 2000,
        priority: 1,
        on_down: ringlb_config::OnDown::Keep,
    };
    let s = BackendSpec::from(&c);
    assert_eq!(
        (
            s.addr,
            s.label.as_str(),
            s.weight,
            s.max_connections,
            s.priority
        ),
        (c.addr, "10.0.0.11:7000", 5, 2000, 1)
    );
}

#[test]
fn pick_and_acquire_takes_slots_until_every_backend_is_full() {
    for alg in ALL {
        // Two backends with one slot each: two acquisitions succeed, on distinct
        // backends, then there is no candidate; releasing a slot makes room again.
        let sched = Scheduler::new(alg, vec![spec(0, 1, 1, false), spec(1, 1, 1, false)]);
        let snap = sched.snapshot();
        let client = ip(7);
        let mut tried = Tried::new();
        let (a, guard_a) = snap
            .pick_and_acquire(client, 1, &mut tried)
            .expect("first slot");
        let mut tried = Tried::new();
        let (b, guard_b) = snap
            .pick_and_acquire(client, 2, &mut tried)
            .expect("second slot");
        assert_ne!(a, b, "{alg:?}: one slot per backend");
        let mut tried = Tried::new();
        assert!(
            snap.pick_and_acquire(client, 3, &mut tried).is_none(),
            "{alg:?}: all full"
        );
        drop(guard_a);
        let mut tried = Tried::new();
        let (c, _guard_c) = snap
            .pick_and_acquire(client, 4, &mut tried)
            .expect("freed slot");
        assert_eq!(c, a, "{alg:?}");
        assert!(
            tried.contains(c),
            "{alg:?}: the picked backend is recorded as tried"
        );
        drop(guard_b);
    }
}
