//! Devices: the bus both address spaces use (`bus.rs`), and the legacy devices on the port-I/O
//! bus: 16550 serial, i8042, CMOS RTC, debug exit; and the VGA text console, which is plain
//! guest memory rendered by the VMM.
//!
//! A legacy device implements [`PortDevice`] (offsets are port numbers from its base); every
//! `PortDevice` is a [`BusDevice`]. A device whose write asks to end or reset the machine
//! returns a [`VmEvent`], which goes to the VMM through the device's [`VmEvents`] sender; the
//! vCPU loop never sees it.

#![forbid(unsafe_code)]

pub mod bus;
pub mod debug_exit;
pub mod debugcon;
pub mod fw_cfg;
pub mod i8042;
pub mod output;
pub mod post;
pub mod reset;
pub mod rtc;
pub mod serial;
pub mod vga;

use std::io::Write;
use std::sync::{Arc, Mutex};

use vmm_sys_util::eventfd::EventFd;

pub use self::bus::{Bus, BusDevice, BusError, SharedBusDevice};
use self::output::{lock_output, ConsoleOutput, SharedOutput};
use self::serial::{SerialDevice, SerialHandle};
use self::vga::{VgaPorts, VgaText};
use crate::vm_events::{VmEvent, VmEvents};

/// A legacy device on a few I/O ports.
pub trait PortDevice: Send {
    /// A guest read of `data.len()` bytes at `offset` from the device's base port.
    fn read(&mut self, offset: u16, data: &mut [u8]);
    /// A guest write at `offset` from the device's base port; returns what the guest asked
    /// of the machine, if anything.
    fn write(&mut self, offset: u16, data: &[u8]) -> Option<VmEvent>;
    /// Where the device's [`VmEvent`]s go (devices that never send one keep the default).
    fn vm_events(&self) -> Option<&VmEvents> {
        None
    }
}

impl<T: PortDevice> BusDevice for T {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        match u16::try_from(offset) {
            Ok(offset) => PortDevice::read(self, offset, data),
            Err(_) => data.fill(0xff),
        }
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        let Ok(offset) = u16::try_from(offset) else {
            return;
        };
        if let Some(event) = PortDevice::write(self, offset, data) {
            if let Some(events) = self.vm_events() {
                events.send(event);
            }
        }
    }
}

/// Errors creating the legacy devices or using the VGA console.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// Unable to create an interrupt eventfd.
    #[error("unable to create the {0} interrupt eventfd: {1}")]
    CreateEventFd(&'static str, #[source] std::io::Error),
    /// Unable to register a device on the port-I/O bus.
    #[error("unable to register the {0} on the port-I/O bus")]
    Register(&'static str, #[source] BusError),
    /// Unable to read the VGA text buffer from guest memory.
    #[error("unable to read the VGA text buffer at 0xb8000 from guest memory: {0}")]
    ReadVgaMemory(String),
    /// Unable to write the rendered VGA text.
    #[error("unable to write the VGA text console: {0}")]
    WriteVgaText(#[source] std::io::Error),
}

/// Where the 0xe9 debug console writes.
pub enum DebugconTarget {
    /// Into the serial console's output, interleaved in order.
    Serial,
    /// Into its own writer.
    Writer(Box<dyn Write + Send>),
    /// Nowhere (the port still exists and reads 0xe9).
    Discard,
}

/// What [`register_legacy_devices`] needs.
pub struct LegacyConfig {
    /// Where the serial console's output goes (`None` discards it).
    pub serial_out: Option<Box<dyn Write + Send>>,
    /// Where the 0xe9 debug console's output goes.
    pub debugcon: DebugconTarget,
    /// Guest RAM below the 32-bit PCI hole, in bytes (for the CMOS memory registers).
    pub ram_below_4g: u64,
    /// Guest RAM above 4 GiB, in bytes.
    pub ram_above_4g: u64,
    /// Claim the VGA ports 0x3c0-0x3df.
    pub vga_ports: bool,
    /// Claim the reset control port 0xcf9 (leave it off if a PCI host bridge owns 0xcf8-0xcff).
    pub reset_port: bool,
}

/// Handles on the legacy devices that the VMM needs after registration.
pub struct LegacyDevices {
    /// COM1: host input, output flushing, first-output time.
    pub serial: SerialHandle,
    /// COM1's interrupt: register it as an irqfd for GSI [`serial::COM1_IRQ`].
    pub serial_irq: EventFd,
    /// The keyboard interrupt: register it as an irqfd for GSI [`i8042::I8042_KBD_IRQ`].
    pub i8042_irq: EventFd,
    /// The VGA text-console dumper.
    pub vga: VgaText,
    /// The POST-code port (last code written).
    pub post: Arc<Mutex<post::PostCode>>,
    /// The CMOS RTC, for extra NVRAM bytes ([`rtc::Rtc::set_nvram`]).
    pub rtc: Arc<Mutex<rtc::Rtc>>,
    debugcon_output: SharedOutput,
    /// The i8042 (its state goes into snapshots).
    pub i8042: Arc<Mutex<i8042::I8042>>,
}

impl LegacyDevices {
    /// Puts a second debug console at `port` writing where the 0xe9 one writes (SeaBIOS's
    /// QEMU builds print their log at 0x402).
    pub(crate) fn register_debugcon_at(&self, bus: &Bus, port: u16) -> Result<(), DeviceError> {
        let con = debugcon::DebugCon::new(Arc::clone(&self.debugcon_output));
        insert(
            bus,
            "firmware debug console",
            Arc::new(Mutex::new(con)),
            port,
            1,
        )
    }

    /// Hands every buffered console byte (serial and 0xe9) to its writer; call on VM exit.
    pub fn flush_output(&self) {
        self.serial.flush_output();
        lock_output(&self.debugcon_output).flush_now();
    }
}

fn interrupt_eventfd(name: &'static str) -> Result<(EventFd, EventFd), DeviceError> {
    let fd = EventFd::new(libc::EFD_NONBLOCK).map_err(|e| DeviceError::CreateEventFd(name, e))?;
    let clone = fd
        .try_clone()
        .map_err(|e| DeviceError::CreateEventFd(name, e))?;
    Ok((fd, clone))
}

fn insert(
    bus: &Bus,
    name: &'static str,
    dev: SharedBusDevice,
    base: u16,
    len: u16,
) -> Result<(), DeviceError> {
    bus.insert(dev, u64::from(base), u64::from(len))
        .map_err(|e| DeviceError::Register(name, e))
}

/// Creates the legacy devices and registers them on `bus`: COM1 (0x3f8), i8042 (0x60-0x64),
/// CMOS RTC (0x70-0x71), debug exit (0xf4-0xf7), POST code (0x80), debug console (0xe9), and
/// optionally the VGA ports (0x3c0-0x3df) and the reset control port (0xcf9). Reset and exit
/// requests go to the VMM through `events`.
pub fn register_legacy_devices(
    bus: &Bus,
    cfg: LegacyConfig,
    events: &VmEvents,
) -> Result<LegacyDevices, DeviceError> {
    let serial_output = ConsoleOutput::shared(cfg.serial_out);
    let debugcon_output = match cfg.debugcon {
        DebugconTarget::Serial => Arc::clone(&serial_output),
        DebugconTarget::Writer(w) => ConsoleOutput::shared(Some(w)),
        DebugconTarget::Discard => ConsoleOutput::shared(None),
    };

    let (serial_irq, serial_irq_dev) = interrupt_eventfd("serial")?;
    let serial_dev = Arc::new(Mutex::new(SerialDevice::new(serial_irq_dev, serial_output)));
    insert(
        bus,
        "serial port",
        serial_dev.clone(),
        serial::COM1_BASE,
        serial::COM1_LEN,
    )?;

    let (i8042_irq, i8042_irq_dev) = interrupt_eventfd("i8042")?;
    let i8042_dev = i8042::I8042::new(Some(i8042_irq_dev)).with_vm_events(events.clone());
    let i8042_dev = Arc::new(Mutex::new(i8042_dev));
    insert(
        bus,
        "i8042",
        i8042_dev.clone(),
        i8042::I8042_BASE,
        i8042::I8042_LEN,
    )?;

    let rtc_dev = Arc::new(Mutex::new(rtc::Rtc::new(
        cfg.ram_below_4g,
        cfg.ram_above_4g,
    )));
    insert(
        bus,
        "CMOS RTC",
        rtc_dev.clone(),
        rtc::RTC_BASE,
        rtc::RTC_LEN,
    )?;

    let exit_dev = debug_exit::DebugExit::default().with_vm_events(events.clone());
    let exit_dev = Arc::new(Mutex::new(exit_dev));
    let (exit_base, exit_len) = (debug_exit::DEBUG_EXIT_BASE, debug_exit::DEBUG_EXIT_LEN);
    insert(bus, "debug-exit port", exit_dev, exit_base, exit_len)?;

    let post = Arc::new(Mutex::new(post::PostCode::default()));
    insert(bus, "POST-code port", post.clone(), post::POST_PORT, 1)?;

    let con = debugcon::DebugCon::new(Arc::clone(&debugcon_output));
    insert(
        bus,
        "debug console",
        Arc::new(Mutex::new(con)),
        debugcon::DEBUGCON_PORT,
        1,
    )?;

    let vga_ports = Arc::new(Mutex::new(VgaPorts::default()));
    if cfg.vga_ports {
        let (base, len) = (vga::VGA_PORTS_BASE, vga::VGA_PORTS_LEN);
        insert(bus, "VGA ports", vga_ports.clone(), base, len)?;
    }
    if cfg.reset_port {
        let dev = reset::ResetControl::default().with_vm_events(events.clone());
        let dev = Arc::new(Mutex::new(dev));
        insert(bus, "reset control port", dev, reset::RESET_PORT, 1)?;
    }

    Ok(LegacyDevices {
        serial: SerialHandle::new(serial_dev),
        serial_irq,
        i8042_irq,
        vga: VgaText::new(vga_ports),
        post,
        rtc: rtc_dev,
        debugcon_output,
        i8042: i8042_dev,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm_events::{vm_events, VmEventQueue};

    fn legacy(
        debugcon: DebugconTarget,
        reset_port: bool,
    ) -> (Bus, LegacyDevices, output::VecWriter, VmEventQueue) {
        let sink = output::VecWriter::default();
        let cfg = LegacyConfig {
            serial_out: Some(Box::new(sink.clone())),
            debugcon,
            ram_below_4g: 256 << 20,
            ram_above_4g: 0,
            vga_ports: true,
            reset_port,
        };
        let bus = Bus::new();
        let (events, queue) = vm_events().expect("vm events");
        let devs = register_legacy_devices(&bus, cfg, &events).expect("register");
        (bus, devs, sink, queue)
    }

    #[test]
    fn test_legacy_devices_serial_and_debugcon_share_output_in_order() {
        let (bus, devs, sink, _q) = legacy(DebugconTarget::Serial, true);

        bus.write(0x3f8, b"a");
        bus.write(0xe9, b"b");
        bus.write(0x3f8, b"\n");

        assert_eq!(sink.contents(), b"ab\n");
        assert!(devs.serial.first_output_at().is_some());
    }

    #[test]
    fn test_legacy_devices_exit_and_reset_ports_send_vm_events() {
        let (bus, _devs, _sink, queue) = legacy(DebugconTarget::Discard, true);

        bus.write(0xf4, &[5]);
        bus.write(0x64, &[0xfe]);
        bus.write(0xcf9, &[0x06]);
        bus.write(0x3f8, b"x");

        assert_eq!(
            queue.drain(),
            vec![VmEvent::DebugExit(5), VmEvent::Reset, VmEvent::Reset]
        );
    }

    #[test]
    fn test_legacy_devices_reset_port_optional() {
        let (bus, _devs, _sink, _q) = legacy(DebugconTarget::Discard, false);

        let pci = bus.insert(Arc::new(Mutex::new(post::PostCode::default())), 0xcf8, 8);

        assert!(pci.is_ok());
    }

    #[test]
    fn test_legacy_devices_serial_irq_handed_out() {
        let (bus, devs, _sink, _q) = legacy(DebugconTarget::Discard, true);

        bus.write(0x3f9, &[0x02]);

        assert_eq!(devs.serial_irq.read().expect("irq"), 1);
    }

    #[test]
    fn test_legacy_devices_flush_output_writes_partial_line() {
        let (bus, devs, sink, _q) = legacy(DebugconTarget::Serial, true);
        bus.write(0x3f8, b"#");

        devs.flush_output();

        assert_eq!(sink.contents(), b"#");
    }

    #[test]
    fn test_legacy_devices_cmos_memory_register() {
        let (bus, _devs, _sink, _q) = legacy(DebugconTarget::Discard, true);
        let mut b = [0u8];

        bus.write(0x70, &[0x35]);
        bus.read(0x71, &mut b);

        assert_eq!(b[0], 0x0f); // (256 MiB - 16 MiB) / 64 KiB = 0x0f00
    }

    #[test]
    fn test_port_device_offset_beyond_u16_reads_ones() {
        let mut dev = post::PostCode::default();
        let mut b = [0u8; 2];

        BusDevice::read(&mut dev, 0, 1 << 20, &mut b);

        assert_eq!(b, [0xff, 0xff]);
    }
}
