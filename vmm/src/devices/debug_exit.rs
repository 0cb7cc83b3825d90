//! The debug-exit port (0xf4-0xf7), like QEMU's `isa-debug-exit,iobase=0xf4,iosize=4`.
//!
//! A write of any width ends the VM. Strata's exit status is the low byte of the value written
//! (`outb 0x2a, 0xf4` exits with 42). QEMU's differs: it exits with `(value << 1) | 1`, so a
//! test suite moved from QEMU must adapt its expected statuses. Reads return 0, as in QEMU.

use super::PortDevice;
use crate::vm_events::{VmEvent, VmEvents};

/// First debug-exit port.
pub const DEBUG_EXIT_BASE: u16 = 0xf4;
/// Ports claimed (a dword write at 0xf4 is one access).
pub const DEBUG_EXIT_LEN: u16 = 4;

/// The debug-exit device.
#[derive(Default)]
pub struct DebugExit {
    events: Option<VmEvents>,
}

impl DebugExit {
    /// Sends the exit requests to the VMM through `events`.
    pub fn with_vm_events(mut self, events: VmEvents) -> DebugExit {
        self.events = Some(events);
        self
    }

    /// The exit status for a little-endian value of 1, 2 or 4 bytes.
    pub fn status(data: &[u8]) -> u8 {
        data.first().copied().unwrap_or(0)
    }
}

impl PortDevice for DebugExit {
    fn read(&mut self, _offset: u16, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, _offset: u16, data: &[u8]) -> Option<VmEvent> {
        Some(VmEvent::DebugExit(DebugExit::status(data)))
    }

    fn vm_events(&self) -> Option<&VmEvents> {
        self.events.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_debug_exit_byte_write_exits_with_value() {
        let mut dev = DebugExit::default();

        let action = dev.write(0, &[42]);

        assert_eq!(action, Some(VmEvent::DebugExit(42)));
    }

    #[test]
    fn test_debug_exit_dword_write_exits_with_low_byte() {
        let mut dev = DebugExit::default();

        let action = dev.write(0, &0x1234_5601u32.to_le_bytes());

        assert_eq!(action, Some(VmEvent::DebugExit(1)));
    }

    #[test]
    fn test_debug_exit_word_write_at_offset_exits() {
        let mut dev = DebugExit::default();

        let action = dev.write(2, &0x0003u16.to_le_bytes());

        assert_eq!(action, Some(VmEvent::DebugExit(3)));
    }

    #[test]
    fn test_debug_exit_read_returns_zero() {
        let mut dev = DebugExit::default();
        let mut data = [0xaa; 4];

        dev.read(0, &mut data);

        assert_eq!(data, [0; 4]);
    }
}
