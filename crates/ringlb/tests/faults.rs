//! Faults a hostile review found, each on real sockets:
//! - out of local ports toward a backend: a local error (`reason="resources"`, a log line
//!   with the remedy), never the backend's failure; `source:` widens the port space;
//! - a lost SYN with a single eligible backend: retried on that backend, and the default
//!   `connect_timeout` outlasts two SYN retransmissions; a connect that times out is
//!   denied as `connect_timeout` with the time it really took;
//! - the admin endpoint cannot be held by idle or slow clients.
//!
//! The port and SYN tests run in a network namespace of their own (its own port range,
//! its own nftables): they need root, `ip`, `sysctl` and, for the SYN tests, `nft`, and
//! print `SKIPPED: <reason>` without them.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use ringlb_testkit::*;
use socket2::{Domain, Socket, Type};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_ringlb"))
}

const WAIT: Duration = Duration::from_secs(20);
const LOG_DEBUG_CONNECTS: &str = "info,ringlb_dataplane::tcp=debug";

// ---------------------------------------------------------------- helpers

/// The value of `series` (name with labels, as printed) in a Prometheus text body.
fn sample(body: &str, series: &str) -> Option<f64> {
    body.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

fn metric(lb: &Ringlb, series: &str) -> f64 {
    let (status, body) = lb.http_get("/metrics");
    assert_eq!(status, 200, "GET /metrics: {body}");
    sample(&body, series).unwrap_or_else(|| panic!("no {series} in:\n{body}"))
}

/// The first log line containing `needle`, waiting for it up to [`WAIT`].
fn first_line(lb: &Ringlb, needle: &str) -> String {
    assert!(
        lb.wait_for_log(needle, WAIT),
        "no log line contains {needle:?}"
    );
    lb.logs()
        .into_iter()
        .find(|l| l.contains(needle))
        .unwrap_or_default()
}

/// A client connection from 127.0.0.1:`port`: an explicit port, so clients never take
/// one of the few ephemeral ports a port-exhaustion test leaves.
fn client_from_port(port: u16, to: SocketAddr) -> io::Result<TcpStream> {
    let s = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    s.bind(&SocketAddr::from(([127, 0, 0, 1], port)).into())?;
    s.connect_timeout(&to.into(), Duration::from_secs(5))?;
    let s: TcpStream = s.into();
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(s)
}

/// Whether ringlb relays this connection to an echo backend (a denied one is reset).
fn echoes(mut s: &TcpStream) -> bool {
    let mut back = [0u8; 4];
    s.write_all(b"ping").is_ok() && s.read_exact(&mut back).is_ok() && &back == b"ping"
}

/// Opens `n` clients from ports `first_port..` and keeps those that are served open.
fn hold_clients(to: SocketAddr, first_port: u16, n: u16) -> (Vec<TcpStream>, usize) {
    let mut served = Vec::new();
    let mut denied = 0;
    for k in 0..n {
        match client_from_port(first_port + k, to) {
            Ok(s) if echoes(&s) => served.push(s),
            Ok(_) => denied += 1,
            // The reset can beat connect(2)'s own completion.
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => denied += 1,
            Err(e) => panic!("client from port {}: {e}", first_port + k),
        }
    }
    (served, denied)
}

// ---------------------------------------------------------------- 1. local ports

/// With 10 ephemeral ports (a namespace's `ip_local_port_range` of 40000–40009), ringlb
/// runs out of source ports toward a healthy backend. The clients beyond that are
/// denied as `resources`, a log line names the cause and the remedy, and the backend is
/// not blamed: no connect failure, not marked down even with `fall: 1` (the prober's own
/// checks, out of ports too, are skipped). A listener with `source:` of two addresses has
/// two port spaces toward its backend and serves more clients at once.
#[test]
fn out_of_local_ports_is_not_the_backends_fault() {
    let Some(ns) = netns_for_test(module_path!(), &["ip", "sysctl"]) else {
        return;
    };
    ns.run(|| {
        let one = EchoBackend::start();
        let two = EchoBackend::start();
        let yaml = format!(
            "admin: 127.0.0.1:0\nworkers: 1\naccess_log: true\nlisteners:\n\
             \x20 - name: one\n    bind: 127.0.0.1:0\n\
             \x20   health_check: {{interval: 100ms, timeout: 100ms, rise: 1, fall: 1}}\n\
             \x20   backends: [{{addr: \"{}\"}}]\n\
             \x20 - name: two\n    bind: 127.0.0.1:0\n    source: [127.0.0.2, 127.0.0.3]\n\
             \x20   backends: [{{addr: \"{}\"}}]\n",
            one.addr(),
            two.addr()
        );
        let lb = Ringlb::start(bin(), &yaml);
        // Narrowed only now: the sockets bound with port 0 above took ports outside it.
        ns.exec(
            &["sysctl", "-w", "net.ipv4.ip_local_port_range=40000 40009"],
            None,
        )
        .unwrap_or_else(|e| panic!("{e}"));

        let (held_one, denied_one) = hold_clients(lb.listener_addr("one"), 50_000, 20);
        eprintln!(
            "one source address: {} served, {denied_one} denied",
            held_one.len()
        );
        assert!(
            !held_one.is_empty() && held_one.len() <= 10,
            "10 ports: {} served",
            held_one.len()
        );
        assert!(denied_one >= 10, "only {denied_one} denied");
        let cause = first_line(&lb, "no free local port toward");
        assert!(
            cause.contains("ip_local_port_range") && cause.contains("source"),
            "the line gives no remedy: {cause}"
        );
        // The prober ran while the ports were gone, and skipped instead of failing.
        assert!(
            lb.wait_for_log("check(s) skipped, cannot open a probe socket", WAIT),
            "the prober never hit the port limit"
        );
        let label = one.addr().to_string();
        let l = |name: &str, extra: &str| format!("{name}{{listener=\"one\"{extra}}}");
        let backend = format!(",backend=\"{label}\"");
        assert_eq!(
            metric(&lb, &l("ringlb_denied_total", ",reason=\"resources\"")),
            denied_one as f64
        );
        assert_eq!(
            metric(&lb, &l("ringlb_denied_total", ",reason=\"no_backend\"")),
            0.0
        );
        assert_eq!(
            metric(&lb, &l("ringlb_connect_failures_total", &backend)),
            0.0
        );
        assert_eq!(metric(&lb, &l("ringlb_backend_up", &backend)), 1.0);
        assert_eq!(lb.count_log("backend down"), 0, "the backend was blamed");
        assert!(
            wait_until(WAIT, || lb.count_log("end=denied_resources") == denied_one),
            "{:#?}",
            lb.logs()
        );
        assert_eq!(lb.count_log("end=denied_no_backend"), 0);

        let (held_two, denied_two) = hold_clients(lb.listener_addr("two"), 51_000, 30);
        eprintln!(
            "two source addresses: {} served, {denied_two} denied",
            held_two.len()
        );
        assert!(
            held_two.len() > held_one.len() && held_two.len() <= 20,
            "two source addresses served {} at once, one served {}",
            held_two.len(),
            held_one.len()
        );
        assert_eq!(
            metric(
                &lb,
                &format!(
                    "ringlb_connect_failures_total{{listener=\"two\",backend=\"{}\"}}",
                    two.addr()
                )
            ),
            0.0
        );
    });
}

// ---------------------------------------------------------------- 2. lost SYNs

/// Drops the first SYNs to `port` in the namespace: an nftables quota of `bytes` (a SYN
/// of this kernel is 60 bytes: 20 IP + 20 TCP + 20 options; the quota matches while
/// the bytes seen, this packet included, stay below it). [`dropped`] counts what it hit.
fn drop_first_syns(ns: &Netns, port: u16, bytes: u32) {
    ns.nft_drop(
        "ringlb_faults",
        &[format!(
            "tcp dport {port} tcp flags & (syn|ack) == syn quota until {bytes} bytes"
        )],
    );
}

/// SYNs the rule of [`drop_first_syns`] dropped.
fn dropped(ns: &Netns) -> u64 {
    ns.nft_dropped("ringlb_faults")
}

/// In a namespace where the first SYNs to an echo backend tagged `tag` are dropped
/// (quota of `bytes`, see [`drop_first_syns`]), starts ringlb in front of it with `keys`
/// (debug connect lines and the access log on), checks that a client is served by that
/// backend, then runs `check`. Skips without root, `ip` or `nft`.
fn behind_lost_syns(
    tag: &str,
    bytes: u32,
    keys: &str,
    check: impl FnOnce(&Netns, &Ringlb, &EchoBackend) + Send,
) {
    let Some(ns) = netns_for_test(module_path!(), &["ip", "nft"]) else {
        return;
    };
    ns.run(|| {
        let backend = EchoBackend::tagged(tag);
        drop_first_syns(&ns, backend.addr().port(), bytes);
        let yaml = one_listener_yaml(
            "access_log: true\n",
            "t",
            "127.0.0.1:0",
            keys,
            &[backend.addr()],
        );
        let lb = Ringlb::builder(bin(), &yaml)
            .env("RUST_LOG", LOG_DEBUG_CONNECTS)
            .start();
        let started = Instant::now();
        let mut c = connect(lb.listener_addr("t"));
        assert_eq!(read_line_tag(&mut c), tag);
        assert_echo(&mut c, b"after lost SYNs");
        eprintln!("served after {:?}", started.elapsed());
        assert_eq!(lb.count_log("end=denied_"), 0);
        assert_eq!(backend.accepted(), 1);
        check(&ns, &lb, &backend);
    });
}

/// A listener with a single backend whose first SYN is lost, and a connect timeout
/// shorter than the kernel's first retransmission (1 s): the first attempt times out,
/// and the retry goes to the same backend (there is no other), which answers.
#[test]
fn a_lost_syn_is_retried_on_the_only_backend() {
    let keys = "connect_timeout: 300ms\nconnect_attempts: 2";
    behind_lost_syns("only", 80, keys, |ns, lb, backend| {
        assert_eq!(dropped(ns), 1, "the rule dropped exactly the first SYN");
        assert_eq!(
            lb.count_log(&format!("connect to {} failed: timeout", backend.addr())),
            1,
            "the first attempt timed out"
        );
    });
}

/// With the default `connect_timeout` and a single attempt, a backend whose first two
/// SYNs are lost is still reached: the kernel retransmits at 1 s and 3 s (at 1 s and 2 s
/// with `net.ipv4.tcp_syn_linear_timeouts`), inside the default of 3.5 s.
#[test]
fn default_connect_timeout_outlasts_two_lost_syns() {
    behind_lost_syns("slow-path", 150, "connect_attempts: 1", |ns, lb, _| {
        assert_eq!(dropped(ns), 2, "the rule dropped the first two SYNs");
        assert_eq!(lb.count_log("failed: timeout"), 0);
    });
}

/// A backend that never answers a SYN: every attempt times out, the only backend is
/// tried again (two passive failures), and the client is denied as `connect_timeout` —
/// not `no_backend` — with the time its attempts really took in the access log.
#[test]
fn a_connect_that_times_out_is_denied_as_such_with_its_duration() {
    skip_unless!(
        Requirement::IoUring,
        io_uring_available(),
        "io_uring is not available here"
    );
    let hole = BlackholeBackend::start();
    let yaml = one_listener_yaml(
        "admin: 127.0.0.1:0\naccess_log: true\n",
        "t",
        "127.0.0.1:0",
        "connect_timeout: 200ms\nconnect_attempts: 2",
        &[hole.addr()],
    );
    let lb = Ringlb::builder(bin(), &yaml)
        .env("RUST_LOG", LOG_DEBUG_CONNECTS)
        .start();
    let name = "t";
    let mut c = connect(lb.listener_addr(name));
    let end = read_until_end(&mut c, WAIT);
    assert!(matches!(end, ClientEnd::Reset { bytes: 0 }), "{end:?}");
    let line = first_line(&lb, "end=denied_connect_timeout");
    let ms: u64 = line
        .split("duration_ms=")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no duration in {line}"));
    assert!(ms >= 400, "two attempts of 200 ms took {ms} ms: {line}");
    assert_eq!(
        lb.count_log(&format!("connect to {} failed: timeout", hole.addr())),
        2,
        "the only backend is tried twice"
    );
    let series =
        |reason: &str| format!("ringlb_denied_total{{listener=\"{name}\",reason=\"{reason}\"}}");
    assert_eq!(metric(&lb, &series("connect_timeout")), 1.0);
    assert_eq!(metric(&lb, &series("no_backend")), 0.0);
    assert_eq!(
        metric(
            &lb,
            &format!(
                "ringlb_connect_failures_total{{listener=\"{name}\",backend=\"{}\"}}",
                hole.addr()
            )
        ),
        2.0
    );
}

// ---------------------------------------------------------------- 3. admin endpoint

/// 500 connections that connect and say nothing (many times the admin endpoint's table),
/// then a client that keeps opening more while scrapes run: every scrape is answered,
/// each well within a bound far below what holding the endpoint used to cost (16 idle
/// connections kept it at 503 for 5 s at a time).
#[test]
fn idle_admin_connections_cannot_starve_a_scrape() {
    skip_unless!(
        Requirement::IoUring,
        io_uring_available(),
        "io_uring is not available here"
    );
    const BOUND: Duration = Duration::from_secs(3);
    let backend = EchoBackend::start();
    let yaml = one_listener_yaml(
        "admin: 127.0.0.1:0\n",
        "t",
        "127.0.0.1:0",
        "",
        &[backend.addr()],
    );
    let lb = Ringlb::start(bin(), &yaml);
    let admin = lb.admin_addr();
    let idle: Vec<TcpStream> = (0..500)
        .map(|i| {
            TcpStream::connect_timeout(&admin, Duration::from_secs(5))
                .unwrap_or_else(|e| panic!("idle connection {i}: {e}"))
        })
        .collect();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let opened = AtomicUsize::new(0);
    thread::scope(|s| {
        // Keeps reconnecting, holding up to 100 at a time; bounded in all.
        s.spawn(|| {
            let mut held = std::collections::VecDeque::new();
            while !stop.load(Ordering::Relaxed) && opened.load(Ordering::Relaxed) < 5_000 {
                if let Ok(c) = TcpStream::connect_timeout(&admin, Duration::from_secs(1)) {
                    opened.fetch_add(1, Ordering::Relaxed);
                    held.push_back(c);
                }
                if held.len() > 100 {
                    held.pop_front();
                }
            }
        });
        let outcome = std::panic::catch_unwind(|| {
            for i in 0..5 {
                let started = Instant::now();
                let (status, body) =
                    http_get(admin, "/metrics").unwrap_or_else(|e| panic!("scrape {i}: {e}"));
                let took = started.elapsed();
                eprintln!(
                    "scrape {i}: {status} in {took:?} ({} attacker connections so far)",
                    opened.load(Ordering::Relaxed)
                );
                assert_eq!(status, 200, "scrape {i}: {body}");
                assert!(body.contains("ringlb_connections_total"), "{body}");
                assert!(took < BOUND, "scrape {i} took {took:?}: starved");
            }
        });
        stop.store(true, Ordering::Relaxed);
        if let Err(panic) = outcome {
            std::panic::resume_unwind(panic);
        }
    });
    drop(idle);
    assert!(
        lb.wait_for_log("connections held; closed", WAIT),
        "shedding is logged"
    );
}
