//! Signals arrive on one dedicated thread (sigwait) and become messages to the control loop.
//! They are blocked in every other thread, so no handler ever runs on a worker.

use crossbeam_channel::{Receiver, Sender};
use nix::sys::signal::{SigSet, Signal};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlSignal {
    Reload,
    Shutdown(Signal),
    /// SIGUSR2: live upgrade to the binary this process was started from.
    Upgrade,
}

fn handled() -> SigSet {
    let mut set = SigSet::empty();
    set.add(Signal::SIGHUP);
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    set.add(Signal::SIGUSR2);
    set
}

/// Block the handled signals in the calling thread. Call before spawning any thread so all
/// threads inherit the mask.
pub fn block() -> nix::Result<()> {
    handled().thread_block()
}

/// Start the signal thread.
pub fn listen() -> std::io::Result<Receiver<ControlSignal>> {
    let (tx, rx) = crossbeam_channel::unbounded();
    std::thread::Builder::new()
        .name("ringlb-signals".into())
        .spawn(move || wait_loop(tx))?;
    Ok(rx)
}

fn wait_loop(tx: Sender<ControlSignal>) {
    let set = handled();
    loop {
        let signal = match set.wait() {
            Ok(s) => s,
            Err(e) => {
                log::error!("sigwait failed: {e}; signals are no longer handled");
                return;
            }
        };
        let message = match signal {
            Signal::SIGHUP => ControlSignal::Reload,
            Signal::SIGUSR2 => ControlSignal::Upgrade,
            other => ControlSignal::Shutdown(other),
        };
        if tx.send(message).is_err() {
            return;
        }
    }
}
