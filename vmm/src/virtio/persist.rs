//! What a virtio device does for a snapshot (docs/decisions/0013). A device opts in by
//! implementing [`VirtioPersist`] (in a `persist.rs` in its folder) and returning itself from
//! `VirtioDevice::persist`; one that does not makes a snapshot of its VM fail with a one-line
//! error naming it. The transport saves what it owns (status, features, queue addresses,
//! interrupt state); the device saves where its queues are and anything of its own.

use serde::{Deserialize, Serialize};

/// Where a running queue is: the next available entry the device will take and the next used
/// entry it will write.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueuePosition {
    /// The queue's index on the device.
    pub index: u16,
    /// virtio-queue's `next_avail`.
    pub next_avail: u16,
    /// virtio-queue's `next_used`.
    pub next_used: u16,
}

/// A virtio device whose state a snapshot can carry.
pub trait VirtioPersist {
    /// Quiesces an active device for a snapshot (the vCPUs are paused): its worker takes
    /// every request already available, answers all of them (their used entries written and
    /// interrupts raised), and its backend is flushed. The worker may run again afterwards,
    /// but with the vCPUs paused it finds nothing to do. Returns each active queue's position.
    fn quiesce(&mut self) -> Result<Vec<QueuePosition>, String>;

    /// The device's own state beyond its queues (none by default).
    fn save_state(&self) -> serde_json::Value {
        serde_json::Value::Null
    }

    /// Takes back what [`VirtioPersist::save_state`] returned, before activation.
    fn restore_state(&mut self, _state: &serde_json::Value) -> Result<(), String> {
        Ok(())
    }

    /// Called once the snapshot is written (or failed): a device whose backend the host
    /// drives (a tap, host sockets) keeps its worker stopped from `quiesce` until here, so
    /// that nothing writes guest memory while it is saved. Nothing to do by default.
    fn resume_after_snapshot(&mut self) -> Result<(), String> {
        Ok(())
    }

    /// Called at restore after the device was activated with its saved queues (vsock sends
    /// its transport reset event here). Nothing to do by default.
    fn restored(&mut self) -> Result<(), String> {
        Ok(())
    }
}
