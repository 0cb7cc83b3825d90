//! Tests for `x87_arith.rs`: GNU Mach's FPU probe run natively and through the emulator.

use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::emulate::testutil::{long_mode_state, memory, run, DATA};
use crate::emulate::Outcome;

#[repr(C, align(16))]
struct Area([u8; 512]);

/// The probe (gnumach i386/i386/fpu.c, as compiled in Debian's 1.8 image), one instruction per
/// entry, memory operands relative to RSI (Mach uses RSP):
/// `fld1; fstp [rsi]; fldz; fstp [rsi+8]; fld [rsi]; fld [rsi+8]; fdivp st(1),st;
/// fstp [rsi+16]; fld [rsi+16]; fld [rsi+16]; fxch st(1); fchs; fucomip st,st(1); fstp st(0)`.
const PROBE: [&[u8]; 14] = [
    &[0xd9, 0xe8],
    &[0xdd, 0x1e],
    &[0xd9, 0xee],
    &[0xdd, 0x5e, 0x08],
    &[0xdd, 0x06],
    &[0xdd, 0x46, 0x08],
    &[0xde, 0xf9],
    &[0xdd, 0x5e, 0x10],
    &[0xdd, 0x46, 0x10],
    &[0xdd, 0x46, 0x10],
    &[0xd9, 0xc9],
    &[0xd9, 0xe0],
    &[0xdf, 0xe9],
    &[0xdd, 0xd8],
];

/// Native run of the probe after FNINIT, stopping after `steps` instructions: the FXSAVE image,
/// the 24 bytes at RSI and the arithmetic flags.
fn native(steps: usize) -> ([u8; 512], [u8; 24], u64) {
    let (mut backup, mut out, mut data) = (Area([0; 512]), Area([0; 512]), [0u8; 24]);
    let mut rflags = 0u64;
    // The sequence is written out in full; `steps` says after how many instructions to stop.
    // SAFETY: the host's x87/SSE state is saved to `backup` and restored at the end; the
    // probe only touches the x87 registers, `data` (24 bytes at rsi), `out` and rflags.
    unsafe {
        core::arch::asm!(
            "fxsave64 [{bk}]",
            "fninit",
            "mov {n}, {steps}",
            ".byte 0xd9, 0xe8",
            "dec {n}", "jz 2f",
            ".byte 0xdd, 0x1e",
            "dec {n}", "jz 2f",
            ".byte 0xd9, 0xee",
            "dec {n}", "jz 2f",
            ".byte 0xdd, 0x5e, 0x08",
            "dec {n}", "jz 2f",
            ".byte 0xdd, 0x06",
            "dec {n}", "jz 2f",
            ".byte 0xdd, 0x46, 0x08",
            "dec {n}", "jz 2f",
            ".byte 0xde, 0xf9",
            "dec {n}", "jz 2f",
            ".byte 0xdd, 0x5e, 0x10",
            "dec {n}", "jz 2f",
            ".byte 0xdd, 0x46, 0x10",
            "dec {n}", "jz 2f",
            ".byte 0xdd, 0x46, 0x10",
            "dec {n}", "jz 2f",
            ".byte 0xd9, 0xc9",
            "dec {n}", "jz 2f",
            ".byte 0xd9, 0xe0",
            "dec {n}", "jz 2f",
            ".byte 0xdf, 0xe9",
            "pushfq", "pop {f}",
            "dec {n}", "jz 2f",
            ".byte 0xdd, 0xd8",
            "2:",
            "fxsave64 [{o}]",
            "fxrstor64 [{bk}]",
            bk = in(reg) backup.0.as_mut_ptr(),
            o = in(reg) out.0.as_mut_ptr(),
            in("rsi") data.as_mut_ptr(),
            steps = in(reg) steps,
            n = out(reg) _,
            f = inout(reg) rflags,
        );
    }
    (out.0, data, rflags)
}

/// The same through the emulator: (state, the 24 bytes at DATA).
fn emulated(steps: usize) -> (crate::emulate::CpuState, [u8; 24]) {
    let mut state = long_mode_state();
    let mem = memory();
    state.regs.rsi = DATA;
    assert!(matches!(
        run(&mut state, &mem, &[0xdb, 0xe3]),
        Outcome::Emulated(_)
    ));
    for bytes in &PROBE[..steps] {
        let outcome = run(&mut state, &mem, bytes);
        assert!(
            matches!(outcome, Outcome::Emulated(wb) if wb.fpu),
            "{bytes:02x?}: {outcome:?}"
        );
    }
    let mut data = [0u8; 24];
    mem.read_slice(&mut data, GuestAddress(DATA)).unwrap();
    (state, data)
}

#[test]
fn test_x87_probe_each_step_matches_native() {
    for steps in 1..=PROBE.len() {
        // Arrange / Act
        let (img, native_data, native_flags) = native(steps);
        let (state, data) = emulated(steps);
        // Assert: FSW (with TOP and ZE), abridged tags, the stack, memory.
        let fsw = u16::from_le_bytes([img[2], img[3]]);
        assert_eq!(state.fpu.fsw, fsw, "FSW after {steps} steps");
        assert_eq!(state.fpu.ftwx, img[4], "tags after {steps} steps");
        for i in 0..8 {
            if img[4] & (1 << ((usize::from(fsw >> 11) + i) & 7)) != 0 {
                assert_eq!(
                    &state.fpu.fpr[i][..10],
                    &img[32 + 16 * i..42 + 16 * i],
                    "ST({i}) after {steps}"
                );
            }
        }
        assert_eq!(data, native_data, "memory after {steps} steps");
        if steps >= 13 {
            let mask = flags::STATUS;
            assert_eq!(
                state.regs.rflags & mask,
                native_flags & mask,
                "flags after fucomip"
            );
        }
    }
}

#[test]
fn test_x87_probe_divide_by_zero_gives_infinity_and_ze() {
    let (state, data) = emulated(8);
    assert_eq!(
        f64::from_le_bytes(data[16..24].try_into().unwrap()),
        f64::INFINITY
    );
    assert_ne!(state.fpu.fsw & FSW_ZE, 0);
}

#[test]
fn test_x87_inexact_division_is_not_emulated() {
    // Arrange: 1/3 is inexact.
    let mut state = long_mode_state();
    let mem = memory();
    run(&mut state, &mem, &[0xdb, 0xe3]);
    mem.write_slice(&3.0f64.to_le_bytes(), GuestAddress(DATA))
        .unwrap();
    state.regs.rsi = DATA;
    run(&mut state, &mem, &[0xdd, 0x06]); // fld [rsi] = 3
    run(&mut state, &mem, &[0xd9, 0xe8]); // fld1
    let mut stats = crate::emulate::EmulationStats::default();
    // Act: fdivrp st(1), st  (st1 = st0 / st1 = 1/3)
    let outcome = crate::emulate::emulate(&mut state, &mem, Some(&[0xde, 0xf1]), &mut stats);
    // Assert
    assert!(
        matches!(outcome, Ok(Outcome::Unsupported { .. })),
        "{outcome:?}"
    );
}
