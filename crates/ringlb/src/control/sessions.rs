//! Ending open TCP connections on purpose: when the prober marks a backend down and the
//! listener says `on_down: close|reset`, and on `ringlb ctl shutdown-sessions`. Both go
//! through [`ControlPlane::end_sessions`], which asks every worker to end the
//! connections of some backends of one listener, spread over a duration. `ringlb ctl
//! wait-empty` polls [`ControlPlane::active`] until a backend has none left.

use std::sync::Arc;
use std::time::Duration;

use ringlb_config::{OnDown, Protocol};
use ringlb_dataplane::worker::Command;
use ringlb_dataplane::{EndCause, EndMode, EndOrder};
use ringlb_prober::Transition;
use ringlb_scheduler::{AdminState, BackendState};
use serde_json::{json, Map};

use super::ControlPlane;
use crate::control_socket::protocol::Reply;

impl ControlPlane {
    /// Ends the open TCP connections of listener `listener` to the backends labelled
    /// `labels`, as `order` says, each at its own random moment in `[0, spread)`, on
    /// every worker. Returns how many connections those backends had (a connection still
    /// connecting at this instant is counted but not ended), or why nothing was done.
    pub(super) fn end_sessions(
        &self,
        listener: &str,
        labels: &[&str],
        order: EndOrder,
        spread: Duration,
    ) -> Result<u32, String> {
        let shared = self
            .listeners
            .get(listener)
            .ok_or_else(|| format!("no listener named \"{listener}\""))?;
        if shared.protocol != Protocol::Tcp {
            return Err(format!(
                "listener \"{listener}\" is {}: only TCP connections are ended (a UDP session ends after session_timeout, and moves when its backend goes down)",
                shared.protocol.as_str()
            ));
        }
        let snapshot = shared.scheduler.snapshot();
        let mut backends: Vec<Arc<BackendState>> = Vec::with_capacity(labels.len());
        for label in labels {
            let backend = snapshot
                .backends()
                .iter()
                .find(|b| b.spec.label == *label)
                .ok_or_else(|| format!("listener \"{listener}\" has no backend \"{label}\""))?;
            backends.push(Arc::clone(&backend.state));
        }
        let open = backends.iter().map(|b| b.active()).sum();
        self.broadcast(|| Command::End {
            backends: backends.clone(),
            order,
            spread,
        });
        Ok(open)
    }

    /// A health transition from the prober: logged, and when a backend went down, its
    /// connections ended if its `on_down` says so.
    pub(super) fn on_transition(&self, t: &Transition) {
        self.log_transition(t);
        self.audit_transition(t);
        if !t.up {
            self.on_down(t);
        }
    }

    fn on_down(&self, t: &Transition) {
        if let Some((listener, route)) = t.listener.split_once('/') {
            return self.on_route_backend_down(listener, route, t);
        }
        let Some(shared) = self.listeners.get(&t.listener) else {
            return;
        };
        let settings = shared.settings.load();
        let Some(backend) = settings.backends.iter().find(|b| b.label == t.backend) else {
            return;
        };
        let mode = match backend.on_down {
            OnDown::Keep => return,
            OnDown::Close => EndMode::Close,
            OnDown::Reset => EndMode::Reset,
        };
        // Up again already (a flap the prober reported while this one waited): its
        // connections are live again, leave them.
        let snapshot = shared.scheduler.snapshot();
        if snapshot
            .backends()
            .iter()
            .any(|b| b.spec.label == t.backend && b.state.is_up())
        {
            info!(
                "on_down: listener={} backend={} is up again; its connections stay",
                t.listener, t.backend
            );
            return;
        }
        let spread = settings.lifecycle.on_down_spread;
        let order = EndOrder {
            cause: EndCause::BackendDown,
            mode,
        };
        match self.end_sessions(&t.listener, &[&t.backend], order, spread) {
            Ok(open) => warn!(
                "on_down: listener={} backend={} {}: {}",
                t.listener,
                t.backend,
                backend.on_down.as_str(),
                ending(open, mode, spread)
            ),
            Err(why) => warn!("on_down: {why}"),
        }
    }

    /// `ringlb ctl shutdown-sessions`.
    pub(super) fn shutdown_sessions(
        &self,
        listener: &str,
        backend: &str,
        spread: Duration,
        reset: bool,
    ) -> Reply {
        let (_, b) = match self.find(listener, backend) {
            Ok(found) => found,
            Err(refused) => return refused,
        };
        let label = b.spec.label.as_str();
        let mode = if reset {
            EndMode::Reset
        } else {
            EndMode::Close
        };
        let order = EndOrder {
            cause: EndCause::ShutdownSessions,
            mode,
        };
        let open = match self.end_sessions(listener, &[label], order, spread) {
            Ok(open) => open,
            Err(why) => return Reply::refused(why),
        };
        let mut message = format!(
            "listener \"{listener}\" backend {label}: {}",
            ending(open, mode, spread)
        );
        if b.admin_state() == AdminState::Ready && b.state.is_up() {
            message.push_str(&format!(
                "; it still takes new connections: `ringlb ctl drain {listener} {label}` first to empty it"
            ));
        }
        info!("ctl: {message}");
        Reply::message(message)
    }

    /// `active`: a backend's open connections, what `ringlb ctl wait-empty` polls.
    pub(super) fn active(&self, listener: &str, backend: &str) -> Reply {
        let (_, b) = match self.find(listener, backend) {
            Ok(found) => found,
            Err(refused) => return refused,
        };
        let active = b.state.active();
        let mut fields = Map::new();
        fields.insert("active".into(), json!(active));
        fields.insert(
            "message".into(),
            json!(format!(
                "listener \"{listener}\" backend {}: {active} open connection(s)",
                b.spec.label
            )),
        );
        Reply::Ok(fields)
    }
}

/// `closing its 12 open connection(s) within 5s (FIN after what is in flight)`.
pub(super) fn ending(open: u32, mode: EndMode, spread: Duration) -> String {
    let (verb, how) = match mode {
        EndMode::Close => ("closing", "FIN after what is in flight"),
        EndMode::Reset => ("resetting", "RST"),
    };
    let when = if spread.is_zero() {
        "at once".to_string()
    } else {
        format!("within {spread:?}")
    };
    format!("{verb} its {open} open connection(s) {when} ({how})")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_message_says_how_many_how_and_when() {
        assert_eq!(
            ending(12, EndMode::Close, Duration::from_secs(5)),
            "closing its 12 open connection(s) within 5s (FIN after what is in flight)"
        );
        assert_eq!(
            ending(0, EndMode::Reset, Duration::ZERO),
            "resetting its 0 open connection(s) at once (RST)"
        );
    }
}
