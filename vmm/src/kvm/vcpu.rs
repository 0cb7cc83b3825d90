//! A vCPU: its KVM file descriptor, its boot-time configuration and its run loop.
//!
//! The run loop is a state machine with one function per state. A vCPU is `Running` until
//! something ends the VM (a device action, a fatal exit) or the VMM asks every vCPU to stop
//! (another vCPU ended the VM, the timeout fired); then it is `Exited` with a [`VcpuStop`]
//! that says why, and a [`VcpuReport`] of its registers at that moment.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use kvm_bindings::{kvm_regs, kvm_sregs, CpuId};
use kvm_ioctls::{VcpuExit, VcpuFd};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::arch::x86_64::{cpuid, interrupts, msr, regs};
use crate::boot::BootEntry;
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
    /// Set when every vCPU must stop; the VMM also kicks the threads out of KVM_RUN.
    pub stop: Arc<AtomicBool>,
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

/// One vCPU.
pub struct Vcpu {
    id: u8,
    pub(super) fd: VcpuFd,
    pub(super) ctx: VcpuContext,
    pub(super) stats: EmulationStats,
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

/// The states of the run loop.
enum VcpuState {
    Running,
    Exited(VcpuStop),
}

impl Vcpu {
    /// Wraps a created KVM vCPU.
    pub fn new(id: u8, fd: VcpuFd, ctx: VcpuContext) -> Vcpu {
        Vcpu {
            id,
            fd,
            ctx,
            stats: EmulationStats::default(),
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

    /// Runs the vCPU until it stops; returns why, its state at that point and what the
    /// fallback emulator did.
    pub fn run(mut self) -> VcpuEnd {
        let mut state = VcpuState::Running;
        loop {
            state = match state {
                VcpuState::Running => self.running(),
                VcpuState::Exited(stop) => {
                    return VcpuEnd {
                        stop,
                        report: self.report(),
                        stats: std::mem::take(&mut self.stats),
                    };
                }
            }
        }
    }

    /// The `Running` state: KVM_RUN and exit dispatch until the vCPU must leave the state.
    fn running(&mut self) -> VcpuState {
        loop {
            if self.ctx.stop.load(Ordering::Acquire) {
                return VcpuState::Exited(VcpuStop::Stopped);
            }
            let exit = match self.fd.run() {
                Ok(exit) => exit,
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => continue,
                Err(e) => return VcpuState::Exited(VcpuStop::RunFailed(e.errno())),
            };
            let stop = match exit {
                VcpuExit::IoIn(port, data) => {
                    self.ctx.pio.read(u64::from(port), data);
                    None
                }
                VcpuExit::IoOut(port, data) => {
                    self.ctx.pio.write(u64::from(port), data);
                    None
                }
                VcpuExit::MmioRead(addr, data) => {
                    self.ctx.mmio.read(addr, data);
                    None
                }
                VcpuExit::MmioWrite(addr, data) => {
                    self.ctx.mmio.write(addr, data);
                    None
                }
                VcpuExit::Intr | VcpuExit::IrqWindowOpen => None,
                VcpuExit::Hlt => Some(VcpuStop::Halted),
                VcpuExit::Shutdown => Some(VcpuStop::Shutdown),
                VcpuExit::SystemEvent(kind, _) => Some(match kind {
                    kvm_bindings::KVM_SYSTEM_EVENT_RESET => VcpuStop::Reset,
                    kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN => VcpuStop::PowerOff,
                    other => VcpuStop::UnexpectedExit(format!("system event {other}")),
                }),
                VcpuExit::FailEntry(reason, _) => Some(VcpuStop::FailEntry { reason }),
                VcpuExit::InternalError => self.handle_internal_error(),
                other => Some(VcpuStop::UnexpectedExit(format!("{other:?}"))),
            };
            if let Some(stop) = stop {
                return VcpuState::Exited(stop);
            }
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
