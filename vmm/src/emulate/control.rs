//! Control instructions: INT3 / INT n / INTO, CLAC / STAC, the CET no-ops (ENDBR32/64,
//! RDSSPD/Q without CET) and IRET (see `iret.rs`).

use iced_x86::Code;

use super::cpu::{cr, flags, CpuMode, GuestMemoryAccess};
use super::paging::{self, Access};
use super::{iret, Ctx, Fault, Stop};

pub(crate) fn emulate<M: GuestMemoryAccess + ?Sized>(ctx: &mut Ctx<'_, M>) -> Result<(), Stop> {
    match ctx.instr.code() {
        Code::Int3 => software_interrupt(ctx, 3),
        Code::Int_imm8 => software_interrupt(ctx, ctx.instr.immediate8()),
        Code::Into => {
            if ctx.state.regs.rflags & flags::OF == 0 {
                return Ok(());
            }
            software_interrupt(ctx, 4)
        }
        Code::Clac | Code::Stac => clac_stac(ctx),
        Code::Endbr32 | Code::Endbr64 => Ok(()),
        Code::Rdsspd_r32 | Code::Rdsspq_r64 => {
            // Without CET, RDSSP is a hint NOP and leaves its destination unchanged.
            if ctx.state.sregs.cr4 & cr::CR4_CET != 0 {
                return Err(Stop::Unsupported("RDSSP with CR4.CET set (shadow stacks)"));
            }
            Ok(())
        }
        Code::Iretw | Code::Iretd | Code::Iretq => iret::emulate(ctx),
        _ => Err(Stop::Unsupported("control instruction form")),
    }
}

/// CLAC / STAC: #UD unless CPL 0 and the guest has SMAP; clear or set RFLAGS.AC.
fn clac_stac<M: GuestMemoryAccess + ?Sized>(ctx: &mut Ctx<'_, M>) -> Result<(), Stop> {
    if !ctx.state.features.smap || ctx.state.cpl() != 0 {
        return Err(Fault::UD.into());
    }
    if ctx.instr.code() == Code::Clac {
        ctx.state.regs.rflags &= !flags::AC;
    } else {
        ctx.state.regs.rflags |= flags::AC;
    }
    Ok(())
}

/// INT n / INT3 / INTO: the checks a CPU makes before delivering a software interrupt (IOPL in
/// virtual-8086 mode, IDT limit, gate DPL >= CPL, gate present); the vCPU loop delivers it.
fn software_interrupt<M: GuestMemoryAccess + ?Sized>(
    ctx: &mut Ctx<'_, M>,
    vector: u8,
) -> Result<(), Stop> {
    let state = &*ctx.state;
    let idt_code = u32::from(vector) * 8 + 2;
    match state.mode() {
        CpuMode::Real => return Err(Stop::SoftwareInterrupt(vector)),
        CpuMode::Virtual8086 => {
            if state.sregs.cr4 & 1 != 0 {
                return Err(Stop::Unsupported("INT n in virtual-8086 mode with CR4.VME"));
            }
            if state.regs.rflags & flags::IOPL != flags::IOPL {
                return Err(Fault::gp(0).into());
            }
        }
        _ => {}
    }
    let gate_size: u64 = if state.sregs.efer & cr::EFER_LMA != 0 {
        16
    } else {
        8
    };
    let offset = u64::from(vector) * gate_size;
    if offset + gate_size - 1 > u64::from(state.sregs.idt.limit) {
        return Err(Fault::gp(idt_code).into());
    }
    let mut gate = [0u8; 8];
    let la = state.sregs.idt.base.wrapping_add(offset);
    paging::read_linear(state, ctx.mem, la, &mut gate, Access::SYSTEM_READ)?;
    let access = gate[5];
    let dpl = (access >> 5) & 3;
    if dpl < state.cpl() {
        return Err(Fault::gp(idt_code).into());
    }
    if access & 0x80 == 0 {
        return Err(Fault::np(idt_code).into());
    }
    Err(Stop::SoftwareInterrupt(vector))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::emulate::testutil::{
        flat32_state, injected, long_mode_state, memory, run, CODE, DATA,
    };
    use crate::emulate::{EventKind, Injection, Outcome};
    use vm_memory::{Bytes, GuestAddress};

    /// Puts a 64-bit IDT at DATA with present gates of DPL `dpl` for every vector.
    fn idt64(state: &mut crate::emulate::CpuState, mem: &vm_memory::GuestMemoryMmap, dpl: u8) {
        for v in 0..256u64 {
            let access = 0x8e | (dpl << 5);
            mem.write_obj(
                [0u8, 0, 0x10, 0, 0, access, 0, 0],
                GuestAddress(DATA + v * 16),
            )
            .unwrap();
        }
        state.sregs.idt.base = DATA;
        state.sregs.idt.limit = 0xfff;
    }

    #[test]
    fn test_int3_advances_rip_and_requests_vector3() {
        // Arrange
        let mut state = long_mode_state();
        let mem = memory();
        idt64(&mut state, &mem, 0);
        // Act
        let outcome = run(&mut state, &mem, &[0xcc]);
        // Assert
        let expected = Injection {
            vector: 3,
            error_code: None,
            cr2: None,
            kind: EventKind::SoftwareInterrupt,
        };
        assert_eq!(outcome, Outcome::Inject(expected));
        assert_eq!(state.regs.rip, CODE + 1);
    }

    #[test]
    fn test_int_n_returns_vector_and_rip_after_instruction() {
        let mut state = long_mode_state();
        let mem = memory();
        idt64(&mut state, &mem, 0);
        let outcome = run(&mut state, &mem, &[0xcd, 0x80]);
        assert!(matches!(
            outcome,
            Outcome::Inject(Injection {
                vector: 0x80,
                kind: EventKind::SoftwareInterrupt,
                ..
            })
        ));
        assert_eq!(state.regs.rip, CODE + 2);
    }

    #[test]
    fn test_int_n_gate_dpl_below_cpl_raises_gp_with_idt_selector() {
        let mut state = long_mode_state();
        let mem = memory();
        idt64(&mut state, &mem, 0);
        state.sregs.ss.dpl = 3;
        state.sregs.cs.dpl = 3;
        let outcome = run(&mut state, &mem, &[0xcd, 0x80]);
        assert_eq!(injected(&outcome), Some((13, Some(0x80 * 8 + 2))));
        assert_eq!(state.regs.rip, CODE);
    }

    #[test]
    fn test_int_n_beyond_idt_limit_raises_gp() {
        let mut state = long_mode_state();
        let mem = memory();
        idt64(&mut state, &mem, 0);
        state.sregs.idt.limit = 0x7ff;
        assert_eq!(
            injected(&run(&mut state, &mem, &[0xcd, 0x80])),
            Some((13, Some(0x402)))
        );
    }

    #[test]
    fn test_into_only_traps_with_of_set() {
        let mut state = flat32_state();
        let mem = memory();
        for v in 0..256u64 {
            mem.write_obj([0u8, 0, 0x10, 0, 0, 0x8e, 0, 0], GuestAddress(DATA + v * 8))
                .unwrap();
        }
        state.sregs.idt.base = DATA;
        state.sregs.idt.limit = 0x7ff;
        assert!(matches!(
            run(&mut state, &mem, &[0xce]),
            Outcome::Emulated(_)
        ));
        state.regs.rflags |= flags::OF;
        let outcome = run(&mut state, &mem, &[0xce]);
        assert!(matches!(
            outcome,
            Outcome::Inject(Injection { vector: 4, .. })
        ));
        assert_eq!(state.regs.rip, CODE + 2);
    }

    #[test]
    fn test_clac_stac_toggle_ac_at_cpl0() {
        let mut state = long_mode_state();
        let mem = memory();
        run(&mut state, &mem, &[0x0f, 0x01, 0xcb]); // stac
        assert_ne!(state.regs.rflags & flags::AC, 0);
        run(&mut state, &mem, &[0x0f, 0x01, 0xca]); // clac
        assert_eq!(state.regs.rflags & flags::AC, 0);
        assert_eq!(state.regs.rip, CODE + 6);
    }

    #[test]
    fn test_clac_at_cpl3_or_without_smap_raises_ud() {
        let mut state = long_mode_state();
        let mem = memory();
        state.sregs.ss.dpl = 3;
        assert_eq!(
            injected(&run(&mut state, &mem, &[0x0f, 0x01, 0xca])),
            Some((6, None))
        );
        state.sregs.ss.dpl = 0;
        state.features.smap = false;
        assert_eq!(
            injected(&run(&mut state, &mem, &[0x0f, 0x01, 0xcb])),
            Some((6, None))
        );
    }

    #[test]
    fn test_endbr_and_rdssp_are_nops_without_cet() {
        // Arrange: the host has no CET enabled for user space, so RDSSPQ is a NOP natively too.
        let mut native_rax = 0x1234_5678_u64;
        // SAFETY: RDSSPQ without CET is a NOP that at most writes RAX.
        unsafe { core::arch::asm!("endbr64", "rdsspq rax", inout("rax") native_rax) };
        let mut state = long_mode_state();
        state.regs.rax = 0x1234_5678;
        let mem = memory();
        // Act
        run(&mut state, &mem, &[0xf3, 0x0f, 0x1e, 0xfa]); // endbr64
        run(&mut state, &mem, &[0xf3, 0x48, 0x0f, 0x1e, 0xc8]); // rdsspq rax
                                                                // Assert
        assert_eq!(state.regs.rax, native_rax);
        assert_eq!(state.regs.rip, CODE + 9);
    }

    #[test]
    fn test_rdssp_with_cet_enabled_is_unsupported() {
        let mut state = long_mode_state();
        state.sregs.cr4 |= cr::CR4_CET;
        let mem = memory();
        let outcome = run(&mut state, &mem, &[0xf3, 0x48, 0x0f, 0x1e, 0xc8]);
        assert!(
            matches!(outcome, Outcome::Unsupported { ref mnemonic, .. } if mnemonic == "rdsspq")
        );
    }
}
