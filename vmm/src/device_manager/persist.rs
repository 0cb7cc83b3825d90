//! The virtio devices in a snapshot: each quiesced and saved through its transport, and
//! restored into the devices a restore creates from the same configuration.

use super::{lock, Attached, DeviceManager};
use crate::snapshot::persist::{DeviceState, PersistError};

impl DeviceManager {
    /// Quiesces every virtio device and returns their entries. virtio-pci devices are not
    /// supported yet: the snapshot fails naming the first one.
    pub fn save_states(&self) -> Result<Vec<DeviceState>, PersistError> {
        let mut out = Vec::with_capacity(self.devices.len());
        for (id, attached) in &self.devices {
            match attached {
                Attached::Mmio(t) => out.push(lock(t).save_state(id)?),
                Attached::Pci(_) => {
                    return Err(PersistError::Unsupported {
                        id: id.clone(),
                        kind: "virtio-pci transport".into(),
                    })
                }
            }
        }
        Ok(out)
    }

    /// Restores every virtio device from `entries` (a device without an entry fails).
    pub fn restore_states(&self, entries: &[DeviceState]) -> Result<(), PersistError> {
        for (id, attached) in &self.devices {
            let entry = entries
                .iter()
                .find(|e| &e.id == id)
                .ok_or_else(|| PersistError::Missing(id.clone()))?;
            match attached {
                Attached::Mmio(t) => lock(t).restore_state(entry)?,
                Attached::Pci(_) => {
                    return Err(PersistError::Unsupported {
                        id: id.clone(),
                        kind: "virtio-pci transport".into(),
                    })
                }
            }
        }
        Ok(())
    }
}
