//! The bounded queue between the threads that log and the one thread that writes.
//!
//! A thread that logs renders its line and offers it to a bounded channel with
//! `try_send`: it never waits for the writer, for stderr's reader or for a lock held
//! across I/O. A full queue drops the line and counts it. Access-log lines may fill the
//! queue only up to `access_capacity`; the slots above that are kept for every other
//! line (warnings, health transitions), so a flood of connections cannot push them out.
//!
//! The writer thread takes what is queued, up to [`BATCH_BYTES`] at a time, and writes
//! it in as few `write` calls as lines of at most [`PIPE_BUF`] bytes allow (a write of
//! that size to a pipe is atomic, so lines of another process sharing stderr, as during
//! a live upgrade, never land inside one of ours). After writing it lingers for
//! [`LINGER`] before it looks again, unannounced, so lines that keep coming are queued
//! without a system call; only when a look finds the queue empty does it sleep until
//! the next line wakes it (one futex wake, once per burst of lines).
//!
//! The line buffers go back to the loggers through a second queue, so in steady state
//! no memory is allocated on one thread and freed on another.

use std::io::Write;
use std::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, OnceLock, PoisonError};
use std::thread::Thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use crate::syslog::{Outlet, SyslogSettings};

/// Access-log lines the queue holds at most: about a second of a busy worker's
/// connections, a few MB at worst.
pub const ACCESS_CAPACITY: usize = 8192;
/// Further slots only other lines may take.
pub const OTHER_RESERVE: usize = 1024;
/// The most the writer takes from the queue before writing.
pub const BATCH_BYTES: usize = 64 * 1024;
/// The most one `write` carries (POSIX's PIPE_BUF on Linux): a longer line is written
/// alone.
pub const PIPE_BUF: usize = 4096;
/// Line buffers longer than this are not reused.
const REUSE_CAPACITY: usize = 1024;
/// How long the writer lets lines gather after a write. Bounds how late a line is
/// written while lines keep coming.
const LINGER: Duration = Duration::from_millis(1);
/// How long an idle writer sleeps when nothing wakes it; bounds how late a drop
/// warning can be.
const IDLE_WAIT: Duration = Duration::from_secs(1);
/// How often the writer tries again while syslog messages wait for a slow receiver.
const SYSLOG_RETRY: Duration = Duration::from_millis(20);

/// Lines dropped because the queue was full, since start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Dropped {
    /// Access-log lines (`ringlb_access_log_dropped_total`).
    pub access: u64,
    /// Any other line (`ringlb_log_dropped_total`).
    pub other: u64,
}

/// One record: its stderr line, then (from `split` on) its syslog message, if any.
pub(crate) struct Line {
    text: String,
    split: usize,
}

pub(crate) struct Queue {
    tx: Sender<Line>,
    rx: Receiver<Line>,
    /// Emptied line buffers, back from the writer.
    spare_tx: Sender<String>,
    spare_rx: Receiver<String>,
    access_capacity: usize,
    access_dropped: AtomicU64,
    other_dropped: AtomicU64,
    /// Syslog messages dropped: the receiver did not take them in time.
    pub(crate) syslog_dropped: AtomicU64,
    /// The writer is (about to be) parked and must be woken by the next line.
    sleeping: AtomicBool,
    /// The writer holds lines it took from the queue and has not written yet.
    busy: AtomicBool,
    stop: AtomicBool,
    writer: OnceLock<Thread>,
    /// Notified after every writer cycle, for [`Queue::flush`].
    cycle: Mutex<()>,
    cycled: Condvar,
}

impl Queue {
    pub(crate) fn new(access_capacity: usize, other_reserve: usize) -> Queue {
        let (tx, rx) = crossbeam_channel::bounded(access_capacity + other_reserve);
        let (spare_tx, spare_rx) = crossbeam_channel::bounded(access_capacity + other_reserve);
        Queue {
            tx,
            rx,
            spare_tx,
            spare_rx,
            access_capacity,
            access_dropped: AtomicU64::new(0),
            other_dropped: AtomicU64::new(0),
            syslog_dropped: AtomicU64::new(0),
            sleeping: AtomicBool::new(false),
            busy: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            writer: OnceLock::new(),
            cycle: Mutex::new(()),
            cycled: Condvar::new(),
        }
    }

    pub(crate) fn set_writer(&self, thread: Thread) {
        let _ = self.writer.set(thread);
    }

    /// Whether an access-log line offered now would be dropped (checked before one is
    /// rendered, so a full queue costs no formatting).
    pub(crate) fn access_full(&self) -> bool {
        self.tx.len() >= self.access_capacity
    }

    /// An empty buffer to render a line into: one the writer gave back, else a new one.
    pub(crate) fn buffer(&self) -> String {
        self.spare_rx
            .try_recv()
            .unwrap_or_else(|_| String::with_capacity(256))
    }

    pub(crate) fn count_drop(&self, access: bool) {
        let counter = if access {
            &self.access_dropped
        } else {
            &self.other_dropped
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Offers a rendered line; never waits.
    #[cfg(test)]
    pub(crate) fn push(&self, line: String, access: bool) {
        let split = line.len();
        self.push_split(line, split, access);
    }

    /// Offers a rendered line whose syslog message starts at `split`; never waits.
    pub(crate) fn push_split(&self, text: String, split: usize, access: bool) {
        let line = Line { text, split };
        if (access && self.access_full()) || self.tx.try_send(line).is_err() {
            self.count_drop(access);
            return;
        }
        // Pairs with the fence in `run` between setting `sleeping` and looking at the
        // queue: either the writer sees this line, or this thread sees it asleep.
        fence(Ordering::SeqCst);
        if self.sleeping.load(Ordering::Relaxed) && self.sleeping.swap(false, Ordering::AcqRel) {
            self.wake();
        }
    }

    /// Has the writer look again now (a settings change).
    pub(crate) fn wake_writer(&self) {
        self.wake();
    }

    fn wake(&self) {
        if let Some(t) = self.writer.get() {
            t.unpark();
        }
    }

    pub(crate) fn dropped(&self) -> Dropped {
        Dropped {
            access: self.access_dropped.load(Ordering::Relaxed),
            other: self.other_dropped.load(Ordering::Relaxed),
        }
    }

    /// Waits until the queue is empty and the writer has written what it took, at most
    /// `timeout`; `false` if that did not happen (stderr's reader is stuck, or other
    /// threads keep logging).
    pub(crate) fn flush(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut guard = self.cycle.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            // `busy` is set before the writer takes a line, so an empty queue with the
            // writer not busy means everything taken has been written.
            if self.rx.is_empty() && !self.busy.load(Ordering::SeqCst) {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            self.wake();
            guard = self
                .cycled
                .wait_timeout(guard, left.min(IDLE_WAIT))
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Asks the writer to write what is queued and end.
    pub(crate) fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        self.wake();
    }

    /// The writer thread's loop. `extra` may append lines of its own (the drop warning)
    /// to each batch before it is written; `syslog` says where syslog messages go now.
    pub(crate) fn run(
        &self,
        mut sink: Box<dyn Write + Send>,
        mut extra: impl FnMut(&mut String),
        syslog: impl Fn() -> Option<std::sync::Arc<SyslogSettings>>,
    ) {
        let mut batch = String::with_capacity(BATCH_BYTES);
        let mut outlet = Outlet::default();
        loop {
            self.busy.store(true, Ordering::SeqCst);
            outlet.configure(syslog(), &self.syslog_dropped);
            let mut taken = 0usize;
            while batch.len() < BATCH_BYTES {
                match self.rx.try_recv() {
                    Ok(Line {
                        text: mut line,
                        split,
                    }) => {
                        let split = split.min(line.len());
                        batch.push_str(&line[..split]);
                        if split < line.len() {
                            outlet.offer(&line[split..], &self.syslog_dropped);
                        }
                        taken += 1;
                        if line.capacity() <= REUSE_CAPACITY {
                            line.clear();
                            let _ = self.spare_tx.try_send(line);
                        }
                    }
                    Err(_) => break,
                }
            }
            extra(&mut batch);
            for chunk in chunks(&batch, PIPE_BUF) {
                // A failed write (stderr closed) loses these lines; logging goes on.
                let _ = sink.write_all(chunk.as_bytes());
            }
            batch.clear();
            // Never waits: a receiver that does not read costs queued messages, then drops.
            let backlog = outlet.pump(&self.syslog_dropped);
            self.busy.store(false, Ordering::SeqCst);
            {
                let _cycle = self.cycle.lock().unwrap_or_else(PoisonError::into_inner);
                self.cycled.notify_all();
            }
            if self.stop.load(Ordering::SeqCst) && self.rx.is_empty() {
                let _ = sink.flush();
                return;
            }
            if taken > 0 {
                std::thread::park_timeout(LINGER);
                continue;
            }
            self.sleeping.store(true, Ordering::SeqCst);
            fence(Ordering::SeqCst);
            if self.rx.is_empty() && !self.stop.load(Ordering::SeqCst) {
                std::thread::park_timeout(if backlog { SYSLOG_RETRY } else { IDLE_WAIT });
            }
            self.sleeping.store(false, Ordering::SeqCst);
        }
    }
}

/// Splits `batch` (whole lines) into runs of whole lines of at most `max` bytes; a line
/// longer than `max` is a run of its own.
fn chunks(batch: &str, max: usize) -> impl Iterator<Item = &str> {
    let mut rest = batch;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let window = &rest.as_bytes()[..rest.len().min(max)];
        let end = if rest.len() <= max {
            rest.len()
        } else {
            match window.iter().rposition(|&b| b == b'\n') {
                Some(i) => i + 1,
                None => rest.find('\n').map_or(rest.len(), |i| i + 1),
            }
        };
        let (run, tail) = rest.split_at(end);
        rest = tail;
        Some(run)
    })
}

/// When to report drops: at most once per [`DropReport::EVERY`], with what was dropped
/// since the last report.
#[derive(Debug, Default)]
pub(crate) struct DropReport {
    reported: Dropped,
    last: Option<Instant>,
}

impl DropReport {
    pub(crate) const EVERY: Duration = Duration::from_secs(10);

    /// What was dropped since the last report, if a report is due at `now`.
    pub(crate) fn due(&mut self, now: Instant, total: Dropped) -> Option<Dropped> {
        if total == self.reported || self.last.is_some_and(|t| now - t < Self::EVERY) {
            return None;
        }
        let new = Dropped {
            access: total.access - self.reported.access,
            other: total.other - self.reported.other,
        };
        self.reported = total;
        self.last = Some(now);
        Some(new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_reports_are_rate_limited_and_carry_the_difference() {
        let mut r = DropReport::default();
        let t0 = Instant::now();
        let d = |access, other| Dropped { access, other };
        assert_eq!(r.due(t0, d(0, 0)), None, "nothing dropped");
        assert_eq!(r.due(t0, d(5, 0)), Some(d(5, 0)));
        assert_eq!(
            r.due(t0 + Duration::from_secs(1), d(9, 1)),
            None,
            "too soon"
        );
        assert_eq!(
            r.due(t0 + Duration::from_secs(10), d(12, 1)),
            Some(d(7, 1)),
            "everything since the last report"
        );
        assert_eq!(r.due(t0 + Duration::from_secs(60), d(12, 1)), None);
    }

    #[test]
    fn writes_are_whole_lines_of_at_most_pipe_buf() {
        fn runs(batch: &str, max: usize) -> Vec<&str> {
            chunks(batch, max).collect()
        }
        assert_eq!(runs("", 10), Vec::<&str>::new());
        assert_eq!(runs("ab\ncd\n", 10), ["ab\ncd\n"]);
        assert_eq!(runs("ab\ncd\nef\n", 6), ["ab\ncd\n", "ef\n"]);
        assert_eq!(
            runs("ab\nlong line\ncd\n", 6),
            ["ab\n", "long line\n", "cd\n"]
        );
        assert_eq!(runs("longer than max\n", 4), ["longer than max\n"]);
        let batch: String = (0..1000).map(|i| format!("line {i}\n")).collect();
        let got = runs(&batch, PIPE_BUF);
        assert!(got.iter().all(|r| r.len() <= PIPE_BUF && r.ends_with('\n')));
        assert_eq!(got.concat(), batch);
    }

    #[test]
    fn access_lines_leave_the_reserve_to_others() {
        let q = Queue::new(2, 1);
        q.push("a1\n".into(), true);
        q.push("a2\n".into(), true);
        q.push("a3\n".into(), true);
        assert!(q.access_full());
        q.push("w1\n".into(), false);
        q.push("w2\n".into(), false);
        assert_eq!(
            q.dropped(),
            Dropped {
                access: 1,
                other: 1
            }
        );
        let queued: Vec<String> = q.rx.try_iter().map(|l| l.text).collect();
        assert_eq!(queued, ["a1\n", "a2\n", "w1\n"]);
    }
}
