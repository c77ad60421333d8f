//! Reading ringlb's log lines: env_logger timestamps, so a test can time what ringlb did
//! by ringlb's own clock (a slow log reader does not inflate it), and the control plane's
//! `backend up|down:` health transition lines.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The timestamp env_logger puts first: `[2026-11-24T15:04:18.639806Z LEVEL target] …`
/// (UTC, up to nanoseconds). `None` for a line without one.
pub fn log_time(line: &str) -> Option<SystemTime> {
    let ts = line.strip_prefix('[')?.split_whitespace().next()?;
    let (date, time) = ts.strip_suffix('Z')?.split_once('T')?;
    let mut d = date.splitn(3, '-').map(|p| p.parse::<i64>());
    let (y, mo, da) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let (hms, frac) = time.split_once('.').unwrap_or((time, ""));
    let mut t = hms.splitn(3, ':').map(|p| p.parse::<i64>());
    let (h, mi, s) = (t.next()?.ok()?, t.next()?.ok()?, t.next()?.ok()?);
    if frac.len() > 9 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let nanos: u32 = if frac.is_empty() {
        0
    } else {
        format!("{frac:0<9}").parse().ok()?
    };
    let secs = days_from_civil(y, mo, da) * 86_400 + h * 3600 + mi * 60 + s;
    Some(UNIX_EPOCH + Duration::new(u64::try_from(secs).ok()?, nanos))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `b - a`, or zero if `b` is earlier (clock granularity).
pub fn since(a: SystemTime, b: SystemTime) -> Duration {
    b.duration_since(a).unwrap_or(Duration::ZERO)
}

/// One `backend up|down: listener=L backend=B outcome=O consecutive=N [passive=true]`
/// line of the control plane (the prober's transition, docs/health.md).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthFlip {
    /// Index of the line in the captured output ([`crate::Ringlb::logs`]).
    pub idx: usize,
    pub at: SystemTime,
    pub up: bool,
    pub listener: String,
    pub backend: String,
    pub outcome: String,
    pub consecutive: u32,
    pub passive: bool,
}

/// Parses line `idx` of the output as a [`HealthFlip`]; `None` for any other line.
pub fn parse_health_flip(idx: usize, line: &str) -> Option<HealthFlip> {
    let (up, rest) = if let Some(p) = line.find("backend down: ") {
        (false, &line[p + "backend down: ".len()..])
    } else if let Some(p) = line.find("backend up: ") {
        (true, &line[p + "backend up: ".len()..])
    } else {
        return None;
    };
    let kv: HashMap<&str, &str> = rest
        .split_whitespace()
        .filter_map(|w| w.split_once('='))
        .collect();
    Some(HealthFlip {
        idx,
        at: log_time(line)?,
        up,
        listener: kv.get("listener")?.to_string(),
        backend: kv.get("backend")?.to_string(),
        outcome: kv.get("outcome")?.to_string(),
        consecutive: kv.get("consecutive")?.parse().ok()?,
        passive: kv.get("passive") == Some(&"true"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_time_parses_env_logger_timestamps() {
        let t = log_time("[1970-01-01T00:00:01.000250Z INFO  x] y").unwrap();
        assert_eq!(t, UNIX_EPOCH + Duration::from_micros(1_000_250));
        let t = log_time("[2000-03-01T00:00:00Z WARN  x] y").unwrap();
        assert_eq!(t, UNIX_EPOCH + Duration::from_secs(951_868_800));
        let t = log_time("[2026-11-24T15:04:18.639806Z INFO  ringlb::control] ready").unwrap();
        assert_eq!(t, UNIX_EPOCH + Duration::from_micros(1_795_532_658_639_806));
        assert!(log_time("ready: 1 listener(s)").is_none());
        assert!(log_time("[2026-11-24 x] y").is_none());
        assert!(log_time("[2026-11-24T15:04:18.1234567890Z x] y").is_none());
    }

    #[test]
    fn since_saturates() {
        let a = UNIX_EPOCH + Duration::from_secs(10);
        let b = UNIX_EPOCH + Duration::from_secs(12);
        assert_eq!(since(a, b), Duration::from_secs(2));
        assert_eq!(since(b, a), Duration::ZERO);
    }

    #[test]
    fn flip_lines_parse() {
        let f = parse_health_flip(
            7,
            "[2026-11-24T15:04:18.856817Z WARN  ringlb::control] backend down: listener=t \
             backend=127.0.0.1:1 outcome=client_connect_failed consecutive=3 passive=true",
        )
        .unwrap();
        assert_eq!(
            (
                f.idx,
                f.up,
                f.listener.as_str(),
                f.backend.as_str(),
                f.outcome.as_str(),
                f.consecutive,
                f.passive
            ),
            (
                7,
                false,
                "t",
                "127.0.0.1:1",
                "client_connect_failed",
                3,
                true
            )
        );
        let f = parse_health_flip(
            0,
            "[2026-11-24T15:04:18Z INFO  ringlb::control] backend up: listener=t \
             backend=[::1]:80 outcome=ok consecutive=2",
        )
        .unwrap();
        assert!(f.up && !f.passive && f.backend == "[::1]:80");
        assert!(parse_health_flip(
            0,
            "[2026-11-24T15:04:18Z INFO  x] listener \"t\" listening on 127.0.0.1:1"
        )
        .is_none());
        // A transition without a timestamp cannot be timed: not a flip.
        assert!(parse_health_flip(
            0,
            "backend down: listener=t backend=127.0.0.1:1 outcome=refused consecutive=2"
        )
        .is_none());
    }
}
