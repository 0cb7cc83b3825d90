//! Consistency check: recomputes every cluster's reference count from the metadata and
//! compares it with the stored refcounts; optionally repairs leaks.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::header::Header;
use super::l2cache::decode;
use super::refcount::{io, Refcounts};
use super::snapshot::read_table;
use super::{COMPRESSED, COPIED, OFFSET_MASK, ZERO};
use crate::{Error, Result};

/// Messages kept in a report (the counts are always complete).
const MAX_MESSAGES: usize = 100;

/// The result of [`crate::check`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CheckReport {
    /// Clusters referenced more often than their refcount says, or invalid references.
    pub corruptions: u64,
    /// Clusters whose refcount exceeds their references (wasted space, harmless).
    pub leaks: u64,
    /// Leaks repaired (when repair was asked for).
    pub leaks_fixed: u64,
    /// Refcounts lower than the references, raised (only when repairing a dirty image).
    pub errors_fixed: u64,
    /// Descriptions of the first problems found.
    pub messages: Vec<String>,
    /// Host clusters in use.
    pub allocated_clusters: u64,
    /// Offset just past the last used host cluster.
    pub image_end_offset: u64,
}

impl CheckReport {
    fn note(&mut self, corruption: bool, msg: String) {
        if corruption {
            self.corruptions += 1;
        } else {
            self.leaks += 1;
        }
        if self.messages.len() < MAX_MESSAGES {
            self.messages.push(msg);
        }
    }
}

struct Walker<'a> {
    file: &'a File,
    h: &'a Header,
    file_len: u64,
    refs: Vec<u64>,
    report: CheckReport,
}

impl Walker<'_> {
    fn inc(&mut self, offset: u64, len: u64, what: &str) {
        let cs = self.h.cluster_size();
        if offset.saturating_add(len) > self.file_len.div_ceil(cs) * cs {
            self.report.note(
                true,
                format!("{what} at {offset:#x} lies beyond the end of the file"),
            );
            return;
        }
        let first = offset / cs;
        let last = (offset + len.max(1) - 1) / cs;
        for c in first..=last {
            if let Some(r) = self.refs.get_mut(c as usize) {
                *r += 1;
            }
        }
    }

    fn walk_l1(
        &mut self,
        l1_off: u64,
        l1_size: u32,
        active: bool,
        rc: &mut Refcounts,
    ) -> Result<()> {
        let cs = self.h.cluster_size();
        let mut raw = vec![0u8; l1_size as usize * 8];
        self.file
            .read_exact_at(&mut raw, l1_off)
            .map_err(|e| io(e, "read L1 table", l1_off))?;
        self.inc(l1_off, raw.len() as u64, "L1 table");
        for (i, e) in decode(&raw).into_iter().enumerate() {
            let off = e & OFFSET_MASK;
            if off == 0 {
                continue;
            }
            if !off.is_multiple_of(cs) || off + cs > self.file_len {
                self.report
                    .note(true, format!("L1 entry {i}: invalid L2 offset {off:#x}"));
                continue;
            }
            self.inc(off, cs, "L2 table");
            if active && (e & COPIED != 0) != (rc.get(self.file, off / cs)? == 1) {
                self.report.note(
                    true,
                    format!("L1 entry {i}: COPIED flag does not match refcount"),
                );
            }
            self.walk_l2(off, active, rc)?;
        }
        Ok(())
    }

    fn walk_l2(&mut self, l2_off: u64, active: bool, rc: &mut Refcounts) -> Result<()> {
        let cs = self.h.cluster_size();
        let cb = self.h.cluster_bits;
        let mut raw = vec![0u8; cs as usize];
        self.file
            .read_exact_at(&mut raw, l2_off)
            .map_err(|e| io(e, "read L2 table", l2_off))?;
        for (i, e) in decode(&raw).into_iter().enumerate() {
            if e & COMPRESSED != 0 {
                let x = 62 - (cb - 8);
                let offset = e & ((1u64 << x) - 1);
                let sectors = ((e & !(COPIED | COMPRESSED)) >> x) + 1;
                self.inc(offset & !511, sectors * 512, "compressed cluster");
                continue;
            }
            let host = e & OFFSET_MASK;
            if e & !(OFFSET_MASK | COPIED | ZERO) != 0 || !host.is_multiple_of(cs) {
                let at = l2_off + i as u64 * 8;
                self.report
                    .note(true, format!("L2 entry at {at:#x}: invalid entry {e:#x}"));
                continue;
            }
            if host == 0 {
                continue;
            }
            self.inc(host, cs, "data cluster");
            if active && (e & COPIED != 0) != (rc.get(self.file, host / cs)? == 1) {
                let at = l2_off + i as u64 * 8;
                self.report.note(
                    true,
                    format!("L2 entry at {at:#x}: COPIED flag does not match refcount"),
                );
            }
        }
        Ok(())
    }
}

/// What a check may fix.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Repair {
    Nothing,
    Leaks,
    All,
}

/// Checks a qcow2 image; with `repair`, leaked clusters get their refcounts corrected.
pub(crate) fn check(path: &Path, repair: bool) -> Result<CheckReport> {
    let mode = if repair {
        Repair::Leaks
    } else {
        Repair::Nothing
    };
    inner(path, mode).map_err(|e| e.with_path(path).with_operation("check"))
}

/// Makes a dirty image (lazy refcounts, not closed cleanly) consistent, as QEMU does when it
/// opens one for writing: every refcount is set to the recomputed reference count, then the
/// dirty bit is cleared.
pub(crate) fn repair_dirty(path: &Path) -> Result<CheckReport> {
    let report = inner(path, Repair::All)
        .map_err(|e| e.with_path(path).with_operation("repair dirty image"))?;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| Error::io(e, "cannot open image").with_path(path))?;
    let mut f = [0u8; 8];
    file.read_exact_at(&mut f, 72)
        .map_err(|e| io(e, "read header", 72))?;
    let incompatible = u64::from_be_bytes(f) & !super::header::INCOMPAT_DIRTY;
    file.write_all_at(&incompatible.to_be_bytes(), 72)
        .map_err(|e| io(e, "write header", 72))?;
    file.sync_data().map_err(|e| io(e, "sync", 0))?;
    Ok(report)
}

fn inner(path: &Path, mode: Repair) -> Result<CheckReport> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(mode != Repair::Nothing)
        .open(path)
        .map_err(|e| Error::io(e, "cannot open image"))?;
    let file_len = file
        .metadata()
        .map_err(|e| Error::io(e, "cannot stat"))?
        .len();
    let first =
        super::header::read_first_cluster(&file, file_len).map_err(|e| io(e, "read header", 0))?;
    let h = Header::parse(&first, file_len)?;
    let mut rc = Refcounts::load(
        &file,
        h.cluster_bits,
        h.refcount_order,
        h.refcount_table_offset,
        h.refcount_table_clusters as u64,
        file_len,
    )?;
    let mut w = Walker {
        file: &file,
        h: &h,
        file_len,
        refs: vec![0u64; file_len.div_ceil(h.cluster_size()) as usize],
        report: CheckReport::default(),
    };
    w.count_all(&mut rc)?;
    let report = std::mem::take(&mut w.report);
    let expected = std::mem::take(&mut w.refs);
    compare(&file, &h, &mut rc, &expected, report, mode)
}

impl Walker<'_> {
    /// Counts every reference from the header, refcount structures, snapshots and L1 tables.
    fn count_all(&mut self, rc: &mut Refcounts) -> Result<()> {
        let cs = self.h.cluster_size();
        self.inc(0, cs, "header");
        let (rt_off, rt_k) = rc.table_location();
        self.inc(rt_off, rt_k * cs, "refcount table");
        for off in rc.block_offsets() {
            self.inc(off, cs, "refcount block");
        }
        let (snaps, table_len) = read_table(self.file, self.h, self.file_len)?;
        if self.h.nb_snapshots > 0 {
            self.inc(self.h.snapshots_offset, table_len, "snapshot table");
        }
        for s in &snaps {
            self.walk_l1(s.l1_table_offset, s.l1_size, false, rc)?;
        }
        if self.h.l1_size > 0 {
            self.walk_l1(self.h.l1_table_offset, self.h.l1_size, true, rc)?;
        }
        Ok(())
    }
}

/// Compares stored refcounts with the recomputed ones, repairing as `mode` allows.
fn compare(
    file: &File,
    h: &Header,
    rc: &mut Refcounts,
    expected: &[u64],
    mut report: CheckReport,
    mode: Repair,
) -> Result<CheckReport> {
    let cs = h.cluster_size();
    let repair = mode != Repair::Nothing;
    let nclusters = expected.len() as u64;
    for c in 0..nclusters {
        let want = expected.get(c as usize).copied().unwrap_or(0);
        let have = rc.get(file, c)?;
        if have == want {
            if want > 0 {
                report.allocated_clusters += 1;
                report.image_end_offset = (c + 1) * cs;
            }
            continue;
        }
        if have < want {
            report.note(
                true,
                format!("cluster {c}: refcount={have} reference={want}"),
            );
            report.image_end_offset = (c + 1) * cs;
            if mode == Repair::All {
                rc.add(file, c, (want - have) as i64)?;
                report.errors_fixed += 1;
            }
            continue;
        }
        report.note(
            false,
            format!("leaked cluster {c}: refcount={have} reference={want}"),
        );
        if repair {
            rc.repair_set(file, c, want)?;
            report.leaks_fixed += 1;
        }
        if want > 0 {
            report.allocated_clusters += 1;
            report.image_end_offset = (c + 1) * cs;
        }
    }
    if report.leaks_fixed + report.errors_fixed > 0 {
        rc.flush(file)?;
        file.sync_data()
            .map_err(|e| Error::io(e, "cannot sync").with_operation("repair"))?;
    }
    Ok(report)
}
