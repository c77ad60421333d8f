//! PROXY protocol v1 and v2 through a running `ringlb`: a backend written here parses the
//! header strictly (HAProxy's spec: v1 text line, v2 signature / version / command /
//! family / length / addresses / ports), records it, then echoes. The client connects from
//! a known source and the test compares the parsed header with the client's own
//! `local_addr()` and the listener's address, exactly. IPv4 and IPv6 (`::1`), TCP and (v2)
//! UDP, where every datagram carries its own header.

use std::io::{Read, Write};
use std::net::{
    IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket,
};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use ringlb_testkit::*;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_ringlb"))
}

const V2_SIGNATURE: [u8; 12] = [
    0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A,
];
/// The spec's bound on a v1 line, CRLF included.
const V1_MAX_LINE: usize = 107;

/// A parsed PROXY header.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Header {
    V1 {
        /// `TCP4` or `TCP6`.
        family: String,
        src: SocketAddr,
        dst: SocketAddr,
    },
    V2 {
        /// Low nibble of byte 13: 0 LOCAL, 1 PROXY.
        command: u8,
        /// High nibble of byte 14: 1 AF_INET, 2 AF_INET6.
        family: u8,
        /// Low nibble of byte 14: 1 STREAM, 2 DGRAM.
        transport: u8,
        src: SocketAddr,
        dst: SocketAddr,
        /// Bytes after the addresses (TLVs); ringlb sends none.
        tlv_len: usize,
    },
}

/// What the backend saw on one connection.
#[derive(Debug, Clone)]
struct Seen {
    /// The parsed header, or why it did not parse.
    header: Result<Header, String>,
    /// Length of the header as received, in bytes.
    raw_len: usize,
}

fn read_exact_or(s: &mut TcpStream, buf: &mut [u8], what: &str) -> Result<(), String> {
    s.read_exact(buf)
        .map_err(|e| format!("reading {what} ({} bytes): {e}", buf.len()))
}

/// Reads one header (v1 or v2, told apart by the first byte) from `s`, consuming exactly
/// the header's bytes and nothing after it.
fn read_header(s: &mut TcpStream) -> (Result<Header, String>, usize) {
    let mut first = [0u8; 1];
    if let Err(e) = read_exact_or(s, &mut first, "the first byte") {
        return (Err(e), 0);
    }
    match first[0] {
        b'P' => read_v1(s, first[0]),
        0x0D => read_v2(s, first[0]),
        b => (
            Err(format!(
                "first byte {b:#04x} starts neither a v1 nor a v2 header"
            )),
            1,
        ),
    }
}

fn read_v1(s: &mut TcpStream, first: u8) -> (Result<Header, String>, usize) {
    let mut line = vec![first];
    while !line.ends_with(b"\r\n") {
        if line.len() >= V1_MAX_LINE {
            return (
                Err(format!("v1 line longer than {V1_MAX_LINE} bytes: {line:?}")),
                line.len(),
            );
        }
        let mut b = [0u8; 1];
        if let Err(e) = read_exact_or(s, &mut b, "a v1 line") {
            return (
                Err(format!("{e}; got {:?}", String::from_utf8_lossy(&line))),
                line.len(),
            );
        }
        line.push(b[0]);
    }
    let n = line.len();
    (parse_v1(&line), n)
}

fn parse_v1(line: &[u8]) -> Result<Header, String> {
    let text = std::str::from_utf8(line).map_err(|e| format!("v1 line is not ASCII: {e}"))?;
    let body = text
        .strip_suffix("\r\n")
        .ok_or_else(|| format!("v1 line does not end in CRLF: {text:?}"))?;
    let fields: Vec<&str> = body.split(' ').collect();
    if fields.len() != 6 || fields[0] != "PROXY" {
        return Err(format!(
            "v1 line must be `PROXY FAM SRC DST SPORT DPORT`: {text:?}"
        ));
    }
    let family = fields[1];
    let ip = |f: &str| -> Result<IpAddr, String> {
        match family {
            "TCP4" => f
                .parse::<Ipv4Addr>()
                .map(IpAddr::V4)
                .map_err(|e| format!("TCP4 address {f:?}: {e}")),
            "TCP6" => f
                .parse::<Ipv6Addr>()
                .map(IpAddr::V6)
                .map_err(|e| format!("TCP6 address {f:?}: {e}")),
            other => Err(format!("v1 family {other:?} is not TCP4 or TCP6")),
        }
    };
    let port = |f: &str| -> Result<u16, String> {
        // The spec forbids leading zeros and signs.
        if f.is_empty()
            || (f.len() > 1 && f.starts_with('0'))
            || !f.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(format!("v1 port {f:?} is not a plain decimal"));
        }
        f.parse::<u16>().map_err(|e| format!("v1 port {f:?}: {e}"))
    };
    Ok(Header::V1 {
        family: family.to_string(),
        src: SocketAddr::new(ip(fields[2])?, port(fields[4])?),
        dst: SocketAddr::new(ip(fields[3])?, port(fields[5])?),
    })
}

fn read_v2(s: &mut TcpStream, first: u8) -> (Result<Header, String>, usize) {
    let mut fixed = [0u8; 16];
    fixed[0] = first;
    if let Err(e) = read_exact_or(s, &mut fixed[1..], "the v2 fixed part") {
        return (Err(e), 1);
    }
    if fixed[..12] != V2_SIGNATURE {
        return (Err(format!("bad v2 signature {:02x?}", &fixed[..12])), 16);
    }
    let len = u16::from_be_bytes([fixed[14], fixed[15]]) as usize;
    let mut rest = vec![0u8; len];
    if let Err(e) = read_exact_or(s, &mut rest, "the v2 address block") {
        return (Err(e), 16);
    }
    (parse_v2(&fixed, &rest), 16 + len)
}

fn parse_v2(fixed: &[u8; 16], rest: &[u8]) -> Result<Header, String> {
    let version = fixed[12] >> 4;
    let command = fixed[12] & 0x0F;
    if version != 2 {
        return Err(format!("v2 version nibble is {version}, not 2"));
    }
    if command > 1 {
        return Err(format!(
            "v2 command {command} is neither LOCAL (0) nor PROXY (1)"
        ));
    }
    let family = fixed[13] >> 4;
    let transport = fixed[13] & 0x0F;
    let (src, dst, used) = match family {
        1 => {
            if rest.len() < 12 {
                return Err(format!(
                    "AF_INET needs 12 address bytes, length is {}",
                    rest.len()
                ));
            }
            let a = |i: usize| Ipv4Addr::new(rest[i], rest[i + 1], rest[i + 2], rest[i + 3]);
            let p = |i: usize| u16::from_be_bytes([rest[i], rest[i + 1]]);
            (
                SocketAddr::new(a(0).into(), p(8)),
                SocketAddr::new(a(4).into(), p(10)),
                12,
            )
        }
        2 => {
            if rest.len() < 36 {
                return Err(format!(
                    "AF_INET6 needs 36 address bytes, length is {}",
                    rest.len()
                ));
            }
            let a = |i: usize| {
                let mut o = [0u8; 16];
                o.copy_from_slice(&rest[i..i + 16]);
                Ipv6Addr::from(o)
            };
            let p = |i: usize| u16::from_be_bytes([rest[i], rest[i + 1]]);
            (
                SocketAddr::new(a(0).into(), p(32)),
                SocketAddr::new(a(16).into(), p(34)),
                36,
            )
        }
        f => {
            return Err(format!(
                "v2 address family {f} is not AF_INET (1) or AF_INET6 (2)"
            ))
        }
    };
    if transport != 1 && transport != 2 {
        return Err(format!(
            "v2 transport {transport} is neither STREAM (1) nor DGRAM (2)"
        ));
    }
    Ok(Header::V2 {
        command,
        family,
        transport,
        src,
        dst,
        tlv_len: rest.len() - used,
    })
}

#[derive(Default)]
struct Shared {
    stop: AtomicBool,
    seen: Mutex<Vec<Seen>>,
    live: Mutex<Vec<TcpStream>>,
    handlers: Mutex<Vec<JoinHandle<()>>>,
}

/// Reads a PROXY header on each connection, records it, then echoes the rest.
struct ProxyBackend {
    addr: SocketAddr,
    listener: TcpListener,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl ProxyBackend {
    fn start() -> ProxyBackend {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind backend");
        let addr = listener.local_addr().expect("backend addr");
        let shared = Arc::new(Shared::default());
        let (l, sh) = (
            listener.try_clone().expect("clone listener"),
            Arc::clone(&shared),
        );
        let accept = thread::spawn(move || loop {
            let accepted = l.accept();
            if sh.stop.load(Ordering::SeqCst) {
                return;
            }
            let Ok((mut s, _)) = accepted else { continue };
            s.set_read_timeout(Some(Duration::from_secs(20)))
                .expect("SO_RCVTIMEO");
            sh.live
                .lock()
                .unwrap()
                .push(s.try_clone().expect("clone stream"));
            let sh2 = Arc::clone(&sh);
            let h = thread::spawn(move || {
                let (header, raw_len) = read_header(&mut s);
                let ok = header.is_ok();
                sh2.seen.lock().unwrap().push(Seen { header, raw_len });
                if ok {
                    let mut buf = [0u8; 4096];
                    loop {
                        match s.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                if s.write_all(&buf[..n]).is_err() {
                                    break;
                                }
                            }
                        }
                    }
                }
                let _ = s.shutdown(Shutdown::Write);
            });
            sh.handlers.lock().unwrap().push(h);
        });
        ProxyBackend {
            addr,
            listener,
            shared,
            accept: Some(accept),
        }
    }

    fn seen(&self) -> Vec<Seen> {
        self.shared.seen.lock().unwrap().clone()
    }

    fn wait_seen(&self, n: usize) -> Vec<Seen> {
        assert!(
            wait_until(Duration::from_secs(10), || self.seen().len() >= n),
            "backend saw {} header(s), expected {n}: {:?}",
            self.seen().len(),
            self.seen()
        );
        self.seen()
    }
}

impl Drop for ProxyBackend {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wakes the blocked accept(2) on Linux.
        // SAFETY: shutdown(2) on a listening fd `self.listener` owns and keeps open.
        unsafe {
            libc::shutdown(self.listener.as_raw_fd(), libc::SHUT_RDWR);
        }
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
        for s in self.shared.live.lock().unwrap().iter() {
            let _ = s.shutdown(Shutdown::Both);
        }
        for h in self.shared.handlers.lock().unwrap().drain(..) {
            let _ = h.join();
        }
    }
}

fn yaml(bind: &str, version: &str, backend: SocketAddr) -> String {
    format!(
        "access_log: false\n\
         listeners:\n\
         \x20 - name: pp\n\
         \x20   bind: \"{bind}\"\n\
         \x20   proxy_protocol: {version}\n\
         \x20   backends:\n\
         \x20     - addr: {backend}\n"
    )
}

fn connect_v6_loopback(to: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&to, Duration::from_secs(5)).expect("connect over ::1");
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    s
}

/// The client sends at once after connecting; the backend must see the header first, then
/// exactly the client's bytes (echoed back unchanged), and nothing else.
fn exchange(client: &mut TcpStream) {
    let payload = b"client bytes sent right after connect";
    client.write_all(payload).unwrap();
    let mut back = vec![0u8; payload.len()];
    client
        .read_exact(&mut back)
        .expect("echo through the backend");
    assert_eq!(
        &back[..],
        &payload[..],
        "backend must echo the client's bytes unchanged"
    );
    client.shutdown(Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    client.read_to_end(&mut rest).expect("clean end");
    assert!(rest.is_empty(), "bytes after the echo: {rest:?}");
}

fn expect_v1(family: &str, src: SocketAddr, dst: SocketAddr) -> Header {
    Header::V1 {
        family: family.to_string(),
        src,
        dst,
    }
}

fn expect_v2_stream(family: u8, src: SocketAddr, dst: SocketAddr) -> Header {
    Header::V2 {
        command: 1,
        family,
        transport: 1,
        src,
        dst,
        tlv_len: 0,
    }
}

/// Runs one connection through a listener on `bind`, from `client` (a connect closure),
/// and returns the header the backend parsed plus the client's and listener's addresses.
fn one_connection(
    bind: &str,
    version: &str,
    connect: impl Fn(SocketAddr) -> TcpStream,
) -> (Seen, SocketAddr, SocketAddr) {
    let backend = ProxyBackend::start();
    let lb = Ringlb::start(bin(), &yaml(bind, version, backend.addr));
    let listener = lb.listener_addr("pp");
    let mut c = connect(listener);
    let client = c.local_addr().unwrap();
    exchange(&mut c);
    let seen = backend.wait_seen(1);
    assert_eq!(seen.len(), 1, "one connection, one header: {seen:?}");
    (seen[0].clone(), client, listener)
}

#[test]
fn v1_ipv4_carries_exact_client_address() {
    // From 127.0.0.2 so source and destination differ.
    let (seen, client, listener) = one_connection("127.0.0.1:0", "v1", |to| {
        connect_from(Ipv4Addr::new(127, 0, 0, 2), to).expect("connect from 127.0.0.2")
    });
    assert_eq!(client.ip(), IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)));
    assert_eq!(seen.header, Ok(expect_v1("TCP4", client, listener)));
    let line = format!(
        "PROXY TCP4 127.0.0.2 127.0.0.1 {} {}\r\n",
        client.port(),
        listener.port()
    );
    assert_eq!(seen.raw_len, line.len(), "v1 header length");
}

#[test]
fn v1_ipv6_carries_exact_client_address() {
    let (seen, client, listener) = one_connection("[::1]:0", "v1", connect_v6_loopback);
    assert_eq!(client.ip(), IpAddr::V6(Ipv6Addr::LOCALHOST));
    assert!(listener.is_ipv6(), "{listener}");
    assert_eq!(seen.header, Ok(expect_v1("TCP6", client, listener)));
}

#[test]
fn v2_ipv4_carries_exact_client_address() {
    let (seen, client, listener) = one_connection("127.0.0.1:0", "v2", |to| {
        connect_from(Ipv4Addr::new(127, 0, 0, 2), to).expect("connect from 127.0.0.2")
    });
    assert_eq!(seen.header, Ok(expect_v2_stream(1, client, listener)));
    assert_eq!(seen.raw_len, 16 + 12, "v2 IPv4 header length");
}

#[test]
fn v2_ipv6_carries_exact_client_address() {
    let (seen, client, listener) = one_connection("[::1]:0", "v2", connect_v6_loopback);
    assert_eq!(client.ip(), IpAddr::V6(Ipv6Addr::LOCALHOST));
    assert_eq!(seen.header, Ok(expect_v2_stream(2, client, listener)));
    assert_eq!(seen.raw_len, 16 + 36, "v2 IPv6 header length");
}

/// The header goes out as soon as the backend connection is up, before (and without) any
/// client byte; a client that sends nothing still has its address announced.
#[test]
fn header_arrives_before_any_client_byte() {
    for version in ["v1", "v2"] {
        let backend = ProxyBackend::start();
        let lb = Ringlb::start(bin(), &yaml("127.0.0.1:0", version, backend.addr));
        let listener = lb.listener_addr("pp");
        let mut c = connect(listener);
        let client = c.local_addr().unwrap();
        // Nothing sent yet: the backend must already have a complete header.
        let seen = backend.wait_seen(1);
        let want = match version {
            "v1" => expect_v1("TCP4", client, listener),
            _ => expect_v2_stream(1, client, listener),
        };
        assert_eq!(seen[0].header, Ok(want), "{version}");
        exchange(&mut c);
    }
}

/// Many concurrent clients from different source addresses: each backend connection
/// announces its own client, never another's.
#[test]
fn each_connection_announces_its_own_client() {
    for version in ["v1", "v2"] {
        let backend = ProxyBackend::start();
        let lb = Ringlb::start(bin(), &yaml("127.0.0.1:0", version, backend.addr));
        let listener = lb.listener_addr("pp");
        let mut clients = Vec::new();
        for i in 0..20u8 {
            let c = connect_from(Ipv4Addr::new(127, 0, 1, 10 + i), listener)
                .expect("connect from 127.0.1.x");
            clients.push(c);
        }
        let seen = backend.wait_seen(clients.len());
        let mut got: Vec<SocketAddr> = seen
            .iter()
            .map(|s| match &s.header {
                Ok(Header::V1 { src, dst, .. }) | Ok(Header::V2 { src, dst, .. }) => {
                    assert_eq!(*dst, listener, "{version}: destination");
                    *src
                }
                Err(e) => panic!("{version}: header did not parse: {e}"),
            })
            .collect();
        let mut want: Vec<SocketAddr> = clients.iter().map(|c| c.local_addr().unwrap()).collect();
        got.sort();
        want.sort();
        assert_eq!(got, want, "{version}: announced sources");
        for c in &mut clients {
            exchange(c);
        }
    }
}

/// Without `proxy_protocol` the backend's first bytes are the client's own.
#[test]
fn none_sends_no_header() {
    let backend = EchoBackend::start();
    let lb = Ringlb::start(bin(), &yaml("127.0.0.1:0", "none", backend.addr()));
    let mut c = connect(lb.listener_addr("pp"));
    assert_echo(&mut c, b"PING");
    drop(c);
    assert!(backend.wait_ends(1, Duration::from_secs(10)));
    assert_eq!(
        backend.conns()[0].bytes_in,
        4,
        "backend received only the client's bytes"
    );
}

#[test]
fn parser_rejects_malformed_headers() {
    // The backend's parser must be able to fail, or the tests above prove nothing.
    assert!(parse_v1(b"PROXY TCP4 127.0.0.1 127.0.0.1 01 2\r\n").is_err());
    assert!(parse_v1(b"PROXY TCP4 ::1 127.0.0.1 1 2\r\n").is_err());
    assert!(parse_v1(b"PROXY TCP5 127.0.0.1 127.0.0.1 1 2\r\n").is_err());
    assert!(parse_v1(b"PROXY TCP4 127.0.0.1 127.0.0.1 1 2\n").is_err());
    assert!(parse_v1(b"PROXY TCP4 127.0.0.1 127.0.0.1 1 65536\r\n").is_err());
    assert_eq!(
        parse_v1(b"PROXY TCP6 ::1 ::1 5000 7000\r\n"),
        Ok(expect_v1(
            "TCP6",
            "[::1]:5000".parse().unwrap(),
            "[::1]:7000".parse().unwrap()
        ))
    );
    let mut fixed = [0u8; 16];
    fixed[..12].copy_from_slice(&V2_SIGNATURE);
    fixed[12] = 0x21;
    fixed[13] = 0x11;
    let addrs = [127, 0, 0, 2, 127, 0, 0, 1, 0x13, 0x88, 0x1b, 0x58];
    assert_eq!(
        parse_v2(&fixed, &addrs),
        Ok(expect_v2_stream(
            1,
            "127.0.0.2:5000".parse().unwrap(),
            "127.0.0.1:7000".parse().unwrap()
        ))
    );
    assert!(
        parse_v2(&fixed, &addrs[..11]).is_err(),
        "short address block"
    );
    fixed[12] = 0x11;
    assert!(
        parse_v2(&fixed, &addrs).is_err(),
        "version 1 in a v2 header"
    );
    fixed[12] = 0x21;
    fixed[13] = 0x31;
    assert!(
        parse_v2(&fixed, &addrs).is_err(),
        "AF_UNIX is not expected here"
    );
}

/// A listener on a wildcard address: the header's destination must be the address the
/// client actually connected to (what the backend would see without a proxy), not
/// 0.0.0.0. The wildcard socket is only ever connected to over 127.0.0.1 here.
#[test]
fn wildcard_listener_announces_the_real_destination() {
    for version in ["v1", "v2"] {
        let backend = ProxyBackend::start();
        let lb = Ringlb::start(bin(), &yaml("0.0.0.0:0", version, backend.addr));
        let port = lb.listener_addr("pp").port();
        let to = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let mut c = connect_from(Ipv4Addr::new(127, 0, 0, 2), to).expect("connect");
        let client = c.local_addr().unwrap();
        exchange(&mut c);
        let seen = backend.wait_seen(1);
        let want = match version {
            "v1" => expect_v1("TCP4", client, to),
            _ => expect_v2_stream(1, client, to),
        };
        assert_eq!(seen[0].header, Ok(want), "{version}");
    }
}

/// UDP with `proxy_protocol: v2`: every datagram to the backend starts with a v2 header
/// (PROXY, DGRAM) naming the client and the address it sent to; header and payload arrive
/// in one datagram. Parsed with the same strict parser as the TCP headers.
fn udp_v2(bind: &str, client_bind: &str, connect_to: impl Fn(SocketAddr) -> SocketAddr) {
    let backend = UdpSocket::bind("127.0.0.1:0").unwrap();
    backend.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let y = yaml(bind, "v2", backend.local_addr().unwrap()).replace(
        "    proxy_protocol:",
        "    protocol: udp\n    proxy_protocol:",
    );
    let lb = Ringlb::start(bin(), &y);
    let to = connect_to(lb.listener_addr("pp"));
    let client = UdpSocket::bind(client_bind).unwrap();
    client.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let me = client.local_addr().unwrap();
    let family = if me.is_ipv4() { 1 } else { 2 };
    let mut buf = vec![0u8; 65_536];
    for payload in [&b"first datagram"[..], b"", b"third"] {
        client.send_to(payload, to).unwrap();
        let (n, from) = backend
            .recv_from(&mut buf)
            .expect("datagram at the backend");
        let d = &buf[..n];
        assert!(n >= 16, "datagram of {n} bytes cannot hold a v2 header");
        let mut fixed = [0u8; 16];
        fixed.copy_from_slice(&d[..16]);
        let len = u16::from_be_bytes([d[14], d[15]]) as usize;
        assert!(
            16 + len <= n,
            "v2 length {len} runs past the datagram ({n} bytes)"
        );
        let header = parse_v2(&fixed, &d[16..16 + len]);
        assert_eq!(
            header,
            Ok(Header::V2 {
                command: 1,
                family,
                transport: 2,
                src: me,
                dst: to,
                tlv_len: 0,
            })
        );
        assert_eq!(
            &d[16 + len..],
            payload,
            "payload follows the header in the same datagram"
        );
        backend.send_to(b"reply", from).unwrap();
        let (n, rfrom) = client.recv_from(&mut buf).expect("reply");
        assert_eq!(
            (&buf[..n], rfrom),
            (&b"reply"[..], to),
            "replies carry no header"
        );
    }
}

#[test]
fn v2_udp_ipv4_carries_exact_client_address() {
    udp_v2("127.0.0.1:0", "127.0.0.2:0", |a| a);
}

#[test]
fn v2_udp_ipv6_carries_exact_client_address() {
    udp_v2("[::1]:0", "[::1]:0", |a| a);
}

/// On a wildcard UDP bind the header names the address the client actually sent to.
#[test]
fn v2_udp_wildcard_listener_announces_the_real_destination() {
    udp_v2("0.0.0.0:0", "127.0.0.2:0", |a| {
        SocketAddr::from((Ipv4Addr::LOCALHOST, a.port()))
    });
}
