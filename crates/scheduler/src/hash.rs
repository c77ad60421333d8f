//! Fixed hashes and small integer helpers.
//!
//! Everything here is a pure function of its input with constants written in this file:
//! no `RandomState`, no per-process seed. A client IP maps to the same backend in every
//! process, on every host and after every restart, which is what `source_hash` and
//! `maglev` promise and what `ringlb explain` relies on.

use std::net::IpAddr;

/// Murmur3's 64-bit finaliser (`fmix64`): every input bit affects every output bit.
#[inline]
pub(crate) fn fmix64(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^= x >> 33;
    x
}

/// Separates the client-key domain from the backend-name domain.
const CLIENT_SEED: u64 = 0x9e37_79b9_7f4a_7c15;

/// Hash of a client address for `source_hash` and `maglev`.
///
/// The address is first written as 128 bits, IPv4 in its IPv4-mapped IPv6 form
/// (`::ffff:a.b.c.d`), so a client seen through a dual-stack socket hashes like the same
/// client seen on an IPv4 socket. Then `fmix64(lo ^ fmix64(hi ^ 0x9e3779b97f4a7c15))`.
/// The port is deliberately not part of the key: the promise is per client IP.
#[inline]
pub fn client_hash(ip: IpAddr) -> u64 {
    let bits: u128 = match ip {
        IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => u128::from(v4.to_ipv6_mapped()),
            None => u128::from(v6),
        },
    };
    let hi = (bits >> 64) as u64;
    let lo = bits as u64;
    fmix64(lo ^ fmix64(hi ^ CLIENT_SEED))
}

/// The `k`-th alternative of a key, for deterministic fallbacks (k ≥ 1).
#[inline]
pub(crate) fn rehash(key: u64, k: u64) -> u64 {
    fmix64(key ^ k.wrapping_mul(0xd6e8_feb8_6659_fd93))
}

/// 64-bit FNV-1a of `bytes` from the given offset basis, finished with [`fmix64`]
/// (plain FNV-1a is weak in its high bits, which `maglev` uses).
pub(crate) fn name_hash(bytes: &[u8], basis: u64) -> u64 {
    let mut h = basis;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    fmix64(h)
}

/// FNV-1a's standard offset basis; the maglev permutation offset.
pub(crate) const NAME_BASIS_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
/// A second basis (the standard one with its bytes reversed); the maglev permutation skip.
pub(crate) const NAME_BASIS_SKIP: u64 = 0x2523_2284_e49c_f2cb;

/// `x` scaled into `0..n` without a division: the high half of the 128-bit product.
/// Unbiased enough for a uniform `x` (bias < n / 2^64).
#[inline]
pub(crate) fn scale(x: u64, n: u64) -> u64 {
    ((u128::from(x) * u128::from(n)) >> 64) as u64
}

/// Smallest prime ≥ `n` (trial division: only ever called off the hot path, n ≲ 10^7).
pub(crate) fn next_prime(n: u64) -> u64 {
    let mut candidate = n.max(2);
    loop {
        if is_prime(candidate) {
            return candidate;
        }
        candidate += 1;
    }
}

fn is_prime(n: u64) -> bool {
    if n < 2 {
        return false;
    }
    if n.is_multiple_of(2) {
        return n == 2;
    }
    let mut d = 3;
    while d * d <= n {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 2;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    #[test]
    fn primes() {
        assert_eq!(next_prime(65537), 65537);
        assert_eq!(next_prime(65538), 65539);
        assert_eq!(next_prime(100_000), 100_003);
        assert_eq!(next_prime(0), 2);
        assert!(!is_prime(65535));
    }

    #[test]
    fn client_hash_is_fixed_and_maps_ipv4() {
        let v4 = IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3));
        let mapped = IpAddr::V6(Ipv4Addr::new(10, 1, 2, 3).to_ipv6_mapped());
        assert_eq!(client_hash(v4), client_hash(mapped));
        assert_ne!(
            client_hash(v4),
            client_hash(IpAddr::V4(Ipv4Addr::new(10, 1, 2, 4)))
        );
        assert_ne!(
            client_hash(v4),
            client_hash(IpAddr::V6(Ipv6Addr::LOCALHOST))
        );
        // Pinned value: a change here changes every client's backend on upgrade.
        assert_eq!(client_hash(v4), FIXED_10_1_2_3);
    }

    // Computed independently (Python) from the formula in the doc comment. A change here
    // would move every client to another backend on upgrade.
    const FIXED_10_1_2_3: u64 = 0x9d70_1ce0_eceb_e928;

    #[test]
    fn scale_covers_range() {
        assert_eq!(scale(0, 10), 0);
        assert_eq!(scale(u64::MAX, 10), 9);
        assert_eq!(scale(u64::MAX / 2, 10), 4);
    }
}
