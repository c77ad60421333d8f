//! The one shape of a listener on a worker, whatever its protocol: start on this worker's
//! SO_REUSEPORT socket, rename in place, stop. The worker loop calls only these.

use std::fmt;
use std::io;
use std::rc::Rc;
use std::sync::Arc;

use ringlb_config::Protocol;
use socket2::Socket;

use crate::ctx::WorkerCtx;
use crate::handover::Moved;
use crate::listener::ListenerState;
use crate::tcp::TcpListener;
use crate::udp::UdpListener;

pub(crate) enum WorkerListener {
    Tcp(Rc<TcpListener>),
    Udp(Rc<UdpListener>),
}

/// A rename the listener cannot do in place; the caller stops it instead.
#[derive(Debug)]
pub(crate) struct CannotRename(Protocol);

impl fmt::Display for CannotRename {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} listeners are not renamed in place (their sessions belong to the old name)",
            self.0.as_str()
        )
    }
}

impl WorkerListener {
    /// Start serving `state` on `socket` (this worker's bound socket for it).
    pub(crate) fn start(
        ctx: &Rc<WorkerCtx>,
        state: Arc<ListenerState>,
        socket: Socket,
    ) -> io::Result<Self> {
        Ok(match state.protocol {
            Protocol::Tcp => WorkerListener::Tcp(TcpListener::start(ctx, state, socket)),
            Protocol::Udp => {
                WorkerListener::Udp(UdpListener::start(Rc::clone(ctx), state, socket)?)
            }
        })
    }

    /// Keep the socket (and what is queued on it); account new traffic to `state`.
    pub(crate) fn rename(
        &self,
        worker: usize,
        state: Arc<ListenerState>,
    ) -> Result<(), CannotRename> {
        match self {
            WorkerListener::Tcp(listener) => {
                listener.rename(worker, state);
                Ok(())
            }
            WorkerListener::Udp(_) => Err(CannotRename(Protocol::Udp)),
        }
    }

    /// Take over a connection or session the previous process handed over; one of the
    /// other protocol is closed (and logged).
    pub(crate) fn adopt(&self, ctx: &Rc<WorkerCtx>, moved: Moved) {
        match (self, moved) {
            (WorkerListener::Tcp(listener), Moved::Conn(conn)) => listener.adopt(ctx, conn),
            (WorkerListener::Udp(listener), Moved::Session(session)) => listener.adopt(session),
            (_, Moved::Conn(conn)) => log::error!(
                "listener {}: not TCP; connection from {} closed",
                conn.listener,
                conn.client_addr
            ),
            (_, Moved::Session(session)) => log::error!(
                "listener {}: not UDP; session of {} dropped",
                session.listener,
                session.client
            ),
        }
    }

    /// Live upgrade, old process: TCP stops accepting (its connections freeze on their
    /// own); UDP stops receiving and sends its sessions to `sink`.
    pub(crate) async fn freeze(&self, sink: &crossbeam_channel::Sender<Moved>) {
        match self {
            WorkerListener::Tcp(listener) => listener.stop().await,
            WorkerListener::Udp(listener) => listener.freeze(sink).await,
        }
    }

    /// Stop taking new clients; established connections and sessions drain. Returns at
    /// once: the worker's command loop must not block.
    pub(crate) async fn stop(&self) {
        match self {
            WorkerListener::Tcp(listener) => listener.stop().await,
            WorkerListener::Udp(listener) => listener.stop().await,
        }
    }
}
