//! The operator's admin state: drained and maintenance backends take no new connection,
//! `weight: 0` means drained, a weight override reshapes the weighted algorithms, and all
//! of it carries over a reconfigure.

mod common;

use std::collections::BTreeSet;

use common::{assert_shares, equal, spec, weighted, Rng};
use ringlb_config::Algorithm;
use ringlb_scheduler::{AdminState, BackendSpec, Scheduler, Snapshot, Tried};

fn picked(snap: &Snapshot, n: usize) -> BTreeSet<Option<usize>> {
    let mut rng = Rng(7);
    (0..n)
        .map(|_| snap.pick(rng.ip(), rng.next(), &Tried::new()))
        .collect()
}

fn set(items: &[usize]) -> BTreeSet<Option<usize>> {
    items.iter().map(|&i| Some(i)).collect()
}

#[test]
fn drained_and_maint_backends_are_never_picked_before_or_after_the_rebuild() {
    for alg in Algorithm::ALL {
        for state in [AdminState::Drain, AdminState::Maint] {
            let s = Scheduler::new(alg, equal(4));
            let snap = s.snapshot();
            snap.backends()[1].state.set_admin_state(state);
            assert_eq!(
                picked(&snap, 2000),
                set(&[0, 2, 3]),
                "{alg:?} {state} stale"
            );
            assert!(!snap.is_candidate(1, &Tried::new()));
            s.admin_changed();
            assert_eq!(
                picked(&s.snapshot(), 2000),
                set(&[0, 2, 3]),
                "{alg:?} {state} rebuilt"
            );
            assert_eq!(s.snapshot().backends()[1].admin_state(), state);
            // Back to ready: a candidate again.
            snap.backends()[1].state.set_admin_state(AdminState::Ready);
            s.admin_changed();
            assert_eq!(picked(&s.snapshot(), 4000), set(&[0, 1, 2, 3]), "{alg:?}");
        }
    }
}

#[test]
fn configured_weight_zero_is_drained_until_an_override_gives_it_a_weight() {
    for alg in Algorithm::ALL {
        let s = Scheduler::new(alg, weighted(&[1, 0, 1]));
        let snap = s.snapshot();
        assert_eq!(snap.backends()[1].admin_state(), AdminState::Drain);
        assert_eq!(snap.backends()[1].effective_weight(), 0);
        assert_eq!(picked(&snap, 2000), set(&[0, 2]), "{alg:?}");
        snap.backends()[1].state.set_weight_override(Some(1));
        s.admin_changed();
        assert_eq!(s.snapshot().backends()[1].admin_state(), AdminState::Ready);
        assert_eq!(picked(&s.snapshot(), 4000), set(&[0, 1, 2]), "{alg:?}");
        // An override of 0 drains a configured-weight backend the same way.
        snap.backends()[0].state.set_weight_override(Some(0));
        s.admin_changed();
        assert_eq!(s.snapshot().backends()[0].admin_state(), AdminState::Drain);
        assert_eq!(picked(&s.snapshot(), 2000), set(&[1, 2]), "{alg:?}");
    }
}

#[test]
fn primaries_all_drained_hand_over_to_the_backups() {
    for alg in Algorithm::ALL {
        let s = Scheduler::new(
            alg,
            vec![
                spec(0, 1, 0, false),
                spec(1, 1, 0, false),
                spec(2, 1, 0, true),
            ],
        );
        let snap = s.snapshot();
        snap.backends()[0].state.set_admin_state(AdminState::Drain);
        assert_eq!(picked(&snap, 2000), set(&[1]), "{alg:?}");
        snap.backends()[1].state.set_admin_state(AdminState::Maint);
        assert_eq!(picked(&snap, 2000), set(&[2]), "{alg:?} stale");
        s.admin_changed();
        assert_eq!(picked(&s.snapshot(), 2000), set(&[2]), "{alg:?} rebuilt");
    }
}

#[test]
fn a_weight_override_reshapes_the_weighted_algorithms() {
    for alg in [
        Algorithm::WeightedRoundRobin,
        Algorithm::Random,
        Algorithm::SourceHash,
        Algorithm::Maglev,
    ] {
        let s = Scheduler::new(alg, weighted(&[1, 1]));
        s.snapshot().backends()[0]
            .state
            .set_weight_override(Some(3));
        s.admin_changed();
        let snap = s.snapshot();
        let mut rng = Rng(11);
        let mut counts = [0u64; 2];
        for _ in 0..40_000 {
            let i = snap
                .pick(rng.ip(), rng.next(), &Tried::new())
                .expect("a candidate");
            counts[i] += 1;
        }
        assert_shares(&counts, &[0.75, 0.25], 0.03);
        assert_eq!(snap.backends()[0].effective_weight(), 3, "{alg:?}");
    }
}

#[test]
fn admin_state_and_override_carry_over_a_reconfigure() {
    let s = Scheduler::new(Algorithm::RoundRobin, equal(3));
    let old = s.snapshot();
    old.backends()[0].state.set_admin_state(AdminState::Maint);
    old.backends()[2].state.set_weight_override(Some(9));
    let specs: Vec<BackendSpec> = vec![spec(2, 1, 0, false), spec(0, 4, 0, false)];
    s.reconfigure(Algorithm::WeightedRoundRobin, specs);
    let new = s.snapshot();
    assert_eq!(new.backends()[0].effective_weight(), 9);
    assert_eq!(new.backends()[1].admin_state(), AdminState::Maint);
    assert_eq!(new.backends()[1].effective_weight(), 4);
    assert_eq!(picked(&new, 1000), set(&[0]));
}
