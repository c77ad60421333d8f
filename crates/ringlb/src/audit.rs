//! The audit log (`audit_log: PATH`): an append-only file of what changed ringlb's
//! behaviour and who asked — configuration loads and reloads, control commands with the
//! peer's uid and pid, upgrades, health transitions, shutdowns — one JSON object per line,
//! each carrying the SHA-256 of the line before it, so a removed, reordered or edited
//! record breaks the chain (`ringlb audit verify PATH` says where).
//!
//! A record: `{"detail":{...},"event":"reload","hash":"…","prev":"…","seq":7,
//! "ts":"2026-11-29T13:45:01.123456Z"}` — keys sorted, `hash` = SHA-256 (hex) of the line
//! written without its `hash` key, `prev` = the previous record's `hash` (64 zeros for the
//! first), `seq` counting from 1. The file is opened with O_APPEND, mode 0600, and every
//! record is fsynced: audit events are rare, and one lost on a crash would be the one
//! that mattered.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

/// `prev` of the first record.
const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Why a record could not be written or a file not be verified.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit_log {path}: {what}: {source}")]
    Io {
        path: PathBuf,
        what: &'static str,
        source: io::Error,
    },
    #[error("audit_log {path}: line {line}: {why}")]
    Broken {
        path: PathBuf,
        line: usize,
        why: String,
    },
}

/// The open audit log of a running process.
#[derive(Debug)]
pub struct AuditLog {
    path: PathBuf,
    file: File,
    prev: String,
    seq: u64,
    /// The file's length after this process's last write: when it differs, another
    /// process (the other side of a live upgrade) appended, and the chain is re-read.
    len: u64,
}

impl AuditLog {
    /// Opens (or creates) `path` and continues its chain. A file whose chain is broken is
    /// refused: appending to it would hide the break behind a fresh-looking tail.
    pub fn open(path: &Path) -> Result<AuditLog, AuditError> {
        let io_err = |what, source| AuditError::Io {
            path: path.to_path_buf(),
            what,
            source,
        };
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| io_err("cannot open it for appending", e))?;
        let mut log = AuditLog {
            path: path.to_path_buf(),
            file,
            prev: GENESIS.to_string(),
            seq: 0,
            len: u64::MAX,
        };
        log.catch_up()?;
        Ok(log)
    }

    /// Re-reads the chain when the file is not as this process left it.
    fn catch_up(&mut self) -> Result<(), AuditError> {
        let len = self
            .file
            .metadata()
            .map_err(|source| AuditError::Io {
                path: self.path.clone(),
                what: "cannot stat it",
                source,
            })?
            .len();
        if len == self.len {
            return Ok(());
        }
        let f = File::open(&self.path).map_err(|source| AuditError::Io {
            path: self.path.clone(),
            what: "cannot read it",
            source,
        })?;
        let summary = verify_reader(&self.path, BufReader::new(f))?;
        self.prev = summary.last_hash;
        self.seq = summary.records;
        self.len = len;
        Ok(())
    }

    /// Appends one record of `event` with `detail` (an object) and syncs it to disk.
    pub fn record(&mut self, event: &str, detail: Value) -> Result<(), AuditError> {
        self.catch_up()?;
        let line = chain_line(self.seq + 1, &now_rfc3339(), event, detail, &self.prev);
        let hash = line
            .get("hash")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let mut text = line.to_string();
        text.push('\n');
        let written = self
            .file
            .write_all(text.as_bytes())
            .and_then(|()| self.file.sync_data());
        written.map_err(|source| AuditError::Io {
            path: self.path.clone(),
            what: "cannot append a record",
            source,
        })?;
        self.seq += 1;
        self.prev = hash;
        self.len = self.len.saturating_add(text.len() as u64);
        Ok(())
    }
}

/// The record for `seq`, hash included.
fn chain_line(seq: u64, ts: &str, event: &str, detail: Value, prev: &str) -> Value {
    let mut record = Map::new();
    record.insert("detail".into(), detail);
    record.insert("event".into(), json!(event));
    record.insert("prev".into(), json!(prev));
    record.insert("seq".into(), json!(seq));
    record.insert("ts".into(), json!(ts));
    let hash = digest(&Value::Object(record.clone()));
    record.insert("hash".into(), json!(hash));
    Value::Object(record)
}

/// SHA-256 (hex) of `record` serialised with sorted keys (serde_json's map is ordered).
fn digest(record: &Value) -> String {
    let bytes = Sha256::digest(record.to_string().as_bytes());
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What `ringlb audit verify` reports about an intact file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub records: u64,
    pub first_ts: Option<String>,
    pub last_ts: Option<String>,
    pub last_hash: String,
}

/// Checks every record of `path`: its hash, its link to the one before, its sequence.
pub fn verify(path: &Path) -> Result<Verified, AuditError> {
    let f = File::open(path).map_err(|source| AuditError::Io {
        path: path.to_path_buf(),
        what: "cannot read it",
        source,
    })?;
    verify_reader(path, BufReader::new(f))
}

fn verify_reader(path: &Path, reader: impl BufRead) -> Result<Verified, AuditError> {
    let broken = |line: usize, why: String| AuditError::Broken {
        path: path.to_path_buf(),
        line,
        why,
    };
    let mut out = Verified {
        records: 0,
        first_ts: None,
        last_ts: None,
        last_hash: GENESIS.to_string(),
    };
    for (i, line) in reader.lines().enumerate() {
        let n = i + 1;
        let line = line.map_err(|source| AuditError::Io {
            path: path.to_path_buf(),
            what: "cannot read it",
            source,
        })?;
        let mut record: Value = serde_json::from_str(&line)
            .map_err(|e| broken(n, format!("not a JSON record ({e}): cut or edited")))?;
        let Some(fields) = record.as_object_mut() else {
            return Err(broken(n, "not a JSON object".into()));
        };
        let Some(Value::String(hash)) = fields.remove("hash") else {
            return Err(broken(n, "no hash".into()));
        };
        let seq = fields.get("seq").and_then(Value::as_u64);
        if seq != Some(out.records + 1) {
            return Err(broken(
                n,
                format!(
                    "seq {} where {} was due: a record was removed or reordered",
                    seq.map_or("missing".into(), |s| s.to_string()),
                    out.records + 1
                ),
            ));
        }
        if fields.get("prev").and_then(Value::as_str) != Some(out.last_hash.as_str()) {
            return Err(broken(
                n,
                "prev is not the hash of the record before: a record was removed, replaced or reordered".into(),
            ));
        }
        if digest(&record) != hash {
            return Err(broken(n, "hash mismatch: the record was edited".into()));
        }
        let ts = record.get("ts").and_then(Value::as_str).map(str::to_string);
        if out.first_ts.is_none() {
            out.first_ts.clone_from(&ts);
        }
        out.last_ts = ts;
        out.records += 1;
        out.last_hash = hash;
    }
    Ok(out)
}

/// UTC with microseconds, as the log lines have it.
fn now_rfc3339() -> String {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, day) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_micros()
    )
}

/// (year, month, day) of a count of days since 1970-01-01 (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ringlb-audit-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("audit.log")
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_786), (2026, 11, 29));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }

    #[test]
    fn a_chain_survives_reopening_and_verifies() {
        let path = temp("reopen");
        let mut log = AuditLog::open(&path).unwrap();
        log.record("config_load", json!({"listeners": 2})).unwrap();
        log.record("control", json!({"cmd": "drain", "uid": 0}))
            .unwrap();
        drop(log);
        let mut log = AuditLog::open(&path).unwrap();
        log.record("shutdown", json!({"signal": "SIGTERM"}))
            .unwrap();
        let v = verify(&path).unwrap();
        assert_eq!(v.records, 3);
        assert!(v.first_ts.unwrap().ends_with('Z'));
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.lines().next().unwrap().contains(GENESIS));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn two_writers_in_turn_keep_one_chain() {
        // A live upgrade: the old process writes, the new one opens and writes, the old
        // one writes again (a failed upgrade) — one chain.
        let path = temp("turns");
        let mut old = AuditLog::open(&path).unwrap();
        old.record("upgrade", json!({"phase": "starting"})).unwrap();
        let mut new = AuditLog::open(&path).unwrap();
        new.record("start", json!({})).unwrap();
        old.record("upgrade", json!({"phase": "failed"})).unwrap();
        new.record("shutdown", json!({})).unwrap();
        assert_eq!(verify(&path).unwrap().records, 4);
    }

    #[test]
    fn every_kind_of_tampering_is_found_with_its_line() {
        let path = temp("tamper");
        let mut log = AuditLog::open(&path).unwrap();
        for i in 0..4 {
            log.record("control", json!({"n": i})).unwrap();
        }
        drop(log);
        let good = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = good.lines().collect();
        let check = |text: String, line: usize, needle: &str| {
            std::fs::write(&path, text).unwrap();
            match verify(&path) {
                Err(AuditError::Broken { line: l, why, .. }) => {
                    assert_eq!(l, line, "{why}");
                    assert!(why.contains(needle), "{why}");
                }
                other => panic!("expected a break at line {line}, got {other:?}"),
            }
            assert!(
                AuditLog::open(&path).is_err(),
                "a broken chain is not appended to"
            );
        };
        check(good.replace("{\"n\":2}", "{\"n\":9}"), 3, "edited");
        check(
            format!("{}\n{}\n{}\n", lines[0], lines[2], lines[3]),
            2,
            "removed",
        );
        check(
            format!("{}\n{}\n{}\n{}\n", lines[0], lines[2], lines[1], lines[3]),
            2,
            "removed",
        );
        check(
            format!("{}\n{}\n{}", lines[0], lines[1], &lines[2][..20]),
            3,
            "cut",
        );
        // The tail removed: the chain itself cannot tell, the count can.
        std::fs::write(&path, format!("{}\n{}\n", lines[0], lines[1])).unwrap();
        assert_eq!(verify(&path).unwrap().records, 2);
    }
}
