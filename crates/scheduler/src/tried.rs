//! The set of backends already tried for one connection.

/// Backend indices (into one [`Snapshot`](crate::Snapshot)'s `backends()`) that a
/// connection has already tried; `pick` never returns one of them.
///
/// Allocation-free for indices below 64 (a bit mask); larger indices go to a small
/// vector that allocates only when first used. A connection tries at most
/// `connect_attempts` backends, so the vector stays tiny.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tried {
    low: u64,
    high: Vec<usize>,
}

impl Tried {
    /// An empty set (does not allocate).
    pub const fn new() -> Self {
        Tried {
            low: 0,
            high: Vec::new(),
        }
    }

    /// Adds `index`; returns `false` when it was already present.
    pub fn insert(&mut self, index: usize) -> bool {
        if index < 64 {
            let bit = 1u64 << index;
            let fresh = self.low & bit == 0;
            self.low |= bit;
            fresh
        } else if self.high.contains(&index) {
            false
        } else {
            self.high.push(index);
            true
        }
    }

    #[inline]
    pub fn contains(&self, index: usize) -> bool {
        if index < 64 {
            self.low & (1u64 << index) != 0
        } else {
            self.high.contains(&index)
        }
    }

    pub fn len(&self) -> usize {
        self.low.count_ones() as usize + self.high.len()
    }

    pub fn is_empty(&self) -> bool {
        self.low == 0 && self.high.is_empty()
    }

    /// Empties the set, keeping any allocation for reuse.
    pub fn clear(&mut self) {
        self.low = 0;
        self.high.clear();
    }

    /// The indices in the set, low ones in ascending order first.
    pub fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        let low = self.low;
        (0..64)
            .filter(move |i| low & (1u64 << i) != 0)
            .chain(self.high.iter().copied())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn low_and_high_indices() {
        let mut t = Tried::new();
        assert!(t.is_empty());
        assert!(t.insert(0));
        assert!(t.insert(63));
        assert!(t.insert(64));
        assert!(t.insert(1000));
        assert!(!t.insert(63));
        assert!(!t.insert(1000));
        assert_eq!(t.len(), 4);
        assert!(t.contains(0) && t.contains(63) && t.contains(64) && t.contains(1000));
        assert!(!t.contains(1) && !t.contains(65));
        assert_eq!(t.iter().collect::<Vec<_>>(), vec![0, 63, 64, 1000]);
        t.clear();
        assert!(t.is_empty() && !t.contains(64));
    }
}
