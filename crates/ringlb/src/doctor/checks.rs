//! The verdicts of `ringlb doctor`: pure functions of the gathered facts (and the
//! configuration), one per check, each unit-tested with injected facts.

use std::net::IpAddr;

use ringlb_config::{Config, Listener};
use ringlb_dataplane::fdbudget::FdPlan;
use ringlb_dataplane::sys::LISTEN_BACKLOG;

use super::facts::{Bind, BindState, Control, DirState, Host, Local, Running};
use super::Finding;

/// The oldest kernel whose io_uring has everything the workers' rings use.
const MIN_KERNEL: (u32, u32) = (6, 0);
/// Below this hard RLIMIT_NOFILE a host is short of descriptors for a load balancer even
/// before a file says how many connections it allows.
const LOW_NOFILE: u64 = 65_536;
/// Linux's default start of the unprivileged ports.
const DEFAULT_UNPRIVILEGED_PORT_START: u16 = 1024;
/// How long a local port stays in TIME_WAIT after ringlb closed a backend connection first.
const TIME_WAIT_SECS: u64 = 60;
/// Offenders named in one finding; the rest are counted.
const MAX_NAMED: usize = 5;

/// Checks of the host alone (the file, when given, only sharpens them).
pub fn host(host: &Host, config: Option<&Config>) -> Vec<Finding> {
    let mut findings = vec![kernel(&host.kernel_release)];
    findings.extend(io_uring(
        host.io_uring_disabled,
        &host.io_uring_probe,
        host.root,
    ));
    findings.push(fd_limit(host.nofile, config));
    findings.push(somaxconn(host.somaxconn, config));
    findings.push(port_range(host.port_range, config));
    findings.push(tw_reuse(host.tcp_tw_reuse, host.port_range, config));
    findings
}

/// Checks of what the file meets here: its control socket, state_file, binds and ports.
pub fn local(host: &Host, config: &Config, local: &Local) -> Vec<Finding> {
    let mut findings = vec![control(&local.control)];
    findings.push(state_dir(local.state_dir.as_ref()));
    let instance = match local.control.running {
        Running::Pid(pid) => Some(pid),
        _ => None,
    };
    findings.extend(binds(&local.binds, instance));
    findings.extend(privileged_ports(
        &local.binds,
        host.unprivileged_port_start,
        host.cap_net_bind_service || host.root,
    ));
    // The file is valid, so this only says how many listeners were looked at.
    findings.push(Finding::info(
        "config",
        format!("{} listener(s) checked", config.listeners.len()),
    ));
    findings
}

/// `6.18.44-foo` → (6, 18).
fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split('.').map(|p| {
        let digits: String = p.chars().take_while(char::is_ascii_digit).collect();
        digits.parse::<u32>().ok()
    });
    Some((parts.next()??, parts.next()??))
}

pub fn kernel(release: &str) -> Finding {
    match kernel_version(release) {
        Some(v) if v >= MIN_KERNEL => Finding::ok(
            "kernel",
            format!("Linux {release} (ringlb needs 6.0 or newer)"),
        ),
        Some(_) => Finding::warn(
            "kernel",
            format!("Linux {release} is older than 6.0: the workers' rings need SINGLE_ISSUER (6.0) and COOP_TASKRUN (5.19); only a kernel with those backported can run ringlb (the io_uring check says whether this one does)"),
            "run on Linux 6.0 or newer",
        ),
        None => Finding::warn(
            "kernel",
            format!("cannot read the kernel version from {release:?}"),
            "check `uname -r`: ringlb needs Linux 6.0 or newer",
        ),
    }
}

/// The probe decides; the sysctl explains a failure, or warns that a ring that works for
/// root here would not for the service user.
pub fn io_uring(disabled: Option<u8>, probe: &Result<(), String>, root: bool) -> Vec<Finding> {
    let mut findings = Vec::new();
    match probe {
        Ok(()) => findings.push(Finding::ok(
            "io_uring",
            "a ring set up as the workers' (COOP_TASKRUN | SINGLE_ISSUER) works and has every opcode ringlb uses",
        )),
        Err(e) => {
            let (what, remedy) = match e.split_once("; remedy: ") {
                Some((what, remedy)) => (what.to_string(), remedy.to_string()),
                None => (e.clone(), "run on Linux 6.0 or newer with io_uring enabled".to_string()),
            };
            findings.push(Finding::error(
                "io_uring",
                format!("{what}: `ringlb run` exits 1 at start"),
                remedy,
            ));
        }
    }
    if probe.is_ok() && root && disabled == Some(1) {
        findings.push(Finding::warn(
            "io_uring",
            "kernel.io_uring_disabled=1: only processes with CAP_SYS_ADMIN or in the group kernel.io_uring_group may create rings; this check ran as root, but a service user (the packaged unit runs as user ringlb) cannot",
            "sysctl -w kernel.io_uring_disabled=0, or kernel.io_uring_group=<gid of the service user>; persist it in /etc/sysctl.d/",
        ));
    }
    findings
}

const NOFILE_FIX: &str = "raise the hard limit: LimitNOFILE= in the systemd unit (the packaged unit sets 1048576), or `ulimit -Hn` / /etc/security/limits.conf for a shell; ringlb raises its soft limit to the hard one at start";

pub fn fd_limit(nofile: Option<(u64, u64)>, config: Option<&Config>) -> Finding {
    let Some((_, hard)) = nofile else {
        return Finding::warn("nofile", "cannot read RLIMIT_NOFILE", "check `ulimit -Hn`");
    };
    match config {
        Some(config) => {
            let plan = FdPlan::new(config, hard);
            match plan.warning() {
                Some(w) => Finding::warn("nofile", format!("{w} (this shell's hard limit; a systemd unit sets its own)"), NOFILE_FIX),
                None => Finding::ok(
                    "nofile",
                    format!(
                        "hard limit {hard}: room for the configured limits ({} descriptors) and the reserve of {}",
                        plan.needed, plan.reserve
                    ),
                ),
            }
        }
        None if hard < LOW_NOFILE => Finding::warn(
            "nofile",
            format!("the hard RLIMIT_NOFILE of this shell is {hard}: every TCP connection takes two descriptors, so this is low for a load balancer"),
            NOFILE_FIX,
        ),
        None => Finding::ok("nofile", format!("hard limit {hard}")),
    }
}

fn has_tcp(config: Option<&Config>) -> bool {
    config.is_none_or(|c| c.listeners.iter().any(|l| l.tcp().is_some()))
}

pub fn somaxconn(value: Option<u32>, config: Option<&Config>) -> Finding {
    let backlog = LISTEN_BACKLOG.unsigned_abs();
    match value {
        _ if !has_tcp(config) => Finding::ok("somaxconn", "no TCP listener"),
        None => Finding::warn(
            "somaxconn",
            "cannot read net.core.somaxconn",
            "sysctl net.core.somaxconn",
        ),
        Some(v) if v < backlog => Finding::warn(
            "somaxconn",
            format!("net.core.somaxconn is {v}: the kernel caps ringlb's listen backlog of {backlog} at {v}, so a burst of more than {v} connections waiting for one worker to accept them is dropped"),
            format!("sysctl -w net.core.somaxconn={backlog}; persist it in /etc/sysctl.d/"),
        ),
        Some(v) => Finding::ok(
            "somaxconn",
            format!("{v}: the listen backlog of {backlog} is not cut"),
        ),
    }
}

fn width((low, high): (u16, u16)) -> u64 {
    u64::from(high.saturating_sub(low)) + u64::from(high >= low)
}

/// The connections a backend of `l` may be asked to hold at once: its own
/// max_connections, else the listener's (every connection on it).
fn backend_ceiling(l: &Listener, backend_max: u32) -> u64 {
    let listener = u64::from(l.max_connections);
    match backend_max {
        0 => listener,
        n => u64::from(n).min(listener),
    }
}

pub fn port_range(range: Option<(u16, u16)>, config: Option<&Config>) -> Finding {
    let Some(range) = range else {
        return Finding::warn(
            "port_range",
            "cannot read net.ipv4.ip_local_port_range",
            "sysctl net.ipv4.ip_local_port_range",
        );
    };
    let ports = width(range);
    let mut short = Vec::new();
    for l in config.map_or(&[][..], |c| &c.listeners[..]) {
        let Some(tcp) = l.tcp() else { continue };
        for b in &l.backends {
            let sources = tcp
                .source
                .iter()
                .filter(|s| s.is_ipv4() == b.addr.is_ipv4())
                .count()
                .max(1) as u64;
            let need = backend_ceiling(l, b.max_connections);
            if need > ports * sources {
                short.push(format!(
                    "{}/{} (up to {need} connections, {} ports)",
                    l.name,
                    b.label,
                    ports * sources
                ));
            }
        }
    }
    if short.is_empty() {
        return Finding::ok(
            "port_range",
            format!(
                "{} - {}: {ports} local ports per backend address and source address{}",
                range.0,
                range.1,
                if config.is_some() {
                    ", enough for each backend's max_connections"
                } else {
                    ""
                }
            ),
        );
    }
    Finding::warn(
        "port_range",
        format!(
            "net.ipv4.ip_local_port_range {} - {} gives {ports} local ports toward one backend address (per source: address), fewer than these backends may hold at once (backend max_connections, else the listener's): {}; past that, connects fail with no free local port (reason=resources), ports in TIME_WAIT included",
            range.0,
            range.1,
            named(&short)
        ),
        "sysctl -w net.ipv4.ip_local_port_range=\"1024 65000\" (persist it in /etc/sysctl.d/), add source: addresses to the listener, or lower max_connections",
    )
}

/// Up to [`MAX_NAMED`] items, then how many more.
fn named(items: &[String]) -> String {
    let mut text = items
        .iter()
        .take(MAX_NAMED)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if items.len() > MAX_NAMED {
        text.push_str(&format!(" and {} more", items.len() - MAX_NAMED));
    }
    text
}

/// TIME_WAIT ports toward a backend that is not on loopback can be reused for a new
/// connect only with tcp_tw_reuse=1 (2, the default, is loopback only).
pub fn tw_reuse(value: Option<u8>, range: Option<(u16, u16)>, config: Option<&Config>) -> Finding {
    let remote_backends = config.is_none_or(|c| {
        c.listeners
            .iter()
            .any(|l| l.tcp().is_some() && l.backends.iter().any(|b| !is_loopback(b.addr.ip())))
    });
    match value {
        Some(1) => Finding::ok("tcp_tw_reuse", "1: connects may reuse ports in TIME_WAIT"),
        Some(v) if remote_backends => {
            let rate = range.map_or(String::new(), |r| {
                format!(
                    ": at a steady {} new connections per second toward one backend, the {} ports of ip_local_port_range are all waiting",
                    width(r) / TIME_WAIT_SECS,
                    width(r)
                )
            });
            Finding::warn(
                "tcp_tw_reuse",
                format!("net.ipv4.tcp_tw_reuse is {v}{}: a connect to a backend cannot reuse a local port still in TIME_WAIT ({TIME_WAIT_SECS} s after ringlb closed first){rate}", if v == 2 { " (loopback only)" } else { "" }),
                "sysctl -w net.ipv4.tcp_tw_reuse=1 (safe with TCP timestamps, on by default); persist it in /etc/sysctl.d/",
            )
        }
        Some(v) => Finding::ok(
            "tcp_tw_reuse",
            format!("{v}; every TCP backend is on loopback"),
        ),
        None => Finding::warn(
            "tcp_tw_reuse",
            "cannot read net.ipv4.tcp_tw_reuse",
            "sysctl net.ipv4.tcp_tw_reuse",
        ),
    }
}

fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map_or(v6.is_loopback(), |v4| v4.is_loopback()),
        v4 => v4.is_loopback(),
    }
}

pub fn control(control: &Control) -> Finding {
    let socket = match &control.socket {
        Ok(socket) => socket,
        Err(e) => {
            return Finding::error(
                "control",
                e.clone(),
                "set `control:` in the file to a short path such as /run/ringlb/ringlb.sock",
            )
        }
    };
    let dir = socket
        .parent()
        .map_or_else(|| ".".to_string(), |d| d.display().to_string());
    match (&control.running, &control.dir) {
        (Running::Pid(pid), _) => Finding::ok(
            "control",
            format!("{}: the running instance answers (pid {pid}); `ringlb run` on this file would be refused, `ringlb upgrade` replaces it", socket.display()),
        ),
        (Running::Unknown(why), _) => Finding::warn(
            "control",
            format!("{}: cannot tell whether an instance serves this file: {why}", socket.display()),
            "run doctor as root or as the user ringlb runs as",
        ),
        (Running::No, DirState::Writable) => Finding::ok(
            "control",
            format!("{}: no instance; {dir} is writable by this user", socket.display()),
        ),
        (Running::No, DirState::Missing { parent_writable: true }) if control.derived => Finding::ok(
            "control",
            format!("{}: no instance; {dir} is created at start", socket.display()),
        ),
        (Running::No, DirState::Missing { .. }) if !control.derived => Finding::warn(
            "control",
            format!("{}: {dir} does not exist, and ringlb does not create the directory of a `control:` path", socket.display()),
            format!("under systemd the packaged unit creates /run/ringlb (RuntimeDirectory=ringlb); by hand: install -d -m 0755 -o ringlb -g ringlb {dir}"),
        ),
        (Running::No, DirState::Missing { .. }) => Finding::error(
            "control",
            format!("{}: {dir} does not exist and this user cannot create it", socket.display()),
            "set `control:` to a path in a directory this user may write",
        ),
        (Running::No, DirState::NotWritable(why)) => Finding::error(
            "control",
            format!("{}: this user cannot create the socket in {dir} ({why})", socket.display()),
            format!("make {dir} writable by the user ringlb runs as, or set `control:` elsewhere"),
        ),
    }
}

pub fn state_dir(state: Option<&(std::path::PathBuf, DirState)>) -> Finding {
    let Some((dir, state)) = state else {
        return Finding::info(
            "state_file",
            "not set: drained/maint backends and weight overrides survive reloads and upgrades, not restarts",
        );
    };
    let fix = format!("install -d -m 0750 -o ringlb -g ringlb {} (the packaged unit's StateDirectory=ringlb creates /var/lib/ringlb)", dir.display());
    match state {
        DirState::Writable => Finding::ok(
            "state_file",
            format!("{} is writable by this user", dir.display()),
        ),
        DirState::Missing { .. } => Finding::error(
            "state_file",
            format!("{} does not exist: every admin change (drain, weight, node fail) would fail to be saved", dir.display()),
            fix,
        ),
        DirState::NotWritable(why) => Finding::error(
            "state_file",
            format!("this user cannot write in {} ({why}): admin changes would fail to be saved", dir.display()),
            fix,
        ),
    }
}

fn proto(b: &Bind) -> &'static str {
    if b.udp {
        "udp"
    } else {
        "tcp"
    }
}

/// One finding per listener whose address cannot be bound, else one that all can.
pub fn binds(binds: &[Bind], instance: Option<u32>) -> Vec<Finding> {
    let mut findings = Vec::new();
    let mut held_by_instance = 0;
    for b in binds {
        let what = format!("listener {:?}: {} {}", b.listener, proto(b), b.addr);
        match &b.state {
            BindState::Free => {}
            BindState::Taken { pid: Some(pid), .. } if Some(*pid) == instance => {
                held_by_instance += 1;
            }
            BindState::Taken { pid, command } => {
                let by = match (pid, command) {
                    (Some(pid), Some(cmd)) => format!("pid {pid} ({cmd})"),
                    (Some(pid), None) => format!("pid {pid}"),
                    _ => "another process (run doctor as root to see which)".to_string(),
                };
                findings.push(Finding::error(
                    "bind",
                    format!("{what} is in use by {by}: `ringlb run` would refuse it"),
                    "stop that process or change `bind:`; a ringlb serving another file must give the port up first (ringlb never shares a port through SO_REUSEPORT)",
                ));
            }
            BindState::NotLocal(why) => findings.push(Finding::error(
                "bind",
                format!("{what} cannot be bound: {why}: the address is not on this host"),
                "bind an address this host has (`ip -br addr`), or 0.0.0.0 / [::]",
            )),
            BindState::Fails(why) => findings.push(Finding::error(
                "bind",
                format!("{what} cannot be bound: {why}"),
                "ports below net.ipv4.ip_unprivileged_port_start need CAP_NET_BIND_SERVICE (see the capability line); otherwise the error says what is wrong",
            )),
        }
    }
    if findings.is_empty() {
        let held = match (held_by_instance, instance) {
            (0, _) | (_, None) => String::new(),
            (n, Some(pid)) => format!(" ({n} held by the running instance, pid {pid})"),
        };
        findings.push(Finding::ok(
            "bind",
            format!("{} listener address(es) available{held}", binds.len()),
        ));
    }
    findings
}

/// Ports below net.ipv4.ip_unprivileged_port_start need CAP_NET_BIND_SERVICE (or root).
pub fn privileged_ports(binds: &[Bind], start: Option<u16>, may_bind: bool) -> Option<Finding> {
    let start = start.unwrap_or(DEFAULT_UNPRIVILEGED_PORT_START);
    let low: Vec<String> = binds
        .iter()
        .filter(|b| b.addr.port() != 0 && b.addr.port() < start)
        .map(|b| format!("{} {}", proto(b), b.addr))
        .collect();
    if low.is_empty() {
        return None;
    }
    Some(if may_bind {
        Finding::ok(
            "capability",
            format!("{} below port {start} need CAP_NET_BIND_SERVICE: this process has it (the packaged unit grants it to user ringlb with AmbientCapabilities=)", named(&low)),
        )
    } else {
        Finding::error(
            "capability",
            format!("{} below port {start} need CAP_NET_BIND_SERVICE, which this process lacks", named(&low)),
            "run ringlb under the packaged unit (AmbientCapabilities=CAP_NET_BIND_SERVICE), or `setcap cap_net_bind_service=+ep /usr/bin/ringlb`",
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::Level;
    use std::path::PathBuf;

    fn config(yaml: &str) -> Config {
        ringlb_config::parse(yaml).unwrap()
    }

    fn tcp_listener(extra: &str, backends: &str) -> Config {
        config(&format!(
            "listeners:\n  - {{name: l, bind: 127.0.0.1:7000{extra}, backends: [{backends}]}}\n"
        ))
    }

    #[test]
    fn kernel_versions() {
        assert_eq!(kernel_version("6.18.44-fc-v657"), Some((6, 18)));
        assert_eq!(kernel_version("5.14.0-362.el9.x86_64"), Some((5, 14)));
        assert_eq!(kernel_version("6.0"), Some((6, 0)));
        assert_eq!(kernel_version("garbage"), None);
        assert_eq!(kernel("6.1.0-13-amd64").level, Level::Ok);
        assert_eq!(kernel("6.0.0").level, Level::Ok);
        let old = kernel("5.15.0-91-generic");
        assert_eq!(old.level, Level::Warn);
        assert!(old.message.contains("SINGLE_ISSUER"), "{old:?}");
        assert_eq!(kernel("").level, Level::Warn);
    }

    #[test]
    fn io_uring_probe_decides_and_the_sysctl_warns_for_service_users() {
        for disabled in [None, Some(0)] {
            let ok = io_uring(disabled, &Ok(()), true);
            assert_eq!(ok.len(), 1);
            assert_eq!(ok[0].level, Level::Ok);
        }
        let failed = io_uring(
            Some(2),
            &Err("io_uring is disabled by sysctl kernel.io_uring_disabled=2; remedy: `sysctl -w kernel.io_uring_disabled=0` (as root)".into()),
            true,
        );
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0].level, Level::Error);
        assert!(
            failed[0]
                .message
                .starts_with("io_uring is disabled by sysctl"),
            "{failed:?}"
        );
        assert_eq!(
            failed[0].fix.as_deref(),
            Some("`sysctl -w kernel.io_uring_disabled=0` (as root)")
        );
        let no_remedy = io_uring(None, &Err("io_uring set-up failed: x".into()), false);
        assert!(no_remedy[0].fix.as_deref().unwrap().contains("6.0"));
        // Root passes the probe under io_uring_disabled=1; the service user would not.
        let root = io_uring(Some(1), &Ok(()), true);
        assert_eq!(root.iter().map(|f| f.level).max(), Some(Level::Warn));
        assert!(root[1].fix.as_deref().unwrap().contains("io_uring_group"));
        // A non-root user that passed is in the group: nothing to warn about.
        assert_eq!(io_uring(Some(1), &Ok(()), false).len(), 1);
    }

    #[test]
    fn fd_limit_uses_the_budget_of_the_file() {
        let small = tcp_listener(", max_connections: 1000", "{addr: 127.0.0.1:7001}");
        assert_eq!(
            fd_limit(Some((1024, 1_048_576)), Some(&small)).level,
            Level::Ok
        );
        let w = fd_limit(Some((1024, 1024)), Some(&small));
        assert_eq!(w.level, Level::Warn);
        assert!(w.message.contains("2000 file descriptors"), "{w:?}");
        assert!(w.fix.as_deref().unwrap().contains("LimitNOFILE"));
        assert_eq!(fd_limit(Some((1024, 4096)), None).level, Level::Warn);
        assert_eq!(fd_limit(Some((1024, 1 << 20)), None).level, Level::Ok);
        assert_eq!(fd_limit(None, None).level, Level::Warn);
    }

    #[test]
    fn somaxconn_below_the_backlog_warns_only_with_tcp_listeners() {
        let tcp = tcp_listener("", "{addr: 127.0.0.1:7001}");
        let udp = config("listeners:\n  - {name: u, bind: 127.0.0.1:7000, protocol: udp, backends: [{addr: 127.0.0.1:7001}]}\n");
        assert_eq!(somaxconn(Some(4096), Some(&tcp)).level, Level::Ok);
        assert_eq!(somaxconn(Some(65535), None).level, Level::Ok);
        let low = somaxconn(Some(128), Some(&tcp));
        assert_eq!(low.level, Level::Warn);
        assert!(
            low.fix.as_deref().unwrap().contains("somaxconn=4096"),
            "{low:?}"
        );
        assert_eq!(somaxconn(Some(128), Some(&udp)).level, Level::Ok);
        assert_eq!(somaxconn(None, None).level, Level::Warn);
    }

    #[test]
    fn port_range_against_each_backends_ceiling() {
        assert_eq!(width((32768, 60999)), 28232);
        assert_eq!(width((1024, 1024)), 1);
        assert_eq!(width((2000, 1000)), 0);
        let default_range = Some((32768, 60999));
        // The listener's 50,000 default could all go to its one backend.
        let defaults = tcp_listener("", "{addr: 10.0.0.1:7001}");
        let w = port_range(default_range, Some(&defaults));
        assert_eq!(w.level, Level::Warn);
        assert!(
            w.message
                .contains("l/10.0.0.1:7001 (up to 50000 connections, 28232 ports)"),
            "{w:?}"
        );
        // A backend cap, a listener cap, or a second source address each make it fit.
        for ok in [
            tcp_listener("", "{addr: 10.0.0.1:7001, max_connections: 20000}"),
            tcp_listener(", max_connections: 20000", "{addr: 10.0.0.1:7001}"),
            tcp_listener(", source: [10.0.0.5, 10.0.0.6]", "{addr: 10.0.0.1:7001}"),
        ] {
            assert_eq!(
                port_range(default_range, Some(&ok)).level,
                Level::Ok,
                "{ok:?}"
            );
        }
        // A source address of the other family adds nothing for this backend.
        let v6_source = tcp_listener(", source: [10.0.0.5, \"::1\"]", "{addr: 10.0.0.1:7001}");
        assert_eq!(
            port_range(default_range, Some(&v6_source)).level,
            Level::Warn
        );
        assert_eq!(port_range(default_range, None).level, Level::Ok);
        assert_eq!(port_range(None, None).level, Level::Warn);
        let many: Vec<String> = (0..7).map(|i| format!("b{i}")).collect();
        assert_eq!(named(&many), "b0, b1, b2, b3, b4 and 2 more");
    }

    #[test]
    fn tw_reuse_matters_for_backends_off_loopback() {
        let remote = tcp_listener("", "{addr: 10.0.0.1:7001}");
        let local = tcp_listener("", "{addr: 127.0.0.1:7001}");
        let range = Some((32768, 60999));
        assert_eq!(tw_reuse(Some(1), range, Some(&remote)).level, Level::Ok);
        let w = tw_reuse(Some(2), range, Some(&remote));
        assert_eq!(w.level, Level::Warn);
        assert!(
            w.message.contains("loopback only")
                && w.message.contains("470 new connections per second"),
            "{w:?}"
        );
        assert_eq!(tw_reuse(Some(0), range, Some(&remote)).level, Level::Warn);
        assert_eq!(tw_reuse(Some(2), range, Some(&local)).level, Level::Ok);
        assert_eq!(tw_reuse(Some(2), None, None).level, Level::Warn);
        assert!(is_loopback("::ffff:127.0.0.1".parse().unwrap()));
        assert!(is_loopback("::1".parse().unwrap()));
        assert!(!is_loopback("10.0.0.1".parse().unwrap()));
    }

    fn control_facts(running: Running, dir: DirState, derived: bool) -> Control {
        Control {
            socket: Ok(PathBuf::from("/run/ringlb/ringlb.sock")),
            derived,
            dir,
            running,
        }
    }

    #[test]
    fn control_socket_directory_and_running_instance() {
        let level = |running, dir, derived| control(&control_facts(running, dir, derived)).level;
        let missing = |parent_writable| DirState::Missing { parent_writable };
        assert_eq!(level(Running::Pid(42), missing(false), false), Level::Ok);
        assert_eq!(level(Running::No, DirState::Writable, false), Level::Ok);
        assert_eq!(level(Running::No, missing(true), true), Level::Ok);
        assert_eq!(level(Running::No, missing(true), false), Level::Warn);
        assert_eq!(level(Running::No, missing(false), true), Level::Error);
        assert_eq!(
            level(Running::No, DirState::NotWritable("EACCES".into()), true),
            Level::Error
        );
        assert_eq!(
            level(
                Running::Unknown("Permission denied".into()),
                DirState::Writable,
                false
            ),
            Level::Warn
        );
        let running = control(&control_facts(Running::Pid(42), DirState::Writable, false));
        assert!(running.message.contains("pid 42"), "{running:?}");
        let explicit = control(&control_facts(Running::No, missing(true), false));
        assert!(
            explicit
                .fix
                .as_deref()
                .unwrap()
                .contains("RuntimeDirectory"),
            "{explicit:?}"
        );
        let too_long = Control {
            socket: Err("too long".into()),
            ..control_facts(Running::No, DirState::Writable, true)
        };
        assert_eq!(control(&too_long).level, Level::Error);
    }

    #[test]
    fn state_file_directory() {
        let dir = PathBuf::from("/var/lib/ringlb");
        assert_eq!(state_dir(None).level, Level::Info);
        assert_eq!(
            state_dir(Some(&(dir.clone(), DirState::Writable))).level,
            Level::Ok
        );
        let missing = state_dir(Some(&(
            dir.clone(),
            DirState::Missing {
                parent_writable: true,
            },
        )));
        assert_eq!(missing.level, Level::Error);
        assert!(missing.fix.as_deref().unwrap().contains("StateDirectory"));
        assert_eq!(
            state_dir(Some(&(dir, DirState::NotWritable("EROFS".into())))).level,
            Level::Error
        );
    }

    fn bind(port: u16, udp: bool, state: BindState) -> Bind {
        Bind {
            listener: format!("l{port}"),
            addr: format!("0.0.0.0:{port}").parse().unwrap(),
            udp,
            state,
        }
    }

    #[test]
    fn binds_free_held_by_this_instance_or_taken() {
        let taken = |pid: Option<u32>| BindState::Taken {
            pid,
            command: pid.map(|_| "nginx".to_string()),
        };
        let all_free = binds(
            &[
                bind(7000, false, BindState::Free),
                bind(7000, true, BindState::Free),
            ],
            None,
        );
        assert_eq!(all_free.len(), 1);
        assert_eq!(all_free[0].level, Level::Ok);
        assert!(
            all_free[0].message.starts_with("2 listener"),
            "{all_free:?}"
        );
        // Held by the instance serving this very file: what a running service looks like.
        let ours = binds(&[bind(7000, false, taken(Some(42)))], Some(42));
        assert_eq!(ours[0].level, Level::Ok);
        assert!(ours[0].message.contains("pid 42"), "{ours:?}");
        let theirs = binds(
            &[
                bind(7000, false, taken(Some(7))),
                bind(7001, false, taken(None)),
            ],
            Some(42),
        );
        assert_eq!(theirs.len(), 2);
        assert!(theirs.iter().all(|f| f.level == Level::Error));
        assert!(theirs[0].message.contains("pid 7 (nginx)"), "{theirs:?}");
        assert!(
            theirs[1].message.contains("run doctor as root"),
            "{theirs:?}"
        );
        // An address this host lacks, and any other failure, each with its own fix.
        let fix_for = |state| {
            let found = binds(&[bind(7000, false, state)], None);
            assert_eq!(found[0].level, Level::Error);
            found[0].fix.clone().unwrap_or_default()
        };
        assert!(fix_for(BindState::NotLocal(
            "Cannot assign requested address".into()
        ))
        .contains("ip -br addr"));
        assert!(
            fix_for(BindState::Fails("Permission denied".into())).contains("CAP_NET_BIND_SERVICE")
        );
    }

    #[test]
    fn low_ports_need_the_capability() {
        let b = [
            bind(443, false, BindState::Free),
            bind(8443, false, BindState::Free),
        ];
        assert_eq!(
            privileged_ports(&b, Some(1024), true).unwrap().level,
            Level::Ok
        );
        let e = privileged_ports(&b, None, false).unwrap();
        assert_eq!(e.level, Level::Error);
        assert!(
            e.message.contains("tcp 0.0.0.0:443") && !e.message.contains("8443"),
            "{e:?}"
        );
        // A host that lowered the start needs no capability for 443.
        assert_eq!(privileged_ports(&b, Some(0), false), None);
        assert_eq!(
            privileged_ports(&[bind(8443, false, BindState::Free)], Some(1024), false),
            None
        );
    }
}
