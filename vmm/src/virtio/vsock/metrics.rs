//! virtio-vsock counters.

/// Packets received from the guest.
pub const TX_PACKETS: usize = 0;
/// Packets sent to the guest.
pub const RX_PACKETS: usize = 1;
/// Payload bytes from the guest to host streams.
pub const TX_BYTES: usize = 2;
/// Payload bytes from host streams to the guest.
pub const RX_BYTES: usize = 3;
/// Connections established.
pub const CONNECTIONS: usize = 4;
/// Connections reset (RST sent to the guest).
pub const RESETS: usize = 5;
/// Guest packets with a bad length, type, CID or chain: dropped.
pub const BAD_PACKETS: usize = 6;
/// Guest packets with an unknown op: answered with RST.
pub const UNKNOWN_OPS: usize = 7;
/// Guest data beyond the credit it was given (or after its shutdown): connection reset.
pub const CREDIT_VIOLATIONS: usize = 8;
/// Control packets dropped because too many waited for receive buffers.
pub const CONTROL_DROPPED: usize = 9;
/// Times a queue broke (DEVICE_NEEDS_RESET).
pub const QUEUE_BROKEN: usize = 10;

/// The counter names, in index order.
pub const NAMES: &[&str] = &[
    "tx_packets",
    "rx_packets",
    "tx_bytes",
    "rx_bytes",
    "connections",
    "resets",
    "bad_packets",
    "unknown_ops",
    "credit_violations",
    "control_dropped",
    "queue_broken",
];
