//! How a client connection or UDP session ended, typed once for TCP and UDP. One outcome
//! value picks the counter (`WorkerCounters::count`) and writes the access-log line
//! (`ListenerState::finish`), so the two can never disagree. (A backend connect failure is typed too: `ringlb_scheduler::ConnectFailure`,
//! shared with the prober.)

use std::net::SocketAddr;
use std::time::Duration;

use ringlb_config::Protocol;

use crate::routes::TlsSeen;

/// Why a client was closed without being forwarded: the access log's `end=denied_<reason>`
/// and the `reason` label of `ringlb_denied_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenyReason {
    /// Source address not in `allow`.
    NotAllowed,
    /// Listener `max_connections` (TCP) or `max_sessions` (UDP) reached.
    Limit,
    /// No backend was up, or the last connect attempt was refused or unreachable.
    NoBackend,
    /// This host ran out of something the client needed, never the backend's fault:
    /// file descriptors or memory (EMFILE, ENFILE, ENOBUFS, ENOMEM) on accept or on the
    /// backend socket, or source ports toward the backend (EADDRNOTAVAIL).
    Resources,
    /// TCP: the last connect attempt got no answer within `connect_timeout`.
    ConnectTimeout,
    /// TCP: the client's source (IPv4 address or IPv6 /64) is at its `per_source`
    /// `max_connections` or out of its `new_per_second` bucket.
    SourceLimit,
    /// TCP with routes: no ClientHello to route by and `on_non_tls: close`, a hello below
    /// `min_tls_version`, or a client gone before its hello ended (the reason is in
    /// `ringlb_sni_rejected_total`).
    Unrouted,
}

impl DenyReason {
    pub const ALL: [DenyReason; 7] = [
        DenyReason::NotAllowed,
        DenyReason::Limit,
        DenyReason::NoBackend,
        DenyReason::Resources,
        DenyReason::ConnectTimeout,
        DenyReason::SourceLimit,
        DenyReason::Unrouted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DenyReason::NotAllowed => "not_allowed",
            DenyReason::Limit => "limit",
            DenyReason::NoBackend => "no_backend",
            DenyReason::Resources => "resources",
            DenyReason::ConnectTimeout => "connect_timeout",
            DenyReason::SourceLimit => "source_limit",
            DenyReason::Unrouted => "unrouted",
        }
    }
}

/// Why a forwarded connection, a UDP session or one backend leg of a session ended; the
/// access log's `end=` and the `end` label of `ringlb_connections_ended_total`.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// The client closed first (clean FIN), then the backend.
    ClientClose,
    /// The backend closed first (clean FIN), then the client.
    BackendClose,
    ClientReset,
    BackendReset,
    /// TCP: the kernel gave up on the client: keepalive probes or (`tcp_user_timeout`)
    /// sent data went unanswered, or retransmissions ran out; the backend was reset.
    ClientTimedOut,
    /// TCP: the kernel gave up on the backend, as for `ClientTimedOut`; the client was reset.
    BackendTimedOut,
    /// TCP: no byte either way for `idle_timeout`.
    IdleTimeout,
    /// `shutdown_timeout` expired while it was still open.
    DrainCut,
    /// A local failure (e.g. could not create a pipe); both sides were reset.
    LocalError,
    /// TCP: the PROXY protocol header could not be sent to the backend; both sides reset.
    ProxyHeaderFailed,
    /// UDP: silent for `session_timeout` (or the drain quiet time).
    Expired,
    /// UDP: its backend went down or refused; the session goes on with another backend.
    Moved,
    /// TCP: its backend was marked down and the listener's `on_down: close` ended it.
    BackendDownClose,
    /// TCP: its backend was marked down and `on_down: reset` reset it.
    BackendDownReset,
    /// TCP: `ringlb ctl shutdown-sessions` closed it.
    ShutdownSessionsClose,
    /// TCP: `ringlb ctl shutdown-sessions --reset` reset it.
    ShutdownSessionsReset,
    /// TCP: older than `max_connection_duration`, closed once quiet.
    MaxDuration,
    /// TCP: on a tier no longer in use once traffic went back to the preferred tiers;
    /// `on_recover: shed_backup` closed it.
    ShedBackup,
}

impl EndReason {
    pub const ALL: [EndReason; 18] = [
        EndReason::ClientClose,
        EndReason::BackendClose,
        EndReason::ClientReset,
        EndReason::BackendReset,
        EndReason::ClientTimedOut,
        EndReason::BackendTimedOut,
        EndReason::IdleTimeout,
        EndReason::DrainCut,
        EndReason::LocalError,
        EndReason::ProxyHeaderFailed,
        EndReason::Expired,
        EndReason::Moved,
        EndReason::BackendDownClose,
        EndReason::BackendDownReset,
        EndReason::ShutdownSessionsClose,
        EndReason::ShutdownSessionsReset,
        EndReason::MaxDuration,
        EndReason::ShedBackup,
    ];

    /// Whether a listener of `protocol` can end a connection or session this way (the
    /// series `ringlb_connections_ended_total` shows for it).
    pub fn applies_to(self, protocol: Protocol) -> bool {
        match self {
            EndReason::DrainCut => true,
            EndReason::Expired | EndReason::Moved => protocol == Protocol::Udp,
            _ => protocol == Protocol::Tcp,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::ClientClose => "client_close",
            EndReason::BackendClose => "backend_close",
            EndReason::ClientReset => "client_reset",
            EndReason::BackendReset => "backend_reset",
            EndReason::ClientTimedOut => "client_timed_out",
            EndReason::BackendTimedOut => "backend_timed_out",
            EndReason::IdleTimeout => "idle_timeout",
            EndReason::DrainCut => "drain_cut",
            EndReason::LocalError => "local_error",
            EndReason::ProxyHeaderFailed => "proxy_header_failed",
            EndReason::Expired => "expired",
            EndReason::Moved => "moved",
            EndReason::BackendDownClose => "backend_down_close",
            EndReason::BackendDownReset => "backend_down_reset",
            EndReason::ShutdownSessionsClose => "shutdown_sessions_close",
            EndReason::ShutdownSessionsReset => "shutdown_sessions_reset",
            EndReason::MaxDuration => "max_duration",
            EndReason::ShedBackup => "shed_backup",
        }
    }
}

/// Why the control plane asks a worker to end connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndCause {
    /// The prober marked their backend down and the listener says `on_down: close|reset`.
    BackendDown,
    /// `ringlb ctl shutdown-sessions`.
    ShutdownSessions,
    /// `on_recover: shed_backup`: new connections went back to preferred tiers.
    ShedBackup,
}

/// How a connection the control plane asked to end ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndMode {
    /// The relay stops reading, writes what it holds, sends a FIN to both sides, and
    /// closes once they close too (or after a short linger).
    Close,
    /// Both sides get an RST at once.
    Reset,
}

/// An end the control plane asks for: why and how, which name its [`EndReason`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EndOrder {
    pub cause: EndCause,
    pub mode: EndMode,
}

impl EndOrder {
    pub fn reason(self) -> EndReason {
        match (self.cause, self.mode) {
            (EndCause::BackendDown, EndMode::Close) => EndReason::BackendDownClose,
            (EndCause::BackendDown, EndMode::Reset) => EndReason::BackendDownReset,
            (EndCause::ShutdownSessions, EndMode::Close) => EndReason::ShutdownSessionsClose,
            (EndCause::ShutdownSessions, EndMode::Reset) => EndReason::ShutdownSessionsReset,
            // Shedding is always graceful; a reset order counts the same.
            (EndCause::ShedBackup, _) => EndReason::ShedBackup,
        }
    }
}

/// The whole story of one connection or session leg, as counted and logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Closed without being forwarded.
    Denied(DenyReason),
    /// Forwarded, then ended.
    Ended(EndReason),
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Denied(reason) => write!(f, "denied_{}", reason.as_str()),
            Outcome::Ended(reason) => f.write_str(reason.as_str()),
        }
    }
}

/// One access-log record. `bytes_in` is client → backend, `bytes_out` backend → client, as
/// in `ringlb_bytes_total{direction}`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Record<'a> {
    pub(crate) client: SocketAddr,
    /// The backend's label, `-` when none was connected.
    pub(crate) backend: &'a str,
    pub(crate) duration: Duration,
    pub(crate) bytes_in: u64,
    pub(crate) bytes_out: u64,
    pub(crate) outcome: Outcome,
    /// What a listener with routes read of the ClientHello; `None` elsewhere.
    pub(crate) tls: Option<&'a TlsSeen>,
}

impl Record<'_> {
    /// A client turned away before anything was forwarded, after `duration` (the access
    /// log shows how long the client really waited, e.g. on connect attempts).
    pub(crate) fn denied(
        client: SocketAddr,
        reason: DenyReason,
        duration: Duration,
    ) -> Record<'static> {
        Record {
            client,
            backend: "-",
            duration,
            bytes_in: 0,
            bytes_out: 0,
            outcome: Outcome::Denied(reason),
            tls: None,
        }
    }
}

/// The access-log message of one record (docs/operations.md, "Access log"), written
/// straight into the log line: no string of its own is built.
pub(crate) struct AccessLine<'a> {
    pub(crate) listener: &'a str,
    pub(crate) record: &'a Record<'a>,
}

impl std::fmt::Display for AccessLine<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let r = self.record;
        write!(
            f,
            "listener={} client={} backend={} duration_ms={} bytes_in={} bytes_out={} end={}",
            self.listener,
            r.client,
            r.backend,
            r.duration.as_millis(),
            r.bytes_in,
            r.bytes_out,
            r.outcome
        )?;
        match r.tls {
            Some(seen) => write!(f, " {seen}"),
            None => Ok(()),
        }
    }
}

/// Logs one record's access line at info, target `ringlb::access`, with its fields
/// as structured values too (the JSON log format writes them as members).
pub(crate) fn log_access(listener: &str, r: &Record) {
    let duration_ms = u64::try_from(r.duration.as_millis()).unwrap_or(u64::MAX);
    log::info!(target: "ringlb::access",
        listener = listener, client:% = r.client, backend = r.backend,
        duration_ms = duration_ms, bytes_in = r.bytes_in, bytes_out = r.bytes_out,
        end:% = r.outcome;
        "{}", AccessLine { listener, record: r });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::WorkerCounters;

    /// Distinct, and each one `key=value` token in the access log.
    fn assert_unique_tokens(names: &[&str]) {
        let set: std::collections::HashSet<&&str> = names.iter().collect();
        assert_eq!(set.len(), names.len(), "{names:?}");
        assert!(names
            .iter()
            .all(|n| !n.contains(|c: char| c.is_whitespace() || c == '=')));
    }

    #[test]
    fn end_and_deny_names_are_unique_tokens() {
        assert_unique_tokens(&EndReason::ALL.map(EndReason::as_str));
        assert_unique_tokens(&DenyReason::ALL.map(DenyReason::as_str));
    }

    fn access_line(listener: &str, record: &Record) -> String {
        AccessLine { listener, record }.to_string()
    }

    #[test]
    fn access_line_format() {
        let client: SocketAddr = "127.0.0.1:5000".parse().unwrap_or_else(|e| panic!("{e}"));
        let ended = Record {
            client,
            backend: "127.0.0.1:9000",
            duration: Duration::from_millis(1500),
            bytes_in: 10,
            bytes_out: 20,
            outcome: Outcome::Ended(EndReason::DrainCut),
            tls: None,
        };
        assert_eq!(
            access_line("web", &ended),
            "listener=web client=127.0.0.1:5000 backend=127.0.0.1:9000 duration_ms=1500 \
             bytes_in=10 bytes_out=20 end=drain_cut"
        );
        assert_eq!(
            access_line(
                "web",
                &Record::denied(client, DenyReason::Limit, Duration::ZERO)
            ),
            "listener=web client=127.0.0.1:5000 backend=- duration_ms=0 bytes_in=0 \
             bytes_out=0 end=denied_limit"
        );
        let timed_out = Record::denied(
            client,
            DenyReason::ConnectTimeout,
            Duration::from_millis(3502),
        );
        assert_eq!(
            access_line("web", &timed_out),
            "listener=web client=127.0.0.1:5000 backend=- duration_ms=3502 bytes_in=0 \
             bytes_out=0 end=denied_connect_timeout"
        );
    }

    #[test]
    fn each_protocol_shows_the_ends_it_can_have() {
        let names = |p| -> Vec<&str> {
            EndReason::ALL
                .into_iter()
                .filter(|r| r.applies_to(p))
                .map(EndReason::as_str)
                .collect()
        };
        assert_eq!(names(Protocol::Udp), ["drain_cut", "expired", "moved"]);
        let tcp = names(Protocol::Tcp);
        assert_eq!(tcp.len(), 16, "{tcp:?}");
        assert!(tcp.contains(&"client_timed_out") && tcp.contains(&"backend_timed_out"));
        assert!(tcp.contains(&"proxy_header_failed") && !tcp.contains(&"expired"));
        assert!(tcp.contains(&"backend_down_close") && tcp.contains(&"max_duration"));
    }

    #[test]
    fn every_order_names_its_own_reason() {
        let mut reasons = Vec::new();
        for cause in [EndCause::BackendDown, EndCause::ShutdownSessions] {
            for mode in [EndMode::Close, EndMode::Reset] {
                let reason = EndOrder { cause, mode }.reason();
                let mode_name = if mode == EndMode::Close {
                    "_close"
                } else {
                    "_reset"
                };
                assert!(reason.as_str().ends_with(mode_name), "{reason:?}");
                reasons.push(reason);
            }
        }
        reasons.dedup();
        assert_eq!(reasons.len(), 4);
    }

    #[test]
    fn end_reasons_index_their_counters() {
        for (i, e) in EndReason::ALL.iter().enumerate() {
            assert_eq!(
                *e as usize, i,
                "{e:?}: ALL must list reasons in declaration order"
            );
        }
    }

    #[test]
    fn outcomes_count_where_the_metrics_read_them() {
        let counters = WorkerCounters::default();
        counters.count(Outcome::Denied(DenyReason::NoBackend));
        counters.count(Outcome::Denied(DenyReason::ConnectTimeout));
        counters.count(Outcome::Ended(EndReason::ProxyHeaderFailed));
        counters.count(Outcome::Ended(EndReason::ProxyHeaderFailed));
        assert_eq!(counters.denied(DenyReason::NoBackend).get(), 1);
        assert_eq!(counters.denied(DenyReason::ConnectTimeout).get(), 1);
        assert_eq!(counters.denied(DenyReason::Resources).get(), 0);
        assert_eq!(counters.ended(EndReason::ProxyHeaderFailed).get(), 2);
        let others: u64 = EndReason::ALL
            .iter()
            .filter(|e| **e != EndReason::ProxyHeaderFailed)
            .map(|e| counters.ended(*e).get())
            .sum();
        assert_eq!(others, 0);
    }
}
