//! A vCPU: its KVM file descriptor, its boot-time configuration and its run loop.
//!
//! The run loop is a state machine with one function per state: `Running` (KVM_RUN and the
//! exit dispatch, [`handle_exit`]), `Paused` (out of KVM_RUN, waiting for a command) and
//! `Exited`, with a [`VcpuStop`] that says why and a [`VcpuReport`] of its registers at that
//! moment. The VMM's control loop drives it with [`VcpuCommand`]s on a channel and a kick
//! (`kick.rs`: one signal, `immediate_exit`); the thread answers with [`VcpuEvent`]s. Pause and
//! exit first run KVM_RUN once more with `immediate_exit` set, so the port I/O or MMIO
//! instruction whose exit was handled completes without entering the guest: a paused vCPU
//! resumes at exactly the next instruction.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};

use kvm_bindings::{kvm_regs, kvm_sregs, CpuId};
use kvm_ioctls::{VcpuExit, VcpuFd};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::kick::{self, KickBinding};
use super::persist::{self, KvmStateError, VcpuState as SavedState};

use crate::arch::x86_64::{cpuid, interrupts, msr, regs};
use crate::boot::BootEntry;
use crate::counters::Counters;
use crate::devices::Bus;
use crate::emulate::EmulationStats;

/// Errors configuring a vCPU.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    /// A KVM vCPU ioctl failed during set-up.
    #[error("unable to {op} on vCPU {id}: {source}")]
    Setup {
        /// vCPU index.
        id: u8,
        /// What was being done.
        op: &'static str,
        /// The cause.
        source: kvm_ioctls::Error,
    },
    /// KVM accepted only part of the boot MSRs.
    #[error("vCPU {id}: KVM accepted {set} of {wanted} boot MSRs")]
    PartialMsrs {
        /// vCPU index.
        id: u8,
        /// How many were set.
        set: usize,
        /// How many were given.
        wanted: usize,
    },
    /// The boot tables could not be written.
    #[error("vCPU {id}: {source}")]
    Regs {
        /// vCPU index.
        id: u8,
        /// The cause.
        source: regs::RegsError,
    },
}

/// What every vCPU thread shares.
#[derive(Clone)]
pub struct VcpuContext {
    /// Guest memory.
    pub mem: GuestMemoryMmap,
    /// The port-I/O bus.
    pub pio: Bus,
    /// The MMIO bus.
    pub mmio: Bus,
    /// Set when a device sent a `VmEvent` (the guest asked to end or reset the machine): each
    /// vCPU stops running the guest at its next exit and waits for the control loop.
    pub guest_request: Arc<AtomicBool>,
    /// Emulate in userspace what KVM's instruction emulator cannot (PVM hosts).
    pub emulation_fallback: bool,
}

/// Why a vCPU stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VcpuStop {
    /// The guest wrote this value to the debug-exit port.
    DebugExit(u8),
    /// The guest reset the machine (i8042, port 0xcf9, KVM system event).
    Reset,
    /// The guest powered the machine off (KVM system event).
    PowerOff,
    /// The VMM asked the vCPU to stop.
    Stopped,
    /// Triple fault or other shutdown condition.
    Shutdown,
    /// The vCPU halted with no way to be woken (no in-kernel LAPIC wake-up).
    Halted,
    /// KVM could not emulate an instruction, or another internal error.
    InternalError {
        /// KVM's suberror (1: emulation failure).
        suberror: u32,
    },
    /// VM entry failed.
    FailEntry {
        /// Hardware entry failure reason.
        reason: u64,
    },
    /// The fallback emulator does not know the instruction KVM could not emulate.
    Unemulated(String),
    /// The fallback emulator could not complete the instruction.
    EmulationFailed(String),
    /// An exit this VMM does not handle.
    UnexpectedExit(String),
    /// KVM_RUN itself failed.
    RunFailed(i32),
}

impl VcpuStop {
    /// Whether this stop is an error of the guest or the VMM rather than a guest's own choice.
    pub fn is_fatal(&self) -> bool {
        !matches!(
            self,
            VcpuStop::DebugExit(_) | VcpuStop::Reset | VcpuStop::PowerOff | VcpuStop::Stopped
        )
    }
}

impl fmt::Display for VcpuStop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VcpuStop::DebugExit(c) => write!(f, "guest wrote {c} to the debug-exit port"),
            VcpuStop::Reset => write!(f, "guest reset the machine"),
            VcpuStop::PowerOff => write!(f, "guest powered off"),
            VcpuStop::Stopped => write!(f, "stopped by the VMM"),
            VcpuStop::Shutdown => write!(f, "triple fault (KVM_EXIT_SHUTDOWN)"),
            VcpuStop::Halted => write!(f, "vCPU halted"),
            VcpuStop::InternalError { suberror: 1 } => {
                write!(
                    f,
                    "KVM could not emulate an instruction (KVM_EXIT_INTERNAL_ERROR, suberror 1)"
                )
            }
            VcpuStop::InternalError { suberror } => {
                write!(f, "KVM internal error (suberror {suberror})")
            }
            VcpuStop::FailEntry { reason } => write!(f, "VM entry failed (reason {reason:#x})"),
            VcpuStop::Unemulated(what) => write!(
                f,
                "KVM could not emulate an instruction and neither can Strata: {what}"
            ),
            VcpuStop::EmulationFailed(why) => {
                write!(f, "emulating an instruction KVM could not failed: {why}")
            }
            VcpuStop::UnexpectedExit(e) => write!(f, "unexpected exit {e}"),
            VcpuStop::RunFailed(errno) => write!(
                f,
                "KVM_RUN failed: {}",
                std::io::Error::from_raw_os_error(*errno)
            ),
        }
    }
}

/// The processor mode of a vCPU, derived from its special registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CpuMode {
    /// CR0.PE clear.
    Real,
    /// Protected mode with a 16-bit code segment.
    Protected16,
    /// Protected mode with a 32-bit code segment.
    Protected32,
    /// Long mode, 32- or 16-bit code segment.
    Compatibility,
    /// Long mode, 64-bit code segment.
    Long64,
}

impl CpuMode {
    /// Derives the mode from CR0, EFER and CS.
    pub fn of(sregs: &kvm_sregs) -> CpuMode {
        if sregs.cr0 & 1 == 0 {
            CpuMode::Real
        } else if sregs.efer & 0x400 != 0 {
            if sregs.cs.l == 1 {
                CpuMode::Long64
            } else {
                CpuMode::Compatibility
            }
        } else if sregs.cs.db == 1 {
            CpuMode::Protected32
        } else {
            CpuMode::Protected16
        }
    }
}

impl fmt::Display for CpuMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CpuMode::Real => "real mode",
            CpuMode::Protected16 => "16-bit protected mode",
            CpuMode::Protected32 => "32-bit protected mode",
            CpuMode::Compatibility => "compatibility mode",
            CpuMode::Long64 => "64-bit long mode",
        })
    }
}

/// A vCPU's state when it stopped: registers, mode and the bytes at its instruction pointer.
#[derive(Debug, Clone)]
pub struct VcpuReport {
    /// vCPU index.
    pub id: u8,
    /// General-purpose registers.
    pub regs: kvm_regs,
    /// Special registers.
    pub sregs: kvm_sregs,
    /// Processor mode.
    pub mode: CpuMode,
    /// Up to 15 bytes at CS:RIP (empty if unreadable).
    pub insn_bytes: Vec<u8>,
}

impl VcpuReport {
    /// One line: vCPU, mode, CPL, RIP and instruction bytes.
    pub fn summary(&self) -> String {
        let bytes: Vec<String> = self.insn_bytes.iter().map(|b| format!("{b:02x}")).collect();
        let paging = if self.sregs.cr0 & 0x8000_0000 != 0 {
            "paging"
        } else {
            "no paging"
        };
        format!(
            "vCPU {}: {}, {}, CPL {}, RIP {:#x}, instruction bytes [{}]",
            self.id,
            self.mode,
            paging,
            self.sregs.cs.selector & 3,
            self.regs.rip,
            bytes.join(" ")
        )
    }
}

impl fmt::Display for VcpuReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = &self.regs;
        let s = &self.sregs;
        writeln!(f, "{}", self.summary())?;
        writeln!(
            f,
            "  rax={:016x} rbx={:016x} rcx={:016x} rdx={:016x}",
            r.rax, r.rbx, r.rcx, r.rdx
        )?;
        writeln!(
            f,
            "  rsi={:016x} rdi={:016x} rbp={:016x} rsp={:016x}",
            r.rsi, r.rdi, r.rbp, r.rsp
        )?;
        writeln!(
            f,
            "  r8 ={:016x} r9 ={:016x} r10={:016x} r11={:016x}",
            r.r8, r.r9, r.r10, r.r11
        )?;
        writeln!(
            f,
            "  r12={:016x} r13={:016x} r14={:016x} r15={:016x}",
            r.r12, r.r13, r.r14, r.r15
        )?;
        writeln!(f, "  rip={:016x} rflags={:08x}", r.rip, r.rflags)?;
        writeln!(
            f,
            "  cs={:04x} ss={:04x} ds={:04x} cr0={:08x} cr2={:016x} cr3={:016x} cr4={:08x} efer={:x}",
            s.cs.selector, s.ss.selector, s.ds.selector, s.cr0, s.cr2, s.cr3, s.cr4, s.efer
        )
    }
}

/// Names of a vCPU's counters (`vm.counters`, `GET /metrics`): exits by kind, and kicks
/// (KVM_RUN returning `EINTR` because the VMM asked the vCPU to look at its commands).
pub const VCPU_COUNTER_NAMES: &[&str] = &[
    "exits_io_in",
    "exits_io_out",
    "exits_mmio_read",
    "exits_mmio_write",
    "exits_hlt",
    "exits_shutdown",
    "exits_system_event",
    "exits_fail_entry",
    "exits_internal_error",
    "exits_intr",
    "exits_other",
    "kicks",
];

const EXITS_IO_IN: usize = 0;
const EXITS_IO_OUT: usize = 1;
const EXITS_MMIO_READ: usize = 2;
const EXITS_MMIO_WRITE: usize = 3;
const EXITS_HLT: usize = 4;
const EXITS_SHUTDOWN: usize = 5;
const EXITS_SYSTEM_EVENT: usize = 6;
const EXITS_FAIL_ENTRY: usize = 7;
const EXITS_INTERNAL_ERROR: usize = 8;
const EXITS_INTR: usize = 9;
const EXITS_OTHER: usize = 10;
const KICKS: usize = 11;

/// The counter an exit counts under.
fn exit_counter(exit: &VcpuExit<'_>) -> usize {
    match exit {
        VcpuExit::IoIn(..) => EXITS_IO_IN,
        VcpuExit::IoOut(..) => EXITS_IO_OUT,
        VcpuExit::MmioRead(..) => EXITS_MMIO_READ,
        VcpuExit::MmioWrite(..) => EXITS_MMIO_WRITE,
        VcpuExit::Hlt => EXITS_HLT,
        VcpuExit::Shutdown => EXITS_SHUTDOWN,
        VcpuExit::SystemEvent(..) => EXITS_SYSTEM_EVENT,
        VcpuExit::FailEntry(..) => EXITS_FAIL_ENTRY,
        VcpuExit::InternalError => EXITS_INTERNAL_ERROR,
        VcpuExit::Intr | VcpuExit::IrqWindowOpen => EXITS_INTR,
        _ => EXITS_OTHER,
    }
}

/// One vCPU.
pub struct Vcpu {
    id: u8,
    pub(super) fd: VcpuFd,
    pub(super) ctx: VcpuContext,
    pub(super) stats: Arc<Mutex<EmulationStats>>,
    counters: Arc<Counters>,
}

/// What a vCPU's run loop ends with.
pub struct VcpuEnd {
    /// Why it stopped.
    pub stop: VcpuStop,
    /// Its state at that point (None if the registers could not be read).
    pub report: Option<VcpuReport>,
    /// Instructions the fallback emulator ran, by mnemonic.
    pub stats: EmulationStats,
}

/// A command from the VMM's control loop to one vCPU thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VcpuCommand {
    /// Leave KVM_RUN with pending I/O completed, acknowledge with [`VcpuEventKind::Paused`]
    /// and wait for the next command.
    Pause,
    /// Continue where the vCPU paused; acknowledged with [`VcpuEventKind::Resumed`].
    Resume,
    /// Leave KVM_RUN with pending I/O completed and end the thread.
    Exit,
    /// While paused: read the vCPU's whole KVM state for a snapshot; answered with
    /// [`VcpuEventKind::Saved`] (an error if the vCPU is not paused).
    Save,
}

/// A vCPU's saved state (or why it could not be read), as its thread hands it over.
#[derive(Clone)]
pub struct SavedVcpu(pub Arc<Result<SavedState, String>>);

impl PartialEq for SavedVcpu {
    fn eq(&self, other: &SavedVcpu) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for SavedVcpu {}

impl fmt::Debug for SavedVcpu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.as_ref() {
            Ok(s) => write!(f, "SavedVcpu({})", s.id),
            Err(e) => write!(f, "SavedVcpu(error: {e})"),
        }
    }
}

/// What happened to a vCPU, as its thread tells the control loop.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VcpuEventKind {
    /// It acknowledged [`VcpuCommand::Pause`]: it is out of KVM_RUN, pending I/O completed.
    Paused,
    /// It acknowledged [`VcpuCommand::Resume`].
    Resumed,
    /// It stopped by itself (a guest request to KVM, a fatal exit); its thread ends.
    Stopped(VcpuStop),
    /// It answered [`VcpuCommand::Save`].
    Saved(SavedVcpu),
}

/// A vCPU event, with the vCPU it is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VcpuEvent {
    /// vCPU index.
    pub id: u8,
    /// What happened.
    pub kind: VcpuEventKind,
}

/// A vCPU thread's ends of its channels: commands in, events out (with the eventfd the
/// control loop waits on).
pub struct VcpuLink {
    /// Commands from the control loop.
    pub commands: mpsc::Receiver<VcpuCommand>,
    /// Events to the control loop.
    pub events: mpsc::Sender<VcpuEvent>,
    /// Written after each event.
    pub notify: Arc<EventFd>,
}

impl VcpuLink {
    fn send(&self, id: u8, kind: VcpuEventKind) {
        if self.events.send(VcpuEvent { id, kind }).is_ok() {
            let _ = self.notify.write(1);
        }
    }
}

/// The states of the run loop.
enum VcpuState {
    Running,
    Paused,
    Exited(VcpuStop),
}

/// What one KVM_RUN came back with.
enum RunOnce {
    /// An exit was handled; the guest may go on.
    Continue,
    /// KVM_RUN returned `EINTR`: a kick (`immediate_exit`) or another signal.
    Kicked,
    /// The vCPU must stop.
    Stop(VcpuStop),
}

/// What the exit dispatch decided.
enum ExitAction {
    /// Handled; run the guest again.
    Continue,
    /// KVM could not go on (an emulation failure goes to the fallback emulator).
    InternalError,
    /// The vCPU stops.
    Stop(VcpuStop),
}

/// Dispatches one exit: port I/O to the `pio` bus, MMIO to the `mmio` bus; says whether the
/// vCPU goes on.
fn handle_exit(ctx: &VcpuContext, exit: VcpuExit<'_>) -> ExitAction {
    let stop = match exit {
        VcpuExit::IoIn(port, data) => {
            ctx.pio.read(u64::from(port), data);
            return ExitAction::Continue;
        }
        VcpuExit::IoOut(port, data) => {
            ctx.pio.write(u64::from(port), data);
            return ExitAction::Continue;
        }
        VcpuExit::MmioRead(addr, data) => {
            ctx.mmio.read(addr, data);
            return ExitAction::Continue;
        }
        VcpuExit::MmioWrite(addr, data) => {
            ctx.mmio.write(addr, data);
            return ExitAction::Continue;
        }
        VcpuExit::Intr | VcpuExit::IrqWindowOpen => return ExitAction::Continue,
        VcpuExit::InternalError => return ExitAction::InternalError,
        VcpuExit::Hlt => VcpuStop::Halted,
        VcpuExit::Shutdown => VcpuStop::Shutdown,
        VcpuExit::SystemEvent(kind, _) => match kind {
            kvm_bindings::KVM_SYSTEM_EVENT_RESET => VcpuStop::Reset,
            kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN => VcpuStop::PowerOff,
            other => VcpuStop::UnexpectedExit(format!("system event {other}")),
        },
        VcpuExit::FailEntry(reason, _) => VcpuStop::FailEntry { reason },
        other => VcpuStop::UnexpectedExit(format!("{other:?}")),
    };
    ExitAction::Stop(stop)
}

impl Vcpu {
    /// Wraps a created KVM vCPU.
    pub fn new(id: u8, fd: VcpuFd, ctx: VcpuContext) -> Vcpu {
        Vcpu {
            id,
            fd,
            ctx,
            stats: Arc::new(Mutex::new(EmulationStats::default())),
            counters: Counters::new(VCPU_COUNTER_NAMES),
        }
    }

    fn setup_err(&self, op: &'static str) -> impl Fn(kvm_ioctls::Error) -> VcpuError {
        let id = self.id;
        move |source| VcpuError::Setup { id, op, source }
    }

    /// Configures CPUID, MSRs, FPU and LAPIC; for the boot vCPU also the entry registers.
    pub fn configure(
        &mut self,
        base_cpuid: &CpuId,
        cpu_count: u8,
        entry: Option<&BootEntry>,
    ) -> Result<(), VcpuError> {
        let mut cpuid = base_cpuid.clone();
        cpuid::adjust_cpuid(&mut cpuid, self.id, cpu_count);
        self.fd
            .set_cpuid2(&cpuid)
            .map_err(self.setup_err("set CPUID"))?;
        let msrs = msr::boot_msrs();
        let set = self
            .fd
            .set_msrs(&msrs)
            .map_err(self.setup_err("set MSRs"))?;
        if set != msrs.as_slice().len() {
            return Err(VcpuError::PartialMsrs {
                id: self.id,
                set,
                wanted: msrs.as_slice().len(),
            });
        }
        self.fd
            .set_fpu(&regs::boot_fpu())
            .map_err(self.setup_err("set FPU"))?;
        let mut lapic = self.fd.get_lapic().map_err(self.setup_err("get LAPIC"))?;
        interrupts::set_lint(&mut lapic);
        self.fd
            .set_lapic(&lapic)
            .map_err(self.setup_err("set LAPIC"))?;
        if let Some(entry) = entry {
            let sregs = self.fd.get_sregs().map_err(self.setup_err("get sregs"))?;
            let sregs = regs::setup_sregs(&self.ctx.mem, entry.mode, sregs).map_err(|source| {
                VcpuError::Regs {
                    id: self.id,
                    source,
                }
            })?;
            self.fd
                .set_sregs(&sregs)
                .map_err(self.setup_err("set sregs"))?;
            self.fd
                .set_regs(&regs::boot_regs(entry))
                .map_err(self.setup_err("set regs"))?;
        }
        Ok(())
    }

    /// The vCPU's exit counters (names in [`VCPU_COUNTER_NAMES`]).
    pub fn counters(&self) -> Arc<Counters> {
        Arc::clone(&self.counters)
    }

    /// The fallback emulator's per-mnemonic counts for this vCPU (locked only on emulation
    /// exits and when the VMM reads them).
    pub fn emulation_stats(&self) -> Arc<Mutex<EmulationStats>> {
        Arc::clone(&self.stats)
    }

    /// Runs the vCPU on the calling thread until it stops or is told to exit: the state
    /// machine `Running <-> Paused -> Exited`, driven by `link`'s commands. Returns why it
    /// stopped, its state at that point and what the fallback emulator did.
    pub fn run(self, link: &VcpuLink) -> VcpuEnd {
        self.run_from(link, false)
    }

    /// [`Vcpu::run`], starting `Paused` if `paused` (a VM restored from a snapshot waits for
    /// its resume without running a single instruction).
    pub fn run_from(mut self, link: &VcpuLink, paused: bool) -> VcpuEnd {
        let binding = KickBinding::bind(&mut self.fd);
        let mut state = if paused {
            VcpuState::Paused
        } else {
            VcpuState::Running
        };
        let stop = loop {
            state = match state {
                VcpuState::Running => self.running(link),
                VcpuState::Paused => self.paused(link),
                VcpuState::Exited(stop) => break stop,
            }
        };
        drop(binding);
        let stats = self.stats.lock().unwrap_or_else(|e| e.into_inner()).clone();
        VcpuEnd {
            stop,
            report: self.report(),
            stats,
        }
    }

    /// The `Running` state: KVM_RUN and exit dispatch, looking at the commands after every
    /// kick, until the vCPU pauses, is told to exit or stops by itself.
    fn running(&mut self, link: &VcpuLink) -> VcpuState {
        loop {
            match link.commands.try_recv() {
                Ok(VcpuCommand::Pause) => return self.pause(link),
                Ok(VcpuCommand::Exit) | Err(mpsc::TryRecvError::Disconnected) => {
                    return self.exit();
                }
                Ok(VcpuCommand::Resume) => link.send(self.id, VcpuEventKind::Resumed),
                Ok(VcpuCommand::Save) => link.send(self.id, self.saved(false)),
                Err(mpsc::TryRecvError::Empty) => {}
            }
            match self.run_once() {
                RunOnce::Continue if self.ctx.guest_request.load(Ordering::Acquire) => {
                    return self.park();
                }
                RunOnce::Continue => {}
                // Cleared before the commands are looked at again: a kick that lands after
                // this sets it anew, and its command is seen on the next pass.
                RunOnce::Kicked => kick::set_immediate_exit(0),
                RunOnce::Stop(stop) => return self.stopped(link, stop),
            }
        }
    }

    /// The `Paused` state: out of KVM_RUN, waiting for a command.
    fn paused(&mut self, link: &VcpuLink) -> VcpuState {
        match link.commands.recv() {
            Ok(VcpuCommand::Resume) => {
                link.send(self.id, VcpuEventKind::Resumed);
                VcpuState::Running
            }
            Ok(VcpuCommand::Pause) => {
                link.send(self.id, VcpuEventKind::Paused);
                VcpuState::Paused
            }
            Ok(VcpuCommand::Save) => {
                link.send(self.id, self.saved(true));
                VcpuState::Paused
            }
            Ok(VcpuCommand::Exit) | Err(_) => VcpuState::Exited(VcpuStop::Stopped),
        }
    }

    /// The answer to [`VcpuCommand::Save`]: the state, only while paused.
    fn saved(&self, paused: bool) -> VcpuEventKind {
        let state = if paused {
            persist::save_vcpu(&self.fd, self.id).map_err(|e| e.to_string())
        } else {
            Err(format!("vCPU {} is running, not paused", self.id))
        };
        VcpuEventKind::Saved(SavedVcpu(Arc::new(state)))
    }

    /// Writes a snapshot's state into this (freshly created, not yet running) vCPU. Returns
    /// how many MSRs KVM refused.
    pub fn restore_state(&mut self, state: &SavedState) -> Result<usize, KvmStateError> {
        persist::restore_vcpu(&self.fd, state)
    }

    /// Running -> Paused: completes pending I/O, then acknowledges.
    fn pause(&mut self, link: &VcpuLink) -> VcpuState {
        if let Some(stop) = self.complete_pending_io() {
            return self.stopped(link, stop);
        }
        link.send(self.id, VcpuEventKind::Paused);
        VcpuState::Paused
    }

    /// Running -> Paused without being asked: the guest asked a device to end or reset the
    /// machine, and the control loop is about to stop the VM. Pending I/O completes; no
    /// acknowledgement is sent (none is awaited).
    fn park(&mut self) -> VcpuState {
        match self.complete_pending_io() {
            Some(stop) => VcpuState::Exited(stop),
            None => VcpuState::Paused,
        }
    }

    /// Running -> Exited on the VMM's command: completes pending I/O, then ends.
    fn exit(&mut self) -> VcpuState {
        VcpuState::Exited(self.complete_pending_io().unwrap_or(VcpuStop::Stopped))
    }

    /// Running -> Exited by the vCPU's own stop, which the control loop is told about.
    fn stopped(&mut self, link: &VcpuLink, stop: VcpuStop) -> VcpuState {
        link.send(self.id, VcpuEventKind::Stopped(stop.clone()));
        VcpuState::Exited(stop)
    }

    /// Runs KVM_RUN with `immediate_exit` set until it returns `EINTR`: KVM completes the
    /// port I/O or MMIO instruction whose exit was just handled without entering the guest
    /// (a string instruction may exit again; that exit is handled and the loop goes on).
    /// Returns a stop if one of those exits stops the vCPU.
    fn complete_pending_io(&mut self) -> Option<VcpuStop> {
        loop {
            kick::set_immediate_exit(1);
            match self.run_once() {
                RunOnce::Kicked => break,
                RunOnce::Continue => {}
                RunOnce::Stop(stop) => return Some(stop),
            }
        }
        kick::set_immediate_exit(0);
        None
    }

    /// One KVM_RUN and the dispatch of its exit.
    fn run_once(&mut self) -> RunOnce {
        let exit = match self.fd.run() {
            Ok(exit) => exit,
            Err(e) if e.errno() == libc::EINTR => {
                self.counters.inc(KICKS);
                return RunOnce::Kicked;
            }
            Err(e) if e.errno() == libc::EAGAIN => return RunOnce::Continue,
            Err(e) => return RunOnce::Stop(VcpuStop::RunFailed(e.errno())),
        };
        self.counters.inc(exit_counter(&exit));
        match handle_exit(&self.ctx, exit) {
            ExitAction::Continue => RunOnce::Continue,
            ExitAction::Stop(stop) => RunOnce::Stop(stop),
            ExitAction::InternalError => match self.handle_internal_error() {
                None => RunOnce::Continue,
                Some(stop) => RunOnce::Stop(stop),
            },
        }
    }

    /// Reads the vCPU's registers and the instruction bytes at CS:RIP.
    pub fn report(&self) -> Option<VcpuReport> {
        let regs = self.fd.get_regs().ok()?;
        let sregs = self.fd.get_sregs().ok()?;
        let mode = CpuMode::of(&sregs);
        let linear = if mode == CpuMode::Long64 {
            regs.rip
        } else {
            sregs.cs.base.wrapping_add(regs.rip) & 0xffff_ffff
        };
        let insn_bytes = self.read_linear(linear, 15);
        Some(VcpuReport {
            id: self.id,
            regs,
            sregs,
            mode,
            insn_bytes,
        })
    }

    /// Reads up to `len` bytes at a guest linear address, stopping at the first unmapped page.
    fn read_linear(&self, linear: u64, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len);
        while out.len() < len {
            let addr = linear.wrapping_add(out.len() as u64);
            let phys = match self.fd.translate_gva(addr) {
                Ok(t) if t.valid != 0 => t.physical_address,
                _ => break,
            };
            let in_page = (0x1000 - (addr & 0xfff)) as usize;
            let mut chunk = vec![0u8; in_page.min(len - out.len())];
            if self
                .ctx
                .mem
                .read_slice(&mut chunk, GuestAddress(phys))
                .is_err()
            {
                break;
            }
            out.extend_from_slice(&chunk);
        }
        out
    }

    /// The vCPU index.
    pub fn id(&self) -> u8 {
        self.id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_cpu_mode_of_sregs() {
        let mut s = kvm_sregs::default();
        assert_eq!(CpuMode::of(&s), CpuMode::Real);
        s.cr0 = 1;
        s.cs.db = 1;
        assert_eq!(CpuMode::of(&s), CpuMode::Protected32);
        s.efer = 0x500;
        s.cs.l = 1;
        s.cs.db = 0;
        assert_eq!(CpuMode::of(&s), CpuMode::Long64);
    }

    #[test]
    fn test_vcpu_stop_fatality() {
        assert!(!VcpuStop::DebugExit(3).is_fatal());
        assert!(!VcpuStop::Reset.is_fatal());
        assert!(VcpuStop::Shutdown.is_fatal());
        assert!(VcpuStop::InternalError { suberror: 1 }.is_fatal());
    }
}
