//! Boots each test guest under Strata and asserts on the exact lines it prints on COM1 (what
//! its boot protocol handed it) and on its exit status (the code it wrote to port 0xf4).

mod common;

use common::{crc32, kvm_available, pseudo_random, scratch, strata, Run};

/// The memory map every guest sees with the default 128 MiB.
const MEM_128M: [&str; 3] = [
    "mem: 0x0000000000000000 0x000000000009fc00 1",
    "mem: 0x000000000009fc00 0x0000000000000400 2",
    "mem: 0x0000000000100000 0x0000000007f00000 1",
];

/// Boots `kernel` with a 3000-byte module and `cmdline`; returns the run and the module's CRC.
fn boot_with_module(test: &str, kernel: &std::path::Path, cmdline: &str) -> (Run, u32) {
    let dir = scratch(test);
    let data = pseudo_random(3000, 42);
    let module = dir.join("mod.bin");
    std::fs::write(&module, &data).expect("write module");
    let run = strata(&[
        "run",
        "--kernel",
        &kernel.to_string_lossy(),
        "--initrd",
        &module.to_string_lossy(),
        "--cmdline",
        cmdline,
    ]);
    (run, crc32(&data))
}

fn expected(name: &str, protocol: &str, cmdline: &str, tail: &[String]) -> Vec<String> {
    let mut v = vec![
        format!("strata-test-guest {name}"),
        format!("protocol: {protocol}"),
        format!("cmdline: {cmdline}"),
    ];
    v.extend(MEM_128M.iter().map(|s| s.to_string()));
    v.extend_from_slice(tail);
    v.push("done".into());
    v
}

fn assert_output(run: &Run, want: &[String], status: i32) {
    assert_eq!(run.lines(), want, "stderr: {}", run.stderr);
    assert_eq!(run.status, Some(status), "stderr: {}", run.stderr);
    assert_eq!(run.stderr, "");
}

#[test]
fn test_boot_pvh_guest_sees_cmdline_memmap_module() {
    if !kvm_available() {
        return;
    }
    let (run, crc) = boot_with_module("pvh", test_guests::pvh(), "hello pvh exit=5");
    let module = format!("module: 0x07fff000 0x00000bb8 crc32={crc:08x} ");
    assert_output(
        &run,
        &expected("pvh", "pvh", "hello pvh exit=5", &[module]),
        5,
    );
}

#[test]
fn test_boot_pvh_guest_without_module_or_cmdline() {
    if !kvm_available() {
        return;
    }
    let run = strata(&["run", "--kernel", &test_guests::pvh().to_string_lossy()]);
    assert_output(&run, &expected("pvh", "pvh", "", &[]), 0);
}

fn multiboot_tail(crc: u32) -> Vec<String> {
    vec![
        format!("module: 0x00105000 0x00000bb8 crc32={crc:08x} mod.bin"),
        "bootloader: strata".into(),
        "meminfo: lower=639 upper=130048".into(),
    ]
}

#[test]
fn test_boot_multiboot1_elf_guest_sees_info() {
    if !kvm_available() {
        return;
    }
    let (run, crc) = boot_with_module("mb1elf", test_guests::multiboot1_elf(), "mb1 elf exit=11");
    // The kernel's file name comes first, as GRUB and QEMU pass it.
    let want = expected(
        "multiboot1-elf",
        "multiboot1",
        "multiboot1-elf.elf mb1 elf exit=11",
        &multiboot_tail(crc),
    );
    assert_output(&run, &want, 11);
}

#[test]
fn test_boot_multiboot1_aout_kludge_guest_sees_info() {
    if !kvm_available() {
        return;
    }
    let (run, crc) = boot_with_module("mb1aout", test_guests::multiboot1_aout(), "aout");
    let want = expected(
        "multiboot1-aout",
        "multiboot1",
        "multiboot1-aout.bin aout",
        &multiboot_tail(crc),
    );
    assert_output(&run, &want, 0);
}

#[test]
fn test_boot_multiboot2_guest_prefers_multiboot2() {
    if !kvm_available() {
        return;
    }
    let (run, crc) = boot_with_module("mb2", test_guests::multiboot2(), "two exit=2");
    let want = expected(
        "multiboot2",
        "multiboot2",
        "multiboot2.elf two exit=2",
        &multiboot_tail(crc),
    );
    assert_output(&run, &want, 2);
}

#[test]
fn test_boot_linux_vmlinux_guest_sees_zero_page() {
    if !kvm_available() {
        return;
    }
    let (run, crc) = boot_with_module(
        "vmlinux",
        test_guests::linux_vmlinux(),
        "console=ttyS0 exit=9",
    );
    let initrd = format!("initrd: 0x07fff000 0x00000bb8 crc32={crc:08x}");
    assert_output(
        &run,
        &expected("linux", "linux", "console=ttyS0 exit=9", &[initrd]),
        9,
    );
}

#[test]
fn test_boot_linux_bzimage_guest_sees_zero_page() {
    if !kvm_available() {
        return;
    }
    let (run, crc) = boot_with_module("bzimage", test_guests::linux_bzimage(), "root=/dev/vda");
    let initrd = format!("initrd: 0x07fff000 0x00000bb8 crc32={crc:08x}");
    assert_output(
        &run,
        &expected("linux", "linux", "root=/dev/vda", &[initrd]),
        0,
    );
}

#[test]
fn test_boot_pvh_guest_large_memory_two_slots() {
    if !kvm_available() {
        return;
    }
    let run = strata(&[
        "run",
        "--kernel",
        &test_guests::pvh().to_string_lossy(),
        "--memory",
        "size=5G",
    ]);
    let want: Vec<String> = [
        "strata-test-guest pvh",
        "protocol: pvh",
        "cmdline: ",
        "mem: 0x0000000000000000 0x000000000009fc00 1",
        "mem: 0x000000000009fc00 0x0000000000000400 2",
        "mem: 0x0000000000100000 0x00000000bff00000 1",
        "mem: 0x0000000100000000 0x0000000080000000 1",
        "done",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_output(&run, &want, 0);
}

#[test]
fn test_boot_serial_to_file_and_config_file() {
    if !kvm_available() {
        return;
    }
    let dir = scratch("serial-file");
    let out = dir.join("serial.log");
    let cfg = dir.join("vm.toml");
    std::fs::write(
        &cfg,
        format!(
            "[payload]\nkernel = {:?}\ncmdline = \"from toml\"\n[serial]\nmode = \"File\"\nfile = {:?}\n",
            test_guests::pvh(),
            out
        ),
    )
    .expect("write config");
    let run = strata(&["run", "--config", &cfg.to_string_lossy()]);
    assert_eq!(run.status, Some(0), "{run:?}");
    assert_eq!(run.stdout, "");
    let serial = std::fs::read_to_string(&out).expect("serial log");
    assert!(
        serial.starts_with("strata-test-guest pvh\nprotocol: pvh\ncmdline: from toml\n"),
        "{serial}"
    );
    assert!(serial.ends_with("done\n"), "{serial}");
}

#[test]
fn test_boot_ring3_guest_runs_work_loop_in_user_mode() {
    if !kvm_available() {
        return;
    }
    // The guest's work: CRC-32 of buf[i] = (i * 0x9e3779b1 mod 2^32) >> 24, 8 MiB (ring3.S).
    let run = strata(&["run", "--kernel", &test_guests::ring3().to_string_lossy()]);
    let tail = [
        "ring3: cpl=3".to_string(),
        format!("ring3: result={:08x}", test_guests::ring3_expected_result()),
    ];
    assert_output(&run, &expected("ring3", "pvh", "", &tail), 0);
}

fn smp_lines(cpus: u8) -> Vec<String> {
    let run = strata(&[
        "run",
        "--kernel",
        &test_guests::smp().to_string_lossy(),
        "--cpus",
        &format!("boot={cpus}"),
    ]);
    assert_eq!(run.status, Some(0), "{run:?}");
    assert_eq!(run.stderr, "");
    let mut lines: Vec<String> = run.lines().iter().map(|s| s.to_string()).collect();
    // APs report in whatever order they win the lock; sort their lines.
    let first_cpu = lines
        .iter()
        .position(|l| l.starts_with("cpu "))
        .expect("cpu lines");
    lines[first_cpu..first_cpu + usize::from(cpus)].sort();
    lines
}

#[test]
fn test_boot_smp_guest_every_vcpu_reports() {
    if !kvm_available() {
        return;
    }
    for cpus in [1u8, 2, 4] {
        let mut tail: Vec<String> = (0..cpus).map(|i| format!("cpu {i} up")).collect();
        tail.push(format!("cpus: {cpus}"));
        assert_eq!(
            smp_lines(cpus),
            expected("smp", "pvh", "", &tail),
            "with {cpus} vCPUs"
        );
    }
}

#[test]
fn test_boot_density_guest_prints_its_line_and_ends_by_reset() {
    if !kvm_available() {
        return;
    }
    // The one-line guest of bench/density.py: its ACPI shutdown write (port 0x600, Cloud
    // Hypervisor's) is an unclaimed port here; its i8042 reset ends `strata run` with status 0.
    let run = strata(&["run", "--kernel", &test_guests::density().to_string_lossy()]);

    assert_eq!(
        run.lines(),
        vec!["strata-density-guest up".to_string()],
        "stderr: {}",
        run.stderr
    );
    assert_eq!(run.status, Some(0), "stderr: {}", run.stderr);
}
