//! Load generators. Each load thread runs one current-thread tokio runtime with a `LocalSet`:
//! one task per connection (or flow), counters shared per thread through `Rc<RefCell<_>>`,
//! merged when the threads are joined. Setup (connecting, asking tags) happens before the
//! threads meet at a barrier; the timed window starts after it.

use std::cell::RefCell;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::Semaphore;
use tokio::task::LocalSet;

use crate::backend::{pattern, TAG_QUERY};
use crate::report::{Report, Stats};
use crate::BenchError;

/// What bounds a run and where it goes. The load only ever targets `target`.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    pub target: SocketAddr,
    pub duration: Duration,
    /// Stop after this many requests in total; 0 = bounded by `duration` only.
    pub requests: u64,
    pub threads: usize,
    /// Per request (rr, connect, udp-rr), per write/read (bulk), per connect (idle).
    pub timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Client writes, backend (sink) reads.
    Send,
    /// Backend (source) writes, client reads.
    Recv,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Mode {
    /// C persistent connections, one request in flight on each (closed loop).
    Rr {
        connections: usize,
        request: usize,
        response: usize,
        count_tags: bool,
        /// Total requests/s over all connections; `None` = as fast as replies come.
        rate: Option<f64>,
    },
    /// A new connection per request, `concurrency` loops in parallel.
    Connect {
        concurrency: usize,
        request: usize,
        response: usize,
        count_tags: bool,
        rate: Option<f64>,
    },
    /// S streams moving bytes one way.
    Bulk {
        streams: usize,
        direction: Direction,
        chunk: usize,
    },
    /// F UDP flows (one socket each), one datagram in flight on each.
    UdpRr { flows: usize, request: usize },
    /// Hold N connections open and silent for the duration, then check each still answers.
    Idle {
        connections: usize,
        request: usize,
        response: usize,
        connect_concurrency: usize,
        /// Each connection carries one exchange before it goes quiet (a link that logged
        /// on and waits), so the proxy's buffers have been used once.
        warm: bool,
    },
}

impl Mode {
    pub fn name(&self) -> &'static str {
        match self {
            Mode::Rr { .. } => "rr",
            Mode::Connect { .. } => "connect",
            Mode::Bulk { .. } => "bulk",
            Mode::UdpRr { .. } => "udp-rr",
            Mode::Idle { .. } => "idle",
        }
    }

    /// Connections, streams or flows in the run.
    pub fn width(&self) -> usize {
        match *self {
            Mode::Rr { connections, .. } | Mode::Idle { connections, .. } => connections,
            Mode::Connect { concurrency, .. } => concurrency,
            Mode::Bulk { streams, .. } => streams,
            Mode::UdpRr { flows, .. } => flows,
        }
    }

    fn count_tags(&self) -> bool {
        matches!(
            self,
            Mode::Rr {
                count_tags: true,
                ..
            } | Mode::Connect {
                count_tags: true,
                ..
            }
        )
    }

    pub fn validate(&self) -> Result<(), BenchError> {
        let bad = |m: String| Err(BenchError::Args(m));
        if self.width() == 0 {
            return bad(format!(
                "{}: needs at least one connection/stream/flow",
                self.name()
            ));
        }
        match *self {
            Mode::Rr {
                request,
                response,
                rate,
                ..
            }
            | Mode::Connect {
                request,
                response,
                rate,
                ..
            } => {
                if request == 0 || response == 0 {
                    return bad("request and response sizes must be at least 1 byte".into());
                }
                if rate.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
                    return bad("rate must be a positive number of requests per second".into());
                }
            }
            Mode::Idle {
                request,
                response,
                connect_concurrency,
                ..
            } => {
                if request == 0 || response == 0 || connect_concurrency == 0 {
                    return bad("idle: sizes and connect concurrency must be at least 1".into());
                }
            }
            Mode::UdpRr { request, .. } => {
                if !(8..=65507).contains(&request) {
                    return bad(
                        "udp-rr: request must be 8..=65507 bytes (8 carry a sequence number)"
                            .into(),
                    );
                }
            }
            Mode::Bulk { chunk, .. } => {
                if chunk == 0 {
                    return bad("bulk: chunk must be at least 1 byte".into());
                }
            }
        }
        Ok(())
    }
}

/// The shared request budget of `--requests`.
struct Budget {
    limit: u64,
    claimed: AtomicU64,
}

impl Budget {
    fn claim(&self) -> bool {
        self.limit == 0 || self.claimed.fetch_add(1, Ordering::Relaxed) < self.limit
    }
}

#[derive(Clone)]
struct Ctx {
    cfg: LoadConfig,
    budget: Arc<Budget>,
    barrier: Arc<Barrier>,
    /// Connections set up across all threads (idle's readiness line).
    established: Arc<AtomicU64>,
    thread: usize,
    threads: usize,
    /// Total connections over all threads: a per-connection share of `--rate`.
    width: usize,
}

type Shared = Rc<RefCell<Stats>>;

/// A failed request and where it failed.
struct Failed {
    phase: &'static str,
    err: io::Error,
}

fn failed(phase: &'static str) -> impl FnOnce(io::Error) -> Failed {
    move |err| Failed { phase, err }
}

fn timed_out() -> io::Error {
    io::Error::from(io::ErrorKind::TimedOut)
}

/// Runs `mode` against `cfg.target` and returns the merged report.
pub fn run(mode: &Mode, cfg: &LoadConfig) -> Result<Report, BenchError> {
    mode.validate()?;
    let width = mode.width();
    let threads = cfg.threads.clamp(1, width);
    let ctx = Ctx {
        cfg: cfg.clone(),
        budget: Arc::new(Budget {
            limit: cfg.requests,
            claimed: AtomicU64::new(0),
        }),
        barrier: Arc::new(Barrier::new(threads)),
        established: Arc::new(AtomicU64::new(0)),
        thread: 0,
        threads,
        width,
    };
    let mut handles = Vec::with_capacity(threads);
    for t in 0..threads {
        let share = width / threads + usize::from(t < width % threads);
        let ctx = Ctx {
            thread: t,
            ..ctx.clone()
        };
        let mode = mode.clone();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|source| BenchError::Runtime {
                what: format!("load thread {t}"),
                source,
            })?;
        let h = std::thread::Builder::new()
            .name(format!("load-{t}"))
            .spawn(move || {
                let local = LocalSet::new();
                rt.block_on(local.run_until(thread_main(ctx, mode, share)))
            })
            .map_err(|source| BenchError::Runtime {
                what: format!("load thread {t}"),
                source,
            })?;
        handles.push(h);
    }
    let mut total = Stats::new()?;
    let mut elapsed = Duration::ZERO;
    for (t, h) in handles.into_iter().enumerate() {
        let (stats, took) = h.join().map_err(|_| BenchError::ThreadPanicked(t))??;
        total.merge(&stats)?;
        elapsed = elapsed.max(took);
    }
    Ok(Report::new(
        mode.name(),
        &cfg.target.to_string(),
        elapsed,
        &total,
        width as u64,
        threads,
        mode.count_tags(),
    ))
}

async fn thread_main(ctx: Ctx, mode: Mode, share: usize) -> Result<(Stats, Duration), BenchError> {
    let stats: Shared = Rc::new(RefCell::new(Stats::new()?));
    let took = match mode {
        Mode::Rr {
            request,
            response,
            count_tags,
            rate,
            ..
        } => {
            let mut conns = Vec::with_capacity(share);
            for _ in 0..share {
                match open(&ctx.cfg, count_tags, &stats).await {
                    Ok(s) => conns.push(Some(s)),
                    Err(f) => {
                        stats.borrow_mut().record_error(f.phase, &f.err);
                        conns.push(None);
                    }
                }
            }
            let p = Exchange::new(request, response, count_tags, rate, ctx.width);
            timed(&ctx, |deadline| {
                conns
                    .into_iter()
                    .map(|c| {
                        tokio::task::spawn_local(rr_conn(
                            c,
                            ctx.clone(),
                            p.clone(),
                            stats.clone(),
                            deadline,
                        ))
                    })
                    .collect()
            })
            .await
        }
        Mode::Connect {
            request,
            response,
            count_tags,
            rate,
            ..
        } => {
            let p = Exchange::new(request, response, count_tags, rate, ctx.width);
            timed(&ctx, |deadline| {
                (0..share)
                    .map(|_| {
                        tokio::task::spawn_local(connect_loop(
                            ctx.clone(),
                            p.clone(),
                            stats.clone(),
                            deadline,
                        ))
                    })
                    .collect()
            })
            .await
        }
        Mode::Bulk {
            direction, chunk, ..
        } => {
            let mut conns = Vec::with_capacity(share);
            for _ in 0..share {
                match open(&ctx.cfg, false, &stats).await {
                    Ok(s) => conns.push(s),
                    Err(f) => stats.borrow_mut().record_error(f.phase, &f.err),
                }
            }
            timed(&ctx, |deadline| {
                conns
                    .into_iter()
                    .map(|c| {
                        tokio::task::spawn_local(bulk_stream(
                            c,
                            ctx.clone(),
                            direction,
                            chunk,
                            stats.clone(),
                            deadline,
                        ))
                    })
                    .collect()
            })
            .await
        }
        Mode::UdpRr { request, .. } => {
            let mut socks = Vec::with_capacity(share);
            for _ in 0..share {
                match udp_flow_socket(ctx.cfg.target).await {
                    Ok(s) => socks.push(s),
                    Err(e) => stats.borrow_mut().record_error("udp socket", &e),
                }
            }
            timed(&ctx, |deadline| {
                socks
                    .into_iter()
                    .map(|s| {
                        tokio::task::spawn_local(udp_flow(
                            s,
                            ctx.clone(),
                            request,
                            stats.clone(),
                            deadline,
                        ))
                    })
                    .collect()
            })
            .await
        }
        Mode::Idle {
            request,
            response,
            connect_concurrency,
            warm,
            ..
        } => {
            let per_thread = (connect_concurrency / ctx.threads).max(1);
            let sem = Rc::new(Semaphore::new(per_thread));
            let p = Exchange::new(request, response, false, None, ctx.width);
            let opening: Vec<_> = (0..share)
                .map(|_| {
                    let (sem, stats, ctx) = (sem.clone(), stats.clone(), ctx.clone());
                    let p = p.clone();
                    tokio::task::spawn_local(async move {
                        let _permit = sem.acquire().await.ok()?;
                        let t0 = Instant::now();
                        let opened = async {
                            let mut s = open(&ctx.cfg, false, &stats).await?;
                            if warm {
                                let mut got = vec![0u8; p.response.len()];
                                p.once(&mut s, &mut got).await?;
                            }
                            Ok::<_, Failed>(s)
                        };
                        match opened.await {
                            Ok(s) => {
                                stats.borrow_mut().record_latency(t0.elapsed());
                                ctx.established.fetch_add(1, Ordering::Relaxed);
                                Some(s)
                            }
                            Err(f) => {
                                stats.borrow_mut().record_error(f.phase, &f.err);
                                None
                            }
                        }
                    })
                })
                .collect();
            let mut conns = Vec::with_capacity(share);
            for h in opening {
                if let Ok(Some(s)) = h.await {
                    conns.push(s);
                }
            }
            timed(&ctx, |deadline| {
                if ctx.thread == 0 {
                    // Scripts wait for this line before sampling the proxy's memory.
                    eprintln!(
                        "idle: holding {} connections to {}",
                        ctx.established.load(Ordering::Relaxed),
                        ctx.cfg.target
                    );
                }
                conns
                    .into_iter()
                    .map(|c| {
                        tokio::task::spawn_local(idle_conn(
                            c,
                            ctx.clone(),
                            p.clone(),
                            stats.clone(),
                            deadline,
                        ))
                    })
                    .collect()
            })
            .await
        }
    };
    let stats = Rc::try_unwrap(stats)
        .map(RefCell::into_inner)
        .unwrap_or_else(|rc| rc.borrow().clone());
    Ok((stats, took))
}

/// Waits for every thread's setup, starts the clock, runs the tasks `start` spawns until
/// they end, and returns how long the timed window lasted.
async fn timed<F>(ctx: &Ctx, start: F) -> Duration
where
    F: FnOnce(Instant) -> Vec<tokio::task::JoinHandle<()>>,
{
    // Blocking here is fine: this thread has nothing else to run until the window opens.
    ctx.barrier.wait();
    let t0 = Instant::now();
    let handles = start(t0 + ctx.cfg.duration);
    for h in handles {
        let _ = h.await;
    }
    t0.elapsed()
}

/// The request/response pair of rr, connect and idle.
#[derive(Clone)]
struct Exchange {
    request: Rc<Vec<u8>>,
    response: Rc<Vec<u8>>,
    count_tags: bool,
    /// Gap between two requests of one connection, from `--rate`.
    interval: Option<Duration>,
}

impl Exchange {
    fn new(
        request: usize,
        response: usize,
        count_tags: bool,
        rate: Option<f64>,
        width: usize,
    ) -> Self {
        Exchange {
            request: Rc::new(pattern(request)),
            response: Rc::new(pattern(response)),
            count_tags,
            interval: rate.map(|r| Duration::from_secs_f64(width as f64 / r)),
        }
    }

    fn bytes(&self) -> u64 {
        (self.request.len() + self.response.len()) as u64
    }

    /// One request and its reply on `s`, verified.
    async fn once(&self, s: &mut TcpStream, got: &mut [u8]) -> Result<(), Failed> {
        s.write_all(&self.request).await.map_err(failed("write"))?;
        s.read_exact(got).await.map_err(failed("read"))?;
        if got != self.response.as_slice() {
            return Err(Failed {
                phase: "verify",
                err: io::Error::new(io::ErrorKind::InvalidData, "reply differs from expected"),
            });
        }
        Ok(())
    }
}

/// Connects (with the timeout), sets TCP_NODELAY and, with tags on, asks the backend's tag.
async fn open(cfg: &LoadConfig, count_tags: bool, stats: &Shared) -> Result<TcpStream, Failed> {
    let mut s = tokio::time::timeout(cfg.timeout, TcpStream::connect(cfg.target))
        .await
        .map_err(|_| Failed {
            phase: "connect",
            err: timed_out(),
        })?
        .map_err(failed("connect"))?;
    s.set_nodelay(true).map_err(failed("connect"))?;
    if count_tags {
        let tag = tokio::time::timeout(cfg.timeout, ask_tag(&mut s))
            .await
            .map_err(|_| Failed {
                phase: "tag",
                err: timed_out(),
            })??;
        stats.borrow_mut().record_tag(&tag);
    }
    Ok(s)
}

async fn ask_tag(s: &mut TcpStream) -> Result<String, Failed> {
    s.write_all(TAG_QUERY).await.map_err(failed("tag"))?;
    let mut buf = [0u8; 256];
    let mut have = 0;
    // Nothing else is in flight yet, so reading past the line cannot eat reply bytes.
    while !buf[..have].contains(&b'\n') {
        if have == buf.len() {
            return Err(Failed {
                phase: "tag",
                err: io::Error::new(io::ErrorKind::InvalidData, "tag line longer than 255 bytes"),
            });
        }
        let n = s.read(&mut buf[have..]).await.map_err(failed("tag"))?;
        if n == 0 {
            return Err(Failed {
                phase: "tag",
                err: io::Error::from(io::ErrorKind::UnexpectedEof),
            });
        }
        have += n;
    }
    let line = buf[..have]
        .split(|&b| b == b'\n')
        .next()
        .unwrap_or_default();
    let tag = String::from_utf8_lossy(line).into_owned();
    // A plain echo server that knows nothing of tags sends the query back.
    Ok(if line == &TAG_QUERY[..TAG_QUERY.len() - 1] {
        "(plain echo)".to_string()
    } else {
        tag
    })
}

/// The send schedule of one connection under `--rate` (open loop): request k is due at
/// `first + k × interval` whatever happened to request k−1.
struct Schedule {
    interval: Option<Duration>,
    next: Instant,
}

impl Schedule {
    fn new(interval: Option<Duration>) -> Self {
        Schedule {
            interval,
            next: Instant::now(),
        }
    }

    /// Waits for the next slot and returns the instant latency is counted from, or `None`
    /// when the slot falls past the end. Without a rate: now (closed loop).
    ///
    /// Coordinated omission: a request that is due while the previous one is still
    /// waiting for its reply was delayed by the target, so its latency counts from when it
    /// was due, not from when it could be sent; the requests queued behind a stall count
    /// the whole stall. When the slot was still ahead, the send is late only by the
    /// timer's granularity (1 ms in tokio), which is the load generator's, not the
    /// target's: then latency counts from the actual send.
    async fn due(&mut self, deadline: Instant) -> Option<Instant> {
        let Some(iv) = self.interval else {
            return Some(Instant::now());
        };
        self.next += iv;
        if self.next >= deadline {
            return None;
        }
        if Instant::now() >= self.next {
            return Some(self.next);
        }
        tokio::time::sleep_until(self.next.into()).await;
        Some(Instant::now())
    }
}

async fn rr_conn(
    mut conn: Option<TcpStream>,
    ctx: Ctx,
    p: Exchange,
    stats: Shared,
    deadline: Instant,
) {
    let mut got = vec![0u8; p.response.len()];
    let mut schedule = Schedule::new(p.interval);
    while Instant::now() < deadline {
        let Some(s) = conn.as_mut() else {
            // The settlement client reconnects after an error; a refused connect backs off.
            match open(&ctx.cfg, p.count_tags, &stats).await {
                Ok(s) => conn = Some(s),
                Err(f) => {
                    stats.borrow_mut().record_error(f.phase, &f.err);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            continue;
        };
        let Some(t0) = schedule.due(deadline).await else {
            break;
        };
        if !ctx.budget.claim() {
            break;
        }
        match tokio::time::timeout(ctx.cfg.timeout, p.once(s, &mut got)).await {
            Ok(Ok(())) => stats.borrow_mut().record_ok(t0.elapsed(), p.bytes()),
            Ok(Err(f)) => {
                stats.borrow_mut().record_error(f.phase, &f.err);
                conn = None;
            }
            Err(_) => {
                stats.borrow_mut().record_error("exchange", &timed_out());
                conn = None;
            }
        }
    }
}

async fn connect_loop(ctx: Ctx, p: Exchange, stats: Shared, deadline: Instant) {
    let mut got = vec![0u8; p.response.len()];
    let mut schedule = Schedule::new(p.interval);
    while Instant::now() < deadline {
        let Some(t0) = schedule.due(deadline).await else {
            break;
        };
        if !ctx.budget.claim() {
            break;
        }
        let one = async {
            let mut s = open(&ctx.cfg, p.count_tags, &stats).await?;
            p.once(&mut s, &mut got).await
        };
        let res = tokio::time::timeout(ctx.cfg.timeout, one).await;
        let err = match res {
            Ok(Ok(())) => {
                stats.borrow_mut().record_ok(t0.elapsed(), p.bytes());
                continue;
            }
            Ok(Err(f)) => f,
            Err(_) => Failed {
                phase: "exchange",
                err: timed_out(),
            },
        };
        stats.borrow_mut().record_error(err.phase, &err.err);
        // A refused target must not turn the loop into a spin.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

async fn bulk_stream(
    mut s: TcpStream,
    ctx: Ctx,
    direction: Direction,
    chunk: usize,
    stats: Shared,
    deadline: Instant,
) {
    let mut buf = pattern(chunk);
    while Instant::now() < deadline {
        let io = async {
            match direction {
                Direction::Send => s.write(&buf).await,
                Direction::Recv => match s.read(&mut buf).await {
                    Ok(0) => Err(io::Error::from(io::ErrorKind::UnexpectedEof)),
                    other => other,
                },
            }
        };
        match tokio::time::timeout(ctx.cfg.timeout, io).await {
            Ok(Ok(n)) => stats.borrow_mut().bytes += n as u64,
            Ok(Err(e)) => {
                stats.borrow_mut().record_error("stream", &e);
                return;
            }
            Err(_) => {
                stats.borrow_mut().record_error("stream", &timed_out());
                return;
            }
        }
    }
    if direction == Direction::Send {
        let _ = s.shutdown().await;
    }
}

async fn udp_flow_socket(target: SocketAddr) -> io::Result<UdpSocket> {
    let local: SocketAddr = if target.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let s = UdpSocket::bind(local).await?;
    s.connect(target).await?;
    Ok(s)
}

async fn udp_flow(s: UdpSocket, ctx: Ctx, request: usize, stats: Shared, deadline: Instant) {
    let mut req = pattern(request);
    let mut buf = vec![0u8; 65536];
    let mut seq: u64 = 0;
    while Instant::now() < deadline && ctx.budget.claim() {
        seq += 1;
        let tag = seq.to_be_bytes();
        req[..8].copy_from_slice(&tag);
        let t0 = Instant::now();
        let round = async {
            s.send(&req).await.map_err(failed("send"))?;
            loop {
                let n = s.recv(&mut buf).await.map_err(failed("recv"))?;
                // A late reply to an earlier (timed-out) datagram is skipped, not counted twice.
                if n >= 8 && buf[..8] == tag {
                    return Ok::<usize, Failed>(n);
                }
            }
        };
        let err = match tokio::time::timeout(ctx.cfg.timeout, round).await {
            Ok(Ok(n)) if buf[..n] == req[..] => {
                stats
                    .borrow_mut()
                    .record_ok(t0.elapsed(), 2 * request as u64);
                continue;
            }
            Ok(Ok(_)) => Failed {
                phase: "verify",
                err: io::Error::new(io::ErrorKind::InvalidData, "datagram differs from request"),
            },
            Ok(Err(f)) => f,
            Err(_) => Failed {
                phase: "recv",
                err: timed_out(),
            },
        };
        stats.borrow_mut().record_error(err.phase, &err.err);
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

async fn idle_conn(mut s: TcpStream, ctx: Ctx, p: Exchange, stats: Shared, deadline: Instant) {
    // Anything readable while idle is a close, a reset or stray bytes: all errors here.
    let watch = async {
        let mut probe = [0u8; 1];
        loop {
            s.readable().await?;
            match s.try_read(&mut probe) {
                Ok(0) => return Err(io::Error::from(io::ErrorKind::UnexpectedEof)),
                Ok(_) => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "unexpected bytes on an idle connection",
                    ))
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
    };
    let held: io::Result<()> = tokio::select! {
        e = watch => e,
        _ = tokio::time::sleep_until(deadline.into()) => Ok(()),
    };
    if let Err(e) = held {
        stats.borrow_mut().record_error("hold", &e);
        return;
    }
    let mut got = vec![0u8; p.response.len()];
    match tokio::time::timeout(ctx.cfg.timeout, p.once(&mut s, &mut got)).await {
        Ok(Ok(())) => {
            let mut st = stats.borrow_mut();
            st.requests += 1;
            st.bytes += p.bytes();
        }
        Ok(Err(f)) => stats.borrow_mut().record_error(f.phase, &f.err),
        Err(_) => stats.borrow_mut().record_error("ping", &timed_out()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rr(request: usize, response: usize) -> Mode {
        Mode::Rr {
            connections: 1,
            request,
            response,
            count_tags: false,
            rate: None,
        }
    }

    #[test]
    fn validation_rejects_what_cannot_run() {
        assert!(rr(32, 64).validate().is_ok());
        assert!(rr(0, 64).validate().is_err());
        assert!(Mode::UdpRr {
            flows: 1,
            request: 4
        }
        .validate()
        .is_err());
        assert!(Mode::UdpRr {
            flows: 0,
            request: 32
        }
        .validate()
        .is_err());
        let Mode::Rr { connections, .. } = rr(1, 1) else {
            unreachable!()
        };
        assert_eq!(connections, 1);
        let rate0 = Mode::Connect {
            concurrency: 1,
            request: 1,
            response: 1,
            count_tags: false,
            rate: Some(0.0),
        };
        assert!(rate0.validate().is_err());
    }

    #[test]
    fn budget_stops_at_the_limit() {
        let b = Budget {
            limit: 3,
            claimed: AtomicU64::new(0),
        };
        let granted = (0..10).filter(|_| b.claim()).count();
        assert_eq!(granted, 3);
        let unbounded = Budget {
            limit: 0,
            claimed: AtomicU64::new(0),
        };
        assert!((0..10).all(|_| unbounded.claim()));
    }

    /// Slots already past when asked for (the previous reply was late) are returned as
    /// they were due, one interval apart: the stall is counted, not hidden.
    #[test]
    fn a_late_schedule_counts_from_when_each_request_was_due() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let iv = Duration::from_millis(1);
        let mut schedule = Schedule::new(Some(iv));
        let first = schedule.next;
        std::thread::sleep(Duration::from_millis(20));
        let deadline = first + Duration::from_secs(3600);
        let due: Vec<Instant> = rt.block_on(async {
            let mut v = Vec::new();
            for _ in 0..3 {
                v.push(schedule.due(deadline).await.unwrap());
            }
            v
        });
        assert_eq!(due, vec![first + iv, first + 2 * iv, first + 3 * iv]);
        // Past the deadline: no slot.
        let mut ending = Schedule::new(Some(iv));
        let end = ending.next;
        assert_eq!(rt.block_on(ending.due(end)), None);
    }

    #[test]
    fn rate_splits_across_connections() {
        let p = Exchange::new(1, 1, false, Some(1000.0), 4);
        assert_eq!(p.interval, Some(Duration::from_millis(4)));
    }
}
