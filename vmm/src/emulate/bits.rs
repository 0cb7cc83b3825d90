//! Bit counting (POPCNT, LZCNT, TZCNT) and CMPXCHG8B / CMPXCHG16B.

use iced_x86::{Code, Register};
use vm_memory::GuestAddress;

use super::cpu::{flags, GuestMemoryAccess};
use super::paging::{self, Access};
use super::{Ctx, Fault, Stop};

pub(crate) fn emulate<M: GuestMemoryAccess + ?Sized>(ctx: &mut Ctx<'_, M>) -> Result<(), Stop> {
    match ctx.instr.code() {
        Code::Cmpxchg8b_m64 => cmpxchg8b(ctx),
        Code::Cmpxchg16b_m128 => cmpxchg16b(ctx),
        code => count(ctx, code),
    }
}

/// POPCNT / LZCNT / TZCNT r, r/m (16, 32 or 64 bits). Flags as Intel CPUs set them: the defined
/// ones (ZF; CF for LZCNT/TZCNT) and the others cleared. Without LZCNT/BMI1 in the guest's
/// CPUID the F3 prefix is ignored and the instruction is BSR/BSF.
fn count<M: GuestMemoryAccess + ?Sized>(ctx: &mut Ctx<'_, M>, code: Code) -> Result<(), Stop> {
    let size = ctx.instr.op0_register().size();
    let bits = (size * 8) as u32;
    let src = ctx.read_rm(1, size)?;
    let features = ctx.state.features;
    let (result, cf, zf) = match code {
        Code::Popcnt_r16_rm16 | Code::Popcnt_r32_rm32 | Code::Popcnt_r64_rm64 => {
            let n = u64::from(src.count_ones());
            (Some(n), false, src == 0)
        }
        Code::Lzcnt_r16_rm16 | Code::Lzcnt_r32_rm32 | Code::Lzcnt_r64_rm64 if features.lzcnt => {
            let n = if src == 0 {
                bits
            } else {
                src.leading_zeros() - (64 - bits)
            };
            (Some(u64::from(n)), src == 0, n == 0)
        }
        Code::Tzcnt_r16_rm16 | Code::Tzcnt_r32_rm32 | Code::Tzcnt_r64_rm64 if features.bmi1 => {
            let n = if src == 0 { bits } else { src.trailing_zeros() };
            (Some(u64::from(n)), src == 0, n == 0)
        }
        Code::Lzcnt_r16_rm16 | Code::Lzcnt_r32_rm32 | Code::Lzcnt_r64_rm64 => {
            // BSR: destination unchanged for a zero source.
            (src.checked_ilog2().map(u64::from), false, src == 0)
        }
        Code::Tzcnt_r16_rm16 | Code::Tzcnt_r32_rm32 | Code::Tzcnt_r64_rm64 => {
            // BSF: destination unchanged for a zero source.
            (
                (src != 0).then(|| u64::from(src.trailing_zeros())),
                false,
                src == 0,
            )
        }
        _ => return Err(Stop::Unsupported("bit-count form")),
    };
    if let Some(value) = result {
        ctx.state.set_gpr(ctx.instr.op0_register(), value)?;
    }
    let rflags = &mut ctx.state.regs.rflags;
    *rflags &= !flags::STATUS;
    if cf {
        *rflags |= flags::CF;
    }
    if zf {
        *rflags |= flags::ZF;
    }
    Ok(())
}

fn set_zf<M: GuestMemoryAccess + ?Sized>(ctx: &mut Ctx<'_, M>, equal: bool) {
    if equal {
        ctx.state.regs.rflags |= flags::ZF;
    } else {
        ctx.state.regs.rflags &= !flags::ZF;
    }
}

/// CMPXCHG8B m64: atomic when the operand lies in one page (the host runs LOCK CMPXCHG8B on
/// guest RAM); a page-crossing operand is compared and written non-atomically.
fn cmpxchg8b<M: GuestMemoryAccess + ?Sized>(ctx: &mut Ctx<'_, M>) -> Result<(), Stop> {
    let la = ctx.mem_address(8, true)?;
    let regs = &ctx.state.regs;
    let expected = (regs.rax & 0xffff_ffff) | (regs.rdx << 32);
    let new = (regs.rbx & 0xffff_ffff) | (regs.rcx << 32);
    let old = if la & 0xfff <= 0xff8 {
        let gpa = paging::translate(ctx.state, ctx.mem, la, Access::WRITE)?;
        ctx.mem
            .compare_exchange_u64(GuestAddress(gpa), expected, new)
            .ok_or(Stop::Memory { gpa, len: 8 })?
    } else {
        let mut buf = [0u8; 8];
        paging::read_linear(ctx.state, ctx.mem, la, &mut buf, Access::WRITE)?;
        let old = u64::from_le_bytes(buf);
        let store = if old == expected { new } else { old };
        paging::write_linear(ctx.state, ctx.mem, la, &store.to_le_bytes(), Access::WRITE)?;
        old
    };
    let equal = old == expected;
    if !equal {
        ctx.state.set_gpr(Register::EAX, old & 0xffff_ffff)?;
        ctx.state.set_gpr(Register::EDX, old >> 32)?;
    }
    set_zf(ctx, equal);
    Ok(())
}

/// CMPXCHG16B m128: #GP(0) unless 16-byte aligned; always atomic.
fn cmpxchg16b<M: GuestMemoryAccess + ?Sized>(ctx: &mut Ctx<'_, M>) -> Result<(), Stop> {
    let la = ctx.mem_address(16, true)?;
    if la % 16 != 0 {
        return Err(Fault::gp(0).into());
    }
    let regs = &ctx.state.regs;
    let expected = u128::from(regs.rax) | (u128::from(regs.rdx) << 64);
    let new = u128::from(regs.rbx) | (u128::from(regs.rcx) << 64);
    let gpa = paging::translate(ctx.state, ctx.mem, la, Access::WRITE)?;
    let old = ctx
        .mem
        .compare_exchange_u128(GuestAddress(gpa), expected, new)
        .ok_or(Stop::Memory { gpa, len: 16 })?;
    let equal = old == expected;
    if !equal {
        ctx.state.regs.rax = old as u64;
        ctx.state.regs.rdx = (old >> 64) as u64;
    }
    set_zf(ctx, equal);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::emulate::testutil::{injected, long_mode_state, memory, read_u64, run, DATA};
    use vm_memory::{Bytes, GuestAddress};

    /// Flags the tests start from: every status flag set (so "cleared" is visible), and IF,
    /// which user-mode POPFQ cannot clear.
    const FLAGS_IN: u64 = 0x2 | flags::IF | flags::STATUS;

    /// Runs `op rax, rcx` natively (op in {popcnt, lzcnt, tzcnt} x {16, 32, 64}) on `src`, with
    /// RAX preset to `dest`; returns (RAX, RFLAGS).
    fn native(which: &str, src: u64, dest: u64) -> (u64, u64) {
        let (mut rax, mut fl) = (dest, FLAGS_IN);
        macro_rules! go {
            ($insn:literal) => {
                // SAFETY: loads RFLAGS from a local (status flags only, no TF/IF/DF changes),
                // runs one bit-count instruction on registers and reads RFLAGS back; the stack
                // push/pop is balanced.
                unsafe {
                    core::arch::asm!("push {f}", "popfq", $insn, "pushfq", "pop {f}",
                        f = inout(reg) fl, inout("rax") rax, in("rcx") src);
                }
            };
        }
        match which {
            "popcnt64" => go!("popcnt rax, rcx"),
            "popcnt32" => go!("popcnt eax, ecx"),
            "popcnt16" => go!("popcnt ax, cx"),
            "lzcnt64" => go!("lzcnt rax, rcx"),
            "lzcnt32" => go!("lzcnt eax, ecx"),
            "lzcnt16" => go!("lzcnt ax, cx"),
            "tzcnt64" => go!("tzcnt rax, rcx"),
            "tzcnt32" => go!("tzcnt eax, ecx"),
            "tzcnt16" => go!("tzcnt ax, cx"),
            _ => unreachable!(),
        }
        (rax, fl)
    }

    /// Encodings of `op rax/eax/ax, rcx/ecx/cx`.
    fn encoding(which: &str) -> Vec<u8> {
        let opcode = match &which[..which.len() - 2] {
            "popcnt" => 0xb8,
            "lzcnt" => 0xbd,
            _ => 0xbc,
        };
        match &which[which.len() - 2..] {
            "64" => vec![0xf3, 0x48, 0x0f, opcode, 0xc1],
            "32" => vec![0xf3, 0x0f, opcode, 0xc1],
            _ => vec![0x66, 0xf3, 0x0f, opcode, 0xc1],
        }
    }

    #[test]
    fn test_bit_count_register_forms_match_native() {
        let sources = [
            0,
            1,
            0x80,
            0x8000,
            0x8000_0000,
            0x8000_0000_0000_0000,
            0xffff_ffff_ffff_ffff,
            0x0123_4567_89ab_cdef,
        ];
        for which in [
            "popcnt64", "popcnt32", "popcnt16", "lzcnt64", "lzcnt32", "lzcnt16", "tzcnt64",
            "tzcnt32", "tzcnt16",
        ] {
            for &src in &sources {
                // Arrange
                let dest = 0xdead_beef_dead_beef;
                let expected = native(which, src, dest);
                let mut state = long_mode_state();
                state.regs.rax = dest;
                state.regs.rcx = src;
                state.regs.rflags = FLAGS_IN;
                let mem = memory();
                // Act
                run(&mut state, &mem, &encoding(which));
                // Assert: LZCNT and TZCNT leave OF, SF, AF and PF undefined (Intel clears
                // them, AMD keeps some), POPCNT defines every status flag.
                let defined = if which.starts_with("popcnt") {
                    !0
                } else {
                    !(flags::OF | flags::SF | flags::AF | flags::PF)
                };
                assert_eq!(
                    (state.regs.rax, state.regs.rflags & defined),
                    (expected.0, expected.1 & defined),
                    "{which} {src:#x}"
                );
            }
        }
    }

    #[test]
    fn test_popcnt_memory_operand_reads_guest_memory() {
        let mut state = long_mode_state();
        let mem = memory();
        mem.write_obj(0xf0f0_u64, GuestAddress(DATA + 8)).unwrap();
        state.regs.rsi = DATA;
        // popcnt rax, [rsi+8]
        run(&mut state, &mem, &[0xf3, 0x48, 0x0f, 0xb8, 0x46, 0x08]);
        assert_eq!(state.regs.rax, 8);
    }

    #[test]
    fn test_lzcnt_without_abm_behaves_as_bsr() {
        let mut state = long_mode_state();
        state.features.lzcnt = false;
        state.regs.rcx = 0x100;
        let mem = memory();
        run(&mut state, &mem, &encoding("lzcnt64"));
        assert_eq!(state.regs.rax, 8);
        assert_eq!(state.regs.rflags & flags::ZF, 0);
    }

    /// Runs `lock cmpxchg8b [mem]` or `lock cmpxchg16b [mem]` natively.
    fn native_cmpxchg(
        wide: bool,
        memval: [u64; 2],
        rax: u64,
        rdx: u64,
        rbx: u64,
        rcx: u64,
    ) -> ([u64; 2], u64, u64, u64) {
        #[repr(C, align(16))]
        struct Cell([u64; 2]);
        let mut cell = Cell(memval);
        let (mut a, mut d, mut fl) = (rax, rdx, 0x2u64);
        let p = cell.0.as_mut_ptr();
        // SAFETY: `p` points to 16 aligned writable bytes (cell); RBX is saved in {b} and
        // restored; flags are read back with a balanced pushfq/pop.
        unsafe {
            if wide {
                core::arch::asm!("xchg {b}, rbx", "lock cmpxchg16b [{p}]", "mov rbx, {b}", "pushfq", "pop {f}",
                    b = inout(reg) rbx => _, p = in(reg) p, f = out(reg) fl, inout("rax") a, inout("rdx") d, in("rcx") rcx);
            } else {
                core::arch::asm!("xchg {b}, rbx", "lock cmpxchg8b [{p}]", "mov rbx, {b}", "pushfq", "pop {f}",
                    b = inout(reg) rbx => _, p = in(reg) p, f = out(reg) fl, inout("rax") a, inout("rdx") d, in("rcx") rcx);
            }
        }
        (cell.0, a, d, fl & flags::ZF)
    }

    fn emulated_cmpxchg(
        wide: bool,
        memval: [u64; 2],
        rax: u64,
        rdx: u64,
        rbx: u64,
        rcx: u64,
    ) -> ([u64; 2], u64, u64, u64) {
        let mut state = long_mode_state();
        let mem = memory();
        mem.write_obj(memval[0], GuestAddress(DATA)).unwrap();
        mem.write_obj(memval[1], GuestAddress(DATA + 8)).unwrap();
        state.regs = kvm_bindings::kvm_regs {
            rax,
            rdx,
            rbx,
            rcx,
            rdi: DATA,
            ..state.regs
        };
        let bytes: &[u8] = if wide {
            &[0xf0, 0x48, 0x0f, 0xc7, 0x0f]
        } else {
            &[0xf0, 0x0f, 0xc7, 0x0f]
        };
        run(&mut state, &mem, bytes);
        (
            [read_u64(&mem, DATA), read_u64(&mem, DATA + 8)],
            state.regs.rax,
            state.regs.rdx,
            state.regs.rflags & flags::ZF,
        )
    }

    #[test]
    fn test_cmpxchg_equal_and_unequal_match_native() {
        let cases = [
            (
                [0x1111_2222_3333_4444, 0x5555_6666_7777_8888],
                0xaaaa_aaaa_3333_4444,
                0xbbbb_bbbb_1111_2222,
            ),
            (
                [0x1111_2222_3333_4444, 0x5555_6666_7777_8888],
                0x1111_2222_3333_4444,
                0x5555_6666_7777_8888,
            ),
            ([0x1111_2222_3333_4444, 0x5555_6666_7777_8888], 0, 0),
        ];
        for wide in [false, true] {
            for &(memval, rax, rdx) in &cases {
                let args = (
                    memval,
                    rax,
                    rdx,
                    0x0102_0304_0506_0708,
                    0x090a_0b0c_0d0e_0f10,
                );
                let expected = native_cmpxchg(wide, args.0, args.1, args.2, args.3, args.4);
                let got = emulated_cmpxchg(wide, args.0, args.1, args.2, args.3, args.4);
                assert_eq!(got, expected, "wide={wide} rax={rax:#x}");
            }
        }
    }

    #[test]
    fn test_cmpxchg16b_misaligned_raises_gp0() {
        let mut state = long_mode_state();
        let mem = memory();
        state.regs.rdi = DATA + 8;
        let outcome = run(&mut state, &mem, &[0xf0, 0x48, 0x0f, 0xc7, 0x0f]);
        assert_eq!(injected(&outcome), Some((13, Some(0))));
    }

    #[test]
    fn test_cmpxchg8b_page_crossing_still_exchanges() {
        let mut state = long_mode_state();
        let mem = memory();
        let addr = DATA + 0xffc;
        mem.write_obj(0x42u64, GuestAddress(addr)).unwrap();
        state.regs = kvm_bindings::kvm_regs {
            rax: 0x42,
            rdx: 0,
            rbx: 7,
            rcx: 9,
            rdi: addr,
            ..state.regs
        };
        run(&mut state, &mem, &[0xf0, 0x0f, 0xc7, 0x0f]);
        assert_eq!(read_u64(&mem, addr), 7 | (9 << 32));
        assert_ne!(state.regs.rflags & flags::ZF, 0);
    }
}
