//! virtio-rng (virtio 1.2, 5.4): one request queue whose writable buffers the device fills
//! with host entropy: getrandom(2) for the default source `/dev/urandom`, else reads of the
//! file `--rng src=PATH` names.
//!
//! `device.rs` is the `VirtioDevice`, `event_handler.rs` its worker's subscriber,
//! `metrics.rs` its counters.

mod device;
mod event_handler;
pub mod metrics;

pub use device::{EntropySource, Rng};
pub use event_handler::RngHandler;

/// Size of the request queue.
pub const QUEUE_SIZE: u16 = 256;
/// Bytes served per request at most (a request with larger buffers gets this many).
pub const MAX_REQUEST_BYTES: usize = 64 << 10;
/// The source that means getrandom(2).
pub const DEFAULT_SOURCE: &str = "/dev/urandom";
