//! One accepted TCP client, start to end: allow-list → listener limit → pick → connect
//! (timeout, retries: `connect`) → PROXY header → relay → outcome.

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use ringlb_config::ProxyProtocol;
use socket2::Socket;

use super::connect::connect_backend;
use super::Accounting;
use crate::ctx::WorkerCtx;
use crate::listener::{is_allowed, Admission};
use crate::outcome::{DenyReason, EndReason, Outcome, Record};
use crate::proxy_protocol;
use crate::relay;
use crate::uring;

/// Close a client we will not serve with a reset: it learns at once, and no TIME_WAIT is left here.
fn reject(client: Socket) {
    let _ = client.set_linger(Some(Duration::ZERO));
    drop(client);
}

pub(super) async fn serve(
    ctx: Rc<WorkerCtx>,
    accounting: Rc<Accounting>,
    client: Socket,
    peer: SocketAddr,
) {
    let state = &accounting.state;
    let Some(counters) = state.workers.get(ctx.id) else {
        return reject(client);
    };
    let settings = state.settings.load_full();
    // Only TCP listeners get a TCP accept loop, so this cannot fail; were it to, the
    // client is refused rather than served with settings of another protocol.
    let Some(tcp) = settings.tcp() else {
        debug_assert!(false, "listener {} has no tcp settings", state.name);
        return reject(client);
    };
    let started = Instant::now();
    let deny = |reason| {
        let waited = started.elapsed();
        state.finish(counters, &Record::denied(peer, reason, waited))
    };
    if !is_allowed(&settings, &peer) {
        deny(DenyReason::NotAllowed);
        return reject(client);
    }
    if !state.try_admit(settings.max_connections) {
        deny(DenyReason::Limit);
        return reject(client);
    }
    let _admission = Admission(state);
    let _live = ctx.enter();
    counters.connections.add(1);

    // The snapshot this connection was balanced with; it also names the backend in the
    // access log, so no label is copied per connection.
    let snapshot = state.scheduler.snapshot();
    let (backend, index, _active) =
        match connect_backend(&accounting, &snapshot, tcp, peer, &ctx).await {
            Ok(connected) => connected,
            Err(reason) => {
                deny(reason);
                return reject(client);
            }
        };
    let label = snapshot
        .backends()
        .get(index)
        .map_or("-", |b| b.spec.label.as_str());
    let client = Rc::new(client);
    let backend = Rc::new(backend);
    let mut record = Record {
        client: peer,
        backend: label,
        duration: Duration::ZERO,
        bytes_in: 0,
        bytes_out: 0,
        outcome: Outcome::Ended(EndReason::ProxyHeaderFailed),
    };
    let header = proxy_header(settings.proxy_protocol, peer, || {
        // The address this client actually reached (a wildcard bind has many).
        client
            .local_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .unwrap_or(state.bound)
    });
    let header_sent = match header {
        Some(header) => uring::send_all(&backend, header).await.0.is_ok(),
        None => true,
    };
    if header_sent {
        let report = relay::relay(
            Rc::clone(&client),
            Rc::clone(&backend),
            tcp.forwarding,
            tcp.idle_timeout,
            counters,
            &ctx.cut,
            &ctx.pipes,
        )
        .await;
        record.bytes_in = report.bytes_in;
        record.bytes_out = report.bytes_out;
        record.outcome = Outcome::Ended(report.end);
    } else {
        // The backend is gone before the first byte: reset both, the client must not
        // mistake the close for a clean end of an empty stream.
        let _ = backend.set_linger(Some(Duration::ZERO));
        let _ = client.set_linger(Some(Duration::ZERO));
    }
    record.duration = started.elapsed();
    state.finish(counters, &record);
}

/// `local` is asked only when a header is sent: it costs a getsockname.
fn proxy_header(
    mode: ProxyProtocol,
    client: SocketAddr,
    local: impl FnOnce() -> SocketAddr,
) -> Option<Vec<u8>> {
    match mode {
        ProxyProtocol::None => None,
        ProxyProtocol::V1 => Some(proxy_protocol::v1(client, local())),
        ProxyProtocol::V2 => Some(proxy_protocol::v2(
            client,
            local(),
            proxy_protocol::Transport::Stream,
        )),
    }
}
