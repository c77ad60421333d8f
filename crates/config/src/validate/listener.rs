//! One listener: its identity (name, protocol, bind), the settings both protocols share,
//! the TCP-only and the UDP-only settings, then its health check and backends.

use std::net::SocketAddr;

use ipnet::IpNet;

use super::backend::backends;
use super::health::health_check;
use super::keepalive::liveness;
use super::lifecycle::lifecycle;
use super::per_source::per_source;
use super::routes::tls_routing;
use super::scalar::{choice, cidr, named, opt_duration, opt_int, socket_addr, ZeroOk};
use super::source::{covers_backends, source};
use super::steering::steering;
use super::stickiness::stickiness;
use super::{
    Errors, Seen, DEFAULT_CONNECT_ATTEMPTS, DEFAULT_CONNECT_TIMEOUT, DEFAULT_IDLE_TIMEOUT,
    DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_SESSIONS, DEFAULT_SESSION_TIMEOUT,
};
use crate::error::ConfigError;
use crate::model::{
    Algorithm, Forwarding, Listener, Protocol, ProxyProtocol, TcpSettings, Transport, UdpSettings,
};
use crate::raw::{RawListener, Scalar};

/// Longest listener name: it is repeated in every metric line and log line.
pub const MAX_NAME_LEN: usize = 64;

/// The settings keys in schema order (`RawListener`, docs/configuration.md). Their
/// checkers run grouped by protocol, but `ringlb check` lists their problems in this
/// order.
const SETTINGS_ORDER: [&str; 13] = [
    "connect_timeout",
    "connect_attempts",
    "idle_timeout",
    "max_connections",
    "allow",
    "proxy_protocol",
    "forwarding",
    "source",
    "tcp_keepalive",
    "tcp_user_timeout",
    "response_timeout",
    "session_timeout",
    "max_sessions",
];

/// Returns the listener if it has no problem; its problems are pushed in any case.
pub(super) fn listener(
    errs: &mut Errors,
    seen: &mut Seen,
    i: usize,
    rl: &RawListener,
) -> Option<Listener> {
    let before = errs.count();
    let name = name(errs, seen, i, rl);
    // The protocol decides which keys apply, so it is read before the others.
    let protocol = protocol(errs, i, rl);
    let bind = bind(errs, seen, i, rl, &name, protocol);
    let algorithm = rl
        .algorithm
        .as_ref()
        .and_then(|s| {
            choice(
                errs,
                &path(i, "algorithm"),
                "algorithm",
                s,
                &named(Algorithm::ALL, Algorithm::as_str),
            )
        })
        .unwrap_or(Algorithm::RoundRobin);
    if let Some(protocol) = protocol {
        reject_keys_of_the_other_protocol(errs, i, rl, protocol);
    }

    // Both protocols' settings are read whatever the protocol, so that a bad value is
    // reported even where the key itself does not belong.
    let settings_start = errs.count();
    let mut tcp = tcp_settings(errs, i, rl);
    let shared = shared_settings(errs, i, rl, protocol);
    let udp = udp_settings(errs, i, rl);
    in_schema_order(errs, settings_start, i);

    let health_check = rl
        .health_check
        .as_ref()
        .map(|hc| health_check(errs, &path(i, "health_check"), hc));
    let mut backends = backends(errs, i, rl.backends.as_deref());
    covers_backends(errs, i, &tcp.source, &backends);
    let steering = steering(errs, i, rl, algorithm, &backends);
    let lifecycle = lifecycle(errs, i, rl, protocol, &mut backends);
    let records = super::records::listener_records(errs, i, rl, protocol);
    tcp.tls_routing = tls_routing(errs, i, rl, algorithm, lifecycle.on_down).map(Box::new);

    if errs.count() != before {
        return None;
    }
    Some(Listener {
        name: name?,
        bind: bind?,
        algorithm,
        max_connections: shared.max_connections,
        allow: shared.allow,
        proxy_protocol: shared.proxy_protocol,
        health_check: health_check.flatten(),
        backends,
        transport: match protocol? {
            Protocol::Tcp => Transport::Tcp(tcp),
            Protocol::Udp => Transport::Udp(udp),
        },
        steering,
        lifecycle,
        records,
    })
}

/// `listeners[i].key`
fn path(i: usize, key: &str) -> String {
    format!("listeners[{i}].{key}")
}

fn name(errs: &mut Errors, seen: &mut Seen, i: usize, rl: &RawListener) -> Option<String> {
    let name = match &rl.name {
        None => {
            errs.push(
                path(i, "name"),
                "missing: every listener needs a unique name made of letters, digits, '_', '.' or '-'",
            );
            None
        }
        Some(s) => listener_name(errs, &path(i, "name"), s),
    };
    if let Some(n) = &name {
        seen.claim_name(errs, i, n);
    }
    name
}

fn listener_name(errs: &mut Errors, path: &str, s: &Scalar) -> Option<String> {
    let n = &s.text;
    let ok_chars = !n.is_empty()
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if !ok_chars {
        errs.push(
            path,
            format!(
                "invalid listener name {}: use only letters, digits, '_', '.' and '-' (it becomes a metric label and a log field)",
                s.shown()
            ),
        );
        return None;
    }
    if n.len() > MAX_NAME_LEN {
        errs.push(
            path,
            format!(
                "listener name is {} characters long: at most {MAX_NAME_LEN} are allowed",
                n.len()
            ),
        );
        return None;
    }
    Some(n.clone())
}

/// `tcp` when the key is absent; `None` when it is not a protocol (already reported), and
/// then the checks that depend on the protocol are skipped.
fn protocol(errs: &mut Errors, i: usize, rl: &RawListener) -> Option<Protocol> {
    match &rl.protocol {
        None => Some(Protocol::Tcp),
        Some(s) => choice(
            errs,
            &path(i, "protocol"),
            "protocol",
            s,
            &named(Protocol::ALL, Protocol::as_str),
        ),
    }
}

fn bind(
    errs: &mut Errors,
    seen: &mut Seen,
    i: usize,
    rl: &RawListener,
    name: &Option<String>,
    protocol: Option<Protocol>,
) -> Option<SocketAddr> {
    let bind = match &rl.bind {
        None => {
            errs.push(
                path(i, "bind"),
                "missing: every listener needs a bind address, e.g. 0.0.0.0:7000 or [::]:7000",
            );
            return None;
        }
        Some(s) => socket_addr(errs, &path(i, "bind"), s)?,
    };
    if let Some(protocol) = protocol {
        seen.claim_bind(errs, i, name, bind, protocol);
    }
    Some(bind)
}

/// Keys that only one protocol uses: reject them on the other rather than ignore them,
/// since an operator who wrote them expects them to act.
fn reject_keys_of_the_other_protocol(
    errs: &mut Errors,
    i: usize,
    rl: &RawListener,
    protocol: Protocol,
) {
    let (tcp_keys, udp_keys) = (tcp_keys(rl), udp_keys(rl));
    let (other, written): (Protocol, &[(&str, bool)]) = match protocol {
        Protocol::Tcp => (Protocol::Udp, &udp_keys),
        Protocol::Udp => (Protocol::Tcp, &tcp_keys),
    };
    let (this, other) = (protocol.as_str(), other.as_str());
    for &(key, present) in written {
        if present {
            errs.push(
                path(i, key),
                format!(
                    "{key} applies only to {other} listeners and this listener is {this}: remove it or set protocol: {other}"
                ),
            );
        }
    }
}

/// The keys [`tcp_settings`] reads, and whether the file has each.
fn tcp_keys(rl: &RawListener) -> [(&'static str, bool); 14] {
    [
        ("connect_timeout", rl.connect_timeout.is_some()),
        ("connect_attempts", rl.connect_attempts.is_some()),
        ("idle_timeout", rl.idle_timeout.is_some()),
        ("forwarding", rl.forwarding.is_some()),
        ("source", rl.source.is_some()),
        ("tcp_keepalive", rl.tcp_keepalive.is_some()),
        ("tcp_user_timeout", rl.tcp_user_timeout.is_some()),
        ("response_timeout", rl.response_timeout.is_some()),
        ("per_source", rl.per_source.is_some()),
        ("stickiness", rl.stickiness.is_some()),
        ("routes", rl.routes.is_some()),
        ("tls_inspect_timeout", rl.tls_inspect_timeout.is_some()),
        ("min_tls_version", rl.min_tls_version.is_some()),
        ("on_non_tls", rl.on_non_tls.is_some()),
    ]
}

fn tcp_settings(errs: &mut Errors, i: usize, rl: &RawListener) -> TcpSettings {
    let connect_timeout = opt_duration(
        errs,
        &path(i, "connect_timeout"),
        rl.connect_timeout.as_ref(),
        DEFAULT_CONNECT_TIMEOUT,
        ZeroOk::No,
    );
    let connect_attempts = opt_int(
        errs,
        &path(i, "connect_attempts"),
        rl.connect_attempts.as_ref(),
        DEFAULT_CONNECT_ATTEMPTS,
        1,
        u32::MAX.into(),
        " (the first try counts as an attempt)",
    );
    let idle_timeout = opt_duration(
        errs,
        &path(i, "idle_timeout"),
        rl.idle_timeout.as_ref(),
        DEFAULT_IDLE_TIMEOUT,
        ZeroOk::No,
    );
    let forwarding = rl
        .forwarding
        .as_ref()
        .and_then(|s| {
            choice(
                errs,
                &path(i, "forwarding"),
                "forwarding mode",
                s,
                &named(Forwarding::ALL, Forwarding::as_str),
            )
        })
        .unwrap_or(Forwarding::Auto);
    TcpSettings {
        connect_timeout,
        connect_attempts,
        idle_timeout,
        forwarding,
        source: source(errs, i, rl.source.as_deref()),
        liveness: liveness(errs, i, rl),
        per_source: per_source(errs, i, rl.per_source.as_ref()),
        stickiness: stickiness(errs, i, rl.stickiness.as_ref()),
        // Read after the lifecycle, whose `on_down` route backends inherit.
        tls_routing: None,
    }
}

/// The keys [`udp_settings`] reads, and whether the file has each.
fn udp_keys(rl: &RawListener) -> [(&'static str, bool); 2] {
    [
        ("session_timeout", rl.session_timeout.is_some()),
        ("max_sessions", rl.max_sessions.is_some()),
    ]
}

fn udp_settings(errs: &mut Errors, i: usize, rl: &RawListener) -> UdpSettings {
    let session_timeout = opt_duration(
        errs,
        &path(i, "session_timeout"),
        rl.session_timeout.as_ref(),
        DEFAULT_SESSION_TIMEOUT,
        ZeroOk::No,
    );
    let max_sessions = opt_int(
        errs,
        &path(i, "max_sessions"),
        rl.max_sessions.as_ref(),
        DEFAULT_MAX_SESSIONS,
        1,
        u32::MAX.into(),
        " (a table of 0 sessions would drop every datagram)",
    );
    UdpSettings {
        session_timeout,
        max_sessions,
    }
}

/// The settings both protocols have.
struct SharedSettings {
    max_connections: u32,
    allow: Vec<IpNet>,
    proxy_protocol: ProxyProtocol,
}

/// `protocol` is `None` when it was not understood: then `proxy_protocol: v1` is not
/// judged against it.
fn shared_settings(
    errs: &mut Errors,
    i: usize,
    rl: &RawListener,
    protocol: Option<Protocol>,
) -> SharedSettings {
    let max_connections = opt_int(
        errs,
        &path(i, "max_connections"),
        rl.max_connections.as_ref(),
        DEFAULT_MAX_CONNECTIONS,
        1,
        u32::MAX.into(),
        " (a limit of 0 would refuse every client)",
    );
    let allow = allow(errs, i, rl.allow.as_deref());
    let proxy_protocol = rl
        .proxy_protocol
        .as_ref()
        .and_then(|s| {
            choice(
                errs,
                &path(i, "proxy_protocol"),
                "proxy_protocol",
                s,
                &named(ProxyProtocol::ALL, ProxyProtocol::as_str),
            )
        })
        .unwrap_or(ProxyProtocol::None);
    if protocol == Some(Protocol::Udp) && proxy_protocol == ProxyProtocol::V1 {
        errs.push(
            path(i, "proxy_protocol"),
            "v1 is a text header for tcp streams and cannot describe a datagram: use none or v2 on a udp listener",
        );
    }
    SharedSettings {
        max_connections,
        allow,
        proxy_protocol,
    }
}

fn allow(errs: &mut Errors, i: usize, list: Option<&[Scalar]>) -> Vec<IpNet> {
    let Some(list) = list else {
        return Vec::new();
    };
    if list.is_empty() {
        errs.push(
            path(i, "allow"),
            "empty allow-list would deny every client: list at least one address or CIDR, or remove allow to admit everyone",
        );
    }
    list.iter()
        .enumerate()
        .filter_map(|(k, s)| cidr(errs, &format!("listeners[{i}].allow[{k}]"), s))
        .collect()
}

/// Puts the settings problems pushed since `from` in [`SETTINGS_ORDER`], keeping each
/// key's own problems in the order they were found (the sort is stable).
fn in_schema_order(errs: &mut Errors, from: usize, i: usize) {
    let prefix = format!("listeners[{i}].");
    let rank = |e: &ConfigError| {
        let rest = e.path.strip_prefix(&prefix).unwrap_or_default();
        let key = rest.split(['[', '.']).next().unwrap_or_default();
        SETTINGS_ORDER
            .iter()
            .position(|k| *k == key)
            .unwrap_or(SETTINGS_ORDER.len())
    };
    errs.0[from..].sort_by_cached_key(rank);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::testing::*;
    use std::time::Duration;

    #[test]
    fn name_is_required_and_label_safe() {
        assert_one_error(
            "listeners:\n  - bind: 127.0.0.1:7000\n    backends: [{addr: 10.0.0.1:80}]\n",
            "listeners[0].name",
            "missing",
        );
        for bad in ["\"a b\"", "\"\"", "\"é\"", "\"a{b}\"", "\"x\\\"y\""] {
            assert_one_error(
                &format!("listeners:\n  - name: {bad}\n    bind: 127.0.0.1:7000\n    backends: [{{addr: 10.0.0.1:80}}]\n"),
                "listeners[0].name",
                "use only letters, digits",
            );
        }
        let long = "n".repeat(MAX_NAME_LEN + 1);
        assert_one_error(
            &format!("listeners:\n  - name: {long}\n    bind: 127.0.0.1:7000\n    backends: [{{addr: 10.0.0.1:80}}]\n"),
            "listeners[0].name",
            "at most 64",
        );
    }

    #[test]
    fn bind_is_required_and_parsed() {
        assert_one_error(
            "listeners:\n  - name: a\n    backends: [{addr: 10.0.0.1:80}]\n",
            "listeners[0].bind",
            "missing",
        );
        assert_one_error(
            &two("127.0.0.1", "tcp", "127.0.0.1:1", "tcp"),
            "listeners[0].bind",
            "invalid socket address \"127.0.0.1\"",
        );
        assert_one_error(
            &two("::1:80", "tcp", "127.0.0.1:1", "tcp"),
            "listeners[0].bind",
            "invalid socket address",
        );
        ok(&two("[::1]:80", "tcp", "[2001:db8::1]:80", "tcp"));
    }

    #[test]
    fn protocol_names() {
        assert_eq!(ok(&one_udp("")).listeners[0].protocol(), Protocol::Udp);
        assert_one_error(
            &one("    protocol: sctp\n"),
            "listeners[0].protocol",
            "expected tcp or udp",
        );
    }

    #[test]
    fn algorithm_names() {
        for (name, alg) in &named(Algorithm::ALL, Algorithm::as_str) {
            assert_eq!(
                ok(&one(&format!("    algorithm: {name}\n"))).listeners[0].algorithm,
                *alg
            );
            assert_eq!(alg.as_str(), *name);
        }
        assert_one_error(
            &one("    algorithm: leastconn\n"),
            "listeners[0].algorithm",
            "expected round_robin, weighted_round_robin",
        );
    }

    #[test]
    fn tcp_only_keys_on_udp_listener() {
        for (key, value) in [
            ("connect_timeout", "1s"),
            ("connect_attempts", "2"),
            ("idle_timeout", "1m"),
            ("forwarding", "copy"),
        ] {
            assert_one_error(
                &one_udp(&format!("    {key}: {value}\n")),
                &format!("listeners[0].{key}"),
                "applies only to tcp listeners and this listener is udp",
            );
        }
    }

    #[test]
    fn udp_only_keys_on_tcp_listener() {
        for (key, value) in [("session_timeout", "10s"), ("max_sessions", "10")] {
            assert_one_error(
                &one(&format!("    {key}: {value}\n")),
                &format!("listeners[0].{key}"),
                "applies only to udp listeners and this listener is tcp",
            );
        }
        let u = udp(&ok(&one_udp(
            "    session_timeout: 10s\n    max_sessions: 10\n",
        )));
        assert_eq!(
            (u.session_timeout, u.max_sessions),
            (Duration::from_secs(10), 10)
        );
    }

    #[test]
    fn proxy_protocol_v1_is_tcp_only() {
        assert_one_error(
            &one_udp("    proxy_protocol: v1\n"),
            "listeners[0].proxy_protocol",
            "use none or v2",
        );
        assert_eq!(
            ok(&one_udp("    proxy_protocol: v2\n")).listeners[0].proxy_protocol,
            ProxyProtocol::V2
        );
        assert_eq!(
            ok(&one("    proxy_protocol: v1\n")).listeners[0].proxy_protocol,
            ProxyProtocol::V1
        );
        assert_one_error(
            &one("    proxy_protocol: v3\n"),
            "listeners[0].proxy_protocol",
            "expected none, v1 or v2",
        );
    }

    #[test]
    fn settings_problems_are_listed_in_schema_order() {
        // Checked grouped by protocol, reported in the order the keys are documented;
        // keys of the other protocol are reported first, then every bad value.
        let e = errors(&one(
            "    max_sessions: 0\n    forwarding: zerocopy\n    proxy_protocol: v3\n\
             \x20   allow: [x]\n    max_connections: 0\n    session_timeout: 0s\n\
             \x20   idle_timeout: 0s\n    connect_attempts: 0\n    connect_timeout: fast\n",
        ));
        let paths: Vec<&str> = e.iter().filter_map(|l| l.split(": ").next()).collect();
        assert_eq!(
            paths,
            [
                "listeners[0].session_timeout",
                "listeners[0].max_sessions",
                "listeners[0].connect_timeout",
                "listeners[0].connect_attempts",
                "listeners[0].idle_timeout",
                "listeners[0].max_connections",
                "listeners[0].allow[0]",
                "listeners[0].proxy_protocol",
                "listeners[0].forwarding",
                "listeners[0].session_timeout",
                "listeners[0].max_sessions",
            ],
            "{e:#?}"
        );
    }

    #[test]
    fn unknown_protocol_skips_the_protocol_checks() {
        // Whether a key belongs cannot be told, so only the protocol itself is reported.
        assert_one_error(
            &one("    protocol: sctp\n    session_timeout: 10s\n    proxy_protocol: v1\n"),
            "listeners[0].protocol",
            "expected tcp or udp",
        );
    }

    #[test]
    fn each_protocol_gets_its_own_settings() {
        let c = ok(&two("127.0.0.1:1", "tcp", "127.0.0.1:2", "udp"));
        assert!(matches!(c.listeners[0].transport, Transport::Tcp(_)));
        assert!(matches!(c.listeners[1].transport, Transport::Udp(_)));
    }

    #[test]
    fn forwarding_names() {
        for (name, f) in &named(Forwarding::ALL, Forwarding::as_str) {
            assert_eq!(
                tcp(&ok(&one(&format!("    forwarding: {name}\n")))).forwarding,
                *f
            );
        }
        assert_one_error(
            &one("    forwarding: zerocopy\n"),
            "listeners[0].forwarding",
            "expected copy, splice or auto",
        );
    }

    #[test]
    fn connect_attempts_at_least_one() {
        assert_one_error(
            &one("    connect_attempts: 0\n"),
            "listeners[0].connect_attempts",
            "must be at least 1, got 0",
        );
        assert_eq!(
            tcp(&ok(&one("    connect_attempts: 1\n"))).connect_attempts,
            1
        );
    }

    #[test]
    fn listener_max_connections_at_least_one() {
        assert_one_error(
            &one("    max_connections: 0\n"),
            "listeners[0].max_connections",
            "would refuse every client",
        );
        assert_one_error(
            &one("    max_connections: 4294967296\n"),
            "listeners[0].max_connections",
            "too large",
        );
        assert_one_error(
            &one("    max_connections: many\n"),
            "listeners[0].max_connections",
            "expected an integer, 1 or more, got \"many\"",
        );
    }

    #[test]
    fn max_sessions_at_least_one() {
        assert_one_error(
            &one_udp("    max_sessions: 0\n"),
            "listeners[0].max_sessions",
            "must be at least 1",
        );
    }

    #[test]
    fn allow_accepts_cidrs_and_bare_addresses() {
        let l = &ok(&one(
            "    allow: [10.0.0.0/8, 192.0.2.7, \"2001:db8::1\", 10.1.2.3/16]\n",
        ))
        .listeners[0];
        let want: Vec<IpNet> = [
            "10.0.0.0/8",
            "192.0.2.7/32",
            "2001:db8::1/128",
            "10.1.0.0/16",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        assert_eq!(l.allow, want);
    }

    #[test]
    fn allow_rejects_bad_cidrs_each_with_its_index() {
        let e = errors(&one("    allow: [10.0.0.0/8, 10.0.0.0/33, internal]\n"));
        assert_eq!(e.len(), 2, "{e:#?}");
        assert!(e[0].starts_with("listeners[0].allow[1]: invalid CIDR \"10.0.0.0/33\""));
        assert!(e[1].starts_with("listeners[0].allow[2]: invalid CIDR \"internal\""));
    }

    #[test]
    fn empty_allow_list_is_an_error() {
        assert_one_error(
            &one("    allow: []\n"),
            "listeners[0].allow",
            "would deny every client",
        );
    }
}
