//! Every load mode against real backends on 127.0.0.1 (ephemeral ports), about 1 s each,
//! plus the binary end to end: a backend process, a JSON report, a graceful SIGTERM.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use ringlb_bench::backend::{Kind, Running};
use ringlb_bench::load::{self, Direction, LoadConfig, Mode};
use ringlb_testkit::EchoBackend;

fn any() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn cfg(target: SocketAddr, secs: f64) -> LoadConfig {
    LoadConfig {
        target,
        duration: Duration::from_secs_f64(secs),
        requests: 0,
        threads: 1,
        timeout: Duration::from_secs(5),
    }
}

#[test]
fn rr_against_respond_is_error_free_with_latency() {
    let b = Running::tcp(
        any(),
        Kind::Respond {
            request: 32,
            response: 64,
        },
        None,
    )
    .unwrap();
    let mode = Mode::Rr {
        connections: 8,
        request: 32,
        response: 64,
        count_tags: false,
        rate: None,
    };
    let r = load::run(&mode, &cfg(b.addr, 1.0)).unwrap();
    assert_eq!(r.errors, 0, "{r:?}");
    assert!(r.requests > 100, "{r:?}");
    assert_eq!(r.bytes, r.requests * 96);
    let l = r.latency_us.unwrap();
    assert!(l.p50 > 0.0 && l.p50 <= l.p99 && l.p99 <= l.max, "{l:?}");
    assert!(r.duration_s >= 0.99, "{r:?}");
}

#[test]
fn rr_with_two_threads_and_a_request_budget_stops_exactly() {
    let b = Running::tcp(any(), Kind::Echo, None).unwrap();
    let mode = Mode::Rr {
        connections: 4,
        request: 32,
        response: 32,
        count_tags: false,
        rate: None,
    };
    let mut c = cfg(b.addr, 30.0);
    c.requests = 500;
    c.threads = 2;
    let r = load::run(&mode, &c).unwrap();
    assert_eq!((r.requests, r.errors, r.threads), (500, 0, 2), "{r:?}");
    assert!(r.duration_s < 30.0);
}

#[test]
fn wrong_reply_is_an_error_not_a_success() {
    // Two 16-byte replies to one 32-byte request: right length, wrong bytes.
    let kind = Kind::Respond {
        request: 16,
        response: 16,
    };
    let b = Running::tcp(any(), kind, None).unwrap();
    let mode = Mode::Rr {
        connections: 1,
        request: 32,
        response: 32,
        count_tags: false,
        rate: None,
    };
    let r = load::run(&mode, &cfg(b.addr, 0.3)).unwrap();
    assert!(r.errors > 0, "{r:?}");
    assert_eq!(r.requests, 0, "{r:?}");
    assert!(r.error_kinds.contains_key("verify: invalid data"), "{r:?}");
}

#[test]
fn connect_counts_tags_of_the_answering_backend() {
    let b = Running::tcp(any(), Kind::Echo, Some("b1")).unwrap();
    let mode = Mode::Connect {
        concurrency: 4,
        request: 32,
        response: 32,
        count_tags: true,
        rate: None,
    };
    let r = load::run(&mode, &cfg(b.addr, 1.0)).unwrap();
    assert_eq!(r.errors, 0, "{r:?}");
    assert!(r.requests > 50, "{r:?}");
    let tags = r.tags.unwrap();
    assert_eq!(tags.len(), 1);
    assert_eq!(tags.get("b1"), Some(&r.requests));
}

#[test]
fn connect_rate_limit_holds() {
    let b = Running::tcp(any(), Kind::Echo, None).unwrap();
    let mode = Mode::Connect {
        concurrency: 2,
        request: 8,
        response: 8,
        count_tags: false,
        rate: Some(100.0),
    };
    let r = load::run(&mode, &cfg(b.addr, 1.0)).unwrap();
    assert_eq!(r.errors, 0, "{r:?}");
    assert!((80..=101).contains(&r.requests), "{r:?}");
}

#[test]
fn refused_target_reports_connect_errors() {
    // Bind then drop: a port nobody listens on.
    let port = std::net::TcpListener::bind(any())
        .unwrap()
        .local_addr()
        .unwrap();
    let mode = Mode::Connect {
        concurrency: 1,
        request: 8,
        response: 8,
        count_tags: false,
        rate: None,
    };
    let r = load::run(&mode, &cfg(port, 0.3)).unwrap();
    assert_eq!(r.requests, 0);
    assert!(r.errors > 0);
    assert!(
        r.error_kinds.contains_key("connect: connection refused"),
        "{r:?}"
    );
}

#[test]
fn bulk_send_and_recv_move_bytes() {
    let sink = Running::tcp(any(), Kind::Sink, None).unwrap();
    let mode = Mode::Bulk {
        streams: 2,
        direction: Direction::Send,
        chunk: 65536,
    };
    let r = load::run(&mode, &cfg(sink.addr, 1.0)).unwrap();
    assert_eq!(r.errors, 0, "{r:?}");
    assert!(r.gbit_s.unwrap() > 0.1, "{r:?}");
    assert!(r.latency_us.is_none());

    let source = Running::tcp(any(), Kind::Source { chunk: 65536 }, None).unwrap();
    let mode = Mode::Bulk {
        streams: 1,
        direction: Direction::Recv,
        chunk: 65536,
    };
    let r = load::run(&mode, &cfg(source.addr, 1.0)).unwrap();
    assert_eq!(r.errors, 0, "{r:?}");
    assert!(r.bytes > 10_000_000, "{r:?}");
}

#[test]
fn udp_rr_round_trips_with_sequence_numbers() {
    let b = Running::udp_echo(any()).unwrap();
    let mode = Mode::UdpRr {
        flows: 4,
        request: 32,
    };
    let r = load::run(&mode, &cfg(b.addr, 1.0)).unwrap();
    assert_eq!(r.errors, 0, "{r:?}");
    assert!(r.requests > 100, "{r:?}");
    assert_eq!(r.connections, 4);
}

#[test]
fn udp_rr_without_a_backend_times_out_as_errors() {
    let sock = std::net::UdpSocket::bind(any()).unwrap(); // bound, never answers
    let mode = Mode::UdpRr {
        flows: 1,
        request: 16,
    };
    let mut c = cfg(sock.local_addr().unwrap(), 0.5);
    c.timeout = Duration::from_millis(100);
    let r = load::run(&mode, &c).unwrap();
    assert_eq!(r.requests, 0);
    assert!(r.errors >= 2, "{r:?}");
}

#[test]
fn idle_holds_and_verifies_every_connection() {
    let b = Running::tcp(
        any(),
        Kind::Respond {
            request: 32,
            response: 64,
        },
        None,
    )
    .unwrap();
    // warm: one exchange before the hold, then the final check on the same connection.
    for warm in [false, true] {
        let mode = Mode::Idle {
            connections: 500,
            request: 32,
            response: 64,
            connect_concurrency: 64,
            warm,
        };
        let r = load::run(&mode, &cfg(b.addr, 1.0)).unwrap();
        assert_eq!((r.requests, r.errors), (500, 0), "warm {warm}: {r:?}");
        assert!(r.latency_us.is_some(), "connect latency is reported");
    }
}

#[test]
fn idle_notices_a_backend_that_goes_away() {
    let b = EchoBackend::start();
    let addr = b.addr();
    let mode = Mode::Idle {
        connections: 20,
        request: 8,
        response: 8,
        connect_concurrency: 20,
        warm: false,
    };
    let run = std::thread::spawn(move || load::run(&mode, &cfg(addr, 3.0)).unwrap());
    // Once every connection is up (and so holding), the backend goes away: dropping it
    // shuts all of them down, mid-hold.
    assert!(
        b.wait_accepted(20, Duration::from_secs(10)),
        "the idle mode opened {} of 20 connections",
        b.accepted()
    );
    drop(b);
    let r = run.join().unwrap();
    assert_eq!(r.requests, 0, "{r:?}");
    assert_eq!(r.errors, 20, "{r:?}");
}

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_ringlb-bench")
}

#[test]
fn binary_backend_and_json_report_end_to_end() {
    let mut backend = Command::new(bin())
        .args(["echo", "--listen", "127.0.0.1:0", "--tag", "b9"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(backend.stderr.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line.trim().rsplit(' ').next().unwrap().to_string();
    assert!(
        line.starts_with("ringlb-bench echo listening on tcp 127.0.0.1:"),
        "{line}"
    );

    let out = Command::new(bin())
        .args([
            "rr",
            "--target",
            &addr,
            "-c",
            "4",
            "-d",
            "500ms",
            "--json",
            "--count-tags",
            "--fail-on-errors",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["mode"], "rr");
    assert_eq!(v["target"], addr.as_str());
    assert_eq!(v["errors"], 0);
    assert!(v["requests"].as_u64().unwrap() > 0);
    assert!(v["latency_us"]["p999"].as_f64().unwrap() > 0.0);
    assert_eq!(v["tags"]["b9"], 4, "one tag per connection");

    // SIGTERM: drains and exits 0.
    let pid = nix::unistd::Pid::from_raw(backend.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = backend.wait().unwrap();
    assert!(status.success(), "{status:?}");

    // --fail-on-errors turns errors into exit code 3 (nobody listens there any more).
    let out = Command::new(bin())
        .args([
            "connect",
            "--target",
            &addr,
            "-d",
            "200ms",
            "--fail-on-errors",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("connect: connection refused"));
}

#[test]
fn binary_rejects_bad_arguments_with_exit_2() {
    let out = Command::new(bin())
        .args([
            "udp-rr",
            "--target",
            "127.0.0.1:9",
            "--request",
            "4",
            "-d",
            "100ms",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let out = Command::new(bin())
        .args(["rr", "--target", "not-an-address"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}
