//! `/metrics`: the registry in Prometheus text exposition format 0.0.4.
//!
//! Every family is written once with its HELP and TYPE lines and all of its samples
//! together (the format requires a family's samples to be contiguous). Counters are sums
//! of per-worker monotonic counters, so they only go up while a listener lives; a listener
//! re-created by a reload starts its series again from zero (a counter reset, which
//! Prometheus handles). Metric names, label names and what they mean: docs/metrics.md.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;

use hdrhistogram::Histogram;
use ringlb_config::Protocol;
use ringlb_dataplane::stats::WorkerCounters;
use ringlb_dataplane::ListenerState;
use ringlb_dataplane::{DenyReason, EndReason};
use ringlb_scheduler::AdminState;

use super::process;
use crate::registry::{HealthRecord, Registry};

mod sni;

pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Upper bounds of the connect-latency buckets: (microseconds, `le` label in seconds).
/// The `le` text is fixed here rather than formatted from a float, so it never changes
/// spelling between versions.
pub const LATENCY_BUCKETS: [(u64, &str); 15] = [
    (100, "0.0001"),
    (250, "0.00025"),
    (500, "0.0005"),
    (1_000, "0.001"),
    (2_500, "0.0025"),
    (5_000, "0.005"),
    (10_000, "0.01"),
    (25_000, "0.025"),
    (50_000, "0.05"),
    (100_000, "0.1"),
    (250_000, "0.25"),
    (500_000, "0.5"),
    (1_000_000, "1"),
    (2_500_000, "2.5"),
    (5_000_000, "5"),
];

/// Reads one counter of a worker.
type Pick = fn(&WorkerCounters) -> u64;

/// UDP drop reasons and how to read them from a worker's counters.
const UDP_DROPS: [(&str, Pick); 2] = [
    ("truncated", |w| w.udp_drops_truncated.get()),
    ("send_error", |w| w.udp_drops_send_error.get()),
];

/// Connect latency of one listener, all workers merged, in fixed Prometheus buckets.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct LatencyBuckets {
    /// Cumulative counts, one per [`LATENCY_BUCKETS`] entry (`le` = that bound).
    pub cumulative: [u64; LATENCY_BUCKETS.len()],
    /// Every recorded connect (the `+Inf` bucket and `_count`).
    pub count: u64,
    /// Sum of the recorded values, in microseconds.
    pub sum_micros: u64,
}

impl LatencyBuckets {
    /// Adds one worker's histogram (microseconds). Each hdrhistogram bucket is placed by
    /// its lowest equivalent value, so a value recorded exactly on a bound counts as `≤`
    /// that bound; hdrhistogram's 3 significant digits make the placement of values just
    /// above a bound off by at most 0.1 %.
    pub fn add(&mut self, h: &Histogram<u64>) {
        // Walking the recorded values scans the whole counts array; skip it when empty.
        if h.is_empty() {
            return;
        }
        let mut per_bucket = [0u64; LATENCY_BUCKETS.len()];
        for v in h.iter_recorded() {
            let value = h.lowest_equivalent(v.value_iterated_to());
            let n = v.count_at_value();
            if let Some(i) = LATENCY_BUCKETS
                .iter()
                .position(|(bound, _)| value <= *bound)
            {
                per_bucket[i] = per_bucket[i].saturating_add(n);
            }
            self.count = self.count.saturating_add(n);
            self.sum_micros = self
                .sum_micros
                .saturating_add(h.median_equivalent(value).saturating_mul(n));
        }
        let mut running = 0u64;
        for (cumulative, n) in self.cumulative.iter_mut().zip(per_bucket) {
            running = running.saturating_add(n);
            *cumulative = cumulative.saturating_add(running);
        }
    }
}

/// What one scrape reads from one backend.
struct BackendView {
    label: String,
    up: bool,
    admin: AdminState,
    active: u32,
    connect_failures: u64,
    response_timeouts: u64,
    transitions: u64,
    /// Effective weight scaled by the slow-start ramp.
    weight: f64,
    /// Its priority tier takes new connections.
    tier_in_use: bool,
    priority: u8,
    /// least_latency's moving average, once there is a sample.
    latency: Option<std::time::Duration>,
}

/// What one scrape reads from one listener: every per-worker counter summed once.
struct ListenerView {
    name: String,
    protocol: Protocol,
    active: u32,
    connections: u64,
    denied: [(DenyReason, u64); DenyReason::ALL.len()],
    ended: Vec<(EndReason, u64)>,
    bytes_in: u64,
    bytes_out: u64,
    splice_switches: u64,
    copy_switches: u64,
    bulk_buffer_grows: u64,
    source_entries: u64,
    source_untracked: u64,
    /// Entries and slots of the sticky table, when the listener has one.
    sticky_fill: Option<(usize, usize)>,
    sticky_hits: u64,
    sticky_misses: u64,
    sticky_evictions: u64,
    udp_sessions: u64,
    udp_created: u64,
    udp_expired: u64,
    udp_datagrams_in: u64,
    udp_datagrams_out: u64,
    udp_drops: [(&'static str, u64); UDP_DROPS.len()],
    latency: LatencyBuckets,
    backends: Vec<BackendView>,
    /// The backends of each route's pool, under its series name `LISTENER/ROUTE`.
    pools: Vec<(String, Vec<BackendView>)>,
}

impl ListenerView {
    /// Every backend with the `listener` label its series carry: the listener's own, then
    /// those of each route's pool.
    fn each_backend(&self) -> impl Iterator<Item = (&str, &BackendView)> {
        std::iter::once((self.name.as_str(), &self.backends))
            .chain(self.pools.iter().map(|(name, b)| (name.as_str(), b)))
            .flat_map(|(name, backends)| backends.iter().map(move |b| (name, b)))
    }
}

/// Sums a counter over the workers. Wrapping, like the counters themselves: a scrape must
/// never panic, and a gauge kept as add/sub pairs can be transiently "negative" per worker.
fn sum(shared: &ListenerState, pick: impl Fn(&WorkerCounters) -> u64) -> u64 {
    shared
        .workers
        .iter()
        .fold(0u64, |acc, w| acc.wrapping_add(pick(w)))
}

fn view(shared: &ListenerState, registry: &Registry) -> ListenerView {
    let mut latency = LatencyBuckets::default();
    for w in &shared.workers {
        latency.add(&w.connect_latency.load());
    }
    let health = registry
        .health
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let snapshot = shared.scheduler.snapshot();
    let backends = backend_views(&shared.name, &snapshot, &health);
    // A route's pool: its backends carry the listener name `LISTENER/ROUTE`, as in the
    // health transitions.
    let pools = shared
        .routes
        .table()
        .pools
        .iter()
        .map(|pool| {
            let name = format!("{}/{}", shared.name, pool.name);
            let backends = backend_views(&name, &pool.scheduler.snapshot(), &health);
            (name, backends)
        })
        .collect();
    drop(health);
    // A UDP session gauge is summed wrapping; a total that wrapped below zero is a
    // transient of the per-worker add/sub pairs, shown as 0 rather than 2^64 - n.
    let udp_sessions = sum(shared, |w| w.udp_sessions_active.get());
    ListenerView {
        name: shared.name.clone(),
        protocol: shared.protocol,
        active: shared.active(),
        connections: sum(shared, |w| w.connections.get()),
        denied: DenyReason::ALL.map(|r| (r, sum(shared, |w| w.denied(r).get()))),
        ended: EndReason::ALL
            .into_iter()
            .filter(|r| r.applies_to(shared.protocol))
            .map(|r| (r, sum(shared, |w| w.ended(r).get())))
            .collect(),
        bytes_in: sum(shared, |w| w.bytes_in.get()),
        bytes_out: sum(shared, |w| w.bytes_out.get()),
        splice_switches: sum(shared, |w| w.splice_switches.get()),
        copy_switches: sum(shared, |w| w.copy_switches.get()),
        bulk_buffer_grows: sum(shared, |w| w.bulk_buffer_grows.get()),
        source_entries: shared.sources.len() as u64,
        source_untracked: sum(shared, |w| w.source_untracked.get()),
        sticky_fill: snapshot.sticky_fill(),
        sticky_hits: sum(shared, |w| w.sticky_hits.get()),
        sticky_misses: sum(shared, |w| w.sticky_misses.get()),
        sticky_evictions: sum(shared, |w| w.sticky_evictions.get()),
        udp_sessions: if i64::try_from(udp_sessions).is_ok() {
            udp_sessions
        } else {
            0
        },
        udp_created: sum(shared, |w| w.udp_sessions_created.get()),
        udp_expired: sum(shared, |w| w.ended(EndReason::Expired).get()),
        udp_datagrams_in: sum(shared, |w| w.udp_datagrams_in.get()),
        udp_datagrams_out: sum(shared, |w| w.udp_datagrams_out.get()),
        udp_drops: UDP_DROPS.map(|(reason, pick)| (reason, sum(shared, pick))),
        latency,
        backends,
        pools,
    }
}

/// The backends of one pool's snapshot, as their series show them under `listener`.
fn backend_views(
    listener: &str,
    snapshot: &ringlb_scheduler::Snapshot,
    health: &HashMap<(String, String), HealthRecord>,
) -> Vec<BackendView> {
    let tiers = snapshot.tiers_now();
    snapshot
        .backends()
        .iter()
        .map(|b| BackendView {
            weight: b.current_weight(),
            tier_in_use: tiers.is_some_and(|t| t.contains(b.spec.priority)),
            priority: b.spec.priority,
            latency: b.state.latency(),
            label: b.spec.label.clone(),
            up: b.state.is_up(),
            admin: b.admin_state(),
            active: b.state.active(),
            connect_failures: b.state.connect_failures(),
            response_timeouts: b.state.response_timeouts(),
            transitions: health
                .get(&(listener.to_owned(), b.spec.label.clone()))
                .map_or(0, |r| r.transitions),
        })
        .collect()
}

/// Renders the whole exposition.
pub fn render(registry: &Registry) -> String {
    let listeners: Arc<Vec<Arc<ListenerState>>> = registry.listeners.load_full();
    let views: Vec<ListenerView> = listeners.iter().map(|l| view(l, registry)).collect();
    let tcp: Vec<&ListenerView> = views
        .iter()
        .filter(|v| v.protocol == Protocol::Tcp)
        .collect();
    let udp: Vec<&ListenerView> = views
        .iter()
        .filter(|v| v.protocol == Protocol::Udp)
        .collect();
    let all: Vec<&ListenerView> = views.iter().collect();
    let sticky: Vec<&ListenerView> = views.iter().filter(|v| v.sticky_fill.is_some()).collect();
    let mut out = Exposition::default();

    out.family(
        "ringlb_build_info",
        "gauge",
        "Always 1; version and commit of the ringlb binary serving this endpoint.",
    );
    out.sample(
        "ringlb_build_info",
        &[
            ("version", env!("CARGO_PKG_VERSION")),
            (
                "commit",
                option_env!("RINGLB_GIT_COMMIT").unwrap_or("unknown"),
            ),
        ],
        1,
    );
    out.process(process::read().ok().as_ref());

    out.per_listener(
        "ringlb_listener_active_connections",
        "gauge",
        "Live TCP connections or UDP sessions of the listener, across all workers.",
        &all,
        |v| u64::from(v.active),
    );

    out.per_listener(
        "ringlb_connections_total",
        "counter",
        "TCP client connections admitted (past the allow list and max_connections).",
        &tcp,
        |v| v.connections,
    );

    out.per_listener_by(
        "ringlb_denied_total",
        "Clients closed without being forwarded, by reason.",
        "reason",
        &views,
        |v| v.denied.iter().map(|(r, n)| (r.as_str(), *n)).collect(),
    );

    out.per_listener_by(
        "ringlb_connections_ended_total",
        "TCP connections and UDP session legs that ended after being forwarded, by reason (the access log's end=).",
        "end",
        &views,
        |v| v.ended.iter().map(|(r, n)| (r.as_str(), *n)).collect(),
    );

    out.family(
        "ringlb_bytes_total",
        "counter",
        "Bytes relayed: direction=\"in\" client to backend, \"out\" backend to client.",
    );
    for v in &views {
        out.sample(
            "ringlb_bytes_total",
            &[("listener", &v.name), ("direction", "in")],
            v.bytes_in,
        );
        out.sample(
            "ringlb_bytes_total",
            &[("listener", &v.name), ("direction", "out")],
            v.bytes_out,
        );
    }

    out.per_listener(
        "ringlb_splice_switches_total",
        "counter",
        "TCP connection directions moved from copy to splice by forwarding: auto.",
        &tcp,
        |v| v.splice_switches,
    );

    out.per_listener(
        "ringlb_copy_switches_total",
        "counter",
        "TCP connection directions moved back from splice to copy by forwarding: auto.",
        &tcp,
        |v| v.copy_switches,
    );

    out.per_listener(
        "ringlb_bulk_buffer_grows_total",
        "counter",
        "TCP connection directions (forwarding: copy) whose buffer grew from 64 KiB to 256 KiB for a bulk stream.",
        &tcp,
        |v| v.bulk_buffer_grows,
    );

    out.per_listener(
        "ringlb_source_table_entries",
        "gauge",
        "Client sources (IPv4 addresses, IPv6 /64s) the listener's per_source table tracks now; at most per_source.max_sources.",
        &tcp,
        |v| v.source_entries,
    );

    out.per_listener(
        "ringlb_source_table_full_total",
        "counter",
        "New sources admitted without per-source limits because the per_source table held per_source.max_sources.",
        &tcp,
        |v| v.source_untracked,
    );

    let fill = |v: &ListenerView| v.sticky_fill.unwrap_or_default();
    out.per_listener(
        "ringlb_sticky_entries",
        "gauge",
        "stickiness: client keys the listener's table remembers now (expired ones until the sweep clears them, within seconds).",
        &sticky,
        |v| fill(v).0 as u64,
    );

    out.per_listener(
        "ringlb_sticky_table_size",
        "gauge",
        "stickiness: slots of the listener's table, the most entries it holds (table_size rounded up to a multiple of 8).",
        &sticky,
        |v| fill(v).1 as u64,
    );

    out.per_listener(
        "ringlb_sticky_hits_total",
        "counter",
        "stickiness: connections that went to the backend their key last used.",
        &sticky,
        |v| v.sticky_hits,
    );

    out.per_listener(
        "ringlb_sticky_misses_total",
        "counter",
        "stickiness: connections balanced afresh: no entry, an expired one, or a backend that could not take them.",
        &sticky,
        |v| v.sticky_misses,
    );

    out.per_listener(
        "ringlb_sticky_evictions_total",
        "counter",
        "stickiness: new entries that pushed out a live one because their bucket was full: raise table_size.",
        &sticky,
        |v| v.sticky_evictions,
    );

    out.family(
        "ringlb_backend_connect_seconds",
        "histogram",
        "Time to establish a TCP connection to a backend, all workers merged.",
    );
    for v in &tcp {
        let name: &str = &v.name;
        for ((_, le), n) in LATENCY_BUCKETS.iter().zip(v.latency.cumulative) {
            out.sample(
                "ringlb_backend_connect_seconds_bucket",
                &[("listener", name), ("le", le)],
                n,
            );
        }
        out.sample(
            "ringlb_backend_connect_seconds_bucket",
            &[("listener", name), ("le", "+Inf")],
            v.latency.count,
        );
        out.sample(
            "ringlb_backend_connect_seconds_sum",
            &[("listener", name)],
            Seconds(v.latency.sum_micros),
        );
        out.sample(
            "ringlb_backend_connect_seconds_count",
            &[("listener", name)],
            v.latency.count,
        );
    }

    sni::render(&mut out, &listeners);

    out.per_backend(
        "ringlb_active_connections",
        "gauge",
        "Live connections (TCP) or sessions (UDP) to the backend.",
        &all,
        |b| u64::from(b.active),
    );

    out.per_backend(
        "ringlb_backend_up",
        "gauge",
        "1 while the backend is up (health check or no health check), 0 while down.",
        &all,
        |b| u64::from(b.up),
    );

    out.family(
        "ringlb_backend_admin_state",
        "gauge",
        "1 for the backend's current admin state (ready, drain, maint; weight 0 reads as drain), 0 for the others.",
    );
    for v in &all {
        for (listener, b) in v.each_backend() {
            for state in AdminState::ALL {
                out.sample(
                    "ringlb_backend_admin_state",
                    &[
                        ("listener", listener),
                        ("backend", &b.label),
                        ("state", state.as_str()),
                    ],
                    u64::from(b.admin == state),
                );
            }
        }
    }

    out.per_backend(
        "ringlb_backend_weight",
        "gauge",
        "The backend's weight now: the configured one or the operator's override, scaled by its slow start while it ramps.",
        &all,
        |b| b.weight,
    );

    out.per_backend(
        "ringlb_backend_priority",
        "gauge",
        "The backend's priority tier (0 first; backup: true is 1).",
        &all,
        |b| u64::from(b.priority),
    );

    out.per_backend(
        "ringlb_backend_priority_in_use",
        "gauge",
        "1 while the backend's priority tier takes new connections (tiers, min_active, failback), 0 otherwise.",
        &all,
        |b| u64::from(b.tier_in_use),
    );

    out.family(
        "ringlb_backend_latency_seconds",
        "gauge",
        "least_latency: moving average of the latency ringlb sees to the backend (connect time, and time from a client's bytes to the backend's first answer); absent until the first sample.",
    );
    for v in &all {
        for (listener, b) in v.each_backend() {
            if let Some(latency) = b.latency {
                out.sample(
                    "ringlb_backend_latency_seconds",
                    &[("listener", listener), ("backend", &b.label)],
                    latency.as_secs_f64(),
                );
            }
        }
    }

    out.per_backend(
        "ringlb_connect_failures_total",
        "counter",
        "Client connects to the backend that were refused or timed out.",
        &all,
        |b| b.connect_failures,
    );

    out.per_backend(
        "ringlb_backend_response_timeouts_total",
        "counter",
        "Exchanges the backend left unanswered for response_timeout after a client's bytes reached it (each a failure toward the health check's fall).",
        &all,
        |b| b.response_timeouts,
    );

    out.per_backend(
        "ringlb_backend_health_transitions_total",
        "counter",
        "Up/down transitions of the backend decided by the health checker.",
        &all,
        |b| b.transitions,
    );

    out.per_listener(
        "ringlb_udp_sessions",
        "gauge",
        "Live UDP sessions of the listener.",
        &udp,
        |v| v.udp_sessions,
    );
    out.per_listener(
        "ringlb_udp_sessions_created_total",
        "counter",
        "UDP sessions created.",
        &udp,
        |v| v.udp_created,
    );
    out.per_listener(
        "ringlb_udp_sessions_expired_total",
        "counter",
        "UDP sessions dropped after session_timeout without traffic.",
        &udp,
        |v| v.udp_expired,
    );
    out.family(
        "ringlb_udp_datagrams_total",
        "counter",
        "UDP datagrams relayed: direction=\"in\" client to backend, \"out\" backend to client.",
    );
    for v in &udp {
        out.sample(
            "ringlb_udp_datagrams_total",
            &[("listener", &v.name), ("direction", "in")],
            v.udp_datagrams_in,
        );
        out.sample(
            "ringlb_udp_datagrams_total",
            &[("listener", &v.name), ("direction", "out")],
            v.udp_datagrams_out,
        );
    }
    out.family(
        "ringlb_udp_dropped_total",
        "counter",
        "UDP datagrams dropped, by reason.",
    );
    for v in &udp {
        for (reason, n) in &v.udp_drops {
            out.sample(
                "ringlb_udp_dropped_total",
                &[("listener", &v.name), ("reason", reason)],
                *n,
            );
        }
    }

    out.family(
        "ringlb_health_transitions_total",
        "counter",
        "Backend up/down transitions decided by the health checker, all listeners.",
    );
    out.sample(
        "ringlb_health_transitions_total",
        &[],
        registry
            .transitions_total
            .load(std::sync::atomic::Ordering::Relaxed),
    );

    out.family(
        "ringlb_ready",
        "gauge",
        "1 while /ready answers 200 (serving, node not failed), 0 otherwise.",
    );
    out.sample(
        "ringlb_ready",
        &[],
        u64::from(registry.readiness.check().is_ok()),
    );

    out.family(
        "ringlb_reloads_total",
        "counter",
        "Configuration reloads (SIGHUP): result=\"ok\" applied, \"failed\" rejected.",
    );
    let ok = registry
        .reloads_ok
        .load(std::sync::atomic::Ordering::Relaxed);
    let failed = registry
        .reloads_failed
        .load(std::sync::atomic::Ordering::Relaxed);
    out.sample("ringlb_reloads_total", &[("result", "ok")], ok);
    out.sample("ringlb_reloads_total", &[("result", "failed")], failed);

    let dropped = ringlb_logging::dropped();
    out.family(
        "ringlb_access_log_dropped_total",
        "counter",
        "Access-log lines dropped because the log queue was full (stderr's reader did not keep up).",
    );
    out.sample("ringlb_access_log_dropped_total", &[], dropped.access);
    out.family(
        "ringlb_log_dropped_total",
        "counter",
        "Other log lines (not the access log) dropped because the log queue was full.",
    );
    out.sample("ringlb_log_dropped_total", &[], dropped.other);
    out.family(
        "ringlb_syslog_dropped_total",
        "counter",
        "Log lines not delivered to the syslog receiver: its queue was full (the receiver did not keep up) or the connection broke with them.",
    );
    out.sample(
        "ringlb_syslog_dropped_total",
        &[],
        ringlb_logging::syslog_dropped(),
    );

    out.text
}

/// Microseconds printed as seconds, exactly (no float rounding): `1234567` → `1.234567`.
struct Seconds(u64);

impl std::fmt::Display for Seconds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{:06}", self.0 / 1_000_000, self.0 % 1_000_000)
    }
}

#[derive(Default)]
struct Exposition {
    text: String,
}

impl Exposition {
    /// The standard `process_*` families; without a reading (no /proc) they are left out.
    fn process(&mut self, p: Option<&process::ProcessStats>) {
        let Some(p) = p else {
            return;
        };
        let gauges: [(&str, &str, u64); 5] = [
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
                p.resident_bytes,
            ),
            (
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes.",
                p.virtual_bytes,
            ),
            (
                "process_open_fds",
                "Number of open file descriptors.",
                p.open_fds,
            ),
            (
                "process_max_fds",
                "Maximum number of open file descriptors (soft RLIMIT_NOFILE).",
                p.max_fds,
            ),
            (
                "process_threads",
                "Number of OS threads in the process.",
                p.threads,
            ),
        ];
        self.family(
            "process_cpu_seconds_total",
            "counter",
            "Total user and system CPU time spent in seconds.",
        );
        self.sample("process_cpu_seconds_total", &[], p.cpu_seconds);
        for (name, help, value) in gauges {
            self.family(name, "gauge", help);
            self.sample(name, &[], value);
        }
        self.family(
            "process_start_time_seconds",
            "gauge",
            "Start time of the process since unix epoch in seconds.",
        );
        self.sample("process_start_time_seconds", &[], p.start_time_seconds);
    }

    fn family(&mut self, name: &str, kind: &str, help: &str) {
        self.text.push_str("# HELP ");
        self.text.push_str(name);
        self.text.push(' ');
        escape_help(help, &mut self.text);
        self.text.push_str("\n# TYPE ");
        self.text.push_str(name);
        self.text.push(' ');
        self.text.push_str(kind);
        self.text.push('\n');
    }

    /// A family with one sample per listener of `views`, labelled `listener`.
    fn per_listener(
        &mut self,
        name: &str,
        kind: &str,
        help: &str,
        views: &[&ListenerView],
        value: impl Fn(&ListenerView) -> u64,
    ) {
        self.family(name, kind, help);
        for v in views {
            self.sample(name, &[("listener", &v.name)], value(v));
        }
    }

    /// A counter family with one sample per listener of `views` and value of `label`.
    fn per_listener_by(
        &mut self,
        name: &str,
        help: &str,
        label: &str,
        views: &[ListenerView],
        values: impl Fn(&ListenerView) -> Vec<(&'static str, u64)>,
    ) {
        self.family(name, "counter", help);
        for v in views {
            for (value, n) in values(v) {
                self.sample(name, &[("listener", &v.name), (label, value)], n);
            }
        }
    }

    /// A family with one sample per backend of every listener of `views`.
    fn per_backend<V: std::fmt::Display>(
        &mut self,
        name: &str,
        kind: &str,
        help: &str,
        views: &[&ListenerView],
        value: impl Fn(&BackendView) -> V,
    ) {
        self.family(name, kind, help);
        for v in views {
            for (listener, b) in v.each_backend() {
                self.sample(
                    name,
                    &[("listener", listener), ("backend", &b.label)],
                    value(b),
                );
            }
        }
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (i, (key, val)) in labels.iter().enumerate() {
                if i > 0 {
                    self.text.push(',');
                }
                self.text.push_str(key);
                self.text.push_str("=\"");
                escape_label_value(val, &mut self.text);
                self.text.push('"');
            }
            self.text.push('}');
        }
        // Writing to a String cannot fail.
        let _ = writeln!(self.text, " {value}");
    }
}

/// Label values: backslash, double quote and line feed are escaped (format 0.0.4).
pub fn escape_label_value(value: &str, out: &mut String) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// HELP text: backslash and line feed are escaped (a double quote is literal there).
fn escape_help(text: &str, out: &mut String) {
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::testing::{listener, registry_with};

    fn escaped(s: &str) -> String {
        let mut out = String::new();
        escape_label_value(s, &mut out);
        out
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escaped(r#"a\b"c"#), r#"a\\b\"c"#);
        assert_eq!(escaped("x\ny"), "x\\ny");
        assert_eq!(escaped("[::1]:80"), "[::1]:80");
    }

    #[test]
    fn seconds_are_exact() {
        assert_eq!(Seconds(0).to_string(), "0.000000");
        assert_eq!(Seconds(1_234_567).to_string(), "1.234567");
        assert_eq!(Seconds(250).to_string(), "0.000250");
    }

    #[test]
    fn latency_buckets_are_cumulative_and_bound_inclusive() {
        let mut h = ringlb_dataplane::stats::new_latency_histogram();
        h.record(100).unwrap(); // exactly on the first bound
        h.record(101).unwrap();
        h.record_n(3_000, 2).unwrap();
        h.record(7_000_000).unwrap(); // beyond the last bound: only +Inf
        let mut b = LatencyBuckets::default();
        b.add(&h);
        assert_eq!(b.count, 5);
        assert_eq!(b.cumulative[0], 1, "le=0.0001");
        assert_eq!(b.cumulative[1], 2, "le=0.00025");
        assert_eq!(b.cumulative[4], 2, "le=0.0025");
        assert_eq!(b.cumulative[5], 4, "le=0.005");
        assert_eq!(b.cumulative[14], 4, "le=5");
        let exact = 100 + 101 + 6_000 + 7_000_000u64;
        let err = b.sum_micros.abs_diff(exact);
        assert!(err <= exact / 1000, "sum {} vs {exact}", b.sum_micros);

        // A second worker adds on top.
        let mut other = ringlb_dataplane::stats::new_latency_histogram();
        other.record(400).unwrap();
        b.add(&other);
        assert_eq!(b.count, 6);
        assert_eq!(b.cumulative[0], 1);
        assert_eq!(b.cumulative[2], 3, "le=0.0005");
        assert!(b.cumulative.windows(2).all(|w| w[0] <= w[1]));
    }

    #[test]
    fn sticky_families_only_for_listeners_with_stickiness() {
        let pay = listener("pay", Protocol::Tcp, &["127.0.0.1:9001"], 2);
        pay.scheduler
            .set_stickiness(Some(ringlb_config::Stickiness {
                key: ringlb_config::StickinessKey::SourceIp,
                table_size: 100,
                expire: std::time::Duration::from_secs(60),
                single_active: false,
            }));
        pay.workers[0].sticky_hits.add(4);
        pay.workers[1].sticky_hits.add(1);
        pay.workers[1].sticky_misses.add(2);
        let plain = listener("plain", Protocol::Tcp, &["127.0.0.1:9002"], 1);
        let text = render(&registry_with(vec![pay, plain]));
        for line in [
            "ringlb_sticky_entries{listener=\"pay\"} 0",
            "ringlb_sticky_table_size{listener=\"pay\"} 104",
            "ringlb_sticky_hits_total{listener=\"pay\"} 5",
            "ringlb_sticky_misses_total{listener=\"pay\"} 2",
            "ringlb_sticky_evictions_total{listener=\"pay\"} 0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in:\n{text}"
            );
        }
        assert!(!text.contains("ringlb_sticky_hits_total{listener=\"plain\"}"));
    }

    #[test]
    fn renders_summed_worker_counters_and_backend_state() {
        let web = listener(
            "web",
            Protocol::Tcp,
            &["127.0.0.1:9001", "127.0.0.1:9002"],
            2,
        );
        web.workers[0].connections.add(3);
        web.workers[1].connections.add(4);
        web.workers[0].bytes_in.add(10);
        web.workers[1].bytes_out.add(20);
        web.workers[1].denied(DenyReason::Limit).add(2);
        web.workers[0].denied(DenyReason::SourceLimit).add(5);
        web.workers[1].source_untracked.add(3);
        let mut h = ringlb_dataplane::stats::new_latency_histogram();
        h.record(800).unwrap();
        web.workers[1].connect_latency.publish(h);
        let snap = web.scheduler.snapshot();
        snap.backends()[1].state.set_up(false);
        snap.backends()[1].state.set_admin_state(AdminState::Maint);
        snap.backends()[0].state.record_connect_failure();
        let _guard = snap.backends()[0].state.acquire();
        let dns = listener("dns", Protocol::Udp, &["127.0.0.1:53"], 1);
        dns.workers[0].udp_datagrams_in.add(5);
        dns.workers[0].udp_sessions_active.add(2);
        let registry = registry_with(vec![dns, web]);
        registry.record_transition("web", "127.0.0.1:9002", false, "down".into());

        let text = render(&registry);
        for line in [
            "ringlb_connections_total{listener=\"web\"} 7",
            "ringlb_bytes_total{listener=\"web\",direction=\"in\"} 10",
            "ringlb_bytes_total{listener=\"web\",direction=\"out\"} 20",
            "ringlb_denied_total{listener=\"web\",reason=\"limit\"} 2",
            "ringlb_denied_total{listener=\"web\",reason=\"not_allowed\"} 0",
            "ringlb_denied_total{listener=\"web\",reason=\"source_limit\"} 5",
            "ringlb_source_table_entries{listener=\"web\"} 0",
            "ringlb_source_table_full_total{listener=\"web\"} 3",
            "ringlb_backend_up{listener=\"web\",backend=\"127.0.0.1:9001\"} 1",
            "ringlb_backend_up{listener=\"web\",backend=\"127.0.0.1:9002\"} 0",
            "ringlb_active_connections{listener=\"web\",backend=\"127.0.0.1:9001\"} 1",
            "ringlb_connect_failures_total{listener=\"web\",backend=\"127.0.0.1:9001\"} 1",
            "ringlb_backend_health_transitions_total{listener=\"web\",backend=\"127.0.0.1:9002\"} 1",
            "ringlb_backend_connect_seconds_bucket{listener=\"web\",le=\"0.0005\"} 0",
            "ringlb_backend_connect_seconds_bucket{listener=\"web\",le=\"0.001\"} 1",
            "ringlb_backend_connect_seconds_bucket{listener=\"web\",le=\"+Inf\"} 1",
            "ringlb_backend_connect_seconds_count{listener=\"web\"} 1",
            "ringlb_udp_datagrams_total{listener=\"dns\",direction=\"in\"} 5",
            "ringlb_udp_sessions{listener=\"dns\"} 2",
            "ringlb_health_transitions_total 1",
            "ringlb_reloads_total{result=\"ok\"} 0",
            "ringlb_backend_admin_state{listener=\"web\",backend=\"127.0.0.1:9001\",state=\"ready\"} 1",
            "ringlb_backend_admin_state{listener=\"web\",backend=\"127.0.0.1:9001\",state=\"drain\"} 0",
            "ringlb_backend_admin_state{listener=\"web\",backend=\"127.0.0.1:9002\",state=\"maint\"} 1",
            "ringlb_backend_admin_state{listener=\"web\",backend=\"127.0.0.1:9002\",state=\"ready\"} 0",
            "ringlb_ready 0",
            "ringlb_backend_priority{listener=\"web\",backend=\"127.0.0.1:9001\"} 0",
            "ringlb_access_log_dropped_total 0",
            "ringlb_log_dropped_total 0",
            "ringlb_syslog_dropped_total 0",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in:\n{text}");
        }
        let build = format!(
            "ringlb_build_info{{version=\"{}\",commit=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION"),
            option_env!("RINGLB_GIT_COMMIT").unwrap_or("unknown")
        );
        assert!(text.lines().any(|l| l == build), "{text}");
        for name in [
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_virtual_memory_bytes",
            "process_open_fds",
            "process_max_fds",
            "process_start_time_seconds",
            "process_threads",
        ] {
            let value: f64 = text
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{name} ")))
                .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
                .parse()
                .unwrap();
            assert!(value >= 0.0, "{name} {value}");
        }
        // Protocol-specific families only for listeners of that protocol.
        assert!(
            !text.contains("ringlb_connections_total{listener=\"dns\"}"),
            "{text}"
        );
        assert!(
            !text.contains("ringlb_udp_sessions{listener=\"web\"}"),
            "{text}"
        );
        assert!(
            !text.contains("ringlb_source_table_entries{listener=\"dns\"}"),
            "{text}"
        );
        // Every family has HELP then TYPE, once, and its samples follow contiguously.
        let mut seen = std::collections::HashSet::new();
        let mut current = String::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let name = rest.split(' ').next().unwrap().to_string();
                assert!(seen.insert(name.clone()), "family {name} written twice");
                current = name;
            } else if !line.starts_with('#') {
                assert!(
                    line.starts_with(&current),
                    "{line:?} outside its family {current}"
                );
            }
        }
    }

    #[test]
    fn hostile_labels_stay_on_one_line() {
        let odd = listener("we\"ird\\name\nx", Protocol::Tcp, &["127.0.0.1:1"], 1);
        let registry = registry_with(vec![odd]);
        let text = render(&registry);
        assert!(
            text.lines()
                .any(|l| l == r#"ringlb_connections_total{listener="we\"ird\\name\nx"} 0"#),
            "{text}"
        );
    }
}
