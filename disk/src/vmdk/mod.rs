//! VMware virtual disks (vmdk).
//!
//! Reads monolithicSparse, streamOptimized, monolithicFlat, twoGbMaxExtentSparse,
//! twoGbMaxExtentFlat and vmfs (flat) images, given either the descriptor file or a sparse file
//! with an embedded descriptor. Writes plain sparse and flat extents in place. Creates
//! monolithicSparse images and streamOptimized images; the latter are written append-only
//! (see [`stream`]). Parent/snapshot chains (a `parentCID` other than `ffffffff`) are refused
//! with `Unsupported`.
//!
//! Extent file names are resolved only inside the descriptor's own directory (no absolute
//! paths, no `..`, no symlink leading out) unless [`OpenOptions::allow_outside_extents`].

pub(crate) mod create;
pub mod descriptor;
mod extent;
mod fileio;
pub mod header;
mod sparse;
pub mod stream;

use std::fs::File;
use std::io::{IoSlice, IoSliceMut};
use std::path::{Component, Path, PathBuf};

pub use create::{create, Subformat, VmdkCreateOptions};
pub use descriptor::{Access, Descriptor, ExtentLine, ExtentType, Geometry};

use self::extent::{Extent, ExtentData};
use self::fileio::{file_len, read_at};
use self::header::{COWD_MAGIC, MAGIC, MAX_CAPACITY_SECTORS, SECTOR};
use self::sparse::SparseExtent;
use self::stream::StreamWriter;
use crate::iov::{gather, total_len, total_len_mut, Segs, SegsMut};
use crate::{
    Capabilities, Discard, Disk, DiskSize, Error, ErrorKind, Format, OpenOptions,
    QueryCapabilities, ReadAt, Resize, Result, WriteAt,
};

/// Create types whose extents this library can open.
const SUPPORTED_CREATE_TYPES: &[&str] = &[
    "monolithicSparse",
    "monolithicFlat",
    "twoGbMaxExtentSparse",
    "twoGbMaxExtentFlat",
    "streamOptimized",
    "vmfs",
];

/// An open vmdk image.
#[derive(Debug)]
pub struct Vmdk {
    path: PathBuf,
    size: u64,
    read_only: bool,
    create_type: String,
    geometry: Option<Geometry>,
    extents: Vec<Extent>,
    stream: Option<StreamWriter>,
}

/// Opens a vmdk image: a descriptor file or a sparse file with an embedded descriptor.
pub fn open(path: &Path, options: &OpenOptions) -> Result<Vmdk> {
    open_inner(path, options).map_err(|e| e.with_path(path).with_operation("open"))
}

fn open_file(path: &Path, writable: bool) -> Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(writable)
        .open(path)
        .map_err(|e| Error::io(e, "opening file").with_path(path))
}

fn open_inner(path: &Path, options: &OpenOptions) -> Result<Vmdk> {
    let file = open_file(path, !options.read_only)?;
    let len = file_len(&file)?;
    let mut magic = [0u8; 4];
    if len >= 4 {
        read_at(&file, &mut magic, 0, "magic")?;
    }
    if magic == MAGIC {
        return open_sparse_file(path, file, options);
    }
    if magic == COWD_MAGIC {
        return Err(Error::new(
            ErrorKind::Unsupported,
            "ESX COWD sparse extents are not supported",
        ));
    }
    if len > descriptor::MAX_DESCRIPTOR_BYTES as u64 {
        return Err(Error::new(
            ErrorKind::InvalidFormat,
            "neither a sparse extent (no KDMV magic) nor a descriptor (too large)",
        ));
    }
    let mut text = vec![0u8; len as usize];
    read_at(&file, &mut text, 0, "descriptor")?;
    let desc = Descriptor::parse(&text)?;
    open_descriptor(path, &desc, options)
}

/// Refuses descriptors that need a parent image.
fn check_no_parent(desc: &Descriptor) -> Result<()> {
    if desc.parent_cid != descriptor::NO_PARENT {
        return Err(Error::new(
            ErrorKind::Unsupported,
            format!(
                "images with a parent (parentCID={:08x}) are not supported",
                desc.parent_cid
            ),
        ));
    }
    Ok(())
}

fn open_sparse_file(path: &Path, file: File, options: &OpenOptions) -> Result<Vmdk> {
    let (sparse, embedded) = SparseExtent::open(file, !options.read_only)?;
    let desc = match embedded {
        Some(bytes) => Descriptor::parse(&bytes)?,
        None => Descriptor::default(),
    };
    check_no_parent(&desc)?;
    let create_type = desc.create_type.clone().unwrap_or_else(|| {
        if sparse.header().compressed() {
            "streamOptimized".to_string()
        } else {
            "monolithicSparse".to_string()
        }
    });
    let size = sparse.capacity();
    Ok(Vmdk {
        path: path.to_path_buf(),
        size,
        read_only: options.read_only,
        create_type,
        geometry: desc.geometry,
        extents: vec![Extent {
            start: 0,
            len: size,
            access: Access::ReadWrite,
            path: path.to_path_buf(),
            data: ExtentData::Sparse(Box::new(sparse)),
        }],
        stream: None,
    })
}

fn open_descriptor(path: &Path, desc: &Descriptor, options: &OpenOptions) -> Result<Vmdk> {
    let create_type = desc.create_type.clone().ok_or_else(|| {
        Error::new(
            ErrorKind::InvalidFormat,
            "not a vmdk descriptor: no createType",
        )
    })?;
    if !SUPPORTED_CREATE_TYPES.contains(&create_type.as_str()) {
        return Err(Error::new(
            ErrorKind::Unsupported,
            format!("createType {create_type} is not supported"),
        ));
    }
    check_no_parent(desc)?;
    if desc.extents.is_empty() {
        return Err(Error::new(
            ErrorKind::InvalidFormat,
            "descriptor has no extents",
        ));
    }
    let total = desc.total_sectors()?;
    if total > MAX_CAPACITY_SECTORS {
        return Err(Error::new(
            ErrorKind::Unsupported,
            format!("virtual size of {total} sectors is too large"),
        ));
    }
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut extents: Vec<Extent> = Vec::with_capacity(desc.extents.len());
    let mut start = 0u64;
    for line in &desc.extents {
        let extent = extent::open(&dir, line, start, options)?;
        if let Some(id) = extent.sparse_file_id()? {
            // Two sparse extents sharing a file would allocate over each other.
            for other in &extents {
                if other.sparse_file_id()? == Some(id) {
                    return Err(Error::new(
                        ErrorKind::Corrupt,
                        "the same sparse extent file is listed twice",
                    )
                    .with_path(&extent.path));
                }
            }
        }
        start += extent.len;
        extents.push(extent);
    }
    Ok(Vmdk {
        path: path.to_path_buf(),
        size: total * SECTOR,
        read_only: options.read_only,
        create_type,
        geometry: desc.geometry,
        extents,
        stream: None,
    })
}

/// Resolves an extent file name against the descriptor's directory.
pub fn resolve_extent_path(dir: &Path, name: &str, allow_outside: bool) -> Result<PathBuf> {
    let rel = Path::new(name);
    if allow_outside {
        return Ok(dir.join(rel));
    }
    let refuse = |why: &str| {
        Error::new(
            ErrorKind::Unsupported,
            format!("extent file '{name}' {why}; outside extents need allow_outside_extents"),
        )
    };
    if rel
        .components()
        .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(refuse(
            "is not a plain relative path inside the descriptor's directory",
        ));
    }
    let full = dir.join(rel);
    let canon_dir = dir
        .canonicalize()
        .map_err(|e| Error::io(e, "resolving the descriptor's directory"))?;
    let canon = full
        .canonicalize()
        .map_err(|e| Error::io(e, format!("resolving extent file '{name}'")))?;
    if !canon.starts_with(&canon_dir) {
        return Err(refuse("leads outside the descriptor's directory"));
    }
    Ok(canon)
}

impl Vmdk {
    /// The descriptor's `createType`.
    pub fn create_type(&self) -> &str {
        &self.create_type
    }

    /// The `ddb.geometry.*` values, if the descriptor has them.
    pub fn geometry(&self) -> Option<Geometry> {
        self.geometry
    }

    /// The number of extents.
    pub fn extent_count(&self) -> usize {
        self.extents.len()
    }

    fn check_range(&self, offset: u64, len: u64, op: &'static str) -> Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= self.size => Ok(()),
            _ => Err(Error::new(
                ErrorKind::OutOfBounds,
                format!("{len} bytes at {offset} exceed the disk size {}", self.size),
            )
            .with_offset(offset)
            .with_path(&self.path)
            .with_operation(op)),
        }
    }

    fn check_writable(&self, op: &'static str) -> Result<()> {
        if self.read_only {
            return Err(
                Error::new(ErrorKind::Unsupported, "image is opened read-only")
                    .with_path(&self.path)
                    .with_operation(op),
            );
        }
        Ok(())
    }

    /// Calls `f` for each extent piece of `[offset, offset + len)` with (extent, offset in
    /// extent, position in the request, length).
    fn for_each_piece(
        &mut self,
        offset: u64,
        len: u64,
        op: &'static str,
        mut f: impl FnMut(&mut Extent, u64, usize, usize) -> Result<()>,
    ) -> Result<()> {
        let mut done = 0u64;
        while done < len {
            let pos = offset + done;
            let i = self.extents.partition_point(|e| e.start + e.len <= pos);
            let Some(e) = self.extents.get_mut(i) else {
                return Err(
                    Error::new(ErrorKind::Corrupt, "no extent covers the offset").with_offset(pos),
                );
            };
            let n = (e.start + e.len - pos).min(len - done);
            f(e, pos - e.start, done as usize, n as usize)
                .map_err(|err| err.with_path(&e.path).with_operation(op))?;
            done += n;
        }
        Ok(())
    }
}

impl DiskSize for Vmdk {
    fn size(&self) -> u64 {
        self.size
    }
}

impl ReadAt for Vmdk {
    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.read_vectored_at(&mut [IoSliceMut::new(buf)], offset)
    }

    fn read_vectored_at(&mut self, bufs: &mut [IoSliceMut<'_>], offset: u64) -> Result<()> {
        let len = total_len_mut(bufs).unwrap_or(u64::MAX);
        self.check_range(offset, len, "read")?;
        if self.stream.is_some() {
            return Err(Error::new(
                ErrorKind::Unsupported,
                "a streamOptimized image being written cannot be read; flush and reopen it",
            )
            .with_path(&self.path)
            .with_operation("read"));
        }
        let mut segs = SegsMut::new(bufs);
        self.for_each_piece(offset, len, "read", |e, at, _, n| {
            e.read_segs(segs.take(n), at)
        })
    }
}

impl WriteAt for Vmdk {
    fn write_at(&mut self, buf: &[u8], offset: u64) -> Result<()> {
        self.write_vectored_at(&[IoSlice::new(buf)], offset)
    }

    fn write_vectored_at(&mut self, bufs: &[IoSlice<'_>], offset: u64) -> Result<()> {
        let len = total_len(bufs).unwrap_or(u64::MAX);
        self.check_range(offset, len, "write")?;
        self.check_writable("write")?;
        let mut segs = Segs::new(bufs);
        if let Some(s) = &mut self.stream {
            // Stream grains are compressed: the data passes through the writer's buffer anyway.
            let data = gather(&segs.take(len as usize));
            return s
                .write(&data, offset)
                .map_err(|e| e.with_path(&self.path).with_operation("write"));
        }
        self.for_each_piece(offset, len, "write", |e, at, _, n| {
            e.write_segs(&segs.take(n), at)
        })
    }

    fn flush(&mut self) -> Result<()> {
        if self.read_only {
            return Ok(());
        }
        let result = match &mut self.stream {
            Some(s) => s.flush(),
            None => self.extents.iter().try_for_each(Extent::sync),
        };
        result.map_err(|e| e.with_path(&self.path).with_operation("flush"))
    }
}

impl Discard for Vmdk {
    /// Accepted and ignored: the range keeps its data (allowed by the trait's contract).
    fn discard(&mut self, offset: u64, len: u64) -> Result<()> {
        self.check_range(offset, len, "discard")?;
        self.check_writable("discard")
    }

    fn write_zeroes(&mut self, offset: u64, len: u64) -> Result<()> {
        self.check_range(offset, len, "write_zeroes")?;
        self.check_writable("write_zeroes")?;
        if let Some(s) = &mut self.stream {
            return s
                .write_zeroes(offset, len)
                .map_err(|e| e.with_path(&self.path).with_operation("write_zeroes"));
        }
        self.for_each_piece(offset, len, "write_zeroes", |e, at, _, n| {
            e.write_zeroes(at, n as u64)
        })
    }
}

impl Resize for Vmdk {
    fn resize(&mut self, _new_size: u64) -> Result<()> {
        Err(
            Error::new(ErrorKind::Unsupported, "vmdk images cannot be resized")
                .with_path(&self.path)
                .with_operation("resize"),
        )
    }
}

impl QueryCapabilities for Vmdk {
    /// Writable only if every extent can be written in place (no existing compressed
    /// extents, no RDONLY/NOACCESS or ZERO extents); discard is accepted but does nothing, so it
    /// is not offered; write-zeroes never deallocates grains.
    fn capabilities(&self) -> Capabilities {
        let writable = !self.read_only
            && self.stream.is_none()
            && self.extents.iter().all(Extent::writable_in_place);
        Capabilities {
            format: Format::Vmdk,
            read_only: !writable,
            flush: writable,
            discard: false,
            write_zeroes: writable,
            write_zeroes_may_unmap: false,
            resize: false,
            logical_block_size: 512,
            physical_block_size: 4096,
            discard_alignment: 0,
            direct: false,
            buffer_alignment: 1,
        }
    }
}

impl Disk for Vmdk {}
