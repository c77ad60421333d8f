//! What happens to open connections, end to end through `ringlb run`: `on_down` (keep,
//! close, reset) when the prober marks their backend down, `ringlb ctl shutdown-sessions`
//! under load with `ringlb ctl wait-empty`, and `max_connection_duration`.
//!
//! Every end is observed by the client (EOF or ECONNRESET, and when) and counted by
//! ringlb (`ringlb_connections_ended_total{end=...}`). Spread is judged on the clients'
//! end times: they must cover a good part of the window and never bunch in one slice of
//! it. The bounds are loose on purpose: a loaded 2-core machine delays wake-ups, it does
//! not spread them.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use ringlb_testkit::*;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_ringlb"))
}

/// How long a test waits for something that should take a few seconds at most.
const WAIT: Duration = Duration::from_secs(30);
/// Fast checks: a backend whose listener closed is down in about 250 ms.
const HC: &str = "    health_check: {interval: 100ms, timeout: 50ms, rise: 2, fall: 2}\n";
/// Links per `on_down` test.
const LINKS: usize = 300;

/// `ringlb ctl` on the instance serving `config`, which must exit 0: its stdout.
fn ctl_ok(config: &Path, args: &[&str]) -> String {
    let (code, out, err) = ctl(bin(), config, args);
    assert_eq!(code, 0, "ctl {args:?}: {out}{err}");
    out
}

/// `ringlb_connections_ended_total` of `listener` for `end`.
fn ended(lb: &Ringlb, listener: &str, end: &str) -> u64 {
    let series = format!("ringlb_connections_ended_total{{listener=\"{listener}\",end=\"{end}\"}}");
    lb.metric(&series)
        .unwrap_or_else(|| panic!("no {series} in /metrics")) as u64
}

/// Waits until `listener` counted `n` connections ended as `end`, and never more.
fn assert_ended(lb: &Ringlb, listener: &str, end: &str, n: u64) {
    assert!(
        wait_until(WAIT, || ended(lb, listener, end) >= n),
        "listener {listener}: {} connection(s) counted end={end}, expected {n}",
        ended(lb, listener, end)
    );
    assert_eq!(ended(lb, listener, end), n, "listener {listener} end={end}");
}

/// `n` links to `addr`, each checked with one echo.
fn open_links(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    (0..n)
        .map(|i| {
            let mut c = connect(addr);
            assert_echo(&mut c, format!("hello {i}").as_bytes());
            c
        })
        .collect()
}

/// A thread per link reading until it ends: how (with the bytes read before) and when.
fn watch(links: Vec<TcpStream>) -> Vec<JoinHandle<(ClientEnd, Instant)>> {
    links
        .into_iter()
        .map(|mut link| {
            thread::Builder::new()
                .stack_size(128 * 1024)
                .spawn(move || {
                    let end = read_until_end(&mut link, WAIT);
                    (end, Instant::now())
                })
                .expect("spawn a watcher")
        })
        .collect()
}

fn join_all<T>(handles: Vec<JoinHandle<T>>) -> Vec<T> {
    handles
        .into_iter()
        .map(|h| h.join().expect("a client thread panicked"))
        .collect()
}

/// The ends cover at least half of `spread` and no tenth of it holds more than 40 % of
/// them (uniform would be 10 %).
fn assert_spread(ends: &[Instant], spread: Duration) {
    let first = *ends.iter().min().expect("some ends");
    let last = *ends.iter().max().expect("some ends");
    let offsets: Vec<Duration> = ends.iter().map(|t| *t - first).collect();
    assert!(
        last - first >= spread / 2,
        "{} ends within {:?}, expected them spread over {spread:?}",
        ends.len(),
        last - first
    );
    let slice = spread / 10;
    let most = (0..20u32)
        .map(|k| {
            let (from, to) = (slice * k, slice * (k + 1));
            offsets.iter().filter(|o| **o >= from && **o < to).count()
        })
        .max()
        .unwrap_or(0);
    assert!(
        most * 10 <= ends.len() * 4,
        "{most} of {} ends in one tenth of the {spread:?} window",
        ends.len()
    );
}

/// Listener `name` on one backend, with `keys` (indented by 4) and the backend's own
/// `backend_keys` (indented by 8).
fn listener(name: &str, keys: &str, backend: SocketAddr, backend_keys: &str) -> String {
    format!(
        "  - name: {name}\n    bind: 127.0.0.1:0\n{keys}    backends:\n      - addr: {backend}\n{backend_keys}"
    )
}

fn wait_down(lb: &Ringlb, listener: &str, backend: SocketAddr) {
    let needle = format!("backend down: listener={listener} backend={backend} ");
    assert!(
        lb.wait_for_log(&needle, WAIT),
        "{backend} never marked down in {listener}"
    );
}

/// The `on_down_spread` of the `on_down` tests.
const ON_DOWN_SPREAD: Duration = Duration::from_secs(3);

/// A listener `name` on `backend` with a fast health check, `on_down_spread` and `keys`.
fn on_down_listener(name: &str, keys: &str, backend: SocketAddr, backend_keys: &str) -> String {
    let spread = ON_DOWN_SPREAD.as_secs();
    let keys = format!("{keys}    on_down_spread: {spread}s\n{HC}");
    listener(name, &keys, backend, backend_keys)
}

/// Marks `backend` down (its listener closes, so its checks are refused) and waits for
/// every watched link of `listener` to end: returns how each ended, once their ends were
/// found spread over the `on_down_spread` and counted as `end`.
fn ended_by_on_down(
    lb: &Ringlb,
    backend: &mut EchoBackend,
    listener: &str,
    watchers: Vec<JoinHandle<(ClientEnd, Instant)>>,
    end: &str,
) -> Vec<ClientEnd> {
    backend.close_listener();
    wait_down(lb, listener, backend.addr());
    let ends = join_all(watchers);
    let times: Vec<Instant> = ends.iter().map(|(_, t)| *t).collect();
    assert_spread(&times, ON_DOWN_SPREAD);
    assert_ended(lb, listener, end, ends.len() as u64);
    ends.into_iter().map(|(e, _)| e).collect()
}

#[test]
fn on_down_close_ends_every_link_with_eof_spread_and_keep_leaves_them_open() {
    let mut backend = EchoBackend::start();
    let yaml = format!(
        "admin: 127.0.0.1:0\nlisteners:\n{}{}",
        on_down_listener("closed", "    on_down: close\n", backend.addr(), ""),
        listener("kept", HC, backend.addr(), ""),
    );
    let lb = Ringlb::start(bin(), &yaml);
    let mut closed = open_links(lb.listener_addr("closed"), LINKS);
    let mut kept = open_links(lb.listener_addr("kept"), 20);
    // Bytes on their way when the close comes: the client must read them before the EOF.
    for c in &mut closed {
        c.write_all(b"tail\n").expect("write the tail");
    }
    let watchers = watch(closed);
    for end in ended_by_on_down(&lb, &mut backend, "closed", watchers, "backend_down_close") {
        assert_eq!(
            end,
            ClientEnd::Eof { bytes: 5 },
            "the tail, then a clean end"
        );
    }
    assert!(lb.wait_for_log(
        &format!(
            "on_down: listener=closed backend={} close: closing its",
            backend.addr()
        ),
        WAIT
    ));

    // `keep` (the default): the other listener's links to the same dead backend are still
    // open and still echo, well after every close was done.
    wait_down(&lb, "kept", backend.addr());
    for (i, c) in kept.iter_mut().enumerate() {
        assert_echo(c, format!("still here {i}").as_bytes());
    }
    assert_eq!(ended(&lb, "kept", "backend_down_close"), 0);
    assert_eq!(ended(&lb, "kept", "backend_down_reset"), 0);
    assert_eq!(lb.count_log("on_down: listener=kept"), 0);
}

#[test]
fn on_down_reset_set_on_the_backend_resets_every_link_spread() {
    let mut backend = EchoBackend::start();
    let yaml = format!(
        "admin: 127.0.0.1:0\nlisteners:\n{}",
        on_down_listener(
            "reset",
            "    on_down: keep\n",
            backend.addr(),
            "        on_down: reset\n"
        ),
    );
    let lb = Ringlb::start(bin(), &yaml);
    let watchers = watch(open_links(lb.listener_addr("reset"), LINKS));
    for end in ended_by_on_down(&lb, &mut backend, "reset", watchers, "backend_down_reset") {
        assert_eq!(end, ClientEnd::Reset { bytes: 0 });
    }
    assert_eq!(ended(&lb, "reset", "backend_down_close"), 0);
}

/// One client echoing 64-byte messages as fast as the link allows, until it ends or
/// `stop` is set.
struct Echoer {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<EchoerEnd>,
}

#[derive(Debug)]
struct EchoerEnd {
    /// Messages echoed intact.
    echoed: u64,
    /// How the link ended (`None`: stopped while it was open) and when.
    end: Option<(ClientEnd, Instant)>,
}

impl Echoer {
    fn start(mut link: TcpStream) -> Echoer {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = thread::spawn(move || {
            let mut echoed = 0u64;
            let mut reply = [0u8; 64];
            let ended = |echoed, end| EchoerEnd {
                echoed,
                end: Some((end, Instant::now())),
            };
            while !flag.load(Ordering::Relaxed) {
                let msg = [(echoed % 251) as u8; 64];
                if let Err(e) = link.write_all(&msg) {
                    return ended(echoed, failed(&e, 0));
                }
                let mut got = 0;
                while got < reply.len() {
                    match link.read(&mut reply[got..]) {
                        Ok(0) => return ended(echoed, ClientEnd::Eof { bytes: got as u64 }),
                        Ok(n) => got += n,
                        Err(e) => return ended(echoed, failed(&e, got)),
                    }
                }
                assert_eq!(reply, msg, "echo {echoed} came back changed");
                echoed += 1;
            }
            EchoerEnd { echoed, end: None }
        });
        Echoer { stop, thread }
    }

    fn ended(&self) -> bool {
        self.thread.is_finished()
    }

    fn finish(self) -> EchoerEnd {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("an echoing client panicked")
    }
}

/// A read or write error as the end of a link: a reset shows as ECONNRESET, or as EPIPE
/// on a write after it.
fn failed(e: &std::io::Error, bytes: usize) -> ClientEnd {
    let bytes = bytes as u64;
    match e.kind() {
        std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe => {
            ClientEnd::Reset { bytes }
        }
        kind => ClientEnd::Error { bytes, kind },
    }
}

#[test]
fn shutdown_sessions_under_load_then_wait_empty() {
    let (b1, b2) = (EchoBackend::tagged("b1"), EchoBackend::tagged("b2"));
    let yaml = format!(
        "admin: 127.0.0.1:0\nlisteners:\n  - name: web\n    bind: 127.0.0.1:0\n    algorithm: round_robin\n    backends:\n      - addr: {}\n      - addr: {}\n",
        b1.addr(),
        b2.addr()
    );
    let lb = Ringlb::start(bin(), &yaml);
    let config = lb.config_path().to_path_buf();
    let addr = lb.listener_addr("web");
    let (mut on_b1, mut on_b2) = (Vec::new(), Vec::new());
    for _ in 0..60 {
        let mut c = connect(addr);
        match read_line_tag(&mut c).as_str() {
            "b1" => on_b1.push(Echoer::start(c)),
            _ => on_b2.push(Echoer::start(c)),
        }
    }
    assert_eq!((on_b1.len(), on_b2.len()), (30, 30), "round robin");
    let (b1_label, b2_label) = (b1.addr().to_string(), b2.addr().to_string());

    ctl_ok(&config, &["drain", "web", &b1_label]);
    // Open links stay through a drain: waiting for them gives up, saying how many are left.
    let (code, out, err) = ctl(
        bin(),
        &config,
        &["wait-empty", "web", &b1_label, "--timeout", "1s"],
    );
    assert_eq!(code, 4, "wait-empty must time out: {out}{err}");
    assert!(
        err.contains("timed out after 1s") && err.contains("30 open connection(s)"),
        "{err}"
    );

    let out = ctl_ok(
        &config,
        &["shutdown-sessions", "web", &b1_label, "--spread", "2s"],
    );
    assert!(
        out.contains("closing its 30 open connection(s) within 2s"),
        "{out}"
    );
    assert!(
        !out.contains("still takes new connections"),
        "drained: {out}"
    );
    let out = ctl_ok(
        &config,
        &["wait-empty", "web", &b1_label, "--timeout", "60s"],
    );
    assert!(out.contains("0 open connection(s)"), "{out}");

    // Every b1 client saw its echoes come back intact, then a clean end.
    assert!(wait_until(WAIT, || on_b1.iter().all(Echoer::ended)));
    let ends: Vec<EchoerEnd> = on_b1.into_iter().map(Echoer::finish).collect();
    let mut times = Vec::new();
    for e in &ends {
        let (end, at) = e
            .end
            .unwrap_or_else(|| panic!("a b1 link did not end: {e:?}"));
        assert!(
            matches!(end, ClientEnd::Eof { .. }),
            "closed, not reset: {e:?}"
        );
        assert!(e.echoed > 0, "{e:?}");
        times.push(at);
    }
    assert_spread(&times, Duration::from_secs(2));
    assert_ended(&lb, "web", "shutdown_sessions_close", 30);

    // b2 was not touched: its clients still echo. Then they are reset, all at once.
    assert!(on_b2.iter().all(|e| !e.ended()), "b2 links must stay open");
    let out = ctl_ok(&config, &["shutdown-sessions", "web", &b2_label, "--reset"]);
    assert!(
        out.contains("resetting its 30 open connection(s) at once (RST)")
            && out.contains("still takes new connections"),
        "{out}"
    );
    assert!(wait_until(WAIT, || on_b2.iter().all(Echoer::ended)));
    for e in on_b2.into_iter().map(Echoer::finish) {
        let (end, _) = e
            .end
            .unwrap_or_else(|| panic!("a b2 link did not end: {e:?}"));
        assert!(matches!(end, ClientEnd::Reset { .. }), "reset: {e:?}");
    }
    assert_ended(&lb, "web", "shutdown_sessions_reset", 30);

    let (code, _, err) = ctl(bin(), &config, &["shutdown-sessions", "web", "127.0.0.1:1"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("has no backend \"127.0.0.1:1\""), "{err}");
}

#[test]
fn max_connection_duration_spares_a_busy_link_and_closes_it_once_quiet() {
    let backend = EchoBackend::start();
    let max = Duration::from_secs(2);
    let yaml = format!(
        "admin: 127.0.0.1:0\nlisteners:\n{}",
        listener(
            "aged",
            "    max_connection_duration: 2s\n",
            backend.addr(),
            ""
        ),
    );
    let lb = Ringlb::start(bin(), &yaml);
    let opened = Instant::now();
    let idle = watch(open_links(lb.listener_addr("aged"), 1));
    let mut busy = connect(lb.listener_addr("aged"));

    // Busy well past the limit and its 10 % jitter: it is never cut while bytes flow.
    let busy_until = opened + max + max / 10 + Duration::from_millis(1500);
    let mut echoes = 0u32;
    while Instant::now() < busy_until {
        assert_echo(&mut busy, format!("busy {echoes}").as_bytes());
        echoes += 1;
    }
    // The idle link is closed once past its age, cleanly.
    let (end, at) = join_all(idle).remove(0);
    assert_eq!(end, ClientEnd::Eof { bytes: 0 });
    assert!(
        at - opened >= max,
        "closed {:?} after it opened",
        at - opened
    );
    // Quiet now: closed as well.
    assert_eq!(read_until_end(&mut busy, WAIT), ClientEnd::Eof { bytes: 0 });
    assert_ended(&lb, "aged", "max_duration", 2);
    assert!(
        wait_until(WAIT, || lb.count_log("end=max_duration") == 2),
        "{:#?}",
        lb.logs()
    );
}

/// A requested close writes out everything ringlb read before its FIN, in copy and in
/// splice mode, even toward a client that is not reading when the close comes: the client
/// then receives exactly the bytes ringlb read from the backend (its
/// `ringlb_bytes_total{direction="out"}`), intact, and a clean EOF.
#[test]
fn a_requested_close_delivers_everything_read_before_its_fin() {
    let backend = SinkSourceBackend::start();
    let yaml = format!(
        "admin: 127.0.0.1:0\nlisteners:\n{}{}",
        listener("copy", "    forwarding: copy\n", backend.addr(), ""),
        listener("splice", "    forwarding: splice\n", backend.addr(), ""),
    );
    let lb = Ringlb::start(bin(), &yaml);
    let config = lb.config_path().to_path_buf();
    let label = backend.addr().to_string();
    for mode in ["copy", "splice"] {
        let mut link = connect(lb.listener_addr(mode));
        // Far more than will ever be read: the backend streams until the link ends.
        link.write_all(&(1u64 << 40).to_be_bytes())
            .expect("send the header");
        let mut received = Checksum::new();
        let mut buf = vec![0u8; 64 * 1024];
        while received.len() < 1 << 20 {
            let n = link.read(&mut buf).expect("read the stream");
            assert!(n > 0, "{mode}: the stream ended early");
            received.update(&buf[..n]);
        }
        // Not reading now: ringlb's writes toward this client back up, until it stops
        // reading from the backend (its count stays put over a few scrapes; if it only
        // paused, the close still has to deliver everything).
        let series = format!("ringlb_bytes_total{{listener=\"{mode}\",direction=\"out\"}}");
        let (mut last, mut unchanged) = (None, 0);
        assert!(wait_until(WAIT, || {
            let now = lb.metric(&series);
            unchanged = if now == last { unchanged + 1 } else { 0 };
            last = now;
            unchanged >= 5
        }));
        let out = ctl_ok(&config, &["shutdown-sessions", mode, &label]);
        assert!(
            out.contains("closing its 1 open connection(s) at once"),
            "{out}"
        );
        loop {
            match link.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => received.update(&buf[..n]),
                Err(e) => panic!(
                    "{mode}: {e} after {} bytes, expected a clean EOF",
                    received.len()
                ),
            }
        }
        assert_eq!(
            received.value(),
            pattern_checksum(BACKEND_SEED, received.len()),
            "{mode}: the stream arrived intact"
        );
        assert_ended(&lb, mode, "shutdown_sessions_close", 1);
        assert_eq!(
            lb.metric(&series).map(|v| v as u64),
            Some(received.len()),
            "{mode}: every byte ringlb read from the backend reached the client"
        );
    }
}
