//! Legacy devices on the port-I/O bus: 16550 serial, i8042, CMOS RTC, debug exit; and the VGA
//! text console, which is plain guest memory rendered by the VMM.
//!
//! Every port-I/O device implements [`PioDevice`] and is registered on a [`PioBus`] over a port
//! range. A vCPU thread that takes a KVM_EXIT_IO exit dispatches it through the bus; the device
//! answers in place and tells the vCPU loop whether the VM must stop through [`PioAction`].

pub mod debug_exit;
pub mod debugcon;
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

use self::output::{lock_output, ConsoleOutput, SharedOutput};
use self::serial::{SerialDevice, SerialHandle};
use self::vga::{VgaPorts, VgaText};

/// What the vCPU loop must do after a port write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PioAction {
    /// Nothing: resume the guest.
    None,
    /// The guest asked for a reset (i8042 pulse, port 0xcf9): the VM ends.
    Reset,
    /// The guest wrote the debug-exit port: the VM ends with this status.
    Exit(u8),
}

/// A device on the port-I/O bus.
pub trait PioDevice: Send {
    /// A guest read of `data.len()` bytes at `offset` from the device's base port.
    fn read(&mut self, offset: u16, data: &mut [u8]);
    /// A guest write at `offset` from the device's base port.
    fn write(&mut self, offset: u16, data: &[u8]) -> PioAction;
}

/// A shared port-I/O device.
pub type SharedPioDevice = Arc<Mutex<dyn PioDevice>>;

/// Errors building the bus.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// Two devices claim overlapping ports.
    #[error("port range {base:#x}+{len} overlaps an existing device")]
    Overlap {
        /// First port.
        base: u16,
        /// Number of ports.
        len: u16,
    },
}

/// The port-I/O bus: port ranges to devices.
#[derive(Default, Clone)]
pub struct PioBus {
    ranges: Vec<(u16, u16, SharedPioDevice)>,
}

impl PioBus {
    /// An empty bus.
    pub fn new() -> PioBus {
        PioBus::default()
    }

    /// Registers `device` on ports `base..base+len`.
    pub fn insert(&mut self, device: SharedPioDevice, base: u16, len: u16) -> Result<(), BusError> {
        let end = u32::from(base) + u32::from(len);
        if self
            .ranges
            .iter()
            .any(|(b, l, _)| u32::from(base) < u32::from(*b) + u32::from(*l) && u32::from(*b) < end)
        {
            return Err(BusError::Overlap { base, len });
        }
        self.ranges.push((base, len, device));
        self.ranges.sort_by_key(|(b, _, _)| *b);
        Ok(())
    }

    fn find(&self, port: u16) -> Option<(u16, &SharedPioDevice)> {
        self.ranges
            .iter()
            .find(|(b, l, _)| port >= *b && u32::from(port) < u32::from(*b) + u32::from(*l))
            .map(|(b, _, d)| (port - b, d))
    }

    /// Dispatches a guest read; unclaimed ports read as all ones, as on real hardware.
    pub fn read(&self, port: u16, data: &mut [u8]) {
        match self.find(port) {
            Some((off, dev)) => lock(dev).read(off, data),
            None => data.fill(0xff),
        }
    }

    /// Dispatches a guest write; writes to unclaimed ports are dropped.
    pub fn write(&self, port: u16, data: &[u8]) -> PioAction {
        match self.find(port) {
            Some((off, dev)) => lock(dev).write(off, data),
            None => PioAction::None,
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
    #[error("unable to register the {0} on the port-I/O bus: {1}")]
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
}

impl LegacyDevices {
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
    bus: &mut PioBus,
    name: &'static str,
    dev: SharedPioDevice,
    base: u16,
    len: u16,
) -> Result<(), DeviceError> {
    bus.insert(dev, base, len)
        .map_err(|e| DeviceError::Register(name, e))
}

/// Creates the legacy devices and registers them on `bus`: COM1 (0x3f8), i8042 (0x60-0x64),
/// CMOS RTC (0x70-0x71), debug exit (0xf4-0xf7), POST code (0x80), debug console (0xe9), and
/// optionally the VGA ports (0x3c0-0x3df) and the reset control port (0xcf9).
pub fn register_legacy_devices(
    bus: &mut PioBus,
    cfg: LegacyConfig,
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
    let i8042_dev = Arc::new(Mutex::new(i8042::I8042::new(Some(i8042_irq_dev))));
    insert(bus, "i8042", i8042_dev, i8042::I8042_BASE, i8042::I8042_LEN)?;

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

    let exit_dev = Arc::new(Mutex::new(debug_exit::DebugExit));
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
        let dev = Arc::new(Mutex::new(reset::ResetControl::default()));
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
    })
}

/// Locks a device, recovering from a poisoned lock: a device's state stays usable even if a
/// thread panicked while holding it.
fn lock(dev: &SharedPioDevice) -> std::sync::MutexGuard<'_, dyn PioDevice + 'static> {
    dev.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo(u8);
    impl PioDevice for Echo {
        fn read(&mut self, offset: u16, data: &mut [u8]) {
            data.fill(self.0.wrapping_add(offset as u8));
        }
        fn write(&mut self, _offset: u16, data: &[u8]) -> PioAction {
            self.0 = data[0];
            PioAction::Exit(data[0])
        }
    }

    #[test]
    fn test_pio_bus_dispatch_and_unclaimed() {
        let mut bus = PioBus::new();
        bus.insert(Arc::new(Mutex::new(Echo(10))), 0x3f8, 8)
            .unwrap();
        let mut b = [0u8; 1];
        bus.read(0x3fa, &mut b);
        assert_eq!(b[0], 12);
        bus.read(0x400, &mut b);
        assert_eq!(b[0], 0xff);
        assert_eq!(bus.write(0x3f8, &[7]), PioAction::Exit(7));
        assert_eq!(bus.write(0x80, &[7]), PioAction::None);
    }

    fn legacy(
        debugcon: DebugconTarget,
        reset_port: bool,
    ) -> (PioBus, LegacyDevices, output::VecWriter) {
        let sink = output::VecWriter::default();
        let cfg = LegacyConfig {
            serial_out: Some(Box::new(sink.clone())),
            debugcon,
            ram_below_4g: 256 << 20,
            ram_above_4g: 0,
            vga_ports: true,
            reset_port,
        };
        let mut bus = PioBus::new();
        let devs = register_legacy_devices(&mut bus, cfg).expect("register");
        (bus, devs, sink)
    }

    #[test]
    fn test_legacy_devices_serial_and_debugcon_share_output_in_order() {
        let (bus, devs, sink) = legacy(DebugconTarget::Serial, true);

        bus.write(0x3f8, b"a");
        bus.write(0xe9, b"b");
        bus.write(0x3f8, b"\n");

        assert_eq!(sink.contents(), b"ab\n");
        assert!(devs.serial.first_output_at().is_some());
    }

    #[test]
    fn test_legacy_devices_exit_and_reset_ports() {
        let (bus, _devs, _sink) = legacy(DebugconTarget::Discard, true);

        assert_eq!(bus.write(0xf4, &[5]), PioAction::Exit(5));
        assert_eq!(bus.write(0x64, &[0xfe]), PioAction::Reset);
        assert_eq!(bus.write(0xcf9, &[0x06]), PioAction::Reset);
    }

    #[test]
    fn test_legacy_devices_reset_port_optional() {
        let (mut bus, _devs, _sink) = legacy(DebugconTarget::Discard, false);

        let pci = bus.insert(Arc::new(Mutex::new(Echo(0))), 0xcf8, 8);

        assert!(pci.is_ok());
    }

    #[test]
    fn test_legacy_devices_serial_irq_handed_out() {
        let (bus, devs, _sink) = legacy(DebugconTarget::Discard, true);

        bus.write(0x3f9, &[0x02]);

        assert_eq!(devs.serial_irq.read().expect("irq"), 1);
    }

    #[test]
    fn test_legacy_devices_flush_output_writes_partial_line() {
        let (bus, devs, sink) = legacy(DebugconTarget::Serial, true);
        bus.write(0x3f8, b"#");

        devs.flush_output();

        assert_eq!(sink.contents(), b"#");
    }

    #[test]
    fn test_legacy_devices_cmos_memory_register() {
        let (bus, _devs, _sink) = legacy(DebugconTarget::Discard, true);
        let mut b = [0u8];

        bus.write(0x70, &[0x35]);
        bus.read(0x71, &mut b);

        assert_eq!(b[0], 0x0f); // (256 MiB - 16 MiB) / 64 KiB = 0x0f00
    }

    #[test]
    fn test_pio_bus_overlap_rejected() {
        let mut bus = PioBus::new();
        bus.insert(Arc::new(Mutex::new(Echo(0))), 0x3f8, 8).unwrap();
        assert!(bus.insert(Arc::new(Mutex::new(Echo(0))), 0x3ff, 1).is_err());
        assert!(bus.insert(Arc::new(Mutex::new(Echo(0))), 0x3f0, 8).is_ok());
    }
}
