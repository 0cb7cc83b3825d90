//! Tests for `x87_arith.rs`: every instruction is run natively on the host and through the
//! emulator from the same x87 state and memory, and the results compared: FSW (TOP, C0-C3,
//! exception flags), tags, ST0-ST7, the memory operand, RFLAGS, and the last-instruction
//! pointers against the host's FNSTENV. Then two real sequences: GNU Mach's FPU probe and
//! memtest86+'s AMD temperature read.

use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::emulate::cpu::flags;
use crate::emulate::testutil::{
    flat32_state, injected, long_mode_state, memory, run, CODE, DATA, PT0,
};
use crate::emulate::{CpuState, EmulationStats, Outcome};

#[repr(C, align(16))]
#[derive(Clone, Copy)]
struct Area([u8; 512]);

/// The 80-bit encoding of `v`, converted by the host (FLD m64; FSTP m80).
fn ext(v: f64) -> [u8; 10] {
    let mut out = [0u8; 10];
    // SAFETY: FNINIT, one load and one store of the local `v` and `out`; the x87 stack ends
    // empty and the control word at its default.
    unsafe {
        core::arch::asm!(
            "fninit",
            "fld qword ptr [{v}]",
            "fstp tbyte ptr [{o}]",
            v = in(reg) &v,
            o = in(reg) out.as_mut_ptr(),
            options(nostack),
        );
    }
    out
}

/// A starting point: control word, stack (ST0 first), RFLAGS and 32 bytes of data at RSI.
#[derive(Clone)]
struct Start {
    fcw: u16,
    stack: Vec<[u8; 10]>,
    rflags: u64,
    data: [u8; 32],
}

impl Start {
    fn new(stack: &[f64]) -> Self {
        Start {
            fcw: 0x037f,
            stack: stack.iter().map(|&v| ext(v)).collect(),
            rflags: 0x202,
            data: [0x5a; 32],
        }
    }
    fn fcw(mut self, fcw: u16) -> Self {
        self.fcw = fcw;
        self
    }
    fn raw(mut self, st: [u8; 10]) -> Self {
        self.stack.insert(0, st);
        self
    }
    fn flags(mut self, rflags: u64) -> Self {
        self.rflags = rflags;
        self
    }
    fn at(mut self, offset: usize, bytes: &[u8]) -> Self {
        self.data[offset..offset + bytes.len()].copy_from_slice(bytes);
        self
    }

    /// (FSW with TOP, abridged tags, ST0-ST7) for this stack.
    fn registers(&self) -> (u16, u8, [[u8; 16]; 8]) {
        let n = self.stack.len();
        let top = (8 - n) & 7;
        let mut tags = 0u8;
        let mut fpr = [[0u8; 16]; 8];
        for (i, st) in self.stack.iter().enumerate() {
            tags |= 1 << ((top + i) & 7);
            fpr[i][..10].copy_from_slice(st);
        }
        ((top as u16) << 11, tags, fpr)
    }

    fn image(&self) -> Area {
        let (fsw, tags, fpr) = self.registers();
        let mut img = Area([0; 512]);
        img.0[0..2].copy_from_slice(&self.fcw.to_le_bytes());
        img.0[2..4].copy_from_slice(&fsw.to_le_bytes());
        img.0[4] = tags;
        img.0[24..28].copy_from_slice(&0x1f80u32.to_le_bytes());
        for (i, st) in fpr.iter().enumerate() {
            img.0[32 + 16 * i..48 + 16 * i].copy_from_slice(st);
        }
        img
    }

    fn state(&self, mode: fn() -> CpuState) -> CpuState {
        let mut state = mode();
        let (fsw, tags, fpr) = self.registers();
        state.fpu.fcw = self.fcw;
        state.fpu.fsw = fsw;
        state.fpu.ftwx = tags;
        state.fpu.fpr = fpr;
        state.regs.rflags = self.rflags;
        state.regs.rsi = DATA;
        state
    }
}

/// What a native run left: FXSAVE image, RFLAGS, data, the instruction's bytes and address,
/// and the FNSTENV image (FIP at 12, FOP in bits 16-26 of the dword at 16, FDP at 20).
struct Native {
    img: [u8; 512],
    rflags: u64,
    data: [u8; 32],
    bytes: Vec<u8>,
    rsi: u64,
    env: [u8; 28],
}

type NativeFn = fn(&Start) -> Native;

/// A native run of `$insn` (memory operands relative to RSI) from a [`Start`].
macro_rules! native {
    ($insn:literal) => {{
        fn native(start: &Start) -> Native {
            let mut img = start.image();
            let mut host = Area([0; 512]);
            let mut data = start.data;
            let rsi = data.as_ptr() as u64;
            let mut env = [0u8; 28];
            let mut rflags = start.rflags & flags::STATUS;
            let (from, to): (u64, u64);
            // SAFETY: the host's x87/SSE state is saved to `host` first and restored last; the
            // instruction touches the x87 registers, the status flags and `data` (RSI); the
            // rest writes `img` and `env`, both large enough. Labels 2 and 3 delimit the
            // instruction so its bytes can be read back.
            unsafe {
                core::arch::asm!(
                    "fxsave64 [{host}]",
                    "fxrstor64 [{img}]",
                    "pushfq",
                    "and qword ptr [rsp], {keep}",
                    "or qword ptr [rsp], {f}",
                    "popfq",
                    "2:",
                    $insn,
                    "3:",
                    "pushfq",
                    "pop {f}",
                    "fxsave64 [{img}]",
                    "fnstenv [{env}]",
                    "fxrstor64 [{host}]",
                    "lea {from}, [rip + 2b]",
                    "lea {to}, [rip + 3b]",
                    host = in(reg) host.0.as_mut_ptr(),
                    img = in(reg) img.0.as_mut_ptr(),
                    env = in(reg) env.as_mut_ptr(),
                    keep = in(reg) !flags::STATUS,
                    f = inout(reg) rflags,
                    from = out(reg) from,
                    to = out(reg) to,
                    in("rsi") data.as_mut_ptr(),
                );
            }
            // SAFETY: [from, to) is the instruction in this function's code, readable.
            let bytes = unsafe {
                std::slice::from_raw_parts(from as *const u8, (to - from) as usize).to_vec()
            };
            Native {
                img: img.0,
                rflags,
                data,
                bytes,
                rsi,
                env,
            }
        }
        native as NativeFn
    }};
}

/// Runs `bytes` through the emulator from `start` (RSI = DATA), returning the state, the data
/// and the outcome.
fn emulated(start: &Start, bytes: &[u8], mode: fn() -> CpuState) -> (CpuState, [u8; 32], Outcome) {
    let mut state = start.state(mode);
    let mem = memory();
    mem.write_slice(&start.data, GuestAddress(DATA)).unwrap();
    let outcome = run(&mut state, &mem, bytes);
    let mut data = [0u8; 32];
    mem.read_slice(&mut data, GuestAddress(DATA)).unwrap();
    (state, data, outcome)
}

fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}

fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}

/// Runs `native` and the emulator from each start and compares everything.
fn compare(name: &str, native: NativeFn, starts: &[Start]) {
    for (n, start) in starts.iter().enumerate() {
        // Arrange / Act
        let want = native(start);
        let (state, data, outcome) = emulated(start, &want.bytes, long_mode_state);
        // Assert
        let what = format!("{name} from start {n}");
        assert!(
            matches!(outcome, Outcome::Emulated(wb) if wb.fpu),
            "{what}: {outcome:?}"
        );
        assert_eq!(state.fpu.fcw, u16_at(&want.img, 0), "{what}: FCW");
        assert_eq!(state.fpu.fsw, u16_at(&want.img, 2), "{what}: FSW");
        assert_eq!(state.fpu.ftwx, want.img[4], "{what}: tags");
        for i in 0..8 {
            assert_eq!(
                state.fpu.fpr[i][..10],
                want.img[32 + 16 * i..42 + 16 * i],
                "{what}: ST({i})"
            );
        }
        assert_eq!(data, want.data, "{what}: memory");
        assert_eq!(
            state.regs.rflags & flags::STATUS,
            want.rflags & flags::STATUS,
            "{what}: RFLAGS"
        );
        assert_eq!(
            state.regs.rip,
            CODE + want.bytes.len() as u64,
            "{what}: RIP"
        );
        // Pointers: FIP = the guest RIP, FOP = escape opcode and ModRM, FDP = the operand's
        // offset. The host's own record (FNSTENV) must agree where it keeps one: AMD always
        // does; Intel by default keeps FOP (and, with CPUID.7.0:EBX[6], FDP) only after an
        // unmasked exception.
        let instr =
            iced_x86::Decoder::new(64, &want.bytes, iced_x86::DecoderOptions::NONE).decode();
        let fop = (u16::from(want.bytes[0] & 7) << 8) | u16::from(want.bytes[1]);
        assert_eq!(state.fpu.last_opcode, fop, "{what}: FOP");
        assert_eq!(state.fpu.last_ip, CODE, "{what}: FIP");
        let host_fop = (u32_at(&want.env, 16) >> 16) & 0x7ff;
        if host_fop != 0 {
            assert_eq!(u32::from(fop), host_fop, "{what}: host FOP");
        }
        if instr.op0_kind() == iced_x86::OpKind::Memory {
            let disp = instr.memory_displacement64();
            assert_eq!(state.fpu.last_dp, DATA + disp, "{what}: FDP");
            let host_fdp = u32_at(&want.env, 20);
            if host_fdp != 0 {
                assert_eq!(host_fdp, (want.rsi + disp) as u32, "{what}: host FDP");
            }
        }
    }
}

const THIRD: f64 = 1.0 / 3.0;

/// Rounding control and precision control combinations: (RC << 10) | (PC << 8), all masked.
fn control_words() -> [u16; 7] {
    [0x037f, 0x077f, 0x0b7f, 0x0f7f, 0x007f, 0x027f, 0x0c7f]
}

macro_rules! native_test {
    ($name:ident, $insn:literal, $starts:expr) => {
        #[test]
        fn $name() {
            compare($insn, native!($insn), &$starts);
        }
    };
}

native_test!(
    test_fld_m32_matches_native,
    "fld dword ptr [rsi]",
    [
        Start::new(&[]).at(0, &(-49.0f32).to_le_bytes()),
        Start::new(&[1.0]).at(0, &f32::from_bits(1).to_le_bytes()),
        Start::new(&[1.0; 8]).at(0, &0.125f32.to_le_bytes()),
        Start::new(&[]).at(0, &f32::from_bits(0x7f80_0001).to_le_bytes()),
    ]
);
native_test!(
    test_fld_m64_with_displacement_matches_native,
    "fld qword ptr [rsi + 8]",
    [
        Start::new(&[2.0]).at(8, &THIRD.to_le_bytes()),
        Start::new(&[]).at(8, &f64::from_bits(5).to_le_bytes()),
    ]
);
native_test!(
    test_fld_m80_matches_native,
    "fld tbyte ptr [rsi]",
    [
        Start::new(&[]).at(
            0,
            &[0x35, 0xc2, 0x68, 0x21, 0xa2, 0xda, 0x0f, 0xc9, 0x00, 0x40]
        ),
        Start::new(&[3.0]).at(0, &[1, 0, 0, 0, 0, 0, 0, 0, 0x34, 0x12]),
    ]
);
native_test!(
    test_fstp_m80_matches_native,
    "fstp tbyte ptr [rsi + 4]",
    [Start::new(&[THIRD, 1.0]), Start::new(&[])]
);
native_test!(
    test_fst_m32_rounds_like_native,
    "fst dword ptr [rsi]",
    control_words().map(|cw| Start::new(&[0.1, 1.0]).fcw(cw))
);
native_test!(
    test_fstp_m64_matches_native,
    "fstp qword ptr [rsi]",
    [
        Start::new(&[]).raw([0xff; 10]),
        Start::new(&[1e300]).raw([0, 0, 0, 0, 0, 0, 0, 0x80, 0xff, 0x7f]),
        Start::new(&[-0.0]),
    ]
);
native_test!(
    test_fst_m32_overflow_unmasked_stores_nothing_like_native,
    "fst dword ptr [rsi]",
    [
        Start::new(&[1e300]).fcw(0x0377),
        Start::new(&[1e-300]).fcw(0x036f),
        Start::new(&[1e300]).fcw(0x037f)
    ]
);
native_test!(
    test_fild_m16_matches_native,
    "fild word ptr [rsi]",
    [Start::new(&[]).at(0, &(-1234i16).to_le_bytes())]
);
native_test!(
    test_fild_m32_matches_native,
    "fild dword ptr [rsi]",
    [Start::new(&[1.0]).at(0, &i32::MIN.to_le_bytes())]
);
native_test!(
    test_fild_m64_matches_native,
    "fild qword ptr [rsi]",
    [Start::new(&[]).at(0, &(i64::MAX - 1).to_le_bytes())]
);
native_test!(
    test_fistp_m32_rounds_like_native,
    "fistp dword ptr [rsi + 8]",
    control_words().map(|cw| Start::new(&[-2.5]).fcw(cw))
);
native_test!(
    test_fistp_m16_out_of_range_matches_native,
    "fistp word ptr [rsi]",
    [
        Start::new(&[70000.0]),
        Start::new(&[70000.0]).fcw(0x037e),
        Start::new(&[]),
    ]
);
native_test!(
    test_fistp_m64_matches_native,
    "fistp qword ptr [rsi]",
    [Start::new(&[-9.007_199_254_740_993e15, 0.0])]
);
native_test!(
    test_fist_m32_matches_native,
    "fist dword ptr [rsi]",
    [Start::new(&[123.75]).fcw(0x0f7f)]
);
native_test!(
    test_fisttp_m32_truncates_like_native,
    "fisttp dword ptr [rsi]",
    [Start::new(&[-2.7]), Start::new(&[2.7])]
);
native_test!(
    test_fbstp_matches_native,
    "fbstp tbyte ptr [rsi]",
    [Start::new(&[-123456789.0])]
);
native_test!(
    test_fbld_matches_native,
    "fbld tbyte ptr [rsi]",
    [Start::new(&[]).at(0, &[0x89, 0x67, 0x45, 0x23, 0x01, 0, 0, 0, 0, 0x80])]
);
native_test!(
    test_fimul_m16_matches_native,
    "fimul word ptr [rsi + 8]",
    [Start::new(&[0.125, -49.0]).at(8, &406i16.to_le_bytes())]
);
native_test!(
    test_fiadd_m32_matches_native,
    "fiadd dword ptr [rsi]",
    [Start::new(&[0.5]).at(0, &i32::MAX.to_le_bytes())]
);
native_test!(
    test_fidivr_m16_matches_native,
    "fidivr word ptr [rsi]",
    control_words().map(|cw| Start::new(&[3.0]).fcw(cw).at(0, &1i16.to_le_bytes()))
);
native_test!(
    test_ficomp_m32_matches_native,
    "ficomp dword ptr [rsi]",
    [
        Start::new(&[5.0]).at(0, &5i32.to_le_bytes()),
        Start::new(&[4.0]).at(0, &5i32.to_le_bytes()),
    ]
);
native_test!(
    test_fdiv_m64_rounds_like_native,
    "fdiv qword ptr [rsi]",
    control_words().map(|cw| Start::new(&[1.0]).fcw(cw).at(0, &3.0f64.to_le_bytes()))
);
native_test!(
    test_fdiv_m64_by_zero_matches_native,
    "fdiv qword ptr [rsi]",
    [
        Start::new(&[1.0]).at(0, &0.0f64.to_le_bytes()),
        Start::new(&[0.0]).at(0, &0.0f64.to_le_bytes()),
        // Unmasked: ZE and ES set, ST0 unchanged, no SIGFPE in the VMM.
        Start::new(&[1.0]).fcw(0x037b).at(0, &0.0f64.to_le_bytes()),
    ]
);
native_test!(
    test_fadd_m32_denormal_matches_native,
    "fadd dword ptr [rsi]",
    [Start::new(&[1.0]).at(0, &f32::from_bits(3).to_le_bytes())]
);
native_test!(
    test_fsubr_m32_matches_native,
    "fsubr dword ptr [rsi]",
    [Start::new(&[THIRD]).at(0, &0.1f32.to_le_bytes())]
);
native_test!(
    test_fmul_m64_matches_native,
    "fmul qword ptr [rsi]",
    [Start::new(&[1e308]).at(0, &10.0f64.to_le_bytes())]
);
native_test!(
    test_fcom_m32_matches_native,
    "fcomp dword ptr [rsi]",
    [Start::new(&[1.0]).at(0, &f32::NAN.to_le_bytes())]
);
native_test!(
    test_faddp_register_matches_native,
    "faddp st(1), st",
    [Start::new(&[-49.0, 50.75]), Start::new(&[1.0])]
);
native_test!(
    test_fadd_to_st5_matches_native,
    "fadd st(5), st",
    [Start::new(&[THIRD, 1.0, 2.0, 3.0, 4.0, 5.0])]
);
native_test!(
    test_fsubrp_st3_matches_native,
    "fsubrp st(3), st",
    [Start::new(&[0.1, 1.0, 2.0, 0.2])]
);
native_test!(
    test_fmul_st0_st2_matches_native,
    "fmul st, st(2)",
    [Start::new(&[THIRD, 1.0, 3.0])]
);
native_test!(
    test_fdivr_st0_st1_matches_native,
    "fdivr st, st(1)",
    control_words().map(|cw| Start::new(&[7.0, 1.0]).fcw(cw))
);
native_test!(
    test_fcomi_sets_flags_like_native,
    "fcomi st, st(1)",
    [
        Start::new(&[1.0, 2.0]),
        Start::new(&[2.0, 1.0]).flags(0x2c3),
        Start::new(&[1.0, 1.0]),
        Start::new(&[f64::NAN, 1.0]),
    ]
);
native_test!(
    test_fucomip_sets_flags_like_native,
    "fucomip st, st(2)",
    [
        Start::new(&[1.0, 5.0, 2.0]),
        Start::new(&[f64::NAN, 5.0, 1.0])
    ]
);
native_test!(
    test_fcmovb_reads_flags_like_native,
    "fcmovb st, st(1)",
    [
        Start::new(&[1.0, 2.0]).flags(0x203),
        Start::new(&[1.0, 2.0]).flags(0x202),
    ]
);
native_test!(
    test_fcmovnbe_reads_flags_like_native,
    "fcmovnbe st, st(3)",
    [
        Start::new(&[1.0, 2.0, 3.0, 4.0]).flags(0x202),
        Start::new(&[1.0, 2.0, 3.0, 4.0]).flags(0x242),
    ]
);
native_test!(
    test_fld_st_onto_full_stack_matches_native,
    "fld st(3)",
    [Start::new(&[1.0; 8]), Start::new(&[1.0, 2.0, 3.0, 4.0])]
);
native_test!(
    test_fxch_st4_matches_native,
    "fxch st(4)",
    [Start::new(&[1.0, 2.0, 3.0, 4.0, 5.0]), Start::new(&[1.0])]
);
native_test!(
    test_fstp_st0_matches_native,
    "fstp st(0)",
    [Start::new(&[0.0])]
);
native_test!(
    test_fsqrt_matches_native,
    "fsqrt",
    control_words().map(|cw| Start::new(&[2.0]).fcw(cw))
);
native_test!(
    test_fsin_matches_native,
    "fsin",
    [Start::new(&[1.0]), Start::new(&[1e30])]
);
native_test!(
    test_fpatan_matches_native,
    "fpatan",
    [Start::new(&[3.0, 1.0])]
);
native_test!(
    test_fyl2x_matches_native,
    "fyl2x",
    [Start::new(&[10.0, 1.0])]
);
native_test!(
    test_fprem_matches_native,
    "fprem",
    [Start::new(&[1e10, 7.0]), Start::new(&[1e300, 3.0])]
);
native_test!(
    test_frndint_matches_native,
    "frndint",
    control_words().map(|cw| Start::new(&[-2.5]).fcw(cw))
);
native_test!(
    test_fldpi_rounds_like_native,
    "fldpi",
    control_words().map(|cw| Start::new(&[]).fcw(cw))
);
native_test!(
    test_fxam_matches_native,
    "fxam",
    [
        Start::new(&[]),
        Start::new(&[-0.0]),
        Start::new(&[f64::INFINITY]),
        Start::new(&[f64::from_bits(1)])
    ]
);
native_test!(
    test_fscale_matches_native,
    "fscale",
    [Start::new(&[1.5, 10.9])]
);
native_test!(
    test_ffreep_matches_native,
    "ffreep st(2)",
    [Start::new(&[1.0, 2.0, 3.0])]
);
native_test!(test_fdecstp_matches_native, "fdecstp", [Start::new(&[1.0])]);

#[test]
fn test_x87_in_32bit_mode_matches_64bit_native_and_records_pointers() {
    // Arrange: the same bytes (no REX) run in 32-bit protected mode, operand at [esi + 4].
    let native = native!("fld dword ptr [rsi + 4]");
    let start = Start::new(&[]).at(4, &1.5f32.to_le_bytes());
    let want = native(&start);
    // Act
    let (state, _, outcome) = emulated(&start, &want.bytes, flat32_state);
    // Assert
    assert!(matches!(outcome, Outcome::Emulated(_)), "{outcome:?}");
    assert_eq!(state.fpu.fsw, u16_at(&want.img, 2));
    assert_eq!(state.fpu.fpr[0][..10], want.img[32..42]);
    assert_eq!(state.fpu.last_ip, CODE);
    assert_eq!(state.fpu.last_dp, DATA + 4);
    assert_eq!(state.fpu.last_opcode, 0x146);
}

#[test]
fn test_x87_register_form_keeps_data_pointer() {
    // Arrange
    let mut state = Start::new(&[1.0, 2.0]).state(long_mode_state);
    state.fpu.last_dp = 0x1234;
    let mem = memory();
    // Act: faddp st(1), st
    let outcome = run(&mut state, &mem, &[0xde, 0xc1]);
    // Assert
    assert!(matches!(outcome, Outcome::Emulated(_)));
    assert_eq!(state.fpu.last_dp, 0x1234);
    assert_eq!(state.fpu.last_opcode, 0x6c1);
    assert_eq!(state.fpu.last_ip, CODE);
}

#[test]
fn test_x87_after_unmasked_exception_raises_mf() {
    // Arrange: 1/0 with ZE unmasked leaves ES set.
    let start = Start::new(&[1.0]).fcw(0x037b).at(0, &0.0f64.to_le_bytes());
    let (mut state, _, outcome) = emulated(&start, &[0xdc, 0x36], long_mode_state);
    assert!(matches!(outcome, Outcome::Emulated(_)));
    assert_ne!(state.fpu.fsw & 0x80, 0);
    let before = state;
    let mem = memory();
    // Act: fld1
    let outcome = run(&mut state, &mem, &[0xd9, 0xe8]);
    // Assert
    assert_eq!(injected(&outcome), Some((16, None)));
    assert_eq!(state.fpu.fsw, before.fpu.fsw);
    assert_eq!(state.regs.rip, before.regs.rip);
}

#[test]
fn test_x87_with_ts_set_raises_nm() {
    let mut state = Start::new(&[1.0]).state(long_mode_state);
    state.sregs.cr0 |= crate::emulate::cpu::cr::CR0_TS;
    let mem = memory();
    assert_eq!(
        injected(&run(&mut state, &mem, &[0xd9, 0xe8])),
        Some((7, None))
    );
}

#[test]
fn test_x87_load_from_unmapped_page_faults_and_leaves_state() {
    // Arrange: unmap the page at 0x5000.
    let mut state = Start::new(&[1.0]).state(long_mode_state);
    let mem = memory();
    mem.write_obj(0u64, GuestAddress(PT0 + 5 * 8)).unwrap();
    state.regs.rsi = 0x5000;
    let before = state;
    // Act: fld dword [rsi]
    let outcome = run(&mut state, &mem, &[0xd9, 0x06]);
    // Assert
    assert_eq!(injected(&outcome), Some((14, Some(0))));
    assert_eq!(state.fpu.fsw, before.fpu.fsw);
    assert_eq!(state.fpu.ftwx, before.fpu.ftwx);
}

#[test]
fn test_x87_store_to_read_only_page_faults_without_popping() {
    // Arrange: the page at 0x5000 present but read-only.
    let mut state = Start::new(&[1.0]).state(long_mode_state);
    let mem = memory();
    mem.write_obj(0x5005u64, GuestAddress(PT0 + 5 * 8)).unwrap();
    state.regs.rsi = 0x5000;
    let before = state;
    // Act: fstp qword [rsi]
    let outcome = run(&mut state, &mem, &[0xdd, 0x1e]);
    // Assert: #PF, present + write.
    assert_eq!(injected(&outcome), Some((14, Some(3))));
    assert_eq!(state.fpu.fsw, before.fpu.fsw);
    assert_eq!(state.fpu.ftwx, before.fpu.ftwx);
}

#[test]
fn test_x87_every_host_form_runs_and_has_a_name() {
    // Every form the emulator accepts, with every ST(i), from a half-full stack: it runs on
    // the host (no SIGILL/SIGFPE in this process) and the statistics can name it.
    let start = Start::new(&[1.5, -2.0, 3.0, 0.25]).at(0, &[0x40; 16]);
    let mut count = 0;
    for op in 0xd8..=0xdfu8 {
        for modrm in (0..8u8).map(|r| (r << 3) | 6).chain(0xc0..=0xff) {
            let instr =
                iced_x86::Decoder::new(64, &[op, modrm], iced_x86::DecoderOptions::NONE).decode();
            if !handles(instr.code()) || instr.code() == Code::Fnsetpm {
                continue;
            }
            // Act
            let (state, _, outcome) = emulated(&start, &[op, modrm], long_mode_state);
            // Assert
            assert!(
                matches!(outcome, Outcome::Emulated(_)),
                "{op:02x} {modrm:02x}: {outcome:?}"
            );
            assert_eq!(
                state.fpu.last_opcode,
                (u16::from(op & 7) << 8) | u16::from(modrm)
            );
            assert!(
                crate::emulate::stats::mnemonic_name(instr.mnemonic()).is_some(),
                "{:?}",
                instr.mnemonic()
            );
            count += 1;
        }
    }
    assert!(count > 400, "{count} forms");
}

#[repr(C, align(16))]
struct Probe([u8; 512]);

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
fn native_probe(steps: usize) -> ([u8; 512], [u8; 24], u64) {
    let (mut backup, mut out, mut data) = (Probe([0; 512]), Probe([0; 512]), [0u8; 24]);
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

/// Runs `program` through the emulator after FNINIT, each instruction at the RIP the previous
/// one left: (state, the 24 bytes at DATA).
fn emulated_program(program: &[&[u8]], rsi: u64, setup: &[(u64, &[u8])]) -> (CpuState, [u8; 24]) {
    let mut state = long_mode_state();
    let mem = memory();
    for (addr, bytes) in setup {
        mem.write_slice(bytes, GuestAddress(*addr)).unwrap();
    }
    state.regs.rsi = rsi;
    assert!(matches!(
        run(&mut state, &mem, &[0xdb, 0xe3]),
        Outcome::Emulated(_)
    ));
    for bytes in program {
        let outcome = run(&mut state, &mem, bytes);
        assert!(
            matches!(outcome, Outcome::Emulated(_)),
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
        let (img, native_data, native_flags) = native_probe(steps);
        let (state, data) = emulated_program(&PROBE[..steps], DATA, &[]);
        // Assert: FSW (with TOP and ZE), abridged tags, the stack, memory.
        let fsw = u16_at(&img, 2);
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

/// memtest86+ 6.10's AMD temperature read (x64 image, RIP 0x108483), memory operands moved
/// from RIP and RSP to RSI: `fldz; fstp st(0); fld dword [-49.0]; fnstcw [rsi+0xe];
/// fld dword [0.125]; fimul word [rsi+8]; faddp st(1),st; fldcw [rsi+0xc];
/// fistp dword [rsi+8]; fldcw [rsi+0xe]`, with the 11-bit reading `raw` at [rsi+8] and
/// FCW | 0x0c00 (truncate) at [rsi+0xc], as memtest stores them between the instructions.
fn memtest_temperature(raw: i16) -> (i32, u16) {
    const MINUS_49: u64 = DATA + 0x10;
    const EIGHTH: u64 = DATA + 0x14;
    let program: [&[u8]; 10] = [
        &[0xd9, 0xee],
        &[0xdd, 0xd8],
        &[0xd9, 0x04, 0x25, 0x10, 0x00, 0x20, 0x00],
        &[0xd9, 0x7e, 0x0e],
        &[0xd9, 0x04, 0x25, 0x14, 0x00, 0x20, 0x00],
        &[0xde, 0x4e, 0x08],
        &[0xde, 0xc1],
        &[0xd9, 0x6e, 0x0c],
        &[0xdb, 0x5e, 0x08],
        &[0xd9, 0x6e, 0x0e],
    ];
    let truncating = 0x0f7fu16.to_le_bytes();
    let (state, data) = emulated_program(
        &program,
        DATA,
        &[
            (MINUS_49, &(-49.0f32).to_le_bytes()),
            (EIGHTH, &0.125f32.to_le_bytes()),
            (DATA + 8, &raw.to_le_bytes()),
            (DATA + 0xc, &truncating),
        ],
    );
    let result = i32::from_le_bytes(data[8..12].try_into().unwrap());
    (result, state.fpu.fsw)
}

#[test]
fn test_memtest_temperature_sequence_matches_native_arithmetic() {
    for raw in [0i16, 1, 392, 407, 2047] {
        // Arrange: the same computation natively: trunc(-49 + raw * 0.125).
        let mut native: i32 = 0;
        let value = raw;
        // SAFETY: x87 only, on two locals; the stack ends empty and FCW is restored.
        unsafe {
            core::arch::asm!(
                "sub rsp, 16",
                "fnstcw [rsp]",
                "mov ax, [rsp]",
                "or ah, 0x0c",
                "mov [rsp + 2], ax",
                "fld dword ptr [{m49}]",
                "fld dword ptr [{e}]",
                "fimul word ptr [{v}]",
                "faddp st(1), st",
                "fldcw [rsp + 2]",
                "fistp dword ptr [{out}]",
                "fldcw [rsp]",
                "add rsp, 16",
                m49 = in(reg) &(-49.0f32),
                e = in(reg) &0.125f32,
                v = in(reg) &value,
                out = in(reg) &mut native,
                out("ax") _,
            );
        }
        // Act
        let (emulated, fsw) = memtest_temperature(raw);
        // Assert: same integer, empty stack (TOP back at 0), only PE possibly raised.
        assert_eq!(emulated, native, "raw {raw}");
        assert_eq!(emulated, (-49.0 + f64::from(raw) * 0.125).trunc() as i32);
        assert_eq!(fsw & !0x20 & !0x200, 0, "FSW {fsw:#x}");
    }
}

#[test]
fn test_x87_inexact_division_matches_native_in_every_mode() {
    // 1/3 was refused by the old exact-f64 subset; now it is the host's result.
    let starts = control_words().map(|cw| Start::new(&[3.0, 1.0]).fcw(cw));
    compare("fdivrp", native!("fdivrp st(1), st"), &starts);
}

#[test]
fn test_x87_stats_count_emulated_instructions() {
    let mut state = Start::new(&[]).state(long_mode_state);
    let mem = memory();
    let mut stats = EmulationStats::default();
    crate::emulate::emulate(&mut state, &mem, Some(&[0xd9, 0xe8]), &mut stats).unwrap();
    crate::emulate::emulate(&mut state, &mem, Some(&[0xde, 0xc9]), &mut stats).unwrap();
    assert_eq!(stats.to_string(), "emulated: total 2 (fld1 1, fmulp 1)");
}
