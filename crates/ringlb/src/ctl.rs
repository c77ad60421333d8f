//! `ringlb ctl` and `ringlb upgrade`: one request to a running instance over its control
//! socket (docs/control-protocol.md), its answer printed for a person (or as JSON), and an
//! exit status a script can branch on: 0 applied, 1 refused (the reason on stderr), 2
//! usage, 3 no running instance, 4 `wait-empty` timed out.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand, ValueEnum};
use serde_json::{Map, Value};

use crate::control_socket::client::{self, ClientError};
use crate::control_socket::path;
use crate::control_socket::protocol::{
    Reply, Request, DEFAULT_STICK_LIMIT, MAX_SPREAD, MAX_STICK_LIMIT, MAX_WEIGHT,
};
use crate::control_socket::{ANSWER_TIMEOUT, UPGRADE_ANSWER_TIMEOUT};
use ringlb_scheduler::AdminState;

pub const EXIT_REFUSED: u8 = 1;
pub const EXIT_USAGE: u8 = 2;
pub const EXIT_NO_INSTANCE: u8 = 3;
pub const EXIT_TIMEOUT: u8 = 4;

/// How often `wait-empty` asks for the backend's open connections.
const WAIT_EMPTY_POLL: Duration = Duration::from_millis(100);

/// Which instance: the one serving a configuration file, or a control socket by path.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct Target {
    /// The configuration file the instance was started with; its control socket is
    /// found from it (`control:`, or the path derived from the file's location).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The control socket itself.
    #[arg(long, value_name = "PATH")]
    pub control: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct CtlArgs {
    #[command(flatten)]
    pub target: Target,
    /// Print the instance's JSON reply as it is, instead of a table or a sentence.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: CtlCommand,
}

#[derive(Debug, Subcommand)]
pub enum CtlCommand {
    /// Listeners and backends: health, admin state, weight, active connections.
    Status,
    /// No new connections to BACKEND; established ones stay; health checks go on.
    Drain { listener: String, backend: String },
    /// Like drain, and no health checks either (the backend is being worked on).
    Maint { listener: String, backend: String },
    /// Back to normal: BACKEND takes new connections while it is up.
    Ready { listener: String, backend: String },
    /// Set BACKEND's weight (0..=65535, 0 = drained), or `config` for the file's weight.
    Weight {
        listener: String,
        backend: String,
        #[arg(value_parser = parse_weight)]
        weight: WeightArg,
    },
    /// Send new connections back to the listener's primary backends.
    Failback { listener: String },
    /// Take this host out (`fail`: /ready answers 503) or put it back (`ok`).
    Node { state: NodeState },
    /// Replace the running binary without dropping connections.
    Upgrade {
        /// The new binary (default: the path the running process was started from).
        #[arg(long, value_name = "PATH")]
        binary: Option<PathBuf>,
    },
    /// End BACKEND's open connections: closed (FIN after what is in flight) or, with
    /// --reset, reset; each at its own random moment within --spread.
    ShutdownSessions {
        listener: String,
        backend: String,
        /// Spread the ends over this long (e.g. 30s), so clients do not all reconnect at once.
        #[arg(long, value_name = "DURATION", value_parser = parse_spread, default_value = "0s")]
        spread: Duration,
        /// Reset (RST) instead of closing.
        #[arg(long)]
        reset: bool,
    },
    /// Wait until BACKEND has no open connection (exit 0), or --timeout passes (exit 4).
    WaitEmpty {
        listener: String,
        backend: String,
        /// Give up after this long.
        #[arg(long, value_name = "DURATION", value_parser = ringlb_config::parse_duration, default_value = "5m")]
        timeout: Duration,
    },
    /// Learned stickiness: list, forget or (single_active) move the listener's entries.
    Stick {
        #[command(subcommand)]
        action: StickCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum StickCommand {
    /// The listener's entries (key, backend, age), the most recently used first.
    Show {
        listener: String,
        /// List at most this many (1..=100000).
        #[arg(long, value_name = "N", default_value_t = DEFAULT_STICK_LIMIT,
              value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_STICK_LIMIT)))]
        limit: u32,
    },
    /// Forget KEY's entries (an address, an address and a port, or a key as listed), or
    /// without KEY every entry and the single_active backend: the next connection chooses.
    Clear {
        listener: String,
        key: Option<String>,
    },
    /// single_active: every client goes to BACKEND from now on.
    Move { listener: String, backend: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightArg {
    Set(u32),
    Configured,
}

fn parse_weight(text: &str) -> Result<WeightArg, String> {
    if text == "config" {
        return Ok(WeightArg::Configured);
    }
    match text.parse::<u32>() {
        Ok(w) if w <= MAX_WEIGHT => Ok(WeightArg::Set(w)),
        _ => Err(format!(
            "expected an integer 0..={MAX_WEIGHT} or `config`, got {text:?}"
        )),
    }
}

fn parse_spread(text: &str) -> Result<Duration, String> {
    let spread = ringlb_config::parse_duration(text)?;
    if spread > MAX_SPREAD {
        return Err(format!("{text:?} is longer than the maximum of 1h"));
    }
    Ok(spread)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum NodeState {
    Fail,
    Ok,
}

impl CtlCommand {
    fn request(self) -> Request {
        let set = |listener, backend, state| Request::SetState {
            listener,
            backend,
            state,
        };
        match self {
            CtlCommand::Status => Request::Status,
            CtlCommand::Drain { listener, backend } => set(listener, backend, AdminState::Drain),
            CtlCommand::Maint { listener, backend } => set(listener, backend, AdminState::Maint),
            CtlCommand::Ready { listener, backend } => set(listener, backend, AdminState::Ready),
            CtlCommand::Weight {
                listener,
                backend,
                weight,
            } => Request::Weight {
                listener,
                backend,
                weight: match weight {
                    WeightArg::Set(w) => Some(w),
                    WeightArg::Configured => None,
                },
            },
            CtlCommand::Failback { listener } => Request::Failback { listener },
            CtlCommand::Node { state } => Request::Node {
                failed: state == NodeState::Fail,
            },
            CtlCommand::Upgrade { binary } => Request::Upgrade { binary },
            CtlCommand::ShutdownSessions {
                listener,
                backend,
                spread,
                reset,
            } => Request::ShutdownSessions {
                listener,
                backend,
                spread,
                reset,
            },
            // Asked again and again until the count is 0 (see `wait_empty`).
            CtlCommand::WaitEmpty {
                listener, backend, ..
            } => Request::Active { listener, backend },
            CtlCommand::Stick { action } => match action {
                StickCommand::Show { listener, limit } => Request::StickShow { listener, limit },
                StickCommand::Clear { listener, key } => Request::StickClear { listener, key },
                StickCommand::Move { listener, backend } => {
                    Request::StickMove { listener, backend }
                }
            },
        }
    }
}

/// `ringlb ctl ...`.
pub fn run(args: CtlArgs) -> ExitCode {
    let socket = match socket_path(&args.target) {
        Ok(path) => path,
        Err(message) => {
            eprintln!("error: {message}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let wait_for = match args.command {
        CtlCommand::WaitEmpty { timeout, .. } => Some(timeout),
        _ => None,
    };
    let request = args.command.request();
    let timeout = match request {
        Request::Upgrade { .. } => UPGRADE_ANSWER_TIMEOUT,
        // A little longer than the server waits for its control plane, so its own
        // "no answer" reply arrives rather than our timeout.
        _ => ANSWER_TIMEOUT + Duration::from_secs(5),
    };
    if let Some(wait_for) = wait_for {
        return wait_empty(&socket, &request, timeout, wait_for, args.json);
    }
    let status = matches!(request, Request::Status);
    let stick_show = matches!(request, Request::StickShow { .. });
    match client::request(&socket, &request, timeout) {
        Ok(Reply::Ok(fields)) => {
            if args.json {
                println!("{}", Reply::Ok(fields).encode());
            } else if status {
                print!("{}", status_table(&fields));
            } else if stick_show {
                print!("{}", stick_table(&fields));
            } else {
                print_fields(&fields);
            }
            ExitCode::SUCCESS
        }
        other => failure(other, args.json),
    }
}

/// The exit status of a request that was not applied, its reason on stderr.
fn failure(result: Result<Reply, ClientError>, json: bool) -> ExitCode {
    match result {
        Ok(Reply::Ok(fields)) => {
            eprintln!("error: unexpected reply: {}", Reply::Ok(fields).encode());
            ExitCode::from(EXIT_REFUSED)
        }
        Ok(Reply::Refused(why)) => {
            if json {
                println!("{}", Reply::Refused(why.clone()).encode());
            }
            eprintln!("refused: {why}");
            ExitCode::from(EXIT_REFUSED)
        }
        Err(e @ ClientError::NoInstance { .. }) => {
            eprintln!("error: {e}");
            ExitCode::from(EXIT_NO_INSTANCE)
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(EXIT_REFUSED)
        }
    }
}

/// `wait-empty`: asks for the backend's open connections (`request`, an `active`) until
/// there are none (exit 0) or `wait_for` has passed (exit 4). Each answer comes from the
/// control plane at once, so the instance serves everything else meanwhile.
fn wait_empty(
    socket: &Path,
    request: &Request,
    answer_timeout: Duration,
    wait_for: Duration,
    json: bool,
) -> ExitCode {
    let deadline = Instant::now() + wait_for;
    loop {
        let fields = match client::request(socket, request, answer_timeout) {
            Ok(Reply::Ok(fields)) => fields,
            other => return failure(other, json),
        };
        let Some(active) = fields.get("active").and_then(Value::as_u64) else {
            return failure(Ok(Reply::Ok(fields)), json);
        };
        let message = fields
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        if active == 0 || Instant::now() >= deadline {
            if json {
                println!("{}", Reply::Ok(fields).encode());
            }
            if active == 0 {
                if !json {
                    println!("{message}");
                }
                return ExitCode::SUCCESS;
            }
            eprintln!("timed out after {wait_for:?}: {message}");
            return ExitCode::from(EXIT_TIMEOUT);
        }
        std::thread::sleep(WAIT_EMPTY_POLL.min(deadline.saturating_duration_since(Instant::now())));
    }
}

/// The control socket named on the command line, or the one of the configuration file.
/// A file that does not validate (being edited, say) still names its instance: its
/// `control:` is then not known and the derived path is used.
fn socket_path(target: &Target) -> Result<PathBuf, String> {
    if let Some(control) = &target.control {
        return Ok(control.clone());
    }
    let Some(config) = &target.config else {
        return Err("give --config FILE or --control PATH".into());
    };
    let explicit = match ringlb_config::load(config) {
        Ok(c) => c.control,
        Err(errors) => {
            if !config.exists() {
                return Err(format!("{}: no such file", config.display()));
            }
            eprintln!(
                "warning: {} does not validate ({} problem(s)); looking for its instance at the path derived from the file's location",
                config.display(),
                errors.errors.len()
            );
            None
        }
    };
    path::resolve(Path::new(config), explicit.as_deref()).map_err(|e| e.to_string())
}

fn print_fields(fields: &Map<String, Value>) {
    if let Some(message) = fields.get("message").and_then(Value::as_str) {
        println!("{message}");
    }
    if let Some(warning) = fields.get("warning").and_then(Value::as_str) {
        eprintln!("warning: {warning}");
    }
}

/// `ringlb ctl stick show`: the summary line, then one row per entry.
fn stick_table(fields: &Map<String, Value>) -> String {
    let mut out = String::new();
    if let Some(message) = fields.get("message").and_then(Value::as_str) {
        out.push_str(message);
        out.push('\n');
    }
    let empty = Vec::new();
    let entries = fields
        .get("entries")
        .and_then(Value::as_array)
        .unwrap_or(&empty);
    if entries.is_empty() {
        return out;
    }
    let cell = |e: &Value, key: &str| match e.get(key) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => format!("{n}s"),
        _ => "-".into(),
    };
    let mut rows = vec![["KEY".to_string(), "BACKEND".into(), "AGE".into()]];
    rows.extend(
        entries
            .iter()
            .map(|e| [cell(e, "key"), cell(e, "backend"), cell(e, "age_s")]),
    );
    out.push_str(&columns(rows));
    out
}

/// Rows as left-aligned columns two spaces apart.
fn columns<const N: usize>(rows: Vec<[String; N]>) -> String {
    let widths: Vec<usize> = (0..N)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// `ringlb ctl status`: a header line, then one row per backend.
fn status_table(fields: &Map<String, Value>) -> String {
    let text = |v: &Value, key: &str| -> String {
        match v.get(key) {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Null) | None => "-".into(),
            Some(other) => other.to_string(),
        }
    };
    let pid = fields.get("pid").map_or("?".into(), Value::to_string);
    let ready = match fields.get("not_ready").and_then(Value::as_str) {
        None => "ready".to_string(),
        Some(why) => format!("NOT READY: {why}"),
    };
    let mut out = format!(
        "ringlb {} pid {pid}: {ready}\n",
        fields.get("version").and_then(Value::as_str).unwrap_or("?")
    );
    let mut rows = vec![[
        "LISTENER".to_string(),
        "BACKEND".into(),
        "HEALTH".into(),
        "ADMIN".into(),
        "WEIGHT".into(),
        "ACTIVE".into(),
    ]];
    let empty = Vec::new();
    let listeners = fields
        .get("listeners")
        .and_then(Value::as_array)
        .unwrap_or(&empty);
    for l in listeners {
        let backends = l
            .get("backends")
            .and_then(Value::as_array)
            .unwrap_or(&empty);
        for b in backends {
            let health = match b.get("up").and_then(Value::as_bool) {
                Some(true) => "up",
                Some(false) => "down",
                None => "?",
            };
            let mut health = health.to_string();
            if l.get("health_checked").and_then(Value::as_bool) == Some(false) {
                health.push_str(" (unchecked)");
            }
            if b.get("backup").and_then(Value::as_bool) == Some(true) {
                health.push_str(" backup");
            }
            let weight = text(b, "weight");
            let configured = text(b, "configured_weight");
            let weight = if weight == configured {
                weight
            } else {
                format!("{weight} (file {configured})")
            };
            rows.push([
                text(l, "name"),
                text(b, "addr"),
                health,
                text(b, "admin_state"),
                weight,
                text(b, "active_connections"),
            ]);
        }
    }
    out.push_str(&columns(rows));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn spreads_and_timeouts_are_durations_as_in_the_file() {
        assert_eq!(parse_spread("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_spread("0s"), Ok(Duration::ZERO));
        assert!(parse_spread("2h").unwrap_err().contains("maximum of 1h"));
        assert!(parse_spread("2").is_err());
    }

    #[test]
    fn wait_empty_asks_for_the_open_connections() {
        let wait = CtlCommand::WaitEmpty {
            listener: "l".into(),
            backend: "b".into(),
            timeout: Duration::from_secs(1),
        };
        assert_eq!(
            wait.request(),
            Request::Active {
                listener: "l".into(),
                backend: "b".into()
            }
        );
    }

    #[test]
    fn stick_show_prints_one_row_per_entry() {
        let reply = json!({
            "message": "listener \"pay\": 2 sticky entries (table of 65536), showing 2",
            "entries": [
                {"key": "10.0.0.1", "backend": "10.0.1.1:7000", "age_s": 3},
                {"key": "10.0.0.22:1024-2047", "backend": "10.0.1.2:7000", "age_s": 125}
            ]
        });
        let Value::Object(fields) = reply else {
            unreachable!()
        };
        assert_eq!(
            stick_table(&fields),
            "listener \"pay\": 2 sticky entries (table of 65536), showing 2\n\
             KEY                  BACKEND        AGE\n\
             10.0.0.1             10.0.1.1:7000  3s\n\
             10.0.0.22:1024-2047  10.0.1.2:7000  125s\n"
        );
    }

    #[test]
    fn weights_parse_with_their_bounds() {
        assert_eq!(parse_weight("0"), Ok(WeightArg::Set(0)));
        assert_eq!(parse_weight("65535"), Ok(WeightArg::Set(65535)));
        assert_eq!(parse_weight("config"), Ok(WeightArg::Configured));
        for bad in ["65536", "-1", "x", ""] {
            assert!(parse_weight(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_status_table_has_one_row_per_backend() {
        let reply = json!({
            "pid": 42, "version": "0.1.0", "ready": false, "not_ready": "node failed",
            "listeners": [{
                "name": "settlement", "health_checked": true,
                "backends": [
                    {"addr": "10.0.0.11:7000", "up": true, "admin_state": "ready",
                     "weight": 5, "configured_weight": 5, "active_connections": 12, "backup": false},
                    {"addr": "10.0.0.12:7000", "up": false, "admin_state": "drain",
                     "weight": 1, "configured_weight": 3, "active_connections": 0, "backup": true}
                ]
            }]
        });
        let Value::Object(fields) = reply else {
            unreachable!()
        };
        assert_eq!(
            status_table(&fields),
            "ringlb 0.1.0 pid 42: NOT READY: node failed\n\
             LISTENER    BACKEND         HEALTH       ADMIN  WEIGHT      ACTIVE\n\
             settlement  10.0.0.11:7000  up           ready  5           12\n\
             settlement  10.0.0.12:7000  down backup  drain  1 (file 3)  0\n"
        );
    }
}
