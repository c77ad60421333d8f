//! Start-up failures: io_uring unavailable, port in use, `check` exit codes.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use ringlb_testkit::*;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_ringlb"))
}

/// Installs a seccomp filter that makes io_uring_setup fail with EPERM, as a container's
/// default profile does. Runs in the child between fork and exec.
fn deny_io_uring_setup() -> std::io::Result<()> {
    const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
    const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
    let nr = libc::SYS_io_uring_setup as u32;
    let filter = [
        // A = syscall number
        libc::sock_filter {
            code: (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16,
            jt: 0,
            jf: 0,
            k: 0,
        },
        libc::sock_filter {
            code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
            jt: 0,
            jf: 1,
            k: nr,
        },
        libc::sock_filter {
            code: (libc::BPF_RET | libc::BPF_K) as u16,
            jt: 0,
            jf: 0,
            k: SECCOMP_RET_ERRNO | libc::EPERM as u32,
        },
        libc::sock_filter {
            code: (libc::BPF_RET | libc::BPF_K) as u16,
            jt: 0,
            jf: 0,
            k: SECCOMP_RET_ALLOW,
        },
    ];
    let prog = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_ptr() as *mut _,
    };
    // SAFETY: plain prctl calls with a valid, live filter program.
    unsafe {
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER,
            &prog as *const _ as libc::c_ulong,
            0,
            0,
        ) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

#[test]
fn io_uring_blocked_exits_1_with_cause_before_binding() {
    const ARCHS: &[&str] = &["x86_64", "aarch64"];
    skip_unless!(
        Requirement::Arch(ARCHS),
        ARCHS.contains(&std::env::consts::ARCH),
        "the seccomp filter is written for x86_64 and aarch64 only"
    );
    // A port we own: if ringlb bound it, our second bind would fail.
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = probe.local_addr().unwrap().port();
    drop(probe);
    let dir = std::env::temp_dir().join(format!("ringlb-startup-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("cfg.yaml");
    std::fs::write(
        &config,
        format!("listeners:\n  - name: t\n    bind: 127.0.0.1:{port}\n    backends:\n      - addr: 127.0.0.1:1\n"),
    )
    .unwrap();
    let mut cmd = Command::new(bin());
    cmd.arg("run").arg("--config").arg(&config);
    // SAFETY: the closure only calls async-signal-safe prctl.
    unsafe { cmd.pre_exec(deny_io_uring_setup) };
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("io_uring"), "{stderr}");
    assert!(
        stderr.contains("remedy"),
        "the message must say what to do: {stderr}"
    );
    assert!(!stderr.contains("listening on"), "{stderr}");
    assert_eq!(
        stderr.lines().filter(|l| l.contains("ERROR")).count(),
        1,
        "one message: {stderr}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn port_in_use_exits_1_naming_the_address() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let (code, out) = Ringlb::run_to_exit(
        bin(),
        &format!(
            "listeners:\n  - name: t\n    bind: {addr}\n    backends:\n      - addr: 127.0.0.1:1\n"
        ),
        &[],
        Duration::from_secs(10),
    );
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(&addr.to_string()), "{out}");
}

#[test]
fn check_accepts_every_example_config() {
    let configs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs");
    let mut checked = 0;
    for entry in std::fs::read_dir(&configs).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let (code, out) = Ringlb::check_file(bin(), &path);
            assert_eq!(code, 0, "{}: {out}", path.display());
            checked += 1;
        }
    }
    assert!(
        checked >= 3,
        "expected the example configs, found {checked}"
    );
}

#[test]
fn check_reports_every_problem_with_exit_2() {
    let (code, out) = Ringlb::check(
        bin(),
        "listeners:\n  - name: a\n    bind: 127.0.0.1:7000\n    backends:\n      - addr: 10.0.0.1\n        weight: -1\n",
    );
    assert_eq!(code, 2, "{out}");
    let errors: Vec<&str> = out.lines().filter(|l| l.starts_with("error: ")).collect();
    assert_eq!(errors.len(), 2, "{out}");
    assert!(
        out.contains("error: listeners[0].backends[0].addr: invalid socket address \"10.0.0.1\""),
        "{out}"
    );
    assert!(out.contains("listeners[0].backends[0].weight"), "{out}");
}

#[test]
fn sigint_also_shuts_down_cleanly() {
    let backend = EchoBackend::start();
    let mut lb = Ringlb::start(
        bin(),
        &format!(
            "listeners:\n  - name: t\n    bind: 127.0.0.1:0\n    backends:\n      - addr: {}\n",
            backend.addr()
        ),
    );
    lb.signal(Signal::Int);
    let status = lb
        .wait_exit(Duration::from_secs(15))
        .expect("exit on SIGINT");
    assert_eq!(exit_code(status), 0);
}
