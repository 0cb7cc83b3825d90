//! Boots the multiboot guests through GRUB 2 (i386-pc, as a `-kernel`
//! image: lnxboot.img + core.img with a memdisk) -- the reference peer
//! boot loader, and the only way to exercise the multiboot2 path under
//! QEMU. GRUB is far too slow in ring 0 under PVM, so these runs use TCG
//! (the guests' code paths do not depend on the accelerator).
//!
//! Needs `qemu-system-x86_64`, `tar` and GRUB's i386-pc files
//! (Debian: grub-pc-bin, grub-common); the tests fail, naming the package, if GRUB's
//! i386-pc directory is absent.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;

const GRUB_PC: &str = "/usr/lib/grub/i386-pc";

/// GRUB's i386-pc modules are required (.ci/run installs grub-pc-bin): a missing package fails
/// the test rather than skipping it.
fn grub_available() -> bool {
    assert!(
        Path::new(GRUB_PC).join("lnxboot.img").is_file(),
        "{GRUB_PC}/lnxboot.img is absent: install the Debian package grub-pc-bin"
    );
    true
}

fn run(cmd: &mut Command) {
    let status = cmd.status().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    assert!(status.success(), "{cmd:?} failed: {status}");
}

/// Builds a GRUB image that loads `kernel` with `loader` ("multiboot" or
/// "multiboot2") and the cmdline `args`, then each `(file, args)` module
/// with `module_cmd`, and boots.
fn grub_image(
    dir: &Path,
    kernel: &Path,
    loader: &str,
    module_cmd: &str,
    args: &str,
    modules: &[(&Path, &str)],
) -> PathBuf {
    let md = dir.join("md");
    std::fs::create_dir_all(&md).expect("memdisk dir");
    std::fs::copy(kernel, md.join("kernel")).expect("copy kernel");
    let mut cfg = format!(
        "serial --unit=0 --speed=115200\nterminal_output serial\n{loader} (memdisk)/kernel {args}\n"
    );
    for (i, (file, margs)) in modules.iter().enumerate() {
        std::fs::copy(file, md.join(format!("m{i}"))).expect("copy module");
        cfg.push_str(&format!("{module_cmd} (memdisk)/m{i} {margs}\n"));
    }
    cfg.push_str("boot\n");
    std::fs::write(dir.join("early.cfg"), cfg).expect("write early.cfg");
    run(Command::new("tar")
        .arg("-C")
        .arg(&md)
        .arg("-cf")
        .arg(dir.join("memdisk.tar"))
        .arg("."));
    run(Command::new("grub-mkimage")
        .args(["-O", "i386-pc", "-p", "(memdisk)/", "-d", GRUB_PC])
        .arg("-o")
        .arg(dir.join("core.img"))
        .arg("-c")
        .arg(dir.join("early.cfg"))
        .arg("-m")
        .arg(dir.join("memdisk.tar"))
        .args(["memdisk", "tar", loader, "serial", "terminal"]));
    let mut image =
        std::fs::read(Path::new(GRUB_PC).join("lnxboot.img")).expect("read lnxboot.img");
    image.extend(std::fs::read(dir.join("core.img")).expect("read core.img"));
    let path = dir.join("grub.img");
    std::fs::write(&path, image).expect("write grub.img");
    path
}

/// Boots `kernel` through GRUB's `loader` with two modules and checks the
/// report (protocol `protocol`).
fn check_grub(name: &str, kernel: &Path, loader: &str, module_cmd: &str, protocol: &str) {
    // Arrange
    let dir = scratch(&format!("grub-{name}"));
    let (m1, crc1) = make_module(&dir, "a.bin", 3000, 6);
    let (m2, crc2) = make_module(&dir, "b.bin", 5000, 7);
    let args = "hello grub exit=6";
    let image = grub_image(
        &dir,
        kernel,
        loader,
        module_cmd,
        args,
        &[(&m1, "a-string x"), (&m2, "")],
    );

    // Act
    let run = qemu_accel(
        "tcg",
        &["-M", "pc", "-kernel", image.to_str().expect("utf-8 path")],
    );

    // Assert: GRUB passes neither the kernel's nor the modules' file names.
    let mut expected = header(name, protocol, args);
    expected.push(module_line(3000, crc1, "a-string x"));
    expected.push(module_line(5000, crc2, ""));
    expected.push("bootloader: GRUB *".to_string());
    expected.push("meminfo: lower=639 upper=*".to_string());
    expected.push("done".to_string());
    check_output(&run.out, &expected);
    assert_eq!(run.status, Some(6 << 1 | 1));
}

#[test]
fn test_grub_multiboot2_modules_reported() {
    if grub_available() {
        check_grub(
            "multiboot2",
            test_guests::multiboot2(),
            "multiboot2",
            "module2",
            "multiboot2",
        );
    }
}

#[test]
fn test_grub_multiboot1_elf_modules_reported() {
    if grub_available() {
        check_grub(
            "multiboot1-elf",
            test_guests::multiboot1_elf(),
            "multiboot",
            "module",
            "multiboot1",
        );
    }
}

#[test]
fn test_grub_multiboot1_aout_modules_reported() {
    if grub_available() {
        check_grub(
            "multiboot1-aout",
            test_guests::multiboot1_aout(),
            "multiboot",
            "module",
            "multiboot1",
        );
    }
}
