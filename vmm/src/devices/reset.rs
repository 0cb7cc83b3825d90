//! The reset control register at port 0xcf9 (PIIX/ICH "RST_CNT").
//!
//! Bit 2 (reset CPU) ends the VM with [`Some(VmEvent::Reset)`]; Linux's `reboot=pci` writes 0x02
//! then 0x06, others write 0x0e. Bits 1 and 3 (hard/full reset) are stored and read back.
//! Port 0xcf9 lies inside the PCI configuration range 0xcf8-0xcff: a PCI host bridge
//! registered there must leave byte accesses to 0xcf9 to this device.

use super::PortDevice;
use crate::vm_events::{VmEvent, VmEvents};

/// The reset control port.
pub const RESET_PORT: u16 = 0xcf9;

const RESET_CPU: u8 = 0x04;
const STORED_BITS: u8 = 0x0a;

/// The reset control register.
#[derive(Default)]
pub struct ResetControl {
    value: u8,
    events: Option<VmEvents>,
}

impl ResetControl {
    /// Sends the reset requests to the VMM through `events`.
    pub fn with_vm_events(mut self, events: VmEvents) -> ResetControl {
        self.events = Some(events);
        self
    }
}

impl PortDevice for ResetControl {
    fn read(&mut self, _offset: u16, data: &mut [u8]) {
        data.fill(0);
        if let Some(b) = data.first_mut() {
            *b = self.value;
        }
    }

    fn write(&mut self, _offset: u16, data: &[u8]) -> Option<VmEvent> {
        let &v = data.first()?;
        self.value = v & STORED_BITS;
        if v & RESET_CPU != 0 {
            Some(VmEvent::Reset)
        } else {
            None
        }
    }

    fn vm_events(&self) -> Option<&VmEvents> {
        self.events.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_reset_cf9_write_06_resets() {
        let mut dev = ResetControl::default();

        let first = dev.write(0, &[0x02]);
        let second = dev.write(0, &[0x06]);

        assert_eq!(first, None);
        assert_eq!(second, Some(VmEvent::Reset));
    }

    #[test]
    fn test_reset_cf9_write_0e_resets() {
        let mut dev = ResetControl::default();

        assert_eq!(dev.write(0, &[0x0e]), Some(VmEvent::Reset));
    }

    #[test]
    fn test_reset_cf9_hard_bit_reads_back() {
        let mut dev = ResetControl::default();
        let mut b = [0u8];

        dev.write(0, &[0x02]);
        dev.read(0, &mut b);

        assert_eq!(b[0], 0x02);
    }
}
