//! `ringlb ctl` against a running ringlb: drain under load, state across reload and
//! restart, maintenance stopping health checks, node fail and /ready, exit codes, and the
//! instance lock (the same file twice, another file on a port already served).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use ringlb_testkit::*;
use serde_json::Value;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_ringlb"))
}

const WAIT: Duration = Duration::from_secs(20);

/// `ringlb ctl --config CONFIG ARGS...`: (exit code, stdout, stderr).
fn ctl(config: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin())
        .arg("ctl")
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .expect("run ringlb ctl");
    (
        exit_code(out.status),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Like [`ctl`], asserting exit 0.
fn ctl_ok(config: &Path, args: &[&str]) -> String {
    let (code, out, err) = ctl(config, args);
    assert_eq!(code, 0, "ctl {args:?}: stdout {out} stderr {err}");
    out
}

/// The JSON status reply.
fn status(config: &Path) -> Value {
    serde_json::from_str(&ctl_ok(config, &["--json", "status"])).expect("status is JSON")
}

/// `admin_state` and `weight` of one backend, from `status`.
fn backend_state(config: &Path, listener: &str, backend: &str) -> (String, u64) {
    let s = status(config);
    let l = s["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == listener)
        .unwrap_or_else(|| panic!("no listener {listener} in {s}"));
    let b = l["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["addr"] == backend)
        .unwrap_or_else(|| panic!("no backend {backend} in {s}"));
    (
        b["admin_state"].as_str().unwrap().to_string(),
        b["weight"].as_u64().unwrap(),
    )
}

fn two_backends(b1: &EchoBackend, b2: &EchoBackend, extra_top: &str, extra: &str) -> String {
    format!(
        "admin: 127.0.0.1:0\n{extra_top}listeners:\n  - name: web\n    bind: 127.0.0.1:0\n    algorithm: round_robin\n{extra}    backends:\n      - addr: {}\n      - addr: {}\n",
        b1.addr(),
        b2.addr()
    )
}

/// A new connection's tag (the backend that took it), echo checked, then closed.
fn one_tag(addr: std::net::SocketAddr) -> String {
    let mut c = connect(addr);
    let tag = read_line_tag(&mut c);
    assert_echo(&mut c, b"ping");
    tag
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ringlb-ctl-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn drain_under_load_sends_no_new_connection_to_the_backend_and_keeps_the_open_ones() {
    let (b1, b2) = (EchoBackend::tagged("b1"), EchoBackend::tagged("b2"));
    let lb = Ringlb::start(bin(), &two_backends(&b1, &b2, "", ""));
    let addr = lb.listener_addr("web");
    // Long-lived connections on both backends.
    let mut open: Vec<(String, std::net::TcpStream)> = (0..6)
        .map(|_| {
            let mut c = connect(addr);
            (read_line_tag(&mut c), c)
        })
        .collect();
    assert!(
        open.iter().any(|(t, _)| t == "b1"),
        "round robin reaches b1"
    );

    // Load: new connections all along, each recording when it started and where it went.
    let stop = Arc::new(AtomicBool::new(false));
    let seen: Arc<Mutex<Vec<(Instant, String)>>> = Arc::default();
    let load = {
        let (stop, seen) = (Arc::clone(&stop), Arc::clone(&seen));
        thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                let tag = one_tag(addr);
                seen.lock().unwrap().push((started, tag));
            }
        })
    };
    assert!(wait_until(WAIT, || seen.lock().unwrap().len() >= 20));
    let b1_label = b1.addr().to_string();
    let out = ctl_ok(lb.config_path(), &["drain", "web", &b1_label]);
    let drained_at = Instant::now();
    assert!(out.contains("drain (was ready)"), "{out}");
    // Keep the load going well past the drain.
    let after =
        |seen: &Vec<(Instant, String)>| seen.iter().filter(|(t, _)| *t > drained_at).count();
    assert!(wait_until(WAIT, || after(&seen.lock().unwrap()) >= 60));
    stop.store(true, Ordering::Relaxed);
    load.join().unwrap();

    let seen = seen.lock().unwrap();
    let late: Vec<&String> = seen
        .iter()
        .filter(|(t, _)| *t > drained_at)
        .map(|(_, tag)| tag)
        .collect();
    assert!(late.iter().all(|t| *t == "b2"), "after the drain: {late:?}");
    // What b1 accepted is exactly the connections that were told b1: nobody else came.
    let b1_tags = seen.iter().filter(|(_, t)| t == "b1").count()
        + open.iter().filter(|(t, _)| t == "b1").count();
    assert_eq!(b1.accepted(), b1_tags);
    // The open connections to the drained backend keep flowing.
    for (_, c) in &mut open {
        assert_echo(c, b"still here");
    }
    assert_eq!(backend_state(lb.config_path(), "web", &b1_label).0, "drain");
    let (_, metrics) = lb.http_get("/metrics");
    assert!(
        metrics.contains(&format!(
            "ringlb_backend_admin_state{{listener=\"web\",backend=\"{b1_label}\",state=\"drain\"}} 1"
        )),
        "{metrics}"
    );

    // Ready again: new connections reach b1 (positive control for the assertion above).
    ctl_ok(lb.config_path(), &["ready", "web", &b1_label]);
    assert!(wait_until(WAIT, || one_tag(addr) == "b1"));
}

#[test]
fn admin_state_survives_a_reload_and_with_state_file_a_restart() {
    let (b1, b2, b3) = (
        EchoBackend::tagged("b1"),
        EchoBackend::tagged("b2"),
        EchoBackend::tagged("b3"),
    );
    let dir = temp_dir("state");
    let state_file = dir.join("state.json");
    let top = format!("state_file: {}\n", state_file.display());
    let yaml = two_backends(&b1, &b2, &top, "");
    let mut lb = Ringlb::start(bin(), &yaml);
    let (l1, l2) = (b1.addr().to_string(), b2.addr().to_string());
    ctl_ok(lb.config_path(), &["drain", "web", &l1]);
    ctl_ok(lb.config_path(), &["weight", "web", &l2, "7"]);
    assert!(state_file.exists(), "state_file written");

    // Reload: a third backend joins; b1 stays drained, b2 keeps its weight.
    let reloaded = format!("{yaml}      - addr: {}\n", b3.addr());
    let mark = lb.reload(&reloaded);
    assert!(lb.wait_for_log_after(mark, "reload applied", WAIT));
    assert_eq!(
        backend_state(lb.config_path(), "web", &l1),
        ("drain".into(), 1)
    );
    assert_eq!(
        backend_state(lb.config_path(), "web", &l2),
        ("ready".into(), 7)
    );
    let addr = lb.listener_addr("web");
    let tags: Vec<String> = (0..30).map(|_| one_tag(addr)).collect();
    assert!(tags.iter().all(|t| t != "b1"), "{tags:?}");
    assert!(
        tags.iter().any(|t| t == "b3"),
        "the new backend serves: {tags:?}"
    );

    // Restart on the same file: the state file gives the new process the same state.
    lb.signal(Signal::Term);
    assert_eq!(exit_code(lb.wait_exit(WAIT).expect("exit on SIGTERM")), 0);
    let lb2 = Ringlb::start(bin(), &reloaded);
    assert!(lb2.wait_for_log("admin state restored", WAIT));
    assert_eq!(
        backend_state(lb2.config_path(), "web", &l1),
        ("drain".into(), 1)
    );
    assert_eq!(
        backend_state(lb2.config_path(), "web", &l2),
        ("ready".into(), 7)
    );
    let before = b1.accepted();
    let addr = lb2.listener_addr("web");
    let tags: Vec<String> = (0..30).map(|_| one_tag(addr)).collect();
    assert!(tags.iter().all(|t| t != "b1"), "{tags:?}");
    assert_eq!(
        b1.accepted(),
        before,
        "no connection reached the drained backend"
    );
    drop(lb2);

    // A corrupt state file is reported and ignored: the instance starts, all ready.
    std::fs::write(&state_file, "{not json").unwrap();
    let lb3 = Ringlb::start(bin(), &reloaded);
    assert!(lb3.wait_for_log("ignored: every backend starts ready", WAIT));
    assert_eq!(backend_state(lb3.config_path(), "web", &l1).0, "ready");
    drop(lb3);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn maint_stops_health_checks_and_ready_resumes_them() {
    let (b1, b2) = (EchoBackend::tagged("b1"), EchoBackend::tagged("b2"));
    let hc = "    health_check: {interval: 100ms, timeout: 100ms, rise: 1, fall: 1}\n";
    let lb = Ringlb::start(bin(), &two_backends(&b1, &b2, "", hc));
    // Health checks are connections that send nothing.
    let checks = |b: &EchoBackend| b.conns().iter().filter(|c| c.bytes_in == 0).count();
    assert!(wait_until(WAIT, || checks(&b1) >= 2));
    let l1 = b1.addr().to_string();
    let out = ctl_ok(lb.config_path(), &["maint", "web", &l1]);
    assert!(out.contains("no health checks"), "{out}");
    let (in_maint, control) = (checks(&b1), checks(&b2));
    // Positive control: b2 keeps being checked.
    assert!(wait_until(WAIT, || checks(&b2) >= control + 10));
    assert!(
        checks(&b1) <= in_maint + 1,
        "checked in maintenance: {in_maint} → {}",
        checks(&b1)
    );
    assert_eq!(backend_state(lb.config_path(), "web", &l1).0, "maint");
    let tags: Vec<String> = (0..10).map(|_| one_tag(lb.listener_addr("web"))).collect();
    assert!(tags.iter().all(|t| t == "b2"), "{tags:?}");

    ctl_ok(lb.config_path(), &["ready", "web", &l1]);
    let resumed = checks(&b1);
    assert!(wait_until(WAIT, || checks(&b1) >= resumed + 2));
}

#[test]
fn node_fail_turns_ready_to_503_and_node_ok_back() {
    let (b1, b2) = (EchoBackend::tagged("b1"), EchoBackend::tagged("b2"));
    let lb = Ringlb::start(bin(), &two_backends(&b1, &b2, "", ""));
    // The listeners log before the process declares itself serving: wait for it.
    assert!(wait_until(WAIT, || lb.http_get("/ready").0 == 200));
    assert_eq!(lb.http_get("/ready"), (200, "ready\n".to_string()));
    let out = ctl_ok(lb.config_path(), &["node", "fail"]);
    assert!(out.contains("node failed"), "{out}");
    assert_eq!(
        lb.http_get("/ready"),
        (503, "not ready: node failed\n".to_string())
    );
    assert!(lb
        .http_get("/metrics")
        .1
        .lines()
        .any(|l| l == "ringlb_ready 0"));
    let table = ctl_ok(lb.config_path(), &["status"]);
    assert!(table.contains("NOT READY: node failed"), "{table}");
    // Listeners keep serving: taking the host out is the routing layer's job.
    one_tag(lb.listener_addr("web"));
    ctl_ok(lb.config_path(), &["node", "ok"]);
    assert_eq!(lb.http_get("/ready"), (200, "ready\n".to_string()));
    assert!(lb
        .http_get("/metrics")
        .1
        .lines()
        .any(|l| l == "ringlb_ready 1"));
}

#[test]
fn ctl_exit_codes_say_applied_refused_usage_or_no_instance() {
    let (b1, b2) = (EchoBackend::tagged("b1"), EchoBackend::tagged("b2"));
    let lb = Ringlb::start(bin(), &two_backends(&b1, &b2, "", ""));
    let cfg = lb.config_path();
    let l1 = b1.addr().to_string();
    let table = ctl_ok(cfg, &["status"]);
    assert!(table.contains(&format!("pid {}", lb.pid())), "{table}");
    assert!(table.contains(&l1) && table.contains("ready"), "{table}");

    let refused: [(&[&str], &str); 5] = [
        (
            &["drain", "nope", &l1],
            "no listener named \"nope\"; listeners: web",
        ),
        (
            &["drain", "web", "10.9.9.9:1"],
            "has no backend \"10.9.9.9:1\"",
        ),
        (&["failback", "nope"], "no listener named"),
        (
            &["upgrade", "--binary", "/nonexistent/ringlb"],
            "cannot start /nonexistent/ringlb",
        ),
        (&["weight", "nope", &l1, "3"], "no listener named"),
    ];
    for (args, why) in refused {
        let (code, out, err) = ctl(cfg, args);
        assert_eq!(code, 1, "{args:?}: {out} {err}");
        assert!(err.contains(why), "{args:?}: {err}");
    }
    // weight 0 means drained; `ready` is refused until it has a weight again.
    ctl_ok(cfg, &["weight", "web", &l1, "0"]);
    assert_eq!(backend_state(cfg, "web", &l1), ("drain".into(), 0));
    let (code, _, err) = ctl(cfg, &["ready", "web", &l1]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("weight 0"), "{err}");
    ctl_ok(cfg, &["weight", "web", &l1, "config"]);
    assert_eq!(backend_state(cfg, "web", &l1), ("ready".into(), 1));
    let out = ctl_ok(cfg, &["failback", "web"]);
    assert!(out.contains("nothing to do"), "{out}");

    for usage in [
        &["weight", "web", &l1][..],
        &["weight", "web", &l1, "65536"],
        &["node", "down"],
        &["reboot"],
    ] {
        assert_eq!(ctl(cfg, usage).0, 2, "{usage:?}");
    }
    let out = Command::new(bin())
        .args(["ctl", "status"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "neither --config nor --control");

    // A valid file nobody serves: no running instance.
    let dir = temp_dir("codes");
    let idle = dir.join("idle.yaml");
    std::fs::write(&idle, two_backends(&b1, &b2, "", "")).unwrap();
    let (code, _, err) = ctl(&idle, &["status"]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("no running instance"), "{err}");
    let out = Command::new(bin())
        .args(["ctl", "--control"])
        .arg(dir.join("none.sock"))
        .arg("status")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_second_run_on_the_same_file_is_refused_with_the_pid() {
    let (b1, b2) = (EchoBackend::tagged("b1"), EchoBackend::tagged("b2"));
    let lb = Ringlb::start(bin(), &two_backends(&b1, &b2, "", ""));
    let out = Command::new(bin())
        .arg("run")
        .arg("--config")
        .arg(lb.config_path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(&format!("pid {}", lb.pid())), "{err}");
    assert!(err.contains("ringlb upgrade --config"), "{err}");
    assert!(!err.contains("listening on"), "nothing was bound: {err}");
    // The first one is untouched.
    one_tag(lb.listener_addr("web"));
    ctl_ok(lb.config_path(), &["status"]);
}

#[test]
fn another_file_on_a_port_ringlb_serves_is_refused_and_takes_nothing() {
    let (b1, b2) = (EchoBackend::tagged("b1"), EchoBackend::tagged("b2"));
    let lb = Ringlb::start(bin(), &two_backends(&b1, &b2, "", ""));
    let addr = lb.listener_addr("web");
    let intruder = EchoBackend::tagged("intruder");
    for bind in [addr.to_string(), format!("0.0.0.0:{}", addr.port())] {
        let yaml = format!(
            "listeners:\n  - name: other\n    bind: {bind}\n    backends:\n      - addr: {}\n",
            intruder.addr()
        );
        let (code, out) = Ringlb::run_to_exit(bin(), &yaml, &[], WAIT);
        assert_eq!(code, 1, "{out}");
        assert!(out.contains("already served by another process"), "{out}");
        assert!(out.contains(&format!("pid {}", lb.pid())), "{out}");
        assert!(!out.contains("listening on"), "{out}");
    }
    // Every connection still goes to the first instance's backends.
    for _ in 0..20 {
        assert_ne!(one_tag(addr), "intruder");
    }
    assert_eq!(intruder.accepted(), 0);
}
