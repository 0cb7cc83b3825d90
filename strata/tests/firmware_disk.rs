//! SeaBIOS boots a disk (issue 11 item 5).
//!
//! Always run: a boot sector (a disk built by the test, the second of two, marked `boot=on`)
//! that reads its disk's second sector through SeaBIOS's int 0x13 and prints it on COM1, over
//! virtio-blk on PCI and on virtio-mmio (SeaBIOS finds those through the DSDT).
//!
//! Opt-in (SeaBIOS and GRUB's i386-pc core, LZMA decompression and module loading included,
//! run through KVM's instruction emulator on a PVM host: ~45 s each, under QEMU too, see
//! docs/guests.md):
//! `cargo test -p strata --release --test firmware_disk -- --ignored`.
//! The GRUB tests build a disk: GRUB i386-pc's boot.img in the MBR, a core.img (biosdisk,
//! part_msdos, ext2) in the embedding area, an ext2 partition at 1 MiB with GRUB's modules,
//! a grub.cfg and the multiboot1 test guest; converts it to qcow2; and boots it with Debian's
//! SeaBIOS: as virtio-blk over PCI and over virtio-mmio (found through the DSDT), marked
//! `boot=on` behind a second, unbootable disk; and under QEMU `-M pc` as the yardstick. The
//! guest prints what GRUB handed it (its command line, SeaBIOS's memory map).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{kvm_available, require, run_until, scratch, strata, strata_until};

const SEABIOS: &str = "/usr/share/seabios/bios-256k.bin";
const GRUB: &str = "/usr/lib/grub/i386-pc";

fn run_tool(cmd: &mut Command) {
    let out = cmd.output().expect("run tool");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A boot sector (16-bit, assembled by hand): `cli; cld`, segments 0, stack below 0x7c00;
/// int 0x13 AH=2 reads one sector (CHS 0/0/2, the drive SeaBIOS passed in DL) to 0x7e00;
/// on success writes its NUL-terminated text to COM1 byte by byte and exits through the
/// debug-exit port with 0x21; on a carry prints `!` and exits with 0x22.
const BOOT_SECTOR: [u8; 61] = [
    0xfa, 0xfc, 0x31, 0xc0, 0x8e, 0xd8, 0x8e, 0xc0, 0x8e, 0xd0, 0xbc, 0x00, 0x7c, 0xbb, 0x00, 0x7e,
    0xb8, 0x01, 0x02, 0xb9, 0x02, 0x00, 0x30, 0xf6, 0xcd, 0x13, 0x72, 0x15, 0xbe, 0x00, 0x7e, 0xba,
    0xf8, 0x03, 0xac, 0x84, 0xc0, 0x74, 0x03, 0xee, 0xeb, 0xf8, 0xb0, 0x21, 0xe6, 0xf4, 0xf4, 0xeb,
    0xfd, 0xba, 0xf8, 0x03, 0xb0, 0x21, 0xee, 0xb0, 0x22, 0xe6, 0xf4, 0xeb, 0xf1,
];
/// What the boot sector's second sector says.
const SECTOR_1_TEXT: &str = "strata-boot-sector: sector 1 read through int 0x13\n";

/// A raw 1 MiB disk (SeaBIOS refuses a disk of less than one 16-head, 63-sector cylinder):
/// the boot sector with its 0x55aa signature, then the text sector.
fn boot_sector_disk(dir: &Path) -> PathBuf {
    let mut disk = vec![0u8; 1 << 20];
    disk[..BOOT_SECTOR.len()].copy_from_slice(&BOOT_SECTOR);
    disk[510..512].copy_from_slice(&[0x55, 0xaa]);
    disk[512..512 + SECTOR_1_TEXT.len()].copy_from_slice(SECTOR_1_TEXT.as_bytes());
    let p = dir.join("bootsector.raw");
    std::fs::write(&p, disk).expect("disk");
    p
}

/// `strata run` arguments: SeaBIOS, a blank 1 MiB raw disk made in `dir`, then `disk`
/// (`format`) marked `boot=on`, both on `transport`.
fn seabios_disk_args(dir: &Path, transport: &str, disk: &Path, format: &str) -> Vec<String> {
    let blank = dir.join("blank.raw");
    std::fs::write(&blank, vec![0u8; 1 << 20]).expect("blank");
    vec![
        "run".into(),
        "--firmware".into(),
        require(SEABIOS, "seabios"),
        "--disk".into(),
        format!("path={},format=raw,transport={transport}", blank.display()),
        "--disk".into(),
        format!(
            "path={},format={format},transport={transport},boot=on",
            disk.display()
        ),
    ]
}

fn boot_sector_under_strata(test: &str, transport: &str) {
    if !kvm_available() {
        return;
    }
    let dir = scratch(test);
    let disk = boot_sector_disk(&dir);
    let args = seabios_disk_args(&dir, transport, &disk, "raw");

    let run = strata(&args.iter().map(String::as_str).collect::<Vec<_>>());

    assert_eq!(run.status, Some(0x21), "{run:?}");
    assert!(run.stdout.contains("Booting from 0000:7c00"), "{run:?}");
    assert!(
        run.stdout.lines().any(|l| l == SECTOR_1_TEXT.trim_end()),
        "{run:?}"
    );
}

#[test]
fn test_firmware_disk_seabios_boots_boot_sector_from_virtio_pci() {
    boot_sector_under_strata("fw-bootsector-pci", "pci");
}

#[test]
fn test_firmware_disk_seabios_boots_boot_sector_from_virtio_mmio_via_dsdt() {
    boot_sector_under_strata("fw-bootsector-mmio", "mmio");
}

/// Builds the GRUB disk in `dir`; returns the qcow2 image.
fn grub_disk(dir: &Path) -> PathBuf {
    require(&format!("{GRUB}/boot.img"), "grub-pc-bin");
    let root = dir.join("root");
    let grub_dir = root.join("boot/grub/i386-pc");
    std::fs::create_dir_all(&grub_dir).expect("mkdir");
    for entry in std::fs::read_dir(GRUB).expect("grub modules") {
        let p = entry.expect("entry").path();
        if p.extension().is_some_and(|e| e == "mod" || e == "lst") {
            std::fs::copy(&p, grub_dir.join(p.file_name().expect("name"))).expect("copy");
        }
    }
    std::fs::copy(test_guests::multiboot1_elf(), root.join("boot/guest.elf")).expect("guest");
    std::fs::write(
        root.join("boot/grub/grub.cfg"),
        "set timeout=0\nmultiboot /boot/guest.elf from-grub-cfg\nboot\n",
    )
    .expect("grub.cfg");
    let (core, fs) = (dir.join("core.img"), dir.join("fs.img"));
    run_tool(
        Command::new("grub-mkimage")
            .args(["-O", "i386-pc", "-d", GRUB, "-o"])
            .arg(&core)
            .args([
                "-p",
                "(hd0,msdos1)/boot/grub",
                "biosdisk",
                "part_msdos",
                "ext2",
            ]),
    );
    run_tool(
        Command::new("mke2fs")
            .args(["-q", "-F", "-t", "ext2", "-d"])
            .arg(&root)
            .arg(&fs)
            .arg("16M"),
    );
    let mut mbr = std::fs::read(format!("{GRUB}/boot.img")).expect("boot.img");
    let core = std::fs::read(&core).expect("core");
    let fs = std::fs::read(&fs).expect("fs");
    // One bootable Linux partition from sector 2048; the embedding area (sectors 1-2047)
    // holds core.img, where boot.img's and diskboot.img's default sector numbers expect it.
    let mut entry = vec![0x80, 0, 0, 0, 0x83, 0, 0, 0];
    entry.extend_from_slice(&2048u32.to_le_bytes());
    entry.extend_from_slice(&((fs.len() / 512) as u32).to_le_bytes());
    mbr[0x1be..0x1ce].copy_from_slice(&entry);
    // Entries 2-4 empty: boot.img's own code runs on into them (its floppy probe), and GRUB's
    // part_msdos rejects the whole table over their "boot flags" ("no such partition").
    mbr[0x1ce..0x1fe].fill(0);
    mbr[510..512].copy_from_slice(&[0x55, 0xaa]);
    let mut disk = mbr;
    disk.extend_from_slice(&core);
    disk.resize(2048 * 512, 0);
    disk.extend_from_slice(&fs);
    let raw = dir.join("disk.raw");
    std::fs::write(&raw, disk).expect("disk");
    let img = dir.join("disk.qcow2");
    run_tool(
        Command::new("qemu-img")
            .args(["convert", "-f", "raw", "-O", "qcow2"])
            .arg(&raw)
            .arg(&img),
    );
    img
}

/// The lines the multiboot1 guest prints when GRUB boots it from the disk.
fn assert_guest_booted_by_grub(stdout: &str) {
    let lines: Vec<&str> = stdout.lines().collect();
    let start = lines
        .iter()
        // SeaBIOS's sercon text (GRUB's "error: Can't get controller info.", no VBE) may
        // precede the guest's first line on the same line.
        .position(|l| l.ends_with("strata-test-guest multiboot1-elf"))
        .unwrap_or_else(|| panic!("the guest never ran: {stdout}"));
    assert_eq!(lines[start + 1], "protocol: multiboot1", "{stdout}");
    // GRUB 2.06's multiboot1 loader passes the arguments without the file name.
    assert_eq!(lines[start + 2], "cmdline: from-grub-cfg", "{stdout}");
    assert!(
        lines[start..]
            .iter()
            .any(|l| l.starts_with("bootloader: GRUB 2.")),
        "{stdout}"
    );
    // SeaBIOS's map through GRUB: RAM from 1 MiB up to the page SeaBIOS keeps.
    assert!(
        lines[start..]
            .iter()
            .any(|l| l.starts_with("mem: 0x0000000000100000 ") && l.ends_with(" 1")),
        "{stdout}"
    );
}

fn boot_under_strata(test: &str, transport: &str) {
    if !kvm_available() {
        return;
    }
    let dir = scratch(test);
    let img = grub_disk(&dir);
    let args = seabios_disk_args(&dir, transport, &img, "qcow2");

    let run = strata_until(
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
        &["\ndone"],
    );

    // SeaBIOS's log line (its screen text interleaves with the log on COM1).
    assert!(run.stdout.contains("Booting from 0000:7c00"), "{run:?}");
    assert_guest_booted_by_grub(&run.stdout);
}

#[test]
#[ignore = "~45 s on a PVM host: SeaBIOS and GRUB run in KVM's instruction emulator"]
fn test_firmware_disk_seabios_boots_grub_from_virtio_pci_qcow2() {
    boot_under_strata("fw-disk-pci", "pci");
}

#[test]
#[ignore = "~45 s on a PVM host: SeaBIOS and GRUB run in KVM's instruction emulator"]
fn test_firmware_disk_seabios_boots_grub_from_virtio_mmio_qcow2() {
    boot_under_strata("fw-disk-mmio", "mmio");
}

#[test]
#[ignore = "~45 s on a PVM host: the yardstick, QEMU -M pc with the same SeaBIOS and disk"]
fn test_firmware_disk_qemu_pc_yardstick_boots_same_disk() {
    if !kvm_available() {
        return;
    }
    let dir = scratch("fw-disk-qemu");
    let img = grub_disk(&dir);
    let bios = require(SEABIOS, "seabios");

    let run = run_until(
        Command::new("qemu-system-x86_64")
            .args([
                "-M",
                "pc",
                "-enable-kvm",
                "-cpu",
                "qemu64",
                "-m",
                "128",
                "-display",
                "none",
            ])
            .args(["-nodefaults", "-serial", "stdio", "-bios", &bios, "-drive"])
            .arg(format!("file={},if=virtio,format=qcow2", img.display()))
            .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=4"]),
        &["\ndone"],
    );

    assert_guest_booted_by_grub(&run.stdout);
}
