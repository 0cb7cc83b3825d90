//! Userspace fallback for instructions the host's KVM instruction emulator lacks (PVM hosts).
//!
//! On a PVM host, guest ring-0 code runs through KVM's instruction emulator, which lacks most of
//! x87 (it has FNINIT and FNSTCW), SSE, INT3, CLAC/STAC, POPCNT, CMPXCHG16B, RDSSP and 32-bit
//! IRET among others. Such an instruction ends KVM_RUN with KVM_EXIT_INTERNAL_ERROR /
//! KVM_INTERNAL_ERROR_EMULATION. The vCPU loop then:
//!
//! 1. takes the instruction bytes from the exit if KVM gave them ([`exit_instruction_bytes`]);
//! 2. builds a [`CpuState`] from KVM_GET_REGS / KVM_GET_SREGS / KVM_GET_FPU;
//! 3. calls [`emulate`], which decodes the instruction (fetching it through the guest page tables
//!    when the exit had no bytes), executes it on the state and guest memory, and says what to do:
//!    [`Outcome::Emulated`] (write back what [`Writeback`] names and resume),
//!    [`Outcome::Inject`] (deliver an exception or software interrupt with KVM_SET_VCPU_EVENTS),
//!    or [`Outcome::Unsupported`] (stop the VM naming the mnemonic, mode and RIP).
//!
//! Nothing here talks to KVM, so every instruction is tested against the host CPU running it
//! natively, with no /dev/kvm.
//!
//! x87 instructions other than the control ones (`x87_arith.rs`) are not computed here: the
//! instruction runs on the host CPU with the guest's x87 registers loaded, from a table of
//! precompiled stubs whose memory operand is a local buffer (`x87_host.rs`,
//! docs/decisions/0005-x87-host-execution.md), so every result is the processor's own;
//! `x87_arith.rs` moves the memory operand through the guest's page tables and keeps the
//! last-instruction pointers.
//!
//! The vCPU loop's glue, as checked on this PVM host (KVM gives the bytes with
//! KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES; it queued no #UD here, but
//! [`discard_emulation_failure_ud`] drops one where KVM does):
//!
//! ```ignore
//! VcpuExit::InternalError => {
//!     let bytes = emulate::exit_instruction_bytes(vcpu.get_kvm_run());
//!     let mut state = CpuState::new(vcpu.get_regs()?, vcpu.get_sregs()?, vcpu.get_fpu()?);
//!     let mut events = vcpu.get_vcpu_events()?;
//!     emulate::discard_emulation_failure_ud(&mut events);
//!     match emulate::emulate(&mut state, &guest_memory, bytes.as_deref(), &mut stats)? {
//!         Outcome::Emulated(wb) => {
//!             vcpu.set_regs(&state.regs)?;
//!             if wb.sregs { vcpu.set_sregs(&state.sregs)?; }
//!             if wb.fpu { vcpu.set_fpu(&state.fpu)?; }
//!             if wb.nmi_unblocked { events.nmi.masked = 0; }
//!         }
//!         Outcome::Inject(inj) => {
//!             // Software interrupts advanced RIP; faults left the state untouched.
//!             vcpu.set_regs(&state.regs)?;
//!             if inj.apply_to_events(&mut events, &mut state.sregs) {
//!                 vcpu.set_sregs(&state.sregs)?; // CR2 for #PF
//!             }
//!         }
//!         unsupported => return Err(/* stop the VM, print `unsupported` (Display) */),
//!     }
//!     vcpu.set_vcpu_events(&events)?;
//! }
//! ```

mod bits;
mod control;
mod cpu;
mod fxsave;
mod inject;
mod iret;
#[rustfmt::skip]
mod mnemonic_names;
mod operand;
mod paging;
mod sse;
mod stats;
mod x87;
mod x87_arith;
mod x87_host;

use iced_x86::{Code, Decoder, DecoderError, DecoderOptions, Instruction, Mnemonic};
use kvm_bindings::{kvm_run, KVM_EXIT_INTERNAL_ERROR, KVM_INTERNAL_ERROR_EMULATION};

pub use cpu::{flags, CpuMode, CpuState, GuestFeatures, GuestMemoryAccess};
pub use inject::{deliver_through_idt, discard_emulation_failure_ud};
pub use stats::EmulationStats;

use cpu::cr;
use paging::Access;

/// Errors that stop the VM: the instruction cannot be emulated against this guest's memory.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EmulateError {
    /// An access reached guest-physical memory that is not RAM (MMIO or unmapped).
    #[error("instruction at RIP {rip:#x} accesses guest-physical {gpa:#x} ({len} bytes), which is not RAM")]
    NotRam {
        /// RIP of the instruction.
        rip: u64,
        /// Guest-physical address of the failed access.
        gpa: u64,
        /// Length of the failed access.
        len: usize,
    },
}

/// What the vCPU loop writes back with KVM_SET_* after an emulated instruction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Writeback {
    /// `state.regs` changed (always true after an emulated instruction: RIP moved).
    pub regs: bool,
    /// `state.sregs` changed (segments after IRET).
    pub sregs: bool,
    /// `state.fpu` changed (x87/SSE state).
    pub fpu: bool,
    /// The instruction was IRET: it ends NMI blocking (clear `kvm_vcpu_events.nmi.masked`).
    pub nmi_unblocked: bool,
    /// RFLAGS.TF was set when the instruction started: a real CPU raises a single-step #DB
    /// (vector 1, trap, DR6.BS) after it. Inject it after writing back if the VMM supports
    /// guest debugging; it is reported, not delivered.
    pub debug_trap: bool,
}

/// How an event must be delivered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A fault: nothing changed, RIP still points at the instruction.
    Exception,
    /// INT3 / INT n / INTO: RIP already points past the instruction (the return address a real
    /// CPU pushes); write back `regs`, then deliver the vector like an interrupt.
    SoftwareInterrupt,
}

/// An exception or software interrupt to deliver to the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Injection {
    /// Interrupt vector (6 = #UD, 7 = #NM, 13 = #GP, 14 = #PF, 3 = INT3, ...).
    pub vector: u8,
    /// Error code to push, if the vector has one.
    pub error_code: Option<u32>,
    /// For #PF: the faulting linear address (goes to CR2).
    pub cr2: Option<u64>,
    /// Fault or software interrupt.
    pub kind: EventKind,
}

/// The result of [`emulate`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The instruction ran: write back what [`Writeback`] names and resume.
    Emulated(Writeback),
    /// Deliver this event (see [`EventKind`] for what to write back first).
    Inject(Injection),
    /// The instruction is not one this emulator knows: stop the VM with this message.
    Unsupported {
        /// Mnemonic of the instruction ("(invalid)" if it could not be decoded).
        mnemonic: String,
        /// CPU mode it ran in.
        mode: CpuMode,
        /// Its RIP.
        rip: u64,
        /// Which part is unsupported.
        detail: &'static str,
    },
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Emulated(_) => f.write_str("emulated"),
            Outcome::Inject(i) => write!(f, "inject vector {} ({:?})", i.vector, i.kind),
            Outcome::Unsupported {
                mnemonic,
                mode,
                rip,
                detail,
            } => write!(
                f,
                "instruction `{mnemonic}` at RIP {rip:#x} in {mode} cannot be emulated ({detail})"
            ),
        }
    }
}

/// An architectural exception raised while emulating.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Fault {
    pub vector: u8,
    pub error_code: Option<u32>,
    pub cr2: Option<u64>,
}

impl Fault {
    pub const UD: Fault = Fault {
        vector: 6,
        error_code: None,
        cr2: None,
    };
    pub const NM: Fault = Fault {
        vector: 7,
        error_code: None,
        cr2: None,
    };
    pub const MF: Fault = Fault {
        vector: 16,
        error_code: None,
        cr2: None,
    };

    pub fn gp(code: u32) -> Fault {
        Fault {
            vector: 13,
            error_code: Some(code),
            cr2: None,
        }
    }
    pub fn ss(code: u32) -> Fault {
        Fault {
            vector: 12,
            error_code: Some(code),
            cr2: None,
        }
    }
    pub fn np(code: u32) -> Fault {
        Fault {
            vector: 11,
            error_code: Some(code),
            cr2: None,
        }
    }
    pub fn page(code: u32, la: u64) -> Fault {
        Fault {
            vector: 14,
            error_code: Some(code),
            cr2: Some(la),
        }
    }
}

/// Why an instruction did not complete normally (internal to the emulator).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stop {
    /// Raise this exception.
    Fault(Fault),
    /// A software interrupt: advance RIP, then deliver the vector.
    SoftwareInterrupt(u8),
    /// The instruction (or this form of it) is not emulated.
    Unsupported(&'static str),
    /// A guest-physical access missed RAM.
    Memory { gpa: u64, len: usize },
}

impl From<Fault> for Stop {
    fn from(fault: Fault) -> Self {
        Stop::Fault(fault)
    }
}

/// One instruction being emulated: the state, guest memory and the decoded instruction.
pub(crate) struct Ctx<'a, M: GuestMemoryAccess + ?Sized> {
    pub state: &'a mut CpuState,
    pub mem: &'a M,
    pub instr: Instruction,
    /// The instruction's bytes (the first `instr.len()` are meaningful).
    pub bytes: [u8; 15],
    pub wb: Writeback,
    /// The handler set RIP itself (IRET); do not advance it.
    pub jumped: bool,
}

/// The instruction bytes KVM reported with an emulation-failure exit, if any.
///
/// Returns `None` unless `run` is a KVM_EXIT_INTERNAL_ERROR with suberror
/// KVM_INTERNAL_ERROR_EMULATION whose flags carry KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES.
/// KVM may have fetched only part of the instruction; [`emulate`] reads the rest from guest memory.
pub fn exit_instruction_bytes(run: &kvm_run) -> Option<Vec<u8>> {
    if run.exit_reason != KVM_EXIT_INTERNAL_ERROR {
        return None;
    }
    // SAFETY: exit_reason is KVM_EXIT_INTERNAL_ERROR, so the kernel filled the `internal` /
    // `emulation_failure` member of the union; both are plain integers and bytes, valid for any
    // bit pattern.
    let failure = unsafe { run.__bindgen_anon_1.emulation_failure };
    let has_bytes = failure.flags
        & u64::from(kvm_bindings::KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES)
        != 0;
    if failure.suberror != KVM_INTERNAL_ERROR_EMULATION || failure.ndata < 3 || !has_bytes {
        return None;
    }
    // SAFETY: the union's only member is `insn_size` + `insn_bytes`, plain bytes.
    let bytes = unsafe { failure.__bindgen_anon_1.__bindgen_anon_1 };
    let len = usize::from(bytes.insn_size).min(bytes.insn_bytes.len());
    Some(bytes.insn_bytes[..len].to_vec())
}

/// Emulates the instruction at CS:RIP on `state` and guest memory `mem`.
///
/// `insn` are the instruction bytes from the exit if KVM gave them; missing or truncated bytes
/// are fetched from guest memory through the guest's page tables. `stats` counts the instruction
/// when it was emulated.
pub fn emulate<M: GuestMemoryAccess + ?Sized>(
    state: &mut CpuState,
    mem: &M,
    insn: Option<&[u8]>,
    stats: &mut EmulationStats,
) -> Result<Outcome, EmulateError> {
    let rip = state.regs.rip;
    let (instr, bytes) = match decode(state, mem, insn) {
        Ok(decoded) => decoded,
        Err(stop) => return finish_stop(state, stop, "(invalid)", rip),
    };
    let mnemonic = instr.mnemonic();
    let single_step = state.regs.rflags & flags::TF != 0;
    // Work on a copy: a fault or an unsupported form leaves `state` as it was.
    let mut work = *state;
    let mut ctx = Ctx {
        state: &mut work,
        mem,
        instr,
        bytes,
        wb: Writeback::default(),
        jumped: false,
    };
    let result = dispatch(&mut ctx);
    let (wb, jumped) = (ctx.wb, ctx.jumped);
    let name = stats::mnemonic_name(mnemonic).unwrap_or("other");
    match result {
        Ok(()) => {
            // IRET sets RIP and RFLAGS.RF itself; everything else moves on and clears RF.
            if !jumped {
                advance_rip(&mut work, &instr);
                work.regs.rflags &= !flags::RF;
            }
            *state = work;
            stats.record(name);
            Ok(Outcome::Emulated(Writeback {
                regs: true,
                debug_trap: single_step,
                ..wb
            }))
        }
        Err(Stop::SoftwareInterrupt(vector)) => {
            advance_rip(&mut work, &instr);
            *state = work;
            stats.record(name);
            Ok(Outcome::Inject(Injection {
                vector,
                error_code: None,
                cr2: None,
                kind: EventKind::SoftwareInterrupt,
            }))
        }
        Err(stop) => finish_stop(state, stop, stats::name(mnemonic), rip),
    }
}

fn finish_stop(
    state: &CpuState,
    stop: Stop,
    mnemonic: &str,
    rip: u64,
) -> Result<Outcome, EmulateError> {
    match stop {
        Stop::Fault(fault) => {
            // Real-address mode pushes no error codes.
            let error_code = if state.mode() == CpuMode::Real {
                None
            } else {
                fault.error_code
            };
            Ok(Outcome::Inject(Injection {
                vector: fault.vector,
                error_code,
                cr2: fault.cr2,
                kind: EventKind::Exception,
            }))
        }
        Stop::Unsupported(detail) => Ok(Outcome::Unsupported {
            mnemonic: mnemonic.to_string(),
            mode: state.mode(),
            rip,
            detail,
        }),
        Stop::Memory { gpa, len } => Err(EmulateError::NotRam { rip, gpa, len }),
        Stop::SoftwareInterrupt(_) => Ok(Outcome::Unsupported {
            mnemonic: mnemonic.to_string(),
            mode: state.mode(),
            rip,
            detail: "software interrupt while decoding",
        }),
    }
}

/// Moves RIP past `instr`, wrapping at the code size like a real CPU.
fn advance_rip(state: &mut CpuState, instr: &Instruction) {
    let next = instr.next_ip();
    state.regs.rip = match state.mode().bitness() {
        64 => next,
        32 => next & 0xffff_ffff,
        _ => next & 0xffff,
    };
}

fn dispatch<M: GuestMemoryAccess + ?Sized>(ctx: &mut Ctx<'_, M>) -> Result<(), Stop> {
    use Mnemonic as Mn;
    match ctx.instr.mnemonic() {
        Mn::Wait
        | Mn::Fninit
        | Mn::Finit
        | Mn::Fnclex
        | Mn::Fclex
        | Mn::Fnstsw
        | Mn::Fstsw
        | Mn::Fnstcw
        | Mn::Fstcw
        | Mn::Fldcw => x87::emulate(ctx),
        Mn::Ldmxcsr | Mn::Stmxcsr | Mn::Fxsave | Mn::Fxsave64 | Mn::Fxrstor | Mn::Fxrstor64 => {
            sse::emulate_state(ctx)
        }
        Mn::Popcnt | Mn::Lzcnt | Mn::Tzcnt | Mn::Cmpxchg8b | Mn::Cmpxchg16b => bits::emulate(ctx),
        Mn::Int3
        | Mn::Int
        | Mn::Into
        | Mn::Iret
        | Mn::Iretd
        | Mn::Iretq
        | Mn::Clac
        | Mn::Stac
        | Mn::Endbr64
        | Mn::Endbr32
        | Mn::Rdsspd
        | Mn::Rdsspq => control::emulate(ctx),
        Mn::Ud0 | Mn::Ud1 | Mn::Ud2 => Err(Fault::UD.into()),
        _ if x87_arith::handles(ctx.instr.code()) => x87_arith::emulate(ctx),
        _ if sse::handles(ctx.instr.code()) => sse::emulate(ctx),
        _ => Err(Stop::Unsupported(
            "not in the fallback emulator's instruction set",
        )),
    }
}

/// Decodes the instruction at CS:RIP from `insn` or, if that is missing or incomplete, from
/// guest memory; returns it with its bytes.
fn decode<M: GuestMemoryAccess + ?Sized>(
    state: &CpuState,
    mem: &M,
    insn: Option<&[u8]>,
) -> Result<(Instruction, [u8; 15]), Stop> {
    let bitness = state.mode().bitness();
    let rip = state.regs.rip;
    if let Some(bytes) = insn.filter(|b| !b.is_empty()) {
        if let Some(decoded) = try_decode(bitness, bytes, rip)? {
            return Ok(decoded);
        }
    }
    let la = code_linear_address(state)?;
    let mut buf = [0u8; 15];
    let first = (0x1000 - (la & 0xfff) as usize).min(15);
    paging::read_linear(state, mem, la, &mut buf[..first], Access::FETCH)?;
    if let Some(decoded) = try_decode(bitness, &buf[..first], rip)? {
        return Ok(decoded);
    }
    paging::read_linear(
        state,
        mem,
        la.wrapping_add(first as u64),
        &mut buf[first..],
        Access::FETCH,
    )?;
    try_decode(bitness, &buf, rip)?.ok_or(Fault::UD.into())
}

/// Decodes one instruction; `Ok(None)` if more bytes are needed, #UD if it is invalid.
fn try_decode(
    bitness: u32,
    bytes: &[u8],
    rip: u64,
) -> Result<Option<(Instruction, [u8; 15])>, Stop> {
    let mut decoder = Decoder::with_ip(bitness, bytes, rip, DecoderOptions::NONE);
    let instr = decoder.decode();
    if instr.code() != Code::INVALID {
        let mut copy = [0u8; 15];
        let len = instr.len().min(bytes.len()).min(15);
        copy[..len].copy_from_slice(&bytes[..len]);
        return Ok(Some((instr, copy)));
    }
    match decoder.last_error() {
        DecoderError::NoMoreBytes => Ok(None),
        _ => Err(Fault::UD.into()),
    }
}

/// Linear address of CS:RIP, with the CS limit check outside 64-bit mode.
fn code_linear_address(state: &CpuState) -> Result<u64, Stop> {
    let cs = &state.sregs.cs;
    match state.mode() {
        CpuMode::Long64 => Ok(state.regs.rip),
        _ => {
            let eip = state.regs.rip & 0xffff_ffff;
            if eip > u64::from(cs.limit) {
                return Err(Fault::gp(0).into());
            }
            Ok(cs.base.wrapping_add(eip) & 0xffff_ffff)
        }
    }
}

/// #UD/#NM checks shared by x87 instructions: CR0.EM or CR0.TS raise #NM.
pub(crate) fn check_x87(state: &CpuState) -> Result<(), Stop> {
    if state.sregs.cr0 & (cr::CR0_EM | cr::CR0_TS) != 0 {
        return Err(Fault::NM.into());
    }
    Ok(())
}

#[cfg(test)]
mod testutil;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::emulate::testutil::{long_mode_state, memory, run_from_memory, PT0};
    use vm_memory::{Bytes, GuestAddress};

    #[test]
    fn test_emulate_without_bytes_fetches_across_page_boundary() {
        // Arrange: popcnt rax, rcx (5 bytes) starting 2 bytes before a page boundary.
        let mut state = long_mode_state();
        let mem = memory();
        state.regs.rip = 0x5ffe;
        state.regs.rcx = 0xff;
        // Act
        let outcome = run_from_memory(&mut state, &mem, &[0xf3, 0x48, 0x0f, 0xb8, 0xc1]);
        // Assert
        assert!(matches!(outcome, Outcome::Emulated(_)));
        assert_eq!(state.regs.rax, 8);
        assert_eq!(state.regs.rip, 0x6003);
    }

    #[test]
    fn test_emulate_truncated_exit_bytes_are_completed_from_memory() {
        let mut state = long_mode_state();
        let mem = memory();
        state.regs.rcx = 0xf;
        mem.write_slice(
            &[0xf3, 0x48, 0x0f, 0xb8, 0xc1],
            GuestAddress(state.regs.rip),
        )
        .unwrap();
        let mut stats = EmulationStats::default();
        let outcome = emulate(&mut state, &mem, Some(&[0xf3, 0x48, 0x0f]), &mut stats).unwrap();
        assert!(matches!(outcome, Outcome::Emulated(_)));
        assert_eq!(state.regs.rax, 4);
        assert_eq!(stats.count("popcnt"), 1);
    }

    #[test]
    fn test_emulate_fetch_from_unmapped_page_raises_pf_with_fetch_bit() {
        let mut state = long_mode_state();
        let mem = memory();
        mem.write_obj(0u64, GuestAddress(PT0 + 6 * 8)).unwrap();
        state.regs.rip = 0x5ffe;
        mem.write_slice(&[0xf3, 0x48], GuestAddress(0x5ffe))
            .unwrap();
        let mut stats = EmulationStats::default();
        let outcome = emulate(&mut state, &mem, None, &mut stats).unwrap();
        let expected = Injection {
            vector: 14,
            error_code: Some(0x10),
            cr2: Some(0x6000),
            kind: EventKind::Exception,
        };
        assert_eq!(outcome, Outcome::Inject(expected));
        assert_eq!(stats.total(), 0);
    }

    #[test]
    fn test_emulate_invalid_opcode_raises_ud() {
        let mut state = long_mode_state();
        let mem = memory();
        let mut stats = EmulationStats::default();
        let outcome = emulate(&mut state, &mem, Some(&[0x0f, 0x0b]), &mut stats).unwrap();
        assert_eq!(testutil::injected(&outcome), Some((6, None)));
        // LOCK CPUID is invalid.
        let outcome = emulate(&mut state, &mem, Some(&[0xf0, 0x0f, 0xa2]), &mut stats).unwrap();
        assert_eq!(testutil::injected(&outcome), Some((6, None)));
    }

    #[test]
    fn test_emulate_fault_leaves_state_unchanged() {
        // Arrange: an MMX load (which would reset TOP and the tags) from an unmapped page.
        let mut state = long_mode_state();
        let mem = memory();
        mem.write_obj(0u64, GuestAddress(PT0 + 5 * 8)).unwrap();
        state.fpu.fsw = 5 << 11;
        state.regs.rdi = 0x5000;
        let before = state;
        let mut stats = EmulationStats::default();
        // Act: movq mm1, [rdi]
        let outcome = emulate(&mut state, &mem, Some(&[0x0f, 0x6f, 0x0f]), &mut stats).unwrap();
        // Assert
        assert_eq!(testutil::injected(&outcome), Some((14, Some(0))));
        assert_eq!(state.fpu.fsw, before.fpu.fsw);
        assert_eq!(state.fpu.ftwx, before.fpu.ftwx);
        assert_eq!(state.regs.rip, before.regs.rip);
    }

    #[test]
    fn test_emulate_with_tf_set_reports_debug_trap() {
        let mut state = long_mode_state();
        let mem = memory();
        state.regs.rflags |= flags::TF | flags::RF;
        let mut stats = EmulationStats::default();
        let outcome = emulate(
            &mut state,
            &mem,
            Some(&[0xf3, 0x0f, 0x1e, 0xfa]),
            &mut stats,
        )
        .unwrap();
        assert!(matches!(outcome, Outcome::Emulated(wb) if wb.debug_trap));
        assert_eq!(state.regs.rflags & flags::RF, 0);
    }

    #[test]
    fn test_emulate_operand_in_mmio_is_an_error() {
        let mut state = long_mode_state();
        let mem = memory();
        // 1-GiB identity page at 1 GiB: no RAM there.
        mem.write_obj(0x4000_0083u64, GuestAddress(0x2008)).unwrap();
        state.regs.rdi = 0x4000_0000;
        let mut stats = EmulationStats::default();
        let result = emulate(
            &mut state,
            &mem,
            Some(&[0xf3, 0x0f, 0x6f, 0x0f]),
            &mut stats,
        );
        assert_eq!(
            result,
            Err(EmulateError::NotRam {
                rip: state.regs.rip,
                gpa: 0x4000_0000,
                len: 16
            })
        );
    }

    #[test]
    fn test_outcome_unsupported_message_names_mnemonic_mode_and_rip() {
        let mut state = long_mode_state();
        let mem = memory();
        let mut stats = EmulationStats::default();
        let outcome = emulate(&mut state, &mem, Some(&[0x0f, 0xa2]), &mut stats).unwrap();
        assert_eq!(
            outcome.to_string(),
            "instruction `cpuid` at RIP 0x100000 in 64-bit mode cannot be emulated (not in the fallback emulator's instruction set)"
        );
    }
}
