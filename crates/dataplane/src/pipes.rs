//! Splice pipes: created on demand, kept per worker for reuse.

use std::cell::RefCell;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::rc::Rc;

/// Pipe capacity for splice; one splice moves at most this much.
pub(crate) const PIPE_SIZE: usize = 256 * 1024;

/// A pipe for splice; both ends closed on drop.
pub(crate) struct Pipe {
    pub(crate) read: OwnedFd,
    pub(crate) write: OwnedFd,
}

impl Pipe {
    fn new() -> io::Result<Pipe> {
        let (read, write) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK)
                .map_err(io::Error::from)?;
        // Bigger pipes mean fewer splices per byte; failure (pipe-max-size) only costs speed.
        let _ = nix::fcntl::fcntl(
            write.as_raw_fd(),
            nix::fcntl::FcntlArg::F_SETPIPE_SZ(PIPE_SIZE as i32),
        );
        Ok(Pipe { read, write })
    }
}

impl Pipe {
    /// Everything the pipe holds, read without blocking (a frozen link's bytes in flight).
    pub(crate) fn read_all(&self) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            match nix::unistd::read(self.read.as_raw_fd(), &mut chunk) {
                Ok(0) => return Ok(out),
                Ok(n) => out.extend_from_slice(&chunk[..n]),
                Err(nix::errno::Errno::EAGAIN) => return Ok(out),
                Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// Pipes kept by one worker for reuse. A direction holds a pipe only while it has data in
/// flight and hands it back (empty) when its socket runs dry, so thousands of established
/// but quiet splice connections hold no pipe file descriptors.
pub(crate) struct PipePool {
    free: RefCell<Vec<Rc<Pipe>>>,
}

/// Empty pipes a worker keeps for reuse; beyond this they are closed.
const PIPE_POOL_MAX: usize = 64;

impl PipePool {
    pub(crate) fn new() -> Self {
        PipePool {
            free: RefCell::new(Vec::new()),
        }
    }

    pub(crate) fn take(&self) -> io::Result<Rc<Pipe>> {
        match self.free.borrow_mut().pop() {
            Some(pipe) => Ok(pipe),
            None => Pipe::new().map(Rc::new),
        }
    }

    /// Only for a drained pipe that no operation still holds.
    pub(crate) fn give(&self, pipe: Rc<Pipe>) {
        let mut free = self.free.borrow_mut();
        if Rc::strong_count(&pipe) == 1 && free.len() < PIPE_POOL_MAX {
            free.push(pipe);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drained_pipes_are_reused() {
        let pool = PipePool::new();
        let pipe = pool.take().unwrap_or_else(|e| panic!("pipe2: {e}"));
        let fd = pipe.read.as_raw_fd();
        pool.give(pipe);
        let again = pool.take().unwrap_or_else(|e| panic!("pipe2: {e}"));
        assert_eq!(again.read.as_raw_fd(), fd, "the pooled pipe was not reused");
    }

    #[test]
    fn a_pipe_still_held_by_an_operation_is_not_pooled() {
        let pool = PipePool::new();
        let pipe = pool.take().unwrap_or_else(|e| panic!("pipe2: {e}"));
        let held = Rc::clone(&pipe);
        pool.give(pipe);
        assert!(pool.free.borrow().is_empty());
        drop(held);
    }

    #[test]
    fn read_all_takes_what_the_pipe_holds() {
        let pool = PipePool::new();
        let pipe = pool.take().unwrap_or_else(|e| panic!("pipe2: {e}"));
        let data: Vec<u8> = (0..60_000u32).map(|i| i as u8).collect();
        let mut written = 0;
        while written < data.len() {
            written += nix::unistd::write(&pipe.write, &data[written..])
                .unwrap_or_else(|e| panic!("write: {e}"));
        }
        assert_eq!(pipe.read_all().unwrap_or_else(|e| panic!("{e}")), data);
        assert!(pipe.read_all().unwrap_or_else(|e| panic!("{e}")).is_empty());
    }

    #[test]
    fn the_pool_is_bounded() {
        let pool = PipePool::new();
        let pipes: Vec<_> = (0..PIPE_POOL_MAX + 3)
            .map(|_| pool.take().unwrap_or_else(|e| panic!("pipe2: {e}")))
            .collect();
        for p in pipes {
            pool.give(p);
        }
        assert_eq!(pool.free.borrow().len(), PIPE_POOL_MAX);
    }
}
