//! The `Ringlb` process handle against a fake `ringlb` (a shell script that prints the
//! same log lines), so spawning, readiness, log capture, signals, exit and cleanup are
//! tested without the real binary.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::Duration;

use ringlb_testkit::*;

const T: Duration = Duration::from_secs(10);

const FAKE: &str = r#"#!/bin/sh
cmd="$1"
[ "$2" = "--config" ] || { echo "usage: $0 run|check --config FILE" >&2; exit 64; }
cfg="$3"
case "$cmd" in
check)
  if grep -q bogus "$cfg"; then echo "error: listeners[0].bogus: unknown field" >&2; exit 2; fi
  echo "config ok"
  exit 0;;
run) ;;
*) exit 64;;
esac
if grep -q crash "$cfg"; then echo "fatal: crash requested" >&2; exit 3; fi
trap 'echo "[t INFO  ringlb] reloading" >&2; if grep -q second "$cfg"; then echo "[t INFO  ringlb] listener \"second\" listening on 127.0.0.1:2222 (tcp, 1 workers)" >&2; fi' HUP
trap 'echo "[t INFO  ringlb] draining" >&2; exit 0' TERM
echo "[t INFO  ringlb] RUST_LOG=$RUST_LOG args=$*"
echo "[t INFO  ringlb] listener \"demo\" listening on 127.0.0.1:40123 (tcp, 2 workers)" >&2
if [ -n "$FAKE_ADMIN" ]; then echo "[t INFO  ringlb::admin] admin listening on http://$FAKE_ADMIN" >&2; fi
while :; do sleep 0.05; done
"#;

/// The fake binary, removed on drop.
struct Fake(PathBuf);

impl Fake {
    fn new(tag: &str) -> Fake {
        let p = std::env::temp_dir().join(format!(
            "ringlb-testkit-fake-{}-{tag}.sh",
            std::process::id()
        ));
        std::fs::write(&p, FAKE).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        Fake(p)
    }
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Serves one HTTP/1.0 request with `ok PATH`.
fn one_shot_http() -> (SocketAddr, thread::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let h = thread::spawn(move || {
        let (s, _) = l.accept().unwrap();
        let mut r = BufReader::new(s.try_clone().unwrap());
        let mut req = String::new();
        r.read_line(&mut req).unwrap();
        let path = req.split_whitespace().nth(1).unwrap_or("?").to_string();
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).unwrap() == 0 || h == "\r\n" {
                break;
            }
        }
        let mut s = s;
        write!(
            s,
            "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nok {path}"
        )
        .unwrap();
    });
    (addr, h)
}

fn panic_text(e: Box<dyn std::any::Any + Send>) -> String {
    e.downcast_ref::<String>()
        .cloned()
        .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}

const YAML: &str = "admin: 127.0.0.1:0\nlisteners:\n  - name: demo\n    bind: 127.0.0.1:0\n";

#[test]
fn start_learns_addresses_and_serves_admin() {
    let fake = Fake::new("start");
    let (http, server) = one_shot_http();
    let lb = Ringlb::builder(fake.path(), YAML)
        .env("FAKE_ADMIN", http.to_string())
        .env("RUST_LOG", "debug")
        .arg("--workers")
        .arg("2")
        .start();
    assert_eq!(lb.listener_addr("demo"), "127.0.0.1:40123".parse().unwrap());
    assert_eq!(lb.admin_addr(), http);
    assert!(
        lb.wait_for_log("RUST_LOG=debug args=run --config", T),
        "{:?}",
        lb.logs()
    );
    assert!(lb.count_log("--workers 2") == 1, "{:?}", lb.logs());
    assert_eq!(lb.http_get("/metrics"), (200, "ok /metrics".to_string()));
    server.join().unwrap();
    assert!(lb.fd_count() >= 3, "stdin, stdout, stderr at least");
    assert!(lb.thread_count() >= 1);
    assert!(lb.rss_kib() > 0);
    let cfg = lb.config_path().to_path_buf();
    assert_eq!(std::fs::read_to_string(&cfg).unwrap(), YAML);
    let pid = lb.pid();
    drop(lb);
    assert!(!cfg.exists(), "config file left behind");
    // Reaped and gone: kill(pid, 0) fails with ESRCH.
    // SAFETY: signal 0 only checks that the process exists.
    let r = unsafe { libc::kill(pid as libc::pid_t, 0) };
    assert_eq!(r, -1, "pid {pid} still exists after drop");
}

#[test]
fn default_rust_log_is_info_and_admin_optional() {
    let fake = Fake::new("defaults");
    let lb = Ringlb::start(fake.path(), "listeners:\n  - name: demo\n");
    assert!(lb.wait_for_log("RUST_LOG=info", T), "{:?}", lb.logs());
}

#[test]
fn reload_and_term() {
    let fake = Fake::new("reload");
    let mut lb = Ringlb::start(fake.path(), "listeners:\n  - name: demo\n");
    let yaml2 = "listeners:\n  - name: demo\n  - name: second\n";
    let mark = lb.reload(yaml2);
    assert!(
        lb.wait_for_log_after(mark, "listener \"second\"", T),
        "{:?}",
        lb.logs()
    );
    assert_eq!(std::fs::read_to_string(lb.config_path()).unwrap(), yaml2);
    assert_eq!(
        lb.listener_addr("second"),
        "127.0.0.1:2222".parse().unwrap()
    );
    assert_eq!(lb.count_log("reloading"), 1);
    // A mark after the reload line must not match it again.
    assert!(!lb.wait_for_log_after(lb.log_mark(), "reloading", Duration::from_millis(100)));
    assert_eq!(lb.wait_exit(Duration::from_millis(100)), None);
    lb.signal(Signal::Term);
    let status = lb.wait_exit(T).expect("fake did not exit on SIGTERM");
    assert_eq!(exit_code(status), 0);
    assert_eq!(lb.count_log("draining"), 1);
    let e = catch_unwind(AssertUnwindSafe(|| lb.signal(Signal::Hup))).unwrap_err();
    assert!(panic_text(e).contains("already exited"));
}

#[test]
fn exit_before_ready_panics_with_output() {
    let fake = Fake::new("crash");
    let e = catch_unwind(|| Ringlb::start(fake.path(), "listeners:\n  - name: demo\n# crash\n"))
        .unwrap_err();
    let msg = panic_text(e);
    assert!(msg.contains("exited with exit status: 3"), "{msg}");
    assert!(msg.contains("fatal: crash requested"), "{msg}");
}

#[test]
fn missing_listener_times_out() {
    let fake = Fake::new("missing");
    let yaml = "listeners:\n  - name: demo\n  - name: nowhere\n";
    let e = catch_unwind(|| {
        Ringlb::builder(fake.path(), yaml)
            .ready_timeout(Duration::from_millis(300))
            .start()
    })
    .unwrap_err();
    let msg = panic_text(e);
    // Only the listener that never logged is reported missing.
    assert!(
        msg.contains("not ready after 300ms: no log line for [\"listener \\\"nowhere\\\"\"]"),
        "{msg}"
    );
}

#[test]
fn check_and_run_to_exit() {
    let fake = Fake::new("check");
    assert_eq!(
        Ringlb::check(fake.path(), "listeners: []\n"),
        (0, "config ok\n".to_string())
    );
    let (code, out) = Ringlb::check(fake.path(), "bogus: 1\n");
    assert_eq!(code, 2);
    assert_eq!(out, "error: listeners[0].bogus: unknown field\n");
    let (code, out) = Ringlb::run_to_exit(fake.path(), "# crash\n", &[], T);
    assert_eq!((code, out.as_str()), (3, "fatal: crash requested\n"));
}
