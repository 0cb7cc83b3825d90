//! `--firmware` (issue 11 items 4 and 8): Debian's SeaBIOS (`bios-256k.bin`) and qboot
//! (`qboot.rom`) start at the reset vector from the ROM Strata maps below 4 GiB, find fw_cfg
//! (memory map, ACPI tables, the kernel's legacy items) and boot the project's test guests
//! from it: qboot itself, SeaBIOS through Strata's linuxboot option ROM. The guests print the
//! memory map the firmware handed them. Bad firmware files end with one line naming the option.

mod common;

use common::{crc32, kvm_available, pseudo_random, require, scratch, strata, strata_until};

const SEABIOS: &str = "/usr/share/seabios/bios-256k.bin";
const QBOOT: &str = "/usr/share/qemu/qboot.rom";

fn seabios() -> String {
    require(SEABIOS, "seabios")
}

fn qboot() -> String {
    require(QBOOT, "qemu-system-data")
}

fn path(p: &std::path::Path) -> String {
    p.to_string_lossy().into_owned()
}

/// The memory map lines a guest printed.
fn mem_lines(stdout: &str) -> Vec<&str> {
    stdout.lines().filter(|l| l.starts_with("mem: ")).collect()
}

#[test]
fn test_firmware_qboot_boots_pvh_guest_through_fw_cfg() {
    if !kvm_available() {
        return;
    }
    let fw = qboot();
    let guest = path(test_guests::pvh());

    let run = strata(&[
        "run",
        "--firmware",
        &fw,
        "--kernel",
        &guest,
        "--cmdline",
        "via qboot",
    ]);

    assert_eq!(run.status, Some(0), "{run:?}");
    let lines = run.lines();
    assert_eq!(
        &lines[..3],
        [
            "strata-test-guest pvh",
            "protocol: pvh",
            "cmdline: via qboot"
        ]
    );
    // qboot's own map (it adds its 0xd0000 tables and the 0xf0000 BIOS area) built from
    // fw_cfg's etc/e820: all RAM from 1 MiB, and the KVM pages QEMU's map reserves too.
    let mem = mem_lines(&run.stdout);
    assert!(
        mem.contains(&"mem: 0x00000000000f0000 0x0000000000010000 2"),
        "{mem:?}"
    );
    assert!(
        mem.contains(&"mem: 0x0000000000100000 0x0000000007f00000 1"),
        "{mem:?}"
    );
    assert!(
        mem.contains(&"mem: 0x00000000feffc000 0x0000000000004000 2"),
        "{mem:?}"
    );
    assert_eq!(lines.last(), Some(&"done"), "{run:?}");
}

#[test]
fn test_firmware_qboot_boots_bzimage_with_initrd_from_legacy_items() {
    if !kvm_available() {
        return;
    }
    let dir = scratch("qboot-bz");
    let data = pseudo_random(5000, 7);
    let initrd = dir.join("initrd");
    std::fs::write(&initrd, &data).expect("write initrd");
    let (fw, guest) = (qboot(), path(test_guests::linux_bzimage()));

    let run = strata(&[
        "run",
        "--firmware",
        &fw,
        "--kernel",
        &guest,
        "--initrd",
        &path(&initrd),
        "--cmdline",
        "split by fw_cfg",
    ]);

    assert_eq!(run.status, Some(0), "{run:?}");
    let lines = run.lines();
    assert_eq!(
        &lines[..3],
        [
            "strata-test-guest linux",
            "protocol: linux",
            "cmdline: split by fw_cfg"
        ]
    );
    let initrd_line = lines
        .iter()
        .find(|l| l.starts_with("initrd: "))
        .expect("initrd line");
    assert!(
        initrd_line.ends_with(&format!("0x00001388 crc32={:08x}", crc32(&data))),
        "{initrd_line}"
    );
}

#[test]
fn test_firmware_seabios_banner_tables_and_e820_map() {
    if !kvm_available() {
        return;
    }
    let fw = seabios();

    // No disk and no kernel: SeaBIOS finds fw_cfg, its memory map and the ACPI tables, prints
    // its map and tries to boot (the boot fails; the test stops it there).
    let run = strata_until(
        &["run", "--firmware", &fw, "--memory", "256M"],
        &["enter handle_19"],
    );

    let out = &run.stdout;
    assert!(out.contains("SeaBIOS (version 1."), "{out}");
    assert!(out.contains("QEMU fw_cfg DMA interface supported"), "{out}");
    assert!(
        out.contains("qemu/e820: addr 0x0000000000000000 len 0x0000000010000000 [RAM]"),
        "{out}"
    );
    assert!(
        out.contains("(via xsdt)"),
        "ACPI tables from the table loader: {out}"
    );
    assert!(out.contains("sercon: using ioport 0x3f8"), "{out}");
    // SMBIOS from fw_cfg (etc/smbios/*), not SeaBIOS's own legacy set.
    assert!(out.contains("Copying SMBIOS 3.0 from "), "{out}");
    // SeaBIOS's map: low RAM, the EBDA and BIOS areas, RAM from 1 MiB (its last page for
    // itself), the KVM pages and the ROM reserved.
    assert!(
        out.contains("  0: 0000000000000000 - 000000000009fc00 = 1 RAM"),
        "{out}"
    );
    assert!(
        out.contains(": 0000000000100000 - 000000000ffff000 = 1 RAM"),
        "{out}"
    );
    assert!(
        out.contains(": 00000000fffc0000 - 0000000100000000 = 2 RESERVED"),
        "{out}"
    );
}

#[test]
fn test_firmware_seabios_boots_bzimage_through_linuxboot_rom() {
    if !kvm_available() {
        return;
    }
    let (fw, guest) = (seabios(), path(test_guests::linux_bzimage()));

    let run = strata(&[
        "run",
        "--firmware",
        &fw,
        "--kernel",
        &guest,
        "--cmdline",
        "via seabios",
    ]);

    assert_eq!(run.status, Some(0), "{run:?}");
    // SeaBIOS ran the ROM from fw_cfg and booted its entry first, as bootorder says.
    assert!(
        run.stdout
            .contains("Searching bootorder for: /rom@genroms/strata-linuxboot.bin"),
        "{run:?}"
    );
    assert!(run.stdout.contains("\nBooting from c000:"), "{run:?}");
    let lines = run.lines();
    let start = lines
        .iter()
        .position(|l| *l == "strata-test-guest linux")
        .expect("guest ran");
    assert_eq!(
        &lines[start + 1..start + 3],
        ["protocol: linux", "cmdline: via seabios"]
    );
    // The map SeaBIOS's int 0x15/E820 gave the guest's setup stub.
    let mem = mem_lines(&run.stdout);
    assert!(
        mem.contains(&"mem: 0x0000000000100000 0x0000000007eff000 1"),
        "{mem:?}"
    );
    assert!(
        mem.contains(&"mem: 0x00000000fffc0000 0x0000000000040000 2"),
        "{mem:?}"
    );
    assert_eq!(lines.last(), Some(&"done"), "{run:?}");
}

/// Asserts the run failed with status 1 and one line naming `--firmware` and `needle`.
fn assert_firmware_error(args: &[&str], needle: &str) {
    let run = strata(args);
    assert_eq!(run.status, Some(1), "{args:?}: {run:?}");
    let lines: Vec<&str> = run.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{args:?}: {:?}", run.stderr);
    assert!(
        lines[0].contains("--firmware") && lines[0].contains(needle),
        "{:?}",
        lines[0]
    );
}

#[test]
fn test_firmware_bad_files_refused_with_one_line_naming_option() {
    let dir = scratch("bad-firmware");
    let write = |name: &str, data: &[u8]| {
        let p = dir.join(name);
        std::fs::write(&p, data).expect("write");
        path(&p)
    };
    let empty = write("empty.bin", b"");
    let large = write("large.bin", &vec![0u8; (16 << 20) + 4096]);
    let odd = write("odd.bin", &[0u8; 6000]);
    let no_note = write("vmlinux.elf", &common::elf64(0x10_0000, &[0xf4]));

    assert_firmware_error(&["run", "--firmware", &empty], "is empty");
    assert_firmware_error(&["run", "--firmware", &large], "more than 16 MiB");
    assert_firmware_error(&["run", "--firmware", &odd], "multiple of 4 KiB");
    assert_firmware_error(&["run", "--firmware", &no_note], "PVH entry note");
    assert_firmware_error(
        &["run", "--firmware", "/nonexistent/bios.bin"],
        "No such file",
    );
}

#[test]
fn test_firmware_multiboot_kernel_refused_naming_options() {
    let fw = qboot();
    let guest = path(test_guests::multiboot1_elf());

    let run = strata(&["run", "--firmware", &fw, "--kernel", &guest]);

    assert_eq!(run.status, Some(1), "{run:?}");
    assert!(
        run.stderr.contains("--kernel") && run.stderr.contains("--firmware"),
        "{run:?}"
    );
}
