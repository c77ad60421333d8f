//! A PROXY protocol (v1 and v2) backend: parses the header ringlb sends strictly, to
//! HAProxy's spec (v1 text line; v2 signature, version, command, family, length,
//! addresses, ports), records it, then echoes. The parsers are public for UDP, where
//! every datagram carries its own v2 header.

use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use crate::client::wait_until;
use crate::server::{ConnEnd, ConnRecord, Records, TcpServer};
use crate::tcp::echo_loop;

/// The 12 bytes every v2 header starts with.
pub const PROXY_V2_SIGNATURE: [u8; 12] = [
    0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A,
];
/// The spec's bound on a v1 line, CRLF included.
const V1_MAX_LINE: usize = 107;

/// A parsed PROXY header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProxyHeader {
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
pub struct ProxySeen {
    /// The parsed header, or why it did not parse.
    pub header: Result<ProxyHeader, String>,
    /// Length of the header as received, in bytes.
    pub raw_len: usize,
}

fn read_exact_or(s: &mut impl Read, buf: &mut [u8], what: &str) -> Result<(), String> {
    s.read_exact(buf)
        .map_err(|e| format!("reading {what} ({} bytes): {e}", buf.len()))
}

/// Reads one header (v1 or v2, told apart by the first byte) from `s`, consuming exactly
/// the header's bytes and nothing after it.
fn read_header(s: &mut impl Read) -> (Result<ProxyHeader, String>, usize) {
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

fn read_v1(s: &mut impl Read, first: u8) -> (Result<ProxyHeader, String>, usize) {
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
    (parse_proxy_v1(&line), n)
}

pub fn parse_proxy_v1(line: &[u8]) -> Result<ProxyHeader, String> {
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
    Ok(ProxyHeader::V1 {
        family: family.to_string(),
        src: SocketAddr::new(ip(fields[2])?, port(fields[4])?),
        dst: SocketAddr::new(ip(fields[3])?, port(fields[5])?),
    })
}

fn read_v2(s: &mut impl Read, first: u8) -> (Result<ProxyHeader, String>, usize) {
    let mut fixed = [0u8; 16];
    fixed[0] = first;
    if let Err(e) = read_exact_or(s, &mut fixed[1..], "the v2 fixed part") {
        return (Err(e), 1);
    }
    if fixed[..12] != PROXY_V2_SIGNATURE {
        return (Err(format!("bad v2 signature {:02x?}", &fixed[..12])), 16);
    }
    let len = u16::from_be_bytes([fixed[14], fixed[15]]) as usize;
    let mut rest = vec![0u8; len];
    if let Err(e) = read_exact_or(s, &mut rest, "the v2 address block") {
        return (Err(e), 16);
    }
    (parse_proxy_v2(&fixed, &rest), 16 + len)
}

pub fn parse_proxy_v2(fixed: &[u8; 16], rest: &[u8]) -> Result<ProxyHeader, String> {
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
    Ok(ProxyHeader::V2 {
        command,
        family,
        transport,
        src,
        dst,
        tlv_len: rest.len() - used,
    })
}

/// Reads a PROXY header (v1 or v2) on each connection and records it as a [`ProxySeen`];
/// then echoes the rest if it parsed, or closes if it did not.
pub struct ProxyBackend {
    server: TcpServer,
    seen: Records<ProxySeen>,
}

impl ProxyBackend {
    pub fn start() -> ProxyBackend {
        let (server, seen) = TcpServer::start_recording("proxy", move |c, recs| {
            let (header, raw_len) = read_header(c);
            let ok = header.is_ok();
            recs.push(ProxySeen { header, raw_len });
            if ok {
                echo_loop(c)
            } else {
                ConnEnd::Closed
            }
        });
        ProxyBackend { server, seen }
    }

    /// The header of every connection that got as far as one, in order of arrival.
    pub fn seen(&self) -> Vec<ProxySeen> {
        self.seen.all()
    }

    /// Waits until at least `n` headers were read.
    pub fn wait_seen(&self, n: usize, timeout: Duration) -> bool {
        self.seen.wait(n, timeout)
    }
}
crate::tcp::tcp_backend_common!(ProxyBackend);

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn v1(family: &str, src: &str, dst: &str) -> ProxyHeader {
        ProxyHeader::V1 {
            family: family.to_string(),
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
        }
    }

    fn v2_stream(family: u8, src: &str, dst: &str) -> ProxyHeader {
        ProxyHeader::V2 {
            command: 1,
            family,
            transport: 1,
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            tlv_len: 0,
        }
    }

    #[test]
    fn parser_rejects_malformed_headers() {
        // The backend's parser must be able to fail, or tests using it prove nothing.
        assert!(parse_proxy_v1(b"PROXY TCP4 127.0.0.1 127.0.0.1 01 2\r\n").is_err());
        assert!(parse_proxy_v1(b"PROXY TCP4 ::1 127.0.0.1 1 2\r\n").is_err());
        assert!(parse_proxy_v1(b"PROXY TCP5 127.0.0.1 127.0.0.1 1 2\r\n").is_err());
        assert!(parse_proxy_v1(b"PROXY TCP4 127.0.0.1 127.0.0.1 1 2\n").is_err());
        assert!(parse_proxy_v1(b"PROXY TCP4 127.0.0.1 127.0.0.1 1 65536\r\n").is_err());
        assert_eq!(
            parse_proxy_v1(b"PROXY TCP6 ::1 ::1 5000 7000\r\n"),
            Ok(v1("TCP6", "[::1]:5000", "[::1]:7000"))
        );
        let mut fixed = [0u8; 16];
        fixed[..12].copy_from_slice(&PROXY_V2_SIGNATURE);
        fixed[12] = 0x21;
        fixed[13] = 0x11;
        let addrs = [127, 0, 0, 2, 127, 0, 0, 1, 0x13, 0x88, 0x1b, 0x58];
        assert_eq!(
            parse_proxy_v2(&fixed, &addrs),
            Ok(v2_stream(1, "127.0.0.2:5000", "127.0.0.1:7000"))
        );
        assert!(
            parse_proxy_v2(&fixed, &addrs[..11]).is_err(),
            "short address block"
        );
        fixed[12] = 0x11;
        assert!(
            parse_proxy_v2(&fixed, &addrs).is_err(),
            "version 1 in a v2 header"
        );
        fixed[12] = 0x21;
        fixed[13] = 0x31;
        assert!(
            parse_proxy_v2(&fixed, &addrs).is_err(),
            "AF_UNIX is not expected here"
        );
    }

    #[test]
    fn backend_records_the_header_then_echoes_only_what_follows() {
        let b = ProxyBackend::start();
        let mut c = crate::connect(b.addr());
        c.write_all(b"PROXY TCP4 127.0.0.2 127.0.0.1 5000 7000\r\n")
            .unwrap();
        crate::assert_echo(&mut c, b"after the header");
        assert!(b.wait_seen(1, Duration::from_secs(10)));
        let seen = b.seen();
        assert_eq!(
            seen[0].header,
            Ok(v1("TCP4", "127.0.0.2:5000", "127.0.0.1:7000"))
        );
        assert_eq!(seen[0].raw_len, 42);

        // A connection that starts with anything else is recorded as an error and closed.
        let mut bad = crate::connect(b.addr());
        bad.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
        let end = crate::read_until_end(&mut bad, Duration::from_secs(10));
        assert!(
            matches!(
                end,
                crate::ClientEnd::Eof { bytes: 0 } | crate::ClientEnd::Reset { .. }
            ),
            "{end:?}"
        );
        assert!(b.wait_seen(2, Duration::from_secs(10)));
        assert!(b.seen()[1].header.is_err());
    }
}
