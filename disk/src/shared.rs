//! [`SharedDisk`]: one open image shared by a device's worker threads.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::aio::{self, Engine};
use crate::{Capabilities, Disk, Error, ErrorKind, Format, OpenOptions, RawDisk, Result};

/// An open image that any number of threads may use at once (`Clone + Send + Sync`).
///
/// Raw images need no lock: every operation is a positioned system call on the shared file
/// (a flush on one thread never delays a read on another). qcow2 and vmdk images keep their
/// metadata caches behind one mutex per image, so their requests run one at a time per image;
/// a slow flush holds only its own image's lock, never another image's.
#[derive(Clone)]
pub struct SharedDisk {
    inner: Arc<Backend>,
}

/// Compile-time proof that handles can move to and be shared by worker threads.
const _: fn() = || {
    fn shareable<T: Send + Sync + Clone>() {}
    shareable::<SharedDisk>();
};

enum Backend {
    Raw(RawDisk),
    Locked {
        disk: Mutex<Box<dyn Disk>>,
        caps: Capabilities,
        /// The size, readable without the lock (request validation must not wait for a
        /// flush); updated by `resize`.
        size: AtomicU64,
    },
}

impl std::fmt::Debug for SharedDisk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedDisk")
            .field("capabilities", &self.capabilities())
            .finish_non_exhaustive()
    }
}

impl SharedDisk {
    /// Opens an image of the stated format for sharing.
    pub fn open(path: &Path, format: Format, options: &OpenOptions) -> Result<SharedDisk> {
        match format {
            Format::Raw => Ok(SharedDisk::from_raw(RawDisk::open(path, options)?)),
            _ => Ok(SharedDisk::from_disk(crate::open(path, format, options)?)),
        }
    }

    /// Shares an open raw image (lock-free).
    pub fn from_raw(raw: RawDisk) -> SharedDisk {
        SharedDisk {
            inner: Arc::new(Backend::Raw(raw)),
        }
    }

    /// Shares any open image behind a mutex.
    pub fn from_disk(disk: Box<dyn Disk>) -> SharedDisk {
        let caps = disk.capabilities();
        let size = AtomicU64::new(disk.size());
        SharedDisk {
            inner: Arc::new(Backend::Locked {
                disk: Mutex::new(disk),
                caps,
                size,
            }),
        }
    }

    /// The raw image, when this is one shared lock-free.
    pub(crate) fn raw(&self) -> Option<&RawDisk> {
        match &*self.inner {
            Backend::Raw(r) => Some(r),
            Backend::Locked { .. } => None,
        }
    }

    fn lock(&self) -> Result<MutexGuard<'_, Box<dyn Disk>>> {
        match &*self.inner {
            Backend::Locked { disk, .. } => disk.lock().map_err(|_| {
                Error::new(
                    ErrorKind::Io,
                    "a thread panicked while using this image; it is no longer usable",
                )
            }),
            Backend::Raw(_) => Err(Error::new(ErrorKind::Io, "raw images are not locked")),
        }
    }

    /// [`Disk::data_map`] of the image behind the lock (None for raw images).
    pub(crate) fn data_map(&self, offset: u64, len: u64) -> Result<Option<Vec<(u64, u64)>>> {
        match &*self.inner {
            Backend::Raw(_) => Ok(None),
            Backend::Locked { .. } => self.lock()?.data_map(offset, len),
        }
    }

    /// A second, read-only handle on the file [`Disk::data_map`] points into (the same open
    /// file reopened through `/proc/self/fd`, so a renamed or replaced path cannot change
    /// it), as a raw image; None when the image has no such file or it cannot be reopened.
    pub(crate) fn data_view(&self) -> Option<RawDisk> {
        let Backend::Locked { .. } = &*self.inner else {
            return None;
        };
        let disk = self.lock().ok()?;
        let fd = disk.data_fd()?;
        let path = std::path::PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
        let options = crate::OpenOptions {
            read_only: true,
            ..Default::default()
        };
        RawDisk::open(&path, &options).ok()
    }

    /// What the image supports (see [`Capabilities`]).
    pub fn capabilities(&self) -> Capabilities {
        match &*self.inner {
            Backend::Raw(r) => r.capabilities(),
            Backend::Locked { caps, .. } => *caps,
        }
    }

    /// Virtual size in bytes (never waits for another thread's request).
    pub fn size(&self) -> u64 {
        match &*self.inner {
            Backend::Raw(r) => r.size(),
            Backend::Locked { size, .. } => size.load(Ordering::Acquire),
        }
    }

    /// [`crate::ReadAt::read_at`].
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.read_vectored_at(&mut [IoSliceMut::new(buf)], offset)
    }

    /// [`crate::ReadAt::read_vectored_at`].
    pub fn read_vectored_at(&self, bufs: &mut [IoSliceMut<'_>], offset: u64) -> Result<()> {
        match &*self.inner {
            Backend::Raw(r) => r.read_vectored_at(bufs, offset),
            Backend::Locked { .. } => self.lock()?.read_vectored_at(bufs, offset),
        }
    }

    /// [`crate::WriteAt::write_at`].
    pub fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        self.write_vectored_at(&[IoSlice::new(buf)], offset)
    }

    /// [`crate::WriteAt::write_vectored_at`].
    pub fn write_vectored_at(&self, bufs: &[IoSlice<'_>], offset: u64) -> Result<()> {
        match &*self.inner {
            Backend::Raw(r) => r.write_vectored_at(bufs, offset),
            Backend::Locked { .. } => self.lock()?.write_vectored_at(bufs, offset),
        }
    }

    /// [`crate::WriteAt::flush`].
    pub fn flush(&self) -> Result<()> {
        match &*self.inner {
            Backend::Raw(r) => r.flush(),
            Backend::Locked { .. } => self.lock()?.flush(),
        }
    }

    /// [`crate::Discard::discard`].
    pub fn discard(&self, offset: u64, len: u64) -> Result<()> {
        match &*self.inner {
            Backend::Raw(r) => r.discard(offset, len),
            Backend::Locked { .. } => self.lock()?.discard(offset, len),
        }
    }

    /// [`crate::Discard::write_zeroes_unmap`].
    pub fn write_zeroes_unmap(&self, offset: u64, len: u64, unmap: bool) -> Result<()> {
        match &*self.inner {
            Backend::Raw(r) => r.write_zeroes_unmap(offset, len, unmap),
            Backend::Locked { .. } => self.lock()?.write_zeroes_unmap(offset, len, unmap),
        }
    }

    /// [`crate::Resize::resize`].
    pub fn resize(&self, new_size: u64) -> Result<()> {
        match &*self.inner {
            Backend::Raw(r) => r.resize(new_size),
            Backend::Locked { size, .. } => {
                let mut disk = self.lock()?;
                disk.resize(new_size)?;
                size.store(disk.size(), Ordering::Release);
                Ok(())
            }
        }
    }

    /// An asynchronous engine for one device queue: io_uring for raw images (the sync adapter
    /// if this host refuses io_uring), the sync adapter on a worker thread for qcow2 and vmdk.
    /// `depth` is the most requests the caller keeps in flight (more are queued, not refused).
    pub fn engine(&self, depth: u32) -> Result<Box<dyn Engine>> {
        aio::engine(self, depth)
    }

    /// As [`SharedDisk::engine`], but the synchronous adapter (qcow2, vmdk) runs each request
    /// inside `submit`, on the caller's thread: for a caller with a thread of its own that
    /// would otherwise only hand requests over and wait (virtio-blk's worker;
    /// docs/decisions/0010).
    pub fn engine_inline(&self, depth: u32) -> Result<Box<dyn Engine>> {
        aio::engine_with(self, depth, aio::SyncMode::Inline)
    }
}
