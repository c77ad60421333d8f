//! Steering end to end, through a running `ringlb`: slow start under a steady connect
//! load, manual and timed failback, priority tiers with `min_active`, and least_latency
//! against a backend that answers late.
//!
//! Shares are counted from the tag each backend writes first on a connection; times come
//! from ringlb's own log timestamps (the health flip that starts a ramp or a failback
//! window), so a slow test thread does not shift them.

use std::net::SocketAddr;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use ringlb_testkit::*;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_ringlb"))
}

/// Generous: a loaded 2-core machine.
const WAIT: Duration = Duration::from_secs(20);

/// Fast checks: down after 2 × 100 ms, up after 2 × 100 ms.
const HC: &str = "health_check:\n  interval: 100ms\n  timeout: 100ms\n  rise: 2\n  fall: 2\n";

/// One TCP listener "t" with `keys` (listener level) and `backends` as (addr, priority).
fn config(keys: &str, backends: &[(SocketAddr, u8)]) -> String {
    let mut y = String::from(
        "access_log: false\nadmin: 127.0.0.1:0\nlisteners:\n  - name: t\n    bind: 127.0.0.1:0\n",
    );
    for line in keys.lines().filter(|l| !l.trim().is_empty()) {
        y.push_str(&format!("    {line}\n"));
    }
    y.push_str("    backends:\n");
    for (addr, priority) in backends {
        y.push_str(&format!("      - {{addr: {addr}, priority: {priority}}}\n"));
    }
    y
}

fn start(yaml: &str) -> Ringlb {
    let lb = Ringlb::builder(bin(), yaml).env("RUST_LOG", "info").start();
    assert!(
        lb.wait_for_log("] ready: ", READY_TIMEOUT),
        "no `ready:`:\n{}",
        lb.logs().join("\n")
    );
    lb
}

/// One connection: the tag of the backend it reached, then `exchanges` echoed messages.
fn visit(addr: SocketAddr, exchanges: usize) -> Result<String, String> {
    let mut s = connect_with_timeout(addr, Duration::from_secs(5)).map_err(|e| e.to_string())?;
    let tag = try_read_line_tag(&mut s)?;
    for _ in 0..exchanges {
        assert_echo(&mut s, b"ping settlement\n");
    }
    Ok(tag)
}

/// The tags of `n` sequential connections.
fn tags(addr: SocketAddr, n: usize) -> Vec<String> {
    (0..n)
        .map(|_| visit(addr, 0).unwrap_or_else(|e| panic!("client: {e}")))
        .collect()
}

fn share(tags: &[String], tag: &str) -> f64 {
    tags.iter().filter(|t| *t == tag).count() as f64 / tags.len().max(1) as f64
}

/// Waits for the health flip of `backend` (`up` or down) logged after `mark`; its time.
fn flip(lb: &Ringlb, mark: usize, backend: SocketAddr, up: bool) -> SystemTime {
    let dir = if up { "up" } else { "down" };
    let needle = format!("backend {dir}: listener=t backend={backend} ");
    assert!(
        lb.wait_for_log_after(mark, &needle, WAIT),
        "no `{needle}`:\n{}",
        lb.logs().join("\n")
    );
    lb.health_flips("t", &backend.to_string())
        .into_iter()
        .find(|f| f.idx >= mark && f.up == up)
        .map(|f| f.at)
        .expect("the flip just logged")
}

fn ctl(lb: &Ringlb, args: &[&str]) -> String {
    let (code, out, err) = ringlb_testkit::ctl(bin(), lb.config_path(), args);
    assert_eq!(code, 0, "ctl {args:?}: {out} {err}");
    out
}

fn in_use(lb: &Ringlb, backend: SocketAddr) -> bool {
    let series = format!("ringlb_backend_priority_in_use{{listener=\"t\",backend=\"{backend}\"}}");
    lb.metric(&series)
        .unwrap_or_else(|| panic!("no {series} in /metrics"))
        == 1.0
}

#[test]
fn slow_start_gives_a_restarted_backend_a_growing_share() {
    let window = Duration::from_secs(4);
    let mut cold = EchoBackend::tagged("cold");
    let warm = [EchoBackend::tagged("w1"), EchoBackend::tagged("w2")];
    let yaml = config(
        &format!("algorithm: round_robin\nslow_start: 4s\n{HC}"),
        &[(cold.addr(), 0), (warm[0].addr(), 0), (warm[1].addr(), 0)],
    );
    let lb = start(&yaml);
    let addr = lb.listener_addr("t");
    assert!(
        (share(&tags(addr, 60), "cold") - 1.0 / 3.0).abs() < 0.05,
        "no ramp at start"
    );

    let mark = lb.log_mark();
    cold.close_listener();
    flip(&lb, mark, cold.addr(), false);
    let mark = lb.log_mark();
    cold.reopen();
    let up = flip(&lb, mark, cold.addr(), true);

    // A steady sequential load, each connection stamped with the time since the flip.
    let mut seen: Vec<(Duration, String)> = Vec::new();
    let until = up + window + Duration::from_secs(2);
    let started = Instant::now();
    while SystemTime::now() < until && started.elapsed() < Duration::from_secs(60) {
        let tag = visit(addr, 0).unwrap_or_else(|e| panic!("client: {e}"));
        seen.push((since(up, SystemTime::now()), tag));
    }
    let slice = |from: Duration, to: Duration| -> Vec<String> {
        seen.iter()
            .filter(|(t, _)| *t >= from && *t < to)
            .map(|(_, tag)| tag.clone())
            .collect()
    };
    let quarter = window / 4;
    let shares: Vec<f64> = (0..4)
        .map(|k| share(&slice(quarter * k, quarter * (k + 1)), "cold"))
        .collect();
    let after = share(
        &slice(window + Duration::from_millis(200), window * 2),
        "cold",
    );
    let counts: Vec<usize> = (0..4)
        .map(|k| slice(quarter * k, quarter * (k + 1)).len())
        .collect();
    println!("slow start shares per quarter {shares:?} (connections {counts:?}), after {after:.3}");
    assert!(
        counts.iter().all(|&c| c >= 20),
        "too few connections per slice: {counts:?}"
    );
    // Ramp 5 %→100 % of one weight among three: about 8 %, 17 %, 24 %, 30 %, then 33 %.
    assert!(shares[0] < 0.15, "{shares:?}");
    assert!(shares[3] > shares[0] + 0.08, "{shares:?}");
    assert!(
        shares.windows(2).all(|w| w[1] + 0.06 >= w[0]),
        "the share grows: {shares:?}"
    );
    assert!(after > 0.27, "full share after the window: {after:.3}");
    let weight = lb
        .metric(&format!(
            "ringlb_backend_weight{{listener=\"t\",backend=\"{}\"}}",
            cold.addr()
        ))
        .expect("ringlb_backend_weight");
    assert_eq!(weight, 1.0);
}

#[test]
fn manual_failback_holds_the_backups_until_ctl_failback() {
    let (mut primaries, backup, yaml) = two_primaries_and("b", "failback: manual");
    let lb = start(&yaml);
    let addr = lb.listener_addr("t");
    assert_eq!(share(&tags(addr, 20), "b"), 0.0);

    held_on_the_backup(&lb, &mut primaries);
    assert_eq!(
        lb.count_log("new connections go to priority 1 (was priority 0)"),
        1
    );
    // Let a few steering ticks pass: nothing moves back by itself.
    thread::sleep(Duration::from_millis(500));
    assert_eq!(share(&tags(addr, 20), "b"), 1.0, "held on the backup");
    assert!(in_use(&lb, backup.addr()) && !in_use(&lb, primaries[0].addr()));
    let status = ctl(&lb, &["--json", "status"]);
    assert!(status.contains("\"failback_pending\":\"0\""), "{status}");

    let out = ctl(&lb, &["failback", "t"]);
    assert!(
        out.contains("new connections go to priority 0 (was priority 1)"),
        "{out}"
    );
    let after = tags(addr, 20);
    assert_eq!(share(&after, "b"), 0.0, "{after:?}");
    assert!(
        wait_until(WAIT, || lb.count_log("(asked by ringlb ctl failback)") == 1),
        "{:#?}",
        lb.logs()
    );
    assert!(ctl(&lb, &["failback", "t"]).contains("nothing to do"));
}

#[test]
fn timed_failback_waits_a_whole_window_and_a_flap_restarts_it() {
    let window = Duration::from_secs(2);
    let mut primary = EchoBackend::tagged("p");
    let backup = EchoBackend::tagged("b");
    let yaml = config(
        &format!("failback: 2s\n{HC}"),
        &[(primary.addr(), 0), (backup.addr(), 1)],
    );
    let lb = start(&yaml);
    let addr = lb.listener_addr("t");

    let mark = lb.log_mark();
    primary.close_listener();
    flip(&lb, mark, primary.addr(), false);
    let mark = lb.log_mark();
    primary.reopen();
    let first_up = flip(&lb, mark, primary.addr(), true);
    // A flap inside the window.
    let mark = lb.log_mark();
    primary.close_listener();
    flip(&lb, mark, primary.addr(), false);
    let mark = lb.log_mark();
    primary.reopen();
    let last_up = flip(&lb, mark, primary.addr(), true);
    assert_eq!(share(&tags(addr, 10), "b"), 1.0, "inside the window");

    let needle =
        "new connections go to priority 0 (was priority 1): failback: preferred tiers up for 2s";
    assert!(
        lb.wait_for_log_after(mark, needle, WAIT),
        "{}",
        lb.logs().join("\n")
    );
    let at = lb
        .logs()
        .iter()
        .find(|l| l.contains(needle))
        .and_then(|l| log_time(l))
        .expect("timestamped");
    let after_last = since(last_up, at);
    println!(
        "failback {:?} after the first recovery, {after_last:?} after the last one",
        since(first_up, at)
    );
    assert!(after_last >= window, "{after_last:?}");
    assert!(
        after_last < window + Duration::from_secs(2),
        "{after_last:?}"
    );
    assert_eq!(share(&tags(addr, 10), "p"), 1.0);
}

#[test]
fn min_active_adds_the_next_tier_while_too_few_primaries_are_up() {
    let (mut primaries, _second, yaml) =
        two_primaries_and("s", "algorithm: round_robin\nmin_active: 2");
    let lb = start(&yaml);
    let addr = lb.listener_addr("t");
    assert_eq!(share(&tags(addr, 20), "s"), 0.0);
    let mark = lb.log_mark();
    primaries[0].close_listener();
    flip(&lb, mark, primaries[0].addr(), false);
    assert!(lb.wait_for_log_after(
        mark,
        "new connections go to priorities 0-1 (was priority 0)",
        WAIT
    ));
    let both = tags(addr, 40);
    assert!(
        (share(&both, "s") - 0.5).abs() < 0.1,
        "p2 and s share: {both:?}"
    );
    let mark = lb.log_mark();
    primaries[0].reopen();
    flip(&lb, mark, primaries[0].addr(), true);
    assert!(lb.wait_for_log_after(
        mark,
        "new connections go to priority 0 (was priorities 0-1)",
        WAIT
    ));
    assert_eq!(share(&tags(addr, 20), "s"), 0.0);
}

#[test]
fn least_latency_gives_a_late_backend_a_small_share_until_it_recovers() {
    let fast = [EchoBackend::tagged("f1"), EchoBackend::tagged("f2")];
    let slow = DelayedEchoBackend::tagged("slow", Duration::from_millis(20));
    let yaml = config(
        "algorithm: least_latency",
        &[(fast[0].addr(), 0), (fast[1].addr(), 0), (slow.addr(), 0)],
    );
    let lb = start(&yaml);
    let addr = lb.listener_addr("t");
    // Four clients at a time, three request/response exchanges per connection.
    let run = |n: usize| -> Vec<String> {
        let per = n / 4;
        let handles: Vec<_> = (0..4)
            .map(|_| {
                thread::spawn(move || {
                    (0..per)
                        .map(|_| visit(addr, 3).unwrap_or_else(|e| panic!("client: {e}")))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("client thread"))
            .collect()
    };
    let slow_phase = run(600);
    let slow_share = share(&slow_phase, "slow");
    println!("least_latency: share of the 20 ms-late backend {slow_share:.3} of 600 connections");
    assert!(slow_share < 0.10, "{slow_share:.3}");
    let latency = lb
        .metric(&format!(
            "ringlb_backend_latency_seconds{{listener=\"t\",backend=\"{}\"}}",
            slow.addr()
        ))
        .expect("the slow backend has a latency sample");
    assert!(latency > 0.0005, "{latency}");

    slow.set_delay(Duration::ZERO);
    let started = Instant::now();
    let regained = loop {
        let recent = run(200);
        let s = share(&recent, "slow");
        if s > 0.2 {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(45),
            "the recovered backend never regained share (last {s:.3})"
        );
    };
    println!(
        "least_latency: recovered backend back to {regained:.3} after {:?}",
        started.elapsed()
    );
}

/// Listener "t" over two primaries tagged p1, p2 and a priority-1 backend tagged `tag`,
/// with `keys` and the fast health check.
fn two_primaries_and(tag: &str, keys: &str) -> ([EchoBackend; 2], EchoBackend, String) {
    let primaries = [EchoBackend::tagged("p1"), EchoBackend::tagged("p2")];
    let second = EchoBackend::tagged(tag);
    let yaml = config(
        &format!("{keys}\n{HC}"),
        &[
            (primaries[0].addr(), 0),
            (primaries[1].addr(), 0),
            (second.addr(), 1),
        ],
    );
    (primaries, second, yaml)
}

/// Primaries down then back with `failback: manual`: traffic is held on the backup.
fn held_on_the_backup(lb: &Ringlb, primaries: &mut [EchoBackend; 2]) {
    let mark = lb.log_mark();
    for p in primaries.iter_mut() {
        p.close_listener();
    }
    for p in primaries.iter() {
        flip(lb, mark, p.addr(), false);
    }
    let mark = lb.log_mark();
    for p in primaries.iter_mut() {
        p.reopen();
    }
    for p in primaries.iter() {
        flip(lb, mark, p.addr(), true);
    }
    assert_eq!(share(&tags(lb.listener_addr("t"), 10), "b"), 1.0);
}

#[test]
fn a_manual_failback_hold_survives_a_live_upgrade() {
    let (mut primaries, _backup, yaml) = two_primaries_and("b", "failback: manual");
    let lb = start(&yaml);
    let addr = lb.listener_addr("t");
    held_on_the_backup(&lb, &mut primaries);

    // Ended by pid when the test ends, whatever happens below.
    let _next = lb.live_upgrade(WAIT);
    assert_eq!(
        share(&tags(addr, 20), "b"),
        1.0,
        "still held after the upgrade"
    );
    let out = ctl(&lb, &["failback", "t"]);
    assert!(
        out.contains("new connections go to priority 0 (was priority 1)"),
        "{out}"
    );
    assert_eq!(share(&tags(addr, 20), "b"), 0.0);
}

#[test]
fn a_manual_failback_hold_survives_a_restart_with_state_file() {
    let dir = std::env::temp_dir().join(format!("ringlb-steering-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let state = dir.join("state.json");
    let (mut primaries, _backup, yaml) = two_primaries_and("b", "failback: manual");
    let yaml = format!("state_file: {}\n{yaml}", state.display());
    let mut lb = start(&yaml);
    held_on_the_backup(&lb, &mut primaries);
    assert!(
        wait_until(WAIT, || std::fs::read_to_string(&state)
            .is_ok_and(|t| t.contains("\"holds\":[{"))),
        "the hold never reached the state file"
    );
    lb.signal(Signal::Term);
    assert!(lb.wait_exit(WAIT).is_some());
    drop(lb);

    let lb = start(&yaml);
    assert_eq!(
        share(&tags(lb.listener_addr("t"), 20), "b"),
        1.0,
        "held after the restart"
    );
    ctl(&lb, &["failback", "t"]);
    assert_eq!(share(&tags(lb.listener_addr("t"), 20), "b"), 0.0);
    assert!(
        wait_until(WAIT, || std::fs::read_to_string(&state)
            .is_ok_and(|t| t.contains("\"holds\":[{\"highest\":0"))),
        "{:?}",
        std::fs::read_to_string(&state)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn on_recover_sheds_the_backup_links_on_failback() {
    let mut primary = EchoBackend::tagged("p");
    let backup = EchoBackend::tagged("b");
    let yaml = config(
        &format!("failback: manual\non_recover: shed_backup\non_down_spread: 1s\n{HC}"),
        &[(primary.addr(), 0), (backup.addr(), 1)],
    );
    let lb = start(&yaml);
    let addr = lb.listener_addr("t");
    let mark = lb.log_mark();
    primary.close_listener();
    flip(&lb, mark, primary.addr(), false);

    let mut links: Vec<std::net::TcpStream> = (0..20)
        .map(|_| {
            let mut s = connect(addr);
            assert_eq!(read_line_tag(&mut s), "b");
            s
        })
        .collect();
    let mark = lb.log_mark();
    primary.reopen();
    flip(&lb, mark, primary.addr(), true);
    // Held on the backup (manual failback): the links are left alone.
    thread::sleep(Duration::from_millis(500));
    for s in &mut links {
        assert_echo(s, b"still here\n");
    }

    let asked = Instant::now();
    ctl(&lb, &["failback", "t"]);
    for s in &mut links {
        let end = read_until_end(s, WAIT);
        assert!(matches!(end, ClientEnd::Eof { bytes: 0 }), "{end:?}");
    }
    let took = asked.elapsed();
    println!("on_recover: 20 backup links closed within {took:?} of ctl failback (spread 1s)");
    let ended = |lb: &Ringlb| {
        lb.metric("ringlb_connections_ended_total{listener=\"t\",end=\"shed_backup\"}")
            .unwrap_or(0.0)
    };
    assert!(wait_until(WAIT, || ended(&lb) == 20.0), "{}", ended(&lb));
    assert!(lb.count_log("on_recover: listener=\"t\" shed_backup: closing 20 connection(s)") == 1);
    assert_eq!(share(&tags(addr, 10), "p"), 1.0);
}
