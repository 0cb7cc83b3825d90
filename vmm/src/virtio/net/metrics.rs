//! virtio-net counters.

/// Frames delivered to the guest.
pub const RX_FRAMES: usize = 0;
/// Bytes delivered to the guest (headers excluded).
pub const RX_BYTES: usize = 1;
/// Frames sent by the guest to the tap.
pub const TX_FRAMES: usize = 2;
/// Bytes sent by the guest (headers excluded).
pub const TX_BYTES: usize = 3;
/// Frames from the tap that did not fit the guest's (non-mergeable) receive buffer.
pub const RX_DROPPED: usize = 4;
/// Receive chains too short for a header, or outside guest RAM: returned empty.
pub const RX_BAD_CHAIN: usize = 5;
/// Transmit chains too short for a header or outside guest RAM.
pub const TX_MALFORMED: usize = 6;
/// Transmit frames longer than the MTU allows (or than 64 KiB), dropped.
pub const TX_OVERSIZE: usize = 7;
/// Transmit frames the tap refused (a header it rejects), dropped.
pub const TX_ERRORS: usize = 8;
/// Times the guest had no receive buffer while frames waited (the tap was then not polled).
pub const RX_NO_BUFFERS: usize = 9;
/// Times a queue broke (DEVICE_NEEDS_RESET).
pub const QUEUE_BROKEN: usize = 10;

/// The counter names, in index order.
pub const NAMES: &[&str] = &[
    "rx_frames",
    "rx_bytes",
    "tx_frames",
    "tx_bytes",
    "rx_dropped",
    "rx_bad_chain",
    "tx_malformed",
    "tx_oversize",
    "tx_errors",
    "rx_no_buffers",
    "queue_broken",
];
