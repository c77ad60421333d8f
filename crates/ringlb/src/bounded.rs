//! What the admin endpoint and the control socket share to serve untrusted local clients
//! within bounds: reads with a deadline, and a counted slot per connection thread.

use std::io::{self, Read};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A stream whose reads can be bounded in time (a socket; a scripted one in tests).
pub trait ReadTimeout: Read {
    fn set_timeout(&mut self, timeout: Duration) -> io::Result<()>;
}

impl ReadTimeout for TcpStream {
    fn set_timeout(&mut self, timeout: Duration) -> io::Result<()> {
        self.set_read_timeout(Some(timeout))
    }
}

impl ReadTimeout for UnixStream {
    fn set_timeout(&mut self, timeout: Duration) -> io::Result<()> {
        self.set_read_timeout(Some(timeout))
    }
}

/// One of `max` connection slots; released when dropped, however its thread ends.
pub struct Slot(Arc<AtomicUsize>);

impl Slot {
    /// A slot of `live`, unless `max` are taken.
    pub fn take(live: &Arc<AtomicUsize>, max: usize) -> Option<Slot> {
        if live.fetch_add(1, Ordering::AcqRel) >= max {
            live.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Slot(Arc::clone(live)))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Serves reads from a list of chunks; a `None` chunk is a read timeout.
#[cfg(test)]
pub struct Script {
    chunks: std::collections::VecDeque<Option<Vec<u8>>>,
}

#[cfg(test)]
impl Script {
    pub fn new(chunks: Vec<Option<&[u8]>>) -> Script {
        Script {
            chunks: chunks.into_iter().map(|c| c.map(<[u8]>::to_vec)).collect(),
        }
    }
}

#[cfg(test)]
impl Read for Script {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.chunks.pop_front() {
            None => Ok(0),
            Some(None) => Err(io::ErrorKind::WouldBlock.into()),
            Some(Some(mut chunk)) => {
                let n = chunk.len().min(buf.len());
                buf[..n].copy_from_slice(&chunk[..n]);
                if n < chunk.len() {
                    self.chunks.push_front(Some(chunk.split_off(n)));
                }
                Ok(n)
            }
        }
    }
}

#[cfg(test)]
impl ReadTimeout for Script {
    fn set_timeout(&mut self, _timeout: Duration) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_bounded_and_released() {
        let live = Arc::new(AtomicUsize::new(0));
        let a = Slot::take(&live, 2).unwrap();
        let _b = Slot::take(&live, 2).unwrap();
        assert!(Slot::take(&live, 2).is_none());
        drop(a);
        assert!(Slot::take(&live, 2).is_some());
        assert_eq!(live.load(Ordering::Acquire), 1);
    }
}
