//! The legacy (0.9.5) interface of a transitional device, in I/O BAR 0.
//!
//! Layout: host features (le32, 0x00), guest features (le32, 0x04), queue page frame number
//! (le32, 0x08), queue size (le16, 0x0c, read-only: the device's size), queue select (le16,
//! 0x0e), queue notify (le16, 0x10), status (u8, 0x12), ISR (u8, 0x13, cleared by reading);
//! with MSI-X enabled the configuration and queue vectors (le16, 0x14 and 0x16) follow and the
//! device configuration starts at 0x18, else at 0x14. A driver that writes the guest features
//! or the status here runs the device through the legacy rules (32 feature bits, no
//! FEATURES_OK, the legacy queue layout).

use super::VirtioPciDevice;
use crate::virtio::transport::{le_value, read_le};

const HOST_FEATURES: u64 = 0x00;
const GUEST_FEATURES: u64 = 0x04;
const QUEUE_PFN: u64 = 0x08;
const QUEUE_SIZE: u64 = 0x0c;
const QUEUE_SELECT: u64 = 0x0e;
/// Queue notify (the legacy notify ioeventfds sit here).
pub const QUEUE_NOTIFY: u64 = 0x10;
const STATUS: u64 = 0x12;
const ISR: u64 = 0x13;
const CONFIG_VECTOR: u64 = 0x14;
const QUEUE_VECTOR: u64 = 0x16;

impl VirtioPciDevice {
    fn legacy_config_start(&self) -> u64 {
        if self.interrupt.msix().enabled() {
            0x18
        } else {
            0x14
        }
    }

    /// A driver read in the legacy BAR.
    pub(super) fn read_legacy(&mut self, offset: u64, data: &mut [u8]) {
        let config_start = self.legacy_config_start();
        if offset >= config_start {
            self.common.device.read_config(offset - config_start, data);
            return;
        }
        let c = &self.common;
        let queue = c.selected();
        let value: u64 = match offset {
            HOST_FEATURES => u64::from(c.all_features_word(0)),
            GUEST_FEATURES => u64::from(c.driver_features_word(0)),
            QUEUE_PFN => u64::from(queue.map_or(0, |q| q.legacy_pfn())),
            QUEUE_SIZE => u64::from(queue.map_or(0, |q| q.max_size)),
            QUEUE_SELECT => u64::from(c.queue_select),
            STATUS => u64::from(c.status()),
            ISR => u64::from(self.interrupt.take_isr()),
            CONFIG_VECTOR => u64::from(self.interrupt.config_vector()),
            QUEUE_VECTOR => u64::from(self.interrupt.queue_vector(c.queue_select)),
            _ => 0,
        };
        read_le(value, 0, data);
    }

    /// A driver write in the legacy BAR.
    pub(super) fn write_legacy(&mut self, offset: u64, data: &[u8]) {
        let config_start = self.legacy_config_start();
        if offset >= config_start {
            self.common.device.write_config(offset - config_start, data);
            return;
        }
        let v = le_value(data);
        match (offset, data.len()) {
            (GUEST_FEATURES, 4) => {
                self.common.legacy = true;
                self.common.set_driver_features_word(0, v as u32);
            }
            (QUEUE_PFN, 4) => {
                if let Some(q) = self.common.selected_mut() {
                    q.size = q.max_size;
                    q.set_legacy_pfn(v as u32);
                }
            }
            (QUEUE_SELECT, 2) => self.common.queue_select = v as u16,
            (QUEUE_NOTIFY, 2) => self.common.notify(v as u32),
            (STATUS, 1) => {
                self.common.legacy = true;
                self.write_status(v as u8);
            }
            (CONFIG_VECTOR, 2) => self.interrupt.set_config_vector(v as u16),
            (QUEUE_VECTOR, 2) => {
                let sel = self.common.queue_select;
                self.interrupt.set_queue_vector(sel, v as u16);
            }
            _ => {}
        }
    }
}
