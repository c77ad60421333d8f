//! What a relay direction does as its traffic changes: when a copying direction is carrying
//! a bulk stream, how big its buffer is, and when `auto` moves it between copy and splice.
//! Pure values with no I/O: the relay's loops report each read or splice burst and do what
//! the answer says. The thresholds are the ones the README documents for `forwarding`.

/// Working copy buffer of a direction while data flows (see `buffers.rs`: between small
/// messages a direction waits on a small buffer instead).
pub(crate) const COPY_BUFFER: usize = crate::buffers::WORKING_BUFFER;
/// `copy`: a bulk direction gets this bigger buffer (fewer recv/send pairs per byte).
pub(crate) const COPY_BUFFER_BULK: usize = 256 * 1024;
/// A direction whose last `BULK_AFTER_BIG_READS` reads each brought at least `BIG_READ` is
/// carrying a bulk stream. Not "full reads": until TCP autotuning grows the receive buffer
/// (it may never, on a loaded host) a backlogged socket yields ~94 KiB per window, read as
/// 64 KiB + 30 KiB, and a small-message link never brings 16 KiB four times in a row.
const BIG_READ: usize = 16 * 1024;
const BULK_AFTER_BIG_READS: u32 = 4;
/// A grown buffer goes back to `COPY_BUFFER` after this many consecutive reads under
/// `BIG_READ`, so a long-lived link does not keep 256 KiB per direction after a bulk phase.
const SHRINK_AFTER_SMALL_READS: u32 = 8;
/// `auto`: after this many consecutive splice bursts (readiness to EAGAIN) that each moved
/// less than `SMALL_BURST`, the direction is back to small messages and copies again.
const COPY_AFTER_SMALL_BURSTS: u32 = 8;
const SMALL_BURST: u64 = 16 * 1024;

/// What a copying direction does after forwarding one read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CopyStep {
    /// Go on with the buffer it has.
    Keep,
    /// Bulk stream under `copy`: replace the buffer with one of this capacity.
    Grow(usize),
    /// Small messages again: replace the grown buffer with one of this capacity.
    Shrink(usize),
    /// Bulk stream under `auto`: continue this direction with splice.
    Splice,
}

/// Tracks one copying direction's recent reads.
#[derive(Debug, Clone)]
pub(crate) struct CopyPolicy {
    /// `auto`: bulk moves the direction to splice instead of growing its buffer.
    splice_bulk: bool,
    big_reads: u32,
    small_reads: u32,
}

impl CopyPolicy {
    pub(crate) fn new(splice_bulk: bool) -> Self {
        CopyPolicy {
            splice_bulk,
            big_reads: 0,
            small_reads: 0,
        }
    }

    /// A read of `n` bytes was forwarded with a buffer of `capacity` bytes.
    pub(crate) fn after_read(&mut self, n: usize, capacity: usize) -> CopyStep {
        (self.big_reads, self.small_reads) = if n >= BIG_READ {
            (self.big_reads.saturating_add(1), 0)
        } else {
            (0, self.small_reads.saturating_add(1))
        };
        let bulk = self.big_reads >= BULK_AFTER_BIG_READS;
        if self.splice_bulk {
            return if bulk {
                CopyStep::Splice
            } else {
                CopyStep::Keep
            };
        }
        if bulk && capacity < COPY_BUFFER_BULK {
            CopyStep::Grow(COPY_BUFFER_BULK)
        } else if self.small_reads >= SHRINK_AFTER_SMALL_READS && capacity > COPY_BUFFER {
            CopyStep::Shrink(COPY_BUFFER)
        } else {
            CopyStep::Keep
        }
    }
}

impl CopyPolicy {
    /// Whether a read of `n` bytes that emptied the socket (`drained`) ends a small message,
    /// so the direction gives its working buffer back and waits for the next message on a
    /// small one. Not during a bulk phase (big reads, or a grown buffer still in use).
    pub(crate) fn parks_after(&self, n: usize, drained: bool, capacity: usize) -> bool {
        drained && n < BIG_READ && capacity <= COPY_BUFFER
    }
}

/// What a splicing direction does after one burst (readiness to EAGAIN).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SpliceStep {
    Keep,
    /// `auto`: the bulk phase is over: copy again.
    Copy,
}

/// Tracks one splicing direction's recent bursts.
#[derive(Debug, Clone)]
pub(crate) struct SplicePolicy {
    /// `auto`: small bursts move the direction back to copy; `splice` stays.
    copy_when_small: bool,
    small_bursts: u32,
}

impl SplicePolicy {
    pub(crate) fn new(copy_when_small: bool) -> Self {
        SplicePolicy {
            copy_when_small,
            small_bursts: 0,
        }
    }

    /// A burst moved `bytes`.
    pub(crate) fn after_burst(&mut self, bytes: u64) -> SpliceStep {
        if !self.copy_when_small {
            return SpliceStep::Keep;
        }
        self.small_bursts = if bytes < SMALL_BURST {
            self.small_bursts.saturating_add(1)
        } else {
            0
        };
        if self.small_bursts >= COPY_AFTER_SMALL_BURSTS {
            SpliceStep::Copy
        } else {
            SpliceStep::Keep
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KIB: usize = 1024;

    /// Feed reads to a copy policy whose buffer follows its answers; return every answer.
    fn copy_run(splice_bulk: bool, reads: &[usize]) -> Vec<CopyStep> {
        let mut policy = CopyPolicy::new(splice_bulk);
        let mut capacity = COPY_BUFFER;
        reads
            .iter()
            .map(|&n| {
                let step = policy.after_read(n, capacity);
                if let CopyStep::Grow(c) | CopyStep::Shrink(c) = step {
                    capacity = c;
                }
                step
            })
            .collect()
    }

    fn position(steps: &[CopyStep], wanted: CopyStep) -> Option<usize> {
        steps.iter().position(|s| *s == wanted)
    }

    #[test]
    fn auto_splices_after_four_consecutive_reads_of_16_kib() {
        let cases: &[(&str, Vec<usize>, Option<usize>)] = &[
            ("four big reads", vec![16 * KIB; 4], Some(3)),
            (
                "64 KiB + 30 KiB windows",
                vec![64 * KIB, 30 * KIB, 64 * KIB, 30 * KIB],
                Some(3),
            ),
            ("three big reads only", vec![16 * KIB; 3], None),
            ("just under 16 KiB", vec![16 * KIB - 1; 20], None),
            (
                "a small read resets the streak",
                vec![
                    20 * KIB,
                    20 * KIB,
                    20 * KIB,
                    100,
                    20 * KIB,
                    20 * KIB,
                    20 * KIB,
                ],
                None,
            ),
            (
                "small messages then bulk",
                [vec![200; 50], vec![32 * KIB; 4]].concat(),
                Some(53),
            ),
        ];
        for (name, reads, at) in cases {
            let steps = copy_run(true, reads);
            assert_eq!(position(&steps, CopyStep::Splice), *at, "{name}: {steps:?}");
            assert_eq!(
                position(&steps, CopyStep::Grow(COPY_BUFFER_BULK)),
                None,
                "{name}: auto never grows"
            );
        }
    }

    #[test]
    fn copy_grows_to_256_kib_for_bulk_and_shrinks_after_eight_small_reads() {
        let reads = [
            vec![16 * KIB; 4],
            vec![64 * KIB; 10],
            vec![100; 7],
            vec![100],
        ]
        .concat();
        let steps = copy_run(false, &reads);
        assert_eq!(steps[3], CopyStep::Grow(COPY_BUFFER_BULK), "{steps:?}");
        // Grown once: a bulk stream that goes on keeps its buffer.
        assert_eq!(
            steps
                .iter()
                .filter(|s| matches!(s, CopyStep::Grow(_)))
                .count(),
            1
        );
        // Seven small reads are not enough; the eighth shrinks.
        let shrink = position(&steps, CopyStep::Shrink(COPY_BUFFER));
        assert_eq!(shrink, Some(reads.len() - 1), "{steps:?}");
        assert_eq!(
            position(&steps, CopyStep::Splice),
            None,
            "copy never splices"
        );
    }

    #[test]
    fn copy_never_shrinks_the_default_buffer() {
        let steps = copy_run(false, &[100; 100]);
        assert!(steps.iter().all(|s| *s == CopyStep::Keep), "{steps:?}");
    }

    #[test]
    fn copy_grows_again_after_a_second_bulk_phase() {
        let reads = [vec![20 * KIB; 4], vec![10; 8], vec![20 * KIB; 4]].concat();
        let steps = copy_run(false, &reads);
        let grows: Vec<usize> = steps
            .iter()
            .enumerate()
            .filter(|(_, s)| matches!(s, CopyStep::Grow(_)))
            .map(|(i, _)| i)
            .collect();
        assert_eq!(grows, vec![3, 15], "{steps:?}");
    }

    #[test]
    fn auto_copies_again_after_eight_small_splice_bursts() {
        let small = SMALL_BURST - 1;
        let cases: &[(&str, Vec<u64>, Option<usize>)] = &[
            ("eight small bursts", vec![small; 8], Some(7)),
            ("seven small bursts", vec![small; 7], None),
            (
                "a big burst resets the count",
                [vec![small; 7], vec![SMALL_BURST], vec![small; 7]].concat(),
                None,
            ),
            (
                "bulk then quiet",
                [vec![256 * 1024; 30], vec![100; 8]].concat(),
                Some(37),
            ),
        ];
        for (name, bursts, at) in cases {
            let mut policy = SplicePolicy::new(true);
            let steps: Vec<SpliceStep> = bursts.iter().map(|&b| policy.after_burst(b)).collect();
            assert_eq!(
                steps.iter().position(|s| *s == SpliceStep::Copy),
                *at,
                "{name}: {steps:?}"
            );
        }
    }

    #[test]
    fn splice_mode_never_goes_back_to_copy() {
        let mut policy = SplicePolicy::new(false);
        assert!((0..100).all(|_| policy.after_burst(1) == SpliceStep::Keep));
    }

    #[test]
    fn only_a_small_message_that_emptied_the_socket_parks() {
        let p = CopyPolicy::new(false);
        assert!(p.parks_after(100, true, COPY_BUFFER));
        assert!(!p.parks_after(100, false, COPY_BUFFER), "more is waiting");
        assert!(!p.parks_after(BIG_READ, true, COPY_BUFFER), "a bulk read");
        assert!(
            !p.parks_after(100, true, COPY_BUFFER_BULK),
            "a grown buffer"
        );
    }
}
