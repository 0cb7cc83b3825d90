//! QEMU copy-on-write images, versions 2 and 3.
//!
//! Layout: `header` (parsing, validation), `refcount` (refcounts and allocation), `l2cache`
//! (bounded L2 table cache), `compress` (zlib/zstd clusters), `snapshot` (snapshot table),
//! `vectored` (scatter-gather reads and writes), `write`, `create`, `check` and `info`. This
//! file holds the open image: lookups, reads and the ordered flush.
//!
//! Crash safety: data is written first, then refcount increments (fsync), then L2 tables
//! (fsync), then the L1 table (fsync), and only then are freed clusters' refcounts
//! decremented. A crash at any point leaves leaks at worst, never a cluster referenced with a
//! refcount lower than its references.

mod check;
mod compress;
mod create;
pub(crate) mod header;
mod info;
mod l2cache;
mod refcount;
mod snapshot;
mod snapshot_ops;
mod write;

pub use check::CheckReport;
pub use header::CompressionType;
pub use info::{Qcow2Info, SnapshotInfo};
pub use write::compress_cluster;

mod vectored;

use std::fs::File;
use std::io::IoSliceMut;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use header::Header;
use l2cache::{decode, L2Cache};
use refcount::{io, Refcounts};

use crate::iov::{total_len_mut, SegsMut};
use crate::{
    Capabilities, Disk, DiskSize, Error, ErrorKind, Format, OpenOptions, QueryCapabilities, ReadAt,
    Result,
};

pub(crate) use check::check;
pub(crate) use create::{create, create_cached};
pub(crate) use info::info;

/// L1/L2 entry flag: the cluster's refcount is exactly 1, so it may be written in place.
pub(crate) const COPIED: u64 = 1 << 63;
/// L2 entry flag: the cluster is compressed.
pub(crate) const COMPRESSED: u64 = 1 << 62;
/// L2 entry flag (v3): the cluster reads as zeroes.
pub(crate) const ZERO: u64 = 1;
/// Host offset bits of L1 and standard L2 entries.
pub(crate) const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;

/// Longest backing chain followed (guards against loops).
const MAX_BACKING_DEPTH: u32 = 256;
/// Bytes of L2 tables cached per open image.
const L2_CACHE_BYTES: u64 = 1 << 20;

/// Decompresses one cluster of `cluster_size` bytes (exposed for the fuzz targets).
#[doc(hidden)]
pub fn fuzz_decompress(ty: CompressionType, input: &[u8], cluster_size: usize) -> Result<Vec<u8>> {
    let mut out = vec![0u8; cluster_size];
    compress::decompress(ty, input, &mut out)?;
    Ok(out)
}

/// How one guest cluster is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mapping {
    /// Not allocated here: read from the backing file or as zeroes.
    Unallocated,
    /// Reads as zeroes; may keep a preallocated host cluster.
    Zero { host: Option<u64>, copied: bool },
    /// Stored uncompressed at `host`.
    Normal { host: u64, copied: bool },
    /// Compressed data at byte `offset`, occupying `sectors` 512-byte sectors from
    /// `offset & !511`.
    Compressed { offset: u64, sectors: u64 },
}

/// An open qcow2 image.
pub struct Qcow2 {
    file: File,
    path: PathBuf,
    header: Header,
    read_only: bool,
    file_len: u64,
    l1: Vec<u64>,
    l1_dirty: Option<(usize, usize)>,
    cache: L2Cache,
    refs: Option<Refcounts>,
    backing: Option<Box<dyn Disk>>,
    zcache: Option<((u64, u64), Vec<u8>)>,
    need_sync: bool,
    /// False under [`crate::CacheMode::Unsafe`]: ordering is kept, fdatasync skipped.
    sync_enabled: bool,
    /// fdatasync calls made by [`Qcow2::sync`] (observable by tests).
    syncs: u64,
    compressed_tail: Option<u64>,
}

impl std::fmt::Debug for Qcow2 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Qcow2")
            .field("path", &self.path)
            .field("size", &self.header.size)
            .finish_non_exhaustive()
    }
}

impl Qcow2 {
    /// Opens a qcow2 image.
    pub fn open(path: &Path, options: &OpenOptions) -> Result<Qcow2> {
        Self::open_depth(path, options, 0).map_err(|e| e.with_path(path))
    }

    fn open_depth(path: &Path, options: &OpenOptions, depth: u32) -> Result<Qcow2> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(!options.read_only)
            .open(path)
            .map_err(|e| Error::io(e, "cannot open image").with_operation("open"))?;
        let file_len = file
            .metadata()
            .map_err(|e| Error::io(e, "cannot stat image"))?
            .len();
        let first =
            header::read_first_cluster(&file, file_len).map_err(|e| io(e, "read header", 0))?;
        let header = Header::parse(&first, file_len)?;
        if !options.read_only && header.incompatible & header::INCOMPAT_CORRUPT != 0 {
            return Err(Error::new(
                ErrorKind::Corrupt,
                "image is marked corrupt; it can only be opened read-only",
            ));
        }
        if !options.read_only && header.incompatible & header::INCOMPAT_DIRTY != 0 {
            // As QEMU: a writer repairs the refcounts of a dirty image and clears the bit.
            drop(file);
            check::repair_dirty(path)?;
            if depth > 0 {
                return Err(Error::new(
                    ErrorKind::Corrupt,
                    "dirty bit could not be cleared",
                ));
            }
            return Self::open_depth(path, options, depth + 1);
        }
        let l1 = read_l1(&file, &header)?;
        let backing = open_backing(path, &header, options, depth)?;
        let refs = if options.read_only {
            None
        } else {
            Some(Refcounts::load(
                &file,
                header.cluster_bits,
                header.refcount_order,
                header.refcount_table_offset,
                header.refcount_table_clusters as u64,
                file_len,
            )?)
        };
        let cap = (L2_CACHE_BYTES / header.cluster_size()).max(4) as usize;
        let mut q = Qcow2 {
            file,
            path: path.to_path_buf(),
            header,
            read_only: options.read_only,
            file_len,
            l1,
            l1_dirty: None,
            cache: L2Cache::new(cap),
            refs,
            backing,
            zcache: None,
            need_sync: false,
            sync_enabled: options.cache.syncs(),
            syncs: 0,
            compressed_tail: None,
        };
        if !q.read_only {
            q.clear_autoclear()?;
        }
        Ok(q)
    }

    /// Autoclear features (e.g. persistent bitmaps) become stale once we write; the spec's
    /// protocol is that a writer that does not understand them clears the bits.
    fn clear_autoclear(&mut self) -> Result<()> {
        if self.header.version < 3 || self.header.autoclear == 0 {
            return Ok(());
        }
        self.file
            .write_all_at(&0u64.to_be_bytes(), 88)
            .map_err(|e| io(e, "write header", 88))?;
        self.file.sync_data().map_err(|e| io(e, "sync", 0))?;
        self.header.autoclear = 0;
        Ok(())
    }

    pub(crate) fn cluster_size(&self) -> u64 {
        self.header.cluster_size()
    }

    /// The run of the image file from host offset `offset` (at most `len` bytes) that is
    /// all data or all hole, as (length, has data): `qemu-img map` reports a data cluster's
    /// part that lies in a hole of the file (or past its end) as reading zeroes. File
    /// systems without `SEEK_DATA` report data.
    pub(crate) fn host_extent(&self, offset: u64, len: u64) -> Result<(u64, bool)> {
        use rustix::fs::{seek, SeekFrom};
        use rustix::io::Errno;
        let end = offset.saturating_add(len);
        let data = match seek(&self.file, SeekFrom::Data(offset)) {
            Ok(d) => d,
            Err(Errno::NXIO) => return Ok((len, false)),
            Err(Errno::INVAL) | Err(Errno::OPNOTSUPP) => return Ok((len, true)),
            Err(e) => return Err(io(e.into(), "SEEK_DATA", offset)),
        };
        if data > offset {
            return Ok((data.min(end) - offset, false));
        }
        let hole = match seek(&self.file, SeekFrom::Hole(offset)) {
            Ok(h) => h,
            Err(Errno::NXIO) => end,
            Err(e) => return Err(io(e.into(), "SEEK_HOLE", offset)),
        };
        Ok((hole.clamp(offset + 1, end.max(offset + 1)) - offset, true))
    }

    fn err(&self, kind: ErrorKind, msg: impl Into<String>, offset: u64) -> Error {
        Error::new(kind, msg)
            .with_path(&self.path)
            .with_offset(offset)
    }

    /// Validates an L1 entry, returning the L2 table's host offset (0: none).
    fn l2_offset(&self, l1_index: usize) -> Result<u64> {
        let e = self.l1.get(l1_index).copied().unwrap_or(0);
        let off = e & OFFSET_MASK;
        if e & !(OFFSET_MASK | COPIED) != 0 || !off.is_multiple_of(self.cluster_size()) {
            return Err(self.err(
                ErrorKind::Corrupt,
                format!("L1 entry {l1_index} ({e:#x}) has reserved bits or is unaligned"),
                self.header.l1_table_offset + l1_index as u64 * 8,
            ));
        }
        if off != 0 && off.saturating_add(self.cluster_size()) > self.file_len {
            return Err(self.err(
                ErrorKind::Corrupt,
                format!("L2 table {off:#x} lies beyond the end of the file"),
                self.header.l1_table_offset + l1_index as u64 * 8,
            ));
        }
        Ok(off)
    }

    /// Makes sure the L2 table at `off` is in the cache, writing back an evicted dirty table
    /// after the refcounts it depends on.
    fn load_l2(&mut self, off: u64) -> Result<()> {
        if self.cache.contains(off) {
            return Ok(());
        }
        self.make_room()?;
        let mut raw = vec![0u8; self.cluster_size() as usize];
        self.file
            .read_exact_at(&mut raw, off)
            .map_err(|e| io(e, "read L2 table", off).with_path(&self.path))?;
        self.cache.insert(off, decode(&raw), false);
        Ok(())
    }

    fn write_l2(&mut self, off: u64) -> Result<()> {
        let Some(t) = self.cache.get(off) else {
            return Ok(());
        };
        let bytes = l2cache::encode(&t.entries);
        t.dirty = false;
        self.file
            .write_all_at(&bytes, off)
            .map_err(|e| io(e, "write L2 table", off))?;
        self.file_len = self.file_len.max(off + bytes.len() as u64);
        self.need_sync = true;
        Ok(())
    }

    /// The raw L2 entry for guest cluster `vc` (0 when no L2 table exists).
    fn l2_entry(&mut self, vc: u64) -> Result<u64> {
        let l2e = self.header.l2_entries();
        let l2_off = self.l2_offset((vc / l2e) as usize)?;
        if l2_off == 0 {
            return Ok(0);
        }
        self.load_l2(l2_off)?;
        match self.cache.get(l2_off) {
            Some(t) => Ok(t.entries[(vc % l2e) as usize]),
            None => Err(self.err(ErrorKind::Corrupt, "L2 cache miss", l2_off)),
        }
    }

    /// Decodes an L2 entry.
    pub(crate) fn classify(&self, entry: u64, vc: u64) -> Result<Mapping> {
        let cb = self.header.cluster_bits;
        if entry & COMPRESSED != 0 {
            let x = 62 - (cb - 8);
            let offset = entry & ((1u64 << x) - 1);
            let sectors = ((entry & !(COPIED | COMPRESSED)) >> x) + 1;
            if offset >= self.file_len {
                return Err(self.corrupt_entry(
                    vc,
                    entry,
                    "compressed data beyond the end of the file",
                ));
            }
            return Ok(Mapping::Compressed { offset, sectors });
        }
        let host = entry & OFFSET_MASK;
        let copied = entry & COPIED != 0;
        if entry & !(OFFSET_MASK | COPIED | ZERO) != 0 || !host.is_multiple_of(1 << cb) {
            return Err(self.corrupt_entry(vc, entry, "reserved bits set or unaligned offset"));
        }
        if entry & ZERO != 0 {
            if self.header.version < 3 {
                return Err(self.corrupt_entry(vc, entry, "zero flag in a version 2 image"));
            }
            let host = (host != 0).then_some(host);
            return Ok(Mapping::Zero { host, copied });
        }
        if host == 0 {
            return Ok(Mapping::Unallocated);
        }
        Ok(Mapping::Normal { host, copied })
    }

    fn corrupt_entry(&self, vc: u64, entry: u64, why: &str) -> Error {
        self.err(
            ErrorKind::Corrupt,
            format!(
                "L2 entry {entry:#x} for guest offset {:#x}: {why}",
                vc << self.header.cluster_bits
            ),
            vc << self.header.cluster_bits,
        )
    }

    /// How guest cluster `vc` is stored.
    pub(crate) fn lookup(&mut self, vc: u64) -> Result<Mapping> {
        let e = self.l2_entry(vc)?;
        self.classify(e, vc)
    }

    fn read_backing(&mut self, buf: &mut [u8], offset: u64) -> Result<()> {
        let Some(b) = self.backing.as_mut() else {
            buf.fill(0);
            return Ok(());
        };
        let bsize = b.size();
        if offset >= bsize {
            buf.fill(0);
            return Ok(());
        }
        let n = ((bsize - offset) as usize).min(buf.len());
        b.read_at(&mut buf[..n], offset)?;
        buf[n..].fill(0);
        Ok(())
    }

    /// Reads host bytes, zero-filling past the end of the file (sparse preallocation).
    fn read_host(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let mut done = 0;
        while done < buf.len() {
            let n = self
                .file
                .read_at(&mut buf[done..], offset + done as u64)
                .map_err(|e| io(e, "read", offset).with_path(&self.path))?;
            if n == 0 {
                buf[done..].fill(0);
                break;
            }
            done += n;
        }
        Ok(())
    }

    fn decompressed(&mut self, offset: u64, sectors: u64) -> Result<&[u8]> {
        let key = (offset, sectors);
        if self.zcache.as_ref().is_none_or(|(k, _)| *k != key) {
            let start = offset & !511;
            let mut input = vec![0u8; (sectors * 512 - (offset - start)) as usize];
            self.read_host(&mut input, offset)?;
            let mut out = vec![0u8; self.cluster_size() as usize];
            compress::decompress(self.header.compression, &input, &mut out)
                .map_err(|e| e.with_path(&self.path).with_offset(offset))?;
            self.zcache = Some((key, out));
        }
        match &self.zcache {
            Some((_, data)) => Ok(data),
            None => Err(self.err(ErrorKind::Corrupt, "decompression cache empty", offset)),
        }
    }

    /// Reads guest cluster `vc`'s contents in `[in_off, in_off + buf.len())`.
    fn read_in_cluster(&mut self, vc: u64, in_off: u64, buf: &mut [u8]) -> Result<()> {
        let guest = (vc << self.header.cluster_bits) + in_off;
        match self.lookup(vc)? {
            Mapping::Unallocated => self.read_backing(buf, guest),
            Mapping::Zero { .. } => {
                buf.fill(0);
                Ok(())
            }
            Mapping::Normal { host, .. } => self.read_host(buf, host + in_off),
            Mapping::Compressed { offset, sectors } => {
                let data = self.decompressed(offset, sectors)?;
                let s = in_off as usize;
                buf.copy_from_slice(&data[s..s + buf.len()]);
                Ok(())
            }
        }
    }

    fn check_range(&self, offset: u64, len: u64, op: &'static str) -> Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= self.header.size => Ok(()),
            _ => Err(self
                .err(
                    ErrorKind::OutOfBounds,
                    format!("{len} bytes exceed the disk size {:#x}", self.header.size),
                    offset,
                )
                .with_operation(op)),
        }
    }

    /// Calls `f(vc, in_cluster_offset, range)` for each cluster-sized piece of a request.
    fn split(&self, offset: u64, len: u64) -> Vec<(u64, u64, std::ops::Range<usize>)> {
        let cs = self.cluster_size();
        let mut out = Vec::new();
        let mut done = 0u64;
        while done < len {
            let pos = offset + done;
            let in_off = pos & (cs - 1);
            let n = (cs - in_off).min(len - done);
            out.push((
                pos >> self.header.cluster_bits,
                in_off,
                done as usize..(done + n) as usize,
            ));
            done += n;
        }
        out
    }

    /// Writes refcount changes and makes them and all data durable.
    fn sync_refcounts(&mut self) -> Result<()> {
        if let Some(r) = self.refs.as_mut() {
            if r.flush(&self.file)? {
                self.need_sync = true;
            }
        }
        self.sync()
    }

    /// Makes every write so far durable before any later write (a no-op under
    /// `CacheMode::Unsafe`, where only the order of writes is kept).
    fn sync(&mut self) -> Result<()> {
        if self.need_sync {
            if self.sync_enabled {
                self.file
                    .sync_data()
                    .map_err(|e| io(e, "flush", 0).with_path(&self.path))?;
                self.syncs += 1;
            }
            self.need_sync = false;
        }
        Ok(())
    }

    /// How many times this image has been synced to stable storage.
    #[doc(hidden)]
    pub fn sync_count(&self) -> u64 {
        self.syncs
    }

    /// The ordered flush: refcounts, then L2 tables, then L1, then deferred frees.
    fn flush_all(&mut self) -> Result<()> {
        if self.read_only {
            return Ok(());
        }
        self.sync_refcounts()?;
        for off in self.cache.dirty_offsets() {
            self.write_l2(off)?;
        }
        self.sync()?;
        if let Some((a, b)) = self.l1_dirty.take() {
            let bytes = l2cache::encode(&self.l1[a..b]);
            let off = self.header.l1_table_offset + a as u64 * 8;
            self.file
                .write_all_at(&bytes, off)
                .map_err(|e| io(e, "write L1 table", off))?;
            self.need_sync = true;
            self.sync()?;
        }
        let pending = self.refs.as_ref().is_some_and(|r| r.has_pending());
        if pending {
            if let Some(r) = self.refs.as_mut() {
                r.apply_pending(&self.file)?;
            }
            // The packing cluster may just have been freed and reused.
            self.compressed_tail = None;
            self.sync_refcounts()?;
        }
        Ok(())
    }
}

fn read_l1(file: &File, header: &Header) -> Result<Vec<u64>> {
    let mut raw = vec![0u8; header.l1_size as usize * 8];
    file.read_exact_at(&mut raw, header.l1_table_offset)
        .map_err(|e| io(e, "read L1 table", header.l1_table_offset))?;
    Ok(decode(&raw))
}

fn open_backing(
    path: &Path,
    header: &Header,
    options: &OpenOptions,
    depth: u32,
) -> Result<Option<Box<dyn Disk>>> {
    let Some(name) = &header.backing_file else {
        return Ok(None);
    };
    if !options.allow_backing {
        return Err(Error::new(
            ErrorKind::Unsupported,
            format!("image has backing file '{name}' but backing files are not allowed"),
        ));
    }
    if depth >= MAX_BACKING_DEPTH {
        return Err(Error::new(
            ErrorKind::Unsupported,
            format!("backing chain deeper than {MAX_BACKING_DEPTH} (a loop?)"),
        ));
    }
    let format: Format = match (&header.backing_format, options.backing_format) {
        (Some(f), _) => f.parse()?,
        (None, Some(f)) => f,
        (None, None) => {
            return Err(Error::new(
                ErrorKind::Unsupported,
                format!(
                    "backing file '{name}' has no recorded format and none was given; \
                     formats are never probed"
                ),
            ))
        }
    };
    let bpath = match Path::new(name) {
        p if p.is_absolute() => p.to_path_buf(),
        p => path.parent().unwrap_or(Path::new(".")).join(p),
    };
    let bopts = OpenOptions {
        read_only: true,
        direct: false,
        allow_backing: true,
        allow_outside_extents: options.allow_outside_extents,
        backing_format: None,
        cache: options.cache,
    };
    let disk: Box<dyn Disk> = match format {
        Format::Qcow2 => {
            Box::new(Qcow2::open_depth(&bpath, &bopts, depth + 1).map_err(|e| e.with_path(&bpath))?)
        }
        other => crate::open(&bpath, other, &bopts)?,
    };
    Ok(Some(disk))
}

impl DiskSize for Qcow2 {
    fn size(&self) -> u64 {
        self.header.size
    }
}

impl ReadAt for Qcow2 {
    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.read_vectored_at(&mut [IoSliceMut::new(buf)], offset)
    }

    fn read_vectored_at(&mut self, bufs: &mut [IoSliceMut<'_>], offset: u64) -> Result<()> {
        let len = total_len_mut(bufs).unwrap_or(u64::MAX);
        self.check_range(offset, len, "read")?;
        self.read_segs(SegsMut::new(bufs), offset)
            .map_err(|e| e.with_operation("read"))
    }
}

impl QueryCapabilities for Qcow2 {
    fn capabilities(&self) -> Capabilities {
        let writable = !self.read_only && self.refs.is_some();
        let cs = self.cluster_size();
        Capabilities {
            format: Format::Qcow2,
            read_only: !writable,
            flush: writable,
            discard: writable,
            write_zeroes: writable,
            write_zeroes_may_unmap: writable,
            resize: writable,
            logical_block_size: 512,
            physical_block_size: cs.clamp(512, 4096) as u32,
            discard_alignment: if writable { cs as u32 } else { 0 },
            direct: false,
            buffer_alignment: 1,
        }
    }
}

impl Disk for Qcow2 {
    fn data_map(&mut self, offset: u64, len: u64) -> Result<Option<Vec<(u64, u64)>>> {
        self.check_range(offset, len, "read")?;
        let mut runs: Vec<(u64, u64)> = Vec::new();
        for (vc, in_off, range) in self.split(offset, len) {
            let n = range.len() as u64;
            let Mapping::Normal { host, .. } = self.lookup(vc)? else {
                return Ok(None);
            };
            let h = host + in_off;
            match runs.last_mut() {
                Some((start, l)) if *start + *l == h => *l += n,
                _ => runs.push((h, n)),
            }
        }
        Ok(Some(runs))
    }

    fn data_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        use std::os::fd::AsFd;
        Some(self.file.as_fd())
    }
}

impl Drop for Qcow2 {
    fn drop(&mut self) {
        // Best effort: an explicit flush() reports errors; here there is no one to tell.
        let _ = self.flush_all();
    }
}
