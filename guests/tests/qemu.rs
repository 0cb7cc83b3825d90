//! Boots every test guest under QEMU with KVM and checks the exact lines
//! it prints on COM1 and its exit status. These runs are the yardstick
//! Strata's own boot tests are compared against.
//!
//! Needs `qemu-system-x86_64`; skipped (with a message) when /dev/kvm is
//! absent.

mod common;

use common::*;
use std::path::Path;

#[test]
fn test_glob_wildcards_match() {
    assert!(glob(b"a?c*", b"abcdef"));
    assert!(glob(b"*", b""));
    assert!(!glob(b"a?c", b"ac"));
    assert!(!glob(b"abc", b"abd"));
}

#[test]
fn test_pvh_module_and_exit_code_reported() {
    if !kvm_available() {
        return;
    }
    // Arrange
    let dir = scratch("pvh");
    let (module, crc) = make_module(&dir, "mod.bin", 3000, 1);
    let cmdline = "console=ttyS0 exit=7 foo";
    let kernel = test_guests::pvh().to_str().expect("utf-8 path");

    // Act
    let run = qemu(&[
        "-M",
        "microvm",
        "-kernel",
        kernel,
        "-append",
        cmdline,
        "-initrd",
        module.to_str().expect("path"),
    ]);

    // Assert
    let mut expected = header("pvh", "pvh", cmdline);
    expected.push(module_line(3000, crc, ""));
    expected.push("done".to_string());
    check_output(&run.out, &expected);
    assert_eq!(run.status, Some(7 << 1 | 1));
}

#[test]
fn test_pvh_no_cmdline_exits_zero() {
    if !kvm_available() {
        return;
    }
    // Arrange
    let kernel = test_guests::pvh().to_str().expect("utf-8 path");

    // Act
    let run = qemu(&["-M", "microvm", "-kernel", kernel]);

    // Assert
    let mut expected = header("pvh", "pvh", "");
    expected.push("done".to_string());
    check_output(&run.out, &expected);
    assert_eq!(run.status, Some(1));
}

/// Boots a multiboot image under `-M pc` (QEMU boots multiboot1 only) with
/// two modules and checks the report.
fn check_multiboot(name: &str, kernel: &Path) {
    // Arrange
    let dir = scratch(name);
    let (m1, crc1) = make_module(&dir, "a.bin", 3000, 2);
    let (m2, crc2) = make_module(&dir, "b.bin", 5000, 3);
    let kernel = kernel.to_str().expect("utf-8 path");
    let initrd = format!("{} arg1 arg2,{}", m1.display(), m2.display());
    let cmdline = "hello multiboot exit=3";

    // Act
    let run = qemu(&[
        "-M", "pc", "-kernel", kernel, "-append", cmdline, "-initrd", &initrd,
    ]);

    // Assert: QEMU passes the kernel path as the first cmdline word.
    let mut expected = header(name, "multiboot1", &format!("{kernel} {cmdline}"));
    expected.push(module_line(
        3000,
        crc1,
        &format!("{} arg1 arg2", m1.display()),
    ));
    expected.push(module_line(5000, crc2, &m2.display().to_string()));
    expected.push("bootloader: qemu".to_string());
    expected.push("meminfo: lower=639 upper=*".to_string());
    expected.push("done".to_string());
    check_output(&run.out, &expected);
    assert_eq!(run.status, Some(3 << 1 | 1));
}

#[test]
fn test_multiboot1_elf_modules_reported() {
    if kvm_available() {
        check_multiboot("multiboot1-elf", test_guests::multiboot1_elf());
    }
}

#[test]
fn test_multiboot1_aout_modules_reported() {
    if kvm_available() {
        check_multiboot("multiboot1-aout", test_guests::multiboot1_aout());
    }
}

#[test]
fn test_multiboot2_via_multiboot1_modules_reported() {
    if kvm_available() {
        check_multiboot("multiboot2", test_guests::multiboot2());
    }
}

#[test]
fn test_linux_bzimage_initrd_reported() {
    if !kvm_available() {
        return;
    }
    // Arrange
    let dir = scratch("linux");
    let (initrd, crc) = make_module(&dir, "initrd.img", 4096 + 123, 4);
    let kernel = test_guests::linux_bzimage().to_str().expect("utf-8 path");
    let cmdline = "root=/dev/null exit=5 quiet";

    // Act
    let run = qemu(&[
        "-M",
        "pc",
        "-kernel",
        kernel,
        "-append",
        cmdline,
        "-initrd",
        initrd.to_str().expect("path"),
    ]);

    // Assert
    let mut expected = header("linux", "linux", cmdline);
    expected.push(format!(
        "initrd: 0x???????? 0x{:08x} crc32={crc:08x}",
        4096 + 123
    ));
    expected.push("done".to_string());
    check_output(&run.out, &expected);
    assert_eq!(run.status, Some(5 << 1 | 1));
}

#[test]
fn test_ring3_cpl_and_result_reported() {
    if !kvm_available() {
        return;
    }
    // Arrange
    let dir = scratch("ring3");
    let (module, crc) = make_module(&dir, "mod.bin", 2048, 5);
    let kernel = test_guests::ring3().to_str().expect("utf-8 path");
    let cmdline = "exit=9";

    // Act
    let run = qemu(&[
        "-M",
        "microvm",
        "-kernel",
        kernel,
        "-append",
        cmdline,
        "-initrd",
        module.to_str().expect("path"),
    ]);

    // Assert
    let mut expected = header("ring3", "pvh", cmdline);
    expected.push(module_line(2048, crc, ""));
    expected.push("ring3: cpl=3".to_string());
    expected.push(format!(
        "ring3: result={:08x}",
        test_guests::ring3_expected_result()
    ));
    expected.push("done".to_string());
    check_output(&run.out, &expected);
    assert_eq!(run.status, Some(9 << 1 | 1));
}

#[test]
fn test_smp_two_cpus_report() {
    if !kvm_available() {
        return;
    }
    // Arrange: SeaBIOS's MP table lists one CPU per socket.
    let kernel = test_guests::smp().to_str().expect("utf-8 path");
    let cmdline = "exit=4";

    // Act
    let run = qemu(&[
        "-M",
        "pc",
        "-smp",
        "2,sockets=2,cores=1,threads=1",
        "-kernel",
        kernel,
        "-append",
        cmdline,
    ]);

    // Assert
    let mut expected = header("smp", "pvh", cmdline);
    expected.extend(["cpu 0 up", "cpu 1 up", "cpus: 2", "done"].map(String::from));
    check_output(&run.out, &expected);
    assert_eq!(run.status, Some(4 << 1 | 1));
}
