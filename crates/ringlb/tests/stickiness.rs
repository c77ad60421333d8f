//! Learned stickiness end to end, through a running `ringlb`: clients from distinct
//! 127.x addresses come back to their backend while backends are added and removed by
//! reloads (and plain `source_hash` is shown to move some of them), `single_active` moves
//! everyone on a failure and not back until told, and the table survives a reload that
//! re-binds the listener, a live upgrade and a restart with `state_file`.
//!
//! Which backend a connection reached is the tag the backend writes first.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use ringlb_testkit::*;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_ringlb"))
}

/// Generous: a loaded 2-core machine.
const WAIT: Duration = Duration::from_secs(20);

/// Fast checks: down after 2 × 100 ms, up after 2 × 100 ms.
const HC: &str = "health_check: {interval: 100ms, timeout: 100ms, rise: 2, fall: 2}";

/// One TCP listener "t" on `bind` with `keys` (listener level, one per line), `backends`,
/// and `top` (top-level keys) first.
fn config(top: &str, bind: &str, keys: &str, backends: &[&EchoBackend]) -> String {
    let mut y = format!(
        "{top}access_log: false\nadmin: 127.0.0.1:0\nlisteners:\n  - name: t\n    bind: {bind}\n"
    );
    for line in keys.lines().filter(|l| !l.trim().is_empty()) {
        y.push_str(&format!("    {line}\n"));
    }
    y.push_str("    backends:\n");
    for b in backends {
        y.push_str(&format!("      - addr: {}\n", b.addr()));
    }
    y
}

/// Started and listening (`Ringlb::start` waits for the listener and admin lines).
fn start(yaml: &str) -> Ringlb {
    Ringlb::start(bin(), yaml)
}

fn reload(lb: &mut Ringlb, yaml: &str) {
    let mark = lb.reload(yaml);
    assert!(
        lb.wait_for_log_after(mark, "reload applied", WAIT),
        "no `reload applied`:\n{}",
        lb.logs().join("\n")
    );
}

/// Client `n`'s own address: 127.0.1.(10 + n).
fn client_ip(n: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 1, 10 + n as u8)
}

/// One connection from client `n`: the tag of the backend it reached, after one echo.
fn visit(addr: SocketAddr, n: usize) -> String {
    let mut s = connect_from(client_ip(n), addr)
        .unwrap_or_else(|e| panic!("client {n}: connect to {addr}: {e}"));
    let tag = try_read_line_tag(&mut s).unwrap_or_else(|e| panic!("client {n}: {e}"));
    assert_echo(&mut s, b"35=A logon\n");
    tag
}

/// Every client in `order` once: the tags by client number.
fn round(addr: SocketAddr, clients: usize, order: impl Iterator<Item = usize>) -> Vec<String> {
    let mut tags = vec![String::new(); clients];
    for n in order {
        tags[n] = visit(addr, n);
    }
    tags
}

fn metric(lb: &Ringlb, name: &str) -> f64 {
    let series = format!("{name}{{listener=\"t\"}}");
    lb.metric(&series)
        .unwrap_or_else(|| panic!("no {series} in /metrics"))
}

fn ctl_ok(lb: &Ringlb, args: &[&str]) -> String {
    let (code, out, err) = ctl(bin(), lb.config_path(), args);
    assert_eq!(code, 0, "ctl {args:?}: {out}{err}");
    out
}

/// `n` tagged echo backends: a, b, c, ...
fn backends(n: u8) -> Vec<EchoBackend> {
    (0..n)
        .map(|i| EchoBackend::tagged(&char::from(b'a' + i).to_string()))
        .collect()
}

#[test]
fn fifty_clients_keep_their_backend_while_backends_are_added_and_removed() {
    const CLIENTS: usize = 50;
    let b = backends(4);
    let three = [&b[0], &b[1], &b[2]];
    let four = [&b[0], &b[1], &b[2], &b[3]];

    // Without stickiness: source_hash pins each client while the set stays the same, and
    // a fourth backend moves some of them.
    let plain = |set: &[&EchoBackend]| config("", "127.0.0.1:0", "algorithm: source_hash", set);
    let mut lb = start(&plain(&three));
    let addr = lb.listener_addr("t");
    let before = round(addr, CLIENTS, 0..CLIENTS);
    reload(&mut lb, &plain(&four));
    let after = round(addr, CLIENTS, 0..CLIENTS);
    let moved = before.iter().zip(&after).filter(|(x, y)| x != y).count();
    assert!(
        moved > 0,
        "source_hash moved nobody when a backend was added"
    );
    drop(lb);

    // With it: the same clients, the same changes, five visits each; nobody moves.
    let sticky = |set: &[&EchoBackend]| {
        config(
            "",
            "127.0.0.1:0",
            "algorithm: source_hash\nstickiness: {expire: 1h}",
            set,
        )
    };
    let mut lb = start(&sticky(&three));
    let addr = lb.listener_addr("t");
    let first = round(addr, CLIENTS, 0..CLIENTS);
    for (step, set) in [&four[..], &three[..], &four[..], &three[..]]
        .iter()
        .enumerate()
    {
        reload(&mut lb, &sticky(set));
        let again = round(addr, CLIENTS, (0..CLIENTS).rev());
        for n in 0..CLIENTS {
            assert_eq!(
                again[n],
                first[n],
                "client {n} moved at visit {} (moved without stickiness: {moved})",
                step + 2
            );
        }
    }
    assert_eq!(
        metric(&lb, "ringlb_sticky_hits_total"),
        (CLIENTS * 4) as f64
    );
    assert_eq!(metric(&lb, "ringlb_sticky_misses_total"), CLIENTS as f64);
    assert_eq!(metric(&lb, "ringlb_sticky_entries"), CLIENTS as f64);
    assert_eq!(metric(&lb, "ringlb_sticky_table_size"), 65_536.0);

    // A listed key can be forgotten: that client is balanced afresh (a miss).
    let show = ctl_ok(&lb, &["stick", "show", "t", "--limit", "5"]);
    assert!(
        show.starts_with("listener \"t\": 50 sticky entries (table of 65536); the 5 most recent:"),
        "{show}"
    );
    assert_eq!(show.lines().count(), 7, "{show}");
    let out = ctl_ok(&lb, &["stick", "clear", "t", &client_ip(7).to_string()]);
    assert!(out.contains("forgot 1 sticky entry of 127.0.1.17"), "{out}");
    visit(addr, 7);
    assert_eq!(
        metric(&lb, "ringlb_sticky_misses_total"),
        (CLIENTS + 1) as f64
    );
}

#[test]
fn single_active_moves_everyone_on_failure_and_not_back_until_told() {
    const CLIENTS: usize = 20;
    let mut b = backends(3);
    let yaml = config(
        "",
        "127.0.0.1:0",
        &format!("algorithm: round_robin\nstickiness: {{single_active: true}}\n{HC}"),
        &[&b[0], &b[1], &b[2]],
    );
    let lb = start(&yaml);
    let addr = lb.listener_addr("t");
    let all_on = |tags: &[String]| -> String {
        assert!(tags.iter().all(|t| *t == tags[0]), "split: {tags:?}");
        tags[0].clone()
    };
    let active = all_on(&round(addr, CLIENTS, 0..CLIENTS));
    let i = b
        .iter()
        .position(|x| x.tag() == Some(active.as_str()))
        .expect("tag");
    let active_addr = b[i].addr();

    let mark = lb.log_mark();
    b[i].close_listener();
    let moved = "single_active: every client goes to ";
    let from = format!(" now (was {active_addr}): {active_addr} is down");
    assert!(
        lb.wait_for_log_after(mark, &from, WAIT),
        "no move logged:\n{}",
        lb.logs().join("\n")
    );
    assert!(lb.count_log(moved) >= 2);
    let next = all_on(&round(addr, CLIENTS, (0..CLIENTS).rev()));
    assert_ne!(next, active);

    // The old one comes back: nobody goes back to it.
    let mark = lb.log_mark();
    b[i].reopen();
    let up = format!("backend up: listener=t backend={active_addr} ");
    assert!(lb.wait_for_log_after(mark, &up, WAIT), "not up again");
    assert_eq!(all_on(&round(addr, CLIENTS, 0..CLIENTS)), next);

    // Until told.
    let out = ctl_ok(&lb, &["stick", "move", "t", &active_addr.to_string()]);
    assert!(
        out.contains(&format!("every client goes to {active_addr} now (was ")),
        "{out}"
    );
    assert_eq!(all_on(&round(addr, CLIENTS, 0..CLIENTS)), active);
    let show = ctl_ok(&lb, &["stick", "show", "t"]);
    assert!(
        show.contains(&format!(
            "single_active: every client goes to {active_addr}"
        )),
        "{show}"
    );
    let (_, status) = lb.http_get("/status");
    assert!(
        status.contains(&format!("\"active_backend\":\"{active_addr}\"")),
        "{status}"
    );
    let out = ctl_ok(&lb, &["stick", "clear", "t"]);
    assert!(out.contains("the next connection chooses it"), "{out}");
    all_on(&round(addr, CLIENTS, 0..CLIENTS));
}

#[test]
fn the_table_survives_a_reload_that_rebinds_and_a_live_upgrade() {
    const CLIENTS: usize = 30;
    let b = backends(3);
    let set = [&b[0], &b[1], &b[2]];
    let keys = "algorithm: round_robin\nstickiness: {table_size: 4096}";
    let mut lb = start(&config("", "127.0.0.1:0", keys, &set));
    let first = round(lb.listener_addr("t"), CLIENTS, 0..CLIENTS);

    // A new bind: new sockets, the same table.
    reload(&mut lb, &config("", "127.0.0.2:0", keys, &set));
    assert!(lb.count_log("sticky entries restored from the listener it replaces") == 1);
    let addr = lb.listener_addr("t");
    assert_eq!(addr.ip().to_string(), "127.0.0.2");
    assert_eq!(round(addr, CLIENTS, (0..CLIENTS).rev()), first);

    let _next = lb.live_upgrade(WAIT);
    assert!(
        lb.wait_for_log(
            "listener \"t\": 30 of 30 sticky entries restored from the previous process",
            WAIT
        ),
        "{}",
        lb.logs().join("\n")
    );
    // Round robin would give a fresh process's clients other backends: every one is a hit.
    assert_eq!(round(addr, CLIENTS, (0..CLIENTS).rev()), first);
    assert_eq!(metric(&lb, "ringlb_sticky_hits_total"), CLIENTS as f64);
    assert_eq!(metric(&lb, "ringlb_sticky_misses_total"), 0.0);
}

#[test]
fn the_table_survives_a_restart_with_state_file() {
    const CLIENTS: usize = 30;
    let dir = std::env::temp_dir().join(format!("ringlb-sticky-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let state = dir.join("state.json");
    let tables = dir.join("state.json.sticky");
    let b = backends(3);
    let yaml = config(
        &format!("state_file: {}\n", state.display()),
        "127.0.0.1:0",
        "algorithm: round_robin\nstickiness: {}",
        &[&b[0], &b[1], &b[2]],
    );
    let mut lb = start(&yaml);
    let first = round(lb.listener_addr("t"), CLIENTS, 0..CLIENTS);
    // Written in the background within seconds (32 bytes an entry).
    assert!(
        wait_until(WAIT, || std::fs::metadata(&tables)
            .is_ok_and(|m| m.len() >= (CLIENTS * 32) as u64)),
        "the tables never reached {}",
        tables.display()
    );
    lb.signal(Signal::Term);
    assert!(lb.wait_exit(WAIT).is_some());
    drop(lb);

    let lb = start(&yaml);
    assert!(
        lb.count_log("listener \"t\": 30 of 30 sticky entries restored from state_file") == 1,
        "{}",
        lb.logs().join("\n")
    );
    assert_eq!(
        round(lb.listener_addr("t"), CLIENTS, (0..CLIENTS).rev()),
        first
    );
    assert_eq!(metric(&lb, "ringlb_sticky_hits_total"), CLIENTS as f64);
    assert_eq!(metric(&lb, "ringlb_sticky_misses_total"), 0.0);
    drop(lb);
    let _ = std::fs::remove_dir_all(&dir);
}
