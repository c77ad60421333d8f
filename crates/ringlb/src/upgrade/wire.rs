//! The handover channel between the old and the new process of a live upgrade: a Unix
//! SOCK_SEQPACKET socket pair (the new process inherits one end), one message per frame,
//! file descriptors passed alongside with SCM_RIGHTS. The format is in docs/upgrade.md.
//!
//! A frame is `[u32 little-endian header length][JSON header][payload bytes]`. Messages
//! are atomic on a seqpacket socket, so a frame never spans two reads and its fds arrive
//! with it.

use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use nix::sys::socket::{
    recvmsg, sendmsg, setsockopt, sockopt, ControlMessage, ControlMessageOwned, MsgFlags,
};
use serde::{Deserialize, Serialize};

/// Protocol version; the new process refuses (and the old one keeps serving) on a mismatch.
pub const VERSION: u32 = 1;
/// Largest frame either side sends or accepts. Payloads are chunked below this.
pub const MAX_FRAME: usize = 64 * 1024;
/// Payload bytes per `conn`/`data` frame (the rest of `MAX_FRAME` is for the header).
pub const CHUNK: usize = 48 * 1024;
/// At most this many fds in one frame (the kernel's SCM_MAX_FD is 253).
pub const MAX_FDS: usize = 64;
/// The environment variable that hands the new process its end of the channel.
pub const ENV_FD: &str = "RINGLB_UPGRADE_FD";

/// Every message of the handover, by its `t` tag.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum Msg {
    /// new → old, first: who is there and which protocol it speaks.
    Hello { v: u32, pid: u32 },
    /// old → new: one listener's sockets, one per worker (fds attached, in worker order).
    Listener {
        name: String,
        protocol: String,
        bound: String,
        sockets: usize,
    },
    /// old → new: the operator's admin state (drain, maint, weights, node fail), in the
    /// `state_file` format.
    AdminState { book: String },
    /// old → new: the sticky tables in the `state_file` sibling's format (`len` bytes:
    /// this frame's payload, then `sticky_data` frames).
    Sticky { len: usize },
    /// old → new: more bytes of the sticky tables.
    StickyData,
    /// old → new: all listeners sent; the old process runs `workers` workers.
    ListenersEnd { workers: usize },
    /// new → old: serving (workers up, listeners accepting); send the connections.
    Ready,
    /// new → old: it cannot serve; the old process keeps everything.
    Failed { reason: String },
    /// old → new: one established TCP connection (client and backend sockets attached).
    /// The carried bytes follow as payload, in this and then `data` frames.
    Conn(ConnHeader),
    /// old → new: one UDP session (its connected upstream socket attached).
    Session(SessionHeader),
    /// old → new: more carried bytes of connection `id`.
    Data { id: u64 },
    /// new → old: connection `id` is the new process's now; the old closes its copies.
    Adopted { id: u64 },
    /// old → new: nothing more; the old process exits.
    Done { conns: u64 },
}

/// What a moved connection carries besides its two sockets and its bytes in flight.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnHeader {
    pub id: u64,
    pub worker: usize,
    pub listener: String,
    pub backend: String,
    pub client: String,
    pub age_us: u64,
    pub idle_us: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Bytes read from the client and owed to the backend, then those owed to the client:
    /// the payloads, in this order, add up to both.
    pub to_backend: usize,
    pub to_client: usize,
    /// CLOCK_MONOTONIC (ns) when the old process froze it: the new one reports the pause.
    pub frozen_at_ns: u64,
}

/// What a moved UDP session carries besides its upstream socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionHeader {
    pub id: u64,
    pub worker: usize,
    pub listener: String,
    pub backend: String,
    pub client: String,
    /// Wildcard listeners: the local address replies come from.
    pub reply_from: Option<String>,
    pub age_us: u64,
    pub idle_us: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

/// A received frame.
#[derive(Debug)]
pub struct Frame {
    pub msg: Msg,
    pub payload: Vec<u8>,
    pub fds: Vec<OwnedFd>,
}

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("handover channel: {0}")]
    Io(#[from] io::Error),
    #[error("handover channel closed by the other process")]
    Closed,
    #[error("handover channel: malformed frame: {0}")]
    Malformed(String),
    #[error("handover channel: no message within {0:?}")]
    Timeout(Duration),
}

/// Encode a frame (without its fds).
pub fn encode(msg: &Msg, payload: &[u8]) -> Result<Vec<u8>, WireError> {
    let header = serde_json::to_vec(msg).map_err(|e| WireError::Malformed(e.to_string()))?;
    let total = 4 + header.len() + payload.len();
    if total > MAX_FRAME {
        return Err(WireError::Malformed(format!(
            "frame of {total} bytes exceeds {MAX_FRAME}"
        )));
    }
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(&(header.len() as u32).to_le_bytes());
    out.extend_from_slice(&header);
    out.extend_from_slice(payload);
    Ok(out)
}

/// Decode one frame's bytes: any input, however hostile, is an error, never a panic.
pub fn decode(bytes: &[u8]) -> Result<(Msg, Vec<u8>), WireError> {
    let len_bytes: [u8; 4] = bytes
        .get(..4)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| WireError::Malformed(format!("{} bytes, no header length", bytes.len())))?;
    let len = u32::from_le_bytes(len_bytes) as usize;
    let header = bytes
        .get(4..4usize.saturating_add(len))
        .ok_or_else(|| WireError::Malformed(format!("header of {len} bytes truncated")))?;
    let msg = serde_json::from_slice(header).map_err(|e| WireError::Malformed(e.to_string()))?;
    Ok((msg, bytes[4 + len..].to_vec()))
}

/// One end of the handover channel.
pub struct Channel {
    fd: OwnedFd,
}

impl Channel {
    /// A connected pair: (old process's end, new process's end).
    pub fn pair() -> io::Result<(Channel, Channel)> {
        use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
        let (a, b) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )?;
        for fd in [&a, &b] {
            // Room for a few frames in flight; root may exceed wmem_max (SNDBUFFORCE).
            if setsockopt(fd, sockopt::SndBufForce, &(4 << 20)).is_err() {
                let _ = setsockopt(fd, sockopt::SndBuf, &(4 << 20));
            }
        }
        Ok((Channel { fd: a }, Channel { fd: b }))
    }

    /// The new process's end, from the fd number the old one passed in [`ENV_FD`].
    ///
    /// # Safety
    /// `fd` must be an open descriptor this process owns and nothing else uses.
    pub unsafe fn from_raw(fd: RawFd) -> Channel {
        // SAFETY: the caller guarantees `fd` is open and owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Channel { fd }
    }

    pub fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    pub fn send(&self, msg: &Msg, payload: &[u8], fds: &[RawFd]) -> Result<(), WireError> {
        let bytes = encode(msg, payload)?;
        let iov = [IoSlice::new(&bytes)];
        let rights = [ControlMessage::ScmRights(fds)];
        let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &rights };
        loop {
            match sendmsg::<()>(
                self.fd.as_raw_fd(),
                &iov,
                cmsgs,
                MsgFlags::MSG_NOSIGNAL,
                None,
            ) {
                Ok(_) => return Ok(()),
                Err(nix::errno::Errno::EINTR) => {}
                Err(nix::errno::Errno::EPIPE | nix::errno::Errno::ECONNRESET) => {
                    return Err(WireError::Closed)
                }
                Err(e) => return Err(WireError::Io(e.into())),
            }
        }
    }

    /// Wait up to `timeout` for one frame.
    pub fn recv(&self, timeout: Duration) -> Result<Frame, WireError> {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        use std::os::fd::AsFd;
        let ms = PollTimeout::try_from(timeout.as_millis().min(i32::MAX as u128) as i32)
            .unwrap_or(PollTimeout::MAX);
        let mut fds = [PollFd::new(self.fd.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, ms) {
            Ok(0) => return Err(WireError::Timeout(timeout)),
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => return Err(WireError::Timeout(timeout)),
            Err(e) => return Err(WireError::Io(e.into())),
        }
        let mut buf = vec![0u8; MAX_FRAME];
        let mut cmsg = nix::cmsg_space!([RawFd; MAX_FDS]);
        let (n, fds, truncated) = {
            let mut iov = [IoSliceMut::new(&mut buf)];
            let msg = recvmsg::<()>(
                self.fd.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg),
                MsgFlags::MSG_CMSG_CLOEXEC,
            )
            .map_err(|e| WireError::Io(e.into()))?;
            let mut fds = Vec::new();
            if let Ok(cmsgs) = msg.cmsgs() {
                for c in cmsgs {
                    if let ControlMessageOwned::ScmRights(raw) = c {
                        for fd in raw {
                            // SAFETY: SCM_RIGHTS just installed this fd in our table.
                            fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
                        }
                    }
                }
            }
            let truncated = msg
                .flags
                .intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC);
            (msg.bytes, fds, truncated)
        };
        if n == 0 {
            return Err(WireError::Closed);
        }
        if truncated {
            return Err(WireError::Malformed("frame or its fds truncated".into()));
        }
        let (msg, payload) = decode(&buf[..n])?;
        Ok(Frame { msg, payload, fds })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn frames_round_trip_with_fds() {
        let (a, b) = Channel::pair().unwrap_or_else(|e| panic!("{e}"));
        let (r, w) = nix::unistd::pipe().unwrap_or_else(|e| panic!("{e}"));
        let msg = Msg::Conn(ConnHeader {
            id: 7,
            worker: 1,
            listener: "web".into(),
            backend: "127.0.0.1:9000".into(),
            client: "127.0.0.1:5555".into(),
            age_us: 1,
            idle_us: 2,
            bytes_in: 3,
            bytes_out: 4,
            to_backend: 3,
            to_client: 0,
            frozen_at_ns: 5,
        });
        a.send(&msg, b"abc", &[r.as_raw_fd(), w.as_raw_fd()])
            .unwrap_or_else(|e| panic!("{e}"));
        let got = b
            .recv(Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(got.msg, msg);
        assert_eq!(got.payload, b"abc");
        assert_eq!(got.fds.len(), 2);
        // The passed write end reaches the original read end.
        nix::unistd::write(&got.fds[1], b"x").unwrap_or_else(|e| panic!("{e}"));
        let mut one = [0u8; 1];
        nix::unistd::read(r.as_raw_fd(), &mut one).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(&one, b"x");
    }

    #[test]
    fn a_closed_peer_is_reported() {
        let (a, b) = Channel::pair().unwrap_or_else(|e| panic!("{e}"));
        drop(b);
        assert!(matches!(
            a.send(&Msg::Ready, &[], &[]),
            Err(WireError::Closed)
        ));
        let (a, b) = Channel::pair().unwrap_or_else(|e| panic!("{e}"));
        drop(a);
        assert!(matches!(
            b.recv(Duration::from_secs(5)),
            Err(WireError::Closed)
        ));
    }

    #[test]
    fn oversized_frames_are_refused() {
        let big = vec![0u8; MAX_FRAME];
        assert!(encode(&Msg::Data { id: 1 }, &big).is_err());
        assert!(encode(&Msg::Data { id: 1 }, &big[..CHUNK]).is_ok());
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode(&bytes);
        }

        #[test]
        fn decode_of_encode_is_identity(id in any::<u64>(), payload in proptest::collection::vec(any::<u8>(), 0..1024)) {
            let bytes = encode(&Msg::Data { id }, &payload).unwrap_or_else(|e| panic!("{e}"));
            let (msg, back) = decode(&bytes).unwrap_or_else(|e| panic!("{e}"));
            prop_assert_eq!(msg, Msg::Data { id });
            prop_assert_eq!(back, payload);
        }
    }
}
