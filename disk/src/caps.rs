//! What an open image supports, asked once so a device can offer features (virtio-blk's
//! `VIRTIO_BLK_F_RO`, `FLUSH`, `DISCARD`, `WRITE_ZEROES`, `BLK_SIZE`, `TOPOLOGY`) from the answer
//! instead of discovering them by failing.

use crate::Format;

/// The answer to [`QueryCapabilities::capabilities`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capabilities {
    /// The image's format.
    pub format: Format,
    /// Whether writes are refused (opened read-only, or the image cannot be written in place,
    /// e.g. an existing streamOptimized vmdk).
    pub read_only: bool,
    /// Whether `flush` does anything: the image is writable, so there is a volatile cache to
    /// flush. (Under `CacheMode::Unsafe` a flush keeps write ordering but skips the fdatasync.)
    pub flush: bool,
    /// Whether `discard` may free space (false: discard would be accepted and ignored, so there
    /// is no point offering it).
    pub discard: bool,
    /// Whether `write_zeroes` is supported (it always is on a writable image).
    pub write_zeroes: bool,
    /// Whether `write_zeroes_unmap(.., unmap: true)` may deallocate the range (virtio-blk's
    /// `write_zeroes_may_unmap`).
    pub write_zeroes_may_unmap: bool,
    /// Whether `resize` can change the virtual size (qcow2 grows only).
    pub resize: bool,
    /// Smallest unit a guest should address, in bytes (virtio-blk's `blk_size`): 512, or with
    /// O_DIRECT the host's direct-I/O offset alignment, so that guest requests never need a
    /// read-modify-write of a host block.
    pub logical_block_size: u32,
    /// The host's physical block size, in bytes (a power of two at least `logical_block_size`).
    pub physical_block_size: u32,
    /// Granularity in bytes at which discard actually frees space (qcow2: the cluster size;
    /// raw: the host block); 0 when `discard` is false.
    pub discard_alignment: u32,
    /// Whether the host file is open with O_DIRECT (bypassing the page cache).
    pub direct: bool,
    /// Buffer address alignment in bytes that lets O_DIRECT I/O go straight to the caller's
    /// buffers; less-aligned buffers go through a bounce buffer. 1 without O_DIRECT.
    pub buffer_alignment: u32,
}

/// Reporting an open image's [`Capabilities`].
pub trait QueryCapabilities {
    /// What this open image supports.
    fn capabilities(&self) -> Capabilities;
}
