//! The TLS record layer, as far as the first handshake message: records of type handshake
//! carry it, possibly split across several of them.

use std::borrow::Cow;

use crate::{InspectError, MAX_HELLO, MAX_INPUT};

const HANDSHAKE: u8 = 22;
const CLIENT_HELLO: u8 = 1;
const RECORD_HEADER: usize = 5;
/// The largest record fragment a peer may send (RFC 8446 §5.1).
const MAX_FRAGMENT: usize = 1 << 14;

/// The first handshake message (header and body), once every byte of it is in. Looks only
/// at record headers until then, so calling it after every read costs little.
pub(crate) fn handshake_message(input: &[u8]) -> Result<Cow<'_, [u8]>, InspectError> {
    match input.first() {
        None => return Err(InspectError::Incomplete),
        Some(&t) if t != HANDSHAKE => return Err(InspectError::NotTls),
        Some(_) => {}
    }
    // Every TLS version so far has major version 3 on the wire.
    if input.get(1).is_some_and(|&major| major != 3) {
        return Err(InspectError::NotTls);
    }
    let mut header = [0u8; 4];
    let mut have = 0usize;
    let mut need = None;
    let mut pos = 0usize;
    while let Some(rest) = input.get(pos..).filter(|r| !r.is_empty()) {
        if rest[0] != HANDSHAKE {
            return Err(InspectError::Malformed(
                "a record of another type before the ClientHello ended",
            ));
        }
        if rest.get(1).is_some_and(|&major| major != 3) {
            return Err(InspectError::Malformed(
                "a record with a version other than 3.x",
            ));
        }
        let Some(len) = rest
            .get(3..5)
            .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
        else {
            break;
        };
        if len == 0 {
            return Err(InspectError::Malformed("an empty handshake record"));
        }
        if len > MAX_FRAGMENT {
            return Err(InspectError::Malformed("a record longer than 16 KiB"));
        }
        let fragment = &rest[RECORD_HEADER..rest.len().min(RECORD_HEADER + len)];
        for (slot, &b) in header.iter_mut().skip(have).zip(fragment) {
            *slot = b;
        }
        have += fragment.len();
        if need.is_none() && have >= 1 && header[0] != CLIENT_HELLO {
            return Err(InspectError::Malformed(
                "the first handshake message is not a ClientHello",
            ));
        }
        if need.is_none() && have >= 4 {
            let body =
                usize::from(header[1]) << 16 | usize::from(header[2]) << 8 | usize::from(header[3]);
            let total = 4 + body;
            if total > MAX_HELLO {
                return Err(InspectError::TooLarge);
            }
            need = Some(total);
        }
        if let Some(total) = need.filter(|&t| have >= t) {
            return Ok(assemble(input, total));
        }
        if fragment.len() < len {
            break;
        }
        pos += RECORD_HEADER + len;
    }
    if input.len() > MAX_INPUT {
        return Err(InspectError::TooLarge);
    }
    Err(InspectError::Incomplete)
}

/// Copies the message out of its records when it spans more than one; `total` bytes of
/// handshake data are known to be in `input`.
fn assemble(input: &[u8], total: usize) -> Cow<'_, [u8]> {
    let first = input.get(RECORD_HEADER..).unwrap_or_default();
    let first_len = input
        .get(3..5)
        .map_or(0, |b| usize::from(u16::from_be_bytes([b[0], b[1]])));
    if first_len >= total {
        return Cow::Borrowed(first.get(..total).unwrap_or_default());
    }
    let mut out = Vec::with_capacity(total);
    let mut pos = 0;
    while out.len() < total {
        let Some(rest) = input.get(pos..) else { break };
        let len = rest
            .get(3..5)
            .map_or(0, |b| usize::from(u16::from_be_bytes([b[0], b[1]])));
        let end = rest.len().min(RECORD_HEADER + len);
        let fragment = rest.get(RECORD_HEADER..end).unwrap_or_default();
        let take = fragment.len().min(total - out.len());
        out.extend_from_slice(&fragment[..take]);
        if len == 0 {
            break;
        }
        pos += RECORD_HEADER + len;
    }
    Cow::Owned(out)
}
