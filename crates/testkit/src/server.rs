//! The accept loop and per-connection bookkeeping shared by every TCP backend.
//!
//! Stopping: the accept thread blocks in accept(2); Drop sets the stop flag and calls
//! shutdown(2) on the listening socket, which on Linux wakes a blocked accept with
//! EINVAL. Every live connection is then shut down both ways, which wakes its handler
//! thread out of any blocking read or write, and all threads are joined.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::client::wait_until;

/// How a backend connection ended, as seen by the backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnEnd {
    /// The peer closed cleanly: read(2) returned 0 (FIN).
    Eof,
    /// The peer reset the connection (ECONNRESET, or EPIPE on a write after a reset).
    Reset,
    /// The backend itself closed (reset backends, or a handler that finished on its own
    /// terms before seeing the peer's FIN).
    Closed,
    /// The backend handle was dropped while the connection was open.
    Stopped,
    /// Any other I/O error.
    Error(io::ErrorKind),
}

/// One connection a backend accepted.
#[derive(Clone, Debug)]
pub struct ConnRecord {
    /// The connecting socket's address (ringlb's backend-side socket, or the prober's).
    pub peer: SocketAddr,
    /// When accept(2) returned it (the handshake completed no later than this).
    pub accepted_at: Instant,
    /// Bytes read from the peer.
    pub bytes_in: u64,
    /// Bytes written to the peer.
    pub bytes_out: u64,
    /// `None` while the connection is open.
    pub end: Option<ConnEnd>,
}

/// What a backend's handlers saw, one entry per connection, shared with its handle.
pub(crate) struct Records<R>(Arc<Mutex<Vec<R>>>);

impl<R> Clone for Records<R> {
    fn clone(&self) -> Self {
        Records(self.0.clone())
    }
}

impl<R: Clone> Records<R> {
    pub(crate) fn new() -> Self {
        Records(Arc::new(Mutex::new(Vec::new())))
    }

    pub(crate) fn push(&self, r: R) {
        lock(&self.0).push(r);
    }

    /// Every entry so far, in the order they were pushed.
    pub(crate) fn all(&self) -> Vec<R> {
        lock(&self.0).clone()
    }

    /// Waits until at least `n` entries exist.
    pub(crate) fn wait(&self, n: usize, timeout: Duration) -> bool {
        wait_until(timeout, || lock(&self.0).len() >= n)
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A handler that panicked poisons nothing we cannot still read.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Classifies an I/O error from a backend socket.
pub(crate) fn classify(e: &io::Error) -> ConnEnd {
    match e.kind() {
        io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe => ConnEnd::Reset,
        k => ConnEnd::Error(k),
    }
}

#[derive(Default)]
pub(crate) struct Shared {
    pub(crate) stop: AtomicBool,
    accepted: AtomicUsize,
    records: Mutex<Vec<ConnRecord>>,
    /// Clones of open connections, so Drop can shut them down.
    live: Mutex<HashMap<usize, TcpStream>>,
    handlers: Mutex<Vec<JoinHandle<()>>>,
}

impl Shared {
    pub(crate) fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
}

/// One accepted connection handed to a handler. Reads and writes through it are counted
/// in the connection's [`ConnRecord`].
pub(crate) struct Conn {
    pub(crate) stream: TcpStream,
    idx: usize,
    pub(crate) shared: Arc<Shared>,
}

/// Reads are counted in the connection's `bytes_in`.
impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.stream.read(buf)?;
        lock(&self.shared.records)[self.idx].bytes_in += n as u64;
        Ok(n)
    }
}

impl Conn {
    /// Reads exactly `buf.len()` bytes; `Err(end)` if the connection ends first.
    pub(crate) fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), ConnEnd> {
        let mut got = 0;
        while got < buf.len() {
            match self.read(&mut buf[got..]) {
                Ok(0) => return Err(self.eof()),
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(classify(&e)),
            }
        }
        Ok(())
    }

    pub(crate) fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.stream.write_all(buf)?;
        lock(&self.shared.records)[self.idx].bytes_out += buf.len() as u64;
        Ok(())
    }

    /// The end to record for a read that returned 0.
    pub(crate) fn eof(&self) -> ConnEnd {
        if self.shared.stopping() {
            ConnEnd::Stopped
        } else {
            ConnEnd::Eof
        }
    }

    /// A second handle on the same connection (for a concurrent writer thread).
    pub(crate) fn try_clone(&self) -> io::Result<Conn> {
        Ok(Conn {
            stream: self.stream.try_clone()?,
            idx: self.idx,
            shared: self.shared.clone(),
        })
    }
}

pub(crate) type Handler = dyn Fn(&mut Conn) -> ConnEnd + Send + Sync;

/// The listening half of a [`TcpServer`]: its socket and accept thread. Has its own stop
/// flag, so the listener can close while the connections it accepted live on.
struct Acceptor {
    listener: TcpListener,
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

impl Acceptor {
    /// Closes the listening socket (new connects are refused) and joins the thread.
    fn close(self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the blocked accept(2) (EINVAL) on Linux.
        // SAFETY: the fd is owned by `self.listener`, alive until the end of this call.
        unsafe {
            libc::shutdown(self.listener.as_raw_fd(), libc::SHUT_RDWR);
        }
        let _ = self.thread.join();
    }
}

/// A loopback TCP listener running `handler` on a thread per accepted connection. The
/// listener can be closed and reopened on the same address ([`TcpServer::close_listener`],
/// [`TcpServer::reopen`]); connection records and open connections survive both.
pub(crate) struct TcpServer {
    what: String,
    addr: SocketAddr,
    handler: Arc<Handler>,
    pub(crate) shared: Arc<Shared>,
    acceptor: Option<Acceptor>,
}

impl TcpServer {
    pub(crate) fn start(what: &str, handler: Arc<Handler>) -> TcpServer {
        Self::start_on(what, bind_loopback(what), handler)
    }

    /// [`TcpServer::start`] with a handler that may record what it saw on a connection
    /// in the returned [`Records`].
    pub(crate) fn start_recording<R: Clone + Send + 'static>(
        what: &str,
        handler: impl Fn(&mut Conn, &Records<R>) -> ConnEnd + Send + Sync + 'static,
    ) -> (TcpServer, Records<R>) {
        let records = Records::new();
        let recs = records.clone();
        let server = Self::start(what, Arc::new(move |c: &mut Conn| handler(c, &recs)));
        (server, records)
    }

    pub(crate) fn start_on(what: &str, listener: TcpListener, handler: Arc<Handler>) -> TcpServer {
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("testkit: {what}: local_addr: {e}"));
        let mut server = TcpServer {
            what: what.to_string(),
            addr,
            handler,
            shared: Arc::new(Shared::default()),
            acceptor: None,
        };
        server.acceptor = Some(server.spawn_acceptor(listener));
        server
    }

    fn spawn_acceptor(&self, listener: TcpListener) -> Acceptor {
        let what = &self.what;
        let l = listener
            .try_clone()
            .unwrap_or_else(|e| panic!("testkit: {what}: clone listener: {e}"));
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sh, h) = (stop.clone(), self.shared.clone(), self.handler.clone());
        let name = format!("testkit-{what}-{}", self.addr.port());
        let thread = thread::Builder::new()
            .name(name)
            .spawn(move || accept_loop(l, st, sh, h))
            .unwrap_or_else(|e| panic!("testkit: {what}: spawn accept thread: {e}"));
        Acceptor {
            listener,
            stop,
            thread,
        }
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub(crate) fn listening(&self) -> bool {
        self.acceptor.is_some()
    }

    /// Stops accepting and closes the listening socket: new connects are refused once
    /// this returns. Open connections are left alone.
    pub(crate) fn close_listener(&mut self) {
        if let Some(a) = self.acceptor.take() {
            a.close();
        }
    }

    /// Listens again on the same address (see [`bind_exact`]).
    pub(crate) fn reopen(&mut self) {
        assert!(
            self.acceptor.is_none(),
            "testkit: {}: {} is already listening",
            self.what,
            self.addr
        );
        let l = bind_exact(self.addr);
        self.acceptor = Some(self.spawn_acceptor(l));
    }

    pub(crate) fn accepted(&self) -> usize {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    pub(crate) fn records(&self) -> Vec<ConnRecord> {
        lock(&self.shared.records).clone()
    }

    pub(crate) fn ends(&self) -> Vec<ConnEnd> {
        lock(&self.shared.records)
            .iter()
            .filter_map(|r| r.end)
            .collect()
    }

    pub(crate) fn open(&self) -> usize {
        lock(&self.shared.live).len()
    }
}

/// A listener on 127.0.0.1, ephemeral port.
pub(crate) fn bind_loopback(what: &str) -> TcpListener {
    TcpListener::bind("127.0.0.1:0")
        .unwrap_or_else(|e| panic!("testkit: {what}: bind 127.0.0.1:0: {e}"))
}

/// Binds exactly `addr`. std sets SO_REUSEADDR, so only a listener still open on it is
/// in the way: retried for up to 5 s in case a previous one is still closing.
pub(crate) fn bind_exact(addr: SocketAddr) -> TcpListener {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match TcpListener::bind(addr) {
            Ok(l) => return l,
            Err(e) if e.kind() == io::ErrorKind::AddrInUse && Instant::now() < deadline => {
                thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("testkit: bind {addr}: {e}"),
        }
    }
}

fn accept_loop(
    listener: TcpListener,
    stop: Arc<AtomicBool>,
    shared: Arc<Shared>,
    handler: Arc<Handler>,
) {
    loop {
        let accepted = listener.accept();
        if stop.load(Ordering::SeqCst) || shared.stopping() {
            return;
        }
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => continue,
            Err(e) => {
                // EMFILE and friends: back off rather than spin; the test will notice.
                eprintln!("testkit: accept on {:?}: {e}", listener.local_addr());
                thread::sleep(Duration::from_millis(20));
                continue;
            }
        };
        let idx = {
            let mut recs = lock(&shared.records);
            recs.push(ConnRecord {
                peer,
                accepted_at: Instant::now(),
                bytes_in: 0,
                bytes_out: 0,
                end: None,
            });
            recs.len() - 1
        };
        match stream.try_clone() {
            Ok(c) => {
                lock(&shared.live).insert(idx, c);
            }
            Err(e) => panic!("testkit: clone accepted stream: {e}"),
        }
        // Counted after the record exists, so a test that waits for `accepted() == n`
        // finds n records.
        shared.accepted.fetch_add(1, Ordering::SeqCst);
        let sh = shared.clone();
        let h = handler.clone();
        let spawned = thread::Builder::new()
            .name(format!("testkit-conn-{idx}"))
            .spawn(move || {
                let mut conn = Conn {
                    stream,
                    idx,
                    shared: sh.clone(),
                };
                let end = h(&mut conn);
                lock(&sh.records)[idx].end = Some(end);
                lock(&sh.live).remove(&idx);
            });
        let jh = spawned.unwrap_or_else(|e| panic!("testkit: spawn connection thread: {e}"));
        let mut hs = lock(&shared.handlers);
        hs.retain(|h| !h.is_finished());
        hs.push(jh);
    }
}

impl Drop for TcpServer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.close_listener();
        for s in lock(&self.shared.live).values() {
            let _ = s.shutdown(Shutdown::Both);
        }
        let handlers: Vec<_> = lock(&self.shared.handlers).drain(..).collect();
        for h in handlers {
            let _ = h.join();
        }
    }
}
