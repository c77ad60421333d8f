//! Connection records (`connection_records: all`): an `established` record when a TCP
//! connection reaches its backend, `progress` records every `connection_report_interval`
//! while it lives, and the `end` record, all three carrying one connection id that the
//! backend also gets in the PROXY v2 header (README.md, "Connection records").
//! Every record is one access-log line (target `ringlb::access`), so it shares the
//! access log's format, queue, drop counting and switch (`access_log`).
//!
//! Must not: allocate beyond the log line itself, or cost anything when the level is `end`
//! (the default: the end line stays exactly what it always was).

use std::cell::Cell;
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use crate::outcome::{AccessLine, EndReason, Outcome, Record};

/// Bits of an id left to the per-worker counter; the bits above hold the worker index
/// (at most 1024 workers: 10 bits), so two workers never hand out the same id.
const COUNTER_BITS: u32 = 54;
const COUNTER_MASK: u64 = (1 << COUNTER_BITS) - 1;

/// A connection's id: unique in the process (worker index in the top bits, a counter
/// below), and unlikely to repeat across processes (each worker's counter starts at a
/// random value). Written as 16 lowercase hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct ConnId(pub(crate) u64);

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// One worker's id counter (worker-local: a `Cell`).
pub(crate) struct ConnIds {
    worker: u64,
    next: Cell<u64>,
}

impl ConnIds {
    /// `start`: a random number, so a restarted process does not repeat the last one's ids.
    pub(crate) fn new(worker: usize, start: u64) -> ConnIds {
        ConnIds {
            worker: (worker as u64) << COUNTER_BITS,
            next: Cell::new(start & COUNTER_MASK),
        }
    }

    pub(crate) fn next(&self) -> ConnId {
        let n = self.next.get();
        self.next.set(n.wrapping_add(1) & COUNTER_MASK);
        ConnId(self.worker | n)
    }
}

/// Who ended a connection first: a peer (its FIN, its RST, or the kernel giving up on it)
/// or ringlb itself (a timer, an order, a local failure).
pub(crate) fn closed_by(outcome: Outcome) -> &'static str {
    use EndReason::*;
    match outcome {
        Outcome::Denied(_) => "ringlb",
        Outcome::Ended(ClientClose | ClientReset | ClientTimedOut) => "client",
        Outcome::Ended(BackendClose | BackendReset | BackendTimedOut | ProxyHeaderFailed) => {
            "backend"
        }
        Outcome::Ended(_) => "ringlb",
    }
}

/// How it ended, in a few kinds: `fin`, `reset`, `dead_peer` (the kernel gave up on a
/// peer: keepalive, user timeout or retransmissions), `timer` (one of ringlb's: see
/// [`timer`]), `order` (on_down, shutdown-sessions, on_recover), `error`, `denied`.
pub(crate) fn cause(outcome: Outcome) -> &'static str {
    use EndReason::*;
    match outcome {
        Outcome::Denied(crate::outcome::DenyReason::ConnectTimeout) => "timer",
        Outcome::Denied(_) => "denied",
        Outcome::Ended(reason) => match reason {
            ClientClose | BackendClose => "fin",
            ClientReset | BackendReset => "reset",
            ClientTimedOut | BackendTimedOut => "dead_peer",
            IdleTimeout | DrainCut | MaxDuration | Expired => "timer",
            BackendDownClose
            | BackendDownReset
            | ShutdownSessionsClose
            | ShutdownSessionsReset
            | ShedBackup => "order",
            LocalError | ProxyHeaderFailed | Moved => "error",
        },
    }
}

/// The timer that ended it, by its configuration key; `-` when none did.
pub(crate) fn timer(outcome: Outcome) -> &'static str {
    use EndReason::*;
    match outcome {
        Outcome::Denied(crate::outcome::DenyReason::ConnectTimeout) => "connect_timeout",
        Outcome::Ended(IdleTimeout) => "idle_timeout",
        Outcome::Ended(DrainCut) => "shutdown_timeout",
        Outcome::Ended(MaxDuration) => "max_connection_duration",
        Outcome::Ended(Expired) => "session_timeout",
        _ => "-",
    }
}

/// What an `established` record says.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Established<'a> {
    pub(crate) id: ConnId,
    pub(crate) listener: &'a str,
    pub(crate) client: SocketAddr,
    /// The address the client reached (a wildcard bind has many).
    pub(crate) local: SocketAddr,
    pub(crate) backend: &'a str,
    /// From the first connect attempt to the backend's answer, retries included.
    pub(crate) connect: Duration,
    pub(crate) attempts: u32,
}

impl fmt::Display for Established<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "event=established id={} listener={} client={} local={} backend={} connect_us={} attempts={}",
            self.id,
            self.listener,
            self.client,
            self.local,
            self.backend,
            micros(self.connect),
            self.attempts
        )
    }
}

/// What a `progress` record says: the connection so far.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Progress<'a> {
    pub(crate) id: ConnId,
    pub(crate) listener: &'a str,
    pub(crate) client: SocketAddr,
    pub(crate) backend: &'a str,
    pub(crate) age: Duration,
    /// Client → backend since the connection started.
    pub(crate) bytes_in: u64,
    /// Backend → client since the connection started.
    pub(crate) bytes_out: u64,
    /// Since the last byte either way.
    pub(crate) idle: Duration,
}

impl fmt::Display for Progress<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "event=progress id={} listener={} client={} backend={} duration_ms={} bytes_in={} bytes_out={} idle_ms={}",
            self.id,
            self.listener,
            self.client,
            self.backend,
            millis(self.age),
            self.bytes_in,
            self.bytes_out,
            millis(self.idle)
        )
    }
}

/// The `end` record: the access line's fields behind the id, then who, how and which
/// timer.
pub(crate) struct End<'a> {
    pub(crate) id: ConnId,
    pub(crate) listener: &'a str,
    pub(crate) record: &'a Record<'a>,
}

impl fmt::Display for End<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let outcome = self.record.outcome;
        let line = AccessLine {
            listener: self.listener,
            record: self.record,
        };
        write!(
            f,
            "event=end id={} {line} closed_by={} cause={} timer={}",
            self.id,
            closed_by(outcome),
            cause(outcome),
            timer(outcome)
        )
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

pub(crate) fn log_established(e: &Established<'_>) {
    log::info!(target: "ringlb::access",
        event = "established", id:% = e.id, listener = e.listener, client:% = e.client,
        local:% = e.local, backend = e.backend, connect_us = micros(e.connect),
        attempts = e.attempts;
        "{e}");
}

pub(crate) fn log_progress(p: &Progress<'_>) {
    log::info!(target: "ringlb::access",
        event = "progress", id:% = p.id, listener = p.listener, client:% = p.client,
        backend = p.backend, duration_ms = millis(p.age), bytes_in = p.bytes_in,
        bytes_out = p.bytes_out, idle_ms = millis(p.idle);
        "{p}");
}

pub(crate) fn log_end(id: ConnId, listener: &str, r: &Record<'_>) {
    log::info!(target: "ringlb::access",
        event = "end", id:% = id, listener = listener, client:% = r.client,
        backend = r.backend, duration_ms = millis(r.duration), bytes_in = r.bytes_in,
        bytes_out = r.bytes_out, end:% = r.outcome, closed_by = closed_by(r.outcome),
        cause = cause(r.outcome), timer = timer(r.outcome);
        "{}", End { id, listener, record: r });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::DenyReason;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ids_are_hex_unique_per_worker_and_wrap_inside_the_counter() {
        let a = ConnIds::new(0, 41);
        let b = ConnIds::new(1, 41);
        assert_eq!(a.next().to_string(), "0000000000000029");
        assert_eq!(b.next().to_string(), "0040000000000029");
        let last = ConnIds::new(1023, u64::MAX);
        assert_eq!(last.next(), ConnId((1023 << 54) | COUNTER_MASK));
        assert_eq!(
            last.next(),
            ConnId(1023 << 54),
            "wraps within its worker's range"
        );
    }

    #[test]
    fn established_and_progress_lines() {
        let e = Established {
            id: ConnId(0xab),
            listener: "web",
            client: addr("192.0.2.1:5000"),
            local: addr("198.51.100.2:443"),
            backend: "10.0.0.1:80",
            connect: Duration::from_micros(1234),
            attempts: 2,
        };
        assert_eq!(
            e.to_string(),
            "event=established id=00000000000000ab listener=web client=192.0.2.1:5000 \
             local=198.51.100.2:443 backend=10.0.0.1:80 connect_us=1234 attempts=2"
        );
        let p = Progress {
            id: ConnId(0xab),
            listener: "web",
            client: addr("192.0.2.1:5000"),
            backend: "10.0.0.1:80",
            age: Duration::from_millis(4001),
            bytes_in: 10,
            bytes_out: 20,
            idle: Duration::from_millis(1500),
        };
        assert_eq!(
            p.to_string(),
            "event=progress id=00000000000000ab listener=web client=192.0.2.1:5000 \
             backend=10.0.0.1:80 duration_ms=4001 bytes_in=10 bytes_out=20 idle_ms=1500"
        );
    }

    #[test]
    fn end_lines_say_who_how_and_which_timer() {
        let record = Record {
            client: addr("192.0.2.1:5000"),
            backend: "10.0.0.1:80",
            duration: Duration::from_millis(900_000),
            bytes_in: 1,
            bytes_out: 2,
            outcome: Outcome::Ended(EndReason::IdleTimeout),
            tls: None,
        };
        assert_eq!(
            End { id: ConnId(1), listener: "web", record: &record }.to_string(),
            "event=end id=0000000000000001 listener=web client=192.0.2.1:5000 backend=10.0.0.1:80 \
             duration_ms=900000 bytes_in=1 bytes_out=2 end=idle_timeout closed_by=ringlb cause=timer \
             timer=idle_timeout"
        );
        let cases = [
            (
                Outcome::Ended(EndReason::ClientClose),
                ("client", "fin", "-"),
            ),
            (
                Outcome::Ended(EndReason::BackendReset),
                ("backend", "reset", "-"),
            ),
            (
                Outcome::Ended(EndReason::ClientTimedOut),
                ("client", "dead_peer", "-"),
            ),
            (
                Outcome::Ended(EndReason::DrainCut),
                ("ringlb", "timer", "shutdown_timeout"),
            ),
            (
                Outcome::Ended(EndReason::MaxDuration),
                ("ringlb", "timer", "max_connection_duration"),
            ),
            (
                Outcome::Ended(EndReason::BackendDownReset),
                ("ringlb", "order", "-"),
            ),
            (
                Outcome::Ended(EndReason::ProxyHeaderFailed),
                ("backend", "error", "-"),
            ),
            (
                Outcome::Denied(DenyReason::ConnectTimeout),
                ("ringlb", "timer", "connect_timeout"),
            ),
            (
                Outcome::Denied(DenyReason::Limit),
                ("ringlb", "denied", "-"),
            ),
        ];
        for (outcome, want) in cases {
            assert_eq!(
                (closed_by(outcome), cause(outcome), timer(outcome)),
                want,
                "{outcome}"
            );
        }
        // Every end is named by one token of each kind.
        for reason in EndReason::ALL {
            let o = Outcome::Ended(reason);
            for token in [closed_by(o), cause(o), timer(o)] {
                assert!(
                    !token.is_empty() && !token.contains([' ', '=']),
                    "{reason:?}"
                );
            }
        }
    }
}
