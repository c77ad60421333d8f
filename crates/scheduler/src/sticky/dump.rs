//! A sticky table as bytes: what a live upgrade sends the new process and what is written
//! beside the `state_file`. Pure: the caller reads the clock and does the I/O.

use std::fmt;

use super::StickyKey;

/// A listener's table as carried across a live upgrade and a restart: entries by key with
/// the label (`addr` as written) of their backend and their age, and the `single_active`
/// backend.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StickyDump {
    /// Backend labels the entries refer to by index.
    pub labels: Vec<String>,
    pub entries: Vec<DumpEntry>,
    /// `single_active`: the backend everyone goes to.
    pub active: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DumpEntry {
    pub key: StickyKey,
    /// Index into [`StickyDump::labels`].
    pub label: u32,
    /// Seconds since last use.
    pub age: u32,
}

/// Why a dump could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DumpError {
    Magic,
    Truncated(usize),
    Invalid(&'static str),
}

impl fmt::Display for DumpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DumpError::Magic => f.write_str("not a sticky table dump (bad magic)"),
            DumpError::Truncated(at) => write!(f, "truncated at byte {at}"),
            DumpError::Invalid(what) => write!(f, "invalid {what}"),
        }
    }
}

impl std::error::Error for DumpError {}

const DUMP_MAGIC: &[u8; 8] = b"RLBSTK\x00\x01";
const ENTRY_BYTES: usize = 32;
/// More than any table holds (16 Mi slots): a count above it is corruption.
const MAX_DUMP_ENTRIES: u64 = 1 << 25;

/// Encodes the tables of several listeners (`(name, dump)`) written at `written_unix`
/// (seconds since the epoch): the `state_file` sibling and the upgrade payload.
///
/// ```text
/// magic "RLBSTK\0\x01", u64 written_unix, u32 listeners, then per listener:
///   u16 len + name, u32 labels, each u16 len + label, u32 active label (u32::MAX: none),
///   u32 entries, each: u64 u64 u64 key words, u32 label index, u32 age
/// ```
/// little-endian throughout.
pub fn encode_dumps(dumps: &[(String, StickyDump)], written_unix: u64) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(DUMP_MAGIC);
    out.extend_from_slice(&written_unix.to_le_bytes());
    out.extend_from_slice(&(dumps.len() as u32).to_le_bytes());
    let text = |out: &mut Vec<u8>, s: &str| {
        let bytes = &s.as_bytes()[..s.len().min(usize::from(u16::MAX))];
        out.extend_from_slice(&(bytes.len() as u16).to_le_bytes());
        out.extend_from_slice(bytes);
    };
    for (name, dump) in dumps {
        text(&mut out, name);
        out.extend_from_slice(&(dump.labels.len() as u32).to_le_bytes());
        for label in &dump.labels {
            text(&mut out, label);
        }
        let active = dump
            .active
            .as_ref()
            .and_then(|a| dump.labels.iter().position(|l| l == a))
            .map_or(u32::MAX, |i| i as u32);
        out.extend_from_slice(&active.to_le_bytes());
        out.extend_from_slice(&(dump.entries.len() as u32).to_le_bytes());
        for e in &dump.entries {
            for w in e.key.words() {
                out.extend_from_slice(&w.to_le_bytes());
            }
            out.extend_from_slice(&e.label.to_le_bytes());
            out.extend_from_slice(&e.age.to_le_bytes());
        }
    }
    out
}

/// Reads what [`encode_dumps`] wrote; ages grow by the time since it was written (`now_unix`).
/// Any input is an error or a value, never a panic.
pub fn decode_dumps(bytes: &[u8], now_unix: u64) -> Result<Vec<(String, StickyDump)>, DumpError> {
    let mut r = Reader { bytes, at: 0 };
    if r.take(DUMP_MAGIC.len())? != DUMP_MAGIC {
        return Err(DumpError::Magic);
    }
    let written = r.u64()?;
    let since = u32::try_from(now_unix.saturating_sub(written)).unwrap_or(u32::MAX);
    let listeners = r.u32()?;
    let mut out = Vec::new();
    for _ in 0..listeners {
        let name = r.text()?;
        let label_count = r.u32()?;
        let mut labels = Vec::new();
        for _ in 0..label_count {
            labels.push(r.text()?);
        }
        let active = match r.u32()? {
            u32::MAX => None,
            i => Some(
                labels
                    .get(i as usize)
                    .cloned()
                    .ok_or(DumpError::Invalid("active backend index"))?,
            ),
        };
        let count = u64::from(r.u32()?);
        if count > MAX_DUMP_ENTRIES || count as usize > r.left() / ENTRY_BYTES {
            return Err(DumpError::Truncated(r.at));
        }
        let mut entries = Vec::with_capacity(count as usize);
        for _ in 0..count {
            let words = [r.u64()?, r.u64()?, r.u64()?];
            let key = StickyKey::from_words(words).ok_or(DumpError::Invalid("key"))?;
            let label = r.u32()?;
            if label as usize >= labels.len() {
                return Err(DumpError::Invalid("backend index"));
            }
            let age = r.u32()?.saturating_add(since);
            entries.push(DumpEntry { key, label, age });
        }
        out.push((
            name,
            StickyDump {
                labels,
                entries,
                active,
            },
        ));
    }
    if r.left() != 0 {
        return Err(DumpError::Invalid("trailing bytes"));
    }
    Ok(out)
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn left(&self) -> usize {
        self.bytes.len() - self.at
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DumpError> {
        let end = self
            .at
            .checked_add(n)
            .ok_or(DumpError::Truncated(self.at))?;
        let out = self
            .bytes
            .get(self.at..end)
            .ok_or(DumpError::Truncated(self.at))?;
        self.at = end;
        Ok(out)
    }

    fn u16(&mut self) -> Result<u16, DumpError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, DumpError> {
        let mut a = [0u8; 4];
        a.copy_from_slice(self.take(4)?);
        Ok(u32::from_le_bytes(a))
    }

    fn u64(&mut self) -> Result<u64, DumpError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(a))
    }

    fn text(&mut self) -> Result<String, DumpError> {
        let n = usize::from(self.u16()?);
        String::from_utf8(self.take(n)?.to_vec()).map_err(|_| DumpError::Invalid("text"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use ringlb_config::StickinessKey;
    use std::net::{IpAddr, Ipv4Addr, SocketAddr};

    fn key(n: u32) -> StickyKey {
        let ip = Ipv4Addr::from(0x0a00_0000 | n);
        StickyKey::of(SocketAddr::new(IpAddr::V4(ip), 0), StickinessKey::SourceIp)
    }

    fn dump() -> Vec<(String, StickyDump)> {
        vec![
            (
                "pay".into(),
                StickyDump {
                    labels: vec!["10.0.0.1:80".into(), "[::1]:81".into()],
                    entries: vec![
                        DumpEntry {
                            key: key(1),
                            label: 1,
                            age: 5,
                        },
                        DumpEntry {
                            key: StickyKey::of(
                                SocketAddr::from(([10, 0, 0, 2], 1500)),
                                StickinessKey::SourceIpPortRange { port_range: 1000 },
                            ),
                            label: 0,
                            age: 0,
                        },
                    ],
                    active: Some("[::1]:81".into()),
                },
            ),
            ("empty".into(), StickyDump::default()),
        ]
    }

    #[test]
    fn dumps_round_trip_and_age_while_stored() {
        let bytes = encode_dumps(&dump(), 1000);
        assert_eq!(decode_dumps(&bytes, 1000), Ok(dump()));
        let later = decode_dumps(&bytes, 1030).unwrap();
        assert_eq!(later[0].1.entries[0].age, 35);
        assert_eq!(decode_dumps(b"nonsense", 0), Err(DumpError::Magic));
        assert_eq!(decode_dumps(b"RLB", 0), Err(DumpError::Truncated(0)));
        assert_eq!(
            decode_dumps(b"RLBSTK\x00\x02________", 0),
            Err(DumpError::Magic)
        );
        for cut in 0..bytes.len() {
            assert!(decode_dumps(&bytes[..cut], 1000).is_err(), "cut at {cut}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
            let _ = decode_dumps(&bytes, 0);
            let mut framed = DUMP_MAGIC.to_vec();
            framed.extend_from_slice(&bytes);
            let _ = decode_dumps(&framed, u64::MAX);
        }

        #[test]
        fn mutated_dumps_never_panic(at in 0usize..400, flip in any::<u8>()) {
            let mut bytes = encode_dumps(&dump(), 7);
            let i = at % bytes.len();
            bytes[i] ^= flip;
            let _ = decode_dumps(&bytes, 7);
        }
    }
}
