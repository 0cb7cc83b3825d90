//! Writing: cluster allocation, copy-on-write, zeroing, discard, compressed clusters, resize.

use std::os::unix::fs::FileExt;

use super::header::{put32, put64, MAX_L1_BYTES, MAX_VIRTUAL_SIZE};
use super::l2cache::encode;
use super::refcount::io;
use std::io::IoSlice;

use super::{compress, CompressionType, Mapping, Qcow2, COMPRESSED, COPIED, ZERO};
use crate::iov::{total_len, Segs};
use crate::{Discard, Error, ErrorKind, Resize, Result, WriteAt};

/// What [`Qcow2::zero_range`] does to whole clusters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ZeroMode {
    /// Discard: deallocate; the range may read back as anything (here: zeroes or backing).
    Discard,
    /// Write zeroes, deallocating where the format can.
    Unmap,
    /// Write zeroes, keeping allocated clusters allocated.
    Keep,
}

impl Qcow2 {
    fn check_writable(&self, op: &'static str) -> Result<()> {
        if self.read_only || self.refs.is_none() {
            return Err(
                Error::new(ErrorKind::Unsupported, "image is open read-only")
                    .with_path(&self.path)
                    .with_operation(op),
            );
        }
        Ok(())
    }

    pub(crate) fn write_host(&mut self, buf: &[u8], offset: u64) -> Result<()> {
        self.file
            .write_all_at(buf, offset)
            .map_err(|e| io(e, "write", offset).with_path(&self.path))?;
        self.file_len = self.file_len.max(offset + buf.len() as u64);
        self.need_sync = true;
        Ok(())
    }

    pub(crate) fn alloc_clusters(&mut self, n: u64) -> Result<u64> {
        let refs = self.refs.as_mut().ok_or_else(|| {
            Error::new(ErrorKind::Unsupported, "image is open read-only").with_operation("allocate")
        })?;
        let off = refs.alloc(&self.file, n)?;
        let cs = self.header.cluster_size();
        let (rt_off, rt_clusters) = refs.table_location();
        // A corrupt image may claim its own metadata is free: never hand that out.
        let h = &self.header;
        let overlaps = |start: u64, len: u64| len > 0 && off < start + len && start < off + n * cs;
        if overlaps(0, cs)
            || overlaps(h.l1_table_offset, h.l1_size as u64 * 8)
            || overlaps(rt_off, rt_clusters * cs)
            || overlaps(h.snapshots_offset, if h.nb_snapshots > 0 { cs } else { 0 })
        {
            return Err(self.err(
                ErrorKind::Corrupt,
                "refcounts mark image metadata as free; allocation refused",
                off,
            ));
        }
        // Allocated clusters are part of the image even before they are written.
        self.file_len = self.file_len.max(off + n * cs);
        Ok(off)
    }

    pub(crate) fn defer_free(&mut self, host_cluster: u64) {
        if let Some(r) = self.refs.as_mut() {
            r.defer_free(host_cluster);
        }
    }

    /// Queues the release of whatever host clusters a mapping holds.
    pub(crate) fn free_mapping(&mut self, m: Mapping) {
        let cb = self.header.cluster_bits;
        match m {
            Mapping::Normal { host, .. }
            | Mapping::Zero {
                host: Some(host), ..
            } => self.defer_free(host >> cb),
            Mapping::Compressed { offset, sectors } => {
                let start = offset & !511;
                let end = start + sectors * 512;
                for c in (start >> cb)..=((end - 1) >> cb) {
                    self.defer_free(c);
                }
                self.zcache = None;
            }
            Mapping::Unallocated | Mapping::Zero { host: None, .. } => {}
        }
    }

    pub(crate) fn mark_l1_dirty(&mut self, i: usize) {
        self.l1_dirty = Some(match self.l1_dirty {
            Some((a, b)) => (a.min(i), b.max(i + 1)),
            None => (i, i + 1),
        });
    }

    /// Evicts the least recently used L2 table if the cache is full.
    pub(super) fn make_room(&mut self) -> Result<()> {
        if let Some(victim) = self.cache.victim() {
            let is_dirty = self.cache.get(victim).is_some_and(|t| t.dirty);
            if is_dirty {
                self.sync_refcounts()?;
                self.write_l2(victim)?;
            }
            self.cache.remove(victim);
        }
        Ok(())
    }

    /// The host offset of a cached L2 table for `l1_index` that may be modified in place,
    /// allocating a new table or copying a shared one as needed.
    fn writable_l2(&mut self, l1_index: usize) -> Result<u64> {
        if l1_index >= self.l1.len() {
            return Err(self.err(
                ErrorKind::Corrupt,
                "L1 table too small for the disk size",
                36,
            ));
        }
        let off = self.l2_offset(l1_index)?;
        if off != 0 && self.l1[l1_index] & COPIED != 0 {
            self.load_l2(off)?;
            return Ok(off);
        }
        let entries = if off == 0 {
            vec![0u64; self.header.l2_entries() as usize]
        } else {
            self.load_l2(off)?;
            match self.cache.get(off) {
                Some(t) => t.entries.clone(),
                None => return Err(self.err(ErrorKind::Corrupt, "L2 cache miss", off)),
            }
        };
        let new = self.alloc_clusters(1)?;
        self.make_room()?;
        self.cache.insert(new, entries, true);
        self.l1[l1_index] = new | COPIED;
        self.mark_l1_dirty(l1_index);
        if off != 0 {
            self.defer_free(off >> self.header.cluster_bits);
        }
        Ok(new)
    }

    /// Sets the L2 entry of guest cluster `vc`.
    pub(crate) fn set_l2(&mut self, vc: u64, entry: u64) -> Result<()> {
        let l2e = self.header.l2_entries();
        let off = self.writable_l2((vc / l2e) as usize)?;
        match self.cache.get(off) {
            Some(t) => {
                t.entries[(vc % l2e) as usize] = entry;
                t.dirty = true;
                Ok(())
            }
            None => Err(self.err(ErrorKind::Corrupt, "L2 cache miss", off)),
        }
    }

    /// Writes `data` at `in_off` within guest cluster `vc`.
    fn write_cluster(&mut self, vc: u64, in_off: u64, data: &[u8]) -> Result<()> {
        let m = self.lookup(vc)?;
        self.write_cluster_segs(vc, in_off, &[data], m)
    }

    /// Zeroes (or discards) the clusters of a range; partial clusters are written with zeroes
    /// (or, for discard, left alone).
    fn zero_range(&mut self, offset: u64, len: u64, mode: ZeroMode) -> Result<()> {
        let cs = self.cluster_size();
        let size = self.header.size;
        for (vc, in_off, range) in self.split(offset, len) {
            let n = range.len() as u64;
            let pos = (vc << self.header.cluster_bits) + in_off;
            let full = in_off == 0 && (n == cs || pos + n == size);
            if !full {
                if mode != ZeroMode::Discard {
                    self.write_cluster(vc, in_off, &vec![0u8; n as usize])?;
                }
                continue;
            }
            let v3 = self.header.version >= 3;
            if mode == ZeroMode::Keep && v3 {
                self.zero_cluster_keep(vc)?;
                continue;
            }
            let has_backing = self.backing.is_some();
            let discard = mode == ZeroMode::Discard;
            let new = match (v3, has_backing, discard) {
                (true, false, true) | (false, false, true) | (false, true, true) => 0,
                (false, false, false) if mode == ZeroMode::Unmap => 0,
                (true, _, _) => ZERO,
                (false, _, false) => {
                    self.write_cluster(vc, 0, &vec![0u8; n as usize])?;
                    continue;
                }
            };
            let m = self.lookup(vc)?;
            let unchanged = matches!(
                (m, new),
                (Mapping::Unallocated, 0) | (Mapping::Zero { host: None, .. }, ZERO)
            );
            if unchanged {
                continue;
            }
            self.set_l2(vc, new)?;
            self.free_mapping(m);
        }
        Ok(())
    }

    /// Makes a whole cluster read as zeroes without deallocating it (v3): an allocated
    /// cluster keeps its host cluster under the zero flag, as QEMU does without
    /// `BDRV_REQ_MAY_UNMAP`; a compressed one is freed (it cannot be rewritten in place).
    fn zero_cluster_keep(&mut self, vc: u64) -> Result<()> {
        let m = self.lookup(vc)?;
        let new = match m {
            Mapping::Normal { host, copied }
            | Mapping::Zero {
                host: Some(host),
                copied,
            } => host | if copied { COPIED } else { 0 } | ZERO,
            Mapping::Zero { host: None, .. } => return Ok(()),
            Mapping::Unallocated | Mapping::Compressed { .. } => ZERO,
        };
        if matches!(m, Mapping::Zero { .. }) {
            return Ok(());
        }
        self.set_l2(vc, new)?;
        if matches!(m, Mapping::Compressed { .. }) {
            self.free_mapping(m);
        }
        Ok(())
    }

    /// Writes one guest cluster compressed (for image conversion). `offset` must be cluster
    /// aligned and `data` a whole cluster, or the final partial cluster of the disk. Data that
    /// does not compress is written normally.
    pub fn write_compressed(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        self.check_compressed_write(offset, data)?;
        let c = compress_cluster(self.header.compression, self.cluster_size(), data);
        self.store_compressed(offset, data, c.as_deref())
    }

    /// [`Qcow2::write_compressed`] with the compression already done (on another thread) by
    /// [`compress_cluster`] for this image's [`Qcow2::compression_type`] and cluster size;
    /// `None` writes `data` uncompressed.
    pub fn write_precompressed(
        &mut self,
        offset: u64,
        data: &[u8],
        compressed: Option<&[u8]>,
    ) -> Result<()> {
        self.check_compressed_write(offset, data)?;
        if compressed.is_some_and(|c| c.is_empty() || c.len() as u64 >= self.cluster_size()) {
            return Err(self
                .err(
                    ErrorKind::OutOfBounds,
                    "compressed data must be shorter than a cluster",
                    offset,
                )
                .with_operation("write compressed"));
        }
        self.store_compressed(offset, data, compressed)
    }

    /// The algorithm compressed clusters of this image use.
    pub fn compression_type(&self) -> CompressionType {
        self.header.compression
    }

    fn check_compressed_write(&self, offset: u64, data: &[u8]) -> Result<()> {
        self.check_writable("write compressed")?;
        self.check_range(offset, data.len() as u64, "write compressed")?;
        let cs = self.cluster_size();
        let whole = data.len() as u64 == cs || offset + data.len() as u64 == self.header.size;
        if !offset.is_multiple_of(cs) || !whole || data.len() as u64 > cs {
            return Err(self
                .err(
                    ErrorKind::OutOfBounds,
                    "compressed writes must cover one whole cluster",
                    offset,
                )
                .with_operation("write compressed"));
        }
        Ok(())
    }

    fn store_compressed(&mut self, offset: u64, data: &[u8], c: Option<&[u8]>) -> Result<()> {
        let Some(c) = c else {
            return self.write_at(data, offset);
        };
        let cb = self.header.cluster_bits;
        let vc = offset >> cb;
        let m = self.lookup(vc)?;
        let host = self.alloc_bytes(c.len() as u64)?;
        self.write_host(c, host)?;
        let start = host & !511;
        let end = (host + c.len() as u64).div_ceil(512) * 512;
        let sectors = (end - start) / 512;
        let x = 62 - (cb - 8);
        self.set_l2(vc, COMPRESSED | ((sectors - 1) << x) | host)?;
        self.free_mapping(m);
        self.zcache = None;
        Ok(())
    }

    /// Allocates `len` bytes for compressed data, packing into the last partly used cluster.
    fn alloc_bytes(&mut self, len: u64) -> Result<u64> {
        let cs = self.cluster_size();
        if let Some(t) = self.compressed_tail {
            let used = t % cs;
            if used != 0 && used + len <= cs {
                let refs = self
                    .refs
                    .as_mut()
                    .ok_or_else(|| Error::new(ErrorKind::Unsupported, "image is open read-only"))?;
                refs.add(&self.file, t >> self.header.cluster_bits, 1)?;
                self.compressed_tail = Some(t + len);
                return Ok(t);
            }
        }
        let h = self.alloc_clusters(len.div_ceil(cs))?;
        let end = h + len;
        self.compressed_tail = (!end.is_multiple_of(cs)).then_some(end);
        Ok(h)
    }

    /// Replaces the L1 table with one of `need` entries.
    pub(crate) fn grow_l1(&mut self, need: u64) -> Result<()> {
        self.flush_all()?;
        let cs = self.cluster_size();
        let bytes = need * 8;
        if bytes > MAX_L1_BYTES {
            return Err(self.err(ErrorKind::Unsupported, "L1 table would exceed 32 MiB", 36));
        }
        let k = bytes.div_ceil(cs);
        let off = self.alloc_clusters(k)?;
        self.sync_refcounts()?;
        let mut new_l1 = self.l1.clone();
        new_l1.resize(need as usize, 0);
        let mut raw = encode(&new_l1);
        raw.resize((k * cs) as usize, 0);
        self.write_host(&raw, off)?;
        self.sync()?;
        let mut hdr = [0u8; 12];
        put32(&mut hdr, 0, need as u32);
        put64(&mut hdr, 4, off);
        self.write_host(&hdr, 36)?;
        self.sync()?;
        let (old_off, old_len) = (self.header.l1_table_offset, self.l1.len() as u64);
        self.l1 = new_l1;
        self.header.l1_size = need as u32;
        self.header.l1_table_offset = off;
        if old_off != 0 && old_len != 0 {
            for i in 0..(old_len * 8).div_ceil(cs) {
                self.defer_free((old_off >> self.header.cluster_bits) + i);
            }
        }
        self.flush_all()
    }
}

impl WriteAt for Qcow2 {
    fn write_at(&mut self, buf: &[u8], offset: u64) -> Result<()> {
        self.write_vectored_at(&[IoSlice::new(buf)], offset)
    }

    fn write_vectored_at(&mut self, bufs: &[IoSlice<'_>], offset: u64) -> Result<()> {
        self.check_writable("write")?;
        let len = total_len(bufs).unwrap_or(u64::MAX);
        self.check_range(offset, len, "write")?;
        self.write_segs(Segs::new(bufs), offset)
            .map_err(|e| e.with_operation("write"))
    }

    fn flush(&mut self) -> Result<()> {
        self.flush_all().map_err(|e| e.with_operation("flush"))
    }
}

impl Discard for Qcow2 {
    fn discard(&mut self, offset: u64, len: u64) -> Result<()> {
        self.check_writable("discard")?;
        self.check_range(offset, len, "discard")?;
        self.zero_range(offset, len, ZeroMode::Discard)
            .map_err(|e| e.with_operation("discard"))
    }

    fn write_zeroes(&mut self, offset: u64, len: u64) -> Result<()> {
        self.write_zeroes_unmap(offset, len, true)
    }

    fn write_zeroes_unmap(&mut self, offset: u64, len: u64, unmap: bool) -> Result<()> {
        self.check_writable("write_zeroes")?;
        self.check_range(offset, len, "write_zeroes")?;
        let mode = if unmap {
            ZeroMode::Unmap
        } else {
            ZeroMode::Keep
        };
        self.zero_range(offset, len, mode)
            .map_err(|e| e.with_operation("write_zeroes"))
    }
}

impl Resize for Qcow2 {
    fn resize(&mut self, new_size: u64) -> Result<()> {
        self.check_writable("resize")?;
        if new_size < self.header.size {
            return Err(self.err(ErrorKind::Unsupported, "shrinking a qcow2 image", new_size));
        }
        if new_size > MAX_VIRTUAL_SIZE {
            return Err(self.err(ErrorKind::OutOfBounds, "size too large", new_size));
        }
        let need = self.header.l1_entries_for(new_size);
        if need > self.l1.len() as u64 {
            self.grow_l1(need)?;
        }
        self.write_host(&new_size.to_be_bytes(), 24)?;
        self.sync()?;
        self.header.size = new_size;
        Ok(())
    }
}

/// Compresses one guest cluster's `data` (a whole cluster, or the disk's final partial one,
/// which is padded with zeroes) for [`Qcow2::write_precompressed`]; `None` when compression
/// would not save space. Pure: safe to call on any thread.
///
/// Clusters of at least 16 KiB whose four 4 KiB samples (start to end, evenly spaced) all save less than 3%
/// under fast deflate (random, encrypted or already compressed data) are not run through the
/// compressor and are returned as `None` (stored uncompressed, as qemu-img stores clusters
/// that do not shrink).
pub fn compress_cluster(ty: CompressionType, cluster_size: u64, data: &[u8]) -> Option<Vec<u8>> {
    if compress::looks_incompressible(data) {
        return None;
    }
    if data.len() as u64 == cluster_size {
        return compress::compress(ty, data);
    }
    let mut full = data.to_vec();
    full.resize(cluster_size as usize, 0);
    compress::compress(ty, &full)
}
