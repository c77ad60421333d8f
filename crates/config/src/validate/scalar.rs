//! Values every level of the file shares: addresses, CIDRs, booleans, choices among
//! names, bounded integers and durations. Each checker reports its own problem and
//! returns `None` (or the default) on error, so the caller carries on.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;

use super::Errors;
use crate::raw::{Scalar, ScalarKind};

/// Shortest timeout or interval honoured: below it a timer or a health check would spin.
pub const MIN_DURATION: Duration = Duration::from_millis(1);
/// Longest duration accepted: `Instant + d` must never overflow at runtime.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// `(YAML spelling, value)` for every value of an enum: the spellings live once, in the
/// model's `as_str`.
pub(super) fn named<T: Copy, const N: usize>(
    all: [T; N],
    name: fn(T) -> &'static str,
) -> [(&'static str, T); N] {
    all.map(|v| (name(v), v))
}

pub(super) fn socket_addr(errs: &mut Errors, path: &str, s: &Scalar) -> Option<SocketAddr> {
    match s.text.parse::<SocketAddr>() {
        Ok(a) if s.kind == ScalarKind::Str => Some(a),
        _ => {
            errs.push(path, format!("invalid socket address {}", s.shown()));
            None
        }
    }
}

/// An absolute path to a file (a trailing `/` names a directory and is refused), of at
/// most `max_len` bytes when given.
pub(super) fn absolute_path(
    errs: &mut Errors,
    path: &str,
    s: &Scalar,
    max_len: Option<usize>,
) -> Option<PathBuf> {
    let problem = if s.kind != ScalarKind::Str {
        Some(format!("expected a path, got {}", s.shown()))
    } else if s.text.is_empty() {
        Some("is empty: give an absolute path, or leave the key out".to_string())
    } else if !s.text.starts_with('/') {
        Some(format!(
            "{} is not an absolute path: write it from / (it must not depend on the directory ringlb is started from)",
            s.shown()
        ))
    } else if s.text.ends_with('/') {
        Some(format!("{} names a directory: give a file name", s.shown()))
    } else if s.text.contains('\0') {
        Some("contains a NUL byte".to_string())
    } else {
        max_len.filter(|&max| s.text.len() > max).map(|max| {
            format!(
                "{} is {} bytes long: a Unix socket path is at most {max} bytes",
                s.shown(),
                s.text.len()
            )
        })
    };
    match problem {
        Some(message) => {
            errs.push(path, message);
            None
        }
        None => Some(PathBuf::from(&s.text)),
    }
}

/// A CIDR, or a bare address meaning just that host (/32 or /128).
pub(super) fn cidr(errs: &mut Errors, path: &str, s: &Scalar) -> Option<IpNet> {
    if s.kind == ScalarKind::Str {
        if let Ok(net) = s.text.parse::<IpNet>() {
            // 10.1.2.3/8 means 10.0.0.0/8: keep the network, as matching does.
            return Some(net.trunc());
        }
        if let Ok(ip) = s.text.parse::<IpAddr>() {
            return Some(IpNet::from(ip));
        }
    }
    errs.push(
        path,
        format!(
            "invalid CIDR {}: expected an address or address/prefix, e.g. 10.0.0.0/8, 192.0.2.7 or 2001:db8::/32",
            s.shown()
        ),
    );
    None
}

pub(super) fn boolean(errs: &mut Errors, path: &str, s: &Scalar) -> Option<bool> {
    if s.kind == ScalarKind::Bool {
        return Some(s.text == "true");
    }
    errs.push(path, format!("expected true or false, got {}", s.shown()));
    None
}

pub(super) fn choice<T: Copy>(
    errs: &mut Errors,
    path: &str,
    what: &str,
    s: &Scalar,
    options: &[(&str, T)],
) -> Option<T> {
    if s.kind == ScalarKind::Str {
        if let Some((_, v)) = options.iter().find(|(name, _)| *name == s.text) {
            return Some(*v);
        }
    }
    let names: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
    let allowed = match names.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
        _ => names.join(", "),
    };
    errs.push(
        path,
        format!("unknown {what} {}: expected {allowed}", s.shown()),
    );
    None
}

/// An integer in `min..=max`; `hint` is appended when the value is out of range.
pub(super) fn int_in(
    errs: &mut Errors,
    path: &str,
    s: &Scalar,
    min: u64,
    max: u64,
    hint: &str,
) -> Option<u64> {
    let range = if max == u64::from(u32::MAX) {
        format!("{min} or more")
    } else {
        format!("{min}..={max}")
    };
    if s.kind != ScalarKind::Int {
        errs.push(
            path,
            format!("expected an integer, {range}, got {}", s.shown()),
        );
        return None;
    }
    // Negative values do not parse as u64 and are below every minimum here.
    let n = match s.text.parse::<u64>() {
        Ok(n) => n,
        Err(_) if s.text.starts_with('-') => {
            errs.push(
                path,
                format!("must be at least {min}, got {}{hint}", s.text),
            );
            return None;
        }
        Err(_) => {
            errs.push(path, format!("{} is too large: expected {range}", s.text));
            return None;
        }
    };
    if n < min {
        errs.push(path, format!("must be at least {min}, got {n}{hint}"));
        None
    } else if n > max {
        errs.push(path, format!("{n} is too large: expected {range}"));
        None
    } else {
        Some(n)
    }
}

pub(super) fn opt_int(
    errs: &mut Errors,
    path: &str,
    s: Option<&Scalar>,
    default: u32,
    min: u64,
    max: u64,
    hint: &str,
) -> u32 {
    match s {
        None => default,
        Some(s) => int_in(errs, path, s, min, max, hint)
            .and_then(|v| u32::try_from(v).ok())
            .unwrap_or(default),
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum ZeroOk {
    Yes,
    No,
}

pub(super) fn duration(
    errs: &mut Errors,
    path: &str,
    s: &Scalar,
    zero: ZeroOk,
) -> Option<Duration> {
    const EXAMPLES: &str = "e.g. \"250ms\", \"2s\", \"15m\"";
    if s.kind != ScalarKind::Str {
        errs.push(
            path,
            format!(
                "invalid duration {}: a unit is required, {EXAMPLES}",
                s.shown()
            ),
        );
        return None;
    }
    let d = match humantime::parse_duration(&s.text) {
        Ok(d) => d,
        Err(e) => {
            errs.push(
                path,
                format!(
                    "invalid duration {} ({e}): write a number and a unit, {EXAMPLES}",
                    s.shown()
                ),
            );
            return None;
        }
    };
    if d.is_zero() {
        if zero == ZeroOk::Yes {
            return Some(d);
        }
        errs.push(
            path,
            format!("duration {} must be greater than zero", s.shown()),
        );
        None
    } else if d < MIN_DURATION {
        errs.push(
            path,
            format!(
                "duration {} is below 1ms, the shortest timer ringlb honours",
                s.shown()
            ),
        );
        None
    } else if d > MAX_DURATION {
        errs.push(
            path,
            format!("duration {} is longer than the maximum of 365d", s.shown()),
        );
        None
    } else {
        Some(d)
    }
}

/// A duration in whole seconds (above zero); `unit_why` says who counts in seconds, for
/// the message: "the kernel counts keepalive times in seconds".
pub(super) fn whole_seconds(
    errs: &mut Errors,
    path: &str,
    s: &Scalar,
    unit_why: &str,
) -> Option<Duration> {
    let d = duration(errs, path, s, ZeroOk::No)?;
    if d.subsec_nanos() != 0 {
        errs.push(
            path,
            format!(
                "{} is not a whole number of seconds: {unit_why}, write e.g. \"{}s\"",
                s.shown(),
                d.as_secs().max(1)
            ),
        );
        return None;
    }
    Some(d)
}

pub(super) fn opt_duration(
    errs: &mut Errors,
    path: &str,
    s: Option<&Scalar>,
    default: Duration,
    zero: ZeroOk,
) -> Duration {
    match s {
        None => default,
        Some(s) => duration(errs, path, s, zero).unwrap_or(default),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::testing::*;

    #[test]
    fn durations_use_humantime_syntax() {
        let t = tcp(&ok(&one(
            "    connect_timeout: 1.5s\n    idle_timeout: 1h 30m\n",
        )));
        assert_eq!(t.connect_timeout, Duration::from_millis(1500));
        assert_eq!(t.idle_timeout, Duration::from_secs(5400));
        assert_one_error(
            &one("    connect_timeout: fast\n"),
            "listeners[0].connect_timeout",
            "invalid duration \"fast\"",
        );
        assert_one_error(
            &one("    connect_timeout: 5 parsecs\n"),
            "listeners[0].connect_timeout",
            "unknown time unit",
        );
        assert_one_error(
            &one("    idle_timeout: 15\n"),
            "listeners[0].idle_timeout",
            "a unit is required",
        );
    }

    #[test]
    fn durations_must_not_be_zero_where_zero_makes_no_sense() {
        assert_one_error(
            &one("    connect_timeout: 0s\n"),
            "listeners[0].connect_timeout",
            "must be greater than zero",
        );
        assert_one_error(
            &one("    idle_timeout: 0ms\n"),
            "listeners[0].idle_timeout",
            "must be greater than zero",
        );
        assert_one_error(
            &one_udp("    session_timeout: 0s\n"),
            "listeners[0].session_timeout",
            "must be greater than zero",
        );
        assert_one_error(
            &one("    health_check: {interval: 0s}\n"),
            "listeners[0].health_check.interval",
            "must be greater than zero",
        );
        assert_one_error(
            &one("    health_check: {timeout: 0s}\n"),
            "listeners[0].health_check.timeout",
            "must be greater than zero",
        );
    }

    #[test]
    fn durations_are_bounded() {
        assert_one_error(
            &one("    connect_timeout: 500us\n"),
            "listeners[0].connect_timeout",
            "below 1ms",
        );
        assert_one_error(
            &one("    idle_timeout: 400d\n"),
            "listeners[0].idle_timeout",
            "maximum of 365d",
        );
        ok(&one("    idle_timeout: 365d\n    connect_timeout: 1ms\n"));
    }
}
