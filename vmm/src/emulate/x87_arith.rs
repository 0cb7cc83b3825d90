//! x87 register-stack instructions, for FPU probes such as GNU Mach's (1/0 compared with
//! -(1/0) to tell a 387 from a 287): FLD1, FLDZ, FLD m64/ST(i), FST/FSTP m64, FSTP ST(i),
//! FXCH, FCHS, FDIVP, FDIVRP, FUCOMIP and FNSETPM (a no-op since the 387).
//!
//! Values are kept exact or the instruction is not emulated: every operand must be a zero, an
//! infinity or a normal number that a `f64` holds exactly, and every result must be exact (a
//! quotient is accepted only when it is exact in `f64`, which makes it exact in any precision
//! and rounding mode). NaNs, denormals, stack faults, unmasked exceptions and inexact results
//! stop the VM with [`Stop::Unsupported`] instead of being approximated.
//!
//! State: `kvm_fpu.fpr[i]` is ST(i) (FXSAVE order), `ftwx` the abridged tag word indexed by
//! physical register (TOP + i) mod 8, TOP in FSW bits 11-13. Not modelled: the last-instruction
//! pointers (FIP, FOP, FDP keep their values; a CPU updates FIP and FOP here).

use iced_x86::{Code, Register};

use super::cpu::{flags, GuestMemoryAccess};
use super::{check_x87, Ctx, Stop};

const FSW_ZE: u16 = 1 << 2;
const FSW_C1: u16 = 1 << 9;
const FSW_ES: u16 = 1 << 7;
const FCW_ZM: u16 = 1 << 2;

/// Whether this module emulates `code`.
pub(crate) fn handles(code: Code) -> bool {
    matches!(
        code,
        Code::Fld1
            | Code::Fldz
            | Code::Fld_m64fp
            | Code::Fld_sti
            | Code::Fst_m64fp
            | Code::Fstp_m64fp
            | Code::Fstp_sti
            | Code::Fxch_st0_sti
            | Code::Fchs
            | Code::Fdivp_sti_st0
            | Code::Fdivrp_sti_st0
            | Code::Fucomip_st0_sti
            | Code::Fnsetpm
    )
}

pub(crate) fn emulate<M: GuestMemoryAccess + ?Sized>(ctx: &mut Ctx<'_, M>) -> Result<(), Stop> {
    check_x87(ctx.state)?;
    let code = ctx.instr.code();
    if code == Code::Fnsetpm {
        return Ok(());
    }
    if ctx.state.fpu.fsw & FSW_ES != 0 {
        // A pending unmasked exception would raise #MF first.
        return Err(Stop::Unsupported(
            "x87 arithmetic with a pending x87 exception",
        ));
    }
    // ST(i) is the second operand of the `st0_sti` forms, the first of the others.
    let sti = match code {
        Code::Fxch_st0_sti | Code::Fucomip_st0_sti => sti_index(ctx.instr.op1_register()),
        _ => sti_index(ctx.instr.op0_register()),
    };
    match code {
        Code::Fld1 => push(ctx, 1.0)?,
        Code::Fldz => push(ctx, 0.0)?,
        Code::Fld_m64fp => {
            let mut buf = [0u8; 8];
            ctx.read_mem(&mut buf)?;
            let v = f64::from_le_bytes(buf);
            check_operand(v)?;
            push(ctx, v)?;
        }
        Code::Fld_sti => {
            let v = st(ctx, sti.unwrap_or(0))?;
            push(ctx, v)?;
        }
        Code::Fst_m64fp | Code::Fstp_m64fp => {
            let v = st(ctx, 0)?;
            ctx.write_mem(&v.to_le_bytes())?;
            if code == Code::Fstp_m64fp {
                pop(ctx);
            }
        }
        Code::Fstp_sti => {
            let v = st(ctx, 0)?;
            set_st(ctx, sti.unwrap_or(0), v);
            pop(ctx);
        }
        Code::Fxch_st0_sti => {
            let i = sti.unwrap_or(1);
            let (a, b) = (st(ctx, 0)?, st(ctx, i)?);
            set_st(ctx, 0, b);
            set_st(ctx, i, a);
        }
        Code::Fchs => {
            let v = st(ctx, 0)?;
            set_st(ctx, 0, -v);
        }
        Code::Fdivp_sti_st0 => fdiv_pop(ctx, sti.unwrap_or(1), false)?,
        Code::Fdivrp_sti_st0 => fdiv_pop(ctx, sti.unwrap_or(1), true)?,
        Code::Fucomip_st0_sti => fucomip(ctx, sti.unwrap_or(1))?,
        _ => return Err(Stop::Unsupported("x87 form")),
    }
    // Exact results: C1 (round-up indicator) is 0.
    ctx.state.fpu.fsw &= !FSW_C1;
    ctx.wb.fpu = true;
    Ok(())
}

fn sti_index(reg: Register) -> Option<usize> {
    let n = (reg as u32).wrapping_sub(Register::ST0 as u32);
    (n < 8).then_some(n as usize)
}

fn top(fsw: u16) -> usize {
    usize::from((fsw >> 11) & 7)
}

fn set_top(fsw: u16, top: usize) -> u16 {
    (fsw & !(7 << 11)) | ((top as u16 & 7) << 11)
}

fn tag_valid<M: GuestMemoryAccess + ?Sized>(ctx: &Ctx<'_, M>, i: usize) -> bool {
    let phys = (top(ctx.state.fpu.fsw) + i) & 7;
    ctx.state.fpu.ftwx & (1 << phys) != 0
}

/// Rejects operands whose 80-bit handling this module does not model exactly.
fn check_operand(v: f64) -> Result<(), Stop> {
    if v.is_nan() || v.is_subnormal() {
        return Err(Stop::Unsupported("x87 NaN or denormal operand"));
    }
    Ok(())
}

/// ST(i) as an `f64`, if it is valid and a `f64` holds it exactly.
fn st<M: GuestMemoryAccess + ?Sized>(ctx: &Ctx<'_, M>, i: usize) -> Result<f64, Stop> {
    if !tag_valid(ctx, i) {
        return Err(Stop::Unsupported("x87 stack underflow"));
    }
    let r = &ctx.state.fpu.fpr[i];
    let mant = u64::from_le_bytes([r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7]]);
    let se = u16::from_le_bytes([r[8], r[9]]);
    ext_to_f64(mant, se).ok_or(Stop::Unsupported("x87 value beyond f64 (exact) range"))
}

fn ext_to_f64(mant: u64, se: u16) -> Option<f64> {
    let sign = u64::from(se >> 15) << 63;
    let exp = i32::from(se & 0x7fff);
    let v = match (exp, mant) {
        (0, 0) => 0.0,
        (0x7fff, m) if m == 1 << 63 => f64::INFINITY,
        (0 | 0x7fff, _) => return None,
        // Unnormals (integer bit clear) are invalid operands on the 387 and later.
        (_, m) if m >> 63 == 0 => return None,
        (e, m) => {
            let e = e - 16383 + 1023;
            if !(1..=2046).contains(&e) || m & 0x7ff != 0 {
                return None;
            }
            return Some(f64::from_bits(
                sign | (e as u64) << 52 | ((m >> 11) & ((1 << 52) - 1)),
            ));
        }
    };
    Some(f64::from_bits(v.to_bits() | sign))
}

/// The 80-bit encoding of a zero, infinity or normal `f64` (exact).
fn f64_to_ext(v: f64) -> [u8; 10] {
    let bits = v.to_bits();
    let sign = ((bits >> 63) as u16) << 15;
    let exp = ((bits >> 52) & 0x7ff) as u16;
    let frac = bits & ((1 << 52) - 1);
    let (se, mant) = match exp {
        0 => (sign, 0),
        0x7ff => (sign | 0x7fff, 1 << 63),
        e => (sign | (e - 1023 + 16383), 1 << 63 | frac << 11),
    };
    let mut out = [0u8; 10];
    out[..8].copy_from_slice(&mant.to_le_bytes());
    out[8..].copy_from_slice(&se.to_le_bytes());
    out
}

fn set_st<M: GuestMemoryAccess + ?Sized>(ctx: &mut Ctx<'_, M>, i: usize, v: f64) {
    let r = &mut ctx.state.fpu.fpr[i];
    r[..10].copy_from_slice(&f64_to_ext(v));
    r[10..].fill(0);
}

fn push<M: GuestMemoryAccess + ?Sized>(ctx: &mut Ctx<'_, M>, v: f64) -> Result<(), Stop> {
    if tag_valid(ctx, 7) {
        return Err(Stop::Unsupported("x87 stack overflow"));
    }
    let fpu = &mut ctx.state.fpu;
    fpu.fpr.rotate_right(1);
    let t = (top(fpu.fsw) + 7) & 7;
    fpu.fsw = set_top(fpu.fsw, t);
    fpu.ftwx |= 1 << t;
    set_st(ctx, 0, v);
    Ok(())
}

fn pop<M: GuestMemoryAccess + ?Sized>(ctx: &mut Ctx<'_, M>) {
    let fpu = &mut ctx.state.fpu;
    let t = top(fpu.fsw);
    fpu.ftwx &= !(1 << t);
    fpu.fsw = set_top(fpu.fsw, t + 1);
    fpu.fpr.rotate_left(1);
}

/// FDIVP ST(i), ST(0) (`de f8+i`): ST(i) = ST(i) / ST(0), then pop; FDIVRP (`de f0+i`,
/// `reverse`): ST(i) = ST(0) / ST(i). (AT&T syntax swaps the two mnemonics.)
fn fdiv_pop<M: GuestMemoryAccess + ?Sized>(
    ctx: &mut Ctx<'_, M>,
    i: usize,
    reverse: bool,
) -> Result<(), Stop> {
    let (a, b) = if reverse {
        (st(ctx, 0)?, st(ctx, i)?)
    } else {
        (st(ctx, i)?, st(ctx, 0)?)
    };
    let q =
        if a.is_nan() || b.is_nan() || a == 0.0 && b == 0.0 || a.is_infinite() && b.is_infinite() {
            return Err(Stop::Unsupported("x87 invalid division (0/0 or inf/inf)"));
        } else if b == 0.0 && a.is_finite() {
            if ctx.state.fpu.fcw & FCW_ZM == 0 {
                return Err(Stop::Unsupported("unmasked x87 divide-by-zero"));
            }
            ctx.state.fpu.fsw |= FSW_ZE;
            a / b
        } else if b == 0.0 || a.is_infinite() || b.is_infinite() || a == 0.0 {
            // inf/0, inf/x, x/inf, 0/x: exact, no exception.
            a / b
        } else {
            let q = a / b;
            if !(q.is_normal() && q.mul_add(b, -a) == 0.0) {
                return Err(Stop::Unsupported("inexact x87 division"));
            }
            q
        };
    set_st(ctx, i, q);
    pop(ctx);
    Ok(())
}

/// FUCOMIP ST(0), ST(i): ZF/PF/CF from the comparison (OF, SF, AF cleared), then pop.
fn fucomip<M: GuestMemoryAccess + ?Sized>(ctx: &mut Ctx<'_, M>, i: usize) -> Result<(), Stop> {
    let (a, b) = (st(ctx, 0)?, st(ctx, i)?);
    let set = if a < b {
        flags::CF
    } else if a == b {
        flags::ZF
    } else {
        0
    };
    let mask = flags::ZF | flags::PF | flags::CF | flags::OF | flags::SF | flags::AF;
    ctx.state.regs.rflags = (ctx.state.regs.rflags & !mask) | set;
    pop(ctx);
    Ok(())
}

#[cfg(test)]
#[path = "x87_arith_tests.rs"]
mod tests;
