//! One immutable backend set with its precomputed tables, and the pick itself.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use ringlb_config::{Algorithm, Failback, Steering, Stickiness, StickinessKey};

use crate::explain::pins_clients;
use crate::hash::{client_hash, fmix64, name_hash, rehash, scale, NAME_BASIS_OFFSET};
use crate::state::FULL_RAMP;
use crate::steer::{in_use, Pin, TierRange, RAMP_FLOOR};
use crate::sticky::{Remembered, StickyId, StickyKey, StickyTable};
use crate::tables::{maglev, maglev_restrict, maglev_table_size, smooth_wrr, WeightedSet};
use crate::{Backend, BackendState, Tried};

/// Capacity per unit of weight that `dynamic_weight` assumes for a backend whose
/// `max_connections` is 0: `C_i = weight_i × 100`. A weight-1 backend counts as half
/// loaded (`w_i = 1/2`) at 100 active connections; a weight-5 one at 500.
pub const DYNAMIC_WEIGHT_CAPACITY_PER_WEIGHT: u32 = 100;

/// Alternative hashes a hashing pick tries before scanning, when its first choice is not a
/// candidate (down, full or already tried).
const FALLBACK_REHASHES: u64 = 8;

/// Read-mostly per-backend data, packed so a pick walks one small contiguous array.
#[derive(Debug)]
struct Hot {
    state: Arc<BackendState>,
    /// The configured weight as written (0: drained by the file); a live weight override
    /// in `state` takes its place.
    configured: u32,
    /// The effective weight when the snapshot was built (override or configured), at
    /// least 1: the tables are built from it.
    weight: u32,
    /// 0 = unlimited.
    max: u32,
    /// `dynamic_weight`'s `C_i`.
    capacity: f64,
    capacity_int: u64,
    /// `⌊2^32 / weight⌋`: least_connections compares `active × inv_weight`.
    inv_weight: u64,
    priority: u8,
    /// Slow start: thousandths of its share the backend has ([`FULL_RAMP`]: all).
    ramp: u32,
}

/// With slow start, table weights are in twentieths of a configured weight, so that a
/// backend at the start of its ramp still has a whole (non-zero) table weight.
const RAMP_UNITS: u64 = (FULL_RAMP / RAMP_FLOOR) as u64;

/// The weight the tables use for a backend of effective weight `weight` (≥ 1) whose ramp
/// is at `ramp` thousandths: the weight itself without slow start.
fn table_weight(weight: u32, ramp: u32, slow_start: bool) -> u32 {
    if !slow_start {
        return weight;
    }
    let scaled = u64::from(weight) * RAMP_UNITS * u64::from(ramp) / u64::from(FULL_RAMP);
    scaled.clamp(1, u64::from(u32::MAX)) as u32
}

/// The round-robin cursor, alone on its cache line: every worker bumps it, and the
/// read-only tables next to it must not be invalidated each time.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Cursor(AtomicUsize);

#[derive(Debug)]
enum Table {
    /// least_connections, dynamic_weight: live scan of the members.
    Scan,
    /// round_robin: the members up at build time, walked by the cursor.
    Ring(Box<[u32]>),
    /// weighted_round_robin: one period of the smooth schedule, walked by the cursor.
    Schedule(Box<[u32]>),
    /// random, power_of_two (over the up members), source_hash (over all members).
    Weighted(WeightedSet),
    /// maglev: `base` over all members (a function of the configured set only, reused by
    /// health rebuilds), `table` derived from it for the members up at build time.
    Maglev { base: Arc<[u32]>, table: Box<[u32]> },
}

/// The backends of the tiers in use when the snapshot was built.
#[derive(Debug)]
struct Tier {
    /// Which tiers.
    range: Option<TierRange>,
    /// All their members in config order: the deterministic fallback scan walks these.
    members: Box<[u32]>,
    table: Table,
}

/// An immutable backend set published by [`Scheduler`](crate::Scheduler). Workers hold
/// an `Arc<Snapshot>` for the life of a connection: indices into [`backends`](Self::backends)
/// and a [`Tried`] set are only meaningful against the snapshot they came from.
pub struct Snapshot {
    algorithm: Algorithm,
    backends: Vec<Backend>,
    hot: Box<[Hot]>,
    /// Backend indices by priority, then config order: what the tier choice walks.
    by_priority: Box<[u32]>,
    top_priority: u8,
    steering: Steering,
    pin: Arc<Pin>,
    serving: Tier,
    cursor: Cursor,
    /// Which backends took new connections (up, ready, non-zero weight) when the tables
    /// were built; `health_changed` skips a rebuild when that is unchanged.
    built_up: Box<[bool]>,
    maglev_size: Option<usize>,
    fingerprint: Option<String>,
    /// The listener's stickiness, when it has some.
    sticky: Option<StickyView>,
}

/// See [`Snapshot::fingerprint`]: the algorithm, then for each table entry in order the
/// backend's address (and weight for source_hash's weighted set), hashed.
fn fingerprint(algorithm: Algorithm, tier: &Tier, backends: &[Backend]) -> Option<String> {
    let entries: &[u32] = match &tier.table {
        Table::Maglev { table, .. } => table,
        Table::Weighted(set) if algorithm == Algorithm::SourceHash => &set.members,
        _ => return None,
    };
    let mut h = name_hash(algorithm.as_str().as_bytes(), NAME_BASIS_OFFSET);
    for &i in entries {
        let b = &backends[i as usize];
        h = name_hash(b.spec.addr.to_string().as_bytes(), h);
        if algorithm == Algorithm::SourceHash {
            h = name_hash(&b.effective_weight().to_le_bytes(), h);
        }
    }
    Some(format!("{:016x}", fmix64(h)))
}

/// What a snapshot knows of its listener's stickiness: the shared table, the settings in
/// force, and the sticky id of each of its backends.
#[derive(Debug)]
pub(crate) struct StickyView {
    pub(crate) table: Arc<StickyTable>,
    pub(crate) key: StickinessKey,
    /// `expire` in seconds.
    pub(crate) expire: u32,
    pub(crate) single_active: bool,
    /// By backend index.
    pub(crate) ids: Box<[StickyId]>,
    /// `(id, index)` sorted by id.
    by_id: Box<[(StickyId, u32)]>,
}

impl StickyView {
    pub(crate) fn new(table: Arc<StickyTable>, settings: &Stickiness, ids: Vec<StickyId>) -> Self {
        let mut by_id: Vec<(StickyId, u32)> = ids
            .iter()
            .enumerate()
            .filter(|(_, &id)| id != 0)
            .map(|(i, &id)| (id, i as u32))
            .collect();
        by_id.sort_unstable();
        StickyView {
            table,
            key: settings.key,
            expire: expire_secs(settings),
            single_active: settings.single_active,
            ids: ids.into(),
            by_id: by_id.into(),
        }
    }

    /// The index of the backend with sticky id `id` in this snapshot.
    pub(crate) fn index_of(&self, id: StickyId) -> Option<usize> {
        self.by_id
            .binary_search_by_key(&id, |&(id, _)| id)
            .ok()
            .and_then(|p| self.by_id.get(p))
            .map(|&(_, i)| i as usize)
    }
}

/// `expire` in whole seconds (validation keeps it within 1s..=30d).
pub(crate) fn expire_secs(settings: &Stickiness) -> u32 {
    u32::try_from(settings.expire.as_secs())
        .unwrap_or(u32::MAX)
        .max(1)
}

impl fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Snapshot")
            .field("algorithm", &self.algorithm)
            .field("backends", &self.backends)
            .field("maglev_size", &self.maglev_size)
            .finish_non_exhaustive()
    }
}

impl Snapshot {
    /// `same_set`: a snapshot with exactly these backends (a health rebuild), whose
    /// health-independent tables are reused. `pin`: the listener's failback hold.
    pub(crate) fn build(
        algorithm: Algorithm,
        steering: Steering,
        pin: Arc<Pin>,
        backends: Vec<Backend>,
        same_set: Option<&Snapshot>,
    ) -> Snapshot {
        let slow_start = steering.slow_start.is_some();
        let hot: Box<[Hot]> = backends
            .iter()
            .map(|b| {
                let weight = b.effective_weight().max(1);
                let capacity = if b.spec.max_connections > 0 {
                    b.spec.max_connections
                } else {
                    weight.saturating_mul(DYNAMIC_WEIGHT_CAPACITY_PER_WEIGHT)
                };
                let ramp = b.state.ramp();
                let weight = table_weight(weight, ramp, slow_start);
                Hot {
                    state: Arc::clone(&b.state),
                    configured: b.spec.weight,
                    weight,
                    max: b.spec.max_connections,
                    capacity: f64::from(capacity),
                    capacity_int: u64::from(capacity),
                    inv_weight: (1u64 << 32) / u64::from(weight),
                    priority: b.spec.priority,
                    ramp,
                }
            })
            .collect();
        let built_up: Box<[bool]> = backends
            .iter()
            .map(|b| b.state.admits(b.spec.weight))
            .collect();
        let mut by_priority: Vec<u32> = (0..backends.len() as u32).collect();
        by_priority.sort_by_key(|&i| hot[i as usize].priority);
        let top_priority = hot.iter().map(|h| h.priority).max().unwrap_or(0);
        let wanted = TierRange::wanted(
            by_priority
                .iter()
                .map(|&i| (hot[i as usize].priority, built_up[i as usize])),
            steering.min_active,
            top_priority,
        );
        let range = in_use(pin.held(), wanted, &backends)
            // Nothing up: build over the first tier, so that the first backend back is
            // served from real tables.
            .or(Some(TierRange {
                lowest: 0,
                highest: 0,
            }));
        let maglev_size =
            (algorithm == Algorithm::Maglev).then(|| maglev_table_size(backends.len()) as usize);
        let tier = |range: Option<TierRange>| {
            let mut members: Vec<u32> = (0..backends.len())
                .filter(|&i| range.is_some_and(|r| r.contains(backends[i].spec.priority)))
                .map(|i| i as u32)
                .collect();
            if pins_clients(algorithm) {
                // Every instance in front of the same backends must pick alike, however
                // each one's file lists them: the hashing tables go by address.
                members.sort_by_key(|&i| backends[i as usize].spec.addr);
            }
            // Tables that depend on health cover the members taking connections now (up,
            // ready, weighted); when none is, all of them (the live check in `pick` still
            // refuses the others until the rebuild).
            let mut up: Vec<u32> = members
                .iter()
                .copied()
                .filter(|&i| built_up[i as usize])
                .collect();
            if up.is_empty() {
                up.clone_from(&members);
            }
            let weights =
                |set: &[u32]| -> Vec<u32> { set.iter().map(|&i| hot[i as usize].weight).collect() };
            let table = match algorithm {
                Algorithm::LeastConnections | Algorithm::DynamicWeight => Table::Scan,
                // With slow start, round robin is weighted by the ramps (every other
                // weight being equal).
                Algorithm::RoundRobin if slow_start => {
                    let ramps: Vec<u32> = up
                        .iter()
                        .map(|&i| backends[i as usize].state.ramp())
                        .collect();
                    Table::Schedule(smooth_wrr(&up, &ramps).into())
                }
                Algorithm::RoundRobin => Table::Ring(up.into()),
                Algorithm::WeightedRoundRobin => {
                    Table::Schedule(smooth_wrr(&up, &weights(&up)).into())
                }
                Algorithm::Random | Algorithm::PowerOfTwo | Algorithm::LeastLatency => {
                    Table::Weighted(WeightedSet::new(&up, &weights(&up)))
                }
                // All members, so a down backend's clients alone move (by the fallback) and
                // come back when it recovers; everybody else keeps their backend.
                Algorithm::SourceHash => {
                    Table::Weighted(WeightedSet::new(&members, &weights(&members)))
                }
                Algorithm::Maglev => {
                    let labels: Vec<&str> = members
                        .iter()
                        .map(|&i| backends[i as usize].spec.label.as_str())
                        .collect();
                    let w = weights(&members);
                    let reused = same_set.and_then(|s| match &s.serving.table {
                        Table::Maglev { base, .. }
                            if s.algorithm == algorithm && s.serving.range == range =>
                        {
                            Some(Arc::clone(base))
                        }
                        _ => None,
                    });
                    let base = reused.unwrap_or_else(|| {
                        let size = maglev_size.unwrap_or(0) as u64;
                        maglev(&members, &labels, &w, size).into()
                    });
                    let table = maglev_restrict(&base, &members, &labels, &w, &built_up).into();
                    Table::Maglev { base, table }
                }
            };
            Tier {
                range,
                members: members.into(),
                table,
            }
        };
        let serving = tier(range);
        let fingerprint = fingerprint(algorithm, &serving, &backends);
        Snapshot {
            algorithm,
            backends,
            hot,
            by_priority: by_priority.into(),
            top_priority,
            steering,
            pin,
            serving,
            cursor: Cursor::default(),
            built_up,
            maglev_size,
            fingerprint,
            sticky: None,
        }
    }

    /// For `source_hash` and `maglev`: a hash of which backend (by address) each client
    /// hash leads to in the tables in use, as 16 hex digits. Instances showing the same
    /// fingerprint send every client to the same backend; `None` for other algorithms.
    pub fn fingerprint(&self) -> Option<&str> {
        self.fingerprint.as_deref()
    }

    /// The same snapshot with the listener's stickiness.
    pub(crate) fn with_sticky(mut self, sticky: Option<StickyView>) -> Snapshot {
        self.sticky = sticky;
        self
    }

    pub(crate) fn sticky_view(&self) -> Option<&StickyView> {
        self.sticky.as_ref()
    }

    /// Stickiness: the entries the table holds now and its size (slots); `None` without.
    pub fn sticky_fill(&self) -> Option<(usize, usize)> {
        self.sticky
            .as_ref()
            .map(|v| (v.table.len(), v.table.capacity()))
    }

    /// Whether the listener has stickiness: then the data plane asks
    /// [`sticky_target`](Self::sticky_target) before its first pick and tells
    /// [`sticky_remember`](Self::sticky_remember) where the connection went.
    #[inline]
    pub fn is_sticky(&self) -> bool {
        self.sticky.is_some()
    }

    /// Where a new connection from `peer` goes back to, at `now` (whole seconds of the
    /// caller's monotonic clock): the backend its key last used while that backend is a
    /// candidate ([`is_candidate`](Self::is_candidate)) and the entry has not expired;
    /// with `single_active`, the active backend, and when that is no candidate any more
    /// (or none was chosen yet) the one a normal pick chooses, which becomes the active
    /// one. `None`: no such backend, pick normally. Lock-free; reads no clock.
    pub fn sticky_target(&self, peer: SocketAddr, random: u64, now: u32) -> Option<usize> {
        let view = self.sticky.as_ref()?;
        let none = Tried::new();
        if view.single_active {
            // Workers racing to replace the active backend agree on the first one chosen.
            for _ in 0..3 {
                let active = view.table.active();
                if let Some(i) = active.and_then(|id| view.index_of(id)) {
                    if self.is_candidate(i, &none) {
                        return Some(i);
                    }
                }
                let chosen = self.pick(peer.ip().to_canonical(), random, &none)?;
                let id = view.ids.get(chosen).copied().filter(|&id| id != 0)?;
                if view.table.swap_active(active, id) {
                    return Some(chosen);
                }
            }
            return None;
        }
        let key = StickyKey::of(peer, view.key);
        let id = view.table.lookup(&key, now, view.expire)?;
        let i = view.index_of(id)?;
        self.is_candidate(i, &none).then_some(i)
    }

    /// Records that `peer`'s connection went to backend `index` at `now`.
    pub fn sticky_remember(&self, peer: SocketAddr, index: usize, now: u32) -> Remembered {
        let Some(view) = self.sticky.as_ref() else {
            return Remembered::Skipped;
        };
        let Some(&id) = view.ids.get(index) else {
            return Remembered::Skipped;
        };
        view.table
            .remember(&StickyKey::of(peer, view.key), id, now, view.expire)
    }

    /// [`pick_and_acquire`](Self::pick_and_acquire), trying `preferred` (the sticky
    /// target) first when it is still a candidate.
    pub fn pick_and_acquire_preferring(
        &self,
        client: IpAddr,
        random: u64,
        tried: &mut Tried,
        preferred: Option<usize>,
    ) -> Option<(usize, crate::ActiveGuard)> {
        if let Some(i) = preferred.filter(|&i| self.is_candidate(i, tried)) {
            tried.insert(i);
            if let Some(guard) = self.backends.get(i).and_then(Backend::try_acquire) {
                return Some((i, guard));
            }
        }
        self.pick_and_acquire(client, random, tried)
    }

    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    pub fn backends(&self) -> &[Backend] {
        &self.backends
    }

    /// Number of maglev slots, when the algorithm is maglev.
    pub fn maglev_table_size(&self) -> Option<usize> {
        self.maglev_size
    }

    /// Slots per backend index in the maglev table of the tiers in use when the snapshot
    /// was built. Empty for other algorithms. For tests, `explain` and docs.
    pub fn maglev_slot_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.backends.len()];
        if let Table::Maglev { table: t, .. } = &self.serving.table {
            for &i in t.iter() {
                if let Some(c) = counts.get_mut(i as usize) {
                    *c += 1;
                }
            }
        }
        counts
    }

    /// True when the set of backends taking connections differs from the one the tables
    /// were built from.
    pub(crate) fn health_differs(&self) -> bool {
        self.hot
            .iter()
            .zip(self.built_up.iter())
            .any(|(h, &was)| h.state.admits(h.configured) != was)
    }

    /// The tiers taking new connections when this snapshot was built (see
    /// [`tiers_now`](Self::tiers_now) for the live answer).
    pub fn tiers_built(&self) -> Option<TierRange> {
        self.serving.range
    }

    /// The tiers taking new connections now: from the first tier with a backend up until
    /// `min_active` backends are up, merged with the failback hold. `None`: no backend
    /// takes connections.
    #[inline]
    pub fn tiers_now(&self) -> Option<TierRange> {
        let hot = &self.hot;
        let wanted = TierRange::wanted(
            self.by_priority.iter().map(|&i| {
                let h = &hot[i as usize];
                (h.priority, h.state.admits(h.configured))
            }),
            self.steering.min_active,
            self.top_priority,
        )?;
        if self.steering.failback == Failback::Immediate {
            return Some(wanted);
        }
        in_use(self.pin.held(), Some(wanted), &self.backends)
    }

    /// Whether backend `index` may take this connection now: up, `ready` with a non-zero
    /// weight (not drained or in maintenance), below its `max_connections`, not tried yet,
    /// and in a tier that takes connections (see [`tiers_now`](Self::tiers_now)).
    pub fn is_candidate(&self, index: usize, tried: &Tried) -> bool {
        let Some(b) = self.backends.get(index) else {
            return false;
        };
        self.tiers_now()
            .is_some_and(|r| r.contains(b.spec.priority))
            && self.eligible(index as u32, tried)
    }

    /// [`pick`](Self::pick), then take one of the backend's connection slots. A backend
    /// found full by the compare-and-swap (another worker took its last slot after the
    /// pick read its counter) is added to `tried` and the pick repeats; every backend
    /// picked is added to `tried`, so a connect retry never lands on it again.
    pub fn pick_and_acquire(
        &self,
        client: IpAddr,
        random: u64,
        tried: &mut Tried,
    ) -> Option<(usize, crate::ActiveGuard)> {
        loop {
            let index = self.pick(client, random, tried)?;
            tried.insert(index);
            if let Some(guard) = self.backends.get(index)?.try_acquire() {
                return Some((index, guard));
            }
        }
    }

    /// Picks the backend for a new connection or UDP session; `None` when no backend is a
    /// candidate (see [`is_candidate`](Self::is_candidate)).
    ///
    /// `random` is a fresh uniform `u64` from the caller's per-worker RNG (ignored by the
    /// hashing algorithms); `client` matters only to `source_hash` and `maglev`. For a
    /// connect retry pass the backends already tried: they are never returned.
    #[inline]
    pub fn pick(&self, client: IpAddr, random: u64, tried: &Tried) -> Option<usize> {
        let range = self.tiers_now()?;
        if self.serving.range != Some(range) {
            // Health or the hold moved since the tables were built; the rebuild follows in
            // moments. Until then, the first candidate of the tiers in use.
            return self.scan_tiers(range, random, tried).map(|i| i as usize);
        }
        let tier = &self.serving;
        let found = match self.algorithm {
            Algorithm::RoundRobin | Algorithm::WeightedRoundRobin => self.pick_cursor(tier, tried),
            Algorithm::Random => self.pick_random(tier, random, tried),
            Algorithm::LeastConnections => self.pick_least(tier, random, tried),
            Algorithm::PowerOfTwo => self.pick_two(tier, random, tried),
            Algorithm::SourceHash | Algorithm::Maglev => {
                self.pick_hashed(tier, client_hash(client), tried)
            }
            Algorithm::DynamicWeight => self.pick_dynamic(tier, random, tried),
            Algorithm::LeastLatency => self.pick_latency(tier, random, tried),
        };
        found.map(|i| i as usize)
    }

    /// The first candidate among the backends of `range` in config order, rotated to
    /// start at `start mod n`.
    fn scan_tiers(&self, range: TierRange, start: u64, tried: &Tried) -> Option<u32> {
        let n = self.hot.len();
        let s = start.checked_rem(n as u64)? as usize;
        (s..n)
            .chain(0..s)
            .map(|i| i as u32)
            .find(|&i| range.contains(self.hot[i as usize].priority) && self.eligible(i, tried))
    }

    /// Live check of one backend; `index` comes from this snapshot's own tables.
    #[inline]
    fn eligible(&self, index: u32, tried: &Tried) -> bool {
        let h = &self.hot[index as usize];
        !tried.contains(index as usize)
            && h.state.admits(h.configured)
            && (h.max == 0 || h.state.active() < h.max)
    }

    /// Active connections when eligible.
    #[inline]
    fn load_if_eligible(&self, index: u32, tried: &Tried) -> Option<u32> {
        let h = &self.hot[index as usize];
        if tried.contains(index as usize) || !h.state.admits(h.configured) {
            return None;
        }
        let active = h.state.active();
        (h.max == 0 || active < h.max).then_some(active)
    }

    /// The deterministic fallback: the first candidate among the tier's members in config
    /// order, rotated to start at `start mod n`.
    fn scan(&self, tier: &Tier, start: u64, tried: &Tried) -> Option<u32> {
        let n = tier.members.len();
        let s = start.checked_rem(n as u64)? as usize;
        let (head, tail) = tier.members.split_at(s);
        tail.iter()
            .chain(head.iter())
            .copied()
            .find(|&i| self.eligible(i, tried))
    }

    fn pick_cursor(&self, tier: &Tier, tried: &Tried) -> Option<u32> {
        let c = self.cursor.0.fetch_add(1, Ordering::Relaxed);
        let ring = match &tier.table {
            Table::Ring(r) | Table::Schedule(r) => r,
            _ => &tier.members,
        };
        if let Some(&i) = c.checked_rem(ring.len()).and_then(|p| ring.get(p)) {
            if self.eligible(i, tried) {
                return Some(i);
            }
        }
        self.scan(tier, c as u64, tried)
    }

    fn pick_random(&self, tier: &Tier, random: u64, tried: &Tried) -> Option<u32> {
        if let Table::Weighted(set) = &tier.table {
            if let Some(&i) = set.sample(random).and_then(|p| set.members.get(p)) {
                if self.eligible(i, tried) {
                    return Some(i);
                }
            }
        }
        self.scan(tier, random, tried)
    }

    /// Lowest `active / weight` among candidates. The walk starts at a random member and
    /// keeps the first best it meets, so ties go to a random member, not the first one.
    ///
    /// The ratio is compared as `active × ⌊2^32 / weight⌋` (exact at equal weights; at
    /// unequal weights two ratios within 2^-32 of each other count as ordered), so each
    /// step is a multiply off the critical path and a compare-and-select on it: which
    /// backend is least loaded is unpredictable, and branches there would mispredict.
    fn pick_least(&self, tier: &Tier, random: u64, tried: &Tried) -> Option<u32> {
        let members = &tier.members;
        let n = members.len();
        let s = scale(random, n as u64) as usize;
        let (mut best, mut best_key) = (u32::MAX, u64::MAX);
        for k in 0..n {
            let mut j = s + k;
            if j >= n {
                j -= n;
            }
            let i = members[j];
            let h = &self.hot[i as usize];
            let active = h.state.active();
            let ok = h.state.admits(h.configured)
                & !tried.contains(i as usize)
                & ((h.max == 0) | (active < h.max));
            if ok & (active == 0) {
                // Nothing beats an idle backend, and ties keep the first one met.
                return Some(i);
            }
            // active < 2^32 and inv_weight ≤ 2^32: the product fits in 64 bits.
            let key = u64::from(active) * h.inv_weight;
            let better = ok & (key < best_key);
            best = if better { i } else { best };
            best_key = if better { key } else { best_key };
        }
        (best != u32::MAX).then_some(best)
    }

    /// Two candidates drawn by weight; the one with fewer active connections per unit of
    /// weight wins, the first drawn on a tie.
    fn pick_two(&self, tier: &Tier, random: u64, tried: &Tried) -> Option<u32> {
        self.pick_two_by(tier, random, tried, |_, active| u128::from(active))
    }

    /// least_latency: two candidates drawn by weight; the lower `latency × (active + 1)`
    /// per unit of weight wins.
    fn pick_latency(&self, tier: &Tier, random: u64, tried: &Tried) -> Option<u32> {
        // Without a sample the cost is the active count alone: such a backend is tried
        // before any sampled one (whose cost is in nanoseconds), and among themselves
        // (UDP sessions give no samples) they compare as power_of_two does.
        self.pick_two_by(tier, random, tried, |h, active| {
            match h.state.latency_ns() {
                0 => u128::from(active),
                ns => u128::from(ns) * (u128::from(active) + 1),
            }
        })
    }

    /// Power of two choices: two members drawn from the weighted table, the one with the
    /// lower `cost / weight` wins (the first drawn on a tie).
    fn pick_two_by(
        &self,
        tier: &Tier,
        random: u64,
        tried: &Tried,
        cost: impl Fn(&Hot, u32) -> u128,
    ) -> Option<u32> {
        let Table::Weighted(set) = &tier.table else {
            return self.scan(tier, random, tried);
        };
        let n = set.len();
        let Some(pa) = set.sample(random) else {
            return self.scan(tier, random, tried);
        };
        let second = fmix64(random ^ 0x5851_f42d_4c95_7f2d);
        let pb = if n < 2 {
            pa
        } else if set.is_uniform() {
            // Uniform over the other n−1 members: always two distinct candidates.
            let p = scale(second, n as u64 - 1) as usize;
            if p >= pa {
                p + 1
            } else {
                p
            }
        } else {
            match set.sample(second) {
                Some(p) if p != pa => p,
                _ => (pa + 1) % n,
            }
        };
        let a = set.members[pa];
        let b = set.members[pb];
        let la = self.load_if_eligible(a, tried);
        let lb = if pb == pa {
            None
        } else {
            self.load_if_eligible(b, tried)
        };
        match (la, lb) {
            (Some(x), Some(y)) => {
                let (ha, hb) = (&self.hot[a as usize], &self.hot[b as usize]);
                // cost_b / w_b < cost_a / w_a, multiplied out (costs stay far below 2^96).
                let b_wins =
                    cost(hb, y) * u128::from(ha.weight) < cost(ha, x) * u128::from(hb.weight);
                Some(if b_wins { b } else { a })
            }
            (Some(_), None) => Some(a),
            (None, Some(_)) => Some(b),
            (None, None) => self.scan(tier, random, tried),
        }
    }

    /// source_hash and maglev: the table entry for the client's hash; when that backend is
    /// not a candidate, up to 8 rehashes of the key, then the rotated scan from the key. All
    /// deterministic in (client, up set, tried): the same client fails over the same way.
    fn pick_hashed(&self, tier: &Tier, key: u64, tried: &Tried) -> Option<u32> {
        let lookup = |k: u64| -> Option<u32> {
            match &tier.table {
                Table::Weighted(set) => set.sample(k).and_then(|p| set.members.get(p)).copied(),
                Table::Maglev { table: t, .. } => t.get(scale(k, t.len() as u64) as usize).copied(),
                _ => None,
            }
        };
        if let Some(i) = lookup(key) {
            if self.eligible(i, tried) {
                return Some(i);
            }
        }
        for k in 1..=FALLBACK_REHASHES {
            if let Some(i) = lookup(rehash(key, k)) {
                if self.eligible(i, tried) {
                    return Some(i);
                }
            }
        }
        self.scan(tier, rehash(key, FALLBACK_REHASHES + 1), tried)
    }

    /// `w_i = r_i × C_i / (C_i + L_i)` over the candidates (`r_i`: the slow-start ramp, 1
    /// when not ramping), and a draw with probability `S_i = w_i / Σ w_j`.
    ///
    /// Rejection sampling first: draw a member uniformly, accept it with probability `w_i`
    /// (0 for a non-candidate). An accepted draw has exactly the distribution `S_i`, and
    /// since every candidate below its `max_connections` has `w_i > r_i / 2`, it usually takes
    /// one or two draws whatever the number of backends. After `DYNAMIC_DRAWS` rejections
    /// the exact cumulative draw below runs instead; it has the same distribution, so the
    /// mixture is still exactly `S_i`.
    fn pick_dynamic(&self, tier: &Tier, random: u64, tried: &Tried) -> Option<u32> {
        const DYNAMIC_DRAWS: u64 = 8;
        let members = &tier.members;
        let n = members.len() as u64;
        for k in 0..DYNAMIC_DRAWS {
            let r = if k == 0 { random } else { rehash(random, k) };
            // High 32 bits choose the member, low 32 bits decide the acceptance.
            let Some(&i) = members.get(scale(r & 0xffff_ffff_0000_0000, n) as usize) else {
                break;
            };
            let Some(active) = self.load_if_eligible(i, tried) else {
                continue;
            };
            // Accept with probability ramp × C / (C + L), the ramp in thousandths:
            // u32 draw × (C + L) × 1000 < C × ramp × 2^32.
            let h = &self.hot[i as usize];
            let c = h.capacity_int;
            if u128::from(r as u32) * u128::from(c + u64::from(active)) * u128::from(FULL_RAMP)
                < (u128::from(c) * u128::from(h.ramp)) << 32
            {
                return Some(i);
            }
        }
        self.pick_dynamic_exact(tier, rehash(random, DYNAMIC_DRAWS), tried)
    }

    fn pick_dynamic_exact(&self, tier: &Tier, random: u64, tried: &Tried) -> Option<u32> {
        const STACK: usize = 64;
        let members = &tier.members;
        let unit = (random >> 11) as f64 * (1.0 / (1u64 << 53) as f64);
        let weight = |i: u32| -> Option<f64> {
            let active = self.load_if_eligible(i, tried)?;
            let h = &self.hot[i as usize];
            let ramp = f64::from(h.ramp) / f64::from(FULL_RAMP);
            Some(ramp * h.capacity / (h.capacity + f64::from(active)))
        };
        if members.len() <= STACK {
            let mut cum = [0f64; STACK];
            let mut total = 0.0;
            let mut last = None;
            for (p, &i) in members.iter().enumerate() {
                if let Some(w) = weight(i) {
                    total += w;
                    last = Some(p);
                }
                cum[p] = total;
            }
            let last = last?;
            let target = unit * total;
            // The first position whose running sum passes the target has a non-zero weight.
            let p = cum[..=last]
                .iter()
                .position(|&c| c > target)
                .unwrap_or(last);
            return members.get(p).copied();
        }
        // Large sets: no buffer; sum, then walk again with fresh loads. Counters that move
        // between the passes only shift the draw slightly; the result is still a candidate.
        let total: f64 = members.iter().filter_map(|&i| weight(i)).sum();
        let target = unit * total;
        let mut running = 0.0;
        let mut last = None;
        for &i in members.iter() {
            if let Some(w) = weight(i) {
                running += w;
                last = Some(i);
                if running > target {
                    return Some(i);
                }
            }
        }
        last
    }
}
