//! A TCP listener's dead-peer detection: `tcp_keepalive: {idle, interval, count}` and
//! `tcp_user_timeout`, checked against what the kernel accepts for SO_KEEPALIVE's
//! TCP_KEEPIDLE / TCP_KEEPINTVL (whole seconds, 1..=32767), TCP_KEEPCNT (1..=127) and
//! TCP_USER_TIMEOUT (milliseconds in a u32). Durations the kernel would truncate are
//! rejected rather than rounded, so what runs is what the file says.

use std::time::Duration;

use super::scalar::{duration, int_in, whole_seconds, ZeroOk};
use super::Errors;
use crate::model::{Keepalive, Liveness};
use crate::raw::{RawKeepalive, RawListener, Scalar};

/// Longest TCP_KEEPIDLE and TCP_KEEPINTVL the kernel takes (MAX_TCP_KEEPIDLE,
/// MAX_TCP_KEEPINTVL), in seconds.
pub const MAX_KEEPALIVE_SECS: u64 = 32_767;
/// Most keepalive probes the kernel takes (MAX_TCP_KEEPCNT).
pub const MAX_KEEPALIVE_COUNT: u64 = 127;

/// Both settings; each is off when its key is absent (or has a problem, then reported).
pub(super) fn liveness(errs: &mut Errors, i: usize, rl: &RawListener) -> Liveness {
    let path = |key: &str| format!("listeners[{i}].{key}");
    Liveness {
        keepalive: rl
            .tcp_keepalive
            .as_ref()
            .and_then(|k| keepalive(errs, &path("tcp_keepalive"), k)),
        user_timeout: rl
            .tcp_user_timeout
            .as_ref()
            .and_then(|s| user_timeout(errs, &path("tcp_user_timeout"), s)),
        response_timeout: rl
            .response_timeout
            .as_ref()
            .and_then(|s| response_timeout(errs, &path("response_timeout"), s, rl)),
    }
}

/// A passive signal for the health check: it needs one to count toward.
fn response_timeout(
    errs: &mut Errors,
    path: &str,
    s: &Scalar,
    rl: &RawListener,
) -> Option<Duration> {
    let d = duration(errs, path, s, ZeroOk::No)?;
    if rl.health_check.is_none() {
        errs.push(
            path,
            "response_timeout counts a silent backend as a failed check toward health_check.fall, and this listener has no health_check: add one or remove response_timeout",
        );
        return None;
    }
    Some(d)
}

/// All three keys are required: the time to find a dead peer is `idle + interval ×
/// count`, and a default for one of them would hide a part of that sum.
fn keepalive(errs: &mut Errors, path: &str, raw: &RawKeepalive) -> Option<Keepalive> {
    let p = |key: &str| format!("{path}.{key}");
    for (key, value) in [
        ("idle", &raw.idle),
        ("interval", &raw.interval),
        ("count", &raw.count),
    ] {
        if value.is_none() {
            errs.push(
                p(key),
                "missing: tcp_keepalive needs idle, interval and count, e.g. {idle: 60s, interval: 10s, count: 3}",
            );
        }
    }
    let idle = raw.idle.as_ref().and_then(|s| seconds(errs, &p("idle"), s));
    let interval = raw
        .interval
        .as_ref()
        .and_then(|s| seconds(errs, &p("interval"), s));
    let count = raw.count.as_ref().and_then(|s| {
        int_in(
            errs,
            &p("count"),
            s,
            1,
            MAX_KEEPALIVE_COUNT,
            " (unanswered probes before the peer is given up)",
        )
    });
    Some(Keepalive {
        idle: idle?,
        interval: interval?,
        count: u32::try_from(count?).ok()?,
    })
}

/// A keepalive duration: the kernel counts these in whole seconds.
fn seconds(errs: &mut Errors, path: &str, s: &Scalar) -> Option<Duration> {
    let d = whole_seconds(
        errs,
        path,
        s,
        "the kernel counts keepalive times in seconds",
    )?;
    if d.as_secs() > MAX_KEEPALIVE_SECS {
        errs.push(
            path,
            format!(
                "{} is longer than {MAX_KEEPALIVE_SECS}s, the most the kernel takes for a keepalive time",
                s.shown()
            ),
        );
        return None;
    }
    Some(d)
}

/// TCP_USER_TIMEOUT: milliseconds in a u32 (0 would mean the kernel's default, so it is
/// refused as any other zero timeout is).
fn user_timeout(errs: &mut Errors, path: &str, s: &Scalar) -> Option<Duration> {
    let d = duration(errs, path, s, ZeroOk::No)?;
    if d.subsec_nanos() % 1_000_000 != 0 {
        errs.push(
            path,
            format!(
                "{} is not a whole number of milliseconds, the unit of TCP_USER_TIMEOUT",
                s.shown()
            ),
        );
        return None;
    }
    if d.as_millis() > u128::from(u32::MAX) {
        errs.push(
            path,
            format!(
                "{} is longer than {}ms (about 49.7 days), the most TCP_USER_TIMEOUT holds",
                s.shown(),
                u32::MAX
            ),
        );
        return None;
    }
    Some(d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::testing::*;

    fn keepalive_of(extra: &str) -> Liveness {
        tcp(&ok(&one(extra))).liveness
    }

    #[test]
    fn response_timeout_needs_a_health_check() {
        let yaml = one("    response_timeout: 2s\n");
        assert_one_error(&yaml, "listeners[0].response_timeout", "no health_check");
        let yaml = one("    response_timeout: 2s\n    health_check: {interval: 1s}\n");
        assert_eq!(
            keepalive_of_yaml(&yaml).response_timeout,
            Some(Duration::from_secs(2))
        );
        assert_one_error(
            &one_udp("    response_timeout: 2s\n    health_check: {interval: 1s}\n"),
            "listeners[0].response_timeout",
            "tcp",
        );
    }

    fn keepalive_of_yaml(yaml: &str) -> Liveness {
        tcp(&ok(yaml)).liveness
    }

    #[test]
    fn off_by_default() {
        assert_eq!(keepalive_of(""), Liveness::default());
        assert_eq!(
            Liveness::default(),
            Liveness {
                keepalive: None,
                user_timeout: None,
                response_timeout: None,
            }
        );
    }

    #[test]
    fn both_are_read() {
        let l = keepalive_of(
            "    tcp_keepalive: {idle: 1m, interval: 10s, count: 3}\n    tcp_user_timeout: 90s\n",
        );
        assert_eq!(
            l,
            Liveness {
                keepalive: Some(Keepalive {
                    idle: Duration::from_secs(60),
                    interval: Duration::from_secs(10),
                    count: 3,
                }),
                user_timeout: Some(Duration::from_secs(90)),
                response_timeout: None,
            }
        );
        let l = keepalive_of("    tcp_user_timeout: 1500ms\n");
        assert_eq!(
            (l.keepalive, l.user_timeout),
            (None, Some(Duration::from_millis(1500)))
        );
    }

    #[test]
    fn kernel_limits_are_accepted() {
        let l = keepalive_of(
            "    tcp_keepalive: {idle: 1s, interval: 32767s, count: 127}\n    tcp_user_timeout: 4294967295ms\n",
        );
        assert_eq!(
            l.keepalive,
            Some(Keepalive {
                idle: Duration::from_secs(1),
                interval: Duration::from_secs(32_767),
                count: 127,
            })
        );
        assert_eq!(l.user_timeout, Some(Duration::from_millis(u32::MAX.into())));
        keepalive_of("    tcp_keepalive: {idle: 32767s, interval: 1s, count: 1}\n");
        keepalive_of("    tcp_user_timeout: 1ms\n");
    }

    #[test]
    fn every_key_of_tcp_keepalive_is_required() {
        let e = errors(&one("    tcp_keepalive: {}\n"));
        assert_eq!(
            e.iter()
                .map(|l| l.split(": ").next().unwrap_or_default())
                .collect::<Vec<_>>(),
            [
                "listeners[0].tcp_keepalive.idle",
                "listeners[0].tcp_keepalive.interval",
                "listeners[0].tcp_keepalive.count",
            ],
            "{e:#?}"
        );
        assert!(e[0].contains("needs idle, interval and count"), "{e:#?}");
        assert_one_error(
            &one("    tcp_keepalive: {idle: 10s, count: 2}\n"),
            "listeners[0].tcp_keepalive.interval",
            "missing",
        );
    }

    #[test]
    fn keepalive_times_are_whole_seconds_within_the_kernels_range() {
        for (key, value, needle) in [
            (
                "idle",
                "1500ms",
                "\"1500ms\" is not a whole number of seconds",
            ),
            ("idle", "500ms", "write e.g. \"1s\""),
            ("interval", "2s 1ms", "not a whole number of seconds"),
            ("idle", "32768s", "longer than 32767s"),
            ("interval", "10h", "longer than 32767s"),
            ("idle", "0s", "must be greater than zero"),
            ("interval", "10", "a unit is required"),
        ] {
            let other = if key == "idle" { "interval" } else { "idle" };
            assert_one_error(
                &one(&format!(
                    "    tcp_keepalive: {{{key}: {value}, {other}: 1s, count: 1}}\n"
                )),
                &format!("listeners[0].tcp_keepalive.{key}"),
                needle,
            );
        }
    }

    #[test]
    fn keepalive_count_is_1_to_127() {
        for (count, needle) in [
            ("0", "must be at least 1, got 0"),
            ("128", "128 is too large: expected 1..=127"),
            ("-1", "must be at least 1"),
            ("three", "expected an integer, 1..=127"),
        ] {
            assert_one_error(
                &one(&format!(
                    "    tcp_keepalive: {{idle: 1s, interval: 1s, count: {count}}}\n"
                )),
                "listeners[0].tcp_keepalive.count",
                needle,
            );
        }
    }

    #[test]
    fn every_problem_of_tcp_keepalive_is_reported_at_once() {
        let e = errors(&one(
            "    tcp_keepalive: {idle: 0.5s, interval: 40000s, count: 200}\n",
        ));
        assert_eq!(e.len(), 3, "{e:#?}");
    }

    #[test]
    fn unknown_keys_in_tcp_keepalive_are_errors() {
        let e = errors(&one(
            "    tcp_keepalive: {idle: 1s, interval: 1s, count: 1, probes: 3}\n",
        ));
        assert_eq!(e.len(), 1, "{e:#?}");
        assert!(
            e[0].starts_with("listeners[0].tcp_keepalive") && e[0].contains("probes"),
            "{e:#?}"
        );
        let e = errors(&one("    tcp_keepalive: true\n"));
        assert!(
            e[0].starts_with("listeners[0].tcp_keepalive")
                && e[0].contains("idle, interval, count"),
            "{e:#?}"
        );
    }

    #[test]
    fn user_timeout_is_positive_whole_milliseconds_in_a_u32() {
        for (value, needle) in [
            ("0s", "must be greater than zero"),
            ("1500us", "\"1500us\" is not a whole number of milliseconds"),
            ("4294967296ms", "longer than 4294967295ms"),
            ("50d", "about 49.7 days"),
            ("500us", "below 1ms"),
            ("30", "a unit is required"),
        ] {
            assert_one_error(
                &one(&format!("    tcp_user_timeout: {value}\n")),
                "listeners[0].tcp_user_timeout",
                needle,
            );
        }
    }

    #[test]
    fn problems_are_listed_in_schema_order() {
        // After source, before the udp keys (docs/configuration.md's order).
        let e = errors(&one(
            "    tcp_user_timeout: 0s\n    tcp_keepalive: {idle: 0s, interval: 1s, count: 1}\n\
             \x20   forwarding: zerocopy\n",
        ));
        let paths: Vec<&str> = e.iter().filter_map(|l| l.split(": ").next()).collect();
        assert_eq!(
            paths,
            [
                "listeners[0].forwarding",
                "listeners[0].tcp_keepalive.idle",
                "listeners[0].tcp_user_timeout",
            ],
            "{e:#?}"
        );
    }

    #[test]
    fn both_are_tcp_only() {
        for (key, value) in [
            ("tcp_keepalive", "{idle: 1s, interval: 1s, count: 1}"),
            ("tcp_user_timeout", "10s"),
        ] {
            assert_one_error(
                &one_udp(&format!("    {key}: {value}\n")),
                &format!("listeners[0].{key}"),
                "applies only to tcp listeners and this listener is udp",
            );
        }
    }
}
