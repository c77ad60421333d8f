//! The table of sources one listener tracks, shared by all of its workers.
//!
//! Sharded: a source's hash picks one of [`SHARDS`] maps, each behind its own mutex, held
//! for one lookup (the hit path: a hash, a lock, a few compares, an unlock) or one sweep.
//! The number of sources is one atomic, changed only when a source enters or leaves, so a
//! source already present costs no shared write outside its shard.
//!
//! Time is a parameter (nanoseconds since the table's creation, [`SourceTable::time`]):
//! the data plane passes the accept time it has already read, so the table reads no clock
//! per connection, and the tests move time by hand.
//!
//! Entries leave when idle — no live connection and the bucket full again: a source
//! without a bucket (no rate limit) at once when its last connection closes, others by a
//! sweep. [`SourceTable::maintain`] (about once a second per worker) sweeps a few shards
//! at a time; a new source that finds the table full sweeps every shard first, at most
//! once per [`FULL_SWEEP_GAP`] for the whole table.

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasher, BuildHasherDefault, Hash, Hasher, RandomState};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError, TryLockError};
use std::time::Instant;

use crate::key::SourceKey;
use crate::limits::{Entry, Limits, Over};

/// Enough that workers rarely meet on one lock; few enough that the table of a listener
/// without sources is small (64 cache-line-aligned shards, 8 KiB).
const SHARDS: usize = 64;
/// [`SourceTable::maintain`] sweeps a shard not swept for this long (nanoseconds).
const SWEEP_EVERY: u64 = 1_000_000_000;
/// Shards [`SourceTable::maintain`] looks at per call: a sweep pauses the calling worker
/// for one shard's entries at a time, never for the whole table.
const MAINTAIN_SHARDS: usize = 8;
/// When the table is full, a sweep of every shard runs at most this often (nanoseconds):
/// a flood of new sources cannot turn into a sweep per connection.
pub const FULL_SWEEP_GAP: u64 = 100_000_000;
/// A shard's map holding over 4× the entries it needs is shrunk, above this capacity.
const SHRINK_ABOVE: usize = 64;

/// What [`SourceTable::admit`] decided.
pub enum Verdict<'a> {
    /// Admitted and counted against its source until the slot is dropped.
    Tracked(SourceSlot<'a>),
    /// Admitted without being counted: a new source while the table holds `max_sources`.
    Untracked,
    /// Over one of its source's limits.
    Refused(Over),
}

/// One connection counted against its source; dropping it (the connection ended) gives
/// the count back.
#[must_use = "dropping the slot ends the connection's count at once"]
pub struct SourceSlot<'a> {
    table: &'a SourceTable,
    slot: Slot,
}

impl SourceSlot<'_> {
    pub fn key(&self) -> SourceKey {
        self.slot.key
    }
}

impl Drop for SourceSlot<'_> {
    fn drop(&mut self) {
        self.table.release(self.slot);
    }
}

/// Every source one listener tracks. See the module documentation.
pub struct SourceTable {
    shards: Box<[Shard]>,
    hasher: KeyedHash,
    /// Entries in all shards; never above the `max_sources` it was reserved against.
    len: AtomicUsize,
    /// Where the next [`SourceTable::maintain`] starts.
    cursor: AtomicUsize,
    /// Earliest time of the next sweep of every shard when full.
    next_full_sweep: AtomicU64,
    /// Time 0.
    epoch: Instant,
}

impl Default for SourceTable {
    fn default() -> Self {
        SourceTable::new()
    }
}

impl fmt::Debug for SourceTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SourceTable")
            .field("len", &self.len())
            .finish_non_exhaustive()
    }
}

impl SourceTable {
    pub fn new() -> Self {
        SourceTable {
            shards: (0..SHARDS).map(|_| Shard::default()).collect(),
            hasher: KeyedHash::new(),
            len: AtomicUsize::new(0),
            cursor: AtomicUsize::new(0),
            next_full_sweep: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    /// `at` in the table's time: nanoseconds since the table was created.
    pub fn time(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }

    /// A new connection from `ip` at `now` ([`SourceTable::time`]): counted against its
    /// source, refused by one of its limits, or — a new source while the table is full —
    /// admitted uncounted.
    pub fn admit(&self, ip: IpAddr, limits: &Limits, now: u64) -> Verdict<'_> {
        let slot = self.slot(ip);
        let shard = self.shard(slot.hash);
        let mut map = shard.lock();
        if let Some(entry) = map.entries.get_mut(&slot) {
            return self.verdict(entry.open(now, limits), slot);
        }
        let mut entry = Entry::default();
        if let Err(over) = entry.open(now, limits) {
            return Verdict::Refused(over);
        }
        if !self.reserve(limits.max_sources) {
            drop(map);
            if !self.sweep_all_when_full(now) {
                return Verdict::Untracked;
            }
            map = shard.lock();
            // Another worker may have added this source while the lock was free.
            if let Some(existing) = map.entries.get_mut(&slot) {
                return self.verdict(existing.open(now, limits), slot);
            }
            if !self.reserve(limits.max_sources) {
                return Verdict::Untracked;
            }
        }
        map.entries.insert(slot, entry);
        Verdict::Tracked(SourceSlot { table: self, slot })
    }

    /// Count a connection admitted by a previous process (live upgrade) against its
    /// source, without checking a limit or taking a token; `None` when the table is full.
    pub fn adopt(&self, ip: IpAddr, limits: &Limits) -> Option<SourceSlot<'_>> {
        let slot = self.slot(ip);
        let mut map = self.shard(slot.hash).lock();
        if let Some(entry) = map.entries.get_mut(&slot) {
            entry.adopt();
        } else {
            if !self.reserve(limits.max_sources) {
                return None;
            }
            let mut entry = Entry::default();
            entry.adopt();
            map.entries.insert(slot, entry);
        }
        Some(SourceSlot { table: self, slot })
    }

    /// Sources tracked now (what `ringlb_source_table_entries` shows).
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Buckets allocated in all shards: what the table's memory follows.
    pub fn capacity(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().entries.capacity())
            .sum()
    }

    /// Remove the sources idle at `now` from the next few shards not swept for a second,
    /// skipping any shard another thread holds. Call it about once a second per worker.
    pub fn maintain(&self, now: u64) {
        let first = self.cursor.fetch_add(MAINTAIN_SHARDS, Ordering::Relaxed);
        for k in 0..MAINTAIN_SHARDS {
            let shard = &self.shards[first.wrapping_add(k) % SHARDS];
            let Some(mut map) = shard.try_lock() else {
                continue;
            };
            if map.entries.capacity() > 0 && !map.swept_within(now, SWEEP_EVERY) {
                self.sweep(&mut map, now);
            }
        }
    }

    fn verdict(&self, opened: Result<(), Over>, slot: Slot) -> Verdict<'_> {
        match opened {
            Ok(()) => Verdict::Tracked(SourceSlot { table: self, slot }),
            Err(over) => Verdict::Refused(over),
        }
    }

    fn slot(&self, ip: IpAddr) -> Slot {
        let key = SourceKey::of(ip);
        Slot {
            hash: self.hasher.hash(key),
            key,
        }
    }

    /// The map uses the hash's low bits for its buckets and top bits for its tags, so the
    /// shard comes from bits in between.
    fn shard(&self, hash: u64) -> &Shard {
        &self.shards[(hash >> 32) as usize % SHARDS]
    }

    /// Take room for one more source; `false` when `max_sources` are tracked.
    fn reserve(&self, max_sources: usize) -> bool {
        self.len
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                (n < max_sources).then_some(n + 1)
            })
            .is_ok()
    }

    /// A source without a bucket leaves with its last connection; one with a bucket stays
    /// for a sweep to see it full again (no clock is read here).
    fn release(&self, slot: Slot) {
        let mut map = self.shard(slot.hash).lock();
        let idle = map.entries.get_mut(&slot).is_some_and(|entry| {
            entry.close();
            entry.idle(0)
        });
        if idle {
            map.entries.remove(&slot);
            self.len.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Sweep every shard, unless the table was swept so within [`FULL_SWEEP_GAP`];
    /// returns whether it did.
    fn sweep_all_when_full(&self, now: u64) -> bool {
        let next = self.next_full_sweep.load(Ordering::Relaxed);
        if now < next
            || self
                .next_full_sweep
                .compare_exchange(
                    next,
                    now.saturating_add(FULL_SWEEP_GAP),
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                )
                .is_err()
        {
            return false;
        }
        for shard in self.shards.iter() {
            self.sweep(&mut shard.lock(), now);
        }
        true
    }

    fn sweep(&self, map: &mut ShardMap, now: u64) {
        let before = map.entries.len();
        map.entries.retain(|_, entry| !entry.idle(now));
        let removed = before - map.entries.len();
        if removed > 0 {
            self.len.fetch_sub(removed, Ordering::AcqRel);
        }
        // A burst of sources must not keep its memory once it is gone.
        let (len, capacity) = (map.entries.len(), map.entries.capacity());
        if capacity > SHRINK_ABOVE && capacity / 4 > len {
            map.entries.shrink_to(len * 2);
        }
        map.swept_at = Some(now);
    }

    #[cfg(test)]
    fn live(&self, ip: IpAddr) -> Option<u32> {
        let slot = self.slot(ip);
        let map = self.shard(slot.hash).lock();
        map.entries.get(&slot).map(|e| e.live)
    }
}

#[derive(Default)]
#[repr(align(128))]
struct Shard(Mutex<ShardMap>);

impl Shard {
    /// Nothing in a shard's critical sections can panic, so a poisoned lock still guards a
    /// consistent map.
    fn lock(&self) -> MutexGuard<'_, ShardMap> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn try_lock(&self) -> Option<MutexGuard<'_, ShardMap>> {
        match self.0.try_lock() {
            Ok(map) => Some(map),
            Err(TryLockError::Poisoned(p)) => Some(p.into_inner()),
            Err(TryLockError::WouldBlock) => None,
        }
    }
}

#[derive(Default)]
struct ShardMap {
    entries: HashMap<Slot, Entry, BuildHasherDefault<PassThrough>>,
    swept_at: Option<u64>,
}

impl ShardMap {
    fn swept_within(&self, now: u64, window: u64) -> bool {
        self.swept_at
            .is_some_and(|at| now.saturating_sub(at) < window)
    }
}

/// A keyed hash of a source, as foldhash makes one: two folded 64×64→128-bit multiplies,
/// a few nanoseconds where SipHash takes about twenty. The keys are drawn at random per
/// table, so nobody can choose addresses that land in one shard or one probe chain.
struct KeyedHash([u64; 3]);

impl KeyedHash {
    fn new() -> Self {
        let random = RandomState::new();
        KeyedHash([0u64, 1, 2].map(|i| random.hash_one(i)))
    }

    fn hash(&self, key: SourceKey) -> u64 {
        let (family, bits) = match key {
            SourceKey::V4(a) => (1, u64::from(u32::from(a))),
            SourceKey::V6Net(net) => (2, net),
        };
        let [k0, k1, k2] = self.0;
        fold(fold(bits ^ k0, family ^ k1), k2)
    }
}

/// Both halves of the 128-bit product, folded: every input bit reaches every output bit.
fn fold(a: u64, b: u64) -> u64 {
    let product = u128::from(a) * u128::from(b);
    (product as u64) ^ ((product >> 64) as u64)
}

/// A key with its hash, computed once per admission: the shard and the map both use it.
#[derive(Debug, Clone, Copy)]
struct Slot {
    hash: u64,
    key: SourceKey,
}

impl PartialEq for Slot {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key
    }
}

impl Eq for Slot {}

/// Equal keys have equal hashes, as `Eq` requires.
impl Hash for Slot {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

/// Hands the slot's precomputed hash to the map.
#[derive(Default)]
struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used (by `Slot`); mix anything else rather than drop it.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringlb_config::SourceRate;
    use std::cell::Cell;
    use std::net::Ipv4Addr;
    use std::ops::Deref;

    const MS: u64 = 1_000_000;

    /// A table, and the time the test moves by hand.
    struct Timed {
        table: SourceTable,
        now: Cell<u64>,
    }

    impl Deref for Timed {
        type Target = SourceTable;
        fn deref(&self) -> &SourceTable {
            &self.table
        }
    }

    impl Timed {
        fn admit(&self, ip: IpAddr, limits: &Limits) -> Verdict<'_> {
            self.table.admit(ip, limits, self.now.get())
        }

        fn maintain(&self) {
            self.table.maintain(self.now.get());
        }

        fn set(&self, t: u64) {
            self.now.set(t);
        }

        fn advance(&self, d: u64) {
            self.now.set(self.now.get() + d);
        }
    }

    fn table() -> Timed {
        Timed {
            table: SourceTable::new(),
            now: Cell::new(0),
        }
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    /// The i-th of many distinct IPv4 sources.
    fn nth(i: u32) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i))
    }

    fn connections(max: u32) -> Limits {
        Limits::new(Some(max), None, 100)
    }

    fn rate(per_second: u32, burst: u32, max_sources: u32) -> Limits {
        Limits::new(None, Some(SourceRate { per_second, burst }), max_sources)
    }

    fn tracked(v: Verdict<'_>) -> SourceSlot<'_> {
        match v {
            Verdict::Tracked(slot) => slot,
            Verdict::Untracked => panic!("untracked"),
            Verdict::Refused(over) => panic!("refused: {over:?}"),
        }
    }

    fn refused(v: Verdict<'_>) -> Option<Over> {
        match v {
            Verdict::Refused(over) => Some(over),
            _ => None,
        }
    }

    fn untracked(v: Verdict<'_>) -> bool {
        matches!(v, Verdict::Untracked)
    }

    #[test]
    fn one_source_over_max_connections_another_served() {
        let t = table();
        let l = connections(2);
        let a = ip("192.0.2.1");
        let held: Vec<_> = (0..2).map(|_| tracked(t.admit(a, &l))).collect();
        assert_eq!(refused(t.admit(a, &l)), Some(Over::Connections));
        let _b = tracked(t.admit(ip("192.0.2.2"), &l));
        assert_eq!(t.live(a), Some(2));
        drop(held);
        let _again = tracked(t.admit(a, &l));
        assert_eq!(t.live(a), Some(1));
    }

    #[test]
    fn ipv6_sources_share_their_64() {
        let t = table();
        let l = connections(1);
        let _one = tracked(t.admit(ip("2001:db8:0:1::1"), &l));
        assert_eq!(
            refused(t.admit(ip("2001:db8:0:1::2"), &l)),
            Some(Over::Connections)
        );
        let _other_net = tracked(t.admit(ip("2001:db8:0:2::1"), &l));
        // An IPv4 client on a dual-stack socket is its IPv4 address.
        let _v4 = tracked(t.admit(ip("::ffff:192.0.2.9"), &l));
        assert_eq!(
            refused(t.admit(ip("192.0.2.9"), &l)),
            Some(Over::Connections)
        );
    }

    #[test]
    fn rate_refuses_after_burst_and_admits_after_refill() {
        let t = table();
        let l = rate(10, 3, 100);
        let a = ip("192.0.2.1");
        t.set(1_000 * MS);
        for _ in 0..3 {
            drop(tracked(t.admit(a, &l)));
        }
        assert_eq!(refused(t.admit(a, &l)), Some(Over::Rate));
        // Another source has its own bucket.
        drop(tracked(t.admit(ip("192.0.2.2"), &l)));
        t.advance(99 * MS);
        assert_eq!(refused(t.admit(a, &l)), Some(Over::Rate));
        t.advance(MS);
        drop(tracked(t.admit(a, &l)));
        assert_eq!(refused(t.admit(a, &l)), Some(Over::Rate));
    }

    #[test]
    fn without_a_rate_a_source_leaves_with_its_last_connection() {
        let t = table();
        let l = connections(5);
        let first = tracked(t.admit(ip("192.0.2.1"), &l));
        let second = tracked(t.admit(ip("192.0.2.1"), &l));
        assert_eq!(t.len(), 1);
        drop(first);
        assert_eq!(t.len(), 1);
        drop(second);
        assert_eq!((t.len(), t.live(ip("192.0.2.1"))), (0, None));
    }

    #[test]
    fn a_rate_limited_source_stays_until_its_bucket_is_full() {
        let t = table();
        let l = rate(10, 2, 100);
        let a = ip("192.0.2.1");
        drop(tracked(t.admit(a, &l)));
        drop(tracked(t.admit(a, &l)));
        // Full again at 200 ms: it is remembered until then, or the next burst would be free.
        assert_eq!(t.len(), 1);
        t.set(199 * MS);
        sweep_everything(&t);
        assert_eq!(t.len(), 1);
        t.set(200 * MS);
        sweep_everything(&t);
        assert_eq!(t.len(), 0);
        // Even a connection that closes once the bucket is full leaves it to the sweep:
        // closing reads no clock.
        let slot = tracked(t.admit(a, &l));
        t.advance(100 * MS);
        drop(slot);
        assert_eq!(t.len(), 1);
        sweep_everything(&t);
        assert_eq!(t.len(), 0);
    }

    /// `maintain` calls enough to visit every shard, each more than a second apart.
    fn sweep_everything(t: &Timed) {
        for _ in 0..SHARDS / MAINTAIN_SHARDS {
            t.maintain();
        }
        // Put the shards' last sweep behind so the next call sweeps again.
        for shard in t.shards.iter() {
            shard.lock().swept_at = None;
        }
    }

    #[test]
    fn full_table_admits_new_sources_untracked_and_keeps_limiting_known_ones() {
        let t = table();
        let l = Limits::new(Some(1), None, 3);
        let held: Vec<_> = (0..3).map(|i| tracked(t.admit(nth(i), &l))).collect();
        assert!(untracked(t.admit(nth(3), &l)));
        assert!(untracked(t.admit(nth(4), &l)));
        assert_eq!(t.len(), 3);
        assert_eq!(refused(t.admit(nth(0), &l)), Some(Over::Connections));
        drop(held);
        assert_eq!(t.len(), 0);
        let _now_tracked = tracked(t.admit(nth(3), &l));
    }

    #[test]
    fn full_table_sweeps_idle_sources_at_most_once_per_gap() {
        let t = table();
        let l = rate(1000, 1, 2);
        // Two sources, each idle 1 ms after its connection.
        drop(tracked(t.admit(nth(0), &l)));
        drop(tracked(t.admit(nth(1), &l)));
        assert_eq!(t.len(), 2);
        t.set(MS);
        // Both are idle now; the full table sweeps and takes the new source.
        drop(tracked(t.admit(nth(2), &l)));
        assert_eq!(t.len(), 1);
        drop(tracked(t.admit(nth(3), &l)));
        t.set(2 * MS);
        // Full again with idle entries, but the last full sweep was under the gap ago.
        assert!(untracked(t.admit(nth(4), &l)));
        t.set(MS + FULL_SWEEP_GAP);
        drop(tracked(t.admit(nth(4), &l)));
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn limits_change_in_place() {
        let t = table();
        let a = ip("192.0.2.1");
        let held: Vec<_> = (0..3)
            .map(|_| tracked(t.admit(a, &connections(5))))
            .collect();
        // A reload lowers the limit below what the source holds: it keeps them, gets no more.
        assert_eq!(
            refused(t.admit(a, &connections(2))),
            Some(Over::Connections)
        );
        drop(held);
        let _ = tracked(t.admit(a, &connections(2)));
    }

    #[test]
    fn adopted_connections_count_without_a_check() {
        let t = table();
        let l = Limits::new(
            Some(1),
            Some(SourceRate {
                per_second: 1,
                burst: 1,
            }),
            2,
        );
        let a = ip("192.0.2.1");
        let adopted: Vec<_> = (0..3).map(|_| t.adopt(a, &l).unwrap()).collect();
        assert_eq!(t.live(a), Some(3));
        assert_eq!(refused(t.admit(a, &l)), Some(Over::Connections));
        let _b = t.adopt(nth(1), &l).unwrap();
        assert!(t.adopt(nth(2), &l).is_none(), "the table is full");
        drop(adopted);
        // No token was taken: the bucket is full and the source leaves at once.
        assert_eq!(t.live(a), None);
    }

    /// 100,000 distinct sources of short-lived connections against `max_sources` 1,000:
    /// the table never holds more, its buckets stay in proportion, and it empties and
    /// gives its memory back once they are gone.
    #[test]
    fn a_hundred_thousand_sources_stay_within_max_sources() {
        const SOURCES: u32 = 100_000;
        const MAX: u32 = 1_000;
        // Each shard's map at most doubles past what it holds, plus its smallest size.
        const BUCKETS: usize = 4 * MAX as usize + SHARDS * 16;

        // Without a rate a source leaves with its connection: every one is tracked.
        let t = table();
        let l = Limits::new(Some(1), None, MAX);
        for i in 0..SOURCES {
            drop(tracked(t.admit(nth(i), &l)));
            assert_eq!(t.len(), 0);
        }
        assert!(t.capacity() <= BUCKETS, "{}", t.capacity());

        // With a rate an entry stays 100 ms after its connection, and a new source comes
        // every 50 µs: twice what fits. The table fills, new sources go untracked, and
        // it never holds more than max_sources.
        let t = table();
        let l = rate(10, 1, MAX);
        let (mut kept, mut untracked_n, mut peak_capacity) = (0u32, 0u32, 0usize);
        for i in 0..SOURCES {
            t.set(u64::from(i) * 50_000);
            match t.admit(nth(i), &l) {
                Verdict::Tracked(slot) => {
                    kept += 1;
                    drop(slot);
                }
                Verdict::Untracked => untracked_n += 1,
                Verdict::Refused(over) => panic!("source {i} refused: {over:?}"),
            }
            assert!(t.len() <= MAX as usize, "{} entries at source {i}", t.len());
            if i % 1000 == 0 {
                t.maintain();
                peak_capacity = peak_capacity.max(t.capacity());
            }
        }
        assert_eq!(kept + untracked_n, SOURCES);
        // Full sweeps (at most one per 100 ms) make room for new sources all along: over
        // 5 s of arrivals a quarter or so of the sources are tracked (26,024 here).
        assert!(kept > SOURCES / 5, "{kept}");
        assert!(untracked_n > 0);
        assert!(peak_capacity <= BUCKETS, "{peak_capacity}");

        // Once every entry has expired the table empties and gives its memory back.
        t.advance(1_000 * MS);
        sweep_everything(&t);
        assert_eq!(t.len(), 0);
        assert!(t.capacity() <= SHARDS * SHRINK_ABOVE, "{}", t.capacity());
    }

    #[test]
    fn neighbouring_sources_spread_over_the_shards() {
        let t = table();
        let mut per_shard = [0u32; SHARDS];
        let keys = (0..65_536).map(nth).chain((0..65_536u64).map(|i| {
            IpAddr::V6(std::net::Ipv6Addr::from(
                (0x2001_0db8_0000_0000u128 + u128::from(i)) << 64,
            ))
        }));
        for ip in keys {
            let hash = t.slot(ip).hash;
            per_shard[(hash >> 32) as usize % SHARDS] += 1;
        }
        let mean = 2 * 65_536 / SHARDS as u32;
        assert!(
            per_shard
                .iter()
                .all(|&n| n > mean * 9 / 10 && n < mean * 11 / 10),
            "{per_shard:?}"
        );
    }

    #[test]
    fn workers_share_one_table() {
        let t = SourceTable::new();
        let l = Limits::new(Some(4), None, 1000);
        let a = ip("192.0.2.1");
        std::thread::scope(|s| {
            for w in 0..4u32 {
                let t = &t;
                s.spawn(move || {
                    for i in 0..20_000u32 {
                        // A shared source and sources of this thread's own.
                        let source = if i % 2 == 0 { a } else { nth(w * 100 + i % 50) };
                        if let Verdict::Tracked(slot) = t.admit(source, &l, 0) {
                            drop(slot);
                        }
                    }
                });
            }
        });
        assert_eq!(t.len(), 0, "every connection gave its count back");
        // And the shared source is limited across threads: 4 held, the 5th refused anywhere.
        let held: Vec<_> = (0..4)
            .map(|_| match t.admit(a, &l, 0) {
                Verdict::Tracked(slot) => slot,
                _ => panic!("not tracked"),
            })
            .collect();
        std::thread::scope(|s| {
            s.spawn(|| {
                assert!(matches!(
                    t.admit(a, &l, 0),
                    Verdict::Refused(Over::Connections)
                ))
            });
        });
        drop(held);
    }
}
