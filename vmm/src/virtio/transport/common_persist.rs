//! [`VirtioCommon`]'s part of a snapshot: the driver's view of the device (status, features,
//! each queue's configuration) and, for a running device, where each queue is. At restore a
//! running device is activated again with its queues at those positions.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{QueueConfig, VirtioCommon};
use crate::virtio::persist::QueuePosition;
use crate::virtio::{features, status, ActiveQueue, Queue, QueueT, VirtioInterrupt};

/// One queue's configuration as the driver wrote it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueConfigState {
    /// The size the driver chose.
    pub size: u16,
    /// Descriptor table.
    pub desc: u64,
    /// Available ring.
    pub avail: u64,
    /// Used ring.
    pub used: u64,
    /// Enabled.
    pub ready: bool,
}

/// What a transport keeps of any device.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommonState {
    /// The virtio device type (checked at restore).
    pub device_type: u32,
    /// Device status.
    pub status: u8,
    /// DeviceFeaturesSel.
    pub device_features_select: u32,
    /// DriverFeaturesSel.
    pub driver_features_select: u32,
    /// The driver's features.
    pub driver_features: u64,
    /// QueueSel.
    pub queue_select: u16,
    /// Every queue's configuration.
    pub queues: Vec<QueueConfigState>,
    /// Legacy interface.
    pub legacy: bool,
    /// The device runs (DRIVER_OK accepted).
    pub active: bool,
    /// Where each running queue is.
    pub positions: Vec<QueuePosition>,
    /// The device's own state.
    pub device: serde_json::Value,
}

impl VirtioCommon {
    /// Quiesces the device (if it runs) and returns the transport-independent state.
    pub fn save_state(&mut self) -> Result<CommonState, String> {
        let device_type = self.device.device_type();
        let active = self.active;
        let persist = self.device.persist().ok_or_else(|| {
            format!("virtio device type {device_type} does not support snapshots")
        })?;
        let positions = if active {
            persist.quiesce()?
        } else {
            Vec::new()
        };
        let device = persist.save_state();
        Ok(CommonState {
            device_type,
            status: self.status(),
            device_features_select: self.device_features_select,
            driver_features_select: self.driver_features_select,
            driver_features: self.driver_features,
            queue_select: self.queue_select,
            queues: self
                .queues
                .iter()
                .map(|q| QueueConfigState {
                    size: q.size,
                    desc: q.desc,
                    avail: q.avail,
                    used: q.used,
                    ready: q.ready,
                })
                .collect(),
            legacy: self.legacy,
            active,
            positions,
            device,
        })
    }

    /// Takes `s` into this freshly created device; a device that was running is activated
    /// with its queues where they were.
    pub fn restore_state(
        &mut self,
        s: &CommonState,
        interrupt: &Arc<dyn VirtioInterrupt>,
    ) -> Result<(), String> {
        if s.device_type != self.device.device_type() {
            return Err(format!(
                "virtio device type {} in the snapshot, {} configured",
                s.device_type,
                self.device.device_type()
            ));
        }
        if s.queues.len() != self.queues.len() {
            return Err(format!(
                "{} queues in the snapshot, the device has {}",
                s.queues.len(),
                self.queues.len()
            ));
        }
        for (q, saved) in self.queues.iter_mut().zip(&s.queues) {
            *q = QueueConfig {
                max_size: q.max_size,
                size: saved.size,
                desc: saved.desc,
                avail: saved.avail,
                used: saved.used,
                ready: saved.ready,
            };
        }
        self.device_features_select = s.device_features_select;
        self.driver_features_select = s.driver_features_select;
        self.driver_features = s.driver_features;
        self.queue_select = s.queue_select;
        self.legacy = s.legacy;
        let device_type = self.device.device_type();
        let persist = self.device.persist().ok_or_else(|| {
            format!("virtio device type {device_type} does not support snapshots")
        })?;
        persist.restore_state(&s.device)?;
        let negotiated = s.legacy || s.status & status::FEATURES_OK != 0;
        if negotiated {
            let offered = self.offered_features();
            self.device.ack_features(self.driver_features & offered);
        }
        if s.active {
            self.activate_at(interrupt, &s.positions)?;
        }
        self.status.store(s.status, Ordering::Release);
        if s.active {
            if let Some(persist) = self.device.persist() {
                persist.restored()?;
            }
        }
        Ok(())
    }

    /// The snapshot is written: a device that kept its worker stopped starts it again (one
    /// that cannot is marked as needing a reset, which the guest sees).
    pub fn resume_after_snapshot(&mut self, interrupt: &Arc<dyn VirtioInterrupt>) {
        if !self.active {
            return;
        }
        if let Some(persist) = self.device.persist() {
            if persist.resume_after_snapshot().is_err() {
                interrupt.set_needs_reset();
            }
        }
    }

    /// Activation with each queue at a saved position (those without one at the start of
    /// their rings).
    pub(super) fn activate_at(
        &mut self,
        interrupt: &Arc<dyn VirtioInterrupt>,
        positions: &[QueuePosition],
    ) -> Result<(), String> {
        let event_idx = self.driver_features & features::RING_EVENT_IDX != 0;
        let mut queues = Vec::new();
        for (index, cfg) in self.queues.iter().enumerate() {
            if !cfg.ready {
                continue;
            }
            let mut queue: Queue = cfg
                .build(&self.mem, event_idx)
                .map_err(|e| format!("queue {index}: {e}"))?;
            if let Some(p) = positions.iter().find(|p| usize::from(p.index) == index) {
                queue.set_next_avail(p.next_avail);
                queue.set_next_used(p.next_used);
            }
            let notify = self.notifies[index]
                .try_clone()
                .map_err(|e| e.to_string())?;
            queues.push(ActiveQueue {
                index: index as u16,
                queue,
                notify,
            });
        }
        self.device
            .activate(self.mem.clone(), Arc::clone(interrupt), queues)
            .map_err(|e| e.to_string())?;
        self.active = true;
        Ok(())
    }
}
