//! Syslog output (`syslog:` in the configuration): every line also goes to a syslog
//! receiver as an RFC 5424 message, over UDP (one datagram each), TCP (octet-counted
//! frames, RFC 6587) or a local datagram socket such as `/dev/log`.
//!
//! The thread that logs renders the message next to its stderr line, in the same buffer;
//! the writer thread sends it. The writer never waits for the receiver: its socket is
//! non-blocking, messages the receiver has not taken wait in a queue of `queue_size`,
//! and beyond that they are dropped and counted (`ringlb_syslog_dropped_total`). A
//! broken connection is dropped and made again after a back-off (0.1 s doubling to 10 s);
//! the message half-sent when it broke is lost and counted too.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::io::{self, Write as _};
use std::net::SocketAddr;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use log::Record;
use socket2::{Domain, SockAddr, Socket, Type};

use crate::format::{self, priority, Format, Style};

/// First wait before a broken or refused receiver is tried again; doubles up to the max.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// MSGID is at most 32 characters (RFC 5424).
const MAX_MSGID: usize = 32;

/// Where the messages go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyslogAddress {
    Udp(SocketAddr),
    Tcp(SocketAddr),
    Unix(PathBuf),
}

/// A syslog output, as the logger uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyslogSettings {
    pub address: SyslogAddress,
    /// 0..=23.
    pub facility: u8,
    pub app_name: String,
    pub hostname: String,
    /// Messages held while the receiver does not take them.
    pub queue_size: usize,
}

/// Appends the RFC 5424 message for `record` (no framing, no newline):
/// `<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID - MSG`. MSGID is the target's last
/// part (`access` for connection records); MSG is the message, or in the JSON format the
/// whole JSON line.
pub(crate) fn render(
    out: &mut String,
    settings: &SyslogSettings,
    format: Format,
    record: &Record<'_>,
    now: SystemTime,
) {
    let pri = u16::from(settings.facility) * 8 + u16::from(priority(record.level()));
    let target = record.target();
    let msgid = target.rsplit("::").next().unwrap_or(target);
    let _ = write!(
        out,
        "<{pri}>1 {} {} {} {} ",
        humantime::format_rfc3339_micros(now),
        settings.hostname,
        settings.app_name,
        std::process::id()
    );
    let msgid = msgid
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(MAX_MSGID);
    let before = out.len();
    out.extend(msgid);
    if out.len() == before {
        out.push('-');
    }
    out.push_str(" - ");
    match format {
        Format::Text => {
            let _ = out.write_fmt(*record.args());
        }
        Format::Json => {
            let style = Style {
                format: Format::Json,
                journald: false,
                color: false,
            };
            format::render(out, style, record, now);
            // The JSON line's newline: the frame ends without one.
            out.pop();
        }
    }
}

/// The writer thread's side: the socket and the messages waiting for it.
pub(crate) struct Outlet {
    settings: Option<Arc<SyslogSettings>>,
    socket: Option<Conn>,
    pending: VecDeque<Vec<u8>>,
    /// Bytes of the front message already sent (TCP).
    sent: usize,
    retry_at: Option<Instant>,
    backoff: Duration,
}

enum Conn {
    Datagram(Socket),
    Unix(UnixDatagram),
    Stream(Socket),
}

impl Default for Outlet {
    fn default() -> Self {
        Outlet {
            settings: None,
            socket: None,
            pending: VecDeque::new(),
            sent: 0,
            retry_at: None,
            backoff: BACKOFF_MIN,
        }
    }
}

impl Outlet {
    /// Follows a settings change: a new receiver gets a new socket, and what waited for
    /// the old one is dropped (and counted).
    pub(crate) fn configure(&mut self, settings: Option<Arc<SyslogSettings>>, dropped: &AtomicU64) {
        let same = match (&self.settings, &settings) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b) || a == b,
            (None, None) => true,
            _ => false,
        };
        if same {
            return;
        }
        dropped.fetch_add(self.pending.len() as u64, Ordering::Relaxed);
        *self = Outlet {
            settings,
            ..Outlet::default()
        };
    }

    /// Queues one message, or drops and counts it when the queue is full.
    pub(crate) fn offer(&mut self, message: &str, dropped: &AtomicU64) {
        let Some(settings) = &self.settings else {
            return;
        };
        if self.pending.len() >= settings.queue_size {
            dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let mut frame = Vec::with_capacity(message.len() + 8);
        if matches!(settings.address, SyslogAddress::Tcp(_)) {
            // Octet counting (RFC 6587 section 3.4.1): MSG-LEN SP SYSLOG-MSG.
            let _ = write!(frame, "{} ", message.len());
        }
        frame.extend_from_slice(message.as_bytes());
        self.pending.push_back(frame);
    }

    /// Sends what the receiver takes without waiting; (re)connects when due. Returns
    /// whether messages are still waiting.
    pub(crate) fn pump(&mut self, dropped: &AtomicU64) -> bool {
        let Some(settings) = self.settings.clone() else {
            return false;
        };
        while !self.pending.is_empty() {
            if self.socket.is_none() && !self.connect(&settings.address) {
                break;
            }
            match self.send_front() {
                Ok(true) => {
                    self.pending.pop_front();
                    self.sent = 0;
                    self.backoff = BACKOFF_MIN;
                }
                Ok(false) => break,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) if matches!(self.socket, Some(Conn::Datagram(_))) => {
                    // A datagram that could not go (e.g. the port said unreachable):
                    // lost, the socket stays.
                    self.pending.pop_front();
                    dropped.fetch_add(1, Ordering::Relaxed);
                }
                Err(_) => {
                    // A broken stream: the message half-sent is lost with it.
                    if self.sent > 0 {
                        self.pending.pop_front();
                        self.sent = 0;
                        dropped.fetch_add(1, Ordering::Relaxed);
                    }
                    self.broke();
                    break;
                }
            }
        }
        !self.pending.is_empty()
    }

    fn broke(&mut self) {
        self.socket = None;
        self.retry_at = Some(Instant::now() + self.backoff);
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
    }

    /// A new non-blocking socket toward `address`, unless the back-off says not yet.
    fn connect(&mut self, address: &SyslogAddress) -> bool {
        if self.retry_at.is_some_and(|t| Instant::now() < t) {
            return false;
        }
        match open(address) {
            Ok(conn) => {
                self.socket = Some(conn);
                self.retry_at = None;
                true
            }
            Err(_) => {
                self.broke();
                false
            }
        }
    }

    /// Sends (the rest of) the front message. `Ok(true)`: all of it went.
    fn send_front(&mut self) -> io::Result<bool> {
        let (Some(conn), Some(front)) = (&self.socket, self.pending.front()) else {
            return Ok(false);
        };
        match conn {
            Conn::Datagram(s) => s.send(front).map(|_| true),
            Conn::Unix(s) => s.send(front).map(|_| true),
            Conn::Stream(s) => {
                // A receiver that went away must not raise SIGPIPE in the process.
                let n = s.send_with_flags(&front[self.sent..], libc::MSG_NOSIGNAL)?;
                if n == 0 {
                    return Err(io::ErrorKind::WriteZero.into());
                }
                self.sent += n;
                Ok(self.sent == front.len())
            }
        }
    }
}

fn open(address: &SyslogAddress) -> io::Result<Conn> {
    match address {
        SyslogAddress::Udp(addr) => {
            let s = Socket::new(Domain::for_address(*addr), Type::DGRAM, None)?;
            s.set_nonblocking(true)?;
            s.connect(&SockAddr::from(*addr))?;
            Ok(Conn::Datagram(s))
        }
        SyslogAddress::Tcp(addr) => {
            let s = Socket::new(Domain::for_address(*addr), Type::STREAM, None)?;
            s.set_nonblocking(true)?;
            s.set_nodelay(true)?;
            match s.connect(&SockAddr::from(*addr)) {
                Ok(()) => {}
                // Connecting goes on in the background; sends say EAGAIN until it is done.
                Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
                Err(e) => return Err(e),
            }
            Ok(Conn::Stream(s))
        }
        SyslogAddress::Unix(path) => {
            let s = UnixDatagram::unbound()?;
            s.set_nonblocking(true)?;
            s.connect(path)?;
            Ok(Conn::Unix(s))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::time::UNIX_EPOCH;

    fn settings(address: SyslogAddress, queue_size: usize) -> SyslogSettings {
        SyslogSettings {
            address,
            facility: 16,
            app_name: "ringlb".into(),
            hostname: "edge1".into(),
            queue_size,
        }
    }

    fn message(format: Format, level: log::Level, target: &str, text: &str) -> String {
        let kvs: [(&str, log::kv::Value<'_>); 1] = [("id", log::kv::Value::from("00ab"))];
        let mut out = String::new();
        let at = UNIX_EPOCH + Duration::from_micros(1_795_532_658_639_806);
        let s = settings(SyslogAddress::Udp("127.0.0.1:514".parse().unwrap()), 1);
        render(
            &mut out,
            &s,
            format,
            &Record::builder()
                .level(level)
                .target(target)
                .args(format_args!("{text}"))
                .key_values(&kvs)
                .build(),
            at,
        );
        out
    }

    #[test]
    fn rfc5424_header_and_message() {
        let pid = std::process::id();
        assert_eq!(
            message(
                Format::Text,
                log::Level::Info,
                "ringlb::access",
                "event=end id=00ab"
            ),
            format!(
                "<134>1 2026-11-24T15:04:18.639806Z edge1 ringlb {pid} access - event=end id=00ab"
            )
        );
        assert_eq!(
            message(Format::Text, log::Level::Warn, "", "x"),
            format!("<132>1 2026-11-24T15:04:18.639806Z edge1 ringlb {pid} - - x")
        );
        let json = message(Format::Json, log::Level::Error, "ringlb::control", "m");
        let (head, msg) = json.split_once(" - ").unwrap();
        assert_eq!(
            head,
            format!("<131>1 2026-11-24T15:04:18.639806Z edge1 ringlb {pid} control")
        );
        let v: serde_json::Value = serde_json::from_str(msg).unwrap();
        assert_eq!(
            (v["msg"].as_str(), v["id"].as_str()),
            (Some("m"), Some("00ab"))
        );
    }

    /// An outlet toward a TCP receiver at `addr`, holding `queue` messages.
    fn tcp_outlet(addr: SocketAddr, queue: usize) -> (Outlet, AtomicU64) {
        let dropped = AtomicU64::new(0);
        let mut out = Outlet::default();
        let s = settings(SyslogAddress::Tcp(addr), queue);
        out.configure(Some(Arc::new(s)), &dropped);
        (out, dropped)
    }

    #[test]
    fn tcp_frames_are_octet_counted_and_a_full_queue_drops() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (mut out, dropped) = tcp_outlet(addr, 2);
        out.offer("hello", &dropped);
        out.offer("wörld", &dropped);
        out.offer("third", &dropped);
        assert_eq!(dropped.load(Ordering::Relaxed), 1, "the queue holds two");
        // The first pump connects (in the background).
        out.pump(&dropped);
        let (mut peer, _) = listener.accept().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while out.pump(&dropped) {
            assert!(Instant::now() < deadline, "never sent");
            std::thread::yield_now();
        }
        peer.set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let want = "5 hello6 wörld".as_bytes();
        let mut got = vec![0u8; want.len()];
        peer.read_exact(&mut got).unwrap();
        assert_eq!(got, want);
    }

    #[test]
    fn a_refused_receiver_backs_off_and_keeps_the_queue() {
        // A port nobody listens on: bind, note the port, close.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let (mut out, dropped) = tcp_outlet(addr, 8);
        out.offer("a", &dropped);
        let deadline = Instant::now() + Duration::from_secs(30);
        while out.retry_at.is_none() {
            assert!(Instant::now() < deadline, "the refusal was never seen");
            assert!(out.pump(&dropped), "the message stays queued");
        }
        assert!(out.backoff > BACKOFF_MIN);
        assert_eq!(dropped.load(Ordering::Relaxed), 0);
        // A new receiver: what waited for the old one is dropped and counted.
        out.configure(
            Some(Arc::new(settings(SyslogAddress::Tcp(addr), 9))),
            &dropped,
        );
        assert_eq!(dropped.load(Ordering::Relaxed), 1);
    }
}
