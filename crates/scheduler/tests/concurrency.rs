//! Workers picking and counting connections concurrently, while the control plane reloads
//! and flips health: every counter must come back to exactly zero.

mod common;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

use common::{equal, spec, Rng};
use ringlb_config::Algorithm;
use ringlb_scheduler::{BackendState, Scheduler, Tried};

const WORKERS: usize = 2;
const PICKS_PER_WORKER: usize = 500_000;

fn run(alg: Algorithm) {
    let sched = Arc::new(Scheduler::new(alg, equal(8)));
    // Every state ever published, to check after the run (removed backends included).
    let seen: Arc<Mutex<Vec<Arc<BackendState>>>> = Arc::new(Mutex::new(
        sched
            .snapshot()
            .backends()
            .iter()
            .map(|b| Arc::clone(&b.state))
            .collect(),
    ));
    let stop = Arc::new(AtomicBool::new(false));

    let control = {
        let (sched, seen, stop) = (Arc::clone(&sched), Arc::clone(&seen), Arc::clone(&stop));
        thread::spawn(move || {
            let mut round = 0u32;
            while !stop.load(Ordering::Relaxed) {
                round += 1;
                let snap = sched.snapshot();
                let flip = (round as usize) % snap.backends().len();
                snap.backends()[flip].state.set_up(!round.is_multiple_of(3));
                sched.health_changed();
                if round.is_multiple_of(10) {
                    // Reload: drop one backend, add a fresh one, reweight the rest.
                    let specs = (0..8)
                        .map(|i| spec((i + round / 10) % 12, 1 + i % 3, 0, i == 7))
                        .collect();
                    sched.reconfigure(alg, specs);
                    let mut seen = seen.lock().unwrap();
                    for b in sched.snapshot().backends() {
                        if !seen.iter().any(|s| Arc::ptr_eq(s, &b.state)) {
                            seen.push(Arc::clone(&b.state));
                        }
                    }
                }
                thread::yield_now();
            }
        })
    };

    let workers: Vec<_> = (0..WORKERS)
        .map(|w| {
            let sched = Arc::clone(&sched);
            thread::spawn(move || {
                let mut rng = Rng(w as u64 + 1);
                let mut open = VecDeque::new();
                let mut picked = 0usize;
                for n in 0..PICKS_PER_WORKER {
                    let snap = sched.snapshot();
                    let mut tried = Tried::new();
                    if n % 7 == 0 {
                        tried.insert(n % 8);
                    }
                    if let Some(i) = snap.pick(rng.ip(), rng.next(), &tried) {
                        assert!(!tried.contains(i));
                        open.push_back(snap.backends()[i].state.acquire());
                        picked += 1;
                    }
                    // Connections close out of order and at different ages.
                    while open.len() > (rng.next() % 64) as usize {
                        let idx = (rng.next() as usize) % open.len();
                        open.swap_remove_back(idx);
                    }
                }
                drop(open);
                picked
            })
        })
        .collect();

    let picked: usize = workers.into_iter().map(|h| h.join().unwrap()).sum();
    stop.store(true, Ordering::Relaxed);
    control.join().unwrap();
    assert!(
        picked > PICKS_PER_WORKER,
        "{alg:?}: only {picked} picks succeeded"
    );
    let seen = seen.lock().unwrap();
    for s in seen.iter() {
        assert_eq!(s.active(), 0, "{alg:?}: a counter did not return to zero");
    }
    println!(
        "{alg:?}: {picked} picks, {} backend states checked",
        seen.len()
    );
}

#[test]
fn counters_return_to_zero_least_connections() {
    run(Algorithm::LeastConnections);
}

#[test]
fn counters_return_to_zero_maglev() {
    run(Algorithm::Maglev);
}

#[test]
fn counters_return_to_zero_round_robin() {
    run(Algorithm::WeightedRoundRobin);
}
