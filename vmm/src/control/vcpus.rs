//! The vCPU threads as the control loop sees them: one command channel per vCPU, one event
//! channel back (with an eventfd in the control loop's epoll), and the kick.
//!
//! Pause, resume and exit send the command to every vCPU, kick each once, and wait for every
//! vCPU's acknowledgement (or its own stop, which also takes it out of KVM_RUN).

use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;

use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::Killable;

use super::ControlError;
use crate::emulate::EmulationStats;
use crate::kvm::kick::{install_kick_handler, kick_signal};
use crate::kvm::persist::VcpuState;
use crate::kvm::{
    SavedVcpu, Vcpu, VcpuCommand, VcpuEnd, VcpuEvent, VcpuEventKind, VcpuLink, VcpuReport, VcpuStop,
};

/// One vCPU thread.
struct VcpuThread {
    id: u8,
    commands: mpsc::Sender<VcpuCommand>,
    handle: Option<JoinHandle<VcpuEnd>>,
    /// It stopped by itself: its thread has ended or is ending.
    stopped: bool,
}

impl VcpuThread {
    /// Sends `command` and kicks the thread out of KVM_RUN (one signal: `immediate_exit`
    /// catches a kick that lands before KVM_RUN).
    fn command(&self, command: VcpuCommand) {
        if self.stopped || self.commands.send(command).is_err() {
            return;
        }
        if let Some(handle) = &self.handle {
            // The thread is not joined yet, so its pthread handle is valid.
            let _ = handle.kill(kick_signal());
        }
    }
}

/// Every vCPU thread of a running VM.
pub struct VcpuThreads {
    threads: Vec<VcpuThread>,
    events: mpsc::Receiver<VcpuEvent>,
    notify: Arc<EventFd>,
}

/// What the vCPUs ended with.
pub struct VcpuEnds {
    /// Every vCPU's registers at its end, in vCPU order.
    pub reports: Vec<VcpuReport>,
    /// Emulated instructions over all vCPUs.
    pub emulated: EmulationStats,
}

impl VcpuThreads {
    /// Starts one thread per vCPU (`vcpuN`), each `Running`.
    pub fn spawn(vcpus: Vec<Vcpu>) -> Result<VcpuThreads, ControlError> {
        VcpuThreads::spawn_from(vcpus, false)
    }

    /// [`VcpuThreads::spawn`], each thread starting `Paused` if `paused`.
    pub fn spawn_from(vcpus: Vec<Vcpu>, paused: bool) -> Result<VcpuThreads, ControlError> {
        install_kick_handler().map_err(ControlError::KickHandler)?;
        let notify = Arc::new(
            EventFd::new(libc::EFD_NONBLOCK).map_err(|e| ControlError::EventFd("vCPU event", e))?,
        );
        let (events_tx, events) = mpsc::channel();
        let mut set = VcpuThreads {
            threads: Vec::with_capacity(vcpus.len()),
            events,
            notify: Arc::clone(&notify),
        };
        for vcpu in vcpus {
            let id = vcpu.id();
            let (commands, commands_rx) = mpsc::channel();
            let link = VcpuLink {
                commands: commands_rx,
                events: events_tx.clone(),
                notify: Arc::clone(&notify),
            };
            let name = format!("vcpu{id}");
            let spawned = std::thread::Builder::new()
                .name(name.clone())
                .spawn(move || vcpu.run_from(&link, paused));
            let handle = match spawned {
                Ok(handle) => handle,
                Err(source) => {
                    set.exit();
                    return Err(ControlError::SpawnThread { name, source });
                }
            };
            set.threads.push(VcpuThread {
                id,
                commands,
                handle: Some(handle),
                stopped: false,
            });
        }
        Ok(set)
    }

    /// The eventfd that becomes readable when a vCPU has something to say.
    pub fn eventfd(&self) -> &EventFd {
        &self.notify
    }

    /// Clears the eventfd and returns the first vCPU that stopped by itself since the last
    /// look, if one did (acknowledgements that arrive here are stale and dropped).
    pub fn take_stop(&mut self) -> Option<(u8, VcpuStop)> {
        let _ = self.notify.read();
        let mut first = None;
        while let Ok(event) = self.events.try_recv() {
            if let Some(stop) = self.note(event) {
                first.get_or_insert(stop);
            }
        }
        first
    }

    /// Records a vCPU's own stop; returns it.
    fn note(&mut self, event: VcpuEvent) -> Option<(u8, VcpuStop)> {
        let VcpuEventKind::Stopped(stop) = event.kind else {
            return None;
        };
        if let Some(t) = self.threads.iter_mut().find(|t| t.id == event.id) {
            t.stopped = true;
        }
        Some((event.id, stop))
    }

    /// Pauses every vCPU: returns once each has left KVM_RUN with its pending I/O completed.
    /// If a vCPU stopped by itself meanwhile, returns that stop (the VM must end).
    pub fn pause(&mut self) -> Option<(u8, VcpuStop)> {
        self.command_all(VcpuCommand::Pause, &VcpuEventKind::Paused)
    }

    /// Resumes every vCPU where it paused; returns once each has acknowledged (or the first
    /// vCPU that stopped by itself).
    pub fn resume(&mut self) -> Option<(u8, VcpuStop)> {
        self.command_all(VcpuCommand::Resume, &VcpuEventKind::Resumed)
    }

    fn command_all(&mut self, command: VcpuCommand, ack: &VcpuEventKind) -> Option<(u8, VcpuStop)> {
        let mut waiting: Vec<u8> = Vec::new();
        for t in self.threads.iter().filter(|t| !t.stopped) {
            t.command(command);
            waiting.push(t.id);
        }
        let mut first_stop = None;
        while !waiting.is_empty() {
            let Ok(event) = self.events.recv() else {
                break;
            };
            let id = event.id;
            if event.kind == *ack {
                waiting.retain(|w| *w != id);
            } else if let Some(stop) = self.note(event) {
                waiting.retain(|w| *w != id);
                first_stop.get_or_insert(stop);
            }
        }
        first_stop
    }

    /// Reads every paused vCPU's KVM state (snapshot); the first vCPU's error if one fails.
    /// Call only while paused.
    pub fn save(&mut self) -> Result<Vec<VcpuState>, String> {
        let mut waiting: Vec<u8> = Vec::new();
        for t in self.threads.iter().filter(|t| !t.stopped) {
            t.command(VcpuCommand::Save);
            waiting.push(t.id);
        }
        let mut saved = Vec::new();
        let mut error = None;
        while !waiting.is_empty() {
            let Ok(event) = self.events.recv() else {
                break;
            };
            let id = event.id;
            match event.kind {
                VcpuEventKind::Saved(SavedVcpu(state)) => {
                    waiting.retain(|w| *w != id);
                    match Arc::try_unwrap(state) {
                        Ok(Ok(state)) => saved.push(state),
                        Ok(Err(e)) => error = error.or(Some(e)),
                        Err(_) => error = error.or(Some(format!("vCPU {id}: state shared"))),
                    }
                }
                kind => {
                    if let Some((id, stop)) = self.note(VcpuEvent { id, kind }) {
                        waiting.retain(|w| *w != id);
                        error = error.or(Some(format!("vCPU {id} stopped: {stop}")));
                    }
                }
            }
        }
        if let Some(e) = error {
            return Err(e);
        }
        if saved.len() != self.threads.len() {
            return Err("a vCPU has stopped: the VM cannot be saved".into());
        }
        saved.sort_by_key(|s| s.id);
        Ok(saved)
    }

    /// Tells every vCPU to exit, kicks it, and joins the threads: their reports and
    /// emulation counts.
    pub fn exit(&mut self) -> VcpuEnds {
        for t in &self.threads {
            t.command(VcpuCommand::Exit);
        }
        let mut ends = VcpuEnds {
            reports: Vec::new(),
            emulated: EmulationStats::default(),
        };
        for t in &mut self.threads {
            if let Some(end) = t.handle.take().and_then(|h| h.join().ok()) {
                ends.emulated.merge(&end.stats);
                ends.reports.extend(end.report);
            }
        }
        ends
    }
}

impl Drop for VcpuThreads {
    fn drop(&mut self) {
        if self.threads.iter().any(|t| t.handle.is_some()) {
            self.exit();
        }
    }
}
