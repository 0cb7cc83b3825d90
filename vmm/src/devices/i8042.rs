//! A minimal i8042 keyboard controller at ports 0x60-0x64, modelled on Firecracker's.
//!
//! Enough for Linux's probe to finish without timeouts and for the classic reset paths:
//! - command 0xfe (pulse the reset line) on port 0x64, or an output-port write (command 0xd1)
//!   that clears bit 0, ends the VM with [`Some(VmEvent::Reset)`] (Linux `reboot=k`);
//! - the controller commands Linux sends (read/write the control byte, self tests) answer
//!   at once through the output buffer;
//! - there is deliberately no AUX (mouse) port: the loopback test (0xd3) answers without
//!   the AUX flag and the AUX interface test (0xa9) reports "clock line stuck", so Linux
//!   gives up on the mouse at once instead of waiting for timeouts;
//! - keyboard commands written to port 0x60 are acknowledged (0xfa; reset answers 0xaa,
//!   identify answers 0xab 0x83) so atkbd finds a keyboard. No key is ever sent.
//!
//! Port 0x61 (system control port B) reads with bit 4 (refresh) toggling on each read, for
//! delay loops that watch it; writes to it are ignored. An in-kernel PIT normally takes
//! that port before it reaches this device.
//!
//! The keyboard interrupt (IRQ 1) is an optional [`EventFd`], raised when a byte becomes
//! available and the control byte enables it; the VMM registers it as an irqfd for GSI 1.

use std::collections::VecDeque;

use vmm_sys_util::eventfd::EventFd;

use super::PortDevice;
use crate::vm_events::{VmEvent, VmEvents};

/// First i8042 port (data).
pub const I8042_BASE: u16 = 0x60;
/// Ports claimed: 0x60 data, 0x61 port B, 0x64 status/command.
pub const I8042_LEN: u16 = 5;
/// The keyboard's ISA interrupt line.
pub const I8042_KBD_IRQ: u32 = 1;

const OFS_DATA: u16 = 0;
const OFS_PORT_B: u16 = 1;
const OFS_STATUS: u16 = 4;

const SB_OUT_DATA_AVAIL: u8 = 0x01;
const SB_SYSTEM_FLAG: u8 = 0x04;
const SB_LAST_WAS_CMD: u8 = 0x08;
const SB_KBD_UNLOCKED: u8 = 0x10;

const CTR_KBD_INT: u8 = 0x01;
const CTR_SYSTEM_FLAG: u8 = 0x04;
const CTR_KBD_DISABLED: u8 = 0x10;
const CTR_AUX_DISABLED: u8 = 0x20;

const OUTPORT_RESET_LINE: u8 = 0x01;
const OUTPORT_A20: u8 = 0x02;

const KBD_ACK: u8 = 0xfa;
const OUT_QUEUE_LIMIT: usize = 16;

/// A controller command that waits for a data byte on port 0x60.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PendingWrite {
    ControlByte,
    OutputPort,
    KbdOutputBuffer,
    AuxOutputBuffer,
    AuxDevice,
    /// The parameter byte of keyboard command `.0`.
    KbdParameter(u8),
}

/// The i8042 controller.
pub struct I8042 {
    ctr: u8,
    outport: u8,
    last_was_cmd: bool,
    pending: Option<PendingWrite>,
    out: VecDeque<u8>,
    last_data: u8,
    port_b: u8,
    irq: Option<EventFd>,
    events: Option<VmEvents>,
}

impl I8042 {
    /// Sends the reset requests to the VMM through `events`.
    pub fn with_vm_events(mut self, events: VmEvents) -> I8042 {
        self.events = Some(events);
        self
    }

    /// A controller; `irq` is the keyboard interrupt (IRQ 1), if the VMM wires one.
    pub fn new(irq: Option<EventFd>) -> I8042 {
        I8042 {
            ctr: CTR_KBD_INT | CTR_SYSTEM_FLAG,
            outport: OUTPORT_RESET_LINE | OUTPORT_A20,
            last_was_cmd: false,
            pending: None,
            out: VecDeque::new(),
            last_data: 0,
            port_b: 0,
            irq,
            events: None,
        }
    }

    fn status(&self) -> u8 {
        let mut s = SB_KBD_UNLOCKED | SB_SYSTEM_FLAG;
        if !self.out.is_empty() {
            s |= SB_OUT_DATA_AVAIL;
        }
        if self.last_was_cmd {
            s |= SB_LAST_WAS_CMD;
        }
        s
    }

    /// Queues bytes for the guest, raising IRQ 1 if the buffer was empty.
    fn push(&mut self, bytes: &[u8]) {
        let was_empty = self.out.is_empty();
        for &b in bytes {
            if self.out.len() < OUT_QUEUE_LIMIT {
                self.out.push_back(b);
            }
        }
        if was_empty {
            self.raise_irq();
        }
    }

    fn raise_irq(&self) {
        if self.out.is_empty() || self.ctr & CTR_KBD_INT == 0 {
            return;
        }
        if let Some(irq) = &self.irq {
            // A full eventfd counter means an interrupt is already pending.
            let _ = irq.write(1);
        }
    }

    fn read_data(&mut self) -> u8 {
        if let Some(b) = self.out.pop_front() {
            self.last_data = b;
            self.raise_irq();
        }
        self.last_data
    }

    fn command(&mut self, cmd: u8) -> Option<VmEvent> {
        self.last_was_cmd = true;
        self.pending = None;
        // A new command discards unread answers, so a refused test leaves nothing stale.
        self.out.clear();
        match cmd {
            0x20 => self.push(&[self.ctr]),
            0x60 => self.pending = Some(PendingWrite::ControlByte),
            0xa7 => self.ctr |= CTR_AUX_DISABLED,
            0xa8 => self.ctr &= !CTR_AUX_DISABLED,
            0xa9 => self.push(&[0x01]),
            0xaa => self.push(&[0x55]),
            0xab => self.push(&[0x00]),
            0xad => self.ctr |= CTR_KBD_DISABLED,
            0xae => self.ctr &= !CTR_KBD_DISABLED,
            0xc0 => self.push(&[0x00]),
            0xd0 => self.push(&[self.outport]),
            0xd1 => self.pending = Some(PendingWrite::OutputPort),
            0xd2 => self.pending = Some(PendingWrite::KbdOutputBuffer),
            0xd3 => self.pending = Some(PendingWrite::AuxOutputBuffer),
            0xd4 => self.pending = Some(PendingWrite::AuxDevice),
            // 0xf0-0xff pulse output lines low for each clear bit 0-3; bit 0 is the reset line.
            c if c & 0xf0 == 0xf0 && c & OUTPORT_RESET_LINE == 0 => return Some(VmEvent::Reset),
            _ => {}
        }
        None
    }

    fn data(&mut self, value: u8) -> Option<VmEvent> {
        self.last_was_cmd = false;
        match self.pending.take() {
            Some(PendingWrite::ControlByte) => self.ctr = value,
            Some(PendingWrite::OutputPort) => {
                self.outport = value;
                if value & OUTPORT_RESET_LINE == 0 {
                    return Some(VmEvent::Reset);
                }
            }
            Some(PendingWrite::KbdOutputBuffer) => self.push(&[value]),
            // No AUX port: the loopback answer lacks the AUX flag (see the module comment).
            Some(PendingWrite::AuxOutputBuffer) => self.push(&[value]),
            Some(PendingWrite::AuxDevice) => {}
            // 0xf0 0x00 asks for the current scan code set: answer set 2.
            Some(PendingWrite::KbdParameter(0xf0)) if value == 0 => self.push(&[KBD_ACK, 0x02]),
            Some(PendingWrite::KbdParameter(_)) => self.push(&[KBD_ACK]),
            None => self.keyboard_command(value),
        }
        None
    }

    fn keyboard_command(&mut self, value: u8) {
        self.out.clear();
        match value {
            0xff => self.push(&[KBD_ACK, 0xaa]),
            0xf2 => self.push(&[KBD_ACK, 0xab, 0x83]),
            0xee => self.push(&[0xee]),
            0xed | 0xf0 | 0xf3 => {
                self.push(&[KBD_ACK]);
                self.pending = Some(PendingWrite::KbdParameter(value));
            }
            _ => self.push(&[KBD_ACK]),
        }
    }
}

impl PortDevice for I8042 {
    fn read(&mut self, offset: u16, data: &mut [u8]) {
        let value = match offset {
            OFS_DATA => self.read_data(),
            OFS_PORT_B => {
                self.port_b ^= 0x10;
                self.port_b
            }
            OFS_STATUS => self.status(),
            _ => 0xff,
        };
        data.fill(0);
        if let Some(b) = data.first_mut() {
            *b = value;
        }
    }

    fn write(&mut self, offset: u16, data: &[u8]) -> Option<VmEvent> {
        let &value = data.first()?;
        match offset {
            OFS_DATA => self.data(value),
            OFS_STATUS => self.command(value),
            _ => None,
        }
    }

    fn vm_events(&self) -> Option<&VmEvents> {
        self.events.as_ref()
    }
}

#[path = "i8042_persist.rs"]
pub mod persist;

#[cfg(test)]
mod tests {
    use super::*;

    fn read(dev: &mut I8042, offset: u16) -> u8 {
        let mut b = [0u8];
        dev.read(offset, &mut b);
        b[0]
    }

    #[test]
    fn test_i8042_reset_command_resets() {
        let mut dev = I8042::new(None);

        let action = dev.write(OFS_STATUS, &[0xfe]);

        assert_eq!(action, Some(VmEvent::Reset));
    }

    #[test]
    fn test_i8042_output_port_reset_bit_clear_resets() {
        let mut dev = I8042::new(None);

        dev.write(OFS_STATUS, &[0xd1]);
        let action = dev.write(OFS_DATA, &[0x02]);

        assert_eq!(action, Some(VmEvent::Reset));
    }

    #[test]
    fn test_i8042_other_command_does_not_reset() {
        let mut dev = I8042::new(None);

        let action = dev.write(OFS_STATUS, &[0xff]);

        assert_eq!(action, None);
    }

    #[test]
    fn test_i8042_idle_status_has_no_data() {
        let mut dev = I8042::new(None);

        let status = read(&mut dev, OFS_STATUS);

        assert_eq!(status & SB_OUT_DATA_AVAIL, 0);
    }

    #[test]
    fn test_i8042_control_byte_write_then_read_back() {
        let mut dev = I8042::new(None);

        dev.write(OFS_STATUS, &[0x60]);
        dev.write(OFS_DATA, &[0x65]);
        dev.write(OFS_STATUS, &[0x20]);

        assert_eq!(read(&mut dev, OFS_STATUS) & SB_OUT_DATA_AVAIL, 1);
        assert_eq!(read(&mut dev, OFS_DATA), 0x65);
        assert_eq!(read(&mut dev, OFS_STATUS) & SB_OUT_DATA_AVAIL, 0);
    }

    #[test]
    fn test_i8042_aux_test_reports_no_aux_port() {
        let mut dev = I8042::new(None);

        dev.write(OFS_STATUS, &[0xd3]);
        dev.write(OFS_DATA, &[0x5a]);
        let loop_status = read(&mut dev, OFS_STATUS);
        dev.write(OFS_STATUS, &[0xa9]);

        assert_eq!(
            loop_status & 0x20,
            0,
            "loopback answer must lack the AUX flag"
        );
        assert_eq!(read(&mut dev, OFS_DATA), 0x01);
        assert_eq!(read(&mut dev, OFS_STATUS) & SB_OUT_DATA_AVAIL, 0);
    }

    #[test]
    fn test_i8042_keyboard_identify_answers_and_raises_irq() {
        let irq = EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
        let mut dev = I8042::new(Some(irq.try_clone().expect("clone")));

        dev.write(OFS_DATA, &[0xf2]);

        assert_eq!(irq.read().expect("irq"), 1);
        let answer: Vec<u8> = (0..3).map(|_| read(&mut dev, OFS_DATA)).collect();
        assert_eq!(answer, [KBD_ACK, 0xab, 0x83]);
    }

    #[test]
    fn test_i8042_keyboard_irq_masked_by_control_byte() {
        let irq = EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
        let mut dev = I8042::new(Some(irq.try_clone().expect("clone")));
        dev.write(OFS_STATUS, &[0x60]);
        dev.write(OFS_DATA, &[0x00]);

        dev.write(OFS_DATA, &[0xff]);

        assert!(irq.read().is_err());
        assert_eq!(read(&mut dev, OFS_DATA), KBD_ACK);
    }

    #[test]
    fn test_i8042_get_scan_set_answers_set_2() {
        let mut dev = I8042::new(None);

        dev.write(OFS_DATA, &[0xf0]);
        let ack = read(&mut dev, OFS_DATA);
        dev.write(OFS_DATA, &[0x00]);

        assert_eq!(ack, KBD_ACK);
        assert_eq!(read(&mut dev, OFS_DATA), KBD_ACK);
        assert_eq!(read(&mut dev, OFS_DATA), 0x02);
    }

    #[test]
    fn test_i8042_set_leds_parameter_acknowledged() {
        let mut dev = I8042::new(None);

        dev.write(OFS_DATA, &[0xed]);
        read(&mut dev, OFS_DATA);
        dev.write(OFS_DATA, &[0x07]);

        assert_eq!(read(&mut dev, OFS_DATA), KBD_ACK);
        assert_eq!(read(&mut dev, OFS_STATUS) & SB_OUT_DATA_AVAIL, 0);
    }

    #[test]
    fn test_i8042_port_b_refresh_bit_toggles() {
        let mut dev = I8042::new(None);

        let a = read(&mut dev, OFS_PORT_B);
        let b = read(&mut dev, OFS_PORT_B);

        assert_ne!(a & 0x10, b & 0x10);
    }
}
