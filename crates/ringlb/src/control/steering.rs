//! Steering on the control thread: the periodic tick that moves slow starts and timed
//! failbacks on, `ringlb ctl failback`, and the log line of every change of the tiers
//! that take new connections.

use std::sync::Arc;
use std::time::Duration;

use ringlb_config::{Failback, OnRecover};
use ringlb_dataplane::{EndCause, EndMode, EndOrder};
use ringlb_scheduler::{TierChange, TierRange};
use serde_json::json;

use super::ControlPlane;
use crate::control_socket::protocol::Reply;

/// How often slow starts, latency decay and failback windows are looked at: a ramp or a
/// window ends at most this late.
pub(super) const STEER_TICK: Duration = Duration::from_millis(100);

/// `"priority 0"`, `"priorities 0-1"` or `"no backend (none is up)"`.
pub(crate) fn describe(range: Option<TierRange>) -> String {
    match range {
        None => "no backend (none is up)".into(),
        Some(r) if r.lowest == r.highest => format!("priority {}", r.lowest),
        Some(r) => format!("priorities {}", r.describe()),
    }
}

/// One line per change, like a health transition: a warning when traffic moves away from
/// the preferred tiers, info when it comes back.
pub(crate) fn log_tier_change(listener: &str, change: &TierChange) {
    let line = format!(
        "listener \"{listener}\": new connections go to {} (was {}): {}",
        describe(change.to),
        describe(change.from),
        change.cause
    );
    let worse = match (change.from, change.to) {
        (_, None) => true,
        (None, Some(_)) => false,
        (Some(from), Some(to)) => to.lowest > from.lowest || to.highest > from.highest,
    };
    if worse {
        warn!("{line}");
    } else {
        info!("{line}");
    }
}

/// `failback` as written in the config.
pub(crate) fn failback_name(failback: Failback) -> String {
    match failback {
        Failback::Immediate => "immediate".into(),
        Failback::Manual => "manual".into(),
        Failback::After(d) => humantime::format_duration(d).to_string(),
    }
}

impl ControlPlane {
    /// Every listener's steering tick; changes are logged, and failback holds are kept
    /// in the book (`state_file`, live upgrade).
    pub(super) fn steer(&mut self) {
        let mut holds_changed = false;
        for shared in self.listeners.values() {
            if let Some(change) = shared.scheduler.tick() {
                log_tier_change(&shared.name, &change);
            }
            holds_changed |= self.book.note_hold(&shared.name, shared.scheduler.hold());
        }
        if holds_changed {
            if let Err(e) = self.save_book() {
                log::warn!("{e}");
            }
        }
        self.sticky_tick();
        self.shed_recovered();
    }

    /// `on_recover: shed_backup`: when new connections went back to preferred tiers,
    /// closes the connections left on the later tiers that fell out of use, spread over
    /// `on_down_spread`, so their clients reconnect to the preferred ones.
    pub(super) fn shed_recovered(&mut self) {
        let mut shed = Vec::new();
        for (name, shared) in &self.listeners {
            let now = shared.scheduler.snapshot().tiers_now();
            let before = self.tiers_seen.insert(name.clone(), now).flatten();
            let (Some(before), Some(now)) = (before, now) else {
                continue;
            };
            let settings = shared.settings.load();
            if settings.lifecycle.on_recover != OnRecover::ShedBackup {
                continue;
            }
            let left: Vec<String> = settings
                .backends
                .iter()
                .filter(|b| before.contains(b.priority) && b.priority > now.highest)
                .map(|b| b.label.clone())
                .collect();
            if !left.is_empty() {
                shed.push((name.clone(), left, settings.lifecycle.on_down_spread, now));
            }
        }
        for (listener, labels, spread, now) in shed {
            let order = EndOrder {
                cause: EndCause::ShedBackup,
                mode: EndMode::Close,
            };
            let refs: Vec<&str> = labels.iter().map(String::as_str).collect();
            match self.end_sessions(&listener, &refs, order, spread) {
                Ok(open) => info!(
                    "on_recover: listener=\"{listener}\" shed_backup: closing {open} connection(s) on {} over {} (new connections go to {})",
                    labels.join(" "),
                    humantime::format_duration(spread),
                    describe(Some(now))
                ),
                Err(why) => warn!("on_recover: {why}"),
            }
        }
    }

    /// `ringlb ctl failback LISTENER`.
    pub(super) fn failback(&mut self, listener: &str) -> Reply {
        let shared = match self.find_listener(listener) {
            Ok(shared) => Arc::clone(shared),
            Err(refused) => return refused,
        };
        let policy = shared.settings.load().steering.failback;
        let (before, after) = shared.scheduler.failback();
        self.shed_recovered();
        let hold = shared.scheduler.hold();
        if self.book.note_hold(listener, hold) {
            if let Err(e) = self.save_book() {
                log::warn!("{e}");
            }
        }
        let message = if before == after {
            format!(
                "listener \"{listener}\": new connections already go to {} (failback {}): nothing to do",
                describe(after),
                failback_name(policy)
            )
        } else {
            let message = format!(
                "listener \"{listener}\": failback: new connections go to {} (was {})",
                describe(after),
                describe(before)
            );
            info!("ctl: {message} (asked by ringlb ctl failback)");
            message
        };
        let mut fields = serde_json::Map::new();
        fields.insert("message".into(), json!(message));
        fields.insert("tiers".into(), json!(after.map(TierRange::describe)));
        Reply::Ok(fields)
    }
}
