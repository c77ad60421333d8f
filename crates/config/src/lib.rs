//! ringlb-config: the YAML schema of ringlb, its defaults and its validation.
//!
//! Owns: turning a YAML text into a [`Config`] or a list of [`ConfigError`]s that each
//! name the YAML path of the problem. Must not: open sockets, spawn threads, read clocks
//! (the only I/O is [`load`] reading the file).
//!
//! Parsing has two stages. Stage one deserializes into raw structs that reject unknown
//! keys; a YAML syntax error, an unknown key or a value of the wrong shape (a list where
//! a value belongs) stops there and is reported alone, with its path. Stage two
//! (`validate`) gives every value its meaning and reports every semantic problem at once
//! (bad addresses, durations, ranges, conflicts between listeners…), so one
//! `ringlb check` run lists them all.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

mod error;
mod model;
mod raw;
mod validate;

pub use error::{ConfigError, ConfigErrors};
pub use model::*;
pub use validate::{
    parse_duration, DEFAULT_ON_DOWN_SPREAD, MAX_ON_DOWN_SPREAD, MIN_MAX_CONNECTION_DURATION,
};
pub use validate::{
    DEFAULT_CONNECT_ATTEMPTS, DEFAULT_CONNECT_TIMEOUT, DEFAULT_HC_FALL, DEFAULT_HC_INTERVAL,
    DEFAULT_HC_RISE, DEFAULT_HC_TIMEOUT, DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_SESSIONS, DEFAULT_SESSION_TIMEOUT, DEFAULT_SHUTDOWN_TIMEOUT,
};
pub use validate::{
    DEFAULT_STICKY_EXPIRE, DEFAULT_STICKY_PORT_RANGE, DEFAULT_STICKY_TABLE_SIZE,
    DEFAULT_TLS_INSPECT_TIMEOUT, MAX_STICKY_EXPIRE, MAX_STICKY_TABLE_SIZE, MAX_TLS_INSPECT_TIMEOUT,
};
pub use validate::{
    DEFAULT_SYSLOG_APP_NAME, DEFAULT_SYSLOG_FACILITY, DEFAULT_SYSLOG_QUEUE_SIZE,
    MIN_REPORT_INTERVAL,
};

use std::path::Path;

/// Parses and validates a configuration text.
pub fn parse(text: &str) -> Result<Config, ConfigErrors> {
    let de = serde_yaml_ng::Deserializer::from_str(text);
    let raw: raw::RawConfig =
        serde_path_to_error::deserialize(de).map_err(|e| ConfigErrors::one(shape_error(e)))?;
    validate::validate(raw)
}

/// Reads, parses and validates a configuration file. A file that cannot be read is one
/// error whose path is the file name.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors::one(ConfigError::new(
            path.display().to_string(),
            format!("cannot read the configuration file: {e}"),
        ))
    })?;
    parse(&text)
}

/// Turns a stage-one error (syntax, unknown key, wrong shape) into one [`ConfigError`].
fn shape_error(e: serde_path_to_error::Error<serde_yaml_ng::Error>) -> ConfigError {
    let mut path = e.path().to_string();
    if path == "." {
        path.clear();
    }
    let mut message = e.into_inner().to_string();
    // serde_yaml_ng prefixes its own path, which is `path` or one of its ancestors (for
    // an unknown key it stops at the mapping): drop it, `path` says it better.
    for ancestor in ancestors(&path) {
        if let Some(rest) = message.strip_prefix(&format!("{ancestor}: ")) {
            message = rest.to_owned();
            break;
        }
    }
    // serde speaks of fields; the file has keys.
    if let Some(rest) = message.strip_prefix("unknown field `") {
        if let Some((key, tail)) = rest.split_once('`') {
            let (allowed, at) = split_location(tail);
            let allowed = allowed
                .trim_start_matches(", ")
                .trim_start_matches("expected one of ")
                .trim_start_matches("expected ")
                .replace('`', "");
            let path = if path.is_empty() {
                key.to_owned()
            } else {
                path
            };
            let message = if allowed.is_empty() {
                format!("unknown key{at}")
            } else {
                format!("unknown key{at}: allowed keys here are {allowed}")
            };
            return ConfigError::new(path, message);
        }
    }
    if let Some(rest) = message.strip_prefix("duplicate field `") {
        if let Some((key, tail)) = rest.split_once('`') {
            let (_, at) = split_location(tail);
            let path = if path.is_empty() {
                key.to_owned()
            } else {
                format!("{path}.{key}")
            };
            // serde_yaml_ng marks the start of the mapping, not the repeated key.
            let message = match at.strip_prefix(" at ") {
                Some(loc) => format!(
                    "duplicate key: each key may appear once per mapping (the mapping starts at {loc})"
                ),
                None => "duplicate key: each key may appear once per mapping".to_owned(),
            };
            return ConfigError::new(path, message);
        }
    }
    if path.is_empty() {
        message = format!("invalid YAML: {message}");
    }
    ConfigError::new(path, message)
}

/// `a[1].b.c` → `a[1].b.c`, `a[1].b`, `a[1]`, `a`.
fn ancestors(path: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut p = path;
    while !p.is_empty() {
        out.push(p);
        match p.rfind(['.', '[']) {
            Some(i) => p = &p[..i],
            None => break,
        }
    }
    out
}

/// Splits serde_yaml_ng's trailing " at line L column C" off a message tail.
fn split_location(tail: &str) -> (&str, String) {
    match tail.find(" at line ") {
        Some(i) => (&tail[..i], tail[i..].to_owned()),
        None => (tail, String::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LISTENER: &str = "listeners:\n  - name: a\n    bind: 127.0.0.1:7000\n    backends:\n      - addr: 10.0.0.1:80\n";

    fn only_error(yaml: &str) -> ConfigError {
        let e = parse(yaml).expect_err("expected an error").errors;
        assert_eq!(e.len(), 1, "{e:#?}");
        e.into_iter().next().unwrap()
    }

    #[test]
    fn unknown_keys_name_their_path_at_every_level() {
        for (yaml, path, allowed) in [
            (format!("worker: 2\n{LISTENER}"), "worker", "workers, admin"),
            (
                LISTENER.replace("    bind:", "    conect_timeout: 1s\n    bind:"),
                "listeners[0].conect_timeout",
                "connect_timeout",
            ),
            (
                format!("{LISTENER}        wieght: 2\n"),
                "listeners[0].backends[0].wieght",
                "addr, weight, max_connections, backup",
            ),
            (
                LISTENER.replace(
                    "    backends:",
                    "    health_check: {intervall: 1s}\n    backends:",
                ),
                "listeners[0].health_check.intervall",
                "interval, timeout",
            ),
        ] {
            let e = only_error(&yaml);
            assert_eq!(e.path, path);
            assert!(e.message.starts_with("unknown key"), "{e}");
            assert!(e.message.contains(allowed), "{e}");
            assert!(!e.message.contains('`'), "{e}");
        }
    }

    #[test]
    fn duplicate_keys_are_errors() {
        let e = only_error(&LISTENER.replace("    bind:", "    name: b\n    bind:"));
        assert_eq!(e.path, "listeners[0].name");
        assert!(
            e.message
                .ends_with("(the mapping starts at line 2 column 5)"),
            "{e}"
        );
    }

    #[test]
    fn wrong_shapes_name_their_path() {
        let e = only_error("listeners: 5\n");
        assert_eq!(e.path, "listeners");
        assert!(e.message.contains("expected a sequence"), "{e}");
        let e =
            only_error(&LISTENER.replace("    backends:", "    allow: 10.0.0.0/8\n    backends:"));
        assert_eq!(e.path, "listeners[0].allow");
        let e = only_error(&LISTENER.replace("10.0.0.1:80", "[10.0.0.1:80]"));
        assert_eq!(e.path, "listeners[0].backends[0].addr");
        assert!(e.message.contains("expected a single value"), "{e}");
    }

    #[test]
    fn syntax_errors_give_a_line() {
        let e = only_error("listeners:\n  - name: a\n   bind: x\n");
        assert!(e.message.contains("line 3"), "{e}");
        let e = only_error("- a\n- b\n");
        assert_eq!(e.path, "");
        assert!(e.message.starts_with("invalid YAML: "), "{e}");
        assert_eq!(e.to_string(), e.message, "no `: ` prefix without a path");
    }

    #[test]
    fn empty_file_lacks_listeners() {
        assert_eq!(only_error("").path, "listeners");
        assert_eq!(only_error("# nothing\n").path, "listeners");
    }

    #[test]
    fn display_is_one_line_per_error() {
        let errs = parse("workers: 0\nlisteners: []\n").unwrap_err();
        assert_eq!(
            errs.to_string(),
            "workers: expected \"auto\" or an integer 1..=1024, got 0\nlisteners: no listeners: at least one is required"
        );
        let one = ConfigError::new(
            "listeners[1].backends[0].addr",
            "invalid socket address \"10.0.0.1\"",
        );
        assert_eq!(
            one.to_string(),
            "listeners[1].backends[0].addr: invalid socket address \"10.0.0.1\""
        );
    }

    #[test]
    fn load_reports_unreadable_file_with_its_name() {
        let p = Path::new("/nonexistent/ringlb.yaml");
        let e = load(p).unwrap_err().errors;
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].path, "/nonexistent/ringlb.yaml");
        assert!(
            e[0].message
                .starts_with("cannot read the configuration file: "),
            "{}",
            e[0]
        );
    }

    #[test]
    fn aliases_work_merge_keys_are_unknown() {
        let base = "listeners:\n  - name: a\n    bind: 127.0.0.1:1\n    health_check: &hc {interval: 2s, timeout: 1s}\n    backends: [{addr: 10.0.0.1:1}]\n  - name: b\n    bind: 127.0.0.1:2\n";
        let c = parse(&format!(
            "{base}    health_check: *hc\n    backends: [{{addr: 10.0.0.1:1}}]\n"
        ))
        .unwrap();
        assert_eq!(c.listeners[1].health_check, c.listeners[0].health_check);
        let e = only_error(&format!(
            "{base}    health_check:\n      <<: *hc\n    backends: [{{addr: 10.0.0.1:1}}]\n"
        ));
        assert_eq!(e.path, "listeners[1].health_check.<<");
    }

    #[test]
    fn ancestors_walks_up_the_path() {
        assert_eq!(ancestors("a[1].b.c"), ["a[1].b.c", "a[1].b", "a[1]", "a"]);
        assert!(ancestors("").is_empty());
    }
}
