//! PROXY protocol v1 and v2 through a running `ringlb`: the kit's [`ProxyBackend`] parses
//! the header strictly and records it, then echoes. The client connects from a known
//! source and the test compares the parsed header with the client's own `local_addr()`
//! and the listener's address, exactly. IPv4 and IPv6 (`::1`), TCP and (v2) UDP, where
//! every datagram carries its own header.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpStream, UdpSocket};
use std::path::Path;
use std::time::Duration;

use ringlb_testkit::*;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_ringlb"))
}

/// Waits for `n` headers at `backend` and returns all it saw.
fn wait_seen(backend: &ProxyBackend, n: usize) -> Vec<ProxySeen> {
    assert!(
        backend.wait_seen(n, Duration::from_secs(10)),
        "backend saw {} header(s), expected {n}: {:?}",
        backend.seen().len(),
        backend.seen()
    );
    backend.seen()
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

fn expect_v1(family: &str, src: SocketAddr, dst: SocketAddr) -> ProxyHeader {
    ProxyHeader::V1 {
        family: family.to_string(),
        src,
        dst,
    }
}

fn expect_v2_stream(family: u8, src: SocketAddr, dst: SocketAddr) -> ProxyHeader {
    ProxyHeader::V2 {
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
) -> (ProxySeen, SocketAddr, SocketAddr) {
    let backend = ProxyBackend::start();
    let lb = Ringlb::start(bin(), &yaml(bind, version, backend.addr()));
    let listener = lb.listener_addr("pp");
    let mut c = connect(listener);
    let client = c.local_addr().unwrap();
    exchange(&mut c);
    let seen = wait_seen(&backend, 1);
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
        let lb = Ringlb::start(bin(), &yaml("127.0.0.1:0", version, backend.addr()));
        let listener = lb.listener_addr("pp");
        let mut c = connect(listener);
        let client = c.local_addr().unwrap();
        // Nothing sent yet: the backend must already have a complete header.
        let seen = wait_seen(&backend, 1);
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
        let lb = Ringlb::start(bin(), &yaml("127.0.0.1:0", version, backend.addr()));
        let listener = lb.listener_addr("pp");
        let mut clients = Vec::new();
        for i in 0..20u8 {
            let c = connect_from(Ipv4Addr::new(127, 0, 1, 10 + i), listener)
                .expect("connect from 127.0.1.x");
            clients.push(c);
        }
        let seen = wait_seen(&backend, clients.len());
        let mut got: Vec<SocketAddr> = seen
            .iter()
            .map(|s| match &s.header {
                Ok(ProxyHeader::V1 { src, dst, .. }) | Ok(ProxyHeader::V2 { src, dst, .. }) => {
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

/// A listener on a wildcard address: the header's destination must be the address the
/// client actually connected to (what the backend would see without a proxy), not
/// 0.0.0.0. The wildcard socket is only ever connected to over 127.0.0.1 here.
#[test]
fn wildcard_listener_announces_the_real_destination() {
    for version in ["v1", "v2"] {
        let backend = ProxyBackend::start();
        let lb = Ringlb::start(bin(), &yaml("0.0.0.0:0", version, backend.addr()));
        let port = lb.listener_addr("pp").port();
        let to = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let mut c = connect_from(Ipv4Addr::new(127, 0, 0, 2), to).expect("connect");
        let client = c.local_addr().unwrap();
        exchange(&mut c);
        let seen = wait_seen(&backend, 1);
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
        let header = parse_proxy_v2(&fixed, &d[16..16 + len]);
        assert_eq!(
            header,
            Ok(ProxyHeader::V2 {
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
