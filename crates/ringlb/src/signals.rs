//! Signals arrive on one dedicated thread (sigwait) and become messages to the control loop.
//! They are blocked in every other thread, so no handler ever runs on a worker.
//!
//! | signal | meaning |
//! |---|---|
//! | SIGHUP | reload the configuration |
//! | SIGTERM, SIGINT, SIGQUIT | draining shutdown (SIGQUIT as nginx uses it: graceful) |
//! | SIGUSR2 | live upgrade, as `ringlb upgrade` |
//! | SIGUSR1 | logged and otherwise ignored: logs go to stderr, there is no file to reopen |
//! | SIGPIPE | ignored: a write to a closed socket is an `EPIPE` error where it happens |

use crossbeam_channel::{Receiver, Sender};
use nix::sys::signal::{SigHandler, SigSet, Signal};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlSignal {
    Reload,
    Shutdown(Signal),
    Upgrade,
    /// Received, logged, nothing else: its default action (terminate) must never apply.
    Ignored(Signal),
}

fn handled() -> SigSet {
    let mut set = SigSet::empty();
    for signal in [
        Signal::SIGHUP,
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGQUIT,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
    ] {
        set.add(signal);
    }
    set
}

/// What a received signal asks of the control loop.
fn meaning(signal: Signal) -> ControlSignal {
    match signal {
        Signal::SIGHUP => ControlSignal::Reload,
        Signal::SIGUSR2 => ControlSignal::Upgrade,
        Signal::SIGUSR1 => ControlSignal::Ignored(signal),
        other => ControlSignal::Shutdown(other),
    }
}

/// Block the handled signals in the calling thread and ignore SIGPIPE. Call before
/// spawning any thread so all threads inherit the mask.
pub fn block() -> nix::Result<()> {
    // SAFETY: SIG_IGN installs no handler code; nothing else changes SIGPIPE's disposition.
    unsafe { nix::sys::signal::signal(Signal::SIGPIPE, SigHandler::SigIgn) }?;
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
        if tx.send(meaning(signal)).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_handled_signal_has_its_meaning() {
        assert_eq!(meaning(Signal::SIGHUP), ControlSignal::Reload);
        assert_eq!(meaning(Signal::SIGUSR2), ControlSignal::Upgrade);
        assert_eq!(
            meaning(Signal::SIGUSR1),
            ControlSignal::Ignored(Signal::SIGUSR1)
        );
        for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGQUIT] {
            assert_eq!(meaning(s), ControlSignal::Shutdown(s));
            assert!(handled().contains(s));
        }
        assert!(!handled().contains(Signal::SIGPIPE));
    }
}
