//! The emulation-failure exit: hands the instruction KVM could not emulate to the userspace
//! fallback emulator (`crate::emulate`) and writes its result back into the vCPU. Only this
//! exit pays for it; every other exit is untouched.

use kvm_bindings::KVM_INTERNAL_ERROR_EMULATION;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::vcpu::{Vcpu, VcpuStop};
use crate::devices::Bus;
use crate::emulate::{self, CpuState, GuestMemoryAccess, Outcome};

/// Guest-physical memory as an emulated instruction sees it: RAM, and the MMIO bus for what
/// is not RAM (device registers answer; unclaimed addresses read as all ones and drop writes,
/// as a KVM MMIO exit does).
struct PhysicalMemory<'a> {
    ram: &'a GuestMemoryMmap,
    mmio: &'a Bus,
}

impl GuestMemoryAccess for PhysicalMemory<'_> {
    fn read_phys(&self, gpa: GuestAddress, buf: &mut [u8]) -> bool {
        if self.ram.read_slice(buf, gpa).is_ok() {
            return true;
        }
        self.mmio.read(gpa.0, buf);
        true
    }

    fn write_phys(&self, gpa: GuestAddress, buf: &[u8]) -> bool {
        if self.ram.write_slice(buf, gpa).is_ok() {
            return true;
        }
        self.mmio.write(gpa.0, buf);
        true
    }

    /// Locked read-modify-write works on RAM only; on a device register it stops the VM.
    fn compare_exchange_u64(&self, gpa: GuestAddress, expected: u64, new: u64) -> Option<u64> {
        self.ram.compare_exchange_u64(gpa, expected, new)
    }

    fn compare_exchange_u128(&self, gpa: GuestAddress, expected: u128, new: u128) -> Option<u128> {
        self.ram.compare_exchange_u128(gpa, expected, new)
    }
}

impl Vcpu {
    /// Handles KVM_EXIT_INTERNAL_ERROR. Returns None when the guest may resume.
    pub(super) fn handle_internal_error(&mut self) -> Option<VcpuStop> {
        // SAFETY: after KVM_EXIT_INTERNAL_ERROR, KVM filled the `internal` member of the union,
        // plain integers valid for any bit pattern.
        let suberror = unsafe { self.fd.get_kvm_run().__bindgen_anon_1.internal.suberror };
        if suberror != KVM_INTERNAL_ERROR_EMULATION || !self.ctx.emulation_fallback {
            return Some(VcpuStop::InternalError { suberror });
        }
        self.emulate_failed_instruction().err()
    }

    fn emulate_failed_instruction(&mut self) -> Result<(), VcpuStop> {
        let kvm_err = |op: &'static str| {
            move |e: kvm_ioctls::Error| VcpuStop::EmulationFailed(format!("{op}: {e}"))
        };
        let bytes = emulate::exit_instruction_bytes(self.fd.get_kvm_run());
        let regs = self.fd.get_regs().map_err(kvm_err("get regs"))?;
        let sregs = self.fd.get_sregs().map_err(kvm_err("get sregs"))?;
        let fpu = self.fd.get_fpu().map_err(kvm_err("get FPU"))?;
        let mut events = self.fd.get_vcpu_events().map_err(kvm_err("get events"))?;
        emulate::discard_emulation_failure_ud(&mut events);
        let mut state = CpuState::new(regs, sregs, fpu);
        let memory = PhysicalMemory {
            ram: &self.ctx.mem,
            mmio: &self.ctx.mmio,
        };
        let mut stats = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        let outcome = emulate::emulate(&mut state, &memory, bytes.as_deref(), &mut stats)
            .map_err(|e| VcpuStop::EmulationFailed(e.to_string()))?;
        drop(stats);
        match outcome {
            Outcome::Emulated(wb) => {
                self.fd.set_regs(&state.regs).map_err(kvm_err("set regs"))?;
                if wb.sregs {
                    self.fd
                        .set_sregs(&state.sregs)
                        .map_err(kvm_err("set sregs"))?;
                }
                if wb.fpu {
                    self.fd.set_fpu(&state.fpu).map_err(kvm_err("set FPU"))?;
                }
                if wb.nmi_unblocked {
                    events.nmi.masked = 0;
                }
            }
            Outcome::Inject(inj) => {
                // Software interrupts advanced RIP; faults left the state untouched.
                self.fd.set_regs(&state.regs).map_err(kvm_err("set regs"))?;
                if inj.apply_to_events(&mut events, &mut state.sregs) {
                    self.fd
                        .set_sregs(&state.sregs)
                        .map_err(kvm_err("set sregs"))?;
                }
            }
            unsupported @ Outcome::Unsupported { .. } => {
                return Err(VcpuStop::Unemulated(unsupported.to_string()));
            }
        }
        self.fd
            .set_vcpu_events(&events)
            .map_err(kvm_err("set events"))
    }
}
