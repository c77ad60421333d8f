//! The configuration's side of logging: `log_format` as the logger knows it, applied at
//! start and at reloads (docs/operations.md, "Logs").

use std::time::Duration;

use ringlb_config::{LogFormat, RecordsOutput, SyslogAddress};
use ringlb_logging::{Format, SyslogSettings};

/// How long an exit waits for the log writer to write what is queued.
pub const EXIT_FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

pub fn format(f: LogFormat) -> Format {
    match f {
        LogFormat::Text => Format::Text,
        LogFormat::Json => Format::Json,
    }
}

/// A reload's `log_format`: the new format, when it changed what runs (not when
/// `--log-format` pinned it).
pub fn apply_format(f: LogFormat) -> Option<Format> {
    let f = format(f);
    (ringlb_logging::format() != Some(f) && ringlb_logging::set_format(f)).then_some(f)
}

/// The `syslog:` output as the logger takes it (`None`: none). The host name, unless the
/// file gives one, is read once here: the writer thread never looks it up.
pub fn syslog(records: &RecordsOutput) -> Option<SyslogSettings> {
    let s = records.syslog.as_ref()?;
    let hostname = s.hostname.clone().unwrap_or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty() && h.bytes().all(|b| (33..=126).contains(&b)))
            .unwrap_or_else(|| "-".to_string())
    });
    Some(SyslogSettings {
        address: match &s.address {
            SyslogAddress::Udp(a) => ringlb_logging::SyslogAddress::Udp(*a),
            SyslogAddress::Tcp(a) => ringlb_logging::SyslogAddress::Tcp(*a),
            SyslogAddress::Unix(p) => ringlb_logging::SyslogAddress::Unix(p.clone()),
        },
        facility: s.facility,
        app_name: s.app_name.clone(),
        hostname,
        queue_size: usize::try_from(s.queue_size).unwrap_or(usize::MAX),
    })
}

/// Points the logger's syslog output where the configuration says (at start and at
/// every reload; an unchanged output keeps its connection).
pub fn apply_syslog(records: &RecordsOutput) {
    ringlb_logging::set_syslog(syslog(records));
}
