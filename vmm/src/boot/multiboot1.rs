//! Multiboot 1: ELF (loaded by `p_paddr`) or a.out kludge images, entered in 32-bit protected
//! mode with EAX = 0x2BADB002 and EBX = the multiboot information at [`MULTIBOOT_INFO_START`].
//!
//! Information area layout: the 116-byte `multiboot_info` (padded to 120), the module list,
//! the memory map (size-prefixed entries), the boot loader name, then the module strings.
//! The command line is at [`CMDLINE_ADDR`].

use super::elf;
use super::{
    mem_lower_upper, read_u32, BootEntry, BootError, Direction, EntryMode, LoadContext, Module,
    Placement, Protocol, CMDLINE_ADDR, PAGE_SIZE,
};
use crate::arch::x86_64::layout::{
    CMDLINE_MAX_SIZE, MMIO_HOLE_START, MULTIBOOT_INFO_END, MULTIBOOT_INFO_START,
};

/// Header magic.
pub const HEADER_MAGIC: u32 = 0x1bad_b002;
/// EAX at entry.
pub const BOOTLOADER_MAGIC: u32 = 0x2bad_b002;
/// The header must be in the first 8 KiB.
const SEARCH_LIMIT: usize = 8192;
/// Header flag: page-align modules.
const FLAG_PAGE_ALIGN: u32 = 1 << 0;
/// Header flag: provide mem_lower/mem_upper and the memory map.
const FLAG_MEMORY_INFO: u32 = 1 << 1;
/// Header flag: provide video mode information.
const FLAG_VIDEO_MODE: u32 = 1 << 2;
/// Header flag: the load addresses are in the header (a.out kludge).
const FLAG_AOUT_KLUDGE: u32 = 1 << 16;
/// Info flags.
const INFO_MEMORY: u32 = 1 << 0;
const INFO_CMDLINE: u32 = 1 << 2;
const INFO_MODS: u32 = 1 << 3;
const INFO_MEM_MAP: u32 = 1 << 6;
const INFO_BOOT_LOADER_NAME: u32 = 1 << 9;
/// Size of `struct multiboot_info` (through the framebuffer fields).
const INFO_SIZE: usize = 116;
/// Boot loader name passed to the guest.
pub(super) const BOOT_LOADER_NAME: &[u8] = b"strata\0";

/// Offset of a valid multiboot 1 header (4-byte aligned, first 8 KiB, checksum good).
pub(super) fn find_header(bytes: &[u8]) -> Option<usize> {
    let end = bytes.len().min(SEARCH_LIMIT);
    (0..end).step_by(4).find(|&off| {
        let (Some(magic), Some(flags), Some(sum)) = (
            read_u32(bytes, off),
            read_u32(bytes, off + 4),
            read_u32(bytes, off + 8),
        ) else {
            return false;
        };
        magic == HEADER_MAGIC && magic.wrapping_add(flags).wrapping_add(sum) == 0
    })
}

/// Loads a multiboot 1 kernel whose header is at `offset` and writes the information.
pub(super) fn load(ctx: &LoadContext<'_>, offset: usize) -> Result<BootEntry, BootError> {
    let bytes = &ctx.kernel.bytes;
    let flags = read_u32(bytes, offset + 4).unwrap_or(0);
    check_flags(ctx, flags)?;
    let (used, entry) = if flags & FLAG_AOUT_KLUDGE != 0 {
        let field = |i: usize| {
            read_u32(bytes, offset + 12 + 4 * i).ok_or_else(|| {
                ctx.kernel.invalid(
                    "truncated multiboot header: the a.out kludge fields are cut off".into(),
                )
            })
        };
        let kludge = AoutKludge {
            header_offset: offset as u64,
            header_addr: field(0)?,
            load_addr: field(1)?,
            load_end_addr: field(2)?,
            bss_end_addr: field(3)?,
        };
        let entry = u64::from(field(4)?);
        check_entry(ctx, entry)?;
        (load_kludge(ctx, &kludge)?, entry)
    } else {
        load_elf(ctx, "multiboot")?
    };
    ctx.write_cmdline(CMDLINE_MAX_SIZE - 1, Protocol::Multiboot1)?;
    let module = ctx.load_initrd(&module_placement(used))?;
    write_info(ctx, module.as_ref())?;
    Ok(BootEntry {
        protocol: Protocol::Multiboot1,
        mode: EntryMode::Protected32,
        rip: entry,
        rsp: 0,
        rax: u64::from(BOOTLOADER_MAGIC),
        rbx: MULTIBOOT_INFO_START.0,
        rsi: 0,
    })
}

/// Refuses required features (flag bits 0-15) Strata does not provide.
fn check_flags(ctx: &LoadContext<'_>, flags: u32) -> Result<(), BootError> {
    if flags & FLAG_VIDEO_MODE != 0 {
        return Err(ctx.kernel.unsupported(
            "the multiboot header requires video mode information (flag bit 2), which Strata \
             does not provide"
                .into(),
        ));
    }
    let unknown = flags & 0xffff & !(FLAG_PAGE_ALIGN | FLAG_MEMORY_INFO);
    if unknown != 0 {
        return Err(ctx.kernel.unsupported(format!(
            "the multiboot header requires unknown features (flag bits {unknown:#x})"
        )));
    }
    // FLAG_PAGE_ALIGN and FLAG_MEMORY_INFO are always honoured: modules are page-aligned and
    // the memory information is always present.
    Ok(())
}

/// Loads the kernel as ELF (the image has no a.out kludge); returns its ranges and entry.
pub(super) fn load_elf(
    ctx: &LoadContext<'_>,
    what: &str,
) -> Result<(Vec<(u64, u64)>, u64), BootError> {
    let bytes = &ctx.kernel.bytes;
    if !elf::is_elf(bytes) {
        return Err(ctx.kernel.invalid(format!(
            "the {what} image is not ELF and its header gives no load addresses"
        )));
    }
    let image = elf::parse(bytes).map_err(|reason| ctx.kernel.invalid(reason))?;
    let entry = image.entry_paddr();
    check_entry(ctx, entry)?;
    Ok((elf::load(ctx, &image)?, entry))
}

/// The entry point must be 32-bit addressable and in RAM.
pub(super) fn check_entry(ctx: &LoadContext<'_>, entry: u64) -> Result<(), BootError> {
    ctx.check_ram("entry point", entry, 1)?;
    if entry >= MMIO_HOLE_START.0 {
        return Err(ctx.kernel.invalid(format!(
            "the entry point {entry:#x} is not reachable in 32-bit protected mode"
        )));
    }
    Ok(())
}

/// Load addresses from the header, for images that are not ELF (or do not want to be read
/// as ELF).
pub(super) struct AoutKludge {
    /// File offset of the header.
    pub header_offset: u64,
    /// Physical address the header is loaded at.
    pub header_addr: u32,
    /// Physical address of the first loaded byte; `u32::MAX` (multiboot 2 only): the file's start.
    pub load_addr: u32,
    /// End of the loaded part; 0: the end of the file.
    pub load_end_addr: u32,
    /// End of the zeroed bss; 0: no bss.
    pub bss_end_addr: u32,
}

/// Loads an a.out-kludge image and zeroes its bss; returns the range it occupies.
pub(super) fn load_kludge(
    ctx: &LoadContext<'_>,
    k: &AoutKludge,
) -> Result<Vec<(u64, u64)>, BootError> {
    let bad = |reason: &str| {
        ctx.kernel
            .invalid(format!("invalid load addresses in the header: {reason}"))
    };
    let file_len = ctx.kernel.bytes.len() as u64;
    let header_addr = u64::from(k.header_addr);
    let (load_addr, file_off) = if k.load_addr == u32::MAX {
        let load = header_addr
            .checked_sub(k.header_offset)
            .ok_or_else(|| bad("header_addr is below the header's file offset"))?;
        (load, 0)
    } else {
        let load = u64::from(k.load_addr);
        let back = header_addr
            .checked_sub(load)
            .ok_or_else(|| bad("load_addr is above header_addr"))?;
        let off = k
            .header_offset
            .checked_sub(back)
            .ok_or_else(|| bad("load_addr lies before the start of the file"))?;
        (load, off)
    };
    let load_size = match k.load_end_addr {
        0 => file_len - file_off,
        end => u64::from(end)
            .checked_sub(load_addr)
            .ok_or_else(|| bad("load_end_addr is below load_addr"))?,
    };
    if file_off + load_size > file_len {
        return Err(ctx.kernel.invalid(format!(
            "truncated image: the header asks for {load_size:#x} bytes from file offset \
             {file_off:#x}, but the file has {file_len:#x} bytes"
        )));
    }
    let end = match k.bss_end_addr {
        0 => load_addr + load_size,
        bss => u64::from(bss)
            .checked_sub(load_addr + load_size)
            .map(|_| u64::from(bss))
            .ok_or_else(|| bad("bss_end_addr is below load_end_addr"))?,
    };
    ctx.check_ram("kernel image (a.out kludge)", load_addr, end - load_addr)?;
    // Bounds checked above: file_off + load_size <= file_len.
    let data = &ctx.kernel.bytes[file_off as usize..(file_off + load_size) as usize];
    ctx.write("kernel image", load_addr, data)?;
    ctx.zero(
        "kernel bss",
        load_addr + load_size,
        end - load_addr - load_size,
    )?;
    Ok(vec![(load_addr, end)])
}

/// Modules go right after the kernel (as GRUB does), page-aligned, below the MMIO hole.
pub(super) fn module_placement(used: Vec<(u64, u64)>) -> Placement {
    let after = used.iter().map(|r| r.1).max().unwrap_or(0);
    let mut used = used;
    used.push((0, after));
    Placement {
        used,
        limit: MMIO_HOLE_START.0,
        align: PAGE_SIZE,
        direction: Direction::BottomUp,
    }
}

/// Builds the information area in host memory: addresses are guest-physical.
pub(super) struct InfoBuf {
    base: u64,
    buf: Vec<u8>,
}

impl InfoBuf {
    pub(super) fn new(base: u64) -> Self {
        InfoBuf {
            base,
            buf: Vec::new(),
        }
    }

    /// Appends `bytes`; returns their guest address.
    pub(super) fn push(&mut self, bytes: &[u8]) -> u64 {
        let addr = self.addr();
        self.buf.extend_from_slice(bytes);
        addr
    }

    pub(super) fn push_u32(&mut self, v: u32) -> u64 {
        self.push(&v.to_le_bytes())
    }

    pub(super) fn push_u64(&mut self, v: u64) -> u64 {
        self.push(&v.to_le_bytes())
    }

    /// Pads with zeros to a multiple of `align` bytes.
    pub(super) fn align(&mut self, align: usize) {
        let len = self.buf.len().next_multiple_of(align);
        self.buf.resize(len, 0);
    }

    /// Guest address of the next byte.
    pub(super) fn addr(&self) -> u64 {
        self.base + self.buf.len() as u64
    }

    /// Overwrites the `u32` at byte offset `off` (which the caller has pushed already).
    pub(super) fn set_u32(&mut self, off: usize, v: u32) {
        if let Some(slot) = self.buf.get_mut(off..off + 4) {
            slot.copy_from_slice(&v.to_le_bytes());
        }
    }

    pub(super) fn len(&self) -> usize {
        self.buf.len()
    }

    /// Checks that the area fits below `end` and writes it.
    pub(super) fn write(
        &self,
        ctx: &LoadContext<'_>,
        what: &'static str,
        end: u64,
    ) -> Result<(), BootError> {
        let capacity = (end - self.base) as usize;
        if self.buf.len() > capacity {
            return Err(BootError::BootInfoTooLarge {
                path: ctx.kernel.path.clone(),
                what,
                size: self.buf.len(),
                capacity,
            });
        }
        ctx.write(what, self.base, &self.buf)
    }
}

/// Writes `multiboot_info` and what it points to.
fn write_info(ctx: &LoadContext<'_>, module: Option<&Module>) -> Result<(), BootError> {
    let mut info = InfoBuf::new(MULTIBOOT_INFO_START.0);
    info.push(&[0; INFO_SIZE]);
    info.align(8);
    let (mem_lower, mem_upper) = mem_lower_upper(ctx.machine);
    let flags = INFO_MEMORY | INFO_CMDLINE | INFO_MODS | INFO_MEM_MAP | INFO_BOOT_LOADER_NAME;
    info.set_u32(0, flags);
    info.set_u32(4, mem_lower);
    info.set_u32(8, mem_upper);
    info.set_u32(16, CMDLINE_ADDR.0 as u32);
    // Module list: mod_start, mod_end, string, reserved. The string is patched in below.
    let mods_addr = info.addr();
    let mods_off = info.len();
    if let Some(m) = module {
        info.push_u32(m.addr as u32);
        info.push_u32((m.addr + m.size) as u32);
        info.push_u32(0);
        info.push_u32(0);
    }
    info.set_u32(20, u32::from(module.is_some()));
    info.set_u32(24, mods_addr as u32);
    // Memory map: size (20, not counting itself), base_addr, length, type.
    let mmap_addr = info.addr();
    for r in &ctx.machine.memory_map {
        info.push_u32(20);
        info.push_u64(r.base.0);
        info.push_u64(r.size);
        info.push_u32(r.kind.e820_type());
    }
    info.set_u32(44, (info.addr() - mmap_addr) as u32);
    info.set_u32(48, mmap_addr as u32);
    let name = info.push(BOOT_LOADER_NAME);
    info.set_u32(64, name as u32);
    if let Some(m) = module {
        let s = info.push(m.name.as_bytes());
        info.push(&[0]);
        info.set_u32(mods_off + 8, s as u32);
    }
    info.write(ctx, "multiboot information", MULTIBOOT_INFO_END.0)
}

#[cfg(test)]
mod tests {
    use super::super::test_images::*;
    use super::*;

    const INFO: u64 = MULTIBOOT_INFO_START.0;

    #[test]
    fn test_load_multiboot1_kludge_info_bytes() {
        let guest = Guest::new();
        let kernel = TempFile::new("kernel", &multiboot1_kludge(3, 0x1000));
        let initrd = TempFile::new("initrd.img", &[9; 100]);

        let entry = guest
            .boot(kernel.path(), Some(initrd.path()), "console=ttyS0")
            .unwrap();

        assert_eq!(
            entry,
            BootEntry {
                protocol: Protocol::Multiboot1,
                mode: EntryMode::Protected32,
                rip: 0x10_0020,
                rsp: 0,
                rax: 0x2bad_b002,
                rbx: INFO,
                rsi: 0,
            }
        );
        // The whole file is loaded at header_addr, then the bss is zero.
        assert_eq!(guest.read(0x10_0020, 16), CODE);
        assert_eq!(guest.u32_at(0x10_0000), HEADER_MAGIC);
        let fields: Vec<u32> = (0..17).map(|i| guest.u32_at(INFO + 4 * i)).collect();
        #[rustfmt::skip]
        let want = [
            0x24d,            // flags: mem, cmdline, mods, mmap, boot loader name
            639, 64512,       // mem_lower, mem_upper (KiB)
            0,                // boot_device (not provided)
            0x2_0000,         // cmdline
            1, 0xd078,        // mods_count, mods_addr
            0, 0, 0, 0,       // syms
            72, 0xd088,       // mmap_length, mmap_addr
            0, 0, 0,          // drives_length, drives_addr, config_table
            0xd0d0,           // boot_loader_name
        ];
        assert_eq!(fields, want);
        let module: Vec<u32> = (0..4).map(|i| guest.u32_at(0xd078 + 4 * i)).collect();
        assert_eq!(module, [0x10_2000, 0x10_2064, 0xd0d7, 0]);
        let map = [
            (0, 0x9_fc00, 1),
            (0x9_fc00, 0x400, 2),
            (0x10_0000, RAM - 0x10_0000, 1),
        ];
        for (i, (base, len, ty)) in map.iter().enumerate() {
            let at = 0xd088 + 24 * i as u64;
            assert_eq!(guest.u32_at(at), 20, "mmap[{i}].size");
            assert_eq!(guest.u64_at(at + 4), *base, "mmap[{i}].base_addr");
            assert_eq!(guest.u64_at(at + 12), *len, "mmap[{i}].length");
            assert_eq!(guest.u32_at(at + 20), *ty, "mmap[{i}].type");
        }
        assert_eq!(guest.read(0xd0d0, 18), b"strata\0initrd.img\0");
        // The kernel's file name first, as GRUB and QEMU pass it.
        assert_eq!(guest.read(0x2_0000, 21), b"kernel console=ttyS0\0");
        assert_eq!(guest.read(0x10_2000, 100), vec![9; 100]);
    }

    #[test]
    fn test_load_multiboot1_empty_cmdline_is_kernel_file_name() {
        let guest = Guest::new();
        let kernel = TempFile::new("xen.gz", &multiboot1_kludge(3, 0x1000));

        guest.boot(kernel.path(), None, "  ").unwrap();

        // Only the file name, without the directories of its path.
        assert_eq!(guest.read(0x2_0000, 7), b"xen.gz\0");
    }

    #[test]
    fn test_load_multiboot1_elf_uses_elf_entry() {
        let guest = Guest::new();
        let mut image = small_elf(false, false);
        add_multiboot1_header(&mut image, FLAG_PAGE_ALIGN | FLAG_MEMORY_INFO);

        let entry = guest.boot_bytes(&image, "").unwrap();

        assert_eq!(entry.protocol, Protocol::Multiboot1);
        assert_eq!((entry.rip, entry.rax), (0x10_0000, 0x2bad_b002));
        assert_eq!(guest.read(0x10_0000, 16), CODE);
        assert_eq!(guest.u32_at(INFO + 20), 0, "no modules");
    }

    #[test]
    fn test_find_header_ignores_unaligned_and_late_headers() {
        let mut unaligned = vec![0u8; 2];
        add_multiboot1_header(&mut unaligned, 0);
        let shifted: Vec<u8> = [&[0u8; 2][..], &unaligned[4..]].concat();
        let mut late = vec![0u8; SEARCH_LIMIT];
        add_multiboot1_header(&mut late, 0);

        assert_eq!(find_header(&unaligned), Some(4));
        assert_eq!(find_header(&shifted), None);
        assert_eq!(find_header(&late), None);
    }
}
