//! The prober against real sockets on 127.0.0.1: detection and recovery times, outcome
//! classification, passive failures, reload and stop.
//!
//! Bounds carry generous slack for a loaded 2-core machine; measured times are printed
//! (`cargo test -p ringlb-prober -- --nocapture`).

use std::io;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use ringlb_prober::machine::first_check_offset;
use ringlb_prober::{
    probe_once, BackendState, HealthCheck, Outcome, ProbeBackend, ProbeListener, Prober, Transition,
};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

/// Scheduling slack on a shared, loaded machine.
const SLACK: Duration = Duration::from_millis(1500);

/// A backend that accepts and drops connections, counting them.
struct LiveBackend {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl LiveBackend {
    fn start(addr: SocketAddr) -> io::Result<LiveBackend> {
        let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
        // Rebinding a port whose previous listener just closed.
        socket.set_reuse_address(true)?;
        socket.bind(&SockAddr::from(addr))?;
        socket.listen(128)?;
        socket.set_nonblocking(true)?;
        let addr = socket
            .local_addr()?
            .as_socket()
            .ok_or_else(|| io::Error::other("not an inet address"))?;
        let accepted = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (accepted, stop) = (Arc::clone(&accepted), Arc::clone(&stop));
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match socket.accept() {
                        Ok(_) => {
                            accepted.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(2)),
                    }
                }
                // `socket` drops here: the port refuses from now on.
            })
        };
        Ok(LiveBackend {
            addr,
            accepted,
            stop,
            thread: Some(thread),
        })
    }

    fn any() -> LiveBackend {
        LiveBackend::start("127.0.0.1:0".parse().unwrap()).expect("start backend")
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Waits until the backend has accepted more than `n` connections.
    fn wait_accepted_above(&self, n: usize, within: Duration) {
        let deadline = Instant::now() + within;
        while self.accepted() <= n {
            assert!(
                Instant::now() < deadline,
                "backend {} saw no check within {within:?}",
                self.addr
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Closes the listening socket; returns once the port refuses.
    fn close(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap();
        }
    }
}

impl Drop for LiveBackend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A loopback port where nothing listens (bound then released).
fn refusing_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

/// A loopback address whose connects time out: a listener with backlog 0 whose accept
/// queue is full and never drained. Linux then drops incoming SYNs (the client retries
/// after 1 s, far beyond our check timeouts). Returns None, after verifying, if this
/// kernel behaves otherwise.
struct Blackhole {
    addr: SocketAddr,
    _listener: Socket,
    _fillers: Vec<TcpStream>,
}

fn blackhole() -> Option<Blackhole> {
    let listener = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).unwrap();
    listener
        .bind(&SockAddr::from(
            "127.0.0.1:0".parse::<SocketAddr>().unwrap(),
        ))
        .unwrap();
    listener.listen(0).unwrap();
    let addr = listener.local_addr().unwrap().as_socket().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..8 {
        match TcpStream::connect_timeout(&addr, Duration::from_millis(300)) {
            Ok(stream) => fillers.push(stream),
            Err(err) if err.kind() == io::ErrorKind::TimedOut => {
                return Some(Blackhole {
                    addr,
                    _listener: listener,
                    _fillers: fillers,
                });
            }
            Err(err) => panic!("unexpected error filling the accept queue: {err}"),
        }
    }
    None
}

macro_rules! blackhole_or_skip {
    () => {
        match blackhole() {
            Some(b) => b,
            None => {
                eprintln!(
                    "SKIPPED: this kernel completes connects to a full backlog-0 listener; no loopback blackhole"
                );
                return;
            }
        }
    };
}

fn check(interval_ms: u64, timeout_ms: u64, rise: u32, fall: u32) -> HealthCheck {
    HealthCheck {
        interval: Duration::from_millis(interval_ms),
        timeout: Duration::from_millis(timeout_ms),
        rise,
        fall,
        port: None,
    }
}

fn backend(addr: SocketAddr) -> ProbeBackend {
    ProbeBackend {
        label: addr.to_string(),
        addr,
        state: Arc::new(BackendState::new()),
    }
}

fn listener(
    name: &str,
    check: HealthCheck,
    backends: Vec<ProbeBackend>,
) -> (ProbeListener, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&calls);
    let listener = ProbeListener {
        name: name.into(),
        check,
        backends,
        on_change: Arc::new(move || {
            counter.fetch_add(1, Ordering::SeqCst);
        }),
    };
    (listener, calls)
}

/// The first transition matching `pred` within `within`; panics with what was seen.
fn wait_for(
    rx: &Receiver<Transition>,
    within: Duration,
    pred: impl Fn(&Transition) -> bool,
) -> Transition {
    let deadline = Instant::now() + within;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(t) if pred(&t) => return t,
            Ok(t) => seen.push(t.to_string()),
            Err(_) => panic!("no matching transition within {within:?}; saw {seen:?}"),
        }
    }
}

/// Every transition for `backend` received within `within`.
fn collect_for(rx: &Receiver<Transition>, within: Duration, backend: &str) -> Vec<Transition> {
    let deadline = Instant::now() + within;
    let mut out = Vec::new();
    while let Ok(t) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        if t.backend == backend {
            out.push(t);
        }
    }
    out
}

#[test]
fn closed_backend_goes_down_and_restarted_backend_comes_back() {
    let (interval, timeout, rise, fall) = (100, 100, 2, 3);
    let live = LiveBackend::any();
    let addr = live.addr;
    let b = backend(addr);
    let state = Arc::clone(&b.state);
    let (l, calls) = listener("settlement", check(interval, timeout, rise, fall), vec![b]);
    let (tx, rx) = crossbeam_channel::unbounded();
    let prober = Prober::spawn(vec![l], tx).unwrap();

    live.wait_accepted_above(0, SLACK);
    assert!(state.is_up());

    let closed_at = Instant::now();
    live.close();
    let bound = Duration::from_millis(fall as u64 * interval + timeout);
    let down = wait_for(&rx, bound + SLACK, |t| !t.up);
    let took = down.at.duration_since(closed_at);
    println!("closed → down in {took:?} (bound fall×interval+timeout = {bound:?}): {down}");
    assert_eq!(down.outcome, Outcome::Refused);
    assert_eq!(down.consecutive, fall);
    assert!(!down.passive);
    assert_eq!(down.backend, addr.to_string());
    assert_eq!(down.listener, "settlement");
    assert!(!state.is_up(), "state published down");
    assert!(took <= bound + SLACK, "took {took:?}");

    let restarted_at = Instant::now();
    let live = LiveBackend::start(addr).expect("rebind the same port");
    let bound = Duration::from_millis(rise as u64 * interval);
    let up = wait_for(&rx, bound + SLACK, |t| t.up);
    let took = up.at.duration_since(restarted_at);
    println!("restarted → up in {took:?} (bound rise×interval = {bound:?}): {up}");
    assert_eq!(up.outcome, Outcome::Ok);
    assert_eq!(up.consecutive, rise);
    assert!(state.is_up());
    assert!(took <= bound + SLACK, "took {took:?}");
    // on_change runs right after the flip, on the prober thread.
    let deadline = Instant::now() + SLACK;
    while calls.load(Ordering::SeqCst) < 2 {
        assert!(
            Instant::now() < deadline,
            "on_change not called for both flips"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    prober.stop();
    drop(live);
}

#[test]
fn probe_once_classifies_refused_and_timeout() {
    assert_eq!(
        probe_once(refusing_addr(), Duration::from_secs(2)),
        Outcome::Refused
    );
    let live = LiveBackend::any();
    assert_eq!(probe_once(live.addr, Duration::from_secs(2)), Outcome::Ok);

    let hole = blackhole_or_skip!();
    let started = Instant::now();
    let outcome = probe_once(hole.addr, Duration::from_millis(150));
    let took = started.elapsed();
    println!("blackhole probe: {outcome} after {took:?}");
    assert_eq!(outcome, Outcome::Timeout);
    assert!(took >= Duration::from_millis(150), "{took:?}");
    assert!(took < Duration::from_millis(150) + SLACK, "{took:?}");
}

#[test]
fn silent_backend_goes_down_with_timeout_without_stalling_other_checks() {
    let hole = blackhole_or_skip!();
    let live = LiveBackend::any();
    let (slow, _) = listener("slow", check(100, 400, 1, 2), vec![backend(hole.addr)]);
    let (fast, _) = listener("fast", check(50, 50, 1, 3), vec![backend(live.addr)]);
    let (tx, rx) = crossbeam_channel::unbounded();
    let started = Instant::now();
    let prober = Prober::spawn(vec![slow, fast], tx).unwrap();

    // While the blackhole's checks hang for 400 ms each, the fast listener keeps its pace.
    live.wait_accepted_above(0, SLACK);
    let before = live.accepted();
    let window = Instant::now();
    std::thread::sleep(Duration::from_millis(600));
    let checks = live.accepted() - before;
    let elapsed = window.elapsed();
    println!("fast backend: {checks} checks in {elapsed:?} while the blackhole check hung (interval 50 ms)");
    assert!(
        checks >= 5,
        "fast listener stalled: {checks} checks in {elapsed:?}"
    );

    let down = wait_for(&rx, Duration::from_millis(2 * 100 + 400) + SLACK, |t| {
        t.listener == "slow"
    });
    println!(
        "blackhole → down after {:?}: {down}",
        down.at.duration_since(started)
    );
    assert!(!down.up);
    assert_eq!(down.outcome, Outcome::Timeout);
    assert_eq!(down.consecutive, 2);
    // Two full timeouts elapsed before the verdict.
    assert!(down.at.duration_since(started) >= Duration::from_millis(800));
    prober.stop();
}

#[test]
fn passive_failures_mark_down_and_active_checks_recover() {
    let live = LiveBackend::any();
    let b = backend(live.addr);
    let state = Arc::clone(&b.state);
    let (interval, rise, fall) = (200, 2, 3);
    let (l, _) = listener("passive", check(interval, 200, rise, fall), vec![b]);
    let (tx, rx) = crossbeam_channel::unbounded();
    let prober = Prober::spawn(vec![l], tx).unwrap();
    live.wait_accepted_above(0, SLACK);

    // Fewer than `fall` passive failures, then a successful active check: streak reset.
    state.record_connect_failure();
    state.record_connect_failure();
    std::thread::sleep(Duration::from_millis(40)); // let the prober sample them (≤ 10 ms)
    let seen = live.accepted();
    live.wait_accepted_above(seen, SLACK);
    std::thread::sleep(Duration::from_millis(40)); // let it record that check's success
    state.record_connect_failure();
    assert!(
        rx.recv_timeout(Duration::from_millis(150)).is_err(),
        "an active success must reset the passive failure streak"
    );
    assert!(state.is_up());

    // `fall` real connect failures: down at the next sample, no active failure involved.
    let failed_at = Instant::now();
    for _ in 0..fall {
        state.record_connect_failure();
    }
    let down = wait_for(&rx, SLACK, |t| !t.up);
    let took = down.at.duration_since(failed_at);
    println!("{fall} passive failures → down in {took:?} (bound ≤ 10 ms + scheduling): {down}");
    assert!(down.passive);
    assert_eq!(down.outcome, Outcome::ClientConnectFailed);
    assert!(down.consecutive >= fall);
    assert!(!state.is_up());
    assert!(took <= Duration::from_millis(10) + SLACK, "{took:?}");

    // Recovery only through active checks: the backend answers them, so `rise` later it is up.
    let up = wait_for(
        &rx,
        Duration::from_millis(rise as u64 * interval) + SLACK,
        |t| t.up,
    );
    println!(
        "recovered by active checks {:?} after going down: {up}",
        up.at.duration_since(down.at)
    );
    assert!(!up.passive);
    assert_eq!(up.outcome, Outcome::Ok);
    assert_eq!(up.consecutive, rise);
    assert!(up.at.duration_since(down.at) >= Duration::from_millis((rise as u64 - 1) * interval));
    assert!(state.is_up());
    prober.stop();
}

#[test]
fn update_keeps_surviving_machines_starts_new_and_releases_removed() {
    let (a, b, c) = (
        backend(refusing_addr()),
        backend(refusing_addr()),
        backend(refusing_addr()),
    );
    let (a_state, b_state, c_state) = (
        Arc::clone(&a.state),
        Arc::clone(&b.state),
        Arc::clone(&c.state),
    );
    let (a_label, b_label, c_label) = (a.label.clone(), b.label.clone(), c.label.clone());
    let hc = check(50, 50, 2, 2);
    let (l, old_calls) = listener("reload", hc, vec![a.clone(), b]);
    let (tx, rx) = crossbeam_channel::unbounded();
    let prober = Prober::spawn(vec![l], tx).unwrap();
    let mut down = std::collections::HashSet::new();
    while down.len() < 2 {
        down.insert(wait_for(&rx, SLACK, |t| !t.up).backend);
    }
    assert!(!a_state.is_up() && !b_state.is_up());
    let calls_before = old_calls.load(Ordering::SeqCst);

    // Reload: A survives (same listener, same label), B is removed, C is new.
    let (l2, new_calls) = listener("reload", hc, vec![a, c]);
    prober.update(vec![l2]);
    let events = {
        let deadline = Instant::now() + Duration::from_millis(600);
        let mut events = Vec::new();
        while let Ok(t) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            events.push(t);
        }
        events
    };
    let names: Vec<String> = events.iter().map(|t| t.to_string()).collect();
    // A kept its machine: still down, no fresh "starts up" and no new down transition.
    assert!(!a_state.is_up());
    assert!(events.iter().all(|t| t.backend != a_label), "{names:?}");
    // B is no longer checked: left up, no events, old listener's callback told.
    assert!(b_state.is_up(), "removed backend must not stay down");
    assert!(events.iter().all(|t| t.backend != b_label), "{names:?}");
    assert!(old_calls.load(Ordering::SeqCst) > calls_before);
    // C started up and went down by its own checks.
    let c_events: Vec<&Transition> = events.iter().filter(|t| t.backend == c_label).collect();
    assert_eq!(c_events.len(), 1, "{names:?}");
    assert!(!c_events[0].up && c_events[0].outcome == Outcome::Refused);
    assert!(!c_state.is_up());
    assert!(new_calls.load(Ordering::SeqCst) >= 1);
    prober.stop();
}

#[test]
fn update_keeps_failure_streak_of_surviving_backend() {
    // A long interval so no active check (which would succeed and reset the streak) runs
    // during the test; the name is chosen so the first check is far away too.
    let interval = Duration::from_secs(600);
    let name = "streak";
    assert!(first_check_offset(name, 0, 1, interval) > Duration::from_secs(30));
    let live = LiveBackend::any();
    let b = backend(live.addr);
    let state = Arc::clone(&b.state);
    let hc = HealthCheck {
        interval,
        timeout: Duration::from_secs(1),
        rise: 2,
        fall: 3,
        port: None,
    };
    let (l, _) = listener(name, hc, vec![b.clone()]);
    let (tx, rx) = crossbeam_channel::unbounded();
    let prober = Prober::spawn(vec![l], tx).unwrap();
    state.record_connect_failure();
    state.record_connect_failure();
    std::thread::sleep(Duration::from_millis(50));
    let (l2, _) = listener(name, hc, vec![b]);
    prober.update(vec![l2]);
    std::thread::sleep(Duration::from_millis(50));
    assert!(rx.try_recv().is_err());
    state.record_connect_failure();
    let down = wait_for(&rx, SLACK, |t| !t.up);
    assert_eq!(
        down.consecutive, 3,
        "the streak of 2 survived the reload: {down}"
    );
    assert_eq!(live.accepted(), 0, "no active check ran");
    prober.stop();
}

#[test]
fn health_check_port_overrides_backend_port() {
    let live = LiveBackend::any();
    let mut hc = check(50, 100, 1, 1);
    hc.port = Some(live.addr.port());
    // The backend's own port refuses; checks go to the override port and succeed.
    let b = backend(refusing_addr());
    let label = b.label.clone();
    let (l, _) = listener("override", hc, vec![b]);
    let (tx, rx) = crossbeam_channel::unbounded();
    let prober = Prober::spawn(vec![l], tx).unwrap();
    live.wait_accepted_above(3, SLACK);
    assert!(collect_for(&rx, Duration::from_millis(100), &label).is_empty());
    prober.stop();
}

#[test]
fn stop_is_prompt_with_checks_in_flight() {
    let hole = blackhole_or_skip!();
    let live = LiveBackend::any();
    let backends: Vec<ProbeBackend> = (0..20)
        .map(|_| backend(hole.addr))
        .enumerate()
        .map(|(i, mut b)| {
            b.label = format!("hole-{i}");
            b
        })
        .collect();
    let (slow, _) = listener("slow", check(50, 5_000, 1, 1), backends);
    let (fast, _) = listener("fast", check(20, 100, 1, 1), vec![backend(live.addr)]);
    let (tx, _rx) = crossbeam_channel::unbounded();
    let prober = Prober::spawn(vec![slow, fast], tx).unwrap();
    live.wait_accepted_above(2, SLACK);
    let started = Instant::now();
    prober.stop();
    let took = started.elapsed();
    println!("stop() with 20 checks in flight took {took:?}");
    assert!(took < Duration::from_millis(100), "{took:?}");
}

#[test]
fn full_event_channel_drops_and_counts_but_health_still_flips() {
    let b = backend(refusing_addr());
    let state = Arc::clone(&b.state);
    let (l, calls) = listener("full", check(50, 50, 1, 1), vec![b]);
    let (tx, rx) = crossbeam_channel::bounded(0);
    let prober = Prober::spawn(vec![l], tx).unwrap();
    let deadline = Instant::now() + SLACK;
    while state.is_up() || calls.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline, "never marked down");
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(prober.dropped_events(), 1);
    drop(rx);
    prober.stop();
}

#[test]
fn a_backend_in_maintenance_gets_no_checks_and_no_passive_verdict() {
    use ringlb_scheduler::AdminState;
    let (maint, control) = (LiveBackend::any(), LiveBackend::any());
    let (m, c) = (backend(maint.addr), backend(control.addr));
    let state = Arc::clone(&m.state);
    let (l, _) = listener("maint", check(50, 50, 1, 1), vec![m, c]);
    let (tx, rx) = crossbeam_channel::unbounded();
    let prober = Prober::spawn(vec![l], tx).unwrap();
    maint.wait_accepted_above(0, SLACK);

    state.set_admin_state(AdminState::Maint);
    // A check already in flight when the state changed may still land: at most one.
    let before = maint.accepted();
    let base = control.accepted();
    // Positive control: the other backend keeps being checked, 10 more times.
    control.wait_accepted_above(base + 10, SLACK * 4);
    assert!(
        maint.accepted() <= before + 1,
        "checked in maintenance: {} → {}",
        before,
        maint.accepted()
    );
    // Passive failures are not judged either (fall is 1).
    state.record_connect_failure();
    let base = control.accepted();
    control.wait_accepted_above(base + 3, SLACK * 4);
    assert!(state.is_up(), "maintenance must not mark a backend down");
    assert!(rx.try_recv().is_err(), "no transition expected");

    // Back to ready: checks resume.
    state.set_admin_state(AdminState::Ready);
    let resumed = maint.accepted();
    maint.wait_accepted_above(resumed, SLACK);
    prober.stop();
}
