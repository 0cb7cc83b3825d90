//! The VMM's snapshot actions: `vm.snapshot` of the paused VM and `vm.restore` of a VM from
//! a snapshot (docs/decisions/0013), and `vmm::run_restored` for `strata run --restore`.

#![forbid(unsafe_code)]

use event_manager::EventOps;

use super::{VmSlot, Vmm};
use crate::config::ConsoleMode;
use crate::control::actions::{ActionError, ActionOutput, ActionResult};
use crate::control::lifecycle::{Transition, VmState};
use crate::control::outcome::VmOutcome;
use crate::control::running::RunningVm;
use crate::snapshot::{restore, url_path, RestoreConfig, SnapshotConfig, SnapshotError};
use crate::vm::VmmError;

impl Vmm {
    /// `vm.snapshot`: the VM must be paused; it stays paused.
    pub(super) fn snapshot(&mut self, config: &SnapshotConfig) -> ActionResult {
        self.check(Transition::Snapshot)?;
        let dir =
            url_path(&config.destination_url).map_err(|e| ActionError::Snapshot(Box::new(e)))?;
        let slot = self.slot_mut()?;
        let running = slot
            .running
            .as_mut()
            .ok_or_else(|| ActionError::Snapshot(Box::new(SnapshotError::NotPaused)))?;
        running
            .snapshot(&slot.config, &dir)
            .map_err(|e| ActionError::Snapshot(Box::new(e)))?;
        Ok(ActionOutput::Done)
    }

    /// Builds the VM a snapshot describes and starts its vCPUs paused (resumed at once with
    /// `resume`); not yet in the epoll.
    pub fn restore(&mut self, config: &RestoreConfig) -> Result<(), ActionError> {
        if let Some(slot) = &self.vm {
            return Err(ActionError::AlreadyCreated(slot.state));
        }
        let (dir, state) =
            restore::load(config).map_err(|e| ActionError::Restore(Box::new(e.into())))?;
        let vm = restore::build(&dir, &state, config.memory)
            .map_err(|e| ActionError::Restore(Box::new(e)))?;
        let stdin = state.config.serial.mode == ConsoleMode::Stdio;
        let mut running = RunningVm::start_from(vm, stdin, true)
            .map_err(|e| ActionError::Restore(Box::new(VmmError::Control(e))))?;
        let mut vm_state = VmState::Paused;
        if config.resume {
            if running.resume().is_err() {
                return Err(ActionError::Restore(Box::new(
                    SnapshotError::SaveVcpus("a vCPU stopped as the VM resumed".into()).into(),
                )));
            }
            vm_state = VmState::Running;
        }
        self.vm = Some(VmSlot {
            config: state.config,
            state: vm_state,
            counters: Some(running.counters().clone()),
            running: Some(running),
        });
        Ok(())
    }

    /// `vm.restore` inside the event loop: restore, then register the VM's sources.
    pub(super) fn restore_in_loop(
        &mut self,
        config: &RestoreConfig,
        ops: &mut EventOps<'_>,
    ) -> ActionResult {
        self.restore(config)?;
        self.register_vm(ops).map_err(ActionError::Control)?;
        Ok(ActionOutput::Done)
    }
}

/// Restores a VM from a snapshot and runs it until it ends (`strata run --restore`).
pub fn run_restored(config: &RestoreConfig) -> Result<VmOutcome, VmmError> {
    let mut vmm = Vmm::new(None)?;
    vmm.restore(config).map_err(|e| match e {
        ActionError::Restore(e) => *e,
        other => SnapshotError::ConfigMismatch(other.to_string()).into(),
    })?;
    super::finish(vmm.run()?)
}
