//! A virtio-pci function's part of a snapshot: its configuration space (BAR addresses
//! included), MSI-X (table, pending bits, enable and mask), the interrupt state (ISR,
//! configuration generation, queue and configuration vectors, INTx disable) and the
//! transport-independent state (`common_persist.rs`: status, features, queues, the legacy
//! interface flag, the device's own state).
//!
//! At restore the configuration space and MSI-X come first (MSI-X re-routes its GSIs), then
//! the vectors and the ISR, then the device (activated with its queues where they were). The
//! BARs are moved on the buses afterwards by the PCI root (`PciRoot::sync_bars`), which calls
//! `bar_moved` here and so moves the notify ioeventfds too.

use serde::{Deserialize, Serialize};

use super::VirtioPciDevice;
use crate::pci::config::persist::PciConfigState;
use crate::pci::msix::persist::MsixState;
use crate::snapshot::persist::{DeviceState, PersistError};
use crate::virtio::transport::common_persist::CommonState;

/// Version of [`PciState`].
pub const PCI_STATE_VERSION: u32 = 1;

/// A virtio-pci function as a snapshot carries it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PciState {
    /// The configuration space.
    pub config: PciConfigState,
    /// MSI-X.
    pub msix: MsixState,
    /// The ISR.
    pub isr: u8,
    /// The configuration generation.
    pub config_generation: u8,
    /// The command register's INTx disable.
    pub intx_disabled: bool,
    /// Each queue's MSI-X vector.
    pub queue_vectors: Vec<u16>,
    /// The configuration-change vector.
    pub config_vector: u16,
    /// Status, features, queues, the device's own state.
    pub common: CommonState,
}

fn kind(device_type: u32) -> String {
    format!("virtio-pci/{device_type}")
}

impl VirtioPciDevice {
    /// Quiesces the device and returns its state-file entry.
    pub fn save_state(&mut self, id: &str) -> Result<DeviceState, PersistError> {
        let device_err = |reason| PersistError::Device {
            id: id.to_string(),
            reason,
        };
        let device_type = self.common.device.device_type();
        let common = self.common.save_state().map_err(device_err)?;
        let (isr, config_generation, intx_disabled) = self.interrupt.saved_flags();
        let queue_vectors = (0..self.common.queue_count() as u16)
            .map(|q| self.interrupt.queue_vector(q))
            .collect();
        let state = PciState {
            config: self.config.save_state(),
            msix: self.interrupt.msix().save_state(),
            isr,
            config_generation,
            intx_disabled,
            queue_vectors,
            config_vector: self.interrupt.config_vector(),
            common,
        };
        Ok(DeviceState {
            id: id.to_string(),
            kind: kind(device_type),
            version: PCI_STATE_VERSION,
            state: serde_json::to_value(state).map_err(|e| PersistError::Invalid {
                id: id.to_string(),
                reason: e.to_string(),
            })?,
        })
    }

    /// Starts the device's worker again after a snapshot (see `VirtioPersist`).
    pub fn resume_after_snapshot(&mut self) {
        self.common.resume_after_snapshot(&self.dyn_interrupt);
    }

    /// Takes `entry` into this freshly created function (its device activated if it ran). Its
    /// BARs stay mapped where they were created until the root's `sync_bars`.
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
        if entry.version != PCI_STATE_VERSION {
            return Err(PersistError::Version {
                id,
                found: entry.version,
                want: PCI_STATE_VERSION,
            });
        }
        let s: PciState =
            serde_json::from_value(entry.state.clone()).map_err(|e| PersistError::Invalid {
                id: id.clone(),
                reason: e.to_string(),
            })?;
        let device_err = |reason| PersistError::Device {
            id: id.clone(),
            reason,
        };
        if s.queue_vectors.len() != self.common.queue_count() {
            return Err(device_err(format!(
                "{} queue vectors in the snapshot, the device has {} queues",
                s.queue_vectors.len(),
                self.common.queue_count()
            )));
        }
        self.config.restore_state(&s.config).map_err(device_err)?;
        self.interrupt
            .msix()
            .restore_state(&s.msix)
            .map_err(device_err)?;
        for (q, &v) in s.queue_vectors.iter().enumerate() {
            self.interrupt.set_queue_vector(q as u16, v);
        }
        self.interrupt.set_config_vector(s.config_vector);
        self.common
            .restore_state(&s.common, &self.dyn_interrupt)
            .map_err(device_err)?;
        self.interrupt
            .restore_flags(s.isr, s.config_generation, s.intx_disabled);
        Ok(())
    }
}
