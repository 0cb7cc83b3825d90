//! Refcount table and blocks of every width (1 to 64 bits), cluster allocation, and growth of
//! the refcount table.
//!
//! Ordering rules (crash safety): increments are written before anything references the new
//! clusters (the owner flushes refcounts first); decrements are queued with
//! [`Refcounts::defer_free`] and applied only after the references are gone on disk.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;

use super::header::{put32, put64, MAX_REFTABLE_BYTES};
use super::l2cache::{decode, encode};
use crate::{Error, ErrorKind, Result};

/// Refcount table entries: bits 9-63 hold the block offset.
const REFT_OFFSET_MASK: u64 = !511;

struct Block {
    data: Vec<u8>,
    dirty: bool,
}

/// In-memory refcount state of an image open for writing (or being checked).
pub(crate) struct Refcounts {
    cluster_bits: u32,
    order: u32,
    table: Vec<u64>,
    table_offset: u64,
    table_clusters: u64,
    table_dirty: bool,
    blocks: HashMap<u64, Block>,
    free_hint: u64,
    /// First cluster index past the end of the file and every allocation.
    end: u64,
    pending: Vec<u64>,
}

fn corrupt(msg: impl Into<String>, offset: u64) -> Error {
    Error::new(ErrorKind::Corrupt, msg).with_offset(offset)
}

pub(crate) fn io(e: std::io::Error, op: &'static str, offset: u64) -> Error {
    let kind = e.kind();
    let err = Error::io(e, "host I/O failed")
        .with_operation(op)
        .with_offset(offset);
    if kind == std::io::ErrorKind::UnexpectedEof {
        return Error::new(
            ErrorKind::Corrupt,
            "metadata lies beyond the end of the file",
        )
        .with_operation(op)
        .with_offset(offset);
    }
    err
}

impl Refcounts {
    /// Loads the refcount table described by the header.
    pub fn load(
        file: &File,
        cluster_bits: u32,
        order: u32,
        table_offset: u64,
        table_clusters: u64,
        file_len: u64,
    ) -> Result<Refcounts> {
        let cs = 1u64 << cluster_bits;
        let mut raw = vec![0u8; (table_clusters * cs) as usize];
        file.read_exact_at(&mut raw, table_offset)
            .map_err(|e| io(e, "read refcount table", table_offset))?;
        let table = decode(&raw);
        for (i, &e) in table.iter().enumerate() {
            if e & !REFT_OFFSET_MASK != 0 || (e != 0 && !e.is_multiple_of(cs)) {
                return Err(corrupt(
                    format!("refcount table entry {i} ({e:#x}) is not cluster aligned"),
                    table_offset + i as u64 * 8,
                ));
            }
        }
        Ok(Refcounts {
            cluster_bits,
            order,
            table,
            table_offset,
            table_clusters,
            table_dirty: false,
            blocks: HashMap::new(),
            free_hint: 1,
            end: file_len.div_ceil(cs),
            pending: Vec::new(),
        })
    }

    fn cs(&self) -> u64 {
        1 << self.cluster_bits
    }

    /// Refcount entries per block.
    pub fn entries_per_block(&self) -> u64 {
        (self.cs() * 8) >> self.order
    }

    /// Largest representable refcount.
    pub fn max_refcount(&self) -> u64 {
        if self.order == 6 {
            u64::MAX
        } else {
            (1u64 << (1 << self.order)) - 1
        }
    }

    /// The table's host offset and size in clusters.
    pub fn table_location(&self) -> (u64, u64) {
        (self.table_offset, self.table_clusters)
    }

    /// Host offsets of every refcount block.
    pub fn block_offsets(&self) -> Vec<u64> {
        self.table.iter().copied().filter(|&e| e != 0).collect()
    }

    fn has_block(&self, b: u64) -> bool {
        (b as usize) < self.table.len() && self.table[b as usize] != 0
    }

    fn load_block(&mut self, file: &File, b: u64) -> Result<bool> {
        if self.blocks.contains_key(&b) {
            return Ok(true);
        }
        if !self.has_block(b) {
            return Ok(false);
        }
        let off = self.table[b as usize];
        let mut data = vec![0u8; self.cs() as usize];
        file.read_exact_at(&mut data, off)
            .map_err(|e| io(e, "read refcount block", off))?;
        self.blocks.insert(b, Block { data, dirty: false });
        Ok(true)
    }

    /// The refcount of host cluster `cluster` (0 where no block describes it).
    pub fn get(&mut self, file: &File, cluster: u64) -> Result<u64> {
        let epb = self.entries_per_block();
        let b = cluster / epb;
        if !self.load_block(file, b)? {
            return Ok(0);
        }
        let block = &self.blocks[&b];
        Ok(get_entry(&block.data, (cluster % epb) as usize, self.order))
    }

    /// Sets the refcount of a cluster whose block exists.
    fn set(&mut self, file: &File, cluster: u64, value: u64) -> Result<()> {
        let epb = self.entries_per_block();
        let b = cluster / epb;
        if !self.load_block(file, b)? {
            return Err(corrupt(
                "no refcount block for cluster",
                cluster << self.cluster_bits,
            ));
        }
        let order = self.order;
        if let Some(block) = self.blocks.get_mut(&b) {
            set_entry(&mut block.data, (cluster % epb) as usize, order, value);
            block.dirty = true;
        }
        Ok(())
    }

    /// Adds `delta` to a cluster's refcount, creating its refcount block if needed.
    pub fn add(&mut self, file: &File, cluster: u64, delta: i64) -> Result<()> {
        let b = cluster / self.entries_per_block();
        if !self.has_block(b) {
            if delta < 0 {
                return Err(corrupt(
                    "freeing a cluster with refcount 0",
                    cluster << self.cluster_bits,
                ));
            }
            self.create_block(file, b)?;
        }
        let old = self.get(file, cluster)?;
        let new = if delta >= 0 {
            old.checked_add(delta as u64)
                .filter(|&v| v <= self.max_refcount())
        } else {
            old.checked_sub(delta.unsigned_abs())
        };
        let new = new.ok_or_else(|| {
            corrupt(
                format!("refcount {old} of cluster cannot change by {delta}"),
                cluster << self.cluster_bits,
            )
        })?;
        self.set(file, cluster, new)?;
        if new == 0 && cluster < self.free_hint {
            self.free_hint = cluster.max(1);
        }
        Ok(())
    }

    /// Sets a cluster's refcount outright (leak repair).
    pub fn repair_set(&mut self, file: &File, cluster: u64, value: u64) -> Result<()> {
        self.set(file, cluster, value)?;
        if value == 0 && cluster < self.free_hint {
            self.free_hint = cluster.max(1);
        }
        Ok(())
    }

    fn find_free_run(&mut self, file: &File, n: u64) -> Result<u64> {
        let epb = self.entries_per_block();
        let mut c = self.free_hint.max(1);
        let mut run_start = c;
        loop {
            if c - run_start == n {
                return Ok(run_start);
            }
            if c >= self.end {
                // Everything past the end is free.
                return Ok(run_start);
            }
            let b = c / epb;
            if !self.has_block(b) {
                c = (b + 1) * epb;
                continue;
            }
            if self.get(file, c)? != 0 {
                run_start = c + 1;
            }
            c += 1;
        }
    }

    /// Allocates `n` contiguous clusters with refcount 1; returns the host byte offset.
    pub fn alloc(&mut self, file: &File, n: u64) -> Result<u64> {
        let epb = self.entries_per_block();
        for _ in 0..64 {
            let c = self.find_free_run(file, n)?;
            let missing = (c / epb..=(c + n - 1) / epb).find(|&b| !self.has_block(b));
            if let Some(b) = missing {
                self.create_block(file, b)?;
                continue;
            }
            // Creating blocks may have taken clusters in the run; recheck.
            let mut taken = false;
            for i in c..c + n {
                if self.get(file, i)? != 0 {
                    taken = true;
                    break;
                }
            }
            if taken {
                continue;
            }
            for i in c..c + n {
                self.add(file, i, 1)?;
            }
            self.end = self.end.max(c + n);
            self.free_hint = c + n;
            return Ok(c << self.cluster_bits);
        }
        Err(Error::new(ErrorKind::Corrupt, "cannot find free clusters").with_operation("allocate"))
    }

    /// Creates the refcount block with index `b`, placed at the end of the image.
    fn create_block(&mut self, file: &File, b: u64) -> Result<()> {
        let epb = self.entries_per_block();
        for _ in 0..16 {
            if self.has_block(b) {
                return Ok(());
            }
            if b as usize >= self.table.len() {
                self.grow_table(file, b + 1)?;
                continue;
            }
            let loc = (b * epb).max(self.end);
            let lb = loc / epb;
            if lb != b && !self.has_block(lb) {
                self.create_block(file, lb)?;
                continue;
            }
            let mut data = vec![0u8; self.cs() as usize];
            if lb == b {
                set_entry(&mut data, (loc % epb) as usize, self.order, 1);
            }
            let off = loc << self.cluster_bits;
            file.write_all_at(&data, off)
                .map_err(|e| io(e, "write refcount block", off))?;
            self.blocks.insert(b, Block { data, dirty: false });
            self.table[b as usize] = off;
            self.table_dirty = true;
            self.end = self.end.max(loc + 1);
            if lb != b {
                self.add(file, loc, 1)?;
            }
            return Ok(());
        }
        Err(
            Error::new(ErrorKind::Corrupt, "cannot place a refcount block")
                .with_operation("allocate"),
        )
    }

    /// Replaces the refcount table with a larger one at the end of the image, switching the
    /// header to it once the new table is durable.
    fn grow_table(&mut self, file: &File, min_entries: u64) -> Result<()> {
        let cs = self.cs();
        let epb = self.entries_per_block();
        let loc = self.end;
        let mut entries = min_entries.max(self.table.len() as u64 * 2);
        let mut k;
        loop {
            k = (entries * 8).div_ceil(cs);
            // Cover the new table itself plus the blocks it may need.
            let need = (loc + k + 4) / epb + 1;
            if need <= entries {
                break;
            }
            entries = need;
        }
        entries = k * cs / 8;
        if k * cs > MAX_REFTABLE_BYTES {
            return Err(
                Error::new(ErrorKind::Unsupported, "refcount table would exceed 8 MiB")
                    .with_operation("allocate"),
            );
        }
        let (old_off, old_k) = (self.table_offset, self.table_clusters);
        self.end = loc + k;
        self.table.resize(entries as usize, 0);
        for c in loc..loc + k {
            self.add(file, c, 1)?;
        }
        self.write_blocks(file)?;
        let new_off = loc << self.cluster_bits;
        file.write_all_at(&encode(&self.table), new_off)
            .map_err(|e| io(e, "write refcount table", new_off))?;
        file.sync_data().map_err(|e| io(e, "sync", 0))?;
        let mut hdr = [0u8; 12];
        put64(&mut hdr, 0, new_off);
        put32(&mut hdr, 8, k as u32);
        file.write_all_at(&hdr, 48)
            .map_err(|e| io(e, "write header", 48))?;
        file.sync_data().map_err(|e| io(e, "sync", 0))?;
        self.table_offset = new_off;
        self.table_clusters = k;
        self.table_dirty = false;
        for i in 0..old_k {
            self.add(file, (old_off >> self.cluster_bits) + i, -1)?;
        }
        Ok(())
    }

    fn write_blocks(&mut self, file: &File) -> Result<bool> {
        let mut wrote = false;
        let mut keys: Vec<u64> = self
            .blocks
            .iter()
            .filter(|(_, b)| b.dirty)
            .map(|(&k, _)| k)
            .collect();
        keys.sort_unstable();
        for b in keys {
            let off = self.table[b as usize];
            if let Some(block) = self.blocks.get_mut(&b) {
                file.write_all_at(&block.data, off)
                    .map_err(|e| io(e, "write refcount block", off))?;
                block.dirty = false;
                wrote = true;
            }
        }
        Ok(wrote)
    }

    /// Writes every dirty block and the table; returns whether anything was written.
    pub fn flush(&mut self, file: &File) -> Result<bool> {
        let mut wrote = self.write_blocks(file)?;
        if self.table_dirty {
            file.write_all_at(&encode(&self.table), self.table_offset)
                .map_err(|e| io(e, "write refcount table", self.table_offset))?;
            self.table_dirty = false;
            wrote = true;
        }
        Ok(wrote)
    }

    /// Queues a decrement of one reference to host cluster `cluster`, applied by
    /// [`Refcounts::apply_pending`] once the referencing metadata is durable.
    pub fn defer_free(&mut self, cluster: u64) {
        self.pending.push(cluster);
    }

    /// Whether decrements are queued.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Applies queued decrements (in memory; the caller flushes).
    pub fn apply_pending(&mut self, file: &File) -> Result<()> {
        let pending = std::mem::take(&mut self.pending);
        for c in pending {
            self.add(file, c, -1)?;
        }
        Ok(())
    }
}

/// Reads entry `i` of a refcount block with `1 << order`-bit entries.
pub(crate) fn get_entry(data: &[u8], i: usize, order: u32) -> u64 {
    match order {
        0..=2 => {
            let bits = 1usize << order;
            let per_byte = 8 / bits;
            let shift = (i % per_byte) * bits;
            ((data[i / per_byte] >> shift) as u64) & ((1u64 << bits) - 1)
        }
        3 => data[i] as u64,
        4 => u16::from_be_bytes([data[2 * i], data[2 * i + 1]]) as u64,
        5 => {
            let mut a = [0u8; 4];
            a.copy_from_slice(&data[4 * i..4 * i + 4]);
            u32::from_be_bytes(a) as u64
        }
        _ => {
            let mut a = [0u8; 8];
            a.copy_from_slice(&data[8 * i..8 * i + 8]);
            u64::from_be_bytes(a)
        }
    }
}

/// Writes entry `i` of a refcount block with `1 << order`-bit entries.
pub(crate) fn set_entry(data: &mut [u8], i: usize, order: u32, v: u64) {
    match order {
        0..=2 => {
            let bits = 1usize << order;
            let per_byte = 8 / bits;
            let shift = (i % per_byte) * bits;
            let mask = (((1u16 << bits) - 1) as u8) << shift;
            let byte = &mut data[i / per_byte];
            *byte = (*byte & !mask) | (((v as u8) << shift) & mask);
        }
        3 => data[i] = v as u8,
        4 => data[2 * i..2 * i + 2].copy_from_slice(&(v as u16).to_be_bytes()),
        5 => data[4 * i..4 * i + 4].copy_from_slice(&(v as u32).to_be_bytes()),
        _ => data[8 * i..8 * i + 8].copy_from_slice(&v.to_be_bytes()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_refcount_entries_every_width_roundtrip() {
        for order in 0..=6u32 {
            let mut block = vec![0u8; 512];
            let n = (512 * 8) >> order;
            let max = if order == 6 {
                u64::MAX
            } else {
                (1u64 << (1 << order)) - 1
            };
            for i in 0..n {
                set_entry(&mut block, i, order, (i as u64 * 7) & max);
            }
            for i in 0..n {
                assert_eq!(
                    get_entry(&block, i, order),
                    (i as u64 * 7) & max,
                    "order {order} i {i}"
                );
            }
        }
    }

    #[test]
    fn test_refcount_one_bit_layout_lsb_first() {
        let mut block = vec![0u8; 4];
        set_entry(&mut block, 1, 0, 1);
        assert_eq!(block[0], 0b10);
    }
}
