//! Runs one x87 instruction on the host CPU with the guest's x87 registers loaded, so every
//! result -- value, rounding and precision control, C0-C3, exception flags, stack faults, NaNs,
//! denormals, transcendentals -- is what this processor computes for the guest natively
//! (docs/decisions/0005-x87-host-execution.md).
//!
//! Nothing is assembled at run time. `strata_x87_stubs` is a table of precompiled two-byte x87
//! instructions, each followed by `ret`: for every escape opcode D8-DF, the eight memory forms
//! with their operand at `[rdi]` (ModRM mod=00 rm=111, `reg` = the opcode extension) and the 64
//! register forms (ModRM C0-FF). [`execute`] picks the slot of the guest instruction and
//!
//! 1. FXSAVEs the host thread's x87/SSE state;
//! 2. FXRSTORs an image holding the guest's FCW, FSW, abridged tags and ST0-ST7 (MXCSR at its
//!    reset value, so the image is always valid);
//! 3. puts the guest's arithmetic flags into RFLAGS (FCMOVcc reads them);
//! 4. calls the stub with RDI pointing at [`HostRun::mem`], a local copy of the memory operand;
//! 5. reads RFLAGS (FCOMI/FUCOMI write ZF/PF/CF), FXSAVEs the result and restores the host state.
//!
//! The caller moves the memory operand between guest memory and [`HostRun::mem`] through the
//! page walker and keeps the last-instruction pointers (FIP, FDP, FOP) itself: the host's are
//! host addresses.
//!
//! Why this cannot hurt the VMM: only instructions in [`runs_on_host`] are run, each touches
//! nothing but the x87 registers, the arithmetic flags and at most 10 bytes at RDI; the bytes
//! in the slot are checked to decode to the guest's instruction before they run. x87 exceptions
//! are reported at the next *waiting* x87 instruction, and FXSAVE/FXRSTOR do not wait, so an
//! exception the instruction raises becomes pending in the saved guest image, never a SIGFPE
//! here; one already pending in the guest state would be raised by the stub itself, so such a
//! state is refused.

use iced_x86::{Code, Decoder, DecoderOptions};
use kvm_bindings::kvm_fpu;

use super::cpu::flags;
use super::{Fault, Stop};

/// Bytes per stub: the two-byte instruction, `ret`, `int3` as padding.
const SLOT_SIZE: usize = 4;
/// Stubs per escape opcode: 8 memory forms, then 64 register forms.
const SLOTS_PER_OPCODE: usize = 72;

// The stub table, in .text. Slot (op - 0xd8) * 72 + reg holds `op (reg << 3 | 7); ret`,
// slot (op - 0xd8) * 72 + 8 + (modrm - 0xc0) holds `op modrm; ret`.
std::arch::global_asm!(
    ".pushsection .text.strata_x87_stubs,\"ax\",@progbits",
    ".balign 16",
    ".globl strata_x87_stubs",
    ".hidden strata_x87_stubs",
    "strata_x87_stubs:",
    ".set x87_op, 0xd8",
    ".rept 8",
    "  .set x87_reg, 0",
    "  .rept 8",
    "    .byte x87_op, (x87_reg << 3) | 7, 0xc3, 0xcc",
    "    .set x87_reg, x87_reg + 1",
    "  .endr",
    "  .set x87_modrm, 0xc0",
    "  .rept 64",
    "    .byte x87_op, x87_modrm, 0xc3, 0xcc",
    "    .set x87_modrm, x87_modrm + 1",
    "  .endr",
    "  .set x87_op, x87_op + 1",
    ".endr",
    ".popsection",
);

/// Number of slots in the stub table.
#[cfg(test)]
const STUBS: usize = 8 * SLOTS_PER_OPCODE;

/// A 16-byte aligned FXSAVE area.
#[repr(C, align(16))]
struct FxArea([u8; 512]);

/// What one host run reads and changes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct HostRun {
    /// In: the guest's x87 state. Out: FSW, abridged tags and ST0-ST7 after the instruction
    /// (FCW, the pointers and everything else as they were).
    pub fpu: kvm_fpu,
    /// In: the guest's RFLAGS. Out: with the arithmetic flags the instruction left.
    pub rflags: u64,
    /// The memory operand (at most 10 bytes are used).
    pub mem: [u8; 16],
}

/// Whether [`execute`] runs `code` on the host: the documented x87 instructions other than the
/// control ones (FNINIT, FNCLEX, FLDCW, FNSTCW, FNSTSW, FLDENV, FNSTENV, FRSTOR, FNSAVE) and
/// the 287-era no-ops (FNENI, FNDISI, FNSETPM, FRSTPM). The undocumented aliases
/// (`dc d0+i` FCOM, `d9 d8+i` FSTP, ...) are left out.
pub(crate) fn runs_on_host(code: Code) -> bool {
    is_memory_form(code) || is_register_form(code)
}

fn is_memory_form(code: Code) -> bool {
    use Code as C;
    matches!(
        code,
        C::Fadd_m32fp
            | C::Fmul_m32fp
            | C::Fcom_m32fp
            | C::Fcomp_m32fp
            | C::Fsub_m32fp
            | C::Fsubr_m32fp
            | C::Fdiv_m32fp
            | C::Fdivr_m32fp
            | C::Fadd_m64fp
            | C::Fmul_m64fp
            | C::Fcom_m64fp
            | C::Fcomp_m64fp
            | C::Fsub_m64fp
            | C::Fsubr_m64fp
            | C::Fdiv_m64fp
            | C::Fdivr_m64fp
            | C::Fiadd_m32int
            | C::Fimul_m32int
            | C::Ficom_m32int
            | C::Ficomp_m32int
            | C::Fisub_m32int
            | C::Fisubr_m32int
            | C::Fidiv_m32int
            | C::Fidivr_m32int
            | C::Fiadd_m16int
            | C::Fimul_m16int
            | C::Ficom_m16int
            | C::Ficomp_m16int
            | C::Fisub_m16int
            | C::Fisubr_m16int
            | C::Fidiv_m16int
            | C::Fidivr_m16int
            | C::Fld_m32fp
            | C::Fld_m64fp
            | C::Fld_m80fp
            | C::Fst_m32fp
            | C::Fst_m64fp
            | C::Fstp_m32fp
            | C::Fstp_m64fp
            | C::Fstp_m80fp
            | C::Fild_m16int
            | C::Fild_m32int
            | C::Fild_m64int
            | C::Fist_m16int
            | C::Fist_m32int
            | C::Fistp_m16int
            | C::Fistp_m32int
            | C::Fistp_m64int
            | C::Fisttp_m16int
            | C::Fisttp_m32int
            | C::Fisttp_m64int
            | C::Fbld_m80bcd
            | C::Fbstp_m80bcd
    )
}

fn is_register_form(code: Code) -> bool {
    use Code as C;
    matches!(
        code,
        C::Fadd_st0_sti
            | C::Fadd_sti_st0
            | C::Faddp_sti_st0
            | C::Fmul_st0_sti
            | C::Fmul_sti_st0
            | C::Fmulp_sti_st0
            | C::Fsub_st0_sti
            | C::Fsub_sti_st0
            | C::Fsubp_sti_st0
            | C::Fsubr_st0_sti
            | C::Fsubr_sti_st0
            | C::Fsubrp_sti_st0
            | C::Fdiv_st0_sti
            | C::Fdiv_sti_st0
            | C::Fdivp_sti_st0
            | C::Fdivr_st0_sti
            | C::Fdivr_sti_st0
            | C::Fdivrp_sti_st0
            | C::Fcom_st0_sti
            | C::Fcomp_st0_sti
            | C::Fcompp
            | C::Fucom_st0_sti
            | C::Fucomp_st0_sti
            | C::Fucompp
            | C::Fcomi_st0_sti
            | C::Fcomip_st0_sti
            | C::Fucomi_st0_sti
            | C::Fucomip_st0_sti
            | C::Fcmovb_st0_sti
            | C::Fcmove_st0_sti
            | C::Fcmovbe_st0_sti
            | C::Fcmovu_st0_sti
            | C::Fcmovnb_st0_sti
            | C::Fcmovne_st0_sti
            | C::Fcmovnbe_st0_sti
            | C::Fcmovnu_st0_sti
            | C::Fld_sti
            | C::Fst_sti
            | C::Fstp_sti
            | C::Fxch_st0_sti
            | C::Ffree_sti
            | C::Ffreep_sti
            | C::Fchs
            | C::Fabs
            | C::Ftst
            | C::Fxam
            | C::Fld1
            | C::Fldl2t
            | C::Fldl2e
            | C::Fldpi
            | C::Fldlg2
            | C::Fldln2
            | C::Fldz
            | C::F2xm1
            | C::Fyl2x
            | C::Fptan
            | C::Fpatan
            | C::Fxtract
            | C::Fprem1
            | C::Fdecstp
            | C::Fincstp
            | C::Fprem
            | C::Fyl2xp1
            | C::Fsqrt
            | C::Fsincos
            | C::Frndint
            | C::Fscale
            | C::Fsin
            | C::Fcos
            | C::Fnop
    )
}

/// The stub slot of escape opcode `op` with ModRM `modrm` (a memory form's addressing bits are
/// ignored: the stub's operand is always `[rdi]`), and the two bytes that slot holds.
fn slot(op: u8, modrm: u8) -> Option<(usize, [u8; 2])> {
    let base = usize::from(op.checked_sub(0xd8).filter(|&o| o < 8)?) * SLOTS_PER_OPCODE;
    if modrm >= 0xc0 {
        Some((base + 8 + usize::from(modrm - 0xc0), [op, modrm]))
    } else {
        let reg = (modrm >> 3) & 7;
        Some((base + usize::from(reg), [op, (reg << 3) | 7]))
    }
}

/// The address of the stub table.
fn stub_table() -> *const u8 {
    let table: *const u8;
    // SAFETY: only computes the address of the table `global_asm!` defines above.
    unsafe {
        core::arch::asm!(
            "lea {t}, [rip + strata_x87_stubs]",
            t = out(reg) table,
            options(pure, nomem, nostack, preserves_flags),
        );
    }
    table
}

/// The two instruction bytes held in stub `index` (for tests of the table's layout).
#[cfg(test)]
pub(crate) fn stub_bytes(index: usize) -> [u8; SLOT_SIZE] {
    assert!(index < STUBS);
    let mut out = [0u8; SLOT_SIZE];
    // SAFETY: the table is STUBS * SLOT_SIZE bytes of readable .text; `index` is in range.
    unsafe {
        core::ptr::copy_nonoverlapping(stub_table().add(index * SLOT_SIZE), out.as_mut_ptr(), 4);
    }
    out
}

/// Runs the instruction `code`, encoded as escape opcode `op` and ModRM `modrm`, on the host
/// with `run`'s state.
///
/// Fails with [`Stop::Unsupported`] if `code` is not in [`runs_on_host`], if the bytes do not
/// decode to `code`, or if the guest state has an unmasked x87 exception pending (the caller
/// raises #MF for that first); with #UD for FISTTP on a host without SSE3.
pub(crate) fn execute(code: Code, op: u8, modrm: u8, run: &mut HostRun) -> Result<(), Stop> {
    if !runs_on_host(code) {
        return Err(Stop::Unsupported("x87 instruction not run on the host"));
    }
    let (index, bytes) = slot(op, modrm).ok_or(Stop::Unsupported("x87 opcode"))?;
    if Decoder::new(64, &bytes, DecoderOptions::NONE)
        .decode()
        .code()
        != code
    {
        return Err(Stop::Unsupported("x87 encoding does not match its stub"));
    }
    if matches!(
        code,
        Code::Fisttp_m16int | Code::Fisttp_m32int | Code::Fisttp_m64int
    ) && !std::arch::is_x86_feature_detected!("sse3")
    {
        return Err(Fault::UD.into());
    }
    let fsw = run.fpu.fsw;
    if fsw & FSW_ES != 0 || fsw & !run.fpu.fcw & FSW_EXCEPTIONS != 0 {
        return Err(Stop::Unsupported("x87 exception pending"));
    }
    let mut image = guest_image(&run.fpu);
    let mut host = FxArea([0; 512]);
    let mut rflags = run.rflags & flags::STATUS;
    // SAFETY: `host` and `image` are 16-byte aligned 512-byte areas, as FXSAVE64/FXRSTOR64
    // need; `image` holds a valid MXCSR (0x1f80), the only field FXRSTOR checks. The host
    // thread's x87/SSE state (all XMM registers and MXCSR included) is saved first and restored
    // last, so no register the compiler uses changes. Only the status flags of RFLAGS are
    // replaced (DF stays clear). The stub at `index` holds exactly `bytes` followed by `ret`
    // (tested), `bytes` decode to `code`, which `runs_on_host` accepts: an x87 instruction that
    // touches only the x87 registers, the status flags and at most 10 bytes at RDI, which
    // points at the 16-byte `run.mem`. No x87 exception is pending (checked above), so the stub
    // cannot raise #MF; one it raises stays pending in `image` (FXSAVE and FXRSTOR do not
    // wait) and the host state restored afterwards has none. The call uses the stack, which
    // the block is allowed to (no `nostack`).
    unsafe {
        core::arch::asm!(
            "fxsave64 [{host}]",
            "fxrstor64 [{image}]",
            "pushfq",
            "and qword ptr [rsp], {keep}",
            "or qword ptr [rsp], {rflags}",
            "popfq",
            "call {stub}",
            "pushfq",
            "pop {rflags}",
            "fxsave64 [{image}]",
            "fxrstor64 [{host}]",
            host = in(reg) host.0.as_mut_ptr(),
            image = in(reg) image.0.as_mut_ptr(),
            keep = in(reg) !flags::STATUS,
            rflags = inout(reg) rflags,
            stub = in(reg) stub_table().wrapping_add(index * SLOT_SIZE),
            in("rdi") run.mem.as_mut_ptr(),
        );
    }
    let img = &image.0;
    run.fpu.fsw = u16::from_le_bytes([img[2], img[3]]);
    run.fpu.ftwx = img[4];
    for (i, st) in run.fpu.fpr.iter_mut().enumerate() {
        st[..10].copy_from_slice(&img[32 + 16 * i..42 + 16 * i]);
    }
    run.rflags = (run.rflags & !flags::STATUS) | (rflags & flags::STATUS);
    Ok(())
}

/// FSW exception flags IE..PE (also FCW's mask bits), error summary.
const FSW_EXCEPTIONS: u16 = 0x3f;
const FSW_ES: u16 = 1 << 7;
/// MXCSR after reset: all SIMD exceptions masked.
const MXCSR_DEFAULT: u32 = 0x1f80;

/// The FXSAVE image the stub runs on: the guest's x87 registers, nothing else.
fn guest_image(fpu: &kvm_fpu) -> FxArea {
    let mut area = FxArea([0; 512]);
    let img = &mut area.0;
    img[0..2].copy_from_slice(&fpu.fcw.to_le_bytes());
    img[2..4].copy_from_slice(&fpu.fsw.to_le_bytes());
    img[4] = fpu.ftwx;
    img[24..28].copy_from_slice(&MXCSR_DEFAULT.to_le_bytes());
    for (i, st) in fpu.fpr.iter().enumerate() {
        img[32 + 16 * i..42 + 16 * i].copy_from_slice(&st[..10]);
    }
    area
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every (opcode, ModRM) pair the stubs stand for: memory forms as `[rdi]`, register forms.
    fn all_forms() -> impl Iterator<Item = (u8, u8)> {
        (0xd8..=0xdf).flat_map(|op| {
            (0..8u8)
                .map(|reg| (reg << 3) | 7)
                .chain(0xc0..=0xff)
                .map(move |m| (op, m))
        })
    }

    #[test]
    fn test_stub_table_holds_each_form_followed_by_ret() {
        for (op, modrm) in all_forms() {
            // Arrange
            let (index, bytes) = slot(op, modrm).unwrap();
            // Act
            let stub = stub_bytes(index);
            // Assert
            assert_eq!(bytes, [op, modrm]);
            assert_eq!(stub, [op, modrm, 0xc3, 0xcc], "slot {index}");
        }
    }

    #[test]
    fn test_slot_of_memory_form_ignores_addressing() {
        // fimul word [rsp+8] (de 4c 24 08) runs as fimul word [rdi] (de 0f).
        assert_eq!(slot(0xde, 0x4c), slot(0xde, 0x0f));
        assert_eq!(slot(0xde, 0x4c).unwrap().1, [0xde, 0x0f]);
        assert_eq!(slot(0xd7, 0xc0), None);
    }

    #[test]
    fn test_runs_on_host_accepts_documented_forms_only() {
        // Arrange / Act: decode every form.
        let accepted: Vec<Code> = all_forms()
            .map(|(op, m)| {
                Decoder::new(64, &[op, m], DecoderOptions::NONE)
                    .decode()
                    .code()
            })
            .filter(|&c| runs_on_host(c))
            .collect();
        // Assert: 53 memory forms; register forms: 8 per ST(i) instruction.
        assert_eq!(accepted.iter().filter(|&&c| is_memory_form(c)).count(), 53);
        for code in [
            Code::Fldcw_m2byte,
            Code::Fnstenv_m28byte,
            Code::Fnsave_m108byte,
            Code::Fnstsw_AX,
            Code::Fninit,
            Code::Fcom_st0_sti_DCD0,
            Code::Fstpnce_sti,
            Code::Fxch_st0_sti_DDC8,
        ] {
            assert!(!runs_on_host(code), "{code:?}");
        }
    }

    #[test]
    fn test_execute_with_mismatched_bytes_is_refused() {
        let mut run = HostRun {
            fpu: kvm_fpu {
                fcw: 0x37f,
                ..Default::default()
            },
            rflags: 2,
            mem: [0; 16],
        };
        // d9 e8 is fld1, not fldz.
        assert_eq!(
            execute(Code::Fldz, 0xd9, 0xe8, &mut run),
            Err(Stop::Unsupported("x87 encoding does not match its stub"))
        );
        assert_eq!(run.fpu.fsw, 0);
    }

    #[test]
    fn test_execute_with_pending_exception_is_refused() {
        // ZE set and unmasked (FCW.ZM clear), without ES: still pending for this module.
        let mut run = HostRun {
            fpu: kvm_fpu {
                fcw: 0x37b,
                fsw: 0x0004,
                ..Default::default()
            },
            rflags: 2,
            mem: [0; 16],
        };
        assert_eq!(
            execute(Code::Fld1, 0xd9, 0xe8, &mut run),
            Err(Stop::Unsupported("x87 exception pending"))
        );
    }
}
