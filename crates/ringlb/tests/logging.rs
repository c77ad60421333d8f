//! Logs through a running `ringlb`: `log_format: json` (one object per line, the access
//! log's and health transitions' fields as members), `--log-format` pinning the format
//! across reloads, journald priorities when stderr is the stream `JOURNAL_STREAM`
//! names, and the access log's queue: with stderr's reader stopped, connections keep
//! being served, lines are dropped and counted, and logging resumes with the reader.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::net::{Shutdown, SocketAddr};
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use serde_json::Value;

use ringlb_testkit::*;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_ringlb"))
}

const WAIT: Duration = Duration::from_secs(20);

/// A listener "web" in front of `backends`, health-checked every 250 ms and marked down
/// at the first failure.
fn checked_yaml(top: &str, backends: &[SocketAddr]) -> String {
    one_listener_yaml(
        top,
        "web",
        "127.0.0.1:0",
        "health_check: {interval: 250ms, timeout: 200ms, fall: 1}",
        backends,
    )
}

fn json(line: &str) -> Value {
    serde_json::from_str(line).unwrap_or_else(|e| panic!("not one JSON object ({e}): {line:?}"))
}

/// `2026-11-24T15:04:18.639806Z`: RFC 3339, UTC, microseconds.
fn assert_ts(ts: &str) {
    let b = ts.as_bytes();
    assert_eq!(b.len(), 27, "{ts:?}");
    assert!(
        b[4] == b'-' && b[10] == b'T' && b[19] == b'.' && b[26] == b'Z',
        "{ts:?}"
    );
    assert!(log_time(&format!("[{ts} INFO  x] y")).is_some(), "{ts:?}");
}

/// Every line a JSON object with the four fixed members.
fn assert_json_lines(lines: &[String]) {
    assert!(!lines.is_empty());
    for l in lines {
        let v = json(l);
        assert_ts(v["ts"].as_str().unwrap_or_else(|| panic!("ts: {l}")));
        assert!(
            ["ERROR", "WARN", "INFO", "DEBUG", "TRACE"].contains(&v["level"].as_str().unwrap()),
            "{l}"
        );
        assert!(v["target"].is_string() && v["msg"].is_string(), "{l}");
    }
}

/// The address the listener "web" logged, from a JSON log.
fn json_listener_addr(lb: &Ringlb) -> SocketAddr {
    assert!(
        lb.wait_for_log("listening on", WAIT),
        "{}",
        lb.logs().join("\n")
    );
    lb.logs()
        .iter()
        .filter(|l| l.starts_with('{'))
        .find_map(|l| parse_listener_line(json(l)["msg"].as_str()?))
        .map(|(_, addr)| addr)
        .unwrap_or_else(|| panic!("no listening line: {}", lb.logs().join("\n")))
}

/// Connects, echoes, closes; returns the client's address.
fn one_connection(to: SocketAddr) -> SocketAddr {
    let mut c = connect(to);
    let me = c.local_addr().unwrap();
    assert_echo(&mut c, b"hello");
    c.shutdown(Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    std::io::Read::read_to_end(&mut c, &mut rest).unwrap();
    me
}

#[test]
fn json_lines_carry_the_access_and_health_fields() {
    let backend = EchoBackend::start();
    let dead = refused_addr();
    let yaml = checked_yaml("log_format: json\n", &[backend.addr(), dead]);
    let lb = Ringlb::builder(bin(), &yaml).spawn();
    let addr = json_listener_addr(&lb);
    let client = one_connection(addr);

    let needle = format!("\"client\":\"{client}\"");
    assert!(lb.wait_for_log(&needle, WAIT), "{}", lb.logs().join("\n"));
    let down_needle = format!("\"backend\":\"{dead}\"");
    assert!(
        lb.wait_for_log(&down_needle, WAIT),
        "{}",
        lb.logs().join("\n")
    );
    let logs = lb.logs();
    assert_json_lines(&logs);

    let access = logs
        .iter()
        .map(|l| json(l))
        .find(|v| v["target"] == "ringlb::access" && v["client"] == client.to_string())
        .unwrap();
    assert_eq!(access["level"], "INFO");
    assert_eq!(access["listener"], "web");
    assert_eq!(access["backend"], backend.addr().to_string());
    assert_eq!(access["end"], "client_close");
    assert_eq!(access["bytes_in"], 5);
    assert_eq!(access["bytes_out"], 5);
    assert!(access["duration_ms"].is_u64(), "{access}");
    // The message is the text format's, so a grep works on either.
    assert_eq!(
        access["msg"],
        format!(
            "listener=web client={client} backend={} duration_ms={} bytes_in=5 bytes_out=5 end=client_close",
            backend.addr(),
            access["duration_ms"]
        )
    );

    let down = logs
        .iter()
        .map(|l| json(l))
        .find(|v| v["backend"] == dead.to_string())
        .unwrap();
    assert_eq!(down["level"], "WARN", "{down}");
    assert_eq!(down["target"], "ringlb::control");
    assert_eq!(down["listener"], "web");
    assert_eq!(down["outcome"], "refused");
    assert!(
        down["consecutive"].is_u64() && down["passive"].is_boolean(),
        "{down}"
    );
    assert!(
        down["msg"].as_str().unwrap().starts_with("backend down: "),
        "{down}"
    );
}

#[test]
fn a_reload_switches_the_format_unless_the_command_line_pinned_it() {
    let backend = EchoBackend::start();
    let text = one_listener_yaml("", "web", "127.0.0.1:0", "", &[backend.addr()]);
    let as_json = one_listener_yaml(
        "log_format: json\n",
        "web",
        "127.0.0.1:0",
        "",
        &[backend.addr()],
    );

    let mut lb = Ringlb::start(bin(), &text);
    let mark = lb.reload(&as_json);
    assert!(
        lb.wait_for_log_after(mark, "log_format=json", WAIT),
        "{}",
        lb.logs().join("\n")
    );
    let summary = lb.logs()[mark..]
        .iter()
        .find(|l| l.contains("reload applied"))
        .cloned()
        .unwrap();
    // The summary is the first line in the new format.
    assert!(json(&summary)["msg"]
        .as_str()
        .unwrap()
        .ends_with("log_format=json"));
    let client = one_connection(lb.listener_addr("web"));
    assert!(lb.wait_for_log(&format!("\"client\":\"{client}\""), WAIT));

    let mut pinned = Ringlb::builder(bin(), &text)
        .arg("--log-format")
        .arg("text")
        .start();
    let mark = pinned.reload(&as_json);
    assert!(pinned.wait_for_log_after(mark, "reload applied", WAIT));
    let after = pinned.logs()[mark..].to_vec();
    assert!(
        after.iter().all(|l| l.starts_with('[')) && !after.iter().any(|l| l.contains("log_format")),
        "{after:#?}"
    );
}

// ------------------------------------------------------------ stderr on a pipe we own

/// What the reader thread has read, and whether it is held.
#[derive(Default)]
struct Lines {
    lines: Mutex<Vec<String>>,
    grew: Condvar,
    paused: Mutex<bool>,
    resumed: Condvar,
}

impl Lines {
    fn snapshot(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// Waits until a line satisfies `f`, and returns it.
    fn wait_for(&self, timeout: Duration, f: impl Fn(&str) -> bool) -> Option<String> {
        let deadline = Instant::now() + timeout;
        let mut lines = self.lines.lock().unwrap();
        loop {
            if let Some(l) = lines.iter().find(|l| f(l)) {
                return Some(l.clone());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            lines = self.grew.wait_timeout(lines, left).unwrap().0;
        }
    }

    fn set_paused(&self, paused: bool) {
        *self.paused.lock().unwrap() = paused;
        self.resumed.notify_all();
    }
}

/// `ringlb run` whose stderr is a pipe this test creates (so it knows the pipe's
/// identity before the start, and can stop reading it). Killed by PID on drop.
struct PipedRinglb {
    child: Child,
    config: PathBuf,
    lines: Arc<Lines>,
    reader: Option<JoinHandle<()>>,
}

static SEQ: AtomicU64 = AtomicU64::new(0);

impl PipedRinglb {
    /// `pipe_size`: F_SETPIPE_SZ, so a stopped reader fills it quickly. `journal`: set
    /// JOURNAL_STREAM to the pipe's own identity, as systemd does for its stream.
    fn spawn(yaml: &str, pipe_size: Option<i32>, journal: bool) -> PipedRinglb {
        let config = std::env::temp_dir().join(format!(
            "ringlb-logging-test-{}-{}.yaml",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&config, yaml).unwrap();
        let mut fds = [0; 2];
        // SAFETY: pipe2 writes two new descriptors into `fds`, which we then own.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: both were just created and are owned by nothing else.
        let (read_end, write_end) =
            unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        if let Some(size) = pipe_size {
            // SAFETY: F_SETPIPE_SZ on a pipe we own.
            let r = unsafe { libc::fcntl(fds[1], libc::F_SETPIPE_SZ, size) };
            assert!(
                r >= size,
                "F_SETPIPE_SZ: {}",
                std::io::Error::last_os_error()
            );
        }
        let mut cmd = Command::new(bin());
        cmd.arg("run")
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "info")
            .env_remove("JOURNAL_STREAM")
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        if journal {
            let (dev, ino) = ringlb_logging::journald::file_id(&write_end).unwrap();
            cmd.env("JOURNAL_STREAM", format!("{dev}:{ino}"));
        }
        cmd.stderr(Stdio::from(write_end));
        let child = cmd.spawn().unwrap();
        // `cmd` still holds the write end: drop it, so the pipe ends with the child.
        drop(cmd);
        let lines = Arc::new(Lines::default());
        let shared = lines.clone();
        let reader = thread::spawn(move || {
            let mut r = BufReader::new(File::from(read_end));
            let mut raw = Vec::new();
            loop {
                {
                    let mut paused = shared.paused.lock().unwrap();
                    while *paused {
                        paused = shared.resumed.wait(paused).unwrap();
                    }
                }
                raw.clear();
                match r.read_until(b'\n', &mut raw) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {
                        let line = String::from_utf8_lossy(&raw).trim_end().to_string();
                        shared.lines.lock().unwrap().push(line);
                        shared.grew.notify_all();
                    }
                }
            }
        });
        PipedRinglb {
            child,
            config,
            lines,
            reader: Some(reader),
        }
    }

    fn wait_for(&self, f: impl Fn(&str) -> bool) -> String {
        self.lines.wait_for(WAIT, f).unwrap_or_else(|| {
            panic!(
                "ringlb (pid {}): line not found; output:\n{}",
                self.child.id(),
                self.lines.snapshot().join("\n")
            )
        })
    }

    fn listener_addr(&self) -> SocketAddr {
        let line = self.wait_for(|l| parse_listener_line(l).is_some());
        parse_listener_line(&line).unwrap().1
    }

    fn admin_addr(&self) -> SocketAddr {
        parse_admin_line(&self.wait_for(|l| parse_admin_line(l).is_some())).unwrap()
    }
}

impl Drop for PipedRinglb {
    fn drop(&mut self) {
        // Child::kill is kill(2) on its PID; it is not reaped yet, so the PID is ours.
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.lines.set_paused(false);
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        let _ = std::fs::remove_file(&self.config);
    }
}

fn metric(admin: SocketAddr, series: &str) -> f64 {
    let (status, body) = http_get(admin, "/metrics").unwrap();
    assert_eq!(status, 200, "{body}");
    metric_value(&body, series).unwrap_or_else(|| panic!("no {series} in:\n{body}"))
}

/// The `<N>` of a line, and the level it names.
fn priority_and_level(line: &str) -> (&str, &str) {
    let rest = line
        .strip_prefix('<')
        .unwrap_or_else(|| panic!("no prefix: {line:?}"));
    let (n, rest) = rest.split_once('>').unwrap();
    let level = rest.split_whitespace().nth(1).unwrap();
    (n, level)
}

#[test]
fn journald_stream_lines_carry_their_priority() {
    let backend = EchoBackend::start();
    let dead = refused_addr();
    let lb = PipedRinglb::spawn(
        &checked_yaml("admin: 127.0.0.1:0\n", &[backend.addr(), dead]),
        None,
        true,
    );
    let addr = lb.listener_addr();
    let client = one_connection(addr);
    let access = lb.wait_for(|l| l.contains(&format!("client={client} ")));
    let down = lb.wait_for(|l| l.contains("backend down: "));
    assert!(
        access.starts_with("<6>[") && access.contains(" INFO  ringlb::access] "),
        "{access}"
    );
    assert!(
        down.starts_with("<4>[") && down.contains(" WARN  ringlb::control] "),
        "{down}"
    );
    let want: HashMap<&str, &str> = [("ERROR", "3"), ("WARN", "4"), ("INFO", "6"), ("DEBUG", "7")]
        .into_iter()
        .collect();
    for line in lb.lines.snapshot() {
        let (n, level) = priority_and_level(&line);
        assert_eq!(Some(&n), want.get(level), "{line}");
    }
}

#[test]
fn journal_stream_of_another_file_changes_nothing() {
    let backend = EchoBackend::start();
    let lb = Ringlb::builder(
        bin(),
        &one_listener_yaml("", "web", "127.0.0.1:0", "", &[backend.addr()]),
    )
    .env("JOURNAL_STREAM", "1:1")
    .start();
    one_connection(lb.listener_addr("web"));
    assert!(lb.wait_for_log("ringlb::access] ", WAIT));
    assert!(
        lb.logs().iter().all(|l| l.starts_with('[')),
        "{:#?}",
        lb.logs()
    );
}

/// Connects, echoes one byte and resets, from `threads` threads, until `done` says
/// stop; returns (served, failed). A reset leaves no TIME_WAIT behind.
fn hammer(addr: SocketAddr, threads: usize, done: &(dyn Fn(u64) -> bool + Sync)) -> (u64, u64) {
    let served = AtomicU64::new(0);
    let failed = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    let ok = connect_with_timeout(addr, WAIT)
                        .map(|mut c| {
                            assert_echo(&mut c, b"x");
                            reset_close(c);
                        })
                        .is_ok();
                    if ok {
                        let n = served.fetch_add(1, Ordering::Relaxed) + 1;
                        if done(n) {
                            stop.store(true, Ordering::Relaxed);
                        }
                    } else {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
    });
    (served.into_inner(), failed.into_inner())
}

#[test]
fn a_stalled_log_reader_never_stalls_connections() {
    let backend = EchoBackend::start();
    let yaml = one_listener_yaml(
        "admin: 127.0.0.1:0\n",
        "web",
        "127.0.0.1:0",
        "",
        &[backend.addr()],
    );
    let lb = PipedRinglb::spawn(&yaml, Some(4096), false);
    let (addr, admin) = (lb.listener_addr(), lb.admin_addr());
    lb.wait_for(|l| l.contains("] ready"));
    let dropped = "ringlb_access_log_dropped_total";

    // Reading: every connection gets its line.
    let started = Instant::now();
    let (baseline, failed) = hammer(addr, 4, &|n| n >= 2000);
    let baseline_rate = baseline as f64 / started.elapsed().as_secs_f64();
    assert_eq!(failed, 0);
    assert_eq!(metric(admin, dropped), 0.0);

    // Not reading: the pipe (4 KiB) and the queue fill, then lines are dropped while
    // connections go on being served.
    lb.lines.set_paused(true);
    let started = Instant::now();
    let check_every = 500;
    let (served, failed) = hammer(addr, 4, &|n| {
        n.is_multiple_of(check_every) && metric(admin, dropped) >= 1000.0
    });
    let stalled_rate = served as f64 / started.elapsed().as_secs_f64();
    let lost = metric(admin, dropped);
    eprintln!(
        "log reader stopped: {served} connections served ({stalled_rate:.0}/s; \
         {baseline_rate:.0}/s while it read), {lost} access lines dropped"
    );
    assert_eq!(failed, 0, "no connection may fail while the log is stuck");
    assert!(lost >= 1000.0);
    assert!(
        served as f64 > ringlb_logging::ACCESS_CAPACITY as f64,
        "more connections than the queue holds were served: {served}"
    );
    assert_eq!(
        metric(admin, "ringlb_log_dropped_total"),
        0.0,
        "only access lines were dropped"
    );

    // Reading again: the backlog drains, the drops are reported, new lines come.
    lb.lines.set_paused(false);
    let warning = lb.wait_for(|l| l.contains("ringlb::log] log: dropped "));
    assert!(warning.contains(" WARN  "), "{warning}");
    // The queue may still be full of the backlog for a while (on a loaded machine the
    // reader above is slow): a line that finds it full is dropped, as it should be. New
    // connections until one's line comes through.
    let deadline = Instant::now() + WAIT;
    loop {
        let client = one_connection(addr);
        let line = format!("client={client} ");
        if lb
            .lines
            .wait_for(Duration::from_secs(2), |l| l.contains(&line))
            .is_some()
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no access line came through after the reader resumed"
        );
    }
    let after = metric(admin, dropped);
    assert!(after >= lost);
}
