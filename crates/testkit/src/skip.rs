//! Probing the machine for what a test needs, and skipping loudly when it is missing.

use std::path::Path;

/// Whether the test runs as root (effective UID 0).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Whether an executable named `name` is on PATH (e.g. `"ip"`, `"haproxy"`).
pub fn have_command(name: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let Some(path) = std::env::var_os("PATH") else {
        return false;
    };
    std::env::split_paths(&path).any(|dir| {
        let p = dir.join(name);
        Path::new(&p)
            .metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    })
}

/// Whether this process may create an io_uring (kernel support, no
/// `kernel.io_uring_disabled`, no seccomp filter): ringlb cannot run otherwise.
pub fn io_uring_available() -> bool {
    // struct io_uring_params is 120 bytes; zeroed means "no flags".
    let mut params = [0u64; 15];
    // SAFETY: io_uring_setup reads and writes `params`, which is large enough.
    let fd = unsafe { libc::syscall(libc::SYS_io_uring_setup, 1u32, params.as_mut_ptr()) };
    if fd < 0 {
        return false;
    }
    // SAFETY: closing the fd the kernel just returned to us.
    unsafe { libc::close(fd as libc::c_int) };
    true
}

/// What a skipped test needed and did not have. Each kind is one that `scripts/test.sh`
/// can check on its own after the run: a skip whose requirement turns out to be available
/// fails the run, so a test cannot pass by skipping where it could have run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Requirement {
    /// Effective UID 0.
    Root,
    /// Creating a network namespace (`ip netns add`).
    NetNs,
    /// Creating an io_uring (kernel support, not disabled by sysctl or seccomp).
    IoUring,
    /// An executable on PATH, e.g. `Command("promtool")`.
    Command(&'static str),
    /// One of these machine architectures (`uname -m`), e.g. `Arch(&["x86_64"])`.
    Arch(&'static [&'static str]),
    /// Anything else. `scripts/test.sh` cannot check it, so CI fails on it: prefer (or
    /// add) a kind it can check.
    Other,
}

impl Requirement {
    /// The third field of the skip-log line: `root`, `netns`, `io_uring`,
    /// `command:NAME`, `arch:A,B` or `other`.
    pub fn kind(&self) -> String {
        match self {
            Requirement::Root => "root".into(),
            Requirement::NetNs => "netns".into(),
            Requirement::IoUring => "io_uring".into(),
            Requirement::Command(name) => format!("command:{name}"),
            Requirement::Arch(archs) => format!("arch:{}", archs.join(",")),
            Requirement::Other => "other".into(),
        }
    }
}

/// The environment variable naming the file every skip is appended to (set by
/// `scripts/test.sh`, which prints and checks the file after the run).
pub const SKIP_LOG_ENV: &str = "RINGLB_SKIP_LOG";

/// One skip-log line: `<test>\t<reason>\t<kind>\n`, with tabs and newlines in the
/// fields turned into spaces so the line always has exactly three fields.
pub fn skip_line(test: &str, reason: &str, req: Requirement) -> String {
    let clean = |s: &str| s.replace(['\t', '\n', '\r'], " ");
    format!("{}\t{}\t{}\n", clean(test), clean(reason), req.kind())
}

/// Appends one line to `path` with a single O_APPEND write, so lines from test processes
/// running in parallel do not interleave.
fn append_line(path: &Path, line: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    f.write_all(line.as_bytes())
}

#[cfg(test)]
thread_local! {
    /// Where this thread's skips go instead of the real log: lets the unit tests below
    /// skip on purpose without showing up in the run's summary.
    static LOG_OVERRIDE: std::cell::RefCell<Option<std::path::PathBuf>> =
        const { std::cell::RefCell::new(None) };
}

fn skip_log_path() -> Option<std::path::PathBuf> {
    #[cfg(test)]
    if let Some(p) = LOG_OVERRIDE.with(|o| o.borrow().clone()) {
        return Some(p);
    }
    std::env::var_os(SKIP_LOG_ENV)
        .filter(|v| !v.is_empty())
        .map(Into::into)
}

/// Reports a skip: prints `SKIPPED: <test>: <reason> (needs <kind>)` to stderr and, when
/// [`SKIP_LOG_ENV`] is set, appends a [`skip_line`] to that file (panicking if it cannot:
/// a skip nobody hears of is a silent pass). The test is `<crate>::<thread name>` (the
/// harness names threads after tests), or `module` on an unnamed or main thread.
#[doc(hidden)]
pub fn report_skip(module: &str, req: Requirement, reason: &str) {
    let t = std::thread::current();
    let krate = module.split("::").next().unwrap_or(module);
    let name = match t.name() {
        Some(n) if n != "main" => format!("{krate}::{n}"),
        _ => module.to_string(),
    };
    eprintln!("SKIPPED: {name}: {reason} (needs {})", req.kind());
    if let Some(path) = skip_log_path() {
        append_line(&path, &skip_line(&name, reason, req)).unwrap_or_else(|e| {
            panic!(
                "testkit: cannot record the skip of {name} in {}: {e}",
                path.display()
            )
        });
    }
}

/// `skip_unless!(requirement, cond, "reason {}", args...)`: unless `cond` holds, reports
/// the skip ([`report_skip`]: stderr and the skip log) and returns from the enclosing
/// function (which must return `()`). `requirement` is a [`Requirement`] saying what
/// was missing.
#[macro_export]
macro_rules! skip_unless {
    ($req:expr, $cond:expr, $($reason:tt)+) => {
        if !$cond {
            $crate::skip::report_skip(module_path!(), $req, &format!($($reason)+));
            return;
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands() {
        assert!(have_command("sh"), "sh is on PATH on any Linux");
        assert!(!have_command("definitely-not-a-command-ringlb-testkit"));
    }

    fn guarded(cond: bool, ran: &mut bool) {
        skip_unless!(
            Requirement::Command("no-such-tool"),
            cond,
            "cond was\t{}",
            cond
        );
        *ran = true;
    }

    /// Sends this thread's skips to a fresh file for the duration of `f`; returns what
    /// was written.
    fn with_private_log(test: &str, f: impl FnOnce()) -> String {
        let path = std::env::temp_dir().join(format!(
            "ringlb-testkit-skiplog-{}-{test}",
            std::process::id()
        ));
        let _ = std::fs::remove_file(&path);
        LOG_OVERRIDE.with(|o| *o.borrow_mut() = Some(path.clone()));
        f();
        LOG_OVERRIDE.with(|o| *o.borrow_mut() = None);
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let _ = std::fs::remove_file(&path);
        text
    }

    #[test]
    fn skip_unless_returns_early_and_logs_one_line() {
        let mut ran = false;
        let log = with_private_log("early", || guarded(false, &mut ran));
        assert!(!ran);
        let fields: Vec<&str> = log.strip_suffix('\n').unwrap_or("").split('\t').collect();
        assert_eq!(
            fields[1..],
            ["cond was false", "command:no-such-tool"],
            "{log:?}"
        );
        // The harness names the thread after the test (unless it runs tests on main).
        assert!(
            fields[0] == "ringlb_testkit::skip::tests::skip_unless_returns_early_and_logs_one_line"
                || fields[0] == "ringlb_testkit::skip::tests",
            "{log:?}"
        );
        let log = with_private_log("ran", || guarded(true, &mut ran));
        assert!(ran);
        assert_eq!(log, "", "a test that runs logs nothing");
    }

    #[test]
    fn skip_lines_have_three_fields_and_checkable_kinds() {
        assert_eq!(
            skip_line("a::b", "no\nroot\there", Requirement::Root),
            "a::b\tno root here\troot\n"
        );
        let kinds: Vec<String> = [
            Requirement::Root,
            Requirement::NetNs,
            Requirement::IoUring,
            Requirement::Command("promtool"),
            Requirement::Arch(&["x86_64", "aarch64"]),
            Requirement::Other,
        ]
        .iter()
        .map(Requirement::kind)
        .collect();
        assert_eq!(
            kinds,
            [
                "root",
                "netns",
                "io_uring",
                "command:promtool",
                "arch:x86_64,aarch64",
                "other"
            ]
        );
    }

    #[test]
    fn lines_from_many_writers_stay_whole() {
        let log = with_private_log("many", || {
            let path = skip_log_path().unwrap();
            std::thread::scope(|s| {
                for t in 0..4 {
                    let path = &path;
                    s.spawn(move || {
                        for i in 0..50 {
                            let line = skip_line(&format!("t{t}::{i}"), "r", Requirement::IoUring);
                            append_line(path, &line).unwrap();
                        }
                    });
                }
            });
        });
        assert_eq!(log.lines().count(), 200);
        assert!(log.lines().all(|l| l.split('\t').count() == 3), "{log}");
    }

    #[test]
    fn root_matches_proc() {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let euid: u32 = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|v| v.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap();
        assert_eq!(is_root(), euid == 0);
    }

    #[test]
    fn io_uring_probe_matches_sysctl() {
        // When the sysctl forbids io_uring for everyone, the probe must say no.
        if let Ok(v) = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled") {
            if v.trim() == "2" {
                assert!(!io_uring_available());
            }
        }
        // Otherwise only check that it does not crash; the answer is the kernel's.
        let _ = io_uring_available();
    }
}
