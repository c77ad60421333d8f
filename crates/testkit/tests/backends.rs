//! The kit's backends and client helpers against each other, on 127.0.0.1.

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, Shutdown};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use ringlb_testkit::*;

const T: Duration = Duration::from_secs(10);

/// Runs `f` (typically a Drop) on another thread and fails if it takes longer than 10 s,
/// so a backend that does not stop fails the test instead of hanging it.
fn within_10s(what: &str, f: impl FnOnce() + Send + 'static) {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        f();
        let _ = tx.send(());
    });
    rx.recv_timeout(T)
        .unwrap_or_else(|_| panic!("{what} did not finish within 10 s"));
}

#[test]
fn echo_counts_and_clean_eof() {
    let b = EchoBackend::start();
    let mut c = connect(b.addr());
    assert_echo(&mut c, b"hello");
    c.shutdown(Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    c.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "echo sent extra bytes {rest:?}");
    assert!(b.wait_ends(1, T), "echo never recorded the end");
    assert_eq!(b.accepted(), 1);
    assert_eq!(b.ends(), vec![ConnEnd::Eof]);
    let r = &b.conns()[0];
    assert_eq!((r.bytes_in, r.bytes_out), (5, 5));
    assert_eq!(r.peer, c.local_addr().unwrap());
    assert_eq!(b.open(), 0);
}

#[test]
fn tagged_echo_writes_tag_first() {
    let b = EchoBackend::tagged("b1");
    assert_eq!(b.tag(), Some("b1"));
    for _ in 0..2 {
        let mut c = connect(b.addr());
        assert_eq!(read_line_tag(&mut c), "b1");
        assert_echo(&mut c, b"ping\nmore");
    }
    assert!(b.wait_accepted(2, T));
}

#[test]
fn client_reset_is_recorded_as_reset() {
    let b = EchoBackend::start();
    let mut c = connect(b.addr());
    assert_echo(&mut c, b"x");
    reset_close(c);
    assert!(b.wait_ends(1, T));
    assert_eq!(b.ends(), vec![ConnEnd::Reset]);
}

#[test]
fn drop_stops_listener_and_open_connections() {
    let b = EchoBackend::start();
    let addr = b.addr();
    let mut c = connect(addr);
    assert_echo(&mut c, b"x");
    assert!(b.wait_accepted(1, T));
    within_10s("EchoBackend drop", move || drop(b));
    let end = read_until_end(&mut c, T);
    assert!(
        matches!(end, ClientEnd::Eof { .. } | ClientEnd::Reset { .. }),
        "open connection not closed by drop: {end:?}"
    );
    let e = connect_with_timeout(addr, Duration::from_secs(2)).expect_err("listener still open");
    assert_eq!(e.kind(), ErrorKind::ConnectionRefused);
}

#[test]
fn echo_listener_closes_and_reopens_keeping_connections() {
    let mut b = EchoBackend::tagged("r");
    let addr = b.addr();
    let mut c = connect(addr);
    assert_eq!(read_line_tag(&mut c), "r");
    assert!(b.listening());
    b.close_listener();
    assert!(!b.listening());
    let e = connect_with_timeout(addr, Duration::from_secs(2)).expect_err("listener closed");
    assert_eq!(e.kind(), ErrorKind::ConnectionRefused);
    assert_echo(&mut c, b"still echoing");
    b.reopen();
    assert!(b.listening());
    let mut c2 = connect(addr);
    assert_eq!(read_line_tag(&mut c2), "r");
    assert_echo(&mut c2, b"again");
    drop(connect(addr)); // a health check: no bytes
    assert!(b.wait_accepted(3, T));
    let conns = b.conns();
    assert!(conns[0].accepted_at <= conns[1].accepted_at);
    assert_eq!(b.client_conns(), 2, "{conns:?}");
}

#[test]
fn tagged_at_takes_over_a_dropped_backends_port() {
    let old = EchoBackend::tagged("old");
    let addr = old.addr();
    drop(old);
    let new = EchoBackend::tagged_at(addr, "new");
    assert_eq!(new.addr(), addr);
    let mut c = connect(addr);
    assert_eq!(read_line_tag(&mut c), "new");
    assert_eq!(new.tag(), Some("new"));
}

#[test]
fn drop_with_busy_handlers_does_not_hang() {
    // A sink-source writer blocked on a full socket buffer must be woken by Drop.
    let b = SinkSourceBackend::start();
    let mut c = connect(b.addr());
    c.write_all(&(64u64 << 20).to_be_bytes()).unwrap();
    assert!(wait_until(T, || b
        .conns()
        .first()
        .is_some_and(|r| r.bytes_out > 0)));
    let s = SlowBackend::start();
    let _c2 = connect(s.addr());
    assert!(s.wait_accepted(1, T));
    within_10s("busy backends drop", move || {
        drop(b);
        drop(s);
    });
}

#[test]
fn sink_source_checksums_both_ways() {
    let b = SinkSourceBackend::start();
    for (send, back) in [(3 << 20, 5 << 20), (0, 1 << 20), (1 << 20, 0), (12_345, 7)] {
        let mut c = connect(b.addr());
        let x = sink_source_exchange(&mut c, send, back).unwrap();
        assert_eq!(x.sent, send);
        assert_eq!(x.received, back);
        assert_eq!(x.received_checksum, pattern_checksum(BACKEND_SEED, back));
        assert_eq!(x.sent_checksum, pattern_checksum(CLIENT_SEED, send));
    }
    assert!(b.wait_records(4, T));
    let mut recs = b.records();
    recs.sort_by_key(|r| r.requested);
    let want = |requested: u64, received: u64| SinkRecord {
        requested,
        sent: requested,
        received,
        checksum: pattern_checksum(CLIENT_SEED, received),
        end: ConnEnd::Eof,
    };
    assert_eq!(
        recs,
        vec![
            want(0, 1 << 20),
            want(7, 12_345),
            want(1 << 20, 0),
            want(5 << 20, 3 << 20)
        ]
    );
}

#[test]
fn sink_source_without_header_leaves_no_record() {
    // What a health-check connect looks like to the backend.
    let b = SinkSourceBackend::start();
    drop(connect(b.addr()));
    assert!(b.wait_ends(1, T));
    assert!(b.records().is_empty());
    assert_eq!(b.accepted(), 1);
}

#[test]
fn half_close_echo_after_eof() {
    let b = HalfCloseBackend::echo_after_eof();
    let mut c = connect(b.addr());
    c.write_all(b"first ").unwrap();
    c.write_all(b"second").unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    let mut back = Vec::new();
    c.read_to_end(&mut back).unwrap();
    assert_eq!(back, b"first second");
    assert!(b.wait_records(1, T));
    assert_eq!(
        b.records(),
        vec![HalfCloseRecord {
            received: b"first second".to_vec(),
            end: ConnEnd::Eof
        }]
    );
}

#[test]
fn half_close_send_then_shutdown() {
    let b = HalfCloseBackend::send_then_shutdown(b"greeting");
    let mut c = connect(b.addr());
    let mut got = Vec::new();
    c.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"greeting");
    // The backend's write side is closed; ours still flows.
    c.write_all(b"after your FIN").unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    assert!(b.wait_records(1, T));
    assert_eq!(b.records()[0].received, b"after your FIN");
    assert_eq!(b.records()[0].end, ConnEnd::Eof);
}

#[test]
fn reset_backend_variants() {
    let b = ResetBackend::start();
    // The reset can beat the client's connect to completion: then connect itself reports it.
    match connect_with_timeout(b.addr(), T) {
        Ok(mut c) => assert_eq!(read_until_end(&mut c, T), ClientEnd::Reset { bytes: 0 }),
        Err(e) => assert_eq!(e.kind(), ErrorKind::ConnectionReset, "{e}"),
    }

    let b = ResetBackend::after_read(4);
    let mut c = connect(b.addr());
    c.write_all(b"abcd").unwrap();
    assert_eq!(read_until_end(&mut c, T), ClientEnd::Reset { bytes: 0 });
    assert!(b.wait_ends(1, T));
    assert_eq!(b.conns()[0].bytes_in, 4);
    assert_eq!(b.ends(), vec![ConnEnd::Closed]);

    let b = ResetBackend::after_write(b"partial");
    let mut c = connect(b.addr());
    assert!(b.wait_ends(1, T));
    let mut got = [0u8; 7];
    c.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"partial");
    assert_eq!(read_until_end(&mut c, T), ClientEnd::Reset { bytes: 0 });
}

#[test]
fn refused_addr_refuses() {
    let a = refused_addr();
    assert!(a.ip().is_loopback());
    let e = connect_with_timeout(a, Duration::from_secs(2)).expect_err("something listens");
    assert_eq!(e.kind(), ErrorKind::ConnectionRefused);
}

#[test]
fn blackhole_connects_time_out() {
    let b = BlackholeBackend::start();
    let t = Instant::now();
    let e = connect_with_timeout(b.addr(), Duration::from_millis(400))
        .expect_err("connect to the blackhole completed");
    assert_eq!(e.kind(), ErrorKind::TimedOut, "{e}");
    assert!(t.elapsed() >= Duration::from_millis(400));
}

#[test]
fn udp_echo_plain_and_tagged() {
    let plain = UdpEchoBackend::start();
    let tagged = UdpEchoBackend::tagged("u1");
    let c1 = udp_client();
    let c2 = udp_client();
    assert_eq!(udp_roundtrip(&c1, plain.addr(), b"hi").unwrap(), b"hi");
    let reply = udp_roundtrip(&c1, tagged.addr(), b"ping").unwrap();
    assert_eq!(split_tag(&reply), ("u1".to_string(), b"ping".to_vec()));
    udp_roundtrip(&c2, tagged.addr(), b"x").unwrap();
    udp_roundtrip(&c1, tagged.addr(), b"y").unwrap();
    assert_eq!(tagged.received(), 3);
    let (a1, a2) = (c1.local_addr().unwrap(), c2.local_addr().unwrap());
    assert_eq!(tagged.sources(), vec![a1, a2, a1]);
    assert_eq!(tagged.distinct_sources(), vec![a1, a2]);
    assert_eq!(plain.sources(), vec![a1]);
    within_10s("UdpEchoBackend drop", move || drop((plain, tagged)));
}

#[test]
fn slow_backend_applies_backpressure_until_resumed() {
    let b = SlowBackend::with_rcvbuf(4096);
    let mut c = connect(b.addr());
    c.set_nonblocking(true).unwrap();
    let chunk = vec![7u8; 64 * 1024];
    let mut written = 0u64;
    let deadline = Instant::now() + T;
    loop {
        match c.write(&chunk) {
            Ok(n) => written += n as u64,
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) => panic!("write: {e}"),
        }
        assert!(Instant::now() < deadline, "buffers never filled");
        assert!(
            written < 64 << 20,
            "64 MiB accepted by a backend that does not read"
        );
    }
    assert!(written > 0);
    assert_eq!(b.bytes_read(), 0);
    b.resume();
    c.set_nonblocking(false).unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    assert!(
        wait_until(T, || b.bytes_read() == written),
        "read {} of {written}",
        b.bytes_read()
    );
    assert!(b.wait_ends(1, T));
    assert_eq!(b.ends(), vec![ConnEnd::Eof]);
}

#[test]
fn connect_from_sets_source_ip() {
    let b = EchoBackend::start();
    let ip = Ipv4Addr::new(127, 0, 0, 2);
    let mut c = connect_from(ip, b.addr()).unwrap();
    assert_echo(&mut c, b"x");
    assert_eq!(c.local_addr().unwrap().ip(), ip);
    assert_eq!(b.conns()[0].peer.ip(), ip);
}

#[test]
fn read_until_end_times_out_on_silence() {
    let b = EchoBackend::start();
    let mut c = connect(b.addr());
    assert_echo(&mut c, b"abc");
    c.write_all(b"zz").unwrap();
    assert_eq!(
        read_until_end(&mut c, Duration::from_millis(200)),
        ClientEnd::TimedOut { bytes: 2 }
    );
}
