//! Copy buffers: a worker's pool of working buffers, so a direction holds one only while
//! data flows through it.
//!
//! A direction that copies reads into a working buffer (`WORKING_BUFFER`) while data
//! arrives faster than it waits. Once a read of a small message empties its socket, the
//! next read will wait — maybe for hours on a settlement link — and the kernel holds the
//! buffer of a pending recv all that time, with the pages the last message touched. So
//! the direction hands the working buffer back here and waits on a small buffer of its own
//! (`PARKED_BUFFER`): a message that fits is read and forwarded from it at the same cost
//! as before; one that fills it brings a working buffer back for the rest. An idle
//! connection then holds two small buffers instead of two touched working-buffer pages.

use std::cell::RefCell;

/// A working buffer: what one recv may bring while data flows.
pub(crate) const WORKING_BUFFER: usize = 64 * 1024;

/// What a direction waits with between messages. Request/response messages on the links
/// this balancer fronts (ISO 8583, FIX, and the like) mostly fit; a bigger one costs one
/// more recv.
pub(crate) const PARKED_BUFFER: usize = 512;

/// Working buffers a worker keeps for reuse; beyond this they are freed. Bounds what a
/// burst of busy connections leaves behind (16 × 64 KiB per worker).
const POOL_MAX: usize = 16;

/// One worker's spare working buffers, most recently used first (their pages are warm).
pub(crate) struct BufferPool {
    free: RefCell<Vec<Vec<u8>>>,
}

impl BufferPool {
    pub(crate) fn new() -> Self {
        BufferPool {
            free: RefCell::new(Vec::new()),
        }
    }

    /// An empty working buffer.
    pub(crate) fn take(&self) -> Vec<u8> {
        self.free
            .borrow_mut()
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(WORKING_BUFFER))
    }

    /// Back for reuse; a buffer of another size (a bulk direction's bigger one) is freed.
    pub(crate) fn give(&self, mut buf: Vec<u8>) {
        let mut free = self.free.borrow_mut();
        if buf.capacity() == WORKING_BUFFER && free.len() < POOL_MAX {
            buf.clear();
            free.push(buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_given_buffer_is_taken_again_empty() {
        let pool = BufferPool::new();
        let mut buf = pool.take();
        assert_eq!(buf.capacity(), WORKING_BUFFER);
        buf.extend_from_slice(b"message");
        let ptr = buf.as_ptr();
        pool.give(buf);
        let again = pool.take();
        assert_eq!(again.as_ptr(), ptr, "the pooled buffer was not reused");
        assert!(again.is_empty());
    }

    #[test]
    fn other_sizes_are_not_pooled_and_the_pool_is_bounded() {
        let pool = BufferPool::new();
        pool.give(Vec::with_capacity(4 * WORKING_BUFFER));
        assert!(pool.free.borrow().is_empty());
        let bufs: Vec<_> = (0..POOL_MAX + 3).map(|_| pool.take()).collect();
        for b in bufs {
            pool.give(b);
        }
        assert_eq!(pool.free.borrow().len(), POOL_MAX);
    }
}
