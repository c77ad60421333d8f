//! A TCP listener's `stickiness:` mapping: learned stickiness, so that a client (a FIX or
//! ISO 8583 engine) comes back to the backend it last used after a reconnect, even when the
//! backend set changed in between.
//!
//! TCP only: a datagram's source address is not proven by a handshake, so on UDP a spoofer
//! could fill the table and push real clients' entries out; and a UDP session already
//! stays on its backend for its whole life. The listener checks reject the key on a UDP
//! listener like every other TCP-only key. Every algorithm takes it, the hashing ones too:
//! `source_hash` and `maglev` pin a client only while the backend set stays the same,
//! stickiness keeps it when the set changes.

use std::time::Duration;

use super::scalar::{boolean, choice, opt_int, whole_seconds};
use super::Errors;
use crate::model::{Stickiness, StickinessKey};
use crate::raw::{RawStickiness, Scalar};

/// Entries a table holds when `table_size` is not given (2 MiB of memory).
pub const DEFAULT_STICKY_TABLE_SIZE: u32 = 65_536;
/// Upper bound of `table_size`: each entry takes 32 bytes, so this is 512 MiB at most.
pub const MAX_STICKY_TABLE_SIZE: u64 = 16 * 1024 * 1024;
/// Source ports per key with `key: source_ip_port_range` when `port_range` is not given.
pub const DEFAULT_STICKY_PORT_RANGE: u32 = 1024;
/// An entry unused for this long is forgotten when `expire` is not given.
pub const DEFAULT_STICKY_EXPIRE: Duration = Duration::from_secs(3600);
/// Longest `expire`: entries keep their last use in whole seconds in 24 bits (194 days),
/// and ages must stay well inside that.
pub const MAX_STICKY_EXPIRE: Duration = Duration::from_secs(30 * 24 * 3600);

const KEYS: [(&str, bool); 2] = [("source_ip", false), ("source_ip_port_range", true)];

/// `None` when the key is absent or has a problem (reported).
pub(super) fn stickiness(
    errs: &mut Errors,
    i: usize,
    raw: Option<&RawStickiness>,
) -> Option<Stickiness> {
    let raw = raw?;
    let before = errs.count();
    let path = |key: &str| format!("listeners[{i}].stickiness.{key}");
    // `None`: a key that is not one (reported), which port_range is then not judged by.
    let by_port = match &raw.key {
        None => Some(false),
        Some(s) => choice(errs, &path("key"), "stickiness key", s, &KEYS),
    };
    let port_range = opt_int(
        errs,
        &path("port_range"),
        raw.port_range.as_ref(),
        DEFAULT_STICKY_PORT_RANGE,
        1,
        65_536,
        " (source ports per key: 1 keeps every port apart)",
    );
    if raw.port_range.is_some() && by_port == Some(false) {
        errs.push(
            path("port_range"),
            "port_range divides source ports into keys and applies only to key: source_ip_port_range: set that key or remove port_range",
        );
    }
    let table_size = opt_int(
        errs,
        &path("table_size"),
        raw.table_size.as_ref(),
        DEFAULT_STICKY_TABLE_SIZE,
        1,
        MAX_STICKY_TABLE_SIZE,
        " (a table of 0 entries would remember nobody)",
    );
    let expire = match &raw.expire {
        None => DEFAULT_STICKY_EXPIRE,
        Some(s) => expire(errs, &path("expire"), s).unwrap_or(DEFAULT_STICKY_EXPIRE),
    };
    let single_active = raw
        .single_active
        .as_ref()
        .and_then(|s| boolean(errs, &path("single_active"), s))
        .unwrap_or(false);
    if errs.count() != before {
        return None;
    }
    Some(Stickiness {
        key: if by_port == Some(true) {
            StickinessKey::SourceIpPortRange { port_range }
        } else {
            StickinessKey::SourceIp
        },
        table_size,
        expire,
        single_active,
    })
}

/// Whole seconds, 1s..=30d: ages are counted in seconds.
fn expire(errs: &mut Errors, path: &str, s: &Scalar) -> Option<Duration> {
    let d = whole_seconds(errs, path, s, "entries age in whole seconds")?;
    if d > MAX_STICKY_EXPIRE {
        errs.push(
            path,
            format!("{} is longer than the maximum of 30d", s.shown()),
        );
        return None;
    }
    // Zero is refused, and a whole number of seconds above zero is at least 1s.
    Some(d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::testing::*;

    fn parsed(body: &str) -> Option<Stickiness> {
        tcp(&ok(&one(&format!("    stickiness: {body}\n")))).stickiness
    }

    #[test]
    fn absent_means_no_stickiness() {
        assert_eq!(tcp(&ok(&one(""))).stickiness, None);
    }

    #[test]
    fn defaults_fill_in() {
        assert_eq!(
            parsed("{}"),
            Some(Stickiness {
                key: StickinessKey::SourceIp,
                table_size: DEFAULT_STICKY_TABLE_SIZE,
                expire: DEFAULT_STICKY_EXPIRE,
                single_active: false,
            })
        );
        assert_eq!(
            parsed("{key: source_ip_port_range}").map(|s| s.key),
            Some(StickinessKey::SourceIpPortRange { port_range: 1024 })
        );
    }

    #[test]
    fn every_key_is_read() {
        assert_eq!(
            parsed(
                "{key: source_ip_port_range, port_range: 100, table_size: 1000, expire: 2h, single_active: true}"
            ),
            Some(Stickiness {
                key: StickinessKey::SourceIpPortRange { port_range: 100 },
                table_size: 1000,
                expire: Duration::from_secs(7200),
                single_active: true,
            })
        );
        assert_eq!(
            parsed("{key: source_ip, expire: 30d}").map(|s| s.expire),
            Some(MAX_STICKY_EXPIRE)
        );
    }

    #[test]
    fn port_range_needs_its_key() {
        assert_one_error(
            &one("    stickiness: {port_range: 16}\n"),
            "listeners[0].stickiness.port_range",
            "applies only to key: source_ip_port_range",
        );
        assert_one_error(
            &one("    stickiness: {key: source_ip, port_range: 16}\n"),
            "listeners[0].stickiness.port_range",
            "applies only to key: source_ip_port_range",
        );
    }

    #[test]
    fn ranges_name_their_key() {
        let e = errors(&one(
            "    stickiness: {key: source_port, port_range: 0, table_size: 0, expire: 1500ms, single_active: maybe}\n",
        ));
        assert_errors_start_with(
            &e,
            &[
                "listeners[0].stickiness.key: unknown stickiness key \"source_port\": expected source_ip or source_ip_port_range",
                "listeners[0].stickiness.port_range: must be at least 1, got 0",
                "listeners[0].stickiness.table_size: must be at least 1, got 0",
                "listeners[0].stickiness.expire: \"1500ms\" is not a whole number of seconds",
                "listeners[0].stickiness.single_active:",
            ],
        );
        assert_one_error(
            &one("    stickiness: {key: source_ip_port_range, port_range: 65537}\n"),
            "listeners[0].stickiness.port_range",
            "65537 is too large: expected 1..=65536",
        );
        assert_one_error(
            &one("    stickiness: {table_size: 16777217}\n"),
            "listeners[0].stickiness.table_size",
            "expected 1..=16777216",
        );
        assert_one_error(
            &one("    stickiness: {expire: 31d}\n"),
            "listeners[0].stickiness.expire",
            "longer than the maximum of 30d",
        );
        assert_one_error(
            &one("    stickiness: {expire: 0s}\n"),
            "listeners[0].stickiness.expire",
            "greater than zero",
        );
    }

    #[test]
    fn unknown_keys_are_refused() {
        assert_one_error(
            &one("    stickiness: {expires: 1h}\n"),
            "listeners[0].stickiness.expires",
            "unknown key",
        );
    }

    #[test]
    fn tcp_only() {
        let e = errors(&one_udp("    stickiness: {}\n"));
        assert_eq!(
            e,
            ["listeners[0].stickiness: stickiness applies only to tcp listeners and this listener is udp: remove it or set protocol: tcp"]
        );
    }

    #[test]
    fn every_algorithm_takes_it() {
        for algorithm in ["source_hash", "maglev", "least_connections", "round_robin"] {
            let c = ok(&one(&format!(
                "    algorithm: {algorithm}\n    stickiness: {{single_active: true}}\n"
            )));
            assert!(tcp(&c).stickiness.is_some_and(|s| s.single_active));
        }
    }
}
