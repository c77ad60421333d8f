//! A listener's steering keys: `slow_start`, `failback`, `min_active`.

use super::scalar::{duration, int_in, ZeroOk};
use super::Errors;
use crate::model::{Algorithm, Backend, Failback, Steering};
use crate::raw::{RawListener, ScalarKind};

/// Steering of listener `i`; problems are pushed, defaults stand in for bad values.
pub(super) fn steering(
    errs: &mut Errors,
    i: usize,
    rl: &RawListener,
    algorithm: Algorithm,
    backends: &[Backend],
) -> Steering {
    let path = |key: &str| format!("listeners[{i}].{key}");
    let slow_start = rl
        .slow_start
        .as_ref()
        .and_then(|s| duration(errs, &path("slow_start"), s, ZeroOk::No));
    if slow_start.is_some() && matches!(algorithm, Algorithm::SourceHash | Algorithm::Maglev) {
        errs.push(
            path("slow_start"),
            format!(
                "slow_start cannot apply to {}: a hash pins each client to a backend, so a \
                 ramping weight would move clients between backends as it grows; remove \
                 slow_start or choose a weighted algorithm",
                algorithm.as_str()
            ),
        );
    }
    let failback = match &rl.failback {
        None => Failback::Immediate,
        Some(s) if s.kind == ScalarKind::Str && s.text == "immediate" => Failback::Immediate,
        Some(s) if s.kind == ScalarKind::Str && s.text == "manual" => Failback::Manual,
        Some(s) => {
            let hint_errs = errs.count();
            match duration(errs, &path("failback"), s, ZeroOk::No) {
                Some(window) => Failback::After(window),
                None => {
                    // Say what the key accepts besides a duration.
                    if let Some(e) = errs.0.get_mut(hint_errs) {
                        e.message = format!(
                            "expected immediate, manual or a duration such as \"30s\": {}",
                            e.message
                        );
                    }
                    Failback::Immediate
                }
            }
        }
    };
    let min_active = match &rl.min_active {
        None => 1,
        Some(s) => {
            let most = backends.len().max(1) as u64;
            int_in(
                errs,
                &path("min_active"),
                s,
                1,
                most,
                " (tiers are added until this many backends are up; it cannot exceed the listener's backends)",
            )
            .and_then(|n| u32::try_from(n).ok())
            .unwrap_or(1)
        }
    };
    Steering {
        slow_start,
        failback,
        min_active,
    }
}

#[cfg(test)]
mod tests {
    use crate::model::Failback;
    use crate::validate::testing::*;
    use std::time::Duration;

    #[test]
    fn defaults_change_nothing() {
        let l = &ok(&one("")).listeners[0];
        assert_eq!(l.steering, crate::model::Steering::default());
        assert_eq!(l.steering.min_active, 1);
    }

    #[test]
    fn slow_start_is_a_positive_duration_and_not_for_hashing() {
        let c = ok(&one("    slow_start: 30s\n"));
        assert_eq!(
            c.listeners[0].steering.slow_start,
            Some(Duration::from_secs(30))
        );
        assert_one_error(
            &one("    slow_start: 0s\n"),
            "listeners[0].slow_start",
            "greater than zero",
        );
        for algorithm in ["source_hash", "maglev"] {
            assert_one_error(
                &one(&format!(
                    "    algorithm: {algorithm}\n    slow_start: 10s\n"
                )),
                "listeners[0].slow_start",
                "cannot apply",
            );
        }
    }

    #[test]
    fn failback_forms() {
        let f = |v: &str| {
            ok(&one(&format!("    failback: {v}\n"))).listeners[0]
                .steering
                .failback
        };
        assert_eq!(f("immediate"), Failback::Immediate);
        assert_eq!(f("manual"), Failback::Manual);
        assert_eq!(f("2m"), Failback::After(Duration::from_secs(120)));
        assert_one_error(
            &one("    failback: later\n"),
            "listeners[0].failback",
            "expected immediate, manual or a duration",
        );
        assert_one_error(
            &one("    failback: 0s\n"),
            "listeners[0].failback",
            "greater than zero",
        );
    }

    #[test]
    fn min_active_within_the_backends() {
        let yaml = with_backends("      - addr: 10.0.0.1:80\n      - addr: 10.0.0.2:80\n");
        let yaml = yaml.replace("    backends:", "    min_active: 2\n    backends:");
        assert_eq!(ok(&yaml).listeners[0].steering.min_active, 2);
        assert_one_error(
            &one("    min_active: 2\n"),
            "listeners[0].min_active",
            "1..=1",
        );
        assert_one_error(
            &one("    min_active: 0\n"),
            "listeners[0].min_active",
            "at least 1",
        );
    }
}
