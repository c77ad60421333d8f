//! ns per pick per algorithm, and table build times.
//!
//! Run: cargo bench -p ringlb-scheduler --bench pick -- --warm-up-time 1 --measurement-time 2
//!
//! Every backend holds 1–4 active connections, so least_connections, power_of_two and
//! dynamic_weight compare real loads (no idle-backend shortcut). Each iteration draws its
//! randomness and client IP from an inline xorshift (about 1 ns, included).

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use ringlb_config::Algorithm;
use ringlb_scheduler::{ActiveGuard, BackendSpec, Scheduler, Snapshot, Tried};

const ALGORITHMS: [Algorithm; 9] = Algorithm::ALL;
const SIZES: [u32; 3] = [3, 16, 256];

fn specs(n: u32) -> Vec<BackendSpec> {
    (0..n)
        .map(|i| {
            let addr = format!("10.0.{}.{}:7000", i / 256, i % 256);
            BackendSpec {
                addr: addr.parse().expect("valid address"),
                label: addr,
                weight: 1 + i % 3,
                max_connections: 0,
                priority: 0,
            }
        })
        .collect()
}

fn loaded(snap: &Snapshot) -> Vec<ActiveGuard> {
    snap.backends()
        .iter()
        .enumerate()
        .flat_map(|(i, b)| (0..=(i % 4)).map(|_| b.state.acquire()))
        .collect()
}

#[inline(always)]
fn xorshift(s: &mut u64) -> u64 {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    *s
}

#[inline(always)]
fn one_pick(snap: &Snapshot, seed: &mut u64, tried: &Tried) -> Option<usize> {
    let r = xorshift(seed);
    let client = IpAddr::V4(Ipv4Addr::from((r >> 32) as u32));
    snap.pick(black_box(client), black_box(r), tried)
}

/// A connection's worth of scheduler work: pick, count it, close it.
#[inline(always)]
fn pick_connect_close(snap: &Snapshot, seed: &mut u64, tried: &Tried) {
    if let Some(i) = one_pick(snap, seed, tried) {
        let guard = snap.backends()[i].state.acquire();
        black_box(&guard);
    }
}

fn single(c: &mut Criterion) {
    let mut g = c.benchmark_group("pick");
    for alg in ALGORITHMS {
        for n in SIZES {
            let s = Scheduler::new(alg, specs(n));
            let snap = s.snapshot();
            let _load = loaded(&snap);
            let tried = Tried::new();
            let mut seed = 0x1234_5678_9abc_def1u64;
            g.bench_function(BenchmarkId::new(alg.as_str(), n), |b| {
                b.iter(|| one_pick(&snap, &mut seed, &tried))
            });
        }
    }
    g.finish();
}

fn single_connect(c: &mut Criterion) {
    let mut g = c.benchmark_group("pick+acquire+release");
    for alg in ALGORITHMS {
        let s = Scheduler::new(alg, specs(16));
        let snap = s.snapshot();
        let _load = loaded(&snap);
        let tried = Tried::new();
        let mut seed = 0x1234_5678_9abc_def1u64;
        g.bench_function(BenchmarkId::new(alg.as_str(), 16), |b| {
            b.iter(|| pick_connect_close(&snap, &mut seed, &tried))
        });
    }
    g.finish();
}

/// Two threads on one snapshot, each doing pick + acquire + release: the shared cursor
/// and the counters bounce between the cores. Time is the measuring thread's per iteration.
fn contended(c: &mut Criterion) {
    let mut g = c.benchmark_group("contended_2t");
    for alg in ALGORITHMS {
        for n in SIZES {
            let s = Scheduler::new(alg, specs(n));
            let snap = s.snapshot();
            let _load = loaded(&snap);
            g.bench_function(BenchmarkId::new(alg.as_str(), n), |b| {
                b.iter_custom(|iters| {
                    let start = Barrier::new(2);
                    std::thread::scope(|scope| {
                        scope.spawn(|| {
                            let tried = Tried::new();
                            let mut seed = 0x0fed_cba9_8765_4321u64;
                            start.wait();
                            for _ in 0..iters {
                                pick_connect_close(&snap, &mut seed, &tried);
                            }
                        });
                        let tried = Tried::new();
                        let mut seed = 0x1234_5678_9abc_def1u64;
                        start.wait();
                        let t = Instant::now();
                        for _ in 0..iters {
                            pick_connect_close(&snap, &mut seed, &tried);
                        }
                        t.elapsed()
                    })
                })
            });
        }
    }
    g.finish();
}

fn snapshot_load(c: &mut Criterion) {
    let s = Scheduler::new(Algorithm::LeastConnections, specs(16));
    c.bench_function("scheduler.snapshot()+pick/least_connections/16", |b| {
        let tried = Tried::new();
        let mut seed = 0x1234_5678_9abc_def1u64;
        b.iter(|| {
            let snap = s.snapshot();
            one_pick(&snap, &mut seed, &tried)
        })
    });
}

fn builds(c: &mut Criterion) {
    let mut g = c.benchmark_group("build");
    g.sample_size(10);
    for n in SIZES {
        g.bench_function(BenchmarkId::new("maglev_65537", n), |b| {
            b.iter(|| Scheduler::new(Algorithm::Maglev, specs(n)))
        });
    }
    // Health rebuild: base table reused, one backend's slots handed out.
    let s = Scheduler::new(Algorithm::Maglev, specs(256));
    g.bench_function("maglev_health_rebuild/256", |b| {
        let mut up = false;
        b.iter(|| {
            s.snapshot().backends()[7].state.set_up(up);
            up = !up;
            s.health_changed();
        })
    });
    g.bench_function(BenchmarkId::new("wrr_schedule", 256), |b| {
        b.iter(|| Scheduler::new(Algorithm::WeightedRoundRobin, specs(256)))
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2));
    targets = single, single_connect, contended, snapshot_load, builds
}
criterion_main!(benches);
