//! Raw io_uring operations submitted on the worker's tokio-uring ring.
//!
//! tokio-uring 0.5 has no recv/send/splice/poll/cancel, so each is built as a raw
//! `io_uring::squeue::Entry` and driven through `tokio_uring::UnsubmittedOneshot`.
//! Every operation owns what the kernel may touch until completion (the socket `Rc`, the
//! buffer, the sockaddr): dropping a future early never frees memory the kernel still
//! writes to, and never lets a closed fd number be reused under a queued entry.

use std::io;
use std::marker::PhantomData;
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;

use io_uring::{opcode, squeue, types};
use socket2::{SockAddr, Socket};
use tokio_uring::{OneshotOutputTransform, UnsubmittedOneshot};

/// Output of a raw op: the CQE result (negative errno on failure) and the owned data back.
struct RawResult<D>(PhantomData<D>);

impl<D> OneshotOutputTransform for RawResult<D> {
    type Output = (i32, D);
    type StoredData = D;

    fn transform_oneshot_output(self, data: D, cqe: io_uring::cqueue::Entry) -> (i32, D) {
        (cqe.result(), data)
    }
}

pub(crate) async fn submit<D: Unpin + 'static>(data: D, sqe: squeue::Entry) -> (i32, D) {
    UnsubmittedOneshot::new(data, RawResult(PhantomData), sqe)
        .submit()
        .await
}

pub(crate) fn to_result(res: i32) -> io::Result<usize> {
    if res < 0 {
        Err(io::Error::from_raw_os_error(-res))
    } else {
        Ok(res as usize)
    }
}

fn fd(socket: &Socket) -> types::Fd {
    types::Fd(socket.as_raw_fd())
}

/// IORING_RECVSEND_POLL_FIRST: arm the poll before trying the recv.
const RECVSEND_POLL_FIRST: u16 = 1;

/// Set the SQE's `ioprio` field, which io-uring 0.6 does not expose for Recv.
fn with_ioprio(entry: squeue::Entry, ioprio: u16) -> squeue::Entry {
    const _: () = assert!(std::mem::size_of::<squeue::Entry>() == 64);
    // SAFETY: `Entry` is `#[repr(C)]` around the kernel's 64-byte `io_uring_sqe`, whose
    // `ioprio` is the u16 at byte offset 2; every bit pattern of those bytes is valid.
    let mut raw: [u8; 64] = unsafe { std::mem::transmute(entry) };
    raw[2..4].copy_from_slice(&ioprio.to_ne_bytes());
    // SAFETY: the same 64 bytes back, with only the ioprio field changed (layout pinned
    // by the unit test below).
    unsafe { std::mem::transmute::<[u8; 64], squeue::Entry>(raw) }
}

/// recv into the spare capacity of `buf` (its length is set to what arrived).
/// `expect_empty`: the socket was just drained, so skip the recv attempt that would fail
/// with EAGAIN and wait for readiness first (saves a failed tcp_recvmsg per message in
/// request/response traffic).
pub async fn recv(
    socket: &Rc<Socket>,
    mut buf: Vec<u8>,
    expect_empty: bool,
) -> (io::Result<usize>, Vec<u8>) {
    buf.clear();
    let mut sqe = opcode::Recv::new(fd(socket), buf.as_mut_ptr(), buf.capacity() as u32).build();
    if expect_empty {
        sqe = with_ioprio(sqe, RECVSEND_POLL_FIRST);
    }
    let (res, (_socket, mut buf)) = submit((Rc::clone(socket), buf), sqe).await;
    let res = to_result(res);
    if let Ok(n) = res {
        // SAFETY: the kernel initialised exactly `n` bytes of the capacity it was given.
        unsafe { buf.set_len(n.min(buf.capacity())) };
    }
    (res, buf)
}

/// send `buf[offset..]` once (may be partial); MSG_NOSIGNAL so a reset peer is an error, not SIGPIPE.
pub async fn send(
    socket: &Rc<Socket>,
    buf: Vec<u8>,
    offset: usize,
) -> (io::Result<usize>, Vec<u8>) {
    let remaining = &buf[offset.min(buf.len())..];
    let sqe = opcode::Send::new(fd(socket), remaining.as_ptr(), remaining.len() as u32)
        .flags(libc::MSG_NOSIGNAL)
        .build();
    let (res, (_socket, buf)) = submit((Rc::clone(socket), buf), sqe).await;
    (to_result(res), buf)
}

/// Send all of `buf`, looping over partial sends.
pub async fn send_all(socket: &Rc<Socket>, mut buf: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
    let mut offset = 0;
    while offset < buf.len() {
        let (res, returned) = send(socket, buf, offset).await;
        buf = returned;
        match res {
            Ok(0) => return (Err(io::ErrorKind::WriteZero.into()), buf),
            Ok(n) => offset += n,
            Err(e) => return (Err(e), buf),
        }
    }
    (Ok(()), buf)
}

/// One-shot readiness wait. Returns the revents mask.
pub async fn poll(socket: &Rc<Socket>, events: u32) -> io::Result<u32> {
    let sqe = opcode::PollAdd::new(fd(socket), events).build();
    let (res, _socket) = submit(Rc::clone(socket), sqe).await;
    to_result(res).map(|mask| mask as u32)
}

/// SPLICE between two fds kept alive by `keep`. Non-blocking on both ends: io_uring runs
/// splice on an io-wq thread, and a blocking one would park that thread.
pub async fn splice<K: Unpin + 'static>(
    fd_in: RawFd,
    fd_out: RawFd,
    len: u32,
    keep: K,
) -> (io::Result<usize>, K) {
    let sqe = opcode::Splice::new(types::Fd(fd_in), -1, types::Fd(fd_out), -1, len)
        .flags(libc::SPLICE_F_NONBLOCK | libc::SPLICE_F_MOVE)
        .build();
    let (res, keep) = submit(keep, sqe).await;
    (to_result(res), keep)
}

/// connect on the ring.
pub async fn connect(socket: &Rc<Socket>, addr: SockAddr) -> io::Result<()> {
    let addr = Box::new(addr);
    let sqe = opcode::Connect::new(fd(socket), addr.as_ptr(), addr.len()).build();
    let (res, _data) = submit((Rc::clone(socket), addr), sqe).await;
    to_result(res).map(|_| ())
}

/// accept on the ring; the new socket is CLOEXEC. Returns it with the peer address.
pub async fn accept(listener: &Rc<Socket>) -> io::Result<(Socket, SockAddr)> {
    // SAFETY: an all-zero sockaddr_storage is a valid (unspecified-family) value.
    let storage: Box<(libc::sockaddr_storage, libc::socklen_t)> = Box::new((
        unsafe { std::mem::zeroed() },
        std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t,
    ));
    let mut storage = storage;
    let addr_ptr = &mut storage.0 as *mut libc::sockaddr_storage as *mut libc::sockaddr;
    let len_ptr = &mut storage.1 as *mut libc::socklen_t;
    let sqe = opcode::Accept::new(fd(listener), addr_ptr, len_ptr)
        .flags(libc::SOCK_CLOEXEC)
        .build();
    let (res, (_listener, storage)) = submit((Rc::clone(listener), storage), sqe).await;
    let raw = to_result(res)? as RawFd;
    // SAFETY: a successful accept returns a new fd that nothing else owns.
    let socket = unsafe { <Socket as std::os::fd::FromRawFd>::from_raw_fd(raw) };
    let (ss, len) = *storage;
    // SAFETY: the kernel filled `ss` with a sockaddr of `len` bytes.
    let peer = unsafe { SockAddr::new(ss, len) };
    Ok((socket, peer))
}

/// Cancel every operation in flight on `raw` (IORING_ASYNC_CANCEL_FD | ALL). Used to end a
/// connection whose ops may sit on an idle socket: they complete with ECANCELED.
pub async fn cancel_all(raw: RawFd) {
    let sqe = opcode::AsyncCancel2::new(types::CancelBuilder::fd(types::Fd(raw)).all()).build();
    let _ = submit((), sqe).await;
}

/// Opcodes the data plane submits; checked at start-up so a missing one fails fast.
pub const REQUIRED_OPCODES: &[(u8, &str)] = &[
    (opcode::Accept::CODE, "ACCEPT"),
    (opcode::Connect::CODE, "CONNECT"),
    (opcode::Recv::CODE, "RECV"),
    (opcode::Send::CODE, "SEND"),
    (opcode::RecvMsg::CODE, "RECVMSG"),
    (opcode::SendMsg::CODE, "SENDMSG"),
    (opcode::PollAdd::CODE, "POLL_ADD"),
    (opcode::Splice::CODE, "SPLICE"),
    (opcode::AsyncCancel::CODE, "ASYNC_CANCEL"),
    (opcode::Timeout::CODE, "TIMEOUT"),
];

#[cfg(test)]
mod tests {
    use super::*;

    /// `with_ioprio` writes raw bytes into io-uring's `Entry`, whose field is not public
    /// API: pin the layout it relies on (the kernel's `io_uring_sqe`: opcode at byte 0,
    /// ioprio at 2, fd at 4, addr at 16, len at 24), so an io-uring upgrade that changes it
    /// fails here instead of corrupting submissions.
    #[test]
    fn ioprio_lands_in_the_sqe_ioprio_field_and_nothing_else_moves() {
        let mut buf = [0u8; 16];
        let entry = opcode::Recv::new(types::Fd(42), buf.as_mut_ptr(), 16).build();
        let bytes = |e: squeue::Entry| -> [u8; 64] {
            // SAFETY: as in `with_ioprio`: 64 plain bytes.
            unsafe { std::mem::transmute(e) }
        };
        let before = bytes(entry.clone());
        let after = bytes(with_ioprio(entry, RECVSEND_POLL_FIRST));
        assert_eq!(before[0], opcode::Recv::CODE, "opcode at byte 0");
        assert_eq!(
            i32::from_ne_bytes([before[4], before[5], before[6], before[7]]),
            42,
            "fd at 4"
        );
        assert_eq!(
            u32::from_ne_bytes([before[24], before[25], before[26], before[27]]),
            16,
            "len at 24"
        );
        let addr = u64::from_ne_bytes(before[16..24].try_into().unwrap_or([0; 8]));
        assert_eq!(addr, buf.as_ptr() as u64, "addr at 16");
        assert_eq!(
            u16::from_ne_bytes([after[2], after[3]]),
            RECVSEND_POLL_FIRST
        );
        let mut expected = before;
        expected[2..4].copy_from_slice(&RECVSEND_POLL_FIRST.to_ne_bytes());
        assert_eq!(after, expected, "only the ioprio bytes change");
    }
}
