//! Delivering an [`Injection`]: through KVM_SET_VCPU_EVENTS ([`Injection::apply_to_events`]),
//! or in userspace through the guest's IDT ([`deliver_through_idt`]) where KVM cannot inject
//! the event as is (a software interrupt with RFLAGS.IF=0 cannot be injected as an external
//! interrupt on VMX; KVM's soft-event injection reuses a stale instruction length).

use iced_x86::Register;
use kvm_bindings::{kvm_segment, kvm_sregs, kvm_vcpu_events};

use super::cpu::{flags, CpuMode, CpuState, GuestMemoryAccess};
use super::iret::{read_descriptor, set_accessed, stack_offset, Descriptor};
use super::operand::segment_linear;
use super::paging::{self, Access};
use super::{EmulateError, EventKind, Injection, Outcome, Stop, Writeback};

/// #UD, which KVM queues together with an emulation-failure exit at CPL 0.
const UD_VECTOR: u8 = 6;

/// Drops the #UD that KVM queues when it exits with KVM_INTERNAL_ERROR_EMULATION at CPL 0
/// (unless KVM_CAP_EXIT_ON_EMULATION_FAILURE is enabled). Call it on the events read with
/// KVM_GET_VCPU_EVENTS after that exit, before KVM_SET_VCPU_EVENTS; returns whether it did.
pub fn discard_emulation_failure_ud(events: &mut kvm_vcpu_events) -> bool {
    let ex = &mut events.exception;
    if ex.nr != UD_VECTOR || (ex.injected == 0 && ex.pending == 0) {
        return false;
    }
    ex.injected = 0;
    ex.pending = 0;
    ex.has_error_code = 0;
    ex.error_code = 0;
    events.exception_has_payload = 0;
    events.exception_payload = 0;
    true
}

impl Injection {
    /// Fills `events` (read with KVM_GET_VCPU_EVENTS) so that KVM_SET_VCPU_EVENTS delivers this
    /// event at the next KVM_RUN. Exceptions go in `exception` (injected, with the error code);
    /// for #PF `sregs.cr2` is set too (write it with KVM_SET_SREGS) and the return is `true`.
    /// Software interrupts go in `interrupt` as an already-started event (RIP was advanced, so
    /// the return address is right); on VMX this needs RFLAGS.IF=1, otherwise use
    /// [`deliver_through_idt`].
    pub fn apply_to_events(&self, events: &mut kvm_vcpu_events, sregs: &mut kvm_sregs) -> bool {
        discard_emulation_failure_ud(events);
        match self.kind {
            EventKind::Exception => {
                let ex = &mut events.exception;
                ex.injected = 1;
                ex.pending = 0;
                ex.nr = self.vector;
                ex.has_error_code = u8::from(self.error_code.is_some());
                ex.error_code = self.error_code.unwrap_or(0);
                events.exception_has_payload = 0;
                events.exception_payload = 0;
            }
            EventKind::SoftwareInterrupt => {
                events.interrupt.injected = 1;
                events.interrupt.nr = self.vector;
                events.interrupt.soft = 0;
            }
        }
        match self.cr2 {
            Some(cr2) => {
                sregs.cr2 = cr2;
                true
            }
            None => false,
        }
    }
}

/// Delivers `inj` the way the CPU would, through the guest's IVT (real mode) or IDT
/// (protected and 64-bit mode: interrupt/trap gates, privilege change through the TSS, IST):
/// pushes the frame, loads CS:RIP from the gate and updates RFLAGS. Returns
/// [`Outcome::Emulated`] (write back regs and sregs), or [`Outcome::Unsupported`] for task
/// gates, virtual-8086 mode and faults during delivery (a double fault is not emulated).
pub fn deliver_through_idt<M: GuestMemoryAccess + ?Sized>(
    state: &mut CpuState,
    mem: &M,
    inj: &Injection,
) -> Result<Outcome, EmulateError> {
    let mut next = *state;
    let ia32e = state.sregs.efer & super::cpu::cr::EFER_LMA != 0;
    let result = match state.mode() {
        CpuMode::Real => deliver_real(&mut next, mem, inj.vector),
        CpuMode::Virtual8086 => Err(Stop::Unsupported("event delivery from virtual-8086 mode")),
        _ if ia32e => deliver_long(&mut next, mem, inj),
        _ => deliver_protected(&mut next, mem, inj),
    };
    let unsupported = |detail| Outcome::Unsupported {
        mnemonic: format!("delivery of vector {}", inj.vector),
        mode: state.mode(),
        rip: state.regs.rip,
        detail,
    };
    match result {
        Ok(()) => {
            if let Some(cr2) = inj.cr2 {
                next.sregs.cr2 = cr2;
            }
            *state = next;
            Ok(Outcome::Emulated(Writeback {
                regs: true,
                sregs: true,
                ..Default::default()
            }))
        }
        Err(Stop::Memory { gpa, len }) => Err(EmulateError::NotRam {
            rip: state.regs.rip,
            gpa,
            len,
        }),
        Err(Stop::Unsupported(detail)) => Ok(unsupported(detail)),
        Err(_) => Ok(unsupported(
            "fault while delivering the event (double fault not emulated)",
        )),
    }
}

/// Pushes `size` bytes of `value` on SS:RSP of `state` (already switched to the new stack).
fn push<M: GuestMemoryAccess + ?Sized>(
    state: &mut CpuState,
    mem: &M,
    value: u64,
    size: u64,
    access: Access,
) -> Result<(), Stop> {
    let sp = stack_offset(state, state.regs.rsp.wrapping_sub(size));
    let la = segment_linear(state, Register::SS, sp, size as usize, true)?;
    paging::write_linear(
        state,
        mem,
        la,
        &value.to_le_bytes()[..size as usize],
        access,
    )?;
    let keep = if state.mode() != CpuMode::Long64 && state.sregs.ss.db == 0 {
        state.regs.rsp & !0xffff
    } else {
        0
    };
    state.regs.rsp = keep | sp;
    Ok(())
}

fn read_u64<M: GuestMemoryAccess + ?Sized>(
    state: &CpuState,
    mem: &M,
    la: u64,
    len: usize,
) -> Result<u64, Stop> {
    let mut buf = [0u8; 8];
    paging::read_linear(state, mem, la, &mut buf[..len], Access::SYSTEM_READ)?;
    Ok(u64::from_le_bytes(buf))
}

fn deliver_real<M: GuestMemoryAccess + ?Sized>(
    state: &mut CpuState,
    mem: &M,
    vector: u8,
) -> Result<(), Stop> {
    let offset = u64::from(vector) * 4;
    if offset + 3 > u64::from(state.sregs.idt.limit) {
        return Err(Stop::Unsupported("vector beyond the real-mode IVT limit"));
    }
    let entry = read_u64(state, mem, state.sregs.idt.base.wrapping_add(offset), 4)?;
    let (old_flags, old_cs, old_ip) = (state.regs.rflags, state.sregs.cs.selector, state.regs.rip);
    for value in [old_flags, u64::from(old_cs), old_ip] {
        push(state, mem, value & 0xffff, 2, Access::WRITE)?;
    }
    state.regs.rflags &= !(flags::IF | flags::TF | flags::AC | flags::RF);
    let selector = (entry >> 16) as u16;
    state.sregs.cs.selector = selector;
    state.sregs.cs.base = u64::from(selector) << 4;
    state.regs.rip = entry & 0xffff;
    Ok(())
}

/// A gate read from the IDT.
struct Gate {
    selector: u16,
    offset: u64,
    /// Gate type: 0xE/0xF interrupt/trap (32- or 64-bit), 0x6/0x7 16-bit.
    kind: u8,
    ist: u8,
}

fn read_gate<M: GuestMemoryAccess + ?Sized>(
    state: &CpuState,
    mem: &M,
    vector: u8,
    long: bool,
) -> Result<Gate, Stop> {
    let size: u64 = if long { 16 } else { 8 };
    let offset = u64::from(vector) * size;
    if offset + size - 1 > u64::from(state.sregs.idt.limit) {
        return Err(Stop::Unsupported("vector beyond the IDT limit"));
    }
    let la = state.sregs.idt.base.wrapping_add(offset);
    let raw = read_u64(state, mem, la, 8)?;
    if raw & (1 << 47) == 0 {
        return Err(Stop::Unsupported("IDT gate not present"));
    }
    let kind = ((raw >> 40) & 0x1f) as u8;
    let mut target = (raw & 0xffff) | (((raw >> 48) & 0xffff) << 16);
    match (kind, long) {
        (0x0e | 0x0f, true) => target |= read_u64(state, mem, la.wrapping_add(8), 4)? << 32,
        (0x0e | 0x0f, false) => {}
        (0x06 | 0x07, false) => target &= 0xffff,
        (0x05, _) => return Err(Stop::Unsupported("task gate")),
        _ => return Err(Stop::Unsupported("invalid IDT gate type")),
    }
    Ok(Gate {
        selector: (raw >> 16) as u16,
        offset: target,
        kind,
        ist: ((raw >> 32) & 7) as u8,
    })
}

/// The gate's code segment and the CPL after delivery.
fn target_cs<M: GuestMemoryAccess + ?Sized>(
    state: &CpuState,
    mem: &M,
    gate: &Gate,
    long: bool,
) -> Result<(Descriptor, u8), Stop> {
    if gate.selector & 0xfffc == 0 {
        return Err(Stop::Unsupported("null code segment in the IDT gate"));
    }
    let desc = read_descriptor(state, mem, gate.selector)?;
    let cpl = state.cpl();
    if !desc.code() || !desc.present() || desc.dpl() > cpl || (long && (!desc.long() || desc.db()))
    {
        return Err(Stop::Unsupported("invalid code segment in the IDT gate"));
    }
    let conforming = desc.type_() & 4 != 0;
    let new_cpl = if !conforming && desc.dpl() < cpl {
        desc.dpl()
    } else {
        cpl
    };
    Ok((desc, new_cpl))
}

fn new_flags(rflags: u64, gate_kind: u8) -> u64 {
    let mut cleared = flags::TF | flags::NT | flags::RF | flags::VM;
    if gate_kind & 1 == 0 {
        cleared |= flags::IF;
    }
    rflags & !cleared
}

fn deliver_long<M: GuestMemoryAccess + ?Sized>(
    state: &mut CpuState,
    mem: &M,
    inj: &Injection,
) -> Result<(), Stop> {
    let gate = read_gate(state, mem, inj.vector, true)?;
    let (cs, new_cpl) = target_cs(state, mem, &gate, true)?;
    let old = *state;
    let tss = state.sregs.tr.base;
    let inner = new_cpl < old.cpl();
    let rsp = if gate.ist != 0 {
        read_u64(
            state,
            mem,
            tss.wrapping_add(0x24 + 8 * (u64::from(gate.ist) - 1)),
            8,
        )?
    } else if inner {
        read_u64(state, mem, tss.wrapping_add(4 + 8 * u64::from(new_cpl)), 8)?
    } else {
        old.regs.rsp
    };
    set_accessed(state, mem, &cs)?;
    if inner {
        state.sregs.ss = kvm_segment {
            selector: u16::from(new_cpl),
            dpl: new_cpl,
            unusable: 1,
            ..Default::default()
        };
    }
    state.regs.rsp = rsp & !0xf;
    // The new CS first: the frame is pushed in 64-bit mode even when coming from
    // compatibility mode.
    state.sregs.cs = cs.segment((gate.selector & !3) | u16::from(new_cpl));
    let access = if inner {
        Access::SYSTEM_WRITE
    } else {
        Access::WRITE
    };
    let frame = [
        u64::from(old.sregs.ss.selector),
        old.regs.rsp,
        old.regs.rflags,
        u64::from(old.sregs.cs.selector),
        old.regs.rip,
    ];
    for value in frame.into_iter().chain(error_code(inj)) {
        push(state, mem, value, 8, access)?;
    }
    state.regs.rip = gate.offset;
    state.regs.rflags = new_flags(old.regs.rflags, gate.kind);
    Ok(())
}

fn error_code(inj: &Injection) -> Option<u64> {
    match inj.kind {
        EventKind::Exception => inj.error_code.map(u64::from),
        EventKind::SoftwareInterrupt => None,
    }
}

fn deliver_protected<M: GuestMemoryAccess + ?Sized>(
    state: &mut CpuState,
    mem: &M,
    inj: &Injection,
) -> Result<(), Stop> {
    let gate = read_gate(state, mem, inj.vector, false)?;
    let (cs, new_cpl) = target_cs(state, mem, &gate, false)?;
    let old = *state;
    let inner = new_cpl < old.cpl();
    let size: u64 = if gate.kind & 8 != 0 { 4 } else { 2 };
    let new_eip = gate.offset;
    if new_eip > u64::from(cs.segment(0).limit) {
        return Err(Stop::Unsupported(
            "IDT gate offset beyond the code segment limit",
        ));
    }
    set_accessed(state, mem, &cs)?;
    if inner {
        switch_to_tss_stack(state, mem, new_cpl)?;
    }
    let access = if inner {
        Access::SYSTEM_WRITE
    } else {
        Access::WRITE
    };
    let mut frame = Vec::with_capacity(6);
    if inner {
        frame.extend([u64::from(old.sregs.ss.selector), old.regs.rsp]);
    }
    frame.extend([
        old.regs.rflags,
        u64::from(old.sregs.cs.selector),
        old.regs.rip,
    ]);
    frame.extend(error_code(inj));
    for value in frame {
        push(state, mem, value, size, access)?;
    }
    state.sregs.cs = cs.segment((gate.selector & !3) | u16::from(new_cpl));
    state.regs.rip = new_eip;
    state.regs.rflags = new_flags(old.regs.rflags, gate.kind);
    Ok(())
}

/// Loads SS:ESP for `cpl` from the 32-bit (or 16-bit) TSS, with the checks on the new SS.
fn switch_to_tss_stack<M: GuestMemoryAccess + ?Sized>(
    state: &mut CpuState,
    mem: &M,
    cpl: u8,
) -> Result<(), Stop> {
    let tr = state.sregs.tr;
    let n = u64::from(cpl);
    let (esp, ss) = if tr.type_ & 8 != 0 {
        (
            read_u64(state, mem, tr.base.wrapping_add(4 + 8 * n), 4)?,
            read_u64(state, mem, tr.base.wrapping_add(8 + 8 * n), 2)?,
        )
    } else {
        (
            read_u64(state, mem, tr.base.wrapping_add(2 + 4 * n), 2)?,
            read_u64(state, mem, tr.base.wrapping_add(4 + 4 * n), 2)?,
        )
    };
    let selector = ss as u16;
    let desc = read_descriptor(state, mem, selector)?;
    let writable_data = !desc.system() && !desc.code() && desc.type_() & 2 != 0;
    if selector & 3 != u16::from(cpl) || !writable_data || desc.dpl() != cpl || !desc.present() {
        return Err(Stop::Unsupported("invalid stack segment in the TSS"));
    }
    set_accessed(state, mem, &desc)?;
    state.sregs.ss = desc.segment(selector);
    state.regs.rsp = if desc.db() {
        esp
    } else {
        (state.regs.rsp & !0xffff) | (esp & 0xffff)
    };
    Ok(())
}

#[cfg(test)]
#[path = "inject_tests.rs"]
mod tests;
