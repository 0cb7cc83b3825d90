//! The Linux x86 boot protocol, 64-bit entry: ELF vmlinux and bzImage.
//!
//! The kernel is loaded with linux-loader; this module checks it first, places the initrd and
//! builds the zero page (`struct boot_params`) with the e820 map.

use std::fs::File;

use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::bzimage::BzImage;
use linux_loader::loader::KernelLoader;
use vm_memory::{ByteValued, GuestAddress};

use super::elf::{self, ElfImage};
use super::{
    low_ram_limit, BootEntry, BootError, Direction, EntryMode, LoadContext, Module, Placement,
    Protocol, PAGE_SIZE,
};
use crate::arch::x86_64::layout::{BOOT_STACK_POINTER, ZERO_PAGE_START};

/// Offset of the setup header in a bzImage (and in `boot_params`).
const SETUP_HEADER_OFFSET: usize = 0x1f1;
/// `boot_flag` value: the boot sector signature at 0x1fe.
const BOOT_FLAG: u16 = 0xaa55;
/// `header` value: "HdrS".
const HDRS_MAGIC: u32 = 0x5372_6448;
/// `type_of_loader`: undefined boot loader.
const LOADER_TYPE_UNDEFINED: u8 = 0xff;
/// `kernel_alignment` default for vmlinux (16 MiB, CONFIG_PHYSICAL_ALIGN's usual value).
const KERNEL_ALIGNMENT: u32 = 0x100_0000;
/// Boot protocol 2.12: first with `xloadflags`, which announces the 64-bit entry point.
const MIN_BZIMAGE_VERSION: u16 = 0x020c;
/// `xloadflags` bit: the kernel has the 64-bit entry point at load address + 0x200.
const XLF_KERNEL_64: u16 = 1 << 0;
/// `loadflags` bit: the protected-mode kernel is loaded at 1 MiB.
const LOADED_HIGH: u8 = 1 << 0;
/// Offset of the 64-bit entry point from the protected-mode kernel's load address.
const ENTRY_64_OFFSET: u64 = 0x200;
/// x86 `COMMAND_LINE_SIZE` (with NUL): the limit for a vmlinux, which has no setup header.
const VMLINUX_CMDLINE_MAX: usize = 2048;
/// Entries in the zero page's e820 table.
const E820_MAX_ENTRIES: usize = 128;

/// Whether `bytes` start with a boot sector carrying a `HdrS` setup header.
pub(super) fn is_bzimage(bytes: &[u8]) -> bool {
    bytes.get(0x1fe..0x200) == Some(&[0x55, 0xaa]) && bytes.get(0x202..0x206) == Some(b"HdrS")
}

/// Loads a bzImage at its `code32_start` and enters it through the 64-bit entry point.
pub(super) fn load_bzimage(ctx: &LoadContext<'_>) -> Result<BootEntry, BootError> {
    let hdr = parse_setup_header(ctx)?;
    let bytes = &ctx.kernel.bytes;
    let sects = if hdr.setup_sects == 0 {
        4
    } else {
        hdr.setup_sects
    };
    let setup_size = (usize::from(sects) + 1) * 512;
    let payload = bytes.len().saturating_sub(setup_size) as u64;
    // syssize counts 16-byte paragraphs, rounded up.
    let syssize = u64::from(hdr.syssize) * 16;
    if payload == 0 || payload.next_multiple_of(16) < syssize {
        return Err(ctx.kernel.invalid(format!(
            "truncated bzImage: {} bytes, but the setup header announces {setup_size} bytes of \
             setup code and {syssize} bytes of kernel",
            bytes.len()
        )));
    }
    let load = u64::from(hdr.code32_start);
    ctx.check_ram("bzImage protected-mode kernel", load, payload)?;
    let (run, run_size) = (runtime_start(&hdr, load), u64::from(hdr.init_size));
    ctx.check_ram(
        "bzImage decompression area (runtime start address + init_size)",
        run,
        run_size,
    )?;
    let limit = usize::try_from(hdr.cmdline_size).unwrap_or(usize::MAX);
    ctx.write_cmdline(limit, Protocol::LinuxBzImage)?;
    let initrd_max = u64::from(hdr.initrd_addr_max).saturating_add(1);
    let used = vec![(load, load + payload), (run, run + run_size)];
    let initrd = ctx.load_initrd(&initrd_placement(used, initrd_max))?;

    let mut file = File::open(&ctx.kernel.path).map_err(|source| BootError::Open {
        path: ctx.kernel.path.clone(),
        source,
    })?;
    let loaded = BzImage::load(ctx.mem, Some(GuestAddress(load)), &mut file, None)
        .map_err(|e| ctx.kernel.invalid(format!("cannot load the bzImage: {e}")))?;
    let mut params = boot_params {
        hdr: loaded.setup_header.unwrap_or(hdr),
        ..Default::default()
    };
    // cmdline_size stays the kernel's value: the boot protocol makes it a field the kernel
    // sets (the longest command line it accepts). memtest86+ parses exactly that many bytes
    // and only acts on the last option when it reaches the terminating NUL, so overwriting it
    // with the command line's length silently dropped `console=ttyS0` when it came last.
    finish_params(ctx, &mut params, initrd.as_ref())?;
    write_zero_page(ctx, &params)?;
    Ok(entry(Protocol::LinuxBzImage, load + ENTRY_64_OFFSET))
}

/// Where the kernel decompresses itself (arch/x86/boot/compressed/head_64.S): the load
/// address rounded up to `kernel_alignment` but not below `pref_address` (= LOAD_PHYSICAL_ADDR)
/// for a relocatable kernel, `pref_address` otherwise. It needs `init_size` bytes from there.
fn runtime_start(hdr: &setup_header, load: u64) -> u64 {
    let pref = hdr.pref_address;
    if hdr.relocatable_kernel == 0 {
        return pref;
    }
    let align = u64::from(hdr.kernel_alignment).max(1);
    load.div_ceil(align).saturating_mul(align).max(pref)
}

/// Reads and checks the setup header of a bzImage.
fn parse_setup_header(ctx: &LoadContext<'_>) -> Result<setup_header, BootError> {
    let mut hdr = setup_header::default();
    let size = hdr.as_slice().len();
    let raw = ctx
        .kernel
        .bytes
        .get(SETUP_HEADER_OFFSET..SETUP_HEADER_OFFSET + size)
        .ok_or_else(|| {
            ctx.kernel
                .invalid("truncated bzImage: the setup header is cut off".into())
        })?;
    hdr.as_mut_slice().copy_from_slice(raw);
    let version = hdr.version;
    if version < MIN_BZIMAGE_VERSION {
        return Err(ctx.kernel.unsupported(format!(
            "bzImage boot protocol {}.{:02} is too old: Strata needs 2.12 or later for the \
             64-bit entry point",
            version >> 8,
            version & 0xff
        )));
    }
    if hdr.xloadflags & XLF_KERNEL_64 == 0 {
        return Err(ctx.kernel.unsupported(
            "the bzImage has no 64-bit entry point (XLF_KERNEL_64 is clear in xloadflags); \
             Strata boots bzImages through the 64-bit boot protocol only"
                .into(),
        ));
    }
    if hdr.loadflags & LOADED_HIGH == 0 {
        return Err(ctx.kernel.unsupported(
            "the bzImage is a zImage (LOADED_HIGH is clear in loadflags); Strata cannot load \
             kernels below 1 MiB"
                .into(),
        ));
    }
    Ok(hdr)
}

/// Loads an ELF64 vmlinux by physical address and enters it at `e_entry`.
pub(super) fn load_vmlinux(
    ctx: &LoadContext<'_>,
    image: &ElfImage,
) -> Result<BootEntry, BootError> {
    elf::check_segments(ctx, image)?;
    ctx.check_ram("entry point", image.entry, 1)?;
    let cmdline_len = ctx.write_cmdline(VMLINUX_CMDLINE_MAX - 1, Protocol::LinuxElf)?;
    let used = elf::segment_ranges(image);
    let initrd = ctx.load_initrd(&initrd_placement(used, u64::MAX))?;

    elf::load(ctx, image)?;

    let mut params = boot_params::default();
    params.hdr.boot_flag = BOOT_FLAG;
    params.hdr.header = HDRS_MAGIC;
    params.hdr.kernel_alignment = KERNEL_ALIGNMENT;
    // No setup header in a vmlinux: report the command line's length.
    params.hdr.cmdline_size = cmdline_len as u32;
    finish_params(ctx, &mut params, initrd.as_ref())?;
    write_zero_page(ctx, &params)?;
    Ok(entry(Protocol::LinuxElf, image.entry))
}

/// The initrd goes as high as possible below `max` and the 32-bit MMIO hole, page-aligned.
fn initrd_placement(used: Vec<(u64, u64)>, max: u64) -> Placement {
    Placement {
        used,
        limit: max.min(low_ram_limit()),
        align: PAGE_SIZE,
        direction: Direction::TopDown,
    }
}

/// Fills the loader-owned fields: loader type, command line, initrd, e820 map.
fn finish_params(
    ctx: &LoadContext<'_>,
    params: &mut boot_params,
    initrd: Option<&Module>,
) -> Result<(), BootError> {
    params.hdr.type_of_loader = LOADER_TYPE_UNDEFINED;
    params.hdr.cmd_line_ptr = super::CMDLINE_ADDR.0 as u32;
    if let Some(m) = initrd {
        // The placement limit keeps the initrd below 4 GiB.
        params.hdr.ramdisk_image = m.addr as u32;
        params.hdr.ramdisk_size = m.size as u32;
    }
    let map = &ctx.machine.memory_map;
    if map.len() > E820_MAX_ENTRIES {
        return Err(super::BootError::BootInfoTooLarge {
            path: ctx.kernel.path.clone(),
            what: "e820 memory map",
            size: map.len(),
            capacity: E820_MAX_ENTRIES,
        });
    }
    for (slot, r) in params.e820_table.iter_mut().zip(map) {
        *slot = boot_e820_entry {
            addr: r.base.0,
            size: r.size,
            r#type: r.kind.e820_type(),
        };
    }
    params.e820_entries = map.len() as u8;
    if let Some(rsdp) = ctx.machine.rsdp {
        params.acpi_rsdp_addr = rsdp.0;
    }
    Ok(())
}

fn write_zero_page(ctx: &LoadContext<'_>, params: &boot_params) -> Result<(), BootError> {
    let bp = BootParams::new(params, ZERO_PAGE_START);
    LinuxBootConfigurator::write_bootparams(&bp, ctx.mem)
        .map_err(|e| ctx.write_error("zero page", ZERO_PAGE_START.0, e))
}

fn entry(protocol: Protocol, rip: u64) -> BootEntry {
    BootEntry {
        protocol,
        mode: EntryMode::Long64,
        rip,
        rsp: BOOT_STACK_POINTER.0,
        rax: 0,
        rbx: 0,
        rsi: ZERO_PAGE_START.0,
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_images::*;
    use super::*;
    use crate::arch::x86_64::layout::CMDLINE_START;

    const ZP: u64 = ZERO_PAGE_START.0;

    /// The e820 table the 64 MiB test machine gets: (addr, size, type).
    const E820: [(u64, u64, u32); 3] = [
        (0, 0x9_fc00, 1),
        (0x9_fc00, 0x400, 2),
        (0x10_0000, RAM - 0x10_0000, 1),
    ];

    fn assert_e820(guest: &Guest) {
        assert_eq!(guest.read(ZP + 0x1e8, 1), vec![3], "e820_entries");
        for (i, (addr, size, ty)) in E820.iter().enumerate() {
            let at = ZP + 0x2d0 + 20 * i as u64;
            assert_eq!(guest.u64_at(at), *addr, "e820[{i}].addr");
            assert_eq!(guest.u64_at(at + 8), *size, "e820[{i}].size");
            assert_eq!(guest.u32_at(at + 16), *ty, "e820[{i}].type");
        }
    }

    #[test]
    fn test_load_vmlinux_zero_page_bytes() {
        let guest = Guest::new();
        let kernel = TempFile::new("vmlinux", &small_elf(true, false));
        let initrd = TempFile::new("initrd.img", &[0x5a; 5000]);

        let entry = guest
            .boot(kernel.path(), Some(initrd.path()), " console=ttyS0 ")
            .unwrap();

        let initrd_addr = RAM - 0x2000;
        assert_eq!(
            entry,
            BootEntry {
                protocol: Protocol::LinuxElf,
                mode: EntryMode::Long64,
                rip: 0x10_0000,
                rsp: 0x8ff0,
                rax: 0,
                rbx: 0,
                rsi: ZP,
            }
        );
        assert_eq!(guest.read(0x10_0000, 16), CODE);
        assert_eq!(guest.read(0x10_0010, 0xff0), vec![0; 0xff0], "bss zeroed");
        assert_eq!(guest.read(ZP + 0x1fe, 2), vec![0x55, 0xaa], "boot_flag");
        assert_eq!(guest.read(ZP + 0x202, 4), b"HdrS");
        assert_eq!(guest.read(ZP + 0x210, 1), vec![0xff], "type_of_loader");
        assert_eq!(
            guest.u32_at(ZP + 0x218),
            initrd_addr as u32,
            "ramdisk_image"
        );
        assert_eq!(guest.u32_at(ZP + 0x21c), 5000, "ramdisk_size");
        assert_eq!(
            guest.u32_at(ZP + 0x228),
            CMDLINE_START.0 as u32,
            "cmd_line_ptr"
        );
        assert_eq!(guest.u32_at(ZP + 0x230), 0x100_0000, "kernel_alignment");
        assert_eq!(
            guest.u32_at(ZP + 0x238),
            13,
            "cmdline_size (no setup header: the length)"
        );
        assert_eq!(guest.read(CMDLINE_START.0, 14), b"console=ttyS0\0");
        assert_eq!(guest.read(initrd_addr, 5000), vec![0x5a; 5000]);
        assert_e820(&guest);
    }

    #[test]
    fn test_load_bzimage_zero_page_bytes() {
        let guest = Guest::new();
        let spec = BzImageSpec {
            initrd_addr_max: 0x1ff_ffff,
            pref_address: 0x100_0000,
            ..Default::default()
        };
        let image = bzimage(&spec);
        let kernel = TempFile::new("bzImage", &image);
        let initrd = TempFile::new("initrd.img", &[0xa5; 100]);

        let entry = guest
            .boot(kernel.path(), Some(initrd.path()), "quiet")
            .unwrap();

        assert_eq!(entry.protocol, Protocol::LinuxBzImage);
        assert_eq!(entry.mode, EntryMode::Long64);
        assert_eq!(entry.rip, 0x10_0200, "64-bit entry = load address + 0x200");
        assert_eq!((entry.rsp, entry.rsi), (0x8ff0, ZP));
        assert_eq!(guest.read(0x10_0000, 0x2000), vec![0x90; 0x2000]);
        // The setup header is the image's, with the loader's fields filled in.
        let hdr = guest.read(ZP + 0x1f1, 0x7b);
        assert_eq!(hdr[..0x1f], image[0x1f1..0x210], "up to type_of_loader");
        assert_eq!(hdr[0x1f], 0xff, "type_of_loader");
        assert_eq!(
            hdr[0x20..0x27],
            image[0x211..0x218],
            "loadflags..code32_start"
        );
        assert_eq!(
            guest.u32_at(ZP + 0x218),
            0x1ff_f000,
            "initrd below initrd_addr_max"
        );
        assert_eq!(guest.u32_at(ZP + 0x21c), 100);
        assert_eq!(guest.u32_at(ZP + 0x228), CMDLINE_START.0 as u32);
        assert_eq!(guest.u32_at(ZP + 0x22c), 0x1ff_ffff, "initrd_addr_max kept");
        assert_eq!(guest.read(ZP + 0x236, 2), vec![1, 0], "xloadflags kept");
        assert_eq!(guest.read(0x1ff_f000, 100), vec![0xa5; 100]);
        assert_e820(&guest);
    }

    #[test]
    fn test_load_bzimage_initrd_kept_clear_of_kernel() {
        // 4 MiB of RAM: the kernel's decompression area must stay free.
        let guest = Guest::with_ram(4 << 20);
        let kernel = TempFile::new("bzImage", &bzimage(&BzImageSpec::default()));
        // Relocatable, 2 MiB aligned: it decompresses at 2 MiB..2 MiB + 64 KiB.
        let fits = TempFile::new("initrd.img", &vec![1; (2 << 20) - 0x10_000]);
        let too_big = TempFile::new("initrd.img", &vec![1; (2 << 20) - 0xf_000]);

        let entry = guest.boot(kernel.path(), Some(fits.path()), "");
        let initrd_addr = guest.u32_at(ZP + 0x218);
        let err = guest.boot(kernel.path(), Some(too_big.path()), "");

        assert_eq!(entry.unwrap().rip, 0x10_0200);
        assert_eq!(initrd_addr, 0x21_0000);
        assert!(matches!(err, Err(BootError::NoRoom { .. })));
    }

    #[test]
    fn test_load_bzimage_decompression_area_beyond_ram_refused() {
        // Debian 6.1's numbers: relocatable, pref_address 16 MiB, init_size 0x3378000.
        let guest = Guest::new();
        let spec = BzImageSpec {
            pref_address: 0x100_0000,
            init_size: 0x337_8000,
            ..Default::default()
        };

        let err = guest.boot_bytes(&bzimage(&spec), "").unwrap_err();

        assert!(matches!(err, BootError::OutsideRam { .. }), "{err}");
        assert!(err.to_string().contains("decompression area"), "{err}");
        assert!(err.to_string().contains("0x1000000..0x4378000"), "{err}");
    }
}
