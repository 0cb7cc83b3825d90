//! Raw images: a plain file (or block device) whose bytes are the virtual disk.
//!
//! Sparse-aware: [`RawDisk::allocation_map`] reports data and holes with `SEEK_DATA`/`SEEK_HOLE`,
//! and discard/write-zeroes punch holes with `fallocate`. With [`OpenOptions::direct`] the file
//! is opened `O_DIRECT`; requests that meet the host's alignment rules go straight to the
//! caller's buffers, others through an aligned bounce buffer (`direct`).
//!
//! Every I/O method takes `&self` (positioned reads and writes need no lock), so one `RawDisk`
//! can serve several threads through an `Arc`; [`RawDisk::try_clone`] gives a handle with its
//! own file descriptor instead.

mod direct;

use std::fs::File;
use std::io::{IoSlice, IoSliceMut};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::fs::{FallocateFlags, SeekFrom};

pub(crate) use direct::{AlignedBuf, DirectAlign};

use crate::iov::{preadv_exact, pwritev_all, total_len, total_len_mut, Segs, SegsMut};
use crate::{
    CacheMode, Capabilities, Discard, Disk, DiskSize, Error, ErrorKind, Format, OpenOptions,
    QueryCapabilities, ReadAt, Resize, Result, WriteAt,
};

/// One run of a raw file: either backed by data or a hole that reads as zeroes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    /// Start of the run, in bytes.
    pub offset: u64,
    /// Length of the run, in bytes.
    pub len: u64,
    /// Whether the host file has data there (false: a hole that reads as zeroes).
    pub allocated: bool,
}

/// An open raw image.
#[derive(Debug)]
pub struct RawDisk {
    file: File,
    path: PathBuf,
    size: AtomicU64,
    read_only: bool,
    /// The host's O_DIRECT alignment when the file is open with O_DIRECT.
    direct: Option<DirectAlign>,
    sync_enabled: bool,
    block_device: bool,
    /// Whether `fallocate(PUNCH_HOLE)` works here (probed at open).
    punch_hole: bool,
    physical_block: u32,
}

impl RawDisk {
    /// Opens `path` as a raw image.
    pub fn open(path: &Path, options: &OpenOptions) -> Result<RawDisk> {
        let mut oo = std::fs::OpenOptions::new();
        oo.read(true).write(!options.read_only);
        if options.direct {
            oo.custom_flags(libc::O_DIRECT);
        }
        let file = oo.open(path).map_err(|e| {
            let kind = if options.direct && e.raw_os_error() == Some(libc::EINVAL) {
                ErrorKind::Unsupported
            } else {
                ErrorKind::Io
            };
            let mut err = Error::io(e, "cannot open raw image");
            if kind == ErrorKind::Unsupported {
                err = Error::new(kind, "the host file system does not support O_DIRECT");
            }
            err.with_path(path).with_operation("open")
        })?;
        let size = rustix::fs::seek(&file, SeekFrom::End(0))
            .map_err(|e| Error::io(e.into(), "cannot determine size").with_path(path))?;
        let meta = file
            .metadata()
            .map_err(|e| Error::io(e, "cannot stat image").with_path(path))?;
        let block_device = meta.file_type().is_block_device();
        let punch_hole = !options.read_only && (block_device || probe_punch_hole(&file, size));
        Ok(RawDisk {
            direct: options.direct.then(|| DirectAlign::probe(&file)),
            physical_block: physical_block(&file, block_device),
            file,
            path: path.to_path_buf(),
            size: AtomicU64::new(size),
            read_only: options.read_only,
            sync_enabled: options.cache.syncs(),
            block_device,
            punch_hole,
        })
    }

    /// Creates (or truncates) a raw image of `size` bytes; the file is fully sparse.
    pub fn create(path: &Path, size: u64) -> Result<()> {
        Self::create_cached(path, size, CacheMode::Writeback)
    }

    /// [`RawDisk::create`], syncing only if `cache` does.
    pub fn create_cached(path: &Path, size: u64, cache: CacheMode) -> Result<()> {
        let file = File::create(path)
            .map_err(|e| Error::io(e, "cannot create raw image").with_path(path))?;
        file.set_len(size)
            .map_err(|e| Error::io(e, "cannot set size").with_path(path))?;
        if !cache.syncs() {
            return Ok(());
        }
        file.sync_all()
            .map_err(|e| Error::io(e, "cannot sync").with_path(path))
    }

    /// A second handle on the same image with its own file descriptor (for a per-queue
    /// handle). The copy's size is a snapshot: a resize through one handle is not seen by the
    /// other.
    pub fn try_clone(&self) -> Result<RawDisk> {
        let file = self
            .file
            .try_clone()
            .map_err(|e| self.err_io(e, "clone", 0))?;
        Ok(RawDisk {
            file,
            path: self.path.clone(),
            size: AtomicU64::new(self.size()),
            read_only: self.read_only,
            direct: self.direct,
            sync_enabled: self.sync_enabled,
            block_device: self.block_device,
            punch_hole: self.punch_hole,
            physical_block: self.physical_block,
        })
    }

    /// The host file (for engines that submit their own I/O on it).
    pub(crate) fn file(&self) -> &File {
        &self.file
    }

    /// The image path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The host's O_DIRECT alignment, if the file is open with O_DIRECT.
    pub(crate) fn direct_align(&self) -> Option<DirectAlign> {
        self.direct
    }

    /// Whether flushes call fdatasync (false when read-only or under `CacheMode::Unsafe`).
    pub(crate) fn flush_syncs(&self) -> bool {
        !self.read_only && self.sync_enabled
    }

    /// Virtual size in bytes.
    pub fn size(&self) -> u64 {
        self.size.load(Ordering::Acquire)
    }

    /// Lists data and hole runs covering `[offset, offset + len)` (clipped to the disk size).
    ///
    /// File systems without `SEEK_DATA` report everything as data.
    pub fn allocation_map(&self, offset: u64, len: u64) -> Result<Vec<Extent>> {
        let end = offset.saturating_add(len).min(self.size());
        let mut out: Vec<Extent> = Vec::new();
        let mut pos = offset;
        while pos < end {
            let data = match rustix::fs::seek(&self.file, SeekFrom::Data(pos)) {
                Ok(d) => d.min(end),
                Err(rustix::io::Errno::NXIO) => end,
                Err(rustix::io::Errno::INVAL) | Err(rustix::io::Errno::OPNOTSUPP) => {
                    push_extent(&mut out, pos, end - pos, true);
                    break;
                }
                Err(e) => return Err(self.err_io(e.into(), "SEEK_DATA", pos)),
            };
            if data > pos {
                push_extent(&mut out, pos, data - pos, false);
            }
            if data >= end {
                break;
            }
            let hole = match rustix::fs::seek(&self.file, SeekFrom::Hole(data)) {
                Ok(h) => h.min(end),
                Err(rustix::io::Errno::NXIO) => end,
                Err(e) => return Err(self.err_io(e.into(), "SEEK_HOLE", data)),
            };
            push_extent(&mut out, data, hole.max(data + 1).min(end) - data, true);
            pos = hole.max(data + 1);
        }
        Ok(out)
    }

    pub(crate) fn err_io(&self, e: std::io::Error, op: &'static str, offset: u64) -> Error {
        Error::io(e, "host I/O failed")
            .with_path(&self.path)
            .with_operation(op)
            .with_offset(offset)
    }

    /// Refuses a request that does not lie inside the disk (`OutOfBounds`).
    pub(crate) fn check_range(&self, offset: u64, len: u64, op: &'static str) -> Result<()> {
        let size = self.size();
        match offset.checked_add(len) {
            Some(end) if end <= size => Ok(()),
            _ => Err(Error::new(
                ErrorKind::OutOfBounds,
                format!("{len} bytes at {offset:#x} exceed the disk size {size:#x}"),
            )
            .with_path(&self.path)
            .with_operation(op)
            .with_offset(offset)),
        }
    }

    /// Refuses writes to a read-only image (`Unsupported`).
    pub(crate) fn check_writable(&self, op: &'static str) -> Result<()> {
        if self.read_only {
            return Err(
                Error::new(ErrorKind::Unsupported, "image is open read-only")
                    .with_path(&self.path)
                    .with_operation(op),
            );
        }
        Ok(())
    }

    /// Reads exactly `buf.len()` bytes at `offset`.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.read_vectored_at(&mut [IoSliceMut::new(buf)], offset)
    }

    /// Reads the buffers' total length at `offset` into them in order (one `preadv`, or
    /// bounce buffers for O_DIRECT requests that break the alignment rules).
    pub fn read_vectored_at(&self, bufs: &mut [IoSliceMut<'_>], offset: u64) -> Result<()> {
        let len = total_len_mut(bufs).unwrap_or(u64::MAX);
        self.check_range(offset, len, "read")?;
        let aligned = self.direct.is_none_or(|a| {
            let shape = bufs.iter().map(|b| (b.len(), b.as_ptr() as usize));
            a.fits(shape.filter(|&(l, _)| l > 0), offset)
        });
        let mut segs = SegsMut::new(bufs);
        if !aligned {
            return self.read_bounced(segs, offset);
        }
        let mut pieces = segs.take(len as usize);
        preadv_exact(&self.file, &mut pieces, offset, false)
            .map_err(|e| self.err_io(e, "read", offset))
    }

    /// Writes all of `buf` at `offset`.
    pub fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        self.write_vectored_at(&[IoSlice::new(buf)], offset)
    }

    /// Writes the buffers in order at `offset` (one `pwritev`, or bounce buffers for O_DIRECT
    /// requests that break the alignment rules).
    pub fn write_vectored_at(&self, bufs: &[IoSlice<'_>], offset: u64) -> Result<()> {
        self.check_writable("write")?;
        let len = total_len(bufs).unwrap_or(u64::MAX);
        self.check_range(offset, len, "write")?;
        let aligned = self.direct.is_none_or(|a| {
            let shape = bufs.iter().map(|b| (b.len(), b.as_ptr() as usize));
            a.fits(shape.filter(|&(l, _)| l > 0), offset)
        });
        let mut segs = Segs::new(bufs);
        if !aligned {
            return self.write_bounced(segs, offset);
        }
        let pieces = segs.take(len as usize);
        pwritev_all(&self.file, &pieces, offset).map_err(|e| self.err_io(e, "write", offset))
    }

    /// Makes every completed write durable (fdatasync; nothing when read-only or under
    /// `CacheMode::Unsafe`).
    pub fn flush(&self) -> Result<()> {
        if !self.flush_syncs() {
            return Ok(());
        }
        self.file
            .sync_data()
            .map_err(|e| self.err_io(e, "flush", 0))
    }

    /// Punches a hole; a file system that cannot keeps the data (discard is advisory).
    pub fn discard(&self, offset: u64, len: u64) -> Result<()> {
        self.check_writable("discard")?;
        self.check_range(offset, len, "discard")?;
        if len == 0 {
            return Ok(());
        }
        let flags = FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE;
        match rustix::fs::fallocate(&self.file, flags, offset, len) {
            Ok(()) | Err(rustix::io::Errno::OPNOTSUPP) => Ok(()),
            Err(e) => Err(self.err_io(e.into(), "discard", offset)),
        }
    }

    /// Makes a range read as zeroes, deallocating it where the file system can.
    pub fn write_zeroes(&self, offset: u64, len: u64) -> Result<()> {
        self.write_zeroes_unmap(offset, len, true)
    }

    /// Makes a range read as zeroes: with `unmap`, by punching a hole where the file system
    /// can; without, by `FALLOC_FL_ZERO_RANGE` (the range stays allocated); either way falling
    /// back to writing zeroes.
    pub fn write_zeroes_unmap(&self, offset: u64, len: u64, unmap: bool) -> Result<()> {
        self.check_writable("write_zeroes")?;
        self.check_range(offset, len, "write_zeroes")?;
        if len == 0 {
            return Ok(());
        }
        if unmap {
            let punch = FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE;
            match rustix::fs::fallocate(&self.file, punch, offset, len) {
                Ok(()) => return Ok(()),
                Err(rustix::io::Errno::OPNOTSUPP) => {}
                Err(e) => return Err(self.err_io(e.into(), "write_zeroes", offset)),
            }
        }
        let zero = FallocateFlags::ZERO_RANGE | FallocateFlags::KEEP_SIZE;
        match rustix::fs::fallocate(&self.file, zero, offset, len) {
            Ok(()) => Ok(()),
            Err(rustix::io::Errno::OPNOTSUPP) | Err(rustix::io::Errno::INVAL) => {
                self.write_zero_bytes(offset, len)
            }
            Err(e) => Err(self.err_io(e.into(), "write_zeroes", offset)),
        }
    }

    /// Grows or shrinks the file to `new_size` bytes.
    pub fn resize(&self, new_size: u64) -> Result<()> {
        self.check_writable("resize")?;
        self.file
            .set_len(new_size)
            .map_err(|e| self.err_io(e, "resize", new_size))?;
        self.size.store(new_size, Ordering::Release);
        Ok(())
    }

    /// What this image supports.
    pub fn capabilities(&self) -> Capabilities {
        let writable = !self.read_only;
        let logical = self.direct.map_or(512, |a| a.offset.max(512));
        let physical = self.physical_block.max(logical);
        let discard = writable && self.punch_hole;
        Capabilities {
            format: Format::Raw,
            read_only: self.read_only,
            flush: writable,
            discard,
            write_zeroes: writable,
            write_zeroes_may_unmap: discard,
            resize: writable && !self.block_device,
            logical_block_size: logical,
            physical_block_size: physical,
            discard_alignment: if discard { physical } else { 0 },
            direct: self.direct.is_some(),
            buffer_alignment: self.direct.map_or(1, |a| a.mem),
        }
    }

    fn write_zero_bytes(&self, offset: u64, len: u64) -> Result<()> {
        let chunk_len = len.min(1 << 20) as usize;
        let align = self.direct.map_or(1, |a| a.bounce() as usize);
        let chunk = AlignedBuf::new(chunk_len, align);
        let mut done = 0;
        while done < len {
            let n = (len - done).min(chunk_len as u64) as usize;
            self.write_at(&chunk.as_slice()[..n], offset + done)?;
            done += n as u64;
        }
        Ok(())
    }
}

/// Whether punching a hole works on this file system: a punch past the end of the file
/// changes no data (with `KEEP_SIZE` the size stays), so it is a harmless probe.
fn probe_punch_hole(file: &File, size: u64) -> bool {
    let at = size.div_ceil(4096) * 4096 + 4096;
    let flags = FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE;
    rustix::fs::fallocate(file, flags, at, 4096).is_ok()
}

/// The host's physical block size: `BLKPBSZGET` for block devices, else the file system's
/// preferred I/O size when it is a sane power of two, else 4096.
fn physical_block(file: &File, block_device: bool) -> u32 {
    let sane = |v: u32| v.is_power_of_two() && (512..=1 << 16).contains(&v);
    if block_device {
        if let Ok(v) = rustix::fs::ioctl_blkpbszget(file) {
            if sane(v) {
                return v;
            }
        }
    }
    use std::os::unix::fs::MetadataExt;
    match file.metadata().map(|m| m.blksize()) {
        Ok(v) if u32::try_from(v).is_ok_and(sane) => v as u32,
        _ => direct::DEFAULT_ALIGN,
    }
}

fn push_extent(out: &mut Vec<Extent>, offset: u64, len: u64, allocated: bool) {
    if let Some(last) = out.last_mut() {
        if last.allocated == allocated && last.offset + last.len == offset {
            last.len += len;
            return;
        }
    }
    out.push(Extent {
        offset,
        len,
        allocated,
    });
}

impl DiskSize for RawDisk {
    fn size(&self) -> u64 {
        RawDisk::size(self)
    }
}

impl ReadAt for RawDisk {
    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> Result<()> {
        RawDisk::read_at(self, buf, offset)
    }

    fn read_vectored_at(&mut self, bufs: &mut [IoSliceMut<'_>], offset: u64) -> Result<()> {
        RawDisk::read_vectored_at(self, bufs, offset)
    }
}

impl WriteAt for RawDisk {
    fn write_at(&mut self, buf: &[u8], offset: u64) -> Result<()> {
        RawDisk::write_at(self, buf, offset)
    }

    fn flush(&mut self) -> Result<()> {
        RawDisk::flush(self)
    }

    fn write_vectored_at(&mut self, bufs: &[IoSlice<'_>], offset: u64) -> Result<()> {
        RawDisk::write_vectored_at(self, bufs, offset)
    }
}

impl Discard for RawDisk {
    fn discard(&mut self, offset: u64, len: u64) -> Result<()> {
        RawDisk::discard(self, offset, len)
    }

    fn write_zeroes(&mut self, offset: u64, len: u64) -> Result<()> {
        RawDisk::write_zeroes_unmap(self, offset, len, true)
    }

    fn write_zeroes_unmap(&mut self, offset: u64, len: u64, unmap: bool) -> Result<()> {
        RawDisk::write_zeroes_unmap(self, offset, len, unmap)
    }
}

impl Resize for RawDisk {
    fn resize(&mut self, new_size: u64) -> Result<()> {
        RawDisk::resize(self, new_size)
    }
}

impl QueryCapabilities for RawDisk {
    fn capabilities(&self) -> Capabilities {
        RawDisk::capabilities(self)
    }
}

impl Disk for RawDisk {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_push_extent_adjacent_same_kind_merges() {
        let mut v = Vec::new();
        push_extent(&mut v, 0, 10, true);
        push_extent(&mut v, 10, 5, true);
        push_extent(&mut v, 15, 5, false);
        assert_eq!(v.len(), 2);
        assert_eq!(v[0].len, 15);
    }
}
