//! Internal snapshots: list, create, apply (revert) and delete.
//!
//! Ordering follows the same rule as writes: refcount increments are durable before anything
//! new references the clusters; the snapshot table and header switch only once the data they
//! name is durable; decrements are deferred until the references are gone on disk.

use std::os::unix::fs::FileExt;
use std::time::{SystemTime, UNIX_EPOCH};

use super::header::{put32, put64};
use super::info::SnapshotInfo;
use super::l2cache::encode;
use super::refcount::io;
use super::snapshot::{encode_table, read_table, Snapshot};
use super::{Mapping, Qcow2, COPIED, OFFSET_MASK};
use crate::{Error, ErrorKind, Result};

/// How a refcount walk changes the clusters it visits.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Walk {
    /// Add a reference and recompute COPIED flags.
    Increment,
    /// Queue one reference for release (applied after the next durable metadata update).
    Release,
    /// Only recompute COPIED flags.
    Flags,
}

impl Qcow2 {
    fn snapshot_table(&self) -> Result<Vec<Snapshot>> {
        read_table(&self.file, &self.header, self.file_len)
            .map(|(t, _)| t)
            .map_err(|e| e.with_path(&self.path))
    }

    /// Lists the internal snapshots.
    pub fn snapshots(&self) -> Result<Vec<SnapshotInfo>> {
        Ok(self.snapshot_table()?.into_iter().map(to_info).collect())
    }

    fn refcount(&mut self, cluster: u64) -> Result<u64> {
        match self.refs.as_mut() {
            Some(r) => r.get(&self.file, cluster),
            None => Err(Error::new(
                ErrorKind::Unsupported,
                "image is open read-only",
            )),
        }
    }

    fn change_ref(&mut self, cluster: u64, walk: Walk) -> Result<()> {
        match (walk, self.refs.as_mut()) {
            (Walk::Increment, Some(r)) => r.add(&self.file, cluster, 1),
            (Walk::Release, Some(r)) => {
                r.defer_free(cluster);
                Ok(())
            }
            (Walk::Flags, _) => Ok(()),
            (_, None) => Err(Error::new(
                ErrorKind::Unsupported,
                "image is open read-only",
            )),
        }
    }

    fn flagged(&mut self, entry: u64, cluster: u64) -> Result<u64> {
        Ok(if self.refcount(cluster)? == 1 {
            entry | COPIED
        } else {
            entry & !COPIED
        })
    }

    /// Walks every L2 table and data cluster an L1 table references; returns the L1 entries
    /// with recomputed COPIED flags (unchanged for [`Walk::Release`]).
    fn walk_l1(&mut self, l1: &[u64], walk: Walk) -> Result<Vec<u64>> {
        let cb = self.header.cluster_bits;
        let mut out = l1.to_vec();
        for (i, &e) in l1.iter().enumerate() {
            let off = e & OFFSET_MASK;
            if off == 0 {
                continue;
            }
            if e & !(OFFSET_MASK | COPIED) != 0
                || !off.is_multiple_of(1 << cb)
                || off >= self.file_len
            {
                return Err(self.err(ErrorKind::Corrupt, format!("invalid L1 entry {e:#x}"), off));
            }
            self.load_l2(off)?;
            let entries = match self.cache.get(off) {
                Some(t) => t.entries.clone(),
                None => return Err(self.err(ErrorKind::Corrupt, "L2 cache miss", off)),
            };
            let mut updated = entries.clone();
            for (j, &le) in entries.iter().enumerate() {
                match self.classify(le, 0)? {
                    Mapping::Normal { host, .. }
                    | Mapping::Zero {
                        host: Some(host), ..
                    } => {
                        if host >= self.file_len {
                            let msg = "data cluster beyond the end of the file";
                            return Err(self.err(ErrorKind::Corrupt, msg, host));
                        }
                        self.change_ref(host >> cb, walk)?;
                        if walk != Walk::Release {
                            updated[j] = self.flagged(le, host >> cb)?;
                        }
                    }
                    Mapping::Compressed { offset, sectors } => {
                        let start = offset & !511;
                        for c in (start >> cb)..=((start + sectors * 512 - 1) >> cb) {
                            self.change_ref(c, walk)?;
                        }
                    }
                    Mapping::Unallocated | Mapping::Zero { host: None, .. } => {}
                }
            }
            self.change_ref(off >> cb, walk)?;
            if walk != Walk::Release {
                if updated != entries {
                    if let Some(t) = self.cache.get(off) {
                        t.entries = updated;
                        t.dirty = true;
                    }
                }
                out[i] = self.flagged(e, off >> cb)?;
            }
        }
        Ok(out)
    }

    /// Writes a new snapshot table and points the header at it, releasing the old one.
    fn replace_snapshot_table(&mut self, snaps: &[Snapshot]) -> Result<()> {
        let cs = self.cluster_size();
        let bytes = encode_table(snaps);
        let new_off = if bytes.is_empty() {
            0
        } else {
            let k = (bytes.len() as u64).div_ceil(cs);
            let off = self.alloc_clusters(k)?;
            self.write_host(&bytes, off)?;
            off
        };
        self.sync_refcounts()?;
        let mut hdr = [0u8; 12];
        put32(&mut hdr, 0, snaps.len() as u32);
        put64(&mut hdr, 4, new_off);
        self.write_host(&hdr, 60)?;
        self.sync()?;
        let (_, old_len) = read_table(&self.file, &self.header, self.file_len)?;
        if self.header.nb_snapshots > 0 && old_len > 0 {
            let first = self.header.snapshots_offset >> self.header.cluster_bits;
            for c in 0..old_len.div_ceil(cs) {
                self.defer_free(first + c);
            }
        }
        self.header.nb_snapshots = snaps.len() as u32;
        self.header.snapshots_offset = new_off;
        Ok(())
    }

    fn find_snapshot(&self, name_or_id: &str) -> Result<(usize, Vec<Snapshot>)> {
        let snaps = self.snapshot_table()?;
        let idx = snaps
            .iter()
            .position(|s| s.id == name_or_id)
            .or_else(|| snaps.iter().position(|s| s.name == name_or_id))
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::OutOfBounds,
                    format!("no snapshot '{name_or_id}'"),
                )
                .with_path(&self.path)
            })?;
        Ok((idx, snaps))
    }

    /// Creates an internal snapshot of the current disk contents (no VM state).
    pub fn snapshot_create(&mut self, name: &str) -> Result<SnapshotInfo> {
        self.snapshot_create_inner(name)
            .map_err(|e| e.with_path(&self.path).with_operation("snapshot create"))
    }

    fn snapshot_create_inner(&mut self, name: &str) -> Result<SnapshotInfo> {
        let mut snaps = self.snapshot_table()?;
        if name.is_empty() || name.len() > 1024 || snaps.iter().any(|s| s.name == name) {
            return Err(Error::new(
                ErrorKind::Unsupported,
                format!("snapshot name '{name}' is empty, too long or taken"),
            ));
        }
        self.flush_all()?;
        // 1. Count the snapshot's references and clear COPIED flags; durable in flush order.
        let active = self.l1.clone();
        let flagged = self.walk_l1(&active, Walk::Increment)?;
        self.set_active_l1(flagged);
        self.flush_all()?;
        // 2. The snapshot's own copy of the L1 table.
        let cs = self.cluster_size();
        let l1_bytes = encode(&self.l1);
        let l1_off = if l1_bytes.is_empty() {
            0
        } else {
            let off = self.alloc_clusters((l1_bytes.len() as u64).div_ceil(cs))?;
            self.write_host(&l1_bytes, off)?;
            off
        };
        // 3. The table entry, then the header switch.
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let next_id = snaps
            .iter()
            .filter_map(|s| s.id.parse::<u64>().ok())
            .max()
            .unwrap_or(0)
            + 1;
        let snap = Snapshot {
            l1_table_offset: l1_off,
            l1_size: self.l1.len() as u32,
            id: next_id.to_string(),
            name: name.to_string(),
            date_sec: now.as_secs() as u32,
            date_nsec: now.subsec_nanos(),
            vm_clock_nsec: 0,
            vm_state_size: 0,
            disk_size: Some(self.header.size),
            icount: None,
            extra: Vec::new(),
        };
        snaps.push(snap.clone());
        self.replace_snapshot_table(&snaps)?;
        self.flush_all()?;
        self.cache.drop_clean();
        Ok(to_info(snap))
    }

    fn set_active_l1(&mut self, l1: Vec<u64>) {
        if l1 != self.l1 && !l1.is_empty() {
            self.l1 = l1;
            let n = self.l1.len();
            self.l1_dirty = Some((0, n));
        }
    }

    /// Reverts the disk to a snapshot's contents (the snapshot is kept).
    pub fn snapshot_apply(&mut self, name_or_id: &str) -> Result<()> {
        self.snapshot_apply_inner(name_or_id)
            .map_err(|e| e.with_path(&self.path).with_operation("snapshot apply"))
    }

    fn snapshot_apply_inner(&mut self, name_or_id: &str) -> Result<()> {
        let (idx, snaps) = self.find_snapshot(name_or_id)?;
        let snap = &snaps[idx];
        self.flush_all()?;
        let mut snap_l1 = vec![0u8; snap.l1_size as usize * 8];
        self.file
            .read_exact_at(&mut snap_l1, snap.l1_table_offset)
            .map_err(|e| io(e, "read snapshot L1 table", snap.l1_table_offset))?;
        let snap_l1 = super::l2cache::decode(&snap_l1);
        let size = snap.disk_size.unwrap_or(self.header.size);
        if self.header.l1_entries_for(size) > snap_l1.len().max(self.l1.len()) as u64 {
            let msg = "snapshot disk size exceeds its L1 table";
            return Err(self.err(ErrorKind::Corrupt, msg, 0));
        }
        // 1. The active image will reference everything the snapshot does.
        self.walk_l1(&snap_l1, Walk::Increment)?;
        self.flush_all()?;
        if snap_l1.len() > self.l1.len() {
            self.grow_l1(snap_l1.len() as u64)?;
        }
        // 2. Switch the active L1 table (and size) to the snapshot's.
        let old = std::mem::take(&mut self.l1);
        let mut new_l1 = snap_l1;
        new_l1.resize(old.len(), 0);
        self.l1 = new_l1;
        self.l1_dirty = Some((0, self.l1.len()));
        self.flush_all()?;
        if let Some(size) = snap.disk_size.filter(|&s| s != self.header.size) {
            self.write_host(&size.to_be_bytes(), 24)?;
            self.sync()?;
            self.header.size = size;
        }
        // 3. Release the old active references, then recompute COPIED flags.
        self.walk_l1(&old, Walk::Release)?;
        self.flush_all()?;
        self.cache.drop_clean();
        let active = self.l1.clone();
        let flagged = self.walk_l1(&active, Walk::Flags)?;
        self.set_active_l1(flagged);
        self.flush_all()?;
        self.cache.drop_clean();
        self.zcache = None;
        Ok(())
    }

    /// Deletes a snapshot, releasing the clusters only it referenced.
    pub fn snapshot_delete(&mut self, name_or_id: &str) -> Result<()> {
        self.snapshot_delete_inner(name_or_id)
            .map_err(|e| e.with_path(&self.path).with_operation("snapshot delete"))
    }

    fn snapshot_delete_inner(&mut self, name_or_id: &str) -> Result<()> {
        let (idx, mut snaps) = self.find_snapshot(name_or_id)?;
        self.flush_all()?;
        let snap = snaps.remove(idx);
        let mut raw = vec![0u8; snap.l1_size as usize * 8];
        self.file
            .read_exact_at(&mut raw, snap.l1_table_offset)
            .map_err(|e| io(e, "read snapshot L1 table", snap.l1_table_offset))?;
        let snap_l1 = super::l2cache::decode(&raw);
        // 1. Unlink the snapshot.
        self.replace_snapshot_table(&snaps)?;
        // 2. Release its references and its L1 table.
        self.walk_l1(&snap_l1, Walk::Release)?;
        let cs = self.cluster_size();
        if snap.l1_size > 0 {
            let first = snap.l1_table_offset >> self.header.cluster_bits;
            for c in 0..(snap.l1_size as u64 * 8).div_ceil(cs) {
                self.defer_free(first + c);
            }
        }
        self.flush_all()?;
        self.cache.drop_clean();
        // 3. Clusters now referenced once may be written in place again.
        let active = self.l1.clone();
        let flagged = self.walk_l1(&active, Walk::Flags)?;
        self.set_active_l1(flagged);
        self.flush_all()?;
        self.cache.drop_clean();
        Ok(())
    }
}

/// The public description of a snapshot-table entry.
pub(super) fn to_info(s: Snapshot) -> SnapshotInfo {
    SnapshotInfo {
        id: s.id,
        name: s.name,
        vm_state_size: s.vm_state_size,
        date_sec: s.date_sec,
        date_nsec: s.date_nsec,
        vm_clock_nsec: s.vm_clock_nsec,
        disk_size: s.disk_size,
        icount: s.icount,
    }
}
