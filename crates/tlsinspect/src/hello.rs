//! The ClientHello message (RFC 8446 §4.1.2, RFC 5246 §7.4.1.2) and the extensions routing
//! reads: server_name (RFC 6066), ALPN (RFC 7301), supported_versions (RFC 8446 §4.2.1).

use crate::{InspectError, TlsVersion};

const EXT_SERVER_NAME: u16 = 0;
const EXT_ALPN: u16 = 16;
const EXT_SUPPORTED_VERSIONS: u16 = 43;
const HOST_NAME: u8 = 0;
/// A DNS name is at most 253 characters; a little room for a trailing dot.
const MAX_NAME: usize = 255;

/// What a ClientHello asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientHello {
    /// The host name from server_name, lowercased, without a trailing dot; `None` when the
    /// client sent none.
    pub sni: Option<String>,
    /// The protocols offered in ALPN, in the client's order; empty when it offered none.
    pub alpn: Vec<Vec<u8>>,
    /// The highest version offered: from supported_versions when present (GREASE values
    /// ignored), else the hello's own version field.
    pub version: TlsVersion,
}

type Parse<T> = Result<T, InspectError>;

fn bad(why: &'static str) -> InspectError {
    InspectError::Malformed(why)
}

/// A cursor over bytes that can only fail, never panic, when they run out.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Parse<&'a [u8]> {
        if n > self.bytes.len() {
            return Err(bad(what));
        }
        let (head, tail) = self.bytes.split_at(n);
        self.bytes = tail;
        Ok(head)
    }
    fn u8(&mut self, what: &'static str) -> Parse<u8> {
        Ok(self.take(1, what)?[0])
    }
    fn u16(&mut self, what: &'static str) -> Parse<u16> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    /// A vector with a one-byte length.
    fn vec8(&mut self, what: &'static str) -> Parse<Reader<'a>> {
        let n = usize::from(self.u8(what)?);
        Ok(Reader {
            bytes: self.take(n, what)?,
        })
    }
    /// A vector with a two-byte length.
    fn vec16(&mut self, what: &'static str) -> Parse<Reader<'a>> {
        let n = usize::from(self.u16(what)?);
        Ok(Reader {
            bytes: self.take(n, what)?,
        })
    }
    fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

/// `message`: the whole handshake message, its 4-byte header included.
pub(crate) fn parse(message: impl AsRef<[u8]>) -> Parse<ClientHello> {
    let message = message.as_ref();
    let body = message.get(4..).ok_or(bad("truncated handshake header"))?;
    let mut r = Reader { bytes: body };
    let legacy_version = TlsVersion(r.u16("truncated version")?);
    r.take(32, "truncated random")?;
    let session_id = r.vec8("truncated session id")?;
    if session_id.bytes.len() > 32 {
        return Err(bad("session id longer than 32 bytes"));
    }
    let suites = r.vec16("truncated cipher suites")?;
    if suites.is_empty() || suites.bytes.len() % 2 != 0 {
        return Err(bad("cipher suites empty or of odd length"));
    }
    if r.vec8("truncated compression methods")?.is_empty() {
        return Err(bad("no compression method"));
    }
    let mut hello = ClientHello {
        sni: None,
        alpn: Vec::new(),
        version: legacy_version,
    };
    // A hello may end here: extensions came with TLS 1.2 and are optional before it.
    if r.is_empty() {
        return Ok(hello);
    }
    let mut extensions = r.vec16("truncated extensions")?;
    if !r.is_empty() {
        return Err(bad("bytes after the extensions"));
    }
    let mut seen = Vec::new();
    while !extensions.is_empty() {
        let kind = extensions.u16("truncated extension type")?;
        let data = extensions.vec16("truncated extension")?;
        // RFC 8446 §4.2: a type may appear once; a second one could hide the real name.
        if seen.contains(&kind) {
            return Err(bad("an extension appears twice"));
        }
        seen.push(kind);
        match kind {
            EXT_SERVER_NAME => hello.sni = server_name(data)?,
            EXT_ALPN => hello.alpn = alpn(data)?,
            EXT_SUPPORTED_VERSIONS => {
                if let Some(v) = highest_version(data)? {
                    hello.version = v;
                }
            }
            _ => {}
        }
    }
    Ok(hello)
}

fn server_name(mut data: Reader<'_>) -> Parse<Option<String>> {
    // A server may echo an empty server_name; a client sends a list.
    if data.is_empty() {
        return Ok(None);
    }
    let mut list = data.vec16("truncated server name list")?;
    if !data.is_empty() {
        return Err(bad("bytes after the server name list"));
    }
    let mut host = None;
    while !list.is_empty() {
        let kind = list.u8("truncated server name type")?;
        let name = list.vec16("truncated server name")?.bytes;
        if kind != HOST_NAME {
            continue;
        }
        if host.is_some() {
            return Err(bad("more than one host name"));
        }
        host = Some(host_name(name)?);
    }
    Ok(host)
}

/// RFC 6066: ASCII, no trailing dot; a trailing dot is tolerated and dropped, since the
/// name means the same with it.
fn host_name(name: &[u8]) -> Parse<String> {
    let name = name.strip_suffix(b".").unwrap_or(name);
    if name.is_empty() || name.len() > MAX_NAME {
        return Err(bad("host name empty or too long"));
    }
    if !name
        .iter()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
    {
        return Err(bad("host name with a character DNS does not allow"));
    }
    Ok(String::from_utf8_lossy(name).to_ascii_lowercase())
}

fn alpn(mut data: Reader<'_>) -> Parse<Vec<Vec<u8>>> {
    let mut list = data.vec16("truncated ALPN list")?;
    if !data.is_empty() || list.is_empty() {
        return Err(bad("ALPN list empty or followed by other bytes"));
    }
    let mut out = Vec::new();
    while !list.is_empty() {
        let name = list.vec8("truncated ALPN protocol")?;
        if name.is_empty() {
            return Err(bad("an empty ALPN protocol name"));
        }
        out.push(name.bytes.to_vec());
    }
    Ok(out)
}

fn highest_version(mut data: Reader<'_>) -> Parse<Option<TlsVersion>> {
    let mut list = data.vec8("truncated supported versions")?;
    if !data.is_empty() || list.is_empty() || list.bytes.len() % 2 != 0 {
        return Err(bad("supported versions empty or of odd length"));
    }
    let mut best = None;
    while !list.is_empty() {
        let v = TlsVersion(list.u16("truncated supported version")?);
        if !v.is_grease() {
            best = best.max(Some(v));
        }
    }
    Ok(best)
}
