//! virtio-vsock (virtio 1.2, 5.10) with a userspace backend in Firecracker's hybrid
//! convention (this host has no /dev/vhost-vsock): stream connections between guest ports
//! and host Unix sockets.
//!
//! - Host to guest: the host connects to the device's socket `PATH` and writes
//!   `CONNECT <port>\n`; once the guest accepts, the VMM answers `OK <host port>\n` and the
//!   Unix stream carries the connection's bytes.
//! - Guest to host: a guest connecting to host (CID 2) port P reaches the listener on
//!   `PATH_P`.
//!
//! Flow control is the spec's credit scheme: the VMM buffers at most [`CONN_BUF`] bytes per
//! connection on the way to the host (what it advertises as `buf_alloc`); a guest that sends
//! more, or sends after it shut its sending side, gets the connection reset. Bytes from the
//! host are read only while the guest has credit and receive buffers.
//!
//! `device.rs` is the `VirtioDevice`, `event_handler.rs` its worker's subscriber (queues,
//! listener, streams), `connection.rs` one connection, `packet.rs` the header, `metrics.rs`
//! its counters.

mod connection;
mod device;
mod event_handler;
pub mod metrics;
pub mod packet;
mod persist;

pub use device::Vsock;
#[cfg(any(test, feature = "fuzz"))]
pub use event_handler::Backlog;
pub use event_handler::VsockHandler;

/// The receive queue (device to guest).
pub const RX_QUEUE: u16 = 0;
/// The transmit queue (guest to device).
pub const TX_QUEUE: u16 = 1;
/// The event queue (a transport reset event after a restore).
pub const EVENT_QUEUE: u16 = 2;
/// Size of each queue.
pub const QUEUE_SIZE: u16 = 256;
/// The host's CID.
pub const HOST_CID: u64 = 2;
/// Bytes the VMM buffers per connection toward the host (the `buf_alloc` it advertises).
pub const CONN_BUF: u32 = 256 << 10;
/// Payload bytes in one packet at most (Linux's VIRTIO_VSOCK_MAX_PKT_BUF_SIZE).
pub const MAX_PAYLOAD: usize = 64 << 10;
/// Connections at most; more are refused with RST.
pub const MAX_CONNECTIONS: usize = 1024;
/// Host connections still sending their `CONNECT` line at most.
pub const MAX_HANDSHAKES: usize = 64;
/// Control packets waiting for receive buffers at most; more are dropped and counted.
pub const MAX_PENDING_CONTROL: usize = 4096;
/// Ports the VMM gives host-initiated connections start here.
pub const FIRST_HOST_PORT: u32 = 1 << 30;
