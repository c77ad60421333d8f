//! The admin endpoint of the real binary: `/metrics` parsed by a strict Prometheus
//! text-format parser and followed as traffic flows, `/status` against its schema, the HTTP
//! edges (404, 405, 431, 408), a bind error, and slow admin clients that must stall
//! neither forwarding nor other scrapes.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use openmetrics_parser::prometheus::parse_prometheus;
use openmetrics_parser::{MetricsExposition, PrometheusType, PrometheusValue};
use ringlb_testkit::*;
use serde_json::Value;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_ringlb"))
}

const WAIT: Duration = Duration::from_secs(15);

/// One raw request on a fresh connection: (status, headers lower-cased, body).
fn raw_request(addr: SocketAddr, request: &[u8]) -> (u16, HashMap<String, String>, String) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("no end of headers");
    let mut lines = head.lines();
    let status = lines.next().unwrap()[9..12].parse().unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (status, headers, body.to_string())
}

/// A parsed scrape: sample values by (metric name, sorted label pairs).
struct Scrape {
    text: String,
    exposition: MetricsExposition<PrometheusType, PrometheusValue>,
}

impl Scrape {
    fn take(lb: &Ringlb) -> Scrape {
        let (status, headers, text) = raw_request(
            lb.admin_addr(),
            b"GET /metrics HTTP/1.1\r\nHost: ringlb\r\nAccept: text/plain\r\n\r\n",
        );
        assert_eq!(status, 200, "{text}");
        assert_eq!(
            headers.get("content-type").map(String::as_str),
            Some("text/plain; version=0.0.4; charset=utf-8")
        );
        let exposition = parse_prometheus(&text)
            .unwrap_or_else(|e| panic!("/metrics is not valid Prometheus text ({e:?}):\n{text}"));
        Scrape { text, exposition }
    }

    fn family_type(&self, name: &str) -> PrometheusType {
        self.exposition
            .families
            .get(name)
            .unwrap_or_else(|| panic!("no family {name} in:\n{}", self.text))
            .family_type
            .clone()
    }

    /// The value of a counter or gauge sample whose labels are exactly `labels`.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let family = self
            .exposition
            .families
            .get(name)
            .unwrap_or_else(|| panic!("no family {name} in:\n{}", self.text));
        let names = family.get_label_names();
        assert_eq!(
            names.len(),
            labels.len(),
            "{name} has labels {names:?}, asked {labels:?}"
        );
        let values: Vec<String> = names
            .iter()
            .map(|n| {
                labels
                    .iter()
                    .find(|(k, _)| k == n)
                    .unwrap_or_else(|| panic!("{name}: label {n} not given"))
                    .1
                    .to_string()
            })
            .collect();
        let sample = family
            .get_sample_by_label_values(&values)
            .unwrap_or_else(|| panic!("no sample {name}{labels:?} in:\n{}", self.text));
        match &sample.value {
            PrometheusValue::Counter(c) => c.value.as_f64(),
            PrometheusValue::Gauge(g) => g.as_f64(),
            PrometheusValue::Unknown(u) => u.as_f64(),
            other => panic!("{name}: not a counter or gauge: {other:?}"),
        }
    }

    /// (cumulative buckets as (le, count), sum, count) of a histogram series.
    fn histogram(&self, name: &str, listener: &str) -> (Vec<(f64, f64)>, f64, f64) {
        let family = self
            .exposition
            .families
            .get(name)
            .unwrap_or_else(|| panic!("no family {name} in:\n{}", self.text));
        let sample = family
            .get_sample_by_label_values(&[listener.to_string()])
            .unwrap_or_else(|| panic!("no {name}{{listener={listener}}} in:\n{}", self.text));
        match &sample.value {
            PrometheusValue::Histogram(h) => (
                h.buckets
                    .iter()
                    .map(|b| (b.upper_bound, b.count.as_f64()))
                    .collect(),
                h.sum.as_ref().map_or(f64::NAN, |s| s.as_f64()),
                h.count.map_or(f64::NAN, |c| c as f64),
            ),
            other => panic!("{name}: not a histogram: {other:?}"),
        }
    }

    /// Every counter sample as (name + labels) → value, for monotonicity checks.
    fn counters(&self) -> HashMap<String, f64> {
        let mut out = HashMap::new();
        for (name, family) in &self.exposition.families {
            for sample in family.iter_samples() {
                if let PrometheusValue::Counter(c) = &sample.value {
                    let labels: Vec<String> = sample
                        .get_labelset()
                        .expect("labels match the family")
                        .iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect();
                    out.insert(format!("{name}{labels:?}"), c.value.as_f64());
                }
            }
        }
        out
    }
}

/// `promtool check metrics` (Prometheus' own parser and linter) when it is installed.
fn promtool_check(text: &str) {
    skip_unless!(
        Requirement::Command("promtool"),
        have_command("promtool"),
        "promtool not installed: /metrics checked by openmetrics-parser only"
    );
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Admin on `admin`, one TCP listener "web" on an ephemeral port in front of `backend`.
fn one_listener(admin: &str, backend: SocketAddr) -> String {
    format!(
        "admin: {admin}
listeners:
  - name: web
    bind: 127.0.0.1:0
    backends:
      - addr: {backend}
"
    )
}

fn echo_round_trip(addr: SocketAddr, payload: &[u8]) -> Duration {
    let started = Instant::now();
    let mut c = connect(addr);
    assert_echo(&mut c, payload);
    started.elapsed()
}

#[test]
fn metrics_follow_traffic() {
    skip_unless!(
        Requirement::IoUring,
        io_uring_available(),
        "io_uring is not available here"
    );
    // Tagged: each sends "a\n" / "b\n" first, so bytes out differ from bytes in.
    let a = EchoBackend::tagged("a");
    let b = EchoBackend::tagged("b");
    let refused = refused_addr();
    let c = EchoBackend::start();
    let down = refused_addr();
    let yaml = format!(
        "workers: 2
admin: 127.0.0.1:0
listeners:
  - name: web
    bind: 127.0.0.1:0
    algorithm: round_robin
    connect_attempts: 3
    backends:
      - addr: {a}
        weight: 3
      - addr: {b}
      - addr: {refused}
  - name: closed
    bind: 127.0.0.1:0
    allow: [10.255.0.0/16]
    backends:
      - addr: {c}
  - name: checked
    bind: 127.0.0.1:0
    health_check: {{interval: 100ms, timeout: 100ms, rise: 1, fall: 1}}
    backends:
      - addr: {c}
      - addr: {down}
",
        a = a.addr(),
        b = b.addr(),
        c = c.addr(),
    );
    let lb = Ringlb::start(bin(), &yaml);
    // Listeners log `listening on` before the control plane publishes them to the registry
    // the admin endpoint reads; `ready:` comes after.
    assert!(
        lb.wait_for_log("ready:", WAIT),
        "never ready:\n{}",
        lb.logs().join("\n")
    );
    let web = lb.listener_addr("web");
    let (a, b, refused, down) = (
        a.addr().to_string(),
        b.addr().to_string(),
        refused.to_string(),
        down.to_string(),
    );

    let before = Scrape::take(&lb);
    promtool_check(&before.text);
    for (name, kind) in [
        ("ringlb_connections_total", PrometheusType::Counter),
        ("ringlb_active_connections", PrometheusType::Gauge),
        ("ringlb_backend_up", PrometheusType::Gauge),
        ("ringlb_connect_failures_total", PrometheusType::Counter),
        ("ringlb_denied_total", PrometheusType::Counter),
        ("ringlb_bytes_total", PrometheusType::Counter),
        ("ringlb_backend_connect_seconds", PrometheusType::Histogram),
        ("ringlb_listener_active_connections", PrometheusType::Gauge),
        ("ringlb_health_transitions_total", PrometheusType::Counter),
        ("ringlb_reloads_total", PrometheusType::Counter),
        ("ringlb_splice_switches_total", PrometheusType::Counter),
    ] {
        assert_eq!(before.family_type(name), kind, "{name}");
    }
    assert_eq!(
        before.value("ringlb_connections_total", &[("listener", "web")]),
        0.0
    );
    for backend in [&a, &b, &refused] {
        let labels = [("listener", "web"), ("backend", backend.as_str())];
        assert_eq!(before.value("ringlb_backend_up", &labels), 1.0, "{backend}");
        assert_eq!(
            before.value("ringlb_active_connections", &labels),
            0.0,
            "{backend}"
        );
    }
    assert_eq!(
        before.value("ringlb_reloads_total", &[("result", "ok")]),
        0.0
    );

    // Six connections (tag line + five echoed bytes each), two of them kept open.
    let mut open = Vec::new();
    for i in 0..6 {
        let mut conn = connect(web);
        let tag = read_line_tag(&mut conn);
        assert!(tag == "a" || tag == "b", "tag {tag:?}");
        assert_echo(&mut conn, b"hello");
        if i < 2 {
            open.push(conn);
        }
    }
    // Refused by the allow list. Its reset can beat connect() back to a descheduled test
    // thread on a loaded machine: a connect that fails with it was refused all the same.
    match connect_with_timeout(lb.listener_addr("closed"), Duration::from_secs(5)) {
        Ok(mut denied) => {
            let mut buf = [0u8; 1];
            assert!(
                matches!(denied.read(&mut buf), Ok(0) | Err(_)),
                "denied client got data"
            );
        }
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("connect to the closed listener: {e}"),
    }

    let mut now = Scrape::take(&lb);
    let settled = wait_until(WAIT, || {
        now = Scrape::take(&lb);
        now.value("ringlb_connections_total", &[("listener", "web")]) == 6.0
            && now.value("ringlb_bytes_total", &[("listener", "web"), ("direction", "in")]) == 30.0
            && now.value("ringlb_bytes_total", &[("listener", "web"), ("direction", "out")]) == 42.0
            && now.value("ringlb_listener_active_connections", &[("listener", "web")]) == 2.0
            && now.value("ringlb_denied_total", &[("listener", "closed"), ("reason", "not_allowed")]) == 1.0
            // Latency histograms are published by the workers about once a second.
            && now.histogram("ringlb_backend_connect_seconds", "web").2 == 6.0
            && now.value("ringlb_backend_up", &[("listener", "checked"), ("backend", &down)]) == 0.0
    });
    assert!(settled, "metrics did not follow the traffic:\n{}", now.text);
    promtool_check(&now.text);

    let per_backend: f64 = [&a, &b, &refused]
        .iter()
        .map(|x| {
            now.value(
                "ringlb_active_connections",
                &[("listener", "web"), ("backend", x)],
            )
        })
        .sum();
    assert_eq!(per_backend, 2.0, "{}", now.text);
    assert_eq!(
        now.value(
            "ringlb_active_connections",
            &[("listener", "web"), ("backend", &refused)]
        ),
        0.0
    );
    // Round robin over three backends picks the refused one at least twice in six; each
    // such pick is a connect failure followed by a retry on the next backend.
    assert!(
        now.value(
            "ringlb_connect_failures_total",
            &[("listener", "web"), ("backend", &refused)]
        ) >= 1.0,
        "{}",
        now.text
    );
    assert_eq!(
        now.value(
            "ringlb_connect_failures_total",
            &[("listener", "web"), ("backend", &a)]
        ),
        0.0
    );
    assert!(now.value("ringlb_health_transitions_total", &[]) >= 1.0);
    assert!(
        now.value(
            "ringlb_backend_health_transitions_total",
            &[("listener", "checked"), ("backend", &down)]
        ) >= 1.0
    );
    for reason in ["limit", "no_backend", "resources"] {
        assert_eq!(
            now.value(
                "ringlb_denied_total",
                &[("listener", "closed"), ("reason", reason)]
            ),
            0.0
        );
    }

    let (buckets, sum, count) = now.histogram("ringlb_backend_connect_seconds", "web");
    assert_eq!(count, 6.0);
    assert!(
        buckets
            .windows(2)
            .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1),
        "{buckets:?}"
    );
    let (last_le, last_n) = *buckets.last().unwrap();
    assert!(last_le.is_infinite() && last_n == count, "{buckets:?}");
    assert!(buckets.iter().any(|(le, _)| *le == 0.001), "{buckets:?}");
    // Loopback connects: well under a second each, and not zero in total.
    assert!(sum > 0.0 && sum < 6.0, "sum {sum}");

    // Counters never go down between scrapes.
    let earlier = before.counters();
    for (series, value) in now.counters() {
        if let Some(old) = earlier.get(&series) {
            assert!(value >= *old, "{series} went from {old} to {value}");
        }
    }

    drop(open);
    let mut last = Scrape::take(&lb);
    assert!(
        wait_until(WAIT, || {
            last = Scrape::take(&lb);
            last.value("ringlb_listener_active_connections", &[("listener", "web")]) == 0.0
                && [&a, &b].iter().all(|x| {
                    last.value(
                        "ringlb_active_connections",
                        &[("listener", "web"), ("backend", x)],
                    ) == 0.0
                })
        }),
        "active gauges did not drop to 0:\n{}",
        last.text
    );
    assert_eq!(
        last.value("ringlb_connections_total", &[("listener", "web")]),
        6.0
    );
}

#[test]
fn status_matches_schema() {
    skip_unless!(
        Requirement::IoUring,
        io_uring_available(),
        "io_uring is not available here"
    );
    let a = EchoBackend::start();
    let b = EchoBackend::start();
    let down = refused_addr();
    let yaml = format!(
        "admin: 127.0.0.1:0
listeners:
  - name: web
    bind: 127.0.0.1:0
    algorithm: least_connections
    health_check: {{interval: 100ms, timeout: 100ms, rise: 1, fall: 1}}
    backends:
      - addr: {a}
        weight: 3
      - addr: {down}
      - addr: {b}
        backup: true
",
        a = a.addr(),
        b = b.addr(),
    );
    let lb = Ringlb::start(bin(), &yaml);
    let web = lb.listener_addr("web");
    let started_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let mut held = connect(web);
    assert_echo(&mut held, b"x");

    let get_status = || {
        let (status, headers, body) = raw_request(
            lb.admin_addr(),
            b"GET /status HTTP/1.1\r\nHost: ringlb\r\n\r\n",
        );
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            headers.get("content-type").map(String::as_str),
            Some("application/json")
        );
        serde_json::from_str::<Value>(&body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
    };
    let mut v = get_status();
    assert!(
        wait_until(WAIT, || {
            v = get_status();
            // The prober flips the flag, then the control thread records the transition.
            v["listeners"][0]["backends"][1]["up"] == false
                && v["listeners"][0]["backends"][1]["last_transition"].is_object()
        }),
        "the refused backend never went down: {v}"
    );

    let listeners = v["listeners"].as_array().expect("listeners is an array");
    assert_eq!(listeners.len(), 1);
    let l = &listeners[0];
    assert_eq!(l["name"], "web");
    assert_eq!(l["bind"], web.to_string());
    assert_eq!(l["protocol"], "tcp");
    assert_eq!(l["algorithm"], "least_connections");
    assert_eq!(l["active_connections"], 1);
    let backends = l["backends"].as_array().expect("backends is an array");
    assert_eq!(backends.len(), 3);
    for backend in backends {
        for (key, ok) in [
            ("addr", backend["addr"].is_string()),
            ("weight", backend["weight"].is_u64()),
            ("backup", backend["backup"].is_boolean()),
            ("up", backend["up"].is_boolean()),
            ("active_connections", backend["active_connections"].is_u64()),
            ("connect_failures", backend["connect_failures"].is_u64()),
            (
                "last_transition",
                backend["last_transition"].is_null() || backend["last_transition"].is_object(),
            ),
        ] {
            assert!(ok, "backend {key} missing or mistyped: {backend}");
        }
    }
    assert_eq!(backends[0]["addr"], a.addr().to_string());
    assert_eq!(backends[0]["weight"], 3);
    assert_eq!(backends[0]["backup"], false);
    assert_eq!(backends[0]["up"], true);
    assert_eq!(backends[0]["active_connections"], 1);
    assert_eq!(backends[0]["last_transition"], Value::Null);
    assert_eq!(backends[1]["addr"], down.to_string());
    assert_eq!(backends[1]["up"], false);
    let t = &backends[1]["last_transition"];
    assert_eq!(t["up"], false, "{t}");
    assert!(
        t["reason"]
            .as_str()
            .is_some_and(|r| r.contains(&down.to_string())),
        "{t}"
    );
    let at = t["at_unix_ms"].as_u64().expect("at_unix_ms");
    assert!(
        at + 1_000 >= started_ms && at < started_ms + 60_000,
        "at {at}, started {started_ms}"
    );
    assert_eq!(backends[2]["backup"], true);
    assert_eq!(backends[2]["weight"], 1);

    drop(held);
    assert!(wait_until(WAIT, || get_status()["listeners"][0]
        ["active_connections"]
        == 0));
}

#[test]
fn http_edges() {
    skip_unless!(
        Requirement::IoUring,
        io_uring_available(),
        "io_uring is not available here"
    );
    let a = EchoBackend::start();
    let yaml = one_listener("127.0.0.1:0", a.addr());
    let lb = Ringlb::start(bin(), &yaml);
    let admin = lb.admin_addr();
    assert_eq!(admin.ip().to_string(), "127.0.0.1");
    assert_ne!(admin.port(), 0);

    assert_eq!(
        raw_request(admin, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").0,
        404
    );
    assert_eq!(
        raw_request(admin, b"GET /metrics/x HTTP/1.0\r\n\r\n").0,
        404
    );
    let (status, headers, _) = raw_request(
        admin,
        b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
    );
    assert_eq!(status, 405);
    assert_eq!(headers.get("allow").map(String::as_str), Some("GET"));
    assert_eq!(
        raw_request(admin, b"DELETE /status HTTP/1.1\r\n\r\n").0,
        405
    );
    assert_eq!(
        raw_request(admin, b"GET /metrics?x=1 HTTP/1.0\r\n\r\n").0,
        200
    );
    assert_eq!(raw_request(admin, b"NOT HTTP AT ALL\r\n\r\n").0, 400);
    let huge = format!(
        "GET /metrics HTTP/1.1\r\nX-Pad: {}\r\n\r\n",
        "a".repeat(16 * 1024)
    );
    assert_eq!(raw_request(admin, huge.as_bytes()).0, 431);
    // HTTP/1.0 client of the testkit still works.
    assert_eq!(lb.http_get("/status").0, 200);
}

#[test]
fn slow_admin_clients_stall_nothing() {
    skip_unless!(
        Requirement::IoUring,
        io_uring_available(),
        "io_uring is not available here"
    );
    let a = EchoBackend::start();
    let yaml = one_listener("127.0.0.1:0", a.addr());
    let lb = Ringlb::start(bin(), &yaml);
    let admin = lb.admin_addr();
    let web = lb.listener_addr("web");

    // Clients that send half a request and hold; one that connects and sends nothing.
    let started = Instant::now();
    let mut holders: Vec<TcpStream> = (0..4)
        .map(|_| {
            let mut s = TcpStream::connect(admin).unwrap();
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
                .unwrap();
            s
        })
        .collect();
    holders.push(TcpStream::connect(admin).unwrap());

    // While they hold: forwarding and other scrapes are served at once, well before the
    // admin head timeout (2 s) answers the slow clients.
    for _ in 0..5 {
        let t = echo_round_trip(web, b"ping");
        assert!(
            t < Duration::from_secs(1),
            "echo took {t:?} with slow admin clients"
        );
        let t0 = Instant::now();
        let (status, _, body) = raw_request(admin, b"GET /metrics HTTP/1.1\r\n\r\n");
        assert_eq!(status, 200);
        assert!(body.contains("ringlb_connections_total"), "{body}");
        let t = t0.elapsed();
        assert!(
            t < Duration::from_secs(1),
            "scrape took {t:?} with slow admin clients"
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "the checks above were not timely"
    );

    // The slow clients are answered 408 and closed once their time is up.
    for mut s in holders {
        s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        let mut raw = String::new();
        s.read_to_string(&mut raw).unwrap();
        assert!(raw.starts_with("HTTP/1.1 408 "), "{raw:?}");
    }
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(2) && waited < Duration::from_secs(12),
        "408 after {waited:?}"
    );
}

#[test]
fn admin_port_in_use_fails_the_start() {
    skip_unless!(
        Requirement::IoUring,
        io_uring_available(),
        "io_uring is not available here"
    );
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap();
    let a = EchoBackend::start();
    let yaml = one_listener(&port.to_string(), a.addr());
    let (code, out) = Ringlb::run_to_exit(bin(), &yaml, &[], Duration::from_secs(20));
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!("admin endpoint: cannot bind {port}")),
        "{out}"
    );
}
