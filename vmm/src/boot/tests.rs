//! Detection and bad-input tests for the kernel loaders (no KVM needed).

use std::fs::File;

use super::test_images::*;
use super::*;

fn err_text(r: Result<BootEntry, BootError>) -> String {
    match r {
        Ok(e) => panic!("expected an error, got {e:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn test_load_missing_file_names_file() {
    let guest = Guest::new();
    let path = std::env::temp_dir().join("strata-boot-no-such-kernel");

    let msg = err_text(guest.boot(&path, None, ""));

    assert!(msg.contains("strata-boot-no-such-kernel"), "{msg}");
    assert!(msg.starts_with("cannot open"), "{msg}");
}

#[test]
fn test_load_directory_refused_as_not_a_file() {
    let guest = Guest::new();
    let f = TempFile::new("kernel", b"x");
    let dir = f.path().parent().unwrap();

    let err = guest.boot(dir, None, "").unwrap_err();

    assert!(matches!(err, BootError::NotAFile { .. }), "{err}");
    assert!(err.to_string().contains("is not a regular file"));
}

#[test]
fn test_load_empty_file_refused() {
    let guest = Guest::new();

    let err = guest.boot_bytes(&[], "").unwrap_err();

    assert!(matches!(err, BootError::Empty { .. }), "{err}");
    assert!(err.to_string().ends_with("kernel is empty"), "{err}");
}

#[test]
fn test_load_random_bytes_not_a_kernel() {
    let guest = Guest::new();
    let mut x = 0x1234_5678u32;
    let bytes: Vec<u8> = (0..65536)
        .map(|_| {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            (x >> 16) as u8
        })
        .collect();

    let msg = err_text(guest.boot_bytes(&bytes, ""));

    assert!(
        msg.ends_with(
            "kernel: not a kernel image Strata can boot (no ELF, bzImage or multiboot header)"
        ),
        "{msg}"
    );
}

#[test]
fn test_load_elf32_without_boot_header_refused() {
    let guest = Guest::new();

    let msg = err_text(guest.boot_bytes(&small_elf(false, false), ""));

    assert!(msg.contains("32-bit ELF image without a PVH note"), "{msg}");
}

#[test]
fn test_load_truncated_elf_header_refused() {
    let guest = Guest::new();
    let image = small_elf(true, false);

    let msg = err_text(guest.boot_bytes(&image[..40], ""));

    assert!(msg.contains("truncated ELF image: the ELF header"), "{msg}");
}

#[test]
fn test_load_truncated_elf_segment_refused() {
    let guest = Guest::new();
    let image = small_elf(true, false);

    let msg = err_text(guest.boot_bytes(&image[..image.len() - 4], ""));

    assert!(msg.contains("truncated ELF image: the segment"), "{msg}");
    assert_eq!(guest.read(0x10_0000, 16), vec![0; 16]);
}

#[test]
fn test_load_truncated_elf_program_headers_refused() {
    let guest = Guest::new();
    let image = small_elf(true, false);

    let msg = err_text(guest.boot_bytes(&image[..64 + 20], ""));

    assert!(msg.contains("program header table"), "{msg}");
}

#[test]
fn test_load_truncated_bzimage_refused() {
    let guest = Guest::new();
    let image = bzimage(&BzImageSpec::default());

    let cut_payload = err_text(guest.boot_bytes(&image[..image.len() - 100], ""));
    let cut_header = err_text(guest.boot_bytes(&image[..0x210], ""));

    assert!(cut_payload.contains("truncated bzImage"), "{cut_payload}");
    assert!(
        cut_header.contains("setup header is cut off"),
        "{cut_header}"
    );
}

#[test]
fn test_load_bzimage_without_64bit_entry_refused() {
    let guest = Guest::new();
    let spec = BzImageSpec {
        xloadflags: 0,
        ..Default::default()
    };

    let err = guest.boot_bytes(&bzimage(&spec), "").unwrap_err();

    assert!(matches!(err, BootError::Unsupported { .. }));
    assert!(err.to_string().contains("XLF_KERNEL_64"), "{err}");
}

#[test]
fn test_load_bzimage_old_protocol_refused() {
    let guest = Guest::new();
    let spec = BzImageSpec {
        version: 0x0206,
        ..Default::default()
    };

    let msg = err_text(guest.boot_bytes(&bzimage(&spec), ""));

    assert!(msg.contains("boot protocol 2.06 is too old"), "{msg}");
}

fn two_segment_elf(second: u64) -> Vec<u8> {
    let segs = [
        Seg {
            paddr: 0x10_0000,
            data: CODE,
            memsz: 0x1000,
        },
        Seg {
            paddr: second,
            data: CODE,
            memsz: 0x2000,
        },
    ];
    elf(true, 0x10_0000, &segs, None)
}

#[test]
fn test_load_segment_beyond_ram_refused_before_writing() {
    let guest = Guest::new();

    let err = guest
        .boot_bytes(&two_segment_elf(RAM - 0x1000), "")
        .unwrap_err();

    assert!(matches!(err, BootError::OutsideRam { .. }), "{err}");
    assert!(err.to_string().contains("0x3fff000..0x4001000"), "{err}");
    assert_eq!(guest.read(0x10_0000, 16), vec![0; 16], "nothing written");
}

#[test]
fn test_load_segment_in_mmio_hole_refused() {
    let guest = Guest::with_ram(5 << 30);

    let err = guest
        .boot_bytes(&two_segment_elf(0xbfff_f000), "")
        .unwrap_err();

    assert!(matches!(err, BootError::OutsideRam { .. }), "{err}");
    assert!(err.to_string().contains("0xbffff000..0xc0001000"), "{err}");
}

#[test]
fn test_load_segment_over_boot_data_refused() {
    let guest = Guest::new();

    let err = guest.boot_bytes(&two_segment_elf(0x7000), "").unwrap_err();

    assert!(matches!(err, BootError::OutsideRam { .. }), "{err}");
}

#[test]
fn test_load_initrd_larger_than_ram_refused() {
    let guest = Guest::with_ram(8 << 20);
    let kernel = TempFile::new("vmlinux", &small_elf(true, false));
    let initrd = TempFile::new("initrd", b"");
    File::options()
        .write(true)
        .open(initrd.path())
        .unwrap()
        .set_len(8 << 20)
        .unwrap();

    let err = guest
        .boot(kernel.path(), Some(initrd.path()), "")
        .unwrap_err();

    assert!(matches!(err, BootError::NoRoom { .. }), "{err}");
    assert!(
        err.to_string().contains("8388608 bytes do not fit"),
        "{err}"
    );
    assert!(err.to_string().contains("initrd"), "{err}");
}

#[test]
fn test_load_missing_initrd_names_file() {
    let guest = Guest::new();
    let kernel = TempFile::new("vmlinux", &small_elf(true, false));
    let missing = kernel.path().with_file_name("no-initrd");

    let msg = err_text(guest.boot(kernel.path(), Some(&missing), ""));

    assert!(msg.contains("no-initrd"), "{msg}");
}

#[test]
fn test_load_cmdline_too_long_refused_per_protocol() {
    let guest = Guest::new();
    let spec = BzImageSpec {
        cmdline_size: 255,
        ..Default::default()
    };
    let mut mb1 = small_elf(true, false);
    add_multiboot1_header(&mut mb1, 0);

    let bz = guest
        .boot_bytes(&bzimage(&spec), &"a".repeat(256))
        .unwrap_err();
    let bz_ok = guest.boot_bytes(&bzimage(&spec), &"a".repeat(255));
    let vmlinux = guest
        .boot_bytes(&small_elf(true, false), &"a".repeat(2048))
        .unwrap_err();
    let mb2 = guest
        .boot_bytes(&multiboot2_flat(&[]), &"a".repeat(4096))
        .unwrap_err();
    let mb1 = guest
        .boot_bytes(&mb1, &"a".repeat(CMDLINE_MAX_SIZE))
        .unwrap_err();

    assert!(
        bz.to_string()
            .contains("256 bytes is longer than the 255-byte limit"),
        "{bz}"
    );
    assert!(bz_ok.is_ok());
    assert!(matches!(
        vmlinux,
        BootError::CmdlineTooLong { limit: 2047, .. }
    ));
    assert!(matches!(mb2, BootError::CmdlineTooLong { limit: 4095, .. }));
    assert!(matches!(
        mb1,
        BootError::CmdlineTooLong {
            protocol: Protocol::Multiboot1,
            ..
        }
    ));
}

#[test]
fn test_load_multiboot1_video_flag_refused() {
    let guest = Guest::new();

    let msg = err_text(guest.boot_bytes(&multiboot1_kludge(1 << 2, 0), ""));

    assert!(msg.contains("video mode information (flag bit 2)"), "{msg}");
}

#[test]
fn test_load_multiboot1_unknown_required_flag_refused() {
    let guest = Guest::new();

    let msg = err_text(guest.boot_bytes(&multiboot1_kludge(1 << 5, 0), ""));

    assert!(msg.contains("unknown features (flag bits 0x20)"), "{msg}");
}

#[test]
fn test_load_multiboot1_kludge_past_file_end_refused() {
    let guest = Guest::new();
    let mut image = multiboot1_kludge(0, 0);
    image.truncate(40);

    let msg = err_text(guest.boot_bytes(&image, ""));

    assert!(msg.contains("truncated image"), "{msg}");
}

#[test]
fn test_load_multiboot2_required_info_request_refused() {
    let guest = Guest::new();
    let image = multiboot2_flat(&[mb2_tag(1, 0, &[6, 8])]);

    let msg = err_text(guest.boot_bytes(&image, ""));

    assert!(
        msg.contains("requires boot information tag type 8"),
        "{msg}"
    );
}

#[test]
fn test_load_multiboot2_optional_info_request_accepted() {
    let guest = Guest::new();
    let image = multiboot2_flat(&[mb2_tag(1, 1, &[8])]);

    let entry = guest.boot_bytes(&image, "").unwrap();

    assert_eq!(entry.protocol, Protocol::Multiboot2);
}

#[test]
fn test_load_multiboot2_required_framebuffer_refused() {
    let guest = Guest::new();
    let image = multiboot2_flat(&[mb2_tag(5, 0, &[0, 0, 0])]);

    let msg = err_text(guest.boot_bytes(&image, ""));

    assert!(msg.contains("requires a framebuffer"), "{msg}");
}

#[test]
fn test_probe_detects_each_protocol_from_headers() {
    let mut mb1_elf = small_elf(false, false);
    add_multiboot1_header(&mut mb1_elf, 3);
    let mut mb2_elf = small_elf(false, false);
    mb2_elf.resize(mb2_elf.len().next_multiple_of(8), 0);
    mb2_elf.extend(mb2_header(&[]));
    let mut pvh_with_mb1 = small_elf(true, true);
    add_multiboot1_header(&mut pvh_with_mb1, 0);
    let cases = [
        (bzimage(&BzImageSpec::default()), Protocol::LinuxBzImage),
        (small_elf(true, true), Protocol::Pvh),
        (small_elf(false, true), Protocol::Pvh),
        (pvh_with_mb1, Protocol::Pvh),
        (mb2_elf, Protocol::Multiboot2),
        (multiboot2_flat(&[]), Protocol::Multiboot2),
        (mb1_elf, Protocol::Multiboot1),
        (multiboot1_kludge(0, 0), Protocol::Multiboot1),
        (small_elf(true, false), Protocol::LinuxElf),
    ];

    for (i, (image, want)) in cases.iter().enumerate() {
        // The name says "bzImage" for all of them: detection never looks at it.
        let f = TempFile::new("bzImage", image);
        assert_eq!(probe(f.path()).unwrap(), *want, "case {i}");
    }
}

#[test]
fn test_load_multiboot1_bad_checksum_not_detected() {
    let guest = Guest::new();
    let mut image = multiboot1_kludge(0, 0);
    image[8] ^= 1;

    let msg = err_text(guest.boot_bytes(&image, ""));

    assert!(msg.contains("not a kernel image Strata can boot"), "{msg}");
}

#[test]
fn test_load_every_truncation_errors_without_panic() {
    let guest = Guest::new();
    let mut mb1_elf = small_elf(false, false);
    add_multiboot1_header(&mut mb1_elf, 3);
    let images = [
        bzimage(&BzImageSpec::default()),
        small_elf(true, true),
        small_elf(false, true),
        mb1_elf,
        multiboot1_kludge(3, 0x100),
        multiboot2_flat(&[]),
        small_elf(true, false),
    ];

    for image in &images {
        for len in (0..image.len()).step_by(image.len() / 400 + 1) {
            // Every strict prefix is either refused or (when only padding was cut) booted.
            let _ = guest.boot_bytes(&image[..len], "console=ttyS0");
        }
        assert!(guest.boot_bytes(image, "console=ttyS0").is_ok());
    }
}

#[test]
fn test_load_multiboot1_higher_half_elf_entry_translated() {
    let guest = Guest::new();
    let seg = Seg {
        paddr: 0x10_0000,
        data: CODE,
        memsz: 0x1000,
    };
    let mut image = elf(false, 0xc010_0008, &[seg], None);
    // Give the segment a higher-half virtual address (p_vaddr of the first phdr).
    image[52 + 8..52 + 12].copy_from_slice(&0xc010_0000u32.to_le_bytes());
    add_multiboot1_header(&mut image, 0);

    let entry = guest.boot_bytes(&image, "").unwrap();

    assert_eq!(entry.rip, 0x10_0008);
}

#[test]
fn test_load_broken_elf_with_multiboot_kludge_boots_through_kludge() {
    let guest = Guest::new();
    let mut image = multiboot1_kludge(0, 0);
    // An ELF magic in front of a kludge header: the ELF is garbage, the kludge is not.
    let mut broken = b"\x7fELF".to_vec();
    broken.resize(32, 0);
    broken.extend_from_slice(&image[..]);
    image = broken;
    // Header now at offset 32: header_addr, load_addr, load_end_addr, bss_end_addr, entry.
    let fields = [
        0x10_0020u32,
        0x10_0000,
        0x10_0000 + image.len() as u32,
        0,
        0x10_0040,
    ];
    for (i, v) in fields.iter().enumerate() {
        image[32 + 12 + 4 * i..32 + 16 + 4 * i].copy_from_slice(&v.to_le_bytes());
    }

    let entry = guest.boot_bytes(&image, "");

    assert_eq!(entry.unwrap().rip, 0x10_0040);
    assert_eq!(guest.read(0x10_0000, 4), b"\x7fELF");
    assert_eq!(guest.read(0x10_0040, 16), CODE);
}

#[test]
fn test_load_broken_elf_without_other_header_reports_elf_error() {
    let guest = Guest::new();
    let mut image = small_elf(true, false);
    image[54] = 40; // e_phentsize

    let msg = err_text(guest.boot_bytes(&image, ""));

    assert!(msg.contains("invalid ELF program header size 40"), "{msg}");
}

#[test]
fn test_load_bzimage_cmdline_capped_at_cmdline_area() {
    let guest = Guest::new();
    let spec = BzImageSpec {
        cmdline_size: u32::MAX,
        ..Default::default()
    };

    let err = guest
        .boot_bytes(&bzimage(&spec), &"a".repeat(CMDLINE_MAX_SIZE))
        .unwrap_err();

    assert!(
        matches!(err, BootError::CmdlineTooLong { limit, .. } if limit == CMDLINE_MAX_SIZE - 1),
        "{err}"
    );
}

#[test]
fn test_load_mutated_headers_error_without_panic() {
    let guest = Guest::new();
    let mut mb1_elf = small_elf(false, false);
    add_multiboot1_header(&mut mb1_elf, 3);
    let images = [
        bzimage(&BzImageSpec::default()),
        small_elf(true, true),
        small_elf(false, true),
        mb1_elf,
        multiboot1_kludge(3, 0x100),
        multiboot2_flat(&[mb2_tag(1, 0, &[1, 6]), mb2_tag(6, 0, &[])]),
        small_elf(true, false),
    ];
    let mut x = 0x9e37_79b9u32;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        x
    };
    let mut refused = 0;

    for image in &images {
        // Mutate bytes in the headers (the first 0x300 bytes), where the parsers look.
        let span = image.len().min(0x300) as u32;
        for _ in 0..150 {
            let mut m = image.clone();
            for _ in 0..1 + next() % 4 {
                let at = (next() % span) as usize;
                m[at] = next() as u8;
            }
            refused += usize::from(guest.boot_bytes(&m, "x").is_err());
        }
    }

    assert!(refused > 0, "some mutations must be refused");
}

#[test]
fn test_load_bzimage_cmdline_size_keeps_kernel_value() {
    let guest = Guest::new();
    let spec = BzImageSpec {
        cmdline_size: 255,
        ..Default::default()
    };

    guest.boot_bytes(&bzimage(&spec), "console=ttyS0").unwrap();

    // The kernel's limit, not the command line's length (13): memtest86+ parses
    // cmdline_size bytes and drops a last option that the NUL does not end.
    assert_eq!(
        guest.u32_at(crate::arch::x86_64::layout::ZERO_PAGE_START.0 + 0x238),
        255
    );
}
