//! The `process_*` metrics every Prometheus client library exports (same names, units
//! and meaning as client_golang's process collector), read from /proc/self at scrape
//! time on the admin thread.

use std::io;

/// One reading of the process.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessStats {
    /// User + system CPU time, all threads.
    pub cpu_seconds: f64,
    pub resident_bytes: u64,
    pub virtual_bytes: u64,
    /// Entries of /proc/self/fd (the directory being read counts as one).
    pub open_fds: u64,
    /// The soft `RLIMIT_NOFILE`.
    pub max_fds: u64,
    /// Unix time the process started at.
    pub start_time_seconds: f64,
    pub threads: u64,
}

/// The fields of /proc/PID/stat these metrics need (proc(5)); times in clock ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    pub utime: u64,
    pub stime: u64,
    pub num_threads: u64,
    pub starttime: u64,
    pub vsize: u64,
    /// Resident pages.
    pub rss: u64,
}

/// Parses /proc/PID/stat. The command name (field 2) is in parentheses and may itself
/// contain spaces and parentheses, so fields are counted from the last `)`.
pub fn parse_stat(text: &str) -> Option<Stat> {
    let rest = &text[text.rfind(')')? + 1..];
    // Field n of proc(5) (1-based) is index n - 3 here: `state` (field 3) comes first.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| -> Option<u64> { fields.get(n - 3)?.parse().ok() };
    Some(Stat {
        utime: field(14)?,
        stime: field(15)?,
        num_threads: field(20)?,
        starttime: field(22)?,
        vsize: field(23)?,
        rss: field(24)?,
    })
}

/// The boot time (`btime`, Unix seconds) from /proc/stat.
pub fn parse_btime(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

fn sysconf(var: nix::unistd::SysconfVar) -> io::Result<u64> {
    match nix::unistd::sysconf(var) {
        Ok(Some(v)) => u64::try_from(v).map_err(io::Error::other),
        Ok(None) => Err(io::Error::other(format!("sysconf({var:?}) has no value"))),
        Err(e) => Err(io::Error::from(e)),
    }
}

/// Reads this process's figures.
pub fn read() -> io::Result<ProcessStats> {
    let stat_text = std::fs::read_to_string("/proc/self/stat")?;
    let stat = parse_stat(&stat_text)
        .ok_or_else(|| io::Error::other("/proc/self/stat: unexpected format"))?;
    let btime = parse_btime(&std::fs::read_to_string("/proc/stat")?)
        .ok_or_else(|| io::Error::other("/proc/stat: no btime"))?;
    let ticks = sysconf(nix::unistd::SysconfVar::CLK_TCK)?.max(1) as f64;
    let page = sysconf(nix::unistd::SysconfVar::PAGE_SIZE)?;
    let open_fds = std::fs::read_dir("/proc/self/fd")?.count() as u64;
    let (soft, _hard) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map_err(io::Error::from)?;
    Ok(ProcessStats {
        cpu_seconds: (stat.utime + stat.stime) as f64 / ticks,
        resident_bytes: stat.rss.saturating_mul(page),
        virtual_bytes: stat.vsize,
        open_fds,
        max_fds: soft,
        start_time_seconds: btime as f64 + stat.starttime as f64 / ticks,
        threads: stat.num_threads,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real line of /proc/PID/stat, with a command name that has spaces and ")".
    const STAT: &str = "4242 (ringlb (w) 1) S 1 4242 4242 0 -1 4194560 2515 0 0 0 \
                        37 12 0 0 20 0 5 0 123456 1413120000 1713 18446744073709551615 \
                        1 1 0 0 0 0 0 4096 17642 0 0 0 17 1 0 0 0 0 0\n";

    #[test]
    fn stat_fields_are_counted_from_the_last_parenthesis() {
        assert_eq!(
            parse_stat(STAT),
            Some(Stat {
                utime: 37,
                stime: 12,
                num_threads: 5,
                starttime: 123_456,
                vsize: 1_413_120_000,
                rss: 1713,
            })
        );
        assert_eq!(parse_stat("4242 (x) S 1 2"), None, "too short");
        assert_eq!(parse_stat("no parenthesis"), None);
    }

    #[test]
    fn btime() {
        assert_eq!(
            parse_btime("cpu  1 2 3\nintr 5\nbtime 1795000000\nprocesses 9\n"),
            Some(1_795_000_000)
        );
        assert_eq!(parse_btime("cpu 1\n"), None);
    }

    #[test]
    fn this_process_reads_sanely() {
        let p = read().unwrap();
        assert!(p.threads >= 1, "{p:?}");
        assert!(p.open_fds >= 3 && p.open_fds <= p.max_fds, "{p:?}");
        assert!(
            p.resident_bytes > 0 && p.virtual_bytes >= p.resident_bytes,
            "{p:?}"
        );
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!(
            p.start_time_seconds > 1.0e9 && p.start_time_seconds <= now + 1.0,
            "{p:?}"
        );
        assert!(p.cpu_seconds >= 0.0, "{p:?}");
    }
}
