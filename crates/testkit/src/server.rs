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
use std::time::Duration;

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
    /// Bytes read from the peer.
    pub bytes_in: u64,
    /// Bytes written to the peer.
    pub bytes_out: u64,
    /// `None` while the connection is open.
    pub end: Option<ConnEnd>,
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

impl Conn {
    pub(crate) fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.stream.read(buf)?;
        lock(&self.shared.records)[self.idx].bytes_in += n as u64;
        Ok(n)
    }

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

/// A loopback TCP listener running `handler` on a thread per accepted connection.
pub(crate) struct TcpServer {
    addr: SocketAddr,
    listener: TcpListener,
    pub(crate) shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl TcpServer {
    pub(crate) fn start(what: &str, handler: Arc<Handler>) -> TcpServer {
        let listener = TcpListener::bind("127.0.0.1:0")
            .unwrap_or_else(|e| panic!("testkit: {what}: bind 127.0.0.1:0: {e}"));
        Self::start_on(what, listener, handler)
    }

    pub(crate) fn start_on(what: &str, listener: TcpListener, handler: Arc<Handler>) -> TcpServer {
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("testkit: {what}: local_addr: {e}"));
        let shared = Arc::new(Shared::default());
        let l = listener
            .try_clone()
            .unwrap_or_else(|e| panic!("testkit: {what}: clone listener: {e}"));
        let sh = shared.clone();
        let name = format!("testkit-{what}-{}", addr.port());
        let accept = thread::Builder::new()
            .name(name)
            .spawn(move || accept_loop(l, sh, handler))
            .unwrap_or_else(|e| panic!("testkit: {what}: spawn accept thread: {e}"));
        TcpServer {
            addr,
            listener,
            shared,
            accept: Some(accept),
        }
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
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

fn accept_loop(listener: TcpListener, shared: Arc<Shared>, handler: Arc<Handler>) {
    loop {
        let accepted = listener.accept();
        if shared.stopping() {
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
        // Wakes the blocked accept(2) (EINVAL) on Linux.
        // SAFETY: the fd is owned by `self.listener`, which is alive.
        unsafe {
            libc::shutdown(self.listener.as_raw_fd(), libc::SHUT_RDWR);
        }
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
        for s in lock(&self.shared.live).values() {
            let _ = s.shutdown(Shutdown::Both);
        }
        let handlers: Vec<_> = lock(&self.shared.handlers).drain(..).collect();
        for h in handlers {
            let _ = h.join();
        }
    }
}
