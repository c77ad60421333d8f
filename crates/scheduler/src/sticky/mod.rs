//! Learned stickiness: a bounded table, one per listener and shared by every worker, that
//! maps a client's key (its IP address, or its IP address and source-port range) to the
//! backend it last used, so that it comes back there after a reconnect even when the
//! backend set changed (docs/scheduler.md, "Stickiness").
//!
//! The table is a fixed array: no growth, no lock. Slots come in buckets of 8, one cache
//! line of meta words, and a key lives in one bucket chosen by a keyed hash (keyed at
//! random per table, so nobody can aim keys at one bucket to push another client out).
//! A meta word packs a key fingerprint (24 bits), the backend's sticky id (16 bits; 0 =
//! the slot is being written) and its last use in whole seconds (24 bits, wrapping every
//! 194 days); 0 is an empty slot. The full key sits beside it (three words) so entries can
//! be listed, carried over an upgrade and written to the state file. A hit reads the
//! bucket's meta line and, on a fingerprint match, the key; an update is one
//! compare-and-swap. A new key takes an empty slot of its bucket, else an expired one,
//! else the least recently used: the table never holds more than its size.
//!
//! Races between workers cost at most a stale answer (a valid backend, or a miss), never a
//! torn entry: a slot is claimed (id 0) by compare-and-swap before its key is written, and
//! published with the id after it.
//!
//! `dump` is the table's form for a live upgrade and the `state_file` sibling; `listener`
//! is what the [`Scheduler`](crate::Scheduler) does with a listener's table (ids per
//! backend label, settings, `single_active`, the sweep).

mod dump;
mod listener;

pub use dump::{decode_dumps, encode_dumps, DumpEntry, DumpError, StickyDump};
pub(crate) use listener::StickyState;
pub use listener::{ActiveChange, StickyStatus};

use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::sync::atomic::{AtomicU16, AtomicU64, AtomicUsize, Ordering};

use ringlb_config::StickinessKey;

use crate::hash::{fmix64, scale};

/// Slots per bucket: 8 meta words are one 64-byte cache line.
pub const BUCKET: usize = 8;
/// Bytes of memory per slot: the meta word and the three key words.
pub const SLOT_BYTES: usize = 32;

const TIME_BITS: u32 = 24;
const TIME_MASK: u64 = (1 << TIME_BITS) - 1;
const ID_SHIFT: u32 = TIME_BITS;
const ID_MASK: u64 = 0xffff;
const FP_SHIFT: u32 = 40;
const FP_MASK: u64 = 0xff_ffff;

/// A backend's identity in the table: stable across reloads for a label (`addr` as
/// written), 1..=65535. 0 is never a backend.
pub type StickyId = u16;

/// A meta word.
fn pack(fp: u64, id: StickyId, now: u32) -> u64 {
    (fp << FP_SHIFT) | (u64::from(id) << ID_SHIFT) | (u64::from(now) & TIME_MASK)
}

fn fp_of(m: u64) -> u64 {
    (m >> FP_SHIFT) & FP_MASK
}

fn id_of(m: u64) -> StickyId {
    ((m >> ID_SHIFT) & ID_MASK) as StickyId
}

/// Seconds since the entry's last use at `now`, modulo the 24-bit clock.
fn age_of(m: u64, now: u32) -> u32 {
    ((u64::from(now).wrapping_sub(m)) & TIME_MASK) as u32
}

/// What identifies a returning client: its address (IPv4 as such, whatever socket it came
/// through) and, with `key: source_ip_port_range`, the range of source ports it used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StickyKey {
    /// The address as 128 bits, IPv4 in its IPv4-mapped form.
    ip: u128,
    /// `lo..=hi` source ports; `None` with `key: source_ip`.
    ports: Option<(u16, u16)>,
}

/// Marks the third key word of a key with a port range.
const RANGE_FLAG: u64 = 1 << 63;

impl StickyKey {
    /// The key of a client at `peer` for a listener keyed by `kind`.
    pub fn of(peer: SocketAddr, kind: StickinessKey) -> StickyKey {
        let ip = match peer.ip().to_canonical() {
            IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
            IpAddr::V6(v6) => u128::from(v6),
        };
        let ports = match kind {
            StickinessKey::SourceIp => None,
            StickinessKey::SourceIpPortRange { port_range } => {
                let n = port_range.clamp(1, 65_536);
                let lo = u32::from(peer.port()) / n * n;
                let hi = (lo + n - 1).min(65_535);
                Some((lo as u16, hi as u16))
            }
        };
        StickyKey { ip, ports }
    }

    /// The client's address.
    pub fn ip(&self) -> IpAddr {
        IpAddr::V6(Ipv6Addr::from(self.ip)).to_canonical()
    }

    /// The source ports the key covers, with `key: source_ip_port_range`.
    pub fn ports(&self) -> Option<(u16, u16)> {
        self.ports
    }

    pub(crate) fn words(&self) -> [u64; 3] {
        let range = self.ports.map_or(0, |(lo, hi)| {
            RANGE_FLAG | (u64::from(lo) << 16) | u64::from(hi)
        });
        [(self.ip >> 64) as u64, self.ip as u64, range]
    }

    /// `None` for words no key encodes to (a corrupt dump).
    pub(crate) fn from_words(w: [u64; 3]) -> Option<StickyKey> {
        let ip = (u128::from(w[0]) << 64) | u128::from(w[1]);
        let ports = match w[2] {
            0 => None,
            r if r & RANGE_FLAG != 0 && (r & !RANGE_FLAG) >> 32 == 0 => {
                let (lo, hi) = ((r >> 16) as u16, r as u16);
                if lo > hi {
                    return None;
                }
                Some((lo, hi))
            }
            _ => return None,
        };
        Some(StickyKey { ip, ports })
    }
}

impl fmt::Display for StickyKey {
    /// `10.1.2.3`, `10.1.2.3:1024-2047`, `2001:db8::1`, `[2001:db8::1]:1024-2047`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.ip(), self.ports) {
            (ip, None) => write!(f, "{ip}"),
            (IpAddr::V4(ip), Some((lo, hi))) => write!(f, "{ip}:{lo}-{hi}"),
            (IpAddr::V6(ip), Some((lo, hi))) => write!(f, "[{ip}]:{lo}-{hi}"),
        }
    }
}

/// Which entries `ringlb ctl stick clear LISTENER KEY` clears: every key of an address
/// (`10.1.2.3`), the key whose port range holds a port (`10.1.2.3:1500`), or one range
/// exactly as listed (`10.1.2.3:1024-2047`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyFilter {
    ip: u128,
    ports: Option<(u16, u16)>,
}

impl KeyFilter {
    pub fn matches(&self, key: &StickyKey) -> bool {
        key.ip == self.ip
            && match (self.ports, key.ports) {
                (None, _) => true,
                (Some(_), None) => false,
                (Some((lo, hi)), Some((klo, khi))) => klo <= lo && hi <= khi,
            }
    }
}

impl FromStr for KeyFilter {
    type Err = String;

    fn from_str(text: &str) -> Result<KeyFilter, String> {
        let wrong = || {
            format!(
                "{text:?} is not a sticky key: write an address (10.1.2.3, 2001:db8::1), an address and a port (10.1.2.3:1500, [2001:db8::1]:1500) or a key as listed (10.1.2.3:1024-2047)"
            )
        };
        let ip_bits = |ip: IpAddr| match ip.to_canonical() {
            IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
            IpAddr::V6(v6) => u128::from(v6),
        };
        if let Ok(ip) = text.parse::<IpAddr>() {
            return Ok(KeyFilter {
                ip: ip_bits(ip),
                ports: None,
            });
        }
        let (host, ports) = text.rsplit_once(':').ok_or_else(wrong)?;
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        let ip: IpAddr = host.parse().map_err(|_| wrong())?;
        let (lo, hi) = match ports.split_once('-') {
            Some((lo, hi)) => (lo.parse::<u16>(), hi.parse::<u16>()),
            None => (ports.parse::<u16>(), ports.parse::<u16>()),
        };
        match (lo, hi) {
            (Ok(lo), Ok(hi)) if lo <= hi => Ok(KeyFilter {
                ip: ip_bits(ip),
                ports: Some((lo, hi)),
            }),
            _ => Err(wrong()),
        }
    }
}

/// What [`StickyTable::remember`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Remembered {
    /// The key's entry was there and now says this backend and this time.
    Updated,
    /// A new entry in a free (or expired) slot.
    Inserted,
    /// A new entry in place of the least recently used live entry of its bucket: the
    /// table is too small for the clients it sees.
    Evicted,
    /// Lost races for every slot it tried (or no backend id): nothing written.
    Skipped,
}

/// One listener's table of learned backends. See the module documentation.
pub struct StickyTable {
    meta: Box<[AtomicU64]>,
    keys: Box<[[AtomicU64; 3]]>,
    buckets: u64,
    seed: [u64; 2],
    /// Slots holding an entry (live or expired, until the sweep clears it).
    len: AtomicUsize,
    /// `single_active`: the backend every client goes to (0: none chosen yet).
    active: AtomicU16,
    /// Where the next [`StickyTable::sweep`] starts.
    cursor: AtomicUsize,
}

impl fmt::Debug for StickyTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StickyTable")
            .field("capacity", &self.capacity())
            .field("len", &self.len())
            .field("active", &self.active())
            .finish_non_exhaustive()
    }
}

impl StickyTable {
    /// A table of at least `size` slots (rounded up to whole buckets), keyed at random.
    pub fn new(size: u32) -> StickyTable {
        let random = std::collections::hash_map::RandomState::new();
        let mut a = random.build_hasher();
        a.write_u64(0x5354_4943_4b59_0001);
        let mut b = random.build_hasher();
        b.write_u64(0x5354_4943_4b59_0002);
        StickyTable::with_seed(size, [a.finish(), b.finish()])
    }

    /// A table with a given hash key (tests).
    pub fn with_seed(size: u32, seed: [u64; 2]) -> StickyTable {
        let buckets = (size as usize).div_ceil(BUCKET).max(1);
        let slots = buckets * BUCKET;
        // Every page is touched here, once: the table's memory is fixed from now on.
        StickyTable {
            meta: (0..slots).map(|_| AtomicU64::new(0)).collect(),
            keys: (0..slots)
                .map(|_| [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)])
                .collect(),
            buckets: buckets as u64,
            seed,
            len: AtomicUsize::new(0),
            active: AtomicU16::new(0),
            cursor: AtomicUsize::new(0),
        }
    }

    /// Slots: the most entries the table ever holds.
    pub fn capacity(&self) -> usize {
        self.meta.len()
    }

    /// The table's memory in bytes (fixed at creation).
    pub fn memory(&self) -> usize {
        self.meta.len() * std::mem::size_of::<AtomicU64>()
            + self.keys.len() * std::mem::size_of::<[AtomicU64; 3]>()
    }

    /// Entries held (live or expired and not swept yet).
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The first slot of `words`' bucket and its fingerprint (never 0).
    fn place(&self, words: &[u64; 3]) -> (usize, u64) {
        let h =
            fmix64(fmix64(fmix64(words[0] ^ self.seed[0]) ^ words[1]) ^ words[2] ^ self.seed[1]);
        let bucket = scale(h, self.buckets) as usize;
        ((bucket * BUCKET), (h & FP_MASK).max(1))
    }

    fn key_at(&self, slot: usize) -> [u64; 3] {
        let k = &self.keys[slot];
        [
            k[0].load(Ordering::Relaxed),
            k[1].load(Ordering::Relaxed),
            k[2].load(Ordering::Relaxed),
        ]
    }

    /// The backend `key` last used, unless its entry is older than `expire` seconds at
    /// `now`. Lock-free: one cache line of meta words, and the key on a fingerprint match.
    pub fn lookup(&self, key: &StickyKey, now: u32, expire: u32) -> Option<StickyId> {
        let words = key.words();
        let (first, fp) = self.place(&words);
        for slot in first..first + BUCKET {
            let m = self.meta[slot].load(Ordering::Acquire);
            if m == 0 || fp_of(m) != fp || id_of(m) == 0 {
                continue;
            }
            // A key rewritten meanwhile can only read as ours if every word still is:
            // then this is an answer from just before the slot was taken.
            if self.key_at(slot) == words {
                return (age_of(m, now) < expire).then_some(id_of(m));
            }
        }
        None
    }

    /// Records that `key` used backend `id` at `now`.
    pub fn remember(&self, key: &StickyKey, id: StickyId, now: u32, expire: u32) -> Remembered {
        self.remember_words(&key.words(), id, now, now, expire)
    }

    /// Writes the entry with last use `at` (≤ `now`, for entries restored or moved);
    /// eviction ranks slots by their age at `now`.
    fn remember_words(
        &self,
        words: &[u64; 3],
        id: StickyId,
        at: u32,
        now: u32,
        expire: u32,
    ) -> Remembered {
        if id == 0 {
            return Remembered::Skipped;
        }
        let (first, fp) = self.place(words);
        let entry = pack(fp, id, at);
        // A few rounds: each lost compare-and-swap means another worker changed the
        // bucket, so look again.
        'round: for _ in 0..4 {
            // The best slot to take: empty (rank MAX), else expired, else the oldest.
            let mut victim: Option<(usize, u64, u64)> = None;
            for slot in first..first + BUCKET {
                let m = self.meta[slot].load(Ordering::Acquire);
                let rank = if m == 0 {
                    u64::MAX
                } else if id_of(m) == 0 {
                    // Being written by another worker.
                    continue;
                } else if fp_of(m) == fp && self.key_at(slot) == *words {
                    if m == entry {
                        return Remembered::Updated;
                    }
                    if self.meta[slot]
                        .compare_exchange(m, entry, Ordering::AcqRel, Ordering::Acquire)
                        .is_ok()
                    {
                        return Remembered::Updated;
                    }
                    continue 'round;
                } else {
                    let age = age_of(m, now);
                    if age >= expire {
                        u64::MAX - 1
                    } else {
                        u64::from(age)
                    }
                };
                if victim.is_none_or(|(_, _, best)| rank > best) {
                    victim = Some((slot, m, rank));
                }
            }
            let Some((slot, old, _)) = victim else {
                return Remembered::Skipped;
            };
            // Claim (id 0: readers skip it), write the key, then publish.
            if self.meta[slot]
                .compare_exchange(old, pack(fp, 0, at), Ordering::AcqRel, Ordering::Acquire)
                .is_err()
            {
                continue;
            }
            for (word, value) in self.keys[slot].iter().zip(words) {
                word.store(*value, Ordering::Relaxed);
            }
            self.meta[slot].store(entry, Ordering::Release);
            if old == 0 {
                self.len.fetch_add(1, Ordering::Relaxed);
                return Remembered::Inserted;
            }
            return if age_of(old, now) < expire {
                Remembered::Evicted
            } else {
                Remembered::Inserted
            };
        }
        Remembered::Skipped
    }

    /// Clears slot `slot` if it still holds `m`; counts it.
    fn clear_slot(&self, slot: usize, m: u64) -> bool {
        let cleared = self.meta[slot]
            .compare_exchange(m, 0, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok();
        if cleared {
            self.len.fetch_sub(1, Ordering::Relaxed);
        }
        cleared
    }

    /// Clears up to `slots` slots from where the last sweep stopped: entries older than
    /// `expire` at `now`, and those whose backend is no longer configured (`live(id)`
    /// false). Returns how many it cleared. The control plane calls it a few times a
    /// second, so expired entries leave the count within a pass over the table.
    pub fn sweep(
        &self,
        now: u32,
        expire: u32,
        slots: usize,
        live: impl Fn(StickyId) -> bool,
    ) -> usize {
        let n = self.meta.len();
        let start = self.cursor.load(Ordering::Relaxed) % n;
        let count = slots.min(n);
        self.cursor.store((start + count) % n, Ordering::Relaxed);
        let mut cleared = 0;
        for k in 0..count {
            let slot = (start + k) % n;
            let m = self.meta[slot].load(Ordering::Acquire);
            if m == 0 || id_of(m) == 0 {
                continue;
            }
            if (age_of(m, now) >= expire || !live(id_of(m))) && self.clear_slot(slot, m) {
                cleared += 1;
            }
        }
        cleared
    }

    /// Clears every entry `filter` matches (every entry without one); returns how many.
    pub fn clear(&self, filter: Option<&KeyFilter>) -> usize {
        let mut cleared = 0;
        for slot in 0..self.meta.len() {
            let m = self.meta[slot].load(Ordering::Acquire);
            if m == 0 || id_of(m) == 0 {
                continue;
            }
            let hit = match filter {
                None => true,
                Some(f) => StickyKey::from_words(self.key_at(slot)).is_some_and(|k| f.matches(&k)),
            };
            if hit && self.clear_slot(slot, m) {
                cleared += 1;
            }
        }
        cleared
    }

    /// Every entry younger than `expire` at `now`: key, backend id and age in seconds. A
    /// key written twice by racing workers (always into one bucket) is listed once, with
    /// its latest use. Walks the table bucket by bucket: no memory beyond the result.
    pub fn entries(&self, now: u32, expire: u32) -> Vec<(StickyKey, StickyId, u32)> {
        let mut out: Vec<(StickyKey, StickyId, u32)> = Vec::new();
        for first in (0..self.meta.len()).step_by(BUCKET) {
            let bucket_start = out.len();
            for slot in first..first + BUCKET {
                let Some((key, id, age)) = self.entry_at(slot, now) else {
                    continue;
                };
                if age >= expire {
                    continue;
                }
                match out[bucket_start..].iter_mut().find(|(k, _, _)| *k == key) {
                    Some(seen) if age < seen.2 => *seen = (key, id, age),
                    Some(_) => {}
                    None => out.push((key, id, age)),
                }
            }
        }
        out
    }

    /// The entry in `slot`, unless it is empty, being written, or was retaken or torn by a
    /// writer while it was read.
    fn entry_at(&self, slot: usize, now: u32) -> Option<(StickyKey, StickyId, u32)> {
        let m = self.meta[slot].load(Ordering::Acquire);
        if m == 0 || id_of(m) == 0 {
            return None;
        }
        let words = self.key_at(slot);
        let again = self.meta[slot].load(Ordering::Acquire);
        if (fp_of(again), id_of(again)) != (fp_of(m), id_of(m)) || self.place(&words).1 != fp_of(m)
        {
            return None;
        }
        Some((
            StickyKey::from_words(words)?,
            id_of(again),
            age_of(again, now),
        ))
    }

    /// Puts an entry back (previous process, state file, a resized table) as used `age`
    /// seconds before `now`; nothing when that is already past `expire`.
    pub fn restore(&self, key: &StickyKey, id: StickyId, age: u32, now: u32, expire: u32) -> bool {
        if age >= expire {
            return false;
        }
        let at = now.wrapping_sub(age);
        !matches!(
            self.remember_words(&key.words(), id, at, now, expire),
            Remembered::Skipped
        )
    }

    /// `single_active`: the backend every client goes to, if one was chosen.
    pub fn active(&self) -> Option<StickyId> {
        match self.active.load(Ordering::Acquire) {
            0 => None,
            id => Some(id),
        }
    }

    /// Makes `to` the active backend if it still is `from`; whether it now is `to`.
    pub fn swap_active(&self, from: Option<StickyId>, to: StickyId) -> bool {
        match self.active.compare_exchange(
            from.unwrap_or(0),
            to,
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => true,
            Err(now) => now == to,
        }
    }

    /// Sets (or with `None` forgets) the active backend unconditionally.
    pub fn set_active(&self, id: Option<StickyId>) {
        self.active.store(id.unwrap_or(0), Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    const HOUR: u32 = 3600;

    fn key(n: u32) -> StickyKey {
        let ip = Ipv4Addr::from(0x0a00_0000 | n);
        StickyKey::of(SocketAddr::new(IpAddr::V4(ip), 0), StickinessKey::SourceIp)
    }

    fn table(size: u32) -> StickyTable {
        StickyTable::with_seed(size, [1, 2])
    }

    #[test]
    fn a_remembered_key_is_found_until_it_expires() {
        let t = table(64);
        assert_eq!(t.lookup(&key(1), 100, HOUR), None);
        assert_eq!(t.remember(&key(1), 7, 100, HOUR), Remembered::Inserted);
        assert_eq!(t.lookup(&key(1), 100, HOUR), Some(7));
        assert_eq!(t.lookup(&key(1), 100 + HOUR - 1, HOUR), Some(7));
        assert_eq!(t.lookup(&key(1), 100 + HOUR, HOUR), None, "expired");
        assert_eq!(t.lookup(&key(2), 100, HOUR), None);
        // A new backend and a new time for the same key: one entry.
        assert_eq!(t.remember(&key(1), 9, 200, HOUR), Remembered::Updated);
        assert_eq!(t.lookup(&key(1), 200, HOUR), Some(9));
        assert_eq!(t.len(), 1);
        // Refreshing keeps it alive past the first expiry.
        assert_eq!(t.lookup(&key(1), 200 + HOUR - 1, HOUR), Some(9));
    }

    #[test]
    fn ports_make_separate_keys() {
        let peer = |port| SocketAddr::from(([10, 0, 0, 1], port));
        let by_range = StickinessKey::SourceIpPortRange { port_range: 1024 };
        assert_eq!(
            StickyKey::of(peer(1024), by_range),
            StickyKey::of(peer(2047), by_range)
        );
        assert_ne!(
            StickyKey::of(peer(1023), by_range),
            StickyKey::of(peer(1024), by_range)
        );
        assert_eq!(
            StickyKey::of(peer(1), StickinessKey::SourceIp),
            StickyKey::of(peer(60_000), StickinessKey::SourceIp)
        );
        let k = StickyKey::of(peer(65_535), by_range);
        assert_eq!(k.ports(), Some((64_512, 65_535)));
        assert_eq!(k.to_string(), "10.0.0.1:64512-65535");
        let whole = StickinessKey::SourceIpPortRange { port_range: 65_536 };
        assert_eq!(StickyKey::of(peer(9), whole).ports(), Some((0, 65_535)));
        let t = table(64);
        t.remember(&StickyKey::of(peer(1500), by_range), 1, 0, HOUR);
        assert_eq!(
            t.lookup(&StickyKey::of(peer(1100), by_range), 0, HOUR),
            Some(1)
        );
        assert_eq!(
            t.lookup(&StickyKey::of(peer(3000), by_range), 0, HOUR),
            None
        );
    }

    #[test]
    fn ipv4_is_the_same_key_through_a_dual_stack_socket() {
        let v4 = SocketAddr::from(([10, 1, 2, 3], 5));
        let mapped = SocketAddr::new(IpAddr::V6(Ipv4Addr::new(10, 1, 2, 3).to_ipv6_mapped()), 5);
        assert_eq!(
            StickyKey::of(v4, StickinessKey::SourceIp),
            StickyKey::of(mapped, StickinessKey::SourceIp)
        );
        assert_eq!(
            StickyKey::of(mapped, StickinessKey::SourceIp).to_string(),
            "10.1.2.3"
        );
        let v6 = SocketAddr::from((Ipv6Addr::LOCALHOST, 7));
        let k = StickyKey::of(v6, StickinessKey::SourceIpPortRange { port_range: 4 });
        assert_eq!(k.to_string(), "[::1]:4-7");
    }

    #[test]
    fn a_full_table_evicts_the_least_recently_used_of_the_bucket() {
        // One bucket: the ninth key takes the oldest slot.
        let t = table(8);
        assert_eq!(t.capacity(), 8);
        for n in 0..8 {
            assert_eq!(t.remember(&key(n), 1, 10 + n, HOUR), Remembered::Inserted);
        }
        // Key 0 is used again: key 1 is now the least recently used.
        t.remember(&key(0), 1, 30, HOUR);
        assert_eq!(t.remember(&key(100), 2, 31, HOUR), Remembered::Evicted);
        assert_eq!(t.len(), 8);
        assert_eq!(t.lookup(&key(1), 31, HOUR), None, "evicted");
        assert_eq!(t.lookup(&key(0), 31, HOUR), Some(1));
        assert_eq!(t.lookup(&key(100), 31, HOUR), Some(2));
        // An expired entry goes before any live one, and is no eviction.
        let t = table(8);
        for n in 0..8 {
            t.remember(&key(n), 1, 1000 + n, HOUR);
        }
        t.remember(&key(5), 1, 0, HOUR);
        assert_eq!(t.remember(&key(200), 3, 3700, HOUR), Remembered::Inserted);
        assert_eq!(t.lookup(&key(5), 3700, HOUR), None);
        assert_eq!(t.lookup(&key(0), 3700, HOUR), Some(1));
        assert_eq!(t.lookup(&key(200), 3700, HOUR), Some(3));
    }

    #[test]
    fn filling_the_table_keeps_it_at_its_size() {
        let t = table(1000);
        assert_eq!(t.capacity(), 1000);
        for n in 0..1000 {
            t.remember(&key(n), 1, 5, HOUR);
        }
        assert!(t.len() <= t.capacity());
        let found = (0..1000)
            .filter(|&n| t.lookup(&key(n), 5, HOUR).is_some())
            .count();
        // Buckets fill unevenly: a full table holds most, never more than its size.
        assert!(found >= 700, "{found}");
        assert_eq!(found, t.len());
    }

    #[test]
    fn a_million_keys_of_churn_stay_within_the_table_and_its_memory() {
        let t = StickyTable::new(65_536);
        let (capacity, memory) = (t.capacity(), t.memory());
        assert_eq!(memory, capacity * SLOT_BYTES);
        let mut evicted = 0;
        for n in 0..1_000_000u32 {
            // One new key a second's sixteenth: ~17 hours of clock, expire 1 h.
            if t.remember(&key(n), (n % 7 + 1) as u16, n / 16, HOUR) == Remembered::Evicted {
                evicted += 1;
            }
            assert!(t.len() <= capacity);
        }
        assert_eq!((t.capacity(), t.memory()), (capacity, memory));
        assert!(evicted > 0, "the keys of the last hour outnumber the slots");
        // The most recent keys are all there (a bucket keeps its 8 youngest).
        let now = 999_999 / 16;
        let recent = (990_000..1_000_000)
            .filter(|&n| t.lookup(&key(n), now, HOUR) == Some((n % 7 + 1) as u16))
            .count();
        assert!(recent >= 9_990, "{recent} of the last 10,000 keys");
    }

    #[test]
    fn the_sweep_clears_expired_entries_and_removed_backends() {
        let t = table(64);
        t.remember(&key(1), 1, 0, HOUR);
        t.remember(&key(2), 2, 0, HOUR);
        t.remember(&key(3), 1, HOUR, HOUR);
        assert_eq!(t.len(), 3);
        // Backend 2 is gone; key 1 expired; key 3 stays.
        assert_eq!(t.sweep(HOUR, HOUR, 1_000, |id| id != 2), 2);
        assert_eq!(t.len(), 1);
        assert_eq!(t.lookup(&key(3), HOUR, HOUR), Some(1));
        // A pass in pieces covers the whole table.
        let t = table(64);
        for n in 0..20 {
            t.remember(&key(n), 1, 0, HOUR);
        }
        let cleared: usize = (0..8).map(|_| t.sweep(HOUR, HOUR, 8, |_| true)).sum();
        assert_eq!((cleared, t.len()), (20, 0));
    }

    #[test]
    fn clear_by_address_port_or_everything() {
        let t = table(64);
        let by_range = StickinessKey::SourceIpPortRange { port_range: 100 };
        let peer = |last: u8, port| SocketAddr::from(([10, 0, 0, last], port));
        for (last, port) in [(1, 50), (1, 150), (2, 50)] {
            t.remember(&StickyKey::of(peer(last, port), by_range), 1, 0, HOUR);
        }
        assert_eq!(t.clear(Some(&"10.0.0.1:120".parse().unwrap())), 1);
        assert_eq!(t.clear(Some(&"10.0.0.9".parse().unwrap())), 0);
        assert_eq!(t.clear(Some(&"10.0.0.1".parse().unwrap())), 1);
        assert_eq!(t.len(), 1);
        assert_eq!(t.clear(None), 1);
        assert!(t.is_empty());
        for bad in ["", "10.0.0", "10.0.0.1:x", "10.0.0.1:9-3", "host:80"] {
            assert!(bad.parse::<KeyFilter>().is_err(), "{bad}");
        }
        for good in ["::1", "[::1]:80", "[::1]:0-99", "10.0.0.1:0-65535"] {
            assert!(good.parse::<KeyFilter>().is_ok(), "{good}");
        }
    }

    #[test]
    fn entries_list_live_keys_with_their_ages() {
        let t = table(64);
        t.remember(&key(1), 3, 100, HOUR);
        t.remember(&key(2), 4, 150, HOUR);
        t.remember(&key(3), 4, 0, 60);
        let mut e = t.entries(160, 120);
        e.sort();
        assert_eq!(e, vec![(key(1), 3, 60), (key(2), 4, 10)]);
    }

    #[test]
    fn restored_entries_keep_their_age() {
        let t = table(64);
        assert!(t.restore(&key(1), 2, 30, 1000, 60));
        assert!(!t.restore(&key(2), 2, 60, 1000, 60), "already expired");
        assert_eq!(t.entries(1010, 60), vec![(key(1), 2, 40)]);
        assert_eq!(t.lookup(&key(1), 1029, 60), Some(2));
        assert_eq!(t.lookup(&key(1), 1030, 60), None);
    }

    #[test]
    fn the_clock_wraps_without_losing_ages() {
        let t = table(64);
        let before = (1 << TIME_BITS) - 5;
        t.remember(&key(1), 2, before, HOUR);
        assert_eq!(t.lookup(&key(1), before + 10, HOUR), Some(2));
        assert_eq!(t.entries(before + 10, HOUR), vec![(key(1), 2, 10)]);
    }

    #[test]
    fn the_active_backend_moves_by_compare_and_swap() {
        let t = table(8);
        assert_eq!(t.active(), None);
        assert!(t.swap_active(None, 3));
        assert!(!t.swap_active(None, 4), "another worker chose first");
        assert_eq!(t.active(), Some(3));
        assert!(t.swap_active(Some(3), 4));
        t.set_active(None);
        assert_eq!(t.active(), None);
    }

    #[test]
    fn workers_racing_on_one_table_never_exceed_it() {
        let t = std::sync::Arc::new(table(256));
        let threads: Vec<_> = (0..4u32)
            .map(|w| {
                let t = std::sync::Arc::clone(&t);
                std::thread::spawn(move || {
                    for n in 0..20_000u32 {
                        let k = key(n % 2_000 + w);
                        t.remember(&k, (w + 1) as u16, n / 100, HOUR);
                        let _ = t.lookup(&k, n / 100, HOUR);
                    }
                })
            })
            .collect();
        for th in threads {
            th.join().unwrap();
        }
        assert!(t.len() <= t.capacity());
        let listed = t.entries(200, HOUR);
        assert!(listed.len() <= t.capacity());
        assert!(listed.iter().all(|(_, id, _)| (1..=4).contains(id)));
    }
}
