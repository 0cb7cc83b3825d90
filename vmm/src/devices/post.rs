//! The POST-code port 0x80: firmware writes progress codes there and Linux uses it as an I/O
//! delay. Writes are recorded (last code and count); reads return 0xff, as in QEMU.

use super::PortDevice;
use crate::vm_events::VmEvent;

/// The POST-code port.
pub const POST_PORT: u16 = 0x80;

/// The POST-code sink.
#[derive(Debug, Default)]
pub struct PostCode {
    last: Option<u8>,
    writes: u64,
}

impl PostCode {
    /// The last code written, if any.
    pub fn last(&self) -> Option<u8> {
        self.last
    }

    /// How many writes the port saw.
    pub fn writes(&self) -> u64 {
        self.writes
    }
}

impl PortDevice for PostCode {
    fn read(&mut self, _offset: u16, data: &mut [u8]) {
        data.fill(0xff);
    }

    fn write(&mut self, _offset: u16, data: &[u8]) -> Option<VmEvent> {
        if let Some(&code) = data.first() {
            self.last = Some(code);
            self.writes = self.writes.saturating_add(1);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_post_code_write_recorded() {
        let mut dev = PostCode::default();

        dev.write(0, &[0x12]);
        dev.write(0, &[0x34]);

        assert_eq!(dev.last(), Some(0x34));
        assert_eq!(dev.writes(), 2);
    }

    #[test]
    fn test_post_code_read_all_ones() {
        let mut dev = PostCode::default();
        let mut b = [0u8];

        dev.read(0, &mut b);

        assert_eq!(b[0], 0xff);
    }
}
