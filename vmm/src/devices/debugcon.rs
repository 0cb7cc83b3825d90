//! The Bochs/QEMU debug console at port 0xe9: every byte written is console output (GRUB's
//! xen_pvh build, SeaBIOS and many hobby kernels print there). Reads return 0xe9, the value
//! guests test to detect the port. The output is either the serial port's (bytes interleave
//! in order) or a separate one.

use super::output::{lock_output, SharedOutput};
use super::PortDevice;
use crate::vm_events::VmEvent;

/// The debug console port.
pub const DEBUGCON_PORT: u16 = 0xe9;

/// The 0xe9 debug console.
pub struct DebugCon {
    output: SharedOutput,
}

impl DebugCon {
    /// A console writing to `output`.
    pub fn new(output: SharedOutput) -> DebugCon {
        DebugCon { output }
    }
}

impl PortDevice for DebugCon {
    fn read(&mut self, _offset: u16, data: &mut [u8]) {
        data.fill(0);
        if let Some(b) = data.first_mut() {
            *b = 0xe9;
        }
    }

    fn write(&mut self, _offset: u16, data: &[u8]) -> Option<VmEvent> {
        // Only the low byte of a wider write is a character.
        if let Some(&b) = data.first() {
            lock_output(&self.output).push(&[b]);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::output::{ConsoleOutput, VecWriter};

    #[test]
    fn test_debugcon_line_reaches_writer() {
        let sink = VecWriter::default();
        let mut dev = DebugCon::new(ConsoleOutput::shared(Some(Box::new(sink.clone()))));

        for &b in b"grub\n" {
            dev.write(0, &[b]);
        }

        assert_eq!(sink.contents(), b"grub\n");
    }

    #[test]
    fn test_debugcon_read_identifies_port() {
        let mut dev = DebugCon::new(ConsoleOutput::shared(None));
        let mut b = [0u8];

        dev.read(0, &mut b);

        assert_eq!(b[0], 0xe9);
    }
}
