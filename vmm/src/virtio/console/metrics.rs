//! virtio-console counters.

/// Bytes the guest wrote.
pub const TX_BYTES: usize = 0;
/// Bytes delivered to the guest.
pub const RX_BYTES: usize = 1;
/// Output bytes dropped (a full pty, a chain larger than the limit, a failing writer).
pub const TX_DROPPED: usize = 2;
/// Buffers outside guest RAM.
pub const ERRORS: usize = 3;
/// Times a queue broke (DEVICE_NEEDS_RESET).
pub const QUEUE_BROKEN: usize = 4;

/// The counter names, in index order.
pub const NAMES: &[&str] = &[
    "tx_bytes",
    "rx_bytes",
    "tx_dropped",
    "errors",
    "queue_broken",
];
