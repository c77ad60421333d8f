//! `ringlb doctor [--config FILE]`: checks this host for what ringlb needs and says what is
//! wrong, with a fix for each finding (docs/operations.md#checking-a-host-ringlb-doctor).
//!
//! The facts are gathered once ([`facts`]: /proc, rlimits, a probe ring, trial binds) and
//! judged by pure functions ([`checks`]), so every verdict is unit-tested with injected
//! facts. Exit status: 0 all good, 1 warnings only, 2 errors (or an invalid file).

mod checks;
mod facts;

use std::fmt;
use std::path::Path;
use std::process::ExitCode;

/// How bad a finding is. The exit status is that of the worst one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Ok,
    /// Worth knowing; changes nothing (a check skipped, a running instance found).
    Info,
    /// ringlb runs, but not as well as it could, or not under every load the file allows.
    Warn,
    /// ringlb would fail to start or to serve part of the file.
    Error,
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `pad`, so the column widths of `render` apply.
        f.pad(match self {
            Level::Ok => "ok",
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
        })
    }
}

/// One verdict: which check, how bad, what was found, and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub check: &'static str,
    pub level: Level,
    pub message: String,
    pub fix: Option<String>,
}

impl Finding {
    fn new(check: &'static str, level: Level, message: impl Into<String>) -> Self {
        Finding {
            check,
            level,
            message: message.into(),
            fix: None,
        }
    }

    fn ok(check: &'static str, message: impl Into<String>) -> Self {
        Finding::new(check, Level::Ok, message)
    }

    fn info(check: &'static str, message: impl Into<String>) -> Self {
        Finding::new(check, Level::Info, message)
    }

    fn warn(check: &'static str, message: impl Into<String>, fix: impl Into<String>) -> Self {
        Finding::new(check, Level::Warn, message).with_fix(fix)
    }

    fn error(check: &'static str, message: impl Into<String>, fix: impl Into<String>) -> Self {
        Finding::new(check, Level::Error, message).with_fix(fix)
    }

    fn with_fix(mut self, fix: impl Into<String>) -> Self {
        self.fix = Some(fix.into());
        self
    }
}

/// Exit status for the worst finding: 0 ok (or info), 1 warnings, 2 errors.
pub fn exit_status(findings: &[Finding]) -> u8 {
    match findings.iter().map(|f| f.level).max() {
        Some(Level::Error) => 2,
        Some(Level::Warn) => 1,
        _ => 0,
    }
}

/// `ringlb doctor`: gather, judge, print, exit.
pub fn run(config_path: Option<&Path>) -> ExitCode {
    let config = match config_path {
        Some(path) => match ringlb_config::load(path) {
            Ok(config) => Some((path, config)),
            Err(errors) => {
                for e in &errors.errors {
                    eprintln!("error: {e}");
                }
                eprintln!(
                    "doctor: {} is invalid (`ringlb check` says the same); exit 2",
                    path.display()
                );
                return ExitCode::from(2);
            }
        },
        None => None,
    };
    let host = facts::Host::gather();
    let mut findings = checks::host(&host, config.as_ref().map(|(_, c)| c));
    match &config {
        Some((path, config)) => {
            let local = facts::Local::gather(path, config);
            findings.extend(checks::local(&host, config, &local));
        }
        None => findings.push(Finding::info(
            "config",
            "no --config: the control socket, state_file, binds and limits of a file were not checked",
        )),
    }
    print!("{}", render(&findings));
    ExitCode::from(exit_status(&findings))
}

/// One line per finding (`level  check  message`), its fix indented below it, then a
/// summary line.
fn render(findings: &[Finding]) -> String {
    let mut out = String::new();
    for f in findings {
        out.push_str(&format!("{:<5}  {:<16} {}\n", f.level, f.check, f.message));
        if let Some(fix) = &f.fix {
            out.push_str(&format!("{:<24}fix: {fix}\n", ""));
        }
    }
    let count = |level| findings.iter().filter(|f| f.level == level).count();
    out.push_str(&format!(
        "{} error(s), {} warning(s); exit {}\n",
        count(Level::Error),
        count(Level::Warn),
        exit_status(findings)
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_worst_finding_decides_the_exit_status() {
        let ok = Finding::ok("a", "fine");
        let info = Finding::info("b", "noted");
        let warn = Finding::warn("c", "meh", "do x");
        let error = Finding::error("d", "bad", "do y");
        assert_eq!(exit_status(&[]), 0);
        assert_eq!(exit_status(&[ok.clone(), info.clone()]), 0);
        assert_eq!(exit_status(&[ok.clone(), warn.clone(), info.clone()]), 1);
        assert_eq!(exit_status(&[error.clone(), warn.clone(), ok]), 2);
        let text = render(&[warn, error]);
        assert!(text.contains("warn   c"), "{text}");
        assert!(text.contains("fix: do y"), "{text}");
        assert!(
            text.ends_with("1 error(s), 1 warning(s); exit 2\n"),
            "{text}"
        );
    }
}
