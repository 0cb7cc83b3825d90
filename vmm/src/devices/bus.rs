//! One bus type for port I/O and MMIO: `u64` address ranges mapped to devices, shared by every
//! vCPU and changeable while the VM runs (PCI BARs move).
//!
//! A VM has two buses, one per address space. A vCPU that takes a port-I/O or MMIO exit (or
//! whose emulated instruction touches memory that is not RAM) dispatches it here; the device
//! answers in place. Unclaimed reads return all ones, as on real hardware; unclaimed writes are
//! dropped. Devices never tell the vCPU loop to stop the VM: they send a
//! [`crate::vm_events::VmEvent`] instead.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

/// A device on a bus.
pub trait BusDevice: Send {
    /// A guest read of `data.len()` bytes at `offset` from the start of the range registered
    /// at `base`.
    fn read(&mut self, base: u64, offset: u64, data: &mut [u8]);
    /// A guest write of `data` at `offset` from the start of the range registered at `base`.
    fn write(&mut self, base: u64, offset: u64, data: &[u8]);
}

/// A device shared between the bus and whoever else needs it.
pub type SharedBusDevice = Arc<Mutex<dyn BusDevice>>;

/// Errors changing a bus.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    /// The range is empty or wraps around the address space.
    #[error("invalid bus range {base:#x}+{len:#x}")]
    InvalidRange {
        /// First address.
        base: u64,
        /// Length in bytes.
        len: u64,
    },
    /// Two devices claim overlapping ranges.
    #[error("bus range {base:#x}+{len:#x} overlaps an existing device")]
    Overlap {
        /// First address.
        base: u64,
        /// Length in bytes.
        len: u64,
    },
    /// No device is registered at that base.
    #[error("no device registered at {0:#x}")]
    NotFound(u64),
}

#[derive(Clone)]
struct Entry {
    len: u64,
    device: SharedBusDevice,
}

/// Address ranges to devices. Cloning gives another handle on the same bus.
#[derive(Clone, Default)]
pub struct Bus {
    ranges: Arc<RwLock<BTreeMap<u64, Entry>>>,
}

impl Bus {
    /// An empty bus.
    pub fn new() -> Bus {
        Bus::default()
    }

    fn read_map(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<u64, Entry>> {
        self.ranges.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write_map(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<u64, Entry>> {
        self.ranges.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers `device` on `base..base+len`.
    pub fn insert(&self, device: SharedBusDevice, base: u64, len: u64) -> Result<(), BusError> {
        let end = base
            .checked_add(len)
            .filter(|_| len > 0)
            .ok_or(BusError::InvalidRange { base, len })?;
        let mut map = self.write_map();
        let before = map.range(..end).next_back();
        if before.is_some_and(|(b, e)| b + e.len > base) {
            return Err(BusError::Overlap { base, len });
        }
        map.insert(base, Entry { len, device });
        Ok(())
    }

    /// Removes the device registered at `base`.
    pub fn remove(&self, base: u64) -> Result<SharedBusDevice, BusError> {
        self.write_map()
            .remove(&base)
            .map(|e| e.device)
            .ok_or(BusError::NotFound(base))
    }

    /// Moves the device registered at `old_base` to `new_base..new_base+len` (a PCI BAR the
    /// guest reprogrammed). On an overlap nothing changes.
    pub fn relocate(&self, old_base: u64, new_base: u64, len: u64) -> Result<(), BusError> {
        let mut map = self.write_map();
        let entry = map.remove(&old_base).ok_or(BusError::NotFound(old_base))?;
        let end = new_base.checked_add(len).filter(|_| len > 0);
        let clash = match end {
            None => Some(BusError::InvalidRange {
                base: new_base,
                len,
            }),
            Some(end) => map
                .range(..end)
                .next_back()
                .is_some_and(|(b, e)| b + e.len > new_base)
                .then_some(BusError::Overlap {
                    base: new_base,
                    len,
                }),
        };
        match clash {
            Some(err) => {
                map.insert(old_base, entry);
                Err(err)
            }
            None => {
                map.insert(
                    new_base,
                    Entry {
                        len,
                        device: entry.device,
                    },
                );
                Ok(())
            }
        }
    }

    /// The device covering `addr`: its base and the device.
    fn find(&self, addr: u64) -> Option<(u64, SharedBusDevice)> {
        let map = self.read_map();
        let (base, entry) = map.range(..=addr).next_back()?;
        (addr - base < entry.len).then(|| (*base, Arc::clone(&entry.device)))
    }

    /// Whether a device covers `addr`.
    pub fn contains(&self, addr: u64) -> bool {
        self.find(addr).is_some()
    }

    /// Dispatches a guest read; returns false (and fills `data` with all ones) when no device
    /// covers `addr`.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr) {
            Some((base, dev)) => {
                lock(&dev).read(base, addr - base, data);
                true
            }
            None => {
                data.fill(0xff);
                false
            }
        }
    }

    /// Dispatches a guest write; returns false (dropping it) when no device covers `addr`.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr) {
            Some((base, dev)) => {
                lock(&dev).write(base, addr - base, data);
                true
            }
            None => false,
        }
    }
}

/// Locks a device, recovering from a poisoned lock: a device's state stays usable even if a
/// thread panicked while holding it.
pub fn lock(dev: &SharedBusDevice) -> MutexGuard<'_, dyn BusDevice + 'static> {
    dev.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads return the low byte of the offset plus a seed; writes store the seed.
    struct Echo(u8);
    impl BusDevice for Echo {
        fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
            data.fill(self.0.wrapping_add(offset as u8));
        }
        fn write(&mut self, _base: u64, _offset: u64, data: &[u8]) {
            self.0 = data[0];
        }
    }

    fn echo(seed: u8) -> SharedBusDevice {
        Arc::new(Mutex::new(Echo(seed)))
    }

    #[test]
    fn test_bus_read_dispatches_by_offset_and_unclaimed_reads_ones() {
        let bus = Bus::new();
        bus.insert(echo(10), 0x3f8, 8).unwrap();
        let mut b = [0u8; 1];

        assert!(bus.read(0x3fa, &mut b));
        assert_eq!(b[0], 12);
        assert!(!bus.read(0x400, &mut b));
        assert_eq!(b[0], 0xff);
    }

    #[test]
    fn test_bus_write_reaches_device_and_unclaimed_dropped() {
        let bus = Bus::new();
        bus.insert(echo(0), 0xd000_0000, 0x1000).unwrap();
        let mut b = [0u8; 4];

        assert!(bus.write(0xd000_0010, &[7]));
        assert!(!bus.write(0xd000_1000, &[9]));
        bus.read(0xd000_0000, &mut b);

        assert_eq!(b, [7; 4]);
    }

    #[test]
    fn test_bus_insert_overlap_and_invalid_ranges_rejected() {
        let bus = Bus::new();
        bus.insert(echo(0), 0x3f8, 8).unwrap();

        assert!(matches!(
            bus.insert(echo(0), 0x3ff, 1),
            Err(BusError::Overlap { .. })
        ));
        assert!(matches!(
            bus.insert(echo(0), 0x3f0, 9),
            Err(BusError::Overlap { .. })
        ));
        assert!(bus.insert(echo(0), 0x3f0, 8).is_ok());
        assert!(matches!(
            bus.insert(echo(0), u64::MAX, 2),
            Err(BusError::InvalidRange { .. })
        ));
        assert!(matches!(
            bus.insert(echo(0), 0x100, 0),
            Err(BusError::InvalidRange { .. })
        ));
    }

    #[test]
    fn test_bus_relocate_moves_device_and_keeps_it_on_clash() {
        let bus = Bus::new();
        bus.insert(echo(1), 0x1000, 0x100).unwrap();
        bus.insert(echo(2), 0x3000, 0x100).unwrap();

        bus.relocate(0x1000, 0x2000, 0x100).unwrap();
        let clash = bus.relocate(0x2000, 0x3080, 0x100);

        assert!(!bus.contains(0x1000));
        assert!(bus.contains(0x2000));
        assert!(matches!(clash, Err(BusError::Overlap { .. })));
        assert!(bus.contains(0x20ff));
    }

    #[test]
    fn test_bus_clones_share_ranges() {
        let bus = Bus::new();
        let vcpu_view = bus.clone();

        bus.insert(echo(5), 0x80, 1).unwrap();

        assert!(vcpu_view.contains(0x80));
        assert!(bus.remove(0x80).is_ok());
        assert!(!vcpu_view.contains(0x80));
        assert_eq!(bus.remove(0x80).err(), Some(BusError::NotFound(0x80)));
    }
}
