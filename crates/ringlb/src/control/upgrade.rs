//! Live upgrade, old process's side: start the new binary on the same configuration, hand
//! it the listening sockets, wait until it serves, then freeze every established TCP
//! connection and hand it over (both sockets and the bytes in flight). The protocol is in
//! docs/upgrade.md; the new process's side is in `inherit`.
//!
//! Until the new process says `ready`, nothing here changes what this process serves: on
//! any failure it is killed and this process goes on. After that, a new process that dies
//! gives back every connection it had not acknowledged, and this process serves them again.

use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command as Process, Stdio};
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use ringlb_dataplane::worker::{Command, WorkerEvent};
use ringlb_dataplane::{Moved, MovedConn, MovedSession};

use super::ControlPlane;
use crate::notify::notify_or_log;
use crate::readiness::Phase;
use crate::upgrade::wire::{
    Channel, ConnHeader, Msg, SessionHeader, WireError, CHUNK, ENV_FD, MAX_FDS, VERSION,
};

/// How long the new process may take to start and say hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// How long it may take to start its workers on the sockets it was given.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Poll granularity while waiting on the channel and the workers together.
const TICK: Duration = Duration::from_millis(1);

/// What an upgrade did, for its summary line.
#[derive(Debug)]
pub(super) struct Handed {
    pub(super) pid: u32,
    pub(super) listeners: usize,
    pub(super) conns: u64,
    pub(super) sessions: u64,
    pub(super) took: Duration,
}

/// What `ringlb upgrade` is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct UpgradeOutcome {
    /// The process now serving.
    pub new_pid: u32,
}

impl ControlPlane {
    /// `ringlb upgrade`, `ringlb ctl upgrade` and SIGUSR2: upgrade, with `/ready` saying
    /// `handing over` meanwhile. On success the serve loop exits after replying.
    pub(super) fn start_upgrade(
        &mut self,
        binary: Option<PathBuf>,
    ) -> Result<UpgradeOutcome, String> {
        self.registry.readiness.set_phase(Phase::HandingOver);
        // Written before the new process starts (and opens the log): after a successful
        // handover this process writes no more.
        self.audit(
            "upgrade",
            serde_json::json!({
                "phase": "starting",
                "binary": binary.as_ref().map(|b| b.display().to_string()),
            }),
        );
        let result = self.upgrade(binary);
        match result {
            Ok(handed) => {
                let new_pid = handed.pid;
                self.handed_over = Some(handed);
                Ok(UpgradeOutcome { new_pid })
            }
            Err(e) => {
                self.registry.readiness.set_phase(Phase::Serving);
                self.audit(
                    "upgrade",
                    serde_json::json!({ "phase": "failed", "reason": e }),
                );
                Err(e)
            }
        }
    }

    /// Upgrade to `binary` (default: the binary this process was started from). `Ok`: the
    /// new process serves everything and this one may exit. `Err`: this process still
    /// serves everything it served (or got back), and the reason.
    pub(super) fn upgrade(&mut self, binary: Option<PathBuf>) -> Result<Handed, String> {
        let started = Instant::now();
        let binary = match binary {
            Some(b) => b,
            None => running_binary()?,
        };
        let (ours, theirs) =
            Channel::pair().map_err(|e| format!("cannot create the handover channel: {e}"))?;
        let mut child = spawn_new(&binary, &self.path, &theirs)?;
        drop(theirs);
        let pid = child.id();
        info!(
            "upgrade: started {} (pid {pid}) on {}",
            binary.display(),
            self.path.display()
        );
        if let Err(e) = self.until_ready(&ours, &mut child) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }
        let (conns, sessions) = match self.move_connections(&ours) {
            Ok(moved) => moved,
            Err(e) => {
                // Dead, or alive and owning what it acknowledged: either way not ours to
                // kill. Reap it whenever it exits.
                let _ = std::thread::Builder::new()
                    .name("ringlb-reap".into())
                    .spawn(move || child.wait());
                return Err(e);
            }
        };
        // systemd follows the new process from here. Said before `done`, so that the new
        // process's own MAINPID= and READY=1, sent once it has `done`, come from the main
        // process (a unit with NotifyAccess=main would drop them otherwise).
        notify_or_log(&format!("MAINPID={pid}"));
        let _ = ours.send(
            &Msg::Done {
                conns: conns + sessions,
            },
            &[],
            &[],
        );
        Ok(Handed {
            pid,
            listeners: self.listeners.len(),
            conns,
            sessions,
            took: started.elapsed(),
        })
    }

    /// Hello, listening sockets, ready. Nothing this process serves changes here.
    fn until_ready(&self, ch: &Channel, child: &mut Child) -> Result<(), String> {
        match wait_msg(ch, child, HELLO_TIMEOUT)? {
            Msg::Hello { v, .. } if v == VERSION => {}
            Msg::Hello { v, .. } => {
                return Err(format!(
                    "the new binary speaks handover version {v}, this one {VERSION}"
                ))
            }
            Msg::Failed { reason } => return Err(format!("the new process failed: {reason}")),
            other => {
                return Err(format!(
                    "unexpected first message from the new process: {other:?}"
                ))
            }
        }
        let mut names: Vec<&String> = self.listeners.keys().collect();
        names.sort();
        for name in names {
            let (Some(state), Some(sockets)) = (self.listeners.get(name), self.sockets.get(name))
            else {
                continue;
            };
            let fds: Vec<i32> = sockets.iter().map(|s| s.as_raw_fd()).collect();
            if fds.len() > MAX_FDS {
                return Err(format!(
                    "listener {name} has {} sockets, more than a frame carries ({MAX_FDS})",
                    fds.len()
                ));
            }
            let msg = Msg::Listener {
                name: name.clone(),
                protocol: state.protocol.as_str().to_string(),
                bound: state.bound.to_string(),
                sockets: fds.len(),
            };
            ch.send(&msg, &[], &fds).map_err(|e| e.to_string())?;
        }
        if let Some(admin) = &self.admin_socket {
            let msg = Msg::Listener {
                name: String::new(),
                protocol: "admin".into(),
                bound: admin
                    .local_addr()
                    .map(|a| a.to_string())
                    .unwrap_or_default(),
                sockets: 1,
            };
            ch.send(&msg, &[], &[admin.as_raw_fd()])
                .map_err(|e| e.to_string())?;
        }
        // The operator's drain/maint/weight settings carry over, with or without state_file.
        let book = Msg::AdminState {
            book: self.book.to_json().to_string(),
        };
        ch.send(&book, &[], &[]).map_err(|e| e.to_string())?;
        // The sticky tables too, so returning clients find their backend in the new
        // process from its first connection.
        if let Some(tables) = self.sticky_bytes() {
            let mut chunks = tables.chunks(CHUNK);
            let first = chunks.next().unwrap_or(&[]);
            ch.send(&Msg::Sticky { len: tables.len() }, first, &[])
                .map_err(|e| e.to_string())?;
            for chunk in chunks {
                ch.send(&Msg::StickyData, chunk, &[])
                    .map_err(|e| e.to_string())?;
            }
        }
        ch.send(
            &Msg::ListenersEnd {
                workers: self.workers.len(),
            },
            &[],
            &[],
        )
        .map_err(|e| e.to_string())?;
        match wait_msg(ch, child, READY_TIMEOUT)? {
            Msg::Ready => Ok(()),
            Msg::Failed { reason } => Err(format!("the new process failed: {reason}")),
            other => Err(format!(
                "unexpected message from the new process: {other:?}"
            )),
        }
    }

    /// Freeze every TCP connection and send it over; wait for each acknowledgement. If the
    /// new process goes away, what it had not acknowledged is served here again.
    /// Returns how many connections and sessions moved.
    fn move_connections(&mut self, ch: &Channel) -> Result<(u64, u64), String> {
        let (sink, moved) = crossbeam_channel::unbounded();
        self.broadcast(|| Command::Freeze { sink: sink.clone() });
        drop(sink);
        let timeout = self.config.shutdown_timeout;
        let deadline = Instant::now() + timeout;
        let mut unacked: HashMap<u64, Moved> = HashMap::new();
        let (mut next_id, mut frozen, mut sessions) = (0u64, 0usize, 0u64);
        let failure = loop {
            if frozen == self.workers.len() && unacked.is_empty() && moved.is_empty() {
                return Ok((next_id - sessions, sessions));
            }
            if Instant::now() >= deadline {
                // The new process serves; what did not move in time drains here, as a
                // normal shutdown would drain it.
                let taken = (next_id - unacked.len() as u64, sessions);
                self.drain_the_rest(unacked.into_values().collect(), &moved, timeout);
                return Ok(taken);
            }
            if let Ok(item) = moved.recv_timeout(TICK) {
                let sent = match &item {
                    Moved::Conn(conn) => send_conn(ch, next_id, conn),
                    Moved::Session(session) => {
                        sessions += 1;
                        send_session(ch, next_id, session)
                    }
                };
                unacked.insert(next_id, item);
                next_id += 1;
                if let Err(e) = sent {
                    break e.to_string();
                }
            }
            while let Ok(event) = self.events.try_recv() {
                if let WorkerEvent::Frozen { .. } = event {
                    frozen += 1;
                }
            }
            // Every acknowledgement waiting, not one per turn: the new process must never
            // wait on a full channel for us.
            let acks = loop {
                match ch.recv(Duration::ZERO) {
                    Ok(frame) => {
                        if let Msg::Adopted { id } = frame.msg {
                            unacked.remove(&id);
                        }
                    }
                    Err(WireError::Timeout(_)) => break Ok(()),
                    Err(e) => break Err(e),
                }
            };
            if let Err(e) = acks {
                break e.to_string();
            }
        };
        let acked = next_id - unacked.len() as u64;
        self.call_off(unacked.into_values().collect(), &moved, acked);
        Err(failure)
    }

    /// Workers stop freezing; returns everything frozen that did not reach the new process.
    fn thaw(&self, mut back: Vec<Moved>, moved: &Receiver<Moved>) -> Vec<Moved> {
        self.broadcast(|| Command::Thaw);
        // Until every worker has thawed, frozen connections may still arrive.
        let mut thawed = 0;
        let deadline = Instant::now() + Duration::from_secs(10);
        while thawed < self.workers.len() && Instant::now() < deadline {
            if let Ok(WorkerEvent::Thawed { .. }) = self.events.recv_timeout(TICK) {
                thawed += 1;
            }
        }
        back.extend(moved.try_iter());
        back
    }

    /// Each item to the worker of its index (its listener must be running there).
    fn adopt_here(&self, back: Vec<Moved>) {
        for item in back {
            if let Err(e) = self.adopt_on_worker(item) {
                error!("upgrade: a connection taken back is lost: {e}");
            }
        }
    }

    /// The move took longer than `shutdown_timeout` while the new process serves: serve
    /// here, without accepting, what did not move; the shutdown that follows drains it.
    fn drain_the_rest(&mut self, back: Vec<Moved>, moved: &Receiver<Moved>, timeout: Duration) {
        let back = self.thaw(back, moved);
        let n = back.len();
        // A listener must run for what comes back to be adopted by its name; it stops
        // accepting again at once, and its connections stay.
        self.restart_accepting();
        self.adopt_here(back);
        let names: Vec<String> = self.listeners.keys().cloned().collect();
        for name in names {
            self.broadcast(|| Command::Stop { name: name.clone() });
        }
        warn!(
            "upgrade: connections still moving after {timeout:?} (shutdown_timeout); {n} frozen one(s) taken back; what this process still holds drains here while the new process serves"
        );
    }

    /// The new process is gone: serve here again every connection it had not
    /// acknowledged, and accept again on every listener.
    /// `acked`: what the new process had acknowledged (its own from then on).
    fn call_off(&mut self, back: Vec<Moved>, moved: &Receiver<Moved>, acked: u64) {
        let back = self.thaw(back, moved);
        let n = back.len();
        // Listeners first: what comes back is adopted by the listener of its name.
        self.restart_accepting();
        self.adopt_here(back);
        warn!(
            "upgrade called off: {n} connection(s) and session(s) served here again, {acked} taken by the new process before it failed; accepting again"
        );
    }
}

/// The binary this process was started from. When a package replaced it, /proc/self/exe
/// names the old file with " (deleted)": the path is what counts.
fn running_binary() -> Result<PathBuf, String> {
    let exe =
        std::env::current_exe().map_err(|e| format!("cannot find the running binary: {e}"))?;
    let text = exe.to_string_lossy();
    Ok(match text.strip_suffix(" (deleted)") {
        Some(path) => PathBuf::from(path),
        None => exe,
    })
}

/// Start `binary run --config PATH` with the channel's other end inherited.
fn spawn_new(binary: &Path, config: &Path, theirs: &Channel) -> Result<Child, String> {
    let fd = theirs.raw();
    // The channel is CLOEXEC; the child's end must survive the exec (and only that end).
    nix::fcntl::fcntl(
        fd,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
    )
    .map_err(|e| format!("cannot pass the handover channel: {e}"))?;
    let config = std::fs::canonicalize(config).unwrap_or_else(|_| config.to_path_buf());
    Process::new(binary)
        .arg("run")
        .arg("--config")
        .arg(&config)
        .env(ENV_FD, fd.to_string())
        .stdin(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", binary.display()))
}

/// The next message, or why there is none: the new process exited, hung or broke the channel.
fn wait_msg(ch: &Channel, child: &mut Child, timeout: Duration) -> Result<Msg, String> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!(
                "the new process exited ({status}) before it was ready; its log says why"
            ));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("the new process did not answer within {timeout:?}"));
        }
        match ch.recv(left.min(Duration::from_millis(100))) {
            Ok(frame) => return Ok(frame.msg),
            Err(WireError::Timeout(_)) => {}
            Err(WireError::Closed) => {
                let status = child.wait().map(|s| s.to_string()).unwrap_or_default();
                return Err(format!(
                    "the new process closed the handover channel ({status}); its log says why"
                ));
            }
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// One connection: a `conn` frame with both sockets and the first carried bytes, then
/// `data` frames for the rest.
fn send_conn(ch: &Channel, id: u64, conn: &MovedConn) -> Result<(), WireError> {
    let header = ConnHeader {
        id,
        worker: conn.worker,
        listener: conn.listener.clone(),
        backend: conn.backend.clone(),
        client: conn.client_addr.to_string(),
        age_us: conn.age.as_micros() as u64,
        idle_us: conn.frozen.idle.as_micros() as u64,
        bytes_in: conn.frozen.bytes_in,
        bytes_out: conn.frozen.bytes_out,
        to_backend: conn.frozen.to_backend.len(),
        to_client: conn.frozen.to_client.len(),
        frozen_at_ns: conn.frozen_at.as_nanos() as u64,
    };
    let carried: Vec<u8> = [
        conn.frozen.to_backend.as_slice(),
        conn.frozen.to_client.as_slice(),
    ]
    .concat();
    let mut chunks = carried.chunks(CHUNK);
    let first = chunks.next().unwrap_or(&[]);
    let fds = [conn.client.as_raw_fd(), conn.backend_socket.as_raw_fd()];
    ch.send(&Msg::Conn(header), first, &fds)?;
    for chunk in chunks {
        ch.send(&Msg::Data { id }, chunk, &[])?;
    }
    Ok(())
}

/// One UDP session: a `session` frame with its upstream socket.
fn send_session(ch: &Channel, id: u64, session: &MovedSession) -> Result<(), WireError> {
    let header = SessionHeader {
        id,
        worker: session.worker,
        listener: session.listener.clone(),
        backend: session.backend.clone(),
        client: session.client.to_string(),
        reply_from: session.reply_from.map(|a| a.to_string()),
        age_us: session.age.as_micros() as u64,
        idle_us: session.idle.as_micros() as u64,
        bytes_in: session.bytes_in,
        bytes_out: session.bytes_out,
    };
    ch.send(&Msg::Session(header), &[], &[session.upstream.as_raw_fd()])
}
