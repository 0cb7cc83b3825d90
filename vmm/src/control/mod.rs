//! The control plane: what runs a built VM and answers requests about it.
//!
//! The VMM's control loop (`crate::vmm::Vmm`, on event-manager's epoll) owns the lifecycle
//! state machine ([`lifecycle`]) and, while a VM runs, a [`running::RunningVm`]: the vCPU
//! threads and their command channels ([`vcpus`]), the guest's requests (`VmEvents`), the
//! timeout and the console tick (timerfds), standard input ([`console`]). Host signals arrive
//! through a signalfd ([`signals`]); requests from a front end (the REST API) through a
//! channel and an eventfd ([`actions`]). Counters are read lock-free from the vCPUs and
//! devices and rendered as JSON or Prometheus text ([`metrics`]). Nothing here sees argv or
//! HTTP.

pub mod actions;
pub mod console;
pub mod lifecycle;
pub mod metrics;
pub mod outcome;
pub mod running;
pub mod signals;
pub mod vcpus;

use std::io;

/// Errors of the control plane itself (not of the guest, nor of a request).
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The vCPU kick signal handler could not be installed.
    #[error("unable to install the vCPU kick signal handler")]
    KickHandler(#[source] vmm_sys_util::errno::Error),
    /// A thread could not be started.
    #[error("unable to start thread {name}")]
    SpawnThread {
        /// Thread name.
        name: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// An eventfd could not be created.
    #[error("unable to create the {0} eventfd")]
    EventFd(&'static str, #[source] io::Error),
    /// The host signals could not be blocked or their signalfd created.
    #[error("unable to set up the signalfd for SIGTERM, SIGINT, SIGHUP and SIGUSR1")]
    SignalFd(#[source] io::Error),
    /// A timerfd could not be created or armed.
    #[error("unable to set up the {0} timer")]
    Timer(&'static str, #[source] vmm_sys_util::errno::Error),
    /// The event loop could not be created or waited on.
    #[error("the VMM event loop failed")]
    EventLoop(#[source] event_manager::Error),
    /// A file descriptor could not be added to or removed from the event loop.
    #[error("unable to {op} the {what} in the VMM event loop")]
    Register {
        /// "add" or "remove".
        op: &'static str,
        /// Which source.
        what: &'static str,
        /// The cause.
        #[source]
        source: event_manager::Error,
    },
}
