//! `ringlb generate man|completions DIR` (hidden): the man pages and shell completions the
//! packages install, made from the same clap definitions the binary parses with, so they
//! cannot drift from it. scripts/package.sh runs it on the binary it packages; nothing
//! generated is kept in git (docs/packaging.md).

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use clap::ValueEnum;
use clap_complete::Shell;
use clap_mangen::Man;

/// What `ringlb generate` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum What {
    /// ringlb.1, one page per subcommand (ringlb-run.1, ringlb-ctl-drain.1, ...) and
    /// ringlb.yaml.5.
    Man,
    /// ringlb.bash, _ringlb (zsh) and ringlb.fish.
    Completions,
}

/// ringlb.yaml(5): written by hand (it describes the file, not the command line); a test
/// keeps it naming every key of the README's defaults table.
const CONFIG_PAGE: &str = include_str!("../man/ringlb.yaml.5");

/// The sections of ringlb(1) clap knows nothing about. Roff: `\-` is a real minus sign.
const MAIN_PAGE_EXTRA: &str = r#".SH EXIT STATUS
.TP
\fBrun\fR
0 after a clean shutdown (or after handing everything to a new process in a live upgrade);
1 on a runtime failure (io_uring unavailable, a port in use, another instance serving the file);
2 for an invalid configuration (nothing is started).
.TP
\fBcheck\fR, \fBexplain\fR
0 valid; 2 invalid (one \fIerror: <yaml path>: <problem>\fR line per problem on stderr).
\fBexplain\fR exits 1 when no backend qualifies.
.TP
\fBctl\fR, \fBupgrade\fR
0 applied; 1 refused (the reason on stderr); 2 usage; 3 no running instance;
4 \fBwait\-empty\fR timed out.
.TP
\fBdoctor\fR
0 every check passed; 1 warnings only; 2 errors (or an invalid file).
.SH SIGNALS
.TP
.B SIGHUP
Re\-read and validate the configuration file; apply all of it without closing an established
connection, or none of it (the old configuration keeps serving).
.TP
.B SIGUSR2
Live binary upgrade, as \fBringlb upgrade\fR: start the binary at the path this process was
started from, hand it every listening socket, connection and UDP session, then exit.
.TP
.BR SIGTERM ", " SIGINT ", " SIGQUIT
Stop accepting and drain: established connections keep flowing until they end or
\fBshutdown_timeout\fR expires, then what is left is reset. A second one cuts at once.
.TP
.B SIGUSR1
Logged and ignored (logs go to stderr; there is no file to reopen).
.SH ENVIRONMENT
.TP
.B RUST_LOG
Overrides the file's \fBlog_level\fR, e.g. \fIinfo,ringlb::access=off\fR.
.TP
.B NOTIFY_SOCKET
Set by systemd for a \fIType=notify\fR unit: ringlb sends READY=1, RELOADING=1, STOPPING=1,
and MAINPID= after a live upgrade.
.SH FILES
.TP
.I /etc/ringlb/ringlb.yaml
The configuration of the packaged service (see \fBringlb.yaml\fR(5)).
.TP
.I /usr/lib/systemd/system/ringlb.service
The packaged systemd unit: \fIsystemctl reload ringlb\fR reloads,
\fIringlb upgrade \-\-config /etc/ringlb/ringlb.yaml\fR upgrades live.
.TP
.I /run/ringlb/
The control socket (\fBringlb ctl\fR): the file's \fBcontrol\fR path, else one derived from
the configuration file's path.
.TP
.I /var/lib/ringlb/
The packaged configuration's \fBstate_file\fR: drained and maintenance backends, weight
overrides and node fail, kept across restarts.
.SH SEE ALSO
\fBringlb.yaml\fR(5), \fBsystemctl\fR(1), \fBsystemd.service\fR(5).
The documentation in /usr/share/doc/ringlb/: README.md and docs/ (operations, configuration,
upgrade, control protocol, metrics, packaging).
"#;

/// Writes `what` into `dir` (created if missing); returns the files written.
pub fn write(what: What, cmd: clap::Command, dir: &Path) -> io::Result<Vec<PathBuf>> {
    fs::create_dir_all(dir)?;
    match what {
        What::Man => man_pages(cmd, dir),
        What::Completions => [Shell::Bash, Shell::Zsh, Shell::Fish]
            .into_iter()
            .map(|shell| clap_complete::generate_to(shell, &mut cmd.clone(), "ringlb", dir))
            .collect(),
    }
}

fn man_pages(cmd: clap::Command, dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut cmd = cmd.disable_help_subcommand(true);
    // Gives every subcommand its display name (ringlb-ctl-drain): the page names.
    cmd.build();
    let mut written = Vec::new();
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        subcommand_pages(sub, dir, &mut written)?;
    }
    let main = Man::new(cmd.clone()).manual("ringlb manual");
    let path = dir.join(main.get_filename());
    let mut page = Vec::new();
    main.render_title(&mut page)?;
    main.render_name_section(&mut page)?;
    main.render_synopsis_section(&mut page)?;
    main.render_description_section(&mut page)?;
    main.render_options_section(&mut page)?;
    main.render_subcommands_section(&mut page)?;
    page.write_all(MAIN_PAGE_EXTRA.as_bytes())?;
    main.render_version_section(&mut page)?;
    fs::write(&path, page)?;
    written.push(path);
    let config = dir.join("ringlb.yaml.5");
    fs::write(&config, CONFIG_PAGE)?;
    written.push(config);
    Ok(written)
}

fn subcommand_pages(cmd: &clap::Command, dir: &Path, written: &mut Vec<PathBuf>) -> io::Result<()> {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        subcommand_pages(sub, dir, written)?;
    }
    written.push(
        Man::new(cmd.clone())
            .manual("ringlb manual")
            .generate_to(dir)?,
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn temp(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("ringlb-generate-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn man_pages_cover_every_visible_command() {
        let dir = temp("man");
        let written = write(What::Man, crate::Cli::command(), &dir).unwrap();
        let names: Vec<String> = written
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        for page in [
            "ringlb.1",
            "ringlb-run.1",
            "ringlb-check.1",
            "ringlb-explain.1",
            "ringlb-ctl.1",
            "ringlb-ctl-drain.1",
            "ringlb-upgrade.1",
            "ringlb-doctor.1",
            "ringlb.yaml.5",
        ] {
            assert!(names.iter().any(|n| n == page), "{page} not in {names:?}");
        }
        assert!(!names.iter().any(|n| n.contains("generate")), "{names:?}");
        let main = fs::read_to_string(dir.join("ringlb.1")).unwrap();
        for section in [
            ".SH SYNOPSIS",
            ".SH SUBCOMMANDS",
            ".SH EXIT STATUS",
            ".SH SIGNALS",
            ".SH FILES",
            "ringlb\\-doctor(1)",
        ] {
            assert!(main.contains(section), "{section} missing from ringlb.1");
        }
        fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn completions_for_three_shells() {
        let dir = temp("completions");
        let written = write(What::Completions, crate::Cli::command(), &dir).unwrap();
        assert_eq!(written.len(), 3);
        let bash = fs::read_to_string(dir.join("ringlb.bash")).unwrap();
        assert!(
            bash.contains("doctor") && bash.contains("shutdown-sessions"),
            "bash completion lacks subcommands"
        );
        assert!(dir.join("_ringlb").is_file() && dir.join("ringlb.fish").is_file());
        fs::remove_dir_all(&dir).ok();
    }

    /// ringlb.yaml(5) is hand-written: it must name every key the README's defaults table
    /// documents, so a new key cannot be forgotten there.
    #[test]
    fn the_config_page_names_every_documented_key() {
        let readme = include_str!("../../../README.md");
        let table = readme
            .split("\nDefaults:\n")
            .nth(1)
            .and_then(|rest| {
                rest.split("\n\n")
                    .find(|block| block.trim_start().starts_with('|'))
            })
            .expect("the README's defaults table");
        let mut keys = Vec::new();
        for row in table.lines().skip(2) {
            let first = row.trim_start_matches('|').split('|').next().unwrap_or("");
            for quoted in first.split('`').skip(1).step_by(2) {
                keys.extend(quoted.split('.').map(str::to_string));
            }
        }
        assert!(keys.len() > 20, "parsed only {keys:?}");
        for key in keys {
            assert!(
                CONFIG_PAGE.contains(key.as_str()),
                "ringlb.yaml.5 does not mention `{key}`"
            );
        }
    }
}
