//! Stream-optimized extents: grain (de)compression and the append-only writer.
//!
//! The writer lays a stream out the way VMware does: header (with `gdOffset` = GD_AT_END) and
//! embedded descriptor, then for each grain table its compressed grains (each behind a grain
//! marker) followed by a GT marker and the table, then a GD marker and the directory, a footer
//! marker and a copy of the header pointing at the directory, and an end-of-stream marker.
//!
//! Writes must move forward grain by grain: a write into a grain that was already sealed
//! (written out because a later grain was written) is refused with `Unsupported`. `flush`
//! writes the metadata tail so the file is a complete image; a later write truncates the tail
//! and continues, so convert-style writers can flush as often as they like.

use std::fs::File;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use super::fileio::{sync, u32s_to_le, write_at};
use super::header::{
    Marker, SparseHeader, COMPRESS_DEFLATE, FLAG_COMPRESSED, FLAG_MARKERS, FLAG_NEWLINE_TEST,
    GD_AT_END, MARKER_EOS, MARKER_FOOTER, MARKER_GD, MARKER_GT, SECTOR,
};
use crate::{Error, ErrorKind, Result};

/// Grain size of streams we write, in sectors (64 KiB, as VMware and QEMU).
pub const GRAIN_SECTORS: u64 = 128;
/// Grain table entries of streams we write.
pub const GTES_PER_GT: u64 = 512;

fn corrupt(why: impl Into<String>) -> Error {
    Error::new(ErrorKind::Corrupt, why)
}

/// Whether `input` starts with a valid zlib header (else it is raw deflate).
fn is_zlib(input: &[u8]) -> bool {
    input.len() >= 2
        && input[0] & 0x0f == 8
        && input[0] >> 4 <= 7
        && (u16::from(input[0]) << 8 | u16::from(input[1])) % 31 == 0
}

/// Decompresses one grain (zlib or raw deflate) into exactly `grain_bytes` bytes; a short
/// grain is padded with zeroes, a grain that inflates past `grain_bytes` is `Corrupt`.
pub fn inflate_grain(input: &[u8], grain_bytes: usize) -> Result<Vec<u8>> {
    let mut out = vec![0u8; grain_bytes];
    let mut d = Decompress::new(is_zlib(input));
    let status = d
        .decompress(input, &mut out, FlushDecompress::Finish)
        .map_err(|e| corrupt(format!("compressed grain does not inflate: {e}")))?;
    if status != Status::StreamEnd {
        let why = if d.total_out() as usize == grain_bytes {
            "compressed grain inflates past the grain size"
        } else {
            "compressed grain is truncated"
        };
        return Err(corrupt(why));
    }
    Ok(out)
}

/// Compresses one grain with zlib (what QEMU and VMware write).
pub fn deflate_grain(data: &[u8]) -> Result<Vec<u8>> {
    let mut c = Compress::new(Compression::default(), true);
    let mut out = Vec::with_capacity(data.len() + data.len() / 8 + 64);
    loop {
        let consumed = c.total_in() as usize;
        let status = c
            .compress_vec(&data[consumed..], &mut out, FlushCompress::Finish)
            .map_err(|e| Error::new(ErrorKind::Io, format!("compressing grain: {e}")))?;
        if status == Status::StreamEnd {
            return Ok(out);
        }
        out.reserve(out.capacity().max(1024));
    }
}

/// The append-only stream-optimized writer.
#[derive(Debug)]
pub struct StreamWriter {
    file: File,
    header: SparseHeader,
    capacity: u64,
    gd: Vec<u32>,
    gt_index: u64,
    gt: Vec<u32>,
    grain: u64,
    grain_buf: Vec<u8>,
    append: u64,
    /// Where the metadata tail written by the last `finish_tail` starts.
    tail_at: Option<u64>,
}

fn grain_bytes() -> u64 {
    GRAIN_SECTORS * SECTOR
}

impl StreamWriter {
    /// Starts a stream in `file` (already truncated) for a disk of `capacity` bytes (a
    /// multiple of 512) with the embedded `descriptor`; writes a complete empty image.
    pub fn create(file: File, capacity: u64, descriptor: &[u8]) -> Result<StreamWriter> {
        let desc_sectors = (descriptor.len() as u64).div_ceil(SECTOR).max(1);
        let header = SparseHeader {
            version: 3,
            flags: FLAG_NEWLINE_TEST | FLAG_COMPRESSED | FLAG_MARKERS,
            capacity: capacity / SECTOR,
            grain_size: GRAIN_SECTORS,
            descriptor_offset: 1,
            descriptor_size: desc_sectors,
            num_gtes_per_gt: GTES_PER_GT as u32,
            rgd_offset: 0,
            gd_offset: GD_AT_END,
            overhead: 1 + desc_sectors,
            unclean_shutdown: false,
            compress_algorithm: COMPRESS_DEFLATE,
        };
        let gd_entries = (capacity / SECTOR).div_ceil(GRAIN_SECTORS * GTES_PER_GT);
        write_at(&file, &header.to_bytes(), 0, "stream header")?;
        let mut desc = descriptor.to_vec();
        desc.resize((desc_sectors * SECTOR) as usize, 0);
        write_at(&file, &desc, SECTOR, "embedded descriptor")?;
        let mut w = StreamWriter {
            file,
            header,
            capacity,
            gd: vec![0; gd_entries as usize],
            gt_index: 0,
            gt: vec![0; GTES_PER_GT as usize],
            grain: 0,
            grain_buf: vec![0; grain_bytes() as usize],
            append: (1 + desc_sectors) * SECTOR,
            tail_at: None,
        };
        w.finish_tail()?;
        Ok(w)
    }

    /// Writes `buf` at `offset`; see the module documentation for the ordering rule.
    pub fn write(&mut self, buf: &[u8], offset: u64) -> Result<()> {
        let gb = grain_bytes();
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let (grain, in_grain) = (pos / gb, pos % gb);
            let n = ((gb - in_grain) as usize).min(buf.len() - done);
            if grain < self.grain {
                return Err(Error::new(
                    ErrorKind::Unsupported,
                    format!(
                        "streamOptimized images are written sequentially: grain {grain} was \
                         already written (now at grain {})",
                        self.grain
                    ),
                )
                .with_offset(pos));
            }
            self.reopen_tail()?;
            if grain > self.grain {
                self.seal_grain()?;
                self.move_to(grain)?;
            }
            self.grain_buf[in_grain as usize..in_grain as usize + n]
                .copy_from_slice(&buf[done..done + n]);
            done += n;
        }
        Ok(())
    }

    /// Makes `len` bytes at `offset` zero, skipping whole grains without touching them (so
    /// converting a mostly empty disk does not copy its zeroes around).
    pub fn write_zeroes(&mut self, offset: u64, len: u64) -> Result<()> {
        let gb = grain_bytes();
        let zeroes = vec![0u8; gb as usize];
        let end = offset + len;
        let mut pos = offset;
        while pos < end {
            let grain = pos / gb;
            if !pos.is_multiple_of(gb) || end < (grain + 1) * gb {
                let n = ((grain + 1) * gb).min(end) - pos;
                self.write(&zeroes[..n as usize], pos)?;
                pos += n;
                continue;
            }
            if grain < self.grain {
                // Let `write` produce the ordering error.
                return self.write(&zeroes[..1], pos);
            }
            self.reopen_tail()?;
            let last = end / gb - 1;
            if grain == self.grain {
                self.grain_buf.fill(0);
            }
            if last > self.grain {
                self.seal_grain()?;
                self.move_to(last)?;
            }
            pos = (last + 1) * gb;
        }
        Ok(())
    }

    /// Writes the metadata tail (if anything changed) and syncs the file.
    pub fn flush(&mut self) -> Result<()> {
        if self.tail_at.is_none() {
            self.finish_tail()?;
        }
        sync(&self.file)
    }

    /// Truncates a metadata tail written by an earlier flush so writing can continue.
    fn reopen_tail(&mut self) -> Result<()> {
        if let Some(at) = self.tail_at.take() {
            self.file
                .set_len(at)
                .map_err(|e| Error::io(e, "truncating stream tail").with_offset(at))?;
            self.append = at;
        }
        Ok(())
    }

    /// Compresses and appends the current grain (unless all zero) and records it in the GT.
    fn seal_grain(&mut self) -> Result<()> {
        if self.grain_buf.iter().all(|&b| b == 0) {
            return Ok(());
        }
        let valid = (self.capacity - self.grain * grain_bytes()).min(grain_bytes()) as usize;
        let data = deflate_grain(&self.grain_buf[..valid])?;
        let mut rec = Vec::with_capacity(12 + data.len() + 512);
        rec.extend_from_slice(&(self.grain * GRAIN_SECTORS).to_le_bytes());
        rec.extend_from_slice(&(data.len() as u32).to_le_bytes());
        rec.extend_from_slice(&data);
        rec.resize(
            (rec.len() as u64).div_ceil(SECTOR) as usize * SECTOR as usize,
            0,
        );
        let sector = self.sector_of_append()?;
        write_at(&self.file, &rec, self.append, "compressed grain")?;
        self.append += rec.len() as u64;
        self.gt[(self.grain % GTES_PER_GT) as usize] = sector;
        Ok(())
    }

    /// Moves to `grain`, writing out the current grain table if `grain` is in another one.
    fn move_to(&mut self, grain: u64) -> Result<()> {
        let gt_index = grain / GTES_PER_GT;
        if gt_index != self.gt_index {
            if let Some(sector) = self.write_gt()? {
                self.gd[self.gt_index as usize] = sector;
            }
            self.gt.fill(0);
            self.gt_index = gt_index;
        }
        self.grain = grain;
        self.grain_buf.fill(0);
        Ok(())
    }

    /// Appends the current grain table behind a GT marker, if it has any entry.
    fn write_gt(&mut self) -> Result<Option<u32>> {
        if self.gt.iter().all(|&e| e == 0) {
            return Ok(None);
        }
        let bytes = u32s_to_le(&self.gt);
        self.append_metadata(MARKER_GT, &bytes).map(Some)
    }

    /// Appends a metadata marker and its payload (padded to sectors); returns the payload's
    /// sector.
    fn append_metadata(&mut self, kind: u32, payload: &[u8]) -> Result<u32> {
        let sectors = (payload.len() as u64).div_ceil(SECTOR);
        write_at(
            &self.file,
            &Marker::metadata(kind, sectors),
            self.append,
            "marker",
        )?;
        self.append += SECTOR;
        let sector = self.sector_of_append()?;
        let mut padded = payload.to_vec();
        padded.resize((sectors * SECTOR) as usize, 0);
        write_at(&self.file, &padded, self.append, "stream metadata")?;
        self.append += padded.len() as u64;
        Ok(sector)
    }

    fn sector_of_append(&self) -> Result<u32> {
        u32::try_from(self.append / SECTOR)
            .map_err(|_| Error::new(ErrorKind::Unsupported, "stream would grow beyond 2 TiB"))
    }

    /// Writes pending grain, grain table, directory, footer and end-of-stream marker, leaving
    /// the in-memory state able to continue after [`Self::reopen_tail`].
    fn finish_tail(&mut self) -> Result<()> {
        let tail_at = self.append;
        let saved_gt = self.gt.clone();
        let saved_gde = self.gd.get(self.gt_index as usize).copied();
        let result = self.write_tail();
        self.gt = saved_gt;
        if let (Some(v), Some(slot)) = (saved_gde, self.gd.get_mut(self.gt_index as usize)) {
            *slot = v;
        }
        self.append = tail_at;
        result?;
        self.tail_at = Some(tail_at);
        Ok(())
    }

    fn write_tail(&mut self) -> Result<()> {
        self.seal_grain()?;
        if let Some(sector) = self.write_gt()? {
            if let Some(slot) = self.gd.get_mut(self.gt_index as usize) {
                *slot = sector;
            }
        }
        let gd_bytes = u32s_to_le(&self.gd);
        let gd_sector = self.append_metadata(MARKER_GD, &gd_bytes)?;
        let mut footer = self.header.clone();
        footer.gd_offset = u64::from(gd_sector);
        write_at(
            &self.file,
            &Marker::metadata(MARKER_FOOTER, 1),
            self.append,
            "footer marker",
        )?;
        write_at(
            &self.file,
            &footer.to_bytes(),
            self.append + SECTOR,
            "footer",
        )?;
        write_at(
            &self.file,
            &Marker::metadata(MARKER_EOS, 0),
            self.append + 2 * SECTOR,
            "end-of-stream marker",
        )?;
        let end = self.append + 3 * SECTOR;
        self.file
            .set_len(end)
            .map_err(|e| Error::io(e, "setting stream length").with_offset(end))
    }
}

impl Drop for StreamWriter {
    /// Completes the stream if writes happened since the last flush. Errors cannot be
    /// reported here: call `flush` to see them.
    fn drop(&mut self) {
        if self.tail_at.is_none() {
            let _ = self.finish_tail();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_inflate_roundtrip_restores_grain() {
        let data: Vec<u8> = (0..65536u32).map(|i| (i % 251) as u8).collect();
        let z = deflate_grain(&data).unwrap();
        assert_eq!(inflate_grain(&z, 65536).unwrap(), data);
    }

    #[test]
    fn test_inflate_raw_deflate_accepted() {
        let mut c = Compress::new(Compression::default(), false);
        let mut out = Vec::with_capacity(1024);
        c.compress_vec(&[7u8; 512], &mut out, FlushCompress::Finish)
            .unwrap();
        let grain = inflate_grain(&out, 1024).unwrap();
        assert_eq!(&grain[..512], &[7u8; 512][..]);
        assert_eq!(&grain[512..], &[0u8; 512][..]);
    }

    #[test]
    fn test_inflate_oversized_grain_corrupt() {
        let z = deflate_grain(&[1u8; 4096]).unwrap();
        let err = inflate_grain(&z, 1024).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Corrupt);
    }

    #[test]
    fn test_inflate_truncated_grain_corrupt() {
        let z = deflate_grain(&[3u8; 4096]).unwrap();
        let err = inflate_grain(&z[..z.len() / 2], 4096).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Corrupt);
    }
}
