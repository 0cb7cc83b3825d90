//! The 16550A UART on COM1 (ports 0x3f8-0x3ff, IRQ 4), built on vm-superio's `Serial`.
//!
//! Output goes to a [`SharedOutput`] (see `output.rs`: line-buffered and bounded). The
//! interrupt is an [`EventFd`] that the VMM registers as an irqfd for GSI 4. Input arrives from
//! the host through [`SerialHandle::enqueue_raw_bytes`]: the UART's 64-byte receive FIFO is
//! topped up from a bounded pending queue each time the guest reads a byte, so a paste longer
//! than the FIFO is not lost.
//!
//! Output flushing: besides newlines and a full buffer, the output is flushed when the guest
//! shows it has stopped writing for now: when it writes IER (Linux's console masks IER around
//! each message and its tty driver clears the THR interrupt when its queue is empty) and when
//! it reads LSR twice in a row without writing THR in between (firmware and boot loaders polling
//! for input).

use std::collections::VecDeque;
use std::io::{self, Read};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Instant;

use vm_superio::serial::NoEvents;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use super::output::{lock_output, OutputWriter, SharedOutput};
use super::PortDevice;
use crate::counters::Counters;
use crate::vm_events::VmEvent;

/// First port of COM1.
pub const COM1_BASE: u16 = 0x3f8;
/// Ports used by a 16550.
pub const COM1_LEN: u16 = 8;
/// COM1's ISA interrupt line (and GSI).
pub const COM1_IRQ: u32 = 4;

/// Host input held beyond the 64-byte UART FIFO before bytes are refused.
pub const PENDING_INPUT_LIMIT: usize = 4096;

/// Names of the device's counters: bytes the guest wrote, bytes of host input it was given.
pub const SERIAL_COUNTER_NAMES: &[&str] = &["tx_bytes", "rx_bytes"];
const TX_BYTES: usize = 0;
const RX_BYTES: usize = 1;

/// Size of vm-superio's receive FIFO.
const UART_FIFO_SIZE: usize = 64;

const DATA: u16 = 0;
const IER: u16 = 1;
const LCR: u16 = 3;
const MCR: u16 = 4;
const LSR: u16 = 5;
/// LCR bit 7: the data register is the divisor latch.
const LCR_DLAB: u8 = 0x80;

/// An interrupt line backed by an eventfd (registered by the VMM as an irqfd).
#[derive(Debug)]
pub struct EventFdTrigger(pub EventFd);

impl Trigger for EventFdTrigger {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// The COM1 device.
pub struct SerialDevice {
    uart: Serial<EventFdTrigger, NoEvents, OutputWriter>,
    output: SharedOutput,
    pending: VecDeque<u8>,
    lsr_polls: u8,
    lcr: u8,
    counters: Arc<Counters>,
}

impl SerialDevice {
    /// A UART that writes to `output` and raises its interrupt through `irq`.
    pub fn new(irq: EventFd, output: SharedOutput) -> SerialDevice {
        let uart = Serial::new(EventFdTrigger(irq), OutputWriter(Arc::clone(&output)));
        SerialDevice {
            uart,
            output,
            pending: VecDeque::new(),
            lsr_polls: 0,
            lcr: 0,
            counters: Counters::new(SERIAL_COUNTER_NAMES),
        }
    }

    /// Queues host input for the guest; returns how many bytes were accepted (fewer than
    /// `input.len()` only when [`PENDING_INPUT_LIMIT`] bytes are already waiting).
    pub fn enqueue_raw_bytes(&mut self, input: &[u8]) -> usize {
        let room = PENDING_INPUT_LIMIT.saturating_sub(self.pending.len());
        let n = input.len().min(room);
        self.pending.extend(&input[..n]);
        self.refill_fifo();
        n
    }

    /// Moves pending input into the UART FIFO (raising the receive interrupt if enabled).
    fn refill_fifo(&mut self) {
        let room = self.uart.fifo_capacity().min(self.pending.len());
        if room == 0 {
            return;
        }
        let chunk: Vec<u8> = self.pending.iter().take(room).copied().collect();
        let taken = match self.uart.enqueue_raw_bytes(&chunk) {
            // In loopback mode the UART takes nothing: keep the input for later.
            Ok(n) => n,
            // The bytes went in before the trigger failed (eventfd counter overflow): an
            // interrupt is lost, not data; the guest still sees the bytes through LSR.
            Err(vm_superio::serial::Error::Trigger(_)) => room,
            Err(_) => 0,
        };
        self.pending.drain(..taken);
        self.counters.add(RX_BYTES, taken as u64);
    }

    /// Hands buffered output to the host writer.
    pub fn flush_output(&mut self) {
        lock_output(&self.output).flush_now();
    }

    /// Bytes of host input not yet read by the guest (FIFO and pending queue).
    pub fn input_backlog(&self) -> usize {
        self.pending.len() + UART_FIFO_SIZE.saturating_sub(self.uart.fifo_capacity())
    }

    fn read_register(&mut self, reg: u16) -> u8 {
        let value = self.uart.read(reg as u8);
        match reg {
            DATA => {
                self.refill_fifo();
                self.lsr_polls = 0;
            }
            LSR => {
                self.lsr_polls = self.lsr_polls.saturating_add(1);
                if self.lsr_polls == 2 {
                    self.flush_output();
                }
            }
            _ => {}
        }
        value
    }

    fn write_register(&mut self, reg: u16, value: u8) {
        // The writer never fails and a lost interrupt cannot be reported to the guest.
        let _ = self.uart.write(reg as u8, value);
        match reg {
            DATA => {
                self.lsr_polls = 0;
                if self.lcr & LCR_DLAB == 0 {
                    self.counters.inc(TX_BYTES);
                }
            }
            LCR => self.lcr = value,
            IER => self.flush_output(),
            // Leaving loopback mode lets held input in.
            MCR => self.refill_fifo(),
            _ => {}
        }
    }
}

impl PortDevice for SerialDevice {
    fn read(&mut self, offset: u16, data: &mut [u8]) {
        for (i, byte) in data.iter_mut().enumerate() {
            let reg = offset.saturating_add(i as u16);
            *byte = if reg < COM1_LEN {
                self.read_register(reg)
            } else {
                0xff
            };
        }
    }

    fn write(&mut self, offset: u16, data: &[u8]) -> Option<VmEvent> {
        for (i, &value) in data.iter().enumerate() {
            let reg = offset.saturating_add(i as u16);
            if reg < COM1_LEN {
                self.write_register(reg, value);
            }
        }
        None
    }
}

/// The VMM's handle on COM1: input from the host, output flushing, first-output time.
#[derive(Clone)]
pub struct SerialHandle {
    device: Arc<Mutex<SerialDevice>>,
    first_byte: Arc<OnceLock<Instant>>,
}

impl SerialHandle {
    /// A handle on `device`.
    pub fn new(device: Arc<Mutex<SerialDevice>>) -> SerialHandle {
        let first_byte = {
            let dev = device.lock().unwrap_or_else(|e| e.into_inner());
            let cell = lock_output(&dev.output).first_byte_cell();
            cell
        };
        SerialHandle { device, first_byte }
    }

    fn lock(&self) -> MutexGuard<'_, SerialDevice> {
        self.device.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The device itself (snapshots save and restore its state).
    pub fn device(&self) -> &Arc<Mutex<SerialDevice>> {
        &self.device
    }

    /// Queues host input for the guest; returns how many bytes were accepted.
    pub fn enqueue_raw_bytes(&self, input: &[u8]) -> usize {
        self.lock().enqueue_raw_bytes(input)
    }

    /// Hands buffered guest output to the host writer (call on exit, or periodically).
    pub fn flush_output(&self) {
        self.lock().flush_output();
    }

    /// When the guest first wrote to the console output (serial or 0xe9 when shared).
    /// Reading it takes no device lock.
    pub fn first_output_at(&self) -> Option<Instant> {
        self.first_byte.get().copied()
    }

    /// Bytes of host input the device can take now (room in the pending queue).
    pub fn input_room(&self) -> usize {
        PENDING_INPUT_LIMIT.saturating_sub(self.lock().pending.len())
    }

    /// The device's counters (names in [`SERIAL_COUNTER_NAMES`]).
    pub fn counters(&self) -> Arc<Counters> {
        Arc::clone(&self.lock().counters)
    }

    /// Reads once from `input` (standard input, a pipe, a file), at most as many bytes as
    /// the device can take, and queues them for the guest. Never reads what it could not
    /// queue: with no room it reads nothing and says [`InputRead::Full`].
    pub fn forward_input<R: Read>(&self, input: &mut R) -> io::Result<InputRead> {
        let room = self.input_room();
        if room == 0 {
            return Ok(InputRead::Full);
        }
        let mut buf = [0u8; PENDING_INPUT_LIMIT];
        match input.read(&mut buf[..room]) {
            Ok(0) => Ok(InputRead::Eof),
            Ok(n) => Ok(InputRead::Forwarded(self.enqueue_raw_bytes(&buf[..n]))),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock
                ) =>
            {
                Ok(InputRead::Forwarded(0))
            }
            Err(e) => Err(e),
        }
    }
}

/// What [`SerialHandle::forward_input`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InputRead {
    /// This many bytes went to the guest (0: the read was interrupted or would block).
    Forwarded(usize),
    /// The guest has [`PENDING_INPUT_LIMIT`] bytes unread: nothing was read.
    Full,
    /// The input is at its end.
    Eof,
}

#[path = "serial_persist.rs"]
pub mod persist;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::output::{ConsoleOutput, VecWriter};

    const IIR: u16 = 2;
    const LSR_THRE_TEMT: u8 = 0x60;
    const LSR_DR: u8 = 0x01;

    fn serial() -> (SerialDevice, VecWriter, EventFd) {
        let sink = VecWriter::default();
        let irq = EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
        let out = ConsoleOutput::shared(Some(Box::new(sink.clone())));
        let dev = SerialDevice::new(irq.try_clone().expect("clone"), out);
        (dev, sink, irq)
    }

    fn read1(dev: &mut SerialDevice, reg: u16) -> u8 {
        let mut b = [0u8];
        dev.read(reg, &mut b);
        b[0]
    }

    #[test]
    fn test_serial_thr_write_line_reaches_writer() {
        let (mut dev, sink, _irq) = serial();

        for &b in b"hi\n" {
            dev.write(DATA, &[b]);
        }

        assert_eq!(sink.contents(), b"hi\n");
    }

    #[test]
    fn test_serial_ier_write_flushes_partial_line() {
        let (mut dev, sink, _irq) = serial();
        dev.write(DATA, b"$");
        assert!(sink.contents().is_empty());

        dev.write(IER, &[0]);

        assert_eq!(sink.contents(), b"$");
    }

    #[test]
    fn test_serial_repeated_lsr_poll_flushes_prompt() {
        let (mut dev, sink, _irq) = serial();
        dev.write(DATA, b">");

        read1(&mut dev, LSR);
        read1(&mut dev, LSR);

        assert_eq!(sink.contents(), b">");
    }

    #[test]
    fn test_serial_lsr_idle_reports_transmitter_empty() {
        let (mut dev, _sink, _irq) = serial();

        let lsr = read1(&mut dev, LSR);

        assert_eq!(lsr & LSR_THRE_TEMT, LSR_THRE_TEMT);
        assert_eq!(lsr & LSR_DR, 0);
    }

    #[test]
    fn test_serial_thr_empty_interrupt_raised_when_enabled() {
        let (mut dev, _sink, irq) = serial();

        dev.write(IER, &[0x02]);

        assert_eq!(irq.read().expect("interrupt"), 1);
        assert_eq!(read1(&mut dev, IIR) & 0x0f, 0x02);
    }

    #[test]
    fn test_serial_no_interrupt_when_disabled() {
        let (mut dev, _sink, irq) = serial();

        dev.write(DATA, b"x");

        assert!(irq.read().is_err());
    }

    #[test]
    fn test_serial_input_sets_data_ready_and_reads_back() {
        let (mut dev, _sink, irq) = serial();
        dev.write(IER, &[0x01]);

        let accepted = dev.enqueue_raw_bytes(b"ok");

        assert_eq!(accepted, 2);
        assert_eq!(irq.read().expect("interrupt"), 1);
        assert_eq!(read1(&mut dev, LSR) & LSR_DR, LSR_DR);
        assert_eq!(read1(&mut dev, DATA), b'o');
        assert_eq!(read1(&mut dev, DATA), b'k');
        assert_eq!(read1(&mut dev, LSR) & LSR_DR, 0);
    }

    #[test]
    fn test_serial_input_longer_than_fifo_is_kept() {
        let (mut dev, _sink, _irq) = serial();
        let input: Vec<u8> = (0..200u8).collect();

        let accepted = dev.enqueue_raw_bytes(&input);
        let got: Vec<u8> = (0..200).map(|_| read1(&mut dev, DATA)).collect();

        assert_eq!(accepted, 200);
        assert_eq!(got, input);
        assert_eq!(dev.input_backlog(), 0);
    }

    #[test]
    fn test_serial_input_kept_while_in_loopback_mode() {
        let (mut dev, _sink, _irq) = serial();
        dev.write(4, &[0x10]); // MCR: loopback

        dev.enqueue_raw_bytes(b"q");
        dev.write(4, &[0x08]); // MCR: back to normal (OUT2)

        assert_eq!(read1(&mut dev, DATA), b'q');
    }

    #[test]
    fn test_serial_input_beyond_limit_is_refused() {
        let (mut dev, _sink, _irq) = serial();

        let accepted = dev.enqueue_raw_bytes(&vec![b'a'; PENDING_INPUT_LIMIT + 100]);

        assert_eq!(accepted, PENDING_INPUT_LIMIT);
        assert_eq!(dev.enqueue_raw_bytes(b"b"), 1);
    }

    #[test]
    fn test_serial_divisor_latch_read_back() {
        let (mut dev, _sink, _irq) = serial();

        dev.write(LCR, &[0x80]);
        dev.write(DATA, &[0x01]);
        let dll = read1(&mut dev, DATA);

        assert_eq!(dll, 0x01);
    }

    #[test]
    fn test_serial_handle_forward_input_then_eof() {
        let (dev, _sink, _irq) = serial();
        let handle = SerialHandle::new(Arc::new(Mutex::new(dev)));
        let mut input = &b"abc"[..];

        let first = handle.forward_input(&mut input).expect("forward");
        let second = handle.forward_input(&mut input).expect("forward");

        assert_eq!((first, second), (InputRead::Forwarded(3), InputRead::Eof));
        assert_eq!(handle.lock().input_backlog(), 3);
        assert_eq!(handle.counters().get(RX_BYTES), 3);
    }

    /// Reads that fail once with `kind`, then yield `data`, then end of file.
    struct FlakyReader {
        kind: Option<io::ErrorKind>,
        data: &'static [u8],
    }

    impl Read for FlakyReader {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if let Some(kind) = self.kind.take() {
                return Err(kind.into());
            }
            let n = self.data.len().min(buf.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    #[test]
    fn test_serial_handle_forward_input_would_block_forwards_nothing() {
        let (dev, _sink, _irq) = serial();
        let handle = SerialHandle::new(Arc::new(Mutex::new(dev)));
        let mut input = FlakyReader {
            kind: Some(io::ErrorKind::WouldBlock),
            data: b"xy",
        };

        let first = handle.forward_input(&mut input).expect("forward");
        let second = handle.forward_input(&mut input).expect("forward");

        assert_eq!(
            (first, second),
            (InputRead::Forwarded(0), InputRead::Forwarded(2))
        );
    }

    #[test]
    fn test_serial_handle_forward_input_reports_read_error() {
        let (dev, _sink, _irq) = serial();
        let handle = SerialHandle::new(Arc::new(Mutex::new(dev)));
        let mut input = FlakyReader {
            kind: Some(io::ErrorKind::BrokenPipe),
            data: b"",
        };

        let result = handle.forward_input(&mut input);

        assert!(result.is_err());
    }

    #[test]
    fn test_serial_handle_forward_input_full_reads_nothing() {
        let (dev, _sink, _irq) = serial();
        let handle = SerialHandle::new(Arc::new(Mutex::new(dev)));
        // The first UART_FIFO_SIZE bytes go on into the FIFO, the rest fill the queue.
        handle.enqueue_raw_bytes(&[b'a'; PENDING_INPUT_LIMIT]);
        handle.enqueue_raw_bytes(&[b'a'; UART_FIFO_SIZE]);
        assert_eq!(handle.input_room(), 0);
        let mut input = &b"z"[..];

        let result = handle.forward_input(&mut input).expect("forward");

        assert_eq!(result, InputRead::Full);
        assert_eq!(input, b"z");
    }

    #[test]
    fn test_serial_thr_writes_counted() {
        let (mut dev, _sink, _irq) = serial();

        dev.write(DATA, b"h");
        dev.write(LCR, &[LCR_DLAB]);
        dev.write(DATA, &[0x01]);
        dev.write(LCR, &[0x03]);
        dev.write(DATA, b"i");

        assert_eq!(dev.counters.get(TX_BYTES), 2);
    }

    #[test]
    fn test_serial_handle_first_output_recorded() {
        let (dev, _sink, _irq) = serial();
        let handle = SerialHandle::new(Arc::new(Mutex::new(dev)));
        assert!(handle.first_output_at().is_none());

        handle.lock().write(DATA, b"x");

        assert!(handle.first_output_at().is_some());
    }
}
