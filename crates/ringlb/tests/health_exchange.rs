//! `health_check.send` / `expect` end to end: a backend process stopped with SIGSTOP still
//! completes TCP handshakes (its kernel fills the accept queue), so a connect-only check
//! keeps it up; a send/expect check marks it down with `outcome=no_reply`.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ringlb_testkit::*;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_ringlb"))
}

const INTERVAL: Duration = Duration::from_millis(200);
const TIMEOUT: Duration = Duration::from_millis(150);
const FALL: u32 = 2;

/// A line echo server in its own process (python3), so it can be stopped with SIGSTOP.
/// A large backlog: while it is stopped, checks of both listeners queue up in it.
const ECHO: &str = r#"
import socket, threading
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 0))
s.listen(4096)
print(s.getsockname()[1], flush=True)
def serve(c):
    try:
        while True:
            d = c.recv(512)
            if not d:
                break
            c.sendall(d)
    except OSError:
        pass
    c.close()
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"#;

/// The echo process; killed (and continued first, in case it is stopped) by PID on drop.
struct EchoProcess {
    child: Child,
    addr: SocketAddr,
}

impl EchoProcess {
    fn start() -> EchoProcess {
        let mut child = Command::new("python3")
            .args(["-c", ECHO])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn python3");
        let mut line = String::new();
        let out = child.stdout.take().expect("python3 stdout");
        BufReader::new(out).read_line(&mut line).expect("port line");
        let port: u16 = line.trim().parse().expect("a port number");
        EchoProcess {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }

    fn signal(&self, sig: i32) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid fits");
        // SAFETY: kill(2) on the PID of our own child, which we have not reaped.
        assert_eq!(unsafe { libc::kill(pid, sig) }, 0, "kill({pid}, {sig})");
    }
}

impl Drop for EchoProcess {
    fn drop(&mut self) {
        self.signal(libc::SIGCONT);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn yaml(backend: SocketAddr) -> String {
    let hc = |extra: &str| {
        format!(
            "    health_check:\n      interval: {}ms\n      timeout: {}ms\n      rise: 1\n      fall: {FALL}\n{extra}",
            INTERVAL.as_millis(),
            TIMEOUT.as_millis()
        )
    };
    format!(
        "access_log: false\nlisteners:\n  - name: echo\n    bind: 127.0.0.1:0\n{}    backends:\n      - addr: {backend}\n  - name: plain\n    bind: 127.0.0.1:0\n{}    backends:\n      - addr: {backend}\n",
        hc("      send: 'PING\\r\\n'\n      expect: 'PING\\r\\n'\n"),
        hc("")
    )
}

/// Active checks of `listener` that passed, as the prober's trace lines report them.
fn ok_checks(lb: &Ringlb, listener: &str) -> usize {
    let needle = format!("check listener={listener} ");
    lb.logs()
        .iter()
        .filter(|l| l.contains(&needle) && l.ends_with("outcome=ok"))
        .count()
}

#[test]
fn stopped_backend_is_down_by_send_expect_and_up_by_connect() {
    skip_unless!(
        Requirement::Command("python3"),
        have_command("python3"),
        "python3 not installed: no separate process to SIGSTOP"
    );
    let backend = EchoProcess::start();
    let lb = Ringlb::builder(bin(), &yaml(backend.addr))
        .env("RUST_LOG", "info,ringlb_prober=trace")
        .echo(false)
        .start();
    let b = backend.addr.to_string();
    // Both checks pass while the backend runs.
    assert!(
        wait_until(Duration::from_secs(10), || ok_checks(&lb, "echo") >= 2
            && ok_checks(&lb, "plain") >= 2),
        "both checks pass on a running backend:\n{}",
        lb.logs().join("\n")
    );
    assert!(lb.health_flips("echo", &b).is_empty());

    let mark = lb.log_mark();
    let stopped = Instant::now();
    backend.signal(libc::SIGSTOP);
    let bound = INTERVAL * FALL + TIMEOUT;
    let needle = format!("backend down: listener=echo backend={b} ");
    assert!(
        lb.wait_for_log_after(mark, &needle, bound * 10),
        "no `{needle}`:\n{}",
        lb.logs().join("\n")
    );
    let detected = stopped.elapsed();
    let flip = lb
        .health_flips("echo", &b)
        .into_iter()
        .find(|f| f.idx >= mark && !f.up)
        .expect("the down flip parses");
    assert_eq!(flip.outcome, "no_reply", "{flip:?}");
    assert!(!flip.passive);
    eprintln!(
        "SIGSTOPped backend marked down by send/expect after {} ms (bound interval x fall + timeout = {} ms, plus the phase of the check cycle)",
        detected.as_millis(),
        bound.as_millis()
    );
    // Generous bound: one interval of phase, one of scheduling slack on shared cores.
    assert!(
        detected <= bound + INTERVAL * 2 + Duration::from_millis(500),
        "detection took {detected:?}"
    );

    // Meanwhile, and for several checks after, the connect-only check on the same stopped
    // process keeps passing: its kernel completes the handshakes.
    let plain_before = ok_checks(&lb, "plain");
    assert!(
        wait_until(Duration::from_secs(10), || ok_checks(&lb, "plain")
            >= plain_before + 3 * FALL as usize),
        "the connect-only check stopped passing:\n{}",
        lb.logs().join("\n")
    );
    assert!(
        lb.health_flips("plain", &b).is_empty(),
        "the connect-only check must keep a stopped backend up"
    );

    // Continued, it answers again and comes back up.
    let mark = lb.log_mark();
    backend.signal(libc::SIGCONT);
    let needle = format!("backend up: listener=echo backend={b} ");
    assert!(
        lb.wait_for_log_after(mark, &needle, Duration::from_secs(10)),
        "no `{needle}` after SIGCONT:\n{}",
        lb.logs().join("\n")
    );
}
