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
        DeviceState::encode(id, &kind(device_type), PCI_STATE_VERSION, &state)
    }

    /// Starts the device's worker again after a snapshot (see `VirtioPersist`).
    pub fn resume_after_snapshot(&mut self) {
        self.common.resume_after_snapshot(&self.dyn_interrupt);
    }

    /// Takes `entry` into this freshly created function (its device activated if it ran). Its
    /// BARs stay mapped where they were created until the root's `sync_bars`.
    pub fn restore_state(&mut self, entry: &DeviceState) -> Result<(), PersistError> {
        let id = entry.id.clone();
        let s: PciState =
            entry.decode(&kind(self.common.device.device_type()), PCI_STATE_VERSION)?;
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
        // Before the device: an interrupt it raises as it comes back (vsock's transport reset
        // event) adds to the saved ISR instead of being overwritten by it.
        self.interrupt
            .restore_flags(s.isr, s.config_generation, s.intx_disabled);
        self.common
            .restore_state(&s.common, &self.dyn_interrupt)
            .map_err(device_err)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::kvm::irq::mock::RecordingWiring;
    use crate::kvm::irq::{MsiMessage, Route};
    use crate::pci::msix::MSIX_ENABLE;
    use crate::pci::PciDevice;
    use crate::virtio::transport::pci::common::field;
    use crate::virtio::transport::pci::{PciPlacement, MODERN_BAR};
    use crate::virtio::transport::test_util::{memory, Persisting, TestDevice};

    fn device(persisting: bool) -> (VirtioPciDevice, Arc<RecordingWiring>) {
        let (dev, _seen) = TestDevice::new();
        let dev: Box<dyn crate::virtio::VirtioDevice> = if persisting {
            Box::new(Persisting(dev))
        } else {
            Box::new(dev)
        };
        let wiring = Arc::new(RecordingWiring::default());
        let place = PciPlacement {
            modern_bar: 0xc000_0000,
            legacy_bar: Some(0xc000),
            msi_gsis: vec![24, 25, 26],
            intx_gsi: 10,
        };
        let d = VirtioPciDevice::new(dev, memory(), wiring.clone(), &place).unwrap();
        (d, wiring)
    }

    fn wr(d: &mut VirtioPciDevice, offset: u64, v: u64, len: usize) {
        d.write_bar(MODERN_BAR, offset, &v.to_le_bytes()[..len]);
    }

    fn rd(d: &mut VirtioPciDevice, offset: u64, len: usize) -> u64 {
        let mut b = [0u8; 8];
        d.read_bar(MODERN_BAR, offset, &mut b[..len]);
        u64::from_le_bytes(b)
    }

    /// MSI-X on with vector 1 programmed, the modern BAR moved, queue 0 running on vector 1.
    fn bring_up(d: &mut VirtioPciDevice) {
        d.write_config_register(d.msix_cap / 4, 2, &MSIX_ENABLE.to_le_bytes());
        wr(d, super::super::MSIX_TABLE_OFFSET + 16, 0xfee0_0000, 4);
        wr(d, super::super::MSIX_TABLE_OFFSET + 24, 0x4051, 4);
        wr(d, super::super::MSIX_TABLE_OFFSET + 28, 0, 4);
        let moved = d.write_config_register(8, 0, &0xd000_0000u32.to_le_bytes());
        assert!(moved.is_some());
        d.bar_moved(MODERN_BAR, 0xc000_0000, 0xd000_0000);
        wr(d, field::DEVICE_STATUS, 3, 1);
        wr(d, field::DRIVER_FEATURE_SELECT, 1, 4);
        wr(d, field::DRIVER_FEATURE, 1, 4);
        wr(d, field::DEVICE_STATUS, 0xb, 1);
        wr(d, field::QUEUE_SELECT, 0, 2);
        wr(d, field::QUEUE_SIZE, 8, 2);
        wr(d, field::QUEUE_MSIX_VECTOR, 1, 2);
        wr(d, field::QUEUE_DESC, 0x10000, 8);
        wr(d, field::QUEUE_DRIVER, 0x11000, 8);
        wr(d, field::QUEUE_DEVICE, 0x12000, 8);
        wr(d, field::QUEUE_ENABLE, 1, 2);
        wr(d, field::DEVICE_STATUS, 0xf, 1);
    }

    #[test]
    fn test_virtio_pci_state_restored_with_bar_msix_routes_vectors_and_running_queue() {
        let (mut src, _) = device(true);
        bring_up(&mut src);
        let (mut dst, wiring) = device(true);

        let entry = src.save_state("blk0").unwrap();
        dst.restore_state(&entry).unwrap();

        assert_eq!(entry.kind, "virtio-pci/4");
        for reg in 0..64 {
            assert_eq!(
                dst.read_config_register(reg),
                src.read_config_register(reg),
                "configuration register {reg}"
            );
        }
        assert_eq!(dst.bar_address(MODERN_BAR), Some(0xd000_0000));
        let routes = wiring.table.lock().unwrap();
        assert_eq!(
            routes.routes(25),
            &[Route::Msi(MsiMessage {
                address_lo: 0xfee0_0000,
                address_hi: 0,
                data: 0x4051
            })]
        );
        drop(routes);
        assert!(dst.interrupt.msix().enabled());
        assert_eq!(dst.interrupt.queue_vector(0), 1);
        assert_eq!(rd(&mut dst, field::DEVICE_STATUS, 1), 0xf);
        assert!(dst.common.is_active());
    }

    #[test]
    fn test_virtio_pci_state_refused_for_device_without_persist_or_other_kind() {
        let (mut plain, _) = device(false);
        let (mut src, _) = device(true);
        let mut entry = src.save_state("d0").unwrap();
        entry.kind = "virtio-pci/2".into();
        let (mut dst, _) = device(true);

        let unsupported = plain.save_state("net0").unwrap_err().to_string();
        let kind = dst.restore_state(&entry).unwrap_err().to_string();

        assert!(
            unsupported.contains("does not support snapshots"),
            "{unsupported}"
        );
        assert!(kind.contains("virtio-pci/2"), "{kind}");
    }
}
