//! `/status`: the listeners and their backends as JSON (schema in docs/metrics.md). The
//! control socket's `status` reply carries the same listener list.

use std::collections::HashMap;
use std::time::UNIX_EPOCH;

use serde_json::{json, Value};

use ringlb_config::StickinessKey;
use ringlb_scheduler::{Snapshot, StickyStatus, TierRange, FULL_RAMP};

use crate::control::failback_name;
use crate::registry::{HealthRecord, Registry};

/// Renders `{"listeners":[...]}`, listeners in name order (as the registry keeps them),
/// backends in config order.
pub fn render(registry: &Registry) -> String {
    json!({ "listeners": listeners(registry) }).to_string()
}

/// The listener list of `/status`.
pub fn listeners(registry: &Registry) -> Value {
    let listeners = registry.listeners.load_full();
    // Cloned out so the lock is held only for the copy, never while formatting.
    let health = registry
        .health
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    let list: Vec<Value> = listeners
        .iter()
        .map(|shared| {
            let settings = shared.settings.load();
            let snapshot = shared.scheduler.snapshot();
            let backends = backend_list(&shared.name, &snapshot, &health);
            // Each route's pool, its backends as the listener's (health under the pool's
            // name `LISTENER/ROUTE`).
            let routes: Vec<Value> = shared
                .routes
                .table()
                .pools
                .iter()
                .map(|pool| {
                    let pool_snapshot = pool.scheduler.snapshot();
                    let name = format!("{}/{}", shared.name, pool.name);
                    json!({
                        "name": pool.name,
                        "algorithm": pool_snapshot.algorithm().as_str(),
                        "backends": backend_list(&name, &pool_snapshot, &health),
                    })
                })
                .collect();
            json!({
                "name": shared.name,
                "bind": shared.bound.to_string(),
                "protocol": settings.protocol().as_str(),
                "algorithm": snapshot.algorithm().as_str(),
                "max_connections": settings.max_connections,
                "active_connections": shared.active(),
                "health_checked": settings.health_check.is_some(),
                "failback": failback_name(settings.steering.failback),
                "min_active": settings.steering.min_active,
                "slow_start": settings.steering.slow_start.map(|d| humantime::format_duration(d).to_string()),
                "tiers_in_use": snapshot.tiers_now().map(TierRange::describe),
                "table_fingerprint": snapshot.fingerprint(),
                "failback_pending": shared.scheduler.failback_pending().map(TierRange::describe),
                "stickiness": shared.scheduler.sticky_status().map_or(Value::Null, |s| stickiness(&s)),
                "backends": backends,
                "routes": routes,
            })
        })
        .collect();
    Value::Array(list)
}

/// One pool's backends, in config order; `listener` is the name their health is kept under.
fn backend_list(
    listener: &str,
    snapshot: &Snapshot,
    health: &HashMap<(String, String), HealthRecord>,
) -> Vec<Value> {
    snapshot
        .backends()
        .iter()
        .map(|b| {
            let record = health.get(&(listener.to_owned(), b.spec.label.clone()));
            json!({
                "addr": b.spec.label,
                "weight": b.effective_weight(),
                "configured_weight": b.spec.weight,
                "admin_state": b.admin_state().as_str(),
                "backup": b.spec.priority > 0,
                "priority": b.spec.priority,
                "current_weight": b.current_weight(),
                "slow_start_ramp": f64::from(b.state.ramp()) / f64::from(FULL_RAMP),
                "latency_ms": b.state.latency().map(|d| d.as_secs_f64() * 1000.0),
                "max_connections": b.spec.max_connections,
                "up": b.state.is_up(),
                "active_connections": b.state.active(),
                "connect_failures": b.state.connect_failures(),
                "response_timeouts": b.state.response_timeouts(),
                "health_transitions": record.map_or(0, |r| r.transitions),
                "last_transition": record.map_or(Value::Null, transition),
            })
        })
        .collect()
}

/// A listener's `stickiness` in `/status`.
fn stickiness(s: &StickyStatus) -> Value {
    let port_range = match s.settings.key {
        StickinessKey::SourceIp => None,
        StickinessKey::SourceIpPortRange { port_range } => Some(port_range),
    };
    json!({
        "key": s.settings.key.as_str(),
        "port_range": port_range,
        "table_size": s.capacity,
        "entries": s.entries,
        "memory_bytes": s.memory,
        "expire": humantime::format_duration(s.settings.expire).to_string(),
        "single_active": s.settings.single_active,
        "active_backend": s.active,
    })
}

fn transition(record: &HealthRecord) -> Value {
    // A clock before 1970 or past u64 milliseconds is shown as null rather than invented.
    let at = record
        .at
        .duration_since(UNIX_EPOCH)
        .ok()
        .and_then(|d| u64::try_from(d.as_millis()).ok());
    json!({
        "up": record.up,
        "reason": record.reason,
        "at_unix_ms": at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::testing::{listener, registry_with};
    use ringlb_config::Protocol;
    use std::time::{Duration, SystemTime};

    #[test]
    fn status_reports_listeners_backends_and_transitions() {
        let web = listener("web", Protocol::Tcp, &["127.0.0.1:9001", "[::1]:9002"], 2);
        let snap = web.scheduler.snapshot();
        snap.backends()[1].state.set_up(false);
        snap.backends()[1].state.set_weight_override(Some(0));
        let _g1 = snap.backends()[0].state.acquire();
        let _g2 = snap.backends()[0].state.acquire();
        snap.backends()[0].state.record_connect_failure();
        let registry = registry_with(vec![web]);
        let before = SystemTime::now();
        registry.record_transition("web", "[::1]:9002", false, "backend down: refused".into());

        let v: Value = serde_json::from_str(&render(&registry)).unwrap();
        let l = &v["listeners"][0];
        assert_eq!(l["name"], "web");
        assert_eq!(l["bind"], "127.0.0.1:4000");
        assert_eq!(l["protocol"], "tcp");
        assert_eq!(l["algorithm"], "round_robin");
        assert_eq!(l["active_connections"], 0);
        let b0 = &l["backends"][0];
        assert_eq!(b0["addr"], "127.0.0.1:9001");
        assert_eq!(b0["weight"], 1);
        assert_eq!(b0["configured_weight"], 1);
        assert_eq!(b0["admin_state"], "ready");
        assert_eq!(b0["backup"], false);
        assert_eq!(b0["up"], true);
        assert_eq!(b0["active_connections"], 2);
        assert_eq!(b0["connect_failures"], 1);
        assert_eq!(b0["last_transition"], Value::Null);
        let b1 = &l["backends"][1];
        assert_eq!(b1["addr"], "[::1]:9002");
        assert_eq!(b1["up"], false);
        assert_eq!(b1["admin_state"], "drain");
        assert_eq!(b1["weight"], 0);
        assert_eq!(b1["last_transition"]["up"], false);
        assert_eq!(b1["last_transition"]["reason"], "backend down: refused");
        let at = b1["last_transition"]["at_unix_ms"].as_u64().unwrap();
        let lo = before.duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
        assert!(
            at >= lo && at < lo + Duration::from_secs(60).as_millis() as u64,
            "{at}"
        );
    }

    #[test]
    fn empty_registry() {
        assert_eq!(render(&Registry::default()), r#"{"listeners":[]}"#);
    }
}
