//! ringlb-bench binary: parses the command line and runs one backend or one load.
//! Exit codes: 0 done, 1 could not run (bind, runtime), 2 bad arguments, 3 errors with
//! --fail-on-errors.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

use std::process::ExitCode;

use clap::Parser;
use ringlb_bench::cli::{self, Cli};
use ringlb_bench::load;

/// The idle scenario needs 10,000+ sockets: take the hard limit the shell allows.
fn raise_nofile() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    raise_nofile();
    if let Some((backend, serve, tcp, udp)) = cli.command.backend() {
        return match cli::serve(backend, serve, tcp, udp) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("ringlb-bench: {e}");
                ExitCode::from(1)
            }
        };
    }
    let Some((mode, args)) = cli.command.load() else {
        return ExitCode::from(2);
    };
    let report = match load::run(&mode, &args.config()) {
        Ok(r) => r,
        Err(e @ ringlb_bench::BenchError::Args(_)) => {
            eprintln!("ringlb-bench: {e}");
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("ringlb-bench: {e}");
            return ExitCode::from(1);
        }
    };
    if args.json {
        match report.to_json() {
            Ok(j) => println!("{j}"),
            Err(e) => {
                eprintln!("ringlb-bench: {e}");
                return ExitCode::from(1);
            }
        }
    } else {
        print!("{}", report.to_table());
    }
    if args.fail_on_errors && report.errors > 0 {
        eprintln!("ringlb-bench: {} request(s) failed", report.errors);
        return ExitCode::from(3);
    }
    ExitCode::SUCCESS
}
