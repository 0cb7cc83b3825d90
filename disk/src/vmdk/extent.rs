//! One extent of a vmdk: a flat file region, a sparse extent, or zeroes.

use std::fs::File;
use std::path::{Path, PathBuf};

use super::descriptor::{Access, ExtentLine, ExtentType};
use super::fileio::{file_len, sync, write_at};
use super::header::SECTOR;
use super::sparse::SparseExtent;
use super::{open_file, resolve_extent_path};
use crate::iov::{fill_zero, preadv_exact, pwritev_all};
use crate::{Error, ErrorKind, OpenOptions, Result};

/// Where an extent's data lives.
#[derive(Debug)]
pub enum ExtentData {
    /// A region of a plain file starting at byte `base`.
    Flat {
        /// The file.
        file: File,
        /// Byte offset of the extent's first sector in the file.
        base: u64,
    },
    /// No data: reads as zeroes.
    Zero,
    /// A hosted sparse extent.
    Sparse(Box<SparseExtent>),
}

/// One extent placed in the virtual disk.
#[derive(Debug)]
pub struct Extent {
    /// First virtual byte.
    pub start: u64,
    /// Length in bytes.
    pub len: u64,
    /// Access mode from the descriptor.
    pub access: Access,
    /// The extent file (or the descriptor, for ZERO extents).
    pub path: PathBuf,
    /// The data.
    pub data: ExtentData,
}

/// Opens the extent described by `line`, placed at virtual byte `start`.
pub fn open(dir: &Path, line: &ExtentLine, start: u64, options: &OpenOptions) -> Result<Extent> {
    let len = line.sectors * SECTOR;
    let writable = !options.read_only && line.access == Access::ReadWrite;
    let Some(name) = &line.file else {
        return Ok(Extent {
            start,
            len,
            access: line.access,
            path: dir.to_path_buf(),
            data: ExtentData::Zero,
        });
    };
    let path = resolve_extent_path(dir, name, options.allow_outside_extents)?;
    let meta = std::fs::metadata(&path)
        .map_err(|e| Error::io(e, "reading extent metadata").with_path(&path))?;
    if !meta.is_file() {
        return Err(Error::new(
            ErrorKind::Unsupported,
            "extent is not a regular file (devices and directories are refused)",
        )
        .with_path(&path));
    }
    let file = open_file(&path, writable)?;
    let data = match line.kind {
        ExtentType::Flat | ExtentType::Vmfs => {
            let base = line.offset.checked_mul(SECTOR);
            let end = base.and_then(|b| b.checked_add(len));
            let have = file_len(&file)?;
            match (base, end) {
                (Some(base), Some(end)) if end <= have => ExtentData::Flat { file, base },
                _ => {
                    return Err(Error::new(
                        ErrorKind::Corrupt,
                        format!(
                        "flat extent needs {} sectors at sector {} but the file has {have} bytes",
                        line.sectors, line.offset
                    ),
                    )
                    .with_path(&path))
                }
            }
        }
        ExtentType::Sparse => {
            let (sparse, _) = SparseExtent::open(file, writable).map_err(|e| e.with_path(&path))?;
            if sparse.capacity() < len {
                return Err(Error::new(
                    ErrorKind::Corrupt,
                    format!(
                        "sparse extent holds {} bytes, the descriptor says {len}",
                        sparse.capacity()
                    ),
                )
                .with_path(&path));
            }
            ExtentData::Sparse(Box::new(sparse))
        }
        ExtentType::Zero => ExtentData::Zero,
    };
    Ok(Extent {
        start,
        len,
        access: line.access,
        path,
        data,
    })
}

impl Extent {
    fn check_access(&self, write: bool) -> Result<()> {
        match (self.access, write) {
            (Access::NoAccess, _) => Err(Error::new(
                ErrorKind::Unsupported,
                "extent is marked NOACCESS",
            )),
            (Access::ReadOnly, true) => Err(Error::new(
                ErrorKind::Unsupported,
                "extent is marked RDONLY",
            )),
            _ => Ok(()),
        }
    }

    /// Whether writes of any data can go to this extent in place.
    pub fn writable_in_place(&self) -> bool {
        self.access == Access::ReadWrite
            && match &self.data {
                ExtentData::Flat { .. } => true,
                ExtentData::Zero => false,
                ExtentData::Sparse(s) => !s.header().compressed(),
            }
    }

    /// Reads into `bufs` at offset `at` inside the extent.
    pub fn read_segs(&mut self, mut bufs: Vec<&mut [u8]>, at: u64) -> Result<()> {
        self.check_access(false)?;
        match &mut self.data {
            ExtentData::Flat { file, base } => preadv_exact(file, &mut bufs, *base + at, false)
                .map_err(|e| Error::io(e, "reading flat extent").with_offset(*base + at)),
            ExtentData::Zero => {
                fill_zero(&mut bufs);
                Ok(())
            }
            ExtentData::Sparse(s) => s.read_segs(bufs, at),
        }
    }

    /// Writes `bufs` at offset `at` inside the extent.
    pub fn write_segs(&mut self, bufs: &[&[u8]], at: u64) -> Result<()> {
        self.check_access(true)?;
        match &mut self.data {
            ExtentData::Flat { file, base } => pwritev_all(file, bufs, *base + at)
                .map_err(|e| Error::io(e, "writing flat extent").with_offset(*base + at)),
            ExtentData::Zero if bufs.iter().all(|b| b.iter().all(|&x| x == 0)) => Ok(()),
            ExtentData::Zero => Err(Error::new(
                ErrorKind::Unsupported,
                "ZERO extents cannot hold data",
            )),
            ExtentData::Sparse(s) => s.write_segs(bufs, at),
        }
    }

    /// Makes `len` bytes at `at` read as zeroes.
    pub fn write_zeroes(&mut self, at: u64, len: u64) -> Result<()> {
        self.check_access(true)?;
        match &mut self.data {
            ExtentData::Flat { file, base } => {
                let zeroes = vec![0u8; 1 << 20];
                let mut done = 0u64;
                while done < len {
                    let n = (len - done).min(zeroes.len() as u64);
                    write_at(
                        file,
                        &zeroes[..n as usize],
                        *base + at + done,
                        "flat extent",
                    )?;
                    done += n;
                }
                Ok(())
            }
            ExtentData::Zero => Ok(()),
            ExtentData::Sparse(s) => s.write_zeroes(at, len),
        }
    }

    /// The (device, inode) of a sparse extent's file.
    pub fn sparse_file_id(&self) -> Result<Option<(u64, u64)>> {
        use std::os::unix::fs::MetadataExt;
        match &self.data {
            ExtentData::Sparse(s) => {
                let m = s
                    .file()
                    .metadata()
                    .map_err(|e| Error::io(e, "reading extent metadata"))?;
                Ok(Some((m.dev(), m.ino())))
            }
            _ => Ok(None),
        }
    }

    /// Makes the extent's writes durable.
    pub fn sync(&self) -> Result<()> {
        match &self.data {
            ExtentData::Flat { file, .. } => sync(file),
            ExtentData::Zero => Ok(()),
            ExtentData::Sparse(s) => sync(s.file()),
        }
    }
}
