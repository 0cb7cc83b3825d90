//! x87 instructions other than the control ones (those are in `x87.rs`): loads and stores of
//! every format (m32/m64/m80 real, m16/m32/m64 integer, m80 BCD), arithmetic, comparisons
//! (FCOMI/FUCOMI set RFLAGS), FCMOVcc, constants, transcendentals and stack management; and
//! FNSETPM (a no-op since the 387).
//!
//! The instruction itself runs on the host CPU with the guest's x87 registers loaded
//! (`x87_host.rs`), so values, rounding, precision control, condition codes, exception flags,
//! stack faults, NaNs and denormals are exactly what the processor produces; nothing is
//! approximated. This module does what the host run cannot: the #NM/#MF checks, reading the
//! memory operand through the guest's segments and page tables into the stub's buffer, writing
//! a store's result back the same way (only if the processor stored it: with an unmasked
//! exception a store can be suppressed), and the last-instruction pointers: FIP = RIP of the
//! instruction, FOP = its opcode (11 bits), FDP = the operand's offset for memory forms
//! (register forms keep the previous FDP), as the processor records them for FNSTENV/FXSAVE.
//!
//! State: `kvm_fpu.fpr[i]` is ST(i) (FXSAVE order), `ftwx` the abridged tag word, TOP in FSW
//! bits 11-13; FXRSTOR/FXSAVE on the host take and give exactly that layout.

use iced_x86::{Code, Mnemonic};

use super::cpu::GuestMemoryAccess;
use super::x87::pending_exception;
use super::x87_host::{self, HostRun};
use super::{check_x87, Ctx, Stop};

/// Whether this module emulates `code`.
pub(crate) fn handles(code: Code) -> bool {
    code == Code::Fnsetpm || x87_host::runs_on_host(code)
}

pub(crate) fn emulate<M: GuestMemoryAccess + ?Sized>(ctx: &mut Ctx<'_, M>) -> Result<(), Stop> {
    check_x87(ctx.state)?;
    let code = ctx.instr.code();
    if code == Code::Fnsetpm {
        return Ok(());
    }
    // Every instruction here waits: a pending unmasked exception raises #MF first.
    pending_exception(ctx)?;
    let (op, modrm) = escape_bytes(ctx)?;
    let mut run = HostRun {
        fpu: ctx.state.fpu,
        rflags: ctx.state.regs.rflags,
        mem: [0; 16],
    };
    let operand = memory_operand(ctx);
    match operand {
        Some((len, Direction::Load)) => {
            ctx.read_mem(&mut run.mem[..len])?;
            x87_host::execute(code, op, modrm, &mut run)?;
        }
        Some((len, Direction::Store)) => {
            if let Some(result) = run_store(code, op, modrm, &mut run, len)? {
                ctx.write_mem(&result[..len])?;
            }
        }
        None => x87_host::execute(code, op, modrm, &mut run)?,
    }
    run.fpu.last_opcode = (u16::from(op & 7) << 8) | u16::from(modrm);
    run.fpu.last_ip = ctx.state.regs.rip;
    if operand.is_some() {
        run.fpu.last_dp = ctx.effective_address()?;
    }
    ctx.state.fpu = run.fpu;
    ctx.state.regs.rflags = run.rflags;
    ctx.wb.fpu = true;
    Ok(())
}

/// Whether the memory operand is read or written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Direction {
    Load,
    Store,
}

/// Size and direction of the instruction's memory operand, if it has one.
fn memory_operand<M: GuestMemoryAccess + ?Sized>(ctx: &Ctx<'_, M>) -> Option<(usize, Direction)> {
    if !ctx.is_mem(0) {
        return None;
    }
    let len = ctx.instr.memory_size().size();
    let dir = match ctx.instr.mnemonic() {
        Mnemonic::Fst
        | Mnemonic::Fstp
        | Mnemonic::Fist
        | Mnemonic::Fistp
        | Mnemonic::Fisttp
        | Mnemonic::Fbstp => Direction::Store,
        _ => Direction::Load,
    };
    Some((len, dir))
}

/// Runs a store twice, with the operand buffer filled with 0x00 and with 0xff: the bytes are
/// the same both times only if the processor stored them (it stores the whole operand or, after
/// an unmasked exception such as overflow or an invalid operand, nothing). Returns the stored
/// bytes, if any; `run` gets the state after the instruction.
fn run_store(
    code: Code,
    op: u8,
    modrm: u8,
    run: &mut HostRun,
    len: usize,
) -> Result<Option<[u8; 16]>, Stop> {
    let mut ones = *run;
    ones.mem = [0xff; 16];
    run.mem = [0; 16];
    x87_host::execute(code, op, modrm, run)?;
    x87_host::execute(code, op, modrm, &mut ones)?;
    Ok((run.mem[..len] == ones.mem[..len]).then_some(run.mem))
}

/// The escape opcode (D8-DF) and ModRM byte of the instruction, after any prefixes.
fn escape_bytes<M: GuestMemoryAccess + ?Sized>(ctx: &Ctx<'_, M>) -> Result<(u8, u8), Stop> {
    let bytes = &ctx.bytes[..ctx.instr.len().min(ctx.bytes.len())];
    let at = bytes
        .iter()
        .position(|b| (0xd8..=0xdf).contains(b))
        .filter(|&i| i + 1 < bytes.len())
        .ok_or(Stop::Unsupported("x87 encoding"))?;
    Ok((bytes[at], bytes[at + 1]))
}

#[cfg(test)]
#[path = "x87_arith_tests.rs"]
mod tests;
