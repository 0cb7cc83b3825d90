//! The boot vCPU's initial register state for each [`EntryMode`]: GDT, segments, identity page
//! tables, control registers, FPU.

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_segment, kvm_sregs};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use super::layout::{BOOT_GDT_START, PDE_START, PDPTE_START, PML4_START};
use crate::boot::{BootEntry, EntryMode};

/// Errors setting up boot-time CPU state.
#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    /// Writing the GDT or page tables into guest memory failed.
    #[error("unable to write boot tables into guest memory at {addr:#x}: {source}")]
    WriteTables {
        /// Guest-physical address.
        addr: u64,
        /// The cause.
        source: vm_memory::GuestMemoryError,
    },
}

const X86_CR0_PE: u64 = 0x1;
const X86_CR0_ET: u64 = 0x10;
const X86_CR0_PG: u64 = 0x8000_0000;
const X86_CR4_PAE: u64 = 0x20;
const EFER_LME: u64 = 0x100;
const EFER_LMA: u64 = 0x400;

/// Builds a GDT entry from flags (access byte and granularity nibble), base and limit.
pub fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((u64::from(base) & 0xff00_0000) << 32)
        | ((u64::from(flags) & 0xf0ff) << 40)
        | ((u64::from(limit) & 0x000f_0000) << 32)
        | ((u64::from(base) & 0x00ff_ffff) << 16)
        | (u64::from(limit) & 0x0000_ffff)
}

/// Decodes a GDT entry into the hidden segment state KVM wants.
pub fn kvm_segment_from_gdt(entry: u64, table_index: u8) -> kvm_segment {
    let base = ((entry >> 16) & 0xff_ffff) | ((entry >> 32) & 0xff00_0000);
    let limit_raw = ((entry & 0xffff) | ((entry >> 32) & 0xf_0000)) as u32;
    let g = ((entry >> 55) & 1) as u8;
    let limit = if g == 1 {
        (limit_raw << 12) | 0xfff
    } else {
        limit_raw
    };
    kvm_segment {
        base,
        limit,
        selector: u16::from(table_index) * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present: ((entry >> 47) & 1) as u8,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g,
        avl: ((entry >> 52) & 1) as u8,
        padding: 0,
        unusable: if ((entry >> 47) & 1) == 0 { 1 } else { 0 },
    }
}

/// The boot GDT for a mode: null, code, data, TSS.
fn boot_gdt(mode: EntryMode) -> [u64; 4] {
    match mode {
        EntryMode::Long64 => [
            gdt_entry(0, 0, 0),
            gdt_entry(0xa09b, 0, 0xfffff),
            gdt_entry(0xc093, 0, 0xfffff),
            gdt_entry(0x808b, 0, 0xfffff),
        ],
        EntryMode::Protected32 => [
            gdt_entry(0, 0, 0),
            gdt_entry(0xc09b, 0, 0xfffff),
            gdt_entry(0xc093, 0, 0xfffff),
            gdt_entry(0x008b, 0, 0x67),
        ],
        EntryMode::Reset => [0; 4],
    }
}

fn write_u64s(mem: &GuestMemoryMmap, at: GuestAddress, vals: &[u64]) -> Result<(), RegsError> {
    for (i, v) in vals.iter().enumerate() {
        let addr = at.unchecked_add(i as u64 * 8);
        mem.write_obj(*v, addr)
            .map_err(|source| RegsError::WriteTables {
                addr: addr.0,
                source,
            })?;
    }
    Ok(())
}

/// Writes the identity map of the first 1 GiB (2 MiB pages) used by 64-bit entry.
fn write_identity_page_tables(mem: &GuestMemoryMmap) -> Result<(), RegsError> {
    write_u64s(mem, PML4_START, &[PDPTE_START.0 | 0x03])?;
    write_u64s(mem, PDPTE_START, &[PDE_START.0 | 0x03])?;
    let pdes: Vec<u64> = (0..512u64).map(|i| (i << 21) | 0x83).collect();
    write_u64s(mem, PDE_START, &pdes)
}

/// Writes the boot GDT and (for 64-bit entry) the page tables, and returns the special
/// registers the boot vCPU starts with.
pub fn setup_sregs(
    mem: &GuestMemoryMmap,
    mode: EntryMode,
    mut sregs: kvm_sregs,
) -> Result<kvm_sregs, RegsError> {
    if mode == EntryMode::Reset {
        return Ok(reset_sregs(sregs));
    }
    let gdt = boot_gdt(mode);
    write_u64s(mem, BOOT_GDT_START, &gdt)?;
    let code = kvm_segment_from_gdt(gdt[1], 1);
    let data = kvm_segment_from_gdt(gdt[2], 2);
    let tss = kvm_segment_from_gdt(gdt[3], 3);
    sregs.gdt.base = BOOT_GDT_START.0;
    sregs.gdt.limit = (std::mem::size_of_val(&gdt) - 1) as u16;
    sregs.idt.base = 0;
    sregs.idt.limit = 0;
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss;
    match mode {
        EntryMode::Long64 => {
            write_identity_page_tables(mem)?;
            sregs.cr3 = PML4_START.0;
            sregs.cr4 |= X86_CR4_PAE;
            // Caches on (CD and NW clear, unlike the reset value), protection and paging on.
            sregs.cr0 = X86_CR0_PE | X86_CR0_PG | X86_CR0_ET;
            sregs.efer |= EFER_LME | EFER_LMA;
        }
        EntryMode::Protected32 | EntryMode::Reset => {
            sregs.cr0 = X86_CR0_PE | X86_CR0_ET;
            sregs.cr4 = 0;
            sregs.cr3 = 0;
            sregs.efer = 0;
        }
    }
    Ok(sregs)
}

/// The architectural reset state firmware starts in (what KVM gives a new vCPU, set
/// explicitly): real mode, CS selector 0xf000 with base 0xffff0000 (with IP 0xfff0 the first
/// fetch is at 0xfffffff0, the top of the ROM), data segments at 0 with 64 KiB limits,
/// CR0 = CD | NW | ET, no paging, an empty IDT at 0 with the real-mode limit.
fn reset_sregs(mut sregs: kvm_sregs) -> kvm_sregs {
    let seg = |selector: u16, base: u64, type_: u8| kvm_bindings::kvm_segment {
        base,
        limit: 0xffff,
        selector,
        type_,
        present: 1,
        s: 1,
        ..Default::default()
    };
    sregs.cs = seg(0xf000, 0xffff_0000, 0xb);
    for s in [
        &mut sregs.ds,
        &mut sregs.es,
        &mut sregs.fs,
        &mut sregs.gs,
        &mut sregs.ss,
    ] {
        *s = seg(0, 0, 0x3);
    }
    sregs.tr = kvm_bindings::kvm_segment {
        limit: 0xffff,
        type_: 0xb,
        present: 1,
        ..Default::default()
    };
    sregs.ldt = kvm_bindings::kvm_segment {
        limit: 0xffff,
        type_: 0x2,
        present: 1,
        ..Default::default()
    };
    sregs.gdt.base = 0;
    sregs.gdt.limit = 0xffff;
    sregs.idt.base = 0;
    sregs.idt.limit = 0xffff;
    sregs.cr0 = 0x6000_0010;
    sregs.cr2 = 0;
    sregs.cr3 = 0;
    sregs.cr4 = 0;
    sregs.efer = 0;
    sregs
}

/// The general-purpose registers the boot vCPU starts with.
pub fn boot_regs(entry: &BootEntry) -> kvm_regs {
    kvm_regs {
        rflags: 0x2,
        rip: entry.rip,
        rsp: entry.rsp,
        rbp: entry.rsp,
        rsi: entry.rsi,
        rax: entry.rax,
        rbx: entry.rbx,
        ..Default::default()
    }
}

/// The FPU state every vCPU starts with (the architectural reset values).
pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

/// Whether guest memory is large enough for the boot tables.
pub fn tables_fit(mem: &GuestMemoryMmap) -> bool {
    mem.address_in_range(PDE_START.unchecked_add(4095))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap()
    }

    #[test]
    fn test_gdt_entry_roundtrip_long_code() {
        let seg = kvm_segment_from_gdt(gdt_entry(0xa09b, 0, 0xfffff), 1);
        assert_eq!(
            (seg.l, seg.db, seg.present, seg.s, seg.type_),
            (1, 0, 1, 1, 0xb)
        );
        assert_eq!(seg.limit, 0xffff_ffff);
        assert_eq!(seg.selector, 8);
    }

    #[test]
    fn test_setup_sregs_long64_sets_paging_and_tables() {
        let m = mem();
        let s = setup_sregs(&m, EntryMode::Long64, kvm_sregs::default()).unwrap();
        assert_eq!(s.cr3, PML4_START.0);
        assert_ne!(s.cr0 & X86_CR0_PG, 0);
        assert_eq!(s.efer & (EFER_LME | EFER_LMA), EFER_LME | EFER_LMA);
        let pde1: u64 = m.read_obj(PDE_START.unchecked_add(8)).unwrap();
        assert_eq!(pde1, (1 << 21) | 0x83);
    }

    #[test]
    fn test_setup_sregs_protected32_flat_no_paging() {
        let m = mem();
        let s = setup_sregs(&m, EntryMode::Protected32, kvm_sregs::default()).unwrap();
        assert_eq!(s.cr0 & X86_CR0_PG, 0);
        assert_eq!(s.cr0 & X86_CR0_PE, 1);
        assert_eq!(
            (s.cs.db, s.cs.l, s.cs.limit, s.cs.base),
            (1, 0, 0xffff_ffff, 0)
        );
        assert_eq!(s.ss.type_, 3);
        assert_eq!(s.efer, 0);
    }
}
