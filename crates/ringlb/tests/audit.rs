//! The audit log end to end: a running ringlb records its start, control commands with the
//! peer's uid and pid, reloads (applied and rejected), health transitions and its
//! shutdown in one hash chain that `ringlb audit verify` checks, a restart continues, and
//! an edit breaks.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use ringlb_testkit::*;
use serde_json::Value;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_ringlb"))
}

const WAIT: Duration = Duration::from_secs(20);

fn verify(path: &Path) -> (i32, String) {
    let out = Command::new(bin())
        .args(["audit", "verify"])
        .arg(path)
        .output()
        .expect("run ringlb audit verify");
    (
        exit_code(out.status),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn records(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .expect("audit log")
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON record"))
        .collect()
}

#[test]
fn control_reload_health_and_shutdown_are_chained_and_verified() {
    let dir = std::env::temp_dir().join(format!("ringlb-audit-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let log = dir.join("audit.log");
    let mut backend = EchoBackend::start();
    let yaml = format!(
        "audit_log: {}\naccess_log: false\nlisteners:\n  - name: t\n    bind: 127.0.0.1:0\n    \
         health_check: {{interval: 100ms, timeout: 100ms, rise: 2, fall: 2}}\n    backends:\n      - addr: {}\n",
        log.display(),
        backend.addr()
    );
    let mut lb = Ringlb::builder(bin(), &yaml).start();
    assert!(lb.wait_for_log("] ready: ", READY_TIMEOUT));
    let ctl = |args: &[&str]| ringlb_testkit::ctl(bin(), lb.config_path(), args).0;
    let label = backend.addr().to_string();
    assert_eq!(ctl(&["drain", "t", &label]), 0);
    assert_eq!(ctl(&["status"]), 0, "read-only: not recorded");
    assert_eq!(ctl(&["ready", "t", "nope"]), 1, "refused: recorded too");
    let mark = lb.reload(&yaml);
    assert!(lb.wait_for_log_after(mark, "reload", WAIT));
    let mark = lb.reload("listeners: []\n");
    assert!(lb.wait_for_log_after(mark, "reload rejected", WAIT));
    lb.rewrite_config(&yaml);
    let mark = lb.log_mark();
    backend.close_listener();
    assert!(lb.wait_for_log_after(mark, "backend down: listener=t", WAIT));
    lb.signal(Signal::Term);
    assert!(lb.wait_exit(WAIT).is_some());

    let (code, out) = verify(&log);
    assert_eq!(code, 0, "{out}");
    let events: Vec<(String, Value)> = records(&log)
        .into_iter()
        .map(|r| {
            (
                r["event"].as_str().unwrap_or("").to_string(),
                r["detail"].clone(),
            )
        })
        .collect();
    let names: Vec<&str> = events.iter().map(|(e, _)| e.as_str()).collect();
    assert_eq!(
        names,
        ["start", "control", "control", "reload", "reload", "health", "shutdown"],
        "{events:#?}"
    );
    let drain = &events[1].1;
    assert_eq!(drain["cmd"], "drain");
    assert_eq!(drain["result"], "ok");
    assert_eq!(drain["uid"], 0);
    assert!(drain["pid"].as_i64().is_some_and(|p| p > 0), "{drain}");
    assert_eq!(events[2].1["result"], "refused");
    assert_eq!(events[3].1["result"], "ok");
    assert_eq!(events[4].1["result"], "rejected");
    assert_eq!(events[5].1["up"], false);
    assert_eq!(events[6].1["signal"], "SIGTERM");
    assert_eq!(
        events[0].1["config_sha256"].as_str().map(str::len),
        Some(64)
    );
    drop(lb);

    // A restart continues the chain.
    let mut lb = Ringlb::builder(bin(), &yaml).start();
    assert!(lb.wait_for_log("] ready: ", READY_TIMEOUT));
    lb.signal(Signal::Term);
    assert!(lb.wait_exit(WAIT).is_some());
    let (code, out) = verify(&log);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("9 record(s)"), "{out}");

    // An edit breaks it, and says where.
    let text = std::fs::read_to_string(&log).expect("audit log");
    std::fs::write(
        &log,
        text.replacen("\"cmd\":\"drain\"", "\"cmd\":\"ready\"", 1),
    )
    .expect("edit");
    let (code, out) = verify(&log);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("line 2") && out.contains("edited"), "{out}");
    let _ = std::fs::remove_dir_all(&dir);
}
