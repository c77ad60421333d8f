//! The HTTP/1.x side of the admin endpoint: accept loop, per-connection limits, routing.
//!
//! One request per connection (`Connection: close`): scrapers and curl are happy with it,
//! and it keeps the state of a connection to "read one request, write one response".
//! Requests are parsed by `httparse`; everything around it is bounded — request size,
//! time to send the request, time to take the response, and connections served at once —
//! so a slow or hostile client holds at most one slot for at most [`REQUEST_TIMEOUT`] +
//! [`WRITE_TIMEOUT`] and can never touch the data plane.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::bounded::{ReadTimeout, Slot};
use crate::registry::Registry;

use super::{metrics, status, AdminError};

/// Admin connections served at once; beyond it a connection gets 503 and is closed.
pub const MAX_CONNECTIONS: usize = 16;
/// Largest request head accepted (request line + headers); larger gets 431.
pub const MAX_REQUEST_BYTES: usize = 8 * 1024;
/// Headers accepted in one request; more gets 431.
const MAX_HEADERS: usize = 32;
/// Time a client gets, from accept, to send its whole request head; then 408.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Time a client gets to take the response.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// After the response, how long unread request bytes are drained before closing (closing
/// with unread data would send a RST that can destroy the response in flight).
const LINGER: Duration = Duration::from_millis(500);
/// After an accept error (EMFILE and friends), wait before accepting again: no spinning.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The running admin endpoint. [`stop`](Self::stop) or drop stops accepting and joins the
/// accept thread; connections already being served finish on their own (bounded by the
/// timeouts above).
#[derive(Debug)]
pub struct AdminServer {
    local: SocketAddr,
    listener: Arc<TcpListener>,
    stopping: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl AdminServer {
    /// Serve on `inherited` (a live upgrade's) or on a new socket bound to `addr`.
    pub(super) fn spawn(
        addr: SocketAddr,
        inherited: Option<TcpListener>,
        registry: Arc<Registry>,
    ) -> Result<AdminServer, AdminError> {
        let listener = match inherited {
            Some(listener) => listener,
            None => TcpListener::bind(addr).map_err(|source| AdminError::Bind { addr, source })?,
        };
        let local = listener
            .local_addr()
            .map_err(|source| AdminError::Bind { addr, source })?;
        let listener = Arc::new(listener);
        let stopping = Arc::new(AtomicBool::new(false));
        let thread = std::thread::Builder::new()
            .name("ringlb-admin".to_string())
            .spawn({
                let listener = Arc::clone(&listener);
                let stopping = Arc::clone(&stopping);
                move || accept_loop(&listener, &stopping, &registry)
            })
            .map_err(AdminError::Thread)?;
        Ok(AdminServer {
            local,
            listener,
            stopping,
            thread: Some(thread),
        })
    }

    /// The address actually bound (resolved when the config says port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// A duplicate of the listening socket (for a live upgrade to hand over).
    pub fn try_clone_listener(&self) -> std::io::Result<TcpListener> {
        self.listener.try_clone()
    }

    /// Stops accepting and waits for the accept thread to end.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        self.stopping.store(true, Ordering::Release);
        // On Linux, shutting down a listening socket wakes a blocked accept() (EINVAL).
        if let Err(e) = socket2::SockRef::from(&*self.listener).shutdown(Shutdown::Read) {
            // Otherwise wake it with a connection of our own; it sees `stopping` and ends.
            log::debug!(
                "admin endpoint: cannot shut down {}: {e}; waking it by connecting",
                self.local
            );
            let mut wake = self.local;
            if wake.ip().is_unspecified() {
                wake.set_ip(match wake {
                    SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                    SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
                });
            }
            let _ = TcpStream::connect_timeout(&wake, Duration::from_secs(1));
        }
        if thread.join().is_err() {
            log::error!("admin endpoint: accept thread panicked");
        }
    }
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn accept_loop(listener: &TcpListener, stopping: &AtomicBool, registry: &Arc<Registry>) {
    let live = Arc::new(AtomicUsize::new(0));
    loop {
        let accepted = listener.accept();
        if stopping.load(Ordering::Acquire) {
            return;
        }
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                match e.kind() {
                    io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted => {}
                    _ => {
                        log::warn!(
                            "admin endpoint: accept failed: {e}; retrying in {ACCEPT_BACKOFF:?}"
                        );
                        std::thread::sleep(ACCEPT_BACKOFF);
                    }
                }
                continue;
            }
        };
        let Some(slot) = Slot::take(&live, MAX_CONNECTIONS) else {
            log::debug!("admin endpoint: {MAX_CONNECTIONS} connections busy; 503 to {peer}");
            refuse_busy(stream);
            continue;
        };
        let registry = Arc::clone(registry);
        let spawned = std::thread::Builder::new()
            .name("ringlb-admin-conn".to_string())
            .spawn(move || {
                let _slot = slot;
                serve_connection(stream, &registry);
            });
        if let Err(e) = spawned {
            // The closure (stream and slot) was dropped with the error: slot released.
            log::warn!("admin endpoint: cannot start a connection thread: {e}");
            std::thread::sleep(ACCEPT_BACKOFF);
        }
    }
}

/// Over the connection limit: a short 503 without waiting for anything (the accept thread
/// must never block on a client). A fresh socket's send buffer is empty, so a non-blocking
/// write of a few bytes does not fail in practice. Whatever part of the request already
/// arrived is discarded so the close is a FIN; a request still in flight makes it a RST,
/// which an overloaded endpoint accepts.
fn refuse_busy(mut stream: TcpStream) {
    if stream.set_nonblocking(true).is_err() {
        return;
    }
    let response = Response::text(503, "Service Unavailable", "admin endpoint busy\n");
    if stream.write_all(&response.to_bytes()).is_err() {
        return;
    }
    let _ = stream.shutdown(Shutdown::Write);
    let mut sink = [0u8; 1024];
    for _ in 0..MAX_REQUEST_BYTES / sink.len() {
        match stream.read(&mut sink) {
            Ok(n) if n > 0 => {}
            _ => return,
        }
    }
}

/// A response, always sent with `Connection: close`.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Response {
    pub status: u16,
    pub reason: &'static str,
    pub content_type: &'static str,
    pub extra_headers: Vec<(&'static str, &'static str)>,
    pub body: String,
}

impl Response {
    fn text(status: u16, reason: &'static str, body: &str) -> Response {
        Response {
            status,
            reason,
            content_type: "text/plain; charset=utf-8",
            extra_headers: Vec::new(),
            body: body.to_string(),
        }
    }

    fn to_bytes(&self) -> Vec<u8> {
        let mut head = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\nCache-Control: no-store\r\n",
            self.status,
            self.reason,
            self.content_type,
            self.body.len()
        );
        for (name, value) in &self.extra_headers {
            head.push_str(name);
            head.push_str(": ");
            head.push_str(value);
            head.push_str("\r\n");
        }
        head.push_str("\r\n");
        let mut out = head.into_bytes();
        out.extend_from_slice(self.body.as_bytes());
        out
    }
}

/// What the request head said, or why it could not be read.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Head {
    Request {
        method: String,
        path: String,
    },
    /// The client closed or reset before sending a whole request head: nothing to answer.
    Gone,
    Timeout,
    TooLarge,
    Malformed,
}

fn serve_connection(mut stream: TcpStream, registry: &Registry) {
    let response = match read_head(&mut stream, Instant::now() + REQUEST_TIMEOUT) {
        Head::Request { method, path } => route(&method, &path, registry),
        Head::Gone => return,
        Head::Timeout => Response::text(408, "Request Timeout", "request not received in time\n"),
        Head::TooLarge => Response::text(
            431,
            "Request Header Fields Too Large",
            "request head too large\n",
        ),
        Head::Malformed => Response::text(400, "Bad Request", "malformed HTTP request\n"),
    };
    if stream.set_write_timeout(Some(WRITE_TIMEOUT)).is_err() {
        return;
    }
    if stream.write_all(&response.to_bytes()).is_err() {
        return;
    }
    linger_close(stream);
}

/// Reads one request head within `deadline` and at most [`MAX_REQUEST_BYTES`].
pub(super) fn read_head(stream: &mut impl ReadTimeout, deadline: Instant) -> Head {
    let mut buf = vec![0u8; MAX_REQUEST_BYTES];
    let mut len = 0;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_timeout(left).is_err() {
            return Head::Timeout;
        }
        match stream.read(&mut buf[len..]) {
            Ok(0) => return Head::Gone,
            Ok(n) => len += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Head::Timeout
            }
            Err(_) => return Head::Gone,
        }
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut request = httparse::Request::new(&mut headers);
        match request.parse(&buf[..len]) {
            Ok(httparse::Status::Complete(_)) => {
                return match (request.method, request.path) {
                    (Some(method), Some(path)) => Head::Request {
                        method: method.to_string(),
                        path: path.to_string(),
                    },
                    _ => Head::Malformed,
                };
            }
            Ok(httparse::Status::Partial) if len == buf.len() => return Head::TooLarge,
            Ok(httparse::Status::Partial) => {}
            Err(httparse::Error::TooManyHeaders) => return Head::TooLarge,
            Err(_) => return Head::Malformed,
        }
    }
}

/// `GET /metrics`, `GET /status`, `GET /ready`; other paths 404, other methods on known
/// paths 405.
pub(super) fn route(method: &str, target: &str, registry: &Registry) -> Response {
    // Scrapers may add a query string; it selects nothing here.
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    let known = matches!(path, "/metrics" | "/status" | "/ready");
    if !known {
        return Response::text(
            404,
            "Not Found",
            "not found; try /metrics, /status or /ready\n",
        );
    }
    if method != "GET" {
        let mut response = Response::text(405, "Method Not Allowed", "only GET is allowed\n");
        response.extra_headers.push(("Allow", "GET"));
        return response;
    }
    match path {
        // What routers, keepalived and routing daemons key on: 200 while this process
        // should receive traffic, 503 with the reason otherwise.
        "/ready" => match registry.readiness.check() {
            Ok(()) => Response::text(200, "OK", "ready\n"),
            Err(why) => Response::text(503, "Service Unavailable", &format!("not ready: {why}\n")),
        },
        "/metrics" => Response {
            status: 200,
            reason: "OK",
            content_type: metrics::CONTENT_TYPE,
            extra_headers: Vec::new(),
            body: metrics::render(registry),
        },
        _ => Response {
            status: 200,
            reason: "OK",
            content_type: "application/json",
            extra_headers: Vec::new(),
            body: status::render(registry),
        },
    }
}

/// Half-closes, then reads (and discards) whatever the client still sends, briefly, so
/// the close is a FIN after the response rather than a RST that could discard it.
fn linger_close(mut stream: TcpStream) {
    if stream.shutdown(Shutdown::Write).is_err() {
        return;
    }
    let deadline = Instant::now() + LINGER;
    let mut sink = [0u8; 1024];
    let mut drained = 0usize;
    while drained < MAX_REQUEST_BYTES * 8 {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            return;
        }
        match stream.read(&mut sink) {
            Ok(0) | Err(_) => return,
            Ok(n) => drained += n,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bounded::Script;

    fn head(chunks: Vec<Option<&[u8]>>) -> Head {
        read_head(
            &mut Script::new(chunks),
            Instant::now() + Duration::from_secs(5),
        )
    }

    #[test]
    fn request_head_split_over_reads_is_assembled() {
        assert_eq!(
            head(vec![
                Some(b"GET /met"),
                Some(b"rics HTTP/1.1\r\nHost: x\r\n"),
                Some(b"\r\n")
            ]),
            Head::Request {
                method: "GET".into(),
                path: "/metrics".into()
            }
        );
    }

    #[test]
    fn half_a_request_then_silence_is_a_timeout() {
        assert_eq!(
            head(vec![Some(b"GET /metrics HTTP/1.1\r\n"), None]),
            Head::Timeout
        );
    }

    #[test]
    fn close_before_a_whole_head_gets_no_answer() {
        assert_eq!(head(vec![Some(b"GET /metrics HT")]), Head::Gone);
    }

    #[test]
    fn oversized_and_malformed_heads_are_refused() {
        let big = format!("GET / HTTP/1.1\r\nX: {}\r\n", "a".repeat(MAX_REQUEST_BYTES));
        assert_eq!(head(vec![Some(big.as_bytes())]), Head::TooLarge);
        let many: String = (0..MAX_HEADERS + 1)
            .map(|i| format!("H{i}: v\r\n"))
            .collect();
        let req = format!("GET / HTTP/1.1\r\n{many}\r\n");
        assert_eq!(head(vec![Some(req.as_bytes())]), Head::TooLarge);
        assert_eq!(
            head(vec![Some(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")]),
            Head::Malformed
        );
        assert_eq!(
            head(vec![Some(b"GET /metrics HTTP/9.9\r\n\r\n")]),
            Head::Malformed
        );
    }

    #[test]
    fn an_expired_deadline_is_a_timeout_without_reading() {
        let mut script = Script::new(vec![Some(b"GET / HTTP/1.1\r\n\r\n")]);
        assert_eq!(read_head(&mut script, Instant::now()), Head::Timeout);
    }

    #[test]
    fn routes() {
        let registry = Registry::default();
        assert_eq!(route("GET", "/metrics", &registry).status, 200);
        assert_eq!(route("GET", "/metrics?x=1", &registry).status, 200);
        assert_eq!(route("GET", "/status", &registry).status, 200);
        assert_eq!(route("GET", "/", &registry).status, 404);
        assert_eq!(route("GET", "/metricsx", &registry).status, 404);
        let post = route("POST", "/metrics", &registry);
        assert_eq!(post.status, 405);
        assert_eq!(post.extra_headers, vec![("Allow", "GET")]);
        assert_eq!(route("DELETE", "/nope", &registry).status, 404);
        assert_eq!(route("POST", "/ready", &registry).status, 405);
    }

    #[test]
    fn ready_is_503_with_the_reason_until_serving() {
        use crate::readiness::Phase;
        let registry = Registry::default();
        let r = route("GET", "/ready", &registry);
        assert_eq!((r.status, r.body.as_str()), (503, "not ready: starting\n"));
        registry.readiness.set_phase(Phase::Serving);
        let r = route("GET", "/ready", &registry);
        assert_eq!((r.status, r.body.as_str()), (200, "ready\n"));
        registry.readiness.set_node_failed(true);
        assert_eq!(
            route("GET", "/ready", &registry).body,
            "not ready: node failed\n"
        );
        registry.readiness.set_phase(Phase::HandingOver);
        assert_eq!(
            route("GET", "/ready", &registry).body,
            "not ready: handing over\n"
        );
        registry.readiness.set_phase(Phase::Draining);
        let r = route("GET", "/ready", &registry);
        assert_eq!((r.status, r.body.as_str()), (503, "not ready: draining\n"));
    }

    #[test]
    fn response_bytes_carry_length_and_close() {
        let bytes = Response::text(404, "Not Found", "nope\n").to_bytes();
        let text = String::from_utf8(bytes).unwrap();
        assert!(text.starts_with("HTTP/1.1 404 Not Found\r\n"), "{text}");
        assert!(text.contains("\r\nContent-Length: 5\r\n"), "{text}");
        assert!(text.contains("\r\nConnection: close\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\nnope\n"), "{text}");
    }

    fn get(addr: SocketAddr, path: &str) -> (u16, String) {
        try_get(addr, path).unwrap()
    }

    /// Like `get`, but a reset (a refusal racing the request) is an error, not a panic.
    fn try_get(addr: SocketAddr, path: &str) -> io::Result<(u16, String)> {
        let mut s = TcpStream::connect(addr)?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n")?;
        let mut raw = String::new();
        s.read_to_string(&mut raw)?;
        let code = raw[9..12].parse().unwrap();
        let body = raw.split_once("\r\n\r\n").unwrap().1.to_string();
        Ok((code, body))
    }

    #[test]
    fn serves_limits_and_stops() {
        let server = AdminServer::spawn(
            "127.0.0.1:0".parse().unwrap(),
            None,
            Arc::new(Registry::default()),
        )
        .unwrap();
        let addr = server.local_addr();
        assert_ne!(addr.port(), 0);
        let (code, body) = get(addr, "/status");
        assert_eq!(code, 200);
        assert_eq!(body, r#"{"listeners":[]}"#);

        // Fill every slot with clients that send half a request and hold.
        let holders: Vec<TcpStream> = (0..MAX_CONNECTIONS)
            .map(|_| {
                let mut s = TcpStream::connect(addr).unwrap();
                s.write_all(b"GET /metrics HTTP/1.1\r\n").unwrap();
                s
            })
            .collect();
        // The slots are taken asynchronously; the next connection must get 503 soon.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match try_get(addr, "/metrics") {
                Ok((503, _)) => break,
                Ok((code, _)) => assert_eq!(code, 200),
                Err(e) => {
                    assert_eq!(e.kind(), io::ErrorKind::ConnectionReset, "{e}");
                    break;
                }
            }
            assert!(
                Instant::now() < deadline,
                "never refused beyond {MAX_CONNECTIONS} connections"
            );
        }
        drop(holders);
        let deadline = Instant::now() + Duration::from_secs(10);
        while get(addr, "/metrics").0 != 200 {
            assert!(
                Instant::now() < deadline,
                "slots not released after the clients closed"
            );
            std::thread::sleep(Duration::from_millis(20));
        }

        let started = Instant::now();
        server.stop();
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "stop took {:?}",
            started.elapsed()
        );
        assert!(
            TcpStream::connect(addr).is_err(),
            "still accepting after stop"
        );
    }

    #[test]
    fn bind_errors_are_returned() {
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        match AdminServer::spawn(addr, None, Arc::new(Registry::default())) {
            Err(AdminError::Bind { addr: a, .. }) => assert_eq!(a, addr),
            other => panic!("expected a bind error, got {other:?}"),
        }
    }
}
