//! The validated, typed configuration. Every default is resolved here: no `Option`
//! is left that the data plane would have to interpret.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;

/// A whole ringlb configuration file after validation.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub workers: Workers,
    /// Admin HTTP endpoint (`/metrics`, `/status`); `None` turns it off.
    pub admin: Option<SocketAddr>,
    /// SIGTERM/SIGINT: how long established connections may drain before they are cut.
    pub shutdown_timeout: Duration,
    /// SIGTERM/SIGINT: how long `/ready` answers 503 while the listeners still accept, so
    /// that routers following it (a BGP announcement) stop sending new flows first.
    pub withdraw_delay: Duration,
    /// Default log level; `RUST_LOG` overrides it.
    pub log_level: log::LevelFilter,
    /// One info line per finished TCP connection / expired UDP session.
    pub access_log: bool,
    /// How log lines are written (`log_format`).
    pub log_format: LogFormat,
    /// The control socket (`ringlb ctl`); `None`: a path derived from the config file's
    /// own path (docs/control-protocol.md).
    pub control: Option<PathBuf>,
    /// Where the operator's admin state (drain, maintenance, weights, node fail) is kept
    /// across restarts; `None`: it lasts as long as the process.
    pub state_file: Option<PathBuf>,
    /// Append-only, hash-chained record of configuration loads, control commands,
    /// upgrades and health transitions; `None`: not kept.
    pub audit_log: Option<PathBuf>,
    /// Connection records beyond the end line (`connection_records`, `syslog`).
    pub records: RecordsOutput,
    pub listeners: Vec<Listener>,
}

/// `connection_records` and `syslog`: which connection records the access log carries
/// and where log lines go besides stderr (docs/configuration.md, "Connection records").
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RecordsOutput {
    /// Also copied into every listener's [`Records::level`].
    pub level: RecordLevel,
    /// `None`: no syslog output.
    pub syslog: Option<Syslog>,
}

/// `connection_records`: which records a TCP connection leaves in the access log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub enum RecordLevel {
    /// One line when it ends, exactly as before connection records existed.
    #[default]
    End,
    /// An `established` record, `progress` records every `connection_report_interval`
    /// and an `end` record, all carrying one connection id (also sent in the PROXY v2
    /// header).
    All,
}

impl RecordLevel {
    pub const ALL: [RecordLevel; 2] = [RecordLevel::End, RecordLevel::All];

    pub fn as_str(self) -> &'static str {
        match self {
            RecordLevel::End => "end",
            RecordLevel::All => "all",
        }
    }
}

/// A listener's connection records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Records {
    /// The file's top-level `connection_records`.
    pub level: RecordLevel,
    /// `connection_report_interval`: a `progress` record this often while a connection
    /// lives; `None`: none (the default). Only with `connection_records: all`.
    pub report_interval: Option<Duration>,
}

/// `syslog:`: every log line also goes to a syslog receiver, RFC 5424.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Syslog {
    pub address: SyslogAddress,
    /// 0..=23 (`local0` is 16).
    pub facility: u8,
    /// APP-NAME of every message: printable ASCII, at most 48 characters.
    pub app_name: String,
    /// HOSTNAME of every message; `None`: the host's name, read at start.
    pub hostname: Option<String>,
    /// Messages held for a receiver that does not keep up; beyond, they are dropped and
    /// counted (`ringlb_syslog_dropped_total`).
    pub queue_size: u32,
}

/// Where syslog messages go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyslogAddress {
    /// One message per datagram.
    Udp(SocketAddr),
    /// Octet-counted frames (RFC 6587) on one stream, reconnected when it breaks.
    Tcp(SocketAddr),
    /// A local datagram socket such as `/dev/log`.
    Unix(PathBuf),
}

/// `log_format`: how every log line is written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// `[TIMESTAMP LEVEL target] message`.
    #[default]
    Text,
    /// One JSON object per line: ts, level, target, msg and the line's fields.
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workers {
    /// One worker per CPU the process may run on.
    Auto,
    Count(usize),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    RoundRobin,
    WeightedRoundRobin,
    Random,
    LeastConnections,
    SourceHash,
    Maglev,
    PowerOfTwo,
    DynamicWeight,
    LeastLatency,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProxyProtocol {
    None,
    V1,
    V2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Forwarding {
    /// recv/send through worker-owned buffers.
    Copy,
    /// socket → pipe → socket with io_uring SPLICE, gated on readiness.
    Splice,
    /// Start in copy; switch a direction to splice once it carries bulk data.
    Auto,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Listener {
    pub name: String,
    pub bind: SocketAddr,
    pub algorithm: Algorithm,
    /// Concurrent TCP connections across all workers; beyond it clients are closed at once.
    /// Accepted on a UDP listener (and shown in `/status`) but not enforced there:
    /// `max_sessions` bounds a UDP listener.
    pub max_connections: u32,
    /// Source allow-list; empty means every client is allowed.
    pub allow: Vec<IpNet>,
    /// Never `V1` on a UDP listener (validation rejects it).
    pub proxy_protocol: ProxyProtocol,
    /// `None`: backends are always considered up (passive failures still trigger retries).
    pub health_check: Option<HealthCheck>,
    pub backends: Vec<Backend>,
    /// The protocol, with the settings only that protocol uses.
    pub transport: Transport,
    /// Which backends new connections go to while health changes: tiers, failback, slow start.
    pub steering: Steering,
    /// TCP: what happens to open connections when their backend goes down and when they
    /// grow old. A UDP listener has the defaults (validation rejects the keys there).
    pub lifecycle: Lifecycle,
    /// Which connection records it writes.
    pub records: Records,
}

/// How new connections follow backends that go down and come back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Steering {
    /// A backend that turns up (or is set ready) ramps from a small share to its full
    /// weight over this window. Never set for `source_hash` or `maglev` (validation).
    pub slow_start: Option<Duration>,
    /// When traffic that moved to a later priority tier comes back.
    pub failback: Failback,
    /// Tiers are added in priority order until at least this many backends are up.
    pub min_active: u32,
}

impl Default for Steering {
    fn default() -> Self {
        Steering {
            slow_start: None,
            failback: Failback::Immediate,
            min_active: 1,
        }
    }
}

/// `failback`: when new connections return to a preferred tier once it is up again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Failback {
    /// As soon as the tier is up.
    Immediate,
    /// Only on `ringlb ctl failback LISTENER`.
    Manual,
    /// Once the tier has stayed up for the whole window.
    After(Duration),
}

/// What happens to a TCP listener's open connections when the prober marks their backend
/// down (`on_down`; a backend's own `on_down` overrides the listener's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OnDown {
    /// Leave them open: they end on their own, by `idle_timeout` or at shutdown.
    Keep,
    /// Close them: each side gets what was in flight, then a FIN.
    Close,
    /// Reset them: both sides get an RST at once.
    Reset,
}

/// A TCP listener's connection lifecycle (docs/configuration.md, "on_down").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lifecycle {
    /// The listener's `on_down`; what applies to each backend, resolved, is
    /// [`Backend::on_down`].
    pub on_down: OnDown,
    /// Connections ended by `on_down` end each after its own random delay in
    /// `[0, on_down_spread)`, so their clients do not all reconnect at once.
    pub on_down_spread: Duration,
    /// When traffic returns to preferred tiers, whether the connections left on the tiers
    /// no longer in use are shed (closed, spread over `on_down_spread`).
    pub on_recover: OnRecover,
    /// Connections older than this (plus a random 0–10 %) are closed once quiet; `None`:
    /// connections live as long as their ends want.
    pub max_connection_duration: Option<Duration>,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Lifecycle {
            on_down: OnDown::Keep,
            on_down_spread: crate::validate::DEFAULT_ON_DOWN_SPREAD,
            on_recover: OnRecover::Keep,
            max_connection_duration: None,
        }
    }
}

/// A listener's protocol and the settings that belong to it alone, so that a TCP
/// listener cannot carry (or be asked for) a session timeout and vice versa.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    Tcp(TcpSettings),
    Udp(UdpSettings),
}

/// Settings only a TCP listener has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpSettings {
    /// Per backend connect attempt.
    pub connect_timeout: Duration,
    /// Distinct backends tried before the client is closed (≥ 1).
    pub connect_attempts: u32,
    /// No bytes either way for this long closes both legs.
    pub idle_timeout: Duration,
    pub forwarding: Forwarding,
    /// Local addresses backend connects are made from, in turn (`source:`); empty: the
    /// kernel chooses. Each address has its own ~28,000 ports per backend, so listing
    /// several widens the connections a busy backend can take. Validation guarantees an
    /// address of each backend's family when not empty.
    pub source: Vec<IpAddr>,
    /// Dead-peer detection on both legs (`tcp_keepalive`, `tcp_user_timeout`); off by default.
    pub liveness: Liveness,
    /// `per_source:`; `None`: no per-source limit.
    pub per_source: Option<PerSource>,
    /// `stickiness:`; `None`: every connection is balanced afresh.
    pub stickiness: Option<Stickiness>,
    /// `routes:` and the keys that go with them; `None`: the first bytes are not read
    /// and every connection goes to the listener's backends.
    pub tls_routing: Option<Box<TlsRouting>>,
}

/// TLS passthrough routed by the ClientHello (docs/configuration.md, "routes"): the
/// listener reads the client's first bytes, picks a pool by the server name (and ALPN),
/// and forwards those bytes untouched; TLS is never terminated. The listener's own
/// `backends` are the default pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsRouting {
    /// In file order; validation guarantees no name appears in two routes.
    pub routes: Vec<Route>,
    /// How long the client may take to send its whole ClientHello.
    pub inspect_timeout: Duration,
    /// Hellos offering nothing newer are closed; `None`: any version passes.
    pub min_version: Option<TlsVersion>,
    /// What happens to input that is not a ClientHello (not TLS, malformed, larger than
    /// 16 KiB, or not complete within `inspect_timeout`).
    pub on_non_tls: OnNonTls,
}

/// One `routes[]` entry: the names it serves and its own pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The `route` label in metrics and logs: `name`, else the first `sni` entry.
    pub name: String,
    pub sni: Vec<ServerName>,
    /// Offered ALPN protocols of which one must be in this list; empty: any (or none).
    pub alpn: Vec<String>,
    pub algorithm: Algorithm,
    pub backends: Vec<Backend>,
}

/// A `routes[].sni` entry, lowercased.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ServerName {
    /// `pay.bank-a.example`: this name only.
    Exact(String),
    /// `*.bank-b.example`, kept as the suffix `.bank-b.example`: every name that ends with
    /// it (one label or more in front); the longest suffix wins.
    Wildcard(String),
}

impl ServerName {
    /// As written in the file (lowercased).
    pub fn shown(&self) -> String {
        match self {
            ServerName::Exact(name) => name.clone(),
            ServerName::Wildcard(suffix) => format!("*{suffix}"),
        }
    }
}

/// `min_tls_version`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TlsVersion {
    Tls10,
    Tls11,
    Tls12,
    Tls13,
}

impl TlsVersion {
    pub const ALL: [TlsVersion; 4] = [
        TlsVersion::Tls10,
        TlsVersion::Tls11,
        TlsVersion::Tls12,
        TlsVersion::Tls13,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TlsVersion::Tls10 => "1.0",
            TlsVersion::Tls11 => "1.1",
            TlsVersion::Tls12 => "1.2",
            TlsVersion::Tls13 => "1.3",
        }
    }

    /// The version as TLS writes it on the wire (`0x0303` is 1.2).
    pub fn wire(self) -> u16 {
        match self {
            TlsVersion::Tls10 => 0x0301,
            TlsVersion::Tls11 => 0x0302,
            TlsVersion::Tls12 => 0x0303,
            TlsVersion::Tls13 => 0x0304,
        }
    }
}

/// `on_non_tls`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OnNonTls {
    /// Forward what was read to the default pool (a plain protocol shares the port).
    Default,
    /// Close the client.
    Close,
}

impl OnNonTls {
    pub const ALL: [OnNonTls; 2] = [OnNonTls::Default, OnNonTls::Close];

    pub fn as_str(self) -> &'static str {
        match self {
            OnNonTls::Default => "default",
            OnNonTls::Close => "close",
        }
    }
}

/// How the kernel finds a peer that is gone without a FIN or RST (a crashed host, a flow
/// a stateful firewall forgot): set on the client's and the backend's socket of every new
/// connection. `Default` is both off, the kernel's own behaviour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Liveness {
    /// `tcp_keepalive`: probe a connection that has been silent.
    pub keepalive: Option<Keepalive>,
    /// `tcp_user_timeout` (TCP_USER_TIMEOUT): how long sent data may stay unacknowledged
    /// before the connection is dropped. Whole milliseconds, at most `u32::MAX` of them.
    pub user_timeout: Option<Duration>,
    /// `response_timeout`: a backend silent this long after a client's bytes reached it
    /// counts one failure toward the health check's `fall` (the connection stays).
    /// Validation requires a `health_check`.
    pub response_timeout: Option<Duration>,
}

/// SO_KEEPALIVE with its three parameters. A silent peer is given up after
/// `idle + interval × count` (unless `tcp_user_timeout` is set: it then decides).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keepalive {
    /// Silence before the first probe (TCP_KEEPIDLE): whole seconds, 1..=32767.
    pub idle: Duration,
    /// Between unanswered probes (TCP_KEEPINTVL): whole seconds, 1..=32767.
    pub interval: Duration,
    /// Unanswered probes before the connection is dropped (TCP_KEEPCNT): 1..=127.
    pub count: u32,
}

/// Limits per client source on a TCP listener, so that one client cannot take every
/// connection slot. A source is a client's IPv4 address, or its IPv6 /64 (an IPv4-mapped
/// IPv6 address is the IPv4 address). Validation guarantees at least one of
/// `max_connections` and `rate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PerSource {
    /// Live connections per source across all workers; `None`: not limited.
    pub max_connections: Option<u32>,
    /// New connections per source; `None`: not limited.
    pub rate: Option<SourceRate>,
    /// Bound on the sources tracked at once across all workers (the table's memory).
    pub max_sources: u32,
}

/// A token bucket: `burst` new connections at once, refilled at `per_second`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceRate {
    pub per_second: u32,
    pub burst: u32,
}

/// Learned stickiness on a TCP listener: a client's key is remembered with the backend it
/// last used, and a returning client goes back to it while that backend can take it, even
/// when the backend set changed (docs/configuration.md, "stickiness").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stickiness {
    /// What identifies a returning client.
    pub key: StickinessKey,
    /// Entries the listener's table holds at most (its memory is fixed at this size).
    pub table_size: u32,
    /// An entry not used for this long is forgotten. Whole seconds.
    pub expire: Duration,
    /// Every client of the listener goes to one backend at a time (active/standby).
    pub single_active: bool,
}

/// `stickiness.key`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StickinessKey {
    /// The client's IP address (an IPv4-mapped IPv6 address is its IPv4 address).
    SourceIp,
    /// The client's IP address and its source port divided by `port_range`: engines that
    /// connect from fixed source-port ranges each keep their own backend.
    SourceIpPortRange { port_range: u32 },
}

impl StickinessKey {
    /// The YAML spelling of the key kind.
    pub fn as_str(self) -> &'static str {
        match self {
            StickinessKey::SourceIp => "source_ip",
            StickinessKey::SourceIpPortRange { .. } => "source_ip_port_range",
        }
    }
}

/// Settings only a UDP listener has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpSettings {
    /// A client's session is dropped after this long without a datagram either way.
    pub session_timeout: Duration,
    /// Bound on the session table, across all workers.
    pub max_sessions: u32,
}

impl Listener {
    pub fn protocol(&self) -> Protocol {
        self.transport.protocol()
    }

    /// `None` on a UDP listener.
    pub fn tcp(&self) -> Option<&TcpSettings> {
        match &self.transport {
            Transport::Tcp(tcp) => Some(tcp),
            Transport::Udp(_) => None,
        }
    }

    /// `None` on a TCP listener.
    pub fn udp(&self) -> Option<&UdpSettings> {
        match &self.transport {
            Transport::Udp(udp) => Some(udp),
            Transport::Tcp(_) => None,
        }
    }
}

impl Transport {
    pub fn protocol(&self) -> Protocol {
        match self {
            Transport::Tcp(_) => Protocol::Tcp,
            Transport::Udp(_) => Protocol::Udp,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive successes that mark a down backend up (≥ 1).
    pub rise: u32,
    /// Consecutive failures that mark an up backend down (≥ 1).
    pub fall: u32,
    /// TCP port to connect to; `None` means the backend's own port.
    pub port: Option<u16>,
    /// Bytes written once connected (escapes already decoded); `None`: nothing is sent.
    pub send: Option<Vec<u8>>,
    /// The reply must start with these bytes. `None` with `send`: any reply of at least
    /// one byte passes. Both `None`: a TCP-connect check.
    pub expect: Option<Vec<u8>>,
}

impl HealthCheck {
    /// A check that exchanges bytes after connecting (`send` and/or `expect` set).
    pub fn exchanges(&self) -> bool {
        self.send.is_some() || self.expect.is_some()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Backend {
    pub addr: SocketAddr,
    /// `addr` exactly as written in the file: the `backend` label in metrics and logs.
    pub label: String,
    /// 0..=65535; default 1. 0 means drained: no new connections, health checks go on.
    pub weight: u32,
    /// 0 = unlimited; also the capacity C_i of `dynamic_weight`.
    pub max_connections: u32,
    /// Tier: 0 is the first choice; higher tiers serve while the lower ones do not have
    /// `min_active` backends up. `backup: true` in the file is priority 1.
    pub priority: u8,
    /// Resolved: the backend's own `on_down`, else its listener's (always `Keep` on UDP).
    pub on_down: OnDown,
}

impl Backend {
    /// Not in the first tier.
    pub fn is_backup(&self) -> bool {
        self.priority > 0
    }
}

impl Algorithm {
    pub const ALL: [Algorithm; 9] = [
        Algorithm::RoundRobin,
        Algorithm::WeightedRoundRobin,
        Algorithm::Random,
        Algorithm::LeastConnections,
        Algorithm::SourceHash,
        Algorithm::Maglev,
        Algorithm::PowerOfTwo,
        Algorithm::DynamicWeight,
        Algorithm::LeastLatency,
    ];

    /// The YAML spelling, for logs and `/status`.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::RoundRobin => "round_robin",
            Algorithm::WeightedRoundRobin => "weighted_round_robin",
            Algorithm::Random => "random",
            Algorithm::LeastConnections => "least_connections",
            Algorithm::SourceHash => "source_hash",
            Algorithm::Maglev => "maglev",
            Algorithm::PowerOfTwo => "power_of_two",
            Algorithm::DynamicWeight => "dynamic_weight",
            Algorithm::LeastLatency => "least_latency",
        }
    }
}

/// `on_recover`: what happens to connections on later tiers (backups) when new connections
/// go back to the preferred ones (per `failback`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OnRecover {
    /// They stay where they are.
    Keep,
    /// They are closed gracefully, spread, so their clients reconnect to the preferred
    /// tiers.
    ShedBackup,
}

impl OnRecover {
    pub const ALL: [OnRecover; 2] = [OnRecover::Keep, OnRecover::ShedBackup];

    pub fn as_str(self) -> &'static str {
        match self {
            OnRecover::Keep => "keep",
            OnRecover::ShedBackup => "shed_backup",
        }
    }
}

impl OnDown {
    pub const ALL: [OnDown; 3] = [OnDown::Keep, OnDown::Close, OnDown::Reset];

    pub fn as_str(self) -> &'static str {
        match self {
            OnDown::Keep => "keep",
            OnDown::Close => "close",
            OnDown::Reset => "reset",
        }
    }
}

impl Protocol {
    pub const ALL: [Protocol; 2] = [Protocol::Tcp, Protocol::Udp];

    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

impl Forwarding {
    pub const ALL: [Forwarding; 3] = [Forwarding::Copy, Forwarding::Splice, Forwarding::Auto];

    pub fn as_str(self) -> &'static str {
        match self {
            Forwarding::Copy => "copy",
            Forwarding::Splice => "splice",
            Forwarding::Auto => "auto",
        }
    }
}

impl ProxyProtocol {
    pub const ALL: [ProxyProtocol; 3] = [ProxyProtocol::None, ProxyProtocol::V1, ProxyProtocol::V2];

    pub fn as_str(self) -> &'static str {
        match self {
            ProxyProtocol::None => "none",
            ProxyProtocol::V1 => "v1",
            ProxyProtocol::V2 => "v2",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listener(transport: Transport) -> Listener {
        Listener {
            name: "l".to_owned(),
            bind: "127.0.0.1:7000".parse().unwrap(),
            algorithm: Algorithm::RoundRobin,
            max_connections: 1,
            allow: Vec::new(),
            proxy_protocol: ProxyProtocol::None,
            health_check: None,
            backends: Vec::new(),
            transport,
            steering: Steering::default(),
            lifecycle: Lifecycle::default(),
            records: Records::default(),
        }
    }

    const TCP: TcpSettings = TcpSettings {
        connect_timeout: Duration::from_secs(1),
        connect_attempts: 2,
        idle_timeout: Duration::from_secs(3),
        forwarding: Forwarding::Copy,
        source: Vec::new(),
        liveness: Liveness {
            keepalive: None,
            user_timeout: None,
            response_timeout: None,
        },
        per_source: None,
        stickiness: None,
        tls_routing: None,
    };
    const UDP: UdpSettings = UdpSettings {
        session_timeout: Duration::from_secs(4),
        max_sessions: 5,
    };

    #[test]
    fn each_listener_has_only_its_protocols_settings() {
        let tcp = listener(Transport::Tcp(TCP.clone()));
        assert_eq!(
            (tcp.protocol(), tcp.tcp(), tcp.udp()),
            (Protocol::Tcp, Some(&TCP), None)
        );
        let udp = listener(Transport::Udp(UDP));
        assert_eq!(
            (udp.protocol(), udp.tcp(), udp.udp()),
            (Protocol::Udp, None, Some(&UDP))
        );
    }

    #[test]
    fn transport_names_its_protocol() {
        assert_eq!(Transport::Tcp(TCP).protocol().as_str(), "tcp");
        assert_eq!(Transport::Udp(UDP).protocol().as_str(), "udp");
    }
}
