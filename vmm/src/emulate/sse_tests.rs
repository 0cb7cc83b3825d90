//! Tests for `sse.rs`: each instruction is run natively on the host and emulated with the same
//! operands (XMM1, XMM2, RAX and a 16-byte aligned memory block at [RDI]).

use super::*;
use crate::emulate::testutil::{injected, long_mode_state, memory, run, DATA};
use crate::emulate::Outcome;
use vm_memory::{Bytes, GuestAddress};

#[repr(C, align(16))]
#[derive(Clone, Copy)]
struct Block([u8; 16]);

/// Operands and results: (XMM1, XMM2, memory block, RAX).
type Operands = ([u8; 16], [u8; 16], [u8; 16], u64);

fn pattern(seed: u8) -> [u8; 16] {
    let mut v = [0u8; 16];
    for (i, b) in v.iter_mut().enumerate() {
        *b = seed
            .wrapping_mul(31)
            .wrapping_add((i as u8).wrapping_mul(17))
            ^ 0x5a;
    }
    v
}

/// Operand sets: distinct values, partly equal bytes (for PCMPEQB), and all-ones.
fn operand_sets() -> Vec<Operands> {
    let mut half = pattern(1);
    half[..8].copy_from_slice(&pattern(2)[..8]);
    vec![
        (pattern(1), pattern(2), pattern(3), 0x1122_3344_5566_7788),
        (pattern(2), half, pattern(2), 0xffff_ffff_8000_0001),
        ([0xff; 16], [0x80; 16], [0x7f; 16], 0),
    ]
}

/// Runs `$insn` natively with XMM1, XMM2, RAX and the memory block `{m}` set from `$ops`.
macro_rules! native {
    ($insn:literal, $ops:expr) => {{
        let (x1, x2, m, rax) = $ops;
        let (mut a, mut b, mut c, mut r) = (Block(x1), Block(x2), Block(m), rax);
        // SAFETY: XMM1/XMM2 are declared clobbered; the three pointers are 16 bytes each,
        // 16-byte aligned and writable; RAX is an in/out operand; nothing else is touched.
        unsafe {
            core::arch::asm!(
                "movdqu xmm1, [{a}]",
                "movdqu xmm2, [{b}]",
                "prefetcht0 [{m}]",
                $insn,
                "movdqu [{a}], xmm1",
                "movdqu [{b}], xmm2",
                a = in(reg) a.0.as_mut_ptr(),
                b = in(reg) b.0.as_mut_ptr(),
                m = in(reg) c.0.as_mut_ptr(),
                inout("rax") r,
                out("xmm1") _,
                out("xmm2") _,
                options(nostack),
            );
        }
        (a.0, b.0, c.0, r)
    }};
}

/// Emulates `bytes` (memory operand [RDI]) with the same operands.
fn emulated(bytes: &[u8], ops: Operands) -> Operands {
    let mut state = long_mode_state();
    let mem = memory();
    state.fpu.xmm[1] = ops.0;
    state.fpu.xmm[2] = ops.1;
    mem.write_slice(&ops.2, GuestAddress(DATA)).unwrap();
    state.regs.rax = ops.3;
    state.regs.rdi = DATA;
    let outcome = run(&mut state, &mem, bytes);
    assert!(
        matches!(outcome, Outcome::Emulated(wb) if wb.fpu),
        "{bytes:02x?}: {outcome:?}"
    );
    let mut m = [0u8; 16];
    mem.read_slice(&mut m, GuestAddress(DATA)).unwrap();
    (state.fpu.xmm[1], state.fpu.xmm[2], m, state.regs.rax)
}

macro_rules! compare {
    ($name:ident, $insn:literal, [$($byte:expr),+]) => {
        #[test]
        fn $name() {
            for ops in operand_sets() {
                // Arrange
                let expected = native!($insn, ops);
                // Act
                let got = emulated(&[$($byte),+], ops);
                // Assert
                assert_eq!(got, expected, "{}", $insn);
            }
        }
    };
}

compare!(
    test_movd_xmm_from_eax_matches_native,
    "movd xmm1, eax",
    [0x66, 0x0f, 0x6e, 0xc8]
);
compare!(
    test_movd_eax_from_xmm_matches_native,
    "movd eax, xmm1",
    [0x66, 0x0f, 0x7e, 0xc8]
);
compare!(
    test_movq_xmm_from_rax_matches_native,
    "movq xmm1, rax",
    [0x66, 0x48, 0x0f, 0x6e, 0xc8]
);
compare!(
    test_movq_rax_from_xmm_matches_native,
    "movq rax, xmm1",
    [0x66, 0x48, 0x0f, 0x7e, 0xc8]
);
compare!(
    test_movd_xmm_from_memory_matches_native,
    "movd xmm1, dword ptr [{m}]",
    [0x66, 0x0f, 0x6e, 0x0f]
);
compare!(
    test_movd_memory_from_xmm_matches_native,
    "movd dword ptr [{m}], xmm1",
    [0x66, 0x0f, 0x7e, 0x0f]
);
compare!(
    test_movq_xmm_xmm_matches_native,
    "movq xmm1, xmm2",
    [0xf3, 0x0f, 0x7e, 0xca]
);
compare!(
    test_movq_xmm_xmm_store_form_matches_native,
    "movq xmm2, xmm1",
    [0x66, 0x0f, 0xd6, 0xca]
);
compare!(
    test_movq_xmm_from_memory_matches_native,
    "movq xmm1, qword ptr [{m}]",
    [0xf3, 0x0f, 0x7e, 0x0f]
);
compare!(
    test_movq_memory_from_xmm_matches_native,
    "movq qword ptr [{m}], xmm1",
    [0x66, 0x0f, 0xd6, 0x0f]
);
compare!(
    test_movss_register_matches_native,
    "movss xmm1, xmm2",
    [0xf3, 0x0f, 0x10, 0xca]
);
compare!(
    test_movss_load_matches_native,
    "movss xmm1, dword ptr [{m}]",
    [0xf3, 0x0f, 0x10, 0x0f]
);
compare!(
    test_movss_store_matches_native,
    "movss dword ptr [{m}], xmm1",
    [0xf3, 0x0f, 0x11, 0x0f]
);
compare!(
    test_movsd_register_matches_native,
    "movsd xmm1, xmm2",
    [0xf2, 0x0f, 0x10, 0xca]
);
compare!(
    test_movsd_load_matches_native,
    "movsd xmm1, qword ptr [{m}]",
    [0xf2, 0x0f, 0x10, 0x0f]
);
compare!(
    test_movsd_store_matches_native,
    "movsd qword ptr [{m}], xmm1",
    [0xf2, 0x0f, 0x11, 0x0f]
);
compare!(
    test_movaps_register_matches_native,
    "movaps xmm1, xmm2",
    [0x0f, 0x28, 0xca]
);
compare!(
    test_movaps_load_matches_native,
    "movaps xmm1, [{m}]",
    [0x0f, 0x28, 0x0f]
);
compare!(
    test_movaps_store_matches_native,
    "movaps [{m}], xmm1",
    [0x0f, 0x29, 0x0f]
);
compare!(
    test_movapd_load_matches_native,
    "movapd xmm1, [{m}]",
    [0x66, 0x0f, 0x28, 0x0f]
);
compare!(
    test_movups_load_matches_native,
    "movups xmm1, [{m}]",
    [0x0f, 0x10, 0x0f]
);
compare!(
    test_movups_store_matches_native,
    "movups [{m}], xmm1",
    [0x0f, 0x11, 0x0f]
);
compare!(
    test_movupd_store_matches_native,
    "movupd [{m}], xmm1",
    [0x66, 0x0f, 0x11, 0x0f]
);
compare!(
    test_movdqa_register_matches_native,
    "movdqa xmm1, xmm2",
    [0x66, 0x0f, 0x6f, 0xca]
);
compare!(
    test_movdqa_load_matches_native,
    "movdqa xmm1, [{m}]",
    [0x66, 0x0f, 0x6f, 0x0f]
);
compare!(
    test_movdqa_store_matches_native,
    "movdqa [{m}], xmm1",
    [0x66, 0x0f, 0x7f, 0x0f]
);
compare!(
    test_movdqu_load_matches_native,
    "movdqu xmm1, [{m}]",
    [0xf3, 0x0f, 0x6f, 0x0f]
);
compare!(
    test_movdqu_store_matches_native,
    "movdqu [{m}], xmm1",
    [0xf3, 0x0f, 0x7f, 0x0f]
);
compare!(
    test_pxor_register_matches_native,
    "pxor xmm1, xmm2",
    [0x66, 0x0f, 0xef, 0xca]
);
compare!(
    test_pxor_memory_matches_native,
    "pxor xmm1, [{m}]",
    [0x66, 0x0f, 0xef, 0x0f]
);
compare!(
    test_pxor_self_zeroes_like_native,
    "pxor xmm1, xmm1",
    [0x66, 0x0f, 0xef, 0xc9]
);
compare!(
    test_xorps_register_matches_native,
    "xorps xmm1, xmm2",
    [0x0f, 0x57, 0xca]
);
compare!(
    test_xorps_memory_matches_native,
    "xorps xmm1, [{m}]",
    [0x0f, 0x57, 0x0f]
);
compare!(
    test_xorpd_register_matches_native,
    "xorpd xmm1, xmm2",
    [0x66, 0x0f, 0x57, 0xca]
);
compare!(
    test_pand_register_matches_native,
    "pand xmm1, xmm2",
    [0x66, 0x0f, 0xdb, 0xca]
);
compare!(
    test_pandn_register_matches_native,
    "pandn xmm1, xmm2",
    [0x66, 0x0f, 0xdf, 0xca]
);
compare!(
    test_por_memory_matches_native,
    "por xmm1, [{m}]",
    [0x66, 0x0f, 0xeb, 0x0f]
);
compare!(
    test_andps_register_matches_native,
    "andps xmm1, xmm2",
    [0x0f, 0x54, 0xca]
);
compare!(
    test_andnps_register_matches_native,
    "andnps xmm1, xmm2",
    [0x0f, 0x55, 0xca]
);
compare!(
    test_orps_register_matches_native,
    "orps xmm1, xmm2",
    [0x0f, 0x56, 0xca]
);
compare!(
    test_pcmpeqb_register_matches_native,
    "pcmpeqb xmm1, xmm2",
    [0x66, 0x0f, 0x74, 0xca]
);
compare!(
    test_pcmpeqb_memory_matches_native,
    "pcmpeqb xmm2, [{m}]",
    [0x66, 0x0f, 0x74, 0x17]
);
compare!(
    test_pmovmskb_eax_matches_native,
    "pmovmskb eax, xmm1",
    [0x66, 0x0f, 0xd7, 0xc1]
);
compare!(
    test_pmovmskb_rax_matches_native,
    "pmovmskb rax, xmm2",
    [0x66, 0x48, 0x0f, 0xd7, 0xc2]
);

/// The x87/MMX state as FXSAVE64 stores it: (FSW, abridged FTW, ST/MM registers).
type X87 = (u16, u8, [[u8; 10]; 8]);

fn x87_from_image(img: &[u8]) -> X87 {
    let mut regs = [[0u8; 10]; 8];
    for (i, r) in regs.iter_mut().enumerate() {
        r.copy_from_slice(&img[32 + 16 * i..42 + 16 * i]);
    }
    (u16::from_le_bytes([img[2], img[3]]), img[4], regs)
}

#[test]
fn test_mmx_sequence_matches_native_including_tags_and_top() {
    // Arrange: one value on the x87 stack (TOP=7), then MMX moves, logic, compare and mask.
    #[repr(C, align(16))]
    struct Area([u8; 512]);
    let (mut backup, mut out) = (Area([0; 512]), Area([0; 512]));
    let (a, b) = (0x0102_0304_f0e0_d0c0u64, 0x0102_0304_0506_0708u64);
    let (mut c, mut mask) = (0u64, 0u64);
    // SAFETY: the x87/MMX/SSE state is saved to `backup` first and restored at the end; all
    // pointers are to locals of the right size (512-byte areas 16-byte aligned); RAX is an
    // output.
    unsafe {
        core::arch::asm!(
            "fxsave64 [{bk}]",
            "fninit",
            "fld1",
            "movq mm2, [{b}]",
            "movq mm1, [{a}]",
            "pxor mm1, mm2",
            "pcmpeqb mm2, [{a}]",
            "pmovmskb eax, mm2",
            "movq [{c}], mm1",
            "fxsave64 [{out}]",
            "fxrstor64 [{bk}]",
            bk = in(reg) backup.0.as_mut_ptr(),
            out = in(reg) out.0.as_mut_ptr(),
            a = in(reg) &a,
            b = in(reg) &b,
            c = in(reg) &mut c,
            out("rax") mask,
            options(nostack),
        );
    }
    let mut state = long_mode_state();
    state.fpu.fsw = 7 << 11;
    state.fpu.ftwx = 0x80;
    state.fpu.fpr[0][..10].copy_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0x80, 0xff, 0x3f]);
    let mem = memory();
    mem.write_obj(a, GuestAddress(DATA)).unwrap();
    mem.write_obj(b, GuestAddress(DATA + 8)).unwrap();
    state.regs.rdi = DATA;
    // Act
    for bytes in [
        &[0x0f, 0x6f, 0x57, 0x08][..], // movq mm2, [rdi+8]
        &[0x0f, 0x6f, 0x0f],           // movq mm1, [rdi]
        &[0x0f, 0xef, 0xca],           // pxor mm1, mm2
        &[0x0f, 0x74, 0x17],           // pcmpeqb mm2, [rdi]
        &[0x0f, 0xd7, 0xc2],           // pmovmskb eax, mm2
        &[0x0f, 0x7f, 0x4f, 0x10],     // movq [rdi+16], mm1
    ] {
        assert!(matches!(run(&mut state, &mem, bytes), Outcome::Emulated(_)));
    }
    // Assert
    let mut img = [0u8; 512];
    img[2..4].copy_from_slice(&state.fpu.fsw.to_le_bytes());
    img[4] = state.fpu.ftwx;
    for (i, r) in state.fpu.fpr.iter().enumerate() {
        img[32 + 16 * i..42 + 16 * i].copy_from_slice(&r[..10]);
    }
    assert_eq!(x87_from_image(&img), x87_from_image(&out.0));
    assert_eq!(state.regs.rax, mask);
    assert_eq!(mem.read_obj::<u64>(GuestAddress(DATA + 16)).unwrap(), c);
}

#[test]
fn test_movaps_misaligned_raises_gp0() {
    let mut state = long_mode_state();
    let mem = memory();
    state.regs.rdi = DATA + 4;
    assert_eq!(
        injected(&run(&mut state, &mem, &[0x0f, 0x28, 0x0f])),
        Some((13, Some(0)))
    );
    assert_eq!(
        injected(&run(&mut state, &mem, &[0x66, 0x0f, 0x7f, 0x0f])),
        Some((13, Some(0)))
    );
    // pxor with a 128-bit memory operand needs alignment too; movups does not.
    assert_eq!(
        injected(&run(&mut state, &mem, &[0x66, 0x0f, 0xef, 0x0f])),
        Some((13, Some(0)))
    );
    assert!(matches!(
        run(&mut state, &mem, &[0x0f, 0x10, 0x0f]),
        Outcome::Emulated(_)
    ));
}

#[test]
fn test_sse_with_ts_raises_nm() {
    let mut state = long_mode_state();
    state.sregs.cr0 |= cr::CR0_TS;
    let mem = memory();
    assert_eq!(
        injected(&run(&mut state, &mem, &[0x66, 0x0f, 0xef, 0xca])),
        Some((7, None))
    );
}

#[test]
fn test_sse_with_em_or_without_osfxsr_raises_ud() {
    let mut state = long_mode_state();
    let mem = memory();
    state.sregs.cr0 |= cr::CR0_EM | cr::CR0_TS;
    assert_eq!(
        injected(&run(&mut state, &mem, &[0x0f, 0x57, 0xca])),
        Some((6, None))
    );
    state.sregs.cr0 &= !(cr::CR0_EM | cr::CR0_TS);
    state.sregs.cr4 &= !cr::CR4_OSFXSR;
    assert_eq!(
        injected(&run(&mut state, &mem, &[0x0f, 0x57, 0xca])),
        Some((6, None))
    );
}

#[test]
fn test_mmx_with_em_raises_ud_and_with_ts_raises_nm() {
    let mut state = long_mode_state();
    let mem = memory();
    state.sregs.cr0 |= cr::CR0_EM;
    assert_eq!(
        injected(&run(&mut state, &mem, &[0x0f, 0xef, 0xca])),
        Some((6, None))
    );
    state.sregs.cr0 = (state.sregs.cr0 & !cr::CR0_EM) | cr::CR0_TS;
    assert_eq!(
        injected(&run(&mut state, &mem, &[0x0f, 0xef, 0xca])),
        Some((7, None))
    );
}

#[test]
fn test_movdqu_store_to_unmapped_page_raises_pf_with_write_code() {
    // Arrange: unmap the page at 0x5000 (4-KiB page table PT0).
    let mut state = long_mode_state();
    let mem = memory();
    mem.write_obj(0u64, GuestAddress(crate::emulate::testutil::PT0 + 5 * 8))
        .unwrap();
    state.regs.rdi = 0x5010;
    // Act
    let outcome = run(&mut state, &mem, &[0xf3, 0x0f, 0x7f, 0x0f]);
    // Assert: not-present, write, supervisor.
    let Outcome::Inject(inj) = outcome else {
        panic!("expected #PF, got {outcome:?}")
    };
    assert_eq!(
        (inj.vector, inj.error_code, inj.cr2),
        (14, Some(0b10), Some(0x5010))
    );
}

#[test]
fn test_vex_encoded_move_is_unsupported_with_mnemonic() {
    let mut state = long_mode_state();
    let mem = memory();
    // vmovdqu xmm1, xmm2
    let outcome = run(&mut state, &mem, &[0xc5, 0xfa, 0x6f, 0xca]);
    assert!(
        matches!(outcome, Outcome::Unsupported { ref mnemonic, rip, .. } if mnemonic == "vmovdqu" && rip == state.regs.rip)
    );
}
