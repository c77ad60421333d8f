//! One listener's `health_check` mapping.

use super::scalar::{int_in, opt_duration, opt_int, ZeroOk};
use super::{Errors, DEFAULT_HC_FALL, DEFAULT_HC_INTERVAL, DEFAULT_HC_RISE, DEFAULT_HC_TIMEOUT};
use crate::model::HealthCheck;
use crate::raw::{RawHealthCheck, Scalar, ScalarKind};

/// Longest `send` and `expect`, in bytes after decoding escapes: a check reads at most
/// this much, and an echo of an ISO 8583 network-management message or a FIX heartbeat
/// fits well inside it.
pub const MAX_PAYLOAD: usize = 512;

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
    let send = hc.send.as_ref().and_then(|s| payload(errs, &p("send"), s));
    let expect = hc
        .expect
        .as_ref()
        .and_then(|s| payload(errs, &p("expect"), s));
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
        send,
        expect,
    })
}

/// `send` / `expect`: a quoted string whose bytes are its UTF-8 text with the escapes
/// `\\`, `\r`, `\n`, `\t`, `\0` and `\xHH` decoded (single-quote it in YAML so YAML
/// leaves the backslashes to ringlb); 1..=MAX_PAYLOAD bytes.
fn payload(errs: &mut Errors, path: &str, s: &Scalar) -> Option<Vec<u8>> {
    if s.kind != ScalarKind::Str {
        errs.push(
            path,
            format!(
                "expected a string, got {}: quote it, e.g. '{}'",
                s.shown(),
                s.text
            ),
        );
        return None;
    }
    let bytes = match unescape(&s.text) {
        Ok(b) => b,
        Err(why) => {
            errs.push(path, format!("{why} in {}", s.shown()));
            return None;
        }
    };
    if bytes.is_empty() || bytes.len() > MAX_PAYLOAD {
        errs.push(
            path,
            format!(
                "must be 1 to {MAX_PAYLOAD} bytes after escapes, got {}",
                bytes.len()
            ),
        );
        return None;
    }
    Some(bytes)
}

/// Decodes `\\`, `\r`, `\n`, `\t`, `\0` and `\xHH` (two hex digits: any byte).
fn unescape(text: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(text.len());
    let mut rest = text.as_bytes();
    while let Some((&b, tail)) = rest.split_first() {
        rest = tail;
        if b != b'\\' {
            out.push(b);
            continue;
        }
        let Some((&e, tail)) = rest.split_first() else {
            return Err("a lone backslash at the end (write \\\\ for one)".to_string());
        };
        rest = tail;
        match e {
            b'\\' => out.push(b'\\'),
            b'r' => out.push(b'\r'),
            b'n' => out.push(b'\n'),
            b't' => out.push(b'\t'),
            b'0' => out.push(0),
            b'x' => {
                let hex = rest
                    .get(..2)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or("\\x must be followed by two hex digits")?;
                out.push(hex);
                rest = &rest[2..];
            }
            other => {
                return Err(format!(
                    "unknown escape \\{} (use \\\\, \\r, \\n, \\t, \\0 or \\xHH)",
                    char::from(other)
                ))
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::testing::*;
    use std::time::Duration;

    #[test]
    fn health_check_defaults() {
        let hc = ok(&one("    health_check: {}\n")).listeners[0]
            .health_check
            .clone();
        assert_eq!(
            hc,
            Some(HealthCheck {
                interval: Duration::from_secs(1),
                timeout: Duration::from_millis(500),
                rise: 2,
                fall: 3,
                port: None,
                send: None,
                expect: None,
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
                .clone()
                .unwrap()
                .port,
            Some(65535)
        );
    }

    #[test]
    fn send_and_expect_decode_escapes() {
        let hc = ok(&one(
            "    health_check: {send: 'PING\\r\\n\\x00\\xff\\\\', expect: 'PONG'}\n",
        ))
        .listeners[0]
            .health_check
            .clone()
            .unwrap();
        assert_eq!(hc.send.as_deref(), Some(&b"PING\r\n\x00\xff\\"[..]));
        assert_eq!(hc.expect.as_deref(), Some(&b"PONG"[..]));
        assert!(hc.exchanges());
        // Either may stand alone: send alone wants any reply, expect alone a greeting.
        ok(&one("    health_check: {send: 'x'}\n"));
        ok(&one("    health_check: {expect: '220 '}\n"));
        let plain = ok(&one("    health_check: {}\n")).listeners[0]
            .health_check
            .clone()
            .unwrap();
        assert!(!plain.exchanges());
    }

    #[test]
    fn send_and_expect_errors_name_the_key() {
        assert_one_error(
            &one("    health_check: {send: 'a\\q'}\n"),
            "listeners[0].health_check.send",
            "unknown escape \\q",
        );
        assert_one_error(
            &one("    health_check: {expect: 'a\\x4'}\n"),
            "listeners[0].health_check.expect",
            "two hex digits",
        );
        assert_one_error(
            &one("    health_check: {send: 'a\\'}\n"),
            "listeners[0].health_check.send",
            "lone backslash",
        );
        assert_one_error(
            &one("    health_check: {send: ''}\n"),
            "listeners[0].health_check.send",
            "must be 1 to 512 bytes",
        );
        assert_one_error(
            &one(&format!(
                "    health_check: {{expect: '{}'}}\n",
                "a".repeat(513)
            )),
            "listeners[0].health_check.expect",
            "must be 1 to 512 bytes after escapes, got 513",
        );
        assert_one_error(
            &one("    health_check: {send: 800}\n"),
            "listeners[0].health_check.send",
            "expected a string",
        );
    }
}
