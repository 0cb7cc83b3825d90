//! Host signals as an event source: SIGTERM, SIGINT and SIGHUP (stop the VM as the timeout
//! does) and SIGUSR1 (render the VGA text console) are blocked in every thread and read from a
//! signalfd in the control loop, so no handler runs and no flag is polled.
//!
//! The signals are blocked in the thread that creates the [`SignalFd`], before it starts any
//! other thread: threads inherit the mask, so a process-directed signal stays pending until the
//! control loop reads it.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use super::ControlError;

/// The signals the control loop handles.
pub const HANDLED_SIGNALS: [libc::c_int; 4] =
    [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGUSR1];

/// The signals that stop the VM the way the timeout does (registers reported).
pub const TERMINATE_SIGNALS: [libc::c_int; 3] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP];

/// A signalfd for [`HANDLED_SIGNALS`], which it blocks in the calling thread.
pub struct SignalFd {
    fd: OwnedFd,
}

fn handled_set() -> libc::sigset_t {
    // SAFETY: sigemptyset initialises the set it is given; `set` is a valid sigset_t.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid, initialised sigset_t and the signal numbers are valid.
    unsafe {
        libc::sigemptyset(&mut set);
        for sig in HANDLED_SIGNALS {
            libc::sigaddset(&mut set, sig);
        }
    }
    set
}

impl SignalFd {
    /// Blocks [`HANDLED_SIGNALS`] in the calling thread (and so in every thread it starts
    /// afterwards) and opens a non-blocking signalfd for them.
    pub fn new() -> Result<SignalFd, ControlError> {
        let set = handled_set();
        // SAFETY: `set` is a valid sigset_t; a null old-set pointer is allowed.
        let r = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
        if r != 0 {
            return Err(ControlError::SignalFd(io::Error::from_raw_os_error(r)));
        }
        // SAFETY: -1 asks for a new signalfd; `set` is valid; the result is checked.
        let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC) };
        if fd < 0 {
            return Err(ControlError::SignalFd(io::Error::last_os_error()));
        }
        // SAFETY: `fd` was just returned by signalfd and is owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(SignalFd { fd })
    }

    /// The next pending signal's number, if one is pending.
    pub fn read(&self) -> Option<libc::c_int> {
        // SAFETY: signalfd_siginfo is plain integers; all zeroes is a valid value.
        let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
        let size = std::mem::size_of::<libc::signalfd_siginfo>();
        // SAFETY: reads at most `size` bytes into `info`, which is `size` bytes long.
        let n = unsafe {
            libc::read(
                self.fd.as_raw_fd(),
                std::ptr::addr_of_mut!(info).cast(),
                size,
            )
        };
        (usize::try_from(n).ok() == Some(size)).then_some(info.ssi_signo as libc::c_int)
    }
}

impl AsRawFd for SignalFd {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_signalfd_reads_a_thread_directed_sigusr1() {
        let fds = SignalFd::new().expect("signalfd");
        assert_eq!(fds.read(), None);

        // SAFETY: signals this thread, which blocks SIGUSR1 (so it is only queued).
        unsafe { libc::pthread_kill(libc::pthread_self(), libc::SIGUSR1) };

        assert_eq!(fds.read(), Some(libc::SIGUSR1));
        assert_eq!(fds.read(), None);
    }
}
