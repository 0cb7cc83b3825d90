//! A streamOptimized vmdk writer for conversion that takes grains already compressed, so
//! that compression can run on several threads.
//!
//! The layout is the one `vmdk::stream::StreamWriter` writes (header with the directory at
//! the end, embedded descriptor, grains behind grain markers, each grain table behind a GT
//! marker after its grains, GD marker and directory, footer, end-of-stream marker), built
//! from the vmdk module's public pieces.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use flate2::{Compress, Compression, FlushCompress, Status};

use crate::vmdk::create::{new_image_params, NewImage};
use crate::vmdk::descriptor::Descriptor;
use crate::vmdk::header::{
    Marker, SparseHeader, COMPRESS_DEFLATE, FLAG_COMPRESSED, FLAG_MARKERS, FLAG_NEWLINE_TEST,
    GD_AT_END, MARKER_EOS, MARKER_FOOTER, MARKER_GD, MARKER_GT, SECTOR,
};
use crate::vmdk::stream::{deflate_grain, GRAIN_SECTORS, GTES_PER_GT};
use crate::{Error, ErrorKind, Result};

/// Grain size in bytes.
pub(crate) const GRAIN: u64 = GRAIN_SECTORS * SECTOR;
/// Appended bytes buffered before one write.
const WRITE_BUFFER: usize = 2 << 20;

/// The append-only writer.
pub(crate) struct StreamOut {
    file: File,
    header: SparseHeader,
    capacity: u64,
    gd: Vec<u32>,
    gt_index: u64,
    gt: Vec<u32>,
    last_grain: Option<u64>,
    /// File offset where `pending` starts.
    append: u64,
    pending: Vec<u8>,
}

fn io(e: std::io::Error, what: &str, at: u64) -> Error {
    Error::io(e, format!("writing {what}")).with_offset(at)
}

impl StreamOut {
    /// Creates (truncates) `path` as an empty stream of `size` bytes (rounded up to sectors).
    pub(crate) fn create(path: &Path, size: u64) -> Result<StreamOut> {
        let NewImage {
            sectors,
            gd_entries,
            name,
        } = new_image_params(path, size)?;
        let desc = Descriptor::render_sparse("streamOptimized", cid(), sectors, name, "ide");
        let desc_sectors = (desc.len() as u64).div_ceil(SECTOR).max(1);
        let header = SparseHeader {
            version: 3,
            flags: FLAG_NEWLINE_TEST | FLAG_COMPRESSED | FLAG_MARKERS,
            capacity: sectors,
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
        let file = File::create(path).map_err(|e| Error::io(e, "creating file"))?;
        let mut start = header.to_bytes().to_vec();
        start.extend_from_slice(desc.as_bytes());
        start.resize(((1 + desc_sectors) * SECTOR) as usize, 0);
        Ok(StreamOut {
            file,
            header,
            capacity: sectors * SECTOR,
            gd: vec![0; gd_entries as usize],
            gt_index: 0,
            gt: vec![0; GTES_PER_GT as usize],
            last_grain: None,
            append: 0,
            pending: start,
        })
    }

    /// Virtual size in bytes.
    pub(crate) fn capacity(&self) -> u64 {
        self.capacity
    }

    fn offset(&self) -> u64 {
        self.append + self.pending.len() as u64
    }

    fn sector(&self) -> Result<u32> {
        u32::try_from(self.offset() / SECTOR)
            .map_err(|_| Error::new(ErrorKind::Unsupported, "stream would grow beyond 2 TiB"))
    }

    fn pad(&mut self) {
        let n = self.pending.len().div_ceil(SECTOR as usize) * SECTOR as usize;
        self.pending.resize(n, 0);
    }

    fn drain(&mut self) -> Result<()> {
        self.file
            .write_all_at(&self.pending, self.append)
            .map_err(|e| io(e, "stream", self.append))?;
        self.append += self.pending.len() as u64;
        self.pending.clear();
        Ok(())
    }

    /// Appends compressed grain `grain`; grains must arrive in increasing order.
    pub(crate) fn put_grain(&mut self, grain: u64, compressed: &[u8]) -> Result<()> {
        if self.last_grain.is_some_and(|g| g >= grain) || grain * GRAIN >= self.capacity {
            return Err(Error::new(
                ErrorKind::Unsupported,
                format!("stream grains must be written once, in order (grain {grain})"),
            ));
        }
        self.last_grain = Some(grain);
        let gt_index = grain / GTES_PER_GT;
        if gt_index != self.gt_index {
            self.write_gt()?;
            self.gt_index = gt_index;
        }
        let sector = self.sector()?;
        self.pending
            .extend_from_slice(&(grain * GRAIN_SECTORS).to_le_bytes());
        self.pending
            .extend_from_slice(&(compressed.len() as u32).to_le_bytes());
        self.pending.extend_from_slice(compressed);
        self.pad();
        self.gt[(grain % GTES_PER_GT) as usize] = sector;
        if self.pending.len() >= WRITE_BUFFER {
            self.drain()?;
        }
        Ok(())
    }

    fn metadata(&mut self, kind: u32, payload: &[u8]) -> Result<u32> {
        let sectors = (payload.len() as u64).div_ceil(SECTOR);
        self.pending
            .extend_from_slice(&Marker::metadata(kind, sectors));
        let sector = self.sector()?;
        self.pending.extend_from_slice(payload);
        self.pad();
        Ok(sector)
    }

    fn write_gt(&mut self) -> Result<()> {
        if self.gt.iter().all(|&e| e == 0) {
            return Ok(());
        }
        let bytes: Vec<u8> = self.gt.iter().flat_map(|e| e.to_le_bytes()).collect();
        let sector = self.metadata(MARKER_GT, &bytes)?;
        if let Some(slot) = self.gd.get_mut(self.gt_index as usize) {
            *slot = sector;
        }
        self.gt.fill(0);
        Ok(())
    }

    /// Writes the last grain table, the directory, the footer and the end-of-stream marker.
    /// Like qemu-img convert's default cache mode, nothing is forced to stable storage.
    pub(crate) fn finish(mut self) -> Result<()> {
        self.write_gt()?;
        let gd: Vec<u8> = self.gd.iter().flat_map(|e| e.to_le_bytes()).collect();
        let gd_sector = self.metadata(MARKER_GD, &gd)?;
        let mut footer = self.header.clone();
        footer.gd_offset = u64::from(gd_sector);
        self.pending
            .extend_from_slice(&Marker::metadata(MARKER_FOOTER, 1));
        self.pending.extend_from_slice(&footer.to_bytes());
        self.pending
            .extend_from_slice(&Marker::metadata(MARKER_EOS, 0));
        self.drain()?;
        let end = self.append;
        self.file
            .set_len(end)
            .map_err(|e| io(e, "stream length", end))
    }
}

/// Compresses grain `grain` of a disk of `capacity` bytes; bytes of `data` past the disk's
/// end (in the last, partial grain) are left out.
///
/// Grains whose samples do not compress (random or already compressed data) are stored in
/// deflate's uncompressed blocks: still a zlib stream every reader inflates, at a fraction
/// of the cost of running the compressor over incompressible data.
pub(crate) fn compress_grain(capacity: u64, grain: u64, data: &[u8]) -> Result<Vec<u8>> {
    let valid = capacity
        .saturating_sub(grain * GRAIN)
        .min(data.len() as u64);
    let data = &data[..valid as usize];
    if incompressible(data) {
        return zlib(data, Compression::none());
    }
    deflate_grain(data)
}

/// Bytes per sample in the incompressibility test.
const SAMPLE: usize = 4096;

/// Whether fast compression of two samples (start and middle) saves less than 3%.
fn incompressible(data: &[u8]) -> bool {
    if data.len() < 2 * SAMPLE {
        return false;
    }
    let mid = data.len() / 2;
    [&data[..SAMPLE], &data[mid..mid + SAMPLE]].iter().all(|s| {
        let mut c = Compress::new(Compression::fast(), false);
        let mut out = Vec::with_capacity(2 * SAMPLE);
        match c.compress_vec(s, &mut out, FlushCompress::Finish) {
            Ok(Status::StreamEnd) => out.len() * 100 >= SAMPLE * 97,
            _ => true,
        }
    })
}

/// A complete zlib stream of `data` at `level`.
fn zlib(data: &[u8], level: Compression) -> Result<Vec<u8>> {
    let mut c = Compress::new(level, true);
    let mut out = Vec::with_capacity(data.len() + data.len() / 64 + 64);
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

/// A content ID that is neither "no parent" nor the value QEMU uses for fresh images.
fn cid() -> u32 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let cid = now.subsec_nanos() ^ (now.as_secs() as u32).rotate_left(7);
    if cid >= 0xffff_fffe {
        0x1234_5678
    } else {
        cid
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmdk::stream::inflate_grain;

    fn noise(n: usize) -> Vec<u8> {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn test_compress_grain_random_data_stored_and_inflates() {
        let data = noise(GRAIN as usize);
        assert!(incompressible(&data));
        let z = compress_grain(1 << 30, 0, &data).expect("compress");
        assert!(
            z.len() > data.len(),
            "random data must be stored, not shrunk"
        );
        assert_eq!(inflate_grain(&z, GRAIN as usize).expect("inflate"), data);
    }

    #[test]
    fn test_compress_grain_text_compressed_and_inflates() {
        let data: Vec<u8> = (0..GRAIN as usize).map(|i| b"strata "[i % 7]).collect();
        assert!(!incompressible(&data));
        let z = compress_grain(1 << 30, 3, &data).expect("compress");
        assert!(z.len() < data.len() / 10);
        assert_eq!(inflate_grain(&z, GRAIN as usize).expect("inflate"), data);
    }

    #[test]
    fn test_compress_grain_last_partial_grain_cut_at_capacity() {
        let data = vec![7u8; GRAIN as usize];
        let z = compress_grain(GRAIN + 512, 1, &data).expect("compress");
        let back = inflate_grain(&z, GRAIN as usize).expect("inflate");
        assert_eq!(&back[..512], &data[..512]);
        assert!(back[512..].iter().all(|&b| b == 0));
    }
}
