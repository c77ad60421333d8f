//! ringlb-persource: per-source limits, so that one misbehaving client cannot take every
//! connection slot of a listener.
//!
//! Owns: whom a limit counts ([`SourceKey`]: an IPv4 address, or an IPv6 /64), the limits
//! in the table's units ([`Limits`]: live connections, and a token bucket of new
//! connections kept as GCRA, one timestamp per source), and [`SourceTable`]: one table per
//! listener shared by every worker (SO_REUSEPORT spreads one source's connections over all
//! of them), bounded by `max_sources`, sharded with one short-held lock per shard.
//!
//! Pure: no sockets, no threads, no clock read per connection: time is a parameter
//! (the data plane passes the accept time it has already read), so every rule is tested
//! with time moved by hand and no sleep. Must not: hold a lock for
//! more than one hash lookup or one shard's sweep, allocate on the hit path, or track more
//! than `max_sources` sources. docs/architecture.md ("Per-source limits") tells how the
//! data plane uses it.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

mod key;
mod limits;
mod table;

pub use key::SourceKey;
pub use limits::{Limits, Over};
pub use table::{SourceSlot, SourceTable, Verdict};
