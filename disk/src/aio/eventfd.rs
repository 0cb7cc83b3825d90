//! The completion notifier: a non-blocking eventfd.

use std::os::fd::{BorrowedFd, OwnedFd};

use rustix::event::{EventfdFlags, PollFd, PollFlags};

use crate::{Error, Result};

/// A new non-blocking, close-on-exec eventfd.
pub(crate) fn new() -> Result<OwnedFd> {
    rustix::event::eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)
        .map_err(|e| Error::io(e.into(), "cannot create the completion eventfd"))
}

/// Makes the eventfd readable (adds 1 to its counter).
pub(crate) fn signal(fd: BorrowedFd<'_>) {
    // Cannot fail short of a counter overflow (2^64 - 2 unread signals), which would still
    // leave it readable.
    let _ = rustix::io::write(fd, &1u64.to_ne_bytes());
}

/// Resets the eventfd's counter (no-op when it is already zero).
pub(crate) fn drain(fd: BorrowedFd<'_>) {
    let mut buf = [0u8; 8];
    let _ = rustix::io::read(fd, &mut buf);
}

/// Blocks until the eventfd is readable.
pub(crate) fn wait_readable(fd: BorrowedFd<'_>) -> Result<()> {
    loop {
        let mut fds = [PollFd::new(&fd, PollFlags::IN)];
        match rustix::event::poll(&mut fds, None) {
            Ok(_) => return Ok(()),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(Error::io(e.into(), "waiting for completions")),
        }
    }
}
