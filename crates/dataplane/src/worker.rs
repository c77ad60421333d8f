//! A worker: one thread pinned to one CPU, owning one tokio-uring ring. It runs the accept
//! loops of its share of every listener (its own SO_REUSEPORT socket) and every connection
//! those accept; nothing it owns is touched by another thread.

use std::collections::HashMap;
use std::io;
use std::rc::Rc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::Sender;
use ringlb_scheduler::BackendState;
use socket2::Socket;
use tokio::sync::mpsc;

use crate::ctx::WorkerCtx;
use crate::handover::Moved;
use crate::listener::ListenerState;
use crate::memory;
use crate::outcome::EndOrder;
use crate::sys;
use crate::worker_listener::WorkerListener;

/// io-wq threads per worker. Only splices run there, each non-blocking and gated on
/// readiness, so a couple of threads keep up; the bound stops a burst from spawning many.
const IOWQ_MAX_WORKERS: u32 = 2;
/// After the cut, how long to wait for aborted connections to finish unwinding.
const CUT_GRACE: Duration = Duration::from_secs(5);

/// What the control plane asks of a worker.
pub enum Command {
    /// Start serving a listener (TCP or UDP, as its state says) on this worker's own
    /// SO_REUSEPORT socket.
    Start {
        listener: Arc<ListenerState>,
        socket: Socket,
    },
    /// Stop taking new clients on a listener (removed by a reload); its connections drain.
    Stop {
        name: String,
    },
    /// A reload renamed a TCP listener on the same bind: keep the socket (and the
    /// connections queued on it), account new connections to `listener`.
    Rename {
        old: String,
        listener: Arc<ListenerState>,
    },
    /// Live upgrade, old process: stop accepting everywhere (the new process accepts on the
    /// same sockets), freeze every TCP connection and send it to `sink`; report `Frozen`
    /// when none is left.
    Freeze {
        sink: crossbeam_channel::Sender<Moved>,
    },
    /// Live upgrade called off: connections relay normally again (listeners are started
    /// again with `Start`).
    Thaw,
    /// Live upgrade: take over a connection or session the previous process (or, after a
    /// failed upgrade, this one) froze.
    Adopt(Moved),
    /// Live upgrade, new process: UDP listeners do not receive until `OpenUdp` (the old
    /// process's sessions arrive first; datagrams wait in the sockets meanwhile).
    HoldUdp,
    OpenUdp,
    /// End the TCP connections relaying to any of `backends` (each state is one
    /// listener's backend) as `order` says, each at its own random moment in
    /// `[0, spread)` so that their clients do not all reconnect at once. Connections still
    /// connecting at that instant are not ended.
    End {
        backends: Vec<Arc<BackendState>>,
        order: EndOrder,
        spread: Duration,
    },
    /// Shutdown, phase 1: stop accepting everywhere; report `Drained` when no connection is left.
    Drain,
    /// Shutdown, phase 2: reset whatever is left, report `Finished`, exit.
    Cut,
}

/// What a worker tells the control plane.
#[derive(Debug)]
pub enum WorkerEvent {
    Started {
        worker: usize,
    },
    Failed {
        worker: usize,
        error: String,
    },
    Drained {
        worker: usize,
    },
    /// Every TCP connection of this worker was frozen and handed to the upgrade's sink.
    Frozen {
        worker: usize,
    },
    /// `Thaw` done: from now on nothing more reaches the upgrade's sink.
    Thawed {
        worker: usize,
    },
    Finished {
        worker: usize,
        cut: usize,
    },
}

pub struct WorkerHandle {
    pub id: usize,
    commands: mpsc::UnboundedSender<Command>,
    thread: Option<JoinHandle<()>>,
}

impl WorkerHandle {
    /// False when the worker has exited.
    pub fn send(&self, command: Command) -> bool {
        self.commands.send(command).is_ok()
    }

    pub fn join(mut self) {
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Start worker `id`, pinned to `cpu` when given. It reports `Started` or `Failed` first.
pub fn spawn(
    id: usize,
    cpu: Option<usize>,
    events: Sender<WorkerEvent>,
) -> io::Result<WorkerHandle> {
    memory::start_trimmer();
    let (commands, inbox) = mpsc::unbounded_channel();
    let thread = std::thread::Builder::new()
        .name(format!("ringlb-w{id}"))
        .spawn(move || run(id, cpu, inbox, events))?;
    Ok(WorkerHandle {
        id,
        commands,
        thread: Some(thread),
    })
}

fn run(
    id: usize,
    cpu: Option<usize>,
    inbox: mpsc::UnboundedReceiver<Command>,
    events: Sender<WorkerEvent>,
) {
    if let Some(cpu) = cpu {
        if let Err(e) = sys::pin_current_thread(cpu) {
            log::warn!("worker {id}: cannot pin to CPU {cpu}: {e}; running unpinned");
        }
    }
    let _iowq_bound = match sys::bound_iowq(IOWQ_MAX_WORKERS) {
        Ok(ring) => Some(ring),
        Err(e) => {
            log::warn!("worker {id}: cannot bound the io-wq pool: {e}");
            None
        }
    };
    let mut builder = tokio_uring::builder();
    builder
        .entries(sys::WORKER_RING_ENTRIES)
        .uring_builder(&sys::worker_ring_builder());
    let runtime = match tokio_uring::Runtime::new(&builder) {
        Ok(rt) => rt,
        Err(e) => {
            let _ = events.send(WorkerEvent::Failed {
                worker: id,
                error: format!("cannot create io_uring runtime: {e}"),
            });
            return;
        }
    };
    let ctx = Rc::new(WorkerCtx::new(id));
    let _ = events.send(WorkerEvent::Started { worker: id });
    let cut = runtime.block_on(main_loop(Rc::clone(&ctx), inbox, events.clone()));
    let _ = events.send(WorkerEvent::Finished { worker: id, cut });
}

/// Returns how many connections were cut at shutdown.
async fn main_loop(
    ctx: Rc<WorkerCtx>,
    mut inbox: mpsc::UnboundedReceiver<Command>,
    events: Sender<WorkerEvent>,
) -> usize {
    tokio_uring::spawn(memory::trim_loop(Rc::clone(&ctx)));
    let mut worker = Worker {
        ctx,
        serving: HashMap::new(),
        events,
    };
    while let Some(command) = inbox.recv().await {
        if let Some(cut) = worker.handle(command).await {
            return cut;
        }
    }
    0
}

/// The command loop's state: the listeners this worker serves, by name.
struct Worker {
    ctx: Rc<WorkerCtx>,
    serving: HashMap<String, WorkerListener>,
    events: Sender<WorkerEvent>,
}

impl Worker {
    /// Carry out one command; `Some(cut)` when the worker is done (the shutdown cut).
    async fn handle(&mut self, command: Command) -> Option<usize> {
        let ctx = &self.ctx;
        match command {
            Command::Start { listener, socket } => {
                let name = listener.name.clone();
                match WorkerListener::start(ctx, listener, socket) {
                    Ok(started) => {
                        if let Some(old) = self.serving.insert(name, started) {
                            old.stop().await;
                        }
                    }
                    Err(e) => log::error!("worker {}: cannot start listener {name}: {e}", ctx.id),
                }
            }
            Command::Rename { old, listener } => self.rename(&old, listener).await,
            Command::Stop { name } => {
                if let Some(old) = self.serving.remove(&name) {
                    old.stop().await;
                }
            }
            Command::Freeze { sink } => {
                for (_, listener) in self.serving.drain() {
                    listener.freeze(&sink).await;
                }
                *ctx.moved.borrow_mut() = Some(sink);
                ctx.handover.fire();
                self.report_when(
                    |ctx| async move { ctx.wait_no_relays().await },
                    |worker| WorkerEvent::Frozen { worker },
                );
            }
            Command::Thaw => {
                ctx.handover.reset();
                ctx.moved.borrow_mut().take();
                let _ = self.events.send(WorkerEvent::Thawed { worker: ctx.id });
            }
            Command::Adopt(moved) => self.adopt(moved),
            Command::End {
                backends,
                order,
                spread,
            } => {
                let asked = ctx.ends.end(&backends, order, spread, || ctx.random());
                log::debug!(
                    "worker {}: {asked} connection(s) to end ({}) within {spread:?}",
                    ctx.id,
                    order.reason().as_str()
                );
            }
            Command::HoldUdp => ctx.udp_open.reset(),
            Command::OpenUdp => ctx.udp_open.fire(),
            Command::Drain => {
                for (_, listener) in self.serving.drain() {
                    listener.stop().await;
                }
                self.report_when(
                    |ctx| async move { ctx.wait_idle().await },
                    |worker| WorkerEvent::Drained { worker },
                );
            }
            Command::Cut => {
                let cut = ctx.live();
                ctx.cut.fire();
                let _ = tokio::time::timeout(CUT_GRACE, ctx.wait_idle()).await;
                return Some(cut);
            }
        }
        None
    }

    async fn rename(&mut self, old: &str, listener: Arc<ListenerState>) {
        let Some(running) = self.serving.remove(old) else {
            return;
        };
        let name = listener.name.clone();
        match running.rename(self.ctx.id, listener) {
            Ok(()) => {
                self.serving.insert(name, running);
            }
            Err(e) => {
                log::error!("worker {}: listener {old}: {e}; stopping it", self.ctx.id);
                running.stop().await;
            }
        }
    }

    fn adopt(&self, moved: Moved) {
        let name = moved.listener();
        match self.serving.get(name) {
            Some(listener) => listener.adopt(&self.ctx, moved),
            None => log::error!(
                "worker {}: no listener {name} for a handed-over connection or session; closing it",
                self.ctx.id
            ),
        }
    }

    /// Report `event` once `until` completes, without blocking the command loop.
    fn report_when<F, Fut>(&self, until: F, event: fn(usize) -> WorkerEvent)
    where
        F: FnOnce(Rc<WorkerCtx>) -> Fut + 'static,
        Fut: std::future::Future<Output = ()> + 'static,
    {
        let ctx = Rc::clone(&self.ctx);
        let events = self.events.clone();
        tokio_uring::spawn(async move {
            let worker = ctx.id;
            until(ctx).await;
            let _ = events.send(event(worker));
        });
    }
}
