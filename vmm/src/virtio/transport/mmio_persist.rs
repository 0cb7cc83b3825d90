//! A virtio-mmio device's part of a snapshot: InterruptStatus, ConfigGeneration and the
//! transport-independent state (`common_persist.rs`).

use std::sync::atomic::Ordering;

use serde::{Deserialize, Serialize};

use super::MmioTransport;
use crate::snapshot::persist::{DeviceState, PersistError};
use crate::virtio::transport::common_persist::CommonState;

/// Version of [`MmioState`].
pub const MMIO_STATE_VERSION: u32 = 1;

/// A virtio-mmio device as a snapshot carries it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MmioState {
    /// InterruptStatus.
    pub interrupt_status: u32,
    /// ConfigGeneration.
    pub config_generation: u32,
    /// Status, features, queues, the device's own state.
    pub common: CommonState,
}

fn kind(device_type: u32) -> String {
    format!("virtio-mmio/{device_type}")
}

impl MmioTransport {
    /// Quiesces the device and returns its state-file entry.
    pub fn save_state(&mut self, id: &str) -> Result<DeviceState, PersistError> {
        let device_type = self.common.device.device_type();
        let common = self
            .common
            .save_state()
            .map_err(|reason| PersistError::Device {
                id: id.to_string(),
                reason,
            })?;
        let state = MmioState {
            interrupt_status: self.interrupt.interrupt_status.load(Ordering::Acquire),
            config_generation: self.interrupt.config_generation.load(Ordering::Acquire),
            common,
        };
        Ok(DeviceState {
            id: id.to_string(),
            kind: kind(device_type),
            version: MMIO_STATE_VERSION,
            state: serde_json::to_value(state).map_err(|e| PersistError::Invalid {
                id: id.to_string(),
                reason: e.to_string(),
            })?,
        })
    }

    /// Takes `entry` into this freshly created transport (its device activated if it ran).
    pub fn restore_state(&mut self, entry: &DeviceState) -> Result<(), PersistError> {
        let id = entry.id.clone();
        let want = kind(self.common.device.device_type());
        if entry.kind != want {
            return Err(PersistError::Kind {
                id,
                found: entry.kind.clone(),
                want,
            });
        }
        if entry.version != MMIO_STATE_VERSION {
            return Err(PersistError::Version {
                id,
                found: entry.version,
                want: MMIO_STATE_VERSION,
            });
        }
        let s: MmioState =
            serde_json::from_value(entry.state.clone()).map_err(|e| PersistError::Invalid {
                id: id.clone(),
                reason: e.to_string(),
            })?;
        self.interrupt
            .interrupt_status
            .store(s.interrupt_status, Ordering::Release);
        self.interrupt
            .config_generation
            .store(s.config_generation, Ordering::Release);
        self.common
            .restore_state(&s.common, &self.dyn_interrupt)
            .map_err(|reason| PersistError::Device { id, reason })
    }
}
