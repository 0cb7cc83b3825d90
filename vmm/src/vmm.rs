//! The VMM: the control loop that owns the VM lifecycle.
//!
//! One [`Vmm`] is the only subscriber of one event-manager epoll on the main thread. Its
//! sources: host signals (signalfd), requests from a front end (channel + eventfd), and while a
//! VM runs the VM's own (`control::running`). Every action is a method here: `vm.create`
//! stores a configuration, `vm.boot` builds the VM (`Vm::build`, boot steps 1-8) and starts its
//! vCPUs (step 9), stopping collects their reports (step 10). Invalid transitions fail with an
//! error naming the state (`control::lifecycle`).
//!
//! Without a front end ([`run`], `strata run`) the VMM ends with its VM. With one
//! (`strata run --api-socket`) it lives until `vmm.shutdown` or a terminating signal; a VM that
//! ends goes to `Shutdown` (a guest reset reboots it, as Cloud Hypervisor does).

#![forbid(unsafe_code)]

use std::os::fd::{AsRawFd, RawFd};

use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use vmm_sys_util::epoll::EventSet;

use crate::config::{ConsoleMode, VmConfig};
use crate::control::actions::{
    ActionError, ActionOutput, ActionResult, ApiRequest, Reply, RequestQueue, VmInfo, VmmAction,
    VmmPing,
};
use crate::control::lifecycle::{LifecycleError, Transition, VmState};
use crate::control::metrics::CounterSources;
use crate::control::outcome::{Ending, VmOutcome};
use crate::control::running::{RunningVm, SourceEvent};
use crate::control::signals::{SignalFd, TERMINATE_SIGNALS};
use crate::control::ControlError;
use crate::kvm::VcpuStop;
use crate::vm::{Vm, VmmError};
use crate::vm_events::VmEvent;

#[path = "vmm_snapshot.rs"]
mod snapshot;
pub use snapshot::run_restored;

/// How the VMM ended.
#[derive(Debug, Default)]
pub struct VmmExit {
    /// The outcome of the last VM that ran, if one did.
    pub outcome: Option<VmOutcome>,
    /// The host signal that ended the VMM, if one did.
    pub signal: Option<i32>,
}

/// The VM the VMM knows about.
struct VmSlot {
    config: VmConfig,
    state: VmState,
    running: Option<RunningVm>,
    /// Counters of the VM that runs or ran last.
    counters: Option<CounterSources>,
}

/// The VMM: lifecycle state machine and event loop subscriber.
pub struct Vmm {
    vm: Option<VmSlot>,
    requests: Option<RequestQueue>,
    signals: SignalFd,
    /// A front end keeps the VMM alive after its VM ends.
    serve: bool,
    exit: Option<VmmExit>,
    error: Option<VmmError>,
    last_outcome: Option<VmOutcome>,
}

fn control_err(e: ControlError) -> VmmError {
    VmmError::Control(e)
}

impl Vmm {
    /// A VMM with no VM. Blocks the signals it handles in the calling thread: create it
    /// before starting any thread (a front end's included). With `requests`, it serves a front
    /// end and lives until `vmm.shutdown` or a terminating signal.
    pub fn new(requests: Option<RequestQueue>) -> Result<Vmm, VmmError> {
        let signals = SignalFd::new().map_err(control_err)?;
        Ok(Vmm {
            vm: None,
            serve: requests.is_some(),
            requests,
            signals,
            exit: None,
            error: None,
            last_outcome: None,
        })
    }

    /// `vm.create`: stores a validated configuration.
    pub fn create(&mut self, config: VmConfig) -> Result<(), ActionError> {
        if let Some(slot) = &self.vm {
            return Err(ActionError::AlreadyCreated(slot.state));
        }
        config.validate().map_err(ActionError::InvalidConfig)?;
        self.vm = Some(VmSlot {
            config,
            state: VmState::Created,
            running: None,
            counters: None,
        });
        Ok(())
    }

    fn slot(&self) -> Result<&VmSlot, ActionError> {
        self.vm.as_ref().ok_or(ActionError::NotCreated)
    }

    fn slot_mut(&mut self) -> Result<&mut VmSlot, ActionError> {
        self.vm.as_mut().ok_or(ActionError::NotCreated)
    }

    /// Checks `transition` against the VM's state; the state it leads to.
    fn check(&self, transition: Transition) -> Result<VmState, ActionError> {
        Ok(self.slot()?.state.after(transition)?)
    }

    /// Builds the VM from its configuration and starts its vCPUs (not yet in the epoll).
    fn start_vm(&mut self) -> Result<(), VmmError> {
        let Some(slot) = self.vm.as_mut() else {
            return Ok(());
        };
        let vm = Vm::build(&slot.config)?;
        if let Some(pty) = vm.console_pty() {
            // The one line the library prints: the user needs the path to reach the console,
            // and it exists only once the VM is built.
            eprintln!("strata: virtio console on {}", pty.display());
        }
        let stdin = slot.config.serial.mode == ConsoleMode::Stdio;
        let running = RunningVm::start(vm, stdin)?;
        slot.counters = Some(running.counters().clone());
        slot.running = Some(running);
        slot.state = VmState::Running;
        Ok(())
    }

    /// `vm.boot` before the event loop runs (`strata run` with boot options).
    pub fn boot(&mut self) -> Result<(), ActionError> {
        self.check(Transition::Boot)?;
        self.start_vm().map_err(|e| ActionError::Boot(Box::new(e)))
    }

    /// Adds the running VM's sources to the epoll; a failure stops the VM.
    fn register_vm(&mut self, ops: &mut EventOps<'_>) -> Result<(), ControlError> {
        let Some(running) = self.vm.as_mut().and_then(|s| s.running.as_mut()) else {
            return Ok(());
        };
        let result = running.register(ops);
        if result.is_err() {
            self.stop_vm(Ending::Request, ops);
        }
        result
    }

    /// Stops the running VM (if one runs): sources out of the epoll, vCPUs joined, consoles
    /// flushed. The VM goes to `Shutdown`; its outcome is kept.
    fn stop_vm(&mut self, ending: Ending, ops: &mut EventOps<'_>) {
        let Some(slot) = self.vm.as_mut() else {
            return;
        };
        let Some(mut running) = slot.running.take() else {
            return;
        };
        slot.state = VmState::Shutdown;
        running.unregister(ops);
        match running.stop(ending) {
            Ok(outcome) => self.last_outcome = Some(outcome),
            Err(e) => self.error = Some(e),
        }
    }

    /// Boots inside the event loop: build, start, register.
    fn boot_vm(&mut self, ops: &mut EventOps<'_>) -> Result<(), ActionError> {
        self.start_vm()
            .map_err(|e| ActionError::Boot(Box::new(e)))?;
        self.register_vm(ops).map_err(ActionError::Control)
    }

    /// Performs one action.
    fn act(&mut self, action: VmmAction, ops: &mut EventOps<'_>) -> ActionResult {
        match action {
            VmmAction::Ping => Ok(ActionOutput::Ping(ping())),
            VmmAction::ShutdownVmm => {
                self.stop_vm(Ending::Request, ops);
                self.exit = Some(VmmExit::default());
                Ok(ActionOutput::Done)
            }
            VmmAction::CreateVm(config) => self.create(*config).map(|()| ActionOutput::Done),
            VmmAction::BootVm => {
                self.check(Transition::Boot)?;
                self.boot_vm(ops).map(|()| ActionOutput::Done)
            }
            VmmAction::PauseVm => self.pause(ops),
            VmmAction::ResumeVm => self.resume(ops),
            VmmAction::ShutdownVm => {
                self.check(Transition::Shutdown)?;
                self.stop_vm(Ending::Request, ops);
                Ok(ActionOutput::Done)
            }
            VmmAction::RebootVm => {
                self.check(Transition::Reboot)?;
                self.reboot(ops).map(|()| ActionOutput::Done)
            }
            VmmAction::PowerButton => {
                self.check(Transition::PowerButton)?;
                self.press_power_button()
            }
            VmmAction::DeleteVm => {
                self.stop_vm(Ending::Request, ops);
                self.vm = None;
                Ok(ActionOutput::Done)
            }
            VmmAction::VmInfo => self.info(),
            VmmAction::SnapshotVm(config) => self.snapshot(&config),
            VmmAction::RestoreVm(config) => self.restore_in_loop(&config, ops),
            VmmAction::VmCounters => {
                let slot = self.slot()?;
                match &slot.counters {
                    Some(c) => Ok(ActionOutput::Counters(c.snapshot())),
                    None => Err(ActionError::NoCounters(slot.state)),
                }
            }
        }
    }

    /// Presses the running VM's ACPI power button (the guest decides what to do).
    fn press_power_button(&self) -> ActionResult {
        let slot = self.slot()?;
        let button = slot.running.as_ref().and_then(|r| r.power_button());
        let Some(button) = button else {
            return Err(ActionError::NoPowerButton);
        };
        button
            .press()
            .map(|()| ActionOutput::Done)
            .map_err(ActionError::PressPowerButton)
    }

    fn info(&self) -> ActionResult {
        let slot = self.slot()?;
        Ok(ActionOutput::Info(Box::new(VmInfo {
            config: slot.config.clone(),
            state: slot.state,
            memory_actual_size: slot.config.memory.size,
        })))
    }

    fn pause(&mut self, ops: &mut EventOps<'_>) -> ActionResult {
        self.pause_or_resume(Transition::Pause, ops)
    }

    fn resume(&mut self, ops: &mut EventOps<'_>) -> ActionResult {
        self.pause_or_resume(Transition::Resume, ops)
    }

    /// Pauses or resumes every vCPU; returns once each has acknowledged. A vCPU that stops by
    /// itself meanwhile ends the VM, and the request fails naming the state that leaves.
    fn pause_or_resume(&mut self, transition: Transition, ops: &mut EventOps<'_>) -> ActionResult {
        let next = self.check(transition)?;
        let slot = self.slot_mut()?;
        let result = match slot.running.as_mut() {
            Some(running) if transition == Transition::Pause => running.pause(),
            Some(running) => running.resume(),
            None => Ok(()),
        };
        match result {
            Ok(()) => {
                slot.state = next;
                Ok(ActionOutput::Done)
            }
            Err(ending) => {
                self.vm_ended(ending, ops);
                let state = self.vm.as_ref().map_or(VmState::Shutdown, |s| s.state);
                Err(LifecycleError { transition, state }.into())
            }
        }
    }

    /// Stops the VM and builds and starts it anew from its configuration.
    fn reboot(&mut self, ops: &mut EventOps<'_>) -> Result<(), ActionError> {
        self.stop_vm(Ending::Request, ops);
        self.boot_vm(ops)
    }

    /// Something ended the running VM: without a front end the VMM ends with it; with one the
    /// VM goes to `Shutdown`, or reboots when the guest reset it.
    fn vm_ended(&mut self, ending: Ending, ops: &mut EventOps<'_>) {
        let reset = matches!(
            ending,
            Ending::Guest(VmEvent::Reset)
                | Ending::Vcpu {
                    stop: VcpuStop::Reset,
                    ..
                }
        );
        self.stop_vm(ending, ops);
        if !self.serve {
            self.exit = Some(VmmExit {
                outcome: self.last_outcome.take(),
                signal: None,
            });
        } else if reset {
            // A failed boot leaves the VM Shutdown, as any failed vm.boot does.
            let _ = self.boot_vm(ops);
        }
    }

    fn on_signal(&mut self, ops: &mut EventOps<'_>) {
        while let Some(sig) = self.signals.read() {
            if TERMINATE_SIGNALS.contains(&sig) {
                self.stop_vm(Ending::Signal(sig), ops);
                self.exit = Some(VmmExit {
                    outcome: self.last_outcome.take(),
                    signal: Some(sig),
                });
                return;
            }
            if sig == libc::SIGUSR1 {
                if let Some(running) = self.vm.as_ref().and_then(|s| s.running.as_ref()) {
                    if let Err(e) = running.render_vga() {
                        self.error = Some(e);
                    }
                }
            }
        }
    }

    fn on_requests(&mut self, ops: &mut EventOps<'_>) {
        let requests = match &self.requests {
            Some(queue) => queue.drain(),
            None => return,
        };
        for ApiRequest {
            token,
            action,
            reply,
        } in requests
        {
            if self.exit.is_some() {
                break;
            }
            let result = self.act(action, ops);
            reply.send(Reply { token, result });
        }
    }

    fn on_vm_source(&mut self, fd: RawFd, ops: &mut EventOps<'_>) {
        let Some(running) = self.vm.as_mut().and_then(|s| s.running.as_mut()) else {
            return;
        };
        match running.handle(fd, ops) {
            Ok(SourceEvent::Handled | SourceEvent::NotMine) => {}
            Ok(SourceEvent::End(ending)) => self.vm_ended(ending, ops),
            Err(e) => self.error = Some(e),
        }
    }

    /// Runs the control loop until the VMM ends: with no front end, when its VM ends; with
    /// one, at `vmm.shutdown` or a terminating signal.
    pub fn run(self) -> Result<VmmExit, VmmError> {
        let mut em: EventManager<Vmm> =
            EventManager::new().map_err(|e| control_err(ControlError::EventLoop(e)))?;
        let id = em.add_subscriber(self);
        loop {
            let vmm = em
                .subscriber_mut(id)
                .map_err(|e| control_err(ControlError::EventLoop(e)))?;
            if let Some(e) = vmm.error.take() {
                return Err(e);
            }
            if let Some(exit) = vmm.exit.take() {
                return Ok(exit);
            }
            em.run()
                .map_err(|e| control_err(ControlError::EventLoop(e)))?;
        }
    }
}

impl MutEventSubscriber for Vmm {
    fn init(&mut self, ops: &mut EventOps<'_>) {
        let mut fds = vec![(self.signals.as_raw_fd(), "signalfd")];
        if let Some(q) = &self.requests {
            fds.push((q.eventfd().as_raw_fd(), "API request eventfd"));
        }
        for (fd, what) in fds {
            if let Err(source) = ops.add(Events::new_raw(fd, EventSet::IN)) {
                self.error = Some(control_err(ControlError::Register {
                    op: "add",
                    what,
                    source,
                }));
                return;
            }
        }
        if let Err(e) = self.register_vm(ops) {
            self.error = Some(control_err(e));
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps<'_>) {
        let fd = events.fd();
        if fd == self.signals.as_raw_fd() {
            self.on_signal(ops);
        } else if self
            .requests
            .as_ref()
            .is_some_and(|q| q.eventfd().as_raw_fd() == fd)
        {
            self.on_requests(ops);
        } else {
            self.on_vm_source(fd, ops);
        }
    }
}

/// `vmm.ping`'s answer.
fn ping() -> VmmPing {
    VmmPing {
        build_version: format!("strata {}", env!("CARGO_PKG_VERSION")),
        version: env!("CARGO_PKG_VERSION").to_string(),
        pid: std::process::id(),
        features: Vec::new(),
    }
}

/// Builds and runs a VM until it ends (`strata run` without a front end).
pub fn run(config: &VmConfig) -> Result<VmOutcome, VmmError> {
    config.validate()?;
    let mut vmm = Vmm::new(None)?;
    vmm.vm = Some(VmSlot {
        config: config.clone(),
        state: VmState::Created,
        running: None,
        counters: None,
    });
    vmm.start_vm()?;
    finish(vmm.run()?)
}

/// The outcome of a VMM without a front end.
fn finish(exit: VmmExit) -> Result<VmOutcome, VmmError> {
    Ok(match exit.outcome {
        Some(outcome) => outcome,
        // Only a signal ends the VMM without an outcome, and only with no VM running.
        None => VmOutcome::new(
            Ending::Signal(exit.signal.unwrap_or(libc::SIGTERM)),
            Vec::new(),
            Default::default(),
        ),
    })
}
