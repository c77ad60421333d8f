//! Steering: which priority tiers take new connections (tiers, `min_active`, failback) and
//! how far along its slow start each backend is. The pick path only reads what is here
//! ([`TierRange::wanted`], [`Pin`]); the control plane moves it on ([`Steerer`]) with the
//! time it is given.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use ringlb_config::{Failback, Steering};

use crate::state::FULL_RAMP;
use crate::Backend;

/// Slow start begins at this share of the weight (thousandths): small, and never zero, so
/// a backend that just came up is tried at once and its first connections show whether it
/// really works.
pub const RAMP_FLOOR: u32 = 50;

/// A ramp moves in steps of this many thousandths: each step rebuilds the tables, so a
/// window has at most `FULL_RAMP / RAMP_STEP` rebuilds per ramping backend.
const RAMP_STEP: u32 = 50;

/// least_latency: a backend's latency average moves toward the best backend's, halving the
/// gap this often, so a backend avoided for being slow is tried again after a few
/// half-lives (its samples then say whether it still is).
pub const LATENCY_IDLE_HALF_LIFE: Duration = Duration::from_secs(1);

/// Priorities `lowest..=highest` take new connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TierRange {
    pub lowest: u8,
    pub highest: u8,
}

impl TierRange {
    pub fn contains(self, priority: u8) -> bool {
        (self.lowest..=self.highest).contains(&priority)
    }

    /// What health asks for, from `(priority, admits)` in priority order: the tiers from
    /// the first one with a backend taking connections through the one where the count of
    /// such backends reaches `min_active`, or every tier from the first when it never does.
    /// `None`: no backend takes connections.
    pub(crate) fn wanted(
        by_priority: impl Iterator<Item = (u8, bool)>,
        min_active: u32,
        top: u8,
    ) -> Option<TierRange> {
        let mut lowest = None;
        let mut up = 0u32;
        for (priority, admits) in by_priority {
            if !admits {
                continue;
            }
            let lowest = *lowest.get_or_insert(priority);
            up += 1;
            if up >= min_active {
                return Some(TierRange {
                    lowest,
                    highest: priority,
                });
            }
        }
        lowest.map(|lowest| TierRange {
            lowest,
            highest: top,
        })
    }

    /// A held range merged with what health wants now: a tier the hold keeps out stays
    /// out, a tier health adds is added (failover is never held back).
    pub(crate) fn merge(held: TierRange, wanted: TierRange) -> TierRange {
        TierRange {
            lowest: held.lowest.max(wanted.lowest),
            highest: held.highest.max(wanted.highest),
        }
    }

    /// `"0"` or `"0-1"`, for logs and `/status`.
    pub fn describe(self) -> String {
        if self.lowest == self.highest {
            self.lowest.to_string()
        } else {
            format!("{}-{}", self.lowest, self.highest)
        }
    }

    fn pack(self) -> u32 {
        1 << 16 | u32::from(self.highest) << 8 | u32::from(self.lowest)
    }

    fn unpack(word: u32) -> Option<TierRange> {
        (word >> 16 == 1).then_some(TierRange {
            lowest: word as u8,
            highest: (word >> 8) as u8,
        })
    }
}

/// The tiers traffic is held on when failback is not immediate, shared by every snapshot
/// of a listener (it survives reloads). Written under the scheduler's writer lock only.
#[derive(Debug, Default)]
pub(crate) struct Pin(AtomicU32);

impl Pin {
    pub(crate) fn held(&self) -> Option<TierRange> {
        TierRange::unpack(self.0.load(Ordering::Acquire))
    }

    pub(crate) fn hold(&self, range: Option<TierRange>) {
        self.0
            .store(range.map_or(0, TierRange::pack), Ordering::Release);
    }
}

/// The tiers taking new connections changed: for the log line, `/status` and the metric.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TierChange {
    pub from: Option<TierRange>,
    pub to: Option<TierRange>,
    /// Why, in words: "health", "failback after 30s", "ringlb ctl failback", ...
    pub cause: String,
}

/// The control plane's steering memory (kept under the scheduler's writer lock).
#[derive(Debug, Default)]
pub(crate) struct Steerer {
    /// Since when health has wanted fewer tiers than are held (a failback pending).
    better_since: Option<Duration>,
    /// The tiers in use after the last look, to report changes once.
    in_use: Option<TierRange>,
    last_tick: Option<Duration>,
}

/// What one look changed.
#[derive(Debug, Default)]
pub(crate) struct Steered {
    /// Some ramp moved a step: the tables must be rebuilt with the new weights.
    pub(crate) ramps: bool,
    /// The held tiers changed.
    pub(crate) pin: bool,
    pub(crate) change: Option<TierChange>,
}

impl Steerer {
    /// One look at `backends` at time `now`: ramps, latency decay, the failback hold.
    /// `wanted` is what health asks for now (see [`TierRange::wanted`]).
    pub(crate) fn look(
        &mut self,
        now: Duration,
        steering: &Steering,
        backends: &[Backend],
        wanted: Option<TierRange>,
        pin: &Pin,
        decay_latency: bool,
    ) -> Steered {
        let mut out = Steered {
            ramps: self.ramps(now, steering.slow_start, backends),
            ..Steered::default()
        };
        let since_last = self
            .last_tick
            .map_or(Duration::ZERO, |t| now.saturating_sub(t));
        self.last_tick = Some(now);
        let best = backends
            .iter()
            .filter(|b| b.state.admits(b.spec.weight))
            .filter_map(|b| b.state.latency())
            .min()
            .map_or(0, |d| d.as_nanos() as u64);
        for b in backends {
            if !b.state.admits(b.spec.weight) {
                b.state.forget_latency();
            } else if decay_latency && !since_last.is_zero() {
                b.state.decay_latency(best, latency_keep(since_last));
            }
        }

        let held = pin.held();
        let (new_held, cause) = self.hold(now, steering.failback, held, wanted);
        if new_held != held {
            pin.hold(new_held);
            out.pin = true;
        }
        let in_use = in_use(new_held, wanted, backends);
        if in_use != self.in_use {
            out.change = Some(TierChange {
                from: self.in_use,
                to: in_use,
                cause: cause.unwrap_or_else(|| "health".into()),
            });
            self.in_use = in_use;
        }
        out
    }

    /// Operator's failback: hold what health wants now. Returns whether the hold changed.
    pub(crate) fn failback_now(&mut self, wanted: Option<TierRange>, pin: &Pin) -> bool {
        self.better_since = None;
        let changed = pin.held() != wanted;
        pin.hold(wanted);
        changed
    }

    /// The hold after this look, and the cause when it was lowered by the failback policy.
    fn hold(
        &mut self,
        now: Duration,
        failback: Failback,
        held: Option<TierRange>,
        wanted: Option<TierRange>,
    ) -> (Option<TierRange>, Option<String>) {
        if failback == Failback::Immediate {
            self.better_since = None;
            return (None, None);
        }
        let (Some(held), Some(wanted)) = (held, wanted) else {
            // Nothing held yet, or nothing up at all: hold what health wants (or nothing).
            self.better_since = None;
            return (wanted.or(held), None);
        };
        let merged = TierRange::merge(held, wanted);
        if merged == wanted {
            // Health wants at least what is held: follow it (a failover, or no change).
            self.better_since = None;
            return (Some(wanted), None);
        }
        // Health would use fewer or better tiers than are held: a failback is pending.
        let since = *self.better_since.get_or_insert(now);
        match failback {
            Failback::After(window) if now.saturating_sub(since) >= window => {
                self.better_since = None;
                (
                    Some(wanted),
                    Some(format!(
                        "failback: preferred tiers up for {}",
                        humantime::format_duration(window)
                    )),
                )
            }
            _ => (Some(merged), None),
        }
    }

    /// Slow start: starts a ramp for each backend that began admitting connections and
    /// moves running ramps on. Returns whether any published ramp changed.
    fn ramps(&mut self, now: Duration, window: Option<Duration>, backends: &[Backend]) -> bool {
        let mut changed = false;
        for b in backends {
            let admitting = b.state.admits(b.spec.weight);
            let was = b.state.swap_seen_admitting(admitting);
            let Some(window) = window else {
                b.state.set_ramp_began(None);
                changed |= b.state.ramp() != FULL_RAMP;
                b.state.set_ramp(FULL_RAMP);
                continue;
            };
            if admitting && !was {
                b.state.set_ramp_began(Some(now));
            }
            let Some(began) = b.state.ramp_began() else {
                continue;
            };
            let ramp = ramp_at(now.saturating_sub(began), window);
            if ramp == FULL_RAMP {
                b.state.set_ramp_began(None);
            }
            if ramp != b.state.ramp() {
                b.state.set_ramp(ramp);
                changed = true;
            }
        }
        changed
    }
}

/// A backend's share of its weight `elapsed` into a slow start of `window`, in steps.
pub(crate) fn ramp_at(elapsed: Duration, window: Duration) -> u32 {
    if elapsed >= window || window.is_zero() {
        return FULL_RAMP;
    }
    let linear = RAMP_FLOOR as u128
        + (FULL_RAMP - RAMP_FLOOR) as u128 * elapsed.as_nanos() / window.as_nanos();
    let stepped = (linear as u32 / RAMP_STEP) * RAMP_STEP;
    stepped.clamp(RAMP_FLOOR, FULL_RAMP)
}

/// What fraction (of 1024) of the latency average to keep after `elapsed` without samples.
fn latency_keep(elapsed: Duration) -> u64 {
    let halvings = elapsed.as_secs_f64() / LATENCY_IDLE_HALF_LIFE.as_secs_f64();
    (1024.0 * 0.5f64.powf(halvings)).round() as u64
}

/// What health asks for over `backends` (see [`TierRange::wanted`]).
pub(crate) fn wanted_of(backends: &[Backend], min_active: u32) -> Option<TierRange> {
    let mut order: Vec<&Backend> = backends.iter().collect();
    order.sort_by_key(|b| b.spec.priority);
    let top = order.last().map_or(0, |b| b.spec.priority);
    TierRange::wanted(
        order
            .iter()
            .map(|b| (b.spec.priority, b.state.admits(b.spec.weight))),
        min_active,
        top,
    )
}

/// The tiers new connections use: the hold merged with health, unless that leaves no
/// backend taking connections — then what health wants (a hold never stalls a failover).
pub(crate) fn in_use(
    held: Option<TierRange>,
    wanted: Option<TierRange>,
    backends: &[Backend],
) -> Option<TierRange> {
    let wanted = wanted?;
    let Some(held) = held else {
        return Some(wanted);
    };
    let merged = TierRange::merge(held, wanted);
    let any = backends
        .iter()
        .any(|b| merged.contains(b.spec.priority) && b.state.admits(b.spec.weight));
    Some(if any { merged } else { wanted })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(lowest: u8, highest: u8) -> TierRange {
        TierRange { lowest, highest }
    }

    #[test]
    fn wanted_adds_tiers_until_min_active() {
        let w = |list: &[(u8, bool)], k| TierRange::wanted(list.iter().copied(), k, 2);
        assert_eq!(w(&[(0, true), (0, true), (1, true)], 1), Some(r(0, 0)));
        assert_eq!(w(&[(0, true), (0, false), (1, true)], 2), Some(r(0, 1)));
        assert_eq!(w(&[(0, false), (0, false), (1, true)], 1), Some(r(1, 1)));
        assert_eq!(w(&[(0, true), (1, false), (2, false)], 2), Some(r(0, 2)));
        assert_eq!(w(&[(0, false), (1, false)], 1), None);
    }

    #[test]
    fn packing_round_trips() {
        for range in [r(0, 0), r(0, 15), r(3, 7)] {
            assert_eq!(TierRange::unpack(range.pack()), Some(range));
        }
        assert_eq!(TierRange::unpack(0), None);
    }

    #[test]
    fn hold_follows_failover_at_once_and_failback_per_policy() {
        let second = Duration::from_secs(1);
        let mut s = Steerer::default();
        let manual = Failback::Manual;
        // Nothing held: hold what health wants.
        assert_eq!(s.hold(second, manual, None, Some(r(0, 0))).0, Some(r(0, 0)));
        // Primaries down: move to backups at once.
        assert_eq!(
            s.hold(second, manual, Some(r(0, 0)), Some(r(1, 1))).0,
            Some(r(1, 1))
        );
        // Primaries back: stay on backups.
        assert_eq!(
            s.hold(second, manual, Some(r(1, 1)), Some(r(0, 0))).0,
            Some(r(1, 1))
        );
        // Tiers added for min_active stay added.
        assert_eq!(
            s.hold(second, manual, Some(r(0, 1)), Some(r(0, 0))).0,
            Some(r(0, 1))
        );

        let window = Failback::After(Duration::from_secs(30));
        let mut s = Steerer::default();
        let at = |t: u64| Duration::from_secs(t);
        assert_eq!(
            s.hold(at(0), window, Some(r(1, 1)), Some(r(0, 0))).0,
            Some(r(1, 1))
        );
        assert_eq!(
            s.hold(at(29), window, Some(r(1, 1)), Some(r(0, 0))).0,
            Some(r(1, 1))
        );
        // A flap inside the window starts it again.
        assert_eq!(
            s.hold(at(29), window, Some(r(1, 1)), Some(r(1, 1))).0,
            Some(r(1, 1))
        );
        assert_eq!(
            s.hold(at(31), window, Some(r(1, 1)), Some(r(0, 0))).0,
            Some(r(1, 1))
        );
        assert_eq!(
            s.hold(at(60), window, Some(r(1, 1)), Some(r(0, 0))).0,
            Some(r(1, 1))
        );
        let (held, cause) = s.hold(at(61), window, Some(r(1, 1)), Some(r(0, 0)));
        assert_eq!(held, Some(r(0, 0)));
        assert!(cause.is_some_and(|c| c.contains("30s")));

        let mut s = Steerer::default();
        assert_eq!(
            s.hold(at(0), Failback::Immediate, Some(r(1, 1)), Some(r(0, 0)))
                .0,
            None,
            "immediate holds nothing"
        );
    }

    #[test]
    fn ramp_climbs_in_steps_from_the_floor() {
        let w = Duration::from_secs(10);
        assert_eq!(ramp_at(Duration::ZERO, w), RAMP_FLOOR);
        assert_eq!(ramp_at(Duration::from_secs(5), w), 500);
        assert_eq!(ramp_at(Duration::from_millis(9_999), w), 950);
        assert_eq!(ramp_at(w, w), FULL_RAMP);
        assert_eq!(ramp_at(Duration::from_secs(99), w), FULL_RAMP);
        let mut last = 0;
        for ms in (0..10_000).step_by(37) {
            let r = ramp_at(Duration::from_millis(ms), w);
            assert!(r >= last && r.is_multiple_of(RAMP_STEP));
            last = r;
        }
    }

    #[test]
    fn latency_keep_halves_per_half_life() {
        assert_eq!(latency_keep(Duration::ZERO), 1024);
        assert_eq!(latency_keep(LATENCY_IDLE_HALF_LIFE), 512);
        assert_eq!(latency_keep(LATENCY_IDLE_HALF_LIFE * 2), 256);
    }
}
