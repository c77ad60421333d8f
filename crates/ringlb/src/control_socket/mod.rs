//! The control socket: a Unix stream socket, mode 0600, on which `ringlb ctl` (or any
//! tool that writes a line of JSON, such as socat) changes the running process's state.
//! Protocol: docs/control-protocol.md; decoder: [`protocol`].
//!
//! Owns: the socket (bound by [`path::claim`], which makes it the instance lock too), its
//! accept thread `ringlb-control` and one short-lived thread per connection (at most
//! [`MAX_CONNECTIONS`]). A request is decoded here and handed to the control plane as a
//! [`ControlRequest`] over a channel; the control plane applies it on its own thread and
//! answers through the request's reply channel. Only `ping` is answered here, so the lock
//! check works while the control plane is busy. Must not: run on a worker, touch the
//! scheduler or the workers itself, or wait on a client without a deadline.

pub mod client;
pub mod path;
pub mod protocol;

use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use serde_json::{json, Map};

use crate::bounded::Slot;
use crate::registry::Registry;
use protocol::{decode, Line, LineReader, Reply, Request, MAX_REQUEST_LINE};

/// Connections served at once; beyond it a connection gets a refusal and is closed.
pub const MAX_CONNECTIONS: usize = 8;
/// How long a connection may stay silent between requests (and to send its first one).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Time a client gets to take a reply.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a connection waits for the control plane to answer a request.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(15);
/// `upgrade` waits for the new process to take over.
pub const UPGRADE_ANSWER_TIMEOUT: Duration = Duration::from_secs(600);
/// After an accept error (EMFILE and friends), wait before accepting again: no spinning.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// A decoded request for the control plane, with where to send its answer.
#[derive(Debug)]
pub struct ControlRequest {
    pub request: Request,
    pub reply: Sender<Reply>,
    /// Who asked: the peer's credentials (for the audit log).
    pub peer: Peer,
}

/// The uid and pid of the process on the other end of a control connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    pub uid: Option<u32>,
    pub pid: Option<i32>,
}

impl Peer {
    fn of(stream: &UnixStream) -> Peer {
        use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
        match getsockopt(stream, PeerCredentials) {
            Ok(cred) => Peer {
                uid: Some(cred.uid()),
                pid: Some(cred.pid()),
            },
            Err(_) => Peer {
                uid: None,
                pid: None,
            },
        }
    }
}

/// The running control socket. [`stop`](Self::stop) or drop stops accepting, joins the
/// accept thread and removes the socket file — unless another process has replaced it
/// meanwhile (a successor after an upgrade), whose socket is left alone.
#[derive(Debug)]
pub struct ControlServer {
    path: PathBuf,
    listener: Arc<UnixListener>,
    /// (device, inode) of the socket file we bound.
    identity: Option<(u64, u64)>,
    stopping: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl ControlServer {
    /// Serves `listener` (bound at `path` by [`path::claim`]); requests go to `requests`.
    pub fn spawn(
        listener: UnixListener,
        path: PathBuf,
        requests: Sender<ControlRequest>,
        registry: Arc<Registry>,
    ) -> io::Result<ControlServer> {
        let identity = std::fs::symlink_metadata(&path)
            .ok()
            .map(|m| (m.dev(), m.ino()));
        let listener = Arc::new(listener);
        let stopping = Arc::new(AtomicBool::new(false));
        let thread = std::thread::Builder::new()
            .name("ringlb-control".to_string())
            .spawn({
                let listener = Arc::clone(&listener);
                let stopping = Arc::clone(&stopping);
                move || accept_loop(&listener, &stopping, &requests, &registry)
            })?;
        Ok(ControlServer {
            path,
            listener,
            identity,
            stopping,
            thread: Some(thread),
        })
    }

    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        self.stopping.store(true, Ordering::Release);
        // Shutting down a listening Unix socket wakes a blocked accept(). Never wake it
        // by connecting to the path: after an upgrade the path may be the successor's.
        if let Err(e) = socket2::SockRef::from(&*self.listener).shutdown(std::net::Shutdown::Both) {
            log::warn!("control socket: cannot shut down: {e}");
        } else if thread.join().is_err() {
            log::error!("control socket: accept thread panicked");
        }
        let current = std::fs::symlink_metadata(&self.path)
            .ok()
            .map(|m| (m.dev(), m.ino()));
        if current.is_some() && current == self.identity {
            if let Err(e) = std::fs::remove_file(&self.path) {
                log::warn!("control socket: cannot remove {}: {e}", self.path.display());
            }
        }
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn accept_loop(
    listener: &UnixListener,
    stopping: &AtomicBool,
    requests: &Sender<ControlRequest>,
    registry: &Arc<Registry>,
) {
    let live = Arc::new(AtomicUsize::new(0));
    loop {
        let accepted = listener.accept();
        if stopping.load(Ordering::Acquire) {
            return;
        }
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                if !matches!(
                    e.kind(),
                    io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
                ) {
                    log::warn!(
                        "control socket: accept failed: {e}; retrying in {ACCEPT_BACKOFF:?}"
                    );
                    std::thread::sleep(ACCEPT_BACKOFF);
                }
                continue;
            }
        };
        let Some(slot) = Slot::take(&live, MAX_CONNECTIONS) else {
            refuse(
                stream,
                "busy: too many control connections at once; try again",
            );
            continue;
        };
        let requests = requests.clone();
        let registry = Arc::clone(registry);
        let spawned = std::thread::Builder::new()
            .name("ringlb-control-conn".to_string())
            .spawn(move || {
                let _slot = slot;
                serve_connection(stream, &requests, &registry);
            });
        if let Err(e) = spawned {
            log::warn!("control socket: cannot start a connection thread: {e}");
            std::thread::sleep(ACCEPT_BACKOFF);
        }
    }
}

/// One refusal line without waiting for anything: the accept thread never blocks on a
/// client (a fresh socket's send buffer takes a short line at once).
fn refuse(stream: UnixStream, why: &str) {
    if stream.set_nonblocking(true).is_ok() {
        let _ = write_reply(&stream, &Reply::refused(why));
    }
}

fn write_reply(mut stream: &UnixStream, reply: &Reply) -> io::Result<()> {
    let mut line = reply.encode();
    line.push('\n');
    stream.write_all(line.as_bytes())
}

/// Only the socket's own user (and root) may give orders. The file's 0600 mode already
/// says so; the peer's credentials check it again should the mode ever be loosened.
fn peer_allowed(stream: &UnixStream) -> bool {
    use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
    match getsockopt(stream, PeerCredentials) {
        Ok(cred) => cred.uid() == 0 || cred.uid() == nix::unistd::geteuid().as_raw(),
        Err(_) => false,
    }
}

fn serve_connection(
    mut stream: UnixStream,
    requests: &Sender<ControlRequest>,
    registry: &Registry,
) {
    if !peer_allowed(&stream) {
        let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
        let _ = write_reply(&stream, &Reply::refused("permission denied"));
        return;
    }
    if stream.set_write_timeout(Some(WRITE_TIMEOUT)).is_err() {
        return;
    }
    let peer = Peer::of(&stream);
    let mut reader = LineReader::new(MAX_REQUEST_LINE);
    loop {
        let reply = match reader.read_line(&mut stream, Instant::now() + IDLE_TIMEOUT) {
            Line::Complete(line) if line.iter().all(u8::is_ascii_whitespace) => continue,
            Line::Complete(line) => match decode(&line) {
                Ok(Request::Ping) => ping(registry),
                Ok(request) => ask_control_plane(requests, request, peer),
                Err(e) => Reply::refused(e.to_string()),
            },
            Line::TooLong => {
                let _ = write_reply(
                    &stream,
                    &Reply::refused(format!(
                        "request line longer than {MAX_REQUEST_LINE} bytes; closing"
                    )),
                );
                return;
            }
            Line::Closed | Line::Timeout | Line::Failed => return,
        };
        if write_reply(&stream, &reply).is_err() {
            return;
        }
    }
}

/// `ping`: answered here, from the readiness the control plane publishes.
fn ping(registry: &Registry) -> Reply {
    let mut fields = Map::new();
    fields.insert("pid".into(), json!(std::process::id()));
    fields.insert("version".into(), json!(env!("CARGO_PKG_VERSION")));
    let ready = registry.readiness.check();
    fields.insert("ready".into(), json!(ready.is_ok()));
    fields.insert(
        "not_ready".into(),
        json!(ready.err().map(|why| why.as_str())),
    );
    Reply::Ok(fields)
}

fn ask_control_plane(requests: &Sender<ControlRequest>, request: Request, peer: Peer) -> Reply {
    let timeout = match request {
        Request::Upgrade { .. } => UPGRADE_ANSWER_TIMEOUT,
        _ => ANSWER_TIMEOUT,
    };
    let command = request.command();
    let (tx, rx) = crossbeam_channel::bounded(1);
    if requests
        .send(ControlRequest {
            request,
            reply: tx,
            peer,
        })
        .is_err()
    {
        return Reply::refused("shutting down: the control plane has stopped");
    }
    match rx.recv_timeout(timeout) {
        Ok(reply) => reply,
        Err(crossbeam_channel::RecvTimeoutError::Timeout) => Reply::refused(format!(
            "{command}: no answer from the control plane within {timeout:?} (it may still apply it)"
        )),
        Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
            Reply::refused("shutting down: the control plane has stopped")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader};

    fn temp_path(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("ringlb-ctlsock-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("c.sock")
    }

    fn roundtrip(stream: &mut UnixStream, line: &[u8]) -> String {
        stream.write_all(line).unwrap();
        let mut reply = String::new();
        BufReader::new(stream.try_clone().unwrap())
            .read_line(&mut reply)
            .unwrap();
        reply
    }

    #[test]
    fn serves_ping_itself_forwards_the_rest_and_stops() {
        let path = temp_path("serve");
        let listener = path::claim(&path).unwrap();
        let (tx, rx) = crossbeam_channel::unbounded::<ControlRequest>();
        let server =
            ControlServer::spawn(listener, path.clone(), tx, Arc::new(Registry::default()))
                .unwrap();
        // A stand-in control plane answering every request with its command name.
        let plane = std::thread::spawn(move || {
            for r in rx {
                let name = r.request.command();
                let _ = r.reply.send(Reply::message(name));
            }
        });
        assert_eq!(
            client::ping(&path, Duration::from_secs(5)).unwrap(),
            std::process::id()
        );
        let mut s = UnixStream::connect(&path).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let reply = roundtrip(&mut s, b"{\"v\":1,\"cmd\":\"status\"}\n");
        assert_eq!(reply, "{\"v\":1,\"ok\":true,\"message\":\"status\"}\n");
        // Garbage gets an error line and the connection stays usable.
        let reply = roundtrip(&mut s, b"\x00\xffgarbage\n");
        assert!(
            reply.starts_with("{\"v\":1,\"ok\":false,\"error\":"),
            "{reply}"
        );
        let reply = roundtrip(&mut s, b"{\"v\":1,\"cmd\":\"node\",\"state\":\"ok\"}\r\n");
        assert!(reply.contains("\"message\":\"node\""), "{reply}");
        // A line over the limit is refused and the connection closed.
        let long = vec![b'x'; MAX_REQUEST_LINE + 10];
        let reply = roundtrip(&mut s, &long);
        assert!(reply.contains("longer than"), "{reply}");

        // A second claim of the same path is refused with our pid.
        match path::claim(&path) {
            Err(path::ClaimError::Running { pid, .. }) => assert_eq!(pid, std::process::id()),
            other => panic!("expected Running, got {other:?}"),
        }

        let started = Instant::now();
        server.stop();
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        assert!(!path.exists(), "the socket file is removed at stop");
        plane.join().unwrap();
        std::fs::remove_dir_all(path.parent().unwrap()).ok();
    }

    #[test]
    fn a_replaced_socket_file_is_left_to_its_new_owner() {
        let path = temp_path("replaced");
        let listener = path::claim(&path).unwrap();
        let (tx, _rx) = crossbeam_channel::unbounded();
        let server =
            ControlServer::spawn(listener, path.clone(), tx, Arc::new(Registry::default()))
                .unwrap();
        std::fs::remove_file(&path).unwrap();
        let successor = UnixListener::bind(&path).unwrap();
        server.stop();
        assert!(path.exists(), "the successor's socket must stay");
        drop(successor);
        std::fs::remove_dir_all(path.parent().unwrap()).ok();
    }
}
