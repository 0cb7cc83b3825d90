//! x87 control instructions: FWAIT, FNINIT, FNCLEX, FNSTSW, FNSTCW, FLDCW (and their waiting
//! FINIT/FCLEX/FSTSW/FSTCW forms, which iced decodes as one instruction with the 9B prefix).

use iced_x86::{Code, Register};

use super::cpu::{cr, GuestMemoryAccess};
use super::{check_x87, Ctx, Fault, Stop};

/// FSW exception flags (IE..PE), stack fault, error summary and busy.
const FSW_EXCEPTIONS: u16 = 0x3f;
const FSW_SF: u16 = 1 << 6;
const FSW_ES: u16 = 1 << 7;
const FSW_B: u16 = 1 << 15;

pub(crate) fn emulate<M: GuestMemoryAccess + ?Sized>(ctx: &mut Ctx<'_, M>) -> Result<(), Stop> {
    let code = ctx.instr.code();
    if matches!(
        code,
        Code::Wait
            | Code::Finit
            | Code::Fclex
            | Code::Fstsw_AX
            | Code::Fstsw_m2byte
            | Code::Fstcw_m2byte
    ) {
        fwait(ctx)?;
    }
    if code == Code::Wait {
        return Ok(());
    }
    check_x87(ctx.state)?;
    match code {
        Code::Fninit | Code::Finit => fninit(ctx),
        Code::Fnclex | Code::Fclex => {
            ctx.state.fpu.fsw &= !(FSW_EXCEPTIONS | FSW_SF | FSW_ES | FSW_B);
            ctx.wb.fpu = true;
        }
        Code::Fnstsw_AX | Code::Fstsw_AX => {
            let fsw = ctx.state.fpu.fsw;
            ctx.state.set_gpr(Register::AX, u64::from(fsw))?;
        }
        Code::Fnstsw_m2byte | Code::Fstsw_m2byte => {
            ctx.write_mem(&ctx.state.fpu.fsw.to_le_bytes())?
        }
        Code::Fnstcw_m2byte | Code::Fstcw_m2byte => {
            ctx.write_mem(&ctx.state.fpu.fcw.to_le_bytes())?
        }
        Code::Fldcw_m2byte => fldcw(ctx)?,
        _ => return Err(Stop::Unsupported("x87 form")),
    }
    Ok(())
}

/// FWAIT: #NM if CR0.MP and CR0.TS, #MF if an unmasked exception is pending.
fn fwait<M: GuestMemoryAccess + ?Sized>(ctx: &Ctx<'_, M>) -> Result<(), Stop> {
    let cr0 = ctx.state.sregs.cr0;
    if cr0 & cr::CR0_MP != 0 && cr0 & cr::CR0_TS != 0 {
        return Err(Fault::NM.into());
    }
    pending_exception(ctx)
}

/// A waiting x87 instruction with FSW.ES set raises #MF (native error reporting, CR0.NE=1).
pub(crate) fn pending_exception<M: GuestMemoryAccess + ?Sized>(
    ctx: &Ctx<'_, M>,
) -> Result<(), Stop> {
    if ctx.state.fpu.fsw & FSW_ES == 0 {
        return Ok(());
    }
    if ctx.state.sregs.cr0 & cr::CR0_NE == 0 {
        return Err(Stop::Unsupported(
            "pending x87 exception with legacy FERR# reporting (CR0.NE=0)",
        ));
    }
    Err(Fault::MF.into())
}

/// FNINIT: default control word, empty stack, cleared status and pointers.
fn fninit<M: GuestMemoryAccess + ?Sized>(ctx: &mut Ctx<'_, M>) {
    let fpu = &mut ctx.state.fpu;
    fpu.fcw = 0x037f;
    fpu.fsw = 0;
    fpu.ftwx = 0;
    fpu.last_opcode = 0;
    fpu.last_ip = 0;
    fpu.last_dp = 0;
    ctx.wb.fpu = true;
}

/// FLDCW: a waiting instruction; the new mask recomputes the error summary and busy bits.
fn fldcw<M: GuestMemoryAccess + ?Sized>(ctx: &mut Ctx<'_, M>) -> Result<(), Stop> {
    pending_exception(ctx)?;
    let mut buf = [0u8; 2];
    ctx.read_mem(&mut buf)?;
    let fcw = u16::from_le_bytes(buf);
    let fpu = &mut ctx.state.fpu;
    fpu.fcw = fcw;
    let unmasked = fpu.fsw & FSW_EXCEPTIONS & !fcw;
    if unmasked != 0 {
        fpu.fsw |= FSW_ES | FSW_B;
    } else {
        fpu.fsw &= !(FSW_ES | FSW_B);
    }
    ctx.wb.fpu = true;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::emulate::testutil::{injected, long_mode_state, memory, run, DATA};
    use crate::emulate::Outcome;
    use vm_memory::{Bytes, GuestAddress};

    /// Native x87 state after `fninit; fld1; fldz; fdivp` (a masked divide-by-zero: ZE set),
    /// then FLDCW `fcw`, as (FSW before FLDCW, FSW after, FSW after FNCLEX).
    fn native_divide_by_zero(fcw: u16) -> (u16, u16, u16) {
        let (mut before, mut after, mut cleared) = (0u16, 0u16, 0u16);
        // SAFETY: x87 state is per thread; the sequence only touches the x87 registers and the
        // three local u16 outputs, and ends with FNINIT so the thread's x87 state is reset.
        unsafe {
            core::arch::asm!(
                "fninit",
                "fld1",
                "fldz",
                "fdivp st(1), st",
                "fnstsw word ptr [{b}]",
                "fldcw word ptr [{cw}]",
                "fnstsw word ptr [{a}]",
                "fnclex",
                "fnstsw word ptr [{c}]",
                "fninit",
                b = in(reg) &mut before,
                a = in(reg) &mut after,
                c = in(reg) &mut cleared,
                cw = in(reg) &fcw,
                options(nostack),
            );
        }
        (before, after, cleared)
    }

    #[test]
    fn test_fninit_resets_state_like_native() {
        // Arrange
        let (mut native_fcw, mut native_fsw) = (0u16, 0u16);
        // SAFETY: per-thread x87 state; FNINIT then stores to two local u16s.
        unsafe {
            core::arch::asm!("fninit", "fnstcw [{0}]", "fnstsw [{1}]", in(reg) &mut native_fcw, in(reg) &mut native_fsw, options(nostack));
        }
        let mut state = long_mode_state();
        state.fpu.fcw = 0x0040;
        state.fpu.fsw = 0x3884;
        state.fpu.ftwx = 0xff;
        state.fpu.last_ip = 0x1234;
        let mem = memory();
        // Act
        let outcome = run(&mut state, &mem, &[0xdb, 0xe3]);
        // Assert
        assert!(matches!(outcome, Outcome::Emulated(wb) if wb.fpu));
        assert_eq!(state.fpu.fcw, native_fcw);
        assert_eq!(state.fpu.fsw, native_fsw);
        assert_eq!(state.fpu.ftwx, 0);
        assert_eq!(state.fpu.last_ip, 0);
        assert_eq!(state.regs.rip, crate::emulate::testutil::CODE + 2);
    }

    #[test]
    fn test_fnclex_clears_exceptions_like_native() {
        let (before, _, cleared) = native_divide_by_zero(0x037f);
        let mut state = long_mode_state();
        state.fpu.fsw = before;
        let mem = memory();
        run(&mut state, &mem, &[0xdb, 0xe2]);
        assert_ne!(before & FSW_EXCEPTIONS, 0);
        assert_eq!(state.fpu.fsw, cleared);
    }

    #[test]
    fn test_fldcw_unmasking_pending_sets_es_like_native() {
        // Arrange: ZE pending, load a control word with ZM clear.
        let fcw = 0x037b;
        let (before, after, _) = native_divide_by_zero(fcw);
        let mut state = long_mode_state();
        state.fpu.fsw = before;
        let mem = memory();
        mem.write_obj(fcw, GuestAddress(DATA)).unwrap();
        state.regs.rbx = DATA;
        // Act: fldcw [rbx]
        run(&mut state, &mem, &[0xd9, 0x2b]);
        // Assert
        assert_eq!(state.fpu.fcw, fcw);
        assert_eq!(state.fpu.fsw, after);
    }

    #[test]
    fn test_fnstsw_ax_and_memory_store_status_word() {
        let (before, _, _) = native_divide_by_zero(0x037f);
        let mut state = long_mode_state();
        state.fpu.fsw = before;
        state.regs.rax = 0xffff_ffff_ffff_ffff;
        let mem = memory();
        run(&mut state, &mem, &[0xdf, 0xe0]); // fnstsw ax
        assert_eq!(state.regs.rax, 0xffff_ffff_ffff_0000 | u64::from(before));
        state.regs.rdi = DATA + 6;
        run(&mut state, &mem, &[0xdd, 0x3f]); // fnstsw [rdi]
        assert_eq!(mem.read_obj::<u16>(GuestAddress(DATA + 6)).unwrap(), before);
    }

    #[test]
    fn test_fnstcw_stores_control_word() {
        let mut state = long_mode_state();
        state.fpu.fcw = 0x027f;
        let mem = memory();
        state.regs.rsi = DATA;
        run(&mut state, &mem, &[0xd9, 0x3e]); // fnstcw [rsi]
        assert_eq!(mem.read_obj::<u16>(GuestAddress(DATA)).unwrap(), 0x027f);
    }

    #[test]
    fn test_x87_with_ts_set_raises_nm() {
        let mut state = long_mode_state();
        state.sregs.cr0 |= cr::CR0_TS;
        let mem = memory();
        assert_eq!(
            injected(&run(&mut state, &mem, &[0xdb, 0xe3])),
            Some((7, None))
        );
        // FWAIT needs MP as well as TS.
        state.sregs.cr0 &= !cr::CR0_MP;
        assert!(matches!(
            run(&mut state, &mem, &[0x9b]),
            Outcome::Emulated(_)
        ));
        state.sregs.cr0 |= cr::CR0_MP;
        assert_eq!(injected(&run(&mut state, &mem, &[0x9b])), Some((7, None)));
    }

    #[test]
    fn test_x87_with_em_set_raises_nm() {
        let mut state = long_mode_state();
        state.sregs.cr0 |= cr::CR0_EM;
        let mem = memory();
        assert_eq!(
            injected(&run(&mut state, &mem, &[0xdf, 0xe0])),
            Some((7, None))
        );
    }

    #[test]
    fn test_fwait_with_pending_exception_raises_mf() {
        let mut state = long_mode_state();
        state.fpu.fsw = 0x8084; // ZE, ES, B
        let mem = memory();
        assert_eq!(injected(&run(&mut state, &mem, &[0x9b])), Some((16, None)));
        // The no-wait forms ignore it.
        assert!(matches!(
            run(&mut state, &mem, &[0xdb, 0xe2]),
            Outcome::Emulated(_)
        ));
        assert!(matches!(
            run(&mut state, &mem, &[0x9b]),
            Outcome::Emulated(_)
        ));
    }
}
