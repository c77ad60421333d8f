//! The admin HTTP endpoint: `GET /metrics` (Prometheus text format 0.0.4), `GET /status`
//! (JSON) and `GET /ready` (200 or 503 with the reason), served from the [`Registry`] on
//! a thread of its own.
//!
//! Owns: the admin listening socket, its thread (one poll(2) loop over non-blocking
//! connections, at most [`server::MAX_CONNECTIONS`] held at once), and the rendering of
//! the registry's counters. Must not: run on or block a worker's ring, take any lock the
//! data plane takes, or write to the registry — it only reads (sums per-worker counters
//! and merges latency histograms at scrape time). There is no authentication: bind it to
//! loopback (docs/metrics.md).

mod metrics;
mod process;
mod server;
mod status;

use std::net::SocketAddr;
use std::sync::Arc;

use thiserror::Error;

use crate::registry::Registry;

pub use server::AdminServer;
pub use status::listeners as status_listeners;

#[derive(Debug, Error)]
pub enum AdminError {
    #[error("admin endpoint: cannot bind {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("admin endpoint: cannot start its thread: {0}")]
    Thread(std::io::Error),
}

/// Binds `addr` and serves `/metrics` and `/status` from `registry` until the returned
/// handle is stopped or dropped. Logs `admin listening on http://ADDR` with the address
/// actually bound (the config may say port 0). Bind errors come back to the caller.
pub fn spawn(
    addr: SocketAddr,
    inherited: Option<std::net::TcpListener>,
    registry: Arc<Registry>,
) -> Result<AdminServer, AdminError> {
    let server = AdminServer::spawn(addr, inherited, registry)?;
    log::info!("admin listening on http://{}", server.local_addr());
    Ok(server)
}

/// Registries built in-process for the rendering tests.
#[cfg(test)]
pub(crate) mod testing {
    use std::sync::Arc;
    use std::time::Duration;

    use ringlb_config::{
        Algorithm, Backend, Forwarding, Lifecycle, Listener, OnDown, Protocol, ProxyProtocol,
        TcpSettings, Transport, UdpSettings,
    };
    use ringlb_dataplane::ListenerState;
    use ringlb_scheduler::Scheduler;

    use crate::registry::Registry;

    /// A listener bound (nominally) to 127.0.0.1:4000 with `workers` counter slots.
    pub fn listener(
        name: &str,
        protocol: Protocol,
        backends: &[&str],
        workers: usize,
    ) -> Arc<ListenerState> {
        let settings = Listener {
            name: name.to_string(),
            bind: "127.0.0.1:0".parse().unwrap(),
            algorithm: Algorithm::RoundRobin,
            max_connections: 100,
            allow: Vec::new(),
            proxy_protocol: ProxyProtocol::None,
            health_check: None,
            backends: backends
                .iter()
                .map(|b| Backend {
                    addr: b.parse().unwrap(),
                    label: b.to_string(),
                    weight: 1,
                    max_connections: 0,
                    priority: 0,
                    on_down: OnDown::Keep,
                })
                .collect(),
            transport: match protocol {
                Protocol::Tcp => Transport::Tcp(TcpSettings {
                    connect_timeout: Duration::from_secs(1),
                    connect_attempts: 1,
                    idle_timeout: Duration::from_secs(60),
                    forwarding: Forwarding::Copy,
                    source: Vec::new(),
                    liveness: Default::default(),
                    per_source: None,
                    stickiness: None,
                    tls_routing: None,
                }),
                Protocol::Udp => Transport::Udp(UdpSettings {
                    session_timeout: Duration::from_secs(30),
                    max_sessions: 100,
                }),
            },
            steering: Default::default(),
            lifecycle: Lifecycle::default(),
            records: Default::default(),
        };
        let scheduler = Arc::new(Scheduler::for_listener(&settings));
        Arc::new(ListenerState::new(
            settings,
            "127.0.0.1:4000".parse().unwrap(),
            scheduler,
            workers,
            false,
        ))
    }

    pub fn registry_with(mut listeners: Vec<Arc<ListenerState>>) -> Registry {
        listeners.sort_by(|a, b| a.name.cmp(&b.name));
        let registry = Registry::default();
        registry.listeners.store(Arc::new(listeners));
        registry
    }
}
