//! A running `ringlb` under test: spawn with a YAML config, capture its output, learn its
//! addresses from its log lines, signal it, and kill it on Drop.

use std::ffi::OsString;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::log::{parse_health_flip, HealthFlip};
use crate::server::lock;

/// How long [`Ringlb::start`] waits for every listener (and the admin endpoint) to log
/// that it is listening.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// Signals a test may send to ringlb.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    Hup,
    Term,
    Int,
    Kill,
    /// Live upgrade.
    Usr2,
}

impl Signal {
    fn raw(self) -> libc::c_int {
        match self {
            Signal::Hup => libc::SIGHUP,
            Signal::Term => libc::SIGTERM,
            Signal::Int => libc::SIGINT,
            Signal::Kill => libc::SIGKILL,
            Signal::Usr2 => libc::SIGUSR2,
        }
    }
}

/// The exit code of `status`, or 128 + signal number if a signal killed it (the shell's
/// convention), so a crash never looks like a success.
pub fn exit_code(status: ExitStatus) -> i32 {
    match (status.code(), status.signal()) {
        (Some(c), _) => c,
        (None, Some(s)) => 128 + s,
        (None, None) => -1,
    }
}

/// `BIN ctl --config CONFIG ARGS...` (a running instance's `ringlb ctl`): (exit code,
/// stdout, stderr). Panics if it has not exited within 60 s.
pub fn ctl(bin: &Path, config: &Path, args: &[&str]) -> (i32, String, String) {
    let mut cmd = Command::new(bin);
    cmd.arg("ctl").arg("--config").arg(config).args(args);
    let (status, out, err) = run_to_completion(cmd, Duration::from_secs(60));
    (exit_code(status), out, err)
}

// ---------------------------------------------------------------- pure parsing

/// Parses `listener "NAME" listening on ADDR (...` anywhere in a log line.
pub fn parse_listener_line(line: &str) -> Option<(String, SocketAddr)> {
    const PRE: &str = "listener \"";
    const MID: &str = "\" listening on ";
    let start = line.find(PRE)? + PRE.len();
    let rest = &line[start..];
    let mid = rest.find(MID)?;
    let name = &rest[..mid];
    let addr = rest[mid + MID.len()..].split_whitespace().next()?;
    Some((name.to_string(), addr.parse().ok()?))
}

/// Parses `admin listening on http://ADDR` anywhere in a log line.
pub fn parse_admin_line(line: &str) -> Option<SocketAddr> {
    const PRE: &str = "admin listening on http://";
    let start = line.find(PRE)? + PRE.len();
    let addr = line[start..].split_whitespace().next()?;
    addr.trim_end_matches('/').parse().ok()
}

/// What "ready" means for a config: these listener names logged, and the admin line if
/// `admin` is set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadyExpectation {
    pub listeners: Vec<String>,
    pub admin: bool,
}

/// Reads the listener names and whether `admin` is set from a config's YAML.
pub fn ready_expectation(yaml: &str) -> Result<ReadyExpectation, String> {
    let v: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(yaml).map_err(|e| format!("YAML does not parse: {e}"))?;
    let admin = v.get("admin").is_some_and(|a| !a.is_null());
    let mut listeners = Vec::new();
    if let Some(ls) = v.get("listeners") {
        let seq = ls
            .as_sequence()
            .ok_or_else(|| "`listeners` is not a sequence".to_string())?;
        for (i, l) in seq.iter().enumerate() {
            let name = l
                .get("name")
                .and_then(|n| n.as_str())
                .ok_or_else(|| format!("listeners[{i}] has no string `name`"))?;
            listeners.push(name.to_string());
        }
    }
    Ok(ReadyExpectation { listeners, admin })
}

/// Splits an HTTP/1.x response into (status, body).
pub fn parse_http_response(raw: &[u8]) -> Result<(u16, String), String> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = match text.find("\r\n\r\n") {
        Some(i) => (&text[..i], &text[i + 4..]),
        None => match text.find("\n\n") {
            Some(i) => (&text[..i], &text[i + 2..]),
            None => return Err(format!("no end of headers in {:?}", truncate(&text))),
        },
    };
    let status_line = head.lines().next().unwrap_or("");
    let mut parts = status_line.split_whitespace();
    match (parts.next(), parts.next()) {
        (Some(v), Some(code)) if v.starts_with("HTTP/1.") => code
            .parse()
            .map(|c| (c, body.to_string()))
            .map_err(|_| format!("bad status code in {status_line:?}")),
        _ => Err(format!("bad status line {status_line:?}")),
    }
}

/// The value of the sample `series` (name and labels, exactly) in a Prometheus text
/// exposition; `None` if absent.
pub fn metric_value(exposition: &str, series: &str) -> Option<f64> {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
}

fn truncate(s: &str) -> String {
    s.chars().take(200).collect()
}

/// GET `path` over HTTP/1.0 (the server closes after the response), 5 s timeouts.
pub fn http_get(addr: SocketAddr, path: &str) -> io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.set_write_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    parse_http_response(&raw).map_err(io::Error::other)
}

// ---------------------------------------------------------------- temp config

static SEQ: AtomicUsize = AtomicUsize::new(0);

/// A config file in the temp dir, removed on Drop.
struct TempConfig {
    path: PathBuf,
}

impl TempConfig {
    fn new(yaml: &str) -> TempConfig {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!(
            "ringlb-testkit-{}-{}-{nanos}.yaml",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::SeqCst)
        ));
        let t = TempConfig { path };
        t.write(yaml);
        t
    }

    /// Writes atomically (temp file + rename) so a reload never reads a partial file.
    fn write(&self, yaml: &str) {
        let mut tmp = self.path.clone().into_os_string();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        std::fs::write(&tmp, yaml)
            .unwrap_or_else(|e| panic!("testkit: write {}: {e}", tmp.display()));
        std::fs::rename(&tmp, &self.path)
            .unwrap_or_else(|e| panic!("testkit: rename to {}: {e}", self.path.display()));
    }
}

impl Drop for TempConfig {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

// ---------------------------------------------------------------- output capture

#[derive(Default)]
struct LogBuf {
    lines: Mutex<Vec<String>>,
    grew: Condvar,
}

impl LogBuf {
    fn push(&self, line: String) {
        lock(&self.lines).push(line);
        self.grew.notify_all();
    }

    /// Waits until a line at index >= `from` satisfies `f`, or `timeout`.
    fn wait_for(&self, from: usize, timeout: Duration, f: impl Fn(&str) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        let mut lines = lock(&self.lines);
        let mut checked = from;
        loop {
            if lines.iter().skip(checked).any(|l| f(l)) {
                return true;
            }
            checked = checked.max(lines.len());
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            lines = self
                .grew
                .wait_timeout(lines, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

fn spawn_reader<R: Read + Send + 'static>(
    pipe: R,
    label: String,
    echo: bool,
    buf: Arc<LogBuf>,
) -> JoinHandle<()> {
    thread::Builder::new()
        .name(format!("testkit-{label}"))
        .spawn(move || {
            let mut r = BufReader::new(pipe);
            let mut raw = Vec::new();
            loop {
                raw.clear();
                match r.read_until(b'\n', &mut raw) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {
                        let line = String::from_utf8_lossy(&raw)
                            .trim_end_matches(['\n', '\r'])
                            .to_string();
                        if echo {
                            // Captured by the test harness: shown when the test fails.
                            eprintln!("[{label}] {line}");
                        }
                        buf.push(line);
                    }
                }
            }
        })
        .unwrap_or_else(|e| panic!("testkit: spawn output reader: {e}"))
}

/// Spawns `cmd`, retrying on ETXTBSY: another test thread's fork may briefly hold a
/// write fd on an executable a test has just written.
fn spawn_retrying(cmd: &mut Command) -> io::Result<Child> {
    let mut tries = 0;
    loop {
        match cmd.spawn() {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && tries < 50 => {
                tries += 1;
                thread::sleep(Duration::from_millis(20));
            }
            r => return r,
        }
    }
}

/// Runs a command to completion with a timeout; returns (status, stdout, stderr).
/// Panics (after SIGKILL) if it outlives `timeout`.
fn run_to_completion(mut cmd: Command, timeout: Duration) -> (ExitStatus, String, String) {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = spawn_retrying(&mut cmd)
        .unwrap_or_else(|e| panic!("testkit: spawn {:?}: {e}", cmd.get_program()));
    let out = Arc::new(LogBuf::default());
    let err = Arc::new(LogBuf::default());
    let pid = child.id();
    let readers = [
        child
            .stdout
            .take()
            .map(|p| spawn_reader(p, format!("{pid} out"), false, out.clone())),
        child
            .stderr
            .take()
            .map(|p| spawn_reader(p, format!("{pid} err"), false, err.clone())),
    ];
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(10)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("testkit: {:?} still running after {timeout:?}", cmd);
            }
            Err(e) => panic!("testkit: wait for {:?}: {e}", cmd),
        }
    };
    for r in readers.into_iter().flatten() {
        let _ = r.join();
    }
    let join = |b: &LogBuf| {
        let lines = lock(&b.lines);
        let mut s = lines.join("\n");
        if !s.is_empty() {
            s.push('\n');
        }
        s
    };
    let (o, e) = (join(&out), join(&err));
    (status, o, e)
}

// ---------------------------------------------------------------- the handle

/// Options for starting ringlb; see [`Ringlb::builder`].
pub struct RinglbBuilder {
    bin: PathBuf,
    yaml: String,
    envs: Vec<(OsString, OsString)>,
    args: Vec<OsString>,
    ready_timeout: Duration,
    echo: bool,
}

impl RinglbBuilder {
    /// Sets an environment variable (e.g. `RUST_LOG`, default `info`).
    pub fn env(mut self, key: impl Into<OsString>, val: impl Into<OsString>) -> Self {
        self.envs.push((key.into(), val.into()));
        self
    }

    /// Adds an argument after `run --config FILE` (e.g. `--workers`, `2`).
    pub fn arg(mut self, a: impl Into<OsString>) -> Self {
        self.args.push(a.into());
        self
    }

    pub fn ready_timeout(mut self, t: Duration) -> Self {
        self.ready_timeout = t;
        self
    }

    /// Whether to echo ringlb's output to the test's stderr (default true).
    pub fn echo(mut self, on: bool) -> Self {
        self.echo = on;
        self
    }

    /// Spawns without waiting for readiness (for configs that must fail, or when
    /// `RUST_LOG` hides the info-level "listening" lines).
    pub fn spawn(self) -> Ringlb {
        let config = TempConfig::new(&self.yaml);
        let mut cmd = Command::new(&self.bin);
        cmd.arg("run")
            .arg("--config")
            .arg(&config.path)
            .args(&self.args)
            .env("RUST_LOG", "info")
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = spawn_retrying(&mut cmd)
            .unwrap_or_else(|e| panic!("testkit: spawn {}: {e}", self.bin.display()));
        let pid = child.id();
        let logs = Arc::new(LogBuf::default());
        let mut readers = Vec::new();
        let out: Option<ChildStdout> = child.stdout.take();
        let err: Option<ChildStderr> = child.stderr.take();
        if let Some(p) = out {
            readers.push(spawn_reader(
                p,
                format!("ringlb {pid} out"),
                self.echo,
                logs.clone(),
            ));
        }
        if let Some(p) = err {
            readers.push(spawn_reader(
                p,
                format!("ringlb {pid} err"),
                self.echo,
                logs.clone(),
            ));
        }
        Ringlb {
            child,
            pid,
            yaml: self.yaml,
            config,
            logs,
            readers,
            exit: None,
            ready_timeout: self.ready_timeout,
        }
    }

    /// Spawns and waits until ready (see [`Ringlb::wait_ready`]).
    pub fn start(self) -> Ringlb {
        let mut r = self.spawn();
        r.wait_ready();
        r
    }
}

/// A running `ringlb run` process. Drop SIGKILLs it (if still running), reaps it and
/// removes its config file.
pub struct Ringlb {
    child: Child,
    pid: u32,
    yaml: String,
    config: TempConfig,
    logs: Arc<LogBuf>,
    readers: Vec<JoinHandle<()>>,
    exit: Option<ExitStatus>,
    ready_timeout: Duration,
}

impl Ringlb {
    /// `BIN run --config FILE` with `RUST_LOG=info`, waiting until ready.
    pub fn start(bin: &Path, yaml: &str) -> Ringlb {
        Self::builder(bin, yaml).start()
    }

    pub fn builder(bin: &Path, yaml: &str) -> RinglbBuilder {
        RinglbBuilder {
            bin: bin.to_path_buf(),
            yaml: yaml.to_string(),
            envs: Vec::new(),
            args: Vec::new(),
            ready_timeout: READY_TIMEOUT,
            echo: true,
        }
    }

    /// `BIN check --config FILE`: (exit code, stdout followed by stderr).
    pub fn check(bin: &Path, yaml: &str) -> (i32, String) {
        let config = TempConfig::new(yaml);
        Self::check_file(bin, &config.path)
    }

    /// `BIN check --config PATH` on an existing file.
    pub fn check_file(bin: &Path, path: &Path) -> (i32, String) {
        let mut cmd = Command::new(bin);
        cmd.arg("check").arg("--config").arg(path);
        let (status, out, err) = run_to_completion(cmd, READY_TIMEOUT);
        (exit_code(status), out + &err)
    }

    /// `BIN run --config FILE ARGS...` expected to exit by itself (invalid config, no
    /// io_uring): (exit code, stdout followed by stderr). Panics if it is still running
    /// after `timeout`.
    pub fn run_to_exit(bin: &Path, yaml: &str, args: &[&str], timeout: Duration) -> (i32, String) {
        let config = TempConfig::new(yaml);
        let mut cmd = Command::new(bin);
        cmd.arg("run")
            .arg("--config")
            .arg(&config.path)
            .args(args)
            .env("RUST_LOG", "info");
        let (status, out, err) = run_to_completion(cmd, timeout);
        (exit_code(status), out + &err)
    }

    /// Waits until every listener named in the config has logged `listening on`, and
    /// the admin endpoint too if `admin` is set. Panics with the captured output if
    /// ringlb exits first or the ready timeout passes.
    pub fn wait_ready(&mut self) {
        let expect = ready_expectation(&self.yaml).unwrap_or_else(|e| {
            panic!("testkit: Ringlb::wait_ready: {e}; use Ringlb::builder(..).spawn() for configs that must fail")
        });
        let deadline = Instant::now() + self.ready_timeout;
        loop {
            let missing = self.missing(&expect);
            if missing.is_empty() {
                return;
            }
            if let Some(status) = self.try_exit() {
                panic!(
                    "testkit: ringlb (pid {}) exited with {status} before it was ready \
                     (waiting for {missing:?}); output:\n{}",
                    self.pid,
                    self.logs().join("\n")
                );
            }
            if Instant::now() >= deadline {
                panic!(
                    "testkit: ringlb (pid {}) not ready after {:?}: no log line for {missing:?}; \
                     output:\n{}",
                    self.pid,
                    self.ready_timeout,
                    self.logs().join("\n")
                );
            }
            let n = self.log_mark();
            self.logs.wait_for(n, Duration::from_millis(50), |_| true);
        }
    }

    fn missing(&self, expect: &ReadyExpectation) -> Vec<String> {
        let lines = lock(&self.logs.lines);
        let mut missing: Vec<String> = expect
            .listeners
            .iter()
            .filter(|n| {
                !lines
                    .iter()
                    .any(|l| parse_listener_line(l).is_some_and(|(name, _)| &name == *n))
            })
            .map(|n| format!("listener {n:?}"))
            .collect();
        if expect.admin && !lines.iter().any(|l| parse_admin_line(l).is_some()) {
            missing.push("admin".to_string());
        }
        missing
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn config_path(&self) -> &Path {
        &self.config.path
    }

    /// The address listener `name` logged last (so a listener re-added by a reload
    /// reports its new address). Panics if it never logged one.
    pub fn listener_addr(&self, name: &str) -> SocketAddr {
        let lines = lock(&self.logs.lines);
        lines
            .iter()
            .rev()
            .filter_map(|l| parse_listener_line(l))
            .find(|(n, _)| n == name)
            .map(|(_, a)| a)
            .unwrap_or_else(|| {
                panic!(
                    "testkit: ringlb never logged `listener {name:?} listening on`; output:\n{}",
                    lines.join("\n")
                )
            })
    }

    /// The admin address ringlb logged last. Panics if none.
    pub fn admin_addr(&self) -> SocketAddr {
        let lines = lock(&self.logs.lines);
        lines
            .iter()
            .rev()
            .find_map(|l| parse_admin_line(l))
            .unwrap_or_else(|| {
                panic!(
                    "testkit: ringlb never logged `admin listening on http://`; output:\n{}",
                    lines.join("\n")
                )
            })
    }

    /// Every captured output line so far (stdout and stderr interleaved as read).
    pub fn logs(&self) -> Vec<String> {
        lock(&self.logs.lines).clone()
    }

    /// Number of lines captured so far: pass to [`Ringlb::wait_for_log_after`] to wait
    /// only for lines that come after an action (e.g. a reload).
    pub fn log_mark(&self) -> usize {
        lock(&self.logs.lines).len()
    }

    /// Every `backend up|down:` line of `backend` (its label, `addr` as configured) in
    /// `listener` so far, in log order.
    pub fn health_flips(&self, listener: &str, backend: &str) -> Vec<HealthFlip> {
        lock(&self.logs.lines)
            .iter()
            .enumerate()
            .filter_map(|(i, l)| parse_health_flip(i, l))
            .filter(|f| f.listener == listener && f.backend == backend)
            .collect()
    }

    /// Lines containing `substr`.
    pub fn count_log(&self, substr: &str) -> usize {
        lock(&self.logs.lines)
            .iter()
            .filter(|l| l.contains(substr))
            .count()
    }

    /// Waits until some line contains `substr`.
    pub fn wait_for_log(&self, substr: &str, timeout: Duration) -> bool {
        self.wait_for_log_after(0, substr, timeout)
    }

    /// Waits until a line at index >= `mark` contains `substr`.
    pub fn wait_for_log_after(&self, mark: usize, substr: &str, timeout: Duration) -> bool {
        self.logs.wait_for(mark, timeout, |l| l.contains(substr))
    }

    /// Sends `sig` to the child's PID. Panics if it was already reaped (the PID may
    /// belong to another process by then).
    pub fn signal(&self, sig: Signal) {
        if let Some(s) = self.exit {
            panic!(
                "testkit: signal {sig:?}: ringlb (pid {}) already exited with {s}",
                self.pid
            );
        }
        // SAFETY: kill(2) with a PID we spawned and have not reaped.
        let r = unsafe { libc::kill(self.pid as libc::pid_t, sig.raw()) };
        if r != 0 {
            panic!(
                "testkit: kill({}, {sig:?}): {}",
                self.pid,
                io::Error::last_os_error()
            );
        }
    }

    /// Replaces the config file's contents (atomically) without signalling.
    pub fn rewrite_config(&self, yaml: &str) {
        self.config.write(yaml);
    }

    /// Rewrites the config and sends SIGHUP. Returns the log mark taken before the
    /// signal, for [`Ringlb::wait_for_log_after`].
    pub fn reload(&mut self, yaml: &str) -> usize {
        self.rewrite_config(yaml);
        self.yaml = yaml.to_string();
        let mark = self.log_mark();
        self.signal(Signal::Hup);
        mark
    }

    fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            if let Ok(Some(s)) = self.child.try_wait() {
                self.exit = Some(s);
                // The pipes close with the process: the readers finish the last lines.
                self.join_readers();
            }
        }
        self.exit
    }

    /// Joins the log readers. A process a live upgrade started from this one inherited
    /// its stderr, so while such a successor lives the pipes stay open: wait a bounded
    /// time, then leave the readers to finish on their own.
    fn join_readers(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.readers.iter().any(|r| !r.is_finished()) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(5));
        }
        for r in self.readers.drain(..) {
            if r.is_finished() {
                let _ = r.join();
            }
        }
    }

    /// Processes other than this one running this instance's config file: the ones live
    /// upgrades started from it (the config path is unique to this instance).
    fn successors(&self) -> Vec<libc::pid_t> {
        let needle = self.config_path().as_os_str().as_encoded_bytes().to_vec();
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        dir.flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<libc::pid_t>().ok())
            .filter(|&pid| pid as u32 != self.pid)
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|c| c.windows(needle.len()).any(|w| w == needle.as_slice()))
            })
            .collect()
    }

    /// Waits up to `timeout` for the process to exit; `None` if still running. After
    /// `Some`, [`Ringlb::logs`] holds all of its output.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_exit() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    fn proc_path(&self, rest: &str) -> PathBuf {
        PathBuf::from(format!("/proc/{}/{rest}", self.pid))
    }

    /// Open file descriptors (entries in /proc/PID/fd).
    pub fn fd_count(&self) -> usize {
        let p = self.proc_path("fd");
        std::fs::read_dir(&p)
            .unwrap_or_else(|e| panic!("testkit: read {}: {e}", p.display()))
            .count()
    }

    /// Threads, including io_uring's io-wq workers (entries in /proc/PID/task).
    pub fn thread_count(&self) -> usize {
        self.thread_names().len()
    }

    /// Names of the process's threads (`/proc/PID/task/*/comm`), e.g. `iou-wrk-1234`.
    pub fn thread_names(&self) -> Vec<String> {
        let p = self.proc_path("task");
        std::fs::read_dir(&p)
            .unwrap_or_else(|e| panic!("testkit: read {}: {e}", p.display()))
            .filter_map(|e| e.ok())
            .filter_map(|e| std::fs::read_to_string(e.path().join("comm")).ok())
            .map(|s| s.trim_end().to_string())
            .collect()
    }

    /// Resident set size in KiB (VmRSS in /proc/PID/status).
    pub fn rss_kib(&self) -> u64 {
        let p = self.proc_path("status");
        let s = std::fs::read_to_string(&p)
            .unwrap_or_else(|e| panic!("testkit: read {}: {e}", p.display()));
        s.lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("testkit: no VmRSS in {}", p.display()))
    }

    /// GET `path` from the admin endpoint: (status, body). Panics on I/O errors.
    pub fn http_get(&self, path: &str) -> (u16, String) {
        let addr = self.admin_addr();
        http_get(addr, path).unwrap_or_else(|e| panic!("testkit: GET http://{addr}{path}: {e}"))
    }

    /// Scrapes `/metrics` and returns the value of `series`, the sample name with its
    /// labels exactly as ringlb writes them (e.g.
    /// `ringlb_connect_failures_total{listener="t",backend="127.0.0.1:1"}`); `None` if
    /// there is no such sample. Panics unless the scrape answers 200.
    pub fn metric(&self, series: &str) -> Option<f64> {
        let (status, body) = self.http_get("/metrics");
        assert_eq!(status, 200, "testkit: GET /metrics: {body}");
        metric_value(&body, series)
    }

    /// A live upgrade: SIGUSR2, then waits (up to `timeout` for each step) until a new
    /// process says it took over and this one has exited. The new process writes to this
    /// handle's log and serves on the same listeners and admin endpoint; the returned
    /// handle SIGKILLs it by pid when dropped. Panics if either step does not happen.
    /// After it, do not call [`Ringlb::wait_exit`]: it reads the log pipe to its end,
    /// which the new process holds.
    pub fn live_upgrade(&self, timeout: Duration) -> Successor {
        self.signal(Signal::Usr2);
        let successor = || {
            self.logs()
                .iter()
                .filter_map(|l| l.split("upgrade: pid ").nth(1))
                .find_map(|rest| rest.split(' ').next()?.parse().ok())
        };
        assert!(
            crate::wait_until(timeout, || successor().is_some()),
            "testkit: no process took over:\n{}",
            self.logs().join("\n")
        );
        let next = Successor(successor().unwrap_or_default());
        let stat = self.proc_path("stat");
        assert!(
            crate::wait_until(timeout, || std::fs::read_to_string(&stat)
                .map_or(true, |s| s.contains(") Z "))),
            "testkit: the old process (pid {}) did not exit after the upgrade",
            self.pid
        );
        next
    }
}

/// The process a live upgrade started ([`Ringlb::live_upgrade`]): SIGKILLed by its pid
/// when dropped.
#[derive(Debug)]
pub struct Successor(pub u32);

impl Drop for Successor {
    fn drop(&mut self) {
        if self.0 > 0 {
            // SAFETY: kill(2) on the pid the process this handle started logged as its
            // successor.
            unsafe { libc::kill(self.0 as libc::pid_t, libc::SIGKILL) };
        }
    }
}

impl std::fmt::Debug for Ringlb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ringlb")
            .field("pid", &self.pid)
            .field("config", &self.config.path)
            .field("exit", &self.exit)
            .finish_non_exhaustive()
    }
}

impl Drop for Ringlb {
    fn drop(&mut self) {
        if self.try_exit().is_none() {
            // SAFETY: our child, not yet reaped, so the PID is still ours.
            unsafe {
                libc::kill(self.pid as libc::pid_t, libc::SIGKILL);
            }
            let _ = self.child.wait();
        }
        // A successor a test did not stop itself (it failed before, or lost track of it)
        // would otherwise outlive the test and hold its log pipes open.
        for pid in self.successors() {
            // SAFETY: plain kill(2) of a process started from this instance.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
        self.join_readers();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_value_matches_the_whole_series() {
        let text = "# HELP x y\n# TYPE ringlb_up gauge\n\
                    ringlb_up{listener=\"t\",backend=\"127.0.0.1:1\"} 0\n\
                    ringlb_up{listener=\"t\",backend=\"127.0.0.1:10\"} 1\n\
                    ringlb_total 42\n";
        assert_eq!(
            metric_value(text, r#"ringlb_up{listener="t",backend="127.0.0.1:1"}"#),
            Some(0.0)
        );
        assert_eq!(
            metric_value(text, r#"ringlb_up{listener="t",backend="127.0.0.1:10"}"#),
            Some(1.0)
        );
        assert_eq!(metric_value(text, "ringlb_total"), Some(42.0));
        assert_eq!(
            metric_value(text, "ringlb_tot"),
            None,
            "a prefix is not a match"
        );
        assert_eq!(metric_value(text, "ringlb_up"), None);
    }

    #[test]
    fn listener_line_with_env_logger_prefix() {
        let l = r#"[2025-01-01T00:00:00Z INFO  ringlb] listener "demo" listening on 127.0.0.1:40123 (tcp, 2 workers)"#;
        assert_eq!(
            parse_listener_line(l),
            Some(("demo".to_string(), "127.0.0.1:40123".parse().unwrap()))
        );
        let l6 = r#"listener "v6 one" listening on [::1]:7000 (udp, 1 workers)"#;
        assert_eq!(
            parse_listener_line(l6),
            Some(("v6 one".to_string(), "[::1]:7000".parse().unwrap()))
        );
        assert_eq!(
            parse_listener_line(r#"listener "x" listening on 127.0.0.1:1"#),
            Some(("x".to_string(), "127.0.0.1:1".parse().unwrap()))
        );
    }

    #[test]
    fn listener_line_rejects_others() {
        for l in [
            "admin listening on http://127.0.0.1:9901",
            r#"listener "demo" stopped"#,
            r#"listener "demo" listening on nowhere (tcp)"#,
            r#"listener "demo listening on 127.0.0.1:1"#,
            "",
        ] {
            assert_eq!(parse_listener_line(l), None, "{l:?}");
        }
    }

    #[test]
    fn admin_line() {
        let l =
            "[2025-01-01T00:00:00Z INFO  ringlb::admin] admin listening on http://127.0.0.1:9901";
        assert_eq!(parse_admin_line(l), Some("127.0.0.1:9901".parse().unwrap()));
        assert_eq!(
            parse_admin_line("admin listening on http://127.0.0.1:80/ (metrics, status)"),
            Some("127.0.0.1:80".parse().unwrap())
        );
        assert_eq!(parse_admin_line("admin listening on 127.0.0.1:80"), None);
        assert_eq!(
            parse_admin_line(r#"listener "a" listening on 127.0.0.1:1"#),
            None
        );
    }

    #[test]
    fn expectation_from_yaml() {
        let y = "admin: 127.0.0.1:0\nlisteners:\n  - name: a\n    bind: 127.0.0.1:0\n  - name: b\n";
        assert_eq!(
            ready_expectation(y).unwrap(),
            ReadyExpectation {
                listeners: vec!["a".into(), "b".into()],
                admin: true
            }
        );
        let y2 = "admin: null\nlisteners: []\n";
        assert_eq!(
            ready_expectation(y2).unwrap(),
            ReadyExpectation {
                listeners: vec![],
                admin: false
            }
        );
        assert!(ready_expectation("listeners: [{bind: x}]").is_err());
        assert!(ready_expectation("listeners: 3").is_err());
        assert!(ready_expectation(": : :").is_err());
    }

    #[test]
    fn http_response_parsing() {
        assert_eq!(
            parse_http_response(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nhello\n"),
            Ok((200, "hello\n".to_string()))
        );
        assert_eq!(
            parse_http_response(b"HTTP/1.0 404 Not Found\r\n\r\n"),
            Ok((404, String::new()))
        );
        assert_eq!(
            parse_http_response(b"HTTP/1.0 200 OK\n\nx"),
            Ok((200, "x".into()))
        );
        assert!(parse_http_response(b"HTTP/1.1 200 OK\r\n").is_err());
        assert!(parse_http_response(b"SSH-2.0\r\n\r\n").is_err());
        assert!(parse_http_response(b"HTTP/1.1 abc OK\r\n\r\n").is_err());
    }

    #[test]
    fn exit_codes() {
        assert_eq!(exit_code(ExitStatus::from_raw(2 << 8)), 2);
        assert_eq!(exit_code(ExitStatus::from_raw(libc::SIGKILL)), 128 + 9);
    }
}
