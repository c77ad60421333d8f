//! Where the control socket lives, and claiming it: the socket is also the instance lock.
//!
//! Without `control:` in the file, the path is derived from the configuration file's
//! absolute path, so `ringlb run`, `ringlb ctl` and `ringlb upgrade` given the same file
//! always meet at the same socket, and instances with different files never collide:
//! `<dir>/<file stem>-<12 hex digits of a hash of the absolute path>.sock`, where `<dir>`
//! is `/run/ringlb` for root, else `$XDG_RUNTIME_DIR/ringlb`, else `/tmp/ringlb-<uid>`.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::time::Duration;

use thiserror::Error;

use super::client::{self, ClientError};

/// Longest socket path the kernel takes (`sun_path` is 108 bytes with its NUL).
const MAX_SOCKET_PATH: usize = 107;
/// Longest file-stem part of a derived name.
const MAX_STEM: usize = 32;
/// How long a socket found in place gets to answer `ping` before it counts as stale.
const LOCK_PING_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Error)]
pub enum PathError {
    #[error("cannot resolve the configuration file {path}: {source}")]
    Config { path: PathBuf, source: io::Error },
    #[error("the derived control socket path {0} is longer than {MAX_SOCKET_PATH} bytes; set `control:` in the file to a shorter path")]
    TooLong(PathBuf),
    #[error("cannot create the control socket directory {path}: {source}")]
    CreateDir { path: PathBuf, source: io::Error },
    #[error("the control socket directory {path} belongs to uid {owner} or is open to others (mode {mode:o}); refusing to use it (remove it, or set `control:`)")]
    UnsafeDir {
        path: PathBuf,
        owner: u32,
        mode: u32,
    },
}

/// Why the control socket could not be claimed.
#[derive(Debug, Error)]
pub enum ClaimError {
    #[error("another ringlb (pid {pid}) already serves this configuration (control socket {path}); to replace it without dropping connections run `ringlb upgrade --config FILE`, to stop it send SIGTERM to pid {pid}")]
    Running { path: PathBuf, pid: u32 },
    #[error("{0} exists and is not a socket; refusing to replace it")]
    NotASocket(PathBuf),
    #[error("the control socket's directory {0} does not exist")]
    NoDirectory(PathBuf),
    #[error("cannot create the control socket {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

/// The control socket of the configuration at `config_path`: `explicit` (the file's
/// `control:`) or the derived default. Nothing is created.
pub fn resolve(config_path: &Path, explicit: Option<&Path>) -> Result<PathBuf, PathError> {
    if let Some(path) = explicit {
        return Ok(path.to_path_buf());
    }
    let absolute = fs::canonicalize(config_path).map_err(|source| PathError::Config {
        path: config_path.to_path_buf(),
        source,
    })?;
    let path = runtime_dir().join(socket_name(&absolute));
    if path.as_os_str().len() > MAX_SOCKET_PATH {
        return Err(PathError::TooLong(path));
    }
    Ok(path)
}

/// The directory derived paths live in, for this user.
fn runtime_dir() -> PathBuf {
    let uid = nix::unistd::geteuid();
    if uid.is_root() {
        return PathBuf::from("/run/ringlb");
    }
    match std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from) {
        Some(dir) if dir.is_absolute() => dir.join("ringlb"),
        _ => PathBuf::from(format!("/tmp/ringlb-{uid}")),
    }
}

/// `<stem>-<hash>.sock`: the stem keeps the name readable, the hash of the whole absolute
/// path keeps two `ringlb.yaml` in different directories apart.
fn socket_name(absolute: &Path) -> String {
    let stem: String = absolute
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .take(MAX_STEM)
        .collect();
    let hash = fnv1a(absolute.as_os_str().as_encoded_bytes()) & 0xffff_ffff_ffff;
    format!("{stem}-{hash:012x}.sock")
}

/// FNV-1a, 64 bits: fixed by its definition, so every build (an old binary and the one
/// replacing it) derives the same name from the same path.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Creates the derived socket's directory if missing: `/run/ringlb` 0755 (root), the
/// user's own directories 0700. An existing directory outside `/run/ringlb` and
/// `$XDG_RUNTIME_DIR` (i.e. under /tmp) must be the user's and closed to others, since
/// anyone may create one there first.
pub fn prepare_dir(socket: &Path, derived: bool) -> Result<(), PathError> {
    let Some(dir) = socket.parent() else {
        return Ok(());
    };
    if !derived {
        return Ok(());
    }
    let root = nix::unistd::geteuid().is_root();
    let mode = if root { 0o755 } else { 0o700 };
    match fs::DirBuilder::new().mode(mode).create(dir) {
        Ok(()) => return Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(source) => {
            return Err(PathError::CreateDir {
                path: dir.to_path_buf(),
                source,
            })
        }
    }
    if root || !dir.starts_with("/tmp") {
        return Ok(());
    }
    let meta = fs::symlink_metadata(dir).map_err(|source| PathError::CreateDir {
        path: dir.to_path_buf(),
        source,
    })?;
    let mode = meta.permissions().mode() & 0o7777;
    if !meta.is_dir() || meta.uid() != nix::unistd::geteuid().as_raw() || mode & 0o077 != 0 {
        return Err(PathError::UnsafeDir {
            path: dir.to_path_buf(),
            owner: meta.uid(),
            mode,
        });
    }
    Ok(())
}

/// Binds the control socket at `path`, mode 0600. A socket already there that answers
/// `ping` belongs to a running instance: refused with its pid. One that refuses the
/// connection or does not answer is stale (a killed instance) and is replaced.
pub fn claim(path: &Path) -> Result<UnixListener, ClaimError> {
    let io_err = |source| ClaimError::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        if !dir.as_os_str().is_empty() && !dir.is_dir() {
            return Err(ClaimError::NoDirectory(dir.to_path_buf()));
        }
    }
    for _ in 0..2 {
        match fs::symlink_metadata(path) {
            Ok(meta) if !meta.file_type().is_socket() => {
                return Err(ClaimError::NotASocket(path.to_path_buf()))
            }
            Ok(_) => replace_if_stale(path)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(e)),
        }
        match bind_private(path) {
            Ok(listener) => return Ok(listener),
            // Another instance bound it between our look and our bind: ask it again.
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => continue,
            Err(e) => return Err(io_err(e)),
        }
    }
    replace_if_stale(path)?;
    bind_private(path).map_err(io_err)
}

/// A live upgrade's new process, once it serves: replace the old process's socket file with
/// its own (the old process keeps its already accepted connections and exits soon).
pub fn take_over(path: &Path) -> Result<UnixListener, ClaimError> {
    let io_err = |source| ClaimError::Io {
        path: path.to_path_buf(),
        source,
    };
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(e)),
    }
    bind_private(path).map_err(io_err)
}

/// Refuses when an instance answers on `path`; otherwise removes the stale file.
fn replace_if_stale(path: &Path) -> Result<(), ClaimError> {
    match client::ping(path, LOCK_PING_TIMEOUT) {
        Ok(pid) => {
            return Err(ClaimError::Running {
                path: path.to_path_buf(),
                pid,
            })
        }
        Err(ClientError::NoInstance { .. }) => {
            log::info!(
                "control socket {}: stale (nothing listens); replacing it",
                path.display()
            );
        }
        Err(e) => {
            log::warn!("control socket {}: {e}; replacing it", path.display());
        }
    }
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(ClaimError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Binds with a umask that leaves the socket 0600 from its first instant (no window in
/// which another user could connect), then sets the mode explicitly.
fn bind_private(path: &Path) -> io::Result<UnixListener> {
    use nix::sys::stat::{umask, Mode};
    // umask is process-wide: at start the process is still single-threaded; after a live
    // upgrade another thread creating a file meanwhile could only get stricter modes.
    let old = umask(Mode::from_bits_truncate(0o177));
    let bound = UnixListener::bind(path);
    umask(old);
    let listener = bound?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_names_keep_the_stem_and_tell_paths_apart() {
        let a = socket_name(Path::new("/etc/ringlb/edge.yaml"));
        let b = socket_name(Path::new("/srv/ringlb/edge.yaml"));
        assert!(a.starts_with("edge-") && a.ends_with(".sock"), "{a}");
        assert_eq!(a.len(), "edge-".len() + 12 + ".sock".len(), "{a}");
        assert_ne!(a, b);
        assert_eq!(a, socket_name(Path::new("/etc/ringlb/edge.yaml")));
        let odd = socket_name(Path::new("/x/a b;c\u{e9}.yaml"));
        assert!(odd.starts_with("a_b_c_-"), "{odd}");
        let long = socket_name(Path::new(&format!("/x/{}.yaml", "n".repeat(200))));
        assert!(long.len() <= MAX_STEM + 1 + 12 + 5, "{long}");
    }

    #[test]
    fn the_hash_is_fixed_across_builds() {
        // FNV-1a test vectors: a change here would strand running instances' sockets.
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn explicit_paths_win_and_relative_configs_resolve_to_the_same_socket() {
        let explicit = Path::new("/run/x.sock");
        assert_eq!(
            resolve(Path::new("/nonexistent.yaml"), Some(explicit)).unwrap(),
            explicit
        );
        let dir = std::env::temp_dir().join(format!("ringlb-path-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let file = dir.join("cfg.yaml");
        fs::write(&file, "").unwrap();
        let via_dots = dir
            .join("..")
            .join(dir.file_name().unwrap())
            .join("cfg.yaml");
        assert_eq!(
            resolve(&file, None).unwrap(),
            resolve(&via_dots, None).unwrap()
        );
        assert!(matches!(
            resolve(&dir.join("missing.yaml"), None),
            Err(PathError::Config { .. })
        ));
        fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn claim_replaces_stale_sockets_and_refuses_other_files() {
        let dir = std::env::temp_dir().join(format!("ringlb-claim-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.sock");
        // A socket file nobody listens on any more (its listener was dropped).
        drop(UnixListener::bind(&path).unwrap());
        let listener = claim(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        drop(listener);
        fs::remove_file(&path).unwrap();
        fs::write(&path, "not a socket").unwrap();
        assert!(matches!(claim(&path), Err(ClaimError::NotASocket(_))));
        assert!(matches!(
            claim(&dir.join("no/such/dir.sock")),
            Err(ClaimError::NoDirectory(_))
        ));
        fs::remove_dir_all(&dir).ok();
    }
}
