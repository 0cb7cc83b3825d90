//! The PVH boot information (`struct hvm_start_info`, Xen's
//! arch-x86/hvm/start_info.h) the loader passes in EBX.
//!
//! Layout: 0 magic, 4 version, 8 flags, 12 nr_modules, 16 modlist_paddr,
//! 24 cmdline_paddr, 32 rsdp_paddr, 40 memmap_paddr, 48 memmap_entries
//! (the last two only if version >= 1). Module entries are 32 bytes
//! (paddr, size, cmdline_paddr, reserved), memory-map entries 24 (addr,
//! size, type, reserved).

use crate::phys::{self, check_mapped};
use crate::{bail, Error};

const MAGIC: u32 = 0x336e_c578;

/// Memory-map type of usable RAM.
pub const MEM_RAM: u32 = 1;

/// One memory-map entry.
#[derive(Clone, Copy, Debug)]
pub struct MemEntry {
    /// Start address.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// E820 type (1 = RAM, 2 = reserved, ...).
    pub kind: u32,
}

/// One module (an initrd under QEMU).
#[derive(Clone, Copy, Debug)]
pub struct Module {
    /// Start address.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// Its string ("" if none).
    pub cmdline: &'static str,
}

/// A validated `hvm_start_info`.
#[derive(Clone, Copy, Debug)]
pub struct StartInfo {
    /// Where it lies.
    pub addr: u64,
    nr_modules: u32,
    modlist: u64,
    cmdline_addr: u64,
    rsdp: u64,
    memmap: u64,
    memmap_entries: u32,
}

impl StartInfo {
    /// Reads the structure at `addr` and checks its magic.
    ///
    /// # Safety
    /// `addr` must be what the PVH loader passed in EBX (boot information
    /// that nothing overwrites while the guest runs).
    pub unsafe fn read(addr: u64) -> Result<Self, Error> {
        check_mapped(addr, 56)?;
        // SAFETY: the caller's contract; 56 bytes checked mapped.
        let field32 = |off: u64| unsafe { phys::read::<u32>(addr + off) };
        // SAFETY: as for field32.
        let field64 = |off: u64| unsafe { phys::read::<u64>(addr + off) };
        if field32(0) != MAGIC {
            bail!("bad hvm_start_info magic");
        }
        let (memmap, memmap_entries) = if field32(4) >= 1 {
            (field64(40), field32(48))
        } else {
            (0, 0)
        };
        let info = Self {
            addr,
            nr_modules: field32(12),
            modlist: field64(16),
            cmdline_addr: field64(24),
            rsdp: field64(32),
            memmap,
            memmap_entries,
        };
        check_mapped(info.modlist, u64::from(info.nr_modules) * 32)?;
        check_mapped(info.memmap, u64::from(info.memmap_entries) * 24)?;
        Ok(info)
    }

    /// The command line ("" if none).
    pub fn cmdline(&self) -> &'static str {
        // SAFETY: boot information (read's contract).
        unsafe { phys::cstr(self.cmdline_addr) }
    }

    /// Physical address of the command line (0 if none).
    pub fn cmdline_addr(&self) -> u64 {
        self.cmdline_addr
    }

    /// Physical address of the ACPI RSDP (0 if the loader gave none).
    pub fn rsdp(&self) -> u64 {
        self.rsdp
    }

    /// The memory map in the loader's order.
    pub fn memmap(&self) -> impl Iterator<Item = MemEntry> {
        let base = self.memmap;
        // SAFETY: boot information, checked mapped in `read`.
        (0..u64::from(self.memmap_entries)).map(move |i| unsafe {
            let e = base + i * 24;
            MemEntry {
                addr: phys::read(e),
                size: phys::read(e + 8),
                kind: phys::read(e + 16),
            }
        })
    }

    /// The physical range the memory map occupies.
    pub fn memmap_range(&self) -> (u64, u64) {
        (self.memmap, u64::from(self.memmap_entries) * 24)
    }

    /// The modules in order.
    pub fn modules(&self) -> impl Iterator<Item = Module> {
        let base = self.modlist;
        // SAFETY: boot information, checked mapped in `read`.
        (0..u64::from(self.nr_modules)).map(move |i| unsafe {
            let e = base + i * 32;
            Module {
                addr: phys::read(e),
                size: phys::read(e + 8),
                cmdline: phys::cstr(phys::read(e + 16)),
            }
        })
    }

    /// The physical range the module list occupies.
    pub fn modlist_range(&self) -> (u64, u64) {
        (self.modlist, u64::from(self.nr_modules) * 32)
    }
}
