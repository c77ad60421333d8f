//! A TCP listener's connection lifecycle: what happens to its open connections when the
//! prober marks their backend down (`on_down`, on the listener and overridable per
//! backend, and `on_down_spread`), and how old they may grow (`max_connection_duration`).

use std::time::Duration;

use super::scalar::{choice, duration, named, opt_duration, ZeroOk};
use super::Errors;
use crate::model::{Backend, Lifecycle, OnDown, OnRecover, Protocol};
use crate::raw::{RawListener, Scalar, ScalarKind};

/// Connections ended by `on_down` end over this long by default: detection already takes
/// `fall × interval + timeout` (3.5 s with the default check), and 5 s more turns 10,000
/// clients reconnecting (each a logon on the next backend) into ~2,000 a second instead of
/// all in one millisecond.
pub const DEFAULT_ON_DOWN_SPREAD: Duration = Duration::from_secs(5);
/// Longest `on_down_spread`: beyond it links on a dead backend would stay stranded for
/// longer than any client waits for an answer.
pub const MAX_ON_DOWN_SPREAD: Duration = Duration::from_secs(3600);
/// Shortest `max_connection_duration`: below it connections would be closed almost as
/// soon as they are established.
pub const MIN_MAX_CONNECTION_DURATION: Duration = Duration::from_secs(1);

/// Reads listener `i`'s lifecycle keys and resolves each backend's `on_down` in
/// `backends` (the listener's unless the backend has its own). `backends` holds the
/// listener's valid backends in file order; when some were invalid the listener is
/// rejected anyway, and their `on_down` is left alone.
pub(super) fn lifecycle(
    errs: &mut Errors,
    i: usize,
    rl: &RawListener,
    protocol: Option<Protocol>,
    backends: &mut [Backend],
) -> Lifecycle {
    let path = |key: &str| format!("listeners[{i}].{key}");
    let on_down = rl
        .on_down
        .as_ref()
        .and_then(|s| on_down_mode(errs, &path("on_down"), s))
        .unwrap_or(OnDown::Keep);
    let on_down_spread = spread(errs, &path("on_down_spread"), rl.on_down_spread.as_ref());
    let on_recover = rl
        .on_recover
        .as_ref()
        .and_then(|s| {
            choice(
                errs,
                &path("on_recover"),
                "on_recover",
                s,
                &named(OnRecover::ALL, OnRecover::as_str),
            )
        })
        .unwrap_or(OnRecover::Keep);
    let max_connection_duration = rl
        .max_connection_duration
        .as_ref()
        .and_then(|s| max_connection_duration(errs, &path("max_connection_duration"), s));
    let raw_backends = rl.backends.as_deref().unwrap_or_default();
    let own: Vec<Option<OnDown>> = raw_backends
        .iter()
        .enumerate()
        .map(|(k, rb)| {
            let s = rb.on_down.as_ref()?;
            on_down_mode(errs, &path(&format!("backends[{k}].on_down")), s)
        })
        .collect();

    // Every key written, with its path: judged against the protocol and the health check.
    let mut written: Vec<(String, Option<OnDown>)> = Vec::new();
    for (key, value, present) in [
        ("on_down", Some(on_down), rl.on_down.is_some()),
        ("on_down_spread", None, rl.on_down_spread.is_some()),
        ("on_recover", None, rl.on_recover.is_some()),
        (
            "max_connection_duration",
            None,
            rl.max_connection_duration.is_some(),
        ),
    ] {
        if present {
            written.push((path(key), value));
        }
    }
    for (k, rb) in raw_backends.iter().enumerate() {
        if rb.on_down.is_some() {
            written.push((path(&format!("backends[{k}].on_down")), own[k]));
        }
    }
    if protocol == Some(Protocol::Udp) {
        for (key, _) in &written {
            errs.push(
                key.as_str(),
                "applies only to tcp listeners and this listener is udp (a UDP session whose backend goes down moves to another one by itself): remove it or set protocol: tcp",
            );
        }
    } else if rl.health_check.is_none() {
        for (key, value) in &written {
            if let Some(mode @ (OnDown::Close | OnDown::Reset)) = value {
                errs.push(
                    key.as_str(),
                    format!(
                        "on_down: {} acts when a health check marks a backend down, and this listener has no health_check, so none ever is: add a health_check or remove on_down",
                        mode.as_str()
                    ),
                );
            }
        }
    }

    if backends.len() == raw_backends.len() {
        for (backend, own) in backends.iter_mut().zip(own) {
            backend.on_down = own.unwrap_or(on_down);
        }
    }
    Lifecycle {
        on_down,
        on_down_spread,
        on_recover,
        max_connection_duration,
    }
}

pub(super) fn on_down_mode(errs: &mut Errors, path: &str, s: &Scalar) -> Option<OnDown> {
    choice(
        errs,
        path,
        "on_down",
        s,
        &named(OnDown::ALL, OnDown::as_str),
    )
}

fn spread(errs: &mut Errors, path: &str, s: Option<&Scalar>) -> Duration {
    let d = opt_duration(errs, path, s, DEFAULT_ON_DOWN_SPREAD, ZeroOk::Yes);
    if d > MAX_ON_DOWN_SPREAD {
        errs.push(
            path,
            format!(
                "{d:?} is longer than the maximum of 1h: connections on a dead backend would stay stranded longer than any client waits"
            ),
        );
        return DEFAULT_ON_DOWN_SPREAD;
    }
    d
}

fn max_connection_duration(errs: &mut Errors, path: &str, s: &Scalar) -> Option<Duration> {
    let d = duration(errs, path, s, ZeroOk::No)?;
    if d < MIN_MAX_CONNECTION_DURATION {
        errs.push(
            path,
            format!(
                "duration {} is below 1s: connections would be closed almost as soon as they are established",
                s.shown()
            ),
        );
        return None;
    }
    Some(d)
}

/// A duration written as in the file (`250ms`, `5s`; zero allowed), for command-line
/// options that take one (`ringlb ctl shutdown-sessions --spread`): the same syntax and
/// the same messages as the file.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let mut errs = Errors::default();
    let s = Scalar {
        text: text.to_string(),
        kind: ScalarKind::Str,
    };
    duration(&mut errs, "", &s, ZeroOk::Yes).ok_or_else(|| {
        errs.0.first().map_or_else(
            || format!("invalid duration {text:?}"),
            |e| e.message.clone(),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::testing::*;

    /// A TCP listener with a health check, `extra` listener keys and two backends, the
    /// second with `backend_extra` (e.g. `on_down: reset`).
    fn checked(extra: &str, backend_extra: &str) -> String {
        format!(
            "listeners:\n  - name: l\n    bind: 127.0.0.1:7000\n    health_check: {{}}\n{extra}    backends:\n      - addr: 10.0.0.1:80\n      - addr: 10.0.0.2:80\n{backend_extra}"
        )
    }

    #[test]
    fn defaults_keep_connections_and_no_age_limit() {
        let c = ok(&one(""));
        let l = &c.listeners[0];
        assert_eq!(l.lifecycle, Lifecycle::default());
        assert_eq!(
            l.lifecycle,
            Lifecycle {
                on_down: OnDown::Keep,
                on_down_spread: Duration::from_secs(5),
                on_recover: OnRecover::Keep,
                max_connection_duration: None,
            }
        );
        assert_eq!(l.backends[0].on_down, OnDown::Keep);
    }

    #[test]
    fn every_key_is_read_and_backends_inherit_or_override() {
        let c = ok(&checked(
            "    on_down: close\n    on_down_spread: 250ms\n    on_recover: shed_backup\n    max_connection_duration: 4h\n",
            "        on_down: reset\n",
        ));
        let l = &c.listeners[0];
        assert_eq!(
            l.lifecycle,
            Lifecycle {
                on_down: OnDown::Close,
                on_down_spread: Duration::from_millis(250),
                on_recover: OnRecover::ShedBackup,
                max_connection_duration: Some(Duration::from_secs(4 * 3600)),
            }
        );
        let resolved: Vec<OnDown> = l.backends.iter().map(|b| b.on_down).collect();
        assert_eq!(resolved, [OnDown::Close, OnDown::Reset]);
        // A backend may also keep its connections when the listener closes them.
        let c = ok(&checked("    on_down: reset\n", "        on_down: keep\n"));
        let resolved: Vec<OnDown> = c.listeners[0].backends.iter().map(|b| b.on_down).collect();
        assert_eq!(resolved, [OnDown::Reset, OnDown::Keep]);
        assert_eq!(
            ok(&checked("    on_down_spread: 0s\n", "")).listeners[0]
                .lifecycle
                .on_down_spread,
            Duration::ZERO
        );
    }

    #[test]
    fn values_are_checked_with_their_paths() {
        // (listener keys, second backend's keys, path, message)
        let cases = [
            (
                "    on_down: drop\n",
                "",
                "listeners[0].on_down",
                "unknown on_down \"drop\": expected keep, close or reset",
            ),
            (
                "",
                "        on_down: true\n",
                "listeners[0].backends[1].on_down",
                "expected keep, close or reset",
            ),
            (
                "    on_down_spread: 2h\n",
                "",
                "listeners[0].on_down_spread",
                "maximum of 1h",
            ),
            (
                "    on_down_spread: 5\n",
                "",
                "listeners[0].on_down_spread",
                "a unit is required",
            ),
            (
                "    max_connection_duration: 500ms\n",
                "",
                "listeners[0].max_connection_duration",
                "below 1s",
            ),
            (
                "    max_connection_duration: 0s\n",
                "",
                "listeners[0].max_connection_duration",
                "must be greater than zero",
            ),
        ];
        for (keys, backend_keys, path, needle) in cases {
            assert_one_error(&checked(keys, backend_keys), path, needle);
        }
    }

    #[test]
    fn ending_connections_needs_a_health_check() {
        assert_one_error(
            &one("    on_down: close\n"),
            "listeners[0].on_down",
            "on_down: close acts when a health check marks a backend down",
        );
        assert_one_error(
            &with_backends("      - {addr: 10.0.0.1:80, on_down: reset}\n"),
            "listeners[0].backends[0].on_down",
            "no health_check",
        );
        // keep needs nothing, and the other keys mean nothing without it but harm nothing.
        ok(&one(
            "    on_down: keep\n    on_down_spread: 1s\n    max_connection_duration: 1h\n",
        ));
    }

    #[test]
    fn tcp_only() {
        for key in [
            "on_down: keep",
            "on_down_spread: 1s",
            "max_connection_duration: 1h",
        ] {
            let name = key.split(':').next().unwrap_or_default();
            assert_one_error(
                &one_udp(&format!("    {key}\n")),
                &format!("listeners[0].{name}"),
                "applies only to tcp listeners and this listener is udp",
            );
        }
        assert_one_error(
            "listeners:\n  - name: l\n    bind: 127.0.0.1:7000\n    protocol: udp\n    backends:\n      - {addr: 10.0.0.1:80, on_down: close}\n",
            "listeners[0].backends[0].on_down",
            "applies only to tcp listeners",
        );
    }

    #[test]
    fn command_line_durations_follow_the_file() {
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        let e = parse_duration("5").unwrap_err();
        assert!(
            e.contains("a unit is required") || e.contains("invalid duration"),
            "{e}"
        );
        assert!(parse_duration("soon")
            .unwrap_err()
            .contains("invalid duration"));
    }
}
