//! Is stderr connected to journald? systemd sets `JOURNAL_STREAM=<device>:<inode>` for a
//! service whose stdout or stderr goes to the journal (systemd.exec(5)); the variable is
//! inherited by children whose stderr may go elsewhere, so it counts only when stderr's
//! own device and inode match it.

use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;

/// A file's identity: (`st_dev`, `st_ino`).
pub type FileId = (u64, u64);

/// `JOURNAL_STREAM`'s value: two decimal numbers separated by a colon.
pub fn parse_journal_stream(value: &str) -> Option<FileId> {
    let (dev, ino) = value.split_once(':')?;
    Some((dev.parse().ok()?, ino.parse().ok()?))
}

/// Whether stderr, whose identity is `stderr` (`None` when it cannot be read, e.g.
/// closed), is the stream `journal_stream` (the variable's value, if set) names.
pub fn is_journal(journal_stream: Option<&OsStr>, stderr: Option<FileId>) -> bool {
    let named = journal_stream
        .and_then(OsStr::to_str)
        .and_then(parse_journal_stream);
    matches!((named, stderr), (Some(a), Some(b)) if a == b)
}

/// The identity of an open file descriptor, read with fstat(2) on a duplicate (the
/// duplicate shares the open file, so its device and inode are the descriptor's).
pub fn file_id(fd: impl AsFd) -> Option<FileId> {
    let file = File::from(fd.as_fd().try_clone_to_owned().ok()?);
    let meta = file.metadata().ok()?;
    Some((meta.dev(), meta.ino()))
}

/// This process's answer: `JOURNAL_STREAM` against stderr.
pub fn stderr_is_journal() -> bool {
    is_journal(
        std::env::var_os("JOURNAL_STREAM").as_deref(),
        file_id(std::io::stderr()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsString;
    use std::os::unix::ffi::OsStringExt;

    #[test]
    fn parses_device_and_inode() {
        assert_eq!(parse_journal_stream("8:12345"), Some((8, 12345)));
        assert_eq!(parse_journal_stream("0:0"), Some((0, 0)));
        for bad in ["", "8", "8:", ":1", "a:1", "1:b", "8:1:2", " 8:1", "-1:2"] {
            assert_eq!(parse_journal_stream(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn matches_only_the_same_stream() {
        let s = |v: &str| OsString::from(v);
        assert!(is_journal(Some(&s("8:42")), Some((8, 42))));
        assert!(!is_journal(Some(&s("8:42")), Some((8, 43))), "other inode");
        assert!(!is_journal(Some(&s("9:42")), Some((8, 42))), "other device");
        assert!(!is_journal(None, Some((8, 42))), "not under systemd");
        assert!(!is_journal(Some(&s("8:42")), None), "stderr closed");
        assert!(!is_journal(Some(&s("garbage")), Some((8, 42))));
        let not_utf8 = OsString::from_vec(vec![b'8', b':', 0xff]);
        assert!(!is_journal(Some(&not_utf8), Some((8, 42))));
    }

    #[test]
    fn a_real_descriptor_matches_its_own_identity() {
        let dir = std::env::temp_dir();
        let path = dir.join(format!("ringlb-logging-journald-{}", std::process::id()));
        let file = File::create(&path).unwrap();
        let other = File::open(env!("CARGO_MANIFEST_DIR")).unwrap();
        let id = file_id(&file).unwrap();
        let value = OsString::from(format!("{}:{}", id.0, id.1));
        assert!(is_journal(Some(&value), file_id(&file)));
        assert!(!is_journal(Some(&value), file_id(&other)));
        std::fs::remove_file(&path).unwrap();
    }
}
