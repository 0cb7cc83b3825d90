//! ACPI under KVM: the `acpi` test guest finds the tables the way an OS does (RSDP from
//! `hvm_start_info`, XSDT, FADT, MADT, MCFG, DSDT), reaches configuration space through ECAM,
//! powers the VM off through S5 and resets it through the FADT's reset register, and sees the
//! power button the API presses; `--acpi off` leaves the MP-table machine without ACPI.

mod common;

use common::api::ApiVmm;
use common::{kvm_available, scratch, strata, HANG_GUARD};

fn acpi_guest() -> String {
    test_guests::acpi().to_string_lossy().into_owned()
}

/// The lines up to `ged: event port` for 2 vCPUs with a PCI rng and a virtio-mmio console:
/// XSDT 36 + 3 x 8 bytes, MADT 44 + 2 LAPICs x 8 + IOAPIC 12 + override 10 + NMI 6.
fn tables_lines() -> Vec<&'static str> {
    vec![
        "acpi: rsdp 0x000e0000 start-info revision 2",
        "acpi: XSDT 0x000e0420 length 60",
        "acpi: FACP 0x000e0260 length 276",
        "acpi: APIC 0x000e0380 length 88",
        "acpi: MCFG 0x000e03e0 length 60",
        "acpi: DSDT 0x000e0030 length 548",
        "madt: lapics 2 ioapic 0xfec00000 overrides 1 nmis 1",
        "fadt: flags 0x00100410 reset 1:0xcf9=0x06 sleep 1:0x600",
        "mcfg: ecam 0xe0000000 buses 0-0",
        "ged: event port 0x601",
    ]
}

/// Runs the acpi guest with `cmdline` on the machine of [`tables_lines`] plus `extra`.
fn run_acpi(test: &str, cmdline: &str, extra: &[&str]) -> common::Run {
    let dir = scratch(test);
    let console = dir.join("console.out");
    let console_arg = format!("file={}", console.display());
    let guest = acpi_guest();
    let mut args = vec![
        "run",
        "--kernel",
        &guest,
        "--cmdline",
        cmdline,
        "--cpus",
        "2",
        "--rng",
        "src=/dev/urandom,transport=pci",
        "--console",
        &console_arg,
    ];
    args.extend_from_slice(extra);
    strata(&args)
}

/// The guest's lines after the header (strata-test-guest, protocol, cmdline, memory map).
fn body(run: &common::Run) -> Vec<String> {
    run.lines()
        .into_iter()
        .skip_while(|l| !l.starts_with("acpi:") && !l.starts_with("error:"))
        .map(str::to_string)
        .collect()
}

#[test]
fn test_acpi_guest_finds_tables_and_reads_ecam() {
    if !kvm_available() {
        return;
    }

    let run = run_acpi("acpi-tables", "op=ecam exit=7", &[]);

    let mut want: Vec<String> = tables_lines().iter().map(|s| s.to_string()).collect();
    // The host bridge's ID (8086:0d57) through ECAM and through the ports alike.
    want.push("ecam: 00:00.0 0x0d578086 ports 0x0d578086".into());
    want.push("done".into());
    assert_eq!(body(&run), want, "{run:?}");
    assert_eq!(run.status, Some(7), "{run:?}");
}

#[test]
fn test_acpi_s5_powers_the_vm_off_with_status_0() {
    if !kvm_available() {
        return;
    }

    let run = run_acpi("acpi-s5", "op=s5 exit=9", &[]);

    let lines = body(&run);
    assert_eq!(
        lines.last().map(String::as_str),
        Some("s5: sleep type 5"),
        "{run:?}"
    );
    // Powered off: status 0 (not the exit=9 the guest would have written), nothing after.
    assert_eq!(run.status, Some(0), "{run:?}");
    assert_eq!(run.stderr, "");
}

#[test]
fn test_acpi_reset_register_ends_the_vm_with_status_0() {
    if !kvm_available() {
        return;
    }

    let run = run_acpi("acpi-reset", "op=reset exit=9", &[]);

    let lines = body(&run);
    assert_eq!(
        lines.last().map(String::as_str),
        Some("ged: event port 0x601"),
        "{run:?}"
    );
    // Without an API socket a reset ends the VM: status 0, nothing after the write.
    assert_eq!(run.status, Some(0), "{run:?}");
    assert_eq!(run.stderr, "");
}

#[test]
fn test_acpi_off_guest_finds_no_rsdp() {
    if !kvm_available() {
        return;
    }

    let run = run_acpi("acpi-off", "exit=5", &["--acpi", "off"]);

    assert_eq!(
        body(&run),
        [
            "error: no RSDP (start info rsdp_paddr is 0 and none in 0xe0000-0xfffff)",
            "done"
        ],
        "{run:?}"
    );
    assert_eq!(run.status, Some(1), "{run:?}");
}

/// Waits until the serial output file holds `marker`.
fn wait_serial(path: &std::path::Path, marker: &str) {
    let start = std::time::Instant::now();
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.contains(marker) {
            return;
        }
        assert!(start.elapsed() < HANG_GUARD, "no {marker:?} in {text}");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

#[test]
fn test_acpi_power_button_from_remote_reaches_guest_which_powers_off() {
    if !kvm_available() {
        return;
    }
    let dir = scratch("acpi-button");
    let serial = dir.join("serial.log");
    let serial_arg = format!("file={}", serial.display());
    let guest = acpi_guest();
    let vmm = ApiVmm::start_at(
        &dir,
        &dir.join("api.sock"),
        &[
            "--kernel",
            &guest,
            "--cmdline",
            "op=wait-power-button op=s5",
            "--serial",
            &serial_arg,
        ],
    );
    wait_serial(&serial, "ged: waiting\n");
    let sock = vmm.socket.to_string_lossy().into_owned();

    let press = strata(&["remote", "--api-socket", &sock, "power-button"]);
    vmm.wait_state("Shutdown");
    let again = vmm.api("PUT", "vm.power-button", None);

    assert_eq!(
        (press.status, press.stdout.as_str()),
        (Some(0), ""),
        "{press:?}"
    );
    let text = std::fs::read_to_string(&serial).expect("serial log");
    assert!(
        text.ends_with("ged: waiting\nged: power button pressed\ns5: sleep type 5\n"),
        "{text}"
    );
    assert_eq!(again.status, 405, "{again:?}");
    assert_eq!(vmm.shutdown().status, Some(0));
}

#[test]
fn test_acpi_off_power_button_is_a_400_naming_acpi() {
    if !kvm_available() {
        return;
    }
    let guest = test_guests::counter().to_string_lossy().into_owned();
    let vmm = ApiVmm::start(
        "acpi-off-button",
        &["--kernel", &guest, "--acpi", "off", "--serial", "null"],
    );
    vmm.wait_state("Running");

    let off = vmm.api("PUT", "vm.power-button", None);

    assert_eq!(off.status, 400, "{off:?}");
    assert!(off.body.contains("acpi off"), "{off:?}");
    assert_eq!(vmm.state(), "Running");
    assert_eq!(vmm.shutdown().status, Some(0));
}

#[test]
fn test_acpi_fw_cfg_dma_reads_directory_and_tables_refuses_writes_serves_unaligned() {
    if !kvm_available() {
        return;
    }
    let guest = acpi_guest();

    let run = strata(&["run", "--kernel", &guest, "--cmdline", "op=fw-cfg"]);

    let lines = body(&run);
    let fw: Vec<&str> = lines
        .iter()
        .map(String::as_str)
        .filter(|l| l.starts_with("fw_cfg:"))
        .collect();
    // 1 vCPU, no PCI: tables DSDT 280 + FADT 276 + MADT 80 + XSDT 52 at 16-byte steps;
    // the loader: 2 allocations, DSDT and X_DSDT, 2 XSDT entries, the RSDP's pointer, 4 + 2
    // checksums = 13 commands of 128 bytes.
    assert_eq!(
        fw,
        [
            "fw_cfg: signature QEMU id 0x3",
            "fw_cfg: file bootorder 0",
            "fw_cfg: file etc/acpi/rsdp 36",
            "fw_cfg: file etc/acpi/tables 708",
            "fw_cfg: file etc/boot-fail-wait 4",
            "fw_cfg: file etc/e820 60",
            "fw_cfg: file etc/table-loader 1664",
            "fw_cfg: etc/acpi/rsdp RSD PTR  control 0x0",
            "fw_cfg: write control 0x1",
            // A descriptor at any alignment is served, as QEMU does (SeaBIOS puts its
            // descriptors on a 4-byte-aligned stack; docs/decisions/0012).
            "fw_cfg: unaligned control 0x0",
        ],
        "{run:?}"
    );
    assert_eq!(lines.last().map(String::as_str), Some("done"));
    assert_eq!(run.status, Some(0), "{run:?}");
}
