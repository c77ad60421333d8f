//! A TCP listener's TLS routes: `routes`, `tls_inspect_timeout`, `min_tls_version` and
//! `on_non_tls`. The listener's own backends are the default pool; each route brings its
//! own pool, chosen by the server name in the client's ClientHello.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

use super::backend::backends_at;
use super::lifecycle::on_down_mode;
use super::scalar::{choice, named, opt_duration, ZeroOk};
use super::Errors;
use crate::model::{Algorithm, OnDown, OnNonTls, Route, ServerName, TlsRouting, TlsVersion};
use crate::raw::{RawListener, RawRoute, Scalar, ScalarKind};

/// How long a client may take to send its ClientHello by default: a hello is one flight,
/// so even a slow link sends it in well under a second; 5 s also covers a lost segment.
pub const DEFAULT_TLS_INSPECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest `tls_inspect_timeout`: a client that has not spoken by then holds a slot for
/// nothing.
pub const MAX_TLS_INSPECT_TIMEOUT: Duration = Duration::from_secs(60);
/// The pool label of the listener's own backends; no route may take it.
pub const DEFAULT_ROUTE: &str = "default";
/// Longest DNS name (RFC 1035), without a trailing dot.
const MAX_HOST: usize = 253;

/// Listener `i`'s TLS routing; `None` when it has no `routes` (the other keys are then
/// rejected: without routes nothing reads the hello). `algorithm` and `on_down` are the
/// listener's, which routes inherit.
pub(super) fn tls_routing(
    errs: &mut Errors,
    i: usize,
    rl: &RawListener,
    algorithm: Algorithm,
    on_down: OnDown,
) -> Option<TlsRouting> {
    let path = |key: &str| format!("listeners[{i}].{key}");
    let Some(raw_routes) = &rl.routes else {
        for (key, present) in [
            ("tls_inspect_timeout", rl.tls_inspect_timeout.is_some()),
            ("min_tls_version", rl.min_tls_version.is_some()),
            ("on_non_tls", rl.on_non_tls.is_some()),
        ] {
            if present {
                errs.push(
                    path(key),
                    format!(
                        "{key} applies only to a listener with routes: add routes or remove {key}"
                    ),
                );
            }
        }
        return None;
    };
    if raw_routes.is_empty() {
        errs.push(
            path("routes"),
            "empty routes: list at least one route, or remove routes to send every connection to backends",
        );
    }
    if rl.stickiness.is_some() {
        errs.push(
            path("stickiness"),
            "stickiness cannot be combined with routes yet: remove one of them",
        );
    }
    let inspect_timeout = opt_duration(
        errs,
        &path("tls_inspect_timeout"),
        rl.tls_inspect_timeout.as_ref(),
        DEFAULT_TLS_INSPECT_TIMEOUT,
        ZeroOk::No,
    );
    if inspect_timeout > MAX_TLS_INSPECT_TIMEOUT {
        errs.push(
            path("tls_inspect_timeout"),
            format!("{inspect_timeout:?} is longer than the maximum of 60s: a client sends its ClientHello at once"),
        );
    }
    let min_version = rl
        .min_tls_version
        .as_ref()
        .and_then(|s| min_tls_version(errs, &path("min_tls_version"), s));
    let on_non_tls = rl
        .on_non_tls
        .as_ref()
        .and_then(|s| {
            choice(
                errs,
                &path("on_non_tls"),
                "on_non_tls",
                s,
                &named(OnNonTls::ALL, OnNonTls::as_str),
            )
        })
        .unwrap_or(OnNonTls::Default);

    let mut names = Names::default();
    let mut labels: HashMap<String, usize> = HashMap::new();
    let mut routes = Vec::new();
    for (r, raw) in raw_routes.iter().enumerate() {
        let rp = format!("listeners[{i}].routes[{r}]");
        let ctx = RouteCtx {
            rl,
            algorithm,
            on_down,
        };
        if let Some(route) = route(errs, &rp, raw, &ctx, &mut names) {
            if let Some(first) = labels.get(&route.name) {
                errs.push(
                    format!("{rp}.name"),
                    format!(
                        "route name {:?} is also routes[{first}]'s: each route needs its own (it labels the route's metrics)",
                        route.name
                    ),
                );
            }
            labels.insert(route.name.clone(), r);
            routes.push(route);
        }
    }
    Some(TlsRouting {
        routes,
        inspect_timeout,
        min_version,
        on_non_tls,
    })
}

/// What every route of one listener is read against.
struct RouteCtx<'a> {
    rl: &'a RawListener,
    algorithm: Algorithm,
    on_down: OnDown,
}

fn route(
    errs: &mut Errors,
    rp: &str,
    raw: &RawRoute,
    ctx: &RouteCtx<'_>,
    names: &mut Names,
) -> Option<Route> {
    let before = errs.count();
    let p = |key: &str| format!("{rp}.{key}");
    let sni: Vec<ServerName> = match raw.sni.as_deref() {
        None | Some([]) => {
            errs.push(
                p("sni"),
                "missing: a route needs at least one server name, e.g. pay.bank-a.example or *.bank-b.example",
            );
            Vec::new()
        }
        Some(list) => list
            .iter()
            .enumerate()
            .filter_map(|(k, s)| {
                let path = format!("{rp}.sni[{k}]");
                let name = server_name(errs, &path, s)?;
                names.claim(errs, &path, &name).then_some(name)
            })
            .collect(),
    };
    let alpn = alpn(errs, &p("alpn"), raw.alpn.as_deref());
    let algorithm = raw
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
        .unwrap_or(ctx.algorithm);
    if ctx.rl.slow_start.is_some() && matches!(algorithm, Algorithm::SourceHash | Algorithm::Maglev)
    {
        errs.push(
            p("algorithm"),
            format!(
                "{} cannot take the listener's slow_start (a hash pins each client to a backend): choose a weighted algorithm or remove slow_start",
                algorithm.as_str()
            ),
        );
    }
    let mut backends = backends_at(errs, rp, raw.backends.as_deref());
    route_on_down(errs, rp, raw, ctx, &mut backends);
    let name = route_name(errs, &p("name"), raw.name.as_ref(), &sni);
    if errs.count() != before {
        return None;
    }
    Some(Route {
        name: name?,
        sni,
        alpn,
        algorithm,
        backends,
    })
}

/// A route backend's own `on_down`, else the listener's.
fn route_on_down(
    errs: &mut Errors,
    rp: &str,
    raw: &RawRoute,
    ctx: &RouteCtx<'_>,
    backends: &mut [crate::model::Backend],
) {
    let raw_backends = raw.backends.as_deref().unwrap_or_default();
    if backends.len() != raw_backends.len() {
        return;
    }
    for (k, (backend, rb)) in backends.iter_mut().zip(raw_backends).enumerate() {
        let path = format!("{rp}.backends[{k}].on_down");
        backend.on_down = match &rb.on_down {
            None => ctx.on_down,
            Some(s) => {
                if ctx.rl.health_check.is_none() {
                    errs.push(
                        &path,
                        "on_down acts when a health check marks a backend down, and this listener has no health_check: add one or remove on_down",
                    );
                }
                on_down_mode(errs, &path, s).unwrap_or(ctx.on_down)
            }
        };
    }
}

/// `name`, or the first server name; label-safe, and never the default pool's.
fn route_name(
    errs: &mut Errors,
    path: &str,
    given: Option<&Scalar>,
    sni: &[ServerName],
) -> Option<String> {
    let name = match given {
        Some(s) => s.text.clone(),
        None => sni.first()?.shown(),
    };
    let ok = !name.is_empty()
        && name.len() <= super::listener::MAX_NAME_LEN
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | '*'));
    if !ok {
        errs.push(
            path,
            format!(
                "invalid route name {name:?}: use 1 to {} letters, digits, '_', '.', '-' or '*' (it becomes a metric label and a log field)",
                super::listener::MAX_NAME_LEN
            ),
        );
        return None;
    }
    if name == DEFAULT_ROUTE {
        errs.push(
            path,
            "\"default\" names the listener's own backends: give this route another name",
        );
        return None;
    }
    Some(name)
}

/// The server names claimed so far on one listener, and by which `sni` entry.
#[derive(Default)]
struct Names(HashMap<ServerName, String>);

impl Names {
    /// `false` (and a problem pushed) when another entry already routes `name`.
    fn claim(&mut self, errs: &mut Errors, path: &str, name: &ServerName) -> bool {
        if let Some(first) = self.0.get(name) {
            errs.push(
                path,
                format!(
                    "{:?} is already routed by {first}: a name may be routed once per listener",
                    name.shown()
                ),
            );
            return false;
        }
        let short = path
            .split_once(']')
            .map_or(path, |(_, rest)| rest.trim_start_matches('.'));
        self.0.insert(name.clone(), short.to_owned());
        true
    }
}

/// A host name (`pay.bank-a.example`) or a wildcard over its subdomains (`*.bank-b.example`).
fn server_name(errs: &mut Errors, path: &str, s: &Scalar) -> Option<ServerName> {
    let text = s.text.to_ascii_lowercase();
    let (wildcard, host) = match text.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, text.as_str()),
    };
    let problem = if s.kind != ScalarKind::Str {
        Some("expected a host name")
    } else if host.contains('*') {
        Some("a wildcard is allowed only as the whole leftmost label, as in *.bank-b.example")
    } else if host.parse::<IpAddr>().is_ok() {
        Some("an IP address: clients never send one as a server name (RFC 6066)")
    } else {
        host_problem(host)
    };
    if let Some(why) = problem {
        errs.push(path, format!("invalid server name {}: {why}", s.shown()));
        return None;
    }
    Some(if wildcard {
        ServerName::Wildcard(format!(".{host}"))
    } else {
        ServerName::Exact(host.to_owned())
    })
}

/// Why `host` is not a DNS host name, if it is not.
fn host_problem(host: &str) -> Option<&'static str> {
    if host.is_empty() || host.len() > MAX_HOST {
        return Some("a host name has 1 to 253 characters");
    }
    if host.ends_with('.') {
        return Some("write it without the trailing dot");
    }
    for label in host.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Some("each label between dots has 1 to 63 characters");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
        {
            return Some(
                "use letters, digits, '-' and '_' between the dots (IDNs in their xn-- form)",
            );
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Some("a label cannot start or end with '-'");
        }
    }
    None
}

fn alpn(errs: &mut Errors, path: &str, list: Option<&[Scalar]>) -> Vec<String> {
    let Some(list) = list else {
        return Vec::new();
    };
    if list.is_empty() {
        errs.push(
            path,
            "empty alpn list would match no client: list protocols (h2, http/1.1…) or remove alpn",
        );
    }
    list.iter()
        .enumerate()
        .filter_map(|(k, s)| {
            let ok = s.kind == ScalarKind::Str
                && !s.text.is_empty()
                && s.text.len() <= 255
                && s.text.bytes().all(|b| b.is_ascii_graphic());
            if !ok {
                errs.push(
                    format!("{path}[{k}]"),
                    format!(
                        "invalid ALPN protocol {}: 1 to 255 printable ASCII characters, e.g. h2",
                        s.shown()
                    ),
                );
            }
            ok.then(|| s.text.clone())
        })
        .collect()
}

/// `1.2` is read by YAML as a number, `"1.2"` as a string: both mean TLS 1.2.
fn min_tls_version(errs: &mut Errors, path: &str, s: &Scalar) -> Option<TlsVersion> {
    let text = match (s.kind, s.text.as_str()) {
        // A float 1.0 is written back as "1".
        (ScalarKind::Float | ScalarKind::Int, "1") => "1.0".to_owned(),
        _ => s.text.clone(),
    };
    let as_str = Scalar {
        text,
        kind: ScalarKind::Str,
    };
    choice(
        errs,
        path,
        "min_tls_version",
        &as_str,
        &named(TlsVersion::ALL, TlsVersion::as_str),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::testing::*;

    fn routed(extra: &str, routes: &str) -> String {
        one(&format!("{extra}    routes:\n{routes}"))
    }

    const TWO: &str = "      - {sni: [pay.bank-a.example], backends: [{addr: 10.0.1.1:443}]}\n\
                       \x20     - {name: b, sni: [\"*.Bank-B.example\", x.bank-c.example], alpn: [h2], algorithm: maglev, backends: [{addr: 10.0.2.1:443}, {addr: 10.0.2.2:443}]}\n";

    fn routing(yaml: &str) -> TlsRouting {
        *tcp(&ok(yaml)).tls_routing.expect("routes")
    }

    #[test]
    fn routes_are_read_with_their_defaults() {
        let t = routing(&routed("    algorithm: least_connections\n", TWO));
        assert_eq!(t.inspect_timeout, DEFAULT_TLS_INSPECT_TIMEOUT);
        assert_eq!((t.min_version, t.on_non_tls), (None, OnNonTls::Default));
        let [a, b] = &t.routes[..] else {
            panic!("{t:?}")
        };
        assert_eq!(a.name, "pay.bank-a.example");
        assert_eq!(a.sni, [ServerName::Exact("pay.bank-a.example".into())]);
        assert_eq!(a.algorithm, Algorithm::LeastConnections);
        assert!(a.alpn.is_empty());
        assert_eq!(b.name, "b");
        assert_eq!(
            b.sni,
            [
                ServerName::Wildcard(".bank-b.example".into()),
                ServerName::Exact("x.bank-c.example".into())
            ]
        );
        assert_eq!(
            (b.alpn.clone(), b.algorithm),
            (vec!["h2".into()], Algorithm::Maglev)
        );
        assert_eq!(b.backends.len(), 2);
        assert!(tcp(&ok(&one(""))).tls_routing.is_none());
    }

    #[test]
    fn listener_keys_are_read() {
        let t = routing(&routed(
            "    tls_inspect_timeout: 2s\n    min_tls_version: 1.2\n    on_non_tls: close\n",
            TWO,
        ));
        assert_eq!(t.inspect_timeout, Duration::from_secs(2));
        assert_eq!(t.min_version, Some(TlsVersion::Tls12));
        assert_eq!(t.on_non_tls, OnNonTls::Close);
        for (text, v) in [("1.0", TlsVersion::Tls10), ("\"1.3\"", TlsVersion::Tls13)] {
            let t = routing(&routed(&format!("    min_tls_version: {text}\n"), TWO));
            assert_eq!(t.min_version, Some(v));
        }
        assert_one_error(
            &routed("    min_tls_version: 1.4\n", TWO),
            "listeners[0].min_tls_version",
            "expected 1.0, 1.1, 1.2 or 1.3",
        );
        assert_one_error(
            &routed("    on_non_tls: drop\n", TWO),
            "listeners[0].on_non_tls",
            "expected default or close",
        );
        assert_one_error(
            &routed("    tls_inspect_timeout: 2m\n", TWO),
            "listeners[0].tls_inspect_timeout",
            "maximum of 60s",
        );
    }

    #[test]
    fn bad_server_names_name_their_entry() {
        for (name, why) in [
            ("\"a.*.example\"", "only as the whole leftmost label"),
            ("\"*bank.example\"", "only as the whole leftmost label"),
            ("\"*\"", "only as the whole leftmost label"),
            ("\"a..example\"", "1 to 63 characters"),
            ("\"-a.example\"", "cannot start or end"),
            ("\"a b.example\"", "letters, digits"),
            ("a.example.", "trailing dot"),
            ("10.0.0.1", "an IP address"),
            ("443", "expected a host name"),
        ] {
            assert_one_error(
                &routed(
                    "",
                    &format!("      - {{sni: [ok.example, {name}], backends: [{{addr: 10.0.1.1:443}}]}}\n"),
                ),
                "listeners[0].routes[0].sni[1]",
                why,
            );
        }
    }

    #[test]
    fn a_name_is_routed_once() {
        assert_one_error(
            &routed(
                "",
                "      - {sni: [\"*.b.example\", a.example], backends: [{addr: 10.0.1.1:443}]}\n\
                 \x20     - {name: two, sni: [c.example, A.example], backends: [{addr: 10.0.1.2:443}]}\n",
            ),
            "listeners[0].routes[1].sni[1]",
            "\"a.example\" is already routed by routes[0].sni[1]",
        );
        assert_one_error(
            &routed(
                "",
                "      - {name: x, sni: [a.example], backends: [{addr: 10.0.1.1:443}]}\n\
                 \x20     - {name: x, sni: [c.example], backends: [{addr: 10.0.1.2:443}]}\n",
            ),
            "listeners[0].routes[1].name",
            "also routes[0]'s",
        );
        assert_one_error(
            &routed(
                "",
                "      - {name: default, sni: [a.example], backends: [{addr: 10.0.1.1:443}]}\n",
            ),
            "listeners[0].routes[0].name",
            "listener's own backends",
        );
    }

    #[test]
    fn a_route_needs_names_and_backends() {
        let e = errors(&routed("", "      - {alpn: []}\n"));
        assert_errors_start_with(
            &e,
            &[
                "listeners[0].routes[0].sni: missing",
                "listeners[0].routes[0].alpn: empty alpn list",
                "listeners[0].routes[0].backends: missing",
            ],
        );
        assert_one_error(
            &one("    routes: []\n"),
            "listeners[0].routes",
            "empty routes",
        );
        assert_one_error(
            &routed(
                "",
                "      - {sni: [a.example], backends: [{addr: 10.0.1.1:443}, {addr: 10.0.1.1:443}]}\n",
            ),
            "listeners[0].routes[0].backends[1].addr",
            "duplicate backend",
        );
    }

    #[test]
    fn route_keys_need_routes_and_tcp() {
        assert_one_error(
            &one("    on_non_tls: close\n"),
            "listeners[0].on_non_tls",
            "only to a listener with routes",
        );
        assert_one_error(
            &one_udp(&format!("    routes:\n{TWO}")),
            "listeners[0].routes",
            "applies only to tcp listeners",
        );
        assert_one_error(
            &routed("    stickiness: {key: source_ip}\n", TWO),
            "listeners[0].stickiness",
            "cannot be combined with routes",
        );
    }

    #[test]
    fn route_backends_take_the_listeners_on_down() {
        let c = ok(&routed(
            "    on_down: close\n    health_check: {interval: 1s}\n",
            "      - {sni: [a.example], backends: [{addr: 10.0.1.1:443}, {addr: 10.0.1.2:443, on_down: reset}]}\n",
        ));
        let t = tcp(&c).tls_routing.unwrap();
        let downs: Vec<OnDown> = t.routes[0].backends.iter().map(|b| b.on_down).collect();
        assert_eq!(downs, [OnDown::Close, OnDown::Reset]);
    }
}
