//! A TCP listener's `per_source:` mapping: limits per client source (an IPv4 address or an
//! IPv6 /64), so that one misbehaving client cannot take every connection slot.
//!
//! TCP only: a datagram's source address is not proven by a handshake, so on UDP a
//! spoofer could spend another client's quota and lock it out. The listener checks
//! reject the key on a UDP listener like every other TCP-only key.

use super::scalar::{int_in, opt_int};
use super::Errors;
use crate::model::{PerSource, SourceRate};
use crate::raw::{RawPerSource, Scalar};

/// Sources tracked at once when `max_sources` is not given.
pub const DEFAULT_MAX_SOURCES: u32 = 100_000;
/// Upper bound of `max_sources`: each tracked source takes up to about 100 bytes, so this
/// is about 1 GB at most; a typo must not promise more.
pub const MAX_SOURCES: u64 = 10_000_000;
/// Upper bound of `new_per_second`: the bucket refills one connection per 1 s / rate,
/// kept in nanoseconds, and above this a per-source rate no longer limits anything a
/// listener can accept.
pub const MAX_RATE: u64 = 1_000_000;

/// `None` when the key is absent or has a problem (reported).
pub(super) fn per_source(
    errs: &mut Errors,
    i: usize,
    raw: Option<&RawPerSource>,
) -> Option<PerSource> {
    let raw = raw?;
    let before = errs.count();
    let path = |key: &str| format!("listeners[{i}].per_source.{key}");
    // Every limit is at least 1: 0 would refuse every client.
    let mut limit = |key: &str, value: Option<&Scalar>, max: u64, hint: &str| {
        value.and_then(|s| int_in(errs, &path(key), s, 1, max, hint))
    };
    let no_limit =
        |key: &str| format!(" (0 would refuse every client: leave {key} out for no limit)");
    let max_connections = limit(
        "max_connections",
        raw.max_connections.as_ref(),
        u32::MAX.into(),
        &no_limit("max_connections"),
    );
    let per_second = limit(
        "new_per_second",
        raw.new_per_second.as_ref(),
        MAX_RATE,
        &no_limit("new_per_second"),
    );
    let burst = limit(
        "burst",
        raw.burst.as_ref(),
        u32::MAX.into(),
        " (a source must be able to open at least one connection)",
    );
    if raw.burst.is_some() && raw.new_per_second.is_none() {
        errs.push(
            path("burst"),
            "burst sizes the new_per_second bucket: set new_per_second too, or remove burst",
        );
    }
    let max_sources = opt_int(
        errs,
        &path("max_sources"),
        raw.max_sources.as_ref(),
        DEFAULT_MAX_SOURCES,
        1,
        MAX_SOURCES,
        "",
    );
    if raw.max_connections.is_none() && raw.new_per_second.is_none() {
        errs.push(
            format!("listeners[{i}].per_source"),
            "sets no limit: give max_connections, new_per_second or both (burst and max_sources only size the bucket and the table)",
        );
    }
    if errs.count() != before {
        return None;
    }
    let max_connections = max_connections.and_then(|n| u32::try_from(n).ok());
    let rate = per_second
        .and_then(|n| u32::try_from(n).ok())
        .map(|per_second| SourceRate {
            per_second,
            burst: burst
                .and_then(|n| u32::try_from(n).ok())
                .unwrap_or(per_second),
        });
    Some(PerSource {
        max_connections,
        rate,
        max_sources,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::testing::*;

    fn parsed(body: &str) -> Option<PerSource> {
        tcp(&ok(&one(&format!("    per_source: {body}\n")))).per_source
    }

    #[test]
    fn absent_means_no_limit() {
        assert_eq!(tcp(&ok(&one(""))).per_source, None);
    }

    #[test]
    fn defaults_fill_in() {
        assert_eq!(
            parsed("{max_connections: 20}"),
            Some(PerSource {
                max_connections: Some(20),
                rate: None,
                max_sources: DEFAULT_MAX_SOURCES,
            })
        );
        // burst defaults to the rate: one second's worth at once.
        assert_eq!(
            parsed("{new_per_second: 5}"),
            Some(PerSource {
                max_connections: None,
                rate: Some(SourceRate {
                    per_second: 5,
                    burst: 5
                }),
                max_sources: DEFAULT_MAX_SOURCES,
            })
        );
    }

    #[test]
    fn every_key_is_read() {
        assert_eq!(
            parsed("{max_connections: 3, new_per_second: 2, burst: 7, max_sources: 1000}"),
            Some(PerSource {
                max_connections: Some(3),
                rate: Some(SourceRate {
                    per_second: 2,
                    burst: 7
                }),
                max_sources: 1000,
            })
        );
    }

    #[test]
    fn at_least_one_limit() {
        for body in ["{}", "{max_sources: 10}"] {
            assert_one_error(
                &one(&format!("    per_source: {body}\n")),
                "listeners[0].per_source",
                "sets no limit: give max_connections, new_per_second or both",
            );
        }
    }

    #[test]
    fn burst_needs_a_rate() {
        assert_one_error(
            &one("    per_source: {max_connections: 2, burst: 4}\n"),
            "listeners[0].per_source.burst",
            "set new_per_second too, or remove burst",
        );
    }

    #[test]
    fn ranges_name_their_key() {
        let e = errors(&one(
            "    per_source: {max_connections: 0, new_per_second: 1000001, burst: 0, max_sources: 0}\n",
        ));
        let want = [
            "listeners[0].per_source.max_connections: must be at least 1, got 0 (0 would refuse every client",
            "listeners[0].per_source.new_per_second: 1000001 is too large: expected 1..=1000000",
            "listeners[0].per_source.burst: must be at least 1, got 0",
            "listeners[0].per_source.max_sources: must be at least 1, got 0",
        ];
        assert_errors_start_with(&e, &want);
        assert_one_error(
            &one("    per_source: {max_connections: 1, max_sources: 10000001}\n"),
            "listeners[0].per_source.max_sources",
            "10000001 is too large: expected 1..=10000000",
        );
        assert_one_error(
            &one("    per_source: {max_connections: \"5\"}\n"),
            "listeners[0].per_source.max_connections",
            "expected an integer",
        );
    }

    #[test]
    fn unknown_keys_are_refused() {
        assert_one_error(
            &one("    per_source: {max_conections: 5}\n"),
            "listeners[0].per_source.max_conections",
            "unknown key",
        );
    }

    #[test]
    fn tcp_only() {
        let e = errors(&one_udp("    per_source: {max_connections: 5}\n"));
        assert_eq!(
            e,
            ["listeners[0].per_source: per_source applies only to tcp listeners and this listener is udp: remove it or set protocol: tcp"]
        );
        // A bad value is reported even where the key does not belong.
        let e = errors(&one_udp("    per_source: {max_connections: 0}\n"));
        assert_eq!(e.len(), 2, "{e:#?}");
    }

    #[test]
    fn problems_come_after_the_other_settings() {
        let e = errors(&one(
            "    per_source: {}\n    max_connections: 0\n    connect_attempts: 0\n",
        ));
        let keys: Vec<&str> = e
            .iter()
            .map(|l| l.split(':').next().unwrap_or_default())
            .collect();
        assert_eq!(
            keys,
            [
                "listeners[0].connect_attempts",
                "listeners[0].max_connections",
                "listeners[0].per_source"
            ]
        );
    }
}
