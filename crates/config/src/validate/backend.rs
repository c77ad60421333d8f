//! One listener's `backends` list.

use std::collections::HashMap;
use std::net::SocketAddr;

use super::scalar::{boolean, opt_int, socket_addr};
use super::Errors;
use crate::model::{Backend, OnDown};
use crate::raw::{RawBackend, Scalar};

/// Upper bound of a backend weight: keeps the sums the schedulers build (smooth WRR,
/// dynamic weights) far from overflow however many backends a listener has.
pub const MAX_WEIGHT: u64 = 65_535;

/// Listener `i`'s backends that have no problem; every problem is pushed.
pub(super) fn backends(errs: &mut Errors, i: usize, list: Option<&[RawBackend]>) -> Vec<Backend> {
    backends_at(errs, &format!("listeners[{i}]"), list)
}

/// The backends of the pool at `owner` (a listener, or one of its routes).
pub(super) fn backends_at(
    errs: &mut Errors,
    owner: &str,
    list: Option<&[RawBackend]>,
) -> Vec<Backend> {
    let mut backends = Vec::new();
    let what = if owner.contains(".routes[") {
        "route"
    } else {
        "listener"
    };
    match list {
        None => errs.push(
            format!("{owner}.backends"),
            format!("missing: a {what} needs at least one backend"),
        ),
        Some([]) => errs.push(
            format!("{owner}.backends"),
            format!("no backends: a {what} needs at least one"),
        ),
        Some(list) => {
            // addr → index of its first occurrence in this listener.
            let mut addrs: HashMap<SocketAddr, usize> = HashMap::new();
            for (k, rb) in list.iter().enumerate() {
                let bp = format!("{owner}.backends[{k}]");
                if let Some(b) = backend(errs, &bp, rb) {
                    if let Some(first) = addrs.get(&b.addr) {
                        errs.push(
                            format!("{bp}.addr"),
                            format!(
                                "duplicate backend {} (also backends[{first}]): list each backend once per listener and use weight to give it a larger share",
                                b.addr
                            ),
                        );
                    } else {
                        addrs.insert(b.addr, k);
                    }
                    backends.push(b);
                }
            }
        }
    }
    backends
}

fn backend(errs: &mut Errors, path: &str, rb: &RawBackend) -> Option<Backend> {
    let before = errs.count();
    let p = |key: &str| format!("{path}.{key}");
    let addr = match &rb.addr {
        None => {
            errs.push(
                p("addr"),
                "missing: every backend needs an addr, e.g. 10.0.0.11:7000",
            );
            None
        }
        Some(s) => destination(errs, &p("addr"), s),
    };
    // 0 is allowed and means drained: no new connections, health checks go on (the
    // same as `ringlb ctl drain`), so a backend can be taken out of rotation by the file.
    let weight = opt_int(errs, &p("weight"), rb.weight.as_ref(), 1, 0, MAX_WEIGHT, "");
    let max_connections = opt_int(
        errs,
        &p("max_connections"),
        rb.max_connections.as_ref(),
        0,
        0,
        u32::MAX.into(),
        "",
    );
    let priority = priority(errs, path, rb);
    if errs.count() != before {
        return None;
    }
    let label = rb.addr.as_ref().map(|s| s.text.clone())?;
    Some(Backend {
        addr: addr?,
        label,
        weight,
        max_connections,
        priority,
        // Resolved against the listener's by `lifecycle`.
        on_down: OnDown::Keep,
    })
}

/// Highest tier number: tiers are few in practice (site, remote site, disaster recovery),
/// and each one is a level a pick may have to look through.
pub const MAX_PRIORITY: u64 = 15;

/// `priority: N`, or `backup: true` as priority 1; never both.
fn priority(errs: &mut Errors, path: &str, rb: &RawBackend) -> u8 {
    let backup = rb
        .backup
        .as_ref()
        .and_then(|s| boolean(errs, &format!("{path}.backup"), s));
    let Some(given) = &rb.priority else {
        return u8::from(backup == Some(true));
    };
    if rb.backup.is_some() {
        errs.push(
            format!("{path}.backup"),
            "give either backup or priority, not both (backup: true is priority: 1)",
        );
    }
    let priority = opt_int(
        errs,
        &format!("{path}.priority"),
        Some(given),
        0,
        0,
        MAX_PRIORITY,
        "",
    );
    u8::try_from(priority).unwrap_or(0)
}

/// A socket address a backend can be connected to: not port 0, not a wildcard.
fn destination(errs: &mut Errors, path: &str, s: &Scalar) -> Option<SocketAddr> {
    let a = socket_addr(errs, path, s)?;
    if a.port() == 0 {
        errs.push(
            path,
            format!(
                "{} has port 0, which cannot be connected to: use the backend's port, 1..=65535",
                s.shown()
            ),
        );
        None
    } else if a.ip().is_unspecified() {
        errs.push(
            path,
            format!(
                "{} is a wildcard, not a destination: give the backend's own address",
                a.ip()
            ),
        );
        None
    } else {
        Some(a)
    }
}

#[cfg(test)]
mod tests {
    use crate::validate::testing::*;

    #[test]
    fn priority_and_backup() {
        let c = ok(&with_backends(
            "      - addr: 10.0.0.1:80\n      - {addr: 10.0.0.2:80, backup: true}\n      - {addr: 10.0.0.3:80, priority: 3}\n      - {addr: 10.0.0.4:80, backup: false}\n",
        ));
        let p: Vec<u8> = c.listeners[0].backends.iter().map(|b| b.priority).collect();
        assert_eq!(p, [0, 1, 3, 0]);
        assert!(c.listeners[0].backends[1].is_backup());
        assert_one_error(
            &with_backends("      - {addr: 10.0.0.1:80, backup: true, priority: 2}\n"),
            "listeners[0].backends[0].backup",
            "either backup or priority",
        );
        assert_one_error(
            &with_backends("      - {addr: 10.0.0.1:80, priority: 16}\n"),
            "listeners[0].backends[0].priority",
            "0..=15",
        );
    }

    #[test]
    fn backends_are_required() {
        assert_one_error(
            "listeners:\n  - name: a\n    bind: 127.0.0.1:7000\n",
            "listeners[0].backends",
            "missing: a listener needs at least one backend",
        );
        assert_one_error(
            &with_backends("      []\n"),
            "listeners[0].backends",
            "no backends",
        );
    }

    #[test]
    fn backend_addr_required_and_parsed() {
        assert_one_error(
            &with_backends("      - weight: 2\n"),
            "listeners[0].backends[0].addr",
            "missing",
        );
        let e = errors(&with_backends(
            "      - addr: 10.0.0.2:80\n      - addr: 10.0.0.1\n",
        ));
        assert_eq!(
            e,
            ["listeners[0].backends[1].addr: invalid socket address \"10.0.0.1\""]
        );
        assert_one_error(
            &with_backends("      - addr: 7000\n"),
            "listeners[0].backends[0].addr",
            "invalid socket address 7000",
        );
    }

    #[test]
    fn backend_addr_must_be_a_destination() {
        assert_one_error(
            &with_backends("      - addr: 10.0.0.1:0\n"),
            "listeners[0].backends[0].addr",
            "port 0",
        );
        assert_one_error(
            &with_backends("      - addr: 0.0.0.0:80\n"),
            "listeners[0].backends[0].addr",
            "wildcard",
        );
        assert_one_error(
            &with_backends("      - addr: \"[::]:80\"\n"),
            "listeners[0].backends[0].addr",
            "wildcard",
        );
    }

    #[test]
    fn backend_label_is_the_text_as_written() {
        let c = ok(&with_backends(
            "      - addr: \"[2001:db8::1]:080\"\n      - addr: 10.0.0.1:80\n",
        ));
        let b = &c.listeners[0].backends;
        assert_eq!(b[0].label, "[2001:db8::1]:080");
        assert_eq!(b[0].addr, "[2001:db8::1]:80".parse().unwrap());
        assert_eq!(b[1].label, "10.0.0.1:80");
    }

    #[test]
    fn duplicate_backend_addr_in_one_listener() {
        // Compared as addresses, not text: 080 and 80 are the same port.
        let e = errors(&with_backends(
            "      - addr: 10.0.0.1:80\n      - addr: 10.0.0.2:80\n      - addr: 10.0.0.1:080\n",
        ));
        assert_eq!(e.len(), 1, "{e:#?}");
        assert!(e[0].starts_with(
            "listeners[0].backends[2].addr: duplicate backend 10.0.0.1:80 (also backends[0])"
        ));
        // The same backend in two listeners is fine.
        ok(&two("127.0.0.1:1", "tcp", "127.0.0.1:2", "tcp"));
    }

    #[test]
    fn weight_0_to_65535_where_0_means_drained() {
        assert_eq!(
            ok(&with_backends("      - {addr: 10.0.0.1:80, weight: 0}\n")).listeners[0].backends[0]
                .weight,
            0
        );
        assert_one_error(
            &with_backends("      - {addr: 10.0.0.1:80, weight: -1}\n"),
            "listeners[0].backends[0].weight",
            "must be at least 0, got -1",
        );
        assert_one_error(
            &with_backends("      - {addr: 10.0.0.1:80, weight: 65536}\n"),
            "listeners[0].backends[0].weight",
            "expected 0..=65535",
        );
        assert_eq!(
            ok(&with_backends(
                "      - {addr: 10.0.0.1:80, weight: 65535}\n"
            ))
            .listeners[0]
                .backends[0]
                .weight,
            65535
        );
    }

    #[test]
    fn backend_max_connections_zero_is_unlimited() {
        assert_eq!(
            ok(&with_backends(
                "      - {addr: 10.0.0.1:80, max_connections: 0}\n"
            ))
            .listeners[0]
                .backends[0]
                .max_connections,
            0
        );
        assert_one_error(
            &with_backends("      - {addr: 10.0.0.1:80, max_connections: -5}\n"),
            "listeners[0].backends[0].max_connections",
            "must be at least 0",
        );
    }

    #[test]
    fn backup_is_a_boolean_and_all_backup_is_allowed() {
        let c = ok(&with_backends("      - {addr: 10.0.0.1:80, backup: true}\n      - {addr: 10.0.0.2:80, backup: true}\n"));
        assert!(c.listeners[0].backends.iter().all(|b| b.is_backup()));
        assert_one_error(
            &with_backends("      - {addr: 10.0.0.1:80, backup: yes}\n"),
            "listeners[0].backends[0].backup",
            "expected true or false, got \"yes\"",
        );
    }
}
