//! virtio-console (virtio 1.2, 5.3) with one port and no multiport: queue 0 carries input to
//! the guest (receiveq), queue 1 output from it (transmitq). Linux uses it as `console=hvc0`.
//!
//! The backend is chosen by `--console` (Cloud Hypervisor's spelling): `null` discards output,
//! `tty` writes standard output and reads standard input, `file=PATH` writes a file, `pty`
//! opens a pseudo-terminal (output and input through its master; the VMM keeps the slave open
//! so the master never hangs up, and prints the slave's path).
//!
//! `device.rs` is the `VirtioDevice` and its backends, `event_handler.rs` its worker's
//! subscriber, `metrics.rs` its counters.

mod device;
mod event_handler;
pub mod metrics;

pub use device::{Console, ConsoleBackend, ConsoleOutput};
pub use event_handler::ConsoleHandler;

/// Size of each queue.
pub const QUEUE_SIZE: u16 = 256;
/// The receive queue (host to guest).
pub const RX_QUEUE: u16 = 0;
/// The transmit queue (guest to host).
pub const TX_QUEUE: u16 = 1;
/// Input bytes held while the guest has no receive buffers; input is not read past this.
pub const MAX_PENDING_INPUT: usize = 64 << 10;
/// Bytes taken from one transmit chain at most; the rest is dropped and counted.
pub const MAX_CHAIN_OUTPUT: usize = 1 << 20;
