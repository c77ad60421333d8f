//! Control-socket requests, applied on the control thread: status, a backend's admin
//! state and weight, failback, node fail/ok, upgrade. Every change is published to the
//! schedulers at once (picks refuse a drained backend from the moment it is set) and
//! written to `state_file` when there is one.

use std::sync::Arc;

use ringlb_dataplane::ListenerState;
use ringlb_scheduler::{AdminState, Backend};
use serde_json::{json, Map};

use super::admin_book::Setting;
use super::steering::log_tier_change;
use super::ControlPlane;
use crate::control_socket::protocol::{Reply, Request};

impl ControlPlane {
    /// Applies one request and says what happened.
    pub(super) fn handle_request(&mut self, request: Request) -> Reply {
        match request {
            Request::Ping | Request::Status => self.status(),
            Request::SetState {
                listener,
                backend,
                state,
            } => self.set_state(&listener, &backend, state),
            Request::Weight {
                listener,
                backend,
                weight,
            } => self.set_weight(&listener, &backend, weight),
            Request::Failback { listener } => self.failback(&listener),
            Request::ShutdownSessions {
                listener,
                backend,
                spread,
                reset,
            } => self.shutdown_sessions(&listener, &backend, spread, reset),
            Request::Active { listener, backend } => self.active(&listener, &backend),
            Request::StickShow { listener, limit } => self.stick_show(&listener, limit),
            Request::StickClear { listener, key } => self.stick_clear(&listener, key.as_deref()),
            Request::StickMove { listener, backend } => self.stick_move(&listener, &backend),
            Request::Node { failed } => self.set_node(failed),
            Request::Upgrade { binary } => match self.start_upgrade(binary) {
                Ok(outcome) => {
                    let mut fields = Map::new();
                    fields.insert("pid".into(), json!(outcome.new_pid));
                    fields.insert(
                        "message".into(),
                        json!(format!("upgraded: pid {} now serves", outcome.new_pid)),
                    );
                    Reply::Ok(fields)
                }
                Err(why) => Reply::refused(format!("upgrade: {why}")),
            },
        }
    }

    /// While draining, only what changes nothing is served (`status`, `active`).
    pub(super) fn handle_request_draining(&mut self, request: Request) -> Reply {
        if request.is_read_only() {
            self.handle_request(request)
        } else {
            Reply::refused(format!(
                "{}: shutting down (draining); nothing is changed any more",
                request.command()
            ))
        }
    }

    fn status(&self) -> Reply {
        let ready = self.registry.readiness.check();
        let mut fields = Map::new();
        fields.insert("pid".into(), json!(std::process::id()));
        fields.insert("version".into(), json!(env!("CARGO_PKG_VERSION")));
        fields.insert("ready".into(), json!(ready.is_ok()));
        fields.insert(
            "not_ready".into(),
            json!(ready.err().map(|why| why.as_str())),
        );
        fields.insert(
            "node".into(),
            json!(if self.book.node_failed {
                "failed"
            } else {
                "ok"
            }),
        );
        fields.insert(
            "state_file".into(),
            json!(self
                .config
                .state_file
                .as_ref()
                .map(|p| p.display().to_string())),
        );
        fields.insert(
            "listeners".into(),
            crate::admin::status_listeners(&self.registry),
        );
        Reply::Ok(fields)
    }

    /// The running listener `name` and its backend `label` (the `addr` as written in the
    /// file; the same address written another way is accepted too).
    pub(super) fn find(
        &self,
        listener: &str,
        backend: &str,
    ) -> Result<(Arc<ListenerState>, Backend), Reply> {
        let shared = self.find_listener(listener)?;
        let snapshot = shared.scheduler.snapshot();
        let wanted: Option<std::net::SocketAddr> = backend.parse().ok();
        let found = snapshot
            .backends()
            .iter()
            .find(|b| b.spec.label == backend)
            .or_else(|| {
                snapshot
                    .backends()
                    .iter()
                    .find(|b| Some(b.spec.addr) == wanted)
            });
        match found {
            Some(b) => Ok((Arc::clone(shared), b.clone())),
            None => {
                let labels: Vec<&str> = snapshot
                    .backends()
                    .iter()
                    .map(|b| b.spec.label.as_str())
                    .collect();
                Err(Reply::refused(format!(
                    "listener \"{listener}\" has no backend \"{backend}\"; its backends: {}",
                    labels.join(", ")
                )))
            }
        }
    }

    pub(super) fn find_listener(&self, name: &str) -> Result<&Arc<ListenerState>, Reply> {
        self.listeners.get(name).ok_or_else(|| {
            let mut names: Vec<&str> = self.listeners.keys().map(String::as_str).collect();
            names.sort_unstable();
            Reply::refused(format!(
                "no listener named \"{name}\"; listeners: {}",
                names.join(", ")
            ))
        })
    }

    fn set_state(&mut self, listener: &str, backend: &str, state: AdminState) -> Reply {
        let (shared, b) = match self.find(listener, backend) {
            Ok(found) => found,
            Err(refused) => return refused,
        };
        let label = b.spec.label.clone();
        if state == AdminState::Ready && b.effective_weight() == 0 {
            return Reply::refused(format!(
                "listener \"{listener}\" backend {label} has weight 0, which means drained: give it a weight (`ringlb ctl weight {listener} {label} N`)"
            ));
        }
        let before = b.admin_state();
        b.state.set_admin_state(state);
        if let Some(change) = shared.scheduler.admin_changed() {
            log_tier_change(listener, &change);
        }
        let mut setting = self.book.get(listener, &label);
        setting.state = state;
        self.book.set(listener, &label, setting);
        let active = b.state.active();
        let what = match state {
            AdminState::Ready => "takes new connections".to_string(),
            AdminState::Drain => format!(
                "takes no new connections; its {active} open connection(s) stay; health checks go on"
            ),
            AdminState::Maint => format!(
                "takes no new connections and gets no health checks; its {active} open connection(s) stay"
            ),
        };
        let message =
            format!("listener \"{listener}\" backend {label}: {state} (was {before}): {what}");
        info!("ctl: {message}");
        self.changed_reply(message)
    }

    fn set_weight(&mut self, listener: &str, backend: &str, weight: Option<u32>) -> Reply {
        let (shared, b) = match self.find(listener, backend) {
            Ok(found) => found,
            Err(refused) => return refused,
        };
        let label = b.spec.label.clone();
        let before = b.effective_weight();
        b.state.set_weight_override(weight);
        if let Some(change) = shared.scheduler.admin_changed() {
            log_tier_change(listener, &change);
        }
        let mut setting: Setting = self.book.get(listener, &label);
        setting.weight = weight;
        self.book.set(listener, &label, setting);
        let now = b.effective_weight();
        let mut message = match weight {
            Some(w) => format!("listener \"{listener}\" backend {label}: weight {before}→{w}"),
            None => format!(
                "listener \"{listener}\" backend {label}: weight {before}→{now} (the configured weight)"
            ),
        };
        if now == 0 {
            message.push_str("; weight 0 means drained: no new connections");
        }
        info!("ctl: {message}");
        self.changed_reply(message)
    }

    fn set_node(&mut self, failed: bool) -> Reply {
        let was = self.registry.readiness.set_node_failed(failed);
        self.book.node_failed = failed;
        let message = match (failed, was) {
            (true, false) => {
                "node failed: /ready answers 503 until `ringlb ctl node ok`; listeners keep serving"
            }
            (true, true) => "node already failed: /ready answers 503",
            (false, true) => "node ok: /ready answers 200 again",
            (false, false) => "node already ok",
        };
        if failed == was {
            return Reply::message(message);
        }
        warn_or_info(failed, message);
        self.changed_reply(message.to_string())
    }

    /// Persists the book and builds the reply; a state file that cannot be written does
    /// not undo the change, it is said in the reply (`warning`) and logged.
    fn changed_reply(&self, message: String) -> Reply {
        let mut fields = Map::new();
        fields.insert("message".into(), json!(message));
        if let Err(e) = self.save_book() {
            fields.insert("warning".into(), json!(e));
        }
        Reply::Ok(fields)
    }
}

fn warn_or_info(warn: bool, message: &str) {
    if warn {
        warn!("ctl: {message}");
    } else {
        info!("ctl: {message}");
    }
}
