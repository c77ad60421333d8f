//! The validated, typed configuration. Every default is resolved here: no `Option`
//! is left that the data plane would have to interpret.

use std::net::SocketAddr;
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
    /// Default log level; `RUST_LOG` overrides it.
    pub log_level: log::LevelFilter,
    /// One info line per finished TCP connection / expired UDP session.
    pub access_log: bool,
    pub listeners: Vec<Listener>,
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
    pub protocol: Protocol,
    pub algorithm: Algorithm,
    /// TCP: per backend connect attempt.
    pub connect_timeout: Duration,
    /// TCP: distinct backends tried before the client is closed (≥ 1).
    pub connect_attempts: u32,
    /// TCP: no bytes either way for this long closes both legs.
    pub idle_timeout: Duration,
    /// Concurrent connections (TCP) across all workers; beyond it clients are closed at once.
    pub max_connections: u32,
    /// Source allow-list; empty means every client is allowed.
    pub allow: Vec<IpNet>,
    pub proxy_protocol: ProxyProtocol,
    pub forwarding: Forwarding,
    /// UDP: a client's session is dropped after this long without a datagram either way.
    pub session_timeout: Duration,
    /// UDP: bound on the session table, across all workers.
    pub max_sessions: u32,
    /// `None`: backends are always considered up (passive failures still trigger retries).
    pub health_check: Option<HealthCheck>,
    pub backends: Vec<Backend>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthCheck {
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive successes that mark a down backend up (≥ 1).
    pub rise: u32,
    /// Consecutive failures that mark an up backend down (≥ 1).
    pub fall: u32,
    /// TCP port to connect to; `None` means the backend's own port.
    pub port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Backend {
    pub addr: SocketAddr,
    /// `addr` exactly as written in the file: the `backend` label in metrics and logs.
    pub label: String,
    /// ≥ 1; default 1.
    pub weight: u32,
    /// 0 = unlimited; also the capacity C_i of `dynamic_weight`.
    pub max_connections: u32,
    /// Serves only while no primary backend of the listener is up.
    pub backup: bool,
}

impl Algorithm {
    pub const ALL: [Algorithm; 8] = [
        Algorithm::RoundRobin,
        Algorithm::WeightedRoundRobin,
        Algorithm::Random,
        Algorithm::LeastConnections,
        Algorithm::SourceHash,
        Algorithm::Maglev,
        Algorithm::PowerOfTwo,
        Algorithm::DynamicWeight,
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
