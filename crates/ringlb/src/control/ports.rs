//! Never join another process's SO_REUSEPORT group. Two processes of the same user that
//! both set SO_REUSEPORT can bind the same address and port, and the kernel then splits
//! new connections (or UDP flows) between them without a word: a second ringlb started
//! on another file that names a port the first one serves would silently take a share of
//! its clients. So before binding a listener, and once more right after (to catch a
//! process that bound in between), ringlb looks for a socket on that address and port
//! that is not its own and refuses to serve it.
//!
//! How: the kernel's socket tables in /proc/net/{tcp,tcp6} (listening sockets) or
//! /proc/net/{udp,udp6} (unconnected bound sockets) list every such socket with its local
//! address and inode; a socket is ours when /proc/self/fd has a descriptor for that inode.
//! This sees every process's sockets whatever its user and whatever it set, needs no
//! privilege, and unlike a trial bind or connect it never touches the other socket. The
//! owner's pid is found by scanning /proc/*/fd for the inode (root sees every process;
//! otherwise it may stay unknown).
//!
//! Overlap follows the kernel's own rule: the same port and the same address, or a
//! wildcard on either side. ringlb's IPv6 sockets are IPv6-only, but /proc does not say
//! whether another process's `[::]` socket is, so such a socket counts as covering
//! IPv4 too.

use std::fs;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd};

use thiserror::Error;

/// Another process's socket on a listener's address.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("{protocol} {wanted} is already served by {owner} (its socket on {theirs}); refusing to share the port through SO_REUSEPORT, which would silently split its clients between both processes")]
pub struct PortTaken {
    pub protocol: &'static str,
    pub wanted: SocketAddr,
    pub theirs: SocketAddr,
    pub owner: Owner,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Owner {
    Pid(u32),
    Unknown,
}

impl std::fmt::Display for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Owner::Pid(pid) => write!(f, "another process (pid {pid})"),
            Owner::Unknown => f.write_str("another process (pid not visible to this user)"),
        }
    }
}

/// One socket of the kernel's table: local address and inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    local: SocketAddr,
    inode: u64,
}

/// Looks for a socket that is not ours on `addr` (`udp` or tcp). `own` lists inodes
/// known to be ours (sockets just bound), so the common case reads no /proc/self/fd.
/// Port 0 asks for a fresh port: never a conflict. A table that cannot be read (no
/// /proc) gives no verdict: the bind goes on as it always did.
pub fn check(addr: SocketAddr, udp: bool, own: &[u64]) -> Result<(), PortTaken> {
    if addr.port() == 0 {
        return Ok(());
    }
    let (tables, protocol) = if udp {
        (["/proc/net/udp", "/proc/net/udp6"], "udp")
    } else {
        (["/proc/net/tcp", "/proc/net/tcp6"], "tcp")
    };
    // The tables list every socket (a busy host: tens of thousands of connections); only
    // lines naming the port are parsed.
    let port_field = format!(":{:04X} ", addr.port());
    let mut candidates: Vec<Entry> = Vec::new();
    for table in tables {
        let Ok(text) = fs::read_to_string(table) else {
            continue;
        };
        candidates.extend(
            text.lines()
                .skip(1)
                .filter(|line| line.contains(port_field.as_str()))
                .filter_map(|line| parse_entry(line, udp))
                .filter(|e| overlaps(addr, e.local) && !own.contains(&e.inode)),
        );
    }
    if candidates.is_empty() {
        return Ok(());
    }
    let mine = own_socket_inodes();
    match candidates.into_iter().find(|e| !mine.contains(&e.inode)) {
        None => Ok(()),
        Some(e) => Err(PortTaken {
            protocol,
            wanted: addr,
            theirs: e.local,
            owner: find_owner(e.inode).map_or(Owner::Unknown, Owner::Pid),
        }),
    }
}

/// The inode of a socket we hold.
pub fn inode(socket: &impl AsFd) -> io::Result<u64> {
    Ok(nix::sys::stat::fstat(socket.as_fd().as_raw_fd())?.st_ino)
}

/// One line of /proc/net/{tcp,udp} (or their IPv6 twins): `sl local rem st ... uid
/// timeout inode ...`. A TCP socket counts when it listens (state 0A); a UDP one when it
/// is not connected (remote port 0): the sockets a new listener would share its traffic
/// with.
fn parse_entry(line: &str, udp: bool) -> Option<Entry> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let (local, remote, state, inode) = (
        fields.get(1)?,
        fields.get(2)?,
        fields.get(3)?,
        fields.get(9)?,
    );
    let counts = if udp {
        remote.rsplit_once(':').map(|(_, port)| port) == Some("0000")
    } else {
        *state == "0A"
    };
    if !counts {
        return None;
    }
    Some(Entry {
        local: parse_addr(local)?,
        inode: inode.parse().ok()?,
    })
}

/// `0100007F:1F90` (IPv4) or 32 hex digits `:PORT` (IPv6). The address is the kernel's
/// in-memory bytes printed as native-endian 32-bit words; the port is a plain number.
fn parse_addr(text: &str) -> Option<SocketAddr> {
    let (ip, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| -> Option<[u8; 4]> {
        let w = u32::from_str_radix(ip.get(i * 8..i * 8 + 8)?, 16).ok()?;
        Some(w.to_ne_bytes())
    };
    let ip = match ip.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        32 => {
            let mut bytes = [0u8; 16];
            for i in 0..4 {
                bytes[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            IpAddr::V6(Ipv6Addr::from(bytes))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// Whether a socket on `theirs` would take traffic meant for a listener on `ours`.
fn overlaps(ours: SocketAddr, theirs: SocketAddr) -> bool {
    if ours.port() != theirs.port() {
        return false;
    }
    let (a, b) = (canonical(ours.ip()), canonical(theirs.ip()));
    if a == b {
        return true;
    }
    match (a, b) {
        // Their [::] may be dual-stack: it covers everything.
        (_, IpAddr::V6(t)) if t.is_unspecified() => true,
        (IpAddr::V4(_), IpAddr::V4(t)) => t.is_unspecified() || a.is_unspecified(),
        // Ours is IPv6-only: a wildcard of ours covers their IPv6 addresses only.
        (IpAddr::V6(o), IpAddr::V6(_)) => o.is_unspecified(),
        _ => false,
    }
}

/// `::ffff:a.b.c.d` is the IPv4 address a.b.c.d.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn socket_inode_of_link(link: &std::path::Path) -> Option<u64> {
    let target = fs::read_link(link).ok()?;
    let text = target.to_str()?;
    text.strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

fn own_socket_inodes() -> Vec<u64> {
    fs::read_dir("/proc/self/fd")
        .map(|dir| {
            dir.filter_map(Result::ok)
                .filter_map(|e| socket_inode_of_link(&e.path()))
                .collect()
        })
        .unwrap_or_default()
}

/// The pid of a process holding socket `inode`, if this user may see it.
fn find_owner(inode: u64) -> Option<u32> {
    let me = std::process::id();
    fs::read_dir("/proc")
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me)
        .find(|pid| {
            fs::read_dir(format!("/proc/{pid}/fd")).is_ok_and(|fds| {
                fds.filter_map(Result::ok)
                    .any(|fd| socket_inode_of_link(&fd.path()) == Some(inode))
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn proc_lines_parse() {
        let tcp = "   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 123456 1 0000000000000000 100 0 0 10 0";
        assert_eq!(
            parse_entry(tcp, false),
            Some(Entry {
                local: sa("127.0.0.1:8080"),
                inode: 123456
            })
        );
        let established = tcp.replace(" 0A ", " 01 ");
        assert_eq!(parse_entry(&established, false), None);
        let tcp6 = "   1: 00000000000000000000000001000000:1F91 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 42 1 0 100 0 0 10 0";
        assert_eq!(parse_entry(tcp6, false).unwrap().local, sa("[::1]:8081"));
        let mapped = "   2: 0000000000000000FFFF00000100007F:0050 00000000000000000000000000000000:0000 0A 0 0 0 0 0 7 1";
        assert_eq!(
            parse_entry(mapped, false).unwrap().local,
            sa("[::ffff:127.0.0.1]:80")
        );
        let udp = " 1234: 00000000:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000   0   0 99 2 0 0";
        assert_eq!(parse_entry(udp, true).unwrap().local, sa("0.0.0.0:53"));
        let connected = " 1234: 0100007F:9C40 0100007F:0035 01 00000000:00000000 00:00000000 00000000   0   0 98 2 0 0";
        assert_eq!(parse_entry(connected, true), None);
        for junk in [
            "",
            "sl local",
            "   0: zz:1F90 x 0A a b c d e 1",
            "   0: 0100007F:1F90 0:0 0A a b c d e x",
        ] {
            assert_eq!(parse_entry(junk, false), None, "{junk:?}");
        }
    }

    #[test]
    fn overlap_rules() {
        for (ours, theirs, want) in [
            ("127.0.0.1:80", "127.0.0.1:80", true),
            ("127.0.0.1:80", "127.0.0.1:81", false),
            ("127.0.0.1:80", "127.0.0.2:80", false),
            ("127.0.0.1:80", "0.0.0.0:80", true),
            ("0.0.0.0:80", "10.0.0.1:80", true),
            ("127.0.0.1:80", "[::]:80", true),
            ("127.0.0.1:80", "[::ffff:127.0.0.1]:80", true),
            ("[::]:80", "127.0.0.1:80", false),
            ("[::]:80", "[::1]:80", true),
            ("[::1]:80", "[::1]:80", true),
            ("[::1]:80", "[::2]:80", false),
            ("[::1]:80", "0.0.0.0:80", false),
        ] {
            assert_eq!(overlaps(sa(ours), sa(theirs)), want, "{ours} vs {theirs}");
        }
    }

    #[test]
    fn another_processes_listener_is_found_and_our_own_is_not() {
        let ours = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = ours.local_addr().unwrap();
        // Our own socket: no conflict, whether or not we name its inode.
        assert_eq!(check(addr, false, &[]), Ok(()));
        assert_eq!(check(addr, false, &[inode(&ours).unwrap()]), Ok(()));
        assert_eq!(
            check(addr, true, &[]),
            Ok(()),
            "a tcp socket is no udp conflict"
        );
        assert_eq!(check(SocketAddr::new(addr.ip(), 0), false, &[]), Ok(()));
        // The same socket seen as somebody else's: a process that holds it but is not us.
        let own = own_socket_inodes();
        assert!(own.contains(&inode(&ours).unwrap()));
    }
}
