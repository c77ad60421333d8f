//! Hitless SIGHUP reload through a running `ringlb`: under continuous load (new connections
//! from several threads, long-lived echo connections and UDP sessions) while 50 reloads
//! alternate two valid configs; rejected reloads; removed and re-bound listeners; health
//! state carried over; `workers`/`admin` needing a restart. The load test prints every
//! figure it measures (run with `--nocapture`).

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use ringlb_testkit::*;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_ringlb"))
}

const WAIT: Duration = Duration::from_secs(10);

/// The log line after `mark` that contains `needle` (waiting for it), with the logger's
/// `[timestamp LEVEL target] ` prefix removed.
fn line_after(lb: &Ringlb, mark: usize, needle: &str) -> String {
    assert!(
        lb.wait_for_log_after(mark, needle, WAIT),
        "no log line with {needle:?} after line {mark}; log:\n{}",
        lb.logs()[mark..].join("\n")
    );
    let logs = lb.logs();
    let line = logs[mark..]
        .iter()
        .find(|l| l.contains(needle))
        .expect("line seen by wait_for_log_after");
    strip_prefix(line).to_string()
}

fn strip_prefix(line: &str) -> &str {
    match (line.starts_with('['), line.find("] ")) {
        (true, Some(i)) => &line[i + 2..],
        _ => line,
    }
}

/// Reloads `yaml` and returns the `reload applied: …` summary line.
fn reload_ok(lb: &mut Ringlb, yaml: &str) -> String {
    let mark = lb.reload(yaml);
    let line = line_after(lb, mark, "reload ");
    assert!(
        line.starts_with("reload applied: "),
        "reload not applied: {line}\n{}",
        lb.logs()[mark..].join("\n")
    );
    line
}

/// Connects, writes `payload`, reads it back; any failure is an error, never a panic.
fn echo_once(addr: SocketAddr, payload: &[u8]) -> Result<(), Failure> {
    let mut c =
        TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(Failure::Connect)?;
    c.set_read_timeout(Some(IO_TIMEOUT))
        .map_err(Failure::Other)?;
    c.set_write_timeout(Some(IO_TIMEOUT))
        .map_err(Failure::Other)?;
    echo_on(&mut c, payload)
}

fn echo_on(c: &mut TcpStream, payload: &[u8]) -> Result<(), Failure> {
    c.write_all(payload).map_err(Failure::from_io)?;
    let mut back = vec![0u8; payload.len()];
    let mut got = 0;
    while got < back.len() {
        match c.read(&mut back[got..]) {
            Ok(0) => {
                return Err(Failure::ShortRead {
                    got,
                    want: payload.len(),
                })
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Failure::from_io(e)),
        }
    }
    if back != payload {
        return Err(Failure::Mismatch);
    }
    Ok(())
}

/// Why one connection of the load failed.
enum Failure {
    Connect(io::Error),
    Reset(io::Error),
    ShortRead { got: usize, want: usize },
    Timeout,
    Mismatch,
    Other(io::Error),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Connect(e) => write!(f, "connect: {e}"),
            Failure::Reset(e) => write!(f, "reset: {e}"),
            Failure::ShortRead { got, want } => {
                write!(f, "short read: {got} of {want} bytes, then EOF")
            }
            Failure::Timeout => write!(f, "no echo within {IO_TIMEOUT:?}"),
            Failure::Mismatch => write!(f, "echo differs from what was sent"),
            Failure::Other(e) => write!(f, "{e}"),
        }
    }
}

impl Failure {
    fn from_io(e: io::Error) -> Failure {
        match e.kind() {
            io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionAborted => Failure::Reset(e),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => Failure::Timeout,
            _ => Failure::Other(e),
        }
    }
}

/// Counters of the connection loop, shared by its threads.
#[derive(Default)]
struct LoadStats {
    ok: AtomicU64,
    connect: AtomicU64,
    reset: AtomicU64,
    short_read: AtomicU64,
    timeout: AtomicU64,
    mismatch: AtomicU64,
    other: AtomicU64,
    /// The first few failures, verbatim, for the failure message.
    samples: Mutex<Vec<String>>,
}

impl LoadStats {
    fn record(&self, r: Result<(), Failure>) {
        let counter = match &r {
            Ok(()) => &self.ok,
            Err(Failure::Connect(_)) => &self.connect,
            Err(Failure::Reset(_)) => &self.reset,
            Err(Failure::ShortRead { .. }) => &self.short_read,
            Err(Failure::Timeout) => &self.timeout,
            Err(Failure::Mismatch) => &self.mismatch,
            Err(Failure::Other(_)) => &self.other,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        if let Err(f) = r {
            let mut s = self.samples.lock().unwrap();
            if s.len() < 20 {
                s.push(f.to_string());
            }
        }
    }

    fn failed(&self) -> u64 {
        [
            &self.connect,
            &self.reset,
            &self.short_read,
            &self.timeout,
            &self.mismatch,
            &self.other,
        ]
        .iter()
        .map(|c| c.load(Ordering::Relaxed))
        .sum()
    }

    fn attempts(&self) -> u64 {
        self.ok.load(Ordering::Relaxed) + self.failed()
    }

    fn summary(&self) -> String {
        format!(
            "{} connections: {} ok, {} failed (connect {}, reset {}, short read {}, timeout {}, mismatch {}, other {}); first failures: {:?}",
            self.attempts(),
            self.ok.load(Ordering::Relaxed),
            self.failed(),
            self.connect.load(Ordering::Relaxed),
            self.reset.load(Ordering::Relaxed),
            self.short_read.load(Ordering::Relaxed),
            self.timeout.load(Ordering::Relaxed),
            self.mismatch.load(Ordering::Relaxed),
            self.other.load(Ordering::Relaxed),
            self.samples.lock().unwrap()
        )
    }
}

/// Client threads making new connections to `addr` until `stop`: connect, send, read
/// back, close.
fn start_load(
    addr: SocketAddr,
    threads: usize,
    stats: Arc<LoadStats>,
    stop: Arc<AtomicBool>,
) -> Vec<thread::JoinHandle<()>> {
    (0..threads)
        .map(|t| {
            let (stats, stop) = (Arc::clone(&stats), Arc::clone(&stop));
            thread::Builder::new()
                .name(format!("load-{t}"))
                .spawn(move || {
                    let mut seq = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let payload = format!("thread {t} connection {seq}\n");
                        stats.record(echo_once(addr, payload.as_bytes()));
                        seq += 1;
                    }
                })
                .unwrap()
        })
        .collect()
}

/// Connections opened by client requests, not by health checks (which send nothing).
fn client_conns(b: &EchoBackend) -> usize {
    b.conns().iter().filter(|c| c.bytes_in > 0).count()
}

/// Config A: `main` by weighted round robin over b1 (1) and b2 (3); UDP `dgram` over u1
/// (1) and u2 (3).
fn config_a(b1: SocketAddr, b2: SocketAddr, u: &[SocketAddr; 3]) -> String {
    format!(
        "access_log: false\n\
         listeners:\n\
         \x20 - name: main\n\
         \x20   bind: 127.0.0.1:0\n\
         \x20   algorithm: weighted_round_robin\n\
         \x20   health_check: {{interval: 200ms, timeout: 200ms}}\n\
         \x20   backends:\n\
         \x20     - {{addr: {b1}, weight: 1}}\n\
         \x20     - {{addr: {b2}, weight: 3}}\n\
         \x20 - name: dgram\n\
         \x20   bind: 127.0.0.1:0\n\
         \x20   protocol: udp\n\
         \x20   algorithm: weighted_round_robin\n\
         \x20   backends:\n\
         \x20     - {{addr: {}, weight: 1}}\n\
         \x20     - {{addr: {}, weight: 3}}\n",
        u[0], u[1]
    )
}

/// Config B: `main` by least connections over b1 (3), b2 (1), b3 (2), plus listener `extra`;
/// UDP `dgram` by least connections over u1 (3), u2 (1), u3 (2).
fn config_b(b1: SocketAddr, b2: SocketAddr, b3: SocketAddr, u: &[SocketAddr; 3]) -> String {
    format!(
        "access_log: false\n\
         listeners:\n\
         \x20 - name: main\n\
         \x20   bind: 127.0.0.1:0\n\
         \x20   algorithm: least_connections\n\
         \x20   health_check: {{interval: 200ms, timeout: 200ms}}\n\
         \x20   backends:\n\
         \x20     - {{addr: {b1}, weight: 3}}\n\
         \x20     - {{addr: {b2}, weight: 1}}\n\
         \x20     - {{addr: {b3}, weight: 2}}\n\
         \x20 - name: extra\n\
         \x20   bind: 127.0.0.1:0\n\
         \x20   backends:\n\
         \x20     - addr: {b1}\n\
         \x20 - name: dgram\n\
         \x20   bind: 127.0.0.1:0\n\
         \x20   protocol: udp\n\
         \x20   algorithm: least_connections\n\
         \x20   backends:\n\
         \x20     - {{addr: {}, weight: 3}}\n\
         \x20     - {{addr: {}, weight: 1}}\n\
         \x20     - {{addr: {}, weight: 2}}\n",
        u[0], u[1], u[2]
    )
}

const RELOADS: u64 = 50;
const LONG_LIVED: usize = 100;
/// Long-lived connections on `extra`, the listener every other reload removes.
const LONG_LIVED_EXTRA: usize = 10;
/// UDP sessions kept alive through every reload.
const UDP_SESSIONS: usize = 12;
const MIN_CONNECTIONS: u64 = 20_000;
const LOAD_THREADS: usize = 4;
const LOAD_DEADLINE: Duration = Duration::from_secs(300);

#[test]
fn fifty_reloads_under_load_fail_no_connection() {
    let (b1, b2, b3) = (
        EchoBackend::start(),
        EchoBackend::start(),
        EchoBackend::start(),
    );
    let (a1, a2, a3) = (b1.addr(), b2.addr(), b3.addr());
    let udp = [
        UdpEchoBackend::tagged("u1"),
        UdpEchoBackend::tagged("u2"),
        UdpEchoBackend::tagged("u3"),
    ];
    let u = [udp[0].addr(), udp[1].addr(), udp[2].addr()];
    let yaml_a = config_a(a1, a2, &u);
    let yaml_b = config_b(a1, a2, a3, &u);
    let mut lb = Ringlb::start(bin(), &yaml_b);
    let main = lb.listener_addr("main");

    // Long-lived connections, opened while b3 and `extra` exist so that some of them sit
    // on the backend and the listener that odd reloads remove.
    let mut long_lived: Vec<(String, TcpStream)> = Vec::new();
    for i in 0..LONG_LIVED {
        let mut c = connect(main);
        assert!(
            echo_on(&mut c, format!("long {i} hello\n").as_bytes()).is_ok(),
            "long-lived echo"
        );
        long_lived.push((format!("main#{i}"), c));
    }
    let extra = lb.listener_addr("extra");
    for i in 0..LONG_LIVED_EXTRA {
        let mut c = connect(extra);
        assert!(
            echo_on(&mut c, format!("extra {i} hello\n").as_bytes()).is_ok(),
            "long-lived echo"
        );
        long_lived.push((format!("extra#{i}"), c));
    }
    let on_b3 = b3.open();
    assert!(
        on_b3 > 0,
        "least_connections put no long-lived connection on b3"
    );
    // UDP sessions, each remembering the backend it is bound to.
    let dgram = lb.listener_addr("dgram");
    let udp_ping = |sock: &UdpSocket, payload: &str| -> Result<String, String> {
        let reply = udp_roundtrip(sock, dgram, payload.as_bytes()).map_err(|e| e.to_string())?;
        let (tag, body) = split_tag(&reply);
        if body != payload.as_bytes() {
            return Err(format!("reply {reply:?} does not echo {payload:?}"));
        }
        Ok(tag)
    };
    let sessions: Vec<(UdpSocket, String)> = (0..UDP_SESSIONS)
        .map(|i| {
            let sock = udp_client();
            let tag = udp_ping(&sock, &format!("session {i} hello")).expect("udp session");
            (sock, tag)
        })
        .collect();
    let udp_on_u3 = sessions.iter().filter(|(_, t)| t == "u3").count();
    assert!(
        udp_on_u3 > 0,
        "no UDP session on u3: {:?}",
        sessions.iter().map(|s| &s.1).collect::<Vec<_>>()
    );
    let mut udp_pings = 0;

    let stats = Arc::new(LoadStats::default());
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let threads = start_load(main, LOAD_THREADS, Arc::clone(&stats), Arc::clone(&stop));
    // Spread the reloads evenly over the connections: reload i once i/50 of the minimum
    // has been made.
    let step = MIN_CONNECTIONS / RELOADS;
    let wait_for = |n: u64| {
        let ok = wait_until(LOAD_DEADLINE.saturating_sub(started.elapsed()), || {
            stats.attempts() >= n
        });
        if !ok {
            stop.store(true, Ordering::Relaxed);
            panic!("load too slow: wanted {n} connections; {}", stats.summary());
        }
    };
    let mut applied = 0;
    let mut rejected = 0;
    let mut probes = 0;
    for i in 1..=RELOADS {
        wait_for(i * step);
        if i == RELOADS / 2 {
            // A broken file in the middle: rejected, and the load does not notice.
            let mark =
                lb.reload("listeners:\n  - name: main\n    bind: 127.0.0.1:0\n    backends: []\n");
            let line = line_after(&lb, mark, "reload ");
            assert!(line.starts_with("reload rejected: "), "{line}");
            line_after(&lb, mark, "error: listeners[0].backends");
            rejected += 1;
        }
        let odd = i % 2 == 1;
        let summary = reload_ok(&mut lb, if odd { &yaml_a } else { &yaml_b });
        applied += 1;
        let expected: Vec<String> = if odd {
            vec![
                "added [] removed [extra] changed [main (".into(),
                format!("backends removed {a3}"),
                format!("{a1} weight 3→1"),
                format!("{a2} weight 1→3"),
                "algorithm least_connections→weighted_round_robin".into(),
                format!("dgram (backends removed {}", u[2]),
            ]
        } else {
            vec![
                "added [extra] removed [] changed [main (".into(),
                format!("backends added {a3}"),
                format!("{a1} weight 1→3"),
                format!("{a2} weight 3→1"),
                "algorithm weighted_round_robin→least_connections".into(),
                format!("dgram (backends added {}", u[2]),
            ]
        };
        for e in &expected {
            assert!(
                summary.contains(e.as_str()),
                "reload {i}: summary {summary:?} lacks {e:?}"
            );
        }
        // A couple of long-lived connections echo after every reload (all of them at the end).
        for k in 0..2 {
            let idx = (2 * i as usize + k) % long_lived.len();
            let (name, c) = &mut long_lived[idx];
            if let Err(f) = echo_on(c, format!("after reload {i}\n").as_bytes()) {
                stop.store(true, Ordering::Relaxed);
                panic!("long-lived {name} broke after reload {i}: {f}");
            }
            probes += 1;
        }
        // Every UDP session still reaches the backend it started on, even one a reload
        // removed (its sessions stay until they expire).
        for (k, (sock, tag)) in sessions.iter().enumerate() {
            match udp_ping(sock, &format!("session {k} after reload {i}")) {
                Ok(t) if t == *tag => udp_pings += 1,
                other => {
                    stop.store(true, Ordering::Relaxed);
                    panic!("UDP session {k} (on {tag}) after reload {i}: {other:?}");
                }
            }
        }
    }
    wait_for(MIN_CONNECTIONS + step);
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    let elapsed = started.elapsed();

    let mut long_failed = Vec::new();
    for (name, c) in &mut long_lived {
        if let Err(f) = echo_on(c, b"still there?\n") {
            long_failed.push(format!("{name}: {f}"));
        }
    }
    let attempts = stats.attempts();
    println!(
        "reload under load: {applied} reloads applied + {rejected} rejected in {:.1}s; {}; {:.0} connections/s over {LOAD_THREADS} threads; \
         long-lived: {} of {} still echo ({} on main, {} on the removed-and-re-added `extra`, {on_b3} on b3 which odd reloads remove), {probes} echo probes between reloads; \
         {UDP_SESSIONS} UDP sessions ({udp_on_u3} on u3, which odd reloads remove) kept their backend through {udp_pings} pings after reloads; \
         client connections per backend: b1 {} b2 {} b3 {}",
        elapsed.as_secs_f64(),
        stats.summary(),
        attempts as f64 / elapsed.as_secs_f64(),
        long_lived.len() - long_failed.len(),
        long_lived.len(),
        LONG_LIVED,
        LONG_LIVED_EXTRA,
        client_conns(&b1),
        client_conns(&b2),
        client_conns(&b3),
    );
    assert_eq!(stats.failed(), 0, "{}", stats.summary());
    assert!(attempts >= MIN_CONNECTIONS, "{attempts} connections");
    assert!(
        long_failed.is_empty(),
        "long-lived connections broken: {long_failed:?}"
    );
    assert_eq!(lb.count_log("reload applied"), RELOADS as usize);
    assert_eq!(lb.count_log("reload rejected"), 1);
    // b3 served new connections during the B phases, beyond its long-lived ones.
    assert!(
        client_conns(&b3) > on_b3,
        "b3 never got new connections: {}",
        client_conns(&b3)
    );
    assert_eq!(
        lb.count_log("backend down"),
        0,
        "a reload flapped health: {:?}",
        lb.logs()
    );
    // A health check's connection may be open for an instant (connect, then reset): wait
    // for a moment without one rather than count it.
    let open = || b1.open() + b2.open() + b3.open();
    assert!(
        wait_until(Duration::from_secs(10), || open() == long_lived.len()),
        "only the long-lived remain open: {} open, {} long-lived",
        open(),
        long_lived.len()
    );
}

/// One listener `t` with backends tagged in `tags`, round robin.
fn tagged_yaml(backends: &[&EchoBackend]) -> String {
    let mut y = String::from(
        "access_log: false\nlisteners:\n  - name: t\n    bind: 127.0.0.1:0\n    backends:\n",
    );
    for b in backends {
        y.push_str(&format!("      - addr: {}\n", b.addr()));
    }
    y
}

fn tag_of(addr: SocketAddr) -> String {
    let mut c = connect(addr);
    let tag = read_line_tag(&mut c);
    assert_echo(&mut c, b"ping");
    tag
}

#[test]
fn invalid_reload_is_rejected_with_check_messages_and_old_config_serves() {
    let (b1, b2) = (EchoBackend::tagged("b1"), EchoBackend::tagged("b2"));
    let mut lb = Ringlb::start(bin(), &tagged_yaml(&[&b1]));
    let addr = lb.listener_addr("t");
    let mut held = connect(addr);
    assert_eq!(read_line_tag(&mut held), "b1");

    // Moves to b2 but with two mistakes: nothing of it may apply.
    let broken = format!(
        "access_log: false\nlisteners:\n  - name: t\n    bind: 127.0.0.1:0\n    algorithm: fastest\n    backends:\n      - addr: {}\n      - addr: 10.0.0.1\n",
        b2.addr()
    );
    let (code, check) = Ringlb::check(bin(), &broken);
    assert_eq!(code, 2, "{check}");
    let check_lines: Vec<&str> = check.lines().filter(|l| l.starts_with("error: ")).collect();
    assert_eq!(check_lines.len(), 2, "{check}");

    for (what, yaml) in [
        ("two problems", broken.as_str()),
        ("a syntax error", "listeners: [\n"),
    ] {
        let mark = lb.reload(yaml);
        let rejected = line_after(&lb, mark, "reload ");
        assert!(
            rejected.starts_with("reload rejected: "),
            "{what}: {rejected}"
        );
        assert!(
            rejected.contains("still serving the previous configuration"),
            "{rejected}"
        );
        assert!(lb.wait_for_log_after(mark, "error: ", WAIT));
        if what == "two problems" {
            assert!(rejected.contains("has 2 problem(s)"), "{rejected}");
            // The same messages `ringlb check` prints, in the same order.
            assert!(wait_until(WAIT, || lb.logs()[mark..]
                .iter()
                .filter(|l| l.contains("] error: "))
                .count()
                >= 2));
            let logged: Vec<String> = lb.logs()[mark..]
                .iter()
                .filter(|l| l.contains("] error: "))
                .map(|l| strip_prefix(l).to_string())
                .collect();
            assert_eq!(
                logged, check_lines,
                "reload errors must be the `check` messages"
            );
        }
        // Still serving, with the old configuration: b1 only, and the held connection lives.
        for _ in 0..4 {
            assert_eq!(
                tag_of(addr),
                "b1",
                "{what}: the rejected config must not apply"
            );
        }
        assert_echo(&mut held, what.as_bytes());
    }
    assert_eq!(lb.count_log("reload applied"), 0);

    // A valid file afterwards applies normally.
    let summary = reload_ok(&mut lb, &tagged_yaml(&[&b2]));
    assert!(
        summary.contains(&format!("backends added {}", b2.addr())),
        "{summary}"
    );
    assert!(
        summary.contains(&format!("backends removed {}", b1.addr())),
        "{summary}"
    );
    for _ in 0..4 {
        assert_eq!(tag_of(addr), "b2");
    }
    // The connection to the removed backend stays until it ends.
    assert_echo(&mut held, b"b1 was removed, this connection was not");
}

/// Waits until a connect to `addr` is refused; returns how long that took and how many
/// connects still completed a handshake before that.
fn wait_refused(addr: SocketAddr) -> (Duration, usize) {
    let started = Instant::now();
    let mut handshakes = 0;
    let refused = wait_until(WAIT, || {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
            Err(e) => e.kind() == io::ErrorKind::ConnectionRefused,
            Ok(_) => {
                handshakes += 1;
                false
            }
        }
    });
    assert!(
        refused,
        "{addr} still accepts connections {WAIT:?} after the reload"
    );
    (started.elapsed(), handshakes)
}

#[test]
fn removed_listener_stops_accepting_and_drains() {
    let (b1, b2) = (EchoBackend::tagged("keep"), EchoBackend::tagged("gone"));
    let both = format!(
        "access_log: false\nlisteners:\n  - name: keep\n    bind: 127.0.0.1:0\n    backends:\n      - addr: {}\n  - name: gone\n    bind: 127.0.0.1:0\n    backends:\n      - addr: {}\n",
        b1.addr(),
        b2.addr()
    );
    let only_keep = format!(
        "access_log: false\nlisteners:\n  - name: keep\n    bind: 127.0.0.1:0\n    backends:\n      - addr: {}\n",
        b1.addr()
    );
    let mut lb = Ringlb::start(bin(), &both);
    let (keep, gone) = (lb.listener_addr("keep"), lb.listener_addr("gone"));
    let mut held: Vec<TcpStream> = (0..3)
        .map(|_| {
            let mut c = connect(gone);
            assert_eq!(read_line_tag(&mut c), "gone");
            c
        })
        .collect();

    let summary = reload_ok(&mut lb, &only_keep);
    assert!(
        summary.contains("added [] removed [gone] changed []"),
        "{summary}"
    );
    let (took, handshakes) = wait_refused(gone);
    println!(
        "removed listener: new connects refused {took:?} after the reload summary \
         ({handshakes} probe connects completed a handshake before that)"
    );
    for _ in 0..20 {
        let e = TcpStream::connect_timeout(&gone, Duration::from_secs(1))
            .map(|_| ())
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused, "{e}");
    }
    // Established connections keep working and end cleanly when the client ends them.
    for (i, c) in held.iter_mut().enumerate() {
        for round in 0..3 {
            assert_echo(c, format!("draining {i} round {round}").as_bytes());
        }
    }
    assert_eq!(tag_of(keep), "keep");
    for c in held.drain(..) {
        c.shutdown(std::net::Shutdown::Write).unwrap();
        let mut c = c;
        let mut rest = Vec::new();
        c.read_to_end(&mut rest)
            .expect("clean end of a drained connection");
        assert!(rest.is_empty());
    }
    assert!(b2.wait_ends(3, WAIT));
    // (A probe of wait_refused may have been accepted in the instant before the workers
    // processed the removal; it was closed with a FIN too.)
    assert!(
        b2.ends().iter().all(|e| *e == ConnEnd::Eof),
        "drained connections end with FIN, not RST: {:?}",
        b2.ends()
    );

    // Adding it back binds a fresh socket that serves.
    let summary = reload_ok(&mut lb, &both);
    assert!(summary.contains("added [gone] removed []"), "{summary}");
    assert_eq!(tag_of(lb.listener_addr("gone")), "gone");
}

#[test]
fn changed_bind_rebinds_the_listener() {
    let backend = EchoBackend::tagged("mv");
    // A port that was free a moment ago, so the first bind is an explicit address.
    let first_port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let at = |bind: &str| {
        format!(
            "access_log: false\nlisteners:\n  - name: mv\n    bind: {bind}\n    backends:\n      - addr: {}\n",
            backend.addr()
        )
    };
    let mut lb = Ringlb::start(bin(), &at(&format!("127.0.0.1:{first_port}")));
    let old = lb.listener_addr("mv");
    assert_eq!(old.port(), first_port);
    let mut held = connect(old);
    assert_eq!(read_line_tag(&mut held), "mv");

    let summary = reload_ok(&mut lb, &at("127.0.0.1:0"));
    assert!(
        summary.contains("added [mv] removed [mv (rebound)]"),
        "{summary}"
    );
    let new = lb.listener_addr("mv");
    assert_ne!(new, old, "a changed bind must re-bind");
    assert_eq!(tag_of(new), "mv");
    let (took, handshakes) = wait_refused(old);
    println!(
        "re-bound listener: old address refuses new connects {took:?} after the reload \
         ({handshakes} probe connects completed a handshake before that)"
    );
    assert_echo(
        &mut held,
        b"the old socket's connection survives the re-bind",
    );
}

#[test]
fn health_state_of_surviving_backends_carries_over() {
    let alive = EchoBackend::tagged("alive");
    let dead = refused_addr();
    let yaml = |alive_weight: u32, extra: Option<&EchoBackend>| {
        let mut y = format!(
            "access_log: true\nlisteners:\n  - name: t\n    bind: 127.0.0.1:0\n    algorithm: weighted_round_robin\n    connect_attempts: 1\n    \
             health_check: {{interval: 1s, timeout: 500ms, rise: 2, fall: 1}}\n    backends:\n      - {{addr: {}, weight: {alive_weight}}}\n      - {{addr: {dead}, weight: 1}}\n",
            alive.addr()
        );
        if let Some(b) = extra {
            y.push_str(&format!("      - {{addr: {}, weight: 1}}\n", b.addr()));
        }
        y
    };
    let mut lb = Ringlb::start(bin(), &yaml(1, None));
    assert!(
        lb.wait_for_log(&format!("backend down: listener=t backend={dead}"), WAIT),
        "the dead backend never went down"
    );
    let addr = lb.listener_addr("t");
    // Reweight and add a backend. Were the dead backend's state reset to `up` (the initial
    // state), the very next connections would be sent to it and, with connect_attempts 1,
    // be reset (denied_no_backend) until a check or a passive failure marks it down again.
    let added = EchoBackend::tagged("added");
    let summary = reload_ok(&mut lb, &yaml(2, Some(&added)));
    assert!(
        summary.contains(&format!("{} weight 1→2", alive.addr())),
        "{summary}"
    );
    let mark = lb.log_mark();
    let mut tags = Vec::new();
    for _ in 0..12 {
        let c = connect_with_timeout(addr, WAIT);
        let mut c = c.expect("connect");
        let mut line = String::new();
        let mut b = [0u8; 1];
        // Read the tag byte by byte; a reset here means the dead backend was picked.
        loop {
            match c.read(&mut b) {
                Ok(1) if b[0] == b'\n' => break,
                Ok(1) => line.push(b[0] as char),
                other => panic!("connection after the reload failed ({other:?}): the dead backend came back up; log:\n{}", lb.logs().join("\n")),
            }
        }
        tags.push(line);
    }
    assert!(!lb.logs()[mark..]
        .iter()
        .any(|l| l.contains("end=denied_no_backend")));
    assert!(
        tags.iter().all(|t| t == "alive" || t == "added"),
        "{tags:?}"
    );
    assert!(
        tags.iter().any(|t| t == "added"),
        "a backend added by reload starts up: {tags:?}"
    );
    assert_eq!(
        lb.count_log(&format!("backend up: listener=t backend={dead}")),
        0
    );
}

/// Renaming a listener while keeping its address (remove `old`, add `new` on the same
/// port in one reload) must not refuse or reset a single new connection: the new sockets
/// join the port before the old ones leave.
///
/// ringlb keeps the sockets of a TCP listener renamed on the same bind (closing them would
/// reset the connections queued there while new sockets join the port).
#[test]
fn renamed_listener_on_the_same_port_refuses_nothing() {
    let backend = EchoBackend::start();
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let named = |name: &str| {
        format!(
            "access_log: false\nlisteners:\n  - name: {name}\n    bind: 127.0.0.1:{port}\n    backends:\n      - addr: {}\n",
            backend.addr()
        )
    };
    let mut lb = Ringlb::start(bin(), &named("old"));
    let addr = lb.listener_addr("old");
    let stats = Arc::new(LoadStats::default());
    let stop = Arc::new(AtomicBool::new(false));
    let threads = start_load(addr, 2, Arc::clone(&stats), Arc::clone(&stop));
    let mut reloads = 0;
    for round in 0..6 {
        let before = stats.attempts();
        assert!(
            wait_until(WAIT, || stats.attempts() >= before + 300),
            "load stalled: {}",
            stats.summary()
        );
        let (from, name) = if round % 2 == 0 {
            ("old", "new")
        } else {
            ("new", "old")
        };
        let summary = reload_ok(&mut lb, &named(name));
        // Renamed in place: the sockets stay, nothing is added or removed.
        assert!(
            summary.contains(&format!("renamed [{from}→{name}]")),
            "{summary}"
        );
        reloads += 1;
    }
    let before = stats.attempts();
    assert!(
        wait_until(WAIT, || stats.attempts() >= before + 1000),
        "load stalled: {}",
        stats.summary()
    );
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    println!(
        "rename on the same port: {reloads} reloads; {}",
        stats.summary()
    );
    assert_eq!(stats.failed(), 0, "{}", stats.summary());
}

/// `workers` and `admin` cannot change without a restart: a reload says so, keeps both as
/// they are, and applies the rest of the file.
#[test]
fn workers_and_admin_changes_need_a_restart() {
    let (b1, b2) = (EchoBackend::tagged("b1"), EchoBackend::tagged("b2"));
    let file = |workers: u32, admin: &str, b: &EchoBackend| {
        format!(
            "workers: {workers}\n{admin}access_log: false\nlisteners:\n  - name: t\n    bind: 127.0.0.1:0\n    backends:\n      - addr: {}\n",
            b.addr()
        )
    };
    let mut lb = Ringlb::start(bin(), &file(2, "admin: 127.0.0.1:0\n", &b1));
    let admin = lb.admin_addr();
    let workers = |lb: &Ringlb| {
        lb.thread_names()
            .iter()
            .filter(|n| n.starts_with("ringlb-w"))
            .count()
    };
    assert_eq!(workers(&lb), 2, "{:?}", lb.thread_names());
    let mark = lb.log_mark();
    let summary = reload_ok(&mut lb, &file(1, "", &b2));
    let tail = lb.logs()[mark..].join("\n");
    assert!(
        tail.contains("`workers` changes need a restart; keeping 2 workers"),
        "{tail}"
    );
    assert!(tail.contains("`admin` changes need a restart"), "{tail}");
    assert!(
        summary.contains(&format!("backends added {}", b2.addr())),
        "{summary}"
    );
    assert_eq!(workers(&lb), 2, "{:?}", lb.thread_names());
    assert!(
        TcpStream::connect_timeout(&admin, Duration::from_secs(2)).is_ok(),
        "admin endpoint {admin} must keep listening"
    );
    assert_eq!(tag_of(lb.listener_addr("t")), "b2");
}
