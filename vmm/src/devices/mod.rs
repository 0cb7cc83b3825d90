//! Legacy devices on the port-I/O bus: 16550 serial, i8042, CMOS RTC, debug exit; and the VGA
//! text console, which is plain guest memory rendered by the VMM.
//!
//! Every port-I/O device implements [`PioDevice`] and is registered on a [`PioBus`] over a port
//! range. A vCPU thread that takes a KVM_EXIT_IO exit dispatches it through the bus; the device
//! answers in place and tells the vCPU loop whether the VM must stop through [`PioAction`].

use std::sync::{Arc, Mutex};

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

    #[test]
    fn test_pio_bus_overlap_rejected() {
        let mut bus = PioBus::new();
        bus.insert(Arc::new(Mutex::new(Echo(0))), 0x3f8, 8).unwrap();
        assert!(bus.insert(Arc::new(Mutex::new(Echo(0))), 0x3ff, 1).is_err());
        assert!(bus.insert(Arc::new(Mutex::new(Echo(0))), 0x3f0, 8).is_ok());
    }
}
