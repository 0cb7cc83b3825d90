//! Runs the Rust `virtio` guest under QEMU on every transport the kit
//! drives (virtio-mmio v2 and v1 on `-M microvm`, virtio-pci modern and
//! legacy on `-M q35`): one boot per transport with three disks, an rng
//! and a console. The host then checks what the guest wrote with
//! `qemu-img compare` and `qemu-img check`, and the CRCs the guest printed
//! of disks qemu-img made against its own.
//!
//! Needs `qemu-system-x86_64`, `qemu-img` and `qemu-io`; skipped (with a
//! message) when /dev/kvm is absent.

mod common;

use common::*;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// Sectors of the disk the guest writes (4 MiB).
const TARGET_SECTORS: u64 = 8192;
/// Sectors of the qcow2 overlay's backing file (2 MiB).
const BACKING_SECTORS: u64 = 4096;
/// Sectors of the vmdk (1 MiB).
const VMDK_SECTORS: u64 = 2048;
/// The pattern the guest writes.
const SEED: u32 = 0x5eed_0042;
const WRITE_SECTORS: u64 = 3000;
const ZERO_AT: u64 = 1000;
const ZERO_SECTORS: u64 = 16;
/// What the host sends to the guest's console and the guest sends back.
const CONSOLE_IN: &str = "host-says-hello";
const CONSOLE_OUT: &str = "guest-says-hi";

/// One transport as QEMU spells it.
struct Transport {
    /// The guest's `transport=`.
    name: &'static str,
    /// Machine options.
    machine: &'static [&'static str],
    /// Device-name suffix: `device` (virtio-mmio) or `pci`.
    suffix: &'static str,
    /// Extra properties of every virtio device.
    props: &'static str,
    /// Glob for what the guest prints between `virtio: ` and the type.
    location: &'static str,
    /// Whether QEMU appends `virtio_mmio.device=` to the command line.
    cmdline_grows: bool,
}

const MMIO_V2: Transport = Transport {
    name: "mmio",
    machine: &[
        "-M",
        "microvm,acpi=off",
        "-global",
        "virtio-mmio.force-legacy=false",
    ],
    suffix: "device",
    props: "",
    location: "mmio v2 0x????????",
    cmdline_grows: true,
};

const MMIO_V1: Transport = Transport {
    name: "mmio",
    machine: &["-M", "microvm,acpi=off"],
    suffix: "device",
    props: "",
    location: "mmio v1 0x????????",
    cmdline_grows: true,
};

const PCI_MODERN: Transport = Transport {
    name: "pci",
    machine: &["-M", "q35"],
    suffix: "pci",
    props: ",disable-legacy=on",
    location: "pci 00:??.?",
    cmdline_grows: false,
};

const PCI_LEGACY: Transport = Transport {
    name: "pci-legacy",
    machine: &["-M", "q35"],
    suffix: "pci",
    props: ",disable-modern=on",
    location: "pci-legacy 00:??.? 0x*",
    cmdline_grows: false,
};

/// Runs a tool, asserts it succeeded, returns its stdout.
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

/// Deterministic pseudo-random bytes (xorshift32).
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

/// The disks: an empty qcow2 the guest writes, a qcow2 overlay on a raw
/// backing file (with one cluster of its own), a vmdk. Returns the paths
/// and the CRCs of the two read-only disks' contents.
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
    tool(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            path_str(&base),
            "-F",
            "raw",
            path_str(&overlay),
        ],
    );
    tool(
        "qemu-io",
        &[
            "-f",
            "qcow2",
            "-c",
            "write -P 0xab 65536 65536",
            path_str(&overlay),
        ],
    );
    content[65536..131_072].fill(0xab);
    let overlay_crc = crc32(&content);

    let vmdk_src = dir.join("vmdk-src.raw");
    let vmdk_content = noise((VMDK_SECTORS * 512) as usize, 12);
    std::fs::write(&vmdk_src, &vmdk_content).expect("write vmdk-src.raw");
    let vmdk = dir.join("disk.vmdk");
    tool(
        "qemu-img",
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            "vmdk",
            path_str(&vmdk_src),
            path_str(&vmdk),
        ],
    );
    Disks {
        target,
        overlay,
        vmdk,
        overlay_crc,
        vmdk_crc: crc32(&vmdk_content),
    }
}

/// Connects to QEMU's console socket (retrying until QEMU has made it or
/// `stop` is set), sends `input`, returns everything QEMU sent until it
/// closed the connection.
fn console_peer(sock: PathBuf, input: &'static str, stop: Arc<AtomicBool>) -> JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut stream = loop {
            match UnixStream::connect(&sock) {
                Ok(s) => break s,
                Err(_) if !stop.load(Ordering::SeqCst) => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(_) => return Vec::new(),
            }
        };
        stream
            .write_all(input.as_bytes())
            .expect("send console input");
        stream.write_all(b"\n").expect("send console input");
        let mut out = Vec::new();
        let _ = stream.read_to_end(&mut out);
        out
    })
}

/// The guest's command line for the whole scenario.
fn scenario_cmdline(t: &Transport) -> String {
    [
        format!("transport={}", t.name),
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

/// What the guest must print after the header.
fn scenario_lines(t: &Transport, disks: &Disks) -> Vec<String> {
    let loc = t.location;
    vec![
        format!("virtio: {loc} blk"),
        format!("virtio: {loc} blk"),
        format!("virtio: {loc} blk"),
        format!("virtio: {loc} rng"),
        format!("virtio: {loc} console"),
        format!(
            "blk0: capacity={TARGET_SECTORS} blk_size=512 ro=0 flush=1 discard=1 write_zeroes=1"
        ),
        "blk0: features offered=0x???????????????? accepted=0x????????????????".into(),
        format!("blk1: capacity={BACKING_SECTORS} blk_size=512 ro=1 flush=1 discard=*"),
        "blk1: features offered=0x???????????????? accepted=0x????????????????".into(),
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
    ]
}

/// The QEMU options of the scenario's devices.
fn scenario_devices(t: &Transport, disks: &Disks, sock: &Path) -> Vec<String> {
    let (s, p) = (t.suffix, t.props);
    let drive = |id: &str, path: &Path, format: &str, ro: &str| {
        [
            "-drive".to_string(),
            format!(
                "file={},if=none,id={id},format={format}{ro}",
                path.display()
            ),
            "-device".to_string(),
            format!("virtio-blk-{s},drive={id},serial={id}{p}"),
        ]
    };
    let mut args: Vec<String> = t.machine.iter().map(|a| a.to_string()).collect();
    args.extend(drive("target", &disks.target, "qcow2", ""));
    args.extend(drive("overlay", &disks.overlay, "qcow2", ",readonly=on"));
    args.extend(drive("vmdk", &disks.vmdk, "vmdk", ",readonly=on"));
    args.extend([
        "-device".into(),
        format!("virtio-rng-{s}{p}"),
        "-chardev".into(),
        format!("socket,id=con,path={},server=on,wait=on", sock.display()),
        "-device".into(),
        format!("virtio-serial-{s}{p}"),
        "-device".into(),
        "virtconsole,chardev=con".into(),
    ]);
    args
}

/// The expected contents of the written disk: the pattern with a zeroed
/// range, zeros after it.
fn expected_target() -> Vec<u8> {
    let mut raw = test_guests::pattern_bytes(SEED, 0, WRITE_SECTORS);
    raw[(ZERO_AT * 512) as usize..((ZERO_AT + ZERO_SECTORS) * 512) as usize].fill(0);
    raw.resize((TARGET_SECTORS * 512) as usize, 0);
    raw
}

/// Boots the virtio guest on transport `t` with the scenario's devices
/// and checks its output, the disk it wrote and the console traffic.
fn check_transport(t: &Transport, test: &str) {
    // Arrange
    let dir = scratch(test);
    let disks = make_disks(&dir);
    let sock = dir.join("console.sock");
    let _ = std::fs::remove_file(&sock);
    let cmdline = scenario_cmdline(t);
    let args = scenario_devices(t, &disks, &sock);
    let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
    let kernel = path_str(test_guests::virtio());
    args.extend(["-kernel", kernel, "-append", &cmdline]);
    let stop = Arc::new(AtomicBool::new(false));
    let peer = console_peer(sock, CONSOLE_IN, Arc::clone(&stop));

    // Act
    let run = qemu(&args);
    stop.store(true, Ordering::SeqCst);
    let console = peer.join().expect("console peer");

    // Assert: the guest's report.
    let shown = if t.cmdline_grows {
        format!("{cmdline}*")
    } else {
        cmdline.clone()
    };
    let mut expected = header("virtio", "pvh", &shown);
    expected.extend(scenario_lines(t, &disks));
    check_output(&run.out, &expected);
    assert_eq!(run.status, Some(6 << 1 | 1), "output:\n{}", run.out);
    // What the guest sent on its console.
    assert_eq!(
        String::from_utf8_lossy(&console),
        format!("{CONSOLE_OUT}\n")
    );
    // What it wrote, by qemu-img's reading.
    let expected_raw = dir.join("expected.raw");
    std::fs::write(&expected_raw, expected_target()).expect("write expected.raw");
    tool(
        "qemu-img",
        &[
            "compare",
            "-q",
            "-f",
            "raw",
            "-F",
            "qcow2",
            path_str(&expected_raw),
            path_str(&disks.target),
        ],
    );
    tool(
        "qemu-img",
        &["check", "-q", "-f", "qcow2", path_str(&disks.target)],
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn test_virtio_mmio_v2_blk_rng_console_checked_by_qemu_img() {
    if kvm_available() {
        check_transport(&MMIO_V2, "mmio-v2");
    }
}

#[test]
fn test_virtio_mmio_v1_legacy_blk_rng_console_checked_by_qemu_img() {
    if kvm_available() {
        check_transport(&MMIO_V1, "mmio-v1");
    }
}

#[test]
fn test_virtio_pci_modern_blk_rng_console_checked_by_qemu_img() {
    if kvm_available() {
        check_transport(&PCI_MODERN, "pci-modern");
    }
}

#[test]
fn test_virtio_pci_legacy_blk_rng_console_checked_by_qemu_img() {
    if kvm_available() {
        check_transport(&PCI_LEGACY, "pci-legacy");
    }
}

#[test]
fn test_virtio_no_transport_reports_error_and_exits_1() {
    if !kvm_available() {
        return;
    }
    // Arrange
    let kernel = path_str(test_guests::virtio());

    // Act
    let run = qemu(&[
        "-M",
        "microvm,acpi=off",
        "-kernel",
        kernel,
        "-append",
        "op=rng exit=4",
    ]);

    // Assert
    let mut expected = header("virtio", "pvh", "op=rng exit=4");
    expected.push("error: no transport= on the command line (mmio, pci or pci-legacy)".into());
    expected.push("done".into());
    check_output(&run.out, &expected);
    assert_eq!(run.status, Some(1 << 1 | 1));
}
