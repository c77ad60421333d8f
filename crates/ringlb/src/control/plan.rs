//! What a reload changes, decided from the running configuration and the new file alone:
//! no sockets, no threads. `reload` carries the plan out and records what really happened.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;

use log::LevelFilter;
use ringlb_config::{Backend, Config, Listener, Protocol};

/// Every step of one reload. Listener lists are in the new file's order, except `remove`.
#[derive(Debug, Clone, PartialEq, Default)]
pub(super) struct ReloadPlan {
    /// TCP listeners renamed on the same bind. They keep their sockets: closing them would
    /// reset the connections queued there while new sockets join the same port.
    pub rename: Vec<Rename>,
    /// Running listeners the new file no longer has (and that were not renamed), by name,
    /// sorted: they stop accepting and their connections drain.
    pub remove: Vec<String>,
    /// Listeners with the same name, bind and protocol: settings and backends are swapped in
    /// place, sockets untouched. Listeners without any change are here too.
    pub update: Vec<Update>,
    /// Listeners whose bind or protocol changed: the new sockets are bound first and only
    /// then is the old listener stopped, so a port conflict leaves it serving.
    pub rebind: Vec<Listener>,
    /// New listeners to bind (a renamed UDP listener is a removal plus one of these).
    pub add: Vec<Listener>,
    /// Top-level keys that changed but only take effect on a restart.
    pub restart: Vec<NeedsRestart>,
    /// The file's `log_level`, when it differs from the running one.
    pub log_level: Option<LevelFilter>,
}

#[derive(Debug, Clone, PartialEq)]
pub(super) struct Rename {
    pub from: String,
    pub to: Listener,
}

#[derive(Debug, Clone, PartialEq)]
pub(super) struct Update {
    pub listener: Listener,
    /// What changed, as the reload summary shows it; `None` when nothing did.
    pub change: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum NeedsRestart {
    Workers,
    Admin,
    Control,
}

/// The plan that takes the listeners of `running` (exactly what runs) to those of `new`.
pub(super) fn plan(running: &Config, new: &Config) -> ReloadPlan {
    let old: HashMap<&str, &Listener> = running
        .listeners
        .iter()
        .map(|l| (l.name.as_str(), l))
        .collect();
    let new_names: BTreeSet<&str> = new.listeners.iter().map(|l| l.name.as_str()).collect();
    let mut gone: Vec<&Listener> = running
        .listeners
        .iter()
        .filter(|l| !new_names.contains(l.name.as_str()))
        .collect();
    gone.sort_by(|a, b| a.name.cmp(&b.name));

    let mut plan = ReloadPlan {
        restart: needs_restart(running, new),
        log_level: (new.log_level != running.log_level).then_some(new.log_level),
        ..ReloadPlan::default()
    };
    for listener in &new.listeners {
        match old.get(listener.name.as_str()) {
            Some(before) if socket(before) == socket(listener) => plan.update.push(Update {
                change: describe_change(before, listener),
                listener: listener.clone(),
            }),
            Some(_) => plan.rebind.push(listener.clone()),
            None => match take_renamed(&mut gone, listener) {
                Some(from) => plan.rename.push(Rename {
                    from,
                    to: listener.clone(),
                }),
                None => plan.add.push(listener.clone()),
            },
        }
    }
    plan.remove = gone.into_iter().map(|l| l.name.clone()).collect();
    plan
}

/// What identifies a listener's sockets.
fn socket(listener: &Listener) -> (SocketAddr, Protocol) {
    (listener.bind, listener.protocol())
}

/// Takes from `gone` the first TCP listener on the same bind as `listener` (a TCP listener
/// too), whose sockets `listener` then keeps; returns its name.
fn take_renamed(gone: &mut Vec<&Listener>, listener: &Listener) -> Option<String> {
    if listener.protocol() != Protocol::Tcp {
        return None;
    }
    let i = gone
        .iter()
        .position(|old| socket(old) == socket(listener))?;
    Some(gone.remove(i).name.clone())
}

fn needs_restart(running: &Config, new: &Config) -> Vec<NeedsRestart> {
    let mut out = Vec::new();
    if new.workers != running.workers {
        out.push(NeedsRestart::Workers);
    }
    if new.admin != running.admin {
        out.push(NeedsRestart::Admin);
    }
    if new.control != running.control {
        out.push(NeedsRestart::Control);
    }
    out
}

/// One-line description of what a reload changes in a listener, or None if nothing.
fn describe_change(before: &Listener, after: &Listener) -> Option<String> {
    let mut parts = backend_changes(&before.backends, &after.backends);
    if before.algorithm != after.algorithm {
        parts.push(format!(
            "algorithm {}→{}",
            before.algorithm.as_str(),
            after.algorithm.as_str()
        ));
    }
    let mut other = before.clone();
    other.backends = after.backends.clone();
    other.algorithm = after.algorithm;
    if other != *after {
        parts.push("settings".to_string());
    }
    if parts.is_empty() {
        None
    } else {
        Some(parts.join(", "))
    }
}

/// Backends added, removed and changed, each part sorted by label. A backend is the same
/// one when its `addr` is written the same way (its label).
fn backend_changes(before: &[Backend], after: &[Backend]) -> Vec<String> {
    let old: HashMap<&str, &Backend> = before.iter().map(|b| (b.label.as_str(), b)).collect();
    let new: HashMap<&str, &Backend> = after.iter().map(|b| (b.label.as_str(), b)).collect();
    let mut added: Vec<&str> = new
        .keys()
        .filter(|k| !old.contains_key(*k))
        .copied()
        .collect();
    let mut removed: Vec<&str> = old
        .keys()
        .filter(|k| !new.contains_key(*k))
        .copied()
        .collect();
    let mut reweighted: Vec<String> = new
        .iter()
        .filter_map(|(k, b)| {
            old.get(k)
                .filter(|o| {
                    o.weight != b.weight
                        || o.priority != b.priority
                        || o.max_connections != b.max_connections
                })
                .map(|o| format!("{k} weight {}→{}", o.weight, b.weight))
        })
        .collect();
    added.sort_unstable();
    removed.sort_unstable();
    reweighted.sort_unstable();
    let mut parts = Vec::new();
    if !added.is_empty() {
        parts.push(format!("backends added {}", added.join(" ")));
    }
    if !removed.is_empty() {
        parts.push(format!("backends removed {}", removed.join(" ")));
    }
    if !reweighted.is_empty() {
        parts.push(format!("changed {}", reweighted.join(", ")));
    }
    parts
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A listener written as YAML, changed one key at a time by the cases below.
    #[derive(Clone)]
    pub(in crate::control) struct L {
        name: &'static str,
        bind: &'static str,
        keys: Vec<&'static str>,
        backends: Vec<&'static str>,
    }

    /// A TCP listener with one backend.
    pub(in crate::control) fn l(name: &'static str, bind: &'static str) -> L {
        L {
            name,
            bind,
            keys: Vec::new(),
            backends: vec!["addr: 10.0.0.1:80"],
        }
    }

    impl L {
        /// Adds `key: value` (a later one for the same key wins).
        pub(in crate::control) fn with(mut self, key_value: &'static str) -> L {
            let key = key_value.split(':').next();
            self.keys.retain(|k| k.split(':').next() != key);
            self.keys.push(key_value);
            self
        }

        pub(in crate::control) fn udp(self) -> L {
            self.with("protocol: udp")
        }

        /// Backends as YAML flow items, e.g. `addr: 10.0.0.1:80` or `{addr: …, weight: 2}`.
        pub(in crate::control) fn backends(mut self, backends: &[&'static str]) -> L {
            self.backends = backends.to_vec();
            self
        }

        fn yaml(&self) -> String {
            let mut y = format!("  - name: {}\n    bind: {}\n", self.name, self.bind);
            for k in &self.keys {
                y.push_str(&format!("    {k}\n"));
            }
            y.push_str("    backends:\n");
            for b in &self.backends {
                y.push_str(&format!("      - {b}\n"));
            }
            y
        }
    }

    /// A validated configuration: `top` lines (e.g. `workers: 2\n`) and `listeners`.
    pub(in crate::control) fn config_with(top: &str, listeners: &[L]) -> Config {
        let mut yaml = format!("{top}listeners:\n");
        for l in listeners {
            yaml.push_str(&l.yaml());
        }
        match ringlb_config::parse(&yaml) {
            Ok(config) => config,
            Err(e) => panic!("test config does not validate: {e:?}\n{yaml}"),
        }
    }

    pub(in crate::control) fn config(listeners: &[L]) -> Config {
        config_with("", listeners)
    }

    /// A plan by listener names: what the cases below expect.
    #[derive(Debug, Default, PartialEq)]
    struct Names<S> {
        rename: Vec<(S, S)>,
        remove: Vec<S>,
        update: Vec<(S, Option<S>)>,
        rebind: Vec<S>,
        add: Vec<S>,
        restart: Vec<NeedsRestart>,
        log_level: Option<LevelFilter>,
    }

    type Want = Names<&'static str>;

    fn name(l: &Listener) -> &str {
        &l.name
    }

    fn names(plan: &ReloadPlan) -> Names<&str> {
        Names {
            rename: plan
                .rename
                .iter()
                .map(|r| (r.from.as_str(), name(&r.to)))
                .collect(),
            remove: plan.remove.iter().map(String::as_str).collect(),
            update: plan
                .update
                .iter()
                .map(|u| (name(&u.listener), u.change.as_deref()))
                .collect(),
            rebind: plan.rebind.iter().map(name).collect(),
            add: plan.add.iter().map(name).collect(),
            restart: plan.restart.clone(),
            log_level: plan.log_level,
        }
    }

    fn check(case: &str, old: &Config, new: &Config, want: Want) {
        let plan = plan(old, new);
        assert_eq!(names(&plan), want, "{case}");
        // Every listener a step carries is the new file's, settings and all.
        for l in plan
            .update
            .iter()
            .map(|u| &u.listener)
            .chain(plan.rename.iter().map(|r| &r.to))
            .chain(&plan.rebind)
            .chain(&plan.add)
        {
            assert!(
                new.listeners.contains(l),
                "{case}: {} is not the new one",
                l.name
            );
        }
    }

    type Case = (&'static str, Vec<L>, Vec<L>, Want);

    fn check_all(cases: Vec<Case>) {
        for (case, old, new, want) in cases {
            check(case, &config(&old), &config(&new), want);
        }
    }

    fn a() -> L {
        l("a", "127.0.0.1:7001")
    }

    fn b() -> L {
        l("b", "127.0.0.1:7002")
    }

    fn u() -> L {
        l("u", "127.0.0.1:7003").udp()
    }

    /// Listeners updated in place without a change.
    fn kept(names: &[&'static str]) -> Want {
        Want {
            update: names.iter().map(|n| (*n, None)).collect(),
            ..Want::default()
        }
    }

    /// One listener updated in place with `what` changed.
    fn changed(name: &'static str, what: &'static str) -> Want {
        Want {
            update: vec![(name, Some(what))],
            ..Want::default()
        }
    }

    #[test]
    fn listeners_added_removed_or_kept() {
        check_all(vec![
            (
                "no change",
                vec![a(), u()],
                vec![a(), u()],
                kept(&["a", "u"]),
            ),
            (
                "add",
                vec![a()],
                vec![a(), b()],
                Want {
                    add: vec!["b"],
                    ..kept(&["a"])
                },
            ),
            (
                "remove",
                vec![a(), b()],
                vec![b()],
                Want {
                    remove: vec!["a"],
                    ..kept(&["b"])
                },
            ),
            (
                "removals are sorted by name",
                vec![l("z", "127.0.0.1:7009"), b(), a()],
                vec![u()],
                Want {
                    remove: vec!["a", "b", "z"],
                    add: vec!["u"],
                    ..Want::default()
                },
            ),
            (
                "moved in the file",
                vec![a(), b()],
                vec![b(), a()],
                kept(&["b", "a"]),
            ),
        ]);
    }

    #[test]
    fn renames() {
        let rename = |pairs: Vec<(&'static str, &'static str)>| Want {
            rename: pairs,
            ..Want::default()
        };
        let replace = |old: &'static str, new: &'static str| Want {
            remove: vec![old],
            add: vec![new],
            ..Want::default()
        };
        let moved = l("a2", "127.0.0.1:7001")
            .with("algorithm: maglev")
            .backends(&["addr: 10.0.0.7:80"]);
        check_all(vec![
            (
                "tcp on the same bind keeps the sockets",
                vec![a()],
                vec![l("a2", "127.0.0.1:7001")],
                rename(vec![("a", "a2")]),
            ),
            (
                "tcp with other settings too",
                vec![a()],
                vec![moved],
                rename(vec![("a", "a2")]),
            ),
            (
                "two at once pair by bind, in the new file's order",
                vec![a(), b()],
                vec![l("b2", "127.0.0.1:7002"), l("a2", "127.0.0.1:7001")],
                rename(vec![("b", "b2"), ("a", "a2")]),
            ),
            (
                "tcp to another bind",
                vec![a()],
                vec![l("a2", "127.0.0.1:7005")],
                replace("a", "a2"),
            ),
            (
                "udp",
                vec![u()],
                vec![l("u2", "127.0.0.1:7003").udp()],
                replace("u", "u2"),
            ),
            (
                "tcp does not take over udp on the same bind",
                vec![l("x", "127.0.0.1:7001").udp()],
                vec![l("y", "127.0.0.1:7001")],
                replace("x", "y"),
            ),
        ]);
    }

    #[test]
    fn bind_or_protocol_changes_rebind() {
        check_all(vec![
            (
                "bind",
                vec![a(), b()],
                vec![l("a", "127.0.0.1:7005"), b()],
                Want {
                    rebind: vec!["a"],
                    ..kept(&["b"])
                },
            ),
            (
                "protocol",
                vec![a(), u()],
                vec![a().udp(), l("u", "127.0.0.1:7003")],
                Want {
                    rebind: vec!["a", "u"],
                    ..Want::default()
                },
            ),
        ]);
    }

    #[test]
    fn in_place_changes() {
        let two = ["addr: 10.0.0.1:80", "addr: 10.0.0.2:80"];
        check_all(vec![
            (
                "backend added",
                vec![a()],
                vec![a().backends(&two)],
                changed("a", "backends added 10.0.0.2:80"),
            ),
            (
                "backend removed",
                vec![a().backends(&two)],
                vec![a()],
                changed("a", "backends removed 10.0.0.2:80"),
            ),
            (
                "backend reweighted",
                vec![a()],
                vec![a().backends(&["{addr: 10.0.0.1:80, weight: 3}"])],
                changed("a", "changed 10.0.0.1:80 weight 1→3"),
            ),
            (
                "algorithm",
                vec![a()],
                vec![a().with("algorithm: least_connections")],
                changed("a", "algorithm round_robin→least_connections"),
            ),
            (
                "tcp settings",
                vec![a()],
                vec![a().with("idle_timeout: 5s")],
                changed("a", "settings"),
            ),
            (
                "udp settings",
                vec![u()],
                vec![u().with("session_timeout: 9s")],
                changed("u", "settings"),
            ),
        ]);
    }

    #[test]
    fn everything_at_once_in_the_new_files_order() {
        let old = vec![
            a(),
            b(),
            u(),
            l("old", "127.0.0.1:7008"),
            l("gone", "127.0.0.1:7009"),
        ];
        let new = vec![
            l("new", "127.0.0.1:7010"),
            u().with("max_sessions: 9"),
            l("renamed", "127.0.0.1:7008"),
            l("b", "127.0.0.1:7011"),
            a().with("algorithm: maglev")
                .backends(&["addr: 10.0.0.2:80"]),
            l("added", "127.0.0.1:7012"),
        ];
        let want = Want {
            rename: vec![("old", "renamed")],
            remove: vec!["gone"],
            update: vec![
                ("u", Some("settings")),
                (
                    "a",
                    Some(
                        "backends added 10.0.0.2:80, backends removed 10.0.0.1:80, \
                         algorithm round_robin→maglev",
                    ),
                ),
            ],
            rebind: vec!["b"],
            add: vec!["new", "added"],
            ..Want::default()
        };
        check_all(vec![("everything", old, new, want)]);
    }

    #[test]
    fn top_level_changes() {
        let a = [l("a", "127.0.0.1:7001")];
        let kept = || Want {
            update: vec![("a", None)],
            ..Want::default()
        };
        let cases: Vec<(&str, &str, &str, Want)> = vec![
            ("nothing", "", "", kept()),
            (
                "workers",
                "workers: 2\n",
                "workers: 3\n",
                Want {
                    restart: vec![NeedsRestart::Workers],
                    ..kept()
                },
            ),
            (
                "admin added",
                "",
                "admin: 127.0.0.1:9901\n",
                Want {
                    restart: vec![NeedsRestart::Admin],
                    ..kept()
                },
            ),
            (
                "workers and admin",
                "workers: auto\nadmin: 127.0.0.1:9901\n",
                "workers: 1\n",
                Want {
                    restart: vec![NeedsRestart::Workers, NeedsRestart::Admin],
                    ..kept()
                },
            ),
            (
                "control moved",
                "control: /run/a.sock\n",
                "control: /run/b.sock\n",
                Want {
                    restart: vec![NeedsRestart::Control],
                    ..kept()
                },
            ),
            (
                "log_level",
                "log_level: info\n",
                "log_level: debug\n",
                Want {
                    log_level: Some(LevelFilter::Debug),
                    ..kept()
                },
            ),
            // Applied to every listener or read at shutdown: nothing to plan.
            (
                "access_log",
                "access_log: true\n",
                "access_log: false\n",
                kept(),
            ),
            (
                "shutdown_timeout",
                "shutdown_timeout: 5s\n",
                "shutdown_timeout: 9s\n",
                kept(),
            ),
        ];
        for (case, old, new, want) in cases {
            check(case, &config_with(old, &a), &config_with(new, &a), want);
        }
    }

    #[test]
    fn describe_change_lists_each_kind_in_a_fixed_order() {
        let base = l("a", "127.0.0.1:7001").backends(&[
            "addr: 10.0.0.1:80",
            "{addr: 10.0.0.2:80, weight: 2}",
            "addr: 10.0.0.3:80",
        ]);
        let one = |l: L| config(&[l]).listeners.remove(0);
        let before = one(base.clone());
        let cases: Vec<(&str, L, Option<&str>)> = vec![
            ("same", base.clone(), None),
            (
                "added, several sorted",
                base.clone().backends(&[
                    "addr: 10.0.0.1:80",
                    "{addr: 10.0.0.2:80, weight: 2}",
                    "addr: 10.0.0.3:80",
                    "addr: 10.0.0.9:80",
                    "addr: 10.0.0.4:80",
                ]),
                Some("backends added 10.0.0.4:80 10.0.0.9:80"),
            ),
            (
                "removed",
                base.clone().backends(&["addr: 10.0.0.1:80"]),
                Some("backends removed 10.0.0.2:80 10.0.0.3:80"),
            ),
            (
                "reordered backends are no change",
                base.clone().backends(&[
                    "addr: 10.0.0.3:80",
                    "addr: 10.0.0.1:80",
                    "{addr: 10.0.0.2:80, weight: 2}",
                ]),
                None,
            ),
            (
                "backup and max_connections show as a weight change",
                base.clone().backends(&[
                    "{addr: 10.0.0.1:80, backup: true}",
                    "{addr: 10.0.0.2:80, weight: 2, max_connections: 5}",
                    "addr: 10.0.0.3:80",
                ]),
                Some("changed 10.0.0.1:80 weight 1→1, 10.0.0.2:80 weight 2→2"),
            ),
            (
                "algorithm",
                base.clone().with("algorithm: maglev"),
                Some("algorithm round_robin→maglev"),
            ),
            (
                "health check",
                base.clone().with("health_check: {interval: 1s}"),
                Some("settings"),
            ),
            (
                "allow",
                base.clone().with("allow: [10.0.0.0/8]"),
                Some("settings"),
            ),
            (
                "all kinds",
                base.clone()
                    .with("algorithm: random")
                    .with("connect_attempts: 1")
                    .backends(&["{addr: 10.0.0.2:80, weight: 5}", "addr: 10.0.0.8:80"]),
                Some(
                    "backends added 10.0.0.8:80, backends removed 10.0.0.1:80 10.0.0.3:80, \
                     changed 10.0.0.2:80 weight 2→5, algorithm round_robin→random, settings",
                ),
            ),
        ];
        for (case, after, want) in cases {
            assert_eq!(
                describe_change(&before, &one(after)).as_deref(),
                want,
                "{case}"
            );
        }
    }
}
