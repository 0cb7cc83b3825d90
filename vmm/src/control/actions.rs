//! What a front end (the REST API) may ask of the VMM, and how the answer comes back.
//!
//! A front end thread sends [`ApiRequest`]s through a [`Requester`] (a channel plus an eventfd
//! in the control loop's epoll); the control loop answers each through the request's
//! [`ReplySender`] (a channel plus an eventfd in the front end's epoll). Neither side ever
//! waits on the other while holding anything: the control loop never touches a client, and
//! the front end keeps serving its other clients while a request is being handled.

use std::sync::{mpsc, Arc};

use serde::Serialize;
use vmm_sys_util::eventfd::EventFd;

use super::lifecycle::{LifecycleError, VmState};
use super::metrics::VmCounters;
use super::ControlError;
use crate::config::{ConfigError, VmConfig};
use crate::device_manager::DeviceManagerError;
use crate::snapshot::{RestoreConfig, SnapshotConfig, SnapshotError};
use crate::vm::VmmError;

/// One thing a front end asks of the VMM.
#[derive(Clone, Debug, PartialEq)]
pub enum VmmAction {
    /// `vmm.ping`: is the VMM there, and which is it.
    Ping,
    /// `vmm.shutdown`: stop the VM if one runs, then end the VMM.
    ShutdownVmm,
    /// `vm.create`: store a configuration (nothing is built until `vm.boot`).
    CreateVm(Box<VmConfig>),
    /// `vm.boot`: build the VM from its configuration and start it.
    BootVm,
    /// `vm.pause`.
    PauseVm,
    /// `vm.resume`.
    ResumeVm,
    /// `vm.shutdown`: stop the VM (it may boot again).
    ShutdownVm,
    /// `vm.reboot`: stop the VM, build it anew from its configuration, start it.
    RebootVm,
    /// `vm.power-button`.
    PowerButton,
    /// `vm.delete`: stop the VM if it runs and forget it.
    DeleteVm,
    /// `vm.info`.
    VmInfo,
    /// `vm.counters` (and the Prometheus text of `GET /metrics`).
    VmCounters,
    /// `vm.snapshot`: write a snapshot of the paused VM.
    SnapshotVm(SnapshotConfig),
    /// `vm.restore`: build a VM from a snapshot (paused unless asked to resume).
    RestoreVm(RestoreConfig),
}

/// `vmm.ping`'s answer (Cloud Hypervisor's `VmmPingResponse`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct VmmPing {
    /// The build: `strata <version>`.
    pub build_version: String,
    /// The version.
    pub version: String,
    /// The VMM's process ID.
    pub pid: u32,
    /// Optional features built in (none yet).
    pub features: Vec<String>,
}

/// `vm.info`'s answer (Cloud Hypervisor's `VmInfo`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct VmInfo {
    /// The configuration the VM was created with.
    pub config: VmConfig,
    /// Its lifecycle state.
    pub state: VmState,
    /// Guest RAM in bytes.
    pub memory_actual_size: u64,
}

/// A successful answer.
#[derive(Clone, Debug, PartialEq)]
pub enum ActionOutput {
    /// Nothing to say (HTTP 204).
    Done,
    /// `vmm.ping`.
    Ping(VmmPing),
    /// `vm.info`.
    Info(Box<VmInfo>),
    /// `vm.counters`.
    Counters(VmCounters),
}

/// How a failed request should be reported (the HTTP layer maps it to a status).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActionErrorKind {
    /// There is no VM to act on.
    NotFound,
    /// The VM's state does not allow the action.
    InvalidState,
    /// The request itself is wrong (a configuration, a kernel that does not load).
    BadRequest,
    /// The VMM failed.
    Internal,
}

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    /// No VM exists.
    #[error("no VM has been created (vm.create first)")]
    NotCreated,
    /// `vm.create` while a VM exists.
    #[error("a VM already exists (it is {0}): vm.delete it first")]
    AlreadyCreated(VmState),
    /// The VM's state does not allow the transition.
    #[error(transparent)]
    Lifecycle(#[from] LifecycleError),
    /// `vm.counters` before the VM ever ran.
    #[error("the VM has no counters yet: it is {0}")]
    NoCounters(VmState),
    /// The configuration is invalid.
    #[error("invalid VM configuration")]
    InvalidConfig(#[source] ConfigError),
    /// Building or starting the VM failed.
    #[error("unable to boot the VM")]
    Boot(#[source] Box<VmmError>),
    /// The VM has no power button to press.
    #[error("the VM has no power button: it runs with acpi off, so the guest cannot be asked to power off (use vm.shutdown)")]
    NoPowerButton,
    /// The power button's interrupt could not be raised.
    #[error("unable to press the power button")]
    PressPowerButton(#[source] std::io::Error),
    /// The control plane failed.
    #[error("the VMM failed")]
    Control(#[source] ControlError),
    /// `vm.snapshot` failed.
    #[error("unable to snapshot the VM")]
    Snapshot(#[source] Box<SnapshotError>),
    /// `vm.restore` failed.
    #[error("unable to restore the VM")]
    Restore(#[source] Box<VmmError>),
}

impl ActionError {
    /// How to report it.
    pub fn kind(&self) -> ActionErrorKind {
        match self {
            ActionError::NotCreated => ActionErrorKind::NotFound,
            ActionError::AlreadyCreated(_)
            | ActionError::Lifecycle(_)
            | ActionError::NoCounters(_) => ActionErrorKind::InvalidState,
            ActionError::InvalidConfig(_) | ActionError::NoPowerButton => {
                ActionErrorKind::BadRequest
            }
            ActionError::Boot(e) if boot_error_is_request(e) => ActionErrorKind::BadRequest,
            ActionError::Boot(_) | ActionError::Control(_) | ActionError::PressPowerButton(_) => {
                ActionErrorKind::Internal
            }
            ActionError::Snapshot(e) if snapshot_error_is_request(e) => ActionErrorKind::BadRequest,
            ActionError::Restore(e) if matches!(&**e, VmmError::Snapshot(s) if snapshot_error_is_request(s)) => {
                ActionErrorKind::BadRequest
            }
            ActionError::Restore(e) if boot_error_is_request(e) => ActionErrorKind::BadRequest,
            ActionError::Snapshot(_) | ActionError::Restore(_) => ActionErrorKind::Internal,
        }
    }

    /// The message and its causes, outermost first (Cloud Hypervisor's error body).
    pub fn messages(&self) -> Vec<String> {
        let mut out = vec![self.to_string()];
        let mut source = std::error::Error::source(self);
        while let Some(s) = source {
            let text = s.to_string();
            if !out.iter().any(|m| m.contains(&text)) {
                out.push(text);
            }
            source = s.source();
        }
        out
    }
}

/// Whether a boot failure is the request's fault (its configuration, its kernel, files it
/// names) rather than the host's.
fn boot_error_is_request(e: &VmmError) -> bool {
    matches!(
        e,
        VmmError::Config(_)
            | VmmError::Boot(_)
            | VmmError::TooManyVcpus { .. }
            | VmmError::Memory(_)
            | VmmError::OutputFile { .. }
            | VmmError::Resources(_)
            | VmmError::DeviceManager(
                DeviceManagerError::OpenRngSource { .. }
                    | DeviceManagerError::OpenDisk { .. }
                    | DeviceManagerError::OpenConsole { .. }
            )
    )
}

/// Whether a snapshot or restore failure is the request's fault (its URL, its files, a
/// device that cannot be snapshotted) rather than the host's.
fn snapshot_error_is_request(e: &SnapshotError) -> bool {
    !matches!(
        e,
        SnapshotError::Kvm(_)
            | SnapshotError::SaveVcpus(_)
            | SnapshotError::MapMemory(_)
            | SnapshotError::Userfaultfd(_)
    )
}

/// What the control loop answers.
pub type ActionResult = Result<ActionOutput, ActionError>;

/// An answer, with the token of the request it answers.
#[derive(Debug)]
pub struct Reply {
    /// The request's token (chosen by the front end).
    pub token: u64,
    /// The answer.
    pub result: ActionResult,
}

/// Where answers go: cheap to clone, one per front end.
#[derive(Clone)]
pub struct ReplySender {
    tx: mpsc::Sender<Reply>,
    notify: Arc<EventFd>,
}

/// The front end's end of its replies.
pub struct ReplyQueue {
    rx: mpsc::Receiver<Reply>,
    notify: Arc<EventFd>,
}

/// A request to the control loop.
pub struct ApiRequest {
    /// Chosen by the front end, returned in the [`Reply`].
    pub token: u64,
    /// What to do.
    pub action: VmmAction,
    /// Where the answer goes.
    pub reply: ReplySender,
}

/// The sending side of requests (the front end's).
#[derive(Clone)]
pub struct Requester {
    tx: mpsc::Sender<ApiRequest>,
    notify: Arc<EventFd>,
}

/// The control loop's side of requests.
pub struct RequestQueue {
    rx: mpsc::Receiver<ApiRequest>,
    notify: Arc<EventFd>,
}

fn eventfd(what: &'static str) -> Result<Arc<EventFd>, ControlError> {
    EventFd::new(libc::EFD_NONBLOCK)
        .map(Arc::new)
        .map_err(|e| ControlError::EventFd(what, e))
}

/// A connected request channel.
pub fn request_channel() -> Result<(Requester, RequestQueue), ControlError> {
    let notify = eventfd("API request")?;
    let (tx, rx) = mpsc::channel();
    Ok((
        Requester {
            tx,
            notify: Arc::clone(&notify),
        },
        RequestQueue { rx, notify },
    ))
}

/// A connected reply channel.
pub fn reply_channel() -> Result<(ReplySender, ReplyQueue), ControlError> {
    let notify = eventfd("API reply")?;
    let (tx, rx) = mpsc::channel();
    Ok((
        ReplySender {
            tx,
            notify: Arc::clone(&notify),
        },
        ReplyQueue { rx, notify },
    ))
}

impl Requester {
    /// Sends a request and wakes the control loop; false if the control loop is gone.
    pub fn send(&self, request: ApiRequest) -> bool {
        if self.tx.send(request).is_err() {
            return false;
        }
        let _ = self.notify.write(1);
        true
    }
}

impl RequestQueue {
    /// Readable when requests are pending.
    pub fn eventfd(&self) -> &EventFd {
        &self.notify
    }

    /// Every pending request, oldest first; clears the eventfd.
    pub fn drain(&self) -> Vec<ApiRequest> {
        let _ = self.notify.read();
        self.rx.try_iter().collect()
    }
}

impl ReplySender {
    /// Sends an answer and wakes the front end (a front end that is gone is ignored).
    pub fn send(&self, reply: Reply) {
        if self.tx.send(reply).is_ok() {
            let _ = self.notify.write(1);
        }
    }
}

impl ReplyQueue {
    /// Readable when answers are pending.
    pub fn eventfd(&self) -> &EventFd {
        &self.notify
    }

    /// Every pending answer; clears the eventfd.
    pub fn drain(&self) -> Vec<Reply> {
        let _ = self.notify.read();
        self.rx.try_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_request_and_reply_channels_round_trip() {
        let (requester, queue) = request_channel().expect("requests");
        let (reply, replies) = reply_channel().expect("replies");

        assert!(requester.send(ApiRequest {
            token: 7,
            action: VmmAction::Ping,
            reply: reply.clone(),
        }));
        let got = queue.drain();
        got[0].reply.send(Reply {
            token: got[0].token,
            result: Err(ActionError::NotCreated),
        });

        assert_eq!(got.len(), 1);
        assert_eq!(got[0].action, VmmAction::Ping);
        let answers = replies.drain();
        assert_eq!(answers[0].token, 7);
        assert!(matches!(answers[0].result, Err(ActionError::NotCreated)));
    }

    #[test]
    fn test_action_error_kinds() {
        let lifecycle = LifecycleError {
            transition: super::super::lifecycle::Transition::Pause,
            state: VmState::Paused,
        };

        assert_eq!(ActionError::NotCreated.kind(), ActionErrorKind::NotFound);
        assert_eq!(
            ActionError::Lifecycle(lifecycle).kind(),
            ActionErrorKind::InvalidState
        );
        assert_eq!(
            ActionError::NoPowerButton.kind(),
            ActionErrorKind::BadRequest
        );
        let missing_kernel = ActionError::Boot(Box::new(VmmError::Config(ConfigError::Invalid {
            field: "kernel",
            reason: "none".into(),
        })));
        assert_eq!(missing_kernel.kind(), ActionErrorKind::BadRequest);
    }

    #[test]
    fn test_action_error_messages_outermost_first() {
        let e = ActionError::InvalidConfig(ConfigError::Invalid {
            field: "cpus",
            reason: "boot must be at least 1".into(),
        });

        assert_eq!(
            e.messages(),
            vec![
                "invalid VM configuration".to_string(),
                "invalid cpus: boot must be at least 1".to_string()
            ]
        );
    }
}
