//! Client-side helpers: connecting (with timeouts, from a chosen source IP), tags,
//! checksummed bulk transfer, client resets, readiness polling and UDP round trips.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpStream, UdpSocket};
use std::thread;
use std::time::{Duration, Instant};

use socket2::{Domain, Socket, Type};

use crate::checksum::{for_each_pattern_chunk, Checksum, CLIENT_SEED};

/// Read and write timeout set on every stream the helpers return, so a test that
/// expects bytes that never come fails instead of hanging.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// Polls `cond` every 10 ms until it holds or `timeout` passes; returns whether it held.
/// Use it for readiness instead of sleeping.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

fn with_timeouts(s: TcpStream) -> io::Result<TcpStream> {
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(s)
}

/// Connects with a connect timeout; the stream gets [`IO_TIMEOUT`] read/write timeouts.
pub fn connect_with_timeout(addr: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    with_timeouts(TcpStream::connect_timeout(&addr, timeout)?)
}

/// [`connect_with_timeout`] with 5 s, panicking with the address on failure.
pub fn connect(addr: SocketAddr) -> TcpStream {
    connect_with_timeout(addr, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("testkit: connect to {addr}: {e}"))
}

/// Connects from `local_ip` (e.g. 127.0.0.2; all of 127.0.0.0/8 is local on Linux), for
/// allow-list and source-hash tests. 5 s connect timeout, [`IO_TIMEOUT`] I/O timeouts.
pub fn connect_from(local_ip: Ipv4Addr, addr: SocketAddr) -> io::Result<TcpStream> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    s.bind(&SocketAddr::V4(SocketAddrV4::new(local_ip, 0)).into())?;
    s.connect_timeout(&addr.into(), Duration::from_secs(5))?;
    with_timeouts(s.into())
}

/// Reads one `TAG\n` line byte by byte (so no echoed data after it is consumed) and
/// returns TAG. Panics if the stream ends or errors first.
pub fn read_line_tag(stream: &mut TcpStream) -> String {
    try_read_line_tag(stream).unwrap_or_else(|e| panic!("testkit: {e}"))
}

/// [`read_line_tag`] that returns what went wrong instead of panicking, for clients
/// whose failures a test counts.
pub fn try_read_line_tag(stream: &mut TcpStream) -> Result<String, String> {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    loop {
        match stream.read(&mut b) {
            Ok(0) => {
                return Err(format!(
                    "stream ended before a tag line; got {:?}",
                    String::from_utf8_lossy(&line)
                ))
            }
            Ok(_) if b[0] == b'\n' => break,
            Ok(_) => line.push(b[0]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                return Err(format!(
                    "reading a tag line: {e}; got {:?} so far",
                    String::from_utf8_lossy(&line)
                ))
            }
        }
        if line.len() > 256 {
            return Err(format!("tag line longer than 256 bytes: {line:?}"));
        }
    }
    String::from_utf8(line).map_err(|e| format!("tag is not UTF-8: {e}"))
}

/// Writes `payload` and reads back exactly as many bytes; panics unless they match.
pub fn assert_echo(stream: &mut TcpStream, payload: &[u8]) {
    stream
        .write_all(payload)
        .unwrap_or_else(|e| panic!("testkit: echo write of {} bytes: {e}", payload.len()));
    let mut back = vec![0u8; payload.len()];
    stream
        .read_exact(&mut back)
        .unwrap_or_else(|e| panic!("testkit: echo read of {} bytes: {e}", payload.len()));
    assert!(back == payload, "testkit: echo returned different bytes");
}

/// Writes `n` bytes of the [`CLIENT_SEED`] pattern; returns their [`Checksum`] value.
pub fn send_with_checksum(stream: &mut TcpStream, n: u64) -> io::Result<u64> {
    let mut c = Checksum::new();
    for_each_pattern_chunk(CLIENT_SEED, n, |chunk| {
        stream.write_all(chunk)?;
        c.update(chunk);
        Ok::<(), io::Error>(())
    })?;
    Ok(c.value())
}

/// Reads to EOF; returns (bytes, checksum).
pub fn read_with_checksum(stream: &mut TcpStream) -> io::Result<(u64, u64)> {
    let mut c = Checksum::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Ok((c.len(), c.value())),
            Ok(n) => c.update(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Result of [`sink_source_exchange`], to compare with the backend's
/// [`crate::SinkRecord`] and with [`crate::pattern_checksum`]`(BACKEND_SEED, n)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exchange {
    pub sent: u64,
    pub sent_checksum: u64,
    pub received: u64,
    pub received_checksum: u64,
}

/// Client side of the [`crate::SinkSourceBackend`] protocol: sends the 8-byte header
/// asking for `want_back` bytes, then concurrently sends `send` pattern bytes (then
/// shutdown(SHUT_WR)) and reads the reply to EOF.
pub fn sink_source_exchange(
    stream: &mut TcpStream,
    send: u64,
    want_back: u64,
) -> io::Result<Exchange> {
    stream.write_all(&want_back.to_be_bytes())?;
    let mut w = stream.try_clone()?;
    let writer = thread::spawn(move || -> io::Result<u64> {
        let sum = send_with_checksum(&mut w, send)?;
        w.shutdown(Shutdown::Write)?;
        Ok(sum)
    });
    let read = read_with_checksum(stream);
    if read.is_err() {
        // Unblock the writer before joining it.
        let _ = stream.shutdown(Shutdown::Both);
    }
    let sent_checksum = writer
        .join()
        .map_err(|_| io::Error::other("testkit: sink_source_exchange writer panicked"))??;
    let (received, received_checksum) = read?;
    Ok(Exchange {
        sent: send,
        sent_checksum,
        received,
        received_checksum,
    })
}

/// Closes `stream` with SO_LINGER 0: the peer gets a RST, not a FIN.
pub fn reset_close(stream: TcpStream) {
    crate::tcp::set_linger_zero(&stream);
    drop(stream);
}

/// How a stream ended from the client's side, after discarding what was read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientEnd {
    /// Clean EOF (FIN) after `bytes` bytes.
    Eof {
        bytes: u64,
    },
    /// ECONNRESET after `bytes` bytes.
    Reset {
        bytes: u64,
    },
    /// Nothing ended within the timeout.
    TimedOut {
        bytes: u64,
    },
    Error {
        bytes: u64,
        kind: io::ErrorKind,
    },
}

impl ClientEnd {
    /// Closed (EOF or reset) before any byte came: how ringlb turns away a client it
    /// denies or cannot serve.
    pub fn closed_without_data(&self) -> bool {
        matches!(
            self,
            ClientEnd::Reset { bytes: 0 } | ClientEnd::Eof { bytes: 0 }
        )
    }
}

/// Reads and discards until EOF, reset, or `timeout`: tells a test whether the peer
/// closed cleanly or reset. Changes the stream's read timeout.
pub fn read_until_end(stream: &mut TcpStream, timeout: Duration) -> ClientEnd {
    let deadline = Instant::now() + timeout;
    let mut bytes = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return ClientEnd::TimedOut { bytes };
        }
        if let Err(e) = stream.set_read_timeout(Some(left)) {
            return ClientEnd::Error {
                bytes,
                kind: e.kind(),
            };
        }
        match stream.read(&mut buf) {
            Ok(0) => return ClientEnd::Eof { bytes },
            Ok(n) => bytes += n as u64,
            Err(e) => match e.kind() {
                io::ErrorKind::Interrupted => {}
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                    return ClientEnd::TimedOut { bytes }
                }
                io::ErrorKind::ConnectionReset => return ClientEnd::Reset { bytes },
                kind => return ClientEnd::Error { bytes, kind },
            },
        }
    }
}

/// A UDP socket on 127.0.0.1:0 with a 5 s read timeout.
pub fn udp_client() -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0")
        .unwrap_or_else(|e| panic!("testkit: udp client: bind 127.0.0.1:0: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap_or_else(|e| panic!("testkit: udp client: SO_RCVTIMEO: {e}"));
    s
}

/// Sends `payload` to `to` and returns the first reply that comes from `to` (replies
/// from elsewhere are an error: ringlb must answer from the listener's address).
pub fn udp_roundtrip(sock: &UdpSocket, to: SocketAddr, payload: &[u8]) -> io::Result<Vec<u8>> {
    sock.send_to(payload, to)?;
    let mut buf = vec![0u8; 65536];
    let (n, from) = sock.recv_from(&mut buf)?;
    if from != to {
        return Err(io::Error::other(format!(
            "testkit: reply to a datagram sent to {to} came from {from}"
        )));
    }
    buf.truncate(n);
    Ok(buf)
}

/// Splits a tagged UDP reply `TAG\npayload` into (TAG, payload); a reply without a
/// newline is returned as ("", reply).
pub fn split_tag(reply: &[u8]) -> (String, Vec<u8>) {
    match reply.iter().position(|&b| b == b'\n') {
        Some(i) => (
            String::from_utf8_lossy(&reply[..i]).into_owned(),
            reply[i + 1..].to_vec(),
        ),
        None => (String::new(), reply.to_vec()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_tag_cases() {
        assert_eq!(split_tag(b"b1\nping"), ("b1".to_string(), b"ping".to_vec()));
        assert_eq!(split_tag(b"b1\n"), ("b1".to_string(), Vec::new()));
        assert_eq!(split_tag(b"ping"), (String::new(), b"ping".to_vec()));
        assert_eq!(split_tag(b"a\nb\nc"), ("a".to_string(), b"b\nc".to_vec()));
    }

    #[test]
    fn wait_until_times_out_and_succeeds() {
        let t = Instant::now();
        assert!(!wait_until(Duration::from_millis(50), || false));
        assert!(t.elapsed() >= Duration::from_millis(50));
        let mut n = 0;
        assert!(wait_until(Duration::from_secs(5), || {
            n += 1;
            n >= 3
        }));
        assert_eq!(n, 3);
    }
}
