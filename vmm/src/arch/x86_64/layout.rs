//! The guest-physical memory layout of a Strata x86_64 machine.
//!
//! ```text
//! 0x0000_0000 .. 0x0000_0500   real-mode IVT and BIOS data area (left zero)
//! 0x0000_0500 .. 0x0000_0600   boot GDT
//! 0x0000_6000 .. 0x0000_7000   PVH hvm_start_info, module list and memory map
//! 0x0000_7000 .. 0x0000_8000   Linux zero page (struct boot_params)
//! 0x0000_8000 .. 0x0000_9000   boot stack (grows down from 0x8ff0)
//! 0x0000_9000 .. 0x0000_c000   identity page tables (PML4, PDPT, PD: first 1 GiB)
//! 0x0000_d000 .. 0x0000_f000   multiboot information structures
//! 0x0002_0000 .. 0x0002_0000 + CMDLINE_MAX   kernel command line
//! 0x0009_fc00 .. 0x000a_0000   EBDA (reserved)
//! 0x000a_0000 .. 0x0010_0000   legacy hole (VGA text buffer at 0xb8000, BIOS area); reserved in e820
//! 0x000f_0000 .. 0x0010_0000   MP table (in the BIOS area guests scan for "_MP_")
//! 0x0010_0000 .. MMIO_HOLE_START   RAM (first memslot)
//! 0xc000_0000 .. 0x1_0000_0000     32-bit MMIO hole:
//!   0xc000_0000 .. 0xd000_0000       PCI 32-bit BARs (allocated by the VMM before boot)
//!   0xd000_0000 .. 0xe000_0000       virtio-mmio windows, 4 KiB each
//!   0xe000_0000 .. 0xf000_0000       PCI ECAM (reserved for when ACPI's MCFG exists)
//!   0xfec0_0000                      IOAPIC
//!   0xfee0_0000                      LAPIC
//! 0x1_0000_0000 ..                  RAM above 4 GiB (second memslot)
//! above RAM, 1 GiB aligned           PCI 64-bit BARs (64 GiB window)
//! ```
//!
//! Port I/O: legacy devices below 0x400, PCI configuration at 0xcf8-0xcff (byte accesses to
//! 0xcf9 still reach the reset control register), PCI I/O BARs in 0xc000-0xffff.
//!
//! Interrupts: the IOAPIC's 24 pins are GSIs 0-23 (ISA IRQs 1 and 4 for the i8042 and COM1);
//! virtio-mmio devices and PCI INTx lines get legacy IRQs from 5 to 23, MSI-X vectors GSIs from
//! 24 up.
//!
//! RAM is registered in at most two KVM memslots: everything below the MMIO hole (legacy hole
//! included, so the VGA text buffer is plain memory the VMM can read) and everything above 4 GiB.

use vm_memory::GuestAddress;

/// Boot GDT.
pub const BOOT_GDT_START: GuestAddress = GuestAddress(0x500);
/// PVH `hvm_start_info`.
pub const PVH_INFO_START: GuestAddress = GuestAddress(0x6000);
/// Linux zero page (`struct boot_params`).
pub const ZERO_PAGE_START: GuestAddress = GuestAddress(0x7000);
/// Initial stack pointer for 64-bit Linux entry.
pub const BOOT_STACK_POINTER: GuestAddress = GuestAddress(0x8ff0);
/// PML4 of the boot identity map.
pub const PML4_START: GuestAddress = GuestAddress(0x9000);
/// PDPT of the boot identity map.
pub const PDPTE_START: GuestAddress = GuestAddress(0xa000);
/// PD of the boot identity map.
pub const PDE_START: GuestAddress = GuestAddress(0xb000);
/// Multiboot information area.
pub const MULTIBOOT_INFO_START: GuestAddress = GuestAddress(0xd000);
/// End (exclusive) of the multiboot information area.
pub const MULTIBOOT_INFO_END: GuestAddress = GuestAddress(0xf000);
/// Kernel command line.
pub const CMDLINE_START: GuestAddress = GuestAddress(0x20000);
/// Largest command line accepted, including the terminating NUL.
pub const CMDLINE_MAX_SIZE: usize = 0x10000;
/// Start of the EBDA.
pub const EBDA_START: GuestAddress = GuestAddress(0x9fc00);
/// Where the MP floating pointer and configuration table go.
pub const MPTABLE_START: GuestAddress = GuestAddress(0xf0000);
/// End (exclusive) of the BIOS area.
pub const BIOS_END: GuestAddress = GuestAddress(0x10_0000);
/// Start of the legacy hole (reserved in the memory map).
pub const LEGACY_HOLE_START: GuestAddress = GuestAddress(0xa0000);
/// The VGA text buffer.
pub const VGA_TEXT_START: GuestAddress = GuestAddress(0xb8000);
/// Start of high memory, where kernels are loaded.
pub const HIMEM_START: GuestAddress = GuestAddress(0x10_0000);
/// Start of the 32-bit MMIO hole.
pub const MMIO_HOLE_START: GuestAddress = GuestAddress(0xc000_0000);
/// End (exclusive) of the 32-bit MMIO hole; RAM resumes here.
pub const MMIO_HOLE_END: GuestAddress = GuestAddress(0x1_0000_0000);
/// IOAPIC base address.
pub const IOAPIC_START: GuestAddress = GuestAddress(0xfec0_0000);
/// Local APIC base address.
pub const APIC_START: GuestAddress = GuestAddress(0xfee0_0000);
/// Start of the window PCI 32-bit BARs are allocated from.
pub const PCI_MMIO32_START: GuestAddress = GuestAddress(0xc000_0000);
/// Size of the PCI 32-bit BAR window.
pub const PCI_MMIO32_SIZE: u64 = 0x1000_0000;
/// Start of the virtio-mmio device windows.
pub const VIRTIO_MMIO_START: GuestAddress = GuestAddress(0xd000_0000);
/// Size of the virtio-mmio area.
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000_0000;
/// Size of one virtio-mmio device window (registers and configuration space).
pub const VIRTIO_MMIO_WINDOW: u64 = 0x1000;
/// PCI ECAM (memory-mapped configuration space), reserved: bus 0 needs 1 MiB.
pub const PCI_ECAM_START: GuestAddress = GuestAddress(0xe000_0000);
/// Size reserved for the ECAM.
pub const PCI_ECAM_SIZE: u64 = 0x1000_0000;
/// Size of the PCI 64-bit BAR window above RAM.
pub const PCI_MMIO64_SIZE: u64 = 64 << 30;
/// First port of the PCI I/O BAR window.
pub const PCI_IO_START: u64 = 0xc000;
/// Size of the PCI I/O BAR window (to the end of the 64 KiB port space).
pub const PCI_IO_SIZE: u64 = 0x4000;
/// The IOAPIC's pins: GSIs 0 to 23.
pub const IOAPIC_PINS: u32 = 24;
/// First legacy IRQ handed to devices (virtio-mmio, PCI INTx).
pub const DEVICE_IRQ_FIRST: u32 = 5;
/// Last legacy IRQ handed to devices.
pub const DEVICE_IRQ_LAST: u32 = IOAPIC_PINS - 1;
/// First GSI for MSI routes (past the IOAPIC pins).
pub const MSI_GSI_FIRST: u32 = IOAPIC_PINS;
/// Last GSI for MSI routes (KVM allows 4096 routes on x86).
pub const MSI_GSI_LAST: u32 = 4095;

// The windows of the hole follow each other and end below the IOAPIC.
const _: () = assert!(PCI_MMIO32_START.0 + PCI_MMIO32_SIZE <= VIRTIO_MMIO_START.0);
const _: () = assert!(VIRTIO_MMIO_START.0 + VIRTIO_MMIO_SIZE <= PCI_ECAM_START.0);
const _: () = assert!(PCI_ECAM_START.0 + PCI_ECAM_SIZE <= IOAPIC_START.0);

/// Start of the PCI 64-bit BAR window for a machine of `ram_size` bytes: the first 1 GiB
/// boundary past the end of RAM, never below 4 GiB.
pub fn pci_mmio64_start(ram_size: u64) -> GuestAddress {
    let end = ram_ranges(ram_size)
        .last()
        .map_or(MMIO_HOLE_END.0, |(base, size)| base.0 + size)
        .max(MMIO_HOLE_END.0);
    GuestAddress(end.next_multiple_of(1 << 30))
}

/// What a range of guest-physical memory is, as reported to the guest (e820 types).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegionKind {
    /// Usable RAM (e820 type 1).
    Ram,
    /// Reserved (e820 type 2).
    Reserved,
}

impl RegionKind {
    /// The e820 / multiboot / PVH type number.
    pub fn e820_type(self) -> u32 {
        match self {
            RegionKind::Ram => 1,
            RegionKind::Reserved => 2,
        }
    }
}

/// One entry of the guest memory map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryRegion {
    /// First byte.
    pub base: GuestAddress,
    /// Length in bytes.
    pub size: u64,
    /// What the guest may do with it.
    pub kind: RegionKind,
}

/// The ranges of guest RAM backing a machine of `ram_size` bytes: one below the MMIO hole
/// and, if needed, one above 4 GiB. These are also the KVM memslots.
pub fn ram_ranges(ram_size: u64) -> Vec<(GuestAddress, u64)> {
    let low_max = MMIO_HOLE_START.0;
    if ram_size <= low_max {
        vec![(GuestAddress(0), ram_size)]
    } else {
        vec![
            (GuestAddress(0), low_max),
            (MMIO_HOLE_END, ram_size - low_max),
        ]
    }
}

/// The memory map reported to the guest (e820, multiboot mmap, PVH memmap) for `ram_size`
/// bytes of RAM: the low 640 KiB minus the EBDA, high memory up to the hole, RAM above 4 GiB.
pub fn memory_map(ram_size: u64) -> Vec<MemoryRegion> {
    let mut map = vec![
        MemoryRegion {
            base: GuestAddress(0),
            size: EBDA_START.0,
            kind: RegionKind::Ram,
        },
        MemoryRegion {
            base: EBDA_START,
            size: LEGACY_HOLE_START.0 - EBDA_START.0,
            kind: RegionKind::Reserved,
        },
    ];
    for (base, size) in ram_ranges(ram_size) {
        let (start, end) = (base.0.max(HIMEM_START.0), base.0 + size);
        if end > start {
            map.push(MemoryRegion {
                base: GuestAddress(start),
                size: end - start,
                kind: RegionKind::Ram,
            });
        }
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_ram_ranges_small_one_slot() {
        assert_eq!(ram_ranges(128 << 20), vec![(GuestAddress(0), 128 << 20)]);
    }

    #[test]
    fn test_ram_ranges_large_splits_around_hole() {
        let r = ram_ranges(4 << 30);
        assert_eq!(
            r,
            vec![(GuestAddress(0), 3 << 30), (GuestAddress(4 << 30), 1 << 30)]
        );
    }

    #[test]
    fn test_pci_mmio64_start_above_ram_and_4g() {
        assert_eq!(pci_mmio64_start(128 << 20), MMIO_HOLE_END);
        assert_eq!(pci_mmio64_start((3 << 30) + 1), GuestAddress(5 << 30));
        assert_eq!(pci_mmio64_start(5 << 30), GuestAddress(6 << 30));
    }

    #[test]
    fn test_memory_map_small_has_low_and_high_ram() {
        let m = memory_map(128 << 20);
        assert_eq!(m.len(), 3);
        assert_eq!(m[2].base, HIMEM_START);
        assert_eq!(m[2].size, (128 << 20) - 0x10_0000);
        assert_eq!(m[1].kind, RegionKind::Reserved);
    }
}
