//! `on_down` for the backends of a listener's routes. The prober checks each route's pool
//! under the name `LISTENER/ROUTE`; a backend it marks down there has its connections
//! ended as its `on_down` (its own, else the listener's) says, like one of the listener's
//! own backends.

use std::sync::Arc;

use ringlb_config::OnDown;
use ringlb_dataplane::worker::Command;
use ringlb_dataplane::{EndCause, EndMode, EndOrder};
use ringlb_prober::Transition;

use super::sessions::ending;
use super::ControlPlane;

impl ControlPlane {
    /// `t.listener` is `listener/route`.
    pub(super) fn on_route_backend_down(&self, listener: &str, route: &str, t: &Transition) {
        let Some(shared) = self.listeners.get(listener) else {
            return;
        };
        let settings = shared.settings.load();
        let configured = settings
            .tcp()
            .and_then(|tcp| tcp.tls_routing.as_deref())
            .and_then(|routing| routing.routes.iter().find(|r| r.name == route))
            .and_then(|r| r.backends.iter().find(|b| b.label == t.backend));
        let Some(configured) = configured else {
            return;
        };
        let mode = match configured.on_down {
            OnDown::Keep => return,
            OnDown::Close => EndMode::Close,
            OnDown::Reset => EndMode::Reset,
        };
        let table = shared.routes.table();
        let Some(pool) = table.pools.iter().find(|p| p.name == route) else {
            return;
        };
        let snapshot = pool.scheduler.snapshot();
        let Some(backend) = snapshot
            .backends()
            .iter()
            .find(|b| b.spec.label == t.backend)
        else {
            return;
        };
        if backend.state.is_up() {
            info!(
                "on_down: listener={} backend={} is up again; its connections stay",
                t.listener, t.backend
            );
            return;
        }
        let state = Arc::clone(&backend.state);
        let open = state.active();
        let spread = settings.lifecycle.on_down_spread;
        let order = EndOrder {
            cause: EndCause::BackendDown,
            mode,
        };
        self.broadcast(|| Command::End {
            backends: vec![Arc::clone(&state)],
            order,
            spread,
        });
        warn!(
            "on_down: listener={} backend={} {}: {}",
            t.listener,
            t.backend,
            configured.on_down.as_str(),
            ending(open, mode, spread)
        );
    }
}
