//! virtio-blk under Strata with the guest kit's `virtio` guest, the scenario
//! guests/tests/virtio.rs runs under QEMU (the yardstick): three disks (an empty qcow2 the guest
//! writes, a read-only qcow2 overlay on a raw backing file with one cluster of its own, a
//! read-only vmdk), an rng and a console, over virtio-mmio, virtio-pci modern and virtio-pci
//! legacy. The host then checks the written image with `qemu-img compare` against the expected
//! pattern and with `qemu-img check`, and the CRCs the guest printed against the images'
//! contents.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::{crc32, kvm_available, scratch, strata_bin};

const TARGET_SECTORS: u64 = 8192;
const BACKING_SECTORS: u64 = 4096;
const VMDK_SECTORS: u64 = 2048;
const SEED: u32 = 0x5eed_0042;
const WRITE_SECTORS: u64 = 3000;
const ZERO_AT: u64 = 1000;
const ZERO_SECTORS: u64 = 16;
const CONSOLE_IN: &str = "host-says-hello";
const CONSOLE_OUT: &str = "guest-says-hi";

/// Features every disk offers: VERSION_1, indirect descriptors, event index, SEG_MAX,
/// BLK_SIZE, TOPOLOGY; the writable qcow2 adds FLUSH, DISCARD, WRITE_ZEROES; the read-only
/// disks add RO.
const OFFERED_RW: u64 = 0x1_3000_6644;
const OFFERED_RO: u64 = 0x1_3000_0464;
/// What the kit accepts of them (no ring features).
const ACCEPTED_RW: u64 = 0x1_0000_6644;
const ACCEPTED_RO: u64 = 0x1_0000_0464;

fn tool(program: &str, args: &[&str]) -> String {
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
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Deterministic pseudo-random bytes (xorshift32), as guests/tests/virtio.rs makes them.
fn noise(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 24) as u8
        })
        .collect()
}

struct Disks {
    target: PathBuf,
    overlay: PathBuf,
    vmdk: PathBuf,
    overlay_crc: u32,
    vmdk_crc: u32,
}

fn make_disks(dir: &Path) -> Disks {
    let target = dir.join("target.qcow2");
    tool(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", path_str(&target), "4M"],
    );
    let base = dir.join("base.raw");
    let mut content = noise((BACKING_SECTORS * 512) as usize, 11);
    std::fs::write(&base, &content).expect("write base.raw");
    let overlay = dir.join("overlay.qcow2");
    let (b, o) = (path_str(&base), path_str(&overlay));
    tool(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", "-b", b, "-F", "raw", o],
    );
    tool(
        "qemu-io",
        &["-f", "qcow2", "-c", "write -P 0xab 65536 65536", o],
    );
    content[65536..131_072].fill(0xab);
    let vmdk_src = dir.join("vmdk-src.raw");
    let vmdk_content = noise((VMDK_SECTORS * 512) as usize, 12);
    std::fs::write(&vmdk_src, &vmdk_content).expect("write vmdk-src.raw");
    let vmdk = dir.join("disk.vmdk");
    let (s, v) = (path_str(&vmdk_src), path_str(&vmdk));
    tool("qemu-img", &["convert", "-f", "raw", "-O", "vmdk", s, v]);
    Disks {
        target,
        overlay,
        vmdk,
        overlay_crc: crc32(&content),
        vmdk_crc: crc32(&vmdk_content),
    }
}

fn scenario_cmdline(transport: &str) -> String {
    [
        format!("transport={transport}"),
        "op=blk-info disk=0 op=blk-info disk=1".into(),
        "op=blk-id disk=0 op=blk-id disk=1 op=blk-id disk=2".into(),
        format!("op=blk-write disk=0 seed={SEED} sectors={WRITE_SECTORS}"),
        format!("op=blk-write-zeroes disk=0 sector={ZERO_AT} sectors={ZERO_SECTORS}"),
        "op=blk-discard disk=0 sector=6000 sectors=8".into(),
        format!("op=blk-verify disk=0 seed={SEED} sectors={ZERO_AT}"),
        "op=blk-flush disk=0".into(),
        "op=blk-read-crc disk=1 op=blk-read-crc disk=2".into(),
        "op=rng bytes=256".into(),
        format!("op=console-write text={CONSOLE_OUT} op=console-read"),
        "exit=6".into(),
    ]
    .join(" ")
}

/// The lines after the memory map; `found` are the five `virtio:` locations in order
/// (three disks, rng, console); `legacy` masks the feature words to 32 bits.
fn scenario_lines(found: &[String], disks: &Disks, legacy: bool) -> Vec<String> {
    let mask = if legacy { 0xffff_ffff } else { u64::MAX };
    let kinds = ["blk", "blk", "blk", "rng", "console"];
    let mut v: Vec<String> = found
        .iter()
        .zip(kinds)
        .map(|(at, kind)| format!("virtio: {at} {kind}"))
        .collect();
    v.extend([
        format!(
            "blk0: capacity={TARGET_SECTORS} blk_size=512 ro=0 flush=1 discard=1 write_zeroes=1"
        ),
        format!(
            "blk0: features offered=0x{:016x} accepted=0x{:016x}",
            OFFERED_RW & mask,
            ACCEPTED_RW & mask
        ),
        format!(
            "blk1: capacity={BACKING_SECTORS} blk_size=512 ro=1 flush=0 discard=0 write_zeroes=0"
        ),
        format!(
            "blk1: features offered=0x{:016x} accepted=0x{:016x}",
            OFFERED_RO & mask,
            ACCEPTED_RO & mask
        ),
        "blk0: id=target".into(),
        "blk1: id=overlay".into(),
        "blk2: id=vmdk".into(),
        format!("blk0: wrote {WRITE_SECTORS} sectors at 0 seed={SEED}"),
        format!("blk0: zeroed {ZERO_SECTORS} sectors at {ZERO_AT}"),
        "blk0: discarded 8 sectors at 6000".into(),
        format!("blk0: verified {ZERO_AT} sectors at 0 seed={SEED}"),
        "blk0: flushed".into(),
        format!(
            "blk1: read {BACKING_SECTORS} sectors at 0 crc32={:08x}",
            disks.overlay_crc
        ),
        format!(
            "blk2: read {VMDK_SECTORS} sectors at 0 crc32={:08x}",
            disks.vmdk_crc
        ),
        "rng: read 256 bytes, not all equal".into(),
        format!("console: wrote {} bytes", CONSOLE_OUT.len() + 1),
        format!("console: read {CONSOLE_IN}"),
        "done".into(),
    ]);
    v
}

fn expected_target() -> Vec<u8> {
    let mut raw = test_guests::pattern_bytes(SEED, 0, WRITE_SECTORS);
    raw[(ZERO_AT * 512) as usize..((ZERO_AT + ZERO_SECTORS) * 512) as usize].fill(0);
    raw.resize((TARGET_SECTORS * 512) as usize, 0);
    raw
}

/// Boots the scenario on `machine_transport` with the guest driving `guest_transport`, checks
/// every line, the console traffic and the written image.
fn check_transport(test: &str, guest_transport: &str, machine_transport: &str, found: &[String]) {
    // Arrange
    let dir = scratch(test);
    let disks = make_disks(&dir);
    let serial = dir.join("serial.txt");
    let input = dir.join("input.txt");
    std::fs::write(&input, format!("{CONSOLE_IN}\n")).expect("write input");
    let cmdline = scenario_cmdline(guest_transport);
    let disk = |p: &Path, format: &str, extra: &str| {
        format!("path={},format={format}{extra}", p.display())
    };

    // Act
    let out = Command::new(strata_bin())
        .args([
            "run",
            "--kernel",
            path_str(test_guests::virtio()),
            "--cmdline",
            &cmdline,
        ])
        .args(["--timeout", "240", "--transport", machine_transport])
        .args(["--disk", &disk(&disks.target, "qcow2", ",serial=target")])
        .args([
            "--disk",
            &disk(
                &disks.overlay,
                "qcow2",
                ",readonly=on,backing=on,serial=overlay",
            ),
        ])
        .args([
            "--disk",
            &disk(&disks.vmdk, "vmdk", ",readonly=on,serial=vmdk"),
        ])
        .args(["--rng", "src=/dev/urandom", "--console", "tty"])
        .arg("--serial")
        .arg(format!("file={}", serial.display()))
        .stdin(Stdio::from(
            std::fs::File::open(&input).expect("open input"),
        ))
        .output()
        .expect("run strata");

    // Assert: the guest's report, exactly.
    let stderr = String::from_utf8_lossy(&out.stderr);
    let text = std::fs::read_to_string(&serial).expect("read serial output");
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.len() > 6, "serial: {text}\nstderr: {stderr}");
    assert_eq!(lines[0], "strata-test-guest virtio");
    let shown = lines[2].strip_prefix("cmdline: ").unwrap_or_default();
    assert!(shown.starts_with(&cmdline), "{}", lines[2]);
    assert_eq!(
        &lines[6..],
        scenario_lines(found, &disks, guest_transport == "pci-legacy")
    );
    assert_eq!(out.status.code(), Some(6), "stderr: {stderr}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("{CONSOLE_OUT}\n")
    );
    // What it wrote, by qemu-img's reading.
    let expected_raw = dir.join("expected.raw");
    std::fs::write(&expected_raw, expected_target()).expect("write expected.raw");
    let (e, t) = (path_str(&expected_raw), path_str(&disks.target));
    tool(
        "qemu-img",
        &["compare", "-q", "-f", "raw", "-F", "qcow2", e, t],
    );
    tool("qemu-img", &["check", "-q", "-f", "qcow2", t]);
    let _ = std::fs::remove_dir_all(&dir);
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn test_virtio_blk_mmio_scenario_checked_by_qemu_img() {
    if !kvm_available() {
        return;
    }
    let found = strings(&[
        "mmio v2 0xd0000000",
        "mmio v2 0xd0001000",
        "mmio v2 0xd0002000",
        "mmio v2 0xd0003000",
        "mmio v2 0xd0004000",
    ]);
    check_transport("blk-mmio", "mmio", "mmio", &found);
}

#[test]
fn test_virtio_blk_pci_modern_scenario_checked_by_qemu_img() {
    if !kvm_available() {
        return;
    }
    let found = strings(&[
        "pci 00:01.0",
        "pci 00:02.0",
        "pci 00:03.0",
        "pci 00:04.0",
        "pci 00:05.0",
    ]);
    check_transport("blk-pci", "pci", "pci", &found);
}

#[test]
fn test_virtio_blk_pci_legacy_scenario_checked_by_qemu_img() {
    if !kvm_available() {
        return;
    }
    let found = strings(&[
        "pci-legacy 00:01.0 0xc000",
        "pci-legacy 00:02.0 0xc100",
        "pci-legacy 00:03.0 0xc200",
        "pci-legacy 00:04.0 0xc300",
        "pci-legacy 00:05.0 0xc400",
    ]);
    check_transport("blk-pci-legacy", "pci-legacy", "pci", &found);
}

#[test]
fn test_virtio_blk_missing_format_and_backing_refused_with_one_line() {
    let dir = scratch("blk-bad");
    let base = dir.join("base.raw");
    std::fs::write(&base, vec![0u8; 65536]).expect("write base");
    let overlay = dir.join("overlay.qcow2");
    let (b, o) = (path_str(&base), path_str(&overlay));
    tool(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", "-b", b, "-F", "raw", o],
    );
    let kernel = path_str(test_guests::pvh());

    let no_format = common::strata(&["run", "--kernel", kernel, "--disk", o]);
    let no_backing = common::strata(&[
        "run",
        "--kernel",
        kernel,
        "--disk",
        &format!("{o},format=qcow2"),
    ]);

    assert!(
        no_format
            .stderr
            .starts_with("strata: invalid value for --disk: missing field `format`"),
        "{}",
        no_format.stderr
    );
    assert_eq!(
        no_backing.stderr.lines().count(),
        1,
        "{}",
        no_backing.stderr
    );
    assert!(
        no_backing
            .stderr
            .starts_with(&format!("strata: unable to open disk {o}")),
        "{}",
        no_backing.stderr
    );
    assert_eq!((no_format.status, no_backing.status), (Some(1), Some(1)));
}

#[test]
fn test_virtio_blk_raw_direct_disk_holds_the_pattern_the_guest_wrote() {
    if !kvm_available() {
        return;
    }
    let dir = scratch("blk-raw-direct");
    let image = dir.join("disk.raw");
    std::fs::write(&image, vec![0u8; (TARGET_SECTORS * 512) as usize]).expect("write image");
    let cmdline = format!(
        "transport=pci op=blk-write seed={SEED} sector=8 sectors={WRITE_SECTORS} op=blk-flush \
         op=blk-verify seed={SEED} sector=8 sectors={WRITE_SECTORS} exit=7"
    );
    let disk = format!("path={},format=raw,direct=on", image.display());

    let run = common::strata(&[
        "run",
        "--kernel",
        path_str(test_guests::virtio()),
        "--cmdline",
        &cmdline,
        "--transport",
        "pci",
        "--disk",
        &disk,
    ]);

    let tail: Vec<&str> = run.lines().into_iter().rev().take(4).collect();
    assert_eq!(
        tail,
        [
            "done",
            &format!("blk0: verified {WRITE_SECTORS} sectors at 8 seed={SEED}"),
            "blk0: flushed",
            &format!("blk0: wrote {WRITE_SECTORS} sectors at 8 seed={SEED}"),
        ],
        "stderr: {}",
        run.stderr
    );
    assert_eq!(run.status, Some(7));
    let on_disk = std::fs::read(&image).expect("read image");
    let want = test_guests::pattern_bytes(SEED, 8, WRITE_SECTORS);
    assert_eq!(&on_disk[..8 * 512], &[0u8; 8 * 512][..]);
    assert!(
        on_disk[8 * 512..(8 + WRITE_SECTORS as usize) * 512] == want[..],
        "pattern differs"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
