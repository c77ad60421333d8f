//! ringlb: the binary. Parses the command line, loads the configuration, starts the control
//! plane, and maps every failure to an exit code (0 ok, 1 runtime failure, 2 invalid config;
//! `ctl`: 0 applied, 1 refused, 2 usage, 3 no running instance, 4 `wait-empty` timed out;
//! `doctor`: 0 all good, 1 warnings, 2 errors).

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

mod admin;
mod audit;
mod bounded;
mod control;
mod control_socket;
mod ctl;
mod doctor;
mod generate;
mod logging;
mod notify;
mod readiness;
mod registry;
mod signals;
mod upgrade;
mod version;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "ringlb",
    version,
    long_version = version::LONG,
    about = "Thread-per-core io_uring Layer-4 (TCP/UDP) load balancer",
    long_about = "ringlb forwards TCP connections and UDP sessions from per-port listeners to \
backends, with health checks, failover, hitless reloads (SIGHUP) and live binary upgrades \
(SIGUSR2). One worker thread per core, each with its own io_uring ring. Start with \
`ringlb check` and `ringlb doctor`, then `ringlb run` (or the packaged systemd unit)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start serving the listeners of a configuration file.
    Run {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// Data-plane threads; overrides `workers` in the file.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
        workers: Option<u16>,
        /// How log lines are written; overrides `log_format` in the file, also at reloads.
        #[arg(long, value_name = "FORMAT")]
        log_format: Option<LogFormatArg>,
    },
    /// Validate a configuration file: exit 0 when valid, 2 with one line per problem otherwise.
    Check {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Show which backend a listener's algorithm picks for a client, all backends up.
    Explain {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        #[arg(long, value_name = "NAME")]
        listener: String,
        #[arg(long, value_name = "IP:PORT")]
        client: SocketAddr,
    },
    /// Talk to a running instance over its control socket: status, drain, maint, ready,
    /// weight, failback, node fail|ok, upgrade.
    Ctl(ctl::CtlArgs),
    /// Check an audit log (`audit_log:`): every record's hash and its link to the one
    /// before. Exit 0 when the chain is intact, 1 with the first broken line otherwise.
    Audit {
        #[command(subcommand)]
        action: AuditAction,
    },
    /// Replace the running binary of an instance without dropping connections (the same
    /// as `ringlb ctl upgrade`).
    Upgrade {
        #[command(flatten)]
        target: ctl::Target,
        /// The new binary (default: the path the running process was started from).
        #[arg(long, value_name = "PATH")]
        binary: Option<PathBuf>,
        /// Print the instance's JSON reply as it is.
        #[arg(long)]
        json: bool,
    },
    /// Check this host for what ringlb needs (kernel, io_uring, limits, sysctls) and, with
    /// --config, what the file needs (control socket, state_file, binds, capabilities); a
    /// fix for each problem. Exit 0 all good, 1 warnings, 2 errors.
    Doctor {
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Write man pages or shell completions into DIR (used by scripts/package.sh).
    #[command(hide = true)]
    Generate {
        #[arg(value_enum)]
        what: generate::What,
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum AuditAction {
    /// Verify the hash chain of an audit log file.
    Verify {
        #[arg(value_name = "PATH")]
        path: PathBuf,
    },
}

/// Exit status for an invalid configuration (or, for `explain`, an unknown listener name).
/// Runtime failures exit 1, so a script can tell a bad file from a failed start.
const EXIT_INVALID_CONFIG: u8 = 2;

fn audit_verify(path: &std::path::Path) -> ExitCode {
    match audit::verify(path) {
        Ok(v) => {
            println!(
                "{}: {} record(s), chain intact, {} .. {}, last hash {}",
                path.display(),
                v.records,
                v.first_ts.as_deref().unwrap_or("-"),
                v.last_ts.as_deref().unwrap_or("-"),
                v.last_hash
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ringlb audit verify: {e}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => check(&config),
        Command::Run {
            config,
            workers,
            log_format,
        } => run(&config, workers.map(usize::from), log_format),
        Command::Explain {
            config,
            listener,
            client,
        } => explain(&config, &listener, client),
        Command::Ctl(args) => ctl::run(args),
        Command::Audit {
            action: AuditAction::Verify { path },
        } => audit_verify(&path),
        Command::Upgrade {
            target,
            binary,
            json,
        } => ctl::run(ctl::CtlArgs {
            target,
            json,
            command: ctl::CtlCommand::Upgrade { binary },
        }),
        Command::Doctor { config } => doctor::run(config.as_deref()),
        Command::Generate { what, dir } => match generate::write(what, Cli::command(), &dir) {
            Ok(files) => {
                for f in files {
                    println!("{}", f.display());
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: cannot write into {}: {e}", dir.display());
                ExitCode::from(1)
            }
        },
    }
}

fn load_or_report(path: &Path) -> Option<ringlb_config::Config> {
    match ringlb_config::load(path) {
        Ok(config) => Some(config),
        Err(errors) => {
            for e in &errors.errors {
                eprintln!("error: {e}");
            }
            None
        }
    }
}

fn check(path: &Path) -> ExitCode {
    match load_or_report(path) {
        Some(config) => {
            println!(
                "{}: ok ({} listener{})",
                path.display(),
                config.listeners.len(),
                if config.listeners.len() == 1 { "" } else { "s" }
            );
            // `run` raises its soft limit to the hard one, so that is the limit to judge.
            if let Ok(limit) = ringlb_dataplane::sys::fd_hard_limit() {
                let plan = ringlb_dataplane::fdbudget::FdPlan::new(&config, limit);
                if let Some(w) = plan.warning() {
                    eprintln!(
                        "warning: {w} (RLIMIT_NOFILE here is this shell's hard limit; `run` checks its own)"
                    );
                }
            }
            ExitCode::SUCCESS
        }
        None => ExitCode::from(EXIT_INVALID_CONFIG),
    }
}

fn run(path: &Path, workers: Option<usize>, log_format: Option<LogFormatArg>) -> ExitCode {
    let Some(config) = load_or_report(path) else {
        return ExitCode::from(EXIT_INVALID_CONFIG);
    };
    let format =
        log_format.map_or_else(|| logging::format(config.log_format), LogFormatArg::format);
    let settings =
        ringlb_logging::Settings::from_env(config.log_level, format, log_format.is_some());
    if let Err(e) = ringlb_logging::init(&settings) {
        eprintln!("error: {e}");
        return ExitCode::from(1);
    }
    logging::apply_syslog(&config.records);
    let status = match control::run(config, path.to_path_buf(), workers) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            ExitCode::from(1)
        }
    };
    // The access lines of the last connections are still queued; a stuck stderr reader
    // must not keep the process from exiting, hence the bound.
    ringlb_logging::flush(logging::EXIT_FLUSH_TIMEOUT);
    status
}

/// `--log-format`.
#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormatArg {
    Text,
    Json,
}

impl LogFormatArg {
    fn format(self) -> ringlb_logging::Format {
        match self {
            LogFormatArg::Text => ringlb_logging::Format::Text,
            LogFormatArg::Json => ringlb_logging::Format::Json,
        }
    }
}

fn explain(path: &Path, listener: &str, client: SocketAddr) -> ExitCode {
    let Some(config) = load_or_report(path) else {
        return ExitCode::from(EXIT_INVALID_CONFIG);
    };
    let Some(l) = config.listeners.iter().find(|l| l.name == listener) else {
        let names: Vec<&str> = config.listeners.iter().map(|l| l.name.as_str()).collect();
        eprintln!(
            "error: no listener named {listener:?}; listeners: {}",
            names.join(", ")
        );
        return ExitCode::from(EXIT_INVALID_CONFIG);
    };
    let explanation = ringlb_scheduler::explain(l, client);
    println!("{explanation}");
    if explanation.backend.is_some() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
