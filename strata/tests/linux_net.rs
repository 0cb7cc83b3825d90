//! Linux's own network stack on Strata's virtio-net (issue 10 item 4), opt-in like the other
//! Linux tests: the `--virtio` kernel of scripts/build-linux.sh configures eth0 with a static
//! address from `ip=` (kernel IP autoconfiguration, CONFIG_IP_PNP), then waits for a root
//! device that never comes (`rootwait`), with its network stack running; from the host side
//! of a private network namespace `ping -c 20` gets every reply, over virtio-mmio and
//! virtio-pci. QEMU (`-netdev tap,vhost=off`) runs the same kernel as the yardstick.
//!
//! Run: `scripts/build-linux.sh --virtio`, then
//! `cargo test -p strata --release --test linux_net -- --ignored`.
//! Each boot takes minutes on the PVM test host (ring 0 through KVM's emulator).

mod common;
mod net_common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};

use common::{kvm_available, require, scratch, strata_bin};
use net_common::{netns_exists, wait_for_line_within, KillOnDrop, NetNs};

const HOST_IP: &str = "10.78.0.1";
const GUEST_IP: &str = "10.78.0.2";
const MAC: &str = "52:54:00:aa:bb:01";
const PINGS: u32 = 20;
/// How long a boot may take before the test gives up (a hang guard: this PVM host runs guest
/// ring 0 through KVM's emulator, and shared with other builds a boot takes many minutes).
const BOOT_GUARD: std::time::Duration = std::time::Duration::from_secs(1500);

fn vmlinux() -> PathBuf {
    common::linux_vmlinux("virtio")
}

/// The kernel command line: serial console, a static eth0 address, no root (it waits).
/// `lapic=notscdeadline`: a periodic local APIC timer, so that a vCPU starved by a loaded PVM
/// host cannot trap this tickless-less kernel in its tick catch-up loop (docs/guests.md, "A
/// starved vCPU and the TSC-deadline tick").
fn cmdline() -> String {
    format!(
        "console=ttyS0 reboot=k panic=-1 noxsave clearcpuid=288,295,308,151,141 rodata=off \
         lapic=notscdeadline root=/dev/vdz rootwait \
         ip={GUEST_IP}::{HOST_IP}:255.255.255.0::eth0:off"
    )
}

/// Waits for the kernel's IP-Config report of eth0's static address on COM1, pings from the
/// namespace, stops the VMM; asserts every reply came and the namespace is gone afterwards.
fn ping_linux(ns: NetNs, serial: &Path, child: Child) {
    let mut child = KillOnDrop(Some(child));
    // The line after "IP-Config: Complete:" (the kernel prints the two separately).
    let configured = format!("device=eth0, hwaddr={MAC}, ipaddr={GUEST_IP}, mask=255.255.255.0");
    let text = wait_for_line_within(serial, &configured, || child.alive(), BOOT_GUARD);

    let out = ping_output(&ns);
    drop(child);
    let name = ns.name.clone();
    drop(ns);

    assert!(text.contains("IP-Config: Complete:"), "{text}");
    let replied = replied_seqs(&out);
    let want: BTreeSet<u32> = (1..=PINGS).collect();
    assert!(
        want.is_subset(&replied),
        "echo requests 1..={PINGS} not all answered:\n{out}"
    );
    assert!(!netns_exists(&name));
}

/// `ping -c 20` from the namespace with a deadline. With `-w`, ping keeps sending until it
/// has 20 replies (or the deadline passes): a kernel answering in ring 0 under emulation
/// takes longer than the interval, so more than 20 may be sent, the last ones still in flight
/// when ping stops. What counts is that each of the first 20 requests got its reply.
fn ping_output(ns: &NetNs) -> String {
    let count = PINGS.to_string();
    let out = ns.run(
        "ping",
        &["-n", "-c", &count, "-i", "0.2", "-w", "300", GUEST_IP],
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The `icmp_seq` of every echo reply in ping's output.
fn replied_seqs(out: &str) -> BTreeSet<u32> {
    out.lines()
        .filter(|l| l.contains(" bytes from "))
        .filter_map(|l| l.split("icmp_seq=").nth(1))
        .filter_map(|s| s.split_whitespace().next())
        .filter_map(|n| n.parse().ok())
        .collect()
}

fn linux_on_strata(transport: &str, tag: &str) {
    let ns = NetNs::new(tag);
    let dir = scratch(tag);
    let serial = dir.join("serial.txt");
    let kernel = vmlinux();
    let child = ns
        .command(strata_bin(), &["run", "--kernel"])
        .arg(&kernel)
        .args(["--memory", "size=256M", "--cmdline", &cmdline()])
        .args(["--transport", transport, "--timeout", "1500"])
        .arg("--serial")
        .arg(format!("file={}", serial.display()))
        .args([
            "--net",
            &format!("tap=stap0,mac={MAC},ip={HOST_IP},mask=255.255.255.0"),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn strata");
    ping_linux(ns, &serial, child);
}

#[test]
#[ignore = "needs scripts/build-linux.sh --virtio; minutes per boot; run with --ignored"]
fn test_linux_ip_autoconfig_answers_every_ping_on_virtio_net_mmio() {
    if kvm_available() {
        linux_on_strata("mmio", "linux-net-mmio");
    }
}

#[test]
#[ignore = "needs scripts/build-linux.sh --virtio; minutes per boot; run with --ignored"]
fn test_linux_ip_autoconfig_answers_every_ping_on_virtio_net_pci() {
    if kvm_available() {
        linux_on_strata("pci", "linux-net-pci");
    }
}

#[test]
#[ignore = "needs scripts/build-linux.sh --virtio; minutes per boot; run with --ignored"]
fn test_linux_ip_autoconfig_answers_every_ping_under_qemu_yardstick() {
    if !kvm_available() {
        return;
    }
    require("/usr/bin/qemu-system-x86_64", "qemu-system-x86");
    let ns = NetNs::new("linux-net-qemu");
    ns.run_ok("ip", &["tuntap", "add", "qtap0", "mode", "tap"]);
    ns.run_ok(
        "ip",
        &["addr", "add", &format!("{HOST_IP}/24"), "dev", "qtap0"],
    );
    ns.run_ok("ip", &["link", "set", "qtap0", "up"]);
    let dir = scratch("linux-net-qemu");
    let serial = dir.join("serial.txt");
    let child = ns
        .command(
            "qemu-system-x86_64",
            &[
                "-M",
                "microvm,acpi=off",
                "-accel",
                "kvm",
                "-cpu",
                "qemu64",
                "-m",
                "256",
            ],
        )
        .args([
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
        ])
        .args(["-global", "virtio-mmio.force-legacy=false"])
        .arg("-serial")
        .arg(format!("file:{}", serial.display()))
        .args([
            "-netdev",
            "tap,id=n0,ifname=qtap0,script=no,downscript=no,vhost=off",
        ])
        .args(["-device", &format!("virtio-net-device,netdev=n0,mac={MAC}")])
        .arg("-kernel")
        .arg(vmlinux())
        .args(["-append", &cmdline()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn qemu");
    ping_linux(ns, &serial, child);
}
