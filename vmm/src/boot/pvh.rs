//! The Xen PVH start-of-day ABI: 32-bit protected-mode entry at the `XEN_ELFNOTE_PHYS32_ENTRY`
//! address with EBX pointing at `hvm_start_info`.
//!
//! Layout in the PVH area: `hvm_start_info` at [`PVH_INFO_START`], the module list right after
//! it, the memory map after that. The initrd, if any, is module 0 (no module command line).

use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use vm_memory::ByteValued;

use super::elf::{self, ElfImage};
use super::{
    low_ram_limit, BootEntry, BootError, Direction, EntryMode, LoadContext, Placement, Protocol,
    CMDLINE_ADDR, PAGE_SIZE,
};
use crate::arch::x86_64::layout::{CMDLINE_MAX_SIZE, PVH_INFO_START, ZERO_PAGE_START};

/// `hvm_start_info.magic`.
pub const XEN_HVM_START_MAGIC: u32 = 0x336e_c578;
/// `hvm_start_info.version`: 1 has the memory map fields.
const START_INFO_VERSION: u32 = 1;
/// The PVH area ends where the zero page begins.
const PVH_INFO_END: u64 = ZERO_PAGE_START.0;

/// Loads a PVH kernel and writes `hvm_start_info`.
pub(super) fn load(ctx: &LoadContext<'_>, image: &ElfImage) -> Result<BootEntry, BootError> {
    let entry = image.pvh_entry.unwrap_or(image.entry);
    elf::check_segments(ctx, image)?;
    ctx.check_ram("PVH entry point", entry, 1)?;
    let sizes = info_layout(ctx)?;
    ctx.write_cmdline(CMDLINE_MAX_SIZE - 1, Protocol::Pvh)?;
    let initrd = ctx.load_initrd(&Placement {
        used: elf::segment_ranges(image),
        limit: low_ram_limit(),
        align: PAGE_SIZE,
        direction: Direction::TopDown,
    })?;
    elf::load(ctx, image)?;

    let modules: Vec<hvm_modlist_entry> = initrd
        .iter()
        .map(|m| hvm_modlist_entry {
            paddr: m.addr,
            size: m.size,
            cmdline_paddr: 0,
            reserved: 0,
        })
        .collect();
    let memmap: Vec<hvm_memmap_table_entry> = ctx
        .machine
        .memory_map
        .iter()
        .map(|r| hvm_memmap_table_entry {
            addr: r.base.0,
            size: r.size,
            type_: r.kind.e820_type(),
            reserved: 0,
        })
        .collect();
    let start_info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC,
        version: START_INFO_VERSION,
        flags: 0,
        nr_modules: modules.len() as u32,
        modlist_paddr: if modules.is_empty() { 0 } else { sizes.modlist },
        cmdline_paddr: CMDLINE_ADDR.0,
        rsdp_paddr: ctx.machine.rsdp.map_or(0, |a| a.0),
        memmap_paddr: sizes.memmap,
        memmap_entries: memmap.len() as u32,
        reserved: 0,
    };
    let mut params = BootParams::new(&start_info, PVH_INFO_START);
    params.set_sections(&memmap, vm_memory::GuestAddress(sizes.memmap));
    if !modules.is_empty() {
        params.set_modules(&modules, vm_memory::GuestAddress(sizes.modlist));
    }
    PvhBootConfigurator::write_bootparams(&params, ctx.mem)
        .map_err(|e| ctx.write_error("hvm_start_info", PVH_INFO_START.0, e))?;
    Ok(BootEntry {
        protocol: Protocol::Pvh,
        mode: EntryMode::Protected32,
        rip: entry,
        rsp: 0,
        rax: 0,
        rbx: PVH_INFO_START.0,
        rsi: 0,
    })
}

/// Addresses of the module list and memory map inside the PVH area.
struct InfoLayout {
    modlist: u64,
    memmap: u64,
}

/// Lays out the PVH area and checks that it fits before anything is written.
fn info_layout(ctx: &LoadContext<'_>) -> Result<InfoLayout, BootError> {
    let start_info = hvm_start_info::default().as_slice().len() as u64;
    let module = hvm_modlist_entry::default().as_slice().len() as u64;
    let entry = hvm_memmap_table_entry::default().as_slice().len() as u64;
    let nr_modules = u64::from(ctx.source.initrd.is_some());
    let modlist = PVH_INFO_START.0 + start_info;
    let memmap = modlist + nr_modules * module;
    let end = memmap + ctx.machine.memory_map.len() as u64 * entry;
    if end > PVH_INFO_END {
        return Err(BootError::BootInfoTooLarge {
            path: ctx.kernel.path.clone(),
            what: "PVH start info with module list and memory map",
            size: (end - PVH_INFO_START.0) as usize,
            capacity: (PVH_INFO_END - PVH_INFO_START.0) as usize,
        });
    }
    Ok(InfoLayout { modlist, memmap })
}

#[cfg(test)]
mod tests {
    use super::super::test_images::*;
    use super::*;

    const SI: u64 = PVH_INFO_START.0;

    fn check_start_info(class64: bool) {
        let guest = Guest::new();
        let kernel = TempFile::new("kernel", &small_elf(class64, true));
        let initrd = TempFile::new("initrd.img", &[7; 3000]);

        let entry = guest
            .boot(kernel.path(), Some(initrd.path()), "root=/dev/vda")
            .unwrap();

        let initrd_addr = RAM - 0x1000;
        assert_eq!(
            entry,
            BootEntry {
                protocol: Protocol::Pvh,
                mode: EntryMode::Protected32,
                rip: 0x10_0004,
                rsp: 0,
                rax: 0,
                rbx: SI,
                rsi: 0,
            }
        );
        assert_eq!(guest.read(0x10_0000, 16), CODE);
        // hvm_start_info.
        assert_eq!(guest.u32_at(SI), 0x336e_c578, "magic");
        assert_eq!(guest.u32_at(SI + 4), 1, "version");
        assert_eq!(guest.u32_at(SI + 8), 0, "flags");
        assert_eq!(guest.u32_at(SI + 12), 1, "nr_modules");
        assert_eq!(guest.u64_at(SI + 16), SI + 56, "modlist_paddr");
        assert_eq!(guest.u64_at(SI + 24), CMDLINE_ADDR.0, "cmdline_paddr");
        assert_eq!(guest.u64_at(SI + 32), 0, "rsdp_paddr");
        assert_eq!(guest.u64_at(SI + 40), SI + 56 + 32, "memmap_paddr");
        assert_eq!(guest.u32_at(SI + 48), 3, "memmap_entries");
        // Module 0: the initrd, no command line.
        assert_eq!(guest.u64_at(SI + 56), initrd_addr, "module paddr");
        assert_eq!(guest.u64_at(SI + 64), 3000, "module size");
        assert_eq!(guest.u64_at(SI + 72), 0, "module cmdline_paddr");
        // Memory map.
        let map = [
            (0, 0x9_fc00, 1),
            (0x9_fc00, 0x400, 2),
            (0x10_0000, RAM - 0x10_0000, 1),
        ];
        for (i, (addr, size, ty)) in map.iter().enumerate() {
            let at = SI + 88 + 24 * i as u64;
            assert_eq!(
                (
                    guest.u64_at(at),
                    guest.u64_at(at + 8),
                    guest.u32_at(at + 16)
                ),
                (*addr, *size, *ty),
                "memmap[{i}]"
            );
        }
        assert_eq!(guest.read(CMDLINE_ADDR.0, 14), b"root=/dev/vda\0");
        assert_eq!(guest.read(initrd_addr, 3000), vec![7; 3000]);
    }

    #[test]
    fn test_load_pvh_elf64_start_info_bytes() {
        check_start_info(true);
    }

    #[test]
    fn test_load_pvh_elf32_start_info_bytes() {
        check_start_info(false);
    }

    #[test]
    fn test_load_pvh_without_initrd_has_no_modules() {
        let guest = Guest::new();
        let kernel = TempFile::new("kernel", &small_elf(false, true));

        guest.boot(kernel.path(), None, "").unwrap();

        assert_eq!(guest.u32_at(SI + 12), 0, "nr_modules");
        assert_eq!(guest.u64_at(SI + 16), 0, "modlist_paddr");
        assert_eq!(
            guest.u64_at(SI + 40),
            SI + 56,
            "memmap right after start info"
        );
    }
}
