//! PROXY protocol headers (HAProxy's spec, v1 text and v2 binary) that tell a backend the
//! real client address. Pure: builds bytes, does no I/O.

use std::net::SocketAddr;

/// v2 signature: \r\n\r\n\0\r\nQUIT\n
const V2_SIGNATURE: [u8; 12] = [
    0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A,
];
/// Version 2, command PROXY.
const V2_VERSION_PROXY: u8 = 0x21;
const V2_AF_INET: u8 = 0x10;
const V2_AF_INET6: u8 = 0x20;
const V2_STREAM: u8 = 0x01;
const V2_DGRAM: u8 = 0x02;

/// Transport the header describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Stream,
    Datagram,
}

/// `PROXY TCP4 src dst sport dport\r\n`. Mixed families (v4 client on a v6 listener) are
/// expressed as TCP6 with the v4 address mapped, as the spec requires one family per line.
pub fn v1(client: SocketAddr, local: SocketAddr) -> Vec<u8> {
    let (src, dst) = same_family(client, local);
    let family = if src.is_ipv4() { "TCP4" } else { "TCP6" };
    format!(
        "PROXY {family} {} {} {} {}\r\n",
        src.ip(),
        dst.ip(),
        src.port(),
        dst.port()
    )
    .into_bytes()
}

/// Binary v2 header for a stream or datagram.
pub fn v2(client: SocketAddr, local: SocketAddr, transport: Transport) -> Vec<u8> {
    let (src, dst) = same_family(client, local);
    let proto = match transport {
        Transport::Stream => V2_STREAM,
        Transport::Datagram => V2_DGRAM,
    };
    let mut out = Vec::with_capacity(16 + 36);
    out.extend_from_slice(&V2_SIGNATURE);
    out.push(V2_VERSION_PROXY);
    match (src, dst) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => {
            out.push(V2_AF_INET | proto);
            out.extend_from_slice(&12u16.to_be_bytes());
            out.extend_from_slice(&s.ip().octets());
            out.extend_from_slice(&d.ip().octets());
            out.extend_from_slice(&s.port().to_be_bytes());
            out.extend_from_slice(&d.port().to_be_bytes());
        }
        _ => {
            let s6 = to_v6(src);
            let d6 = to_v6(dst);
            out.push(V2_AF_INET6 | proto);
            out.extend_from_slice(&36u16.to_be_bytes());
            out.extend_from_slice(&s6.0);
            out.extend_from_slice(&d6.0);
            out.extend_from_slice(&s6.1.to_be_bytes());
            out.extend_from_slice(&d6.1.to_be_bytes());
        }
    }
    out
}

/// TLV type of the connection id in a v2 header: the first of the range the spec leaves
/// to applications (PP2_TYPE_MIN_CUSTOM, 0xE0). Its value is the id as 8 bytes, big
/// endian: the 16 hex digits of the connection records.
pub const TLV_CONNECTION_ID: u8 = 0xE0;

/// Appends a TLV to a v2 `header` and counts it in the header's length. A value longer
/// than a TLV can carry, or one that would overflow the header's length, is left out.
pub fn append_tlv(header: &mut Vec<u8>, kind: u8, value: &[u8]) {
    let (Ok(len), Some(total)) = (
        u16::try_from(value.len()),
        header
            .get(14..16)
            .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])) + 3 + value.len()),
    ) else {
        return;
    };
    let Ok(total) = u16::try_from(total) else {
        return;
    };
    header.push(kind);
    header.extend_from_slice(&len.to_be_bytes());
    header.extend_from_slice(value);
    header[14..16].copy_from_slice(&total.to_be_bytes());
}

fn to_v6(addr: SocketAddr) -> ([u8; 16], u16) {
    match addr {
        SocketAddr::V4(a) => (a.ip().to_ipv6_mapped().octets(), a.port()),
        SocketAddr::V6(a) => (a.ip().octets(), a.port()),
    }
}

/// Both addresses in one family: unmap v4-mapped v6 when both can be v4, else map to v6.
fn same_family(client: SocketAddr, local: SocketAddr) -> (SocketAddr, SocketAddr) {
    let canon = |a: SocketAddr| SocketAddr::new(a.ip().to_canonical(), a.port());
    let (c, l) = (canon(client), canon(local));
    if c.is_ipv4() == l.is_ipv4() {
        return (c, l);
    }
    let map = |a: SocketAddr| match a {
        SocketAddr::V4(v4) => SocketAddr::new(v4.ip().to_ipv6_mapped().into(), v4.port()),
        other => other,
    };
    (map(c), map(l))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_ipv4() {
        let h = v1(
            "192.0.2.1:5000".parse().unwrap(),
            "198.51.100.2:7000".parse().unwrap(),
        );
        assert_eq!(h, b"PROXY TCP4 192.0.2.1 198.51.100.2 5000 7000\r\n");
    }

    #[test]
    fn v1_ipv6() {
        let h = v1("[::1]:5000".parse().unwrap(), "[::1]:7000".parse().unwrap());
        assert_eq!(h, b"PROXY TCP6 ::1 ::1 5000 7000\r\n");
    }

    #[test]
    fn v1_mixed_family_maps_to_v6() {
        let h = v1(
            "192.0.2.1:5000".parse().unwrap(),
            "[2001:db8::1]:7000".parse().unwrap(),
        );
        assert_eq!(h, b"PROXY TCP6 ::ffff:192.0.2.1 2001:db8::1 5000 7000\r\n");
    }

    #[test]
    fn v2_ipv4_stream_layout() {
        let h = v2(
            "192.0.2.1:5000".parse().unwrap(),
            "198.51.100.2:7000".parse().unwrap(),
            Transport::Stream,
        );
        assert_eq!(&h[..12], &V2_SIGNATURE);
        assert_eq!(h[12], 0x21);
        assert_eq!(h[13], 0x11);
        assert_eq!(u16::from_be_bytes([h[14], h[15]]), 12);
        assert_eq!(&h[16..20], &[192, 0, 2, 1]);
        assert_eq!(&h[20..24], &[198, 51, 100, 2]);
        assert_eq!(u16::from_be_bytes([h[24], h[25]]), 5000);
        assert_eq!(u16::from_be_bytes([h[26], h[27]]), 7000);
        assert_eq!(h.len(), 28);
    }

    #[test]
    fn v2_connection_id_tlv() {
        let mut h = v2(
            "192.0.2.1:5000".parse().unwrap(),
            "198.51.100.2:7000".parse().unwrap(),
            Transport::Stream,
        );
        append_tlv(
            &mut h,
            TLV_CONNECTION_ID,
            &0x0123_4567_89ab_cdefu64.to_be_bytes(),
        );
        assert_eq!(h.len(), 28 + 11);
        assert_eq!(
            u16::from_be_bytes([h[14], h[15]]),
            12 + 11,
            "length counts the TLV"
        );
        assert_eq!(
            &h[28..],
            &[0xE0, 0, 8, 0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef]
        );
        // A second TLV lands after the first, and the length follows.
        append_tlv(&mut h, 0xE1, b"x");
        assert_eq!(u16::from_be_bytes([h[14], h[15]]), 12 + 11 + 4);
        assert_eq!(&h[39..], &[0xE1, 0, 1, b'x']);
        // Too short to be a v2 header: nothing is appended.
        let mut short = vec![0u8; 10];
        append_tlv(&mut short, 0xE0, b"x");
        assert_eq!(short.len(), 10);
    }

    #[test]
    fn v2_ipv6_datagram_layout() {
        let h = v2(
            "[::1]:5000".parse().unwrap(),
            "[::1]:53".parse().unwrap(),
            Transport::Datagram,
        );
        assert_eq!(h[13], 0x22);
        assert_eq!(u16::from_be_bytes([h[14], h[15]]), 36);
        assert_eq!(h.len(), 16 + 36);
        assert_eq!(h[16 + 15], 1);
        assert_eq!(u16::from_be_bytes([h[48], h[49]]), 5000);
        assert_eq!(u16::from_be_bytes([h[50], h[51]]), 53);
    }
}
