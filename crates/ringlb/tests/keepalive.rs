//! Dead-peer detection through `ringlb run`: `tcp_keepalive` and `tcp_user_timeout` on
//! both legs of a connection. A peer is made to vanish silently — no FIN, no RST, as
//! behind a stateful firewall that forgot the flow — by an nftables rule that drops
//! every packet to and from it, in a network namespace of the test's own. The kernel
//! then gives up on that leg, ringlb ends the connection as `backend_timed_out` /
//! `client_timed_out` and resets the other leg, so the survivor learns at once instead
//! of waiting forever (the kernel's own keepalive starts after 2 h, and nothing moving
//! means `idle_timeout`, 15 min by default, is all there is).
//!
//! The namespace tests need root, `ip` and `nft`, and print `SKIPPED: <reason>` without
//! them. Deadlines are generous: detection takes `idle + interval × count` (3 s here) or
//! `tcp_user_timeout` (2 s), far below anything else that could end the connection.

use std::io::Write;
use std::net::{Ipv4Addr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use ringlb_testkit::*;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_ringlb"))
}

/// How long a test waits for the kernel to give up on a vanished peer (3 s by its
/// settings) and for ringlb to report it.
const DEADLINE: Duration = Duration::from_secs(30);
/// Probes after 1 s of silence, 1 s apart, two unanswered: gone after about 3 s.
const KEEPALIVE: &str = "tcp_keepalive: {idle: 1s, interval: 1s, count: 2}";
/// Where clients connect from.
const LOCAL: Ipv4Addr = Ipv4Addr::LOCALHOST;
/// The address a client that is made to vanish connects from.
const VANISHING_CLIENT: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

/// The nftables table the tests' rules live in (one per namespace).
const TABLE: &str = "ringlb_keepalive";

/// Drops everything to and from `port`: a backend gone without a word.
fn silence_port(ns: &Netns, port: u16) {
    ns.nft_drop(
        TABLE,
        &[format!("tcp dport {port}"), format!("tcp sport {port}")],
    );
}

/// `ringlb_connections_ended_total` of listener `t` for `end`.
fn ended(lb: &Ringlb, end: &str) -> f64 {
    lb.metric(&format!(
        "ringlb_connections_ended_total{{listener=\"t\",end=\"{end}\"}}"
    ))
    .unwrap_or_else(|| panic!("no ended series for {end}"))
}

/// Waits until listener `t` has counted `n` connections ended as `end`.
fn wait_ended(lb: &Ringlb, end: &str, n: f64) {
    assert!(
        wait_until(DEADLINE, || ended(lb, end) >= n),
        "{end}: {} after {DEADLINE:?}, want {n}",
        ended(lb, end)
    );
    assert_eq!(ended(lb, end), n, "{end}");
}

/// The config of listener `t` with `keys` in front of `backend`, access log and admin on.
fn yaml(backend: &EchoBackend, keys: &str) -> String {
    one_listener_yaml(
        "admin: 127.0.0.1:0\nworkers: 1\naccess_log: true\n",
        "t",
        "127.0.0.1:0",
        keys,
        &[backend.addr()],
    )
}

/// In a namespace of its own (skipped without root, `ip` or `nft`): ringlb with `keys` in
/// front of an echo backend, and a client connected from `from` whose link has carried
/// an echo; then `check`.
fn with_link(
    keys: &str,
    from: Ipv4Addr,
    check: impl FnOnce(&Netns, &mut Ringlb, &EchoBackend, TcpStream) + Send,
) {
    let Some(ns) = netns_for_test(module_path!(), &["ip", "nft"]) else {
        return;
    };
    ns.run(|| {
        let backend = EchoBackend::start();
        let mut lb = Ringlb::start(bin(), &yaml(&backend, keys));
        let mut c = connect_from(from, lb.listener_addr("t"))
            .unwrap_or_else(|e| panic!("connect from {from}: {e}"));
        assert_echo(&mut c, b"before the peer vanished");
        check(&ns, &mut lb, &backend, c);
    });
}

/// Reads until the connection ends (within [`DEADLINE`]) and requires a reset: the
/// survivor of a dead link must learn it was cut, not wait or see a clean end.
fn assert_reset(c: &mut TcpStream, what: &str) {
    let started = Instant::now();
    let end = read_until_end(c, DEADLINE);
    eprintln!("{what}: {end:?} after {:?}", started.elapsed());
    assert_eq!(end, ClientEnd::Reset { bytes: 0 }, "{what}");
}

/// A backend that vanishes from an idle connection is given up on after
/// idle + interval × count: the client is reset, the end is `backend_timed_out`.
#[test]
fn a_backend_that_vanishes_is_found_by_keepalive_and_the_client_reset() {
    with_link(KEEPALIVE, LOCAL, |ns, lb, backend, mut c| {
        silence_port(ns, backend.addr().port());
        assert_reset(&mut c, "client of a vanished backend");
        wait_ended(lb, "backend_timed_out", 1.0);
        assert!(
            wait_until(DEADLINE, || lb.count_log("end=backend_timed_out") == 1),
            "{:#?}",
            lb.logs()
        );
        assert_eq!(ended(lb, "backend_reset"), 0.0);
        assert!(
            ns.nft_dropped(TABLE) > 0,
            "no keepalive probe reached the blackhole"
        );
    });
}

/// `tcp_user_timeout` alone (no keepalive): data the client sends after the backend
/// vanished stays unacknowledged, and the kernel gives up after the user timeout
/// instead of retransmitting for ~15 minutes (`net.ipv4.tcp_retries2`).
#[test]
fn unacknowledged_data_to_a_vanished_backend_ends_at_the_user_timeout() {
    with_link("tcp_user_timeout: 2s", LOCAL, |ns, lb, backend, mut c| {
        let before = lb
            .metric("ringlb_bytes_total{listener=\"t\",direction=\"in\"}")
            .unwrap_or_default();
        silence_port(ns, backend.addr().port());
        c.write_all(b"into the void")
            .unwrap_or_else(|e| panic!("write: {e}"));
        assert_reset(&mut c, "client whose data stalled");
        wait_ended(lb, "backend_timed_out", 1.0);
        assert!(
            wait_until(DEADLINE, || lb.count_log("end=backend_timed_out") == 1),
            "{:#?}",
            lb.logs()
        );
        let bytes_in = lb
            .metric("ringlb_bytes_total{listener=\"t\",direction=\"in\"}")
            .unwrap_or_default();
        assert_eq!(
            bytes_in - before,
            "into the void".len() as f64,
            "the stalled bytes were read from the client and sent on"
        );
        assert!(
            ns.nft_dropped(TABLE) > 0,
            "no retransmission reached the blackhole"
        );
    });
}

/// The client leg has keepalive too: a client that vanishes is given up on, the end is
/// `client_timed_out`, and the backend is reset rather than left holding the link.
#[test]
fn a_client_that_vanishes_is_found_by_keepalive_and_the_backend_reset() {
    with_link(KEEPALIVE, VANISHING_CLIENT, |ns, lb, backend, _c| {
        ns.nft_drop(
            TABLE,
            &[
                format!("ip saddr {VANISHING_CLIENT}"),
                format!("ip daddr {VANISHING_CLIENT}"),
            ],
        );
        assert!(
            backend.wait_ends(1, DEADLINE),
            "the backend's connection never ended"
        );
        assert_eq!(backend.ends(), vec![ConnEnd::Reset]);
        wait_ended(lb, "client_timed_out", 1.0);
        assert!(
            wait_until(DEADLINE, || lb.count_log("end=client_timed_out") == 1),
            "{:#?}",
            lb.logs()
        );
        assert!(
            ns.nft_dropped(TABLE) > 0,
            "no keepalive probe reached the blackhole"
        );
    });
}

/// A reload that turns keepalive on applies to connections accepted after it: of two
/// links to a backend that vanishes, the one made before the reload stays (nothing
/// probes it), the one made after is found and reset.
#[test]
fn a_reload_applies_keepalive_to_new_connections() {
    with_link("", LOCAL, |ns, lb, backend, before| {
        let mark = lb.reload(&yaml(backend, KEEPALIVE));
        assert!(
            lb.wait_for_log_after(mark, "reload applied", DEADLINE),
            "the reload was not applied"
        );
        let mut after = connect(lb.listener_addr("t"));
        assert_echo(&mut after, b"made after the reload");
        silence_port(ns, backend.addr().port());

        assert_reset(&mut after, "connection made after the reload");
        wait_ended(lb, "backend_timed_out", 1.0);
        // The earlier link is still open: nothing ended it.
        assert!(
            wait_until(DEADLINE, || lb.count_log("end=") == 1),
            "{:#?}",
            lb.logs()
        );
        let active = || lb.metric("ringlb_listener_active_connections{listener=\"t\"}");
        assert!(
            wait_until(DEADLINE, || active() == Some(1.0)),
            "active connections: {:?}",
            active()
        );
        drop(before);
    });
}

/// `ringlb check` names each key on a UDP listener, and each value outside the kernel's
/// range, by its YAML path.
#[test]
fn check_rejects_the_keys_on_udp_and_out_of_range_values() {
    let backend: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap_or_else(|e| panic!("{e}"));
    let udp = one_listener_yaml(
        "",
        "d",
        "127.0.0.1:0",
        &format!("protocol: udp\n{KEEPALIVE}\ntcp_user_timeout: 5s"),
        &[backend],
    );
    let (code, out) = Ringlb::check(bin(), &udp);
    assert_eq!(code, 2, "{out}");
    for key in ["tcp_keepalive", "tcp_user_timeout"] {
        assert!(
            out.contains(&format!(
                "error: listeners[0].{key}: {key} applies only to tcp listeners"
            )),
            "{out}"
        );
    }
    let tcp = one_listener_yaml(
        "",
        "t",
        "127.0.0.1:0",
        "tcp_keepalive: {idle: 500ms, interval: 1s, count: 200}\ntcp_user_timeout: 0s",
        &[backend],
    );
    let (code, out) = Ringlb::check(bin(), &tcp);
    assert_eq!(code, 2, "{out}");
    for path in [
        "listeners[0].tcp_keepalive.idle: \"500ms\" is not a whole number of seconds",
        "listeners[0].tcp_keepalive.count: 200 is too large: expected 1..=127",
        "listeners[0].tcp_user_timeout: duration \"0s\" must be greater than zero",
    ] {
        assert!(out.contains(&format!("error: {path}")), "{out}");
    }
    let ok = one_listener_yaml("", "t", "127.0.0.1:0", KEEPALIVE, &[backend]);
    let (code, out) = Ringlb::check(bin(), &ok);
    assert_eq!(code, 0, "{out}");
}
