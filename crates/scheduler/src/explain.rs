//! `ringlb explain`: which backend a listener's algorithm picks for one client.

use std::fmt;
use std::net::SocketAddr;

use ringlb_config::{Algorithm, Listener};

use crate::{Scheduler, Tried};

/// What `ringlb explain` answers for one listener and one client. Its `Display` is the
/// text the command prints (one line, plus a note line for algorithms that do not pin).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explanation {
    pub listener: String,
    pub algorithm: Algorithm,
    pub client: SocketAddr,
    /// `None`: no backend qualifies.
    pub backend: Option<Chosen>,
    /// The hashing table's fingerprint (`source_hash`, `maglev`): equal on every instance
    /// that sends each client where this one does.
    pub fingerprint: Option<String>,
}

/// The backend an [`Explanation`] names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chosen {
    /// `addr` as written in the configuration.
    pub label: String,
    /// Its tier (0: first choice).
    pub priority: u8,
}

/// The pick a fresh process makes for `client` (no randomness, nothing tried yet) with
/// every backend up. For algorithms that pin clients this is where the client goes while
/// the same backends are up; for the others it is only the first pick.
pub fn explain(listener: &Listener, client: SocketAddr) -> Explanation {
    let snapshot = Scheduler::balancing(listener).snapshot();
    let backend = snapshot
        .pick(client.ip(), 0, &Tried::new())
        .and_then(|i| snapshot.backends().get(i))
        .map(|b| Chosen {
            label: b.spec.label.clone(),
            priority: b.spec.priority,
        });
    Explanation {
        listener: listener.name.clone(),
        algorithm: listener.algorithm,
        client,
        backend,
        fingerprint: snapshot.fingerprint().map(str::to_string),
    }
}

/// Whether `algorithm` sends a client to the same backend every time the same backends
/// are up (it hashes the client address).
pub fn pins_clients(algorithm: Algorithm) -> bool {
    matches!(algorithm, Algorithm::SourceHash | Algorithm::Maglev)
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Some(backend) = &self.backend else {
            return write!(f, "listener {}: no backend would be chosen", self.listener);
        };
        write!(
            f,
            "listener {} ({}): client {} -> backend {}{}",
            self.listener,
            self.algorithm.as_str(),
            self.client,
            backend.label,
            match backend.priority {
                0 => String::new(),
                p => format!(" (backup, priority {p})"),
            }
        )?;
        if let Some(fingerprint) = &self.fingerprint {
            write!(
                f,
                "\ntable fingerprint {fingerprint}: every instance in front of the same backends shows the same"
            )?;
        }
        if !pins_clients(self.algorithm) {
            write!(
                f,
                "\nnote: {} does not pin clients to backends; \
                 this is the first pick of a fresh process",
                self.algorithm.as_str()
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One listener `t` with `algorithm` over `backends` (YAML flow items).
    fn listener(algorithm: Algorithm, backends: &[&str]) -> Listener {
        let mut yaml = format!(
            "listeners:\n  - name: t\n    bind: 127.0.0.1:0\n    algorithm: {}\n    backends:\n",
            algorithm.as_str()
        );
        for b in backends {
            yaml.push_str(&format!("      - {b}\n"));
        }
        match ringlb_config::parse(&yaml) {
            Ok(mut config) => config.listeners.remove(0),
            Err(e) => panic!("test config does not parse: {e:?}\n{yaml}"),
        }
    }

    fn client(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    #[test]
    fn pinning_algorithms_say_where_the_client_goes_and_agree_with_a_scheduler() {
        let backends = [
            "addr: 10.0.0.1:80",
            "addr: 10.0.0.2:80",
            "addr: 10.0.0.3:80",
        ];
        for algorithm in [Algorithm::SourceHash, Algorithm::Maglev] {
            let l = listener(algorithm, &backends);
            for n in 1..=20u8 {
                let c = client(&format!("192.0.2.{n}:40000"));
                let e = explain(&l, c);
                let snapshot = Scheduler::balancing(&l).snapshot();
                let i = snapshot.pick(c.ip(), 0, &Tried::new()).unwrap();
                let label = &snapshot.backends()[i].spec.label;
                let fingerprint = snapshot.fingerprint().expect("a hashing table");
                assert_eq!(
                    e.to_string(),
                    format!(
                        "listener t ({}): client {c} -> backend {label}\n\
                         table fingerprint {fingerprint}: every instance in front of the same backends shows the same",
                        algorithm.as_str()
                    )
                );
                // The client port does not matter, only its address.
                assert_eq!(
                    explain(&l, client(&format!("192.0.2.{n}:1"))).backend,
                    e.backend
                );
            }
        }
    }

    #[test]
    fn other_algorithms_add_a_note_that_they_do_not_pin() {
        for algorithm in Algorithm::ALL.into_iter().filter(|a| !pins_clients(*a)) {
            let e = explain(
                &listener(algorithm, &["addr: 10.0.0.1:80"]),
                client("192.0.2.1:5"),
            );
            assert_eq!(
                e.to_string(),
                format!(
                    "listener t ({a}): client 192.0.2.1:5 -> backend 10.0.0.1:80\n\
                     note: {a} does not pin clients to backends; \
                     this is the first pick of a fresh process",
                    a = algorithm.as_str()
                )
            );
        }
    }

    #[test]
    fn a_backup_is_marked() {
        let e = explain(
            &listener(Algorithm::Maglev, &["{addr: 10.0.0.9:80, backup: true}"]),
            client("192.0.2.1:5"),
        );
        assert_eq!(
            e.backend,
            Some(Chosen {
                label: "10.0.0.9:80".into(),
                priority: 1
            })
        );
        assert!(e.to_string().starts_with(
            "listener t (maglev): client 192.0.2.1:5 -> backend 10.0.0.9:80 (backup, priority 1)\ntable fingerprint "
        ));
    }

    #[test]
    fn the_order_backends_are_written_in_changes_no_pick_and_no_fingerprint() {
        let forward = [
            "addr: 10.0.0.1:80",
            "addr: 10.0.0.2:80",
            "{addr: 10.0.0.3:80, weight: 3}",
        ];
        let reversed = [
            "{addr: 10.0.0.3:80, weight: 3}",
            "addr: 10.0.0.2:80",
            "addr: 10.0.0.1:80",
        ];
        for algorithm in [Algorithm::SourceHash, Algorithm::Maglev] {
            let a = listener(algorithm, &forward);
            let b = listener(algorithm, &reversed);
            for n in 0..500u32 {
                let c = SocketAddr::from((std::net::Ipv4Addr::from(0x0a64_0000 + n), 5));
                assert_eq!(explain(&a, c), explain(&b, c), "{algorithm:?} {c}");
            }
            let fa = Scheduler::for_listener(&a)
                .snapshot()
                .fingerprint()
                .map(str::to_string);
            assert!(fa.is_some());
            // A different weight is a different table.
            let c = listener(
                algorithm,
                &[
                    "addr: 10.0.0.1:80",
                    "addr: 10.0.0.2:80",
                    "addr: 10.0.0.3:80",
                ],
            );
            assert_ne!(
                fa.as_deref(),
                Scheduler::for_listener(&c).snapshot().fingerprint()
            );
        }
    }

    #[test]
    fn no_backend_says_so() {
        let mut l = listener(Algorithm::RoundRobin, &["addr: 10.0.0.1:80"]);
        // Validation requires a backend; an empty set is still answered, not a panic.
        l.backends.clear();
        let e = explain(&l, client("192.0.2.1:5"));
        assert_eq!(e.backend, None);
        assert_eq!(e.to_string(), "listener t: no backend would be chosen");
    }

    #[test]
    fn only_source_hash_and_maglev_pin_clients() {
        let pinning: Vec<Algorithm> = Algorithm::ALL
            .into_iter()
            .filter(|a| pins_clients(*a))
            .collect();
        assert_eq!(pinning, [Algorithm::SourceHash, Algorithm::Maglev]);
    }
}
