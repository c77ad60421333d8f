//! `per_source` end to end through `ringlb run`: a source (a client IPv4 address; each
//! test binds its clients to their own 127.x.y.z, all of 127/8 being loopback) over its
//! `max_connections` or out of its `new_per_second` bucket is closed at once and counted,
//! while other sources are served; the table survives a reload; and many distinct sources
//! keep the table at `max_sources` with bounded memory.

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use ringlb_testkit::*;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_ringlb"))
}

const WAIT: Duration = Duration::from_secs(15);

/// The config of listener `t` with `per_source` in front of `backend`.
fn config(per_source: &str, backend: &EchoBackend, top: &str) -> String {
    one_listener_yaml(
        &format!("admin: 127.0.0.1:0\n{top}"),
        "t",
        "127.0.0.1:0",
        &format!("per_source: {per_source}"),
        &[backend.addr()],
    )
}

/// An echo backend behind ringlb with `per_source`, and the listener's address.
fn serving(per_source: &str) -> (EchoBackend, Ringlb, SocketAddr) {
    let backend = EchoBackend::start();
    let lb = Ringlb::start(bin(), &config(per_source, &backend, ""));
    let addr = lb.listener_addr("t");
    (backend, lb, addr)
}

fn counter(lb: &Ringlb, series: &str) -> u64 {
    // Absent means nothing was counted yet.
    lb.metric(series).map_or(0, |v| v as u64)
}

fn refused(lb: &Ringlb) -> u64 {
    counter(
        lb,
        "ringlb_denied_total{listener=\"t\",reason=\"source_limit\"}",
    )
}

fn entries(lb: &Ringlb) -> u64 {
    counter(lb, "ringlb_source_table_entries{listener=\"t\"}")
}

fn source(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, last)
}

/// Connects from `from`; `None` when ringlb reset the connection so fast that the
/// connect itself reports it.
fn connect_or_reset(from: Ipv4Addr, lb: SocketAddr) -> Option<TcpStream> {
    match connect_from(from, lb) {
        Ok(c) => Some(c),
        Err(e) if e.kind() == ErrorKind::ConnectionReset => None,
        Err(e) => panic!("connect from {from}: {e}"),
    }
}

/// A connection from `from` that ringlb forwarded: it echoes one byte. `None` when ringlb
/// closed it without forwarding (what a refused source sees).
fn served(from: Ipv4Addr, lb: SocketAddr) -> Option<TcpStream> {
    let mut c = connect_or_reset(from, lb)?;
    if c.write_all(b"x").is_err() {
        return None;
    }
    let mut b = [0u8; 1];
    match c.read(&mut b) {
        Ok(1) if b == *b"x" => Some(c),
        _ => None,
    }
}

/// A connection from `from` that ringlb must close at once without forwarding.
fn assert_refused(from: Ipv4Addr, lb: SocketAddr) {
    let Some(mut c) = connect_or_reset(from, lb) else {
        return;
    };
    let end = read_until_end(&mut c, WAIT);
    assert!(end.closed_without_data(), "{from}: {end:?}");
}

#[test]
fn a_source_over_max_connections_is_refused_while_another_is_served() {
    skip_unless!(
        Requirement::IoUring,
        io_uring_available(),
        "io_uring is not available here"
    );
    let (backend, lb, addr) = serving("{max_connections: 2}");
    let (busy, other) = (source(2), source(3));

    let held: Vec<TcpStream> = (0..2)
        .map(|_| served(busy, addr).expect("the first two are served"))
        .collect();
    assert_refused(busy, addr);
    assert!(wait_until(WAIT, || refused(&lb) == 1));
    assert_eq!(
        backend.accepted(),
        2,
        "a refused client never reaches a backend"
    );
    assert!(lb.wait_for_log(
        "source 127.0.0.2 refused: 2 live connections (per_source.max_connections)",
        WAIT
    ));
    assert!(lb.wait_for_log("client=127.0.0.2:", WAIT));
    assert!(lb
        .logs()
        .iter()
        .any(|l| l.contains("client=127.0.0.2:") && l.ends_with("end=denied_source_limit")));

    // Another source is not affected.
    let _other = served(other, addr).expect("another source is served");
    assert_eq!(entries(&lb), 2);

    // A connection of the busy source ends: it may open one again.
    let mut held = held.into_iter();
    reset_close(held.next().expect("two held"));
    let again = wait_until(WAIT, || served(busy, addr).map(drop).is_some());
    assert!(
        again,
        "the source was not admitted again after one of its connections ended"
    );
}

#[test]
fn a_source_over_its_rate_is_refused_then_admitted_after_refill() {
    skip_unless!(
        Requirement::IoUring,
        io_uring_available(),
        "io_uring is not available here"
    );
    const BURST: u32 = 3;
    let (_backend, lb, addr) = serving("{new_per_second: 1, burst: 3}");
    let fast = source(4);

    // Connect as fast as possible until one is refused: the burst is served, then at
    // most one more per second that passed meanwhile.
    let started = Instant::now();
    let mut admitted = 0u32;
    while served(fast, addr).is_some() {
        admitted += 1;
        assert!(admitted < BURST + 20, "never refused");
    }
    let seconds = u32::try_from(started.elapsed().as_secs()).unwrap_or(u32::MAX);
    assert!(
        (BURST..=BURST + seconds + 1).contains(&admitted),
        "{admitted} admitted in {seconds} s"
    );
    assert!(wait_until(WAIT, || refused(&lb) >= 1));
    assert!(lb.wait_for_log(
        "source 127.0.0.4 refused: more than 1 new connections per second, burst 3",
        WAIT
    ));
    // Another source has its own bucket.
    assert!(served(source(5), addr).is_some());
    // The bucket refills: admitted again.
    assert!(wait_until(WAIT, || served(fast, addr).is_some()));
}

#[test]
fn the_table_survives_a_reload_with_new_limits() {
    skip_unless!(
        Requirement::IoUring,
        io_uring_available(),
        "io_uring is not available here"
    );
    let (backend, mut lb, addr) = serving("{max_connections: 2}");
    let busy = source(6);
    let _held: Vec<TcpStream> = (0..2)
        .map(|_| served(busy, addr).expect("served"))
        .collect();
    assert_refused(busy, addr);

    let mark = lb.reload(&config("{max_connections: 3}", &backend, ""));
    assert!(lb.wait_for_log_after(mark, "reload applied", WAIT));
    // The two connections still count: one more is served, the next refused.
    let _third = served(busy, addr).expect("the raised limit admits a third");
    assert_refused(busy, addr);
    assert_eq!(entries(&lb), 1);
}

/// Many distinct sources, each with one short connection, against `max_sources` 1,000
/// and a rate that keeps every entry a second after its connection: the table fills,
/// new sources are admitted untracked (counted), and the table never holds more than
/// `max_sources`; memory stays bounded, and the table empties once the sources are gone.
///
/// `PER_SOURCE_SOURCES` sets how many (default 100,000: about 20 s on an idle 2-core
/// machine with a debug build). The unit tests of ringlb-persource also run 100,000
/// sources against the table itself, with a hand-moved clock.
#[test]
fn many_sources_keep_the_table_at_max_sources() {
    skip_unless!(
        Requirement::IoUring,
        io_uring_available(),
        "io_uring is not available here"
    );
    const MAX: u64 = 1_000;
    const THREADS: u32 = 4;
    let sources: u32 = std::env::var("PER_SOURCE_SOURCES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let backend = EchoBackend::start();
    let yaml = config(
        &format!("{{max_connections: 1, new_per_second: 1, max_sources: {MAX}}}"),
        &backend,
        "workers: 2\naccess_log: false\n",
    );
    let lb = Ringlb::builder(bin(), &yaml).echo(false).start();
    let addr = lb.listener_addr("t");

    let next = AtomicU32::new(0);
    let failed = AtomicU32::new(0);
    let run = |count: u32| {
        let end = next.load(Ordering::Relaxed) + count;
        std::thread::scope(|s| {
            for _ in 0..THREADS {
                s.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= end {
                        return;
                    }
                    // 127.1.0.1 onwards, skipping .0 and .255 in the last byte.
                    let n = 0x7f01_0000 + (i / 254) * 256 + i % 254 + 1;
                    match served(Ipv4Addr::from(n), addr) {
                        Some(c) => reset_close(c),
                        None => {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        next.store(end, Ordering::Relaxed);
    };

    // Warm up: the table fills and ringlb's allocations settle.
    run(2_000.min(sources));
    let rss_before = lb.rss_kib();
    let started = Instant::now();
    let mut peak = 0;
    let mut done = 2_000.min(sources);
    while done < sources {
        let step = 2_000.min(sources - done);
        run(step);
        done += step;
        let now = entries(&lb);
        assert!(now <= MAX, "{now} entries after {done} sources");
        peak = peak.max(now);
    }
    let rss_after = lb.rss_kib();
    eprintln!(
        "{sources} sources in {:?} after warm-up: peak {peak} entries, {} admitted untracked, \
         RSS {rss_before} KiB -> {rss_after} KiB",
        started.elapsed(),
        counter(&lb, "ringlb_source_table_full_total{listener=\"t\"}")
    );
    assert_eq!(failed.load(Ordering::Relaxed), 0, "every source is served");
    assert_eq!(refused(&lb), 0);
    if sources > 4 * MAX as u32 {
        assert!(peak > MAX / 2, "the table never filled: peak {peak}");
        assert!(counter(&lb, "ringlb_source_table_full_total{listener=\"t\"}") > 0);
        assert!(lb.wait_for_log(
            "per-source table full (1000 sources, per_source.max_sources): new source 127.",
            WAIT
        ));
    }
    // The table is about 100 KB at 1,000 sources (1.5 MB of growth seen here); the
    // margin is for the allocator and the connections in flight.
    assert!(
        rss_after < rss_before + 8 * 1024,
        "RSS grew from {rss_before} KiB to {rss_after} KiB"
    );
    // Idle sources leave: the periodic sweep empties the table.
    assert!(
        wait_until(Duration::from_secs(30), || entries(&lb) == 0),
        "{} entries left",
        entries(&lb)
    );
}

/// The process a live upgrade started: SIGKILLed by PID when the test ends. Declared
/// after the `Ringlb` handle, so it goes first and the handle's log pipe can close.
struct Successor(Option<u32>);

impl Drop for Successor {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            // SAFETY: kill(2) on the process this test's ringlb started for the upgrade.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        }
    }
}

#[test]
fn connections_moved_by_a_live_upgrade_still_count() {
    skip_unless!(
        Requirement::IoUring,
        io_uring_available(),
        "io_uring is not available here"
    );
    let (_backend, lb, addr) = serving("{max_connections: 2}");
    let busy = source(7);
    let mut held: Vec<TcpStream> = (0..2)
        .map(|_| served(busy, addr).expect("served"))
        .collect();

    let mark = lb.log_mark();
    lb.signal(Signal::Usr2);
    assert!(lb.wait_for_log_after(mark, "took over", WAIT), "no upgrade");
    let mut successor = Successor(None);
    successor.0 = lb.logs().iter().find_map(|l| {
        l.split("upgrade: pid ")
            .nth(1)?
            .split(' ')
            .next()?
            .parse()
            .ok()
    });
    assert!(successor.0.is_some(), "no pid in the `took over` line");
    // The old process exits once it holds nothing: both connections have moved.
    let old = lb.pid();
    assert!(wait_until(WAIT, || std::fs::read_to_string(format!(
        "/proc/{old}/stat"
    ))
    .map_or(true, |s| s.contains(") Z "))));

    for c in &mut held {
        c.write_all(b"y").expect("a moved connection still relays");
        let mut b = [0u8; 1];
        c.read_exact(&mut b).expect("echo after the upgrade");
    }
    // The new process counts the two it took over: the source is still at its limit.
    assert_refused(busy, addr);
    assert!(served(source(8), addr).is_some());
    drop(held);
    assert!(wait_until(WAIT, || served(busy, addr).map(drop).is_some()));
}
