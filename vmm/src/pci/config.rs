//! A type-0 PCI configuration space (256 bytes): header, BARs and a capability list.
//!
//! Registers are kept as 64 dwords with a write mask each; BARs are kept decoded (kind, size,
//! address) so that sizing works the way drivers expect (write all ones, read back the size
//! mask) and so that a write that gives a BAR a new address is reported as a [`BarWrite`],
//! which the PCI root turns into a move on the bus.

/// Offset of the first capability.
pub const FIRST_CAPABILITY: usize = 0x40;
/// Size of the configuration space.
pub const CONFIG_SIZE: usize = 256;
/// Dword index of BAR 0.
pub const BAR0_REG: usize = 4;
/// Number of BARs in a type-0 header.
pub const NUM_BARS: usize = 6;

/// Command register bits a guest may set: I/O space, memory space, bus master, INTx disable.
const COMMAND_WRITABLE: u32 = 0x0407;
/// Status register: a capability list is present.
const STATUS_CAPABILITIES: u32 = 1 << 20;

/// What a BAR decodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BarKind {
    /// Port I/O.
    Io,
    /// 32-bit memory.
    Mem32,
    /// 64-bit memory (uses this BAR and the next one).
    Mem64,
}

/// A BAR's decoded state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bar {
    /// What it decodes.
    pub kind: BarKind,
    /// Size in bytes (a power of two).
    pub size: u64,
    /// Current address.
    pub addr: u64,
    /// Prefetchable (memory BARs).
    pub prefetchable: bool,
    /// The guest wrote all ones to the low (`.0`) or high (`.1`) dword and reads back the
    /// size mask until it writes an address.
    probing: (bool, bool),
}

/// A BAR register write that sets an address (not a sizing probe).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BarWrite {
    /// The BAR.
    pub bar: usize,
    /// Its kind.
    pub kind: BarKind,
    /// The address the guest wrote.
    pub addr: u64,
    /// Its size.
    pub size: u64,
}

/// The fixed identity of a function.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PciHeader {
    /// Vendor ID.
    pub vendor_id: u16,
    /// Device ID.
    pub device_id: u16,
    /// Revision ID.
    pub revision: u8,
    /// Class code, subclass and programming interface (`0xCCSSPP`).
    pub class: u32,
    /// Subsystem vendor ID.
    pub subsystem_vendor_id: u16,
    /// Subsystem ID.
    pub subsystem_id: u16,
    /// Interrupt pin (1 = INTA#, 0 = none).
    pub interrupt_pin: u8,
    /// Interrupt line (the IOAPIC pin it is routed to).
    pub interrupt_line: u8,
}

/// Errors building a configuration space.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PciConfigError {
    /// The BAR index is taken, out of range or its size is not a power of two.
    #[error("invalid BAR {bar} of {size:#x} bytes")]
    InvalidBar {
        /// The BAR.
        bar: usize,
        /// Its size.
        size: u64,
    },
    /// The capabilities do not fit in the configuration space.
    #[error("no room for a capability of {0} bytes")]
    NoRoom(usize),
}

/// A function's configuration space.
#[derive(Clone, Debug)]
pub struct PciConfiguration {
    regs: [u32; CONFIG_SIZE / 4],
    writable: [u32; CONFIG_SIZE / 4],
    bars: [Option<Bar>; NUM_BARS],
    next_capability: usize,
    last_capability: Option<usize>,
}

impl PciConfiguration {
    /// A header with `h`'s identity, no BARs and no capabilities.
    pub fn new(h: &PciHeader) -> PciConfiguration {
        let mut regs = [0u32; CONFIG_SIZE / 4];
        let mut writable = [0u32; CONFIG_SIZE / 4];
        regs[0] = u32::from(h.vendor_id) | u32::from(h.device_id) << 16;
        writable[1] = COMMAND_WRITABLE;
        regs[2] = u32::from(h.revision) | (h.class & 0xff_ffff) << 8;
        // Cache line size and latency timer are plain storage.
        writable[3] = 0x0000_ffff;
        regs[11] = u32::from(h.subsystem_vendor_id) | u32::from(h.subsystem_id) << 16;
        regs[15] = u32::from(h.interrupt_line) | u32::from(h.interrupt_pin) << 8;
        writable[15] = 0xff;
        PciConfiguration {
            regs,
            writable,
            bars: [None; NUM_BARS],
            next_capability: FIRST_CAPABILITY,
            last_capability: None,
        }
    }

    /// Declares BAR `bar` (a 64-bit BAR also takes `bar + 1`) at `addr`.
    pub fn add_bar(
        &mut self,
        bar: usize,
        kind: BarKind,
        size: u64,
        addr: u64,
    ) -> Result<(), PciConfigError> {
        let slots = if kind == BarKind::Mem64 { 2 } else { 1 };
        let io_too_big = kind == BarKind::Io && size > 0x1_0000;
        let bad = bar + slots > NUM_BARS
            || !size.is_power_of_two()
            || size < 16
            || io_too_big
            || (bar..bar + slots).any(|b| self.bars[b].is_some() || self.is_high_half(b));
        if bad {
            return Err(PciConfigError::InvalidBar { bar, size });
        }
        self.bars[bar] = Some(Bar {
            kind,
            size,
            addr: addr & !(size - 1),
            prefetchable: false,
            probing: (false, false),
        });
        Ok(())
    }

    /// BAR `bar`, if declared.
    pub fn bar(&self, bar: usize) -> Option<&Bar> {
        self.bars.get(bar).and_then(|b| b.as_ref())
    }

    fn is_high_half(&self, bar: usize) -> bool {
        bar > 0
            && matches!(
                self.bars[bar - 1],
                Some(Bar {
                    kind: BarKind::Mem64,
                    ..
                })
            )
    }

    /// Appends a capability: `body` starts with the capability ID and a placeholder next
    /// pointer; `writable` (same length, or empty) masks what the guest may change. Returns
    /// its offset.
    pub fn add_capability(
        &mut self,
        body: &[u8],
        writable: &[u8],
    ) -> Result<usize, PciConfigError> {
        let at = self.next_capability;
        let len = body.len().next_multiple_of(4);
        if body.len() < 2 || at + len > CONFIG_SIZE {
            return Err(PciConfigError::NoRoom(body.len()));
        }
        for (i, &b) in body.iter().enumerate() {
            self.set_byte(at + i, b);
            let mask = writable.get(i).copied().unwrap_or(0);
            let reg = (at + i) / 4;
            let shift = ((at + i) % 4) * 8;
            self.writable[reg] = (self.writable[reg] & !(0xff << shift)) | u32::from(mask) << shift;
        }
        self.set_byte(at + 1, 0);
        match self.last_capability {
            Some(prev) => self.set_byte(prev + 1, at as u8),
            None => self.set_byte(0x34, at as u8),
        }
        self.regs[1] |= STATUS_CAPABILITIES;
        self.last_capability = Some(at);
        self.next_capability = at + len;
        Ok(at)
    }

    fn set_byte(&mut self, offset: usize, v: u8) {
        let shift = (offset % 4) * 8;
        let r = &mut self.regs[offset / 4];
        *r = (*r & !(0xff << shift)) | u32::from(v) << shift;
    }

    /// Byte `offset` of the configuration space as the guest reads it.
    pub fn byte(&self, offset: usize) -> u8 {
        (self.read_reg(offset / 4) >> ((offset % 4) * 8)) as u8
    }

    /// Dword `offset..offset+4` read as little-endian (capability fields).
    pub fn dword_at(&self, offset: usize) -> u32 {
        (0..4).fold(0, |v, i| v | u32::from(self.byte(offset + i)) << (i * 8))
    }

    /// The command register.
    pub fn command(&self) -> u16 {
        self.regs[1] as u16
    }

    /// Dword `reg` as the guest reads it.
    pub fn read_reg(&self, reg: usize) -> u32 {
        if (BAR0_REG..BAR0_REG + NUM_BARS).contains(&reg) {
            return self.read_bar_reg(reg - BAR0_REG);
        }
        self.regs.get(reg).copied().unwrap_or(0xffff_ffff)
    }

    fn read_bar_reg(&self, i: usize) -> u32 {
        if self.is_high_half(i) {
            let Some(b) = self.bars[i - 1] else { return 0 };
            return if b.probing.1 {
                (!(b.size - 1) >> 32) as u32
            } else {
                (b.addr >> 32) as u32
            };
        }
        let Some(b) = self.bars[i] else { return 0 };
        let addr = if b.probing.0 { !(b.size - 1) } else { b.addr } as u32;
        match b.kind {
            BarKind::Io => (addr & !0x3) | 1,
            BarKind::Mem32 => (addr & !0xf) | u32::from(b.prefetchable) << 3,
            BarKind::Mem64 => (addr & !0xf) | 0x4 | u32::from(b.prefetchable) << 3,
        }
    }

    /// A guest write of `data` at byte `offset` of dword `reg`. Returns the BAR address it
    /// set, if it wrote one (a sizing probe of all ones sets none).
    pub fn write_reg(&mut self, reg: usize, offset: usize, data: &[u8]) -> Option<BarWrite> {
        if reg >= CONFIG_SIZE / 4 || offset + data.len() > 4 || data.is_empty() {
            return None;
        }
        let old = self.read_reg(reg);
        let mut value = old;
        let mut byte_mask = 0u32;
        for (i, &b) in data.iter().enumerate() {
            let shift = (offset + i) * 8;
            value = (value & !(0xff << shift)) | u32::from(b) << shift;
            byte_mask |= 0xff << shift;
        }
        if (BAR0_REG..BAR0_REG + NUM_BARS).contains(&reg) {
            return self.write_bar_reg(reg - BAR0_REG, value);
        }
        let mask = self.writable[reg] & byte_mask;
        self.regs[reg] = (self.regs[reg] & !mask) | (value & mask);
        None
    }

    fn write_bar_reg(&mut self, i: usize, value: u32) -> Option<BarWrite> {
        let (index, high) = if self.is_high_half(i) {
            (i - 1, true)
        } else {
            (i, false)
        };
        let b = self.bars[index].as_mut()?;
        let probe = value == 0xffff_ffff;
        if high {
            b.probing.1 = probe;
            if !probe {
                b.addr = (b.addr & 0xffff_ffff) | u64::from(value) << 32;
            }
        } else {
            b.probing.0 = probe;
            if !probe {
                let low = u64::from(value) & !(b.size - 1) & 0xffff_fff0;
                b.addr = (b.addr & !0xffff_ffff) | low;
            }
        }
        if probe || b.probing != (false, false) {
            return None;
        }
        Some(BarWrite {
            bar: index,
            kind: b.kind,
            addr: b.addr,
            size: b.size,
        })
    }
}

#[path = "config_persist.rs"]
pub mod persist;

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> PciHeader {
        PciHeader {
            vendor_id: 0x1af4,
            device_id: 0x1041,
            revision: 1,
            class: 0x02_00_00,
            subsystem_vendor_id: 0x1af4,
            subsystem_id: 1,
            interrupt_pin: 1,
            interrupt_line: 9,
        }
    }

    fn write32(c: &mut PciConfiguration, reg: usize, v: u32) -> Option<BarWrite> {
        c.write_reg(reg, 0, &v.to_le_bytes())
    }

    #[test]
    fn test_pci_configuration_header_fields_and_read_only_identity() {
        let mut c = PciConfiguration::new(&header());

        write32(&mut c, 0, 0);
        write32(&mut c, 1, 0xffff_ffff);
        c.write_reg(15, 0, &[5]);

        assert_eq!(c.read_reg(0), 0x1041_1af4);
        assert_eq!(c.read_reg(1), 0x0407);
        assert_eq!(c.read_reg(2), 0x0200_0001);
        assert_eq!(c.read_reg(11), 0x0001_1af4);
        assert_eq!(c.read_reg(15), 0x0105);
    }

    #[test]
    fn test_pci_configuration_bar32_sizing_then_relocation() {
        let mut c = PciConfiguration::new(&header());
        c.add_bar(1, BarKind::Mem32, 0x4000, 0xc000_0000).unwrap();

        let probe = write32(&mut c, 5, 0xffff_ffff);
        let mask = c.read_reg(5);
        let back = write32(&mut c, 5, 0xc000_0000);
        let moved = write32(&mut c, 5, 0xc001_2345);

        assert_eq!(probe, None);
        assert_eq!(mask, 0xffff_c000);
        assert_eq!(back.map(|w| w.addr), Some(0xc000_0000));
        assert_eq!(moved.map(|w| (w.bar, w.addr)), Some((1, 0xc001_0000)));
        assert_eq!(c.read_reg(5), 0xc001_0000);
    }

    #[test]
    fn test_pci_configuration_bar64_halves_and_probe_of_each_half() {
        let mut c = PciConfiguration::new(&header());
        c.add_bar(4, BarKind::Mem64, 0x8000, 0xc000_8000).unwrap();

        let low = c.read_reg(8);
        write32(&mut c, 8, 0xffff_ffff);
        let low_mask = c.read_reg(8);
        write32(&mut c, 8, 0xc000_8000);
        write32(&mut c, 9, 0xffff_ffff);
        let high_mask = c.read_reg(9);
        write32(&mut c, 9, 0);
        let moved = write32(&mut c, 9, 0x1);

        assert_eq!(low, 0xc000_8004);
        assert_eq!(low_mask, 0xffff_8004);
        assert_eq!(high_mask, 0xffff_ffff);
        assert_eq!(moved.map(|w| w.addr), Some(0x1_c000_8000));
        assert_eq!(c.read_reg(9), 1);
    }

    #[test]
    fn test_pci_configuration_io_bar_reads_with_io_bit() {
        let mut c = PciConfiguration::new(&header());
        c.add_bar(0, BarKind::Io, 0x100, 0xc000).unwrap();

        write32(&mut c, 4, 0xffff_ffff);
        let mask = c.read_reg(4);
        let w = write32(&mut c, 4, 0xc101);

        assert_eq!(mask, 0xffff_ff01);
        assert_eq!(w.map(|w| w.addr), Some(0xc100));
        assert_eq!(c.read_reg(4), 0xc101);
    }

    #[test]
    fn test_pci_configuration_bad_bars_rejected() {
        let mut c = PciConfiguration::new(&header());
        c.add_bar(4, BarKind::Mem64, 0x8000, 0).unwrap();

        assert!(c.add_bar(5, BarKind::Mem32, 0x1000, 0).is_err());
        assert!(c.add_bar(5, BarKind::Mem64, 0x1000, 0).is_err());
        assert!(c.add_bar(0, BarKind::Mem32, 0x1800, 0).is_err());
        assert!(c.add_bar(6, BarKind::Mem32, 0x1000, 0).is_err());
        assert_eq!(c.read_reg(10), 0);
    }

    #[test]
    fn test_pci_configuration_capability_list_linked_and_masked() {
        let mut c = PciConfiguration::new(&header());

        let a = c
            .add_capability(&[0x09, 0xee, 16, 1, 4, 0, 0, 0], &[])
            .unwrap();
        let b = c
            .add_capability(&[0x11, 0, 0x03, 0x00, 0, 0, 0, 0], &[0, 0, 0, 0xc0])
            .unwrap();
        c.write_reg(b / 4, 2, &[0xff, 0xff]);
        c.write_reg(a / 4, 0, &[0, 0, 0, 0]);

        assert_eq!(c.byte(0x34) as usize, a);
        assert_eq!(c.byte(a + 1) as usize, b);
        assert_eq!(c.byte(b + 1), 0);
        assert_ne!(c.read_reg(1) & STATUS_CAPABILITIES, 0);
        assert_eq!(c.dword_at(b) >> 16, 0xc003);
        assert_eq!(c.byte(a), 0x09);
    }

    #[test]
    fn test_pci_configuration_out_of_range_accesses_harmless() {
        let mut c = PciConfiguration::new(&header());

        assert_eq!(c.write_reg(64, 0, &[1]), None);
        assert_eq!(c.write_reg(3, 3, &[1, 2]), None);
        assert_eq!(c.read_reg(64), 0xffff_ffff);
    }
}
