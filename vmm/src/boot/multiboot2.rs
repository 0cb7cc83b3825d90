//! Multiboot 2: ELF images or images with an address tag (a.out-kludge-like load), entered
//! in 32-bit protected mode with EAX = 0x36d76289 and EBX = the boot information at
//! [`MULTIBOOT_INFO_START`].
//!
//! Boot information tags written, 8-byte aligned: 1 command line, 2 boot loader name,
//! 3 module (the initrd, string = its file name), 4 basic memory information, 6 memory map
//! (entry_size 24, entry_version 0), 0 end.

use super::multiboot1::{self, AoutKludge, InfoBuf, BOOT_LOADER_NAME};
use super::{
    mem_lower_upper, read_u16, read_u32, BootEntry, BootError, EntryMode, LoadContext, Module,
    Protocol,
};
use crate::arch::x86_64::layout::{MULTIBOOT_INFO_END, MULTIBOOT_INFO_START};

/// Header magic.
pub const HEADER_MAGIC: u32 = 0xe852_50d6;
/// EAX at entry.
pub const BOOTLOADER_MAGIC: u32 = 0x36d7_6289;
/// The header must be in the first 32 KiB.
const SEARCH_LIMIT: usize = 32768;
/// Header size before the tags.
const HEADER_SIZE: usize = 16;
/// Header tag flag: the boot loader may ignore the tag.
const TAG_OPTIONAL: u16 = 1;
/// Longest command line accepted (the line is copied into the 8 KiB information area).
const CMDLINE_MAX: usize = 4095;

/// Header tag types.
const TAG_END: u16 = 0;
const TAG_INFO_REQUEST: u16 = 1;
const TAG_ADDRESS: u16 = 2;
const TAG_ENTRY_ADDRESS: u16 = 3;
const TAG_CONSOLE_FLAGS: u16 = 4;
const TAG_FRAMEBUFFER: u16 = 5;
const TAG_MODULE_ALIGN: u16 = 6;
const TAG_RELOCATABLE: u16 = 10;

/// Boot information tag types.
const INFO_END: u32 = 0;
const INFO_CMDLINE: u32 = 1;
const INFO_BOOT_LOADER_NAME: u32 = 2;
const INFO_MODULE: u32 = 3;
const INFO_BASIC_MEMINFO: u32 = 4;
const INFO_MMAP: u32 = 6;
/// The information tags Strata provides (answerable information requests).
const PROVIDED: [u32; 6] = [
    INFO_END,
    INFO_CMDLINE,
    INFO_BOOT_LOADER_NAME,
    INFO_MODULE,
    INFO_BASIC_MEMINFO,
    INFO_MMAP,
];

/// Offset of a valid multiboot 2 header (8-byte aligned, first 32 KiB, checksum good).
pub(super) fn find_header(bytes: &[u8]) -> Option<usize> {
    let end = bytes.len().min(SEARCH_LIMIT);
    (0..end).step_by(8).find(|&off| {
        let fields: Option<Vec<u32>> = (0..4).map(|i| read_u32(bytes, off + 4 * i)).collect();
        fields.is_some_and(|f| {
            f[0] == HEADER_MAGIC && f.iter().fold(0u32, |sum, &x| sum.wrapping_add(x)) == 0
        })
    })
}

/// What the header tags ask for.
#[derive(Default)]
struct HeaderTags {
    address: Option<[u32; 4]>,
    entry: Option<u32>,
}

/// Loads a multiboot 2 kernel whose header is at `offset` and writes the information.
pub(super) fn load(ctx: &LoadContext<'_>, offset: usize) -> Result<BootEntry, BootError> {
    let tags = parse_tags(ctx, offset)?;
    let (used, entry) = match tags.address {
        Some([header_addr, load_addr, load_end_addr, bss_end_addr]) => {
            let entry = tags.entry.map(u64::from).ok_or_else(|| {
                ctx.kernel.invalid(
                    "the multiboot 2 header has an address tag but no entry address tag".into(),
                )
            })?;
            multiboot1::check_entry(ctx, entry)?;
            let kludge = AoutKludge {
                header_offset: offset as u64,
                header_addr,
                load_addr,
                load_end_addr,
                bss_end_addr,
            };
            (multiboot1::load_kludge(ctx, &kludge)?, entry)
        }
        None => {
            let (used, elf_entry) = multiboot1::load_elf(ctx, "multiboot 2")?;
            let entry = tags.entry.map_or(elf_entry, u64::from);
            multiboot1::check_entry(ctx, entry)?;
            (used, entry)
        }
    };
    let cmdline = super::cmdline_bytes(&ctx.cmdline(CMDLINE_MAX, Protocol::Multiboot2)?);
    let module = ctx.load_initrd(&multiboot1::module_placement(used))?;
    write_info(ctx, &cmdline, module.as_ref())?;
    Ok(BootEntry {
        protocol: Protocol::Multiboot2,
        mode: EntryMode::Protected32,
        rip: entry,
        rsp: 0,
        rax: u64::from(BOOTLOADER_MAGIC),
        rbx: MULTIBOOT_INFO_START.0,
        rsi: 0,
    })
}

/// Walks the header tags, refusing required ones Strata cannot honour.
fn parse_tags(ctx: &LoadContext<'_>, offset: usize) -> Result<HeaderTags, BootError> {
    let bytes = &ctx.kernel.bytes;
    let arch = read_u32(bytes, offset + 4).unwrap_or(0);
    if arch != 0 {
        return Err(ctx.kernel.unsupported(format!(
            "the multiboot 2 header is for architecture {arch}; Strata boots i386 (0) only"
        )));
    }
    let length = read_u32(bytes, offset + 8).unwrap_or(0) as usize;
    let end = offset
        .checked_add(length)
        .filter(|&e| length >= HEADER_SIZE && e <= bytes.len())
        .ok_or_else(|| {
            ctx.kernel.invalid(format!(
                "invalid multiboot 2 header: header_length {length} is below 16 or runs past \
                 the end of the file"
            ))
        })?;
    let mut tags = HeaderTags::default();
    let mut pos = offset + HEADER_SIZE;
    while pos + 8 <= end {
        let ty = read_u16(bytes, pos).unwrap_or(0);
        let flags = read_u16(bytes, pos + 2).unwrap_or(0);
        let size = read_u32(bytes, pos + 4).unwrap_or(0) as usize;
        let body = bytes
            .get(pos + 8..pos.saturating_add(size).min(end))
            .filter(|_| size >= 8 && pos + size <= end)
            .ok_or_else(|| {
                ctx.kernel.invalid(format!(
                    "invalid multiboot 2 header: tag {ty} at file offset {pos:#x} has size \
                     {size}, outside the header"
                ))
            })?;
        if ty == TAG_END {
            break;
        }
        parse_tag(ctx, ty, flags & TAG_OPTIONAL != 0, body, &mut tags)?;
        pos += size.next_multiple_of(8);
    }
    Ok(tags)
}

fn parse_tag(
    ctx: &LoadContext<'_>,
    ty: u16,
    optional: bool,
    body: &[u8],
    tags: &mut HeaderTags,
) -> Result<(), BootError> {
    let short = |what: &str| {
        ctx.kernel.invalid(format!(
            "invalid multiboot 2 header: the {what} tag is too short"
        ))
    };
    let word = |i: usize| read_u32(body, 4 * i);
    match ty {
        TAG_INFO_REQUEST => {
            let missing = body
                .chunks_exact(4)
                .filter_map(|c| read_u32(c, 0))
                .find(|t| !PROVIDED.contains(t));
            if let (Some(t), false) = (missing, optional) {
                return Err(ctx.kernel.unsupported(format!(
                    "the multiboot 2 header requires boot information tag type {t}, which \
                     Strata does not provide (it provides types 1, 2, 3, 4 and 6)"
                )));
            }
        }
        TAG_ADDRESS => {
            let fields: Option<Vec<u32>> = (0..4).map(word).collect();
            let f = fields.ok_or_else(|| short("address"))?;
            tags.address = Some([f[0], f[1], f[2], f[3]]);
        }
        TAG_ENTRY_ADDRESS => tags.entry = Some(word(0).ok_or_else(|| short("entry address"))?),
        // Console flags: Strata has no console choice to make. Modules are always page-aligned.
        // A relocatable image may also be loaded at its preferred address.
        TAG_CONSOLE_FLAGS | TAG_MODULE_ALIGN | TAG_RELOCATABLE => {}
        TAG_FRAMEBUFFER if !optional => {
            return Err(ctx.kernel.unsupported(
                "the multiboot 2 header requires a framebuffer (tag 5), which Strata does not \
                 provide"
                    .into(),
            ))
        }
        _ if !optional => {
            return Err(ctx.kernel.unsupported(format!(
                "the multiboot 2 header has a required tag of type {ty} (EFI or unknown), \
                 which Strata does not support"
            )))
        }
        _ => {}
    }
    Ok(())
}

/// Appends one information tag (header, payload, padding to 8 bytes).
fn push_tag(info: &mut InfoBuf, ty: u32, payload: &[u8]) {
    info.push_u32(ty);
    info.push_u32((8 + payload.len()) as u32);
    info.push(payload);
    info.align(8);
}

/// Writes the boot information.
fn write_info(
    ctx: &LoadContext<'_>,
    cmdline: &[u8],
    module: Option<&Module>,
) -> Result<(), BootError> {
    let mut info = InfoBuf::new(MULTIBOOT_INFO_START.0);
    info.push_u32(0); // total_size, set below
    info.push_u32(0); // reserved
    push_tag(&mut info, INFO_CMDLINE, cmdline);
    push_tag(&mut info, INFO_BOOT_LOADER_NAME, BOOT_LOADER_NAME);
    if let Some(m) = module {
        let mut payload = Vec::new();
        payload.extend_from_slice(&(m.addr as u32).to_le_bytes());
        payload.extend_from_slice(&((m.addr + m.size) as u32).to_le_bytes());
        payload.extend_from_slice(m.name.as_bytes());
        payload.push(0);
        push_tag(&mut info, INFO_MODULE, &payload);
    }
    let (lower, upper) = mem_lower_upper(ctx.machine);
    let meminfo: Vec<u8> = [lower, upper]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    push_tag(&mut info, INFO_BASIC_MEMINFO, &meminfo);
    let mut mmap = Vec::new();
    mmap.extend_from_slice(&24u32.to_le_bytes()); // entry_size
    mmap.extend_from_slice(&0u32.to_le_bytes()); // entry_version
    for r in &ctx.machine.memory_map {
        mmap.extend_from_slice(&r.base.0.to_le_bytes());
        mmap.extend_from_slice(&r.size.to_le_bytes());
        mmap.extend_from_slice(&r.kind.e820_type().to_le_bytes());
        mmap.extend_from_slice(&0u32.to_le_bytes());
    }
    push_tag(&mut info, INFO_MMAP, &mmap);
    push_tag(&mut info, INFO_END, &[]);
    let total = info.len() as u32;
    info.set_u32(0, total);
    info.write(ctx, "multiboot 2 information", MULTIBOOT_INFO_END.0)
}

#[cfg(test)]
mod tests {
    use super::super::test_images::*;
    use super::*;

    const INFO: u64 = MULTIBOOT_INFO_START.0;

    fn le(words: &[u32]) -> Vec<u8> {
        words.iter().flat_map(|w| w.to_le_bytes()).collect()
    }

    #[test]
    fn test_load_multiboot2_info_bytes() {
        let guest = Guest::new();
        let image = multiboot2_flat(&[mb2_tag(1, 0, &[1, 3, 4, 6]), mb2_tag(6, 0, &[])]);
        let kernel = TempFile::new("kernel", &image);
        let initrd = TempFile::new("initrd.img", &[3; 100]);

        let entry = guest
            .boot(kernel.path(), Some(initrd.path()), "console=ttyS0")
            .unwrap();

        // Header: 16 + info request (24) + module align (8) + address (24) + entry (16)
        // + end (8) = 96 bytes; the code follows it.
        assert_eq!(
            entry,
            BootEntry {
                protocol: Protocol::Multiboot2,
                mode: EntryMode::Protected32,
                rip: 0x10_0060,
                rsp: 0,
                rax: 0x36d7_6289,
                rbx: INFO,
                rsi: 0,
            }
        );
        assert_eq!(guest.read(0x10_0060, 16), CODE);
        // The command line starts with the kernel's file name, as GRUB and QEMU pass it.
        let mut want = le(&[200, 0]);
        want.extend(le(&[1, 29]));
        want.extend(b"kernel console=ttyS0\0\0\0\0");
        want.extend(le(&[2, 15]));
        want.extend(b"strata\0\0");
        want.extend(le(&[3, 27, 0x10_2000, 0x10_2064]));
        want.extend(b"initrd.img\0\0\0\0\0\0");
        want.extend(le(&[4, 16, 639, 64512]));
        want.extend(le(&[6, 16 + 3 * 24, 24, 0]));
        want.extend(le(&[0, 0, 0x9_fc00, 0, 1, 0]));
        want.extend(le(&[0x9_fc00, 0, 0x400, 0, 2, 0]));
        want.extend(le(&[0x10_0000, 0, (RAM - 0x10_0000) as u32, 0, 1, 0]));
        want.extend(le(&[0, 8]));
        assert_eq!(want.len(), 200);
        assert_eq!(guest.read(INFO, want.len()), want);
        assert_eq!(guest.read(0x10_2000, 100), vec![3; 100]);
    }

    #[test]
    fn test_load_multiboot2_elf_without_address_tag() {
        let guest = Guest::new();
        let mut image = small_elf(true, false);
        image.resize(image.len().next_multiple_of(8), 0);
        image.extend(mb2_header(&[mb2_tag(4, 0, &[0])]));

        let entry = guest.boot_bytes(&image, "").unwrap();

        assert_eq!(entry.protocol, Protocol::Multiboot2);
        assert_eq!(entry.rip, 0x10_0000, "ELF entry");
        assert_eq!(guest.read(0x10_0000, 16), CODE);
    }

    #[test]
    fn test_load_multiboot2_address_tag_without_entry_refused() {
        let guest = Guest::new();
        let image = mb2_header(&[mb2_tag(2, 0, &[0x10_0000, 0x10_0000, 0, 0])]);

        let err = guest.boot_bytes(&image, "").unwrap_err();

        assert!(err.to_string().contains("no entry address tag"), "{err}");
    }

    #[test]
    fn test_load_multiboot2_bad_tag_size_refused() {
        let guest = Guest::new();
        let mut tag = mb2_tag(4, 0, &[0]);
        tag[4] = 200; // size past the header
        let image = mb2_header(&[tag]);

        let err = guest.boot_bytes(&image, "").unwrap_err();

        assert!(err.to_string().contains("outside the header"), "{err}");
    }

    #[test]
    fn test_load_multiboot2_other_architecture_refused() {
        let guest = Guest::new();
        let magic = HEADER_MAGIC;
        let image = le(&[magic, 4, 24, 0u32.wrapping_sub(magic + 4 + 24), 0, 8]);

        let err = guest.boot_bytes(&image, "").unwrap_err();

        assert!(err.to_string().contains("architecture 4"), "{err}");
    }
}
