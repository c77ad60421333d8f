//! Embeds what `ringlb --version` says about the build: the git commit (when built from
//! this project's git checkout; a source tarball has none, and `RINGLB_GIT_COMMIT` may name
//! it instead), the target, the profile and the rustc that compiled it.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=RINGLB_GIT_COMMIT");
    let commit = std::env::var("RINGLB_GIT_COMMIT")
        .ok()
        .filter(|c| !c.trim().is_empty())
        .or_else(git_commit)
        .unwrap_or_else(|| "unknown (not built from a git checkout)".to_string());
    println!("cargo:rustc-env=RINGLB_GIT_COMMIT={}", commit.trim());
    let profile = std::env::var("PROFILE").unwrap_or_else(|_| "unknown".to_string());
    println!("cargo:rustc-env=RINGLB_BUILD_PROFILE={profile}");
    let target = std::env::var("TARGET").unwrap_or_else(|_| "unknown".to_string());
    println!("cargo:rustc-env=RINGLB_BUILD_TARGET={target}");
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_string());
    let rustc_version =
        output(Command::new(rustc).arg("-V"), None).unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=RINGLB_RUSTC_VERSION={rustc_version}");
}

/// The short commit of HEAD, only when the enclosing git work tree is this workspace: a
/// tarball unpacked inside some other repository must not report that repository's commit.
fn git_commit() -> Option<String> {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR")?);
    let workspace = manifest.join("../..").canonicalize().ok()?;
    let toplevel = git(&manifest, &["rev-parse", "--show-toplevel"])?;
    if Path::new(&toplevel).canonicalize().ok()? != workspace {
        return None;
    }
    let commit = git(&manifest, &["rev-parse", "--short=12", "HEAD"])?;
    // Build again when HEAD moves: HEAD itself (a checkout), and the branch it names (a
    // commit), loose or packed. Only paths that exist: a missing one reruns every build.
    let git_dir = git(&manifest, &["rev-parse", "--absolute-git-dir"]).map(PathBuf::from);
    let common = git(&manifest, &["rev-parse", "--git-common-dir"]).map(|d| manifest.join(d));
    let branch = git(&manifest, &["symbolic-ref", "-q", "HEAD"]);
    let mut watch = Vec::new();
    if let Some(dir) = &git_dir {
        watch.push(dir.join("HEAD"));
    }
    if let Some(common) = &common {
        watch.push(common.join("packed-refs"));
        if let Some(branch) = &branch {
            watch.push(common.join(branch));
        }
    }
    for path in watch.iter().filter(|p| p.exists()) {
        println!("cargo:rerun-if-changed={}", path.display());
    }
    Some(commit)
}

fn git(dir: &Path, args: &[&str]) -> Option<String> {
    output(Command::new("git").args(args), Some(dir))
}

/// Trimmed stdout of a command that succeeded, if any.
fn output(command: &mut Command, dir: Option<&Path>) -> Option<String> {
    if let Some(dir) = dir {
        command.current_dir(dir);
    }
    let out = command.output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let text = text.trim();
    (out.status.success() && !text.is_empty()).then(|| text.to_string())
}
