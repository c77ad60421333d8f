//! The control socket spoken to directly (as socat would), hostile input against a live
//! instance, the signals a serving process must survive or drain on, and sd_notify with a
//! fake notify socket.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{SocketAddr as UnixAddr, UnixDatagram, UnixStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use ringlb_testkit::*;
use serde_json::Value;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_ringlb"))
}

const WAIT: Duration = Duration::from_secs(20);

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ringlb-csock-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn yaml(control: Option<&Path>, backend: &EchoBackend) -> String {
    let control = control.map_or(String::new(), |p| format!("control: {}\n", p.display()));
    format!(
        "admin: 127.0.0.1:0\n{control}listeners:\n  - name: web\n    bind: 127.0.0.1:0\n    backends:\n      - addr: {}\n",
        backend.addr()
    )
}

/// One request line, one reply line.
fn exchange(stream: &mut UnixStream, line: &[u8]) -> Value {
    stream.write_all(line).unwrap();
    let mut reply = String::new();
    BufReader::new(stream.try_clone().unwrap())
        .read_line(&mut reply)
        .unwrap();
    serde_json::from_str(&reply).unwrap_or_else(|e| panic!("{reply:?}: {e}"))
}

fn open(path: &Path) -> UnixStream {
    let s = UnixStream::connect(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    s.set_read_timeout(Some(WAIT)).unwrap();
    s
}

fn kill(pid: u32, signal: libc::c_int) {
    // SAFETY: kill(2) on the ringlb child this test spawned and has not reaped.
    assert_eq!(unsafe { libc::kill(pid as libc::pid_t, signal) }, 0);
}

#[test]
fn the_protocol_is_one_json_line_each_way_on_a_private_socket() {
    let b = EchoBackend::tagged("b");
    let dir = temp_dir("proto");
    let path = dir.join("ctl.sock");
    let lb = Ringlb::start(bin(), &yaml(Some(&path), &b));
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let mut s = open(&path);
    // The listeners log before the process declares itself serving: wait for it.
    assert!(wait_until(WAIT, || {
        exchange(&mut s, b"{\"v\":1,\"cmd\":\"ping\"}\n")["ready"] == true
    }));
    let ping = exchange(&mut s, b"{\"v\":1,\"cmd\":\"ping\"}\n");
    assert_eq!(ping["ok"], true);
    assert_eq!(ping["pid"], lb.pid());
    assert_eq!(ping["not_ready"], Value::Null);
    let status = exchange(&mut s, b"{\"v\":1,\"cmd\":\"status\"}\n");
    assert_eq!(status["v"], 1);
    assert_eq!(status["pid"], lb.pid());
    assert_eq!(status["listeners"][0]["name"], "web");
    assert_eq!(
        status["listeners"][0]["backends"][0]["admin_state"],
        "ready"
    );
    let label = b.addr().to_string();
    let drain = exchange(
        &mut s,
        format!("{{\"v\":1,\"cmd\":\"drain\",\"listener\":\"web\",\"backend\":\"{label}\"}}\n")
            .as_bytes(),
    );
    assert_eq!(drain["ok"], true, "{drain}");
    let refused = exchange(&mut s, b"{\"v\":2,\"cmd\":\"status\"}\n");
    assert_eq!(refused["ok"], false);
    assert!(
        refused["error"].as_str().unwrap().contains("version"),
        "{refused}"
    );
    // `--control PATH` finds the same instance.
    let out = Command::new(bin())
        .args(["ctl", "--control"])
        .arg(&path)
        .args(["ready", "web", &label])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    drop(lb);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn hostile_input_never_hurts_the_instance() {
    let b = EchoBackend::tagged("b");
    let dir = temp_dir("hostile");
    let path = dir.join("ctl.sock");
    let lb = Ringlb::start(bin(), &yaml(Some(&path), &b));
    let garbage: [&[u8]; 8] = [
        b"\n\n\n",
        b"\x00\x01\x02\xff\xfe\n",
        b"{\"v\":1,\"cmd\":\"status\"\n",
        b"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[\n",
        b"{\"v\":1,\"cmd\":\"weight\",\"listener\":\"web\",\"backend\":\"x\",\"weight\":1e99}\n",
        b"{\"v\":18446744073709551616,\"cmd\":\"ping\"}\n",
        b"GET / HTTP/1.1\r\n\r\n",
        b"{\"v\":1,\"cmd\":\"node\",\"state\":null}\n",
    ];
    for g in garbage {
        let mut s = open(&path);
        s.write_all(g).unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let mut replies = String::new();
        s.read_to_string(&mut replies).unwrap();
        for line in replies.lines() {
            let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{line}: {e}"));
            assert_eq!(v["v"], 1, "{line}");
        }
    }
    // A line far over the limit: refused, connection closed, nothing read beyond it.
    let mut s = open(&path);
    let _ = s.write_all(&vec![b'x'; 64 * 1024]);
    let mut reply = String::new();
    let _ = BufReader::new(&s).read_line(&mut reply);
    assert!(reply.contains("longer than"), "{reply:?}");
    // Every slot held by a silent client: the next one is told so at once.
    let holders: Vec<UnixStream> = (0..8).map(|_| open(&path)).collect();
    assert!(wait_until(WAIT, || {
        let mut s = open(&path);
        // The refusal may come (and the socket close) before the request is written.
        let _ = s.write_all(b"{\"v\":1,\"cmd\":\"ping\"}\n");
        let mut reply = String::new();
        let _ = BufReader::new(&s).read_line(&mut reply);
        reply.contains("busy")
    }));
    drop(holders);
    // Slots come back and the instance still serves traffic and commands. Until the
    // server has seen the holders go, a new client may still be refused as busy (and
    // closed before its request is written): retry rather than fail on that.
    assert!(wait_until(WAIT, || {
        let mut s = open(&path);
        if s.write_all(b"{\"v\":1,\"cmd\":\"ping\"}\n").is_err() {
            return false;
        }
        let mut reply = String::new();
        let _ = BufReader::new(&s).read_line(&mut reply);
        serde_json::from_str::<Value>(&reply).is_ok_and(|v| v["ok"] == true)
    }));
    let mut c = connect(lb.listener_addr("web"));
    assert_eq!(read_line_tag(&mut c), "b");
    assert_echo(&mut c, b"fine");
    drop(lb);
    std::fs::remove_dir_all(&dir).ok();
}

/// Echo traffic on long-lived connections plus new connections, until stopped; counts
/// failures of each kind.
struct Load {
    stop: Arc<AtomicBool>,
    rounds: Arc<AtomicUsize>,
    threads: Vec<thread::JoinHandle<Result<(), String>>>,
}

impl Load {
    fn start(addr: std::net::SocketAddr) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let rounds = Arc::new(AtomicUsize::new(0));
        let long_lived = {
            let (stop, rounds) = (Arc::clone(&stop), Arc::clone(&rounds));
            thread::spawn(move || {
                let mut conns: Vec<_> = (0..4)
                    .map(|_| {
                        let mut c = connect(addr);
                        read_line_tag(&mut c);
                        c
                    })
                    .collect();
                while !stop.load(Ordering::Relaxed) {
                    for c in &mut conns {
                        c.write_all(b"x")
                            .map_err(|e| format!("long-lived write: {e}"))?;
                        let mut b = [0u8; 1];
                        c.read_exact(&mut b)
                            .map_err(|e| format!("long-lived read: {e}"))?;
                    }
                    rounds.fetch_add(1, Ordering::Relaxed);
                }
                Ok(())
            })
        };
        let new_conns = {
            let stop = Arc::clone(&stop);
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let mut c = connect_with_timeout(addr, Duration::from_secs(5))
                        .map_err(|e| format!("new connection: {e}"))?;
                    read_line_tag(&mut c);
                    assert_echo(&mut c, b"new");
                }
                Ok(())
            })
        };
        Load {
            stop,
            rounds,
            threads: vec![long_lived, new_conns],
        }
    }

    /// Waits for `n` more rounds of the long-lived connections.
    fn wait_rounds(&self, n: usize) {
        let start = self.rounds.load(Ordering::Relaxed);
        assert!(
            wait_until(WAIT, || self.rounds.load(Ordering::Relaxed) >= start + n),
            "the load stalled"
        );
    }

    fn finish(self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap().unwrap();
        }
    }
}

#[test]
fn sigusr1_and_sigpipe_lose_nothing_and_sigquit_drains() {
    let b = EchoBackend::tagged("b");
    let mut lb = Ringlb::start(bin(), &yaml(None, &b));
    let addr = lb.listener_addr("web");
    let load = Load::start(addr);
    load.wait_rounds(20);
    let mark = lb.log_mark();
    kill(lb.pid(), libc::SIGUSR1);
    assert!(lb.wait_for_log_after(mark, "SIGUSR1: ignored", WAIT));
    load.wait_rounds(20);
    kill(lb.pid(), libc::SIGPIPE);
    load.wait_rounds(20);
    // Still the same process, serving; no connection of the load failed.
    assert!(wait_until(WAIT, || lb.http_get("/ready").0 == 200));
    load.finish();

    // SIGQUIT: stop accepting, let the open connection finish, exit 0.
    let mut open = connect(addr);
    read_line_tag(&mut open);
    let mark = lb.log_mark();
    kill(lb.pid(), libc::SIGQUIT);
    assert!(lb.wait_for_log_after(mark, "SIGQUIT: stopped accepting", WAIT));
    assert!(wait_until(WAIT, || connect_with_timeout(
        addr,
        Duration::from_secs(1)
    )
    .is_err()));
    assert_echo(&mut open, b"draining, still flowing");
    drop(open);
    let status = lb.wait_exit(WAIT).expect("exit once drained");
    assert_eq!(exit_code(status), 0);
    assert!(lb.count_log("shutdown: all connections finished") == 1);
}

/// Receives notify datagrams until one contains `want`; returns everything received.
fn wait_notify(socket: &UnixDatagram, want: &str, seen: &mut Vec<String>) {
    let mut buf = [0u8; 512];
    while !seen.iter().any(|m| m.contains(want)) {
        let n = socket
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("no {want:?} from ringlb; got {seen:?}: {e}"));
        seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
}

fn sd_notify_sequence(socket: UnixDatagram, target: &str) {
    socket.set_read_timeout(Some(WAIT)).unwrap();
    let b = EchoBackend::tagged("b");
    let mut lb = Ringlb::builder(bin(), &yaml(None, &b))
        .env("NOTIFY_SOCKET", target)
        .start();
    let mut seen = Vec::new();
    wait_notify(&socket, "READY=1", &mut seen);
    assert_eq!(seen, ["READY=1"], "nothing before READY");
    lb.signal(Signal::Hup);
    wait_notify(&socket, "RELOADING=1", &mut seen);
    let reloading = seen.last().unwrap().clone();
    let usec = reloading
        .strip_prefix("RELOADING=1\nMONOTONIC_USEC=")
        .unwrap_or_else(|| panic!("{reloading:?}"));
    assert!(usec.parse::<u64>().unwrap() > 0);
    seen.clear();
    wait_notify(&socket, "READY=1", &mut seen);
    lb.signal(Signal::Term);
    seen.clear();
    wait_notify(&socket, "STOPPING=1", &mut seen);
    assert_eq!(exit_code(lb.wait_exit(WAIT).unwrap()), 0);
}

#[test]
fn sd_notify_ready_reloading_stopping_on_a_path_socket() {
    let dir = temp_dir("notify");
    let path = dir.join("notify.sock");
    let _ = std::fs::remove_file(&path);
    let socket = UnixDatagram::bind(&path).unwrap();
    sd_notify_sequence(socket, path.to_str().unwrap());
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn sd_notify_on_an_abstract_socket() {
    let name = format!("ringlb-test-notify-{}", std::process::id());
    let addr = UnixAddr::from_abstract_name(name.as_bytes()).unwrap();
    let socket = UnixDatagram::bind_addr(&addr).unwrap();
    sd_notify_sequence(socket, &format!("@{name}"));
}
