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
        DeviceState::encode(id, &kind(device_type), MMIO_STATE_VERSION, &state)
    }

    /// Starts the device's worker again after a snapshot (see `VirtioPersist`).
    pub fn resume_after_snapshot(&mut self) {
        self.common.resume_after_snapshot(&self.dyn_interrupt);
    }

    /// Takes `entry` into this freshly created transport (its device activated if it ran).
    pub fn restore_state(&mut self, entry: &DeviceState) -> Result<(), PersistError> {
        let id = entry.id.clone();
        let s: MmioState =
            entry.decode(&kind(self.common.device.device_type()), MMIO_STATE_VERSION)?;
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

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use vm_memory::GuestAddress;

    use super::*;
    use crate::devices::BusDevice;
    use crate::kvm::irq::mock::RecordingWiring;
    use crate::virtio::transport::mmio::regs;
    use crate::virtio::transport::test_util::{memory, Persisting, Seen, TestDevice};
    use crate::virtio::VirtioDevice;

    const BASE: u64 = 0xd000_0000;

    fn transport(persisting: bool) -> (MmioTransport, Arc<Mutex<Seen>>) {
        let (dev, seen) = TestDevice::new();
        let dev: Box<dyn VirtioDevice> = if persisting {
            Box::new(Persisting(dev))
        } else {
            Box::new(dev)
        };
        let wiring = RecordingWiring::default();
        let t = MmioTransport::new(dev, memory(), &wiring, GuestAddress(BASE), 5).unwrap();
        (t, seen)
    }

    fn wr(t: &mut MmioTransport, offset: u64, v: u32) {
        t.write(BASE, offset, &v.to_le_bytes());
    }

    fn rd(t: &mut MmioTransport, offset: u64) -> u32 {
        let mut b = [0u8; 4];
        t.read(BASE, offset, &mut b);
        u32::from_le_bytes(b)
    }

    fn bring_up(t: &mut MmioTransport) {
        wr(t, regs::STATUS, 3);
        wr(t, regs::DRIVER_FEATURES_SEL, 1);
        wr(t, regs::DRIVER_FEATURES, 1);
        wr(t, regs::STATUS, 0xb);
        wr(t, regs::QUEUE_SEL, 0);
        wr(t, regs::QUEUE_NUM, 8);
        wr(t, regs::QUEUE_DESC_LOW, 0x10000);
        wr(t, regs::QUEUE_DRIVER_LOW, 0x11000);
        wr(t, regs::QUEUE_DEVICE_LOW, 0x12000);
        wr(t, regs::QUEUE_READY, 1);
        wr(t, regs::STATUS, 0xf);
    }

    #[test]
    fn test_mmio_state_saved_and_restored_reactivates_at_positions() {
        let (mut src, _) = transport(true);
        bring_up(&mut src);
        src.interrupt.interrupt_status.store(1, Ordering::Release);
        let (mut dst, seen) = transport(true);

        let entry = src.save_state("blk0").unwrap();
        dst.restore_state(&entry).unwrap();

        assert_eq!(entry.kind, "virtio-mmio/4");
        let s: MmioState = serde_json::from_value(entry.state.clone()).unwrap();
        assert!(s.common.active);
        assert_eq!(s.common.positions[0].next_avail, 7);
        assert_eq!(rd(&mut dst, regs::STATUS), 0xf);
        assert_eq!(rd(&mut dst, regs::INTERRUPT_STATUS), 1);
        assert_eq!(seen.lock().unwrap().activations, vec![vec![(0, 8)]]);
    }

    #[test]
    fn test_mmio_device_without_persist_refused_naming_it() {
        let (mut t, _) = transport(false);

        let e = t.save_state("net0").unwrap_err().to_string();

        assert!(
            e.contains("net0") && e.contains("does not support snapshots"),
            "{e}"
        );
    }

    #[test]
    fn test_mmio_restore_other_device_type_refused() {
        let (mut src, _) = transport(true);
        let mut entry = src.save_state("d0").unwrap();
        entry.kind = "virtio-mmio/2".into();
        let (mut dst, _) = transport(true);

        let e = dst.restore_state(&entry).unwrap_err().to_string();

        assert!(e.contains("virtio-mmio/2"), "{e}");
    }
}
