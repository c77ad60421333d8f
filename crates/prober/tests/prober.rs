//! The prober against real sockets on 127.0.0.1: detection and recovery times, outcome
//! classification, passive failures, reload and stop.
//!
//! Bounds carry generous slack for a loaded 2-core machine; measured times are printed
//! (`cargo test -p ringlb-prober -- --nocapture`).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use ringlb_prober::machine::first_check_offset;
use ringlb_prober::{
    probe_once, BackendState, HealthCheck, Outcome, ProbeBackend, ProbeListener, Prober, Transition,
};
use ringlb_testkit::{refused_addr, wait_until, BlackholeBackend, EchoBackend};

/// Scheduling slack on a shared, loaded machine.
const SLACK: Duration = Duration::from_millis(1500);

/// Waits until `live` has accepted more than `n` connections (the prober's checks connect
/// and close; the backend counts them).
fn wait_checks_above(live: &EchoBackend, n: usize, within: Duration) {
    assert!(
        live.wait_accepted(n + 1, within),
        "backend {} saw {} check(s) within {within:?}, expected more than {n}",
        live.addr(),
        live.accepted()
    );
}

fn check(interval_ms: u64, timeout_ms: u64, rise: u32, fall: u32) -> HealthCheck {
    HealthCheck {
        interval: Duration::from_millis(interval_ms),
        timeout: Duration::from_millis(timeout_ms),
        rise,
        fall,
        port: None,
        send: None,
        expect: None,
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

/// The first transition of the backend labelled `label` within `within`, and every other
/// transition received before it.
fn wait_for_backend(
    rx: &Receiver<Transition>,
    within: Duration,
    label: &str,
) -> (Transition, Vec<Transition>) {
    let deadline = Instant::now() + within;
    let mut others = Vec::new();
    loop {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(t) if t.backend == label => return (t, others),
            Ok(t) => others.push(t),
            Err(_) => panic!("no transition of {label} within {within:?}; saw {others:?}"),
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
    let mut live = EchoBackend::start();
    let addr = live.addr();
    let b = backend(addr);
    let state = Arc::clone(&b.state);
    let (l, calls) = listener("settlement", check(interval, timeout, rise, fall), vec![b]);
    let (tx, rx) = crossbeam_channel::unbounded();
    let prober = Prober::spawn(vec![l], tx).unwrap();

    wait_checks_above(&live, 0, SLACK);
    assert!(state.is_up());

    let closed_at = Instant::now();
    live.close_listener();
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
    live.reopen();
    let bound = Duration::from_millis(rise as u64 * interval);
    let up = wait_for(&rx, bound + SLACK, |t| t.up);
    let took = up.at.duration_since(restarted_at);
    println!("restarted → up in {took:?} (bound rise×interval = {bound:?}): {up}");
    assert_eq!(up.outcome, Outcome::Ok);
    assert_eq!(up.consecutive, rise);
    assert!(state.is_up());
    assert!(took <= bound + SLACK, "took {took:?}");
    // on_change runs right after the flip, on the prober thread.
    assert!(
        wait_until(SLACK, || calls.load(Ordering::SeqCst) >= 2),
        "on_change not called for both flips"
    );
    prober.stop();
    drop(live);
}

#[test]
fn probe_once_classifies_refused_and_timeout() {
    assert_eq!(
        probe_once(refused_addr(), Duration::from_secs(2)),
        Outcome::Refused
    );
    let live = EchoBackend::start();
    assert_eq!(probe_once(live.addr(), Duration::from_secs(2)), Outcome::Ok);

    let hole = BlackholeBackend::start();
    let started = Instant::now();
    let outcome = probe_once(hole.addr(), Duration::from_millis(150));
    let took = started.elapsed();
    println!("blackhole probe: {outcome} after {took:?}");
    assert_eq!(outcome, Outcome::Timeout);
    assert!(took >= Duration::from_millis(150), "{took:?}");
    assert!(took < Duration::from_millis(150) + SLACK, "{took:?}");
}

#[test]
fn silent_backend_goes_down_with_timeout_without_stalling_other_checks() {
    let hole = BlackholeBackend::start();
    let live = EchoBackend::start();
    let (slow, _) = listener("slow", check(100, 400, 1, 2), vec![backend(hole.addr())]);
    let (fast, _) = listener("fast", check(50, 50, 1, 3), vec![backend(live.addr())]);
    let (tx, rx) = crossbeam_channel::unbounded();
    let started = Instant::now();
    let prober = Prober::spawn(vec![slow, fast], tx).unwrap();

    let down = wait_for(&rx, Duration::from_millis(2 * 100 + 400) + SLACK, |t| {
        t.listener == "slow"
    });
    // The verdict took two full 400 ms timeouts, during which a blackhole check hung
    // nearly all the time; the fast listener (interval 50 ms) kept its pace meanwhile.
    // Counted by accept time, which is never before the handshake: checks accepted after
    // the verdict do not count.
    let checks = live
        .conns()
        .iter()
        .filter(|c| c.accepted_at <= down.at)
        .count();
    let window = down.at.duration_since(started);
    println!("fast backend: {checks} checks in the {window:?} before the blackhole's verdict");
    assert!(
        checks >= 5,
        "fast listener stalled: {checks} checks in {window:?}"
    );
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
    let live = EchoBackend::start();
    let b = backend(live.addr());
    let state = Arc::clone(&b.state);
    let (interval, rise, fall) = (200, 2, 3);
    let (l, _) = listener("passive", check(interval, 200, rise, fall), vec![b]);
    let (tx, rx) = crossbeam_channel::unbounded();
    let prober = Prober::spawn(vec![l], tx).unwrap();
    wait_checks_above(&live, 0, SLACK);

    // Fewer than `fall` passive failures, then a successful active check: streak reset.
    state.record_connect_failure();
    state.record_connect_failure();
    // Three more checks: the prober starts a check only after recording the previous
    // one's result, so once the third is accepted the second's success is recorded; and
    // the second started a whole interval after the first, long after the prober sampled
    // the two failures (it samples every loop, at most 10 ms apart). So the machine saw
    // failure, failure, success.
    let seen = live.accepted();
    wait_checks_above(&live, seen + 2, Duration::from_millis(3 * interval) + SLACK);
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
        backend(refused_addr()),
        backend(refused_addr()),
        backend(refused_addr()),
    );
    let (a_state, b_state, c_state) = (
        Arc::clone(&a.state),
        Arc::clone(&b.state),
        Arc::clone(&c.state),
    );
    let (a_label, b_label, c_label) = (a.label.clone(), b.label.clone(), c.label.clone());
    let hc = check(50, 50, 2, 2);
    let (l, old_calls) = listener("reload", hc.clone(), vec![a.clone(), b]);
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
    let live = EchoBackend::start();
    let b = backend(live.addr());
    let state = Arc::clone(&b.state);
    let hc = HealthCheck {
        interval,
        timeout: Duration::from_secs(1),
        rise: 2,
        fall: 3,
        port: None,
        send: None,
        expect: None,
    };
    // Witnesses: backends of another listener with fall 1 that only passive failures can
    // take down (they answer their checks). The prober samples every backend's failures
    // in one pass, so a witness going down proves a pass ran after what was recorded
    // before the witness's failure.
    let answering = EchoBackend::start();
    let witness = |label: &str| ProbeBackend {
        label: label.into(),
        addr: answering.addr(),
        state: Arc::new(BackendState::new()),
    };
    let (w1, w2) = (witness("w1"), witness("w2"));
    let whc = HealthCheck {
        fall: 1,
        ..hc.clone()
    };
    let (l, _) = listener(name, hc.clone(), vec![b.clone()]);
    let (wl, _) = listener("witness", whc.clone(), vec![w1.clone()]);
    let (tx, rx) = crossbeam_channel::unbounded();
    let prober = Prober::spawn(vec![l, wl], tx).unwrap();
    state.record_connect_failure();
    state.record_connect_failure();
    w1.state.record_connect_failure();
    let (w1_down, mut others) = wait_for_backend(&rx, SLACK, "w1");
    assert!(!w1_down.up && w1_down.passive, "{w1_down}");

    // Reload with a new witness: its failure counts from the `update` call on, so its
    // down line proves the prober runs the new set.
    let (l2, _) = listener(name, hc, vec![b]);
    let (wl2, _) = listener("witness", whc, vec![w1, w2.clone()]);
    prober.update(vec![l2, wl2]);
    w2.state.record_connect_failure();
    let (w2_down, more) = wait_for_backend(&rx, SLACK, "w2");
    assert!(!w2_down.up && w2_down.passive, "{w2_down}");
    others.extend(more);
    assert!(
        others.iter().all(|t| t.listener != name),
        "two failures (fall 3) flipped nothing: {others:?}"
    );

    state.record_connect_failure();
    let down = wait_for(&rx, SLACK, |t| t.listener == name);
    assert!(!down.up, "{down}");
    assert_eq!(
        down.consecutive, 3,
        "the streak of 2 survived the reload: {down}"
    );
    assert_eq!(live.accepted(), 0, "no active check ran");
    prober.stop();
}

#[test]
fn health_check_port_overrides_backend_port() {
    let live = EchoBackend::start();
    let mut hc = check(50, 100, 1, 1);
    hc.port = Some(live.addr().port());
    // The backend's own port refuses; checks go to the override port and succeed.
    let b = backend(refused_addr());
    let label = b.label.clone();
    let (l, _) = listener("override", hc, vec![b]);
    let (tx, rx) = crossbeam_channel::unbounded();
    let prober = Prober::spawn(vec![l], tx).unwrap();
    wait_checks_above(&live, 3, SLACK);
    assert!(collect_for(&rx, Duration::from_millis(100), &label).is_empty());
    prober.stop();
}

#[test]
fn stop_is_prompt_with_checks_in_flight() {
    let hole = BlackholeBackend::start();
    let live = EchoBackend::start();
    let backends: Vec<ProbeBackend> = (0..20)
        .map(|_| backend(hole.addr()))
        .enumerate()
        .map(|(i, mut b)| {
            b.label = format!("hole-{i}");
            b
        })
        .collect();
    let (slow, _) = listener("slow", check(50, 5_000, 1, 1), backends);
    let (fast, _) = listener("fast", check(20, 100, 1, 1), vec![backend(live.addr())]);
    let (tx, _rx) = crossbeam_channel::unbounded();
    let prober = Prober::spawn(vec![slow, fast], tx).unwrap();
    wait_checks_above(&live, 2, SLACK);
    let started = Instant::now();
    prober.stop();
    let took = started.elapsed();
    println!("stop() with 20 checks in flight took {took:?}");
    assert!(took < Duration::from_millis(100), "{took:?}");
}

#[test]
fn full_event_channel_drops_and_counts_but_health_still_flips() {
    let b = backend(refused_addr());
    let state = Arc::clone(&b.state);
    let (l, calls) = listener("full", check(50, 50, 1, 1), vec![b]);
    let (tx, rx) = crossbeam_channel::bounded(0);
    let prober = Prober::spawn(vec![l], tx).unwrap();
    assert!(
        wait_until(SLACK, || !state.is_up() && calls.load(Ordering::SeqCst) > 0),
        "never marked down"
    );
    assert_eq!(prober.dropped_events(), 1);
    drop(rx);
    prober.stop();
}

#[test]
fn a_backend_in_maintenance_gets_no_checks_and_no_passive_verdict() {
    use ringlb_scheduler::AdminState;
    let (maint, control) = (EchoBackend::start(), EchoBackend::start());
    let (m, c) = (backend(maint.addr()), backend(control.addr()));
    let state = Arc::clone(&m.state);
    let (l, _) = listener("maint", check(50, 50, 1, 1), vec![m, c]);
    let (tx, rx) = crossbeam_channel::unbounded();
    let prober = Prober::spawn(vec![l], tx).unwrap();
    assert!(
        maint.wait_accepted(1, SLACK),
        "backend {} saw no check in time",
        maint.addr()
    );

    state.set_admin_state(AdminState::Maint);
    // A check already in flight when the state changed may still land: at most one.
    let before = maint.accepted();
    let base = control.accepted();
    // Positive control: the other backend keeps being checked, 10 more times.
    assert!(
        control.wait_accepted(base + 10 + 1, SLACK * 4),
        "backend {} saw no check in time",
        control.addr()
    );
    assert!(
        maint.accepted() <= before + 1,
        "checked in maintenance: {} → {}",
        before,
        maint.accepted()
    );
    // Passive failures are not judged either (fall is 1).
    state.record_connect_failure();
    let base = control.accepted();
    assert!(
        control.wait_accepted(base + 3 + 1, SLACK * 4),
        "backend {} saw no check in time",
        control.addr()
    );
    assert!(state.is_up(), "maintenance must not mark a backend down");
    assert!(rx.try_recv().is_err(), "no transition expected");

    // Back to ready: checks resume.
    state.set_admin_state(AdminState::Ready);
    let resumed = maint.accepted();
    assert!(
        maint.wait_accepted(resumed + 1, SLACK),
        "backend {} saw no check in time",
        maint.addr()
    );
    prober.stop();
}

/// A loopback server whose every connection gets `reply` once it has read something
/// (`on_connect`: at once), or is closed at once when `reply` is `None`. Its thread ends
/// with the test binary.
fn scripted(reply: Option<&'static [u8]>, on_connect: bool) -> SocketAddr {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let Some(reply) = reply else { continue };
            if !on_connect {
                let mut buf = [0u8; 64];
                if conn.read(&mut buf).unwrap_or(0) == 0 {
                    continue;
                }
            }
            let _ = conn.write_all(reply);
        }
    });
    addr
}

#[test]
fn send_expect_outcomes_on_real_sockets() {
    let hc = |send: Option<&[u8]>, expect: Option<&[u8]>| HealthCheck {
        send: send.map(<[u8]>::to_vec),
        expect: expect.map(<[u8]>::to_vec),
        ..check(100, 80, 1, 2)
    };
    // Accepts (its kernel completes the handshake) but never reads or answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let wrong = scripted(Some(b"NOPE\r\n"), false);
    let closer = scripted(None, false);
    let echo = EchoBackend::start();
    let banner = scripted(Some(b"220 ready\r\n"), true);
    let (ping, _) = listener(
        "ping",
        hc(Some(b"PING\r\n"), Some(b"PING\r\n")),
        vec![
            backend(silent.local_addr().unwrap()),
            backend(wrong),
            backend(closer),
            backend(echo.addr()),
        ],
    );
    let (greeting, _) = listener("greeting", hc(None, Some(b"220 ")), vec![backend(banner)]);
    // `send` alone: any reply passes.
    let (any, _) = listener("any", hc(Some(b"x"), None), vec![backend(echo.addr())]);
    let (tx, rx) = crossbeam_channel::unbounded();
    let prober = Prober::spawn(vec![ping, greeting, any], tx).unwrap();
    let started = Instant::now();
    let mut outcomes = std::collections::HashMap::new();
    while outcomes.len() < 3 {
        let t = wait_for(&rx, Duration::from_millis(100 * 2 + 80) + SLACK, |t| !t.up);
        outcomes.insert(t.backend.clone(), t.outcome.clone());
        assert_eq!(t.listener, "ping", "{t}");
    }
    eprintln!(
        "silent, wrong and closing backends down after {:?}: {outcomes:?}",
        started.elapsed()
    );
    assert_eq!(
        outcomes[&silent.local_addr().unwrap().to_string()],
        Outcome::NoReply
    );
    assert_eq!(outcomes[&wrong.to_string()], Outcome::BadReply);
    assert_eq!(outcomes[&closer.to_string()], Outcome::Closed);
    assert_eq!(Outcome::NoReply.to_string(), "no_reply");
    assert_eq!(Outcome::BadReply.to_string(), "bad_reply");

    // The echo (matching reply), the banner (expect alone) and `send` alone stay up over
    // several more checks of each.
    let seen = echo.accepted();
    wait_checks_above(&echo, seen + 8, Duration::from_secs(10));
    drop(prober);
    let late: Vec<Transition> = rx.try_iter().collect();
    assert!(late.is_empty(), "unexpected transitions: {late:?}");
}
