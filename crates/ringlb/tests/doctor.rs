//! `ringlb doctor` on this machine: every host check runs and the exit status is the worst
//! finding's, and a file's binds are judged by who holds them (nobody, another process,
//! or the instance serving that very file).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;

use ringlb_testkit::*;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_ringlb"))
}

/// `ringlb doctor ARGS...`: (exit code, stdout followed by stderr).
fn doctor(args: &[&str]) -> (i32, String) {
    let out = Command::new(bin())
        .arg("doctor")
        .args(args)
        .output()
        .expect("run ringlb doctor");
    (
        exit_code(out.status),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// A configuration file removed on drop.
struct File(PathBuf);

impl File {
    fn new(name: &str, yaml: &str) -> File {
        let path =
            std::env::temp_dir().join(format!("ringlb-doctor-{name}-{}.yaml", std::process::id()));
        std::fs::write(&path, yaml).unwrap();
        File(path)
    }

    fn arg(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for File {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn one_listener(port: u16) -> String {
    format!("listeners:\n  - name: pay\n    bind: 127.0.0.1:{port}\n    max_connections: 1000\n    backends: [{{addr: 127.0.0.1:9}}]\n")
}

/// The lines of one check (its finding and fix lines are not split across checks).
fn lines_of<'a>(out: &'a str, check: &str) -> Vec<&'a str> {
    out.lines()
        .filter(|l| l.split_whitespace().nth(1) == Some(check))
        .collect()
}

#[test]
fn host_checks_run_and_the_exit_status_is_the_worst_finding() {
    let (code, out) = doctor(&[]);
    for check in [
        "kernel",
        "io_uring",
        "nofile",
        "somaxconn",
        "port_range",
        "tcp_tw_reuse",
    ] {
        assert!(
            !lines_of(&out, check).is_empty(),
            "no {check} line in:\n{out}"
        );
    }
    let level_of = |line: &str| line.split_whitespace().next().unwrap_or("").to_string();
    let levels: Vec<String> = out
        .lines()
        .filter(|l| !l.starts_with(' ') && !l.contains("error(s),"))
        .map(level_of)
        .collect();
    assert!(
        levels
            .iter()
            .all(|l| ["ok", "info", "warn", "error"].contains(&l.as_str())),
        "{out}"
    );
    let want = if levels.iter().any(|l| l == "error") {
        2
    } else if levels.iter().any(|l| l == "warn") {
        1
    } else {
        0
    };
    assert_eq!(code, want, "{out}");
    let summary = out.lines().last().unwrap_or("");
    assert!(summary.ends_with(&format!("; exit {code}")), "{out}");
    // Every warning and error comes with a fix.
    let all: Vec<&str> = out.lines().collect();
    for (i, line) in all.iter().enumerate() {
        if line.starts_with("warn") || line.starts_with("error") {
            assert!(
                all.get(i + 1)
                    .is_some_and(|next| next.trim_start().starts_with("fix: ")),
                "{line}"
            );
        }
    }
    if io_uring_available() {
        assert!(lines_of(&out, "io_uring")[0].starts_with("ok"), "{out}");
    }
}

#[test]
fn an_invalid_file_exits_2_with_the_check_lines() {
    let file = File::new("invalid", "listeners: []\nbogus: 1\n");
    let (code, out) = doctor(&["--config", file.arg()]);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("error: ") && out.contains("is invalid"),
        "{out}"
    );
}

#[test]
fn a_port_another_process_holds_is_an_error_naming_it() {
    skip_unless!(
        Requirement::Root,
        is_root(),
        "the owner of a socket is visible to root only"
    );
    let held = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port();
    let file = File::new("held", &one_listener(port));
    let (code, out) = doctor(&["--config", file.arg()]);
    assert_eq!(code, 2, "{out}");
    let bind = lines_of(&out, "bind");
    assert!(bind[0].starts_with("error"), "{out}");
    assert!(
        bind[0].contains(&format!(
            "tcp 127.0.0.1:{port} is in use by pid {}",
            std::process::id()
        )),
        "{out}"
    );
    drop(held);
    let (_, out) = doctor(&["--config", file.arg()]);
    assert!(
        lines_of(&out, "bind")[0]
            .starts_with("ok     bind             1 listener address(es) available"),
        "{out}"
    );
}

#[test]
fn binds_held_by_the_instance_serving_the_file_are_fine() {
    skip_unless!(
        Requirement::IoUring,
        io_uring_available(),
        "ringlb cannot run without io_uring"
    );
    // A port that was free a moment ago; ringlb binds it at once.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let r = Ringlb::start(bin(), &one_listener(port));
    let config = r.config_path().to_str().unwrap().to_string();
    let (_, out) = doctor(&["--config", &config]);
    let control = lines_of(&out, "control");
    assert!(control[0].starts_with("ok"), "{out}");
    assert!(
        control[0].contains(&format!("the running instance answers (pid {})", r.pid())),
        "{out}"
    );
    let bind = lines_of(&out, "bind");
    assert_eq!(bind.len(), 1, "{out}");
    assert!(bind[0].starts_with("ok"), "{out}");
    assert!(
        bind[0].contains(&format!("held by the running instance, pid {}", r.pid())),
        "{out}"
    );
}
