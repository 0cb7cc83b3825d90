//! Standard input to the serial port, as an event source of the control loop (no thread).
//!
//! A pollable standard input (a terminal, a pipe, a socket) is in the epoll: each time it is
//! readable, one read of at most as many bytes as the UART's pending queue has room for goes to
//! the guest. While the guest has not read what it was given (no room), standard input leaves
//! the epoll's interest set and the console tick brings it back once there is room, so nothing
//! is read that could not be delivered. A standard input epoll refuses (a regular file,
//! `/dev/null`) never blocks a read: the console tick reads it instead. End of input, or a read
//! error, ends forwarding.

use std::io::{self, Read};
use std::os::fd::{AsRawFd, RawFd};

use event_manager::{EventOps, Events};
use vmm_sys_util::epoll::EventSet;

use crate::devices::serial::{InputRead, SerialHandle};

/// Where standard input forwarding stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum StdinState {
    /// Not registered yet.
    New,
    /// In the epoll, waiting for input.
    Polled,
    /// In the epoll with no interest: the guest has no room; the tick looks again.
    Throttled,
    /// Epoll refused it: the tick reads it.
    TickDriven,
    /// At end of input (or failed): nothing more to do.
    Done,
}

/// Standard input feeding COM1.
pub struct StdinSource {
    serial: SerialHandle,
    state: StdinState,
}

/// The standard input file descriptor.
const STDIN: RawFd = 0;

struct Stdin;

impl Read for Stdin {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // std's Stdin buffers (and locks); read the descriptor directly so that one read
        // takes only what the device has room for.
        // SAFETY: reads at most `buf.len()` bytes into `buf`.
        let n = unsafe { libc::read(STDIN, buf.as_mut_ptr().cast(), buf.len()) };
        usize::try_from(n).map_err(|_| io::Error::last_os_error())
    }
}

impl AsRawFd for Stdin {
    fn as_raw_fd(&self) -> RawFd {
        STDIN
    }
}

impl StdinSource {
    /// Standard input for `serial`, not yet registered.
    pub fn new(serial: SerialHandle) -> StdinSource {
        StdinSource {
            serial,
            state: StdinState::New,
        }
    }

    /// The file descriptor it may have in the epoll.
    pub fn fd(&self) -> RawFd {
        STDIN
    }

    /// Whether standard input is in the epoll (so must be removed before the VM goes).
    pub fn registered(&self) -> bool {
        matches!(self.state, StdinState::Polled | StdinState::Throttled)
    }

    /// Adds standard input to the epoll; one epoll refuses is read on every tick instead.
    pub fn register(&mut self, ops: &mut EventOps<'_>) {
        if self.state != StdinState::New {
            return;
        }
        self.state = match ops.add(Events::new(&Stdin, EventSet::IN)) {
            Ok(()) => StdinState::Polled,
            Err(_) => StdinState::TickDriven,
        };
    }

    /// Takes standard input out of the epoll.
    pub fn unregister(&mut self, ops: &mut EventOps<'_>) {
        if self.registered() {
            let _ = ops.remove(Events::empty(&Stdin));
        }
        self.state = StdinState::Done;
    }

    /// Standard input is readable (or hung up).
    pub fn on_readable(&mut self, ops: &mut EventOps<'_>) {
        if self.state != StdinState::Polled {
            return;
        }
        match self.serial.forward_input(&mut Stdin) {
            Ok(InputRead::Forwarded(_)) => {}
            Ok(InputRead::Full) => {
                if ops.modify(Events::new(&Stdin, EventSet::empty())).is_ok() {
                    self.state = StdinState::Throttled;
                }
            }
            Ok(InputRead::Eof) | Err(_) => self.unregister(ops),
        }
    }

    /// The console tick: brings a throttled standard input back once the guest has room,
    /// reads one epoll refused.
    pub fn on_tick(&mut self, ops: &mut EventOps<'_>) {
        match self.state {
            StdinState::Throttled
                if self.serial.input_room() > 0
                    && ops.modify(Events::new(&Stdin, EventSet::IN)).is_ok() =>
            {
                self.state = StdinState::Polled;
            }
            StdinState::TickDriven => match self.serial.forward_input(&mut Stdin) {
                Ok(InputRead::Forwarded(_) | InputRead::Full) => {}
                Ok(InputRead::Eof) | Err(_) => self.state = StdinState::Done,
            },
            _ => {}
        }
    }
}
