//! LDMXCSR / STMXCSR and FXSAVE / FXRSTOR (64-bit and legacy layouts).

use iced_x86::Code;

use super::cpu::{cr, CpuMode, CpuState, GuestMemoryAccess};
use super::sse::check_sse;
use super::{Ctx, Fault, Stop};

/// Bytes of the FXSAVE image the processor writes in 64-bit mode (416..511 are left alone).
const IMAGE_64: usize = 416;
/// Bytes written outside 64-bit mode (XMM8-15 are not part of the image).
const IMAGE_32: usize = 288;

pub(crate) fn emulate<M: GuestMemoryAccess + ?Sized>(ctx: &mut Ctx<'_, M>) -> Result<(), Stop> {
    match ctx.instr.code() {
        Code::Ldmxcsr_m32 => {
            check_sse(ctx.state)?;
            let mut buf = [0u8; 4];
            ctx.read_mem(&mut buf)?;
            let mxcsr = u32::from_le_bytes(buf);
            if mxcsr & !ctx.state.features.mxcsr_mask != 0 {
                return Err(Fault::gp(0).into());
            }
            ctx.state.fpu.mxcsr = mxcsr;
            ctx.wb.fpu = true;
            Ok(())
        }
        Code::Stmxcsr_m32 => {
            check_sse(ctx.state)?;
            ctx.write_mem(&ctx.state.fpu.mxcsr.to_le_bytes())
        }
        Code::Fxsave_m512byte | Code::Fxsave64_m512byte => fxsave(ctx),
        Code::Fxrstor_m512byte | Code::Fxrstor64_m512byte => fxrstor(ctx),
        _ => Err(Stop::Unsupported("SSE state form")),
    }
}

/// FXSAVE/FXRSTOR: #NM if CR0.TS or CR0.EM.
fn check_fx(state: &CpuState) -> Result<(), Stop> {
    if state.sregs.cr0 & (cr::CR0_TS | cr::CR0_EM) != 0 {
        return Err(Fault::NM.into());
    }
    Ok(())
}

/// Layout parameters: (REX.W 64-bit pointers, number of XMM registers in the image).
fn layout(state: &CpuState, code: Code) -> (bool, usize) {
    let wide = matches!(code, Code::Fxsave64_m512byte | Code::Fxrstor64_m512byte);
    let long = state.mode() == CpuMode::Long64;
    let xmm = if state.sregs.cr4 & cr::CR4_OSFXSR == 0 {
        0
    } else if long {
        16
    } else {
        8
    };
    (wide, xmm)
}

/// FSW.ES: an unmasked x87 exception is pending.
const FSW_ES: u16 = 1 << 7;

/// The FXSAVE image of `state` (the first `IMAGE_64` bytes are meaningful).
pub(crate) fn image(state: &CpuState, wide: bool, xmm_count: usize) -> [u8; 512] {
    let fpu = &state.fpu;
    let mut img = [0u8; 512];
    img[0..2].copy_from_slice(&fpu.fcw.to_le_bytes());
    img[2..4].copy_from_slice(&fpu.fsw.to_le_bytes());
    img[4] = fpu.ftwx;
    if state.features.fxsave_pointers_on_error_only && fpu.fsw & FSW_ES == 0 {
        // AMD: no pending x87 exception, so FOP, FIP and FDP are stored as zero.
    } else if wide {
        img[6..8].copy_from_slice(&fpu.last_opcode.to_le_bytes());
        img[8..16].copy_from_slice(&fpu.last_ip.to_le_bytes());
        img[16..24].copy_from_slice(&fpu.last_dp.to_le_bytes());
    } else {
        img[6..8].copy_from_slice(&fpu.last_opcode.to_le_bytes());
        // FCS and FDS are stored as zero (deprecated on current CPUs; KVM does not keep them).
        img[8..12].copy_from_slice(&(fpu.last_ip as u32).to_le_bytes());
        img[16..20].copy_from_slice(&(fpu.last_dp as u32).to_le_bytes());
    }
    if xmm_count > 0 {
        img[24..28].copy_from_slice(&fpu.mxcsr.to_le_bytes());
        img[28..32].copy_from_slice(&state.features.mxcsr_mask.to_le_bytes());
    }
    for (i, st) in fpu.fpr.iter().enumerate() {
        img[32 + 16 * i..42 + 16 * i].copy_from_slice(&st[..10]);
    }
    for (i, xmm) in fpu.xmm.iter().take(xmm_count).enumerate() {
        img[160 + 16 * i..176 + 16 * i].copy_from_slice(xmm);
    }
    img
}

fn fxsave<M: GuestMemoryAccess + ?Sized>(ctx: &mut Ctx<'_, M>) -> Result<(), Stop> {
    check_fx(ctx.state)?;
    let (wide, xmm_count) = layout(ctx.state, ctx.instr.code());
    let img = image(ctx.state, wide, xmm_count);
    let len = if ctx.state.mode() == CpuMode::Long64 {
        IMAGE_64
    } else {
        IMAGE_32
    };
    // Alignment is checked on the whole 512-byte operand, then only the used part is written.
    let la = ctx.mem_address(512, true)?;
    if la % 16 != 0 {
        return Err(Fault::gp(0).into());
    }
    super::paging::write_linear(
        ctx.state,
        ctx.mem,
        la,
        &img[..len],
        super::paging::Access::WRITE,
    )
}

fn fxrstor<M: GuestMemoryAccess + ?Sized>(ctx: &mut Ctx<'_, M>) -> Result<(), Stop> {
    check_fx(ctx.state)?;
    let (wide, xmm_count) = layout(ctx.state, ctx.instr.code());
    let mut img = [0u8; 512];
    let la = ctx.mem_address(512, false)?;
    if la % 16 != 0 {
        return Err(Fault::gp(0).into());
    }
    super::paging::read_linear(
        ctx.state,
        ctx.mem,
        la,
        &mut img,
        super::paging::Access::READ,
    )?;
    let u16_at = |o: usize| u16::from_le_bytes([img[o], img[o + 1]]);
    let u32_at = |o: usize| u32::from_le_bytes([img[o], img[o + 1], img[o + 2], img[o + 3]]);
    let u64_at = |o: usize| u64::from(u32_at(o)) | (u64::from(u32_at(o + 4)) << 32);
    let mxcsr = u32_at(24);
    if xmm_count > 0 && mxcsr & !ctx.state.features.mxcsr_mask != 0 {
        return Err(Fault::gp(0).into());
    }
    let fpu = &mut ctx.state.fpu;
    fpu.fcw = u16_at(0);
    fpu.fsw = u16_at(2);
    fpu.ftwx = img[4];
    fpu.last_opcode = u16_at(6) & 0x7ff;
    if wide {
        fpu.last_ip = u64_at(8);
        fpu.last_dp = u64_at(16);
    } else {
        fpu.last_ip = u64::from(u32_at(8));
        fpu.last_dp = u64::from(u32_at(16));
    }
    for (i, st) in fpu.fpr.iter_mut().enumerate() {
        *st = [0; 16];
        st[..10].copy_from_slice(&img[32 + 16 * i..42 + 16 * i]);
    }
    if xmm_count > 0 {
        fpu.mxcsr = mxcsr;
    }
    for (i, xmm) in fpu.xmm.iter_mut().take(xmm_count).enumerate() {
        xmm.copy_from_slice(&img[160 + 16 * i..176 + 16 * i]);
    }
    ctx.wb.fpu = true;
    Ok(())
}

#[cfg(test)]
#[path = "fxsave_tests.rs"]
mod tests;
