//! The internal snapshot table: bounds-checked parsing and serialisation.

use std::fs::File;
use std::os::unix::fs::FileExt;

use super::header::{get32, get64, put32, put64, Header};
use super::refcount::io;
use crate::{Error, ErrorKind, Result};

/// Largest extra-data area accepted per entry (as QEMU).
const MAX_EXTRA: u32 = 1024;
/// Largest snapshot table accepted (as QEMU).
const MAX_TABLE_BYTES: u64 = 64 << 20;

/// One entry of the snapshot table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Snapshot {
    pub l1_table_offset: u64,
    pub l1_size: u32,
    pub id: String,
    pub name: String,
    pub date_sec: u32,
    pub date_nsec: u32,
    pub vm_clock_nsec: u64,
    pub vm_state_size: u64,
    pub disk_size: Option<u64>,
    pub icount: Option<u64>,
    /// Extra data bytes beyond those decoded, preserved on rewrite.
    pub extra: Vec<u8>,
}

fn corrupt(msg: impl Into<String>, at: u64) -> Error {
    Error::new(ErrorKind::Corrupt, msg)
        .with_offset(at)
        .with_operation("read snapshot table")
}

/// Reads the snapshot table named by the header from a file of `file_len` bytes.
pub(crate) fn read_table(file: &File, h: &Header, file_len: u64) -> Result<Vec<Snapshot>> {
    let mut out = Vec::with_capacity(h.nb_snapshots.min(1024) as usize);
    let mut pos = h.snapshots_offset;
    let cs = h.cluster_size();
    for i in 0..h.nb_snapshots {
        if pos - h.snapshots_offset > MAX_TABLE_BYTES {
            return Err(corrupt("snapshot table exceeds 64 MiB", pos));
        }
        let mut fixed = [0u8; 40];
        if pos.saturating_add(40) > file_len {
            return Err(corrupt(
                format!("snapshot {i} lies beyond the end of the file"),
                pos,
            ));
        }
        file.read_exact_at(&mut fixed, pos)
            .map_err(|e| io(e, "read snapshot table", pos))?;
        let id_len = u16::from_be_bytes([fixed[12], fixed[13]]) as u64;
        let name_len = u16::from_be_bytes([fixed[14], fixed[15]]) as u64;
        let extra_len = get32(&fixed, 36);
        if extra_len > MAX_EXTRA {
            return Err(corrupt(
                format!("snapshot {i} extra data of {extra_len} bytes"),
                pos + 36,
            ));
        }
        let var_len = extra_len as u64 + id_len + name_len;
        if pos.saturating_add(40 + var_len) > file_len {
            return Err(corrupt(
                format!("snapshot {i} lies beyond the end of the file"),
                pos,
            ));
        }
        let mut var = vec![0u8; var_len as usize];
        file.read_exact_at(&mut var, pos + 40)
            .map_err(|e| io(e, "read snapshot table", pos))?;
        let (extra, rest) = var.split_at(extra_len as usize);
        let (id, name) = rest.split_at(id_len as usize);
        let l1_table_offset = get64(&fixed, 0);
        let l1_size = get32(&fixed, 8);
        if !l1_table_offset.is_multiple_of(cs)
            || (l1_size as u64) * 8 > super::header::MAX_L1_BYTES
            || l1_table_offset.saturating_add(l1_size as u64 * 8) > file_len
        {
            return Err(corrupt(
                format!("snapshot {i} has an invalid L1 table"),
                pos,
            ));
        }
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        let mut s = Snapshot {
            l1_table_offset,
            l1_size,
            id: text(id),
            name: text(name),
            date_sec: get32(&fixed, 16),
            date_nsec: get32(&fixed, 20),
            vm_clock_nsec: get64(&fixed, 24),
            vm_state_size: get32(&fixed, 32) as u64,
            disk_size: None,
            icount: None,
            extra: Vec::new(),
        };
        if extra.len() >= 8 {
            s.vm_state_size = get64(extra, 0);
        }
        if extra.len() >= 16 {
            s.disk_size = Some(get64(extra, 8));
        }
        if extra.len() >= 24 {
            s.icount = Some(get64(extra, 16)).filter(|&v| v != u64::MAX);
        }
        if extra.len() > 24 {
            s.extra = extra[24..].to_vec();
        }
        out.push(s);
        pos += (40 + var_len).div_ceil(8) * 8;
    }
    Ok(out)
}

/// Serialises a snapshot table (version 3 extra data always written).
pub(crate) fn encode_table(snaps: &[Snapshot]) -> Vec<u8> {
    let mut out = Vec::new();
    for s in snaps {
        let mut extra = vec![0u8; 24];
        put64(&mut extra, 0, s.vm_state_size);
        put64(&mut extra, 8, s.disk_size.unwrap_or(0));
        put64(&mut extra, 16, s.icount.unwrap_or(u64::MAX));
        extra.extend_from_slice(&s.extra);
        let mut e = vec![0u8; 40];
        put64(&mut e, 0, s.l1_table_offset);
        put32(&mut e, 8, s.l1_size);
        e[12..14].copy_from_slice(&(s.id.len() as u16).to_be_bytes());
        e[14..16].copy_from_slice(&(s.name.len() as u16).to_be_bytes());
        put32(&mut e, 16, s.date_sec);
        put32(&mut e, 20, s.date_nsec);
        put64(&mut e, 24, s.vm_clock_nsec);
        put32(&mut e, 32, s.vm_state_size.min(u32::MAX as u64) as u32);
        put32(&mut e, 36, extra.len() as u32);
        e.extend_from_slice(&extra);
        e.extend_from_slice(s.id.as_bytes());
        e.extend_from_slice(s.name.as_bytes());
        e.resize(e.len().div_ceil(8) * 8, 0);
        out.extend_from_slice(&e);
    }
    out
}
