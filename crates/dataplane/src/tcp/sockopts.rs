//! Dead-peer detection on both legs of a connection: a listener's `tcp_keepalive` and
//! `tcp_user_timeout` (docs/configuration.md) become SO_KEEPALIVE, TCP_KEEPIDLE,
//! TCP_KEEPINTVL, TCP_KEEPCNT and TCP_USER_TIMEOUT on the client's and the backend's
//! socket, once the backend is connected. When the kernel gives up on a peer, the relay
//! reads ETIMEDOUT on that leg (`client_timed_out` / `backend_timed_out`) and resets the
//! other.
//!
//! Set per connection from the settings it was admitted with, so a reload applies to new
//! connections only. On the backend socket it is set after the connect: TCP_USER_TIMEOUT
//! also bounds an unanswered SYN on recent kernels, and the handshake has its own bound,
//! `connect_timeout`, with its retry rules. A failing setsockopt is logged (at most once
//! per 5 s per listener and worker) and the connection goes on without it: the link
//! still works, only the detection is missing, and refusing clients over it would turn
//! a kernel quirk into an outage.

use std::io;

use ringlb_config::Liveness;
use socket2::{Socket, TcpKeepalive};
use thiserror::Error;

use super::Accounting;

/// One leg of a connection, for the log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Leg {
    Client,
    Backend,
}

impl Leg {
    fn as_str(self) -> &'static str {
        match self {
            Leg::Client => "client",
            Leg::Backend => "backend",
        }
    }
}

/// The option the kernel refused.
#[derive(Debug, Error)]
enum SockoptError {
    #[error("SO_KEEPALIVE with TCP_KEEPIDLE/TCP_KEEPINTVL/TCP_KEEPCNT: {0}")]
    Keepalive(io::Error),
    #[error("TCP_USER_TIMEOUT: {0}")]
    UserTimeout(io::Error),
}

/// Apply `liveness` to `socket` (no system call when both are off); a failure is logged,
/// rate-limited, and the connection goes on.
pub(super) fn apply(accounting: &Accounting, leg: Leg, socket: &Socket, liveness: &Liveness) {
    if let Err(e) = set(socket, liveness) {
        accounting
            .sockopt_log
            .note(log::Level::Warn, &accounting.state.name, || {
                format!(
                    "cannot set {e} on a {} socket; the connection goes on without dead-peer detection on that leg",
                    leg.as_str()
                )
            });
    }
}

fn set(socket: &Socket, liveness: &Liveness) -> Result<(), SockoptError> {
    if let Some(k) = liveness.keepalive {
        // Validation keeps these within the kernel's ranges (whole seconds, count ≤ 127).
        let params = TcpKeepalive::new()
            .with_time(k.idle)
            .with_interval(k.interval)
            .with_retries(k.count);
        socket
            .set_tcp_keepalive(&params)
            .map_err(SockoptError::Keepalive)?;
    }
    if let Some(timeout) = liveness.user_timeout {
        socket
            .set_tcp_user_timeout(Some(timeout))
            .map_err(SockoptError::UserTimeout)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringlb_config::Keepalive;
    use socket2::{Domain, Protocol, Type};
    use std::time::Duration;

    fn tcp_socket() -> Socket {
        Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))
            .unwrap_or_else(|e| panic!("socket: {e}"))
    }

    #[test]
    fn off_leaves_the_kernel_defaults() {
        let s = tcp_socket();
        set(&s, &Liveness::default()).unwrap_or_else(|e| panic!("{e}"));
        assert!(!s.keepalive().unwrap_or(true));
        assert_eq!(s.tcp_user_timeout().ok(), Some(None));
    }

    #[test]
    fn every_option_reaches_the_socket() {
        let s = tcp_socket();
        let liveness = Liveness {
            keepalive: Some(Keepalive {
                idle: Duration::from_secs(7),
                interval: Duration::from_secs(3),
                count: 4,
            }),
            user_timeout: Some(Duration::from_millis(2500)),
            response_timeout: None,
        };
        set(&s, &liveness).unwrap_or_else(|e| panic!("{e}"));
        let read = (
            s.keepalive().ok(),
            s.keepalive_time().ok(),
            s.keepalive_interval().ok(),
            s.keepalive_retries().ok(),
            s.tcp_user_timeout().ok(),
        );
        assert_eq!(
            read,
            (
                Some(true),
                Some(Duration::from_secs(7)),
                Some(Duration::from_secs(3)),
                Some(4),
                Some(Some(Duration::from_millis(2500)))
            )
        );
    }

    #[test]
    fn a_refused_option_names_itself() {
        // Not a TCP socket: the kernel refuses TCP-level options.
        let s = Socket::new(Domain::IPV4, Type::DGRAM, None).unwrap_or_else(|e| panic!("{e}"));
        let e = set(
            &s,
            &Liveness {
                keepalive: None,
                user_timeout: Some(Duration::from_secs(1)),
                response_timeout: None,
            },
        )
        .err()
        .map(|e| e.to_string());
        assert!(
            e.as_deref()
                .is_some_and(|e| e.starts_with("TCP_USER_TIMEOUT: ")),
            "{e:?}"
        );
    }
}
