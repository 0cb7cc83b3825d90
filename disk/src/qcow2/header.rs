//! The qcow2 header and its extensions: parsing with every field bounds-checked, and
//! serialisation for image creation.

use crate::{Error, ErrorKind, Result};

/// "QFI\xfb".
pub(crate) const MAGIC: u32 = 0x5146_49fb;
/// Size of the fixed version-2 header.
pub(crate) const V2_HEADER_LEN: u32 = 72;
/// Size of the version-3 header including the compression type byte and padding.
pub(crate) const V3_HEADER_LEN: u32 = 112;

/// Incompatible feature: the refcounts may be stale (lazy refcounts).
pub(crate) const INCOMPAT_DIRTY: u64 = 1 << 0;
/// Incompatible feature: metadata was found corrupt.
pub(crate) const INCOMPAT_CORRUPT: u64 = 1 << 1;
/// Incompatible feature: guest data lives in an external file.
pub(crate) const INCOMPAT_DATA_FILE: u64 = 1 << 2;
/// Incompatible feature: the compression type field is meaningful.
pub(crate) const INCOMPAT_COMPRESSION: u64 = 1 << 3;
/// Incompatible feature: L2 entries carry subcluster bitmaps.
pub(crate) const INCOMPAT_EXTL2: u64 = 1 << 4;
/// Compatible feature: lazy refcounts.
pub(crate) const COMPAT_LAZY_REFCOUNTS: u64 = 1 << 0;

const EXT_END: u32 = 0;
const EXT_BACKING_FORMAT: u32 = 0xe279_2aca;
const EXT_FEATURE_TABLE: u32 = 0x6803_f857;
const EXT_ENCRYPTION: u32 = 0x0537_be77;
const EXT_DATA_FILE: u32 = 0x4441_5441;

/// Upper bound on the L1 table, as QEMU (32 MiB).
pub(crate) const MAX_L1_BYTES: u64 = 32 << 20;
/// Upper bound on the refcount table, as QEMU (8 MiB).
pub(crate) const MAX_REFTABLE_BYTES: u64 = 8 << 20;
/// Upper bound on the snapshot count, as QEMU.
pub(crate) const MAX_SNAPSHOTS: u32 = 65536;
/// Upper bound on the virtual size, as QEMU (32 MiB of L1 with 2 MiB clusters is far more).
pub(crate) const MAX_VIRTUAL_SIZE: u64 = 1 << 62;

/// Compression algorithm for compressed clusters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum CompressionType {
    /// Raw deflate with a 4 KiB window, the qcow2 default.
    #[default]
    Zlib,
    /// Zstandard (qcow2 v3 only).
    Zstd,
}

/// The decoded header of a qcow2 image.
#[derive(Clone, Debug)]
pub(crate) struct Header {
    pub version: u32,
    pub backing_file_offset: u64,
    pub backing_file_size: u32,
    pub cluster_bits: u32,
    pub size: u64,
    pub l1_size: u32,
    pub l1_table_offset: u64,
    pub refcount_table_offset: u64,
    pub refcount_table_clusters: u32,
    pub nb_snapshots: u32,
    pub snapshots_offset: u64,
    pub incompatible: u64,
    pub compatible: u64,
    pub autoclear: u64,
    pub refcount_order: u32,
    pub header_length: u32,
    pub compression: CompressionType,
    pub backing_file: Option<String>,
    pub backing_format: Option<String>,
}

fn be32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_be_bytes(a)
}

fn be64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}

fn invalid(field: &str, at: u64, why: impl std::fmt::Display) -> Error {
    Error::new(
        ErrorKind::InvalidFormat,
        format!("header field {field} (byte {at}): {why}"),
    )
    .with_offset(at)
    .with_operation("open")
}

fn unsupported(msg: impl Into<String>) -> Error {
    Error::new(ErrorKind::Unsupported, msg).with_operation("open")
}

/// Bytes of an image read first when opening it: the header and its extensions of an image
/// with the default 64 KiB clusters, in one read.
const FIRST_READ: u64 = 64 << 10;

/// The image's first cluster (all of the file if it is shorter): what [`Header::parse`] reads.
/// Reads 64 KiB, and the rest of the cluster only if the header names a larger one, instead
/// of the largest possible cluster (2 MiB): on a cold host cache that read alone cost
/// milliseconds of a VM's start-up (docs/benchmarks.md, virtio-blk boot).
pub(crate) fn read_first_cluster(file: &std::fs::File, file_len: u64) -> std::io::Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let mut first = vec![0u8; file_len.min(FIRST_READ) as usize];
    file.read_exact_at(&mut first, 0)?;
    if first.len() >= 24 {
        let bits = be32(&first, 20);
        if (9..=21).contains(&bits) {
            let want = file_len.min(1u64 << bits) as usize;
            if want > first.len() {
                let have = first.len();
                first.resize(want, 0);
                file.read_exact_at(&mut first[have..], have as u64)?;
            }
        }
    }
    Ok(first)
}

impl Header {
    /// Size of one cluster in bytes.
    pub fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    /// Entries per L2 table.
    pub fn l2_entries(&self) -> u64 {
        self.cluster_size() / 8
    }

    /// Width of one refcount in bits.
    pub fn refcount_bits(&self) -> u32 {
        1 << self.refcount_order
    }

    /// L1 entries needed to map `size` bytes.
    pub fn l1_entries_for(&self, size: u64) -> u64 {
        size.div_ceil(self.cluster_size() * self.l2_entries())
    }

    /// Parses and validates a header from the first cluster of a file of `file_len` bytes.
    /// `buf` holds the file's first bytes (up to one maximum-size cluster).
    pub fn parse(buf: &[u8], file_len: u64) -> Result<Header> {
        if buf.len() < V2_HEADER_LEN as usize {
            return Err(Error::new(
                ErrorKind::InvalidFormat,
                format!("file is {} bytes, shorter than a qcow2 header", buf.len()),
            ));
        }
        if be32(buf, 0) != MAGIC {
            return Err(invalid("magic", 0, "not a qcow2 image"));
        }
        let version = be32(buf, 4);
        if version != 2 && version != 3 {
            return Err(unsupported(format!(
                "qcow2 version {version} (expected 2 or 3)"
            )));
        }
        let cluster_bits = be32(buf, 20);
        if !(9..=21).contains(&cluster_bits) {
            return Err(invalid(
                "cluster_bits",
                20,
                format!("{cluster_bits} is outside 9..=21"),
            ));
        }
        if be32(buf, 32) != 0 {
            return Err(unsupported("encrypted qcow2 images are not supported"));
        }
        let mut h = Header {
            version,
            backing_file_offset: be64(buf, 8),
            backing_file_size: be32(buf, 16),
            cluster_bits,
            size: be64(buf, 24),
            l1_size: be32(buf, 36),
            l1_table_offset: be64(buf, 40),
            refcount_table_offset: be64(buf, 48),
            refcount_table_clusters: be32(buf, 56),
            nb_snapshots: be32(buf, 60),
            snapshots_offset: be64(buf, 64),
            incompatible: 0,
            compatible: 0,
            autoclear: 0,
            refcount_order: 4,
            header_length: V2_HEADER_LEN,
            compression: CompressionType::Zlib,
            backing_file: None,
            backing_format: None,
        };
        if version == 3 {
            h.parse_v3(buf)?;
        }
        h.validate(file_len)?;
        h.parse_extensions(buf)?;
        h.parse_backing_name(buf)?;
        Ok(h)
    }

    fn parse_v3(&mut self, buf: &[u8]) -> Result<()> {
        if buf.len() < 104 {
            return Err(invalid(
                "header_length",
                100,
                "file too short for a version 3 header",
            ));
        }
        self.incompatible = be64(buf, 72);
        self.compatible = be64(buf, 80);
        self.autoclear = be64(buf, 88);
        self.refcount_order = be32(buf, 96);
        self.header_length = be32(buf, 100);
        if self.header_length < 104 || self.header_length as u64 > self.cluster_size() {
            return Err(invalid(
                "header_length",
                100,
                format!("{} is outside 104..=cluster size", self.header_length),
            ));
        }
        if self.header_length as usize > buf.len() {
            return Err(invalid(
                "header_length",
                100,
                "extends beyond the end of the file",
            ));
        }
        if self.refcount_order > 6 {
            return Err(invalid(
                "refcount_order",
                96,
                format!("{} is above 6 (64-bit refcounts)", self.refcount_order),
            ));
        }
        let known = INCOMPAT_DIRTY
            | INCOMPAT_CORRUPT
            | INCOMPAT_DATA_FILE
            | INCOMPAT_COMPRESSION
            | INCOMPAT_EXTL2;
        if self.incompatible & !known != 0 {
            return Err(unsupported(format!(
                "unknown incompatible feature bits {:#x}",
                self.incompatible & !known
            )));
        }
        if self.incompatible & INCOMPAT_DATA_FILE != 0 {
            return Err(unsupported(
                "qcow2 images with an external data file are not supported",
            ));
        }
        if self.incompatible & INCOMPAT_EXTL2 != 0 {
            return Err(unsupported(
                "qcow2 extended L2 entries (subclusters) are not supported",
            ));
        }
        let ctype = if self.header_length > 104 {
            buf[104]
        } else {
            0
        };
        self.compression = match ctype {
            0 => CompressionType::Zlib,
            1 => CompressionType::Zstd,
            t => return Err(unsupported(format!("compression type {t}"))),
        };
        if (ctype != 0) != (self.incompatible & INCOMPAT_COMPRESSION != 0) {
            return Err(invalid(
                "compression_type",
                104,
                "does not agree with incompatible feature bit 3",
            ));
        }
        Ok(())
    }

    fn validate(&self, file_len: u64) -> Result<()> {
        let cs = self.cluster_size();
        if self.size > MAX_VIRTUAL_SIZE {
            return Err(invalid(
                "size",
                24,
                format!("{:#x} is too large", self.size),
            ));
        }
        let l1_bytes = self.l1_size as u64 * 8;
        if l1_bytes > MAX_L1_BYTES {
            return Err(invalid(
                "l1_size",
                36,
                format!("{} entries exceed the 32 MiB limit", self.l1_size),
            ));
        }
        if (self.l1_size as u64) < self.l1_entries_for(self.size) {
            return Err(invalid("l1_size", 36, "too small for the virtual size"));
        }
        check_table(
            "l1_table_offset",
            40,
            self.l1_table_offset,
            l1_bytes,
            cs,
            file_len,
        )?;
        let rt_bytes = self.refcount_table_clusters as u64 * cs;
        if rt_bytes > MAX_REFTABLE_BYTES || self.refcount_table_clusters == 0 {
            return Err(invalid(
                "refcount_table_clusters",
                56,
                format!(
                    "{} clusters is outside 1..=8 MiB",
                    self.refcount_table_clusters
                ),
            ));
        }
        check_table(
            "refcount_table_offset",
            48,
            self.refcount_table_offset,
            rt_bytes,
            cs,
            file_len,
        )?;
        if self.nb_snapshots > MAX_SNAPSHOTS {
            return Err(invalid(
                "nb_snapshots",
                60,
                format!("{} is above 65536", self.nb_snapshots),
            ));
        }
        if self.nb_snapshots > 0 {
            // Each entry is at least 40 bytes; the full table is bounds-checked when parsed.
            let min = self.nb_snapshots as u64 * 40;
            check_table(
                "snapshots_offset",
                64,
                self.snapshots_offset,
                min,
                cs,
                file_len,
            )?;
        }
        if self.backing_file_offset != 0 {
            let end = self
                .backing_file_offset
                .checked_add(self.backing_file_size as u64);
            if self.backing_file_size > 1023 || end.is_none_or(|e| e > cs.min(file_len)) {
                return Err(invalid(
                    "backing_file_offset",
                    8,
                    "backing file name lies outside the first cluster or exceeds 1023 bytes",
                ));
            }
        }
        Ok(())
    }

    fn parse_extensions(&mut self, buf: &[u8]) -> Result<()> {
        let limit = (self.cluster_size() as usize).min(buf.len());
        let mut pos = self.header_length as usize;
        loop {
            if pos + 8 > limit {
                // Version 2 images without extensions may end right after the header.
                return Ok(());
            }
            let ty = be32(buf, pos);
            let len = be32(buf, pos + 4) as usize;
            let data_start = pos + 8;
            let data_end = data_start
                .checked_add(len)
                .filter(|&e| e <= limit)
                .ok_or_else(|| {
                    invalid(
                        "header extension",
                        pos as u64,
                        "extends beyond the first cluster",
                    )
                })?;
            let data = &buf[data_start..data_end];
            match ty {
                EXT_END => return Ok(()),
                EXT_BACKING_FORMAT => {
                    let s = std::str::from_utf8(data).map_err(|_| {
                        invalid("backing format extension", pos as u64, "not UTF-8")
                    })?;
                    self.backing_format = Some(s.trim_end_matches('\0').to_string());
                }
                EXT_ENCRYPTION => {
                    return Err(unsupported("encrypted qcow2 images are not supported"));
                }
                EXT_DATA_FILE => {
                    return Err(unsupported(
                        "qcow2 images with an external data file are not supported",
                    ));
                }
                EXT_FEATURE_TABLE => {}
                _ => {}
            }
            pos = data_start + len.div_ceil(8) * 8;
        }
    }

    fn parse_backing_name(&mut self, buf: &[u8]) -> Result<()> {
        if self.backing_file_offset == 0 {
            return Ok(());
        }
        let start = self.backing_file_offset as usize;
        let end = start + self.backing_file_size as usize;
        let bytes = buf
            .get(start..end)
            .ok_or_else(|| invalid("backing_file_offset", 8, "beyond the end of the file"))?;
        let name = std::str::from_utf8(bytes)
            .map_err(|_| invalid("backing_file_offset", 8, "backing file name is not UTF-8"))?;
        if name.is_empty() || name.contains('\0') {
            return Err(invalid(
                "backing_file_size",
                16,
                "empty or NUL-containing backing name",
            ));
        }
        self.backing_file = Some(name.to_string());
        Ok(())
    }

    /// Serialises a new header, its extensions and the backing file name into one cluster.
    pub fn serialize(&self) -> Result<Vec<u8>> {
        let cs = self.cluster_size() as usize;
        let mut b = vec![0u8; cs];
        put32(&mut b, 0, MAGIC);
        put32(&mut b, 4, self.version);
        put32(&mut b, 20, self.cluster_bits);
        put64(&mut b, 24, self.size);
        put32(&mut b, 36, self.l1_size);
        put64(&mut b, 40, self.l1_table_offset);
        put64(&mut b, 48, self.refcount_table_offset);
        put32(&mut b, 56, self.refcount_table_clusters);
        put32(&mut b, 60, self.nb_snapshots);
        put64(&mut b, 64, self.snapshots_offset);
        let mut pos = V2_HEADER_LEN as usize;
        if self.version == 3 {
            put64(&mut b, 72, self.incompatible);
            put64(&mut b, 80, self.compatible);
            put64(&mut b, 88, self.autoclear);
            put32(&mut b, 96, self.refcount_order);
            put32(&mut b, 100, V3_HEADER_LEN);
            b[104] = match self.compression {
                CompressionType::Zlib => 0,
                CompressionType::Zstd => 1,
            };
            pos = V3_HEADER_LEN as usize;
        }
        let too_big = || Error::new(ErrorKind::Unsupported, "backing file name too long");
        if let Some(fmt) = &self.backing_format {
            let need = 8 + fmt.len().div_ceil(8) * 8;
            if pos + need + 8 > cs {
                return Err(too_big());
            }
            put32(&mut b, pos, EXT_BACKING_FORMAT);
            put32(&mut b, pos + 4, fmt.len() as u32);
            b[pos + 8..pos + 8 + fmt.len()].copy_from_slice(fmt.as_bytes());
            pos += need;
        }
        pos += 8; // end-of-extensions marker (zeroes)
        if let Some(name) = &self.backing_file {
            if name.len() > 1023 || pos + name.len() > cs {
                return Err(too_big());
            }
            put64(&mut b, 8, pos as u64);
            put32(&mut b, 16, name.len() as u32);
            b[pos..pos + name.len()].copy_from_slice(name.as_bytes());
        }
        Ok(b)
    }
}

fn check_table(
    field: &str,
    at: u64,
    offset: u64,
    bytes: u64,
    cs: u64,
    file_len: u64,
) -> Result<()> {
    if bytes == 0 {
        return Ok(());
    }
    if !offset.is_multiple_of(cs) || offset == 0 {
        return Err(invalid(
            field,
            at,
            format!("{offset:#x} is not a nonzero multiple of the cluster size"),
        ));
    }
    match offset.checked_add(bytes) {
        Some(end) if end <= file_len => Ok(()),
        _ => Err(invalid(
            field,
            at,
            format!("table of {bytes} bytes at {offset:#x} extends beyond the end of the file ({file_len} bytes)"),
        )),
    }
}

pub(crate) fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_be_bytes());
}

pub(crate) fn put64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_be_bytes());
}

pub(crate) fn get64(b: &[u8], at: usize) -> u64 {
    be64(b, at)
}

pub(crate) fn get32(b: &[u8], at: usize) -> u32 {
    be32(b, at)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minimal_v3() -> Vec<u8> {
        let h = Header {
            version: 3,
            backing_file_offset: 0,
            backing_file_size: 0,
            cluster_bits: 16,
            size: 1 << 20,
            l1_size: 1,
            l1_table_offset: 3 << 16,
            refcount_table_offset: 1 << 16,
            refcount_table_clusters: 1,
            nb_snapshots: 0,
            snapshots_offset: 0,
            incompatible: 0,
            compatible: 0,
            autoclear: 0,
            refcount_order: 4,
            header_length: V3_HEADER_LEN,
            compression: CompressionType::Zlib,
            backing_file: Some("base.img".into()),
            backing_format: Some("raw".into()),
        };
        h.serialize().expect("serialize")
    }

    #[test]
    fn test_header_roundtrip_fields_preserved() {
        let b = minimal_v3();
        let h = Header::parse(&b, 4 << 16).expect("parse");
        assert_eq!(h.size, 1 << 20);
        assert_eq!(h.backing_file.as_deref(), Some("base.img"));
        assert_eq!(h.backing_format.as_deref(), Some("raw"));
    }

    #[test]
    fn test_header_huge_l1_in_small_file_names_field() {
        let mut b = minimal_v3();
        put64(&mut b, 24, 64 << 40);
        put32(&mut b, 36, 131072);
        let err = Header::parse(&b[..1024], 1024).expect_err("must refuse");
        assert_eq!(err.kind(), ErrorKind::InvalidFormat);
        assert!(err.to_string().contains("l1_table_offset"), "{err}");
        assert_eq!(err.offset(), Some(40));
    }

    #[test]
    fn test_header_unknown_incompatible_bit_refused() {
        let mut b = minimal_v3();
        put64(&mut b, 72, 1 << 40);
        let err = Header::parse(&b, 4 << 16).expect_err("must refuse");
        assert_eq!(err.kind(), ErrorKind::Unsupported);
    }

    /// A file of `len` bytes whose header names `cluster_bits`, and the read of its start.
    fn first_cluster_of(cluster_bits: u32, len: usize) -> Vec<u8> {
        let path = std::env::temp_dir().join(format!(
            "strata-qcow2-first-{}-{cluster_bits}-{len}",
            std::process::id()
        ));
        let mut b = vec![0u8; len];
        put32(&mut b, 20, cluster_bits);
        b[len - 1] = 0xa5;
        std::fs::write(&path, &b).expect("write");
        let file = std::fs::File::open(&path).expect("open");
        let first = read_first_cluster(&file, len as u64).expect("read");
        std::fs::remove_file(&path).expect("remove");
        first
    }

    #[test]
    fn test_read_first_cluster_reads_one_cluster_not_two_mib() {
        let small = first_cluster_of(16, 4 << 20);
        let large = first_cluster_of(21, 4 << 20);
        let short = first_cluster_of(21, 100_000);

        assert_eq!(small.len(), 64 << 10);
        assert_eq!(large.len(), 2 << 20);
        assert_eq!((short.len(), short[99_999]), (100_000, 0xa5));
    }
}
