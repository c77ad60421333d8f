//! SIGHUP: load and validate the file, plan the reload, carry the plan out, log what really
//! happened, and keep as the running configuration only what really runs.

use std::fmt;
use std::sync::atomic::Ordering;

use log::LevelFilter;
use ringlb_config::{Config, ConfigErrors, Listener};

use super::listeners::bind;
use super::plan::{plan, NeedsRestart, ReloadPlan, Rename, Update};
use super::ControlPlane;
use crate::notify::{notify_or_log, reloading_message};

/// What a reload really did. Its `Display` is the one summary line every applied reload
/// logs (its parts are described in docs/operations.md).
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct Applied {
    /// Listeners bound by this reload, new and re-bound, in the new file's order.
    pub added: Vec<String>,
    /// Listeners stopped because the file no longer has them.
    pub removed: Vec<String>,
    /// Listeners whose old sockets were stopped once their new bind had succeeded.
    pub rebound: Vec<String>,
    /// `name (what changed)` for each listener updated in place with a change.
    pub changed: Vec<String>,
    /// (old, new) names of TCP listeners that kept their sockets.
    pub renamed: Vec<(String, String)>,
    /// Listeners whose bind failed: a new one does not run, a re-bound one runs as before.
    pub failed: Vec<String>,
    /// The log level set: the file changed it and `RUST_LOG` does not override it.
    pub log_level: Option<LevelFilter>,
    /// The log format set: the file changed it and `--log-format` does not pin it.
    pub log_format: Option<ringlb_logging::Format>,
}

impl fmt::Display for Applied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let removed: Vec<String> = self
            .removed
            .iter()
            .cloned()
            .chain(self.rebound.iter().map(|name| format!("{name} (rebound)")))
            .collect();
        write!(
            f,
            "reload applied: added [{}] removed [{}] changed [{}]",
            self.added.join(", "),
            removed.join(", "),
            self.changed.join("; ")
        )?;
        if let Some(level) = self.log_level {
            write!(f, " log_level={level}")?;
        }
        if let Some(format) = self.log_format {
            write!(f, " log_format={}", format.as_str())?;
        }
        if !self.renamed.is_empty() {
            let pairs: Vec<String> = self
                .renamed
                .iter()
                .map(|(old, new)| format!("{old}→{new}"))
                .collect();
            write!(f, " renamed [{}]", pairs.join(", "))?;
        }
        Ok(())
    }
}

/// The configuration that runs after `applied`: the new file, except `workers`, `admin`
/// and `control` (only a restart applies them) and the listeners whose bind failed. Such a listener runs
/// on as before with its old settings and bind when it was being re-bound, and does not
/// run at all when it was new.
pub(super) fn effective_config(old: &Config, new: &Config, applied: &Applied) -> Config {
    let mut config = new.clone();
    config.workers = old.workers;
    config.admin = old.admin;
    config.control.clone_from(&old.control);
    config.listeners = new
        .listeners
        .iter()
        .filter_map(|l| {
            if !applied.failed.contains(&l.name) {
                return Some(l.clone());
            }
            old.listeners.iter().find(|o| o.name == l.name).cloned()
        })
        .collect();
    config
}

impl ControlPlane {
    /// SIGHUP. systemd hears `RELOADING=1` before and `READY=1` after, applied or not.
    pub(super) fn reload(&mut self) {
        notify_or_log(&reloading_message());
        self.reload_file();
        notify_or_log("READY=1");
    }

    fn reload_file(&mut self) {
        let new = match ringlb_config::load(&self.path) {
            Ok(config) => config,
            Err(errors) => return self.reject(&errors),
        };
        if new.audit_log != self.config.audit_log {
            self.reopen_audit(new.audit_log.as_deref());
        }
        let old_state_file = self.config.state_file.clone();
        let plan = plan(&self.config, &new);
        let applied = self.apply(plan, &new);
        self.forget_pending_sticky();
        self.config = effective_config(&self.config, &new, &applied);
        debug_assert!(
            self.config.listeners.len() == self.listeners.len()
                && self
                    .config
                    .listeners
                    .iter()
                    .all(|l| self.listeners.contains_key(&l.name)),
            "the stored configuration must name exactly the running listeners"
        );
        self.sync_book();
        if self.config.state_file != old_state_file {
            // The admin state moves to the new file (or stays in memory only).
            if let Err(e) = self.save_book() {
                warn!("{e}");
            }
        }
        self.publish_registry();
        self.restart_prober();
        self.registry.reloads_ok.fetch_add(1, Ordering::Relaxed);
        info!("{applied}");
        self.audit(
            "reload",
            serde_json::json!({
                "result": "ok",
                "config": self.path.display().to_string(),
                "config_sha256": super::audited::config_digest(&self.path),
                "summary": applied.to_string(),
            }),
        );
    }

    fn reject(&self, errors: &ConfigErrors) {
        self.registry.reloads_failed.fetch_add(1, Ordering::Relaxed);
        error!(
            "reload rejected: {} has {} problem(s); still serving the previous configuration",
            self.path.display(),
            errors.errors.len()
        );
        for e in &errors.errors {
            error!("error: {e}");
        }
        self.audit(
            "reload",
            serde_json::json!({
                "result": "rejected",
                "config": self.path.display().to_string(),
                "config_sha256": super::audited::config_digest(&self.path),
                "errors": errors.errors.iter().map(ToString::to_string).collect::<Vec<_>>(),
            }),
        );
    }

    /// Carries `plan` out: renames first (their sockets stay), then removals, updates in
    /// place, and binds last, so a port conflict leaves the listener it would replace serving.
    fn apply(&mut self, plan: ReloadPlan, new: &Config) -> Applied {
        let mut applied = Applied::default();
        for restart in &plan.restart {
            match restart {
                NeedsRestart::Workers => warn!(
                    "reload: `workers` changes need a restart; keeping {} workers",
                    self.workers.len()
                ),
                NeedsRestart::Admin => warn!(
                    "reload: `admin` changes need a restart; keeping the current admin endpoint"
                ),
                NeedsRestart::Control => warn!(
                    "reload: `control` changes need a restart; keeping the current control socket"
                ),
            }
        }
        if let Some(level) = plan.log_level.filter(|_| !self.log_level_from_env) {
            ringlb_logging::set_level(level);
            applied.log_level = Some(level);
        }
        applied.log_format = crate::logging::apply_format(new.log_format);
        crate::logging::apply_syslog(&new.records);
        for Rename { from, to } in plan.rename {
            let name = to.name.clone();
            self.rename_listener(&from, to);
            applied.renamed.push((from, name));
        }
        for name in plan.remove {
            self.stop_listener(&name);
            applied.removed.push(name);
        }
        for Update { listener, change } in &plan.update {
            self.update_listener(listener);
            if let Some(change) = change {
                applied
                    .changed
                    .push(format!("{} ({change})", listener.name));
            }
        }
        for listener in plan.rebind {
            self.bind_and_start(listener, true, &mut applied);
        }
        for listener in plan.add {
            self.bind_and_start(listener, false, &mut applied);
        }
        // The summary lists new and re-bound listeners together, in the file's order.
        applied
            .added
            .sort_by_key(|name| new.listeners.iter().position(|l| l.name == *name));
        for shared in self.listeners.values() {
            shared.access_log.store(new.access_log, Ordering::Relaxed);
        }
        applied
    }

    /// Binds a listener's new sockets; only once that succeeded is the listener it
    /// `replaces` (same name) stopped and the new one started.
    fn bind_and_start(&mut self, listener: Listener, replaces: bool, applied: &mut Applied) {
        match bind(&listener, self.workers.len()) {
            Ok((sockets, addr)) => {
                if replaces {
                    self.carry_sticky(&listener.name, &listener.name);
                    self.stop_listener(&listener.name);
                    applied.rebound.push(listener.name.clone());
                }
                applied.added.push(listener.name.clone());
                self.start_listener(listener, sockets, addr);
            }
            Err(e) => {
                error!("reload: listener {}: {e}; not started", listener.name);
                applied.failed.push(listener.name);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::plan::tests::{config, config_with, l};
    use super::*;

    fn strings(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    fn failed(names: &[&str]) -> Applied {
        Applied {
            failed: strings(names),
            ..Applied::default()
        }
    }

    fn listener_names(config: &Config) -> Vec<&str> {
        config.listeners.iter().map(|l| l.name.as_str()).collect()
    }

    #[test]
    fn summary_line() {
        let cases: Vec<(&str, Applied, &str)> = vec![
            (
                "nothing",
                Applied::default(),
                "reload applied: added [] removed [] changed []",
            ),
            (
                "a failed bind is not in the summary (its error line says it)",
                failed(&["x"]),
                "reload applied: added [] removed [] changed []",
            ),
            (
                "everything",
                Applied {
                    added: strings(&["extra", "api"]),
                    removed: strings(&["old"]),
                    rebound: strings(&["api"]),
                    changed: strings(&[
                        "main (backends added 10.0.0.13:7000, algorithm round_robin→maglev)",
                        "q (settings)",
                    ]),
                    renamed: vec![("a".into(), "b".into()), ("c".into(), "d".into())],
                    failed: Vec::new(),
                    log_level: Some(LevelFilter::Debug),
                    log_format: Some(ringlb_logging::Format::Json),
                },
                "reload applied: added [extra, api] removed [old, api (rebound)] \
                 changed [main (backends added 10.0.0.13:7000, algorithm round_robin→maglev); \
                 q (settings)] log_level=DEBUG log_format=json renamed [a→b, c→d]",
            ),
            (
                "renamed only",
                Applied {
                    renamed: vec![("old".into(), "new".into())],
                    ..Applied::default()
                },
                "reload applied: added [] removed [] changed [] renamed [old→new]",
            ),
        ];
        for (case, applied, want) in cases {
            assert_eq!(applied.to_string(), want, "{case}");
        }
    }

    #[test]
    fn all_applied_runs_the_new_file_but_workers_and_admin() {
        let old = config_with(
            "workers: 2\nadmin: 127.0.0.1:9901\nlog_level: info\naccess_log: true\n\
             shutdown_timeout: 5s\n",
            &[l("a", "127.0.0.1:7001")],
        );
        let new = config_with(
            "workers: 3\nlog_level: debug\naccess_log: false\nshutdown_timeout: 9s\n",
            &[
                l("b", "127.0.0.1:7002"),
                l("a", "127.0.0.1:7001").with("idle_timeout: 5s"),
            ],
        );
        let got = effective_config(&old, &new, &Applied::default());
        assert_eq!(got.workers, old.workers);
        assert_eq!(got.admin, old.admin);
        let mut want = new.clone();
        want.workers = old.workers;
        want.admin = old.admin;
        assert_eq!(got, want);
    }

    #[test]
    fn failed_binds_keep_what_still_runs() {
        let a = l("a", "127.0.0.1:7001");
        let u = l("u", "127.0.0.1:7003").udp();
        let old = config(&[a.clone(), l("m", "127.0.0.1:7002"), u.clone()]);
        // a: re-bound elsewhere with new settings; m: updated; u: renamed (UDP: removed
        // plus added); n: new.
        let moved_a = l("a", "127.0.0.1:7005").with("idle_timeout: 5s");
        let new = config(&[
            l("n", "127.0.0.1:7006"),
            moved_a.clone(),
            l("m", "127.0.0.1:7002").with("algorithm: maglev"),
            l("u2", "127.0.0.1:7003").udp(),
        ]);
        let one = |c: &Config, name: &str| c.listeners.iter().find(|l| l.name == name).cloned();
        let cases: Vec<(&str, &[&str], Vec<&str>)> = vec![
            ("none failed", &[], vec!["n", "a", "m", "u2"]),
            (
                "new listener failed: not running",
                &["n"],
                vec!["a", "m", "u2"],
            ),
            (
                "re-bind failed: the old one runs, in place",
                &["a"],
                vec!["n", "a", "m", "u2"],
            ),
            // The old UDP listener was already removed: neither runs.
            ("renamed udp listener failed", &["u2"], vec!["n", "a", "m"]),
            ("all binds failed", &["n", "a", "u2"], vec!["a", "m"]),
        ];
        for (case, fails, names) in cases {
            let got = effective_config(&old, &new, &failed(fails));
            assert_eq!(listener_names(&got), names, "{case}");
            let a_runs = if fails.contains(&"a") { &old } else { &new };
            assert_eq!(one(&got, "a"), one(a_runs, "a"), "{case}: listener a");
            assert_eq!(one(&got, "m"), one(&new, "m"), "{case}: listener m");
            assert_eq!(got.log_level, new.log_level, "{case}");
        }
    }

    #[test]
    fn the_next_reload_of_the_same_file_retries_only_the_failed_binds() {
        let old = config(&[l("a", "127.0.0.1:7001"), l("m", "127.0.0.1:7002")]);
        let new = config(&[
            l("a", "127.0.0.1:7005"),
            l("m", "127.0.0.1:7002").with("idle_timeout: 5s"),
            l("n", "127.0.0.1:7006"),
        ]);
        let running = effective_config(&old, &new, &failed(&["a", "n"]));
        let again = plan(&running, &new);
        let names = |ls: &[Listener]| ls.iter().map(|l| l.name.clone()).collect::<Vec<_>>();
        assert_eq!(names(&again.rebind), ["a"]);
        assert_eq!(names(&again.add), ["n"]);
        assert!(again.remove.is_empty() && again.rename.is_empty());
        assert_eq!(
            again
                .update
                .iter()
                .map(|u| (u.listener.name.as_str(), u.change.as_deref()))
                .collect::<Vec<_>>(),
            [("m", None)]
        );
    }
}
