//! Linux with ACPI on Strata (issue 11 item 6), opt-in like the other Linux tests: the
//! `--virtio` kernel of scripts/build-linux.sh (CONFIG_ACPI, ACPI_BUTTON, INPUT_EVBUG,
//! MAGIC_SYSRQ) takes Strata's RSDP from the boot parameters, finds its CPUs through the MADT
//! and the PCI host bridge through the DSDT with the ECAM window from the MCFG (reserved as
//! motherboard resources), enumerates the virtio-rng on it, binds the power button (`PNP0C0C`
//! behind the generic event device), and powers the VM off through S5: `sysrq: Power Off`
//! (Ctrl-O o on hvc0, the virtio console, written to its pty) ends in `ACPI: PM: Preparing to
//! enter system sleep state S5`, `reboot: Power down` and `strata run` exiting 0.
//! A second boot presses the power button through the API (`vm.power-button`): the kernel
//! reports KEY_POWER (evbug, `loglevel=8`; with no user space nothing else happens), then the
//! same SysRq powers off and the VM goes to `Shutdown`.
//!
//! No root device: `root=/dev/vdz rootwait` keeps the kernel waiting, interrupts on, once every
//! driver has probed (on the PVM test host Linux user space cannot run anyway).
//!
//! Run: `scripts/build-linux.sh --virtio`, then
//! `cargo test -p strata --release --test linux_acpi -- --ignored --test-threads=1`.
//! Each boot takes about half a minute to minutes on the PVM test host (ring 0 through KVM's
//! emulator); run it under `chrt -f 1` on a shared machine (docs/guests.md).

mod common;
mod net_common;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::api::ApiVmm;
use common::{kvm_available, scratch, strata_bin};
use net_common::{wait_for_line_within, KillOnDrop};

/// How long a boot may take before the test gives up (a hang guard, not an expectation).
const BOOT_GUARD: Duration = Duration::from_secs(1500);
/// vCPUs: the MADT lists one local APIC each.
const CPUS: &str = "1";
/// Printed once every driver has probed (the kernel then waits for a root that never comes).
const BOOTED: &str = "Waiting for root device /dev/vdz...";
/// Ctrl-O o on hvc0: the hvc driver's SysRq; `o` is power off.
const SYSRQ_POWER_OFF: &[u8] = b"\x0fo";

fn vmlinux() -> PathBuf {
    common::linux_vmlinux("virtio")
}

/// `strata run` arguments after `run` (and `--api-socket`): ACPI is on by default.
fn vm_args(kernel: &Path, serial: &Path) -> Vec<String> {
    // lapic=notscdeadline: see docs/guests.md, "A starved vCPU and the TSC-deadline tick".
    let cmdline = "console=ttyS0 console=hvc0 loglevel=8 reboot=k panic=-1 noxsave \
                   clearcpuid=288,295,308,151,141 rodata=off lapic=notscdeadline \
                   root=/dev/vdz rootwait";
    [
        "--kernel",
        &kernel.display().to_string(),
        "--cpus",
        &format!("boot={CPUS}"),
        "--memory",
        "size=256M",
        "--cmdline",
        cmdline,
        "--rng",
        "src=/dev/urandom,transport=pci",
        "--console",
        "pty",
        "--serial",
        &format!("file={}", serial.display()),
        "--timeout",
        "1500",
    ]
    .map(String::from)
    .to_vec()
}

/// The pty path from the VMM's `strata: virtio console on /dev/pts/N` line.
fn pty_from(line: &str) -> Option<String> {
    line.trim_end()
        .strip_prefix("strata: virtio console on ")
        .map(String::from)
}

/// Writes Ctrl-O o to the virtio console's pty.
fn sysrq_power_off(pty: &str) {
    let mut term = std::fs::OpenOptions::new()
        .write(true)
        .open(pty)
        .unwrap_or_else(|e| panic!("open {pty}: {e}"));
    term.write_all(SYSRQ_POWER_OFF).expect("write the pty");
}

/// Asserts that `log` holds each of `want` on its own line, in this order.
fn assert_in_order<S: AsRef<str>>(log: &str, want: &[S]) {
    let lines: Vec<&str> = log.lines().map(|l| l.trim_end_matches('\r')).collect();
    let mut at = 0;
    for w in want.iter().map(AsRef::as_ref) {
        let found = lines[at..].iter().position(|l| l.contains(w));
        at += found.unwrap_or_else(|| panic!("no {w:?} (in order) on COM1:\n{log}")) + 1;
    }
}

/// Waits for `child` to end by itself (killing it past the guard); its exit status.
fn wait_exit(child: &mut Child) -> Option<i32> {
    let start = Instant::now();
    loop {
        if let Some(st) = child.try_wait().expect("wait") {
            return st.code();
        }
        if start.elapsed() > BOOT_GUARD {
            let _ = child.kill();
            return child.wait().expect("wait").code();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// What the kernel prints from the tables up to the end of the boot, in order: the RSDP from
/// the boot parameters, the MCFG, the CPUs from the MADT, the ECAM window from the MCFG, used
/// once it is found reserved in the DSDT's motherboard resources (`_OSC` then offers
/// ExtendedConfig, which Linux claims only with a working ECAM window), the host bridge and
/// the virtio-rng on it, the power button.
fn acpi_boot() -> Vec<String> {
    let plural = if CPUS == "1" { "" } else { "s" };
    [
        "ACPI: RSDP 0x00000000000E0000 000024 (v02 STRATA)",
        "ACPI: MCFG 0x",
        "ACPI: Using ACPI (MADT) for SMP configuration information",
        &format!("smpboot: Allowing {CPUS} CPUs, 0 hotplug CPUs"),
        &format!("smp: Brought up 1 node, {CPUS} CPU{plural}"),
        "PCI: MMCONFIG for domain 0000 [bus 00-00] at [mem 0xe0000000-0xe00fffff] (base 0xe0000000)",
        "ACPI: PM: (supports S0 S5)",
        "PCI: MMCONFIG at [mem 0xe0000000-0xe00fffff] reserved in ACPI motherboard resources",
        "ACPI: PCI Root Bridge [PCI0] (domain 0000 [bus 00])",
        "acpi PNP0A08:00: _OSC: OS supports [ExtendedConfig",
        "pci 0000:00:01.0: [1af4:1005]",
        "ACPI: button: Power Button [PWRB]",
        BOOTED,
    ]
    .map(String::from)
    .to_vec()
}

/// What SysRq-o prints on its way to S5.
const POWER_OFF: &[&str] = &[
    "sysrq: Power Off",
    "ACPI: PM: Preparing to enter system sleep state S5",
    "reboot: Power down",
];

#[test]
#[ignore = "needs scripts/build-linux.sh --virtio; a minute or more per boot; run with --ignored"]
fn test_linux_acpi_madt_cpus_mcfg_pci_and_s5_poweroff_exits_0() {
    if !kvm_available() {
        return;
    }
    // Arrange
    let dir = scratch("linux-acpi-s5");
    let serial = dir.join("serial.txt");
    let mut child = Command::new(strata_bin())
        .arg("run")
        .args(vm_args(&vmlinux(), &serial))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn strata");
    let mut stderr = BufReader::new(child.stderr.take().expect("stderr"));
    let mut first = String::new();
    stderr.read_line(&mut first).expect("read stderr");
    let mut child = KillOnDrop(Some(child));
    let pty = pty_from(&first).unwrap_or_else(|| panic!("no pty announced: {first:?}"));
    wait_for_line_within(&serial, BOOTED, || child.alive(), BOOT_GUARD);

    // Act
    sysrq_power_off(&pty);
    let status = wait_exit(child.0.as_mut().expect("child"));

    // Assert
    let log = std::fs::read_to_string(&serial).expect("read COM1 log");
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).expect("read stderr");
    let mut want = acpi_boot();
    want.extend(POWER_OFF.iter().map(|l| l.to_string()));
    assert_in_order(&log, &want);
    assert_eq!(status, Some(0), "stderr: {rest}\n{log}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
#[ignore = "needs scripts/build-linux.sh --virtio; a minute or more per boot; run with --ignored"]
fn test_linux_acpi_power_button_from_api_reaches_the_kernel() {
    if !kvm_available() {
        return;
    }
    // Arrange
    let dir = scratch("linux-acpi-button");
    let serial = dir.join("serial.txt");
    let socket = dir.join("api.sock");
    let args = vm_args(&vmlinux(), &serial);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let vmm = ApiVmm::start_at(&dir, &socket, &args);
    let mut alive = || matches!(vmm.state().as_str(), "Created" | "Running");
    // The API serves before the VM is built; the pty is announced once it is.
    let announced = wait_for_line_within(
        &dir.join("stderr"),
        "strata: virtio console on ",
        &mut alive,
        BOOT_GUARD,
    );
    let pty = announced.lines().find_map(pty_from).expect("the pty line");
    wait_for_line_within(&serial, BOOTED, &mut alive, BOOT_GUARD);

    // Act
    let press = vmm.api("PUT", "vm.power-button", None);
    let pressed = "evbug: Event. Dev: input0, Type: 1, Code: 116, Value: 1";
    wait_for_line_within(&serial, pressed, &mut alive, BOOT_GUARD);
    sysrq_power_off(&pty);
    let start = Instant::now();
    while vmm.state() != "Shutdown" && start.elapsed() < BOOT_GUARD {
        std::thread::sleep(Duration::from_millis(20));
    }
    let state = vmm.state();
    let ended = vmm.shutdown();

    // Assert
    let log = std::fs::read_to_string(&serial).expect("read COM1 log");
    assert_eq!(press.status, 204, "{press:?}");
    assert_in_order(
        &log,
        &[
            &[
                "ACPI: button: Power Button [PWRB]",
                BOOTED,
                pressed,
                "evbug: Event. Dev: input0, Type: 1, Code: 116, Value: 0",
            ][..],
            POWER_OFF,
        ]
        .concat(),
    );
    assert_eq!(state, "Shutdown", "{log}");
    assert_eq!(ended.status, Some(0), "{ended:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
