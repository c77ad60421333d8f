//! The control protocol, version 1 (docs/control-protocol.md): one JSON object per line
//! each way. Pure: decoding and encoding only, no I/O, so every hostile input is a unit or
//! property test away.
//!
//! Request: `{"v":1,"cmd":"drain","listener":"settlement","backend":"10.0.0.11:7000"}`.
//! Reply: `{"v":1,"ok":true,...}` or `{"v":1,"ok":false,"error":"..."}`.

use std::io;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use ringlb_scheduler::AdminState;

use crate::bounded::ReadTimeout;
use serde_json::{json, Map, Value};
use thiserror::Error;

/// The protocol version this build speaks.
pub const VERSION: u64 = 1;

/// Longest request line accepted, newline excluded. Requests are a few short fields.
pub const MAX_REQUEST_LINE: usize = 4096;

/// Largest configurable backend weight (the configuration's bound, 0..=65535).
pub const MAX_WEIGHT: u32 = 65_535;

/// Longest `shutdown-sessions` spread: the bound of the file's `on_down_spread`.
pub const MAX_SPREAD: Duration = ringlb_config::MAX_ON_DOWN_SPREAD;

/// Entries `stick-show` lists when it is not told how many.
pub const DEFAULT_STICK_LIMIT: u32 = 100;
/// Most entries one `stick-show` reply lists (about 8 MB of JSON, under the client's
/// reply limit).
pub const MAX_STICK_LIMIT: u32 = 100_000;

/// One command, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Who serves here: pid and readiness. Answered by the control socket's own thread,
    /// so it works while the control plane is busy (starting, reloading).
    Ping,
    /// Listeners, backends, health, admin state, weights, connections.
    Status,
    /// `drain`, `maint` or `ready` one backend.
    SetState {
        listener: String,
        backend: String,
        state: AdminState,
    },
    /// Override a backend's weight; `None` goes back to the configured one.
    Weight {
        listener: String,
        backend: String,
        weight: Option<u32>,
    },
    /// Send new connections back to the primaries.
    Failback { listener: String },
    /// `node fail` (true) or `node ok` (false).
    Node { failed: bool },
    /// Live upgrade to `binary` (default: the running executable).
    Upgrade { binary: Option<PathBuf> },
    /// End a backend's open TCP connections, each at its own random moment in
    /// `[0, spread)`: closed (FIN after what is in flight), or reset.
    ShutdownSessions {
        listener: String,
        backend: String,
        spread: Duration,
        reset: bool,
    },
    /// A backend's open connections (what `ringlb ctl wait-empty` polls).
    Active { listener: String, backend: String },
    /// A listener's sticky entries, the most recently used first, at most `limit`.
    StickShow { listener: String, limit: u32 },
    /// Forget a listener's sticky entries of `key` (an address, an address and a port, or
    /// a key as listed), or all of them and the `single_active` backend.
    StickClear {
        listener: String,
        key: Option<String>,
    },
    /// `single_active`: every client goes to `backend` from now on.
    StickMove { listener: String, backend: String },
}

impl Request {
    /// The `cmd` field.
    pub fn command(&self) -> &'static str {
        match self {
            Request::Ping => "ping",
            Request::Status => "status",
            Request::SetState { state, .. } => state.as_str(),
            Request::Weight { .. } => "weight",
            Request::Failback { .. } => "failback",
            Request::Node { .. } => "node",
            Request::Upgrade { .. } => "upgrade",
            Request::ShutdownSessions { .. } => "shutdown-sessions",
            Request::Active { .. } => "active",
            Request::StickShow { .. } => "stick-show",
            Request::StickClear { .. } => "stick-clear",
            Request::StickMove { .. } => "stick-move",
        }
    }

    /// Whether the request changes nothing (answered even while shutting down).
    pub fn is_read_only(&self) -> bool {
        matches!(
            self,
            Request::Ping | Request::Status | Request::Active { .. } | Request::StickShow { .. }
        )
    }
}

/// Why a request line was refused. The `Display` text is the reply's `error`.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    #[error("request is not valid UTF-8")]
    NotUtf8,
    #[error("request is not JSON: {0}")]
    NotJson(String),
    #[error("request must be a JSON object")]
    NotAnObject,
    #[error("missing \"v\": this build speaks protocol version {VERSION}")]
    NoVersion,
    #[error("unsupported protocol version {0}: this build speaks version {VERSION}")]
    Version(String),
    #[error("missing \"cmd\"")]
    NoCommand,
    #[error("unknown cmd {0:?}: expected ping, status, drain, maint, ready, weight, failback, node, upgrade, shutdown-sessions, active, stick-show, stick-clear or stick-move")]
    UnknownCommand(String),
    #[error("{cmd}: missing field \"{field}\"")]
    Missing {
        cmd: &'static str,
        field: &'static str,
    },
    #[error("{cmd}: field \"{field}\" {expected}")]
    Invalid {
        cmd: &'static str,
        field: &'static str,
        expected: &'static str,
    },
    #[error("{cmd}: unexpected field {field:?}")]
    Unexpected { cmd: &'static str, field: String },
}

/// A line's JSON object with its `"v"` checked and taken out: what requests and replies
/// share.
fn versioned_object(line: &[u8]) -> Result<Map<String, Value>, DecodeError> {
    let text = std::str::from_utf8(line).map_err(|_| DecodeError::NotUtf8)?;
    let value: Value =
        serde_json::from_str(text).map_err(|e| DecodeError::NotJson(e.to_string()))?;
    let Value::Object(mut fields) = value else {
        return Err(DecodeError::NotAnObject);
    };
    match fields.remove("v") {
        None => Err(DecodeError::NoVersion),
        Some(v) if v.as_u64() == Some(VERSION) => Ok(fields),
        Some(v) => Err(DecodeError::Version(shorten(&v.to_string()))),
    }
}

/// Decodes one request line (without its newline).
pub fn decode(line: &[u8]) -> Result<Request, DecodeError> {
    let mut fields = versioned_object(line)?;
    let cmd = match fields.remove("cmd") {
        None => return Err(DecodeError::NoCommand),
        Some(Value::String(cmd)) => cmd,
        Some(_) => {
            return Err(DecodeError::Invalid {
                cmd: "request",
                field: "cmd",
                expected: "must be a string",
            })
        }
    };
    let mut f = Fields { cmd: "", fields };
    let request = match cmd.as_str() {
        "ping" => {
            f.cmd = "ping";
            Request::Ping
        }
        "status" => {
            f.cmd = "status";
            Request::Status
        }
        "drain" | "maint" | "ready" => {
            let state = AdminState::parse(&cmd).unwrap_or(AdminState::Ready);
            f.cmd = state.as_str();
            Request::SetState {
                listener: f.string("listener")?,
                backend: f.string("backend")?,
                state,
            }
        }
        "weight" => {
            f.cmd = "weight";
            Request::Weight {
                listener: f.string("listener")?,
                backend: f.string("backend")?,
                weight: f.weight()?,
            }
        }
        "failback" => {
            f.cmd = "failback";
            Request::Failback {
                listener: f.string("listener")?,
            }
        }
        "node" => {
            f.cmd = "node";
            let failed = match f.string("state")?.as_str() {
                "fail" => true,
                "ok" => false,
                _ => {
                    return Err(DecodeError::Invalid {
                        cmd: "node",
                        field: "state",
                        expected: "must be \"fail\" or \"ok\"",
                    })
                }
            };
            Request::Node { failed }
        }
        "upgrade" => {
            f.cmd = "upgrade";
            Request::Upgrade {
                binary: f.optional_string("binary")?.map(PathBuf::from),
            }
        }
        "shutdown-sessions" => {
            f.cmd = "shutdown-sessions";
            Request::ShutdownSessions {
                listener: f.string("listener")?,
                backend: f.string("backend")?,
                spread: f.spread()?,
                reset: f.optional_bool("reset")?.unwrap_or(false),
            }
        }
        "active" => {
            f.cmd = "active";
            Request::Active {
                listener: f.string("listener")?,
                backend: f.string("backend")?,
            }
        }
        "stick-show" => {
            f.cmd = "stick-show";
            Request::StickShow {
                listener: f.string("listener")?,
                limit: f.limit()?,
            }
        }
        "stick-clear" => {
            f.cmd = "stick-clear";
            Request::StickClear {
                listener: f.string("listener")?,
                key: f.optional_string("key")?,
            }
        }
        "stick-move" => {
            f.cmd = "stick-move";
            Request::StickMove {
                listener: f.string("listener")?,
                backend: f.string("backend")?,
            }
        }
        other => return Err(DecodeError::UnknownCommand(shorten(other))),
    };
    f.finish()?;
    Ok(request)
}

/// Error texts quote what they were sent; a hostile megabyte is not echoed back whole.
fn shorten(text: &str) -> String {
    const MAX: usize = 64;
    match text.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_string(),
    }
}

/// The fields of one request that remain to be read.
struct Fields {
    cmd: &'static str,
    fields: Map<String, Value>,
}

impl Fields {
    fn string(&mut self, field: &'static str) -> Result<String, DecodeError> {
        self.optional_string(field)?.ok_or(DecodeError::Missing {
            cmd: self.cmd,
            field,
        })
    }

    fn optional_string(&mut self, field: &'static str) -> Result<Option<String>, DecodeError> {
        match self.fields.remove(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if !s.is_empty() => Ok(Some(s)),
            Some(_) => Err(DecodeError::Invalid {
                cmd: self.cmd,
                field,
                expected: "must be a non-empty string",
            }),
        }
    }

    /// `"weight"`: an integer 0..=65535, or null for the configured weight. Required, so
    /// that a forgotten value never silently resets an override.
    fn weight(&mut self) -> Result<Option<u32>, DecodeError> {
        let invalid = DecodeError::Invalid {
            cmd: self.cmd,
            field: "weight",
            expected: "must be an integer 0..=65535, or null for the configured weight",
        };
        match self.fields.remove("weight") {
            None => Err(DecodeError::Missing {
                cmd: self.cmd,
                field: "weight",
            }),
            Some(Value::Null) => Ok(None),
            Some(v) => match v.as_u64() {
                Some(w) if w <= u64::from(MAX_WEIGHT) => Ok(Some(w as u32)),
                _ => Err(invalid),
            },
        }
    }

    fn optional_bool(&mut self, field: &'static str) -> Result<Option<bool>, DecodeError> {
        match self.fields.remove(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(b)),
            Some(_) => Err(DecodeError::Invalid {
                cmd: self.cmd,
                field,
                expected: "must be true or false",
            }),
        }
    }

    /// `"spread_ms"`: milliseconds, at most an hour; absent or null: 0 (all at once).
    fn spread(&mut self) -> Result<Duration, DecodeError> {
        let invalid = DecodeError::Invalid {
            cmd: self.cmd,
            field: "spread_ms",
            expected: "must be an integer 0..=3600000 (milliseconds)",
        };
        match self.fields.remove("spread_ms") {
            None | Some(Value::Null) => Ok(Duration::ZERO),
            Some(v) => match v.as_u64().map(Duration::from_millis) {
                Some(d) if d <= MAX_SPREAD => Ok(d),
                _ => Err(invalid),
            },
        }
    }

    /// `"limit"`: 1..=100000 entries; absent or null: 100.
    fn limit(&mut self) -> Result<u32, DecodeError> {
        match self.fields.remove("limit") {
            None | Some(Value::Null) => Ok(DEFAULT_STICK_LIMIT),
            Some(v) => match v.as_u64() {
                Some(n) if (1..=u64::from(MAX_STICK_LIMIT)).contains(&n) => Ok(n as u32),
                _ => Err(DecodeError::Invalid {
                    cmd: self.cmd,
                    field: "limit",
                    expected: "must be an integer 1..=100000",
                }),
            },
        }
    }

    /// Any field left over is a mistake worth naming (a typo would otherwise be ignored).
    fn finish(self) -> Result<(), DecodeError> {
        match self.fields.into_iter().next() {
            None => Ok(()),
            Some((field, _)) => Err(DecodeError::Unexpected {
                cmd: self.cmd,
                field: shorten(&field),
            }),
        }
    }
}

/// One JSON object on one line, `"v"` first and the fields in the order given, so a
/// person reading a socat session sees the version and the verdict first.
fn line<'a>(fields: impl IntoIterator<Item = (&'a str, &'a Value)>) -> String {
    let mut out = format!("{{\"v\":{VERSION}");
    for (key, value) in fields {
        out.push(',');
        out.push_str(&Value::String(key.to_string()).to_string());
        out.push(':');
        out.push_str(&value.to_string());
    }
    out.push('}');
    out
}

/// Encodes a request as one line, without the newline.
pub fn encode(request: &Request) -> String {
    let mut fields: Vec<(&str, Value)> = vec![("cmd", json!(request.command()))];
    let mut put = |key: &'static str, value: Value| fields.push((key, value));
    match request {
        Request::Ping | Request::Status => {}
        Request::SetState {
            listener, backend, ..
        } => {
            put("listener", json!(listener));
            put("backend", json!(backend));
        }
        Request::Weight {
            listener,
            backend,
            weight,
        } => {
            put("listener", json!(listener));
            put("backend", json!(backend));
            put("weight", json!(weight));
        }
        Request::Failback { listener } => put("listener", json!(listener)),
        Request::Node { failed } => put("state", json!(if *failed { "fail" } else { "ok" })),
        Request::Upgrade { binary } => {
            if let Some(path) = binary {
                put("binary", json!(path.to_string_lossy()));
            }
        }
        Request::ShutdownSessions {
            listener,
            backend,
            spread,
            reset,
        } => {
            put("listener", json!(listener));
            put("backend", json!(backend));
            put("spread_ms", json!(spread.as_millis() as u64));
            put("reset", json!(reset));
        }
        Request::Active { listener, backend } | Request::StickMove { listener, backend } => {
            put("listener", json!(listener));
            put("backend", json!(backend));
        }
        Request::StickShow { listener, limit } => {
            put("listener", json!(listener));
            put("limit", json!(limit));
        }
        Request::StickClear { listener, key } => {
            put("listener", json!(listener));
            if let Some(key) = key {
                put("key", json!(key));
            }
        }
    }
    line(fields.iter().map(|(k, v)| (*k, v)))
}

/// A reply: the fields of a success, or why the request was refused.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    Ok(Map<String, Value>),
    Refused(String),
}

impl Reply {
    /// A success carrying one `message` for the operator.
    pub fn message(text: impl Into<String>) -> Reply {
        let mut fields = Map::new();
        fields.insert("message".into(), Value::String(text.into()));
        Reply::Ok(fields)
    }

    pub fn refused(why: impl Into<String>) -> Reply {
        Reply::Refused(why.into())
    }

    /// One line, without the newline: `{"v":1,"ok":true,...}` or
    /// `{"v":1,"ok":false,"error":"..."}`.
    pub fn encode(&self) -> String {
        let (ok, error);
        let fields: Vec<(&str, &Value)> = match self {
            Reply::Ok(fields) => {
                ok = json!(true);
                std::iter::once(("ok", &ok))
                    .chain(
                        fields
                            .iter()
                            .filter(|(k, _)| *k != "v" && *k != "ok")
                            .map(|(k, v)| (k.as_str(), v)),
                    )
                    .collect()
            }
            Reply::Refused(why) => {
                (ok, error) = (json!(false), json!(why));
                vec![("ok", &ok), ("error", &error)]
            }
        };
        line(fields)
    }

    /// Decodes a reply line (the client side).
    pub fn decode(line: &[u8]) -> Result<Reply, DecodeError> {
        let mut fields = versioned_object(line)?;
        match fields.remove("ok") {
            Some(Value::Bool(true)) => Ok(Reply::Ok(fields)),
            Some(Value::Bool(false)) => Ok(Reply::Refused(
                fields
                    .get("error")
                    .and_then(Value::as_str)
                    .unwrap_or("refused without a reason")
                    .to_string(),
            )),
            _ => Err(DecodeError::Invalid {
                cmd: "reply",
                field: "ok",
                expected: "must be true or false",
            }),
        }
    }
}

/// What reading one line from a stream gave.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// A line, without its `\n` (and a `\r` before it). The last line of a stream that
    /// ends without a newline counts too.
    Complete(Vec<u8>),
    /// More than the limit before any newline: the stream cannot be resynchronised.
    TooLong,
    /// The peer closed with nothing pending.
    Closed,
    /// Nothing complete before the deadline.
    Timeout,
    /// A read error other than a timeout.
    Failed,
}

/// Reads lines of at most `max` bytes; bytes after a line stay buffered for the next one.
#[derive(Debug)]
pub struct LineReader {
    max: usize,
    pending: Vec<u8>,
    closed: bool,
}

impl LineReader {
    pub fn new(max: usize) -> LineReader {
        LineReader {
            max,
            pending: Vec::new(),
            closed: false,
        }
    }

    /// The next line, read within `deadline`.
    pub fn read_line(&mut self, stream: &mut impl ReadTimeout, deadline: Instant) -> Line {
        let mut chunk = [0u8; 1024];
        loop {
            if let Some(line) = self.take_line() {
                return line;
            }
            if self.closed {
                return match std::mem::take(&mut self.pending) {
                    rest if rest.is_empty() => Line::Closed,
                    rest => Line::Complete(trim_cr(rest)),
                };
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || stream.set_timeout(left).is_err() {
                return Line::Timeout;
            }
            match stream.read(&mut chunk) {
                Ok(0) => self.closed = true,
                Ok(n) => self.pending.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Line::Timeout
                }
                Err(_) => return Line::Failed,
            }
        }
    }

    /// A complete line from what is buffered, or `TooLong` once the limit is passed
    /// without a newline.
    fn take_line(&mut self) -> Option<Line> {
        match self.pending.iter().position(|&b| b == b'\n') {
            Some(end) if end > self.max => Some(Line::TooLong),
            Some(end) => {
                let mut line: Vec<u8> = self.pending.drain(..=end).collect();
                line.pop();
                Some(Line::Complete(trim_cr(line)))
            }
            None if self.pending.len() > self.max => Some(Line::TooLong),
            None => None,
        }
    }
}

fn trim_cr(mut line: Vec<u8>) -> Vec<u8> {
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bounded::Script;
    use proptest::prelude::*;
    use std::time::Duration;

    fn requests() -> Vec<Request> {
        vec![
            Request::Ping,
            Request::Status,
            Request::SetState {
                listener: "settlement".into(),
                backend: "10.0.0.11:7000".into(),
                state: AdminState::Drain,
            },
            Request::SetState {
                listener: "a".into(),
                backend: "[::1]:1".into(),
                state: AdminState::Maint,
            },
            Request::SetState {
                listener: "a".into(),
                backend: "b".into(),
                state: AdminState::Ready,
            },
            Request::Weight {
                listener: "a".into(),
                backend: "b".into(),
                weight: Some(0),
            },
            Request::Weight {
                listener: "a".into(),
                backend: "b".into(),
                weight: None,
            },
            Request::Failback {
                listener: "a".into(),
            },
            Request::Node { failed: true },
            Request::Node { failed: false },
            Request::Upgrade { binary: None },
            Request::Upgrade {
                binary: Some("/usr/local/bin/ringlb".into()),
            },
            Request::ShutdownSessions {
                listener: "a".into(),
                backend: "b".into(),
                spread: Duration::from_millis(2500),
                reset: false,
            },
            Request::ShutdownSessions {
                listener: "a".into(),
                backend: "b".into(),
                spread: Duration::ZERO,
                reset: true,
            },
            Request::Active {
                listener: "a".into(),
                backend: "b".into(),
            },
            Request::StickShow {
                listener: "a".into(),
                limit: 7,
            },
            Request::StickClear {
                listener: "a".into(),
                key: None,
            },
            Request::StickClear {
                listener: "a".into(),
                key: Some("10.0.0.1:1024-2047".into()),
            },
            Request::StickMove {
                listener: "a".into(),
                backend: "b".into(),
            },
        ]
    }

    #[test]
    fn every_request_round_trips() {
        for r in requests() {
            let line = encode(&r);
            assert!(!line.contains('\n'), "{line}");
            assert_eq!(decode(line.as_bytes()), Ok(r), "{line}");
        }
    }

    #[test]
    fn the_documented_examples_decode() {
        assert_eq!(decode(br#"{"v":1,"cmd":"status"}"#), Ok(Request::Status));
        assert_eq!(encode(&Request::Status), r#"{"v":1,"cmd":"status"}"#);
        assert_eq!(
            decode(br#"{"cmd":"weight","v":1,"listener":"l","backend":"b","weight":3}"#),
            Ok(Request::Weight {
                listener: "l".into(),
                backend: "b".into(),
                weight: Some(3)
            })
        );
        assert_eq!(
            decode(br#" {"v":1,"cmd":"node","state":"fail"} "#),
            Ok(Request::Node { failed: true })
        );
    }

    #[test]
    fn bad_requests_say_what_is_wrong() {
        let cases: &[(&[u8], &str)] = &[
            (b"\xff\xfe", "not valid UTF-8"),
            (b"status", "not JSON"),
            (b"[1,2]", "must be a JSON object"),
            (br#"{"cmd":"status"}"#, "missing \"v\""),
            (
                br#"{"v":2,"cmd":"status"}"#,
                "unsupported protocol version 2",
            ),
            (
                br#"{"v":"1","cmd":"status"}"#,
                "unsupported protocol version \"1\"",
            ),
            (br#"{"v":1}"#, "missing \"cmd\""),
            (br#"{"v":1,"cmd":7}"#, "\"cmd\" must be a string"),
            (br#"{"v":1,"cmd":"reboot"}"#, "unknown cmd \"reboot\""),
            (
                br#"{"v":1,"cmd":"drain","listener":"l"}"#,
                "drain: missing field \"backend\"",
            ),
            (
                br#"{"v":1,"cmd":"maint","listener":"l","backend":5}"#,
                "maint: field \"backend\" must be a non-empty string",
            ),
            (
                br#"{"v":1,"cmd":"ready","listener":"","backend":"b"}"#,
                "non-empty string",
            ),
            (
                br#"{"v":1,"cmd":"weight","listener":"l","backend":"b"}"#,
                "missing field \"weight\"",
            ),
            (
                br#"{"v":1,"cmd":"weight","listener":"l","backend":"b","weight":65536}"#,
                "0..=65535",
            ),
            (
                br#"{"v":1,"cmd":"weight","listener":"l","backend":"b","weight":-1}"#,
                "0..=65535",
            ),
            (
                br#"{"v":1,"cmd":"weight","listener":"l","backend":"b","weight":2.5}"#,
                "0..=65535",
            ),
            (
                br#"{"v":1,"cmd":"node","state":"down"}"#,
                "\"fail\" or \"ok\"",
            ),
            (
                br#"{"v":1,"cmd":"drain","listener":"l","backend":"b","backnd":"c"}"#,
                "drain: unexpected field \"backnd\"",
            ),
            (
                br#"{"v":1,"cmd":"shutdown-sessions","listener":"l","backend":"b","spread_ms":3600001}"#,
                "shutdown-sessions: field \"spread_ms\" must be an integer 0..=3600000",
            ),
            (
                br#"{"v":1,"cmd":"shutdown-sessions","listener":"l","backend":"b","spread_ms":"2s"}"#,
                "(milliseconds)",
            ),
            (
                br#"{"v":1,"cmd":"shutdown-sessions","listener":"l","backend":"b","reset":"yes"}"#,
                "\"reset\" must be true or false",
            ),
            (
                br#"{"v":1,"cmd":"active","listener":"l"}"#,
                "active: missing field \"backend\"",
            ),
            (
                br#"{"v":1,"cmd":"stick-show","listener":"l","limit":0}"#,
                "stick-show: field \"limit\" must be an integer 1..=100000",
            ),
            (
                br#"{"v":1,"cmd":"stick-clear","listener":"l","key":5}"#,
                "stick-clear: field \"key\" must be a non-empty string",
            ),
            (
                br#"{"v":1,"cmd":"stick-move","listener":"l"}"#,
                "stick-move: missing field \"backend\"",
            ),
        ];
        for (line, needle) in cases {
            let e = decode(line).expect_err(&String::from_utf8_lossy(line));
            assert!(
                e.to_string().contains(needle),
                "{}: {e}",
                String::from_utf8_lossy(line)
            );
        }
        // An unexpected field on a command without arguments is named.
        assert_eq!(
            decode(br#"{"v":1,"cmd":"status","verbose":true}"#),
            Err(DecodeError::Unexpected {
                cmd: "status",
                field: "verbose".into()
            })
        );
    }

    #[test]
    fn shutdown_sessions_defaults_to_closing_at_once() {
        assert_eq!(
            decode(br#"{"v":1,"cmd":"shutdown-sessions","listener":"l","backend":"b"}"#),
            Ok(Request::ShutdownSessions {
                listener: "l".into(),
                backend: "b".into(),
                spread: Duration::ZERO,
                reset: false,
            })
        );
        assert!(Request::Active {
            listener: "l".into(),
            backend: "b".into()
        }
        .is_read_only());
    }

    #[test]
    fn stick_show_lists_a_hundred_unless_told() {
        assert_eq!(
            decode(br#"{"v":1,"cmd":"stick-show","listener":"l"}"#),
            Ok(Request::StickShow {
                listener: "l".into(),
                limit: DEFAULT_STICK_LIMIT,
            })
        );
        assert!(Request::StickShow {
            listener: "l".into(),
            limit: 1
        }
        .is_read_only());
        assert!(!Request::StickClear {
            listener: "l".into(),
            key: None
        }
        .is_read_only());
    }

    #[test]
    fn error_texts_do_not_echo_huge_input() {
        let huge = format!(r#"{{"v":1,"cmd":"{}"}}"#, "x".repeat(3000));
        let e = decode(huge.as_bytes()).unwrap_err().to_string();
        assert!(e.len() < 300, "{} bytes", e.len());
    }

    #[test]
    fn replies_round_trip() {
        let mut fields = Map::new();
        fields.insert("pid".into(), json!(42));
        for reply in [
            Reply::Ok(fields),
            Reply::message("drained"),
            Reply::refused("no listener named \"x\""),
        ] {
            let line = reply.encode();
            assert!(line.starts_with(r#"{"v":1,"ok":"#), "{line}");
            assert_eq!(Reply::decode(line.as_bytes()), Ok(reply));
        }
        assert_eq!(
            Reply::refused("why").encode(),
            r#"{"v":1,"ok":false,"error":"why"}"#
        );
        assert!(Reply::decode(br#"{"v":1}"#).is_err());
        assert!(Reply::decode(br#"{"v":3,"ok":true}"#).is_err());
    }

    fn lines(max: usize, chunks: &[Option<&[u8]>]) -> Vec<Line> {
        let mut script = Script::new(chunks.to_vec());
        let mut reader = LineReader::new(max);
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut out = Vec::new();
        loop {
            let line = reader.read_line(&mut script, deadline);
            let done = !matches!(line, Line::Complete(_));
            out.push(line);
            if done {
                return out;
            }
        }
    }

    fn complete(s: &str) -> Line {
        Line::Complete(s.as_bytes().to_vec())
    }

    #[test]
    fn lines_split_and_pipelined_are_assembled() {
        assert_eq!(
            lines(100, &[Some(b"ab"), Some(b"c\r\nde\nf"), Some(b"g\n")]),
            [
                complete("abc"),
                complete("de"),
                complete("fg"),
                Line::Closed
            ]
        );
        assert_eq!(
            lines(100, &[Some(b"last without newline")]),
            [complete("last without newline"), Line::Closed]
        );
        assert_eq!(lines(100, &[Some(b"half"), None]), [Line::Timeout]);
    }

    #[test]
    fn lines_over_the_limit_are_refused_without_reading_on() {
        assert_eq!(
            lines(4, &[Some(b"abcd\n")]),
            [complete("abcd"), Line::Closed]
        );
        assert_eq!(lines(4, &[Some(b"abcde\n")]), [Line::TooLong]);
        // No newline at all: refused once past the limit, whatever keeps coming.
        let endless: Vec<Option<&[u8]>> = vec![Some(&b"xxxxxxxx"[..]); 1000];
        assert_eq!(lines(4, &endless), [Line::TooLong]);
    }

    #[test]
    fn an_expired_deadline_reads_nothing() {
        let mut script = Script::new(vec![Some(b"{}\n")]);
        let mut reader = LineReader::new(10);
        assert_eq!(reader.read_line(&mut script, Instant::now()), Line::Timeout);
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            any::<f64>().prop_map(|n| json!(n)),
            "[a-z\\\\\"\\u{0}-\\u{ffff}]{0,12}".prop_map(Value::String),
            prop::sample::select(
                &[
                    "v",
                    "cmd",
                    "listener",
                    "backend",
                    "weight",
                    "state",
                    "binary",
                    "spread_ms",
                    "reset",
                    "shutdown-sessions",
                    "active",
                    "stick-show",
                    "stick-clear",
                    "limit",
                    "key",
                    "drain",
                    "status",
                    "fail",
                ][..]
            )
            .prop_map(|s| Value::String(s.to_string())),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map(
                    prop_oneof![
                        Just("v".to_string()),
                        Just("cmd".to_string()),
                        Just("listener".to_string()),
                        Just("backend".to_string()),
                        Just("weight".to_string()),
                        Just("state".to_string()),
                        Just("binary".to_string()),
                        Just("spread_ms".to_string()),
                        Just("limit".to_string()),
                        Just("key".to_string()),
                        "[a-z]{1,6}",
                    ],
                    inner,
                    0..6
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
            let _ = decode(&bytes);
            let _ = Reply::decode(&bytes);
        }

        #[test]
        fn arbitrary_json_never_panics_and_errors_are_bounded(v in json_value()) {
            let line = v.to_string();
            match decode(line.as_bytes()) {
                // Whatever decodes re-encodes to a request that decodes the same.
                Ok(r) => prop_assert_eq!(decode(encode(&r).as_bytes()), Ok(r)),
                Err(e) => prop_assert!(e.to_string().len() < 400),
            }
        }

        #[test]
        fn mutated_valid_requests_never_panic(
            pick in 0usize..19,
            cut in 0usize..120,
            flip in any::<u8>(),
        ) {
            let line = encode(&requests()[pick]).into_bytes();
            let mut mutated = line.clone();
            if !mutated.is_empty() {
                let i = cut % mutated.len();
                mutated[i] ^= flip;
                let _ = decode(&mutated);
                let _ = decode(&line[..i]);
            }
        }

        #[test]
        fn deeply_nested_input_is_an_error_not_a_stack_overflow(depth in 100usize..3000) {
            let line = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
            prop_assert!(decode(line.as_bytes()).is_err());
            let obj = format!("{}{}", "{\"a\":".repeat(depth), "}".repeat(depth));
            prop_assert!(decode(obj.as_bytes()).is_err());
        }

        #[test]
        fn the_line_reader_never_returns_more_than_the_limit(
            chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..200), 0..20),
            max in 1usize..300,
        ) {
            let chunks: Vec<Option<&[u8]>> = chunks.iter().map(|c| Some(c.as_slice())).collect();
            for line in lines(max, &chunks) {
                if let Line::Complete(l) = line {
                    prop_assert!(l.len() <= max);
                    prop_assert!(!l.contains(&b'\n'));
                }
            }
        }
    }
}
