//! Creating vmdk images: monolithicSparse and streamOptimized.

use std::fs::File;
use std::path::Path;

use super::descriptor::Descriptor;
use super::fileio::{u32s_to_le, write_at};
use super::header::{
    SparseHeader, FLAG_NEWLINE_TEST, FLAG_RGD, MAX_CAPACITY_SECTORS, MAX_GD_ENTRIES, SECTOR,
};
use super::stream::{StreamWriter, GRAIN_SECTORS, GTES_PER_GT};
use super::{open, Vmdk};
use crate::{Error, ErrorKind, OpenOptions, Result};

/// Sectors reserved for the embedded descriptor of monolithicSparse images (as QEMU).
const DESCRIPTOR_SECTORS: u64 = 20;

/// The vmdk layouts [`create`] can produce.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Subformat {
    /// One growable sparse file; random reads and writes.
    #[default]
    MonolithicSparse,
    /// One compressed sparse file, written append-only (for conversion and distribution).
    StreamOptimized,
}

/// Options for [`create`].
#[derive(Clone, Debug, Default)]
pub struct VmdkCreateOptions {
    /// The layout to create.
    pub subformat: Subformat,
}

/// Creates (or truncates) a vmdk image of `size` bytes, rounded up to whole sectors, and
/// returns it open for writing.
///
/// A streamOptimized image is a complete, empty image right after creation; data written
/// to it must arrive in increasing grain order and becomes part of the image on `flush` (or
/// on drop, where errors cannot be reported).
pub fn create(path: &Path, size: u64, options: &VmdkCreateOptions) -> Result<Vmdk> {
    create_inner(path, size, options).map_err(|e| e.with_path(path).with_operation("create"))
}

/// The shape of a new vmdk image.
pub(crate) struct NewImage<'a> {
    /// Capacity in sectors.
    pub sectors: u64,
    /// Grain directory entries.
    pub gd_entries: u64,
    /// The file name, as it goes in the descriptor.
    pub name: &'a str,
}

/// Checks that a new vmdk of `size` bytes fits the format and that its file name can go in its
/// descriptor.
pub(crate) fn new_image_params(path: &Path, size: u64) -> Result<NewImage<'_>> {
    let sectors = size.div_ceil(SECTOR);
    let gd_entries = sectors.div_ceil(GRAIN_SECTORS * GTES_PER_GT);
    if sectors > MAX_CAPACITY_SECTORS || gd_entries > MAX_GD_ENTRIES {
        return Err(Error::new(
            ErrorKind::Unsupported,
            format!("size of {size} bytes is too large for a vmdk"),
        ));
    }
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| !n.contains(['"', '\n', '\r']))
        .ok_or_else(|| {
            Error::new(
                ErrorKind::Unsupported,
                "the file name must be UTF-8 without quotes or newlines (it goes in the descriptor)",
            )
        })?;
    Ok(NewImage {
        sectors,
        gd_entries,
        name,
    })
}

fn create_inner(path: &Path, size: u64, options: &VmdkCreateOptions) -> Result<Vmdk> {
    let NewImage {
        sectors,
        gd_entries,
        name,
    } = new_image_params(path, size)?;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(|e| Error::io(e, "creating file"))?;
    let cid = new_cid();
    match options.subformat {
        Subformat::MonolithicSparse => {
            let text = Descriptor::render_sparse("monolithicSparse", cid, sectors, name, "ide");
            write_monolithic_sparse(&file, sectors, gd_entries, text.as_bytes())?;
            drop(file);
            open(path, &OpenOptions::default())
        }
        Subformat::StreamOptimized => {
            let text = Descriptor::render_sparse("streamOptimized", cid, sectors, name, "ide");
            let writer = StreamWriter::create(file, sectors * SECTOR, text.as_bytes())?;
            Ok(Vmdk {
                path: path.to_path_buf(),
                size: sectors * SECTOR,
                read_only: false,
                create_type: "streamOptimized".to_string(),
                geometry: Descriptor::parse(text.as_bytes())?.geometry,
                extents: Vec::new(),
                stream: Some(writer),
            })
        }
    }
}

/// A content ID that is neither "no parent" nor the value QEMU uses for fresh images.
fn new_cid() -> u32 {
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

/// Lays out a monolithicSparse file as QEMU does: header, descriptor, redundant directory and
/// tables, directory and tables (all tables preallocated), then grains.
fn write_monolithic_sparse(
    file: &File,
    sectors: u64,
    gd_entries: u64,
    descriptor: &[u8],
) -> Result<()> {
    if descriptor.len() as u64 > DESCRIPTOR_SECTORS * SECTOR {
        return Err(Error::new(ErrorKind::Unsupported, "descriptor too long"));
    }
    let gd_sectors = (gd_entries * 4).div_ceil(SECTOR);
    let gt_sectors = (GTES_PER_GT * 4).div_ceil(SECTOR);
    let tables = gd_entries * gt_sectors;
    let rgd_offset = 1 + DESCRIPTOR_SECTORS;
    let gd_offset = rgd_offset + gd_sectors + tables;
    let overhead = (gd_offset + gd_sectors + tables).div_ceil(GRAIN_SECTORS) * GRAIN_SECTORS;
    let header = SparseHeader {
        version: 1,
        flags: FLAG_NEWLINE_TEST | FLAG_RGD,
        capacity: sectors,
        grain_size: GRAIN_SECTORS,
        descriptor_offset: 1,
        descriptor_size: DESCRIPTOR_SECTORS,
        num_gtes_per_gt: GTES_PER_GT as u32,
        rgd_offset,
        gd_offset,
        overhead,
        unclean_shutdown: false,
        compress_algorithm: 0,
    };
    file.set_len(overhead * SECTOR)
        .map_err(|e| Error::io(e, "sizing the new image"))?;
    write_at(file, &header.to_bytes(), 0, "header")?;
    write_at(file, descriptor, SECTOR, "embedded descriptor")?;
    for dir in [rgd_offset, gd_offset] {
        let first_table = dir + gd_sectors;
        let entries: Vec<u32> = (0..gd_entries)
            .map(|i| u32::try_from(first_table + i * gt_sectors))
            .collect::<std::result::Result<_, _>>()
            .map_err(|_| Error::new(ErrorKind::Unsupported, "grain tables beyond 2 TiB"))?;
        write_at(file, &u32s_to_le(&entries), dir * SECTOR, "grain directory")?;
    }
    Ok(())
}
