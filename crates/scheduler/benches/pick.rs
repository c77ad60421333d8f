//! ns per pick per algorithm, and table build times; and what per-source limits
//! (ringlb-persource) and learned stickiness add to each connection, the other
//! shared-state work of an accept.
//!
//! Run: cargo bench -p ringlb-scheduler --bench pick -- --warm-up-time 1 --measurement-time 2
//!
//! Every backend holds 1–4 active connections, so least_connections, power_of_two and
//! dynamic_weight compare real loads (no idle-backend shortcut). Each iteration draws its
//! randomness and client IP from an inline xorshift (about 1 ns, included).

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use ringlb_config::{Algorithm, PerSource, SourceRate, Stickiness, StickinessKey};
use ringlb_persource::{Limits, SourceTable, Verdict};
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

/// Sources of the per-source hit-path cases, each holding one connection all along, so
/// every admission finds its source in the table.
const HELD_SOURCES: u64 = 1024;

/// Both limits set, neither ever reached: every admission does all the work of a pass.
const PER_SOURCE: PerSource = PerSource {
    max_connections: Some(1_000_000),
    rate: Some(SourceRate {
        per_second: 1_000_000,
        burst: u32::MAX,
    }),
    max_sources: 100_000,
};

fn held_source(r: u64) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + (r % HELD_SOURCES) as u32))
}

/// What ringlb does per connection: the accept time (already read) in the table's
/// time, admit, and (the connection ended) release. The limits are converted once per
/// worker, as ringlb caches them.
#[inline(always)]
fn source_admit_release(table: &SourceTable, limits: &Limits, ip: IpAddr, accepted: Instant) {
    let now = table.time(black_box(accepted));
    match table.admit(black_box(ip), limits, now) {
        Verdict::Tracked(slot) => drop(black_box(slot)),
        _ => panic!("the bench's limits are never reached"),
    }
}

fn per_source(c: &mut Criterion) {
    let mut g = c.benchmark_group("per_source");
    let table = SourceTable::new();
    let limits = Limits::from(&PER_SOURCE);
    // Time hardly matters to the cost: one instant, as if every connection came at once.
    let accepted = Instant::now();
    let _held: Vec<_> = (0..HELD_SOURCES)
        .map(|i| match table.admit(held_source(i), &limits, 0) {
            Verdict::Tracked(slot) => slot,
            _ => panic!("not tracked"),
        })
        .collect();
    let mut seed = 0x1234_5678_9abc_def1u64;
    g.bench_function("hit/admit+release", |b| {
        b.iter(|| source_admit_release(&table, &limits, held_source(xorshift(&mut seed)), accepted))
    });

    // A source seen for the first time: its entry is made, then removed with its only
    // connection (no rate limit, so nothing is left to remember).
    let fresh = SourceTable::new();
    let only_connections = Limits::new(Some(10), None, 100_000);
    g.bench_function("new_source/admit+release", |b| {
        b.iter(|| {
            let ip = IpAddr::V4(Ipv4Addr::from((xorshift(&mut seed) >> 32) as u32));
            match fresh.admit(black_box(ip), &only_connections, 0) {
                Verdict::Tracked(slot) => drop(black_box(slot)),
                _ => panic!("not tracked"),
            }
        })
    });

    // Two workers admitting on one table, over the same sources.
    g.bench_function("contended_2t/hit/admit+release", |b| {
        b.iter_custom(|iters| {
            let start = Barrier::new(2);
            std::thread::scope(|scope| {
                scope.spawn(|| {
                    let mut seed = 0x0fed_cba9_8765_4321u64;
                    start.wait();
                    for _ in 0..iters {
                        let ip = held_source(xorshift(&mut seed));
                        source_admit_release(&table, &limits, ip, accepted);
                    }
                });
                let mut seed = 0x1234_5678_9abc_def1u64;
                start.wait();
                let t = Instant::now();
                for _ in 0..iters {
                    let ip = held_source(xorshift(&mut seed));
                    source_admit_release(&table, &limits, ip, accepted);
                }
                t.elapsed()
            })
        })
    });

    // The whole shared-state work of one connection: per-source pass, pick, count.
    let s = Scheduler::new(Algorithm::LeastConnections, specs(16));
    let snap = s.snapshot();
    let _load = loaded(&snap);
    let tried = Tried::new();
    g.bench_function("with_pick+acquire+release/least_connections/16", |b| {
        b.iter(|| {
            let r = xorshift(&mut seed);
            source_admit_release(&table, &limits, held_source(r), accepted);
            pick_connect_close(&snap, &mut seed, &tried);
        })
    });
    g.finish();
}

/// Learned stickiness on the connect path: the sticky target, pick and acquire preferring
/// it, the entry remembered, release. `hit`: returning clients (10,000 keys in a table of
/// 65,536); `new_key`: a new client each time, so every connection inserts (and, once the
/// table is full, evicts).
fn sticky(c: &mut Criterion) {
    let mut g = c.benchmark_group("sticky");
    let s = Scheduler::new(Algorithm::LeastConnections, specs(16));
    s.set_stickiness(Some(Stickiness {
        key: StickinessKey::SourceIp,
        table_size: 65_536,
        expire: Duration::from_secs(3600),
        single_active: false,
    }));
    let snap = s.snapshot();
    let _load = loaded(&snap);
    let connect = |peer: SocketAddr, r: u64| {
        let target = snap.sticky_target(peer, r, 100);
        let mut tried = Tried::new();
        if let Some((i, guard)) = snap.pick_and_acquire_preferring(peer.ip(), r, &mut tried, target)
        {
            black_box(snap.sticky_remember(peer, i, 100));
            black_box(&guard);
        }
    };
    let client = |r: u64, keys: u64| {
        SocketAddr::new(
            IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | (r % keys) as u32)),
            4000,
        )
    };
    for k in 0..10_000 {
        connect(client(k, 10_000), k);
    }
    let mut seed = 0x1234_5678_9abc_def1u64;
    g.bench_function(
        "hit/target+pick+acquire+remember+release/least_connections/16",
        |b| {
            b.iter(|| {
                let r = xorshift(&mut seed);
                connect(black_box(client(r, 10_000)), r)
            })
        },
    );
    let mut n = 0u64;
    g.bench_function(
        "new_key/target+pick+acquire+remember+release/least_connections/16",
        |b| {
            b.iter(|| {
                n += 1;
                connect(black_box(client(n, u64::from(u32::MAX))), n)
            })
        },
    );
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
    targets = single, single_connect, contended, per_source, sticky, snapshot_load, builds
}
criterion_main!(benches);
