//! How a TCP connect to a backend failed, in the words operators read in logs. One
//! classification for the prober's checks and the data plane's client connects, so a
//! refused backend is called `refused` whichever of the two found it.

use std::fmt;
use std::io;

use nix::errno::Errno;

/// Why a connect to a backend did not complete. `Display` is one token, no spaces.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ConnectFailure {
    /// ECONNREFUSED: the host answered with RST, nothing listens on the port (`refused`).
    Refused,
    /// No answer within the timeout, or the kernel's ETIMEDOUT (`timeout`).
    Timeout,
    /// EHOSTUNREACH, ENETUNREACH, EHOSTDOWN, ENETDOWN: no route or ICMP unreachable
    /// (`unreachable`).
    Unreachable,
    /// Any other error, by errno name, e.g. `Error("EACCES")` → `error:EACCES`.
    Error(String),
}

impl ConnectFailure {
    /// Classify a connect error.
    pub fn classify(err: &io::Error) -> Self {
        let Some(code) = err.raw_os_error() else {
            return ConnectFailure::Error(token(&format!("{:?}", err.kind())));
        };
        match Errno::from_raw(code) {
            Errno::ECONNREFUSED => ConnectFailure::Refused,
            // The kernel's own SYN retries ran out (only when the timeout exceeds them).
            Errno::ETIMEDOUT => ConnectFailure::Timeout,
            Errno::EHOSTUNREACH | Errno::ENETUNREACH | Errno::EHOSTDOWN | Errno::ENETDOWN => {
                ConnectFailure::Unreachable
            }
            errno => ConnectFailure::Error(format!("{errno:?}")),
        }
    }

    /// Errors that describe this host, not the backend: they must not count against it.
    /// Out of fds or memory (EMFILE, ENFILE, ENOBUFS, ENOMEM, EAGAIN), or out of local
    /// ports / a source address that is not ours (EADDRNOTAVAIL: connect found no free
    /// source port toward this destination; EADDRINUSE: the 4-tuple is taken).
    pub fn is_local(err: &io::Error) -> bool {
        matches!(
            err.raw_os_error().map(Errno::from_raw),
            Some(
                Errno::EMFILE
                    | Errno::ENFILE
                    | Errno::ENOBUFS
                    | Errno::ENOMEM
                    | Errno::EAGAIN
                    | Errno::EADDRNOTAVAIL
                    | Errno::EADDRINUSE
            )
        )
    }

    /// Local errors about source addresses and ports rather than fds or memory: another
    /// source address, or another backend, may still succeed.
    pub fn is_address_exhaustion(err: &io::Error) -> bool {
        matches!(
            err.raw_os_error().map(Errno::from_raw),
            Some(Errno::EADDRNOTAVAIL | Errno::EADDRINUSE)
        )
    }
}

impl fmt::Display for ConnectFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnectFailure::Refused => f.write_str("refused"),
            ConnectFailure::Timeout => f.write_str("timeout"),
            ConnectFailure::Unreachable => f.write_str("unreachable"),
            ConnectFailure::Error(errno) => write!(f, "error:{errno}"),
        }
    }
}

/// One log token: no spaces, so `outcome=...` stays one `key=value` field.
fn token(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_whitespace() || c == '=' {
                '_'
            } else {
                c
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(errno: Errno) -> io::Error {
        io::Error::from_raw_os_error(errno as i32)
    }

    #[test]
    fn classifies_errnos() {
        let cases = [
            (os(Errno::ECONNREFUSED), "refused"),
            (os(Errno::ETIMEDOUT), "timeout"),
            (os(Errno::EHOSTUNREACH), "unreachable"),
            (os(Errno::ENETUNREACH), "unreachable"),
            (os(Errno::EHOSTDOWN), "unreachable"),
            (os(Errno::EACCES), "error:EACCES"),
            (
                io::Error::new(io::ErrorKind::InvalidInput, "x y"),
                "error:InvalidInput",
            ),
        ];
        for (err, want) in cases {
            assert_eq!(ConnectFailure::classify(&err).to_string(), want, "{err}");
        }
    }

    #[test]
    fn local_errors_are_not_backend_failures() {
        assert!(ConnectFailure::is_local(&os(Errno::EMFILE)));
        assert!(ConnectFailure::is_local(&os(Errno::ENOBUFS)));
        assert!(!ConnectFailure::is_local(&os(Errno::ECONNREFUSED)));
        assert!(!ConnectFailure::is_local(&os(Errno::ETIMEDOUT)));
        assert!(!ConnectFailure::is_local(&os(Errno::EHOSTUNREACH)));
        // Out of source ports toward a busy backend is this host's limit, not the backend.
        assert!(ConnectFailure::is_local(&os(Errno::EADDRNOTAVAIL)));
        assert!(ConnectFailure::is_local(&os(Errno::EADDRINUSE)));
    }

    #[test]
    fn only_port_and_address_errors_are_exhaustion() {
        assert!(ConnectFailure::is_address_exhaustion(&os(
            Errno::EADDRNOTAVAIL
        )));
        assert!(ConnectFailure::is_address_exhaustion(&os(
            Errno::EADDRINUSE
        )));
        assert!(!ConnectFailure::is_address_exhaustion(&os(Errno::EMFILE)));
        assert!(!ConnectFailure::is_address_exhaustion(&os(
            Errno::ECONNREFUSED
        )));
    }

    #[test]
    fn tokens_have_no_spaces() {
        assert_eq!(
            token("Connection reset by=peer"),
            "Connection_reset_by_peer"
        );
    }
}
