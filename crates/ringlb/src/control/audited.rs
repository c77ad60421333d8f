//! What the control plane writes to the audit log (docs/operations.md, "Audit log"): the
//! configuration it starts and reloads with, every control command that may change
//! something (with who asked), upgrades, health transitions and shutdowns.

use std::path::Path;

use ringlb_prober::Transition;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::ControlPlane;
use crate::control_socket::protocol::{encode, Reply};
use crate::control_socket::ControlRequest;

impl ControlPlane {
    /// Appends one record; a record that cannot be written is an error line, never a
    /// stop: the load balancer keeps serving.
    pub(super) fn audit(&self, event: &str, detail: Value) {
        let Some(log) = &self.audit else {
            return;
        };
        let mut log = log.borrow_mut();
        if let Err(e) = log.record(event, detail) {
            log::error!("audit log: {e}; the event was: {event}");
        }
    }

    /// Answers a control request, and records it when it can change anything.
    pub(super) fn handle_audited(&mut self, r: ControlRequest, draining: bool) {
        let ControlRequest {
            request,
            reply: answer,
            peer,
        } = r;
        let read_only = request.is_read_only();
        let command = request.command();
        let encoded = encode(&request);
        let reply = if draining {
            self.handle_request_draining(request)
        } else {
            self.handle_request(request)
        };
        if !read_only {
            let (result, message) = match &reply {
                Reply::Ok(fields) => ("ok", fields.get("message").cloned().unwrap_or(Value::Null)),
                Reply::Refused(why) => ("refused", json!(why)),
            };
            self.audit(
                "control",
                json!({
                    "cmd": command,
                    "request": encoded,
                    "uid": peer.uid,
                    "pid": peer.pid,
                    "result": result,
                    "message": message,
                }),
            );
        }
        let _ = answer.send(reply);
    }

    /// `audit_log` changed by a reload: records go to the new file from now on.
    pub(super) fn reopen_audit(&mut self, path: Option<&Path>) {
        self.audit = match path.map(crate::audit::AuditLog::open) {
            None => None,
            Some(Ok(log)) => Some(std::cell::RefCell::new(log)),
            Some(Err(e)) => {
                log::error!("audit log: {e}; no audit records are written until this is fixed");
                None
            }
        };
    }

    pub(super) fn audit_transition(&self, t: &Transition) {
        self.audit(
            "health",
            json!({
                "listener": t.listener,
                "backend": t.backend,
                "up": t.up,
                "outcome": t.outcome.to_string(),
                "consecutive": t.consecutive,
                "passive": t.passive,
            }),
        );
    }
}

/// SHA-256 (hex) of the configuration file as read now, so a record says exactly which
/// file was loaded; `None` when it cannot be read.
pub(super) fn config_digest(path: &Path) -> Option<String> {
    let bytes = std::fs::read(path).ok()?;
    Some(
        Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
    )
}
