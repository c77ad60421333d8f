//! What systemd hears from ringlb across a live upgrade, with the sender of every message
//! (SCM_CREDENTIALS, as systemd reads them). The packaged unit has NotifyAccess=main
//! (docs/operations.md#the-unit-line-by-line): the old process must hand MAINPID= to the
//! new one before the new one speaks, and must not say STOPPING=1 afterwards — that
//! would stop the unit, new process included.

use std::io::IoSliceMut;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::socket::{recvmsg, setsockopt, sockopt, ControlMessageOwned, MsgFlags};
use ringlb_testkit::*;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_ringlb"))
}

const WAIT: Duration = Duration::from_secs(30);

/// One sd_notify datagram and the pid that sent it.
#[derive(Debug, Clone)]
struct Heard {
    pid: i32,
    text: String,
}

/// The notify socket of a pretend service manager.
struct Manager {
    socket: UnixDatagram,
    heard: Vec<Heard>,
}

impl Manager {
    fn bind(path: &Path) -> Manager {
        let _ = std::fs::remove_file(path);
        let socket = UnixDatagram::bind(path).unwrap();
        setsockopt(&socket, sockopt::PassCred, &true).unwrap();
        Manager {
            socket,
            heard: Vec::new(),
        }
    }

    /// The next datagram, waiting at most `timeout`.
    fn recv(&mut self, timeout: Duration) -> Option<Heard> {
        self.socket.set_read_timeout(Some(timeout)).unwrap();
        let mut buf = [0u8; 1024];
        let mut cmsg = nix::cmsg_space!(libc::ucred);
        let mut iov = [IoSliceMut::new(&mut buf)];
        let msg = recvmsg::<()>(
            self.socket.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::empty(),
        )
        .ok()?;
        let pid = msg
            .cmsgs()
            .ok()?
            .find_map(|c| match c {
                ControlMessageOwned::ScmCredentials(cred) => Some(cred.pid()),
                _ => None,
            })
            .unwrap_or(0);
        let n = msg.bytes;
        let heard = Heard {
            pid,
            text: String::from_utf8_lossy(&buf[..n]).into_owned(),
        };
        self.heard.push(heard.clone());
        Some(heard)
    }

    /// Receives until a message satisfying `want` arrives; returns it.
    fn until(&mut self, what: &str, want: impl Fn(&Heard) -> bool) -> Heard {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "no {what}; heard {:?}", self.heard);
            if let Some(h) = self.recv(left) {
                if want(&h) {
                    return h;
                }
            }
        }
    }
}

/// Ends the upgraded process (not our child: ringlb started it) when the test ends.
struct Successor(Option<u32>);

impl Drop for Successor {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            // SAFETY: kill(2) on the process this test's ringlb started.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        }
    }
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| !rest.starts_with('Z')))
        .unwrap_or(false)
}

#[test]
fn a_live_upgrade_hands_mainpid_over_first_and_never_says_stopping() {
    skip_unless!(
        Requirement::IoUring,
        io_uring_available(),
        "ringlb cannot run without io_uring"
    );
    let dir = std::env::temp_dir().join(format!("ringlb-service-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("notify.sock");
    let mut manager = Manager::bind(&path);
    let backend = EchoBackend::start();
    let yaml = format!(
        "listeners:\n  - name: l\n    bind: 127.0.0.1:0\n    backends: [{{addr: {}}}]\n",
        backend.addr()
    );
    let lb = Ringlb::builder(bin(), &yaml)
        .env("NOTIFY_SOCKET", &path)
        .start();
    // Declared after `lb`, so it drops first: the new process holds lb's log pipes.
    let mut successor = Successor(None);
    let old = lb.pid() as i32;
    manager.until("READY=1 from the first process", |h| {
        h.pid == old && h.text == "READY=1"
    });

    lb.signal(Signal::Usr2);
    let handed = manager.until("MAINPID= from the old process", |h| {
        h.text.starts_with("MAINPID=")
    });
    assert_eq!(
        handed.pid, old,
        "the first MAINPID= must come from the main process"
    );
    let new: u32 = handed.text["MAINPID=".len()..].parse().unwrap();
    successor.0 = Some(new);
    assert_ne!(new as i32, old);
    let ready = manager.until("READY=1 from the new process", |h| h.text == "READY=1");
    assert_eq!(ready.pid, new as i32, "{:?}", manager.heard);
    let since: Vec<&Heard> = manager
        .heard
        .iter()
        .skip_while(|h| h.text != handed.text || h.pid != old)
        .collect();
    assert!(
        since.iter().skip(1).all(|h| h.pid == new as i32),
        "after MAINPID= only the new process speaks: {:?}",
        manager.heard
    );
    assert!(
        since.iter().any(|h| h.text == format!("MAINPID={new}")),
        "{:?}",
        manager.heard
    );

    // Everything the old process sent is queued by the time it has exited. (Not
    // `wait_exit`: it waits for the log pipes, which the new process holds too.)
    assert!(
        wait_until(WAIT, || !alive(lb.pid())),
        "the old process did not exit"
    );
    while manager.recv(Duration::from_millis(1)).is_some() {}
    assert!(
        !manager.heard.iter().any(|h| h.text.contains("STOPPING=1")),
        "STOPPING=1 during an upgrade stops the unit: {:?}",
        manager.heard
    );

    // The service's own stop: the new process, now the main one, says it.
    // SAFETY: kill(2) on the process this test's ringlb started.
    unsafe { libc::kill(new as libc::pid_t, libc::SIGTERM) };
    let stopping = manager.until("STOPPING=1 from the new process", |h| {
        h.text == "STOPPING=1"
    });
    assert_eq!(stopping.pid, new as i32);
    assert!(
        wait_until(WAIT, || !alive(new)),
        "the new process did not exit"
    );
    successor.0 = None;
    std::fs::remove_dir_all(&dir).ok();
}
