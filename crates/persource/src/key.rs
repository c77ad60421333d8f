//! Whom a per-source limit counts.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// A client source: its IPv4 address, or the /64 network of its IPv6 address. One IPv6
/// host (or one customer) is handed a whole /64, so counting single IPv6 addresses would
/// give one client 2^64 quotas. An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`, how an
/// IPv4 client shows on a dual-stack socket) is the IPv4 address it maps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SourceKey {
    V4(Ipv4Addr),
    /// The upper 64 bits of the IPv6 address.
    V6Net(u64),
}

impl SourceKey {
    pub fn of(ip: IpAddr) -> SourceKey {
        match ip.to_canonical() {
            IpAddr::V4(v4) => SourceKey::V4(v4),
            IpAddr::V6(v6) => SourceKey::V6Net((u128::from(v6) >> 64) as u64),
        }
    }
}

/// As logs show it: `192.0.2.7`, `2001:db8:1:2::/64`.
impl fmt::Display for SourceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SourceKey::V4(a) => write!(f, "{a}"),
            SourceKey::V6Net(net) => write!(f, "{}/64", Ipv6Addr::from(u128::from(*net) << 64)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(text: &str) -> SourceKey {
        SourceKey::of(text.parse().unwrap())
    }

    #[test]
    fn ipv4_is_the_address() {
        assert_eq!(key("192.0.2.7"), SourceKey::V4(Ipv4Addr::new(192, 0, 2, 7)));
        assert_ne!(key("192.0.2.7"), key("192.0.2.8"));
        assert_eq!(key("192.0.2.7").to_string(), "192.0.2.7");
    }

    #[test]
    fn ipv6_is_its_64() {
        assert_eq!(
            key("2001:db8:1:2::1"),
            key("2001:db8:1:2:ffff:ffff:ffff:ffff")
        );
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
        assert_eq!(key("2001:db8:1:2::1").to_string(), "2001:db8:1:2::/64");
    }

    #[test]
    fn ipv4_mapped_ipv6_is_ipv4() {
        assert_eq!(key("::ffff:192.0.2.7"), key("192.0.2.7"));
        // Other addresses of ::/64 are IPv6 sources, not IPv4 ones.
        assert_eq!(key("::1"), SourceKey::V6Net(0));
        assert_ne!(key("::ffff:192.0.2.7"), key("::ffff:192.0.2.8"));
    }
}
