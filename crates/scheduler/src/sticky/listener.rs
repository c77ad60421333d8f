//! A listener's stickiness as its [`Scheduler`] keeps it: the table, the settings in force,
//! and a sticky id per backend label, so that a reload that adds or removes backends keeps
//! the entries of the backends it keeps (each snapshot maps ids to its own indices).
//! Everything here runs under the scheduler's writer lock, off the pick path.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use ringlb_config::Stickiness;

use super::{KeyFilter, StickyDump, StickyId, StickyTable};
use crate::hash::fmix64;
use crate::snapshot::{expire_secs, StickyView};
use crate::{AdminState, Backend, DumpEntry, Scheduler, Snapshot, Tried};

/// Slots each [`Scheduler::sticky_tick`] sweeps: the default table in one tick, the
/// largest (16 Mi slots) in 256 ticks, about 26 s at the control plane's 100 ms tick.
const SWEEP_SLOTS: usize = 65_536;

/// What the writer keeps of a listener's stickiness.
pub(crate) struct StickyState {
    settings: Stickiness,
    table: Arc<StickyTable>,
    /// Every backend label of the current set, with its id.
    ids: HashMap<String, StickyId>,
    /// Where the search for a free id starts: ids are handed out in turn, so an id freed
    /// by a reload comes back only after 65,535 others (its entries are swept long before).
    next_id: StickyId,
    /// The caller's clock at the last tick (for moving entries into a resized table).
    last_now: u32,
    /// `single_active`: the active backend last reported (id and label).
    reported: Option<(StickyId, String)>,
}

impl StickyState {
    fn new(settings: Stickiness) -> StickyState {
        StickyState {
            settings,
            table: Arc::new(StickyTable::new(settings.table_size)),
            ids: HashMap::new(),
            next_id: 1,
            last_now: 0,
            reported: None,
        }
    }

    /// The view a snapshot of `backends` carries: ids for new labels, removed ones forgotten.
    pub(crate) fn view(&mut self, backends: &[Backend]) -> StickyView {
        let labels: HashSet<&str> = backends.iter().map(|b| b.spec.label.as_str()).collect();
        self.ids.retain(|label, _| labels.contains(label.as_str()));
        let ids: Vec<StickyId> = backends
            .iter()
            .map(|b| match self.ids.get(&b.spec.label) {
                Some(&id) => id,
                None => {
                    let id = self.free_id();
                    if id != 0 {
                        self.ids.insert(b.spec.label.clone(), id);
                    }
                    id
                }
            })
            .collect();
        StickyView::new(Arc::clone(&self.table), &self.settings, ids)
    }

    /// The next id no label holds; 0 (no stickiness for that backend) only when all are.
    fn free_id(&mut self) -> StickyId {
        for _ in 0..=u16::MAX {
            let id = self.next_id;
            self.next_id = self.next_id.checked_add(1).unwrap_or(1);
            if id != 0 && !self.ids.values().any(|&v| v == id) {
                return id;
            }
        }
        0
    }

    fn label_of(&self, id: StickyId) -> Option<&str> {
        self.ids
            .iter()
            .find(|(_, &v)| v == id)
            .map(|(label, _)| label.as_str())
    }

    /// New settings: a new key starts an empty table (old keys mean nothing under it), a
    /// new size moves the entries into a table of that size; the active backend stays.
    fn change(&mut self, settings: Stickiness) {
        let old = &self.settings;
        if settings.key != old.key || settings.table_size != old.table_size {
            let table = StickyTable::new(settings.table_size);
            table.set_active(self.table.active());
            if settings.key == old.key {
                let now = self.last_now;
                let mut entries = self.table.entries(now, expire_secs(old));
                // Oldest first, so that a smaller table keeps the most recent.
                entries.sort_by_key(|&(_, _, age)| std::cmp::Reverse(age));
                for (key, id, age) in entries {
                    table.restore(&key, id, age, now, expire_secs(&settings));
                }
            }
            self.table = Arc::new(table);
        }
        self.settings = settings;
    }
}

/// `single_active` moved every client to another backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActiveChange {
    /// The backend's label before (`None`: none was chosen).
    pub from: Option<String>,
    /// After (`None`: none chosen, no backend can take connections).
    pub to: Option<String>,
    /// Why, in words.
    pub cause: String,
}

/// What `/status` shows of a listener's stickiness.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StickyStatus {
    pub settings: Stickiness,
    /// Slots: the most entries the table holds.
    pub capacity: usize,
    pub entries: usize,
    pub memory: usize,
    /// `single_active`: the backend every client goes to.
    pub active: Option<String>,
}

impl Scheduler {
    /// Turns stickiness on, off, or to new settings (a reload), and publishes.
    pub fn set_stickiness(&self, settings: Option<Stickiness>) {
        if self.apply_stickiness(settings) {
            let _ = self.admin_changed();
        }
    }

    /// Updates the writer's stickiness; whether anything changed.
    pub(crate) fn apply_stickiness(&self, settings: Option<Stickiness>) -> bool {
        let mut writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        match (writer.sticky.as_mut(), settings) {
            (None, None) => false,
            (Some(_), None) => {
                writer.sticky = None;
                true
            }
            (None, Some(s)) => {
                writer.sticky = Some(StickyState::new(s));
                true
            }
            (Some(state), Some(s)) if state.settings == s => false,
            (Some(state), Some(s)) => {
                state.change(s);
                true
            }
        }
    }

    /// The control plane's tick for stickiness, with `now` in the data plane's clock
    /// (whole seconds): sweeps the next part of the table (expired entries, removed
    /// backends), moves a `single_active` listener off an active backend that can no
    /// longer take connections, and reports a change of the active backend once.
    pub fn sticky_tick(&self, now: u32) -> Option<ActiveChange> {
        let mut writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let state = writer.sticky.as_mut()?;
        state.last_now = now;
        let snapshot = self.current.load_full();
        let view = snapshot.sticky_view()?;
        state
            .table
            .sweep(now, expire_secs(&state.settings), SWEEP_SLOTS, |id| {
                view.index_of(id).is_some()
            });
        if !state.settings.single_active {
            return None;
        }
        let table = &state.table;
        let none = Tried::new();
        if let Some(active) = table.active() {
            let fine = view
                .index_of(active)
                .is_some_and(|i| snapshot.is_candidate(i, &none));
            if !fine {
                let any = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
                if let Some(i) = snapshot.pick(any, fmix64(u64::from(now)), &none) {
                    if let Some(&id) = view.ids.get(i).filter(|&&id| id != 0) {
                        table.swap_active(Some(active), id);
                    }
                }
            }
        }
        let active = table.active();
        if active == state.reported.as_ref().map(|(id, _)| *id) {
            return None;
        }
        let to = active.and_then(|id| state.label_of(id).map(str::to_string));
        let from = state.reported.take();
        let cause = match &from {
            None => "chosen by the first connection".to_string(),
            Some((_, label)) => why_not(&snapshot, label),
        };
        state.reported = active.zip(to.clone());
        Some(ActiveChange {
            from: from.map(|(_, label)| label),
            to,
            cause,
        })
    }

    /// `ringlb ctl stick move`: every client of a `single_active` listener goes to the
    /// backend labelled `backend` from now on. Refused without `single_active`, and for a
    /// backend that cannot take connections now. Returns the active backend before.
    pub fn sticky_move(&self, backend: &str) -> Result<Option<String>, String> {
        let mut writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let Some(state) = writer.sticky.as_mut() else {
            return Err("has no stickiness".into());
        };
        if !state.settings.single_active {
            return Err("has stickiness without single_active: every client keeps its own backend; `ringlb ctl stick clear` makes clients choose again".into());
        }
        let snapshot = self.current.load_full();
        let index = snapshot
            .backends()
            .iter()
            .position(|b| b.spec.label == backend)
            .ok_or_else(|| format!("has no backend \"{backend}\""))?;
        if !snapshot.is_candidate(index, &Tried::new()) {
            return Err(format!(
                "backend {backend} cannot take new connections now ({})",
                why_not(&snapshot, backend)
            ));
        }
        let id = state
            .ids
            .get(backend)
            .copied()
            .ok_or_else(|| format!("backend {backend} has no sticky id"))?;
        let before = state
            .table
            .active()
            .and_then(|id| state.label_of(id).map(str::to_string));
        state.table.set_active(Some(id));
        state.reported = Some((id, backend.to_string()));
        Ok(before)
    }

    /// `ringlb ctl stick clear`: forgets the entries `filter` matches, or every entry and
    /// the `single_active` backend (the next connection chooses again). `None`: the
    /// listener has no stickiness.
    pub fn sticky_clear(&self, filter: Option<&KeyFilter>) -> Option<usize> {
        let mut writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let state = writer.sticky.as_mut()?;
        if filter.is_none() {
            state.table.set_active(None);
            state.reported = None;
        }
        Some(state.table.clear(filter))
    }

    /// The table as entries of backend labels with their ages at `now`, and the
    /// `single_active` backend: what `ctl stick show`, a live upgrade and the state file
    /// carry. `None`: no stickiness.
    pub fn sticky_dump(&self, now: u32) -> Option<StickyDump> {
        let (table, labels_by_id, expire) = {
            let writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
            let state = writer.sticky.as_ref()?;
            let labels: HashMap<StickyId, String> = state
                .ids
                .iter()
                .map(|(label, &id)| (id, label.clone()))
                .collect();
            (
                Arc::clone(&state.table),
                labels,
                expire_secs(&state.settings),
            )
        };
        // The scan runs without the writer lock: health changes need not wait for it.
        let mut labels: Vec<String> = Vec::new();
        let mut index: HashMap<StickyId, u32> = HashMap::new();
        let mut entries = Vec::new();
        for (key, id, age) in table.entries(now, expire) {
            let Some(label) = labels_by_id.get(&id) else {
                continue;
            };
            let i = *index.entry(id).or_insert_with(|| {
                labels.push(label.clone());
                (labels.len() - 1) as u32
            });
            entries.push(DumpEntry { key, label: i, age });
        }
        let active = table.active().and_then(|id| labels_by_id.get(&id).cloned());
        Some(StickyDump {
            labels,
            entries,
            active,
        })
    }

    /// Puts back a table dumped by [`sticky_dump`](Self::sticky_dump) (the previous
    /// process, the state file) at `now`: entries of backends this listener still has, not
    /// expired by now. Returns how many entries came back. Nothing without stickiness.
    pub fn sticky_restore(&self, dump: &StickyDump, now: u32) -> usize {
        let mut writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let Some(state) = writer.sticky.as_mut() else {
            return 0;
        };
        let expire = expire_secs(&state.settings);
        let ids: Vec<Option<StickyId>> = dump
            .labels
            .iter()
            .map(|label| state.ids.get(label).copied())
            .collect();
        let mut entries: Vec<_> = dump.entries.iter().collect();
        entries.sort_by_key(|e| std::cmp::Reverse(e.age));
        let mut restored = 0;
        for e in entries {
            let Some(Some(id)) = ids.get(e.label as usize) else {
                continue;
            };
            if state.table.restore(&e.key, *id, e.age, now, expire) {
                restored += 1;
            }
        }
        if let Some(label) = &dump.active {
            if let Some(&id) = state.ids.get(label) {
                state.table.set_active(Some(id));
                state.reported = Some((id, label.clone()));
            }
        }
        restored
    }

    /// The listener's stickiness for `/status`; `None` without.
    pub fn sticky_status(&self) -> Option<StickyStatus> {
        let writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let state = writer.sticky.as_ref()?;
        let table = &state.table;
        Some(StickyStatus {
            settings: state.settings,
            capacity: table.capacity(),
            entries: table.len(),
            memory: table.memory(),
            active: table
                .active()
                .and_then(|id| state.label_of(id).map(str::to_string)),
        })
    }
}

/// Why backend `label` is no candidate in `snapshot`, in words.
fn why_not(snapshot: &Snapshot, label: &str) -> String {
    let Some((i, b)) = snapshot
        .backends()
        .iter()
        .enumerate()
        .find(|(_, b)| b.spec.label == label)
    else {
        return format!("{label} was removed from the configuration");
    };
    if !b.state.is_up() {
        return format!("{label} is down");
    }
    match b.admin_state() {
        AdminState::Ready => {}
        state => return format!("{label} is set to {state}"),
    }
    if b.spec.max_connections > 0 && b.state.active() >= b.spec.max_connections {
        return format!("{label} is at its max_connections");
    }
    if snapshot.is_candidate(i, &Tried::new()) {
        return format!("{label} was replaced");
    }
    format!("{label}'s priority tier takes no new connections")
}
