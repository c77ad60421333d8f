//! What the access log costs the worker that finishes a connection: rendering its line
//! and handing it to the writer thread, exactly as `ListenerState::finish` logs it
//! (the same `log::info!` call with the same fields), and what a dropped line costs
//! when the queue is full.
//!
//! Run: cargo bench -p ringlb-logging --bench handoff -- --warm-up-time 1 --measurement-time 3
//!
//! The figure is the logging thread's own CPU time per line (CLOCK_THREAD_CPUTIME_ID),
//! not wall time: on a shared machine a descheduled thread would otherwise count time
//! it did not spend. The writer writes to a sink that discards, so what is measured is
//! the worker's side only, including the wake-up of an idle writer.

use std::hint::black_box;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, SystemTime};

use criterion::{criterion_group, criterion_main, Criterion};
use log::LevelFilter;
use nix::time::{clock_gettime, ClockId};
use ringlb_logging::{render, Format, Logger, Settings, Style, ACCESS_TARGET};

/// A sink that discards, and can be shut so that the writer blocks (a stuck reader).
#[derive(Clone, Default)]
struct Valve {
    shut: Arc<(Mutex<bool>, Condvar)>,
}

impl Write for Valve {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let (lock, cv) = &*self.shut;
        let mut shut = lock.lock().unwrap_or_else(|e| e.into_inner());
        while *shut {
            shut = cv.wait(shut).unwrap_or_else(|e| e.into_inner());
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Valve {
    fn set(&self, shut: bool) {
        let (lock, cv) = &*self.shut;
        *lock.lock().unwrap_or_else(|e| e.into_inner()) = shut;
        cv.notify_all();
    }
}

/// CPU time this thread has used.
fn cpu() -> Duration {
    let t = clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID).unwrap_or_else(|e| panic!("{e}"));
    Duration::new(t.tv_sec() as u64, t.tv_nsec() as u32)
}

/// Runs `iters` calls of `f` in runs of at most `run`, timing this thread's CPU and,
/// untimed after each run, calling `between` (a flush, so the queue has room again).
fn cpu_timed(iters: u64, run: u64, mut f: impl FnMut(), mut between: impl FnMut()) -> Duration {
    let mut spent = Duration::ZERO;
    let mut left = iters;
    while left > 0 {
        let now = run.min(left);
        let started = cpu();
        for _ in 0..now {
            f();
        }
        spent += cpu() - started;
        between();
        left -= now;
    }
    spent
}

fn access(listener: &str, client: SocketAddr, backend: &str, n: u64) {
    let duration_ms = n % 1000;
    let (bytes_in, bytes_out) = (n * 7, n * 13);
    let end = "client_close";
    log::info!(target: ACCESS_TARGET,
        listener = listener, client:% = client, backend = backend, duration_ms = duration_ms,
        bytes_in = bytes_in, bytes_out = bytes_out, end = end;
        "listener={listener} client={client} backend={backend} duration_ms={duration_ms} \
         bytes_in={bytes_in} bytes_out={bytes_out} end={end}");
}

/// The next connection's access line.
fn next_access(n: &mut u64, client: SocketAddr) {
    *n += 1;
    access(
        black_box("settlement"),
        client,
        black_box("10.0.0.12:7000"),
        *n,
    );
}

fn bench(c: &mut Criterion) {
    let valve = Valve::default();
    let settings = Settings {
        level: LevelFilter::Info,
        rust_log: None,
        format: Format::Text,
        format_pinned: false,
        journald: false,
        color: false,
    };
    let logger: &'static Logger = Box::leak(Box::new(
        Logger::new(&settings, Box::new(valve.clone())).unwrap_or_else(|e| panic!("{e}")),
    ));
    log::set_logger(logger).unwrap_or_else(|e| panic!("{e}"));
    log::set_max_level(LevelFilter::Info);
    let client: SocketAddr = "10.1.2.3:40212".parse().unwrap_or_else(|e| panic!("{e}"));
    let mut n = 0u64;
    let flush = || {
        logger.flush_within(Duration::from_secs(10));
    };

    // Runs of at most half the queue, each followed by a flush: a worker finishing
    // connections at any realistic rate finds room in the queue (a dropped line would
    // cost far less than a handed-over one).
    let run = (ringlb_logging::ACCESS_CAPACITY / 2) as u64;
    for format in [Format::Text, Format::Json] {
        logger.set_format(format);
        let before = logger.dropped().access;
        c.bench_function(
            &format!("access line {}: render + hand-off", format.as_str()),
            |b| b.iter_custom(|iters| cpu_timed(iters, run, || next_access(&mut n, client), flush)),
        );
        assert_eq!(
            logger.dropped().access,
            before,
            "no line may be dropped here"
        );
    }
    logger.set_format(Format::Text);

    c.bench_function("access line text: render only (no queue)", |b| {
        let mut line = String::with_capacity(256);
        let style = Style {
            format: Format::Text,
            journald: false,
            color: false,
        };
        b.iter_custom(|iters| {
            cpu_timed(
                iters,
                run,
                || {
                    n += 1;
                    line.clear();
                    let listener = "settlement";
                    // One statement: the record borrows the format arguments' temporaries.
                    render(
                        &mut line,
                        style,
                        &log::Record::builder()
                            .level(log::Level::Info)
                            .target(ACCESS_TARGET)
                            .args(format_args!(
                                "listener={listener} client={client} backend=10.0.0.12:7000 \
                                 duration_ms={} bytes_in={} bytes_out={} end=client_close",
                                n % 1000,
                                n * 7,
                                n * 13
                            ))
                            .build(),
                        SystemTime::now(),
                    );
                    black_box(&line);
                },
                || {},
            )
        })
    });

    valve.set(true);
    // Fill the queue: from here on every line is dropped and counted.
    for i in 0..(ringlb_logging::ACCESS_CAPACITY as u64 * 2) {
        access("settlement", client, "10.0.0.12:7000", i);
    }
    c.bench_function("access line: dropped (queue full)", |b| {
        b.iter_custom(|iters| cpu_timed(iters, u64::MAX, || next_access(&mut n, client), || {}))
    });
    valve.set(false);
    flush();
}

criterion_group!(benches, bench);
criterion_main!(benches);
