//! A split virtqueue, driver side, polled.
//!
//! Two levels: the raw one writes any descriptor, available-ring slot or
//! index the caller likes (for hostile-guest tests), the managed one
//! ([`Virtq::add`], [`Virtq::pop_used`], [`Virtq::submit`]) keeps free
//! descriptors chained through their `next` fields, as Linux does, and
//! allows many requests in flight. The available ring's flags ask the
//! device not to interrupt: the drivers poll `used.idx`.

use super::layout::{Layout, DESC_SIZE};
use crate::dma::{Dma, DmaBuf};
use crate::io::{outw, rdtsc, Mmio};
use crate::{bail, Error};
use core::sync::atomic::{fence, Ordering};

/// Descriptor flag: the chain continues at `next`.
pub const DESC_F_NEXT: u16 = 1;
/// Descriptor flag: the device writes this buffer.
pub const DESC_F_WRITE: u16 = 2;
/// Descriptor flag: the buffer is a table of descriptors.
pub const DESC_F_INDIRECT: u16 = 4;
/// Available-ring flag: no interrupts wanted.
pub const AVAIL_F_NO_INTERRUPT: u16 = 1;
/// Used-ring flag: the device does not need notifications right now.
pub const USED_F_NO_NOTIFY: u16 = 1;

/// How long [`Virtq::wait_used`] polls before giving up, in TSC cycles
/// (tens of seconds: a hang guard, not a speed requirement).
pub const TIMEOUT_CYCLES: u64 = 1 << 38;

/// One descriptor as it lies in memory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Desc {
    /// Guest-physical address of the buffer.
    pub addr: u64,
    /// Length in bytes.
    pub len: u32,
    /// `DESC_F_*`.
    pub flags: u16,
    /// Next descriptor of the chain (with `DESC_F_NEXT`).
    pub next: u16,
}

/// One buffer of a request.
#[derive(Clone, Copy, Debug)]
pub struct Buf {
    /// Guest-physical address.
    pub addr: u64,
    /// Length in bytes.
    pub len: u32,
    /// Whether the device writes it (else it reads it).
    pub device_writes: bool,
}

impl Buf {
    /// `len` bytes at `addr` that the device reads.
    pub fn readable(addr: u64, len: usize) -> Self {
        Self {
            addr,
            len: len as u32,
            device_writes: false,
        }
    }

    /// `len` bytes at `addr` that the device writes.
    pub fn writable(addr: u64, len: usize) -> Self {
        Self {
            addr,
            len: len as u32,
            device_writes: true,
        }
    }
}

/// An element of the used ring: the head of a finished chain and the
/// number of bytes the device wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Used {
    /// Head descriptor index.
    pub id: u32,
    /// Bytes written by the device.
    pub len: u32,
}

/// How a queue's "new buffers" notification reaches the device.
#[derive(Clone, Copy, Debug)]
pub enum Notifier {
    /// Write the queue index (32 bits) to this register (virtio-mmio
    /// QueueNotify).
    Mmio32(Mmio),
    /// Write the queue index (16 bits) to this register (virtio-pci
    /// modern notification address).
    Mmio16(Mmio),
    /// Write the queue index (16 bits) to this port (virtio-pci legacy).
    Port(u16),
}

/// A split virtqueue and its memory.
#[derive(Debug)]
pub struct Virtq {
    index: u16,
    layout: Layout,
    mem: DmaBuf,
    notifier: Notifier,
    avail_idx: u16,
    last_used: u16,
    free_head: u16,
    num_free: u16,
}

impl Virtq {
    /// Queue `index` of `size` entries in fresh DMA memory (zeroed; the
    /// descriptors chained into the free list). `size` is not checked: a
    /// hostile-guest test may want 0 or 3.
    pub fn new(dma: &mut Dma, index: u16, size: u16, notifier: Notifier) -> Result<Self, Error> {
        let layout = Layout::new(size);
        let mem = dma.alloc(layout.total.max(4096), 4096)?;
        let mut q = Self {
            index,
            layout,
            mem,
            notifier,
            avail_idx: 0,
            last_used: 0,
            free_head: 0,
            num_free: size,
        };
        for i in 0..size {
            q.write_desc(
                i,
                Desc {
                    next: i.wrapping_add(1),
                    ..Desc::default()
                },
            );
        }
        q.mem.write::<u16>(layout.avail, AVAIL_F_NO_INTERRUPT);
        Ok(q)
    }

    /// The queue index.
    pub fn index(&self) -> u16 {
        self.index
    }

    /// Entries.
    pub fn size(&self) -> u16 {
        self.layout.size
    }

    /// Guest-physical addresses of the descriptor table, available ring
    /// and used ring (what the transport is told).
    pub fn addrs(&self) -> (u64, u64, u64) {
        let base = self.mem.addr();
        (
            base,
            base + self.layout.avail as u64,
            base + self.layout.used as u64,
        )
    }

    // Raw access.

    /// Writes descriptor `i` (any index below the queue size).
    pub fn write_desc(&mut self, i: u16, d: Desc) {
        let off = DESC_SIZE * usize::from(i);
        self.mem.write(off, d.addr);
        self.mem.write(off + 8, d.len);
        self.mem.write(off + 12, d.flags);
        self.mem.write(off + 14, d.next);
    }

    /// Reads descriptor `i`.
    pub fn read_desc(&self, i: u16) -> Desc {
        let off = DESC_SIZE * usize::from(i);
        Desc {
            addr: self.mem.read(off),
            len: self.mem.read(off + 8),
            flags: self.mem.read(off + 12),
            next: self.mem.read(off + 14),
        }
    }

    /// Puts `head` in the next available-ring slot and publishes it by
    /// advancing `avail.idx` (after a fence). Does not notify.
    pub fn push_avail(&mut self, head: u16) {
        let slot = self.layout.avail_slot(self.avail_idx);
        self.mem.write(slot, head);
        self.set_avail_idx(self.avail_idx.wrapping_add(1));
    }

    /// Sets `avail.idx` to any value (after a fence).
    pub fn set_avail_idx(&mut self, idx: u16) {
        fence(Ordering::SeqCst);
        self.avail_idx = idx;
        self.mem.write(self.layout.avail + 2, idx);
        fence(Ordering::SeqCst);
    }

    /// The device's `used.idx`.
    pub fn used_idx(&self) -> u16 {
        self.mem.read(self.layout.used + 2)
    }

    /// Used-ring element `i` (mod size).
    pub fn used_elem(&self, i: u16) -> Used {
        let off = self.layout.used_elem(i);
        Used {
            id: self.mem.read(off),
            len: self.mem.read(off + 4),
        }
    }

    /// Notifies the device that queue `index` has new buffers.
    pub fn kick(&self) {
        fence(Ordering::SeqCst);
        match self.notifier {
            Notifier::Mmio32(reg) => reg.write32(0, u32::from(self.index)),
            Notifier::Mmio16(reg) => reg.write16(0, self.index),
            Notifier::Port(port) => outw(port, self.index),
        }
    }

    /// Notifies the device unless it said (used-ring flags) that it does
    /// not need to be: it is still working through the available ring and
    /// will see the new entries. Linux's rule without event indexes.
    pub fn kick_if_needed(&self) {
        fence(Ordering::SeqCst);
        if self.mem.read::<u16>(self.layout.used) & USED_F_NO_NOTIFY == 0 {
            self.kick();
        }
    }

    /// Descriptors not in use by any chain.
    pub fn free(&self) -> u16 {
        self.num_free
    }

    // Managed requests.

    /// Chains `bufs` into free descriptors and makes the chain available
    /// (no notification); returns its head.
    pub fn add(&mut self, bufs: &[Buf]) -> Result<u16, Error> {
        if bufs.is_empty() || bufs.len() > usize::from(self.num_free) {
            bail!(
                "queue {}: {} buffers, {} descriptors free",
                self.index,
                bufs.len(),
                self.num_free
            );
        }
        let head = self.free_head;
        let mut i = head;
        for (n, b) in bufs.iter().enumerate() {
            let next_free = self.read_desc(i).next;
            let last = n + 1 == bufs.len();
            let flags =
                if b.device_writes { DESC_F_WRITE } else { 0 } | if last { 0 } else { DESC_F_NEXT };
            self.write_desc(
                i,
                Desc {
                    addr: b.addr,
                    len: b.len,
                    flags,
                    next: if last { 0 } else { next_free },
                },
            );
            if last {
                self.free_head = next_free;
            }
            i = next_free;
        }
        self.num_free -= bufs.len() as u16;
        self.push_avail(head);
        Ok(head)
    }

    /// Takes the next used element, if the device has produced one, and
    /// returns its chain to the free list.
    pub fn pop_used(&mut self) -> Result<Option<Used>, Error> {
        if self.used_idx() == self.last_used {
            return Ok(None);
        }
        fence(Ordering::SeqCst);
        let used = self.used_elem(self.last_used);
        self.last_used = self.last_used.wrapping_add(1);
        let Ok(head) = u16::try_from(used.id) else {
            bail!(
                "queue {}: device used id {} (queue size {})",
                self.index,
                used.id,
                self.size()
            );
        };
        if head >= self.size() {
            bail!(
                "queue {}: device used id {head} (queue size {})",
                self.index,
                self.size()
            );
        }
        let (mut i, mut n) = (head, 1u16);
        while self.read_desc(i).flags & DESC_F_NEXT != 0 && n < self.size() {
            i = self.read_desc(i).next;
            n += 1;
        }
        let mut tail = self.read_desc(i);
        tail.next = self.free_head;
        self.write_desc(i, tail);
        self.free_head = head;
        self.num_free += n;
        Ok(Some(used))
    }

    /// Polls until the device uses a chain (or [`TIMEOUT_CYCLES`] pass).
    pub fn wait_used(&mut self) -> Result<Used, Error> {
        let start = rdtsc();
        loop {
            if let Some(used) = self.pop_used()? {
                return Ok(used);
            }
            if rdtsc().wrapping_sub(start) > TIMEOUT_CYCLES {
                bail!("queue {}: the device did not answer", self.index);
            }
            core::hint::spin_loop();
        }
    }

    /// One synchronous request: add `bufs`, notify, wait for that chain;
    /// returns the bytes the device wrote.
    pub fn submit(&mut self, bufs: &[Buf]) -> Result<u32, Error> {
        let head = self.add(bufs)?;
        self.kick();
        let used = self.wait_used()?;
        if used.id != u32::from(head) {
            bail!(
                "queue {}: device used chain {} instead of {head}",
                self.index,
                used.id
            );
        }
        Ok(used.len)
    }
}
