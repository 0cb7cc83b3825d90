//! Image information, as `qemu-img info` reports it.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::header::{
    CompressionType, Header, COMPAT_LAZY_REFCOUNTS, INCOMPAT_CORRUPT, INCOMPAT_DIRTY,
    INCOMPAT_EXTL2,
};
use super::refcount::io;
use super::snapshot::read_table;
use super::snapshot_ops::to_info;
use crate::{Error, Format, ImageInfo, Result};

/// One internal snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// Unique id ("1", "2", ...).
    pub id: String,
    /// User-visible name.
    pub name: String,
    /// Size of the saved VM state in bytes (0: disk-only).
    pub vm_state_size: u64,
    /// Creation time, seconds since the epoch.
    pub date_sec: u32,
    /// Creation time, nanoseconds part.
    pub date_nsec: u32,
    /// Guest clock at creation, in nanoseconds.
    pub vm_clock_nsec: u64,
    /// Virtual disk size when taken (version 3 images).
    pub disk_size: Option<u64>,
    /// Instruction count when taken, if recorded.
    pub icount: Option<u64>,
}

/// qcow2-specific information.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Qcow2Info {
    /// "0.10" (version 2) or "1.1" (version 3).
    pub compat: String,
    /// Refcount width in bits.
    pub refcount_bits: u32,
    /// Lazy refcounts enabled.
    pub lazy_refcounts: bool,
    /// Marked corrupt.
    pub corrupt: bool,
    /// The dirty bit (refcounts may be stale).
    pub dirty: bool,
    /// Compression type of compressed clusters.
    pub compression_type: CompressionType,
    /// Extended L2 entries.
    pub extended_l2: bool,
    /// Internal snapshots.
    pub snapshots: Vec<SnapshotInfo>,
}

/// Reads information from a qcow2 image without opening its backing file.
pub(crate) fn info(path: &Path) -> Result<ImageInfo> {
    inner(path).map_err(|e| e.with_path(path).with_operation("info"))
}

fn inner(path: &Path) -> Result<ImageInfo> {
    let file = File::open(path).map_err(|e| Error::io(e, "cannot open image"))?;
    let meta = file
        .metadata()
        .map_err(|e| Error::io(e, "cannot stat image"))?;
    let file_len = meta.len();
    let first =
        super::header::read_first_cluster(&file, file_len).map_err(|e| io(e, "read header", 0))?;
    let h = Header::parse(&first, file_len)?;
    let (snaps, _) = read_table(&file, &h, file_len)?;
    let q = Qcow2Info {
        compat: if h.version == 2 {
            "0.10".into()
        } else {
            "1.1".into()
        },
        refcount_bits: h.refcount_bits(),
        lazy_refcounts: h.compatible & COMPAT_LAZY_REFCOUNTS != 0,
        corrupt: h.incompatible & INCOMPAT_CORRUPT != 0,
        dirty: h.incompatible & INCOMPAT_DIRTY != 0,
        compression_type: h.compression,
        extended_l2: h.incompatible & INCOMPAT_EXTL2 != 0,
        snapshots: snaps.into_iter().map(to_info).collect(),
    };
    Ok(ImageInfo {
        format: Format::Qcow2,
        virtual_size: h.size,
        actual_size: meta.blocks() * 512,
        cluster_size: Some(h.cluster_size()),
        backing_file: h.backing_file.clone(),
        backing_format: h.backing_format.clone(),
        qcow2: Some(q),
    })
}
