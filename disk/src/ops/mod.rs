//! Whole-image operations behind `strata img`: convert, compare, map and bench.
//!
//! Everything here returns data (statistics, maps, mismatch offsets) and reports progress
//! through callbacks; nothing prints. The image format is always given by the caller.
//!
//! [`Image`] keeps the concrete image type so that operations can ask where data lives
//! ([`Image::status`]) and skip ranges that read as zeroes without reading them.

mod bench;
mod compare;
mod convert;
mod map;
mod stream;

pub use bench::{bench, BenchOptions, BenchReport};
pub use compare::{compare, CompareOptions, Comparison};
pub use convert::{convert, ConvertOptions, ConvertStats};
pub use map::{frag_info, map, FragInfo, MapEntry};

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::qcow2::Mapping;
use crate::raw::RawDisk;
use crate::vmdk::{self, Vmdk};
use crate::{Disk, DiskSize, Error, Format, OpenOptions, Qcow2, ReadAt, Result};

/// What a range of a virtual disk holds, as far as the metadata tells.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Reads as zeroes without any data being stored (a hole, a zero cluster).
    Zero,
    /// May hold data: must be read.
    Data,
}

/// An open image that remembers its concrete type.
#[derive(Debug)]
pub enum Image {
    /// A raw image.
    Raw(RawDisk),
    /// A qcow2 image; `has_backing` tells whether unallocated clusters read from a backing file.
    Qcow2 {
        /// The image.
        image: Box<Qcow2>,
        /// Whether the image has a backing file.
        has_backing: bool,
        /// The image file opened again read-only, for coalesced reads of contiguous
        /// clusters (None for images opened for writing).
        host: Option<File>,
    },
    /// A vmdk image.
    Vmdk(Box<Vmdk>),
}

impl Image {
    /// Opens `path` as `format`.
    pub fn open(path: &Path, format: Format, options: &OpenOptions) -> Result<Image> {
        Ok(match format {
            Format::Raw => Image::Raw(RawDisk::open(path, options)?),
            Format::Qcow2 => {
                let has_backing = crate::info(path, Format::Qcow2)?.backing_file.is_some();
                let image = Box::new(Qcow2::open(path, options)?);
                let host = if options.read_only {
                    let f = File::open(path)
                        .map_err(|e| Error::io(e, "cannot open image").with_path(path))?;
                    Some(f)
                } else {
                    None
                };
                Image::Qcow2 {
                    image,
                    has_backing,
                    host,
                }
            }
            Format::Vmdk => Image::Vmdk(Box::new(vmdk::open(path, options)?)),
        })
    }

    /// The image as a generic disk.
    pub fn disk(&mut self) -> &mut dyn Disk {
        match self {
            Image::Raw(d) => d,
            Image::Qcow2 { image, .. } => image.as_mut(),
            Image::Vmdk(d) => d.as_mut(),
        }
    }

    /// Virtual size in bytes.
    pub fn size(&self) -> u64 {
        match self {
            Image::Raw(d) => d.size(),
            Image::Qcow2 { image, .. } => image.size(),
            Image::Vmdk(d) => d.size(),
        }
    }

    /// Runs covering `[offset, offset + len)` (clipped to the disk), each with its status.
    /// Adjacent runs of the same status are merged.
    pub fn status(&mut self, offset: u64, len: u64) -> Result<Vec<(u64, u64, Status)>> {
        let end = offset.saturating_add(len).min(self.size());
        let mut out: Vec<(u64, u64, Status)> = Vec::new();
        match self {
            Image::Raw(d) => {
                for e in d.allocation_map(offset, end.saturating_sub(offset))? {
                    let s = if e.allocated {
                        Status::Data
                    } else {
                        Status::Zero
                    };
                    push_run(&mut out, e.offset, e.len, s);
                }
            }
            Image::Qcow2 {
                image, has_backing, ..
            } => {
                let cs = image.cluster_size();
                let mut pos = offset;
                while pos < end {
                    let next = ((pos / cs) + 1) * cs;
                    let n = next.min(end) - pos;
                    let s = match image.lookup(pos / cs)? {
                        Mapping::Zero { .. } => Status::Zero,
                        Mapping::Unallocated if !*has_backing => Status::Zero,
                        _ => Status::Data,
                    };
                    push_run(&mut out, pos, n, s);
                    pos += n;
                }
            }
            Image::Vmdk(_) => {
                if end > offset {
                    push_run(&mut out, offset, end - offset, Status::Data);
                }
            }
        }
        Ok(out)
    }
}

impl Image {
    /// Reads `buf.len()` bytes at `offset` like [`crate::ReadAt::read_at`]; for read-only
    /// qcow2 images, runs of clusters stored next to each other in the file are read with
    /// one system call instead of one per cluster.
    pub fn read(&mut self, buf: &mut [u8], offset: u64) -> Result<()> {
        let Image::Qcow2 {
            image,
            host: Some(file),
            ..
        } = self
        else {
            return self.disk().read_at(buf, offset);
        };
        if offset
            .checked_add(buf.len() as u64)
            .is_none_or(|e| e > image.size())
        {
            return image.read_at(buf, offset);
        }
        let cs = image.cluster_size();
        // Pending run: (position in buf, host offset, length).
        let mut run: Option<(usize, u64, usize)> = None;
        let mut pos = 0usize;
        while pos < buf.len() {
            let guest = offset + pos as u64;
            let n = ((cs - guest % cs) as usize).min(buf.len() - pos);
            match image.lookup(guest / cs)? {
                Mapping::Normal { host: h, .. } => {
                    let h = h + guest % cs;
                    run = match run {
                        Some((p, rh, len)) if rh + len as u64 == h => Some((p, rh, len + n)),
                        other => {
                            if let Some((p, rh, len)) = other {
                                read_host(file, &mut buf[p..p + len], rh)?;
                            }
                            Some((pos, h, n))
                        }
                    };
                }
                _ => {
                    if let Some((p, rh, len)) = run.take() {
                        read_host(file, &mut buf[p..p + len], rh)?;
                    }
                    image.read_at(&mut buf[pos..pos + n], guest)?;
                }
            }
            pos += n;
        }
        if let Some((p, rh, len)) = run {
            read_host(file, &mut buf[p..p + len], rh)?;
        }
        Ok(())
    }
}

/// Reads host bytes, zero-filling past the end of the file (as the qcow2 reader does).
fn read_host(file: &File, buf: &mut [u8], offset: u64) -> Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let n = file
            .read_at(&mut buf[done..], offset + done as u64)
            .map_err(|e| Error::io(e, "host I/O failed").with_offset(offset + done as u64))?;
        if n == 0 {
            buf[done..].fill(0);
            break;
        }
        done += n;
    }
    Ok(())
}

/// Appends a run, merging it with the previous one when contiguous and of the same kind.
fn push_run(out: &mut Vec<(u64, u64, Status)>, offset: u64, len: u64, s: Status) {
    if len == 0 {
        return;
    }
    if let Some(last) = out.last_mut() {
        if last.2 == s && last.0 + last.1 == offset {
            last.1 += len;
            return;
        }
    }
    out.push((offset, len, s));
}

/// Whether every byte of `buf` is zero (64 bytes at a time, which vectorises).
pub fn is_zero(buf: &[u8]) -> bool {
    let mut chunks = buf.chunks_exact(64);
    for c in &mut chunks {
        if c.iter().fold(0u8, |acc, &b| acc | b) != 0 {
            return false;
        }
    }
    chunks.remainder().iter().all(|&b| b == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_is_zero_detects_single_nonzero_byte_anywhere() {
        let mut buf = vec![0u8; 4096 + 13];
        assert!(is_zero(&buf));
        for at in [0, 63, 64, 4095, 4096 + 12] {
            buf[at] = 1;
            assert!(!is_zero(&buf), "byte {at}");
            buf[at] = 0;
        }
        assert!(is_zero(&[]));
    }

    #[test]
    fn test_push_run_merges_contiguous_same_status_only() {
        let mut runs = Vec::new();
        push_run(&mut runs, 0, 10, Status::Zero);
        push_run(&mut runs, 10, 5, Status::Zero);
        push_run(&mut runs, 15, 5, Status::Data);
        push_run(&mut runs, 30, 5, Status::Data);
        push_run(&mut runs, 35, 0, Status::Zero);
        assert_eq!(
            runs,
            vec![
                (0, 15, Status::Zero),
                (15, 5, Status::Data),
                (30, 5, Status::Data)
            ]
        );
    }
}
