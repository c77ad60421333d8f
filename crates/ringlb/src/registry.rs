//! What the control plane knows and the admin endpoint reads: the live listener set and the
//! health history. Only the control thread writes; the data plane never touches this.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use ringlb_dataplane::ListenerState;

use crate::readiness::Readiness;

/// The last health transition of one backend.
#[derive(Debug, Clone)]
pub struct HealthRecord {
    pub up: bool,
    /// The prober's transition line, e.g. `backend down: listener=… outcome=refused …`.
    pub reason: String,
    pub at: SystemTime,
    pub transitions: u64,
}

#[derive(Debug, Default)]
pub struct Registry {
    pub listeners: ArcSwap<Vec<Arc<ListenerState>>>,
    /// Key: (listener name, backend label).
    pub health: Mutex<HashMap<(String, String), HealthRecord>>,
    pub transitions_total: AtomicU64,
    pub reloads_ok: AtomicU64,
    pub reloads_failed: AtomicU64,
    /// What `/ready` answers; the control plane sets it.
    pub readiness: Readiness,
}

impl Registry {
    pub fn record_transition(&self, listener: &str, backend: &str, up: bool, reason: String) {
        self.transitions_total
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let Ok(mut health) = self.health.lock() else {
            return;
        };
        let entry = health
            .entry((listener.to_string(), backend.to_string()))
            .or_insert(HealthRecord {
                up,
                reason: String::new(),
                at: SystemTime::now(),
                transitions: 0,
            });
        entry.up = up;
        entry.reason = reason;
        entry.at = SystemTime::now();
        entry.transitions += 1;
    }
}
