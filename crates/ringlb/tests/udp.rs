//! UDP end to end through a running `ringlb` process, on 127.0.0.0/8 ephemeral ports:
//! session affinity, replies from the listener's address, spread, expiry, the
//! `max_sessions` bound under a flood, failover (health check and ICMP unreachable),
//! datagram sizes, PROXY v2, the allow-list and a quick drain.

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use ringlb_testkit::*;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_ringlb"))
}

/// One UDP listener named "u" on `bind`; `extra` is listener keys, one per line.
fn yaml_on(bind: &str, backends: &[SocketAddr], extra: &str) -> String {
    let keys = format!("protocol: udp\n{extra}");
    one_listener_yaml("workers: 2\naccess_log: true\n", "u", bind, &keys, backends)
}

fn yaml(backends: &[SocketAddr], extra: &str) -> String {
    yaml_on("127.0.0.1:0", backends, extra)
}

fn client_with_timeout(timeout: Duration) -> UdpSocket {
    let s = udp_client();
    s.set_read_timeout(Some(timeout)).unwrap();
    s
}

/// Round trip through a tagged backend: (tag, echoed payload).
fn tagged_roundtrip(
    sock: &UdpSocket,
    to: SocketAddr,
    payload: &[u8],
) -> io::Result<(String, Vec<u8>)> {
    udp_roundtrip(sock, to, payload).map(|r| split_tag(&r))
}

/// Sends until a reply comes (at most `tries`, `timeout` each): for the datagrams a dead
/// backend swallows before ringlb learns it is dead.
fn roundtrip_retrying(
    sock: &UdpSocket,
    to: SocketAddr,
    payload: &[u8],
    tries: usize,
) -> Option<(String, Vec<u8>, usize)> {
    for attempt in 1..=tries {
        match tagged_roundtrip(sock, to, payload) {
            Ok((tag, body)) => return Some((tag, body, attempt)),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("roundtrip to {to}: {e}"),
        }
    }
    None
}

fn access_lines_for(lb: &Ringlb, client: SocketAddr, end: &str) -> usize {
    lb.logs()
        .iter()
        .filter(|l| {
            l.contains("ringlb::access")
                && l.contains(&format!("client={client} "))
                && l.contains(&format!("end={end}"))
        })
        .count()
}

/// [`access_lines_for`] once at least one such line is there: the log writer thread
/// writes a line shortly after the event, not before the next datagram is relayed.
fn access_lines_written(lb: &Ringlb, client: SocketAddr, end: &str) -> usize {
    wait_until(Duration::from_secs(5), || {
        access_lines_for(lb, client, end) > 0
    });
    access_lines_for(lb, client, end)
}

#[test]
fn sessions_stick_to_one_backend_and_spread_round_robin() {
    let backends: Vec<UdpEchoBackend> = ["b1", "b2", "b3"]
        .iter()
        .map(|t| UdpEchoBackend::tagged(t))
        .collect();
    let addrs: Vec<SocketAddr> = backends.iter().map(|b| b.addr()).collect();
    let lb = Ringlb::start(bin(), &yaml(&addrs, "algorithm: round_robin"));
    let addr = lb.listener_addr("u");
    let clients: Vec<UdpSocket> = (0..30).map(|_| udp_client()).collect();
    let mut tag_of: Vec<Option<String>> = vec![None; clients.len()];
    // Interleaved: every client's session stays put while 29 others are active.
    for round in 0..20 {
        for (i, c) in clients.iter().enumerate() {
            let payload = format!("client {i} datagram {round}");
            // udp_roundtrip fails if the reply comes from anywhere but the listener's address.
            let (tag, body) = tagged_roundtrip(c, addr, payload.as_bytes())
                .unwrap_or_else(|e| panic!("client {i} round {round}: {e}"));
            assert_eq!(body, payload.as_bytes(), "client {i}: payload changed");
            match &tag_of[i] {
                None => tag_of[i] = Some(tag),
                Some(first) => assert_eq!(
                    &tag, first,
                    "client {i} moved between backends in round {round}"
                ),
            }
        }
    }
    let mut per_backend: HashMap<String, usize> = HashMap::new();
    for t in tag_of.iter().flatten() {
        *per_backend.entry(t.clone()).or_default() += 1;
    }
    // Sessions are created one after another and the cursor is shared by the workers.
    for b in &backends {
        let tag = b.tag().unwrap();
        assert_eq!(
            per_backend.get(tag),
            Some(&10),
            "round robin over 30 sessions: {per_backend:?}"
        );
        // One connected upstream socket per session: 10 distinct sources, 200 datagrams.
        assert_eq!(b.distinct_sources().len(), 10, "{tag}: upstream sockets");
        assert_eq!(b.received(), 200, "{tag}: datagrams");
    }
}

#[test]
fn idle_session_expires_active_one_does_not() {
    let b1 = UdpEchoBackend::tagged("b1");
    let b2 = UdpEchoBackend::tagged("b2");
    let lb = Ringlb::start(
        bin(),
        &yaml(
            &[b1.addr(), b2.addr()],
            "algorithm: round_robin\nsession_timeout: 1s",
        ),
    );
    let addr = lb.listener_addr("u");
    let idle = udp_client();
    let busy = udp_client();
    let (idle_tag, _) = tagged_roundtrip(&idle, addr, b"first").unwrap();
    let (busy_tag, _) = tagged_roundtrip(&busy, addr, b"first").unwrap();
    assert_ne!(
        idle_tag, busy_tag,
        "round robin: two sessions, two backends"
    );

    // The busy client talks every 250 ms for 2.5 s: more than twice its timeout.
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(2500) {
        thread::sleep(Duration::from_millis(250));
        let (tag, _) = tagged_roundtrip(&busy, addr, b"keepalive").unwrap();
        assert_eq!(tag, busy_tag, "an active session must keep its backend");
    }
    let idle_addr = idle.local_addr().unwrap();
    let busy_addr = busy.local_addr().unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || access_lines_for(
            &lb, idle_addr, "expired"
        ) == 1),
        "the idle session must expire after session_timeout"
    );
    assert_eq!(
        access_lines_for(&lb, busy_addr, "expired"),
        0,
        "the active session expired"
    );
    // Expiry comes after at least the timeout and at most timeout + 2 sweeps (1.5 s).
    let line = lb
        .logs()
        .into_iter()
        .find(|l| l.contains(&format!("client={idle_addr} ")) && l.contains("end=expired"))
        .unwrap();
    let ms: u64 = line
        .split("duration_ms=")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (1000..=2500).contains(&ms),
        "expired after {ms} ms of a 1 s timeout: {line}"
    );

    // The next datagram opens a new session: a new upstream socket, and round robin has
    // moved on to the other backend.
    let hits_before: usize = [&b1, &b2].iter().map(|b| b.distinct_sources().len()).sum();
    let (tag, _) = tagged_roundtrip(&idle, addr, b"again").unwrap();
    let hits_after: usize = [&b1, &b2].iter().map(|b| b.distinct_sources().len()).sum();
    assert_eq!(
        hits_after,
        hits_before + 1,
        "a new session opens a new upstream socket"
    );
    assert!(!tag.is_empty());
}

/// Binds a UDP socket on 127.0.0.1 at the next free port from `*next`.
fn bind_next(next: &mut u16) -> UdpSocket {
    loop {
        let port = *next;
        *next = next.checked_add(1).expect("ran out of ports");
        if let Ok(s) = UdpSocket::bind(("127.0.0.1", port)) {
            return s;
        }
    }
}

#[test]
fn max_sessions_holds_under_a_flood_of_source_ports() {
    const MAX: usize = 50;
    const ESTABLISHED: usize = 10;
    const FLOOD: usize = 10_000;
    let backends: Vec<UdpEchoBackend> = ["b1", "b2"]
        .iter()
        .map(|t| UdpEchoBackend::tagged(t))
        .collect();
    let addrs: Vec<SocketAddr> = backends.iter().map(|b| b.addr()).collect();
    let lb = Ringlb::builder(
        bin(),
        &yaml(
            &addrs,
            &format!("max_sessions: {MAX}\nsession_timeout: 60s"),
        ),
    )
    // 10,000 access lines would drown the test output.
    .echo(false)
    .start();
    let addr = lb.listener_addr("u");
    let established: Vec<UdpSocket> = (0..ESTABLISHED)
        .map(|_| client_with_timeout(Duration::from_secs(3)))
        .collect();
    let tags: Vec<String> = established
        .iter()
        .map(|c| tagged_roundtrip(c, addr, b"hello").unwrap().0)
        .collect();

    let flooding = Arc::new(AtomicBool::new(true));
    let flood = {
        let flooding = Arc::clone(&flooding);
        thread::spawn(move || {
            // Distinct source ports below the ephemeral range, each used once. Paced in
            // batches so the test measures ringlb's admission, not the kernel's queue.
            let mut next = 20_000u16;
            for i in 0..FLOOD {
                let s = bind_next(&mut next);
                s.send_to(format!("flood {i}").as_bytes(), addr).unwrap();
                if i % 200 == 199 {
                    thread::sleep(Duration::from_millis(20));
                }
            }
            flooding.store(false, Ordering::SeqCst);
        })
    };
    let mut rounds = 0;
    let mut lost = 0;
    while flooding.load(Ordering::SeqCst) || rounds < 5 {
        for (i, c) in established.iter().enumerate() {
            match tagged_roundtrip(c, addr, format!("round {rounds}").as_bytes()) {
                Ok((tag, _)) => assert_eq!(tag, tags[i], "established client {i} lost its backend"),
                Err(e) => {
                    eprintln!("established client {i} round {rounds}: {e}");
                    lost += 1;
                }
            }
        }
        rounds += 1;
    }
    flood.join().unwrap();
    assert_eq!(
        lost, 0,
        "established clients lost datagrams during the flood ({rounds} rounds)"
    );
    assert!(rounds >= 5);

    // Exactly MAX sessions were ever opened (one upstream socket each), never more.
    let sessions = || {
        backends
            .iter()
            .map(|b| b.distinct_sources().len())
            .sum::<usize>()
    };
    assert!(
        wait_until(Duration::from_secs(5), || sessions() == MAX),
        "sessions at the backends: {} (max_sessions {MAX})",
        sessions()
    );
    for c in &established {
        tagged_roundtrip(c, addr, b"after").unwrap();
    }
    assert_eq!(sessions(), MAX, "the table grew past max_sessions");
    assert!(
        lb.count_log("session table full (max_sessions=50)") >= 1,
        "refusals must be logged"
    );
}

/// A TCP port that accepts (for the prober's connect checks) until dropped.
struct HealthPort {
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl HealthPort {
    fn bind(addr: SocketAddr) -> io::Result<HealthPort> {
        let listener = TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let st = Arc::clone(&stop);
        let thread = thread::spawn(move || {
            while !st.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((conn, _)) => drop(conn),
                    Err(_) => thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Ok(HealthPort {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for HealthPort {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A tagged UDP echo backend with a TCP health port on the same port number.
fn checked_backend(tag: &str) -> (UdpEchoBackend, HealthPort) {
    for _ in 0..50 {
        let b = UdpEchoBackend::tagged(tag);
        if let Ok(h) = HealthPort::bind(b.addr()) {
            return (b, h);
        }
    }
    panic!("no port free for both udp and tcp");
}

#[test]
fn sessions_move_when_their_backend_goes_down() {
    let (b1, h1) = checked_backend("b1");
    let (b2, h2) = checked_backend("b2");
    let lb = Ringlb::start(
        bin(),
        &yaml(
            &[b1.addr(), b2.addr()],
            "algorithm: round_robin\nhealth_check:\n  interval: 100ms\n  timeout: 100ms\n  rise: 1\n  fall: 1",
        ),
    );
    let addr = lb.listener_addr("u");
    let clients: Vec<UdpSocket> = (0..6).map(|_| udp_client()).collect();
    let first: Vec<String> = clients
        .iter()
        .map(|c| tagged_roundtrip(c, addr, b"one").unwrap().0)
        .collect();
    let on_b1: Vec<usize> = (0..clients.len()).filter(|&i| first[i] == "b1").collect();
    assert_eq!(on_b1.len(), 3, "round robin: {first:?}");

    drop(h1);
    drop(b1);
    assert!(
        lb.wait_for_log("backend down: listener=u", Duration::from_secs(10)),
        "the prober must mark b1 down"
    );
    // The first datagram after the flip already goes to b2: no loss, same client address.
    for (i, c) in clients.iter().enumerate() {
        let (tag, body) =
            tagged_roundtrip(c, addr, b"two").unwrap_or_else(|e| panic!("client {i}: {e}"));
        assert_eq!(tag, "b2", "client {i}");
        assert_eq!(body, b"two");
    }
    for &i in &on_b1 {
        let client = clients[i].local_addr().unwrap();
        assert_eq!(
            access_lines_written(&lb, client, "moved"),
            1,
            "client {i} on b1 must be moved once"
        );
    }
    // Moved sessions then stay on b2.
    for c in &clients {
        assert_eq!(tagged_roundtrip(c, addr, b"three").unwrap().0, "b2");
    }
    drop(h2);
}

#[test]
fn icmp_port_unreachable_moves_the_session() {
    let b1 = UdpEchoBackend::tagged("b1");
    let b2 = UdpEchoBackend::tagged("b2");
    let lb = Ringlb::start(
        bin(),
        &yaml(&[b1.addr(), b2.addr()], "algorithm: round_robin"),
    );
    let addr = lb.listener_addr("u");
    let c = client_with_timeout(Duration::from_millis(500));
    let (tag, _) = tagged_roundtrip(&c, addr, b"hello").unwrap();
    let (dead, alive) = if tag == "b1" { (b1, b2) } else { (b2, b1) };
    drop(dead);
    // The port is closed: the first datagram draws an ICMP port unreachable, which
    // ringlb sees as ECONNREFUSED on the session's connected socket.
    let (tag, body, attempts) = roundtrip_retrying(&c, addr, b"still there?", 4)
        .expect("the session must move to the live backend");
    assert_eq!(tag, alive.tag().unwrap());
    assert_eq!(body, b"still there?");
    assert!(attempts <= 2, "moved only after {attempts} attempts");
    assert_eq!(
        access_lines_written(&lb, c.local_addr().unwrap(), "moved"),
        1
    );
}

#[test]
fn datagram_sizes_are_preserved() {
    let plain = UdpEchoBackend::start();
    let lb = Ringlb::start(bin(), &yaml(&[plain.addr()], ""));
    let addr = lb.listener_addr("u");
    let c = udp_client();
    for size in [0usize, 1, 1472, 1473, 8192, 60_000, 65_507] {
        let payload: Vec<u8> = (0..size).map(|i| (i * 7 + size) as u8).collect();
        let reply =
            udp_roundtrip(&c, addr, &payload).unwrap_or_else(|e| panic!("{size} bytes: {e}"));
        assert_eq!(
            reply.len(),
            size,
            "{size}-byte datagram came back as {} bytes",
            reply.len()
        );
        assert!(reply == payload, "{size}-byte datagram came back altered");
    }
    // Boundaries: a burst of datagrams of different sizes arrives as the same datagrams.
    let sizes = [0usize, 100, 0, 60_000, 3, 0, 1];
    for (i, &size) in sizes.iter().enumerate() {
        c.send_to(&vec![i as u8; size], addr).unwrap();
    }
    let mut buf = vec![0u8; 65_536];
    for (i, &size) in sizes.iter().enumerate() {
        let (n, from) = c.recv_from(&mut buf).unwrap();
        assert_eq!(from, addr);
        assert_eq!(n, size, "datagram {i}: merged or split");
        assert!(
            buf[..n].iter().all(|&b| b == i as u8),
            "datagram {i}: out of order or altered"
        );
    }
}

#[test]
fn wildcard_listener_answers_from_the_address_the_client_used() {
    let b = UdpEchoBackend::tagged("b1");
    let lb = Ringlb::start(bin(), &yaml_on("0.0.0.0:0", &[b.addr()], ""));
    let port = lb.listener_addr("u").port();
    let c = udp_client();
    // One client talking to two addresses of the host: two flows, each answered from
    // the address it used, interleaved.
    for round in 0..3 {
        for ip in [Ipv4Addr::new(127, 0, 0, 1), Ipv4Addr::new(127, 0, 0, 3)] {
            let to = SocketAddr::new(IpAddr::V4(ip), port);
            let (tag, body) = tagged_roundtrip(&c, to, b"where from?")
                .unwrap_or_else(|e| panic!("round {round} to {to}: {e}"));
            assert_eq!((tag.as_str(), body.as_slice()), ("b1", &b"where from?"[..]));
        }
    }
    assert_eq!(b.distinct_sources().len(), 2, "two flows, two sessions");
}

#[test]
fn proxy_protocol_v2_prefixes_every_datagram() {
    let backend = UdpSocket::bind("127.0.0.1:0").unwrap();
    backend
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let lb = Ringlb::start(
        bin(),
        &yaml(&[backend.local_addr().unwrap()], "proxy_protocol: v2"),
    );
    let addr = lb.listener_addr("u");
    let c = udp_client();
    let client = c.local_addr().unwrap();
    let mut buf = vec![0u8; 65_536];
    for payload in [&b"first"[..], b"", b"third"] {
        c.send_to(payload, addr).unwrap();
        let (n, from) = backend.recv_from(&mut buf).unwrap();
        let d = &buf[..n];
        assert_eq!(n, 28 + payload.len(), "header + payload in one datagram");
        assert_eq!(&d[..12], b"\r\n\r\n\0\r\nQUIT\n");
        assert_eq!(d[12], 0x21, "v2, PROXY");
        assert_eq!(d[13], 0x12, "AF_INET, DGRAM");
        assert_eq!(u16::from_be_bytes([d[14], d[15]]), 12);
        assert_eq!(&d[16..20], &[127, 0, 0, 1]);
        assert_eq!(&d[20..24], &[127, 0, 0, 1]);
        assert_eq!(u16::from_be_bytes([d[24], d[25]]), client.port());
        assert_eq!(u16::from_be_bytes([d[26], d[27]]), addr.port());
        assert_eq!(&d[28..], payload);
        // Replies go back as they are: no header toward the client.
        backend.send_to(b"ok", from).unwrap();
        let mut r = [0u8; 16];
        let (n, rfrom) = c.recv_from(&mut r).unwrap();
        assert_eq!((&r[..n], rfrom), (&b"ok"[..], addr));
    }
}

#[test]
fn allow_list_applies_to_udp() {
    let b = UdpEchoBackend::tagged("b1");
    let lb = Ringlb::start(bin(), &yaml(&[b.addr()], "allow: [127.0.0.2/32]"));
    let addr = lb.listener_addr("u");
    let denied = client_with_timeout(Duration::from_millis(300));
    let err = udp_roundtrip(&denied, addr, b"let me in").unwrap_err();
    assert!(
        matches!(
            err.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        ),
        "{err}"
    );
    let allowed = UdpSocket::bind("127.0.0.2:0").unwrap();
    allowed
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let (tag, _) = tagged_roundtrip(&allowed, addr, b"hi").unwrap();
    assert_eq!(tag, "b1");
    assert_eq!(
        b.distinct_sources().len(),
        1,
        "the denied client must not reach a backend"
    );
}

#[test]
fn sigterm_drains_quiet_sessions_quickly() {
    let b = UdpEchoBackend::tagged("b1");
    let mut lb = Ringlb::start(bin(), &yaml(&[b.addr()], "session_timeout: 60s"));
    let addr = lb.listener_addr("u");
    let clients: Vec<UdpSocket> = (0..5).map(|_| udp_client()).collect();
    for c in &clients {
        tagged_roundtrip(c, addr, b"hi").unwrap();
    }
    let started = Instant::now();
    lb.signal(Signal::Term);
    let status = lb
        .wait_exit(Duration::from_secs(15))
        .expect("ringlb must exit after SIGTERM");
    assert_eq!(exit_code(status), 0);
    // Quiet sessions end after the 1 s drain quiet time, not the 60 s session timeout nor
    // the 30 s shutdown timeout.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "drain took {:?}",
        started.elapsed()
    );
    let ended: HashSet<String> = lb
        .logs()
        .iter()
        .filter(|l| l.contains("ringlb::access") && l.contains("end=expired"))
        .cloned()
        .collect();
    assert_eq!(
        ended.len(),
        clients.len(),
        "every session logged once at the end"
    );
}
