//! Stage two: give the raw file its meaning. Every default is resolved here and every
//! problem is collected with its YAML path, so one `ringlb check` run lists them all.
//!
//! This module holds the top-level keys and the checks that span listeners (unique
//! names, overlapping binds, the admin endpoint's port); [`listener`] checks one
//! listener, [`health`] its health check, [`backend`] its backends, and [`scalar`] the
//! values every level shares (durations, integers, addresses, CIDRs, choices).

mod backend;
mod health;
mod keepalive;
mod lifecycle;
mod listener;
mod logging;
mod per_source;
mod records;
mod routes;
mod scalar;
mod source;
mod steering;
mod stickiness;
#[cfg(test)]
mod testing;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crate::error::{ConfigError, ConfigErrors};
use crate::model::{Config, Protocol, Workers};
use crate::raw::{RawConfig, Scalar, ScalarKind};
pub use lifecycle::{
    parse_duration, DEFAULT_ON_DOWN_SPREAD, MAX_ON_DOWN_SPREAD, MIN_MAX_CONNECTION_DURATION,
};
pub use records::{
    DEFAULT_SYSLOG_APP_NAME, DEFAULT_SYSLOG_FACILITY, DEFAULT_SYSLOG_QUEUE_SIZE,
    MIN_REPORT_INTERVAL,
};
pub use routes::{DEFAULT_TLS_INSPECT_TIMEOUT, MAX_TLS_INSPECT_TIMEOUT};
use scalar::{absolute_path, boolean, choice, opt_duration, socket_addr, ZeroOk};
pub use stickiness::{
    DEFAULT_STICKY_EXPIRE, DEFAULT_STICKY_PORT_RANGE, DEFAULT_STICKY_TABLE_SIZE, MAX_STICKY_EXPIRE,
    MAX_STICKY_TABLE_SIZE,
};

// Defaults; docs/configuration.md lists the same values.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);
/// `withdraw_delay` when an admin endpoint is configured: about the time a BGP withdrawal
/// takes to reach every router of a small fabric.
pub const DEFAULT_WITHDRAW_DELAY: Duration = Duration::from_secs(2);
/// Longest `withdraw_delay`.
pub const MAX_WITHDRAW_DELAY: Duration = Duration::from_secs(300);
/// Above Linux's SYN retransmissions at 1 s and 3 s (initial RTO 1 s, doubling), so one
/// attempt survives two lost SYNs and still has 0.5 s for the third SYN's answer; at 1 s
/// the attempt would give up exactly when the first retransmission goes out.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_millis(3500);
pub const DEFAULT_CONNECT_ATTEMPTS: u32 = 3;
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(15 * 60);
pub const DEFAULT_MAX_CONNECTIONS: u32 = 50_000;
pub const DEFAULT_SESSION_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_MAX_SESSIONS: u32 = 100_000;
pub const DEFAULT_HC_INTERVAL: Duration = Duration::from_secs(1);
pub const DEFAULT_HC_TIMEOUT: Duration = Duration::from_millis(500);
pub const DEFAULT_HC_RISE: u32 = 2;
pub const DEFAULT_HC_FALL: u32 = 3;

/// Longest `control` path: a Unix socket address holds 108 bytes including the final NUL.
pub const MAX_CONTROL_PATH: usize = 107;

/// Upper bound of `workers`: far above any host this runs on, low enough that a typo
/// (`workers: 10000`) does not spawn thousands of threads and rings.
pub const MAX_WORKERS: u64 = 1024;

const LOG_LEVELS: &[(&str, log::LevelFilter)] = &[
    ("error", log::LevelFilter::Error),
    ("warn", log::LevelFilter::Warn),
    ("info", log::LevelFilter::Info),
    ("debug", log::LevelFilter::Debug),
    ("trace", log::LevelFilter::Trace),
    ("off", log::LevelFilter::Off),
];

/// The problems found so far; every checker pushes here and carries on.
#[derive(Default)]
struct Errors(Vec<ConfigError>);

impl Errors {
    fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(ConfigError::new(path, message));
    }

    /// How many problems have been found: a checker compares it before and after to
    /// tell whether its part was clean.
    fn count(&self) -> usize {
        self.0.len()
    }
}

/// Turns the raw file into the typed model, or returns every problem found.
/// `withdraw_delay`: explicit, or 2 s when there is an admin endpoint whose `/ready` a
/// router or announcement agent can follow (a BGP withdrawal takes about that long to
/// reach every router), else 0.
fn withdraw_delay(errs: &mut Errors, raw: &RawConfig, admin: bool) -> Duration {
    let default = if admin {
        DEFAULT_WITHDRAW_DELAY
    } else {
        Duration::ZERO
    };
    let d = opt_duration(
        errs,
        "withdraw_delay",
        raw.withdraw_delay.as_ref(),
        default,
        ZeroOk::Yes,
    );
    if d > MAX_WITHDRAW_DELAY {
        errs.push(
            "withdraw_delay",
            format!("{d:?} is longer than the maximum of 5m: a stop would wait that long before it even starts draining"),
        );
        return default;
    }
    d
}

pub(crate) fn validate(raw: RawConfig) -> Result<Config, ConfigErrors> {
    let mut errs = Errors::default();

    let workers = match &raw.workers {
        None => Workers::Auto,
        Some(s) => workers(&mut errs, s).unwrap_or(Workers::Auto),
    };
    let admin = raw
        .admin
        .as_ref()
        .and_then(|s| socket_addr(&mut errs, "admin", s));
    let shutdown_timeout = opt_duration(
        &mut errs,
        "shutdown_timeout",
        raw.shutdown_timeout.as_ref(),
        DEFAULT_SHUTDOWN_TIMEOUT,
        ZeroOk::Yes,
    );
    let withdraw_delay = withdraw_delay(&mut errs, &raw, admin.is_some());
    let log_level = raw
        .log_level
        .as_ref()
        .and_then(|s| choice(&mut errs, "log_level", "log level", s, LOG_LEVELS))
        .unwrap_or(log::LevelFilter::Info);
    let access_log = raw
        .access_log
        .as_ref()
        .and_then(|s| boolean(&mut errs, "access_log", s))
        .unwrap_or(true);
    let log_format = logging::log_format(&mut errs, raw.log_format.as_ref());
    let control = raw
        .control
        .as_ref()
        .and_then(|s| absolute_path(&mut errs, "control", s, Some(MAX_CONTROL_PATH)));
    let state_file = raw
        .state_file
        .as_ref()
        .and_then(|s| absolute_path(&mut errs, "state_file", s, None));
    let audit_log = raw
        .audit_log
        .as_ref()
        .and_then(|s| absolute_path(&mut errs, "audit_log", s, None));
    let records = records::output(&mut errs, &raw);

    let mut listeners = Vec::new();
    match &raw.listeners {
        None => errs.push("listeners", "missing: at least one listener is required"),
        Some(list) if list.is_empty() => {
            errs.push("listeners", "no listeners: at least one is required")
        }
        Some(list) => {
            let mut seen = Seen::default();
            for (i, rl) in list.iter().enumerate() {
                if let Some(l) = listener::listener(&mut errs, &mut seen, i, rl) {
                    listeners.push(l);
                }
            }
            if let Some(admin) = admin {
                seen.admin_conflicts(&mut errs, admin);
            }
            records::apply_level(&mut errs, records.level, list, &mut listeners);
        }
    }

    if errs.0.is_empty() {
        Ok(Config {
            workers,
            admin,
            shutdown_timeout,
            withdraw_delay,
            log_level,
            access_log,
            log_format,
            control,
            state_file,
            audit_log,
            records,
            listeners,
        })
    } else {
        Err(ConfigErrors { errors: errs.0 })
    }
}

fn workers(errs: &mut Errors, s: &Scalar) -> Option<Workers> {
    if s.kind == ScalarKind::Str && s.text == "auto" {
        return Some(Workers::Auto);
    }
    let msg = format!(
        "expected \"auto\" or an integer 1..={MAX_WORKERS}, got {}",
        s.shown()
    );
    if s.kind != ScalarKind::Int {
        errs.push("workers", msg);
        return None;
    }
    match s.text.parse::<u64>() {
        Ok(n) if (1..=MAX_WORKERS).contains(&n) => usize::try_from(n).ok().map(Workers::Count),
        _ => {
            errs.push("workers", msg);
            None
        }
    }
}

/// What earlier listeners used, for the cross-listener checks (names, binds).
#[derive(Default)]
struct Seen {
    /// name → index of the first listener that used it.
    names: HashMap<String, usize>,
    /// (index, name if valid, bind, protocol) of every listener whose bind parsed.
    binds: Vec<(usize, Option<String>, SocketAddr, Protocol)>,
}

impl Seen {
    /// Records listener `i`'s name, or reports it if an earlier listener has it.
    fn claim_name(&mut self, errs: &mut Errors, i: usize, name: &str) {
        if let Some(first) = self.names.get(name) {
            errs.push(
                format!("listeners[{i}].name"),
                format!(
                    "duplicate listener name \"{name}\" (first used by listeners[{first}]): names must be unique because they label metrics and logs"
                ),
            );
        } else {
            self.names.insert(name.to_owned(), i);
        }
    }

    /// Records listener `i`'s bind, reporting every earlier listener of the same
    /// protocol whose bind would take the same port.
    fn claim_bind(
        &mut self,
        errs: &mut Errors,
        i: usize,
        name: &Option<String>,
        bind: SocketAddr,
        protocol: Protocol,
    ) {
        for (j, other_name, other_bind, other_proto) in &self.binds {
            if *other_proto != protocol {
                continue;
            }
            if let Some(why) = bind_overlap(bind, *other_bind) {
                errs.push(
                    format!("listeners[{i}].bind"),
                    format!(
                        "{bind} conflicts with {} ({other_bind}, {}): {why}; two listeners may share a port only when their protocols differ",
                        describe(*j, other_name),
                        protocol.as_str(),
                    ),
                );
            }
        }
        self.binds.push((i, name.clone(), bind, protocol));
    }

    /// The admin endpoint is TCP: it must not take the port of a TCP listener.
    fn admin_conflicts(&self, errs: &mut Errors, admin: SocketAddr) {
        for (j, name, bind, proto) in &self.binds {
            if *proto != Protocol::Tcp {
                continue;
            }
            if let Some(why) = bind_overlap(admin, *bind) {
                errs.push(
                    "admin",
                    format!(
                        "{admin} conflicts with tcp {} ({bind}): {why}; the admin endpoint needs a port of its own",
                        describe(*j, name)
                    ),
                );
            }
        }
    }
}

fn describe(index: usize, name: &Option<String>) -> String {
    match name {
        Some(n) => format!("listeners[{index}] \"{n}\""),
        None => format!("listeners[{index}]"),
    }
}

/// Why two binds of the same protocol would take the same port, or `None` if they do not.
fn bind_overlap(a: SocketAddr, b: SocketAddr) -> Option<String> {
    // Port 0 asks the kernel for a fresh ephemeral port each time: never a conflict.
    if a.port() == 0 || a.port() != b.port() {
        return None;
    }
    let port = a.port();
    let (ia, ib) = (canonical(a.ip()), canonical(b.ip()));
    if ia == ib {
        return Some(format!(
            "both would take port {port} on the same address, and with SO_REUSEPORT the kernel would silently split clients between them"
        ));
    }
    for (wild, other) in [(ia, ib), (ib, ia)] {
        if !wild.is_unspecified() {
            continue;
        }
        match (wild, other) {
            (IpAddr::V4(_), IpAddr::V4(_)) => {
                return Some(format!(
                    "0.0.0.0 covers every local IPv4 address including {other}, so both would take port {port}"
                ))
            }
            (IpAddr::V6(_), IpAddr::V6(_)) => {
                return Some(format!(
                    "[::] covers every local IPv6 address including {other}, so both would take port {port}"
                ))
            }
            // ringlb binds IPv6 listeners with IPV6_V6ONLY: [::] never takes IPv4.
            (IpAddr::V6(_), IpAddr::V4(_)) | (IpAddr::V4(_), IpAddr::V6(_)) => {}
        }
    }
    None
}

/// `::ffff:a.b.c.d` is the IPv4 address a.b.c.d for binding purposes.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{
        Algorithm, Forwarding, HealthCheck, Liveness, ProxyProtocol, TcpSettings, Transport,
        UdpSettings,
    };
    use crate::validate::testing::*;
    use ipnet::IpNet;

    #[test]
    fn defaults_are_resolved() {
        let c = ok(&one(""));
        assert_eq!(c.workers, Workers::Auto);
        assert_eq!(c.admin, None);
        assert_eq!(c.shutdown_timeout, Duration::from_secs(30));
        assert_eq!(c.log_level, log::LevelFilter::Info);
        assert!(c.access_log);
        assert_eq!((c.control, c.state_file), (None, None));
        let l = &c.listeners[0];
        assert_eq!(l.algorithm, Algorithm::RoundRobin);
        assert_eq!(
            l.transport,
            Transport::Tcp(TcpSettings {
                connect_timeout: Duration::from_millis(3500),
                connect_attempts: 3,
                idle_timeout: Duration::from_secs(900),
                forwarding: Forwarding::Auto,
                source: Vec::new(),
                liveness: Liveness::default(),
                per_source: None,
                stickiness: None,
                tls_routing: None,
            })
        );
        assert_eq!(l.max_connections, 50_000);
        assert!(l.allow.is_empty());
        assert_eq!(l.proxy_protocol, ProxyProtocol::None);
        assert_eq!(l.health_check, None);
        let b = &l.backends[0];
        assert_eq!((b.weight, b.max_connections, b.priority), (1, 0, 0));
        assert_eq!(
            ok(&one_udp("")).listeners[0].transport,
            Transport::Udp(UdpSettings {
                session_timeout: Duration::from_secs(30),
                max_sessions: 100_000,
            })
        );
    }

    #[test]
    fn every_key_is_read() {
        let c = ok(
            "workers: 4\nadmin: 127.0.0.1:9901\nshutdown_timeout: 5s\nlog_level: debug\naccess_log: false\n\
             listeners:\n  - name: a.b-c_1\n    bind: \"[::1]:7000\"\n    algorithm: maglev\n\
             \x20   connect_timeout: 250ms\n    connect_attempts: 5\n    idle_timeout: 2h\n\
             \x20   max_connections: 10\n    allow: [10.0.0.0/8]\n    proxy_protocol: v2\n    forwarding: splice\n\
             \x20   source: [10.0.0.9]\n\
             \x20   health_check: {interval: 2s, timeout: 1s, rise: 4, fall: 5, port: 8080}\n\
             \x20   backends:\n      - {addr: 10.0.0.1:80, weight: 7, max_connections: 100, backup: true}\n",
        );
        assert_eq!(c.workers, Workers::Count(4));
        assert_eq!(c.admin, Some("127.0.0.1:9901".parse().unwrap()));
        assert_eq!(c.shutdown_timeout, Duration::from_secs(5));
        assert_eq!(c.log_level, log::LevelFilter::Debug);
        assert!(!c.access_log);
        let l = &c.listeners[0];
        assert_eq!(l.name, "a.b-c_1");
        assert_eq!(l.bind, "[::1]:7000".parse().unwrap());
        assert_eq!(l.algorithm, Algorithm::Maglev);
        assert_eq!(
            l.transport,
            Transport::Tcp(TcpSettings {
                connect_timeout: Duration::from_millis(250),
                connect_attempts: 5,
                idle_timeout: Duration::from_secs(7200),
                forwarding: Forwarding::Splice,
                source: vec!["10.0.0.9".parse().unwrap()],
                liveness: Liveness::default(),
                per_source: None,
                stickiness: None,
                tls_routing: None,
            })
        );
        assert_eq!(l.max_connections, 10);
        assert_eq!(l.allow, vec!["10.0.0.0/8".parse::<IpNet>().unwrap()]);
        assert_eq!(l.proxy_protocol, ProxyProtocol::V2);
        assert_eq!(
            l.health_check,
            Some(HealthCheck {
                interval: Duration::from_secs(2),
                timeout: Duration::from_secs(1),
                rise: 4,
                fall: 5,
                port: Some(8080),
                send: None,
                expect: None,
            })
        );
        let b = &l.backends[0];
        assert_eq!((b.weight, b.max_connections, b.priority), (7, 100, 1));
    }

    #[test]
    fn all_problems_are_reported_at_once() {
        let e = errors(
            "workers: 0\ncontrol: run/x.sock\nlisteners:\n  - name: l\n    bind: 127.0.0.1:7000\n    backends:\n\
             \x20     - addr: 10.0.0.1\n        weight: -1\n",
        );
        assert_eq!(
            e,
            [
                "workers: expected \"auto\" or an integer 1..=1024, got 0",
                "control: \"run/x.sock\" is not an absolute path: write it from / (it must not depend on the directory ringlb is started from)",
                "listeners[0].backends[0].addr: invalid socket address \"10.0.0.1\"",
                "listeners[0].backends[0].weight: must be at least 0, got -1",
            ]
        );
    }

    #[test]
    fn workers_auto_or_1_to_1024() {
        assert_eq!(
            ok(&format!("workers: auto\n{}", one(""))).workers,
            Workers::Auto
        );
        assert_eq!(
            ok(&format!("workers: 1024\n{}", one(""))).workers,
            Workers::Count(1024)
        );
        for bad in ["0", "1025", "-1", "many", "\"4\"", "2.5"] {
            assert_one_error(
                &format!("workers: {bad}\n{}", one("")),
                "workers",
                "\"auto\" or an integer 1..=1024",
            );
        }
    }

    #[test]
    fn admin_must_be_a_socket_address() {
        assert_one_error(
            &format!("admin: localhost:9901\n{}", one("")),
            "admin",
            "invalid socket address \"localhost:9901\"",
        );
    }

    #[test]
    fn admin_must_not_take_a_tcp_listener_port() {
        assert_one_error(
            &format!("admin: 127.0.0.1:7000\n{}", one("")),
            "admin",
            "needs a port of its own",
        );
        // A udp listener on the same port is no conflict: the admin endpoint is tcp.
        ok(&format!("admin: 127.0.0.1:7000\n{}", one_udp("")));
    }

    #[test]
    fn control_and_state_file_are_absolute_paths() {
        let c = ok(&format!(
            "control: /run/ringlb/edge.sock\nstate_file: /var/lib/ringlb/state.json\n{}",
            one("")
        ));
        assert_eq!(
            c.control,
            Some(std::path::PathBuf::from("/run/ringlb/edge.sock"))
        );
        assert_eq!(
            c.state_file,
            Some(std::path::PathBuf::from("/var/lib/ringlb/state.json"))
        );
        for key in ["control", "state_file", "audit_log"] {
            for (bad, needle) in [
                ("ringlb.sock", "is not an absolute path"),
                ("\"\"", "is empty"),
                ("5", "expected a path"),
                ("/run/ringlb/", "names a directory"),
            ] {
                assert_one_error(&format!("{key}: {bad}\n{}", one("")), key, needle);
            }
        }
        let long = format!("/{}", "s".repeat(MAX_CONTROL_PATH));
        assert_one_error(
            &format!("control: {long}\n{}", one("")),
            "control",
            "at most 107 bytes",
        );
        ok(&format!("state_file: {long}\n{}", one("")));
    }

    #[test]
    fn shutdown_timeout_may_be_zero() {
        let c = ok(&format!("shutdown_timeout: 0s\n{}", one("")));
        assert_eq!(c.shutdown_timeout, Duration::ZERO);
        assert_one_error(
            &format!("shutdown_timeout: 30\n{}", one("")),
            "shutdown_timeout",
            "a unit is required",
        );
    }

    #[test]
    fn log_level_names() {
        for (name, level) in LOG_LEVELS {
            assert_eq!(
                ok(&format!("log_level: {name}\n{}", one(""))).log_level,
                *level
            );
        }
        assert_one_error(
            &format!("log_level: INFO\n{}", one("")),
            "log_level",
            "expected error, warn, info, debug, trace or off",
        );
    }

    #[test]
    fn access_log_is_a_boolean() {
        assert_one_error(
            &format!("access_log: \"yes\"\n{}", one("")),
            "access_log",
            "expected true or false, got \"yes\"",
        );
    }

    #[test]
    fn listeners_are_required() {
        assert_one_error(
            "workers: auto\n",
            "listeners",
            "at least one listener is required",
        );
        assert_one_error("listeners: []\n", "listeners", "at least one is required");
    }

    #[test]
    fn duplicate_listener_names() {
        let e = errors(
            "listeners:\n  - name: a\n    bind: 127.0.0.1:7000\n    backends: [{addr: 10.0.0.1:80}]\n\
             \x20 - name: a\n    bind: 127.0.0.1:7001\n    backends: [{addr: 10.0.0.1:80}]\n",
        );
        assert_eq!(e, ["listeners[1].name: duplicate listener name \"a\" (first used by listeners[0]): names must be unique because they label metrics and logs"]);
    }

    #[test]
    fn same_bind_same_protocol_conflicts() {
        assert_one_error(
            &two("127.0.0.1:7000", "tcp", "127.0.0.1:7000", "tcp"),
            "listeners[1].bind",
            "SO_REUSEPORT",
        );
        assert_one_error(
            &two("127.0.0.1:7000", "udp", "127.0.0.1:7000", "udp"),
            "listeners[1].bind",
            "conflicts with listeners[0] \"a\"",
        );
    }

    #[test]
    fn same_bind_different_protocols_is_fine() {
        ok(&two("127.0.0.1:7000", "tcp", "127.0.0.1:7000", "udp"));
        ok(&two("0.0.0.0:7000", "udp", "127.0.0.1:7000", "tcp"));
    }

    #[test]
    fn wildcard_overlaps_specific_address() {
        for (a, b) in [
            ("0.0.0.0:7000", "127.0.0.1:7000"),
            ("127.0.0.1:7000", "0.0.0.0:7000"),
            ("[::]:7000", "[::1]:7000"),
            ("[::ffff:127.0.0.1]:7000", "127.0.0.1:7000"),
        ] {
            assert_one_error(
                &two(a, "tcp", b, "tcp"),
                "listeners[1].bind",
                "both would take port 7000",
            );
        }
        // Different ports, different specific addresses, or IPv6-specific vs IPv4 wildcard.
        ok(&two("0.0.0.0:7000", "tcp", "0.0.0.0:7001", "tcp"));
        ok(&two("127.0.0.1:7000", "tcp", "127.0.0.2:7000", "tcp"));
        ok(&two("[::1]:7000", "tcp", "0.0.0.0:7000", "tcp"));
        // IPv6 listeners are IPV6_V6ONLY, so [::] and IPv4 never share a socket.
        ok(&two("[::]:7000", "tcp", "0.0.0.0:7000", "tcp"));
        ok(&two("127.0.0.1:7000", "tcp", "[::]:7000", "tcp"));
    }

    #[test]
    fn port_zero_binds_never_conflict() {
        // Tests bind several listeners to ephemeral ports.
        ok(&two("127.0.0.1:0", "tcp", "127.0.0.1:0", "tcp"));
        ok(&two("0.0.0.0:0", "tcp", "127.0.0.1:0", "tcp"));
    }
}
