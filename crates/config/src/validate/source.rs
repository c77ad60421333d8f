//! A TCP listener's `source:` list: the local addresses its backend connects are made
//! from. Each address brings its own range of source ports toward every backend, so the
//! list widens how many connections one busy backend can take (HAProxy's `source`).

use std::collections::HashMap;
use std::net::IpAddr;

use super::Errors;
use crate::model::Backend;
use crate::raw::{Scalar, ScalarKind};

/// The addresses, in order; empty when the key is absent (the kernel chooses).
pub(super) fn source(errs: &mut Errors, i: usize, list: Option<&[Scalar]>) -> Vec<IpAddr> {
    let Some(list) = list else {
        return Vec::new();
    };
    if list.is_empty() {
        errs.push(
            format!("listeners[{i}].source"),
            "empty source list: list at least one local address, or remove source to let the kernel choose",
        );
    }
    // address → index of its first occurrence.
    let mut seen: HashMap<IpAddr, usize> = HashMap::new();
    let mut addrs = Vec::new();
    for (k, s) in list.iter().enumerate() {
        let path = format!("listeners[{i}].source[{k}]");
        let Some(ip) = address(errs, &path, s) else {
            continue;
        };
        if let Some(first) = seen.get(&ip) {
            errs.push(
                path,
                format!("{ip} is listed twice (also source[{first}]): list each address once"),
            );
            continue;
        }
        seen.insert(ip, k);
        addrs.push(ip);
    }
    addrs
}

fn address(errs: &mut Errors, path: &str, s: &Scalar) -> Option<IpAddr> {
    let ip = match s.text.parse::<IpAddr>() {
        Ok(ip) if s.kind == ScalarKind::Str => ip.to_canonical(),
        _ => {
            errs.push(
                path,
                format!(
                    "invalid source address {}: expected an IP address of this host without a port, e.g. 10.0.0.5 or 2001:db8::5 (ports are chosen per connection)",
                    s.shown()
                ),
            );
            return None;
        }
    };
    let problem = if ip.is_unspecified() {
        Some("is a wildcard, which is what leaving source out does: give an address of this host")
    } else if ip.is_multicast() || ip == IpAddr::from([255, 255, 255, 255]) {
        Some("is not a unicast address and cannot start a TCP connection")
    } else {
        None
    };
    match problem {
        Some(problem) => {
            errs.push(path, format!("{ip} {problem}"));
            None
        }
        None => Some(ip),
    }
}

/// Every backend must be reachable from some source address of its own family: a connect
/// cannot start from an IPv4 address toward an IPv6 backend. The family is the socket's,
/// as the data plane opens it (a backend written `[::ffff:a.b.c.d]:p` is reached over IPv6).
pub(super) fn covers_backends(
    errs: &mut Errors,
    i: usize,
    source: &[IpAddr],
    backends: &[Backend],
) {
    if source.is_empty() {
        return;
    }
    for (v6, family) in [(false, "IPv4"), (true, "IPv6")] {
        let has = source.iter().any(|ip| ip.is_ipv6() == v6);
        let needing = backends.iter().find(|b| b.addr.is_ipv6() == v6);
        if let (false, Some(b)) = (has, needing) {
            errs.push(
                format!("listeners[{i}].source"),
                format!(
                    "lists no {family} address, but backend {} is {family}: add an {family} address of this host, or remove source",
                    b.label
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::validate::testing::*;
    use std::net::IpAddr;

    fn addrs(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|a| a.parse().unwrap()).collect()
    }

    #[test]
    fn absent_means_the_kernel_chooses() {
        assert!(tcp(&ok(&one(""))).source.is_empty());
    }

    #[test]
    fn addresses_are_kept_in_order() {
        let c = ok(&one("    source: [10.0.0.7, 10.0.0.5]\n"));
        assert_eq!(tcp(&c).source, addrs(&["10.0.0.7", "10.0.0.5"]));
        // An IPv4-mapped IPv6 address is the IPv4 address it maps.
        let c = ok(&one("    source: [\"::ffff:10.0.0.9\"]\n"));
        assert_eq!(tcp(&c).source, addrs(&["10.0.0.9"]));
    }

    #[test]
    fn bad_entries_name_their_index() {
        let e = errors(&one(
            "    source: [10.0.0.1, \"10.0.0.2:80\", 10.0.0.0/8, 0.0.0.0, 224.0.0.1, 10.0.0.1, 7]\n",
        ));
        let want = [
            "listeners[0].source[1]: invalid source address \"10.0.0.2:80\"",
            "listeners[0].source[2]: invalid source address \"10.0.0.0/8\"",
            "listeners[0].source[3]: 0.0.0.0 is a wildcard",
            "listeners[0].source[4]: 224.0.0.1 is not a unicast address",
            "listeners[0].source[5]: 10.0.0.1 is listed twice (also source[0])",
            "listeners[0].source[6]: invalid source address 7",
        ];
        assert_eq!(e.len(), want.len(), "{e:#?}");
        for (got, want) in e.iter().zip(want) {
            assert!(got.starts_with(want), "{got:?} should start with {want:?}");
        }
    }

    #[test]
    fn empty_list_is_an_error() {
        assert_one_error(
            &one("    source: []\n"),
            "listeners[0].source",
            "remove source to let the kernel choose",
        );
    }

    #[test]
    fn each_backend_family_needs_a_source_address() {
        assert_one_error(
            &one("    source: [\"2001:db8::5\"]\n"),
            "listeners[0].source",
            "lists no IPv4 address, but backend 10.0.0.1:80 is IPv4",
        );
        let yaml = "listeners:\n  - name: l\n    bind: 127.0.0.1:7000\n    source: [10.0.0.5]\n\
                    \x20   backends: [{addr: 10.0.0.1:80}, {addr: \"[2001:db8::1]:80\"}]\n";
        assert_one_error(
            yaml,
            "listeners[0].source",
            "lists no IPv6 address, but backend [2001:db8::1]:80 is IPv6",
        );
        ok(&yaml.replace("[10.0.0.5]", "[10.0.0.5, \"2001:db8::5\"]"));
    }

    #[test]
    fn source_is_tcp_only() {
        assert_one_error(
            &one_udp("    source: [10.0.0.5]\n"),
            "listeners[0].source",
            "applies only to tcp listeners and this listener is udp",
        );
    }
}
