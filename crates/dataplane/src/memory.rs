//! Giving memory back after a burst.
//!
//! Every connection that carries data touches pages of its copy buffers, its task and its
//! sockets' bookkeeping: after 10,000 connections that is tens of MB. When they end,
//! glibc keeps the freed chunks in its arenas and returns pages to the system only from
//! the top of a heap, which the chunks still in use keep pinned, so the RSS of a burst
//! stays for good. `malloc_trim` releases every free page of every arena
//! (`MADV_DONTNEED`). It walks the free lists under each arena's lock and took ~0.5–7 ms
//! after a burst of 10,000 connections, so it runs neither per connection nor on a
//! worker: a timer on each worker notices when its live connections have fallen well
//! below their peak since the last trim (a burst has ended) and asks the `ringlb-trim`
//! thread to trim. The per-connection cost is one comparison in `WorkerCtx::enter`.

use std::rc::Rc;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use crate::ctx::WorkerCtx;

/// How often a worker looks whether a burst has ended.
const CHECK_INTERVAL: Duration = Duration::from_secs(5);

/// Trim once the live connections fell by at least this many from their peak…
const MIN_DROP: usize = 256;

/// …and to at most this fraction (1/`SHRINK`) of it: a large steady population that
/// fluctuates a little is not a burst that ended.
const SHRINK: usize = 2;

/// Whether a worker whose live count peaked at `peak` and is now `live` should trim.
fn burst_ended(peak: usize, live: usize) -> bool {
    peak.saturating_sub(live) >= MIN_DROP && live.saturating_mul(SHRINK) <= peak
}

/// One worker's report that a burst ended.
struct Request {
    worker: usize,
    peak: usize,
    live: usize,
}

/// The trim thread's queue; `None` if it could not be started.
static TRIMMER: OnceLock<Option<Sender<Request>>> = OnceLock::new();

/// Starts the `ringlb-trim` thread once per process. Called from the thread that spawns
/// the workers, so that the trim thread inherits its CPU set and signal mask rather than
/// a worker's pinning.
pub(crate) fn start_trimmer() {
    TRIMMER.get_or_init(|| {
        // A few pending requests are plenty: one trim serves them all.
        let (tx, rx) = crossbeam_channel::bounded(16);
        match std::thread::Builder::new()
            .name("ringlb-trim".to_string())
            .spawn(move || trim_thread(&rx))
        {
            Ok(_) => Some(tx),
            Err(e) => {
                log::warn!("cannot start the memory trim thread: {e}; memory freed after bursts stays with the process");
                None
            }
        }
    });
}

fn trim_thread(requests: &Receiver<Request>) {
    for first in requests.iter() {
        // After one burst every worker asks: one trim serves those already queued.
        let also = requests.try_iter().count();
        let started = Instant::now();
        let released = trim();
        log::debug!(
            "worker {}: live connections fell from {} to {}: returned free memory to the system ({}, {:?}; {also} more request(s) served)",
            first.worker,
            first.peak,
            first.live,
            if released { "some released" } else { "nothing to release" },
            started.elapsed()
        );
    }
}

/// Runs on every worker until the worker's runtime is dropped.
pub(crate) async fn trim_loop(ctx: Rc<WorkerCtx>) {
    let Some(Some(trimmer)) = TRIMMER.get() else {
        return;
    };
    loop {
        tokio::time::sleep(CHECK_INTERVAL).await;
        let (peak, live) = (ctx.peak_live(), ctx.live());
        if burst_ended(peak, live) {
            ctx.reset_peak();
            // Full: a trim is pending anyway.
            let _ = trimmer.try_send(Request {
                worker: ctx.id,
                peak,
                live,
            });
        }
    }
}

/// Returns every free page of the allocator's arenas to the system; whether any was.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() -> bool {
    // SAFETY: malloc_trim has no preconditions; it is thread-safe (it takes each arena's
    // lock) and frees nothing that is in use.
    unsafe { libc::malloc_trim(0) == 1 }
}

/// Other allocators (musl) return memory on their own terms.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_burst_that_ended_is_trimmed() {
        // A burst of 10,000 that ended.
        assert!(burst_ended(10_000, 0));
        assert!(burst_ended(10_000, 5_000));
        // Still more than half of the peak: not over.
        assert!(!burst_ended(10_000, 5_001));
        // Small populations come and go: nothing worth a trim.
        assert!(!burst_ended(200, 0));
        assert!(burst_ended(MIN_DROP, 0));
        assert!(!burst_ended(0, 0));
    }
}
