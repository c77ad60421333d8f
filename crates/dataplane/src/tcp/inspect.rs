//! A listener with routes reads the client's ClientHello before it connects anywhere:
//! within `tls_inspect_timeout`, across as many TCP segments and TLS records as it comes
//! in, up to 16 KiB. The server name (and ALPN) choose the pool; the bytes read are
//! forwarded first, untouched, so TLS runs end to end between client and backend.

use std::io;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use nix::sys::socket::{recv, MsgFlags};
use ringlb_config::{OnNonTls, TlsRouting};
use ringlb_scheduler::Scheduler;
use ringlb_tlsinspect::{inspect, ClientHello, InspectError, MAX_INPUT};
use socket2::Socket;

use crate::listener::ListenerState;
use crate::routes::{Pool, TlsSeen, Unrouted, DEFAULT_POOL};
use crate::uring;

/// First allocation for the hello; most are well under it, larger ones grow the buffer.
const FIRST_READ: usize = 2048;

/// Where an inspected connection goes, and what it sent.
pub(super) struct Routed {
    /// The bytes read from the client: the backend gets them first, as they came.
    pub(super) first: Vec<u8>,
    /// The route's pool; `None`: the listener's own backends.
    pool: Option<Arc<Pool>>,
    /// For the access log.
    pub(super) seen: TlsSeen,
}

impl Routed {
    /// The scheduler of the chosen pool (`default`: the listener's).
    pub(super) fn scheduler<'a>(&'a self, default: &'a Scheduler) -> &'a Scheduler {
        self.pool.as_ref().map_or(default, |p| &p.scheduler)
    }
}

/// Reads the hello and picks the pool; counts what it decided. `Err`: close the client.
pub(super) async fn route(
    client: &Rc<Socket>,
    state: &ListenerState,
    routing: &TlsRouting,
    peer: std::net::SocketAddr,
) -> Result<Routed, Unrouted> {
    let routes = &state.routes;
    let (first, verdict) = read_hello(client, routing).await;
    let reason = match verdict {
        Ok(hello) => return by_name(state, routing, first, hello),
        Err(reason) => reason,
    };
    log::debug!(
        "listener {}: client {peer}: not routed by name ({}), {} byte(s) read",
        state.name,
        reason.as_str(),
        first.len()
    );
    if !reason.may_fall_back() || routing.on_non_tls == OnNonTls::Close {
        routes.rejected(reason).fetch_add(1, Ordering::Relaxed);
        return Err(reason);
    }
    routes.fallback(reason).fetch_add(1, Ordering::Relaxed);
    routes.default_routed.fetch_add(1, Ordering::Relaxed);
    Ok(Routed {
        first,
        pool: None,
        seen: TlsSeen {
            route: DEFAULT_POOL.into(),
            sni: None,
            version: None,
        },
    })
}

/// A complete hello: its version checked, then its name routed.
fn by_name(
    state: &ListenerState,
    routing: &TlsRouting,
    first: Vec<u8>,
    hello: ClientHello,
) -> Result<Routed, Unrouted> {
    let routes = &state.routes;
    if routing
        .min_version
        .is_some_and(|min| hello.version.0 < min.wire())
    {
        routes
            .rejected(Unrouted::TlsVersion)
            .fetch_add(1, Ordering::Relaxed);
        return Err(Unrouted::TlsVersion);
    }
    let table = routes.table();
    let pool = table.choose(hello.sni.as_deref(), &hello.alpn).cloned();
    let route = match &pool {
        Some(pool) => {
            pool.routed.fetch_add(1, Ordering::Relaxed);
            pool.name.as_str().into()
        }
        None => {
            routes.default_routed.fetch_add(1, Ordering::Relaxed);
            DEFAULT_POOL.into()
        }
    };
    Ok(Routed {
        first,
        pool,
        seen: TlsSeen {
            route,
            sni: hello.sni,
            version: Some(hello.version),
        },
    })
}

/// Reads until the parser decides, the client stops, or the timeout passes. Returns what
/// was read in every case (on a fallback it is forwarded) with the hello or why none.
async fn read_hello(
    client: &Rc<Socket>,
    routing: &TlsRouting,
) -> (Vec<u8>, Result<ClientHello, Unrouted>) {
    let deadline = Instant::now() + routing.inspect_timeout;
    let mut buf = Vec::with_capacity(FIRST_READ);
    loop {
        match inspect(&buf) {
            Ok(hello) => return (buf, Ok(hello)),
            Err(InspectError::Incomplete) => {}
            Err(e) => return (buf, Err(unrouted(&e))),
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(remaining, uring::poll(client, libc::POLLIN as u32)).await {
            Ok(Ok(_)) => {}
            Ok(Err(_)) => return (buf, Err(Unrouted::ClientClosed)),
            Err(_) => {
                // The dropped poll is still in flight and holds the socket: cancel it.
                uring::cancel_all(client.as_raw_fd()).await;
                return (buf, Err(Unrouted::Timeout));
            }
        }
        match read_some(client, &mut buf) {
            Ok(0) => return (buf, Err(Unrouted::ClientClosed)),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => return (buf, Err(Unrouted::ClientClosed)),
        }
    }
}

/// One non-blocking read appended to `buf`, never past what the parser looks at (one
/// byte more, so that an over-long input is told apart from an incomplete one).
fn read_some(client: &Socket, buf: &mut Vec<u8>) -> io::Result<usize> {
    let len = buf.len();
    let room = (MAX_INPUT + 1).saturating_sub(len);
    if room == 0 {
        return Ok(1);
    }
    buf.resize(len + room.min(len.max(FIRST_READ)), 0);
    let got = recv(client.as_raw_fd(), &mut buf[len..], MsgFlags::MSG_DONTWAIT);
    let n = got.as_ref().map_or(0, |n| *n);
    buf.truncate(len + n);
    got.map_err(io::Error::from)
}

fn unrouted(e: &InspectError) -> Unrouted {
    match e {
        InspectError::NotTls => Unrouted::NotTls,
        InspectError::Malformed(_) => Unrouted::Malformed,
        InspectError::TooLarge | InspectError::Incomplete => Unrouted::TooLarge,
    }
}
