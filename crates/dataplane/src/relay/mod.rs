//! The relay: forwards one accepted client connection and its backend connection both ways
//! until both sides are closed.
//!
//! Two halves (client→backend, backend→client) run in one task, each a small loop that owns
//! its buffer. EOF on one side becomes shutdown(SHUT_WR) toward the other while the other
//! direction keeps flowing. Any error (reset, broken pipe, a peer the kernel gave up on:
//! `Side::failed` names which) aborts the whole link: SO_LINGER 0 on both sockets so the
//! peer sees a reset — a truncated stream is never presented as a clean end — and every op
//! still in flight on either socket is cancelled. A watchdog in the same task enforces
//! `idle_timeout`, `max_connection_duration`, the control plane's end requests and the
//! shutdown cut.
//!
//! A requested close ends a link gracefully: the halves stop reading, write what they hold,
//! each sends a FIN to its destination, then the relay reads and drops what the peers
//! still send until they close too (a short linger), so that closing never turns the FIN
//! into an RST.

use std::cell::{Cell, RefCell};
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::time::{Duration, Instant};

mod policy;

use ringlb_config::Forwarding;
use ringlb_scheduler::BackendState;
use socket2::Socket;

use crate::buffers::{BufferPool, PARKED_BUFFER};
use crate::ctx::Cut;
use crate::ending::EndRequest;
pub(crate) use crate::handover::Frozen;
use crate::outcome::{EndMode, EndReason};
use crate::pipes::{Pipe, PipePool, PIPE_SIZE};
use crate::stats::WorkerCounters;
use crate::uring;
use policy::{CopyPolicy, CopyStep, SplicePolicy, SpliceStep, COPY_BUFFER};

const POLLIN: u32 = libc::POLLIN as u32;
const POLLOUT: u32 = libc::POLLOUT as u32;

/// A link past its `max_connection_duration` is closed only after this long without a
/// byte either way, with nothing held and nothing waiting to be read: long enough for a
/// backend to answer the request it was just sent.
pub(crate) const QUIET: Duration = Duration::from_secs(1);
/// A requested close waits this long for the peers to take what the halves hold; a peer
/// that does not read is then reset.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(10);
/// After a requested close, how long the relay waits for the peers' own FIN.
const LINGER: Duration = Duration::from_secs(2);
/// Read buffer of the linger (what it reads is dropped).
const LINGER_BUFFER: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dir {
    ClientToBackend,
    BackendToClient,
}

impl Dir {
    /// The leg this direction reads from.
    fn source(self) -> Side {
        match self {
            Dir::ClientToBackend => Side::Client,
            Dir::BackendToClient => Side::Backend,
        }
    }

    /// The leg this direction writes to.
    fn destination(self) -> Side {
        match self {
            Dir::ClientToBackend => Side::Backend,
            Dir::BackendToClient => Side::Client,
        }
    }

    fn eof_reason(self) -> EndReason {
        match self {
            Dir::ClientToBackend => EndReason::ClientClose,
            Dir::BackendToClient => EndReason::BackendClose,
        }
    }
}

/// One leg of the link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Client,
    Backend,
}

impl Side {
    /// How the link ends when this leg reset or a write to it went nowhere.
    fn reset(self) -> EndReason {
        match self {
            Side::Client => EndReason::ClientReset,
            Side::Backend => EndReason::BackendReset,
        }
    }

    /// How the link ends when an operation on this leg's socket failed with `e`.
    fn failed(self, e: &io::Error) -> EndReason {
        match (self, kernel_gave_up(e)) {
            (Side::Client, true) => EndReason::ClientTimedOut,
            (Side::Backend, true) => EndReason::BackendTimedOut,
            (side, false) => side.reset(),
        }
    }
}

/// Whether the kernel itself dropped the connection because its peer stopped answering:
/// keepalive probes or (with TCP_USER_TIMEOUT) sent data went unacknowledged too long, or
/// retransmissions ran out (`net.ipv4.tcp_retries2`). It reports ETIMEDOUT, or the ICMP
/// error it last heard (host or network unreachable): an established socket without
/// IP_RECVERR reports those only when such a timer gives up.
fn kernel_gave_up(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ETIMEDOUT) | Some(libc::EHOSTUNREACH) | Some(libc::ENETUNREACH)
    )
}

/// What a finished relay reports for counters and the access log.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RelayReport {
    /// Client → backend.
    pub(crate) bytes_in: u64,
    /// Backend → client.
    pub(crate) bytes_out: u64,
    pub(crate) end: EndReason,
}

/// How a relay ended: forwarded to its end, or frozen for a live upgrade.
#[derive(Debug)]
pub(crate) enum RelayEnd {
    Ended(RelayReport),
    /// Stopped at a clean point for a live upgrade: nothing is in flight on either socket
    /// and every byte read but not yet written is in `carry`.
    Frozen(Frozen),
}

/// What a relay runs with, besides its two sockets.
pub(crate) struct RelayContext<'a> {
    pub(crate) forwarding: Forwarding,
    pub(crate) idle_timeout: Duration,
    pub(crate) counters: &'a WorkerCounters,
    /// Fires when shutdown_timeout expires: reset the link.
    pub(crate) cut: &'a Cut,
    /// Fires when a live upgrade takes the connections: freeze the link.
    pub(crate) handover: &'a Cut,
    pub(crate) pipes: &'a PipePool,
    pub(crate) buffers: &'a BufferPool,
    /// Answer times: sampled for least_latency, watched for `response_timeout`.
    pub(crate) answers: Option<AnswerWatch<'a>>,
    /// The control plane's request to end this link (`None`: it cannot be named, its
    /// backend having been removed by a reload before a live upgrade brought it here).
    pub(crate) end: Option<&'a EndRequest>,
    /// Past this moment (`max_connection_duration` with its jitter) the link is closed
    /// as soon as it is quiet.
    pub(crate) max_age: Option<Instant>,
    /// `connection_report_interval`: who is told how the link is doing, and how often.
    /// `None` costs nothing: no timer is armed.
    pub(crate) progress: Option<ProgressWatch<'a>>,
}

/// A link's progress, every `every`: bytes each way since it started and how long it has
/// been idle.
#[derive(Clone, Copy)]
pub(crate) struct ProgressWatch<'a> {
    pub(crate) every: Duration,
    pub(crate) report: &'a dyn Fn(LinkProgress),
}

/// What [`ProgressWatch::report`] is told.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LinkProgress {
    /// Client → backend since the connection started (before a live upgrade too).
    pub(crate) bytes_in: u64,
    /// Backend → client since the connection started.
    pub(crate) bytes_out: u64,
    pub(crate) idle: Duration,
}

/// Who watches a link's answer times, and for what.
#[derive(Clone, Copy)]
pub(crate) struct AnswerWatch<'a> {
    pub(crate) backend: &'a BackendState,
    /// Feed each exchange's answer time to the backend's latency average (least_latency).
    pub(crate) sample: bool,
    /// Count a backend silent this long after a client's bytes as a passive failure.
    pub(crate) timeout: Option<Duration>,
}

/// State both halves and the watchdog share. One task owns it, so `Cell` suffices.
struct Link<'a> {
    client: Rc<Socket>,
    backend: Rc<Socket>,
    aborted: Cell<Option<EndReason>>,
    /// Stopping for a live upgrade: halves stop issuing operations and keep what they hold.
    frozen: Cell<bool>,
    /// A requested close: halves stop reading and write out what they hold.
    closing: Cell<Option<EndReason>>,
    /// Halves holding bytes they have not written yet.
    writing: Cell<u8>,
    /// Per direction (`Dir as usize`): read, not yet written. Filled when frozen; at the
    /// start of a resumed relay, what the previous process handed over.
    carry: [RefCell<Vec<u8>>; 2],
    first_eof: Cell<Option<EndReason>>,
    last_activity: Cell<Instant>,
    /// Per direction (`Dir as usize`): read so far, for progress records; starts at what
    /// the previous process forwarded.
    so_far: [Cell<u64>; 2],
    counters: &'a WorkerCounters,
    answers: Option<AnswerWatch<'a>>,
    /// When client bytes went to the backend with no answer seen since.
    asked_at: Cell<Option<Instant>>,
    /// This unanswered exchange was already counted as a response timeout.
    silence_reported: Cell<bool>,
}

impl Link<'_> {
    fn sockets(&self, dir: Dir) -> (&Rc<Socket>, &Rc<Socket>) {
        match dir {
            Dir::ClientToBackend => (&self.client, &self.backend),
            Dir::BackendToClient => (&self.backend, &self.client),
        }
    }

    /// Ended or frozen: no new operation may be issued.
    fn is_aborted(&self) -> bool {
        self.aborted.get().is_some() || self.frozen.get()
    }

    /// Whether a half may start a read: not ended, not frozen, not closing.
    fn may_read(&self) -> bool {
        !self.is_aborted() && self.closing.get().is_none()
    }

    /// A requested close under way (not overtaken by an abort).
    fn is_closing(&self) -> bool {
        self.closing.get().is_some() && !self.is_aborted()
    }

    /// Start a requested close: halves stop reading; what they hold is still written.
    /// Cancelling everything in flight wakes the reads; a cancelled write is issued again.
    async fn close(&self, reason: EndReason) {
        if !self.may_read() {
            return;
        }
        self.closing.set(Some(reason));
        uring::cancel_all(self.client.as_raw_fd()).await;
        uring::cancel_all(self.backend.as_raw_fd()).await;
    }

    /// Counts a half holding unwritten bytes until the guard drops.
    fn writing(&self) -> Writing<'_> {
        self.writing.set(self.writing.get() + 1);
        Writing(&self.writing)
    }

    /// Nothing moving: no byte either way for [`QUIET`], none held by a half and none
    /// waiting in either socket.
    fn is_quiet(&self) -> bool {
        self.last_activity.get().elapsed() >= QUIET
            && self.writing.get() == 0
            && !has_unread(&self.client)
            && !has_unread(&self.backend)
    }

    /// Stop for a live upgrade: no FIN, no RST; cancel what is in flight, and let each half
    /// keep the bytes it holds (`hold`).
    async fn freeze(&self) {
        if self.is_aborted() {
            return;
        }
        self.frozen.set(true);
        uring::cancel_all(self.client.as_raw_fd()).await;
        uring::cancel_all(self.backend.as_raw_fd()).await;
    }

    /// A readiness wait, unless the link already ended or froze (or, to read, is
    /// closing): an operation submitted after `abort`/`freeze`/`close` cancelled the
    /// others would never be cancelled itself, so every submission is checked right
    /// before it (no await in between).
    async fn poll(&self, socket: &Rc<Socket>, events: u32) -> io::Result<u32> {
        let allowed = if events & POLLIN != 0 {
            self.may_read()
        } else {
            !self.is_aborted()
        };
        if !allowed {
            return Err(io::Error::from_raw_os_error(libc::ECANCELED));
        }
        uring::poll(socket, events).await
    }

    /// Keep bytes read in `dir` and not written, for the process the link moves to.
    fn hold(&self, dir: Dir, bytes: &[u8]) {
        self.carry[dir as usize]
            .borrow_mut()
            .extend_from_slice(bytes);
    }

    /// End the link. `reset`: SO_LINGER 0 so closing sends RST to both peers. Otherwise
    /// (idle timeout) both get a FIN. Then cancel whatever is in flight on either socket.
    async fn abort(&self, reason: EndReason, reset: bool) {
        if self.is_aborted() {
            return;
        }
        self.aborted.set(Some(reason));
        for socket in [&self.client, &self.backend] {
            if reset {
                let _ = socket.set_linger(Some(Duration::ZERO));
            } else {
                let _ = socket.shutdown(std::net::Shutdown::Both);
            }
        }
        uring::cancel_all(self.client.as_raw_fd()).await;
        uring::cancel_all(self.backend.as_raw_fd()).await;
    }

    fn touch(&self, dir: Dir, n: usize) {
        let now = Instant::now();
        self.last_activity.set(now);
        let so_far = &self.so_far[dir as usize];
        so_far.set(so_far.get() + n as u64);
        match dir {
            Dir::ClientToBackend => self.counters.bytes_in.add(n as u64),
            Dir::BackendToClient => self.counters.bytes_out.add(n as u64),
        }
        if let Some(answers) = self.answers {
            self.answer_time(answers, dir, now);
        }
    }

    /// One exchange: from the first client bytes forwarded after an answer to the first
    /// backend bytes after them. Uses the time `touch` read anyway.
    fn answer_time(&self, answers: AnswerWatch<'_>, dir: Dir, now: Instant) {
        match dir {
            Dir::ClientToBackend => {
                if self.asked_at.get().is_none() {
                    self.asked_at.set(Some(now));
                }
            }
            Dir::BackendToClient => {
                self.silence_reported.set(false);
                if let Some(asked) = self.asked_at.take() {
                    if answers.sample {
                        answers
                            .backend
                            .record_latency(now.saturating_duration_since(asked));
                    }
                }
            }
        }
    }

    fn progress(&self) -> LinkProgress {
        LinkProgress {
            bytes_in: self.so_far[Dir::ClientToBackend as usize].get(),
            bytes_out: self.so_far[Dir::BackendToClient as usize].get(),
            idle: self.last_activity.get().elapsed(),
        }
    }

    fn eof(&self, dir: Dir) {
        if self.first_eof.get().is_none() {
            self.first_eof.set(Some(dir.eof_reason()));
        }
        let (_, to) = self.sockets(dir);
        // Half-close: the peer reads EOF while the other direction keeps flowing.
        let _ = to.shutdown(std::net::Shutdown::Write);
    }
}

/// One half holding unwritten bytes; see [`Link::writing`].
struct Writing<'l>(&'l Cell<u8>);

impl Drop for Writing<'_> {
    fn drop(&mut self) {
        self.0.set(self.0.get().saturating_sub(1));
    }
}

fn is_cancelled(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::ECANCELED)
}

/// Whether bytes wait in `socket`'s receive queue (a peek that never blocks).
fn has_unread(socket: &Socket) -> bool {
    let mut byte = [MaybeUninit::<u8>::uninit()];
    matches!(
        socket.recv_with_flags(&mut byte, libc::MSG_PEEK | libc::MSG_DONTWAIT),
        Ok(n) if n > 0
    )
}

/// Forward until both directions are done, or until a live upgrade freezes the link.
/// `resumed`: a link the previous process froze (its carried bytes are written first).
pub(crate) async fn relay(
    client: Rc<Socket>,
    backend: Rc<Socket>,
    cx: &RelayContext<'_>,
    resumed: Option<Frozen>,
) -> RelayEnd {
    let resumed = resumed.unwrap_or_default();
    let link = Link {
        client,
        backend,
        aborted: Cell::new(None),
        frozen: Cell::new(false),
        closing: Cell::new(None),
        writing: Cell::new(0),
        carry: [
            RefCell::new(resumed.to_backend),
            RefCell::new(resumed.to_client),
        ],
        first_eof: Cell::new(None),
        last_activity: Cell::new(
            Instant::now()
                .checked_sub(resumed.idle)
                .unwrap_or_else(Instant::now),
        ),
        so_far: [Cell::new(resumed.bytes_in), Cell::new(resumed.bytes_out)],
        counters: cx.counters,
        answers: cx.answers,
        asked_at: Cell::new(None),
        silence_reported: Cell::new(false),
    };
    let halves = async {
        tokio::join!(
            half(&link, Dir::ClientToBackend, cx),
            half(&link, Dir::BackendToClient, cx)
        )
    };
    let (up, down) = tokio::select! {
        biased;
        done = halves => done,
        never = watchdog(&link, cx) => match never {},
    };
    if link.is_closing() {
        linger(&link).await;
    }
    let (bytes_in, bytes_out) = (resumed.bytes_in + up, resumed.bytes_out + down);
    if link.frozen.get() && link.aborted.get().is_none() {
        let [to_backend, to_client] = link.carry;
        return RelayEnd::Frozen(Frozen {
            to_backend: to_backend.into_inner(),
            to_client: to_client.into_inner(),
            idle: link.last_activity.get().elapsed(),
            bytes_in,
            bytes_out,
        });
    }
    // A requested end says why, whatever the peers did while it was carried out.
    let end = link
        .closing
        .get()
        .or(link.aborted.get())
        .or(link.first_eof.get())
        .unwrap_or(EndReason::LocalError);
    RelayEnd::Ended(RelayReport {
        bytes_in,
        bytes_out,
        end,
    })
}

/// Enforces idle_timeout, max_connection_duration, the control plane's end request, the
/// drain cut and the upgrade freeze; never completes (the halves end the relay).
async fn watchdog(link: &Link<'_>, cx: &RelayContext<'_>) -> std::convert::Infallible {
    let idle_timeout = cx.idle_timeout;
    let mut next_report = cx.progress.map(|p| Instant::now() + p.every);
    let requested = loop {
        let deadline = link.last_activity.get() + idle_timeout;
        tokio::select! {
            _ = tokio::time::sleep_until(deadline.into()) => {
                if link.last_activity.get().elapsed() >= idle_timeout {
                    link.abort(EndReason::IdleTimeout, false).await;
                    break None;
                }
            }
            _ = cx.cut.wait() => {
                link.abort(EndReason::DrainCut, true).await;
                break None;
            }
            _ = cx.handover.wait() => {
                link.freeze().await;
                break None;
            }
            order = end_requested(cx.end) => break Some((order.reason(), order.mode)),
            backend = unanswered(link) => {
                // Passive health: one failure toward `fall`; the link itself goes on.
                backend.record_response_timeout();
                link.silence_reported.set(true);
            }
            _ = old_and_quiet(link, cx.max_age) => {
                break Some((EndReason::MaxDuration, EndMode::Close));
            }
            () = at(next_report) => {
                if let Some(p) = cx.progress {
                    (p.report)(link.progress());
                    next_report = next_report.map(|t| next_tick(t, p.every, Instant::now()));
                }
            }
        }
    };
    match requested {
        Some((reason, EndMode::Reset)) => link.abort(reason, true).await,
        Some((reason, EndMode::Close)) => {
            link.close(reason).await;
            // The halves end the relay once they have written what they hold; a peer that
            // does not take it in time, or the shutdown cut, gets a reset instead.
            tokio::select! {
                _ = tokio::time::sleep(FLUSH_TIMEOUT) => {}
                _ = cx.cut.wait() => {}
            }
            link.abort(reason, true).await;
        }
        None => {}
    }
    std::future::pending().await
}

/// Completes when client bytes have waited `response_timeout` for an answer (once per
/// exchange); yields the backend to blame.
async fn unanswered<'a>(link: &Link<'a>) -> &'a BackendState {
    let Some((backend, timeout)) = link.answers.and_then(|a| a.timeout.map(|t| (a.backend, t)))
    else {
        return std::future::pending().await;
    };
    loop {
        match link.asked_at.get() {
            Some(asked) if !link.silence_reported.get() => {
                let due = asked + timeout;
                if Instant::now() >= due {
                    return backend;
                }
                tokio::time::sleep_until(due.into()).await;
            }
            // Nothing asked, or this silence already counted: look again later.
            _ => tokio::time::sleep(timeout).await,
        }
    }
}

/// The report after the one due at `due`: one `every` later, skipping the moments a
/// late-running worker already missed, so a stalled worker does not catch up with a burst.
fn next_tick(due: Instant, every: Duration, now: Instant) -> Instant {
    let mut next = due + every;
    if next <= now {
        let missed = (now - next).as_nanos() / every.as_nanos().max(1) + 1;
        next += every * u32::try_from(missed).unwrap_or(u32::MAX);
    }
    next
}

/// Completes at `moment`; never when there is none (no timer is armed).
async fn at(moment: Option<Instant>) {
    match moment {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}

async fn end_requested(end: Option<&EndRequest>) -> crate::outcome::EndOrder {
    match end {
        Some(end) => end.due().await,
        None => std::future::pending().await,
    }
}

/// Completes once the link is past `max_age` and quiet (see [`Link::is_quiet`]).
async fn old_and_quiet(link: &Link<'_>, max_age: Option<Instant>) {
    let Some(max_age) = max_age else {
        return std::future::pending().await;
    };
    tokio::time::sleep_until(max_age.into()).await;
    while !link.is_quiet() {
        let quiet_at = (link.last_activity.get() + QUIET).max(Instant::now() + QUIET / 4);
        tokio::time::sleep_until(quiet_at.into()).await;
    }
}

/// After a requested close: read and drop what each peer still sends until it closes its
/// side too, for at most [`LINGER`]. Closing a socket with unread bytes would send an RST
/// in place of the clean end both peers were just given.
async fn linger(link: &Link<'_>) {
    async fn drain(socket: &Rc<Socket>) {
        let mut buf = Vec::with_capacity(LINGER_BUFFER);
        // A readiness wait first: a socket made non-blocking for splice would fail an
        // immediate recv with EAGAIN.
        while uring::poll(socket, POLLIN).await.is_ok() {
            let (res, returned) = uring::recv(socket, buf, false).await;
            buf = returned;
            match res {
                Ok(0) => return,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => {}
                Err(_) => return,
            }
        }
    }
    let both = async { tokio::join!(drain(&link.client), drain(&link.backend)) };
    if tokio::time::timeout(LINGER, both).await.is_err() {
        // The dropped reads are still in flight, holding the sockets open: cancel them.
        uring::cancel_all(link.client.as_raw_fd()).await;
        uring::cancel_all(link.backend.as_raw_fd()).await;
    }
}

/// One direction. Returns the bytes it forwarded.
async fn half(link: &Link<'_>, dir: Dir, cx: &RelayContext<'_>) -> u64 {
    let forwarded = forward_dir(link, dir, cx).await;
    if link.is_closing() {
        // A requested close: this direction stopped reading and wrote all it held.
        let (_, to) = link.sockets(dir);
        let _ = to.shutdown(std::net::Shutdown::Write);
    }
    forwarded
}

async fn forward_dir(link: &Link<'_>, dir: Dir, cx: &RelayContext<'_>) -> u64 {
    let (forwarding, pipes) = (cx.forwarding, cx.pipes);
    let (from, _) = link.sockets(dir);
    let mut forwarded = 0;
    // A resumed link first writes what the previous process had read and not written.
    let carried = std::mem::take(&mut *link.carry[dir as usize].borrow_mut());
    let carried_none = carried.is_empty();
    if !carried.is_empty() {
        let n = carried.len() as u64;
        if write_out(link, dir, carried).await.is_none() {
            return forwarded;
        }
        forwarded += n;
        let so_far = &link.so_far[dir as usize];
        so_far.set(so_far.get() + n);
    }
    // Splice: a readiness gate, so a pipe is committed only once this direction has data.
    // Copy waits on its small parked buffer instead, one operation rather than a poll and
    // a recv: the client's first bytes are usually there already when the backend is
    // connected (try them at once), the backend's come only after them (wait first).
    if forwarding == Forwarding::Splice {
        match link.poll(from, POLLIN).await {
            Ok(_) => {}
            Err(e) if is_cancelled(&e) => return forwarded,
            Err(e) => {
                link.abort(dir.source().failed(&e), true).await;
                return forwarded;
            }
        }
    }
    let auto = forwarding == Forwarding::Auto;
    let mut data_waiting = dir == Dir::ClientToBackend && carried_none;
    loop {
        if forwarding != Forwarding::Splice {
            match copy_half(link, dir, auto, cx.buffers, data_waiting, &mut forwarded).await {
                CopyEnd::Done => return forwarded,
                CopyEnd::Bulk => link.counters.splice_switches.add(1),
            }
        }
        match splice_half(link, dir, pipes, auto, &mut forwarded).await {
            SpliceEnd::Done => return forwarded,
            SpliceEnd::NoPipe => {
                // It gave up after a readiness poll said data is there.
                copy_half(link, dir, false, cx.buffers, true, &mut forwarded).await;
                return forwarded;
            }
            // A long-lived link back to small messages after a bulk phase (its last
            // burst emptied the socket).
            SpliceEnd::BackToCopy => {
                link.counters.copy_switches.add(1);
                data_waiting = false;
            }
        }
    }
}

/// Write all of `buf` to `dir`'s destination; the emptied buffer comes back for reuse.
/// `None`: the link ended or froze (what was not written is held for the next process).
async fn write_out(link: &Link<'_>, dir: Dir, mut buf: Vec<u8>) -> Option<Vec<u8>> {
    let (_, to) = link.sockets(dir);
    let _writing = link.writing();
    let mut offset = 0;
    while offset < buf.len() {
        if link.is_aborted() {
            if link.frozen.get() {
                link.hold(dir, &buf[offset..]);
            }
            return None;
        }
        let (res, returned) = uring::send(to, buf, offset).await;
        buf = returned;
        match res {
            Ok(0) => {
                link.abort(dir.destination().reset(), true).await;
                return None;
            }
            Ok(n) => offset += n,
            // Frozen or aborted: decided at the loop's top; closing: written again.
            Err(e) if is_cancelled(&e) => {}
            Err(e) => {
                link.abort(dir.destination().failed(&e), true).await;
                return None;
            }
        }
    }
    buf.clear();
    Some(buf)
}

enum CopyEnd {
    Done,
    /// `auto` saw a bulk stream: continue this direction with splice.
    Bulk,
}

/// Copy `dir` until it ends or (`auto`) turns bulk. It starts on the parked buffer:
/// `data_waiting` says whether to try the first recv at once or wait for readiness first.
async fn copy_half(
    link: &Link<'_>,
    dir: Dir,
    auto: bool,
    buffers: &BufferPool,
    data_waiting: bool,
    forwarded: &mut u64,
) -> CopyEnd {
    let (from, _) = link.sockets(dir);
    let mut working: Option<Vec<u8>> = None;
    // Waited on between small messages.
    let mut parked = Vec::with_capacity(PARKED_BUFFER);
    let mut policy = CopyPolicy::new(auto);
    let mut drained = !data_waiting;
    let end = loop {
        if !link.may_read() {
            break CopyEnd::Done;
        }
        let waiting_parked = working.is_none();
        let buf = working
            .take()
            .unwrap_or_else(|| std::mem::take(&mut parked));
        let (res, buf) = uring::recv(from, buf, drained).await;
        let n = match res {
            Ok(0) => {
                if !link.is_aborted() {
                    link.eof(dir);
                }
                break CopyEnd::Done;
            }
            Ok(n) => n,
            Err(e) if is_cancelled(&e) => break CopyEnd::Done,
            Err(e) => {
                link.abort(dir.source().failed(&e), true).await;
                break CopyEnd::Done;
            }
        };
        link.touch(dir, n);
        // A short read emptied the socket; a full one probably left more behind.
        let capacity = buf.capacity();
        drained = n < capacity;
        let Some(buf) = write_out(link, dir, buf).await else {
            break CopyEnd::Done;
        };
        *forwarded += n as u64;
        if waiting_parked {
            parked = buf;
            if !drained {
                // A bigger message than the parked buffer: read the rest with a working one.
                working = Some(buffers.take());
            }
            policy.after_read(n, COPY_BUFFER);
            continue;
        }
        let mut buf = buf;
        match policy.after_read(n, capacity) {
            CopyStep::Keep => {}
            CopyStep::Splice => {
                buffers.give(buf);
                break CopyEnd::Bulk;
            }
            CopyStep::Grow(capacity) => {
                buffers.give(buf);
                buf = Vec::with_capacity(capacity);
                link.counters.bulk_buffer_grows.add(1);
            }
            CopyStep::Shrink(_) => buf = buffers.take(),
        }
        if policy.parks_after(n, drained, buf.capacity()) {
            buffers.give(buf);
        } else {
            working = Some(buf);
        }
    };
    if let Some(buf) = working {
        buffers.give(buf);
    }
    end
}

enum SpliceEnd {
    Done,
    /// No pipe could be had (fd limit): continue this direction by copying.
    NoPipe,
    /// `auto`: the bulk phase is over (only small bursts lately): copy again.
    BackToCopy,
}

/// socket → pipe → socket. Every splice is non-blocking and issued only after a readiness
/// poll says it can progress, so none sits parked on an io-wq thread.
async fn splice_half(
    link: &Link<'_>,
    dir: Dir,
    pipes: &PipePool,
    auto: bool,
    forwarded: &mut u64,
) -> SpliceEnd {
    let (from, to) = link.sockets(dir);
    // tcp_splice_read blocks according to the socket's O_NONBLOCK, not SPLICE_F_NONBLOCK
    // (which only covers the pipe): without this, a splice on a drained socket would park
    // an io-wq thread, and with the bounded pool every spliced connection would stall.
    for socket in [from, to] {
        if let Err(e) = socket.set_nonblocking(true) {
            log::warn!("cannot make a socket non-blocking for splice ({e}); closing connection");
            link.abort(EndReason::LocalError, true).await;
            return SpliceEnd::Done;
        }
    }
    let mut policy = SplicePolicy::new(auto);
    loop {
        if !link.may_read() {
            return SpliceEnd::Done;
        }
        let pipe = match pipes.take() {
            Ok(pipe) => pipe,
            Err(e) => {
                log::debug!("no splice pipe ({e}); copying instead");
                return SpliceEnd::NoPipe;
            }
        };
        let before = *forwarded;
        if !splice_burst(link, dir, &pipe, forwarded).await {
            if link.frozen.get() {
                // Spliced in, not yet out: the next process writes it.
                match pipe.read_all() {
                    Ok(held) => link.hold(dir, &held),
                    Err(e) => log::warn!("cannot read a pipe being handed over: {e}"),
                }
            }
            return SpliceEnd::Done;
        }
        pipes.give(pipe);
        if policy.after_burst(*forwarded - before) == SpliceStep::Copy {
            return SpliceEnd::BackToCopy;
        }
        match link.poll(from, POLLIN).await {
            Ok(_) => {}
            Err(e) if is_cancelled(&e) => return SpliceEnd::Done,
            Err(e) => {
                link.abort(dir.source().failed(&e), true).await;
                return SpliceEnd::Done;
            }
        }
    }
}

/// Splice until the source socket runs dry (true: the pipe is empty again) or the
/// direction ends (false).
async fn splice_burst(link: &Link<'_>, dir: Dir, pipe: &Rc<Pipe>, forwarded: &mut u64) -> bool {
    let (from, to) = link.sockets(dir);
    let (from_fd, to_fd) = (from.as_raw_fd(), to.as_raw_fd());
    let (pipe_r, pipe_w) = (pipe.read.as_raw_fd(), pipe.write.as_raw_fd());
    let keep = || (Rc::clone(from), Rc::clone(to), Rc::clone(pipe));
    loop {
        // The pipe is empty here: a close ends the direction without losing a byte.
        if !link.may_read() {
            return false;
        }
        let (res, _) = uring::splice(from_fd, pipe_w, PIPE_SIZE as u32, keep()).await;
        let n = match res {
            Ok(0) => {
                if !link.is_aborted() {
                    link.eof(dir);
                }
                return false;
            }
            Ok(n) => n,
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => return true,
            Err(e) if is_cancelled(&e) => return false,
            Err(e) => {
                link.abort(dir.source().failed(&e), true).await;
                return false;
            }
        };
        link.touch(dir, n);
        if !drain_pipe(link, dir, pipe_r, to_fd, n, &keep).await {
            return false;
        }
        *forwarded += n as u64;
    }
}

/// Move `pending` bytes from the pipe to the destination socket. False if the link ended.
async fn drain_pipe<K: Unpin + 'static>(
    link: &Link<'_>,
    dir: Dir,
    pipe_r: RawFd,
    to_fd: RawFd,
    mut pending: usize,
    keep: &impl Fn() -> K,
) -> bool {
    let (_, to) = link.sockets(dir);
    let _writing = link.writing();
    while pending > 0 {
        if link.is_aborted() {
            return false;
        }
        let (res, _) = uring::splice(pipe_r, to_fd, pending as u32, keep()).await;
        match res {
            Ok(0) => {
                link.abort(dir.destination().reset(), true).await;
                return false;
            }
            Ok(m) => pending -= m.min(pending),
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => {
                match link.poll(to, POLLOUT).await {
                    Ok(_) => {}
                    // Frozen or aborted: decided at the loop's top; closing: written again.
                    Err(e) if is_cancelled(&e) => {}
                    Err(e) => {
                        link.abort(dir.destination().failed(&e), true).await;
                        return false;
                    }
                }
            }
            Err(e) if is_cancelled(&e) => {}
            Err(e) => {
                link.abort(dir.destination().failed(&e), true).await;
                return false;
            }
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_reports_keep_their_rhythm_and_skip_what_was_missed() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        assert_eq!(next_tick(t0, s(2), t0), t0 + s(2));
        assert_eq!(next_tick(t0, s(2), t0 + s(1)), t0 + s(2), "on time");
        assert_eq!(
            next_tick(t0, s(2), t0 + s(2)),
            t0 + s(4),
            "exactly due: the next"
        );
        assert_eq!(
            next_tick(t0, s(2), t0 + s(7)),
            t0 + s(8),
            "late: 4 and 6 skipped"
        );
    }

    #[test]
    fn a_leg_the_kernel_gave_up_on_timed_out_any_other_failure_is_a_reset() {
        let err = io::Error::from_raw_os_error;
        for (errno, client, backend) in [
            (
                libc::ETIMEDOUT,
                EndReason::ClientTimedOut,
                EndReason::BackendTimedOut,
            ),
            (
                libc::EHOSTUNREACH,
                EndReason::ClientTimedOut,
                EndReason::BackendTimedOut,
            ),
            (
                libc::ENETUNREACH,
                EndReason::ClientTimedOut,
                EndReason::BackendTimedOut,
            ),
            (
                libc::ECONNRESET,
                EndReason::ClientReset,
                EndReason::BackendReset,
            ),
            (libc::EPIPE, EndReason::ClientReset, EndReason::BackendReset),
        ] {
            assert_eq!(Side::Client.failed(&err(errno)), client, "errno {errno}");
            assert_eq!(Side::Backend.failed(&err(errno)), backend, "errno {errno}");
        }
        // A failure reading the backend is the backend's; writing to it, too.
        assert_eq!(Dir::BackendToClient.source(), Side::Backend);
        assert_eq!(Dir::ClientToBackend.destination(), Side::Backend);
        assert_eq!(Dir::ClientToBackend.source(), Side::Client);
        assert_eq!(Dir::BackendToClient.destination(), Side::Client);
    }
}
