//! virtio-rng counters.

/// Requests served.
pub const REQUESTS: usize = 0;
/// Bytes of entropy written into guest buffers.
pub const BYTES: usize = 1;
/// Requests cut short by a buffer outside guest RAM or a failing source.
pub const ERRORS: usize = 2;
/// Times the queue broke (DEVICE_NEEDS_RESET).
pub const QUEUE_BROKEN: usize = 3;

/// The counter names, in index order.
pub const NAMES: &[&str] = &["requests", "bytes", "errors", "queue_broken"];
