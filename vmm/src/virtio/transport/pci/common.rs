//! The modern common configuration structure (virtio 1.2, 4.1.4.3) at the start of BAR 4.

use super::VirtioPciDevice;
use crate::virtio::transport::{le_value, NO_VECTOR};

/// Field offsets.
pub mod field {
    /// le32 device_feature_select.
    pub const DEVICE_FEATURE_SELECT: u64 = 0x00;
    /// le32 device_feature (read-only).
    pub const DEVICE_FEATURE: u64 = 0x04;
    /// le32 driver_feature_select.
    pub const DRIVER_FEATURE_SELECT: u64 = 0x08;
    /// le32 driver_feature.
    pub const DRIVER_FEATURE: u64 = 0x0c;
    /// le16 config_msix_vector.
    pub const CONFIG_MSIX_VECTOR: u64 = 0x10;
    /// le16 num_queues (read-only).
    pub const NUM_QUEUES: u64 = 0x12;
    /// u8 device_status.
    pub const DEVICE_STATUS: u64 = 0x14;
    /// u8 config_generation (read-only).
    pub const CONFIG_GENERATION: u64 = 0x15;
    /// le16 queue_select.
    pub const QUEUE_SELECT: u64 = 0x16;
    /// le16 queue_size.
    pub const QUEUE_SIZE: u64 = 0x18;
    /// le16 queue_msix_vector.
    pub const QUEUE_MSIX_VECTOR: u64 = 0x1a;
    /// le16 queue_enable.
    pub const QUEUE_ENABLE: u64 = 0x1c;
    /// le16 queue_notify_off (read-only).
    pub const QUEUE_NOTIFY_OFF: u64 = 0x1e;
    /// le64 queue_desc.
    pub const QUEUE_DESC: u64 = 0x20;
    /// le64 queue_driver.
    pub const QUEUE_DRIVER: u64 = 0x28;
    /// le64 queue_device.
    pub const QUEUE_DEVICE: u64 = 0x30;
    /// Size of the structure.
    pub const SIZE: u64 = 0x38;
}

impl VirtioPciDevice {
    /// The structure as the driver would read it now.
    fn common_snapshot(&self) -> [u8; field::SIZE as usize] {
        let c = &self.common;
        let mut b = [0u8; field::SIZE as usize];
        let mut put = |at: u64, bytes: &[u8]| {
            b[at as usize..at as usize + bytes.len()].copy_from_slice(bytes);
        };
        put(
            field::DEVICE_FEATURE_SELECT,
            &c.device_features_select.to_le_bytes(),
        );
        put(
            field::DEVICE_FEATURE,
            &c.all_features_word(c.device_features_select).to_le_bytes(),
        );
        put(
            field::DRIVER_FEATURE_SELECT,
            &c.driver_features_select.to_le_bytes(),
        );
        put(
            field::DRIVER_FEATURE,
            &c.driver_features_word(c.driver_features_select)
                .to_le_bytes(),
        );
        put(
            field::CONFIG_MSIX_VECTOR,
            &self.interrupt.config_vector().to_le_bytes(),
        );
        put(field::NUM_QUEUES, &(c.queue_count() as u16).to_le_bytes());
        put(field::DEVICE_STATUS, &[c.status()]);
        put(
            field::CONFIG_GENERATION,
            &[self.interrupt.config_generation()],
        );
        put(field::QUEUE_SELECT, &c.queue_select.to_le_bytes());
        if let Some(q) = c.selected() {
            let sel = c.queue_select;
            put(field::QUEUE_SIZE, &q.size.to_le_bytes());
            put(
                field::QUEUE_MSIX_VECTOR,
                &self.interrupt.queue_vector(sel).to_le_bytes(),
            );
            put(field::QUEUE_ENABLE, &u16::from(q.ready).to_le_bytes());
            put(field::QUEUE_NOTIFY_OFF, &sel.to_le_bytes());
            put(field::QUEUE_DESC, &q.desc.to_le_bytes());
            put(field::QUEUE_DRIVER, &q.avail.to_le_bytes());
            put(field::QUEUE_DEVICE, &q.used.to_le_bytes());
        } else {
            put(field::QUEUE_MSIX_VECTOR, &NO_VECTOR.to_le_bytes());
        }
        b
    }

    /// A driver read of the common configuration (any width; bytes past it read as zero).
    pub(super) fn read_common(&self, offset: u64, data: &mut [u8]) {
        let snapshot = self.common_snapshot();
        for (i, b) in data.iter_mut().enumerate() {
            *b = snapshot.get(offset as usize + i).copied().unwrap_or(0);
        }
    }

    /// A driver write of one field of the common configuration; writes of another width or
    /// to read-only fields are ignored.
    pub(super) fn write_common(&mut self, offset: u64, data: &[u8]) {
        let v = le_value(data);
        let (v32, v16) = (v as u32, v as u16);
        self.common.legacy = false;
        match (offset, data.len()) {
            (field::DEVICE_FEATURE_SELECT, 4) => self.common.device_features_select = v32,
            (field::DRIVER_FEATURE_SELECT, 4) => self.common.driver_features_select = v32,
            (field::DRIVER_FEATURE, 4) => {
                let sel = self.common.driver_features_select;
                self.common.set_driver_features_word(sel, v32);
            }
            (field::CONFIG_MSIX_VECTOR, 2) => self.interrupt.set_config_vector(v16),
            (field::DEVICE_STATUS, 1) => self.write_status(v as u8),
            (field::QUEUE_SELECT, 2) => self.common.queue_select = v16,
            (field::QUEUE_SIZE, 2) => {
                if let Some(q) = self.common.selected_mut() {
                    q.size = v16;
                }
            }
            (field::QUEUE_MSIX_VECTOR, 2) => {
                let sel = self.common.queue_select;
                if usize::from(sel) < self.common.queue_count() {
                    self.interrupt.set_queue_vector(sel, v16);
                }
            }
            (field::QUEUE_ENABLE, 2) => {
                if let Some(q) = self.common.selected_mut() {
                    // 0 is not a way to disable a queue (only a reset does that).
                    q.ready |= v16 == 1;
                }
            }
            (field::QUEUE_DESC..=0x37, 4 | 8) => self.write_queue_address(offset, v, data.len()),
            _ => {}
        }
    }

    fn write_queue_address(&mut self, offset: u64, v: u64, len: usize) {
        let Some(q) = self.common.selected_mut() else {
            return;
        };
        let slot = match offset & !7 {
            field::QUEUE_DESC => &mut q.desc,
            field::QUEUE_DRIVER => &mut q.avail,
            _ => &mut q.used,
        };
        *slot = match (offset % 8, len) {
            (0, 8) => v,
            (0, 4) => (*slot & !0xffff_ffff) | (v & 0xffff_ffff),
            (4, 4) => (*slot & 0xffff_ffff) | (v << 32),
            _ => *slot,
        };
    }
}
