//! ringlb-bench: the project's load-test tool — benchmark backends (echo, respond, sink,
//! source) and load generators (rr, connect, bulk, udp-rr, idle) with hdrhistogram latency,
//! reported as a table or as JSON for scripts.
//!
//! It must only ever send traffic to the address it is given, and every run is bounded by
//! duration (and optionally a request count). It knows nothing of ringlb's internals: it
//! measures any TCP/UDP proxy, or none, the same way.
//!
//! Event loop: tokio's current-thread runtime, one per load thread (default one thread),
//! one task per connection. It issues the same epoll/read/write syscalls a hand-written mio
//! loop would, while keeping each mode a short straight-line closed loop; 10,000 idle
//! connections cost a task each, not a thread.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod backend;
pub mod cli;
pub mod load;
pub mod report;

use std::io;
use std::net::SocketAddr;

/// What can stop the tool from running a backend or a load.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("invalid arguments: {0}")]
    Args(String),
    #[error("cannot bind {proto} {addr}: {source}")]
    Bind {
        proto: &'static str,
        addr: SocketAddr,
        source: io::Error,
    },
    #[error("cannot start the runtime for {what}: {source}")]
    Runtime { what: String, source: io::Error },
    #[error("load thread {0} panicked")]
    ThreadPanicked(usize),
    #[error("histogram: {0}")]
    Histogram(String),
    #[error("cannot encode the JSON report: {0}")]
    Json(String),
}
