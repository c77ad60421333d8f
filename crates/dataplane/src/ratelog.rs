//! Rate-limited log lines for what a flood can trigger once per client (fd exhaustion,
//! a full listener, no backend): one line per interval, with the count it stood for.

use std::cell::Cell;
use std::time::{Duration, Instant};

/// At most one line per this interval per `RateLog`.
const INTERVAL: Duration = Duration::from_secs(5);

/// Worker-local (one thread): `Cell`s suffice.
#[derive(Default)]
pub(crate) struct RateLog {
    last: Cell<Option<Instant>>,
    suppressed: Cell<u64>,
}

impl RateLog {
    /// Log `message()` for `listener` unless a line went out less than `INTERVAL` ago.
    pub(crate) fn note(&self, level: log::Level, listener: &str, message: impl FnOnce() -> String) {
        let now = Instant::now();
        if self
            .last
            .get()
            .is_some_and(|t| now.duration_since(t) < INTERVAL)
        {
            self.suppressed.set(self.suppressed.get() + 1);
            return;
        }
        let suppressed = self.suppressed.replace(0);
        self.last.set(Some(now));
        log::log!(
            level,
            "listener {listener}: {} ({suppressed} more since the last such line)",
            message()
        );
    }
}
