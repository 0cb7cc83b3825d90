//! Scatter-gather reads and writes: a request is split at cluster boundaries and each piece
//! goes straight between the caller's buffers and the host file; runs of clusters that are
//! contiguous in the host file go in one `preadv`/`pwritev`. Only compressed clusters (which
//! are decompressed into the image's one-cluster cache) and partial writes to unallocated or
//! shared clusters (merged with the old contents, copy-on-write) pass through a buffer.

use std::io::IoSliceMut;

use super::refcount::io;
use super::{Mapping, Qcow2, COPIED};
use crate::iov::{fill_zero, preadv_exact, pwritev_all, scatter, Segs, SegsMut};
use crate::Result;

/// A run of host-contiguous pieces: host start, host end, buffers.
type Run<T> = Option<(u64, u64, Vec<T>)>;

impl Qcow2 {
    /// Reads `segs.len()` bytes at guest `offset` (the caller checked the range).
    pub(super) fn read_segs(&mut self, mut segs: SegsMut<'_>, offset: u64) -> Result<()> {
        let cb = self.header.cluster_bits;
        let mut run: Run<&mut [u8]> = None;
        for (vc, in_off, range) in self.split(offset, segs.len() as u64) {
            let n = range.len() as u64;
            let mut piece = segs.take(range.len());
            match self.lookup(vc)? {
                Mapping::Normal { host, .. } => {
                    // Host-contiguous pieces join the run even across other mappings: each
                    // piece has its own buffers.
                    let h = host + in_off;
                    match &mut run {
                        Some((_, end, bufs)) if *end == h => {
                            bufs.append(&mut piece);
                            *end += n;
                        }
                        _ => {
                            self.read_run(run.take())?;
                            run = Some((h, h + n, piece));
                        }
                    }
                }
                Mapping::Unallocated => self.read_backing_segs(piece, (vc << cb) + in_off)?,
                Mapping::Compressed { offset, sectors } => {
                    let data = self.decompressed(offset, sectors)?;
                    let s = in_off as usize;
                    scatter(&mut piece, &data[s..s + n as usize]);
                }
                Mapping::Zero { .. } => fill_zero(&mut piece),
            }
        }
        self.read_run(run)
    }

    fn read_run(&self, run: Run<&mut [u8]>) -> Result<()> {
        let Some((host, _, mut bufs)) = run else {
            return Ok(());
        };
        // Sparse preallocation: past the end of the file reads as zeroes.
        preadv_exact(&self.file, &mut bufs, host, true)
            .map_err(|e| io(e, "read", host).with_path(&self.path))
    }

    /// Reads from the backing file, zero-filling past its end (or everything without one).
    fn read_backing_segs(&mut self, piece: Vec<&mut [u8]>, offset: u64) -> Result<()> {
        let mut segs = SegsMut::from_vec(piece);
        let Some(b) = self.backing.as_mut() else {
            fill_zero(&mut segs.take(segs.len()));
            return Ok(());
        };
        let inside = b.size().saturating_sub(offset).min(segs.len() as u64) as usize;
        let mut head = segs.take(inside);
        fill_zero(&mut segs.take(segs.len()));
        if head.is_empty() {
            return Ok(());
        }
        let mut iov: Vec<IoSliceMut<'_>> = head.iter_mut().map(|s| IoSliceMut::new(s)).collect();
        b.read_vectored_at(&mut iov, offset)
    }

    /// Writes `segs.len()` bytes at guest `offset` (the caller checked range and writability).
    pub(super) fn write_segs(&mut self, mut segs: Segs<'_>, offset: u64) -> Result<()> {
        let mut run: Run<&[u8]> = None;
        for (vc, in_off, range) in self.split(offset, segs.len() as u64) {
            let n = range.len() as u64;
            let mut piece = segs.take(range.len());
            let m = self.lookup(vc)?;
            if let Mapping::Normal { host, copied: true } = m {
                let h = host + in_off;
                match &mut run {
                    Some((_, end, bufs)) if *end == h => {
                        bufs.append(&mut piece);
                        *end += n;
                    }
                    _ => {
                        self.write_run(run.take())?;
                        run = Some((h, h + n, piece));
                    }
                }
                continue;
            }
            self.write_run(run.take())?;
            self.write_cluster_segs(vc, in_off, &piece, m)?;
        }
        self.write_run(run)
    }

    fn write_run(&mut self, run: Run<&[u8]>) -> Result<()> {
        match run {
            Some((host, _, bufs)) => self.write_host_segs(&bufs, host),
            None => Ok(()),
        }
    }

    /// Writes buffers to the host file at `offset`.
    pub(crate) fn write_host_segs(&mut self, bufs: &[&[u8]], offset: u64) -> Result<()> {
        pwritev_all(&self.file, bufs, offset)
            .map_err(|e| io(e, "write", offset).with_path(&self.path))?;
        let len: u64 = bufs.iter().map(|b| b.len() as u64).sum();
        self.file_len = self.file_len.max(offset + len);
        self.need_sync = true;
        Ok(())
    }

    /// Writes `data` at `in_off` within guest cluster `vc`, currently mapped as `m`: in place
    /// if the cluster is ours alone, else into a newly allocated cluster (copy-on-write).
    pub(crate) fn write_cluster_segs(
        &mut self,
        vc: u64,
        in_off: u64,
        data: &[&[u8]],
        m: Mapping,
    ) -> Result<()> {
        if let Mapping::Normal { host, copied: true } = m {
            return self.write_host_segs(data, host + in_off);
        }
        let cs = self.cluster_size();
        let n: u64 = data.iter().map(|d| d.len() as u64).sum();
        let merged = if in_off == 0 && n == cs {
            None
        } else {
            let mut buf = vec![0u8; cs as usize];
            self.read_in_cluster(vc, 0, &mut buf)?;
            let mut at = in_off as usize;
            for d in data {
                buf[at..at + d.len()].copy_from_slice(d);
                at += d.len();
            }
            Some(buf)
        };
        let (host, free_old) = match m {
            Mapping::Zero {
                host: Some(h),
                copied: true,
            } => (h, false),
            _ => (self.alloc_clusters(1)?, true),
        };
        match &merged {
            Some(buf) => self.write_host(buf, host)?,
            None => self.write_host_segs(data, host)?,
        }
        self.set_l2(vc, host | COPIED)?;
        if free_old {
            self.free_mapping(m);
        }
        Ok(())
    }
}
