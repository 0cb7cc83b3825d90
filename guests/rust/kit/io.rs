//! Port I/O and memory-mapped I/O from ring 3.
//!
//! Port I/O works in ring 3 because the start code (`asm/kit.S`) gives
//! the guest IOPL=3 and a TSS I/O bitmap that allows every port. The
//! functions are safe: in a test guest that owns the machine, a port
//! access cannot break Rust's memory model (devices that write memory by
//! DMA are only given buffers the caller owns, see `dma`).

use core::arch::asm;

/// Writes a byte to `port`.
pub fn outb(port: u16, value: u8) {
    // SAFETY: `out` touches no memory; the TSS I/O bitmap allows the port.
    unsafe {
        asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags))
    }
}

/// Reads a byte from `port`.
pub fn inb(port: u16) -> u8 {
    let value: u8;
    // SAFETY: `in` touches no memory; the TSS I/O bitmap allows the port.
    unsafe {
        asm!("in al, dx", in("dx") port, out("al") value, options(nomem, nostack, preserves_flags))
    }
    value
}

/// Writes a 16-bit word to `port`.
pub fn outw(port: u16, value: u16) {
    // SAFETY: as for `outb`.
    unsafe {
        asm!("out dx, ax", in("dx") port, in("ax") value, options(nomem, nostack, preserves_flags))
    }
}

/// Reads a 16-bit word from `port`.
pub fn inw(port: u16) -> u16 {
    let value: u16;
    // SAFETY: as for `inb`.
    unsafe {
        asm!("in ax, dx", in("dx") port, out("ax") value, options(nomem, nostack, preserves_flags))
    }
    value
}

/// Writes a 32-bit dword to `port`.
pub fn outl(port: u16, value: u32) {
    // SAFETY: as for `outb`.
    unsafe {
        asm!("out dx, eax", in("dx") port, in("eax") value, options(nomem, nostack, preserves_flags))
    }
}

/// Reads a 32-bit dword from `port`.
pub fn inl(port: u16) -> u32 {
    let value: u32;
    // SAFETY: as for `inb`.
    unsafe {
        asm!("in eax, dx", in("dx") port, out("eax") value, options(nomem, nostack, preserves_flags))
    }
    value
}

/// The time-stamp counter (readable in ring 3: CR4.TSD is clear).
pub fn rdtsc() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: `rdtsc` only reads the counter.
    unsafe { asm!("rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags)) }
    (u64::from(hi) << 32) | u64::from(lo)
}

/// A window of device registers at a fixed physical (= virtual) address,
/// accessed with volatile loads and stores of the access width asked for.
#[derive(Clone, Copy, Debug)]
pub struct Mmio {
    base: u64,
}

impl Mmio {
    /// A register window at `base`.
    ///
    /// # Safety
    /// `base` and every offset the caller will use must be device
    /// registers mapped by the start code's identity map (the first
    /// 4 GiB), not memory Rust code owns.
    pub const unsafe fn new(base: u64) -> Self {
        Self { base }
    }

    /// The physical address of the window.
    pub fn base(&self) -> u64 {
        self.base
    }

    /// The same device, `offset` bytes further on.
    pub fn offset(&self, offset: u64) -> Self {
        Self {
            base: self.base + offset,
        }
    }

    fn ptr<T>(&self, offset: u64) -> *mut T {
        (self.base + offset) as *mut T
    }

    /// Reads the byte register at `offset`.
    pub fn read8(&self, offset: u64) -> u8 {
        // SAFETY: `new`'s contract: a mapped device register.
        unsafe { self.ptr::<u8>(offset).read_volatile() }
    }

    /// Reads the 16-bit register at `offset`.
    pub fn read16(&self, offset: u64) -> u16 {
        // SAFETY: `new`'s contract: a mapped device register.
        unsafe { self.ptr::<u16>(offset).read_volatile() }
    }

    /// Reads the 32-bit register at `offset`.
    pub fn read32(&self, offset: u64) -> u32 {
        // SAFETY: `new`'s contract: a mapped device register.
        unsafe { self.ptr::<u32>(offset).read_volatile() }
    }

    /// Writes the byte register at `offset`.
    pub fn write8(&self, offset: u64, value: u8) {
        // SAFETY: `new`'s contract: a mapped device register.
        unsafe { self.ptr::<u8>(offset).write_volatile(value) }
    }

    /// Writes the 16-bit register at `offset`.
    pub fn write16(&self, offset: u64, value: u16) {
        // SAFETY: `new`'s contract: a mapped device register.
        unsafe { self.ptr::<u16>(offset).write_volatile(value) }
    }

    /// Writes the 32-bit register at `offset`.
    pub fn write32(&self, offset: u64, value: u32) {
        // SAFETY: `new`'s contract: a mapped device register.
        unsafe { self.ptr::<u32>(offset).write_volatile(value) }
    }

    /// Writes a 64-bit register as two 32-bit halves, low first (the
    /// virtio transports define their 64-bit fields that way).
    pub fn write64_split(&self, offset: u64, value: u64) {
        self.write32(offset, value as u32);
        self.write32(offset + 4, (value >> 32) as u32);
    }
}
