//! One log record as one line: the text format (env_logger's default, byte for byte, so
//! existing parsers keep working) or a JSON object, optionally behind the sd-daemon
//! priority prefix journald reads.

use std::fmt::{self, Write as _};
use std::time::SystemTime;

use log::kv::{self, Key, Value, VisitSource};
use log::{Level, Record};

/// How lines are written: `log_format` in the configuration, `--log-format` on the
/// command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `[2026-11-24T15:04:18.639806Z INFO  target] message`.
    Text,
    /// `{"ts":"…","level":"INFO","target":"…","msg":"…", fields…}`, one object per line.
    Json,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Text => "text",
            Format::Json => "json",
        }
    }
}

/// Everything that decides how a record is rendered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Style {
    pub format: Format,
    /// Start every line with `<N>`, the syslog priority journald reads from a stream.
    pub journald: bool,
    /// ANSI colours on the level, as env_logger on a terminal (text format only).
    pub color: bool,
}

/// The sd-daemon priority of a level (sd-daemon(3)): `journalctl -p warning` then shows
/// warnings and errors only.
pub fn priority(level: Level) -> u8 {
    match level {
        Level::Error => 3,
        Level::Warn => 4,
        Level::Info => 6,
        Level::Debug | Level::Trace => 7,
    }
}

/// Names the JSON object gives its own members; a record field of the same name is
/// written as `field_<name>` so no key appears twice.
const RESERVED: [&str; 4] = ["ts", "level", "target", "msg"];

/// How far a continuation line of a multi-line text message is indented (env_logger's).
const INDENT: &str = "    ";

/// Appends the line for `record`, logged at `now`, newline included.
pub fn render(out: &mut String, style: Style, record: &Record<'_>, now: SystemTime) {
    let prefix = Prefix(style.journald.then(|| priority(record.level())));
    // Writing into a String cannot fail; a failing Display impl of an argument only cuts
    // that line short, which is all a logger can do about it.
    let _ = match style.format {
        Format::Text => text(out, style.color, prefix, record, now),
        Format::Json => json(out, prefix, record, now),
    };
    out.push('\n');
}

/// The `<N>` journald priority, or nothing.
#[derive(Clone, Copy)]
struct Prefix(Option<u8>);

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(n) => write!(f, "<{n}>"),
            None => Ok(()),
        }
    }
}

fn text(
    out: &mut String,
    color: bool,
    prefix: Prefix,
    record: &Record<'_>,
    now: SystemTime,
) -> fmt::Result {
    let ts = humantime::format_rfc3339_micros(now);
    let (open, close) = if color {
        ("\x1b[90m[\x1b[0m", "\x1b[90m]\x1b[0m")
    } else {
        ("[", "]")
    };
    write!(out, "{prefix}{open}{ts} ")?;
    let level = record.level();
    if color {
        write!(out, "{}{level:<5}\x1b[0m", level_color(level))?;
    } else {
        write!(out, "{level:<5}")?;
    }
    if !record.target().is_empty() {
        write!(out, " {}", record.target())?;
    }
    write!(out, "{close} ")?;
    Indented { out, prefix }.write_fmt(*record.args())
}

fn level_color(level: Level) -> &'static str {
    match level {
        Level::Error => "\x1b[1m\x1b[31m",
        Level::Warn => "\x1b[33m",
        Level::Info => "\x1b[32m",
        Level::Debug => "\x1b[34m",
        Level::Trace => "\x1b[36m",
    }
}

/// Writes a message with every line after the first indented (and prefixed again, so
/// journald gives each line the record's priority).
struct Indented<'a> {
    out: &'a mut String,
    prefix: Prefix,
}

impl fmt::Write for Indented<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let mut lines = s.split('\n');
        if let Some(first) = lines.next() {
            self.out.push_str(first);
        }
        for line in lines {
            write!(self.out, "\n{}{INDENT}{line}", self.prefix)?;
        }
        Ok(())
    }
}

fn json(out: &mut String, prefix: Prefix, record: &Record<'_>, now: SystemTime) -> fmt::Result {
    write!(
        out,
        "{prefix}{{\"ts\":\"{}\",\"level\":\"{}\",\"target\":",
        humantime::format_rfc3339_micros(now),
        record.level()
    )?;
    json_str(out, record.target());
    out.push_str(",\"msg\":\"");
    JsonEscaped(out).write_fmt(*record.args())?;
    out.push('"');
    // A failing visit leaves the fields written so far: the object is closed either way.
    let _ = record.key_values().visit(&mut Fields(out));
    out.push('}');
    Ok(())
}

/// Writes every key-value pair of a record as a JSON member.
struct Fields<'a>(&'a mut String);

impl<'kvs> VisitSource<'kvs> for Fields<'_> {
    fn visit_pair(&mut self, key: Key<'kvs>, value: Value<'kvs>) -> Result<(), kv::Error> {
        let out = &mut *self.0;
        out.push(',');
        if RESERVED.contains(&key.as_str()) {
            json_str(out, &format!("field_{}", key.as_str()));
        } else {
            json_str(out, key.as_str());
        }
        out.push(':');
        json_value(out, &value).map_err(|_| kv::Error::msg("formatting a field failed"))
    }
}

/// Numbers and booleans as JSON numbers and booleans; everything else as a string of
/// its Display.
fn json_value(out: &mut String, value: &Value<'_>) -> fmt::Result {
    if let Some(b) = value.to_bool() {
        write!(out, "{b}")
    } else if let Some(n) = value.to_u64() {
        write!(out, "{n}")
    } else if let Some(n) = value.to_i64() {
        write!(out, "{n}")
    } else if let Some(s) = value.to_borrowed_str() {
        json_str(out, s);
        Ok(())
    } else if let Some(x) = value.to_f64().filter(|x| x.is_finite()) {
        write!(out, "{x}")
    } else {
        out.push('"');
        write!(JsonEscaped(out), "{value}")?;
        out.push('"');
        Ok(())
    }
}

fn json_str(out: &mut String, s: &str) {
    out.push('"');
    // Cannot fail: JsonEscaped only pushes onto a String.
    let _ = JsonEscaped(out).write_str(s);
    out.push('"');
}

/// Escapes what it is given as the inside of a JSON string (RFC 8259).
struct JsonEscaped<'a>(&'a mut String);

impl fmt::Write for JsonEscaped<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for c in s.chars() {
            match c {
                '"' => self.0.push_str("\\\""),
                '\\' => self.0.push_str("\\\\"),
                '\n' => self.0.push_str("\\n"),
                '\r' => self.0.push_str("\\r"),
                '\t' => self.0.push_str("\\t"),
                c if u32::from(c) < 0x20 || c == '\u{7f}' => {
                    write!(self.0, "\\u{:04x}", u32::from(c))?;
                }
                c => self.0.push(c),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;
    use std::time::{Duration, UNIX_EPOCH};

    const PLAIN: Style = Style {
        format: Format::Text,
        journald: false,
        color: false,
    };

    fn at() -> SystemTime {
        UNIX_EPOCH + Duration::from_micros(1_795_532_658_639_806)
    }

    fn line(style: Style, level: Level, target: &str, args: fmt::Arguments<'_>) -> String {
        let mut out = String::new();
        let record = Record::builder()
            .level(level)
            .target(target)
            .args(args)
            .build();
        render(&mut out, style, &record, at());
        out
    }

    #[test]
    fn text_is_env_loggers_default_format() {
        assert_eq!(
            line(PLAIN, Level::Info, "ringlb::control", format_args!("ready")),
            "[2026-11-24T15:04:18.639806Z INFO  ringlb::control] ready\n"
        );
        assert_eq!(
            line(PLAIN, Level::Warn, "ringlb", format_args!("x={}", 1)),
            "[2026-11-24T15:04:18.639806Z WARN  ringlb] x=1\n"
        );
        assert_eq!(
            line(PLAIN, Level::Error, "", format_args!("no target")),
            "[2026-11-24T15:04:18.639806Z ERROR] no target\n"
        );
        // Whole seconds still show six digits.
        let mut out = String::new();
        let record = Record::builder()
            .level(Level::Debug)
            .target("t")
            .args(format_args!("m"))
            .build();
        render(&mut out, PLAIN, &record, UNIX_EPOCH);
        assert_eq!(out, "[1970-01-01T00:00:00.000000Z DEBUG t] m\n");
    }

    #[test]
    fn continuation_lines_are_indented_and_prefixed() {
        assert_eq!(
            line(PLAIN, Level::Info, "t", format_args!("a\nb")),
            "[2026-11-24T15:04:18.639806Z INFO  t] a\n    b\n"
        );
        let journald = Style {
            journald: true,
            ..PLAIN
        };
        assert_eq!(
            line(journald, Level::Warn, "t", format_args!("a\nb")),
            "<4>[2026-11-24T15:04:18.639806Z WARN  t] a\n<4>    b\n"
        );
    }

    #[test]
    fn journald_priorities() {
        let journald = Style {
            journald: true,
            ..PLAIN
        };
        for (level, n) in [
            (Level::Error, "<3>"),
            (Level::Warn, "<4>"),
            (Level::Info, "<6>"),
            (Level::Debug, "<7>"),
            (Level::Trace, "<7>"),
        ] {
            let l = line(journald, level, "t", format_args!("m"));
            assert!(l.starts_with(&format!("{n}[2026-")), "{l:?}");
            let j = line(
                Style {
                    format: Format::Json,
                    ..journald
                },
                level,
                "t",
                format_args!("m"),
            );
            assert!(j.starts_with(&format!("{n}{{\"ts\"")), "{j:?}");
        }
    }

    #[test]
    fn colors_only_when_asked() {
        let l = line(
            Style {
                color: true,
                ..PLAIN
            },
            Level::Info,
            "t",
            format_args!("m"),
        );
        assert_eq!(
            l,
            "\x1b[90m[\x1b[0m2026-11-24T15:04:18.639806Z \x1b[32mINFO \x1b[0m t\x1b[90m]\x1b[0m m\n"
        );
    }

    #[test]
    fn json_has_the_fixed_members_and_typed_fields() {
        let json = Style {
            format: Format::Json,
            ..PLAIN
        };
        let client: SocketAddr = "[::1]:5000".parse().unwrap();
        let kvs: [(&str, Value<'_>); 6] = [
            ("listener", Value::from("we\"b")),
            ("client", Value::from_display(&client)),
            ("bytes_in", Value::from(10u64)),
            ("delta", Value::from(-3i64)),
            ("passive", Value::from(true)),
            ("msg", Value::from("clash")),
        ];
        let record = Record::builder()
            .level(Level::Info)
            .target("ringlb::access")
            .args(format_args!("line\tone\n\u{1}"))
            .key_values(&kvs)
            .build();
        let mut out = String::new();
        render(&mut out, json, &record, at());
        assert_eq!(
            out,
            "{\"ts\":\"2026-11-24T15:04:18.639806Z\",\"level\":\"INFO\",\"target\":\"ringlb::access\",\
             \"msg\":\"line\\tone\\n\\u0001\",\"listener\":\"we\\\"b\",\"client\":\"[::1]:5000\",\
             \"bytes_in\":10,\"delta\":-3,\"passive\":true,\"field_msg\":\"clash\"}\n"
        );
        let v: serde_json::Value = serde_json::from_str(out.trim_end()).unwrap();
        assert_eq!(v["msg"], "line\tone\n\u{1}");
        assert_eq!(v["bytes_in"], 10);
        assert_eq!(v["client"], "[::1]:5000");
    }

    #[test]
    fn json_strings_survive_any_text() {
        let json = Style {
            format: Format::Json,
            ..PLAIN
        };
        for s in ["", "\\", "\"\"", "\u{7f}\u{0}", "ünïcødé ☃", "a\r\nb"] {
            let out = line(json, Level::Info, s, format_args!("{s}"));
            let v: serde_json::Value =
                serde_json::from_str(out.trim_end()).unwrap_or_else(|e| panic!("{out:?}: {e}"));
            assert_eq!(v["msg"], s);
            assert_eq!(v["target"], s);
            assert!(!out.trim_end().contains('\n'), "one line: {out:?}");
        }
    }
}
