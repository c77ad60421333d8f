//! TCP end to end through a running `ringlb` process, on 127.0.0.1 ephemeral ports.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use ringlb_testkit::*;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_ringlb"))
}

/// One TCP listener named "t" on an ephemeral port; `extra` is indented listener keys.
fn yaml(backends: &[SocketAddr], extra: &str) -> String {
    one_listener_yaml("access_log: false\n", "t", "127.0.0.1:0", extra, backends)
}

/// Connect; `None` when ringlb's reset arrived before connect() returned (a rejected
/// client on a loaded machine), which is as good as a reset seen by a read.
fn connect_unless_reset(addr: SocketAddr) -> Option<std::net::TcpStream> {
    match connect_with_timeout(addr, Duration::from_secs(5)) {
        Ok(c) => Some(c),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => None,
        Err(e) => panic!("connect to {addr}: {e}"),
    }
}

#[test]
fn round_robin_spreads_over_three_backends() {
    let backends: Vec<EchoBackend> = ["b1", "b2", "b3"]
        .iter()
        .map(|t| EchoBackend::tagged(t))
        .collect();
    let addrs: Vec<SocketAddr> = backends.iter().map(|b| b.addr()).collect();
    let lb = Ringlb::start(bin(), &yaml(&addrs, "algorithm: round_robin"));
    let addr = lb.listener_addr("t");
    let mut counts = std::collections::HashMap::new();
    for _ in 0..60 {
        let mut c = connect(addr);
        let tag = read_line_tag(&mut c);
        assert_echo(&mut c, b"ping");
        *counts.entry(tag).or_insert(0) += 1;
    }
    // Each worker keeps its own cursor position only through the shared snapshot; the
    // spread must still be even within a small margin.
    for tag in ["b1", "b2", "b3"] {
        let n = counts.get(tag).copied().unwrap_or(0);
        assert!((15..=25).contains(&n), "uneven round robin: {counts:?}");
    }
}

fn bulk_both_ways(forwarding: &str) {
    const SIZE: u64 = 50 * 1024 * 1024;
    let backend = SinkSourceBackend::start();
    let lb = Ringlb::start(
        bin(),
        &yaml(&[backend.addr()], &format!("forwarding: {forwarding}")),
    );
    let mut c = connect(lb.listener_addr("t"));
    c.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let started = Instant::now();
    let ex = sink_source_exchange(&mut c, SIZE, SIZE).expect("exchange");
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(ex.received, SIZE, "bytes back to the client");
    assert_eq!(
        ex.received_checksum,
        pattern_checksum(BACKEND_SEED, SIZE),
        "checksum of backend→client"
    );
    assert!(backend.wait_records(1, Duration::from_secs(30)));
    let rec = &backend.records()[0];
    assert_eq!(rec.received, SIZE, "bytes at the backend");
    assert_eq!(rec.checksum, ex.sent_checksum, "checksum of client→backend");
    eprintln!(
        "forwarding={forwarding}: 2 x 50 MiB in {secs:.2}s ({:.0} MiB/s each way, debug build)",
        50.0 / secs
    );
}

#[test]
fn bulk_50mib_each_way_copy() {
    bulk_both_ways("copy");
}

#[test]
fn bulk_50mib_each_way_splice() {
    bulk_both_ways("splice");
}

#[test]
fn bulk_50mib_each_way_auto() {
    bulk_both_ways("auto");
}

#[test]
fn half_close_client_to_backend() {
    let backend = HalfCloseBackend::echo_after_eof();
    for mode in ["copy", "splice"] {
        let lb = Ringlb::start(
            bin(),
            &yaml(&[backend.addr()], &format!("forwarding: {mode}")),
        );
        let mut c = connect(lb.listener_addr("t"));
        c.write_all(b"request body").unwrap();
        c.shutdown(Shutdown::Write).unwrap();
        let mut back = Vec::new();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        c.read_to_end(&mut back).expect("reply after half-close");
        assert_eq!(back, b"request body", "mode {mode}");
    }
}

#[test]
fn half_close_backend_to_client() {
    let backend = HalfCloseBackend::send_then_shutdown(b"banner");
    let lb = Ringlb::start(bin(), &yaml(&[backend.addr()], "forwarding: copy"));
    let mut c = connect(lb.listener_addr("t"));
    let mut got = [0u8; 6];
    c.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"banner");
    // Backend has shut its write side: the client sees EOF …
    let mut rest = Vec::new();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    // … and can still send to the backend.
    c.write_all(b"still flowing").unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    assert!(backend.wait_records(1, Duration::from_secs(10)));
    assert_eq!(backend.records()[0].received, b"still flowing".to_vec());
}

#[test]
fn client_reset_resets_backend() {
    let backend = EchoBackend::start();
    let lb = Ringlb::start(bin(), &yaml(&[backend.addr()], ""));
    let mut c = connect(lb.listener_addr("t"));
    assert_echo(&mut c, b"hello");
    reset_close(c);
    assert!(
        backend.wait_ends(1, Duration::from_secs(10)),
        "backend connection did not end"
    );
    assert_eq!(
        backend.ends(),
        vec![ConnEnd::Reset],
        "backend must see RST, not FIN"
    );
}

#[test]
fn backend_reset_resets_client() {
    let backend = ResetBackend::after_write(b"partial");
    let lb = Ringlb::start(bin(), &yaml(&[backend.addr()], ""));
    // On a loaded machine the whole exchange can finish before connect() looks at the
    // socket: the reset then surfaces as the connect's error.
    let mut c = match connect_with_timeout(lb.listener_addr("t"), Duration::from_secs(5)) {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return,
        Err(e) => panic!("connect: {e}"),
    };
    match read_until_end(&mut c, Duration::from_secs(10)) {
        ClientEnd::Reset { .. } => {}
        other => panic!("client must see a reset, got {other:?}"),
    }
}

#[test]
fn failover_past_refusing_and_blackholed_backends() {
    let good = EchoBackend::tagged("good");
    let blackhole = BlackholeBackend::start();
    let refused = refused_addr();
    let lb = Ringlb::start(
        bin(),
        &yaml(
            &[refused, blackhole.addr(), good.addr()],
            "algorithm: round_robin\nconnect_timeout: 200ms\nconnect_attempts: 3",
        ),
    );
    let addr = lb.listener_addr("t");
    let mut failures = Vec::new();
    for i in 0..12 {
        let started = Instant::now();
        match connect_with_timeout(addr, Duration::from_secs(5)) {
            Ok(mut c) => {
                c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let mut line = [0u8; 5];
                match c.read_exact(&mut line) {
                    Ok(()) if &line == b"good\n" => {}
                    other => failures.push(format!(
                        "client {i}: {other:?} {line:?} after {:?}",
                        started.elapsed()
                    )),
                }
            }
            Err(e) => failures.push(format!("client {i}: connect: {e}")),
        }
    }
    assert!(
        failures.is_empty(),
        "clients must not see backend failures: {failures:?}\n{}",
        lb.logs().join("\n")
    );
}

#[test]
fn all_backends_down_closes_client_promptly() {
    let lb = Ringlb::start(
        bin(),
        &yaml(&[refused_addr(), refused_addr()], "connect_attempts: 2"),
    );
    let started = Instant::now();
    let Some(mut c) = connect_unless_reset(lb.listener_addr("t")) else {
        return;
    };
    let end = read_until_end(&mut c, Duration::from_secs(5));
    assert!(end.closed_without_data(), "{end:?}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
}

#[test]
fn idle_timeout_closes_both_legs() {
    let backend = EchoBackend::start();
    let lb = Ringlb::start(bin(), &yaml(&[backend.addr()], "idle_timeout: 500ms"));
    let mut c = connect(lb.listener_addr("t"));
    assert_echo(&mut c, b"x");
    let started = Instant::now();
    let end = read_until_end(&mut c, Duration::from_secs(10));
    assert!(matches!(end, ClientEnd::Eof { .. }), "{end:?}");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(400),
        "closed too early: {waited:?}"
    );
    assert!(
        backend.wait_ends(1, Duration::from_secs(5)),
        "backend leg not closed"
    );
}

#[test]
fn max_connections_rejects_beyond_limit() {
    let backend = EchoBackend::start();
    let lb = Ringlb::start(bin(), &yaml(&[backend.addr()], "max_connections: 3"));
    let addr = lb.listener_addr("t");
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut c = connect(addr);
        assert_echo(&mut c, b"hold");
        held.push(c);
    }
    // The reset may already be there when connect() checks the socket's error.
    if let Ok(mut extra) = connect_with_timeout(addr, Duration::from_secs(5)) {
        let end = read_until_end(&mut extra, Duration::from_secs(5));
        assert!(end.closed_without_data(), "{end:?}");
    }
    assert_eq!(
        backend.accepted(),
        3,
        "the fourth client must not reach the backend"
    );
    drop(held);
    // Slots come back once the held connections end.
    // (a client rejected while slots free up may see its connect reset: retry)
    assert!(wait_until(Duration::from_secs(10), || {
        let Ok(mut c) = connect_with_timeout(addr, Duration::from_secs(2)) else {
            return false;
        };
        c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        c.write_all(b"again").is_ok() && {
            let mut b = [0u8; 5];
            c.read_exact(&mut b).is_ok()
        }
    }));
}

#[test]
fn allow_list_denies_other_sources() {
    let backend = EchoBackend::start();
    let lb = Ringlb::start(bin(), &yaml(&[backend.addr()], "allow: [127.0.0.1/32]"));
    let addr = lb.listener_addr("t");
    let mut ok = connect_from(Ipv4Addr::new(127, 0, 0, 1), addr).unwrap();
    assert_echo(&mut ok, b"allowed");
    match connect_from(Ipv4Addr::new(127, 0, 0, 2), addr) {
        Ok(mut denied) => {
            let end = read_until_end(&mut denied, Duration::from_secs(5));
            assert!(end.closed_without_data(), "{end:?}");
        }
        // The reset can land before connect() reads the socket error.
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
    }
    assert_eq!(
        backend.accepted(),
        1,
        "denied client must never reach a backend"
    );
}

#[test]
fn sigterm_drains_open_stream_then_exits_zero() {
    let backend = EchoBackend::start();
    let mut y = yaml(&[backend.addr()], "");
    y.insert_str(0, "shutdown_timeout: 20s\n");
    let mut lb = Ringlb::start(bin(), &y);
    let addr = lb.listener_addr("t");
    let mut c = connect(addr);
    assert_echo(&mut c, b"before");
    lb.signal(Signal::Term);
    assert!(lb.wait_for_log("stopped accepting", Duration::from_secs(10)));
    // New connections are refused once draining …
    assert!(wait_until(Duration::from_secs(5), || connect_with_timeout(
        addr,
        Duration::from_secs(1)
    )
    .is_err()));
    // … while the established stream keeps working.
    for i in 0..5 {
        assert_echo(&mut c, format!("during drain {i}").as_bytes());
    }
    drop(c);
    let status = lb
        .wait_exit(Duration::from_secs(15))
        .expect("ringlb exits after the last connection");
    assert_eq!(exit_code(status), 0);
}

#[test]
fn sigterm_cuts_after_shutdown_timeout() {
    let backend = EchoBackend::start();
    let mut y = yaml(&[backend.addr()], "");
    y.insert_str(0, "shutdown_timeout: 500ms\n");
    let mut lb = Ringlb::start(bin(), &y);
    let mut c = connect(lb.listener_addr("t"));
    assert_echo(&mut c, b"held");
    lb.signal(Signal::Term);
    let status = lb
        .wait_exit(Duration::from_secs(15))
        .expect("exit after shutdown_timeout");
    assert_eq!(exit_code(status), 0);
    assert!(
        lb.count_log("1 connection(s) still open") == 1,
        "cut count logged"
    );
    let end = read_until_end(&mut c, Duration::from_secs(5));
    assert!(
        matches!(end, ClientEnd::Reset { .. }),
        "a cut stream must be reset: {end:?}"
    );
}

#[test]
fn abrupt_client_resets_leak_no_fds() {
    let backend = EchoBackend::start();
    // The burst can overflow the test backend's accept queue (SYNs dropped, retried after
    // 1 s): a generous connect timeout keeps that from turning into a refused client.
    let lb = Ringlb::start(bin(), &yaml(&[backend.addr()], "connect_timeout: 10s"));
    let addr = lb.listener_addr("t");
    // Warm up so lazily created fds (rings, timers) exist before the baseline.
    for _ in 0..10 {
        let mut c = connect(addr);
        assert_echo(&mut c, b"w");
    }
    assert!(wait_until(Duration::from_secs(10), || backend.open() == 0));
    let before = lb.fd_count();
    for i in 0..2000 {
        let mut c = connect(addr);
        if i % 2 == 0 {
            let _ = c.write_all(b"some bytes then reset");
        }
        reset_close(c);
    }
    // Still serving.
    let mut c = connect(addr);
    assert_echo(&mut c, b"alive");
    drop(c);
    let settled = wait_until(Duration::from_secs(20), || lb.fd_count() <= before);
    assert!(
        settled,
        "fd leak: {} before, {} after",
        before,
        lb.fd_count()
    );
}

#[test]
fn invalid_config_exits_2_and_starts_nothing() {
    let (code, out) = Ringlb::run_to_exit(
        bin(),
        "listeners:\n  - name: t\n    bind: 127.0.0.1:0\n    backends:\n      - addr: 10.0.0.1\n",
        &[],
        Duration::from_secs(10),
    );
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("listeners[0].backends[0].addr"), "{out}");
    assert!(!out.contains("listening on"), "{out}");
}

/// Lower the running ringlb's RLIMIT_NOFILE so accept hits EMFILE, hold connections until it
/// does, and check it backs off instead of spinning, logs, and recovers.
#[test]
fn fd_exhaustion_backs_off_without_spinning() {
    let backend = EchoBackend::start();
    let lb = Ringlb::start(bin(), &yaml(&[backend.addr()], ""));
    let addr = lb.listener_addr("t");
    let pid = lb.pid() as libc::pid_t;
    let baseline = lb.fd_count() as u64;
    let limit = libc::rlimit {
        rlim_cur: baseline + 20,
        rlim_max: baseline + 20,
    };
    // SAFETY: prlimit on our own child with a valid rlimit struct.
    let rc = unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, &limit, std::ptr::null_mut()) };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
    let mut held = Vec::new();
    for _ in 0..40 {
        if let Ok(c) = connect_with_timeout(addr, Duration::from_secs(2)) {
            held.push(c);
        }
    }
    // Out of fds either at accept or when opening the backend socket (when accept got
    // the last free fd); both must be logged and neither may spin.
    assert!(
        wait_until(Duration::from_secs(10), || {
            lb.count_log("accept failed") + lb.count_log("cannot open a socket toward") > 0
        }),
        "fd exhaustion must be logged"
    );
    let cpu_before = proc_cpu_ticks(lb.pid());
    std::thread::sleep(Duration::from_secs(2));
    let cpu_used = proc_cpu_ticks(lb.pid()) - cpu_before;
    // 2 s of wall time; a spinning accept loop would burn ~200 ticks.
    assert!(
        cpu_used < 40,
        "accept loop spins under EMFILE: {cpu_used} ticks in 2 s"
    );
    drop(held);
    assert!(
        wait_until(Duration::from_secs(20), || {
            connect_with_timeout(addr, Duration::from_secs(2))
                .map(|mut c| {
                    c.set_read_timeout(Some(Duration::from_secs(2))).ok();
                    c.write_all(b"back").is_ok() && {
                        let mut b = [0u8; 4];
                        c.read_exact(&mut b).is_ok()
                    }
                })
                .unwrap_or(false)
        }),
        "ringlb must serve again once fds are free"
    );
}

/// utime + stime of a process, in clock ticks.
fn proc_cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after_comm = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// Many concurrent request/response connections in splice mode: every splice must stay
/// non-blocking, or drained sockets park the bounded io-wq pool and all of them stall.
#[test]
fn splice_serves_many_concurrent_small_exchanges() {
    let backend = EchoBackend::start();
    let lb = Ringlb::start(
        bin(),
        &format!(
            "workers: 1\n{}",
            yaml(&[backend.addr()], "forwarding: splice")
        ),
    );
    let addr = lb.listener_addr("t");
    let clients: Vec<_> = (0..16)
        .map(|i| {
            std::thread::spawn(move || {
                let mut c = connect(addr);
                c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                for round in 0..50 {
                    assert_echo(&mut c, format!("client {i} round {round}").as_bytes());
                }
            })
        })
        .collect();
    for c in clients {
        c.join().expect("every exchange answered within 5 s");
    }
}

/// Quiet splice connections hold no pipe: a direction takes a pipe from the worker's pool
/// while it has data in flight and gives it back when its socket runs dry. Without that,
/// 200 connections would keep 400 pipes (800 fds) open.
#[test]
fn quiet_splice_connections_hold_no_pipes() {
    let backend = EchoBackend::start();
    // A loaded machine can overflow the test backend's accept queue with 200 connects
    // (SYNs retried after 1 s): a generous connect timeout keeps that from failing a client.
    let lb = Ringlb::start(
        bin(),
        &yaml(
            &[backend.addr()],
            "forwarding: splice\nconnect_timeout: 10s",
        ),
    );
    let addr = lb.listener_addr("t");
    let mut conns: Vec<_> = (0..200).map(|_| connect(addr)).collect();
    for (i, c) in conns.iter_mut().enumerate() {
        assert_echo(c, format!("first {i}").as_bytes());
    }
    let pipe_fds = std::fs::read_dir(format!("/proc/{}/fd", lb.pid()))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|target| target.to_string_lossy().starts_with("pipe:"))
        .count();
    eprintln!("200 quiet splice connections: {pipe_fds} pipe fds open");
    // At most 64 pooled pipes (2 fds each) per worker, plus the process's own few.
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    assert!(pipe_fds <= workers * 64 * 2 + 8, "{pipe_fds} pipe fds");
    for (i, c) in conns.iter_mut().enumerate() {
        assert_echo(c, format!("second {i}").as_bytes());
    }
}

/// A backend that stops reading must slow the client down, not make ringlb buffer: the
/// relay holds one buffer per direction and only reads again once it has written.
#[test]
fn backend_that_stops_reading_applies_backpressure() {
    for mode in ["copy", "splice"] {
        let backend = SlowBackend::with_rcvbuf(64 * 1024);
        let lb = Ringlb::start(
            bin(),
            &yaml(&[backend.addr()], &format!("forwarding: {mode}")),
        );
        let mut c = connect(lb.listener_addr("t"));
        c.set_write_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let rss_before = lb.rss_kib();
        let chunk = vec![7u8; 64 * 1024];
        let mut sent = 0usize;
        // Write until the path is full; 64 MiB would be plenty if anything buffered it.
        while sent < 64 * 1024 * 1024 {
            match c.write(&chunk) {
                Ok(n) => sent += n,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    break
                }
                Err(e) => panic!("{mode}: write: {e}"),
            }
        }
        let grown = lb.rss_kib().saturating_sub(rss_before);
        eprintln!(
            "{mode}: client could write {} KiB before blocking; ringlb RSS grew {grown} KiB",
            sent / 1024
        );
        assert!(
            sent < 32 * 1024 * 1024,
            "{mode}: no backpressure: {sent} bytes accepted"
        );
        assert!(grown < 16 * 1024, "{mode}: ringlb buffered {grown} KiB");
        // Once the backend reads again, everything arrives.
        backend.resume();
        c.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
        c.shutdown(Shutdown::Write).unwrap();
        assert!(
            wait_until(Duration::from_secs(20), || backend.bytes_read()
                == sent as u64),
            "{mode}: backend read {} of {sent} bytes",
            backend.bytes_read()
        );
    }
}

/// Push `total` bytes to a backend that is not reading yet, so the bytes queue up inside
/// ringlb's client socket; then let the backend read. ringlb's reads now fill their buffer
/// every time — what a bulk stream looks like — whatever the machine's load.
fn backlogged_upload(lb: &Ringlb, backend: &SlowBackend, total: usize) -> std::net::TcpStream {
    // A big client send buffer keeps megabytes queued in the client's kernel, which refills
    // ringlb's socket as fast as ringlb reads — even when this test thread is starved of CPU.
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_send_buffer_size(4 * 1024 * 1024).unwrap();
    socket
        .connect_timeout(&lb.listener_addr("t").into(), Duration::from_secs(5))
        .unwrap();
    let c: std::net::TcpStream = socket.into();
    let mut writer = c.try_clone().unwrap();
    writer
        .set_write_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let written = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let progress = std::sync::Arc::clone(&written);
    let sender = std::thread::spawn(move || {
        let chunk = vec![5u8; 256 * 1024];
        for _ in 0..total / chunk.len() {
            writer.write_all(&chunk).unwrap();
            progress.fetch_add(chunk.len(), std::sync::atomic::Ordering::Relaxed);
        }
    });
    // Open the tap only once the path is full: the backend holds the connection and the
    // writer has stopped making progress (a readiness wait, not a guessed delay).
    assert!(backend.wait_accepted(1, Duration::from_secs(20)));
    let mut last = usize::MAX;
    assert!(
        wait_until(Duration::from_secs(30), || {
            std::thread::sleep(Duration::from_millis(200));
            let now = written.load(std::sync::atomic::Ordering::Relaxed);
            let stalled = now == last && now >= 1024 * 1024;
            last = now;
            stalled
        }),
        "the writer never blocked"
    );
    backend.resume();
    sender.join().unwrap();
    assert!(
        wait_until(Duration::from_secs(60), || backend.bytes_read()
            == total as u64),
        "backend read {} of {total} bytes",
        backend.bytes_read()
    );
    c
}

fn metric(lb: &Ringlb, name: &str) -> u64 {
    lb.metric(&format!("{name}{{listener=\"t\"}}"))
        .map_or(0, |v| v as u64)
}

/// `copy`: a bulk stream gets the 256 KiB buffer (counted).
#[test]
fn copy_grows_its_buffer_for_a_bulk_stream() {
    let backend = SlowBackend::start();
    let mut y = yaml(&[backend.addr()], "forwarding: copy");
    y.insert_str(0, "admin: 127.0.0.1:0\n");
    let lb = Ringlb::start(bin(), &y);
    let _c = backlogged_upload(&lb, &backend, 16 * 1024 * 1024);
    let grows = metric(&lb, "ringlb_bulk_buffer_grows_total");
    eprintln!("copy: {grows} direction(s) grew their buffer");
    assert!(
        grows >= 1,
        "a backlogged 16 MiB stream must get the bulk buffer"
    );
}

/// `auto` moves a bulk direction to splice and, once the link is back to small messages,
/// back to copy: a settlement link that starts with a bulk sync does not pay splice's
/// per-message cost forever.
#[test]
fn auto_switches_to_splice_for_bulk_and_back_for_small_messages() {
    let backend = SlowBackend::start();
    let mut y = yaml(&[backend.addr()], "forwarding: auto");
    y.insert_str(0, "admin: 127.0.0.1:0\n");
    let lb = Ringlb::start(bin(), &y);
    let mut c = backlogged_upload(&lb, &backend, 16 * 1024 * 1024);
    assert!(
        metric(&lb, "ringlb_splice_switches_total") >= 1,
        "bulk must move to splice"
    );
    // Small messages, one burst each (the backend has read each before the next is sent).
    for i in 0..12 {
        let before = backend.bytes_read();
        c.write_all(format!("small message {i}").as_bytes())
            .unwrap();
        assert!(wait_until(Duration::from_secs(10), || backend.bytes_read() > before));
    }
    assert!(
        wait_until(Duration::from_secs(10), || metric(
            &lb,
            "ringlb_copy_switches_total"
        ) >= 1),
        "small messages must move the direction back to copy"
    );
}

/// Both legs of a relayed connection have TCP_NODELAY (small settlement messages must not
/// wait for Nagle). Inspects ringlb's own sockets through pidfd_getfd, which needs ptrace
/// rights over the child (root, or a permissive ptrace scope); skipped otherwise.
#[test]
fn both_legs_have_tcp_nodelay() {
    let backend = EchoBackend::start();
    let lb = Ringlb::start(bin(), &yaml(&[backend.addr()], ""));
    let mut c = connect(lb.listener_addr("t"));
    assert_echo(&mut c, b"nodelay?");
    // SAFETY: plain syscalls on our own child's pid; every fd we receive is closed below.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, lb.pid() as libc::pid_t, 0) } as i32;
    // pidfd_getfd needs ptrace rights over the child, which root always has.
    skip_unless!(
        Requirement::Root,
        pidfd >= 0,
        "pidfd_open: {}",
        std::io::Error::last_os_error()
    );
    let mut established = 0;
    for entry in std::fs::read_dir(format!("/proc/{}/fd", lb.pid())).unwrap() {
        let entry = entry.unwrap();
        let is_socket = std::fs::read_link(entry.path())
            .map(|t| t.to_string_lossy().starts_with("socket:"))
            .unwrap_or(false);
        let Ok(target) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if !is_socket {
            continue;
        }
        // SAFETY: pidfd_getfd only reads its integer arguments; it returns a new fd or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd, target, 0) } as i32;
        if fd < 0 {
            let e = std::io::Error::last_os_error();
            // SAFETY: closing the pidfd this test opened.
            unsafe { libc::close(pidfd) };
            skip_unless!(Requirement::Root, false, "pidfd_getfd: {e}");
        }
        // SAFETY: `fd` is a new descriptor this process owns from here on.
        let sock = unsafe { <socket2::Socket as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        // Connected IP stream sockets only: ringlb may also hold inherited Unix sockets.
        let connected_tcp = sock.r#type().ok() == Some(socket2::Type::STREAM)
            && sock.peer_addr().ok().and_then(|a| a.as_socket()).is_some();
        if connected_tcp {
            established += 1;
            assert!(
                sock.nodelay().unwrap(),
                "fd {target} of ringlb lacks TCP_NODELAY"
            );
        }
    }
    // SAFETY: closing the pidfd this test opened.
    unsafe { libc::close(pidfd) };
    assert!(
        established >= 2,
        "expected the client and backend legs, found {established}"
    );
}

/// Between messages a copying direction waits on a small buffer and takes a working one
/// for what does not fit (see crates/dataplane/src/buffers.rs): every size around that
/// boundary, each sent after the previous echo emptied the link, arrives whole and in order.
#[test]
fn messages_around_the_parked_buffer_size_arrive_whole() {
    let backend = EchoBackend::start();
    for mode in ["copy", "auto"] {
        let lb = Ringlb::start(
            bin(),
            &yaml(&[backend.addr()], &format!("forwarding: {mode}")),
        );
        let mut c = connect(lb.listener_addr("t"));
        c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        for (i, size) in [
            1usize, 511, 512, 513, 1024, 4096, 65_536, 65_537, 300_000, 7,
        ]
        .into_iter()
        .enumerate()
        {
            let message: Vec<u8> = (0..size).map(|b| (b * 31 + i) as u8).collect();
            c.write_all(&message).unwrap();
            let mut back = vec![0u8; size];
            c.read_exact(&mut back)
                .unwrap_or_else(|e| panic!("{mode}: echo of {size} bytes: {e}"));
            assert!(
                back == message,
                "{mode}: {size}-byte message came back altered"
            );
        }
    }
}
