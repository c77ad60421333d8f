//! Health checks and failover end to end, through a running `ringlb` process: a backend
//! killed under load, backups, all backends down, passive detection, blackholed backends
//! (loopback and a network namespace), a flapping backend, and `ringlb_backend_up`.
//!
//! Timings are measured from ringlb's own log timestamps (env_logger, microseconds, UTC)
//! against the test's wall clock, so a slow log reader does not inflate them. Every bound
//! is the documented one (docs/health.md) plus [`SLACK`] for a loaded 2-core machine.
//!
//! Whether clients' connects reached a backend is read from ringlb's counters
//! (`ringlb_connect_failures_total` per backend) and from what the backends accepted,
//! never from the absence of a log line.
//!
//! A backend is only killed or flapped while no client connection is in flight (the
//! [`Load`] gate): a connection the backend itself accepted and then resets cannot be
//! saved by any balancer, and is not what these tests are about.

use std::fs::File;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use ringlb_testkit::*;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_ringlb"))
}

const INTERVAL: Duration = Duration::from_millis(200);
const TIMEOUT: Duration = Duration::from_millis(100);
const RISE: u32 = 2;
const FALL: u32 = 2;
/// Added to every documented bound: scheduling delays on a loaded 2-core machine.
const SLACK: Duration = Duration::from_millis(1500);
/// How long a test waits for something that should take well under a second.
const WAIT: Duration = Duration::from_secs(15);

/// The health check of most tests: 200 ms / 100 ms, rise 2, fall 2.
const HC: &str = "health_check:\n  interval: 200ms\n  timeout: 100ms\n  rise: 2\n  fall: 2\n";

/// Top-level YAML of the tests that read counters.
const ADMIN: &str = "admin: 127.0.0.1:0\n";

/// `fall × interval + timeout`: detection bound by active checks (docs/health.md).
fn down_bound() -> Duration {
    INTERVAL * FALL + TIMEOUT
}

/// `rise × interval`: recovery bound.
fn up_bound() -> Duration {
    INTERVAL * RISE
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

// ---------------------------------------------------------------- config

/// One TCP listener "t" on an ephemeral port. `top` is top-level YAML, `listener` the
/// listener's keys (nesting kept), `backends` (addr, backup).
fn config(top: &str, listener: &str, backends: &[(SocketAddr, bool)]) -> String {
    let mut y = String::from("access_log: false\n");
    y.push_str(top);
    y.push_str("listeners:\n  - name: t\n    bind: 127.0.0.1:0\n");
    for line in listener.lines().filter(|l| !l.trim().is_empty()) {
        y.push_str("    ");
        y.push_str(line);
        y.push('\n');
    }
    y.push_str("    backends:\n");
    for (addr, backup) in backends {
        y.push_str(&format!("      - addr: {addr}\n"));
        if *backup {
            y.push_str("        backup: true\n");
        }
    }
    y
}

fn primaries(addrs: &[SocketAddr]) -> Vec<(SocketAddr, bool)> {
    addrs.iter().map(|a| (*a, false)).collect()
}

/// Starts ringlb and waits for `ready:` as well as the kit's listener and admin lines:
/// the listener lines come before the admin registry lists the listeners (control.rs),
/// so a scrape right after them can find no `ringlb_backend_up` series at all.
fn start_lb(yaml: &str, rust_log: &str) -> Ringlb {
    let lb = Ringlb::builder(bin(), yaml)
        .env("RUST_LOG", rust_log)
        .start();
    assert!(
        lb.wait_for_log("] ready: ", READY_TIMEOUT),
        "ringlb never logged `ready:`; output:\n{}",
        lb.logs().join("\n")
    );
    lb
}

/// `ringlb_connect_failures_total` of `backend` in listener "t": client connects to it
/// that were refused or timed out. Panics if the series is missing (a renamed metric must
/// fail the test, not read as "no failures").
fn connect_failures(lb: &Ringlb, backend: SocketAddr) -> u64 {
    let series = format!("ringlb_connect_failures_total{{listener=\"t\",backend=\"{backend}\"}}");
    let v = lb.metric(&series).unwrap_or_else(|| {
        let (_, body) = lb.http_get("/metrics");
        panic!("no {series} in /metrics:\n{body}")
    });
    v as u64
}

// ---------------------------------------------------------------- log lines

/// Every transition of `backend` of listener "t" so far, in log order.
fn flips(lb: &Ringlb, backend: SocketAddr) -> Vec<HealthFlip> {
    lb.health_flips("t", &backend.to_string())
}

/// Waits for the first `up`/down transition of `backend` logged at or after `mark`.
/// Panics with the output if none comes within `timeout`.
fn wait_flip(
    lb: &Ringlb,
    mark: usize,
    backend: SocketAddr,
    up: bool,
    timeout: Duration,
) -> HealthFlip {
    let dir = if up { "up" } else { "down" };
    let needle = format!("backend {dir}: listener=t backend={backend} ");
    if lb.wait_for_log_after(mark, &needle, timeout) {
        if let Some(f) = flips(lb, backend)
            .into_iter()
            .find(|f| f.idx >= mark && f.up == up)
        {
            return f;
        }
    }
    panic!(
        "no `{needle}` line within {timeout:?}; output:\n{}",
        lb.logs().join("\n")
    );
}

/// The time of the `ready:` line.
fn ready_time(lb: &Ringlb) -> SystemTime {
    lb.logs()
        .iter()
        .find(|l| l.contains("] ready: "))
        .and_then(|l| log_time(l))
        .expect("ringlb logged `ready:` with a timestamp")
}

/// The state machine's rules, as seen in the log: transitions of one backend alternate,
/// starting with down (every backend starts up); a down streak is at least `fall`; an up
/// streak is exactly `rise` (only active successes count toward it, one at a time).
fn assert_flip_sequence(flips: &[HealthFlip], rise: u32, fall: u32) {
    for (i, f) in flips.iter().enumerate() {
        assert_eq!(
            f.up,
            i % 2 == 1,
            "transitions must alternate down/up: {flips:#?}"
        );
        if f.up {
            assert_eq!(f.consecutive, rise, "up streak: {f:?}");
            assert_eq!(f.outcome, "ok", "{f:?}");
            assert!(!f.passive, "only active checks bring a backend up: {f:?}");
        } else {
            assert!(f.consecutive >= fall, "down streak below fall: {f:?}");
            assert_ne!(f.outcome, "ok", "{f:?}");
        }
    }
}

/// After a restart, a backend may get client connections only once it is up again: at
/// least `rise` successful checks (finished connections without bytes) must come before
/// the first client connection in accept order.
fn assert_checks_before_clients(b: &EchoBackend, rise: u32) {
    let tag = b.tag().unwrap_or("?");
    let conns = b.conns();
    let Some(first) = conns.iter().position(|c| c.bytes_in > 0) else {
        panic!(
            "{tag} ({}) got no client connection after its restart",
            b.addr()
        );
    };
    let checks = conns[..first]
        .iter()
        .filter(|c| c.bytes_in == 0 && c.end.is_some())
        .count();
    eprintln!(
        "{tag}: {checks} check connection(s) before the first client connection after restart"
    );
    assert!(
        checks >= rise as usize,
        "{tag} got a client connection after only {checks} successful check(s) (rise {rise}): {:?}",
        &conns[..=first]
    );
}

// ---------------------------------------------------------------- 1. kill under load

/// A backend dies under continuous load; clients never notice; it is marked down within
/// the bound and gets no new connection attempt (its connect-failure counter stops); restarted
/// on the same port it is marked up within `rise × interval` and gets traffic again.
#[test]
fn killed_backend_under_load_fails_over_and_rejoins() {
    let b1 = EchoBackend::tagged("b1");
    let b2 = EchoBackend::tagged("b2");
    let b3 = EchoBackend::tagged("b3");
    let b2_addr = b2.addr();
    let listener = format!("algorithm: round_robin\nconnect_attempts: 2\n{HC}");
    let lb = start_lb(
        &config(
            ADMIN,
            &listener,
            &primaries(&[b1.addr(), b2_addr, b3.addr()]),
        ),
        "info",
    );
    let addr = lb.listener_addr("t");
    let load = Load::start(addr, 2, Duration::from_millis(2));
    assert!(
        wait_until(WAIT, || ["b1", "b2", "b3"]
            .iter()
            .all(|t| load.count(t) >= 5)),
        "all three backends serve before the kill"
    );

    // Kill b2 between two client connections.
    let mark = lb.log_mark();
    let (killed_at, failed_before) = {
        let _paused = load.pause();
        let failed = connect_failures(&lb, b2_addr);
        let t = SystemTime::now();
        drop(b2);
        (t, failed)
    };
    let killed_after = load.total();
    let down = wait_flip(&lb, mark, b2_addr, false, WAIT);
    let detect = since(killed_at, down.at);

    // Once the down line is out, no new client connection is even attempted on b2: its
    // failure counter stops where it was when the line came.
    let failed_at_down = {
        let _paused = load.pause();
        connect_failures(&lb, b2_addr)
    };
    eprintln!(
        "kill -> `backend down` in {:.1} ms (outcome={} consecutive={} passive={}; bound {:.0} ms + slack); \
         {} client connect(s) refused before it, {} client connections in between",
        ms(detect),
        down.outcome,
        down.consecutive,
        down.passive,
        ms(down_bound()),
        failed_at_down - failed_before,
        load.total() - killed_after
    );
    assert!(detect <= down_bound() + SLACK, "detection took {detect:?}");
    if !down.passive {
        assert_eq!(down.outcome, "refused", "{down:?}");
    } else {
        assert_eq!(down.outcome, "client_connect_failed", "{down:?}");
    }
    // Positive control: the load kept reaching for b2 while it was dead and not yet
    // marked down (round robin tries it every third pick; the checks need a whole
    // interval between two failures), and the counter counted it. A passive verdict
    // took at least `fall` of them.
    let at_least = if down.passive { u64::from(FALL) } else { 1 };
    assert!(
        failed_at_down - failed_before >= at_least,
        "b2's connect-failure counter went {failed_before} -> {failed_at_down} between the kill \
         and the down line ({down:?}): it does not count refused client connects"
    );
    let n = load.total();
    assert!(
        wait_until(WAIT, || load.total() >= n + 60),
        "load keeps going"
    );
    let late = connect_failures(&lb, b2_addr) - failed_at_down;
    assert_eq!(
        late, 0,
        "{late} client connect(s) tried {b2_addr} after it was marked down"
    );

    // Restart b2 on the same port.
    let mark = lb.log_mark();
    let restarted_at = SystemTime::now();
    let b2 = EchoBackend::tagged_at(b2_addr, "b2");
    let up = wait_flip(&lb, mark, b2_addr, true, WAIT);
    let rejoin = since(restarted_at, up.at);
    eprintln!(
        "restart -> `backend up` in {:.1} ms (bound {:.0} ms + slack)",
        ms(rejoin),
        ms(up_bound())
    );
    assert!(rejoin <= up_bound() + SLACK, "rejoin took {rejoin:?}");
    assert!(
        wait_until(WAIT, || b2.client_conns() >= 5),
        "b2 gets client traffic again"
    );
    assert!(
        wait_until(WAIT, || load.total() >= 200),
        "at least 200 connections"
    );
    let log = load.finish();
    let counts = tag_counts(&log.tags);
    eprintln!(
        "{} client connections, {} failures, max latency {:.1} ms, per backend {counts:?}",
        log.tags.len() + log.failures.len(),
        log.failures.len(),
        ms(log.max_latency)
    );
    assert!(
        log.failures.is_empty(),
        "client failures: {:#?}",
        log.failures
    );
    assert_checks_before_clients(&b2, RISE);
    assert_flip_sequence(&flips(&lb, b2_addr), RISE, FALL);
    for other in [b1.addr(), b3.addr()] {
        assert!(flips(&lb, other).is_empty(), "{other} must stay up");
    }
}

// ---------------------------------------------------------------- 2. backup

/// The backup serves only while no primary is up.
#[test]
fn backup_serves_only_while_every_primary_is_down() {
    let p1 = EchoBackend::tagged("p1");
    let p2 = EchoBackend::tagged("p2");
    let backup = EchoBackend::tagged("backup");
    let p1_addr = p1.addr();
    let p2_addr = p2.addr();
    let listener = format!("algorithm: round_robin\nconnect_attempts: 2\n{HC}");
    let lb = start_lb(
        &config(
            "",
            &listener,
            &[(p1_addr, false), (p2_addr, false), (backup.addr(), true)],
        ),
        "info",
    );
    let addr = lb.listener_addr("t");

    let (tags, failures) = tagged_clients(addr, 30);
    assert!(failures.is_empty(), "{failures:?}");
    let counts = tag_counts(&tags);
    eprintln!("both primaries up: {counts:?}");
    assert_eq!(
        counts.get("backup"),
        None,
        "backup used while primaries are up"
    );
    assert!(
        counts.contains_key("p1") && counts.contains_key("p2"),
        "{counts:?}"
    );

    let mark = lb.log_mark();
    let killed_at = SystemTime::now();
    drop(p1);
    drop(p2);
    let d1 = wait_flip(&lb, mark, p1_addr, false, WAIT);
    let d2 = wait_flip(&lb, mark, p2_addr, false, WAIT);
    eprintln!(
        "primaries marked down {:.1} / {:.1} ms after the kill (outcome {} / {})",
        ms(since(killed_at, d1.at)),
        ms(since(killed_at, d2.at)),
        d1.outcome,
        d2.outcome
    );

    let (tags, failures) = tagged_clients(addr, 20);
    assert!(failures.is_empty(), "{failures:?}");
    assert!(
        tags.iter().all(|t| t == "backup"),
        "all primaries down: {:?}",
        tag_counts(&tags)
    );

    // Restart p1: until it is up the backup keeps serving; after, p1 alone (p2 is down).
    let mark = lb.log_mark();
    let restarted_at = SystemTime::now();
    let p1 = EchoBackend::tagged_at(p1_addr, "p1");
    let mut during = Vec::new();
    while !lb.wait_for_log_after(
        mark,
        &format!("backend up: listener=t backend={p1_addr} "),
        Duration::ZERO,
    ) {
        match tagged_client(addr, during.len()) {
            Ok(t) => during.push(t),
            Err(e) => panic!("client failed while p1 was rising: {e}"),
        }
        assert!(
            since(restarted_at, SystemTime::now()) < WAIT,
            "p1 never marked up"
        );
    }
    let up = wait_flip(&lb, mark, p1_addr, true, WAIT);
    eprintln!(
        "p1 restarted -> up in {:.1} ms; {} connection(s) meanwhile: {:?}",
        ms(since(restarted_at, up.at)),
        during.len(),
        tag_counts(&during)
    );
    let backup_clients = backup.conns().iter().filter(|c| c.bytes_in > 0).count();
    let (tags, failures) = tagged_clients(addr, 20);
    assert!(failures.is_empty(), "{failures:?}");
    assert!(
        tags.iter().all(|t| t == "p1"),
        "p1 up again: the backup must stop serving: {:?}",
        tag_counts(&tags)
    );
    assert!(
        wait_until(Duration::from_secs(5), || backup.open() == 0),
        "backup connections end"
    );
    let backup_after = backup.conns().iter().filter(|c| c.bytes_in > 0).count();
    assert_eq!(
        backup_clients, backup_after,
        "backup got client connections after p1 rose"
    );
    assert_checks_before_clients(&p1, RISE);
    assert!(flips(&lb, backup.addr()).is_empty(), "the backup stays up");
}

// ---------------------------------------------------------------- 3. all down

/// With every backend down a new client is reset at once, without any
/// connect attempt, and counted as denied (no_backend).
#[test]
fn all_backends_down_denies_new_clients_at_once() {
    let a = EchoBackend::tagged("a");
    let b = EchoBackend::tagged("b");
    let (a_addr, b_addr) = (a.addr(), b.addr());
    let listener = format!("connect_attempts: 2\n{HC}");
    let mut yaml = config(ADMIN, &listener, &primaries(&[a_addr, b_addr]));
    yaml = yaml.replacen("access_log: false", "access_log: true", 1);
    // `start` waits for the admin endpoint's line too.
    let lb = start_lb(&yaml, "info");
    let addr = lb.listener_addr("t");
    let (_, failures) = tagged_clients(addr, 4);
    assert!(failures.is_empty(), "{failures:?}");

    let mark = lb.log_mark();
    drop(a);
    drop(b);
    wait_flip(&lb, mark, a_addr, false, WAIT);
    wait_flip(&lb, mark, b_addr, false, WAIT);
    let failed = || connect_failures(&lb, a_addr) + connect_failures(&lb, b_addr);
    let failed_at_down = failed();

    const N: usize = 5;
    for i in 0..N {
        let started = Instant::now();
        // The reset can beat connect_timeout's poll: then connect itself reports it.
        let end = match connect_with_timeout(addr, Duration::from_secs(5)) {
            Ok(mut c) => read_until_end(&mut c, Duration::from_secs(5)),
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => ClientEnd::Reset { bytes: 0 },
            Err(e) => panic!("client {i}: connect to {addr}: {e}"),
        };
        let took = started.elapsed();
        eprintln!("denied client {i}: {end:?} after {:.2} ms", ms(took));
        assert!(end.closed_without_data(), "client {i}: {end:?}");
        assert!(
            took < Duration::from_secs(1),
            "client {i} closed after {took:?}"
        );
    }
    assert!(
        wait_until(Duration::from_secs(5), || lb
            .count_log("end=denied_no_backend")
            == N),
        "one access-log line per denied client, got {}",
        lb.count_log("end=denied_no_backend")
    );
    // The clients reached ringlb (denied, logged and counted below); none of them made
    // it try a backend.
    let tried = failed() - failed_at_down;
    assert_eq!(tried, 0, "no connect may be attempted on a down backend");
    let series = "ringlb_denied_total{listener=\"t\",reason=\"no_backend\"}";
    let v = lb.metric(series);
    eprintln!("{series} = {v:?}");
    assert_eq!(v, Some(N as f64), "{series}");
}

// ---------------------------------------------------------------- 4. passive

/// With active checks only every 5 s, real client connects that are refused take the
/// backend out, logged with `passive=true`; clients see nothing. ringlb counts those
/// connects (at least `fall` before the verdict) and makes none after it.
#[test]
fn passive_failures_mark_a_dead_backend_down_quickly() {
    let b1 = EchoBackend::tagged("b1");
    let b2 = EchoBackend::tagged("b2");
    let b3 = EchoBackend::tagged("b3");
    let b2_addr = b2.addr();
    let listener = "algorithm: round_robin\nconnect_attempts: 2\nhealth_check:\n  interval: 5s\n  timeout: 100ms\n  rise: 2\n  fall: 2\n";
    let lb = start_lb(
        &config(
            ADMIN,
            listener,
            &primaries(&[b1.addr(), b2_addr, b3.addr()]),
        ),
        "info",
    );
    let addr = lb.listener_addr("t");
    let (tags, failures) = tagged_clients(addr, 15);
    assert!(failures.is_empty(), "{failures:?}");
    assert_eq!(tag_counts(&tags).len(), 3, "{tags:?}");

    let failed_before = connect_failures(&lb, b2_addr);
    let mark = lb.log_mark();
    let killed_at = SystemTime::now();
    drop(b2);
    let mut done = 0;
    let mut failures = Vec::new();
    while done < 300
        && !lb.wait_for_log_after(
            mark,
            &format!("backend down: listener=t backend={b2_addr} "),
            Duration::ZERO,
        )
    {
        if let Err(e) = tagged_client(addr, done) {
            failures.push(e);
        }
        done += 1;
    }
    let down = wait_flip(&lb, mark, b2_addr, false, Duration::from_secs(1));
    let detect = since(killed_at, down.at);
    // No client is in flight here: they run one at a time, and none since the line.
    let failed_at_down = connect_failures(&lb, b2_addr);
    let refused = failed_at_down - failed_before;
    eprintln!(
        "passive: kill -> down in {:.1} ms after {done} client connection(s) and {refused} refused connect(s) \
         (outcome={} consecutive={} passive={})",
        ms(detect),
        down.outcome,
        down.consecutive,
        down.passive
    );
    assert!(down.passive, "must be caused by client connects: {down:?}");
    assert_eq!(down.outcome, "client_connect_failed");
    assert!(
        refused >= u64::from(FALL),
        "down after {refused} counted failures, fall is {FALL}"
    );
    // `fall` refused connects + at most 10 ms of prober sampling, on top of the client pace.
    assert!(
        detect < Duration::from_millis(100) + SLACK,
        "took {detect:?}"
    );

    let (_, more) = tagged_clients(addr, 30);
    failures.extend(more);
    assert!(
        failures.is_empty(),
        "clients must not see the dead backend: {failures:?}"
    );
    let late = connect_failures(&lb, b2_addr) - failed_at_down;
    assert_eq!(
        late, 0,
        "connects attempted on {b2_addr} after it was marked down"
    );
}

// ---------------------------------------------------------------- 5. blackhole (loopback)

/// A backend whose connects time out is marked down by the active checks with
/// `outcome=timeout` within `fall × interval + timeout` of start; then clients never wait
/// on it (its connect-failure counter stays put). No client runs before the down line, so
/// it is the checks'. A second listener without health checks, whose only backend is the
/// same blackhole, shows that a client connect timing out there is counted.
#[test]
fn blackholed_backend_marked_down_by_timeout_checks() {
    let b1 = EchoBackend::tagged("b1");
    let hole = BlackholeBackend::start();
    let b3 = EchoBackend::tagged("b3");
    let listener =
        format!("algorithm: round_robin\nconnect_attempts: 2\nconnect_timeout: 200ms\n{HC}");
    let mut yaml = config(
        ADMIN,
        &listener,
        &primaries(&[b1.addr(), hole.addr(), b3.addr()]),
    );
    yaml.push_str(&format!(
        "  - name: direct\n    bind: 127.0.0.1:0\n    connect_attempts: 1\n    \
         connect_timeout: 200ms\n    backends:\n      - addr: {}\n",
        hole.addr()
    ));
    let lb = start_lb(&yaml, "info");
    let down = wait_flip(&lb, 0, hole.addr(), false, WAIT);
    let detect = since(ready_time(&lb), down.at);
    eprintln!(
        "blackhole (active checks only): ready -> down in {:.1} ms (outcome={} consecutive={}; bound {:.0} ms + slack)",
        ms(detect),
        down.outcome,
        down.consecutive,
        ms(down_bound())
    );
    assert_eq!(down.outcome, "timeout", "{down:?}");
    assert!(!down.passive);
    assert!(detect <= down_bound() + SLACK, "took {detect:?}");

    let addr = lb.listener_addr("t");
    let waited_before = connect_failures(&lb, hole.addr());
    let started = Instant::now();
    let (tags, failures) = tagged_clients(addr, 40);
    let took = started.elapsed();
    assert!(failures.is_empty(), "{failures:?}");
    eprintln!(
        "40 clients after down in {:.0} ms: {:?}",
        ms(took),
        tag_counts(&tags)
    );
    let served = b1.client_conns() + b3.client_conns();
    assert_eq!(served, 40, "every client was relayed to a live backend");
    let tried = connect_failures(&lb, hole.addr()) - waited_before;
    assert_eq!(tried, 0, "no client connect may wait on the down blackhole");

    // Positive control: one client through "direct" makes ringlb wait on the blackhole
    // until connect_timeout, and that attempt is counted.
    let direct = format!(
        "ringlb_connect_failures_total{{listener=\"direct\",backend=\"{}\"}}",
        hole.addr()
    );
    assert_eq!(lb.metric(&direct), Some(0.0), "{direct} before");
    let mut c = connect(lb.listener_addr("direct"));
    let end = read_until_end(&mut c, Duration::from_secs(10));
    assert!(
        end.closed_without_data(),
        "a client whose only backend is the blackhole is closed: {end:?}"
    );
    assert!(
        wait_until(WAIT, || lb.metric(&direct) == Some(1.0)),
        "{direct} = {:?}: the timed-out connect to the blackhole was not counted",
        lb.metric(&direct)
    );
}

/// Clients during detection: clients from the first moment, with
/// `connect_timeout: 200ms` and 2 attempts, never fail while the blackhole is detected.
/// Whichever completes the streak first — an active check (`outcome=timeout`) or client
/// connects timing out (`client_connect_failed`, `passive=true`) — the bound holds, and the
/// active checks classify the blackhole as `timeout` (prober trace lines).
#[test]
fn blackholed_backend_clients_fail_over_while_it_is_detected() {
    let b1 = EchoBackend::tagged("b1");
    let hole = BlackholeBackend::start();
    let b3 = EchoBackend::tagged("b3");
    let listener =
        format!("algorithm: round_robin\nconnect_attempts: 2\nconnect_timeout: 200ms\n{HC}");
    let lb = start_lb(
        &config(
            ADMIN,
            &listener,
            &primaries(&[b1.addr(), hole.addr(), b3.addr()]),
        ),
        "info,ringlb_prober::runner=trace",
    );
    let load = Load::start(lb.listener_addr("t"), 2, Duration::from_millis(2));
    let down = wait_flip(&lb, 0, hole.addr(), false, WAIT);
    let detect = since(ready_time(&lb), down.at);
    let check_needle = format!("prober: check listener=t backend={} outcome=", hole.addr());
    assert!(
        wait_until(WAIT, || lb.count_log(&check_needle) >= 2),
        "active checks of the blackhole keep running"
    );
    let n = load.total();
    assert!(
        wait_until(WAIT, || load.total() >= n + 50),
        "load keeps going"
    );
    let log = load.finish();
    let outcomes: Vec<String> = lb
        .logs()
        .iter()
        .filter_map(|l| Some(l[l.find(&check_needle)? + check_needle.len()..].to_string()))
        .collect();
    let waited = connect_failures(&lb, hole.addr());
    eprintln!(
        "blackhole with clients: ready -> down in {:.1} ms (outcome={} consecutive={} passive={}); \
         active check outcomes {:?}; {waited} client connect(s) timed out; {} clients, {} failures, max latency {:.1} ms",
        ms(detect),
        down.outcome,
        down.consecutive,
        down.passive,
        tag_counts(&outcomes),
        log.tags.len() + log.failures.len(),
        log.failures.len(),
        ms(log.max_latency)
    );
    assert!(
        log.failures.is_empty(),
        "client failures: {:#?}",
        log.failures
    );
    assert!(detect <= down_bound() + SLACK, "took {detect:?}");
    match (down.passive, down.outcome.as_str()) {
        (false, "timeout") => {}
        // A passive verdict took `fall` client connects timing out, all counted.
        (true, "client_connect_failed") => assert!(
            waited >= u64::from(FALL),
            "passive down after {waited} counted connect failures: {down:?}"
        ),
        _ => panic!("unexpected down line: {down:?}"),
    }
    assert!(
        outcomes.iter().all(|o| o == "timeout"),
        "a blackholed backend's checks time out: {outcomes:?}"
    );
}

// ---------------------------------------------------------------- 6. network namespace

/// A network namespace with a veth pair to it, removed on Drop (even on panic).
struct Netns {
    name: String,
    host_if: String,
    inside_if: String,
    host_ip: Ipv4Addr,
    inside_ip: Ipv4Addr,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}: {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Netns {
    /// `ringlb-t-PID` with veth `rlbhPID` (root side) / `rlbnPID` (inside), a /30 in
    /// 10.203.0.0/16 derived from the PID.
    fn create() -> Result<Netns, String> {
        let pid = std::process::id();
        let (a, b) = (((pid >> 6) & 0xff) as u8, ((pid & 0x3f) * 4) as u8);
        let ns = Netns {
            name: format!("ringlb-t-{pid}"),
            host_if: format!("rlbh{}", pid % 100_000_000),
            inside_if: format!("rlbn{}", pid % 100_000_000),
            host_ip: Ipv4Addr::new(10, 203, a, b + 1),
            inside_ip: Ipv4Addr::new(10, 203, a, b + 2),
        };
        // From here on Drop cleans up whatever part was created.
        ip(&["netns", "add", &ns.name])?;
        ip(&[
            "link",
            "add",
            &ns.host_if,
            "type",
            "veth",
            "peer",
            "name",
            &ns.inside_if,
        ])?;
        ip(&["link", "set", &ns.inside_if, "netns", &ns.name])?;
        ip(&[
            "addr",
            "add",
            &format!("{}/30", ns.host_ip),
            "dev",
            &ns.host_if,
        ])?;
        ip(&["link", "set", &ns.host_if, "up"])?;
        ns.exec(&[
            "addr",
            "add",
            &format!("{}/30", ns.inside_ip),
            "dev",
            &ns.inside_if,
        ])?;
        ns.exec(&["link", "set", &ns.inside_if, "up"])?;
        ns.exec(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// `ip -n NS ARGS…` (i.e. `ip netns exec NS ip ARGS…`).
    fn exec(&self, args: &[&str]) -> Result<(), String> {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// A TCP listener created inside the namespace: a thread joins it (setns) just to
    /// create the socket, which stays in that namespace for its whole life.
    fn listen(&self, port: u16) -> io::Result<TcpListener> {
        let path = format!("/var/run/netns/{}", self.name);
        let addr = SocketAddr::V4(SocketAddrV4::new(self.inside_ip, port));
        thread::spawn(move || {
            let f = File::open(&path)?;
            // SAFETY: setns on this (short-lived) thread with an fd we own.
            if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error());
            }
            TcpListener::bind(addr)
        })
        .join()
        .map_err(|_| io::Error::other("netns listener thread panicked"))?
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting either end deletes the pair; the inside end also goes with the ns.
        let _ = ip(&["link", "del", &self.host_if]);
        let _ = ip(&["netns", "del", &self.name]);
    }
}

/// A backend in a network namespace whose link goes down (SYNs vanish,
/// nothing answers) is marked down by the active checks with `outcome=timeout`; clients
/// fail over to the loopback backend. `connect_timeout: 1s` keeps client connects from
/// completing a streak before the checks do (so the outcome is the checks'), and shows
/// that a client caught on the dead path still gets served by the retry.
#[test]
fn namespace_backend_link_down_is_detected_as_timeout() {
    skip_unless!(
        Requirement::Root,
        is_root(),
        "needs root to create a network namespace"
    );
    skip_unless!(
        Requirement::Command("ip"),
        have_command("ip"),
        "`ip` (iproute2) is not installed"
    );
    let ns = Netns::create();
    skip_unless!(
        Requirement::NetNs,
        ns.is_ok(),
        "cannot set up a network namespace: {}",
        ns.as_ref().err().map_or("", String::as_str)
    );
    let Ok(ns) = ns else { return };
    let listener = ns.listen(0).expect("listen inside the namespace");
    let remote = EchoBackend::tagged_on(listener, "ns");
    let remote_addr = remote.addr();
    let local = EchoBackend::tagged("lo");
    let cfg = format!("algorithm: round_robin\nconnect_attempts: 2\nconnect_timeout: 1s\n{HC}");
    let lb = start_lb(
        &config(ADMIN, &cfg, &primaries(&[remote_addr, local.addr()])),
        "info",
    );
    let load = Load::start(lb.listener_addr("t"), 2, Duration::from_millis(5));
    assert!(
        wait_until(WAIT, || load.count("ns") >= 5 && load.count("lo") >= 5),
        "traffic reaches the namespace backend ({} ns, {} lo, {} failures); output:\n{}",
        load.count("ns"),
        load.count("lo"),
        load.failures(),
        lb.logs().join("\n")
    );

    let mark = lb.log_mark();
    // Cut between client connections: a connection already relaying to the backend would
    // stall on the dead link until it comes back (established connections are left alone
    // by design), which is not what failover is about.
    let (cut_at, cut_done) = {
        let _paused = load.pause();
        let at = SystemTime::now();
        ns.exec(&["link", "set", &ns.inside_if, "down"])
            .expect("link down");
        (at, SystemTime::now())
    };
    let down = wait_flip(&lb, mark, remote_addr, false, WAIT);
    let detect = since(cut_at, down.at);
    eprintln!(
        "netns link down -> `backend down` in {:.1} ms (the `ip` command took {:.1} ms; outcome={} \
         consecutive={} passive={}; bound {:.0} ms + slack)",
        ms(detect),
        ms(since(cut_at, cut_done)),
        down.outcome,
        down.consecutive,
        down.passive,
        ms(down_bound())
    );
    assert_eq!(down.outcome, "timeout", "{down:?}");
    assert!(!down.passive, "{down:?}");
    assert!(detect <= down_bound() + SLACK, "took {detect:?}");
    let n = load.total();
    assert!(
        wait_until(WAIT, || load.total() >= n + 50),
        "load keeps going"
    );

    // Link back up: the backend rejoins by itself.
    let mark = lb.log_mark();
    let back_at = SystemTime::now();
    ns.exec(&["link", "set", &ns.inside_if, "up"])
        .expect("link up");
    let up = wait_flip(&lb, mark, remote_addr, true, WAIT);
    let ns_before = load.count("ns");
    assert!(
        wait_until(WAIT, || load.count("ns") >= ns_before + 3),
        "the namespace backend serves again"
    );
    let log = load.finish();
    let timed_out = connect_failures(&lb, remote_addr);
    eprintln!(
        "link up -> `backend up` in {:.1} ms; {} clients, {} failures, {timed_out} client connect(s) timed out \
         on the dead link, max latency {:.1} ms, {:?}",
        ms(since(back_at, up.at)),
        log.tags.len() + log.failures.len(),
        log.failures.len(),
        ms(log.max_latency),
        tag_counts(&log.tags)
    );
    assert!(
        log.failures.is_empty(),
        "client failures: {:#?}",
        log.failures
    );
    assert_flip_sequence(&flips(&lb, remote_addr), RISE, FALL);
    drop(lb);
    drop(remote);
    drop(ns);
}

// ---------------------------------------------------------------- 7. flapping

/// A backend that listens and stops listening every 300 ms for 10 s,
/// under continuous clients with 3 attempts: no client fails; every transition is logged,
/// alternating, with proper streaks; once it stays up it rejoins.
#[test]
fn flapping_backend_never_fails_clients() {
    const PERIOD: Duration = Duration::from_millis(300);
    const FLAPPING: Duration = Duration::from_secs(10);
    let b1 = EchoBackend::tagged("b1");
    let b3 = EchoBackend::tagged("b3");
    let flapper = EchoBackend::tagged("flap");
    let flap_addr = flapper.addr();
    let listener = format!("algorithm: round_robin\nconnect_attempts: 3\n{HC}");
    let lb = start_lb(
        &config(
            "",
            &listener,
            &primaries(&[b1.addr(), flap_addr, b3.addr()]),
        ),
        "info",
    );
    let load = Load::start(lb.listener_addr("t"), 2, Duration::from_millis(3));
    assert!(
        wait_until(WAIT, || load.count("flap") >= 3),
        "flapper serves at first"
    );

    let gate = load.gate();
    let flapping = thread::spawn(move || {
        let mut f = flapper;
        let end = Instant::now() + FLAPPING;
        let mut toggles = 0;
        while Instant::now() < end {
            thread::sleep(PERIOD);
            if f.listening() {
                // Between client connections: established ones are never cut, and no
                // client's backend connect sits in the accept queue being closed.
                let _paused = gate.write().unwrap_or_else(|e| e.into_inner());
                f.close_listener();
            } else {
                f.reopen();
            }
            toggles += 1;
        }
        if !f.listening() {
            f.reopen();
            toggles += 1;
        }
        (f, toggles)
    });
    let (flapper, toggles) = flapping.join().expect("flapping thread");

    // Listening for good now: the last transition is (or becomes) up.
    assert!(
        wait_until(WAIT, || flips(&lb, flap_addr).last().is_none_or(|f| f.up)),
        "flapper back for good but not marked up; output:\n{}",
        lb.logs().join("\n")
    );
    let served = flapper.client_conns();
    assert!(
        wait_until(WAIT, || flapper.client_conns() >= served + 3),
        "flapper gets clients again"
    );
    let log = load.finish();
    let fl = flips(&lb, flap_addr);
    let downs = fl.iter().filter(|f| !f.up).count();
    let passive = fl.iter().filter(|f| f.passive).count();
    eprintln!(
        "flapping {toggles} toggles in {FLAPPING:?}: {} transitions logged ({downs} down, {} up, {passive} passive); \
         {} clients, {} failures, max latency {:.1} ms, {:?}",
        fl.len(),
        fl.len() - downs,
        log.tags.len() + log.failures.len(),
        log.failures.len(),
        ms(log.max_latency),
        tag_counts(&log.tags)
    );
    assert!(
        log.failures.is_empty(),
        "client failures: {:#?}",
        log.failures
    );
    assert!(
        downs >= 1,
        "a backend refusing for 300 ms at a time under load must be marked down at least once"
    );
    assert_flip_sequence(&fl, RISE, FALL);
    for other in [b1.addr(), b3.addr()] {
        assert!(flips(&lb, other).is_empty(), "{other} must stay up");
    }
}

// ---------------------------------------------------------------- 8. metrics

/// `ringlb_backend_up` and `/status` follow a kill and a restart.
#[test]
fn backend_up_metric_follows_kill_and_restart() {
    let b1 = EchoBackend::tagged("b1");
    let b2 = EchoBackend::tagged("b2");
    let b2_addr = b2.addr();
    let listener = format!("connect_attempts: 2\n{HC}");
    let lb = start_lb(
        &config(
            "admin: 127.0.0.1:0\n",
            &listener,
            &primaries(&[b1.addr(), b2_addr]),
        ),
        "info",
    );
    let series = format!("ringlb_backend_up{{listener=\"t\",backend=\"{b2_addr}\"}}");
    let other = format!(
        "ringlb_backend_up{{listener=\"t\",backend=\"{}\"}}",
        b1.addr()
    );
    let status_up = || -> Option<bool> {
        let (code, body) = lb.http_get("/status");
        assert_eq!(code, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).expect("/status is JSON");
        v["listeners"][0]["backends"]
            .as_array()?
            .iter()
            .find(|b| b["addr"] == b2_addr.to_string())?["up"]
            .as_bool()
    };
    assert_eq!(lb.metric(&series), Some(1.0), "{series} at start");
    assert_eq!(status_up(), Some(true));

    let mark = lb.log_mark();
    drop(b2);
    wait_flip(&lb, mark, b2_addr, false, WAIT);
    assert_eq!(
        lb.metric(&series),
        Some(0.0),
        "{series} after the down line"
    );
    assert_eq!(lb.metric(&other), Some(1.0), "{other}");
    assert_eq!(status_up(), Some(false));

    let mark = lb.log_mark();
    let _b2 = EchoBackend::tagged_at(b2_addr, "b2");
    wait_flip(&lb, mark, b2_addr, true, WAIT);
    assert_eq!(lb.metric(&series), Some(1.0), "{series} after the up line");
    assert_eq!(status_up(), Some(true));
    eprintln!("{series}: 1 -> 0 -> 1 across kill and restart; /status agrees");
}
