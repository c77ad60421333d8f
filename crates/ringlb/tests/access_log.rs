//! The access log through a running `ringlb`: one `ringlb::access` line at info per finished
//! TCP connection and per ended UDP session, with listener, client, backend, duration,
//! bytes each way and how it ended — one test per `end=` value that can be produced on
//! loopback — and the ways to turn it off (`access_log: false`, also by reload;
//! `RUST_LOG=…,ringlb::access=off`).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

use socket2::{Domain, Socket, Type};

use ringlb_testkit::*;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_ringlb"))
}

const TARGET: &str = "ringlb::access";
/// Every key of an access line, in the order ringlb writes them.
const KEYS: [&str; 7] = [
    "listener",
    "client",
    "backend",
    "duration_ms",
    "bytes_in",
    "bytes_out",
    "end",
];
const WAIT: Duration = Duration::from_secs(10);
/// How long to watch for an access line that must not come.
const NO_LINE_WAIT: Duration = Duration::from_secs(1);

/// One listener "web" on an ephemeral port; `top` is top-level keys, `extra` listener keys.
fn yaml(top: &str, extra: &str, backends: &[SocketAddr]) -> String {
    one_listener_yaml(top, "web", "127.0.0.1:0", extra, backends)
}

/// One parsed access line.
#[derive(Debug, Clone)]
struct Access {
    level: String,
    fields: BTreeMap<String, String>,
}

impl Access {
    fn get(&self, key: &str) -> &str {
        self.fields
            .get(key)
            .map(String::as_str)
            .unwrap_or_else(|| panic!("access line without {key}: {self:?}"))
    }

    fn num(&self, key: &str) -> u64 {
        self.get(key)
            .parse()
            .unwrap_or_else(|e| panic!("{key}={:?} is not a number ({e}): {self:?}", self.get(key)))
    }
}

/// Parses `[<ts> <LEVEL> ringlb::access] k=v k=v …`; None for other lines. Panics if an
/// access line does not have exactly the documented keys in the documented order.
fn parse_access(line: &str) -> Option<Access> {
    let close = line.find(&format!(" {TARGET}] "))?;
    let head = &line[..close];
    let level = head.split_whitespace().last()?.to_string();
    let body = &line[close + TARGET.len() + 3..];
    let mut keys = Vec::new();
    let mut fields = BTreeMap::new();
    for pair in body.split(' ') {
        let (k, v) = pair
            .split_once('=')
            .unwrap_or_else(|| panic!("access field without `=`: {pair:?} in {line:?}"));
        keys.push(k.to_string());
        fields.insert(k.to_string(), v.to_string());
    }
    assert_eq!(keys, KEYS, "access line keys: {line:?}");
    Some(Access { level, fields })
}

fn access_lines(lb: &Ringlb) -> Vec<Access> {
    lb.logs().iter().filter_map(|l| parse_access(l)).collect()
}

/// Waits for the access line of the connection from `client` and returns it; panics if
/// none comes or more than one does.
fn access_for(lb: &Ringlb, client: SocketAddr) -> Access {
    let needle = format!("client={client} ");
    assert!(
        lb.wait_for_log(&needle, WAIT),
        "no access line for client {client}; log:\n{}",
        lb.logs().join("\n")
    );
    let found: Vec<Access> = access_lines(lb)
        .into_iter()
        .filter(|a| a.get("client") == client.to_string())
        .collect();
    assert_eq!(
        found.len(),
        1,
        "exactly one access line per connection: {found:?}"
    );
    let a = found.into_iter().next().unwrap();
    assert_eq!(a.level, "INFO", "access lines are info: {a:?}");
    assert_eq!(a.get("listener"), "web");
    a.num("duration_ms");
    a
}

fn expect(a: &Access, backend: &str, bytes_in: Option<u64>, bytes_out: Option<u64>, end: &str) {
    assert_eq!(a.get("end"), end, "{a:?}");
    assert_eq!(a.get("backend"), backend, "{a:?}");
    if let Some(n) = bytes_in {
        assert_eq!(a.num("bytes_in"), n, "bytes_in: {a:?}");
    }
    if let Some(n) = bytes_out {
        assert_eq!(a.num("bytes_out"), n, "bytes_out: {a:?}");
    }
}

/// Connects from `ip` (port chosen by a bind before the connect, so the client address is
/// known even when ringlb resets the connection before connect(2) returns) and reads until
/// the connection ends. A denied client must see a reset and no byte.
fn denied_client(ip: Ipv4Addr, to: SocketAddr) -> SocketAddr {
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    s.bind(&SocketAddr::from((ip, 0)).into()).unwrap();
    let me = s.local_addr().unwrap().as_socket().unwrap();
    match s.connect_timeout(&to.into(), WAIT) {
        Ok(()) => {
            let mut c: TcpStream = s.into();
            let end = read_until_end(&mut c, WAIT);
            assert!(matches!(end, ClientEnd::Reset { bytes: 0 }), "{end:?}");
        }
        // The reset can beat connect(2)'s own completion.
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
    }
    me
}

fn read_to_eof(c: &mut TcpStream) -> Vec<u8> {
    let mut rest = Vec::new();
    c.read_to_end(&mut rest).expect("clean EOF");
    rest
}

#[test]
fn client_close() {
    let backend = EchoBackend::start();
    let lb = Ringlb::start(bin(), &yaml("", "", &[backend.addr()]));
    let mut c = connect(lb.listener_addr("web"));
    let client = c.local_addr().unwrap();
    assert_echo(&mut c, b"hello");
    // Held long enough that a duration in seconds instead of ms would show.
    std::thread::sleep(Duration::from_millis(250));
    c.shutdown(Shutdown::Write).unwrap();
    assert!(read_to_eof(&mut c).is_empty());
    drop(c);
    let a = access_for(&lb, client);
    expect(
        &a,
        &backend.addr().to_string(),
        Some(5),
        Some(5),
        "client_close",
    );
    let ms = a.num("duration_ms");
    assert!((250..10_000).contains(&ms), "duration_ms={ms}");
}

#[test]
fn backend_close() {
    let backend = HalfCloseBackend::send_then_shutdown(b"banner");
    let lb = Ringlb::start(bin(), &yaml("", "", &[backend.addr()]));
    let mut c = connect(lb.listener_addr("web"));
    let client = c.local_addr().unwrap();
    assert_eq!(read_to_eof(&mut c), b"banner");
    // The backend's FIN came first; the client now sends a little and closes.
    c.write_all(b"bye").unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    drop(c);
    let a = access_for(&lb, client);
    expect(
        &a,
        &backend.addr().to_string(),
        Some(3),
        Some(6),
        "backend_close",
    );
}

#[test]
fn client_reset() {
    let backend = EchoBackend::start();
    let lb = Ringlb::start(bin(), &yaml("", "", &[backend.addr()]));
    let mut c = connect(lb.listener_addr("web"));
    let client = c.local_addr().unwrap();
    assert_echo(&mut c, b"abc");
    reset_close(c);
    let a = access_for(&lb, client);
    expect(
        &a,
        &backend.addr().to_string(),
        Some(3),
        Some(3),
        "client_reset",
    );
}

#[test]
fn backend_reset() {
    // The backend resets after reading the client's 3 bytes, so the reset comes mid-stream
    // (a backend that resets the instant it accepts can beat ringlb's connect completion,
    // which is then a failed connect: `denied_no_backend`, not this).
    let backend = ResetBackend::after_read(3);
    let lb = Ringlb::start(bin(), &yaml("", "", &[backend.addr()]));
    let mut c = connect(lb.listener_addr("web"));
    let client = c.local_addr().unwrap();
    c.write_all(b"abc").unwrap();
    let end = read_until_end(&mut c, WAIT);
    assert!(matches!(end, ClientEnd::Reset { bytes: 0 }), "{end:?}");
    let a = access_for(&lb, client);
    expect(
        &a,
        &backend.addr().to_string(),
        Some(3),
        Some(0),
        "backend_reset",
    );
}

#[test]
fn idle_timeout() {
    let backend = EchoBackend::start();
    let lb = Ringlb::start(bin(), &yaml("", "idle_timeout: 300ms", &[backend.addr()]));
    let mut c = connect(lb.listener_addr("web"));
    let client = c.local_addr().unwrap();
    assert_echo(&mut c, b"quiet now");
    let end = read_until_end(&mut c, WAIT);
    assert!(matches!(end, ClientEnd::Eof { bytes: 0 }), "{end:?}");
    let a = access_for(&lb, client);
    expect(
        &a,
        &backend.addr().to_string(),
        Some(9),
        Some(9),
        "idle_timeout",
    );
    assert!(a.num("duration_ms") >= 300, "{a:?}");
}

#[test]
fn drain_cut() {
    let backend = EchoBackend::start();
    let mut lb = Ringlb::start(
        bin(),
        &yaml("shutdown_timeout: 300ms\n", "", &[backend.addr()]),
    );
    let mut c = connect(lb.listener_addr("web"));
    let client = c.local_addr().unwrap();
    assert_echo(&mut c, b"held");
    lb.signal(Signal::Term);
    let status = lb
        .wait_exit(WAIT)
        .expect("ringlb exits after shutdown_timeout");
    assert_eq!(exit_code(status), 0);
    let a = access_for(&lb, client);
    expect(
        &a,
        &backend.addr().to_string(),
        Some(4),
        Some(4),
        "drain_cut",
    );
    let end = read_until_end(&mut c, WAIT);
    assert!(matches!(end, ClientEnd::Reset { .. }), "{end:?}");
}

#[test]
fn denied_not_allowed() {
    let backend = EchoBackend::start();
    let lb = Ringlb::start(bin(), &yaml("", "allow: [127.0.0.1/32]", &[backend.addr()]));
    let addr = lb.listener_addr("web");
    let client = denied_client(Ipv4Addr::new(127, 0, 0, 2), addr);
    let a = access_for(&lb, client);
    expect(&a, "-", Some(0), Some(0), "denied_not_allowed");
    assert_eq!(a.num("duration_ms"), 0);
    assert_eq!(
        backend.accepted(),
        0,
        "a denied client never reaches a backend"
    );
}

#[test]
fn denied_no_backend() {
    let dead = refused_addr();
    let lb = Ringlb::start(bin(), &yaml("", "connect_attempts: 1", &[dead]));
    let client = denied_client(Ipv4Addr::LOCALHOST, lb.listener_addr("web"));
    let a = access_for(&lb, client);
    expect(&a, "-", Some(0), Some(0), "denied_no_backend");
}

#[test]
fn denied_limit() {
    let backend = EchoBackend::start();
    let lb = Ringlb::start(bin(), &yaml("", "max_connections: 1", &[backend.addr()]));
    let addr = lb.listener_addr("web");
    let mut held = connect(addr);
    assert_echo(&mut held, b"slot");
    let client = denied_client(Ipv4Addr::LOCALHOST, addr);
    let a = access_for(&lb, client);
    expect(&a, "-", Some(0), Some(0), "denied_limit");
}

/// An IPv6 client is logged in `[addr]:port` form.
#[test]
fn ipv6_client_address() {
    let backend = EchoBackend::start();
    let y = yaml("", "", &[backend.addr()]).replace("bind: 127.0.0.1:0", "bind: \"[::1]:0\"");
    let lb = Ringlb::start(bin(), &y);
    let mut c = connect(lb.listener_addr("web"));
    let client = c.local_addr().unwrap();
    assert!(client.is_ipv6());
    assert_echo(&mut c, b"six");
    c.shutdown(Shutdown::Write).unwrap();
    read_to_eof(&mut c);
    let a = access_for(&lb, client);
    assert!(a.get("client").starts_with("[::1]:"), "{a:?}");
    expect(
        &a,
        &backend.addr().to_string(),
        Some(3),
        Some(3),
        "client_close",
    );
}

/// One connection of each kind (finished and denied) against listener "web".
fn finished_and_denied(lb: &Ringlb) -> [SocketAddr; 2] {
    let addr = lb.listener_addr("web");
    let mut ok = connect(addr);
    let ok_addr = ok.local_addr().unwrap();
    assert_echo(&mut ok, b"served");
    ok.shutdown(Shutdown::Write).unwrap();
    read_to_eof(&mut ok);
    let denied_addr = denied_client(Ipv4Addr::new(127, 0, 0, 2), addr);
    [ok_addr, denied_addr]
}

#[test]
fn access_log_false_logs_nothing_and_reload_turns_it_on_and_off() {
    let backend = EchoBackend::start();
    let off = yaml(
        "access_log: false\n",
        "allow: [127.0.0.1/32]",
        &[backend.addr()],
    );
    let on = yaml(
        "access_log: true\n",
        "allow: [127.0.0.1/32]",
        &[backend.addr()],
    );
    let mut lb = Ringlb::start(bin(), &off);
    let mark = lb.log_mark();
    finished_and_denied(&lb);
    // A line would come within milliseconds (see the `on` phase below); wait well past that.
    assert!(
        !lb.wait_for_log_after(mark, TARGET, NO_LINE_WAIT),
        "access_log: false must log nothing: {:?}",
        lb.logs()
    );

    let mark = lb.reload(&on);
    assert!(lb.wait_for_log_after(mark, "reload applied", WAIT));
    let [served, denied] = finished_and_denied(&lb);
    expect(
        &access_for(&lb, served),
        &backend.addr().to_string(),
        Some(6),
        Some(6),
        "client_close",
    );
    expect(
        &access_for(&lb, denied),
        "-",
        Some(0),
        Some(0),
        "denied_not_allowed",
    );

    let mark = lb.reload(&off);
    assert!(lb.wait_for_log_after(mark, "reload applied", WAIT));
    let mark = lb.log_mark();
    finished_and_denied(&lb);
    assert!(
        !lb.wait_for_log_after(mark, TARGET, NO_LINE_WAIT),
        "access log must be off again after the reload: {:?}",
        lb.logs()
    );
}

#[test]
fn rust_log_filter_removes_only_the_access_log() {
    let backend = EchoBackend::start();
    let lb = Ringlb::builder(bin(), &yaml("access_log: true\n", "", &[backend.addr()]))
        .env("RUST_LOG", "info,ringlb::access=off")
        .start();
    let mark = lb.log_mark();
    for _ in 0..3 {
        let mut c = connect(lb.listener_addr("web"));
        assert_echo(&mut c, b"filtered");
    }
    assert!(backend.wait_ends(3, WAIT));
    // Other info lines still come through …
    assert!(lb.count_log("ready") >= 1, "{:?}", lb.logs());
    // … the access log does not.
    assert!(
        !lb.wait_for_log_after(mark, TARGET, NO_LINE_WAIT),
        "{:?}",
        lb.logs()
    );
}

#[test]
fn one_line_per_connection_under_concurrency() {
    let backend = EchoBackend::start();
    let lb = Ringlb::builder(bin(), &yaml("", "", &[backend.addr()]))
        .echo(false)
        .start();
    let addr = lb.listener_addr("web");
    let clients: Vec<SocketAddr> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| {
                s.spawn(move || {
                    (0..50)
                        .map(|i| {
                            let mut c = connect(addr);
                            let me = c.local_addr().unwrap();
                            let msg = format!("message {i}");
                            assert_echo(&mut c, msg.as_bytes());
                            c.shutdown(Shutdown::Write).unwrap();
                            read_to_eof(&mut c);
                            me
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    assert!(
        wait_until(WAIT, || access_lines(&lb).len() >= clients.len()),
        "{} access lines for {} connections",
        access_lines(&lb).len(),
        clients.len()
    );
    let lines = access_lines(&lb);
    assert_eq!(lines.len(), clients.len(), "one line per connection");
    let mut logged: Vec<String> = lines.iter().map(|a| a.get("client").to_string()).collect();
    let mut want: Vec<String> = clients.iter().map(|c| c.to_string()).collect();
    logged.sort();
    want.sort();
    assert_eq!(logged, want);
    for a in &lines {
        assert_eq!(a.get("end"), "client_close", "{a:?}");
        assert_eq!(a.num("bytes_in"), a.num("bytes_out"), "{a:?}");
    }
}

fn udp_yaml(top: &str, extra: &str, backend: SocketAddr) -> String {
    one_listener_yaml(
        top,
        "web",
        "127.0.0.1:0",
        &format!("protocol: udp\n{extra}"),
        &[backend],
    )
}

/// A UDP session logs one line when it expires, in the TCP shape, with payload bytes.
#[test]
fn udp_session_expired() {
    let backend = UdpEchoBackend::start();
    let lb = Ringlb::start(
        bin(),
        &udp_yaml("", "session_timeout: 300ms", backend.addr()),
    );
    let addr = lb.listener_addr("web");
    let c = udp_client();
    let client = c.local_addr().unwrap();
    for payload in [&b"ping"[..], b"second"] {
        assert_eq!(udp_roundtrip(&c, addr, payload).expect("udp echo"), payload);
    }
    let a = access_for(&lb, client);
    expect(
        &a,
        &backend.addr().to_string(),
        Some(10),
        Some(10),
        "expired",
    );
    assert!(a.num("duration_ms") >= 300, "{a:?}");
}

/// A UDP session still busy when `shutdown_timeout` expires is logged with `end=drain_cut`.
#[test]
fn udp_session_cut_at_shutdown() {
    let backend = UdpEchoBackend::start();
    let mut lb = Ringlb::start(
        bin(),
        &udp_yaml(
            "shutdown_timeout: 500ms\n",
            "session_timeout: 30s",
            backend.addr(),
        ),
    );
    let addr = lb.listener_addr("web");
    let c = udp_client();
    let client = c.local_addr().unwrap();
    assert_eq!(udp_roundtrip(&c, addr, b"start").unwrap(), b"start");
    lb.signal(Signal::Term);
    // Keep the session busy through the drain, so it never goes quiet.
    let deadline = std::time::Instant::now() + WAIT;
    let status = loop {
        let _ = c.send_to(b"busy", addr);
        if let Some(s) = lb.wait_exit(Duration::from_millis(50)) {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "ringlb still running {WAIT:?} after SIGTERM"
        );
    };
    assert_eq!(exit_code(status), 0);
    let a = access_for(&lb, client);
    expect(&a, &backend.addr().to_string(), None, None, "drain_cut");
    assert!(a.num("bytes_in") >= 5 + 4, "{a:?}");
}
