//! ringlb-dataplane: the per-core data plane.
//!
//! Owns: worker threads (one per core, pinned, each with its own tokio-uring ring), their
//! SO_REUSEPORT listener sockets, the TCP connection path (accept → allow → per-source → limit → pick →
//! connect with retries → relay by copy or splice) and UDP sessions, plus the counters the
//! admin endpoint reads. Must not: take locks or use cross-thread channels per connection,
//! depend on the prober (health arrives only through the scheduler's atomics), block a worker.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

mod buffers;
mod ctx;
mod ending;
pub mod fdbudget;
mod handover;
mod listener;
mod memory;
mod outcome;
mod per_source;
mod pipes;
mod proxy_protocol;
mod ratelog;
mod records;
mod relay;
pub mod routes;
pub mod stats;
pub mod sys;
mod tcp;
mod udp;
mod uring;
pub mod worker;
mod worker_listener;

pub use handover::{monotonic_now, Frozen, Moved, MovedConn, MovedSession};
pub use listener::ListenerState;
pub use outcome::{DenyReason, EndCause, EndMode, EndOrder, EndReason};
