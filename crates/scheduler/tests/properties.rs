//! Property tests: for any backend set, health, load and retry history, every algorithm
//! returns a backend the contract allows, and "none" only when there is none.

mod common;

use common::spec;
use proptest::prelude::*;
use ringlb_config::Algorithm;
use ringlb_scheduler::{Scheduler, Tried};
use std::net::{IpAddr, Ipv4Addr};

#[derive(Debug, Clone)]
struct B {
    weight: u32,
    max: u32,
    backup: bool,
    up: bool,
    active: u32,
    tried: bool,
}

fn backend() -> impl Strategy<Value = B> {
    (
        1u32..10,
        0u32..4,
        prop::bool::weighted(0.25),
        prop::bool::weighted(0.7),
        0u32..5,
        prop::bool::weighted(0.2),
    )
        .prop_map(|(weight, max, backup, up, active, tried)| B {
            weight,
            max,
            backup,
            up,
            active,
            tried,
        })
}

fn algorithm() -> impl Strategy<Value = Algorithm> {
    prop::sample::select(Algorithm::ALL.to_vec())
}

/// The contract written out independently of the implementation.
fn allowed(set: &[B]) -> Vec<usize> {
    let primary_up = set.iter().any(|b| !b.backup && b.up);
    (0..set.len())
        .filter(|&i| {
            let b = &set[i];
            b.backup != primary_up && b.up && (b.max == 0 || b.active < b.max) && !b.tried
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn pick_respects_the_contract(
        set in prop::collection::vec(backend(), 0..80),
        alg in algorithm(),
        rebuild in any::<bool>(),
        client in any::<u32>(),
        randoms in prop::collection::vec(any::<u64>(), 8),
    ) {
        // Maglev tables are big; keep the property cheap for it.
        let set: Vec<B> = if alg == Algorithm::Maglev { set.into_iter().take(12).collect() } else { set };
        let specs = set.iter().enumerate().map(|(i, b)| spec(i as u32, b.weight, b.max, b.backup)).collect();
        let s = Scheduler::new(alg, specs);
        let snap = s.snapshot();
        let mut guards = vec![];
        let mut tried = Tried::new();
        for (i, b) in set.iter().enumerate() {
            snap.backends()[i].state.set_up(b.up);
            for _ in 0..b.active {
                guards.push(snap.backends()[i].state.acquire());
            }
            if b.tried {
                tried.insert(i);
            }
        }
        if rebuild {
            s.health_changed();
        }
        let snap = s.snapshot();
        let ok = allowed(&set);
        let client = IpAddr::V4(Ipv4Addr::from(client));
        let mut first = None;
        for &r in &randoms {
            let got = snap.pick(client, r, &tried);
            match got {
                None => prop_assert!(ok.is_empty(), "{alg:?}: none, but {ok:?} allowed"),
                Some(i) => prop_assert!(ok.contains(&i), "{alg:?}: picked {i}, allowed {ok:?}"),
            }
            if matches!(alg, Algorithm::SourceHash | Algorithm::Maglev) {
                // Same client, same state: same answer whatever the randomness.
                prop_assert!(first.is_none() || first == Some(got));
                first = Some(got);
            }
        }
        for i in 0..set.len() {
            prop_assert_eq!(snap.is_candidate(i, &tried), ok.contains(&i));
        }
        drop(guards);
        prop_assert!(snap.backends().iter().all(|b| b.state.active() == 0));
    }
}
