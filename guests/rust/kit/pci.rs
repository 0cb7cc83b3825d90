//! PCI configuration space through the legacy 0xCF8/0xCFC mechanism:
//! bus 0 scan, BARs (sizing, and assigning those firmware left unassigned
//! or put above 4 GiB), the capability list, the command register.

use crate::io::{inb, inl, inw, outb, outl, outw};
use crate::phys::MAPPED_END;
use crate::{bail, Error};
use core::fmt;

const CONFIG_ADDRESS: u16 = 0xcf8;
const CONFIG_DATA: u16 = 0xcfc;

/// Config-space offsets.
pub const VENDOR_ID: u8 = 0x00;
/// Command register.
pub const COMMAND: u8 = 0x04;
/// Status register (bit 4: capability list present).
pub const STATUS: u8 = 0x06;
/// Class code (24 bits) above the revision.
pub const CLASS_REVISION: u8 = 0x08;
/// Header type (bit 7: multi-function).
pub const HEADER_TYPE: u8 = 0x0e;
/// First BAR.
pub const BAR0: u8 = 0x10;
/// Subsystem ID.
pub const SUBSYSTEM_ID: u8 = 0x2e;
/// Capability list pointer.
pub const CAPABILITIES: u8 = 0x34;

/// Command bits.
pub const CMD_IO: u16 = 1;
/// Memory space decoding.
pub const CMD_MEMORY: u16 = 2;
/// Bus mastering: without it a device's DMA does not reach RAM.
pub const CMD_BUS_MASTER: u16 = 4;

/// Capability ID of MSI-X.
pub const CAP_MSIX: u8 = 0x11;
/// Capability ID of vendor-specific capabilities (virtio's).
pub const CAP_VENDOR: u8 = 0x09;

/// Where unassigned memory BARs go: at least here, above every assigned
/// one (Strata's and QEMU's 32-bit MMIO hole starts at 3 GiB).
const MEM_WINDOW_START: u64 = 0xc000_0000;
/// The first I/O port for unassigned I/O BARs (as SeaBIOS).
const IO_WINDOW_START: u64 = 0xc000;

/// A bus/device/function address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bdf {
    /// Bus.
    pub bus: u8,
    /// Device (0-31).
    pub dev: u8,
    /// Function (0-7).
    pub func: u8,
}

impl fmt::Display for Bdf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02x}:{:02x}.{}", self.bus, self.dev, self.func)
    }
}

impl Bdf {
    fn select(&self, offset: u8) {
        let addr = 0x8000_0000
            | u32::from(self.bus) << 16
            | u32::from(self.dev) << 11
            | u32::from(self.func) << 8
            | u32::from(offset & 0xfc);
        outl(CONFIG_ADDRESS, addr);
    }

    /// Reads the dword at `offset` (rounded down to 4).
    pub fn read32(&self, offset: u8) -> u32 {
        self.select(offset);
        inl(CONFIG_DATA)
    }

    /// Reads the word at `offset` (even).
    pub fn read16(&self, offset: u8) -> u16 {
        self.select(offset);
        inw(CONFIG_DATA + u16::from(offset & 2))
    }

    /// Reads the byte at `offset`.
    pub fn read8(&self, offset: u8) -> u8 {
        self.select(offset);
        inb(CONFIG_DATA + u16::from(offset & 3))
    }

    /// Writes the dword at `offset` (rounded down to 4).
    pub fn write32(&self, offset: u8, value: u32) {
        self.select(offset);
        outl(CONFIG_DATA, value);
    }

    /// Writes the word at `offset` (even).
    pub fn write16(&self, offset: u8, value: u16) {
        self.select(offset);
        outw(CONFIG_DATA + u16::from(offset & 2), value);
    }

    /// Writes the byte at `offset`.
    pub fn write8(&self, offset: u8, value: u8) {
        self.select(offset);
        outb(CONFIG_DATA + u16::from(offset & 3), value);
    }
}

/// A BAR's decoded contents.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bar {
    /// Not implemented (size 0), or the upper half of a 64-bit BAR.
    None,
    /// A memory BAR.
    Memory {
        /// Base address (0 if unassigned).
        addr: u64,
        /// Size in bytes.
        size: u64,
        /// 64-bit BAR (uses the next slot too).
        wide: bool,
    },
    /// An I/O BAR.
    Io {
        /// First port (0 if unassigned).
        port: u16,
        /// Number of ports.
        size: u16,
    },
}

/// One PCI function.
#[derive(Clone, Copy, Debug)]
pub struct Function {
    /// Where it is.
    pub bdf: Bdf,
    /// Vendor ID.
    pub vendor: u16,
    /// Device ID.
    pub device: u16,
}

impl Function {
    /// The function at `bdf`, if one answers.
    pub fn probe(bdf: Bdf) -> Option<Self> {
        let id = bdf.read32(VENDOR_ID);
        let vendor = id as u16;
        (vendor != 0xffff && vendor != 0).then_some(Self {
            bdf,
            vendor,
            device: (id >> 16) as u16,
        })
    }

    /// Subsystem ID (the virtio device type of a transitional device).
    pub fn subsystem_id(&self) -> u16 {
        self.bdf.read16(SUBSYSTEM_ID)
    }

    /// Sets `bits` in the command register.
    pub fn enable(&self, bits: u16) {
        let cmd = self.bdf.read16(COMMAND);
        self.bdf.write16(COMMAND, cmd | bits);
    }

    /// Decodes BAR `index` (0-5), sizing it with the usual all-ones write
    /// while decoding is off.
    pub fn bar(&self, index: u8) -> Bar {
        let off = BAR0 + index * 4;
        let cmd = self.bdf.read16(COMMAND);
        self.bdf.write16(COMMAND, cmd & !(CMD_IO | CMD_MEMORY));
        let bar = self.decode_bar(off);
        self.bdf.write16(COMMAND, cmd);
        bar
    }

    fn size_dword(&self, off: u8) -> (u32, u32) {
        let orig = self.bdf.read32(off);
        self.bdf.write32(off, 0xffff_ffff);
        let mask = self.bdf.read32(off);
        self.bdf.write32(off, orig);
        (orig, mask)
    }

    fn decode_bar(&self, off: u8) -> Bar {
        let (orig, mask) = self.size_dword(off);
        if orig & 1 == 1 {
            let size = !(mask & 0xffff_fffc) as u16;
            return match mask & 0xffff_fffc {
                0 => Bar::None,
                _ => Bar::Io {
                    port: (orig & 0xfffc) as u16,
                    size: size.wrapping_add(1),
                },
            };
        }
        let wide = orig & 6 == 4;
        let (hi, hi_mask) = if wide && off < BAR0 + 20 {
            self.size_dword(off + 4)
        } else {
            (0, if wide { 0xffff_ffff } else { 0 })
        };
        let addr = u64::from(hi) << 32 | u64::from(orig & 0xffff_fff0);
        let mask64 = u64::from(hi_mask) << 32 | u64::from(mask & 0xffff_fff0);
        let mask64 = if wide {
            mask64
        } else {
            mask64 | 0xffff_ffff_0000_0000
        };
        match mask64 {
            0xffff_ffff_0000_0000 => Bar::None,
            m => Bar::Memory {
                addr,
                size: (!m).wrapping_add(1),
                wide,
            },
        }
    }

    /// Writes `addr` into BAR `index` (both halves of a 64-bit one).
    pub fn set_bar(&self, index: u8, addr: u64, wide: bool) {
        let off = BAR0 + index * 4;
        let low = self.bdf.read32(off) & 0xf;
        self.bdf.write32(off, addr as u32 | low);
        if wide {
            self.bdf.write32(off + 4, (addr >> 32) as u32);
        }
    }

    /// The capabilities as (config offset, ID), following the list from
    /// 0x34 (at most 48 entries, so a looping list ends).
    pub fn capabilities(&self) -> impl Iterator<Item = (u8, u8)> + '_ {
        let has_list = self.bdf.read16(STATUS) & 0x10 != 0;
        let mut next = if has_list {
            self.bdf.read8(CAPABILITIES) & 0xfc
        } else {
            0
        };
        let mut budget = 48;
        core::iter::from_fn(move || {
            if next == 0 || budget == 0 {
                return None;
            }
            budget -= 1;
            let here = next;
            next = self.bdf.read8(here + 1) & 0xfc;
            Some((here, self.bdf.read8(here)))
        })
    }

    /// Whether MSI-X is present and enabled.
    pub fn msix_enabled(&self) -> bool {
        self.capabilities()
            .find(|&(_, id)| id == CAP_MSIX)
            .is_some_and(|(off, _)| self.bdf.read16(off + 2) & 0x8000 != 0)
    }
}

/// Every function on bus 0, in device/function order.
pub fn scan_bus0() -> impl Iterator<Item = Function> {
    (0..32u8).flat_map(|dev| {
        let f0 = Function::probe(Bdf {
            bus: 0,
            dev,
            func: 0,
        });
        let multi = f0.is_some_and(|f| f.bdf.read8(HEADER_TYPE) & 0x80 != 0);
        let funcs = if multi { 8 } else { 1 };
        (0..funcs).filter_map(move |func| Function::probe(Bdf { bus: 0, dev, func }))
    })
}

/// Hands out addresses to BARs that firmware left unassigned (no
/// firmware ran) or placed above the 4 GiB identity map, above every BAR
/// already assigned on bus 0.
#[derive(Debug)]
pub struct BarAllocator {
    mem_next: u64,
    io_next: u64,
}

impl BarAllocator {
    /// Scans bus 0 for the assigned BARs' ends.
    pub fn new() -> Self {
        let (mut mem, mut io) = (MEM_WINDOW_START, IO_WINDOW_START);
        for f in scan_bus0() {
            let mut i = 0;
            while i < 6 {
                match f.bar(i) {
                    Bar::Memory { addr, size, wide } => {
                        if addr != 0 && addr + size <= MAPPED_END {
                            mem = mem.max(addr + size);
                        }
                        i += u8::from(wide);
                    }
                    Bar::Io { port, size } if port != 0 => {
                        io = io.max(u64::from(port) + u64::from(size));
                    }
                    _ => {}
                }
                i += 1;
            }
        }
        Self {
            mem_next: mem,
            io_next: io,
        }
    }

    fn take(next: &mut u64, size: u64, limit: u64) -> Option<u64> {
        let addr = (*next + size - 1) & !(size - 1);
        let end = addr.checked_add(size).filter(|&e| e <= limit)?;
        *next = end;
        Some(addr)
    }

    /// Assigns every BAR of `f` that needs it, then enables I/O and memory
    /// decoding and bus mastering. Returns the BARs as they now are.
    pub fn assign(&mut self, f: &Function) -> Result<[Bar; 6], Error> {
        let mut bars = [Bar::None; 6];
        let cmd = f.bdf.read16(COMMAND);
        f.bdf.write16(COMMAND, cmd & !(CMD_IO | CMD_MEMORY));
        let mut i = 0;
        while i < 6 {
            bars[i as usize] = match f.decode_bar(BAR0 + i * 4) {
                Bar::Memory { addr, size, wide } if addr == 0 || addr + size > MAPPED_END => {
                    let Some(new) = Self::take(&mut self.mem_next, size, 0xfec0_0000) else {
                        bail!("pci {}: no room for BAR{i} ({size:#x} bytes)", f.bdf);
                    };
                    f.set_bar(i, new, wide);
                    Bar::Memory {
                        addr: new,
                        size,
                        wide,
                    }
                }
                Bar::Io { port: 0, size } => {
                    let Some(new) = Self::take(&mut self.io_next, u64::from(size), 0x1_0000) else {
                        bail!("pci {}: no room for I/O BAR{i} ({size} ports)", f.bdf);
                    };
                    f.set_bar(i, new, false);
                    Bar::Io {
                        port: new as u16,
                        size,
                    }
                }
                bar => bar,
            };
            if let Bar::Memory { wide: true, .. } = bars[i as usize] {
                i += 1;
            }
            i += 1;
        }
        f.bdf
            .write16(COMMAND, cmd | CMD_IO | CMD_MEMORY | CMD_BUS_MASTER);
        Ok(bars)
    }
}

impl Default for BarAllocator {
    fn default() -> Self {
        Self::new()
    }
}
