//! Live upgrade through running processes: established connections (copy, splice and auto
//! forwarding) stream checksummed bytes both ways while ringlb upgrades itself several
//! times with SIGUSR2, a connect loop runs beside them, and nothing is reset, refused, lost,
//! duplicated or reordered. An upgrade whose new process cannot start (its config became
//! invalid on disk) leaves the old one serving everything.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use ringlb_testkit::*;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_ringlb"))
}

const WAIT: Duration = Duration::from_secs(20);
/// Per connection and forwarding mode.
/// Defaults sized for CI; `UPGRADE_STREAMS=170 UPGRADE_COUNT=10` (510 streams, 10
/// upgrades) is the full run whose figures the README quotes.
fn streams_per_mode() -> usize {
    env_usize("UPGRADE_STREAMS", 8)
}

fn upgrades() -> usize {
    env_usize("UPGRADE_COUNT", 3)
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
const UDP_SESSIONS: usize = 20;

/// Processes the upgrades started: ended (SIGTERM, then SIGKILL) when the test ends.
/// Declared after the `Ringlb` handle so it drops first: the handle's log readers end
/// only once every process holding the log pipe is gone.
struct Successors(Vec<u32>);

impl Drop for Successors {
    fn drop(&mut self) {
        for &pid in &self.0 {
            signal(pid, libc::SIGTERM);
        }
        for &pid in &self.0 {
            if !wait_until(Duration::from_secs(10), || !alive(pid)) {
                signal(pid, libc::SIGKILL);
            }
        }
    }
}

fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) on a process this test started (directly or through ringlb).
    unsafe { libc::kill(pid as libc::pid_t, sig) };
}

/// Running (not a zombie, not gone).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| !rest.starts_with('Z')))
        .unwrap_or(false)
}

/// The pid in the n-th (0-based) `upgrade: pid N took over` line.
fn successor(lb: &Ringlb, n: usize) -> Option<u32> {
    lb.logs()
        .iter()
        .filter_map(|l| l.split("upgrade: pid ").nth(1))
        .filter_map(|rest| rest.split(' ').next()?.parse().ok())
        .nth(n)
}

/// One established connection echoing a deterministic stream back, chunk by chunk.
struct Stream {
    stop: Arc<AtomicBool>,
    /// Set once its first chunk came back: the connection is established end to end.
    up: Arc<AtomicBool>,
    thread: JoinHandle<Result<u64, String>>,
}

fn stream(addr: SocketAddr, seed: u64, chunk: usize) -> Stream {
    let stop = Arc::new(AtomicBool::new(false));
    let up = Arc::new(AtomicBool::new(false));
    let (flag, established) = (Arc::clone(&stop), Arc::clone(&up));
    let thread = thread::spawn(move || -> Result<u64, String> {
        let mut c = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
        c.set_read_timeout(Some(WAIT)).map_err(|e| e.to_string())?;
        let mut pattern = Pattern::new(seed);
        let (mut out, mut back) = (vec![0u8; chunk], vec![0u8; chunk]);
        let mut total = 0u64;
        while !flag.load(Ordering::Relaxed) {
            pattern.fill(&mut out);
            c.write_all(&out)
                .map_err(|e| format!("write after {total} bytes: {e}"))?;
            c.read_exact(&mut back)
                .map_err(|e| format!("read after {total} bytes: {e}"))?;
            if back != out {
                return Err(format!("echo differs after {total} bytes"));
            }
            total += chunk as u64;
            established.store(true, Ordering::Relaxed);
        }
        c.shutdown(std::net::Shutdown::Write)
            .map_err(|e| e.to_string())?;
        let mut rest = Vec::new();
        c.read_to_end(&mut rest)
            .map_err(|e| format!("final read: {e}"))?;
        if !rest.is_empty() {
            return Err(format!("{} unexpected bytes at the end", rest.len()));
        }
        Ok(total)
    });
    Stream { stop, up, thread }
}

/// A UDP client socket: one session in ringlb. Returns the tag of the backend that answered.
fn udp_ask(sock: &std::net::UdpSocket, lb: SocketAddr, n: usize) -> Result<String, String> {
    let query = format!("q{n}");
    let mut buf = [0u8; 256];
    // Loopback does not lose datagrams, but a retry keeps the test about backends, not luck.
    for _ in 0..3 {
        sock.send_to(query.as_bytes(), lb)
            .map_err(|e| e.to_string())?;
        if let Ok((len, _)) = sock.recv_from(&mut buf) {
            let reply = String::from_utf8_lossy(&buf[..len]).to_string();
            let (tag, body) = reply
                .split_once('\n')
                .ok_or(format!("untagged reply {reply:?}"))?;
            if body == query {
                return Ok(tag.to_string());
            }
        }
    }
    Err(format!("no answer to {query}"))
}

fn yaml(echo: SocketAddr, tagged: SocketAddr) -> String {
    let mut y = String::from("admin: 127.0.0.1:0\nworkers: 2\nshutdown_timeout: 60s\nlisteners:\n");
    for mode in ["copy", "splice", "auto"] {
        y.push_str(&format!(
            "  - name: {mode}\n    bind: 127.0.0.1:0\n    forwarding: {mode}\n    backends:\n      - addr: {echo}\n"
        ));
    }
    y.push_str(&format!(
        "  - name: loop\n    bind: 127.0.0.1:0\n    backends:\n      - addr: {tagged}\n"
    ));
    y
}

fn with_udp(mut y: String, backends: [SocketAddr; 2]) -> String {
    y.push_str(&format!(
        "  - name: dgram\n    bind: 127.0.0.1:0\n    protocol: udp\n    session_timeout: 60s\n    backends:\n      - addr: {}\n      - addr: {}\n",
        backends[0], backends[1]
    ));
    y
}

#[test]
fn established_connections_and_new_connects_survive_upgrades() {
    skip_unless!(
        Requirement::IoUring,
        io_uring_available(),
        "io_uring is not available here"
    );
    let echo = EchoBackend::start();
    let tagged = EchoBackend::tagged("t");
    let udp = [UdpEchoBackend::tagged("u1"), UdpEchoBackend::tagged("u2")];
    let config = with_udp(
        yaml(echo.addr(), tagged.addr()),
        [udp[0].addr(), udp[1].addr()],
    );
    let lb = Ringlb::start(bin(), &config);
    let mut successors = Successors(Vec::new());
    assert!(lb.wait_for_log("ready:", WAIT), "ringlb did not start");
    let dgram = lb.listener_addr("dgram");
    let sessions: Vec<std::net::UdpSocket> = (0..UDP_SESSIONS)
        .map(|_| {
            let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
            s.set_read_timeout(Some(Duration::from_secs(2)))
                .unwrap_or_else(|e| panic!("{e}"));
            s
        })
        .collect();
    let owners: Vec<String> = sessions
        .iter()
        .enumerate()
        .map(|(i, s)| udp_ask(s, dgram, i).unwrap_or_else(|e| panic!("session {i}: {e}")))
        .collect();
    let load = Load::start(lb.listener_addr("loop"), 2, Duration::from_millis(2));
    let mut streams = Vec::new();
    for (m, mode) in ["copy", "splice", "auto"].iter().enumerate() {
        for i in 0..streams_per_mode() {
            // Small chunks for request/response links, big ones so bulk detection (and, in
            // splice and auto, pipes with bytes in flight) is exercised.
            let chunk = if i % 2 == 0 { 200 } else { 96 * 1024 };
            streams.push(stream(lb.listener_addr(mode), (m * 100 + i) as u64, chunk));
        }
    }
    assert!(
        wait_until(WAIT, || streams
            .iter()
            .all(|s| s.up.load(Ordering::Relaxed))),
        "not every stream got its first echo"
    );
    let moved = Arc::new(AtomicU64::new(0));
    let mut current = lb.pid();
    for n in 0..upgrades() {
        // Let traffic flow between upgrades.
        let before = load.total();
        assert!(
            wait_until(WAIT, || load.total() >= before + 20),
            "connect loop stalled"
        );
        let started = Instant::now();
        signal(current, libc::SIGUSR2);
        assert!(
            wait_until(WAIT, || successor(&lb, n).is_some()),
            "upgrade {n}: no process took over"
        );
        let next = successor(&lb, n).unwrap_or(0);
        successors.0.push(next);
        assert!(
            wait_until(WAIT, || !alive(current)),
            "upgrade {n}: the old process (pid {current}) did not exit"
        );
        eprintln!(
            "upgrade {n}: pid {current} -> {next} in {:?}",
            started.elapsed()
        );
        for (i, s) in sessions.iter().enumerate() {
            let tag = udp_ask(s, dgram, 1000 * (n + 1) + i)
                .unwrap_or_else(|e| panic!("upgrade {n}: session {i}: {e}"));
            assert_eq!(
                tag, owners[i],
                "upgrade {n}: session {i} moved to another backend"
            );
        }
        moved.fetch_add(1, Ordering::Relaxed);
        current = next;
    }
    let before = load.total();
    assert!(
        wait_until(WAIT, || load.total() >= before + 20),
        "connect loop stalled after the last upgrade"
    );
    for s in &streams {
        s.stop.store(true, Ordering::Relaxed);
    }
    let mut bytes = 0;
    for (i, s) in streams.into_iter().enumerate() {
        match s.thread.join() {
            Ok(Ok(n)) => bytes += n,
            Ok(Err(e)) => panic!("stream {i}: {e}"),
            Err(_) => panic!("stream {i} panicked"),
        }
    }
    let log = load.finish();
    assert!(
        log.failures.is_empty(),
        "connect loop failures: {:?}",
        log.failures
    );
    assert!(!log.tags.is_empty());
    // Every upgrade moved every stream: the summary lines say so.
    let took_over: Vec<String> = lb
        .logs()
        .into_iter()
        .filter(|l| l.contains("upgrade: pid "))
        .collect();
    assert_eq!(took_over.len(), upgrades(), "{took_over:?}");
    for line in &took_over {
        let conns: usize = line
            .split(" listener(s), ")
            .nth(1)
            .and_then(|r| r.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        assert!(conns >= 3 * streams_per_mode(), "{line}");
        assert!(
            line.contains(&format!(" {UDP_SESSIONS} UDP session(s)")),
            "{line}"
        );
        eprintln!("{line}");
    }
    eprintln!("{bytes} bytes echoed through {} upgrades", upgrades());
    // The sessions moved with their upstream sockets: each backend still saw exactly one
    // source per session, not a new one per process.
    let sources = udp[0].distinct_sources().len() + udp[1].distinct_sources().len();
    assert_eq!(
        sources, UDP_SESSIONS,
        "backends saw {sources} sources for {UDP_SESSIONS} sessions"
    );
    drop(successors);
}

#[test]
fn an_upgrade_whose_new_process_cannot_start_changes_nothing() {
    skip_unless!(
        Requirement::IoUring,
        io_uring_available(),
        "io_uring is not available here"
    );
    let echo = EchoBackend::start();
    let tagged = EchoBackend::tagged("t");
    let good = yaml(echo.addr(), tagged.addr());
    let mut lb = Ringlb::start(bin(), &good);
    assert!(lb.wait_for_log("ready:", WAIT), "ringlb did not start");
    let s = stream(lb.listener_addr("copy"), 1, 1000);
    // The file on disk no longer validates: the new process exits 2 before it is ready.
    lb.rewrite_config("listeners: [\n");
    let mark = lb.log_mark();
    lb.signal(Signal::Usr2);
    assert!(
        lb.wait_for_log_after(mark, "upgrade failed:", WAIT),
        "no `upgrade failed` line"
    );
    assert!(alive(lb.pid()), "the old process must keep serving");
    let load = Load::start(lb.listener_addr("loop"), 1, Duration::from_millis(2));
    assert!(
        wait_until(WAIT, || load.total() >= 20),
        "no new connection served"
    );
    s.stop.store(true, Ordering::Relaxed);
    let bytes = s
        .thread
        .join()
        .unwrap_or_else(|_| panic!("stream panicked"));
    assert!(bytes.is_ok(), "{bytes:?}");
    let log = load.finish();
    assert!(log.failures.is_empty(), "{:?}", log.failures);
    // The old process still answers SIGTERM as before.
    lb.rewrite_config(&good);
    lb.signal(Signal::Term);
    let status = lb
        .wait_exit(WAIT)
        .unwrap_or_else(|| panic!("no exit after SIGTERM"));
    assert!(status.success(), "{status}");
}

/// Open file descriptors of `pid` (0 when it is gone).
fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// SIGKILL of the new process while connections move: every connection either keeps
/// working, byte-exact (the old process took it back), or is closed (the new process had
/// taken it, and died with it) — never both, never a hang or wrong bytes. The old process
/// accepts again, and a second upgrade then moves what it kept.
#[test]
fn new_process_killed_mid_handover_loses_no_connection_twice() {
    skip_unless!(
        Requirement::IoUring,
        io_uring_available(),
        "io_uring is not available here"
    );
    const IDLE: usize = 150;
    let echo = EchoBackend::start();
    let tagged = EchoBackend::tagged("t");
    let lb = Ringlb::start(bin(), &yaml(echo.addr(), tagged.addr()));
    let mut successors = Successors(Vec::new());
    assert!(lb.wait_for_log("ready:", WAIT), "ringlb did not start");
    let addr = lb.listener_addr("copy");
    // Many idle links make the move long enough to land the kill in its middle.
    let mut idle: Vec<TcpStream> = (0..IDLE)
        .map(|_| {
            let c = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect: {e}"));
            c.set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap_or_else(|e| panic!("{e}"));
            c
        })
        .collect();
    for c in idle.iter_mut() {
        c.write_all(b"hi").unwrap_or_else(|e| panic!("{e}"));
        let mut b = [0u8; 2];
        c.read_exact(&mut b).unwrap_or_else(|e| panic!("{e}"));
    }
    let old = lb.pid();
    let mark = lb.log_mark();
    lb.signal(Signal::Usr2);
    let new = {
        let started = Instant::now();
        loop {
            let pid = lb.logs()[mark..].iter().find_map(|l| {
                l.split("upgrade: started ")
                    .nth(1)?
                    .split("(pid ")
                    .nth(1)?
                    .split(')')
                    .next()?
                    .parse::<u32>()
                    .ok()
            });
            if let Some(pid) = pid {
                break pid;
            }
            assert!(started.elapsed() < WAIT, "no new process started");
            thread::sleep(Duration::from_millis(1));
        }
    };
    successors.0.push(new);
    // Kill once the new process holds some of the connections' sockets (its fd count
    // passes what the listeners alone take), or give up waiting and kill anyway.
    // After the new process's `ready:` line it holds its listeners; the connections come next.
    let started = Instant::now();
    while !lb.logs()[mark..].iter().any(|l| l.contains("] ready: ")) && started.elapsed() < WAIT {
        thread::sleep(Duration::from_micros(200));
    }
    let first = fd_count(new);
    while fd_count(new) < first + 20 && started.elapsed() < Duration::from_secs(10) {
        thread::sleep(Duration::from_micros(200));
    }
    signal(new, libc::SIGKILL);
    assert!(
        lb.wait_for_log_after(mark, "upgrade failed:", WAIT)
            || lb.wait_for_log_after(mark, "took over", Duration::ZERO),
        "the old process did not notice the new one's death"
    );
    let completed = lb.logs()[mark..]
        .iter()
        .any(|l| l.contains("upgrade: handed"));
    if completed {
        // The kill came after the whole move (rare: moving 150 links takes tens of ms and
        // the kill is aimed at its start): the new process owned every link, and they all
        // closed with it.
        eprintln!("the kill landed after the handover finished");
        for c in idle.iter_mut() {
            let mut b = [0u8; 2];
            assert!(c
                .write_all(b"ok")
                .and_then(|_| c.read_exact(&mut b))
                .is_err());
        }
        return;
    }
    assert!(alive(old), "the old process must keep serving");
    // Every link: working or closed, never both, never garbage.
    let (mut working, mut closed) = (0, 0);
    let mut kept = [false; IDLE];
    for (i, c) in idle.iter_mut().enumerate() {
        let mut b = [0u8; 2];
        match c.write_all(b"ok").and_then(|_| c.read_exact(&mut b)) {
            Ok(()) => {
                assert_eq!(&b, b"ok", "a surviving link returned other bytes");
                kept[i] = true;
                working += 1;
            }
            Err(e) => {
                assert!(
                    !matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ),
                    "a link hangs instead of working or closing: {e}"
                );
                closed += 1;
            }
        }
    }
    eprintln!("after SIGKILL of the new process: {working} link(s) kept by the old process, {closed} closed with the new one");
    // Exactly the links the new process had acknowledged are gone: the others (sent back,
    // or frozen too late to be sent) are still the old process's.
    let acked: usize = lb.logs()[mark..]
        .iter()
        .find_map(|l| {
            let rest = l.split("upgrade called off: ").nth(1)?;
            rest.split(", ").nth(1)?.split(' ').next()?.parse().ok()
        })
        .unwrap_or(0);
    assert_eq!(
        closed, acked,
        "links closed vs. taken by the new process before it died"
    );
    // New connections are served again.
    let load = Load::start(lb.listener_addr("loop"), 1, Duration::from_millis(1));
    assert!(
        wait_until(WAIT, || load.total() >= 20),
        "the old process does not accept again"
    );
    let log = load.finish();
    assert!(log.failures.is_empty(), "{:?}", log.failures);
    // And a second upgrade moves what the old process kept.
    let mark = lb.log_mark();
    lb.signal(Signal::Usr2);
    assert!(
        lb.wait_for_log_after(mark, "took over", WAIT),
        "second upgrade did not finish"
    );
    if let Some(pid) = successor(&lb, 0) {
        successors.0.push(pid);
    }
    for (i, c) in idle.iter_mut().enumerate().filter(|(i, _)| kept[*i]) {
        let mut b = [0u8; 2];
        c.write_all(b"zz")
            .and_then(|_| c.read_exact(&mut b))
            .unwrap_or_else(|e| {
                panic!("link {i}, kept by the old process, lost in the second upgrade: {e}")
            });
        assert_eq!(&b, b"zz");
    }
    drop(idle);
    drop(successors);
}

/// `ringlb upgrade --config F [--binary PATH]`, as the runbook uses it.
fn upgrade_cmd(config: &Path, binary: Option<&Path>) -> (i32, String) {
    let mut cmd = std::process::Command::new(bin());
    cmd.arg("upgrade").arg("--config").arg(config);
    if let Some(b) = binary {
        cmd.arg("--binary").arg(b);
    }
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("run ringlb upgrade: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (exit_code(out.status), text)
}

/// A script standing in for a broken new binary.
fn script(dir: &Path, name: &str, body: &str) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap_or_else(|e| panic!("{e}"));
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
        .unwrap_or_else(|e| panic!("{e}"));
    path
}

/// An echo and a tagged backend, and a ringlb in front of them (`yaml`) that is ready.
fn started() -> (EchoBackend, EchoBackend, Ringlb) {
    let echo = EchoBackend::start();
    let tagged = EchoBackend::tagged("t");
    let lb = Ringlb::start(bin(), &yaml(echo.addr(), tagged.addr()));
    assert!(lb.wait_for_log("ready:", WAIT), "ringlb did not start");
    (echo, tagged, lb)
}

/// `ringlb upgrade` exits 1 with the reason when the new binary exits at once or never
/// answers (the old process keeps serving, a stream through it undisturbed), and 0 once a
/// good binary serves (the control socket then answers from the new process).
#[test]
fn ringlb_upgrade_reports_failure_and_success() {
    skip_unless!(
        Requirement::IoUring,
        io_uring_available(),
        "io_uring is not available here"
    );
    let (_echo, tagged, lb) = started();
    let mut successors = Successors(Vec::new());
    let dir = std::env::temp_dir().join(format!("ringlb-upgrade-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
    let s = stream(lb.listener_addr("copy"), 7, 500);

    let exits = script(&dir, "exits", "exit 3");
    let (code, out) = upgrade_cmd(lb.config_path(), Some(&exits));
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("exit status: 3"), "{out}");

    // Never says hello: killed after the hello timeout.
    let hangs = script(&dir, "hangs", "exec sleep 600");
    let started = Instant::now();
    let (code, out) = upgrade_cmd(lb.config_path(), Some(&hangs));
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("did not answer"), "{out}");
    eprintln!("hanging binary refused after {:?}", started.elapsed());
    assert!(alive(lb.pid()), "the old process must keep serving");

    // The operator's admin state travels with the upgrade.
    let drain = std::process::Command::new(bin())
        .args(["ctl", "--config"])
        .arg(lb.config_path())
        .args(["drain", "loop"])
        .arg(tagged.addr().to_string())
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(drain.status.success(), "{drain:?}");

    let (code, out) = upgrade_cmd(lb.config_path(), None);
    assert_eq!(code, 0, "{out}");
    // The new process's `took over` line reaches our log reader a little after the
    // command returns (its log writer thread, then the pipe).
    wait_until(WAIT, || successor(&lb, 0).is_some());
    let new = successor(&lb, 0).unwrap_or_else(|| panic!("no `took over` line: {out}"));
    successors.0.push(new);
    assert!(out.contains(&new.to_string()), "{out}");
    assert!(
        wait_until(WAIT, || !alive(lb.pid())),
        "the old process did not exit"
    );
    // The control socket now answers from the new process.
    let status = std::process::Command::new(bin())
        .args(["ctl", "--config"])
        .arg(lb.config_path())
        .arg("status")
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(text.contains(&format!("pid {new}")), "{text}");
    let drained = text
        .lines()
        .any(|l| l.contains(&tagged.addr().to_string()) && l.contains("drain"));
    assert!(drained, "the drain did not survive the upgrade:\n{text}");

    s.stop.store(true, Ordering::Relaxed);
    let result = s
        .thread
        .join()
        .unwrap_or_else(|_| panic!("stream panicked"));
    assert!(result.is_ok(), "{result:?}");
    let _ = std::fs::remove_dir_all(&dir);
    drop(successors);
}

/// The move has `shutdown_timeout` to finish; past it the new process serves and the old
/// one falls back to the normal drain of what it still holds. With `shutdown_timeout: 0s`
/// nothing can move in time: the links stay with the old process and are cut by its 0 s
/// drain (a client sees a reset, as with a SIGTERM under that setting), while new clients
/// reach the new process.
#[test]
fn links_not_moved_within_shutdown_timeout_drain_in_the_old_process() {
    skip_unless!(
        Requirement::IoUring,
        io_uring_available(),
        "io_uring is not available here"
    );
    let echo = EchoBackend::start();
    let tagged = EchoBackend::tagged("t");
    let config =
        yaml(echo.addr(), tagged.addr()).replace("shutdown_timeout: 60s", "shutdown_timeout: 0s");
    let lb = Ringlb::start(bin(), &config);
    let mut successors = Successors(Vec::new());
    assert!(lb.wait_for_log("ready:", WAIT), "ringlb did not start");
    let addr = lb.listener_addr("copy");
    let mut links: Vec<TcpStream> = (0..5)
        .map(|_| {
            let mut c = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect: {e}"));
            c.set_read_timeout(Some(WAIT))
                .unwrap_or_else(|e| panic!("{e}"));
            c.write_all(b"hi").unwrap_or_else(|e| panic!("{e}"));
            let mut b = [0u8; 2];
            c.read_exact(&mut b).unwrap_or_else(|e| panic!("{e}"));
            c
        })
        .collect();
    let old = lb.pid();
    lb.signal(Signal::Usr2);
    assert!(
        lb.wait_for_log("drains here while the new process serves", WAIT),
        "no fallback line"
    );
    assert!(
        wait_until(WAIT, || successor(&lb, 0).is_some()),
        "no new process took over"
    );
    successors.0.push(successor(&lb, 0).unwrap_or(0));
    assert!(
        wait_until(WAIT, || !alive(old)),
        "the old process did not exit"
    );
    // Cut by the old process's drain: an error, never a hang or other bytes.
    for (i, c) in links.iter_mut().enumerate() {
        let mut b = [0u8; 2];
        let r = c.write_all(b"ok").and_then(|_| c.read_exact(&mut b));
        match r {
            Ok(()) => panic!("link {i} still answered: {b:?}"),
            Err(e) => assert!(
                !matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ),
                "link {i} hangs: {e}"
            ),
        }
    }
    // New clients reach the new process.
    let mut c = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect: {e}"));
    c.set_read_timeout(Some(WAIT))
        .unwrap_or_else(|e| panic!("{e}"));
    c.write_all(b"new").unwrap_or_else(|e| panic!("{e}"));
    let mut b = [0u8; 3];
    c.read_exact(&mut b).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(&b, b"new");
    drop(c);
    drop(successors);
}

/// While a live upgrade runs, `/ready` answers 200 "ready" or 503 "handing over", never
/// "starting": the new process shares the admin socket from its first moment, and a
/// routing daemon following `/ready` must not withdraw the host for an upgrade
/// (docs/scale-out.md).
#[test]
fn ready_never_says_starting_during_a_live_upgrade() {
    skip_unless!(
        Requirement::IoUring,
        io_uring_available(),
        "io_uring is not available here"
    );
    let (_echo, _tagged, lb) = started();
    let mut successors = Successors(Vec::new());
    let admin = lb.admin_addr();
    let stop = Arc::new(AtomicBool::new(false));
    let poller = {
        let stop = Arc::clone(&stop);
        thread::spawn(move || {
            let mut answers = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                answers.push(http_get(admin, "/ready").map_err(|e| e.to_string()));
                // Paces the poll; nothing waits on it.
                thread::sleep(Duration::from_millis(2));
            }
            answers
        })
    };
    let (code, out) = upgrade_cmd(lb.config_path(), None);
    assert_eq!(code, 0, "{out}");
    // The new process's `took over` line reaches our log reader a little after the
    // command returns (its log writer thread, then the pipe).
    wait_until(WAIT, || successor(&lb, 0).is_some());
    let new = successor(&lb, 0).unwrap_or_else(|| panic!("no `took over` line: {out}"));
    successors.0.push(new);
    assert!(
        wait_until(WAIT, || !alive(lb.pid())),
        "the old process did not exit"
    );
    stop.store(true, Ordering::Relaxed);
    let answers = poller
        .join()
        .unwrap_or_else(|_| panic!("the /ready poller panicked"));
    let handing = answers
        .iter()
        .filter(|a| matches!(a, Ok((503, b)) if b.contains("handing over")))
        .count();
    // A request can fail (reset) when the old process exits with it accepted but not
    // answered; an agent retries such a request (contrib/bgp/ringlb-announce). Every
    // answer must say the host serves.
    let failed = answers.iter().filter(|a| a.is_err()).count();
    let wrong: Vec<_> = answers
        .iter()
        .filter(|a| match a {
            Ok((200, body)) => body.trim() != "ready",
            Ok((503, body)) => !body.contains("handing over"),
            Ok(_) => true,
            Err(_) => false,
        })
        .collect();
    eprintln!(
        "/ready during the upgrade: {} requests, {handing} handing over, {failed} failed",
        answers.len()
    );
    assert!(wrong.is_empty(), "{wrong:?}");
    drop(successors);
}
