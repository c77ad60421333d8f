//! The HTTP/1.x side of the admin endpoint: one thread multiplexing non-blocking sockets
//! with poll(2), per-connection limits, routing.
//!
//! One request per connection (`Connection: close`): scrapers and curl are happy with it,
//! and it keeps the state of a connection to "read one request, write one response".
//! Requests are parsed by `httparse`; everything around it is bounded — request size,
//! time to send the request head ([`HEAD_TIMEOUT`]), time to take the response
//! ([`WRITE_TIMEOUT`]), and connections held at once ([`MAX_CONNECTIONS`]).
//!
//! Idle and slow clients cannot keep a scrape out. When every slot is held, a new
//! connection is admitted by closing the oldest one that has not sent a complete request
//! head (then, if there is none, the oldest whose response is already out, then the
//! oldest still taking its response): the newest connection always gets in, and a scraper
//! sends its head at once, so it is served while idle connections are shed. Nothing here
//! can touch the data plane.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::registry::Registry;

use super::{metrics, status, AdminError};

/// Admin connections held at once; beyond it the oldest idle or slow one is closed.
pub const MAX_CONNECTIONS: usize = 64;
/// Largest request head accepted (request line + headers); larger gets 431.
pub const MAX_REQUEST_BYTES: usize = 8 * 1024;
/// Headers accepted in one request; more gets 431.
const MAX_HEADERS: usize = 32;
/// Time a client gets, from accept, to send its whole request head; then 408. Scrapers
/// and curl send it with the connect, so this only ever expires for idle or slow clients.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(2);
/// Time a client gets to take the response.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// After the response, how long unread request bytes are drained before closing (closing
/// with unread data would send a RST that can destroy the response in flight).
const LINGER: Duration = Duration::from_millis(500);
/// After an accept error (EMFILE and friends), wait before accepting again: no spinning.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Longest poll(2) sleep, so a stop is seen even if its wake-up were lost.
const TICK: Duration = Duration::from_millis(250);
/// Accepts per turn of the loop: a connect flood cannot starve the connections held.
const ACCEPT_BATCH: usize = 64;
/// The admin socket's accept queue: a burst of connects must not overflow it, or a
/// scraper's SYN would be dropped and retried only a second later.
const LISTEN_BACKLOG: i32 = 1024;
/// At most one warning per this interval about connections closed to admit new ones.
const SHED_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// The running admin endpoint. [`stop`](Self::stop) or drop stops it and joins its
/// thread; connections still open then are closed.
#[derive(Debug)]
pub struct AdminServer {
    local: SocketAddr,
    listener: Arc<TcpListener>,
    stopping: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// A listening socket with a backlog of [`LISTEN_BACKLOG`] (std's `bind` gives 128).
fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.bind(&SockAddr::from(addr))?;
    socket.listen(LISTEN_BACKLOG)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

impl AdminServer {
    /// Serve on `inherited` (a live upgrade's) or on a new socket bound to `addr`.
    pub(super) fn spawn(
        addr: SocketAddr,
        inherited: Option<TcpListener>,
        registry: Arc<Registry>,
    ) -> Result<AdminServer, AdminError> {
        let listener = match inherited {
            Some(listener) => {
                listener
                    .set_nonblocking(true)
                    .map_err(|source| AdminError::Bind { addr, source })?;
                listener
            }
            None => listen(addr).map_err(|source| AdminError::Bind { addr, source })?,
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
                move || serve(&listener, &stopping, &registry)
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

    /// Stops accepting and waits for the thread to end.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        self.stopping.store(true, Ordering::Release);
        // On Linux, shutting down a listening socket wakes its poll(2) at once; failing
        // that, the loop sees `stopping` within one TICK.
        if let Err(e) = socket2::SockRef::from(&*self.listener).shutdown(Shutdown::Read) {
            log::debug!("admin endpoint: cannot shut down {}: {e}", self.local);
        }
        if thread.join().is_err() {
            log::error!("admin endpoint: thread panicked");
        }
    }
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The loop: wait for readiness or the next deadline, move every ready connection on,
/// expire the overdue, accept new ones.
fn serve(listener: &TcpListener, stopping: &AtomicBool, registry: &Registry) {
    let mut conns: Vec<Conn> = Vec::new();
    let mut shed = ShedLog::default();
    while !stopping.load(Ordering::Acquire) {
        let (accept, ready) = wait(listener, &conns);
        if stopping.load(Ordering::Acquire) {
            return;
        }
        let now = Instant::now();
        for (conn, ready) in conns.iter_mut().zip(ready) {
            if ready {
                conn.progress(registry, now);
            }
            conn.expire(registry, now);
        }
        conns.retain(|c| !c.is_done());
        if accept {
            accept_some(listener, &mut conns, &mut shed, registry);
        }
    }
}

/// poll(2) until the listener or a connection is ready, or the next deadline: whether
/// the listener is readable, and which connections are ready (in `conns` order).
fn wait(listener: &TcpListener, conns: &[Conn]) -> (bool, Vec<bool>) {
    let now = Instant::now();
    let sleep = conns
        .iter()
        .map(|c| c.deadline().saturating_duration_since(now))
        .min()
        .unwrap_or(TICK)
        .min(TICK);
    // Rounded up: a deadline 0.3 ms away must not become a busy loop of 0 ms polls.
    let timeout = u16::try_from(sleep.as_millis() + 1).map_or(PollTimeout::MAX, PollTimeout::from);
    let mut fds = Vec::with_capacity(conns.len() + 1);
    fds.push(PollFd::new(listener.as_fd(), PollFlags::POLLIN));
    fds.extend(
        conns
            .iter()
            .map(|c| PollFd::new(c.stream.as_fd(), c.interest())),
    );
    if nix::poll::poll(&mut fds, timeout).is_err() {
        // EINTR (or ENOMEM): nothing is known to be ready; deadlines are still checked.
        return (false, vec![false; conns.len()]);
    }
    let ready = |fd: &PollFd| fd.revents().is_some_and(|r| !r.is_empty());
    let accept = fds.first().is_some_and(ready);
    (accept, fds.iter().skip(1).map(ready).collect())
}

fn accept_some(
    listener: &TcpListener,
    conns: &mut Vec<Conn>,
    shed: &mut ShedLog,
    registry: &Registry,
) {
    for _ in 0..ACCEPT_BATCH {
        let (stream, peer) = match listener.accept() {
            Ok(pair) => pair,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
                ) =>
            {
                continue
            }
            Err(e) => {
                log::warn!("admin endpoint: accept failed: {e}; retrying in {ACCEPT_BACKOFF:?}");
                std::thread::sleep(ACCEPT_BACKOFF);
                return;
            }
        };
        if stream.set_nonblocking(true).is_err() {
            continue;
        }
        let now = Instant::now();
        if conns.len() >= MAX_CONNECTIONS {
            if let Some(victim) = shed_one(conns) {
                shed.note(&victim, now);
            }
        }
        let mut conn = Conn::new(stream, peer, now);
        // A scraper's request head usually arrives with the connection: serve it now.
        conn.progress(registry, now);
        if !conn.is_done() {
            conns.push(conn);
        }
    }
}

/// Removes and returns the connection to close so a new one can be admitted: the oldest
/// that has not sent a complete request head, else the oldest lingering after its
/// response, else the oldest still taking its response.
fn shed_one(conns: &mut Vec<Conn>) -> Option<Conn> {
    let rank = |c: &Conn| match c.phase {
        Phase::Head(_) | Phase::Done => 0,
        Phase::Linger { .. } => 1,
        Phase::Write { .. } => 2,
    };
    let victim = conns
        .iter()
        .enumerate()
        .min_by_key(|(_, c)| (rank(c), c.accepted))
        .map(|(i, _)| i)?;
    Some(conns.swap_remove(victim))
}

/// Rate-limited warning about connections closed to admit new ones.
#[derive(Default)]
struct ShedLog {
    last: Option<Instant>,
    count: u64,
}

impl ShedLog {
    fn note(&mut self, victim: &Conn, now: Instant) {
        self.count += 1;
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < SHED_LOG_INTERVAL)
        {
            return;
        }
        let waiting = matches!(victim.phase, Phase::Head(_));
        log::warn!(
            "admin endpoint: {MAX_CONNECTIONS} connections held; closed {} to admit new ones since the last such line (the latest from {}, open {:?}{})",
            self.count,
            victim.peer,
            now.duration_since(victim.accepted),
            if waiting { " without a complete request" } else { "" }
        );
        self.count = 0;
        self.last = Some(now);
    }
}

/// One admin connection and how far it got.
struct Conn {
    stream: TcpStream,
    peer: SocketAddr,
    accepted: Instant,
    phase: Phase,
}

enum Phase {
    /// Reading the request head: what has arrived so far.
    Head(Vec<u8>),
    /// Writing the response.
    Write {
        bytes: Vec<u8>,
        sent: usize,
        deadline: Instant,
    },
    /// Response written and the write side shut: draining what the client still sends.
    Linger {
        deadline: Instant,
        drained: usize,
    },
    Done,
}

impl Phase {
    fn respond(response: &Response, now: Instant) -> Phase {
        Phase::Write {
            bytes: response.to_bytes(),
            sent: 0,
            deadline: now + WRITE_TIMEOUT,
        }
    }
}

impl Conn {
    fn new(stream: TcpStream, peer: SocketAddr, now: Instant) -> Conn {
        Conn {
            stream,
            peer,
            accepted: now,
            phase: Phase::Head(Vec::new()),
        }
    }

    fn is_done(&self) -> bool {
        matches!(self.phase, Phase::Done)
    }

    fn interest(&self) -> PollFlags {
        match self.phase {
            Phase::Head(_) | Phase::Linger { .. } => PollFlags::POLLIN,
            Phase::Write { .. } => PollFlags::POLLOUT,
            Phase::Done => PollFlags::empty(),
        }
    }

    /// When this connection's current phase runs out of time.
    fn deadline(&self) -> Instant {
        match self.phase {
            Phase::Head(_) | Phase::Done => self.accepted + HEAD_TIMEOUT,
            Phase::Write { deadline, .. } | Phase::Linger { deadline, .. } => deadline,
        }
    }

    /// Makes all the progress the socket allows now, without blocking.
    fn progress(&mut self, registry: &Registry, now: Instant) {
        loop {
            let next = match &mut self.phase {
                Phase::Head(buf) => match read_head(&mut self.stream, buf) {
                    None => return,
                    Some(Head::Gone) => Phase::Done,
                    Some(head) => Phase::respond(&respond(head, registry), now),
                },
                Phase::Write { bytes, sent, .. } => match write_some(&mut self.stream, bytes, sent)
                {
                    Step::Blocked => return,
                    Step::Failed => Phase::Done,
                    Step::Finished => match self.stream.shutdown(Shutdown::Write) {
                        Ok(()) => Phase::Linger {
                            deadline: now + LINGER,
                            drained: 0,
                        },
                        Err(_) => Phase::Done,
                    },
                },
                Phase::Linger { drained, .. } => match drain(&mut self.stream, drained) {
                    Step::Blocked => return,
                    Step::Failed | Step::Finished => Phase::Done,
                },
                Phase::Done => return,
            };
            self.phase = next;
        }
    }

    /// Past its deadline: a client still sending its head gets 408; any other is closed.
    fn expire(&mut self, registry: &Registry, now: Instant) {
        if now < self.deadline() {
            return;
        }
        self.phase = match self.phase {
            Phase::Head(_) => Phase::respond(&respond(Head::Timeout, registry), now),
            _ => Phase::Done,
        };
        self.progress(registry, now);
    }
}

/// What one non-blocking write or drain step came to.
enum Step {
    /// The socket would block: poll again.
    Blocked,
    Finished,
    Failed,
}

/// What one non-blocking read or write call came to.
enum Io {
    Moved(usize),
    /// EINTR: call again.
    Again,
    End(Step),
}

/// `Ok(0)` means `at_zero`: the end of a read, a failed write.
fn io(result: io::Result<usize>, at_zero: Step) -> Io {
    match result {
        Ok(0) => Io::End(at_zero),
        Ok(n) => Io::Moved(n),
        Err(e) if e.kind() == io::ErrorKind::Interrupted => Io::Again,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Io::End(Step::Blocked),
        Err(_) => Io::End(Step::Failed),
    }
}

fn write_some(stream: &mut TcpStream, bytes: &[u8], sent: &mut usize) -> Step {
    while let Some(rest) = bytes.get(*sent..).filter(|r| !r.is_empty()) {
        match io(stream.write(rest), Step::Failed) {
            Io::Moved(n) => *sent += n,
            Io::Again => {}
            Io::End(step) => return step,
        }
    }
    Step::Finished
}

/// Reads and discards what the client still sends, so the close after the response is a
/// FIN rather than a RST that could discard the response in flight; bounded in bytes.
fn drain(stream: &mut TcpStream, drained: &mut usize) -> Step {
    let mut sink = [0u8; 1024];
    while *drained < MAX_REQUEST_BYTES * 8 {
        match io(stream.read(&mut sink), Step::Finished) {
            Io::Moved(n) => *drained += n,
            Io::Again => {}
            Io::End(step) => return step,
        }
    }
    Step::Finished
}

fn respond(head: Head, registry: &Registry) -> Response {
    match head {
        Head::Request { method, path } => route(&method, &path, registry),
        Head::Timeout => Response::text(408, "Request Timeout", "request not received in time\n"),
        Head::TooLarge => Response::text(
            431,
            "Request Header Fields Too Large",
            "request head too large\n",
        ),
        Head::Malformed | Head::Gone => {
            Response::text(400, "Bad Request", "malformed HTTP request\n")
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

/// Reads what `stream` has now into `buf` (at most [`MAX_REQUEST_BYTES`] in all) and
/// parses it: `None` while the head is incomplete and the stream would block.
pub(super) fn read_head(stream: &mut impl Read, buf: &mut Vec<u8>) -> Option<Head> {
    let mut chunk = [0u8; 2048];
    loop {
        let room = MAX_REQUEST_BYTES.saturating_sub(buf.len()).min(chunk.len());
        match io(stream.read(&mut chunk[..room]), Step::Finished) {
            Io::Moved(n) => buf.extend_from_slice(&chunk[..n]),
            Io::Again => continue,
            Io::End(Step::Blocked) => return None,
            // The client closed or reset before a whole head: nothing to answer.
            Io::End(Step::Finished | Step::Failed) => return Some(Head::Gone),
        }
        if let Some(head) = parse_head(buf) {
            return Some(head);
        }
    }
}

/// The head in `buf`, or `None` if more bytes are needed.
fn parse_head(buf: &[u8]) -> Option<Head> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(buf) {
        Ok(httparse::Status::Complete(_)) => Some(match (request.method, request.path) {
            (Some(method), Some(path)) => Head::Request {
                method: method.to_string(),
                path: path.to_string(),
            },
            _ => Head::Malformed,
        }),
        Ok(httparse::Status::Partial) if buf.len() >= MAX_REQUEST_BYTES => Some(Head::TooLarge),
        Ok(httparse::Status::Partial) => None,
        Err(httparse::Error::TooManyHeaders) => Some(Head::TooLarge),
        Err(_) => Some(Head::Malformed),
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

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]

        /// Whatever a client sends, the head parser and the router answer without
        /// panicking, with a status the endpoint documents.
        #[test]
        fn any_request_bytes_get_a_documented_answer(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600),
            valid_prefix in proptest::prelude::any::<bool>(),
        ) {
            let registry = Registry::default();
            let mut input = if valid_prefix { b"GET /".to_vec() } else { Vec::new() };
            input.extend_from_slice(&bytes);
            if let Some(head) = parse_head(&input) {
                let status = respond(head, &registry).status;
                proptest::prop_assert!([200, 400, 404, 405, 408, 431, 503].contains(&status), "{status}");
            }
        }

        #[test]
        fn any_method_and_target_are_routed(method in "\\PC{0,12}", target in "\\PC{0,64}") {
            let registry = Registry::default();
            let status = route(&method, &target, &registry).status;
            proptest::prop_assert!([200, 404, 405, 503].contains(&status), "{status}");
        }
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
        assert_eq!(route("POST", "/ready", &registry).status, 405);
    }

    use crate::bounded::Script;

    /// What one readiness turn makes of these reads: `None` while the head is incomplete.
    fn head(chunks: Vec<Option<&[u8]>>) -> Option<Head> {
        read_head(&mut Script::new(chunks), &mut Vec::new())
    }

    #[test]
    fn request_head_split_over_reads_is_assembled() {
        assert_eq!(
            head(vec![
                Some(b"GET /met"),
                Some(b"rics HTTP/1.1\r\nHost: x\r\n"),
                Some(b"\r\n")
            ]),
            Some(Head::Request {
                method: "GET".into(),
                path: "/metrics".into()
            })
        );
    }

    #[test]
    fn a_head_is_assembled_across_readiness_turns() {
        let mut buf = Vec::new();
        let mut first = Script::new(vec![Some(b"GET /metrics HTTP/1.1\r\n"), None]);
        assert_eq!(read_head(&mut first, &mut buf), None, "incomplete: wait");
        let mut second = Script::new(vec![Some(b"\r\n")]);
        assert_eq!(
            read_head(&mut second, &mut buf),
            Some(Head::Request {
                method: "GET".into(),
                path: "/metrics".into()
            })
        );
    }

    #[test]
    fn close_before_a_whole_head_gets_no_answer() {
        assert_eq!(head(vec![Some(b"GET /metrics HT")]), Some(Head::Gone));
    }

    #[test]
    fn oversized_and_malformed_heads_are_refused() {
        let big = format!("GET / HTTP/1.1\r\nX: {}\r\n", "a".repeat(MAX_REQUEST_BYTES));
        assert_eq!(head(vec![Some(big.as_bytes())]), Some(Head::TooLarge));
        let many: String = (0..MAX_HEADERS + 1)
            .map(|i| format!("H{i}: v\r\n"))
            .collect();
        let req = format!("GET / HTTP/1.1\r\n{many}\r\n");
        assert_eq!(head(vec![Some(req.as_bytes())]), Some(Head::TooLarge));
        assert_eq!(
            head(vec![Some(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")]),
            Some(Head::Malformed)
        );
        assert_eq!(
            head(vec![Some(b"GET /metrics HTTP/9.9\r\n\r\n")]),
            Some(Head::Malformed)
        );
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

    /// Reads until EOF or `wait`; what arrived.
    fn read_all(s: &mut TcpStream, wait: Duration) -> String {
        s.set_read_timeout(Some(wait)).unwrap();
        let mut raw = Vec::new();
        let _ = s.read_to_end(&mut raw);
        String::from_utf8_lossy(&raw).into_owned()
    }

    #[test]
    fn idle_clients_are_shed_for_new_ones_and_slow_heads_get_408() {
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

        // Three tables' worth of clients that send nothing or half a request and hold.
        let mut holders: Vec<TcpStream> = (0..3 * MAX_CONNECTIONS)
            .map(|i| {
                let mut s = TcpStream::connect(addr).unwrap();
                if i % 2 == 0 {
                    s.write_all(b"GET /metrics HTTP/1.1\r\n").unwrap();
                }
                s
            })
            .collect();
        // A scrape still gets in, and is answered.
        let (code, _) = get(addr, "/metrics");
        assert_eq!(code, 200);
        // The oldest holders were closed to make room, without an answer.
        let oldest = read_all(&mut holders[0], Duration::from_secs(10));
        assert_eq!(oldest, "", "a shed connection is closed without a response");
        // The newest one that sent half a request is answered 408 once its time is up.
        let newest = holders.len() - 2;
        let late = read_all(&mut holders[newest], HEAD_TIMEOUT * 5);
        assert!(late.starts_with("HTTP/1.1 408 "), "{late:?}");
        drop(holders);

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
    fn the_oldest_connection_without_a_request_is_shed_first() {
        let now = Instant::now();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let mut clients = Vec::new();
        let mut conn = |phase: Phase, age: u64| {
            clients.push(TcpStream::connect(addr).unwrap());
            let (stream, peer) = listener.accept().unwrap();
            let mut c = Conn::new(stream, peer, now - Duration::from_secs(age));
            c.phase = phase;
            c
        };
        let writing = Phase::Write {
            bytes: Vec::new(),
            sent: 0,
            deadline: now,
        };
        let lingering = Phase::Linger {
            deadline: now,
            drained: 0,
        };
        let mut conns = vec![
            conn(writing, 9),
            conn(Phase::Head(Vec::new()), 1),
            conn(lingering, 8),
            conn(Phase::Head(Vec::new()), 3),
        ];
        let age = |c: Conn| now.duration_since(c.accepted).as_secs();
        // Heads first, oldest first; then the lingering one; the writer last.
        assert_eq!(shed_one(&mut conns).map(age), Some(3));
        assert_eq!(shed_one(&mut conns).map(age), Some(1));
        assert_eq!(shed_one(&mut conns).map(age), Some(8));
        assert_eq!(shed_one(&mut conns).map(age), Some(9));
        assert!(shed_one(&mut conns).is_none());
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
