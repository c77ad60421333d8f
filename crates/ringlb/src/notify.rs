//! systemd's readiness protocol (sd_notify): one datagram per state change to the Unix
//! socket named by `NOTIFY_SOCKET`, when it is set (a `Type=notify` unit). A path, or an
//! abstract socket written with a leading `@`. Without `NOTIFY_SOCKET` nothing is sent.
//!
//! ringlb sends `READY=1` once it serves, `RELOADING=1` with `MONOTONIC_USEC=` when a
//! SIGHUP reload starts and `READY=1` when it is done, and `STOPPING=1` when it starts
//! draining. The live upgrade sends `MAINPID=<new pid>` through [`notify`] too.

use std::ffi::OsStr;
use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::Path;

/// Sends `state` (e.g. `"READY=1"`, lines separated by `\n`) to systemd. `Ok(false)` when
/// `NOTIFY_SOCKET` is not set or names a socket kind other than a Unix one.
pub fn notify(state: &str) -> io::Result<bool> {
    match std::env::var_os("NOTIFY_SOCKET") {
        Some(target) => send_to(&target, state),
        None => Ok(false),
    }
}

fn send_to(target: &OsStr, state: &str) -> io::Result<bool> {
    let Some(addr) = notify_addr(target.as_bytes())? else {
        log::debug!("NOTIFY_SOCKET={target:?} is not a Unix socket; not notifying");
        return Ok(false);
    };
    let socket = UnixDatagram::unbound()?;
    socket.send_to_addr(state.as_bytes(), &addr)?;
    Ok(true)
}

/// [`notify`], logging a failure instead of returning it: a supervisor that cannot be
/// told is no reason to stop serving.
pub fn notify_or_log(state: &str) {
    if let Err(e) = notify(state) {
        log::warn!("sd_notify {:?}: {e}", state.lines().next().unwrap_or(""));
    }
}

/// `RELOADING=1` with the monotonic timestamp systemd wants beside it.
pub fn reloading_message() -> String {
    match nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC) {
        Ok(now) => {
            let usec = now.tv_sec() as u64 * 1_000_000 + now.tv_nsec() as u64 / 1_000;
            format!("RELOADING=1\nMONOTONIC_USEC={usec}")
        }
        Err(_) => "RELOADING=1".to_string(),
    }
}

/// `@name` → the abstract socket `name`; `/path` → that path; anything else (`vsock:`…)
/// → `None`.
fn notify_addr(target: &[u8]) -> io::Result<Option<SocketAddr>> {
    match target.first() {
        Some(b'@') => SocketAddr::from_abstract_name(&target[1..]).map(Some),
        Some(b'/') => SocketAddr::from_pathname(Path::new(OsStr::from_bytes(target))).map(Some),
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_to_a_path_and_to_an_abstract_socket() {
        let dir = std::env::temp_dir().join(format!("ringlb-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let by_path = UnixDatagram::bind(&path).unwrap();
        assert!(send_to(path.as_os_str(), "READY=1").unwrap());
        let mut buf = [0u8; 64];
        let n = by_path.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");

        let name = format!("ringlb-notify-test-{}", std::process::id());
        let abstract_addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let by_name = UnixDatagram::bind_addr(&abstract_addr).unwrap();
        assert!(send_to(OsStr::new(&format!("@{name}")), "STOPPING=1").unwrap());
        let n = by_name.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STOPPING=1");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn other_targets_are_not_notified() {
        assert!(!send_to(OsStr::new("vsock:2:1234"), "READY=1").unwrap());
        assert!(!send_to(OsStr::new(""), "READY=1").unwrap());
        assert!(send_to(OsStr::new("/nonexistent/ringlb/notify"), "READY=1").is_err());
    }

    #[test]
    fn reloading_carries_a_monotonic_timestamp() {
        let m = reloading_message();
        let usec = m
            .strip_prefix("RELOADING=1\nMONOTONIC_USEC=")
            .unwrap_or_else(|| panic!("{m:?}"));
        assert!(usec.parse::<u64>().unwrap() > 0);
    }
}
