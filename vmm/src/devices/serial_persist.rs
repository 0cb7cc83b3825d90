//! COM1's state in a snapshot: the UART's registers and receive FIFO (vm-superio's
//! `SerialState`) and the host input not yet in the FIFO.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use vm_superio::serial::{NoEvents, SerialState};
use vm_superio::Serial;

use super::{EventFdTrigger, SerialDevice};
use crate::devices::output::OutputWriter;
use crate::snapshot::persist::Persist;

/// The UART as a snapshot carries it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SerialSnapshot {
    /// Divisor latch, low byte.
    pub baud_divisor_low: u8,
    /// Divisor latch, high byte.
    pub baud_divisor_high: u8,
    /// IER.
    pub interrupt_enable: u8,
    /// IIR.
    pub interrupt_identification: u8,
    /// LCR.
    pub line_control: u8,
    /// LSR.
    pub line_status: u8,
    /// MCR.
    pub modem_control: u8,
    /// MSR.
    pub modem_status: u8,
    /// Scratch register.
    pub scratch: u8,
    /// The receive FIFO.
    pub fifo: Vec<u8>,
    /// Host input waiting for room in the FIFO.
    pub pending: Vec<u8>,
}

impl Persist for SerialDevice {
    const KIND: &'static str = "serial-16550";
    const VERSION: u32 = 1;
    type State = SerialSnapshot;

    fn save(&self) -> SerialSnapshot {
        let s = self.uart.state();
        SerialSnapshot {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            fifo: s.in_buffer,
            pending: self.pending.iter().copied().collect(),
        }
    }

    fn restore(&mut self, s: SerialSnapshot) -> Result<(), String> {
        if s.pending.len() > super::PENDING_INPUT_LIMIT {
            return Err(format!("{} bytes of pending input", s.pending.len()));
        }
        let state = SerialState {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.fifo,
        };
        let irq = self
            .uart
            .interrupt_evt()
            .0
            .try_clone()
            .map_err(|e| format!("unable to clone the interrupt eventfd: {e}"))?;
        let uart = Serial::from_state(
            &state,
            EventFdTrigger(irq),
            NoEvents,
            OutputWriter(Arc::clone(&self.output)),
        )
        .map_err(|e| format!("invalid UART state: {e:?}"))?;
        self.uart = uart;
        self.lcr = s.line_control;
        self.pending = s.pending.into_iter().collect();
        Ok(())
    }
}
