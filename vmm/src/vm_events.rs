//! How devices tell the VMM that the guest asked to end or reset the machine.
//!
//! A device (i8042 reset, port 0xcf9, the debug-exit port, later ACPI) holds a [`VmEvents`]
//! sender; the VMM's control loop waits on the eventfd of the [`VmEventQueue`] and drains it.
//! The vCPU that made the request is not stopped by the device; every vCPU looks at
//! [`VmEventQueue::sent_flag`] after each exit it handles and, once an event was sent, stops
//! running the guest and waits for the control loop (so a guest that goes on after asking to
//! exit cannot print more).

#![forbid(unsafe_code)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

/// What the guest asked the machine to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmEvent {
    /// Reset (i8042 pulse, port 0xcf9, ACPI reset register).
    Reset,
    /// Power off (ACPI S5).
    PowerOff,
    /// The guest wrote this value to the debug-exit port.
    DebugExit(u8),
}

/// The sending side: cheap to clone, one per device that can end the VM.
#[derive(Clone)]
pub struct VmEvents {
    tx: mpsc::Sender<VmEvent>,
    notify: Arc<EventFd>,
    sent: Arc<AtomicBool>,
}

/// The receiving side, owned by the VMM's control loop.
pub struct VmEventQueue {
    rx: mpsc::Receiver<VmEvent>,
    notify: Arc<EventFd>,
    sent: Arc<AtomicBool>,
}

/// Errors creating the queue.
#[derive(Debug, thiserror::Error)]
pub enum VmEventsError {
    /// The eventfd could not be created.
    #[error("unable to create the VM event eventfd")]
    CreateEventFd(#[source] std::io::Error),
}

/// A connected sender and queue.
pub fn vm_events() -> Result<(VmEvents, VmEventQueue), VmEventsError> {
    let notify = Arc::new(EventFd::new(libc::EFD_NONBLOCK).map_err(VmEventsError::CreateEventFd)?);
    let (tx, rx) = mpsc::channel();
    let sent = Arc::new(AtomicBool::new(false));
    Ok((
        VmEvents {
            tx,
            notify: Arc::clone(&notify),
            sent: Arc::clone(&sent),
        },
        VmEventQueue { rx, notify, sent },
    ))
}

impl VmEvents {
    /// Sends `event` and wakes the control loop. A VMM that is already gone ignores it.
    pub fn send(&self, event: VmEvent) {
        self.sent.store(true, Ordering::Release);
        if self.tx.send(event).is_ok() {
            let _ = self.notify.write(1);
        }
    }
}

impl VmEventQueue {
    /// The eventfd that becomes readable when events are pending (for epoll).
    pub fn eventfd(&self) -> &EventFd {
        &self.notify
    }

    /// Set once any event has been sent (never cleared: every event ends or resets the VM).
    pub fn sent_flag(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.sent)
    }

    /// Every pending event, oldest first; clears the eventfd.
    pub fn drain(&self) -> Vec<VmEvent> {
        let _ = self.notify.read();
        self.rx.try_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_vm_events_sent_events_drained_in_order_and_eventfd_signalled() {
        let (events, queue) = vm_events().expect("vm events");
        let device = events.clone();

        assert!(!queue.sent_flag().load(Ordering::Acquire));
        device.send(VmEvent::DebugExit(3));
        events.send(VmEvent::Reset);

        assert!(queue.sent_flag().load(Ordering::Acquire));
        assert_eq!(queue.eventfd().read().expect("signalled"), 2);
        assert_eq!(queue.drain(), vec![VmEvent::DebugExit(3), VmEvent::Reset]);
        assert!(queue.drain().is_empty());
    }

    #[test]
    fn test_vm_events_send_after_queue_dropped_is_ignored() {
        let (events, queue) = vm_events().expect("vm events");
        drop(queue);

        events.send(VmEvent::PowerOff);
    }
}
