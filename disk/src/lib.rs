//! Virtual disk images: raw, qcow2 and vmdk.
//!
//! Images are hostile input. The format is always stated by the caller and never probed from
//! the file's contents; backing files and extents are opened only where [`OpenOptions`] allow;
//! header fields are bounds-checked before anything is allocated from them.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod error;
pub mod vmdk;

pub use error::{Error, ErrorKind, Result};

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
}

/// Writing.
pub trait WriteAt {
    /// Writes all of `buf` at `offset`.
    fn write_at(&mut self, buf: &[u8], offset: u64) -> Result<()>;
    /// Makes every completed write durable.
    fn flush(&mut self) -> Result<()>;
}

/// Freeing and zeroing ranges.
pub trait Discard {
    /// Tells the image that a range is no longer needed; it may read back as anything.
    fn discard(&mut self, offset: u64, len: u64) -> Result<()>;
    /// Makes a range read as zeroes, deallocating it where the format can.
    fn write_zeroes(&mut self, offset: u64, len: u64) -> Result<()>;
}

/// Changing the virtual size.
pub trait Resize {
    /// Grows or shrinks the virtual disk to `new_size` bytes.
    fn resize(&mut self, new_size: u64) -> Result<()>;
}

/// An open image, with every capability (formats that lack one return `Unsupported`).
pub trait Disk: DiskSize + ReadAt + WriteAt + Discard + Resize + Send {}

/// Opens an image of the stated format.
pub fn open(path: &Path, format: Format, options: &OpenOptions) -> Result<Box<dyn Disk>> {
    let _ = (path, format, options);
    Err(Error::new(ErrorKind::Unsupported, "not yet implemented").with_path(path))
}
