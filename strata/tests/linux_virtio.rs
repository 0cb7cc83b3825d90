//! Linux on Strata's virtio devices (issue 8 item 8), opt-in like the other Linux tests: the
//! `--virtio` kernel of scripts/build-linux.sh mounts its ext4 root from a qcow2 image on
//! virtio-blk (`root=/dev/vda`), logs to `console=hvc0` on virtio-console too, with a
//! virtio-rng attached, over virtio-mmio and over virtio-pci (MSI-X). The root image is made
//! by scripts/make-rootfs.sh and converted to qcow2 by `strata img convert`; afterwards
//! `qemu-img check` and `e2fsck -fn` find it clean.
//!
//! Run: `scripts/build-linux.sh --virtio`, then
//! `cargo test -p strata --release --test linux_virtio -- --ignored`.
//! Each boot takes about a minute on the PVM test host (ring 0 through KVM's emulator).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{host_is_pvm, kvm_available, scratch, strata, strata_until};

fn vmlinux() -> PathBuf {
    common::linux_vmlinux("virtio")
}

fn tool(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The root image, raw from scripts/make-rootfs.sh, converted to qcow2 by `strata img`.
fn root_qcow2(dir: &Path) -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/make-rootfs.sh");
    let out = tool(
        "bash",
        &[
            script.to_str().unwrap_or_default(),
            "--out",
            dir.to_str().unwrap_or_default(),
        ],
    );
    let raw = out
        .lines()
        .find_map(|l| l.strip_prefix("raw="))
        .unwrap_or_else(|| panic!("make-rootfs.sh printed no raw=: {out}"));
    let qcow2 = dir.join("root-by-strata.qcow2");
    let q = qcow2.to_str().unwrap_or_default();
    let run = strata(&["img", "convert", "-f", "raw", "-O", "qcow2", raw, q]);
    assert_eq!(run.status, Some(0), "strata img convert: {}", run.stderr);
    qcow2
}

fn boot_on(transport: &str, test: &str) {
    // Arrange
    let dir = scratch(test);
    let root = root_qcow2(&dir);
    let hvc = dir.join("hvc0.txt");
    let cmdline = "console=ttyS0 console=hvc0 reboot=k panic=-1 noxsave \
                   clearcpuid=288,295,308,151,141 rodata=off root=/dev/vda ro";
    let disk = format!("path={},format=qcow2", root.display());
    let console = format!("file={}", hvc.display());
    // /sbin/init prints its line on hosts where ring 3 can enter the kernel; on the PVM host
    // its `int $0x80` traps (docs/guests.md): either proves the kernel ran it from the root.
    let marker = if host_is_pvm() {
        "traps: init[1] trap invalid opcode ip:401034"
    } else {
        "STRATA-INIT: hello from ext4 root /sbin/init"
    };

    // Act
    let run = strata_until(
        &[
            "run",
            "--kernel",
            vmlinux().to_str().unwrap_or_default(),
            "--memory",
            "size=256M",
            "--cmdline",
            cmdline,
            "--transport",
            transport,
            "--disk",
            &disk,
            "--rng",
            "src=/dev/urandom",
            "--console",
            &console,
            "--timeout",
            "1500",
        ],
        &[marker],
    );

    // Assert: the kernel found the disk, mounted it, ran /sbin/init from it.
    let lines: Vec<&str> = run
        .lines()
        .iter()
        .map(|l| l.trim_end_matches('\r'))
        .collect();
    let order = [
        "virtio_blk virtio",
        "EXT4-fs (vda): mounted filesystem",
        "VFS: Mounted root (ext4 filesystem) readonly on device 254:0.",
        marker,
    ];
    let mut at = 0;
    for want in order {
        let found = lines[at..].iter().position(|l| l.contains(want));
        at += found.unwrap_or_else(|| panic!("no {want:?} (in order) on COM1: {run:?}")) + 1;
    }
    // The same log on hvc0, the virtio console.
    let console_log = std::fs::read_to_string(&hvc).expect("read hvc0 log");
    assert!(
        console_log.contains("VFS: Mounted root (ext4 filesystem)"),
        "hvc0: {console_log}"
    );
    // The image is clean.
    let q = root.to_str().unwrap_or_default();
    tool("qemu-img", &["check", "-q", "-f", "qcow2", q]);
    let back = dir.join("back.raw");
    let b = back.to_str().unwrap_or_default();
    let run = strata(&["img", "convert", "-f", "qcow2", "-O", "raw", q, b]);
    assert_eq!(run.status, Some(0), "{}", run.stderr);
    tool("e2fsck", &["-fn", b]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
#[ignore = "needs scripts/build-linux.sh --virtio (~11 min); run with --ignored"]
fn test_linux_mounts_ext4_root_from_qcow2_on_virtio_mmio() {
    if kvm_available() {
        boot_on("mmio", "linux-virtio-mmio");
    }
}

#[test]
#[ignore = "needs scripts/build-linux.sh --virtio (~11 min); run with --ignored"]
fn test_linux_mounts_ext4_root_from_qcow2_on_virtio_pci() {
    if kvm_available() {
        boot_on("pci", "linux-virtio-pci");
    }
}
