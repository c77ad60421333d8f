//! A network namespace of a test's own: its own `lo`, port range, sysctls and nftables,
//! so a test can drop packets or narrow ports without touching the host. Needs root and
//! `ip` (plus whatever the test runs inside, e.g. `nft`); [`netns_for_test`] skips the
//! test loudly where they are missing.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;

use crate::skip::{have_command, is_root, report_skip, Requirement};

/// Runs `program args…` with `stdin` fed to it; its stdout, or why it failed.
fn run(program: &str, args: &[&str], stdin: Option<&str>) -> Result<String, String> {
    let shown = format!("{program} {}", args.join(" "));
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{shown}: {e}"))?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())
            .map_err(|e| format!("{shown}: stdin: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("{shown}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{shown}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// A network namespace with only `lo` (up: all of 127.0.0.0/8 is local), deleted on
/// Drop. Everything a test does inside runs on a thread that joined it ([`Netns::run`]),
/// so the sockets it opens and the processes it spawns (ringlb) live there.
pub struct Netns {
    name: String,
}

impl Netns {
    pub fn create() -> Result<Netns, String> {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let ns = Netns {
            name: format!(
                "ringlb-t-{}-{}",
                std::process::id(),
                SEQ.fetch_add(1, Ordering::SeqCst)
            ),
        };
        run("ip", &["netns", "add", &ns.name], None)?;
        // From here on Drop deletes it.
        ns.exec(&["ip", "link", "set", "lo", "up"], None)?;
        Ok(ns)
    }

    /// `ip netns exec NS ARGS…`, with `stdin` fed to it; its stdout.
    pub fn exec(&self, args: &[&str], stdin: Option<&str>) -> Result<String, String> {
        let mut all = vec!["netns", "exec", self.name.as_str()];
        all.extend_from_slice(args);
        run("ip", &all, stdin)
    }

    /// Loads nftables table `inet TABLE` whose input chain drops, and counts, every packet
    /// matching one of `matches` (match expressions, e.g. `tcp dport 9000`). On `lo` both
    /// directions of a connection pass the input hook. Panics if `nft` fails.
    pub fn nft_drop(&self, table: &str, matches: &[String]) {
        let rules: String = matches
            .iter()
            .map(|m| format!("    {m} counter drop\n"))
            .collect();
        let text = format!(
            "table inet {table} {{\n  chain input {{\n    type filter hook input priority 0; policy accept;\n{rules}  }}\n}}\n"
        );
        self.exec(&["nft", "-f", "-"], Some(&text))
            .unwrap_or_else(|e| panic!("{e}"));
    }

    /// Packets the rules of [`Netns::nft_drop`] for `table` dropped, all rules together.
    pub fn nft_dropped(&self, table: &str) -> u64 {
        let listing = self
            .exec(&["nft", "list", "table", "inet", table], None)
            .unwrap_or_else(|e| panic!("{e}"));
        let counts: Vec<u64> = listing
            .split("counter packets ")
            .skip(1)
            .filter_map(|rest| rest.split_whitespace().next()?.parse().ok())
            .collect();
        assert!(!counts.is_empty(), "no counter in:\n{listing}");
        counts.iter().sum()
    }

    /// Runs `body` on a thread inside the namespace; a panic there is this test's panic.
    pub fn run<T: Send>(&self, body: impl FnOnce() -> T + Send) -> T {
        let path = format!("/var/run/netns/{}", self.name);
        thread::scope(|s| {
            s.spawn(|| {
                let f = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
                // SAFETY: setns on this thread only, with an fd we own and keep open.
                let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns {path}: {}", io::Error::last_os_error());
                body()
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = run("ip", &["netns", "del", &self.name], None);
    }
}

/// A namespace for a test that needs one and runs `commands` (`ip` among them), or
/// `None` after reporting the skip and why. `module`: the caller's `module_path!()`,
/// which names the test in the skip log.
pub fn netns_for_test(module: &str, commands: &[&'static str]) -> Option<Netns> {
    let missing: Vec<&'static str> = commands
        .iter()
        .copied()
        .filter(|c| !have_command(c))
        .collect();
    let (requirement, reason) = if !is_root() {
        (
            Requirement::Root,
            "needs root to create a network namespace".to_string(),
        )
    } else if let Some(first) = missing.first() {
        (
            Requirement::Command(first),
            format!("needs {missing:?} on PATH"),
        )
    } else {
        match Netns::create() {
            Ok(ns) => return Some(ns),
            Err(e) => (
                Requirement::NetNs,
                format!("cannot create a network namespace: {e}"),
            ),
        }
    };
    report_skip(module, requirement, &reason);
    None
}
