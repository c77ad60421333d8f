//! Client load against tagged echo backends ([`crate::EchoBackend::tagged`]) through a
//! balancer: one-shot clients that report which backend served them, and [`Load`],
//! client threads connecting back to back until stopped, with a gate that lets a test
//! act while no client connection is in flight.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockWriteGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::client::{connect_with_timeout, try_read_line_tag};
use crate::server::lock;

/// Connect timeout and read timeout of one tagged client connection.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long each phase of one [`tagged_client_timed`] connection took.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Phases {
    pub connect: Duration,
    pub tag: Duration,
    pub echo: Duration,
}

/// One client connection to `addr`: connect, read the backend's `TAG\n`, send
/// `ping N\n` and check it comes back. Returns the tag, or what went wrong.
pub fn tagged_client(addr: SocketAddr, n: usize) -> Result<String, String> {
    tagged_client_timed(addr, n).0
}

/// [`tagged_client`], plus how long each phase took (zero for a phase not reached).
pub fn tagged_client_timed(addr: SocketAddr, n: usize) -> (Result<String, String>, Phases) {
    let mut phases = Phases::default();
    let mut at = Instant::now();
    let mut lap = |slot: &mut Duration| {
        *slot = at.elapsed();
        at = Instant::now();
    };
    let mut exchange = || {
        let c = connect_with_timeout(addr, CLIENT_TIMEOUT);
        lap(&mut phases.connect);
        let mut c = c.map_err(|e| format!("connect: {e}"))?;
        c.set_read_timeout(Some(CLIENT_TIMEOUT))
            .map_err(|e| e.to_string())?;
        let tag = try_read_line_tag(&mut c);
        lap(&mut phases.tag);
        let tag = tag?;
        let r = ping(&mut c, n).map_err(|e| format!("{tag}: {e}"));
        lap(&mut phases.echo);
        r.map(|()| tag)
    };
    let r = exchange();
    (r, phases)
}

fn ping(c: &mut TcpStream, n: usize) -> Result<(), String> {
    let msg = format!("ping {n}\n");
    c.write_all(msg.as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    let mut back = vec![0u8; msg.len()];
    c.read_exact(&mut back)
        .map_err(|e| format!("echo read: {e}"))?;
    if back != msg.as_bytes() {
        return Err("echo mismatch".into());
    }
    Ok(())
}

/// `n` sequential [`tagged_client`] connections from this thread: (tags in order,
/// failures).
pub fn tagged_clients(addr: SocketAddr, n: usize) -> (Vec<String>, Vec<String>) {
    let mut tags = Vec::new();
    let mut failures = Vec::new();
    for i in 0..n {
        match tagged_client(addr, i) {
            Ok(t) => tags.push(t),
            Err(e) => failures.push(format!("connection {i}: {e}")),
        }
    }
    (tags, failures)
}

/// How many times each tag occurs.
pub fn tag_counts(tags: &[String]) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for t in tags {
        *m.entry(t.clone()).or_insert(0) += 1;
    }
    m
}

/// What a [`Load`] did.
#[derive(Debug, Default)]
pub struct LoadLog {
    /// The tag of every successful connection, in completion order.
    pub tags: Vec<String>,
    /// Every failed connection: thread, index and what went wrong.
    pub failures: Vec<String>,
    pub max_latency: Duration,
    /// The slowest connection: its result and its phase times.
    pub slowest: String,
}

/// Client threads making [`tagged_client`] connections back to back (with `pause`
/// between two) until stopped. Each connection holds the gate's read side;
/// [`Load::pause`] takes the write side, so while its guard lives no client connection is
/// in flight (e.g. to kill a backend without cutting a connection it accepted).
pub struct Load {
    stop: Arc<AtomicBool>,
    gate: Arc<RwLock<()>>,
    log: Arc<Mutex<LoadLog>>,
    threads: Vec<JoinHandle<()>>,
}

impl Load {
    pub fn start(addr: SocketAddr, threads: usize, pause: Duration) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let gate = Arc::new(RwLock::new(()));
        let log = Arc::new(Mutex::new(LoadLog::default()));
        let threads = (0..threads)
            .map(|t| {
                let (stop, gate, log) = (stop.clone(), gate.clone(), log.clone());
                thread::Builder::new()
                    .name(format!("testkit-load-{t}"))
                    .spawn(move || client_thread(t, addr, pause, &stop, &gate, &log))
                    .unwrap_or_else(|e| panic!("testkit: spawn load thread: {e}"))
            })
            .collect();
        Load {
            stop,
            gate,
            log,
            threads,
        }
    }

    /// While the guard lives, no client connection is in flight.
    pub fn pause(&self) -> RwLockWriteGuard<'_, ()> {
        self.gate.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The gate itself, for pausing from another thread (take its write side).
    pub fn gate(&self) -> Arc<RwLock<()>> {
        self.gate.clone()
    }

    /// Connections finished so far, successful or not.
    pub fn total(&self) -> usize {
        let l = lock(&self.log);
        l.tags.len() + l.failures.len()
    }

    /// Successful connections served by the backend tagged `tag`.
    pub fn count(&self, tag: &str) -> usize {
        lock(&self.log).tags.iter().filter(|t| *t == tag).count()
    }

    pub fn failures(&self) -> usize {
        lock(&self.log).failures.len()
    }

    /// Stops and joins the client threads; returns what they did.
    pub fn finish(mut self) -> LoadLog {
        self.stop_threads();
        let log = std::mem::take(&mut *lock(&self.log));
        eprintln!(
            "slowest client connection ({:?}): {}",
            log.max_latency, log.slowest
        );
        log
    }

    fn stop_threads(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop_threads();
    }
}

fn client_thread(
    t: usize,
    addr: SocketAddr,
    pause: Duration,
    stop: &AtomicBool,
    gate: &RwLock<()>,
    log: &Mutex<LoadLog>,
) {
    let mut i = 0;
    while !stop.load(Ordering::SeqCst) {
        let started = Instant::now();
        let (r, phases) = {
            let _g = gate.read().unwrap_or_else(|e| e.into_inner());
            tagged_client_timed(addr, i)
        };
        let took = started.elapsed();
        let mut l = lock(log);
        if took > l.max_latency {
            l.max_latency = took;
            l.slowest = format!("{r:?}: {phases:?}");
        }
        match r {
            Ok(tag) => l.tags.push(tag),
            Err(e) => l.failures.push(format!("thread {t} connection {i}: {e}")),
        }
        drop(l);
        i += 1;
        // Pacing between connections, not synchronisation.
        thread::sleep(pause);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{refused_addr, wait_until, EchoBackend};

    #[test]
    fn tagged_clients_report_tags_and_failures() {
        let b = EchoBackend::tagged("x");
        let (tags, failures) = tagged_clients(b.addr(), 3);
        assert_eq!(tags, ["x", "x", "x"]);
        assert!(failures.is_empty(), "{failures:?}");
        let (tags, failures) = tagged_clients(refused_addr(), 2);
        assert!(tags.is_empty());
        assert_eq!(failures.len(), 2);
        assert!(failures[0].contains("connect"), "{failures:?}");
    }

    #[test]
    fn load_counts_per_tag_and_pause_holds_every_client() {
        let a = EchoBackend::tagged("a");
        let load = Load::start(a.addr(), 2, Duration::from_millis(1));
        assert!(wait_until(Duration::from_secs(10), || load.count("a") >= 5));
        {
            let _paused = load.pause();
            // No connection in flight: every accepted one has ended.
            assert!(
                wait_until(Duration::from_secs(10), || a.open() == 0),
                "{} open while paused",
                a.open()
            );
            let n = load.total();
            assert_eq!(a.client_conns(), a.conns().len());
            assert_eq!(load.total(), n, "a client ran while paused");
        }
        let log = load.finish();
        assert!(log.failures.is_empty(), "{:?}", log.failures);
        assert_eq!(tag_counts(&log.tags).get("a"), Some(&log.tags.len()));
    }
}
