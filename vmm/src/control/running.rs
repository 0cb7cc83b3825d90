//! A VM whose vCPUs run (or are paused), with the event sources that belong to it: the vCPU
//! events, the guest's requests (`VmEvents`), the timeout, the console tick and standard input.
//! The control loop registers [`RunningVm::sources`] in its epoll, hands each ready one to
//! [`RunningVm::handle`], and removes them with [`RunningVm::unregister`] before the VM goes.

use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use event_manager::{EventOps, Events};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::timerfd::TimerFd;

use super::console::StdinSource;
use super::metrics::CounterSources;
use super::outcome::{Ending, VmOutcome};
use super::vcpus::VcpuThreads;
use super::ControlError;
use crate::config::VgaMode;
use crate::snapshot::save::{self, SaveStats};
use crate::snapshot::SnapshotError;
use crate::vm::{Vm, VmmError};

/// How often buffered console output is flushed (and a throttled or unpollable standard input
/// looked at again): the only timer-driven work of the control loop.
pub const CONSOLE_TICK: Duration = Duration::from_millis(100);

/// A started VM.
pub struct RunningVm {
    vm: Vm,
    vcpus: VcpuThreads,
    timeout: Option<TimerFd>,
    tick: TimerFd,
    stdin: Option<StdinSource>,
    counters: CounterSources,
    registered: Vec<RawFd>,
}

/// What a ready source asked of the control loop.
pub enum SourceEvent {
    /// Nothing more.
    Handled,
    /// The VM must end.
    End(Ending),
    /// The source was not one of this VM's.
    NotMine,
}

fn timer(
    what: &'static str,
    first: Duration,
    every: Option<Duration>,
) -> Result<TimerFd, ControlError> {
    let mut t = TimerFd::new().map_err(|e| ControlError::Timer(what, e))?;
    t.reset(first, every)
        .map_err(|e| ControlError::Timer(what, e))?;
    Ok(t)
}

fn register_err(what: &'static str) -> impl Fn(event_manager::Error) -> ControlError {
    move |source| ControlError::Register {
        op: "add",
        what,
        source,
    }
}

impl RunningVm {
    /// The VM's ACPI power button, if it has ACPI.
    pub(crate) fn power_button(&self) -> Option<&crate::acpi::PowerButton> {
        self.vm.power_button.as_ref()
    }

    /// Starts the vCPU threads of a built VM and arms its timers.
    pub fn start(vm: Vm, stdin: bool) -> Result<RunningVm, ControlError> {
        RunningVm::start_from(vm, stdin, false)
    }

    /// [`RunningVm::start`] with the vCPUs paused if `paused` (a restored VM).
    pub fn start_from(mut vm: Vm, stdin: bool, paused: bool) -> Result<RunningVm, ControlError> {
        let counters = CounterSources {
            vcpus: vm
                .vcpus
                .iter()
                .map(|v| (v.id(), v.counters(), v.emulation_stats()))
                .collect(),
            devices: vm.device_counters.clone(),
        };
        let timeout = match vm.timeout {
            // A zero timeout would disarm the timer: expire at once instead.
            Some(t) => Some(timer("timeout", t.max(Duration::from_nanos(1)), None)?),
            None => None,
        };
        let tick = timer("console tick", CONSOLE_TICK, Some(CONSOLE_TICK))?;
        let stdin = stdin.then(|| StdinSource::new(vm.devices.serial.clone()));
        let vcpus = VcpuThreads::spawn_from(std::mem::take(&mut vm.vcpus), paused)?;
        Ok(RunningVm {
            vm,
            vcpus,
            timeout,
            tick,
            stdin,
            counters,
            registered: Vec::new(),
        })
    }

    /// Where its counters live (kept by the VMM after the VM stops).
    pub fn counters(&self) -> &CounterSources {
        &self.counters
    }

    /// Adds the VM's sources to the control loop's epoll.
    pub fn register(&mut self, ops: &mut EventOps<'_>) -> Result<(), ControlError> {
        let mut fds = vec![
            (self.vcpus.eventfd().as_raw_fd(), "vCPU eventfd"),
            (self.vm.events.eventfd().as_raw_fd(), "VM event eventfd"),
            (self.tick.as_raw_fd(), "console tick timer"),
        ];
        if let Some(t) = &self.timeout {
            fds.push((t.as_raw_fd(), "timeout timer"));
        }
        for (fd, what) in fds {
            ops.add(Events::new_raw(fd, EventSet::IN))
                .map_err(register_err(what))?;
            self.registered.push(fd);
        }
        if let Some(stdin) = &mut self.stdin {
            stdin.register(ops);
        }
        Ok(())
    }

    /// Removes the VM's sources from the epoll (before they are closed).
    pub fn unregister(&mut self, ops: &mut EventOps<'_>) {
        for fd in self.registered.drain(..) {
            let _ = ops.remove(Events::empty_raw(fd));
        }
        if let Some(stdin) = &mut self.stdin {
            stdin.unregister(ops);
        }
    }

    /// Handles a ready source of this VM.
    pub fn handle(&mut self, fd: RawFd, ops: &mut EventOps<'_>) -> Result<SourceEvent, VmmError> {
        if fd == self.vcpus.eventfd().as_raw_fd() {
            return Ok(match self.vcpus.take_stop() {
                Some((id, stop)) => SourceEvent::End(Ending::Vcpu { id, stop }),
                None => SourceEvent::Handled,
            });
        }
        if fd == self.vm.events.eventfd().as_raw_fd() {
            return Ok(match self.vm.events.drain().into_iter().next() {
                Some(event) => SourceEvent::End(Ending::Guest(event)),
                None => SourceEvent::Handled,
            });
        }
        if self.timeout.as_ref().is_some_and(|t| t.as_raw_fd() == fd) {
            return Ok(SourceEvent::End(Ending::Timeout));
        }
        if fd == self.tick.as_raw_fd() {
            let _ = self.tick.wait();
            self.vm.devices.flush_output();
            if let Some(stdin) = &mut self.stdin {
                stdin.on_tick(ops);
            }
            return Ok(SourceEvent::Handled);
        }
        match &mut self.stdin {
            Some(stdin) if stdin.registered() && stdin.fd() == fd => {
                stdin.on_readable(ops);
                Ok(SourceEvent::Handled)
            }
            _ => Ok(SourceEvent::NotMine),
        }
    }

    /// Pauses every vCPU (pending I/O completed); a vCPU's own stop meanwhile ends the VM.
    pub fn pause(&mut self) -> Result<(), Ending> {
        match self.vcpus.pause() {
            Some((id, stop)) => Err(Ending::Vcpu { id, stop }),
            None => Ok(()),
        }
    }

    /// Writes a snapshot of the paused VM to `dir`: the virtio devices quiesced first, then
    /// the vCPUs' state, then everything else (`snapshot::save`).
    pub fn snapshot(
        &mut self,
        config: &crate::config::VmConfig,
        dir: &std::path::Path,
    ) -> Result<SaveStats, SnapshotError> {
        let written = self.save(config, dir);
        self.vm.virtio.resume_after_snapshot();
        written
    }

    fn save(
        &mut self,
        config: &crate::config::VmConfig,
        dir: &std::path::Path,
    ) -> Result<SaveStats, SnapshotError> {
        let virtio = self.vm.virtio.save_states()?;
        let vcpus = self.vcpus.save().map_err(SnapshotError::SaveVcpus)?;
        save::write(&self.vm, config, vcpus, virtio, dir)
    }

    /// Resumes every vCPU where it paused.
    pub fn resume(&mut self) -> Result<(), Ending> {
        match self.vcpus.resume() {
            Some((id, stop)) => Err(Ending::Vcpu { id, stop }),
            None => Ok(()),
        }
    }

    /// Renders the VGA text console (SIGUSR1), if the VM shows one.
    pub fn render_vga(&self) -> Result<(), VmmError> {
        if self.vm.vga.mode == VgaMode::Text {
            self.vm.render_vga()?;
        }
        Ok(())
    }

    /// Stops the vCPUs (their reports) and the virtio workers, flushes the consoles and
    /// renders the VGA console.
    /// Unregister first.
    pub fn stop(mut self, ending: Ending) -> Result<VmOutcome, VmmError> {
        let ends = self.vcpus.exit();
        self.vm.virtio.shutdown();
        self.vm.devices.flush_output();
        self.render_vga()?;
        Ok(VmOutcome::new(ending, ends.reports, ends.emulated))
    }
}
