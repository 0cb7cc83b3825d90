//! The debug-exit port (0xf4-0xf7), like QEMU's `isa-debug-exit,iobase=0xf4,iosize=4`.
//!
//! A write of any width ends the VM. Strata's exit status is the low byte of the value written
//! (`outb 0x2a, 0xf4` exits with 42). QEMU's differs: it exits with `(value << 1) | 1`, so a
//! test suite moved from QEMU must adapt its expected statuses. Reads return 0, as in QEMU.

use super::{PioAction, PioDevice};

/// First debug-exit port.
pub const DEBUG_EXIT_BASE: u16 = 0xf4;
/// Ports claimed (a dword write at 0xf4 is one access).
pub const DEBUG_EXIT_LEN: u16 = 4;

/// The debug-exit device.
#[derive(Debug, Default)]
pub struct DebugExit;

impl DebugExit {
    /// The exit status for a little-endian value of 1, 2 or 4 bytes.
    pub fn status(data: &[u8]) -> u8 {
        data.first().copied().unwrap_or(0)
    }
}

impl PioDevice for DebugExit {
    fn read(&mut self, _offset: u16, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, _offset: u16, data: &[u8]) -> PioAction {
        PioAction::Exit(DebugExit::status(data))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_debug_exit_byte_write_exits_with_value() {
        let mut dev = DebugExit;

        let action = dev.write(0, &[42]);

        assert_eq!(action, PioAction::Exit(42));
    }

    #[test]
    fn test_debug_exit_dword_write_exits_with_low_byte() {
        let mut dev = DebugExit;

        let action = dev.write(0, &0x1234_5601u32.to_le_bytes());

        assert_eq!(action, PioAction::Exit(1));
    }

    #[test]
    fn test_debug_exit_word_write_at_offset_exits() {
        let mut dev = DebugExit;

        let action = dev.write(2, &0x0003u16.to_le_bytes());

        assert_eq!(action, PioAction::Exit(3));
    }

    #[test]
    fn test_debug_exit_read_returns_zero() {
        let mut dev = DebugExit;
        let mut data = [0xaa; 4];

        dev.read(0, &mut data);

        assert_eq!(data, [0; 4]);
    }
}
