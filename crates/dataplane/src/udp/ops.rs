//! Raw io_uring datagram operations for the UDP path: recvmsg with source and destination
//! address, recv and send on a connected socket, sendmsg to a client with a chosen source
//! address. Each op owns its [`Dgram`] (buffer, msghdr, iovec, sockaddr, control) and the
//! socket `Rc` until completion, so nothing the kernel touches can move or be freed early.

use std::io;
use std::mem;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsRawFd;
use std::rc::Rc;

use io_uring::{opcode, types};
use socket2::Socket;

use crate::uring::{submit, to_result};

/// Bytes kept free in front of every payload, so a PROXY v2 header (at most 52 bytes) can
/// be written in front of a received datagram and sent with it without a copy.
pub(crate) const HEADROOM: usize = 64;
/// Receive capacity: above the largest UDP payload (65,507 over IPv4, 65,527 over IPv6),
/// so only an IPv6 jumbogram could be truncated — and that is detected, never forwarded.
pub(crate) const MAX_DATAGRAM: usize = 65_536;
const CONTROL_LEN: usize = 64;

#[repr(C, align(8))]
struct Control([u8; CONTROL_LEN]);

/// One datagram's buffer and the kernel-facing headers that describe it. Boxed so the
/// self-referencing pointers (msghdr → iovec, name, control) stay valid while it moves
/// between the ops that own it.
pub(crate) struct Dgram {
    /// `HEADROOM + MAX_DATAGRAM` bytes; payloads live at `HEADROOM..`.
    pub(crate) buf: Vec<u8>,
    name: libc::sockaddr_storage,
    control: Control,
    hdr: libc::msghdr,
    iov: libc::iovec,
}

impl Dgram {
    pub(crate) fn new() -> Box<Dgram> {
        Box::new(Dgram {
            buf: vec![0u8; HEADROOM + MAX_DATAGRAM],
            // SAFETY: all-zero is a valid value for these plain C structs (null pointers,
            // zero lengths, AF_UNSPEC).
            name: unsafe { mem::zeroed() },
            control: Control([0; CONTROL_LEN]),
            // SAFETY: as above; the pointers are set before each use.
            hdr: unsafe { mem::zeroed() },
            iov: libc::iovec {
                iov_base: std::ptr::null_mut(),
                iov_len: 0,
            },
        })
    }

    /// The payload of length `len` received at `HEADROOM`.
    #[cfg(test)]
    pub(crate) fn payload(&self, len: usize) -> &[u8] {
        let end = (HEADROOM + len).min(self.buf.len());
        &self.buf[HEADROOM..end]
    }
}

/// What a recvmsg found.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RecvMeta {
    /// The datagram's real length (may exceed what was copied when `truncated`).
    pub(crate) len: usize,
    /// The datagram did not fit: it must be dropped, never forwarded cut short.
    pub(crate) truncated: bool,
    pub(crate) source: Option<SocketAddr>,
    /// The address the client sent to (IP_PKTINFO / IPV6_PKTINFO), when enabled.
    pub(crate) destination: Option<IpAddr>,
}

/// recvmsg into `d.buf[HEADROOM..HEADROOM + limit]`. MSG_TRUNC in the flags makes the
/// kernel return the datagram's real length, and MSG_TRUNC in msg_flags marks a cut.
pub(crate) async fn recvmsg(
    socket: &Rc<Socket>,
    mut d: Box<Dgram>,
    limit: usize,
) -> (io::Result<RecvMeta>, Box<Dgram>) {
    let cap = limit.min(d.buf.len().saturating_sub(HEADROOM));
    {
        let dg = &mut *d;
        dg.iov = libc::iovec {
            iov_base: dg.buf[HEADROOM..].as_mut_ptr().cast(),
            iov_len: cap,
        };
        // SAFETY: all-zero is a valid msghdr; every pointer set below points into `dg`,
        // which is boxed and owned by the op until completion.
        dg.hdr = unsafe { mem::zeroed() };
        dg.hdr.msg_name = (&mut dg.name as *mut libc::sockaddr_storage).cast();
        dg.hdr.msg_namelen = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        dg.hdr.msg_iov = &mut dg.iov;
        dg.hdr.msg_iovlen = 1;
        dg.hdr.msg_control = dg.control.0.as_mut_ptr().cast();
        dg.hdr.msg_controllen = CONTROL_LEN as _;
    }
    let sqe = opcode::RecvMsg::new(types::Fd(socket.as_raw_fd()), &mut d.hdr)
        .flags(libc::MSG_TRUNC as u32)
        .build();
    let (res, (_socket, d)) = submit((Rc::clone(socket), d), sqe).await;
    let len = match to_result(res) {
        Ok(n) => n,
        Err(e) => return (Err(e), d),
    };
    let truncated = len > cap || d.hdr.msg_flags & libc::MSG_TRUNC != 0;
    let source = sockaddr_to_std(&d.name, d.hdr.msg_namelen);
    let destination = parse_pktinfo(&d.hdr);
    (
        Ok(RecvMeta {
            len,
            truncated,
            source,
            destination,
        }),
        d,
    )
}

/// Non-blocking recv on a connected socket into `d.buf[HEADROOM..]`; returns the real
/// length (MSG_TRUNC), which exceeds `MAX_DATAGRAM` when the datagram was cut.
pub(crate) async fn recv_dontwait(
    socket: &Rc<Socket>,
    mut d: Box<Dgram>,
) -> (io::Result<usize>, Box<Dgram>) {
    let cap = d.buf.len().saturating_sub(HEADROOM);
    let ptr = d.buf[HEADROOM..].as_mut_ptr();
    let sqe = opcode::Recv::new(types::Fd(socket.as_raw_fd()), ptr, cap as u32)
        .flags(libc::MSG_TRUNC | libc::MSG_DONTWAIT)
        .build();
    let (res, (_socket, d)) = submit((Rc::clone(socket), d), sqe).await;
    (to_result(res), d)
}

/// send `d.buf[start..end]` as one datagram on a connected socket.
pub(crate) async fn send(
    socket: &Rc<Socket>,
    d: Box<Dgram>,
    start: usize,
    end: usize,
) -> (io::Result<usize>, Box<Dgram>) {
    let end = end.min(d.buf.len());
    let start = start.min(end);
    let ptr = d.buf[start..].as_ptr();
    let sqe = opcode::Send::new(types::Fd(socket.as_raw_fd()), ptr, (end - start) as u32)
        .flags(libc::MSG_NOSIGNAL)
        .build();
    let (res, (_socket, d)) = submit((Rc::clone(socket), d), sqe).await;
    (to_result(res), d)
}

/// sendmsg `d.buf[HEADROOM..HEADROOM + len]` to `to`; with `from`, the source address is
/// set by IP_PKTINFO / IPV6_PKTINFO (a wildcard-bound listener answers from the address
/// the client sent to, not from whatever the route would pick).
pub(crate) async fn sendmsg_to(
    socket: &Rc<Socket>,
    mut d: Box<Dgram>,
    len: usize,
    to: SocketAddr,
    from: Option<IpAddr>,
) -> (io::Result<usize>, Box<Dgram>) {
    let len = len.min(d.buf.len().saturating_sub(HEADROOM));
    {
        let dg = &mut *d;
        dg.iov = libc::iovec {
            iov_base: dg.buf[HEADROOM..].as_mut_ptr().cast(),
            iov_len: len,
        };
        let namelen = std_to_sockaddr(to, &mut dg.name);
        // SAFETY: as in `recvmsg`: pointers into the boxed `dg`, owned by the op.
        dg.hdr = unsafe { mem::zeroed() };
        dg.hdr.msg_name = (&mut dg.name as *mut libc::sockaddr_storage).cast();
        dg.hdr.msg_namelen = namelen;
        dg.hdr.msg_iov = &mut dg.iov;
        dg.hdr.msg_iovlen = 1;
        if let Some(from) = from {
            let controllen = write_pktinfo(&mut dg.control, from, to.is_ipv6());
            if controllen > 0 {
                dg.hdr.msg_control = dg.control.0.as_mut_ptr().cast();
                dg.hdr.msg_controllen = controllen as _;
            }
        }
    }
    let sqe = opcode::SendMsg::new(types::Fd(socket.as_raw_fd()), &d.hdr)
        .flags(libc::MSG_NOSIGNAL as u32)
        .build();
    let (res, (_socket, d)) = submit((Rc::clone(socket), d), sqe).await;
    (to_result(res), d)
}

/// Ask the kernel for the destination address of each datagram (wildcard listeners).
pub(crate) fn enable_pktinfo(socket: &Socket, ipv6: bool) -> io::Result<()> {
    let one: libc::c_int = 1;
    let (level, name) = if ipv6 {
        (libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO)
    } else {
        (libc::IPPROTO_IP, libc::IP_PKTINFO)
    };
    // SAFETY: a valid fd and a c_int option value of the right size.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            name,
            (&one as *const libc::c_int).cast(),
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn sockaddr_to_std(ss: &libc::sockaddr_storage, len: libc::socklen_t) -> Option<SocketAddr> {
    match ss.ss_family as libc::c_int {
        libc::AF_INET if len as usize >= mem::size_of::<libc::sockaddr_in>() => {
            // SAFETY: family and length say this storage holds a sockaddr_in.
            let a = unsafe { &*(ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 if len as usize >= mem::size_of::<libc::sockaddr_in6>() => {
            // SAFETY: family and length say this storage holds a sockaddr_in6.
            let a = unsafe { &*(ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(a.sin6_addr.s6_addr),
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

fn std_to_sockaddr(addr: SocketAddr, ss: &mut libc::sockaddr_storage) -> libc::socklen_t {
    // SAFETY: all-zero is a valid sockaddr_storage.
    *ss = unsafe { mem::zeroed() };
    match addr {
        SocketAddr::V4(a) => {
            // SAFETY: sockaddr_storage is large and aligned enough for any sockaddr.
            let sin =
                unsafe { &mut *(ss as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = a.port().to_be();
            sin.sin_addr.s_addr = u32::from(*a.ip()).to_be();
            mem::size_of::<libc::sockaddr_in>() as libc::socklen_t
        }
        SocketAddr::V6(a) => {
            // SAFETY: as above.
            let sin6 =
                unsafe { &mut *(ss as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = a.port().to_be();
            sin6.sin6_addr.s6_addr = a.ip().octets();
            sin6.sin6_flowinfo = a.flowinfo();
            sin6.sin6_scope_id = a.scope_id();
            mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t
        }
    }
}

/// The destination address in a received msghdr's IP_PKTINFO / IPV6_PKTINFO, if any.
// msg_controllen is usize on glibc, u32 on musl: the cast is needed on some targets.
#[allow(clippy::unnecessary_cast)]
fn parse_pktinfo(hdr: &libc::msghdr) -> Option<IpAddr> {
    if hdr.msg_control.is_null() || (hdr.msg_controllen as usize) < mem::size_of::<libc::cmsghdr>()
    {
        return None;
    }
    // SAFETY: the kernel wrote `msg_controllen` bytes of cmsgs into `msg_control`; the
    // CMSG_* helpers stay within that length.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(hdr);
        while !cmsg.is_null() {
            let c = &*cmsg;
            if c.cmsg_level == libc::IPPROTO_IP && c.cmsg_type == libc::IP_PKTINFO {
                let info =
                    std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::in_pktinfo>());
                let dst = Ipv4Addr::from(u32::from_be(info.ipi_addr.s_addr));
                // A broadcast or multicast destination cannot be a source: use the
                // interface address the kernel suggests instead.
                let ip = if dst.is_broadcast() || dst.is_multicast() {
                    Ipv4Addr::from(u32::from_be(info.ipi_spec_dst.s_addr))
                } else {
                    dst
                };
                return Some(IpAddr::V4(ip));
            }
            if c.cmsg_level == libc::IPPROTO_IPV6 && c.cmsg_type == libc::IPV6_PKTINFO {
                let info =
                    std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::in6_pktinfo>());
                return Some(IpAddr::V6(Ipv6Addr::from(info.ipi6_addr.s6_addr)));
            }
            cmsg = libc::CMSG_NXTHDR(hdr, cmsg);
        }
    }
    None
}

/// Writes one IP_PKTINFO / IPV6_PKTINFO cmsg asking for source `from`; returns its length
/// (0 when the family of `from` cannot be used on this socket).
fn write_pktinfo(control: &mut Control, from: IpAddr, socket_v6: bool) -> usize {
    control.0 = [0; CONTROL_LEN];
    // SAFETY: a zeroed msghdr pointing at our aligned control buffer lets CMSG_FIRSTHDR
    // return its start; the payload sizes are below CONTROL_LEN (checked by CMSG_SPACE).
    unsafe {
        let mut hdr: libc::msghdr = mem::zeroed();
        hdr.msg_control = control.0.as_mut_ptr().cast();
        hdr.msg_controllen = CONTROL_LEN as _;
        let cmsg = libc::CMSG_FIRSTHDR(&hdr);
        if cmsg.is_null() {
            return 0;
        }
        match (from, socket_v6) {
            (IpAddr::V4(ip), false) => {
                let size = mem::size_of::<libc::in_pktinfo>() as u32;
                if libc::CMSG_SPACE(size) as usize > CONTROL_LEN {
                    return 0;
                }
                (*cmsg).cmsg_level = libc::IPPROTO_IP;
                (*cmsg).cmsg_type = libc::IP_PKTINFO;
                (*cmsg).cmsg_len = libc::CMSG_LEN(size) as _;
                let info = libc::in_pktinfo {
                    ipi_ifindex: 0,
                    ipi_spec_dst: libc::in_addr {
                        s_addr: u32::from(ip).to_be(),
                    },
                    ipi_addr: libc::in_addr { s_addr: 0 },
                };
                std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::in_pktinfo>(), info);
                libc::CMSG_SPACE(size) as usize
            }
            (ip, true) => {
                let ip6 = match ip {
                    IpAddr::V6(v6) => v6,
                    IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                };
                let size = mem::size_of::<libc::in6_pktinfo>() as u32;
                if libc::CMSG_SPACE(size) as usize > CONTROL_LEN {
                    return 0;
                }
                (*cmsg).cmsg_level = libc::IPPROTO_IPV6;
                (*cmsg).cmsg_type = libc::IPV6_PKTINFO;
                (*cmsg).cmsg_len = libc::CMSG_LEN(size) as _;
                let info = libc::in6_pktinfo {
                    ipi6_addr: libc::in6_addr {
                        s6_addr: ip6.octets(),
                    },
                    ipi6_ifindex: 0,
                };
                std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::in6_pktinfo>(), info);
                libc::CMSG_SPACE(size) as usize
            }
            (IpAddr::V6(_), false) => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use socket2::{Domain, Protocol, SockAddr, Type};
    use std::net::UdpSocket;

    fn udp_socket(addr: &str) -> Socket {
        let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).unwrap();
        s.bind(&SockAddr::from(addr.parse::<SocketAddr>().unwrap()))
            .unwrap();
        s
    }

    #[test]
    fn sockaddr_roundtrip() {
        // SAFETY: all-zero is a valid sockaddr_storage (AF_UNSPEC).
        let mut ss: libc::sockaddr_storage = unsafe { mem::zeroed() };
        for a in ["192.0.2.7:5353", "[2001:db8::5]:53"] {
            let a: SocketAddr = a.parse().unwrap();
            let len = std_to_sockaddr(a, &mut ss);
            assert_eq!(sockaddr_to_std(&ss, len), Some(a));
        }
    }

    /// Truncation is reported with the real length, and a zero-length datagram is a
    /// datagram (length 0), not an end of stream.
    #[test]
    fn recvmsg_detects_truncation_and_zero_length() {
        tokio_uring::start(async {
            let server = Rc::new(udp_socket("127.0.0.1:0"));
            let server_addr = server.local_addr().unwrap().as_socket().unwrap();
            let client = UdpSocket::bind("127.0.0.1:0").unwrap();
            client.send_to(&[7u8; 2000], server_addr).unwrap();
            client.send_to(&[], server_addr).unwrap();
            client.send_to(b"fits", server_addr).unwrap();
            let d = Dgram::new();
            let (meta, d) = recvmsg(&server, d, 1000).await;
            let meta = meta.unwrap();
            assert!(meta.truncated);
            assert_eq!(meta.len, 2000);
            assert_eq!(meta.source, Some(client.local_addr().unwrap()));
            let (meta, d) = recvmsg(&server, d, 1000).await;
            let meta = meta.unwrap();
            assert!(!meta.truncated);
            assert_eq!(meta.len, 0);
            let (meta, d) = recvmsg(&server, d, 1000).await;
            let meta = meta.unwrap();
            assert!(!meta.truncated);
            assert_eq!(d.payload(meta.len), b"fits");
        });
    }

    /// A wildcard socket learns the destination address and answers from it.
    #[test]
    fn pktinfo_reports_destination_and_sets_source() {
        tokio_uring::start(async {
            let server = Rc::new(udp_socket("0.0.0.0:0"));
            enable_pktinfo(&server, false).unwrap();
            let port = server.local_addr().unwrap().as_socket().unwrap().port();
            let client = UdpSocket::bind("127.0.0.1:0").unwrap();
            client
                .set_read_timeout(Some(std::time::Duration::from_secs(5)))
                .unwrap();
            let to: SocketAddr = SocketAddr::from(([127, 0, 0, 3], port));
            client.send_to(b"hi", to).unwrap();
            let (meta, mut d) = recvmsg(&server, Dgram::new(), MAX_DATAGRAM).await;
            let meta = meta.unwrap();
            assert_eq!(
                meta.destination,
                Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3)))
            );
            d.buf[HEADROOM..HEADROOM + 5].copy_from_slice(b"hello");
            let (res, _d) = sendmsg_to(&server, d, 5, meta.source.unwrap(), meta.destination).await;
            assert_eq!(res.unwrap(), 5);
            let mut buf = [0u8; 16];
            let (n, from) = client.recv_from(&mut buf).unwrap();
            assert_eq!(&buf[..n], b"hello");
            assert_eq!(
                from, to,
                "the reply must come from the address the client sent to"
            );
        });
    }

    #[test]
    fn connected_send_and_recv_dontwait() {
        tokio_uring::start(async {
            let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
            let s = Rc::new(udp_socket("127.0.0.1:0"));
            s.connect(&SockAddr::from(peer.local_addr().unwrap()))
                .unwrap();
            let (res, d) = recv_dontwait(&s, Dgram::new()).await;
            assert_eq!(res.unwrap_err().raw_os_error(), Some(libc::EAGAIN));
            let mut d = d;
            d.buf[10..13].copy_from_slice(b"abc");
            let (res, d) = send(&s, d, 10, 13).await;
            assert_eq!(res.unwrap(), 3);
            let mut buf = [0u8; 8];
            let (n, from) = peer.recv_from(&mut buf).unwrap();
            assert_eq!(&buf[..n], b"abc");
            peer.send_to(b"xyz!", from).unwrap();
            // Loopback delivery is synchronous: the datagram is queued before send_to returns.
            let (res, d) = recv_dontwait(&s, d).await;
            assert_eq!(res.unwrap(), 4);
            assert_eq!(d.payload(4), b"xyz!");
        });
    }
}
