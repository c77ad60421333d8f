//! The configuration's side of logging: `log_format` as the logger knows it, applied at
//! start and at reloads (docs/operations.md, "Logs").

use std::time::Duration;

use ringlb_config::LogFormat;
use ringlb_logging::Format;

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
