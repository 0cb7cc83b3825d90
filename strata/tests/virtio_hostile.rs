//! A hostile driver against Strata's virtio-blk (issue 8, item 9): the kit's `hostile` guest
//! (guests/rust/hostile.rs) breaks one rule per case on a victim disk over virtio-mmio and
//! virtio-pci, prints what the device did, then resets the victim and checks that it, a second
//! disk and an rng still serve and that a canary page next to its buffers is untouched. The
//! test asserts every case's outcome, that Strata neither panicked nor failed, and that the
//! victim image (raw over mmio, qcow2 over pci) still holds exactly what it held before.

mod common;

use std::path::Path;
use std::process::Command;

use common::{kvm_available, scratch, strata_bin};

const VICTIM_SEED: u32 = 0x0bad_0001;
const WITNESS_SEED: u32 = 0x0bad_0002;
const SECTORS: u64 = 2048;

/// Every case and what the device must do. `used len=0 status=255`: the chain came back
/// with nothing written (it cannot be answered); `status=1`: VIRTIO_BLK_S_IOERR;
/// `needs-reset`: DEVICE_NEEDS_RESET.
const OUTCOMES: &[(&str, &str)] = &[
    ("addr-beyond-ram", "used len=1 status=1"),
    ("addr-mmio-hole", "used len=1 status=1"),
    ("addr-own-registers", "used len=1 status=1"),
    ("addr-wraps", "used len=0 status=255"),
    ("header-beyond-ram", "used len=1 status=1"),
    ("status-in-hole", "used len=0 status=255"),
    ("zero-len-data", "used len=1 status=0"),
    ("zero-len-header", "used len=1 status=1"),
    ("len-4g-read", "used len=1 status=1"),
    ("len-4g-write", "used len=1 status=1"),
    ("status-readable", "used len=0 status=255"),
    ("read-into-readable", "used len=1 status=1"),
    ("write-from-writable", "used len=1 status=1"),
    ("loop", "used len=0 status=255"),
    ("next-out-of-range", "used len=0 status=255"),
    ("head-out-of-range", "needs-reset"),
    ("avail-idx-ahead", "needs-reset"),
    ("chain-longer-than-queue", "used len=1 status=1"),
    ("indirect-in-indirect", "used len=0 status=255"),
    ("indirect-beyond-ram", "used len=0 status=255"),
    ("indirect-bad-len", "used len=0 status=255"),
    ("queue-size-0", "needs-reset"),
    ("queue-size-3", "needs-reset"),
    ("queue-size-1024", "needs-reset"),
    ("rings-in-hole", "needs-reset"),
    (
        "notify-before-driver-ok",
        "before driver-ok silent, after status=0 data=ok",
    ),
    ("driver-ok-without-features-ok", "needs-reset"),
    ("notify-unknown-queue", "used len=4097 status=0"),
    ("config-out-of-range", "capacity unchanged"),
    ("registers-out-of-range", "queue max 0x0 features 0x0"),
    ("bar-moves", "BAR"),
    ("reset-mid-request", "status 0 after the reset"),
];

fn tool(program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {program} (is it installed?): {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn expected(bar_moves: &str) -> Vec<String> {
    let mut v = Vec::new();
    for (name, outcome) in OUTCOMES {
        let outcome = if *name == "bar-moves" {
            bar_moves
        } else {
            outcome
        };
        v.push(format!("case {name}: {outcome}"));
        v.push(format!("case {name}: recovered"));
    }
    v.push("done".into());
    v
}

/// Boots the hostile guest over `transport` with the victim in `format`; checks every line,
/// the exit status, standard error and the victim image.
fn check(test: &str, transport: &str, format: &str, bar_moves: &str) {
    // Arrange
    let dir = scratch(test);
    let pattern = dir.join("victim.raw");
    std::fs::write(
        &pattern,
        test_guests::pattern_bytes(VICTIM_SEED, 0, SECTORS),
    )
    .expect("write victim.raw");
    let victim = dir.join(format!("victim.{format}"));
    if format != "raw" {
        let (p, v) = (path_str(&pattern), path_str(&victim));
        tool("qemu-img", &["convert", "-f", "raw", "-O", format, p, v]);
    }
    let witness = dir.join("witness.raw");
    std::fs::write(
        &witness,
        test_guests::pattern_bytes(WITNESS_SEED, 0, SECTORS),
    )
    .expect("write witness.raw");
    let serial = dir.join("serial.txt");
    let cmdline =
        format!("transport={transport} seed={VICTIM_SEED} witness-seed={WITNESS_SEED} exit=5");

    // Act
    let out = Command::new(strata_bin())
        .args(["run", "--kernel", path_str(test_guests::hostile())])
        .args(["--cmdline", &cmdline, "--transport", transport])
        .args(["--timeout", "240"])
        .arg("--disk")
        .arg(format!("path={},format={format}", victim.display()))
        .arg("--disk")
        .arg(format!("path={},format=raw,readonly=on", witness.display()))
        .args(["--rng", "src=/dev/urandom"])
        .arg("--serial")
        .arg(format!("file={}", serial.display()))
        .output()
        .expect("run strata");

    // Assert: every case as expected, Strata fine, the victim image untouched.
    let stderr = String::from_utf8_lossy(&out.stderr);
    let text = std::fs::read_to_string(&serial).expect("read serial output");
    let cases: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.starts_with("case "))
        .collect();
    assert_eq!(
        cases,
        expected(bar_moves),
        "serial: {text}\nstderr: {stderr}"
    );
    assert_eq!(out.status.code(), Some(5), "stderr: {stderr}");
    assert!(!stderr.contains("panick"), "stderr: {stderr}");
    let (p, v) = (path_str(&pattern), path_str(&victim));
    tool(
        "qemu-img",
        &["compare", "-q", "-f", "raw", "-F", format, p, v],
    );
    if format == "qcow2" {
        tool("qemu-img", &["check", "-q", "-f", "qcow2", v]);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn test_virtio_hostile_guest_over_mmio_every_case_contained() {
    if !kvm_available() {
        return;
    }
    check("hostile-mmio", "mmio", "raw", "no BARs");
}

#[test]
fn test_virtio_hostile_guest_over_pci_every_case_contained() {
    if !kvm_available() {
        return;
    }
    check("hostile-pci", "pci", "qcow2", "witness answered 3 of 3");
}
