//! The reset control register at port 0xcf9 (PIIX/ICH "RST_CNT").
//!
//! Bit 2 (reset CPU) ends the VM with [`PioAction::Reset`]; Linux's `reboot=pci` writes 0x02
//! then 0x06, others write 0x0e. Bits 1 and 3 (hard/full reset) are stored and read back.
//! Port 0xcf9 lies inside the PCI configuration range 0xcf8-0xcff: a PCI host bridge
//! registered there must leave byte accesses to 0xcf9 to this device.

use super::{PioAction, PioDevice};

/// The reset control port.
pub const RESET_PORT: u16 = 0xcf9;

const RESET_CPU: u8 = 0x04;
const STORED_BITS: u8 = 0x0a;

/// The reset control register.
#[derive(Debug, Default)]
pub struct ResetControl {
    value: u8,
}

impl PioDevice for ResetControl {
    fn read(&mut self, _offset: u16, data: &mut [u8]) {
        data.fill(0);
        if let Some(b) = data.first_mut() {
            *b = self.value;
        }
    }

    fn write(&mut self, _offset: u16, data: &[u8]) -> PioAction {
        let Some(&v) = data.first() else {
            return PioAction::None;
        };
        self.value = v & STORED_BITS;
        if v & RESET_CPU != 0 {
            PioAction::Reset
        } else {
            PioAction::None
        }
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

        assert_eq!(first, PioAction::None);
        assert_eq!(second, PioAction::Reset);
    }

    #[test]
    fn test_reset_cf9_write_0e_resets() {
        let mut dev = ResetControl::default();

        assert_eq!(dev.write(0, &[0x0e]), PioAction::Reset);
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
