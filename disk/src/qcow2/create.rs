//! Creating qcow2 images.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::header::{
    CompressionType, Header, COMPAT_LAZY_REFCOUNTS, INCOMPAT_COMPRESSION, V2_HEADER_LEN,
    V3_HEADER_LEN,
};
use super::refcount::set_entry;
use super::Qcow2;
use crate::{
    CacheMode, CreateOptions, Error, ErrorKind, OpenOptions, Qcow2Version, Resize, Result,
};

fn bad(msg: impl Into<String>) -> Error {
    Error::new(ErrorKind::Unsupported, msg).with_operation("create")
}

fn build_header(size: u64, o: &CreateOptions) -> Result<Header> {
    let cs = o.cluster_size.unwrap_or(65536);
    if !cs.is_power_of_two() || !(512..=(2 << 20)).contains(&cs) {
        return Err(bad(format!(
            "cluster size {cs} is not a power of two in 512..=2 MiB"
        )));
    }
    let bits = o.refcount_bits.unwrap_or(16);
    if !bits.is_power_of_two() || bits > 64 {
        return Err(bad(format!(
            "refcount_bits {bits} is not a power of two up to 64"
        )));
    }
    let v3 = o.version == Qcow2Version::V3;
    if !v3 && (bits != 16 || o.lazy_refcounts || o.compression_type != CompressionType::Zlib) {
        return Err(bad(
            "compat 0.10 images need 16-bit refcounts, no lazy refcounts and zlib compression",
        ));
    }
    if o.backing_file.is_some() != o.backing_format.is_some() {
        return Err(bad(
            "a backing file needs its format stated (backing_fmt), and vice versa",
        ));
    }
    let zstd = o.compression_type == CompressionType::Zstd;
    Ok(Header {
        version: if v3 { 3 } else { 2 },
        backing_file_offset: 0,
        backing_file_size: 0,
        cluster_bits: cs.trailing_zeros(),
        size,
        l1_size: 0,
        l1_table_offset: 0,
        refcount_table_offset: cs,
        refcount_table_clusters: 1,
        nb_snapshots: 0,
        snapshots_offset: 0,
        incompatible: if zstd { INCOMPAT_COMPRESSION } else { 0 },
        compatible: if o.lazy_refcounts {
            COMPAT_LAZY_REFCOUNTS
        } else {
            0
        },
        autoclear: 0,
        refcount_order: bits.trailing_zeros(),
        header_length: if v3 { V3_HEADER_LEN } else { V2_HEADER_LEN },
        compression: o.compression_type,
        backing_file: o.backing_file.clone(),
        backing_format: o.backing_format.map(|f| f.name().to_string()),
    })
}

fn ioerr(e: std::io::Error) -> Error {
    Error::io(e, "cannot write new image").with_operation("create")
}

/// Creates a qcow2 image: header, a one-cluster refcount table and block, then an L1 table
/// sized for `size` (allocated through the normal resize path).
pub(crate) fn create(path: &Path, size: u64, o: &CreateOptions) -> Result<()> {
    create_cached(path, size, o, CacheMode::Writeback)
}

/// [`create`], syncing only if `cache` does (conversion targets under `CacheMode::Unsafe`).
pub(crate) fn create_cached(
    path: &Path,
    size: u64,
    o: &CreateOptions,
    cache: CacheMode,
) -> Result<()> {
    let full = build_header(size, o)?;
    // Serialise once with the backing name to catch names that do not fit.
    full.serialize()?;
    let mut bare = full.clone();
    bare.size = 0;
    bare.backing_file = None;
    bare.backing_format = None;
    let cs = full.cluster_size();
    let file = File::create(path).map_err(ioerr)?;
    file.write_all_at(&bare.serialize()?, 0).map_err(ioerr)?;
    let mut table = vec![0u8; cs as usize];
    table[..8].copy_from_slice(&(2 * cs).to_be_bytes());
    file.write_all_at(&table, cs).map_err(ioerr)?;
    let mut block = vec![0u8; cs as usize];
    for i in 0..3 {
        set_entry(&mut block, i, full.refcount_order, 1);
    }
    file.write_all_at(&block, 2 * cs).map_err(ioerr)?;
    if cache.syncs() {
        file.sync_all().map_err(ioerr)?;
    }
    drop(file);
    let opts = OpenOptions {
        cache,
        ..Default::default()
    };
    let (l1_size, l1_off) = {
        let mut q = Qcow2::open(path, &opts)?;
        q.resize(size)?;
        q.flush_all()?;
        (q.header.l1_size, q.header.l1_table_offset)
    };
    let mut h = full;
    h.l1_size = l1_size;
    h.l1_table_offset = l1_off;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(ioerr)?;
    // The refcount table may have moved while growing; keep the fields resize wrote.
    let mut cur = [0u8; 12];
    file.read_exact_at(&mut cur, 48).map_err(ioerr)?;
    h.refcount_table_offset = super::header::get64(&cur, 0);
    h.refcount_table_clusters = super::header::get32(&cur, 8);
    file.write_all_at(&h.serialize()?, 0).map_err(ioerr)?;
    if cache.syncs() {
        file.sync_all().map_err(ioerr)?;
    }
    Ok(())
}
