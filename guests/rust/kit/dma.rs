//! Memory for devices to read and write (DMA): a bump allocator over the
//! RAM after the guest image. Guest-physical = virtual (identity map),
//! so a buffer's address is what goes into a descriptor.

use crate::phys::MAPPED_END;
use crate::pvh::{StartInfo, MEM_RAM};
use crate::{bail, Error};

extern "C" {
    /// End of the loaded image (page-aligned), from `asm/kit.ld`.
    static _image_end: u8;
}

/// The allocator: [next, end) is free.
#[derive(Debug)]
pub struct Dma {
    next: u64,
    end: u64,
}

/// A zeroed, exclusively owned buffer of DMA memory.
#[derive(Debug)]
pub struct DmaBuf {
    addr: u64,
    len: usize,
}

fn overlaps(a: (u64, u64), b: (u64, u64)) -> bool {
    a.0 < b.0.saturating_add(b.1) && b.0 < a.0.saturating_add(a.1)
}

impl Dma {
    /// The RAM from the end of the image up to the end of its memory-map
    /// entry (at most 4 GiB), minus the boot information and modules.
    pub fn new(info: &StartInfo) -> Result<Self, Error> {
        let mut start = core::ptr::addr_of!(_image_end) as u64;
        let Some(ram) = info
            .memmap()
            .find(|e| e.kind == MEM_RAM && e.addr <= start && start < e.addr + e.size)
        else {
            bail!("no RAM entry in the memory map holds the end of the image ({start:#x})");
        };
        let mut end = (ram.addr + ram.size).min(MAPPED_END);
        let cmdline = (info.cmdline_addr(), info.cmdline().len() as u64 + 1);
        let fixed = [
            (info.addr, 4096),
            cmdline,
            info.memmap_range(),
            info.modlist_range(),
        ];
        let reserved = fixed
            .into_iter()
            .chain(info.modules().map(|m| (m.addr, m.size)));
        for (addr, len) in reserved.filter(|r| r.1 != 0) {
            if overlaps((start, end - start), (addr, len)) {
                if addr <= start {
                    start = (addr + len + 4095) & !4095;
                } else {
                    end = addr;
                }
            }
        }
        if start >= end {
            bail!("no RAM left for DMA after the image");
        }
        Ok(Self { next: start, end })
    }

    /// A zeroed buffer of `len` bytes aligned to `align` (a power of two).
    pub fn alloc(&mut self, len: usize, align: usize) -> Result<DmaBuf, Error> {
        let addr = (self.next + align as u64 - 1) & !(align as u64 - 1);
        match addr.checked_add(len as u64) {
            Some(end) if end <= self.end => {
                self.next = end;
                // SAFETY: [addr, end) is free RAM in the identity map that
                // no other buffer and no Rust object owns.
                unsafe { core::ptr::write_bytes(addr as *mut u8, 0, len) };
                Ok(DmaBuf { addr, len })
            }
            _ => bail!(
                "out of DMA memory: {len} bytes wanted, {} free",
                self.free()
            ),
        }
    }

    /// Bytes still free.
    pub fn free(&self) -> u64 {
        self.end - self.next
    }

    /// The range the allocator hands out from next.
    pub fn range(&self) -> (u64, u64) {
        (self.next, self.end)
    }
}

impl DmaBuf {
    /// Physical address (for descriptors and device registers).
    pub fn addr(&self) -> u64 {
        self.addr
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the buffer is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The contents. Read them only while no request that lets the device
    /// write this buffer is in flight.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: the buffer is exclusively ours (alloc) and mapped.
        unsafe { core::slice::from_raw_parts(self.addr as *const u8, self.len) }
    }

    /// The contents, writable.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: the buffer is exclusively ours (alloc) and mapped.
        unsafe { core::slice::from_raw_parts_mut(self.addr as *mut u8, self.len) }
    }

    fn field<T>(&self, offset: usize) -> *mut T {
        let addr = self.addr as usize + offset;
        assert!(
            offset + core::mem::size_of::<T>() <= self.len
                && addr.is_multiple_of(core::mem::align_of::<T>()),
            "DMA access out of bounds or misaligned"
        );
        addr as *mut T
    }

    /// A volatile read of the `T` at byte `offset` (for memory the device
    /// may write at any time, like a used ring). `offset` must be aligned.
    pub fn read<T: Copy>(&self, offset: usize) -> T {
        // SAFETY: in bounds of our buffer and aligned (asserted by field).
        unsafe { self.field::<T>(offset).read_volatile() }
    }

    /// A volatile write of `value` at byte `offset` (aligned).
    pub fn write<T: Copy>(&mut self, offset: usize, value: T) {
        // SAFETY: in bounds of our buffer and aligned (asserted by field).
        unsafe { self.field::<T>(offset).write_volatile(value) }
    }
}
