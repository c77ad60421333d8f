//! Health checks and failover end to end, through a running `ringlb` process: a backend
//! killed under load, backups, all backends down, passive detection, blackholed backends
//! (loopback and a network namespace), a flapping backend, and `ringlb_backend_up`.
//!
//! Timings are measured from ringlb's own log timestamps (env_logger, microseconds, UTC)
//! against the test's wall clock, so a slow log reader does not inflate them. Every bound
//! is the documented one (docs/health.md) plus [`SLACK`] for a loaded 2-core machine.
//!
//! A backend is only killed or flapped while no client connection is in flight (the
//! [`Load`] gate): a connection the backend itself accepted and then resets cannot be
//! saved by any balancer, and is not what these tests are about.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockWriteGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

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

/// Connect failures (debug, per attempt) come from the data plane's TCP module.
const LOG_DEBUG_CONNECTS: &str = "info,ringlb_dataplane::tcp=debug";

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

/// The value of the Prometheus sample whose name and labels are exactly `series`
/// (e.g. `ringlb_backend_up{listener="t",backend="127.0.0.1:1"}`).
fn metric(lb: &Ringlb, series: &str) -> Option<f64> {
    let (status, body) = lb.http_get("/metrics");
    assert_eq!(status, 200, "GET /metrics: {body}");
    body.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

// ---------------------------------------------------------------- log parsing

/// The timestamp env_logger puts first: `[2026-11-24T15:04:18.639806Z LEVEL target] …`.
fn log_time(line: &str) -> Option<SystemTime> {
    let ts = line.strip_prefix('[')?.split_whitespace().next()?;
    let (date, time) = ts.strip_suffix('Z')?.split_once('T')?;
    let mut d = date.splitn(3, '-').map(|p| p.parse::<i64>());
    let (y, mo, da) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let (hms, frac) = time.split_once('.').unwrap_or((time, ""));
    let mut t = hms.splitn(3, ':').map(|p| p.parse::<i64>());
    let (h, mi, s) = (t.next()?.ok()?, t.next()?.ok()?, t.next()?.ok()?);
    if frac.len() > 9 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let nanos: u32 = if frac.is_empty() {
        0
    } else {
        format!("{frac:0<9}").parse().ok()?
    };
    let secs = days_from_civil(y, mo, da) * 86_400 + h * 3600 + mi * 60 + s;
    Some(UNIX_EPOCH + Duration::new(u64::try_from(secs).ok()?, nanos))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `b - a`, or zero if `b` is earlier (clock granularity).
fn since(a: SystemTime, b: SystemTime) -> Duration {
    b.duration_since(a).unwrap_or(Duration::ZERO)
}

/// One `backend up|down: …` line of the control plane.
#[derive(Clone, Debug)]
struct Flip {
    /// Index of the line in the captured output.
    idx: usize,
    at: SystemTime,
    up: bool,
    listener: String,
    backend: String,
    outcome: String,
    consecutive: u32,
    passive: bool,
}

fn parse_flip(idx: usize, line: &str) -> Option<Flip> {
    let (up, rest) = if let Some(p) = line.find("backend down: ") {
        (false, &line[p + "backend down: ".len()..])
    } else if let Some(p) = line.find("backend up: ") {
        (true, &line[p + "backend up: ".len()..])
    } else {
        return None;
    };
    let kv: HashMap<&str, &str> = rest
        .split_whitespace()
        .filter_map(|w| w.split_once('='))
        .collect();
    Some(Flip {
        idx,
        at: log_time(line)?,
        up,
        listener: kv.get("listener")?.to_string(),
        backend: kv.get("backend")?.to_string(),
        outcome: kv.get("outcome")?.to_string(),
        consecutive: kv.get("consecutive")?.parse().ok()?,
        passive: kv.get("passive") == Some(&"true"),
    })
}

/// Every transition of `backend` of listener "t" so far, in log order.
fn flips(lb: &Ringlb, backend: SocketAddr) -> Vec<Flip> {
    let label = backend.to_string();
    lb.logs()
        .iter()
        .enumerate()
        .filter_map(|(i, l)| parse_flip(i, l))
        .filter(|f| f.listener == "t" && f.backend == label)
        .collect()
}

/// Waits for the first `up`/down transition of `backend` logged at or after `mark`.
/// Panics with the output if none comes within `timeout`.
fn wait_flip(lb: &Ringlb, mark: usize, backend: SocketAddr, up: bool, timeout: Duration) -> Flip {
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

/// Times of the data plane's `listener t: connect to ADDR failed` lines (client connects
/// refused or timed out, one per attempt).
fn connect_failures(lb: &Ringlb, backend: SocketAddr) -> Vec<SystemTime> {
    let needle = format!("listener t: connect to {backend} failed");
    lb.logs()
        .iter()
        .filter(|l| l.contains(&needle))
        .filter_map(|l| log_time(l))
        .collect()
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
fn assert_flip_sequence(flips: &[Flip], rise: u32, fall: u32) {
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

// ---------------------------------------------------------------- a restartable backend

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One connection a [`TaggedEcho`] accepted.
#[derive(Clone, Debug)]
struct Rec {
    bytes_in: u64,
    ended: bool,
}

#[derive(Default)]
struct EchoShared {
    recs: Mutex<Vec<Rec>>,
    /// Clones of open connections, so Drop can shut them down.
    live: Mutex<HashMap<usize, TcpStream>>,
    handlers: Mutex<Vec<JoinHandle<()>>>,
}

struct Acceptor {
    listener: TcpListener,
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

/// A tagged echo backend (`TAG\n`, then echo) that can stop listening and listen again on
/// the same address — the kit's `EchoBackend` always binds a fresh port. Records every
/// connection in accept order: the prober's checks send nothing (`bytes_in == 0`), client
/// connections do. Drop closes the listener, shuts down open connections, joins threads.
struct TaggedEcho {
    addr: SocketAddr,
    tag: String,
    shared: Arc<EchoShared>,
    acceptor: Option<Acceptor>,
}

impl TaggedEcho {
    fn start(tag: &str) -> TaggedEcho {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        Self::on(l, tag)
    }

    /// Listens on exactly `addr` (std sets SO_REUSEADDR, so only a listener still open on
    /// it is in the way; retried briefly in case the previous one is still closing).
    fn bind(addr: SocketAddr, tag: &str) -> TaggedEcho {
        Self::on(bind_exact(addr), tag)
    }

    fn on(listener: TcpListener, tag: &str) -> TaggedEcho {
        let addr = listener.local_addr().expect("local_addr");
        let mut e = TaggedEcho {
            addr,
            tag: tag.to_string(),
            shared: Arc::new(EchoShared::default()),
            acceptor: None,
        };
        e.acceptor = Some(e.spawn_acceptor(listener));
        e
    }

    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn listening(&self) -> bool {
        self.acceptor.is_some()
    }

    /// Stops accepting and closes the listening socket: new connects are refused.
    /// Established connections keep echoing.
    fn close_listener(&mut self) {
        if let Some(a) = self.acceptor.take() {
            a.stop.store(true, Ordering::SeqCst);
            // Wakes the blocked accept(2) with EINVAL on Linux.
            // SAFETY: the fd belongs to `a.listener`, alive until the end of this block.
            unsafe {
                libc::shutdown(a.listener.as_raw_fd(), libc::SHUT_RDWR);
            }
            let _ = a.thread.join();
        }
    }

    /// Listens again on the same address.
    fn reopen(&mut self) {
        assert!(
            self.acceptor.is_none(),
            "{} is already listening",
            self.addr
        );
        let l = bind_exact(self.addr);
        self.acceptor = Some(self.spawn_acceptor(l));
    }

    fn recs(&self) -> Vec<Rec> {
        lock(&self.shared.recs).clone()
    }

    /// Connections that carried client bytes (health checks carry none).
    fn client_conns(&self) -> usize {
        self.recs().iter().filter(|r| r.bytes_in > 0).count()
    }

    fn spawn_acceptor(&self, listener: TcpListener) -> Acceptor {
        let stop = Arc::new(AtomicBool::new(false));
        let l = listener.try_clone().expect("clone listener");
        let (st, sh) = (stop.clone(), self.shared.clone());
        let greeting = format!("{}\n", self.tag).into_bytes();
        let thread = thread::Builder::new()
            .name(format!("echo-{}", self.addr.port()))
            .spawn(move || accept_loop(l, st, sh, greeting))
            .expect("spawn accept thread");
        Acceptor {
            listener,
            stop,
            thread,
        }
    }
}

impl Drop for TaggedEcho {
    fn drop(&mut self) {
        self.close_listener();
        for s in lock(&self.shared.live).values() {
            let _ = s.shutdown(Shutdown::Both);
        }
        let handlers: Vec<_> = lock(&self.shared.handlers).drain(..).collect();
        for h in handlers {
            let _ = h.join();
        }
    }
}

fn bind_exact(addr: SocketAddr) -> TcpListener {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match TcpListener::bind(addr) {
            Ok(l) => return l,
            Err(e) if e.kind() == io::ErrorKind::AddrInUse && Instant::now() < deadline => {
                thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("bind {addr}: {e}"),
        }
    }
}

fn accept_loop(l: TcpListener, stop: Arc<AtomicBool>, shared: Arc<EchoShared>, greeting: Vec<u8>) {
    loop {
        let accepted = l.accept();
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let (stream, _) = match accepted {
            Ok(x) => x,
            Err(_) => {
                thread::sleep(Duration::from_millis(5));
                continue;
            }
        };
        let idx = {
            let mut recs = lock(&shared.recs);
            recs.push(Rec {
                bytes_in: 0,
                ended: false,
            });
            recs.len() - 1
        };
        if let Ok(c) = stream.try_clone() {
            lock(&shared.live).insert(idx, c);
        }
        let (sh, g) = (shared.clone(), greeting.clone());
        let h = thread::spawn(move || {
            serve_echo(stream, idx, &sh, &g);
            lock(&sh.recs)[idx].ended = true;
            lock(&sh.live).remove(&idx);
        });
        let mut hs = lock(&shared.handlers);
        hs.retain(|h| !h.is_finished());
        hs.push(h);
    }
}

fn serve_echo(mut s: TcpStream, idx: usize, shared: &EchoShared, greeting: &[u8]) {
    if s.write_all(greeting).is_err() {
        return;
    }
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => {
                let _ = s.shutdown(Shutdown::Write);
                return;
            }
            Ok(n) => {
                lock(&shared.recs)[idx].bytes_in += n as u64;
                if s.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

/// After a restart, a backend may get client connections only once it is up again: at
/// least `rise` successful checks (connections without bytes) must come before the first
/// client connection in accept order.
fn assert_checks_before_clients(b: &TaggedEcho, rise: u32) {
    let recs = b.recs();
    let first_client = recs.iter().position(|r| r.bytes_in > 0);
    let Some(first) = first_client else {
        panic!(
            "{} ({}) got no client connection after its restart",
            b.tag, b.addr
        );
    };
    let checks = recs[..first]
        .iter()
        .filter(|r| r.bytes_in == 0 && r.ended)
        .count();
    eprintln!(
        "{}: {checks} check connection(s) before the first client connection after restart",
        b.tag
    );
    assert!(
        checks >= rise as usize,
        "{} got a client connection after only {checks} successful check(s) (rise {rise}): {:?}",
        b.tag,
        &recs[..=first]
    );
}

// ---------------------------------------------------------------- clients

fn read_tag(c: &mut TcpStream) -> Result<String, String> {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    loop {
        match c.read(&mut b) {
            Ok(0) => return Err(format!("EOF before a tag line (got {line:?})")),
            Ok(_) if b[0] == b'\n' => break,
            Ok(_) => line.push(b[0]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("reading the tag: {e}")),
        }
        if line.len() > 64 {
            return Err(format!("tag line too long: {line:?}"));
        }
    }
    String::from_utf8(line).map_err(|e| format!("tag not UTF-8: {e}"))
}

/// One client connection: connect, read the backend's tag, echo a few bytes. Returns the
/// tag, or what went wrong.
fn client_once(addr: SocketAddr, n: usize) -> Result<String, String> {
    client_timed(addr, n).0
}

/// [`client_once`], plus how long the connect, the tag and the echo took (zero for a
/// phase not reached).
fn client_timed(addr: SocketAddr, n: usize) -> (Result<String, String>, [Duration; 3]) {
    let mut phases = [Duration::ZERO; 3];
    let mut at = Instant::now();
    let mut lap = |i: usize| {
        phases[i] = at.elapsed();
        at = Instant::now();
    };
    let r = (|| {
        let c = connect_with_timeout(addr, Duration::from_secs(5));
        lap(0);
        let mut c = c.map_err(|e| format!("connect: {e}"))?;
        c.set_read_timeout(Some(Duration::from_secs(5)))
            .map_err(|e| e.to_string())?;
        let tag = read_tag(&mut c);
        lap(1);
        let tag = tag?;
        let msg = format!("ping {n}\n");
        c.write_all(msg.as_bytes())
            .map_err(|e| format!("{tag}: write: {e}"))?;
        let mut back = vec![0u8; msg.len()];
        let read = c.read_exact(&mut back);
        lap(2);
        read.map_err(|e| format!("{tag}: echo read: {e}"))?;
        if back != msg.as_bytes() {
            return Err(format!("{tag}: echo mismatch"));
        }
        Ok(tag)
    })();
    (r, phases)
}

/// `n` sequential client connections from this thread; tags in order, failures counted.
fn clients(addr: SocketAddr, n: usize) -> (Vec<String>, Vec<String>) {
    let mut tags = Vec::new();
    let mut failures = Vec::new();
    for i in 0..n {
        match client_once(addr, i) {
            Ok(t) => tags.push(t),
            Err(e) => failures.push(format!("connection {i}: {e}")),
        }
    }
    (tags, failures)
}

#[derive(Default)]
struct LoadLog {
    tags: Vec<String>,
    failures: Vec<String>,
    max_latency: Duration,
    /// The slowest connection: its tag and its connect / tag / echo times.
    slowest: String,
}

/// Client threads making connections back to back (with a short pause) until stopped.
/// Each connection holds the gate's read side; [`Load::pause`] takes the write side, so
/// while it is held no client connection is in flight.
struct Load {
    stop: Arc<AtomicBool>,
    gate: Arc<RwLock<()>>,
    log: Arc<Mutex<LoadLog>>,
    threads: Vec<JoinHandle<()>>,
}

impl Load {
    fn start(addr: SocketAddr, threads: usize, pause: Duration) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let gate = Arc::new(RwLock::new(()));
        let log = Arc::new(Mutex::new(LoadLog::default()));
        let threads = (0..threads)
            .map(|t| {
                let (stop, gate, log) = (stop.clone(), gate.clone(), log.clone());
                thread::spawn(move || {
                    let mut i = 0;
                    while !stop.load(Ordering::SeqCst) {
                        let started = Instant::now();
                        let (r, phases) = {
                            let _g = gate.read().unwrap_or_else(|e| e.into_inner());
                            client_timed(addr, i)
                        };
                        let took = started.elapsed();
                        let mut l = lock(&log);
                        if took > l.max_latency {
                            l.max_latency = took;
                            l.slowest = format!(
                                "{:?}: connect {:.1} ms, tag {:.1} ms, echo {:.1} ms",
                                r,
                                ms(phases[0]),
                                ms(phases[1]),
                                ms(phases[2])
                            );
                        }
                        match r {
                            Ok(tag) => l.tags.push(tag),
                            Err(e) => l.failures.push(format!("thread {t} connection {i}: {e}")),
                        }
                        drop(l);
                        i += 1;
                        thread::sleep(pause);
                    }
                })
            })
            .collect();
        Load {
            stop,
            gate,
            log,
            threads,
        }
    }

    /// While the guard lives, no client connection is in flight.
    fn pause(&self) -> RwLockWriteGuard<'_, ()> {
        self.gate.write().unwrap_or_else(|e| e.into_inner())
    }

    fn gate(&self) -> Arc<RwLock<()>> {
        self.gate.clone()
    }

    fn total(&self) -> usize {
        let l = lock(&self.log);
        l.tags.len() + l.failures.len()
    }

    fn count(&self, tag: &str) -> usize {
        lock(&self.log).tags.iter().filter(|t| *t == tag).count()
    }

    fn failures(&self) -> usize {
        lock(&self.log).failures.len()
    }

    fn finish(mut self) -> LoadLog {
        self.stop_threads();
        let log = std::mem::take(&mut *lock(&self.log));
        eprintln!(
            "slowest client connection ({:.1} ms): {}",
            ms(log.max_latency),
            log.slowest
        );
        log
    }

    fn stop_threads(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop_threads();
    }
}

fn tag_counts(tags: &[String]) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for t in tags {
        *m.entry(t.clone()).or_insert(0) += 1;
    }
    m
}

// ---------------------------------------------------------------- 1. kill under load

/// Issue 4, test 1: a backend dies under continuous load; clients never notice; it is
/// marked down within the bound and gets no new connection; restarted on the same port it
/// is marked up within `rise × interval` and gets traffic again.
#[test]
fn killed_backend_under_load_fails_over_and_rejoins() {
    let b1 = EchoBackend::tagged("b1");
    let b2 = TaggedEcho::start("b2");
    let b3 = EchoBackend::tagged("b3");
    let b2_addr = b2.addr();
    let listener = format!("algorithm: round_robin\nconnect_attempts: 2\n{HC}");
    let lb = start_lb(
        &config("", &listener, &primaries(&[b1.addr(), b2_addr, b3.addr()])),
        LOG_DEBUG_CONNECTS,
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
    let killed_at = {
        let _paused = load.pause();
        let t = SystemTime::now();
        drop(b2);
        t
    };
    let killed_after = load.total();
    let down = wait_flip(&lb, mark, b2_addr, false, WAIT);
    let detect = since(killed_at, down.at);
    let refused = connect_failures(&lb, b2_addr)
        .iter()
        .filter(|t| **t >= killed_at)
        .count();
    eprintln!(
        "kill -> `backend down` in {:.1} ms (outcome={} consecutive={} passive={}; bound {:.0} ms + slack); \
         {refused} client connect(s) refused before/around it, {} client connections in between",
        ms(detect),
        down.outcome,
        down.consecutive,
        down.passive,
        ms(down_bound()),
        load.total() - killed_after
    );
    assert!(detect <= down_bound() + SLACK, "detection took {detect:?}");
    if !down.passive {
        assert_eq!(down.outcome, "refused", "{down:?}");
    } else {
        assert_eq!(down.outcome, "client_connect_failed", "{down:?}");
    }

    // Once the down line is out, no new client connection is even attempted on b2.
    let observed = {
        let _paused = load.pause();
        SystemTime::now()
    };
    let n = load.total();
    assert!(
        wait_until(WAIT, || load.total() >= n + 60),
        "load keeps going"
    );
    let late: Vec<_> = connect_failures(&lb, b2_addr)
        .into_iter()
        .filter(|t| *t > observed)
        .collect();
    assert!(
        late.is_empty(),
        "{} client connect(s) tried {b2_addr} after it was marked down",
        late.len()
    );

    // Restart b2 on the same port.
    let mark = lb.log_mark();
    let restarted_at = SystemTime::now();
    let b2 = TaggedEcho::bind(b2_addr, "b2");
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

/// Issue 4, test 2: the backup serves only while no primary is up.
#[test]
fn backup_serves_only_while_every_primary_is_down() {
    let p1 = TaggedEcho::start("p1");
    let p2 = TaggedEcho::start("p2");
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
        LOG_DEBUG_CONNECTS,
    );
    let addr = lb.listener_addr("t");

    let (tags, failures) = clients(addr, 30);
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

    let (tags, failures) = clients(addr, 20);
    assert!(failures.is_empty(), "{failures:?}");
    assert!(
        tags.iter().all(|t| t == "backup"),
        "all primaries down: {:?}",
        tag_counts(&tags)
    );

    // Restart p1: until it is up the backup keeps serving; after, p1 alone (p2 is down).
    let mark = lb.log_mark();
    let restarted_at = SystemTime::now();
    let p1 = TaggedEcho::bind(p1_addr, "p1");
    let mut during = Vec::new();
    while !lb.wait_for_log_after(
        mark,
        &format!("backend up: listener=t backend={p1_addr} "),
        Duration::ZERO,
    ) {
        match client_once(addr, during.len()) {
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
    let (tags, failures) = clients(addr, 20);
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

/// Issue 4, test 3: with every backend down a new client is reset at once, without any
/// connect attempt, and counted as denied (no_backend).
#[test]
fn all_backends_down_denies_new_clients_at_once() {
    let a = TaggedEcho::start("a");
    let b = TaggedEcho::start("b");
    let (a_addr, b_addr) = (a.addr(), b.addr());
    let listener = format!("connect_attempts: 2\n{HC}");
    let mut yaml = config(
        "admin: 127.0.0.1:0\n",
        &listener,
        &primaries(&[a_addr, b_addr]),
    );
    yaml = yaml.replacen("access_log: false", "access_log: true", 1);
    // `start` waits for the admin endpoint's line too.
    let lb = start_lb(&yaml, LOG_DEBUG_CONNECTS);
    let addr = lb.listener_addr("t");
    let (_, failures) = clients(addr, 4);
    assert!(failures.is_empty(), "{failures:?}");

    let mark = lb.log_mark();
    drop(a);
    drop(b);
    wait_flip(&lb, mark, a_addr, false, WAIT);
    wait_flip(&lb, mark, b_addr, false, WAIT);
    let down_at = SystemTime::now();

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
        assert!(
            matches!(
                end,
                ClientEnd::Reset { bytes: 0 } | ClientEnd::Eof { bytes: 0 }
            ),
            "client {i}: {end:?}"
        );
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
    let tried: usize = [a_addr, b_addr]
        .iter()
        .map(|b| {
            connect_failures(&lb, *b)
                .iter()
                .filter(|t| **t > down_at)
                .count()
        })
        .sum();
    assert_eq!(tried, 0, "no connect may be attempted on a down backend");
    let series = "ringlb_denied_total{listener=\"t\",reason=\"no_backend\"}";
    let v = metric(&lb, series);
    eprintln!("{series} = {v:?}");
    assert_eq!(v, Some(N as f64), "{series}");
}

// ---------------------------------------------------------------- 4. passive

/// Issue 4, test 4: with active checks only every 5 s, real client connects that are
/// refused take the backend out, logged with `passive=true`; clients see nothing.
#[test]
fn passive_failures_mark_a_dead_backend_down_quickly() {
    let b1 = EchoBackend::tagged("b1");
    let b2 = TaggedEcho::start("b2");
    let b3 = EchoBackend::tagged("b3");
    let b2_addr = b2.addr();
    let listener = "algorithm: round_robin\nconnect_attempts: 2\nhealth_check:\n  interval: 5s\n  timeout: 100ms\n  rise: 2\n  fall: 2\n";
    let lb = start_lb(
        &config("", listener, &primaries(&[b1.addr(), b2_addr, b3.addr()])),
        LOG_DEBUG_CONNECTS,
    );
    let addr = lb.listener_addr("t");
    let (tags, failures) = clients(addr, 15);
    assert!(failures.is_empty(), "{failures:?}");
    assert_eq!(tag_counts(&tags).len(), 3, "{tags:?}");

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
        if let Err(e) = client_once(addr, done) {
            failures.push(e);
        }
        done += 1;
    }
    let down = wait_flip(&lb, mark, b2_addr, false, Duration::from_secs(1));
    let detect = since(killed_at, down.at);
    let refused = connect_failures(&lb, b2_addr)
        .iter()
        .filter(|t| **t <= down.at)
        .count();
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
        refused >= FALL as usize,
        "down after {refused} failures, fall is {FALL}"
    );
    // `fall` refused connects + at most 10 ms of prober sampling, on top of the client pace.
    assert!(
        detect < Duration::from_millis(100) + SLACK,
        "took {detect:?}"
    );

    let observed = SystemTime::now();
    let (_, more) = clients(addr, 30);
    failures.extend(more);
    assert!(
        failures.is_empty(),
        "clients must not see the dead backend: {failures:?}"
    );
    let late = connect_failures(&lb, b2_addr)
        .iter()
        .filter(|t| **t > observed)
        .count();
    assert_eq!(
        late, 0,
        "connects attempted on {b2_addr} after it was marked down"
    );
}

// ---------------------------------------------------------------- 5. blackhole (loopback)

/// Issue 4, test 5 (active part): a backend whose connects time out is marked down by the
/// active checks with `outcome=timeout` within `fall × interval + timeout` of start; then
/// clients never wait on it. No client runs before the down line, so it is the checks'.
#[test]
fn blackholed_backend_marked_down_by_timeout_checks() {
    let b1 = EchoBackend::tagged("b1");
    let hole = BlackholeBackend::start();
    let b3 = EchoBackend::tagged("b3");
    let listener =
        format!("algorithm: round_robin\nconnect_attempts: 2\nconnect_timeout: 200ms\n{HC}");
    let lb = start_lb(
        &config(
            "",
            &listener,
            &primaries(&[b1.addr(), hole.addr(), b3.addr()]),
        ),
        LOG_DEBUG_CONNECTS,
    );
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
    let observed = SystemTime::now();
    let started = Instant::now();
    let (tags, failures) = clients(addr, 40);
    let took = started.elapsed();
    assert!(failures.is_empty(), "{failures:?}");
    eprintln!(
        "40 clients after down in {:.0} ms: {:?}",
        ms(took),
        tag_counts(&tags)
    );
    let tried = connect_failures(&lb, hole.addr())
        .iter()
        .filter(|t| **t > observed)
        .count();
    assert_eq!(tried, 0, "no client connect may wait on the down blackhole");
}

/// Issue 4, test 5 (clients during detection): clients from the first moment, with
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
            "",
            &listener,
            &primaries(&[b1.addr(), hole.addr(), b3.addr()]),
        ),
        &format!("{LOG_DEBUG_CONNECTS},ringlb_prober::runner=trace"),
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
    let waited = connect_failures(&lb, hole.addr()).len();
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
        (false, "timeout") | (true, "client_connect_failed") => {}
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

/// Issue 4, test 6: a backend in a network namespace whose link goes down (SYNs vanish,
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
    let remote = TaggedEcho::on(listener, "ns");
    let remote_addr = remote.addr();
    let local = EchoBackend::tagged("lo");
    let cfg = format!("algorithm: round_robin\nconnect_attempts: 2\nconnect_timeout: 1s\n{HC}");
    let lb = start_lb(
        &config("", &cfg, &primaries(&[remote_addr, local.addr()])),
        LOG_DEBUG_CONNECTS,
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
    let timed_out = connect_failures(&lb, remote_addr).len();
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

/// Issue 4, test 7: a backend that listens and stops listening every 300 ms for 10 s,
/// under continuous clients with 3 attempts: no client fails; every transition is logged,
/// alternating, with proper streaks; once it stays up it rejoins.
#[test]
fn flapping_backend_never_fails_clients() {
    const PERIOD: Duration = Duration::from_millis(300);
    const FLAPPING: Duration = Duration::from_secs(10);
    let b1 = EchoBackend::tagged("b1");
    let b3 = EchoBackend::tagged("b3");
    let flapper = TaggedEcho::start("flap");
    let flap_addr = flapper.addr();
    let listener = format!("algorithm: round_robin\nconnect_attempts: 3\n{HC}");
    let lb = start_lb(
        &config(
            "",
            &listener,
            &primaries(&[b1.addr(), flap_addr, b3.addr()]),
        ),
        LOG_DEBUG_CONNECTS,
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

/// Issue 4, test 8: `ringlb_backend_up` and `/status` follow a kill and a restart.
#[test]
fn backend_up_metric_follows_kill_and_restart() {
    let b1 = EchoBackend::tagged("b1");
    let b2 = TaggedEcho::start("b2");
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
    assert_eq!(metric(&lb, &series), Some(1.0), "{series} at start");
    assert_eq!(status_up(), Some(true));

    let mark = lb.log_mark();
    drop(b2);
    wait_flip(&lb, mark, b2_addr, false, WAIT);
    assert_eq!(
        metric(&lb, &series),
        Some(0.0),
        "{series} after the down line"
    );
    assert_eq!(metric(&lb, &other), Some(1.0), "{other}");
    assert_eq!(status_up(), Some(false));

    let mark = lb.log_mark();
    let _b2 = TaggedEcho::bind(b2_addr, "b2");
    wait_flip(&lb, mark, b2_addr, true, WAIT);
    assert_eq!(
        metric(&lb, &series),
        Some(1.0),
        "{series} after the up line"
    );
    assert_eq!(status_up(), Some(true));
    eprintln!("{series}: 1 -> 0 -> 1 across kill and restart; /status agrees");
}

// ---------------------------------------------------------------- helpers' own tests

#[test]
fn log_time_parses_env_logger_timestamps() {
    let t = log_time("[1970-01-01T00:00:01.000250Z INFO  x] y").unwrap();
    assert_eq!(t, UNIX_EPOCH + Duration::from_micros(1_000_250));
    let t = log_time("[2000-03-01T00:00:00Z WARN  x] y").unwrap();
    assert_eq!(t, UNIX_EPOCH + Duration::from_secs(951_868_800));
    let t = log_time("[2026-11-24T15:04:18.639806Z INFO  ringlb::control] ready").unwrap();
    assert_eq!(t, UNIX_EPOCH + Duration::from_micros(1_795_532_658_639_806));
    assert!(log_time("ready: 1 listener(s)").is_none());
    assert!(log_time("[2026-11-24 x] y").is_none());
}

#[test]
fn flip_lines_parse() {
    let f = parse_flip(
        7,
        "[2026-11-24T15:04:18.856817Z WARN  ringlb::control] backend down: listener=t \
         backend=127.0.0.1:1 outcome=client_connect_failed consecutive=3 passive=true",
    )
    .unwrap();
    assert_eq!(
        (
            f.idx,
            f.up,
            f.listener.as_str(),
            f.backend.as_str(),
            f.outcome.as_str(),
            f.consecutive,
            f.passive
        ),
        (
            7,
            false,
            "t",
            "127.0.0.1:1",
            "client_connect_failed",
            3,
            true
        )
    );
    let f = parse_flip(0, "[2026-11-24T15:04:18Z INFO  ringlb::control] backend up: listener=t backend=[::1]:80 outcome=ok consecutive=2").unwrap();
    assert!(f.up && !f.passive && f.backend == "[::1]:80");
    assert!(parse_flip(
        0,
        "[2026-11-24T15:04:18Z INFO  x] listener \"t\" listening on 127.0.0.1:1"
    )
    .is_none());
}
