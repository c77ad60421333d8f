//! Learned stickiness on the control thread: the tick (sweep, `single_active` moves and
//! their log lines), the tables carried over a reload that re-binds or renames a listener,
//! a live upgrade and a restart (`STATE_FILE.sticky`), and `ringlb ctl stick`.
//!
//! The tables are written beside the state file, not inside it: they can be large (32
//! bytes an entry), binary, and change with every new client, while the admin book is a
//! small JSON file written on an operator's change. Every 5 s the tables are dumped here
//! and, when their entries changed (or only their ages did, for a minute), written by a
//! short-lived thread, atomically, so that a slow disk never holds the control thread; and
//! once more after the drain at shutdown.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ringlb_dataplane::monotonic_now;
use ringlb_scheduler::{
    decode_dumps, encode_dumps, ActiveChange, KeyFilter, Scheduler, StickyDump,
};
use serde_json::{json, Map};

use super::admin_book::write_atomically;
use super::ControlPlane;
use crate::control_socket::protocol::Reply;

/// How often the tables are looked at for the state file.
const SAVE_EVERY: Duration = Duration::from_secs(5);
/// When only the ages of entries changed, how long the file may lag behind them.
const AGES_EVERY: Duration = Duration::from_secs(60);

/// The clock of every sticky table: whole seconds of CLOCK_MONOTONIC, as the data plane
/// reads it on the connect path.
pub(super) fn sticky_now() -> u32 {
    monotonic_now().as_secs() as u32
}

/// Seconds since the epoch: what a dump's ages are counted against between processes.
pub(super) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Where the tables of a `state_file` are kept: `STATE_FILE.sticky`.
pub(super) fn sticky_path(state_file: &Path) -> PathBuf {
    let mut path = state_file.as_os_str().to_owned();
    path.push(".sticky");
    PathBuf::from(path)
}

/// The control plane's side of the sticky tables.
#[derive(Default)]
pub(super) struct StickyKeeper {
    /// Tables waiting for their listener to start, by listener name, and where each came
    /// from (for the log).
    pending: HashMap<String, (StickyDump, &'static str)>,
    next_look: Option<Instant>,
    /// What the file holds: a hash of the entries without their ages, and with them.
    saved: (u64, u64),
    saved_at: Option<Instant>,
    /// The thread writing the file, if one is.
    writer: Option<JoinHandle<Result<(), String>>>,
}

impl StickyKeeper {
    /// Tables handed over by the previous process of a live upgrade.
    pub(super) fn inherit(&mut self, dumps: Vec<(String, StickyDump)>) {
        for (name, dump) in dumps {
            self.pending.insert(name, (dump, "the previous process"));
        }
    }
}

/// `1 sticky entry`, `30 sticky entries`.
fn entry_count(n: usize) -> String {
    format!("{n} sticky entr{}", if n == 1 { "y" } else { "ies" })
}

/// One line per change of a `single_active` listener's backend: a warning when clients
/// are moved away from one, info for the first choice.
fn log_active_change(listener: &str, change: &ActiveChange) {
    let to = change
        .to
        .as_deref()
        .unwrap_or("no backend (none can take connections)");
    match &change.from {
        Some(from) => warn!(
            "listener \"{listener}\": single_active: every client goes to {to} now (was {from}): {}",
            change.cause
        ),
        None => info!(
            "listener \"{listener}\": single_active: every client goes to {to} ({})",
            change.cause
        ),
    }
}

/// Order-independent hashes of `dumps`: entries without ages, and with them. A cheap
/// multiply-rotate hash: the tables can hold millions of entries, hashed every 5 s.
fn hashes(dumps: &[(String, StickyDump)]) -> (u64, u64) {
    let one = |parts: &dyn Fn(&mut Mix)| {
        let mut h = Mix(0);
        parts(&mut h);
        h.finish()
    };
    let (mut entries, mut ages) = (0u64, 0u64);
    for (name, dump) in dumps {
        let active = one(&|h| (name, &dump.active).hash(h));
        entries = entries.wrapping_add(active);
        ages = ages.wrapping_add(active);
        let labels: Vec<u64> = dump
            .labels
            .iter()
            .map(|l| one(&|h| (name, l).hash(h)))
            .collect();
        for e in &dump.entries {
            let label = labels.get(e.label as usize).copied().unwrap_or_default();
            let entry = one(&|h| (label, e.key).hash(h));
            entries = entries.wrapping_add(entry);
            ages = ages.wrapping_add(one(&|h| (entry, e.age).hash(h)));
        }
    }
    (entries, ages)
}

/// FxHash's step (rotate, xor, multiply), finished with a full avalanche: fast, and good
/// enough to tell whether a table changed.
struct Mix(u64);

impl Hasher for Mix {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x517c_c1b7_2722_0a95);
    }

    fn finish(&self) -> u64 {
        let mut x = self.0;
        x ^= x >> 33;
        x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
        x ^= x >> 33;
        x
    }
}

impl ControlPlane {
    /// Every tables' dump at `now`, by listener name (only listeners with stickiness).
    fn sticky_dumps(&self, now: u32) -> Vec<(String, StickyDump)> {
        let mut dumps: Vec<(String, StickyDump)> = self
            .listeners
            .values()
            .filter_map(|l| Some((l.name.clone(), l.scheduler.sticky_dump(now)?)))
            .collect();
        dumps.sort_by(|a, b| a.0.cmp(&b.0));
        dumps
    }

    /// The tables for the process taking over in a live upgrade; `None` when no listener
    /// has stickiness.
    pub(super) fn sticky_bytes(&self) -> Option<Vec<u8>> {
        let dumps = self.sticky_dumps(sticky_now());
        (!dumps.is_empty()).then(|| encode_dumps(&dumps, unix_now()))
    }

    /// Part of the steering tick: each listener's sticky tick (logged when a
    /// `single_active` backend changed), then the state file every few seconds.
    pub(super) fn sticky_tick(&mut self) {
        let now = sticky_now();
        for shared in self.listeners.values() {
            if let Some(change) = shared.scheduler.sticky_tick(now) {
                log_active_change(&shared.name, &change);
            }
        }
        let due = self.sticky.next_look.is_none_or(|at| Instant::now() >= at);
        if due && self.config.state_file.is_some() {
            self.sticky.next_look = Some(Instant::now() + SAVE_EVERY);
            self.save_sticky(now, false);
        }
    }

    /// Writes the tables to `STATE_FILE.sticky` if they changed since the last write: in
    /// the background, or (`wait`, at shutdown) here and now.
    fn save_sticky(&mut self, now: u32, wait: bool) {
        let Some(path) = self.config.state_file.as_deref().map(sticky_path) else {
            return;
        };
        if let Some(writer) = self.sticky.writer.take() {
            if !wait && !writer.is_finished() {
                self.sticky.writer = Some(writer);
                return;
            }
            if let Ok(Err(e)) = writer.join() {
                warn!("{e}");
            }
        }
        let dumps = self.sticky_dumps(now);
        let (entries, ages) = hashes(&dumps);
        let aged = self
            .sticky
            .saved_at
            .is_none_or(|at| at.elapsed() >= AGES_EVERY);
        if entries == self.sticky.saved.0 && (ages == self.sticky.saved.1 || !aged) {
            return;
        }
        self.sticky.saved = (entries, ages);
        self.sticky.saved_at = Some(Instant::now());
        let bytes = encode_dumps(&dumps, unix_now());
        let write = move || {
            write_atomically(&path, &bytes).map_err(|e| {
                format!(
                    "{}: cannot write the sticky tables: {e}; they will not survive a restart",
                    path.display()
                )
            })
        };
        if wait {
            if let Err(e) = write() {
                warn!("{e}");
            }
            return;
        }
        match std::thread::Builder::new()
            .name("ringlb-sticky".into())
            .spawn(write)
        {
            Ok(handle) => self.sticky.writer = Some(handle),
            Err(e) => {
                warn!("cannot start the thread writing the sticky tables: {e}; trying again later");
                self.sticky.saved = (0, 0);
            }
        }
    }

    /// At shutdown, once nothing changes the tables any more.
    pub(super) fn save_sticky_now(&mut self) {
        if self.config.state_file.is_some() {
            self.save_sticky(sticky_now(), true);
        }
    }

    /// At start (not after a live upgrade): the tables `STATE_FILE.sticky` kept. A file
    /// that cannot be read is reported and ignored: clients are balanced afresh.
    pub(super) fn load_sticky(&mut self) {
        let Some(path) = self.config.state_file.as_deref().map(sticky_path) else {
            return;
        };
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(e) => {
                warn!(
                    "{}: cannot read it: {e}; sticky tables start empty",
                    path.display()
                );
                return;
            }
        };
        match decode_dumps(&bytes, unix_now()) {
            Ok(dumps) => {
                self.sticky.saved = hashes(&dumps);
                for (name, dump) in dumps {
                    self.sticky.pending.insert(name, (dump, "state_file"));
                }
            }
            Err(e) => warn!("{}: {e}; sticky tables start empty", path.display()),
        }
    }

    /// A listener about to start takes the table waiting for it, if any.
    pub(super) fn restore_sticky(&mut self, name: &str, scheduler: &Scheduler) {
        let Some((dump, from)) = self.sticky.pending.remove(name) else {
            return;
        };
        let restored = scheduler.sticky_restore(&dump, sticky_now());
        let active = match (&dump.active, scheduler.sticky_status()) {
            (Some(label), Some(status)) if status.active.as_ref() == Some(label) => {
                format!("; single_active: every client goes to {label}")
            }
            _ => String::new(),
        };
        info!(
            "listener \"{name}\": {restored} of {} restored from {from}{active}",
            entry_count(dump.entries.len())
        );
    }

    /// A reload is about to replace listener `from` by a new one named `to` (re-bound, or
    /// renamed): the new one starts with its table.
    pub(super) fn carry_sticky(&mut self, from: &str, to: &str) {
        let Some(dump) = self
            .listeners
            .get(from)
            .and_then(|l| l.scheduler.sticky_dump(sticky_now()))
        else {
            return;
        };
        self.sticky
            .pending
            .insert(to.to_string(), (dump, "the listener it replaces"));
    }

    /// Tables whose listener did not start are dropped (a listener removed meanwhile).
    pub(super) fn forget_pending_sticky(&mut self) {
        for (name, (dump, from)) in self.sticky.pending.drain() {
            info!(
                "{} of listener \"{name}\" from {from} dropped: no such listener runs",
                entry_count(dump.entries.len())
            );
        }
    }

    /// `ringlb ctl stick show LISTENER`.
    pub(super) fn stick_show(&self, listener: &str, limit: u32) -> Reply {
        let shared = match self.find_listener(listener) {
            Ok(shared) => shared,
            Err(refused) => return refused,
        };
        let (Some(status), Some(dump)) = (
            shared.scheduler.sticky_status(),
            shared.scheduler.sticky_dump(sticky_now()),
        ) else {
            return no_stickiness(listener);
        };
        let mut entries: Vec<_> = dump.entries.iter().collect();
        entries.sort_by_key(|e| (e.age, e.key));
        let total = entries.len();
        let listed: Vec<serde_json::Value> = entries
            .iter()
            .take(limit as usize)
            .map(|e| {
                json!({
                    "key": e.key.to_string(),
                    "backend": dump.labels.get(e.label as usize),
                    "age_s": e.age,
                })
            })
            .collect();
        let mut message = format!(
            "listener \"{listener}\": {} (table of {})",
            entry_count(total),
            status.capacity
        );
        if status.settings.single_active {
            message.push_str(&format!(
                "; single_active: every client goes to {}",
                status
                    .active
                    .as_deref()
                    .unwrap_or("the backend the next connection gets")
            ));
        }
        if total > listed.len() {
            message.push_str(&format!("; the {} most recent:", listed.len()));
        }
        let mut fields = Map::new();
        fields.insert("message".into(), json!(message));
        fields.insert("total".into(), json!(total));
        fields.insert("table_size".into(), json!(status.capacity));
        fields.insert("single_active".into(), json!(status.settings.single_active));
        fields.insert("active".into(), json!(status.active));
        fields.insert("entries".into(), json!(listed));
        Reply::Ok(fields)
    }

    /// `ringlb ctl stick clear LISTENER [KEY]`.
    pub(super) fn stick_clear(&mut self, listener: &str, key: Option<&str>) -> Reply {
        let shared = match self.find_listener(listener) {
            Ok(shared) => shared,
            Err(refused) => return refused,
        };
        let filter: Option<KeyFilter> = match key.map(str::parse).transpose() {
            Ok(filter) => filter,
            Err(why) => return Reply::refused(why),
        };
        let single = shared
            .scheduler
            .sticky_status()
            .is_some_and(|s| s.settings.single_active);
        let Some(cleared) = shared.scheduler.sticky_clear(filter.as_ref()) else {
            return no_stickiness(listener);
        };
        let forgot = entry_count(cleared);
        let message = match key {
            Some(key) => format!("listener \"{listener}\": forgot {forgot} of {key}"),
            None if single => format!(
                "listener \"{listener}\": forgot {forgot} and the single_active backend: the next connection chooses it"
            ),
            None => format!("listener \"{listener}\": forgot {forgot}"),
        };
        info!("ctl: {message}");
        Reply::message(message)
    }

    /// `ringlb ctl stick move LISTENER BACKEND`.
    pub(super) fn stick_move(&mut self, listener: &str, backend: &str) -> Reply {
        let (shared, b) = match self.find(listener, backend) {
            Ok(found) => found,
            Err(refused) => return refused,
        };
        let label = &b.spec.label;
        match shared.scheduler.sticky_move(label) {
            Ok(before) => {
                let message = format!(
                    "listener \"{listener}\": single_active: every client goes to {label} now (was {})",
                    before.as_deref().unwrap_or("none")
                );
                info!("ctl: {message} (asked by ringlb ctl stick move)");
                Reply::message(message)
            }
            Err(why) => Reply::refused(format!("listener \"{listener}\" {why}")),
        }
    }
}

fn no_stickiness(listener: &str) -> Reply {
    Reply::refused(format!(
        "listener \"{listener}\" has no stickiness (see stickiness: in docs/configuration.md)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringlb_scheduler::{DumpEntry, StickyKey};

    fn dump(age: u32, label: &str) -> StickyDump {
        let key = StickyKey::of(
            "10.0.0.1:5".parse().unwrap(),
            ringlb_config::StickinessKey::SourceIp,
        );
        StickyDump {
            labels: vec![label.into()],
            entries: vec![DumpEntry { key, label: 0, age }],
            active: None,
        }
    }

    #[test]
    fn the_file_is_rewritten_for_new_entries_and_only_now_and_then_for_ages() {
        let base = hashes(&[("l".into(), dump(1, "a"))]);
        let older = hashes(&[("l".into(), dump(9, "a"))]);
        let moved = hashes(&[("l".into(), dump(1, "b"))]);
        assert_eq!(base.0, older.0, "ages alone keep the entries' hash");
        assert_ne!(base.1, older.1);
        assert_ne!(base.0, moved.0);
        assert_eq!(hashes(&[]), (0, 0));
    }

    #[test]
    fn the_tables_live_beside_the_state_file() {
        assert_eq!(
            sticky_path(Path::new("/var/lib/ringlb/state.json")),
            Path::new("/var/lib/ringlb/state.json.sticky")
        );
    }
}
