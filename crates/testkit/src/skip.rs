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

/// Prints `SKIPPED: <test>: <reason>` to stderr. The test is named by its thread (the
/// test harness names threads after tests) or, failing that, by `module`.
#[doc(hidden)]
pub fn report_skip(module: &str, reason: &str) {
    let t = std::thread::current();
    let name = match t.name() {
        Some(n) if n != "main" => n,
        _ => module,
    };
    eprintln!("SKIPPED: {name}: {reason}");
}

/// `skip_unless!(cond, "reason {}", args...)`: unless `cond` holds, prints
/// `SKIPPED: <test>: <reason>` to stderr and returns from the enclosing function
/// (which must return `()`).
#[macro_export]
macro_rules! skip_unless {
    ($cond:expr, $($reason:tt)+) => {
        if !$cond {
            $crate::skip::report_skip(module_path!(), &format!($($reason)+));
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
        skip_unless!(cond, "cond was {}", cond);
        *ran = true;
    }

    #[test]
    fn skip_unless_returns_early() {
        let mut ran = false;
        guarded(false, &mut ran);
        assert!(!ran);
        guarded(true, &mut ran);
        assert!(ran);
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
