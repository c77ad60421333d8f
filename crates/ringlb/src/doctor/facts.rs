//! What `ringlb doctor` looks at, read from this host once: kernel, sysctls, limits,
//! capabilities, a probe ring; and for a configuration file its control socket, its
//! state_file's directory and its binds. Nothing here judges: that is `checks`.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ringlb_config::Config;
use socket2::{Domain, SockAddr, Socket, Type};

use crate::control::ports;
use crate::control_socket::client::{self, ClientError};
use crate::control_socket::path as control_path;

/// CAP_NET_BIND_SERVICE's bit in the capability sets of /proc/self/status.
const CAP_NET_BIND_SERVICE: u32 = 10;
/// How long a control socket gets to answer `ping`.
const PING_TIMEOUT: Duration = Duration::from_secs(2);

/// The host, as this process sees it.
#[derive(Debug, Clone)]
pub struct Host {
    /// `uname -r`.
    pub kernel_release: String,
    /// kernel.io_uring_disabled (Linux 6.6+; `None` where the sysctl does not exist).
    pub io_uring_disabled: Option<u8>,
    /// A ring built as the workers build theirs, with every opcode probed.
    pub io_uring_probe: Result<(), String>,
    /// RLIMIT_NOFILE (soft, hard).
    pub nofile: Option<(u64, u64)>,
    pub somaxconn: Option<u32>,
    /// net.ipv4.ip_local_port_range.
    pub port_range: Option<(u16, u16)>,
    pub tcp_tw_reuse: Option<u8>,
    /// net.ipv4.ip_unprivileged_port_start: ports below it need CAP_NET_BIND_SERVICE.
    pub unprivileged_port_start: Option<u16>,
    /// CAP_NET_BIND_SERVICE in this process's effective set.
    pub cap_net_bind_service: bool,
    pub root: bool,
}

impl Host {
    pub fn gather() -> Host {
        Host {
            kernel_release: sysctl("kernel/osrelease").unwrap_or_default(),
            io_uring_disabled: sysctl_parse("kernel/io_uring_disabled"),
            io_uring_probe: ringlb_dataplane::sys::probe_io_uring().map_err(|e| e.to_string()),
            nofile: nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).ok(),
            somaxconn: sysctl_parse("net/core/somaxconn"),
            port_range: sysctl("net/ipv4/ip_local_port_range").and_then(|s| parse_pair(&s)),
            tcp_tw_reuse: sysctl_parse("net/ipv4/tcp_tw_reuse"),
            unprivileged_port_start: sysctl_parse("net/ipv4/ip_unprivileged_port_start"),
            cap_net_bind_service: std::fs::read_to_string("/proc/self/status")
                .ok()
                .and_then(|s| effective_caps(&s))
                .is_some_and(|caps| caps & (1 << CAP_NET_BIND_SERVICE) != 0),
            root: nix::unistd::geteuid().is_root(),
        }
    }
}

/// A directory ringlb must create files in, as this user finds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DirState {
    Writable,
    /// Exists, but this user cannot create files in it: why.
    NotWritable(String),
    /// Does not exist; whether this user could create it.
    Missing {
        parent_writable: bool,
    },
}

impl DirState {
    pub fn of(dir: &Path) -> DirState {
        if dir.is_dir() {
            match writable(dir) {
                Ok(()) => DirState::Writable,
                Err(e) => DirState::NotWritable(e.to_string()),
            }
        } else {
            DirState::Missing {
                parent_writable: dir.parent().is_some_and(|p| writable(p).is_ok()),
            }
        }
    }
}

/// Whether an instance answers on the control socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Running {
    Pid(u32),
    No,
    /// Something is there but did not answer as an instance (permission, no reply).
    Unknown(String),
}

/// The control socket of the file.
#[derive(Debug, Clone)]
pub struct Control {
    /// `Err`: the path cannot be derived (why).
    pub socket: Result<PathBuf, String>,
    /// Derived from the file's path (ringlb creates its directory) rather than `control:`.
    pub derived: bool,
    pub dir: DirState,
    pub running: Running,
}

/// What binding a listener's address would meet now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BindState {
    Free,
    /// Another socket serves it; the owner's pid and command when visible.
    Taken {
        pid: Option<u32>,
        command: Option<String>,
    },
    /// The address is not one of this host's (EADDRNOTAVAIL).
    NotLocal(String),
    /// The bind fails for another reason (permission, ...).
    Fails(String),
}

#[derive(Debug, Clone)]
pub struct Bind {
    pub listener: String,
    pub addr: SocketAddr,
    pub udp: bool,
    pub state: BindState,
}

/// What a configuration file meets on this host.
#[derive(Debug, Clone)]
pub struct Local {
    pub control: Control,
    /// The state_file's directory, when the file sets one.
    pub state_dir: Option<(PathBuf, DirState)>,
    pub binds: Vec<Bind>,
}

impl Local {
    pub fn gather(path: &Path, config: &Config) -> Local {
        let socket =
            control_path::resolve(path, config.control.as_deref()).map_err(|e| e.to_string());
        let (dir, running) = match &socket {
            Ok(socket) => (
                socket.parent().map_or(DirState::Writable, DirState::of),
                running(socket),
            ),
            Err(_) => (DirState::Writable, Running::No),
        };
        Local {
            control: Control {
                socket,
                derived: config.control.is_none(),
                dir,
                running,
            },
            state_dir: config.state_file.as_deref().map(|file| {
                let dir = match file.parent() {
                    Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
                    _ => PathBuf::from("."),
                };
                let state = DirState::of(&dir);
                (dir, state)
            }),
            binds: config
                .listeners
                .iter()
                .map(|l| {
                    let udp = l.udp().is_some();
                    Bind {
                        listener: l.name.clone(),
                        addr: l.bind,
                        udp,
                        state: bind_state(l.bind, udp),
                    }
                })
                .collect(),
        }
    }
}

fn running(socket: &Path) -> Running {
    match client::ping(socket, PING_TIMEOUT) {
        Ok(pid) => Running::Pid(pid),
        Err(ClientError::NoInstance { .. }) => Running::No,
        Err(e) => Running::Unknown(e.to_string()),
    }
}

/// Who holds `addr` (the kernel's socket tables, as at start), else whether a bind would
/// work: a trial bind without SO_REUSEPORT and without listen, so it joins no group and
/// takes no connection.
fn bind_state(addr: SocketAddr, udp: bool) -> BindState {
    if addr.port() == 0 {
        return BindState::Free;
    }
    if let Err(taken) = ports::check(addr, udp, &[]) {
        let pid = match taken.owner {
            ports::Owner::Pid(pid) => Some(pid),
            ports::Owner::Unknown => None,
        };
        return BindState::Taken {
            pid,
            command: pid.and_then(command_of),
        };
    }
    match trial_bind(addr, udp) {
        Ok(()) => BindState::Free,
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => BindState::Taken {
            pid: None,
            command: None,
        },
        Err(e) if e.kind() == io::ErrorKind::AddrNotAvailable => BindState::NotLocal(e.to_string()),
        Err(e) => BindState::Fails(e.to_string()),
    }
}

fn trial_bind(addr: SocketAddr, udp: bool) -> io::Result<()> {
    let ty = if udp { Type::DGRAM } else { Type::STREAM };
    let socket = Socket::new(Domain::for_address(addr), ty, None)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    if !udp {
        // As ringlb binds: TIME_WAIT leftovers on the port are no conflict.
        socket.set_reuse_address(true)?;
    }
    socket.bind(&SockAddr::from(addr))
}

fn command_of(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim().to_string())
}

/// Whether this user may create files in `dir` (permissions, read-only mounts).
fn writable(dir: &Path) -> nix::Result<()> {
    nix::unistd::access(
        dir,
        nix::unistd::AccessFlags::W_OK | nix::unistd::AccessFlags::X_OK,
    )
}

fn sysctl(name: &str) -> Option<String> {
    std::fs::read_to_string(Path::new("/proc/sys").join(name))
        .ok()
        .map(|s| s.trim().to_string())
}

fn sysctl_parse<T: std::str::FromStr>(name: &str) -> Option<T> {
    sysctl(name)?.parse().ok()
}

/// `"32768\t60999"` → (32768, 60999).
pub fn parse_pair(text: &str) -> Option<(u16, u16)> {
    let mut parts = text.split_whitespace().map(str::parse::<u16>);
    match (parts.next(), parts.next(), parts.next()) {
        (Some(Ok(a)), Some(Ok(b)), None) => Some((a, b)),
        _ => None,
    }
}

/// The `CapEff:` bits of a /proc/PID/status text.
pub fn effective_caps(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sysctl_texts_parse() {
        assert_eq!(parse_pair("32768\t60999\n"), Some((32768, 60999)));
        assert_eq!(parse_pair("1024 65000"), Some((1024, 65000)));
        assert_eq!(parse_pair("1024"), None);
        assert_eq!(parse_pair("1 2 3"), None);
        assert_eq!(parse_pair("a b"), None);
        let status = "Name:\tringlb\nCapInh:\t0000000000000000\nCapEff:\t0000000000000400\n";
        assert_eq!(effective_caps(status), Some(1 << CAP_NET_BIND_SERVICE));
        assert_eq!(effective_caps("Name: x\n"), None);
    }

    #[test]
    fn directories_are_told_apart() {
        let dir = std::env::temp_dir().join(format!("ringlb-doctor-dir-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(DirState::of(&dir), DirState::Writable);
        assert_eq!(
            DirState::of(&dir.join("missing")),
            DirState::Missing {
                parent_writable: true
            }
        );
        assert_eq!(
            DirState::of(Path::new("/nonexistent-ringlb/a/b")),
            DirState::Missing {
                parent_writable: false
            }
        );
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn a_held_port_is_taken_and_a_free_one_free() {
        let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = held.local_addr().unwrap();
        // Our own socket: the /proc scan skips own sockets, the trial bind does not.
        assert!(matches!(bind_state(addr, false), BindState::Taken { .. }));
        drop(held);
        assert_eq!(bind_state(addr, false), BindState::Free);
        assert_eq!(
            bind_state("127.0.0.1:0".parse().unwrap(), true),
            BindState::Free
        );
        // TEST-NET-1 is on no interface here.
        assert!(matches!(
            bind_state("192.0.2.1:7000".parse().unwrap(), false),
            BindState::NotLocal(_)
        ));
    }
}
