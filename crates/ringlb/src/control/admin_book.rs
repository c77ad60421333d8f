//! The operator's settings — each backend's admin state and weight override, and whether
//! the node is failed — as the control plane keeps them: applied to every scheduler it
//! builds (a listener re-bound by a reload, every listener after a restart), and written
//! to `state_file` when set, so they survive a restart.
//!
//! The file is JSON (docs/control-protocol.md): `{"v":1,"node_failed":false,"backends":
//! [{"listener":"l","backend":"10.0.0.11:7000","state":"drain","weight":null}]}`. It is
//! written atomically (a temporary file in the same directory, fsync, rename), so a crash
//! leaves the old file or the new one, never half of one. A file that cannot be read is
//! reported and ignored: every backend starts ready.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use ringlb_scheduler::{AdminState, Scheduler, TierRange};
use serde_json::{json, Value};

/// One backend's operator settings; the default (ready, no override) is not stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Setting {
    pub state: AdminState,
    pub weight: Option<u32>,
}

impl Default for Setting {
    fn default() -> Self {
        Setting {
            state: AdminState::Ready,
            weight: None,
        }
    }
}

/// Every non-default setting, keyed by (listener name, backend label).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct AdminBook {
    backends: BTreeMap<(String, String), Setting>,
    pub node_failed: bool,
    /// Per listener, the tiers a non-immediate failback holds traffic on, so that an
    /// upgrade or a restart does not fail back behind the operator's back.
    holds: BTreeMap<String, TierRange>,
}

impl AdminBook {
    pub fn get(&self, listener: &str, backend: &str) -> Setting {
        self.backends
            .get(&(listener.to_string(), backend.to_string()))
            .copied()
            .unwrap_or_default()
    }

    pub fn set(&mut self, listener: &str, backend: &str, setting: Setting) {
        let key = (listener.to_string(), backend.to_string());
        if setting == Setting::default() {
            self.backends.remove(&key);
        } else {
            self.backends.insert(key, setting);
        }
    }

    /// Gives every backend of `scheduler` (listener `listener`) its setting from the book
    /// (ready with no override when the book has none); rebuilds the tables when anything
    /// changed. Returns whether anything did.
    pub fn apply(&self, listener: &str, scheduler: &Scheduler) -> bool {
        let mut changed = false;
        for b in scheduler.snapshot().backends() {
            let want = self.get(listener, &b.spec.label);
            if b.state.admin_state() != want.state {
                b.state.set_admin_state(want.state);
                changed = true;
            }
            if b.state.weight_override() != want.weight {
                b.state.set_weight_override(want.weight);
                changed = true;
            }
        }
        if changed {
            scheduler.admin_changed();
        }
        if let Some(hold) = self.holds.get(listener) {
            if scheduler.hold() != Some(*hold) {
                scheduler.restore_hold(*hold);
                changed = true;
            }
        }
        changed
    }

    /// Records `listener`'s failback hold as its scheduler has it now; returns whether the
    /// book changed.
    pub fn note_hold(&mut self, listener: &str, hold: Option<TierRange>) -> bool {
        let before = match hold {
            Some(h) => self.holds.insert(listener.to_string(), h),
            None => self.holds.remove(listener),
        };
        before != hold
    }

    /// Drops the holds of listeners that do not run.
    pub fn retain_holds(&mut self, running: impl Fn(&str) -> bool) {
        self.holds.retain(|l, _| running(l));
    }

    /// Drops the settings of backends that do not run (`running(listener, backend)` says
    /// which do); returns them, for the log.
    pub fn retain_running(
        &mut self,
        running: impl Fn(&str, &str) -> bool,
    ) -> Vec<(String, String, Setting)> {
        let mut dropped = Vec::new();
        self.backends.retain(|(l, b), setting| {
            let keep = running(l, b);
            if !keep {
                dropped.push((l.clone(), b.clone(), *setting));
            }
            keep
        });
        dropped
    }

    pub fn to_json(&self) -> Value {
        let backends: Vec<Value> = self
            .backends
            .iter()
            .map(|((listener, backend), s)| {
                json!({
                    "listener": listener,
                    "backend": backend,
                    "state": s.state.as_str(),
                    "weight": s.weight,
                })
            })
            .collect();
        let holds: Vec<Value> = self
            .holds
            .iter()
            .map(|(listener, h)| json!({"listener": listener, "lowest": h.lowest, "highest": h.highest}))
            .collect();
        json!({ "v": 1, "node_failed": self.node_failed, "backends": backends, "holds": holds })
    }

    /// Parses a state file's text; the error says what is wrong with it.
    pub fn from_json(text: &str) -> Result<AdminBook, String> {
        let v: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
        if v.get("v").and_then(Value::as_u64) != Some(1) {
            return Err("missing or unsupported \"v\" (expected 1)".into());
        }
        let node_failed = match v.get("node_failed") {
            None => false,
            Some(b) => b.as_bool().ok_or("\"node_failed\" must be true or false")?,
        };
        let mut book = AdminBook {
            node_failed,
            ..AdminBook::default()
        };
        if let Some(holds) = v.get("holds") {
            let holds = holds.as_array().ok_or("\"holds\" must be a list")?;
            for (i, entry) in holds.iter().enumerate() {
                let listener = entry
                    .get("listener")
                    .and_then(Value::as_str)
                    .ok_or_else(|| format!("holds[{i}].listener must be a string"))?;
                let tier = |key: &str| -> Result<u8, String> {
                    entry
                        .get(key)
                        .and_then(Value::as_u64)
                        .and_then(|p| u8::try_from(p).ok())
                        .ok_or_else(|| format!("holds[{i}].{key} must be a priority 0..=255"))
                };
                let (lowest, highest) = (tier("lowest")?, tier("highest")?);
                if lowest > highest {
                    return Err(format!("holds[{i}]: lowest above highest"));
                }
                book.holds
                    .insert(listener.to_string(), TierRange { lowest, highest });
            }
        }
        let list = match v.get("backends") {
            None => return Ok(book),
            Some(list) => list.as_array().ok_or("\"backends\" must be a list")?,
        };
        for (i, entry) in list.iter().enumerate() {
            let text = |key: &str| -> Result<&str, String> {
                entry
                    .get(key)
                    .and_then(Value::as_str)
                    .ok_or_else(|| format!("backends[{i}].{key} must be a string"))
            };
            let state = AdminState::parse(text("state")?)
                .ok_or_else(|| format!("backends[{i}].state must be ready, drain or maint"))?;
            let weight = match entry.get("weight") {
                None | Some(Value::Null) => None,
                Some(w) => Some(
                    w.as_u64()
                        .filter(|&w| w <= 65_535)
                        .ok_or_else(|| format!("backends[{i}].weight must be 0..=65535 or null"))?
                        as u32,
                ),
            };
            book.set(
                text("listener")?,
                text("backend")?,
                Setting { state, weight },
            );
        }
        Ok(book)
    }

    /// Reads `path`: `Ok(None)` when there is no file yet.
    pub fn load(path: &Path) -> Result<Option<AdminBook>, String> {
        match fs::read_to_string(path) {
            Ok(text) => AdminBook::from_json(&text).map(Some),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("cannot read it: {e}")),
        }
    }

    /// Writes the book to `path` atomically.
    pub fn save(&self, path: &Path) -> io::Result<()> {
        let mut text = self.to_json().to_string();
        text.push('\n');
        write_atomically(path, text.as_bytes())
    }
}

/// Writes `bytes` to `path` so that a crash leaves the old content or the new one: a
/// temporary file beside it, fsync, rename, then the directory synced.
pub(super) fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = temp_path(path);
    let written = (|| {
        let mut file = fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
        return written;
    }
    // The rename is durable once the directory is synced; best effort.
    if let Some(dir) = path.parent() {
        if let Ok(d) = fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tmp.{}", std::process::id()));
    path.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringlb_config::Algorithm;
    use ringlb_scheduler::BackendSpec;

    fn spec(label: &str, weight: u32) -> BackendSpec {
        BackendSpec {
            addr: label.parse().unwrap(),
            label: label.into(),
            weight,
            max_connections: 0,
            priority: 0,
        }
    }

    const DRAINED: Setting = Setting {
        state: AdminState::Drain,
        weight: None,
    };

    #[test]
    fn default_settings_are_not_stored() {
        let mut book = AdminBook::default();
        book.set("l", "b", DRAINED);
        assert_eq!(book.get("l", "b").state, AdminState::Drain);
        book.set("l", "b", Setting::default());
        assert_eq!(book, AdminBook::default());
    }

    #[test]
    fn json_round_trips_and_bad_files_say_why() {
        let mut book = AdminBook {
            node_failed: true,
            ..AdminBook::default()
        };
        book.set(
            "l",
            "10.0.0.1:1",
            Setting {
                state: AdminState::Maint,
                weight: Some(0),
            },
        );
        book.set(
            "m",
            "[::1]:2",
            Setting {
                state: AdminState::Ready,
                weight: Some(7),
            },
        );
        let text = book.to_json().to_string();
        assert_eq!(AdminBook::from_json(&text), Ok(book));
        for (bad, needle) in [
            ("", "not JSON"),
            ("{\"v\":2}", "unsupported"),
            ("{\"v\":1,\"node_failed\":\"yes\"}", "node_failed"),
            ("{\"v\":1,\"backends\":{}}", "must be a list"),
            (
                "{\"v\":1,\"backends\":[{\"listener\":\"l\",\"backend\":\"b\",\"state\":\"off\"}]}",
                "backends[0].state",
            ),
            (
                "{\"v\":1,\"backends\":[{\"listener\":\"l\",\"backend\":\"b\",\"state\":\"drain\",\"weight\":-1}]}",
                "backends[0].weight",
            ),
            ("{\"v\":1,\"backends\":[{\"state\":\"drain\"}]}", "listener"),
        ] {
            let e = AdminBook::from_json(bad).unwrap_err();
            assert!(e.contains(needle), "{bad}: {e}");
        }
    }

    #[test]
    fn apply_sets_every_backend_and_resets_those_without_an_entry() {
        let s = Scheduler::new(
            Algorithm::RoundRobin,
            vec![spec("10.0.0.1:1", 1), spec("10.0.0.2:1", 1)],
        );
        s.snapshot().backends()[1]
            .state
            .set_admin_state(AdminState::Maint);
        let mut book = AdminBook::default();
        book.set(
            "l",
            "10.0.0.1:1",
            Setting {
                state: AdminState::Drain,
                weight: Some(4),
            },
        );
        assert!(book.apply("l", &s));
        let snap = s.snapshot();
        assert_eq!(snap.backends()[0].admin_state(), AdminState::Drain);
        assert_eq!(snap.backends()[0].effective_weight(), 4);
        assert_eq!(snap.backends()[1].admin_state(), AdminState::Ready);
        assert!(!book.apply("l", &s), "nothing left to change");
    }

    #[test]
    fn save_is_atomic_and_load_reads_it_back() {
        let dir = std::env::temp_dir().join(format!("ringlb-book-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("state.json");
        assert_eq!(AdminBook::load(&path), Ok(None));
        let mut book = AdminBook::default();
        book.set("l", "b", DRAINED);
        book.save(&path).unwrap();
        assert_eq!(AdminBook::load(&path), Ok(Some(book)));
        let leftovers: Vec<_> = fs::read_dir(&dir).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temporary file left behind");
        fs::write(&path, "{garbage").unwrap();
        assert!(AdminBook::load(&path).is_err());
        fs::remove_dir_all(&dir).ok();
    }
}
