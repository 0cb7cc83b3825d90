//! The i8042's state in a snapshot: controller command byte, output port, the command that
//! waits for its data byte, and the output queue.

use serde::{Deserialize, Serialize};

use super::{PendingWrite, I8042, OUT_QUEUE_LIMIT};
use crate::snapshot::persist::Persist;

/// The i8042 as a snapshot carries it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct I8042Snapshot {
    /// Controller command byte.
    pub ctr: u8,
    /// Output port.
    pub outport: u8,
    /// The last write was to the command port.
    pub last_was_cmd: bool,
    /// The command waiting for a data byte: 0 none, 1 control byte, 2 output port, 3 keyboard
    /// output buffer, 4 aux output buffer, 5 aux device, 6 keyboard parameter.
    pub pending: u8,
    /// The keyboard command of a pending parameter.
    pub pending_command: u8,
    /// Bytes waiting to be read.
    pub out: Vec<u8>,
    /// The last byte read.
    pub last_data: u8,
    /// Port 0x61.
    pub port_b: u8,
}

fn encode(p: Option<PendingWrite>) -> (u8, u8) {
    match p {
        None => (0, 0),
        Some(PendingWrite::ControlByte) => (1, 0),
        Some(PendingWrite::OutputPort) => (2, 0),
        Some(PendingWrite::KbdOutputBuffer) => (3, 0),
        Some(PendingWrite::AuxOutputBuffer) => (4, 0),
        Some(PendingWrite::AuxDevice) => (5, 0),
        Some(PendingWrite::KbdParameter(c)) => (6, c),
    }
}

fn decode(tag: u8, command: u8) -> Result<Option<PendingWrite>, String> {
    Ok(match tag {
        0 => None,
        1 => Some(PendingWrite::ControlByte),
        2 => Some(PendingWrite::OutputPort),
        3 => Some(PendingWrite::KbdOutputBuffer),
        4 => Some(PendingWrite::AuxOutputBuffer),
        5 => Some(PendingWrite::AuxDevice),
        6 => Some(PendingWrite::KbdParameter(command)),
        t => return Err(format!("unknown pending command {t}")),
    })
}

impl Persist for I8042 {
    const KIND: &'static str = "i8042";
    const VERSION: u32 = 1;
    type State = I8042Snapshot;

    fn save(&self) -> I8042Snapshot {
        let (pending, pending_command) = encode(self.pending);
        I8042Snapshot {
            ctr: self.ctr,
            outport: self.outport,
            last_was_cmd: self.last_was_cmd,
            pending,
            pending_command,
            out: self.out.iter().copied().collect(),
            last_data: self.last_data,
            port_b: self.port_b,
        }
    }

    fn restore(&mut self, s: I8042Snapshot) -> Result<(), String> {
        if s.out.len() > OUT_QUEUE_LIMIT {
            return Err(format!("{} queued output bytes", s.out.len()));
        }
        self.pending = decode(s.pending, s.pending_command)?;
        self.ctr = s.ctr;
        self.outport = s.outport;
        self.last_was_cmd = s.last_was_cmd;
        self.out = s.out.into_iter().collect();
        self.last_data = s.last_data;
        self.port_b = s.port_b;
        Ok(())
    }
}
