//! Positioned file I/O with disk-library errors.

use std::fs::File;
use std::os::unix::fs::FileExt;

use crate::{Error, Result};

/// Reads exactly `buf.len()` bytes at `offset`.
pub fn read_at(file: &File, buf: &mut [u8], offset: u64, what: &str) -> Result<()> {
    file.read_exact_at(buf, offset)
        .map_err(|e| Error::io(e, format!("reading {what}")).with_offset(offset))
}

/// Writes all of `buf` at `offset`.
pub fn write_at(file: &File, buf: &[u8], offset: u64, what: &str) -> Result<()> {
    file.write_all_at(buf, offset)
        .map_err(|e| Error::io(e, format!("writing {what}")).with_offset(offset))
}

/// The file's current length.
pub fn file_len(file: &File) -> Result<u64> {
    file.metadata()
        .map(|m| m.len())
        .map_err(|e| Error::io(e, "reading file metadata"))
}

/// Makes the file's data durable.
pub fn sync(file: &File) -> Result<()> {
    file.sync_data()
        .map_err(|e| Error::io(e, "syncing").with_operation("flush"))
}

/// Decodes little-endian u32 entries.
pub fn u32s_from_le(bytes: &[u8]) -> Vec<u32> {
    bytes
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// Encodes u32 entries little-endian.
pub fn u32s_to_le(entries: &[u32]) -> Vec<u8> {
    entries.iter().flat_map(|e| e.to_le_bytes()).collect()
}
