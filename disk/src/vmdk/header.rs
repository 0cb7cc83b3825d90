//! The hosted sparse extent header ("KDMV") and stream-optimized markers.
//!
//! Every field is checked against the extent file's length before anything is allocated from
//! it; errors name the field and carry its byte offset in the header.

use crate::{Error, ErrorKind, Result};

/// Bytes in a sector; every vmdk offset and size is counted in sectors.
pub const SECTOR: u64 = 512;
/// The sparse extent magic, "KDMV" as stored on disk.
pub const MAGIC: [u8; 4] = *b"KDMV";
/// The magic of ESX "COWD" sparse extents (not supported).
pub const COWD_MAGIC: [u8; 4] = *b"COWD";
/// Header `gdOffset` value meaning "the grain directory is described by the footer".
pub const GD_AT_END: u64 = u64::MAX;

/// Flag: the newline-detection characters are valid.
pub const FLAG_NEWLINE_TEST: u32 = 1 << 0;
/// Flag: a redundant grain directory and grain tables are kept.
pub const FLAG_RGD: u32 = 1 << 1;
/// Flag: a grain table entry of 1 means "this grain reads as zeroes".
pub const FLAG_ZERO_GRAIN: u32 = 1 << 2;
/// Flag: grains are compressed.
pub const FLAG_COMPRESSED: u32 = 1 << 16;
/// Flag: the extent contains stream markers.
pub const FLAG_MARKERS: u32 = 1 << 17;
/// `compressAlgorithm` value for deflate.
pub const COMPRESS_DEFLATE: u16 = 1;

/// Largest grain accepted, in sectors (1 MiB).
pub const MAX_GRAIN_SECTORS: u64 = 2048;
/// Largest grain table accepted, in entries.
pub const MAX_GTES_PER_GT: u32 = 4096;
/// Largest embedded descriptor accepted, in sectors (1 MiB).
pub const MAX_DESCRIPTOR_SECTORS: u64 = 2048;
/// Largest grain directory accepted, in entries (64 MiB of directory).
pub const MAX_GD_ENTRIES: u64 = 1 << 24;
/// Largest virtual size accepted, in sectors (2^55 bytes).
pub const MAX_CAPACITY_SECTORS: u64 = 1 << 46;

/// Grain table entry meaning "zero grain" when [`FLAG_ZERO_GRAIN`] is set.
pub const GTE_ZERO: u32 = 1;

/// Marker type: end of stream.
pub const MARKER_EOS: u32 = 0;
/// Marker type: a grain table follows.
pub const MARKER_GT: u32 = 1;
/// Marker type: a grain directory follows.
pub const MARKER_GD: u32 = 2;
/// Marker type: the footer (a copy of the header) follows.
pub const MARKER_FOOTER: u32 = 3;

/// Byte offsets of the header fields, used in error messages.
mod field {
    pub const VERSION: u64 = 4;
    pub const FLAGS: u64 = 8;
    pub const CAPACITY: u64 = 12;
    pub const GRAIN_SIZE: u64 = 20;
    pub const DESCRIPTOR_OFFSET: u64 = 28;
    pub const DESCRIPTOR_SIZE: u64 = 36;
    pub const NUM_GTES_PER_GT: u64 = 44;
    pub const RGD_OFFSET: u64 = 48;
    pub const GD_OFFSET: u64 = 56;
    pub const OVERHEAD: u64 = 64;
    pub const NEWLINE_CHARS: u64 = 73;
    pub const COMPRESS_ALGORITHM: u64 = 77;
}

/// A decoded hosted sparse extent header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SparseHeader {
    /// Format version, 1 to 3.
    pub version: u32,
    /// `FLAG_*` bits.
    pub flags: u32,
    /// Virtual size of the extent in sectors.
    pub capacity: u64,
    /// Grain size in sectors.
    pub grain_size: u64,
    /// Sector of the embedded descriptor (0: none).
    pub descriptor_offset: u64,
    /// Sectors of the embedded descriptor.
    pub descriptor_size: u64,
    /// Entries per grain table.
    pub num_gtes_per_gt: u32,
    /// Sector of the redundant grain directory.
    pub rgd_offset: u64,
    /// Sector of the grain directory, or [`GD_AT_END`].
    pub gd_offset: u64,
    /// Sectors of metadata before the first grain.
    pub overhead: u64,
    /// Set while a writer has the extent open.
    pub unclean_shutdown: bool,
    /// [`COMPRESS_DEFLATE`] or 0.
    pub compress_algorithm: u16,
}

fn le32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn le64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

fn bad(kind: ErrorKind, name: &str, at: u64, why: String) -> Error {
    Error::new(kind, format!("{name}: {why}")).with_offset(at)
}

/// The geometry derived from a validated header, in bytes and entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Virtual size in bytes.
    pub capacity_bytes: u64,
    /// Grain size in bytes.
    pub grain_bytes: u64,
    /// Entries per grain table.
    pub gtes_per_gt: u64,
    /// Grain directory entries.
    pub gd_entries: u64,
    /// File offset of the grain directory.
    pub gd_offset: u64,
    /// File offset of the redundant grain directory, if one is kept.
    pub rgd_offset: Option<u64>,
}

impl Layout {
    /// Bytes of one grain table.
    pub fn gt_bytes(&self) -> u64 {
        self.gtes_per_gt * 4
    }

    /// Bytes of virtual disk covered by one grain table.
    pub fn gt_coverage(&self) -> u64 {
        self.gtes_per_gt * self.grain_bytes
    }
}

impl SparseHeader {
    /// Decodes a header. `InvalidFormat` if the magic is wrong, `Unsupported` for COWD or
    /// unknown versions.
    pub fn parse(buf: &[u8; 512]) -> Result<SparseHeader> {
        if buf[0..4] == COWD_MAGIC {
            return Err(Error::new(
                ErrorKind::Unsupported,
                "ESX COWD sparse extents are not supported",
            ));
        }
        if buf[0..4] != MAGIC {
            return Err(
                Error::new(ErrorKind::InvalidFormat, "sparse extent magic is not KDMV")
                    .with_offset(0),
            );
        }
        let h = SparseHeader {
            version: le32(buf, 4),
            flags: le32(buf, 8),
            capacity: le64(buf, 12),
            grain_size: le64(buf, 20),
            descriptor_offset: le64(buf, 28),
            descriptor_size: le64(buf, 36),
            num_gtes_per_gt: le32(buf, 44),
            rgd_offset: le64(buf, 48),
            gd_offset: le64(buf, 56),
            overhead: le64(buf, 64),
            unclean_shutdown: buf[72] != 0,
            compress_algorithm: u16::from_le_bytes([buf[77], buf[78]]),
        };
        if !(1..=3).contains(&h.version) {
            return Err(bad(
                ErrorKind::Unsupported,
                "header field version",
                field::VERSION,
                format!("version {} is not 1, 2 or 3", h.version),
            ));
        }
        if h.flags & FLAG_NEWLINE_TEST != 0 && buf[73..77] != *b"\n \r\n" {
            return Err(bad(
                ErrorKind::Corrupt,
                "header field newline characters",
                field::NEWLINE_CHARS,
                "damaged by a text-mode transfer".into(),
            ));
        }
        Ok(h)
    }

    /// Encodes the header into one sector.
    pub fn to_bytes(&self) -> [u8; 512] {
        let mut b = [0u8; 512];
        b[0..4].copy_from_slice(&MAGIC);
        b[4..8].copy_from_slice(&self.version.to_le_bytes());
        b[8..12].copy_from_slice(&self.flags.to_le_bytes());
        b[12..20].copy_from_slice(&self.capacity.to_le_bytes());
        b[20..28].copy_from_slice(&self.grain_size.to_le_bytes());
        b[28..36].copy_from_slice(&self.descriptor_offset.to_le_bytes());
        b[36..44].copy_from_slice(&self.descriptor_size.to_le_bytes());
        b[44..48].copy_from_slice(&self.num_gtes_per_gt.to_le_bytes());
        b[48..56].copy_from_slice(&self.rgd_offset.to_le_bytes());
        b[56..64].copy_from_slice(&self.gd_offset.to_le_bytes());
        b[64..72].copy_from_slice(&self.overhead.to_le_bytes());
        b[72] = u8::from(self.unclean_shutdown);
        b[73..77].copy_from_slice(b"\n \r\n");
        b[77..79].copy_from_slice(&self.compress_algorithm.to_le_bytes());
        b
    }

    /// Whether grains are compressed.
    pub fn compressed(&self) -> bool {
        self.flags & FLAG_COMPRESSED != 0
    }

    /// Whether grains are preceded by markers.
    pub fn markers(&self) -> bool {
        self.flags & FLAG_MARKERS != 0
    }

    /// The embedded descriptor's byte range, if any, checked against `file_len`.
    pub fn descriptor_range(&self, file_len: u64) -> Result<Option<(u64, u64)>> {
        if self.descriptor_offset == 0 || self.descriptor_size == 0 {
            return Ok(None);
        }
        if self.descriptor_size > MAX_DESCRIPTOR_SECTORS {
            return Err(bad(
                ErrorKind::Unsupported,
                "header field descriptorSize",
                field::DESCRIPTOR_SIZE,
                format!(
                    "{} sectors exceeds the limit of {MAX_DESCRIPTOR_SECTORS}",
                    self.descriptor_size
                ),
            ));
        }
        let start = sectors_in_file(
            self.descriptor_offset,
            self.descriptor_size * SECTOR,
            file_len,
            "header field descriptorOffset",
            field::DESCRIPTOR_OFFSET,
        )?;
        // A descriptor may be shorter than its reserved area if the file was truncated after
        // it; read only what the file holds.
        let len = (self.descriptor_size * SECTOR).min(file_len - start);
        Ok(Some((start, len)))
    }

    /// Validates the fields that size the grain directory and tables against `file_len`.
    /// `gd_offset` must already be resolved (not [`GD_AT_END`]).
    pub fn layout(&self, file_len: u64) -> Result<Layout> {
        self.check_scalars(file_len)?;
        let grain_bytes = self.grain_size * SECTOR;
        let gtes = u64::from(self.num_gtes_per_gt);
        let coverage = self.grain_size * gtes;
        let gd_entries = self.capacity.div_ceil(coverage);
        if gd_entries > MAX_GD_ENTRIES {
            return Err(bad(
                ErrorKind::Unsupported,
                "header field capacity",
                field::CAPACITY,
                format!("needs {gd_entries} grain directory entries (limit {MAX_GD_ENTRIES})"),
            ));
        }
        let gd_bytes = gd_entries * 4;
        let gd_offset = sectors_in_file(
            self.gd_offset,
            gd_bytes,
            file_len,
            "header field gdOffset",
            field::GD_OFFSET,
        )?;
        let rgd_offset = if self.flags & FLAG_RGD != 0 && self.rgd_offset != 0 {
            Some(sectors_in_file(
                self.rgd_offset,
                gd_bytes,
                file_len,
                "header field rgdOffset",
                field::RGD_OFFSET,
            )?)
        } else {
            None
        };
        Ok(Layout {
            capacity_bytes: self.capacity * SECTOR,
            grain_bytes,
            gtes_per_gt: gtes,
            gd_entries,
            gd_offset,
            rgd_offset,
        })
    }

    fn check_scalars(&self, file_len: u64) -> Result<()> {
        if self.capacity > MAX_CAPACITY_SECTORS {
            return Err(bad(
                ErrorKind::Unsupported,
                "header field capacity",
                field::CAPACITY,
                format!("{} sectors is too large", self.capacity),
            ));
        }
        if self.grain_size == 0
            || !self.grain_size.is_power_of_two()
            || self.grain_size > MAX_GRAIN_SECTORS
        {
            return Err(bad(
                ErrorKind::Unsupported,
                "header field grainSize",
                field::GRAIN_SIZE,
                format!(
                    "{} sectors is not a power of two up to {MAX_GRAIN_SECTORS}",
                    self.grain_size
                ),
            ));
        }
        if self.num_gtes_per_gt == 0 || self.num_gtes_per_gt > MAX_GTES_PER_GT {
            return Err(bad(
                ErrorKind::Unsupported,
                "header field numGTEsPerGT",
                field::NUM_GTES_PER_GT,
                format!(
                    "{} is not between 1 and {MAX_GTES_PER_GT}",
                    self.num_gtes_per_gt
                ),
            ));
        }
        if self
            .overhead
            .checked_mul(SECTOR)
            .is_none_or(|b| b > file_len)
        {
            return Err(bad(
                ErrorKind::Corrupt,
                "header field overHead",
                field::OVERHEAD,
                format!(
                    "{} sectors lies beyond the end of the file ({file_len} bytes)",
                    self.overhead
                ),
            ));
        }
        if self.compressed() && self.compress_algorithm != COMPRESS_DEFLATE {
            return Err(bad(
                ErrorKind::Unsupported,
                "header field compressAlgorithm",
                field::COMPRESS_ALGORITHM,
                format!("algorithm {} is not deflate", self.compress_algorithm),
            ));
        }
        if self.flags
            & !(FLAG_NEWLINE_TEST | FLAG_RGD | FLAG_ZERO_GRAIN | FLAG_COMPRESSED | FLAG_MARKERS)
            != 0
        {
            return Err(bad(
                ErrorKind::Unsupported,
                "header field flags",
                field::FLAGS,
                format!("unknown flags {:#x}", self.flags),
            ));
        }
        Ok(())
    }
}

/// Checks that `len` bytes at sector `sector` lie inside the file (after the header) and returns
/// the byte offset.
pub fn sectors_in_file(sector: u64, len: u64, file_len: u64, name: &str, at: u64) -> Result<u64> {
    let start = sector.checked_mul(SECTOR);
    match start.and_then(|s| s.checked_add(len).map(|e| (s, e))) {
        Some((s, e)) if sector >= 1 && e <= file_len => Ok(s),
        _ => Err(bad(
            ErrorKind::Corrupt,
            name,
            at,
            format!("sector {sector} + {len} bytes lies outside the file ({file_len} bytes)"),
        )),
    }
}

/// A stream-optimized marker: a grain (`size != 0`) or a metadata marker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Marker {
    /// The grain's first virtual sector, or the metadata's length in sectors.
    pub val: u64,
    /// Compressed grain bytes following (0 for metadata markers).
    pub size: u32,
    /// `MARKER_*` type of a metadata marker.
    pub kind: u32,
}

impl Marker {
    /// Decodes the first 16 bytes of a marker.
    pub fn parse(buf: &[u8; 16]) -> Marker {
        Marker {
            val: le64(buf, 0),
            size: le32(buf, 8),
            kind: le32(buf, 12),
        }
    }

    /// A full-sector metadata marker.
    pub fn metadata(kind: u32, sectors: u64) -> [u8; 512] {
        let mut b = [0u8; 512];
        b[0..8].copy_from_slice(&sectors.to_le_bytes());
        b[12..16].copy_from_slice(&kind.to_le_bytes());
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> SparseHeader {
        SparseHeader {
            version: 1,
            flags: FLAG_NEWLINE_TEST | FLAG_RGD,
            capacity: 2048,
            grain_size: 128,
            descriptor_offset: 1,
            descriptor_size: 20,
            num_gtes_per_gt: 512,
            rgd_offset: 21,
            gd_offset: 30,
            overhead: 128,
            unclean_shutdown: false,
            compress_algorithm: 0,
        }
    }

    #[test]
    fn test_header_roundtrip_preserves_fields() {
        let h = sample();
        let parsed = SparseHeader::parse(&h.to_bytes()).unwrap();
        assert_eq!(parsed, h);
    }

    #[test]
    fn test_header_bad_magic_invalid_format() {
        let mut b = sample().to_bytes();
        b[0] = b'X';
        let err = SparseHeader::parse(&b).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidFormat);
    }

    #[test]
    fn test_header_huge_gd_in_tiny_file_refused() {
        let mut h = sample();
        h.capacity = MAX_CAPACITY_SECTORS;
        h.grain_size = 1;
        h.num_gtes_per_gt = 1;
        let err = h.layout(64 * 1024).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unsupported);
        assert!(err.to_string().contains("capacity"), "{err}");
    }

    #[test]
    fn test_header_gd_beyond_file_names_field_and_offset() {
        let mut h = sample();
        h.capacity = 1 << 30;
        let err = h.layout(64 * 1024).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Corrupt);
        assert!(err.to_string().contains("rgdOffset") || err.to_string().contains("gdOffset"));
        assert_eq!(err.offset(), Some(field::GD_OFFSET));
    }

    #[test]
    fn test_header_zero_grain_size_refused() {
        let mut h = sample();
        h.grain_size = 0;
        let err = h.layout(1 << 20).unwrap_err();
        assert!(err.to_string().contains("grainSize"), "{err}");
        assert_eq!(err.offset(), Some(field::GRAIN_SIZE));
    }

    #[test]
    fn test_header_newline_damage_detected() {
        let mut b = sample().to_bytes();
        b[75] = b'\n';
        let err = SparseHeader::parse(&b).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Corrupt);
    }

    #[test]
    fn test_marker_parse_reads_fields() {
        let m = Marker::metadata(MARKER_GT, 4);
        let mut b = [0u8; 16];
        b.copy_from_slice(&m[..16]);
        assert_eq!(
            Marker::parse(&b),
            Marker {
                val: 4,
                size: 0,
                kind: MARKER_GT
            }
        );
    }
}
