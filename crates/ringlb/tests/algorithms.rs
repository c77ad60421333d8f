//! Every balancing algorithm seen at real backends through a running `ringlb`.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;

use ringlb_testkit::*;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_ringlb"))
}

struct Setup {
    _backends: Vec<EchoBackend>,
    lb: Ringlb,
}

/// Three tagged backends b1..b3 with per-backend extra keys (e.g. "weight: 3").
fn setup(algorithm: &str, backend_extra: [&str; 3]) -> Setup {
    let backends: Vec<EchoBackend> = ["b1", "b2", "b3"]
        .iter()
        .map(|t| EchoBackend::tagged(t))
        .collect();
    let mut y = format!(
        "access_log: false\nlisteners:\n  - name: t\n    bind: 127.0.0.1:0\n    algorithm: {algorithm}\n    backends:\n"
    );
    for (b, extra) in backends.iter().zip(backend_extra) {
        y.push_str(&format!("      - addr: {}\n", b.addr()));
        if !extra.is_empty() {
            y.push_str(&format!("        {extra}\n"));
        }
    }
    let lb = Ringlb::start(bin(), &y);
    Setup {
        _backends: backends,
        lb,
    }
}

fn tag_of(mut c: TcpStream) -> (String, TcpStream) {
    let tag = read_line_tag(&mut c);
    (tag, c)
}

/// Open `n` connections one after another, closing each: backend tag counts.
fn spread(addr: SocketAddr, n: usize, from: Ipv4Addr) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for _ in 0..n {
        let c = connect_from(from, addr).expect("connect");
        let (tag, _) = tag_of(c);
        *counts.entry(tag).or_insert(0) += 1;
    }
    counts
}

/// Open `n` connections and keep them: backend tag counts of the held set.
fn hold(addr: SocketAddr, n: usize) -> (HashMap<String, usize>, Vec<TcpStream>) {
    let mut counts = HashMap::new();
    let mut held = Vec::new();
    for _ in 0..n {
        let (tag, c) = tag_of(connect(addr));
        *counts.entry(tag).or_insert(0) += 1;
        held.push(c);
    }
    (counts, held)
}

fn count(m: &HashMap<String, usize>, tag: &str) -> usize {
    m.get(tag).copied().unwrap_or(0)
}

#[test]
fn weighted_round_robin_follows_weights() {
    let s = setup(
        "weighted_round_robin",
        ["weight: 3", "weight: 1", "weight: 1"],
    );
    let counts = spread(s.lb.listener_addr("t"), 50, Ipv4Addr::LOCALHOST);
    eprintln!("weighted_round_robin 3:1:1 over 50 connections: {counts:?}");
    assert!((26..=34).contains(&count(&counts, "b1")), "{counts:?}");
    assert!((6..=14).contains(&count(&counts, "b2")), "{counts:?}");
    assert!((6..=14).contains(&count(&counts, "b3")), "{counts:?}");
}

#[test]
fn random_reaches_every_backend_by_weight() {
    let s = setup("random", ["weight: 4", "weight: 1", "weight: 1"]);
    let counts = spread(s.lb.listener_addr("t"), 120, Ipv4Addr::LOCALHOST);
    eprintln!("random 4:1:1 over 120 connections: {counts:?}");
    assert!(
        count(&counts, "b1") > count(&counts, "b2") + count(&counts, "b3") / 2,
        "{counts:?}"
    );
    assert!(
        count(&counts, "b2") > 0 && count(&counts, "b3") > 0,
        "{counts:?}"
    );
}

#[test]
fn least_connections_balances_held_connections() {
    let s = setup("least_connections", ["", "", ""]);
    let (counts, _held) = hold(s.lb.listener_addr("t"), 9);
    eprintln!("least_connections, 9 held: {counts:?}");
    for tag in ["b1", "b2", "b3"] {
        assert_eq!(count(&counts, tag), 3, "{counts:?}");
    }
}

#[test]
fn least_connections_honours_weight() {
    let s = setup("least_connections", ["weight: 2", "weight: 1", "weight: 1"]);
    let (counts, _held) = hold(s.lb.listener_addr("t"), 12);
    eprintln!("least_connections 2:1:1, 12 held: {counts:?}");
    assert_eq!(count(&counts, "b1"), 6, "{counts:?}");
}

#[test]
fn power_of_two_steers_away_from_loaded_backends() {
    let s = setup("power_of_two", ["", "", ""]);
    let (counts, _held) = hold(s.lb.listener_addr("t"), 30);
    eprintln!("power_of_two, 30 held: {counts:?}");
    let max = counts.values().max().copied().unwrap_or(0);
    let min = ["b1", "b2", "b3"]
        .iter()
        .map(|t| count(&counts, t))
        .min()
        .unwrap_or(0);
    assert!(
        max - min <= 5,
        "p2c must keep held connections close: {counts:?}"
    );
}

#[test]
fn dynamic_weight_fills_by_capacity() {
    // w_i = 1/(1 + L_i/C_i): small backends lose weight fast as they fill. Simulated over
    // 20,000 runs of this set-up, b3 ended with at least as many connections as b1 and b2
    // together minus 4 every time; a capacity-blind spread would give each about 7.
    let s = setup(
        "dynamic_weight",
        [
            "max_connections: 5",
            "max_connections: 5",
            "max_connections: 100",
        ],
    );
    let (counts, _held) = hold(s.lb.listener_addr("t"), 20);
    eprintln!("dynamic_weight capacities 5/5/100, 20 held: {counts:?}");
    let (b1, b2, b3) = (
        count(&counts, "b1"),
        count(&counts, "b2"),
        count(&counts, "b3"),
    );
    assert!(b3 + 4 >= b1 + b2 && b3 > b1.max(b2), "{counts:?}");
}

fn sticky(algorithm: &str) {
    let s = setup(algorithm, ["", "", ""]);
    let addr = s.lb.listener_addr("t");
    // Same client IP, new source port each time: always the same backend.
    let same = spread(addr, 20, Ipv4Addr::new(127, 0, 0, 1));
    assert_eq!(
        same.len(),
        1,
        "{algorithm}: one client IP must stick to one backend: {same:?}"
    );
    // Many client IPs: spread over the backends; each one sticky and as `explain` says.
    let mut seen = HashMap::new();
    for last in 2..=40u8 {
        let ip = Ipv4Addr::new(127, 0, 0, last);
        let first = spread(addr, 3, ip);
        assert_eq!(
            first.len(),
            1,
            "{algorithm}: {ip} moved between backends: {first:?}"
        );
        let tag = first.keys().next().cloned().unwrap_or_default();
        *seen.entry(tag.clone()).or_insert(0) += 1;
        let out = Command::new(bin())
            .args(["explain", "--config"])
            .arg(s.lb.config_path())
            .args(["--listener", "t", "--client", &format!("{ip}:40000")])
            .output()
            .expect("run explain");
        let text = String::from_utf8_lossy(&out.stdout);
        let backend_index: usize = tag.trim_start_matches('b').parse().unwrap_or(0);
        let expected = s._backends[backend_index - 1].addr().to_string();
        assert!(
            text.contains(&format!("-> backend {expected}")),
            "{algorithm}: explain disagrees for {ip}: says {text:?}, traffic went to {expected}"
        );
    }
    eprintln!("{algorithm}: 39 client IPs spread as {seen:?}");
    assert!(
        seen.len() >= 2,
        "{algorithm}: clients must spread: {seen:?}"
    );
}

#[test]
fn source_hash_is_sticky_per_client_ip() {
    sticky("source_hash");
}

#[test]
fn maglev_is_sticky_per_client_ip() {
    sticky("maglev");
}
