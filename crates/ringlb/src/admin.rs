//! The admin HTTP endpoint: `GET /metrics` (Prometheus text format 0.0.4) and `GET /status`
//! (JSON), served from the [`Registry`] on threads of its own.
//!
//! Owns: the admin listening socket, its accept thread and one short-lived thread per
//! admin connection (at most [`server::MAX_CONNECTIONS`] at once), and the rendering of
//! the registry's counters. Must not: run on or block a worker's ring, take any lock the
//! data plane takes, or write to the registry — it only reads (sums per-worker counters
//! and merges latency histograms at scrape time). There is no authentication: bind it to
//! loopback (docs/metrics.md).

mod metrics;
mod server;
mod status;

use std::net::SocketAddr;
use std::sync::Arc;

use thiserror::Error;

use crate::registry::Registry;

pub use server::AdminServer;

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
pub fn spawn(addr: SocketAddr, registry: Arc<Registry>) -> Result<AdminServer, AdminError> {
    let server = AdminServer::spawn(addr, registry)?;
    log::info!("admin listening on http://{}", server.local_addr());
    Ok(server)
}
