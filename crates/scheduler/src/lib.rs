//! ringlb-scheduler: which backend a new TCP connection or UDP session goes to.
//!
//! Owns: immutable backend-set snapshots published by an atomic pointer swap, per-backend
//! live state in atomics ([`BackendState`]), and every balancing algorithm of the contract.
//! Must not: open sockets, read clocks, use a global RNG, take locks on the pick path.
//! Time and randomness come in as arguments.
//!
//! PUBLIC API (other crates code against exactly this; extend, don't break):
//! ```ignore
//! pub struct BackendSpec { pub addr: SocketAddr, pub label: String, pub weight: u32,
//!                          pub max_connections: u32, pub backup: bool }
//! impl From<&ringlb_config::Backend> for BackendSpec
//! pub struct Backend { pub spec: BackendSpec, pub state: Arc<BackendState> }
//! pub struct Scheduler;                         // one per listener, Send + Sync
//! impl Scheduler {
//!     pub fn new(algorithm: Algorithm, specs: Vec<BackendSpec>) -> Scheduler;
//!     /// Reload: new snapshot; states of backends with the same `label` carry over.
//!     pub fn reconfigure(&self, algorithm: Algorithm, specs: Vec<BackendSpec>);
//!     /// Health changed (prober): rebuild tables that depend on the up set.
//!     pub fn health_changed(&self);
//!     pub fn snapshot(&self) -> Arc<Snapshot>;
//! }
//! impl Snapshot {
//!     pub fn algorithm(&self) -> Algorithm;
//!     pub fn backends(&self) -> &[Backend];
//!     /// `random`: caller-supplied randomness; `tried`: backends already tried for this
//!     /// connection (never picked again). None = no candidate.
//!     pub fn pick(&self, client: IpAddr, random: u64, tried: &Tried) -> Option<usize>;
//! }
//! pub struct Tried;  // small set of backend indices: new(), insert(i), contains(i), len()
//! ```

mod state;

pub use state::{ActiveGuard, BackendState};
