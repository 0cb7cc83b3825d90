//! The VM lifecycle as a state machine: `Created -> Running <-> Paused -> Shutdown`, plus
//! "no VM" before `vm.create` and after `vm.delete` (owned by `crate::vmm::Vmm`). The state
//! names are Cloud Hypervisor's, as `vm.info` reports them.

use serde::Serialize;

/// Where a VM is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum VmState {
    /// Configured, never booted.
    Created,
    /// The vCPUs run.
    Running,
    /// Every vCPU is out of KVM_RUN with its pending I/O completed.
    Paused,
    /// Stopped (by a request, the guest, the timeout or a fatal exit); it may boot again.
    Shutdown,
}

impl std::fmt::Display for VmState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

/// A change a request asks of a VM's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    /// `vm.boot`.
    Boot,
    /// `vm.pause`.
    Pause,
    /// `vm.resume`.
    Resume,
    /// `vm.shutdown`.
    Shutdown,
    /// `vm.reboot`.
    Reboot,
    /// `vm.power-button`.
    PowerButton,
    /// `vm.snapshot`.
    Snapshot,
}

impl std::fmt::Display for Transition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Transition::Boot => "boot",
            Transition::Pause => "pause",
            Transition::Resume => "resume",
            Transition::Shutdown => "shut down",
            Transition::Reboot => "reboot",
            Transition::PowerButton => "press the power button of",
            Transition::Snapshot => "snapshot",
        })
    }
}

/// A transition the current state does not allow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unable to {transition} the VM: it is {state}")]
pub struct LifecycleError {
    /// What was asked.
    pub transition: Transition,
    /// The state the VM is in.
    pub state: VmState,
}

impl VmState {
    /// The state `transition` leads to from this one, or an error naming this state.
    pub fn after(self, transition: Transition) -> Result<VmState, LifecycleError> {
        use Transition as T;
        use VmState::*;
        match (self, transition) {
            (Created | Shutdown, T::Boot) => Ok(Running),
            (Running, T::Pause) => Ok(Paused),
            (Paused, T::Resume) => Ok(Running),
            (Running | Paused, T::Shutdown) => Ok(Shutdown),
            (Running | Paused, T::Reboot) => Ok(Running),
            (Running, T::PowerButton) => Ok(Running),
            (Paused, T::Snapshot) => Ok(Paused),
            (state, transition) => Err(LifecycleError { transition, state }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_vm_state_after_valid_transitions() {
        assert_eq!(
            VmState::Created.after(Transition::Boot),
            Ok(VmState::Running)
        );
        assert_eq!(
            VmState::Running.after(Transition::Pause),
            Ok(VmState::Paused)
        );
        assert_eq!(
            VmState::Paused.after(Transition::Resume),
            Ok(VmState::Running)
        );
        assert_eq!(
            VmState::Paused.after(Transition::Shutdown),
            Ok(VmState::Shutdown)
        );
        assert_eq!(
            VmState::Shutdown.after(Transition::Boot),
            Ok(VmState::Running)
        );
        assert_eq!(
            VmState::Paused.after(Transition::Reboot),
            Ok(VmState::Running)
        );
    }

    #[test]
    fn test_vm_state_after_invalid_transition_names_state() {
        let err = VmState::Paused.after(Transition::Pause).unwrap_err();

        assert_eq!(err.to_string(), "unable to pause the VM: it is Paused");
        assert!(VmState::Created.after(Transition::Resume).is_err());
        assert!(VmState::Running.after(Transition::Boot).is_err());
        assert!(VmState::Shutdown.after(Transition::Shutdown).is_err());
        assert!(VmState::Created.after(Transition::PowerButton).is_err());
    }
}
