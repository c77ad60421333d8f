//! The families of listeners with routes (TLS passthrough routed by SNI): where inspected
//! connections went, and why some were not routed by name. Only listeners with routes
//! have series.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use ringlb_dataplane::routes::{Unrouted, DEFAULT_POOL};
use ringlb_dataplane::ListenerState;

use super::Exposition;

pub(super) fn render(out: &mut Exposition, listeners: &[Arc<ListenerState>]) {
    let routed: Vec<&ListenerState> = listeners
        .iter()
        .map(|l| &**l)
        .filter(|l| {
            let settings = l.settings.load();
            settings.tcp().is_some_and(|t| t.tls_routing.is_some())
        })
        .collect();
    out.family(
        "ringlb_sni_routed_total",
        "counter",
        "Connections of a listener with routes sent to a pool after reading their ClientHello, by route (\"default\": the listener's own backends).",
    );
    for l in &routed {
        let table = l.routes.table();
        for pool in &table.pools {
            out.sample(
                "ringlb_sni_routed_total",
                &[("listener", &l.name), ("route", &pool.name)],
                pool.routed.load(Ordering::Relaxed),
            );
        }
        out.sample(
            "ringlb_sni_routed_total",
            &[("listener", &l.name), ("route", DEFAULT_POOL)],
            l.routes.default_routed.load(Ordering::Relaxed),
        );
    }
    out.family(
        "ringlb_sni_fallback_total",
        "counter",
        "Connections sent to the default pool without a ClientHello to route by (on_non_tls: default), by reason.",
    );
    for l in &routed {
        for reason in Unrouted::ALL.into_iter().filter(|r| r.may_fall_back()) {
            out.sample(
                "ringlb_sni_fallback_total",
                &[("listener", &l.name), ("reason", reason.as_str())],
                l.routes.fallback(reason).load(Ordering::Relaxed),
            );
        }
    }
    out.family(
        "ringlb_sni_rejected_total",
        "counter",
        "Connections a listener with routes closed before connecting anywhere, by reason.",
    );
    for l in &routed {
        for reason in Unrouted::ALL {
            out.sample(
                "ringlb_sni_rejected_total",
                &[("listener", &l.name), ("reason", reason.as_str())],
                l.routes.rejected(reason).load(Ordering::Relaxed),
            );
        }
    }
}
