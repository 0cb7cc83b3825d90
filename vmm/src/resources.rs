//! The machine's device resources, handed out before the kernel is loaded: MMIO windows, port
//! ranges, legacy IRQs, MSI GSIs and PCI slots.
//!
//! `Vm::build` plans every configured device against one [`SystemResources`] before it loads
//! the kernel, so that the command line can announce the virtio-mmio devices
//! (`virtio_mmio.device=4K@0xADDR:IRQ`) and the MP table can route their IRQs. The windows
//! come from `arch::x86_64::layout`.

#![forbid(unsafe_code)]

use std::collections::BTreeMap;

use vm_memory::GuestAddress;

use crate::arch::x86_64::layout;

/// Errors allocating a resource.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ResourceError {
    /// The window has no free range of that size and alignment.
    #[error("no room for {size:#x} bytes (aligned to {align:#x}) in the {window} window")]
    NoAddressSpace {
        /// Which window.
        window: &'static str,
        /// Bytes asked for.
        size: u64,
        /// Alignment asked for.
        align: u64,
    },
    /// A size of zero or an alignment that is not a power of two.
    #[error("invalid allocation of {size:#x} bytes aligned to {align:#x}")]
    InvalidRequest {
        /// Bytes asked for.
        size: u64,
        /// Alignment asked for.
        align: u64,
    },
    /// Every number of that kind is taken.
    #[error("no {0} left")]
    Exhausted(&'static str),
}

/// First-fit allocator of aligned ranges inside one address window.
#[derive(Debug, Clone)]
pub struct AddressAllocator {
    name: &'static str,
    start: u64,
    end: u64,
    /// Allocated ranges: start to length.
    used: BTreeMap<u64, u64>,
}

impl AddressAllocator {
    /// An allocator over `start..start+size`.
    pub fn new(name: &'static str, start: u64, size: u64) -> AddressAllocator {
        AddressAllocator {
            name,
            start,
            end: start.saturating_add(size),
            used: BTreeMap::new(),
        }
    }

    /// The lowest free range of `size` bytes aligned to `align` (a power of two).
    pub fn allocate(&mut self, size: u64, align: u64) -> Result<u64, ResourceError> {
        if size == 0 || !align.is_power_of_two() {
            return Err(ResourceError::InvalidRequest { size, align });
        }
        let no_room = ResourceError::NoAddressSpace {
            window: self.name,
            size,
            align,
        };
        let mut candidate = self.start.checked_next_multiple_of(align);
        for (&base, &len) in &self.used {
            let Some(c) = candidate else { break };
            if c.checked_add(size).is_some_and(|end| end <= base) {
                break;
            }
            candidate = (base + len)
                .checked_next_multiple_of(align)
                .map(|next| next.max(c));
        }
        match candidate.and_then(|c| Some((c, c.checked_add(size)?))) {
            Some((candidate, end)) if end <= self.end => {
                self.used.insert(candidate, size);
                Ok(candidate)
            }
            _ => Err(no_room),
        }
    }

    /// Gives back the range allocated at `base`; unknown bases are ignored.
    pub fn free(&mut self, base: u64) {
        self.used.remove(&base);
    }
}

/// Allocator of small integers (IRQs, GSIs, PCI slots) from an inclusive range, lowest first.
#[derive(Debug, Clone)]
pub struct IdAllocator {
    name: &'static str,
    first: u32,
    last: u32,
    used: std::collections::BTreeSet<u32>,
}

impl IdAllocator {
    /// An allocator of `first..=last`.
    pub fn new(name: &'static str, first: u32, last: u32) -> IdAllocator {
        IdAllocator {
            name,
            first,
            last,
            used: Default::default(),
        }
    }

    /// The lowest free number.
    pub fn allocate(&mut self) -> Result<u32, ResourceError> {
        let id = (self.first..=self.last)
            .find(|id| !self.used.contains(id))
            .ok_or(ResourceError::Exhausted(self.name))?;
        self.used.insert(id);
        Ok(id)
    }

    /// Gives `id` back.
    pub fn free(&mut self, id: u32) {
        self.used.remove(&id);
    }
}

/// Every device resource of one machine.
#[derive(Debug, Clone)]
pub struct SystemResources {
    /// PCI 32-bit BARs: 0xc000_0000..0xd000_0000.
    pub pci_mmio32: AddressAllocator,
    /// PCI 64-bit BARs above RAM.
    pub pci_mmio64: AddressAllocator,
    /// PCI I/O BARs: ports 0xc000..0x10000.
    pub pci_io: AddressAllocator,
    /// virtio-mmio device windows: 0xd000_0000..0xe000_0000, 4 KiB each.
    pub virtio_mmio: AddressAllocator,
    /// Legacy IRQs (IOAPIC pins) for virtio-mmio devices and PCI INTx: 5 to 23.
    pub irqs: IdAllocator,
    /// GSIs for MSI routes: from 24.
    pub msi_gsis: IdAllocator,
    /// Device numbers on PCI bus 0 (0 is the host bridge).
    pub pci_slots: IdAllocator,
}

impl SystemResources {
    /// The resources of a machine with `ram_size` bytes of RAM.
    pub fn new(ram_size: u64) -> SystemResources {
        SystemResources {
            pci_mmio32: AddressAllocator::new(
                "PCI 32-bit MMIO",
                layout::PCI_MMIO32_START.0,
                layout::PCI_MMIO32_SIZE,
            ),
            pci_mmio64: AddressAllocator::new(
                "PCI 64-bit MMIO",
                layout::pci_mmio64_start(ram_size).0,
                layout::PCI_MMIO64_SIZE,
            ),
            pci_io: AddressAllocator::new("PCI I/O", layout::PCI_IO_START, layout::PCI_IO_SIZE),
            virtio_mmio: AddressAllocator::new(
                "virtio-mmio",
                layout::VIRTIO_MMIO_START.0,
                layout::VIRTIO_MMIO_SIZE,
            ),
            irqs: IdAllocator::new(
                "legacy IRQs",
                layout::DEVICE_IRQ_FIRST,
                layout::DEVICE_IRQ_LAST,
            ),
            msi_gsis: IdAllocator::new("MSI GSIs", layout::MSI_GSI_FIRST, layout::MSI_GSI_LAST),
            pci_slots: IdAllocator::new("PCI slots", 1, 31),
        }
    }

    /// One virtio-mmio window and its IRQ.
    pub fn allocate_virtio_mmio(&mut self) -> Result<(GuestAddress, u32), ResourceError> {
        let size = layout::VIRTIO_MMIO_WINDOW;
        let base = self.virtio_mmio.allocate(size, size)?;
        let irq = self.irqs.allocate()?;
        Ok((GuestAddress(base), irq))
    }

    /// A memory BAR of `size` bytes (a power of two): below 4 GiB if there is room, else in
    /// the 64-bit window when `allow_64bit`.
    pub fn allocate_pci_mmio(
        &mut self,
        size: u64,
        allow_64bit: bool,
    ) -> Result<GuestAddress, ResourceError> {
        match self.pci_mmio32.allocate(size, size) {
            Ok(base) => Ok(GuestAddress(base)),
            Err(_) if allow_64bit => self.pci_mmio64.allocate(size, size).map(GuestAddress),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_address_allocator_first_fit_aligned_and_reuses_freed() {
        let mut a = AddressAllocator::new("test", 0x1000, 0x10000);

        let x = a.allocate(0x1000, 0x1000).unwrap();
        let y = a.allocate(0x4000, 0x4000).unwrap();
        let z = a.allocate(0x1000, 0x1000).unwrap();
        a.free(x);
        let w = a.allocate(0x800, 0x100).unwrap();

        assert_eq!((x, y, z, w), (0x1000, 0x4000, 0x2000, 0x1000));
    }

    #[test]
    fn test_address_allocator_full_window_and_bad_requests_fail() {
        let mut a = AddressAllocator::new("tiny", 0, 0x2000);

        a.allocate(0x2000, 0x1000).unwrap();

        assert!(matches!(
            a.allocate(0x1000, 0x1000),
            Err(ResourceError::NoAddressSpace { window: "tiny", .. })
        ));
        assert!(matches!(
            a.allocate(0, 0x1000),
            Err(ResourceError::InvalidRequest { .. })
        ));
        assert!(matches!(
            a.allocate(0x10, 3),
            Err(ResourceError::InvalidRequest { .. })
        ));
    }

    #[test]
    fn test_address_allocator_near_u64_max_does_not_overflow() {
        let mut a = AddressAllocator::new("top", u64::MAX - 0xfff, 0x1000);

        assert!(a.allocate(0x2000, 0x1000).is_err());
        assert!(a.allocate(0x800, 0x800).is_ok());
    }

    #[test]
    fn test_id_allocator_lowest_first_until_exhausted() {
        let mut ids = IdAllocator::new("irqs", 5, 6);

        let a = ids.allocate().unwrap();
        let b = ids.allocate().unwrap();
        let full = ids.allocate();
        ids.free(a);

        assert_eq!((a, b), (5, 6));
        assert_eq!(full, Err(ResourceError::Exhausted("irqs")));
        assert_eq!(ids.allocate(), Ok(5));
    }

    #[test]
    fn test_system_resources_virtio_mmio_windows_and_irqs_follow_layout() {
        let mut r = SystemResources::new(128 << 20);

        let first = r.allocate_virtio_mmio().unwrap();
        let second = r.allocate_virtio_mmio().unwrap();

        assert_eq!(first, (GuestAddress(0xd000_0000), 5));
        assert_eq!(second, (GuestAddress(0xd000_1000), 6));
        assert_eq!(r.msi_gsis.allocate(), Ok(24));
        assert_eq!(r.pci_slots.allocate(), Ok(1));
    }

    #[test]
    fn test_system_resources_pci_mmio_falls_back_to_64bit_window() {
        let mut r = SystemResources::new(128 << 20);

        let big = r.allocate_pci_mmio(layout::PCI_MMIO32_SIZE, true).unwrap();
        let next = r.allocate_pci_mmio(0x4000, true).unwrap();
        let refused = r.allocate_pci_mmio(0x4000, false);

        assert_eq!(big, layout::PCI_MMIO32_START);
        assert_eq!(next, GuestAddress(4 << 30));
        assert!(refused.is_err());
    }
}
