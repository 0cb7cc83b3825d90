//! Hosted sparse extents: grain directory, grain tables and grains.
//!
//! Plain sparse extents are read and written (grains and grain tables are allocated at the end
//! of the file, both directories are updated). Compressed extents (streamOptimized) are read
//! only; they are written by [`super::stream::StreamWriter`].

use std::collections::HashMap;
use std::fs::File;

use super::fileio::{file_len, read_at, u32s_from_le, write_at};
use super::header::{
    sectors_in_file, Layout, Marker, SparseHeader, FLAG_ZERO_GRAIN, GD_AT_END, GTE_ZERO,
    MARKER_EOS, MARKER_FOOTER, SECTOR,
};
use super::stream::inflate_grain;
use crate::iov::{fill_zero, gather, preadv_exact, pwritev_all, scatter, Segs, SegsMut};
use crate::{Error, ErrorKind, Result};

/// Grain tables kept in memory before the cache is emptied.
const GT_CACHE_LIMIT: usize = 1024;

/// An open hosted sparse extent.
#[derive(Debug)]
pub struct SparseExtent {
    file: File,
    header: SparseHeader,
    layout: Layout,
    gd: Vec<u32>,
    rgd: Option<Vec<u32>>,
    gt_cache: HashMap<u64, Vec<u32>>,
    last_grain: Option<(u32, Vec<u8>)>,
    file_end: u64,
    writable: bool,
}

/// Reads the footer of a stream-optimized extent (the header copy at the end of the file).
fn read_footer(file: &File, file_len: u64) -> Result<SparseHeader> {
    let end = file_len / SECTOR * SECTOR;
    if end < 4 * SECTOR {
        return Err(Error::new(
            ErrorKind::Corrupt,
            "gdOffset says the grain directory is in the footer, but the file has no room for one",
        ));
    }
    let at = end - 3 * SECTOR;
    let mut buf = [0u8; 1536];
    read_at(file, &mut buf, at, "footer")?;
    let mut m = [0u8; 16];
    m.copy_from_slice(&buf[..16]);
    let footer_marker = Marker::parse(&m);
    m.copy_from_slice(&buf[1024..1040]);
    let eos = Marker::parse(&m);
    if footer_marker.size != 0
        || footer_marker.kind != MARKER_FOOTER
        || eos.val != 0
        || eos.size != 0
        || eos.kind != MARKER_EOS
    {
        return Err(Error::new(
            ErrorKind::Corrupt,
            "stream footer markers (footer, end-of-stream) are missing",
        )
        .with_offset(at));
    }
    let mut h = [0u8; 512];
    h.copy_from_slice(&buf[512..1024]);
    let footer = SparseHeader::parse(&h).map_err(|e| e.with_offset(at + 512))?;
    if footer.gd_offset == GD_AT_END {
        return Err(
            Error::new(ErrorKind::Corrupt, "footer gdOffset is also GD_AT_END")
                .with_offset(at + 512 + 56),
        );
    }
    Ok(footer)
}

impl SparseExtent {
    /// Opens a sparse extent. Returns it and its embedded descriptor bytes, if any.
    pub fn open(file: File, writable: bool) -> Result<(SparseExtent, Option<Vec<u8>>)> {
        let len = file_len(&file)?;
        if len < SECTOR {
            return Err(Error::new(
                ErrorKind::InvalidFormat,
                "file is shorter than a sparse extent header",
            ));
        }
        let mut buf = [0u8; 512];
        read_at(&file, &mut buf, 0, "sparse header")?;
        let mut header = SparseHeader::parse(&buf)?;
        let descriptor = match header.descriptor_range(len)? {
            Some((start, n)) => {
                let mut d = vec![0u8; n as usize];
                read_at(&file, &mut d, start, "embedded descriptor")?;
                Some(d)
            }
            None => None,
        };
        if header.gd_offset == GD_AT_END {
            header = read_footer(&file, len)?;
        }
        let layout = header.layout(len)?;
        let gd = read_directory(
            &file,
            layout.gd_offset,
            layout.gd_entries,
            "grain directory",
        )?;
        let rgd = match layout.rgd_offset {
            Some(off) if writable && !header.compressed() => Some(read_directory(
                &file,
                off,
                layout.gd_entries,
                "redundant grain directory",
            )?),
            _ => None,
        };
        let extent = SparseExtent {
            file,
            header,
            layout,
            gd,
            rgd,
            gt_cache: HashMap::new(),
            last_grain: None,
            file_end: len.div_ceil(SECTOR) * SECTOR,
            writable,
        };
        Ok((extent, descriptor))
    }

    /// Virtual size in bytes.
    pub fn capacity(&self) -> u64 {
        self.layout.capacity_bytes
    }

    /// The extent's file.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// The decoded header (the footer's copy for streams).
    pub fn header(&self) -> &SparseHeader {
        &self.header
    }

    fn zero_grain(&self, gte: u32) -> bool {
        gte == 0 || (gte == GTE_ZERO && self.header.flags & FLAG_ZERO_GRAIN != 0)
    }

    /// The grain table for directory entry `gd_index`, from cache or disk.
    fn grain_table(&mut self, gd_index: u64) -> Result<Option<&mut Vec<u32>>> {
        let gde = self.gd[gd_index as usize];
        if gde == 0 {
            return Ok(None);
        }
        if !self.gt_cache.contains_key(&gd_index) {
            let gt_bytes = self.layout.gt_bytes();
            let off = sectors_in_file(
                u64::from(gde),
                gt_bytes,
                self.file_end,
                &format!("grain directory entry {gd_index}"),
                self.layout.gd_offset + 4 * gd_index,
            )?;
            let mut raw = vec![0u8; gt_bytes as usize];
            read_at(&self.file, &mut raw, off, "grain table")?;
            if self.gt_cache.len() >= GT_CACHE_LIMIT {
                self.gt_cache.clear();
            }
            self.gt_cache.insert(gd_index, u32s_from_le(&raw));
        }
        Ok(self.gt_cache.get_mut(&gd_index))
    }

    /// The grain table entry for grain `grain`.
    fn entry(&mut self, grain: u64) -> Result<u32> {
        let gtes = self.layout.gtes_per_gt;
        Ok(self
            .grain_table(grain / gtes)?
            .map_or(0, |gt| gt[(grain % gtes) as usize]))
    }

    /// Reads into `bufs` at extent offset `offset` (the caller keeps it in range), grain by
    /// grain, straight into the buffers (compressed grains through the one-grain cache).
    pub fn read_segs(&mut self, bufs: Vec<&mut [u8]>, offset: u64) -> Result<()> {
        let gb = self.layout.grain_bytes;
        let mut segs = SegsMut::from_vec(bufs);
        let mut pos = offset;
        while segs.len() > 0 {
            let (grain, in_grain) = (pos / gb, pos % gb);
            let n = ((gb - in_grain) as usize).min(segs.len());
            let mut out = segs.take(n);
            let gte = self.entry(grain)?;
            if self.zero_grain(gte) {
                fill_zero(&mut out);
            } else if self.header.compressed() {
                let data = self.compressed_grain(gte)?;
                scatter(&mut out, &data[in_grain as usize..in_grain as usize + n]);
            } else {
                let at = self.grain_offset(gte, grain, in_grain + n as u64)? + in_grain;
                preadv_exact(&self.file, &mut out, at, false)
                    .map_err(|e| Error::io(e, "reading grain").with_offset(at))?;
            }
            pos += n as u64;
        }
        Ok(())
    }

    /// Checks that the first `len` bytes of the grain at sector `gte` lie in the file.
    fn grain_offset(&self, gte: u32, grain: u64, len: u64) -> Result<u64> {
        let gtes = self.layout.gtes_per_gt;
        let gd_index = grain / gtes;
        let gt_at = u64::from(self.gd[gd_index as usize]) * SECTOR + 4 * (grain % gtes);
        sectors_in_file(
            u64::from(gte),
            len,
            self.file_end,
            &format!("grain table entry for grain {grain}"),
            gt_at,
        )
    }

    /// The decompressed grain at sector `gte` (the last one is cached).
    fn compressed_grain(&mut self, gte: u32) -> Result<&[u8]> {
        if self.last_grain.as_ref().is_none_or(|(g, _)| *g != gte) {
            let data = self.load_compressed(gte)?;
            self.last_grain = Some((gte, data));
        }
        Ok(self
            .last_grain
            .as_ref()
            .map_or(&[][..], |(_, d)| d.as_slice()))
    }

    fn load_compressed(&self, gte: u32) -> Result<Vec<u8>> {
        let gb = self.layout.grain_bytes;
        let max_in = 2 * gb + 4096;
        let mut at = u64::from(gte) * SECTOR;
        if gte == 0 || at >= self.file_end {
            return Err(Error::new(
                ErrorKind::Corrupt,
                format!("compressed grain at sector {gte} lies outside the file"),
            ));
        }
        let len = if self.header.markers() {
            let mut m = [0u8; 16];
            let avail = (self.file_end - at).min(16) as usize;
            read_at(&self.file, &mut m[..avail], at, "grain marker")?;
            let marker = Marker::parse(&m);
            if marker.size == 0 || u64::from(marker.size) > max_in {
                return Err(Error::new(
                    ErrorKind::Corrupt,
                    format!("grain marker size {} is invalid", marker.size),
                )
                .with_offset(at));
            }
            at += 12;
            u64::from(marker.size)
        } else {
            max_in
        };
        let len = len.min(self.file_end.saturating_sub(at));
        let mut input = vec![0u8; len as usize];
        read_at(&self.file, &mut input, at, "compressed grain")?;
        inflate_grain(&input, gb as usize).map_err(|e| e.with_offset(at))
    }

    fn check_writable(&self) -> Result<()> {
        if !self.writable {
            return Err(Error::new(
                ErrorKind::Unsupported,
                "extent is opened read-only",
            ));
        }
        if self.header.compressed() {
            return Err(Error::new(
                ErrorKind::Unsupported,
                "existing compressed (streamOptimized) extents cannot be rewritten; convert instead",
            ));
        }
        Ok(())
    }

    /// Writes `bufs` at extent offset `offset`, allocating grains and tables as needed.
    /// Allocated grains and whole new grains are written straight from the buffers; a partial
    /// new grain is assembled with zeroes in a buffer.
    pub fn write_segs(&mut self, bufs: &[&[u8]], offset: u64) -> Result<()> {
        self.check_writable()?;
        let gb = self.layout.grain_bytes;
        let mut segs = Segs::from_vec(bufs.to_vec());
        let mut pos = offset;
        while segs.len() > 0 {
            let (grain, in_grain) = (pos / gb, pos % gb);
            let n = ((gb - in_grain) as usize).min(segs.len());
            let data = segs.take(n);
            let gte = self.entry(grain)?;
            if self.zero_grain(gte) {
                if in_grain == 0 && n as u64 == gb {
                    self.allocate_grain(grain, &data)?;
                } else {
                    let mut whole = vec![0u8; gb as usize];
                    whole[in_grain as usize..in_grain as usize + n].copy_from_slice(&gather(&data));
                    self.allocate_grain(grain, &[&whole])?;
                }
            } else {
                let at = self.grain_offset(gte, grain, gb)?;
                if at < self.header.overhead * SECTOR {
                    return Err(Error::new(
                        ErrorKind::Corrupt,
                        format!("grain {grain} at sector {gte} overlaps the metadata"),
                    ));
                }
                pwritev_all(&self.file, &data, at + in_grain)
                    .map_err(|e| Error::io(e, "writing grain").with_offset(at + in_grain))?;
            }
            pos += n as u64;
        }
        Ok(())
    }

    /// Makes `len` bytes at `offset` read as zeroes; unallocated grains stay unallocated.
    /// Works table by table so that zeroing a huge, mostly empty range stays cheap.
    pub fn write_zeroes(&mut self, offset: u64, len: u64) -> Result<()> {
        self.check_writable()?;
        let gb = self.layout.grain_bytes;
        let gtes = self.layout.gtes_per_gt;
        let end = offset + len;
        let zeroes = vec![0u8; gb as usize];
        let mut pos = offset;
        while pos < end {
            let gd_index = pos / self.layout.gt_coverage();
            let table_end = ((gd_index + 1) * self.layout.gt_coverage()).min(end);
            let Some(gt) = self.grain_table(gd_index)?.cloned() else {
                pos = table_end;
                continue;
            };
            for grain in pos / gb..=(table_end - 1) / gb {
                if self.zero_grain(gt[(grain % gtes) as usize]) {
                    continue;
                }
                let from = (grain * gb).max(pos);
                let to = ((grain + 1) * gb).min(table_end);
                self.write_segs(&[&zeroes[..(to - from) as usize]], from)?;
            }
            pos = table_end;
        }
        Ok(())
    }

    /// Appends `data` (a whole number of sectors) at the end of the file and returns its
    /// offset.
    fn append(&mut self, data: &[&[u8]]) -> Result<u64> {
        let at = self.file_end;
        pwritev_all(&self.file, data, at)
            .map_err(|e| Error::io(e, "writing new grain").with_offset(at))?;
        let len: u64 = data.iter().map(|d| d.len() as u64).sum();
        self.file_end = at + len.div_ceil(SECTOR) * SECTOR;
        Ok(at)
    }

    fn allocate_grain(&mut self, grain: u64, data: &[&[u8]]) -> Result<()> {
        let gtes = self.layout.gtes_per_gt;
        let gd_index = grain / gtes;
        if self.gd[gd_index as usize] == 0 {
            self.allocate_table(gd_index)?;
        }
        let at = self.append(data)?;
        let sector = sector_u32(at)?;
        let gt_slot = 4 * (grain % gtes);
        let gt_at = u64::from(self.gd[gd_index as usize]) * SECTOR + gt_slot;
        write_at(
            &self.file,
            &sector.to_le_bytes(),
            gt_at,
            "grain table entry",
        )?;
        if let Some(rgd) = &self.rgd {
            let rgt = u64::from(rgd[gd_index as usize]);
            if rgt != 0 {
                let rgt_at = sectors_in_file(
                    rgt,
                    self.layout.gt_bytes(),
                    self.file_end,
                    &format!("redundant grain directory entry {gd_index}"),
                    self.layout.rgd_offset.unwrap_or(0) + 4 * gd_index,
                )?;
                write_at(
                    &self.file,
                    &sector.to_le_bytes(),
                    rgt_at + gt_slot,
                    "redundant grain table entry",
                )?;
            }
        }
        if let Some(gt) = self.grain_table(gd_index)? {
            gt[(grain % gtes) as usize] = sector;
        }
        Ok(())
    }

    /// Allocates a zeroed grain table (and its redundant copy) for directory entry `gd_index`.
    fn allocate_table(&mut self, gd_index: u64) -> Result<()> {
        let zeroes = vec![0u8; self.layout.gt_bytes() as usize];
        let at = sector_u32(self.append(&[&zeroes])?)?;
        if let Some(rgd_off) = self.layout.rgd_offset {
            if self.rgd.is_some() {
                let rat = sector_u32(self.append(&[&zeroes])?)?;
                write_at(
                    &self.file,
                    &rat.to_le_bytes(),
                    rgd_off + 4 * gd_index,
                    "redundant grain directory",
                )?;
                if let Some(rgd) = &mut self.rgd {
                    rgd[gd_index as usize] = rat;
                }
            }
        }
        let gd_at = self.layout.gd_offset + 4 * gd_index;
        write_at(&self.file, &at.to_le_bytes(), gd_at, "grain directory")?;
        self.gd[gd_index as usize] = at;
        self.gt_cache.remove(&gd_index);
        Ok(())
    }
}

/// A byte offset as a u32 sector number (sparse extents address at most 2 TiB of file).
fn sector_u32(at: u64) -> Result<u32> {
    u32::try_from(at / SECTOR).map_err(|_| {
        Error::new(
            ErrorKind::Unsupported,
            "sparse extent file would grow beyond 2 TiB",
        )
    })
}

fn read_directory(file: &File, at: u64, entries: u64, what: &str) -> Result<Vec<u32>> {
    let mut raw = vec![0u8; (entries * 4) as usize];
    read_at(file, &mut raw, at, what)?;
    Ok(u32s_from_le(&raw))
}
