//! The one shape of a listener on a worker, whatever its protocol: start on this worker's
//! SO_REUSEPORT socket, rename in place, stop. The worker loop calls only these.

use std::fmt;
use std::io;
use std::rc::Rc;
use std::sync::Arc;

use ringlb_config::Protocol;
use socket2::Socket;

use crate::ctx::WorkerCtx;
use crate::handover::MovedConn;
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

    /// Take over a TCP connection the previous process froze; false (and the connection
    /// closed) if this is not a TCP listener.
    pub(crate) fn adopt(&self, ctx: &Rc<WorkerCtx>, moved: MovedConn) -> bool {
        match self {
            WorkerListener::Tcp(listener) => {
                listener.adopt(ctx, moved);
                true
            }
            WorkerListener::Udp(_) => false,
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
