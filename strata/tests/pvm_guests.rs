//! Guests no one here wrote (issue 4 item 4), booted by Strata as far as they go on the PVM
//! test host, each test asserting the furthest point reached. The reference runs under QEMU
//! and the commands are in docs/guests.md.
//!
//! The Debian packages (memtest86+, xen-hypervisor-4.17-amd64, gnumach-image-1.8-486) are
//! installed by .ci/run; a missing one fails the test naming it, only a missing /dev/kvm skips.
//! The Linux tests need scripts/build-linux.sh (about 11 minutes per variant) and are opt-in:
//! `scripts/build-linux.sh --int3-patch && scripts/build-linux.sh --no-int3-patch`, then
//! `cargo test -p strata --release --test pvm_guests -- --ignored`.
//!
//! No test asserts on how long anything took or on how far a guest got after some time: each
//! waits for the last line it checks (a guest-side event), then stops the guest with SIGTERM;
//! `--timeout` only guards against a hang. What the fallback emulator ran is asserted for the
//! kind of host the test runs on: PVM (guest ring 0 through KVM's instruction emulator) or a
//! host with VT-x/AMD-V, where the CPU runs every instruction and nothing is emulated.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::{host_is_pvm, kvm_available, require, scratch, strata_until, Run};

/// Gunzips a packaged kernel into a scratch directory.
fn gunzip(path: &str, package: &str, test: &str) -> String {
    let gz = require(path, package);
    let out = scratch(test).join("kernel");
    let bytes = Command::new("gzip")
        .args(["-dc", &gz])
        .output()
        .expect("run gzip");
    assert!(bytes.status.success(), "gzip -dc {gz} failed");
    std::fs::write(&out, &bytes.stdout).expect("write the gunzipped kernel");
    out.display().to_string()
}

/// The `strata: emulated: ...` line of a run's standard error.
fn emulated_line(run: &Run) -> &str {
    run.stderr
        .lines()
        .find(|l| l.starts_with("strata: emulated:"))
        .unwrap_or("")
}

#[test]
fn test_memtest86plus_prints_its_test_screen_on_serial() {
    if !kvm_available() {
        return;
    }
    let kernel = require("/boot/memtest86+x64.bin", "memtest86+");

    let rows = [
        "\x1b[6;1HMemory  :   32MB            | Pattern:",
        "\x1b[8;1HCPU: 1 Cores 1 Threads    SMP: Disabled   | Time:",
        "\x1b[25;1H\x1b[7m <ESC> Exit  <F1> Configuration  <Space> Scroll Lock            6.10.unknown.x64",
    ];

    let run = strata_until(
        &[
            "run",
            "--kernel",
            &kernel,
            "--cmdline",
            "console=ttyS0",
            "--memory",
            "size=32M",
            "--timeout",
            "600",
        ],
        &rows,
    );

    // memtest86+ never stops by itself: it tests memory until stopped, in ring 0.
    assert_eq!(run.status, Some(143), "{run:?}");
    // The screen is sent to the serial port as VT100 sequences: clear, cursor off, then the
    // rows (row 1 inverted), one escape-positioned row at a time.
    assert!(
        run.stdout
            .starts_with("\x1b[2J\x1b[?25l\x1b[1;1H\x1b[7m      Memtest86+ v6.10      \x1b[0m|"),
        "{run:?}"
    );
    for row in rows {
        assert!(run.stdout.contains(row), "no {row:?} in {run:?}");
    }
    // Under PVM, KVM's emulator lacks x87: Strata runs memtest's FPU code (fwait at least; how
    // many instructions depends on how far the tests got). A CPU with VT-x/AMD-V runs it all.
    let emulated = emulated_line(&run);
    if host_is_pvm() {
        assert!(
            emulated.starts_with("strata: emulated: total ") && emulated.contains("fwait "),
            "{}",
            run.stderr
        );
    } else {
        assert_eq!(emulated, "", "{}", run.stderr);
    }
    assert!(
        run.stderr
            .contains("vCPU 0: 64-bit long mode, paging, CPL 0, RIP 0x1"),
        "{}",
        run.stderr
    );
}

/// Xen's options: Strata passes the image name first on a multiboot command line, as GRUB
/// and QEMU do, and Xen strips that first word (unless the boot loader name starts with
/// "GRUB 2"), so `console=com1` reaches Xen.
const XEN_CMDLINE: &str = "console=com1 com1=115200,8n1 noreboot loglvl=all";

#[test]
fn test_xen_prints_banner_on_com1_then_panics_without_dom0() {
    if !kvm_available() {
        return;
    }
    let kernel = gunzip(
        "/boot/xen-4.17-amd64.gz",
        "xen-hypervisor-4.17-amd64",
        "xen",
    );

    let last = "(XEN) Manual reset required ('noreboot' specified)";

    let run = strata_until(
        &[
            "run",
            "--kernel",
            &kernel,
            "--cmdline",
            XEN_CMDLINE,
            "--memory",
            "size=512M",
            "--timeout",
            "600",
        ],
        &[last],
    );

    // `noreboot`: after the panic Xen spins in `hlt; jmp` with interrupts off.
    assert_eq!(run.status, Some(143), "{run:?}");
    let lines = run.lines();
    assert!(
        lines[0].starts_with("(XEN) Xen version 4.17.7 (Debian 4.17.7+13-g2445b30a44-0+deb12u1)"),
        "{run:?}"
    );
    for want in [
        "(XEN) Bootloader: strata",
        "(XEN) Command line: console=com1 com1=115200,8n1 noreboot loglvl=all",
        "(XEN)  No VGA detected",
        "(XEN) Panic on CPU 0:",
        "(XEN) dom0 kernel not specified. Check bootloader configuration",
        last,
    ] {
        assert!(lines.contains(&want), "no {want:?} in {run:?}");
    }
    // Under PVM: the CET shadow-stack read (a NOP without CET) and the x87 probes.
    let emulated = if host_is_pvm() {
        "strata: emulated: total 7 (fwait 6, rdsspq 1)"
    } else {
        ""
    };
    assert_eq!(emulated_line(&run), emulated, "{}", run.stderr);
    // Stopped once the last line is out: Xen is somewhere between that line and its `hlt; jmp`
    // loop, so only what holds at any such moment is asserted (in Xen's text, in ring 0).
    assert!(
        run.stderr.contains("CPL 0, RIP 0xffff82d0"),
        "{}",
        run.stderr
    );
}

#[test]
fn test_gnu_mach_boots_to_bootstrap_panic_without_modules() {
    if !kvm_available() {
        return;
    }
    let kernel = gunzip(
        "/boot/gnumach-1.8-486.gz",
        "gnumach-image-1.8-486",
        "gnumach",
    );

    let panic =
        "panic ../kern/bootstrap.c:181: bootstrap_create: No bootstrap code loaded with the kernel!";

    // Like Xen, GNU Mach skips the first word of its multiboot command line (the image name,
    // which Strata passes first).
    let run = strata_until(
        &[
            "run",
            "--kernel",
            &kernel,
            "--cmdline",
            "console=com0",
            "--memory",
            "size=64M",
            "--timeout",
            "600",
        ],
        &[panic],
    );

    // Lines end in "\r\n" and start with a stray "\r".
    let lines: Vec<&str> = run.lines().iter().map(|l| l.trim_matches('\r')).collect();
    assert_eq!(lines[0], "GNU Mach 1.8+git20221224-486", "{run:?}");
    for want in [
        "biosmem: 000000000000100000:000000000004000000, available",
        "vm_page: DMA32: pages: 12288 (48M), free: 11484 (44M)",
        "vm_page: DMA32: min:614 low:737 high:1228",
        "com 2 out of range",
        // No Hurd servers given as multiboot modules: the furthest point without them.
        panic,
    ] {
        assert!(lines.contains(&want), "no {want:?} in {run:?}");
    }
    assert!(
        lines.iter().any(|l| l.starts_with("RTC time is ")),
        "{run:?}"
    );
    // After the panic Mach spins until stopped.
    assert_eq!(run.status, Some(143), "{run:?}");
    // Under PVM, the FPU probe (1/0 compared with -(1/0)) is all the fallback emulator ran.
    let emulated = if host_is_pvm() {
        "strata: emulated: total 15 (fchs 1, fdivp 1, fld 4, fld1 1, fldz 1, fnstsw 1, \
         fstp 4, fucomip 1, fxch 1)"
    } else {
        ""
    };
    assert_eq!(emulated_line(&run), emulated, "{}", run.stderr);
}

/// A tinyconfig Linux 6.1 built by scripts/build-linux.sh.
fn linux(variant: &str) -> PathBuf {
    common::linux_vmlinux(variant)
}

/// `noxsave clearcpuid=...`: this host's CPUID advertises XSAVE (with AVX-512 state), SMAP,
/// FSGSBASE, POPCNT and CX16 whatever the VMM asks for, and KVM's instruction emulator lacks
/// xrstor, clac, popcnt and cmpxchg16b (docs/guests.md, "Host facts"). A host CPUID fact,
/// not something Strata could hide.
/// `rodata=off` skips mark_rodata_ro (over a minute of emulated ring 0 here); `reboot=k`
/// makes the restart an i8042 reset, which Strata turns into exit status 0.
const LINUX_CMDLINE: &str = "console=ttyS0 earlyprintk=ttyS0 reboot=k panic=-1 \
                             noxsave clearcpuid=288,295,308,151,141 rodata=off";

fn boot_linux(variant: &str) -> Run {
    let vmlinux = linux(variant);
    // Longer than common::HANG_GUARD allows: Strata's own --timeout bounds the run.
    let out = Command::new(common::strata_bin())
        .args(["run", "--kernel"])
        .arg(&vmlinux)
        .args(["--cmdline", LINUX_CMDLINE, "--memory", "size=256M"])
        .args(["--timeout", "1500"])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run strata");
    Run {
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        status: out.status.code(),
    }
}

fn assert_linux_reached_init(run: &Run, variant: &str) {
    let lines: Vec<&str> = run.lines().iter().map(|l| l.trim_matches('\r')).collect();
    let banner = format!("Linux version 6.1.192-strata-{variant} ");
    let order = [
        banner.as_str(),
        "x86/fpu: x87 FPU will use FXSAVE",
        "serial8250: ttyS0 at I/O 0x3f8 (irq = 4, base_baud = 115200) is a 16550A",
        "Run /init as init process",
    ];
    let mut at = 0;
    for want in order {
        let found = lines[at..].iter().position(|l| l.starts_with(want));
        at += found.unwrap_or_else(|| panic!("no {want:?} (in order) in {run:?}")) + 1;
    }
    // /init writes its line with `int $0x80`. On this PVM host that raises #UD in ring 3
    // (docs/guests.md), init dies and the kernel panics and resets (panic=-1, reboot=k); on
    // an ordinary KVM host /init prints its line and asks for the reset itself.
    let init_ran = lines.contains(&"STRATA-INIT: hello from embedded /init");
    let init_trapped = lines[at..]
        .iter()
        .any(|l| l.starts_with("traps: init[1] trap invalid opcode ip:401014 "));
    assert!(init_ran || init_trapped, "{run:?}");
    assert_eq!(run.status, Some(0), "{run:?}");
}

#[test]
#[ignore = "needs scripts/build-linux.sh (~11 min); run with --ignored"]
fn test_linux_tinyconfig_int3_patch_runs_init() {
    if !kvm_available() {
        return;
    }

    let run = boot_linux("int3-patch");

    assert_linux_reached_init(&run, "int3-patch");
    assert_eq!(emulated_line(&run), "", "{}", run.stderr);
}

#[test]
#[ignore = "needs scripts/build-linux.sh (~11 min); run with --ignored"]
fn test_linux_tinyconfig_unpatched_runs_init_with_int3_emulated() {
    if !kvm_available() {
        return;
    }

    let run = boot_linux("no-int3-patch");

    assert_linux_reached_init(&run, "no-int3-patch");
    // int3_selftest()'s breakpoint is the one instruction the fallback emulator ran.
    assert_eq!(emulated_line(&run), "strata: emulated: total 1 (int3 1)");
}
