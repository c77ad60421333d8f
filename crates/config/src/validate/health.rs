//! One listener's `health_check` mapping.

use super::scalar::{int_in, opt_duration, opt_int, ZeroOk};
use super::{Errors, DEFAULT_HC_FALL, DEFAULT_HC_INTERVAL, DEFAULT_HC_RISE, DEFAULT_HC_TIMEOUT};
use crate::model::HealthCheck;
use crate::raw::RawHealthCheck;

/// `None` inside: the health check had a problem (already reported).
pub(super) fn health_check(
    errs: &mut Errors,
    path: &str,
    hc: &RawHealthCheck,
) -> Option<HealthCheck> {
    let before = errs.count();
    let p = |key: &str| format!("{path}.{key}");
    let interval = opt_duration(
        errs,
        &p("interval"),
        hc.interval.as_ref(),
        DEFAULT_HC_INTERVAL,
        ZeroOk::No,
    );
    let timeout = opt_duration(
        errs,
        &p("timeout"),
        hc.timeout.as_ref(),
        DEFAULT_HC_TIMEOUT,
        ZeroOk::No,
    );
    let rise = opt_int(
        errs,
        &p("rise"),
        hc.rise.as_ref(),
        DEFAULT_HC_RISE,
        1,
        u32::MAX.into(),
        " (consecutive successes needed to mark a backend up)",
    );
    let fall = opt_int(
        errs,
        &p("fall"),
        hc.fall.as_ref(),
        DEFAULT_HC_FALL,
        1,
        u32::MAX.into(),
        " (consecutive failures needed to mark a backend down)",
    );
    let port = hc.port.as_ref().and_then(|s| {
        int_in(errs, &p("port"), s, 1, u16::MAX.into(), "").and_then(|v| u16::try_from(v).ok())
    });
    // Compare only values that parsed: a bad one is already reported.
    if errs.count() == before && timeout > interval {
        errs.push(
            p("timeout"),
            format!(
                "timeout {} is longer than interval {}: a check must end before the next one starts, so use a timeout at most the interval",
                humantime::format_duration(timeout),
                humantime::format_duration(interval)
            ),
        );
    }
    if errs.count() != before {
        return None;
    }
    Some(HealthCheck {
        interval,
        timeout,
        rise,
        fall,
        port,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::testing::*;
    use std::time::Duration;

    #[test]
    fn health_check_defaults() {
        let hc = ok(&one("    health_check: {}\n")).listeners[0].health_check;
        assert_eq!(
            hc,
            Some(HealthCheck {
                interval: Duration::from_secs(1),
                timeout: Duration::from_millis(500),
                rise: 2,
                fall: 3,
                port: None
            })
        );
    }

    #[test]
    fn rise_and_fall_at_least_one() {
        let e = errors(&one("    health_check: {rise: 0, fall: 0}\n"));
        assert_eq!(e.len(), 2, "{e:#?}");
        assert!(e[0].starts_with("listeners[0].health_check.rise: must be at least 1, got 0"));
        assert!(e[1].starts_with("listeners[0].health_check.fall: must be at least 1, got 0"));
    }

    #[test]
    fn health_check_timeout_at_most_interval() {
        assert_one_error(
            &one("    health_check: {interval: 1s, timeout: 1500ms}\n"),
            "listeners[0].health_check.timeout",
            "timeout 1s 500ms is longer than interval 1s",
        );
        // Default timeout (500ms) against a shorter interval is caught too.
        assert_one_error(
            &one("    health_check: {interval: 200ms}\n"),
            "listeners[0].health_check.timeout",
            "longer than interval 200ms",
        );
        ok(&one("    health_check: {interval: 1s, timeout: 1s}\n"));
    }

    #[test]
    fn health_check_port_range() {
        for bad in ["0", "65536", "-1"] {
            assert_one_error(
                &one(&format!("    health_check: {{port: {bad}}}\n")),
                "listeners[0].health_check.port",
                "",
            );
        }
        assert_eq!(
            ok(&one("    health_check: {port: 65535}\n")).listeners[0]
                .health_check
                .unwrap()
                .port,
            Some(65535)
        );
    }
}
