//! The file-descriptor budget end to end, on loopback: a flood of new UDP clients under a
//! low RLIMIT_NOFILE is refused (reason `resources`) before it takes the descriptors a TCP
//! listener, the admin endpoint and established UDP sessions of the same process need.

use std::io::Write;
use std::net::{SocketAddr, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ringlb_testkit::*;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_ringlb"))
}

/// Descriptor limit ringlb runs under, below the flood so that without a budget the flood
/// would take every descriptor: reserve 512 (half the limit), so about 500 UDP sockets.
const NOFILE: u32 = 1024;
/// New source ports in the flood: well beyond the budget.
const FLOOD: usize = 2_000;
const ESTABLISHED: usize = 10;
const TCP_CONNECTIONS: usize = 200;

/// A wrapper that execs ringlb with soft and hard RLIMIT_NOFILE set to `NOFILE` (the pid
/// stays ringlb's: `exec`).
struct LimitedBin {
    dir: PathBuf,
    script: PathBuf,
}

impl LimitedBin {
    /// `test`: a directory of its own per test (tests run in parallel).
    fn new(test: &str) -> LimitedBin {
        let dir =
            std::env::temp_dir().join(format!("ringlb-fd-budget-{}-{test}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let script = dir.join("ringlb-limited");
        let mut f = std::fs::File::create(&script).unwrap();
        writeln!(
            f,
            "#!/bin/sh\nulimit -n {NOFILE} || exit 3\nexec '{}' \"$@\"",
            bin().display()
        )
        .unwrap();
        drop(f);
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        LimitedBin { dir, script }
    }
}

impl Drop for LimitedBin {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn yaml(tcp_backend: SocketAddr, udp_backend: SocketAddr) -> String {
    format!(
        "workers: 2\nadmin: 127.0.0.1:0\naccess_log: false\nlisteners:\n  - name: t\n    bind: 127.0.0.1:0\n    backends:\n      - addr: {tcp_backend}\n  - name: u\n    bind: 127.0.0.1:0\n    protocol: udp\n    session_timeout: 60s\n    backends:\n      - addr: {udp_backend}\n"
    )
}

#[test]
fn udp_flood_cannot_take_the_descriptors_tcp_and_admin_need() {
    let limited = LimitedBin::new("flood");
    let tcp_backend = EchoBackend::start();
    let udp_backend = UdpEchoBackend::start();
    let lb = Ringlb::builder(
        &limited.script,
        &yaml(tcp_backend.addr(), udp_backend.addr()),
    )
    .echo(std::env::var_os("FD_ECHO").is_some())
    .start();
    assert!(
        lb.wait_for_log(
            &format!("RLIMIT_NOFILE {NOFILE} - reserve 512"),
            Duration::from_secs(10)
        ),
        "the budget line must name the limit and the reserve"
    );
    // Default max_sessions (100,000) and max_connections (50,000) under 1,024: `run` warns.
    assert!(
        lb.count_log("the configured limits may need 200000 file descriptors") >= 1,
        "run warns when the limits exceed the descriptor limit minus the reserve"
    );
    let udp = lb.listener_addr("u");
    let tcp = lb.listener_addr("t");
    let denied = r#"ringlb_denied_total{listener="u",reason="resources"}"#;
    let denied_before = lb.metric(denied).unwrap_or(0.0);

    let established: Vec<UdpSocket> = (0..ESTABLISHED)
        .map(|_| {
            let s = udp_client();
            s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
            s
        })
        .collect();
    for c in &established {
        assert_eq!(udp_roundtrip(c, udp, b"before").unwrap(), b"before");
    }

    // Each new source port is a new session, so one upstream socket per port in ringlb.
    // Sockets are kept open so no port is reused within the flood.
    let mut flood = Vec::with_capacity(FLOOD);
    for i in 0..FLOOD {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        s.send_to(format!("flood {i}").as_bytes(), udp).unwrap();
        flood.push(s);
        if i % 200 == 199 {
            // Pace so the listener's receive queue does not overflow: the test is about
            // admission, not about the kernel dropping datagrams.
            let sent = i + 1;
            wait_until(Duration::from_secs(10), || {
                udp_backend.received() + denied_seen(&lb, denied, denied_before) >= sent
            });
        }
    }
    assert!(
        wait_until(Duration::from_secs(20), || {
            denied_seen(&lb, denied, denied_before) + udp_backend.distinct_sources().len()
                >= FLOOD + ESTABLISHED
        }),
        "every flood datagram is either a session or a refusal"
    );
    let refused = denied_seen(&lb, denied, denied_before);
    let sessions = udp_backend.distinct_sources().len();
    eprintln!(
        "flood of {FLOOD} sources under RLIMIT_NOFILE {NOFILE}: {sessions} sessions, {refused} refused (resources); ringlb fds open: {}",
        lb.fd_count()
    );
    assert!(
        refused > 0,
        "the flood must be refused once the budget is used"
    );
    assert!(
        lb.count_log("udp socket budget") >= 1,
        "refusals are logged"
    );

    // TCP still serves, with the flood's sessions all open.
    let mut failures = 0;
    for i in 0..TCP_CONNECTIONS {
        match connect_with_timeout(tcp, Duration::from_secs(5)) {
            Ok(mut s) => {
                let payload = format!("conn {i}\n");
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let ok = s.write_all(payload.as_bytes()).is_ok() && {
                    let mut buf = vec![0u8; payload.len()];
                    std::io::Read::read_exact(&mut s, &mut buf).is_ok() && buf == payload.as_bytes()
                };
                if !ok {
                    failures += 1;
                }
            }
            Err(e) => {
                eprintln!("tcp connection {i}: {e}");
                failures += 1;
            }
        }
    }
    eprintln!("{TCP_CONNECTIONS} tcp connections during the held flood: {failures} failures");
    assert_eq!(failures, 0);

    let (status, _) = lb.http_get("/metrics");
    assert_eq!(status, 200);
    for c in &established {
        assert_eq!(udp_roundtrip(c, udp, b"after").unwrap(), b"after");
    }
    drop(flood);
}

fn denied_seen(lb: &Ringlb, series: &str, before: f64) -> usize {
    (lb.metric(series).unwrap_or(0.0) - before).max(0.0) as usize
}

#[test]
fn check_warns_when_the_limits_exceed_the_descriptor_limit() {
    let limited = LimitedBin::new("check");
    let b: SocketAddr = "127.0.0.1:9".parse().unwrap();
    // Default max_sessions (100,000) and max_connections against a limit of 1,024.
    let (code, out) = Ringlb::check(&limited.script, &yaml(b, b));
    assert_eq!(code, 0, "a warning, not an error: {out}");
    assert!(
        out.contains("the configured limits may need")
            && out.contains("RLIMIT_NOFILE 1024 minus the reserve of 512")
            && out.contains("this shell's hard limit"),
        "{out}"
    );
}
