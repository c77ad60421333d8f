//! The monitoring kit and the process metrics against a running `ringlb`: every metric
//! name contrib/'s Prometheus rules (and their unit tests) and Grafana dashboard use is
//! one `/metrics` serves, and the `process_*` figures match what /proc says about the
//! process (open file descriptors follow connections).

use std::collections::BTreeSet;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ringlb_testkit::*;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_ringlb"))
}

const WAIT: Duration = Duration::from_secs(20);

fn contrib(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../contrib")
        .join(rel)
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// Every `ringlb_…` and `process_…` metric name in `text`.
fn referenced_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for prefix in ["ringlb_", "process_"] {
        let mut from = 0;
        while let Some(at) = text[from..].find(prefix) {
            let start = from + at;
            let end = text[start..]
                .find(|c: char| !is_name_char(c))
                .map_or(text.len(), |n| start + n);
            let preceded = text[..start].chars().next_back().is_some_and(is_name_char);
            // `process_*` in prose is a pattern, not a name.
            if !preceded && end > start + prefix.len() {
                names.insert(text[start..end].to_string());
            }
            from = end.max(start + prefix.len());
        }
    }
    names
}

/// What a query may name: every sample name, and the family name of every family that
/// is not a histogram or summary (their samples have `_bucket`, `_sum`, `_count`).
fn exposed_names(exposition: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in exposition.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            if let (Some(name), Some(kind)) = (parts.next(), parts.next()) {
                if kind != "histogram" && kind != "summary" {
                    names.insert(name.to_string());
                }
            }
        } else if !line.starts_with('#') && !line.is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            names.insert(line[..end].to_string());
        }
    }
    names
}

#[test]
fn name_scanning() {
    let names = referenced_names(
        "expr: rate(ringlb_denied_total{reason=\"x\"}[5m]) / process_max_fds\n\
         alert: RinglbBackendDown  # not_ringlb_x is not a name\n\
         \"uid\": \"ringlb-overview\", ringlb_backend_connect_seconds_bucket, process_* series",
    );
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        [
            "process_max_fds",
            "ringlb_backend_connect_seconds_bucket",
            "ringlb_denied_total"
        ]
    );
    let exposed = exposed_names(
        "# TYPE h histogram\nh_bucket{le=\"1\"} 0\nh_count 0\n# TYPE g gauge\n# TYPE c counter\nc 1\n",
    );
    assert_eq!(
        exposed.into_iter().collect::<Vec<_>>(),
        ["c", "g", "h_bucket", "h_count"]
    );
}

#[test]
fn every_metric_the_monitoring_kit_uses_exists() {
    let primary = EchoBackend::start();
    let backup = EchoBackend::start();
    let dns = UdpEchoBackend::start();
    let yaml = format!(
        "admin: 127.0.0.1:0
workers: 2
listeners:
  - name: pay
    bind: 127.0.0.1:0
    algorithm: least_latency
    per_source: {{max_connections: 100}}
    health_check: {{interval: 1s, timeout: 500ms}}
    backends:
      - addr: {}
      - addr: {}
        priority: 1
  - name: dns
    bind: 127.0.0.1:0
    protocol: udp
    backends:
      - addr: {}
",
        primary.addr(),
        backup.addr(),
        dns.addr()
    );
    let lb = Ringlb::start(bin(), &yaml);
    let mut c = connect(lb.listener_addr("pay"));
    assert_echo(&mut c, b"ping");
    let sock = udp_client();
    udp_roundtrip(&sock, lb.listener_addr("dns"), b"q").unwrap();
    let (status, exposition) = lb.http_get("/metrics");
    assert_eq!(status, 200, "{exposition}");
    let exposed = exposed_names(&exposition);

    let files = [
        "prometheus/ringlb.rules.yml",
        "prometheus/ringlb.rules.test.yml",
        "grafana/ringlb.json",
    ];
    let mut all = BTreeSet::new();
    for rel in files {
        let path = contrib(rel);
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        let names = referenced_names(&text);
        let missing: Vec<&String> = names.difference(&exposed).collect();
        assert!(
            missing.is_empty(),
            "contrib/{rel} uses metrics ringlb does not serve: {missing:?}\n/metrics:\n{exposition}"
        );
        all.extend(names);
    }
    // The scan found the kit's names at all (a broken scan would pass vacuously).
    for name in [
        "ringlb_backend_up",
        "ringlb_backend_priority_in_use",
        "ringlb_denied_total",
        "ringlb_access_log_dropped_total",
        "ringlb_backend_connect_seconds_bucket",
        "process_open_fds",
        "process_max_fds",
    ] {
        assert!(all.contains(name), "{name} not found in contrib/: {all:?}");
    }
    eprintln!("contrib/ uses {} metric names, all served", all.len());
}

fn proc_soft_nofile(pid: u32) -> f64 {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no soft NOFILE in {limits}"))
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

#[test]
fn process_metrics_describe_the_process() {
    let backend = EchoBackend::start();
    let yaml = one_listener_yaml(
        "admin: 127.0.0.1:0\nworkers: 2\n",
        "web",
        "127.0.0.1:0",
        "",
        &[backend.addr()],
    );
    let spawned_at = unix_now();
    let lb = Ringlb::start(bin(), &yaml);
    let m = |name: &str| {
        lb.metric(name)
            .unwrap_or_else(|| panic!("no {name} in /metrics"))
    };

    let version = format!(
        "ringlb_build_info{{version=\"{}\",commit=\"{}\"}}",
        env!("CARGO_PKG_VERSION"),
        option_env!("RINGLB_GIT_COMMIT").unwrap_or("unknown")
    );
    assert_eq!(lb.metric(&version), Some(1.0), "{version}");

    let start = m("process_start_time_seconds");
    // /proc/stat's boot time has whole seconds, so allow a couple either way.
    assert!(
        (spawned_at - 2.0..=unix_now() + 2.0).contains(&start),
        "started at {start}, spawned at {spawned_at}"
    );
    assert_eq!(m("process_max_fds"), proc_soft_nofile(lb.pid()));
    let threads = m("process_threads");
    // Two workers, control, signals, admin, prober, log writer, trim.
    assert!(threads >= 7.0, "{threads} threads");
    let rss = m("process_resident_memory_bytes");
    let vm_rss = (lb.rss_kib() * 1024) as f64;
    assert!(
        rss > vm_rss / 2.0 && rss < vm_rss * 2.0,
        "{rss} against VmRSS {vm_rss}"
    );
    assert!(m("process_virtual_memory_bytes") >= rss);
    let cpu = m("process_cpu_seconds_total");
    assert!(cpu >= 0.0);

    // Each relayed connection holds two descriptors: the client's and the backend's.
    let before = m("process_open_fds");
    let n = 50;
    let addr = lb.listener_addr("web");
    let held: Vec<TcpStream> = (0..n)
        .map(|_| {
            let mut c = connect(addr);
            assert_echo(&mut c, b"x");
            c
        })
        .collect();
    let active = "ringlb_listener_active_connections{listener=\"web\"}";
    assert!(wait_until(WAIT, || lb.metric(active) == Some(n as f64)));
    let during = m("process_open_fds");
    assert!(
        during >= before + 2.0 * n as f64,
        "open fds {before} → {during} with {n} connections"
    );
    drop(held);
    assert!(wait_until(WAIT, || lb.metric(active) == Some(0.0)));
    assert!(
        wait_until(WAIT, || m("process_open_fds") < during),
        "open fds stay at {during} after the connections closed"
    );
    assert!(m("process_cpu_seconds_total") >= cpu);
}
