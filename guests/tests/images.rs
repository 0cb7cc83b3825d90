//! Checks the headers of the built guest images without booting them:
//! the structures boot loaders (Strata's among them) look for.

use std::path::Path;

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes(b[off..off + 2].try_into().expect("2 bytes"))
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().expect("8 bytes"))
}

/// Program headers of an ELF64 image as (type, offset, filesz, align).
fn elf64_phdrs(b: &[u8]) -> Vec<(u32, usize, usize, u64)> {
    let phoff = u64_at(b, 0x20) as usize;
    let phentsize = usize::from(u16_at(b, 0x36));
    (0..usize::from(u16_at(b, 0x38)))
        .map(|i| {
            let p = phoff + i * phentsize;
            (
                u32_at(b, p),
                u64_at(b, p + 8) as usize,
                u64_at(b, p + 0x20) as usize,
                u64_at(b, p + 0x30),
            )
        })
        .collect()
}

const PT_NOTE: u32 = 4;

/// Offset of a 4-byte `magic` at an `align`-aligned offset below `limit`.
fn find_magic(b: &[u8], magic: u32, align: usize, limit: usize) -> Option<usize> {
    (0..limit.min(b.len().saturating_sub(4)))
        .step_by(align)
        .find(|&off| u32_at(b, off) == magic)
}

fn assert_elf64_x86_64(b: &[u8]) {
    assert_eq!(&b[..4], b"\x7fELF");
    assert_eq!(b[4], 2, "ELFCLASS64");
    assert_eq!(u16_at(b, 0x12), 0x3e, "EM_X86_64");
}

fn assert_pvh_note(path: &Path) {
    // Arrange
    let b = read(path);
    assert_elf64_x86_64(&b);
    let entry = u64_at(&b, 0x18);

    // Act
    let notes: Vec<_> = elf64_phdrs(&b)
        .into_iter()
        .filter(|p| p.0 == PT_NOTE)
        .collect();

    // Assert: one note "Xen", type 18, 8-byte descriptor = the ELF entry.
    assert_eq!(notes.len(), 1, "{}", path.display());
    let (_, off, size, align) = notes[0];
    assert_eq!(align, 4);
    assert_eq!(size, 24);
    assert_eq!(
        (u32_at(&b, off), u32_at(&b, off + 4), u32_at(&b, off + 8)),
        (4, 8, 18)
    );
    assert_eq!(&b[off + 12..off + 16], b"Xen\0");
    assert_eq!(u64_at(&b, off + 16), entry);
}

#[test]
fn test_pvh_images_have_phys32_entry_note() {
    assert_pvh_note(test_guests::pvh());
    assert_pvh_note(test_guests::ring3());
    assert_pvh_note(test_guests::smp());
}

#[test]
fn test_vmlinux_is_elf64_without_note_entry_at_64bit_start() {
    // Arrange
    let b = read(test_guests::linux_vmlinux());

    // Act
    let phdrs = elf64_phdrs(&b);

    // Assert
    assert_elf64_x86_64(&b);
    assert_eq!(u64_at(&b, 0x18), 0x10_0200);
    assert!(
        phdrs.iter().all(|p| p.0 != PT_NOTE),
        "vmlinux must not be PVH"
    );
}

#[test]
fn test_bzimage_setup_header_fields_valid() {
    // Arrange
    let b = read(test_guests::linux_bzimage());

    // Act
    let setup_len = (usize::from(b[0x1f1]) + 1) * 512;
    let kernel = &b[setup_len..];

    // Assert
    assert_eq!(u16_at(&b, 0x1fe), 0xaa55);
    assert_eq!(&b[0x202..0x206], b"HdrS");
    assert!(u16_at(&b, 0x206) >= 0x020c);
    assert_eq!(b[0x211] & 1, 1, "LOADED_HIGH");
    assert_eq!(u32_at(&b, 0x214), 0x10_0000, "code32_start");
    assert_eq!(u16_at(&b, 0x236) & 1, 1, "XLF_KERNEL_64");
    assert_eq!(
        u32_at(&b, 0x1f4) as usize,
        kernel.len().div_ceil(16),
        "syssize"
    );
    assert!(u32_at(&b, 0x260) as usize >= kernel.len(), "init_size");
    assert_eq!(kernel[0], 0xfa, "cli at the 32-bit entry");
    assert_eq!(kernel[0x200], 0xfa, "cli at the 64-bit entry");
    let vmlinux = read(test_guests::linux_vmlinux());
    let load = elf64_phdrs(&vmlinux)
        .into_iter()
        .find(|p| p.0 == 1)
        .expect("PT_LOAD");
    assert!(
        kernel.starts_with(&vmlinux[load.1..load.1 + load.2]),
        "same kernel code in both forms"
    );
}

/// Checks a multiboot1 header; returns its offset and flags.
fn mb1_header(b: &[u8]) -> (usize, u32) {
    let off = find_magic(b, 0x1bad_b002, 4, 8192).expect("multiboot1 header in the first 8 KiB");
    let flags = u32_at(b, off + 4);
    assert_eq!(
        u32_at(b, off)
            .wrapping_add(flags)
            .wrapping_add(u32_at(b, off + 8)),
        0,
        "checksum"
    );
    (off, flags)
}

#[test]
fn test_multiboot1_elf_header_without_aout_kludge() {
    let b = read(test_guests::multiboot1_elf());
    let (_, flags) = mb1_header(&b);
    assert_eq!(b[4], 1, "ELFCLASS32");
    assert_eq!(flags, 0x3);
}

#[test]
fn test_multiboot1_aout_header_addresses_match_file() {
    // Arrange
    let b = read(test_guests::multiboot1_aout());

    // Act
    let (off, flags) = mb1_header(&b);
    let [header, load, load_end, bss_end, entry] =
        [12, 16, 20, 24, 28].map(|o| u32_at(&b, off + o) as usize);

    // Assert
    assert_eq!(flags, 0x1_0003);
    assert_eq!(header - load, off);
    assert_eq!(load, 0x10_0000);
    assert_eq!(load_end - load, b.len());
    assert!(bss_end >= load_end);
    assert!((load..load_end).contains(&entry));
}

#[test]
fn test_multiboot2_header_valid_and_multiboot1_present() {
    // Arrange
    let b = read(test_guests::multiboot2());

    // Act
    let off = find_magic(&b, 0xe852_50d6, 8, 32768).expect("multiboot2 header in the first 32 KiB");
    let len = u32_at(&b, off + 8) as usize;

    // Assert
    assert_eq!(u32_at(&b, off + 4), 0, "i386 architecture");
    assert_eq!(
        u32_at(&b, off)
            .wrapping_add(len as u32)
            .wrapping_add(u32_at(&b, off + 12)),
        0
    );
    assert_eq!(
        (u16_at(&b, off + 16), u32_at(&b, off + 20)),
        (1, 28),
        "information request"
    );
    let requested: Vec<u32> = (0..5).map(|i| u32_at(&b, off + 24 + 4 * i)).collect();
    assert_eq!(requested, [1, 2, 3, 4, 6]);
    assert_eq!(
        &b[off + len - 8..off + len],
        &[0, 0, 0, 0, 8, 0, 0, 0],
        "end tag"
    );
    assert_eq!(mb1_header(&b).1, 0x3);
}
