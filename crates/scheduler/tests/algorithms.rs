//! Per-algorithm behaviour: proportions, sequences, steering, hashing stability.

mod common;

use std::collections::HashMap;

use common::{assert_shares, equal, ip, spec, weighted, Rng};
use ringlb_config::Algorithm;
use ringlb_scheduler::{ActiveGuard, Scheduler, Snapshot, Tried};

const ALL: [Algorithm; 9] = Algorithm::ALL;

/// Picks `n` times with fresh randomness and distinct clients; counts per backend index.
fn counts(snap: &Snapshot, n: usize, seed: u64) -> Vec<u64> {
    let mut rng = Rng(seed);
    let mut c = vec![0u64; snap.backends().len()];
    let none = Tried::new();
    for _ in 0..n {
        let i = snap.pick(rng.ip(), rng.next(), &none).expect("a candidate");
        c[i] += 1;
    }
    c
}

fn hold(snap: &Snapshot, index: usize, n: usize) -> Vec<ActiveGuard> {
    (0..n)
        .map(|_| snap.backends()[index].state.acquire())
        .collect()
}

#[test]
fn round_robin_cycles_in_order() {
    let s = Scheduler::new(Algorithm::RoundRobin, equal(3));
    let snap = s.snapshot();
    let seq: Vec<usize> = (0..7)
        .map(|_| snap.pick(ip(1), 0, &Tried::new()).unwrap())
        .collect();
    assert_eq!(seq, vec![0, 1, 2, 0, 1, 2, 0]);
}

#[test]
fn round_robin_skips_down_backend_and_rebuild_restores_even_shares() {
    let s = Scheduler::new(Algorithm::RoundRobin, equal(4));
    let snap = s.snapshot();
    snap.backends()[1].state.set_up(false);
    // Before the rebuild: never the down backend.
    let c = counts(&snap, 4000, 1);
    assert_eq!(c[1], 0);
    s.health_changed();
    let c = counts(&s.snapshot(), 3000, 2);
    assert_eq!(c, vec![1000, 0, 1000, 1000]);
}

#[test]
fn smooth_wrr_matches_nginx_interleaving() {
    let s = Scheduler::new(Algorithm::WeightedRoundRobin, weighted(&[5, 1, 1]));
    let snap = s.snapshot();
    let names = ["a", "b", "c"];
    let seq: String = (0..14)
        .map(|_| names[snap.pick(ip(1), 0, &Tried::new()).unwrap()])
        .collect::<Vec<_>>()
        .join(" ");
    assert_eq!(seq, "a a b a c a a a a b a c a a");
}

#[test]
fn wrr_proportions_are_exact_per_period() {
    let s = Scheduler::new(Algorithm::WeightedRoundRobin, weighted(&[3, 2, 1, 4]));
    let c = counts(&s.snapshot(), 1000, 3);
    assert_eq!(c, vec![300, 200, 100, 400]);
}

#[test]
fn wrr_keeps_every_prefix_close_to_its_share() {
    // Smoothness: after any number t of picks, each backend has been picked within one of
    // t × w_i / W times. A burst schedule (the heavy backend's whole weight first) breaks
    // this at once: after 10 picks of weights 10,1,1 it has 10 vs 8.33.
    for weights in [
        vec![10u32, 1, 1],
        vec![5, 1, 1],
        vec![7, 3, 2, 1],
        vec![1, 1, 1],
    ] {
        let s = Scheduler::new(Algorithm::WeightedRoundRobin, weighted(&weights));
        let snap = s.snapshot();
        let total: u32 = weights.iter().sum();
        let mut c = vec![0u32; weights.len()];
        for t in 1..=(5 * total) {
            c[snap.pick(ip(1), 0, &Tried::new()).unwrap()] += 1;
            for (i, &w) in weights.iter().enumerate() {
                let ideal = f64::from(t * w) / f64::from(total);
                let dev = (f64::from(c[i]) - ideal).abs();
                assert!(dev < 1.0 + 1e-9, "weights {weights:?}, t={t}: {c:?}");
            }
        }
    }
}

#[test]
fn random_follows_weights() {
    let s = Scheduler::new(Algorithm::Random, weighted(&[5, 1, 1, 3]));
    let c = counts(&s.snapshot(), 100_000, 4);
    assert_shares(&c, &[0.5, 0.1, 0.1, 0.3], 0.01);
}

#[test]
fn least_connections_steers_to_least_loaded() {
    let s = Scheduler::new(Algorithm::LeastConnections, equal(3));
    let snap = s.snapshot();
    let _a = hold(&snap, 0, 5);
    let _b = hold(&snap, 1, 2);
    let _c = hold(&snap, 2, 3);
    let c = counts(&snap, 1000, 5);
    assert_eq!(c, vec![0, 1000, 0]);
}

#[test]
fn least_connections_weighs_by_weight() {
    let s = Scheduler::new(Algorithm::LeastConnections, weighted(&[5, 1]));
    let snap = s.snapshot();
    let _a = hold(&snap, 0, 4); // 4/5 = 0.8
    let _b = hold(&snap, 1, 1); // 1/1 = 1.0
    assert_eq!(counts(&snap, 100, 6), vec![100, 0]);
    let _a2 = hold(&snap, 0, 2); // 6/5 = 1.2
    assert_eq!(counts(&snap, 100, 7), vec![0, 100]);
}

#[test]
fn least_connections_breaks_ties_randomly() {
    let s = Scheduler::new(Algorithm::LeastConnections, equal(4));
    let snap = s.snapshot();
    // All tied at zero, and all tied at one.
    assert_shares(&counts(&snap, 40_000, 8), &[0.25; 4], 0.02);
    let _g: Vec<_> = (0..4).flat_map(|i| hold(&snap, i, 1)).collect();
    assert_shares(&counts(&snap, 40_000, 9), &[0.25; 4], 0.02);
}

#[test]
fn least_connections_balances_a_sequence_of_connects() {
    let s = Scheduler::new(Algorithm::LeastConnections, weighted(&[2, 1, 1]));
    let snap = s.snapshot();
    let mut rng = Rng(10);
    let guards: Vec<ActiveGuard> = (0..400)
        .map(|_| {
            let i = snap.pick(ip(1), rng.next(), &Tried::new()).unwrap();
            snap.backends()[i].state.acquire()
        })
        .collect();
    let active: Vec<u32> = snap.backends().iter().map(|b| b.state.active()).collect();
    assert_eq!(active, vec![200, 100, 100]);
    drop(guards);
}

#[test]
fn power_of_two_steers_away_from_loaded() {
    let s = Scheduler::new(Algorithm::PowerOfTwo, equal(4));
    let snap = s.snapshot();
    let _g = hold(&snap, 2, 50);
    let c = counts(&snap, 20_000, 11);
    // Two distinct candidates per pick: the loaded one can never win.
    assert_eq!(c[2], 0, "{c:?}");
    assert_shares(&c, &[1.0 / 3.0, 1.0 / 3.0, 0.0, 1.0 / 3.0], 0.02);
}

#[test]
fn power_of_two_follows_weights_when_idle_and_load_when_busy() {
    let s = Scheduler::new(Algorithm::PowerOfTwo, weighted(&[3, 1]));
    let snap = s.snapshot();
    // Idle: both draws by weight, the first drawn wins ties: 3:1.
    assert_shares(&counts(&snap, 40_000, 12), &[0.75, 0.25], 0.02);
    // Backend 0 at 6/3 = 2 per weight, backend 1 at 1/1 = 1: backend 1 whenever drawn.
    let _a = hold(&snap, 0, 6);
    let _b = hold(&snap, 1, 1);
    let c = counts(&snap, 40_000, 13);
    assert!(c[1] > c[0], "{c:?}");
}

#[test]
fn dynamic_weight_shares_follow_the_formula() {
    // Capacities 100 (explicit), 300 (explicit), weight 2 → 2 × 100 = 200 (derived).
    let specs = vec![
        spec(0, 1, 100, false),
        spec(1, 1, 300, false),
        spec(2, 2, 0, false),
    ];
    let s = Scheduler::new(Algorithm::DynamicWeight, specs);
    let snap = s.snapshot();
    // Idle: w_i = 1 everywhere, equal shares.
    assert_shares(&counts(&snap, 60_000, 14), &[1.0 / 3.0; 3], 0.015);
    let _a = hold(&snap, 0, 75); // w = 1/(1+0.75) = 0.5714
    let _b = hold(&snap, 1, 30); // w = 1/(1+0.1) = 0.9091
    let _c = hold(&snap, 2, 200); // w = 1/(1+1) = 0.5
    let w = [1.0 / 1.75, 1.0 / 1.1, 0.5];
    let sum: f64 = w.iter().sum();
    let expected: Vec<f64> = w.iter().map(|x| x / sum).collect();
    assert_shares(&counts(&snap, 100_000, 15), &expected, 0.01);
}

#[test]
fn dynamic_weight_large_sets_use_the_formula_too() {
    // > 64 members takes the two-pass path.
    let s = Scheduler::new(Algorithm::DynamicWeight, equal(80));
    let snap = s.snapshot();
    let _g = hold(&snap, 0, 300); // w = 1/(1+3) = 0.25 vs 1 for the other 79
    let c = counts(&snap, 200_000, 16);
    let expected0 = 0.25 / (79.0 + 0.25);
    let share0 = c[0] as f64 / 200_000.0;
    assert!(
        (share0 - expected0).abs() < 0.0015,
        "{share0} vs {expected0}"
    );
    assert!(c.iter().skip(1).all(|&x| x > 1500), "{c:?}");
}

#[test]
fn source_hash_is_per_client_and_weighted() {
    let s = Scheduler::new(Algorithm::SourceHash, weighted(&[1, 2, 1]));
    let snap = s.snapshot();
    let mut rng = Rng(17);
    let mut c = vec![0u64; 3];
    for n in 0..60_000u32 {
        let first = snap.pick(ip(n), rng.next(), &Tried::new()).unwrap();
        // Same client, other randomness: same backend.
        assert_eq!(snap.pick(ip(n), rng.next(), &Tried::new()), Some(first));
        c[first] += 1;
    }
    assert_shares(&c, &[0.25, 0.5, 0.25], 0.01);
}

/// Maps 20k clients with both snapshots; returns how many moved.
fn moved(a: &Snapshot, b: &Snapshot, keys: u32) -> usize {
    (0..keys)
        .filter(|&n| {
            let x = a.pick(ip(n * 7919), 0, &Tried::new()).unwrap();
            let y = b.pick(ip(n * 7919), 0, &Tried::new()).unwrap();
            a.backends()[x].spec.label != b.backends()[y].spec.label
        })
        .count()
}

#[test]
fn hashing_is_stable_across_snapshots_and_schedulers() {
    for alg in [Algorithm::SourceHash, Algorithm::Maglev] {
        let s = Scheduler::new(alg, equal(7));
        let before = s.snapshot();
        s.reconfigure(alg, equal(7));
        assert_eq!(moved(&before, &s.snapshot(), 20_000), 0, "{alg:?} reload");
        // A separate scheduler (another process, after a restart) maps the same way.
        let other = Scheduler::new(alg, equal(7));
        assert_eq!(
            moved(&before, &other.snapshot(), 20_000),
            0,
            "{alg:?} restart"
        );
    }
}

#[test]
fn hashing_remaps_only_the_down_backends_clients_and_restores_them() {
    for alg in [Algorithm::SourceHash, Algorithm::Maglev] {
        let s = Scheduler::new(alg, equal(5));
        let before = s.snapshot();
        let map = |snap: &Snapshot| -> Vec<usize> {
            (0..20_000)
                .map(|n| snap.pick(ip(n * 31), 0, &Tried::new()).unwrap())
                .collect()
        };
        let base = map(&before);
        before.backends()[3].state.set_up(false);
        // Between the flip and the rebuild, and after the rebuild.
        let stale = map(&before);
        s.health_changed();
        let rebuilt = map(&s.snapshot());
        for after in [&stale, &rebuilt] {
            for (b, a) in base.iter().zip(after.iter()) {
                assert_ne!(*a, 3, "{alg:?}: down backend picked");
                if *b != 3 {
                    assert_eq!(a, b, "{alg:?}: a client of an up backend moved");
                }
            }
        }
        // The stale fallback is deterministic and spreads the orphans over the others.
        assert_eq!(stale, map(&before));
        let mut orphans = HashMap::new();
        for (b, a) in base.iter().zip(stale.iter()) {
            if *b == 3 {
                *orphans.entry(*a).or_insert(0) += 1;
            }
        }
        assert!(orphans.len() >= 3, "{alg:?}: orphans went to {orphans:?}");
        before.backends()[3].state.set_up(true);
        s.health_changed();
        assert_eq!(map(&s.snapshot()), base, "{alg:?}: recovery");
    }
}

#[test]
fn maglev_balances_within_one_slot() {
    for n in [3u32, 10, 400] {
        let s = Scheduler::new(Algorithm::Maglev, equal(n));
        let snap = s.snapshot();
        assert_eq!(snap.maglev_table_size(), Some(65_537));
        let slots = snap.maglev_slot_counts();
        let (min, max) = (slots.iter().min().unwrap(), slots.iter().max().unwrap());
        println!("maglev {n} backends: slots per backend min {min} max {max}");
        assert!(max - min <= 1, "{n} backends: min {min} max {max}");
        assert_eq!(slots.iter().sum::<usize>(), 65_537);
    }
}

#[test]
fn maglev_table_grows_with_large_sets() {
    let s = Scheduler::new(Algorithm::Maglev, equal(1000));
    let snap = s.snapshot();
    assert_eq!(snap.maglev_table_size(), Some(100_003));
    let slots = snap.maglev_slot_counts();
    assert!(slots.iter().max().unwrap() - slots.iter().min().unwrap() <= 1);
}

#[test]
fn maglev_honours_weights() {
    let s = Scheduler::new(Algorithm::Maglev, weighted(&[1, 2, 3, 4]));
    let snap = s.snapshot();
    let slots = snap.maglev_slot_counts();
    let m = 65_537.0;
    for (i, w) in [1.0, 2.0, 3.0, 4.0].iter().enumerate() {
        let share = slots[i] as f64 / m;
        assert!(
            (share - w / 10.0).abs() < 0.002,
            "backend {i}: {share} ({slots:?})"
        );
    }
    assert_shares(&counts(&snap, 100_000, 18), &[0.1, 0.2, 0.3, 0.4], 0.01);
}

/// Backend label of each of `keys` random clients.
fn mapping(snap: &Snapshot, keys: usize, seed: u64) -> Vec<String> {
    let mut rng = Rng(seed);
    (0..keys)
        .map(|_| {
            let i = snap.pick(rng.ip(), 0, &Tried::new()).unwrap();
            snap.backends()[i].spec.label.clone()
        })
        .collect()
}

/// Fraction of clients whose backend differs; none may be on `gone` afterwards.
fn remapped(before: &[String], after: &[String], gone: &str) -> f64 {
    assert!(after.iter().all(|l| l != gone), "{gone} still picked");
    let changed = before.iter().zip(after).filter(|(x, y)| x != y).count();
    changed as f64 / before.len() as f64
}

#[test]
fn maglev_removing_one_backend_by_reload_remaps_about_one_nth() {
    // Reload: the table is rebuilt from scratch for the new set (a pure function of the
    // set, so every instance agrees). Plain maglev's extra disruption grows with N / M;
    // the 1.2/N bound holds up to a few tens of backends at M = 65537 (see docs).
    const KEYS: usize = 100_000;
    for n in [3u32, 5, 10, 20, 30, 50, 100] {
        let s = Scheduler::new(Algorithm::Maglev, equal(n));
        let before = mapping(&s.snapshot(), KEYS, u64::from(n));
        let mut specs = equal(n);
        let removed = specs.remove((n / 2) as usize);
        s.reconfigure(Algorithm::Maglev, specs);
        let after = mapping(&s.snapshot(), KEYS, u64::from(n));
        let fraction = remapped(&before, &after, &removed.label);
        let bound = 1.2 / f64::from(n);
        println!(
            "maglev reload removes 1 of {n}: {fraction:.4} of {KEYS} keys remapped \
             = {:.3}/N (bound 1.2/N = {bound:.4})",
            fraction * f64::from(n)
        );
        if n <= 30 {
            assert!(fraction <= bound, "{n}: {fraction} > {bound}");
        }
    }
}

#[test]
fn maglev_backend_going_down_remaps_exactly_its_clients() {
    // Health: the up-set table is derived from the full one, so only the down backend's
    // slots move, at any N.
    const KEYS: usize = 100_000;
    for n in [3u32, 10, 100, 400] {
        let s = Scheduler::new(Algorithm::Maglev, equal(n));
        let before = s.snapshot();
        let base = mapping(&before, KEYS, 99);
        let down = (n / 2) as usize;
        let gone = before.backends()[down].spec.label.clone();
        before.backends()[down].state.set_up(false);
        s.health_changed();
        let after = s.snapshot();
        let moved_to = mapping(&after, KEYS, 99);
        let fraction = remapped(&base, &moved_to, &gone);
        for (b, a) in base.iter().zip(&moved_to) {
            assert!(b == a || *b == gone, "{n}: a client of {b} moved to {a}");
        }
        let own = before.maglev_slot_counts()[down] as f64 / 65_537.0;
        println!(
            "maglev 1 of {n} down: {fraction:.4} of {KEYS} keys remapped = {:.3}/N \
             (its table share {own:.4})",
            fraction * f64::from(n)
        );
        assert!(fraction <= 1.2 / f64::from(n), "{n}: {fraction}");
        // Balance among the survivors stays within one slot.
        let slots: Vec<usize> = after
            .maglev_slot_counts()
            .into_iter()
            .enumerate()
            .filter(|&(i, _)| i != down)
            .map(|(_, c)| c)
            .collect();
        let spread = slots.iter().max().unwrap() - slots.iter().min().unwrap();
        assert!(spread <= 1, "{n}: survivors' slots spread {spread}");
        assert_eq!(after.maglev_slot_counts()[down], 0);
    }
}

#[test]
fn explain_style_pick_is_deterministic_for_every_algorithm() {
    // `ringlb explain` calls pick(client, 0, &Tried::new()) on a fresh snapshot.
    for alg in [Algorithm::SourceHash, Algorithm::Maglev] {
        let a = Scheduler::new(alg, equal(9)).snapshot();
        let b = Scheduler::new(alg, equal(9)).snapshot();
        let mut seen = std::collections::HashSet::new();
        for n in 0..200 {
            let x = a.pick(ip(n), 0, &Tried::new()).unwrap();
            assert_eq!(Some(x), b.pick(ip(n), 0, &Tried::new()));
            seen.insert(x);
        }
        assert_eq!(seen.len(), 9, "{alg:?}: clients spread over all backends");
    }
    for alg in ALL {
        let snap = Scheduler::new(alg, equal(3)).snapshot();
        assert!(snap.pick(ip(1), 0, &Tried::new()).is_some(), "{alg:?}");
    }
}

#[test]
fn ipv4_and_mapped_ipv6_clients_hash_alike() {
    let snap = Scheduler::new(Algorithm::Maglev, equal(11)).snapshot();
    for n in 0..1000u32 {
        let v4 = std::net::Ipv4Addr::from(n * 104_729);
        let a = snap.pick(v4.into(), 0, &Tried::new());
        let b = snap.pick(v4.to_ipv6_mapped().into(), 0, &Tried::new());
        assert_eq!(a, b);
    }
}
