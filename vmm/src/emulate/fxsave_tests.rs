//! Tests for `fxsave.rs`: images are round-tripped through the host CPU's FXRSTOR/FXSAVE and
//! through the emulator, and must come out the same.

use super::*;
use crate::emulate::testutil::{flat32_state, injected, long_mode_state, memory, run, DATA};
use crate::emulate::Outcome;
use vm_memory::{Bytes, GuestAddress};

#[repr(C, align(16))]
struct Area([u8; 512]);

/// A valid FXSAVE image with distinctive contents: two values on the x87 stack, all XMM
/// registers filled, MXCSR with the rounding mode changed, and an unmasked divide-by-zero
/// pending (ES): AMD processors store FOP, FIP and FDP only then (zeros otherwise), Intel
/// always. Nothing here waits on it: FXRSTOR and FXSAVE do not raise #MF.
fn sample_image() -> [u8; 512] {
    let mut img = [0u8; 512];
    img[0..2].copy_from_slice(&0x027bu16.to_le_bytes()); // FCW: ZE unmasked
    img[2..4].copy_from_slice(&(0x8084u16 | 6 << 11).to_le_bytes()); // FSW: B, ES, ZE, TOP=6
    img[4] = 0xc0; // R6, R7 valid
    img[6..8].copy_from_slice(&0x01d9u16.to_le_bytes()); // FOP
    img[8..16].copy_from_slice(&0x0000_7f00_1234_5678u64.to_le_bytes()); // FIP
    img[16..24].copy_from_slice(&0x0000_7f00_9abc_def0u64.to_le_bytes()); // FDP
    img[24..28].copy_from_slice(&0x3f80u32.to_le_bytes()); // MXCSR: round toward zero
    for (i, st) in [
        [0u8, 0, 0, 0, 0, 0, 0, 0x80, 0xff, 0x3f],
        [0x35, 0xc2, 0x68, 0x21, 0xa2, 0xda, 0x0f, 0xc9, 0x00, 0x40],
    ]
    .iter()
    .enumerate()
    {
        img[32 + 16 * i..42 + 16 * i].copy_from_slice(st);
    }
    for (i, b) in img[160..416].iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(7) ^ 0x33;
    }
    img
}

/// Natively loads `img` with FXRSTOR(64) and stores it back with FXSAVE(64) into a buffer
/// prefilled with 0xaa (so untouched bytes show).
fn native_roundtrip(img: &[u8; 512], wide: bool) -> [u8; 512] {
    let (mut backup, input, mut out) = (Area([0; 512]), Area(*img), Area([0xaa; 512]));
    // SAFETY: the host's x87/SSE state is saved to `backup` first and restored at the end; the
    // three areas are 512 bytes, 16-byte aligned; `input` is a valid image (MXCSR reserved bits
    // clear).
    unsafe {
        if wide {
            core::arch::asm!("fxsave64 [{bk}]", "fxrstor64 [{i}]", "fxsave64 [{o}]", "fxrstor64 [{bk}]",
                bk = in(reg) backup.0.as_mut_ptr(), i = in(reg) input.0.as_ptr(), o = in(reg) out.0.as_mut_ptr(), options(nostack));
        } else {
            core::arch::asm!("fxsave64 [{bk}]", "fxrstor [{i}]", "fxsave [{o}]", "fxrstor64 [{bk}]",
                bk = in(reg) backup.0.as_mut_ptr(), i = in(reg) input.0.as_ptr(), o = in(reg) out.0.as_mut_ptr(), options(nostack));
        }
    }
    out.0
}

/// Emulated FXRSTOR(64) [rdi] then FXSAVE(64) [rdi+512] into memory prefilled with 0xaa.
fn emulated_roundtrip(img: &[u8; 512], wide: bool) -> [u8; 512] {
    let mut state = long_mode_state();
    state.features.mxcsr_mask = GuestFeatures::host().mxcsr_mask;
    let mem = memory();
    mem.write_slice(img, GuestAddress(DATA)).unwrap();
    mem.write_slice(&[0xaa; 512], GuestAddress(DATA + 512))
        .unwrap();
    state.regs.rdi = DATA;
    let rex: &[u8] = if wide { &[0x48] } else { &[] };
    let rstor = [rex, &[0x0f, 0xae, 0x0f]].concat();
    let save = [rex, &[0x0f, 0xae, 0x87, 0x00, 0x02, 0x00, 0x00]].concat(); // [rdi+0x200]
    assert!(matches!(run(&mut state, &mem, &rstor), Outcome::Emulated(wb) if wb.fpu));
    assert!(matches!(run(&mut state, &mem, &save), Outcome::Emulated(_)));
    let mut out = [0u8; 512];
    mem.read_slice(&mut out, GuestAddress(DATA + 512)).unwrap();
    out
}

use crate::emulate::GuestFeatures;

#[test]
fn test_fxrstor64_fxsave64_roundtrip_matches_native() {
    // Arrange
    let img = sample_image();
    let expected = native_roundtrip(&img, true);
    // Act
    let got = emulated_roundtrip(&img, true);
    // Assert
    assert_eq!(got[..], expected[..]);
}

#[test]
fn test_fxrstor_fxsave_legacy_layout_matches_native() {
    let mut img = sample_image();
    img[12..16].fill(0); // FCS and high bytes: zero in the legacy layout on this CPU
    img[20..24].fill(0);
    let expected = native_roundtrip(&img, false);
    let got = emulated_roundtrip(&img, false);
    assert_eq!(got[..], expected[..]);
}

#[test]
fn test_fxsave_in_32bit_mode_stores_eight_xmm_registers() {
    let mut state = flat32_state();
    let mem = memory();
    mem.write_slice(&[0xaa; 512], GuestAddress(DATA)).unwrap();
    state.fpu.xmm[7] = [0x11; 16];
    state.fpu.xmm[8] = [0x22; 16];
    state.regs.rdi = DATA;
    run(&mut state, &mem, &[0x0f, 0xae, 0x07]); // fxsave [edi]
    let mut out = [0u8; 512];
    mem.read_slice(&mut out, GuestAddress(DATA)).unwrap();
    assert_eq!(out[272..288], [0x11; 16]);
    assert_eq!(out[288..304], [0xaa; 16]);
    assert_eq!(u16::from_le_bytes([out[0], out[1]]), 0x37f);
}

#[test]
fn test_fxsave_misaligned_raises_gp0() {
    let mut state = long_mode_state();
    let mem = memory();
    state.regs.rdi = DATA + 8;
    assert_eq!(
        injected(&run(&mut state, &mem, &[0x48, 0x0f, 0xae, 0x07])),
        Some((13, Some(0)))
    );
    assert_eq!(
        injected(&run(&mut state, &mem, &[0x48, 0x0f, 0xae, 0x0f])),
        Some((13, Some(0)))
    );
}

#[test]
fn test_fxrstor_with_reserved_mxcsr_bits_raises_gp0() {
    let mut state = long_mode_state();
    let mem = memory();
    let mut img = sample_image();
    img[24..28].copy_from_slice(&0x0001_1f80u32.to_le_bytes());
    mem.write_slice(&img, GuestAddress(DATA)).unwrap();
    state.regs.rdi = DATA;
    let before = state.fpu;
    assert_eq!(
        injected(&run(&mut state, &mem, &[0x48, 0x0f, 0xae, 0x0f])),
        Some((13, Some(0)))
    );
    assert_eq!(state.fpu.fcw, before.fcw);
}

#[test]
fn test_fxsave_with_ts_or_em_raises_nm() {
    let mut state = long_mode_state();
    let mem = memory();
    state.regs.rdi = DATA;
    state.sregs.cr0 |= cr::CR0_TS;
    assert_eq!(
        injected(&run(&mut state, &mem, &[0x48, 0x0f, 0xae, 0x07])),
        Some((7, None))
    );
    state.sregs.cr0 = (state.sregs.cr0 & !cr::CR0_TS) | cr::CR0_EM;
    assert_eq!(
        injected(&run(&mut state, &mem, &[0x48, 0x0f, 0xae, 0x07])),
        Some((7, None))
    );
}

#[test]
fn test_ldmxcsr_stmxcsr_match_native() {
    // Arrange
    let value = 0x7fc0u32; // all masks, FTZ... and DAZ
    let mut native_out = 0u32;
    // SAFETY: saves the thread's MXCSR, loads `value` (reserved bits clear), stores it back to
    // a local and restores the saved MXCSR.
    unsafe {
        let mut saved = 0u32;
        core::arch::asm!("stmxcsr [{s}]", "ldmxcsr [{v}]", "stmxcsr [{o}]", "ldmxcsr [{s}]",
            s = in(reg) &mut saved, v = in(reg) &value, o = in(reg) &mut native_out, options(nostack));
    }
    let mut state = long_mode_state();
    let mem = memory();
    mem.write_obj(value, GuestAddress(DATA)).unwrap();
    state.regs.rdi = DATA;
    // Act
    run(&mut state, &mem, &[0x0f, 0xae, 0x17]); // ldmxcsr [rdi]
    run(&mut state, &mem, &[0x0f, 0xae, 0x5f, 0x04]); // stmxcsr [rdi+4]
                                                      // Assert
    assert_eq!(state.fpu.mxcsr, native_out);
    assert_eq!(
        mem.read_obj::<u32>(GuestAddress(DATA + 4)).unwrap(),
        native_out
    );
}

#[test]
fn test_ldmxcsr_reserved_bit_raises_gp0() {
    let mut state = long_mode_state();
    let mem = memory();
    mem.write_obj(0x0001_1f80u32, GuestAddress(DATA)).unwrap();
    state.regs.rdi = DATA;
    assert_eq!(
        injected(&run(&mut state, &mem, &[0x0f, 0xae, 0x17])),
        Some((13, Some(0)))
    );
    assert_eq!(state.fpu.mxcsr, 0x1f80);
}

#[test]
fn test_fxsave_amd_style_stores_error_pointers_only_when_exception_pending() {
    // Arrange: error pointers set, FSW.ES clear then set, on a CPU that stores the pointers only
    // for a pending exception (AMD without XSaveErPtr).
    for (fsw, pointers_kept) in [(0u16, false), (0x81, true)] {
        let mut state = long_mode_state();
        state.features.fxsave_pointers_on_error_only = true;
        state.fpu.fsw = fsw;
        state.fpu.last_opcode = 0x1d9;
        state.fpu.last_ip = 0x7f00_1234_5678;
        state.fpu.last_dp = 0x7f00_9abc_def0;
        // Act
        let out = image(&state, true, 16);
        // Assert
        let mut expected = [0u8; 18];
        if pointers_kept {
            expected[0..2].copy_from_slice(&0x1d9u16.to_le_bytes());
            expected[2..10].copy_from_slice(&0x7f00_1234_5678u64.to_le_bytes());
            expected[10..18].copy_from_slice(&0x7f00_9abc_def0u64.to_le_bytes());
        }
        assert_eq!(out[6..24], expected, "FSW={fsw:#x}");
    }
}
