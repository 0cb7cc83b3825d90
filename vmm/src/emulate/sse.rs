//! SSE/SSE2 and MMX moves and logic: MOVD, MOVQ, MOVSS, MOVSD, MOVAPS/MOVAPD/MOVUPS/MOVUPD,
//! MOVDQA/MOVDQU, PXOR/PAND/PANDN/POR, XORPS/XORPD/ANDPS/ANDNPS/ORPS, PCMPEQB, PMOVMSKB.
//! Register and memory forms; legacy (non-VEX) encodings only.

use iced_x86::{Code, Register};

use super::cpu::{cr, GuestMemoryAccess};
use super::{check_x87, Ctx, Fault, Stop};

pub(crate) use super::fxsave::emulate as emulate_state;

/// Whether `code` is one of the moves and logic instructions this module emulates.
pub(crate) fn handles(code: Code) -> bool {
    use Code as C;
    matches!(
        code,
        C::Movd_xmm_rm32
            | C::Movq_xmm_rm64
            | C::Movd_rm32_xmm
            | C::Movq_rm64_xmm
            | C::Movq_xmm_xmmm64
            | C::Movq_xmmm64_xmm
            | C::Movd_mm_rm32
            | C::Movq_mm_rm64
            | C::Movd_rm32_mm
            | C::Movq_rm64_mm
            | C::Movq_mm_mmm64
            | C::Movq_mmm64_mm
            | C::Movss_xmm_xmmm32
            | C::Movss_xmmm32_xmm
            | C::Movsd_xmm_xmmm64
            | C::Movsd_xmmm64_xmm
    ) || full_move(code).is_some()
        || logic(code).is_some()
        || matches!(
            code,
            C::Pcmpeqb_xmm_xmmm128
                | C::Pcmpeqb_mm_mmm64
                | C::Pmovmskb_r32_xmm
                | C::Pmovmskb_r64_xmm
                | C::Pmovmskb_r32_mm
                | C::Pmovmskb_r64_mm
        )
}

/// 128-bit moves: (load into register?, alignment required?).
fn full_move(code: Code) -> Option<(bool, bool)> {
    use Code as C;
    Some(match code {
        C::Movaps_xmm_xmmm128 | C::Movapd_xmm_xmmm128 | C::Movdqa_xmm_xmmm128 => (true, true),
        C::Movaps_xmmm128_xmm | C::Movapd_xmmm128_xmm | C::Movdqa_xmmm128_xmm => (false, true),
        C::Movups_xmm_xmmm128 | C::Movupd_xmm_xmmm128 | C::Movdqu_xmm_xmmm128 => (true, false),
        C::Movups_xmmm128_xmm | C::Movupd_xmmm128_xmm | C::Movdqu_xmmm128_xmm => (false, false),
        _ => return None,
    })
}

/// Bitwise operations on 64-bit lanes.
#[derive(Clone, Copy)]
enum Logic {
    Xor,
    And,
    AndNot,
    Or,
}

fn logic(code: Code) -> Option<Logic> {
    use Code as C;
    Some(match code {
        C::Pxor_xmm_xmmm128 | C::Pxor_mm_mmm64 | C::Xorps_xmm_xmmm128 | C::Xorpd_xmm_xmmm128 => {
            Logic::Xor
        }
        C::Pand_xmm_xmmm128 | C::Pand_mm_mmm64 | C::Andps_xmm_xmmm128 => Logic::And,
        C::Pandn_xmm_xmmm128 | C::Pandn_mm_mmm64 | C::Andnps_xmm_xmmm128 => Logic::AndNot,
        C::Por_xmm_xmmm128 | C::Por_mm_mmm64 | C::Orps_xmm_xmmm128 => Logic::Or,
        _ => return None,
    })
}

/// A vector register operand.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Vreg {
    Xmm(usize),
    Mm(usize),
}

fn vreg(reg: Register) -> Option<Vreg> {
    let n = reg as usize;
    if reg.is_xmm() {
        Some(Vreg::Xmm(n - Register::XMM0 as usize))
    } else if reg.is_mm() {
        Some(Vreg::Mm(n - Register::MM0 as usize))
    } else {
        None
    }
}

/// #UD / #NM checks for SSE instructions (also LDMXCSR/STMXCSR).
pub(crate) fn check_sse(state: &super::CpuState) -> Result<(), Stop> {
    let s = &state.sregs;
    if s.cr0 & cr::CR0_EM != 0 || s.cr4 & cr::CR4_OSFXSR == 0 {
        return Err(Fault::UD.into());
    }
    if s.cr0 & cr::CR0_TS != 0 {
        return Err(Fault::NM.into());
    }
    Ok(())
}

/// #UD / #NM / #MF checks for MMX instructions, then the switch to MMX state (TOP=0, all tags
/// valid), with the register file rotated so that fpr[i] is MMi.
fn enter_mmx(state: &mut super::CpuState) -> Result<(), Stop> {
    if state.sregs.cr0 & cr::CR0_EM != 0 {
        return Err(Fault::UD.into());
    }
    check_x87(state)?;
    if state.fpu.fsw & (1 << 7) != 0 {
        return Err(Fault::MF.into());
    }
    let top = usize::from((state.fpu.fsw >> 11) & 7);
    let old = state.fpu.fpr;
    for (i, reg) in state.fpu.fpr.iter_mut().enumerate() {
        *reg = old[(i + 8 - top) & 7];
    }
    state.fpu.fsw &= !(7 << 11);
    state.fpu.ftwx = 0xff;
    Ok(())
}

fn get(state: &super::CpuState, reg: Vreg) -> [u8; 16] {
    match reg {
        Vreg::Xmm(i) => state.fpu.xmm[i],
        Vreg::Mm(i) => {
            let mut v = [0u8; 16];
            v[..8].copy_from_slice(&state.fpu.fpr[i][..8]);
            v
        }
    }
}

fn set(state: &mut super::CpuState, reg: Vreg, value: [u8; 16]) {
    match reg {
        Vreg::Xmm(i) => state.fpu.xmm[i] = value,
        Vreg::Mm(i) => {
            let r = &mut state.fpu.fpr[i];
            r[..8].copy_from_slice(&value[..8]);
            r[8] = 0xff;
            r[9] = 0xff;
        }
    }
}

fn widen(value: u64) -> [u8; 16] {
    let mut v = [0u8; 16];
    v[..8].copy_from_slice(&value.to_le_bytes());
    v
}

fn low_u64(v: &[u8; 16]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&v[..8]);
    u64::from_le_bytes(b)
}

pub(crate) fn emulate<M: GuestMemoryAccess + ?Sized>(ctx: &mut Ctx<'_, M>) -> Result<(), Stop> {
    let uses_mmx = (0..ctx.instr.op_count()).any(|i| {
        ctx.instr.op_kind(i) == iced_x86::OpKind::Register && ctx.instr.op_register(i).is_mm()
    });
    if uses_mmx {
        enter_mmx(ctx.state)?;
    } else {
        check_sse(ctx.state)?;
    }
    ctx.wb.fpu = true;
    let code = ctx.instr.code();
    if let Some((load, aligned)) = full_move(code) {
        return move128(ctx, load, aligned);
    }
    if let Some(op) = logic(code) {
        return logic_op(ctx, op);
    }
    match code {
        Code::Pcmpeqb_xmm_xmmm128 | Code::Pcmpeqb_mm_mmm64 => pcmpeqb(ctx),
        Code::Pmovmskb_r32_xmm
        | Code::Pmovmskb_r64_xmm
        | Code::Pmovmskb_r32_mm
        | Code::Pmovmskb_r64_mm => pmovmskb(ctx),
        _ => move_partial(ctx, code),
    }
}

/// Reads source operand `op` (vector register or memory) of `size` bytes.
fn source<M: GuestMemoryAccess + ?Sized>(
    ctx: &Ctx<'_, M>,
    op: u32,
    size: usize,
    aligned: bool,
) -> Result<[u8; 16], Stop> {
    let mut v = [0u8; 16];
    if ctx.is_mem(op) {
        if aligned {
            ctx.read_mem_aligned(&mut v[..size], 16)?;
        } else {
            ctx.read_mem(&mut v[..size])?;
        }
        return Ok(v);
    }
    let reg = vreg(ctx.instr.op_register(op)).ok_or(Stop::Unsupported("vector operand"))?;
    Ok(get(ctx.state, reg))
}

fn dest_reg<M: GuestMemoryAccess + ?Sized>(ctx: &Ctx<'_, M>, op: u32) -> Result<Vreg, Stop> {
    vreg(ctx.instr.op_register(op)).ok_or(Stop::Unsupported("vector operand"))
}

/// MOVAPS-style 128-bit moves in either direction.
fn move128<M: GuestMemoryAccess + ?Sized>(
    ctx: &mut Ctx<'_, M>,
    load: bool,
    aligned: bool,
) -> Result<(), Stop> {
    if load {
        let value = source(ctx, 1, 16, aligned)?;
        let dst = dest_reg(ctx, 0)?;
        set(ctx.state, dst, value);
        return Ok(());
    }
    let value = get(ctx.state, dest_reg(ctx, 1)?);
    if ctx.is_mem(0) {
        return if aligned {
            ctx.write_mem_aligned(&value, 16)
        } else {
            ctx.write_mem(&value)
        };
    }
    let dst = dest_reg(ctx, 0)?;
    set(ctx.state, dst, value);
    Ok(())
}

/// PXOR/XORPS and friends: dst = dst op src (128-bit memory operands must be aligned).
fn logic_op<M: GuestMemoryAccess + ?Sized>(ctx: &mut Ctx<'_, M>, op: Logic) -> Result<(), Stop> {
    let dst = dest_reg(ctx, 0)?;
    let (size, aligned) = if matches!(dst, Vreg::Xmm(_)) {
        (16, true)
    } else {
        (8, false)
    };
    let src = source(ctx, 1, size, aligned)?;
    let mut value = get(ctx.state, dst);
    for (d, s) in value.iter_mut().zip(src.iter()).take(size) {
        *d = match op {
            Logic::Xor => *d ^ *s,
            Logic::And => *d & *s,
            Logic::AndNot => !*d & *s,
            Logic::Or => *d | *s,
        };
    }
    set(ctx.state, dst, value);
    Ok(())
}

fn pcmpeqb<M: GuestMemoryAccess + ?Sized>(ctx: &mut Ctx<'_, M>) -> Result<(), Stop> {
    let dst = dest_reg(ctx, 0)?;
    let (size, aligned) = if matches!(dst, Vreg::Xmm(_)) {
        (16, true)
    } else {
        (8, false)
    };
    let src = source(ctx, 1, size, aligned)?;
    let mut value = get(ctx.state, dst);
    for (d, s) in value.iter_mut().zip(src.iter()).take(size) {
        *d = if *d == *s { 0xff } else { 0 };
    }
    set(ctx.state, dst, value);
    Ok(())
}

fn pmovmskb<M: GuestMemoryAccess + ?Sized>(ctx: &mut Ctx<'_, M>) -> Result<(), Stop> {
    let src = dest_reg(ctx, 1)?;
    let size = if matches!(src, Vreg::Xmm(_)) { 16 } else { 8 };
    let value = get(ctx.state, src);
    let mask = value
        .iter()
        .take(size)
        .enumerate()
        .fold(0u64, |m, (i, b)| m | (u64::from(b >> 7) << i));
    let reg = ctx.instr.op0_register();
    ctx.state.set_gpr(reg, mask)
}

/// MOVD / MOVQ / MOVSS / MOVSD: moves of the low 32 or 64 bits.
fn move_partial<M: GuestMemoryAccess + ?Sized>(
    ctx: &mut Ctx<'_, M>,
    code: Code,
) -> Result<(), Stop> {
    use Code as C;
    match code {
        C::Movd_xmm_rm32 | C::Movd_mm_rm32 => {
            let v = ctx.read_rm(1, 4)?;
            let dst = dest_reg(ctx, 0)?;
            set(ctx.state, dst, widen(v));
        }
        C::Movq_xmm_rm64 | C::Movq_mm_rm64 => {
            let v = ctx.read_rm(1, 8)?;
            let dst = dest_reg(ctx, 0)?;
            set(ctx.state, dst, widen(v));
        }
        C::Movd_rm32_xmm | C::Movd_rm32_mm => {
            let v = low_u64(&get(ctx.state, dest_reg(ctx, 1)?));
            ctx.write_rm(0, 4, v & 0xffff_ffff)?;
        }
        C::Movq_rm64_xmm | C::Movq_rm64_mm => {
            let v = low_u64(&get(ctx.state, dest_reg(ctx, 1)?));
            ctx.write_rm(0, 8, v)?;
        }
        C::Movq_xmm_xmmm64 | C::Movq_mm_mmm64 => {
            let v = low_u64(&source(ctx, 1, 8, false)?);
            let dst = dest_reg(ctx, 0)?;
            set(ctx.state, dst, widen(v));
        }
        C::Movq_xmmm64_xmm | C::Movq_mmm64_mm => {
            let v = low_u64(&get(ctx.state, dest_reg(ctx, 1)?));
            store_low(ctx, &widen(v), 8, true)?;
        }
        C::Movss_xmm_xmmm32 | C::Movsd_xmm_xmmm64 => {
            let size = if code == C::Movss_xmm_xmmm32 { 4 } else { 8 };
            let src = source(ctx, 1, size, false)?;
            let dst = dest_reg(ctx, 0)?;
            // From memory the upper bits are zeroed; from a register they are kept.
            let mut value = if ctx.is_mem(1) {
                [0u8; 16]
            } else {
                get(ctx.state, dst)
            };
            value[..size].copy_from_slice(&src[..size]);
            set(ctx.state, dst, value);
        }
        C::Movss_xmmm32_xmm | C::Movsd_xmmm64_xmm => {
            let size = if code == C::Movss_xmmm32_xmm { 4 } else { 8 };
            let src = get(ctx.state, dest_reg(ctx, 1)?);
            store_low(ctx, &src, size, false)?;
        }
        _ => return Err(Stop::Unsupported("SSE form")),
    }
    Ok(())
}

/// Stores the low `size` bytes of `value` to operand 0: memory, or a register (whose upper
/// bytes are zeroed when `zero_upper`, kept otherwise).
fn store_low<M: GuestMemoryAccess + ?Sized>(
    ctx: &mut Ctx<'_, M>,
    value: &[u8; 16],
    size: usize,
    zero_upper: bool,
) -> Result<(), Stop> {
    if ctx.is_mem(0) {
        return ctx.write_mem(&value[..size]);
    }
    let dst = dest_reg(ctx, 0)?;
    let mut out = if zero_upper {
        [0u8; 16]
    } else {
        get(ctx.state, dst)
    };
    out[..size].copy_from_slice(&value[..size]);
    set(ctx.state, dst, out);
    Ok(())
}

#[cfg(test)]
#[path = "sse_tests.rs"]
mod tests;
