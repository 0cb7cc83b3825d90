//! How a VM ends when the guest does not end it itself: the timeout, a triple fault, an
//! instruction KVM cannot emulate. Each prints the vCPU's mode, RIP and instruction bytes.

mod common;

use common::{elf64, host_is_pvm, kvm_available, scratch, strata, strata_until};

/// Writes a Linux-protocol ELF64 guest whose code at 1 MiB is `code`.
fn guest(test: &str, code: &[u8]) -> String {
    let p = scratch(test).join("guest.elf");
    std::fs::write(&p, elf64(0x10_0000, code)).expect("write guest");
    p.to_string_lossy().into_owned()
}

#[test]
fn test_run_timeout_prints_registers_and_exits_124() {
    if !kvm_available() {
        return;
    }
    let k = guest("timeout", &[0xeb, 0xfe]); // jmp $
    let run = strata(&["run", "--kernel", &k, "--timeout", "1"]);
    assert_eq!(run.status, Some(124), "{run:?}");
    assert!(
        run.stderr.contains(
            "vCPU 0: 64-bit long mode, paging, CPL 0, RIP 0x100000, instruction bytes [eb fe"
        ),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("rip=0000000000100000"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("rsi=0000000000007000"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .ends_with("strata: timeout: stopped the guest after 1 s\n"),
        "{}",
        run.stderr
    );
}

#[test]
fn test_run_timeout_reports_every_vcpu() {
    if !kvm_available() {
        return;
    }
    let k = guest("timeout-smp", &[0xeb, 0xfe]);
    let run = strata(&["run", "--kernel", &k, "--timeout", "1", "--cpus", "boot=2"]);
    assert_eq!(run.status, Some(124), "{run:?}");
    assert!(
        run.stderr.contains("vCPU 0: 64-bit long mode"),
        "{}",
        run.stderr
    );
    // The second vCPU never got INIT-SIPI-SIPI: it is still at its reset state, in real mode.
    assert!(run.stderr.contains("vCPU 1: real mode"), "{}", run.stderr);
}

#[test]
fn test_run_triple_fault_reports_rip_mode_bytes() {
    if !kvm_available() {
        return;
    }
    let k = guest("triple", &[0x0f, 0x0b]); // ud2 with no IDT
    let run = strata(&["run", "--kernel", &k]);
    assert_eq!(run.status, Some(1), "{run:?}");
    assert_eq!(
        run.stderr,
        "strata: guest stopped: triple fault (KVM_EXIT_SHUTDOWN): vCPU 0: 64-bit long mode, paging, CPL 0, RIP 0x100000, instruction bytes [0f 0b 00 00 00 00 00 00 00 00 00 00 00 00 00]\n"
    );
}

#[test]
fn test_run_emulation_failure_without_fallback_reports_insn() {
    if !kvm_available() {
        return;
    }
    // popcnt rax, rbx: KVM's emulator lacks it on PVM hosts; on hosts with VT-x/AMD-V the CPU
    // runs it and the guest spins into the timeout instead.
    let k = guest("popcnt", &[0xf3, 0x48, 0x0f, 0xb8, 0xc3, 0xeb, 0xfe]);
    let run = strata(&[
        "run",
        "--kernel",
        &k,
        "--emulation-fallback",
        "off",
        "--timeout",
        "5",
    ]);
    if host_is_pvm() {
        assert_eq!(run.status, Some(1), "{run:?}");
        assert!(
            run.stderr.contains("KVM could not emulate an instruction (KVM_EXIT_INTERNAL_ERROR, suberror 1): vCPU 0: 64-bit long mode, paging, CPL 0, RIP 0x100000, instruction bytes [f3 48 0f b8 c3"),
            "{}",
            run.stderr
        );
    } else {
        // The jmp $ after popcnt holds the vCPU wherever the timeout samples it.
        assert_eq!(run.status, Some(124), "{run:?}");
        assert!(run.stderr.contains("RIP 0x100005"), "{}", run.stderr);
    }
}

#[test]
fn test_run_emulation_fallback_runs_popcnt_and_counts_it() {
    if !kvm_available() {
        return;
    }
    // mov rbx, 0xff00ff; popcnt rax, rbx; mov dx, 0xf4; out dx, al; jmp $
    let k = guest(
        "popcnt-fallback",
        &[
            0x48, 0xc7, 0xc3, 0xff, 0x00, 0xff, 0x00, 0xf3, 0x48, 0x0f, 0xb8, 0xc3, 0x66, 0xba,
            0xf4, 0x00, 0xee, 0xeb, 0xfe,
        ],
    );
    let run = strata(&["run", "--kernel", &k, "--timeout", "20"]);
    // popcount(0xff00ff) = 16, written to the debug-exit port.
    assert_eq!(run.status, Some(16), "{run:?}");
    // On a PVM host KVM hands popcnt to Strata, which counts it; with VT-x/AMD-V the CPU runs it.
    let emulated = if host_is_pvm() {
        "strata: emulated: total 1 (popcnt 1)\n"
    } else {
        ""
    };
    assert_eq!(run.stderr, emulated);
}

#[test]
fn test_run_i8042_reset_exits_zero() {
    if !kvm_available() {
        return;
    }
    // mov al, 0xfe; out 0x64, al; jmp $
    let k = guest("i8042-reset", &[0xb0, 0xfe, 0xe6, 0x64, 0xeb, 0xfe]);
    let run = strata(&["run", "--kernel", &k, "--timeout", "20"]);
    assert_eq!(run.status, Some(0), "{run:?}");
    assert_eq!(run.stderr, "");
}

#[test]
fn test_run_port_cf9_reset_exits_zero() {
    if !kvm_available() {
        return;
    }
    // mov dx, 0xcf9; mov al, 6; out dx, al; jmp $
    let k = guest(
        "cf9-reset",
        &[0x66, 0xba, 0xf9, 0x0c, 0xb0, 0x06, 0xee, 0xeb, 0xfe],
    );
    let run = strata(&["run", "--kernel", &k, "--timeout", "20"]);
    assert_eq!(run.status, Some(0), "{run:?}");
    assert_eq!(run.stderr, "");
}

#[test]
fn test_run_sigterm_stops_guest_reports_registers_exits_143() {
    if !kvm_available() {
        return;
    }
    // mov dx, 0x3f8; mov al, 'R'; out dx, al; mov al, '\n'; out dx, al; jmp $
    let k = guest(
        "sigterm",
        &[
            0x66, 0xba, 0xf8, 0x03, 0xb0, b'R', 0xee, 0xb0, b'\n', 0xee, 0xeb, 0xfe,
        ],
    );

    // Stopped once the guest has printed its line (then it spins on jmp $ for good).
    let run = strata_until(&["run", "--kernel", &k, "--timeout", "600"], &["R\n"]);

    assert_eq!(run.status, Some(143), "{run:?}");
    assert_eq!(run.stdout, "R\n");
    assert!(
        run.stderr.starts_with(
            "vCPU 0: 64-bit long mode, paging, CPL 0, RIP 0x10000a, instruction bytes [eb fe"
        ),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .ends_with("strata: stopped the guest on signal SIGTERM\n"),
        "{}",
        run.stderr
    );
}
