//! One accepted TCP client, start to end: allow-list → per-source limits → listener limit
//! → (with routes) ClientHello and pool (`inspect`) → pick → connect (timeout, retries:
//! `connect`) → PROXY header → the bytes read first → relay → outcome.

use std::borrow::Borrow;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use ringlb_config::{Algorithm, Forwarding, Listener, ProxyProtocol, RecordLevel};
use ringlb_scheduler::{ActiveGuard, BackendState, Snapshot};
use socket2::Socket;

use super::connect::{connect_backend, sticky_now};
use super::inspect;
use super::sockopts::{self, Leg};
use super::Accounting;
use crate::ctx::WorkerCtx;
use crate::ending::jittered;
use crate::handover::{Moved, MovedConn};
use crate::listener::{is_allowed, Admission, ListenerState};
use crate::outcome::{DenyReason, EndReason, Outcome, Record};
use crate::per_source;
use crate::proxy_protocol;
use crate::records::{self, ConnId};
use crate::relay::{
    self, AnswerWatch, Frozen, LinkProgress, ProgressWatch, RelayContext, RelayEnd,
};
use crate::routes::TlsSeen;
use crate::uring;

/// Close a client we will not serve with a reset: it learns at once, and no TIME_WAIT is left here.
fn reject(client: impl Borrow<Socket>) {
    let _ = client.borrow().set_linger(Some(Duration::ZERO));
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
    // `connection_records: all`: this connection's id, in its records and its PROXY header.
    let id = (settings.records.level == RecordLevel::All).then(|| ctx.ids.next());
    let deny = |reason| {
        let waited = started.elapsed();
        state.finish_as(counters, &Record::denied(peer, reason, waited), id)
    };
    if !is_allowed(&settings, &peer) {
        deny(DenyReason::NotAllowed);
        return reject(client);
    }
    // Before the listener's limit, so a source over its own limit takes no listener slot.
    let gate = &accounting.sources;
    let _source = match gate.admit(state, counters, tcp.per_source.as_ref(), peer, started) {
        Ok(slot) => slot,
        Err(reason) => {
            deny(reason);
            return reject(client);
        }
    };
    if !state.try_admit(settings.max_connections) {
        deny(DenyReason::Limit);
        return reject(client);
    }
    let _admission = Admission(state);
    let _live = ctx.enter_relay();
    counters.connections.add(1);

    let client = Rc::new(client);
    // With routes: the pool the ClientHello names, and the bytes read to learn it.
    let routed = match tcp.tls_routing.as_deref() {
        None => None,
        Some(routing) => match inspect::route(&client, state, routing, peer).await {
            Ok(routed) => Some(routed),
            Err(_) => {
                deny(DenyReason::Unrouted);
                return reject(client);
            }
        },
    };
    let scheduler = routed
        .as_ref()
        .map_or(&*state.scheduler, |r| r.scheduler(&state.scheduler));
    // The snapshot this connection was balanced with; it also names the backend in the
    // access log, so no label is copied per connection.
    let snapshot = scheduler.snapshot();
    let connecting = Instant::now();
    let (backend, index, active, attempts) =
        match connect_backend(&accounting, &snapshot, tcp, peer, &ctx).await {
            Ok(connected) => connected,
            Err(reason) => {
                let waited = started.elapsed();
                let mut record = Record::denied(peer, reason, waited);
                record.tls = routed.as_ref().map(|r| &r.seen);
                state.finish_as(counters, &record, id);
                return reject(client);
            }
        };
    // Dead-peer detection, once there is a link to protect (see `sockopts`).
    sockopts::apply(&accounting, Leg::Client, &client, &tcp.liveness);
    sockopts::apply(&accounting, Leg::Backend, &backend, &tcp.liveness);
    let label = snapshot
        .backends()
        .get(index)
        .map_or("-", |b| b.spec.label.as_str());
    let backend = Rc::new(backend);
    // The address this client actually reached (a wildcard bind has many): a getsockname,
    // made at most once, and only when a record or a PROXY header needs it.
    let reached = std::cell::OnceCell::new();
    let local = || {
        *reached.get_or_init(|| {
            client
                .local_addr()
                .ok()
                .and_then(|a| a.as_socket())
                .unwrap_or(state.bound)
        })
    };
    if let Some(id) = id.filter(|_| state.access_log.load(Ordering::Relaxed)) {
        records::log_established(&records::Established {
            id,
            listener: &state.name,
            client: peer,
            local: local(),
            backend: label,
            connect: connecting.elapsed(),
            attempts,
        });
    }
    let header = proxy_header(settings.proxy_protocol, peer, local, id);
    let (seen, first) = match routed {
        Some(r) => (Some(r.seen), r.first),
        None => (None, Vec::new()),
    };
    let preface = first.len() as u64;
    if let Err(failed) = open_backend(&backend, header, first).await {
        // The backend is gone before the first byte: reset both, the client must not
        // mistake the close for a clean end of an empty stream.
        let _ = backend.set_linger(Some(Duration::ZERO));
        let _ = client.set_linger(Some(Duration::ZERO));
        let record = Record {
            client: peer,
            backend: label,
            duration: started.elapsed(),
            bytes_in: 0,
            bytes_out: 0,
            outcome: Outcome::Ended(failed),
            tls: seen.as_ref(),
        };
        state.finish_as(counters, &record, id);
        return;
    }
    let link = Established {
        client,
        backend,
        peer,
        label,
        owner: Some(active.state()),
        started,
        id,
        tls: seen.as_ref(),
        preface,
    };
    counters.bytes_in.add(preface);
    forward(&ctx, &accounting, link, RelaySettings::of(&settings), None).await;
    remember_at_end(&snapshot, peer, Some(index));
}

/// What the backend gets before the relay starts: the PROXY header, then the bytes read
/// from the client to route it, untouched. The error is how the connection ended.
async fn open_backend(
    backend: &Rc<Socket>,
    header: Option<Vec<u8>>,
    first: Vec<u8>,
) -> Result<(), EndReason> {
    if let Some(header) = header {
        if uring::send_all(backend, header).await.0.is_err() {
            return Err(EndReason::ProxyHeaderFailed);
        }
    }
    if !first.is_empty() && uring::send_all(backend, first).await.0.is_err() {
        return Err(EndReason::BackendReset);
    }
    Ok(())
}

/// Stickiness: an entry is refreshed when its connection ends too, so `expire` counts
/// from the end of the client's last connection, however long that one lasted.
fn remember_at_end(snapshot: &Snapshot, peer: SocketAddr, index: Option<usize>) {
    if let Some(index) = index.filter(|_| snapshot.is_sticky()) {
        snapshot.sticky_remember(peer, index, sticky_now());
    }
}

/// A connection with both legs up.
struct Established<'a> {
    client: Rc<Socket>,
    backend: Rc<Socket>,
    peer: SocketAddr,
    label: &'a str,
    /// Its backend's live state, by which the control plane asks for its end; `None` for
    /// a connection handed over in a live upgrade whose backend a reload had removed.
    owner: Option<&'a BackendState>,
    started: Instant,
    /// `connection_records: all`: its id.
    id: Option<ConnId>,
    /// What routing read of the ClientHello, for the access log.
    tls: Option<&'a TlsSeen>,
    /// Client bytes written to the backend before the relay (the ClientHello read to
    /// route it): counted in `bytes_in`.
    preface: u64,
}

/// What the relay of one connection runs with: read once when the connection starts, so a
/// reload applies to the connections accepted after it.
#[derive(Clone, Copy)]
struct RelaySettings {
    forwarding: Forwarding,
    idle_timeout: Duration,
    max_duration: Option<Duration>,
    /// least_latency: answer times feed the backend's latency average.
    sample_latency: bool,
    response_timeout: Option<Duration>,
    /// `connection_report_interval`.
    report_interval: Option<Duration>,
}

impl RelaySettings {
    /// What watches this link's answer times, if anything does.
    fn answers(self, backend: &BackendState) -> Option<AnswerWatch<'_>> {
        (self.sample_latency || self.response_timeout.is_some()).then_some(AnswerWatch {
            backend,
            sample: self.sample_latency,
            timeout: self.response_timeout,
        })
    }

    fn of(listener: &Listener) -> RelaySettings {
        let (forwarding, idle_timeout) = match listener.tcp() {
            Some(tcp) => (tcp.forwarding, tcp.idle_timeout),
            None => (Forwarding::Copy, ringlb_config::DEFAULT_IDLE_TIMEOUT),
        };
        RelaySettings {
            forwarding,
            idle_timeout,
            max_duration: listener.lifecycle.max_connection_duration,
            sample_latency: listener.algorithm == Algorithm::LeastLatency,
            response_timeout: listener.tcp().and_then(|tcp| tcp.liveness.response_timeout),
            report_interval: listener.records.report_interval,
        }
    }
}

/// Relay an established connection to its end and count and log how it ended, or, when a
/// live upgrade freezes it, send it to the process taking over. A frozen link that no
/// upgrade takes (it was called off) goes on relaying here.
async fn forward(
    ctx: &Rc<WorkerCtx>,
    accounting: &Accounting,
    link: Established<'_>,
    settings: RelaySettings,
    mut resumed: Option<Frozen>,
) {
    let state = &accounting.state;
    let Some(counters) = state.workers.get(ctx.id) else {
        return;
    };
    let registered = link.owner.map(|backend| ctx.ends.register(backend));
    let max_age = settings
        .max_duration
        .map(|max| link.started + jittered(max, ctx.random()));
    let report = |p: LinkProgress| {
        if let Some(id) = link.id.filter(|_| state.access_log.load(Ordering::Relaxed)) {
            records::log_progress(&records::Progress {
                id,
                listener: &state.name,
                client: link.peer,
                backend: link.label,
                age: link.started.elapsed(),
                bytes_in: p.bytes_in,
                bytes_out: p.bytes_out,
                idle: p.idle,
            });
        }
    };
    let progress = link
        .id
        .and(settings.report_interval)
        .map(|every| ProgressWatch {
            every,
            report: &report,
        });
    loop {
        let cx = RelayContext {
            forwarding: settings.forwarding,
            idle_timeout: settings.idle_timeout,
            counters,
            cut: &ctx.cut,
            handover: &ctx.handover,
            pipes: &ctx.pipes,
            buffers: &ctx.buffers,
            answers: link.owner.and_then(|backend| settings.answers(backend)),
            end: registered.as_ref().map(|r| &*r.request),
            max_age,
            progress,
        };
        let end = relay::relay(
            Rc::clone(&link.client),
            Rc::clone(&link.backend),
            &cx,
            resumed,
        )
        .await;
        match end {
            RelayEnd::Ended(report) => {
                let record = Record {
                    client: link.peer,
                    backend: link.label,
                    duration: link.started.elapsed(),
                    bytes_in: report.bytes_in + link.preface,
                    bytes_out: report.bytes_out,
                    outcome: Outcome::Ended(report.end),
                    tls: link.tls,
                };
                state.finish_as(counters, &record, link.id);
                return;
            }
            RelayEnd::Frozen(frozen) => match hand_over(ctx, state, &link, frozen) {
                Ok(()) => return,
                Err(frozen) => resumed = Some(frozen),
            },
        }
    }
}

/// Send a frozen connection to the process taking over (through the control plane's
/// sink). Gives the state back when no upgrade takes it.
fn hand_over(
    ctx: &WorkerCtx,
    state: &ListenerState,
    link: &Established<'_>,
    frozen: Frozen,
) -> Result<(), Frozen> {
    let Some(sink) = ctx.moved.borrow().clone() else {
        // No upgrade takes connections: stop freezing them on this worker.
        ctx.handover.reset();
        return Err(frozen);
    };
    // Every operation on the sockets has completed when the relay returns, so `link` holds
    // the only other references; duplicates keep ours valid if the sink refuses.
    let (Ok(client), Ok(backend)) = (link.client.try_clone(), link.backend.try_clone()) else {
        log::warn!(
            "listener {}: cannot duplicate a connection's sockets to hand it over; it stays here",
            state.name
        );
        return Err(frozen);
    };
    let moved = MovedConn {
        worker: ctx.id,
        listener: state.name.clone(),
        backend: link.label.to_string(),
        client_addr: link.peer,
        client,
        backend_socket: backend,
        age: link.started.elapsed(),
        frozen_at: crate::handover::monotonic_now(),
        frozen,
    };
    sink.send(Moved::Conn(moved)).map_err(|returned| {
        // The upgrade is over (its receiver is gone): nothing takes connections any more,
        // so this worker stops freezing them, or this link would freeze again at once.
        ctx.moved.borrow_mut().take();
        ctx.handover.reset();
        match returned.into_inner() {
            Moved::Conn(m) => m.frozen,
            // What comes back is what was sent.
            Moved::Session(_) => {
                debug_assert!(false, "a refused connection came back as a session");
                Frozen::default()
            }
        }
    })
}

/// Take over a connection a previous process froze: account it as this process's own and
/// relay it on, writing first what the previous process had read and not written.
pub(crate) async fn resume(ctx: Rc<WorkerCtx>, accounting: Rc<Accounting>, moved: MovedConn) {
    let state = &accounting.state;
    // Already admitted by the previous process: count it whatever the limit.
    if !state.try_admit(u32::MAX) {
        return;
    }
    let _admission = Admission(state);
    let settings = state.settings.load_full();
    let per_source = settings.tcp().and_then(|tcp| tcp.per_source);
    let _source = per_source::adopt(state, per_source.as_ref(), moved.client_addr);
    let _live = ctx.enter_relay();
    let snapshot = state.scheduler.snapshot();
    let found = snapshot
        .backends()
        .iter()
        .position(|b| b.spec.label == moved.backend);
    // A backend that a reload removed meanwhile is still this connection's backend.
    let active = found
        .and_then(|i| snapshot.backends().get(i))
        .map(|b| b.state.acquire());
    let link = Established {
        client: Rc::new(moved.client),
        backend: Rc::new(moved.backend_socket),
        peer: moved.client_addr,
        label: &moved.backend,
        owner: active.as_ref().map(ActiveGuard::state),
        started: Instant::now()
            .checked_sub(moved.age)
            .unwrap_or_else(Instant::now),
        // The id does not travel with the connection: its records here carry a new one.
        id: (settings.records.level == RecordLevel::All).then(|| ctx.ids.next()),
        tls: None,
        preface: 0,
    };
    // The settings of this process's configuration for this listener.
    let relay_settings = RelaySettings::of(&settings);
    forward(&ctx, &accounting, link, relay_settings, Some(moved.frozen)).await;
    remember_at_end(&snapshot, moved.client_addr, found);
}

/// `local` is asked only when a header is sent: it costs a getsockname. A v2 header
/// carries the connection id, when there is one.
fn proxy_header(
    mode: ProxyProtocol,
    client: SocketAddr,
    local: impl FnOnce() -> SocketAddr,
    id: Option<ConnId>,
) -> Option<Vec<u8>> {
    match mode {
        ProxyProtocol::None => None,
        ProxyProtocol::V1 => Some(proxy_protocol::v1(client, local())),
        ProxyProtocol::V2 => {
            let mut header = proxy_protocol::v2(client, local(), proxy_protocol::Transport::Stream);
            if let Some(id) = id {
                let value = id.0.to_be_bytes();
                proxy_protocol::append_tlv(&mut header, proxy_protocol::TLV_CONNECTION_ID, &value);
            }
            Some(header)
        }
    }
}
