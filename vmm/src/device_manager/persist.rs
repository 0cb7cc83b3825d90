//! The virtio devices in a snapshot: each quiesced and saved through its transport, and
//! restored into the devices a restore creates from the same configuration; on PCI the BARs
//! the guest moved are moved again once every function has its state.

use super::{lock, Attached, DeviceManager};
use crate::snapshot::persist::{DeviceState, PersistError};

impl DeviceManager {
    /// Quiesces every virtio device and returns their entries. Devices whose backend the
    /// host drives (net, vsock) stay stopped until [`DeviceManager::resume_after_snapshot`].
    pub fn save_states(&self) -> Result<Vec<DeviceState>, PersistError> {
        let mut out = Vec::with_capacity(self.devices.len());
        for (id, attached) in &self.devices {
            match attached {
                Attached::Mmio(t) => out.push(lock(t).save_state(id)?),
                Attached::Pci(t) => out.push(lock(t).save_state(id)?),
            }
        }
        Ok(out)
    }

    /// Starts again what [`DeviceManager::save_states`] left stopped (the snapshot is
    /// written, or failed). A device that cannot start again is marked as needing a reset.
    pub fn resume_after_snapshot(&self) {
        for (_, attached) in &self.devices {
            match attached {
                Attached::Mmio(t) => lock(t).resume_after_snapshot(),
                Attached::Pci(t) => lock(t).resume_after_snapshot(),
            }
        }
    }

    /// Restores every virtio device from `entries` (a device without an entry fails), then
    /// maps the PCI BARs where the snapshot's guest had put them.
    pub fn restore_states(&self, entries: &[DeviceState]) -> Result<(), PersistError> {
        for (id, attached) in &self.devices {
            let entry = entries
                .iter()
                .find(|e| &e.id == id)
                .ok_or_else(|| PersistError::Missing(id.clone()))?;
            match attached {
                Attached::Mmio(t) => lock(t).restore_state(entry)?,
                Attached::Pci(t) => lock(t).restore_state(entry)?,
            }
        }
        if let Some(root) = &self.pci {
            lock(root)
                .sync_bars()
                .map_err(|reason| PersistError::Device {
                    id: "pci".into(),
                    reason,
                })?;
        }
        Ok(())
    }
}
