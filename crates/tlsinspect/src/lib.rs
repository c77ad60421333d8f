//! ringlb-tlsinspect: what a TLS client asks for, read from its ClientHello without
//! terminating TLS.
//!
//! Owns: the TLS record layer and ClientHello parsing, as far as routing needs: the server
//! name (SNI), the offered application protocols (ALPN) and the highest offered version.
//! Must not: do I/O, allocate beyond the hello it was given, panic on any input.
//!
//! The caller reads from the client into one buffer and calls [`inspect`] after each read:
//! [`InspectError::Incomplete`] means "read more"; anything else is the verdict. Nothing is
//! kept between calls, so a hello that arrives one byte per TCP segment, or spread over
//! several TLS records, is read the same as one that arrives whole. Re-reading is cheap:
//! the hello itself is parsed only once its last byte is in.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

mod hello;
mod record;
#[doc(hidden)]
pub mod synthetic;

use std::fmt;

pub use hello::ClientHello;

/// The largest ClientHello handshake message read (its 4-byte header included). Hellos with
/// post-quantum key shares are 1.5–2 KiB; 16 KiB is the record layer's own fragment limit.
pub const MAX_HELLO: usize = 16 * 1024;

/// The most bytes [`inspect`] looks at: a [`MAX_HELLO`] message plus the headers of the
/// records it is split into, when they are not tiny. Past this without a verdict, the
/// input is [`InspectError::TooLarge`]; a caller never needs a larger buffer.
pub const MAX_INPUT: usize = MAX_HELLO + 1024;

/// Why the bytes read so far do not give a ClientHello.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InspectError {
    /// The first bytes are not a TLS handshake record: another protocol.
    #[error("not TLS")]
    NotTls,
    /// A TLS handshake record, but not a well-formed ClientHello.
    #[error("malformed ClientHello: {0}")]
    Malformed(&'static str),
    /// The hello is longer than [`MAX_HELLO`] (or its records than [`MAX_INPUT`]).
    #[error("ClientHello larger than {MAX_HELLO} bytes")]
    TooLarge,
    /// Well-formed so far; more bytes are needed.
    #[error("incomplete ClientHello")]
    Incomplete,
}

impl InspectError {
    /// A short name for metrics and logs.
    pub fn as_str(&self) -> &'static str {
        match self {
            InspectError::NotTls => "not_tls",
            InspectError::Malformed(_) => "malformed",
            InspectError::TooLarge => "too_large",
            InspectError::Incomplete => "incomplete",
        }
    }
}

/// Reads a ClientHello from the first bytes a client sent.
pub fn inspect(input: &[u8]) -> Result<ClientHello, InspectError> {
    let message = record::handshake_message(input)?;
    hello::parse(message)
}

/// A TLS protocol version as it is written on the wire (`0x0303` is TLS 1.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TlsVersion(pub u16);

impl TlsVersion {
    pub const SSL_3_0: TlsVersion = TlsVersion(0x0300);
    pub const TLS_1_0: TlsVersion = TlsVersion(0x0301);
    pub const TLS_1_1: TlsVersion = TlsVersion(0x0302);
    pub const TLS_1_2: TlsVersion = TlsVersion(0x0303);
    pub const TLS_1_3: TlsVersion = TlsVersion(0x0304);

    /// The versions a configuration may name, as it names them.
    pub const NAMED: [(&'static str, TlsVersion); 4] = [
        ("1.0", TlsVersion::TLS_1_0),
        ("1.1", TlsVersion::TLS_1_1),
        ("1.2", TlsVersion::TLS_1_2),
        ("1.3", TlsVersion::TLS_1_3),
    ];

    /// GREASE values (RFC 8701) are offered to keep peers tolerant; they are no version.
    pub fn is_grease(self) -> bool {
        self.0 & 0x0f0f == 0x0a0a && self.0 >> 8 == self.0 & 0xff
    }
}

impl fmt::Display for TlsVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            TlsVersion::SSL_3_0 => f.write_str("ssl3"),
            v => match TlsVersion::NAMED.iter().find(|(_, n)| *n == v) {
                Some((name, _)) => f.write_str(name),
                None => write!(f, "0x{:04x}", v.0),
            },
        }
    }
}

#[cfg(test)]
mod tests;
