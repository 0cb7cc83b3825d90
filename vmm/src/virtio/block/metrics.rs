//! virtio-blk counters.

/// Read requests completed.
pub const READS: usize = 0;
/// Bytes read into guest buffers.
pub const READ_BYTES: usize = 1;
/// Write requests completed.
pub const WRITES: usize = 2;
/// Bytes written from guest buffers.
pub const WRITE_BYTES: usize = 3;
/// Flushes completed.
pub const FLUSHES: usize = 4;
/// Discard and write-zeroes requests completed.
pub const DISCARDS: usize = 5;
/// Requests answered VIRTIO_BLK_S_IOERR (host errors, out-of-range or malformed requests).
pub const IO_ERRORS: usize = 6;
/// Requests answered VIRTIO_BLK_S_UNSUPP.
pub const UNSUPPORTED: usize = 7;
/// Chains without a status byte (returned unanswered).
pub const BAD_CHAINS: usize = 8;
/// Times the queue broke (DEVICE_NEEDS_RESET).
pub const QUEUE_BROKEN: usize = 9;
/// Batches of requests the worker found by polling the available ring (no notify, no
/// wake-up; docs/decisions/0016).
pub const POLLED_BATCHES: usize = 10;
/// Times the worker woke on its eventfds (queue notify or engine completion).
pub const WAKEUPS: usize = 11;

/// The counter names, in index order.
pub const NAMES: &[&str] = &[
    "reads",
    "read_bytes",
    "writes",
    "write_bytes",
    "flushes",
    "discards",
    "io_errors",
    "unsupported",
    "bad_chains",
    "queue_broken",
    "polled_batches",
    "wakeups",
];
