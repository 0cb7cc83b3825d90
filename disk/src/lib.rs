//! Virtual disk images: raw, qcow2 and vmdk.
//!
//! Images are hostile input. The format is always stated by the caller and never probed from
//! the file's contents; backing files and extents are opened only where [`OpenOptions`] allow;
//! header fields are bounds-checked before anything is allocated from them.
//!
//! Every image offers the same small traits ([`DiskSize`], [`ReadAt`], [`WriteAt`],
//! [`Discard`], [`Resize`], [`QueryCapabilities`]), with scatter-gather reads and writes
//! ([`ReadAt::read_vectored_at`], [`WriteAt::write_vectored_at`]) that go straight between
//! the caller's buffers and the host file wherever the format allows. No KVM, no guest-memory
//! types: a device hands in plain host buffers.
//!
//! # Using it from a block device
//!
//! A virtio-blk device opens its image once as a [`SharedDisk`] (`Clone + Send + Sync`),
//! offers features from [`SharedDisk::capabilities`] (`VIRTIO_BLK_F_RO` from `read_only`,
//! `FLUSH` from `flush`, `DISCARD` from `discard` with `discard_alignment`, `WRITE_ZEROES`
//! from `write_zeroes` and `write_zeroes_may_unmap`, `BLK_SIZE` from `logical_block_size`,
//! `TOPOLOGY` from `physical_block_size`), and gives each queue an [`aio::Engine`]
//! ([`SharedDisk::engine`]: io_uring for raw images, a worker thread for qcow2 and vmdk).
//! The queue's event loop watches the engine's [`aio::Engine::notifier`] eventfd:
//!
//! ```
//! use disk::aio::{Engine, Request};
//! use disk::{Format, OpenOptions, SharedDisk};
//!
//! # fn main() -> disk::Result<()> {
//! # let dir = std::env::temp_dir().join(format!("disk-doc-{}", std::process::id()));
//! # std::fs::create_dir_all(&dir).unwrap();
//! # let path = dir.join("vda.raw");
//! # disk::create(&path, Format::Raw, 1 << 20, &Default::default())?;
//! let options = OpenOptions { direct: false, read_only: false, ..Default::default() };
//! let disk = SharedDisk::open(&path, Format::Raw, &options)?;
//! let caps = disk.capabilities();
//! assert!(!caps.read_only && caps.flush);
//! let mut engine = disk.engine(256)?; // one per queue; epoll on engine.notifier()
//!
//! // A guest request: its data descriptors, already translated to host addresses.
//! let mut data = vec![0u8; 4096];
//! let iovecs = [libc::iovec { iov_base: data.as_mut_ptr().cast(), iov_len: data.len() }];
//! // SAFETY: `data` stays valid and untouched until the completion is collected below
//! // (for guest memory: until the descriptor is returned to the used ring).
//! let request = unsafe { Request::read(8 * 512, &iovecs)? };
//! let head = 7; // the descriptor chain's head index, as the token
//! if let Err(e) = engine.submit(request, head) {
//!     // Refused (out of range, read-only, unsupported): VIRTIO_BLK_S_IOERR or _UNSUPP now.
//!     panic!("refused: {e}");
//! }
//! engine.commit()?; // after the batch of requests from one queue notification
//!
//! // When the notifier is readable:
//! let mut done = Vec::new();
//! while done.is_empty() {
//!     engine.wait()?; // an event loop would epoll instead
//!     engine.completions(&mut done);
//! }
//! for c in done {
//!     // c.token is the head; c.result Err -> VIRTIO_BLK_S_IOERR, Ok -> VIRTIO_BLK_S_OK.
//!     assert_eq!(c.token, head);
//!     assert!(c.result.is_ok());
//! }
//! # drop(engine);
//! # std::fs::remove_dir_all(&dir).unwrap();
//! # Ok(())
//! # }
//! ```
//!
//! # Unsafe code
//!
//! The crate is `#![deny(unsafe_code)]`. Two files allow it, and nothing else does:
//! `aio/iovec.rs` (the `unsafe` [`aio::Request::read`]/[`aio::Request::write`] constructors,
//! whose caller promises the buffers outlive the request, and the slices and copies made from
//! that promise) and `aio/uring.rs` (handing submission-queue entries to the kernel). Every
//! block carries a `// SAFETY:` comment; see docs/decisions/0007.
#![deny(unsafe_code)]
#![deny(missing_docs)]

pub mod aio;
mod caps;
pub mod error;
mod iov;
pub mod ops;
pub mod qcow2;
pub mod raw;
mod shared;
pub mod vmdk;

pub use caps::{Capabilities, QueryCapabilities};
pub use error::{Error, ErrorKind, Result};
pub use qcow2::{CheckReport, CompressionType, Qcow2, Qcow2Info, SnapshotInfo};
pub use raw::RawDisk;
pub use shared::SharedDisk;

use std::io::{IoSlice, IoSliceMut};
use std::path::Path;

/// The image formats this library reads and writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// A plain file or block device.
    Raw,
    /// QEMU copy-on-write, versions 2 and 3.
    Qcow2,
    /// VMware virtual disk.
    Vmdk,
}

impl Format {
    /// The format's name as qemu-img spells it.
    pub fn name(self) -> &'static str {
        match self {
            Format::Raw => "raw",
            Format::Qcow2 => "qcow2",
            Format::Vmdk => "vmdk",
        }
    }
}

impl std::str::FromStr for Format {
    type Err = Error;
    fn from_str(s: &str) -> Result<Format> {
        match s {
            "raw" => Ok(Format::Raw),
            "qcow2" => Ok(Format::Qcow2),
            "vmdk" => Ok(Format::Vmdk),
            _ => Err(Error::new(
                ErrorKind::Unsupported,
                format!("unknown image format '{s}' (expected raw, qcow2 or vmdk)"),
            )),
        }
    }
}

/// How an image is opened.
#[derive(Clone, Debug, Default)]
pub struct OpenOptions {
    /// Open for reading only.
    pub read_only: bool,
    /// Bypass the host page cache (raw images).
    pub direct: bool,
    /// Follow backing-file references (qcow2); if false, an image with a backing file is refused.
    pub allow_backing: bool,
    /// Open vmdk extents outside the descriptor's own directory.
    pub allow_outside_extents: bool,
    /// Format of the image's immediate backing file when its header does not record one
    /// (formats are never probed; without this such images are refused).
    pub backing_format: Option<Format>,
    /// Host cache mode; only [`CacheMode::Unsafe`] changes behaviour (flushes skip fdatasync).
    pub cache: CacheMode,
}

/// Host cache mode, spelled as qemu-img's `-t`/`-T`.
///
/// Every mode except `Unsafe` makes [`WriteAt::flush`] durable (fdatasync). `Unsafe` keeps
/// the qcow2 write ordering (data, refcounts, L2, L1) but never waits for stable storage, so a
/// host crash may lose or corrupt the image; it is meant for conversion targets, which are
/// thrown away if the conversion does not finish (qemu-img convert's default).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CacheMode {
    /// Page cache, durable flush (the default).
    #[default]
    Writeback,
    /// Treated as `Writeback`: flushes are durable.
    Writethrough,
    /// Treated as `Writeback`: flushes are durable.
    None,
    /// Treated as `Writeback`: flushes are durable.
    Directsync,
    /// Flushes never sync.
    Unsafe,
}

impl CacheMode {
    /// Whether flushes make data durable.
    pub fn syncs(self) -> bool {
        self != CacheMode::Unsafe
    }
}

impl std::str::FromStr for CacheMode {
    type Err = Error;
    fn from_str(s: &str) -> Result<CacheMode> {
        match s {
            "writeback" => Ok(CacheMode::Writeback),
            "writethrough" => Ok(CacheMode::Writethrough),
            "none" => Ok(CacheMode::None),
            "directsync" => Ok(CacheMode::Directsync),
            "unsafe" => Ok(CacheMode::Unsafe),
            _ => Err(Error::new(
                ErrorKind::Unsupported,
                format!(
                    "unknown cache mode '{s}' (expected none, writeback, unsafe, directsync \
                     or writethrough)"
                ),
            )),
        }
    }
}

/// qcow2 format version.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Qcow2Version {
    /// Version 2 ("compat=0.10").
    V2,
    /// Version 3 ("compat=1.1").
    #[default]
    V3,
}

/// Options for [`create`]; fields that do not apply to a format are ignored by it.
#[derive(Clone, Debug, Default)]
pub struct CreateOptions {
    /// qcow2 cluster size in bytes (default 64 KiB).
    pub cluster_size: Option<u64>,
    /// Backing file name, stored as given (relative names resolve against the image's directory).
    pub backing_file: Option<String>,
    /// Backing file format; required with `backing_file`.
    pub backing_format: Option<Format>,
    /// Compression type for compressed clusters (zstd needs version 3).
    pub compression_type: CompressionType,
    /// Refcount width in bits: 1, 2, 4, 8, 16 (default), 32 or 64.
    pub refcount_bits: Option<u32>,
    /// qcow2 version.
    pub version: Qcow2Version,
    /// Set the lazy-refcounts compatible feature (version 3).
    pub lazy_refcounts: bool,
    /// vmdk layout (`-o subformat=`).
    pub vmdk_subformat: vmdk::Subformat,
}

/// What `qemu-img info` reports about an image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageInfo {
    /// The image format.
    pub format: Format,
    /// Virtual disk size in bytes.
    pub virtual_size: u64,
    /// Host bytes allocated to the image file.
    pub actual_size: u64,
    /// Cluster size (qcow2).
    pub cluster_size: Option<u64>,
    /// Backing file name as recorded.
    pub backing_file: Option<String>,
    /// Backing file format as recorded.
    pub backing_format: Option<String>,
    /// qcow2-specific details.
    pub qcow2: Option<Qcow2Info>,
}

/// The size of a virtual disk.
pub trait DiskSize {
    /// Virtual size in bytes.
    fn size(&self) -> u64;
}

/// Reading.
pub trait ReadAt {
    /// Reads exactly `buf.len()` bytes at `offset`; unallocated ranges read as zeroes.
    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> Result<()>;

    /// Reads the buffers' total length at `offset` into the buffers in order (scatter).
    ///
    /// The formats split the request at cluster/grain boundaries and read each piece straight
    /// into the caller's buffers (raw images with one `preadv`); only compressed clusters pass
    /// through a buffer of the library's. A request past the end of the disk fails with
    /// [`ErrorKind::OutOfBounds`] before anything is read. The default reads buffer by buffer.
    fn read_vectored_at(&mut self, bufs: &mut [IoSliceMut<'_>], offset: u64) -> Result<()> {
        let mut pos = offset;
        for b in bufs.iter_mut() {
            self.read_at(b, pos)?;
            pos = pos.checked_add(b.len() as u64).ok_or_else(|| {
                Error::new(ErrorKind::OutOfBounds, "request end overflows").with_offset(offset)
            })?;
        }
        Ok(())
    }
}

/// Writing.
pub trait WriteAt {
    /// Writes all of `buf` at `offset`.
    fn write_at(&mut self, buf: &[u8], offset: u64) -> Result<()>;
    /// Makes every completed write durable.
    fn flush(&mut self) -> Result<()>;

    /// Writes the buffers, in order, at `offset` (gather).
    ///
    /// Pieces go straight from the caller's buffers to the host file wherever the format
    /// allows (raw: one `pwritev`; qcow2: allocated clusters and whole new clusters; vmdk:
    /// allocated grains and whole new grains); partial new clusters are merged with their old
    /// contents in a buffer. A request past the end of the disk fails with
    /// [`ErrorKind::OutOfBounds`] before anything is written (implementations check the whole
    /// range first; the default writes buffer by buffer and is only for images without one).
    fn write_vectored_at(&mut self, bufs: &[IoSlice<'_>], offset: u64) -> Result<()> {
        let mut pos = offset;
        for b in bufs {
            self.write_at(b, pos)?;
            pos = pos.checked_add(b.len() as u64).ok_or_else(|| {
                Error::new(ErrorKind::OutOfBounds, "request end overflows").with_offset(offset)
            })?;
        }
        Ok(())
    }
}

/// Freeing and zeroing ranges.
pub trait Discard {
    /// Tells the image that a range is no longer needed; it may read back as anything.
    fn discard(&mut self, offset: u64, len: u64) -> Result<()>;
    /// Makes a range read as zeroes, deallocating it where the format can.
    fn write_zeroes(&mut self, offset: u64, len: u64) -> Result<()>;

    /// Makes a range read as zeroes; with `unmap` false the range stays allocated (virtio-blk
    /// `WRITE_ZEROES` without the unmap flag), with `unmap` true this is
    /// [`Discard::write_zeroes`]. The default is for formats whose `write_zeroes` never
    /// deallocates.
    fn write_zeroes_unmap(&mut self, offset: u64, len: u64, unmap: bool) -> Result<()> {
        let _ = unmap;
        self.write_zeroes(offset, len)
    }
}

/// Changing the virtual size.
pub trait Resize {
    /// Grows or shrinks the virtual disk to `new_size` bytes.
    fn resize(&mut self, new_size: u64) -> Result<()>;
}

/// An open image, with every capability (formats that lack one return `Unsupported`;
/// [`QueryCapabilities::capabilities`] says which in advance).
pub trait Disk: DiskSize + ReadAt + WriteAt + Discard + Resize + QueryCapabilities + Send {
    /// Where the `len` bytes at guest `offset` are stored in the image's own file, when all
    /// of them are stored there as they are (no backing file, no zero or compressed
    /// cluster): host (offset, length) runs in guest order, neighbours merged. `None` when
    /// any part is not; such reads go through [`ReadAt::read_vectored_at`]. What lets
    /// [`aio::MappedEngine`] read a qcow2 image's data through io_uring. The default maps
    /// nothing.
    fn data_map(&mut self, offset: u64, len: u64) -> Result<Option<Vec<(u64, u64)>>> {
        let _ = (offset, len);
        Ok(None)
    }

    /// The file [`Disk::data_map`]'s host offsets are in (None: no mapping).
    fn data_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        None
    }
}

/// Opens an image of the stated format.
pub fn open(path: &Path, format: Format, options: &OpenOptions) -> Result<Box<dyn Disk>> {
    match format {
        Format::Raw => Ok(Box::new(RawDisk::open(path, options)?)),
        Format::Qcow2 => Ok(Box::new(Qcow2::open(path, options)?)),
        Format::Vmdk => Ok(Box::new(vmdk::open(path, options)?)),
    }
}

/// Creates an image of `size` bytes (truncating any existing file).
pub fn create(path: &Path, format: Format, size: u64, options: &CreateOptions) -> Result<()> {
    match format {
        Format::Raw => RawDisk::create(path, size),
        Format::Qcow2 => qcow2::create(path, size, options).map_err(|e| e.with_path(path)),
        Format::Vmdk => {
            let o = vmdk::VmdkCreateOptions {
                subformat: options.vmdk_subformat,
            };
            vmdk::create(path, size, &o)?.flush()
        }
    }
}

/// Describes an image without opening its backing files.
pub fn info(path: &Path, format: Format) -> Result<ImageInfo> {
    match format {
        Format::Qcow2 => qcow2::info(path),
        Format::Vmdk => {
            let v = vmdk::open(
                path,
                &OpenOptions {
                    read_only: true,
                    ..Default::default()
                },
            )?;
            let mut i = info(path, Format::Raw)?;
            i.format = Format::Vmdk;
            i.virtual_size = v.size();
            Ok(i)
        }
        Format::Raw => {
            let meta = std::fs::metadata(path)
                .map_err(|e| Error::io(e, "cannot stat image").with_path(path))?;
            Ok(ImageInfo {
                format,
                virtual_size: meta.len(),
                actual_size: std::os::unix::fs::MetadataExt::blocks(&meta) * 512,
                cluster_size: None,
                backing_file: None,
                backing_format: None,
                qcow2: None,
            })
        }
    }
}

/// Checks an image's metadata; with `repair`, leaked clusters are freed.
pub fn check(path: &Path, format: Format, repair: bool) -> Result<CheckReport> {
    match format {
        Format::Qcow2 => qcow2::check(path, repair),
        _ => Ok(CheckReport::default()),
    }
}
