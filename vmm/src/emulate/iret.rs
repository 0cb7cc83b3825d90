//! IRET in protected mode and 64-bit mode (KVM's emulator only handles real-mode IRET):
//! same-privilege and outer-privilege returns, descriptor checks against the GDT/LDT in guest
//! memory, the hidden segment state KVM needs, and the EFLAGS restore rules.
//!
//! Task returns (EFLAGS.NT=1) and returns to virtual-8086 mode are reported as unsupported.

use iced_x86::{Code, Register};
use kvm_bindings::kvm_segment;

use super::cpu::{flags, CpuMode, CpuState, GuestMemoryAccess};
use super::operand::{is_canonical, segment_linear};
use super::paging::{self, Access};
use super::{Ctx, Fault, Stop};

/// Values popped from the stack.
struct Frame {
    ip: u64,
    cs: u16,
    flags: u64,
    /// SS:ESP, for returns that pop them (outer privilege, or always in 64-bit mode).
    stack: Option<(u64, u16)>,
    /// Bytes popped.
    size: u64,
}

/// A segment descriptor read from the GDT or LDT.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Descriptor {
    pub raw: u64,
    /// Linear address of the descriptor (to set its accessed bit).
    pub la: u64,
}

impl Descriptor {
    pub(crate) fn type_(&self) -> u8 {
        ((self.raw >> 40) & 0xf) as u8
    }
    pub(crate) fn system(&self) -> bool {
        self.raw & (1 << 44) == 0
    }
    pub(crate) fn code(&self) -> bool {
        !self.system() && self.type_() & 8 != 0
    }
    pub(crate) fn dpl(&self) -> u8 {
        ((self.raw >> 45) & 3) as u8
    }
    pub(crate) fn present(&self) -> bool {
        self.raw & (1 << 47) != 0
    }
    pub(crate) fn long(&self) -> bool {
        self.raw & (1 << 53) != 0
    }
    pub(crate) fn db(&self) -> bool {
        self.raw & (1 << 54) != 0
    }

    /// The hidden segment state KVM's kvm_segment carries (accessed bit set).
    pub(crate) fn segment(&self, selector: u16) -> kvm_segment {
        let r = self.raw;
        let base = ((r >> 16) & 0xff_ffff) | (((r >> 56) & 0xff) << 24);
        let mut limit = ((r & 0xffff) | (((r >> 48) & 0xf) << 16)) as u32;
        let g = (r >> 55) & 1;
        if g != 0 {
            limit = (limit << 12) | 0xfff;
        }
        kvm_segment {
            base,
            limit,
            selector,
            type_: self.type_() | 1,
            present: 1,
            dpl: self.dpl(),
            db: u8::from(self.db()),
            s: 1,
            l: u8::from(self.long()),
            g: g as u8,
            avl: ((r >> 52) & 1) as u8,
            unusable: 0,
            padding: 0,
        }
    }
}

pub(crate) fn emulate<M: GuestMemoryAccess + ?Sized>(ctx: &mut Ctx<'_, M>) -> Result<(), Stop> {
    let state = &*ctx.state;
    let mode = state.mode();
    if !matches!(
        mode,
        CpuMode::Protected16 | CpuMode::Protected32 | CpuMode::Long64
    ) {
        return Err(Stop::Unsupported("IRET in real or virtual-8086 mode"));
    }
    if state.sregs.efer & super::cpu::cr::EFER_LMA != 0 && mode != CpuMode::Long64 {
        return Err(Stop::Unsupported("IRET in compatibility mode"));
    }
    if state.regs.rflags & flags::NT != 0 {
        return Err(Stop::Unsupported("IRET task return (EFLAGS.NT=1)"));
    }
    let op: u64 = match ctx.instr.code() {
        Code::Iretw => 2,
        Code::Iretd => 4,
        _ => 8,
    };
    let long = mode == CpuMode::Long64;
    let mut frame = pop_frame(state, ctx.mem, op, long, false)?;
    if !long && op == 4 && frame.flags & flags::VM != 0 && state.cpl() == 0 {
        return Err(Stop::Unsupported("IRET to virtual-8086 mode"));
    }
    let cs = check_cs(state, ctx.mem, frame.cs)?;
    let rpl = (frame.cs & 3) as u8;
    let outer = rpl > state.cpl();
    if outer && !long {
        frame = pop_frame(state, ctx.mem, op, long, true)?;
    }
    let ss = match frame.stack {
        Some((_, sel)) => Some(check_ss(state, ctx.mem, sel, rpl, &cs)?),
        None => None,
    };
    check_ip(state, &cs, frame.ip)?;
    commit(ctx, &frame, &cs, ss, rpl, op)
}

/// Reads the IRET frame from SS:RSP; `with_stack` also pops SS:ESP (always in 64-bit mode).
fn pop_frame<M: GuestMemoryAccess + ?Sized>(
    state: &CpuState,
    mem: &M,
    op: u64,
    long: bool,
    with_stack: bool,
) -> Result<Frame, Stop> {
    let count = if long || with_stack { 5 } else { 3 };
    let mut values = [0u64; 5];
    for (i, value) in values.iter_mut().enumerate().take(count) {
        let offset = stack_offset(state, state.regs.rsp.wrapping_add(i as u64 * op));
        let la = segment_linear(state, Register::SS, offset, op as usize, false)?;
        let mut buf = [0u8; 8];
        paging::read_linear(state, mem, la, &mut buf[..op as usize], Access::READ)?;
        *value = u64::from_le_bytes(buf);
    }
    Ok(Frame {
        ip: values[0],
        cs: values[1] as u16,
        flags: values[2],
        stack: (count == 5).then_some((values[3], values[4] as u16)),
        size: count as u64 * op,
    })
}

/// Wraps a stack offset to the stack address size (64, 32 or 16 bits).
pub(crate) fn stack_offset(state: &CpuState, offset: u64) -> u64 {
    if state.mode() == CpuMode::Long64 {
        offset
    } else if state.sregs.ss.db != 0 {
        offset & 0xffff_ffff
    } else {
        offset & 0xffff
    }
}

/// Reads the descriptor for `selector` from the GDT or LDT; #GP(selector) beyond the limit.
pub(crate) fn read_descriptor<M: GuestMemoryAccess + ?Sized>(
    state: &CpuState,
    mem: &M,
    selector: u16,
) -> Result<Descriptor, Stop> {
    let error = Fault::gp(u32::from(selector & 0xfffc));
    let (base, limit) = if selector & 4 != 0 {
        let ldt = &state.sregs.ldt;
        if ldt.unusable != 0 || ldt.present == 0 {
            return Err(error.into());
        }
        (ldt.base, u64::from(ldt.limit))
    } else {
        (state.sregs.gdt.base, u64::from(state.sregs.gdt.limit))
    };
    let offset = u64::from(selector & 0xfff8);
    if offset + 7 > limit {
        return Err(error.into());
    }
    let la = base.wrapping_add(offset);
    let mut buf = [0u8; 8];
    paging::read_linear(state, mem, la, &mut buf, Access::SYSTEM_READ)?;
    Ok(Descriptor {
        raw: u64::from_le_bytes(buf),
        la,
    })
}

/// The checks IRET makes on the return code segment.
fn check_cs<M: GuestMemoryAccess + ?Sized>(
    state: &CpuState,
    mem: &M,
    selector: u16,
) -> Result<Descriptor, Stop> {
    if selector & 0xfffc == 0 {
        return Err(Fault::gp(0).into());
    }
    let error = Fault::gp(u32::from(selector & 0xfffc));
    let desc = read_descriptor(state, mem, selector)?;
    let rpl = (selector & 3) as u8;
    if !desc.code() || rpl < state.cpl() {
        return Err(error.into());
    }
    let conforming = desc.type_() & 4 != 0;
    if (conforming && desc.dpl() > rpl) || (!conforming && desc.dpl() != rpl) {
        return Err(error.into());
    }
    if state.mode() == CpuMode::Long64 && desc.long() && desc.db() {
        return Err(error.into());
    }
    if !desc.present() {
        return Err(Fault::np(u32::from(selector & 0xfffc)).into());
    }
    Ok(desc)
}

/// The checks IRET makes on the new stack segment. `None` is a null SS (allowed only when
/// returning to 64-bit mode below CPL 3).
fn check_ss<M: GuestMemoryAccess + ?Sized>(
    state: &CpuState,
    mem: &M,
    selector: u16,
    rpl: u8,
    cs: &Descriptor,
) -> Result<Option<Descriptor>, Stop> {
    if selector & 0xfffc == 0 {
        if state.mode() == CpuMode::Long64 && cs.long() && rpl != 3 {
            return Ok(None);
        }
        return Err(Fault::gp(0).into());
    }
    let error = Fault::gp(u32::from(selector & 0xfffc));
    if (selector & 3) as u8 != rpl {
        return Err(error.into());
    }
    let desc = read_descriptor(state, mem, selector)?;
    let writable_data = !desc.system() && !desc.code() && desc.type_() & 2 != 0;
    if !writable_data || desc.dpl() != rpl {
        return Err(error.into());
    }
    if !desc.present() {
        return Err(Fault::ss(u32::from(selector & 0xfffc)).into());
    }
    Ok(Some(desc))
}

/// The return IP must be within the new CS limit (or canonical when returning to 64-bit code).
fn check_ip(state: &CpuState, cs: &Descriptor, ip: u64) -> Result<(), Stop> {
    let ok = if state.mode() == CpuMode::Long64 && cs.long() {
        is_canonical(state, ip)
    } else {
        ip & 0xffff_ffff <= u64::from(cs.segment(0).limit)
    };
    if ok {
        Ok(())
    } else {
        Err(Fault::gp(0).into())
    }
}

/// The new RFLAGS: which bits IRET may change depends on operand size, CPL and IOPL.
fn new_rflags(state: &CpuState, popped: u64, op: u64) -> u64 {
    let cpl = u64::from(state.cpl());
    let iopl = (state.regs.rflags & flags::IOPL) >> 12;
    let mut mask = flags::STATUS | flags::TF | flags::DF | flags::NT;
    if op >= 4 {
        mask |= flags::RF | flags::AC | flags::ID;
    }
    if cpl <= iopl {
        mask |= flags::IF;
    }
    if cpl == 0 {
        mask |= flags::IOPL;
        if op >= 4 {
            mask |= flags::VIF | flags::VIP;
        }
    }
    if op == 2 {
        mask &= 0xffff;
    }
    (state.regs.rflags & !mask) | (popped & mask) | 0x2
}

/// Applies the return: RIP, CS, RFLAGS, the stack, and data segments the new CPL may not use.
fn commit<M: GuestMemoryAccess + ?Sized>(
    ctx: &mut Ctx<'_, M>,
    frame: &Frame,
    cs: &Descriptor,
    ss: Option<Option<Descriptor>>,
    rpl: u8,
    op: u64,
) -> Result<(), Stop> {
    set_accessed(ctx.state, ctx.mem, cs)?;
    if let Some(Some(desc)) = ss {
        set_accessed(ctx.state, ctx.mem, &desc)?;
    }
    let state = &mut *ctx.state;
    let old_cpl = state.cpl();
    state.regs.rflags = new_rflags(state, frame.flags, op);
    let new_cs = cs.segment(frame.cs);
    state.regs.rip = if op == 2 {
        frame.ip & 0xffff
    } else if new_cs.l != 0 {
        frame.ip
    } else {
        frame.ip & 0xffff_ffff
    };
    let was_long = state.mode() == CpuMode::Long64;
    match (frame.stack, ss) {
        (Some((sp, sel)), Some(desc)) => {
            state.sregs.ss = match desc {
                Some(d) => d.segment(sel),
                None => null_segment(sel, rpl),
            };
            state.regs.rsp = if was_long {
                sp
            } else if state.sregs.ss.db != 0 {
                sp & 0xffff_ffff
            } else {
                // A 16-bit stack segment only gets SP; the upper half of ESP stays (the
                // architectural leak espfix works around).
                (state.regs.rsp & 0xffff_0000) | (sp & 0xffff)
            };
        }
        _ => {
            let sp = stack_offset(state, state.regs.rsp.wrapping_add(frame.size));
            let keep = if state.sregs.ss.db != 0 {
                0
            } else {
                state.regs.rsp & !0xffff & 0xffff_ffff
            };
            state.regs.rsp = keep | sp;
        }
    }
    state.sregs.cs = new_cs;
    if rpl > old_cpl {
        for seg in [
            &mut state.sregs.es,
            &mut state.sregs.ds,
            &mut state.sregs.fs,
            &mut state.sregs.gs,
        ] {
            let data_or_nonconforming = seg.type_ & 8 == 0 || seg.type_ & 4 == 0;
            if seg.unusable == 0 && data_or_nonconforming && seg.dpl < rpl {
                // The base stays: it is what FS/GS keep in 64-bit mode and unused otherwise.
                *seg = kvm_segment {
                    base: seg.base,
                    ..null_segment(0, seg.dpl)
                };
            }
        }
    }
    ctx.wb.sregs = true;
    ctx.wb.nmi_unblocked = true;
    ctx.jumped = true;
    Ok(())
}

fn null_segment(selector: u16, dpl: u8) -> kvm_segment {
    kvm_segment {
        selector,
        dpl,
        unusable: 1,
        ..Default::default()
    }
}

/// Sets the accessed bit of a descriptor in memory, as loading a segment register does.
pub(crate) fn set_accessed<M: GuestMemoryAccess + ?Sized>(
    state: &CpuState,
    mem: &M,
    desc: &Descriptor,
) -> Result<(), Stop> {
    if desc.raw & (1 << 40) != 0 {
        return Ok(());
    }
    let byte = ((desc.raw >> 40) as u8) | 1;
    paging::write_linear(
        state,
        mem,
        desc.la.wrapping_add(5),
        &[byte],
        Access::SYSTEM_WRITE,
    )
}

#[cfg(test)]
#[path = "iret_tests.rs"]
mod tests;
