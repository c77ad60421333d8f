//! Connection records: `connection_records` (which records the access log carries),
//! a TCP listener's `connection_report_interval`, and `syslog` (a second output for every
//! log line, RFC 5424).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::scalar::{absolute_path, choice, duration, int_in, named, ZeroOk};
use super::Errors;
use crate::model::{
    Listener, Protocol, RecordLevel, Records, RecordsOutput, Syslog, SyslogAddress,
};
use crate::raw::{RawConfig, RawListener, RawSyslog, Scalar, ScalarKind};

/// Shortest `connection_report_interval`: a record per connection more often than this
/// would be a log flood for a busy listener.
pub const MIN_REPORT_INTERVAL: Duration = Duration::from_secs(1);
/// `syslog.facility` when absent: `local0`.
pub const DEFAULT_SYSLOG_FACILITY: u8 = 16;
/// `syslog.app_name` when absent.
pub const DEFAULT_SYSLOG_APP_NAME: &str = "ringlb";
/// `syslog.queue_size` when absent: messages held for a receiver that is slow.
pub const DEFAULT_SYSLOG_QUEUE_SIZE: u32 = 4096;
/// Largest `syslog.queue_size` (a few hundred MB of messages at worst).
pub const MAX_SYSLOG_QUEUE_SIZE: u64 = 1 << 20;
/// RFC 5424's limits on APP-NAME and HOSTNAME.
const MAX_APP_NAME: usize = 48;
const MAX_HOSTNAME: usize = 255;

/// Facility names (RFC 5424 section 6.2.1), in code order.
const FACILITIES: [&str; 24] = [
    "kern",
    "user",
    "mail",
    "daemon",
    "auth",
    "syslog",
    "lpr",
    "news",
    "uucp",
    "cron",
    "authpriv",
    "ftp",
    "ntp",
    "security",
    "console",
    "solaris-cron",
    "local0",
    "local1",
    "local2",
    "local3",
    "local4",
    "local5",
    "local6",
    "local7",
];

/// The top-level keys: `connection_records` and `syslog`.
pub(super) fn output(errs: &mut Errors, raw: &RawConfig) -> RecordsOutput {
    let level = raw
        .connection_records
        .as_ref()
        .and_then(|s| {
            choice(
                errs,
                "connection_records",
                "connection_records level",
                s,
                &named(RecordLevel::ALL, RecordLevel::as_str),
            )
        })
        .unwrap_or_default();
    let syslog = raw.syslog.as_ref().and_then(|s| syslog(errs, s));
    RecordsOutput { level, syslog }
}

/// Listener `i`'s `connection_report_interval` (its level is set by [`apply_level`]).
pub(super) fn listener_records(
    errs: &mut Errors,
    i: usize,
    rl: &RawListener,
    protocol: Option<Protocol>,
) -> Records {
    let Some(s) = rl.connection_report_interval.as_ref() else {
        return Records::default();
    };
    let path = format!("listeners[{i}].connection_report_interval");
    let interval = duration(errs, &path, s, ZeroOk::No);
    if protocol == Some(Protocol::Udp) {
        errs.push(
            path.as_str(),
            "applies only to tcp listeners and this listener is udp: remove it or set protocol: tcp",
        );
        return Records::default();
    }
    let report_interval = interval.and_then(|d| {
        if d < MIN_REPORT_INTERVAL {
            errs.push(
                path.as_str(),
                format!("{d:?} is shorter than the minimum of 1s: every connection would log that often"),
            );
            return None;
        }
        Some(d)
    });
    Records {
        level: RecordLevel::End,
        report_interval,
    }
}

/// Gives every listener the file's level, and refuses a report interval that would never
/// report (the end line alone has no progress records).
pub(super) fn apply_level(
    errs: &mut Errors,
    level: RecordLevel,
    raw: &[RawListener],
    listeners: &mut [Listener],
) {
    if level != RecordLevel::All {
        for (i, rl) in raw.iter().enumerate() {
            if rl.connection_report_interval.is_some() {
                errs.push(
                    format!("listeners[{i}].connection_report_interval"),
                    "progress records are written only with connection_records: all: set it at the top level or remove this key",
                );
            }
        }
    }
    for l in listeners {
        l.records.level = level;
    }
}

fn syslog(errs: &mut Errors, raw: &RawSyslog) -> Option<Syslog> {
    let before = errs.count();
    let address = match &raw.address {
        None => {
            errs.push(
                "syslog.address",
                "missing: udp://IP:PORT, tcp://IP:PORT or unix:///PATH",
            );
            None
        }
        Some(s) => address(errs, s),
    };
    let facility = raw.facility.as_ref().and_then(|s| facility(errs, s));
    let app_name = raw
        .app_name
        .as_ref()
        .and_then(|s| header_field(errs, "syslog.app_name", s, MAX_APP_NAME));
    let hostname = raw
        .hostname
        .as_ref()
        .and_then(|s| header_field(errs, "syslog.hostname", s, MAX_HOSTNAME));
    let queue_size = raw
        .queue_size
        .as_ref()
        .and_then(|s| int_in(errs, "syslog.queue_size", s, 1, MAX_SYSLOG_QUEUE_SIZE, ""))
        .and_then(|n| u32::try_from(n).ok());
    if errs.count() != before {
        return None;
    }
    Some(Syslog {
        address: address?,
        facility: facility.unwrap_or(DEFAULT_SYSLOG_FACILITY),
        app_name: app_name.unwrap_or_else(|| DEFAULT_SYSLOG_APP_NAME.to_string()),
        hostname,
        queue_size: queue_size.unwrap_or(DEFAULT_SYSLOG_QUEUE_SIZE),
    })
}

fn address(errs: &mut Errors, s: &Scalar) -> Option<SyslogAddress> {
    const PATH: &str = "syslog.address";
    let text = s.text.as_str();
    let socket = |errs: &mut Errors, rest: &str| match rest.parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            errs.push(
                PATH,
                format!(
                    "{} does not end in IP:PORT (e.g. 127.0.0.1:514 or [::1]:514): a host name would need a lookup that could stall the log writer",
                    s.shown()
                ),
            );
            None
        }
    };
    if s.kind == ScalarKind::Str {
        if let Some(rest) = text.strip_prefix("udp://") {
            return socket(errs, rest).map(SyslogAddress::Udp);
        }
        if let Some(rest) = text.strip_prefix("tcp://") {
            return socket(errs, rest).map(SyslogAddress::Tcp);
        }
        if let Some(rest) = text.strip_prefix("unix://") {
            let path = Scalar {
                text: rest.to_string(),
                kind: ScalarKind::Str,
            };
            return absolute_path(errs, PATH, &path, Some(super::MAX_CONTROL_PATH))
                .map(|p: PathBuf| SyslogAddress::Unix(p));
        }
    }
    errs.push(
        PATH,
        format!(
            "{} is not a syslog address: expected udp://IP:PORT, tcp://IP:PORT or unix:///PATH",
            s.shown()
        ),
    );
    None
}

fn facility(errs: &mut Errors, s: &Scalar) -> Option<u8> {
    if s.kind == ScalarKind::Int {
        return int_in(errs, "syslog.facility", s, 0, 23, "").and_then(|n| u8::try_from(n).ok());
    }
    let options: Vec<(&str, u8)> = FACILITIES.iter().zip(0u8..).map(|(n, c)| (*n, c)).collect();
    choice(errs, "syslog.facility", "syslog facility", s, &options)
}

/// APP-NAME or HOSTNAME: printable US-ASCII without spaces (RFC 5424 PRINTUSASCII).
fn header_field(errs: &mut Errors, path: &str, s: &Scalar, max: usize) -> Option<String> {
    let t = &s.text;
    if t.is_empty() || t.len() > max || !t.bytes().all(|b| (33..=126).contains(&b)) {
        errs.push(
            path,
            format!(
                "{} must be 1 to {max} printable ASCII characters without spaces",
                s.shown()
            ),
        );
        return None;
    }
    Some(t.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::testing::{assert_one_error, ok, one, one_udp};

    #[test]
    fn end_records_and_no_syslog_by_default() {
        let c = ok(&one(""));
        assert_eq!(c.records, RecordsOutput::default());
        assert_eq!(c.listeners[0].records, Records::default());
        assert_eq!(c.listeners[0].records.level, RecordLevel::End);
    }

    #[test]
    fn all_records_with_an_interval_reach_the_listener() {
        let c = ok(&format!(
            "connection_records: all\n{}",
            one("    connection_report_interval: 30s\n")
        ));
        assert_eq!(
            c.listeners[0].records,
            Records {
                level: RecordLevel::All,
                report_interval: Some(Duration::from_secs(30)),
            }
        );
    }

    #[test]
    fn an_interval_needs_all_records_tcp_and_a_second() {
        assert_one_error(
            &one("    connection_report_interval: 30s\n"),
            "listeners[0].connection_report_interval",
            "connection_records: all",
        );
        assert_one_error(
            &format!(
                "connection_records: all\n{}",
                one("    connection_report_interval: 500ms\n")
            ),
            "listeners[0].connection_report_interval",
            "minimum of 1s",
        );
        assert_one_error(
            &format!(
                "connection_records: all\n{}",
                one_udp("    connection_report_interval: 5s\n")
            ),
            "listeners[0].connection_report_interval",
            "only to tcp",
        );
        assert_one_error(
            &format!("connection_records: some\n{}", one("")),
            "connection_records",
            "expected end or all",
        );
    }

    #[test]
    fn syslog_addresses_and_defaults() {
        let c = ok(&format!(
            "syslog:\n  address: udp://127.0.0.1:514\n{}",
            one("")
        ));
        assert_eq!(
            c.records.syslog,
            Some(Syslog {
                address: SyslogAddress::Udp("127.0.0.1:514".parse().unwrap()),
                facility: 16,
                app_name: "ringlb".into(),
                hostname: None,
                queue_size: DEFAULT_SYSLOG_QUEUE_SIZE,
            })
        );
        let c = ok(&format!(
            "syslog: {{address: \"tcp://[::1]:6514\", facility: local7, app_name: lb-a, hostname: edge1, queue_size: 10}}\n{}",
            one("")
        ));
        let s = c.records.syslog.unwrap();
        assert_eq!(s.address, SyslogAddress::Tcp("[::1]:6514".parse().unwrap()));
        assert_eq!((s.facility, s.app_name.as_str()), (23, "lb-a"));
        assert_eq!((s.hostname.as_deref(), s.queue_size), (Some("edge1"), 10));
        let c = ok(&format!(
            "syslog: {{address: \"unix:///dev/log\", facility: 3}}\n{}",
            one("")
        ));
        let s = c.records.syslog.unwrap();
        assert_eq!(s.address, SyslogAddress::Unix("/dev/log".into()));
        assert_eq!(s.facility, 3);
    }

    #[test]
    fn bad_syslog_keys_name_their_path() {
        for (yaml, path, needle) in [
            ("syslog: {facility: local0}\n", "syslog.address", "missing"),
            (
                "syslog: {address: \"udp://localhost:514\"}\n",
                "syslog.address",
                "IP:PORT",
            ),
            (
                "syslog: {address: \"http://1.2.3.4:514\"}\n",
                "syslog.address",
                "not a syslog address",
            ),
            (
                "syslog: {address: \"unix://dev/log\"}\n",
                "syslog.address",
                "absolute path",
            ),
            (
                "syslog: {address: \"udp://1.2.3.4:514\", facility: local9}\n",
                "syslog.facility",
                "unknown syslog facility",
            ),
            (
                "syslog: {address: \"udp://1.2.3.4:514\", facility: 24}\n",
                "syslog.facility",
                "too large",
            ),
            (
                "syslog: {address: \"udp://1.2.3.4:514\", app_name: \"a b\"}\n",
                "syslog.app_name",
                "printable",
            ),
            (
                "syslog: {address: \"udp://1.2.3.4:514\", queue_size: 0}\n",
                "syslog.queue_size",
                "at least 1",
            ),
        ] {
            assert_one_error(&format!("{yaml}{}", one("")), path, needle);
        }
    }
}
