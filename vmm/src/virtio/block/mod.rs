//! virtio-blk (virtio 1.2, 5.2) over the `disk` library: raw, qcow2 and vmdk images (the
//! format always stated), read-only, flush, get-id, discard and write-zeroes offered from the
//! image's capability query, one request queue.
//!
//! Requests go to the image through a `disk::aio::Engine` (io_uring for raw images; qcow2/vmdk
//! requests run inline on the device worker): data moves straight between the image and
//! the guest's buffers (the descriptors' host addresses become the request's iovecs), and the
//! engine's completion eventfd sits in the device worker's `EventManager` next to the queue's
//! notify eventfd. After each batch the worker polls the queue for an adaptive window
//! (`handler_poll.rs`, docs/decisions/0016). A slow flush on one disk never stalls another
//! device or a vCPU.
//!
//! `device.rs` is the `VirtioDevice` (features, configuration space), `request.rs` turns a
//! descriptor chain into a request, `event_handler.rs` is the worker's subscriber,
//! `metrics.rs` its counters.

mod device;
mod event_handler;
pub mod metrics;
mod request;

pub use device::Block;
pub use event_handler::BlockHandler;

/// Size of the request queue.
pub const QUEUE_SIZE: u16 = 256;
/// Bytes per sector, whatever the block size.
pub const SECTOR_SIZE: u64 = 512;
/// Data segments per request at most (a chain also holds the header and the status byte).
pub const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;
/// Length of the GET_ID answer.
pub const ID_BYTES: usize = 20;

/// Feature bits (virtio 1.2, 5.2.3).
pub mod feature {
    /// `seg_max` is valid.
    pub const SEG_MAX: u64 = 1 << 2;
    /// The device is read-only.
    pub const RO: u64 = 1 << 5;
    /// `blk_size` is valid.
    pub const BLK_SIZE: u64 = 1 << 6;
    /// Cache flush command.
    pub const FLUSH: u64 = 1 << 9;
    /// `topology` is valid.
    pub const TOPOLOGY: u64 = 1 << 10;
    /// Discard command.
    pub const DISCARD: u64 = 1 << 13;
    /// Write-zeroes command.
    pub const WRITE_ZEROES: u64 = 1 << 14;
}

/// Request types.
pub mod kind {
    /// Read.
    pub const IN: u32 = 0;
    /// Write.
    pub const OUT: u32 = 1;
    /// Flush.
    pub const FLUSH: u32 = 4;
    /// Device ID string.
    pub const GET_ID: u32 = 8;
    /// Discard.
    pub const DISCARD: u32 = 11;
    /// Write zeroes.
    pub const WRITE_ZEROES: u32 = 13;
}

/// Request status bytes.
pub mod status {
    /// Success.
    pub const OK: u8 = 0;
    /// Device or driver error.
    pub const IOERR: u8 = 1;
    /// Request unsupported.
    pub const UNSUPP: u8 = 2;
}
