//! How a VM ended, and the process exit status a front end derives from it.

use crate::emulate::EmulationStats;
use crate::kvm::{VcpuReport, VcpuStop};
use crate::vm_events::VmEvent;

/// Why the control loop stopped a VM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ending {
    /// A vCPU stopped by itself (a fatal exit, or a reset or power-off KVM handled).
    Vcpu {
        /// vCPU index.
        id: u8,
        /// Why.
        stop: VcpuStop,
    },
    /// The guest asked a device to end or reset the machine.
    Guest(VmEvent),
    /// The configured timeout expired.
    Timeout,
    /// A host signal (SIGTERM, SIGINT, SIGHUP) arrived.
    Signal(i32),
    /// A request (`vm.shutdown`, `vm.reboot`, `vm.delete`, `vmm.shutdown`).
    Request,
}

/// How a VM ended.
#[derive(Debug)]
pub struct VmOutcome {
    /// Why the VM stopped: what the guest asked for (reset, power-off, debug exit) or the
    /// first vCPU stop that was not a request from the VMM.
    pub stop: VcpuStop,
    /// Whether the timeout ended the VM.
    pub timed_out: bool,
    /// The host signal (SIGTERM, SIGINT, SIGHUP) that ended the VM, if one did.
    pub signal: Option<i32>,
    /// Every vCPU's state at the end, in vCPU order.
    pub reports: Vec<VcpuReport>,
    /// The report of the vCPU that ended the VM, if one did.
    pub culprit: Option<u8>,
    /// Instructions the fallback emulator ran, by mnemonic, over all vCPUs.
    pub emulated: EmulationStats,
}

impl VmOutcome {
    /// The outcome of `ending`, with the vCPUs' reports and emulation counts.
    pub fn new(ending: Ending, reports: Vec<VcpuReport>, emulated: EmulationStats) -> VmOutcome {
        let (stop, culprit) = match &ending {
            Ending::Vcpu { id, stop } => (stop.clone(), Some(*id)),
            Ending::Guest(VmEvent::Reset) => (VcpuStop::Reset, None),
            Ending::Guest(VmEvent::PowerOff) => (VcpuStop::PowerOff, None),
            Ending::Guest(VmEvent::DebugExit(code)) => (VcpuStop::DebugExit(*code), None),
            Ending::Timeout | Ending::Signal(_) | Ending::Request => (VcpuStop::Stopped, None),
        };
        VmOutcome {
            stop,
            timed_out: ending == Ending::Timeout,
            signal: match ending {
                Ending::Signal(sig) => Some(sig),
                _ => None,
            },
            reports,
            culprit,
            emulated,
        }
    }

    /// The process exit status a front end should use: the debug-exit value, 0 for reset or
    /// power-off, 124 for a timeout (as timeout(1)), 128 + the signal number when a host signal
    /// ended the VM (as a shell reports it), 1 for a fatal stop.
    pub fn exit_code(&self) -> i32 {
        if let Some(signal) = self.signal {
            return 128 + signal;
        }
        if self.timed_out {
            return 124;
        }
        match self.stop {
            VcpuStop::DebugExit(code) => i32::from(code),
            VcpuStop::Reset | VcpuStop::PowerOff | VcpuStop::Stopped => 0,
            _ => 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(ending: Ending) -> VmOutcome {
        VmOutcome::new(ending, Vec::new(), EmulationStats::default())
    }

    #[test]
    fn test_vm_outcome_exit_code_by_ending() {
        assert_eq!(outcome(Ending::Guest(VmEvent::DebugExit(7))).exit_code(), 7);
        assert_eq!(outcome(Ending::Guest(VmEvent::Reset)).exit_code(), 0);
        assert_eq!(outcome(Ending::Timeout).exit_code(), 124);
        let fatal = Ending::Vcpu {
            id: 1,
            stop: VcpuStop::Shutdown,
        };
        assert_eq!(outcome(fatal.clone()).exit_code(), 1);
        assert_eq!(outcome(fatal).culprit, Some(1));
    }

    #[test]
    fn test_vm_outcome_exit_code_signal_is_128_plus_number() {
        let o = outcome(Ending::Signal(libc::SIGTERM));

        assert_eq!(o.exit_code(), 143);
        assert!(!o.timed_out);
    }
}
