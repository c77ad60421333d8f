//! A TCP listener's TLS routes as the workers see them: one pool per route, each with its
//! own scheduler (so its own balancing, tiers and backend health), and the table that
//! maps a ClientHello's server name to a pool. The listener's own scheduler is the
//! default pool. A reload swaps the whole table; a route that keeps its name keeps its
//! scheduler (backend states, health) and its counters.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use ringlb_config::{Listener, Route, ServerName, TlsRouting, Transport};
use ringlb_scheduler::Scheduler;
use ringlb_tlsinspect::TlsVersion;

/// The pool label of the listener's own backends.
pub const DEFAULT_POOL: &str = "default";

/// One route's pool.
#[derive(Debug)]
pub struct Pool {
    pub name: String,
    /// ALPN protocols of which the client must offer one; empty: any.
    alpn: Vec<Vec<u8>>,
    pub scheduler: Arc<Scheduler>,
    /// Connections routed here (`ringlb_sni_routed_total`).
    pub routed: AtomicU64,
}

impl Pool {
    fn accepts(&self, offered: &[Vec<u8>]) -> bool {
        self.alpn.is_empty() || offered.iter().any(|p| self.alpn.contains(p))
    }
}

/// The routes of one configuration: pools in file order and the names that lead to them.
#[derive(Debug, Default)]
pub struct RouteTable {
    pub pools: Vec<Arc<Pool>>,
    exact: HashMap<String, usize>,
    /// `(suffix, pool)`, longest suffix first: `.a.b.example` before `.b.example`.
    wildcards: Vec<(String, usize)>,
}

impl RouteTable {
    /// The pool for a hello's name and offered ALPN: the exact name, else the longest
    /// wildcard that covers it; a pool whose `alpn` the client does not offer is passed
    /// over for the next. `None`: the default pool.
    pub fn choose(&self, sni: Option<&str>, alpn: &[Vec<u8>]) -> Option<&Arc<Pool>> {
        let name = sni?;
        let exact = self.exact.get(name).copied();
        let wild = self
            .wildcards
            .iter()
            .filter(|(suffix, _)| name.len() > suffix.len() && name.ends_with(suffix.as_str()))
            .map(|(_, i)| *i);
        exact
            .into_iter()
            .chain(wild)
            .filter_map(|i| self.pools.get(i))
            .find(|pool| pool.accepts(alpn))
    }

    /// Builds the table of `listener`'s routes; pools of `previous` whose route keeps its
    /// name are reconfigured in place.
    fn build(listener: &Listener, routing: &TlsRouting, previous: &RouteTable) -> RouteTable {
        let mut table = RouteTable::default();
        for route in &routing.routes {
            let pool_listener = pool_listener(listener, route);
            let kept = previous.pools.iter().find(|p| p.name == route.name);
            let pool = match kept {
                Some(pool) => {
                    pool.scheduler.reconfigure_from(&pool_listener);
                    let alpn = alpn_bytes(route);
                    if alpn == pool.alpn {
                        Arc::clone(pool)
                    } else {
                        // The counter carries over to the pool with the new ALPN list.
                        Arc::new(Pool {
                            name: route.name.clone(),
                            alpn,
                            scheduler: Arc::clone(&pool.scheduler),
                            routed: AtomicU64::new(pool.routed.load(Ordering::Relaxed)),
                        })
                    }
                }
                None => Arc::new(Pool {
                    name: route.name.clone(),
                    alpn: alpn_bytes(route),
                    scheduler: Arc::new(Scheduler::for_listener(&pool_listener)),
                    routed: AtomicU64::new(0),
                }),
            };
            let index = table.pools.len();
            for name in &route.sni {
                match name {
                    ServerName::Exact(host) => {
                        table.exact.insert(host.clone(), index);
                    }
                    ServerName::Wildcard(suffix) => table.wildcards.push((suffix.clone(), index)),
                }
            }
            table.pools.push(pool);
        }
        table
            .wildcards
            .sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
        table
    }
}

fn alpn_bytes(route: &Route) -> Vec<Vec<u8>> {
    route.alpn.iter().map(|p| p.as_bytes().to_vec()).collect()
}

/// A route's pool as a listener of its own: the listener's settings (steering, health
/// check) with the route's algorithm and backends, and no routes.
pub fn pool_listener(listener: &Listener, route: &Route) -> Listener {
    let mut pool = listener.clone();
    pool.algorithm = route.algorithm;
    pool.backends = route.backends.clone();
    if let Transport::Tcp(tcp) = &mut pool.transport {
        tcp.tls_routing = None;
    }
    pool
}

/// Why a connection on a listener with routes was not routed by its server name: the
/// `reason` label of `ringlb_sni_fallback_total` and `ringlb_sni_rejected_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unrouted {
    /// The first bytes are not a TLS handshake record.
    NotTls,
    /// A TLS record, but not a well-formed ClientHello.
    Malformed,
    /// A ClientHello over 16 KiB.
    TooLarge,
    /// No complete ClientHello within `tls_inspect_timeout`.
    Timeout,
    /// The highest version offered is below `min_tls_version` (always closed).
    TlsVersion,
    /// The client closed or reset before its ClientHello was complete (always closed).
    ClientClosed,
}

impl Unrouted {
    pub const ALL: [Unrouted; 6] = [
        Unrouted::NotTls,
        Unrouted::Malformed,
        Unrouted::TooLarge,
        Unrouted::Timeout,
        Unrouted::TlsVersion,
        Unrouted::ClientClosed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Unrouted::NotTls => "not_tls",
            Unrouted::Malformed => "malformed",
            Unrouted::TooLarge => "too_large",
            Unrouted::Timeout => "timeout",
            Unrouted::TlsVersion => "tls_version",
            Unrouted::ClientClosed => "client_closed",
        }
    }

    /// Whether `on_non_tls: default` sends such a connection to the default pool.
    pub fn may_fall_back(self) -> bool {
        !matches!(self, Unrouted::TlsVersion | Unrouted::ClientClosed)
    }
}

/// What a listener with routes learnt of a connection: the access log's `route=`, `sni=`
/// and `tls=` fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSeen {
    /// The pool it went to (`default` for the listener's own backends).
    pub route: Arc<str>,
    /// The ClientHello's server name; `None` without one, or when it was no hello.
    pub sni: Option<String>,
    /// The highest version the hello offered; `None` when it was no hello.
    pub version: Option<TlsVersion>,
}

impl fmt::Display for TlsSeen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "route={} sni={} tls=",
            self.route,
            self.sni.as_deref().unwrap_or("-")
        )?;
        match self.version {
            Some(v) => write!(f, "{v}"),
            None => f.write_str("-"),
        }
    }
}

/// A listener's routes and the counters of what inspection decided. Every listener has
/// one; a listener without routes has an empty table and never counts.
#[derive(Debug, Default)]
pub struct Routes {
    table: ArcSwap<RouteTable>,
    /// Connections routed to the default pool, by name or by fallback.
    pub default_routed: AtomicU64,
    /// Index: the reason's position in [`Unrouted::ALL`].
    fallback: [AtomicU64; Unrouted::ALL.len()],
    rejected: [AtomicU64; Unrouted::ALL.len()],
}

impl Routes {
    pub fn new(listener: &Listener) -> Routes {
        let routes = Routes::default();
        routes.reconfigure(listener);
        routes
    }

    /// Reload: the listener's new routes apply to connections accepted from now on.
    pub fn reconfigure(&self, listener: &Listener) {
        let routing = listener.tcp().and_then(|tcp| tcp.tls_routing.as_deref());
        let table = match routing {
            Some(routing) => RouteTable::build(listener, routing, &self.table.load()),
            None => RouteTable::default(),
        };
        self.table.store(Arc::new(table));
    }

    pub fn table(&self) -> Arc<RouteTable> {
        self.table.load_full()
    }

    /// Connections sent to the default pool because of `reason`.
    pub fn fallback(&self, reason: Unrouted) -> &AtomicU64 {
        &self.fallback[reason as usize]
    }

    /// Connections closed because of `reason`.
    pub fn rejected(&self, reason: Unrouted) -> &AtomicU64 {
        &self.rejected[reason as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listener(routes: &str) -> Listener {
        let yaml = format!(
            "listeners:\n  - name: l\n    bind: 127.0.0.1:7000\n    backends: [{{addr: 10.0.0.1:443}}]\n    routes:\n{routes}"
        );
        ringlb_config::parse(&yaml)
            .unwrap_or_else(|e| panic!("{e}"))
            .listeners
            .remove(0)
    }

    const ROUTES: &str = "      - {name: exact, sni: [a.b.example], backends: [{addr: 10.0.1.1:443}]}\n\
                          \x20     - {name: short, sni: [\"*.example\"], backends: [{addr: 10.0.2.1:443}]}\n\
                          \x20     - {name: long, sni: [\"*.b.example\"], backends: [{addr: 10.0.3.1:443}]}\n\
                          \x20     - {name: h2, sni: [\"*.h2.example\"], alpn: [h2], backends: [{addr: 10.0.4.1:443}]}\n";

    fn chosen(table: &RouteTable, sni: Option<&str>, alpn: &[&str]) -> &'static str {
        let alpn: Vec<Vec<u8>> = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        match table.choose(sni, &alpn).map(|p| p.name.as_str()) {
            Some("exact") => "exact",
            Some("short") => "short",
            Some("long") => "long",
            Some("h2") => "h2",
            Some(other) => panic!("{other}"),
            None => DEFAULT_POOL,
        }
    }

    #[test]
    fn exact_then_longest_wildcard_then_default() {
        let routes = Routes::new(&listener(ROUTES));
        let t = routes.table();
        assert_eq!(chosen(&t, Some("a.b.example"), &[]), "exact");
        assert_eq!(chosen(&t, Some("x.b.example"), &[]), "long");
        assert_eq!(chosen(&t, Some("x.y.b.example"), &[]), "long");
        assert_eq!(chosen(&t, Some("b.example"), &[]), "short");
        assert_eq!(chosen(&t, Some("example"), &[]), DEFAULT_POOL);
        assert_eq!(chosen(&t, Some("other.test"), &[]), DEFAULT_POOL);
        assert_eq!(chosen(&t, None, &[]), DEFAULT_POOL);
    }

    #[test]
    fn alpn_passes_a_route_over_for_the_next() {
        let routes = Routes::new(&listener(ROUTES));
        let t = routes.table();
        assert_eq!(chosen(&t, Some("x.h2.example"), &["http/1.1", "h2"]), "h2");
        assert_eq!(chosen(&t, Some("x.h2.example"), &["http/1.1"]), "short");
        assert_eq!(chosen(&t, Some("x.h2.example"), &[]), "short");
    }

    #[test]
    fn a_reload_keeps_the_scheduler_of_a_route_that_keeps_its_name() {
        let routes = Routes::new(&listener(ROUTES));
        let before = routes.table();
        before.pools[1].routed.fetch_add(3, Ordering::Relaxed);
        routes.reconfigure(&listener(
            "      - {name: short, sni: [\"*.example\"], alpn: [h2], backends: [{addr: 10.0.2.9:443}]}\n",
        ));
        let after = routes.table();
        assert_eq!(after.pools.len(), 1);
        assert!(Arc::ptr_eq(
            &after.pools[0].scheduler,
            &before.pools[1].scheduler
        ));
        assert_eq!(after.pools[0].routed.load(Ordering::Relaxed), 3);
        let labels: Vec<String> = after.pools[0]
            .scheduler
            .snapshot()
            .backends()
            .iter()
            .map(|b| b.spec.label.clone())
            .collect();
        assert_eq!(labels, ["10.0.2.9:443"]);
        let mut without = listener(ROUTES);
        if let Transport::Tcp(tcp) = &mut without.transport {
            tcp.tls_routing = None;
        }
        routes.reconfigure(&without);
        assert!(routes.table().pools.is_empty());
    }

    #[test]
    fn the_access_log_fields() {
        let seen = TlsSeen {
            route: "pay".into(),
            sni: Some("pay.bank-a.example".into()),
            version: Some(TlsVersion::TLS_1_3),
        };
        assert_eq!(seen.to_string(), "route=pay sni=pay.bank-a.example tls=1.3");
        let plain = TlsSeen {
            route: DEFAULT_POOL.into(),
            sni: None,
            version: None,
        };
        assert_eq!(plain.to_string(), "route=default sni=- tls=-");
    }
}
