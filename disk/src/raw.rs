//! Raw images: a plain file (or block device) whose bytes are the virtual disk.
//!
//! Sparse-aware: [`RawDisk::allocation_map`] reports data and holes with `SEEK_DATA`/`SEEK_HOLE`,
//! and discard/write-zeroes punch holes with `fallocate`. With [`OpenOptions::direct`] the file
//! is opened `O_DIRECT` and every transfer goes through an aligned bounce buffer.

use std::fs::File;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::{FallocateFlags, SeekFrom};

use crate::{
    CacheMode, Discard, Disk, DiskSize, Error, ErrorKind, OpenOptions, ReadAt, Resize, Result,
    WriteAt,
};

/// Alignment used for `O_DIRECT` transfers: the largest logical block size in common use.
const DIRECT_ALIGN: u64 = 4096;

/// Largest chunk a single bounce-buffered transfer handles.
const DIRECT_CHUNK: u64 = 1 << 20;

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
    size: u64,
    read_only: bool,
    direct: bool,
    sync_enabled: bool,
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
        Ok(RawDisk {
            file,
            path: path.to_path_buf(),
            size,
            read_only: options.read_only,
            direct: options.direct,
            sync_enabled: options.cache.syncs(),
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

    /// Lists data and hole runs covering `[offset, offset + len)` (clipped to the disk size).
    ///
    /// File systems without `SEEK_DATA` report everything as data.
    pub fn allocation_map(&self, offset: u64, len: u64) -> Result<Vec<Extent>> {
        let end = offset.saturating_add(len).min(self.size);
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

    fn err_io(&self, e: std::io::Error, op: &'static str, offset: u64) -> Error {
        Error::io(e, "host I/O failed")
            .with_path(&self.path)
            .with_operation(op)
            .with_offset(offset)
    }

    fn check_range(&self, offset: u64, len: u64, op: &'static str) -> Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= self.size => Ok(()),
            _ => Err(Error::new(
                ErrorKind::OutOfBounds,
                format!(
                    "{len} bytes at {offset:#x} exceed the disk size {:#x}",
                    self.size
                ),
            )
            .with_path(&self.path)
            .with_operation(op)
            .with_offset(offset)),
        }
    }

    fn check_writable(&self, op: &'static str) -> Result<()> {
        if self.read_only {
            return Err(
                Error::new(ErrorKind::Unsupported, "image is open read-only")
                    .with_path(&self.path)
                    .with_operation(op),
            );
        }
        Ok(())
    }

    /// Reads an aligned span into a bounce buffer, zero-filling past the end of the file.
    fn read_aligned(&self, buf: &mut AlignedBuf, offset: u64) -> Result<()> {
        let slice = buf.as_mut_slice();
        let mut done = 0usize;
        while done < slice.len() {
            let n = self
                .file
                .read_at(&mut slice[done..], offset + done as u64)
                .map_err(|e| self.err_io(e, "read", offset))?;
            if n == 0 {
                slice[done..].fill(0);
                break;
            }
            done += n;
        }
        Ok(())
    }

    fn read_direct(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let mut done = 0u64;
        while done < buf.len() as u64 {
            let pos = offset + done;
            let start = align_down(pos);
            let want = (buf.len() as u64 - done).min(DIRECT_CHUNK);
            let end = align_up(pos + want);
            let mut bounce = AlignedBuf::new((end - start) as usize);
            self.read_aligned(&mut bounce, start)?;
            let skip = (pos - start) as usize;
            buf[done as usize..(done + want) as usize]
                .copy_from_slice(&bounce.as_slice()[skip..skip + want as usize]);
            done += want;
        }
        Ok(())
    }

    fn write_direct(&mut self, buf: &[u8], offset: u64) -> Result<()> {
        let mut done = 0u64;
        while done < buf.len() as u64 {
            let pos = offset + done;
            let start = align_down(pos);
            let want = (buf.len() as u64 - done).min(DIRECT_CHUNK);
            let end = align_up(pos + want);
            let mut bounce = AlignedBuf::new((end - start) as usize);
            if start != pos || end != pos + want {
                self.read_aligned(&mut bounce, start)?;
            }
            let skip = (pos - start) as usize;
            bounce.as_mut_slice()[skip..skip + want as usize]
                .copy_from_slice(&buf[done as usize..(done + want) as usize]);
            self.file
                .write_all_at(bounce.as_slice(), start)
                .map_err(|e| self.err_io(e, "write", start))?;
            done += want;
        }
        // An aligned tail write may have extended the file past the virtual size.
        if align_up(offset + buf.len() as u64) > self.size {
            self.file
                .set_len(self.size)
                .map_err(|e| self.err_io(e, "truncate", self.size))?;
        }
        Ok(())
    }

    fn write_zero_bytes(&mut self, offset: u64, len: u64) -> Result<()> {
        let chunk = vec![0u8; len.min(DIRECT_CHUNK) as usize];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(chunk.len() as u64) as usize;
            self.write_at(&chunk[..n], offset + done)?;
            done += n as u64;
        }
        Ok(())
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

fn align_down(v: u64) -> u64 {
    v & !(DIRECT_ALIGN - 1)
}

fn align_up(v: u64) -> u64 {
    v.div_ceil(DIRECT_ALIGN) * DIRECT_ALIGN
}

/// A heap buffer whose start is aligned for `O_DIRECT`, found by offsetting into a larger Vec.
struct AlignedBuf {
    storage: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    fn new(len: usize) -> AlignedBuf {
        let align = DIRECT_ALIGN as usize;
        let storage = vec![0u8; len + align];
        let addr = storage.as_ptr() as usize;
        let start = (align - addr % align) % align;
        AlignedBuf {
            storage,
            start,
            len,
        }
    }

    fn as_slice(&self) -> &[u8] {
        &self.storage[self.start..self.start + self.len]
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.storage[self.start..self.start + self.len]
    }
}

impl DiskSize for RawDisk {
    fn size(&self) -> u64 {
        self.size
    }
}

impl ReadAt for RawDisk {
    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.check_range(offset, buf.len() as u64, "read")?;
        if self.direct {
            return self.read_direct(buf, offset);
        }
        self.file
            .read_exact_at(buf, offset)
            .map_err(|e| self.err_io(e, "read", offset))
    }
}

impl WriteAt for RawDisk {
    fn write_at(&mut self, buf: &[u8], offset: u64) -> Result<()> {
        self.check_writable("write")?;
        self.check_range(offset, buf.len() as u64, "write")?;
        if self.direct {
            return self.write_direct(buf, offset);
        }
        self.file
            .write_all_at(buf, offset)
            .map_err(|e| self.err_io(e, "write", offset))
    }

    fn flush(&mut self) -> Result<()> {
        if self.read_only || !self.sync_enabled {
            return Ok(());
        }
        self.file
            .sync_data()
            .map_err(|e| self.err_io(e, "flush", 0))
    }
}

impl Discard for RawDisk {
    fn discard(&mut self, offset: u64, len: u64) -> Result<()> {
        self.check_writable("discard")?;
        self.check_range(offset, len, "discard")?;
        let flags = FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE;
        match rustix::fs::fallocate(&self.file, flags, offset, len) {
            // Discard is advisory: a file system that cannot punch holes keeps the data.
            Ok(()) | Err(rustix::io::Errno::OPNOTSUPP) => Ok(()),
            Err(e) => Err(self.err_io(e.into(), "discard", offset)),
        }
    }

    fn write_zeroes(&mut self, offset: u64, len: u64) -> Result<()> {
        self.check_writable("write_zeroes")?;
        self.check_range(offset, len, "write_zeroes")?;
        if len == 0 {
            return Ok(());
        }
        let punch = FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE;
        match rustix::fs::fallocate(&self.file, punch, offset, len) {
            Ok(()) => return Ok(()),
            Err(rustix::io::Errno::OPNOTSUPP) => {}
            Err(e) => return Err(self.err_io(e.into(), "write_zeroes", offset)),
        }
        let zero = FallocateFlags::ZERO_RANGE | FallocateFlags::KEEP_SIZE;
        match rustix::fs::fallocate(&self.file, zero, offset, len) {
            Ok(()) => Ok(()),
            Err(rustix::io::Errno::OPNOTSUPP) => self.write_zero_bytes(offset, len),
            Err(e) => Err(self.err_io(e.into(), "write_zeroes", offset)),
        }
    }
}

impl Resize for RawDisk {
    fn resize(&mut self, new_size: u64) -> Result<()> {
        self.check_writable("resize")?;
        self.file
            .set_len(new_size)
            .map_err(|e| self.err_io(e, "resize", new_size))?;
        self.size = new_size;
        Ok(())
    }
}

impl Disk for RawDisk {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_aligned_buf_any_length_start_is_aligned() {
        let mut b = AlignedBuf::new(3 * 4096);
        let addr = b.as_mut_slice().as_ptr() as usize;
        assert_eq!(addr % DIRECT_ALIGN as usize, 0);
        assert_eq!(b.as_slice().len(), 3 * 4096);
    }

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
