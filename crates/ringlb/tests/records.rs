//! Connection records through a running `ringlb` (`connection_records: all`): a
//! long-lived connection leaves an `established` record, a `progress` record every
//! `connection_report_interval` and an `end` record, all with one id; that id reaches a
//! PROXY v2 backend in its TLV; records go to a syslog receiver over UDP and TCP as
//! RFC 5424 messages (a reload turns records on and moves syslog to a new receiver); and
//! a TCP syslog receiver that never reads costs the data plane nothing while the
//! messages it does not take are dropped and counted.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use ringlb_testkit::*;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_ringlb"))
}

/// Generous: the box running the tests is shared and loaded.
const WAIT: Duration = Duration::from_secs(60);

/// The `key=value` tokens of an access-log line's message, if it is a connection record.
fn record(line: &str) -> Option<HashMap<String, String>> {
    let (_, msg) = line.split_once(" ringlb::access] ")?;
    let fields: HashMap<String, String> = msg
        .split_whitespace()
        .filter_map(|t| t.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    fields.contains_key("event").then_some(fields)
}

/// Every record of the connection from `client`, in log order.
fn records_of(lb: &Ringlb, client: SocketAddr) -> Vec<HashMap<String, String>> {
    lb.logs()
        .iter()
        .filter_map(|l| record(l))
        .filter(|r| r.get("client").map(String::as_str) == Some(&client.to_string()))
        .collect()
}

fn count(records: &[HashMap<String, String>], event: &str) -> usize {
    records.iter().filter(|r| r["event"] == event).count()
}

fn number(r: &HashMap<String, String>, key: &str) -> u64 {
    r.get(key)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no number {key} in {r:?}"))
}

fn echo(client: &mut TcpStream, payload: &[u8]) {
    client.write_all(payload).unwrap();
    let mut back = vec![0u8; payload.len()];
    client.read_exact(&mut back).expect("echo");
    assert_eq!(back, payload);
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, IO_TIMEOUT).expect("connect to ringlb");
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    s
}

/// Half-closes, reads the backend's end, and returns once the end record is written.
fn finish(lb: &Ringlb, mut client: TcpStream) -> SocketAddr {
    let local = client.local_addr().unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    client.read_to_end(&mut rest).unwrap();
    assert!(
        wait_until(WAIT, || count(&records_of(lb, local), "end") == 1),
        "no end record for {local}:\n{}",
        lb.logs().join("\n")
    );
    local
}

#[test]
fn a_long_connection_has_one_id_on_its_established_progress_and_end_records() {
    let backend = EchoBackend::start();
    let yaml = one_listener_yaml(
        "connection_records: all\n",
        "web",
        "127.0.0.1:0",
        "connection_report_interval: 2s",
        &[backend.addr()],
    );
    let lb = Ringlb::start(bin(), &yaml);
    let started = Instant::now();
    let mut client = connect(lb.listener_addr("web"));
    let local = client.local_addr().unwrap();
    // One exchange per progress record: each shows more bytes than the one before.
    let mut sent = 0u64;
    for k in 1..=4 {
        echo(&mut client, b"0123456789");
        sent += 10;
        assert!(
            wait_until(WAIT, || count(&records_of(&lb, local), "progress") >= k),
            "progress record {k} never came:\n{}",
            lb.logs().join("\n")
        );
    }
    // About 10 s in all: the fifth report is due at 10 s, a loaded box may be late.
    wait_until(WAIT, || started.elapsed() >= Duration::from_secs(10));
    let lived = started.elapsed();
    finish(&lb, client);

    let records = records_of(&lb, local);
    let events: Vec<&str> = records.iter().map(|r| r["event"].as_str()).collect();
    let progress: Vec<&HashMap<String, String>> = records
        .iter()
        .filter(|r| r["event"] == "progress")
        .collect();
    assert_eq!(events.first(), Some(&"established"), "{events:?}");
    assert_eq!(events.last(), Some(&"end"), "{events:?}");
    assert_eq!(
        (count(&records, "established"), count(&records, "end")),
        (1, 1)
    );
    assert!(
        (4..=5).contains(&progress.len()),
        "{} progress records over {lived:?}: {events:?}",
        progress.len()
    );
    let id = &records[0]["id"];
    assert_eq!(id.len(), 16, "16 hex digits: {id}");
    assert!(u64::from_str_radix(id, 16).is_ok(), "{id}");
    assert!(
        records.iter().all(|r| &r["id"] == id),
        "one id: {records:?}"
    );

    let established = &records[0];
    assert_eq!(established["listener"], "web");
    assert_eq!(established["backend"], backend.addr().to_string());
    assert_eq!(established["local"], lb.listener_addr("web").to_string());
    assert_eq!(number(established, "attempts"), 1);
    assert!(number(established, "connect_us") > 0);

    // Every 2 s from the start, each later than the last, bytes growing.
    let mut last = (0, 0);
    for (k, p) in progress.iter().enumerate() {
        let age = number(p, "duration_ms");
        assert!(
            age >= 2000 * (k as u64 + 1) - 50,
            "report {k} at {age} ms: {p:?}"
        );
        let bytes = (number(p, "bytes_in"), number(p, "bytes_out"));
        assert!(bytes >= last && bytes.0 == bytes.1, "{p:?}");
        assert!(p.contains_key("idle_ms"), "{p:?}");
        last = bytes;
    }
    assert_eq!(number(progress[0], "bytes_in"), 10, "{:?}", progress[0]);

    let end = records.last().unwrap();
    assert_eq!(
        (number(end, "bytes_in"), number(end, "bytes_out")),
        (sent, sent)
    );
    assert_eq!(end["end"], "client_close");
    assert_eq!(
        (
            end["closed_by"].as_str(),
            end["cause"].as_str(),
            end["timer"].as_str()
        ),
        ("client", "fin", "-")
    );
    assert!(number(end, "duration_ms") >= 10_000, "{end:?}");
}

#[test]
fn the_default_end_line_is_unchanged_and_has_no_id() {
    let backend = EchoBackend::start();
    let yaml = one_listener_yaml("", "web", "127.0.0.1:0", "", &[backend.addr()]);
    let lb = Ringlb::start(bin(), &yaml);
    let mut client = connect(lb.listener_addr("web"));
    let local = client.local_addr().unwrap();
    echo(&mut client, b"hi");
    client.shutdown(Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    client.read_to_end(&mut rest).unwrap();
    let needle = format!("client={local} ");
    assert!(lb.wait_for_log(&needle, WAIT), "{}", lb.logs().join("\n"));
    let line = lb.logs().into_iter().find(|l| l.contains(&needle)).unwrap();
    let msg = line.split_once(" ringlb::access] ").unwrap().1;
    assert!(msg.starts_with("listener=web client="), "{msg}");
    assert!(msg.ends_with(" end=client_close"), "{msg}");
    assert!(!msg.contains("id=") && !msg.contains("event="), "{msg}");
}

#[test]
fn json_records_carry_their_fields_as_members() {
    let backend = EchoBackend::start();
    let yaml = one_listener_yaml(
        "connection_records: all\nlog_format: json\n",
        "web",
        "127.0.0.1:0",
        "",
        &[backend.addr()],
    );
    // The kit reads text start-up lines: find the JSON one that names the address.
    let lb = Ringlb::builder(bin(), &yaml).spawn();
    assert!(
        lb.wait_for_log("listening on", WAIT),
        "{}",
        lb.logs().join("\n")
    );
    let addr = lb
        .logs()
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find_map(|v| parse_listener_line(v["msg"].as_str()?).map(|(_, a)| a))
        .unwrap_or_else(|| panic!("no listening line: {}", lb.logs().join("\n")));
    let mut client = connect(addr);
    let local = client.local_addr().unwrap();
    echo(&mut client, b"json");
    client.shutdown(Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    client.read_to_end(&mut rest).unwrap();
    let needle = "\"event\":\"end\"";
    assert!(lb.wait_for_log(needle, WAIT), "{}", lb.logs().join("\n"));
    let records: Vec<serde_json::Value> = lb
        .logs()
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"] == "ringlb::access" && v["client"] == local.to_string())
        .collect();
    assert_eq!(records.len(), 2, "{records:?}");
    let (established, end) = (&records[0], &records[1]);
    assert_eq!(established["event"], "established");
    assert!(established["id"].is_string() && established["connect_us"].is_u64());
    assert_eq!(established["attempts"], 1);
    assert_eq!(established["local"], addr.to_string());
    assert_eq!(end["event"], "end");
    assert_eq!(end["id"], established["id"]);
    assert_eq!(
        (end["bytes_in"].as_u64(), end["bytes_out"].as_u64()),
        (Some(4), Some(4))
    );
    assert_eq!(
        (&end["end"], &end["closed_by"], &end["cause"], &end["timer"]),
        (
            &serde_json::json!("client_close"),
            &serde_json::json!("client"),
            &serde_json::json!("fin"),
            &serde_json::json!("-")
        )
    );
    assert!(
        end["msg"].as_str().unwrap().starts_with("event=end id="),
        "the message is the text record: {end}"
    );
}

/// A backend that reads a PROXY v2 header, keeps the connection id of its 0xE0 TLV (as
/// 16 hex digits), then echoes.
struct TlvBackend {
    addr: SocketAddr,
    ids: Arc<Mutex<Vec<Result<String, String>>>>,
}

impl TlvBackend {
    fn start() -> TlvBackend {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let ids = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&ids);
        thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                let seen = Arc::clone(&seen);
                thread::spawn(move || {
                    conn.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
                    let id = read_id(&mut conn);
                    let ok = id.is_ok();
                    seen.lock().unwrap().push(id);
                    if ok {
                        let mut buf = [0u8; 4096];
                        while let Ok(n) = conn.read(&mut buf) {
                            if n == 0 || conn.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                    }
                });
            }
        });
        TlvBackend { addr, ids }
    }

    fn ids(&self) -> Vec<Result<String, String>> {
        self.ids.lock().unwrap().clone()
    }
}

/// The id in the 0xE0 TLV of the v2 header at the start of `conn`.
fn read_id(conn: &mut TcpStream) -> Result<String, String> {
    let mut fixed = [0u8; 16];
    conn.read_exact(&mut fixed).map_err(|e| e.to_string())?;
    if fixed[..12] != PROXY_V2_SIGNATURE || fixed[12] != 0x21 {
        return Err(format!("not a v2 PROXY header: {fixed:02x?}"));
    }
    let len = usize::from(u16::from_be_bytes([fixed[14], fixed[15]]));
    let mut rest = vec![0u8; len];
    conn.read_exact(&mut rest).map_err(|e| e.to_string())?;
    let addresses = match fixed[13] >> 4 {
        1 => 12,
        2 => 36,
        f => return Err(format!("family {f}")),
    };
    let mut tlvs = rest.get(addresses..).ok_or("short address block")?;
    while tlvs.len() >= 3 {
        let (kind, n) = (tlvs[0], usize::from(u16::from_be_bytes([tlvs[1], tlvs[2]])));
        let value = tlvs.get(3..3 + n).ok_or("TLV longer than the header")?;
        if kind == 0xE0 {
            let id: [u8; 8] = value.try_into().map_err(|_| format!("id of {n} bytes"))?;
            return Ok(format!("{:016x}", u64::from_be_bytes(id)));
        }
        tlvs = &tlvs[3 + n..];
    }
    Err(format!("no 0xE0 TLV in {rest:02x?}"))
}

#[test]
fn the_connection_id_reaches_a_proxy_v2_backend() {
    let backend = TlvBackend::start();
    let yaml = one_listener_yaml(
        "connection_records: all\n",
        "pp",
        "127.0.0.1:0",
        "proxy_protocol: v2",
        &[backend.addr],
    );
    let lb = Ringlb::start(bin(), &yaml);
    let mut locals = Vec::new();
    for _ in 0..3 {
        let mut client = connect(lb.listener_addr("pp"));
        echo(&mut client, b"after the header");
        locals.push(finish(&lb, client));
    }
    let ids: Vec<String> = backend
        .ids()
        .into_iter()
        .map(|r| r.unwrap_or_else(|e| panic!("backend: {e}")))
        .collect();
    assert_eq!(ids.len(), 3);
    for (local, id) in locals.iter().zip(&ids) {
        let records = records_of(&lb, *local);
        assert_eq!(records.len(), 2, "established and end: {records:?}");
        assert!(
            records.iter().all(|r| &r["id"] == id),
            "{id} vs {records:?}"
        );
    }
    let distinct: std::collections::HashSet<&String> = ids.iter().collect();
    assert_eq!(distinct.len(), 3, "{ids:?}");
}

/// An RFC 5424 message, split: (PRI, VERSION, TIMESTAMP, HOSTNAME, APP-NAME, PROCID,
/// MSGID, STRUCTURED-DATA, MSG).
fn rfc5424(frame: &str) -> [String; 9] {
    let (pri, rest) = frame
        .strip_prefix('<')
        .and_then(|f| f.split_once('>'))
        .unwrap_or_else(|| panic!("no PRI: {frame:?}"));
    let mut parts = rest.splitn(8, ' ');
    let mut next = || {
        parts
            .next()
            .unwrap_or_else(|| panic!("short: {frame:?}"))
            .to_string()
    };
    [
        pri.to_string(),
        next(),
        next(),
        next(),
        next(),
        next(),
        next(),
        next(),
        next(),
    ]
}

/// Checks one syslog message of ringlb `pid`: an `end` record of `client`, app `app`.
fn is_end_record_of(frame: &str, pid: u32, client: SocketAddr, app: &str) -> bool {
    let [pri, version, ts, host, app_name, procid, msgid, sd, msg] = rfc5424(frame);
    if msgid != "access"
        || !msg.starts_with("event=end id=")
        || !msg.contains(&format!("client={client} "))
    {
        return false;
    }
    assert_eq!(pri, (16 * 8 + 6).to_string(), "local0.info: {frame:?}");
    assert_eq!(version, "1");
    assert!(ts.ends_with('Z') && ts.len() == 27, "{ts}");
    assert!(!host.is_empty() && host != "-", "{frame:?}");
    assert_eq!((app_name.as_str(), procid), (app, pid.to_string()));
    assert_eq!(sd, "-");
    true
}

fn syslog_yaml(address: &str, backend: SocketAddr) -> String {
    one_listener_yaml(
        &format!(
            "admin: 127.0.0.1:0\nconnection_records: all\n\
             syslog: {{address: \"{address}\", app_name: ringlb-test, queue_size: 64}}\n"
        ),
        "web",
        "127.0.0.1:0",
        "",
        &[backend],
    )
}

#[test]
fn records_reach_a_udp_syslog_receiver() {
    let backend = EchoBackend::start();
    let receiver = UdpSocket::bind("127.0.0.1:0").unwrap();
    receiver.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let address = format!("udp://{}", receiver.local_addr().unwrap());
    let lb = Ringlb::start(bin(), &syslog_yaml(&address, backend.addr()));
    let mut client = connect(lb.listener_addr("web"));
    echo(&mut client, b"x");
    let local = finish(&lb, client);
    let deadline = Instant::now() + WAIT;
    let mut buf = vec![0u8; 65536];
    loop {
        assert!(Instant::now() < deadline, "no end record over UDP");
        let n = receiver.recv(&mut buf).expect("a syslog datagram");
        let frame = std::str::from_utf8(&buf[..n]).unwrap();
        if is_end_record_of(frame, lb.pid(), local, "ringlb-test") {
            break;
        }
    }
    assert_eq!(lb.metric("ringlb_syslog_dropped_total"), Some(0.0));
}

/// Reads one octet-counted frame (RFC 6587): `LEN SP MSG`.
fn read_frame(s: &mut TcpStream) -> String {
    let mut len = Vec::new();
    let mut b = [0u8; 1];
    loop {
        s.read_exact(&mut b).expect("a frame length");
        if b[0] == b' ' {
            break;
        }
        assert!(
            b[0].is_ascii_digit() && len.len() < 10,
            "bad length {len:?}"
        );
        len.push(b[0]);
    }
    let n: usize = std::str::from_utf8(&len).unwrap().parse().unwrap();
    let mut msg = vec![0u8; n];
    s.read_exact(&mut msg).expect("the frame");
    String::from_utf8(msg).unwrap()
}

#[test]
fn records_reach_a_tcp_syslog_receiver_in_octet_counted_frames() {
    let backend = EchoBackend::start();
    let receiver = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = format!("tcp://{}", receiver.local_addr().unwrap());
    let lb = Ringlb::start(bin(), &syslog_yaml(&address, backend.addr()));
    let (mut stream, _) = receiver.accept().unwrap();
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let mut client = connect(lb.listener_addr("web"));
    echo(&mut client, b"x");
    let local = finish(&lb, client);
    let deadline = Instant::now() + WAIT;
    let mut frames = 0;
    loop {
        assert!(Instant::now() < deadline, "no end record over TCP");
        let frame = read_frame(&mut stream);
        frames += 1;
        if is_end_record_of(&frame, lb.pid(), local, "ringlb-test") {
            break;
        }
    }
    assert!(frames >= 2, "the start-up lines came first: {frames}");
}

/// Shrinks a listening socket's receive buffer (accepted sockets inherit it), so a
/// receiver that never reads is full after a few kilobytes.
fn small_receive_buffer(listener: &TcpListener) {
    let size: libc::c_int = 4096;
    // SAFETY: a valid socket descriptor we own, and a pointer to a c_int with its size.
    let rc = unsafe {
        libc::setsockopt(
            listener.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            std::ptr::addr_of!(size).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_RCVBUF: {}", std::io::Error::last_os_error());
}

#[test]
fn a_stalled_tcp_syslog_receiver_costs_the_data_plane_nothing_and_counts_drops() {
    let backend = EchoBackend::start();
    let receiver = TcpListener::bind("127.0.0.1:0").unwrap();
    small_receive_buffer(&receiver);
    let address = format!("tcp://{}", receiver.local_addr().unwrap());
    let lb = Ringlb::start(bin(), &syslog_yaml(&address, backend.addr()));
    // Accepted and never read.
    let (_stalled, _) = receiver.accept().unwrap();
    let addr = lb.listener_addr("web");
    let dropped = || lb.metric("ringlb_syslog_dropped_total").unwrap_or(0.0);
    let round_trips = |what: &str| {
        let mut slowest = Duration::ZERO;
        for _ in 0..200 {
            let t = Instant::now();
            let mut c = connect(addr);
            echo(&mut c, what.as_bytes());
            slowest = slowest.max(t.elapsed());
        }
        slowest
    };
    // For comparison: while the receiver's buffers still take what is sent.
    let before_stall = round_trips("before the receiver is full");

    // Connections (three records each) until the receiver's buffers and the queue are
    // full and messages are dropped.
    let mut served = 0u32;
    while dropped() == 0.0 {
        assert!(
            served < 20_000,
            "nothing dropped after {served} connections"
        );
        for _ in 0..50 {
            let mut c = connect(addr);
            echo(&mut c, b"fill");
            served += 1;
        }
    }
    let before = dropped();

    // Stalled: 200 round trips, each on its own connection, all served.
    let slowest = round_trips("while the receiver is stalled");
    assert!(
        wait_until(WAIT, || dropped() > before),
        "the drop counter did not rise"
    );
    eprintln!(
        "stalled syslog receiver: {served} connections to fill it, then 200 round trips \
         all served, slowest {slowest:?} (slowest of 200 before: {before_stall:?}); \
         {} messages dropped",
        dropped()
    );
    assert!(slowest < IO_TIMEOUT, "{slowest:?}");
}

#[test]
fn a_reload_moves_syslog_to_a_new_receiver_and_turns_records_on() {
    let backend = EchoBackend::start();
    let plain = one_listener_yaml("", "web", "127.0.0.1:0", "", &[backend.addr()]);
    let mut lb = Ringlb::start(bin(), &plain);
    let addr = lb.listener_addr("web");
    let receiver = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = format!("tcp://{}", receiver.local_addr().unwrap());
    // The same listener (name, bind) with records and a syslog receiver.
    let with_records = one_listener_yaml(
        &format!("connection_records: all\nsyslog: {{address: \"{address}\"}}\n"),
        "web",
        "127.0.0.1:0",
        "",
        &[backend.addr()],
    );
    let mark = lb.reload(&with_records);
    assert!(
        lb.wait_for_log_after(mark, "reload applied", WAIT),
        "{}",
        lb.logs().join("\n")
    );
    let (mut stream, _) = receiver.accept().unwrap();
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    // The reload's own summary already goes to the new receiver.
    let deadline = Instant::now() + WAIT;
    while !read_frame(&mut stream).contains("reload applied") {
        assert!(Instant::now() < deadline, "no reload summary over TCP");
    }
    assert_eq!(lb.listener_addr("web"), addr, "the listener was kept");

    let mut client = connect(addr);
    echo(&mut client, b"after the reload");
    let local = finish(&lb, client);
    let deadline = Instant::now() + WAIT;
    loop {
        assert!(Instant::now() < deadline, "no end record over TCP");
        if is_end_record_of(&read_frame(&mut stream), lb.pid(), local, "ringlb") {
            break;
        }
    }
}
