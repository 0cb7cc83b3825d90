//! The x86 page walk (32-bit, PAE, 4-level and 5-level paging) over guest-physical memory, and
//! linear-address reads and writes built on it.

use vm_memory::GuestAddress;

use super::cpu::{cr, flags, CpuState, GuestMemoryAccess};
use super::{Fault, Stop};

/// What a linear-address access is for, as the page walk needs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Access {
    /// The access writes.
    pub write: bool,
    /// The access is an instruction fetch.
    pub fetch: bool,
    /// Implicit supervisor access (descriptor tables, IDT): always supervisor, SMAP ignores AC.
    pub implicit: bool,
}

impl Access {
    pub const READ: Access = Access {
        write: false,
        fetch: false,
        implicit: false,
    };
    pub const WRITE: Access = Access {
        write: true,
        fetch: false,
        implicit: false,
    };
    pub const FETCH: Access = Access {
        write: false,
        fetch: true,
        implicit: false,
    };
    pub const SYSTEM_READ: Access = Access {
        write: false,
        fetch: false,
        implicit: true,
    };
    pub const SYSTEM_WRITE: Access = Access {
        write: true,
        fetch: false,
        implicit: true,
    };
}

const PTE_P: u64 = 1 << 0;
const PTE_RW: u64 = 1 << 1;
const PTE_US: u64 = 1 << 2;
const PTE_A: u64 = 1 << 5;
const PTE_D: u64 = 1 << 6;
const PTE_PS: u64 = 1 << 7;
const PTE_NX: u64 = 1 << 63;

const PFEC_P: u32 = 1 << 0;
const PFEC_W: u32 = 1 << 1;
const PFEC_U: u32 = 1 << 2;
const PFEC_RSVD: u32 = 1 << 3;
const PFEC_I: u32 = 1 << 4;

/// One level of a page-table walk.
struct Level {
    /// Bit position of the lowest linear-address bit this level indexes.
    shift: u32,
    /// Whether PS=1 makes this entry a leaf.
    large_ok: bool,
}

/// The paging structure in use.
struct PagingMode {
    entry_size: u64,
    index_bits: u32,
    levels: &'static [Level],
}

const LEVELS_5: [Level; 5] = [
    Level {
        shift: 48,
        large_ok: false,
    },
    Level {
        shift: 39,
        large_ok: false,
    },
    Level {
        shift: 30,
        large_ok: true,
    },
    Level {
        shift: 21,
        large_ok: true,
    },
    Level {
        shift: 12,
        large_ok: false,
    },
];
const LEVELS_PAE: [Level; 2] = [
    Level {
        shift: 21,
        large_ok: true,
    },
    Level {
        shift: 12,
        large_ok: false,
    },
];
const LEVELS_32: [Level; 2] = [
    Level {
        shift: 22,
        large_ok: true,
    },
    Level {
        shift: 12,
        large_ok: false,
    },
];

/// Accumulated rights along a walk.
struct Rights {
    writable: bool,
    user: bool,
    nx: bool,
}

/// Translates linear address `la` to a guest-physical address with the guest's paging mode
/// (none, 32-bit, PAE, 4-level or 5-level), checking rights and setting accessed/dirty bits.
pub(crate) fn translate<M: GuestMemoryAccess + ?Sized>(
    state: &CpuState,
    mem: &M,
    la: u64,
    access: Access,
) -> Result<u64, Stop> {
    let s = &state.sregs;
    if s.cr0 & cr::CR0_PG == 0 {
        return Ok(la & 0xffff_ffff);
    }
    let (mode, mut table) = paging_root(state, mem, la, access)?;
    let mut rights = Rights {
        writable: true,
        user: true,
        nx: false,
    };
    let mut entries: [(u64, u64); 5] = [(0, 0); 5];
    for (depth, level) in mode.levels.iter().enumerate() {
        let index = (la >> level.shift) & ((1 << mode.index_bits) - 1);
        let addr = table + index * mode.entry_size;
        let entry = read_entry(mem, addr, mode.entry_size)?;
        entries[depth] = (addr, entry);
        let used = depth + 1;
        if entry & PTE_P == 0 {
            return Err(page_fault(state, la, access, 0));
        }
        // 32-bit paging honours PS only with CR4.PSE; PAE and 4/5-level paging always do.
        let large_ok = level.large_ok && (mode.entry_size == 8 || s.cr4 & cr::CR4_PSE != 0);
        let leaf = depth + 1 == mode.levels.len() || (large_ok && entry & PTE_PS != 0);
        let large = leaf && depth + 1 != mode.levels.len();
        if entry & reserved_bits(state, &mode, level, large) != 0 {
            return Err(page_fault(state, la, access, PFEC_P | PFEC_RSVD));
        }
        rights.writable &= entry & PTE_RW != 0;
        rights.user &= entry & PTE_US != 0;
        rights.nx |= mode.entry_size == 8 && s.efer & cr::EFER_NXE != 0 && entry & PTE_NX != 0;
        if leaf {
            check_rights(state, la, access, &rights)?;
            set_accessed_dirty(mem, &mode, &entries[..used], access.write)?;
            return Ok(
                frame_address(state, &mode, level, entry, large) | (la & ((1 << level.shift) - 1))
            );
        }
        table = entry & phys_mask(state) & !0xfff;
    }
    Err(Stop::Unsupported("page walk without a leaf"))
}

/// The paging structure in use and the physical address of its top-level table.
fn paging_root<M: GuestMemoryAccess + ?Sized>(
    state: &CpuState,
    mem: &M,
    la: u64,
    access: Access,
) -> Result<(PagingMode, u64), Stop> {
    let s = &state.sregs;
    Ok(if s.efer & cr::EFER_LMA != 0 {
        let levels: &'static [Level] = if s.cr4 & cr::CR4_LA57 != 0 {
            &LEVELS_5
        } else {
            &LEVELS_5[1..]
        };
        (
            PagingMode {
                entry_size: 8,
                index_bits: 9,
                levels,
            },
            s.cr3 & phys_mask(state) & !0xfff,
        )
    } else if s.cr4 & cr::CR4_PAE != 0 {
        let pdpte = pae_pdpte(state, mem, la, access)?;
        (
            PagingMode {
                entry_size: 8,
                index_bits: 9,
                levels: &LEVELS_PAE,
            },
            pdpte,
        )
    } else {
        (
            PagingMode {
                entry_size: 4,
                index_bits: 10,
                levels: &LEVELS_32,
            },
            s.cr3 & 0xffff_f000,
        )
    })
}

/// Reads the PAE page-directory-pointer-table entry for `la` (as loaded from CR3).
fn pae_pdpte<M: GuestMemoryAccess + ?Sized>(
    state: &CpuState,
    mem: &M,
    la: u64,
    access: Access,
) -> Result<u64, Stop> {
    let addr = (state.sregs.cr3 & 0xffff_ffe0) + ((la >> 30) & 3) * 8;
    let entry = read_entry(mem, addr, 8)?;
    if entry & PTE_P == 0 {
        return Err(page_fault(state, la, access, 0));
    }
    Ok(entry & phys_mask(state) & !0xfff)
}

fn read_entry<M: GuestMemoryAccess + ?Sized>(mem: &M, addr: u64, size: u64) -> Result<u64, Stop> {
    let mut buf = [0u8; 8];
    let len = size as usize;
    if !mem.read_phys(GuestAddress(addr), &mut buf[..len]) {
        return Err(Stop::Memory { gpa: addr, len });
    }
    Ok(u64::from_le_bytes(buf))
}

/// Physical-address bits the guest may use (bits 51:12 capped by MAXPHYADDR).
fn phys_mask(state: &CpuState) -> u64 {
    let bits = u32::from(state.features.phys_addr_bits.clamp(32, 52));
    (1u64 << bits) - 1
}

/// Reserved bits of a paging-structure entry that must be zero.
fn reserved_bits(state: &CpuState, mode: &PagingMode, level: &Level, large: bool) -> u64 {
    if mode.entry_size == 4 {
        // 32-bit paging: only 4-MiB PDEs have reserved bits (bit 21 and PSE-36 bits above MAXPHYADDR).
        if !large {
            return 0;
        }
        let pse36_bits = u32::from(state.features.phys_addr_bits.clamp(32, 40)) - 32;
        return (1 << 21) | (((1u64 << 8) - 1) & !((1u64 << pse36_bits) - 1)) << 13;
    }
    let mut rsvd = !phys_mask(state) & 0x000f_ffff_ffff_f000;
    if state.sregs.efer & cr::EFER_NXE == 0 {
        rsvd |= PTE_NX;
    }
    if !level.large_ok && level.shift > 12 {
        rsvd |= PTE_PS;
    }
    if large {
        // Bits 12 (PAT) up to the page-size boundary must be zero except bit 12 itself.
        rsvd |= ((1u64 << level.shift) - 1) & !0x1fff;
    }
    rsvd
}

fn frame_address(
    state: &CpuState,
    mode: &PagingMode,
    level: &Level,
    entry: u64,
    large: bool,
) -> u64 {
    if !large {
        return entry & phys_mask(state) & !0xfff;
    }
    if mode.entry_size == 4 {
        // 4-MiB page: bits 31:22 from the PDE, bits 39:32 from PDE bits 20:13 (PSE-36).
        return (entry & 0xffc0_0000) | (((entry >> 13) & 0xff) << 32);
    }
    entry & phys_mask(state) & !((1u64 << level.shift) - 1)
}

fn check_rights(state: &CpuState, la: u64, access: Access, rights: &Rights) -> Result<(), Stop> {
    let s = &state.sregs;
    let user_access = state.cpl() == 3 && !access.implicit;
    let denied = if user_access {
        !rights.user || (access.write && !rights.writable)
    } else {
        let wp = s.cr0 & cr::CR0_WP != 0;
        let smep = s.cr4 & cr::CR4_SMEP != 0 && access.fetch && rights.user;
        let ac = state.regs.rflags & flags::AC != 0;
        let smap = s.cr4 & cr::CR4_SMAP != 0
            && !access.fetch
            && rights.user
            && (access.implicit || !ac || state.cpl() == 3);
        (access.write && !rights.writable && wp) || smep || smap
    };
    if denied || (access.fetch && rights.nx) {
        return Err(page_fault(state, la, access, PFEC_P));
    }
    Ok(())
}

fn set_accessed_dirty<M: GuestMemoryAccess + ?Sized>(
    mem: &M,
    mode: &PagingMode,
    entries: &[(u64, u64)],
    write: bool,
) -> Result<(), Stop> {
    let last = entries.len() - 1;
    for (i, &(addr, entry)) in entries.iter().enumerate() {
        let mut bits = PTE_A;
        if i == last && write {
            bits |= PTE_D;
        }
        if entry & bits == bits {
            continue;
        }
        let new = entry | bits;
        let len = mode.entry_size as usize;
        if !mem.write_phys(GuestAddress(addr), &new.to_le_bytes()[..len]) {
            return Err(Stop::Memory { gpa: addr, len });
        }
    }
    Ok(())
}

fn page_fault(state: &CpuState, la: u64, access: Access, extra: u32) -> Stop {
    let s = &state.sregs;
    let mut code = extra;
    if access.write {
        code |= PFEC_W;
    }
    if state.cpl() == 3 && !access.implicit {
        code |= PFEC_U;
    }
    let nx_paging = s.efer & cr::EFER_NXE != 0 && s.cr4 & cr::CR4_PAE != 0;
    if access.fetch && (nx_paging || s.cr4 & cr::CR4_SMEP != 0) {
        code |= PFEC_I;
    }
    Stop::Fault(Fault::page(code, la))
}

/// Reads `buf.len()` bytes at linear address `la`, page by page.
pub(crate) fn read_linear<M: GuestMemoryAccess + ?Sized>(
    state: &CpuState,
    mem: &M,
    la: u64,
    buf: &mut [u8],
    access: Access,
) -> Result<(), Stop> {
    let mut done = 0;
    while done < buf.len() {
        let addr = la.wrapping_add(done as u64) & linear_mask(state);
        let chunk = (0x1000 - (addr & 0xfff) as usize).min(buf.len() - done);
        let gpa = translate(state, mem, addr, access)?;
        if !mem.read_phys(GuestAddress(gpa), &mut buf[done..done + chunk]) {
            return Err(Stop::Memory { gpa, len: chunk });
        }
        done += chunk;
    }
    Ok(())
}

/// Writes `buf` at linear address `la`; every page is translated (and may fault) before any
/// byte is written, so a fault leaves memory unchanged.
pub(crate) fn write_linear<M: GuestMemoryAccess + ?Sized>(
    state: &CpuState,
    mem: &M,
    la: u64,
    buf: &[u8],
    access: Access,
) -> Result<(), Stop> {
    let mut pieces: [(u64, usize, usize); 2] = [(0, 0, 0); 2];
    let mut count = 0;
    let mut done = 0;
    while done < buf.len() {
        let addr = la.wrapping_add(done as u64) & linear_mask(state);
        let chunk = (0x1000 - (addr & 0xfff) as usize).min(buf.len() - done);
        if count == pieces.len() {
            return Err(Stop::Unsupported(
                "memory operand spanning more than two pages",
            ));
        }
        pieces[count] = (translate(state, mem, addr, access)?, done, chunk);
        count += 1;
        done += chunk;
    }
    for &(gpa, start, len) in &pieces[..count] {
        if !mem.write_phys(GuestAddress(gpa), &buf[start..start + len]) {
            return Err(Stop::Memory { gpa, len });
        }
    }
    Ok(())
}

/// Linear addresses wrap at 4 GiB outside 64-bit paging.
fn linear_mask(state: &CpuState) -> u64 {
    if state.sregs.efer & cr::EFER_LMA != 0 {
        u64::MAX
    } else {
        0xffff_ffff
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::emulate::testutil::{flat32_state, long_mode_state, memory, read_u64, PML4, PT0};
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

    fn put(mem: &GuestMemoryMmap, addr: u64, value: u64) {
        mem.write_obj(value, GuestAddress(addr)).unwrap();
    }

    fn put32(mem: &GuestMemoryMmap, addr: u64, value: u32) {
        mem.write_obj(value, GuestAddress(addr)).unwrap();
    }

    fn fault_code(result: Result<u64, Stop>) -> Option<u32> {
        match result {
            Err(Stop::Fault(f)) if f.vector == 14 => f.error_code,
            _ => None,
        }
    }

    #[test]
    fn test_translate_4level_maps_and_sets_accessed_dirty() {
        // Arrange: map linear 0x7000_0000_1000 to 0x9000 through fresh tables.
        let state = long_mode_state();
        let mem = memory();
        let la = 0x7000_0000_1234u64;
        put(&mem, PML4 + ((la >> 39) & 511) * 8, 0x10_000 | 0x3);
        put(&mem, 0x10_000 + ((la >> 30) & 511) * 8, 0x11_000 | 0x3);
        put(&mem, 0x11_000 + ((la >> 21) & 511) * 8, 0x12_000 | 0x3);
        put(&mem, 0x12_000 + ((la >> 12) & 511) * 8, 0x9000 | 0x3);
        // Act
        let gpa = translate(&state, &mem, la, Access::WRITE);
        // Assert
        assert_eq!(gpa, Ok(0x9234));
        assert_eq!(read_u64(&mem, 0x12_000 + 8), 0x9000 | 0x3 | PTE_A | PTE_D);
        assert_eq!(
            read_u64(&mem, 0x10_000 + ((la >> 30) & 511) * 8),
            0x11_000 | 0x3 | PTE_A
        );
    }

    #[test]
    fn test_translate_large_pages_2m_and_1g() {
        let state = long_mode_state();
        let mem = memory();
        assert_eq!(
            translate(&state, &mem, 0x2f_1234, Access::READ),
            Ok(0x2f_1234)
        );
        // 1-GiB page at linear 1 GiB -> physical 0.
        put(&mem, 0x2008, 0x83);
        assert_eq!(
            translate(&state, &mem, 0x4000_5678, Access::READ),
            Ok(0x5678)
        );
    }

    #[test]
    fn test_translate_not_present_error_codes() {
        let mut state = long_mode_state();
        let mem = memory();
        put(&mem, PT0 + 5 * 8, 0);
        assert_eq!(
            fault_code(translate(&state, &mem, 0x5000, Access::READ)),
            Some(0)
        );
        assert_eq!(
            fault_code(translate(&state, &mem, 0x5000, Access::WRITE)),
            Some(PFEC_W)
        );
        assert_eq!(
            fault_code(translate(&state, &mem, 0x5000, Access::FETCH)),
            Some(PFEC_I)
        );
        state.sregs.ss.dpl = 3;
        assert_eq!(
            fault_code(translate(&state, &mem, 0x5000, Access::WRITE)),
            Some(PFEC_W | PFEC_U)
        );
    }

    #[test]
    fn test_translate_protection_error_codes() {
        let mut state = long_mode_state();
        let mem = memory();
        put(&mem, PT0 + 6 * 8, 0x6000 | 0x1); // present, read-only, supervisor
        put(&mem, PT0 + 7 * 8, 0x7000 | 0x7 | PTE_NX); // user, no-execute
        assert_eq!(
            fault_code(translate(&state, &mem, 0x6000, Access::WRITE)),
            Some(PFEC_P | PFEC_W)
        );
        assert_eq!(
            fault_code(translate(&state, &mem, 0x7000, Access::FETCH)),
            Some(PFEC_P | PFEC_I)
        );
        // CR0.WP=0: supervisor writes ignore R/W.
        state.sregs.cr0 &= !cr::CR0_WP;
        assert_eq!(translate(&state, &mem, 0x6000, Access::WRITE), Ok(0x6000));
        // User access to a supervisor page.
        state.sregs.ss.dpl = 3;
        assert_eq!(
            fault_code(translate(&state, &mem, 0x6000, Access::READ)),
            Some(PFEC_P | PFEC_U)
        );
    }

    #[test]
    fn test_translate_reserved_bit_sets_rsvd() {
        let mut state = long_mode_state();
        let mem = memory();
        put(&mem, PT0 + 8 * 8, 0x8000 | 0x3 | (1 << 50));
        assert_eq!(
            fault_code(translate(&state, &mem, 0x8000, Access::READ)),
            Some(PFEC_P | PFEC_RSVD)
        );
        // NX is reserved when EFER.NXE=0.
        state.sregs.efer &= !cr::EFER_NXE;
        put(&mem, PT0 + 9 * 8, 0x9000 | 0x3 | PTE_NX);
        assert_eq!(
            fault_code(translate(&state, &mem, 0x9000, Access::READ)),
            Some(PFEC_P | PFEC_RSVD)
        );
    }

    #[test]
    fn test_translate_smap_blocks_supervisor_data_unless_ac() {
        let mut state = long_mode_state();
        let mem = memory();
        state.sregs.cr4 |= cr::CR4_SMAP;
        assert_eq!(
            fault_code(translate(&state, &mem, 0x5000, Access::READ)),
            Some(PFEC_P)
        );
        state.regs.rflags |= flags::AC;
        assert_eq!(translate(&state, &mem, 0x5000, Access::READ), Ok(0x5000));
        // Implicit supervisor accesses (descriptor tables) ignore AC.
        assert_eq!(
            fault_code(translate(&state, &mem, 0x5000, Access::SYSTEM_READ)),
            Some(PFEC_P)
        );
    }

    #[test]
    fn test_translate_smep_blocks_supervisor_fetch_from_user_page() {
        let mut state = long_mode_state();
        let mem = memory();
        state.sregs.cr4 |= cr::CR4_SMEP;
        assert_eq!(
            fault_code(translate(&state, &mem, 0x5000, Access::FETCH)),
            Some(PFEC_P | PFEC_I)
        );
    }

    #[test]
    fn test_translate_5level_uses_cr3_root() {
        let mut state = long_mode_state();
        let mem = memory();
        state.sregs.cr4 |= cr::CR4_LA57;
        state.sregs.cr3 = 0x30_000;
        put(&mem, 0x30_000, PML4 | 0x3); // PML5[0] -> existing PML4
        assert_eq!(translate(&state, &mem, 0x3456, Access::READ), Ok(0x3456));
    }

    #[test]
    fn test_translate_pae_32bit() {
        let mut state = flat32_state();
        let mem = memory();
        state.sregs.cr0 |= cr::CR0_PG;
        state.sregs.cr4 |= cr::CR4_PAE;
        state.sregs.cr3 = 0x40_020; // 32-byte aligned PDPT
        put(&mem, 0x40_020 + 3 * 8, 0x41_000 | 0x1); // PDPTE for 3-4 GiB
        put(&mem, 0x41_000 + 511 * 8, 0x42_000 | 0x3); // PDE for the last 2 MiB
        put(&mem, 0x42_000 + 511 * 8, 0x7000 | 0x3); // last 4-KiB page
        put(&mem, 0x41_000, 0x20_0000 | 0x83); // 2-MiB page at 3 GiB
        assert_eq!(
            translate(&state, &mem, 0xffff_f123, Access::READ),
            Ok(0x7123)
        );
        assert_eq!(
            translate(&state, &mem, 0xc001_0000, Access::WRITE),
            Ok(0x21_0000)
        );
        assert_eq!(
            fault_code(translate(&state, &mem, 0x0000_1000, Access::READ)),
            Some(0)
        );
    }

    #[test]
    fn test_translate_32bit_non_pae_with_and_without_pse() {
        let mut state = flat32_state();
        let mem = memory();
        state.sregs.cr0 |= cr::CR0_PG;
        state.sregs.cr3 = 0x50_000;
        put32(&mem, 0x50_000 + 0x300 * 4, 0x51_000 | 0x3); // PDE for 0xc000_0000 -> page table
        put32(&mem, 0x51_000 + 5 * 4, 0x6000 | 0x3);
        put32(&mem, 0x50_000 + 0x301 * 4, 0x0040_0000 | 0x83); // 4-MiB page (PS)
        assert_eq!(
            translate(&state, &mem, 0xc000_5abc, Access::READ),
            Ok(0x6abc)
        );
        // Without CR4.PSE the PS bit is ignored and the entry points to a page table at 4 MiB,
        // which is outside this guest's RAM.
        assert_eq!(
            translate(&state, &mem, 0xc040_1000, Access::READ),
            Err(Stop::Memory {
                gpa: 0x40_0004,
                len: 4
            })
        );
        state.sregs.cr4 |= cr::CR4_PSE;
        assert_eq!(
            translate(&state, &mem, 0xc040_1000, Access::READ),
            Ok(0x40_1000)
        );
        assert_eq!(
            read_u64(&mem, 0x51_000 + 5 * 4) & 0xffff_ffff,
            0x6000 | 0x3 | PTE_A
        );
    }
}
