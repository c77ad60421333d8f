//! Stage two: give the raw file its meaning. Every default is resolved here and every
//! problem is collected with its YAML path, so one `ringlb check` run lists them all.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ipnet::IpNet;

use crate::error::{ConfigError, ConfigErrors};
use crate::model::{
    Algorithm, Backend, Config, Forwarding, HealthCheck, Listener, Protocol, ProxyProtocol, Workers,
};
use crate::raw::{RawBackend, RawConfig, RawHealthCheck, RawListener, Scalar, ScalarKind};

// Defaults (DESIGN.md §3); docs/configuration.md lists the same values.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
pub const DEFAULT_CONNECT_ATTEMPTS: u32 = 3;
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(15 * 60);
pub const DEFAULT_MAX_CONNECTIONS: u32 = 50_000;
pub const DEFAULT_SESSION_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_MAX_SESSIONS: u32 = 100_000;
pub const DEFAULT_HC_INTERVAL: Duration = Duration::from_secs(1);
pub const DEFAULT_HC_TIMEOUT: Duration = Duration::from_millis(500);
pub const DEFAULT_HC_RISE: u32 = 2;
pub const DEFAULT_HC_FALL: u32 = 3;

/// Upper bound of `workers`: far above any host this runs on, low enough that a typo
/// (`workers: 10000`) does not spawn thousands of threads and rings.
pub const MAX_WORKERS: u64 = 1024;
/// Upper bound of a backend weight: keeps the sums the schedulers build (smooth WRR,
/// dynamic weights) far from overflow however many backends a listener has.
pub const MAX_WEIGHT: u64 = 65_535;
/// Shortest timeout or interval honoured: below it a timer or a health check would spin.
pub const MIN_DURATION: Duration = Duration::from_millis(1);
/// Longest duration accepted: `Instant + d` must never overflow at runtime.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);
/// Longest listener name: it is repeated in every metric line and log line.
pub const MAX_NAME_LEN: usize = 64;

/// `(YAML spelling, value)` for every value of an enum: the spellings live once, in the
/// model's `as_str`.
fn named<T: Copy, const N: usize>(
    all: [T; N],
    name: fn(T) -> &'static str,
) -> [(&'static str, T); N] {
    all.map(|v| (name(v), v))
}

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
}

/// Turns the raw file into the typed model, or returns every problem found.
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

    let mut listeners = Vec::new();
    match &raw.listeners {
        None => errs.push("listeners", "missing: at least one listener is required"),
        Some(list) if list.is_empty() => {
            errs.push("listeners", "no listeners: at least one is required")
        }
        Some(list) => {
            let mut seen = Seen::default();
            for (i, rl) in list.iter().enumerate() {
                if let Some(l) = listener(&mut errs, &mut seen, i, rl) {
                    listeners.push(l);
                }
            }
            if let Some(admin) = admin {
                admin_conflicts(&mut errs, admin, &seen);
            }
        }
    }

    if errs.0.is_empty() {
        Ok(Config {
            workers,
            admin,
            shutdown_timeout,
            log_level,
            access_log,
            listeners,
        })
    } else {
        Err(ConfigErrors { errors: errs.0 })
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

fn describe(index: usize, name: &Option<String>) -> String {
    match name {
        Some(n) => format!("listeners[{index}] \"{n}\""),
        None => format!("listeners[{index}]"),
    }
}

/// Returns the listener if it has no problem; its problems are pushed in any case.
fn listener(errs: &mut Errors, seen: &mut Seen, i: usize, rl: &RawListener) -> Option<Listener> {
    let before = errs.0.len();
    let p = |key: &str| format!("listeners[{i}].{key}");

    let name = match &rl.name {
        None => {
            errs.push(
                p("name"),
                "missing: every listener needs a unique name made of letters, digits, '_', '.' or '-'",
            );
            None
        }
        Some(s) => listener_name(errs, &p("name"), s),
    };
    if let Some(n) = &name {
        if let Some(first) = seen.names.get(n) {
            errs.push(
                p("name"),
                format!(
                    "duplicate listener name \"{n}\" (first used by listeners[{first}]): names must be unique because they label metrics and logs"
                ),
            );
        } else {
            seen.names.insert(n.clone(), i);
        }
    }

    // The protocol decides which keys apply, so it is read before the others.
    let protocol = rl.protocol.as_ref().and_then(|s| {
        choice(
            errs,
            &p("protocol"),
            "protocol",
            s,
            &named(Protocol::ALL, Protocol::as_str),
        )
    });
    let proto_known = rl.protocol.is_none() || protocol.is_some();
    let protocol = protocol.unwrap_or(Protocol::Tcp);

    let bind = match &rl.bind {
        None => {
            errs.push(
                p("bind"),
                "missing: every listener needs a bind address, e.g. 0.0.0.0:7000 or [::]:7000",
            );
            None
        }
        Some(s) => socket_addr(errs, &p("bind"), s),
    };
    if let Some(bind) = bind {
        if proto_known {
            for (j, other_name, other_bind, other_proto) in &seen.binds {
                if *other_proto != protocol {
                    continue;
                }
                if let Some(why) = bind_overlap(bind, *other_bind) {
                    errs.push(
                        p("bind"),
                        format!(
                            "{bind} conflicts with {} ({other_bind}, {}): {why}; two listeners may share a port only when their protocols differ",
                            describe(*j, other_name),
                            protocol.as_str(),
                        ),
                    );
                }
            }
            seen.binds.push((i, name.clone(), bind, protocol));
        }
    }

    let algorithm = rl
        .algorithm
        .as_ref()
        .and_then(|s| {
            choice(
                errs,
                &p("algorithm"),
                "algorithm",
                s,
                &named(Algorithm::ALL, Algorithm::as_str),
            )
        })
        .unwrap_or(Algorithm::RoundRobin);

    // Keys that only one protocol uses: reject them on the other rather than ignore them,
    // since an operator who wrote them expects them to act.
    if proto_known {
        let tcp_only = [
            ("connect_timeout", rl.connect_timeout.is_some()),
            ("connect_attempts", rl.connect_attempts.is_some()),
            ("idle_timeout", rl.idle_timeout.is_some()),
            ("forwarding", rl.forwarding.is_some()),
        ];
        let udp_only = [
            ("session_timeout", rl.session_timeout.is_some()),
            ("max_sessions", rl.max_sessions.is_some()),
        ];
        let (other, keys): (&str, &[(&str, bool)]) = match protocol {
            Protocol::Udp => ("tcp", &tcp_only),
            Protocol::Tcp => ("udp", &udp_only),
        };
        for &(key, present) in keys {
            if present {
                errs.push(
                    p(key),
                    format!(
                        "{key} applies only to {other} listeners and this listener is {}: remove it or set protocol: {other}",
                        protocol.as_str()
                    ),
                );
            }
        }
    }

    let connect_timeout = opt_duration(
        errs,
        &p("connect_timeout"),
        rl.connect_timeout.as_ref(),
        DEFAULT_CONNECT_TIMEOUT,
        ZeroOk::No,
    );
    let connect_attempts = opt_int(
        errs,
        &p("connect_attempts"),
        rl.connect_attempts.as_ref(),
        DEFAULT_CONNECT_ATTEMPTS,
        1,
        u32::MAX.into(),
        " (the first try counts as an attempt)",
    );
    let idle_timeout = opt_duration(
        errs,
        &p("idle_timeout"),
        rl.idle_timeout.as_ref(),
        DEFAULT_IDLE_TIMEOUT,
        ZeroOk::No,
    );
    let max_connections = opt_int(
        errs,
        &p("max_connections"),
        rl.max_connections.as_ref(),
        DEFAULT_MAX_CONNECTIONS,
        1,
        u32::MAX.into(),
        " (a limit of 0 would refuse every client)",
    );

    let mut allow = Vec::new();
    if let Some(list) = &rl.allow {
        if list.is_empty() {
            errs.push(
                p("allow"),
                "empty allow-list would deny every client: list at least one address or CIDR, or remove allow to admit everyone",
            );
        }
        for (k, s) in list.iter().enumerate() {
            if let Some(net) = cidr(errs, &format!("listeners[{i}].allow[{k}]"), s) {
                allow.push(net);
            }
        }
    }

    let proxy_protocol = rl
        .proxy_protocol
        .as_ref()
        .and_then(|s| {
            choice(
                errs,
                &p("proxy_protocol"),
                "proxy_protocol",
                s,
                &named(ProxyProtocol::ALL, ProxyProtocol::as_str),
            )
        })
        .unwrap_or(ProxyProtocol::None);
    if proto_known && protocol == Protocol::Udp && proxy_protocol == ProxyProtocol::V1 {
        errs.push(
            p("proxy_protocol"),
            "v1 is a text header for tcp streams and cannot describe a datagram: use none or v2 on a udp listener",
        );
    }
    let forwarding = rl
        .forwarding
        .as_ref()
        .and_then(|s| {
            choice(
                errs,
                &p("forwarding"),
                "forwarding mode",
                s,
                &named(Forwarding::ALL, Forwarding::as_str),
            )
        })
        .unwrap_or(Forwarding::Auto);
    let session_timeout = opt_duration(
        errs,
        &p("session_timeout"),
        rl.session_timeout.as_ref(),
        DEFAULT_SESSION_TIMEOUT,
        ZeroOk::No,
    );
    let max_sessions = opt_int(
        errs,
        &p("max_sessions"),
        rl.max_sessions.as_ref(),
        DEFAULT_MAX_SESSIONS,
        1,
        u32::MAX.into(),
        " (a table of 0 sessions would drop every datagram)",
    );

    let health_check = rl
        .health_check
        .as_ref()
        .map(|hc| health_check(errs, &p("health_check"), hc));

    let mut backends = Vec::new();
    match &rl.backends {
        None => errs.push(
            p("backends"),
            "missing: a listener needs at least one backend",
        ),
        Some(list) if list.is_empty() => {
            errs.push(p("backends"), "no backends: a listener needs at least one")
        }
        Some(list) => {
            // addr → index of its first occurrence in this listener.
            let mut addrs: HashMap<SocketAddr, usize> = HashMap::new();
            for (k, rb) in list.iter().enumerate() {
                let bp = format!("listeners[{i}].backends[{k}]");
                if let Some(b) = backend(errs, &bp, rb) {
                    if let Some(first) = addrs.get(&b.addr) {
                        errs.push(
                            format!("{bp}.addr"),
                            format!(
                                "duplicate backend {} (also backends[{first}]): list each backend once per listener and use weight to give it a larger share",
                                b.addr
                            ),
                        );
                    } else {
                        addrs.insert(b.addr, k);
                    }
                    backends.push(b);
                }
            }
        }
    }

    if errs.0.len() != before {
        return None;
    }
    Some(Listener {
        name: name?,
        bind: bind?,
        protocol,
        algorithm,
        connect_timeout,
        connect_attempts,
        idle_timeout,
        max_connections,
        allow,
        proxy_protocol,
        forwarding,
        session_timeout,
        max_sessions,
        health_check: health_check.flatten(),
        backends,
    })
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

fn admin_conflicts(errs: &mut Errors, admin: SocketAddr, seen: &Seen) {
    for (j, name, bind, proto) in &seen.binds {
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

/// `None` inside: the health check had a problem (already reported).
fn health_check(errs: &mut Errors, path: &str, hc: &RawHealthCheck) -> Option<HealthCheck> {
    let before = errs.0.len();
    let p = |key: &str| format!("{path}.{key}");
    let interval = opt_duration(
        errs,
        &p("interval"),
        hc.interval.as_ref(),
        DEFAULT_HC_INTERVAL,
        ZeroOk::No,
    );
    let timeout = opt_duration(
        errs,
        &p("timeout"),
        hc.timeout.as_ref(),
        DEFAULT_HC_TIMEOUT,
        ZeroOk::No,
    );
    let rise = opt_int(
        errs,
        &p("rise"),
        hc.rise.as_ref(),
        DEFAULT_HC_RISE,
        1,
        u32::MAX.into(),
        " (consecutive successes needed to mark a backend up)",
    );
    let fall = opt_int(
        errs,
        &p("fall"),
        hc.fall.as_ref(),
        DEFAULT_HC_FALL,
        1,
        u32::MAX.into(),
        " (consecutive failures needed to mark a backend down)",
    );
    let port = hc.port.as_ref().and_then(|s| {
        int_in(errs, &p("port"), s, 1, u16::MAX.into(), "").and_then(|v| u16::try_from(v).ok())
    });
    // Compare only values that parsed: a bad one is already reported.
    if errs.0.len() == before && timeout > interval {
        errs.push(
            p("timeout"),
            format!(
                "timeout {} is longer than interval {}: a check must end before the next one starts, so use a timeout at most the interval",
                humantime::format_duration(timeout),
                humantime::format_duration(interval)
            ),
        );
    }
    if errs.0.len() != before {
        return None;
    }
    Some(HealthCheck {
        interval,
        timeout,
        rise,
        fall,
        port,
    })
}

fn backend(errs: &mut Errors, path: &str, rb: &RawBackend) -> Option<Backend> {
    let before = errs.0.len();
    let p = |key: &str| format!("{path}.{key}");
    let addr = match &rb.addr {
        None => {
            errs.push(
                p("addr"),
                "missing: every backend needs an addr, e.g. 10.0.0.11:7000",
            );
            None
        }
        Some(s) => socket_addr(errs, &p("addr"), s).and_then(|a| {
            if a.port() == 0 {
                errs.push(
                    p("addr"),
                    format!(
                        "{} has port 0, which cannot be connected to: use the backend's port, 1..=65535",
                        s.shown()
                    ),
                );
                None
            } else if a.ip().is_unspecified() {
                errs.push(
                    p("addr"),
                    format!(
                        "{} is a wildcard, not a destination: give the backend's own address",
                        a.ip()
                    ),
                );
                None
            } else {
                Some(a)
            }
        }),
    };
    let weight = opt_int(
        errs,
        &p("weight"),
        rb.weight.as_ref(),
        1,
        1,
        MAX_WEIGHT,
        " (to take a backend out of rotation remove it or mark it backup: true)",
    );
    let max_connections = opt_int(
        errs,
        &p("max_connections"),
        rb.max_connections.as_ref(),
        0,
        0,
        u32::MAX.into(),
        "",
    );
    let backup = rb
        .backup
        .as_ref()
        .and_then(|s| boolean(errs, &p("backup"), s))
        .unwrap_or(false);
    if errs.0.len() != before {
        return None;
    }
    let label = rb.addr.as_ref().map(|s| s.text.clone())?;
    Some(Backend {
        addr: addr?,
        label,
        weight,
        max_connections,
        backup,
    })
}

// ---- scalar checkers: each reports its own problem and returns None on error ----

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

fn socket_addr(errs: &mut Errors, path: &str, s: &Scalar) -> Option<SocketAddr> {
    match s.text.parse::<SocketAddr>() {
        Ok(a) if s.kind == ScalarKind::Str => Some(a),
        _ => {
            errs.push(path, format!("invalid socket address {}", s.shown()));
            None
        }
    }
}

/// A CIDR, or a bare address meaning just that host (/32 or /128).
fn cidr(errs: &mut Errors, path: &str, s: &Scalar) -> Option<IpNet> {
    if s.kind == ScalarKind::Str {
        if let Ok(net) = s.text.parse::<IpNet>() {
            // 10.1.2.3/8 means 10.0.0.0/8: keep the network, as matching does.
            return Some(net.trunc());
        }
        if let Ok(ip) = s.text.parse::<IpAddr>() {
            return Some(IpNet::from(ip));
        }
    }
    errs.push(
        path,
        format!(
            "invalid CIDR {}: expected an address or address/prefix, e.g. 10.0.0.0/8, 192.0.2.7 or 2001:db8::/32",
            s.shown()
        ),
    );
    None
}

fn boolean(errs: &mut Errors, path: &str, s: &Scalar) -> Option<bool> {
    if s.kind == ScalarKind::Bool {
        return Some(s.text == "true");
    }
    errs.push(path, format!("expected true or false, got {}", s.shown()));
    None
}

fn choice<T: Copy>(
    errs: &mut Errors,
    path: &str,
    what: &str,
    s: &Scalar,
    options: &[(&str, T)],
) -> Option<T> {
    if s.kind == ScalarKind::Str {
        if let Some((_, v)) = options.iter().find(|(name, _)| *name == s.text) {
            return Some(*v);
        }
    }
    let names: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
    let allowed = match names.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
        _ => names.join(", "),
    };
    errs.push(
        path,
        format!("unknown {what} {}: expected {allowed}", s.shown()),
    );
    None
}

/// An integer in `min..=max`; `hint` is appended when the value is out of range.
fn int_in(
    errs: &mut Errors,
    path: &str,
    s: &Scalar,
    min: u64,
    max: u64,
    hint: &str,
) -> Option<u64> {
    let range = if max == u64::from(u32::MAX) {
        format!("{min} or more")
    } else {
        format!("{min}..={max}")
    };
    if s.kind != ScalarKind::Int {
        errs.push(
            path,
            format!("expected an integer, {range}, got {}", s.shown()),
        );
        return None;
    }
    // Negative values do not parse as u64 and are below every minimum here.
    let n = match s.text.parse::<u64>() {
        Ok(n) => n,
        Err(_) if s.text.starts_with('-') => {
            errs.push(
                path,
                format!("must be at least {min}, got {}{hint}", s.text),
            );
            return None;
        }
        Err(_) => {
            errs.push(path, format!("{} is too large: expected {range}", s.text));
            return None;
        }
    };
    if n < min {
        errs.push(path, format!("must be at least {min}, got {n}{hint}"));
        None
    } else if n > max {
        errs.push(path, format!("{n} is too large: expected {range}"));
        None
    } else {
        Some(n)
    }
}

fn opt_int(
    errs: &mut Errors,
    path: &str,
    s: Option<&Scalar>,
    default: u32,
    min: u64,
    max: u64,
    hint: &str,
) -> u32 {
    match s {
        None => default,
        Some(s) => int_in(errs, path, s, min, max, hint)
            .and_then(|v| u32::try_from(v).ok())
            .unwrap_or(default),
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum ZeroOk {
    Yes,
    No,
}

fn duration(errs: &mut Errors, path: &str, s: &Scalar, zero: ZeroOk) -> Option<Duration> {
    const EXAMPLES: &str = "e.g. \"250ms\", \"2s\", \"15m\"";
    if s.kind != ScalarKind::Str {
        errs.push(
            path,
            format!(
                "invalid duration {}: a unit is required, {EXAMPLES}",
                s.shown()
            ),
        );
        return None;
    }
    let d = match humantime::parse_duration(&s.text) {
        Ok(d) => d,
        Err(e) => {
            errs.push(
                path,
                format!(
                    "invalid duration {} ({e}): write a number and a unit, {EXAMPLES}",
                    s.shown()
                ),
            );
            return None;
        }
    };
    if d.is_zero() {
        if zero == ZeroOk::Yes {
            return Some(d);
        }
        errs.push(
            path,
            format!("duration {} must be greater than zero", s.shown()),
        );
        None
    } else if d < MIN_DURATION {
        errs.push(
            path,
            format!(
                "duration {} is below 1ms, the shortest timer ringlb honours",
                s.shown()
            ),
        );
        None
    } else if d > MAX_DURATION {
        errs.push(
            path,
            format!("duration {} is longer than the maximum of 365d", s.shown()),
        );
        None
    } else {
        Some(d)
    }
}

fn opt_duration(
    errs: &mut Errors,
    path: &str,
    s: Option<&Scalar>,
    default: Duration,
    zero: ZeroOk,
) -> Duration {
    match s {
        None => default,
        Some(s) => duration(errs, path, s, zero).unwrap_or(default),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse;

    /// `path: message` lines of a config that must be invalid.
    fn errors(yaml: &str) -> Vec<String> {
        match parse(yaml) {
            Ok(c) => panic!("expected errors, got {c:?}"),
            Err(e) => e.errors.iter().map(ToString::to_string).collect(),
        }
    }

    fn ok(yaml: &str) -> Config {
        parse(yaml).unwrap_or_else(|e| panic!("expected valid, got:\n{e}\n--- yaml\n{yaml}"))
    }

    /// One listener `l` on 127.0.0.1:7000 with `extra` keys (indented by 4) and a backend.
    fn one(extra: &str) -> String {
        format!(
            "listeners:\n  - name: l\n    bind: 127.0.0.1:7000\n{extra}    backends:\n      - addr: 10.0.0.1:80\n"
        )
    }

    /// Like `one` but with a udp listener.
    fn one_udp(extra: &str) -> String {
        one(&format!("    protocol: udp\n{extra}"))
    }

    /// A listener whose backends are given (each line indented by 6).
    fn with_backends(backends: &str) -> String {
        format!("listeners:\n  - name: l\n    bind: 127.0.0.1:7000\n    backends:\n{backends}")
    }

    fn assert_one_error(yaml: &str, path: &str, needle: &str) {
        let e = errors(yaml);
        assert_eq!(e.len(), 1, "expected one error, got {e:#?}");
        assert!(
            e[0].starts_with(&format!("{path}: ")) && e[0].contains(needle),
            "expected `{path}: …{needle}…`, got {:?}",
            e[0]
        );
    }

    #[test]
    fn defaults_are_resolved() {
        let c = ok(&one(""));
        assert_eq!(c.workers, Workers::Auto);
        assert_eq!(c.admin, None);
        assert_eq!(c.shutdown_timeout, Duration::from_secs(30));
        assert_eq!(c.log_level, log::LevelFilter::Info);
        assert!(c.access_log);
        let l = &c.listeners[0];
        assert_eq!(l.protocol, Protocol::Tcp);
        assert_eq!(l.algorithm, Algorithm::RoundRobin);
        assert_eq!(l.connect_timeout, Duration::from_secs(1));
        assert_eq!(l.connect_attempts, 3);
        assert_eq!(l.idle_timeout, Duration::from_secs(900));
        assert_eq!(l.max_connections, 50_000);
        assert!(l.allow.is_empty());
        assert_eq!(l.proxy_protocol, ProxyProtocol::None);
        assert_eq!(l.forwarding, Forwarding::Auto);
        assert_eq!(l.session_timeout, Duration::from_secs(30));
        assert_eq!(l.max_sessions, 100_000);
        assert_eq!(l.health_check, None);
        let b = &l.backends[0];
        assert_eq!((b.weight, b.max_connections, b.backup), (1, 0, false));
    }

    #[test]
    fn every_key_is_read() {
        let c = ok(
            "workers: 4\nadmin: 127.0.0.1:9901\nshutdown_timeout: 5s\nlog_level: debug\naccess_log: false\n\
             listeners:\n  - name: a.b-c_1\n    bind: \"[::1]:7000\"\n    algorithm: maglev\n\
             \x20   connect_timeout: 250ms\n    connect_attempts: 5\n    idle_timeout: 2h\n\
             \x20   max_connections: 10\n    allow: [10.0.0.0/8]\n    proxy_protocol: v2\n    forwarding: splice\n\
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
        assert_eq!(l.connect_timeout, Duration::from_millis(250));
        assert_eq!(l.connect_attempts, 5);
        assert_eq!(l.idle_timeout, Duration::from_secs(7200));
        assert_eq!(l.max_connections, 10);
        assert_eq!(l.allow, vec!["10.0.0.0/8".parse::<IpNet>().unwrap()]);
        assert_eq!(l.proxy_protocol, ProxyProtocol::V2);
        assert_eq!(l.forwarding, Forwarding::Splice);
        assert_eq!(
            l.health_check,
            Some(HealthCheck {
                interval: Duration::from_secs(2),
                timeout: Duration::from_secs(1),
                rise: 4,
                fall: 5,
                port: Some(8080)
            })
        );
        let b = &l.backends[0];
        assert_eq!((b.weight, b.max_connections, b.backup), (7, 100, true));
    }

    #[test]
    fn all_problems_are_reported_at_once() {
        let e = errors(
            "workers: 0\nlisteners:\n  - name: l\n    bind: 127.0.0.1:7000\n    backends:\n\
             \x20     - addr: 10.0.0.1\n        weight: 0\n",
        );
        assert_eq!(
            e,
            [
                "workers: expected \"auto\" or an integer 1..=1024, got 0",
                "listeners[0].backends[0].addr: invalid socket address \"10.0.0.1\"",
                "listeners[0].backends[0].weight: must be at least 1, got 0 (to take a backend out of rotation remove it or mark it backup: true)",
            ]
        );
    }

    // ---- top level ----

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

    // ---- listener identity ----

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
    fn duplicate_listener_names() {
        let e = errors(
            "listeners:\n  - name: a\n    bind: 127.0.0.1:7000\n    backends: [{addr: 10.0.0.1:80}]\n\
             \x20 - name: a\n    bind: 127.0.0.1:7001\n    backends: [{addr: 10.0.0.1:80}]\n",
        );
        assert_eq!(e, ["listeners[1].name: duplicate listener name \"a\" (first used by listeners[0]): names must be unique because they label metrics and logs"]);
    }

    fn two(bind_a: &str, proto_a: &str, bind_b: &str, proto_b: &str) -> String {
        format!(
            "listeners:\n  - name: a\n    bind: \"{bind_a}\"\n    protocol: {proto_a}\n    backends: [{{addr: 10.0.0.1:80}}]\n\
             \x20 - name: b\n    bind: \"{bind_b}\"\n    protocol: {proto_b}\n    backends: [{{addr: 10.0.0.1:80}}]\n"
        )
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

    #[test]
    fn protocol_names() {
        assert_eq!(ok(&one_udp("")).listeners[0].protocol, Protocol::Udp);
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
        let l = &ok(&one_udp("    session_timeout: 10s\n    max_sessions: 10\n")).listeners[0];
        assert_eq!(
            (l.session_timeout, l.max_sessions),
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
    fn forwarding_names() {
        for (name, f) in &named(Forwarding::ALL, Forwarding::as_str) {
            assert_eq!(
                ok(&one(&format!("    forwarding: {name}\n"))).listeners[0].forwarding,
                *f
            );
        }
        assert_one_error(
            &one("    forwarding: zerocopy\n"),
            "listeners[0].forwarding",
            "expected copy, splice or auto",
        );
    }

    // ---- durations ----

    #[test]
    fn durations_use_humantime_syntax() {
        let l = &ok(&one(
            "    connect_timeout: 1.5s\n    idle_timeout: 1h 30m\n",
        ))
        .listeners[0];
        assert_eq!(l.connect_timeout, Duration::from_millis(1500));
        assert_eq!(l.idle_timeout, Duration::from_secs(5400));
        assert_one_error(
            &one("    connect_timeout: fast\n"),
            "listeners[0].connect_timeout",
            "invalid duration \"fast\"",
        );
        assert_one_error(
            &one("    connect_timeout: 5 parsecs\n"),
            "listeners[0].connect_timeout",
            "unknown time unit",
        );
        assert_one_error(
            &one("    idle_timeout: 15\n"),
            "listeners[0].idle_timeout",
            "a unit is required",
        );
    }

    #[test]
    fn durations_must_not_be_zero_where_zero_makes_no_sense() {
        assert_one_error(
            &one("    connect_timeout: 0s\n"),
            "listeners[0].connect_timeout",
            "must be greater than zero",
        );
        assert_one_error(
            &one("    idle_timeout: 0ms\n"),
            "listeners[0].idle_timeout",
            "must be greater than zero",
        );
        assert_one_error(
            &one_udp("    session_timeout: 0s\n"),
            "listeners[0].session_timeout",
            "must be greater than zero",
        );
        assert_one_error(
            &one("    health_check: {interval: 0s}\n"),
            "listeners[0].health_check.interval",
            "must be greater than zero",
        );
        assert_one_error(
            &one("    health_check: {timeout: 0s}\n"),
            "listeners[0].health_check.timeout",
            "must be greater than zero",
        );
    }

    #[test]
    fn durations_are_bounded() {
        assert_one_error(
            &one("    connect_timeout: 500us\n"),
            "listeners[0].connect_timeout",
            "below 1ms",
        );
        assert_one_error(
            &one("    idle_timeout: 400d\n"),
            "listeners[0].idle_timeout",
            "maximum of 365d",
        );
        ok(&one("    idle_timeout: 365d\n    connect_timeout: 1ms\n"));
    }

    // ---- limits ----

    #[test]
    fn connect_attempts_at_least_one() {
        assert_one_error(
            &one("    connect_attempts: 0\n"),
            "listeners[0].connect_attempts",
            "must be at least 1, got 0",
        );
        assert_eq!(
            ok(&one("    connect_attempts: 1\n")).listeners[0].connect_attempts,
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

    // ---- allow-list ----

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

    // ---- health check ----

    #[test]
    fn health_check_defaults() {
        let hc = ok(&one("    health_check: {}\n")).listeners[0].health_check;
        assert_eq!(
            hc,
            Some(HealthCheck {
                interval: Duration::from_secs(1),
                timeout: Duration::from_millis(500),
                rise: 2,
                fall: 3,
                port: None
            })
        );
    }

    #[test]
    fn rise_and_fall_at_least_one() {
        let e = errors(&one("    health_check: {rise: 0, fall: 0}\n"));
        assert_eq!(e.len(), 2, "{e:#?}");
        assert!(e[0].starts_with("listeners[0].health_check.rise: must be at least 1, got 0"));
        assert!(e[1].starts_with("listeners[0].health_check.fall: must be at least 1, got 0"));
    }

    #[test]
    fn health_check_timeout_at_most_interval() {
        assert_one_error(
            &one("    health_check: {interval: 1s, timeout: 1500ms}\n"),
            "listeners[0].health_check.timeout",
            "timeout 1s 500ms is longer than interval 1s",
        );
        // Default timeout (500ms) against a shorter interval is caught too.
        assert_one_error(
            &one("    health_check: {interval: 200ms}\n"),
            "listeners[0].health_check.timeout",
            "longer than interval 200ms",
        );
        ok(&one("    health_check: {interval: 1s, timeout: 1s}\n"));
    }

    #[test]
    fn health_check_port_range() {
        for bad in ["0", "65536", "-1"] {
            assert_one_error(
                &one(&format!("    health_check: {{port: {bad}}}\n")),
                "listeners[0].health_check.port",
                "",
            );
        }
        assert_eq!(
            ok(&one("    health_check: {port: 65535}\n")).listeners[0]
                .health_check
                .unwrap()
                .port,
            Some(65535)
        );
    }

    // ---- backends ----

    #[test]
    fn backends_are_required() {
        assert_one_error(
            "listeners:\n  - name: a\n    bind: 127.0.0.1:7000\n",
            "listeners[0].backends",
            "missing: a listener needs at least one backend",
        );
        assert_one_error(
            &with_backends("      []\n"),
            "listeners[0].backends",
            "no backends",
        );
    }

    #[test]
    fn backend_addr_required_and_parsed() {
        assert_one_error(
            &with_backends("      - weight: 2\n"),
            "listeners[0].backends[0].addr",
            "missing",
        );
        let e = errors(&with_backends(
            "      - addr: 10.0.0.2:80\n      - addr: 10.0.0.1\n",
        ));
        assert_eq!(
            e,
            ["listeners[0].backends[1].addr: invalid socket address \"10.0.0.1\""]
        );
        assert_one_error(
            &with_backends("      - addr: 7000\n"),
            "listeners[0].backends[0].addr",
            "invalid socket address 7000",
        );
    }

    #[test]
    fn backend_addr_must_be_a_destination() {
        assert_one_error(
            &with_backends("      - addr: 10.0.0.1:0\n"),
            "listeners[0].backends[0].addr",
            "port 0",
        );
        assert_one_error(
            &with_backends("      - addr: 0.0.0.0:80\n"),
            "listeners[0].backends[0].addr",
            "wildcard",
        );
        assert_one_error(
            &with_backends("      - addr: \"[::]:80\"\n"),
            "listeners[0].backends[0].addr",
            "wildcard",
        );
    }

    #[test]
    fn backend_label_is_the_text_as_written() {
        let c = ok(&with_backends(
            "      - addr: \"[2001:db8::1]:080\"\n      - addr: 10.0.0.1:80\n",
        ));
        let b = &c.listeners[0].backends;
        assert_eq!(b[0].label, "[2001:db8::1]:080");
        assert_eq!(b[0].addr, "[2001:db8::1]:80".parse().unwrap());
        assert_eq!(b[1].label, "10.0.0.1:80");
    }

    #[test]
    fn duplicate_backend_addr_in_one_listener() {
        // Compared as addresses, not text: 080 and 80 are the same port.
        let e = errors(&with_backends(
            "      - addr: 10.0.0.1:80\n      - addr: 10.0.0.2:80\n      - addr: 10.0.0.1:080\n",
        ));
        assert_eq!(e.len(), 1, "{e:#?}");
        assert!(e[0].starts_with(
            "listeners[0].backends[2].addr: duplicate backend 10.0.0.1:80 (also backends[0])"
        ));
        // The same backend in two listeners is fine.
        ok(&two("127.0.0.1:1", "tcp", "127.0.0.1:2", "tcp"));
    }

    #[test]
    fn weight_at_least_one() {
        assert_one_error(
            &with_backends("      - {addr: 10.0.0.1:80, weight: 0}\n"),
            "listeners[0].backends[0].weight",
            "must be at least 1, got 0",
        );
        assert_one_error(
            &with_backends("      - {addr: 10.0.0.1:80, weight: 65536}\n"),
            "listeners[0].backends[0].weight",
            "expected 1..=65535",
        );
        assert_eq!(
            ok(&with_backends(
                "      - {addr: 10.0.0.1:80, weight: 65535}\n"
            ))
            .listeners[0]
                .backends[0]
                .weight,
            65535
        );
    }

    #[test]
    fn backend_max_connections_zero_is_unlimited() {
        assert_eq!(
            ok(&with_backends(
                "      - {addr: 10.0.0.1:80, max_connections: 0}\n"
            ))
            .listeners[0]
                .backends[0]
                .max_connections,
            0
        );
        assert_one_error(
            &with_backends("      - {addr: 10.0.0.1:80, max_connections: -5}\n"),
            "listeners[0].backends[0].max_connections",
            "must be at least 0",
        );
    }

    #[test]
    fn backup_is_a_boolean_and_all_backup_is_allowed() {
        let c = ok(&with_backends("      - {addr: 10.0.0.1:80, backup: true}\n      - {addr: 10.0.0.2:80, backup: true}\n"));
        assert!(c.listeners[0].backends.iter().all(|b| b.backup));
        assert_one_error(
            &with_backends("      - {addr: 10.0.0.1:80, backup: yes}\n"),
            "listeners[0].backends[0].backup",
            "expected true or false, got \"yes\"",
        );
    }
}
