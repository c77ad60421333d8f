//! Ending connections on request. Every relaying TCP connection registers an
//! [`EndRequest`] here under its backend; when the control plane asks a worker to end the
//! connections of some backends (`Command::End`), each of theirs is given its own random
//! moment in `[0, spread)` and its relay's watchdog ends the link then. Worker-local:
//! one thread, so `Cell`s and no lock.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ringlb_scheduler::BackendState;
use tokio::sync::Notify;

use crate::outcome::EndOrder;

/// A backend on this worker: the address of its shared state. A registered connection
/// holds that state (its active-connection guard), so the address is not reused while
/// the connection is registered under it.
type Key = usize;

fn key(state: &BackendState) -> Key {
    std::ptr::from_ref(state) as usize
}

/// One connection's end request: empty until the control plane asks for its end.
#[derive(Default)]
pub(crate) struct EndRequest {
    asked: Cell<Option<(EndOrder, Instant)>>,
    notify: Notify,
}

impl EndRequest {
    /// Ask for the end at `at`. A connection asked twice ends at the earlier moment, as
    /// that request said.
    fn ask(&self, order: EndOrder, at: Instant) {
        if self.asked.get().is_some_and(|(_, earlier)| earlier <= at) {
            return;
        }
        self.asked.set(Some((order, at)));
        // One waiter (the relay's watchdog); the permit is kept if it is not waiting yet.
        self.notify.notify_one();
    }

    /// Completes when the asked end is due, with how and why.
    pub(crate) async fn due(&self) -> EndOrder {
        loop {
            match self.asked.get() {
                None => self.notify.notified().await,
                Some((order, at)) => tokio::select! {
                    () = tokio::time::sleep_until(at.into()) => return order,
                    // Asked again, maybe sooner: read the request again.
                    () = self.notify.notified() => {}
                },
            }
        }
    }
}

/// This worker's relaying connections, by backend.
#[derive(Default)]
pub(crate) struct EndRegistry {
    next_id: Cell<u64>,
    by_backend: RefCell<HashMap<Key, HashMap<u64, Rc<EndRequest>>>>,
}

impl EndRegistry {
    /// Registers a connection to `backend` until the returned guard drops.
    pub(crate) fn register(&self, backend: &BackendState) -> Registered<'_> {
        let id = self.next_id.get();
        self.next_id.set(id.wrapping_add(1));
        let request = Rc::new(EndRequest::default());
        self.by_backend
            .borrow_mut()
            .entry(key(backend))
            .or_default()
            .insert(id, Rc::clone(&request));
        Registered {
            registry: self,
            key: key(backend),
            id,
            request,
        }
    }

    /// Asks every connection registered to one of `backends` to end as `order` says, each
    /// at its own moment in `[0, spread)` from now (`random` draws it). Returns how many.
    pub(crate) fn end(
        &self,
        backends: &[Arc<BackendState>],
        order: EndOrder,
        spread: Duration,
        mut random: impl FnMut() -> u64,
    ) -> usize {
        let now = Instant::now();
        let by_backend = self.by_backend.borrow();
        let mut asked = 0;
        for backend in backends {
            for request in by_backend
                .get(&key(backend))
                .into_iter()
                .flat_map(HashMap::values)
            {
                request.ask(order, now + spread.mul_f64(fraction(random())));
                asked += 1;
            }
        }
        asked
    }

    #[cfg(test)]
    fn registered(&self) -> usize {
        self.by_backend.borrow().values().map(HashMap::len).sum()
    }
}

/// A connection's place in the registry; removed when dropped.
pub(crate) struct Registered<'a> {
    registry: &'a EndRegistry,
    key: Key,
    id: u64,
    pub(crate) request: Rc<EndRequest>,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        let mut by_backend = self.registry.by_backend.borrow_mut();
        if let Some(conns) = by_backend.get_mut(&self.key) {
            conns.remove(&self.id);
            if conns.is_empty() {
                by_backend.remove(&self.key);
            }
        }
    }
}

/// A uniform fraction in `[0, 1)` from 64 random bits (the top 53: an f64's mantissa).
pub(crate) fn fraction(random: u64) -> f64 {
    (random >> 11) as f64 / (1u64 << 53) as f64
}

/// `max_connection_duration` plus a random 0–10 %, so that connections opened together
/// (a reconnect storm, a restart) do not all reach their age limit together.
pub(crate) fn jittered(max: Duration, random: u64) -> Duration {
    max + (max / 10).mul_f64(fraction(random))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ctx::tests::block_on;
    use crate::outcome::{EndCause, EndMode};

    const CLOSE: EndOrder = EndOrder {
        cause: EndCause::ShutdownSessions,
        mode: EndMode::Close,
    };
    const RESET: EndOrder = EndOrder {
        cause: EndCause::BackendDown,
        mode: EndMode::Reset,
    };

    #[test]
    fn fractions_cover_zero_to_one() {
        assert_eq!(fraction(0), 0.0);
        assert!(fraction(u64::MAX) < 1.0);
        assert!(fraction(u64::MAX) > 0.999_999);
        assert_eq!(
            jittered(Duration::from_secs(100), u64::MAX / 2 + 1),
            Duration::from_secs(105)
        );
        // At most 10 % (rounded to the nanosecond, the very top of the range is 10 % itself).
        assert!(jittered(Duration::from_secs(100), u64::MAX) <= Duration::from_secs(110));
    }

    #[test]
    fn only_the_named_backends_are_asked_and_guards_unregister() {
        let (a, b) = (Arc::new(BackendState::new()), Arc::new(BackendState::new()));
        let registry = EndRegistry::default();
        let on_a: Vec<Registered> = (0..3).map(|_| registry.register(&a)).collect();
        let on_b = registry.register(&b);
        assert_eq!(registry.registered(), 4);
        let mut draws = 0u64;
        let asked = registry.end(&[Arc::clone(&a)], CLOSE, Duration::from_secs(2), || {
            draws += 1;
            draws << 62
        });
        assert_eq!((asked, draws), (3, 3), "one draw per connection");
        assert!(on_a.iter().all(|r| r.request.asked.get().is_some()));
        assert!(on_b.request.asked.get().is_none());
        drop(on_a);
        assert_eq!(registry.registered(), 1);
        drop(on_b);
        assert!(
            registry.by_backend.borrow().is_empty(),
            "empty backends are removed"
        );
    }

    /// `due()`, or a panic after a deadline far beyond every moment the tests ask for.
    async fn due(request: &EndRequest) -> EndOrder {
        tokio::time::timeout(Duration::from_secs(30), request.due())
            .await
            .unwrap_or_else(|_| panic!("the end request never came due"))
    }

    #[test]
    fn the_earliest_request_wins() {
        block_on(async {
            let request = EndRequest::default();
            let start = Instant::now();
            request.ask(CLOSE, start + Duration::from_secs(3600));
            request.ask(RESET, start + Duration::from_millis(20));
            request.ask(CLOSE, start + Duration::from_millis(40));
            assert_eq!(due(&request).await, RESET);
        });
    }

    #[test]
    fn a_request_made_while_waiting_is_seen() {
        block_on(async {
            let request = Rc::new(EndRequest::default());
            let start = Instant::now();
            let waiter = {
                let request = Rc::clone(&request);
                async move { due(&request).await }
            };
            let asker = async {
                tokio::time::sleep(Duration::from_millis(10)).await;
                request.ask(CLOSE, start + Duration::from_secs(3600));
                tokio::time::sleep(Duration::from_millis(10)).await;
                request.ask(RESET, Instant::now() + Duration::from_millis(10));
            };
            let (order, ()) = tokio::join!(waiter, asker);
            assert_eq!(order, RESET, "the sooner request made while waiting");
        });
    }
}
