//! UDP sessions (being built).

use std::io;
use std::rc::Rc;
use std::sync::Arc;

use socket2::Socket;

use crate::listener::ListenerShared;
use crate::worker::WorkerCtx;

pub(crate) struct UdpListener;

impl UdpListener {
    pub(crate) fn start(_ctx: Rc<WorkerCtx>, _listener: Arc<ListenerShared>, _socket: Socket) -> io::Result<Rc<Self>> {
        Err(io::Error::other("udp listeners are not implemented yet"))
    }

    pub(crate) async fn stop(&self) {}
}
