//! Precomputed tables, built off the hot path when a snapshot is published.

use crate::hash::{name_hash, scale, NAME_BASIS_OFFSET, NAME_BASIS_SKIP};

/// Longest smooth weighted-round-robin schedule. Weights whose reduced sum exceeds it are
/// scaled down proportionally (each stays ≥ 1), so shares are then exact to within
/// about `n / MAX_SCHEDULE`.
pub(crate) const MAX_SCHEDULE: u64 = 1 << 16;

/// Default maglev table size (prime). Larger sets use the next prime ≥ 100 × backends.
pub const MAGLEV_DEFAULT_SIZE: u64 = 65_537;

/// Maglev table size for a listener with `backends` configured backends. It depends on the
/// configured count only, never on the up set, so a health flip does not change `M` (which
/// would remap every client).
pub fn maglev_table_size(backends: usize) -> u64 {
    let wanted = (backends as u64)
        .saturating_mul(100)
        .max(MAGLEV_DEFAULT_SIZE);
    crate::hash::next_prime(wanted)
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// nginx's smooth weighted round robin, unrolled into one full period.
///
/// Each step every entry gains its weight; the entry with the largest current value is
/// chosen (the first one on ties, as nginx does) and loses the total. For weights 5,1,1
/// this yields `a a b a c a a`: the heavy backend is interleaved, never sent a burst of
/// its whole weight. `members[k]` has weight `weights[k]`; the result holds members.
pub(crate) fn smooth_wrr(members: &[u32], weights: &[u32]) -> Vec<u32> {
    debug_assert_eq!(members.len(), weights.len(), "one weight per member");
    if members.is_empty() {
        return Vec::new();
    }
    let mut w: Vec<u64> = weights.iter().map(|&x| u64::from(x.max(1))).collect();
    let g = w.iter().copied().fold(0, gcd).max(1);
    w.iter_mut().for_each(|x| *x /= g);
    let sum: u64 = w.iter().sum();
    if sum > MAX_SCHEDULE {
        for x in w.iter_mut() {
            let scaled = u128::from(*x) * u128::from(MAX_SCHEDULE) / u128::from(sum);
            *x = (scaled as u64).max(1);
        }
    }
    let total: i64 = w.iter().map(|&x| x as i64).sum();
    let mut current = vec![0i64; w.len()];
    let mut schedule = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for k in 0..w.len() {
            current[k] += w[k] as i64;
            if current[k] > current[best] {
                best = k;
            }
        }
        current[best] -= total;
        schedule.push(members[best]);
    }
    schedule
}

/// The maglev permutation of each member: a walk over the slots from `H1(label) mod M`
/// in steps of `H2(label) mod (M−1) + 1`. The step is coprime with the prime `M`, so every
/// walk visits every slot.
struct Permutations {
    next: Vec<u64>,
    skip: Vec<u64>,
    size: u64,
}

impl Permutations {
    fn new(labels: &[&str], size: u64) -> Self {
        let next = labels
            .iter()
            .map(|l| name_hash(l.as_bytes(), NAME_BASIS_OFFSET) % size)
            .collect();
        let skip = labels
            .iter()
            .map(|l| name_hash(l.as_bytes(), NAME_BASIS_SKIP) % (size - 1) + 1)
            .collect();
        Permutations { next, skip, size }
    }

    fn step(&self, k: usize, pos: u64) -> u64 {
        let pos = pos + self.skip[k];
        if pos >= self.size {
            pos - self.size
        } else {
            pos
        }
    }

    /// Give `member` (walk `k`) the next slot on its walk that holds `free`; its walk goes
    /// on after that slot next time. The caller guarantees such a slot exists.
    fn claim(&mut self, k: usize, table: &mut [u32], free: u32, member: u32) {
        let mut pos = self.next[k];
        while table[pos as usize] != free {
            pos = self.step(k, pos);
        }
        table[pos as usize] = member;
        self.next[k] = self.step(k, pos);
    }
}

/// Weighted maglev lookup table of `size` slots (a prime) holding members.
///
/// Permutation of member k: `offset = H1(label) mod M`, `skip = H2(label) mod (M−1) + 1`,
/// with H1/H2 the fixed FNV-1a+fmix64 hashes of the label. Filling goes in rounds; every
/// round each member adds its weight to a credit and, while the credit reaches the largest
/// weight, claims its next free preferred slot (Katran's weighted variant). At equal
/// weights every member claims once per round, so slot counts differ by at most one.
pub(crate) fn maglev(members: &[u32], labels: &[&str], weights: &[u32], size: u64) -> Vec<u32> {
    debug_assert_eq!(members.len(), labels.len(), "one label per member");
    debug_assert_eq!(members.len(), weights.len(), "one weight per member");
    const EMPTY: u32 = u32::MAX;
    let m = size as usize;
    if members.is_empty() || m < 2 {
        return Vec::new();
    }
    let mut walks = Permutations::new(labels, size);
    let w: Vec<u64> = weights.iter().map(|&x| u64::from(x.max(1))).collect();
    let max_w = w.iter().copied().max().unwrap_or(1);
    let mut credit = vec![0u64; members.len()];
    let mut table = vec![EMPTY; m];
    let mut filled = 0usize;
    loop {
        for k in 0..members.len() {
            credit[k] += w[k];
            if credit[k] < max_w {
                continue;
            }
            credit[k] -= max_w;
            // The table is not full, so the walk finds a free slot.
            walks.claim(k, &mut table, EMPTY, members[k]);
            filled += 1;
            if filled == m {
                return table;
            }
        }
    }
}

/// The maglev table for the up members, derived from the table of all members (`base`):
/// slots held by an up member stay where they are; each slot of a down member is handed
/// to an up member. Handing-out goes least-filled first (fewest slots per unit of weight,
/// then lowest position), and each taker claims the next free orphan slot along its own
/// permutation. So a health change moves exactly the down backends' clients, balance
/// stays within one slot at equal weights, and the result is a pure function of
/// (configured set, up set): every ringlb instance computes the same table, and a
/// recovered backend gets back exactly its old slots.
pub(crate) fn maglev_restrict(
    base: &[u32],
    members: &[u32],
    labels: &[&str],
    weights: &[u32],
    up: &[bool],
) -> Vec<u32> {
    use std::cmp::Ordering;
    use std::collections::BinaryHeap;
    const ORPHAN: u32 = u32::MAX;

    #[derive(PartialEq, Eq)]
    struct Taker {
        slots: u64,
        weight: u64,
        pos: usize,
    }
    impl Ord for Taker {
        // Max-heap: the greatest is the one with the lowest (slots + 1) / weight.
        fn cmp(&self, other: &Self) -> Ordering {
            let mine = u128::from(self.slots + 1) * u128::from(other.weight);
            let theirs = u128::from(other.slots + 1) * u128::from(self.weight);
            theirs.cmp(&mine).then_with(|| other.pos.cmp(&self.pos))
        }
    }
    impl PartialOrd for Taker {
        fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
            Some(self.cmp(other))
        }
    }

    let size = base.len() as u64;
    let is_up = |backend: u32| up.get(backend as usize).copied().unwrap_or(false);
    if size < 2 || !members.iter().any(|&m| is_up(m)) {
        return base.to_vec();
    }
    let mut table = base.to_vec();
    let mut slots = vec![0u64; members.len()];
    let position: std::collections::HashMap<u32, usize> =
        members.iter().enumerate().map(|(p, &m)| (m, p)).collect();
    let mut orphans = 0usize;
    for entry in table.iter_mut() {
        match position.get(entry) {
            Some(&p) if is_up(*entry) => slots[p] += 1,
            _ => {
                *entry = ORPHAN;
                orphans += 1;
            }
        }
    }
    let mut walks = Permutations::new(labels, size);
    let mut heap: BinaryHeap<Taker> = members
        .iter()
        .enumerate()
        .filter(|&(_, &m)| is_up(m))
        .map(|(pos, _)| Taker {
            slots: slots[pos],
            weight: u64::from(weights[pos].max(1)),
            pos,
        })
        .collect();
    while orphans > 0 {
        let Some(mut taker) = heap.pop() else { break };
        let k = taker.pos;
        // An orphan is left, so the walk finds one.
        walks.claim(k, &mut table, ORPHAN, members[k]);
        orphans -= 1;
        taker.slots += 1;
        heap.push(taker);
    }
    table
}

/// Members with cumulative weights, for weighted sampling by one uniform `u64`.
#[derive(Debug)]
pub(crate) struct WeightedSet {
    pub(crate) members: Box<[u32]>,
    /// `cum[k]` = sum of the weights of members `0..=k`.
    cum: Box<[u64]>,
    /// All weights equal: sample by index, no search.
    uniform: bool,
}

impl WeightedSet {
    pub(crate) fn new(members: &[u32], weights: &[u32]) -> Self {
        let mut total = 0u64;
        let cum = weights
            .iter()
            .map(|&w| {
                total += u64::from(w.max(1));
                total
            })
            .collect();
        let uniform = weights.windows(2).all(|p| p[0].max(1) == p[1].max(1));
        WeightedSet {
            members: members.into(),
            cum,
            uniform,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.members.len()
    }

    pub(crate) fn is_uniform(&self) -> bool {
        self.uniform
    }

    /// Position (into `members`) drawn with probability weight / total. `None` when empty.
    #[inline]
    pub(crate) fn sample(&self, x: u64) -> Option<usize> {
        let n = self.members.len();
        if n == 0 {
            return None;
        }
        if self.uniform {
            return Some(scale(x, n as u64) as usize);
        }
        let total = *self.cum.last()?;
        let target = scale(x, total);
        let pos = self.cum.partition_point(|&c| c <= target);
        (pos < n).then_some(pos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nginx_sequence_for_5_1_1() {
        assert_eq!(
            smooth_wrr(&[0, 1, 2], &[5, 1, 1]),
            vec![0, 0, 1, 0, 2, 0, 0]
        );
    }

    #[test]
    fn schedule_reduced_by_gcd_and_capped() {
        assert_eq!(
            smooth_wrr(&[0, 1, 2], &[10, 2, 2]),
            vec![0, 0, 1, 0, 2, 0, 0]
        );
        let big = smooth_wrr(&[0, 1], &[u32::MAX, 1]);
        assert!(big.len() as u64 <= MAX_SCHEDULE + 2);
        assert!(big.contains(&1));
    }

    #[test]
    fn maglev_sizes() {
        assert_eq!(maglev_table_size(3), 65_537);
        assert_eq!(maglev_table_size(655), 65_537);
        assert_eq!(maglev_table_size(1000), 100_003);
    }

    #[test]
    fn maglev_fills_every_slot() {
        let labels = ["a:1", "b:1", "c:1"];
        let t = maglev(&[0, 1, 2], &labels, &[1, 1, 1], 101);
        assert_eq!(t.len(), 101);
        assert!(t.iter().all(|&x| x < 3));
    }

    #[test]
    fn weighted_sampling_edges() {
        let s = WeightedSet::new(&[7, 8], &[3, 1]);
        assert_eq!(s.sample(0), Some(0));
        assert_eq!(s.sample(u64::MAX), Some(1));
        assert_eq!(s.sample(u64::MAX / 4 * 3 - 1024), Some(0));
        assert_eq!(s.sample(u64::MAX / 4 * 3 + 1024), Some(1));
        assert_eq!(WeightedSet::new(&[], &[]).sample(5), None);
    }
}
